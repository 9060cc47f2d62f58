//! Greedy requests through the engine on the device, three ways: whole prompts in one step
//! (the reference), prompts cut into 16-token prefill chunks, and a cache too small for all
//! of them at once (sequences are preempted and recomputed). On the CPU the tokens must be
//! the same bits; on a GPU, where cuBLAS picks kernels by shape, at least 90% of requests must
//! give the same tokens (and the share is reported).

use super::{block_size, tiny};
use candle_core::{DType, Device};
use lantern_engine::{start, CacheSize, EngineConfig, Event, GenerateRequest};
use lantern_models::{Architecture, KernelPath};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

#[derive(Debug, clap::Args)]
pub struct EngineArgs {
    /// Requests per run.
    #[arg(long, default_value_t = 12)]
    requests: usize,
    /// f32 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: String,
}

const NEW_TOKENS: usize = 24;
const MAX_TOTAL_TOKENS: usize = 200;

pub fn run(device: &Device, args: &EngineArgs) -> anyhow::Result<Vec<Value>> {
    let dtype = match args.dtype.as_str() {
        "f32" => DType::F32,
        "bf16" => DType::BF16,
        other => anyhow::bail!("--dtype {other}: f32 or bf16"),
    };
    let dir = tempfile::tempdir()?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    let prompts: Vec<Vec<u32>> = (0..args.requests)
        .map(|_| {
            let len = rng.random_range(1..=150);
            (0..len).map(|_| rng.random_range(3..500)).collect()
        })
        .collect();
    // `room`: how many whole sequences (200 tokens each) the cache holds.
    let run = |prefill: usize, room: usize| -> anyhow::Result<(Vec<Vec<u32>>, u64)> {
        let model = tiny(
            Architecture::Llama,
            dir.path(),
            device,
            dtype,
            KernelPath::Auto,
        )?;
        let block = block_size(&model);
        let config = EngineConfig {
            block_size: block,
            cache: CacheSize::Blocks(room * MAX_TOTAL_TOKENS.div_ceil(block)),
            max_batch_prefill_tokens: prefill.min(room * MAX_TOTAL_TOKENS),
            max_num_seqs: args.requests,
            max_total_tokens: MAX_TOTAL_TOKENS,
            ..EngineConfig::default()
        };
        let engine = start(model.decoder, &model.tokenizer, &config)?;
        let runtime = tokio::runtime::Builder::new_current_thread().build()?;
        let tokens = runtime.block_on(async {
            let streams = prompts
                .iter()
                .map(|p| {
                    let mut request = GenerateRequest::greedy(p.clone(), NEW_TOKENS);
                    request.ignore_eos = true;
                    engine.submit(request)
                })
                .collect::<Result<Vec<_>, _>>()?;
            let mut out = Vec::new();
            for mut stream in streams {
                let mut tokens = Vec::new();
                while let Some(event) = stream.recv().await {
                    match event {
                        Event::Token(token) => tokens.push(token.id),
                        Event::End(_) => break,
                        Event::Failed(message) => anyhow::bail!(message),
                    }
                }
                out.push(tokens);
            }
            Ok(out)
        })?;
        Ok((tokens, engine.stats().preemptions))
    };
    let (whole, _) = run(1024, args.requests)?;
    let (chunked, _) = run(16, args.requests)?;
    // Room for three sequences at a time: the rest wait or are preempted.
    let (preempted, preemptions) = run(1024, 3)?;
    let required = if device.is_cpu() { 1.0 } else { 0.9 };
    let line = |name: &str, got: &[Vec<u32>], extra: Value| {
        let same = whole.iter().zip(got).filter(|(a, b)| a == b).count();
        let share = same as f64 / whole.len().max(1) as f64;
        json!({
            "check": name,
            "device": lantern_kernels::device_choice::name(device),
            "dtype": args.dtype,
            "requests": whole.len(),
            "identical_requests": same,
            "detail": extra,
            "pass": share >= required,
        })
    };
    Ok(vec![
        line("chunked_prefill", &chunked, json!({"chunk_tokens": 16})),
        line(
            "preemption",
            &preempted,
            json!({"preemptions": preemptions}),
        ),
    ])
}
