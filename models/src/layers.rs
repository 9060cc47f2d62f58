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

/// `x W^T` with `x` padded with zero rows up to [`min_rows`].
fn batch_invariant_matmul(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    let (rows, _) = x.dims2()?;
    let wanted = min_rows(weight.dim(0)?);
    if rows >= wanted {
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
    style: RotaryStyle,
}

/// Inverse frequencies of one head's rotary embedding (`head_dim / 2`), with scaling applied.
/// In f32, as transformers and candle compute them: f64 would round differently.
pub fn inverse_frequencies(config: &RopeConfig, head_dim: usize) -> Vec<f32> {
    (0..head_dim / 2)
        .map(|i| {
            let freq = 1.0 / (config.theta as f32).powf((2 * i) as f32 / head_dim as f32);
            scale_frequency(f64::from(freq), config.scaling) as f32
        })
        .collect()
}

impl Rotary {
    pub fn new(config: &RopeConfig, head_dim: usize, device: &Device) -> Result<Self> {
        let inv_freq = inverse_frequencies(config, head_dim);
        Ok(Self {
            inv_freq: Tensor::from_vec(inv_freq, (1, head_dim / 2), device)?,
            style: config.style,
        })
    }

    /// Rotates `x` (`(n, heads, head_dim)`), row `i` at position `positions[i]` (`(n,)` f32).
    pub fn apply(&self, x: &Tensor, positions: &Tensor) -> Result<Tensor> {
        let n = positions.dim(0)?;
        let angles = positions.reshape((n, 1))?.broadcast_mul(&self.inv_freq)?;
        let cos = angles.cos()?.to_dtype(x.dtype())?;
        let sin = angles.sin()?.to_dtype(x.dtype())?;
        // candle's rope kernels take (batch, heads, seq, head_dim): the flat batch is one "sequence".
        let x = x.transpose(0, 1)?.unsqueeze(0)?.contiguous()?;
        let rotated = match self.style {
            RotaryStyle::Half => candle_nn::rotary_emb::rope(&x, &cos, &sin)?,
            RotaryStyle::Interleaved => candle_nn::rotary_emb::rope_i(&x, &cos, &sin)?,
        };
        rotated.squeeze(0)?.transpose(0, 1)
    }
}

fn scale_frequency(freq: f64, scaling: RopeScaling) -> f64 {
    match scaling {
        RopeScaling::None => freq,
        RopeScaling::Linear { factor } => freq / factor,
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
        assert_eq!(scale_frequency(1.0, scaling), 1.0);
        let low = 2.0 * std::f64::consts::PI / 100_000.0;
        assert!((scale_frequency(low, scaling) - low / 8.0).abs() < 1e-15);
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
