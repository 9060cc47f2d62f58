//! Engine settings, and how the KV cache size follows from them.

use lantern_models::Decoder;

/// How much memory the KV cache takes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CacheSize {
    Blocks(usize),
    Bytes(usize),
    /// A fraction of the memory free on the device when the engine starts (CPU: `MemAvailable`).
    FreeMemoryFraction(f64),
    /// GPU: what is left of this fraction of the GPU's total memory once the weights, the
    /// runtime's own allocations (measured after a warm-up step) and the largest step's
    /// activations are counted, like vLLM's `gpu_memory_utilization`. On the CPU it means
    /// [`CacheSize::FreeMemoryFraction`] of 0.3.
    DeviceMemoryUtilization(f64),
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
    /// While sequences decode, a step's prefill is held to what adds at most this much time
    /// to the step (prefill_budget.rs); `None`: always `max_batch_prefill_tokens`.
    pub max_decode_stall: Option<std::time::Duration>,
    /// Tokens proposed per decoding sequence by prompt lookup (speculation.rs); 0: off.
    pub speculate: usize,
    /// Choose next tokens on the device the logits are on (`device_sampling.rs`) rather than
    /// copying them to the host. `None`: on when the model runs on a GPU.
    pub sample_on_device: Option<bool>,
    /// LoRA adapters loaded in the decoder at once (`--max-loras`); requests for others wait.
    pub max_loras: usize,
    /// The highest adapter rank served (`--max-lora-rank`).
    pub max_lora_rank: usize,
    /// What the KV cache stores keys and values as (`--kv-cache-dtype`). `None`: f16 on the
    /// CPU kernels, the weights' dtype on the portable path.
    pub kv_cache_dtype: Option<lantern_models::KvDtype>,
}

/// `--max-loras` by default: adapters resident at once.
pub const DEFAULT_MAX_LORAS: usize = 8;
/// `--max-lora-rank` by default: any rank PEFT users commonly train (vLLM's 16 surprises).
pub const DEFAULT_MAX_LORA_RANK: usize = 256;

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
            max_decode_stall: Some(std::time::Duration::from_millis(
                DEFAULT_MAX_DECODE_STALL_MS,
            )),
            speculate: 0,
            sample_on_device: None,
            max_loras: DEFAULT_MAX_LORAS,
            max_lora_rank: DEFAULT_MAX_LORA_RANK,
            kv_cache_dtype: None,
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
            CacheSize::DeviceMemoryUtilization(utilization) if !decoder.device().is_cpu() => {
                let (free, total) = lantern_kernels::device_choice::memory_info(decoder.device())
                    .ok_or_else(|| {
                        StartError::Setting(
                            "cannot read the GPU's free memory: give the KV cache a size (--kv-cache-memory)".into(),
                        )
                    })?;
                let activations = self.peak_activation_bytes(decoder);
                gpu_cache_blocks(
                    GpuMemory { total, free },
                    utilization,
                    activations,
                    per_block,
                )?
            }
            CacheSize::FreeMemoryFraction(_) | CacheSize::DeviceMemoryUtilization(_)
                if !decoder.device().is_cpu() =>
            {
                return Err(StartError::Setting(
                    "sizing the KV cache from free GPU memory needs --gpu-memory-utilization, or give it a size (--kv-cache-memory)".into(),
                ));
            }
            CacheSize::FreeMemoryFraction(_) | CacheSize::DeviceMemoryUtilization(_) => {
                let fraction = match self.cache {
                    CacheSize::FreeMemoryFraction(fraction) => fraction,
                    _ => CPU_CACHE_FRACTION,
                };
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

    /// A generous bound on the memory the largest step's activations take at once: every
    /// prefill token's hidden states, projections and MLP intermediates alive together (in
    /// f32 at worst), plus f32 logits for every sequence. Only GPU sizing uses it; the
    /// warm-up step on the sized cache then proves it.
    pub fn peak_activation_bytes(&self, decoder: &Decoder) -> usize {
        let c = decoder.config();
        let tokens = self.max_batch_prefill_tokens.max(self.max_num_seqs);
        let per_token = 4 * c.hidden_size
            + 3 * c.intermediate_size
            + 2 * c.num_heads * c.head_dim
            + 2 * c.num_kv_heads * c.head_dim;
        let logits = 2 * self.max_num_seqs * c.vocab_size;
        4 * (2 * tokens * per_token + logits)
    }
}

/// The default `--max-decode-stall-ms`: a decoding sequence's token may wait this much longer
/// because of the prefill in its step (llama.cpp's server, prefilling in 512-token batches
/// beside decoding, shows an inter-token p99 of 170-280 ms on a 1B model on two cores).
pub const DEFAULT_MAX_DECODE_STALL_MS: u64 = 150;

/// What the CPU's cache takes of available memory when sized by utilization.
const CPU_CACHE_FRACTION: f64 = 0.3;

/// A GPU's memory as the driver reports it after the warm-up step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuMemory {
    pub total: usize,
    pub free: usize,
}

/// KV blocks of `per_block` bytes that fit in `utilization` of the GPU's total memory, after
/// what is in use now (weights, runtime, the warm-up's cache already released) and
/// `activations` for the largest step.
pub fn gpu_cache_blocks(
    memory: GpuMemory,
    utilization: f64,
    activations: usize,
    per_block: usize,
) -> Result<usize, StartError> {
    const GIB: f64 = (1u64 << 30) as f64;
    if !(utilization > 0.0 && utilization <= 1.0) {
        return Err(StartError::Setting(format!(
            "--gpu-memory-utilization {utilization} must be in (0, 1]"
        )));
    }
    let in_use = memory.total.saturating_sub(memory.free);
    let budget = (memory.total as f64 * utilization) as usize;
    let left = budget.saturating_sub(in_use + activations);
    if left < per_block.max(1) {
        return Err(StartError::Setting(format!(
            "{utilization} of the GPU's {:.1} GiB leaves no room for the KV cache: the model and runtime use {:.1} GiB and a step's activations up to {:.1} GiB; raise --gpu-memory-utilization, lower --max-batch-prefill-tokens, or use a smaller model or dtype",
            memory.total as f64 / GIB,
            in_use as f64 / GIB,
            activations as f64 / GIB,
        )));
    }
    Ok(left / per_block.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: usize = 1 << 30;

    #[test]
    fn the_cache_gets_the_budget_left_after_what_is_in_use() {
        // 80 GiB card, 16 GiB of weights and runtime in use, 90%: 72 - 16 - 2 = 54 GiB.
        let memory = GpuMemory {
            total: 80 * GIB,
            free: 64 * GIB,
        };
        let blocks = gpu_cache_blocks(memory, 0.9, 2 * GIB, 1 << 20).expect("fits");
        assert_eq!(blocks, (72 * GIB - 16 * GIB - 2 * GIB) / (1 << 20));
        // Everything: all that is free but the activations.
        let all = gpu_cache_blocks(memory, 1.0, 0, GIB).expect("fits");
        assert_eq!(all, 64);
    }

    #[test]
    fn a_budget_below_what_is_in_use_is_a_clear_error() {
        let memory = GpuMemory {
            total: 24 * GIB,
            free: 4 * GIB,
        };
        let Err(error) = gpu_cache_blocks(memory, 0.8, GIB, 1 << 20) else {
            panic!("a budget below what is in use must be refused");
        };
        assert!(
            error.to_string().contains("--gpu-memory-utilization"),
            "{error}"
        );
        for bad in [0.0, 1.5, f64::NAN] {
            assert!(gpu_cache_blocks(memory, bad, 0, 1).is_err(), "{bad}");
        }
    }

    #[test]
    fn blocks_round_down() {
        let memory = GpuMemory {
            total: 1000,
            free: 1000,
        };
        assert_eq!(gpu_cache_blocks(memory, 0.5, 0, 300).ok(), Some(1));
        assert!(gpu_cache_blocks(memory, 0.5, 250, 300).is_err());
    }
}
