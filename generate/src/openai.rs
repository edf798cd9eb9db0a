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

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

use crate::{Completion, Finish, GenError, Generator, Message, Request, Result, Sink, Stats};

/// Bump when a change here changes what is asked of the server: it is part
/// of every journal key.
const IMPL: &str = "flow-generate/openai/v1";

/// How often a batch waiting for answers looks at [`Sink::cancelled`].
const CANCEL_POLL: Duration = Duration::from_millis(100);

/// The longest `Retry-After` honoured as given (a server asking for more is
/// waited on this long, then asked again).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

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
#[derive(Clone, Debug)]
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
    url: String,
    model: String,
    json_mode: bool,
    timeout: Duration,
    max_retries: u32,
    backoff_base: Duration,
    backoff_max: Duration,
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
    /// To scrub from anything the server sends back.
    key: Option<String>,
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
        let identity = format!(
            "{IMPL}:{}{}",
            cfg.model,
            if cfg.json_mode { ":json" } else { "" }
        );
        let per_sec = |per_min: f64| per_min / 60.0;
        let shared = Shared {
            client,
            url,
            model: cfg.model,
            json_mode: cfg.json_mode,
            timeout: cfg.timeout,
            max_retries: cfg.max_retries,
            backoff_base: cfg.backoff_base,
            backoff_max: cfg.backoff_max,
            // A second's worth may go at once.
            requests: cfg
                .requests_per_minute
                .map(|r| Bucket::new(per_sec(r), per_sec(r).max(1.0))),
            tokens: cfg
                .tokens_per_minute
                .map(|r| Bucket::new(per_sec(r), per_sec(r).max(1.0))),
            key: cfg.api_key.map(|k| k.0),
        };
        Ok(OpenAiGenerator {
            rt,
            shared: Arc::new(shared),
            max_concurrency: cfg.max_concurrency.max(1),
            identity,
            stats: Stats::default(),
        })
    }

    pub fn url(&self) -> &str {
        &self.shared.url
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
                            stats.prompt_tokens += c.prompt_tokens as u64;
                            stats.completion_tokens += c.completion_tokens as u64;
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
                    let used = (c.prompt_tokens + c.completion_tokens) as f64;
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
            format!("no answer within {:?} from {}", shared.timeout, shared.url)
        } else {
            // reqwest's message names the URL and the cause, never the headers.
            error_chain(&e)
        },
        retry_after: None,
    };
    let resp = shared
        .client
        .post(&shared.url)
        .header(CONTENT_TYPE, "application/json")
        .timeout(shared.timeout)
        .body(body.to_vec())
        .send()
        .await
        .map_err(transport)?;
    let status = resp.status();
    let retry_after = retry_after(resp.headers());
    let bytes = resp.bytes().await.map_err(transport)?;
    if !status.is_success() {
        let what = format!(
            "{status} from {}: {}",
            shared.url,
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
    let malformed = |why: String| AttemptError::Transient {
        reason: format!("unreadable answer from {}: {why}", shared.url),
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
    let finish = match choice.finish_reason.as_deref() {
        Some("length") => Finish::Length,
        // "stop" covers both the end of the turn and a stop sequence.
        _ => Finish::Eos,
    };
    let (prompt_tokens, completion_tokens) = usage
        .map(|u| (u.prompt_tokens as usize, u.completion_tokens as usize))
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
            Some(ra) => jittered.max(ra.min(MAX_RETRY_AFTER)),
            None => jittered,
        }
    }

    /// `text` with the key cut out, in case a server echoes it.
    fn scrub(&self, text: String) -> String {
        match &self.key {
            Some(k) if !k.is_empty() && text.contains(k.as_str()) => {
                text.replace(k.as_str(), "<redacted>")
            }
            _ => text,
        }
    }
}

/// `Retry-After` (seconds) or `retry-after-ms`; HTTP dates are not read.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let num = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|v| v.is_finite() && *v >= 0.0)
    };
    num("retry-after-ms")
        .map(|ms| Duration::from_secs_f64(ms / 1000.0))
        .or_else(|| num("retry-after").map(|s| Duration::from_secs_f64(s.min(1e6))))
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
        if wait > 0.0 {
            tokio::time::sleep(Duration::from_secs_f64(wait)).await;
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
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert("retry-after-ms", HeaderValue::from_static("150"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(150)));
        let mut h = HeaderMap::new();
        h.insert(
            "retry-after",
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), None);
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
