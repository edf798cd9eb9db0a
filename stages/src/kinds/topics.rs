//! `topics`: a pool of story topics (Appendix A.2, A.4), deduplicated
//! case-insensitively, asking again until `count` topics are found or
//! `max_requests` requests are spent.
//!
//! Output `topics.json`: an array of strings, in the order they were found.

use std::collections::HashSet;

use flow_engine::{Context, Outcome, ParamSpec, Params, Resources, Stage, StageError, Threads};
use flow_generate::Message;

use crate::contracts::topics;
use crate::toolkit::generation::{self, common_params, Common, Gen, Job};
use crate::toolkit::params;
use crate::toolkit::text::{fill, strip_marker};

pub const DEFAULT_PROMPT: &str =
    "List {n} different topics for short stories. Each topic is one to \
three words, like \"Adventure\", \"Betrayal\", \"Time travel\", \"A lost dog\" or \"First day at \
school\". Write one topic per line, numbered, and nothing else. Start with topics about {hint}.";

/// Themes rotated through the requests so that repeated asks spread out.
const HINTS: &[&str] = &[
    "everyday life",
    "family",
    "nature",
    "work",
    "school",
    "travel",
    "food",
    "sports",
    "friendship",
    "animals",
    "money",
    "holidays",
    "the city",
    "science",
    "music",
    "weather",
    "health",
    "history",
    "technology",
    "mystery",
    "love",
    "neighbors",
    "hobbies",
    "the sea",
];

pub struct Topics;

/// The parameters of a `topics` stage, read once.
struct Settings {
    common: Common,
    count: usize,
    per_request: usize,
    /// `max_requests`, else 4 * count / per_request + 4.
    max_requests: usize,
}

impl Settings {
    fn from_params(p: &Params) -> Result<Self, StageError> {
        let count = params::count(p, "count")?;
        let per_request = params::count(p, "per_request")?;
        Ok(Settings {
            common: Common::from_params(p)?,
            count,
            per_request,
            max_requests: params::opt_count(p, "max_requests")?
                .unwrap_or((4 * count / per_request).saturating_add(4)),
        })
    }
}

/// Topics in one answer: list lines, markers stripped, 1-6 words, no sentences.
/// A small model decorates its list ("### Adventure", "Sports: 1",
/// "Adventure - 20 topics", "Food: List 10 topics for food"): the topic is
/// what comes before a colon or dash, and lines that still speak of topics or
/// carry numbers are not topics, nor are fragments of under three letters.
pub fn parse_topics(text: &str) -> Vec<String> {
    text.lines()
        .map(strip_marker)
        .map(|t| {
            let t = t.trim_start_matches(['#', '*', ' ']);
            let head = t.split([':', '(']).next().unwrap_or(t);
            let head = head.split(" - ").next().unwrap_or(head);
            head.trim_end_matches(['.', ',', ';'])
                .trim_matches(['"', '*', '\'', ' '])
                .to_string()
        })
        .filter(|t| {
            let words = t.split_whitespace().count();
            let lower = t.to_lowercase();
            (1..=6).contains(&words)
                && t.len() <= 60
                && t.chars().filter(|c| c.is_alphabetic()).count() >= 3
                && !t.chars().any(|c| c.is_ascii_digit())
                && !lower.contains("topic")
                && !lower.starts_with("here ")
        })
        .collect()
}

impl Stage for Topics {
    fn kind(&self) -> &'static str {
        "topics"
    }
    fn version(&self) -> u32 {
        generation::VERSION
    }
    fn about(&self) -> &'static str {
        "A deduplicated pool of story topics asked from an LLM (Appendix A.4)"
    }
    fn params(&self) -> Vec<ParamSpec> {
        let mut p = common_params();
        p.extend([
            ParamSpec::int("count", "topics wanted")
                .min(1.0)
                .max(1_000_000.0)
                .default(100),
            ParamSpec::int("per_request", "topics asked for per request")
                .min(1.0)
                .max(1_000.0)
                .default(20),
            ParamSpec::int(
                "max_requests",
                "request budget; default 4 * count / per_request + 4",
            )
            .min(1.0),
            ParamSpec::int("max_tokens", "most tokens per answer")
                .min(1.0)
                .default(200),
            ParamSpec::string(
                "prompt",
                "the request; `{n}` = per_request, `{hint}` = a theme",
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
        let (count, per, budget) = (s.count, s.per_request, s.max_requests);
        let (max_tokens, prompt) = (s.common.max_tokens, &s.common.prompt);
        let mut gen = Gen::open(ctx, &s.common)?;
        ctx.progress.set_total(count as u64, "topics");
        let mut seen = HashSet::new();
        let mut pool: Vec<String> = Vec::new();
        // Requests are read in order, as if asked one by one; each round asks
        // at once as many as could fill the pool if every one brought
        // `per_request` new topics. Answers a full pool does not need stay in
        // the journal for a larger `count`.
        let mut requests = 0;
        while pool.len() < count && requests < budget {
            let want = (count - pool.len())
                .div_ceil(per)
                .clamp(1, budget - requests);
            let jobs: Vec<Job> = (requests..requests + want)
                .map(|r| {
                    let hint = HINTS[r % HINTS.len()];
                    let text = fill(prompt, &[("n", &per.to_string()), ("hint", hint)]);
                    Job::new(
                        format!("topics/{r}"),
                        vec![Message::user(text)],
                        Some(max_tokens),
                    )
                })
                .collect();
            let asks: Vec<(&Job, u32)> = jobs.iter().map(|j| (j, 0)).collect();
            let answers = gen.ask_batch(ctx, &asks, |_, _| {})?;
            for answer in answers {
                if pool.len() >= count {
                    break;
                }
                requests += 1;
                gen.counts.asked += 1;
                let found = answer.map(|c| parse_topics(&c.text)).unwrap_or_default();
                if found.is_empty() {
                    gen.counts.dropped += 1;
                } else {
                    gen.counts.got += 1;
                }
                for t in found {
                    if pool.len() >= count {
                        break;
                    }
                    if seen.insert(t.to_lowercase()) {
                        pool.push(t);
                        ctx.progress.advance(1);
                    }
                }
            }
            ctx.progress.message(&gen.progress_line());
        }
        ctx.log(format!(
            "{} topics from {requests} requests; {}",
            pool.len(),
            gen.progress_line()
        ));
        gen.check_answered()?;
        if pool.len() < count {
            let min = s.common.min_yield;
            if (pool.len() as f64) < min * count as f64 {
                return Err(StageError::invalid(format!(
                    "only {} of {count} topics after {requests} requests (max_requests = {budget})",
                    pool.len()
                )));
            }
        }
        Ok(gen
            .metrics(topics::output(ctx, &pool)?)
            .metric("topics", pool.len() as u64)
            .metric("requests", requests as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_are_parsed_from_a_numbered_list() {
        let t = parse_topics(
            "Here are 3 topics:\n1. Time travel\n2. **A lost dog**\n3. The day everything went \
             wrong at the old mill by the river\n- Betrayal.",
        );
        assert_eq!(t, vec!["Time travel", "A lost dog", "Betrayal"]);
    }

    #[test]
    fn decorations_of_real_smollm2_lists_are_stripped() {
        // Lines from SmolLM2-135M's answers to the default prompt.
        let t = parse_topics(
            "Adventure: 1\n### Mustangs: A\nAdventure - 20 topics\nFood: List 10 topics for \
             food\nTopics about sports:\n12. Sports: 1\nA Lost Dog - 12 topics\nBetrayal: \"The \
             Time Travel\nJa\nA",
        );
        assert_eq!(
            t,
            vec![
                "Adventure",
                "Mustangs",
                "Adventure",
                "Food",
                "Sports",
                "A Lost Dog",
                "Betrayal"
            ]
        );
    }
}
