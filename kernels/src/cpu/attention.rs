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

use super::arch::{prefetch, MAX_GROUP};
use super::generic::LANES;
use super::kv_blocks::KvBlocks;
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
            self.attend_row(cache, q, head, table, position as usize, shape, out);
        };
        if out.len() >= 2 * item && rayon::current_num_threads() > 1 {
            out.par_chunks_mut(item).enumerate().for_each(attend);
        } else {
            out.chunks_mut(item).enumerate().for_each(attend);
        }
        Ok(())
    }

    /// One query row of one KV head's group (`q`: `group x d`) into `out` (`group x d`).
    #[allow(clippy::too_many_arguments)]
    fn attend_row(
        &self,
        cache: &KvBlocks,
        q: &[f32],
        head: usize,
        table: &[u32],
        position: usize,
        shape: AttentionShape,
        out: &mut [f32],
    ) {
        let k = self.kernels;
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
                prefetch(&cache.key[at..at + len * d]);
                prefetch(&cache.value[at..at + len * d]);
            }
            for (at, j, len) in runs() {
                if let Some((next, _, next_len)) = ahead.next() {
                    prefetch(&cache.key[next..next + next_len * d]);
                    prefetch(&cache.value[next..next + next_len * d]);
                }
                let keys = &cache.key[at..at + len * d];
                for (g0, size) in subgroups.clone() {
                    let q = &q[g0 * d..(g0 + size) * d];
                    let out = &mut scores[g0 * visible + j..];
                    (k.scores[size - 1])(q, d, keys, shape.scale, out, visible);
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
                let values = &cache.value[at..at + len * d];
                for (g0, size) in subgroups.clone() {
                    let probs = &scores[g0 * visible + j..];
                    let out = &mut out[g0 * d..(g0 + size) * d];
                    (k.accumulate[size - 1])(probs, visible, d, values, out);
                }
            }
            for (o, &sum) in out.chunks_exact_mut(d).zip(sums.iter()) {
                let inv = 1.0 / sum;
                o.iter_mut().for_each(|v| *v *= inv);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::Isa;
    use crate::portable::slots_of;
    use crate::{
        AttentionParams, KvCacheShape, LayerKvCache, PagedAttention, Portable, SequenceAttention,
    };
    use candle_core::{DType, Device, Tensor};
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};

    /// One sequence of a test: its whole context's K/V and queries.
    struct Sequence {
        /// `(context, kv_heads * d)` each.
        key: Vec<f32>,
        value: Vec<f32>,
        /// `(context, heads * d)`: the query of every position.
        query: Vec<f32>,
        context: usize,
    }

    #[derive(Clone, Copy)]
    struct Heads {
        heads: usize,
        kv_heads: usize,
        d: usize,
        window: Option<usize>,
        softcap: Option<f32>,
    }

    impl Heads {
        fn shape(self) -> AttentionShape {
            AttentionShape {
                num_heads: self.heads,
                num_kv_heads: self.kv_heads,
                head_dim: self.d,
                scale: 1.0 / (self.d as f32).sqrt(),
                sliding_window: self.window,
                softcap: self.softcap,
            }
        }
    }

    fn sequence(h: Heads, context: usize, rng: &mut rand_chacha::ChaCha8Rng) -> Sequence {
        let mut random = |n: usize| (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        Sequence {
            key: random(context * h.kv_heads * h.d),
            value: random(context * h.kv_heads * h.d),
            query: random(context * h.heads * h.d),
            context,
        }
    }

    /// A cache holding every sequence's whole context, blocks handed out in shuffled order.
    fn cached(
        h: Heads,
        seqs: &[&Sequence],
        block_size: usize,
        seed: u64,
    ) -> (KvBlocks, Vec<Vec<u32>>) {
        let needed: usize = seqs.iter().map(|s| s.context.div_ceil(block_size)).sum();
        let mut free: Vec<u32> = (0..needed as u32 + 3).collect();
        free.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
        let mut blocks = match KvBlocks::new(KvCacheShape {
            num_blocks: free.len(),
            block_size,
            num_kv_heads: h.kv_heads,
            head_dim: h.d,
        }) {
            Ok(b) => b,
            Err(e) => panic!("{e}"),
        };
        let width = h.kv_heads * h.d;
        let mut tables = Vec::new();
        for s in seqs {
            let table: Vec<u32> = (0..s.context.div_ceil(block_size))
                .filter_map(|_| free.pop())
                .collect();
            for p in 0..s.context {
                let row = p * width..(p + 1) * width;
                assert!(blocks
                    .write(&table, p, &s.key[row.clone()], &s.value[row])
                    .is_ok());
            }
            tables.push(table);
        }
        (blocks, tables)
    }

    /// Runs rows `from..to` of each sequence (one chunk each) through the CPU kernels.
    fn run_cpu(
        kernels: CpuKernels,
        h: Heads,
        seqs: &[&Sequence],
        ranges: &[(usize, usize)],
        block_size: usize,
    ) -> Vec<Vec<f32>> {
        let (blocks, tables) = cached(h, seqs, block_size, block_size as u64 + 11);
        let width = h.heads * h.d;
        let mut query = Vec::new();
        let mut rows = Vec::new();
        let mut offset = 0;
        for ((s, &(from, to)), table) in seqs.iter().zip(ranges).zip(&tables) {
            query.extend_from_slice(&s.query[from * width..to * width]);
            rows.push(SequenceAttention {
                query_offset: offset,
                query_len: to - from,
                context_before: from,
                block_table: table,
            });
            offset += to - from;
        }
        let mut out = vec![f32::NAN; query.len()];
        let result = kernels.paged_attention(
            &blocks,
            &query,
            &rows,
            h.shape(),
            &mut out,
            &mut AttentionScratch::default(),
        );
        assert_eq!(result, Ok(()));
        let mut per_seq = Vec::new();
        let mut at = 0;
        for &(from, to) in ranges {
            per_seq.push(out[at * width..(at + to - from) * width].to_vec());
            at += to - from;
        }
        per_seq
    }

    /// The same step through the portable candle implementation.
    fn run_portable(
        h: Heads,
        seqs: &[&Sequence],
        ranges: &[(usize, usize)],
    ) -> candle_core::Result<Vec<f32>> {
        let device = Device::Cpu;
        let block_size = 4;
        let blocks: usize = seqs.iter().map(|s| s.context.div_ceil(block_size)).sum();
        let cache = LayerKvCache::zeros(
            KvCacheShape {
                num_blocks: blocks,
                block_size,
                num_kv_heads: h.kv_heads,
                head_dim: h.d,
            },
            DType::F32,
            &device,
        )?;
        let (kv, qw) = (h.kv_heads * h.d, h.heads * h.d);
        let (mut q, mut k, mut v, mut tables) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut first_block = 0u32;
        for (s, &(from, to)) in seqs.iter().zip(ranges) {
            let count = s.context.div_ceil(block_size) as u32;
            let table: Vec<u32> = (first_block..first_block + count).collect();
            first_block += count;
            // Earlier steps cached positions before `from`.
            let earlier = slots_of(&table, block_size, from, cache.num_slots())?;
            if from > 0 {
                let t = |data: &[f32]| {
                    Tensor::from_slice(&data[..from * kv], (from, h.kv_heads, h.d), &device)
                };
                Portable.write_kv(
                    &cache,
                    &t(&s.key)?,
                    &t(&s.value)?,
                    &Tensor::new(earlier.as_slice(), &device)?,
                )?;
            }
            q.extend_from_slice(&s.query[from * qw..to * qw]);
            k.extend_from_slice(&s.key[from * kv..to * kv]);
            v.extend_from_slice(&s.value[from * kv..to * kv]);
            tables.push(table);
        }
        let n = q.len() / qw;
        let mut offset = 0;
        let sequences: Vec<SequenceAttention<'_>> = ranges
            .iter()
            .zip(&tables)
            .map(|(&(from, to), table)| {
                let s = SequenceAttention {
                    query_offset: offset,
                    query_len: to - from,
                    context_before: from,
                    block_table: table,
                };
                offset += to - from;
                s
            })
            .collect();
        let params = AttentionParams {
            scale: 1.0 / (h.d as f64).sqrt(),
            sliding_window: h.window,
            softcap: h.softcap.map(f64::from),
        };
        let out = Portable.write_and_attend(
            &Tensor::from_vec(q, (n, h.heads, h.d), &device)?,
            &Tensor::from_vec(k, (n, h.kv_heads, h.d), &device)?,
            &Tensor::from_vec(v, (n, h.kv_heads, h.d), &device)?,
            &cache,
            &sequences,
            params,
        )?;
        out.flatten_all()?.to_vec1()
    }

    fn configurations() -> Vec<Heads> {
        let mut all = Vec::new();
        for (heads, kv_heads) in [(4, 4), (6, 2), (8, 2), (16, 2)] {
            for d in [16, 64, 96, 128, 256] {
                for window in [None, Some(5)] {
                    all.push(Heads {
                        heads,
                        kv_heads,
                        d,
                        window,
                        softcap: None,
                    });
                }
                // Gemma 2's soft-capped scores, with and without a window.
                if kv_heads == 2 && heads == 8 {
                    for window in [None, Some(5)] {
                        all.push(Heads {
                            heads,
                            kv_heads,
                            d,
                            window,
                            softcap: Some(0.5),
                        });
                    }
                }
            }
        }
        all
    }

    #[test]
    fn matches_the_portable_op_for_every_group_head_dim_and_window() -> candle_core::Result<()> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        for h in configurations() {
            let a = sequence(h, 23, &mut rng);
            let b = sequence(h, 9, &mut rng);
            let c = sequence(h, 1, &mut rng);
            // A chunk of a prompt, a decode step, a whole one-token prompt.
            let ranges = [(10, 23), (8, 9), (0, 1)];
            let expected = run_portable(h, &[&a, &b, &c], &ranges)?;
            for isa in Isa::supported() {
                let Some(kernels) = CpuKernels::for_isa(isa) else {
                    continue;
                };
                let got: Vec<f32> = run_cpu(kernels, h, &[&a, &b, &c], &ranges, 4).concat();
                let worst = got
                    .iter()
                    .zip(&expected)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0f32, f32::max);
                assert!(
                    worst < 1e-5,
                    "{isa:?} heads {} kv {} d {} window {:?} softcap {:?}: {worst}",
                    h.heads,
                    h.kv_heads,
                    h.d,
                    h.window,
                    h.softcap
                );
            }
        }
        Ok(())
    }

    /// Whole prefill, chunks of 1 (decode), 7 and 64, other block sizes and tables, batch-mates
    /// and thread counts: every row bitwise the same.
    #[test]
    fn rows_are_bitwise_independent_of_chunking_blocks_batch_mates_and_threads() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
        let isas: Vec<Isa> = Isa::supported();
        for h in [
            Heads {
                heads: 9,
                kv_heads: 3,
                d: 64,
                window: None,
                softcap: None,
            },
            Heads {
                heads: 8,
                kv_heads: 1,
                d: 128,
                window: Some(40),
                softcap: Some(0.5),
            },
            Heads {
                heads: 4,
                kv_heads: 4,
                d: 16,
                window: None,
                softcap: None,
            },
        ] {
            let seq = sequence(h, 130, &mut rng);
            let mate = sequence(h, 77, &mut rng);
            for &isa in &isas {
                let Some(kernels) = CpuKernels::for_isa(isa) else {
                    continue;
                };
                let whole = run_cpu(kernels, h, &[&seq], &[(0, 130)], 16).concat();
                for chunk in [1, 7, 64] {
                    for block_size in [1, 5, 16] {
                        let mut rows = Vec::new();
                        for from in (0..130).step_by(chunk) {
                            let to = (from + chunk).min(130);
                            // Batch-mates before and after, mid-prefill.
                            let out = run_cpu(
                                kernels,
                                h,
                                &[&mate, &seq, &mate],
                                &[(3, 40), (from, to), (76, 77)],
                                block_size,
                            );
                            rows.extend_from_slice(&out[1]);
                        }
                        assert!(
                            rows.iter()
                                .map(|v| v.to_bits())
                                .eq(whole.iter().map(|v| v.to_bits())),
                            "{isa:?} chunk {chunk} block size {block_size} d {}",
                            h.d
                        );
                    }
                }
                for threads in 1..=3 {
                    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build();
                    let Ok(pool) = pool else {
                        panic!("thread pool")
                    };
                    let out =
                        pool.install(|| run_cpu(kernels, h, &[&seq], &[(0, 130)], 16).concat());
                    assert!(
                        out.iter()
                            .map(|v| v.to_bits())
                            .eq(whole.iter().map(|v| v.to_bits())),
                        "{threads} threads"
                    );
                }
            }
        }
    }

    #[test]
    fn bad_shapes_and_block_tables_are_errors_not_panics() {
        let h = Heads {
            heads: 4,
            kv_heads: 2,
            d: 16,
            window: None,
            softcap: None,
        };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let s = sequence(h, 5, &mut rng);
        let (blocks, _) = cached(h, &[&s], 4, 0);
        let kernels = CpuKernels::scalar();
        let mut out = vec![0f32; 64];
        let q = vec![0f32; 64];
        let outside = [99u32, 100];
        let rows = [SequenceAttention {
            query_offset: 0,
            query_len: 1,
            context_before: 4,
            block_table: &outside,
        }];
        let mut scratch = AttentionScratch::default();
        assert!(kernels
            .paged_attention(&blocks, &q, &rows, h.shape(), &mut out, &mut scratch)
            .is_err());
        let short = [0u32];
        let rows = [SequenceAttention {
            query_offset: 0,
            query_len: 1,
            context_before: 4,
            block_table: &short,
        }];
        assert!(kernels
            .paged_attention(&blocks, &q, &rows, h.shape(), &mut out, &mut scratch)
            .is_err());
        let odd = Heads { d: 12, ..h };
        assert!(kernels
            .paged_attention(
                &blocks,
                &q[..48],
                &[],
                odd.shape(),
                &mut out[..48],
                &mut scratch
            )
            .is_err());
    }
}
