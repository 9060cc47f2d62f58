//! Llama 3.1-style GGUF files carry their rope scaling as per-frequency divisors in
//! `rope_freqs.weight` instead of metadata. The tiny Llama dummy (whose config has Llama 3
//! scaling in all three bands) written as GGUF by the library's writer, which computes those
//! divisors the way llama.cpp's converter does and writes no scaling metadata, must give
//! transformers' logits for the same weights (the goldens of `parity_transformers.rs`).

mod common;

use candle_core::quantized::GgmlDType;
use common::scenarios::{mixed_batch, prefill_then_decode, split_batch};
use common::to_gguf::write_gguf;
use common::{assert_close, load_goldens, to_u32, TestResult, GOLDEN_SEED, KERNEL_PATHS};
use lantern_models::dummy::{write_dummy_model, DummySize, DummySpec};
use lantern_models::{load, Architecture, LoadOptions, ModelSource};

#[test]
fn rope_freqs_of_a_llama31_gguf_give_transformers_logits() -> TestResult {
    let dir = tempfile::tempdir()?;
    let spec = DummySpec {
        architecture: Architecture::Llama,
        size: DummySize::Tiny,
        seed: GOLDEN_SEED,
    };
    write_dummy_model(spec, dir.path())?;
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json"))?)?;
    let factors = lantern_models::dummy::gguf::llama3_rope_factors(&config)?;
    // All three bands are exercised: kept, divided by the factor, and in between.
    assert!(
        factors.contains(&1.0) && factors.contains(&8.0),
        "{factors:?}"
    );
    assert!(factors.iter().any(|f| *f > 1.0 && *f < 8.0), "{factors:?}");
    let gguf = dir.path().join("model.gguf");
    write_gguf(dir.path(), &gguf, GgmlDType::F32, &[])?;
    let golden = load_goldens(Architecture::Llama)?;
    let get = |name: &str| golden.get(name).ok_or(format!("golden {name} missing"));
    let decode_tokens = to_u32(get("decode_tokens")?)?;
    let prompts = split_batch(get("batch_tokens")?, get("batch_lengths")?)?;
    for kernels in KERNEL_PATHS {
        let options = LoadOptions {
            dtype: Some(candle_core::DType::F32),
            kernels,
            ..LoadOptions::cpu()
        };
        let mut model = load(&ModelSource::Gguf(gguf.clone()), &options)?;
        let decoded = prefill_then_decode(&mut model.decoder, &decode_tokens, 20, 16)?;
        let what = format!("rope_freqs GGUF, {kernels:?} kernels");
        assert_close(&what, &decoded, get("decode_logits")?, 1e-4)?;
        let mixed = mixed_batch(&mut model.decoder, &prompts, 1)?;
        assert_close(&what, &mixed, get("batch_logits")?, 1e-4)?;
    }
    Ok(())
}

/// Factors that do not fit the model are refused at load, naming them.
#[test]
fn rope_freqs_of_the_wrong_length_are_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    let spec = DummySpec {
        architecture: Architecture::Llama,
        size: DummySize::Tiny,
        seed: 1,
    };
    write_dummy_model(spec, dir.path())?;
    let gguf = dir.path().join("model.gguf");
    write_gguf(
        dir.path(),
        &gguf,
        GgmlDType::F32,
        &[("rope_freqs.weight", vec![1.0; 3])],
    )?;
    let refused = load(&ModelSource::Gguf(gguf), &LoadOptions::cpu()).err();
    let message = refused.map(|e| e.to_string()).unwrap_or_default();
    assert!(message.contains("rope frequency factors"), "{message}");
    Ok(())
}
