//! The building blocks of the decoder: a linear layer that is either dense or GGUF-quantized,
//! RMS norm, and rotary embeddings evaluated at arbitrary per-token positions (a flat batch
//! mixes sequences at different positions).

use crate::config::{RopeConfig, RopeScaling, RotaryStyle};
use candle_core::quantized::QMatMul;
use candle_core::{DType, Device, Module, Result, Tensor};

/// `y = x W^T (+ b)` over rows of `x` (`(n, in)` -> `(n, out)`).
#[derive(Debug, Clone)]
pub enum Linear {
    /// `weight` is `(out, in)` in the model's dtype.
    Dense {
        weight: Tensor,
        bias: Option<Tensor>,
    },
    /// GGUF blocks, multiplied without expanding them (candle's `QMatMul`).
    Quantized {
        weight: QMatMul,
        bias: Option<Tensor>,
    },
}

/// candle's CPU matmul picks its kernel by shape: one row (a matrix-vector kernel) or
/// `rows * out <= 256` (a small-matrix kernel) round differently from the blocked kernel that
/// larger products use, and that kernel gives a row the same bits whatever the row count.
/// Padding every product to at least this many rows keeps each row's output independent of
/// how many rows share the call: the same request gives the same tokens alone or batched.
fn min_rows(out_features: usize) -> usize {
    (256 / out_features.max(1) + 1).max(2)
}

/// `x W^T` with `x` padded with zero rows up to [`min_rows`], on the CPU. On a GPU, cuBLAS
/// picks its kernel (and split) by the row count anyway, so padding buys nothing there and
/// costs launches.
fn batch_invariant_matmul(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    let (rows, _) = x.dims2()?;
    let wanted = min_rows(weight.dim(0)?);
    if rows >= wanted || !x.device().is_cpu() {
        return x.matmul(&weight.t()?);
    }
    let padding = Tensor::zeros((wanted - rows, x.dim(1)?), x.dtype(), x.device())?;
    Tensor::cat(&[x, &padding], 0)?
        .matmul(&weight.t()?)?
        .narrow(0, 0, rows)
}

impl Linear {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (y, bias) = match self {
            Self::Dense { weight, bias } => (batch_invariant_matmul(x, weight)?, bias),
            Self::Quantized { weight, bias } => {
                // QMatMul works in f32 on CPU; keep the caller's dtype on the way out.
                let y = weight.forward(&x.to_dtype(DType::F32)?)?;
                (y.to_dtype(x.dtype())?, bias)
            }
        };
        match bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RmsNorm {
    pub weight: Tensor,
    pub eps: f64,
}

impl RmsNorm {
    /// Normalises over the last dimension.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        candle_nn::ops::rms_norm(&x.contiguous()?, &self.weight, self.eps as f32)
    }
}

/// Inverse frequencies of one head's rotary embedding, with scaling applied.
#[derive(Debug, Clone)]
pub struct Rotary {
    inv_freq: Tensor,
    /// LongRoPE: from this position on, these frequencies.
    long: Option<(f32, Tensor)>,
    /// What cos and sin are multiplied by (LongRoPE's attention factor).
    magnitude: f64,
    style: RotaryStyle,
}

/// The rotary frequencies of a position: `short` below `long`'s first position (or always),
/// `long`'s from there on; cos and sin multiplied by `magnitude`.
#[derive(Debug, Clone, PartialEq)]
pub struct RotaryFrequencies {
    pub short: Vec<f32>,
    pub long: Option<(usize, Vec<f32>)>,
    pub magnitude: f32,
}

/// See [`RotaryFrequencies`].
pub fn rotary_frequencies(config: &RopeConfig, head_dim: usize) -> RotaryFrequencies {
    match &config.scaling {
        RopeScaling::LongRope {
            short,
            long,
            original_max_position_embeddings,
            attention_factor,
        } => {
            let divided = |factors: &[f32]| {
                let scaling = RopeScaling::Factors(factors.to_vec());
                inverse_frequencies(&RopeConfig { scaling, ..*config }, head_dim)
            };
            RotaryFrequencies {
                short: divided(short),
                long: Some((*original_max_position_embeddings, divided(long))),
                magnitude: *attention_factor as f32,
            }
        }
        _ => RotaryFrequencies {
            short: inverse_frequencies(config, head_dim),
            long: None,
            magnitude: 1.0,
        },
    }
}

/// Inverse frequencies of one head's rotary embedding (`head_dim / 2`), with scaling applied.
/// In f32, as transformers and candle compute them: f64 would round differently.
pub fn inverse_frequencies(config: &RopeConfig, head_dim: usize) -> Vec<f32> {
    (0..head_dim / 2)
        .map(|i| {
            let freq = 1.0 / (config.theta as f32).powf((2 * i) as f32 / head_dim as f32);
            scale_frequency(f64::from(freq), i, &config.scaling) as f32
        })
        .collect()
}

impl Rotary {
    pub fn new(config: &RopeConfig, head_dim: usize, device: &Device) -> Result<Self> {
        let frequencies = rotary_frequencies(config, head_dim);
        let table = |values: Vec<f32>| Tensor::from_vec(values, (1, head_dim / 2), device);
        Ok(Self {
            inv_freq: table(frequencies.short)?,
            long: match frequencies.long {
                Some((from, values)) => Some((from as f32, table(values)?)),
                None => None,
            },
            magnitude: f64::from(frequencies.magnitude),
            style: config.style,
        })
    }

    /// Rotates `x` (`(n, heads, head_dim)`), row `i` at position `positions[i]` (`(n,)` f32).
    pub fn apply(&self, x: &Tensor, positions: &Tensor) -> Result<Tensor> {
        self.angles(positions, x.dtype())?.rotate(x)
    }

    /// Cos and sin of every row's angles, in `dtype`: computed once per step and shared by
    /// every layer.
    pub fn angles(&self, positions: &Tensor, dtype: DType) -> Result<Angles> {
        let n = positions.dim(0)?;
        let positions = positions.reshape((n, 1))?;
        let mut angles = positions.broadcast_mul(&self.inv_freq)?;
        if let Some((from, long)) = &self.long {
            let long_angles = positions.broadcast_mul(long)?;
            let is_long = positions.ge(*from)?.broadcast_as(angles.shape())?;
            angles = is_long.where_cond(&long_angles, &angles)?;
        }
        let (mut cos, mut sin) = (angles.cos()?, angles.sin()?);
        if self.magnitude != 1.0 {
            cos = (cos * self.magnitude)?;
            sin = (sin * self.magnitude)?;
        }
        Ok(Angles {
            cos: cos.to_dtype(dtype)?,
            sin: sin.to_dtype(dtype)?,
            style: self.style,
        })
    }
}

/// A step's rotary cos and sin, `(n, head_dim / 2)` each.
#[derive(Debug, Clone)]
pub struct Angles {
    cos: Tensor,
    sin: Tensor,
    style: RotaryStyle,
}

impl Angles {
    /// Rotates `x` (`(n, heads, head_dim)`), row `i` by the angles of row `i`.
    pub fn rotate(&self, x: &Tensor) -> Result<Tensor> {
        let (cos, sin) = (&self.cos, &self.sin);
        // candle's rope kernels take (batch, heads, seq, head_dim): the flat batch is one "sequence".
        let x = x.transpose(0, 1)?.unsqueeze(0)?.contiguous()?;
        let rotated = match self.style {
            RotaryStyle::Half => candle_nn::rotary_emb::rope(&x, cos, sin)?,
            RotaryStyle::Interleaved => candle_nn::rotary_emb::rope_i(&x, cos, sin)?,
        };
        rotated.squeeze(0)?.transpose(0, 1)
    }
}

/// The `index`-th frequency of a head, `freq`, scaled.
fn scale_frequency(freq: f64, index: usize, scaling: &RopeScaling) -> f64 {
    match *scaling {
        RopeScaling::None => freq,
        RopeScaling::Linear { factor } => freq / factor,
        // A missing factor cannot happen past `DecoderConfig::validate`; unscaled if it did.
        RopeScaling::Factors(ref factors)
        | RopeScaling::LongRope {
            short: ref factors, ..
        } => freq / factors.get(index).copied().map_or(1.0, f64::from),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings: original,
        } => {
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            let low_freq_wavelen = original / low_freq_factor;
            let high_freq_wavelen = original / high_freq_factor;
            if wavelen < high_freq_wavelen {
                freq
            } else if wavelen > low_freq_wavelen {
                freq / factor
            } else {
                let smooth =
                    (original / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                (1.0 - smooth) * freq / factor + smooth * freq
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows of a product equal the same rows computed inside a large batch, bit for bit, at
    /// every row count: the property the engine's batch invariance rests on.
    #[test]
    fn dense_rows_do_not_depend_on_the_row_count() -> Result<()> {
        let device = Device::Cpu;
        for (inp, out) in [(64, 32), (64, 128), (576, 192), (37, 16), (64, 512)] {
            let linear = Linear::Dense {
                weight: Tensor::randn(0f32, 1., (out, inp), &device)?,
                bias: None,
            };
            let x = Tensor::randn(0f32, 1., (64, inp), &device)?;
            let full = linear.forward(&x)?.to_vec2::<f32>()?;
            for rows in 1..=20 {
                let part = linear.forward(&x.narrow(0, 0, rows)?)?.to_vec2::<f32>()?;
                assert_eq!(part[..], full[..rows], "in {inp} out {out} rows {rows}");
            }
        }
        Ok(())
    }

    #[test]
    fn llama3_scaling_keeps_high_and_divides_low_frequencies() {
        let scaling = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192.0,
        };
        assert_eq!(scale_frequency(1.0, 0, &scaling), 1.0);
        let low = 2.0 * std::f64::consts::PI / 100_000.0;
        assert!((scale_frequency(low, 0, &scaling) - low / 8.0).abs() < 1e-15);
    }

    /// LongRoPE per position: the short factors below the original length, the long ones from
    /// it, cos and sin scaled by the attention factor; the CPU kernels' table agrees.
    #[test]
    fn long_rope_switches_factors_by_position_on_both_paths() -> Result<()> {
        let (short, long) = (vec![1.0f32, 2.0], vec![4.0f32, 8.0]);
        let config = RopeConfig {
            theta: 10_000.0,
            scaling: RopeScaling::LongRope {
                short: short.clone(),
                long: long.clone(),
                original_max_position_embeddings: 10,
                attention_factor: 1.5,
            },
            style: RotaryStyle::Half,
        };
        let rotary = Rotary::new(&config, 4, &Device::Cpu)?;
        let frequencies = rotary_frequencies(&config, 4);
        let mut table = lantern_kernels::cpu::RotaryTable::with_long_context(
            frequencies.short,
            frequencies.long,
            frequencies.magnitude,
            lantern_kernels::cpu::RotaryPairing::Half,
        );
        table.cover(30);
        let base = [1.0f32, 1.0 / 100.0]; // 10000^(-2i/4)
        for position in [0usize, 3, 9, 10, 11, 30] {
            let factors = if position < 10 { &short } else { &long };
            // A head (1, 0, 0, 0) + (0, 1, 0, 0): dimension i pairs with i + 2.
            let x = Tensor::new(&[[[1f32, 1., 0., 0.]]], &Device::Cpu)?;
            let y = rotary.apply(&x, &Tensor::new(&[position as f32], &Device::Cpu)?)?;
            let y: Vec<f32> = y.flatten_all()?.to_vec1()?;
            let mut expected = [0f32; 4];
            for i in 0..2 {
                let angle = position as f32 * (base[i] / factors[i]);
                expected[i] = 1.5 * angle.cos();
                expected[i + 2] = 1.5 * angle.sin();
            }
            let mut on_cpu = vec![1f32, 1., 0., 0.];
            table.rotate(&mut on_cpu, position);
            for i in 0..4 {
                assert!(
                    (y[i] - expected[i]).abs() < 1e-5,
                    "{position}: {y:?} vs {expected:?}"
                );
                assert!(
                    (on_cpu[i] - y[i]).abs() < 1e-6,
                    "{position}: {on_cpu:?} vs {y:?}"
                );
            }
        }
        Ok(())
    }

    #[test]
    fn rotation_at_position_zero_is_identity_and_preserves_norm_elsewhere() -> Result<()> {
        let device = Device::Cpu;
        let config = RopeConfig {
            theta: 10_000.0,
            scaling: RopeScaling::None,
            style: RotaryStyle::Half,
        };
        let rotary = Rotary::new(&config, 8, &device)?;
        let x = Tensor::randn(0f32, 1., (2, 3, 8), &device)?;
        let y = rotary.apply(&x, &Tensor::new(&[0f32, 5.], &device)?)?;
        let same: f32 = (y.get(0)? - x.get(0)?)?.abs()?.max_all()?.to_scalar()?;
        assert!(same < 1e-6);
        let norm = |t: &Tensor| -> Result<f32> { t.sqr()?.sum_all()?.to_scalar() };
        assert!((norm(&y.get(1)?)? - norm(&x.get(1)?)?).abs() < 1e-4);
        Ok(())
    }
}
