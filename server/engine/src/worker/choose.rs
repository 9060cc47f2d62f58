//! From a step's logits to each sequence's next token: the grammar masks lent out to be
//! computed beside the forward pass, prompt log-probabilities taken from rows that have them,
//! one batched argmax when every row is plain greedy, else each row on its own (penalties,
//! mask, sampling) in parallel.

use super::{Active, Worker};
use crate::masks_ahead::Pending;
use crate::request::PromptLogprob;
use crate::sampling::{argmax, log_softmax, top_n};
use crate::scheduler::{Plan, SequenceId};
use candle_core::{DType, Tensor};
use lantern_kernels::cpu::CpuKernels;
use lantern_models::LogitsWanted;
use rayon::prelude::*;

/// A sequence's speculative step: the tokens it proposed and the logits of every position
/// (the last real token's, then each proposal's).
pub(super) struct Drafted {
    pub id: SequenceId,
    pub proposed: Vec<u32>,
    pub rows: Vec<Vec<f32>>,
}

/// One chosen token with what the client may want to know about it.
#[derive(Default)]
pub(super) struct Choice {
    pub token: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
    /// The sequence's grammar is finished with this token.
    pub grammar_done: bool,
    /// The sequence's grammar failed (its request fails; the others go on).
    pub failed: Option<String>,
}

impl Worker {
    /// The constraints of the sequences this step may sample, lent for their masks to be
    /// computed beside the forward pass (given back right after it).
    pub(super) fn lend_constraints(&mut self, plan: &Plan) -> Vec<Pending<SequenceId>> {
        plan.steps
            .iter()
            .filter(|s| s.step.logits != LogitsWanted::None)
            .filter_map(|s| {
                let constraint = self.active.get_mut(&s.id)?.constraint.take()?;
                Some(Pending {
                    key: s.id,
                    constraint,
                    allowed: None,
                })
            })
            .collect()
    }

    /// The logits of `All` steps (a row per token) hold prompt log-probabilities: records them,
    /// and returns the sequences to sample with one row each (a step's last row when its
    /// sequence is now computed). Steps without `All` have exactly those rows already.
    pub(super) fn take_prompt_logprobs(
        &mut self,
        plan: &Plan,
        logits: Tensor,
    ) -> Result<(Vec<SequenceId>, Tensor, Vec<Drafted>), lantern_models::ModelError> {
        if plan
            .steps
            .iter()
            .all(|s| s.step.logits != LogitsWanted::All)
        {
            return Ok((sampled_ids(plan), logits, Vec::new()));
        }
        let mut sampled = Vec::new();
        let mut sampled_rows: Vec<u32> = Vec::new();
        let mut drafted = Vec::new();
        let mut next = 0;
        for scheduled in &plan.steps {
            let step = &scheduled.step;
            let count = match step.logits {
                LogitsWanted::None => 0,
                LogitsWanted::Last => 1,
                LogitsWanted::All => step.tokens.len(),
            };
            if self.scheduler.draft_of(scheduled.id) > 0 {
                // A speculative step: every row is a position to verify (worker.rs).
                let rows = logits
                    .narrow(0, next, count)?
                    .to_dtype(DType::F32)?
                    .to_vec2::<f32>()?;
                drafted.push(Drafted {
                    id: scheduled.id,
                    proposed: step.tokens[1..].to_vec(),
                    rows,
                });
                next += count;
                continue;
            }
            if step.logits == LogitsWanted::All {
                let rows = logits
                    .narrow(0, next, count)?
                    .to_dtype(DType::F32)?
                    .to_vec2::<f32>()?;
                self.record_prompt_logprobs(scheduled.id, step.context_before, &rows);
            }
            let samples = step.logits == LogitsWanted::Last
                || (step.logits == LogitsWanted::All && self.scheduler.is_computed(scheduled.id));
            if samples && count > 0 {
                sampled.push(scheduled.id);
                sampled_rows.push((next + count - 1) as u32);
            }
            next += count;
        }
        let index = Tensor::new(sampled_rows.as_slice(), logits.device())?;
        Ok((sampled, logits.index_select(&index, 0)?, drafted))
    }

    /// Prompt log-probabilities from the rows of positions `first..`: row `i` predicts the
    /// token at `first + i + 1`.
    fn record_prompt_logprobs(&mut self, id: SequenceId, first: usize, rows: &[Vec<f32>]) {
        let Some(active) = self.active.get_mut(&id) else {
            return;
        };
        let top = active.sampler.params().top_n_tokens.min(5);
        let prompt = &active.prompt;
        active.prompt_logprobs.resize(prompt.len(), None);
        for (i, row) in rows.iter().enumerate() {
            let Some(&next) = prompt.get(first + i + 1) else {
                break;
            };
            let log_probs = log_softmax(row);
            active.prompt_logprobs[first + i + 1] = Some(PromptLogprob {
                logprob: log_probs
                    .get(next as usize)
                    .copied()
                    .unwrap_or(f32::NEG_INFINITY),
                top: top_n(&log_probs, top),
            });
        }
    }

    /// Picks the next token of every sampled row: one batched argmax when all rows are plain
    /// greedy without alternatives, else row by row.
    pub(super) fn choose(
        &mut self,
        ids: &[SequenceId],
        logits: &Tensor,
    ) -> Result<Vec<Choice>, lantern_models::ModelError> {
        if ids.is_empty() {
            return Ok(Vec::new()); // a step of prefill chunks only
        }
        if self.sample_on_device
            && ids.iter().all(|id| {
                self.active
                    .get(id)
                    .is_none_or(|a| crate::device_sampling::supported(a.sampler.params()))
            })
        {
            return self.choose_on_device(ids, logits);
        }
        let plain = ids.iter().all(|id| {
            self.active.get(id).is_none_or(|a| {
                let p = a.sampler.params();
                p.is_greedy()
                    && !p.adjusts_logits()
                    && p.top_n_tokens == 0
                    && a.constraint.is_none()
            })
        });
        if plain {
            // One pass per row: the argmax, and its log-probability from the same
            // log-sum-exp the full log-softmax below uses (so the bits agree).
            let vocab = logits.dim(1)?;
            let flat = logits
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let kernels = CpuKernels::active();
            let choose = |row: &[f32]| {
                let token = argmax(row);
                Choice {
                    token,
                    logprob: row[token as usize] - kernels.logsumexp(row),
                    ..Choice::default()
                }
            };
            return Ok(lantern_kernels::cpu::install(|| {
                flat.par_chunks(vocab.max(1)).map(choose).collect()
            }));
        }
        let rows = logits.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        // Row by row in parallel (grammar masks take most of the time): each sequence's
        // state is taken out of the map for the step and put back after.
        let mut taken: Vec<Option<Active>> = ids.iter().map(|id| self.active.remove(id)).collect();
        let choices = lantern_kernels::cpu::install(|| {
            taken
                .par_iter_mut()
                .zip(rows)
                .map(|(active, row)| {
                    active
                        .as_mut()
                        .map_or_else(Choice::default, |a| choose_row(a, row))
                })
                .collect()
        });
        for (id, active) in ids.iter().zip(taken) {
            if let Some(active) = active {
                self.active.insert(*id, active);
            }
        }
        Ok(choices)
    }
}

/// One sequence's next token from its logits row: penalties, the grammar's mask, sampling,
/// and the grammar advanced past the choice. Log-probabilities are the model's, before any of
/// that.
pub(super) fn choose_row(active: &mut Active, mut row: Vec<f32>) -> Choice {
    let log_probs = log_softmax(&row);
    let context = active.context();
    active
        .sampler
        .adjust_logits(&mut row, &context, &active.generated);
    if let Some(constraint) = &mut active.constraint {
        // The mask computed during the forward pass, or now if there is none.
        let allowed = active
            .allowed
            .take()
            .unwrap_or_else(|| constraint.allowed());
        match allowed {
            Ok(allowed) => allowed.apply(&mut row),
            Err(error) => {
                return Choice {
                    failed: Some(format!("the grammar failed: {error}")),
                    ..Choice::default()
                }
            }
        }
    }
    let token = active.sampler.choose(&row);
    let mut choice = advance_grammar(active, token);
    if choice.failed.is_none() {
        choice.logprob = log_probs
            .get(token as usize)
            .copied()
            .unwrap_or(f32::NEG_INFINITY);
        choice.top = top_n(&log_probs, active.sampler.params().top_n_tokens.min(5));
    }
    choice
}

/// The choice of `token`, with the sequence's grammar (if any) moved past it.
pub(super) fn advance_grammar(active: &mut Active, token: u32) -> Choice {
    let grammar_done = match active.constraint.as_mut().map(|c| c.advance(token)) {
        None => false,
        Some(Ok(done)) => done,
        Some(Err(error)) => {
            return Choice {
                failed: Some(format!("the grammar failed: {error}")),
                ..Choice::default()
            }
        }
    };
    Choice {
        token,
        grammar_done,
        ..Choice::default()
    }
}

fn sampled_ids(plan: &Plan) -> Vec<SequenceId> {
    plan.steps
        .iter()
        .filter(|s| s.step.logits == LogitsWanted::Last)
        .map(|s| s.id)
        .collect()
}
