//! Quantized weights for the batched integer product: GGUF's Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0
//! blocks (32 values, an f16 scale `d`, for some an f16 minimum `m`) repacked at load into
//! panels of 16 output rows, and activations quantized per row to 8-bit blocks.
//!
//! The product of one activation block `x ≈ s·q` (q in -127..=127) with one weight block is
//! `d·s·Σ u·q (− offset·Σq)  (+ m·s·Σq)`, where `u` is the block's unsigned integer (a nibble,
//! a 5-bit value, or for Q8_0 the signed byte). The integer sums are exact, so every ISA (VNNI
//! `vpdpbusd`, AVX2 `maddubs`, scalar) gets the same integers; the float part is one fixed
//! sequence per block and output: `acc = fma(idot, d·s, acc)`, then `acc = fma(m, s·Σq, acc)`,
//! blocks in `k` order from +0.0. So, as for the dense product, a row's bits depend on nothing
//! but that row, the weights and the format (see `NUMERICS.md`).
//!
//! Panel layout, per block of 32 `k` values: the 16 rows' scales (f16), their minimums (f16,
//! Q4_1/Q5_1 only), then the integers, grouped by 4 consecutive `k` so that one 64-byte vector
//! holds 16 rows x 4 values (`[group][row][4]`):
//! - 4-bit (Q4_0, Q4_1): 4 groups of 64 bytes; byte `j` of row `r` in group `g` holds `k = 8g+j`
//!   in its low nibble and `k = 8g+4+j` in its high nibble. No size growth over GGUF.
//! - 8-bit (Q5_0, Q5_1 expanded to bytes; Q8_0 as signed bytes): 8 groups of 64 bytes, group
//!   `G` holding `k = 4G..4G+4`. Q8_0 has no growth; Q5 grows from 22/24 to 34/36 bytes a
//!   block, the price of decoding its fifth bit at load instead of in the loop.

use candle_core::quantized::GgmlDType;
use half::f16;

/// Values per quantization block (every supported format).
pub const BLOCK: usize = 32;
/// Output rows per panel.
pub const ROWS: usize = 16;

/// A GGUF quantization format the integer kernels serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuantFormat {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
}

/// How a format's integers sit in a panel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Two 4-bit values per byte, 0..=15.
    Nibbles,
    /// One unsigned value per byte, 0..=31.
    Bytes,
    /// One signed value per byte, -128..=127 (Q8_0).
    SignedBytes,
}

impl QuantFormat {
    pub const ALL: [QuantFormat; 5] = [
        QuantFormat::Q4_0,
        QuantFormat::Q4_1,
        QuantFormat::Q5_0,
        QuantFormat::Q5_1,
        QuantFormat::Q8_0,
    ];

    pub fn name(self) -> &'static str {
        match self {
            QuantFormat::Q4_0 => "q4_0",
            QuantFormat::Q4_1 => "q4_1",
            QuantFormat::Q5_0 => "q5_0",
            QuantFormat::Q5_1 => "q5_1",
            QuantFormat::Q8_0 => "q8_0",
        }
    }

    /// The GGUF tensor type of this format.
    pub fn ggml_dtype(self) -> GgmlDType {
        match self {
            QuantFormat::Q4_0 => GgmlDType::Q4_0,
            QuantFormat::Q4_1 => GgmlDType::Q4_1,
            QuantFormat::Q5_0 => GgmlDType::Q5_0,
            QuantFormat::Q5_1 => GgmlDType::Q5_1,
            QuantFormat::Q8_0 => GgmlDType::Q8_0,
        }
    }

    /// The format of a GGUF tensor type, `None` for types without integer kernels (K-quants,
    /// dense types).
    pub fn from_ggml(dtype: GgmlDType) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.ggml_dtype() == dtype)
    }

    /// Bytes of one GGUF block of 32 values.
    pub fn gguf_block_bytes(self) -> usize {
        match self {
            QuantFormat::Q4_0 => 18,
            QuantFormat::Q4_1 => 20,
            QuantFormat::Q5_0 => 22,
            QuantFormat::Q5_1 => 24,
            QuantFormat::Q8_0 => 34,
        }
    }

    pub fn encoding(self) -> Encoding {
        match self {
            QuantFormat::Q4_0 | QuantFormat::Q4_1 => Encoding::Nibbles,
            QuantFormat::Q5_0 | QuantFormat::Q5_1 => Encoding::Bytes,
            QuantFormat::Q8_0 => Encoding::SignedBytes,
        }
    }

    /// What the stored integer is offset by: value = d·(u − offset).
    pub fn offset(self) -> i32 {
        match self {
            QuantFormat::Q4_0 => 8,
            QuantFormat::Q5_0 => 16,
            _ => 0,
        }
    }

    /// value = d·u + m.
    pub fn has_min(self) -> bool {
        matches!(self, QuantFormat::Q4_1 | QuantFormat::Q5_1)
    }

    /// Bytes of one block of one panel (16 rows).
    pub fn panel_block_bytes(self) -> usize {
        let scales = ROWS * 2 * if self.has_min() { 2 } else { 1 };
        let integers = match self.encoding() {
            Encoding::Nibbles => ROWS * BLOCK / 2,
            Encoding::Bytes | Encoding::SignedBytes => ROWS * BLOCK,
        };
        scales + integers
    }

    /// Byte offset of the integers inside a panel block.
    pub fn integers_offset(self) -> usize {
        ROWS * 2 * if self.has_min() { 2 } else { 1 }
    }

    /// One GGUF block as its integers (`u`, see the module doc), scale and minimum. The
    /// bit layouts are ggml's: a nibble byte `j` holds values `j` (low) and `j + 16` (high);
    /// Q5's 32-bit `qh` holds the fifth bit of value `i` at bit `i`.
    pub fn decode_gguf_block(self, block: &[u8]) -> ([i32; BLOCK], f32, f32) {
        let half_at = |at: usize| f16::from_le_bytes([block[at], block[at + 1]]).to_f32();
        let d = half_at(0);
        let mut values = [0i32; BLOCK];
        let (m, rest) = match self {
            QuantFormat::Q4_1 | QuantFormat::Q5_1 => (half_at(2), &block[4..]),
            _ => (0.0, &block[2..]),
        };
        match self {
            QuantFormat::Q4_0 | QuantFormat::Q4_1 => {
                for j in 0..16 {
                    values[j] = i32::from(rest[j] & 0x0F);
                    values[j + 16] = i32::from(rest[j] >> 4);
                }
            }
            QuantFormat::Q5_0 | QuantFormat::Q5_1 => {
                let high = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
                let nibbles = &rest[4..];
                for j in 0..16 {
                    let bit = |i: usize| (((high >> i) & 1) << 4) as i32;
                    values[j] = i32::from(nibbles[j] & 0x0F) | bit(j);
                    values[j + 16] = i32::from(nibbles[j] >> 4) | bit(j + 16);
                }
            }
            QuantFormat::Q8_0 => {
                for (v, &b) in values.iter_mut().zip(rest) {
                    *v = i32::from(b as i8);
                }
            }
        }
        (values, d, m)
    }

    /// The real value of integer `u` of a block with scale `d` and minimum `m`.
    pub fn dequantize(self, u: i32, d: f32, m: f32) -> f32 {
        if self.has_min() {
            d * u as f32 + m
        } else {
            d * (u - self.offset()) as f32
        }
    }
}

/// A quantized `(n, k)` weight matrix in panels of [`ROWS`] output rows.
#[derive(Debug, Clone)]
pub struct QuantPanels {
    pub format: QuantFormat,
    /// Blocks per row (`k / 32`).
    pub blocks: usize,
    pub bytes: Vec<u8>,
}

impl QuantPanels {
    /// Bytes of one panel.
    pub fn panel_bytes(&self) -> usize {
        self.blocks * self.format.panel_block_bytes()
    }

    /// Repacks GGUF data of an `(n, k)` matrix (`n` rows of `k / 32` blocks; `k` a multiple
    /// of 32) into panels; rows past `n` in the last panel are zero.
    pub fn from_gguf(format: QuantFormat, data: &[u8], n: usize, k: usize) -> Result<Self, String> {
        if !k.is_multiple_of(BLOCK) {
            return Err(format!(
                "{}: k = {k} is not a multiple of {BLOCK}",
                format.name()
            ));
        }
        let blocks = k / BLOCK;
        let row_bytes = blocks * format.gguf_block_bytes();
        if data.len() != n * row_bytes {
            return Err(format!(
                "{}: ({n}, {k}) needs {} bytes, got {}",
                format.name(),
                n * row_bytes,
                data.len()
            ));
        }
        let block_bytes = format.panel_block_bytes();
        let panels = n.div_ceil(ROWS);
        let mut bytes = vec![0u8; panels * blocks * block_bytes];
        let integers = format.integers_offset();
        for row in 0..n {
            let (panel, lane) = (row / ROWS, row % ROWS);
            for b in 0..blocks {
                let at = row * row_bytes + b * format.gguf_block_bytes();
                let gguf = &data[at..at + format.gguf_block_bytes()];
                let (values, _, _) = format.decode_gguf_block(gguf);
                let out = &mut bytes[(panel * blocks + b) * block_bytes..][..block_bytes];
                // Scale and minimum: copied as f16 bits.
                out[2 * lane..2 * lane + 2].copy_from_slice(&gguf[0..2]);
                if format.has_min() {
                    out[ROWS * 2 + 2 * lane..ROWS * 2 + 2 * lane + 2].copy_from_slice(&gguf[2..4]);
                }
                let ints = &mut out[integers..];
                match format.encoding() {
                    Encoding::Nibbles => {
                        for g in 0..4 {
                            for j in 0..4 {
                                let low = values[8 * g + j] as u8;
                                let high = values[8 * g + 4 + j] as u8;
                                ints[g * 64 + lane * 4 + j] = low | (high << 4);
                            }
                        }
                    }
                    Encoding::Bytes | Encoding::SignedBytes => {
                        for group in 0..8 {
                            for j in 0..4 {
                                ints[group * 64 + lane * 4 + j] = values[4 * group + j] as u8;
                            }
                        }
                    }
                }
            }
        }
        Ok(Self {
            format,
            blocks,
            bytes,
        })
    }

    /// Row `i` (of panel `i / 16`) dequantized: an embedding lookup in a quantized table.
    pub fn row(&self, i: usize, out: &mut [f32]) {
        let format = self.format;
        let block_bytes = format.panel_block_bytes();
        let (panel, lane) = (i / ROWS, i % ROWS);
        for (b, values) in out.chunks_exact_mut(BLOCK).enumerate().take(self.blocks) {
            let block = &self.bytes[(panel * self.blocks + b) * block_bytes..][..block_bytes];
            let (ints, d, m) = panel_block_lane(format, block, lane);
            for (v, u) in values.iter_mut().zip(ints) {
                *v = format.dequantize(u, d, m);
            }
        }
    }
}

/// Lane `lane`'s integers, scale and minimum from one panel block.
pub fn panel_block_lane(
    format: QuantFormat,
    block: &[u8],
    lane: usize,
) -> ([i32; BLOCK], f32, f32) {
    let half_at = |at: usize| f16::from_le_bytes([block[at], block[at + 1]]).to_f32();
    let d = half_at(2 * lane);
    let m = if format.has_min() {
        half_at(ROWS * 2 + 2 * lane)
    } else {
        0.0
    };
    let ints = &block[format.integers_offset()..];
    let mut values = [0i32; BLOCK];
    for (k, v) in values.iter_mut().enumerate() {
        *v = match format.encoding() {
            Encoding::Nibbles => {
                let (g, j, high) = (k / 8, k % 4, (k % 8) >= 4);
                let byte = ints[g * 64 + lane * 4 + j];
                i32::from(if high { byte >> 4 } else { byte & 0x0F })
            }
            Encoding::Bytes => i32::from(ints[(k / 4) * 64 + lane * 4 + k % 4]),
            Encoding::SignedBytes => i32::from(ints[(k / 4) * 64 + lane * 4 + k % 4] as i8),
        };
    }
    (values, d, m)
}

pub use super::quant_rows::{QuantRows, QuantizedRows};

/// The reference of the integer product: `out[r * 16 + lane]` = the chain of row `r` with
/// panel row `lane`, for every row of `x` (see the module doc for the exact sequence).
pub fn tile_reference(
    format: QuantFormat,
    x: QuantRows,
    blocks: usize,
    panel: &[u8],
    out: &mut [f32],
) {
    let block_bytes = format.panel_block_bytes();
    let rows = x.values.len() / (blocks * BLOCK);
    for r in 0..rows {
        let mut acc = [0f32; ROWS];
        for b in 0..blocks {
            let block = &panel[b * block_bytes..(b + 1) * block_bytes];
            let q = &x.values[(r * blocks + b) * BLOCK..][..BLOCK];
            let (scale, sum, scaled_sum) = (
                x.scales[r * blocks + b],
                x.sums[r * blocks + b],
                x.scaled_sums[r * blocks + b],
            );
            for (lane, acc) in acc.iter_mut().enumerate() {
                let (u, d, m) = panel_block_lane(format, block, lane);
                let dot: i32 = u.iter().zip(q).map(|(&u, &q)| u * i32::from(q)).sum();
                let dot = dot - format.offset() * sum;
                *acc = (dot as f32).mul_add(d * scale, *acc);
                if format.has_min() {
                    *acc = m.mul_add(scaled_sum, *acc);
                }
            }
        }
        out[r * ROWS..(r + 1) * ROWS].copy_from_slice(&acc);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::matmul::tests::{every_isa, run as product};
    use crate::cpu::{CpuKernels, PackedMatrix};
    use candle_core::quantized::{QStorage, QTensor};
    use candle_core::Device;
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// `n * k / 32` GGUF blocks of random integers with scales in [0.002, 0.05) and minimums
    /// in [-0.5, 0.5); `unit` makes every scale 1 and every minimum 0.
    fn random_gguf(format: QuantFormat, n: usize, k: usize, seed: u64, unit: bool) -> Vec<u8> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut data = Vec::new();
        for _ in 0..n * k / BLOCK {
            let d = if unit {
                1.0
            } else {
                rng.random_range(0.002f32..0.05)
            };
            data.extend_from_slice(&f16::from_f32(d).to_le_bytes());
            if format.has_min() {
                let m = if unit {
                    0.0
                } else {
                    rng.random_range(-0.5f32..0.5)
                };
                data.extend_from_slice(&f16::from_f32(m).to_le_bytes());
            }
            let rest = format.gguf_block_bytes() - 2 * if format.has_min() { 2 } else { 1 };
            data.extend((0..rest).map(|_| rng.random::<u8>()));
        }
        data
    }

    fn dequantize_ours(format: QuantFormat, data: &[u8]) -> Vec<f32> {
        data.chunks_exact(format.gguf_block_bytes())
            .flat_map(|block| {
                let (values, d, m) = format.decode_gguf_block(block);
                values.map(|u| format.dequantize(u, d, m))
            })
            .collect()
    }

    fn dequantize_candle(format: QuantFormat, data: &[u8], n: usize, k: usize) -> Vec<f32> {
        let dequantized = QStorage::from_data(
            std::borrow::Cow::Borrowed(data),
            &Device::Cpu,
            format.ggml_dtype(),
        )
        .and_then(|storage| QTensor::new(storage, (n, k)))
        .and_then(|t| t.dequantize(&Device::Cpu))
        .and_then(|t| t.flatten_all()?.to_vec1::<f32>());
        dequantized.unwrap_or_else(|e| panic!("candle: {e}"))
    }

    fn packed(format: QuantFormat, data: &[u8], n: usize, k: usize) -> PackedMatrix {
        PackedMatrix::quantized(format, data, n, k).unwrap_or_else(|e| panic!("{e}"))
    }

    fn activations(len: usize, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..len).map(|_| rng.random_range(-2.0f32..2.0)).collect()
    }

    #[test]
    fn blocks_decode_to_candles_dequantized_values() {
        for format in QuantFormat::ALL {
            let (n, k) = (3, 96);
            let data = random_gguf(format, n, k, 11, false);
            let ours = dequantize_ours(format, &data);
            let candle = dequantize_candle(format, &data, n, k);
            assert_eq!(ours, candle, "{}", format.name());
            // And the panels give the same rows back.
            let w = packed(format, &data, n, k);
            for row in 0..n {
                let mut back = vec![0f32; k];
                w.row(row, &mut back);
                assert_eq!(
                    back,
                    candle[row * k..(row + 1) * k],
                    "{} row {row}",
                    format.name()
                );
            }
        }
    }

    /// With unit scales and activations that are already integers of block maximum 127, the
    /// product is the plain integer sum: every ISA must give it exactly.
    #[test]
    fn integer_block_sums_equal_an_integer_reference() {
        let (n, k, rows) = (19, 160, 5);
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut x: Vec<f32> = (0..rows * k)
            .map(|_| f32::from(rng.random_range(-127i8..=127)))
            .collect();
        for block in x.chunks_exact_mut(BLOCK) {
            block[rng.random_range(0..BLOCK)] = if rng.random() { 127.0 } else { -127.0 };
        }
        for format in QuantFormat::ALL {
            let data = random_gguf(format, n, k, 3, true);
            let expected: Vec<f32> = (0..rows)
                .flat_map(|r| {
                    let x = &x;
                    let data = &data;
                    (0..n).map(move |c| {
                        let mut sum = 0i64;
                        for b in 0..k / BLOCK {
                            let at = (c * k / BLOCK + b) * format.gguf_block_bytes();
                            let (u, _, _) = format.decode_gguf_block(&data[at..]);
                            for (j, u) in u.iter().enumerate() {
                                let u = i64::from(*u - format.offset());
                                sum += u * x[r * k + b * BLOCK + j] as i64;
                            }
                        }
                        sum as f32
                    })
                })
                .collect();
            let w = packed(format, &data, n, k);
            for kernels in every_isa() {
                let got = product(kernels, &x, rows, &w);
                assert_eq!(
                    got,
                    expected,
                    "{} on {}",
                    format.name(),
                    kernels.isa().name()
                );
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Every ISA equals the scalar reference bit for bit; every row equals itself computed
        /// alone, at 1, 2 and 3 threads; and the result is within the bound activation
        /// quantization allows of an f64 product with the dequantized weights.
        #[test]
        fn every_isa_equals_the_reference_and_rows_stand_alone(
            format_index in 0usize..5,
            n in prop::sample::select(vec![1usize, 16, 17, 50]),
            blocks in 1usize..=6,
            rows in 1usize..=11,
            seed in 0u64..1000,
        ) {
            let format = QuantFormat::ALL[format_index];
            let k = blocks * BLOCK;
            let data = random_gguf(format, n, k, seed, false);
            let w = packed(format, &data, n, k);
            let x = activations(rows * k, seed + 1);
            let reference = product(CpuKernels::scalar(), &x, rows, &w);
            for kernels in every_isa() {
                prop_assert_eq!(&product(kernels, &x, rows, &w), &reference, "{}", kernels.isa().name());
            }
            let active = CpuKernels::active();
            for threads in [1, 2, 3] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()
                    .unwrap_or_else(|e| panic!("{e}"));
                for r in 0..rows {
                    let alone = pool.install(|| product(active, &x[r * k..(r + 1) * k], 1, &w));
                    prop_assert_eq!(&alone[..], &reference[r * n..(r + 1) * n], "row {} at {} threads", r, threads);
                }
            }
            // |x - s·q| <= s/2 = amax/254 per element, so |Δy| <= Σ_k |w_k|·amax(block of k)/254.
            let dense = dequantize_candle(format, &data, n, k);
            for r in 0..rows {
                for c in 0..n {
                    let (mut exact, mut bound) = (0f64, 0f64);
                    for b in 0..blocks {
                        let xs = &x[r * k + b * BLOCK..r * k + (b + 1) * BLOCK];
                        let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
                        for (j, &xv) in xs.iter().enumerate() {
                            let wv = dense[c * k + b * BLOCK + j] as f64;
                            exact += wv * xv as f64;
                            bound += wv.abs() * amax / 254.0;
                        }
                    }
                    let got = reference[r * n + c] as f64;
                    prop_assert!((got - exact).abs() <= bound * 1.001 + 1e-4,
                        "{} row {} col {}: {} vs {} (bound {})", format.name(), r, c, got, exact, bound);
                }
            }
        }
    }

    /// Two threads running products on the shared pool at once (two engines): while one waits
    /// for its chunks, rayon may run the other's step on the same thread. Both must finish
    /// with their own results.
    #[test]
    fn concurrent_products_on_one_pool_do_not_share_activations() {
        // 32 panels: enough to split between the threads.
        let (n, k) = (512, 256);
        let w = packed(
            QuantFormat::Q4_1,
            &random_gguf(QuantFormat::Q4_1, n, k, 1, false),
            n,
            k,
        );
        let inputs: Vec<Vec<f32>> = (0..2).map(|i| activations(48 * k, 40 + i)).collect();
        let expected: Vec<Vec<f32>> = inputs
            .iter()
            .map(|x| product(CpuKernels::scalar(), x, 48, &w))
            .collect();
        std::thread::scope(|scope| {
            for (x, expected) in inputs.iter().zip(&expected) {
                let w = &w;
                scope.spawn(move || {
                    for _ in 0..200 {
                        let got = crate::cpu::install(|| product(CpuKernels::active(), x, 48, w));
                        assert_eq!(&got, expected);
                    }
                });
            }
        });
    }

    #[test]
    fn q8_0_extremes_survive_the_sign_trick() {
        // Weights -128 and 127 against activations ±127: the widest products there are.
        let (n, k) = (16, 64);
        let mut data = Vec::new();
        for row in 0..n * k / BLOCK {
            data.extend_from_slice(&f16::from_f32(1.0).to_le_bytes());
            data.extend((0..BLOCK).map(|j| if (j + row) % 2 == 0 { 0x80u8 } else { 0x7F }));
        }
        let x: Vec<f32> = (0..3 * k)
            .map(|i| if i % 3 == 0 { -127.0 } else { 127.0 })
            .collect();
        let w = packed(QuantFormat::Q8_0, &data, n, k);
        let reference = product(CpuKernels::scalar(), &x, 3, &w);
        for kernels in every_isa() {
            assert_eq!(
                product(kernels, &x, 3, &w),
                reference,
                "{}",
                kernels.isa().name()
            );
        }
    }
}
