//! Weights as the CPU decoder reads them: dense rows, or GGUF blocks the integer kernels
//! multiply as they are; stacked (Q, K, V) and packed for `lantern_kernels::cpu`.

use crate::error::{ModelError, Result};
use crate::weights::QuantBlocks;
use lantern_kernels::cpu::{PackedMatrix, QuantFormat, WeightFormat};

/// A weight as read for the CPU kernels.
pub(super) enum Weight<'a> {
    /// Row-major `(out, in)` values.
    Dense(Vec<f32>),
    /// GGUF blocks the integer kernels multiply as they are.
    Blocks(QuantBlocks<'a>),
}

impl<'a> Weight<'a> {
    pub(super) fn into_dense(self) -> Vec<f32> {
        match self {
            Weight::Dense(values) => values,
            Weight::Blocks(blocks) => dequantize_blocks(&blocks),
        }
    }

    /// Rows of several matrices stacked into one: still blocks when all share a format.
    pub(super) fn stack(parts: Vec<Weight<'a>>) -> Weight<'a> {
        let formats: Vec<Option<QuantFormat>> = parts
            .iter()
            .map(|p| match p {
                Weight::Blocks(b) => Some(b.format),
                Weight::Dense(_) => None,
            })
            .collect();
        match formats[0] {
            Some(format) if formats.iter().all(|f| *f == Some(format)) => {
                let mut data = Vec::new();
                for part in parts {
                    if let Weight::Blocks(b) = part {
                        data.extend_from_slice(&b.data);
                    }
                }
                Weight::Blocks(QuantBlocks {
                    format,
                    data: data.into(),
                })
            }
            _ => Weight::Dense(parts.into_iter().flat_map(Weight::into_dense).collect()),
        }
    }

    pub(super) fn pack(self, n: usize, k: usize, format: WeightFormat) -> Result<PackedMatrix> {
        match self {
            Weight::Dense(values) => Ok(PackedMatrix::pack(&values, n, k, format)),
            Weight::Blocks(b) => {
                PackedMatrix::quantized(b.format, &b.data, n, k).map_err(ModelError::Kernels)
            }
        }
    }
}

/// GGUF blocks expanded to row-major f32, for matrices whose parts mix formats.
fn dequantize_blocks(blocks: &QuantBlocks) -> Vec<f32> {
    let format = blocks.format;
    blocks
        .data
        .chunks_exact(format.gguf_block_bytes())
        .flat_map(|block| {
            let (values, d, m) = format.decode_gguf_block(block);
            values.map(|u| format.dequantize(u, d, m))
        })
        .collect()
}
