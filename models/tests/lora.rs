//! LoRA adapters served by the decoder against their oracle: the same base with the adapter
//! merged offline (`W + scaling · B A`, `dummy::adapter::write_merged_model`). On both
//! executions: teacher-forced log-probabilities within 1e-3 and the same greedy tokens
//! (except where the merged model's two best are within 1e-3); a zero `B` changes no bit; on
//! the CPU kernels a row's bits do not depend on the adapters of its batch mates; a GGUF base
//! (Q/K rows permuted) takes a safetensors adapter.

mod common;

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor, D};
use common::to_gguf::write_gguf;
use common::{Paged, TestResult, GOLDEN_SEED, KERNEL_PATHS};
use lantern_models::dummy::adapter::{write_dummy_adapter, write_merged_model, AdapterSpec};
use lantern_models::dummy::{write_dummy_model, DummySize, DummySpec};
use lantern_models::lora::load_adapter;
use lantern_models::{
    load, Architecture, Decoder, KernelPath, LoadOptions, LogitsWanted, ModelSource,
};
use std::path::Path;

const ADAPTER: u32 = 7;
const PROMPT: [u32; 21] = [
    1, 45, 99, 3, 250, 17, 8, 301, 77, 5, 190, 64, 12, 33, 280, 9, 140, 2, 71, 18, 222,
];

fn load_dir(dir: &Path, kernels: KernelPath) -> TestResult<Decoder> {
    let options = LoadOptions {
        dtype: Some(DType::F32),
        kernels,
        // The portable path on the suites' device (`LANTERN_TEST_DEVICE=cuda` on a GPU).
        device: match kernels {
            KernelPath::Cpu => Device::Cpu,
            _ => common::test_device(),
        },
        ..LoadOptions::cpu()
    };
    Ok(load(&ModelSource::Directory(dir.to_path_buf()), &options)?.decoder)
}

fn tiny_base(arch: Architecture, dir: &Path) -> TestResult {
    let spec = DummySpec {
        architecture: arch,
        size: DummySize::Tiny,
        seed: GOLDEN_SEED,
    };
    Ok(write_dummy_model(spec, dir)?)
}

/// Every row's log-probabilities for `tokens` prefilled in one step.
fn log_probs(decoder: &mut Decoder, tokens: &[u32], adapter: Option<u32>) -> TestResult<Tensor> {
    let mut paged = Paged::new(decoder, 16, 16)?;
    let seq = paged.add_sequence();
    let mut step = paged.step(seq, tokens, LogitsWanted::All)?;
    step.adapter = adapter;
    let logits = decoder.forward(&[step])?;
    Ok(candle_nn::ops::log_softmax(&logits, D::Minus1)?)
}

/// Greedy tokens after `prompt`, with the lead of the best over the second best at each.
fn greedy(
    decoder: &mut Decoder,
    prompt: &[u32],
    count: usize,
    adapter: Option<u32>,
) -> TestResult<Vec<(u32, f32)>> {
    let mut paged = Paged::new(decoder, 16, 16)?;
    let seq = paged.add_sequence();
    let mut feed = prompt.to_vec();
    let mut out = Vec::new();
    for _ in 0..count {
        let mut step = paged.step(seq, &feed, LogitsWanted::Last)?;
        step.adapter = adapter;
        let row = decoder.forward(&[step])?.squeeze(0)?.to_vec1::<f32>()?;
        let mut order: Vec<usize> = (0..row.len()).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
        out.push((order[0] as u32, row[order[0]] - row[order[1]]));
        feed = vec![order[0] as u32];
    }
    Ok(out)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> TestResult<f32> {
    Ok((a - b)?.abs()?.max_all()?.to_scalar::<f32>()?)
}

/// The served adapter against the merged model: log-probabilities within 1e-3, greedy
/// tokens equal up to a near tie, and the adapter visibly changing the base's output.
fn adapter_matches_merged(arch: Architecture, spec: &AdapterSpec) -> TestResult {
    let root = tempfile::tempdir()?;
    let (base_dir, adapter_dir, merged_dir) = (
        root.path().join("base"),
        root.path().join("adapter"),
        root.path().join("merged"),
    );
    tiny_base(arch, &base_dir)?;
    write_dummy_adapter(spec, &base_dir, &adapter_dir)?;
    write_merged_model(&base_dir, &adapter_dir, &merged_dir)?;
    for kernels in KERNEL_PATHS {
        let what = format!("{} {kernels:?} {:?}", arch.name(), spec.targets);
        let mut base = load_dir(&base_dir, kernels)?;
        let adapter = load_adapter(&adapter_dir, base.config(), 256)?;
        base.add_adapter(ADAPTER, &adapter)?;
        let mut merged = load_dir(&merged_dir, kernels)?;
        let served = log_probs(&mut base, &PROMPT, Some(ADAPTER))?;
        let oracle = log_probs(&mut merged, &PROMPT, None)?;
        let plain = log_probs(&mut base, &PROMPT, None)?;
        let diff = max_abs_diff(&served, &oracle)?;
        assert!(diff < 1e-3, "{what}: log-probabilities differ by {diff}");
        let moved = max_abs_diff(&plain, &oracle)?;
        assert!(
            moved > 0.05,
            "{what}: the adapter moves log-probabilities by only {moved}"
        );
        let served = greedy(&mut base, &PROMPT[..8], 12, Some(ADAPTER))?;
        let oracle = greedy(&mut merged, &PROMPT[..8], 12, None)?;
        for (i, (&(ours, _), &(theirs, lead))) in served.iter().zip(&oracle).enumerate() {
            if lead < 1e-3 {
                break; // a near tie: either pick is right, and the rest follows from it
            }
            assert_eq!(ours, theirs, "{what}: greedy token {i}");
        }
    }
    Ok(())
}

#[test]
fn all_seven_projections_rank_8_match_the_merged_model() -> TestResult {
    for arch in [
        Architecture::Llama,
        Architecture::Qwen2,
        Architecture::Qwen3,
        Architecture::Gemma2,
    ] {
        adapter_matches_merged(arch, &AdapterSpec::all_projections(8, 1))?;
    }
    Ok(())
}

/// Weights stored in bf16 (as PEFT saves them for a bf16 model) are served in bf16, exactly.
#[test]
fn bf16_adapters_match_the_merged_model() -> TestResult {
    let spec = AdapterSpec {
        bf16: true,
        ..AdapterSpec::all_projections(16, 6)
    };
    adapter_matches_merged(Architecture::Llama, &spec)
}

#[test]
fn query_and_value_rank_4_rslora_match_the_merged_model() -> TestResult {
    let spec = AdapterSpec {
        rank: 4,
        alpha: 8.0,
        rslora: true,
        targets: vec!["q_proj".into(), "v_proj".into()],
        seed: 2,
        zero_b: false,
        bf16: false,
    };
    adapter_matches_merged(Architecture::Llama, &spec)?;
    adapter_matches_merged(Architecture::Mistral, &spec)
}

#[test]
fn fused_projections_of_phi3_match_the_merged_model() -> TestResult {
    let spec = AdapterSpec {
        targets: ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
            .map(String::from)
            .to_vec(),
        ..AdapterSpec::all_projections(8, 3)
    };
    adapter_matches_merged(Architecture::Phi3, &spec)
}

#[test]
fn an_adapter_whose_b_is_zero_changes_no_bit() -> TestResult {
    let root = tempfile::tempdir()?;
    let (base_dir, adapter_dir) = (root.path().join("base"), root.path().join("adapter"));
    tiny_base(Architecture::Llama, &base_dir)?;
    let spec = AdapterSpec {
        zero_b: true,
        ..AdapterSpec::all_projections(8, 4)
    };
    write_dummy_adapter(&spec, &base_dir, &adapter_dir)?;
    for kernels in KERNEL_PATHS {
        let mut decoder = load_dir(&base_dir, kernels)?;
        let adapter = load_adapter(&adapter_dir, decoder.config(), 256)?;
        decoder.add_adapter(ADAPTER, &adapter)?;
        let with = log_probs(&mut decoder, &PROMPT, Some(ADAPTER))?.to_vec2::<f32>()?;
        let without = log_probs(&mut decoder, &PROMPT, None)?.to_vec2::<f32>()?;
        let bits = |rows: &Vec<Vec<f32>>| -> Vec<u32> {
            rows.iter().flatten().map(|v| v.to_bits()).collect()
        };
        assert_eq!(bits(&with), bits(&without), "{kernels:?}");
    }
    Ok(())
}

/// A sequence's logits on the CPU kernels: alone, then in a batch with sequences of another
/// adapter and of the base (prefilling and decoding), bit for bit.
#[test]
fn rows_do_not_depend_on_the_adapters_of_their_batch_mates() -> TestResult {
    let root = tempfile::tempdir()?;
    let base_dir = root.path().join("base");
    tiny_base(Architecture::Llama, &base_dir)?;
    let mut decoder = load_dir(&base_dir, KernelPath::Cpu)?;
    for (id, seed) in [(1u32, 11u64), (2, 12)] {
        let dir = root.path().join(format!("adapter-{id}"));
        write_dummy_adapter(&AdapterSpec::all_projections(16, seed), &base_dir, &dir)?;
        decoder.add_adapter(id, &load_adapter(&dir, decoder.config(), 256)?)?;
    }
    let prompts: [(&[u32], Option<u32>); 4] = [
        (&PROMPT[..13], Some(1)),
        (&PROMPT[3..], Some(2)),
        (&PROMPT[5..17], None),
        (&PROMPT[..9], Some(1)),
    ];
    let run = |decoder: &mut Decoder, batch: &[usize]| -> TestResult<Vec<Vec<u32>>> {
        let mut paged = Paged::new(decoder, 64, 16)?;
        let seqs: Vec<usize> = batch.iter().map(|_| paged.add_sequence()).collect();
        // Prefill all but the last token, then decode it: a mixed step each time.
        let mut out = vec![Vec::new(); batch.len()];
        for phase in 0..2 {
            let steps = batch
                .iter()
                .zip(&seqs)
                .map(|(&p, &seq)| {
                    let (prompt, adapter) = prompts[p];
                    let tokens = if phase == 0 {
                        &prompt[..prompt.len() - 1]
                    } else {
                        &prompt[prompt.len() - 1..]
                    };
                    let mut step = paged.step(seq, tokens, LogitsWanted::Last)?;
                    step.adapter = adapter;
                    Ok(step)
                })
                .collect::<TestResult<Vec<_>>>()?;
            let logits = decoder.forward(&steps)?.to_vec2::<f32>()?;
            for (row, o) in logits.iter().zip(out.iter_mut()) {
                o.extend(row.iter().map(|v| v.to_bits()));
            }
        }
        Ok(out)
    };
    let batched = run(&mut decoder, &[0, 1, 2, 3])?;
    for (i, row) in batched.iter().enumerate() {
        let alone = run(&mut decoder, &[i])?;
        assert!(alone[0] == *row, "sequence {i} differs alone and batched");
    }
    // Each adapter gives its own output (the comparison above is not vacuous).
    let under = |decoder: &mut Decoder, adapter| log_probs(decoder, &PROMPT[..13], adapter);
    let (one, two) = (under(&mut decoder, Some(1))?, under(&mut decoder, Some(2))?);
    assert!(max_abs_diff(&one, &two)? > 0.05);
    Ok(())
}

/// A GGUF base stores Q/K rows permuted for interleaved rotary: a safetensors adapter is
/// permuted to match. In f32 the GGUF base with the adapter gives the merged model's
/// log-probabilities; in Q8_0 (the CPU kernels' integer path) it stays within quantization
/// error of the merged-then-quantized twin.
#[test]
fn a_gguf_base_takes_a_safetensors_adapter() -> TestResult {
    let root = tempfile::tempdir()?;
    let (base_dir, adapter_dir, merged_dir) = (
        root.path().join("base"),
        root.path().join("adapter"),
        root.path().join("merged"),
    );
    tiny_base(Architecture::Llama, &base_dir)?;
    write_dummy_adapter(&AdapterSpec::all_projections(8, 5), &base_dir, &adapter_dir)?;
    write_merged_model(&base_dir, &adapter_dir, &merged_dir)?;
    let mut merged = load_dir(&merged_dir, KernelPath::Cpu)?;
    let oracle = log_probs(&mut merged, &PROMPT, None)?;
    // Q8_0 moves these tiny models' log-probabilities by up to ~0.1 (measured: base and
    // merged twins each quantized); a permutation left out moves them by whole units.
    for (dtype, tolerance) in [(GgmlDType::F32, 1e-3f32), (GgmlDType::Q8_0, 0.25)] {
        // Beside each directory's tokenizer.json, which the loader reads for weights-only files.
        let base_gguf = base_dir.join(format!("model-{dtype:?}.gguf"));
        let merged_gguf = merged_dir.join(format!("model-{dtype:?}.gguf"));
        write_gguf(&base_dir, &base_gguf, dtype, &[])?;
        write_gguf(&merged_dir, &merged_gguf, dtype, &[])?;
        let mut base = load(&ModelSource::Gguf(base_gguf), &LoadOptions::cpu())?.decoder;
        let adapter = load_adapter(&adapter_dir, base.config(), 256)?;
        base.add_adapter(ADAPTER, &adapter)?;
        let served = log_probs(&mut base, &PROMPT, Some(ADAPTER))?;
        let twin = load(&ModelSource::Gguf(merged_gguf), &LoadOptions::cpu())?;
        let mut twin = twin.decoder;
        let quantized_oracle = log_probs(&mut twin, &PROMPT, None)?;
        let diff = max_abs_diff(&served, &quantized_oracle)?;
        assert!(diff < tolerance, "{dtype:?}: {diff} from the merged twin");
        if dtype == GgmlDType::F32 {
            let diff = max_abs_diff(&served, &oracle)?;
            assert!(diff < 1e-3, "F32 GGUF: {diff} from the merged model");
        }
    }
    Ok(())
}
