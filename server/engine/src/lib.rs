//! Lantern's engine: continuous batching over a paged KV cache. Requests go in through an
//! [`EngineHandle`]; a worker thread runs the model step after step, every running sequence
//! advancing each step, finished ones leaving and new ones joining.
//!
//! This crate has no HTTP dependency: the compiler keeps the HTTP layer out.

pub mod adapters;
pub mod blocks;
mod channel;
pub mod config;
pub mod constraint;
pub mod detokenize;
pub mod device_sampling;
pub mod draft_model;
pub mod handle;
pub mod limits;
mod masks_ahead;
mod pool;
pub mod prefill_budget;
pub mod request;
mod routing;
pub mod sampling;
pub mod scheduler;
pub mod speculation;
mod startup;
pub mod stop;
mod worker;

pub use adapters::{AdapterRef, AdapterSource, AdapterStats};
pub use config::{gpu_cache_blocks, CacheSize, EngineConfig, FaultPolicy, GpuMemory, StartError};
pub use handle::{EngineHandle, EventStream, SubmitError};
pub use limits::{FieldNames, Limits, Refusal, RequestSize};
pub use pool::EnginePool;
pub use request::{Completion, Event, FinishReason, GenerateRequest, PromptLogprob, TokenEvent};
pub use sampling::SamplingParams;
pub use scheduler::{SchedulerStats, SequenceOptions, SpeculationStats};
pub use startup::{start, start_pool, start_with_draft};
