//! What goes wrong loading a model, training and evaluating, by kind. Each
//! message names the file, tensor or setting and what is wrong with it.

use crate::trainer::Stopped;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A model file that `flow_models` refused or could not read: its
    /// checks ([`flow_models::guard`]) name the file and the field.
    #[error(transparent)]
    Model(#[from] flow_models::ModelError),
    /// A model file failing [`flow_models::guard`]'s checks.
    #[error(transparent)]
    File(#[from] flow_models::FileError),
    /// A file whose content is missing something or does not fit together
    /// (`config.json` against the tensors, a shard index, a checkpoint, an
    /// adapter, GGUF metadata); the message names the file and the key.
    #[error("{0}")]
    Invalid(String),
    /// A model or adapter this crate cannot train or evaluate: an
    /// architecture, RoPE type, activation or option it does not implement.
    #[error("{0}")]
    Unsupported(String),
    /// Reading or writing a file: `what` names the operation and the path.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A JSON file that does not parse, or does not describe what it should.
    #[error("{what}: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    /// A tensor file or tensor that candle could not read; `what` names it.
    #[error("{what}: {source}")]
    Tensor {
        what: String,
        #[source]
        source: candle_core::Error,
    },
    /// A tensor operation that failed (a shape, a device).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// The tokenizer failed on a text.
    #[error("tokenize: {0}")]
    Tokenize(String),
    /// Data or settings that cannot be trained on: no examples, a sequence
    /// longer than the model's positions.
    #[error("{0}")]
    Data(String),
    /// [`crate::trainer::Monitor::stop`] asked to stop (the state is
    /// checkpointed first).
    #[error(transparent)]
    Stopped(#[from] Stopped),
}

impl TrainError {
    /// Whether this is a stop on request rather than a failure.
    pub fn is_stopped(&self) -> bool {
        matches!(self, TrainError::Stopped(_))
    }

    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        TrainError::Io {
            what: what.into(),
            source,
        }
    }

    pub(crate) fn json(what: impl Into<String>, source: serde_json::Error) -> Self {
        TrainError::Json {
            what: what.into(),
            source,
        }
    }

    pub(crate) fn tensor(what: impl Into<String>, source: candle_core::Error) -> Self {
        TrainError::Tensor {
            what: what.into(),
            source,
        }
    }
}

pub type Result<T, E = TrainError> = std::result::Result<T, E>;

/// Returns a [`TrainError::Invalid`] with the `format!` message.
macro_rules! invalid {
    ($($arg:tt)*) => {
        return Err($crate::error::TrainError::Invalid(format!($($arg)*)))
    };
}

/// Returns a [`TrainError::Unsupported`] with the `format!` message.
macro_rules! unsupported {
    ($($arg:tt)*) => {
        return Err($crate::error::TrainError::Unsupported(format!($($arg)*)))
    };
}

pub(crate) use {invalid, unsupported};
