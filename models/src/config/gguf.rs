//! A GGUF file on its own is a servable model: the decoder config, the tokenizer and the chat
//! template are all rebuilt from its metadata (`{arch}.*`, `tokenizer.ggml.*`,
//! `tokenizer.chat_template`), the way llama.cpp and transformers read the same keys.

use crate::config::family::SlidingLayers;
use crate::config::{Architecture, AttentionBias, DecoderConfig, RopeConfig, RopeScaling};
use crate::error::{ModelError, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use std::path::Path;

pub use crate::gguf_tokenizer::tokenizer;

/// Typed access to GGUF metadata with errors that name the file and key.
pub struct Metadata<'a> {
    content: &'a Content,
    path: &'a Path,
}

impl<'a> Metadata<'a> {
    pub fn new(content: &'a Content, path: &'a Path) -> Self {
        Self { content, path }
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.content.metadata.get(key)
    }

    fn missing(&self, key: &str) -> ModelError {
        ModelError::file(self.path, format!("GGUF metadata lacks `{key}`"))
    }

    fn wrong_type(&self, key: &str, wanted: &str) -> ModelError {
        ModelError::file(self.path, format!("GGUF metadata `{key}` is not {wanted}"))
    }

    /// Integers are stored with whatever width the writer chose.
    pub fn usize_opt(&self, key: &str) -> Result<Option<usize>> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        let n: i64 = match value {
            Value::U8(v) => i64::from(*v),
            Value::I8(v) => i64::from(*v),
            Value::U16(v) => i64::from(*v),
            Value::I16(v) => i64::from(*v),
            Value::U32(v) => i64::from(*v),
            Value::I32(v) => i64::from(*v),
            Value::U64(v) => i64::try_from(*v).unwrap_or(-1),
            Value::I64(v) => *v,
            _ => return Err(self.wrong_type(key, "an integer")),
        };
        usize::try_from(n)
            .map(Some)
            .map_err(|_| self.wrong_type(key, "a non-negative integer"))
    }

    pub fn bool_opt(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(self.wrong_type(key, "a boolean")),
        }
    }

    pub fn usize(&self, key: &str) -> Result<usize> {
        self.usize_opt(key)?.ok_or_else(|| self.missing(key))
    }

    pub fn f64_opt(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::F32(v)) => Ok(Some(f64::from(*v))),
            Some(Value::F64(v)) => Ok(Some(*v)),
            Some(_) => Err(self.wrong_type(key, "a float")),
        }
    }

    pub fn string_opt(&self, key: &str) -> Result<Option<&'a str>> {
        self.get(key)
            .map(|v| {
                v.to_string()
                    .map(String::as_str)
                    .map_err(|_| self.wrong_type(key, "a string"))
            })
            .transpose()
    }

    pub fn string(&self, key: &str) -> Result<&'a str> {
        self.string_opt(key)?.ok_or_else(|| self.missing(key))
    }

    pub(crate) fn strings(&self, key: &str) -> Result<Vec<&'a str>> {
        let values = self
            .get(key)
            .ok_or_else(|| self.missing(key))?
            .to_vec()
            .map_err(|_| self.wrong_type(key, "an array"))?;
        values
            .iter()
            .map(|v| {
                v.to_string()
                    .map(String::as_str)
                    .map_err(|_| self.wrong_type(key, "an array of strings"))
            })
            .collect()
    }

    /// A numeric array as f64 (sentencepiece scores); empty when the key is absent.
    pub(crate) fn floats(&self, key: &str) -> Result<Vec<f64>> {
        self.numbers(key, "an array of numbers", |v| match v {
            Value::F32(x) => Some(f64::from(*x)),
            Value::F64(x) => Some(*x),
            _ => None,
        })
    }

    /// An integer array (token types); empty when the key is absent.
    pub(crate) fn integers(&self, key: &str) -> Result<Vec<i64>> {
        self.numbers(key, "an array of integers", |v| match v {
            Value::I32(n) => Some(i64::from(*n)),
            Value::U32(n) => Some(i64::from(*n)),
            Value::I64(n) => Some(*n),
            _ => None,
        })
    }

    fn numbers<T>(
        &self,
        key: &str,
        wanted: &str,
        number: impl Fn(&Value) -> Option<T>,
    ) -> Result<Vec<T>> {
        let Some(values) = self.get(key) else {
            return Ok(Vec::new());
        };
        let values = values
            .to_vec()
            .map_err(|_| self.wrong_type(key, "an array"))?;
        values
            .iter()
            .map(|v| number(v).ok_or_else(|| self.wrong_type(key, wanted)))
            .collect()
    }
}

/// The decoder config a GGUF file describes.
pub fn decoder_config<R: std::io::Read + std::io::Seek>(
    content: &Content,
    reader: &mut R,
    path: &Path,
) -> Result<DecoderConfig> {
    let meta = Metadata::new(content, path);
    let arch_name = meta.string("general.architecture")?;
    let architecture = Architecture::parse(arch_name)?;
    let key = |suffix: &str| format!("{arch_name}.{suffix}");
    let hidden_size = meta.usize(&key("embedding_length"))?;
    let num_heads = meta.usize(&key("attention.head_count"))?;
    let num_layers = meta.usize(&key("block_count"))?;
    let embedding_error = |message: String| ModelError::Tensor {
        name: "token_embd.weight".into(),
        file: path.to_path_buf(),
        message,
    };
    let vocab_size = match content.tensor_infos.get("token_embd.weight") {
        None => return Err(embedding_error("missing".into())),
        Some(info) => match info.shape.dims() {
            &[vocab, hidden] if hidden == hidden_size && vocab > 0 => vocab,
            dims => {
                return Err(embedding_error(format!(
                    "shape {dims:?}, expected (vocab_size, {hidden_size})"
                )))
            }
        },
    };
    let scaling = match meta.string_opt(&key("rope.scaling.type"))? {
        None | Some("none") => RopeScaling::None,
        Some("linear") => RopeScaling::Linear {
            factor: meta.f64_opt(&key("rope.scaling.factor"))?.unwrap_or(1.0),
        },
        Some(other) => {
            return Err(ModelError::file(
                path,
                format!("rope scaling `{other}` is not supported"),
            ))
        }
    };
    let scaling =
        match (rope_frequency_factors(content, reader, path)?, scaling) {
            (None, scaling) => scaling,
            (Some(factors), RopeScaling::None) => RopeScaling::Factors(factors),
            (Some(_), _) => return Err(ModelError::file(
                path,
                "`rope_freqs.weight` together with a rope scaling type: one of them is expected",
            )),
        };
    let context_length = meta.usize_opt(&key("context_length"))?.unwrap_or(4096);
    let scaling = match long_rope(content, reader, path, &meta, &key, context_length)? {
        Some(long_rope) => long_rope,
        None => scaling,
    };
    let rules = architecture.rules();
    let style = rules.gguf_rotary;
    let qkv_bias = content.tensor_infos.contains_key("blk.0.attn_q.bias");
    let window = meta.usize_opt(&key("attention.sliding_window"))?;
    let gemma = rules.gemma;
    let head_dim = meta
        .usize_opt(&key("attention.key_length"))?
        .unwrap_or(hidden_size / num_heads.max(1));
    // The family's pattern of sliding layers (Gemma), unless the file says; otherwise the
    // file's window applies to every layer.
    let pattern = match rules.sliding {
        SlidingLayers::AllButEvery(n) => Some(
            meta.usize_opt(&key("attention.sliding_window_pattern"))?
                .unwrap_or(n),
        ),
        SlidingLayers::EveryLayer | SlidingLayers::AsConfigured => None,
    };
    let sliding_window = (0..num_layers)
        .map(|layer| match pattern {
            Some(n) => window.filter(|_| SlidingLayers::pattern_slides(n, layer)),
            None => window,
        })
        .collect();
    // GGUF has no query_pre_attn_scalar: as llama.cpp, the 27B Gemmas (46 and 62 layers)
    // scale by hidden_size / heads, the others by head_dim.
    let query_scalar = if gemma && matches!(num_layers, 46 | 62) {
        hidden_size / num_heads.max(1)
    } else {
        head_dim
    };
    let theta = meta.f64_opt(&key("rope.freq_base"))?.unwrap_or(10_000.0);
    let config = DecoderConfig {
        architecture,
        vocab_size,
        hidden_size,
        intermediate_size: meta.usize(&key("feed_forward_length"))?,
        num_layers,
        num_heads,
        num_kv_heads: meta
            .usize_opt(&key("attention.head_count_kv"))?
            .unwrap_or(num_heads),
        head_dim,
        rms_norm_eps: meta
            .f64_opt(&key("attention.layer_norm_rms_epsilon"))?
            .unwrap_or(1e-6),
        rope: RopeConfig {
            theta,
            scaling,
            style,
        },
        max_position_embeddings: context_length,
        attention_bias: AttentionBias {
            qkv: qkv_bias,
            output: content.tensor_infos.contains_key("blk.0.attn_output.bias"),
        },
        qk_norm: content
            .tensor_infos
            .contains_key("blk.0.attn_q_norm.weight"),
        sliding_window,
        tie_word_embeddings: !content.tensor_infos.contains_key("output.weight"),
        fused_projections: rules.fused_projections,
        // llama.cpp's converter already added the one to Gemma's norm weights.
        norm_weights_offset: false,
        embedding_scale: rules.embedding_scale(hidden_size),
        mlp_activation: rules.default_activation(),
        sandwich_norms: content
            .tensor_infos
            .contains_key("blk.0.post_attention_norm.weight"),
        attention_scale: 1.0 / (query_scalar as f64).sqrt(),
        attention_softcap: meta.f64_opt(&key("attn_logit_softcapping"))?,
        final_logit_softcap: meta.f64_opt(&key("final_logit_softcapping"))?,
        // Gemma 3's sliding-window layers: llama.cpp's fixed local base.
        local_rope: rules.local_rope.then_some(RopeConfig {
            theta: 10_000.0,
            scaling: RopeScaling::None,
            style,
        }),
    };
    config.validate(path)?;
    Ok(config)
}

/// The per-frequency rope divisors of `rope_freqs.weight`, when the file has them.
fn rope_frequency_factors<R: std::io::Read + std::io::Seek>(
    content: &Content,
    reader: &mut R,
    path: &Path,
) -> Result<Option<Vec<f32>>> {
    vector_tensor(content, reader, path, "rope_freqs.weight")
}

/// Phi-3's LongRoPE, when the file has its two factor tensors (`rope_factors_short.weight`,
/// `rope_factors_long.weight`, as llama.cpp's converter writes them) and the original context
/// length; the attention factor from the metadata, else transformers' default.
fn long_rope<R: std::io::Read + std::io::Seek>(
    content: &Content,
    reader: &mut R,
    path: &Path,
    meta: &Metadata<'_>,
    key: &dyn Fn(&str) -> String,
    context_length: usize,
) -> Result<Option<RopeScaling>> {
    let short = vector_tensor(content, reader, path, "rope_factors_short.weight")?;
    let long = vector_tensor(content, reader, path, "rope_factors_long.weight")?;
    let (Some(short), Some(long)) = (short, long) else {
        return Ok(None);
    };
    let original = meta.usize(&key("rope.scaling.original_context_length"))?;
    let factor = context_length as f64 / original.max(1) as f64;
    let attention_factor = match meta.f64_opt(&key("rope.scaling.attn_factor"))? {
        Some(factor) => factor,
        None if factor <= 1.0 => 1.0,
        None => (1.0 + factor.ln() / (original as f64).ln()).sqrt(),
    };
    Ok(Some(RopeScaling::LongRope {
        short,
        long,
        original_max_position_embeddings: original,
        attention_factor,
    }))
}

/// A one-dimensional f32 tensor of the file, when it has it.
fn vector_tensor<R: std::io::Read + std::io::Seek>(
    content: &Content,
    reader: &mut R,
    path: &Path,
    name: &str,
) -> Result<Option<Vec<f32>>> {
    if !content.tensor_infos.contains_key(name) {
        return Ok(None);
    }
    let failed = |message: String| ModelError::Tensor {
        name: name.into(),
        file: path.to_path_buf(),
        message,
    };
    let device = candle_core::Device::Cpu;
    let tensor = content
        .tensor(reader, name, &device)
        .map_err(|e| failed(e.to_string()))?;
    let values = tensor
        .dequantize(&device)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(|e| failed(e.to_string()))?;
    Ok(Some(values))
}
