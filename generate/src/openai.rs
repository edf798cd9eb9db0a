//! Generation over an OpenAI-compatible chat-completions API (OpenAI, vLLM,
//! llama.cpp's server, Ollama...), on tokio + reqwest.
//!
//! A batch runs up to `max_concurrency` requests at once, each waiting its
//! turn under the requests-per-minute and tokens-per-minute buckets. A
//! transient failure (429, 408, 409, 5xx, a timeout, a dropped connection,
//! a truncated or non-JSON body) is retried after an exponential backoff
//! with jitter, and never sooner than the server's `Retry-After`; after
//! `max_retries` retries the request fails for good and the batch goes on.
//! A failure every request would meet (401, 403, 404) stops the batch.
//!
//! The API key travels only in the `Authorization` header (marked
//! sensitive); it is never part of the identity, an error message or a
//! `Debug` output, and anything the server echoes back is scrubbed of it.
//! Credentials in `base_url` (`http://user:pass@host/v1`) are likewise shown
//! nowhere: messages, logs and [`OpenAiGenerator::url`] carry the redacted URL.
//!
//! Numbers a server supplies are converted with checks: a `Retry-After` of
//! `1e30` waits [`OpenAiConfig::max_retry_after`], token counts are capped,
//! and an answer is read at most [`OpenAiConfig::max_answer_bytes`] long.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

pub use flow_models::redact_url;

use crate::{Completion, Finish, GenError, Generator, Message, Request, Result, Sink, Stats};

/// Bump when a change here changes what is asked of the server: it is part
/// of every journal key.
const IMPL: &str = "flow-generate/openai/v1";

/// How often a batch waiting for answers looks at [`Sink::cancelled`].
const CANCEL_POLL: Duration = Duration::from_millis(100);

/// The longest `Retry-After` honoured as given (a server asking for more is
/// waited on this long, then asked again); the default of
/// [`OpenAiConfig::max_retry_after`].
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

/// The largest answer read, the default of [`OpenAiConfig::max_answer_bytes`]:
/// a chat completion is a few KiB; a server sending more is broken.
pub const MAX_ANSWER_BYTES: usize = 64 << 20;

/// How much of an error answer (a non-2xx status) is read, for its message.
const MAX_ERROR_BODY: usize = 64 << 10;

/// The most tokens one answer may report using (larger counts are capped).
const MAX_REPORTED_TOKENS: u64 = u32::MAX as u64;

/// The longest wait for the rate buckets.
const MAX_BUCKET_WAIT: Duration = Duration::from_secs(24 * 3600);

/// `secs` seconds as a [`Duration`], at most `max`; `None` for a negative or
/// non-finite number. Never panics (unlike `Duration::from_secs_f64`), for
/// numbers a server or a manifest supplies.
pub fn checked_secs(secs: f64, max: Duration) -> Option<Duration> {
    if !secs.is_finite() || secs < 0.0 {
        return None;
    }
    Some(Duration::try_from_secs_f64(secs).map_or(max, |d| d.min(max)))
}

/// `text` with every non-empty secret in `secrets` replaced by `<redacted>`:
/// for anything a server sends back (an error body, an answer) before it is
/// shown, logged or journaled.
pub fn scrub_secrets(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_string();
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        if out.contains(*s) {
            out = out.replace(*s, "<redacted>");
        }
    }
    out
}

/// The user info of `url` (`user:pass` of `scheme://user:pass@host/`) and
/// its password, percent-encoded as written and decoded, to scrub from messages.
fn url_secrets(url: &str) -> Vec<String> {
    let Some((_, rest)) = url.split_once("://") else {
        return Vec::new();
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let Some((userinfo, _)) = authority.rsplit_once('@') else {
        return Vec::new();
    };
    let mut out = vec![userinfo.to_string()];
    if let Some((_, pass)) = userinfo.split_once(':') {
        out.push(pass.to_string());
        if let Ok(u) = reqwest::Url::parse(url) {
            if let Some(p) = u.password() {
                out.push(p.to_string());
            }
        }
    }
    // Too short to cut out of text without mangling it.
    out.retain(|s| s.len() >= 4);
    out
}

/// An API key. Its `Debug` shows nothing of it.
#[derive(Clone)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn new(key: impl Into<String>) -> Self {
        ApiKey(key.into())
    }

    /// The key in environment variable `var`; `None` when unset or empty.
    pub fn from_env(var: &str) -> Option<Self> {
        std::env::var(var)
            .ok()
            .filter(|k| !k.trim().is_empty())
            .map(|k| ApiKey(k.trim().to_string()))
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// Where and how to ask. Only `model` and `json_mode` change results (they
/// are in the identity); the rest says how to reach the server and how fast.
/// Its `Debug` shows `base_url` without credentials and no key.
#[derive(Clone)]
pub struct OpenAiConfig {
    /// e.g. `https://api.openai.com/v1`; `/chat/completions` is appended.
    pub base_url: String,
    /// The endpoint's model name.
    pub model: String,
    pub api_key: Option<ApiKey>,
    /// Ask for a JSON object (`response_format`).
    pub json_mode: bool,
    pub max_concurrency: usize,
    pub requests_per_minute: Option<f64>,
    pub tokens_per_minute: Option<f64>,
    /// Per attempt, the whole exchange (connect, send, read the body).
    pub timeout: Duration,
    /// Retries per request after the first attempt.
    pub max_retries: u32,
    /// The first backoff; doubled each retry, up to `backoff_max`, then
    /// jittered down by up to half.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// The longest `Retry-After` waited for (default [`MAX_RETRY_AFTER`]).
    pub max_retry_after: Duration,
    /// The largest answer read (default [`MAX_ANSWER_BYTES`]); a longer one
    /// fails its request.
    pub max_answer_bytes: usize,
}

impl std::fmt::Debug for OpenAiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiConfig")
            .field("base_url", &redact_url(&self.base_url))
            .field("model", &self.model)
            .field("api_key", &self.api_key)
            .field("json_mode", &self.json_mode)
            .field("max_concurrency", &self.max_concurrency)
            .field("requests_per_minute", &self.requests_per_minute)
            .field("tokens_per_minute", &self.tokens_per_minute)
            .field("timeout", &self.timeout)
            .field("max_retries", &self.max_retries)
            .field("backoff_base", &self.backoff_base)
            .field("backoff_max", &self.backoff_max)
            .field("max_retry_after", &self.max_retry_after)
            .field("max_answer_bytes", &self.max_answer_bytes)
            .finish()
    }
}

impl OpenAiConfig {
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        OpenAiConfig {
            base_url: base_url.into(),
            model: model.into(),
            api_key: None,
            json_mode: false,
            max_concurrency: 8,
            requests_per_minute: None,
            tokens_per_minute: None,
            timeout: Duration::from_secs(120),
            max_retries: 6,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(60),
            max_retry_after: MAX_RETRY_AFTER,
            max_answer_bytes: MAX_ANSWER_BYTES,
        }
    }

    /// Sets the per-attempt timeout from seconds (a manifest's `timeout_s`):
    /// positive and finite, at most a day.
    pub fn set_timeout_secs(&mut self, secs: f64) -> Result<()> {
        match checked_secs(secs, Duration::from_secs(24 * 3600)) {
            Some(d) if !d.is_zero() => {
                self.timeout = d;
                Ok(())
            }
            _ => Err(GenError::Config(format!(
                "`timeout_s` = {secs} is not a positive number of seconds"
            ))),
        }
    }
}

pub struct OpenAiGenerator {
    rt: tokio::runtime::Runtime,
    shared: Arc<Shared>,
    max_concurrency: usize,
    identity: String,
    stats: Stats,
}

/// What every request task needs.
struct Shared {
    client: reqwest::Client,
    request_url: String,
    /// `request_url` without credentials, for every message.
    shown_url: String,
    /// `host:port` of `request_url`, for "answer from <host>".
    host: String,
    model: String,
    json_mode: bool,
    timeout: Duration,
    max_retries: u32,
    backoff_base: Duration,
    backoff_max: Duration,
    max_retry_after: Duration,
    max_answer_bytes: usize,
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
    /// The key and the URL's credentials: scrubbed from anything shown.
    secrets: Vec<String>,
}

impl OpenAiGenerator {
    pub fn new(cfg: OpenAiConfig) -> Result<Self> {
        let mut headers = HeaderMap::new();
        if let Some(key) = &cfg.api_key {
            let mut v = HeaderValue::from_str(&format!("Bearer {}", key.0)).map_err(|_| {
                GenError::Config("the API key has characters a header cannot carry".into())
            })?;
            // Kept out of reqwest's own Debug output of requests.
            v.set_sensitive(true);
            headers.insert(AUTHORIZATION, v);
        }
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .tcp_nodelay(true)
            .pool_max_idle_per_host(cfg.max_concurrency.max(1))
            .build()
            .map_err(|e| GenError::Config(format!("HTTP client: {e}")))?;
        // Requests run on one worker thread (the work is waiting on
        // sockets); the caller's thread hands results to the sink, so a slow
        // sink (the journal's fsync) does not hold the requests up.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("flow-http")
            .enable_all()
            .build()
            .map_err(|source| GenError::Io {
                context: "start the HTTP runtime".into(),
                source,
            })?;
        let url = format!("{}/chat/completions", cfg.base_url.trim_end_matches('/'));
        let shown_url = redact_url(&url);
        let host = reqwest::Url::parse(&url)
            .ok()
            .and_then(|u| {
                let host = u.host_str()?.to_string();
                Some(match u.port_or_known_default() {
                    Some(p) => format!("{host}:{p}"),
                    None => host,
                })
            })
            .unwrap_or_else(|| shown_url.clone());
        let mut secrets = url_secrets(&url);
        if let Some(k) = &cfg.api_key {
            secrets.push(k.0.clone());
        }
        let identity = format!(
            "{IMPL}:{}{}",
            cfg.model,
            if cfg.json_mode { ":json" } else { "" }
        );
        let per_sec = |per_min: f64| per_min / 60.0;
        let shared = Shared {
            client,
            request_url: url,
            shown_url,
            host,
            model: cfg.model,
            json_mode: cfg.json_mode,
            timeout: cfg.timeout,
            max_retries: cfg.max_retries,
            backoff_base: cfg.backoff_base,
            backoff_max: cfg.backoff_max,
            max_retry_after: cfg.max_retry_after,
            max_answer_bytes: cfg.max_answer_bytes.max(1),
            // A second's worth may go at once.
            requests: cfg
                .requests_per_minute
                .map(|r| Bucket::new(per_sec(r), per_sec(r).max(1.0))),
            tokens: cfg
                .tokens_per_minute
                .map(|r| Bucket::new(per_sec(r), per_sec(r).max(1.0))),
            secrets,
        };
        Ok(OpenAiGenerator {
            rt,
            shared: Arc::new(shared),
            max_concurrency: cfg.max_concurrency.max(1),
            identity,
            stats: Stats::default(),
        })
    }

    /// The endpoint, without credentials (for logs and records).
    pub fn url(&self) -> &str {
        &self.shared.shown_url
    }
}

impl Generator for OpenAiGenerator {
    fn identity(&self) -> &str {
        &self.identity
    }

    fn generate_batch(&mut self, requests: &[Request], sink: &mut dyn Sink) -> Result<()> {
        let t0 = Instant::now();
        let shared = self.shared.clone();
        let max = self.max_concurrency;
        let stats = &mut self.stats;
        let result = self.rt.block_on(async {
            let mut set: JoinSet<Answer> = JoinSet::new();
            let mut index_of: HashMap<tokio::task::Id, usize> = HashMap::new();
            let mut next = 0;
            let refill = |set: &mut JoinSet<Answer>,
                          index_of: &mut HashMap<tokio::task::Id, usize>,
                          next: &mut usize| {
                while set.len() < max && *next < requests.len() {
                    let task = ask(shared.clone(), requests[*next].clone());
                    let id = set.spawn(task).id();
                    index_of.insert(id, *next);
                    *next += 1;
                }
            };
            loop {
                refill(&mut set, &mut index_of, &mut next);
                if set.is_empty() {
                    return Ok(());
                }
                let first = tokio::select! {
                    r = set.join_next_with_id() => r,
                    _ = tokio::time::sleep(CANCEL_POLL) => None,
                };
                let mut fatal = None;
                let mut ready = first.into_iter().collect::<Vec<_>>();
                while let Some(r) = set.try_join_next_with_id() {
                    ready.push(r);
                }
                for joined in ready {
                    let (index, answer) = match joined {
                        Ok((id, a)) => (index_of.remove(&id), a),
                        // A task that panicked: its request fails, the rest go on.
                        Err(e) => (
                            index_of.remove(&e.id()),
                            Answer {
                                result: Err(Failure::Failed("the request task panicked".into())),
                                attempts: 1,
                            },
                        ),
                    };
                    let Some(index) = index else { continue };
                    stats.retries += u64::from(answer.attempts.saturating_sub(1));
                    let result = match answer.result {
                        Ok(c) => {
                            stats.requests += 1;
                            stats.prompt_tokens =
                                stats.prompt_tokens.saturating_add(c.prompt_tokens as u64);
                            stats.completion_tokens = stats
                                .completion_tokens
                                .saturating_add(c.completion_tokens as u64);
                            Ok(c)
                        }
                        Err(Failure::Failed(reason)) => {
                            stats.failed += 1;
                            Err(GenError::Request {
                                attempts: answer.attempts,
                                reason,
                            })
                        }
                        Err(Failure::Fatal(reason)) => {
                            stats.failed += 1;
                            fatal.get_or_insert(reason.clone());
                            Err(GenError::Request {
                                attempts: answer.attempts,
                                reason,
                            })
                        }
                    };
                    sink.done(index, result);
                }
                if fatal.is_none() {
                    // The next requests go out before the sink's flush (the
                    // journal's fsync), and run while it waits on the disk.
                    refill(&mut set, &mut index_of, &mut next);
                }
                sink.flush()?;
                if let Some(reason) = fatal {
                    set.abort_all();
                    return Err(GenError::Config(reason));
                }
                if sink.cancelled() {
                    set.abort_all();
                    return Err(GenError::Cancelled);
                }
            }
        });
        // Wall time: with requests in flight together, tokens per second of
        // the whole batch is what the endpoint delivered.
        let secs = t0.elapsed().as_secs_f64();
        self.stats.prompt_secs += secs;
        self.stats.completion_secs += secs;
        result
    }

    fn stats(&self) -> Stats {
        self.stats
    }
}

/// How one request ended, and after how many attempts.
struct Answer {
    result: std::result::Result<Completion, Failure>,
    attempts: u32,
}

enum Failure {
    /// This request is lost; the others go on.
    Failed(String),
    /// Every request would fail the same way.
    Fatal(String),
}

/// One attempt's failure.
enum AttemptError {
    /// Worth asking again, not before `retry_after` if the server said so.
    Transient {
        reason: String,
        retry_after: Option<Duration>,
    },
    Failed(String),
    Fatal(String),
}

#[derive(Serialize)]
struct ChatRequest<'a> {
    model: &'a str,
    messages: &'a [Message],
    temperature: f64,
    top_p: f64,
    max_tokens: usize,
    /// Kept to 31 bits, which every server takes (llama.cpp's is a u32,
    /// OpenAI's an i64); the journal key has the full seed.
    seed: u64,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<serde_json::Value>,
    stream: bool,
}

#[derive(Deserialize)]
struct ChatResponse {
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    message: Option<ResponseMessage>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct ResponseMessage {
    #[serde(default)]
    content: Option<String>,
}

#[derive(Deserialize)]
struct Usage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

/// A rough token count before the answer gives the true one (about four
/// characters a token), for the tokens-per-minute bucket.
fn estimate_tokens(r: &Request) -> f64 {
    let chars: usize = r.messages.iter().map(|m| m.content.len() + 4).sum();
    (chars / 4 + r.sampling.max_tokens) as f64
}

/// Asks one request, retrying transient failures within the budget.
async fn ask(shared: Arc<Shared>, request: Request) -> Answer {
    let estimate = estimate_tokens(&request);
    let body = ChatRequest {
        model: &shared.model,
        messages: &request.messages,
        temperature: request.sampling.temperature,
        top_p: request.sampling.top_p,
        max_tokens: request.sampling.max_tokens,
        seed: request.sampling.seed & 0x7fff_ffff,
        stop: &request.sampling.stop,
        response_format: shared
            .json_mode
            .then(|| serde_json::json!({"type": "json_object"})),
        stream: false,
    };
    let body = match serde_json::to_vec(&body) {
        Ok(b) => b,
        Err(e) => {
            return Answer {
                result: Err(Failure::Failed(format!("encode the request: {e}"))),
                attempts: 0,
            }
        }
    };
    let mut attempts = 0;
    loop {
        if let Some(b) = &shared.requests {
            b.take(1.0).await;
        }
        if let Some(b) = &shared.tokens {
            b.take(estimate).await;
        }
        attempts += 1;
        let err = match attempt(&shared, &body).await {
            Ok(c) => {
                if let Some(b) = &shared.tokens {
                    // Give back what the estimate overcharged.
                    let used = c.prompt_tokens.saturating_add(c.completion_tokens) as f64;
                    b.give_back(estimate - used);
                }
                return Answer {
                    result: Ok(c),
                    attempts,
                };
            }
            Err(e) => e,
        };
        let (reason, retry_after) = match err {
            AttemptError::Transient {
                reason,
                retry_after,
            } => (reason, retry_after),
            AttemptError::Failed(reason) => {
                return Answer {
                    result: Err(Failure::Failed(shared.scrub(reason))),
                    attempts,
                }
            }
            AttemptError::Fatal(reason) => {
                return Answer {
                    result: Err(Failure::Fatal(shared.scrub(reason))),
                    attempts,
                }
            }
        };
        if attempts > shared.max_retries {
            return Answer {
                result: Err(Failure::Failed(shared.scrub(reason))),
                attempts,
            };
        }
        let wait = shared.backoff(attempts - 1, retry_after);
        tracing::debug!(
            attempt = attempts,
            wait_ms = wait.as_millis() as u64,
            reason = %shared.scrub(reason),
            "retrying a request"
        );
        tokio::time::sleep(wait).await;
    }
}

/// One exchange with the server.
async fn attempt(shared: &Shared, body: &[u8]) -> std::result::Result<Completion, AttemptError> {
    let transport = |e: reqwest::Error| AttemptError::Transient {
        reason: if e.is_timeout() {
            format!(
                "no answer within {:?} from {}",
                shared.timeout, shared.shown_url
            )
        } else {
            // reqwest's message names the URL and the cause, never the headers.
            error_chain(&e)
        },
        retry_after: None,
    };
    let resp = shared
        .client
        .post(&shared.request_url)
        .header(CONTENT_TYPE, "application/json")
        .timeout(shared.timeout)
        .body(body.to_vec())
        .send()
        .await
        .map_err(transport)?;
    let status = resp.status();
    let retry_after = retry_after(resp.headers(), shared.max_retry_after);
    if !status.is_success() {
        // Only the start of an error page matters.
        let (bytes, _) = read_body(resp, MAX_ERROR_BODY).await.map_err(transport)?;
        let what = format!(
            "{status} from {}: {}",
            shared.shown_url,
            excerpt(&String::from_utf8_lossy(&bytes))
        );
        return Err(match status {
            StatusCode::TOO_MANY_REQUESTS | StatusCode::REQUEST_TIMEOUT | StatusCode::CONFLICT => {
                AttemptError::Transient {
                    reason: what,
                    retry_after,
                }
            }
            s if s.is_server_error() => AttemptError::Transient {
                reason: what,
                retry_after,
            },
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => AttemptError::Fatal(format!(
                "{what} (check the key in the generator's `api_key_env` variable)"
            )),
            StatusCode::NOT_FOUND => AttemptError::Fatal(format!(
                "{what} (check the generator's `base_url` and `model`)"
            )),
            _ => AttemptError::Failed(what),
        });
    }
    let (bytes, complete) = read_body(resp, shared.max_answer_bytes)
        .await
        .map_err(transport)?;
    if !complete {
        // Asking again would get as much again.
        return Err(AttemptError::Failed(format!(
            "answer from {} exceeds {} (the answer is capped at `max_answer_bytes`)",
            shared.host,
            size_text(shared.max_answer_bytes)
        )));
    }
    let malformed = |why: String| AttemptError::Transient {
        reason: format!("unreadable answer from {}: {why}", shared.shown_url),
        retry_after: None,
    };
    let parsed: ChatResponse = serde_json::from_slice(&bytes).map_err(|e| {
        malformed(format!(
            "{e}; body: {}",
            excerpt(&String::from_utf8_lossy(&bytes))
        ))
    })?;
    let usage = parsed.usage;
    let choice = parsed
        .choices
        .into_iter()
        .next()
        .ok_or_else(|| malformed("no choices".into()))?;
    let text = choice
        .message
        .and_then(|m| m.content)
        .ok_or_else(|| malformed("no message content".into()))?;
    // An answer that echoes the key (or the URL's password) is kept, and
    // journaled, without it.
    let text = shared.scrub(text);
    let finish = match choice.finish_reason.as_deref() {
        Some("length") => Finish::Length,
        // "stop" covers both the end of the turn and a stop sequence.
        _ => Finish::Eos,
    };
    // The server's counts, capped: they are summed and priced downstream.
    let count = |n: u64| n.min(MAX_REPORTED_TOKENS) as usize;
    let (prompt_tokens, completion_tokens) = usage
        .map(|u| (count(u.prompt_tokens), count(u.completion_tokens)))
        .unwrap_or((0, 0));
    Ok(Completion {
        text,
        prompt_tokens,
        completion_tokens,
        finish,
    })
}

impl Shared {
    /// The wait before retry `n` (0-based): exponential with jitter, and
    /// never shorter than the server asked.
    fn backoff(&self, n: u32, retry_after: Option<Duration>) -> Duration {
        let exp = self
            .backoff_base
            .saturating_mul(1u32.checked_shl(n.min(20)).unwrap_or(u32::MAX))
            .min(self.backoff_max);
        // Jitter spreads the retries of requests that failed together.
        let jittered = exp.mul_f64(rand::rng().random_range(0.5..=1.0));
        match retry_after {
            Some(ra) => jittered.max(ra.min(self.max_retry_after)),
            None => jittered,
        }
    }

    /// `text` with the key and the URL's credentials cut out, in case a
    /// server echoes them.
    fn scrub(&self, text: String) -> String {
        let secrets: Vec<&str> = self.secrets.iter().map(String::as_str).collect();
        scrub_secrets(&text, &secrets)
    }
}

/// `Retry-After` (seconds) or `retry-after-ms`, at most `max`; HTTP dates
/// are not read, nor negative or non-finite numbers.
fn retry_after(headers: &HeaderMap, max: Duration) -> Option<Duration> {
    let num = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    num("retry-after-ms")
        .and_then(|ms| checked_secs(ms / 1000.0, max))
        .or_else(|| num("retry-after").and_then(|s| checked_secs(s, max)))
}

/// The body of `resp`, at most `cap` bytes, read as it arrives; `false`
/// when there was more (the rest is not read).
async fn read_body(
    mut resp: reqwest::Response,
    cap: usize,
) -> std::result::Result<(Vec<u8>, bool), reqwest::Error> {
    if resp.content_length().is_some_and(|n| n > cap as u64) {
        return Ok((Vec::new(), false));
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        let room = cap - out.len();
        if chunk.len() > room {
            out.extend_from_slice(&chunk[..room]);
            return Ok((out, false));
        }
        out.extend_from_slice(&chunk);
    }
    Ok((out, true))
}

/// `n` bytes as `N MiB` where it is whole mebibytes, else in bytes.
fn size_text(n: usize) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{} MiB", n >> 20)
    } else {
        format!("{n} bytes")
    }
}

/// The error and its causes, one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let s_text = s.to_string();
        if !out.contains(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        cur = s.source();
    }
    out
}

/// The start of a body, for error messages.
fn excerpt(text: &str) -> String {
    let t = text.trim();
    match t.char_indices().nth(200) {
        Some((i, _)) => format!("{}...", &t[..i]),
        None => t.to_string(),
    }
}

/// A token bucket that lends: a taker waits until the bucket has refilled
/// enough for it, in the order they came, so a request larger than the
/// bucket still goes (after waiting for the bucket to fill).
struct Bucket {
    per_sec: f64,
    capacity: f64,
    state: Mutex<(f64, Instant)>,
}

impl Bucket {
    fn new(per_sec: f64, capacity: f64) -> Self {
        Bucket {
            per_sec,
            capacity,
            state: Mutex::new((capacity, Instant::now())),
        }
    }

    /// Reserves `n` and waits until they are covered.
    async fn take(&self, n: f64) {
        let wait = {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            // The level may be below zero: what earlier takers borrowed.
            let level =
                (s.0 + now.duration_since(s.1).as_secs_f64() * self.per_sec).min(self.capacity);
            // A taker larger than the bucket waits for a full one, then owes the rest.
            let need = n.min(self.capacity);
            let wait = (need - level).max(0.0) / self.per_sec;
            *s = (level - n, now);
            wait
        };
        // A rate near zero asks for an endless wait: a day is the most.
        if let Some(d) = checked_secs(wait, MAX_BUCKET_WAIT).filter(|d| !d.is_zero()) {
            tokio::time::sleep(d).await;
        }
    }

    fn give_back(&self, n: f64) {
        if n > 0.0 {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            s.0 = (s.0 + n).min(self.capacity);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_never_shows_in_debug_output() {
        let mut cfg = OpenAiConfig::new("http://127.0.0.1:1/v1", "m");
        cfg.api_key = Some(ApiKey::new("sk-very-secret"));
        assert!(!format!("{cfg:?}").contains("sk-very-secret"));
        let g = OpenAiGenerator::new(cfg).unwrap();
        assert!(!g.identity().contains("sk-very-secret"));
        assert_eq!(g.identity(), "flow-generate/openai/v1:m");
        assert_eq!(
            g.shared.scrub("x sk-very-secret y".into()),
            "x <redacted> y"
        );
    }

    #[test]
    fn backoff_doubles_is_jittered_and_honours_retry_after() {
        let mut cfg = OpenAiConfig::new("http://127.0.0.1:1/v1", "m");
        cfg.backoff_base = Duration::from_millis(100);
        cfg.backoff_max = Duration::from_secs(1);
        let g = OpenAiGenerator::new(cfg).unwrap();
        for n in 0..8 {
            let d = g.shared.backoff(n, None);
            let full = Duration::from_millis(100 * (1 << n)).min(Duration::from_secs(1));
            assert!(d <= full && d >= full / 2, "{n}: {d:?}");
        }
        let d = g.shared.backoff(0, Some(Duration::from_secs(3)));
        assert!(d >= Duration::from_secs(3));
    }

    #[test]
    fn retry_after_is_read_in_seconds_or_milliseconds() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("2"));
        let max = MAX_RETRY_AFTER;
        assert_eq!(retry_after(&h, max), Some(Duration::from_secs(2)));
        h.insert("retry-after-ms", HeaderValue::from_static("150"));
        assert_eq!(retry_after(&h, max), Some(Duration::from_millis(150)));
        let mut h = HeaderMap::new();
        h.insert(
            "retry-after",
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h, max), None);
        // Numbers no Duration holds wait the most, not panic.
        for (name, v) in [
            ("retry-after-ms", "1e30"),
            ("retry-after", "1e300"),
            ("retry-after", "18446744073709551616"),
        ] {
            let mut h = HeaderMap::new();
            h.insert(name, HeaderValue::from_static(v));
            assert_eq!(retry_after(&h, max), Some(max), "{name}: {v}");
        }
        for v in ["-1", "NaN", "inf", "-inf"] {
            let mut h = HeaderMap::new();
            h.insert("retry-after", HeaderValue::from_static(v));
            assert_eq!(retry_after(&h, max), None, "{v}");
        }
        assert_eq!(checked_secs(1e30, max), Some(max));
        assert_eq!(checked_secs(f64::MAX, max), Some(max));
        let mut cfg = OpenAiConfig::new("http://127.0.0.1:1/v1", "m");
        assert!(cfg.set_timeout_secs(1e30).is_ok());
        assert_eq!(cfg.timeout, Duration::from_secs(24 * 3600));
        assert!(cfg.set_timeout_secs(f64::NAN).is_err());
        assert!(cfg.set_timeout_secs(0.0).is_err());
        cfg.set_timeout_secs(2.5).unwrap();
        assert_eq!(cfg.timeout, Duration::from_millis(2500));
    }

    #[test]
    fn the_bucket_paces_takers() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            // 20 per second, 1 at once: the 5 takes after the first need ~0.2 s.
            let b = Bucket::new(20.0, 1.0);
            let t0 = Instant::now();
            for _ in 0..5 {
                b.take(1.0).await;
            }
            let e = t0.elapsed();
            assert!(e >= Duration::from_millis(190), "{e:?}");
            assert!(e < Duration::from_millis(600), "{e:?}");
        });
    }
}
