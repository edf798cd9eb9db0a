//! Text generation for flow: a [`Generator`] trait with two backends, in
//! process on candle ([`LocalGenerator`]) and over an OpenAI-compatible HTTP
//! API ([`OpenAiGenerator`]), the model's chat template, seeded sampling, and
//! a [`Journal`] that remembers every finished request so nothing is
//! generated (or paid for) twice.
//!
//! Generators answer batches: each request's result goes to a [`Sink`] as
//! soon as it is ready, in any order, so a backend can run many at once and
//! the journal can keep every answer the moment it arrives.

mod chat;
pub mod cpu;
mod journal;
mod local;
mod openai;

pub use chat::ChatTemplate;
pub use journal::{request_key, CompactReport, Journal, Journaled};
pub use local::{LocalGenerator, DEFAULT_BATCH};
pub use openai::{
    checked_secs, redact_url, scrub_secrets, ApiKey, OpenAiConfig, OpenAiGenerator,
    MAX_ANSWER_BYTES, MAX_RETRY_AFTER,
};

use serde::{Deserialize, Serialize};

pub type Result<T> = std::result::Result<T, GenError>;

#[derive(Debug, thiserror::Error)]
pub enum GenError {
    #[error(transparent)]
    Model(#[from] flow_models::ModelError),
    #[error("{0}")]
    Other(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// One request failed for good (its retries are spent, or the server
    /// refused it): that item is lost, the batch goes on.
    #[error("request failed after {attempts} attempt(s): {reason}")]
    Request { attempts: u32, reason: String },
    /// A failure every request would meet (a rejected key, an unknown model
    /// or endpoint, a missing key variable): the batch stops.
    #[error("{0}")]
    Config(String),
    #[error("cancelled")]
    Cancelled,
}

impl GenError {
    pub(crate) fn other(e: impl std::fmt::Display) -> Self {
        GenError::Other(e.to_string())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn system(content: impl Into<String>) -> Self {
        Message {
            role: "system".into(),
            content: content.into(),
        }
    }
    pub fn user(content: impl Into<String>) -> Self {
        Message {
            role: "user".into(),
            content: content.into(),
        }
    }
}

/// How to sample. The same request (messages + sampling + model) gives the same text.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sampling {
    /// 0 = greedy.
    pub temperature: f64,
    pub top_p: f64,
    pub max_tokens: usize,
    #[serde(default)]
    pub stop: Vec<String>,
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            temperature: 0.7,
            top_p: 1.0,
            max_tokens: 256,
            stop: Vec::new(),
            seed: 0,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub messages: Vec<Message>,
    pub sampling: Sampling,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Finish {
    /// The model ended its turn.
    Eos,
    /// A stop sequence was produced (and cut off).
    Stop,
    /// `max_tokens` was reached.
    Length,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    pub text: String,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub finish: Finish,
}

/// Counters a generator keeps, for progress lines, metrics and benchmarks.
/// Only requests the backend answered count (journal hits cost nothing).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Stats {
    /// Requests answered.
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub prompt_secs: f64,
    pub completion_secs: f64,
    /// Extra attempts after a transient failure (HTTP: 429, 5xx, timeouts...).
    pub retries: u64,
    /// Requests that failed for good.
    pub failed: u64,
}

impl Stats {
    pub fn prompt_tps(&self) -> f64 {
        self.prompt_tokens as f64 / self.prompt_secs.max(1e-9)
    }
    pub fn completion_tps(&self) -> f64 {
        self.completion_tokens as f64 / self.completion_secs.max(1e-9)
    }
}

/// Where the results of a batch go, one by one as they finish.
pub trait Sink {
    /// Request `index` of the batch is finished: answered, or failed for
    /// good ([`GenError::Request`]). Called once per request, in any order.
    fn done(&mut self, index: usize, result: Result<Completion>);
    /// The `done` calls since the last flush were ready together: the place
    /// to make them durable with one write. An error stops the batch.
    fn flush(&mut self) -> Result<()> {
        Ok(())
    }
    /// Polled between results and while waiting for them: `true` stops the
    /// batch ([`GenError::Cancelled`]).
    fn cancelled(&self) -> bool {
        false
    }
}

/// A text generator. Backends: `local` ([`LocalGenerator`]) and `openai`
/// ([`OpenAiGenerator`]).
pub trait Generator: Send {
    /// What identifies the results of this generator (model weights or
    /// endpoint model, backend and implementation version): part of every
    /// journal key. Never a secret.
    fn identity(&self) -> &str;
    /// Answers a batch, reporting each request through `sink` as soon as it
    /// is finished, possibly several at once. A request that fails for good
    /// goes to [`Sink::done`] as an error and the batch goes on; `Err` here
    /// means the batch stopped (cancelled, a sink error, or a
    /// [`GenError::Config`] failure), after the results already reported.
    fn generate_batch(&mut self, requests: &[Request], sink: &mut dyn Sink) -> Result<()>;
    /// Answers the requests, in order; the first failure fails the call.
    fn generate(&mut self, requests: &[Request]) -> Result<Vec<Completion>> {
        struct Collect(Vec<Option<Result<Completion>>>);
        impl Sink for Collect {
            fn done(&mut self, index: usize, result: Result<Completion>) {
                if let Some(slot) = self.0.get_mut(index) {
                    *slot = Some(result);
                }
            }
        }
        let mut c = Collect((0..requests.len()).map(|_| None).collect());
        self.generate_batch(requests, &mut c)?;
        c.0.into_iter()
            .map(|r| r.unwrap_or_else(|| Err(GenError::other("the generator skipped a request"))))
            .collect()
    }
    fn stats(&self) -> Stats;
}
