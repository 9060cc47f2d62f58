//! The one decoder: Llama, Mistral, Qwen2 and Qwen3 are this code with different toggles in
//! [`DecoderConfig`]. One [`Decoder::forward`] call runs a flat batch of tokens from many
//! sequences over a paged KV cache and returns logits only for the rows that asked for them.

use crate::batch::{FlatBatch, KvCache, SequenceStep};
use crate::config::DecoderConfig;
use crate::error::Result;
use crate::layers::{Linear, RmsNorm, Rotary};
use crate::weights::{Role, WeightSource};
use candle_core::{DType, Device, Tensor};
use lantern_kernels::{AttentionParams, PagedAttention, SequenceAttention};

#[derive(Debug)]
struct Attention {
    query: Linear,
    key: Linear,
    value: Linear,
    output: Linear,
    /// Qwen3: RMS norm over each head of queries and keys, before rotary.
    query_norm: Option<RmsNorm>,
    key_norm: Option<RmsNorm>,
    sliding_window: Option<usize>,
}

#[derive(Debug)]
struct Mlp {
    gate: Linear,
    up: Linear,
    down: Linear,
}

#[derive(Debug)]
struct Layer {
    attention_norm: RmsNorm,
    attention: Attention,
    mlp_norm: RmsNorm,
    mlp: Mlp,
}

#[derive(Debug)]
pub struct Decoder {
    config: DecoderConfig,
    embedding: Tensor,
    layers: Vec<Layer>,
    final_norm: RmsNorm,
    lm_head: Linear,
    rotary: Rotary,
    kernels: Box<dyn PagedAttention>,
    dtype: DType,
    device: Device,
}

impl Decoder {
    /// Builds the decoder from `weights`, checking every tensor's shape against `config`.
    pub fn load(
        config: DecoderConfig,
        weights: &dyn WeightSource,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let naming = weights.naming();
        let c = &config;
        let norm = |role: Role, layer: usize, size: usize| -> Result<RmsNorm> {
            Ok(RmsNorm {
                weight: weights.dense(&naming.weight(role, layer), &[size])?,
                eps: c.rms_norm_eps,
            })
        };
        let linear = |role: Role, layer: usize, out_in: (usize, usize), bias: bool| {
            weights.linear(&naming.weight(role, layer), out_in, bias)
        };
        let (hidden, q_size, kv_size) = (
            c.hidden_size,
            c.num_heads * c.head_dim,
            c.num_kv_heads * c.head_dim,
        );
        let embedding =
            weights.dense(&naming.weight(Role::Embedding, 0), &[c.vocab_size, hidden])?;
        let mut layers = Vec::with_capacity(c.num_layers);
        for l in 0..c.num_layers {
            let qkv_bias = c.attention_bias.qkv;
            let attention = Attention {
                query: linear(Role::Query, l, (q_size, hidden), qkv_bias)?,
                key: linear(Role::Key, l, (kv_size, hidden), qkv_bias)?,
                value: linear(Role::Value, l, (kv_size, hidden), qkv_bias)?,
                output: linear(
                    Role::AttentionOutput,
                    l,
                    (hidden, q_size),
                    c.attention_bias.output,
                )?,
                query_norm: c
                    .qk_norm
                    .then(|| norm(Role::QueryNorm, l, c.head_dim))
                    .transpose()?,
                key_norm: c
                    .qk_norm
                    .then(|| norm(Role::KeyNorm, l, c.head_dim))
                    .transpose()?,
                sliding_window: c.sliding_window[l],
            };
            let mlp = Mlp {
                gate: linear(Role::Gate, l, (c.intermediate_size, hidden), false)?,
                up: linear(Role::Up, l, (c.intermediate_size, hidden), false)?,
                down: linear(Role::Down, l, (hidden, c.intermediate_size), false)?,
            };
            layers.push(Layer {
                attention_norm: norm(Role::AttentionNorm, l, hidden)?,
                attention,
                mlp_norm: norm(Role::MlpNorm, l, hidden)?,
                mlp,
            });
        }
        let head_role = if c.tie_word_embeddings {
            Role::Embedding
        } else {
            Role::LmHead
        };
        let lm_head =
            weights.linear(&naming.weight(head_role, 0), (c.vocab_size, hidden), false)?;
        Ok(Self {
            final_norm: norm(Role::FinalNorm, 0, hidden)?,
            rotary: Rotary::new(&c.rope, c.head_dim, device)?,
            kernels: lantern_kernels::for_device(device),
            embedding,
            layers,
            lm_head,
            dtype,
            device: device.clone(),
            config,
        })
    }

    pub fn config(&self) -> &DecoderConfig {
        &self.config
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Runs every sequence's new tokens through the model, writing their keys and values into
    /// `cache`. Returns f32 logits `(rows, vocab)`: for each sequence in order, the rows its
    /// [`crate::LogitsWanted`] asks for.
    pub fn forward(&self, steps: &[SequenceStep], cache: &KvCache) -> Result<Tensor> {
        let batch = FlatBatch::new(steps, &self.config, cache, &self.device)?;
        let mut hidden = self.embedding.index_select(&batch.token_ids, 0)?;
        for (layer, layer_cache) in self.layers.iter().zip(&cache.layers) {
            let attention_in = layer.attention_norm.forward(&hidden)?;
            let attention_out =
                self.attention(&layer.attention, &attention_in, &batch, layer_cache)?;
            hidden = (hidden + attention_out)?;
            let mlp_in = layer.mlp_norm.forward(&hidden)?;
            let mlp = &layer.mlp;
            let activated =
                (candle_nn::ops::silu(&mlp.gate.forward(&mlp_in)?)? * mlp.up.forward(&mlp_in)?)?;
            hidden = (hidden + mlp.down.forward(&activated)?)?;
        }
        let vocab = self.config.vocab_size;
        if batch.logit_rows.is_empty() {
            return Ok(Tensor::zeros((0, vocab), DType::F32, &self.device)?);
        }
        let rows = Tensor::new(batch.logit_rows.as_slice(), &self.device)?;
        let last = self.final_norm.forward(&hidden.index_select(&rows, 0)?)?;
        Ok(self.lm_head.forward(&last)?.to_dtype(DType::F32)?)
    }

    fn attention(
        &self,
        attention: &Attention,
        x: &Tensor,
        batch: &FlatBatch,
        cache: &lantern_kernels::LayerKvCache,
    ) -> Result<Tensor> {
        let c = &self.config;
        let n = x.dim(0)?;
        let heads = |t: Tensor, count: usize, norm: &Option<RmsNorm>| -> Result<Tensor> {
            let t = t.reshape((n, count, c.head_dim))?;
            let t = match norm {
                Some(norm) => norm.forward(&t)?,
                None => t,
            };
            Ok(self.rotary.apply(&t, &batch.positions)?)
        };
        let query = heads(
            attention.query.forward(x)?,
            c.num_heads,
            &attention.query_norm,
        )?;
        let key = heads(
            attention.key.forward(x)?,
            c.num_kv_heads,
            &attention.key_norm,
        )?;
        let value = attention
            .value
            .forward(x)?
            .reshape((n, c.num_kv_heads, c.head_dim))?;
        self.kernels
            .write_kv(cache, &key, &value, &batch.slot_mapping)?;
        let sequences: Vec<SequenceAttention<'_>> = batch
            .sequences
            .iter()
            .map(|(offset, len, before, slots)| SequenceAttention {
                query_offset: *offset,
                query_len: *len,
                context_before: *before,
                slots,
            })
            .collect();
        let params = AttentionParams {
            scale: 1.0 / (c.head_dim as f64).sqrt(),
            sliding_window: attention.sliding_window,
        };
        let out = self.kernels.attention(&query, cache, &sequences, params)?;
        Ok(attention
            .output
            .forward(&out.reshape((n, c.num_heads * c.head_dim))?)?)
    }
}
