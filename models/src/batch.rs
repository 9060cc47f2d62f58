//! What one forward call takes: a flat batch of tokens from many sequences, each with its
//! position in its own sequence and its block table into the paged KV cache; and the cache.
//!
//! Prefill of a whole prompt, prefill of one chunk of it, and one-token decode are all the
//! same thing here: `tokens` appended after `context_before` tokens already in the cache.

use crate::config::DecoderConfig;
use crate::error::{ModelError, Result};
use candle_core::{DType, Device, Tensor};
use lantern_kernels::cpu::{KvBlocks, KvDtype};
use lantern_kernels::{KvCacheShape, LayerKvCache, PagedAttention, SequenceAttention, Uploads};

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
    /// The LoRA adapter the sequence runs under, by the id it was loaded with
    /// ([`crate::Decoder::add_adapter`]); `None` for the base model.
    pub adapter: Option<u32>,
}

/// The portable path's paged KV cache: one slot-major block pool per layer (any device), all
/// with the same block ids, and the attention implementation that reads them (FlashAttention
/// on capable GPUs, else portable).
#[derive(Debug)]
pub(crate) struct TensorCache {
    pub shape: KvCacheShape,
    pub layers: Vec<LayerKvCache>,
    pub attention: Box<dyn PagedAttention>,
}

impl TensorCache {
    pub fn zeros(
        config: &DecoderConfig,
        shape: KvCacheShape,
        dtype: DType,
        device: &Device,
        attention: Box<dyn PagedAttention>,
    ) -> Result<Self> {
        let layers = (0..config.num_layers)
            .map(|_| LayerKvCache::zeros(shape, dtype, device))
            .collect::<candle_core::Result<_>>()?;
        Ok(Self {
            shape,
            layers,
            attention,
        })
    }
}

/// The CPU kernels' paged KV cache: one `[kv_head][block][slot][head_dim]` pool per layer, in
/// f32, f16 or bf16.
#[derive(Debug)]
pub(crate) struct CpuCache {
    pub shape: KvCacheShape,
    pub layers: Vec<KvBlocks>,
}

impl CpuCache {
    pub fn new(config: &DecoderConfig, shape: KvCacheShape, dtype: KvDtype) -> Result<Self> {
        let layers = (0..config.num_layers)
            .map(|_| KvBlocks::with_dtype(shape, dtype))
            .collect::<std::result::Result<_, String>>()
            .map_err(ModelError::Batch)?;
        Ok(Self { shape, layers })
    }

    /// Returns the memory of the pools' written pages to the OS (they fill again as sequences
    /// write), keeping the keys and values of the blocks in `keep` (cached prefixes): for an
    /// idle engine, whose other blocks hold nothing.
    pub fn release_idle_memory(&mut self, keep: &[u32]) {
        for blocks in &mut self.layers {
            blocks.release_pages(keep);
        }
    }
}

/// Checks every step against the model and the cache; returns the rows whose logits are
/// wanted, in order.
pub(crate) fn logit_rows(
    steps: &[SequenceStep],
    config: &DecoderConfig,
    shape: &KvCacheShape,
) -> Result<Vec<u32>> {
    let block_size = shape.block_size;
    let mut offset = 0;
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
            .find(|&&b| b as usize >= shape.num_blocks)
        {
            return Err(ModelError::Batch(format!(
                "sequence {index}: block {bad} is outside the cache of {} blocks",
                shape.num_blocks
            )));
        }
        match step.logits {
            LogitsWanted::None => {}
            LogitsWanted::Last => logit_rows.push((offset + step.tokens.len() - 1) as u32),
            LogitsWanted::All => {
                logit_rows.extend((offset..offset + step.tokens.len()).map(|r| r as u32))
            }
        }
        offset += step.tokens.len();
    }
    Ok(logit_rows)
}

/// Each step's rows in the flat batch and its block table, for attention.
pub(crate) fn attention_views(steps: &[SequenceStep]) -> Vec<SequenceAttention<'_>> {
    steps
        .iter()
        .scan(0, |offset, step| {
            let seq = SequenceAttention {
                query_offset: *offset,
                query_len: step.tokens.len(),
                context_before: step.context_before,
                block_table: &step.block_table,
            };
            *offset += step.tokens.len();
            Some(seq)
        })
        .collect()
}

/// The portable path's view of a batch: index tensors built once per call.
pub(crate) struct FlatBatch {
    pub token_ids: Tensor,
    /// Position of every token as f32, for rotary embeddings.
    pub positions: Tensor,
    /// Rows of the batch whose logits are returned, in order.
    pub logit_rows: Vec<u32>,
}

impl FlatBatch {
    pub fn new(
        steps: &[SequenceStep],
        config: &DecoderConfig,
        shape: &KvCacheShape,
        device: &Device,
        uploads: &dyn Uploads,
    ) -> Result<Self> {
        let logit_rows = logit_rows(steps, config, shape)?;
        let tokens: Vec<u32> = steps
            .iter()
            .flat_map(|s| s.tokens.iter().copied())
            .collect();
        let positions: Vec<f32> = steps
            .iter()
            .flat_map(|s| (s.context_before..s.context_before + s.tokens.len()).map(|p| p as f32))
            .collect();
        let n = tokens.len();
        Ok(Self {
            token_ids: uploads.u32s(tokens, &[n], device)?,
            positions: uploads.f32s(positions, &[n], device)?,
            logit_rows,
        })
    }
}
