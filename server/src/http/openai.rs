//! OpenAI's chat completions, completions and models, on `/v1/*` and through `/invocations`.
//! `temperature: 0` means greedy, as OpenAI clients expect; `n` > 1 is refused.

use super::error::{ApiError, Flavor};
use super::generate::{prepare, render_chat, Generated, Params, Prepared};
use super::pipeline::{answer, Answer, Api};
use super::sse::{json_event, StreamFormat};
use super::state::AppState;
use axum::extract::State;
use axum::response::sse::Event as SseEvent;
use axum::response::{IntoResponse, Response};
use axum::Json;
use lantern_engine::{Completion, FinishReason, TokenEvent};
use lantern_models::ChatMessage;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::{SystemTime, UNIX_EPOCH};

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
pub struct Message {
    pub role: String,
    pub content: Content,
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
    #[serde(default, deserialize_with = "super::body::narrow_f32")]
    pub temperature: Option<f32>,
    #[schemars(range(max = 1.0), extend("exclusiveMinimum" = 0.0))]
    #[serde(default, deserialize_with = "super::body::narrow_f32")]
    pub top_p: Option<f32>,
    #[schemars(range(min = 1))]
    #[serde(default, deserialize_with = "super::body::whole_opt")]
    pub top_k: Option<usize>,
    #[schemars(range(min = 0.0, max = 1.0))]
    #[serde(default, deserialize_with = "super::body::narrow_f32")]
    pub min_p: Option<f32>,
    /// Only 1: one choice per request.
    #[schemars(range(min = 1, max = 1))]
    #[serde(default, deserialize_with = "super::body::whole_opt")]
    pub n: Option<usize>,
    pub stop: Option<Stop>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    #[serde(default, deserialize_with = "super::body::whole_opt")]
    pub seed: Option<u64>,
    #[schemars(range(min = -2.0, max = 2.0))]
    #[serde(default, deserialize_with = "super::body::narrow_f32")]
    pub frequency_penalty: Option<f32>,
    #[schemars(range(min = -2.0, max = 2.0))]
    #[serde(default, deserialize_with = "super::body::narrow_f32")]
    pub presence_penalty: Option<f32>,
    #[schemars(extend("exclusiveMinimum" = 0.0))]
    #[serde(default, deserialize_with = "super::body::narrow_f32")]
    pub repetition_penalty: Option<f32>,
    #[serde(default)]
    pub ignore_eos: bool,
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

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum PromptField {
    One(#[schemars(length(min = 1))] String),
    /// One prompt per request: a list of exactly one.
    Many(#[schemars(length(min = 1, max = 1), inner(length(min = 1)))] Vec<String>),
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct CompletionRequest {
    pub prompt: PromptField,
    /// Number of alternatives to report per token (legacy completions API).
    #[schemars(range(max = 5))]
    #[serde(default, deserialize_with = "super::body::whole_opt")]
    pub logprobs: Option<usize>,
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
            id: response_id(id_prefix),
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
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::validation(
                "`n` other than 1 is not supported: send several requests",
                "n",
            ));
        }
        for (name, value) in [
            ("max_tokens", self.max_tokens),
            ("max_completion_tokens", self.max_completion_tokens),
        ] {
            if value == Some(0) {
                return Err(ApiError::validation(
                    format!("`{name}` must be at least 1"),
                    name,
                ));
            }
        }
        Ok(Params {
            max_new_tokens: self.max_completion_tokens.or(self.max_tokens),
            temperature: Some(
                self.temperature
                    .unwrap_or(default_temperature.unwrap_or(1.0) as f32),
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
            ..Params::default()
        })
    }
}

fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Length | FinishReason::TimeLimit => "length",
        FinishReason::EosToken | FinishReason::StopSequence => "stop",
    }
}

fn usage(c: &Completion) -> Value {
    json!({"prompt_tokens": c.prompt_tokens, "completion_tokens": c.generated_tokens, "total_tokens": c.prompt_tokens + c.generated_tokens})
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn response_id(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{prefix}-{nanos:x}")
}

fn chat_logprobs(tokens: &[TokenEvent], model: &super::state::ServingModel) -> Value {
    let text = |id: u32| {
        model
            .tokenizer
            .tokenizer
            .decode(&[id], false)
            .unwrap_or_default()
    };
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
    let messages = request
        .messages
        .iter()
        .map(|m| Ok(ChatMessage::new(&m.role, &m.content.text()?)))
        .collect::<Result<Vec<_>, ApiError>>()?;
    let prompt = render_chat(
        &model,
        messages,
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
    params.templated = true;
    let prepared = prepare(state, &prompt, params).await?;
    let spelling = ChatAnswer {
        header: request
            .common
            .header("chatcmpl", &model.name, "chat.completion.chunk"),
        logprobs: request.logprobs,
    };
    answer(state, prepared, request.common.stream, spelling).await
}

/// Chat answers: a `chat.completion`, or its stream of `chat.completion.chunk`s.
struct ChatAnswer {
    header: StreamHeader,
    logprobs: bool,
}

impl Answer for ChatAnswer {
    type Stream = ChatStream;

    fn streamed(self, _: &Prepared) -> ChatStream {
        ChatStream {
            header: self.header,
            started: false,
        }
    }

    fn collected(self, generated: &Generated) -> Value {
        let c = &generated.completion;
        json!({
            "id": self.header.id,
            "object": "chat.completion",
            "created": self.header.created,
            "model": self.header.model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": generated.text},
                "logprobs": if self.logprobs { chat_logprobs(&generated.tokens, &generated.model) } else { Value::Null },
                "finish_reason": finish_reason(c.finish_reason),
            }],
            "usage": usage(c),
        })
    }
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

    /// The last chunk, then usage when asked for (`stream_options.include_usage`), then `[DONE]`.
    fn closing(&self, last_choice: Value, completion: &Completion) -> Vec<SseEvent> {
        let mut events = vec![self.chunk(last_choice)];
        if self.include_usage {
            events.push(json_event(&json!({
                "id": self.id, "object": self.object, "created": self.created, "model": self.model,
                "choices": [], "usage": usage(completion),
            })));
        }
        events.push(SseEvent::default().data("[DONE]"));
        events
    }

    fn error(&self, message: &str) -> Vec<SseEvent> {
        let error = ApiError::Generation(message.to_string());
        vec![json_event(&error.body(Flavor::OpenAi))]
    }
}

struct ChatStream {
    header: StreamHeader,
    started: bool,
}

impl StreamFormat for ChatStream {
    fn token(&mut self, token: &TokenEvent) -> Vec<SseEvent> {
        if token.text.is_empty() && self.started {
            return Vec::new();
        }
        let delta = if self.started {
            json!({"content": token.text})
        } else {
            json!({"role": "assistant", "content": token.text})
        };
        self.started = true;
        vec![self
            .header
            .chunk(json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": null}))]
    }

    fn end(&mut self, completion: &Completion) -> Vec<SseEvent> {
        let last = json!({"index": 0, "delta": {"content": completion.trailing_text}, "logprobs": null,
                          "finish_reason": finish_reason(completion.finish_reason)});
        self.header.closing(last, completion)
    }

    fn error(&mut self, message: &str) -> Vec<SseEvent> {
        self.header.error(message)
    }
}

async fn run_completion(
    state: &AppState,
    request: CompletionRequest,
) -> Result<Response, ApiError> {
    let model = state.model()?;
    let prompt = match request.prompt {
        PromptField::One(p) => p,
        PromptField::Many(mut many) if many.len() == 1 => many.remove(0),
        PromptField::Many(_) => {
            return Err(ApiError::validation(
                "a list of several prompts is not supported: send one per request",
                "prompt",
            ))
        }
    };
    let mut params = request
        .common
        .to_params(model.generation.temperature, request.logprobs.unwrap_or(0))?;
    params.max_new_tokens = params.max_new_tokens.or(Some(16)); // OpenAI's documented default
    let prepared = prepare(state, &prompt, params).await?;
    let spelling = CompletionAnswer {
        header: request
            .common
            .header("cmpl", &model.name, "text_completion"),
    };
    answer(state, prepared, request.common.stream, spelling).await
}

/// Completion answers: a `text_completion`, streamed as chunks of the same object type.
struct CompletionAnswer {
    header: StreamHeader,
}

impl Answer for CompletionAnswer {
    type Stream = CompletionStream;

    fn streamed(self, _: &Prepared) -> CompletionStream {
        CompletionStream {
            header: self.header,
        }
    }

    fn collected(self, generated: &Generated) -> Value {
        let c = &generated.completion;
        json!({
            "id": self.header.id, "object": "text_completion", "created": self.header.created,
            "model": self.header.model,
            "choices": [{"index": 0, "text": generated.text, "logprobs": null, "finish_reason": finish_reason(c.finish_reason)}],
            "usage": usage(c),
        })
    }
}

struct CompletionStream {
    header: StreamHeader,
}

impl StreamFormat for CompletionStream {
    fn token(&mut self, token: &TokenEvent) -> Vec<SseEvent> {
        if token.text.is_empty() {
            return Vec::new();
        }
        vec![self.header.chunk(
            json!({"index": 0, "text": token.text, "logprobs": null, "finish_reason": null}),
        )]
    }

    fn end(&mut self, completion: &Completion) -> Vec<SseEvent> {
        let last = json!({"index": 0, "text": completion.trailing_text, "logprobs": null,
                          "finish_reason": finish_reason(completion.finish_reason)});
        self.header.closing(last, completion)
    }

    fn error(&mut self, message: &str) -> Vec<SseEvent> {
        self.header.error(message)
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

/// `POST /v1/completions`.
pub struct Completions;

impl Api for Completions {
    const FLAVOR: Flavor = Flavor::OpenAi;
    type Request = CompletionRequest;

    async fn run(state: &AppState, request: CompletionRequest) -> Result<Response, ApiError> {
        run_completion(state, request).await
    }
}

pub async fn models(State(state): State<AppState>) -> Response {
    match state.model() {
        Ok(model) => Json(json!({"object": "list", "data": [{"id": model.name, "object": "model", "created": 0, "owned_by": "lantern"}]})).into_response(),
        Err(e) => e.into_response_as(Flavor::OpenAi),
    }
}
