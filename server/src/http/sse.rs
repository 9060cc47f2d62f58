//! Server-Sent Events for every schema: a task forwards engine events through a schema's
//! [`StreamFormat`] into the response. When the client goes away the response stream is
//! dropped, the forwarding task's send fails, it drops the engine stream, and the engine
//! cancels the sequence at its next step.

use super::generate::{cut_by_deadline, Prepared};
use super::state::AppState;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use lantern_engine::{Completion, Event, EventStream, TokenEvent};
use std::convert::Infallible;
use std::time::{Duration, Instant};
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

/// Streams `events` to the client through `format`, holding the request's in-flight slot until
/// the end; cut at `--request-timeout` (with a final event saying so) and at shutdown.
pub fn respond(
    state: &AppState,
    prepared: Prepared,
    mut events: EventStream,
    mut format: impl StreamFormat,
) -> Response {
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<SseEvent, Infallible>>(64);
    let metrics = state.metrics.clone();
    let started = Instant::now();
    let deadline = tokio::time::Instant::from_std(started + state.config.request_timeout);
    let mut shutdown = state.shutdown.clone();
    // Streams still running this long after SIGTERM are cut, so the process exits in time.
    let cut_after_shutdown =
        Duration::from_secs(state.config.shutdown_grace_seconds.saturating_sub(1));
    let Prepared {
        permit,
        prompt_tokens,
        request,
        ..
    } = prepared;
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
            let mut generated = 0;
            let shutting_down = async {
                let _ = shutdown.wait_for(|&down| down).await;
                tokio::time::sleep(cut_after_shutdown).await;
            };
            tokio::pin!(shutting_down);
            loop {
                let event = tokio::select! {
                    event = events.recv() => event,
                    () = tokio::time::sleep_until(deadline) => {
                        let completion = cut_by_deadline(prompt_tokens.len(), generated, started, request.sampling.seed);
                        metrics.observe(&completion);
                        report(Some(&completion));
                        let _ = send_all(format.end(&completion)).await;
                        return;
                    }
                    () = &mut shutting_down => {
                        report(None);
                        let _ = send_all(format.error("the server is shutting down")).await;
                        return;
                    }
                };
                let Some(event) = event else { return };
                let (batch, last) = match event {
                    Event::Token(token) => {
                        generated += 1;
                        (format.token(&token), false)
                    }
                    Event::End(completion) => {
                        metrics.observe(&completion);
                        report(Some(&completion));
                        tracing::info!(
                            prompt_tokens = completion.prompt_tokens,
                            generated_tokens = completion.generated_tokens,
                            finish_reason = completion.finish_reason.as_str(),
                            queue_ms = completion.queue_time.as_millis() as u64,
                            time_to_first_token_ms =
                                completion.time_to_first_token.as_millis() as u64,
                            seconds = completion.total_time.as_secs_f64(),
                            "stream finished"
                        );
                        (format.end(&completion), true)
                    }
                    Event::Failed(message) => {
                        tracing::warn!(error = message, "stream failed");
                        report(None);
                        (format.error(&message), true)
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
