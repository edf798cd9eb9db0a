//! `generate_qa`: K new QA pairs per NarrativeQA context (Fig. 10), each
//! request seeded with real pairs of that context. Requests ask for
//! `per_request` pairs; a context is asked again until it has K distinct new
//! pairs or its request budget is spent.
//!
//! The generator sees each context as the data holds it: the window that
//! `source` cut (its `context_chars`) is the text the learner trains on and
//! is evaluated with, so questions are asked about the text the learner sees.

use std::collections::{BTreeMap, HashSet};

use flow_engine::{Context, Outcome, ParamSpec, Params, Resources, Stage, StageError, Threads};
use flow_generate::Message;

use crate::contracts::dataset::{self, Example, Origin, Task};
use crate::toolkit::corpora::narrativeqa::{Window, CONTEXT_CHARS_FULL, CONTEXT_CUT};
use crate::toolkit::generation::{self, common_params, Common, Gen, Job};
use crate::toolkit::params;
use crate::toolkit::seeds::item_hash;
use crate::toolkit::text::{fill, strip_marker};

pub const DEFAULT_PROMPT: &str = "Read this story summary.\n\n{context}\n\nHere are questions \
about the summary with their answers:\n\n{examples}\n\nWrite {n} new questions about the \
summary, different from the ones above, each with a short answer taken from the summary. Use \
exactly this format for every pair:\nQ: <question>\nA: <answer>";

pub struct GenerateQa;

/// The parameters of a `generate_qa` stage, read once.
struct Settings {
    common: Common,
    /// K: new pairs per context.
    k: usize,
    max_contexts: Option<usize>,
    seed_pairs: usize,
    per_request: usize,
    context_chars: Option<usize>,
}

impl Settings {
    fn from_params(p: &Params) -> Result<Self, StageError> {
        Ok(Settings {
            common: Common::from_params(p)?,
            k: params::count(p, "k")?,
            max_contexts: params::opt_count(p, "max_contexts")?,
            seed_pairs: params::count(p, "seed_pairs")?,
            per_request: params::count(p, "per_request")?,
            context_chars: params::opt_count(p, "context_chars")?,
        })
    }
}

/// (question, answer) pairs in `Q: ... / A: ...` form.
pub fn parse_qa(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut q: Option<String> = None;
    for line in text.lines() {
        let l = strip_marker(line);
        let lower = l.to_lowercase();
        let after = |prefixes: &[&str]| {
            prefixes.iter().find_map(|p| {
                lower
                    .starts_with(p)
                    .then(|| l[p.len()..].trim().to_string())
            })
        };
        if let Some(x) = after(&["q:", "question:"]) {
            q = (!x.is_empty()).then_some(x);
        } else if let Some(a) = after(&["a:", "answer:"]) {
            if let Some(qq) = q.take() {
                if !a.is_empty() && qq.len() <= 300 && a.len() <= 300 {
                    out.push((qq, a));
                }
            }
        }
    }
    out
}

impl Stage for GenerateQa {
    fn kind(&self) -> &'static str {
        "generate_qa"
    }
    fn version(&self) -> u32 {
        generation::VERSION
    }
    fn about(&self) -> &'static str {
        "K new QA pairs per NarrativeQA context, seeded with real pairs of that context (Fig. 10)"
    }
    fn params(&self) -> Vec<ParamSpec> {
        let mut p = common_params();
        p.extend([
            ParamSpec::input(
                "contexts",
                "stage with real QA pairs (their contexts and seeds)",
            )
            .required(),
            ParamSpec::int("k", "K: new pairs per context")
                .min(1.0)
                .default(30),
            ParamSpec::int(
                "max_contexts",
                "use at most this many contexts; default all",
            )
            .min(1.0),
            ParamSpec::int("seed_pairs", "real pairs shown per request")
                .min(0.0)
                .default(3),
            ParamSpec::int("per_request", "pairs asked for per request")
                .min(1.0)
                .default(5),
            ParamSpec::int(
                "context_chars",
                "cut the context shown to the generator to this many characters (at a sentence \
                 end). Makes the generator see different text than the learner, which trains \
                 and is evaluated on the data's context: set the window on `source` \
                 (context_chars) instead; default: the context as the data holds it",
            )
            .min(20.0),
            ParamSpec::int("max_tokens", "most tokens per answer")
                .min(1.0)
                .default(300),
            ParamSpec::string(
                "prompt",
                "the request; `{context}`, `{examples}`, `{n}` are filled in",
            )
            .default(DEFAULT_PROMPT),
        ]);
        p
    }
    fn threads(&self, params: &Params, resources: &Resources) -> Threads {
        generation::threads(params, resources)
    }
    fn run(&self, ctx: &mut Context<'_>) -> Result<Outcome, StageError> {
        let s = Settings::from_params(ctx.params)?;
        let (k, n_seed, per) = (s.k, s.seed_pairs, s.per_request);
        let max_tokens = s.common.max_tokens;
        let max_attempts = s.common.max_attempts as usize;
        let real = dataset::read_upstream(ctx.input("contexts")?)?;
        let mut groups: BTreeMap<String, Vec<Example>> = BTreeMap::new();
        for e in real.into_iter().filter(|e| e.task == Task::Qa) {
            if let Some(g) = e.group.clone() {
                groups.entry(g).or_default().push(e);
            }
        }
        let seed = ctx.seed;
        let mut order: Vec<String> = groups.keys().cloned().collect();
        order.sort_by_key(|g| item_hash(seed, "qa/contexts", g));
        if let Some(m) = s.max_contexts {
            order.truncate(m);
        }
        let mut gen = Gen::open(ctx, &s.common)?;
        ctx.progress.set_total((order.len() * k) as u64, "pairs");
        let budget = k.div_ceil(per) * max_attempts;
        // Per context: its summary, the questions seen, the new pairs, and
        // how many of its requests have been read (request r is seeded by
        // its id `qa/{g}/{r}` and shows the seed pairs of ranking r).
        struct State {
            context: String,
            seen: HashSet<String>,
            got: Vec<(String, String)>,
            requests: usize,
        }
        let mut states: Vec<State> = order
            .iter()
            .map(|g| {
                let pairs = &groups[g];
                State {
                    context: generator_context(&pairs[0], s.context_chars),
                    seen: pairs.iter().map(|e| e.input.to_lowercase()).collect(),
                    got: Vec::new(),
                    requests: 0,
                }
            })
            .collect();
        // Rounds: every unfinished context asks, at once, as many requests as
        // could finish it; answers are read per context in request order,
        // exactly as if asked one by one, so the pairs do not depend on the
        // concurrency. Answers left unread stay in the journal.
        loop {
            let mut jobs: Vec<(usize, Job)> = Vec::new();
            for (ci, (g, st)) in order.iter().zip(&states).enumerate() {
                if st.got.len() >= k || st.requests >= budget {
                    continue;
                }
                let want = (k - st.got.len()).div_ceil(per).min(budget - st.requests);
                for r in st.requests..st.requests + want {
                    let mut shown: Vec<&Example> = groups[g].iter().collect();
                    shown.sort_by_key(|e| item_hash(seed, &format!("qa/seeds/{r}"), &e.id));
                    shown.truncate(n_seed);
                    let text = request_text(&s.common.prompt, &st.context, &shown, per);
                    jobs.push((
                        ci,
                        Job::new(
                            format!("qa/{g}/{r}"),
                            vec![Message::user(text)],
                            Some(max_tokens),
                        ),
                    ));
                }
            }
            if jobs.is_empty() {
                break;
            }
            let asks: Vec<(&Job, u32)> = jobs.iter().map(|(_, j)| (j, 0)).collect();
            let answers = gen.ask_batch(ctx, &asks, |_, _| {})?;
            for ((ci, _), answer) in jobs.iter().zip(answers) {
                let st = &mut states[*ci];
                if st.got.len() >= k {
                    continue;
                }
                if st.requests > 0 {
                    gen.counts.retried += 1;
                }
                st.requests += 1;
                let Some(c) = answer else { continue };
                for (q, a) in parse_qa(&c.text) {
                    if st.got.len() < k && st.seen.insert(q.to_lowercase()) {
                        st.got.push((q, a));
                        ctx.progress.advance(1);
                    }
                }
            }
            ctx.progress.message(&gen.progress_line());
        }
        let mut out = Vec::new();
        for (g, st) in order.iter().zip(states) {
            let pairs = &groups[g];
            let window = window_record(&pairs[0]);
            gen.counts.asked += k as u64;
            gen.counts.got += st.got.len() as u64;
            gen.counts.dropped += (k - st.got.len()) as u64;
            for (j, (q, a)) in st.got.into_iter().enumerate() {
                out.push(Example {
                    id: format!("gen-qa-{g}-{j}"),
                    task: Task::Qa,
                    group: Some(g.clone()),
                    context: pairs[0].context.clone(),
                    input: q,
                    target: a,
                    origin: Origin::Generated,
                    alt_targets: vec![],
                    extra: window.clone(),
                });
            }
        }
        ctx.log(format!("{} contexts: {}", order.len(), gen.progress_line()));
        gen.check_yield()?;
        Ok(gen
            .metrics(dataset::output(ctx, &out)?)
            .metric("n", out.len() as u64)
            .metric("contexts", order.len() as u64))
    }
}

/// The context as the generator sees it: the example's own (the window
/// the learner sees), unless `cut` asks for less.
pub(crate) fn generator_context(first: &Example, cut: Option<usize>) -> String {
    let context = first.context.as_deref().unwrap_or_default();
    match cut {
        Some(max) => Window::of(context, Some(max)).text,
        None => context.to_string(),
    }
}

/// The record of the context's window (`source`'s `context_chars_full`,
/// `context_cut`), carried to the pairs generated from it.
pub(crate) fn window_record(first: &Example) -> serde_json::Map<String, serde_json::Value> {
    [CONTEXT_CHARS_FULL, CONTEXT_CUT]
        .iter()
        .filter_map(|&f| Some((f.to_string(), first.extra.get(f)?.clone())))
        .collect()
}

/// One request: `prompt` with the context, the seed pairs `shown` and the
/// number of pairs asked for filled in.
pub(crate) fn request_text(prompt: &str, context: &str, shown: &[&Example], n: usize) -> String {
    let examples = shown
        .iter()
        .map(|e| format!("Q: {}\nA: {}", e.input.trim(), e.target.trim()))
        .collect::<Vec<_>>()
        .join("\n");
    fill(
        prompt,
        &[
            ("context", context),
            ("examples", &examples),
            ("n", &n.to_string()),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qa_pairs_are_parsed() {
        let p = parse_qa(
            "Sure!\nQ: Who is Tom?\nA: A farmer.\n\n2. Question: Where does he live?\nAnswer: \
             In Ohio.\nQ: dangling",
        );
        assert_eq!(
            p,
            vec![
                ("Who is Tom?".to_string(), "A farmer.".to_string()),
                ("Where does he live?".to_string(), "In Ohio.".to_string())
            ]
        );
    }
}

#[cfg(test)]
mod default_tests {
    use super::*;

    #[test]
    fn no_cut_by_default() {
        let spec = GenerateQa.params();
        let chars = spec.iter().find(|p| p.name == "context_chars").unwrap();
        assert!(chars.default.is_none());
    }
}
