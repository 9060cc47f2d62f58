//! API keys. With `--api-key` (or `--api-key-file`) set, every route needs the key, as
//! `Authorization: Bearer <key>` (OpenAI's clients) or `x-api-key: <key>` (Anthropic's), except
//! the health checks (`/ping`, `/health`: load balancers and SageMaker call them without one),
//! `/metrics` unless `--metrics-require-key` (Prometheus scrapers), and the chat page's static
//! files (they hold no data; the page itself asks for the key and sends it with its calls).
//! SageMaker authenticates its callers itself, so the key stays unset there.
//!
//! Keys are compared in constant time, as SHA-256 digests (so no length leaks either), and
//! never printed: `Debug` shows a placeholder, `--help` hides the environment's value. A
//! refusal is a 401 in the shape of the API the request speaks.

use super::error::{ApiError, Flavor};
use super::state::AppState;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The key clients must present, kept only as its digest.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey([u8; 32]);

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

impl ApiKey {
    pub fn new(key: &str) -> Self {
        Self(Sha256::digest(key.as_bytes()).into())
    }

    /// Whether `presented` is the key, in time independent of where they differ.
    pub fn matches(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        self.0.ct_eq(&digest).into()
    }
}

/// The key a request presents, from either header.
fn presented(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
    bearer
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
        .map(str::trim)
}

/// Whether `path` is open without a key.
fn open(state: &AppState, path: &str) -> bool {
    matches!(path, "/ping" | "/health" | "/" | "/ui")
        || path.starts_with("/ui/")
        || (path == "/metrics" && !state.config.metrics_require_key)
}

/// Middleware: lets a request through when no key is configured, its route is open, or it
/// presents the key; answers 401 otherwise.
pub async fn require(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(key) = &state.config.api_key else {
        return next.run(request).await;
    };
    let path = request.uri().path().to_string();
    if open(&state, &path) || presented(request.headers()).is_some_and(|p| key.matches(p)) {
        return next.run(request).await;
    }
    let flavor = flavor_of(&path, request, state.config.max_payload_bytes).await;
    let mut response = ApiError::Unauthorized.into_response_as(flavor);
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// The API a refused request speaks: OpenAI's on `/v1`, by its body on `/invocations` (read
/// only for this, within the payload limit), TGI's elsewhere.
async fn flavor_of(path: &str, request: Request, limit: usize) -> Flavor {
    if path.starts_with("/v1/") {
        return Flavor::OpenAi;
    }
    if path != "/invocations" {
        return Flavor::Tgi;
    }
    match axum::body::to_bytes(request.into_body(), limit).await {
        Ok(body) => super::sagemaker::flavor_of(&body),
        Err(_) => Flavor::Tgi,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_key_matches_and_debug_hides_it() {
        let key = ApiKey::new("s3cret-key");
        assert!(key.matches("s3cret-key"));
        for wrong in [
            "",
            "s3cret-ke",
            "s3cret-key ",
            "S3CRET-KEY",
            "s3cret-key-longer",
        ] {
            assert!(!key.matches(wrong), "{wrong:?}");
        }
        assert!(!format!("{key:?}").contains("s3cret"));
    }

    #[test]
    fn either_header_presents_a_key() {
        let mut headers = HeaderMap::new();
        assert_eq!(presented(&headers), None);
        headers.insert("x-api-key", HeaderValue::from_static("a"));
        assert_eq!(presented(&headers), Some("a"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer b"));
        assert_eq!(presented(&headers), Some("b"));
    }
}
