//! What handlers share: the settings, the model once it is loaded, the in-flight limit and the
//! metrics. Handlers never lock the engine; they only send to its channel.

use crate::config::ServerConfig;
use crate::metrics::Metrics;
use lantern_engine::EnginePool;
use lantern_models::{GenerationDefaults, TokenizerBundle};
use std::sync::{Arc, OnceLock};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use super::error::ApiError;

/// The loaded model as the HTTP layer sees it.
pub struct ServingModel {
    /// The engines serving it (one, or one per GPU with data parallelism).
    pub engine: EnginePool,
    pub tokenizer: TokenizerBundle,
    pub generation: GenerationDefaults,
    pub name: String,
    /// Weights dtype, as `/info` reports it.
    pub dtype: String,
    /// The format each class of weights runs in (`/info`'s `weight_formats`).
    pub weight_formats: std::collections::BTreeMap<String, String>,
    /// Bytes the weights take as served, one engine's (CPU kernels; `None` elsewhere).
    pub weight_bytes: Option<usize>,
    /// The model family (`llama`, `phi3`, ...) and the decoder toggles its config turned on.
    pub family: String,
    pub toggles: Vec<String>,
    /// Keeps special-token text in chat message content as text; `None` with
    /// `--content-special-tokens parse` or a tokenizer without special tokens.
    pub content_guard: Option<lantern_models::chat_prompt::ContentGuard>,
    /// The LoRA adapters requests may name.
    pub adapters: Arc<crate::adapters::Adapters>,
}

impl ServingModel {
    /// One token's text on its own (log-probability listings; special tokens spelled out).
    pub fn token_text(&self, id: u32) -> String {
        self.tokenizer
            .tokenizer
            .decode(&[id], false)
            .unwrap_or_default()
    }
}

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<ServerConfig>,
    pub metrics: Arc<Metrics>,
    model: Arc<OnceLock<Arc<ServingModel>>>,
    permits: Arc<Semaphore>,
    /// Turns true on SIGTERM: streams still running near the grace deadline are cut.
    pub shutdown: watch::Receiver<bool>,
}

impl AppState {
    pub fn new(config: ServerConfig, metrics: Metrics, shutdown: watch::Receiver<bool>) -> Self {
        Self {
            shutdown,
            permits: Arc::new(Semaphore::new(config.max_concurrent_requests)),
            config: Arc::new(config),
            metrics: Arc::new(metrics),
            model: Arc::new(OnceLock::new()),
        }
    }

    pub fn set_model(&self, model: ServingModel) {
        self.metrics.vllm.set_model_name(&model.name);
        let _ = self.model.set(Arc::new(model));
    }

    /// The model, or 503 while it loads.
    pub fn model(&self) -> Result<Arc<ServingModel>, ApiError> {
        self.model.get().cloned().ok_or(ApiError::NotReady)
    }

    /// Healthy: loaded and some engine has not failed. What `/ping` reports.
    pub fn is_healthy(&self) -> bool {
        self.model.get().is_some_and(|m| m.engine.is_healthy())
    }

    /// A slot for one request, or 429 when `max_concurrent_requests` are in flight.
    pub fn admit(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        self.permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| ApiError::Overloaded(self.config.max_concurrent_requests))
    }
}
