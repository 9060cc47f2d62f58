//! What goes into the engine (a [`GenerateRequest`]) and what comes out (a stream of
//! [`Event`]s: tokens, then one end).

use crate::constraint::Constraint;
use crate::sampling::SamplingParams;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub struct GenerateRequest {
    pub prompt: Vec<u32>,
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    /// Stop sequences, matched on text; excluded from the output.
    pub stop: Vec<String>,
    /// Keep generating past EOS tokens (benchmarks).
    pub ignore_eos: bool,
    /// Compute each prompt token's log-probability (TGI's `decoder_input_details`, OpenAI's
    /// `echo` with `logprobs`). Such a prompt is computed whole: its cached prefix would
    /// have no logits.
    pub prompt_logprobs: bool,
    /// The grammar the output is held to (compiled by `EngineHandle::constraints`).
    pub constraint: Option<Constraint>,
    /// The LoRA adapter to run under; `None`: the base model.
    pub adapter: Option<crate::adapters::AdapterRef>,
    /// The request's tracing span: what the engine logs about the request goes in it.
    pub span: tracing::Span,
}

impl GenerateRequest {
    pub fn greedy(prompt: Vec<u32>, max_new_tokens: usize) -> Self {
        Self {
            prompt,
            max_new_tokens,
            sampling: SamplingParams::default(),
            stop: Vec::new(),
            ignore_eos: false,
            prompt_logprobs: false,
            constraint: None,
            adapter: None,
            span: tracing::Span::none(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// `max_new_tokens` reached.
    Length,
    /// The model produced an end-of-sequence token.
    EosToken,
    /// A stop sequence matched.
    StopSequence,
    /// Cut by the serving layer's deadline (the engine itself never sets this).
    TimeLimit,
}

impl FinishReason {
    /// TGI's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Length => "length",
            Self::EosToken => "eos_token",
            Self::StopSequence => "stop_sequence",
            Self::TimeLimit => "time_limit",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TokenEvent {
    pub id: u32,
    /// New text; may be empty (a partial character, text held back by a stop sequence, a special token).
    pub text: String,
    /// Log-probability under the model's distribution (before sampling settings).
    pub logprob: f32,
    /// The most likely alternatives, when asked for.
    pub top: Vec<(u32, f32)>,
    /// An EOS or other special token: its text is not part of the output.
    pub special: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub finish_reason: FinishReason,
    /// Text not yet sent with a token (held back, then released at the end).
    pub trailing_text: String,
    pub prompt_tokens: usize,
    /// Of `prompt_tokens`, those whose keys came from the prefix cache.
    pub cached_tokens: usize,
    pub generated_tokens: usize,
    /// Submission to first scheduling.
    pub queue_time: Duration,
    /// Submission to first token.
    pub time_to_first_token: Duration,
    pub total_time: Duration,
    pub seed: u64,
    /// One per prompt token when asked for (`GenerateRequest::prompt_logprobs`), else empty;
    /// the first token, having nothing before it, has none.
    pub prompt_logprobs: Vec<Option<PromptLogprob>>,
}

/// A prompt token's log-probability given the tokens before it, and the likeliest
/// alternatives there (as many as `top_n_tokens`).
#[derive(Debug, Clone, PartialEq)]
pub struct PromptLogprob {
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Token(TokenEvent),
    End(Completion),
    /// The engine failed while running this request; nothing more will come.
    Failed(String),
}
