//! What one forward call takes: a flat batch of tokens from many sequences, each with its
//! position in its own sequence and its block table into the paged KV cache; and the cache.
//!
//! Prefill of a whole prompt, prefill of one chunk of it, and one-token decode are all the
//! same thing here: `tokens` appended after `context_before` tokens already in the cache.

use crate::config::DecoderConfig;
use crate::error::{ModelError, Result};
use candle_core::{DType, Device, Tensor};
use lantern_kernels::{KvCacheShape, LayerKvCache};

/// Which positions of a sequence need logits this step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsWanted {
    /// A prefill chunk that is not the prompt's last: nothing to sample yet.
    None,
    /// The last token's logits, to sample the next token.
    Last,
    /// Every new token's logits (prompt log-probabilities, TGI's `decoder_input_details`).
    All,
}

/// One sequence's share of a forward call.
#[derive(Debug, Clone)]
pub struct SequenceStep {
    /// New tokens, at positions `context_before..context_before + tokens.len()`.
    pub tokens: Vec<u32>,
    /// Tokens of this sequence already in the cache.
    pub context_before: usize,
    /// Cache blocks of this sequence, in position order; must cover every position.
    pub block_table: Vec<u32>,
    pub logits: LogitsWanted,
}

/// The paged KV cache of a whole model: one block pool per layer, all with the same block ids.
#[derive(Debug)]
pub struct KvCache {
    pub layers: Vec<LayerKvCache>,
    pub shape: KvCacheShape,
}

impl KvCache {
    pub fn new(
        config: &DecoderConfig,
        num_blocks: usize,
        block_size: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let shape = KvCacheShape {
            num_blocks,
            block_size,
            num_kv_heads: config.num_kv_heads,
            head_dim: config.head_dim,
        };
        let layers = (0..config.num_layers)
            .map(|_| LayerKvCache::zeros(shape, dtype, device))
            .collect::<candle_core::Result<_>>()?;
        Ok(Self { layers, shape })
    }

    /// Bytes one block takes across all layers.
    pub fn bytes_per_block(config: &DecoderConfig, block_size: usize, dtype: DType) -> usize {
        let shape = KvCacheShape {
            num_blocks: 1,
            block_size,
            num_kv_heads: config.num_kv_heads,
            head_dim: config.head_dim,
        };
        config.num_layers * shape.bytes_per_block(dtype)
    }
}

/// The flattened, validated form of a batch, with its index tensors built once per call.
pub(crate) struct FlatBatch {
    pub token_ids: Tensor,
    /// Position of every token as f32, for rotary embeddings.
    pub positions: Tensor,
    pub slot_mapping: Tensor,
    /// Per sequence: query offset and length in the batch, context before, slots of all positions.
    pub sequences: Vec<(usize, usize, usize, Vec<u32>)>,
    /// Rows of the batch whose logits are returned, in order.
    pub logit_rows: Vec<u32>,
}

impl FlatBatch {
    pub fn new(
        steps: &[SequenceStep],
        config: &DecoderConfig,
        cache: &KvCache,
        device: &Device,
    ) -> Result<Self> {
        let block_size = cache.shape.block_size;
        let mut tokens = Vec::new();
        let mut positions = Vec::new();
        let mut slot_mapping = Vec::new();
        let mut sequences = Vec::with_capacity(steps.len());
        let mut logit_rows = Vec::new();
        for (index, step) in steps.iter().enumerate() {
            let context = step.context_before + step.tokens.len();
            if step.tokens.is_empty() {
                return Err(ModelError::Batch(format!("sequence {index} has no tokens")));
            }
            if let Some(bad) = step
                .tokens
                .iter()
                .find(|&&t| t as usize >= config.vocab_size)
            {
                return Err(ModelError::Batch(format!(
                    "sequence {index}: token id {bad} is outside the vocabulary of {}",
                    config.vocab_size
                )));
            }
            if step.block_table.len() * block_size < context {
                return Err(ModelError::Batch(format!(
                    "sequence {index}: {} blocks of {block_size} cannot hold {context} tokens",
                    step.block_table.len()
                )));
            }
            if let Some(bad) = step
                .block_table
                .iter()
                .find(|&&b| b as usize >= cache.shape.num_blocks)
            {
                return Err(ModelError::Batch(format!(
                    "sequence {index}: block {bad} is outside the cache of {} blocks",
                    cache.shape.num_blocks
                )));
            }
            let slots: Vec<u32> = (0..context)
                .map(|p| {
                    step.block_table[p / block_size] * block_size as u32 + (p % block_size) as u32
                })
                .collect();
            let offset = tokens.len();
            match step.logits {
                LogitsWanted::None => {}
                LogitsWanted::Last => logit_rows.push((offset + step.tokens.len() - 1) as u32),
                LogitsWanted::All => {
                    logit_rows.extend((offset..offset + step.tokens.len()).map(|r| r as u32))
                }
            }
            tokens.extend_from_slice(&step.tokens);
            positions.extend((step.context_before..context).map(|p| p as f32));
            slot_mapping.extend_from_slice(&slots[step.context_before..]);
            sequences.push((offset, step.tokens.len(), step.context_before, slots));
        }
        let n = tokens.len();
        Ok(Self {
            token_ids: Tensor::from_vec(tokens, n, device)?,
            positions: Tensor::from_vec(positions, n, device)?,
            slot_mapping: Tensor::from_vec(slot_mapping, n, device)?,
            sequences,
            logit_rows,
        })
    }
}
