//! AVX2+FMA and AVX-512 instances of the generic kernels, and the integer kernels of the
//! quantized product (`quant.rs`), which are written with intrinsics.
#![allow(unsafe_code)]

mod quant;

use super::QuantTileFn;
use crate::cpu::isa::Isa;

/// The quantized product for `isa`: VNNI where AVX-512 has it, else AVX2 (which needs F16C
/// for the scales), else the scalar reference.
fn quant_tile(isa: Isa) -> QuantTileFn {
    use std::arch::is_x86_feature_detected as has;
    let avx2 = has!("avx2") && has!("fma") && has!("f16c");
    match isa {
        Isa::Avx512 if avx2 && has!("avx512bw") && has!("avx512vnni") => quant::tile_avx512_vnni,
        Isa::Avx512 | Isa::Avx2 if avx2 => quant::tile_avx2,
        _ => crate::cpu::quant::tile_reference,
    }
}

/// Widening f16 to f32 in bulk with the hardware conversion (a KV cache in f16): AVX-512F's
/// 16 lanes, or F16C's 8 beside AVX2; the scalar loop elsewhere. The same bits either way.
fn widen_f16(isa: Isa) -> fn(&[half::f16], &mut [f32]) {
    use std::arch::is_x86_feature_detected as has;
    match isa {
        Isa::Avx512 if has!("avx512f") => widen_f16_avx512,
        Isa::Avx512 | Isa::Avx2 if has!("f16c") && has!("avx") => widen_f16_f16c,
        _ => crate::cpu::generic::widen_f16,
    }
}

#[target_feature(enable = "avx512f")]
fn widen_f16_avx512_in(src: &[half::f16], dst: &mut [f32]) {
    use std::arch::x86_64::{__m256i, _mm256_loadu_si256, _mm512_cvtph_ps, _mm512_storeu_ps};
    let n = src.len().min(dst.len());
    let whole = n / 16 * 16;
    for i in (0..whole).step_by(16) {
        // SAFETY: `i + 16 <= n` elements of both slices; unaligned loads and stores.
        unsafe {
            let halves = _mm256_loadu_si256(src.as_ptr().add(i).cast::<__m256i>());
            _mm512_storeu_ps(dst.as_mut_ptr().add(i), _mm512_cvtph_ps(halves));
        }
    }
    crate::cpu::generic::widen_f16(&src[whole..n], &mut dst[whole..n]);
}

fn widen_f16_avx512(src: &[half::f16], dst: &mut [f32]) {
    // SAFETY: `widen_f16` hands this out only where the CPU has AVX-512F.
    unsafe { widen_f16_avx512_in(src, dst) }
}

#[target_feature(enable = "avx,f16c")]
fn widen_f16_f16c_in(src: &[half::f16], dst: &mut [f32]) {
    use std::arch::x86_64::{__m128i, _mm256_cvtph_ps, _mm256_storeu_ps, _mm_loadu_si128};
    let n = src.len().min(dst.len());
    let whole = n / 8 * 8;
    for i in (0..whole).step_by(8) {
        // SAFETY: `i + 8 <= n` elements of both slices; unaligned loads and stores.
        unsafe {
            let halves = _mm_loadu_si128(src.as_ptr().add(i).cast::<__m128i>());
            _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(halves));
        }
    }
    crate::cpu::generic::widen_f16(&src[whole..n], &mut dst[whole..n]);
}

fn widen_f16_f16c(src: &[half::f16], dst: &mut [f32]) {
    // SAFETY: `widen_f16` hands this out only where the CPU has AVX and F16C.
    unsafe { widen_f16_f16c_in(src, dst) }
}

/// One ISA's module: `#[target_feature]` instances of every generic kernel, each behind a safe
/// wrapper that only [`table`] hands out, after checking the CPU.
macro_rules! isa_kernels {
    ($module:ident, $isa:expr, $features:literal) => {
        pub mod $module {
            use crate::cpu::arch::{attention_tables, tile_table, Kernels};
            use crate::cpu::generic::{self as g, Bf16, Weight};
            use crate::cpu::isa::Isa;

            #[target_feature(enable = $features)]
            fn tile_in<W: Weight, const MR: usize, const P: usize>(
                x: &[f32],
                k: usize,
                panels: &[W],
                out: &mut [f32],
                stride: usize,
            ) {
                g::tile::<W, MR, P>(x, k, panels, out, stride)
            }

            fn tile<W: Weight, const MR: usize, const P: usize>(
                x: &[f32],
                k: usize,
                panels: &[W],
                out: &mut [f32],
                stride: usize,
            ) {
                // SAFETY: only `table()` hands this out, after checking the CPU has the features.
                unsafe { tile_in::<W, MR, P>(x, k, panels, out, stride) }
            }

            #[target_feature(enable = $features)]
            fn silu_mul_in(gate: &mut [f32], up: &[f32]) {
                g::silu_mul(gate, up)
            }

            #[target_feature(enable = $features)]
            fn scores_in<W: Weight, const G: usize, const KEYS: usize>(
                q: &[f32],
                d: usize,
                k: &[W],
                scale: f32,
                out: &mut [f32],
                s: usize,
            ) {
                g::scores::<W, G, KEYS>(q, d, k, scale, out, s)
            }

            fn scores<W: Weight, const G: usize, const KEYS: usize>(
                q: &[f32],
                d: usize,
                k: &[W],
                scale: f32,
                out: &mut [f32],
                s: usize,
            ) {
                // SAFETY: only `table()` hands this out, after checking the CPU has the features.
                unsafe { scores_in::<W, G, KEYS>(q, d, k, scale, out, s) }
            }

            #[target_feature(enable = $features)]
            fn exp_and_sum_in(scores: &mut [f32], max: f32) -> f32 {
                g::exp_and_sum(scores, max)
            }

            #[target_feature(enable = $features)]
            fn accumulate_in<W: Weight, const G: usize>(
                p: &[f32],
                s: usize,
                d: usize,
                v: &[W],
                out: &mut [f32],
            ) {
                g::accumulate::<W, G>(p, s, d, v, out)
            }

            fn accumulate<W: Weight, const G: usize>(
                p: &[f32],
                s: usize,
                d: usize,
                v: &[W],
                out: &mut [f32],
            ) {
                // SAFETY: only `table()` hands this out, after checking the CPU has the features.
                unsafe { accumulate_in::<W, G>(p, s, d, v, out) }
            }

            #[target_feature(enable = $features)]
            fn sum_squares_in(x: &[f32]) -> f32 {
                g::sum_squares(x)
            }

            #[target_feature(enable = $features)]
            fn sum_exp_in(x: &[f32], max: f32) -> f32 {
                g::sum_exp(x, max)
            }

            #[target_feature(enable = $features)]
            fn scale_by_weight_in(x: &[f32], inv: f32, w: &[f32], out: &mut [f32]) {
                g::scale_by_weight(x, inv, w, out)
            }

            /// This ISA's kernels, or `None` on a CPU without it.
            pub fn table() -> Option<Kernels> {
                if !$isa.is_supported() {
                    return None;
                }
                // SAFETY (every closure below): the check above passed, so the CPU executes
                // the `#[target_feature]` functions they call.
                Some(Kernels {
                    isa: $isa,
                    tile_f32: tile_table!(tile, f32),
                    tile_bf16: tile_table!(tile, Bf16),
                    silu_mul: |gate, up| unsafe { silu_mul_in(gate, up) },
                    attention_f32: attention_tables!(scores, accumulate, f32),
                    attention_bf16: attention_tables!(scores, accumulate, half::bf16),
                    exp_and_sum: |s, max| unsafe { exp_and_sum_in(s, max) },
                    sum_squares: |x| unsafe { sum_squares_in(x) },
                    sum_exp: |x, max| unsafe { sum_exp_in(x, max) },
                    scale_by_weight: |x, inv, w, out| unsafe { scale_by_weight_in(x, inv, w, out) },
                    quant_tile: super::quant_tile($isa),
                    widen_f16: super::widen_f16($isa),
                })
            }
        }
    };
}

isa_kernels!(avx2, Isa::Avx2, "avx2,fma");
isa_kernels!(avx512, Isa::Avx512, "avx512f,avx2,fma");

/// Asks the CPU to start loading `data` into the caches (every 64-byte line); no effect on
/// results. Attention reads K/V runs of a few KB scattered over the block pool: the hardware
/// prefetchers stop at page boundaries, so the kernel asks for the next runs ahead of time.
pub fn prefetch<T>(data: &[T]) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    let per_line = (64 / std::mem::size_of::<T>().max(1)).max(1);
    for line in data.chunks(per_line) {
        // SAFETY: prefetching never faults or writes; the pointer comes from a live slice.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast::<i8>()) };
    }
}
