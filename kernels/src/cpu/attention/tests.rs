//! The fused paged attention against the portable op, and its rows' independence of
//! chunking, blocks, batch-mates and threads.

use super::*;
use crate::attention_metadata::slots_of;
use crate::cpu::{Isa, KvDtype};
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
    dtype: KvDtype,
) -> (KvBlocks, Vec<Vec<u32>>) {
    let needed: usize = seqs.iter().map(|s| s.context.div_ceil(block_size)).sum();
    let mut free: Vec<u32> = (0..needed as u32 + 3).collect();
    free.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
    let shape = KvCacheShape {
        num_blocks: free.len(),
        block_size,
        num_kv_heads: h.kv_heads,
        head_dim: h.d,
    };
    let mut blocks = match KvBlocks::with_dtype(shape, dtype) {
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
    run_cpu_as(kernels, h, seqs, ranges, block_size, KvDtype::F32)
}

/// [`run_cpu`] over a cache of `dtype` elements.
fn run_cpu_as(
    kernels: CpuKernels,
    h: Heads,
    seqs: &[&Sequence],
    ranges: &[(usize, usize)],
    block_size: usize,
    dtype: KvDtype,
) -> Vec<Vec<f32>> {
    let (blocks, tables) = cached(h, seqs, block_size, block_size as u64 + 11, dtype);
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
            let key = t(&s.key)?;
            let index = crate::slot_index(&earlier, &key)?;
            Portable.write_kv(&cache, &key, &t(&s.value)?, &index)?;
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
                let out = pool.install(|| run_cpu(kernels, h, &[&seq], &[(0, 130)], 16).concat());
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
    let (blocks, _) = cached(h, &[&s], 4, 0, KvDtype::F32);
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

/// A half-precision cache holds each key and value rounded to nearest even and attention
/// widens them exactly: on every ISA its rows are bit for bit those of an f32 cache holding
/// the rounded values (tiny values included: f16 subnormals), so parity is the rounding's and
/// rows stay independent of their batch mates, chunking and blocks as in f32.
#[test]
fn half_precision_caches_read_exactly_the_rounded_values() {
    let h = Heads {
        heads: 8,
        kv_heads: 2,
        d: 64,
        window: None,
        softcap: None,
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(21);
    let mut seqs: Vec<Sequence> = [37usize, 5, 70]
        .iter()
        .map(|&n| sequence(h, n, &mut rng))
        .collect();
    for (i, v) in seqs[0].key.iter_mut().enumerate().step_by(7) {
        *v *= 1e-6 * (i % 5) as f32; // below f16's smallest normal (6.1e-5)
    }
    let refs: Vec<&Sequence> = seqs.iter().collect();
    let ranges = [(30, 37), (0, 5), (69, 70)];
    for (dtype, round) in [
        (
            KvDtype::F16,
            (|v: f32| half::f16::from_f32(v).to_f32()) as fn(f32) -> f32,
        ),
        (KvDtype::Bf16, |v: f32| half::bf16::from_f32(v).to_f32()),
    ] {
        let rounded: Vec<Sequence> = seqs
            .iter()
            .map(|s| Sequence {
                key: s.key.iter().map(|&v| round(v)).collect(),
                value: s.value.iter().map(|&v| round(v)).collect(),
                query: s.query.clone(),
                context: s.context,
            })
            .collect();
        let rounded_refs: Vec<&Sequence> = rounded.iter().collect();
        for isa in Isa::supported() {
            let Some(kernels) = CpuKernels::for_isa(isa) else {
                continue;
            };
            let half = run_cpu_as(kernels, h, &refs, &ranges, 16, dtype);
            let exact = run_cpu(kernels, h, &rounded_refs, &ranges, 16);
            let bits = |rows: &Vec<Vec<f32>>| -> Vec<u32> {
                rows.iter().flatten().map(|v| v.to_bits()).collect()
            };
            assert_eq!(bits(&half), bits(&exact), "{dtype:?} on {isa:?}");
            // Alone, in another block size: the same bits.
            let alone = run_cpu_as(kernels, h, &refs[2..], &ranges[2..], 4, dtype);
            assert_eq!(
                bits(&alone),
                bits(&half[2..].to_vec()),
                "{dtype:?} alone on {isa:?}"
            );
        }
    }
}

/// Every ISA's f16 widening (the hardware's bulk conversion, the scalar branch-free one)
/// equals `half`'s for every bit pattern (NaNs as NaNs).
#[test]
fn f16_widening_is_exact_for_every_value() {
    let all: Vec<half::f16> = (0..=u16::MAX).map(half::f16::from_bits).collect();
    for isa in Isa::supported() {
        let Some(kernels) = CpuKernels::for_isa(isa) else {
            continue;
        };
        let mut widened = vec![0f32; all.len()];
        (kernels.kernels.widen_f16)(&all, &mut widened);
        for (value, ours) in all.iter().zip(&widened) {
            let theirs = value.to_f32();
            assert!(
                ours.to_bits() == theirs.to_bits() || (ours.is_nan() && theirs.is_nan()),
                "{isa:?} {:#06x}: {ours} vs {theirs}",
                value.to_bits()
            );
        }
    }
}
