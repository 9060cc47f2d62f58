//! What every layer's attention reads about a step, built and uploaded once per forward call.
//!
//! A step's batch layout (which rows belong to which sequence, which cache slots they write,
//! which slots each sequence reads, block tables and cumulative lengths for FlashAttention) is
//! the same for every layer. Building it per layer cost a host-to-device copy per sequence per
//! layer on a GPU; here it is a handful of copies per step, whatever the batch or the depth.

use crate::{KvCacheShape, SequenceAttention};
use candle_core::{bail, Device, Result, Tensor};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Host-to-device copies. The forward pass makes every copy through one of these, so a test
/// can count them ([`CountingUploads`]).
pub trait Uploads: Send + Sync {
    fn u32s(&self, data: Vec<u32>, dims: &[usize], device: &Device) -> Result<Tensor>;
    fn f32s(&self, data: Vec<f32>, dims: &[usize], device: &Device) -> Result<Tensor>;
}

/// The plain copy.
#[derive(Debug, Clone, Copy, Default)]
pub struct DirectUploads;

impl Uploads for DirectUploads {
    fn u32s(&self, data: Vec<u32>, dims: &[usize], device: &Device) -> Result<Tensor> {
        Tensor::from_vec(data, dims, device)
    }

    fn f32s(&self, data: Vec<f32>, dims: &[usize], device: &Device) -> Result<Tensor> {
        Tensor::from_vec(data, dims, device)
    }
}

/// Copies like [`DirectUploads`] and counts them.
#[derive(Debug, Default)]
pub struct CountingUploads {
    count: AtomicUsize,
}

impl CountingUploads {
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }
}

impl Uploads for CountingUploads {
    fn u32s(&self, data: Vec<u32>, dims: &[usize], device: &Device) -> Result<Tensor> {
        self.count.fetch_add(1, Ordering::Relaxed);
        DirectUploads.u32s(data, dims, device)
    }

    fn f32s(&self, data: Vec<f32>, dims: &[usize], device: &Device) -> Result<Tensor> {
        self.count.fetch_add(1, Ordering::Relaxed);
        DirectUploads.f32s(data, dims, device)
    }
}

/// One sequence's rows, as the host needs them to slice per-sequence views.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SequenceRows {
    pub query_offset: usize,
    pub query_len: usize,
    pub context_before: usize,
    /// Where this sequence's context slots start in [`StepMetadata::context_slots`].
    pub slots_offset: usize,
}

impl SequenceRows {
    pub fn context(&self) -> usize {
        self.context_before + self.query_len
    }
}

/// The step's layout on the device. Which parts are present depends on the attention
/// implementation that built it ([`crate::PagedAttention::prepare`]).
#[derive(Debug, Clone)]
pub struct StepMetadata {
    pub rows: usize,
    pub sequences: Vec<SequenceRows>,
    /// The cache slot each row's key and value go to, broadcast to the K/V rows' shape
    /// `(rows, num_kv_heads, head_dim)` u32: the index of the cache write (one scatter per
    /// layer for K and one for V), expanded once per step.
    pub write_slots: Tensor,
    /// Every sequence's context slots back to back (the portable path gathers its keys with them).
    pub context_slots: Option<Tensor>,
    /// FlashAttention's view: cumulative query and key lengths (`(batch + 1,)` u32), the block
    /// table `(batch, max_blocks)` u32 (short tables padded with block 0, never read), and the
    /// longest query and context.
    pub flash: Option<FlashLayout>,
}

#[derive(Debug, Clone)]
pub struct FlashLayout {
    pub cumulative_query_lens: Tensor,
    pub cumulative_context_lens: Tensor,
    pub block_table: Tensor,
    pub max_query_len: usize,
    pub max_context_len: usize,
}

/// What to build beside the always-present parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Wanted {
    pub context_slots: bool,
    pub flash: bool,
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

/// Checks `sequences` against each other and the cache, and uploads what `wanted` asks for.
pub(crate) fn build(
    sequences: &[SequenceAttention<'_>],
    shape: &KvCacheShape,
    wanted: Wanted,
    device: &Device,
    uploads: &dyn Uploads,
) -> Result<StepMetadata> {
    let num_slots = shape.num_blocks * shape.block_size;
    let mut rows = Vec::with_capacity(sequences.len());
    let mut write_slots = Vec::new();
    let mut context_slots = Vec::new();
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
        let slots = slots_of(seq.block_table, shape.block_size, context, num_slots)?;
        write_slots.extend_from_slice(&slots[seq.context_before..]);
        rows.push(SequenceRows {
            query_offset: seq.query_offset,
            query_len: seq.query_len,
            context_before: seq.context_before,
            slots_offset: context_slots.len(),
        });
        if wanted.context_slots {
            context_slots.extend_from_slice(&slots);
        }
    }
    let total_rows = next_row;
    let write_slots = uploads
        .u32s(write_slots, &[total_rows, 1, 1], device)?
        .broadcast_as((total_rows, shape.num_kv_heads, shape.head_dim))?
        .contiguous()?;
    let context_slots = if wanted.context_slots {
        let len = context_slots.len();
        Some(uploads.u32s(context_slots, &[len], device)?)
    } else {
        None
    };
    let flash = if wanted.flash {
        Some(flash_layout(sequences, device, uploads)?)
    } else {
        None
    };
    Ok(StepMetadata {
        rows: total_rows,
        sequences: rows,
        write_slots,
        context_slots,
        flash,
    })
}

fn flash_layout(
    sequences: &[SequenceAttention<'_>],
    device: &Device,
    uploads: &dyn Uploads,
) -> Result<FlashLayout> {
    let batch = sequences.len();
    let max_blocks = sequences
        .iter()
        .map(|s| s.block_table.len())
        .max()
        .unwrap_or(0)
        .max(1);
    let mut cumulative_query = Vec::with_capacity(batch + 1);
    let mut cumulative_context = Vec::with_capacity(batch + 1);
    let mut table = vec![0u32; batch * max_blocks];
    let (mut q, mut k) = (0u32, 0u32);
    cumulative_query.push(0);
    cumulative_context.push(0);
    for (row, seq) in table.chunks_mut(max_blocks).zip(sequences) {
        q += seq.query_len as u32;
        k += (seq.context_before + seq.query_len) as u32;
        cumulative_query.push(q);
        cumulative_context.push(k);
        row[..seq.block_table.len()].copy_from_slice(seq.block_table);
    }
    Ok(FlashLayout {
        cumulative_query_lens: uploads.u32s(cumulative_query, &[batch + 1], device)?,
        cumulative_context_lens: uploads.u32s(cumulative_context, &[batch + 1], device)?,
        block_table: uploads.u32s(table, &[batch, max_blocks], device)?,
        max_query_len: sequences.iter().map(|s| s.query_len).max().unwrap_or(0),
        max_context_len: sequences
            .iter()
            .map(|s| s.context_before + s.query_len)
            .max()
            .unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> KvCacheShape {
        KvCacheShape {
            num_blocks: 8,
            block_size: 2,
            num_kv_heads: 1,
            head_dim: 4,
        }
    }

    #[test]
    fn flash_layout_has_cumulative_lengths_and_padded_tables() -> Result<()> {
        let (a, b) = ([3u32, 5], [7u32]);
        let sequences = [
            SequenceAttention {
                query_offset: 0,
                query_len: 3,
                context_before: 1,
                block_table: &a,
            },
            SequenceAttention {
                query_offset: 3,
                query_len: 1,
                context_before: 0,
                block_table: &b,
            },
        ];
        let wanted = Wanted {
            context_slots: true,
            flash: true,
        };
        let step = build(&sequences, &shape(), wanted, &Device::Cpu, &DirectUploads)?;
        let flash = step.flash.as_ref().expect("asked for");
        assert_eq!(flash.cumulative_query_lens.to_vec1::<u32>()?, [0, 3, 4]);
        assert_eq!(flash.cumulative_context_lens.to_vec1::<u32>()?, [0, 4, 5]);
        assert_eq!(flash.block_table.to_vec2::<u32>()?, [[3, 5], [7, 0]]);
        assert_eq!((flash.max_query_len, flash.max_context_len), (3, 4));
        // Positions 1..4 of the first sequence, position 0 of the second.
        assert_eq!(
            step.write_slots
                .narrow(2, 0, 1)?
                .flatten_all()?
                .to_vec1::<u32>()?,
            [7, 10, 11, 14]
        );
        assert_eq!(step.write_slots.dims(), [4, 1, 4]);
        let context = step.context_slots.expect("asked for").to_vec1::<u32>()?;
        assert_eq!(context, [6, 7, 10, 11, 14]);
        assert_eq!(step.sequences[1].slots_offset, 4);
        Ok(())
    }

    #[test]
    fn bad_layouts_are_refused() {
        let table = [1u32];
        let seq = |offset, len| SequenceAttention {
            query_offset: offset,
            query_len: len,
            context_before: 0,
            block_table: &table,
        };
        let wanted = Wanted {
            context_slots: false,
            flash: false,
        };
        let build = |s: &[SequenceAttention<'_>]| {
            build(s, &shape(), wanted, &Device::Cpu, &DirectUploads).map(|_| ())
        };
        assert!(build(&[seq(1, 1)]).is_err(), "gap before the first row");
        assert!(build(&[seq(0, 3)]).is_err(), "one block of 2 cannot hold 3");
        let outside = [9u32];
        let far = SequenceAttention {
            block_table: &outside,
            ..seq(0, 1)
        };
        assert!(build(&[far]).is_err(), "block outside the cache");
    }
}
