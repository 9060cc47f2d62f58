//! Speculative decoding's side of the scheduler: a decoding sequence takes proposed tokens
//! (a draft), the next step feeds them with its last token, and `settle` keeps what stood.
//! Drafts never cause preemption: one that does not fit is dropped, and a preempted sequence
//! drops its draft.

use super::{Scheduler, SequenceId};

impl Scheduler {
    /// Proposes `draft` tokens to follow `id`'s last one (speculative decoding): the next step
    /// feeds them with it and wants every row's logits. Only a decoding sequence without a
    /// draft takes one; false otherwise.
    pub fn propose(&mut self, id: SequenceId, draft: &[u32]) -> bool {
        let Some(seq) = self.sequences.get_mut(&id) else {
            return false;
        };
        let decoding = seq.draft == 0 && seq.computed + 1 == seq.tokens.len();
        if !decoding || draft.is_empty() || !self.running.contains(&id) {
            return false;
        }
        seq.tokens.extend_from_slice(draft);
        seq.draft = draft.len();
        true
    }

    /// Whether `id` would take a draft now: running, decoding, without one.
    pub fn can_propose(&self, id: SequenceId) -> bool {
        self.sequences.get(&id).is_some_and(|seq| {
            seq.draft == 0 && seq.computed + 1 == seq.tokens.len() && self.running.contains(&id)
        })
    }

    /// The proposed tokens `id` carries (0 without a draft).
    pub fn draft_of(&self, id: SequenceId) -> usize {
        self.sequences.get(&id).map_or(0, |s| s.draft)
    }

    /// After a step that verified `id`'s draft: the first `accepted` proposed tokens stand
    /// (their keys and values are in the cache), the rest are forgotten with the blocks only
    /// they needed; only blocks of accepted tokens are published to the prefix cache.
    pub fn settle(&mut self, id: SequenceId, accepted: usize) {
        let Some(seq) = self.sequences.get_mut(&id) else {
            return;
        };
        let base = seq.tokens.len() - seq.draft;
        let accepted = accepted.min(seq.draft);
        seq.tokens.truncate(base + accepted);
        seq.computed = base + accepted;
        seq.draft = 0;
        let keep = seq.computed.div_ceil(self.config.block_size);
        let extra: Vec<u32> = seq.blocks.drain(keep.min(seq.blocks.len())..).collect();
        for block in extra {
            if let Err(error) = self.allocator.release(block) {
                tracing::error!(%error, sequence = id, "block bookkeeping bug");
            }
        }
        self.publish_full_blocks(id);
    }

    /// Forgets `id`'s proposed tokens before they ran.
    pub(super) fn drop_draft(&mut self, id: SequenceId) {
        if let Some(seq) = self.sequences.get_mut(&id) {
            let base = seq.tokens.len() - seq.draft;
            seq.tokens.truncate(base);
            seq.draft = 0;
        }
    }

    /// Whether `id` can have blocks for `take` more tokens from what is free now.
    pub(super) fn fits_without_preempting(&self, id: SequenceId, take: usize) -> bool {
        self.sequences.get(&id).is_some_and(|seq| {
            self.blocks_for(seq.computed + take)
                .saturating_sub(seq.blocks.len())
                <= self.allocator.available()
        })
    }
}
