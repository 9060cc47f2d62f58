//! Every family's tiny dummy on the device against the CPU's portable reference on the same
//! weights: three sequences prefilled together (lengths 37, 5 and 70: several blocks, one
//! partial), then eight decode steps of all three, every step's logits compared. f32 must
//! agree within 1e-3 (other summation orders on a GPU); bf16 rounds every product, so it is
//! judged by the argmax agreeing with the f32 reference on at least 90% of rows, and its
//! largest difference is reported. Then the same with a LoRA adapter (rank 8, all seven
//! projections) under the first and last sequences beside the base under the middle one:
//! mixed adapters in one step on the device against the CPU reference.

use super::{block_size, tiny};
use candle_core::{DType, Device, Tensor};
use lantern_models::{Architecture, Decoder, KernelPath, LogitsWanted, SequenceStep};
use serde_json::{json, Value};

const PROMPTS: [usize; 3] = [37, 5, 70];
const DECODE_STEPS: usize = 8;
const F32_TOLERANCE: f32 = 1e-3;
const BF16_TOP1: f64 = 0.9;

pub fn run(device: &Device) -> anyhow::Result<Vec<Value>> {
    let mut lines = Vec::new();
    for arch in Architecture::ALL {
        let dir = tempfile::tempdir()?;
        let reference = tiny(
            arch,
            dir.path(),
            &Device::Cpu,
            DType::F32,
            KernelPath::Portable,
        )?;
        let mut reference = reference;
        let expected = run_steps(&mut reference.decoder, 16, NO_ADAPTERS)?;
        for dtype in [DType::F32, DType::BF16] {
            let mut model = super::load_on(dir.path(), device, Some(dtype), KernelPath::Auto)?;
            let block = block_size(&model);
            let got = run_steps(&mut model.decoder, block, NO_ADAPTERS)?;
            let (max_diff, top1) = compare(&expected, &got)?;
            let pass = match dtype {
                DType::F32 => max_diff <= F32_TOLERANCE,
                _ => top1 >= BF16_TOP1,
            };
            lines.push(json!({
                "check": "parity",
                "family": arch.name(),
                "dtype": format!("{dtype:?}").to_lowercase(),
                "device": lantern_kernels::device_choice::name(device),
                "kernels": model.decoder.kernels_name(),
                "attention": model.decoder.attention_name(),
                "block_size": block,
                "max_abs_diff": max_diff,
                "top1_agreement": top1,
                "pass": pass,
            }));
        }
    }
    lines.push(lora_parity(device)?);
    Ok(lines)
}

const NO_ADAPTERS: [Option<u32>; 3] = [None; 3];
const ADAPTER: u32 = 1;

/// The tiny Llama with an adapter on every projection, sequences mixed with the base, on the
/// device in f32 against the CPU's portable reference.
fn lora_parity(device: &Device) -> anyhow::Result<Value> {
    let dir = tempfile::tempdir()?;
    let base = dir.path().join("base");
    let adapter_dir = dir.path().join("adapter");
    let mut reference = tiny(
        Architecture::Llama,
        &base,
        &Device::Cpu,
        DType::F32,
        KernelPath::Portable,
    )?;
    let spec = lantern_models::dummy::adapter::AdapterSpec::all_projections(8, 3);
    lantern_models::dummy::adapter::write_dummy_adapter(&spec, &base, &adapter_dir)?;
    let adapter =
        lantern_models::lora::load_adapter(&adapter_dir, reference.decoder.config(), 256)?;
    let mixed = [Some(ADAPTER), None, Some(ADAPTER)];
    reference.decoder.add_adapter(ADAPTER, &adapter)?;
    let expected = run_steps(&mut reference.decoder, 16, mixed)?;
    let mut model = super::load_on(&base, device, Some(DType::F32), KernelPath::Auto)?;
    model.decoder.add_adapter(ADAPTER, &adapter)?;
    let block = block_size(&model);
    let got = run_steps(&mut model.decoder, block, mixed)?;
    let (max_diff, top1) = compare(&expected, &got)?;
    Ok(json!({
        "check": "parity_lora",
        "family": Architecture::Llama.name(),
        "dtype": "f32",
        "device": lantern_kernels::device_choice::name(device),
        "kernels": model.decoder.kernels_name(),
        "adapter_bytes": model.decoder.adapter_bytes(),
        "max_abs_diff": max_diff,
        "top1_agreement": top1,
        "pass": max_diff <= F32_TOLERANCE,
    }))
}

/// Logits of every step, as f32 rows on the host.
fn run_steps(
    decoder: &mut Decoder,
    block_size: usize,
    adapters: [Option<u32>; 3],
) -> anyhow::Result<Vec<Vec<Vec<f32>>>> {
    let total: usize = PROMPTS.iter().map(|p| p + DECODE_STEPS).sum();
    let blocks_each: Vec<usize> = PROMPTS
        .iter()
        .map(|p| (p + DECODE_STEPS).div_ceil(block_size))
        .collect();
    decoder.allocate_cache(total.div_ceil(block_size) + PROMPTS.len(), block_size)?;
    let mut first = 0u32;
    let tables: Vec<Vec<u32>> = blocks_each
        .iter()
        .map(|&n| {
            let table = (first..first + n as u32).collect();
            first += n as u32;
            table
        })
        .collect();
    let vocab = decoder.config().vocab_size as u32;
    let token =
        |seq: usize, position: usize| ((seq * 131 + position * 17) as u32 % (vocab - 3)) + 3;
    let mut steps: Vec<SequenceStep> = PROMPTS
        .iter()
        .enumerate()
        .map(|(s, &len)| SequenceStep {
            tokens: (0..len).map(|p| token(s, p)).collect(),
            context_before: 0,
            block_table: tables[s].clone(),
            logits: LogitsWanted::All,
            adapter: adapters[s],
        })
        .collect();
    let mut out = vec![rows(&decoder.forward(&steps)?)?];
    for step in 0..DECODE_STEPS {
        for (s, seq) in steps.iter_mut().enumerate() {
            seq.context_before = PROMPTS[s] + step;
            seq.tokens = vec![token(s, seq.context_before)];
            seq.logits = LogitsWanted::Last;
        }
        out.push(rows(&decoder.forward(&steps)?)?);
    }
    Ok(out)
}

fn rows(logits: &Tensor) -> anyhow::Result<Vec<Vec<f32>>> {
    Ok(logits.to_dtype(DType::F32)?.to_vec2::<f32>()?)
}

/// Largest absolute difference, and the share of rows whose argmax agrees.
fn compare(expected: &[Vec<Vec<f32>>], got: &[Vec<Vec<f32>>]) -> anyhow::Result<(f32, f64)> {
    let (mut max_diff, mut agree, mut total) = (0f32, 0usize, 0usize);
    for (a_step, b_step) in expected.iter().zip(got) {
        anyhow::ensure!(a_step.len() == b_step.len(), "row counts differ");
        for (a, b) in a_step.iter().zip(b_step) {
            for (x, y) in a.iter().zip(b) {
                max_diff = max_diff.max((x - y).abs());
            }
            total += 1;
            agree += usize::from(argmax(a) == argmax(b));
        }
    }
    Ok((max_diff, agree as f64 / total.max(1) as f64))
}

fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &x)| {
            if x > best.1 {
                (i, x)
            } else {
                best
            }
        })
        .0
}
