//! Building the CPU decoder: every weight read once (GGUF blocks as they are, dense weights
//! widened or kept bf16), Q/K/V and gate/up stacked into one product each, and packed for the
//! kernels; norms, rotary tables and the embedding table beside them.

use super::*;
use crate::decoder::plan::{MatrixPlan, ModelPlan, NormPlan};

fn to_f32_vec(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
}

/// The weight format of packed matrices for a model loaded in `dtype`: bf16 stays bf16 (exact,
/// half the bytes); anything else is widened to f32.
fn weight_format(dtype: DType) -> WeightFormat {
    match dtype {
        DType::BF16 => WeightFormat::Bf16,
        _ => WeightFormat::F32,
    }
}

impl CpuModel {
    pub fn load(config: &DecoderConfig, weights: &dyn WeightSource, dtype: DType) -> Result<Self> {
        let naming = weights.naming();
        let c = config;
        let format = weight_format(dtype);
        let plan = ModelPlan::new(c);
        // Norm weights (the only vectors read here); Gemma's are offsets from one.
        let vector = |p: NormPlan| -> Result<Vec<f32>> {
            let mut weight =
                to_f32_vec(&weights.dense(&naming.weight(p.role, p.layer), &[p.size])?)?;
            if c.norm_weights_offset {
                weight.iter_mut().for_each(|w| *w += 1.0);
            }
            Ok(weight)
        };
        let optional_vector = |p: Option<NormPlan>| p.map(vector).transpose();
        // An (out, in) weight, as blocks when the file stores it in a format the integer
        // kernels take (and it is not to be expanded), else dense; and its bias.
        let matrix = |m: MatrixPlan| {
            let name = naming.weight(m.role, m.layer);
            let (out, inp) = m.out_in;
            if let Some(blocks) = weights.quantized_blocks(&name, m.out_in)? {
                let bias = m
                    .bias
                    .then(|| to_f32_vec(&weights.dense(&bias_name(&name), &[out])?))
                    .transpose()?;
                return Ok((Weight::blocks(blocks), bias));
            }
            match weights.linear(&name, (out, inp), m.bias)? {
                Linear::Dense { weight, bias } => Ok((
                    Weight::Dense(to_f32_vec(&weight)?),
                    bias.as_ref().map(to_f32_vec).transpose()?,
                )),
                Linear::Quantized { .. } => Err(ModelError::Kernels(format!(
                    "{name} is quantized in a format the CPU kernels lack: dequantize the GGUF file or use --kernels portable"
                ))),
            }
        };
        let pack = |(w, bias): (Weight, Option<Vec<f32>>), n: usize, k: usize| -> Result<_> {
            let packed = w.pack(n, k, format)?;
            Ok(match bias {
                Some(b) => packed.with_bias(b),
                None => packed,
            })
        };
        let hidden = c.hidden_size;
        let mut layers = Vec::with_capacity(c.num_layers);
        for l in &plan.layers {
            let (q, qb) = matrix(l.query)?;
            let (k, kb) = matrix(l.key)?;
            let (v, vb) = matrix(l.value)?;
            let qkv_bias = match (qb, kb, vb) {
                (Some(q), Some(k), Some(v)) => Some([q, k, v].concat()),
                _ => None,
            };
            let (q_size, kv_size) = (l.query.out_in.0, l.key.out_in.0);
            let qkv = pack(
                (Weight::stack(vec![q, k, v], hidden), qkv_bias),
                q_size + 2 * kv_size,
                hidden,
            )?;
            let output = matrix(l.output)?;
            let (gate, _) = matrix(l.gate)?;
            let (up, _) = matrix(l.up)?;
            // Gate and up share one product, panel by panel: both quantized (each panel in its
            // own format) or both dense.
            let (gate, up) = match (gate, up) {
                (g @ Weight::Blocks(_), u @ Weight::Blocks(_)) => (g, u),
                (g, u) => (Weight::Dense(g.into_dense()), Weight::Dense(u.into_dense())),
            };
            let down = matrix(l.down)?;
            layers.push(CpuLayer {
                attention_norm: vector(l.attention_norm)?,
                qkv,
                query_norm: optional_vector(l.query_norm)?,
                key_norm: optional_vector(l.key_norm)?,
                output: pack(output, hidden, q_size)?,
                mlp_norm: vector(l.mlp_norm)?,
                gate_up: PackedMatrix::gated(
                    pack((gate, None), c.intermediate_size, hidden)?,
                    pack((up, None), c.intermediate_size, hidden)?,
                    match c.mlp_activation {
                        MlpActivation::Silu => GatedActivation::Silu,
                        MlpActivation::GeluTanh => GatedActivation::GeluTanh,
                    },
                ),
                down: pack(down, hidden, c.intermediate_size)?,
                sliding_window: l.sliding_window,
                post_attention_norm: optional_vector(l.post_attention_norm)?,
                post_mlp_norm: optional_vector(l.post_mlp_norm)?,
                local_rotary: l.local_rotary,
            });
        }
        let embedding_name = naming.weight(plan.embedding.role, 0);
        let vocab_hidden = plan.embedding.out_in;
        // The table: quantized panels read a row at a time when the file stores it so.
        let table = match weights.quantized_blocks(&embedding_name, vocab_hidden)? {
            Some(blocks) => Weight::blocks(blocks),
            None => Weight::Dense(to_f32_vec(
                &weights.dense(&embedding_name, &[c.vocab_size, hidden])?,
            )?),
        };
        let (embedding, lm_head) = if c.tie_word_embeddings {
            let head = table.pack(c.vocab_size, hidden, format)?;
            (Embedding::TiedToHead, head)
        } else {
            let head = pack(matrix(plan.head)?, c.vocab_size, hidden)?;
            let embedding = match table {
                Weight::Dense(values) => Embedding::Table(values),
                blocks => Embedding::Packed(blocks.pack(c.vocab_size, hidden, format)?),
            };
            (embedding, head)
        };
        let pairing = match c.rope.style {
            RotaryStyle::Half => RotaryPairing::Half,
            RotaryStyle::Interleaved => RotaryPairing::Interleaved,
        };
        Ok(Self {
            kernels: CpuKernels::active(),
            embedding,
            layers,
            final_norm: vector(plan.final_norm)?,
            lm_head,
            rotary: rotary_table(&c.rope, c.head_dim, pairing),
            local_rotary: c
                .local_rope
                .as_ref()
                .map(|rope| rotary_table(rope, c.head_dim, pairing)),
            workspace: Workspace::default(),
            adapters: Default::default(),
        })
    }
}

/// The rotary table of `rope`.
fn rotary_table(rope: &RopeConfig, head_dim: usize, pairing: RotaryPairing) -> RotaryTable {
    let frequencies = rotary_frequencies(rope, head_dim);
    RotaryTable::with_long_context(
        frequencies.short,
        frequencies.long,
        frequencies.magnitude,
        pairing,
    )
}
