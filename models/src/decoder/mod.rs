//! The one decoder: Llama, Mistral, Qwen2, Qwen3, Phi-3 and Gemma are this code with
//! different toggles in [`DecoderConfig`]. One [`Decoder::forward`] call runs a flat batch of
//! tokens from many sequences over a paged KV cache and returns logits only for the rows that
//! asked for them.
//!
//! Two executions of the same layers: the CPU kernels (`cpu.rs`: packed dense or quantized
//! weights, fused attention, the default on CPU) and the portable candle path (`portable.rs`:
//! any device, the reference, and the path for GGUF formats the CPU kernels do not take).

mod cpu;
mod plan;
mod portable;

use crate::batch::{CpuCache, SequenceStep, TensorCache};
use crate::config::DecoderConfig;
use crate::error::{ModelError, Result};
use crate::weights::WeightSource;
use candle_core::{DType, Device, Tensor};
use cpu::CpuModel;
pub use lantern_kernels::cpu::KvDtype;
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

/// A forward pass's layers and the KV cache in the layout they read, side by side: a cache
/// cannot meet the wrong execution, and the engine thread that owns the decoder needs no lock
/// to step it. The cache is `None` until [`Decoder::allocate_cache`].
#[derive(Debug)]
enum Execution {
    Portable {
        model: Box<PortableModel>,
        cache: Option<TensorCache>,
    },
    Cpu {
        model: Box<CpuModel>,
        cache: Option<CpuCache>,
        /// What the cache stores keys and values as (f32 unless set).
        kv_dtype: KvDtype,
    },
}

/// The error of a step taken before any cache was allocated.
fn no_cache() -> ModelError {
    ModelError::Batch("no KV cache: call Decoder::allocate_cache first".into())
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
            KernelPath::Cpu if device.is_cpu() => Execution::Cpu {
                model: Box::new(CpuModel::load(&config, weights, dtype)?),
                cache: None,
                kv_dtype: KvDtype::F32,
            },
            KernelPath::Cpu => {
                return Err(ModelError::Kernels(
                    "the CPU kernels run on the CPU device only: use --kernels portable".into(),
                ))
            }
            KernelPath::Auto | KernelPath::Portable => Execution::Portable {
                model: Box::new(PortableModel::load(&config, weights, dtype, device)?),
                cache: None,
            },
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
            Execution::Portable { .. } => "portable".into(),
            Execution::Cpu { model, .. } => format!("cpu-{}", model.isa().name()),
        }
    }

    /// Dtype of the KV cache entries.
    fn cache_dtype(&self) -> DType {
        match self.execution {
            Execution::Portable { .. } => self.dtype,
            Execution::Cpu { kv_dtype, .. } => match kv_dtype {
                KvDtype::F32 => DType::F32,
                KvDtype::F16 => DType::F16,
                KvDtype::Bf16 => DType::BF16,
            },
        }
    }

    /// What the KV cache stores keys and values as: `float32`, `float16`, `bfloat16` (vLLM's
    /// `cache_dtype` spelling).
    pub fn kv_cache_dtype_name(&self) -> String {
        match self.cache_dtype() {
            DType::F16 => "float16".into(),
            DType::BF16 => "bfloat16".into(),
            DType::F32 => "float32".into(),
            other => format!("{other:?}").to_lowercase(),
        }
    }

    /// Stores the CPU kernels' KV cache as `dtype` from the next [`Self::allocate_cache`]
    /// (half precision: half the memory and the bytes attention reads; values rounded to
    /// nearest even on write). The portable path keeps keys in the weights' dtype: asking it
    /// for another is an error.
    pub fn set_kv_cache_dtype(&mut self, dtype: KvDtype) -> Result<()> {
        let weights_f32 = self.cache_dtype() == DType::F32;
        match &mut self.execution {
            Execution::Cpu { kv_dtype, .. } => {
                *kv_dtype = dtype;
                Ok(())
            }
            Execution::Portable { .. } if weights_f32 && dtype == KvDtype::F32 => Ok(()),
            Execution::Portable { .. } => Err(ModelError::Kernels(format!(
                "a {} KV cache is for the CPU kernels; the portable path keeps keys and values in the weights' dtype ({:?})",
                dtype.name(),
                self.dtype
            ))),
        }
    }

    /// Whether the CPU kernels run the forward pass.
    pub fn runs_cpu_kernels(&self) -> bool {
        matches!(self.execution, Execution::Cpu { .. })
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
    pub fn record_phases(&mut self, on: bool) {
        if let Execution::Cpu { model, .. } = &mut self.execution {
            model.record_phases(on);
        }
    }

    /// Time per phase since recording started: `(phase, total)` pairs and the step count.
    pub fn phase_times(&self) -> Option<(Vec<(&'static str, std::time::Duration)>, u64)> {
        let Execution::Cpu { model, .. } = &self.execution else {
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
            Execution::Portable { .. } => None,
            Execution::Cpu { model, .. } => Some(model.weight_bytes()),
        }
    }

    /// The format each class of weights runs in (`attention`, `mlp`, `head`, `embedding`):
    /// `f32`, `bf16`, or a quantized format (`q4_1`, ...); on the portable path the dtype.
    pub fn weight_formats(&self) -> Vec<(&'static str, String)> {
        match &self.execution {
            Execution::Cpu { model, .. } => model.weight_formats(),
            Execution::Portable { .. } => {
                let dtype = format!("{:?}", self.dtype).to_lowercase();
                vec![("all", dtype)]
            }
        }
    }

    /// Loads a LoRA adapter (read by [`crate::lora::load_adapter`] for this model's config)
    /// for steps to name by `id` ([`SequenceStep::adapter`]); replaces one loaded under it.
    pub fn add_adapter(&mut self, id: u32, adapter: &crate::lora::LoraAdapter) -> Result<()> {
        match &mut self.execution {
            Execution::Portable { model, .. } => model.add_adapter(id, adapter, &self.device),
            Execution::Cpu { model, .. } => {
                model.add_adapter(id, adapter);
                Ok(())
            }
        }
    }

    /// Frees the adapter loaded under `id`; `false` if there was none.
    pub fn remove_adapter(&mut self, id: u32) -> bool {
        match &mut self.execution {
            Execution::Portable { model, .. } => model.remove_adapter(id),
            Execution::Cpu { model, .. } => model.remove_adapter(id),
        }
    }

    pub fn has_adapter(&self, id: u32) -> bool {
        match &self.execution {
            Execution::Portable { model, .. } => model.has_adapter(id),
            Execution::Cpu { model, .. } => model.has_adapter(id),
        }
    }

    /// Bytes the loaded adapters take.
    pub fn adapter_bytes(&self) -> usize {
        match &self.execution {
            Execution::Portable { model, .. } => model.adapter_bytes(),
            Execution::Cpu { model, .. } => model.adapter_bytes(),
        }
    }

    /// Bytes one block takes across all layers.
    pub fn kv_cache_bytes_per_block(&self, block_size: usize) -> usize {
        self.config.num_layers
            * self
                .cache_shape(1, block_size)
                .bytes_per_block(self.cache_dtype())
    }

    /// For an idle engine: frees the buffers steps reuse (they grow to the largest batch seen;
    /// the next step allocates what it needs again) and returns the memory of the CPU cache's
    /// written pages to the OS, keeping the keys and values of the blocks in `keep` (cached
    /// prefixes; the other blocks hold nothing). The portable path's tensors stay as they are.
    pub fn release_idle_memory(&mut self, keep: &[u32]) {
        if let Execution::Cpu { model, cache, .. } = &mut self.execution {
            model.release_workspace();
            if let Some(cache) = cache {
                cache.release_idle_memory(keep);
            }
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
        matches!(self.execution, Execution::Portable { .. })
            && lantern_kernels::flash_attention_available(&self.device, needs)
    }

    /// Replaces the KV cache with a zeroed one of `num_blocks` blocks of `block_size` tokens,
    /// in the layout this decoder's forward pass reads (the old one is freed first).
    pub fn allocate_cache(&mut self, num_blocks: usize, block_size: usize) -> Result<()> {
        let shape = self.cache_shape(num_blocks, block_size);
        let dtype = self.cache_dtype();
        match &mut self.execution {
            Execution::Portable { model, cache } => {
                *cache = None; // freed before the new one is allocated
                let attention = model.attention_kernels(&self.config, &self.device, block_size);
                *cache = Some(TensorCache::zeros(
                    &self.config,
                    shape,
                    dtype,
                    &self.device,
                    attention,
                )?);
            }
            Execution::Cpu {
                cache, kv_dtype, ..
            } => {
                *cache = None;
                *cache = Some(CpuCache::new(&self.config, shape, *kv_dtype)?);
            }
        }
        Ok(())
    }

    /// Frees the KV cache (steps fail until the next [`Self::allocate_cache`]).
    pub fn free_cache(&mut self) {
        match &mut self.execution {
            Execution::Portable { cache, .. } => *cache = None,
            Execution::Cpu { cache, .. } => *cache = None,
        }
    }

    /// The allocated cache's shape, if any.
    pub fn kv_cache_shape(&self) -> Option<KvCacheShape> {
        match &self.execution {
            Execution::Portable { cache, .. } => cache.as_ref().map(|c| c.shape),
            Execution::Cpu { cache, .. } => cache.as_ref().map(|c| c.shape),
        }
    }

    /// The attention implementation reading the cache: `flash-attn`, `portable` or `cpu`
    /// (`none` before a cache is allocated).
    pub fn attention_name(&self) -> &'static str {
        match &self.execution {
            Execution::Portable { cache, .. } => {
                cache.as_ref().map_or("none", |c| c.attention.name())
            }
            Execution::Cpu { .. } => "cpu",
        }
    }

    /// Waits for the device to finish the work queued so far (a no-op on the CPU). The
    /// model is loaded on one thread and run on the engine thread: synchronising after load
    /// and warm-up hands the engine a device with nothing in flight.
    pub fn synchronize(&self) -> Result<()> {
        Ok(self.device.synchronize()?)
    }

    /// Runs every sequence's new tokens through the model, writing their keys and values into
    /// the cache. Returns f32 logits `(rows, vocab)`: for each sequence in order, the rows its
    /// [`crate::LogitsWanted`] asks for.
    pub fn forward(&mut self, steps: &[SequenceStep]) -> Result<Tensor> {
        self.forward_with_uploads(steps, &lantern_kernels::DirectUploads)
    }

    /// [`Self::forward`], with every host-to-device copy of the step made through `uploads`.
    pub fn forward_with_uploads(
        &mut self,
        steps: &[SequenceStep],
        uploads: &dyn lantern_kernels::Uploads,
    ) -> Result<Tensor> {
        if let Some(id) = steps
            .iter()
            .filter_map(|s| s.adapter)
            .find(|&id| !self.has_adapter(id))
        {
            return Err(ModelError::Batch(format!(
                "a step names adapter {id}, which is not loaded"
            )));
        }
        match &mut self.execution {
            Execution::Portable { model, cache } => {
                let cache = cache.as_ref().ok_or_else(no_cache)?;
                model.forward(&self.config, steps, cache, &self.device, uploads)
            }
            Execution::Cpu { model, cache, .. } => {
                let cache = cache.as_mut().ok_or_else(no_cache)?;
                model.forward(&self.config, steps, cache)
            }
        }
    }
}
