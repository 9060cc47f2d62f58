//! Fused paged attention on CPU: prefill, chunked prefill and decode of a whole flat batch in
//! one call, reading keys and values through each sequence's block table.
//!
//! The cache layout is this implementation's own ([`KvBlocks`]).
//!
//! Work items are (query row, KV head): a row's `group` query heads share every key and value
//! load. Keys are walked in position order from the window start; scores go to a per-thread
//! scratch, then a max, `e^(s - max)` with a fixed-lane sum, and `Σ p·v` in key order, divided
//! by the sum. A row's result therefore depends only on its query, its position and the keys it
//! sees: not on chunking, block size or placement, batch-mates or thread count.

use super::arch::{prefetch, AttentionKernels, MAX_GROUP};
use super::generic::{Weight, LANES};
use super::kv_blocks::{KvBlocks, KvPool};
use super::CpuKernels;
use crate::SequenceAttention;
use rayon::prelude::*;
use std::cell::RefCell;

/// Head counts and options shared by every row of a call.
#[derive(Debug, Clone, Copy)]
pub struct AttentionShape {
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub scale: f32,
    /// A query at position `p` sees keys at positions `> p - window` only.
    pub sliding_window: Option<usize>,
    /// Scores become `cap * tanh(score / cap)` before the softmax (Gemma 2).
    pub softcap: Option<f32>,
}

/// Per-row bookkeeping a call reuses: the sequence and position of every query row.
#[derive(Debug, Default)]
pub struct AttentionScratch {
    rows: Vec<(u32, u32)>,
}

/// K/V runs (a block's slots of one head) requested ahead of the one being read.
const PREFETCH_RUNS: usize = 6;

thread_local! {
    /// Scores of the row a thread is working on (`group x visible keys`), reused across calls.
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

impl CpuKernels {
    /// Causal attention of `query` (`rows x num_heads x head_dim`, the flat batch) over each
    /// sequence's cached keys and values (this step's already written). Writes `out`, same shape.
    pub fn paged_attention(
        &self,
        cache: &KvBlocks,
        query: &[f32],
        sequences: &[SequenceAttention<'_>],
        shape: AttentionShape,
        out: &mut [f32],
        scratch: &mut AttentionScratch,
    ) -> Result<(), String> {
        let (heads, kv_heads, d) = (shape.num_heads, shape.num_kv_heads, shape.head_dim);
        if kv_heads == 0 || heads % kv_heads != 0 || d % LANES != 0 || d == 0 {
            return Err(format!(
                "attention needs heads ({heads}) a multiple of KV heads ({kv_heads}) and a head dim ({d}) a multiple of {LANES}"
            ));
        }
        if cache.shape.num_kv_heads != kv_heads || cache.shape.head_dim != d {
            return Err("query and cache head shapes differ".into());
        }
        let rows = query.len() / (heads * d);
        if query.len() != rows * heads * d || out.len() != query.len() {
            return Err("query and output must be rows x heads x head_dim".into());
        }
        scratch.rows.clear();
        for (index, seq) in sequences.iter().enumerate() {
            if seq.query_offset != scratch.rows.len() {
                return Err("sequences must cover the batch in order".into());
            }
            let context = seq.context_before + seq.query_len;
            if seq.block_table.len() * cache.shape.block_size < context {
                return Err(format!(
                    "sequence {index}: block table too short for {context} tokens"
                ));
            }
            if let Some(bad) = seq.block_table[..context.div_ceil(cache.shape.block_size)]
                .iter()
                .find(|&&b| b as usize >= cache.shape.num_blocks)
            {
                return Err(format!(
                    "sequence {index}: block {bad} is outside the cache"
                ));
            }
            for i in 0..seq.query_len {
                scratch
                    .rows
                    .push((index as u32, (seq.context_before + i) as u32));
            }
        }
        if scratch.rows.len() != rows {
            return Err(format!(
                "sequences cover {} rows of {rows}",
                scratch.rows.len()
            ));
        }
        // Item `i` is (row i / kv_heads, KV head i % kv_heads): its `group` query heads are
        // one contiguous run of the output, and neighbouring items read neighbouring heads of
        // the same blocks.
        let group = heads / kv_heads;
        let item = group * d;
        let row_info = &scratch.rows;
        let attend = |(i, out): (usize, &mut [f32])| {
            let (row, head) = (i / kv_heads, i % kv_heads);
            let (seq, position) = row_info[row];
            let q = &query[(row * heads + head * group) * d..][..item];
            let table = sequences[seq as usize].block_table;
            let row = Row {
                cache,
                head,
                table,
                position: position as usize,
                shape,
            };
            let k = self.kernels;
            match (&cache.key, &cache.value) {
                (KvPool::F32(keys), KvPool::F32(values)) => {
                    let reader = InPlace {
                        keys,
                        values,
                        attention: &k.attention_f32,
                    };
                    row.attend(k, &reader, q, out)
                }
                (KvPool::Bf16(keys), KvPool::Bf16(values)) => {
                    let reader = InPlace {
                        keys,
                        values,
                        attention: &k.attention_bf16,
                    };
                    row.attend(k, &reader, q, out)
                }
                (KvPool::F16(keys), KvPool::F16(values)) => {
                    let reader = Widened {
                        keys,
                        values,
                        attention: &k.attention_f32,
                        widen: k.widen_f16,
                    };
                    row.attend(k, &reader, q, out)
                }
                _ => {} // keys and values are made with one element type (`KvBlocks::with_dtype`)
            }
        };
        if out.len() >= 2 * item && rayon::current_num_threads() > 1 {
            out.par_chunks_mut(item).enumerate().for_each(attend);
        } else {
            out.chunks_mut(item).enumerate().for_each(attend);
        }
        Ok(())
    }
}

/// One query row of one KV head, and where its keys are.
struct Row<'a> {
    cache: &'a KvBlocks,
    head: usize,
    table: &'a [u32],
    position: usize,
    shape: AttentionShape,
}

impl Row<'_> {
    /// The row's `group` query heads (`q`: `group x d`) into `out` (`group x d`), its keys
    /// and values read through `reader`.
    fn attend(
        &self,
        k: &super::arch::Kernels,
        reader: &impl RunReader,
        q: &[f32],
        out: &mut [f32],
    ) {
        let Row {
            cache,
            head,
            table,
            position,
            shape,
        } = *self;
        let (d, bs) = (shape.head_dim, cache.shape.block_size);
        let group = q.len() / d;
        let first = shape
            .sliding_window
            .map_or(0, |w| (position + 1).saturating_sub(w));
        let visible = position + 1 - first;
        // Runs of consecutive positions inside one block: (cache offset, first key index, length).
        let runs = || {
            let mut p = first;
            std::iter::from_fn(move || {
                if p > position {
                    return None;
                }
                let slot = p % bs;
                let len = (bs - slot).min(position + 1 - p);
                let at = cache.offset(table[p / bs] as usize, head, slot);
                let run = (at, p - first, len);
                p += len;
                Some(run)
            })
        };
        SCORES.with_borrow_mut(|scratch| {
            if scratch.len() < group * (visible + 1) {
                scratch.resize(group * (visible + 1), 0.0);
            }
            let (scores, sums) = scratch[..group * (visible + 1)].split_at_mut(group * visible);
            // Heads in sub-groups the kernels take whole (results do not depend on the split).
            let subgroups = (0..group)
                .step_by(MAX_GROUP)
                .map(|g0| (g0, MAX_GROUP.min(group - g0)));
            // Keep the next runs' keys and values on their way from memory.
            let mut ahead = runs().skip(PREFETCH_RUNS);
            for (at, len) in runs().take(PREFETCH_RUNS).map(|(at, _, len)| (at, len)) {
                reader.prefetch(at..at + len * d);
            }
            for (at, j, len) in runs() {
                if let Some((next, _, next_len)) = ahead.next() {
                    reader.prefetch(next..next + next_len * d);
                }
                for (g0, size) in subgroups.clone() {
                    let q = &q[g0 * d..(g0 + size) * d];
                    let out = &mut scores[g0 * visible + j..];
                    reader.scores(size, q, d, at..at + len * d, shape.scale, out, visible);
                }
            }
            if let Some(cap) = shape.softcap {
                // libm's tanh: the same bits whichever ISA computed the scores.
                scores.iter_mut().for_each(|s| *s = cap * (*s / cap).tanh());
            }
            for (row, sum) in scores.chunks_exact_mut(visible).zip(sums.iter_mut()) {
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                *sum = (k.exp_and_sum)(row, max);
            }
            out.fill(0.0);
            for (at, j, len) in runs() {
                for (g0, size) in subgroups.clone() {
                    let probs = &scores[g0 * visible + j..];
                    let out = &mut out[g0 * d..(g0 + size) * d];
                    reader.accumulate(size, probs, visible, d, at..at + len * d, out);
                }
            }
            for (o, &sum) in out.chunks_exact_mut(d).zip(sums.iter()) {
                let inv = 1.0 / sum;
                o.iter_mut().for_each(|v| *v *= inv);
            }
        });
    }
}

/// How a row reads runs of its keys and values (`range`: elements of the pool).
trait RunReader {
    fn prefetch(&self, range: std::ops::Range<usize>);
    #[allow(clippy::too_many_arguments)]
    fn scores(
        &self,
        heads: usize,
        q: &[f32],
        d: usize,
        range: std::ops::Range<usize>,
        scale: f32,
        out: &mut [f32],
        stride: usize,
    );
    fn accumulate(
        &self,
        heads: usize,
        probs: &[f32],
        stride: usize,
        d: usize,
        range: std::ops::Range<usize>,
        out: &mut [f32],
    );
}

/// Keys and values read where they are, widened by the kernels as they load them (f32;
/// bf16, whose widening is a shift).
struct InPlace<'a, W> {
    keys: &'a [W],
    values: &'a [W],
    attention: &'a AttentionKernels<W>,
}

impl<W: Weight> RunReader for InPlace<'_, W> {
    fn prefetch(&self, range: std::ops::Range<usize>) {
        prefetch(&self.keys[range.clone()]);
        prefetch(&self.values[range]);
    }

    fn scores(
        &self,
        heads: usize,
        q: &[f32],
        d: usize,
        range: std::ops::Range<usize>,
        scale: f32,
        out: &mut [f32],
        stride: usize,
    ) {
        (self.attention.scores[heads - 1])(q, d, &self.keys[range], scale, out, stride);
    }

    fn accumulate(
        &self,
        heads: usize,
        probs: &[f32],
        stride: usize,
        d: usize,
        range: std::ops::Range<usize>,
        out: &mut [f32],
    ) {
        (self.attention.accumulate[heads - 1])(probs, stride, d, &self.values[range], out);
    }
}

thread_local! {
    /// A run of f16 keys or values widened to f32, reused across runs and calls.
    static WIDENED: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// f16 keys and values: each run widened in bulk by the hardware's conversion (it stays in
/// L1), then read by the f32 kernels. The widening is exact, so the result is the f32
/// kernels' on the rounded values.
struct Widened<'a> {
    keys: &'a [half::f16],
    values: &'a [half::f16],
    attention: &'a AttentionKernels<f32>,
    widen: fn(&[half::f16], &mut [f32]),
}

impl Widened<'_> {
    fn with_run<R>(&self, run: &[half::f16], work: impl FnOnce(&[f32]) -> R) -> R {
        WIDENED.with_borrow_mut(|buffer| {
            buffer.resize(run.len(), 0.0);
            (self.widen)(run, buffer);
            work(buffer)
        })
    }
}

impl RunReader for Widened<'_> {
    fn prefetch(&self, range: std::ops::Range<usize>) {
        prefetch(&self.keys[range.clone()]);
        prefetch(&self.values[range]);
    }

    fn scores(
        &self,
        heads: usize,
        q: &[f32],
        d: usize,
        range: std::ops::Range<usize>,
        scale: f32,
        out: &mut [f32],
        stride: usize,
    ) {
        self.with_run(&self.keys[range], |keys| {
            (self.attention.scores[heads - 1])(q, d, keys, scale, out, stride)
        });
    }

    fn accumulate(
        &self,
        heads: usize,
        probs: &[f32],
        stride: usize,
        d: usize,
        range: std::ops::Range<usize>,
        out: &mut [f32],
    ) {
        self.with_run(&self.values[range], |values| {
            (self.attention.accumulate[heads - 1])(probs, stride, d, values, out)
        });
    }
}

#[cfg(test)]
mod tests;
