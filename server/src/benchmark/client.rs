//! One streamed request, timed: the clock starts before the connection is taken and stops at
//! the last byte. TTFT is the arrival of the first chunk with output, inter-token latencies
//! are the gaps between consecutive output chunks, and the output token count is the
//! server's own (usage / `details.generated_tokens`) when it reports one, else the number of
//! output chunks.

use super::api::{clip, Api, Generation, Prompt};
use super::sse::SseReader;
use serde::Serialize;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How a request ended.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    #[default]
    Completed,
    /// The server answered with this non-success status.
    Http(u16),
    /// The stream carried an error event or unreadable data.
    StreamError,
    /// Connecting, sending or reading failed.
    Transport,
    /// No answer within `--request-timeout`.
    Timeout,
    /// Still in flight when the run was interrupted.
    Cancelled,
}

impl Outcome {
    pub fn error_kind(&self) -> Option<String> {
        Some(match self {
            Outcome::Completed => return None,
            Outcome::Http(status) => status.to_string(),
            Outcome::StreamError => "stream_error".into(),
            Outcome::Transport => "transport".into(),
            Outcome::Timeout => "timeout".into(),
            Outcome::Cancelled => "cancelled".into(),
        })
    }
}

/// Everything measured about one request (`--requests-jsonl` writes one per line).
#[derive(Debug, Clone, Default, Serialize)]
pub struct RequestRecord {
    pub outcome: Outcome,
    /// The first error message, for the report.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When the request was sent, from the start of its level.
    pub sent_at_ms: f64,
    pub ttft_ms: Option<f64>,
    pub itl_ms: Vec<f64>,
    pub e2e_ms: f64,
    /// The server's count when it gave one, else `chunks`.
    pub output_tokens: u64,
    pub usage_output_tokens: Option<u64>,
    /// Streamed events that carried output.
    pub chunks: u64,
    pub input_tokens: Option<u64>,
    /// The output text, for the next turn of a conversation.
    #[serde(skip)]
    pub text: String,
}

/// Where requests go.
#[derive(Debug, Clone)]
pub struct Target {
    pub label: String,
    pub base_url: String,
    /// Where requests go under `base_url`; default: the API's own path.
    pub endpoint_path: Option<String>,
    pub api: Api,
    pub generation: Generation,
    pub headers: reqwest::header::HeaderMap,
}

/// A request's input: the prompt and its output budget.
#[derive(Debug, Clone)]
pub struct WorkItem {
    pub prompt: Prompt,
    pub max_tokens: Option<u32>,
    /// The model (or LoRA adapter) this request names, when the workload spreads requests
    /// over several (`--model a,b,c`, a dataset line's `"model"`).
    pub model: Option<String>,
}

/// Whether requests share connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Connections {
    /// A new connection per request, as requests from separate users arrive. Also immune to
    /// servers that close idle keep-alive connections while a request is being sent on one
    /// (llama.cpp's does: about one request in three failed to send when reusing them).
    PerRequest,
    /// Reuse idle connections (saves the TCP and TLS handshakes in TTFT).
    KeepAlive,
}

/// Sends timed requests to one target. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    target: std::sync::Arc<Target>,
    timeout: Duration,
}

impl Client {
    pub fn new(
        target: Target,
        timeout: Duration,
        connections: Connections,
    ) -> anyhow::Result<Self> {
        let idle_per_host = match connections {
            Connections::PerRequest => 0,
            Connections::KeepAlive => usize::MAX,
        };
        let http = reqwest::Client::builder()
            .default_headers(target.headers.clone())
            .pool_max_idle_per_host(idle_per_host)
            .build()?;
        Ok(Self {
            http,
            target: std::sync::Arc::new(target),
            timeout,
        })
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Sends `item` and times it; never fails: every failure is an [`Outcome`]. `level_start`
    /// dates the record; `cancel` turning true abandons the request as `Cancelled`.
    pub async fn send(
        &self,
        item: &WorkItem,
        level_start: Instant,
        mut cancel: watch::Receiver<bool>,
    ) -> RequestRecord {
        let started = Instant::now();
        let mut record = RequestRecord {
            sent_at_ms: ms(started - level_start),
            ..RequestRecord::default()
        };
        let work = self.stream(item, started, &mut record);
        let outcome = tokio::select! {
            outcome = tokio::time::timeout(self.timeout, work) => outcome.unwrap_or(Outcome::Timeout),
            _ = cancel.wait_for(|cancelled| *cancelled) => Outcome::Cancelled,
        };
        record.e2e_ms = ms(started.elapsed());
        record.outcome = outcome;
        record.output_tokens = record.usage_output_tokens.unwrap_or(record.chunks);
        record
    }

    async fn stream(
        &self,
        item: &WorkItem,
        started: Instant,
        record: &mut RequestRecord,
    ) -> Outcome {
        let target = &self.target;
        let url = format!(
            "{}{}",
            target.base_url.trim_end_matches('/'),
            target.endpoint_path.as_deref().unwrap_or(target.api.path())
        );
        let body = target.api.body(
            &item.prompt,
            item.max_tokens,
            item.model.as_deref(),
            &target.generation,
        );
        let response = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .body(body.to_string())
            .send()
            .await;
        let mut response = match response {
            Ok(response) => response,
            Err(e) => return fail(record, Outcome::Transport, &error_chain(&e)),
        };
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            return fail(record, Outcome::Http(status.as_u16()), &text);
        }
        let mut reader = SseReader::default();
        let mut last_output: Option<Instant> = None;
        loop {
            let chunk = match response.chunk().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(e) => return fail(record, Outcome::Transport, &error_chain(&e)),
            };
            let now = Instant::now();
            for data in reader.push(&chunk) {
                if let Some(outcome) =
                    self.take_event(&data, now, started, &mut last_output, record)
                {
                    return outcome;
                }
            }
        }
        if let Some(data) = reader.finish() {
            let now = Instant::now();
            if let Some(outcome) = self.take_event(&data, now, started, &mut last_output, record) {
                return outcome;
            }
        }
        if record.chunks == 0 && record.usage_output_tokens.unwrap_or(0) == 0 {
            return fail(
                record,
                Outcome::StreamError,
                "the stream ended without output",
            );
        }
        Outcome::Completed
    }

    /// Applies one event to `record`; `Some` when it ends the request.
    fn take_event(
        &self,
        data: &str,
        now: Instant,
        started: Instant,
        last_output: &mut Option<Instant>,
        record: &mut RequestRecord,
    ) -> Option<Outcome> {
        let event = self.target.api.parse_event(data);
        if let Some(error) = event.error {
            return Some(fail(record, Outcome::StreamError, &error));
        }
        if let Some(text) = event.output {
            match last_output.replace(now) {
                None => record.ttft_ms = Some(ms(now - started)),
                Some(previous) => record.itl_ms.push(ms(now - previous)),
            }
            record.chunks += 1;
            record.text.push_str(&text);
        }
        record.usage_output_tokens = event.usage_output_tokens.or(record.usage_output_tokens);
        record.input_tokens = event.usage_input_tokens.or(record.input_tokens);
        None
    }
}

fn fail(record: &mut RequestRecord, outcome: Outcome, message: &str) -> Outcome {
    record.error.get_or_insert_with(|| clip(message));
    outcome
}

/// An error with its causes ("error sending request" alone does not say the peer closed).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}
