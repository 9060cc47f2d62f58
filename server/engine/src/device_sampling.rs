//! Choosing next tokens where the logits are: on a GPU, a step's `(rows, vocab)` logits never
//! come to the host; penalties, logit bias, grammar masks, temperature, top-k, top-p, min-p and the draw
//! run as tensor ops over the whole batch, and only each row's token and log-probability come
//! back.
//!
//! Sorting a 128k-entry row is not something candle offers on CUDA, so thresholds are found by
//! bisection instead: top-k keeps the probabilities at or above the largest threshold that
//! still keeps `k` of them, top-p the largest threshold whose kept mass reaches `p`; the draw
//! bisects on the index where the running sum of the kept probabilities passes a uniform
//! number drawn from the request's own generator (one per token, like the host sampler).
//! Greedy rows are the argmax of the same penalised, masked logits the host would see: the
//! same token bit for bit (ties aside: the host takes the lowest index). Seeded sampling is
//! reproducible here but walks the vocabulary in index order, not the host's probability
//! order, so it draws different tokens from the host for the same seed.

use crate::sampling::SamplingParams;
use candle_core::{DType, Device, Result, Tensor, D};

/// What one row needs beside its logits.
#[derive(Debug, Clone, Default)]
pub struct DeviceRow<'a> {
    pub params: SamplingParams,
    /// Uniform in `[0, 1)` from the request's generator (unused when greedy).
    pub uniform: f32,
    /// Distinct tokens of prompt and output (the repetition penalty's "seen").
    pub seen: &'a [u32],
    /// Each generated token with its count (frequency and presence penalties).
    pub generated: &'a [(u32, f32)],
    /// The grammar's allowed tokens as llguidance's bit words (bit `t % 32` of word `t / 32`).
    pub allowed: Option<&'a [u32]>,
}

/// Whether `params` can be sampled here (typical-p and alternatives need the full row).
pub fn supported(params: &SamplingParams) -> bool {
    params.typical_p.is_none_or(|p| p >= 1.0) && params.top_n_tokens == 0
}

/// Bisection steps for probability thresholds: resolution `max / 2^24`, below f32's spacing
/// near the largest probability.
const THRESHOLD_STEPS: usize = 24;

/// Each row's `(token, log-probability)`; the log-probability is the model's (before
/// penalties, masks and temperature), as on the host.
pub fn choose(logits: &Tensor, rows: &[DeviceRow<'_>]) -> Result<Vec<(u32, f32)>> {
    let logits = logits.to_dtype(DType::F32)?;
    let (batch, vocab) = logits.dims2()?;
    if batch != rows.len() {
        candle_core::bail!("{} rows of logits for {} rows", batch, rows.len())
    }
    if batch == 0 {
        return Ok(Vec::new());
    }
    let device = logits.device().clone();
    let log_norm = log_sum_exp(&logits)?;
    let mut x = penalised(&logits, rows, &device)?;
    if rows.iter().any(|r| r.allowed.is_some()) {
        x = masked(&x, rows, vocab, &device)?;
    }
    let greedy = x.argmax_keepdim(D::Minus1)?; // (batch, 1) u32
    let tokens = if rows.iter().all(|r| r.params.is_greedy()) {
        greedy
    } else {
        let sampled = sample(&x, rows, &device)?;
        let is_greedy = column(rows, &device, |r| f32::from(u8::from(r.params.is_greedy())))?;
        is_greedy
            .ne(0f32)?
            .where_cond(
                &greedy.to_dtype(DType::F32)?,
                &sampled.to_dtype(DType::F32)?,
            )?
            .to_dtype(DType::U32)?
    };
    let logprobs = (logits.gather(&tokens, 1)? - log_norm)?;
    let tokens = tokens.flatten_all()?.to_vec1::<u32>()?;
    let logprobs = logprobs.flatten_all()?.to_vec1::<f32>()?;
    Ok(tokens.into_iter().zip(logprobs).collect())
}

/// `(batch, 1)` per-row values.
fn column(
    rows: &[DeviceRow<'_>],
    device: &Device,
    f: impl Fn(&DeviceRow<'_>) -> f32,
) -> Result<Tensor> {
    let values: Vec<f32> = rows.iter().map(f).collect();
    Tensor::from_vec(values, (rows.len(), 1), device)
}

fn log_sum_exp(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?;
    let sum = x.broadcast_sub(&max)?.exp()?.sum_keepdim(D::Minus1)?;
    max + sum.log()?
}

/// A `(batch, vocab)` tensor that is `value` at each row's listed tokens and 0 elsewhere:
/// one upload of flat indices and one scatter-add.
fn sparse_rows(
    rows: &[DeviceRow<'_>],
    vocab: usize,
    device: &Device,
    entries: impl Fn(&DeviceRow<'_>) -> Vec<(u32, f32)>,
) -> Result<Tensor> {
    let (mut index, mut values) = (Vec::new(), Vec::new());
    for (r, row) in rows.iter().enumerate() {
        for (token, value) in entries(row) {
            if (token as usize) < vocab {
                index.push((r * vocab + token as usize) as u32);
                values.push(value);
            }
        }
    }
    let zeros = Tensor::zeros(rows.len() * vocab, DType::F32, device)?;
    if index.is_empty() {
        return zeros.reshape((rows.len(), vocab));
    }
    let count = index.len();
    let index = Tensor::from_vec(index, count, device)?;
    let values = Tensor::from_vec(values, count, device)?;
    zeros
        .index_add(&index, &values, 0)?
        .reshape((rows.len(), vocab))
}

/// The host sampler's penalties and logit bias, element-wise: repetition divides positive
/// (multiplies negative) logits of seen tokens; frequency and presence subtract
/// `frequency * count + presence` from generated tokens; the bias is added last.
fn penalised(logits: &Tensor, rows: &[DeviceRow<'_>], device: &Device) -> Result<Tensor> {
    let vocab = logits.dim(1)?;
    let mut x = logits.clone();
    let repetition = |r: &DeviceRow<'_>| r.params.repetition_penalty.filter(|&p| p != 1.0);
    if rows.iter().any(|r| repetition(r).is_some()) {
        let seen = sparse_rows(rows, vocab, device, |r| match repetition(r) {
            Some(_) => r.seen.iter().map(|&t| (t, 1.0)).collect(),
            None => Vec::new(),
        })?
        .gt(0f32)?;
        let penalty = column(rows, device, |r| repetition(r).unwrap_or(1.0))?
            .broadcast_as(x.shape())?
            .contiguous()?;
        let penalised = x
            .gt(0f32)?
            .where_cond(&(&x / &penalty)?, &(&x * &penalty)?)?;
        x = seen.where_cond(&penalised, &x)?;
    }
    let counting =
        |r: &DeviceRow<'_>| r.params.frequency_penalty != 0.0 || r.params.presence_penalty != 0.0;
    if rows.iter().any(counting) {
        let counts = sparse_rows(rows, vocab, device, |r| {
            if counting(r) {
                r.generated.to_vec()
            } else {
                Vec::new()
            }
        })?;
        let frequency = column(rows, device, |r| r.params.frequency_penalty)?;
        let presence = column(rows, device, |r| r.params.presence_penalty)?;
        let present = counts.gt(0f32)?.to_dtype(DType::F32)?;
        let subtract = (counts.broadcast_mul(&frequency)? + present.broadcast_mul(&presence)?)?;
        x = (x - subtract)?;
    }
    if rows.iter().any(|r| !r.params.logit_bias.is_empty()) {
        let bias = sparse_rows(rows, vocab, device, |r| r.params.logit_bias.clone())?;
        x = (x + bias)?;
    }
    Ok(x)
}

/// Tokens the rows' grammars do not allow set to minus infinity. The bit words go up as
/// bytes (one upload); bits are unpacked with float arithmetic, as candle has no bit ops.
fn masked(x: &Tensor, rows: &[DeviceRow<'_>], vocab: usize, device: &Device) -> Result<Tensor> {
    let width = vocab.div_ceil(8);
    let mut bytes = vec![0xFFu8; rows.len() * width];
    for (row, out) in rows.iter().zip(bytes.chunks_mut(width)) {
        if let Some(words) = row.allowed {
            out.fill(0);
            for (slot, byte) in out
                .iter_mut()
                .zip(words.iter().flat_map(|w| w.to_le_bytes()))
            {
                *slot = byte;
            }
        }
    }
    let bytes = Tensor::from_vec(bytes, (rows.len(), width), device)?.to_dtype(DType::F32)?;
    let bits = (0..8)
        .map(|b| {
            let low = (&bytes / f64::from(1u32 << b))?.floor()?;
            let high = (&bytes / f64::from(1u32 << (b + 1)))?.floor()?;
            low - (high * 2.0)?
        })
        .collect::<Result<Vec<_>>>()?;
    let allowed = Tensor::stack(&bits, 2)?
        .reshape((rows.len(), width * 8))?
        .narrow(1, 0, vocab)?;
    let minus_infinity = Tensor::full(f32::NEG_INFINITY, x.shape(), device)?;
    allowed.ne(0f32)?.where_cond(x, &minus_infinity)
}

/// Largest threshold `t` per row such that the probabilities `p >= t` still measure at
/// least `goal` (`(batch, 1)`): a count (top-k) or a mass (top-p).
fn bisect_threshold(p: &Tensor, goal: &Tensor, count: bool) -> Result<Tensor> {
    let max = p.max_keepdim(D::Minus1)?;
    // The largest probability alone may be enough (top-k of 1, one dominant token).
    let max_suffices = measure(p, &max, count)?.ge(goal)?;
    // Invariant: measure(lo) >= goal (everything is kept at 0), measure(hi) < goal.
    let mut lo = max.zeros_like()?;
    let mut hi = max.clone();
    for _ in 0..THRESHOLD_STEPS {
        let mid = ((&lo + &hi)? * 0.5)?;
        let ok = measure(p, &mid, count)?.ge(goal)?;
        lo = ok.where_cond(&mid, &lo)?;
        hi = ok.where_cond(&hi, &mid)?;
    }
    max_suffices.where_cond(&max, &lo)
}

fn measure(p: &Tensor, threshold: &Tensor, count: bool) -> Result<Tensor> {
    let kept = p.broadcast_ge(threshold)?.to_dtype(DType::F32)?;
    if count {
        kept.sum_keepdim(D::Minus1)
    } else {
        (kept * p)?.sum_keepdim(D::Minus1)
    }
}

fn normalised(p: &Tensor) -> Result<Tensor> {
    p.broadcast_div(&p.sum_keepdim(D::Minus1)?)
}

/// One token per row drawn from its temperature-scaled, truncated distribution.
fn sample(x: &Tensor, rows: &[DeviceRow<'_>], device: &Device) -> Result<Tensor> {
    let (batch, vocab) = x.dims2()?;
    let temperature = column(rows, device, |r| {
        if r.params.is_greedy() {
            1.0
        } else {
            r.params.temperature
        }
    })?;
    let scaled = x.broadcast_div(&temperature)?;
    let mut p = candle_nn::ops::softmax_last_dim(&scaled)?;
    let top_k = |r: &DeviceRow<'_>| r.params.top_k.filter(|&k| k > 0 && k < vocab);
    if rows.iter().any(|r| top_k(r).is_some()) {
        let k = column(rows, device, |r| top_k(r).unwrap_or(vocab) as f32)?;
        let threshold = bisect_threshold(&p, &k, true)?;
        p = normalised(&(p.broadcast_ge(&threshold)?.to_dtype(DType::F32)? * &p)?)?;
    }
    let top_p = |r: &DeviceRow<'_>| r.params.top_p.filter(|&q| q < 1.0);
    if rows.iter().any(|r| top_p(r).is_some()) {
        let mass = column(rows, device, |r| top_p(r).unwrap_or(0.0))?;
        let threshold = bisect_threshold(&p, &mass, false)?;
        p = (p.broadcast_ge(&threshold)?.to_dtype(DType::F32)? * &p)?;
    }
    let min_p = |r: &DeviceRow<'_>| r.params.min_p.filter(|&m| m > 0.0);
    if rows.iter().any(|r| min_p(r).is_some()) {
        let factor = column(rows, device, |r| min_p(r).unwrap_or(0.0))?;
        let floor = p.max_keepdim(D::Minus1)?.broadcast_mul(&factor)?;
        p = (p.broadcast_ge(&floor)?.to_dtype(DType::F32)? * &p)?;
    }
    // The smallest index whose running sum passes `uniform * total`, by bisection on the
    // index: `lo` stays below it (sum through lo <= target), `hi` at or past it.
    let total = p.sum_keepdim(D::Minus1)?;
    let uniform = column(rows, device, |r| r.uniform.clamp(0.0, 1.0))?;
    let target = (uniform * &total)?;
    let index = Tensor::arange(0f32, vocab as f32, device)?.reshape((1, vocab))?;
    let mut lo = Tensor::full(-1f32, (batch, 1), device)?;
    let mut hi = Tensor::full((vocab - 1) as f32, (batch, 1), device)?;
    for _ in 0..usize::BITS - vocab.leading_zeros() {
        let mid = ((&lo + &hi)? * 0.5)?.floor()?;
        let through_mid = index.broadcast_le(&mid)?.to_dtype(DType::F32)?;
        let sum = (through_mid * &p)?.sum_keepdim(D::Minus1)?;
        let past = sum.gt(&target)?;
        hi = past.where_cond(&mid, &hi)?;
        lo = past.where_cond(&lo, &mid)?;
    }
    let token = hi.to_dtype(DType::U32)?;
    // Rounding can leave the bisection on a token of probability zero when `uniform` is
    // next to 1: take the most likely kept token then.
    let weight = p.gather(&token, 1)?;
    let fallback = p.argmax_keepdim(D::Minus1)?.to_dtype(DType::F32)?;
    weight
        .gt(0f32)?
        .where_cond(&hi, &fallback)?
        .to_dtype(DType::U32)
}

#[cfg(test)]
#[path = "device_sampling/tests.rs"]
mod tests;
