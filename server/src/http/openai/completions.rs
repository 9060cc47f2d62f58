//! OpenAI's legacy completions (`/v1/completions`): prompts as text or token ids, `n` of
//! `best_of` samples, `echo` with the prompt's log-probabilities, streamed or not.

use super::{finish_reason, tool_calls, usage_of, Common, StreamHeader};
use crate::http::error::{ApiError, Flavor};
use crate::http::generate::{prepare, Generated, Prepared, Prompt};
use crate::http::pipeline::{answer, Answer, Api};
use crate::http::sse::StreamFormat;
use crate::http::state::AppState;
use axum::response::sse::Event as SseEvent;
use axum::response::Response;
use lantern_engine::{Completion, TokenEvent};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};

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
    #[serde(default, deserialize_with = "crate::http::body::whole_opt")]
    pub logprobs: Option<usize>,
    /// Samples drawn per prompt, of which the `n` with the highest cumulative log-probability
    /// are returned; at least `n`.
    #[schemars(range(min = 1, max = 16))]
    #[serde(default, deserialize_with = "crate::http::body::whole_opt")]
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
    params.fields.prompt = "prompt";
    params.fields.top_n_tokens = "logprobs";
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
    let text = |id: u32| generated.model.token_text(id);
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

    fn flavor(&self) -> Flavor {
        Flavor::OpenAi
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
