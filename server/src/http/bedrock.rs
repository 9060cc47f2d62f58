//! Bedrock's Anthropic Messages body (`{"anthropic_version", "messages", "max_tokens", ...}`)
//! on `/invocations`: response `{"content": [{"type": "text", ...}], "stop_reason", "usage"}`,
//! streamed as Anthropic's `message_start` ... `message_stop` events.

use super::error::{ApiError, Flavor};
use super::generate::{prepare, render_chat, Generated, Params, Prepared, Prompt};
use super::openai::Content;
use super::pipeline::{answer, Answer, Api};
use super::sse::StreamFormat;
use super::state::AppState;
use axum::response::sse::Event as SseEvent;
use axum::response::Response;
use lantern_engine::{Completion, FinishReason, TokenEvent};
use lantern_models::ChatMessage;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Debug, Deserialize, JsonSchema)]
pub struct MessagesRequest {
    pub anthropic_version: String,
    #[schemars(length(min = 1))]
    pub messages: Vec<super::openai::Message>,
    pub system: Option<Content>,
    #[schemars(range(min = 1))]
    #[serde(deserialize_with = "super::body::whole")]
    pub max_tokens: usize,
    #[schemars(range(min = 0.0))]
    #[serde(default, deserialize_with = "super::body::narrow_f32")]
    pub temperature: Option<f32>,
    #[schemars(range(max = 1.0), extend("exclusiveMinimum" = 0.0))]
    #[serde(default, deserialize_with = "super::body::narrow_f32")]
    pub top_p: Option<f32>,
    #[schemars(range(min = 1))]
    #[serde(default, deserialize_with = "super::body::whole_opt")]
    pub top_k: Option<usize>,
    #[serde(default)]
    pub stop_sequences: Vec<String>,
    #[serde(default)]
    pub stream: bool,
}

fn stop_reason(c: &Completion, stops: &[String]) -> (&'static str, Value) {
    match c.finish_reason {
        FinishReason::Length | FinishReason::TimeLimit => ("max_tokens", Value::Null),
        FinishReason::EosToken => ("end_turn", Value::Null),
        // The engine does not say which stop matched; with one stop sequence it is that one.
        FinishReason::StopSequence => (
            "stop_sequence",
            stops
                .first()
                .filter(|_| stops.len() == 1)
                .map_or(Value::Null, |s| json!(s)),
        ),
    }
}

async fn run_messages(state: &AppState, request: MessagesRequest) -> Result<Response, ApiError> {
    tracing::debug!(anthropic_version = %request.anthropic_version, "bedrock messages request");
    let model = state.model()?;
    if request.messages.is_empty() {
        return Err(ApiError::validation(
            "`messages` must not be empty",
            "messages",
        ));
    }
    let mut messages = Vec::new();
    if let Some(system) = &request.system {
        messages.push(ChatMessage::new("system", &system.text()?));
    }
    for m in &request.messages {
        messages.push(ChatMessage::new(&m.role, &m.content.text()?));
    }
    let prompt = render_chat(&model, messages, "this model has no chat template").await?;
    let params = Params {
        max_new_tokens: Some(request.max_tokens),
        temperature: Some(request.temperature.unwrap_or(1.0)),
        top_p: request.top_p,
        top_k: request.top_k,
        stop: request.stop_sequences.clone(),
        templated: true,
        ..Params::default()
    };
    let prepared = prepare(state, Prompt::Text(prompt), params).await?;
    let id = format!(
        "msg_{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let spelling = MessagesAnswer {
        id,
        model: model.name.clone(),
        stops: request.stop_sequences,
    };
    answer(state, vec![prepared], request.stream, spelling).await
}

/// Anthropic Messages answers: one `message`, or its `message_start` ... `message_stop` events.
struct MessagesAnswer {
    id: String,
    model: String,
    stops: Vec<String>,
}

impl Answer for MessagesAnswer {
    type Stream = MessagesStream;

    fn streamed(self, prepared: &Prepared) -> MessagesStream {
        MessagesStream {
            id: self.id,
            model: self.model,
            input_tokens: prepared.prompt_tokens.len(),
            stops: self.stops,
        }
    }

    fn collected(self, generated: &[Generated]) -> Value {
        let Some(generated) = generated.first() else {
            return Value::Null;
        };
        let c = &generated.completion;
        let (reason, stop) = stop_reason(c, &self.stops);
        json!({
            "id": self.id, "type": "message", "role": "assistant", "model": self.model,
            "content": [{"type": "text", "text": generated.text}],
            "stop_reason": reason, "stop_sequence": stop,
            "usage": {"input_tokens": c.prompt_tokens, "output_tokens": c.generated_tokens},
        })
    }
}

/// A Bedrock Messages body on `/invocations`.
pub struct Messages;

impl Api for Messages {
    const FLAVOR: Flavor = Flavor::Anthropic;
    type Request = MessagesRequest;

    async fn run(state: &AppState, request: MessagesRequest) -> Result<Response, ApiError> {
        run_messages(state, request).await
    }
}

struct MessagesStream {
    id: String,
    model: String,
    input_tokens: usize,
    stops: Vec<String>,
}

fn named(name: &str, data: Value) -> SseEvent {
    SseEvent::default().event(name).data(data.to_string())
}

impl StreamFormat for MessagesStream {
    fn start(&mut self) -> Vec<SseEvent> {
        vec![
            named(
                "message_start",
                json!({"type": "message_start", "message": {
                "id": self.id, "type": "message", "role": "assistant", "model": self.model, "content": [],
                "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": self.input_tokens, "output_tokens": 0}}}),
            ),
            named(
                "content_block_start",
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            ),
        ]
    }

    fn token(&mut self, _: usize, token: &TokenEvent) -> Vec<SseEvent> {
        if token.text.is_empty() {
            return Vec::new();
        }
        vec![named(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": token.text}}),
        )]
    }

    fn end(&mut self, _: usize, completion: &Completion) -> Vec<SseEvent> {
        let mut events = Vec::new();
        if !completion.trailing_text.is_empty() {
            events.push(named("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": completion.trailing_text}})));
        }
        let (reason, stop) = stop_reason(completion, &self.stops);
        events.push(named(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ));
        events.push(named("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": stop}, "usage": {"output_tokens": completion.generated_tokens}})));
        events.push(named("message_stop", json!({"type": "message_stop"})));
        events
    }

    fn error(&mut self, message: &str) -> Vec<SseEvent> {
        let error = ApiError::Generation(message.to_string());
        vec![named("error", error.body(Flavor::Anthropic))]
    }
}
