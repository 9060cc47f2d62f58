//! LoRA adapters as requests name them and engines hold them.
//!
//! The serving layer registers an adapter (a name and the directory of its checked files) and
//! gives it an id never used before, so a prefix computed under one adapter can never be
//! found by another, even one registered later under the same name. A request carries the
//! [`AdapterRef`]; the engine thread loads an adapter into the decoder when a step first
//! needs it and keeps at most `max_loras` there, the least recently used unpinned one
//! unloaded first (`worker/adapters.rs`).

use std::path::PathBuf;
use std::sync::Arc;

/// A registered adapter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterSource {
    /// Unique for the server's life; the decoder's and the prefix cache's key.
    pub id: u32,
    pub name: String,
    /// A PEFT directory (`adapter_config.json`, `adapter_model.safetensors`), already checked.
    pub dir: PathBuf,
    /// Kept loaded once loaded: never the one unloaded to make room.
    pub pinned: bool,
}

pub type AdapterRef = Arc<AdapterSource>;

/// What one engine's adapters are doing (for `/info` and vLLM's `lora_requests_info`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdapterStats {
    /// Adapters of running requests, and of waiting ones, by id, each once.
    pub running: Vec<u32>,
    pub waiting: Vec<u32>,
    /// Adapters loaded in the decoder.
    pub loaded: Vec<u32>,
    /// Bytes they take there.
    pub bytes: usize,
    /// Loads from disk since start (an adapter unloaded to make room and needed again is
    /// loaded again).
    pub loads: u64,
}

impl std::ops::AddAssign for AdapterStats {
    fn add_assign(&mut self, other: Self) {
        let union = |mine: &mut Vec<u32>, theirs: Vec<u32>| {
            mine.extend(theirs);
            mine.sort_unstable();
            mine.dedup();
        };
        union(&mut self.running, other.running);
        union(&mut self.waiting, other.waiting);
        union(&mut self.loaded, other.loaded);
        self.bytes += other.bytes;
        self.loads += other.loads;
    }
}
