//! How many prompt tokens a step may prefill while other sequences are decoding.
//!
//! Every sequence in a step waits for the whole step: a step that prefills a 512-token chunk
//! of a 1B model on two cores takes about two seconds, and each decoding sequence's next token
//! waits that long. So while anything decodes, a step's prefill is held to what adds at most
//! `--max-decode-stall-ms` to the decoding step (at least one block's worth, so long prompts
//! keep moving over several steps); with nothing decoding, prefill runs at
//! `MAX_BATCH_PREFILL_TOKENS`. The bound is on the time prefill adds, not on the step: a
//! large model's decode step alone may take most of a fixed step budget, and prefill in
//! slivers would then re-read the weights for a handful of tokens at a time.
//!
//! The cost is learned from measured steps: a decode step's time (moving average of steps
//! without prefill) and the time each prefill token adds (moving average over steps with
//! enough prefill to measure), seeded by the warm-up step. Step time is modelled as the
//! decode time plus the prefill tokens times their cost.

use std::time::Duration;

/// Weight of the newest measurement in the moving averages.
const SMOOTHING: f64 = 0.2;
/// Steps with fewer prefill tokens say too little about their cost to learn from.
const MIN_MEASURED_PREFILL: usize = 16;

#[derive(Debug, Clone)]
pub struct PrefillBudget {
    stall: Duration,
    max_tokens: usize,
    min_tokens: usize,
    /// Seconds of a step that only decodes.
    decode_step: Option<f64>,
    /// Seconds per prefill token.
    per_token: Option<f64>,
}

impl PrefillBudget {
    /// Prefill may add at most `stall` to a step with decoding sequences; a step prefills at
    /// most `max_tokens`, and at least `min_tokens` while decoding.
    pub fn new(stall: Duration, max_tokens: usize, min_tokens: usize) -> Self {
        Self {
            stall,
            max_tokens,
            min_tokens: min_tokens.clamp(1, max_tokens.max(1)),
            decode_step: None,
            per_token: None,
        }
    }

    /// A step ran: `prefill_tokens` prompt tokens beside `decoding` decoding sequences, in
    /// `elapsed`.
    pub fn observe(&mut self, prefill_tokens: usize, decoding: usize, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        if prefill_tokens == 0 {
            if decoding > 0 {
                self.decode_step = Some(smooth(self.decode_step, seconds));
            }
            return;
        }
        // (The floor is always measured, or a budget that reaches it would stay there.)
        if prefill_tokens < MIN_MEASURED_PREFILL.min(self.min_tokens) {
            return;
        }
        let base = if decoding > 0 {
            self.decode_step.unwrap_or(0.0)
        } else {
            0.0
        };
        let per_token = (seconds - base).max(0.0) / prefill_tokens as f64;
        self.per_token = Some(smooth(self.per_token, per_token));
    }

    /// What the steps cost, as measured: seconds of a decode-only step, and seconds each
    /// token added to a step costs (`None` until measured).
    pub fn costs(&self) -> Option<(f64, f64)> {
        Some((self.decode_step?, self.per_token?))
    }

    /// The prefill tokens a step may carry while sequences decode.
    pub fn while_decoding(&self) -> usize {
        let Some(per_token) = self.per_token.filter(|&t| t > 0.0) else {
            return self.max_tokens;
        };
        let tokens = (self.stall.as_secs_f64() / per_token).floor();
        if tokens.is_nan() || tokens < self.min_tokens as f64 {
            return self.min_tokens;
        }
        (tokens as usize).clamp(self.min_tokens, self.max_tokens)
    }
}

fn smooth(average: Option<f64>, sample: f64) -> f64 {
    match average {
        Some(average) => average + SMOOTHING * (sample - average),
        None => sample,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_budget_is_the_prefill_that_adds_the_stall_to_a_decode_step() {
        let mut budget = PrefillBudget::new(100 * MS, 512, 16);
        // The warm-up: 512 tokens in 2 s (about 3.9 ms a token): 25 tokens add 100 ms.
        budget.observe(512, 0, 2000 * MS);
        assert_eq!(budget.while_decoding(), 25);
        // Decode steps of 20 ms, then steps whose 40 prefill tokens add 40 ms: what a token
        // adds is learned apart from the decode step (1 ms), and 100 tokens fit.
        for _ in 0..50 {
            budget.observe(0, 4, 20 * MS);
        }
        for _ in 0..50 {
            budget.observe(40, 4, (20 + 40) * MS);
        }
        let tokens = budget.while_decoding();
        assert!((98..=100).contains(&tokens), "{tokens}");
    }

    #[test]
    fn slow_steps_still_move_prompts_and_fast_ones_stop_at_the_maximum() {
        let mut slow = PrefillBudget::new(10 * MS, 512, 16);
        slow.observe(0, 1, 30 * MS);
        slow.observe(512, 1, 5000 * MS);
        assert_eq!(slow.while_decoding(), 16);
        // Nothing measured yet: the full size (the warm-up always measures first).
        assert_eq!(PrefillBudget::new(10 * MS, 512, 16).while_decoding(), 512);
        let mut fast = PrefillBudget::new(1000 * MS, 512, 16);
        fast.observe(512, 0, 50 * MS);
        assert_eq!(fast.while_decoding(), 512);
    }
}
