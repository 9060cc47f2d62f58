//! `lantern selftest` (hidden): the checks a GPU machine runs on this very binary, so that
//! the CUDA kernels are linked once and no Rust toolchain is needed there
//! (`benches/gpu/verify.sh`). Each check prints one JSON object per line and exits non-zero
//! if any line failed. They run on the CPU too (`--device cpu`), as a dry run of the script.
//!
//! - `parity`: every family's tiny dummy on the device against the CPU reference (f32 within
//!   1e-3; bf16 by top-1 agreement), prefill and decode mixed in one batch.
//! - `engine`: greedy requests through the engine whole, in prefill chunks, and under
//!   preemption (a cache too small for all of them): the same tokens.
//! - `throughput`: aggregate tokens/s and time to first token at several concurrencies.

mod engine_checks;
mod parity;
mod throughput;

use anyhow::Context;
use lantern_kernels::device_choice::DeviceChoice;
use lantern_models::dummy::{write_dummy_model, DummySize, DummySpec};
use lantern_models::{load, Architecture, KernelPath, LoadOptions, LoadedModel, ModelSource};
use std::path::Path;

#[derive(Debug, clap::Args)]
pub struct SelftestArgs {
    #[command(subcommand)]
    check: Check,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, global = true, default_value = "auto")]
    device: String,
}

#[derive(Debug, clap::Subcommand)]
enum Check {
    Parity,
    Engine(engine_checks::EngineArgs),
    Throughput(throughput::ThroughputArgs),
}

pub fn run(args: SelftestArgs) -> anyhow::Result<()> {
    let opened = DeviceChoice::parse(&args.device)
        .map_err(anyhow::Error::msg)?
        .open()
        .map_err(anyhow::Error::msg)?;
    let device = opened.device;
    let lines = match args.check {
        Check::Parity => parity::run(&device)?,
        Check::Engine(engine) => engine_checks::run(&device, &engine)?,
        Check::Throughput(throughput) => throughput::run(&device, &throughput)?,
    };
    let mut failed = 0;
    for line in &lines {
        println!("{line}");
        if line.get("pass") == Some(&serde_json::Value::Bool(false)) {
            failed += 1;
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {} checks failed", lines.len());
    }
    Ok(())
}

/// Writes the tiny dummy of `arch` into `dir` and loads it on `device` in `dtype`.
fn tiny(
    arch: Architecture,
    dir: &Path,
    device: &candle_core::Device,
    dtype: candle_core::DType,
    kernels: KernelPath,
) -> anyhow::Result<LoadedModel> {
    let spec = DummySpec {
        architecture: arch,
        size: DummySize::Tiny,
        seed: 7,
    };
    write_dummy_model(spec, dir)?;
    load_on(dir, device, Some(dtype), kernels)
}

fn load_on(
    dir: &Path,
    device: &candle_core::Device,
    dtype: Option<candle_core::DType>,
    kernels: KernelPath,
) -> anyhow::Result<LoadedModel> {
    let options = LoadOptions {
        device: device.clone(),
        dtype,
        kernels,
        ..LoadOptions::cpu()
    };
    let source = ModelSource::resolve(&dir.to_string_lossy(), None)?;
    load(&source, &options).with_context(|| format!("loading {}", dir.display()))
}

/// The block size `serve` picks on the model's device.
fn block_size(model: &LoadedModel) -> usize {
    lantern_kernels::device_choice::default_block_size(model.decoder.device())
}
