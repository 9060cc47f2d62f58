//! `--quantize` on dummy checkpoints: the CPU integer kernels against candle's `QMatMul` on the
//! same blocks (candle also quantizes activations, to Q8_0 or Q8_K blocks, with its scale
//! rounded to f16 where ours stays f32), over a prefill and 16 decode steps. Q8_0 everywhere
//! (and the weights held shrink to its size); Q4_K with its fallback to Q4_0 where a matrix's
//! input is not whole super-blocks; and a Q4_K_M-like mix (Q4_K, V in Q6_K, Q8_0 down), whose
//! query, key and value of different formats stack into one product.

mod common;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Tensor};
use common::{Paged, TestResult};
use lantern_models::config::DecoderConfig;
use lantern_models::dummy::{write_dummy_model, DummySize, DummySpec};
use lantern_models::layers::Linear;
use lantern_models::weights::{Naming, QuantBlocks, SafetensorsWeights, WeightSource};
use lantern_models::{
    load, Architecture, Decoder, KernelPath, LoadOptions, LogitsWanted, ModelSource, QuantFormat,
};

/// Which GGUF type a matrix is quantized to, from its name and input size (`None`: dense).
type Pick = fn(&str, usize) -> Option<GgmlDType>;

/// Which side a [`Picked`] source feeds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    /// candle's `QMatMul`s on the portable path: the reference.
    Candle,
    /// GGUF blocks for the CPU integer kernels, as a file holding them would give them.
    Ours,
}

/// The checkpoint's matrices quantized to the blocks `pick` chooses, for one side.
struct Picked<'a> {
    inner: &'a SafetensorsWeights,
    pick: Pick,
    side: Side,
}

impl WeightSource for Picked<'_> {
    fn naming(&self) -> Naming {
        self.inner.naming()
    }

    fn dense(&self, name: &str, shape: &[usize]) -> lantern_models::Result<Tensor> {
        self.inner.dense(name, shape)
    }

    fn linear(
        &self,
        name: &str,
        out_in: (usize, usize),
        bias: bool,
    ) -> lantern_models::Result<Linear> {
        let linear = self.inner.linear(name, out_in, bias)?;
        let (Side::Candle, Some(dtype), Linear::Dense { weight, bias }) =
            (self.side, (self.pick)(name, out_in.1), &linear)
        else {
            return Ok(linear);
        };
        let blocks = QTensor::quantize(&weight.to_dtype(DType::F32)?, dtype)?;
        Ok(Linear::Quantized {
            weight: QMatMul::from_qtensor(blocks)?,
            bias: bias.clone(),
        })
    }

    fn quantized_blocks(
        &self,
        name: &str,
        (out, inp): (usize, usize),
    ) -> lantern_models::Result<Option<QuantBlocks<'_>>> {
        let (Side::Ours, Some(dtype)) = (self.side, (self.pick)(name, inp)) else {
            return Ok(None);
        };
        let format = QuantFormat::from_ggml(dtype)
            .ok_or_else(|| lantern_models::ModelError::Kernels(format!("{dtype:?}")))?;
        let dense = self.inner.dense(name, &[out, inp])?.to_dtype(DType::F32)?;
        let blocks = QTensor::quantize(&dense, dtype)?;
        Ok(Some(QuantBlocks {
            format,
            data: blocks.data()?.into_owned().into(),
        }))
    }
}

/// Logits of a 40-token prefill, then of 16 single-token decode steps.
fn run(decoder: &mut Decoder, tokens: &[u32]) -> TestResult<Vec<Vec<f32>>> {
    let mut paged = Paged::new(decoder, 64, 16)?;
    let seq = paged.add_sequence();
    let mut rows = Vec::new();
    let (prompt, rest) = tokens.split_at(40);
    for input in std::iter::once(prompt).chain(rest.chunks(1)) {
        let logits = decoder.forward(&[paged.step(seq, input, LogitsWanted::Last)?])?;
        rows.push(logits.flatten_all()?.to_vec1::<f32>()?);
    }
    Ok(rows)
}

/// A dummy checkpoint of `size` in a temporary directory, opened as safetensors.
struct Checkpoint {
    dir: tempfile::TempDir,
    config: DecoderConfig,
    weights: SafetensorsWeights,
}

impl Checkpoint {
    fn new(size: DummySize) -> TestResult<Self> {
        let dir = tempfile::tempdir()?;
        let spec = DummySpec {
            architecture: Architecture::Qwen2,
            size,
            seed: 9,
        };
        write_dummy_model(spec, dir.path())?;
        let config_path = dir.path().join("config.json");
        let config =
            DecoderConfig::from_hf_str(&std::fs::read_to_string(&config_path)?, &config_path)?;
        let weights = SafetensorsWeights::open(
            &[dir.path().join("model.safetensors")],
            DType::F32,
            &Device::Cpu,
        )?;
        Ok(Self {
            dir,
            config,
            weights,
        })
    }

    fn source(&self) -> ModelSource {
        ModelSource::Directory(self.dir.path().to_path_buf())
    }

    fn options(&self, quantize: Option<QuantFormat>) -> LoadOptions {
        LoadOptions {
            dtype: Some(DType::F32),
            kernels: KernelPath::Cpu,
            quantize,
            ..LoadOptions::cpu()
        }
    }

    /// candle's portable decoder over `QMatMul`s of the blocks `pick` chooses.
    fn candle_reference(&self, pick: Pick) -> TestResult<Decoder> {
        let weights = Picked {
            inner: &self.weights,
            pick,
            side: Side::Candle,
        };
        Ok(Decoder::load(
            self.config.clone(),
            &weights,
            DType::F32,
            &Device::Cpu,
            KernelPath::Portable,
        )?)
    }
}

/// `ours` against candle's `reference` on the same blocks, and both against the unquantized
/// `exact`: the largest logit difference from candle stays within `tolerance` of the largest
/// logit, and ours is about as close to the unquantized model as candle's.
fn compare(
    ours: &mut Decoder,
    reference: &mut Decoder,
    exact: &mut Decoder,
    tolerance: f32,
) -> TestResult {
    let tokens: Vec<u32> = (0..56u32).map(|i| (i * 37 + 11) % 500 + 3).collect();
    let (got, expected, exact) = (
        run(ours, &tokens)?,
        run(reference, &tokens)?,
        run(exact, &tokens)?,
    );
    let max_diff = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max)
    };
    let mut worst = 0f32;
    for (step, ((g, e), x)) in got.iter().zip(&expected).zip(&exact).enumerate() {
        let scale = e.iter().fold(0f32, |m, v| m.max(v.abs()));
        let (diff, ours_off, candle_off) = (max_diff(g, e), max_diff(g, x), max_diff(e, x));
        worst = worst.max(diff / scale);
        eprintln!("step {step}: vs candle {diff:.4}, ours vs f32 {ours_off:.4}, candle vs f32 {candle_off:.4}, scale {scale:.2}");
        assert!(
            diff <= tolerance * scale,
            "step {step}: max diff {diff} (largest logit {scale})"
        );
        assert!(
            ours_off <= 2.5 * candle_off.max(1e-3),
            "step {step}: {ours_off} vs {candle_off}"
        );
    }
    eprintln!("largest difference from candle's QMatMul: {worst:.2e} of the largest logit");
    Ok(())
}

#[test]
fn q8_0_at_load_matches_candles_qmatmul_on_the_same_blocks() -> TestResult {
    let checkpoint = Checkpoint::new(DummySize::Tiny)?;
    let source = checkpoint.source();
    let mut ours = load(&source, &checkpoint.options(Some(QuantFormat::Q8_0)))?;
    let formats = ours.decoder.weight_formats();
    assert!(
        formats.iter().all(|(_, format)| format == "q8_0"),
        "every matrix in Q8_0: {formats:?}"
    );
    let mut dense = load(&source, &checkpoint.options(None))?;
    let (q8_bytes, f32_bytes) = (
        ours.decoder.weight_bytes().unwrap_or(0),
        dense.decoder.weight_bytes().unwrap_or(0),
    );
    eprintln!("weights held: q8_0 {q8_bytes} bytes, f32 {f32_bytes} bytes");
    // Q8_0 is 34 bytes per 32 values against f32's 128; norms stay f32.
    assert!(
        (q8_bytes as f64) < 0.3 * f32_bytes as f64,
        "{q8_bytes} vs {f32_bytes}"
    );
    let mut reference = checkpoint.candle_reference(|_, _| Some(GgmlDType::Q8_0))?;
    // Tolerance: 5% of the largest logit against candle's own Q8_0 product. Both carry
    // activation quantization noise, 1-2% of the largest logit on this random tiny model
    // (measured: at most 3.1% apart), independent of each other.
    compare(&mut ours.decoder, &mut reference, &mut dense.decoder, 0.05)
}

#[test]
fn q4_k_at_load_falls_back_to_q4_0_where_rows_are_not_whole_super_blocks() -> TestResult {
    // Hidden size 256 (whole super-blocks), intermediate 320 (not): only `down` falls back.
    let checkpoint = Checkpoint::new(DummySize::TinyWide)?;
    let source = checkpoint.source();
    let mut ours = load(&source, &checkpoint.options(Some(QuantFormat::Q4K)))?;
    let formats = ours.decoder.weight_formats();
    for (class, format) in &formats {
        let expected = if *class == "mlp_down" { "q4_0" } else { "q4_k" };
        assert_eq!(format, expected, "{class}: {formats:?}");
    }
    let mut dense = load(&source, &checkpoint.options(None))?;
    let (q4_bytes, f32_bytes) = (
        ours.decoder.weight_bytes().unwrap_or(0),
        dense.decoder.weight_bytes().unwrap_or(0),
    );
    eprintln!("weights held: q4_k {q4_bytes} bytes, f32 {f32_bytes} bytes");
    // Q4_K panels hold 6 bits a value (4.5 in the file), Q4_0 4.5: under a fifth of f32.
    assert!(
        (q4_bytes as f64) < 0.2 * f32_bytes as f64,
        "{q4_bytes} vs {f32_bytes}"
    );
    let mut reference = checkpoint.candle_reference(|_, inp| {
        Some(if inp.is_multiple_of(256) {
            GgmlDType::Q4K
        } else {
            GgmlDType::Q4_0
        })
    })?;
    // Candle quantizes activations for Q4_K to Q8_K (one scale per 256 values) and ours per
    // 32, and the embeddings it looks up stay dense where ours read the quantized table:
    // more independent noise than with Q8_0 weights, hence the wider bound.
    compare(&mut ours.decoder, &mut reference, &mut dense.decoder, 0.08)
}

/// A Q4_K_M-like mix: Q4_K matrices, the value projection in Q6_K, `down` (320 inputs) in Q8_0;
/// the (tied) embeddings stay dense, so that both sides look up the same rows and differ only
/// in how they quantize activations.
fn q4_k_m_mix(name: &str, inp: usize) -> Option<GgmlDType> {
    if name.contains("embed_tokens") {
        return None;
    }
    Some(if !inp.is_multiple_of(256) {
        GgmlDType::Q8_0
    } else if name.contains("v_proj") {
        GgmlDType::Q6K
    } else {
        GgmlDType::Q4K
    })
}

#[test]
fn q4_k_m_mix_stacks_query_key_and_value_of_different_formats() -> TestResult {
    let checkpoint = Checkpoint::new(DummySize::TinyWide)?;
    let mut ours = Decoder::load(
        checkpoint.config.clone(),
        &Picked {
            inner: &checkpoint.weights,
            pick: q4_k_m_mix,
            side: Side::Ours,
        },
        DType::F32,
        &Device::Cpu,
        KernelPath::Cpu,
    )?;
    let formats = ours.weight_formats();
    let format_of = |class: &str| {
        formats
            .iter()
            .find(|(c, _)| *c == class)
            .map(|(_, f)| f.clone())
    };
    // Query and key in Q4_K over a Q6_K value: one product, not expanded to f32.
    assert_eq!(
        format_of("attention_qkv").as_deref(),
        Some("q4_k+q6_k"),
        "{formats:?}"
    );
    assert_eq!(
        format_of("mlp_down").as_deref(),
        Some("q8_0"),
        "{formats:?}"
    );
    let mut dense = load(&checkpoint.source(), &checkpoint.options(None))?;
    let mut reference = checkpoint.candle_reference(q4_k_m_mix)?;
    // Same weights on both sides: only the activations' quantization differs (per 32 values
    // here, per 256 with Q8_K in candle's K-format products).
    compare(&mut ours, &mut reference, &mut dense.decoder, 0.04)
}
