//! The integer product of `quant.rs` with x86 intrinsics: AVX-512 VNNI (`vpdpbusd`, 16 output
//! rows per register) and AVX2 (`vpmaddubsw` + `vpmaddwd`, two halves of 8 rows). Both compute
//! the exact integer block sums of the scalar reference, then its float sequence per block
//! (`acc = fma(idot, d·s, acc)`, `acc = fma(m, s·Σq, acc)`), so their results are bitwise the
//! reference's. Q6_K keeps two integer sums per block (one per 16 values) and multiplies them
//! by its sub-scales before the float step. The wrappers check every slice length before
//! entering `unsafe` code.

use crate::cpu::quant::{QuantFormat, QuantRows, BLOCK, ROWS};
use std::arch::x86_64::*;

/// Activation rows per pass over a panel block (AVX2): the block's integers are decoded once per
/// pass, and sixteen registers hold the decoded groups and four accumulators.
const ROWS_PER_PASS_AVX2: usize = 4;

/// AVX-512 has the registers for twice as many rows per pass (8 accumulators beside the 8
/// decoded groups): half the decoding work per row at batch sizes of 8 and up. Measured on a
/// 16384x2048 product at 32 rows: Q4_K 4.15 -> 3.05 ms, Q6_K 5.80 -> 4.34 ms.
const ROWS_PER_PASS_AVX512: usize = 8;

/// How far ahead of the block being decoded the kernels ask for weight bytes. A decode step
/// streams every panel once from memory, and the hardware prefetcher alone left a quarter of
/// the bandwidth unused: on the 1B Q4_K_M a one-row step took 39 ms without, 29-30 ms with
/// 2-8 KiB ahead, 33 ms with 1 KiB (`decode_step`, 2 threads).
const PREFETCH_AHEAD: usize = 4096;

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
        blocks.is_multiple_of(format.group_blocks()),
        "whole groups of blocks"
    );
    assert!(panel.len() >= format.panel_bytes(blocks), "a whole panel");
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
            Q4_0 => avx512_vnni::<4, false, false, false>,
            Q4_1 => avx512_vnni::<4, true, false, false>,
            Q5_0 => avx512_vnni::<5, false, false, false>,
            Q5_1 => avx512_vnni::<5, true, false, false>,
            Q8_0 => avx512_vnni::<8, false, false, false>,
            Q4K => avx512_vnni::<4, true, true, false>,
            Q5K => avx512_vnni::<5, true, true, false>,
            Q6K => avx512_vnni::<6, false, false, true>,
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
            Q4_0 => avx2::<4, false, false, false>,
            Q4_1 => avx2::<4, true, false, false>,
            Q5_0 => avx2::<5, false, false, false>,
            Q5_1 => avx2::<5, true, false, false>,
            Q8_0 => avx2::<8, false, false, false>,
            Q4K => avx2::<4, true, true, false>,
            Q5K => avx2::<5, true, true, false>,
            Q6K => avx2::<6, false, false, true>,
        };
        kernel(format, x, rows, blocks, panel, out)
    }
}

/// Asks for the cache lines one block's worth of bytes past `block`, [`PREFETCH_AHEAD`] on.
/// A hint only: the addresses may lie past the panel, and prefetches never fault.
#[inline(always)]
unsafe fn prefetch_ahead(format: QuantFormat, block: *const u8) {
    let ahead = block.wrapping_add(PREFETCH_AHEAD);
    for line in (0..format.panel_block_bytes()).step_by(64) {
        _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line).cast());
    }
}

/// `BITS`: 4, 5 or 6 (nibbles and bit planes) or 8 (Q8_0's signed bytes); `MIN`: a minimum
/// per block; `SPLIT`: scales and minimums as super-block f16 times 6-bit integers (Q4_K,
/// Q5_K); `SUB`: Q6_K's super-block scale and integer sub-scales.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn avx512_vnni<const BITS: u8, const MIN: bool, const SPLIT: bool, const SUB: bool>(
    format: QuantFormat,
    x: QuantRows,
    rows: usize,
    blocks: usize,
    panel: &[u8],
    out: &mut [f32],
) {
    let integers = format.integers_offset();
    let planes = format.high_bits_offset();
    // vpdpbusd multiplies unsigned by signed bytes: Q8_0's signed weights go in shifted by
    // 128 (w ^ 0x80), and 128·Σq comes off again, exactly.
    let offset = format.offset() + if BITS == 8 { 128 } else { 0 };
    let low_nibbles = _mm512_set1_epi8(0x0F);
    let sign_bit = _mm512_set1_epi8(i8::MIN);
    let to_f32 =
        |bytes: *const u8| _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(bytes.cast())));
    let mut first = 0;
    while first < rows {
        let count = (rows - first).min(ROWS_PER_PASS_AVX512);
        let mut acc = [_mm512_setzero_ps(); ROWS_PER_PASS_AVX512];
        let (mut super_d, mut super_m) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        for b in 0..blocks {
            if (SPLIT || SUB) && b % format.group_blocks() == 0 {
                let header = panel.as_ptr().add(format.header_at(b));
                super_d = _mm512_cvtph_ps(_mm256_loadu_si256(header.cast()));
                if SPLIT {
                    super_m = _mm512_cvtph_ps(_mm256_loadu_si256(header.add(2 * ROWS).cast()));
                }
            }
            let block = panel.as_ptr().add(format.block_at(b));
            prefetch_ahead(format, block);
            // Exact products (an f16 times a 6-bit integer): the reference's `d` and `m`.
            let (d, m) = if SPLIT {
                (
                    _mm512_mul_ps(super_d, to_f32(block)),
                    _mm512_mul_ps(super_m, to_f32(block.add(ROWS))),
                )
            } else if SUB {
                (super_d, _mm512_setzero_ps())
            } else {
                let half = |at: usize| _mm512_cvtph_ps(_mm256_loadu_si256(block.add(at).cast()));
                (
                    half(0),
                    if MIN {
                        half(2 * ROWS)
                    } else {
                        _mm512_setzero_ps()
                    },
                )
            };
            let sub = if SUB {
                [
                    _mm512_cvtepi8_epi32(_mm_loadu_si128(block.cast())),
                    _mm512_cvtepi8_epi32(_mm_loadu_si128(block.add(ROWS).cast())),
                ]
            } else {
                [_mm512_setzero_si512(); 2]
            };
            let ints = block.add(integers);
            let mut w = [_mm512_setzero_si512(); 8];
            if BITS == 8 {
                for (group, w) in w.iter_mut().enumerate() {
                    let bytes = _mm512_loadu_si512(ints.add(64 * group).cast());
                    *w = _mm512_xor_si512(bytes, sign_bit);
                }
            } else {
                for g in 0..4 {
                    let packed = _mm512_loadu_si512(ints.add(64 * g).cast());
                    w[2 * g] = _mm512_and_si512(packed, low_nibbles);
                    w[2 * g + 1] = _mm512_and_si512(_mm512_srli_epi16::<4>(packed), low_nibbles);
                }
                // Each bit plane's word is a byte mask: add the bit where it is set.
                for plane in 0..usize::from(BITS - 4) {
                    let bit = _mm512_set1_epi8(16 << plane);
                    let words = block.add(planes + 64 * plane).cast::<u64>();
                    for (group, w) in w.iter_mut().enumerate() {
                        let mask = _cvtu64_mask64(words.add(group).read_unaligned());
                        *w = _mm512_mask_add_epi8(*w, mask, *w, bit);
                    }
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
unsafe fn avx2<const BITS: u8, const MIN: bool, const SPLIT: bool, const SUB: bool>(
    format: QuantFormat,
    x: QuantRows,
    rows: usize,
    blocks: usize,
    panel: &[u8],
    out: &mut [f32],
) {
    let integers = format.integers_offset();
    let planes = format.high_bits_offset();
    let offset = format.offset();
    let low_nibbles = _mm256_set1_epi8(0x0F);
    let ones = _mm256_set1_epi16(1);
    // Byte `i` of a bit plane's 32-bit half-word, spread to bytes: `i / 8` picks the byte,
    // `1 << (i % 8)` the bit.
    let spread = _mm256_setr_epi8(
        0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3,
        3, 3,
    );
    let bit_of_byte = _mm256_set1_epi64x(0x8040_2010_0804_0201_u64 as i64);
    // Rows 0-7 of a panel are the first 32 bytes of each 64-byte group, rows 8-15 the rest.
    for half in 0..2 {
        let to_f32 = |bytes: *const u8| {
            _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(
                bytes.add(8 * half).cast(),
            )))
        };
        let mut first = 0;
        while first < rows {
            let count = (rows - first).min(ROWS_PER_PASS_AVX2);
            let mut acc = [_mm256_setzero_ps(); ROWS_PER_PASS_AVX2];
            let (mut super_d, mut super_m) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            for b in 0..blocks {
                if (SPLIT || SUB) && b % format.group_blocks() == 0 {
                    let header = panel.as_ptr().add(format.header_at(b) + 16 * half);
                    super_d = _mm256_cvtph_ps(_mm_loadu_si128(header.cast()));
                    if SPLIT {
                        super_m = _mm256_cvtph_ps(_mm_loadu_si128(header.add(2 * ROWS).cast()));
                    }
                }
                let block = panel.as_ptr().add(format.block_at(b));
                if half == 0 {
                    // The second half finds the panel in cache.
                    prefetch_ahead(format, block);
                }
                let (d, m) = if SPLIT {
                    (
                        _mm256_mul_ps(super_d, to_f32(block)),
                        _mm256_mul_ps(super_m, to_f32(block.add(ROWS))),
                    )
                } else if SUB {
                    (super_d, _mm256_setzero_ps())
                } else {
                    let half = |at: usize| {
                        _mm256_cvtph_ps(_mm_loadu_si128(block.add(at + 16 * half).cast()))
                    };
                    (
                        half(0),
                        if MIN {
                            half(2 * ROWS)
                        } else {
                            _mm256_setzero_ps()
                        },
                    )
                };
                let sub = if SUB {
                    let at = block.add(8 * half);
                    [
                        _mm256_cvtepi8_epi32(_mm_loadl_epi64(at.cast())),
                        _mm256_cvtepi8_epi32(_mm_loadl_epi64(at.add(ROWS).cast())),
                    ]
                } else {
                    [_mm256_setzero_si256(); 2]
                };
                let ints = block.add(integers + 32 * half);
                let mut w = [_mm256_setzero_si256(); 8];
                if BITS == 8 {
                    for (group, w) in w.iter_mut().enumerate() {
                        *w = _mm256_loadu_si256(ints.add(64 * group).cast());
                    }
                } else {
                    for g in 0..4 {
                        let packed = _mm256_loadu_si256(ints.add(64 * g).cast());
                        w[2 * g] = _mm256_and_si256(packed, low_nibbles);
                        w[2 * g + 1] =
                            _mm256_and_si256(_mm256_srli_epi16::<4>(packed), low_nibbles);
                    }
                    for plane in 0..usize::from(BITS - 4) {
                        let bit = _mm256_set1_epi8(16 << plane);
                        let words = block.add(planes + 64 * plane + 4 * half).cast::<u32>();
                        for (group, w) in w.iter_mut().enumerate() {
                            // 32 bits (this half's rows) to 32 bytes of 0xFF or 0.
                            let word = words.add(2 * group).read_unaligned() as i32;
                            let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(word), spread);
                            let set = _mm256_cmpeq_epi8(
                                _mm256_and_si256(bytes, bit_of_byte),
                                bit_of_byte,
                            );
                            *w = _mm256_or_si256(*w, _mm256_and_si256(set, bit));
                        }
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
                        let pairs = if BITS == 8 {
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
