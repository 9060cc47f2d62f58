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

/// The body read (413 over `limit`, 408 when it stalls) and parsed as `T`, with the field at
/// fault named: what every JSON route starts with.
pub fn json_body<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<T, ApiError> {
    parse(&bytes(body, limit)?)
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

/// For `#[serde(default, deserialize_with = "whole_opt")]` on counts: JSON Schema's `integer`
/// includes numbers written `2.0` (JavaScript clients send them), which serde's integers
/// refuse; a fraction or a negative number is still an error.
pub fn whole_opt<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<u64>,
{
    use serde::Deserialize;
    Option::<serde_json::Number>::deserialize(d)?
        .map(|n| whole_number(&n).ok_or(n))
        .map(|n| {
            n.map_err(|n| {
                serde::de::Error::custom(format!("expected a whole number >= 0, got {n}"))
            })
            .and_then(|v| {
                T::try_from(v).map_err(|_| serde::de::Error::custom(format!("{v} is too large")))
            })
        })
        .transpose()
}

/// [`whole_opt`] for a required count.
pub fn whole<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<u64>,
{
    whole_opt(d)?.ok_or_else(|| serde::de::Error::custom("expected a whole number >= 0, got null"))
}

fn whole_number(n: &serde_json::Number) -> Option<u64> {
    n.as_u64().or_else(|| {
        n.as_f64()
            .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < u64::MAX as f64)
            .map(|f| f as u64)
    })
}

/// A request's float (read as f64, so that ranges are checked on the value the client sent:
/// 2.0000000000000004 is above 2 only before narrowing) as f32 without crossing zero or overflowing, so that a value inside a range is not
/// turned into one outside it (a `top_p` of 1e-300 into 0, a `temperature` of 1e300 into
/// infinity) by the narrowing alone.
pub fn narrow(value: f64) -> f32 {
    let narrowed = (value as f32).clamp(-f32::MAX, f32::MAX);
    if narrowed == 0.0 && value != 0.0 {
        f32::MIN_POSITIVE.copysign(value as f32)
    } else {
        narrowed
    }
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

#[cfg(test)]
mod tests {
    use super::narrow;

    #[test]
    fn counts_may_be_written_as_whole_floats_only() {
        use serde_json::json;
        #[derive(serde::Deserialize)]
        struct Counts {
            #[serde(default, deserialize_with = "super::whole_opt")]
            n: Option<usize>,
        }
        let n =
            |v: serde_json::Value| serde_json::from_value::<Counts>(json!({"n": v})).map(|c| c.n);
        assert_eq!(n(json!(3)).ok(), Some(Some(3)));
        assert_eq!(n(json!(3.0)).ok(), Some(Some(3)));
        assert_eq!(n(json!(null)).ok(), Some(None));
        assert!(n(json!(2.5)).is_err());
        assert!(n(json!(-1)).is_err());
        assert!(n(json!("3")).is_err());
    }

    #[test]
    fn narrowing_keeps_the_side_of_zero_and_stays_finite() {
        assert_eq!(narrow(0.5), 0.5);
        assert_eq!(narrow(0.0), 0.0);
        assert_eq!(narrow(5e-324), f32::MIN_POSITIVE);
        assert_eq!(narrow(-5e-324), -f32::MIN_POSITIVE);
        assert_eq!(narrow(1e300), f32::MAX);
        assert_eq!(narrow(-1e300), -f32::MAX);
    }
}
