//! Paged attention and KV-cache writes behind one interface, [`PagedAttention`].
//!
//! The KV cache of one layer is a pool of fixed-size blocks: `key` and `value` each hold
//! `num_blocks * block_size` slots of `(num_kv_heads, head_dim)`. A sequence owns a list of
//! blocks (its block table); the token at position `p` lives in slot
//! `block_table[p / block_size] * block_size + p % block_size`.
//!
//! [`Portable`] implements both operations with candle tensor ops, so it runs on every device
//! candle supports (CUDA included). It is the reference that faster device kernels are checked
//! against: a CUDA implementation goes beside it under the `cuda` feature, behind the same trait.

mod portable;

pub use portable::Portable;

use candle_core::{DType, Device, Result, Tensor};

/// The K/V block pool of one layer.
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

/// Where one sequence's queries sit in the flat batch and what it may attend to.
#[derive(Debug, Clone)]
pub struct SequenceAttention<'a> {
    /// Index of the sequence's first query row in the flat batch.
    pub query_offset: usize,
    /// Number of query rows (tokens this step): the whole prompt, a chunk, or 1 when decoding.
    pub query_len: usize,
    /// Tokens already in the cache before this step; query `i` is at position `context_before + i`.
    pub context_before: usize,
    /// Cache slot of every position `0..context_before + query_len`, in position order.
    pub slots: &'a [u32],
}

/// Attention options shared by every sequence of a call.
#[derive(Debug, Clone, Copy)]
pub struct AttentionParams {
    pub scale: f64,
    /// A query at position `p` sees keys at positions `> p - window` only (Mistral, Qwen2).
    pub sliding_window: Option<usize>,
}

/// The two cache operations a decoder layer needs. Implementations must agree with [`Portable`].
pub trait PagedAttention: Send + Sync + std::fmt::Debug {
    /// Writes rows of `key`/`value` (`(n, num_kv_heads, head_dim)`) into the slots `slot_mapping` (`n` u32 ids).
    fn write_kv(
        &self,
        cache: &LayerKvCache,
        key: &Tensor,
        value: &Tensor,
        slot_mapping: &Tensor,
    ) -> Result<()>;

    /// Causal attention of `query` (`(n, num_heads, head_dim)`, the flat batch) over the
    /// cached keys and values of each sequence. Returns `(n, num_heads, head_dim)`.
    fn attention(
        &self,
        query: &Tensor,
        cache: &LayerKvCache,
        sequences: &[SequenceAttention<'_>],
        params: AttentionParams,
    ) -> Result<Tensor>;
}

/// The best implementation for `device`. Today that is [`Portable`] everywhere.
pub fn for_device(_device: &Device) -> Box<dyn PagedAttention> {
    Box::new(Portable)
}
