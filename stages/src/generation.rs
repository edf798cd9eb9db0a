//! What the generation stages share: opening the generator of a
//! `[generators.*]` entry behind the request journal, per-item seeds,
//! batches of requests answered concurrently, retries of malformed output
//! within a budget, and the asked/got/retried/dropped counters.
//!
//! Every request is journaled under the hash of (generator identity =
//! implementation + weights blake3 or endpoint model, messages, sampling incl.
//! its seed) in `<cache>/journal/generate/journal.jsonl`, shared by all stages
//! and runs: a request answered once is never generated (or paid for) again,
//! whatever else changed. Per-item seeds derive from (stage seed, item id,
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

use flow_engine::{
    CancelToken, Context, Env, ParamSpec, Params, Resources, StageError, Threads, Value,
};
use flow_generate::{
    ApiKey, Completion, GenError, Generator, Journal, Journaled, LocalGenerator, Message,
    OpenAiConfig, OpenAiGenerator, Request, Sampling, Sink,
};
use flow_models::{Format, ModelEnv, ModelError, ModelSpec, ResolvedModel};

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
        .and_then(|name| resources.generators.get(name))
        .is_none_or(|t| table_str(t, "backend").is_none_or(|b| b == "local"));
    if local {
        Threads::All
    } else {
        Threads::One
    }
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

/// Resolves `[models.NAME]` (a known short name if there is no entry),
/// assuming `format` where the entry names none, and logs where the weights
/// came from.
pub fn resolve_model(
    ctx: &mut Context<'_>,
    name: &str,
    format: Format,
) -> Result<ResolvedModel, ModelError> {
    let mut spec = model_spec(&ctx.resources.models, name);
    spec.format.get_or_insert(format);
    let resolved = flow_models::resolve(&spec, &model_env(ctx.env))?;
    ctx.log(format!(
        "model `{name}`: {} (from {})",
        resolved.weights.display(),
        resolved.source
    ));
    Ok(resolved)
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
    prices: Option<Prices>,
    pub counts: Counts,
    /// Why the last failed request failed, for the yield error.
    last_failure: Option<String>,
}

fn int_of(table: &BTreeMap<String, Value>, k: &str) -> Option<i64> {
    table.get(k).and_then(Value::as_i64)
}

fn float_of(table: &BTreeMap<String, Value>, k: &str) -> Option<f64> {
    table.get(k).and_then(Value::as_f64)
}

/// The generator of entry `name`: the in-process model or an endpoint.
fn open_backend(
    ctx: &mut Context<'_>,
    name: &str,
    table: &BTreeMap<String, Value>,
) -> Result<Box<dyn Generator>, StageError> {
    let backend = table_str(table, "backend").unwrap_or_else(|| "local".into());
    let model_name = table_str(table, "model")
        .ok_or_else(|| StageError::invalid(format!("generator `{name}` has no `model`")))?;
    match backend.as_str() {
        "local" => {
            let resolved = resolve_model(ctx, &model_name, Format::Gguf).map_err(to_err)?;
            let mut local = LocalGenerator::load(&resolved, None).map_err(to_err)?;
            if let Some(n) = int_of(table, "max_batch") {
                local = local.with_max_batch(n.max(1) as usize);
            }
            Ok(Box::new(local))
        }
        "openai" => {
            let base_url =
                table_str(table, "base_url").unwrap_or_else(|| "https://api.openai.com/v1".into());
            let mut cfg = OpenAiConfig::new(base_url, model_name.clone());
            if let Some(var) = table_str(table, "api_key_env") {
                // Only the variable's name is ever shown, never its value.
                cfg.api_key = Some(ApiKey::from_env(&var).ok_or_else(|| {
                    StageError::invalid(format!(
                        "generator `{name}`: the environment variable `{var}` named by \
                         `api_key_env` is not set (it must hold the API key)"
                    ))
                })?);
            }
            cfg.json_mode = table
                .get("json_mode")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            if let Some(n) = int_of(table, "max_concurrency") {
                cfg.max_concurrency = n.max(1) as usize;
            }
            cfg.requests_per_minute = float_of(table, "requests_per_minute").filter(|r| *r > 0.0);
            cfg.tokens_per_minute = float_of(table, "tokens_per_minute").filter(|r| *r > 0.0);
            // Checked: the schema bounds it, but a conversion that panics must not
            // depend on every caller having validated first.
            if let Some(t) = float_of(table, "timeout_s")
                .and_then(|t| std::time::Duration::try_from_secs_f64(t).ok())
                .filter(|t| !t.is_zero())
            {
                cfg.timeout = t;
            }
            if let Some(n) = int_of(table, "max_retries") {
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
    pub fn open(ctx: &mut Context<'_>) -> Result<Gen, StageError> {
        let name = ctx.params.require_str("generator")?.to_string();
        let table = ctx
            .resources
            .generators
            .get(&name)
            .cloned()
            .ok_or_else(|| {
                StageError::invalid(format!("no `[generators.{name}]` entry in the manifest"))
            })?;
        let backend = open_backend(ctx, &name, &table)?;
        let journal_dir = ctx.env.cache_dir.join("journal").join("generate");
        // An answer echoing the API key must not carry it into the journal.
        let secrets: Vec<String> = table_str(&table, "api_key_env")
            .and_then(|var| std::env::var(var).ok())
            .map(|key| key.trim().to_string())
            .filter(|key| !key.is_empty())
            .into_iter()
            .collect();
        let journal = Journal::open(&journal_dir)
            .map_err(to_err)?
            .with_secrets(secrets);
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
            temperature: float_of(&table, "temperature").unwrap_or(0.7),
            top_p: float_of(&table, "top_p").unwrap_or(1.0),
            max_tokens: int_of(&table, "max_tokens").unwrap_or(256).max(1) as usize,
            stop,
            seed: 0,
        };
        let base_seed = int_of(&table, "seed").map(|s| s as u64).unwrap_or(ctx.seed);
        let max_attempts = ctx.params.int("max_attempts").unwrap_or(3).max(1) as u32;
        let price_p = float_of(&table, "price_prompt_per_mtok");
        let price_c = float_of(&table, "price_completion_per_mtok");
        let prices = (price_p.is_some() || price_c.is_some()).then(|| Prices {
            prompt: price_p.unwrap_or(0.0),
            completion: price_c.unwrap_or(0.0),
        });
        Ok(Gen {
            journaled: Journaled::new(backend, journal),
            sampling,
            base_seed,
            max_attempts,
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
    pub fn check_yield(&self, ctx: &Context<'_>) -> Result<(), StageError> {
        self.check_answered()?;
        let min = ctx.params.float("min_yield").unwrap_or(0.5);
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
    use std::io::{BufRead, BufReader, Read, Write};
    use std::path::Path;

    use flow_engine::{NoProgress, Resources, Stage, Upstream};

    use crate::dataset::Task;
    use crate::testutil::{data_upstream, example, inputs, params};

    /// An OpenAI-compatible server on loopback (std threads, keep-alive)
    /// whose answer depends only on the request's seed, sent after a delay
    /// that also depends on it, so answers come back out of order. A third
    /// of the seeds get a malformed answer. Returns the base URL.
    fn fake_server() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/v1", l.local_addr().unwrap());
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                std::thread::spawn(move || serve(s));
            }
        });
        url
    }

    fn serve(s: std::net::TcpStream) {
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        loop {
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                let l = line.trim().to_ascii_lowercase();
                if l.is_empty() {
                    break;
                }
                if let Some(v) = l.strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0u8; len];
            if r.read_exact(&mut body).is_err() {
                return;
            }
            let req: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let seed = req["seed"].as_u64().unwrap();
            let prompt = req["messages"][0]["content"].as_str().unwrap_or("");
            let text = if seed.is_multiple_of(3) {
                "Sorry.".to_string()
            } else if prompt.contains("topics") {
                (0..6)
                    .map(|i| {
                        // 40 distinct topics without digits (a topic with one is refused).
                        let x = ((seed / 7 + i) % 40) as u8;
                        let name = [b'a' + x / 8, b'a' + x % 8].map(char::from);
                        format!("{}. Lost dog {}{}", i + 1, name[0], name[1])
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            } else if prompt.contains("Q:") {
                (0..3)
                    .map(|i| format!("Q: Question {} {i} here?\nA: Answer {i}.", seed % 10_000))
                    .collect::<Vec<_>>()
                    .join("\n")
            } else {
                format!(
                    "Story number {} began. Tom went out today. He saw a dog there. The dog \
                     was very happy. They played all day long.",
                    seed % 10_000
                )
            };
            std::thread::sleep(std::time::Duration::from_millis(seed % 13));
            let answer = serde_json::json!({
                "choices": [{"message": {"content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 7, "completion_tokens": 3}
            })
            .to_string();
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                answer.len()
            );
            if w.write_all(head.as_bytes()).is_err() || w.write_all(answer.as_bytes()).is_err() {
                return;
            }
        }
    }

    /// Runs `stage` on the `openai` backend at `url` with `concurrency`, in
    /// a fresh cache; returns the bytes of its `data.jsonl` and its metrics.
    fn run_remote(
        stage: &dyn Stage,
        given: &[(&str, Value)],
        ins: &BTreeMap<String, Vec<Upstream>>,
        url: &str,
        concurrency: i64,
    ) -> (Vec<u8>, serde_json::Map<String, serde_json::Value>) {
        let dir = tempfile::tempdir().unwrap();
        let (out_dir, work_dir) = (dir.path().join("out"), dir.path().join("work"));
        std::fs::create_dir_all(&out_dir).unwrap();
        std::fs::create_dir_all(&work_dir).unwrap();
        let env = Env {
            cache_dir: dir.path().join("cache"),
            ..Env::default()
        };
        let mut resources = Resources::default();
        resources.generators.insert(
            "remote".into(),
            BTreeMap::from([
                ("backend".into(), Value::Str("openai".into())),
                ("base_url".into(), Value::Str(url.into())),
                ("model".into(), Value::Str("fake".into())),
                ("max_concurrency".into(), Value::Int(concurrency)),
                ("price_prompt_per_mtok".into(), Value::Float(2.0)),
            ]),
        );
        let mut given = given.to_vec();
        given.push(("generator", Value::Str("remote".into())));
        let params = params(stage, &given);
        let cancel = CancelToken::default();
        let mut ctx = Context::new(
            "test",
            &params,
            ins,
            &resources,
            11,
            &env,
            &out_dir,
            &work_dir,
            2,
            &cancel,
            &NoProgress,
        );
        let outcome = stage.run(&mut ctx).unwrap();
        let data = outcome
            .outputs
            .iter()
            .find(|o| o.name == crate::dataset::DATA_FILE || o.name == "topics.json")
            .map(|o| std::fs::read(&o.path).unwrap())
            .unwrap();
        (data, outcome.metrics)
    }

    fn same_at_any_concurrency(
        stage: &dyn Stage,
        given: &[(&str, Value)],
        ins: &BTreeMap<String, Vec<Upstream>>,
    ) -> serde_json::Map<String, serde_json::Value> {
        let url = fake_server();
        let (one, m1) = run_remote(stage, given, ins, &url, 1);
        let (many, m8) = run_remote(stage, given, ins, &url, 8);
        assert!(!one.is_empty());
        assert_eq!(
            String::from_utf8_lossy(&one),
            String::from_utf8_lossy(&many),
            "{} differs between concurrency 1 and 8",
            stage.kind()
        );
        for k in [
            "asked",
            "got",
            "dropped",
            "retried",
            "generated",
            "prompt_tokens",
        ] {
            assert_eq!(m1.get(k), m8.get(k), "{k}");
        }
        assert_eq!(m1["failed"], 0);
        m8
    }

    fn stories_upstreams(dir: &Path) -> BTreeMap<String, Vec<Upstream>> {
        let seeds: Vec<_> = (0..5)
            .map(|i| {
                example(
                    &format!("s{i}"),
                    Task::Story,
                    None,
                    "Ann had a cat. It was gray. It liked milk. One day it ran.",
                    "Ann found it in the barn.",
                )
            })
            .collect();
        let topics = dir.join("topics.json");
        std::fs::write(&topics, r#"["Dogs", "Rain", "A lost key", "School"]"#).unwrap();
        let topics = Upstream {
            instance: "pool".into(),
            bindings: Vec::new(),
            files: BTreeMap::from([(crate::topics::TOPICS_FILE.to_string(), topics)]),
            metrics: Default::default(),
        };
        inputs(vec![
            ("seeds", data_upstream(dir, "real", &seeds)),
            ("topics", topics),
        ])
    }

    #[test]
    fn stories_are_the_same_whatever_the_concurrency_and_malformed_ones_are_retried() {
        let dir = tempfile::tempdir().unwrap();
        let ins = stories_upstreams(dir.path());
        let m = same_at_any_concurrency(
            &crate::generate_stories::GenerateStories,
            &[
                ("topic_count", Value::Int(3)),
                ("count", Value::Int(30)),
                ("max_attempts", Value::Int(3)),
            ],
            &ins,
        );
        // About a third malformed at each attempt: retried, a few dropped.
        assert!(m["retried"].as_u64().unwrap() > 0, "{m:?}");
        assert_eq!(
            m["got"].as_u64().unwrap() + m["dropped"].as_u64().unwrap(),
            30
        );
        let asked = m["generated"].as_u64().unwrap();
        assert_eq!(asked, 30 + m["retried"].as_u64().unwrap());
        let cost = m["cost_usd"].as_f64().unwrap();
        assert!((cost - asked as f64 * 7.0 * 2.0 / 1e6).abs() < 1e-12);
    }

    #[test]
    fn qa_pairs_and_topics_are_the_same_whatever_the_concurrency() {
        let dir = tempfile::tempdir().unwrap();
        let real: Vec<_> = (0..12)
            .map(|i| {
                let mut e = example(
                    &format!("q{i}"),
                    Task::Qa,
                    Some(&format!("doc{}", i % 4)),
                    &format!("Who is person {i}?"),
                    "A farmer.",
                );
                e.context = Some(format!("Summary of document {}.", i % 4));
                e
            })
            .collect();
        let ins = inputs(vec![("contexts", data_upstream(dir.path(), "real", &real))]);
        let m = same_at_any_concurrency(
            &crate::generate_qa::GenerateQa,
            &[("k", Value::Int(7)), ("per_request", Value::Int(3))],
            &ins,
        );
        assert_eq!(m["asked"], 28);
        let m = same_at_any_concurrency(
            &crate::topics::Topics,
            &[("count", Value::Int(25)), ("per_request", Value::Int(6))],
            &BTreeMap::new(),
        );
        assert_eq!(m["topics"], 25);
    }

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
        resources.generators.insert("implicit".into(), entry(None));
        resources
            .generators
            .insert("local".into(), entry(Some("local")));
        resources
            .generators
            .insert("remote".into(), entry(Some("openai")));
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
