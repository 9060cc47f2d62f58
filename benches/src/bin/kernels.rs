//! Kernel benchmarks: the machine's roofline (read bandwidth on 1 and 2 threads, FMA peak),
//! then every SmolLM2 product shape at several row counts, today's candle path (the portable
//! `Linear`, padded for batch invariance) against the packed CPU kernels (f32 and bf16 weights).
//!
//!     cargo run --release -p lantern-benches --bin kernels [-- --rows 1,8,32]

use candle_core::{Device, Tensor};
use clap::Parser;
use lantern_benches::{best_seconds, parse_shape, read_bandwidth, ShapeArgs};
use lantern_kernels::cpu::{self, CpuKernels, Output, PackedMatrix, WeightFormat};
use lantern_models::layers::Linear;
use rayon::prelude::*;

/// Roofline and dense product benchmark of the CPU kernels against candle.
#[derive(Debug, Parser)]
struct Args {
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16,32,64,512")]
    rows: Vec<usize>,
    #[command(flatten)]
    measure: ShapeArgs,
}

fn main() -> anyhow::Result<()> {
    lantern_models::pin_thread_count();
    let args = Args::parse();
    let kernels = CpuKernels::active();
    let threads = cpu::pool().map_or(1, |p| p.current_num_threads());
    let bw1 = read_bandwidth(1, 1.0);
    let bw2 = read_bandwidth(2, 1.0);
    let peak1 = kernels.microkernel_peak_flops(1.0) / 1e9;
    let peak = cpu::install(|| {
        (0..threads)
            .into_par_iter()
            .map(|_| kernels.microkernel_peak_flops(1.0))
            .sum::<f64>()
    }) / 1e9;
    println!("ISA {:?}, {threads} threads", kernels.isa());
    println!("| roofline | value |\n|---|---:|");
    println!("| read bandwidth, 1 thread | {bw1:.1} GB/s |");
    println!("| read bandwidth, 2 threads | {bw2:.1} GB/s |");
    println!("| f32 FMA peak (microkernel in L1), 1 thread | {peak1:.1} GFLOP/s |");
    println!("| f32 FMA peak, {threads} threads | {peak:.1} GFLOP/s |");
    println!();
    println!("| shape (out x in) | rows | candle µs | f32 µs | f32 GFLOP/s | f32 GB/s | f32 % roof | bf16 µs | bf16 % roof | f32 speed-up |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let device = Device::Cpu;
    for shape in &args.measure.shapes {
        let (n, k) = parse_shape(shape)?;
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i % 97) as f32 - 48.0) / 97.0)
            .collect();
        let linear = Linear::Dense {
            weight: Tensor::from_vec(w.clone(), (n, k), &device)?,
            bias: None,
        };
        let f32_packed = PackedMatrix::pack(&w, n, k, WeightFormat::F32);
        let bf16_packed = PackedMatrix::pack(&w, n, k, WeightFormat::Bf16);
        for &rows in &args.rows {
            let x: Vec<f32> = (0..rows * k)
                .map(|i| ((i % 13) as f32 - 6.0) / 13.0)
                .collect();
            let xt = Tensor::from_vec(x.clone(), (rows, k), &device)?;
            let candle = best_seconds(args.measure.seconds, || {
                let _ = std::hint::black_box(linear.forward(&xt));
            });
            let mut out = vec![0f32; rows * n];
            let mut scratch = Vec::new();
            let mut ours = |m: &PackedMatrix| {
                cpu::install(|| {
                    best_seconds(args.measure.seconds, || {
                        kernels.matmul(&x, rows, m, &mut out, Output::Store, &mut scratch)
                    })
                })
            };
            let t32 = ours(&f32_packed);
            let t16 = ours(&bf16_packed);
            let flops = 2.0 * (rows * n * k) as f64;
            let roof = |bytes: f64| (peak * 1e9).min(bw2 * 1e9 * flops / bytes);
            let pct = |t: f64, bytes: f64| 100.0 * flops / t / roof(bytes);
            println!(
                "| {n}x{k} | {rows} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0}% | {:.1} | {:.0}% | {:.1}x |",
                candle * 1e6,
                t32 * 1e6,
                flops / t32 / 1e9,
                (n * k * 4) as f64 / t32 / 1e9,
                pct(t32, (n * k * 4) as f64),
                t16 * 1e6,
                pct(t16, (n * k * 2) as f64),
                candle / t32
            );
        }
    }
    Ok(())
}
