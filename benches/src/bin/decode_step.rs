//! One decode step, taken apart: a batch of sequences with a given context runs decode steps
//! through `Decoder::forward` (no engine, no sampling), with time per phase of the CPU
//! forward pass and the number of heap allocations per step.
//!
//!     cargo run --release -p lantern-benches --bin decode_step -- --model DIR_OR_GGUF \
//!         [--batch 1,32] [--context 160] [--kernels cpu|portable] [--quantized] \
//!         [--adapters DIR,DIR,...]
//!
//! With `--adapters` (PEFT LoRA directories), each batch runs twice: the base alone, then the
//! sequences spread over the adapters in turn (what adapters cost a step).

use clap::Parser;
use lantern_models::{
    load, Dequantize, KernelPath, LoadOptions, LogitsWanted, ModelSource, SequenceStep,
};
use rand::{Rng, SeedableRng};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// The system allocator, counting allocations.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call to the system allocator unchanged.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long)]
    model: String,
    #[arg(long, value_delimiter = ',', default_value = "1,32")]
    batch: Vec<usize>,
    /// Tokens of context each sequence has when the measured steps start.
    #[arg(long, default_value_t = 160)]
    context: usize,
    #[arg(long, default_value_t = 20)]
    steps: usize,
    #[arg(long, default_value = "cpu")]
    kernels: String,
    #[arg(long, default_value_t = 16)]
    block_size: usize,
    /// Keep GGUF blocks quantized (the integer kernels) instead of expanding them to f32.
    #[arg(long)]
    quantized: bool,
    /// What the KV cache stores: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    kv_cache_dtype: String,
    /// LoRA adapter directories: each batch runs again with its sequences spread over them.
    #[arg(long, value_delimiter = ',')]
    adapters: Vec<std::path::PathBuf>,
}

fn main() -> anyhow::Result<()> {
    lantern_models::pin_thread_count();
    let args = Args::parse();
    let options = LoadOptions {
        dequantize: if args.quantized {
            Dequantize::Auto
        } else {
            Dequantize::On
        },
        kernels: KernelPath::parse(&args.kernels)
            .ok_or_else(|| anyhow::anyhow!("--kernels is auto, cpu or portable"))?,
        ..LoadOptions::cpu()
    };
    let mut model = load(&ModelSource::resolve(&args.model, None)?, &options)?;
    let decoder = &mut model.decoder;
    let kv_dtype = lantern_models::KvDtype::parse(&args.kv_cache_dtype)
        .ok_or_else(|| anyhow::anyhow!("--kv-cache-dtype is f32, f16 or bf16"))?;
    decoder.set_kv_cache_dtype(kv_dtype)?;
    let vocab = decoder.config().vocab_size as u32;
    let block_size = args.block_size;
    println!(
        "model {} ({}), kernels {}, KV cache {}, block size {block_size}, context {} + {} steps",
        args.model,
        decoder.config().architecture.name(),
        decoder.kernels_name(),
        decoder.kv_cache_dtype_name(),
        args.context,
        args.steps
    );
    for (id, dir) in args.adapters.iter().enumerate() {
        let adapter = lantern_models::lora::load_adapter(dir, decoder.config(), 1024)?;
        decoder.add_adapter(id as u32, &adapter)?;
    }
    println!("| batch | adapters | ms/step | tokens/s | allocations/step | phases (ms/step) |");
    println!("|---:|---:|---:|---:|---:|---|");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let adapter_counts = if args.adapters.is_empty() {
        vec![0]
    } else {
        vec![0, args.adapters.len()]
    };
    let runs: Vec<(usize, usize)> = args
        .batch
        .iter()
        .flat_map(|&batch| adapter_counts.iter().map(move |&a| (batch, a)))
        .collect();
    let mut single_step = None;
    for (batch, adapters) in runs {
        let adapter_of = |s: usize| (adapters > 0).then(|| (s % adapters) as u32);
        let per_seq = (args.context + args.steps + 1).div_ceil(block_size);
        decoder.allocate_cache(batch * per_seq, block_size)?;
        let tables: Vec<Vec<u32>> = (0..batch)
            .map(|s| ((s * per_seq) as u32..((s + 1) * per_seq) as u32).collect())
            .collect();
        // Prefill every sequence's context, a few sequences per call.
        for (first, group) in tables.chunks(4).enumerate() {
            let steps: Vec<SequenceStep> = group
                .iter()
                .enumerate()
                .map(|(i, table)| SequenceStep {
                    tokens: (0..args.context)
                        .map(|_| rng.random_range(3..vocab))
                        .collect(),
                    context_before: 0,
                    block_table: table.clone(),
                    logits: LogitsWanted::Last,
                    adapter: adapter_of(first * 4 + i),
                })
                .collect();
            decoder.forward(&steps)?;
        }
        let step_at = |position: usize, rng: &mut rand_chacha::ChaCha8Rng| -> Vec<SequenceStep> {
            tables
                .iter()
                .enumerate()
                .map(|(s, table)| SequenceStep {
                    tokens: vec![rng.random_range(3..vocab)],
                    context_before: position,
                    block_table: table.clone(),
                    logits: LogitsWanted::Last,
                    adapter: adapter_of(s),
                })
                .collect()
        };
        // One unmeasured step lets buffers reach their size.
        decoder.forward(&step_at(args.context, &mut rng))?;
        decoder.record_phases(true);
        let mut allocations = 0;
        let mut elapsed = 0.0;
        for i in 1..args.steps {
            let steps = step_at(args.context + i, &mut rng);
            let before = ALLOCATIONS.load(Ordering::Relaxed);
            let started = Instant::now();
            let logits = decoder.forward(&steps)?;
            elapsed += started.elapsed().as_secs_f64();
            allocations += ALLOCATIONS.load(Ordering::Relaxed) - before;
            drop(logits);
        }
        let measured = (args.steps - 1) as f64;
        if (batch, adapters) == (1, 0) {
            single_step = Some(elapsed / measured);
        }
        let phases = decoder
            .phase_times()
            .map(|(phases, steps)| {
                phases
                    .iter()
                    .map(|(name, t)| format!("{name} {:.2}", t.as_secs_f64() * 1e3 / steps as f64))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_else(|| "-".into());
        decoder.record_phases(false);
        println!(
            "| {batch} | {adapters} | {:.2} | {:.1} | {:.1} | {phases} |",
            elapsed * 1e3 / measured,
            batch as f64 * measured / elapsed,
            allocations as f64 / measured
        );
    }
    if let Some(bytes) = decoder.weight_bytes() {
        println!("weights read per step: {:.1} MB", bytes as f64 / 1e6);
        if let Some(seconds) = single_step {
            // The bound of a one-sequence step: every weight byte read once, at the rate a
            // plain read of a buffer larger than the caches reaches on the same threads.
            let threads = lantern_kernels::cpu::pool().map_or(1, |p| p.current_num_threads());
            let probe = lantern_benches::read_bandwidth(threads, 1.0);
            let rate = bytes as f64 / seconds / 1e9;
            println!(
                "one sequence: {rate:.1} GB/s of weights, {:.0}% of the read probe ({probe:.1} GB/s on {threads} threads, measured now)",
                100.0 * rate / probe
            );
        }
    }
    Ok(())
}
