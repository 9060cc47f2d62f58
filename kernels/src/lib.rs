//! Lantern's compute layer.
//!
//! - [`cpu`]: the CPU kernels: packed batch-invariant dense products with fused epilogues,
//!   fused paged attention over block tables, RMS norm and rotary embeddings; AVX-512, AVX2+FMA
//!   and a scalar reference, chosen at run time. Numerics contract: `NUMERICS.md`.
//! - [`PagedAttention`] and [`Portable`]: paged attention with candle tensor ops, which runs on
//!   every device candle supports (CUDA included). It is the reference the CPU kernels are
//!   checked against and the path for devices without kernels of their own.
//!
//! Each implementation owns its cache layout. The portable one keeps a layer's keys and values
//! as `(num_blocks * block_size, num_kv_heads, head_dim)` tensors (slot-major, what
//! FlashAttention's paged mode reads): the token at position `p` of a sequence lives in slot
//! `block_table[p / block_size] * block_size + p % block_size`. The CPU one keeps
//! `[kv_head][block][slot][head_dim]` (see [`cpu::KvBlocks`]).

pub mod attention_metadata;
pub mod cpu;
pub mod device_choice;
#[cfg(feature = "flash-attn")]
mod flash;
mod portable;

pub use attention_metadata::{CountingUploads, DirectUploads, StepMetadata, Uploads};
pub use portable::Portable;

use candle_core::{DType, Device, Result, Tensor};

/// The K/V block pool of one layer, for the portable implementation.
#[derive(Debug, Clone)]
pub struct LayerKvCache {
    /// `(num_blocks * block_size, num_kv_heads, head_dim)`.
    pub key: Tensor,
    /// Same shape as `key`.
    pub value: Tensor,
    pub block_size: usize,
}

/// Shape of a layer's block pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvCacheShape {
    pub num_blocks: usize,
    pub block_size: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

impl KvCacheShape {
    /// Bytes one block takes across K and V of one layer.
    pub fn bytes_per_block(&self, dtype: DType) -> usize {
        2 * self.block_size * self.num_kv_heads * self.head_dim * dtype.size_in_bytes()
    }
}

impl LayerKvCache {
    pub fn zeros(shape: KvCacheShape, dtype: DType, device: &Device) -> Result<Self> {
        let dims = (
            shape.num_blocks * shape.block_size,
            shape.num_kv_heads,
            shape.head_dim,
        );
        Ok(Self {
            key: Tensor::zeros(dims, dtype, device)?,
            value: Tensor::zeros(dims, dtype, device)?,
            block_size: shape.block_size,
        })
    }

    pub fn num_slots(&self) -> usize {
        self.key.dims()[0]
    }
}

/// Where one sequence's queries sit in the flat batch and which blocks hold its context.
#[derive(Debug, Clone, Copy)]
pub struct SequenceAttention<'a> {
    /// Index of the sequence's first query row in the flat batch.
    pub query_offset: usize,
    /// Number of query rows (tokens this step): the whole prompt, a chunk, or 1 when decoding.
    pub query_len: usize,
    /// Tokens already in the cache before this step; query `i` is at position `context_before + i`.
    pub context_before: usize,
    /// Cache blocks of the sequence in position order, covering `context_before + query_len`.
    pub block_table: &'a [u32],
}

/// Attention options shared by every sequence of a call.
#[derive(Debug, Clone, Copy)]
pub struct AttentionParams {
    pub scale: f64,
    /// A query at position `p` sees keys at positions `> p - window` only (Mistral, Qwen2).
    pub sliding_window: Option<usize>,
    /// Scores (after `scale`) become `cap * tanh(score / cap)` before the softmax (Gemma 2).
    pub softcap: Option<f64>,
}

/// Paged attention over tensors. Implementations must agree with [`Portable`].
pub trait PagedAttention: Send + Sync + std::fmt::Debug {
    /// For logs and `/info`.
    fn name(&self) -> &'static str;

    /// Checks the step's sequences against the cache and uploads what every layer's
    /// [`Self::attend`] reads: once per forward call.
    fn prepare(
        &self,
        sequences: &[SequenceAttention<'_>],
        shape: &KvCacheShape,
        device: &Device,
        uploads: &dyn Uploads,
    ) -> Result<StepMetadata>;

    /// Writes this step's `key`/`value` rows (`(n, num_kv_heads, head_dim)`, the flat batch)
    /// into each sequence's blocks, then runs causal attention of `query`
    /// (`(n, num_heads, head_dim)`) over every sequence's cached context. Returns
    /// `(n, num_heads, head_dim)`.
    fn attend(
        &self,
        query: &Tensor,
        key: &Tensor,
        value: &Tensor,
        cache: &LayerKvCache,
        step: &StepMetadata,
        params: AttentionParams,
    ) -> Result<Tensor>;

    /// [`Self::prepare`] then [`Self::attend`], for one layer (tests, benchmarks).
    fn write_and_attend(
        &self,
        query: &Tensor,
        key: &Tensor,
        value: &Tensor,
        cache: &LayerKvCache,
        sequences: &[SequenceAttention<'_>],
        params: AttentionParams,
    ) -> Result<Tensor> {
        let shape = KvCacheShape {
            num_blocks: cache.num_slots() / cache.block_size.max(1),
            block_size: cache.block_size,
            num_kv_heads: cache.key.dim(1)?,
            head_dim: cache.key.dim(2)?,
        };
        let step = self.prepare(sequences, &shape, query.device(), &DirectUploads)?;
        self.attend(query, key, value, cache, &step, params)
    }
}

/// `(rows, num_kv_heads, head_dim)` u32 cache-write index for `rows` of `like`'s shape going
/// to `slots` (tests and benchmarks that fill a cache directly).
pub fn slot_index(slots: &[u32], like: &Tensor) -> Result<Tensor> {
    let (rows, heads, dim) = like.dims3()?;
    Tensor::from_slice(slots, (rows, 1, 1), like.device())?
        .broadcast_as((rows, heads, dim))?
        .contiguous()
}

/// What the model's attention layers need to know to pick an implementation.
#[derive(Debug, Clone, Copy)]
pub struct AttentionNeeds {
    pub dtype: DType,
    pub head_dim: usize,
    pub block_size: usize,
}

/// The tensor implementation for `device`: FlashAttention (paged, one launch per layer for
/// the whole batch) on CUDA GPUs of compute capability 8.0 and up when built with the
/// `flash-attn` feature and the model fits its limits (f16/bf16, head size a multiple of 8 up
/// to 256, blocks a multiple of 32 tokens); [`Portable`] otherwise. The CPU forward pass calls
/// [`cpu`] directly instead of going through tensors.
pub fn for_device(device: &Device, needs: AttentionNeeds) -> Box<dyn PagedAttention> {
    #[cfg(feature = "flash-attn")]
    if flash::FlashAttention::supports(device, needs) {
        return Box::new(flash::FlashAttention);
    }
    let _ = (device, needs);
    Box::new(Portable)
}

/// Whether [`for_device`] would pick FlashAttention with blocks of `block_size` tokens.
pub fn flash_attention_available(device: &Device, needs: AttentionNeeds) -> bool {
    #[cfg(feature = "flash-attn")]
    {
        flash::FlashAttention::supports(device, needs)
    }
    #[cfg(not(feature = "flash-attn"))]
    {
        let _ = (device, needs);
        false
    }
}
