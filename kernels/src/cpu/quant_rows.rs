//! Activations for the quantized products: rows quantized per block of 32 to 8-bit integers,
//! with each block's scale, integer sum and scaled sum (see `NUMERICS.md`).

use super::generic::{shifted_integer, ROUND_SHIFT};
use super::quant::BLOCK;

/// Activation rows quantized per block of 32: `x ≈ scale·q` with `q` in -127..=127.
#[derive(Debug, Default, Clone)]
pub struct QuantizedRows {
    pub values: Vec<i8>,
    pub scales: Vec<f32>,
    /// `Σ q` per block.
    pub sums: Vec<i32>,
    /// `Σ q` per 16 values (two per block), for Q6_K's sub-scales.
    pub half_sums: Vec<i32>,
    /// `scale · Σ q` per block (the minimum term's factor).
    pub scaled_sums: Vec<f32>,
}

/// `value · inverse` rounded to the nearest integer (ties to even) and clamped to ±127, NaN to
/// 0 (as `as i8` gives), in arithmetic that vectorises: see [`shifted_integer`].
#[inline(always)]
fn quantize_value(value: f32, inverse: f32) -> i8 {
    let scaled = value * inverse;
    let scaled = if scaled.is_nan() { 0.0 } else { scaled };
    // Clamped first so the sum stays where its mantissa holds the integer exactly.
    let q = shifted_integer(scaled.clamp(-127.5, 127.5) + ROUND_SHIFT);
    q.clamp(-127, 127) as i8
}

/// A view of some rows of [`QuantizedRows`].
#[derive(Debug, Clone, Copy)]
pub struct QuantRows<'a> {
    pub values: &'a [i8],
    pub scales: &'a [f32],
    pub sums: &'a [i32],
    pub half_sums: &'a [i32],
    pub scaled_sums: &'a [f32],
}

impl QuantizedRows {
    /// Quantizes `rows` rows of `k` values (`k` a multiple of 32) into `self`, reusing its
    /// buffers. Per block: `scale = amax / 127`, `q = round(x · 127 / amax)` (ties to even); an all-zero
    /// block has scale 0. Plain scalar code shared by every ISA, so every ISA sees the same q.
    pub fn quantize(&mut self, x: &[f32], rows: usize, k: usize) {
        let blocks = rows * k / BLOCK;
        self.values.resize(rows * k, 0);
        self.scales.resize(blocks, 0.0);
        self.sums.resize(blocks, 0);
        self.half_sums.resize(2 * blocks, 0);
        self.scaled_sums.resize(blocks, 0.0);
        for (b, (block, q)) in x
            .chunks_exact(BLOCK)
            .zip(self.values.chunks_exact_mut(BLOCK))
            .enumerate()
        {
            let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            let (scale, inverse) = if amax > 0.0 && amax.is_finite() {
                (amax / 127.0, 127.0 / amax)
            } else {
                (0.0, 0.0)
            };
            let mut halves = [0i32; 2];
            for ((q, v), half) in q
                .chunks_exact_mut(16)
                .zip(block.chunks_exact(16))
                .zip(&mut halves)
            {
                for (q, v) in q.iter_mut().zip(v) {
                    *q = quantize_value(*v, inverse);
                }
                *half = q.iter().map(|&q| i32::from(q)).sum();
            }
            let sum = halves[0] + halves[1];
            self.scales[b] = scale;
            self.sums[b] = sum;
            self.half_sums[2 * b..2 * b + 2].copy_from_slice(&halves);
            self.scaled_sums[b] = scale * sum as f32;
        }
    }

    /// Rows `first..first + count` of `k` values.
    pub fn rows(&self, first: usize, count: usize, k: usize) -> QuantRows<'_> {
        let blocks = k / BLOCK;
        QuantRows {
            values: &self.values[first * k..(first + count) * k],
            scales: &self.scales[first * blocks..(first + count) * blocks],
            sums: &self.sums[first * blocks..(first + count) * blocks],
            half_sums: &self.half_sums[2 * first * blocks..2 * (first + count) * blocks],
            scaled_sums: &self.scaled_sums[first * blocks..(first + count) * blocks],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bit arithmetic is the plain formula: round half to even, clamp to ±127, NaN to 0.
    #[test]
    fn quantized_values_are_rounded_ties_to_even_and_clamped() {
        let plain = |x: f32| x.round_ties_even().clamp(-127.0, 127.0) as i8;
        let mut values: Vec<f32> = (-2600..=2600).map(|i| i as f32 * 0.05).collect();
        values.extend([
            126.5,
            127.5,
            -127.5,
            128.0,
            1e9,
            -1e9,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ]);
        values.extend([f32::NAN, 0.5, 1.5, 2.5, -0.5, -1.5, 1e-30, -0.0]);
        for x in values {
            assert_eq!(quantize_value(x, 1.0), plain(x), "{x}");
        }
        for (value, inverse) in [(0.3f32, 127.0 / 0.9f32), (-2.0, 63.5), (1e-3, 1.27e5)] {
            assert_eq!(quantize_value(value, inverse), plain(value * inverse));
        }
    }
}
