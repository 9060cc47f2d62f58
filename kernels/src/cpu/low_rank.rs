//! Low-rank addends computed inside a product's epilogue: a LoRA adapter's
//! `scaling · B (A x)` for the rows that run under it. The caller computes `A x` (`low`, a few
//! values per row); each thread, on the output panels it owns, multiplies those rows by the
//! panels of `B` covering them and adds the result to the rows' chains, after the bias and
//! before the activation and the residual add. No pass over a delta of the product's full
//! width, and the work is split between threads with the product's own panels.
//!
//! `B (A x)` of an element is one FMA chain over the rank from +0.0 (the numerics contract),
//! whichever path computes it, so a row's bits do not depend on its batch mates.

use super::arch::{Kernels, MAX_ROWS};
use super::generic::{Weight, PANEL};
use super::packed::{PackedMatrix, PanelData};

/// One projection of a group's adapter: where its columns start in the product's output (a
/// gate/up product's up columns start at `n`), its `B` (`(out, rank)`, dense) and the group's
/// `A x` rows for it (`rows.len() x rank`, row-major, in the order of the group's rows).
#[derive(Debug, Clone, Copy)]
pub struct LowRankPart<'a> {
    pub column: usize,
    pub b: &'a PackedMatrix,
    pub low: &'a [f32],
}

/// Rows of the batch under one adapter (row indices), its scaling and its projections.
#[derive(Debug, Clone)]
pub struct LowRankGroup<'a> {
    pub rows: &'a [usize],
    pub scaling: f32,
    pub parts: Vec<LowRankPart<'a>>,
}

impl LowRankGroup<'_> {
    /// Panics on a part that cannot be added to a product of `rows` rows into `width`
    /// columns (a bug of the caller, not of a request).
    pub(super) fn check(&self, rows: usize, width: usize) {
        assert!(
            self.rows.iter().all(|&r| r < rows),
            "a low-rank row outside the batch"
        );
        for part in &self.parts {
            assert!(
                matches!(part.b.data, PanelData::F32(_) | PanelData::Bf16(_)),
                "a low-rank B is dense"
            );
            assert!(
                part.column + part.b.n <= width,
                "a low-rank part past the product's width"
            );
            assert_eq!(
                part.low.len(),
                self.rows.len() * part.b.k,
                "low must be rows x rank"
            );
        }
    }
}

/// Adds every group's low-rank product to a thread's panels (panel-major, `stride` floats
/// per stored panel). Stored panel `s` is output panel `s` of a plain matrix; of a gate/up
/// pair, gate panel `s / 2` or up panel `s / 2`, whose columns sit `n` further along.
pub(super) fn add_low_rank(
    kernels: &Kernels,
    w: &PackedMatrix,
    first_panel: usize,
    chunk: &mut [f32],
    stride: usize,
    groups: &[LowRankGroup<'_>],
) {
    let mut tile = [0f32; MAX_ROWS * PANEL];
    for (p, panel) in chunk.chunks_exact_mut(stride).enumerate() {
        let stored = first_panel + p;
        let (index, offset) = if w.activation.is_gated() {
            (stored / 2, (stored % 2) * w.n)
        } else {
            (stored, 0)
        };
        let cols = PANEL.min(w.n - index * PANEL);
        let first = offset + index * PANEL;
        for group in groups {
            for part in &group.parts {
                let end = part.column + part.b.n;
                if first + cols <= part.column || first >= end {
                    continue;
                }
                let whole = first >= part.column
                    && first + cols <= end
                    && (first - part.column).is_multiple_of(PANEL);
                if whole {
                    let b_panel = (first - part.column) / PANEL;
                    add_whole_panel(kernels, group, part, b_panel, panel, cols, &mut tile);
                } else {
                    add_columns(group, part, first, cols, panel);
                }
            }
        }
    }
}

/// A panel of `B` lines up with the output panel: the microkernel, a row tile at a time.
fn add_whole_panel(
    kernels: &Kernels,
    group: &LowRankGroup<'_>,
    part: &LowRankPart<'_>,
    b_panel: usize,
    panel: &mut [f32],
    cols: usize,
    tile: &mut [f32; MAX_ROWS * PANEL],
) {
    let rank = part.b.k;
    let weights = b_panel * rank * PANEL..(b_panel + 1) * rank * PANEL;
    for first in (0..group.rows.len()).step_by(MAX_ROWS) {
        let rows = &group.rows[first..group.rows.len().min(first + MAX_ROWS)];
        let low = &part.low[first * rank..(first + rows.len()) * rank];
        let out = &mut tile[..rows.len() * PANEL];
        match &part.b.data {
            PanelData::F32(d) => {
                (kernels.tile_f32[rows.len() - 1][0])(low, rank, &d[weights.clone()], out, PANEL)
            }
            PanelData::Bf16(d) => {
                (kernels.tile_bf16[rows.len() - 1][0])(low, rank, &d[weights.clone()], out, PANEL)
            }
            PanelData::Quantized(_) => return, // refused by `LowRankGroup::check`
        }
        for (i, &row) in rows.iter().enumerate() {
            let target = &mut panel[row * PANEL..][..cols];
            for (v, &t) in target.iter_mut().zip(&out[i * PANEL..][..cols]) {
                *v += group.scaling * t;
            }
        }
    }
}

/// A part that starts or ends inside the output panel: its columns one by one, the same FMA
/// chain the microkernel computes.
fn add_columns(
    group: &LowRankGroup<'_>,
    part: &LowRankPart<'_>,
    first: usize,
    cols: usize,
    panel: &mut [f32],
) {
    let rank = part.b.k;
    for c in 0..cols {
        let column = first + c;
        if column < part.column || column >= part.column + part.b.n {
            continue;
        }
        let o = column - part.column;
        for (i, &row) in group.rows.iter().enumerate() {
            let low = &part.low[i * rank..(i + 1) * rank];
            let mut acc = 0f32;
            for (kk, &l) in low.iter().enumerate() {
                acc = l.mul_add(b_at(part.b, o, kk), acc);
            }
            panel[row * PANEL + c] += group.scaling * acc;
        }
    }
}

/// `B[o][kk]` of a dense packed matrix (`[panel][k][PANEL]`).
fn b_at(b: &PackedMatrix, o: usize, kk: usize) -> f32 {
    let at = (o / PANEL) * b.k * PANEL + kk * PANEL + o % PANEL;
    match &b.data {
        PanelData::F32(d) => d[at],
        PanelData::Bf16(d) => d[at].to_f32(),
        PanelData::Quantized(_) => 0.0,
    }
}
