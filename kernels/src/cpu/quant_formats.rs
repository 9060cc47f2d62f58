//! The GGUF quantization formats the integer kernels serve, and their blocks decoded into
//! one common form: 32 unsigned integers `u` with a scale, a minimum and (Q6_K) two integer
//! sub-scales, which `quant.rs` repacks into panels.
//!
//! - Q4_0, Q4_1, Q5_0, Q5_1, Q8_0: blocks of 32 values with an f16 scale `d` (and an f16
//!   minimum `m` for Q4_1/Q5_1).
//! - Q4_K, Q5_K: super-blocks of 256 values, eight sub-blocks of 32 with 6-bit scales and
//!   minimums under the super-block's f16 `d` and `dmin`. A sub-block is Q4_1/Q5_1 with an f32
//!   scale `d·sc` and minimum `−dmin·m`, both exact in f32 (11 bits times 6).
//! - Q6_K: super-blocks of 256 6-bit values, a signed 8-bit scale per 16 values under one f16
//!   `d`: value = `d·sc·(u − 32)`. The integer scales go into the integer sums (exactly), so a
//!   sub-block of 32 keeps one float scale `d`.

use candle_core::quantized::GgmlDType;
use half::f16;

/// Values per block of the integer product (the sub-block of the K formats).
pub const BLOCK: usize = 32;

/// A GGUF quantization format the integer kernels serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuantFormat {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
}

/// How a format's integers sit in a panel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Unsigned values of 4 + `high_bits` bits: the low 4 as two nibbles a byte, each higher
    /// bit in a bit plane of its own (Q4: 0, Q5: 1, Q6_K: 2).
    Nibbles { high_bits: usize },
    /// One signed value per byte, -128..=127 (Q8_0).
    SignedBytes,
}

/// One block of 32 values in the common form: value `j` is `d·u[j] + m` for formats with a
/// minimum, else `(d·sub[j / 16])·(u[j] − offset)` (`sub` is `[1, 1]` but for Q6_K).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Block32 {
    pub values: [i32; BLOCK],
    pub d: f32,
    pub m: f32,
    pub sub: [i32; 2],
    /// Q4_K/Q5_K: the factors of `d` and `m`, which panels store instead of them.
    pub split: Option<SplitScales>,
}

/// A Q4_K/Q5_K sub-block's scale and minimum as the file holds them: `d = super_d · sc` and
/// `m = super_m · m6` (`super_m` is the super-block's `−dmin`), products exact in f32 (an
/// f16 times a 6-bit integer), so storing the factors loses nothing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SplitScales {
    pub super_d: f32,
    pub super_m: f32,
    pub sc: u8,
    pub m6: u8,
}

impl QuantFormat {
    pub const ALL: [QuantFormat; 8] = [
        QuantFormat::Q4_0,
        QuantFormat::Q4_1,
        QuantFormat::Q5_0,
        QuantFormat::Q5_1,
        QuantFormat::Q8_0,
        QuantFormat::Q4K,
        QuantFormat::Q5K,
        QuantFormat::Q6K,
    ];

    pub fn name(self) -> &'static str {
        match self {
            QuantFormat::Q4_0 => "q4_0",
            QuantFormat::Q4_1 => "q4_1",
            QuantFormat::Q5_0 => "q5_0",
            QuantFormat::Q5_1 => "q5_1",
            QuantFormat::Q8_0 => "q8_0",
            QuantFormat::Q4K => "q4_k",
            QuantFormat::Q5K => "q5_k",
            QuantFormat::Q6K => "q6_k",
        }
    }

    /// The GGUF tensor type of this format.
    pub fn ggml_dtype(self) -> GgmlDType {
        match self {
            QuantFormat::Q4_0 => GgmlDType::Q4_0,
            QuantFormat::Q4_1 => GgmlDType::Q4_1,
            QuantFormat::Q5_0 => GgmlDType::Q5_0,
            QuantFormat::Q5_1 => GgmlDType::Q5_1,
            QuantFormat::Q8_0 => GgmlDType::Q8_0,
            QuantFormat::Q4K => GgmlDType::Q4K,
            QuantFormat::Q5K => GgmlDType::Q5K,
            QuantFormat::Q6K => GgmlDType::Q6K,
        }
    }

    /// The format of a GGUF tensor type, `None` for types without integer kernels (Q2_K,
    /// Q3_K, dense types).
    pub fn from_ggml(dtype: GgmlDType) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.ggml_dtype() == dtype)
    }

    /// Values of one GGUF block: 32, or 256 for the K formats.
    pub fn gguf_block_values(self) -> usize {
        match self {
            QuantFormat::Q4K | QuantFormat::Q5K | QuantFormat::Q6K => 256,
            _ => BLOCK,
        }
    }

    /// Bytes of one GGUF block.
    pub fn gguf_block_bytes(self) -> usize {
        match self {
            QuantFormat::Q4_0 => 18,
            QuantFormat::Q4_1 => 20,
            QuantFormat::Q5_0 => 22,
            QuantFormat::Q5_1 => 24,
            QuantFormat::Q8_0 => 34,
            QuantFormat::Q4K => 144,
            QuantFormat::Q5K => 176,
            QuantFormat::Q6K => 210,
        }
    }

    pub fn encoding(self) -> Encoding {
        match self {
            QuantFormat::Q4_0 | QuantFormat::Q4_1 | QuantFormat::Q4K => {
                Encoding::Nibbles { high_bits: 0 }
            }
            QuantFormat::Q5_0 | QuantFormat::Q5_1 | QuantFormat::Q5K => {
                Encoding::Nibbles { high_bits: 1 }
            }
            QuantFormat::Q6K => Encoding::Nibbles { high_bits: 2 },
            QuantFormat::Q8_0 => Encoding::SignedBytes,
        }
    }

    /// What the stored integer is offset by: value = d·(u − offset).
    pub fn offset(self) -> i32 {
        match self {
            QuantFormat::Q4_0 => 8,
            QuantFormat::Q5_0 => 16,
            QuantFormat::Q6K => 32,
            _ => 0,
        }
    }

    /// value = d·u + m.
    pub fn has_min(self) -> bool {
        matches!(
            self,
            QuantFormat::Q4_1 | QuantFormat::Q5_1 | QuantFormat::Q4K | QuantFormat::Q5K
        )
    }

    /// Scales and minimums held as a super-block factor times a 6-bit integer (Q4_K, Q5_K):
    /// see [`SplitScales`]. The others' are the file's f16 values.
    pub fn split_scales(self) -> bool {
        matches!(self, QuantFormat::Q4K | QuantFormat::Q5K)
    }

    /// Two integer scales per block, one per 16 values (Q6_K).
    pub fn has_sub_scales(self) -> bool {
        self == QuantFormat::Q6K
    }

    /// The common form of sub-block `index` (`0..gguf_block_values() / 32`) of one GGUF block.
    /// The bit layouts are ggml's (as candle's `k_quants` reads them). `block` starts with
    /// the block; bytes past it are ignored.
    pub fn decode_gguf_block(self, block: &[u8], index: usize) -> Block32 {
        let block = &block[..self.gguf_block_bytes()];
        let half_at = |at: usize| f16::from_le_bytes([block[at], block[at + 1]]).to_f32();
        let mut values = [0i32; BLOCK];
        let mut decoded = Block32 {
            values,
            d: half_at(0),
            m: 0.0,
            sub: [1, 1],
            split: None,
        };
        if matches!(self, QuantFormat::Q4_1 | QuantFormat::Q5_1) {
            decoded.m = half_at(2);
        }
        match self {
            QuantFormat::Q4_0 | QuantFormat::Q4_1 => {
                let nibbles = &block[block.len() - 16..];
                for j in 0..16 {
                    values[j] = i32::from(nibbles[j] & 0x0F);
                    values[j + 16] = i32::from(nibbles[j] >> 4);
                }
            }
            QuantFormat::Q5_0 | QuantFormat::Q5_1 => {
                let at = block.len() - 20;
                let high =
                    u32::from_le_bytes([block[at], block[at + 1], block[at + 2], block[at + 3]]);
                let nibbles = &block[at + 4..];
                for j in 0..16 {
                    let bit = |i: usize| (((high >> i) & 1) << 4) as i32;
                    values[j] = i32::from(nibbles[j] & 0x0F) | bit(j);
                    values[j + 16] = i32::from(nibbles[j] >> 4) | bit(j + 16);
                }
            }
            QuantFormat::Q8_0 => {
                for (v, &b) in values.iter_mut().zip(&block[2..]) {
                    *v = i32::from(b as i8);
                }
            }
            QuantFormat::Q4K | QuantFormat::Q5K => {
                // Sub-blocks 2c and 2c+1 share 32 bytes of nibbles: low nibbles, then high.
                let (sc, m6) = k_scale_min(&block[4..16], index);
                let split = SplitScales {
                    super_d: half_at(0),
                    super_m: -half_at(2),
                    sc,
                    m6,
                };
                decoded.d = split.super_d * f32::from(sc);
                decoded.m = split.super_m * f32::from(m6);
                decoded.split = Some(split);
                let (qs, high_bits) = if self == QuantFormat::Q4K {
                    (&block[16..144], None)
                } else {
                    (&block[48..176], Some(&block[16..48]))
                };
                let nibbles = &qs[32 * (index / 2)..][..32];
                for (l, v) in values.iter_mut().enumerate() {
                    let nibble = if index.is_multiple_of(2) {
                        nibbles[l] & 0x0F
                    } else {
                        nibbles[l] >> 4
                    };
                    let fifth = high_bits.map_or(0, |qh| ((qh[l] >> index) & 1) << 4);
                    *v = i32::from(nibble | fifth);
                }
            }
            QuantFormat::Q6K => {
                // Sub-block j: half j/4 of 128 values, quarter j%4 of it. Low 4 bits from
                // `ql` (bytes l or l+32 of the half, low or high nibble), high 2 from `qh`.
                let (half, quarter) = (index / 4, index % 4);
                let ql = &block[64 * half..][..64];
                let qh = &block[128 + 32 * half..][..32];
                for (l, v) in values.iter_mut().enumerate() {
                    let byte = ql[l + 32 * (quarter % 2)];
                    let low = if quarter < 2 { byte & 0x0F } else { byte >> 4 };
                    let high = (qh[l] >> (2 * quarter)) & 3;
                    *v = i32::from(low | (high << 4));
                }
                decoded.d = half_at(208);
                decoded.sub = [
                    i32::from(block[192 + 2 * index] as i8),
                    i32::from(block[192 + 2 * index + 1] as i8),
                ];
            }
        }
        decoded.values = values;
        decoded
    }

    /// Value `j` of a decoded block, computed as candle dequantizes it (same rounding).
    pub fn dequantize(self, block: &Block32, j: usize) -> f32 {
        let u = block.values[j];
        if self.has_min() {
            block.d * u as f32 + block.m
        } else if self.has_sub_scales() {
            block.d * block.sub[j / 16] as f32 * (u - self.offset()) as f32
        } else {
            block.d * (u - self.offset()) as f32
        }
    }

    /// GGUF data (whole blocks) expanded to f32, in order.
    pub fn dequantize_gguf(self, data: &[u8]) -> Vec<f32> {
        let sub_blocks = self.gguf_block_values() / BLOCK;
        let mut out =
            Vec::with_capacity(data.len() / self.gguf_block_bytes() * self.gguf_block_values());
        for block in data.chunks_exact(self.gguf_block_bytes()) {
            for index in 0..sub_blocks {
                let decoded = self.decode_gguf_block(block, index);
                out.extend((0..BLOCK).map(|j| self.dequantize(&decoded, j)));
            }
        }
        out
    }
}

/// The 6-bit scale and minimum of sub-block `j` from the K formats' 12 packed bytes: the
/// first four pairs in the low 6 bits of bytes 0-7, the last four split between the nibbles
/// of bytes 8-11 and the top 2 bits of bytes 0-7.
fn k_scale_min(packed: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (packed[j] & 63, packed[j + 4] & 63)
    } else {
        (
            (packed[j + 4] & 0x0F) | ((packed[j - 4] >> 6) << 4),
            (packed[j + 4] >> 4) | ((packed[j] >> 6) << 4),
        )
    }
}
