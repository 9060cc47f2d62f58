//! The families added after the first four, written as GGUF files the way llama.cpp's
//! converter writes them (fused tensors, LongRoPE factor tensors, `<arch>.*` metadata): f32
//! gives its safetensors twin's logits, Q8_0 matrices stay within quantization error and
//! pick the same greedy tokens wherever the error cannot overturn the lead.

mod common;

use candle_core::quantized::GgmlDType;
use candle_core::Tensor;
use common::scenarios::prefill_then_decode;
use common::to_gguf::write_gguf;
use common::{assert_close, load_goldens, max_abs_diff, tiny_model_with, to_u32, TestResult};
use lantern_models::KernelPath;
use lantern_models::{load, Architecture, LoadOptions, ModelSource};

/// Each row's best token, and by how much it leads the second best.
fn best_with_margin(logits: &Tensor) -> TestResult<Vec<(usize, f32)>> {
    Ok(logits
        .to_vec2::<f32>()?
        .iter()
        .map(|row| {
            let mut order: Vec<usize> = (0..row.len()).collect();
            order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
            (order[0], row[order[0]] - row[order[1]])
        })
        .collect())
}

fn gguf_twin_matches(arch: Architecture) -> TestResult {
    // GGUF has no `query_pre_attn_scalar`: llama.cpp scales Gemma's scores by the head size
    // (but for the 27B models), so the twin uses that scale too.
    let (dir, mut model) = tiny_model_with(arch, KernelPath::Auto, &|_, config| {
        if config["query_pre_attn_scalar"].is_number() {
            config["query_pre_attn_scalar"] = config["head_dim"].clone();
        }
        Ok(())
    })?;
    let golden = load_goldens(arch)?;
    let tokens = to_u32(golden.get("decode_tokens").ok_or("decode_tokens")?)?;
    let twin = prefill_then_decode(&mut model.decoder, &tokens, 20, 16)?;
    // Q8_0 (weights and, on the integer kernels, activations in 8 bits) moves these tiny
    // models' logits (of size 3 to 30) by up to 0.18 (measured); a tensor read wrong moves them
    // by their own size.
    let largest = twin.abs()?.max_all()?.to_scalar::<f32>()?;
    for (dtype, tolerance) in [(GgmlDType::F32, None), (GgmlDType::Q8_0, Some(0.25f32))] {
        let path = dir.path().join(format!("model-{dtype:?}.gguf"));
        write_gguf(dir.path(), &path, dtype, &[])?;
        let mut gguf = load(&ModelSource::Gguf(path), &LoadOptions::cpu())?;
        let logits = prefill_then_decode(&mut gguf.decoder, &tokens, 20, 16)?;
        let what = format!("{} GGUF {dtype:?}", arch.name());
        match tolerance {
            None => assert_close(&what, &logits, &twin, 1e-4)?,
            Some(tolerance) => {
                let diff = max_abs_diff(&logits, &twin)?;
                assert!(
                    diff < tolerance,
                    "{what}: max logit difference {diff} (largest logit {largest})"
                );
                // Greedy picks agree wherever the twin's lead is beyond what the error can
                // overturn (a random model has near-ties, where quantization may flip them).
                let ours = best_with_margin(&logits)?;
                for (row, &(best, margin)) in best_with_margin(&twin)?.iter().enumerate() {
                    if margin > 2.0 * diff {
                        assert_eq!(ours[row].0, best, "{what}: row {row}, lead {margin}");
                    }
                }
            }
        }
    }
    Ok(())
}

#[test]
fn phi3_gguf_matches_its_safetensors_twin() -> TestResult {
    gguf_twin_matches(Architecture::Phi3)
}

#[test]
fn gemma2_gguf_matches_its_safetensors_twin() -> TestResult {
    gguf_twin_matches(Architecture::Gemma2)
}

#[test]
fn gemma3_gguf_matches_its_safetensors_twin() -> TestResult {
    gguf_twin_matches(Architecture::Gemma3)
}
