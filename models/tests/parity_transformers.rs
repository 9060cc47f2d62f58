//! Our batched paged forward against Hugging Face transformers on the same tiny weights: the
//! goldens in `goldens/` were made by `goldens/make_goldens.py` (eager attention, f32).

mod common;

use common::scenarios::{chunked_prefill, mixed_batch, prefill_then_decode, split_batch};
use common::{assert_close, load_goldens, tiny_model_on, to_u32, TestResult, KERNEL_PATHS};
use lantern_models::{Architecture, KernelPath};

const TOLERANCE: f32 = 1e-4;
const DECODE_PROMPT: usize = 20;

fn matches_transformers(arch: Architecture) -> TestResult {
    for kernels in KERNEL_PATHS {
        matches_transformers_on(arch, kernels)?;
    }
    Ok(())
}

fn matches_transformers_on(arch: Architecture, kernels: KernelPath) -> TestResult {
    let (_dir, model) = tiny_model_on(arch, kernels)?;
    let decoder = &model.decoder;
    let golden = load_goldens(arch)?;
    let get = |name: &str| golden.get(name).ok_or(format!("golden {name} missing"));
    let decode_tokens = to_u32(get("decode_tokens")?)?;
    let prompts = split_batch(get("batch_tokens")?, get("batch_lengths")?)?;
    let long = to_u32(get("long_tokens")?)?;
    for block_size in [1, 16] {
        let what = |case: &str| {
            format!(
                "{} {case}, block size {block_size}, {kernels:?} kernels",
                arch.name()
            )
        };
        let decoded = prefill_then_decode(decoder, &decode_tokens, DECODE_PROMPT, block_size)?;
        assert_close(
            &what("prefill + 16 decode steps"),
            &decoded,
            get("decode_logits")?,
            TOLERANCE,
        )?;
        let mixed = mixed_batch(decoder, &prompts, block_size)?;
        assert_close(
            &what("8 sequences, prefill and decode mixed"),
            &mixed,
            get("batch_logits")?,
            TOLERANCE,
        )?;
        let whole = chunked_prefill(decoder, &long, long.len(), block_size)?;
        assert_close(
            &what("100-token prompt in one piece"),
            &whole,
            get("long_logits")?,
            TOLERANCE,
        )?;
        let chunked = chunked_prefill(decoder, &long, 7, block_size)?;
        assert_close(
            &what("100-token prompt in chunks of 7"),
            &chunked,
            get("long_logits")?,
            TOLERANCE,
        )?;
        // The CPU kernels' numerics contract makes chunking invisible, bit for bit.
        let tolerance = match kernels {
            KernelPath::Cpu => 0.0,
            _ => TOLERANCE,
        };
        assert_close(
            &what("chunks of 7 vs one piece"),
            &chunked,
            &whole,
            tolerance,
        )?;
    }
    Ok(())
}

#[test]
fn llama_matches_transformers() -> TestResult {
    matches_transformers(Architecture::Llama)
}

#[test]
fn mistral_matches_transformers() -> TestResult {
    matches_transformers(Architecture::Mistral)
}

#[test]
fn qwen2_matches_transformers() -> TestResult {
    matches_transformers(Architecture::Qwen2)
}

#[test]
fn qwen3_matches_transformers() -> TestResult {
    matches_transformers(Architecture::Qwen3)
}

#[test]
fn phi3_matches_transformers() -> TestResult {
    matches_transformers(Architecture::Phi3)
}

#[test]
fn gemma2_matches_transformers() -> TestResult {
    matches_transformers(Architecture::Gemma2)
}

#[test]
fn gemma3_matches_transformers() -> TestResult {
    matches_transformers(Architecture::Gemma3)
}
