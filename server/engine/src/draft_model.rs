//! Proposals from a small draft model (`--draft-model`), sharing the target's tokenizer:
//! greedy continuations of each speculating sequence's recent context, which the target then
//! verifies like prompt-lookup drafts (worker.rs). The draft keeps no state between rounds:
//! each round prefills the last `window` tokens of every context into its own small cache, then
//! decodes the proposals one token at a time, all sequences batched. That costs a short prefill
//! per round and needs no rollback when proposals are rejected; proposals only change speed,
//! never output, so a shifted window costs nothing but acceptance.

use crate::sampling::argmax;
use crate::scheduler::SequenceId;
use lantern_models::{Decoder, LogitsWanted, SequenceStep};
use std::collections::HashMap;

/// Context tokens the draft model reads before proposing.
pub const WINDOW: usize = 256;

pub struct DraftModel {
    decoder: Decoder,
    /// Sequences proposed for at once (each has a fixed run of cache blocks).
    slots: usize,
    blocks_per_slot: usize,
    max_proposal: usize,
}

impl DraftModel {
    /// Takes `decoder` as the draft model, with a cache for `slots` sequences proposing up to
    /// `max_proposal` tokens after a window of context.
    pub fn new(
        mut decoder: Decoder,
        block_size: usize,
        slots: usize,
        max_proposal: usize,
    ) -> lantern_models::Result<Self> {
        let block_size = block_size.max(1);
        let blocks_per_slot = (WINDOW + max_proposal).div_ceil(block_size);
        decoder.allocate_cache(slots * blocks_per_slot, block_size)?;
        Ok(Self {
            decoder,
            slots,
            blocks_per_slot,
            max_proposal,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.decoder.config().vocab_size
    }

    /// Up to `length` greedy tokens of the draft model after each `(id, context, length)`,
    /// at most `slots` sequences (the rest get none).
    pub fn propose(
        &mut self,
        requests: &[(SequenceId, Vec<u32>, usize)],
    ) -> lantern_models::Result<HashMap<SequenceId, Vec<u32>>> {
        let requests: Vec<_> = requests
            .iter()
            .filter(|(_, context, length)| !context.is_empty() && *length > 0)
            .take(self.slots)
            .collect();
        let mut proposals: HashMap<SequenceId, Vec<u32>> = HashMap::new();
        if requests.is_empty() {
            return Ok(proposals);
        }
        let table = |slot: usize| -> Vec<u32> {
            let first = (slot * self.blocks_per_slot) as u32;
            (first..first + self.blocks_per_slot as u32).collect()
        };
        // Each sequence's fed length, and the token to feed next.
        let mut fed: Vec<usize> = Vec::with_capacity(requests.len());
        let mut steps: Vec<SequenceStep> = requests
            .iter()
            .enumerate()
            .map(|(slot, (_, context, _))| {
                let window = &context[context.len().saturating_sub(WINDOW)..];
                fed.push(window.len());
                SequenceStep {
                    tokens: window.to_vec(),
                    context_before: 0,
                    block_table: table(slot),
                    logits: LogitsWanted::Last,
                    adapter: None,
                }
            })
            .collect();
        let mut active: Vec<usize> = (0..requests.len()).collect();
        let longest = requests
            .iter()
            .map(|(_, _, length)| (*length).min(self.max_proposal))
            .max()
            .unwrap_or(0);
        for round in 0..longest {
            let logits = self.decoder.forward(&steps)?;
            let rows = logits.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()?;
            let mut next_steps = Vec::new();
            let mut next_active = Vec::new();
            for (row, &index) in rows.iter().zip(&active) {
                let (id, _, length) = requests[index];
                let token = argmax(row);
                let proposal = proposals.entry(*id).or_default();
                proposal.push(token);
                if round + 1 < (*length).min(self.max_proposal) {
                    next_steps.push(SequenceStep {
                        tokens: vec![token],
                        context_before: fed[index],
                        block_table: table(index),
                        logits: LogitsWanted::Last,
                        adapter: None,
                    });
                    fed[index] += 1;
                    next_active.push(index);
                }
            }
            if next_steps.is_empty() {
                break;
            }
            steps = next_steps;
            active = next_active;
        }
        Ok(proposals)
    }
}
