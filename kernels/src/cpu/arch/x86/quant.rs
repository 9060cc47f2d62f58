//! The integer product of `quant.rs` with x86 intrinsics: AVX-512 VNNI (`vpdpbusd`, 16 output
//! rows per register) and AVX2 (`vpmaddubsw` + `vpmaddwd`, two halves of 8 rows). Both compute
//! the exact integer block sums of the scalar reference, then its float sequence per block
//! (`acc = fma(idot, d·s, acc)`, `acc = fma(m, s·Σq, acc)`), so their results are bitwise the
//! reference's. Q6_K keeps two integer sums per block (one per 16 values) and multiplies them
//! by its sub-scales before the float step. The wrappers check every slice length before
//! entering `unsafe` code.

use crate::cpu::quant::{QuantFormat, QuantRows, BLOCK, ROWS};
use std::arch::x86_64::*;

/// Activation rows per pass over a panel block: the block's integers are decoded once per pass.
const ROWS_PER_PASS: usize = 4;

/// Panics unless every access the kernels make is in bounds; returns the row count.
fn checked_rows(
    format: QuantFormat,
    x: &QuantRows,
    blocks: usize,
    panel: &[u8],
    out: &[f32],
) -> usize {
    assert!(blocks > 0, "a panel has at least one block");
    let rows = x.values.len() / (blocks * BLOCK);
    assert_eq!(
        x.values.len(),
        rows * blocks * BLOCK,
        "whole rows of activations"
    );
    assert!(x.scales.len() >= rows * blocks && x.sums.len() >= rows * blocks);
    assert!(x.scaled_sums.len() >= rows * blocks && x.half_sums.len() >= 2 * rows * blocks);
    assert!(
        panel.len() >= blocks * format.panel_block_bytes(),
        "a whole panel"
    );
    assert!(out.len() >= rows * ROWS, "room for every row");
    rows
}

pub fn tile_avx512_vnni(
    format: QuantFormat,
    x: QuantRows,
    blocks: usize,
    panel: &[u8],
    out: &mut [f32],
) {
    let rows = checked_rows(format, &x, blocks, panel, out);
    // SAFETY: `table()` hands this out only when the CPU has AVX-512 F/BW and VNNI; the
    // lengths were checked above, and the kernel reads and writes only within them.
    unsafe {
        use QuantFormat::*;
        let kernel = match format {
            Q4_0 => avx512_vnni::<0, false, false, false>,
            Q4_1 => avx512_vnni::<0, true, false, false>,
            Q5_0 => avx512_vnni::<1, false, false, false>,
            Q5_1 => avx512_vnni::<1, true, false, false>,
            Q8_0 => avx512_vnni::<2, false, false, false>,
            Q4K => avx512_vnni::<0, true, true, false>,
            Q5K => avx512_vnni::<1, true, true, false>,
            Q6K => avx512_vnni::<1, false, false, true>,
        };
        kernel(format, x, rows, blocks, panel, out)
    }
}

pub fn tile_avx2(format: QuantFormat, x: QuantRows, blocks: usize, panel: &[u8], out: &mut [f32]) {
    let rows = checked_rows(format, &x, blocks, panel, out);
    // SAFETY: `table()` hands this out only when the CPU has AVX2, FMA and F16C; the lengths
    // were checked above, and the kernel reads and writes only within them.
    unsafe {
        use QuantFormat::*;
        let kernel = match format {
            Q4_0 => avx2::<0, false, false, false>,
            Q4_1 => avx2::<0, true, false, false>,
            Q5_0 => avx2::<1, false, false, false>,
            Q5_1 => avx2::<1, true, false, false>,
            Q8_0 => avx2::<2, false, false, false>,
            Q4K => avx2::<0, true, true, false>,
            Q5K => avx2::<1, true, true, false>,
            Q6K => avx2::<1, false, false, true>,
        };
        kernel(format, x, rows, blocks, panel, out)
    }
}

/// `ENCODING`: 0 nibbles, 1 unsigned bytes, 2 signed bytes (Q8_0); `F32`: scales and
/// minimums stored as f32 (else f16); `SUB`: Q6_K's sub-scales.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn avx512_vnni<const ENCODING: u8, const MIN: bool, const F32: bool, const SUB: bool>(
    format: QuantFormat,
    x: QuantRows,
    rows: usize,
    blocks: usize,
    panel: &[u8],
    out: &mut [f32],
) {
    let block_bytes = format.panel_block_bytes();
    let integers = format.integers_offset();
    // vpdpbusd multiplies unsigned by signed bytes: Q8_0's signed weights go in shifted by
    // 128 (w ^ 0x80), and 128·Σq comes off again, exactly.
    let offset = format.offset() + if ENCODING == 2 { 128 } else { 0 };
    let low_nibbles = _mm512_set1_epi8(0x0F);
    let sign_bit = _mm512_set1_epi8(i8::MIN);
    let mut first = 0;
    while first < rows {
        let count = (rows - first).min(ROWS_PER_PASS);
        let mut acc = [_mm512_setzero_ps(); ROWS_PER_PASS];
        for b in 0..blocks {
            let block = panel.as_ptr().add(b * block_bytes);
            let scales = |at: usize| {
                if F32 {
                    _mm512_loadu_ps(block.add(at).cast())
                } else {
                    _mm512_cvtph_ps(_mm256_loadu_si256(block.add(at).cast()))
                }
            };
            let d = scales(0);
            let m = if MIN {
                scales(format.mins_offset())
            } else {
                _mm512_setzero_ps()
            };
            let sub = if SUB {
                let at = block.add(format.sub_scales_offset());
                [
                    _mm512_cvtepi8_epi32(_mm_loadu_si128(at.cast())),
                    _mm512_cvtepi8_epi32(_mm_loadu_si128(at.add(ROWS).cast())),
                ]
            } else {
                [_mm512_setzero_si512(); 2]
            };
            let ints = block.add(integers);
            let mut w = [_mm512_setzero_si512(); 8];
            if ENCODING == 0 {
                for g in 0..4 {
                    let packed = _mm512_loadu_si512(ints.add(64 * g).cast());
                    w[2 * g] = _mm512_and_si512(packed, low_nibbles);
                    w[2 * g + 1] = _mm512_and_si512(_mm512_srli_epi16::<4>(packed), low_nibbles);
                }
            } else {
                for (group, w) in w.iter_mut().enumerate() {
                    let bytes = _mm512_loadu_si512(ints.add(64 * group).cast());
                    *w = if ENCODING == 2 {
                        _mm512_xor_si512(bytes, sign_bit)
                    } else {
                        bytes
                    };
                }
            }
            for (i, acc) in acc.iter_mut().enumerate().take(count) {
                let at = (first + i) * blocks + b;
                let q = x.values.as_ptr().add(at * BLOCK).cast::<i32>();
                let mut halves = [_mm512_setzero_si512(); 2];
                for (group, w) in w.iter().enumerate() {
                    let four = _mm512_set1_epi32(q.add(group).read_unaligned());
                    let half = &mut halves[if SUB { group / 4 } else { 0 }];
                    *half = _mm512_dpbusd_epi32(*half, *w, four);
                }
                let dot = if SUB {
                    let scaled = |h: usize| {
                        let sum = offset * x.half_sums[2 * at + h];
                        let centred = _mm512_sub_epi32(halves[h], _mm512_set1_epi32(sum));
                        _mm512_mullo_epi32(centred, sub[h])
                    };
                    _mm512_add_epi32(scaled(0), scaled(1))
                } else if offset != 0 {
                    _mm512_sub_epi32(halves[0], _mm512_set1_epi32(offset * x.sums[at]))
                } else {
                    halves[0]
                };
                let scale = _mm512_mul_ps(d, _mm512_set1_ps(x.scales[at]));
                *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, *acc);
                if MIN {
                    *acc = _mm512_fmadd_ps(m, _mm512_set1_ps(x.scaled_sums[at]), *acc);
                }
            }
        }
        for (i, acc) in acc.iter().enumerate().take(count) {
            _mm512_storeu_ps(out.as_mut_ptr().add((first + i) * ROWS), *acc);
        }
        first += count;
    }
}

/// As [`avx512_vnni`], for rows 0-7 and 8-15 of a panel in turn.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn avx2<const ENCODING: u8, const MIN: bool, const F32: bool, const SUB: bool>(
    format: QuantFormat,
    x: QuantRows,
    rows: usize,
    blocks: usize,
    panel: &[u8],
    out: &mut [f32],
) {
    let block_bytes = format.panel_block_bytes();
    let integers = format.integers_offset();
    let offset = format.offset();
    let low_nibbles = _mm256_set1_epi8(0x0F);
    let ones = _mm256_set1_epi16(1);
    // Rows 0-7 of a panel are the first 32 bytes of each 64-byte group, rows 8-15 the rest.
    for half in 0..2 {
        let mut first = 0;
        while first < rows {
            let count = (rows - first).min(ROWS_PER_PASS);
            let mut acc = [_mm256_setzero_ps(); ROWS_PER_PASS];
            for b in 0..blocks {
                let block = panel.as_ptr().add(b * block_bytes);
                let scales = |at: usize| {
                    if F32 {
                        _mm256_loadu_ps(block.add(at + 32 * half).cast())
                    } else {
                        _mm256_cvtph_ps(_mm_loadu_si128(block.add(at + 16 * half).cast()))
                    }
                };
                let d = scales(0);
                let m = if MIN {
                    scales(format.mins_offset())
                } else {
                    _mm256_setzero_ps()
                };
                let sub = if SUB {
                    let at = block.add(format.sub_scales_offset() + 8 * half);
                    [
                        _mm256_cvtepi8_epi32(_mm_loadl_epi64(at.cast())),
                        _mm256_cvtepi8_epi32(_mm_loadl_epi64(at.add(ROWS).cast())),
                    ]
                } else {
                    [_mm256_setzero_si256(); 2]
                };
                let ints = block.add(integers + 32 * half);
                let mut w = [_mm256_setzero_si256(); 8];
                if ENCODING == 0 {
                    for g in 0..4 {
                        let packed = _mm256_loadu_si256(ints.add(64 * g).cast());
                        w[2 * g] = _mm256_and_si256(packed, low_nibbles);
                        w[2 * g + 1] =
                            _mm256_and_si256(_mm256_srli_epi16::<4>(packed), low_nibbles);
                    }
                } else {
                    for (group, w) in w.iter_mut().enumerate() {
                        *w = _mm256_loadu_si256(ints.add(64 * group).cast());
                    }
                }
                for (i, acc) in acc.iter_mut().enumerate().take(count) {
                    let at = (first + i) * blocks + b;
                    let q = x.values.as_ptr().add(at * BLOCK).cast::<i32>();
                    let mut halves = [_mm256_setzero_si256(); 2];
                    for (group, w) in w.iter().enumerate() {
                        let four = _mm256_set1_epi32(q.add(group).read_unaligned());
                        // u·q pairs stay within i16: |u| <= 63 here (2·63·127 < 2^15), and for
                        // Q8_0 the sign trick gives |w|·(±q) <= 128·127 per product.
                        let pairs = if ENCODING == 2 {
                            _mm256_maddubs_epi16(_mm256_abs_epi8(*w), _mm256_sign_epi8(four, *w))
                        } else {
                            _mm256_maddubs_epi16(*w, four)
                        };
                        let half = &mut halves[if SUB { group / 4 } else { 0 }];
                        *half = _mm256_add_epi32(*half, _mm256_madd_epi16(pairs, ones));
                    }
                    let dot = if SUB {
                        let scaled = |h: usize| {
                            let sum = offset * x.half_sums[2 * at + h];
                            let centred = _mm256_sub_epi32(halves[h], _mm256_set1_epi32(sum));
                            _mm256_mullo_epi32(centred, sub[h])
                        };
                        _mm256_add_epi32(scaled(0), scaled(1))
                    } else if offset != 0 {
                        _mm256_sub_epi32(halves[0], _mm256_set1_epi32(offset * x.sums[at]))
                    } else {
                        halves[0]
                    };
                    let scale = _mm256_mul_ps(d, _mm256_set1_ps(x.scales[at]));
                    *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), scale, *acc);
                    if MIN {
                        *acc = _mm256_fmadd_ps(m, _mm256_set1_ps(x.scaled_sums[at]), *acc);
                    }
                }
            }
            for (i, acc) in acc.iter().enumerate().take(count) {
                _mm256_storeu_ps(out.as_mut_ptr().add((first + i) * ROWS + 8 * half), *acc);
            }
            first += count;
        }
    }
}
