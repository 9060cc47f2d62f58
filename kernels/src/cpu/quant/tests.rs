//! Tests of the quantized product: every format against candle's dequantization and an
//! integer reference, every ISA against the scalar reference, rows alone against rows batched.

use super::*;
use crate::cpu::matmul::tests::{every_isa, run as product};
use crate::cpu::{CpuKernels, PackedMatrix};
use candle_core::quantized::{QStorage, QTensor};
use candle_core::Device;
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// `n * k / values` GGUF blocks of random integers with scales in [0.002, 0.05) and
/// minimums in [-0.5, 0.5) (the K formats: super-block scales a 40th of that, random 6-bit
/// or 8-bit sub-scales); `unit` makes every scale 1 and every minimum 0 (Q6_K: sub-scales
/// in -3..=3, so integer sums stay exact in f32).
fn random_gguf(format: QuantFormat, n: usize, k: usize, seed: u64, unit: bool) -> Vec<u8> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut data = Vec::new();
    let half = |v: f32| f16::from_f32(v).to_le_bytes();
    for _ in 0..n * k / format.gguf_block_values() {
        let mut block: Vec<u8> = (0..format.gguf_block_bytes())
            .map(|_| rng.random())
            .collect();
        let (d, m) = if unit {
            (1.0, 0.0)
        } else if format.gguf_block_values() == 256 {
            (
                rng.random_range(0.00005f32..0.00125),
                rng.random_range(0f32..0.0125),
            )
        } else {
            (
                rng.random_range(0.002f32..0.05),
                rng.random_range(-0.5f32..0.5),
            )
        };
        match format {
            QuantFormat::Q4K | QuantFormat::Q5K => {
                block[0..2].copy_from_slice(&half(d));
                block[2..4].copy_from_slice(&half(m));
                if unit {
                    // Every 6-bit scale 1, every minimum 0.
                    block[4..16].copy_from_slice(&[1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1]);
                }
            }
            QuantFormat::Q6K => {
                block[208..210].copy_from_slice(&half(d));
                if unit {
                    for s in &mut block[192..208] {
                        *s = rng.random_range(-3i8..=3) as u8;
                    }
                }
            }
            _ => {
                block[0..2].copy_from_slice(&half(d));
                if format.has_min() {
                    block[2..4].copy_from_slice(&half(m));
                }
            }
        }
        data.extend_from_slice(&block);
    }
    data
}

/// A `k` of `blocks` blocks of 32, rounded up to the format's GGUF block.
fn k_of(format: QuantFormat, blocks: usize) -> usize {
    (blocks * BLOCK).next_multiple_of(format.gguf_block_values())
}

/// Every ISA's product of `rows` rows of `x` with `w` is bitwise `expected`.
fn assert_every_isa_gives(expected: &[f32], x: &[f32], rows: usize, w: &PackedMatrix) {
    for kernels in every_isa() {
        assert_eq!(
            product(kernels, x, rows, w),
            expected,
            "{}",
            kernels.isa().name()
        );
    }
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
        let (n, k) = (3, k_of(format, 3));
        let data = random_gguf(format, n, k, 11, false);
        let ours = format.dequantize_gguf(&data);
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
    let (n, rows) = (19, 5);
    for format in QuantFormat::ALL {
        let k = k_of(format, 5);
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut x: Vec<f32> = (0..rows * k)
            .map(|_| f32::from(rng.random_range(-127i8..=127)))
            .collect();
        for block in x.chunks_exact_mut(BLOCK) {
            block[rng.random_range(0..BLOCK)] = if rng.random() { 127.0 } else { -127.0 };
        }
        let data = random_gguf(format, n, k, 3, true);
        let expected: Vec<f32> = (0..rows)
            .flat_map(|r| {
                let x = &x;
                let data = &data;
                (0..n).map(move |c| {
                    let mut sum = 0i64;
                    let values = format.gguf_block_values();
                    for b in 0..k / BLOCK {
                        let g = (c * k + b * BLOCK) / values;
                        let gguf = &data[g * format.gguf_block_bytes()..];
                        let block = format.decode_gguf_block(gguf, b % (values / BLOCK));
                        for (j, u) in block.values.iter().enumerate() {
                            let u = i64::from(block.sub[j / 16] * (*u - format.offset()));
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
        format_index in 0usize..8,
        n in prop::sample::select(vec![1usize, 16, 17, 50]),
        blocks in 1usize..=6,
        rows in 1usize..=11,
        seed in 0u64..1000,
    ) {
        let format = QuantFormat::ALL[format_index];
        let k = k_of(format, blocks);
        let blocks = k / BLOCK;
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
fn q6_k_extremes_stay_exact() {
    // Values 0 and 63 (−32 and +31) under sub-scales −128 and 127 against activations
    // ±127: the widest half sums there are (|Σ| < 2^24, so the f32 conversion is exact).
    let (n, k) = (16, 512);
    let mut data = Vec::new();
    for block in 0..n * k / 256 {
        let mut bytes = vec![0u8; 210];
        for (i, b) in bytes[..192].iter_mut().enumerate() {
            *b = if (i + block) % 3 == 0 { 0xFF } else { 0x00 };
        }
        for (i, s) in bytes[192..208].iter_mut().enumerate() {
            *s = if i % 2 == 0 { 0x80 } else { 0x7F };
        }
        bytes[208..210].copy_from_slice(&f16::from_f32(1.0).to_le_bytes());
        data.extend_from_slice(&bytes);
    }
    let x: Vec<f32> = (0..3 * k)
        .map(|i| if i % 5 == 0 { -127.0 } else { 127.0 })
        .collect();
    let w = packed(QuantFormat::Q6K, &data, n, k);
    let reference = product(CpuKernels::scalar(), &x, 3, &w);
    let dense = QuantFormat::Q6K.dequantize_gguf(&data);
    for (r, row) in reference.chunks_exact(n).enumerate() {
        for (c, got) in row.iter().enumerate() {
            let exact: f64 = (0..k)
                .map(|j| f64::from(dense[c * k + j]) * f64::from(x[r * k + j]))
                .sum();
            assert_eq!(f64::from(*got), exact, "row {r} col {c}");
        }
    }
    assert_every_isa_gives(&reference, &x, 3, &w);
}

/// A Q4_K_M file stacks Q and K in Q4_K with V in Q6_K: one matrix, each panel in its own
/// format, gives each part's rows exactly as the part alone does.
#[test]
fn stacked_parts_in_different_formats_equal_each_part_alone() {
    let k = 512;
    let formats = [QuantFormat::Q4K, QuantFormat::Q6K, QuantFormat::Q8_0];
    let rows_of = [32, 16, 5];
    let parts: Vec<Vec<u8>> = formats
        .iter()
        .zip(rows_of)
        .enumerate()
        .map(|(i, (&f, n))| random_gguf(f, n, k, 70 + i as u64, false))
        .collect();
    let gguf_parts: Vec<GgufPart> = formats
        .iter()
        .zip(&parts)
        .map(|(&format, data)| GgufPart { format, data })
        .collect();
    let n: usize = rows_of.iter().sum();
    let stacked =
        PackedMatrix::quantized_parts(&gguf_parts, n, k).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(stacked.format_names(), ["q4_k", "q6_k", "q8_0"]);
    let x = activations(3 * k, 9);
    for kernels in every_isa() {
        let whole = product(kernels, &x, 3, &stacked);
        let mut first = 0;
        for ((&format, data), rows) in formats.iter().zip(&parts).zip(rows_of) {
            let alone = product(kernels, &x, 3, &packed(format, data, rows, k));
            for r in 0..3 {
                assert_eq!(
                    &whole[r * n + first..r * n + first + rows],
                    &alone[r * rows..(r + 1) * rows],
                    "{} on {}",
                    format.name(),
                    kernels.isa().name()
                );
            }
            first += rows;
        }
    }
    // A part that would leave a panel half filled before the next one is refused.
    let misaligned = [gguf_parts[2], gguf_parts[0]];
    assert!(PackedMatrix::quantized_parts(&misaligned, 37, k).is_err());
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
    assert_every_isa_gives(&reference, &x, 3, &w);
}

/// Panels stream what the file holds: every format as many bytes as its GGUF blocks, but
/// Q4_K/Q5_K, whose 6-bit scales and minimums take a byte each (an eighth of a bit more a
/// weight than the file's 12 packed bytes per 256 values).
#[test]
fn panels_take_the_bytes_of_the_file() {
    let (n, k) = (48, 512);
    for format in QuantFormat::ALL {
        let data = random_gguf(format, n, k, 9, false);
        let panels = QuantPanels::from_gguf(format, &data, n, k).unwrap_or_else(|e| panic!("{e}"));
        let extra = if format.split_scales() { n * k / 64 } else { 0 };
        assert_eq!(panels.bytes.len(), data.len() + extra, "{}", format.name());
        assert_eq!(
            panels.bytes.capacity(),
            panels.bytes.len(),
            "{}",
            format.name()
        );
    }
}
