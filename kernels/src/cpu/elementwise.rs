//! Row-wise kernels around the products: RMS norm and rotary embeddings from a table of cos/sin
//! computed once per position (grown on demand, shared by every layer).

use super::CpuKernels;

/// How rotary embeddings pair the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotaryPairing {
    /// Dimension `i` with `i + head_dim / 2` (Hugging Face checkpoints).
    Half,
    /// Dimension `2i` with `2i + 1` (llama.cpp's GGUF layout for llama).
    Interleaved,
}

/// cos/sin of every position seen so far: `[position][cos of half dims, sin of half dims]`.
#[derive(Debug, Clone)]
pub struct RotaryTable {
    inv_freq: Vec<f32>,
    /// From this position on, these frequencies instead (LongRoPE).
    long: Option<(usize, Vec<f32>)>,
    /// What cos and sin are multiplied by (LongRoPE's attention factor; 1 otherwise).
    magnitude: f32,
    pairing: RotaryPairing,
    table: Vec<f32>,
}

impl RotaryTable {
    /// `inv_freq` has `head_dim / 2` entries, scaling already applied.
    pub fn new(inv_freq: Vec<f32>, pairing: RotaryPairing) -> Self {
        Self::with_long_context(inv_freq, None, 1.0, pairing)
    }

    /// With LongRoPE's second set of frequencies, used from its position on, and cos and sin
    /// multiplied by `magnitude`.
    pub fn with_long_context(
        inv_freq: Vec<f32>,
        long: Option<(usize, Vec<f32>)>,
        magnitude: f32,
        pairing: RotaryPairing,
    ) -> Self {
        Self {
            inv_freq,
            long,
            magnitude,
            pairing,
            table: Vec::new(),
        }
    }

    fn half(&self) -> usize {
        self.inv_freq.len()
    }

    /// Makes the table cover positions `0..=max_position`. Angles are `position * inv_freq` in
    /// f32 and cos/sin in f32, as the portable path computes them.
    pub fn cover(&mut self, max_position: usize) {
        let half = self.half();
        let have = if half == 0 {
            0
        } else {
            self.table.len() / (2 * half)
        };
        for p in have..=max_position {
            let inv_freq = match &self.long {
                Some((from, long)) if p >= *from => long,
                _ => &self.inv_freq,
            };
            for &f in inv_freq {
                self.table.push(self.scaled((p as f32 * f).cos()));
            }
            for &f in inv_freq {
                self.table.push(self.scaled((p as f32 * f).sin()));
            }
        }
    }

    fn scaled(&self, value: f32) -> f32 {
        if self.magnitude == 1.0 {
            value
        } else {
            value * self.magnitude
        }
    }

    /// Rotates every head of `x` (`heads * head_dim`) to `position` (must be covered).
    pub fn rotate(&self, x: &mut [f32], position: usize) {
        let half = self.half();
        let entry = &self.table[position * 2 * half..(position + 1) * 2 * half];
        let (cos, sin) = entry.split_at(half);
        for head in x.chunks_exact_mut(2 * half) {
            match self.pairing {
                RotaryPairing::Half => {
                    let (a, b) = head.split_at_mut(half);
                    for i in 0..half {
                        let (x0, x1) = (a[i], b[i]);
                        a[i] = x0 * cos[i] - x1 * sin[i];
                        b[i] = x0 * sin[i] + x1 * cos[i];
                    }
                }
                RotaryPairing::Interleaved => {
                    for (i, pair) in head.chunks_exact_mut(2).enumerate() {
                        let (x0, x1) = (pair[0], pair[1]);
                        pair[0] = x0 * cos[i] - x1 * sin[i];
                        pair[1] = x0 * sin[i] + x1 * cos[i];
                    }
                }
            }
        }
    }
}

impl CpuKernels {
    /// `ln Σ e^x`: the normaliser of a log-softmax over a row of logits. The same bits on every
    /// ISA, so a token's log-probability does not depend on which path sampled it.
    pub fn logsumexp(&self, row: &[f32]) -> f32 {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        if !max.is_finite() {
            return max;
        }
        max + (self.kernels.sum_exp)(row, max).ln()
    }

    /// `1 / sqrt(mean(row^2) + eps)`.
    fn inverse_rms(&self, row: &[f32], eps: f32) -> f32 {
        let mean = (self.kernels.sum_squares)(row) / row.len() as f32;
        1.0 / (mean + eps).sqrt()
    }

    /// RMS norm of each `weight.len()`-wide row of `x` into `out`:
    /// `x / sqrt(mean(x^2) + eps) * weight`.
    pub fn rms_norm(&self, x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
        let dim = weight.len();
        for (row, dst) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
            let inv = self.inverse_rms(row, eps);
            (self.kernels.scale_by_weight)(row, inv, weight, dst);
        }
    }

    /// RMS norm in place (q/k norms over each head).
    pub fn rms_norm_in_place(&self, x: &mut [f32], weight: &[f32], eps: f32) {
        let dim = weight.len();
        for row in x.chunks_exact_mut(dim) {
            let inv = self.inverse_rms(row, eps);
            for (v, w) in row.iter_mut().zip(weight) {
                *v = *v * inv * w;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::Isa;

    #[test]
    fn logsumexp_matches_f64_and_is_the_same_on_every_isa() {
        let row: Vec<f32> = (0..49_157)
            .map(|i| ((i * 7919) % 1000) as f32 / 37.0 - 12.0)
            .collect();
        let max = row
            .iter()
            .fold(f64::NEG_INFINITY, |m, &v| m.max(f64::from(v)));
        let exact = max
            + row
                .iter()
                .map(|&v| (f64::from(v) - max).exp())
                .sum::<f64>()
                .ln();
        let reference = CpuKernels::scalar().logsumexp(&row);
        assert!(
            (f64::from(reference) - exact).abs() < 1e-4,
            "{reference} vs {exact}"
        );
        for isa in Isa::supported() {
            let Some(kernels) = CpuKernels::for_isa(isa) else {
                continue;
            };
            assert_eq!(
                kernels.logsumexp(&row).to_bits(),
                reference.to_bits(),
                "{isa:?}"
            );
        }
        assert_eq!(
            CpuKernels::scalar().logsumexp(&[f32::NEG_INFINITY; 3]),
            f32::NEG_INFINITY
        );
    }

    #[test]
    fn rms_norm_matches_the_formula_and_rotation_keeps_norms() {
        let k = CpuKernels::active();
        let x: Vec<f32> = (0..24).map(|i| i as f32 / 7.0 - 1.0).collect();
        let w: Vec<f32> = (0..12).map(|i| 0.5 + i as f32 / 12.0).collect();
        let mut out = vec![0f32; 24];
        k.rms_norm(&x, &w, 1e-5, &mut out);
        for (row, got) in x.chunks(12).zip(out.chunks(12)) {
            let rms = (row.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / 12.0 + 1e-5).sqrt();
            for i in 0..12 {
                let want = f64::from(row[i]) / rms * f64::from(w[i]);
                assert!((f64::from(got[i]) - want).abs() < 1e-5);
            }
        }
        let mut table = RotaryTable::new(vec![1.0, 0.1, 0.01], RotaryPairing::Half);
        table.cover(9);
        let mut head = x[..12].to_vec();
        table.rotate(&mut head, 0);
        assert_eq!(head, x[..12]);
        table.rotate(&mut head, 9);
        let norm = |v: &[f32]| v.iter().map(|a| a * a).sum::<f32>();
        assert!((norm(&head) - norm(&x[..12])).abs() < 1e-4);
    }
}
