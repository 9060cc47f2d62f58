//! The packed product against the plain FMA chain on every ISA, its rows' independence of
//! batch mates and threads, and its epilogues.

use super::*;
use crate::cpu::generic::exp;
use crate::cpu::generic::Bf16;
use crate::cpu::{CpuKernels, Isa};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};

fn random(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// The contract written as the plainest loop: one FMA chain per element from +0.0.
fn reference(x: &[f32], rows: usize, w: &[f32], n: usize, k: usize) -> Vec<f32> {
    let mut y = vec![0f32; rows * n];
    for r in 0..rows {
        for c in 0..n {
            let mut acc = 0f32;
            for kk in 0..k {
                acc = x[r * k + kk].mul_add(w[c * k + kk], acc);
            }
            y[r * n + c] = acc;
        }
    }
    y
}

/// `x W^T` on `kernels`, into a fresh buffer.
pub(crate) fn run(kernels: CpuKernels, x: &[f32], rows: usize, w: &PackedMatrix) -> Vec<f32> {
    let mut out = vec![f32::NAN; rows * w.out_features()];
    kernels.matmul(x, rows, w, &mut out, Output::Store, &mut Vec::new());
    out
}

fn pool(threads: usize) -> rayon::ThreadPool {
    match rayon::ThreadPoolBuilder::new().num_threads(threads).build() {
        Ok(pool) => pool,
        Err(e) => panic!("thread pool: {e}"),
    }
}

/// The kernels of every ISA this CPU has; the others are reported SKIPPED.
pub(crate) fn every_isa() -> Vec<CpuKernels> {
    for isa in Isa::ALL {
        if !isa.is_supported() {
            eprintln!(
                "SKIPPED: {} kernels (this CPU lacks {})",
                isa.name(),
                isa.name()
            );
        }
    }
    Isa::supported()
        .into_iter()
        .filter_map(CpuKernels::for_isa)
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    /// Every ISA, every tile path, equals the plain FMA chain bit for bit over odd shapes.
    #[test]
    fn every_isa_equals_the_reference_chain(
        k in prop::sample::select(vec![1usize, 3, 17, 576, 1537]),
        n in prop::sample::select(vec![1usize, 5, 33, 191, 960]),
        rows in 1usize..=70,
        seed in 0u64..1000,
    ) {
        let x = random(rows * k, seed);
        let w = random(n * k, seed + 1);
        let expected = reference(&x, rows, &w, n, k);
        let packed = PackedMatrix::pack(&w, n, k, WeightFormat::F32);
        for kernels in every_isa() {
            let got = pool(2).install(|| run(kernels, &x, rows, &packed));
            prop_assert!(
                got.iter().map(|v| v.to_bits()).eq(expected.iter().map(|v| v.to_bits())),
                "{:?} k {k} n {n} rows {rows}", kernels.isa()
            );
        }
    }

    /// Each row of an M-row call equals that row computed alone, at 1, 2 and 3 threads
    /// and on the calling thread alone.
    #[test]
    fn rows_do_not_depend_on_batch_mates_or_threads(
        k in prop::sample::select(vec![17usize, 576, 1537]),
        n in prop::sample::select(vec![33usize, 191, 960]),
        rows in 2usize..=70,
        seed in 0u64..1000,
    ) {
        let x = random(rows * k, seed);
        let packed = PackedMatrix::pack(&random(n * k, seed + 1), n, k, WeightFormat::F32);
        let kernels = CpuKernels::active();
        let alone: Vec<f32> = (0..rows)
            .flat_map(|r| pool(1).install(|| run(kernels, &x[r * k..(r + 1) * k], 1, &packed)))
            .collect();
        for threads in 1..=3 {
            let batched = pool(threads).install(|| run(kernels, &x, rows, &packed));
            prop_assert!(
                batched.iter().map(|v| v.to_bits()).eq(alone.iter().map(|v| v.to_bits())),
                "threads {threads} k {k} n {n} rows {rows}"
            );
        }
        // On the calling thread only: the same bits.
        let mut serial = vec![f32::NAN; rows * n];
        kernels.matmul_on_this_thread(&x, rows, &packed, &mut serial, &mut Vec::new());
        prop_assert!(
            serial.iter().map(|v| v.to_bits()).eq(alone.iter().map(|v| v.to_bits())),
            "on this thread: k {k} n {n} rows {rows}"
        );
    }
}

#[test]
fn bf16_weights_equal_f32_weights_holding_the_same_values() {
    let (rows, n, k) = (9, 70, 96);
    let x = random(rows * k, 3);
    let w: Vec<f32> = random(n * k, 4)
        .into_iter()
        .map(|v| Bf16::from_f32(v).to_f32())
        .collect();
    let as_f32 = PackedMatrix::pack(&w, n, k, WeightFormat::F32);
    let as_bf16 = PackedMatrix::pack(&w, n, k, WeightFormat::Bf16);
    assert_eq!(as_bf16.weight_bytes() * 2, as_f32.weight_bytes());
    for kernels in every_isa() {
        assert_eq!(
            run(kernels, &x, rows, &as_f32),
            run(kernels, &x, rows, &as_bf16)
        );
    }
}

#[test]
fn bf16_rounding_is_to_nearest_even() {
    assert_eq!(Bf16::from_f32(1.0).0, 0x3f80);
    // 1 + 2^-8 is halfway between two bf16 values: ties go to the even one (1.0).
    assert_eq!(Bf16::from_f32(1.0 + 1.0 / 256.0).0, 0x3f80);
    assert_eq!(Bf16::from_f32(1.0 + 3.0 / 256.0).0, 0x3f82);
    assert!(Bf16::from_f32(f32::NAN).to_f32().is_nan());
}

/// Bias after the chain, then the residual: `out = residual + (chain + bias)`; gate/up
/// apply `silu(gate) * up` to the two chains (with the gate's bias-free chains).
#[test]
fn epilogues_apply_after_the_chain() {
    let (rows, n, k) = (5, 37, 40);
    let x = random(rows * k, 5);
    let w = random(n * k, 6);
    let bias = random(n, 7);
    let residual = random(rows * n, 8);
    let chains = reference(&x, rows, &w, n, k);
    let packed = PackedMatrix::pack(&w, n, k, WeightFormat::F32).with_bias(bias.clone());
    let up_w = random(n * k, 9);
    let up_chains = reference(&x, rows, &up_w, n, k);
    let gate_up = PackedMatrix::gate_up(
        PackedMatrix::pack(&w, n, k, WeightFormat::F32),
        PackedMatrix::pack(&up_w, n, k, WeightFormat::F32),
    );
    let gelu_up = PackedMatrix::gated(
        PackedMatrix::pack(&w, n, k, WeightFormat::F32),
        PackedMatrix::pack(&up_w, n, k, WeightFormat::F32),
        GatedActivation::GeluTanh,
    );
    for kernels in every_isa() {
        let mut out = residual.clone();
        kernels.matmul(
            &x,
            rows,
            &packed,
            &mut out,
            Output::Accumulate,
            &mut Vec::new(),
        );
        for i in 0..rows * n {
            assert_eq!(out[i], residual[i] + (chains[i] + bias[i % n]));
        }
        let swiglu = run(kernels, &x, rows, &gate_up);
        for i in 0..rows * n {
            let g = chains[i];
            assert_eq!(
                swiglu[i],
                g / (1.0 + exp(-g)) * up_chains[i],
                "{:?}",
                kernels.isa()
            );
        }
        // GELU (tanh approximation), against its formula in f64.
        let geglu = run(kernels, &x, rows, &gelu_up);
        for i in 0..rows * n {
            let g = f64::from(chains[i]);
            let c = (2.0 / std::f64::consts::PI).sqrt();
            let expected =
                0.5 * g * (1.0 + (c * (g + 0.044715 * g * g * g)).tanh()) * f64::from(up_chains[i]);
            assert!(
                (f64::from(geglu[i]) - expected).abs() < 1e-5 * (1.0 + expected.abs()),
                "{:?}: {} vs {expected}",
                kernels.isa(),
                geglu[i]
            );
        }
    }
}

/// Low-rank products join their rows' chains after the bias and before the residual
/// add and the gate/up activation, bit for bit `chain + bias + scaling · (low B^T)` with
/// `low B^T` one FMA chain; rows without one keep the plain product's bits. Panels split
/// between threads (n and k large enough to run in parallel) find their columns, in f32
/// and bf16, whether a part lines up with the output panels or starts inside one.
#[test]
fn low_rank_products_apply_between_bias_and_epilogue() {
    let (rows, n, k, rank) = (11, 300, 256, 5);
    let x = random(rows * k, 11);
    let (w, up_w) = (random(n * k, 12), random(n * k, 13));
    let bias = random(n, 14);
    let residual = random(rows * n, 15);
    let (chains, up_chains) = (
        reference(&x, rows, &w, n, k),
        reference(&x, rows, &up_w, n, k),
    );
    let biased = PackedMatrix::pack(&w, n, k, WeightFormat::F32).with_bias(bias.clone());
    let gate_up = PackedMatrix::gate_up(
        PackedMatrix::pack(&w, n, k, WeightFormat::F32),
        PackedMatrix::pack(&up_w, n, k, WeightFormat::F32),
    );
    let members = [0usize, 3, 4, 5, 6, 7, 8, 9, 10];
    // Parts: columns 0..96 (lines up), 96..203 (starts inside a panel? no: 96 = 6 x 16;
    // ends inside one) and, for the gate/up pair, the up half from n.
    let b_values: Vec<Vec<f32>> = (0..3).map(|i| random(300 * rank, 20 + i)).collect();
    let lows: Vec<Vec<f32>> = (0..3)
        .map(|i| random(members.len() * rank, 30 + i))
        .collect();
    for format in [WeightFormat::F32, WeightFormat::Bf16] {
        // bf16 B: the reference reads the values the packed matrix holds.
        let b_exact: Vec<Vec<f32>> = b_values
            .iter()
            .map(|b| match format {
                WeightFormat::Bf16 => b.iter().map(|&v| Bf16::from_f32(v).to_f32()).collect(),
                _ => b.clone(),
            })
            .collect();
        let spans = [(0usize, 96usize), (96, 107), (n + 5, 250)];
        let packed_b: Vec<PackedMatrix> = spans
            .iter()
            .zip(&b_exact)
            .map(|(&(_, len), b)| PackedMatrix::pack(&b[..len * rank], len, rank, format))
            .collect();
        let scaling = 0.75f32;
        // The expected addend at (row, full-width column).
        let addend = |member: usize, column: usize, parts: &[usize]| -> f32 {
            for &i in parts {
                let (start, len) = spans[i];
                if (start..start + len).contains(&column) {
                    let o = column - start;
                    let mut acc = 0f32;
                    for kk in 0..rank {
                        acc = lows[i][member * rank + kk].mul_add(b_exact[i][o * rank + kk], acc);
                    }
                    return scaling * acc;
                }
            }
            0.0
        };
        let group = |parts: &[usize]| LowRankGroup {
            rows: &members,
            scaling,
            parts: parts
                .iter()
                .map(|&i| LowRankPart {
                    column: spans[i].0,
                    b: &packed_b[i],
                    low: &lows[i],
                })
                .collect(),
        };
        for kernels in every_isa() {
            let mut out = residual.clone();
            let plain = [group(&[0, 1])];
            pool(2).install(|| {
                kernels.matmul_with_low_rank(
                    &x,
                    rows,
                    &biased,
                    &mut out,
                    Output::Accumulate,
                    &mut Vec::new(),
                    &plain,
                )
            });
            for i in 0..rows * n {
                let (r, c) = (i / n, i % n);
                let chain = chains[i] + bias[c];
                let expected = match members.iter().position(|&m| m == r) {
                    Some(m) if addend(m, c, &[0, 1]) != 0.0 => {
                        residual[i] + (chain + addend(m, c, &[0, 1]))
                    }
                    _ => residual[i] + chain,
                };
                assert_eq!(
                    out[i].to_bits(),
                    expected.to_bits(),
                    "{format:?} row {r} col {c}"
                );
            }
            let gated = [group(&[0, 2])];
            let mut swiglu = vec![f32::NAN; rows * n];
            pool(2).install(|| {
                kernels.matmul_with_low_rank(
                    &x,
                    rows,
                    &gate_up,
                    &mut swiglu,
                    Output::Store,
                    &mut Vec::new(),
                    &gated,
                )
            });
            for i in 0..rows * n {
                let (r, c) = (i / n, i % n);
                let (mut g, mut u) = (chains[i], up_chains[i]);
                if let Some(m) = members.iter().position(|&m| m == r) {
                    if c < 96 {
                        g += addend(m, c, &[0]);
                    }
                    if (5..255).contains(&c) {
                        u += addend(m, n + c, &[2]);
                    }
                }
                let expected = g / (1.0 + exp(-g)) * u;
                assert_eq!(
                    swiglu[i].to_bits(),
                    expected.to_bits(),
                    "{format:?} {:?} row {r} col {c}",
                    kernels.isa()
                );
            }
        }
    }
}

#[test]
fn rows_of_the_packed_matrix_read_back() {
    let (n, k) = (21, 13);
    let w = random(n * k, 10);
    let packed = PackedMatrix::pack(&w, n, k, WeightFormat::F32);
    let mut row = vec![0f32; k];
    for i in 0..n {
        packed.row(i, &mut row);
        assert_eq!(row, w[i * k..(i + 1) * k]);
    }
}

#[test]
fn exp_is_accurate_over_the_softmax_range() {
    let mut worst = 0f64;
    for i in 0..=200_000 {
        let x = -87.0 + 175.0 * i as f32 / 200_000.0;
        let want = f64::from(x).exp();
        let rel = ((f64::from(exp(x)) - want) / want).abs();
        worst = worst.max(rel);
    }
    assert!(worst < 4e-7, "worst relative error {worst}");
    assert!(exp(-1000.0) < 1e-37 && exp(-1000.0) >= 0.0);
}

/// Every ISA's vectorised `exp_and_sum` writes the bits of the scalar `exp`, element by
/// element, and the sum in the fixed lane order: softmax is the same on every CPU.
#[test]
fn exp_and_sum_is_the_scalar_exp_on_every_isa() {
    let scores: Vec<f32> = random(1003, 9).iter().map(|v| v * 120.0).collect();
    let max = scores.iter().copied().fold(f32::MIN, f32::max);
    let want: Vec<u32> = scores.iter().map(|&s| exp(s - max).to_bits()).collect();
    let mut sums = Vec::new();
    for isa in Isa::ALL {
        let Some(kernels) = CpuKernels::for_isa(isa) else {
            continue;
        };
        let mut got = scores.clone();
        let sum = (kernels.kernels.exp_and_sum)(&mut got, max);
        let got: Vec<u32> = got.iter().map(|v| v.to_bits()).collect();
        assert_eq!(got, want, "{isa:?}");
        sums.push(sum.to_bits());
    }
    assert!(sums.windows(2).all(|w| w[0] == w[1]), "{sums:?}");
}
