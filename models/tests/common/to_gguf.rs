//! A dummy model's safetensors written as a GGUF file, the way llama.cpp's converter lays one
//! out: llama.cpp's tensor names, Llama's Q and K rows permuted for interleaved rotary,
//! Phi-3's fused tensors and LongRoPE factor tensors, the hyperparameters as `<arch>.*`
//! metadata; matrices in a chosen type, vectors in f32; plus any extra tensors.

use super::TestResult;
use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};
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

/// Writes the model in `dir` (config.json, model.safetensors; llama or phi3) to `out`, its
/// matrices in `matrices`, with `extra` f32 tensors added.
pub fn write_gguf(
    dir: &Path,
    out: &Path,
    matrices: GgmlDType,
    extra: &[(&str, Vec<f32>)],
) -> TestResult {
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json"))?)?;
    let arch = config["model_type"]
        .as_str()
        .ok_or("no model_type")?
        .to_string();
    let number = |key: &str| config[key].as_u64().ok_or(format!("config has no {key}"));
    let (heads, kv_heads, layers) = (
        number("num_attention_heads")? as usize,
        number("num_key_value_heads")? as usize,
        number("num_hidden_layers")? as usize,
    );
    let weights = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu)?;
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    let mut add = |name: String, tensor: &Tensor| -> TestResult {
        let dtype = if tensor.rank() == 2 {
            matrices
        } else {
            GgmlDType::F32
        };
        tensors.push((name, QTensor::quantize(tensor, dtype)?));
        Ok(())
    };
    let get = |name: &str| weights.get(name).ok_or(format!("no tensor {name}"));
    add(
        "token_embd.weight".into(),
        get("model.embed_tokens.weight")?,
    )?;
    add("output_norm.weight".into(), get("model.norm.weight")?)?;
    if let Ok(head) = get("lm_head.weight") {
        add("output.weight".into(), head)?;
    }
    for l in 0..layers {
        let hf = |suffix: &str| format!("model.layers.{l}.{suffix}");
        let gg = |suffix: &str| format!("blk.{l}.{suffix}");
        add(gg("attn_norm.weight"), get(&hf("input_layernorm.weight"))?)?;
        add(
            gg("ffn_norm.weight"),
            get(&hf("post_attention_layernorm.weight"))?,
        )?;
        add(
            gg("attn_output.weight"),
            get(&hf("self_attn.o_proj.weight"))?,
        )?;
        add(gg("ffn_down.weight"), get(&hf("mlp.down_proj.weight"))?)?;
        if arch == "phi3" {
            // Fused as in the checkpoint; Phi-3 rotates halves (no permutation).
            add(
                gg("attn_qkv.weight"),
                get(&hf("self_attn.qkv_proj.weight"))?,
            )?;
            add(gg("ffn_up.weight"), get(&hf("mlp.gate_up_proj.weight"))?)?;
            continue;
        }
        let q = permute_for_interleaved(get(&hf("self_attn.q_proj.weight"))?, heads)?;
        let k = permute_for_interleaved(get(&hf("self_attn.k_proj.weight"))?, kv_heads)?;
        add(gg("attn_q.weight"), &q)?;
        add(gg("attn_k.weight"), &k)?;
        add(gg("attn_v.weight"), get(&hf("self_attn.v_proj.weight"))?)?;
        add(gg("ffn_gate.weight"), get(&hf("mlp.gate_proj.weight"))?)?;
        add(gg("ffn_up.weight"), get(&hf("mlp.up_proj.weight"))?)?;
    }
    let mut vectors: Vec<(String, Vec<f32>)> = extra
        .iter()
        .map(|(n, v)| (n.to_string(), v.clone()))
        .collect();
    use gguf_file::Value as V;
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
    if let Some(window) = config["sliding_window"].as_u64().filter(|_| arch == "phi3") {
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
    for (name, values) in vectors {
        let tensor = Tensor::from_vec(values.clone(), values.len(), &Device::Cpu)?;
        tensors.push((name, QTensor::quantize(&tensor, GgmlDType::F32)?));
    }
    let metadata: Vec<(&str, &V)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut writer = std::io::BufWriter::new(std::fs::File::create(out)?);
    gguf_file::write(&mut writer, &metadata, &tensors)?;
    Ok(())
}
