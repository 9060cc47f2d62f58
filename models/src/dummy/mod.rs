//! `lantern dummy-model`: a complete Hugging Face model directory made from a seed, for tests
//! and for load-testing a deployment without downloading weights (vLLM's "dummy" load format).
//!
//! Same arguments, byte-identical files: weights come from a ChaCha8 stream (whose output
//! rand_chacha guarantees across versions), JSON is written with sorted keys, and the
//! tokenizer is a byte-level BPE trained on `corpus.txt`, which is kept in the repository.

use crate::config::Architecture;
use crate::error::{ModelError, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use safetensors::tensor::{Dtype, TensorView};
use serde_json::{json, Value};
use std::path::Path;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, TokenizerBuilder};

pub mod adapter;
pub mod gguf;
mod templates;
pub use templates::chat_template;

const CORPUS: &str = include_str!("corpus.txt");

/// The English prose the dummy tokenizer is trained on (also the benchmark's input-grounded
/// documents: `lantern benchmark --dataset edit|summarize`).
pub fn corpus() -> &'static str {
    CORPUS
}
pub const SPECIAL_TOKENS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
const TOKENIZER_VOCAB: usize = 512;

/// How big the dummy model is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DummySize {
    /// A few hundred KB: for tests.
    Tiny,
    /// SmolLM2-135M's shape (135M parameters, bf16): for benchmarks.
    Small,
    /// A few MB with a hidden size of 256 (whole super-blocks of GGUF's K formats) and an
    /// intermediate size of 320 (not whole): for tests of the K formats and their fallback.
    TinyWide,
    /// Llama-3.2-1B's shape (16 layers, hidden 2048, 32 query and 8 KV heads, FFN 8192, tied
    /// head) with SmolLM2's 49,152-token vocabulary, bf16: the realistic CPU benchmark model.
    OneB,
}

impl DummySize {
    /// Test sizes turn on every config toggle their family has; benchmark sizes are plain.
    fn is_test_size(self) -> bool {
        matches!(self, Self::Tiny | Self::TinyWide)
    }
}

#[derive(Debug, Clone, Copy)]
pub struct DummySpec {
    pub architecture: Architecture,
    pub size: DummySize,
    pub seed: u64,
}

struct Shape {
    vocab: usize,
    hidden: usize,
    intermediate: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    dtype: Dtype,
}

impl DummySize {
    fn shape(self) -> Shape {
        match self {
            Self::Tiny => Shape {
                vocab: TOKENIZER_VOCAB,
                hidden: 64,
                intermediate: 128,
                layers: 2,
                heads: 4,
                kv_heads: 2,
                head_dim: 16,
                dtype: Dtype::F32,
            },
            Self::TinyWide => Shape {
                vocab: TOKENIZER_VOCAB,
                hidden: 256,
                intermediate: 320,
                layers: 2,
                heads: 4,
                kv_heads: 2,
                head_dim: 64,
                dtype: Dtype::F32,
            },
            Self::Small => Shape {
                vocab: 49152,
                hidden: 576,
                intermediate: 1536,
                layers: 30,
                heads: 9,
                kv_heads: 3,
                head_dim: 64,
                dtype: Dtype::BF16,
            },
            Self::OneB => Shape {
                vocab: 49152,
                hidden: 2048,
                intermediate: 8192,
                layers: 16,
                heads: 32,
                kv_heads: 8,
                head_dim: 64,
                dtype: Dtype::BF16,
            },
        }
    }
}

/// Writes `config.json`, `model.safetensors`, `tokenizer.json`, `tokenizer_config.json` and
/// `generation_config.json` into `out` (created if needed).
pub fn write_dummy_model(spec: DummySpec, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| ModelError::file(out, e))?;
    let shape = spec.size.shape();
    let config = config_json(spec, &shape);
    write_json(&out.join("config.json"), &config)?;
    write_weights(spec, &shape, &config, &out.join("model.safetensors"))?;
    write_tokenizer(&out.join("tokenizer.json"))?;
    write_json(
        &out.join("tokenizer_config.json"),
        &tokenizer_config_json(spec.architecture),
    )?;
    write_json(
        &out.join("generation_config.json"),
        &json!({"bos_token_id": 1, "eos_token_id": [2, 0], "max_new_tokens": 256}),
    )
}

/// The same model as one GGUF file at `out` in llama.cpp's layout, matrices in f16 (what
/// `llama-quantize` takes), with the tokenizer metadata `tokenizer` names.
pub fn write_dummy_gguf(
    spec: DummySpec,
    out: &Path,
    tokenizer: gguf::GgufTokenizer<'_>,
) -> Result<()> {
    // A vocabulary that cannot fit is refused before a large model is written out.
    gguf::check_tokenizer(tokenizer, spec.size.shape().vocab)?;
    let staging = out.with_extension("safetensors.tmp");
    write_dummy_model(spec, &staging)?;
    let written = gguf::write_gguf(
        &staging,
        out,
        candle_core::quantized::GgmlDType::F16,
        &[],
        tokenizer,
    );
    let _ = std::fs::remove_dir_all(&staging);
    written
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| ModelError::file(path, e))?;
    std::fs::write(path, text + "\n").map_err(|e| ModelError::file(path, e))
}

/// A config every reader accepts: transformers, candle-transformers and ours. Each family gets
/// the toggles that exercise its differences (Llama 3 rope scaling, a sliding window shorter
/// than the test prompts, Qwen2 biases, Qwen3 q/k norm, tied or separate heads, Phi-3's fused
/// projections and LongRoPE, Gemma's sandwich norms, GELU, scalings and soft-caps, Gemma 3's
/// local and global rotary).
fn config_json(spec: DummySpec, s: &Shape) -> Value {
    let tiny = spec.size.is_test_size();
    let arch = spec.architecture;
    let class = match arch {
        Architecture::Llama => "LlamaForCausalLM",
        Architecture::Mistral => "MistralForCausalLM",
        Architecture::Qwen2 => "Qwen2ForCausalLM",
        Architecture::Qwen3 => "Qwen3ForCausalLM",
        Architecture::Phi3 => "Phi3ForCausalLM",
        Architecture::Gemma2 => "Gemma2ForCausalLM",
        Architecture::Gemma3 => "Gemma3ForCausalLM",
    };
    let tie = match arch {
        Architecture::Llama | Architecture::Mistral => !tiny,
        Architecture::Qwen2 | Architecture::Qwen3 | Architecture::Gemma2 | Architecture::Gemma3 => {
            true
        }
        Architecture::Phi3 => false,
    };
    let mut config = json!({
        "architectures": [class],
        "model_type": arch.name(),
        "vocab_size": s.vocab,
        "hidden_size": s.hidden,
        "intermediate_size": s.intermediate,
        "num_hidden_layers": s.layers,
        "num_attention_heads": s.heads,
        "num_key_value_heads": s.kv_heads,
        "head_dim": s.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5,
        "rope_theta": if tiny { 10000.0 } else { 100000.0 },
        "tie_word_embeddings": tie,
        "attention_bias": false,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": if s.dtype == Dtype::F32 { "float32" } else { "bfloat16" },
        "use_sliding_window": false,
        "max_window_layers": s.layers,
    });
    let window = match arch {
        Architecture::Mistral
        | Architecture::Phi3
        | Architecture::Gemma2
        | Architecture::Gemma3
            if tiny =>
        {
            json!(64)
        }
        Architecture::Mistral => Value::Null,
        Architecture::Phi3 => json!(2047),
        _ => json!(4096),
    };
    config["sliding_window"] = window;
    if arch == Architecture::Phi3 {
        // LongRoPE with distinct short and long factors; the original length is above every
        // parity prompt (transformers switches a whole sequence to the long factors past it,
        // Lantern each position: config.rs), and the context stretch gives an attention
        // factor above 1.
        let half = s.head_dim / 2;
        let short: Vec<f64> = (0..half).map(|i| 1.0 + 0.05 * i as f64).collect();
        let long: Vec<f64> = (0..half).map(|i| 1.0 + 0.5 * i as f64).collect();
        config["rope_scaling"] =
            json!({"type": "longrope", "short_factor": short, "long_factor": long});
        config["original_max_position_embeddings"] = json!(128);
        // transformers' Phi-3 default (32000) lies outside the dummy vocabulary.
        config["pad_token_id"] = json!(0);
    }
    if matches!(arch, Architecture::Gemma2 | Architecture::Gemma3) {
        let gelu = json!("gelu_pytorch_tanh");
        config["hidden_act"] = gelu.clone();
        config["hidden_activation"] = gelu;
        config["pad_token_id"] = json!(0);
        // Not the head size, so that the scale is really read from here.
        config["query_pre_attn_scalar"] = json!(if tiny { 24 } else { s.head_dim });
        // One sliding layer and one full one (Gemma 2 alternates; Gemma 3 has five of six
        // sliding, which two layers cannot show).
        let types: Vec<&str> = (0..s.layers)
            .map(|l| {
                if l % 2 == 0 {
                    "sliding_attention"
                } else {
                    "full_attention"
                }
            })
            .collect();
        config["layer_types"] = json!(types);
        if arch == Architecture::Gemma2 {
            // Caps the tiny model's scores and logits actually reach.
            config["attn_logit_softcapping"] = json!(if tiny { 2.0 } else { 50.0 });
            config["final_logit_softcapping"] = json!(if tiny { 3.0 } else { 30.0 });
        } else {
            config["attn_logit_softcapping"] = Value::Null;
            config["final_logit_softcapping"] = Value::Null;
            config["rope_theta"] = json!(1_000_000.0);
            config["rope_local_base_freq"] = json!(10_000.0);
            config["rope_scaling"] = json!({"rope_type": "linear", "factor": 8.0});
        }
    }
    if arch == Architecture::Llama && tiny {
        // Scaled so that head_dim 16 has frequencies in all three Llama 3 bands.
        config["rope_scaling"] = json!({
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64
        });
    }
    config
}

fn tokenizer_config_json(architecture: Architecture) -> Value {
    let added: serde_json::Map<String, Value> = SPECIAL_TOKENS
        .iter()
        .enumerate()
        .map(|(id, t)| {
            (
                id.to_string(),
                json!({"content": t, "lstrip": false, "normalized": false, "rstrip": false,
                       "single_word": false, "special": true}),
            )
        })
        .collect();
    json!({
        "added_tokens_decoder": added,
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "chat_template": chat_template(architecture),
        "clean_up_tokenization_spaces": false,
        "model_max_length": 8192,
        "tokenizer_class": "PreTrainedTokenizerFast",
    })
}

/// Every tensor the config implies, with its shape, in a fixed order.
fn tensor_shapes(spec: DummySpec, s: &Shape, config: &Value) -> Vec<(String, Vec<usize>)> {
    let (q, kv) = (s.heads * s.head_dim, s.kv_heads * s.head_dim);
    let mut shapes = vec![(
        "model.embed_tokens.weight".to_string(),
        vec![s.vocab, s.hidden],
    )];
    for l in 0..s.layers {
        let p = format!("model.layers.{l}");
        shapes.push((format!("{p}.input_layernorm.weight"), vec![s.hidden]));
        shapes.push((
            format!("{p}.post_attention_layernorm.weight"),
            vec![s.hidden],
        ));
        let gemma = matches!(
            spec.architecture,
            Architecture::Gemma2 | Architecture::Gemma3
        );
        if gemma {
            for norm in ["pre_feedforward_layernorm", "post_feedforward_layernorm"] {
                shapes.push((format!("{p}.{norm}.weight"), vec![s.hidden]));
            }
        }
        let fused = spec.architecture == Architecture::Phi3;
        if fused {
            shapes.push((
                format!("{p}.self_attn.qkv_proj.weight"),
                vec![q + 2 * kv, s.hidden],
            ));
        }
        for (name, out) in [("q_proj", q), ("k_proj", kv), ("v_proj", kv)] {
            if fused {
                break;
            }
            shapes.push((format!("{p}.self_attn.{name}.weight"), vec![out, s.hidden]));
            if spec.architecture == Architecture::Qwen2 {
                shapes.push((format!("{p}.self_attn.{name}.bias"), vec![out]));
            }
        }
        shapes.push((format!("{p}.self_attn.o_proj.weight"), vec![s.hidden, q]));
        if matches!(
            spec.architecture,
            Architecture::Qwen3 | Architecture::Gemma3
        ) {
            shapes.push((format!("{p}.self_attn.q_norm.weight"), vec![s.head_dim]));
            shapes.push((format!("{p}.self_attn.k_norm.weight"), vec![s.head_dim]));
        }
        if fused {
            shapes.push((
                format!("{p}.mlp.gate_up_proj.weight"),
                vec![2 * s.intermediate, s.hidden],
            ));
        } else {
            shapes.push((
                format!("{p}.mlp.gate_proj.weight"),
                vec![s.intermediate, s.hidden],
            ));
            shapes.push((
                format!("{p}.mlp.up_proj.weight"),
                vec![s.intermediate, s.hidden],
            ));
        }
        shapes.push((
            format!("{p}.mlp.down_proj.weight"),
            vec![s.hidden, s.intermediate],
        ));
    }
    shapes.push(("model.norm.weight".into(), vec![s.hidden]));
    if config["tie_word_embeddings"] == json!(false) {
        shapes.push(("lm_head.weight".into(), vec![s.vocab, s.hidden]));
    }
    shapes
}

/// Values with a scale that keeps activations near unit size, so logits are far from uniform
/// and greedy decoding is stable: norms near 1 (Gemma stores them as offsets from 1: near 0),
/// weights ~ U(±sqrt(3/fan_in)), biases small.
fn sample_tensor(
    rng: &mut ChaCha8Rng,
    name: &str,
    shape: &[usize],
    norm_offsets: bool,
) -> Vec<f32> {
    let count: usize = shape.iter().product();
    let (center, half_width) = if name.ends_with("norm.weight") {
        (if norm_offsets { 0.0 } else { 1.0 }, 0.2)
    } else if name.ends_with(".bias") {
        (0.0, 0.2)
    } else if name.contains("embed_tokens") {
        (0.0, 1.0)
    } else {
        (0.0, (3.0 / shape[1] as f32).sqrt())
    };
    (0..count)
        .map(|_| center + half_width * (2.0 * rng.random::<f32>() - 1.0))
        .collect()
}

fn write_weights(spec: DummySpec, s: &Shape, config: &Value, path: &Path) -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, shape) in tensor_shapes(spec, s, config) {
        let norm_offsets = matches!(
            spec.architecture,
            Architecture::Gemma2 | Architecture::Gemma3
        );
        let values = sample_tensor(&mut rng, &name, &shape, norm_offsets);
        let bytes: Vec<u8> = match s.dtype {
            Dtype::BF16 => values
                .iter()
                .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                .collect(),
            _ => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        };
        tensors.push((name, shape, bytes));
    }
    let views = tensors
        .iter()
        .map(|(name, shape, bytes)| {
            TensorView::new(s.dtype, shape.clone(), bytes)
                .map(|view| (name.as_str(), view))
                .map_err(|e| ModelError::Tensor {
                    name: name.clone(),
                    file: path.to_path_buf(),
                    message: e.to_string(),
                })
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::tensor::serialize_to_file(views, None, path).map_err(|e| ModelError::file(path, e))
}

/// Trains the byte-level BPE on the corpus and saves it as `tokenizer.json`.
fn write_tokenizer(path: &Path) -> Result<()> {
    let error =
        |e: tokenizers::Error| ModelError::Tokenizer(format!("training the dummy tokenizer: {e}"));
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(TOKENIZER_VOCAB)
        .min_frequency(2)
        .show_progress(false)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .special_tokens(
            SPECIAL_TOKENS
                .iter()
                .map(|t| AddedToken::from(*t, true))
                .collect(),
        )
        .build();
    let mut tokenizer = TokenizerBuilder::new()
        .with_model(BPE::default())
        .with_normalizer(None::<tokenizers::NormalizerWrapper>)
        .with_pre_tokenizer(Some(ByteLevel::new(false, true, true)))
        .with_post_processor(Some(ByteLevel::new(false, true, true)))
        .with_decoder(Some(ByteLevel::new(false, true, true)))
        .build()
        .map_err(error)?;
    tokenizer
        .train(&mut trainer, CORPUS.lines())
        .map_err(error)?;
    tokenizer.save(path, true).map_err(error)?;
    Ok(())
}
