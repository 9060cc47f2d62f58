//! The one driver of the engine's event streams for a response: the choices of its requests
//! (each request's samples, requests in order) merged as they come, cut at `--request-timeout`
//! (every unfinished choice ends, saying so) and when the shutdown grace runs out, engine
//! failures mapped to the client's error, metrics observed, each choice's end logged. Streamed
//! answers format what it yields (`sse.rs`); collected answers fold it (`generate.rs`).
//!
//! The driver runs as its own task and yields through a channel: when the consumer goes away
//! (a client that disconnected drops its response), the driver's next send fails, it drops the
//! engine streams, and the engine cancels the sequences at its next step.

use super::error::ApiError;
use super::generate::{combined, cut_by_deadline, Prepared};
use super::state::AppState;
use lantern_engine::{Completion, Event, EventStream, TokenEvent};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

/// What the driver yields, in order: tokens and ends of choices interleaved, then either
/// `Done` (every choice ended) or `Failed` (nothing follows).
#[derive(Debug)]
pub enum Driven {
    Token {
        choice: usize,
        token: TokenEvent,
    },
    /// A choice ended: by the engine, or cut by the deadline (`finish_reason: time_limit`).
    End {
        choice: usize,
        completion: Completion,
    },
    /// Every choice ended; the completion of all together (each prompt counted once).
    Done(Option<Completion>),
    Failed(ApiError),
}

/// What a deadline cut needs of a choice, and whether it ended.
struct Choice {
    /// The engine running it (metrics' `engine` label).
    engine: usize,
    prompt_tokens: usize,
    seed: Option<u64>,
    generated: usize,
    end: Option<Completion>,
}

/// Starts driving `streams` (one list per request of `prepared`) and returns what it yields.
pub fn drive(
    state: &AppState,
    prepared: &[Prepared],
    streams: Vec<Vec<EventStream>>,
) -> UnboundedReceiver<Driven> {
    let started = Instant::now();
    let deadline = tokio::time::Instant::from_std(started + state.config.request_timeout);
    // Streams still running this long after SIGTERM are cut, so the process exits in time.
    let grace = Duration::from_secs(state.config.shutdown_grace_seconds.saturating_sub(1));
    let mut shutdown = state.shutdown.clone();
    let metrics = state.metrics.clone();
    let samples = prepared.first().map_or(1, |p| p.samples);
    let mut choices = Vec::new();
    for (request, streams) in prepared.iter().zip(&streams) {
        for stream in streams {
            choices.push(Choice {
                engine: stream.engine(),
                prompt_tokens: request.prompt_tokens.len(),
                seed: request.request.sampling.seed,
                generated: 0,
                end: None,
            });
        }
    }
    let mut events = merged(streams.into_iter().flatten().collect());
    let (out, driven) = unbounded_channel();
    let span = tracing::Span::current();
    tokio::spawn(tracing::Instrument::instrument(
        async move {
            let shutting_down = async {
                let _ = shutdown.wait_for(|&down| down).await;
                tokio::time::sleep(grace).await;
            };
            tokio::pin!(shutting_down);
            // A send that fails means the consumer (the client) went away: the request is
            // cancelled (returning drops the engine streams).
            let send = |item: Driven| {
                let sent = out.send(item).is_ok();
                if !sent {
                    metrics.requests_cancelled.inc();
                }
                sent
            };
            loop {
                let (choice, event) = tokio::select! {
                    event = events.recv() => match event {
                        Some(event) => event,
                        None => return,
                    },
                    () = tokio::time::sleep_until(deadline) => {
                        for (index, c) in choices.iter_mut().enumerate().filter(|(_, c)| c.end.is_none()) {
                            let completion = cut_by_deadline(c.prompt_tokens, c.generated, started, c.seed);
                            metrics.observe(&completion, c.engine);
                            c.end = Some(completion.clone());
                            if !send(Driven::End { choice: index, completion }) {
                                return;
                            }
                        }
                        send(done(&choices, samples));
                        return;
                    }
                    () = &mut shutting_down => {
                        send(Driven::Failed(ApiError::Unavailable("the server is shutting down".into())));
                        return;
                    }
                };
                let Some(state) = choices.get_mut(choice) else {
                    return;
                };
                match event {
                    Some(Event::Token(token)) => {
                        state.generated += 1;
                        if !send(Driven::Token { choice, token }) {
                            return;
                        }
                    }
                    Some(Event::End(completion)) => {
                        metrics.observe(&completion, state.engine);
                        log_end(choice, &completion);
                        state.end = Some(completion.clone());
                        if !send(Driven::End { choice, completion }) {
                            return;
                        }
                        if choices.iter().all(|c| c.end.is_some()) {
                            send(done(&choices, samples));
                            return;
                        }
                    }
                    failed => {
                        let message = match failed {
                            Some(Event::Failed(message)) => message,
                            _ => "the engine dropped the request".to_string(),
                        };
                        tracing::warn!(error = message, "generation failed");
                        send(Driven::Failed(ApiError::Generation(message)));
                        return;
                    }
                }
            }
        },
        span,
    ));
    driven
}

fn done(choices: &[Choice], samples: usize) -> Driven {
    Driven::Done(combined(
        choices.iter().filter_map(|c| c.end.as_ref()),
        samples,
    ))
}

fn log_end(choice: usize, completion: &Completion) {
    tracing::info!(
        choice,
        prompt_tokens = completion.prompt_tokens,
        cached_tokens = completion.cached_tokens,
        generated_tokens = completion.generated_tokens,
        finish_reason = completion.finish_reason.as_str(),
        queue_ms = completion.queue_time.as_millis() as u64,
        time_to_first_token_ms = completion.time_to_first_token.as_millis() as u64,
        seconds = completion.total_time.as_secs_f64(),
        "choice finished"
    );
}

/// The engine streams of all choices as one, each event tagged with its choice (`None` when a
/// stream ended without an end event). Forwarding stops when the receiver is dropped, which
/// drops the engine streams.
fn merged(streams: Vec<EventStream>) -> UnboundedReceiver<(usize, Option<Event>)> {
    let (sender, receiver) = unbounded_channel();
    for (choice, stream) in streams.into_iter().enumerate() {
        tokio::spawn(forward(choice, stream, sender.clone()));
    }
    receiver
}

async fn forward(
    choice: usize,
    mut stream: EventStream,
    sender: UnboundedSender<(usize, Option<Event>)>,
) {
    loop {
        let event = stream.recv().await;
        let last = !matches!(event, Some(Event::Token(_)));
        if sender.send((choice, event)).is_err() || last {
            return;
        }
    }
}
