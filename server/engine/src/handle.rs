//! The cloneable [`EngineHandle`] the HTTP layer holds: `submit` returns a stream of events;
//! dropping the stream cancels the request. The engine is started in `startup.rs`.

use crate::adapters::{AdapterRef, AdapterStats};
use crate::channel::{Command, Shared};
use crate::constraint::Constraints;
use crate::limits::{FieldNames, Refusal, RequestSize};
use crate::request::{Event, GenerateRequest};
use crate::routing::Outstanding;
use crate::scheduler::{SchedulerConfig, SchedulerStats, SequenceId};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

/// Why a request was not accepted. Each is the client's doing except `Unavailable`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SubmitError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("token id {token} is outside the vocabulary ({vocab_size} tokens)")]
    UnknownToken { token: u32, vocab_size: usize },
    #[error("the engine is not available: {0}")]
    Unavailable(String),
}

/// The events of one request. Dropping it cancels the request.
#[derive(Debug)]
pub struct EventStream {
    receiver: UnboundedReceiver<Event>,
    /// The index of the engine running it (an [`EnginePool`](crate::EnginePool)'s; 0 alone).
    engine: usize,
    /// Its work, counted against that engine's load while the stream lives.
    _outstanding: Option<Outstanding>,
}

impl EventStream {
    /// The next event; `None` after the last one.
    pub async fn recv(&mut self) -> Option<Event> {
        self.receiver.recv().await
    }

    /// The index of the engine running the request.
    pub fn engine(&self) -> usize {
        self.engine
    }

    /// Marks the stream as `engine`'s, holding `outstanding` work against it until dropped.
    pub(crate) fn routed(mut self, engine: usize, outstanding: Option<Outstanding>) -> Self {
        self.engine = engine;
        self._outstanding = outstanding;
        self
    }
}

#[derive(Clone)]
pub struct EngineHandle {
    pub(crate) commands: Sender<Command>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) next_id: Arc<AtomicU64>,
    /// The limits requests are checked against before they queue.
    pub(crate) limits: SchedulerConfig,
    pub(crate) vocab_size: usize,
    /// Compiles grammars for this model's vocabulary; `Err` says why there is none.
    pub(crate) constraints: Result<Arc<Constraints>, String>,
    /// Where the model runs (`cpu`, `cuda:0`) and what reads its KV cache (`cpu`,
    /// `flash-attn`, `portable`), for logs and `/info`.
    pub(crate) device: String,
    pub(crate) attention: &'static str,
    /// What the KV cache stores keys and values as (`float32`, `float16`, `bfloat16`).
    pub(crate) kv_cache_dtype: String,
}

impl std::fmt::Debug for EngineHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineHandle")
            .field("stats", &self.stats())
            .finish()
    }
}

impl EngineHandle {
    /// Queues a request. Errors come back at once for requests that could never run.
    pub fn submit(&self, request: GenerateRequest) -> Result<EventStream, SubmitError> {
        self.validate(&request)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.send(id, request, None)
    }

    /// Queues `n` samples of one request (OpenAI's `n`, `best_of`), one stream each. The first
    /// prefills the prompt; the others wait for it and take its full blocks from the prefix
    /// cache, computing only the prompt's last partial block. With a seed, sample `i` samples
    /// with `seed + i`: different and reproducible.
    pub fn submit_samples(
        &self,
        request: GenerateRequest,
        n: usize,
    ) -> Result<Vec<EventStream>, SubmitError> {
        self.validate(&request)?;
        let first = self.next_id.fetch_add(n as u64, Ordering::Relaxed);
        (0..n)
            .map(|i| {
                let mut sample = request.clone();
                sample.sampling.seed = request.sampling.seed.map(|s| s.wrapping_add(i as u64));
                let leader = (i > 0).then_some(first);
                self.send(first + i as u64, sample, leader)
            })
            .collect()
    }

    fn validate(&self, request: &GenerateRequest) -> Result<(), SubmitError> {
        if !self.is_healthy() {
            return Err(SubmitError::Unavailable("the engine is unhealthy".into()));
        }
        let size = RequestSize {
            prompt_tokens: Some(request.prompt.len()),
            max_new_tokens: Some(request.max_new_tokens),
            top_n_tokens: request.sampling.top_n_tokens,
        };
        self.limits.limits().check(size, FieldNames::ENGINE)?;
        let biased = request.sampling.logit_bias.iter().map(|&(t, _)| t);
        if let Some(token) = request
            .prompt
            .iter()
            .copied()
            .chain(biased)
            .find(|&t| t as usize >= self.vocab_size)
        {
            return Err(SubmitError::UnknownToken {
                token,
                vocab_size: self.vocab_size,
            });
        }
        Ok(())
    }

    fn send(
        &self,
        id: SequenceId,
        request: GenerateRequest,
        leader: Option<SequenceId>,
    ) -> Result<EventStream, SubmitError> {
        let (events, receiver) = unbounded_channel();
        let command = Command::Submit {
            id,
            request: Box::new(request),
            leader,
            events,
            submitted_at: Instant::now(),
        };
        self.commands
            .send(command)
            .map_err(|_| SubmitError::Unavailable("the engine thread has stopped".into()))?;
        Ok(EventStream {
            receiver,
            engine: 0,
            _outstanding: None,
        })
    }

    /// Entries in a row of the model's logits: token ids run below it.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The grammar compiler for this model (structured output), or why there is none.
    pub fn constraints(&self) -> Result<Arc<Constraints>, String> {
        self.constraints.clone()
    }

    /// False after a failed step or panic: the HTTP layer's `/ping` reports it.
    pub fn is_healthy(&self) -> bool {
        self.shared.healthy.load(Ordering::Acquire)
    }

    /// Blocks and sequences, as of the last step.
    pub fn stats(&self) -> SchedulerStats {
        self.shared.stats.lock().map(|s| *s).unwrap_or_default()
    }

    pub fn limits(&self) -> &SchedulerConfig {
        &self.limits
    }

    pub fn device(&self) -> &str {
        &self.device
    }

    pub fn attention(&self) -> &'static str {
        self.attention
    }

    pub fn kv_cache_dtype(&self) -> &str {
        &self.kv_cache_dtype
    }

    /// Asks the engine thread to load `adapter` now (between steps); resolves when it did,
    /// or with why it could not.
    pub fn load_adapter(
        &self,
        adapter: AdapterRef,
    ) -> impl std::future::Future<Output = Result<(), String>> + Send + 'static {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let sent = self.commands.send(Command::LoadAdapter { adapter, reply });
        async move {
            sent.map_err(|_| "the engine thread has stopped".to_string())?;
            answer
                .await
                .map_err(|_| "the engine thread has stopped".to_string())?
        }
    }

    /// Frees adapter `id` in the decoder once the engine thread next takes commands.
    pub fn unload_adapter(&self, id: u32) {
        let _ = self.commands.send(Command::UnloadAdapter { id });
    }

    /// The adapters running, waiting and loaded, as of the last step.
    pub fn adapter_stats(&self) -> AdapterStats {
        self.shared
            .adapters
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }
}
