//! Weights as the CPU decoder reads them: dense rows, or GGUF blocks the integer kernels
//! multiply as they are; stacked (Q, K, V) and packed for `lantern_kernels::cpu`.

use crate::error::{ModelError, Result};
use crate::weights::QuantBlocks;
use lantern_kernels::cpu::quant::{GgufPart, ROWS};
use lantern_kernels::cpu::{PackedMatrix, WeightFormat};

/// A weight as read for the CPU kernels.
pub(super) enum Weight<'a> {
    /// Row-major `(out, in)` values.
    Dense(Vec<f32>),
    /// GGUF tensors stacked by rows, each in a format the integer kernels multiply as it is.
    Blocks(Vec<QuantBlocks<'a>>),
}

impl<'a> Weight<'a> {
    pub(super) fn blocks(blocks: QuantBlocks<'a>) -> Self {
        Weight::Blocks(vec![blocks])
    }

    pub(super) fn into_dense(self) -> Vec<f32> {
        match self {
            Weight::Dense(values) => values,
            Weight::Blocks(parts) => parts
                .iter()
                .flat_map(|b| b.format.dequantize_gguf(&b.data))
                .collect(),
        }
    }

    /// Rows of several `(_, k)` matrices stacked into one: still blocks when all are blocks
    /// and, where formats change, the rows before fill whole panels of 16 (a Q4_K_M file's
    /// Q4_K query and key over its Q6_K value); dense otherwise.
    pub(super) fn stack(parts: Vec<Weight<'a>>, k: usize) -> Weight<'a> {
        let mut stacked: Vec<QuantBlocks<'a>> = Vec::new();
        for part in &parts {
            let Weight::Blocks(blocks) = part else {
                return Weight::Dense(parts.into_iter().flat_map(Weight::into_dense).collect());
            };
            for b in blocks {
                match stacked.last_mut() {
                    Some(last) if last.format == b.format => {
                        last.data.to_mut().extend_from_slice(&b.data);
                    }
                    _ => stacked.push(b.clone()),
                }
            }
        }
        let whole_panels = |b: &QuantBlocks| {
            let row_bytes = k / b.format.gguf_block_values() * b.format.gguf_block_bytes();
            row_bytes > 0 && (b.data.len() / row_bytes).is_multiple_of(ROWS)
        };
        if stacked
            .split_last()
            .is_some_and(|(_, before)| before.iter().all(whole_panels))
        {
            Weight::Blocks(stacked)
        } else {
            Weight::Dense(parts.into_iter().flat_map(Weight::into_dense).collect())
        }
    }

    pub(super) fn pack(self, n: usize, k: usize, format: WeightFormat) -> Result<PackedMatrix> {
        match self {
            Weight::Dense(values) => Ok(PackedMatrix::pack(&values, n, k, format)),
            Weight::Blocks(parts) => {
                let parts: Vec<GgufPart> = parts
                    .iter()
                    .map(|b| GgufPart {
                        format: b.format,
                        data: &b.data,
                    })
                    .collect();
                PackedMatrix::quantized_parts(&parts, n, k).map_err(ModelError::Kernels)
            }
        }
    }
}
