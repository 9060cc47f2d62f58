//! The one request flow every API follows: the JSON body read into the API's request type
//! (every failure answered in that API's error shape, with the field at fault named), the
//! request prepared, then answered either collected into one JSON body or streamed as
//! Server-Sent Events. An API module says only how its request becomes [`Params`] and how its
//! answers are spelled ([`Api`], [`Answer`]).
//!
//! [`Params`]: super::generate::Params

use super::body::{json_body, parse};
use super::error::{ApiError, Flavor};
use super::generate::{combined, complete, submit, Generated, Prepared};
use super::sse::{respond, StreamFormat};
use super::state::AppState;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use axum::Json;
use lantern_engine::Completion;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::future::Future;
use std::time::Duration;

/// One API operation: the body it reads, the error shape it answers in, and what it does.
pub trait Api: 'static {
    const FLAVOR: Flavor;
    type Request: DeserializeOwned + Send + 'static;

    fn run(
        state: &AppState,
        request: Self::Request,
    ) -> impl Future<Output = Result<Response, ApiError>> + Send;
}

/// The body of a request to `A`, read within `--max-payload` and parsed; a body that cannot be
/// read or parsed is refused in `A`'s error shape (413, 408 or 400/422 naming the field).
pub struct ApiBody<A: Api>(pub A::Request);

impl<A: Api> FromRequest<AppState> for ApiBody<A> {
    type Rejection = Response;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Response> {
        let body = Bytes::from_request(request, state).await;
        json_body(body, state.config.max_payload_bytes)
            .map(ApiBody)
            .map_err(|error| error.into_response_as(A::FLAVOR))
    }
}

/// The handler of every JSON route: `A` run on its body, errors in `A`'s shape.
pub async fn serve<A: Api>(
    State(state): State<AppState>,
    ApiBody(request): ApiBody<A>,
) -> Response {
    A::run(&state, request)
        .await
        .unwrap_or_else(|error| error.into_response_as(A::FLAVOR))
}

/// `A` run on a body already read (one of the schemas `/invocations` accepts).
pub async fn serve_bytes<A: Api>(state: &AppState, raw: &[u8]) -> Response {
    let outcome = async { A::run(state, parse(raw)?).await };
    outcome
        .await
        .unwrap_or_else(|error| error.into_response_as(A::FLAVOR))
}

/// How one API spells a generation's answer, collected or streamed.
pub trait Answer: Send + 'static {
    type Stream: StreamFormat;

    /// The stream's format, told what the request became (e.g. its prompt's token count).
    fn streamed(self, prepared: &Prepared) -> Self::Stream;

    /// The body of the whole answer once every sequence has finished: each prompt's samples
    /// in order, prompts in order.
    fn collected(self, generated: &[Generated]) -> Value;
}

/// Runs `prepared` (one request, or one per prompt of a list) and answers as `answer` spells
/// it: streamed when `stream` (every sample of every request as a choice of its own),
/// otherwise collected into one JSON response that carries the [`Completion`] of the whole
/// (for the request log, metrics and SageMaker's custom attributes) and TGI's timing headers.
pub async fn answer(
    state: &AppState,
    prepared: Vec<Prepared>,
    stream: bool,
    answer: impl Answer,
) -> Result<Response, ApiError> {
    let Some(first) = prepared.first() else {
        return Err(ApiError::validation("no prompt to answer", "prompt"));
    };
    let samples = first.samples;
    if stream {
        let format = answer.streamed(first);
        let mut streams = Vec::new();
        for request in &prepared {
            streams.push(submit(state, request)?);
        }
        return Ok(respond(state, prepared, streams, format));
    }
    let generated = complete(state, prepared).await?;
    let total = combined(generated.iter().map(|g| &g.completion), samples);
    let response = Json(answer.collected(&generated)).into_response();
    Ok(match total {
        Some(total) => with_completion(response, total),
        None => response,
    })
}

/// TGI's per-request timing and token-count headers, and the completion itself in the
/// response's extensions, where the layers above read it typed.
fn with_completion(mut response: Response, completion: Completion) -> Response {
    let ms = |d: Duration| (d.as_millis() as u64).to_string();
    let decode = completion.total_time.saturating_sub(completion.queue_time);
    let per_token = decode / (completion.generated_tokens.max(1) as u32);
    let values = [
        ("x-queue-time", ms(completion.queue_time)),
        ("x-inference-time", ms(decode)),
        ("x-time-per-token", ms(per_token)),
        ("x-prompt-tokens", completion.prompt_tokens.to_string()),
        ("x-cached-tokens", completion.cached_tokens.to_string()),
        (
            "x-generated-tokens",
            completion.generated_tokens.to_string(),
        ),
    ];
    for (name, value) in values {
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().insert(name, value);
        }
    }
    response.extensions_mut().insert(completion);
    response
}
