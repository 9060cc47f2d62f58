//! Engine benchmark (no HTTP): `c` requests submitted at once, each a short random prompt and
//! 128 new tokens with `ignore_eos`, greedy. Reports aggregate generated tokens/s and time to
//! first token per concurrency, plus the machine's measured f32 matmul peak and how much of it
//! batched decoding reaches (2 x parameters FLOPs per token).
//!
//!     cargo run --release -p lantern-benches --bin engine -- --model DIR_OR_GGUF

use anyhow::Context;
use candle_core::{Device, Tensor};
use clap::Parser;
use lantern_engine::{start, CacheSize, EngineConfig, Event, GenerateRequest};
use lantern_kernels::device_choice::DeviceChoice;
use lantern_models::{load, Dequantize, KernelPath, LoadOptions, ModelSource};
use rand::{Rng, SeedableRng};
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
struct Args {
    /// Model directory or GGUF file.
    #[arg(long)]
    model: String,
    #[arg(long, value_delimiter = ',', default_value = "1,8,32,64")]
    concurrency: Vec<usize>,
    #[arg(long, default_value_t = 128)]
    new_tokens: usize,
    #[arg(long, default_value_t = 32)]
    prompt_tokens: usize,
    /// GGUF weights expanded to f32 (the CPU default when they fit).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    dequantize: bool,
    /// auto (CPU kernels when possible), cpu or portable.
    #[arg(long, default_value = "auto")]
    kernels: String,
    /// Weights dtype: f32 or bf16 (unset: the loader's default).
    #[arg(long)]
    dtype: Option<String>,
    /// auto, cpu, cuda or cuda:N (as `lantern serve --device`).
    #[arg(long, default_value = "auto")]
    device: String,
}

struct Run {
    concurrency: usize,
    wall: Duration,
    generated: usize,
    ttft: Vec<Duration>,
}

fn main() -> anyhow::Result<()> {
    lantern_models::pin_thread_count();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    let source = ModelSource::resolve(&args.model, None)?;
    let opened = DeviceChoice::parse(&args.device)
        .and_then(DeviceChoice::open)
        .map_err(anyhow::Error::msg)?;
    let device = opened.device;
    let options = LoadOptions {
        device: device.clone(),
        dequantize: if args.dequantize {
            Dequantize::On
        } else {
            Dequantize::Off
        },
        dtype: match args.dtype.as_deref() {
            None => None,
            Some("f32") => Some(candle_core::DType::F32),
            Some("bf16") => Some(candle_core::DType::BF16),
            Some(other) => anyhow::bail!("--dtype {other}: f32 or bf16"),
        },
        kernels: KernelPath::parse(&args.kernels)
            .ok_or_else(|| anyhow::anyhow!("--kernels is auto, cpu or portable"))?,
        ..LoadOptions::cpu()
    };
    let model = load(&source, &options).with_context(|| format!("loading {}", args.model))?;
    let params = model.decoder.config().num_parameters();
    let vocab = model
        .decoder
        .config()
        .vocab_size
        .min(model.tokenizer.tokenizer.get_vocab_size(true)) as u32;
    let max_concurrency = args.concurrency.iter().copied().max().unwrap_or(1);
    // The block size `lantern serve` picks on this device.
    let block_size = lantern_kernels::device_choice::default_block_size(&device);
    let config = EngineConfig {
        block_size,
        cache: if device.is_cpu() {
            CacheSize::Blocks(
                max_concurrency * (args.prompt_tokens + args.new_tokens).div_ceil(block_size) + 16,
            )
        } else {
            CacheSize::DeviceMemoryUtilization(0.9)
        },
        max_num_seqs: max_concurrency,
        max_batch_prefill_tokens: 512,
        ..EngineConfig::default()
    };
    let kernels_name = model.decoder.kernels_name();
    let dtype = model.decoder.dtype();
    let engine = start(model.decoder, &model.tokenizer, &config)?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let mut runs = Vec::new();
    for &concurrency in &args.concurrency {
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..concurrency {
            let prompt: Vec<u32> = (0..args.prompt_tokens)
                .map(|_| rng.random_range(3..vocab))
                .collect();
            let mut request = GenerateRequest::greedy(prompt, args.new_tokens);
            request.ignore_eos = true;
            let mut stream = engine.submit(request)?;
            tasks.push(tokio::spawn(async move {
                let mut generated = 0;
                while let Some(event) = stream.recv().await {
                    match event {
                        Event::Token(_) => generated += 1,
                        Event::End(end) => return Ok((generated, end.time_to_first_token)),
                        Event::Failed(message) => return Err(anyhow::anyhow!(message)),
                    }
                }
                Err(anyhow::anyhow!("stream ended early"))
            }));
        }
        let mut run = Run {
            concurrency,
            wall: Duration::ZERO,
            generated: 0,
            ttft: Vec::new(),
        };
        for task in tasks {
            let (generated, ttft) = task.await??;
            run.generated += generated;
            run.ttft.push(ttft);
        }
        run.wall = started.elapsed();
        run.ttft.sort();
        eprintln!(
            "concurrency {concurrency}: {:.1} tokens/s",
            run.generated as f64 / run.wall.as_secs_f64()
        );
        runs.push(run);
    }
    let peak = matmul_peak_gflops(&device)?;
    println!(
        "model: {} ({:.1} M parameters), prompt {} tokens, {} new tokens, greedy, ignore_eos",
        args.model,
        params as f64 / 1e6,
        args.prompt_tokens,
        args.new_tokens
    );
    println!(
        "device {}, kernels {}, attention {}, weights {:?}; f32 matmul peak measured here \
         (candle): {peak:.1} GFLOP/s",
        lantern_kernels::device_choice::name(&device),
        kernels_name,
        engine.attention(),
        dtype
    );
    println!(
        "| concurrency | tokens/s | x vs 1 | TTFT p50 (ms) | TTFT max (ms) | % of matmul peak |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    let base = runs
        .first()
        .map(|r| r.generated as f64 / r.wall.as_secs_f64())
        .unwrap_or(1.0);
    for run in &runs {
        let rate = run.generated as f64 / run.wall.as_secs_f64();
        let p50 = run.ttft[run.ttft.len() / 2].as_secs_f64() * 1e3;
        let max = run.ttft.last().map_or(0.0, |d| d.as_secs_f64() * 1e3);
        let flops = rate * 2.0 * params as f64 / 1e9;
        println!(
            "| {} | {rate:.1} | {:.2} | {p50:.0} | {max:.0} | {:.0}% |",
            run.concurrency,
            rate / base,
            100.0 * flops / peak
        );
    }
    Ok(())
}

/// GFLOP/s of a (64 x 576) x (576 x 1536) f32 product, best of several rounds.
fn matmul_peak_gflops(device: &Device) -> anyhow::Result<f64> {
    let (m, k, n) = (64usize, 576usize, 1536usize);
    let a = Tensor::randn(0f32, 1., (m, k), device)?;
    let b = Tensor::randn(0f32, 1., (k, n), device)?;
    let mut best = f64::MAX;
    for _ in 0..5 {
        let started = Instant::now();
        for _ in 0..50 {
            let _ = a.matmul(&b)?;
        }
        // A GPU queues the products: wait for them before reading the clock.
        device.synchronize()?;
        best = best.min(started.elapsed().as_secs_f64() / 50.0);
    }
    Ok(2.0 * (m * k * n) as f64 / best / 1e9)
}
