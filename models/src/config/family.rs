//! What each family fixes, whichever file describes the model: one table both config
//! translators (`hf.rs` for `config.json`, `gguf.rs` for GGUF metadata) read, so a family's
//! rules are written once.

use super::{Architecture, MlpActivation, RotaryStyle};

/// A family's fixed rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FamilyRules {
    /// Which layers slide when the file does not list them: `EveryLayer` (Mistral, Phi-3),
    /// none but those the file names (Llama, Qwen: `use_sliding_window` from
    /// `max_window_layers` on), or all but every `n`-th (Gemma 2: 2, Gemma 3: 6).
    pub sliding: SlidingLayers,
    /// Gemma: embeddings scaled by sqrt(hidden size), norms that multiply by `1 + w`, a
    /// GELU (tanh) gate, sandwich norms, the head tied to the embeddings, soft-capping and
    /// `query_pre_attn_scalar` read.
    pub gemma: bool,
    /// Phi-3: Q/K/V and gate/up stored fused, split at load.
    pub fused_projections: bool,
    /// Q and K normalised per head (Qwen 3, Gemma 3).
    pub qk_norm: bool,
    /// Gemma 3: sliding-window layers rotate with their own base.
    pub local_rope: bool,
    /// How llama.cpp's converter stores Q/K rows: permuted for interleaved rotary (Llama,
    /// Mistral), in the Hugging Face layout otherwise.
    pub gguf_rotary: RotaryStyle,
}

/// Which layers use a sliding window when the file says only the window's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlidingLayers {
    EveryLayer,
    /// Only what the file's own settings name.
    AsConfigured,
    /// All layers but every `n`-th (a full-attention layer closes each group of `n`).
    AllButEvery(usize),
}

impl SlidingLayers {
    /// Whether layer `layer` slides under a pattern of one full layer in `n`.
    pub fn pattern_slides(n: usize, layer: usize) -> bool {
        !(layer + 1).is_multiple_of(n.max(1))
    }
}

impl Architecture {
    pub fn rules(self) -> FamilyRules {
        let base = FamilyRules {
            sliding: SlidingLayers::AsConfigured,
            gemma: false,
            fused_projections: false,
            qk_norm: false,
            local_rope: false,
            gguf_rotary: RotaryStyle::Half,
        };
        match self {
            Self::Llama => FamilyRules {
                gguf_rotary: RotaryStyle::Interleaved,
                ..base
            },
            Self::Mistral => FamilyRules {
                sliding: SlidingLayers::EveryLayer,
                gguf_rotary: RotaryStyle::Interleaved,
                ..base
            },
            Self::Qwen2 => base,
            Self::Qwen3 => FamilyRules {
                qk_norm: true,
                ..base
            },
            Self::Phi3 => FamilyRules {
                sliding: SlidingLayers::EveryLayer,
                fused_projections: true,
                ..base
            },
            Self::Gemma2 => FamilyRules {
                sliding: SlidingLayers::AllButEvery(2),
                gemma: true,
                ..base
            },
            Self::Gemma3 => FamilyRules {
                sliding: SlidingLayers::AllButEvery(6),
                gemma: true,
                qk_norm: true,
                local_rope: true,
                ..base
            },
        }
    }
}

impl FamilyRules {
    /// The factor embeddings are multiplied by (Gemma: sqrt of the hidden size).
    pub fn embedding_scale(&self, hidden_size: usize) -> Option<f32> {
        self.gemma.then(|| (hidden_size as f64).sqrt() as f32)
    }

    /// The gate's activation when the file names none.
    pub fn default_activation(&self) -> MlpActivation {
        if self.gemma {
            MlpActivation::GeluTanh
        } else {
            MlpActivation::Silu
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemma_patterns_leave_every_nth_layer_global() {
        let slides = |n| {
            (0..6)
                .map(|layer| SlidingLayers::pattern_slides(n, layer))
                .collect::<Vec<_>>()
        };
        assert_eq!(slides(2), [true, false, true, false, true, false]);
        assert_eq!(slides(6), [true, true, true, true, true, false]);
    }

    #[test]
    fn only_gemma_scales_embeddings_and_gates_with_gelu() {
        for arch in Architecture::ALL {
            let rules = arch.rules();
            let gemma = matches!(arch, Architecture::Gemma2 | Architecture::Gemma3);
            assert_eq!(rules.embedding_scale(256).is_some(), gemma, "{arch:?}");
            assert_eq!(rules.default_activation() == MlpActivation::GeluTanh, gemma);
        }
        assert_eq!(
            Architecture::Gemma2.rules().embedding_scale(256),
            Some(16.0)
        );
    }
}
