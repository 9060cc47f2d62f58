//! Oversized bodies still get their 413. A server that answers before reading the whole body
//! and then closes the connection with data unread makes the kernel reset it, and a client
//! still sending loses the answer (seen in the end-to-end tests under load). So when the
//! declared `Content-Length` is over the limit, the route answers from a stand-in body (its
//! own 413, in its API's error shape) and the real body is read and thrown away before that
//! answer goes out, up to [`DRAIN_MAX_BYTES`] and [`DRAIN_TIMEOUT`]. Bodies larger still, or
//! too slow, get the answer with `Connection: close`, and may lose it.

use super::state::AppState;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use std::time::Duration;
use tokio_stream::StreamExt;

/// Most bytes read and discarded to deliver a 413.
const DRAIN_MAX_BYTES: u64 = 64 * 1024 * 1024;
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn refuse_oversized_bodies(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let limit = state.config.max_payload_bytes;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let Some(declared) = declared.filter(|&length| length > limit as u64) else {
        return next.run(request).await;
    };
    // The route reads `limit + 1` zero bytes and refuses them as it would the real body.
    let real_body = std::mem::replace(request.body_mut(), over_the_limit(limit));
    let mut response = next.run(request).await;
    let drained = declared <= DRAIN_MAX_BYTES
        && tokio::time::timeout(DRAIN_TIMEOUT, discard(real_body))
            .await
            .is_ok_and(|read_all| read_all);
    if !drained {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// A body of `limit + 1` zero bytes, made lazily from one static chunk.
fn over_the_limit(limit: usize) -> Body {
    static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
    let mut left = limit + 1;
    let chunks = std::iter::from_fn(move || {
        let take = left.min(ZEROS.len());
        left -= take;
        (take > 0).then(|| Ok::<_, std::convert::Infallible>(Bytes::from_static(&ZEROS[..take])))
    });
    Body::from_stream(tokio_stream::iter(chunks))
}

/// Reads `body` to its end; false when reading failed.
async fn discard(body: Body) -> bool {
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        if chunk.is_err() {
            return false;
        }
    }
    true
}
