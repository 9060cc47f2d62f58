//! Quantized weights for the batched integer product: GGUF blocks (`quant_formats.rs`)
//! repacked at load into panels of 16 output rows, multiplied with activations quantized per
//! row to 8-bit blocks (`quant_rows.rs`).
//!
//! The product of one activation block `x ≈ s·q` (q in -127..=127) with one weight block is
//! `d·s·Σ u·q (− offset·Σq)  (+ m·s·Σq)`, where `u` is the block's unsigned integer (a nibble,
//! a 5- or 6-bit value, or for Q8_0 the signed byte). Q6_K's two integer sub-scales multiply
//! the integer sums of their 16 values: `Σ_h sub_h·(Σ_h u·q − 32·Σ_h q)`, still exact. The
//! integer sums are exact, so every ISA (VNNI `vpdpbusd`, AVX2 `maddubs`, scalar) gets the
//! same integers; the float part is one fixed sequence per block and output:
//! `acc = fma(idot, d·s, acc)`, then `acc = fma(m, s·Σq, acc)`, blocks in `k` order from +0.0.
//! So, as for the dense product, a row's bits depend on nothing but that row, the weights and
//! the format (see `NUMERICS.md`).
//!
//! Panel layout, per block of 32 `k` values: the 16 rows' scales (f16 bits as in the file, or
//! f32 for Q4_K/Q5_K), their minimums (same type; formats with a minimum only), Q6_K's
//! sub-scales (`[half][row]`, i8), then the integers, grouped by 4 consecutive `k` so that one
//! 64-byte vector holds 16 rows x 4 values (`[group][row][4]`):
//! - 4-bit (Q4_0, Q4_1, Q4_K): 4 groups of 64 bytes; byte `j` of row `r` in group `g` holds
//!   `k = 8g+j` in its low nibble and `k = 8g+4+j` in its high nibble. No size growth for
//!   Q4_0/Q4_1; Q4_K grows from 4.5 to 6 bits a value (its f32 scales and minimums).
//! - 8-bit (Q5_0, Q5_1, Q5_K, Q6_K expanded to bytes; Q8_0 as signed bytes): 8 groups of 64
//!   bytes, group `G` holding `k = 4G..4G+4`. Q8_0 has no growth; the 5- and 6-bit formats pay
//!   for decoding their high bits at load instead of in the loop.
//!
//! A matrix may mix formats panel by panel (a Q4_K_M file's Q, K in Q4_K and V in Q6_K stacked
//! into one product): each panel carries its own format.

use half::f16;

pub use super::quant_formats::{Block32, Encoding, QuantFormat, BLOCK};

/// Output rows per panel.
pub const ROWS: usize = 16;

/// Where things sit in one panel block of a format.
impl QuantFormat {
    fn scale_bytes(self) -> usize {
        if self.f32_scales() {
            4
        } else {
            2
        }
    }

    /// Byte offset of the minimums inside a panel block (formats with a minimum).
    pub fn mins_offset(self) -> usize {
        ROWS * self.scale_bytes()
    }

    /// Byte offset of the sub-scales (Q6_K): 16 rows' first-half scales, then the second's.
    pub fn sub_scales_offset(self) -> usize {
        ROWS * self.scale_bytes() * if self.has_min() { 2 } else { 1 }
    }

    /// Byte offset of the integers inside a panel block.
    pub fn integers_offset(self) -> usize {
        self.sub_scales_offset() + if self.has_sub_scales() { 2 * ROWS } else { 0 }
    }

    /// Bytes of one block of one panel (16 rows).
    pub fn panel_block_bytes(self) -> usize {
        let integers = match self.encoding() {
            Encoding::Nibbles => ROWS * BLOCK / 2,
            Encoding::Bytes | Encoding::SignedBytes => ROWS * BLOCK,
        };
        self.integers_offset() + integers
    }

    /// Writes one row's block into a panel block at `lane`.
    fn write_lane(self, out: &mut [u8], lane: usize, block: &Block32) {
        let scale_bytes = self.scale_bytes();
        let mut put = |at: usize, value: f32| {
            if self.f32_scales() {
                out[at..at + 4].copy_from_slice(&value.to_le_bytes());
            } else {
                // Exact: these came from the file's f16 bits.
                out[at..at + 2].copy_from_slice(&f16::from_f32(value).to_le_bytes());
            }
        };
        put(scale_bytes * lane, block.d);
        if self.has_min() {
            put(self.mins_offset() + scale_bytes * lane, block.m);
        }
        if self.has_sub_scales() {
            let at = self.sub_scales_offset();
            out[at + lane] = block.sub[0] as i8 as u8;
            out[at + ROWS + lane] = block.sub[1] as i8 as u8;
        }
        let ints = &mut out[self.integers_offset()..];
        let values = &block.values;
        match self.encoding() {
            Encoding::Nibbles => {
                for g in 0..4 {
                    for j in 0..4 {
                        let low = values[8 * g + j] as u8;
                        let high = values[8 * g + 4 + j] as u8;
                        ints[g * 64 + lane * 4 + j] = low | (high << 4);
                    }
                }
            }
            Encoding::Bytes | Encoding::SignedBytes => {
                for group in 0..8 {
                    for j in 0..4 {
                        ints[group * 64 + lane * 4 + j] = values[4 * group + j] as u8;
                    }
                }
            }
        }
    }
}

/// A quantized `(n, k)` weight matrix in panels of [`ROWS`] output rows, each panel in its
/// own format.
#[derive(Debug, Clone)]
pub struct QuantPanels {
    /// Blocks of 32 per row (`k / 32`).
    pub blocks: usize,
    /// Each panel's format and where its bytes start.
    panels: Vec<(QuantFormat, usize)>,
    pub bytes: Vec<u8>,
}

/// One part of a matrix stacked from GGUF tensors: its format and its rows' blocks.
#[derive(Debug, Clone, Copy)]
pub struct GgufPart<'a> {
    pub format: QuantFormat,
    pub data: &'a [u8],
}

impl GgufPart<'_> {
    /// Rows of `k` values in this part, if its bytes are whole rows.
    fn rows(&self, k: usize) -> Result<usize, String> {
        let format = self.format;
        if !k.is_multiple_of(format.gguf_block_values()) {
            return Err(format!(
                "{}: k = {k} is not a multiple of {}",
                format.name(),
                format.gguf_block_values()
            ));
        }
        let row_bytes = k / format.gguf_block_values() * format.gguf_block_bytes();
        if row_bytes == 0 || !self.data.len().is_multiple_of(row_bytes) {
            return Err(format!(
                "{}: {} bytes are not whole rows of {k} values ({row_bytes} bytes each)",
                format.name(),
                self.data.len()
            ));
        }
        Ok(self.data.len() / row_bytes)
    }
}

impl QuantPanels {
    /// Repacks GGUF data of an `(n, k)` matrix (`n` rows of `k` values) into panels; rows
    /// past `n` in the last panel are zero.
    pub fn from_gguf(format: QuantFormat, data: &[u8], n: usize, k: usize) -> Result<Self, String> {
        let part = GgufPart { format, data };
        let rows = part.rows(k)?;
        if rows != n {
            return Err(format!(
                "{}: ({n}, {k}) needs {} bytes, got {}",
                format.name(),
                n * k / format.gguf_block_values() * format.gguf_block_bytes(),
                data.len()
            ));
        }
        Self::from_parts(&[part], k)
    }

    /// Repacks parts stacked by rows (each part's rows, in order), each in its own format.
    /// Every part but the last must fill whole panels, so that no panel mixes formats.
    pub fn from_parts(parts: &[GgufPart], k: usize) -> Result<Self, String> {
        if !k.is_multiple_of(BLOCK) || k == 0 {
            return Err(format!("k = {k} is not a positive multiple of {BLOCK}"));
        }
        let blocks = k / BLOCK;
        let mut panels = Vec::new();
        let mut bytes = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            let format = part.format;
            let rows = part.rows(k)?;
            if i + 1 < parts.len() && !rows.is_multiple_of(ROWS) {
                return Err(format!(
                    "a stacked part of {rows} rows does not fill whole panels of {ROWS}"
                ));
            }
            let gguf_blocks = k / format.gguf_block_values();
            let sub_blocks = format.gguf_block_values() / BLOCK;
            let row_bytes = gguf_blocks * format.gguf_block_bytes();
            let block_bytes = format.panel_block_bytes();
            let panel_bytes = blocks * block_bytes;
            for first in (0..rows).step_by(ROWS) {
                let start = bytes.len();
                panels.push((format, start));
                bytes.resize(start + panel_bytes, 0);
                let panel = &mut bytes[start..];
                for lane in 0..ROWS.min(rows - first) {
                    let row = &part.data[(first + lane) * row_bytes..][..row_bytes];
                    for (g, gguf) in row.chunks_exact(format.gguf_block_bytes()).enumerate() {
                        for index in 0..sub_blocks {
                            let b = g * sub_blocks + index;
                            let block = format.decode_gguf_block(gguf, index);
                            let out = &mut panel[b * block_bytes..][..block_bytes];
                            format.write_lane(out, lane, &block);
                        }
                    }
                }
            }
        }
        Ok(Self {
            blocks,
            panels,
            bytes,
        })
    }

    /// Number of panels.
    pub fn len(&self) -> usize {
        self.panels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.panels.is_empty()
    }

    /// Panel `p`'s format and bytes.
    pub fn panel(&self, p: usize) -> (QuantFormat, &[u8]) {
        let (format, start) = self.panels[p];
        (
            format,
            &self.bytes[start..start + self.blocks * format.panel_block_bytes()],
        )
    }

    /// The formats of the panels, each once, in order of first use.
    pub fn formats(&self) -> Vec<QuantFormat> {
        let mut formats: Vec<QuantFormat> = Vec::new();
        for &(format, _) in &self.panels {
            if !formats.contains(&format) {
                formats.push(format);
            }
        }
        formats
    }

    /// Gate and up panels alternating (gate 0, up 0, gate 1, ...), for the SwiGLU product.
    pub fn interleave(gate: &QuantPanels, up: &QuantPanels) -> Result<QuantPanels, String> {
        if gate.blocks != up.blocks || gate.len() != up.len() {
            return Err("gate and up must have the same shape".into());
        }
        let mut panels = Vec::with_capacity(2 * gate.len());
        let mut bytes = Vec::with_capacity(gate.bytes.len() + up.bytes.len());
        for p in 0..gate.len() {
            for source in [gate, up] {
                let (format, data) = source.panel(p);
                panels.push((format, bytes.len()));
                bytes.extend_from_slice(data);
            }
        }
        Ok(QuantPanels {
            blocks: gate.blocks,
            panels,
            bytes,
        })
    }

    /// Row `i` (of panel `i / 16`) dequantized: an embedding lookup in a quantized table.
    pub fn row(&self, i: usize, out: &mut [f32]) {
        let (format, panel) = self.panel(i / ROWS);
        let block_bytes = format.panel_block_bytes();
        for (b, values) in out.chunks_exact_mut(BLOCK).enumerate().take(self.blocks) {
            let block = panel_block_lane(format, &panel[b * block_bytes..], i % ROWS);
            for (j, v) in values.iter_mut().enumerate() {
                *v = format.dequantize(&block, j);
            }
        }
    }
}

/// Lane `lane`'s block in the common form, from one panel block.
pub fn panel_block_lane(format: QuantFormat, block: &[u8], lane: usize) -> Block32 {
    let scale_at = |at: usize| {
        if format.f32_scales() {
            f32::from_le_bytes([block[at], block[at + 1], block[at + 2], block[at + 3]])
        } else {
            f16::from_le_bytes([block[at], block[at + 1]]).to_f32()
        }
    };
    let d = scale_at(format.scale_bytes() * lane);
    let m = if format.has_min() {
        scale_at(format.mins_offset() + format.scale_bytes() * lane)
    } else {
        0.0
    };
    let sub = if format.has_sub_scales() {
        let at = format.sub_scales_offset();
        [
            i32::from(block[at + lane] as i8),
            i32::from(block[at + ROWS + lane] as i8),
        ]
    } else {
        [1, 1]
    };
    let ints = &block[format.integers_offset()..];
    let mut values = [0i32; BLOCK];
    for (k, v) in values.iter_mut().enumerate() {
        *v = match format.encoding() {
            Encoding::Nibbles => {
                let (g, j, high) = (k / 8, k % 4, (k % 8) >= 4);
                let byte = ints[g * 64 + lane * 4 + j];
                i32::from(if high { byte >> 4 } else { byte & 0x0F })
            }
            Encoding::Bytes => i32::from(ints[(k / 4) * 64 + lane * 4 + k % 4]),
            Encoding::SignedBytes => i32::from(ints[(k / 4) * 64 + lane * 4 + k % 4] as i8),
        };
    }
    Block32 { values, d, m, sub }
}

pub use super::quant_rows::{QuantRows, QuantizedRows};

/// The reference of the integer product: `out[r * 16 + lane]` = the chain of row `r` with
/// panel row `lane`, for every row of `x` (see the module doc for the exact sequence).
pub fn tile_reference(
    format: QuantFormat,
    x: QuantRows,
    blocks: usize,
    panel: &[u8],
    out: &mut [f32],
) {
    let block_bytes = format.panel_block_bytes();
    let rows = x.values.len() / (blocks * BLOCK);
    for r in 0..rows {
        let mut acc = [0f32; ROWS];
        for b in 0..blocks {
            let block = &panel[b * block_bytes..(b + 1) * block_bytes];
            let at = r * blocks + b;
            let q = &x.values[at * BLOCK..][..BLOCK];
            for (lane, acc) in acc.iter_mut().enumerate() {
                let w = panel_block_lane(format, block, lane);
                let mut dot = 0i32;
                for h in 0..2 {
                    let half: i32 = (16 * h..16 * h + 16)
                        .map(|j| w.values[j] * i32::from(q[j]))
                        .sum();
                    dot += w.sub[h] * (half - format.offset() * x.half_sums[2 * at + h]);
                }
                *acc = (dot as f32).mul_add(w.d * x.scales[at], *acc);
                if format.has_min() {
                    *acc = w.m.mul_add(x.scaled_sums[at], *acc);
                }
            }
        }
        out[r * ROWS..(r + 1) * ROWS].copy_from_slice(&acc);
    }
}

#[cfg(test)]
mod tests;
