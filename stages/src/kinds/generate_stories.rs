//! `generate_stories`: topic-guided story generation (Sec 3.2.1).
//!
//! The diversity level is m_t = `topic_count`: the subset is the first m_t
//! topics of one seeded ranking of the pool (so smaller subsets nest in
//! larger ones). Story i draws one topic from the subset and `seed_stories`
//! real stories, and asks for a new story on that topic in the same format
//! (five sentences) and about the seeds' length: `{target_words}` in the
//! prompt is the mean length in words of the shown seeds' fifth sentences
//! (the paper matches the generated data's token count to the seeds'
//! through the prompt). The answer is parsed into input (4 sentences) +
//! target (the 5th); malformed answers are retried.
//!
//! Levels share items. Story i's seeds, its sampling seed and (when the
//! same index falls in both subsets) its topic are the same at every level,
//! so two levels ask many identical requests and (the journal answering
//! both) hold identical stories: m_t / m_t' of the stories of a level m_t'
//! that is a multiple of m_t are the smaller level's, fewer otherwise.
//! These are common random numbers: the levels differ only where m_t makes
//! them differ, which sharpens the comparison between levels (less noise
//! than independent draws), but the levels are not independent samples.
//! `independent_levels = true` salts every per-level draw (the topic
//! ranking, topics, seeds, sampling seeds) with m_t, so nothing is shared
//! by construction. With `levels` (all levels of the fan-out, Gen-D order)
//! each level reports `shared_with_previous`: the share of its stories
//! whose request is the same as the level before it in `levels` asks for
//! the same index.

use flow_engine::{
    Context, Outcome, ParamProblem, ParamSpec, ParamType, Params, Resources, Stage, StageError,
    Threads, Value,
};
use flow_generate::Message;

use crate::contracts::dataset::{self, Example, Origin, Task};
use crate::contracts::topics;
use crate::toolkit::generation::{self, common_params, Common, Gen, Job};
use crate::toolkit::params;
use crate::toolkit::seeds::item_hash;
use crate::toolkit::text::{fill, sentences};

/// The topic comes first and last: with the seeds in between only, SmolLM2-135M
/// mostly continued the seeds and ignored the topic (Distinct-5 did not move with
/// m_t, and a third of its answers copied a seed). The length is asked per
/// sentence: without it, its fifth sentences ran 15-35 words against about 10
/// in ROCStories.
pub const DEFAULT_PROMPT: &str = "Write a short story about {topic}.\nThe story has exactly five \
short, simple sentences of about {target_words} words each, like these examples:\n\n{examples}\n\n\
Write only the new story about {topic}: five sentences of about {target_words} words each.";

/// Words in a row an answer may share with its seed stories before it counts
/// as a copy (ROCStories sentences are 8-10 words long).
const COPY_WORDS: usize = 8;

/// This kind's own revision, beside the shared [`generation::VERSION`]:
/// 1: the prompt asks for the seeds' length (`{target_words}`, `{words}`);
/// length metrics; `independent_levels`; `levels` and `shared_with_previous`.
const REVISION: u32 = 1;

pub struct GenerateStories;

/// The parameters of a `generate_stories` stage, read once.
struct Settings {
    common: Common,
    /// m_t, the diversity level.
    topic_count: usize,
    count: usize,
    seed_stories: usize,
    /// Salt every per-level draw with m_t: levels share nothing by design.
    independent: bool,
    /// All levels of the fan-out, in Gen-D order (for `shared_with_previous`).
    levels: Vec<usize>,
}

impl Settings {
    fn from_params(p: &Params) -> Result<Self, StageError> {
        Ok(Settings {
            common: Common::from_params(p)?,
            topic_count: params::count(p, "topic_count")?,
            count: params::count(p, "count")?,
            seed_stories: params::count(p, "seed_stories")?,
            independent: params::flag(p, "independent_levels")?,
            levels: int_list(p, "levels")?,
        })
    }

    /// The level before this one in `levels`, if any.
    fn previous_level(&self) -> Option<usize> {
        let at = self.levels.iter().position(|&m| m == self.topic_count)?;
        at.checked_sub(1).map(|i| self.levels[i])
    }
}

/// A list of counts (`List(Int)`, items >= 0); missing means empty.
fn int_list(p: &Params, name: &str) -> Result<Vec<usize>, StageError> {
    let Some(items) = p.get(name).and_then(Value::as_list) else {
        return Ok(Vec::new());
    };
    items
        .iter()
        .map(|v| {
            v.as_i64()
                .and_then(|x| usize::try_from(x).ok())
                .ok_or_else(|| StageError::invalid(format!("`{name}`: {v:?} is not a count")))
        })
        .collect()
}

/// Problems of a `levels` list against the instance's own `level`: it must
/// hold the level, once, and no value twice.
pub fn check_levels(params: &Params, level_param: &str) -> Vec<ParamProblem> {
    let Some(items) = params.get("levels").and_then(Value::as_list) else {
        return Vec::new();
    };
    let values: Vec<i64> = items.iter().filter_map(Value::as_i64).collect();
    let mut out = Vec::new();
    for (i, v) in values.iter().enumerate() {
        if values[..i].contains(v) {
            out.push(ParamProblem::new(
                "levels",
                format!("holds {v} twice (each level once, in Gen-D order)"),
            ));
        }
    }
    if let Some(own) = params.int(level_param) {
        if !values.contains(&own) {
            out.push(ParamProblem::new(
                "levels",
                format!(
                    "does not hold this instance's {level_param} = {own}: list every level of \
                     the fan-out"
                ),
            ));
        }
    }
    out
}

/// Mean lengths in words (whitespace-separated, as Fig. 3 counts them).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Lengths {
    /// Of the whole story (input + target).
    pub words: f64,
    /// Of the target (the fifth sentence).
    pub target_words: f64,
}

impl Lengths {
    /// The means over `stories`; `None` when there are none.
    pub fn of<'a>(stories: impl IntoIterator<Item = &'a Example>) -> Option<Lengths> {
        let (mut n, mut words, mut target) = (0usize, 0usize, 0usize);
        for e in stories {
            let t = e.target.split_whitespace().count();
            n += 1;
            target += t;
            words += e.input.split_whitespace().count() + t;
        }
        (n > 0).then(|| Lengths {
            words: words as f64 / n as f64,
            target_words: target as f64 / n as f64,
        })
    }
}

/// A mean length as the prompt asks for it: a whole number, at least 1.
fn asked(mean: f64) -> String {
    (mean.round().max(1.0) as u64).to_string()
}

/// One story's request.
#[derive(Clone, Debug, PartialEq)]
pub struct Planned {
    /// The job id, which (with the attempt) seeds the sampling.
    pub item: String,
    pub topic: String,
    /// The seed stories shown, as "input target".
    pub shown: Vec<String>,
    /// The prompt.
    pub text: String,
}

/// The draws of one level, `seed` salted with it when levels are
/// independent: the purpose of each draw names the level.
fn purpose(base: &str, level: Option<usize>) -> String {
    match level {
        Some(m) => format!("{base}@topic_count={m}"),
        None => base.to_string(),
    }
}

/// What the requests of every level are drawn from.
pub struct Requests<'a> {
    pub prompt: &'a str,
    pub seed: u64,
    pub count: usize,
    /// Seed stories shown per request.
    pub seed_stories: usize,
    /// Salt every draw with the level.
    pub independent: bool,
    /// The topic pool.
    pub pool: &'a [String],
    /// The real stories.
    pub real: &'a [Example],
}

impl Requests<'_> {
    /// The `count` requests of level `m_t`: topics from the first m_t of one
    /// seeded ranking of the pool, seed stories from the real ones, the
    /// length placeholders filled from the shown seeds (from all real
    /// stories when none is shown).
    pub fn level(&self, m_t: usize) -> Result<Vec<Planned>, StageError> {
        let Requests {
            prompt,
            seed,
            count,
            seed_stories: n_seeds,
            independent,
            pool,
            real,
        } = *self;
        if pool.len() < m_t || m_t == 0 {
            return Err(StageError::invalid(format!(
                "topic_count = {m_t} but the pool has {} topics",
                pool.len()
            )));
        }
        let level = independent.then_some(m_t);
        let subset_purpose = purpose("stories/topic-subset", level);
        let topic_purpose = purpose("stories/topic", level);
        let seeds_purpose = purpose("stories/seeds", level);
        let mut ranked = pool.to_vec();
        ranked.sort_by_key(|t| item_hash(seed, &subset_purpose, &t.to_lowercase()));
        let subset = &ranked[..m_t];
        let pool_lengths = Lengths::of(real);
        let needs_length = prompt.contains("{words}") || prompt.contains("{target_words}");
        let mut out = Vec::with_capacity(count);
        for i in 0..count {
            let topic =
                &subset[(item_hash(seed, &topic_purpose, &i.to_string()) % m_t as u64) as usize];
            let mut picked: Vec<usize> = Vec::new();
            let mut j = 0;
            while picked.len() < n_seeds.min(real.len()) {
                let k = (item_hash(seed, &seeds_purpose, &format!("{i}/{j}")) % real.len() as u64)
                    as usize;
                if !picked.contains(&k) {
                    picked.push(k);
                }
                j += 1;
            }
            let shown: Vec<String> = picked
                .iter()
                .map(|&k| format!("{} {}", real[k].input.trim(), real[k].target.trim()))
                .collect();
            let examples = shown
                .iter()
                .map(|s| format!("Story: {s}"))
                .collect::<Vec<_>>()
                .join("\n\n");
            // The shown seeds' length; with none shown, the seed set's.
            let lengths = Lengths::of(picked.iter().map(|&k| &real[k])).or(pool_lengths);
            let (words, target_words) = match lengths {
                Some(l) => (asked(l.words), asked(l.target_words)),
                None if needs_length => return Err(StageError::invalid(
                    "the prompt asks for the seeds' length (`{words}` or `{target_words}`) but \
                         `seeds` has no stories",
                )),
                None => (String::new(), String::new()),
            };
            // Numbers first, so a `{words}` inside a seed story stays as written.
            let text = fill(
                prompt,
                &[
                    ("words", &words),
                    ("target_words", &target_words),
                    ("examples", &examples),
                    ("topic", topic),
                ],
            );
            let item = match level {
                Some(m) => format!("story/topic_count={m}/{i}"),
                None => format!("story/{i}"),
            };
            out.push(Planned {
                item,
                topic: topic.clone(),
                shown,
                text,
            });
        }
        Ok(out)
    }
}

/// The share of the kept stories (indices into `this`) whose request is the
/// same as the one `previous` makes for the same index: with one journal,
/// the same story at both levels.
pub fn shared_with(this: &[Planned], previous: &[Planned], kept: &[usize]) -> f64 {
    if kept.is_empty() {
        return 0.0;
    }
    let same = kept
        .iter()
        .filter(|&&i| {
            previous
                .get(i)
                .is_some_and(|p| p.item == this[i].item && p.text == this[i].text)
        })
        .count();
    same as f64 / kept.len() as f64
}

/// A five-sentence story from a model answer: (first four, fifth).
pub fn parse_story(text: &str) -> Option<(String, String)> {
    let body: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| {
            let lower = l.to_lowercase();
            let label = lower.starts_with("story") && l.len() < 40 && !l.contains('.');
            !(l.is_empty() || lower.starts_with("title") || label)
        })
        .collect();
    let joined = body.join(" ");
    let joined = joined
        .trim_start_matches("Story:")
        .trim_start_matches("New story:")
        .trim();
    let s = sentences(joined);
    if s.len() < 5 || s[..5].iter().any(|x| x.split_whitespace().count() < 3) {
        return None;
    }
    if !s[4].ends_with(['.', '!', '?', '"']) {
        return None;
    }
    Some((s[..4].join(" "), s[4].clone()))
}

/// Whether `story` repeats `COPY_WORDS` words in a row of one of `seeds`: a
/// small model often copies its examples, and a copied real story is not a
/// generated one (it would carry real data into the generated set).
pub fn copies_seed(story: &str, seeds: &[String]) -> bool {
    let words = |t: &str| -> Vec<String> {
        t.split(|c: char| !c.is_alphanumeric() && c != '\'')
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
            .collect()
    };
    let runs: std::collections::HashSet<Vec<String>> = seeds
        .iter()
        .flat_map(|s| {
            let w = words(s);
            w.windows(COPY_WORDS)
                .map(<[String]>::to_vec)
                .collect::<Vec<_>>()
        })
        .collect();
    words(story).windows(COPY_WORDS).any(|w| runs.contains(w))
}

impl Stage for GenerateStories {
    fn kind(&self) -> &'static str {
        "generate_stories"
    }
    fn version(&self) -> u32 {
        // Either part bumps it: 100 * shared + own.
        100 * generation::VERSION + REVISION
    }
    fn about(&self) -> &'static str {
        "Topic-guided story generation (Sec 3.2.1): one topic from a subset of size m_t plus real \
         seed stories per story, about the seeds' length, parsed into 4 sentences + 1"
    }
    fn params(&self) -> Vec<ParamSpec> {
        let mut p = common_params();
        p.extend([
            ParamSpec::input("seeds", "stage with real stories (the format examples)").required(),
            ParamSpec::input("topics", "a `topics` stage (the pool)").required(),
            ParamSpec::int(
                "topic_count",
                "m_t: size of the topic subset (the diversity level)",
            )
            .required()
            .min(1.0),
            ParamSpec::int("count", "stories asked for")
                .required()
                .min(1.0),
            ParamSpec::int("seed_stories", "real stories shown per request")
                .min(0.0)
                .default(3),
            ParamSpec::int("max_tokens", "most tokens per story")
                .min(1.0)
                .default(160),
            ParamSpec::string(
                "prompt",
                "the request; `{examples}` = the seed stories, `{topic}` = the topic, \
                 `{target_words}` / `{words}` = the shown seeds' mean length in words of the \
                 fifth sentence / of the story",
            )
            .default(DEFAULT_PROMPT),
            ParamSpec::bool(
                "independent_levels",
                "salt every per-level draw (topic ranking, topics, seeds, sampling seeds) with \
                 topic_count, so levels share no story by design (default: shared draws, \
                 common random numbers)",
            )
            .default(false),
            ParamSpec::list(
                "levels",
                ParamType::Int,
                "every topic_count of the fan-out in Gen-D order: each level then reports \
                 `shared_with_previous`, the share of its stories the level before it holds",
            ),
        ]);
        p
    }
    fn check(&self, params: &Params) -> Vec<ParamProblem> {
        let mut out = Vec::new();
        if let Some(p) = params.str("prompt") {
            if !p.contains("{topic}") {
                out.push(ParamProblem::new("prompt", "must contain `{topic}`"));
            }
        }
        out.extend(check_levels(params, "topic_count"));
        out
    }
    fn threads(&self, params: &Params, resources: &Resources) -> Threads {
        generation::threads(params, resources)
    }
    fn run(&self, ctx: &mut Context<'_>) -> Result<Outcome, StageError> {
        let settings = Settings::from_params(ctx.params)?;
        let (m_t, count, n_seeds, max_tokens) = (
            settings.topic_count,
            settings.count,
            settings.seed_stories,
            settings.common.max_tokens,
        );
        let seeds_in = ctx.input("seeds")?;
        let real = dataset::read_upstream(seeds_in)?;
        let real: Vec<Example> = real.into_iter().filter(|e| e.task == Task::Story).collect();
        if n_seeds > 0 && real.is_empty() {
            return Err(StageError::invalid(format!(
                "`{}` has no stories to use as seeds",
                seeds_in.instance
            )));
        }
        let topics_in = ctx.input("topics")?;
        let pool = topics::read(topics_in)?;
        let named = |e: StageError| match e {
            StageError::Invalid(m) => StageError::invalid(format!(
                "{m} (`{}`, seeds `{}`)",
                topics_in.instance, seeds_in.instance
            )),
            e => e,
        };
        let requests = Requests {
            prompt: &settings.common.prompt,
            seed: ctx.seed,
            count,
            seed_stories: n_seeds,
            independent: settings.independent,
            pool: &pool,
            real: &real,
        };
        let planned = requests.level(m_t).map_err(named)?;
        let previous = match settings.previous_level() {
            Some(m) => {
                let prev = requests.level(m).map_err(|e| match e {
                    StageError::Invalid(why) => StageError::invalid(format!(
                        "levels: the level before topic_count = {m_t}: {why}"
                    )),
                    e => e,
                })?;
                Some((m, prev))
            }
            None => None,
        };

        let mut gen = Gen::open(ctx, &settings.common)?;
        ctx.progress.set_total(count as u64, "stories");
        let jobs: Vec<Job> = planned
            .iter()
            .map(|p| {
                Job::new(
                    p.item.clone(),
                    vec![Message::user(p.text.clone())],
                    Some(max_tokens),
                )
            })
            .collect();
        // All stories at once (as many in flight as the backend allows);
        // each one's seed depends on its index only, so the order the
        // answers come in changes nothing.
        let parsed = gen.items(ctx, &jobs, |i, text| {
            parse_story(text).filter(|(input, target)| {
                !copies_seed(&format!("{input} {target}"), &planned[i].shown)
            })
        })?;
        let mut out = Vec::new();
        let mut kept = Vec::new();
        for (i, (parsed, p)) in parsed.into_iter().zip(&planned).enumerate() {
            if let Some((input, target)) = parsed {
                let mut extra = serde_json::Map::new();
                extra.insert("topic".into(), p.topic.clone().into());
                kept.push(i);
                out.push(Example {
                    id: format!("gen-story-{i}"),
                    task: Task::Story,
                    group: None,
                    context: None,
                    input,
                    target,
                    origin: Origin::Generated,
                    alt_targets: vec![],
                    extra,
                });
            }
        }
        ctx.log(format!("m_t = {m_t}: {}", gen.progress_line()));
        gen.check_yield()?;
        let mut outcome = gen
            .metrics(dataset::output(ctx, &out)?)
            .metric("n", out.len() as u64)
            .metric("topic_count", m_t as u64);
        outcome = length_metrics(outcome, &out, &real);
        if let Some((m, prev)) = previous {
            let share = shared_with(&planned, &prev, &kept);
            ctx.log(format!(
                "{:.1}% of these stories are asked as at topic_count = {m}",
                100.0 * share
            ));
            outcome = outcome
                .metric("shared_with_previous", share)
                .metric("previous_topic_count", m as u64);
        }
        Ok(outcome)
    }
}

/// Generated versus real length, in words: `target_words_mean` and
/// `words_mean` of the generated stories, `seed_target_words_mean` and
/// `seed_words_mean` of the real stories they were seeded with.
fn length_metrics(outcome: Outcome, generated: &[Example], real: &[Example]) -> Outcome {
    let mut o = outcome;
    if let Some(l) = Lengths::of(generated) {
        o = o
            .metric("target_words_mean", l.target_words)
            .metric("words_mean", l.words);
    }
    if let Some(l) = Lengths::of(real) {
        o = o
            .metric("seed_target_words_mean", l.target_words)
            .metric("seed_words_mean", l.words);
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{example, params};

    /// Three seeds: 10, 12, 14 words of input, 4, 6, 11 of target.
    fn seeds() -> Vec<Example> {
        [
            (
                "One two three four five six seven eight nine ten.",
                "He went home again.",
            ),
            (
                "One two three four five six seven eight nine ten eleven twelve.",
                "She found the key at last.",
            ),
            (
                "One two three four five six seven eight nine ten eleven twelve thirteen fourteen.",
                "In the end they all laughed about it for a while.",
            ),
        ]
        .iter()
        .enumerate()
        .map(|(i, (a, b))| example(&format!("s{i}"), Task::Story, None, a, b))
        .collect()
    }

    fn pool(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("Topic {i}")).collect()
    }

    fn requests<'a>(
        prompt: &'a str,
        seed_stories: usize,
        independent: bool,
        pool: &'a [String],
        real: &'a [Example],
    ) -> Requests<'a> {
        Requests {
            prompt,
            seed: 7,
            count: 200,
            seed_stories,
            independent,
            pool,
            real,
        }
    }

    #[test]
    fn the_prompt_asks_for_the_seeds_length() {
        let (real, pool) = (seeds(), pool(4));
        // All three seeds shown: (4 + 6 + 11) / 3 = 7 words per fifth sentence.
        let all = requests(DEFAULT_PROMPT, 3, false, &pool, &real)
            .level(2)
            .unwrap();
        for p in &all {
            assert_eq!(p.shown.len(), 3);
            assert_eq!(
                p.text.matches("of about 7 words each").count(),
                2,
                "{}",
                p.text
            );
            assert!(p.text.contains(&format!("about {}.", p.topic)));
            assert!(!p.text.contains('{'), "{}", p.text);
        }
        // One seed shown: its own length; whole stories with `{words}`.
        let custom = "About {topic}, {words} words; the last sentence {target_words}.\n{examples}";
        let one = requests(custom, 1, false, &pool, &real).level(2).unwrap();
        let want = |shown: &str| {
            let e = real
                .iter()
                .find(|e| shown.starts_with(e.input.as_str()))
                .unwrap();
            let t = e.target.split_whitespace().count();
            (e.input.split_whitespace().count() + t, t)
        };
        let mut seen = std::collections::BTreeSet::new();
        for p in &one {
            let (words, target) = want(&p.shown[0]);
            seen.insert(target);
            assert!(
                p.text
                    .contains(&format!("{words} words; the last sentence {target}.")),
                "{}",
                p.text
            );
        }
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), [4, 6, 11]);
        // No seed shown: the seed set's mean, (14 + 18 + 25) / 3 = 19 and 7.
        let none = requests(custom, 0, false, &pool, &real).level(2).unwrap();
        assert!(
            none[0].text.contains("19 words; the last sentence 7."),
            "{}",
            none[0].text
        );
        // No seeds at all: an error, not an empty number.
        let err = requests(custom, 0, false, &pool, &[]).level(2).unwrap_err();
        assert!(err.to_string().contains("`{target_words}`"), "{err}");
        assert!(requests("About {topic}.", 0, false, &pool, &[])
            .level(2)
            .is_ok());
        // A level larger than the pool is an error, not a panic.
        assert!(requests(DEFAULT_PROMPT, 3, false, &pool, &real)
            .level(5)
            .is_err());
    }

    #[test]
    fn length_metrics_compare_generated_with_real_words() {
        let generated = vec![
            example("g0", Task::Story, None, "A b c.", "One two three."),
            example("g1", Task::Story, None, "A b.", "One two three four five."),
        ];
        let o = length_metrics(Outcome::default(), &generated, &seeds());
        let num = |k: &str| o.metrics[k].as_f64().unwrap();
        assert_eq!(num("target_words_mean"), 4.0);
        assert_eq!(num("words_mean"), (6.0 + 7.0) / 2.0);
        assert_eq!(num("seed_target_words_mean"), 7.0);
        assert_eq!(num("seed_words_mean"), 19.0);
        // Nothing generated: no generated means, the seeds' still.
        let o = length_metrics(Outcome::default(), &[], &seeds());
        assert!(!o.metrics.contains_key("target_words_mean"));
        assert!(o.metrics.contains_key("seed_target_words_mean"));
    }

    #[test]
    fn levels_share_draws_unless_independent() {
        let (real, pool) = (seeds(), pool(8));
        let all: Vec<usize> = (0..200).collect();
        let nested = requests(DEFAULT_PROMPT, 2, false, &pool, &real);
        let (two, four) = (nested.level(2).unwrap(), nested.level(4).unwrap());
        // Common random numbers: the same seeds and sampling seed for story i
        // at every level; the topic too when index i falls in both subsets.
        assert!(two
            .iter()
            .zip(&four)
            .all(|(a, b)| a.shown == b.shown && a.item == b.item));
        let same_topic = two
            .iter()
            .zip(&four)
            .filter(|(a, b)| a.topic == b.topic)
            .count();
        let share = shared_with(&four, &two, &all);
        assert_eq!(share, same_topic as f64 / 200.0);
        // Nested subsets, m_t 2 of 4: about half of the stories.
        assert!((0.35..0.65).contains(&share), "{share}");
        assert_eq!(shared_with(&four, &four, &all), 1.0);
        // Only the kept stories count.
        let kept: Vec<usize> = (0..200)
            .filter(|&i| two[i].topic == four[i].topic)
            .collect();
        assert_eq!(shared_with(&four, &two, &kept), 1.0);
        assert_eq!(shared_with(&four, &two, &[]), 0.0);

        let independent = requests(DEFAULT_PROMPT, 2, true, &pool, &real);
        let (two_i, four_i) = (independent.level(2).unwrap(), independent.level(4).unwrap());
        assert_eq!(shared_with(&four_i, &two_i, &all), 0.0);
        assert!(two_i.iter().zip(&four_i).all(|(a, b)| a.item != b.item));
        // Other seed stories for most stories (3 seeds, 6 ordered pairs).
        let other_seeds = two_i
            .iter()
            .zip(&four_i)
            .filter(|(a, b)| a.shown != b.shown)
            .count();
        assert!(other_seeds > 120, "{other_seeds}");
        // And other draws than the shared ones of the same level.
        let moved = four
            .iter()
            .zip(&four_i)
            .filter(|(a, b)| a.shown != b.shown)
            .count();
        assert!(moved > 120, "{moved}");
    }

    #[test]
    fn levels_must_list_the_instance_level_once() {
        let p = |levels: Vec<i64>| {
            params(
                &GenerateStories,
                &[("topic_count", 4.into()), ("levels", levels.into())],
            )
        };
        assert!(check_levels(&p(vec![1, 2, 4, 8]), "topic_count").is_empty());
        let missing = check_levels(&p(vec![1, 2, 8]), "topic_count");
        assert_eq!(missing.len(), 1);
        assert!(
            missing[0].message.contains("topic_count = 4"),
            "{}",
            missing[0].message
        );
        assert_eq!(check_levels(&p(vec![1, 4, 1]), "topic_count").len(), 1);
        let none = params(&GenerateStories, &[("topic_count", 4.into())]);
        assert!(check_levels(&none, "topic_count").is_empty());
    }

    #[test]
    fn five_sentences_are_split_four_plus_one() {
        let (i, t) = parse_story(
            "Title: The Dog\nStory: Sam found a dog. He took it home. His mom said no. \
             Sam cried all night.\nIn the morning the dog was still there.",
        )
        .unwrap();
        assert_eq!(
            i,
            "Sam found a dog. He took it home. His mom said no. Sam cried all night."
        );
        assert_eq!(t, "In the morning the dog was still there.");
        assert!(parse_story("Too short. Only two.").is_none());
    }

    #[test]
    fn an_answer_repeating_a_seed_is_a_copy() {
        let seeds = vec![
            "Rick grew up in a troubled household. He never found good support in family, and \
             turned to gangs."
                .to_string(),
        ];
        // A real SmolLM2 answer that continued its seed story.
        assert!(copies_seed(
            "The story was: Rick grew up in a troubled household! He never found good support.",
            &seeds
        ));
        assert!(!copies_seed(
            "Rick grew up on a farm. He never found his dog, and turned to his friends for help.",
            &seeds
        ));
    }
}
