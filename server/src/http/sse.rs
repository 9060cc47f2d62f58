//! Server-Sent Events for every schema: a task forwards engine events through a schema's
//! [`StreamFormat`] into the response. When the client goes away the response stream is
//! dropped, the forwarding task's send fails, it drops the engine stream, and the engine
//! cancels the sequence at its next step.

use super::state::AppState;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use lantern_engine::{Completion, Event, EventStream, TokenEvent};
use std::convert::Infallible;
use tokio::sync::OwnedSemaphorePermit;
use tokio_stream::wrappers::ReceiverStream;

/// How one API spells a stream.
pub trait StreamFormat: Send + 'static {
    /// Events to send before the first token (e.g. Bedrock's `message_start`).
    fn start(&mut self) -> Vec<SseEvent> {
        Vec::new()
    }
    fn token(&mut self, token: &TokenEvent) -> Vec<SseEvent>;
    /// The final events; `completion.trailing_text` still needs sending.
    fn end(&mut self, completion: &Completion) -> Vec<SseEvent>;
    fn error(&mut self, message: &str) -> Vec<SseEvent>;
}

pub fn json_event(value: &serde_json::Value) -> SseEvent {
    SseEvent::default().data(value.to_string())
}

/// Streams `events` to the client through `format`, holding `permit` until the end.
pub fn respond(
    state: &AppState,
    mut events: EventStream,
    mut format: impl StreamFormat,
    permit: OwnedSemaphorePermit,
) -> Response {
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<SseEvent, Infallible>>(64);
    let metrics = state.metrics.clone();
    tokio::spawn(async move {
        let _permit = permit;
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
        while let Some(event) = events.recv().await {
            let (batch, last) = match event {
                Event::Token(token) => (format.token(&token), false),
                Event::End(completion) => {
                    metrics.observe(&completion);
                    (format.end(&completion), true)
                }
                Event::Failed(message) => (format.error(&message), true),
            };
            if !send_all(batch).await || last {
                return;
            }
        }
    });
    Sse::new(ReceiverStream::new(receiver))
        .keep_alive(KeepAlive::default())
        .into_response()
}
