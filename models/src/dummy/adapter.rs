//! `lantern dummy-adapter`: a PEFT LoRA directory for a model directory, made from a seed (for
//! tests and for load-testing adapter serving without trained adapters), and the oracle the
//! tests check served adapters against: the base's weights with the adapter merged in
//! (`W + scaling · B A`), written as a model directory of its own.

use crate::config::DecoderConfig;
use crate::error::{ModelError, Result};
use crate::lora::{projections_of, shape_of, CONFIG_FILE, WEIGHTS_FILE};
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;
use std::collections::HashMap;
use std::path::Path;

/// What adapter to make.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterSpec {
    pub rank: usize,
    pub alpha: f64,
    pub rslora: bool,
    /// Module names (`q_proj`, ..., or a fused family's `qkv_proj`, `gate_up_proj`).
    pub targets: Vec<String>,
    pub seed: u64,
    /// `B` all zeros (how PEFT initialises an adapter): the adapter changes nothing.
    pub zero_b: bool,
    /// Store the weights in bf16 (as PEFT saves an adapter trained on a bf16 model); else f32.
    pub bf16: bool,
}

impl AdapterSpec {
    /// Every projection of a decoder layer, at `rank`.
    pub fn all_projections(rank: usize, seed: u64) -> Self {
        Self {
            rank,
            alpha: 2.0 * rank as f64,
            rslora: false,
            targets: [
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj",
                "gate_proj",
                "up_proj",
                "down_proj",
            ]
            .map(String::from)
            .to_vec(),
            seed,
            zero_b: false,
            bf16: false,
        }
    }
}

const MODEL_FILE: &str = "model.safetensors";

fn read_weights(model: &Path) -> Result<HashMap<String, Tensor>> {
    let path = model.join(MODEL_FILE);
    candle_core::safetensors::load(&path, &Device::Cpu).map_err(|e| ModelError::file(&path, e))
}

/// The base weight a module's adapter pair applies to: `model.layers.<l>.<block>.<module>`.
fn module_weight(layer: usize, module: &str) -> String {
    let block = if ["gate_proj", "up_proj", "down_proj", "gate_up_proj"].contains(&module) {
        "mlp"
    } else {
        "self_attn"
    };
    format!("model.layers.{layer}.{block}.{module}")
}

/// Writes `adapter_config.json` and `adapter_model.safetensors` into `out` for the model
/// directory `base` (only its `config.json` is read: every target's shape follows from it, so
/// an adapter for a GGUF model can be made from a config of its shape): `A` uniform in
/// `±1/sqrt(in)`, `B` uniform in `±0.2/sqrt(r)` (or zero), from a ChaCha8 stream of `seed`.
pub fn write_dummy_adapter(spec: &AdapterSpec, base: &Path, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| ModelError::file(out, e))?;
    let config = DecoderConfig::from_hf_json(&base.join("config.json"))?;
    let mut shapes = Vec::new();
    for module in &spec.targets {
        let projections = projections_of(module).ok_or_else(|| {
            ModelError::config(base, format!("`{module}` is not a decoder projection"))
        })?;
        let in_features = shape_of(projections[0], &config).1;
        let out_features: usize = projections.iter().map(|&p| shape_of(p, &config).0).sum();
        shapes.push((module, (out_features, in_features)));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    for layer in 0..config.num_layers {
        for &(module, (out_features, in_features)) in &shapes {
            let name = module_weight(layer, module);
            let r = spec.rank;
            let a_bound = 1.0 / (in_features as f32).sqrt();
            let b_bound = 0.2 / (r as f32).sqrt();
            let a: Vec<f32> = (0..r * in_features)
                .map(|_| rng.random_range(-a_bound..a_bound))
                .collect();
            let b: Vec<f32> = (0..out_features * r)
                .map(|_| {
                    let v = rng.random_range(-b_bound..b_bound);
                    if spec.zero_b {
                        0.0
                    } else {
                        v
                    }
                })
                .collect();
            let prefix = format!("base_model.model.{name}");
            let dtype = if spec.bf16 { DType::BF16 } else { DType::F32 };
            tensors.push((
                format!("{prefix}.lora_A.weight"),
                Tensor::from_vec(a, (r, in_features), &Device::Cpu)?.to_dtype(dtype)?,
            ));
            tensors.push((
                format!("{prefix}.lora_B.weight"),
                Tensor::from_vec(b, (out_features, r), &Device::Cpu)?.to_dtype(dtype)?,
            ));
        }
    }
    if tensors.is_empty() {
        return Err(ModelError::config(
            base,
            format!("no weight matches the targets {:?}", spec.targets),
        ));
    }
    let config = json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": spec.rank,
        "lora_alpha": spec.alpha,
        "use_rslora": spec.rslora,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": false,
        "use_dora": false,
        "target_modules": spec.targets,
        "base_model_name_or_path": base.display().to_string(),
    });
    let config_path = out.join(CONFIG_FILE);
    let text =
        serde_json::to_string_pretty(&config).map_err(|e| ModelError::file(&config_path, e))?;
    std::fs::write(&config_path, text).map_err(|e| ModelError::file(&config_path, e))?;
    let weights_path = out.join(WEIGHTS_FILE);
    let map: HashMap<String, Tensor> = tensors.into_iter().collect();
    candle_core::safetensors::save(&map, &weights_path)
        .map_err(|e| ModelError::file(&weights_path, e))
}

/// Copies the model directory `base` into `out` with the adapter in `adapter` merged into its
/// weights, all in f32: `W + scaling · B A` for every pair (the tests' oracle).
pub fn write_merged_model(base: &Path, adapter: &Path, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| ModelError::file(out, e))?;
    let entries = std::fs::read_dir(base).map_err(|e| ModelError::file(base, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| ModelError::file(base, e))?;
        let name = entry.file_name();
        if entry.path().is_file() && name != MODEL_FILE {
            let to = out.join(&name);
            std::fs::copy(entry.path(), &to).map_err(|e| ModelError::file(&to, e))?;
        }
    }
    let config_path = adapter.join(CONFIG_FILE);
    let text =
        std::fs::read_to_string(&config_path).map_err(|e| ModelError::file(&config_path, e))?;
    let config: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| ModelError::file(&config_path, e))?;
    let rank = config["r"].as_f64().unwrap_or(1.0);
    let alpha = config["lora_alpha"].as_f64().unwrap_or(rank);
    let scaling = if config["use_rslora"].as_bool() == Some(true) {
        alpha / rank.sqrt()
    } else {
        alpha / rank
    };
    let pairs_path = adapter.join(WEIGHTS_FILE);
    let pairs = candle_core::safetensors::load(&pairs_path, &Device::Cpu)
        .map_err(|e| ModelError::file(&pairs_path, e))?;
    let mut weights = read_weights(base)?;
    for (name, weight) in weights.iter_mut() {
        *weight = weight.to_dtype(DType::F32)?;
        let Some(module) = name.strip_suffix(".weight") else {
            continue;
        };
        let key = |which: &str| format!("base_model.model.{module}.lora_{which}.weight");
        if let (Some(a), Some(b)) = (pairs.get(&key("A")), pairs.get(&key("B"))) {
            let delta = (b.to_dtype(DType::F32)?.matmul(&a.to_dtype(DType::F32)?)? * scaling)?;
            *weight = (&*weight + delta)?;
        }
    }
    let path = out.join(MODEL_FILE);
    candle_core::safetensors::save(&weights, &path).map_err(|e| ModelError::file(&path, e))
}
