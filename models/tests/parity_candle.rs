//! Our batched paged forward against candle-transformers' own model of each family, on the
//! same tiny weights. candle's models take one sequence and keep a private cache, so each
//! sequence runs through them alone; they return the last position's logits.

mod common;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::{gemma2, gemma3, llama, mistral, phi3, qwen2, qwen3};
use common::scenarios::{chunked_prefill, mixed_batch, prefill_then_decode, split_batch};
use common::{assert_close, load_goldens, tiny_model_with, to_u32, TestResult, KERNEL_PATHS};
use lantern_models::{Architecture, KernelPath};
use std::path::Path;

const TOLERANCE: f32 = 1e-4;
const DECODE_PROMPT: usize = 20;

/// One candle-transformers model behind one interface.
enum Reference {
    Llama(llama::Llama, llama::Cache, llama::Config),
    Mistral(mistral::Model),
    Qwen2(qwen2::ModelForCausalLM),
    Qwen3(qwen3::ModelForCausalLM),
    Phi3(phi3::Model),
    Gemma2(gemma2::Model),
    Gemma3(gemma3::Model),
}

impl Reference {
    fn load(arch: Architecture, dir: &Path) -> TestResult<Self> {
        let config = std::fs::read_to_string(dir.join("config.json"))?;
        let device = Device::Cpu;
        // SAFETY: test-only mmap of a file this test wrote and nobody else touches.
        #[allow(unsafe_code)]
        let vb = unsafe {
            VarBuilder::from_mmaped_safetensors(
                &[dir.join("model.safetensors")],
                DType::F32,
                &device,
            )?
        };
        Ok(match arch {
            Architecture::Llama => {
                let cfg = serde_json::from_str::<llama::LlamaConfig>(&config)?.into_config(false);
                let cache = llama::Cache::new(true, DType::F32, &cfg, &device)?;
                Self::Llama(llama::Llama::load(vb, &cfg)?, cache, cfg)
            }
            Architecture::Mistral => {
                Self::Mistral(mistral::Model::new(&serde_json::from_str(&config)?, vb)?)
            }
            Architecture::Qwen2 => Self::Qwen2(qwen2::ModelForCausalLM::new(
                &serde_json::from_str(&config)?,
                vb,
            )?),
            Architecture::Qwen3 => Self::Qwen3(qwen3::ModelForCausalLM::new(
                &serde_json::from_str(&config)?,
                vb,
            )?),
            Architecture::Phi3 => {
                Self::Phi3(phi3::Model::new(&serde_json::from_str(&config)?, vb)?)
            }
            Architecture::Gemma2 => Self::Gemma2(gemma2::Model::new(
                false,
                &serde_json::from_str(&config)?,
                vb,
            )?),
            Architecture::Gemma3 => Self::Gemma3(gemma3::Model::new(
                false,
                &serde_json::from_str(&config)?,
                vb,
            )?),
        })
    }

    fn reset(&mut self) -> TestResult {
        match self {
            Self::Llama(_, cache, cfg) => {
                *cache = llama::Cache::new(true, DType::F32, cfg, &Device::Cpu)?
            }
            Self::Mistral(m) => m.clear_kv_cache(),
            Self::Qwen2(m) => m.clear_kv_cache(),
            Self::Qwen3(m) => m.clear_kv_cache(),
            Self::Phi3(m) => m.clear_kv_cache(),
            Self::Gemma2(m) => m.clear_kv_cache(),
            Self::Gemma3(m) => m.clear_kv_cache(),
        }
        Ok(())
    }

    /// Appends `tokens` at `offset`; returns the last position's logits as `(1, vocab)`.
    fn forward(&mut self, tokens: &[u32], offset: usize) -> TestResult<Tensor> {
        let input = Tensor::new(tokens, &Device::Cpu)?.unsqueeze(0)?;
        let logits = match self {
            Self::Llama(m, cache, _) => m.forward(&input, offset, cache)?,
            Self::Mistral(m) => m.forward(&input, offset)?,
            Self::Qwen2(m) => m.forward(&input, offset)?,
            Self::Qwen3(m) => m.forward(&input, offset)?,
            Self::Phi3(m) => m.forward(&input, offset)?,
            Self::Gemma2(m) => m.forward(&input, offset)?,
            Self::Gemma3(m) => m.forward(&input, offset)?,
        };
        Ok(logits.flatten_all()?.unsqueeze(0)?.to_dtype(DType::F32)?)
    }
}

fn matches_candle(arch: Architecture) -> TestResult {
    for kernels in KERNEL_PATHS {
        matches_candle_on(arch, kernels)?;
    }
    Ok(())
}

/// The dummy model as candle's model of the family can take it, leaving out what candle does
/// not implement or does differently (the transformers goldens cover those):
/// - phi3 multiplies the frequencies by LongRoPE's factors where transformers divides, leaves
///   out the attention factor, and has no sliding window;
/// - gemma2 and gemma3 scale scores by the head size, ignoring `query_pre_attn_scalar`;
/// - gemma3 has no rope scaling, reads the layer pattern from `sliding_window_pattern`, and
///   appends a non-contiguous value tensor to its KV cache, which fails for a prompt of more
///   than one token unless there is one KV head: the model keeps its first KV head only.
fn comparable_with_candle(
    arch: Architecture,
) -> impl Fn(&Path, &mut serde_json::Value) -> TestResult {
    move |dir, config| {
        match arch {
            Architecture::Phi3 => {
                config["rope_scaling"] = serde_json::Value::Null;
                config["sliding_window"] = serde_json::json!(4096);
            }
            Architecture::Gemma2 => {
                config["query_pre_attn_scalar"] = config["head_dim"].clone();
            }
            Architecture::Gemma3 => {
                config["query_pre_attn_scalar"] = config["head_dim"].clone();
                config["rope_scaling"] = serde_json::Value::Null;
                config["sliding_window_pattern"] = serde_json::json!(2);
                keep_first_kv_head(dir, config)?;
            }
            _ => {}
        }
        Ok(())
    }
}

/// Rewrites the model in `dir` with one KV head: the first rows of each K and V projection.
fn keep_first_kv_head(dir: &Path, config: &mut serde_json::Value) -> TestResult {
    let head_dim = config["head_dim"].as_u64().ok_or("head_dim")? as usize;
    config["num_key_value_heads"] = serde_json::json!(1);
    let path = dir.join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu)?;
    for (name, tensor) in tensors.iter_mut() {
        if name.ends_with("k_proj.weight") || name.ends_with("v_proj.weight") {
            *tensor = tensor.narrow(0, 0, head_dim)?.contiguous()?;
        }
    }
    candle_core::safetensors::save(&tensors, &path)?;
    Ok(())
}

fn matches_candle_on(arch: Architecture, kernels: KernelPath) -> TestResult {
    let (dir, mut model) = tiny_model_with(arch, kernels, &comparable_with_candle(arch))?;
    let decoder = &mut model.decoder;
    let mut reference = Reference::load(arch, dir.path())?;
    // The token sequences of the goldens are a convenient seeded source of prompts.
    let golden = load_goldens(arch)?;
    let get = |name: &str| golden.get(name).ok_or(format!("golden {name} missing"));
    let decode_tokens = to_u32(get("decode_tokens")?)?;
    let prompts = split_batch(get("batch_tokens")?, get("batch_lengths")?)?;
    let long = to_u32(get("long_tokens")?)?;

    let mut expected_decode = vec![reference.forward(&decode_tokens[..DECODE_PROMPT], 0)?];
    for (position, &token) in decode_tokens.iter().enumerate().skip(DECODE_PROMPT) {
        expected_decode.push(reference.forward(&[token], position)?);
    }
    let expected_decode = Tensor::cat(&expected_decode, 0)?;
    let mut expected_batch = Vec::new();
    for prompt in &prompts {
        reference.reset()?;
        let (head, last) = prompt.split_at(prompt.len() - 1);
        expected_batch.push(reference.forward(head, 0)?);
        expected_batch.push(reference.forward(last, head.len())?);
    }
    let expected_batch = Tensor::cat(&expected_batch, 0)?;
    reference.reset()?;
    let expected_long_last = reference.forward(&long, 0)?;

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
            &expected_decode,
            TOLERANCE,
        )?;
        let mixed = mixed_batch(decoder, &prompts, block_size)?;
        assert_close(
            &what("8 sequences, prefill and decode mixed"),
            &mixed,
            &expected_batch,
            TOLERANCE,
        )?;
        let chunked = chunked_prefill(decoder, &long, 7, block_size)?;
        let whole = chunked_prefill(decoder, &long, long.len(), block_size)?;
        assert_close(
            &what("chunks of 7 vs one piece"),
            &chunked,
            &whole,
            TOLERANCE,
        )?;
        // candle's Mistral and Gemma masks let a query see `sliding_window + 1` keys where
        // transformers (and we) see `sliding_window` (and its gemma2 slides on every layer);
        // past the window of the tiny models (64) only the transformers goldens are the
        // authority.
        let window_differs = matches!(
            arch,
            Architecture::Mistral | Architecture::Gemma2 | Architecture::Gemma3
        );
        if !window_differs {
            let last = chunked.narrow(0, long.len() - 1, 1)?;
            assert_close(
                &what("100-token prompt in chunks of 7"),
                &last,
                &expected_long_last,
                TOLERANCE,
            )?;
        }
    }
    Ok(())
}

#[test]
fn llama_matches_candle() -> TestResult {
    matches_candle(Architecture::Llama)
}

#[test]
fn mistral_matches_candle() -> TestResult {
    matches_candle(Architecture::Mistral)
}

#[test]
fn qwen2_matches_candle() -> TestResult {
    matches_candle(Architecture::Qwen2)
}

#[test]
fn qwen3_matches_candle() -> TestResult {
    matches_candle(Architecture::Qwen3)
}

#[test]
fn phi3_matches_candle() -> TestResult {
    matches_candle(Architecture::Phi3)
}

#[test]
fn gemma2_matches_candle() -> TestResult {
    matches_candle(Architecture::Gemma2)
}

#[test]
fn gemma3_matches_candle() -> TestResult {
    matches_candle(Architecture::Gemma3)
}
