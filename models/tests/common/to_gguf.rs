//! A dummy model's safetensors written as a GGUF file, the way llama.cpp's converter lays one
//! out: llama.cpp's tensor names, Llama's Q and K rows permuted for interleaved rotary,
//! Phi-3's fused tensors and LongRoPE factor tensors, Gemma's four norms per layer with the
//! one added to every norm weight, the hyperparameters as `<arch>.*` metadata; matrices in a
//! chosen type, vectors in f32; plus any extra tensors.

use super::TestResult;
use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use gguf_file::Value as V;
use std::path::Path;

/// llama.cpp's `permute`: each head's rows reordered from "first half, second half" pairs to
/// adjacent pairs (`(heads, 2, head_dim / 2, in)` with the middle axes swapped).
fn permute_for_interleaved(weight: &Tensor, heads: usize) -> TestResult<Tensor> {
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
    fn add(&mut self, name: String, tensor: &Tensor) -> TestResult {
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
/// gemma3_text) to `out`, its matrices in `matrices`, with `extra` f32 tensors added.
pub fn write_gguf(
    dir: &Path,
    out: &Path,
    matrices: GgmlDType,
    extra: &[(&str, Vec<f32>)],
) -> TestResult {
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json"))?)?;
    let arch = match config["model_type"].as_str().ok_or("no model_type")? {
        "gemma3_text" => "gemma3".to_string(),
        other => other.to_string(),
    };
    let gemma = arch.starts_with("gemma");
    let number = |key: &str| config[key].as_u64().ok_or(format!("config has no {key}"));
    let (heads, kv_heads, layers) = (
        number("num_attention_heads")? as usize,
        number("num_key_value_heads")? as usize,
        number("num_hidden_layers")? as usize,
    );
    let weights = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu)?;
    let get = |name: &str| weights.get(name).ok_or(format!("no tensor {name}"));
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
        (
            key("attention.key_length"),
            V::U32(number("head_dim")? as u32),
        ),
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
    let metadata: Vec<(&str, &V)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let list: Vec<(&str, &QTensor)> = list.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut writer = std::io::BufWriter::new(std::fs::File::create(out)?);
    gguf_file::write(&mut writer, &metadata, &list)?;
    Ok(())
}
