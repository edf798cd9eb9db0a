//! What the generation stages share: opening the generator of a
//! `[generators.*]` entry behind the request journal, per-item seeds,
//! retries within a budget, and the asked/got/retried/dropped counters.
//!
//! Every request is journaled under the hash of (generator identity =
//! implementation + weights blake3, messages, sampling incl. its seed) in
//! `<cache>/journal/generate/journal.jsonl`, shared by all stages and runs:
//! a request answered once is never generated again, whatever else changed.
//! Per-item seeds derive from (stage seed, item id, attempt) only, so the
//! first n items of a run with count = 2n are those of the run with count = n.

use std::collections::BTreeMap;

use flow_engine::{Context, Env, ParamSpec, StageError, Value};
use flow_generate::{Completion, Journal, Journaled, LocalGenerator, Message, Request, Sampling};
use flow_models::{Format, ModelEnv, ModelSpec};

use crate::seeds::item_hash;

/// Parameters every generation stage takes.
pub fn common_params() -> Vec<ParamSpec> {
    vec![
        ParamSpec::generator(
            "generator",
            "the `[generators.*]` entry that writes the text",
        )
        .required(),
        ParamSpec::int(
            "max_attempts",
            "tries per item before it is dropped (malformed output)",
        )
        .min(1.0)
        .default(3),
        ParamSpec::float(
            "min_yield",
            "the stage fails when fewer than this share of the asked items survive",
        )
        .min(0.0)
        .max(1.0)
        .default(0.5),
    ]
}

fn to_err(e: impl std::fmt::Display) -> StageError {
    StageError::Other(e.to_string())
}

fn table_str(t: &BTreeMap<String, Value>, k: &str) -> Option<String> {
    t.get(k).and_then(Value::as_str).map(str::to_string)
}

/// The model spec of a `[models.*]` entry (or a known short name).
pub fn model_spec(models: &BTreeMap<String, BTreeMap<String, Value>>, name: &str) -> ModelSpec {
    let Some(t) = models.get(name) else {
        return ModelSpec {
            name: Some(name.to_string()),
            ..Default::default()
        };
    };
    ModelSpec {
        name: table_str(t, "name").or_else(|| Some(name.to_string())),
        path: table_str(t, "path").map(Into::into),
        hub: table_str(t, "hub"),
        revision: table_str(t, "revision"),
        file: table_str(t, "file"),
        package: table_str(t, "package"),
        tokenizer: table_str(t, "tokenizer").map(Into::into),
        format: table_str(t, "format").and_then(|f| Format::parse(&f)),
        arch: table_str(t, "arch"),
    }
}

pub fn model_env(env: &Env) -> ModelEnv {
    ModelEnv {
        base_dir: env.manifest_dir.clone(),
        models_dir: env.models_dir.clone(),
        download_dir: None,
        offline: flow_models::offline_from_env(),
    }
}

/// Counters of one stage run.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counts {
    pub asked: u64,
    pub got: u64,
    pub retried: u64,
    pub dropped: u64,
}

pub struct Gen {
    pub journaled: Journaled,
    pub sampling: Sampling,
    base_seed: u64,
    max_attempts: u32,
    pub counts: Counts,
}

impl Gen {
    /// Opens the stage's generator and the shared journal.
    pub fn open(ctx: &mut Context<'_>) -> Result<Gen, StageError> {
        let name = ctx.params.require_str("generator")?.to_string();
        let table = ctx.resources.generators.get(&name).ok_or_else(|| {
            StageError::invalid(format!("no `[generators.{name}]` entry in the manifest"))
        })?;
        let backend = table_str(table, "backend").unwrap_or_else(|| "local".into());
        if backend != "local" {
            return Err(StageError::invalid(format!(
                "generator `{name}`: backend `{backend}` is not available in this build (only \
                 `local`)"
            )));
        }
        let model_name = table_str(table, "model")
            .ok_or_else(|| StageError::invalid(format!("generator `{name}` has no `model`")))?;
        let mut spec = model_spec(&ctx.resources.models, &model_name);
        spec.format.get_or_insert(Format::Gguf);
        let resolved = flow_models::resolve(&spec, &model_env(ctx.env)).map_err(to_err)?;
        ctx.log(format!(
            "model `{model_name}`: {} (from {})",
            resolved.weights.display(),
            resolved.source
        ));
        let local = LocalGenerator::load(&resolved, None).map_err(to_err)?;
        let journal_dir = ctx.env.cache_dir.join("journal").join("generate");
        let journal = Journal::open(&journal_dir).map_err(to_err)?;
        let stop = table
            .get("stop")
            .and_then(Value::as_list)
            .map(|l| {
                l.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        let sampling = Sampling {
            temperature: table
                .get("temperature")
                .and_then(Value::as_f64)
                .unwrap_or(0.7),
            top_p: table.get("top_p").and_then(Value::as_f64).unwrap_or(1.0),
            max_tokens: table
                .get("max_tokens")
                .and_then(Value::as_i64)
                .unwrap_or(256) as usize,
            stop,
            seed: 0,
        };
        let base_seed = table
            .get("seed")
            .and_then(Value::as_i64)
            .map(|s| s as u64)
            .unwrap_or(ctx.seed);
        let max_attempts = ctx.params.int("max_attempts").unwrap_or(3).max(1) as u32;
        Ok(Gen {
            journaled: Journaled::new(Box::new(local), journal),
            sampling,
            base_seed,
            max_attempts,
            counts: Counts::default(),
        })
    }

    /// One request for `item` at `attempt`; `max_tokens` overrides the generator's.
    pub fn ask(
        &mut self,
        messages: Vec<Message>,
        item: &str,
        attempt: u32,
        max_tokens: Option<usize>,
    ) -> Result<Completion, StageError> {
        let mut sampling = self.sampling.clone();
        sampling.seed = item_hash(self.base_seed, "generate", &format!("{item}#{attempt}"));
        if let Some(m) = max_tokens {
            sampling.max_tokens = m;
        }
        self.journaled
            .generate_one(&Request { messages, sampling })
            .map_err(to_err)
    }

    /// Asks for one item until `parse` accepts the output or the attempts
    /// run out (then the item is dropped and counted).
    pub fn item<T>(
        &mut self,
        ctx: &Context<'_>,
        messages: Vec<Message>,
        item: &str,
        max_tokens: Option<usize>,
        mut parse: impl FnMut(&str) -> Option<T>,
    ) -> Result<Option<T>, StageError> {
        self.counts.asked += 1;
        for attempt in 0..self.max_attempts {
            ctx.cancel.check()?;
            if attempt > 0 {
                self.counts.retried += 1;
            }
            let c = self.ask(messages.clone(), item, attempt, max_tokens)?;
            if let Some(v) = parse(&c.text) {
                self.counts.got += 1;
                return Ok(Some(v));
            }
            tracing::debug!(item, attempt, text = %c.text, "malformed output");
        }
        self.counts.dropped += 1;
        Ok(None)
    }

    /// A progress line: items and tokens/s.
    pub fn progress_line(&self) -> String {
        let s = self.journaled.stats();
        format!(
            "{} ok, {} dropped, {} from journal; {:.0} prompt tok/s, {:.1} gen tok/s",
            self.counts.got,
            self.counts.dropped,
            self.journaled.hits,
            s.prompt_tps(),
            s.completion_tps()
        )
    }

    /// Fails when too few items survived.
    pub fn check_yield(&self, ctx: &Context<'_>) -> Result<(), StageError> {
        let min = ctx.params.float("min_yield").unwrap_or(0.5);
        let c = self.counts;
        if c.asked > 0 && (c.got as f64) < min * c.asked as f64 {
            return Err(StageError::invalid(format!(
                "only {} of {} items survived ({} dropped after {} retries); min_yield = {min}",
                c.got, c.asked, c.dropped, c.retried
            )));
        }
        Ok(())
    }

    pub fn metrics(&self, outcome: flow_engine::Outcome) -> flow_engine::Outcome {
        let s = self.journaled.stats();
        outcome
            .metric("asked", self.counts.asked)
            .metric("got", self.counts.got)
            .metric("retried", self.counts.retried)
            .metric("dropped", self.counts.dropped)
            .metric("journal_hits", self.journaled.hits)
            .metric("generated", self.journaled.calls)
            .metric("prompt_tokens", s.prompt_tokens)
            .metric("completion_tokens", s.completion_tokens)
    }
}

/// Fills `{name}` placeholders of a prompt template.
pub fn fill(template: &str, vars: &[(&str, &str)]) -> String {
    let mut out = template.to_string();
    for (k, v) in vars {
        out = out.replace(&format!("{{{k}}}"), v);
    }
    out
}

/// Splits text into sentences (ends at `.`, `!`, `?` followed by space or the end).
pub fn sentences(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        cur.push(c);
        i += 1;
        if !matches!(c, '.' | '!' | '?') {
            continue;
        }
        // A closing quote after the punctuation belongs to the sentence.
        let mut j = i;
        while j < chars.len() && matches!(chars[j], '"' | '\u{201d}' | '\'') {
            j += 1;
        }
        if chars.get(j).is_none_or(|n| n.is_whitespace()) {
            cur.extend(&chars[i..j]);
            i = j;
            let s = cur.trim().to_string();
            if !s.is_empty() {
                out.push(s);
            }
            cur.clear();
        }
    }
    let rest = cur.trim();
    if !rest.is_empty() {
        out.push(rest.to_string());
    }
    out
}

/// Removes list markers (`1.`, `-`, `*`, `Q1:`) and quotes around a line.
pub fn strip_marker(line: &str) -> String {
    let mut s = line.trim();
    s = s.trim_start_matches(['-', '*', '•']).trim_start();
    let digits = s.chars().take_while(char::is_ascii_digit).count();
    if digits > 0 {
        let rest = &s[digits..];
        if let Some(r) = rest.strip_prefix(['.', ')', ':']) {
            s = r.trim_start();
        }
    }
    s.trim_matches(['"', '*', '\'']).trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_split_on_terminal_punctuation() {
        let s = sentences("Tom ran. He fell! Why? Mr. X came. \"Yes.\" done");
        assert_eq!(s[0], "Tom ran.");
        assert_eq!(s[1], "He fell!");
        assert_eq!(s[2], "Why?");
        assert_eq!(s[s.len() - 2], "\"Yes.\"");
        assert_eq!(s.last().unwrap(), "done");
    }

    #[test]
    fn markers_are_stripped() {
        assert_eq!(strip_marker("1. Time travel"), "Time travel");
        assert_eq!(strip_marker("- \"Betrayal\""), "Betrayal");
        assert_eq!(strip_marker("12) **Space**"), "Space");
    }

    #[test]
    fn fill_replaces_placeholders() {
        assert_eq!(
            fill("a {x} b {x} {y}", &[("x", "1"), ("y", "2")]),
            "a 1 b 1 2"
        );
    }
}
