//! What the generation stages share: opening the generator of a
//! `[generators.*]` entry behind the request journal, per-item seeds,
//! batches of requests answered concurrently, retries of malformed output
//! within a budget, and the asked/got/retried/dropped counters.
//!
//! Every request is journaled under the hash of (generator identity =
//! implementation + weights blake3 or endpoint model, messages, sampling incl.
//! its seed) in the journal under `<cache>/journal/generate/` (one segment
//! per writer, read as a union), shared by all stages and runs: a request
//! answered once is never generated (or paid for) again, whatever else changed. Per-item seeds derive from (stage seed, item id,
//! attempt) only, so the first n items of a run with count = 2n are those of
//! the run with count = n, and the output is the same whatever order the
//! answers of a batch arrive in.
//!
//! Backends (`backend` of the generator entry): `local` runs the model in
//! process; `openai` asks an OpenAI-compatible endpoint (`base_url`,
//! `model`), with the key read from the environment variable `api_key_env`
//! names. The endpoint's model name is in the content key and the journal
//! key; `base_url` is not: another address serving the same model name (a
//! proxy, another host of the same vLLM deployment) is the same generator.

use std::collections::BTreeMap;

use flow_engine::{CancelToken, Context, ParamSpec, Params, Resources, StageError, Threads, Value};
use flow_generate::{
    ApiKey, Completion, GenError, Generator, Journal, Journaled, LocalGenerator, Message,
    OpenAiConfig, OpenAiGenerator, Request, Sampling, Sink,
};
use flow_models::Format;

use crate::resources::{generator_params, GENERATORS};
use crate::toolkit::cache_dirs;
use crate::toolkit::models::resolve_model;
use crate::toolkit::params::{self, table_str};
use crate::toolkit::seeds::item_hash;

/// Parameters every generation stage takes.
pub fn common_params() -> Vec<ParamSpec> {
    vec![
        crate::resources::generator_param(
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

/// What every generation kind reads the same way: its [`common_params`],
/// and the `max_tokens` and `prompt` each kind declares with a default of
/// its own.
#[derive(Clone, Debug)]
pub struct Common {
    /// The `[generators.*]` entry.
    pub generator: String,
    pub max_attempts: u32,
    pub min_yield: f64,
    /// Most tokens per answer (overrides the generator's).
    pub max_tokens: usize,
    /// The request template.
    pub prompt: String,
}

impl Common {
    pub fn from_params(p: &Params) -> Result<Common, StageError> {
        Ok(Common {
            generator: params::string(p, "generator")?,
            max_attempts: p.require_int("max_attempts")?.max(1) as u32,
            min_yield: p.require_float("min_yield")?,
            max_tokens: params::count(p, "max_tokens")?,
            prompt: params::string(p, "prompt")?,
        })
    }
}

fn to_err(e: impl std::fmt::Display) -> StageError {
    StageError::Other(e.to_string())
}

fn gen_err(e: GenError) -> StageError {
    match e {
        GenError::Cancelled => StageError::Cancelled,
        GenError::Config(m) => StageError::invalid(m),
        e => to_err(e),
    }
}

/// Cores a generation stage keeps busy: all of them for the in-process model, one for a
/// server (the work happens there; this side waits on the network), so the scheduler runs
/// HTTP generation beside training instead of before or after it.
pub fn threads(params: &Params, resources: &Resources) -> Threads {
    let local = params
        .str("generator")
        .and_then(|name| resources.get(GENERATORS, name))
        .is_none_or(|t| table_str(t, "backend").is_none_or(|b| b == "local"));
    if local {
        Threads::All
    } else {
        Threads::One
    }
}

/// Counters of one stage run.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counts {
    pub asked: u64,
    pub got: u64,
    pub retried: u64,
    /// Items lost: malformed after every attempt, or their request failed.
    pub dropped: u64,
    /// Requests that failed for good (retries spent, or refused).
    pub failed: u64,
    /// Requests answered (from the backend or the journal).
    pub answered: u64,
}

/// What to ask for one item: its id (which, with the attempt, seeds it),
/// the messages, and a `max_tokens` overriding the generator's.
#[derive(Clone, Debug)]
pub struct Job {
    pub item: String,
    pub messages: Vec<Message>,
    pub max_tokens: Option<usize>,
}

impl Job {
    pub fn new(item: impl Into<String>, messages: Vec<Message>, max_tokens: Option<usize>) -> Job {
        Job {
            item: item.into(),
            messages,
            max_tokens,
        }
    }
}

/// Prices per million tokens, for the cost metric.
#[derive(Clone, Copy, Debug, Default)]
struct Prices {
    prompt: f64,
    completion: f64,
}

/// The implementation version of every generation stage (topics, stories,
/// QA pairs, paraphrases): bump it when prompts, parsing or the local
/// generator's numerics change, so their cached results become stale.
/// Journaled answers are still reused: their keys name the generator itself.
/// 2: flow's own CPU llama (journal identity `flow-generate/local/v3`).
/// 3: topic lists cleaned of decorations; stories ask for the topic first and
/// last, and answers that copy a seed story are retried.
pub const VERSION: u32 = 3;

pub struct Gen {
    pub journaled: Journaled,
    pub sampling: Sampling,
    base_seed: u64,
    max_attempts: u32,
    min_yield: f64,
    prices: Option<Prices>,
    pub counts: Counts,
    /// Why the last failed request failed, for the yield error.
    last_failure: Option<String>,
}

/// A `[generators.*]` entry: its fields, else the defaults
/// [`generator_params`] declares (the engine does not fill those in).
struct Entry<'a> {
    name: &'a str,
    table: &'a BTreeMap<String, Value>,
    specs: Vec<ParamSpec>,
}

impl<'a> Entry<'a> {
    fn new(name: &'a str, table: &'a BTreeMap<String, Value>) -> Self {
        Entry {
            name,
            table,
            specs: generator_params(),
        }
    }
    fn get(&self, k: &str) -> Option<&Value> {
        params::field(Some(self.table), &self.specs, k)
    }
    fn str(&self, k: &str) -> Option<String> {
        self.get(k).and_then(Value::as_str).map(str::to_string)
    }
    fn int(&self, k: &str) -> Option<i64> {
        self.get(k).and_then(Value::as_i64)
    }
    fn float(&self, k: &str) -> Option<f64> {
        self.get(k).and_then(Value::as_f64)
    }
    /// A field the schema gives a default.
    fn defaulted<T>(&self, k: &str, v: Option<T>) -> Result<T, StageError> {
        v.ok_or_else(|| {
            StageError::Other(format!("internal: generator `{}` has no `{k}`", self.name))
        })
    }
}

/// The generator of entry `name`: the in-process model or an endpoint.
fn open_backend(
    ctx: &mut Context<'_>,
    entry: &Entry<'_>,
) -> Result<Box<dyn Generator>, StageError> {
    let name = entry.name;
    let backend = entry.str("backend").unwrap_or_else(|| "local".into());
    let model_name = entry
        .str("model")
        .ok_or_else(|| StageError::invalid(format!("generator `{name}` has no `model`")))?;
    match backend.as_str() {
        "local" => {
            let resolved = resolve_model(ctx, &model_name, Format::Gguf).map_err(to_err)?;
            let mut local = LocalGenerator::load(&resolved, None).map_err(to_err)?;
            if let Some(n) = entry.int("max_batch") {
                local = local.with_max_batch(n.max(1) as usize);
            }
            Ok(Box::new(local))
        }
        "openai" => {
            let base_url = entry
                .str("base_url")
                .unwrap_or_else(|| "https://api.openai.com/v1".into());
            let mut cfg = OpenAiConfig::new(base_url, model_name.clone());
            if let Some(var) = entry.str("api_key_env") {
                // Only the variable's name is ever shown, never its value.
                cfg.api_key = Some(ApiKey::from_env(&var).ok_or_else(|| {
                    StageError::invalid(format!(
                        "generator `{name}`: the environment variable `{var}` named by \
                         `api_key_env` is not set (it must hold the API key)"
                    ))
                })?);
            }
            cfg.json_mode =
                entry.defaulted("json_mode", entry.get("json_mode").and_then(Value::as_bool))?;
            if let Some(n) = entry.int("max_concurrency") {
                cfg.max_concurrency = n.max(1) as usize;
            }
            cfg.requests_per_minute = entry.float("requests_per_minute").filter(|r| *r > 0.0);
            cfg.tokens_per_minute = entry.float("tokens_per_minute").filter(|r| *r > 0.0);
            // Checked: the schema bounds it, but a conversion that panics must not
            // depend on every caller having validated first.
            if let Some(t) = entry
                .float("timeout_s")
                .and_then(|t| std::time::Duration::try_from_secs_f64(t).ok())
                .filter(|t| !t.is_zero())
            {
                cfg.timeout = t;
            }
            if let Some(n) = entry.int("max_retries") {
                cfg.max_retries = n.clamp(0, u32::MAX as i64) as u32;
            }
            let g = OpenAiGenerator::new(cfg.clone()).map_err(gen_err)?;
            ctx.log(format!(
                "generator `{name}`: model `{model_name}` at {} ({} at once, {} retries, {:?} \
                 timeout)",
                g.url(),
                cfg.max_concurrency,
                cfg.max_retries,
                cfg.timeout
            ));
            Ok(Box::new(g))
        }
        other => Err(StageError::invalid(format!(
            "generator `{name}`: unknown backend `{other}` (`local` or `openai`)"
        ))),
    }
}

/// Between the journaled generator and a stage: results by index, failures
/// counted, progress and cancellation.
struct StageSink<'a, F> {
    cancel: &'a CancelToken,
    progress: &'a dyn flow_engine::Progress,
    results: Vec<Option<Completion>>,
    answered: usize,
    failed: usize,
    last_failure: Option<String>,
    on_done: F,
}

impl<F: FnMut(usize, Option<&Completion>)> Sink for StageSink<'_, F> {
    fn done(&mut self, index: usize, result: flow_generate::Result<Completion>) {
        match result {
            Ok(c) => {
                self.answered += 1;
                (self.on_done)(index, Some(&c));
                if let Some(slot) = self.results.get_mut(index) {
                    *slot = Some(c);
                }
            }
            Err(e) => {
                self.failed += 1;
                tracing::warn!("request {index} of the batch failed: {e}");
                self.last_failure = Some(e.to_string());
                (self.on_done)(index, None);
            }
        }
    }

    fn flush(&mut self) -> flow_generate::Result<()> {
        self.progress.message(&format!(
            "{}/{} requests of this round answered, {} failed",
            self.answered,
            self.results.len(),
            self.failed
        ));
        Ok(())
    }

    fn cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }
}

impl Gen {
    /// Opens the stage's generator and the shared journal.
    pub fn open(ctx: &mut Context<'_>, common: &Common) -> Result<Gen, StageError> {
        let name = common.generator.as_str();
        let table = ctx
            .resources
            .get(GENERATORS, name)
            .cloned()
            .ok_or_else(|| {
                StageError::invalid(format!("no `[generators.{name}]` entry in the manifest"))
            })?;
        let entry = Entry::new(name, &table);
        let backend = open_backend(ctx, &entry)?;
        let journal_dir = cache_dirs::generation_journal(ctx.env);
        // An answer echoing the API key must not carry it into the journal.
        let secrets: Vec<String> = entry
            .str("api_key_env")
            .and_then(|var| std::env::var(var).ok())
            .map(|key| key.trim().to_string())
            .filter(|key| !key.is_empty())
            .into_iter()
            .collect();
        let journal = Journal::open(&journal_dir)
            .map_err(to_err)?
            .with_secrets(secrets);
        let stop = entry
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
            temperature: entry.defaulted("temperature", entry.float("temperature"))?,
            top_p: entry.defaulted("top_p", entry.float("top_p"))?,
            max_tokens: entry
                .defaulted("max_tokens", entry.int("max_tokens"))?
                .max(1) as usize,
            stop,
            seed: 0,
        };
        let base_seed = entry.int("seed").map(|s| s as u64).unwrap_or(ctx.seed);
        let price_p = entry.float("price_prompt_per_mtok");
        let price_c = entry.float("price_completion_per_mtok");
        let prices = (price_p.is_some() || price_c.is_some()).then(|| Prices {
            prompt: price_p.unwrap_or(0.0),
            completion: price_c.unwrap_or(0.0),
        });
        Ok(Gen {
            journaled: Journaled::new(backend, journal),
            sampling,
            base_seed,
            max_attempts: common.max_attempts,
            min_yield: common.min_yield,
            prices,
            counts: Counts::default(),
            last_failure: None,
        })
    }

    /// The request of `job` at `attempt`.
    pub fn request(&self, job: &Job, attempt: u32) -> Request {
        let mut sampling = self.sampling.clone();
        sampling.seed = item_hash(
            self.base_seed,
            "generate",
            &format!("{}#{attempt}", job.item),
        );
        if let Some(m) = job.max_tokens {
            sampling.max_tokens = m;
        }
        Request {
            messages: job.messages.clone(),
            sampling,
        }
    }

    /// Asks every request of `asks` (job, attempt) as one batch, as many at
    /// once as the backend allows. `on_done(i, answer)` sees each as it
    /// finishes (in any order; `None` = failed for good). Returns the answers
    /// in order; a failed request counts in `counts.failed`.
    pub fn ask_batch(
        &mut self,
        ctx: &Context<'_>,
        asks: &[(&Job, u32)],
        on_done: impl FnMut(usize, Option<&Completion>),
    ) -> Result<Vec<Option<Completion>>, StageError> {
        ctx.cancel.check()?;
        let requests: Vec<Request> = asks.iter().map(|(j, a)| self.request(j, *a)).collect();
        let mut sink = StageSink {
            cancel: ctx.cancel,
            progress: ctx.progress,
            results: vec![None; requests.len()],
            answered: 0,
            failed: 0,
            last_failure: None,
            on_done,
        };
        let result = self.journaled.generate_batch(&requests, &mut sink);
        self.counts.failed += sink.failed as u64;
        self.counts.answered += sink.answered as u64;
        if sink.last_failure.is_some() {
            self.last_failure = sink.last_failure.take();
        }
        result.map_err(gen_err)?;
        ctx.progress.message(&self.progress_line());
        Ok(sink.results)
    }

    /// Asks for every job until `parse(job index, text)` accepts its output
    /// or its attempts run out: attempt 0 of all jobs in one batch, then the
    /// malformed ones again, attempt by attempt. An item whose request fails
    /// for good is dropped at once. Results are in job order.
    pub fn items<T>(
        &mut self,
        ctx: &Context<'_>,
        jobs: &[Job],
        mut parse: impl FnMut(usize, &str) -> Option<T>,
    ) -> Result<Vec<Option<T>>, StageError> {
        self.counts.asked += jobs.len() as u64;
        let mut out: Vec<Option<T>> = jobs.iter().map(|_| None).collect();
        let mut open: Vec<usize> = (0..jobs.len()).collect();
        for attempt in 0..self.max_attempts {
            if open.is_empty() {
                break;
            }
            if attempt > 0 {
                self.counts.retried += open.len() as u64;
            }
            let last = attempt + 1 == self.max_attempts;
            let asks: Vec<(&Job, u32)> = open.iter().map(|&j| (&jobs[j], attempt)).collect();
            let progress = ctx.progress;
            let answers = self.ask_batch(ctx, &asks, |i, c| {
                let j = open[i];
                let ok = match c {
                    Some(c) => {
                        let v = parse(j, &c.text);
                        if v.is_none() {
                            tracing::debug!(item = %jobs[j].item, attempt, text = %c.text, "malformed output");
                        }
                        out[j] = v;
                        out[j].is_some()
                    }
                    None => false,
                };
                // An item is done when it parsed, failed, or has no attempt left.
                if ok || c.is_none() || last {
                    progress.advance(1);
                }
            })?;
            // Again: the items that were answered but malformed.
            open = open
                .iter()
                .zip(&answers)
                .filter(|(&j, a)| a.is_some() && out[j].is_none())
                .map(|(&j, _)| j)
                .collect();
        }
        let got = out.iter().filter(|o| o.is_some()).count() as u64;
        self.counts.got += got;
        self.counts.dropped += jobs.len() as u64 - got;
        Ok(out)
    }

    /// A progress line: items and tokens/s.
    pub fn progress_line(&self) -> String {
        let s = self.journaled.stats();
        let mut line = format!(
            "{} ok, {} dropped, {} from journal; {:.0} prompt tok/s, {:.1} gen tok/s",
            self.counts.got,
            self.counts.dropped,
            self.journaled.hits,
            s.prompt_tps(),
            s.completion_tps()
        );
        if self.counts.failed > 0 || s.retries > 0 {
            line += &format!(
                "; {} requests failed, {} retries",
                self.counts.failed, s.retries
            );
        }
        line
    }

    /// Fails when requests failed and none was answered: `min_yield`
    /// tolerates poor answers, not an unreachable backend, whose empty
    /// result must not be cached as if it were one.
    pub fn check_answered(&self) -> Result<(), StageError> {
        let c = self.counts;
        if c.failed > 0 && c.answered == 0 {
            let why = self.last_failure.as_deref().unwrap_or("unknown");
            return Err(StageError::Other(format!(
                "none of {} requests was answered; the last failure: {why}",
                c.failed
            )));
        }
        Ok(())
    }

    /// Fails when no request was answered, or too few items survived.
    pub fn check_yield(&self) -> Result<(), StageError> {
        self.check_answered()?;
        let min = self.min_yield;
        let c = self.counts;
        if c.asked > 0 && (c.got as f64) < min * c.asked as f64 {
            let failed = match (&self.last_failure, c.failed) {
                (Some(why), n) if n > 0 => format!("; {n} requests failed, the last: {why}"),
                _ => String::new(),
            };
            return Err(StageError::invalid(format!(
                "only {} of {} items survived ({} dropped after {} retries{failed}); min_yield = \
                 {min}",
                c.got, c.asked, c.dropped, c.retried
            )));
        }
        Ok(())
    }

    /// What this run cost at the configured prices (journal hits are free).
    pub fn cost_usd(&self) -> Option<f64> {
        let s = self.journaled.stats();
        self.prices.map(|p| {
            (s.prompt_tokens as f64 * p.prompt + s.completion_tokens as f64 * p.completion) / 1e6
        })
    }

    pub fn metrics(&self, outcome: flow_engine::Outcome) -> flow_engine::Outcome {
        let s = self.journaled.stats();
        let mut o = outcome
            .metric("asked", self.counts.asked)
            .metric("got", self.counts.got)
            .metric("retried", self.counts.retried)
            .metric("dropped", self.counts.dropped)
            .metric("failed", self.counts.failed)
            .metric("journal_hits", self.journaled.hits)
            .metric("generated", self.journaled.calls)
            .metric("request_retries", s.retries)
            .metric("prompt_tokens", s.prompt_tokens)
            .metric("completion_tokens", s.completion_tokens);
        if let Some(cost) = self.cost_usd() {
            o = o.metric("cost_usd", cost);
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_in_process_generator_takes_every_core() {
        let mut resources = Resources::default();
        let entry = |backend: Option<&str>| {
            let mut t = BTreeMap::new();
            t.insert("model".to_string(), Value::Str("smollm2".into()));
            if let Some(b) = backend {
                t.insert("backend".to_string(), Value::Str(b.into()));
            }
            t
        };
        resources.insert(GENERATORS, "implicit", entry(None));
        resources.insert(GENERATORS, "local", entry(Some("local")));
        resources.insert(GENERATORS, "remote", entry(Some("openai")));
        let with = |name: &str| {
            Params::new(BTreeMap::from([(
                "generator".to_string(),
                Value::Str(name.into()),
            )]))
        };
        assert_eq!(threads(&with("implicit"), &resources), Threads::All);
        assert_eq!(threads(&with("local"), &resources), Threads::All);
        assert_eq!(threads(&with("remote"), &resources), Threads::One);
        // An entry that is not there fails when the stage runs; until then, assume the worst.
        assert_eq!(threads(&with("missing"), &resources), Threads::All);
    }
}
