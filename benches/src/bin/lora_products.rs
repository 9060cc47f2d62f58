//! The small products of LoRA adapters on one thread (`matmul_on_this_thread`): `A x` (a
//! rank-16 `A`, long rows) and `B (A x)` (rank-16 rows, wide outputs), in bf16 and f32, at a
//! group's 8 rows and a whole batch's 32: what an adapter adds to a step, product by product.
//!
//!     cargo run --release -p lantern-benches --bin lora_products

use lantern_kernels::cpu::{CpuKernels, PackedMatrix, WeightFormat};
use std::time::Instant;
fn main() {
    let k = CpuKernels::active();
    for (rows, n, kk, fmt) in [
        (8usize, 16usize, 576usize, WeightFormat::Bf16),
        (8, 1536, 16, WeightFormat::Bf16),
        (8, 1536, 16, WeightFormat::F32),
        (8, 16, 576, WeightFormat::F32),
        (32, 1536, 16, WeightFormat::Bf16),
    ] {
        let w: Vec<f32> = (0..n * kk).map(|i| (i % 13) as f32 * 0.01).collect();
        let p = PackedMatrix::pack(&w, n, kk, fmt);
        let x: Vec<f32> = (0..rows * kk).map(|i| (i % 7) as f32 * 0.1).collect();
        let mut out = vec![0f32; rows * n];
        let mut scratch = Vec::new();
        for _ in 0..100 {
            k.matmul_on_this_thread(&x, rows, &p, &mut out, &mut scratch);
        }
        let t = Instant::now();
        let reps = 2000;
        for _ in 0..reps {
            k.matmul_on_this_thread(&x, rows, &p, &mut out, &mut scratch);
        }
        let us = t.elapsed().as_secs_f64() * 1e6 / reps as f64;
        println!(
            "rows {rows} n {n} k {kk} {fmt:?}: {us:.2} us, {:.1} GMAC/s",
            (rows * n * kk) as f64 / us / 1e3
        );
    }
}
