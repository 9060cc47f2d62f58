//! Fused projections read as their parts. Phi-3 stores Q, K and V as one `qkv` matrix and
//! the gate and up projections as one `gate_up` (in GGUF: `attn_qkv`, and `ffn_up` holding
//! both). The decoder asks for the parts by their usual names; this source answers with the
//! rows of the fused tensor that make each part. (The CPU decoder stacks Q, K and V, and
//! gate and up, back into one product, so nothing is lost by the split.)

use crate::config::DecoderConfig;
use crate::error::{ModelError, Result};
use crate::layers::Linear;
use crate::weights::{bias_name, Naming, QuantBlocks, WeightSource};
use std::borrow::Cow;

/// Rows `start..start + rows` of the fused tensor `stored`, which has `total` rows.
struct Part {
    stored: String,
    start: usize,
    rows: usize,
    total: usize,
}

pub struct FusedParts<'a> {
    inner: &'a dyn WeightSource,
    query_rows: usize,
    key_value_rows: usize,
    feed_forward_rows: usize,
}

impl<'a> FusedParts<'a> {
    pub fn new(inner: &'a dyn WeightSource, config: &DecoderConfig) -> Self {
        Self {
            inner,
            query_rows: config.num_heads * config.head_dim,
            key_value_rows: config.num_kv_heads * config.head_dim,
            feed_forward_rows: config.intermediate_size,
        }
    }

    /// Where the part `name` lives, when it is one.
    fn part(&self, name: &str) -> Option<Part> {
        let (q, kv, ff) = (self.query_rows, self.key_value_rows, self.feed_forward_rows);
        let qkv = q + 2 * kv;
        // (the part's suffix, the fused tensor's suffix, first row, rows, fused rows)
        let table: [(&str, &str, usize, usize, usize); 5] = match self.inner.naming() {
            Naming::HuggingFace => [
                (
                    "self_attn.q_proj.weight",
                    "self_attn.qkv_proj.weight",
                    0,
                    q,
                    qkv,
                ),
                (
                    "self_attn.k_proj.weight",
                    "self_attn.qkv_proj.weight",
                    q,
                    kv,
                    qkv,
                ),
                (
                    "self_attn.v_proj.weight",
                    "self_attn.qkv_proj.weight",
                    q + kv,
                    kv,
                    qkv,
                ),
                (
                    "mlp.gate_proj.weight",
                    "mlp.gate_up_proj.weight",
                    0,
                    ff,
                    2 * ff,
                ),
                (
                    "mlp.up_proj.weight",
                    "mlp.gate_up_proj.weight",
                    ff,
                    ff,
                    2 * ff,
                ),
            ],
            Naming::Gguf => [
                ("attn_q.weight", "attn_qkv.weight", 0, q, qkv),
                ("attn_k.weight", "attn_qkv.weight", q, kv, qkv),
                ("attn_v.weight", "attn_qkv.weight", q + kv, kv, qkv),
                ("ffn_gate.weight", "ffn_up.weight", 0, ff, 2 * ff),
                ("ffn_up.weight", "ffn_up.weight", ff, ff, 2 * ff),
            ],
        };
        table
            .into_iter()
            .find_map(|(part, fused, start, rows, total)| {
                let layer = name.strip_suffix(part)?;
                Some(Part {
                    stored: format!("{layer}{fused}"),
                    start,
                    rows,
                    total,
                })
            })
    }
}

impl WeightSource for FusedParts<'_> {
    fn naming(&self) -> Naming {
        self.inner.naming()
    }

    fn dense(&self, name: &str, shape: &[usize]) -> Result<candle_core::Tensor> {
        self.inner.dense(name, shape)
    }

    fn linear(&self, name: &str, (out, inp): (usize, usize), with_bias: bool) -> Result<Linear> {
        let Some(part) = self.part(name) else {
            return self.inner.linear(name, (out, inp), with_bias);
        };
        let rows = |t: candle_core::Tensor| t.narrow(0, part.start, part.rows);
        let bias = with_bias
            .then(|| {
                self.inner
                    .dense(&bias_name(&part.stored), &[part.total])
                    .and_then(|b| Ok(rows(b)?))
            })
            .transpose()?;
        let weight = match self.inner.linear(&part.stored, (part.total, inp), false)? {
            Linear::Dense { weight, .. } => weight,
            // candle's quantized product takes whole tensors: the part is expanded.
            Linear::Quantized { weight, .. } => match weight {
                candle_core::quantized::QMatMul::QTensor(q) => q.dequantize(&q.device())?,
                candle_core::quantized::QMatMul::Tensor(t)
                | candle_core::quantized::QMatMul::TensorF16(t) => t,
            },
        };
        Ok(Linear::Dense {
            weight: rows(weight)?,
            bias,
        })
    }

    fn quantized_blocks(
        &self,
        name: &str,
        (out, inp): (usize, usize),
    ) -> Result<Option<QuantBlocks<'_>>> {
        let Some(part) = self.part(name) else {
            return self.inner.quantized_blocks(name, (out, inp));
        };
        let Some(blocks) = self
            .inner
            .quantized_blocks(&part.stored, (part.total, inp))?
        else {
            return Ok(None);
        };
        // Rows are whole blocks, one after the other.
        let row_bytes = inp / blocks.format.gguf_block_values() * blocks.format.gguf_block_bytes();
        let range = part.start * row_bytes..(part.start + part.rows) * row_bytes;
        let data = match blocks.data {
            Cow::Borrowed(data) => data.get(range).map(Cow::Borrowed),
            Cow::Owned(data) => data.get(range).map(|d| Cow::Owned(d.to_vec())),
        }
        .ok_or_else(|| ModelError::Tensor {
            name: part.stored.clone(),
            file: Default::default(),
            message: format!("shorter than its {} rows", part.total),
        })?;
        Ok(Some(QuantBlocks {
            format: blocks.format,
            data,
        }))
    }
}
