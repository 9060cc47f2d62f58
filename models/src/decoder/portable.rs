//! The portable execution of the decoder: candle tensor ops and the portable paged attention,
//! on any device candle supports. It is the reference the CPU kernels are checked against.

use super::plan::{MatrixPlan, ModelPlan, NormPlan};
use crate::batch::{attention_views, FlatBatch, SequenceStep, TensorCache};
use crate::config::{DecoderConfig, MlpActivation};
use crate::error::Result;
use crate::layers::{Angles, Linear, RmsNorm, Rotary};
use crate::lora::{LoraAdapter, Projection};
use crate::weights::WeightSource;
use candle_core::{DType, Device, Tensor};
use lantern_kernels::{
    AttentionNeeds, AttentionParams, LayerKvCache, PagedAttention, StepMetadata, Uploads,
};
use lora::{PortableAdapters, StepGroups};

mod lora;

/// What one layer's attention needs from the step (built once per step).
struct Step<'a> {
    config: &'a DecoderConfig,
    metadata: &'a StepMetadata,
    cache: &'a LayerKvCache,
    layer: usize,
    adapters: &'a StepGroups,
}

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
    /// Gemma: normalises the attention output before it joins the residual.
    post_attention_norm: Option<RmsNorm>,
    mlp_norm: RmsNorm,
    mlp: Mlp,
    /// Gemma: normalises the MLP output before it joins the residual.
    post_mlp_norm: Option<RmsNorm>,
    /// Rotates with the local rotary (Gemma 3's sliding-window layers).
    local_rotary: bool,
}

#[derive(Debug)]
pub(crate) struct PortableModel {
    embedding: Tensor,
    layers: Vec<Layer>,
    final_norm: RmsNorm,
    lm_head: Linear,
    rotary: Rotary,
    local_rotary: Option<Rotary>,
    /// Chosen per block size (FlashAttention wants blocks of a multiple of 32 tokens).
    dtype: DType,
    adapters: PortableAdapters,
}

impl PortableModel {
    /// Builds the model from `weights`, checking every tensor's shape against `config`.
    pub fn load(
        config: &DecoderConfig,
        weights: &dyn WeightSource,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let naming = weights.naming();
        let c = config;
        let plan = ModelPlan::new(c);
        let norm = |p: NormPlan| -> Result<RmsNorm> {
            let weight = weights.dense(&naming.weight(p.role, p.layer), &[p.size])?;
            // Gemma stores `w` for a norm that multiplies by `1 + w`.
            let weight = if c.norm_weights_offset {
                (weight + 1.0)?
            } else {
                weight
            };
            Ok(RmsNorm {
                weight,
                eps: c.rms_norm_eps,
            })
        };
        let optional_norm = |p: Option<NormPlan>| p.map(norm).transpose();
        let linear =
            |m: MatrixPlan| weights.linear(&naming.weight(m.role, m.layer), m.out_in, m.bias);
        let (vocab, hidden) = plan.embedding.out_in;
        let embedding = weights.dense(&naming.weight(plan.embedding.role, 0), &[vocab, hidden])?;
        let layers = plan
            .layers
            .iter()
            .map(|l| -> Result<Layer> {
                Ok(Layer {
                    attention_norm: norm(l.attention_norm)?,
                    attention: Attention {
                        query: linear(l.query)?,
                        key: linear(l.key)?,
                        value: linear(l.value)?,
                        output: linear(l.output)?,
                        query_norm: optional_norm(l.query_norm)?,
                        key_norm: optional_norm(l.key_norm)?,
                        sliding_window: l.sliding_window,
                    },
                    post_attention_norm: optional_norm(l.post_attention_norm)?,
                    mlp_norm: norm(l.mlp_norm)?,
                    mlp: Mlp {
                        gate: linear(l.gate)?,
                        up: linear(l.up)?,
                        down: linear(l.down)?,
                    },
                    post_mlp_norm: optional_norm(l.post_mlp_norm)?,
                    local_rotary: l.local_rotary,
                })
            })
            .collect::<Result<_>>()?;
        let lm_head = linear(plan.head)?;
        Ok(Self {
            final_norm: norm(plan.final_norm)?,
            rotary: Rotary::new(&c.rope, c.head_dim, device)?,
            local_rotary: c
                .local_rope
                .as_ref()
                .map(|rope| Rotary::new(rope, c.head_dim, device))
                .transpose()?,
            dtype,
            embedding,
            layers,
            lm_head,
            adapters: PortableAdapters::default(),
        })
    }

    /// Loads `adapter` for steps to name by `id` (replacing one loaded under it), on the
    /// model's device and in its dtype.
    pub fn add_adapter(&mut self, id: u32, adapter: &LoraAdapter, device: &Device) -> Result<()> {
        let layers = self.layers.len();
        self.adapters
            .insert(id, adapter, layers, self.embedding.dtype(), device)
    }

    pub fn remove_adapter(&mut self, id: u32) -> bool {
        self.adapters.remove(id)
    }

    pub fn has_adapter(&self, id: u32) -> bool {
        self.adapters.contains(id)
    }

    pub fn adapter_bytes(&self) -> usize {
        self.adapters.bytes()
    }

    /// The attention implementation for a cache of blocks of `block_size` tokens.
    pub fn attention_kernels(
        &self,
        config: &DecoderConfig,
        device: &Device,
        block_size: usize,
    ) -> Box<dyn PagedAttention> {
        let needs = AttentionNeeds {
            dtype: self.dtype,
            head_dim: config.head_dim,
            block_size,
        };
        lantern_kernels::for_device(device, needs)
    }

    /// See [`crate::Decoder::forward`]. Everything the step uploads goes through `uploads`:
    /// a fixed handful of copies per step, none per layer or per sequence.
    pub fn forward(
        &self,
        config: &DecoderConfig,
        steps: &[SequenceStep],
        cache: &TensorCache,
        device: &Device,
        uploads: &dyn Uploads,
    ) -> Result<Tensor> {
        let (shape, kernels) = (&cache.shape, cache.attention.as_ref());
        let batch = FlatBatch::new(steps, config, shape, device, uploads)?;
        let sequences = attention_views(steps);
        let metadata = kernels.prepare(&sequences, shape, device, uploads)?;
        let adapters = StepGroups::new(
            steps.iter().map(|s| (s.adapter, s.tokens.len())),
            device,
            uploads,
        )?;
        // Rotary angles depend only on positions: once per step, not per layer.
        let dtype = self.embedding.dtype();
        let angles = self.rotary.angles(&batch.positions, dtype)?;
        let local_angles = self
            .local_rotary
            .as_ref()
            .map(|r| r.angles(&batch.positions, dtype))
            .transpose()?;
        let mut hidden = self.embedding.index_select(&batch.token_ids, 0)?;
        if let Some(scale) = config.embedding_scale {
            hidden = (hidden * f64::from(scale))?;
        }
        let after = |norm: &Option<RmsNorm>, x: Tensor| -> Result<Tensor> {
            Ok(match norm {
                Some(norm) => norm.forward(&x)?,
                None => x,
            })
        };
        for (index, (layer, layer_cache)) in self.layers.iter().zip(&cache.layers).enumerate() {
            let attention_in = layer.attention_norm.forward(&hidden)?;
            let step = Step {
                config,
                metadata: &metadata,
                cache: layer_cache,
                layer: index,
                adapters: &adapters,
            };
            let angles = match (&local_angles, layer.local_rotary) {
                (Some(local), true) => local,
                _ => &angles,
            };
            let attention_out =
                self.attention(&layer.attention, angles, kernels, &attention_in, &step)?;
            hidden = (hidden + after(&layer.post_attention_norm, attention_out)?)?;
            let mlp_in = layer.mlp_norm.forward(&hidden)?;
            let mlp = &layer.mlp;
            let gate = self.project(&step, Projection::Gate, &mlp.gate, &mlp_in)?;
            let gate = match config.mlp_activation {
                MlpActivation::Silu => candle_nn::ops::silu(&gate)?,
                MlpActivation::GeluTanh => gate.gelu()?,
            };
            let up = self.project(&step, Projection::Up, &mlp.up, &mlp_in)?;
            let activated = (gate * up)?;
            let mlp_out = self.project(&step, Projection::Down, &mlp.down, &activated)?;
            hidden = (hidden + after(&layer.post_mlp_norm, mlp_out)?)?;
        }
        let vocab = config.vocab_size;
        if batch.logit_rows.is_empty() {
            return Ok(Tensor::zeros((0, vocab), DType::F32, device)?);
        }
        let count = batch.logit_rows.len();
        let rows = uploads.u32s(batch.logit_rows, &[count], device)?;
        let last = self.final_norm.forward(&hidden.index_select(&rows, 0)?)?;
        let logits = self.lm_head.forward(&last)?.to_dtype(DType::F32)?;
        Ok(match config.final_logit_softcap {
            Some(cap) => ((logits / cap)?.tanh()? * cap)?,
            None => logits,
        })
    }

    fn attention(
        &self,
        attention: &Attention,
        angles: &Angles,
        kernels: &dyn PagedAttention,
        x: &Tensor,
        step: &Step<'_>,
    ) -> Result<Tensor> {
        let c = step.config;
        let n = x.dim(0)?;
        let heads = |t: Tensor, count: usize, norm: &Option<RmsNorm>| -> Result<Tensor> {
            let t = t.reshape((n, count, c.head_dim))?;
            let t = match norm {
                Some(norm) => norm.forward(&t)?,
                None => t,
            };
            Ok(angles.rotate(&t)?)
        };
        let query = heads(
            self.project(step, Projection::Query, &attention.query, x)?,
            c.num_heads,
            &attention.query_norm,
        )?;
        let key = heads(
            self.project(step, Projection::Key, &attention.key, x)?,
            c.num_kv_heads,
            &attention.key_norm,
        )?;
        let value = self
            .project(step, Projection::Value, &attention.value, x)?
            .reshape((n, c.num_kv_heads, c.head_dim))?;
        let params = AttentionParams {
            scale: c.attention_scale,
            sliding_window: attention.sliding_window,
            softcap: c.attention_softcap,
        };
        let out = kernels.attend(&query, &key, &value, step.cache, step.metadata, params)?;
        let out = out.reshape((n, c.num_heads * c.head_dim))?;
        self.project(step, Projection::Output, &attention.output, &out)
    }

    /// `linear(x)`, plus the LoRA delta of the rows that run under an adapter.
    fn project(
        &self,
        step: &Step<'_>,
        projection: Projection,
        linear: &Linear,
        x: &Tensor,
    ) -> Result<Tensor> {
        let y = linear.forward(x)?;
        self.adapters
            .apply(step.adapters, step.layer, projection, x, y)
    }
}
