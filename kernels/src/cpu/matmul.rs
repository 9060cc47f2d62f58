//! The packed, batch-invariant product `y = x W^T (+ bias)`, with fused epilogues.
//!
//! Weights are packed once at load into panels (`packed.rs`), so a thread streams contiguous
//! memory. A call splits the
//! panels between threads; each thread runs the microkernel over its panels for every row tile,
//! writing raw FMA chains into a panel-major scratch (`[panel][row][16]`), applies bias and
//! activation in place, and a last pass writes the row-major output (stored, or added to a
//! residual). See the crate's numerics contract: every row's bits are independent of the row
//! count, the tile shapes, the thread count and the ISA.

use super::arch::{Kernels, TileTable, MAX_ROWS, PANEL_GROUPS};
use super::generic::{Weight, PANEL};
use super::low_rank::add_low_rank;
pub use super::low_rank::{LowRankGroup, LowRankPart};
use super::packed::{Activation, PanelData};
pub use super::packed::{GatedActivation, PackedMatrix, WeightFormat};
use super::quant::QuantizedRows;
use rayon::prelude::*;
use std::cell::RefCell;

/// What the product does with its output buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// `out = x W^T + b`.
    Store,
    /// `out += x W^T + b` (a residual connection folded into the product).
    Accumulate,
}

/// Row tile and panel group the microkernel uses for `rows` rows on these kernels.
/// Performance only: every choice computes the same chains.
pub(super) fn tile_shape(kernels: &Kernels, rows: usize) -> (usize, usize) {
    use super::isa::Isa;
    if rows == 1 {
        return (1, 2); // 1 x 4 panels: enough independent chains to stream the weights
    }
    match kernels.isa {
        Isa::Avx512 => (8, 1), // 8 x 2 panels: 16 zmm accumulators
        Isa::Avx2 => (6, 0),   // 6 x 1 panel: 12 ymm accumulators
        Isa::Scalar => (4, 0),
    }
}

/// Rows per block: a block of `x` stays in L2 while the thread's panels stream past it.
const ROW_BLOCK: usize = 64;
/// Chunks of panels per thread: a thread that starts late (woken from sleep) takes fewer.
const CHUNKS_PER_THREAD: usize = 4;
thread_local! {
    /// The activations of a quantized product, quantized once per call by the calling thread
    /// and read by every thread of the call.
    static QUANTIZED_ROWS: RefCell<QuantizedRows> = RefCell::new(QuantizedRows::default());
}

/// Panels of the widest microkernel call: smaller chunks would cut it.
const MIN_PANELS_PER_CHUNK: usize = 4;
/// Below this many multiply-adds a product runs on the calling thread.
const PARALLEL_MIN_MACS: usize = 1 << 16;

fn run_panels<W: Weight>(
    table: &TileTable<W>,
    shape: (usize, usize),
    x: &[f32],
    rows: usize,
    k: usize,
    panels: &[W],
    scratch: &mut [f32],
) {
    let stride = rows * PANEL;
    let count = scratch.len() / stride;
    let (max_rows, max_group) = shape;
    for r_block in (0..rows).step_by(ROW_BLOCK) {
        let block_end = (r_block + ROW_BLOCK).min(rows);
        let mut p = 0;
        while p < count {
            let group = (0..=max_group)
                .rev()
                .find(|&g| PANEL_GROUPS[g] <= count - p)
                .unwrap_or(0);
            let width = PANEL_GROUPS[group];
            let w = &panels[p * k * PANEL..(p + width) * k * PANEL];
            let mut r = r_block;
            while r < block_end {
                let mr = max_rows.min(block_end - r).min(MAX_ROWS);
                let out = &mut scratch[p * stride + r * PANEL..];
                table[mr - 1][group](&x[r * k..(r + mr) * k], k, w, out, stride);
                r += mr;
            }
            p += width;
        }
    }
}

impl super::CpuKernels {
    /// `out (rows x w.out_features()) = x (rows x k) W^T + bias`, or `+=` with
    /// [`Output::Accumulate`]; gate/up matrices apply SwiGLU. `scratch` is reused between calls
    /// (grown when too small, never shrunk).
    pub fn matmul(
        &self,
        x: &[f32],
        rows: usize,
        w: &PackedMatrix,
        out: &mut [f32],
        output: Output,
        scratch: &mut Vec<f32>,
    ) {
        self.matmul_with_low_rank(x, rows, w, out, output, scratch, &[]);
    }

    /// [`Self::matmul`], with each group's low-rank product (`low_rank.rs`: LoRA adapters)
    /// added to its rows' chains after the bias and before the gate/up activation and the
    /// residual add.
    #[allow(clippy::too_many_arguments)]
    pub fn matmul_with_low_rank(
        &self,
        x: &[f32],
        rows: usize,
        w: &PackedMatrix,
        out: &mut [f32],
        output: Output,
        scratch: &mut Vec<f32>,
        low_rank: &[LowRankGroup<'_>],
    ) {
        self.product(x, rows, w, out, output, scratch, low_rank, true);
    }

    /// [`Self::matmul`] storing its output, all on the calling thread: for products too small
    /// to be worth a parallel region (a LoRA adapter's), many of which run side by side in
    /// one. The same bits as [`Self::matmul`].
    pub fn matmul_on_this_thread(
        &self,
        x: &[f32],
        rows: usize,
        w: &PackedMatrix,
        out: &mut [f32],
        scratch: &mut Vec<f32>,
    ) {
        self.product(x, rows, w, out, Output::Store, scratch, &[], false);
    }

    #[allow(clippy::too_many_arguments)]
    fn product(
        &self,
        x: &[f32],
        rows: usize,
        w: &PackedMatrix,
        out: &mut [f32],
        output: Output,
        scratch: &mut Vec<f32>,
        low_rank: &[LowRankGroup<'_>],
        parallel: bool,
    ) {
        let (k, n) = (w.k, w.n);
        for group in low_rank {
            group.check(rows, w.width());
        }
        assert_eq!(x.len(), rows * k, "x must be rows x k");
        assert_eq!(out.len(), rows * n, "out must be rows x n");
        if rows == 0 {
            return;
        }
        let panels = w.panels();
        let stride = rows * PANEL;
        let needed = panels * stride;
        if scratch.len() < needed {
            scratch.resize(needed, 0.0);
        }
        let scratch = &mut scratch[..needed];
        let threads = rayon::current_num_threads();
        let chunks = if !parallel || rows * panels * PANEL * k < PARALLEL_MIN_MACS {
            1
        } else {
            threads * CHUNKS_PER_THREAD
        };
        // Even panel counts per chunk keep gate/up pairs together (their panel count is even).
        let per_chunk = panels
            .div_ceil(chunks)
            .max(MIN_PANELS_PER_CHUNK)
            .next_multiple_of(2)
            .min(panels.max(1));
        let kernels = self.kernels;
        let shape = tile_shape(kernels, rows);
        // Taken out of the thread-local for the call: while this thread waits for the other
        // chunks, rayon may run another product on it (another engine's step), which then
        // finds an empty buffer instead of a borrowed one.
        let quantized = match &w.data {
            PanelData::Quantized(_) => {
                let mut quantized = QUANTIZED_ROWS.take();
                quantized.quantize(x, rows, k);
                Some(quantized)
            }
            _ => None,
        };
        let work = |(chunk_index, chunk): (usize, &mut [f32])| {
            let first = chunk_index * per_chunk;
            let count = chunk.len() / stride;
            let range = first * k * PANEL..(first + count) * k * PANEL;
            match (&w.data, &quantized) {
                (PanelData::F32(d), _) => {
                    run_panels(&kernels.tile_f32, shape, x, rows, k, &d[range], chunk)
                }
                (PanelData::Bf16(d), _) => {
                    run_panels(&kernels.tile_bf16, shape, x, rows, k, &d[range], chunk)
                }
                // `quantized` is `Some` exactly when the weights are quantized (see above).
                (PanelData::Quantized(q), quantized) => {
                    if let Some(quantized) = quantized {
                        let x = quantized.rows(0, rows, k);
                        for (p, out) in chunk.chunks_exact_mut(stride).enumerate() {
                            let (format, panel) = q.panel(first + p);
                            (kernels.quant_tile)(format, x, q.blocks, panel, out);
                        }
                    }
                }
            }
            epilogue_in_place(kernels, w, first, chunk, stride, low_rank);
        };
        if chunks == 1 || per_chunk >= panels {
            work((0, scratch));
        } else {
            scratch
                .par_chunks_mut(per_chunk * stride)
                .enumerate()
                .for_each(work);
        }
        if let Some(quantized) = quantized {
            QUANTIZED_ROWS.set(quantized);
        }
        write_rows(w, scratch, rows, out, output, parallel);
    }
}

/// Bias and activation on a thread's panels, still in panel-major order.
fn epilogue_in_place(
    kernels: &Kernels,
    w: &PackedMatrix,
    first_panel: usize,
    chunk: &mut [f32],
    stride: usize,
    low_rank: &[LowRankGroup<'_>],
) {
    if let Some(bias) = &w.bias {
        for (p, panel) in chunk.chunks_exact_mut(stride).enumerate() {
            let col0 = (first_panel + p) * PANEL;
            let width = PANEL.min(w.n - col0);
            for row in panel.chunks_exact_mut(PANEL) {
                for (v, b) in row[..width].iter_mut().zip(&bias[col0..col0 + width]) {
                    *v += b;
                }
            }
        }
    }
    if !low_rank.is_empty() {
        add_low_rank(kernels, w, first_panel, chunk, stride, low_rank);
    }
    if w.activation.is_gated() {
        for pair in chunk.chunks_exact_mut(2 * stride) {
            let (gate, up) = pair.split_at_mut(stride);
            match w.activation {
                Activation::GeGluTanh => super::generic::gelu_tanh_mul(gate, up),
                _ => (kernels.silu_mul)(gate, up),
            }
        }
    }
}

/// Panel-major scratch to row-major `out`.
fn write_rows(
    w: &PackedMatrix,
    scratch: &[f32],
    rows: usize,
    out: &mut [f32],
    output: Output,
    parallel: bool,
) {
    let stride = rows * PANEL;
    let n = w.n;
    // Output panel j lives at stored panel j (plain) or 2j (gate/up: the gate's slot).
    let step = match w.activation {
        Activation::None => 1,
        Activation::SwiGlu | Activation::GeGluTanh => 2,
    };
    let write_row = |(r, dst): (usize, &mut [f32])| {
        for (j, cols) in dst.chunks_mut(PANEL).enumerate() {
            let src = &scratch[j * step * stride + r * PANEL..][..cols.len()];
            match output {
                Output::Store => cols.copy_from_slice(src),
                Output::Accumulate => {
                    for (d, s) in cols.iter_mut().zip(src) {
                        *d += s;
                    }
                }
            }
        }
    };
    if parallel && rows * n >= 1 << 16 && rows > 1 {
        out.par_chunks_mut(n).enumerate().for_each(write_row);
    } else {
        out.chunks_mut(n).enumerate().for_each(write_row);
    }
}

#[cfg(test)]
pub(crate) mod tests {
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
                let expected = 0.5
                    * g
                    * (1.0 + (c * (g + 0.044715 * g * g * g)).tanh())
                    * f64::from(up_chains[i]);
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
                            acc =
                                lows[i][member * rank + kk].mul_add(b_exact[i][o * rank + kk], acc);
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
}
