//! The CPU compute layer: packed dense products, fused paged attention and row-wise kernels,
//! each compiled for AVX-512, AVX2+FMA and plain Rust and chosen at run time.
//!
//! # Numerics contract
//!
//! For every output element, a dense product is one fused-multiply-add chain over
//! `k = 0..K-1` in order, from +0.0; bias, residual and activation apply after the chain. Every
//! variant (any row count, tile shape, thread count, instruction set) computes exactly that
//! chain, so a row's result is bitwise the same whatever else is in the batch: batch
//! invariance for free, with no padding. FMA rounds once on every ISA, so the AVX paths equal
//! the scalar reference (`f32::mul_add`) bit for bit. Reductions (dot products in attention,
//! sums of squares, softmax sums) use 8 fixed lanes (element `i` in lane `i % 8`) and a fixed
//! tree; attention walks keys in position order. See `kernels/NUMERICS.md`.

mod arch;
pub mod attention;
pub mod elementwise;
mod generic;
pub mod isa;
mod kv_blocks;
mod low_rank;
pub mod matmul;
mod packed;
mod peaks;
pub mod quant;
mod quant_formats;
mod quant_rows;

pub use attention::{AttentionScratch, AttentionShape};
pub use elementwise::{RotaryPairing, RotaryTable};
pub use generic::Bf16;
pub use isa::Isa;
pub use kv_blocks::{KvBlocks, KvDtype};
pub use matmul::{GatedActivation, LowRankGroup, LowRankPart, Output, PackedMatrix, WeightFormat};
pub use quant::QuantFormat;

use arch::Kernels;
use std::sync::OnceLock;

/// Handle to one ISA's kernels. Cheap to copy.
#[derive(Clone, Copy)]
pub struct CpuKernels {
    kernels: &'static Kernels,
}

impl std::fmt::Debug for CpuKernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuKernels")
            .field("isa", &self.kernels.isa)
            .finish()
    }
}

impl CpuKernels {
    /// The kernels of [`Isa::active`].
    pub fn active() -> Self {
        Self::for_isa(Isa::active()).unwrap_or_else(Self::scalar)
    }

    /// The kernels of `isa`, or `None` when this CPU lacks it.
    pub fn for_isa(isa: Isa) -> Option<Self> {
        arch::kernels(isa).map(|kernels| Self { kernels })
    }

    /// The portable reference.
    pub fn scalar() -> Self {
        match arch::kernels(Isa::Scalar) {
            Some(kernels) => Self { kernels },
            None => unreachable!("the scalar table always exists"),
        }
    }

    pub fn isa(&self) -> Isa {
        self.kernels.isa
    }
}

/// The thread pool the CPU forward pass runs in: one pool, entered once per step through
/// [`install`], so the ~150 parallel regions of a step are cheap joins. Sized by
/// `RAYON_NUM_THREADS` when set, else every core; `None` if no thread could be spawned.
pub fn pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();
    POOL.get_or_init(|| {
        let threads = std::env::var("RAYON_NUM_THREADS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|&n| n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("lantern-cpu-{i}"))
            .build()
            .ok()
    })
    .as_ref()
}

/// Runs `work` inside [`pool`] (on the calling thread when there is none).
pub fn install<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    match pool() {
        Some(pool) => pool.install(work),
        None => work(),
    }
}
