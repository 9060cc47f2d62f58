//! `DecoderConfig`: the one description of a decoder the rest of the crate reads, built from a
//! Hugging Face `config.json` (both the hub shape with top-level `rope_theta` and the
//! transformers 5.x shape with `rope_parameters`) or from GGUF metadata (`gguf.rs`).
//!
//! Families differ only by toggles here: q/k norm, qkv bias, sliding window, tied embeddings,
//! rotary style and scaling, fused projections. The decoder never branches on the family name.

use crate::error::{ModelError, Result};
use serde::Deserialize;
use std::path::Path;

/// Model families served by the one decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
    Phi3,
    Gemma2,
    /// Gemma 3's text model (`gemma3_text`; GGUF `gemma3`).
    Gemma3,
}

impl Architecture {
    pub const ALL: [Architecture; 7] = [
        Self::Llama,
        Self::Mistral,
        Self::Qwen2,
        Self::Qwen3,
        Self::Phi3,
        Self::Gemma2,
        Self::Gemma3,
    ];

    /// The `model_type` of `config.json`, and the GGUF `general.architecture` too.
    pub fn name(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Mistral => "mistral",
            Self::Qwen2 => "qwen2",
            Self::Qwen3 => "qwen3",
            Self::Phi3 => "phi3",
            Self::Gemma2 => "gemma2",
            Self::Gemma3 => "gemma3_text",
        }
    }

    /// The name of GGUF's `general.architecture`.
    pub fn gguf_name(self) -> &'static str {
        match self {
            Self::Gemma3 => "gemma3",
            other => other.name(),
        }
    }

    /// The family a `model_type` (or GGUF architecture) names.
    pub fn parse(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|arch| arch.name() == name || arch.gguf_name() == name)
            .ok_or_else(|| ModelError::UnknownArchitecture {
                found: name.to_string(),
                supported: Self::ALL.map(Self::name).join(", "),
            })
    }
}

/// How rotary embeddings pair up the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotaryStyle {
    /// Dimension `i` pairs with `i + head_dim/2` (Hugging Face checkpoints).
    Half,
    /// Dimension `2i` pairs with `2i+1`: llama.cpp permutes llama Q/K weights for this in GGUF.
    Interleaved,
}

/// Frequency scaling of rotary embeddings.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor`.
    Linear {
        factor: f64,
    },
    /// Llama 3.x: low frequencies scaled down, high kept, a smooth ramp between.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
    /// One divisor per frequency (`head_dim / 2`), as GGUF files store them in
    /// `rope_freqs.weight` (llama.cpp's converter writes Llama 3.1's scaling this way).
    Factors(Vec<f32>),
    /// Phi-3's LongRoPE: per-frequency divisors for positions below
    /// `original_max_position_embeddings` (`short`) and from there on (`long`); cos and sin
    /// multiplied by `attention_factor`. The choice is made per position, so a token's
    /// rotation never depends on how long its sequence is yet, how it was chunked or batched.
    /// (transformers instead switches every position to `long` once a sequence grows past the
    /// original length; candle-transformers and vLLM choose per position, as here.)
    LongRope {
        short: Vec<f32>,
        long: Vec<f32>,
        original_max_position_embeddings: usize,
        attention_factor: f64,
    },
}

/// The activation of the gated MLP's gate: `act(gate) * up`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MlpActivation {
    Silu,
    /// GELU with the tanh approximation (Gemma's `gelu_pytorch_tanh`).
    GeluTanh,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RopeConfig {
    pub theta: f64,
    pub scaling: RopeScaling,
    pub style: RotaryStyle,
}

/// Which projections of attention carry a bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AttentionBias {
    pub qkv: bool,
    pub output: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DecoderConfig {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope: RopeConfig,
    pub max_position_embeddings: usize,
    pub attention_bias: AttentionBias,
    /// RMS norm over each query and key head before rotary (Qwen3).
    pub qk_norm: bool,
    /// Sliding attention window of each layer; `None` means full attention.
    pub sliding_window: Vec<Option<usize>>,
    pub tie_word_embeddings: bool,
    /// Q, K and V stored as one `qkv` matrix and gate and up as one `gate_up` (Phi-3); read
    /// as their parts.
    pub fused_projections: bool,
    /// Norm weights are stored as offsets from one: norms multiply by `1 + w` (Gemma's
    /// checkpoints; llama.cpp adds the one when it writes GGUF).
    pub norm_weights_offset: bool,
    /// Token embeddings are multiplied by this (Gemma: the square root of the hidden size).
    pub embedding_scale: Option<f32>,
    pub mlp_activation: MlpActivation,
    /// A norm after attention and after the MLP too (before each joins the residual), the MLP's
    /// own norm before it (Gemma 2 and 3).
    pub sandwich_norms: bool,
    /// What attention scores are multiplied by: `1 / sqrt(head_dim)`, or Gemma's
    /// `query_pre_attn_scalar ^ -0.5`.
    pub attention_scale: f64,
    /// Scores become `cap * tanh(score / cap)` before the softmax (Gemma 2).
    pub attention_softcap: Option<f64>,
    /// Logits become `cap * tanh(logit / cap)` (Gemma 2).
    pub final_logit_softcap: Option<f64>,
    /// The rotary of sliding-window layers when it differs from `rope` (Gemma 3's local base).
    pub local_rope: Option<RopeConfig>,
}

impl DecoderConfig {
    /// The toggles this config turns on, as `/info` and the startup log name them.
    pub fn toggles(&self) -> Vec<String> {
        let mut toggles = Vec::new();
        if self.attention_bias.qkv {
            toggles.push("qkv_bias".to_string());
        }
        if self.attention_bias.output {
            toggles.push("output_bias".into());
        }
        if self.qk_norm {
            toggles.push("qk_norm".into());
        }
        if self.fused_projections {
            toggles.push("fused_projections".into());
        }
        if self.tie_word_embeddings {
            toggles.push("tied_embeddings".into());
        }
        let sliding: Vec<usize> = self.sliding_window.iter().flatten().copied().collect();
        if let Some(window) = sliding.first() {
            toggles.push(format!(
                "sliding_window({window}) on {} of {} layers",
                sliding.len(),
                self.num_layers
            ));
        }
        match &self.rope.scaling {
            RopeScaling::None => {}
            RopeScaling::Linear { factor } => toggles.push(format!("rope_linear({factor})")),
            RopeScaling::Llama3 { factor, .. } => toggles.push(format!("rope_llama3({factor})")),
            RopeScaling::Factors(_) => toggles.push("rope_frequency_factors".into()),
            RopeScaling::LongRope {
                original_max_position_embeddings,
                attention_factor,
                ..
            } => toggles.push(format!(
                "rope_longrope(long from position {original_max_position_embeddings}, attention factor {attention_factor:.4})"
            )),
        }
        if self.rope.style == RotaryStyle::Interleaved {
            toggles.push("rope_interleaved".into());
        }
        if let Some(local) = &self.local_rope {
            toggles.push(format!(
                "local_rope(base {}) on sliding layers",
                local.theta
            ));
        }
        if self.norm_weights_offset {
            toggles.push("norm_weights_plus_one".into());
        }
        if let Some(scale) = self.embedding_scale {
            toggles.push(format!("embedding_scale({scale})"));
        }
        if self.mlp_activation == MlpActivation::GeluTanh {
            toggles.push("gelu_tanh".into());
        }
        if self.sandwich_norms {
            toggles.push("sandwich_norms".into());
        }
        if (self.attention_scale - 1.0 / (self.head_dim as f64).sqrt()).abs() > 1e-12 {
            toggles.push(format!("attention_scale({:.6})", self.attention_scale));
        }
        if let Some(cap) = self.attention_softcap {
            toggles.push(format!("attention_softcap({cap})"));
        }
        if let Some(cap) = self.final_logit_softcap {
            toggles.push(format!("final_logit_softcap({cap})"));
        }
        toggles
    }

    pub fn validate(&self, origin: &Path) -> Result<()> {
        let bad = |message: String| Err(ModelError::config(origin, message));
        if self.num_heads == 0
            || self.num_kv_heads == 0
            || !self.num_heads.is_multiple_of(self.num_kv_heads)
        {
            return bad(format!(
                "num_attention_heads ({}) must be a positive multiple of num_key_value_heads ({})",
                self.num_heads, self.num_kv_heads
            ));
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return bad(format!(
                "head_dim ({}) must be even and positive",
                self.head_dim
            ));
        }
        if self.vocab_size == 0 || self.hidden_size == 0 || self.num_layers == 0 {
            return bad("vocab_size, hidden_size and num_hidden_layers must be positive".into());
        }
        let factor_lists: Vec<(&str, &Vec<f32>)> = match &self.rope.scaling {
            RopeScaling::Factors(factors) => vec![("rope frequency factors", factors)],
            RopeScaling::LongRope { short, long, .. } => {
                vec![("rope short_factor", short), ("rope long_factor", long)]
            }
            _ => Vec::new(),
        };
        for (what, factors) in factor_lists {
            let positive = factors.iter().all(|f| f.is_finite() && *f > 0.0);
            if factors.len() != self.head_dim / 2 || !positive {
                return bad(format!(
                    "{what}: {} positive numbers expected (head_dim / 2), got {} values{}",
                    self.head_dim / 2,
                    factors.len(),
                    if positive { "" } else { ", not all positive" }
                ));
            }
        }
        if self.sliding_window.len() != self.num_layers {
            return bad("one sliding-window entry per layer is required".into());
        }
        if self.checked_parameters().is_none() {
            return bad(format!(
                "the sizes multiply past what this machine can address (hidden_size {}, intermediate_size {}, vocab_size {}, {} layers of {} heads x {})",
                self.hidden_size,
                self.intermediate_size,
                self.vocab_size,
                self.num_layers,
                self.num_heads,
                self.head_dim
            ));
        }
        Ok(())
    }

    /// Number of parameters, counting tied embeddings once.
    pub fn num_parameters(&self) -> usize {
        self.checked_parameters().unwrap_or(usize::MAX)
    }

    /// The parameter count, `None` where the sizes overflow (a malformed file's).
    fn checked_parameters(&self) -> Option<usize> {
        let mul = |a: usize, b: usize| a.checked_mul(b);
        let q = mul(self.num_heads, self.head_dim)?;
        let kv = mul(self.num_kv_heads, self.head_dim)?;
        let qkv_out = q.checked_add(mul(2, kv)?)?;
        let attention = mul(self.hidden_size, qkv_out)?.checked_add(mul(q, self.hidden_size)?)?;
        let mlp = mul(mul(3, self.hidden_size)?, self.intermediate_size)?;
        let embeddings = mul(self.vocab_size, self.hidden_size)?;
        let head = if self.tie_word_embeddings {
            0
        } else {
            embeddings
        };
        let per_layer = attention
            .checked_add(mlp)?
            .checked_add(mul(2, self.hidden_size)?)?;
        mul(self.num_layers, per_layer)?
            .checked_add(embeddings)?
            .checked_add(head)
    }
}

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
        let gemma = matches!(architecture, Architecture::Gemma2 | Architecture::Gemma3);
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
            .or(raw.hidden_act.as_deref())
            .unwrap_or("silu");
        let mlp_activation = match activation {
            "silu" | "swish" => MlpActivation::Silu,
            "gelu_pytorch_tanh" | "gelu_tanh" | "gelu_new" => MlpActivation::GeluTanh,
            // Gemma 1 configs say `gelu` and mean the tanh approximation (transformers too).
            "gelu" if gemma => MlpActivation::GeluTanh,
            other => {
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
            qk_norm: matches!(architecture, Architecture::Qwen3 | Architecture::Gemma3),
            sliding_window,
            // Gemma ties its head to the embeddings whatever the config says.
            tie_word_embeddings: raw.tie_word_embeddings || gemma,
            fused_projections: architecture == Architecture::Phi3,
            norm_weights_offset: gemma,
            embedding_scale: gemma.then(|| (raw.hidden_size as f64).sqrt() as f32),
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

/// Mistral slides on every layer; Qwen2/3 only with `use_sliding_window`, from `max_window_layers` on.
fn layer_window(architecture: Architecture, raw: &HfConfig, layer: usize) -> Option<usize> {
    match architecture {
        Architecture::Llama => None,
        Architecture::Mistral | Architecture::Phi3 => raw.sliding_window,
        // Gemma: by `layer_types`, else every other layer (Gemma 2) or five of every six
        // (Gemma 3) slide, as transformers' defaults.
        Architecture::Gemma2 | Architecture::Gemma3 => {
            let sliding = match &raw.layer_types {
                Some(types) => types.get(layer).is_some_and(|t| t == "sliding_attention"),
                None => {
                    let default_pattern = if architecture == Architecture::Gemma2 {
                        2
                    } else {
                        6
                    };
                    let pattern = raw.sliding_window_pattern.unwrap_or(default_pattern).max(1);
                    !(layer + 1).is_multiple_of(pattern)
                }
            };
            sliding.then_some(raw.sliding_window).flatten()
        }
        Architecture::Qwen2 | Architecture::Qwen3 => {
            let from_layer = raw.max_window_layers.unwrap_or(0);
            (raw.use_sliding_window && layer >= from_layer)
                .then_some(raw.sliding_window)
                .flatten()
        }
    }
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
    if architecture != Architecture::Gemma3 {
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
