//! `generate_stories`: topic-guided story generation (Sec 3.2.1).
//!
//! The diversity level is m_t = `topic_count`: the subset is the first m_t
//! topics of one seeded ranking of the pool (so smaller subsets nest in
//! larger ones). Story i draws one topic from the subset and `seed_stories`
//! real stories, and asks for a new story on that topic in the same format
//! (five sentences) and about the same length. The answer is parsed into
//! input (4 sentences) + target (the 5th); malformed answers are retried.

use flow_engine::{
    Context, Outcome, ParamProblem, ParamSpec, Params, Resources, Stage, StageError, Threads,
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
/// m_t, and a third of its answers copied a seed).
pub const DEFAULT_PROMPT: &str = "Write a short story about {topic}.\nThe story has exactly five \
short, simple sentences, like these examples:\n\n{examples}\n\nWrite only the new story about \
{topic}.";

/// Words in a row an answer may share with its seed stories before it counts
/// as a copy (ROCStories sentences are 8-10 words long).
const COPY_WORDS: usize = 8;

pub struct GenerateStories;

/// The parameters of a `generate_stories` stage, read once.
struct Settings {
    common: Common,
    /// m_t, the diversity level.
    topic_count: usize,
    count: usize,
    seed_stories: usize,
}

impl Settings {
    fn from_params(p: &Params) -> Result<Self, StageError> {
        Ok(Settings {
            common: Common::from_params(p)?,
            topic_count: params::count(p, "topic_count")?,
            count: params::count(p, "count")?,
            seed_stories: params::count(p, "seed_stories")?,
        })
    }
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
        generation::VERSION
    }
    fn about(&self) -> &'static str {
        "Topic-guided story generation (Sec 3.2.1): one topic from a subset of size m_t plus real \
         seed stories per story, parsed into 4 sentences + 1"
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
                "the request; `{examples}` = the seed stories, `{topic}` = the topic",
            )
            .default(DEFAULT_PROMPT),
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
        if pool.len() < m_t {
            return Err(StageError::invalid(format!(
                "topic_count = {m_t} but `{}` has only {} topics",
                topics_in.instance,
                pool.len()
            )));
        }
        let seed = ctx.seed;
        let mut ranked = pool.clone();
        ranked.sort_by_key(|t| item_hash(seed, "stories/topic-subset", &t.to_lowercase()));
        let subset = &ranked[..m_t];

        let mut gen = Gen::open(ctx, &settings.common)?;
        ctx.progress.set_total(count as u64, "stories");
        let mut topics = Vec::with_capacity(count);
        let mut seed_texts = Vec::with_capacity(count);
        let mut jobs = Vec::with_capacity(count);
        for i in 0..count {
            let topic =
                &subset[(item_hash(seed, "stories/topic", &i.to_string()) % m_t as u64) as usize];
            let mut picked: Vec<usize> = Vec::new();
            let mut j = 0;
            while picked.len() < n_seeds.min(real.len()) {
                let k = (item_hash(seed, "stories/seeds", &format!("{i}/{j}")) % real.len() as u64)
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
            seed_texts.push(shown);
            let text = fill(&settings.common.prompt, &[("examples", &examples), ("topic", topic)]);
            topics.push(topic.clone());
            jobs.push(Job::new(
                format!("story/{i}"),
                vec![Message::user(text)],
                Some(max_tokens),
            ));
        }
        // All stories at once (as many in flight as the backend allows);
        // each one's seed depends on its index only, so the order the
        // answers come in changes nothing.
        let parsed = gen.items(ctx, &jobs, |i, text| {
            parse_story(text).filter(|(input, target)| {
                !copies_seed(&format!("{input} {target}"), &seed_texts[i])
            })
        })?;
        let mut out = Vec::new();
        for (i, (parsed, topic)) in parsed.into_iter().zip(topics).enumerate() {
            if let Some((input, target)) = parsed {
                let mut extra = serde_json::Map::new();
                extra.insert("topic".into(), topic.into());
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
        Ok(gen
            .metrics(dataset::output(ctx, &out)?)
            .metric("n", out.len() as u64)
            .metric("topic_count", m_t as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
