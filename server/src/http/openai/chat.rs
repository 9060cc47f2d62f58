//! OpenAI chat completions: a conversation through the model's chat template, with tools
//! offered and their calls read back; `chat.completion` answers or their chunk streams.

use super::{finish_reason, tool_calls, usage_of, ChatRequest, StreamHeader};
use crate::http::error::{ApiError, Flavor};
use crate::http::generate::{prepare, render_chat, Generated, Prepared};
use crate::http::pipeline::{answer, Answer, Api};
use crate::http::sse::StreamFormat;
use crate::http::state::AppState;
use crate::http::tools::{answer_parts, IdentifiedCall, StreamedCalls, StreamedPiece};
use axum::response::sse::Event as SseEvent;
use axum::response::Response;
use lantern_engine::{Completion, FinishReason, TokenEvent};
use lantern_models::ToolSyntax;
use serde_json::{json, Value};

/// A chat choice's finish reason: `tool_calls` when it ended after calling tools.
fn chat_finish_reason(reason: FinishReason, calls: usize) -> &'static str {
    match finish_reason(reason) {
        "stop" if calls > 0 => "tool_calls",
        other => other,
    }
}

/// A call as OpenAI writes it in `message.tool_calls`, and (with `index`) in stream deltas.
fn tool_call_json(call: &IdentifiedCall, index: Option<usize>) -> Value {
    let mut value = json!({
        "id": call.id, "type": "function",
        "function": {"name": call.call.name, "arguments": call.arguments_json()},
    });
    if let Some(index) = index {
        value["index"] = json!(index);
    }
    value
}

fn chat_logprobs(tokens: &[TokenEvent], model: &crate::http::state::ServingModel) -> Value {
    let text = |id: u32| model.token_text(id);
    json!({"content": tokens.iter().filter(|t| !t.special).map(|t| json!({
        "token": text(t.id),
        "logprob": t.logprob,
        "bytes": text(t.id).into_bytes(),
        "top_logprobs": t.top.iter().map(|(id, lp)| json!({"token": text(*id), "logprob": lp, "bytes": text(*id).into_bytes()})).collect::<Vec<_>>(),
    })).collect::<Vec<_>>()})
}

async fn run_chat(state: &AppState, request: ChatRequest) -> Result<Response, ApiError> {
    let model = state.model()?;
    if request.messages.is_empty() {
        return Err(ApiError::validation(
            "`messages` must not be empty",
            "messages",
        ));
    }
    let common = &request.common;
    let tools = tool_calls::tools(
        common.tools.as_deref(),
        common.tool_choice.as_ref(),
        common.parallel_tool_calls,
    )?;
    let tool_syntax = tools.syntax(&model, "tools")?;
    let messages = tool_calls::chat_messages(&request.messages)?;
    let prompt = render_chat(
        &model,
        messages,
        tools.for_prompt(),
        "this model has no chat template: use /v1/completions",
    )
    .await?;
    let top_logprobs = request.top_logprobs.unwrap_or(0);
    if top_logprobs > 5 {
        return Err(ApiError::validation(
            format!("`top_logprobs` must be at most 5, got {top_logprobs}"),
            "top_logprobs",
        ));
    }
    let top_n = if request.logprobs { top_logprobs } else { 0 };
    let mut params = request
        .common
        .to_params(model.generation.temperature, top_n)?;
    if let Some(grammar) = tool_syntax.and_then(|syntax| tools.grammar(syntax)) {
        if params.grammar.is_some() {
            return Err(ApiError::validation(
                "`response_format` and a `tool_choice` that forces a call cannot both hold the answer",
                "tool_choice",
            ));
        }
        params.grammar = Some((grammar, "tools"));
    }
    let prepared = prepare(state, prompt, params).await?;
    let spelling = ChatAnswer {
        header: request
            .common
            .header("chatcmpl", &model.name, "chat.completion.chunk"),
        logprobs: request.logprobs,
        choices: request.common.choices(),
        tool_syntax,
    };
    answer(state, vec![prepared], request.common.stream, spelling).await
}

/// Chat answers: a `chat.completion` with `n` choices, or its stream of
/// `chat.completion.chunk`s.
struct ChatAnswer {
    header: StreamHeader,
    logprobs: bool,
    choices: usize,
    /// With tools offered: how the model writes calls.
    tool_syntax: Option<ToolSyntax>,
}

impl Answer for ChatAnswer {
    type Stream = ChatStream;

    fn streamed(self, _: &Prepared) -> ChatStream {
        ChatStream {
            header: self.header,
            started: Vec::new(),
            tool_syntax: self.tool_syntax,
            calls: Vec::new(),
        }
    }

    fn collected(self, generated: &[Generated]) -> Value {
        let choices: Vec<Value> = generated
            .iter()
            .enumerate()
            .map(|(index, g)| {
                let (text, calls) = match self.tool_syntax {
                    Some(syntax) => answer_parts(syntax, &g.text, "call_"),
                    None => (g.text.clone(), Vec::new()),
                };
                let mut message = json!({"role": "assistant", "content": text});
                if !calls.is_empty() {
                    if text.is_empty() {
                        message["content"] = Value::Null;
                    }
                    message["tool_calls"] =
                        calls.iter().map(|c| tool_call_json(c, None)).collect();
                }
                json!({
                    "index": index,
                    "message": message,
                    "logprobs": if self.logprobs { chat_logprobs(&g.tokens, &g.model) } else { Value::Null },
                    "finish_reason": chat_finish_reason(g.completion.finish_reason, calls.len()),
                })
            })
            .collect();
        json!({
            "id": self.header.id,
            "object": "chat.completion",
            "created": self.header.created,
            "model": self.header.model,
            "choices": choices,
            "usage": usage_of(generated, self.choices),
        })
    }
}

struct ChatStream {
    header: StreamHeader,
    /// The choices whose first chunk (with the role) has been sent.
    started: Vec<usize>,
    tool_syntax: Option<ToolSyntax>,
    /// Each choice's answer split into text and tool calls (with tools offered).
    calls: Vec<(usize, StreamedCalls)>,
}

impl ChatStream {
    /// `text` of `choice` as deltas: content, or tool calls once complete.
    fn deltas(&mut self, choice: usize, text: &str) -> Vec<Value> {
        let pieces = match self.tool_syntax {
            None => vec![StreamedPiece::Text(text.to_string())],
            Some(syntax) => self.calls_of(choice, syntax).push(text),
        };
        self.deltas_of(choice, pieces)
    }

    fn calls_of(&mut self, choice: usize, syntax: ToolSyntax) -> &mut StreamedCalls {
        let at = match self.calls.iter().position(|(c, _)| *c == choice) {
            Some(at) => at,
            None => {
                self.calls
                    .push((choice, StreamedCalls::new(syntax, "call_")));
                self.calls.len() - 1
            }
        };
        &mut self.calls[at].1
    }

    fn deltas_of(&mut self, choice: usize, pieces: Vec<StreamedPiece>) -> Vec<Value> {
        let mut deltas = Vec::new();
        for piece in pieces {
            let mut delta = match piece {
                StreamedPiece::Text(text) if text.is_empty() => continue,
                StreamedPiece::Text(text) => json!({"content": text}),
                StreamedPiece::Call(index, call) => {
                    json!({"tool_calls": [tool_call_json(&call, Some(index))]})
                }
            };
            if !self.started.contains(&choice) {
                self.started.push(choice);
                delta["role"] = json!("assistant");
            }
            deltas.push(delta);
        }
        deltas
    }

    fn chunk(&self, choice: usize, delta: Value, finish: Option<&str>) -> SseEvent {
        self.header.chunk(
            json!({"index": choice, "delta": delta, "logprobs": null, "finish_reason": finish}),
        )
    }
}

impl StreamFormat for ChatStream {
    fn token(&mut self, choice: usize, token: &TokenEvent) -> Vec<SseEvent> {
        let mut deltas = self.deltas(choice, &token.text);
        // The first chunk of a choice carries the role, even before any text.
        if deltas.is_empty() && !self.started.contains(&choice) {
            self.started.push(choice);
            deltas.push(json!({"role": "assistant", "content": ""}));
        }
        deltas
            .into_iter()
            .map(|delta| self.chunk(choice, delta, None))
            .collect()
    }

    fn end(&mut self, choice: usize, completion: &Completion) -> Vec<SseEvent> {
        let mut deltas = self.deltas(choice, &completion.trailing_text);
        let mut calls = 0;
        if let Some(syntax) = self.tool_syntax {
            let streamed = self.calls_of(choice, syntax);
            let rest = streamed.finish();
            calls = streamed.calls;
            deltas.extend(self.deltas_of(choice, rest));
        }
        let reason = chat_finish_reason(completion.finish_reason, calls);
        let mut events: Vec<SseEvent> = deltas
            .into_iter()
            .map(|delta| self.chunk(choice, delta, None))
            .collect();
        events.push(self.chunk(choice, json!({}), Some(reason)));
        events
    }

    fn finish(&mut self, total: &Completion) -> Vec<SseEvent> {
        self.header.closing(total)
    }

    fn flavor(&self) -> Flavor {
        Flavor::OpenAi
    }
}

/// `POST /v1/chat/completions`.
pub struct ChatCompletions;

impl Api for ChatCompletions {
    const FLAVOR: Flavor = Flavor::OpenAi;
    type Request = ChatRequest;

    async fn run(state: &AppState, request: ChatRequest) -> Result<Response, ApiError> {
        run_chat(state, request).await
    }
}
