//! What the decoder reads, planned once from its config: every matrix's role, shape and bias,
//! every norm's role and size, per layer and for the model's ends. Both executions build
//! their layers from this plan (`portable.rs` as candle tensors, `cpu/load.rs` packed for the
//! kernels), so which weights a family has, and how they are wired, is written once.

use crate::config::DecoderConfig;
use crate::weights::Role;

/// One `(out, in)` matrix: its role (the name the weight source gives it), layer and bias.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MatrixPlan {
    pub role: Role,
    pub layer: usize,
    pub out_in: (usize, usize),
    pub bias: bool,
}

/// One RMS norm's weight vector.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NormPlan {
    pub role: Role,
    pub layer: usize,
    pub size: usize,
}

/// One decoder layer: attention (Q, K, V, output; per-head Q/K norms where the family has
/// them), the gated MLP (gate, up, down), the norms around both (Gemma's sandwich norms too),
/// and its attention span.
#[derive(Debug, Clone)]
pub(crate) struct LayerPlan {
    pub query: MatrixPlan,
    pub key: MatrixPlan,
    pub value: MatrixPlan,
    pub output: MatrixPlan,
    pub gate: MatrixPlan,
    pub up: MatrixPlan,
    pub down: MatrixPlan,
    pub attention_norm: NormPlan,
    pub mlp_norm: NormPlan,
    pub query_norm: Option<NormPlan>,
    pub key_norm: Option<NormPlan>,
    pub post_attention_norm: Option<NormPlan>,
    pub post_mlp_norm: Option<NormPlan>,
    pub sliding_window: Option<usize>,
    /// Rotates with the config's `local_rope` (Gemma 3's sliding-window layers).
    pub local_rotary: bool,
}

/// The whole model: embedding table, layers, final norm and output head (the embedding's
/// role when tied).
#[derive(Debug, Clone)]
pub(crate) struct ModelPlan {
    pub embedding: MatrixPlan,
    pub layers: Vec<LayerPlan>,
    pub final_norm: NormPlan,
    pub head: MatrixPlan,
}

impl ModelPlan {
    pub fn new(c: &DecoderConfig) -> Self {
        let hidden = c.hidden_size;
        let (q_size, kv_size) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
        let layers = (0..c.num_layers)
            .map(|layer| {
                let matrix = |role, out_in, bias| MatrixPlan {
                    role,
                    layer,
                    out_in,
                    bias,
                };
                let norm = |role, size| NormPlan { role, layer, size };
                let qkv_bias = c.attention_bias.qkv;
                let sandwich = |role| c.sandwich_norms.then(|| norm(role, hidden));
                LayerPlan {
                    query: matrix(Role::Query, (q_size, hidden), qkv_bias),
                    key: matrix(Role::Key, (kv_size, hidden), qkv_bias),
                    value: matrix(Role::Value, (kv_size, hidden), qkv_bias),
                    output: matrix(
                        Role::AttentionOutput,
                        (hidden, q_size),
                        c.attention_bias.output,
                    ),
                    gate: matrix(Role::Gate, (c.intermediate_size, hidden), false),
                    up: matrix(Role::Up, (c.intermediate_size, hidden), false),
                    down: matrix(Role::Down, (hidden, c.intermediate_size), false),
                    attention_norm: norm(Role::AttentionNorm, hidden),
                    mlp_norm: norm(
                        if c.sandwich_norms {
                            Role::PreFeedforwardNorm
                        } else {
                            Role::MlpNorm
                        },
                        hidden,
                    ),
                    query_norm: c.qk_norm.then(|| norm(Role::QueryNorm, c.head_dim)),
                    key_norm: c.qk_norm.then(|| norm(Role::KeyNorm, c.head_dim)),
                    post_attention_norm: sandwich(Role::PostAttentionNorm),
                    post_mlp_norm: sandwich(Role::PostFeedforwardNorm),
                    sliding_window: c.sliding_window[layer],
                    local_rotary: c.local_rope.is_some() && c.sliding_window[layer].is_some(),
                }
            })
            .collect();
        let vocab_hidden = (c.vocab_size, hidden);
        let embedding = MatrixPlan {
            role: Role::Embedding,
            layer: 0,
            out_in: vocab_hidden,
            bias: false,
        };
        Self {
            embedding,
            layers,
            final_norm: NormPlan {
                role: Role::FinalNorm,
                layer: 0,
                size: hidden,
            },
            head: MatrixPlan {
                role: if c.tie_word_embeddings {
                    Role::Embedding
                } else {
                    Role::LmHead
                },
                ..embedding
            },
        }
    }
}
