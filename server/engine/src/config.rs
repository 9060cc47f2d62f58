//! Engine settings, and how the KV cache size follows from them.

use lantern_models::Decoder;

/// How much memory the KV cache takes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CacheSize {
    Blocks(usize),
    Bytes(usize),
    /// A fraction of the memory free on the device when the engine starts (CPU: `MemAvailable`).
    FreeMemoryFraction(f64),
}

#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    /// Tokens per KV block.
    pub block_size: usize,
    pub cache: CacheSize,
    /// TGI's cap on tokens held by the whole batch: caps the cache at this many tokens.
    pub max_batch_total_tokens: Option<usize>,
    /// Prompt tokens one step may prefill; longer prompts are split into chunks of at most this.
    pub max_batch_prefill_tokens: usize,
    /// Sequences running at once.
    pub max_num_seqs: usize,
    /// Prompt plus new tokens allowed for one request.
    pub max_total_tokens: usize,
    /// What a failed step does to the engine.
    pub faults: FaultPolicy,
    /// After this long with nothing to run, the engine hands the KV pages it wrote and its
    /// step buffers back to the OS, so resident memory returns to its idle size; `None` keeps
    /// them (the next burst then skips the page faults).
    pub release_memory_after_idle: Option<std::time::Duration>,
    /// Reuse the keys and values of prompt prefixes already computed (scheduler.rs).
    pub prefix_caching: bool,
}

/// A failed (or panicking) step fails the sequences it carried and the engine goes on; only
/// `max_consecutive` failures in a row turn it unhealthy (`/ping` 503, so the platform
/// replaces the container).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultPolicy {
    pub max_consecutive: usize,
    /// Test-only: every `n`-th model step fails, alternately with an error and a panic.
    pub inject_every: Option<u64>,
}

impl Default for FaultPolicy {
    fn default() -> Self {
        Self {
            max_consecutive: 3,
            inject_every: None,
        }
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            block_size: 16,
            cache: CacheSize::FreeMemoryFraction(0.3),
            max_batch_total_tokens: None,
            max_batch_prefill_tokens: 512,
            max_num_seqs: 64,
            max_total_tokens: 4096,
            faults: FaultPolicy::default(),
            release_memory_after_idle: Some(std::time::Duration::from_secs(10)),
            prefix_caching: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid engine setting: {0}")]
    Setting(String),
    #[error("{0}")]
    Warmup(String),
    #[error(transparent)]
    Model(#[from] lantern_models::ModelError),
}

impl EngineConfig {
    /// Number of KV blocks this configuration gives `decoder`.
    pub fn num_blocks(&self, decoder: &Decoder) -> Result<usize, StartError> {
        if self.block_size == 0 || self.max_num_seqs == 0 || self.max_batch_prefill_tokens == 0 {
            return Err(StartError::Setting(
                "block size, max_num_seqs and max_batch_prefill_tokens must be positive".into(),
            ));
        }
        let per_block = decoder.kv_cache_bytes_per_block(self.block_size);
        let from_memory = |bytes: usize| bytes / per_block;
        let mut blocks = match self.cache {
            CacheSize::Blocks(blocks) => blocks,
            CacheSize::Bytes(bytes) => from_memory(bytes),
            CacheSize::FreeMemoryFraction(fraction) => {
                if !decoder.device().is_cpu() {
                    return Err(StartError::Setting(
                        "sizing the KV cache from free GPU memory is not supported yet: give it a size (--kv-cache-memory)".into(),
                    ));
                }
                let free = lantern_models::load::available_memory_bytes().ok_or_else(|| {
                    StartError::Setting(
                        "cannot read free memory (/proc/meminfo): give the KV cache a size".into(),
                    )
                })?;
                from_memory((free as f64 * fraction.clamp(0.0, 1.0)) as usize)
            }
        };
        if let Some(cap) = self.max_batch_total_tokens {
            blocks = blocks.min(cap.div_ceil(self.block_size));
        }
        if blocks == 0 {
            return Err(StartError::Setting(format!(
                "the KV cache holds no block ({per_block} bytes each): give it more memory"
            )));
        }
        Ok(blocks)
    }
}
