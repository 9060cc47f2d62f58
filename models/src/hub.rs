//! Fetching a model from the Hugging Face hub (hf-hub) into its cache (`HF_HOME`), honouring
//! `HF_TOKEN`, `HF_ENDPOINT` and `HF_HUB_OFFLINE=1`. The result is a local directory in
//! Hugging Face layout, loaded like any other.
//!
//! hf-hub's blocking client has no timeout, and a firewall that drops packets (or a proxy that
//! never answers) would leave a user waiting: so the endpoint is probed first, bounded.

use crate::error::{ModelError, Result};
use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// A model on the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubModel {
    pub id: String,
    pub revision: String,
}

/// Files a Hugging Face model directory may hold; only `config.json` is required up front.
const OPTIONAL_FILES: [&str; 4] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "chat_template.jinja",
];

fn hint(model: &HubModel) -> String {
    format!(
        "download it where the hub is reachable (e.g. `hf download {} --local-dir DIR`) and start Lantern with `--model-id DIR`, or set HF_HOME to a cache that holds it",
        model.id
    )
}

fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .is_ok_and(|v| matches!(v.as_str(), "1" | "true" | "TRUE" | "yes"))
}

/// The hub cache's directory (`HF_HOME`'s `hub`): snapshots there are symlinks into it.
pub fn cache_dir() -> PathBuf {
    Cache::from_env().path().clone()
}

/// Downloads (or finds in the cache) what a model needs, returning the snapshot directory.
pub fn fetch(model: &HubModel) -> Result<PathBuf> {
    fetch_with(model, "config.json", hint(model), |api_repo, get| {
        for file in OPTIONAL_FILES {
            // Absent optional files are normal (a 404); the loader reports what it then lacks.
            let _ = api_repo.get(file);
        }
        match get("model.safetensors.index.json") {
            Ok(index) => {
                for shard in crate::load::shard_files(&index)? {
                    get(&shard)?;
                }
            }
            Err(_) => {
                get("model.safetensors")?;
            }
        }
        Ok(())
    })
}

/// Downloads (or finds in the cache) a PEFT LoRA adapter repository (`--lora-adapters` with
/// a hub id), returning its snapshot directory.
pub fn fetch_adapter(model: &HubModel) -> Result<PathBuf> {
    let hint = format!(
        "download it where the hub is reachable (e.g. `hf download {} --local-dir DIR`) and give `--lora-adapters NAME=DIR`, or set HF_HOME to a cache that holds it",
        model.id
    );
    fetch_with(model, crate::lora::CONFIG_FILE, hint, |_, get| {
        get(crate::lora::WEIGHTS_FILE).map(|_| ())
    })
}

/// The snapshot directory of `model` holding `first` and whatever `rest` fetches; `hint`
/// says what to do when the hub cannot give them.
fn fetch_with(
    model: &HubModel,
    first: &str,
    hint: String,
    rest: impl FnOnce(&hf_hub::api::sync::ApiRepo, &dyn Fn(&str) -> Result<PathBuf>) -> Result<()>,
) -> Result<PathBuf> {
    let repo = Repo::with_revision(model.id.clone(), RepoType::Model, model.revision.clone());
    if offline() {
        let cached = Cache::from_env().repo(repo);
        let config = cached.get(first).ok_or_else(|| {
            ModelError::Hub(format!(
                "HF_HUB_OFFLINE is set and `{}` (revision {}) is not in the cache at {}: {}",
                model.id,
                model.revision,
                Cache::from_env().path().display(),
                hint
            ))
        })?;
        return config
            .parent()
            .map(PathBuf::from)
            .ok_or_else(|| ModelError::Hub("cache path has no parent".into()));
    }
    let endpoint = std::env::var("HF_ENDPOINT").unwrap_or_else(|_| DEFAULT_ENDPOINT.into());
    probe(&endpoint, model, first).map_err(|why| {
        ModelError::Hub(format!(
            "cannot reach {endpoint} to fetch `{}`: {why}; {hint}",
            model.id,
        ))
    })?;
    let token = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty());
    let api = ApiBuilder::from_env()
        .with_progress(false)
        .with_token(token)
        .build()
        .map_err(|e| ModelError::Hub(e.to_string()))?;
    let api_repo = api.repo(repo);
    let get = |file: &str| {
        api_repo
            .get(file)
            .map_err(|e| ModelError::Hub(format!("`{}`: {file}: {e}", model.id)))
    };
    let config = get(first)?;
    rest(&api_repo, &get)?;
    config
        .parent()
        .map(PathBuf::from)
        .ok_or_else(|| ModelError::Hub("cache path has no parent".into()))
}

/// Asks the hub for the headers of one of the model's files within [`PROBE_TIMEOUT`], name
/// resolution included: a hub that is unreachable, or that accepts connections and never
/// answers, fails here instead of hanging the download (hf-hub's client has no timeout).
fn probe(endpoint: &str, model: &HubModel, file: &str) -> Result<(), String> {
    let url = format!(
        "{}/{}/resolve/{}/{file}",
        endpoint.trim_end_matches('/'),
        model.id,
        model.revision
    );
    let (sender, receiver) = mpsc::channel();
    // Name resolution cannot be given a timeout, so the probe runs on a thread we can abandon.
    std::thread::spawn(move || {
        let agent = ureq::AgentBuilder::new()
            .timeout(PROBE_TIMEOUT)
            .redirects(0)
            .build();
        let outcome = match agent.head(&url).call() {
            // Any HTTP answer (even 401/404) means the hub is there; hf-hub reports the details.
            Ok(_) | Err(ureq::Error::Status(..)) => Ok(()),
            Err(ureq::Error::Transport(error)) => Err(error.to_string()),
        };
        let _ = sender.send(outcome);
    });
    receiver
        .recv_timeout(PROBE_TIMEOUT + Duration::from_secs(1))
        .unwrap_or_else(|_| Err(format!("no answer within {} s", PROBE_TIMEOUT.as_secs())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn an_unreachable_endpoint_fails_fast_with_a_hint() {
        // A silent server (accepts, never answers) is covered by the end-to-end tests.
        // A port nobody listens on: the connect is refused at once.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or(9);
        let started = Instant::now();
        let model = HubModel {
            id: "org/model".into(),
            revision: "main".into(),
        };
        let outcome = probe(&format!("http://127.0.0.1:{closed}"), &model, "config.json");
        assert!(outcome.is_err());
        assert!(started.elapsed() < PROBE_TIMEOUT + Duration::from_secs(2));
        let message = hint(&model);
        assert!(message.contains("--model-id DIR"), "{message}");
    }
}
