//! Activations for the quantized products: rows quantized per block of 32 to 8-bit integers,
//! with each block's scale, integer sum and scaled sum (see `NUMERICS.md`).

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

/// `value` rounded to the nearest integer, ties to even, for |value| < 2^22: adding and
/// subtracting 1.5·2^23 leaves no fraction bits. Two plain IEEE additions, so the same on
/// every CPU and vectorisable (`f32::round` is a libm call on baseline x86-64).
fn round_to_nearest_even(value: f32) -> f32 {
    const SHIFT: f32 = 12_582_912.0; // 1.5 * 2^23
    (value + SHIFT) - SHIFT
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
            for (j, (q, v)) in q.iter_mut().zip(block).enumerate() {
                *q = round_to_nearest_even(v * inverse).clamp(-127.0, 127.0) as i8;
                halves[j / 16] += i32::from(*q);
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
