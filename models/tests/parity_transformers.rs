//! Our batched paged forward against Hugging Face transformers on the same tiny weights: the
//! goldens in `goldens/` were made by `goldens/make_goldens.py` (eager attention, f32).

mod common;

use common::scenarios::{chunked_prefill, mixed_batch, prefill_then_decode, split_batch};
use common::{assert_close, load_goldens, tiny_model_on, to_u32, TestResult, KERNEL_PATHS};
use lantern_models::{Architecture, KernelPath};

const TOLERANCE: f32 = 1e-4;
const CUDA_TOLERANCE: f32 = 1e-3;
const DECODE_PROMPT: usize = 20;

fn matches_transformers(arch: Architecture) -> TestResult {
    for kernels in KERNEL_PATHS {
        matches_transformers_on(arch, kernels)?;
    }
    Ok(())
}

fn matches_transformers_on(arch: Architecture, kernels: KernelPath) -> TestResult {
    let (_dir, mut model) = tiny_model_on(arch, kernels)?;
    // cuBLAS and the GPU's reductions sum in other orders than the CPU (f32 still, no TF32):
    // 1e-3 on CUDA (`LANTERN_TEST_DEVICE=cuda`) against the goldens' 1e-4 on the CPU.
    let tolerance = if model.decoder.device().is_cuda() {
        CUDA_TOLERANCE
    } else {
        TOLERANCE
    };
    let decoder = &mut model.decoder;
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
            tolerance,
        )?;
        let mixed = mixed_batch(decoder, &prompts, block_size)?;
        assert_close(
            &what("8 sequences, prefill and decode mixed"),
            &mixed,
            get("batch_logits")?,
            tolerance,
        )?;
        let whole = chunked_prefill(decoder, &long, long.len(), block_size)?;
        assert_close(
            &what("100-token prompt in one piece"),
            &whole,
            get("long_logits")?,
            tolerance,
        )?;
        let chunked = chunked_prefill(decoder, &long, 7, block_size)?;
        assert_close(
            &what("100-token prompt in chunks of 7"),
            &chunked,
            get("long_logits")?,
            tolerance,
        )?;
        // The CPU kernels' numerics contract makes chunking invisible, bit for bit.
        let tolerance = match kernels {
            KernelPath::Cpu => 0.0,
            _ => tolerance,
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

/// A Gemma 3 checkpoint with vision serves its text model: the same weights under
/// `language_model.model.` (with vision tensors beside) and the text config in `text_config`
/// give the text model's logits.
#[test]
fn gemma3_text_part_of_a_vision_checkpoint_matches_transformers() -> TestResult {
    use candle_core::{Device, Tensor};
    let (dir, _) = common::tiny_model(Architecture::Gemma3)?;
    let path = dir.path().join("model.safetensors");
    let text = candle_core::safetensors::load(&path, &Device::Cpu)?;
    let mut renamed: std::collections::HashMap<String, Tensor> = text
        .into_iter()
        .map(|(name, t)| (format!("language_model.{name}"), t))
        .collect();
    renamed.insert(
        "vision_tower.vision_model.embeddings.patch_embedding.weight".into(),
        Tensor::zeros((4, 3, 2, 2), candle_core::DType::F32, &Device::Cpu)?,
    );
    candle_core::safetensors::save(&renamed, &path)?;
    let config_path = dir.path().join("config.json");
    let text_config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path)?)?;
    let vision = serde_json::json!({
        "architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
        "text_config": text_config, "vision_config": {"model_type": "siglip_vision_model"},
    });
    std::fs::write(&config_path, vision.to_string())?;
    let mut model = lantern_models::load(
        &lantern_models::ModelSource::Directory(dir.path().to_path_buf()),
        &lantern_models::LoadOptions {
            dtype: Some(candle_core::DType::F32),
            ..lantern_models::LoadOptions::cpu()
        },
    )?;
    let golden = load_goldens(Architecture::Gemma3)?;
    let get = |name: &str| golden.get(name).ok_or(format!("golden {name} missing"));
    let decode_tokens = to_u32(get("decode_tokens")?)?;
    let decoded = prefill_then_decode(&mut model.decoder, &decode_tokens, DECODE_PROMPT, 16)?;
    assert_close(
        "gemma3 vision checkpoint's text model",
        &decoded,
        get("decode_logits")?,
        TOLERANCE,
    )
}

/// Keys and values kept in half precision on the CPU kernels, against the same goldens: the
/// rounding of each cached key and value (f16: 11 significant bits, bf16: 8) moves these tiny
/// models' logits (of size 3 to 30) by at most 0.0075 (f16) and 0.052 (bf16), measured over
/// every family, prefill and decode, mixed batches; the tolerances leave a margin of 2.5-3x.
#[test]
fn half_precision_kv_caches_stay_close_to_transformers() -> TestResult {
    use lantern_models::KvDtype;
    for (dtype, tolerance) in [
        (KvDtype::F16, F16_KV_TOLERANCE),
        (KvDtype::Bf16, BF16_KV_TOLERANCE),
    ] {
        let mut worst = 0f32;
        for arch in Architecture::ALL {
            let (_dir, mut model) = tiny_model_on(arch, KernelPath::Cpu)?;
            let decoder = &mut model.decoder;
            decoder.set_kv_cache_dtype(dtype)?;
            let golden = load_goldens(arch)?;
            let get = |name: &str| golden.get(name).ok_or(format!("golden {name} missing"));
            let decode_tokens = to_u32(get("decode_tokens")?)?;
            let prompts = split_batch(get("batch_tokens")?, get("batch_lengths")?)?;
            let decoded = prefill_then_decode(decoder, &decode_tokens, DECODE_PROMPT, 16)?;
            let mixed = mixed_batch(decoder, &prompts, 16)?;
            for (case, ours, theirs) in [
                ("prefill + decode", &decoded, get("decode_logits")?),
                ("mixed batch", &mixed, get("batch_logits")?),
            ] {
                let diff = common::max_abs_diff(ours, theirs)?;
                worst = worst.max(diff);
                assert!(
                    diff <= tolerance,
                    "{} {case} with a {dtype:?} KV cache: {diff} from transformers",
                    arch.name()
                );
            }
        }
        eprintln!("{dtype:?} KV cache: largest logit difference from transformers {worst}");
    }
    Ok(())
}

const F16_KV_TOLERANCE: f32 = 0.02;
const BF16_KV_TOLERANCE: f32 = 0.15;
