//! What the benchmark binaries share: timing and shape arguments.

use std::time::Instant;

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
