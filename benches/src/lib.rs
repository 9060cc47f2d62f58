//! What the benchmark binaries share: timing, the read-bandwidth probe and shape arguments.

use rayon::prelude::*;
use std::time::Instant;

/// The product shapes a kernel benchmark measures, and for how long.
#[derive(Debug, clap::Args)]
pub struct ShapeArgs {
    /// (out, in) shapes; default: SmolLM2-135M's fused QKV, o_proj, gate/up, down, and head.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "960x576,576x576,3072x576,576x1536,49152x576"
    )]
    pub shapes: Vec<String>,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 0.3)]
    pub seconds: f64,
}

/// Best seconds per call of `f` over a time budget (at least one timed call after a warm-up).
pub fn best_seconds(seconds: f64, mut f: impl FnMut()) -> f64 {
    f();
    let mut best = f64::MAX;
    let started = Instant::now();
    while started.elapsed().as_secs_f64() < seconds || best == f64::MAX {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    best
}

/// `OUTxIN` (e.g. `960x576`) as `(out, in)`.
pub fn parse_shape(shape: &str) -> anyhow::Result<(usize, usize)> {
    shape
        .split_once('x')
        .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)))
        .ok_or_else(|| anyhow::anyhow!("shape {shape} is not OUTxIN"))
}

/// GB/s reading a buffer much larger than the caches, split over `threads`.
pub fn read_bandwidth(threads: usize, seconds: f64) -> f64 {
    let buffer = vec![1.0f32; 128 << 20]; // 512 MiB
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .ok();
    // 64 lanes: enough independent adds that the loop waits on memory, not on add latency.
    let sum_chunk = |chunk: &[f32]| -> f32 {
        let mut lanes = [0f32; 64];
        for c in chunk.chunks_exact(64) {
            for l in 0..64 {
                lanes[l] += c[l];
            }
        }
        lanes.iter().sum()
    };
    let run = || {
        let per = buffer.len().div_ceil(threads);
        let s: f32 = buffer.par_chunks(per).map(sum_chunk).sum();
        std::hint::black_box(s);
    };
    let t = match &pool {
        Some(pool) => pool.install(|| best_seconds(seconds, run)),
        None => best_seconds(seconds, run),
    };
    (buffer.len() * 4) as f64 / t / 1e9
}
