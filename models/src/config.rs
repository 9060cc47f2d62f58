//! `DecoderConfig`: the one description of a decoder the rest of the crate reads, built from a
//! Hugging Face `config.json` (both the hub shape with top-level `rope_theta` and the
//! transformers 5.x shape with `rope_parameters`) or from GGUF metadata (`gguf.rs`), both by the
//! one table of family rules (`family.rs`).
//!
//! Families differ only by toggles here: q/k norm, qkv bias, sliding window, tied embeddings,
//! rotary style and scaling, fused projections. The decoder never branches on the family name.

use crate::error::{ModelError, Result};
use std::path::Path;

pub mod family;
pub mod gguf;
mod hf;

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
