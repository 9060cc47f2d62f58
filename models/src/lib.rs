//! Lantern's models: configs, weight and tokenizer loading, and the one batched, paged decoder
//! that serves the Llama, Mistral, Qwen2 and Qwen3 families.

pub mod batch;
pub mod chat;
pub mod config;
pub mod decoder;
pub mod dummy;
pub mod error;
pub mod gguf;
pub mod hub;
pub mod layers;
pub mod load;
pub mod tokenizer;
pub mod weights;

pub use batch::{KvCache, LogitsWanted, SequenceStep};
pub use chat::{ChatMessage, ChatTemplate};
pub use config::{Architecture, DecoderConfig};
pub use decoder::Decoder;
pub use error::{ModelError, Result};
pub use load::{load, Dequantize, LoadOptions, LoadedModel, ModelSource};
pub use tokenizer::{GenerationDefaults, TokenizerBundle};
