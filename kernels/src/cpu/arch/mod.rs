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

/// `scores::<W, G, KEYS>` (see [`g::scores`]), keys stored as `W`.
pub type ScoresFn<W> = fn(&[f32], usize, &[W], f32, &mut [f32], usize);
/// `accumulate::<W, G>` (see [`g::accumulate`]), values stored as `W`.
pub type AccumulateFn<W> = fn(&[f32], usize, usize, &[W], &mut [f32]);

/// The attention kernels reading a KV cache of `W` elements: `scores[g - 1]` and
/// `accumulate[g - 1]` serve `g` grouped heads (1..=[`MAX_GROUP`]).
pub struct AttentionKernels<W> {
    pub scores: [ScoresFn<W>; MAX_GROUP],
    pub accumulate: [AccumulateFn<W>; MAX_GROUP],
}
/// Most query heads per KV head one attention kernel call handles; larger groups are split.
pub const MAX_GROUP: usize = 8;

/// Attention kernels for KV elements `$w` from generic `scores::<W, G, KEYS>` /
/// `accumulate::<W, G>` in scope. Keys per iteration keep about 8-12 dot products in flight
/// whatever the group.
macro_rules! attention_tables {
    ($scores:ident, $accumulate:ident, $w:ty) => {
        $crate::cpu::arch::AttentionKernels::<$w> {
            scores: [
                $scores::<$w, 1, 8>,
                $scores::<$w, 2, 4>,
                $scores::<$w, 3, 4>,
                $scores::<$w, 4, 2>,
                $scores::<$w, 5, 2>,
                $scores::<$w, 6, 2>,
                $scores::<$w, 7, 1>,
                $scores::<$w, 8, 1>,
            ],
            accumulate: [
                $accumulate::<$w, 1>,
                $accumulate::<$w, 2>,
                $accumulate::<$w, 3>,
                $accumulate::<$w, 4>,
                $accumulate::<$w, 5>,
                $accumulate::<$w, 6>,
                $accumulate::<$w, 7>,
                $accumulate::<$w, 8>,
            ],
        }
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
    /// Attention over f32 and bf16 KV caches (an f16 one is widened to f32 run by run).
    pub attention_f32: AttentionKernels<f32>,
    pub attention_bf16: AttentionKernels<half::bf16>,
    pub exp_and_sum: fn(&mut [f32], f32) -> f32,
    pub sum_squares: fn(&[f32]) -> f32,
    pub sum_exp: fn(&[f32], f32) -> f32,
    pub scale_by_weight: fn(&[f32], f32, &[f32], &mut [f32]),
    pub quant_tile: QuantTileFn,
    /// f16 to f32 in bulk (an f16 KV cache's runs, widened before the f32 attention kernels
    /// read them).
    pub widen_f16: fn(&[half::f16], &mut [f32]),
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

fn scalar_scores<W: Weight, const G: usize, const KEYS: usize>(
    q: &[f32],
    d: usize,
    keys: &[W],
    scale: f32,
    out: &mut [f32],
    stride: usize,
) {
    g::scores::<W, G, KEYS>(q, d, keys, scale, out, stride)
}

fn scalar_accumulate<W: Weight, const G: usize>(
    p: &[f32],
    s: usize,
    d: usize,
    v: &[W],
    out: &mut [f32],
) {
    g::accumulate::<W, G>(p, s, d, v, out)
}

fn scalar() -> Kernels {
    Kernels {
        isa: Isa::Scalar,
        tile_f32: tile_table!(scalar_tile, f32),
        tile_bf16: tile_table!(scalar_tile, Bf16),
        silu_mul: |gate, up| g::silu_mul(gate, up),
        attention_f32: attention_tables!(scalar_scores, scalar_accumulate, f32),
        attention_bf16: attention_tables!(scalar_scores, scalar_accumulate, half::bf16),
        exp_and_sum: |s, max| g::exp_and_sum(s, max),
        sum_squares: |x| g::sum_squares(x),
        sum_exp: |x, max| g::sum_exp(x, max),
        scale_by_weight: |x, inv, w, out| g::scale_by_weight(x, inv, w, out),
        quant_tile: super::quant::tile_reference,
        widen_f16: g::widen_f16,
    }
}

/// Hints the caches to load `data` soon (a no-op where there is no such instruction).
pub fn prefetch<T>(data: &[T]) {
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
