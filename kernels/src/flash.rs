//! Paged attention on CUDA with FlashAttention 2 (`candle-flash-attn`): the whole flat batch
//! (prefill, prefill chunks and decode rows mixed) in one launch per layer, reading keys and
//! values straight from the block pool through the block tables.
//!
//! The pool is the portable layout `(num_blocks * block_size, kv_heads, head_dim)`, which is
//! FlashAttention's paged `(num_blocks, block_size, kv_heads, head_dim)` reshaped (no copy).
//! Causal masking is bottom-right aligned (query `i` of a sequence with `q` new rows and `k`
//! keys sees keys up to `k - q + i`), which is our "new tokens after the cached context".

use crate::attention_metadata::{self, StepMetadata, Uploads, Wanted};
use crate::{AttentionNeeds, AttentionParams, KvCacheShape, LayerKvCache, PagedAttention};
use crate::{Portable, SequenceAttention};
use candle_core::{bail, DType, Device, Result, Tensor};

#[derive(Debug, Clone, Copy, Default)]
pub struct FlashAttention;

impl FlashAttention {
    /// FlashAttention 2's limits: Ampere or newer, half-precision, head sizes a multiple of 8
    /// up to 256, blocks a multiple of 32 tokens. With a block table candle-flash-attn runs
    /// its split-KV kernels for head sizes up to 64, 128 and 256 only, and those are the only
    /// FlashAttention kernels our CUDA builds compile (docker/nvcc-gencode.sh): the others
    /// abort, so every call here must pass a block table and stay within 256.
    pub fn supports(device: &Device, needs: AttentionNeeds) -> bool {
        let capable = crate::device_choice::compute_capability(device).is_some_and(|c| c >= (8, 0));
        capable
            && matches!(needs.dtype, DType::BF16 | DType::F16)
            && needs.head_dim % 8 == 0
            && needs.head_dim <= 256
            && needs.block_size % 32 == 0
    }
}

impl PagedAttention for FlashAttention {
    fn name(&self) -> &'static str {
        "flash-attn"
    }

    fn prepare(
        &self,
        sequences: &[SequenceAttention<'_>],
        shape: &KvCacheShape,
        device: &Device,
        uploads: &dyn Uploads,
    ) -> Result<StepMetadata> {
        let wanted = Wanted {
            context_slots: false,
            flash: true,
        };
        attention_metadata::build(sequences, shape, wanted, device, uploads)
    }

    fn attend(
        &self,
        query: &Tensor,
        key: &Tensor,
        value: &Tensor,
        cache: &LayerKvCache,
        step: &StepMetadata,
        params: AttentionParams,
    ) -> Result<Tensor> {
        let Some(layout) = &step.flash else {
            bail!("the step was prepared for another attention implementation")
        };
        Portable.write_kv(cache, key, value, &step.write_slots)?;
        let (slots, kv_heads, head_dim) = cache.key.dims3()?;
        let block_size = cache.block_size;
        let paged = (slots / block_size, block_size, kv_heads, head_dim);
        // A window of `w` keys is the query's own position and the `w - 1` before it.
        let window_left = params.sliding_window.map(|w| w.saturating_sub(1));
        candle_flash_attn::flash_attn_varlen_paged_windowed(
            &query.contiguous()?,
            &cache.key.reshape(paged)?,
            &cache.value.reshape(paged)?,
            &layout.cumulative_query_lens,
            &layout.cumulative_context_lens,
            &layout.block_table,
            None,
            layout.max_query_len,
            layout.max_context_len,
            params.scale as f32,
            window_left,
            Some(0),
            block_size,
            params.softcap.map(|c| c as f32),
        )
    }
}
