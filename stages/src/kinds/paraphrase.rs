//! `paraphrase`: m_p paraphrases of a question (Fig. 11), given its QA pair
//! and, as a style example, a QA pair of another context.
//!
//! Only the anchor candidates are paraphrased: per context, the first
//! `anchors` questions of one seeded ranking (`anchor_rank` 0, 1, ...), the
//! most any `replace` level needs (K / m_p). Output: one example per
//! paraphrase, the anchor's answer as target, with `paraphrase_of` (the
//! original's id) and `anchor_rank`.

use std::collections::{BTreeMap, HashSet};

use flow_engine::{Context, Outcome, ParamSpec, Params, Resources, Stage, StageError, Threads};
use flow_generate::Message;

use crate::contracts::dataset::{self, Example, Task};
use crate::toolkit::generation::{self, common_params, Common, Gen, Job};
use crate::toolkit::params;
use crate::toolkit::seeds::item_hash;
use crate::toolkit::text::{fill, strip_marker};

pub const DEFAULT_PROMPT: &str = "Here is a question about a story, with its answer:\nQ: \
{question}\nA: {answer}\n\nWrite {m} different ways to ask the same question. Every new \
question must have the same answer. For the style, here is a question about another story:\n\
Q: {other_question}\nA: {other_answer}\n\nWrite one question per line, numbered 1 to {m}, and \
nothing else.";

pub struct Paraphrase;

/// The parameters of a `paraphrase` stage, read once.
struct Settings {
    common: Common,
    m_p: usize,
    anchors: usize,
}

impl Settings {
    fn from_params(p: &Params) -> Result<Self, StageError> {
        Ok(Settings {
            common: Common::from_params(p)?,
            m_p: params::count(p, "m_p")?,
            anchors: params::count(p, "anchors")?,
        })
    }
}

/// Per context, the order in which questions become anchors.
pub fn anchor_order(seed: u64, examples: &[&Example]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..examples.len()).collect();
    idx.sort_by_key(|&i| item_hash(seed, "paraphrase/anchors", &examples[i].id));
    idx
}

/// Up to `m` distinct questions from an answer, none equal to `original`.
pub fn parse_paraphrases(text: &str, original: &str, m: usize) -> Option<Vec<String>> {
    let mut seen = HashSet::new();
    seen.insert(original.trim().to_lowercase());
    let mut out = Vec::new();
    for line in text.lines() {
        let l = strip_marker(line);
        let l = l
            .strip_prefix("Q:")
            .map(str::trim)
            .unwrap_or(&l)
            .to_string();
        if l.ends_with('?') && l.split_whitespace().count() >= 3 && seen.insert(l.to_lowercase()) {
            out.push(l);
        }
        if out.len() == m {
            return Some(out);
        }
    }
    None
}

impl Stage for Paraphrase {
    fn kind(&self) -> &'static str {
        "paraphrase"
    }
    fn version(&self) -> u32 {
        generation::VERSION
    }
    fn about(&self) -> &'static str {
        "m_p paraphrases of the anchor questions of each context (Fig. 11)"
    }
    fn params(&self) -> Vec<ParamSpec> {
        let mut p = common_params();
        p.extend([
            ParamSpec::input("data", "stage with generated QA pairs").required(),
            ParamSpec::int("m_p", "paraphrases per question")
                .min(1.0)
                .default(5),
            ParamSpec::int(
                "anchors",
                "anchor candidates paraphrased per context (K / m_p)",
            )
            .min(1.0)
            .default(6),
            ParamSpec::int("max_tokens", "most tokens per answer")
                .min(1.0)
                .default(200),
            ParamSpec::string(
                "prompt",
                "the request; `{question}`, `{answer}`, `{m}`, `{other_question}`, \
                 `{other_answer}` are filled in",
            )
            .default(DEFAULT_PROMPT),
        ]);
        p
    }
    fn threads(&self, params: &Params, resources: &Resources) -> Threads {
        generation::threads(params, resources)
    }
    fn run(&self, ctx: &mut Context<'_>) -> Result<Outcome, StageError> {
        let settings = Settings::from_params(ctx.params)?;
        let (m_p, n_anchors) = (settings.m_p, settings.anchors);
        let max_tokens = settings.common.max_tokens;
        let data = dataset::read_upstream(ctx.input("data")?)?;
        let mut groups: BTreeMap<String, Vec<&Example>> = BTreeMap::new();
        for e in data.iter().filter(|e| e.task == Task::Qa) {
            groups
                .entry(e.group.clone().unwrap_or_default())
                .or_default()
                .push(e);
        }
        let names: Vec<String> = groups.keys().cloned().collect();
        let seed = ctx.seed;
        let mut gen = Gen::open(ctx, &settings.common)?;
        let total: usize = groups.values().map(|v| v.len().min(n_anchors)).sum();
        ctx.progress.set_total(total as u64, "questions");
        // One job per anchor, all asked at once.
        let mut anchors: Vec<(&Example, usize)> = Vec::new();
        let mut jobs = Vec::new();
        for (gi, g) in names.iter().enumerate() {
            let exs = &groups[g];
            // The style example: a pair of another context.
            let other = if names.len() > 1 {
                let o = (gi
                    + 1
                    + (item_hash(seed, "paraphrase/other", g) as usize % (names.len() - 1)))
                    % names.len();
                let pool = &groups[&names[o]];
                Some(pool[item_hash(seed, "paraphrase/other-pair", g) as usize % pool.len()])
            } else {
                None
            };
            for (rank, &i) in anchor_order(seed, exs).iter().take(n_anchors).enumerate() {
                let e = exs[i];
                let (oq, oa) = other
                    .map(|o| (o.input.as_str(), o.target.as_str()))
                    .unwrap_or(("What is the name of the main character?", "Anna."));
                let text = fill(
                    &settings.common.prompt,
                    &[
                        ("question", &e.input),
                        ("answer", &e.target),
                        ("m", &m_p.to_string()),
                        ("other_question", oq),
                        ("other_answer", oa),
                    ],
                );
                anchors.push((e, rank));
                jobs.push(Job::new(
                    format!("paraphrase/{}", e.id),
                    vec![Message::user(text)],
                    Some(max_tokens),
                ));
            }
        }
        let parsed = gen.items(ctx, &jobs, |j, t| {
            parse_paraphrases(t, &anchors[j].0.input, m_p)
        })?;
        let mut out = Vec::new();
        for (ps, (e, rank)) in parsed.into_iter().zip(&anchors) {
            let Some(ps) = ps else { continue };
            for (j, p) in ps.into_iter().enumerate() {
                let mut x = (*e).clone();
                x.id = format!("{}-p{j}", e.id);
                x.input = p;
                x.extra.insert("paraphrase_of".into(), e.id.clone().into());
                x.extra.insert("anchor_rank".into(), (*rank as u64).into());
                out.push(x);
            }
        }
        ctx.log(gen.progress_line());
        gen.check_yield()?;
        Ok(gen
            .metrics(dataset::output(ctx, &out)?)
            .metric("n", out.len() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paraphrases_are_distinct_questions() {
        let p = parse_paraphrases(
            "1. Who is Tom?\n2. What is Tom's job?\n3. Who is tom?\nblah\n4. Tom does what for \
             a living?",
            "Who is Tom?",
            2,
        );
        assert_eq!(
            p.unwrap(),
            vec![
                "What is Tom's job?".to_string(),
                "Tom does what for a living?".to_string()
            ]
        );
        assert!(parse_paraphrases("1. Why?", "x", 2).is_none());
    }
}
