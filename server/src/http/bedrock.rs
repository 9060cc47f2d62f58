//! Bedrock's Anthropic Messages body (`{"anthropic_version", "messages", "max_tokens", ...}`)
//! on `/invocations`: response `{"content": [{"type": "text", ...}], "stop_reason", "usage"}`,
//! streamed as Anthropic's `message_start` ... `message_stop` events. Tools offered in
//! `tools` come back as `tool_use` blocks with `stop_reason: "tool_use"`.

use super::error::{ApiError, Flavor};
use super::generate::{prepare, render_chat, Generated, Params, Prepared};
use super::openai::Content;
use super::pipeline::{answer, Answer, Api};
use super::sse::StreamFormat;
use super::state::AppState;
use super::tools::{answer_parts, StreamedCalls, StreamedPiece};
use axum::response::sse::Event as SseEvent;
use axum::response::Response;
use lantern_engine::FieldNames;
use lantern_engine::{Completion, FinishReason, TokenEvent};
use lantern_models::ToolSyntax;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};

mod tool_use;

#[derive(Debug, Deserialize, JsonSchema)]
pub struct MessagesRequest {
    pub anthropic_version: String,
    #[schemars(length(min = 1))]
    pub messages: Vec<tool_use::Message>,
    pub system: Option<Content>,
    #[schemars(range(min = 1))]
    #[serde(deserialize_with = "super::body::whole")]
    pub max_tokens: usize,
    #[schemars(range(min = 0.0))]
    #[serde(default)]
    pub temperature: Option<f64>,
    #[schemars(range(max = 1.0), extend("exclusiveMinimum" = 0.0))]
    #[serde(default)]
    pub top_p: Option<f64>,
    #[schemars(range(min = 1))]
    #[serde(default, deserialize_with = "super::body::whole_opt")]
    pub top_k: Option<usize>,
    #[serde(default)]
    pub stop_sequences: Vec<String>,
    #[serde(default)]
    pub stream: bool,
    /// Tools the model may call.
    pub tools: Option<Vec<tool_use::Tool>>,
    pub tool_choice: Option<tool_use::ToolChoiceField>,
}

/// Why the answer stopped, and the stop sequence that matched; `calls`: tool calls made.
fn stop_reason(c: &Completion, stops: &[String], calls: usize) -> (&'static str, Value) {
    match c.finish_reason {
        FinishReason::Length | FinishReason::TimeLimit => ("max_tokens", Value::Null),
        FinishReason::EosToken | FinishReason::StopSequence if calls > 0 => {
            ("tool_use", Value::Null)
        }
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
    let tools = tool_use::tools(request.tools.as_deref(), request.tool_choice.as_ref())?;
    let tool_syntax = tools.syntax(&model, "tools")?;
    let system = request.system.as_ref().map(Content::text).transpose()?;
    let messages = tool_use::chat_messages(system, &request.messages)?;
    let prompt = render_chat(
        &model,
        messages,
        tools.for_prompt(),
        "this model has no chat template",
    )
    .await?;
    let params = Params {
        fields: FieldNames {
            prompt: "messages",
            max_new_tokens: "max_tokens",
            ..FieldNames::ENGINE
        },
        max_new_tokens: Some(request.max_tokens),
        temperature: Some(request.temperature.unwrap_or(1.0)),
        top_p: request.top_p,
        top_k: request.top_k,
        stop: request.stop_sequences.clone(),
        grammar: tool_syntax
            .and_then(|syntax| tools.grammar(syntax))
            .map(|grammar| (grammar, "tools")),
        ..Params::default()
    };
    let prepared = prepare(state, prompt, params).await?;
    let id = super::ids::fresh_id("msg_");
    let spelling = MessagesAnswer {
        id,
        model: model.name.clone(),
        stops: request.stop_sequences,
        tool_syntax,
    };
    answer(state, vec![prepared], request.stream, spelling).await
}

/// Anthropic Messages answers: one `message`, or its `message_start` ... `message_stop` events.
struct MessagesAnswer {
    id: String,
    model: String,
    stops: Vec<String>,
    /// With tools offered: how the model writes calls.
    tool_syntax: Option<ToolSyntax>,
}

impl Answer for MessagesAnswer {
    type Stream = MessagesStream;

    fn streamed(self, prepared: &Prepared) -> MessagesStream {
        MessagesStream {
            id: self.id,
            model: self.model,
            input_tokens: prepared.prompt_tokens.len(),
            stops: self.stops,
            calls: self
                .tool_syntax
                .map(|syntax| StreamedCalls::new(syntax, "toolu_")),
            open_text: None,
            blocks: 0,
        }
    }

    fn collected(self, generated: &[Generated]) -> Value {
        let Some(generated) = generated.first() else {
            return Value::Null;
        };
        let c = &generated.completion;
        let (text, calls) = match self.tool_syntax {
            Some(syntax) => answer_parts(syntax, &generated.text, "toolu_"),
            None => (generated.text.clone(), Vec::new()),
        };
        let mut content = Vec::new();
        if !text.is_empty() || calls.is_empty() {
            content.push(json!({"type": "text", "text": text}));
        }
        for call in &calls {
            content.push(json!({"type": "tool_use", "id": call.id, "name": call.call.name, "input": call.call.arguments}));
        }
        let (reason, stop) = stop_reason(c, &self.stops, calls.len());
        json!({
            "id": self.id, "type": "message", "role": "assistant", "model": self.model,
            "content": content,
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
    /// The answer split into text and tool calls (with tools offered).
    calls: Option<StreamedCalls>,
    /// The index of the text block being streamed.
    open_text: Option<usize>,
    /// Content blocks started so far.
    blocks: usize,
}

fn named(name: &str, data: Value) -> SseEvent {
    SseEvent::default().event(name).data(data.to_string())
}

impl MessagesStream {
    /// Content blocks for `text`: text deltas into the open text block (opened if needed), a
    /// `tool_use` block per complete call.
    fn blocks_for(&mut self, text: &str) -> Vec<SseEvent> {
        let pieces = match &mut self.calls {
            Some(calls) => calls.push(text),
            None => vec![StreamedPiece::Text(text.to_string())],
        };
        self.events_for(pieces)
    }

    fn events_for(&mut self, pieces: Vec<StreamedPiece>) -> Vec<SseEvent> {
        let mut events = Vec::new();
        for piece in pieces {
            match piece {
                StreamedPiece::Text(text) if text.is_empty() => {}
                StreamedPiece::Text(text) => {
                    let index = self.text_block(&mut events);
                    events.push(named("content_block_delta", json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": text}})));
                }
                StreamedPiece::Call(_, call) => {
                    self.close_text(&mut events);
                    let index = self.blocks;
                    self.blocks += 1;
                    events.push(named("content_block_start", json!({"type": "content_block_start", "index": index,
                        "content_block": {"type": "tool_use", "id": call.id, "name": call.call.name, "input": {}}})));
                    events.push(named("content_block_delta", json!({"type": "content_block_delta", "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": call.arguments_json()}})));
                    events.push(named(
                        "content_block_stop",
                        json!({"type": "content_block_stop", "index": index}),
                    ));
                }
            }
        }
        events
    }

    /// The open text block's index, opening one if none is.
    fn text_block(&mut self, events: &mut Vec<SseEvent>) -> usize {
        if let Some(index) = self.open_text {
            return index;
        }
        let index = self.blocks;
        self.blocks += 1;
        self.open_text = Some(index);
        events.push(named(
            "content_block_start",
            json!({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}}),
        ));
        index
    }

    fn close_text(&mut self, events: &mut Vec<SseEvent>) {
        if let Some(index) = self.open_text.take() {
            events.push(named(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": index}),
            ));
        }
    }
}

impl StreamFormat for MessagesStream {
    fn start(&mut self) -> Vec<SseEvent> {
        let mut events = vec![named(
            "message_start",
            json!({"type": "message_start", "message": {
            "id": self.id, "type": "message", "role": "assistant", "model": self.model, "content": [],
            "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": self.input_tokens, "output_tokens": 0}}}),
        )];
        // Without tools the answer is one text block, opened at once as Anthropic does.
        if self.calls.is_none() {
            self.text_block(&mut events);
        }
        events
    }

    fn token(&mut self, _: usize, token: &TokenEvent) -> Vec<SseEvent> {
        self.blocks_for(&token.text)
    }

    fn end(&mut self, _: usize, completion: &Completion) -> Vec<SseEvent> {
        let mut events = self.blocks_for(&completion.trailing_text);
        let mut calls = 0;
        if let Some(streamed) = &mut self.calls {
            let rest = streamed.finish();
            calls = streamed.calls;
            events.extend(self.events_for(rest));
        }
        if self.blocks == 0 {
            self.text_block(&mut events);
        }
        self.close_text(&mut events);
        let (reason, stop) = stop_reason(completion, &self.stops, calls);
        events.push(named("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": stop}, "usage": {"output_tokens": completion.generated_tokens}})));
        events.push(named("message_stop", json!({"type": "message_stop"})));
        events
    }

    fn flavor(&self) -> Flavor {
        Flavor::Anthropic
    }
}
