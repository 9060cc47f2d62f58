//! A model directory (a dummy model's, or any safetensors checkpoint of the families below)
//! written as one GGUF file, laid out the way llama.cpp's converter lays one out: llama.cpp's
//! tensor names, Llama's Q and K rows permuted for interleaved rotary, Phi-3's fused tensors
//! and LongRoPE factor tensors, Gemma's four norms per layer with the one added to every norm
//! weight, the hyperparameters as `<arch>.*` metadata; matrices in a chosen type, vectors in
//! f32; plus any extra tensors; and the tokenizer as `tokenizer.ggml.*` metadata, so that
//! llama.cpp's `llama-server` and `llama-quantize` take the file (`lantern dummy-model
//! --format gguf`, the benchmark model).

use crate::error::{ModelError, Result};
use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use gguf_file::Value as V;
use serde_json::Value;
use std::path::Path;

/// Where the file's tokenizer metadata comes from.
#[derive(Debug, Clone, Copy)]
pub enum GgufTokenizer<'a> {
    /// None: the file carries weights only (readers take the tokenizer.json beside it).
    None,
    /// The directory's byte-level BPE `tokenizer.json`, its vocabulary padded with unused
    /// entries up to the model's.
    FromDirectory,
    /// Every `tokenizer.*` key of another GGUF file (a real vocabulary of the model's size).
    FromGguf(&'a Path),
}

/// GGUF `token_type` values (llama.cpp's `llama_token_type`).
const TOKEN_NORMAL: i32 = 1;
const TOKEN_CONTROL: i32 = 3;
const TOKEN_USER_DEFINED: i32 = 4;
const TOKEN_UNUSED: i32 = 5;

fn missing(name: &str, dir: &Path) -> ModelError {
    ModelError::Tensor {
        name: name.to_string(),
        file: dir.join("model.safetensors"),
        message: "missing".into(),
    }
}

/// llama.cpp's `permute`: each head's rows reordered from "first half, second half" pairs to
/// adjacent pairs (`(heads, 2, head_dim / 2, in)` with the middle axes swapped).
fn permute_for_interleaved(weight: &Tensor, heads: usize) -> Result<Tensor> {
    let (out, inp) = weight.dims2()?;
    Ok(weight
        .reshape((heads, 2, out / heads / 2, inp))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((out, inp))?)
}

/// Tensors in GGUF order, named the llama.cpp way.
struct Tensors {
    list: Vec<(String, QTensor)>,
    matrices: GgmlDType,
    /// Gemma: norm weights are stored as the `1 + w` they multiply by.
    norms_plus_one: bool,
}

impl Tensors {
    fn add(&mut self, name: String, tensor: &Tensor) -> Result<()> {
        let dtype = if tensor.rank() == 2 {
            self.matrices
        } else {
            GgmlDType::F32
        };
        let tensor = if self.norms_plus_one && name.ends_with("norm.weight") {
            (tensor + 1.0)?
        } else {
            tensor.clone()
        };
        self.list.push((name, QTensor::quantize(&tensor, dtype)?));
        Ok(())
    }
}

/// Writes the model in `dir` (config.json, model.safetensors; llama, phi3, gemma2 or
/// gemma3_text) to `out`, its matrices in `matrices`, with `extra` f32 tensors added and the
/// tokenizer metadata `tokenizer` names.
pub fn write_gguf(
    dir: &Path,
    out: &Path,
    matrices: GgmlDType,
    extra: &[(&str, Vec<f32>)],
    tokenizer: GgufTokenizer<'_>,
) -> Result<()> {
    let config_path = dir.join("config.json");
    let config: Value = read_json(&config_path)?;
    let invalid = |message: String| ModelError::Config {
        path: config_path.clone(),
        message,
    };
    let arch = match config["model_type"].as_str() {
        Some("gemma3_text") => "gemma3".to_string(),
        Some(other) => other.to_string(),
        None => return Err(invalid("no model_type".into())),
    };
    let gemma = arch.starts_with("gemma");
    let number = |key: &str| {
        config[key]
            .as_u64()
            .ok_or_else(|| invalid(format!("no {key}")))
    };
    let (heads, kv_heads, layers) = (
        number("num_attention_heads")? as usize,
        number("num_key_value_heads")? as usize,
        number("num_hidden_layers")? as usize,
    );
    // Configs that leave it out mean hidden size over heads (transformers' default).
    let head_dim = match config["head_dim"].as_u64() {
        Some(d) => d as usize,
        None => number("hidden_size")? as usize / heads.max(1),
    };
    let weights = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu)?;
    let get = |name: &str| weights.get(name).ok_or_else(|| missing(name, dir));
    let mut tensors = Tensors {
        list: Vec::new(),
        matrices,
        norms_plus_one: gemma,
    };
    tensors.add(
        "token_embd.weight".into(),
        get("model.embed_tokens.weight")?,
    )?;
    tensors.add("output_norm.weight".into(), get("model.norm.weight")?)?;
    if let Ok(head) = get("lm_head.weight") {
        tensors.add("output.weight".into(), head)?;
    }
    for l in 0..layers {
        let hf = |suffix: &str| format!("model.layers.{l}.{suffix}");
        let gg = |suffix: &str| format!("blk.{l}.{suffix}");
        let mut copy = |to: &str, from: &str| tensors.add(gg(to), get(&hf(from))?);
        copy("attn_norm.weight", "input_layernorm.weight")?;
        copy("attn_output.weight", "self_attn.o_proj.weight")?;
        copy("ffn_down.weight", "mlp.down_proj.weight")?;
        if gemma {
            copy(
                "post_attention_norm.weight",
                "post_attention_layernorm.weight",
            )?;
            copy("ffn_norm.weight", "pre_feedforward_layernorm.weight")?;
            copy("post_ffw_norm.weight", "post_feedforward_layernorm.weight")?;
        } else {
            copy("ffn_norm.weight", "post_attention_layernorm.weight")?;
        }
        if get(&hf("self_attn.q_norm.weight")).is_ok() {
            copy("attn_q_norm.weight", "self_attn.q_norm.weight")?;
            copy("attn_k_norm.weight", "self_attn.k_norm.weight")?;
        }
        if arch == "phi3" {
            // Fused as in the checkpoint; Phi-3 rotates halves (no permutation).
            copy("attn_qkv.weight", "self_attn.qkv_proj.weight")?;
            copy("ffn_up.weight", "mlp.gate_up_proj.weight")?;
            continue;
        }
        copy("attn_v.weight", "self_attn.v_proj.weight")?;
        copy("ffn_gate.weight", "mlp.gate_proj.weight")?;
        copy("ffn_up.weight", "mlp.up_proj.weight")?;
        let (q, k) = (
            get(&hf("self_attn.q_proj.weight"))?,
            get(&hf("self_attn.k_proj.weight"))?,
        );
        // Llama's rotary is interleaved in GGUF; Gemma's rotates halves as the checkpoint.
        let (q, k) = if gemma {
            (q.clone(), k.clone())
        } else {
            (
                permute_for_interleaved(q, heads)?,
                permute_for_interleaved(k, kv_heads)?,
            )
        };
        tensors.add(gg("attn_q.weight"), &q)?;
        tensors.add(gg("attn_k.weight"), &k)?;
    }
    let mut vectors: Vec<(String, Vec<f32>)> = extra
        .iter()
        .map(|(n, v)| (n.to_string(), v.clone()))
        .collect();
    // Llama 3.1's rope scaling travels as per-frequency divisors, not metadata.
    // (An `extra` one, given on purpose, wins.)
    let given = |name: &str| extra.iter().any(|(n, _)| *n == name);
    if arch == "llama"
        && config["rope_scaling"]["rope_type"] == "llama3"
        && !given("rope_freqs.weight")
    {
        vectors.push(("rope_freqs.weight".into(), llama3_rope_factors(&config)?));
    }
    let key = |suffix: &str| format!("{arch}.{suffix}");
    let mut metadata = vec![
        ("general.architecture".to_string(), V::String(arch.clone())),
        (
            key("embedding_length"),
            V::U32(number("hidden_size")? as u32),
        ),
        (
            key("feed_forward_length"),
            V::U32(number("intermediate_size")? as u32),
        ),
        (key("block_count"), V::U32(layers as u32)),
        (key("attention.head_count"), V::U32(heads as u32)),
        (key("attention.head_count_kv"), V::U32(kv_heads as u32)),
        (key("attention.key_length"), V::U32(head_dim as u32)),
        (
            key("context_length"),
            V::U32(number("max_position_embeddings")? as u32),
        ),
        (
            key("rope.freq_base"),
            V::F32(config["rope_theta"].as_f64().unwrap_or(10_000.0) as f32),
        ),
        (
            key("attention.layer_norm_rms_epsilon"),
            V::F32(config["rms_norm_eps"].as_f64().unwrap_or(1e-6) as f32),
        ),
    ];
    if let Some(window) = config["sliding_window"]
        .as_u64()
        .filter(|_| arch == "phi3" || gemma)
    {
        metadata.push((key("attention.sliding_window"), V::U32(window as u32)));
    }
    if arch == "phi3" && config["rope_scaling"].is_object() {
        let factors = |field: &str| -> Vec<f32> {
            config["rope_scaling"][field]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_f64().map(|f| f as f32))
                .collect()
        };
        vectors.push(("rope_factors_short.weight".into(), factors("short_factor")));
        vectors.push(("rope_factors_long.weight".into(), factors("long_factor")));
        metadata.push((
            key("rope.scaling.original_context_length"),
            V::U32(number("original_max_position_embeddings")? as u32),
        ));
    }
    if gemma {
        // Every `n`-th layer attends to everything, the others slide.
        let first_full = config["layer_types"]
            .as_array()
            .into_iter()
            .flatten()
            .position(|t| t == "full_attention");
        if let Some(first_full) = first_full {
            metadata.push((
                key("attention.sliding_window_pattern"),
                V::U32(first_full as u32 + 1),
            ));
        }
        for field in ["attn_logit_softcapping", "final_logit_softcapping"] {
            if let Some(cap) = config[field].as_f64() {
                metadata.push((key(field), V::F32(cap as f32)));
            }
        }
        if config["rope_scaling"]["rope_type"] == "linear" {
            let factor = config["rope_scaling"]["factor"].as_f64().unwrap_or(1.0) as f32;
            metadata.push((key("rope.scaling.type"), V::String("linear".into())));
            metadata.push((key("rope.scaling.factor"), V::F32(factor)));
        }
    }
    let mut list = tensors.list;
    for (name, values) in vectors {
        let tensor = Tensor::from_vec(values.clone(), values.len(), &Device::Cpu)?;
        list.push((name, QTensor::quantize(&tensor, GgmlDType::F32)?));
    }
    metadata.push((
        "general.name".to_string(),
        V::String(
            dir.file_name()
                .map_or("model".into(), |n| n.to_string_lossy().into_owned()),
        ),
    ));
    let vocab = number("vocab_size")? as usize;
    metadata.push((key("vocab_size"), V::U32(vocab as u32)));
    if arch == "llama" {
        metadata.push((key("rope.dimension_count"), V::U32(head_dim as u32)));
    }
    metadata.push(("general.file_type".to_string(), V::U32(file_type(matrices))));
    match tokenizer {
        GgufTokenizer::None => {}
        GgufTokenizer::FromDirectory => metadata.extend(tokenizer_metadata(dir, vocab)?),
        GgufTokenizer::FromGguf(path) => metadata.extend(copied_tokenizer(path, vocab)?),
    }
    let metadata: Vec<(&str, &V)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let list: Vec<(&str, &QTensor)> = list.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let file = std::fs::File::create(out).map_err(|e| ModelError::file(out, e))?;
    let mut writer = std::io::BufWriter::new(file);
    gguf_file::write(&mut writer, &metadata, &list)?;
    Ok(())
}

/// llama.cpp's converter (`convert_hf_to_gguf.py`, LlamaModel's rope factors): 1 for short
/// wavelengths, `factor` for long ones, `1 / ((1 - smooth) / factor + smooth)` between.
pub fn llama3_rope_factors(config: &Value) -> Result<Vec<f32>> {
    let scaling = &config["rope_scaling"];
    let field = |key: &str| {
        scaling[key].as_f64().ok_or_else(|| ModelError::Config {
            path: "config.json".into(),
            message: format!("rope_scaling.{key} is missing"),
        })
    };
    let (factor, low, high, original) = (
        field("factor")?,
        field("low_freq_factor")?,
        field("high_freq_factor")?,
        field("original_max_position_embeddings")?,
    );
    let theta = config["rope_theta"].as_f64().unwrap_or(10_000.0);
    let heads = config["num_attention_heads"].as_u64().unwrap_or(1).max(1);
    let head_dim = config["head_dim"]
        .as_u64()
        .unwrap_or(config["hidden_size"].as_u64().unwrap_or(0) / heads) as usize;
    let (low_wavelen, high_wavelen) = (original / low, original / high);
    Ok((0..head_dim / 2)
        .map(|i| {
            let freq = 1.0 / (theta as f32).powf((2 * i) as f32 / head_dim as f32);
            let wavelen = 2.0 * std::f64::consts::PI / f64::from(freq);
            let value = if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor
            } else {
                let smooth = (original / wavelen - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            };
            value as f32
        })
        .collect())
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::file(path, e))?;
    serde_json::from_str(&text).map_err(|e| ModelError::file(path, e))
}

/// llama.cpp's `general.file_type` for files whose matrices are all `matrices`.
fn file_type(matrices: GgmlDType) -> u32 {
    match matrices {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::Q4_0 => 2,
        GgmlDType::Q4_1 => 3,
        GgmlDType::Q8_0 => 7,
        GgmlDType::Q5_0 => 8,
        GgmlDType::Q5_1 => 9,
        GgmlDType::Q4K => 15,
        GgmlDType::Q5K => 17,
        GgmlDType::Q6K => 18,
        GgmlDType::BF16 => 32,
        _ => 0,
    }
}

/// The byte-level BPE of `dir/tokenizer.json` as llama.cpp's `gpt2` tokenizer metadata: tokens
/// in id order (padded with unused entries up to `vocab`), merges, token types, the special
/// ids of `tokenizer_config.json` and `generation_config.json`, and the chat template.
fn tokenizer_metadata(dir: &Path, vocab: usize) -> Result<Vec<(String, V)>> {
    let path = dir.join("tokenizer.json");
    let json = read_json(&path)?;
    let bad = |message: &str| ModelError::file(&path, message);
    if json["model"]["type"] != "BPE" {
        return Err(bad(
            "only a byte-level BPE tokenizer.json can be written as GGUF metadata",
        ));
    }
    let mut tokens: Vec<Option<String>> = vec![None; vocab];
    let mut types = vec![TOKEN_UNUSED; vocab];
    let entries = json["model"]["vocab"]
        .as_object()
        .ok_or_else(|| bad("no model.vocab"))?;
    let added = json["added_tokens"].as_array().cloned().unwrap_or_default();
    // Added tokens are control tokens when special, else user-defined (llama.cpp's types).
    let added = added.iter().filter_map(|t| {
        let kind = if t["special"].as_bool().unwrap_or(true) {
            TOKEN_CONTROL
        } else {
            TOKEN_USER_DEFINED
        };
        Some((t["content"].as_str()?, t["id"].as_u64()?, kind))
    });
    let vocabulary = entries
        .iter()
        .filter_map(|(t, id)| Some((t.as_str(), id.as_u64()?, TOKEN_NORMAL)));
    for (text, id, kind) in vocabulary.chain(added) {
        let slot = tokens
            .get_mut(id as usize)
            .ok_or_else(|| bad("a token id is beyond the model's vocabulary"))?;
        *slot = Some(text.to_string());
        types[id as usize] = kind;
    }
    let tokens: Vec<V> = tokens
        .into_iter()
        .enumerate()
        .map(|(id, t)| V::String(t.unwrap_or_else(|| format!("<|unused_{id}|>"))))
        .collect();
    let merges: Vec<V> = json["model"]["merges"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| match m {
            Value::String(pair) => Some(pair.clone()),
            Value::Array(pair) => Some(format!(
                "{} {}",
                pair.first()?.as_str()?,
                pair.get(1)?.as_str()?
            )),
            _ => None,
        })
        .map(V::String)
        .collect();
    let token_config = read_json(&dir.join("tokenizer_config.json")).unwrap_or(Value::Null);
    let generation = read_json(&dir.join("generation_config.json")).unwrap_or(Value::Null);
    let id_of = |text: &Value| -> Option<u32> {
        let text = text.as_str()?;
        let id = entries.get(text).and_then(Value::as_u64).or_else(|| {
            json["added_tokens"]
                .as_array()?
                .iter()
                .find(|t| t["content"] == text)?["id"]
                .as_u64()
        })?;
        Some(id as u32)
    };
    let mut metadata = vec![
        ("tokenizer.ggml.model".to_string(), V::String("gpt2".into())),
        // GPT-2's split, which a byte-level tokenizer.json's ByteLevel pre-tokenizer applies.
        ("tokenizer.ggml.pre".to_string(), V::String("gpt2".into())),
        ("tokenizer.ggml.tokens".to_string(), V::Array(tokens)),
        (
            "tokenizer.ggml.token_type".to_string(),
            V::Array(types.into_iter().map(V::I32).collect()),
        ),
        ("tokenizer.ggml.merges".to_string(), V::Array(merges)),
        (
            "tokenizer.ggml.add_bos_token".to_string(),
            V::Bool(token_config["add_bos_token"].as_bool().unwrap_or(false)),
        ),
    ];
    let generation_eos: Vec<u32> = match &generation["eos_token_id"] {
        Value::Array(ids) => ids
            .iter()
            .filter_map(Value::as_u64)
            .map(|id| id as u32)
            .collect(),
        other => other.as_u64().map(|id| id as u32).into_iter().collect(),
    };
    let eos = id_of(&token_config["eos_token"]).or(generation_eos.first().copied());
    // A second end-of-generation id travels as llama.cpp's end-of-turn token.
    let eot = generation_eos.iter().copied().find(|&id| Some(id) != eos);
    let specials = [
        ("bos", id_of(&token_config["bos_token"])),
        ("eos", eos),
        ("eot", eot),
        ("padding", id_of(&token_config["pad_token"])),
    ];
    for (name, id) in specials {
        if let Some(id) = id {
            metadata.push((format!("tokenizer.ggml.{name}_token_id"), V::U32(id)));
        }
    }
    if let Some(template) = token_config["chat_template"].as_str() {
        metadata.push(("tokenizer.chat_template".into(), V::String(template.into())));
    }
    Ok(metadata)
}

/// Refuses a copied tokenizer whose vocabulary is not `vocab` long.
pub(crate) fn check_tokenizer(tokenizer: GgufTokenizer<'_>, vocab: usize) -> Result<()> {
    match tokenizer {
        GgufTokenizer::FromGguf(path) => copied_tokenizer(path, vocab).map(|_| ()),
        GgufTokenizer::None | GgufTokenizer::FromDirectory => Ok(()),
    }
}

/// Every `tokenizer.*` key of the GGUF file at `path`, whose vocabulary must be `vocab` long.
fn copied_tokenizer(path: &Path, vocab: usize) -> Result<Vec<(String, V)>> {
    let mut file = std::fs::File::open(path).map_err(|e| ModelError::file(path, e))?;
    let content = gguf_file::Content::read(&mut file).map_err(|e| ModelError::file(path, e))?;
    let tokens = match content.metadata.get("tokenizer.ggml.tokens") {
        Some(V::Array(tokens)) => tokens.len(),
        _ => return Err(ModelError::file(path, "no tokenizer.ggml.tokens")),
    };
    if tokens != vocab {
        return Err(ModelError::file(
            path,
            format!("its vocabulary has {tokens} tokens, the model {vocab}"),
        ));
    }
    let mut keys: Vec<(String, V)> = content
        .metadata
        .into_iter()
        .filter(|(key, _)| key.starts_with("tokenizer."))
        .collect();
    keys.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(keys)
}
