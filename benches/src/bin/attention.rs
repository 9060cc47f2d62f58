//! Paged attention, portable (candle ops) against the fused CPU kernel: decode steps at
//! batch 1/8/32/64 x context 32/160/1k/4k, and one 512-row prefill chunk. SmolLM2-135M's
//! heads (9 query heads, 3 KV heads, head dim 64), one layer, block size 16.
//!
//!     cargo run --release -p lantern-benches --bin attention [-- --skip-portable]

use candle_core::{DType, Device, Tensor};
use clap::Parser;
use lantern_kernels::cpu::{self, AttentionScratch, AttentionShape, CpuKernels, KvBlocks};
use lantern_kernels::{
    AttentionParams, KvCacheShape, LayerKvCache, PagedAttention, Portable, SequenceAttention,
};
use std::time::Instant;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, value_delimiter = ',', default_value = "1,8,32,64")]
    batch: Vec<usize>,
    #[arg(long, value_delimiter = ',', default_value = "32,160,1024,4096")]
    context: Vec<usize>,
    /// Only the fused kernel (the portable op takes minutes at 64 x 4k).
    #[arg(long)]
    skip_portable: bool,
    /// Evict the caches before every fused call, as a layer's weights do inside a model step.
    #[arg(long)]
    cold: bool,
    #[arg(long, default_value_t = 0.3)]
    seconds: f64,
}

const HEADS: usize = 9;
const KV_HEADS: usize = 3;
const D: usize = 64;
const BLOCK: usize = 16;

fn time(seconds: f64, f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    time_each(seconds, || {}, f)
}

/// Best seconds per call of `f`, running the untimed `setup` before each call.
fn time_each(
    seconds: f64,
    mut setup: impl FnMut(),
    mut f: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<f64> {
    f()?;
    let mut best = f64::MAX;
    let started = Instant::now();
    while started.elapsed().as_secs_f64() < seconds || best == f64::MAX {
        setup();
        let t = Instant::now();
        f()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best)
}

/// `batch` sequences of `context` tokens; the last `rows` of each are this step's queries.
fn measure(
    args: &Args,
    batch: usize,
    context: usize,
    rows: usize,
) -> anyhow::Result<(f64, Option<f64>)> {
    let per_seq = context.div_ceil(BLOCK);
    let num_blocks = batch * per_seq;
    let tables: Vec<Vec<u32>> = (0..batch)
        .map(|s| ((s * per_seq) as u32..((s + 1) * per_seq) as u32).collect())
        .collect();
    let value = |i: usize| ((i % 89) as f32 - 44.0) / 89.0;
    let kv_row: Vec<f32> = (0..KV_HEADS * D).map(value).collect();
    let mut blocks = KvBlocks::new(KvCacheShape {
        num_blocks,
        block_size: BLOCK,
        num_kv_heads: KV_HEADS,
        head_dim: D,
    })
    .map_err(anyhow::Error::msg)?;
    for table in &tables {
        for p in 0..context {
            blocks
                .write(table, p, &kv_row, &kv_row)
                .map_err(anyhow::Error::msg)?;
        }
    }
    let n = batch * rows;
    let query: Vec<f32> = (0..n * HEADS * D).map(value).collect();
    let sequences: Vec<SequenceAttention<'_>> = tables
        .iter()
        .enumerate()
        .map(|(s, table)| SequenceAttention {
            query_offset: s * rows,
            query_len: rows,
            context_before: context - rows,
            block_table: table,
        })
        .collect();
    let shape = AttentionShape {
        num_heads: HEADS,
        num_kv_heads: KV_HEADS,
        head_dim: D,
        scale: 0.125,
        sliding_window: None,
        softcap: None,
    };
    let kernels = CpuKernels::active();
    let mut out = vec![0f32; query.len()];
    let mut scratch = AttentionScratch::default();
    let mut evict = vec![0u8; if args.cold { 64 << 20 } else { 0 }];
    // With --cold the caches are evicted before every call, outside the timed part.
    let mut evict_caches = move || {
        evict
            .iter_mut()
            .step_by(64)
            .for_each(|b| *b = b.wrapping_add(1));
        std::hint::black_box(&evict);
    };
    let fused = cpu::install(|| {
        time_each(
            args.seconds,
            || {
                if args.cold {
                    evict_caches();
                }
            },
            || {
                kernels
                    .paged_attention(&blocks, &query, &sequences, shape, &mut out, &mut scratch)
                    .map_err(anyhow::Error::msg)
            },
        )
    })?;
    if args.skip_portable {
        return Ok((fused, None));
    }
    let device = Device::Cpu;
    let cache = LayerKvCache::zeros(
        KvCacheShape {
            num_blocks,
            block_size: BLOCK,
            num_kv_heads: KV_HEADS,
            head_dim: D,
        },
        DType::F32,
        &device,
    )?;
    let q = Tensor::from_vec(query.clone(), (n, HEADS, D), &device)?;
    let k = Tensor::from_vec(kv_row.repeat(n), (n, KV_HEADS, D), &device)?;
    let params = AttentionParams {
        scale: 0.125,
        sliding_window: None,
        softcap: None,
    };
    let portable = time(args.seconds, || {
        Portable.write_and_attend(&q, &k, &k, &cache, &sequences, params)?;
        Ok(())
    })?;
    Ok((fused, Some(portable)))
}

fn main() -> anyhow::Result<()> {
    lantern_models::pin_thread_count();
    let args = Args::parse();
    println!(
        "ISA {:?}; one layer of {HEADS} heads / {KV_HEADS} KV heads x {D}",
        CpuKernels::active().isa()
    );
    println!("| step | batch | context | portable µs | fused µs | fused GFLOP/s | speed-up |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let mut cases: Vec<(&str, usize, usize, usize)> = Vec::new();
    for &context in &args.context {
        for &batch in &args.batch {
            cases.push(("decode", batch, context, 1));
        }
    }
    cases.push(("prefill chunk", 1, 512, 512));
    for (name, batch, context, rows) in cases {
        let (fused, portable) = measure(&args, batch, context, rows)?;
        // q.k and p.v: 2 x 2 x heads x d FLOPs per visible key per query row.
        let visible: usize = (context - rows + 1..=context).sum();
        let flops = (batch * visible * HEADS * D * 4) as f64;
        let (p, speedup) = match portable {
            Some(p) => (format!("{:.0}", p * 1e6), format!("{:.1}x", p / fused)),
            None => ("-".into(), "-".into()),
        };
        println!(
            "| {name} | {batch} | {context} | {p} | {:.0} | {:.1} | {speedup} |",
            fused * 1e6,
            flops / fused / 1e9
        );
    }
    Ok(())
}
