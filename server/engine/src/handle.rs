//! Starting the engine, and the cloneable [`EngineHandle`] the HTTP layer holds: `submit`
//! returns a stream of events; dropping the stream cancels the request.

use crate::config::{EngineConfig, StartError};
use crate::constraint::Constraints;
use crate::request::{Event, GenerateRequest};
use crate::scheduler::{Refusal, Scheduler, SchedulerConfig, SchedulerStats, SequenceId};
use crate::worker::{Command, Worker};
use lantern_models::{Decoder, KvCache, LogitsWanted, SequenceStep, TokenizerBundle};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

/// State shared between the handles and the engine thread.
pub(crate) struct Shared {
    pub healthy: AtomicBool,
    pub stats: Mutex<SchedulerStats>,
}

/// Why a request was not accepted. Each is the client's doing except `Unavailable`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SubmitError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("token id {token} is outside the vocabulary ({vocab_size} tokens)")]
    UnknownToken { token: u32, vocab_size: usize },
    #[error("max_new_tokens must be at least 1")]
    NoNewTokens,
    #[error("top_n_tokens must be at most 5, got {0}")]
    TooManyAlternatives(usize),
    #[error("the engine is not available: {0}")]
    Unavailable(String),
}

/// The events of one request. Dropping it cancels the request.
#[derive(Debug)]
pub struct EventStream {
    receiver: UnboundedReceiver<Event>,
}

impl EventStream {
    /// The next event; `None` after the last one.
    pub async fn recv(&mut self) -> Option<Event> {
        self.receiver.recv().await
    }

    pub fn into_receiver(self) -> UnboundedReceiver<Event> {
        self.receiver
    }
}

#[derive(Clone)]
pub struct EngineHandle {
    commands: Sender<Command>,
    shared: Arc<Shared>,
    next_id: Arc<AtomicU64>,
    /// The limits requests are checked against before they queue.
    limits: SchedulerConfig,
    vocab_size: usize,
    /// Compiles grammars for this model's vocabulary; `Err` says why there is none.
    constraints: Result<Arc<Constraints>, String>,
    /// Where the model runs (`cpu`, `cuda:0`) and what reads its KV cache (`cpu`,
    /// `flash-attn`, `portable`), for logs and `/info`.
    device: String,
    attention: &'static str,
}

impl std::fmt::Debug for EngineHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineHandle")
            .field("stats", &self.stats())
            .finish()
    }
}

/// Sizes the KV cache, warms the model up at the configured budgets and starts the engine
/// thread. A budget the device cannot hold fails here, naming the setting to lower.
pub fn start(
    decoder: Decoder,
    tokenizer: &TokenizerBundle,
    config: &EngineConfig,
) -> Result<EngineHandle, StartError> {
    let scheduler_config = |num_blocks| SchedulerConfig {
        block_size: config.block_size,
        num_blocks,
        max_num_seqs: config.max_num_seqs,
        max_batch_prefill_tokens: config.max_batch_prefill_tokens,
        max_total_tokens: config.max_total_tokens,
        prefix_caching: config.prefix_caching,
    };
    if !decoder.device().is_cpu() {
        // A first warm-up on a cache just big enough for it: what the runtime keeps after a
        // step (cuBLAS workspaces, loaded kernels) is then in use when the cache is sized.
        let blocks = config
            .max_batch_prefill_tokens
            .div_ceil(config.block_size.max(1))
            + config.max_num_seqs;
        let probe = decoder.new_cache(blocks, config.block_size)?;
        warm_up(&decoder, &probe, &scheduler_config(blocks))?;
        drop(probe);
        decoder.synchronize()?;
    }
    let num_blocks = config.num_blocks(&decoder)?;
    let scheduler_config = scheduler_config(num_blocks);
    let cache = decoder.new_cache(num_blocks, config.block_size)?;
    warm_up(&decoder, &cache, &scheduler_config)?;
    // Loaded on one thread, run on the engine thread: nothing may still be in flight.
    decoder.synchronize()?;
    let shared = Arc::new(Shared {
        healthy: AtomicBool::new(true),
        stats: Mutex::new(SchedulerStats {
            total_blocks: num_blocks,
            free_blocks: num_blocks,
            ..Default::default()
        }),
    });
    let (commands, receiver) = std::sync::mpsc::channel();
    let vocab_size = decoder.config().vocab_size;
    let shared_tokenizer = Arc::new(tokenizer.tokenizer.clone());
    let constraints = Constraints::new(
        shared_tokenizer.clone(),
        &tokenizer.eos_token_ids,
        vocab_size,
    )
    .map(Arc::new);
    if let Err(error) = &constraints {
        tracing::warn!(%error, "structured output (grammars) is unavailable for this model");
    }
    let cache_attention = cache.attention_name();
    let device = lantern_kernels::device_choice::name(decoder.device());
    let sample_on_device = config
        .sample_on_device
        .unwrap_or(!decoder.device().is_cpu());
    let worker = Worker::new(
        decoder,
        cache,
        shared_tokenizer,
        tokenizer.eos_token_ids.clone(),
        Scheduler::new(scheduler_config),
        receiver,
        shared.clone(),
    )
    .with_fault_policy(config.faults)
    .with_idle_release(config.release_memory_after_idle)
    .with_sampling_place(sample_on_device);
    std::thread::Builder::new()
        .name("lantern-engine".into())
        .spawn(move || worker.run())
        .map_err(|e| StartError::Setting(format!("cannot start the engine thread: {e}")))?;
    tracing::info!(
        num_blocks,
        block_size = config.block_size,
        kv_cache_tokens = num_blocks * config.block_size,
        attention = cache_attention,
        device = %device,
        "engine started"
    );
    Ok(EngineHandle {
        commands,
        shared,
        next_id: Arc::new(AtomicU64::new(0)),
        limits: scheduler_config,
        vocab_size,
        constraints,
        device,
        attention: cache_attention,
    })
}

/// One forward step as large as the budgets allow: `max_num_seqs` sequences sharing
/// `max_batch_prefill_tokens` prompt tokens.
fn warm_up(decoder: &Decoder, cache: &KvCache, config: &SchedulerConfig) -> Result<(), StartError> {
    let tokens = config.max_batch_prefill_tokens;
    if tokens > config.num_blocks * config.block_size {
        return Err(StartError::Warmup(format!(
            "max_batch_prefill_tokens ({tokens}) exceeds the whole KV cache ({} blocks of {} tokens): lower --max-batch-prefill-tokens or give the cache more memory",
            config.num_blocks, config.block_size
        )));
    }
    // As many sequences as the budgets and the cache allow, sharing the prefill budget.
    let mut sequences = config.max_num_seqs.min(tokens).max(1);
    while sequences > 1
        && sequences * (tokens / sequences).div_ceil(config.block_size) > config.num_blocks
    {
        sequences -= 1;
    }
    let per_sequence = tokens / sequences;
    let blocks_each = per_sequence.div_ceil(config.block_size);
    let steps: Vec<SequenceStep> = (0..sequences)
        .map(|i| SequenceStep {
            tokens: vec![0; per_sequence],
            context_before: 0,
            block_table: ((i * blocks_each) as u32..((i + 1) * blocks_each) as u32).collect(),
            logits: LogitsWanted::Last,
        })
        .collect();
    let started = Instant::now();
    decoder.forward(&steps, cache).map_err(|e| {
        StartError::Warmup(format!(
            "warm-up at max_batch_prefill_tokens={} and max_num_seqs={} failed ({e}): lower them",
            config.max_batch_prefill_tokens, config.max_num_seqs
        ))
    })?;
    tracing::info!(
        sequences,
        per_sequence,
        seconds = started.elapsed().as_secs_f64(),
        "warm-up step done"
    );
    Ok(())
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
        if request.max_new_tokens == 0 {
            return Err(SubmitError::NoNewTokens);
        }
        if request.sampling.top_n_tokens > 5 {
            return Err(SubmitError::TooManyAlternatives(
                request.sampling.top_n_tokens,
            ));
        }
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
        self.limits
            .check(request.prompt.len(), request.max_new_tokens)?;
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
            request,
            leader,
            events,
            submitted_at: Instant::now(),
        };
        self.commands
            .send(command)
            .map_err(|_| SubmitError::Unavailable("the engine thread has stopped".into()))?;
        Ok(EventStream { receiver })
    }

    /// The grammar compiler for this model (structured output), or why there is none.
    /// Entries in a row of the model's logits: token ids run below it.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

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
}
