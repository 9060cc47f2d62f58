//! The portable paged attention: candle tensor ops only, one sequence at a time.
//!
//! Each sequence gathers its keys and values out of the block pool (`index_select` on its
//! slots), then runs plain masked attention. The cost is a copy of the sequence's context per
//! layer per step: fine as a reference and on CPU, where the matmuls dominate.
//! Every sequence is computed the same way whatever else is in the batch, which keeps its
//! output independent of its batch-mates.

use crate::{AttentionParams, LayerKvCache, PagedAttention, SequenceAttention};
use candle_core::{bail, DType, Result, Tensor};

#[derive(Debug, Clone, Copy, Default)]
pub struct Portable;

impl Portable {
    /// Writes rows of `key`/`value` (`(n, num_kv_heads, head_dim)`) into the slots `slot_mapping` (`n` u32 ids).
    pub fn write_kv(
        &self,
        cache: &LayerKvCache,
        key: &Tensor,
        value: &Tensor,
        slot_mapping: &Tensor,
    ) -> Result<()> {
        let rows = key.dim(0)?;
        if slot_mapping.dims() != [rows] {
            bail!(
                "slot mapping has shape {:?}, expected [{rows}]",
                slot_mapping.dims()
            )
        }
        if rows == 0 {
            return Ok(());
        }
        let indexes = slot_mapping
            .reshape((rows, 1, 1))?
            .broadcast_as(key.shape())?
            .contiguous()?;
        cache.key.scatter_set(&indexes, &key.contiguous()?, 0)?;
        cache.value.scatter_set(&indexes, &value.contiguous()?, 0)?;
        Ok(())
    }
}

/// Slot of every position `0..context` of a sequence.
pub(crate) fn slots_of(
    block_table: &[u32],
    block_size: usize,
    context: usize,
    num_slots: usize,
) -> Result<Vec<u32>> {
    (0..context)
        .map(|p| {
            let Some(&block) = block_table.get(p / block_size) else {
                bail!(
                    "block table of {} blocks cannot hold {context} tokens",
                    block_table.len()
                )
            };
            let slot = block as usize * block_size + p % block_size;
            if slot >= num_slots {
                bail!("block {block} is outside the cache")
            }
            Ok(slot as u32)
        })
        .collect()
}

impl PagedAttention for Portable {
    fn write_and_attend(
        &self,
        query: &Tensor,
        key: &Tensor,
        value: &Tensor,
        cache: &LayerKvCache,
        sequences: &[SequenceAttention<'_>],
        params: AttentionParams,
    ) -> Result<Tensor> {
        let (rows, _, _) = query.dims3()?;
        let mut slots = Vec::with_capacity(sequences.len());
        let mut new_slots = Vec::with_capacity(rows);
        let mut next_row = 0;
        for seq in sequences {
            if seq.query_offset != next_row {
                bail!(
                    "sequences must cover the batch in order: expected offset {next_row}, got {}",
                    seq.query_offset
                )
            }
            next_row += seq.query_len;
            let context = seq.context_before + seq.query_len;
            let s = slots_of(
                seq.block_table,
                cache.block_size,
                context,
                cache.num_slots(),
            )?;
            new_slots.extend_from_slice(&s[seq.context_before..]);
            slots.push(s);
        }
        if next_row != rows {
            bail!("sequences cover {next_row} query rows of {rows}")
        }
        let slot_mapping = Tensor::from_vec(new_slots, rows, query.device())?;
        self.write_kv(cache, key, value, &slot_mapping)?;
        let outputs = sequences
            .iter()
            .zip(&slots)
            .map(|(seq, slots)| attend_one(query, cache, seq, slots, params))
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&outputs, 0)
    }
}

fn attend_one(
    query: &Tensor,
    cache: &LayerKvCache,
    seq: &SequenceAttention<'_>,
    slots: &[u32],
    params: AttentionParams,
) -> Result<Tensor> {
    let (_, num_heads, head_dim) = query.dims3()?;
    let num_kv_heads = cache.key.dim(1)?;
    let group = num_heads / num_kv_heads;
    let context = seq.context_before + seq.query_len;
    let slots = Tensor::from_slice(slots, context, query.device())?;
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
    use crate::{KvCacheShape, LayerKvCache};
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
        let slots = Tensor::new(&[5u32, 2], &device)?;
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
            let earlier = Tensor::new(earlier.as_slice(), &device)?;
            Portable.write_kv(
                &cache,
                &key.narrow(0, 0, 3)?,
                &value.narrow(0, 0, 3)?,
                &earlier,
            )?;
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
