//! PEFT LoRA adapters, read and checked against the base model they will run on: the
//! directory's `adapter_config.json` and `adapter_model.safetensors` (keys
//! `base_model.model.<module path>.lora_A.weight`, shaped `[r, in]`, and `.lora_B.weight`,
//! shaped `[out, r]`), turned into one low-rank delta per (layer, projection) with its scaling
//! (`lora_alpha / r`, or `lora_alpha / sqrt(r)` with `use_rslora`).
//!
//! Fused projections (Phi-3's `qkv_proj`, `gate_up_proj`) are split by rows of `B` into the
//! projections the decoder runs, sharing `A`. Whatever PEFT can express and this does not
//! serve (DoRA, `fan_in_fan_out`, trained biases, embedding or head targets, per-module
//! ranks, ...) is refused with a message naming the field; nothing is half-read.

pub mod source;

use crate::config::DecoderConfig;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// Why an adapter cannot be served. Every variant is the adapter's fault (a 4xx), named so
/// that its author can fix it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AdapterError {
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
    #[error("adapter_config.json: `{field}` = {value} is not supported: {why}")]
    Unsupported {
        field: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("adapter_config.json: `{field}`: {message}")]
    Config {
        field: &'static str,
        message: String,
    },
    #[error("adapter weights: {0}")]
    Weights(String),
}

/// A projection of a decoder layer, as the decoder runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Projection {
    Query,
    Key,
    Value,
    Output,
    Gate,
    Up,
    Down,
}

impl Projection {
    pub const ALL: [Projection; 7] = [
        Self::Query,
        Self::Key,
        Self::Value,
        Self::Output,
        Self::Gate,
        Self::Up,
        Self::Down,
    ];

    /// Position in [`Self::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// One targetable module name and the projections it covers, in row order.
pub(crate) fn projections_of(module: &str) -> Option<&'static [Projection]> {
    use Projection::*;
    Some(match module {
        "q_proj" => &[Query],
        "k_proj" => &[Key],
        "v_proj" => &[Value],
        "o_proj" => &[Output],
        "gate_proj" => &[Gate],
        "up_proj" => &[Up],
        "down_proj" => &[Down],
        "qkv_proj" => &[Query, Key, Value],
        "gate_up_proj" => &[Gate, Up],
        _ => return None,
    })
}

/// `(out, in)` of a projection of the base model.
pub(crate) fn shape_of(projection: Projection, c: &DecoderConfig) -> (usize, usize) {
    let (q, kv) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
    match projection {
        Projection::Query => (q, c.hidden_size),
        Projection::Key | Projection::Value => (kv, c.hidden_size),
        Projection::Output => (c.hidden_size, q),
        Projection::Gate | Projection::Up => (c.intermediate_size, c.hidden_size),
        Projection::Down => (c.hidden_size, c.intermediate_size),
    }
}

/// `scaling · B · A` for one projection of one layer: `a` is `[rank, in]`, `b` `[out, rank]`,
/// both row-major f32.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraDelta {
    pub layer: usize,
    pub projection: Projection,
    pub rank: usize,
    pub in_features: usize,
    pub out_features: usize,
    pub a: Vec<f32>,
    pub b: Vec<f32>,
}

impl LoraDelta {
    /// `scaling · B`, row-major `[out, rank]` (the portable path multiplies by it; the CPU
    /// kernels scale their product instead).
    pub fn scaled_b(&self, scaling: f32) -> Vec<f32> {
        self.b.iter().map(|&b| scaling * b).collect()
    }
}

/// A checked adapter: its rank, scaling and deltas, keyed by (layer, projection).
#[derive(Debug, Clone, PartialEq)]
pub struct LoraAdapter {
    pub rank: usize,
    pub scaling: f32,
    /// Every weight was stored in bf16: the CPU kernels keep them so (exactly, half the bytes).
    pub bf16: bool,
    pub deltas: BTreeMap<(usize, Projection), LoraDelta>,
}

/// What `adapter_config.json` says, once checked.
#[derive(Debug, Clone, PartialEq)]
struct AdapterConfig {
    rank: usize,
    scaling: f32,
    targets: Vec<String>,
}

/// Reads the adapter in `dir` for a base model shaped `base`, refusing a rank over `max_rank`.
pub fn load_adapter(
    dir: &Path,
    base: &DecoderConfig,
    max_rank: usize,
) -> Result<LoraAdapter, AdapterError> {
    let config_path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&config_path).map_err(|e| AdapterError::File {
        path: config_path.clone(),
        message: e.to_string(),
    })?;
    let json: Value = serde_json::from_str(&text).map_err(|e| AdapterError::File {
        path: config_path.clone(),
        message: format!("not JSON: {e}"),
    })?;
    let config = check_config(&json, max_rank)?;
    let weights_path = dir.join(WEIGHTS_FILE);
    let tensors = candle_core::safetensors::load(&weights_path, &candle_core::Device::Cpu)
        .map_err(|e| AdapterError::File {
            path: weights_path.clone(),
            message: e.to_string(),
        })?;
    let deltas = read_deltas(&tensors, &config, base)?;
    Ok(LoraAdapter {
        rank: config.rank,
        scaling: config.scaling,
        bf16: tensors
            .values()
            .all(|t| t.dtype() == candle_core::DType::BF16),
        deltas,
    })
}

fn check_config(json: &Value, max_rank: usize) -> Result<AdapterConfig, AdapterError> {
    let peft_type = json["peft_type"].as_str().unwrap_or("LORA");
    if peft_type != "LORA" {
        return Err(unsupported(
            "peft_type",
            peft_type,
            "only LoRA adapters are served",
        ));
    }
    let flag = |field: &'static str, why: &'static str| -> Result<(), AdapterError> {
        match &json[field] {
            Value::Null | Value::Bool(false) => Ok(()),
            other => Err(unsupported(field, &other.to_string(), why)),
        }
    };
    flag("use_dora", "DoRA's magnitude vectors are not applied")?;
    flag(
        "fan_in_fan_out",
        "only PyTorch's (out, in) layout is read (Conv1D models store (in, out))",
    )?;
    let empty = |field: &'static str, why: &'static str| -> Result<(), AdapterError> {
        match &json[field] {
            Value::Null => Ok(()),
            Value::Array(a) if a.is_empty() => Ok(()),
            Value::Object(o) if o.is_empty() => Ok(()),
            other => Err(unsupported(field, &other.to_string(), why)),
        }
    };
    empty(
        "modules_to_save",
        "fully trained modules (embedding, head) are not served",
    )?;
    empty(
        "rank_pattern",
        "every module must share the adapter's rank `r`",
    )?;
    empty(
        "alpha_pattern",
        "every module must share the adapter's `lora_alpha`",
    )?;
    empty("layers_to_transform", "an adapter must cover its target modules in every layer it has weights for; leave it unset")?;
    match json["bias"].as_str() {
        None | Some("none") => {}
        Some(other) => {
            return Err(unsupported(
                "bias",
                other,
                "trained biases are not applied; train with bias=\"none\"",
            ))
        }
    }
    let rank = json["r"]
        .as_u64()
        .filter(|&r| r > 0)
        .ok_or_else(|| config_error("r", "must be a positive integer"))? as usize;
    if rank > max_rank {
        return Err(config_error(
            "r",
            format!("rank {rank} is above --max-lora-rank ({max_rank})"),
        ));
    }
    let alpha = json["lora_alpha"]
        .as_f64()
        .ok_or_else(|| config_error("lora_alpha", "must be a number"))?;
    let rslora = json["use_rslora"].as_bool().unwrap_or(false);
    let scaling = if rslora {
        alpha / (rank as f64).sqrt()
    } else {
        alpha / rank as f64
    } as f32;
    let targets: Vec<String> = match &json["target_modules"] {
        Value::Array(list) => list
            .iter()
            .map(|t| t.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or_else(|| config_error("target_modules", "must be a list of module names"))?,
        Value::String(pattern) => {
            return Err(unsupported(
                "target_modules",
                pattern,
                "a regular expression; list the module names instead",
            ))
        }
        _ => return Err(config_error("target_modules", "missing")),
    };
    for target in &targets {
        if matches!(target.as_str(), "embed_tokens" | "lm_head") {
            return Err(unsupported(
                "target_modules",
                target,
                "embedding and head targets are not served",
            ));
        }
        if projections_of(target).is_none() {
            return Err(config_error(
                "target_modules",
                format!("unknown module `{target}`: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, qkv_proj or gate_up_proj"),
            ));
        }
    }
    Ok(AdapterConfig {
        rank,
        scaling,
        targets,
    })
}

/// `(layer, module)` of a PEFT key `base_model.model.model.layers.<l>.<block>.<module>.lora_<X>[.default].weight`.
fn parse_key(key: &str) -> Option<(usize, &str, char)> {
    let rest = key.strip_prefix("base_model.model.")?;
    let rest = rest.strip_suffix(".weight")?;
    let rest = rest.strip_suffix(".default").unwrap_or(rest);
    let (module_path, which) = rest.rsplit_once(".lora_")?;
    let which = match which {
        "A" => 'A',
        "B" => 'B',
        _ => return None,
    };
    let mut parts = module_path.split('.');
    if (parts.next()?, parts.next()?) != ("model", "layers") {
        return None;
    }
    let layer = parts.next()?.parse().ok()?;
    let _block = parts.next()?;
    let module = parts.next()?;
    parts.next().is_none().then_some((layer, module, which))
}

/// A module's `lora_A` and `lora_B` as they are found.
type LoraPair<'a> = (
    Option<&'a candle_core::Tensor>,
    Option<&'a candle_core::Tensor>,
);

fn read_deltas(
    tensors: &std::collections::HashMap<String, candle_core::Tensor>,
    config: &AdapterConfig,
    base: &DecoderConfig,
) -> Result<BTreeMap<(usize, Projection), LoraDelta>, AdapterError> {
    let weights = |m: String| AdapterError::Weights(m);
    let mut pairs: BTreeMap<(usize, String), LoraPair<'_>> = BTreeMap::new();
    for (key, tensor) in tensors {
        let (layer, module, which) = parse_key(key)
            .ok_or_else(|| weights(format!("`{key}` is not a LoRA weight of a decoder layer")))?;
        if !config.targets.iter().any(|t| t == module) {
            return Err(weights(format!(
                "`{key}` is for `{module}`, which target_modules does not list"
            )));
        }
        if layer >= base.num_layers {
            return Err(weights(format!(
                "`{key}`: the base model has {} layers",
                base.num_layers
            )));
        }
        let entry = pairs.entry((layer, module.to_string())).or_default();
        match which {
            'A' => entry.0 = Some(tensor),
            _ => entry.1 = Some(tensor),
        }
    }
    if pairs.is_empty() {
        return Err(weights("the file holds no LoRA weights".into()));
    }
    let mut deltas = BTreeMap::new();
    for ((layer, module), pair) in pairs {
        let (Some(a), Some(b)) = pair else {
            return Err(weights(format!(
                "layer {layer} `{module}` lacks its lora_A or lora_B"
            )));
        };
        let projections = projections_of(&module).unwrap_or(&[]);
        let matrix = |t: &candle_core::Tensor,
                      what: &str|
         -> Result<(Vec<f32>, (usize, usize)), AdapterError> {
            let dims = t
                .dims2()
                .map_err(|_| weights(format!("layer {layer} `{module}` {what} is not a matrix")))?;
            let values = t
                .to_dtype(candle_core::DType::F32)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(|e| weights(format!("layer {layer} `{module}` {what}: {e}")))?;
            Ok((values, dims))
        };
        let (a, (rank, in_features)) = matrix(a, "lora_A")?;
        let (b, (out_features, b_rank)) = matrix(b, "lora_B")?;
        let expected_in = shape_of(projections[0], base).1;
        let expected_out: usize = projections.iter().map(|&p| shape_of(p, base).0).sum();
        if rank != config.rank || b_rank != config.rank {
            return Err(weights(format!(
                "layer {layer} `{module}` has rank {rank}/{b_rank}, the config says r = {}",
                config.rank
            )));
        }
        if in_features != expected_in || out_features != expected_out {
            return Err(weights(format!(
                "layer {layer} `{module}` is ({out_features} x {rank}) x ({rank} x {in_features}); the base model's is {expected_out} x {expected_in}"
            )));
        }
        // A fused module's B rows, split into the projections it stacks.
        let mut first_row = 0;
        for &projection in projections {
            let rows = shape_of(projection, base).0;
            let mut b = b[first_row * rank..(first_row + rows) * rank].to_vec();
            if base.rope.style == crate::config::RotaryStyle::Interleaved {
                match projection {
                    Projection::Query => b = permute_for_interleaved(&b, base.num_heads, rank),
                    Projection::Key => b = permute_for_interleaved(&b, base.num_kv_heads, rank),
                    _ => {}
                }
            }
            deltas.insert(
                (layer, projection),
                LoraDelta {
                    layer,
                    projection,
                    rank,
                    in_features,
                    out_features: rows,
                    a: a.clone(),
                    b,
                },
            );
            first_row += rows;
        }
    }
    Ok(deltas)
}

/// The base's Q/K rows as llama.cpp's converter stores them in GGUF (for interleaved
/// rotary): within each head, row `j * half + i` of the checkpoint moves to `2i + j`. An
/// adapter trained on the checkpoint must have its `B` rows moved the same way.
fn permute_for_interleaved(b: &[f32], heads: usize, rank: usize) -> Vec<f32> {
    let head_rows = b.len() / rank / heads;
    let half = head_rows / 2;
    let mut permuted = vec![0f32; b.len()];
    for head in 0..heads {
        for j in 0..2 {
            for i in 0..half {
                let from = head * head_rows + j * half + i;
                let to = head * head_rows + 2 * i + j;
                permuted[to * rank..(to + 1) * rank]
                    .copy_from_slice(&b[from * rank..(from + 1) * rank]);
            }
        }
    }
    permuted
}

fn unsupported(field: &'static str, value: &str, why: &'static str) -> AdapterError {
    AdapterError::Unsupported {
        field,
        value: value.to_string(),
        why,
    }
}

fn config_error(field: &'static str, message: impl Into<String>) -> AdapterError {
    AdapterError::Config {
        field,
        message: message.into(),
    }
}

#[cfg(test)]
mod tests;
