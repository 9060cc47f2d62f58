//! The decoder executed by the CPU kernels of `lantern_kernels::cpu`: the same layers and
//! toggles as the portable path, with weights packed once at load and every step running on
//! reused buffers inside the kernels' thread pool.
//!
//! Per layer: RMS norm; Q, K and V as one product (with its bias); one pass per row doing the
//! optional q/k norm, rotary from a shared cos/sin table and the K/V cache write; fused paged
//! attention; o_proj adding into the residual; RMS norm; gate and up as one product with SiLU·mul
//! in its epilogue; down_proj adding into the residual. The final norm and the head run only for
//! the rows whose logits are wanted.

use crate::batch::{attention_views, logit_rows, CpuCache, SequenceStep};
use crate::config::{DecoderConfig, MlpActivation, RopeConfig, RotaryStyle};
use crate::error::{ModelError, Result};
use crate::layers::{rotary_frequencies, Linear};
use crate::lora::{LoraAdapter, Projection};
use crate::weights::{bias_name, WeightSource};
use candle_core::{DType, Device, Tensor};
use lantern_kernels::cpu::{
    self, AttentionScratch, AttentionShape, CpuKernels, GatedActivation, KvBlocks, LowRankGroup,
    Output, PackedMatrix, RotaryPairing, RotaryTable, WeightFormat,
};
use lantern_kernels::SequenceAttention;
use lora::{CpuAdapters, LoraBuffers, RowGroups};
use weights::Weight;

mod load;
mod lora;
mod weights;

#[derive(Debug)]
struct CpuLayer {
    attention_norm: Vec<f32>,
    qkv: PackedMatrix,
    query_norm: Option<Vec<f32>>,
    key_norm: Option<Vec<f32>>,
    output: PackedMatrix,
    mlp_norm: Vec<f32>,
    gate_up: PackedMatrix,
    down: PackedMatrix,
    sliding_window: Option<usize>,
    /// Gemma's norms of the attention and MLP outputs, before they join the residual.
    post_attention_norm: Option<Vec<f32>>,
    post_mlp_norm: Option<Vec<f32>>,
    /// Rotates with the local table (Gemma 3's sliding-window layers).
    local_rotary: bool,
}

/// Where token embeddings are read from.
#[derive(Debug)]
enum Embedding {
    /// Row-major `(vocab, hidden)`.
    Table(Vec<f32>),
    /// The rows of the packed head (tied embeddings): no second copy of the matrix.
    TiedToHead,
    /// A quantized table, each row dequantized on lookup.
    Packed(PackedMatrix),
}

/// The phases of a step, for [`crate::Decoder::record_phases`].
pub const PHASES: [&str; 9] = [
    "embed",
    "norms",
    "qkv",
    "rotary+cache",
    "attention",
    "o_proj",
    "gate_up",
    "down",
    "head",
];

/// Time spent per phase while recording is on.
#[derive(Debug, Default, Clone)]
pub struct PhaseTimes {
    pub totals: [std::time::Duration; PHASES.len()],
    pub steps: u64,
}

/// Marks phase boundaries when recording; a no-op otherwise.
struct Stopwatch<'a> {
    times: Option<&'a mut PhaseTimes>,
    last: std::time::Instant,
}

impl Stopwatch<'_> {
    fn lap(&mut self, phase: usize) {
        if let Some(times) = self.times.as_deref_mut() {
            let now = std::time::Instant::now();
            times.totals[phase] += now - self.last;
            self.last = now;
        }
    }
}

/// What every layer of one step reads.
#[derive(Clone, Copy)]
struct Step<'a> {
    config: &'a DecoderConfig,
    steps: &'a [SequenceStep],
    /// Tokens in the flat batch.
    rows: usize,
    /// Each sequence's rows and block table, for attention.
    sequences: &'a [SequenceAttention<'a>],
    rotary: &'a RotaryTable,
    local_rotary: Option<&'a RotaryTable>,
    /// The rows that run under each adapter.
    adapters: &'a RowGroups,
}

/// Buffers a step reuses; they grow to the largest batch seen and stay.
#[derive(Debug, Default)]
struct Workspace {
    phases: Option<PhaseTimes>,
    hidden: Vec<f32>,
    normed: Vec<f32>,
    qkv: Vec<f32>,
    query: Vec<f32>,
    attention: Vec<f32>,
    activated: Vec<f32>,
    /// An attention or MLP output waiting for its norm (Gemma).
    branch: Vec<f32>,
    scratch: Vec<f32>,
    attention_scratch: AttentionScratch,
    lora: LoraBuffers,
}

#[derive(Debug)]
pub(crate) struct CpuModel {
    kernels: CpuKernels,
    embedding: Embedding,
    layers: Vec<CpuLayer>,
    final_norm: Vec<f32>,
    lm_head: PackedMatrix,
    rotary: RotaryTable,
    local_rotary: Option<RotaryTable>,
    workspace: Workspace,
    adapters: CpuAdapters,
}

impl CpuModel {
    /// See [`crate::Decoder::weight_formats`]: each class's formats across all layers, joined
    /// by `+` where they differ (a Q4_K_M file: `q4_k+q6_k`).
    pub fn weight_formats(&self) -> Vec<(&'static str, String)> {
        fn names<'m>(matrices: impl Iterator<Item = &'m PackedMatrix>) -> String {
            let mut all: Vec<&str> = Vec::new();
            for name in matrices.flat_map(PackedMatrix::format_names) {
                if !all.contains(&name) {
                    all.push(name);
                }
            }
            all.join("+")
        }
        let layers = &self.layers;
        let mut formats = vec![
            ("attention_qkv", names(layers.iter().map(|l| &l.qkv))),
            ("attention_output", names(layers.iter().map(|l| &l.output))),
            ("mlp_gate_up", names(layers.iter().map(|l| &l.gate_up))),
            ("mlp_down", names(layers.iter().map(|l| &l.down))),
        ];
        formats.retain(|(_, names)| !names.is_empty());
        formats.push(("head", names(std::iter::once(&self.lm_head))));
        let embedding = match &self.embedding {
            Embedding::Table(_) => "f32".to_string(),
            Embedding::TiedToHead => names(std::iter::once(&self.lm_head)),
            Embedding::Packed(table) => names(std::iter::once(table)),
        };
        formats.push(("embedding", embedding));
        formats
    }

    /// Drops the step buffers, keeping whether phases are timed.
    pub(crate) fn release_workspace(&mut self) {
        self.workspace = Workspace {
            phases: self.workspace.phases.take(),
            ..Workspace::default()
        };
    }

    /// Starts (`true`, from zero) or stops recording time per phase.
    pub fn record_phases(&mut self, on: bool) {
        self.workspace.phases = on.then(PhaseTimes::default);
    }

    pub fn phase_times(&self) -> Option<PhaseTimes> {
        self.workspace.phases.clone()
    }

    pub fn isa(&self) -> lantern_kernels::cpu::Isa {
        self.kernels.isa()
    }

    /// Loads `adapter` for steps to name by `id` (replacing one loaded under it).
    pub fn add_adapter(&mut self, id: u32, adapter: &LoraAdapter) {
        self.adapters.insert(id, adapter, self.layers.len());
    }

    pub fn remove_adapter(&mut self, id: u32) -> bool {
        self.adapters.remove(id)
    }

    pub fn has_adapter(&self, id: u32) -> bool {
        self.adapters.contains(id)
    }

    /// Bytes of the loaded adapters' packed weights.
    pub fn adapter_bytes(&self) -> usize {
        self.adapters.bytes()
    }

    /// Bytes of weights held (packed matrices, norms, embedding table).
    pub fn weight_bytes(&self) -> usize {
        let layers: usize = self
            .layers
            .iter()
            .map(|l| {
                l.qkv.weight_bytes()
                    + l.output.weight_bytes()
                    + l.gate_up.weight_bytes()
                    + l.down.weight_bytes()
            })
            .sum();
        let table = match &self.embedding {
            Embedding::Table(t) => t.len() * 4,
            Embedding::TiedToHead => 0,
            Embedding::Packed(table) => table.weight_bytes(),
        };
        layers + table + self.lm_head.weight_bytes()
    }

    /// See [`crate::Decoder::forward`].
    pub fn forward(
        &mut self,
        config: &DecoderConfig,
        steps: &[SequenceStep],
        cache: &mut CpuCache,
    ) -> Result<Tensor> {
        let logit_rows = logit_rows(steps, config, &cache.shape)?;
        let rows = steps.iter().map(|s| s.tokens.len()).sum();
        let last_position = steps
            .iter()
            .map(|s| s.context_before + s.tokens.len())
            .max();
        if let Some(end) = last_position {
            self.rotary.cover(end.saturating_sub(1));
            if let Some(local) = self.local_rotary.as_mut() {
                local.cover(end.saturating_sub(1));
            }
        }
        // The buffers are taken out for the step (the weights stay borrowed whole beside
        // them) and put back after; a step that panics leaves fresh ones, which are scratch.
        let mut workspace = std::mem::take(&mut self.workspace);
        let ws = &mut workspace;
        let sequences = attention_views(steps);
        let adapters = RowGroups::new(steps.iter().map(|s| (s.adapter, s.tokens.len())));
        let mut phases = ws.phases.take();
        let logits = cpu::install(|| -> Result<Vec<f32>> {
            let mut clock = Stopwatch {
                times: phases.as_mut(),
                last: std::time::Instant::now(),
            };
            self.embed(config, steps, rows, ws);
            clock.lap(0);
            let step = Step {
                config,
                steps,
                rows,
                sequences: &sequences,
                rotary: &self.rotary,
                local_rotary: self.local_rotary.as_ref(),
                adapters: &adapters,
            };
            for (index, (layer, blocks)) in self.layers.iter().zip(&mut cache.layers).enumerate() {
                self.layer(&step, index, layer, blocks, ws, &mut clock)?;
            }
            let logits = self.logits(config, &logit_rows, ws);
            clock.lap(8);
            Ok(logits)
        });
        if let Some(p) = phases.as_mut() {
            p.steps += 1;
        }
        workspace.phases = phases;
        self.workspace = workspace;
        let logits = logits?;
        let rows = logit_rows.len();
        Ok(Tensor::from_vec(
            logits,
            (rows, config.vocab_size),
            &Device::Cpu,
        )?)
    }

    fn embed(
        &self,
        config: &DecoderConfig,
        steps: &[SequenceStep],
        rows: usize,
        ws: &mut Workspace,
    ) {
        let hidden = config.hidden_size;
        ws.hidden.resize(rows * hidden, 0.0);
        let tokens = steps.iter().flat_map(|s| s.tokens.iter());
        for (row, &token) in ws.hidden.chunks_exact_mut(hidden).zip(tokens) {
            let token = token as usize;
            match &self.embedding {
                Embedding::Table(table) => {
                    row.copy_from_slice(&table[token * hidden..(token + 1) * hidden])
                }
                Embedding::TiedToHead => self.lm_head.row(token, row),
                Embedding::Packed(table) => table.row(token, row),
            }
            if let Some(scale) = config.embedding_scale {
                row.iter_mut().for_each(|v| *v *= scale);
            }
        }
    }

    fn layer(
        &self,
        step: &Step<'_>,
        index: usize,
        layer: &CpuLayer,
        blocks: &mut KvBlocks,
        ws: &mut Workspace,
        clock: &mut Stopwatch<'_>,
    ) -> Result<()> {
        let Step {
            config: c,
            steps,
            rows,
            sequences,
            rotary,
            local_rotary,
            adapters,
        } = *step;
        let rotary = match local_rotary {
            Some(local) if layer.local_rotary => local,
            _ => rotary,
        };
        let k = &self.kernels;
        let (hidden, d) = (c.hidden_size, c.head_dim);
        let (q_size, kv_size) = (c.num_heads * d, c.num_kv_heads * d);
        let eps = c.rms_norm_eps as f32;
        let qkv_width = q_size + 2 * kv_size;
        ws.normed.resize(rows * hidden, 0.0);
        ws.qkv.resize(rows * qkv_width, 0.0);
        ws.query.resize(rows * q_size, 0.0);
        ws.attention.resize(rows * q_size, 0.0);
        ws.activated.resize(rows * c.intermediate_size, 0.0);

        k.rms_norm(&ws.hidden, &layer.attention_norm, eps, &mut ws.normed);
        clock.lap(1);
        let qkv_parts = [
            (Projection::Query, 0),
            (Projection::Key, q_size),
            (Projection::Value, q_size + kv_size),
        ];
        let low_rank =
            self.adapters
                .low_rank(k, adapters, index, &qkv_parts, &ws.normed, &mut ws.lora);
        k.matmul_with_low_rank(
            &ws.normed,
            rows,
            &layer.qkv,
            &mut ws.qkv,
            Output::Store,
            &mut ws.scratch,
            &low_rank,
        );
        clock.lap(2);
        // One pass per row: q/k norm, rotary, cache write; queries gathered for attention.
        let mut row = 0;
        for step in steps {
            for i in 0..step.tokens.len() {
                let position = step.context_before + i;
                let qkv = &mut ws.qkv[row * qkv_width..(row + 1) * qkv_width];
                let (q, kv) = qkv.split_at_mut(q_size);
                let (key, value) = kv.split_at_mut(kv_size);
                if let Some(norm) = &layer.query_norm {
                    k.rms_norm_in_place(q, norm, eps);
                }
                if let Some(norm) = &layer.key_norm {
                    k.rms_norm_in_place(key, norm, eps);
                }
                rotary.rotate(q, position);
                rotary.rotate(key, position);
                blocks
                    .write(&step.block_table, position, key, value)
                    .map_err(ModelError::Batch)?;
                ws.query[row * q_size..(row + 1) * q_size].copy_from_slice(q);
                row += 1;
            }
        }
        clock.lap(3);
        let shape = AttentionShape {
            num_heads: c.num_heads,
            num_kv_heads: c.num_kv_heads,
            head_dim: d,
            scale: c.attention_scale as f32,
            sliding_window: layer.sliding_window,
            softcap: c.attention_softcap.map(|cap| cap as f32),
        };
        k.paged_attention(
            blocks,
            &ws.query,
            sequences,
            shape,
            &mut ws.attention,
            &mut ws.attention_scratch,
        )
        .map_err(ModelError::Batch)?;
        clock.lap(4);
        let low_rank = self.adapters.low_rank(
            k,
            adapters,
            index,
            &[(Projection::Output, 0)],
            &ws.attention,
            &mut ws.lora,
        );
        add_to_residual(
            k,
            &ws.attention,
            rows,
            &layer.output,
            layer.post_attention_norm.as_deref(),
            eps,
            Buffers {
                hidden: &mut ws.hidden,
                branch: &mut ws.branch,
                scratch: &mut ws.scratch,
            },
            &low_rank,
        );
        clock.lap(5);
        k.rms_norm(&ws.hidden, &layer.mlp_norm, eps, &mut ws.normed);
        clock.lap(1);
        let ffn = c.intermediate_size;
        let low_rank = self.adapters.low_rank(
            k,
            adapters,
            index,
            &[(Projection::Gate, 0), (Projection::Up, ffn)],
            &ws.normed,
            &mut ws.lora,
        );
        k.matmul_with_low_rank(
            &ws.normed,
            rows,
            &layer.gate_up,
            &mut ws.activated,
            Output::Store,
            &mut ws.scratch,
            &low_rank,
        );
        clock.lap(6);
        let low_rank = self.adapters.low_rank(
            k,
            adapters,
            index,
            &[(Projection::Down, 0)],
            &ws.activated,
            &mut ws.lora,
        );
        add_to_residual(
            k,
            &ws.activated,
            rows,
            &layer.down,
            layer.post_mlp_norm.as_deref(),
            eps,
            Buffers {
                hidden: &mut ws.hidden,
                branch: &mut ws.branch,
                scratch: &mut ws.scratch,
            },
            &low_rank,
        );
        clock.lap(7);
        Ok(())
    }

    /// Final norm and head over the wanted rows only.
    fn logits(&self, c: &DecoderConfig, logit_rows: &[u32], ws: &mut Workspace) -> Vec<f32> {
        let hidden = c.hidden_size;
        let rows = logit_rows.len();
        ws.query.resize(rows * hidden, 0.0);
        for (dst, &r) in ws.query.chunks_exact_mut(hidden).zip(logit_rows) {
            let r = r as usize;
            dst.copy_from_slice(&ws.hidden[r * hidden..(r + 1) * hidden]);
        }
        ws.normed.resize(rows * hidden, 0.0);
        self.kernels.rms_norm(
            &ws.query[..rows * hidden],
            &self.final_norm,
            c.rms_norm_eps as f32,
            &mut ws.normed[..rows * hidden],
        );
        let mut logits = vec![0f32; rows * c.vocab_size];
        self.kernels.matmul(
            &ws.normed[..rows * hidden],
            rows,
            &self.lm_head,
            &mut logits,
            Output::Store,
            &mut ws.scratch,
        );
        if let Some(cap) = c.final_logit_softcap {
            let cap = cap as f32;
            logits.iter_mut().for_each(|v| *v = cap * (*v / cap).tanh());
        }
        logits
    }
}

/// The buffers a residual branch goes through.
struct Buffers<'a> {
    hidden: &'a mut Vec<f32>,
    branch: &'a mut Vec<f32>,
    scratch: &'a mut Vec<f32>,
}

/// `hidden += input W^T (+ low rank)`, or with a post-norm (Gemma) `hidden += norm(input W^T
/// (+ low rank))`.
#[allow(clippy::too_many_arguments)]
fn add_to_residual(
    k: &CpuKernels,
    input: &[f32],
    rows: usize,
    matrix: &PackedMatrix,
    post_norm: Option<&[f32]>,
    eps: f32,
    buffers: Buffers<'_>,
    low_rank: &[LowRankGroup<'_>],
) {
    let Some(norm) = post_norm else {
        k.matmul_with_low_rank(
            input,
            rows,
            matrix,
            buffers.hidden,
            Output::Accumulate,
            buffers.scratch,
            low_rank,
        );
        return;
    };
    buffers.branch.resize(buffers.hidden.len(), 0.0);
    k.matmul_with_low_rank(
        input,
        rows,
        matrix,
        buffers.branch,
        Output::Store,
        buffers.scratch,
        low_rank,
    );
    k.rms_norm_in_place(buffers.branch, norm, eps);
    for (h, b) in buffers.hidden.iter_mut().zip(buffers.branch.iter()) {
        *h += b;
    }
}
