//! Kernel bodies written once in plain Rust, `#[inline(always)]`, and compiled once per ISA by
//! `arch/`: inlined into a `#[target_feature]` function they become AVX2 or AVX-512 code; called
//! directly they are the scalar reference.
//!
//! The loops are shaped so that the vectoriser maps lanes to arrays (`[f32; 16]` accumulators,
//! 8-lane partial sums) and never has to reassociate: Rust does not allow floating-point
//! reassociation, so every ISA computes exactly the operations written here, and `mul_add` is a
//! single-rounded fused multiply-add everywhere (a hardware FMA, or libm's correctly rounded
//! `fmaf` on the scalar path). That is why every ISA gives the same bits.

/// Columns of one packed weight panel.
pub const PANEL: usize = 16;
/// Lanes of the fixed-order partial sums used by reductions (dot products, sums).
pub const LANES: usize = 8;

/// A weight element as stored in a packed matrix; widened to f32 exactly before use.
pub trait Weight: Copy + Send + Sync + std::fmt::Debug + 'static {
    const ZERO: Self;
    fn to_f32(self) -> f32;
}

impl Weight for f32 {
    const ZERO: Self = 0.0;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
}

/// A bfloat16 value (the high half of an f32); widening it is exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(transparent)]
pub struct Bf16(pub u16);

impl Bf16 {
    /// Round-to-nearest-even narrowing, as PyTorch and `half` do (NaN stays NaN).
    pub fn from_f32(value: f32) -> Self {
        let bits = value.to_bits();
        if value.is_nan() {
            return Bf16(((bits >> 16) | 0x40) as u16);
        }
        let round = 0x7fff + ((bits >> 16) & 1);
        Bf16((bits.wrapping_add(round) >> 16) as u16)
    }
}

impl Weight for Bf16 {
    const ZERO: Self = Bf16(0);
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f32::from_bits(u32::from(self.0) << 16)
    }
}

/// An IEEE half (a KV-cache element, `--kv-cache-dtype f16`), widened without branches so
/// that the vectoriser keeps it in lanes: the exponent and mantissa bits moved into place
/// and scaled by 2^112 (exact for normal and subnormal values), infinities and NaNs patched.
impl Weight for half::f16 {
    const ZERO: Self = half::f16::ZERO;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        let h = u32::from(self.to_bits());
        let sign = (h & 0x8000) << 16;
        let magnitude = f32::from_bits((h & 0x7fff) << 13) * f32::from_bits(0x7780_0000); // 2^112
        let special = (h & 0x7c00) == 0x7c00;
        let patched = if special {
            0x7f80_0000 | ((h & 0x03ff) << 13)
        } else {
            magnitude.to_bits()
        };
        f32::from_bits(sign | patched)
    }
}

/// f16 to f32, element by element (the scalar path; the x86 ones use the hardware's).
pub fn widen_f16(src: &[half::f16], dst: &mut [f32]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = Weight::to_f32(s);
    }
}

/// A bfloat16 KV-cache element (`--kv-cache-dtype bf16`); widening is exact.
impl Weight for half::bf16 {
    const ZERO: Self = half::bf16::ZERO;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f32::from_bits(u32::from(self.to_bits()) << 16)
    }
}

/// A KV-cache element: narrowed from f32 on write (round to nearest even), widened exactly
/// on read.
pub trait KvElement: Weight + bytemuck::Pod {
    fn from_f32(value: f32) -> Self;
}

impl KvElement for f32 {
    #[inline(always)]
    fn from_f32(value: f32) -> Self {
        value
    }
}

impl KvElement for half::f16 {
    #[inline(always)]
    fn from_f32(value: f32) -> Self {
        half::f16::from_f32(value)
    }
}

impl KvElement for half::bf16 {
    #[inline(always)]
    fn from_f32(value: f32) -> Self {
        half::bf16::from_f32(value)
    }
}

/// The matmul microkernel: `MR` rows of `x` (row-major, `k` columns) times `P` consecutive
/// packed panels (`[k][PANEL]` each). Writes the raw FMA chains, panel `p` rows `r` at
/// `out[p * out_stride + r * PANEL..][..PANEL]`.
///
/// Every output element is `acc = fma(x[r][kk], w[kk][c], acc)` for `kk = 0..k` from +0.0: the
/// numerics contract. The tile shape only changes which elements are computed together.
#[inline(always)]
pub fn tile<W: Weight, const MR: usize, const P: usize>(
    x: &[f32],
    k: usize,
    panels: &[W],
    out: &mut [f32],
    out_stride: usize,
) {
    let rows: [&[f32]; MR] = std::array::from_fn(|r| &x[r * k..(r + 1) * k]);
    let panels: [&[[W; PANEL]]; P] = std::array::from_fn(|p| {
        let (chunks, _) = panels[p * k * PANEL..(p + 1) * k * PANEL].as_chunks::<PANEL>();
        chunks
    });
    let mut acc = [[[0f32; PANEL]; P]; MR];
    for kk in 0..k {
        let mut w = [[0f32; PANEL]; P];
        for p in 0..P {
            let src = &panels[p][kk];
            for c in 0..PANEL {
                w[p][c] = src[c].to_f32();
            }
        }
        for r in 0..MR {
            let a = rows[r][kk];
            for p in 0..P {
                for c in 0..PANEL {
                    acc[r][p][c] = a.mul_add(w[p][c], acc[r][p][c]);
                }
            }
        }
    }
    for p in 0..P {
        for r in 0..MR {
            out[p * out_stride + r * PANEL..][..PANEL].copy_from_slice(&acc[r][p]);
        }
    }
}

/// 1.5·2^23: added to a value below 2^22 in magnitude, it leaves no fraction bits, so one
/// plain IEEE addition rounds to the nearest integer (ties to even), the same on every CPU.
pub const ROUND_SHIFT: f32 = 12_582_912.0;

/// The integer `n` of a sum `n + ROUND_SHIFT`: such a sum lies in [2^23, 2^24), where its low
/// mantissa bits are `n + 2^22`. Integer arithmetic, so loops around it vectorise; a
/// float-to-integer `as` is a saturating conversion that kept them scalar (about 3 ns an
/// element for `exp`).
#[inline(always)]
pub fn shifted_integer(shifted: f32) -> i32 {
    (shifted.to_bits() as i32).wrapping_sub(ROUND_SHIFT.to_bits() as i32)
}

/// `e^x` in f32 from a Cody-Waite reduction and a degree-7 polynomial: within 2 ulp of the true
/// value over the clamped range, branch-free so it vectorises, and the same bits on every ISA.
/// Inputs below -87.3 give about 1e-38 rather than 0 (harmless for softmax and SiLU).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let x = x.clamp(-87.3, 88.3);
    let rounded = x * LOG2_E + ROUND_SHIFT;
    let n = rounded - ROUND_SHIFT;
    let r = n.mul_add(-LN2_LO, n.mul_add(-LN2_HI, x));
    let mut p: f32 = 1.0 / 5040.0;
    for c in [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        p = p.mul_add(r, c);
    }
    let scale = f32::from_bits(((shifted_integer(rounded) + 127) as u32) << 23);
    p * scale
}

/// `gate[i] = gelu(gate[i]) * up[i]`, GELU with the tanh approximation
/// (`0.5 g (1 + tanh(sqrt(2/pi) (g + 0.044715 g^3)))`, as transformers' `gelu_pytorch_tanh`);
/// libm's tanh, so the same bits on every ISA.
pub fn gelu_tanh_mul(gate: &mut [f32], up: &[f32]) {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    for (g, &u) in gate.iter_mut().zip(up) {
        let x = *g;
        let inner = SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x);
        *g = 0.5 * x * (1.0 + inner.tanh()) * u;
    }
}

/// `gate[i] = silu(gate[i]) * up[i]`, SiLU as `g / (1 + e^-g)`.
#[inline(always)]
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + exp(-*g)) * u;
    }
}

#[inline(always)]
fn reduce_lanes(acc: [f32; LANES]) -> f32 {
    ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]))
}

/// Attention scores of `G` query heads (`q`: `G * d`) against a run of keys (`keys`: `n * d`):
/// `scores[g * stride + j] = dot(q_g, k_j) * scale` for `j < n`. `KEYS` keys are done at once so
/// that `G * KEYS` dot products are in flight; each is one dot product in [`LANES`]
/// fixed lanes (element `i` in lane `i % LANES`) reduced by a fixed tree.
#[inline(always)]
pub fn scores<W: Weight, const G: usize, const KEYS: usize>(
    q: &[f32],
    d: usize,
    keys: &[W],
    scale: f32,
    scores: &mut [f32],
    stride: usize,
) {
    let n = keys.len() / d;
    let lanes = d / LANES;
    let q: [&[[f32; LANES]]; G] = std::array::from_fn(|g| q[g * d..(g + 1) * d].as_chunks().0);
    let (keys, _) = keys.as_chunks::<LANES>();
    let mut j = 0;
    while j + KEYS <= n {
        let k: [&[[W; LANES]]; KEYS] =
            std::array::from_fn(|i| &keys[(j + i) * lanes..(j + i + 1) * lanes]);
        let mut acc = [[[0f32; LANES]; KEYS]; G];
        for c in 0..lanes {
            for i in 0..KEYS {
                let kc: [f32; LANES] = widen(&k[i][c]);
                for g in 0..G {
                    let qc: [f32; LANES] = q[g][c];
                    for l in 0..LANES {
                        acc[g][i][l] = qc[l].mul_add(kc[l], acc[g][i][l]);
                    }
                }
            }
        }
        for g in 0..G {
            for i in 0..KEYS {
                scores[g * stride + j + i] = reduce_lanes(acc[g][i]) * scale;
            }
        }
        j += KEYS;
    }
    while j < n {
        let k = &keys[j * lanes..(j + 1) * lanes];
        for g in 0..G {
            let mut acc = [0f32; LANES];
            for c in 0..lanes {
                let (kc, qc) = (widen(&k[c]), q[g][c]);
                for l in 0..LANES {
                    acc[l] = qc[l].mul_add(kc[l], acc[l]);
                }
            }
            scores[g * stride + j] = reduce_lanes(acc) * scale;
        }
        j += 1;
    }
}

#[inline(always)]
fn widen<W: Weight, const N: usize>(values: &[W; N]) -> [f32; N] {
    std::array::from_fn(|l| values[l].to_f32())
}

/// Replaces each score by `e^(s - max)` and returns their sum (fixed lanes, fixed tree).
#[inline(always)]
pub fn exp_and_sum(scores: &mut [f32], max: f32) -> f32 {
    // Two passes over an L1-resident row: a plain map the vectoriser widens fully, then the
    // fixed-lane sum (fused, the lane-wise sum kept the exponentials at half width).
    for s in scores.iter_mut() {
        *s = exp(*s - max);
    }
    let mut acc = [0f32; LANES];
    let (chunks, tail) = scores.as_chunks::<LANES>();
    for chunk in chunks {
        for l in 0..LANES {
            acc[l] += chunk[l];
        }
    }
    for (l, s) in tail.iter().enumerate() {
        acc[l] += *s;
    }
    reduce_lanes(acc)
}

/// `out_g += p[g * stride + j] * v_j` for every value row `j` of the run, in row order, for `G`
/// heads. Columns are done 16 (then 8) at a time with the `G` partial outputs in registers;
/// each output element is still one FMA chain over `j` in order.
#[inline(always)]
pub fn accumulate<W: Weight, const G: usize>(
    probs: &[f32],
    stride: usize,
    d: usize,
    values: &[W],
    out: &mut [f32],
) {
    let n = values.len() / d;
    let p: [&[f32]; G] = std::array::from_fn(|g| &probs[g * stride..g * stride + n]);
    let mut c0 = 0;
    while c0 + 2 * LANES <= d {
        accumulate_columns::<W, G, { 2 * LANES }>(&p, d, values, out, c0);
        c0 += 2 * LANES;
    }
    while c0 + LANES <= d {
        accumulate_columns::<W, G, LANES>(&p, d, values, out, c0);
        c0 += LANES;
    }
}

#[inline(always)]
fn accumulate_columns<V: Weight, const G: usize, const W: usize>(
    p: &[&[f32]; G],
    d: usize,
    values: &[V],
    out: &mut [f32],
    c0: usize,
) {
    let mut acc = [[0f32; W]; G];
    for g in 0..G {
        acc[g] = out[g * d + c0..g * d + c0 + W]
            .try_into()
            .unwrap_or([0.0; W]);
    }
    for (j, value) in values.chunks_exact(d).enumerate() {
        let v: [f32; W] = std::array::from_fn(|l| value[c0 + l].to_f32());
        for g in 0..G {
            let pj = p[g][j];
            for l in 0..W {
                acc[g][l] = pj.mul_add(v[l], acc[g][l]);
            }
        }
    }
    for g in 0..G {
        out[g * d + c0..g * d + c0 + W].copy_from_slice(&acc[g]);
    }
}

/// `Σ e^(x_i - max)` in fixed lanes (log-sum-exp of logits); `x` is not changed.
#[inline(always)]
pub fn sum_exp(x: &[f32], max: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let (chunks, tail) = x.as_chunks::<LANES>();
    for chunk in chunks {
        for l in 0..LANES {
            acc[l] += exp(chunk[l] - max);
        }
    }
    for (l, &v) in tail.iter().enumerate() {
        acc[l] += exp(v - max);
    }
    reduce_lanes(acc)
}

/// Sum of squares in fixed lanes (RMS norm); `x.len()` may be any length.
#[inline(always)]
pub fn sum_squares(x: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let (chunks, tail) = x.as_chunks::<LANES>();
    for chunk in chunks {
        for l in 0..LANES {
            acc[l] = chunk[l].mul_add(chunk[l], acc[l]);
        }
    }
    for (l, &v) in tail.iter().enumerate() {
        acc[l] = v.mul_add(v, acc[l]);
    }
    reduce_lanes(acc)
}

/// `out[i] = x[i] * inv_rms * weight[i]`.
#[inline(always)]
pub fn scale_by_weight(x: &[f32], inv_rms: f32, weight: &[f32], out: &mut [f32]) {
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(weight) {
        *o = v * inv_rms * w;
    }
}
