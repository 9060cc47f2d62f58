//! OpenAI's completions and models (chat completions in `openai/chat.rs`), on `/v1/*` and
//! through `/invocations`; the request fields and stream framing both share.
//! `temperature: 0` means greedy, as OpenAI clients expect.

use super::error::{ApiError, Flavor};
use super::generate::{combined, prepare, Generated, Params, Prepared, Prompt};
use super::pipeline::{answer, Answer, Api};
use super::sse::{json_event, StreamFormat};
use super::state::AppState;
use axum::extract::State;
use axum::response::sse::Event as SseEvent;
use axum::response::{IntoResponse, Response};
use axum::Json;

mod chat;
mod fields;
mod tool_calls;
pub use chat::ChatCompletions;
pub use fields::{ResponseFormat, Unsupported};
use lantern_engine::{Completion, FinishReason, TokenEvent};
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

/// The prompts of a completion request, in each form OpenAI accepts (LangChain sends lists).
/// Read by hand rather than by serde's `untagged`, whose only error is "did not match any
/// variant": a client sending a negative or huge token id is told which.
#[derive(Debug, JsonSchema)]
#[serde(untagged)]
pub enum PromptField {
    One(#[schemars(length(min = 1))] String),
    Many(#[schemars(length(min = 1, max = 16), inner(length(min = 1)))] Vec<String>),
    /// One prompt as token ids.
    Tokens(#[schemars(length(min = 1))] Vec<u32>),
    /// Several prompts as token ids.
    TokenLists(#[schemars(length(min = 1, max = 16), inner(length(min = 1)))] Vec<Vec<u32>>),
}

impl<'de> Deserialize<'de> for PromptField {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let shapes = "a string, a list of strings, a list of token ids or a list of token-id lists";
        let token = |v: &Value| -> Result<u32, D::Error> {
            v.as_u64()
                .and_then(|t| u32::try_from(t).ok())
                .ok_or_else(|| {
                    D::Error::custom(format!(
                        "token ids are whole numbers from 0 to {}, got {v}",
                        u32::MAX
                    ))
                })
        };
        let tokens = |list: &[Value]| list.iter().map(token).collect::<Result<Vec<u32>, _>>();
        match Value::deserialize(d)? {
            Value::String(text) => Ok(Self::One(text)),
            Value::Array(items) => match items.first() {
                Some(Value::String(_)) => items
                    .into_iter()
                    .map(|item| match item {
                        Value::String(text) => Ok(text),
                        other => Err(D::Error::custom(format!(
                            "a list of prompts holds strings only, got {other}"
                        ))),
                    })
                    .collect::<Result<_, _>>()
                    .map(Self::Many),
                Some(Value::Array(_)) => items
                    .iter()
                    .map(|item| match item {
                        Value::Array(list) => tokens(list),
                        other => Err(D::Error::custom(format!(
                            "a list of token-id lists holds lists only, got {other}"
                        ))),
                    })
                    .collect::<Result<_, _>>()
                    .map(Self::TokenLists),
                Some(Value::Number(_)) => tokens(&items).map(Self::Tokens),
                _ => Err(D::Error::custom(format!("expected {shapes}"))),
            },
            _ => Err(D::Error::custom(format!("expected {shapes}"))),
        }
    }
}

impl PromptField {
    fn prompts(self) -> Vec<Prompt> {
        match self {
            Self::One(text) => vec![Prompt::Text(text)],
            Self::Many(texts) => texts.into_iter().map(Prompt::Text).collect(),
            Self::Tokens(tokens) => vec![Prompt::Tokens(tokens)],
            Self::TokenLists(lists) => lists.into_iter().map(Prompt::Tokens).collect(),
        }
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct CompletionRequest {
    pub prompt: PromptField,
    /// Number of alternatives to report per token (legacy completions API).
    #[schemars(range(max = 5))]
    #[serde(default, deserialize_with = "super::body::whole_opt")]
    pub logprobs: Option<usize>,
    /// Samples drawn per prompt, of which the `n` with the highest cumulative log-probability
    /// are returned; at least `n`.
    #[schemars(range(min = 1, max = 16))]
    #[serde(default, deserialize_with = "super::body::whole_opt")]
    pub best_of: Option<usize>,
    /// Return each prompt's text before its completion (with `logprobs`, the prompt's
    /// tokens' log-probabilities too).
    #[serde(default)]
    pub echo: bool,
    /// Only empty: text after the insertion point is not supported.
    #[schemars(length(max = 0))]
    pub suffix: Option<String>,
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
        self.unsupported.check()?;
        if let Some(n) = self.n.filter(|n| !(1..=16).contains(n)) {
            return Err(ApiError::validation(
                format!("`n` must be between 1 and 16, got {n}"),
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

fn response_id(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{prefix}-{nanos:x}")
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

    fn error(&self, message: &str) -> Vec<SseEvent> {
        let error = ApiError::Generation(message.to_string());
        vec![json_event(&error.body(Flavor::OpenAi))]
    }
}

async fn run_completion(
    state: &AppState,
    request: CompletionRequest,
) -> Result<Response, ApiError> {
    let model = state.model()?;
    if request.suffix.as_ref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::validation(
            "`suffix` is not supported: text after the insertion point",
            "suffix",
        ));
    }
    let tools = tool_calls::tools(
        request.common.tools.as_deref(),
        request.common.tool_choice.as_ref(),
        request.common.parallel_tool_calls,
    )?;
    if !tools.specs.is_empty() {
        return Err(ApiError::validation(
            "`tools` need chat completions (/v1/chat/completions): a completion has no chat template to offer them in",
            "tools",
        ));
    }
    // `n` is checked (by `to_params`) before `best_of`, which defaults to it.
    let mut params = request
        .common
        .to_params(model.generation.temperature, request.logprobs.unwrap_or(0))?;
    let n = request.common.choices();
    let best_of = request.best_of.unwrap_or(n);
    if !(1..=16).contains(&best_of) || best_of < n {
        return Err(ApiError::validation(
            format!("`best_of` ({best_of}) must be between `n` ({n}) and 16"),
            "best_of",
        ));
    }
    if request.common.stream && best_of > n {
        return Err(ApiError::validation(
            "`best_of` picks among finished samples, so it cannot be streamed: set `stream: false` or `best_of` = `n`",
            "best_of",
        ));
    }
    params.max_new_tokens = params.max_new_tokens.or(Some(16)); // OpenAI's documented default
    params.samples = best_of;
    // echo with logprobs: the prompt's tokens get log-probabilities too.
    params.prompt_logprobs = request.echo && request.logprobs.is_some();
    let mut prepared = Vec::new();
    let mut echoed = Vec::new();
    for prompt in request.prompt.prompts() {
        if request.echo {
            echoed.push(match &prompt {
                Prompt::Text(text) | Prompt::Chat(text) => text.clone(),
                Prompt::Tokens(ids) => model
                    .tokenizer
                    .tokenizer
                    .decode(ids, false)
                    .unwrap_or_default(),
            });
        }
        prepared.push(prepare(state, prompt, params.clone()).await?);
    }
    let spelling = CompletionAnswer {
        header: request
            .common
            .header("cmpl", &model.name, "text_completion"),
        choices: n,
        best_of,
        echoed,
        logprobs: request.logprobs.is_some(),
    };
    answer(state, prepared, request.common.stream, spelling).await
}

/// Completion answers: a `text_completion` (per prompt, the `n` best of `best_of` samples,
/// indexed prompt by prompt), streamed as chunks of the same object type.
struct CompletionAnswer {
    header: StreamHeader,
    choices: usize,
    best_of: usize,
    /// Each prompt's text, when `echo`.
    echoed: Vec<String>,
    logprobs: bool,
}

impl Answer for CompletionAnswer {
    type Stream = CompletionStream;

    fn streamed(self, _: &Prepared) -> CompletionStream {
        CompletionStream {
            header: self.header,
            echo: self.echoed,
            choices: self.choices,
        }
    }

    fn collected(self, generated: &[Generated]) -> Value {
        let mut choices = Vec::new();
        for (prompt, samples) in generated.chunks(self.best_of.max(1)).enumerate() {
            // The `n` best samples by cumulative log-probability, best first (stable: ties
            // keep their order).
            let mut ranked: Vec<&Generated> = samples.iter().collect();
            ranked.sort_by(|a, b| b.cumulative_logprob().total_cmp(&a.cumulative_logprob()));
            for (j, g) in ranked.into_iter().take(self.choices).enumerate() {
                let echo = self.echoed.get(prompt).map_or("", String::as_str);
                choices.push(json!({
                    "index": prompt * self.choices + j,
                    "text": format!("{echo}{}", g.text),
                    "logprobs": if self.logprobs { completion_logprobs(g, !self.echoed.is_empty()) } else { Value::Null },
                    "finish_reason": finish_reason(g.completion.finish_reason),
                }));
            }
        }
        json!({
            "id": self.header.id, "object": "text_completion", "created": self.header.created,
            "model": self.header.model,
            "choices": choices,
            "usage": usage_of(generated, self.best_of),
        })
    }
}

/// The legacy completions API's log-probabilities of a generated text, after those of the
/// prompt's tokens when it is echoed (the first prompt token has none: `null`).
fn completion_logprobs(generated: &Generated, echo: bool) -> Value {
    let text = |id: u32| {
        generated
            .model
            .tokenizer
            .tokenizer
            .decode(&[id], false)
            .unwrap_or_default()
    };
    let top = |alternatives: &[(u32, f32)]| {
        alternatives
            .iter()
            .map(|(id, lp)| (text(*id), json!(lp)))
            .collect::<serde_json::Map<_, _>>()
    };
    // (token id, its log-probability, the alternatives) in text order.
    let mut entries: Vec<(u32, Value, Value)> = Vec::new();
    if echo {
        let logprobs = &generated.completion.prompt_logprobs;
        for (i, &id) in generated.prompt_tokens.iter().enumerate() {
            let known = logprobs.get(i).cloned().flatten();
            entries.push((
                id,
                known.as_ref().map_or(Value::Null, |p| json!(p.logprob)),
                known.map_or(Value::Null, |p| Value::Object(top(&p.top))),
            ));
        }
    }
    for t in generated.tokens.iter().filter(|t| !t.special) {
        entries.push((t.id, json!(t.logprob), Value::Object(top(&t.top))));
    }
    let mut offset = 0;
    let mut offsets = Vec::new();
    let mut tokens = Vec::new();
    for (id, _, _) in &entries {
        let piece = text(*id);
        offsets.push(offset);
        offset += piece.len();
        tokens.push(piece);
    }
    json!({
        "tokens": tokens,
        "token_logprobs": entries.iter().map(|e| e.1.clone()).collect::<Vec<_>>(),
        "top_logprobs": entries.iter().map(|e| e.2.clone()).collect::<Vec<_>>(),
        "text_offset": offsets,
    })
}

struct CompletionStream {
    header: StreamHeader,
    /// Each prompt's text, sent first (for each of its choices) when `echo`.
    echo: Vec<String>,
    /// Choices per prompt (`n`).
    choices: usize,
}

impl StreamFormat for CompletionStream {
    fn start(&mut self) -> Vec<SseEvent> {
        let mut events = Vec::new();
        for (prompt, text) in self.echo.iter().enumerate() {
            for j in 0..self.choices {
                let index = prompt * self.choices + j;
                events.push(self.header.chunk(
                    json!({"index": index, "text": text, "logprobs": null, "finish_reason": null}),
                ));
            }
        }
        events
    }

    fn token(&mut self, choice: usize, token: &TokenEvent) -> Vec<SseEvent> {
        if token.text.is_empty() {
            return Vec::new();
        }
        vec![self.header.chunk(
            json!({"index": choice, "text": token.text, "logprobs": null, "finish_reason": null}),
        )]
    }

    fn end(&mut self, choice: usize, completion: &Completion) -> Vec<SseEvent> {
        vec![self.header.chunk(
            json!({"index": choice, "text": completion.trailing_text, "logprobs": null,
                          "finish_reason": finish_reason(completion.finish_reason)}),
        )]
    }

    fn finish(&mut self, total: &Completion) -> Vec<SseEvent> {
        self.header.closing(total)
    }

    fn error(&mut self, message: &str) -> Vec<SseEvent> {
        self.header.error(message)
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
