//! The one place errors become HTTP responses. Each variant has a stable `error_type`; the
//! body takes the shape of the API the client speaks: TGI's `{"error", "error_type"}` or
//! OpenAI's `{"error": {"message", "type", "param", "code"}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use lantern_engine::{Refusal, SubmitError};
use serde_json::{json, Value};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    /// The client sent something invalid; `param` names the field when there is one.
    #[error("{message}")]
    Validation {
        message: String,
        param: Option<String>,
    },
    #[error("request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("the request body stopped arriving: nothing was received for longer than the read timeout (--client-read-timeout)")]
    BodyTimeout,
    #[error("unsupported content type `{0}`: send application/json (or application/jsonlines for batch transform)")]
    UnsupportedMediaType(String),
    #[error("too many requests in flight ({0}); retry later")]
    Overloaded(usize),
    #[error("the model is still loading")]
    NotReady,
    #[error("{0}")]
    Unavailable(String),
    #[error("generation failed: {0}")]
    Generation(String),
    #[error("{0}")]
    NotFound(String),
    /// A name already taken (an adapter registered twice).
    #[error("{0}")]
    Conflict(String),
    /// A path outside the directories the server may read.
    #[error("{0}")]
    Forbidden(String),
    /// An adapter that cannot be served (its files, config or shapes): SageMaker's 424.
    #[error("{0}")]
    BadAdapter(String),
    #[error(
        "a valid API key is required: send `Authorization: Bearer <key>` or `x-api-key: <key>`"
    )]
    Unauthorized,
}

/// Which API's error shape to answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Tgi,
    OpenAi,
    /// Bedrock's Anthropic Messages: `{"type": "error", "error": {"type", "message"}}`.
    Anthropic,
}

impl ApiError {
    pub fn validation(message: impl Into<String>, param: &str) -> Self {
        Self::Validation {
            message: message.into(),
            param: Some(param.to_string()),
        }
    }

    pub fn error_type(&self) -> &'static str {
        match self {
            Self::Validation { .. } => "validation",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::BodyTimeout => "request_timeout",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::Overloaded(_) => "overloaded",
            Self::NotReady => "not_ready",
            Self::Unavailable(_) => "unavailable",
            Self::Generation(_) => "generation",
            Self::NotFound(_) => "not_found",
            Self::Unauthorized => "unauthorized",
            Self::Conflict(_) => "conflict",
            Self::Forbidden(_) => "forbidden",
            Self::BadAdapter(_) => "invalid_adapter",
        }
    }

    fn status(&self, flavor: Flavor) -> StatusCode {
        match self {
            // TGI answers validation errors with 422; OpenAI clients expect 400.
            Self::Validation { .. } if flavor == Flavor::Tgi => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Validation { .. } => StatusCode::BAD_REQUEST,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Overloaded(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::NotReady | Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Generation(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::BadAdapter(_) => StatusCode::FAILED_DEPENDENCY,
        }
    }

    pub fn into_response_as(self, flavor: Flavor) -> Response {
        (self.status(flavor), Json(self.body(flavor))).into_response()
    }

    /// The error body in `flavor`'s shape: a response's, or a stream's last event.
    pub fn body(&self, flavor: Flavor) -> Value {
        let status = self.status(flavor);
        match flavor {
            Flavor::Tgi => json!({"error": self.to_string(), "error_type": self.error_type()}),
            Flavor::Anthropic => {
                let kind = match self {
                    Self::PayloadTooLarge { .. } => "request_too_large",
                    Self::Overloaded(_) => "rate_limit_error",
                    Self::NotReady | Self::Unavailable(_) => "overloaded_error",
                    Self::Generation(_) => "api_error",
                    Self::NotFound(_) => "not_found_error",
                    Self::Unauthorized => "authentication_error",
                    Self::Forbidden(_) => "permission_error",
                    Self::Conflict(_) | Self::BadAdapter(_) => "invalid_request_error",
                    Self::Validation { .. } | Self::BodyTimeout | Self::UnsupportedMediaType(_) => {
                        "invalid_request_error"
                    }
                };
                json!({"type": "error", "error": {"type": kind, "message": self.to_string()}})
            }
            Flavor::OpenAi => {
                let param = match self {
                    Self::Validation { param, .. } => param.clone(),
                    _ => None,
                };
                let kind = if status.is_client_error() {
                    "invalid_request_error"
                } else {
                    "server_error"
                };
                json!({"error": {"message": self.to_string(), "type": kind, "param": param, "code": self.error_type()}})
            }
        }
    }
}

impl ApiError {
    /// This error as the last event of a stream in `flavor`'s API (its 200 header already
    /// sent): TGI's and OpenAI's a `data:` event with their error body, Anthropic's an
    /// `error` event.
    pub fn stream_event(&self, flavor: Flavor) -> axum::response::sse::Event {
        let event = axum::response::sse::Event::default();
        let event = match flavor {
            Flavor::Anthropic => event.event("error"),
            Flavor::Tgi | Flavor::OpenAi => event,
        };
        event.data(self.body(flavor).to_string())
    }
}

/// A refusal by the limits: the client's error, naming the field as its API spells it.
impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> Self {
        Self::validation(refusal.to_string(), refusal.field())
    }
}

impl From<SubmitError> for ApiError {
    fn from(error: SubmitError) -> Self {
        match error {
            SubmitError::Unavailable(message) => Self::Unavailable(message),
            SubmitError::Refused(refusal) => refusal.into(),
            SubmitError::UnknownToken { .. } => Self::validation(error.to_string(), "inputs"),
        }
    }
}

/// An error answered in TGI's shape (the default outside `/v1`).
impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.into_response_as(Flavor::Tgi)
    }
}
