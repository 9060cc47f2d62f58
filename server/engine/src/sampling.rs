//! Choosing the next token from a row of logits: penalties, then greedy or seeded sampling
//! through temperature, top-k, top-p, typical-p and min-p. Each request owns its own RNG
//! (ChaCha8, seeded), drawing once per token, so the same seed gives the same tokens whatever
//! else shares the batch.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Per-request sampling settings; the defaults are plain greedy decoding.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// `0` (or `do_sample: false` upstream) means greedy.
    pub temperature: f32,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub typical_p: Option<f32>,
    pub min_p: Option<f32>,
    /// Hugging Face style: logits of tokens seen in the prompt or output are divided (if
    /// positive) or multiplied (if negative) by this.
    pub repetition_penalty: Option<f32>,
    /// OpenAI style, over generated tokens: `- frequency * count - presence * (count > 0)`.
    pub frequency_penalty: f32,
    pub presence_penalty: f32,
    /// `None`: a random seed, reported back in the completion.
    pub seed: Option<u64>,
    /// Up to 5 most likely alternatives reported with each token.
    pub top_n_tokens: usize,
    /// OpenAI's `logit_bias`: `(token, bias)` added to the token's logit before sampling,
    /// after the penalties; at most one entry per token.
    pub logit_bias: Vec<(u32, f32)>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: None,
            top_p: None,
            typical_p: None,
            min_p: None,
            repetition_penalty: None,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            seed: None,
            top_n_tokens: 0,
            logit_bias: Vec::new(),
        }
    }
}

impl SamplingParams {
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }

    /// Whether [`Sampler::adjust_logits`] changes anything: penalties or a logit bias.
    pub fn adjusts_logits(&self) -> bool {
        self.repetition_penalty.is_some_and(|p| p != 1.0)
            || self.frequency_penalty != 0.0
            || self.presence_penalty != 0.0
            || !self.logit_bias.is_empty()
    }
}

/// A request's sampler: its settings and its random stream.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    seed: u64,
    rng: ChaCha8Rng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let seed = params.seed.unwrap_or_else(|| rand::rng().random());
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
            seed,
            params,
        }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Applies the penalties, then the logit bias, to `logits` in place. `context` is prompt +
    /// generated tokens, `generated` the generated ones.
    pub fn adjust_logits(&self, logits: &mut [f32], context: &[u32], generated: &[u32]) {
        let p = &self.params;
        if let Some(penalty) = p.repetition_penalty.filter(|&x| x != 1.0) {
            let mut seen = context.to_vec();
            seen.sort_unstable();
            seen.dedup();
            for token in seen {
                if let Some(logit) = logits.get_mut(token as usize) {
                    *logit = if *logit > 0.0 {
                        *logit / penalty
                    } else {
                        *logit * penalty
                    };
                }
            }
        }
        if p.frequency_penalty != 0.0 || p.presence_penalty != 0.0 {
            let mut counts = std::collections::HashMap::<u32, f32>::new();
            for &token in generated {
                *counts.entry(token).or_default() += 1.0;
            }
            for (token, count) in counts {
                if let Some(logit) = logits.get_mut(token as usize) {
                    *logit -= p.frequency_penalty * count + p.presence_penalty;
                }
            }
        }
        for &(token, bias) in &p.logit_bias {
            if let Some(logit) = logits.get_mut(token as usize) {
                *logit += bias;
            }
        }
    }

    /// The uniform number a sampled (not greedy) token is drawn with: the same one draw per
    /// token as [`Self::choose`], for the device sampler.
    pub fn next_uniform(&mut self) -> f32 {
        if self.params.is_greedy() {
            return 0.0;
        }
        self.rng.random::<f32>()
    }

    /// Picks the next token from (already penalised) `logits`.
    pub fn choose(&mut self, logits: &[f32]) -> u32 {
        if self.params.is_greedy() {
            return argmax(logits);
        }
        let p = &self.params;
        let inv_temperature = 1.0 / p.temperature;
        let mut candidates: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| l.is_finite())
            .map(|(i, &l)| (i as u32, l * inv_temperature))
            .collect();
        if candidates.is_empty() {
            return argmax(logits);
        }
        if let Some(k) = p.top_k.filter(|&k| k > 0 && k < candidates.len()) {
            candidates.select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1));
            candidates.truncate(k);
        }
        candidates.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut probs = softmax(&candidates);
        if let Some(top_p) = p.top_p.filter(|&x| x < 1.0) {
            keep_while_mass_below(&mut candidates, &mut probs, top_p);
        }
        if let Some(typical_p) = p.typical_p.filter(|&x| x < 1.0) {
            keep_typical(&mut candidates, &mut probs, typical_p);
        }
        if let Some(min_p) = p.min_p.filter(|&x| x > 0.0) {
            let floor = probs[0] * min_p;
            let keep = probs.iter().take_while(|&&q| q >= floor).count().max(1);
            candidates.truncate(keep);
            probs.truncate(keep);
        }
        let total: f32 = probs.iter().sum();
        let mut draw = self.rng.random::<f32>() * total;
        for (candidate, prob) in candidates.iter().zip(&probs) {
            if draw < *prob {
                return candidate.0;
            }
            draw -= prob;
        }
        candidates[candidates.len() - 1].0
    }
}

/// Index of the largest logit; the lowest index wins ties.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &logit) in logits.iter().enumerate() {
        if logit > logits[best] {
            best = i;
        }
    }
    best as u32
}

fn softmax(candidates: &[(u32, f32)]) -> Vec<f32> {
    let max = candidates
        .iter()
        .map(|c| c.1)
        .fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = candidates.iter().map(|c| (c.1 - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// Nucleus: the smallest prefix (sorted by probability) whose mass reaches `mass`.
fn keep_while_mass_below(candidates: &mut Vec<(u32, f32)>, probs: &mut Vec<f32>, mass: f32) {
    let mut total = 0.0;
    let mut keep = probs.len();
    for (i, &q) in probs.iter().enumerate() {
        total += q;
        if total >= mass {
            keep = i + 1;
            break;
        }
    }
    candidates.truncate(keep);
    probs.truncate(keep);
}

/// Typical sampling: tokens whose surprise is closest to the entropy, up to `mass`.
fn keep_typical(candidates: &mut Vec<(u32, f32)>, probs: &mut Vec<f32>, mass: f32) {
    let total: f32 = probs.iter().sum();
    let normalised: Vec<f32> = probs.iter().map(|q| q / total).collect();
    let entropy: f32 = normalised
        .iter()
        .filter(|&&q| q > 0.0)
        .map(|q| -q * q.ln())
        .sum();
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&a, &b| {
        let da = (-normalised[a].ln() - entropy).abs();
        let db = (-normalised[b].ln() - entropy).abs();
        da.total_cmp(&db).then(a.cmp(&b))
    });
    let mut kept = Vec::new();
    let mut acc = 0.0;
    for i in order {
        kept.push(i);
        acc += normalised[i];
        if acc >= mass {
            break;
        }
    }
    kept.sort_unstable();
    *candidates = kept.iter().map(|&i| candidates[i]).collect();
    *probs = kept.iter().map(|&i| probs[i]).collect();
}

/// Log-softmax of a row, for log-probabilities: `l - logsumexp(row)`, with the kernels'
/// log-sum-exp (the greedy fast path computes a token's log-probability the same way).
pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let log_sum = lantern_kernels::cpu::CpuKernels::active().logsumexp(logits);
    logits.iter().map(|l| l - log_sum).collect()
}

/// The `n` most likely tokens of `logprobs`, most likely first.
pub fn top_n(logprobs: &[f32], n: usize) -> Vec<(u32, f32)> {
    let mut indexed: Vec<(u32, f32)> = logprobs
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, l))
        .collect();
    let n = n.min(indexed.len());
    if n == 0 {
        return Vec::new();
    }
    indexed.select_nth_unstable_by(n - 1, |a, b| b.1.total_cmp(&a.1));
    indexed.truncate(n);
    indexed.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    indexed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(params: SamplingParams) -> Sampler {
        Sampler::new(SamplingParams {
            seed: Some(3),
            ..params
        })
    }

    #[test]
    fn greedy_takes_the_argmax() {
        assert_eq!(
            sampler(SamplingParams::default()).choose(&[0.1, 2.0, -1.0, 2.0]),
            1
        );
    }

    #[test]
    fn same_seed_same_draws() {
        let params = SamplingParams {
            temperature: 1.0,
            ..Default::default()
        };
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut a = sampler(params.clone());
        let mut b = sampler(params);
        let draws_a: Vec<u32> = (0..20).map(|_| a.choose(&logits)).collect();
        let draws_b: Vec<u32> = (0..20).map(|_| b.choose(&logits)).collect();
        assert_eq!(draws_a, draws_b);
        assert!(
            draws_a.iter().any(|&t| t != draws_a[0]),
            "sampling should vary"
        );
    }

    #[test]
    fn truncations_only_ever_pick_allowed_tokens() {
        let logits = [5.0, 4.0, 3.0, 0.0, -2.0, -4.0];
        let cases = [
            (
                SamplingParams {
                    top_k: Some(2),
                    ..Default::default()
                },
                vec![0, 1],
            ),
            (
                SamplingParams {
                    top_p: Some(0.5),
                    ..Default::default()
                },
                vec![0],
            ),
            (
                SamplingParams {
                    min_p: Some(0.3),
                    ..Default::default()
                },
                vec![0, 1],
            ),
        ];
        for (params, allowed) in cases {
            let mut s = sampler(SamplingParams {
                temperature: 1.0,
                ..params
            });
            for _ in 0..200 {
                let t = s.choose(&logits);
                assert!(
                    allowed.contains(&t),
                    "{t} not in {allowed:?} for {:?}",
                    s.params()
                );
            }
        }
    }

    #[test]
    fn penalties_push_seen_tokens_down() {
        let s = sampler(SamplingParams {
            repetition_penalty: Some(2.0),
            frequency_penalty: 0.5,
            presence_penalty: 0.25,
            ..Default::default()
        });
        let mut logits = vec![4.0, -1.0, 3.0];
        s.adjust_logits(&mut logits, &[0, 1, 2, 2], &[2, 2]);
        assert_eq!(logits, vec![2.0, -2.0, 1.5 - 1.0 - 0.25]);
    }

    #[test]
    fn logit_bias_is_added_after_the_penalties() {
        let s = sampler(SamplingParams {
            repetition_penalty: Some(2.0),
            logit_bias: vec![(0, -100.0), (1, 100.0), (7, 5.0)],
            ..Default::default()
        });
        let mut logits = vec![4.0, -1.0, 3.0];
        s.adjust_logits(&mut logits, &[0], &[]);
        // Token 7 is outside this row: ignored (the engine refuses it at submission).
        assert_eq!(logits, vec![2.0 - 100.0, 99.0, 3.0]);
        assert!(s.params().adjusts_logits());
    }

    #[test]
    fn log_softmax_and_top_n_agree() {
        let lp = log_softmax(&[1.0, 3.0, 2.0]);
        let total: f32 = lp.iter().map(|l| l.exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
        let top = top_n(&lp, 2);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 2]);
    }
}
