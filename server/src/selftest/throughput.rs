//! Engine throughput without HTTP: `c` requests at once, each a random prompt and a fixed
//! number of new tokens (greedy, `ignore_eos`), for each concurrency; aggregate generated
//! tokens/s and time to first token. The model is a directory (the 8B-shaped dummy
//! `benches/gpu/make_dummy_8b.py` writes) or the `small` dummy (SmolLM2-135M's shape).

use super::load_on;
use candle_core::Device;
use lantern_engine::{start, CacheSize, EngineConfig, Event, GenerateRequest};
use lantern_models::dummy::{write_dummy_model, DummySize, DummySpec};
use lantern_models::{Architecture, KernelPath};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub struct ThroughputArgs {
    /// Model directory; unset: the `small` dummy, written to a temporary directory.
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long, value_delimiter = ',', default_value = "1,32,64")]
    concurrency: Vec<usize>,
    #[arg(long, default_value_t = 128)]
    prompt_tokens: usize,
    #[arg(long, default_value_t = 128)]
    new_tokens: usize,
}

pub fn run(device: &Device, args: &ThroughputArgs) -> anyhow::Result<Vec<Value>> {
    let scratch = tempfile::tempdir()?;
    let dir = match &args.model {
        Some(dir) => dir.clone(),
        None => {
            let spec = DummySpec {
                architecture: Architecture::Llama,
                size: DummySize::Small,
                seed: 0,
            };
            write_dummy_model(spec, scratch.path())?;
            scratch.path().to_path_buf()
        }
    };
    let model = load_on(&dir, device, None, KernelPath::Auto)?;
    let vocab = model.decoder.config().vocab_size.min(500) as u32;
    let max_concurrency = args.concurrency.iter().copied().max().unwrap_or(1);
    let block = super::block_size(&model);
    let per_sequence = (args.prompt_tokens + args.new_tokens).div_ceil(block);
    let config = EngineConfig {
        block_size: block,
        // On a GPU the cache gets what 90% of memory leaves; on the CPU just what the runs need.
        cache: if device.is_cpu() {
            CacheSize::Blocks(max_concurrency * per_sequence + 1)
        } else {
            CacheSize::DeviceMemoryUtilization(0.9)
        },
        max_num_seqs: max_concurrency,
        max_total_tokens: args.prompt_tokens + args.new_tokens,
        max_batch_prefill_tokens: (max_concurrency * args.prompt_tokens)
            .clamp(args.prompt_tokens, 2048),
        ..EngineConfig::default()
    };
    let (name, dtype, kernels) = (
        args.model
            .as_ref()
            .map_or("dummy-small".to_string(), |_| model.name.clone()),
        format!("{:?}", model.decoder.dtype()).to_lowercase(),
        model.decoder.kernels_name(),
    );
    let engine = start(model.decoder, &model.tokenizer, &config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let mut lines = Vec::new();
    for &concurrency in &args.concurrency {
        let prompts: Vec<Vec<u32>> = (0..concurrency)
            .map(|_| {
                (0..args.prompt_tokens)
                    .map(|_| rng.random_range(3..vocab))
                    .collect()
            })
            .collect();
        let started = Instant::now();
        let cpu_before = process_cpu_seconds();
        let mut ttft: Vec<Duration> = runtime.block_on(async {
            let mut tasks = Vec::new();
            for prompt in prompts {
                let mut request = GenerateRequest::greedy(prompt, args.new_tokens);
                request.ignore_eos = true;
                let mut stream = engine.submit(request)?;
                tasks.push(tokio::spawn(async move {
                    while let Some(event) = stream.recv().await {
                        match event {
                            Event::Token(_) => {}
                            Event::End(end) => return Ok(end.time_to_first_token),
                            Event::Failed(message) => anyhow::bail!(message),
                        }
                    }
                    anyhow::bail!("stream ended early")
                }));
            }
            let mut ttft = Vec::new();
            for task in tasks {
                ttft.push(task.await??);
            }
            anyhow::Ok(ttft)
        })?;
        let wall = started.elapsed().as_secs_f64();
        ttft.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        lines.push(json!({
            "check": "throughput",
            "model": name,
            "dtype": dtype,
            "kernels": kernels,
            "attention": engine.attention(),
            "device": engine.device(),
            "kv_cache_tokens": engine.limits().num_blocks * engine.limits().block_size,
            "concurrency": concurrency,
            "prompt_tokens": args.prompt_tokens,
            "new_tokens": args.new_tokens,
            "tokens_per_second": (concurrency * args.new_tokens) as f64 / wall,
            "ttft_p50_ms": ms(ttft[ttft.len() / 2]),
            "ttft_max_ms": ttft.last().copied().map_or(0.0, ms),
            "wall_seconds": wall,
            // The whole process (engine thread, tokio, the CPU sampler where it runs): how
            // much host CPU the GPU path costs per token.
            "process_cpu_seconds": process_cpu_seconds().zip(cpu_before).map(|(a, b)| a - b),
        }));
    }
    Ok(lines)
}

/// User plus system CPU time of this process so far (Linux `/proc/self/stat`, in the kernel's
/// fixed 100 ticks per second); `None` elsewhere.
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start at field 3 (state).
    let after_name = stat.rsplit_once(") ")?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}
