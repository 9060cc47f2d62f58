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
pub(crate) mod tests;
