//! The portable paged attention: candle tensor ops only, one sequence at a time.
//!
//! Each sequence gathers its keys and values out of the block pool (`index_select` on its
//! slots, uploaded once per step for the whole batch), then runs plain masked attention. The
//! cost is a copy of the sequence's context per layer per step: fine as a reference and on
//! CPU, where the matmuls dominate. Every sequence is computed the same way whatever else is
//! in the batch, which keeps its output independent of its batch-mates.

use crate::attention_metadata::{self, SequenceRows, StepMetadata, Uploads, Wanted};
use crate::{AttentionParams, KvCacheShape, LayerKvCache, PagedAttention, SequenceAttention};
use candle_core::{bail, DType, Device, Result, Tensor};

#[derive(Debug, Clone, Copy, Default)]
pub struct Portable;

impl Portable {
    /// Writes rows of `key`/`value` (`(n, num_kv_heads, head_dim)`) into the slots
    /// `slot_index` (`(n, num_kv_heads, head_dim)` u32, each row's slot repeated): one
    /// scatter each.
    pub fn write_kv(
        &self,
        cache: &LayerKvCache,
        key: &Tensor,
        value: &Tensor,
        slot_index: &Tensor,
    ) -> Result<()> {
        if slot_index.dims() != key.dims() {
            bail!(
                "slot index has shape {:?}, expected {:?}",
                slot_index.dims(),
                key.dims()
            )
        }
        if key.dim(0)? == 0 {
            return Ok(());
        }
        cache.key.scatter_set(slot_index, &key.contiguous()?, 0)?;
        cache
            .value
            .scatter_set(slot_index, &value.contiguous()?, 0)?;
        Ok(())
    }
}

impl PagedAttention for Portable {
    fn name(&self) -> &'static str {
        "portable"
    }

    fn prepare(
        &self,
        sequences: &[SequenceAttention<'_>],
        shape: &KvCacheShape,
        device: &Device,
        uploads: &dyn Uploads,
    ) -> Result<StepMetadata> {
        let wanted = Wanted {
            context_slots: true,
            flash: false,
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
        let (rows, _, _) = query.dims3()?;
        if rows != step.rows {
            bail!("the step has {} rows, the query {rows}", step.rows)
        }
        let Some(slots) = &step.context_slots else {
            bail!("the step was prepared for another attention implementation")
        };
        self.write_kv(cache, key, value, &step.write_slots)?;
        let outputs = step
            .sequences
            .iter()
            .map(|seq| attend_one(query, cache, seq, slots, params))
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&outputs, 0)
    }
}

fn attend_one(
    query: &Tensor,
    cache: &LayerKvCache,
    seq: &SequenceRows,
    context_slots: &Tensor,
    params: AttentionParams,
) -> Result<Tensor> {
    let (_, num_heads, head_dim) = query.dims3()?;
    let num_kv_heads = cache.key.dim(1)?;
    let group = num_heads / num_kv_heads;
    let context = seq.context();
    let slots = context_slots.narrow(0, seq.slots_offset, context)?;
    // (kv_heads, context, head_dim): the sequence's keys and values, gathered once per call.
    let gather = |cache: &Tensor| -> Result<Tensor> {
        cache.index_select(&slots, 0)?.transpose(0, 1)?.contiguous()
    };
    let key = gather(&cache.key)?;
    let value = gather(&cache.value)?;
    // (kv_heads, query_len, group, head_dim): query heads that share a KV head side by side.
    let queries = query
        .narrow(0, seq.query_offset, seq.query_len)?
        .reshape((seq.query_len, num_kv_heads, group, head_dim))?
        .transpose(0, 1)?
        .contiguous()?;
    // One query position at a time, over exactly the keys it may see: a row at position `p`
    // is then computed by the same products (`group x head_dim` by `head_dim x visible` per KV
    // head) whether it arrives in a whole prompt, a chunk, a decode step or a recomputation
    // after preemption, and whatever shares its batch. No mask is needed.
    let mut rows = Vec::with_capacity(seq.query_len);
    for i in 0..seq.query_len {
        let position = seq.context_before + i;
        let first = params
            .sliding_window
            .map_or(0, |window| (position + 1).saturating_sub(window));
        let visible = position + 1 - first;
        let q = queries.narrow(1, i, 1)?.squeeze(1)?; // (kv_heads, group, head_dim)
        let k = key.narrow(1, first, visible)?;
        let v = value.narrow(1, first, visible)?;
        let mut scores = (q.matmul(&k.t()?)? * params.scale)?.to_dtype(DType::F32)?;
        if let Some(cap) = params.softcap {
            scores = ((scores / cap)?.tanh()? * cap)?;
        }
        let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(v.dtype())?;
        rows.push(probs.matmul(&v)?.reshape((1, num_heads, head_dim))?);
    }
    Tensor::cat(&rows, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention_metadata::slots_of;
    use crate::{slot_index, KvCacheShape, LayerKvCache};
    use candle_core::{Device, IndexOp};

    fn shape(num_blocks: usize, block_size: usize) -> KvCacheShape {
        KvCacheShape {
            num_blocks,
            block_size,
            num_kv_heads: 2,
            head_dim: 4,
        }
    }

    #[test]
    fn written_rows_land_in_their_slots_and_nowhere_else() -> Result<()> {
        let device = Device::Cpu;
        let cache = LayerKvCache::zeros(shape(4, 2), DType::F32, &device)?;
        let key = Tensor::arange(1f32, 17., &device)?.reshape((2, 2, 4))?;
        let value = key.neg()?;
        let slots = slot_index(&[5, 2], &key)?;
        Portable.write_kv(&cache, &key, &value, &slots)?;
        assert_eq!(
            cache.key.i(5)?.to_vec2::<f32>()?,
            key.i(0)?.to_vec2::<f32>()?
        );
        assert_eq!(
            cache.value.i(2)?.to_vec2::<f32>()?,
            value.i(1)?.to_vec2::<f32>()?
        );
        let total: f32 = cache.key.abs()?.sum_all()?.to_scalar()?;
        let written: f32 = key.abs()?.sum_all()?.to_scalar()?;
        assert_eq!(total, written);
        Ok(())
    }

    /// Plain attention with a contiguous cache is the oracle; scattering the same context over
    /// shuffled blocks must not change the result.
    #[test]
    fn attention_reads_through_block_tables() -> Result<()> {
        let device = Device::Cpu;
        let context = 5;
        let key = Tensor::randn(0f32, 1., (context, 2, 4), &device)?;
        let value = Tensor::randn(0f32, 1., (context, 2, 4), &device)?;
        let query = Tensor::randn(0f32, 1., (2, 4, 4), &device)?; // 2 new tokens, 4 heads
        let params = AttentionParams {
            scale: 0.5,
            sliding_window: None,
            softcap: None,
        };
        let run = |block_size: usize, block_table: &[u32]| -> Result<Tensor> {
            let cache = LayerKvCache::zeros(shape(8, block_size), DType::F32, &device)?;
            // The first 3 tokens were cached by earlier steps; this step brings 2.
            let earlier = slots_of(block_table, block_size, 3, cache.num_slots())?;
            let earlier_key = key.narrow(0, 0, 3)?;
            let earlier = slot_index(&earlier, &earlier_key)?;
            Portable.write_kv(&cache, &earlier_key, &value.narrow(0, 0, 3)?, &earlier)?;
            let seq = SequenceAttention {
                query_offset: 0,
                query_len: 2,
                context_before: 3,
                block_table,
            };
            Portable.write_and_attend(
                &query,
                &key.narrow(0, 3, 2)?,
                &value.narrow(0, 3, 2)?,
                &cache,
                &[seq],
                params,
            )
        };
        let contiguous = run(8, &[0])?;
        let shuffled = run(2, &[6, 1, 4])?;
        let diff: f32 = (contiguous - shuffled)?.abs()?.max_all()?.to_scalar()?;
        assert!(diff < 1e-6, "diff {diff}");
        Ok(())
    }

    /// A query sees neither later keys nor keys beyond the window: changing them changes nothing.
    #[test]
    fn queries_ignore_later_keys_and_keys_outside_the_window() -> Result<()> {
        let device = Device::Cpu;
        let query = Tensor::randn(0f32, 1., (6, 4, 4), &device)?;
        let run = |key: &Tensor, window: Option<usize>| -> Result<Vec<Vec<f32>>> {
            let cache = LayerKvCache::zeros(shape(1, 8), DType::F32, &device)?;
            let seq = SequenceAttention {
                query_offset: 0,
                query_len: 6,
                context_before: 0,
                block_table: &[0],
            };
            let params = AttentionParams {
                scale: 0.5,
                sliding_window: window,
                softcap: None,
            };
            Portable
                .write_and_attend(&query, key, key, &cache, &[seq], params)?
                .flatten_from(1)?
                .to_vec2()
        };
        let key = Tensor::randn(0f32, 1., (6, 2, 4), &device)?;
        // Change key/value 5: rows 0..=4 must not move.
        let changed_last = key.slice_assign(
            &[5..6, 0..2, 0..4],
            &Tensor::ones((1, 2, 4), DType::F32, &device)?,
        )?;
        assert_eq!(run(&key, None)?[..5], run(&changed_last, None)?[..5]);
        // With a window of 2, row 5 sees keys 4 and 5 only: changing key 0..=3 must not move it.
        let changed_first = key.slice_assign(
            &[0..4, 0..2, 0..4],
            &Tensor::ones((4, 2, 4), DType::F32, &device)?,
        )?;
        assert_eq!(run(&key, Some(2))?[5], run(&changed_first, Some(2))?[5]);
        assert_ne!(run(&key, None)?[5], run(&changed_first, None)?[5]);
        Ok(())
    }
}
