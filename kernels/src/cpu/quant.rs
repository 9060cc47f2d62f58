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
//! Panel layout. A panel's blocks come in groups: 8 blocks (one super-block) for the K
//! formats, else 1. A group starts with a header of per-row super-block scales (K formats
//! only), then its blocks, each holding the 16 rows' block scales, then the integers:
//! - Q4_0, Q4_1, Q5_0, Q5_1, Q8_0: no header; block scales are the file's f16 `d` of each
//!   row, then (Q4_1, Q5_1) its f16 minimum.
//! - Q4_K, Q5_K: header: each row's f16 `d`, then its f16 `−dmin`; block scales: each row's
//!   6-bit scale `sc`, then 6-bit minimum `m6`, a byte each. The kernels multiply them out
//!   (`d·sc`, `−dmin·m6`), exactly in f32.
//! - Q6_K: header: each row's f16 `d`; block scales: the rows' first-half sub-scales (i8),
//!   then their second-half ones.
//!
//! Integers are grouped by 4 consecutive `k` so that one 64-byte vector holds 16 rows x 4
//! values (`[group][row][4]`, byte `4·row + j` of group `G` holding `k = 4G + j`):
//! - Q4, Q5, Q6_K: the low 4 bits in 4 packed groups of 64 bytes; byte `j` of row `r` in
//!   packed group `g` holds `k = 8g+j` in its low nibble and `k = 8g+4+j` in its high nibble
//!   (so packed group `g` gives groups `2g` and `2g+1`). Then one bit plane per higher bit
//!   (Q5: bit 4; Q6_K: bits 4 and 5): plane `p` is 8 little-endian 64-bit words, bit `i` of
//!   word `G` being bit `4 + p` of byte `i` of group `G`.
//! - Q8_0: signed bytes, 8 groups of 64 bytes.
//!
//! So panels hold as many bits a weight as the file does, but for the K formats' scales laid
//! out per block (Q4_K 4.625 bits against the file's 4.5, Q5_K 5.625 against 5.5, Q6_K the
//! file's 6.5625): the integer kernels stream what llama.cpp's do.
//!
//! A matrix may mix formats panel by panel (a Q4_K_M file's Q, K in Q4_K and V in Q6_K stacked
//! into one product): each panel carries its own format.

use half::f16;

pub use super::quant_formats::{Block32, Encoding, QuantFormat, SplitScales, BLOCK};

/// Output rows per panel.
pub const ROWS: usize = 16;

/// Where things sit in a panel of a format (see the module doc).
impl QuantFormat {
    /// Blocks of 32 per group: the K formats' super-block.
    pub fn group_blocks(self) -> usize {
        self.gguf_block_values() / BLOCK
    }

    /// Bytes of a group's header: the rows' super-block scales (K formats).
    pub fn header_bytes(self) -> usize {
        match self {
            QuantFormat::Q4K | QuantFormat::Q5K => 2 * ROWS * 2,
            QuantFormat::Q6K => ROWS * 2,
            _ => 0,
        }
    }

    /// Bytes of one block's scales (and minimums, or sub-scales).
    fn block_scales_bytes(self) -> usize {
        if self.split_scales() || self.has_sub_scales() {
            2 * ROWS
        } else if self.has_min() {
            2 * ROWS * 2
        } else {
            ROWS * 2
        }
    }

    /// Byte offset of the integers inside a panel block.
    pub fn integers_offset(self) -> usize {
        self.block_scales_bytes()
    }

    /// Byte offset of the bit planes inside a panel block (formats of more than 4 bits).
    pub fn high_bits_offset(self) -> usize {
        self.integers_offset() + ROWS * BLOCK / 2
    }

    /// Bytes of one block of one panel (16 rows), the header aside.
    pub fn panel_block_bytes(self) -> usize {
        self.integers_offset()
            + match self.encoding() {
                Encoding::Nibbles { high_bits } => ROWS * BLOCK / 2 + high_bits * ROWS * BLOCK / 8,
                Encoding::SignedBytes => ROWS * BLOCK,
            }
    }

    /// Bytes of one group: its header and blocks.
    pub fn panel_group_bytes(self) -> usize {
        self.header_bytes() + self.group_blocks() * self.panel_block_bytes()
    }

    /// Bytes of a panel of `blocks` blocks (a whole number of groups).
    pub fn panel_bytes(self, blocks: usize) -> usize {
        blocks / self.group_blocks() * self.panel_group_bytes()
    }

    /// Where block `b`'s group header starts in a panel.
    pub fn header_at(self, b: usize) -> usize {
        b / self.group_blocks() * self.panel_group_bytes()
    }

    /// Where block `b` starts in a panel.
    pub fn block_at(self, b: usize) -> usize {
        self.header_at(b) + self.header_bytes() + b % self.group_blocks() * self.panel_block_bytes()
    }

    /// Writes one row's block `b` (and its group's header) into a panel at `lane`.
    fn write_lane(self, panel: &mut [u8], b: usize, lane: usize, block: &Block32) {
        let half = |value: f32| f16::from_f32(value).to_le_bytes();
        // Exact: every value written as f16 came from the file's f16 bits.
        let header = &mut panel[self.header_at(b)..][..self.header_bytes()];
        match (block.split, self.has_sub_scales()) {
            (Some(split), _) => {
                header[2 * lane..][..2].copy_from_slice(&half(split.super_d));
                header[2 * (ROWS + lane)..][..2].copy_from_slice(&half(split.super_m));
            }
            (None, true) => header[2 * lane..][..2].copy_from_slice(&half(block.d)),
            (None, false) => {}
        }
        let out = &mut panel[self.block_at(b)..][..self.panel_block_bytes()];
        match (block.split, self.has_sub_scales()) {
            (Some(split), _) => {
                out[lane] = split.sc;
                out[ROWS + lane] = split.m6;
            }
            (None, true) => {
                out[lane] = block.sub[0] as i8 as u8;
                out[ROWS + lane] = block.sub[1] as i8 as u8;
            }
            (None, false) => {
                out[2 * lane..][..2].copy_from_slice(&half(block.d));
                if self.has_min() {
                    out[2 * (ROWS + lane)..][..2].copy_from_slice(&half(block.m));
                }
            }
        }
        let values = &block.values;
        match self.encoding() {
            Encoding::Nibbles { high_bits } => {
                let ints = &mut out[self.integers_offset()..];
                for g in 0..4 {
                    for j in 0..4 {
                        let low = values[8 * g + j] as u8 & 0x0F;
                        let high = values[8 * g + 4 + j] as u8 & 0x0F;
                        ints[g * 64 + lane * 4 + j] = low | (high << 4);
                    }
                }
                let planes = &mut out[self.high_bits_offset()..];
                for plane in 0..high_bits {
                    for (k, &value) in values.iter().enumerate() {
                        let (group, bit) = (k / 4, 4 * lane + k % 4);
                        if (value >> (4 + plane)) & 1 == 1 {
                            planes[64 * plane + 8 * group + bit / 8] |= 1 << (bit % 8);
                        }
                    }
                }
            }
            Encoding::SignedBytes => {
                let ints = &mut out[self.integers_offset()..];
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
        let mut rows_of = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let rows = part.rows(k)?;
            if i + 1 < parts.len() && !rows.is_multiple_of(ROWS) {
                return Err(format!(
                    "a stacked part of {rows} rows does not fill whole panels of {ROWS}"
                ));
            }
            rows_of.push(rows);
        }
        // Exactly the bytes the panels take: no growth by doubling, no spare capacity.
        let total = parts
            .iter()
            .zip(&rows_of)
            .map(|(part, rows)| rows.div_ceil(ROWS) * part.format.panel_bytes(blocks))
            .sum();
        let mut panels = Vec::new();
        let mut bytes = Vec::with_capacity(total);
        for (part, &rows) in parts.iter().zip(&rows_of) {
            let format = part.format;
            let gguf_blocks = k / format.gguf_block_values();
            let sub_blocks = format.gguf_block_values() / BLOCK;
            let row_bytes = gguf_blocks * format.gguf_block_bytes();
            let panel_bytes = format.panel_bytes(blocks);
            for first in (0..rows).step_by(ROWS) {
                let start = bytes.len();
                panels.push((format, start));
                bytes.resize(start + panel_bytes, 0);
                let panel = &mut bytes[start..];
                for lane in 0..ROWS.min(rows - first) {
                    let row = &part.data[(first + lane) * row_bytes..][..row_bytes];
                    for (g, gguf) in row.chunks_exact(format.gguf_block_bytes()).enumerate() {
                        for index in 0..sub_blocks {
                            let block = format.decode_gguf_block(gguf, index);
                            format.write_lane(panel, g * sub_blocks + index, lane, &block);
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
            &self.bytes[start..start + format.panel_bytes(self.blocks)],
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
        for (b, values) in out.chunks_exact_mut(BLOCK).enumerate().take(self.blocks) {
            let block = panel_block_lane(format, panel, b, i % ROWS);
            for (j, v) in values.iter_mut().enumerate() {
                *v = format.dequantize(&block, j);
            }
        }
    }
}

/// Lane `lane`'s block `b` in the common form, from a panel.
pub fn panel_block_lane(format: QuantFormat, panel: &[u8], b: usize, lane: usize) -> Block32 {
    let header = &panel[format.header_at(b)..][..format.header_bytes()];
    let block = &panel[format.block_at(b)..][..format.panel_block_bytes()];
    let half_at = |bytes: &[u8], at: usize| f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32();
    let mut decoded = Block32 {
        values: [0; BLOCK],
        d: 0.0,
        m: 0.0,
        sub: [1, 1],
        split: None,
    };
    if format.split_scales() {
        let split = SplitScales {
            super_d: half_at(header, 2 * lane),
            super_m: half_at(header, 2 * (ROWS + lane)),
            sc: block[lane],
            m6: block[ROWS + lane],
        };
        decoded.d = split.super_d * f32::from(split.sc);
        decoded.m = split.super_m * f32::from(split.m6);
        decoded.split = Some(split);
    } else if format.has_sub_scales() {
        decoded.d = half_at(header, 2 * lane);
        decoded.sub = [
            i32::from(block[lane] as i8),
            i32::from(block[ROWS + lane] as i8),
        ];
    } else {
        decoded.d = half_at(block, 2 * lane);
        if format.has_min() {
            decoded.m = half_at(block, 2 * (ROWS + lane));
        }
    }
    let ints = &block[format.integers_offset()..];
    for (k, v) in decoded.values.iter_mut().enumerate() {
        *v = match format.encoding() {
            Encoding::Nibbles { high_bits } => {
                let (g, j, high) = (k / 8, k % 4, (k % 8) >= 4);
                let byte = ints[g * 64 + lane * 4 + j];
                let low = i32::from(if high { byte >> 4 } else { byte & 0x0F });
                let planes = &block[format.high_bits_offset()..];
                let (group, bit) = (k / 4, 4 * lane + k % 4);
                (0..high_bits).fold(low, |value, plane| {
                    let byte = planes[64 * plane + 8 * group + bit / 8];
                    value | (i32::from((byte >> (bit % 8)) & 1) << (4 + plane))
                })
            }
            Encoding::SignedBytes => i32::from(ints[(k / 4) * 64 + lane * 4 + k % 4] as i8),
        };
    }
    decoded
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
    let rows = x.values.len() / (blocks * BLOCK);
    for r in 0..rows {
        let mut acc = [0f32; ROWS];
        for b in 0..blocks {
            let at = r * blocks + b;
            let q = &x.values[at * BLOCK..][..BLOCK];
            for (lane, acc) in acc.iter_mut().enumerate() {
                let w = panel_block_lane(format, panel, b, lane);
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
