//! The device sampler against the host sampler (`sampling.rs`), run on the CPU device: the
//! same tensor ops run on a GPU.

use super::*;
use crate::sampling::{argmax, Sampler};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn random_logits(rng: &mut ChaCha8Rng, rows: usize, vocab: usize) -> Vec<Vec<f32>> {
    (0..rows)
        .map(|_| (0..vocab).map(|_| rng.random_range(-4.0f32..4.0)).collect())
        .collect()
}

fn tensor(rows: &[Vec<f32>]) -> Tensor {
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    Tensor::from_vec(flat, (rows.len(), rows[0].len()), &Device::Cpu).expect("shape")
}

fn log_softmax(row: &[f32]) -> Vec<f32> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = row.iter().map(|x| (x - max).exp()).sum();
    row.iter().map(|x| x - max - sum.ln()).collect()
}

/// A random grammar mask: about half the tokens, never none.
fn random_words(rng: &mut ChaCha8Rng, vocab: usize) -> Vec<u32> {
    let mut words: Vec<u32> = (0..vocab.div_ceil(32)).map(|_| rng.random()).collect();
    words[0] |= 1;
    words
}

fn allowed(words: &[u32], token: usize) -> bool {
    words[token / 32] & (1 << (token % 32)) != 0
}

#[test]
fn greedy_rows_match_the_host_after_penalties_bias_and_masks() -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let vocab = 300;
    for round in 0..20 {
        let logits = random_logits(&mut rng, 6, vocab);
        let seen: Vec<Vec<u32>> = (0..6)
            .map(|_| (0..20).map(|_| rng.random_range(0..vocab as u32)).collect())
            .collect();
        let generated: Vec<Vec<u32>> = (0..6)
            .map(|_| (0..8).map(|_| rng.random_range(0..vocab as u32)).collect())
            .collect();
        let masks: Vec<Option<Vec<u32>>> = (0..6)
            .map(|r| (r % 2 == 0).then(|| random_words(&mut rng, vocab)))
            .collect();
        let params: Vec<SamplingParams> = (0..6)
            .map(|r| SamplingParams {
                repetition_penalty: (r % 3 != 0).then_some(1.3),
                frequency_penalty: if r % 2 == 1 { 0.7 } else { 0.0 },
                presence_penalty: if r >= 3 { 0.4 } else { 0.0 },
                logit_bias: if r % 2 == 1 {
                    vec![(rng.random_range(0..vocab as u32), 100.0), (3, -100.0)]
                } else {
                    Vec::new()
                },
                ..SamplingParams::default()
            })
            .collect();
        let distinct: Vec<Vec<u32>> = seen
            .iter()
            .zip(&generated)
            .map(|(s, g)| {
                let mut all: Vec<u32> = s.iter().chain(g).copied().collect();
                all.sort_unstable();
                all.dedup();
                all
            })
            .collect();
        let counts: Vec<Vec<(u32, f32)>> = generated
            .iter()
            .map(|g| {
                let mut counts = std::collections::BTreeMap::<u32, f32>::new();
                for &t in g {
                    *counts.entry(t).or_default() += 1.0;
                }
                counts.into_iter().collect()
            })
            .collect();
        let rows: Vec<DeviceRow<'_>> = (0..6)
            .map(|r| DeviceRow {
                params: params[r].clone(),
                uniform: 0.0,
                seen: &distinct[r],
                generated: &counts[r],
                allowed: masks[r].as_deref(),
            })
            .collect();
        let chosen = choose(&tensor(&logits), &rows)?;
        for r in 0..6 {
            let mut row = logits[r].clone();
            let context: Vec<u32> = seen[r].iter().chain(&generated[r]).copied().collect();
            Sampler::new(params[r].clone()).adjust_logits(&mut row, &context, &generated[r]);
            if let Some(words) = &masks[r] {
                for (t, logit) in row.iter_mut().enumerate() {
                    if !allowed(words, t) {
                        *logit = f32::NEG_INFINITY;
                    }
                }
            }
            let (token, logprob) = chosen[r];
            assert_eq!(token, argmax(&row), "round {round} row {r}");
            let expected = log_softmax(&logits[r])[token as usize];
            assert!((logprob - expected).abs() < 1e-5, "{logprob} vs {expected}");
        }
    }
    Ok(())
}

/// The tokens the host sampler could draw for `params` (top-k, then top-p over the
/// renormalised candidates, then min-p).
fn host_candidates(row: &[f32], params: &SamplingParams) -> Vec<u32> {
    let mut order: Vec<(u32, f32)> = row
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, l / params.temperature))
        .collect();
    order.sort_by(|a, b| b.1.total_cmp(&a.1));
    if let Some(k) = params.top_k {
        order.truncate(k);
    }
    let max = order[0].1;
    let sum: f32 = order.iter().map(|c| (c.1 - max).exp()).sum();
    let probs: Vec<f32> = order.iter().map(|c| (c.1 - max).exp() / sum).collect();
    let mut keep = order.len();
    if let Some(p) = params.top_p {
        let mut mass = 0.0;
        keep = probs
            .iter()
            .position(|&q| {
                mass += q;
                mass >= p
            })
            .map_or(keep, |i| i + 1);
    }
    if let Some(m) = params.min_p {
        keep = keep.min(probs.iter().take_while(|&&q| q >= probs[0] * m).count());
    }
    order[..keep].iter().map(|c| c.0).collect()
}

#[test]
fn sampled_tokens_stay_inside_the_host_samplers_candidates() -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let vocab = 200;
    let settings = [
        (Some(5), None, None),
        (None, Some(0.5), None),
        (Some(40), Some(0.9), None),
        (None, None, Some(0.3)),
        (Some(1), None, None),
        (None, Some(1e-4), None),
    ];
    for _ in 0..30 {
        let logits = random_logits(&mut rng, settings.len(), vocab);
        let params: Vec<SamplingParams> = settings
            .iter()
            .map(|&(top_k, top_p, min_p)| SamplingParams {
                temperature: 0.8,
                top_k,
                top_p,
                min_p,
                ..SamplingParams::default()
            })
            .collect();
        let rows: Vec<DeviceRow<'_>> = params
            .iter()
            .map(|p| DeviceRow {
                params: p.clone(),
                uniform: rng.random(),
                ..DeviceRow::default()
            })
            .collect();
        for ((token, _), (row, p)) in choose(&tensor(&logits), &rows)?
            .into_iter()
            .zip(logits.iter().zip(&params))
        {
            let candidates = host_candidates(row, p);
            assert!(
                candidates.contains(&token),
                "{token} outside {candidates:?} for {p:?}"
            );
        }
    }
    Ok(())
}

#[test]
fn draws_follow_the_distribution_and_repeat_with_the_same_uniforms() -> Result<()> {
    let probabilities = [0.05f32, 0.4, 0.1, 0.25, 0.2];
    let logits: Vec<f32> = probabilities.iter().map(|p| p.ln()).collect();
    let params = SamplingParams {
        temperature: 1.0,
        ..SamplingParams::default()
    };
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let draws = 64;
    let mut counts = [0usize; 5];
    for _ in 0..40 {
        let uniforms: Vec<f32> = (0..draws).map(|_| rng.random()).collect();
        let rows: Vec<DeviceRow<'_>> = uniforms
            .iter()
            .map(|&u| DeviceRow {
                params: params.clone(),
                uniform: u,
                ..DeviceRow::default()
            })
            .collect();
        let batch = tensor(&vec![logits.clone(); draws]);
        let first = choose(&batch, &rows)?;
        assert_eq!(first, choose(&batch, &rows)?, "same uniforms, same tokens");
        for (token, _) in first {
            counts[token as usize] += 1;
        }
    }
    let total = counts.iter().sum::<usize>() as f32;
    for (count, p) in counts.iter().zip(probabilities) {
        let share = *count as f32 / total;
        // 2560 draws: a standard error below 0.01.
        assert!(
            (share - p).abs() < 0.035,
            "share {share} vs {p}: {counts:?}"
        );
    }
    Ok(())
}

#[test]
fn masked_rows_never_draw_a_disallowed_token() -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let vocab = 100;
    for _ in 0..20 {
        let logits = random_logits(&mut rng, 4, vocab);
        let words: Vec<Vec<u32>> = (0..4).map(|_| random_words(&mut rng, vocab)).collect();
        let rows: Vec<DeviceRow<'_>> = words
            .iter()
            .map(|w| DeviceRow {
                params: SamplingParams {
                    temperature: 2.0,
                    ..SamplingParams::default()
                },
                uniform: rng.random(),
                allowed: Some(w),
                ..DeviceRow::default()
            })
            .collect();
        for ((token, _), w) in choose(&tensor(&logits), &rows)?.into_iter().zip(&words) {
            assert!(allowed(w, token as usize), "token {token} is masked");
        }
    }
    Ok(())
}
