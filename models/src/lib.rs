//! Lantern's models: configs, weight and tokenizer loading, and the one batched, paged decoder
//! that serves the Llama, Mistral, Qwen2, Qwen3, Phi-3 and Gemma families.

pub mod batch;
pub mod chat;
pub mod chat_prompt;
pub mod config;
pub mod decoder;
pub mod dummy;
pub mod error;
mod fused;
mod gguf_tokenizer;
pub mod hub;
pub mod layers;
pub mod load;
pub mod lora;
pub mod output_schema;
pub mod tokenizer;
pub mod tool_calls;
pub mod weights;

pub use batch::{LogitsWanted, SequenceStep};
pub use chat::{ChatMessage, ChatTemplate, TemplateToolCall};
pub use config::{Architecture, DecoderConfig};
pub use decoder::{Decoder, KernelPath, KvDtype};
pub use error::{ModelError, Result};
pub use lantern_kernels::cpu::QuantFormat;
pub use load::{load, Dequantize, LoadOptions, LoadedModel, ModelSource};
pub use tokenizer::{GenerationDefaults, TokenizerBundle};
pub use tool_calls::{ParsedCall, Piece, ToolSpec, ToolSyntax};

/// candle asks for its thread count before every matmul, and unless `RAYON_NUM_THREADS` is set
/// that means parsing `/proc/cpuinfo` each time (10% of a decode step, measured here). Call
/// once at start, before any thread is spawned; an explicit setting is kept.
pub fn pin_thread_count() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }
}
