//! Diagnostic: time of an `(m x 576) x (576 x 1536)` f32 product for small m.
use candle_core::{Device, Tensor};
use std::time::Instant;
fn main() -> anyhow::Result<()> {
    let w = Tensor::randn(0f32, 1., (1536, 576), &Device::Cpu)?;
    for m in [1usize, 2, 4, 8, 32, 64] {
        let x = Tensor::randn(0f32, 1., (m, 576), &Device::Cpu)?;
        let started = Instant::now();
        for _ in 0..200 {
            let _ = x.matmul(&w.t()?)?;
        }
        println!(
            "m={m}: {:.3} ms",
            started.elapsed().as_secs_f64() * 1e3 / 200.0
        );
    }
    Ok(())
}
