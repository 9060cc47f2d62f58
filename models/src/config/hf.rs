//! `DecoderConfig` from a Hugging Face `config.json`: the hub shape (top-level `rope_theta`,
//! `rope_scaling`), the transformers 5.x shape (`rope_parameters`, per layer type for Gemma 3),
//! and the text model of a Gemma 3 checkpoint with vision.

use super::family::SlidingLayers;
use super::{
    Architecture, AttentionBias, DecoderConfig, MlpActivation, RopeConfig, RopeScaling, RotaryStyle,
};
use crate::error::{ModelError, Result};
use serde::Deserialize;
use std::path::Path;

/// `config.json` as written by transformers 4.x and 5.x.
#[derive(Debug, Deserialize)]
struct HfConfig {
    model_type: Option<String>,
    #[serde(default)]
    architectures: Vec<String>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    #[serde(default = "default_rms_norm_eps")]
    rms_norm_eps: f64,
    rope_theta: Option<f64>,
    rope_scaling: Option<HfRopeParameters>,
    /// transformers 5.x: `{rope_theta, rope_type, ...}` replaces `rope_theta` + `rope_scaling`;
    /// per layer type (`{"full_attention": {...}, "sliding_attention": {...}}`) for Gemma 3.
    rope_parameters: Option<serde_json::Value>,
    /// Gemma 3's base for its sliding-window layers (transformers 4.x).
    rope_local_base_freq: Option<f64>,
    hidden_act: Option<String>,
    /// Gemma's name for the MLP activation (wins over `hidden_act`).
    hidden_activation: Option<String>,
    query_pre_attn_scalar: Option<f64>,
    attn_logit_softcapping: Option<f64>,
    final_logit_softcapping: Option<f64>,
    /// `sliding_attention` or `full_attention` per layer.
    layer_types: Option<Vec<String>>,
    sliding_window_pattern: Option<usize>,
    #[serde(default = "default_max_position_embeddings")]
    max_position_embeddings: usize,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default)]
    attention_bias: bool,
    sliding_window: Option<usize>,
    #[serde(default)]
    use_sliding_window: bool,
    max_window_layers: Option<usize>,
    /// Phi-3 keeps it beside `rope_scaling` rather than inside.
    original_max_position_embeddings: Option<f64>,
    partial_rotary_factor: Option<f64>,
}

#[derive(Debug, Deserialize)]
struct HfRopeParameters {
    rope_theta: Option<f64>,
    #[serde(alias = "type")]
    rope_type: Option<String>,
    factor: Option<f64>,
    low_freq_factor: Option<f64>,
    high_freq_factor: Option<f64>,
    original_max_position_embeddings: Option<f64>,
    short_factor: Option<Vec<f32>>,
    long_factor: Option<Vec<f32>>,
    attention_factor: Option<f64>,
    partial_rotary_factor: Option<f64>,
}

fn default_rms_norm_eps() -> f64 {
    1e-6
}

fn default_max_position_embeddings() -> usize {
    4096
}

impl DecoderConfig {
    /// Reads a Hugging Face `config.json`.
    pub fn from_hf_json(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::file(path, e))?;
        Self::from_hf_str(&text, path)
    }

    pub fn from_hf_str(text: &str, origin: &Path) -> Result<Self> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| ModelError::config(origin, e))?;
        let value = text_model_config(value, origin)?;
        let raw: HfConfig =
            serde_json::from_value(value).map_err(|e| ModelError::config(origin, e))?;
        let arch_name = raw
            .model_type
            .clone()
            .or_else(|| raw.architectures.first().map(|a| hf_class_to_model_type(a)))
            .ok_or_else(|| ModelError::config(origin, "neither model_type nor architectures"))?;
        let architecture = Architecture::parse(&arch_name)?;
        let rules = architecture.rules();
        let gemma = rules.gemma;
        let (rope, local_rope) = rope_from_hf(&raw, architecture, origin)?;
        let num_kv_heads = raw.num_key_value_heads.unwrap_or(raw.num_attention_heads);
        let head_dim = raw
            .head_dim
            .unwrap_or(raw.hidden_size / raw.num_attention_heads.max(1));
        let sliding_window = (0..raw.num_hidden_layers)
            .map(|layer| layer_window(architecture, &raw, layer))
            .collect();
        let activation = raw
            .hidden_activation
            .as_deref()
            .or(raw.hidden_act.as_deref());
        let mlp_activation = match activation {
            None => rules.default_activation(),
            Some("silu" | "swish") => MlpActivation::Silu,
            Some("gelu_pytorch_tanh" | "gelu_tanh" | "gelu_new") => MlpActivation::GeluTanh,
            // Gemma 1 configs say `gelu` and mean the tanh approximation (transformers too).
            Some("gelu") if gemma => MlpActivation::GeluTanh,
            Some(other) => {
                return Err(ModelError::config(
                    origin,
                    format!(
                        "hidden activation `{other}` is not supported (silu, gelu_pytorch_tanh)"
                    ),
                ))
            }
        };
        let attention_bias = match architecture {
            Architecture::Llama | Architecture::Qwen3 => AttentionBias {
                qkv: raw.attention_bias,
                output: raw.attention_bias,
            },
            Architecture::Mistral
            | Architecture::Phi3
            | Architecture::Gemma2
            | Architecture::Gemma3 => AttentionBias::default(),
            // Qwen2 always has q/k/v biases and no output bias.
            Architecture::Qwen2 => AttentionBias {
                qkv: true,
                output: false,
            },
        };
        let config = Self {
            architecture,
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_layers: raw.num_hidden_layers,
            num_heads: raw.num_attention_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: raw.rms_norm_eps,
            rope,
            max_position_embeddings: raw.max_position_embeddings,
            attention_bias,
            qk_norm: rules.qk_norm,
            sliding_window,
            // Gemma ties its head to the embeddings whatever the config says.
            tie_word_embeddings: raw.tie_word_embeddings || gemma,
            fused_projections: rules.fused_projections,
            norm_weights_offset: gemma,
            embedding_scale: rules.embedding_scale(raw.hidden_size),
            mlp_activation,
            sandwich_norms: gemma,
            attention_scale: 1.0
                / raw
                    .query_pre_attn_scalar
                    .filter(|_| gemma)
                    .unwrap_or(head_dim as f64)
                    .sqrt(),
            attention_softcap: raw.attn_logit_softcapping.filter(|_| gemma),
            final_logit_softcap: raw.final_logit_softcapping.filter(|_| gemma),
            local_rope,
        };
        config.validate(origin)?;
        Ok(config)
    }
}

/// The config of the text model: a Gemma 3 checkpoint with vision (`gemma3`) keeps it in
/// `text_config`; Gemma 3's text configs leave out what transformers' defaults say (the hub's
/// `gemma-3-4b-it` gives only sizes, layer count, window and rope scaling), so those are
/// filled in.
fn text_model_config(mut value: serde_json::Value, origin: &Path) -> Result<serde_json::Value> {
    if value["model_type"] == "gemma3" {
        let Some(text) = value.get("text_config").filter(|t| t.is_object()) else {
            return Err(ModelError::config(
                origin,
                "a `gemma3` config without `text_config`",
            ));
        };
        let mut text = text.clone();
        text["model_type"] = serde_json::json!("gemma3_text");
        value = text;
    }
    if value["model_type"] == "gemma3_text" {
        let defaults = serde_json::json!({
            "vocab_size": 262_208, "hidden_size": 2304, "intermediate_size": 9216,
            "num_hidden_layers": 26, "num_attention_heads": 8, "num_key_value_heads": 4,
            "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh",
            "max_position_embeddings": 131_072, "rms_norm_eps": 1e-6,
            "query_pre_attn_scalar": 256, "sliding_window": 4096, "tie_word_embeddings": true,
            "rope_local_base_freq": 10_000.0,
        });
        if let (Some(config), Some(defaults)) = (value.as_object_mut(), defaults.as_object()) {
            for (key, default) in defaults {
                config.entry(key.clone()).or_insert_with(|| default.clone());
            }
            // The global base, unless given by either spelling.
            if !config.contains_key("rope_parameters") {
                config
                    .entry("rope_theta")
                    .or_insert(serde_json::json!(1_000_000.0));
            }
        }
    }
    Ok(value)
}

/// `LlamaForCausalLM` -> `llama`, for configs that lack `model_type`.
fn hf_class_to_model_type(class: &str) -> String {
    class
        .strip_suffix("ForCausalLM")
        .unwrap_or(class)
        .to_lowercase()
}

/// Whether `layer` slides, by the family's rule (`FamilyRules::sliding`): every layer; by
/// `layer_types`, else all but every `n`-th (`sliding_window_pattern` overriding the family's
/// `n`), as transformers' defaults; or (Qwen, and Llama whose configs never ask) with
/// `use_sliding_window`, from `max_window_layers` on.
fn layer_window(architecture: Architecture, raw: &HfConfig, layer: usize) -> Option<usize> {
    let slides = match architecture.rules().sliding {
        SlidingLayers::EveryLayer => true,
        SlidingLayers::AllButEvery(n) => match &raw.layer_types {
            Some(types) => types.get(layer).is_some_and(|t| t == "sliding_attention"),
            None => SlidingLayers::pattern_slides(raw.sliding_window_pattern.unwrap_or(n), layer),
        },
        SlidingLayers::AsConfigured => {
            raw.use_sliding_window && layer >= raw.max_window_layers.unwrap_or(0)
        }
    };
    slides.then_some(raw.sliding_window).flatten()
}

/// The rotary of the model's layers, and (Gemma 3) the other one of its sliding-window layers.
fn rope_from_hf(
    raw: &HfConfig,
    architecture: Architecture,
    origin: &Path,
) -> Result<(RopeConfig, Option<RopeConfig>)> {
    let parse = |value: &serde_json::Value| -> Result<HfRopeParameters> {
        serde_json::from_value(value.clone())
            .map_err(|e| ModelError::config(origin, format!("rope_parameters: {e}")))
    };
    // transformers 5 writes Gemma 3's parameters per layer type.
    let nested = raw
        .rope_parameters
        .as_ref()
        .filter(|p| p.get("full_attention").is_some());
    let (global, local) = match nested {
        Some(p) => (
            Some(parse(&p["full_attention"])?),
            p.get("sliding_attention").map(parse).transpose()?,
        ),
        None => (raw.rope_parameters.as_ref().map(parse).transpose()?, None),
    };
    let params = global.as_ref().or(raw.rope_scaling.as_ref());
    let theta = raw
        .rope_theta
        .or_else(|| params.and_then(|p| p.rope_theta))
        .unwrap_or(10_000.0);
    let partial = raw
        .partial_rotary_factor
        .or_else(|| params.and_then(|p| p.partial_rotary_factor))
        .unwrap_or(1.0);
    if partial != 1.0 {
        return Err(ModelError::config(
            origin,
            format!("partial_rotary_factor {partial}: rotary embeddings over part of a head are not supported"),
        ));
    }
    let scaling = match params {
        None => RopeScaling::None,
        Some(p) => rope_scaling(p, raw, origin)?,
    };
    let rope = RopeConfig {
        theta,
        scaling,
        style: RotaryStyle::Half,
    };
    if !architecture.rules().local_rope {
        return Ok((rope, None));
    }
    // Gemma 3's sliding-window layers: their own base, no scaling unless stated.
    let local_theta = local
        .as_ref()
        .and_then(|p| p.rope_theta)
        .or(raw.rope_local_base_freq)
        .unwrap_or(10_000.0);
    let local_scaling = match &local {
        Some(p) => rope_scaling(p, raw, origin)?,
        None => RopeScaling::None,
    };
    let local = RopeConfig {
        theta: local_theta,
        scaling: local_scaling,
        style: RotaryStyle::Half,
    };
    Ok((rope, Some(local)))
}

fn rope_scaling(p: &HfRopeParameters, raw: &HfConfig, origin: &Path) -> Result<RopeScaling> {
    let need = |value: Option<f64>, field: &str| {
        value.ok_or_else(|| ModelError::config(origin, format!("rope scaling needs `{field}`")))
    };
    match p.rope_type.as_deref().unwrap_or("default") {
        "default" => Ok(RopeScaling::None),
        "linear" => Ok(RopeScaling::Linear {
            factor: need(p.factor, "factor")?,
        }),
        "llama3" => Ok(RopeScaling::Llama3 {
            factor: need(p.factor, "factor")?,
            low_freq_factor: need(p.low_freq_factor, "low_freq_factor")?,
            high_freq_factor: need(p.high_freq_factor, "high_freq_factor")?,
            original_max_position_embeddings: need(
                p.original_max_position_embeddings,
                "original_max_position_embeddings",
            )?,
        }),
        "longrope" | "su" => {
            let original = need(
                p.original_max_position_embeddings
                    .or(raw.original_max_position_embeddings),
                "original_max_position_embeddings",
            )?;
            // transformers' default: the stretch of the context over the original length.
            let factor = p
                .factor
                .unwrap_or(raw.max_position_embeddings as f64 / original);
            let attention_factor = p.attention_factor.unwrap_or(if factor <= 1.0 {
                1.0
            } else {
                (1.0 + factor.ln() / original.ln()).sqrt()
            });
            let factors = |list: &Option<Vec<f32>>, field: &str| {
                list.clone().ok_or_else(|| {
                    ModelError::config(origin, format!("rope scaling needs `{field}`"))
                })
            };
            Ok(RopeScaling::LongRope {
                short: factors(&p.short_factor, "short_factor")?,
                long: factors(&p.long_factor, "long_factor")?,
                original_max_position_embeddings: original as usize,
                attention_factor,
            })
        }
        other => Err(ModelError::config(
            origin,
            format!(
                "rope type `{other}` is not supported (supported: default, linear, llama3, longrope)"
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HUB_SHAPE: &str = r#"{
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": 128256, "hidden_size": 2048, "intermediate_size": 8192,
        "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
        "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "max_position_embeddings": 131072,
        "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "tie_word_embeddings": true
    }"#;

    const TRANSFORMERS5_SHAPE: &str = r#"{
        "architectures": ["MistralForCausalLM"], "model_type": "mistral",
        "vocab_size": 32000, "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"},
        "sliding_window": null
    }"#;

    #[test]
    fn reads_hub_config_with_llama3_scaling() -> Result<()> {
        let c = DecoderConfig::from_hf_str(HUB_SHAPE, Path::new("config.json"))?;
        assert_eq!(c.architecture, Architecture::Llama);
        assert_eq!((c.head_dim, c.num_kv_heads), (64, 8));
        assert_eq!(c.rope.theta, 500000.0);
        assert!(matches!(c.rope.scaling, RopeScaling::Llama3 { factor, .. } if factor == 32.0));
        assert!(c.tie_word_embeddings);
        Ok(())
    }

    #[test]
    fn reads_transformers5_rope_parameters_and_null_window() -> Result<()> {
        let c = DecoderConfig::from_hf_str(TRANSFORMERS5_SHAPE, Path::new("config.json"))?;
        assert_eq!(c.architecture, Architecture::Mistral);
        assert_eq!(c.rope.theta, 1_000_000.0);
        assert_eq!(c.rope.scaling, RopeScaling::None);
        assert_eq!(c.sliding_window, vec![None, None]);
        Ok(())
    }

    /// Phi-3.5-mini's shape: LongRoPE under its old name `su` (accepted too), the original
    /// length beside `rope_scaling`, the attention factor from the context stretch.
    const PHI3_SHAPE: &str = r#"{
        "architectures": ["Phi3ForCausalLM"], "model_type": "phi3",
        "vocab_size": 32064, "hidden_size": 3072, "intermediate_size": 8192,
        "num_hidden_layers": 2, "num_attention_heads": 32, "num_key_value_heads": 32,
        "max_position_embeddings": 131072, "original_max_position_embeddings": 4096,
        "rope_theta": 10000.0, "sliding_window": 262144,
        "rope_scaling": {"type": "su", "short_factor": [1.0, 1.5], "long_factor": [2.0, 3.0]}
    }"#;

    #[test]
    fn reads_phi3_longrope_and_names_its_toggles() -> Result<()> {
        let text = PHI3_SHAPE
            .replace("[1.0, 1.5]", &format!("{:?}", vec![1.0; 48]))
            .replace("[2.0, 3.0]", &format!("{:?}", vec![2.0; 48]));
        let c = DecoderConfig::from_hf_str(&text, Path::new("config.json"))?;
        assert_eq!(c.architecture, Architecture::Phi3);
        let RopeScaling::LongRope {
            original_max_position_embeddings,
            attention_factor,
            ..
        } = c.rope.scaling.clone()
        else {
            panic!("{:?}", c.rope.scaling);
        };
        assert_eq!(original_max_position_embeddings, 4096);
        // sqrt(1 + ln(32) / ln(4096)), as transformers computes it for this config.
        assert!((attention_factor - (1.0f64 + 32f64.ln() / 4096f64.ln()).sqrt()).abs() < 1e-12);
        let toggles = c.toggles();
        assert!(
            toggles.contains(&"fused_projections".to_string()),
            "{toggles:?}"
        );
        assert!(
            toggles
                .iter()
                .any(|t| t.starts_with("rope_longrope(long from position 4096")),
            "{toggles:?}"
        );
        assert!(
            toggles
                .iter()
                .any(|t| t.starts_with("sliding_window(262144) on 2 of 2")),
            "{toggles:?}"
        );
        // Factor lists must cover half a head.
        let short = DecoderConfig::from_hf_str(PHI3_SHAPE, Path::new("config.json")).err();
        assert!(short.is_some_and(|e| e.to_string().contains("short_factor")));
        // Rotary over part of a head (Phi-4-mini) is refused, not run wrong.
        let partial = text.replace(
            "\"rope_theta\"",
            "\"partial_rotary_factor\": 0.75, \"rope_theta\"",
        );
        let refused = DecoderConfig::from_hf_str(&partial, Path::new("config.json")).err();
        assert!(refused.is_some_and(|e| e.to_string().contains("partial_rotary_factor")));
        Ok(())
    }

    /// Gemma 3 1B's shape (transformers 4.x keys): GELU, the local base, the layer pattern,
    /// the score scale from `query_pre_attn_scalar`, the tied head.
    const GEMMA3_SHAPE: &str = r#"{
        "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text",
        "vocab_size": 262144, "hidden_size": 1152, "intermediate_size": 6912,
        "num_hidden_layers": 26, "num_attention_heads": 4, "num_key_value_heads": 1,
        "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh", "query_pre_attn_scalar": 256,
        "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0, "rope_scaling": null,
        "sliding_window": 512, "sliding_window_pattern": 6, "rms_norm_eps": 1e-6,
        "final_logit_softcapping": null, "attn_logit_softcapping": null
    }"#;

    #[test]
    fn reads_gemma3_text_with_its_local_rotary_and_layer_pattern() -> Result<()> {
        let c = DecoderConfig::from_hf_str(GEMMA3_SHAPE, Path::new("config.json"))?;
        assert_eq!(c.architecture, Architecture::Gemma3);
        assert_eq!(c.mlp_activation, MlpActivation::GeluTanh);
        assert!(c.norm_weights_offset && c.sandwich_norms && c.qk_norm && c.tie_word_embeddings);
        assert_eq!(c.embedding_scale, Some((1152f64).sqrt() as f32));
        assert_eq!(c.local_rope.as_ref().map(|r| r.theta), Some(10_000.0));
        assert_eq!(c.rope.theta, 1_000_000.0);
        // Five of every six layers slide.
        let full: Vec<usize> = (0..26).filter(|&l| c.sliding_window[l].is_none()).collect();
        assert_eq!(full, vec![5, 11, 17, 23]);
        assert!((c.attention_scale - 1.0 / 16.0).abs() < 1e-12);
        assert_eq!((c.attention_softcap, c.final_logit_softcap), (None, None));
        // A checkpoint with vision: its text model, transformers' defaults filling the gaps
        // (gemma-3-4b-it's config gives only these).
        let vision = r#"{"model_type": "gemma3", "text_config": {"hidden_size": 2560,
            "intermediate_size": 10240, "model_type": "gemma3_text", "num_hidden_layers": 34,
            "rope_scaling": {"factor": 8.0, "rope_type": "linear"}, "sliding_window": 1024},
            "vision_config": {"model_type": "siglip_vision_model"}}"#;
        let c = DecoderConfig::from_hf_str(vision, Path::new("config.json"))?;
        assert_eq!(c.architecture, Architecture::Gemma3);
        assert_eq!(
            (c.num_heads, c.num_kv_heads, c.head_dim, c.vocab_size),
            (8, 4, 256, 262_208)
        );
        assert_eq!(c.rope.theta, 1_000_000.0);
        assert_eq!(c.rope.scaling, RopeScaling::Linear { factor: 8.0 });
        assert_eq!(
            c.local_rope.as_ref().map(|r| (r.theta, r.scaling.clone())),
            Some((10_000.0, RopeScaling::None))
        );
        assert_eq!(c.sliding_window[0], Some(1024));
        Ok(())
    }

    #[test]
    fn unknown_architecture_lists_the_supported_ones() {
        let text = HUB_SHAPE.replace("\"llama\"", "\"gpt_neox\"");
        let err = DecoderConfig::from_hf_str(&text, Path::new("config.json"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("gpt_neox"), "{err}");
        assert!(
            err.contains("llama, mistral, qwen2, qwen3, phi3, gemma2, gemma3_text"),
            "{err}"
        );
    }

    #[test]
    fn inconsistent_heads_are_refused() {
        let text = HUB_SHAPE.replace("\"num_key_value_heads\": 8", "\"num_key_value_heads\": 5");
        let err = DecoderConfig::from_hf_str(&text, Path::new("/m/config.json"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.starts_with("/m/config.json"), "{err}");
        assert!(err.contains("num_key_value_heads"), "{err}");
    }
}
