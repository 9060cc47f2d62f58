//! The kernels of `generic.rs` compiled once per ISA, gathered in one table of function
//! pointers per ISA. This module and its children are the only place with `unsafe`: calling a
//! `#[target_feature]` function, which is sound only on a CPU that has the feature, and each
//! ISA's table is built only after run-time detection said it does.

use super::generic::{self as g, Bf16, Weight};
use super::isa::Isa;
use super::quant::{QuantFormat, QuantRows};
use std::sync::OnceLock;

#[cfg(target_arch = "x86_64")]
mod x86;

/// `tile::<W, MR, P>` (see [`g::tile`]).
pub type TileFn<W> = fn(&[f32], usize, &[W], &mut [f32], usize);
/// The largest row tile of the matmul microkernel.
pub const MAX_ROWS: usize = 8;
/// Panel counts of the microkernel, in the order of a [`TileTable`] row.
pub const PANEL_GROUPS: [usize; 3] = [1, 2, 4];
/// `table[rows - 1][i]` multiplies `rows` rows by `PANEL_GROUPS[i]` panels.
pub type TileTable<W> = [[TileFn<W>; 3]; MAX_ROWS];

/// `scores::<G, KEYS>` (see [`g::scores`]).
pub type ScoresFn = fn(&[f32], usize, &[f32], f32, &mut [f32], usize);
/// `accumulate::<G>` (see [`g::accumulate`]).
pub type AccumulateFn = fn(&[f32], usize, usize, &[f32], &mut [f32]);
/// Most query heads per KV head one attention kernel call handles; larger groups are split.
pub const MAX_GROUP: usize = 8;

/// Attention kernel tables from generic `scores::<G, KEYS>` / `accumulate::<G>` in scope.
/// Keys per iteration keep about 8-12 dot products in flight whatever the group.
macro_rules! attention_tables {
    ($scores:ident, $accumulate:ident) => {
        (
            [
                $scores::<1, 8>,
                $scores::<2, 4>,
                $scores::<3, 4>,
                $scores::<4, 2>,
                $scores::<5, 2>,
                $scores::<6, 2>,
                $scores::<7, 1>,
                $scores::<8, 1>,
            ],
            [
                $accumulate::<1>,
                $accumulate::<2>,
                $accumulate::<3>,
                $accumulate::<4>,
                $accumulate::<5>,
                $accumulate::<6>,
                $accumulate::<7>,
                $accumulate::<8>,
            ],
        )
    };
}
pub(crate) use attention_tables;

/// The quantized product of one panel: see [`super::quant::tile_reference`].
pub type QuantTileFn = fn(QuantFormat, QuantRows, usize, &[u8], &mut [f32]);

/// Every kernel of one ISA.
pub struct Kernels {
    pub isa: Isa,
    pub tile_f32: TileTable<f32>,
    pub tile_bf16: TileTable<Bf16>,
    pub silu_mul: fn(&mut [f32], &[f32]),
    /// `scores[g - 1]` serves `g` grouped heads (1..=[`MAX_GROUP`]).
    pub scores: [ScoresFn; MAX_GROUP],
    pub exp_and_sum: fn(&mut [f32], f32) -> f32,
    /// `accumulate[g - 1]` serves `g` grouped heads.
    pub accumulate: [AccumulateFn; MAX_GROUP],
    pub sum_squares: fn(&[f32]) -> f32,
    pub sum_exp: fn(&[f32], f32) -> f32,
    pub scale_by_weight: fn(&[f32], f32, &[f32], &mut [f32]),
    pub quant_tile: QuantTileFn,
}

/// The tile table of one weight type, from a generic `tile::<W, MR, P>` in scope.
macro_rules! tile_table {
    ($tile:ident, $w:ty) => {
        [
            [$tile::<$w, 1, 1>, $tile::<$w, 1, 2>, $tile::<$w, 1, 4>],
            [$tile::<$w, 2, 1>, $tile::<$w, 2, 2>, $tile::<$w, 2, 4>],
            [$tile::<$w, 3, 1>, $tile::<$w, 3, 2>, $tile::<$w, 3, 4>],
            [$tile::<$w, 4, 1>, $tile::<$w, 4, 2>, $tile::<$w, 4, 4>],
            [$tile::<$w, 5, 1>, $tile::<$w, 5, 2>, $tile::<$w, 5, 4>],
            [$tile::<$w, 6, 1>, $tile::<$w, 6, 2>, $tile::<$w, 6, 4>],
            [$tile::<$w, 7, 1>, $tile::<$w, 7, 2>, $tile::<$w, 7, 4>],
            [$tile::<$w, 8, 1>, $tile::<$w, 8, 2>, $tile::<$w, 8, 4>],
        ]
    };
}
pub(crate) use tile_table;

fn scalar_tile<W: Weight, const MR: usize, const P: usize>(
    x: &[f32],
    k: usize,
    panels: &[W],
    out: &mut [f32],
    stride: usize,
) {
    g::tile::<W, MR, P>(x, k, panels, out, stride)
}

fn scalar_scores<const G: usize, const KEYS: usize>(
    q: &[f32],
    d: usize,
    keys: &[f32],
    scale: f32,
    out: &mut [f32],
    stride: usize,
) {
    g::scores::<G, KEYS>(q, d, keys, scale, out, stride)
}

fn scalar_accumulate<const G: usize>(p: &[f32], s: usize, d: usize, v: &[f32], out: &mut [f32]) {
    g::accumulate::<G>(p, s, d, v, out)
}

fn scalar() -> Kernels {
    let (scores, accumulate) = attention_tables!(scalar_scores, scalar_accumulate);
    Kernels {
        isa: Isa::Scalar,
        tile_f32: tile_table!(scalar_tile, f32),
        tile_bf16: tile_table!(scalar_tile, Bf16),
        silu_mul: |gate, up| g::silu_mul(gate, up),
        scores,
        exp_and_sum: |s, max| g::exp_and_sum(s, max),
        accumulate,
        sum_squares: |x| g::sum_squares(x),
        sum_exp: |x, max| g::sum_exp(x, max),
        scale_by_weight: |x, inv, w, out| g::scale_by_weight(x, inv, w, out),
        quant_tile: super::quant::tile_reference,
    }
}

/// Hints the caches to load `data` soon (a no-op where there is no such instruction).
pub fn prefetch(data: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    x86::prefetch(data);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = data;
}

/// The kernels of `isa`; `None` when this CPU lacks it.
pub fn kernels(isa: Isa) -> Option<&'static Kernels> {
    static TABLES: OnceLock<[Option<Kernels>; 3]> = OnceLock::new();
    let tables = TABLES.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        let (avx2, avx512) = (x86::avx2::table(), x86::avx512::table());
        #[cfg(not(target_arch = "x86_64"))]
        let (avx2, avx512) = (None, None);
        [Some(scalar()), avx2, avx512]
    });
    let index = Isa::ALL.iter().position(|&i| i == isa)?;
    tables[index].as_ref()
}
