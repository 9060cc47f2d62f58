//! Weight matrices packed for the CPU products: dense panels of [`PANEL`] output columns,
//! `[N/16][K][16]` in f32 or bf16, or GGUF blocks in panels of 16 rows (`quant.rs`); with an
//! optional bias, and gate/up pairs interleaved panel by panel for the SwiGLU epilogue.

use super::generic::{Bf16, Weight, PANEL};
use super::quant::{GgufPart, QuantFormat, QuantPanels};

/// How the weights of a packed matrix are stored. Dense arithmetic is f32 either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    F32,
    /// Half the bytes; bitwise the same results as f32 weights holding the same bf16 values.
    Bf16,
    /// GGUF blocks with the integer product of `quant.rs` (activations quantized per row).
    Quantized(QuantFormat),
}

#[derive(Debug, Clone)]
pub(super) enum PanelData {
    F32(Vec<f32>),
    Bf16(Vec<Bf16>),
    Quantized(QuantPanels),
}

/// What the epilogue does with each output row's chains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Activation {
    None,
    /// Panels alternate gate, up, gate, up...; output `silu(gate) * up`, half the columns.
    SwiGlu,
    /// As `SwiGlu` with GELU (tanh approximation) on the gate (Gemma).
    GeGluTanh,
}

/// The activation of a gated MLP's gate: `act(gate) * up`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatedActivation {
    Silu,
    /// GELU with the tanh approximation (`gelu_pytorch_tanh`).
    GeluTanh,
}

impl Activation {
    /// Gate and up panels interleaved.
    pub(super) fn is_gated(self) -> bool {
        self != Self::None
    }
}

/// A weight matrix `(n, k)` packed for [`super::CpuKernels::matmul`].
#[derive(Debug, Clone)]
pub struct PackedMatrix {
    pub(super) n: usize,
    pub(super) k: usize,
    pub(super) data: PanelData,
    pub(super) bias: Option<Vec<f32>>,
    pub(super) activation: Activation,
}

fn pack_panels<W: Weight>(n: usize, k: usize, value: impl Fn(usize, usize) -> W) -> Vec<W> {
    let panels = n.div_ceil(PANEL);
    let mut data = vec![W::ZERO; panels * k * PANEL];
    for (p, panel) in data.chunks_exact_mut(k * PANEL).enumerate() {
        for (kk, row) in panel.chunks_exact_mut(PANEL).enumerate() {
            for (c, slot) in row.iter_mut().enumerate() {
                let col = p * PANEL + c;
                if col < n {
                    *slot = value(col, kk);
                }
            }
        }
    }
    data
}

impl PackedMatrix {
    /// Packs the row-major `(n, k)` matrix `rows` (`rows[i * k + j]` = `W[i][j]`).
    /// With [`WeightFormat::Bf16`] each value is rounded to bf16 (exact for bf16 checkpoints).
    pub fn pack(rows: &[f32], n: usize, k: usize, format: WeightFormat) -> Self {
        assert_eq!(rows.len(), n * k, "a ({n}, {k}) matrix needs n * k values");
        let data = match format {
            WeightFormat::F32 => PanelData::F32(pack_panels(n, k, |i, j| rows[i * k + j])),
            WeightFormat::Bf16 => {
                PanelData::Bf16(pack_panels(n, k, |i, j| Bf16::from_f32(rows[i * k + j])))
            }
            WeightFormat::Quantized(format) => {
                panic!(
                    "{} weights come from GGUF data: PackedMatrix::quantized",
                    format.name()
                )
            }
        };
        Self {
            n,
            k,
            data,
            bias: None,
            activation: Activation::None,
        }
    }

    /// A GGUF-quantized `(n, k)` matrix from its blocks (`n` rows of `k` values).
    pub fn quantized(format: QuantFormat, data: &[u8], n: usize, k: usize) -> Result<Self, String> {
        Ok(Self {
            n,
            k,
            data: PanelData::Quantized(QuantPanels::from_gguf(format, data, n, k)?),
            bias: None,
            activation: Activation::None,
        })
    }

    /// A matrix of `n` rows stacked from GGUF tensors of several formats (see
    /// [`QuantPanels::from_parts`]: every part but the last fills whole panels of 16 rows).
    pub fn quantized_parts(parts: &[GgufPart], n: usize, k: usize) -> Result<Self, String> {
        let panels = QuantPanels::from_parts(parts, k)?;
        if panels.len() != n.div_ceil(PANEL) {
            return Err(format!(
                "the stacked parts hold {} panels, ({n}, {k}) needs {}",
                panels.len(),
                n.div_ceil(PANEL)
            ));
        }
        Ok(Self {
            n,
            k,
            data: PanelData::Quantized(panels),
            bias: None,
            activation: Activation::None,
        })
    }

    /// Adds a bias of `n` values, applied after each chain.
    pub fn with_bias(mut self, bias: Vec<f32>) -> Self {
        assert_eq!(bias.len(), self.n, "bias length");
        self.bias = Some(bias);
        self
    }

    /// Gate and up projections (each `(n, k)`) as one product whose output is
    /// `silu(x gate^T) * (x up^T)`: `n` columns from one pass over both weights.
    pub fn gate_up(gate: PackedMatrix, up: PackedMatrix) -> Self {
        Self::gated(gate, up, GatedActivation::Silu)
    }

    /// [`Self::gate_up`] with the gate's activation chosen.
    pub fn gated(gate: PackedMatrix, up: PackedMatrix, activation: GatedActivation) -> Self {
        assert_eq!((gate.n, gate.k), (up.n, up.k), "gate and up shapes");
        assert!(gate.bias.is_none() && up.bias.is_none(), "gate/up bias");
        fn interleave<W: Copy>(gate: &[W], up: &[W], panel_len: usize) -> Vec<W> {
            let mut data = Vec::with_capacity(gate.len() * 2);
            for (g, u) in gate.chunks_exact(panel_len).zip(up.chunks_exact(panel_len)) {
                data.extend_from_slice(g);
                data.extend_from_slice(u);
            }
            data
        }
        let panel_len = gate.k * PANEL;
        let data = match (&gate.data, &up.data) {
            (PanelData::F32(g), PanelData::F32(u)) => PanelData::F32(interleave(g, u, panel_len)),
            (PanelData::Bf16(g), PanelData::Bf16(u)) => {
                PanelData::Bf16(interleave(g, u, panel_len))
            }
            (PanelData::Quantized(g), PanelData::Quantized(u)) => PanelData::Quantized(
                QuantPanels::interleave(g, u).unwrap_or_else(|e| panic!("gate/up: {e}")),
            ),
            _ => panic!("gate and up must have the same weight format"),
        };
        Self {
            n: gate.n,
            k: gate.k,
            data,
            bias: None,
            activation: match activation {
                GatedActivation::Silu => Activation::SwiGlu,
                GatedActivation::GeluTanh => Activation::GeGluTanh,
            },
        }
    }

    /// Output columns of a product.
    pub fn out_features(&self) -> usize {
        self.n
    }

    /// Columns of the chains before the activation: `n`, or `2n` for a gate/up pair (the
    /// width of a [`super::matmul::RowDelta`]).
    pub fn width(&self) -> usize {
        if self.activation.is_gated() {
            2 * self.n
        } else {
            self.n
        }
    }

    pub fn in_features(&self) -> usize {
        self.k
    }

    pub fn format(&self) -> WeightFormat {
        match &self.data {
            PanelData::F32(_) => WeightFormat::F32,
            PanelData::Bf16(_) => WeightFormat::Bf16,
            PanelData::Quantized(q) => match q.formats().first() {
                Some(&format) => WeightFormat::Quantized(format),
                None => WeightFormat::F32,
            },
        }
    }

    /// Every format the weights are stored in (a stacked GGUF matrix may mix formats), each
    /// once, by name.
    pub fn format_names(&self) -> Vec<&'static str> {
        match &self.data {
            PanelData::F32(_) => vec!["f32"],
            PanelData::Bf16(_) => vec!["bf16"],
            PanelData::Quantized(q) => q.formats().into_iter().map(QuantFormat::name).collect(),
        }
    }

    /// Bytes of packed weights.
    pub fn weight_bytes(&self) -> usize {
        match &self.data {
            PanelData::F32(d) => d.len() * 4,
            PanelData::Bf16(d) => d.len() * 2,
            PanelData::Quantized(q) => q.bytes.len(),
        }
    }

    /// Number of stored panels (twice the output panels for gate/up).
    pub(super) fn panels(&self) -> usize {
        let per = self.n.div_ceil(PANEL);
        if self.activation.is_gated() {
            2 * per
        } else {
            per
        }
    }

    /// Row `i` of `W` widened to f32: an embedding lookup in a head tied to the embeddings.
    pub fn row(&self, i: usize, out: &mut [f32]) {
        assert!(self.activation == Activation::None && i < self.n && out.len() == self.k);
        let (p, c) = (i / PANEL, i % PANEL);
        let base = p * self.k * PANEL + c;
        match &self.data {
            PanelData::F32(d) => {
                for (kk, o) in out.iter_mut().enumerate() {
                    *o = d[base + kk * PANEL];
                }
            }
            PanelData::Bf16(d) => {
                for (kk, o) in out.iter_mut().enumerate() {
                    *o = d[base + kk * PANEL].to_f32();
                }
            }
            PanelData::Quantized(q) => q.row(i, out),
        }
    }
}
