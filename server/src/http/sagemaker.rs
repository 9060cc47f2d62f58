//! The SageMaker hosting contract: `/ping` (200 once the model serves, 503 before and after an
//! engine failure; never waits on the engine), `/invocations` (schema picked from the body),
//! `/execution-parameters` (Batch Transform), and the custom-attributes header echoed back.
//! Contract: docs.aws.amazon.com/sagemaker/latest/dg/your-algorithms-inference-code.html

use super::body::{body_kind, bytes, parse, BodyKind};
use super::error::{ApiError, Flavor};
use super::pipeline::serve_bytes;
use super::state::AppState;
use super::{bedrock, openai, tgi};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use lantern_engine::Completion;
use serde_json::{json, Value};

const CUSTOM_ATTRIBUTES: &str = "x-amzn-sagemaker-custom-attributes";
/// The adapter inference component an invocation is for (AWS's container standard for
/// adapter inference components); its alias, for messages.
pub const ADAPTER_HEADER: &str = "X-Amzn-SageMaker-Adapter-Identifier";
pub const ADAPTER_ALIAS_HEADER: &str = "X-Amzn-SageMaker-Adapter-Alias";

tokio::task_local! {
    /// The adapter header of the invocation being answered, for whichever schema its body is.
    static INVOCATION_ADAPTER: Option<String>;
}

/// The adapter the current `/invocations` request names by header, if any.
pub fn adapter_header() -> Option<String> {
    INVOCATION_ADAPTER.try_with(Clone::clone).ok().flatten()
}

pub async fn ping(State(state): State<AppState>) -> StatusCode {
    if state.is_healthy() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// Which API a body speaks, judged from its fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Schema {
    Tgi,
    Bedrock,
    OpenAiChat,
    OpenAiCompletion,
}

fn schema_of(value: &Value) -> Option<Schema> {
    let has = |field: &str| value.get(field).is_some();
    if has("inputs") {
        Some(Schema::Tgi)
    } else if has("messages") && has("anthropic_version") {
        Some(Schema::Bedrock)
    } else if has("messages") {
        Some(Schema::OpenAiChat)
    } else if has("prompt") {
        Some(Schema::OpenAiCompletion)
    } else {
        None
    }
}

/// The API whose error shape answers a body (TGI's when it is none of them or not JSON).
pub fn flavor_of(raw: &[u8]) -> Flavor {
    match serde_json::from_slice::<Value>(raw)
        .ok()
        .as_ref()
        .and_then(schema_of)
    {
        Some(Schema::Bedrock) => Flavor::Anthropic,
        Some(Schema::OpenAiChat | Schema::OpenAiCompletion) => Flavor::OpenAi,
        Some(Schema::Tgi) | None => Flavor::Tgi,
    }
}

async fn invoke_one(state: &AppState, raw: &[u8]) -> Response {
    let value: Value = match parse(raw) {
        Ok(value) => value,
        Err(e) => return e.into_response(),
    };
    match schema_of(&value) {
        Some(Schema::Tgi) => serve_bytes::<tgi::Toolkit>(state, raw).await,
        Some(Schema::Bedrock) => serve_bytes::<bedrock::Messages>(state, raw).await,
        Some(Schema::OpenAiChat) => serve_bytes::<openai::ChatCompletions>(state, raw).await,
        Some(Schema::OpenAiCompletion) => serve_bytes::<openai::Completions>(state, raw).await,
        None => ApiError::validation("the body has none of `inputs` (TGI), `messages` (OpenAI chat, or Bedrock with `anthropic_version`) or `prompt` (OpenAI completion)", "body").into_response(),
    }
}

pub async fn invocations(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let attributes = headers
        .get(CUSTOM_ATTRIBUTES)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let inference_id = headers
        .get("x-amzn-sagemaker-inference-id")
        .and_then(|v| v.to_str().ok());
    tracing::info!(
        custom_attributes = attributes.as_deref(),
        inference_id,
        "invocation"
    );
    let adapter = headers
        .get(ADAPTER_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty());
    let outcome = async {
        let kind = body_kind(&headers)?;
        let raw = bytes(body, state.config.max_payload_bytes)?;
        Ok::<_, ApiError>(match kind {
            BodyKind::Json => invoke_one(&state, &raw).await,
            BodyKind::JsonLines => batch_transform(&state, &raw).await,
        })
    };
    let mut response = INVOCATION_ADAPTER
        .scope(adapter, outcome)
        .await
        .unwrap_or_else(IntoResponse::into_response);
    if let Some(attributes) = attributes {
        // SageMaker relays this header to the caller (and drops others): echo theirs, plus
        // the request's token counts and timings.
        let mut echoed = attributes;
        if let Some(c) = response.extensions().get::<Completion>() {
            let decode = c.total_time.saturating_sub(c.queue_time);
            echoed.push_str(&format!(
                ",prompt-tokens={},cached-tokens={},generated-tokens={},queue-time={},inference-time={}",
                c.prompt_tokens,
                c.cached_tokens,
                c.generated_tokens,
                c.queue_time.as_millis(),
                decode.as_millis()
            ));
        }
        if let Ok(value) = HeaderValue::from_str(&echoed) {
            response.headers_mut().insert(CUSTOM_ATTRIBUTES, value);
        }
    }
    response
}

/// Batch Transform: one output line per input line, same order; a bad line yields an error
/// object on its line and the other lines still succeed.
async fn batch_transform(state: &AppState, raw: &[u8]) -> Response {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let response = invoke_one(state, line.as_bytes()).await;
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap_or_default();
        let value: Value = serde_json::from_slice(&body)
            .unwrap_or_else(|_| json!({"error": String::from_utf8_lossy(&body)}));
        out.push_str(&value.to_string());
        out.push('\n');
    }
    (
        [(axum::http::header::CONTENT_TYPE, "application/jsonlines")],
        out,
    )
        .into_response()
}

pub async fn execution_parameters(State(state): State<AppState>) -> Json<Value> {
    let c = &state.config;
    let batch = c.sagemaker_batch.clone();
    Json(json!({
        "MaxConcurrentTransforms": batch.as_ref().map_or(c.max_concurrent_requests, |b| b.max_concurrent_transforms),
        "BatchStrategy": batch.as_ref().map_or("MULTI_RECORD".to_string(), |b| b.batch_strategy.clone()),
        "MaxPayloadInMB": batch.as_ref().map_or(c.max_payload_bytes / (1024 * 1024), |b| b.max_payload_in_mb),
    }))
}
