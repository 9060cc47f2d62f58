//! Server-Sent Events for every schema: a task forwards engine events through a schema's
//! [`StreamFormat`] into the response; a request streaming several choices (OpenAI's `n`, a
//! list of prompts) interleaves them as they come. When the client goes away the response
//! stream is dropped, the forwarding task's send fails, it drops the engine streams, and the
//! engine cancels the sequences at its next step.

use super::error::{ApiError, Flavor};
use super::generate::{combined, cut_by_deadline, Prepared};
use super::state::AppState;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use lantern_engine::{Completion, Event, EventStream, TokenEvent};
use std::convert::Infallible;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
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

/// The event ending a stream that failed with `message`.
fn failure(format: &impl StreamFormat, message: &str) -> Vec<SseEvent> {
    vec![ApiError::Generation(message.to_string()).stream_event(format.flavor())]
}

pub fn json_event(value: &serde_json::Value) -> SseEvent {
    SseEvent::default().data(value.to_string())
}

/// One streamed choice: what its deadline cut needs, and how it ended.
struct Choice {
    prompt_tokens: usize,
    seed: Option<u64>,
    generated: usize,
    end: Option<Completion>,
}

/// The engine streams of all choices as one, each event tagged with its choice (`None` when a
/// stream ended without an end event). Forwarding stops when the receiver is dropped, which
/// drops the engine streams.
fn merged(streams: Vec<EventStream>) -> UnboundedReceiver<(usize, Option<Event>)> {
    let (sender, receiver) = unbounded_channel();
    for (choice, mut stream) in streams.into_iter().enumerate() {
        let sender = sender.clone();
        tokio::spawn(async move {
            loop {
                let event = stream.recv().await;
                let last = !matches!(event, Some(Event::Token(_)));
                if sender.send((choice, event)).is_err() || last {
                    return;
                }
            }
        });
    }
    receiver
}

/// Once every choice has ended: the stream's record (EMF) and its last events, for the
/// completion of all choices together.
fn closing(
    choices: &[Choice],
    samples: usize,
    format: &mut impl StreamFormat,
    report: &impl Fn(Option<&Completion>),
) -> Vec<SseEvent> {
    let total = combined(choices.iter().filter_map(|c| c.end.as_ref()), samples);
    report(total.as_ref());
    total.map(|t| format.finish(&t)).unwrap_or_default()
}

/// Streams the choices of `prepared` (its requests' `streams`, in order: each request's
/// samples) to the client through `format`, holding the requests' in-flight slots until the
/// end; cut at `--request-timeout` (every unfinished choice ends, saying so) and at shutdown.
pub fn respond(
    state: &AppState,
    prepared: Vec<Prepared>,
    streams: Vec<Vec<EventStream>>,
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
    let samples = prepared.first().map_or(1, |p| p.samples);
    let mut choices = Vec::new();
    for (request, streams) in prepared.iter().zip(&streams) {
        for _ in streams {
            choices.push(Choice {
                prompt_tokens: request.prompt_tokens.len(),
                seed: request.request.sampling.seed,
                generated: 0,
                end: None,
            });
        }
    }
    let mut events = merged(streams.into_iter().flatten().collect());
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
            let shutting_down = async {
                let _ = shutdown.wait_for(|&down| down).await;
                tokio::time::sleep(cut_after_shutdown).await;
            };
            tokio::pin!(shutting_down);
            loop {
                let (choice, event) = tokio::select! {
                    event = events.recv() => match event {
                        Some(event) => event,
                        None => return,
                    },
                    () = tokio::time::sleep_until(deadline) => {
                        let mut batch = Vec::new();
                        for (index, c) in choices.iter_mut().enumerate().filter(|(_, c)| c.end.is_none()) {
                            let completion = cut_by_deadline(c.prompt_tokens, c.generated, started, c.seed);
                            metrics.observe(&completion);
                            batch.extend(format.end(index, &completion));
                            c.end = Some(completion);
                        }
                        batch.extend(closing(&choices, samples, &mut format, &report));
                        let _ = send_all(batch).await;
                        return;
                    }
                    () = &mut shutting_down => {
                        report(None);
                        let _ = send_all(failure(&format, "the server is shutting down")).await;
                        return;
                    }
                };
                let Some(state) = choices.get_mut(choice) else {
                    return;
                };
                let batch = match event {
                    Some(Event::Token(token)) => {
                        state.generated += 1;
                        format.token(choice, &token)
                    }
                    Some(Event::End(completion)) => {
                        metrics.observe(&completion);
                        tracing::info!(
                            choice,
                            prompt_tokens = completion.prompt_tokens,
                            cached_tokens = completion.cached_tokens,
                            generated_tokens = completion.generated_tokens,
                            finish_reason = completion.finish_reason.as_str(),
                            queue_ms = completion.queue_time.as_millis() as u64,
                            time_to_first_token_ms =
                                completion.time_to_first_token.as_millis() as u64,
                            seconds = completion.total_time.as_secs_f64(),
                            "stream finished"
                        );
                        let mut batch = format.end(choice, &completion);
                        state.end = Some(completion);
                        if choices.iter().all(|c| c.end.is_some()) {
                            batch.extend(closing(&choices, samples, &mut format, &report));
                            let _ = send_all(batch).await;
                            return;
                        }
                        batch
                    }
                    failed => {
                        let message = match failed {
                            Some(Event::Failed(message)) => message,
                            _ => "the engine dropped the request".to_string(),
                        };
                        tracing::warn!(error = message, "stream failed");
                        report(None);
                        let _ = send_all(failure(&format, &message)).await;
                        return;
                    }
                };
                if !send_all(batch).await {
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
