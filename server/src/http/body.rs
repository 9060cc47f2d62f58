//! Reading JSON bodies ourselves, so that every mistake comes back in our error shape with the
//! field named: malformed JSON, a wrong type, a missing field, an oversized or non-JSON body.

use super::error::ApiError;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{header, HeaderMap, StatusCode};
use serde::de::DeserializeOwned;

/// What the client declared the body to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    Json,
    /// SageMaker Batch Transform: one JSON document per line.
    JsonLines,
}

pub fn body_kind(headers: &HeaderMap) -> Result<BodyKind, ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(BodyKind::Json);
    };
    let text = value.to_str().unwrap_or_default().to_ascii_lowercase();
    let mime = text.split(';').next().unwrap_or_default().trim();
    match mime {
        "" | "application/json" | "*/*" | "text/json" => Ok(BodyKind::Json),
        "application/jsonlines" | "application/x-jsonlines" | "application/jsonl" => {
            Ok(BodyKind::JsonLines)
        }
        other => Err(ApiError::UnsupportedMediaType(other.to_string())),
    }
}

/// The body's bytes, or 413 when it was over the limit, 408 when it stopped arriving.
pub fn bytes(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge { limit }
        } else if timed_out(&rejection) {
            ApiError::BodyTimeout
        } else {
            ApiError::validation(rejection.body_text(), "body")
        }
    })
}

/// Whether reading the body failed because tower-http's body timeout fired.
fn timed_out(rejection: &BytesRejection) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(rejection);
    while let Some(error) = source {
        if error.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        source = error.source();
    }
    false
}

/// Parses JSON, naming the path of the offending field in the message.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        let param = if path == "." {
            "body".to_string()
        } else {
            path
        };
        let message = if inner.is_syntax() || inner.is_eof() {
            format!("malformed JSON: {inner}")
        } else {
            format!("invalid request: `{param}`: {inner}")
        };
        ApiError::Validation {
            message,
            param: Some(param),
        }
    })
}
