//! The one error type of the models crate. Every variant names the file, tensor or setting at
//! fault, so a user can act on the message without reading code.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },

    #[error("tensor `{name}` in {}: {message}", file.display())]
    Tensor {
        name: String,
        file: PathBuf,
        message: String,
    },

    #[error("unsupported architecture `{found}`: Lantern serves {supported}")]
    UnknownArchitecture { found: String, supported: String },

    #[error("{}: invalid model config: {message}", path.display())]
    Config { path: PathBuf, message: String },

    #[error("model hub: {0}")]
    Hub(String),

    #[error("tokenizer: {0}")]
    Tokenizer(String),

    #[error("chat template: {0}")]
    ChatTemplate(String),

    #[error("kernels: {0}")]
    Kernels(String),

    #[error("invalid batch: {0}")]
    Batch(String),

    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl ModelError {
    pub(crate) fn file(path: impl Into<PathBuf>, message: impl std::fmt::Display) -> Self {
        Self::File {
            path: path.into(),
            message: message.to_string(),
        }
    }

    pub(crate) fn config(path: impl Into<PathBuf>, message: impl std::fmt::Display) -> Self {
        Self::Config {
            path: path.into(),
            message: message.to_string(),
        }
    }
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;
