//! The one decoder: Llama, Mistral, Qwen2, Qwen3, Phi-3 and Gemma are this code with
//! different toggles in [`DecoderConfig`]. One [`Decoder::forward`] call runs a flat batch of
//! tokens from many sequences over a paged KV cache and returns logits only for the rows that
//! asked for them.
//!
//! Two executions of the same layers: the CPU kernels (`cpu.rs`: packed dense or quantized
//! weights, fused attention, the default on CPU) and the portable candle path (`portable.rs`:
//! any device, the reference, and the path for GGUF formats the CPU kernels do not take).

mod cpu;
mod portable;

use crate::batch::{CacheStorage, KvCache, SequenceStep};
use crate::config::DecoderConfig;
use crate::error::{ModelError, Result};
use crate::weights::WeightSource;
use candle_core::{DType, Device, Tensor};
use cpu::CpuModel;
use lantern_kernels::KvCacheShape;
use portable::PortableModel;

/// Which execution runs the decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KernelPath {
    /// The CPU kernels on CPU when the weights are dense or in a quantized format they take
    /// (`QuantFormat`); the portable path otherwise.
    #[default]
    Auto,
    /// The CPU kernels (CPU device; dense weights, or GGUF/at-load quantized blocks in the
    /// formats of `QuantFormat`).
    Cpu,
    /// candle tensor ops: any device, any weights; the reference.
    Portable,
}

impl KernelPath {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "auto" => Some(Self::Auto),
            "cpu" => Some(Self::Cpu),
            "portable" => Some(Self::Portable),
            _ => None,
        }
    }
}

#[derive(Debug)]
enum Execution {
    Portable(PortableModel),
    Cpu(Box<CpuModel>),
}

#[derive(Debug)]
pub struct Decoder {
    config: DecoderConfig,
    execution: Execution,
    dtype: DType,
    device: Device,
}

impl Decoder {
    /// Builds the decoder from `weights`, checking every tensor's shape against `config`.
    /// `path` must not be [`KernelPath::Auto`]: the loader resolves it (it knows whether the
    /// weights are dense).
    pub fn load(
        config: DecoderConfig,
        weights: &dyn WeightSource,
        dtype: DType,
        device: &Device,
        path: KernelPath,
    ) -> Result<Self> {
        let fused;
        let weights: &dyn WeightSource = if config.fused_projections {
            fused = crate::fused::FusedParts::new(weights, &config);
            &fused
        } else {
            weights
        };
        let execution = match path {
            KernelPath::Cpu if device.is_cpu() => {
                Execution::Cpu(Box::new(CpuModel::load(&config, weights, dtype)?))
            }
            KernelPath::Cpu => {
                return Err(ModelError::Kernels(
                    "the CPU kernels run on the CPU device only: use --kernels portable".into(),
                ))
            }
            KernelPath::Auto | KernelPath::Portable => {
                Execution::Portable(PortableModel::load(&config, weights, dtype, device)?)
            }
        };
        let decoder = Self {
            config,
            execution,
            dtype,
            device: device.clone(),
        };
        tracing::info!(
            family = decoder.config.architecture.name(),
            toggles = ?decoder.config.toggles(),
            kernels = decoder.kernels_name(),
            "decoder loaded"
        );
        Ok(decoder)
    }

    pub fn config(&self) -> &DecoderConfig {
        &self.config
    }

    /// The dtype weights were loaded in.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// What runs the forward pass: `cpu-avx512`, `cpu-avx2`, `cpu-scalar` or `portable`.
    pub fn kernels_name(&self) -> String {
        match &self.execution {
            Execution::Portable(_) => "portable".into(),
            Execution::Cpu(model) => format!("cpu-{}", model.isa().name()),
        }
    }

    /// Dtype of the KV cache entries.
    fn cache_dtype(&self) -> DType {
        match self.execution {
            Execution::Portable(_) => self.dtype,
            Execution::Cpu(_) => DType::F32,
        }
    }

    fn cache_shape(&self, num_blocks: usize, block_size: usize) -> KvCacheShape {
        KvCacheShape {
            num_blocks,
            block_size,
            num_kv_heads: self.config.num_kv_heads,
            head_dim: self.config.head_dim,
        }
    }

    /// Starts (from zero) or stops recording time per phase of the CPU forward pass (a no-op
    /// on the portable path). For benchmarks; costs two clock reads per phase.
    pub fn record_phases(&self, on: bool) {
        if let Execution::Cpu(model) = &self.execution {
            model.record_phases(on);
        }
    }

    /// Time per phase since recording started: `(phase, total)` pairs and the step count.
    pub fn phase_times(&self) -> Option<(Vec<(&'static str, std::time::Duration)>, u64)> {
        let Execution::Cpu(model) = &self.execution else {
            return None;
        };
        let times = model.phase_times()?;
        Some((
            cpu::PHASES.iter().copied().zip(times.totals).collect(),
            times.steps,
        ))
    }

    /// Bytes of weights the CPU kernels read per step (`None` on the portable path).
    pub fn weight_bytes(&self) -> Option<usize> {
        match &self.execution {
            Execution::Portable(_) => None,
            Execution::Cpu(model) => Some(model.weight_bytes()),
        }
    }

    /// The format each class of weights runs in (`attention`, `mlp`, `head`, `embedding`):
    /// `f32`, `bf16`, or a quantized format (`q4_1`, ...); on the portable path the dtype.
    pub fn weight_formats(&self) -> Vec<(&'static str, String)> {
        match &self.execution {
            Execution::Cpu(model) => model.weight_formats(),
            Execution::Portable(_) => {
                let dtype = format!("{:?}", self.dtype).to_lowercase();
                vec![("all", dtype)]
            }
        }
    }

    /// Bytes one block takes across all layers.
    pub fn kv_cache_bytes_per_block(&self, block_size: usize) -> usize {
        self.config.num_layers
            * self
                .cache_shape(1, block_size)
                .bytes_per_block(self.cache_dtype())
    }

    /// Frees the buffers steps reuse (they grow to the largest batch seen); the next step
    /// allocates what it needs again. For an idle engine.
    pub fn release_idle_memory(&self) {
        if let Execution::Cpu(model) = &self.execution {
            model.release_workspace();
        }
    }

    /// Whether a cache of blocks of `block_size` tokens would be read by FlashAttention
    /// (which needs a multiple of 32): the engine picks its block size by it.
    pub fn flash_attention_with(&self, block_size: usize) -> bool {
        let needs = lantern_kernels::AttentionNeeds {
            dtype: self.dtype,
            head_dim: self.config.head_dim,
            block_size,
        };
        matches!(self.execution, Execution::Portable(_))
            && lantern_kernels::flash_attention_available(&self.device, needs)
    }

    /// A zeroed KV cache in the layout this decoder's forward pass reads.
    pub fn new_cache(&self, num_blocks: usize, block_size: usize) -> Result<KvCache> {
        let shape = self.cache_shape(num_blocks, block_size);
        match &self.execution {
            Execution::Portable(model) => {
                let attention = model.attention_kernels(&self.config, &self.device, block_size);
                KvCache::tensors(
                    &self.config,
                    shape,
                    self.cache_dtype(),
                    &self.device,
                    attention,
                )
            }
            Execution::Cpu(_) => KvCache::cpu(&self.config, shape),
        }
    }

    /// Waits for the device to finish the work queued so far (a no-op on the CPU). The
    /// model is loaded on one thread and run on the engine thread: synchronising after load
    /// and warm-up hands the engine a device with nothing in flight.
    pub fn synchronize(&self) -> Result<()> {
        Ok(self.device.synchronize()?)
    }

    /// Runs every sequence's new tokens through the model, writing their keys and values into
    /// `cache`. Returns f32 logits `(rows, vocab)`: for each sequence in order, the rows its
    /// [`crate::LogitsWanted`] asks for.
    pub fn forward(&self, steps: &[SequenceStep], cache: &KvCache) -> Result<Tensor> {
        self.forward_with_uploads(steps, cache, &lantern_kernels::DirectUploads)
    }

    /// [`Self::forward`], with every host-to-device copy of the step made through `uploads`.
    pub fn forward_with_uploads(
        &self,
        steps: &[SequenceStep],
        cache: &KvCache,
        uploads: &dyn lantern_kernels::Uploads,
    ) -> Result<Tensor> {
        match (&self.execution, &cache.storage) {
            (Execution::Portable(model), CacheStorage::Tensors { layers, attention }) => model
                .forward(
                    &self.config,
                    steps,
                    &cache.shape,
                    layers,
                    attention.as_ref(),
                    &self.device,
                    uploads,
                ),
            (Execution::Cpu(model), CacheStorage::Cpu(layers)) => {
                model.forward(&self.config, steps, cache, layers)
            }
            _ => Err(ModelError::Batch(
                "the KV cache was made for another kernel path: use Decoder::new_cache".into(),
            )),
        }
    }
}
