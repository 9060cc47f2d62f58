//! Request ids: the caller's (`X-Amzn-SageMaker-Inference-Id`, else `X-Request-Id`) or a new
//! one, echoed in `X-Request-Id`, and one tracing span per request carrying it, so that every
//! log line about a request (the HTTP layer's, its stream's, the engine's) names it. Prompts and
//! outputs are never logged.

use super::ids::fresh_id;
use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const SAGEMAKER_INFERENCE_ID: HeaderName = HeaderName::from_static("x-amzn-sagemaker-inference-id");
/// Longest caller id kept; longer (or non-printable) ones are replaced by a new id.
const MAX_ID_LEN: usize = 128;

/// The id of a request, in its extensions for the layers inside this one.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// What a handler's spawned work (a stream) needs to know of its request to report it.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub id: String,
    pub route: String,
}

tokio::task_local! {
    /// Set around each routed request (see `count_requests`); streams read it when they start.
    pub static CONTEXT: RequestContext;
}

/// The context of the request being handled on this task, if any.
pub fn current() -> Option<RequestContext> {
    CONTEXT.try_with(RequestContext::clone).ok()
}

pub async fn assign(mut request: Request, next: Next) -> Response {
    let id = [SAGEMAKER_INFERENCE_ID, REQUEST_ID]
        .iter()
        .filter_map(|name| request.headers().get(name))
        .filter_map(|value| value.to_str().ok())
        .find(|id| acceptable(id))
        .map_or_else(|| fresh_id(""), str::to_string);
    request.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!("request", request_id = %id);
    let mut response = next.run(request).instrument(span).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}

fn acceptable(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_ID_LEN && id.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_ids_are_kept_only_when_printable_and_short() {
        assert!(acceptable("7f1c-abc_DEF.9"));
        assert!(!acceptable(""));
        assert!(!acceptable("has space"));
        assert!(!acceptable(&"x".repeat(MAX_ID_LEN + 1)));
        let id = fresh_id("");
        assert_eq!(id.len(), 32);
        assert!(acceptable(&id));
        assert_ne!(id, fresh_id(""));
    }
}
