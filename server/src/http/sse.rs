//! Server-Sent Events for every schema: a task formats what the response's driver yields
//! (`drive.rs`: tokens and ends of its choices, interleaved as they come) through a schema's
//! [`StreamFormat`] into the response. When the client goes away the response stream is
//! dropped, the formatting task's send fails and it drops the driver's channel, which cancels
//! the sequences.

use super::drive::{drive, Driven};
use super::error::Flavor;
use super::generate::Prepared;
use super::state::AppState;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use lantern_engine::{Completion, EventStream, TokenEvent};
use std::convert::Infallible;
use std::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

/// How one API spells a stream. Choices are numbered from 0; APIs that stream one choice
/// only ever see 0.
pub trait StreamFormat: Send + 'static {
    /// Events to send before the first token (e.g. Bedrock's `message_start`).
    fn start(&mut self) -> Vec<SseEvent> {
        Vec::new()
    }
    fn token(&mut self, choice: usize, token: &TokenEvent) -> Vec<SseEvent>;
    /// Choice `choice` has ended; `completion.trailing_text` still needs sending.
    fn end(&mut self, choice: usize, completion: &Completion) -> Vec<SseEvent>;
    /// Every choice has ended; `total` counts them all (each prompt once).
    fn finish(&mut self, _total: &Completion) -> Vec<SseEvent> {
        Vec::new()
    }
    /// The API whose error event ends a failed stream (`ApiError::stream_event`).
    fn flavor(&self) -> Flavor;
}

pub fn json_event(value: &serde_json::Value) -> SseEvent {
    SseEvent::default().data(value.to_string())
}

/// Streams the choices of `prepared` (its requests' `streams`, in order: each request's
/// samples) to the client through `format`, holding the requests' in-flight slots until the
/// end, and writes the stream's CloudWatch record when it ends.
pub fn respond(
    state: &AppState,
    prepared: Vec<Prepared>,
    streams: Vec<Vec<EventStream>>,
    mut format: impl StreamFormat,
) -> Response {
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<SseEvent, Infallible>>(64);
    let started = Instant::now();
    let mut driven = drive(state, &prepared, streams);
    // Held until the stream ends: the requests' in-flight slots.
    let permits: Vec<_> = prepared.into_iter().map(|p| p.permit).collect();
    // In the request's span: the stream's own log lines name the request.
    let span = tracing::Span::current();
    let context = super::request_id::current();
    let emf_state = state.clone();
    let report = move |completion: Option<&Completion>| {
        if let Some(context) = &context {
            super::report_emf(&emf_state, context, 200, started.elapsed(), completion);
        }
    };
    tokio::spawn(tracing::Instrument::instrument(
        async move {
            let _permits = permits;
            let send_all = |batch: Vec<SseEvent>| {
                let sender = sender.clone();
                async move {
                    for event in batch {
                        if sender.send(Ok(event)).await.is_err() {
                            return false;
                        }
                    }
                    true
                }
            };
            if !send_all(format.start()).await {
                return;
            }
            while let Some(item) = driven.recv().await {
                let (batch, last) = match item {
                    Driven::Token { choice, token } => (format.token(choice, &token), false),
                    Driven::End { choice, completion } => (format.end(choice, &completion), false),
                    Driven::Done(total) => {
                        report(total.as_ref());
                        (total.map(|t| format.finish(&t)).unwrap_or_default(), true)
                    }
                    Driven::Failed(error) => {
                        report(None);
                        (vec![error.stream_event(format.flavor())], true)
                    }
                };
                if !send_all(batch).await || last {
                    return;
                }
            }
        },
        span,
    ));
    Sse::new(ReceiverStream::new(receiver))
        .keep_alive(KeepAlive::default())
        .into_response()
}
