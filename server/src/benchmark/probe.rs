//! What the benchmark asks a server before any load: the model name it serves (OpenAI's
//! `/v1/models`) and token counts (`/tokenize`, in the TGI/Lantern, llama.cpp or vLLM
//! spelling, whichever answers first), so prompts have exact lengths.

use super::client::{Client, Target};
use super::workload::{self, Job, TokenCount, WorkloadSpec};
use serde_json::{json, Value};
use std::time::Duration;

const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// The first model of `/v1/models`, or `"default"` when the server has no such route.
pub async fn model_name(target: &Target) -> String {
    let url = format!("{}/v1/models", target.base_url.trim_end_matches('/'));
    let answer = async {
        let client = reqwest::Client::builder()
            .default_headers(target.headers.clone())
            .timeout(PROBE_TIMEOUT)
            .build()
            .ok()?;
        let body: Value =
            serde_json::from_str(&client.get(url).send().await.ok()?.text().await.ok()?).ok()?;
        Some(body.pointer("/data/0/id")?.as_str()?.to_string())
    };
    answer.await.unwrap_or_else(|| "default".to_string())
}

/// The `/tokenize` request bodies servers take, and how to read each answer's token count.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Spelling {
    /// TGI and Lantern: `{"inputs"}` -> a list of tokens.
    Tgi,
    /// llama.cpp's llama-server: `{"content"}` -> `{"tokens": [...]}`.
    LlamaCpp,
    /// vLLM: `{"prompt"}` -> `{"count": n}`.
    Vllm,
}

impl Spelling {
    fn body(self, text: &str) -> Value {
        match self {
            Spelling::Tgi => json!({"inputs": text}),
            Spelling::LlamaCpp => json!({"content": text}),
            Spelling::Vllm => json!({"prompt": text}),
        }
    }

    fn count(self, answer: &Value) -> Option<usize> {
        match self {
            Spelling::Tgi => answer.as_array().map(Vec::len),
            Spelling::LlamaCpp => answer.get("tokens")?.as_array().map(Vec::len),
            Spelling::Vllm => answer.get("count")?.as_u64().map(|n| n as usize),
        }
    }
}

/// Counts tokens through the server's `/tokenize` from a blocking thread of the runtime.
struct ServerTokenizer {
    http: reqwest::Client,
    url: String,
    runtime: tokio::runtime::Handle,
    /// The spelling that answered; `None` before the first count.
    spelling: Option<Spelling>,
    /// No spelling answered: counting is off for the rest of the run.
    unavailable: bool,
    /// Ctrl-C: stop asking (the runtime is going away).
    cancel: tokio::sync::watch::Receiver<bool>,
}

impl ServerTokenizer {
    async fn ask(&self, spelling: Spelling, text: &str) -> Option<usize> {
        let response = self
            .http
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(spelling.body(text).to_string())
            .send()
            .await
            .ok()?;
        if !response.status().is_success() {
            return None;
        }
        spelling.count(&serde_json::from_str(&response.text().await.ok()?).ok()?)
    }
}

impl TokenCount for ServerTokenizer {
    fn count(&mut self, text: &str) -> Option<usize> {
        if self.unavailable || *self.cancel.borrow() {
            return None;
        }
        let candidates = match self.spelling {
            Some(spelling) => vec![spelling],
            None => vec![Spelling::Tgi, Spelling::LlamaCpp, Spelling::Vllm],
        };
        for spelling in candidates {
            if let Some(count) = self.runtime.block_on(self.ask(spelling, text)) {
                self.spelling = Some(spelling);
                return Some(count);
            }
        }
        if self.spelling.is_none() {
            eprintln!("the server has no /tokenize: prompt lengths are approximate (one word is about one token)");
            self.unavailable = true;
        }
        None
    }
}

/// Makes the run's jobs, counting tokens with `client`'s server.
pub async fn build_workload(
    client: &Client,
    spec: WorkloadSpec,
    count: usize,
    cancel: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Vec<Job>> {
    let target = client.target();
    let mut tokenizer = ServerTokenizer {
        http: reqwest::Client::builder()
            .default_headers(target.headers.clone())
            .timeout(PROBE_TIMEOUT)
            .build()?,
        url: format!("{}/tokenize", target.base_url.trim_end_matches('/')),
        runtime: tokio::runtime::Handle::current(),
        spelling: None,
        unavailable: false,
        cancel,
    };
    tokio::task::spawn_blocking(move || workload::build(&spec, count, &mut tokenizer)).await?
}
