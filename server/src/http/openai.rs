//! OpenAI's API on `/v1/*` and through `/invocations`: the request fields and stream framing
//! chat (`openai/chat.rs`) and completions (`openai/completions.rs`) share, and `/v1/models`.
//! `temperature: 0` means greedy, as OpenAI clients expect.

use super::error::{ApiError, Flavor};
use super::generate::{combined, AdapterChoice, Generated, Params};
use super::sse::json_event;
use super::state::AppState;
use axum::extract::State;
use axum::response::sse::Event as SseEvent;
use axum::response::{IntoResponse, Response};
use axum::Json;

mod chat;
mod completions;
mod fields;
mod tool_calls;
pub use chat::ChatCompletions;
pub use completions::{CompletionRequest, Completions};
pub use fields::{ResponseFormat, Unsupported};
use lantern_engine::{Completion, FieldNames, FinishReason};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::{SystemTime, UNIX_EPOCH};
pub use tool_calls::{Message, Tool, ToolChoiceField};

/// `"stop"` as a string or a list.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

/// Message content: a string, or a list of parts of which the text ones are used.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ContentPart {
    /// Only text parts are read (images and audio are refused).
    #[serde(rename = "type")]
    #[schemars(extend("enum" = ["text"]))]
    pub kind: String,
    #[serde(default)]
    pub text: String,
}

impl Content {
    pub fn text(&self) -> Result<String, ApiError> {
        match self {
            Self::Text(text) => Ok(text.clone()),
            Self::Parts(parts) => parts
                .iter()
                .map(|p| match p.kind.as_str() {
                    "text" => Ok(p.text.as_str()),
                    other => Err(ApiError::validation(
                        format!("content part type `{other}` is not supported (text only)"),
                        "messages",
                    )),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(|texts| texts.concat()),
        }
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// Fields shared by chat and text completions.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct Common {
    pub model: Option<String>,
    #[schemars(range(min = 1))]
    #[serde(default, deserialize_with = "super::body::whole_opt")]
    pub max_tokens: Option<usize>,
    #[schemars(range(min = 1))]
    #[serde(default, deserialize_with = "super::body::whole_opt")]
    pub max_completion_tokens: Option<usize>,
    #[schemars(range(min = 0.0))]
    #[serde(default)]
    pub temperature: Option<f64>,
    #[schemars(range(max = 1.0), extend("exclusiveMinimum" = 0.0))]
    #[serde(default)]
    pub top_p: Option<f64>,
    #[schemars(range(min = 1))]
    #[serde(default, deserialize_with = "super::body::whole_opt")]
    pub top_k: Option<usize>,
    #[schemars(range(min = 0.0, max = 1.0))]
    #[serde(default)]
    pub min_p: Option<f64>,
    /// Choices to return per prompt, each sampled with its own seed (`seed + i` when a seed
    /// is given). More than 1 needs `stream: false`.
    #[schemars(range(min = 1, max = 16))]
    #[serde(default, deserialize_with = "super::body::whole_opt")]
    pub n: Option<usize>,
    pub stop: Option<Stop>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    #[serde(default, deserialize_with = "super::body::whole_opt")]
    pub seed: Option<u64>,
    #[schemars(range(min = -2.0, max = 2.0))]
    #[serde(default)]
    pub frequency_penalty: Option<f64>,
    #[schemars(range(min = -2.0, max = 2.0))]
    #[serde(default)]
    pub presence_penalty: Option<f64>,
    #[schemars(extend("exclusiveMinimum" = 0.0))]
    #[serde(default)]
    pub repetition_penalty: Option<f64>,
    #[serde(default)]
    pub ignore_eos: bool,
    /// Token id (as a string) to a bias in [-100, 100] added to its logit.
    pub logit_bias: Option<fields::LogitBias>,
    pub response_format: Option<ResponseFormat>,
    /// Functions the model may call (chat completions only).
    pub tools: Option<Vec<Tool>>,
    pub tool_choice: Option<ToolChoiceField>,
    /// More than one call per answer (default true).
    pub parallel_tool_calls: Option<bool>,
    #[serde(flatten)]
    pub unsupported: Unsupported,
    // Accepted and ignored (README): `user`, `metadata`, `service_tier`, `store`,
    // `reasoning_effort`, and any field OpenAI adds later.
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ChatRequest {
    #[schemars(length(min = 1))]
    pub messages: Vec<Message>,
    #[serde(default)]
    pub logprobs: bool,
    #[schemars(range(max = 5))]
    #[serde(default, deserialize_with = "super::body::whole_opt")]
    pub top_logprobs: Option<usize>,
    #[serde(flatten)]
    pub common: Common,
}

impl Common {
    fn model_name(&self, served: &str) -> String {
        self.model.clone().unwrap_or_else(|| served.to_string())
    }

    /// What every streamed chunk repeats, for a response of `object` type, with a fresh id.
    fn header(&self, id_prefix: &str, served: &str, object: &'static str) -> StreamHeader {
        StreamHeader {
            id: super::ids::fresh_id(&format!("{id_prefix}-")),
            model: self.model_name(served),
            created: now(),
            object,
            include_usage: self
                .stream_options
                .as_ref()
                .is_some_and(|o| o.include_usage),
        }
    }

    fn to_params(
        &self,
        default_temperature: Option<f64>,
        top_n: usize,
    ) -> Result<Params, ApiError> {
        self.unsupported.check()?;
        if let Some(n) = self.n.filter(|n| !(1..=16).contains(n)) {
            return Err(ApiError::validation(
                format!("`n` must be between 1 and 16, got {n}"),
                "n",
            ));
        }
        // The limits (engine's `Limits::check`) name the field the client set.
        let fields = FieldNames {
            prompt: "messages",
            max_new_tokens: if self.max_completion_tokens.is_some() {
                "max_completion_tokens"
            } else {
                "max_tokens"
            },
            top_n_tokens: "top_logprobs",
        };
        Ok(Params {
            adapter: self
                .model
                .clone()
                .map_or(AdapterChoice::Base, AdapterChoice::Model),
            fields,
            max_new_tokens: self.max_completion_tokens.or(self.max_tokens),
            temperature: Some(
                self.temperature
                    .unwrap_or(default_temperature.unwrap_or(1.0)),
            ),
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            frequency_penalty: self.frequency_penalty,
            presence_penalty: self.presence_penalty,
            repetition_penalty: self.repetition_penalty,
            seed: self.seed,
            stop: match &self.stop {
                None => Vec::new(),
                Some(Stop::One(s)) => vec![s.clone()],
                Some(Stop::Many(s)) => s.clone(),
            },
            top_n_tokens: Some(top_n),
            ignore_eos: self.ignore_eos,
            logit_bias: match &self.logit_bias {
                Some(bias) => bias.entries()?,
                None => Vec::new(),
            },
            samples: self.choices(),
            grammar: match &self.response_format {
                Some(format) => format.grammar()?.map(|g| (g, "response_format")),
                None => None,
            },
            ..Params::default()
        })
    }

    /// Choices per prompt (`n`).
    fn choices(&self) -> usize {
        self.n.unwrap_or(1)
    }
}

fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Length | FinishReason::TimeLimit => "length",
        FinishReason::EosToken | FinishReason::StopSequence => "stop",
    }
}

/// Usage of a whole response: each prompt counted once, every choice's tokens.
fn usage_of(generated: &[Generated], samples: usize) -> Value {
    combined(generated.iter().map(|g| &g.completion), samples).map_or(Value::Null, |c| usage(&c))
}

fn usage(c: &Completion) -> Value {
    json!({
        "prompt_tokens": c.prompt_tokens,
        "completion_tokens": c.generated_tokens,
        "total_tokens": c.prompt_tokens + c.generated_tokens,
        "prompt_tokens_details": {"cached_tokens": c.cached_tokens},
    })
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What every chunk of an OpenAI stream repeats, and how such a stream ends.
struct StreamHeader {
    id: String,
    model: String,
    created: u64,
    object: &'static str,
    include_usage: bool,
}

impl StreamHeader {
    fn chunk(&self, choice: Value) -> SseEvent {
        json_event(&json!({
            "id": self.id, "object": self.object, "created": self.created, "model": self.model,
            "choices": [choice],
        }))
    }

    /// After every choice's last chunk: usage when asked for
    /// (`stream_options.include_usage`), then `[DONE]`.
    fn closing(&self, completion: &Completion) -> Vec<SseEvent> {
        let mut events = Vec::new();
        if self.include_usage {
            events.push(json_event(&json!({
                "id": self.id, "object": self.object, "created": self.created, "model": self.model,
                "choices": [], "usage": usage(completion),
            })));
        }
        events.push(SseEvent::default().data("[DONE]"));
        events
    }
}

pub async fn models(State(state): State<AppState>) -> Response {
    match state.model() {
        Ok(model) => {
            // vLLM's listing: the base, then each adapter with the base as its parent.
            let base = json!({"id": model.name, "object": "model", "created": 0, "owned_by": "lantern", "root": model.name, "parent": null});
            let adapters = model.adapters.list().into_iter().map(|listed| {
                json!({"id": listed.adapter.name, "object": "model", "created": 0, "owned_by": "lantern", "root": listed.src, "parent": model.name})
            });
            let data: Vec<Value> = std::iter::once(base).chain(adapters).collect();
            Json(json!({"object": "list", "data": data})).into_response()
        }
        Err(e) => e.into_response_as(Flavor::OpenAi),
    }
}
