//! The integer kernels of GGUF-quantized products (`lantern_kernels::cpu::quant`): every
//! format on SmolLM2-135M's product shapes at several row counts. At one row a product streams
//! its weights once: GB/s of weight bytes against the measured read bandwidth. At 32 rows it
//! is compute-bound: integer operations per second against the kernel's own peak on one panel
//! that stays in L1. Weights of up to ~30 MB stay in this machine's L3 between calls, so the
//! one-row figures of all but the largest shapes exceed the DRAM bandwidth.
//!
//!     cargo run --release -p lantern-benches --bin quant_kernels [-- --rows 1,8,32,64]

use candle_core::quantized::QTensor;
use candle_core::{Device, Tensor};
use clap::Parser;
use lantern_benches::{best_seconds, parse_shape, read_bandwidth, ShapeArgs};
use lantern_kernels::cpu::{self, CpuKernels, Output, PackedMatrix, QuantFormat};
use rayon::prelude::*;

/// Benchmark of the integer kernels for GGUF-quantized products.
#[derive(Debug, Parser)]
struct Args {
    #[arg(long, value_delimiter = ',', default_value = "1,8,32,64")]
    rows: Vec<usize>,
    /// The kernels to measure: the CPU's best (default), or avx2 / scalar where it has them.
    #[arg(long)]
    isa: Option<String>,
    #[command(flatten)]
    measure: ShapeArgs,
}

fn quantized(format: QuantFormat, n: usize, k: usize) -> anyhow::Result<PackedMatrix> {
    let w: Vec<f32> = (0..n * k)
        .map(|i| ((i * 7919 % 97) as f32 - 48.0) / 97.0)
        .collect();
    let blocks = QTensor::quantize(
        &Tensor::from_vec(w, (n, k), &Device::Cpu)?,
        format.ggml_dtype(),
    )?;
    PackedMatrix::quantized(format, &blocks.data()?, n, k).map_err(anyhow::Error::msg)
}

/// Seconds per call of `rows` rows through `w`, on the kernels' pool.
fn product_time(kernels: CpuKernels, w: &PackedMatrix, rows: usize, seconds: f64) -> f64 {
    let k = w.in_features();
    let x: Vec<f32> = (0..rows * k)
        .map(|i| ((i % 13) as f32 - 6.0) / 13.0)
        .collect();
    let mut out = vec![0f32; rows * w.out_features()];
    let mut scratch = Vec::new();
    cpu::install(|| {
        best_seconds(seconds, || {
            kernels.matmul(&x, rows, w, &mut out, Output::Store, &mut scratch)
        })
    })
}

fn main() -> anyhow::Result<()> {
    lantern_models::pin_thread_count();
    let args = Args::parse();
    let kernels = match &args.isa {
        None => CpuKernels::active(),
        Some(name) => cpu::Isa::ALL
            .into_iter()
            .find(|isa| isa.name() == name)
            .and_then(CpuKernels::for_isa)
            .ok_or_else(|| anyhow::anyhow!("no {name} kernels on this CPU"))?,
    };
    let threads = cpu::pool().map_or(1, |p| p.current_num_threads());
    let bandwidth = read_bandwidth(threads, 1.0);
    println!(
        "ISA {:?}, {threads} threads; read bandwidth {bandwidth:.1} GB/s",
        kernels.isa()
    );
    println!();
    let peak = cpu::install(|| {
        (0..threads)
            .into_par_iter()
            .map(|_| kernels.quant_peak_ops(1.0))
            .sum::<f64>()
    }) / 1e9;
    println!("integer kernel peak (one panel in L1, 4 rows, every thread): {peak:.0} GOP/s");
    println!();
    println!("| format | shape (out x in) | rows | µs | GB/s of weights | % of bandwidth | GOP/s | % of kernel peak |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for format in QuantFormat::ALL {
        for shape in &args.measure.shapes {
            let (n, k) = parse_shape(shape)?;
            if !k.is_multiple_of(format.gguf_block_values()) {
                // SmolLM2's K = 576 is not whole super-blocks: its GGUF uses the 32-value formats.
                println!(
                    "| {} | {n}x{k} | – | not whole blocks of {} | | | | |",
                    format.name(),
                    format.gguf_block_values()
                );
                continue;
            }
            let w = quantized(format, n, k)?;
            let bytes = w.weight_bytes() as f64;
            for &rows in &args.rows {
                let t = product_time(kernels, &w, rows, args.measure.seconds);
                let gbs = bytes / t / 1e9;
                let gops = 2.0 * (rows * n * k) as f64 / t / 1e9;
                println!(
                    "| {} | {n}x{k} | {rows} | {:.1} | {gbs:.1} | {:.0}% | {gops:.0} | {:.0}% |",
                    format.name(),
                    t * 1e6,
                    100.0 * gbs / bandwidth,
                    100.0 * gops / peak
                );
            }
        }
    }
    Ok(())
}
