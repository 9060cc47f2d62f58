//! The step's next tokens chosen on the device the logits are on (`device_sampling.rs`):
//! the host sends each row's penalty counts, uniform draw and grammar mask, and gets back only
//! tokens and log-probabilities.

use super::choose::{advance_grammar, Choice};
use super::{Active, Worker};
use crate::device_sampling::{self, DeviceRow};
use crate::scheduler::SequenceId;
use candle_core::Tensor;
use std::collections::BTreeMap;

/// What the host keeps of a row while the device chooses.
struct RowInputs {
    uniform: f32,
    seen: Vec<u32>,
    generated: Vec<(u32, f32)>,
    allowed: Option<Vec<u32>>,
}

impl Worker {
    pub(super) fn choose_on_device(
        &mut self,
        ids: &[SequenceId],
        logits: &Tensor,
    ) -> Result<Vec<Choice>, lantern_models::ModelError> {
        let mut failed: Vec<Option<String>> = vec![None; ids.len()];
        let inputs: Vec<RowInputs> = ids
            .iter()
            .zip(&mut failed)
            .map(|(id, failed)| match self.active.get_mut(id) {
                Some(active) => row_inputs(active, failed),
                None => RowInputs {
                    uniform: 0.0,
                    seen: Vec::new(),
                    generated: Vec::new(),
                    allowed: None,
                },
            })
            .collect();
        let rows: Vec<DeviceRow<'_>> = ids
            .iter()
            .zip(&inputs)
            .map(|(id, input)| DeviceRow {
                params: self
                    .active
                    .get(id)
                    .map(|a| a.sampler.params().clone())
                    .unwrap_or_default(),
                uniform: input.uniform,
                seen: &input.seen,
                generated: &input.generated,
                allowed: input.allowed.as_deref(),
            })
            .collect();
        let chosen = device_sampling::choose(logits, &rows)?;
        Ok(ids
            .iter()
            .zip(chosen)
            .zip(failed)
            .map(|((id, (token, logprob)), failed)| {
                if let Some(failed) = failed {
                    return Choice {
                        failed: Some(failed),
                        ..Choice::default()
                    };
                }
                let Some(active) = self.active.get_mut(id) else {
                    return Choice::default();
                };
                let mut choice = advance_grammar(active, token);
                choice.logprob = logprob;
                choice
            })
            .collect())
    }
}

/// The row's uniform draw (taken from its generator like a host draw), penalty counts and
/// grammar mask.
fn row_inputs(active: &mut Active, failed: &mut Option<String>) -> RowInputs {
    let params = active.sampler.params().clone();
    let seen = if params.repetition_penalty.is_some_and(|p| p != 1.0) {
        let mut seen: Vec<u32> = active
            .prompt
            .iter()
            .chain(&active.generated)
            .copied()
            .collect();
        seen.sort_unstable();
        seen.dedup();
        seen
    } else {
        Vec::new()
    };
    let generated = if params.frequency_penalty != 0.0 || params.presence_penalty != 0.0 {
        let mut counts = BTreeMap::<u32, f32>::new();
        for &token in &active.generated {
            *counts.entry(token).or_default() += 1.0;
        }
        counts.into_iter().collect()
    } else {
        Vec::new()
    };
    let allowed = match &mut active.constraint {
        None => None,
        Some(constraint) => {
            let allowed = active
                .allowed
                .take()
                .unwrap_or_else(|| constraint.allowed());
            match allowed {
                Ok(allowed) => Some(allowed.words().to_vec()),
                Err(error) => {
                    *failed = Some(format!("the grammar failed: {error}"));
                    None
                }
            }
        }
    };
    RowInputs {
        uniform: active.sampler.next_uniform(),
        seen,
        generated,
        allowed,
    }
}
