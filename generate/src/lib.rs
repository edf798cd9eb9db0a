//! Text generation for flow: a [`Generator`] trait (the in-process candle
//! backend here; an HTTP backend can plug in behind the same trait), the
//! model's chat template, seeded sampling, and a [`Journal`] that remembers
//! every finished request so nothing is generated twice.

mod chat;
mod journal;
mod local;

pub use chat::ChatTemplate;
pub use journal::{request_key, Journal, Journaled};
pub use local::LocalGenerator;

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

/// Counters a generator keeps, for progress lines and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Stats {
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub prompt_secs: f64,
    pub completion_secs: f64,
}

impl Stats {
    pub fn prompt_tps(&self) -> f64 {
        self.prompt_tokens as f64 / self.prompt_secs.max(1e-9)
    }
    pub fn completion_tps(&self) -> f64 {
        self.completion_tokens as f64 / self.completion_secs.max(1e-9)
    }
}

/// A text generator. Backends: `local` ([`LocalGenerator`]); `openai` later.
pub trait Generator: Send {
    /// What identifies the results of this generator (model weights, backend
    /// and implementation version): part of every journal key.
    fn identity(&self) -> &str;
    /// Answers the requests, in order. A backend may batch them.
    fn generate(&mut self, requests: &[Request]) -> Result<Vec<Completion>>;
    fn stats(&self) -> Stats;
}
