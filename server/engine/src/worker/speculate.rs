//! The engine thread's side of speculative decoding: proposing drafts before a step (prompt
//! lookup or the draft model, where it pays), and verifying them after it, each row chosen as
//! plain decoding would choose it.

use super::choose::{self, Choice};
use super::Worker;
use crate::scheduler::SequenceId;

impl Worker {
    /// Proposes tokens for every decoding sequence where speculation pays, within its token
    /// budget. Verification chooses each row exactly as plain decoding would (grammar,
    /// penalties, logit bias, alternatives and all), so every request may take proposals.
    pub(super) fn propose_drafts(&mut self) {
        let decoding = self.active.len();
        let length = crate::speculation::proposal_length(self.speculate, decoding);
        if length == 0 {
            return;
        }
        let costs = self.step_costs.costs();
        let mut wanted: Vec<(SequenceId, Vec<u32>, usize)> = Vec::new();
        for (&id, active) in self.active.iter_mut() {
            if !self.scheduler.can_propose(id) {
                continue;
            }
            if !crate::speculation::pays(active.draft_acceptance, decoding, costs) {
                // Not now; the estimate recovers step by step, so text that turns to copying
                // later is tried again.
                active.draft_acceptance =
                    (active.draft_acceptance + crate::speculation::ACCEPTANCE_RECOVERY).min(1.0);
                continue;
            }
            // Never past the budget: the last token the budget allows is the model's own.
            let room = active
                .max_new_tokens
                .saturating_sub(active.generated.len() + 1);
            wanted.push((id, active.context(), length.min(room)));
        }
        let proposals: Vec<(SequenceId, Vec<u32>)> = match &mut self.draft_model {
            // A draft model that fails proposes nothing: the sequences decode plainly.
            Some(draft) => match draft.propose(&wanted) {
                Ok(proposals) => proposals.into_iter().collect(),
                Err(error) => {
                    tracing::warn!(%error, "the draft model failed; no proposals this step");
                    Vec::new()
                }
            },
            None => wanted
                .iter()
                .map(|(id, context, length)| (*id, crate::speculation::propose(context, *length)))
                .collect(),
        };
        for (id, draft) in proposals {
            if !draft.is_empty() {
                self.scheduler.propose(id, &draft);
            }
        }
    }

    /// Chooses along a verified draft's rows as without speculation, row by row, while the
    /// choice equals the proposal; settles the scheduler on the accepted count. Returns the
    /// choices to deliver: the accepted proposals, then the model's own next token.
    pub(super) fn verify_draft(
        &mut self,
        draft: choose::Drafted,
    ) -> (SequenceId, usize, Vec<Choice>) {
        let choose::Drafted { id, proposed, rows } = draft;
        let mut choices = Vec::new();
        if let Some(active) = self.active.get_mut(&id) {
            // Each row is chosen as it would be after the tokens before it: penalties see
            // them (they join `generated` for the loop, and for good in `deliver`), the grammar
            // has advanced past them, the sampler's stream has moved on by one draw each.
            let generated = active.generated.len();
            for (position, row) in rows.into_iter().enumerate() {
                let choice = choose::choose_row(active, row);
                let stands =
                    choice.failed.is_none() && proposed.get(position) == Some(&choice.token);
                if stands {
                    active.generated.push(choice.token);
                }
                choices.push(choice);
                if !stands {
                    break;
                }
            }
            active.generated.truncate(generated);
        }
        let accepted = choices.len().saturating_sub(1);
        self.scheduler.settle(id, accepted);
        if let Some(active) = self.active.get_mut(&id) {
            let rate = accepted as f64 / proposed.len().max(1) as f64;
            active.draft_acceptance +=
                crate::speculation::ACCEPTANCE_SMOOTHING * (rate - active.draft_acceptance);
        }
        self.speculation.drafts += 1;
        self.speculation.draft_tokens += proposed.len() as u64;
        self.speculation.accepted_tokens += accepted as u64;
        for position in self.speculation.accepted_at.iter_mut().take(accepted) {
            *position += 1;
        }
        (id, accepted, choices)
    }
}
