//! Starting engines: the KV cache sized, the model warmed up at the configured budgets, the
//! grammar compiler built, and each engine's thread started behind an [`EngineHandle`];
//! several engines (data parallelism) behind one [`EnginePool`].

use crate::channel::Shared;
use crate::config::{EngineConfig, StartError};
use crate::constraint::Constraints;
use crate::handle::EngineHandle;
use crate::pool::EnginePool;
use crate::prefill_budget::PrefillBudget;
use crate::scheduler::{Scheduler, SchedulerConfig, SchedulerStats};
use crate::worker::Worker;
use lantern_models::{Decoder, LogitsWanted, SequenceStep, TokenizerBundle};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokenizers::Tokenizer;

/// Sizes the KV cache, warms the model up at the configured budgets and starts the engine
/// thread. A budget the device cannot hold fails here, naming the setting to lower.
pub fn start(
    decoder: Decoder,
    tokenizer: &TokenizerBundle,
    config: &EngineConfig,
) -> Result<EngineHandle, StartError> {
    start_with_draft(decoder, None, tokenizer, config)
}

/// [`start`] with a draft model proposing for speculative decoding (`config.speculate`
/// tokens) instead of prompt lookup. It must share the model's tokenizer.
pub fn start_with_draft(
    decoder: Decoder,
    draft: Option<Decoder>,
    tokenizer: &TokenizerBundle,
    config: &EngineConfig,
) -> Result<EngineHandle, StartError> {
    let grammar = Grammar::new(tokenizer, decoder.config().vocab_size);
    start_one(decoder, draft, tokenizer, &grammar, config)
}

/// Starts one engine per decoder (each on its own device, or sharing the CPU) behind one
/// pool. Engines on the CPU share its cache budget: each gets an equal part of what one
/// engine would get. The grammar compiler (and its cache) is shared by all.
pub fn start_pool(
    decoders: Vec<Decoder>,
    drafts: Vec<Decoder>,
    tokenizer: &TokenizerBundle,
    config: &EngineConfig,
    configure: impl Fn(usize, &mut EngineConfig),
) -> Result<EnginePool, StartError> {
    let Some(first) = decoders.first() else {
        return Err(StartError::Setting("no engine to start".into()));
    };
    let grammar = Grammar::new(tokenizer, first.config().vocab_size);
    let on_cpu = decoders.iter().filter(|d| d.device().is_cpu()).count();
    let cpu_share = match decoders.iter().find(|d| d.device().is_cpu()) {
        Some(decoder) if on_cpu > 1 => Some((config.num_blocks(decoder)? / on_cpu).max(1)),
        _ => None,
    };
    let mut engines = Vec::with_capacity(decoders.len());
    let mut drafts = drafts.into_iter();
    for (index, decoder) in decoders.into_iter().enumerate() {
        let mut engine_config = config.clone();
        if let (Some(blocks), true) = (cpu_share, decoder.device().is_cpu()) {
            engine_config.cache = crate::CacheSize::Blocks(blocks);
        }
        configure(index, &mut engine_config);
        let engine = start_one(decoder, drafts.next(), tokenizer, &grammar, &engine_config)?;
        tracing::info!(engine = index, device = engine.device(), "engine ready");
        engines.push(engine);
    }
    EnginePool::new(engines, config.block_size)
}

/// The tokenizer and grammar compiler every engine of a model shares.
struct Grammar {
    tokenizer: Arc<Tokenizer>,
    constraints: Result<Arc<Constraints>, String>,
}

impl Grammar {
    fn new(tokenizer: &TokenizerBundle, vocab_size: usize) -> Self {
        let shared = Arc::new(tokenizer.tokenizer.clone());
        let constraints =
            Constraints::new(shared.clone(), &tokenizer.eos_token_ids, vocab_size).map(Arc::new);
        if let Err(error) = &constraints {
            tracing::warn!(%error, "structured output (grammars) is unavailable for this model");
        }
        Self {
            tokenizer: shared,
            constraints,
        }
    }
}

fn start_one(
    mut decoder: Decoder,
    draft: Option<Decoder>,
    tokenizer: &TokenizerBundle,
    grammar: &Grammar,
    config: &EngineConfig,
) -> Result<EngineHandle, StartError> {
    // Keys and values in half precision on the CPU kernels unless set otherwise (llama.cpp's
    // default): before the cache is sized, which the element size halves.
    let kv_dtype = match (config.kv_cache_dtype, decoder.runs_cpu_kernels()) {
        (Some(dtype), _) => Some(dtype),
        (None, true) => Some(lantern_models::KvDtype::F16),
        (None, false) => None,
    };
    if let Some(dtype) = kv_dtype {
        decoder.set_kv_cache_dtype(dtype)?;
    }
    let mut draft = draft;
    if let (Some(dtype), Some(draft)) = (kv_dtype, draft.as_mut()) {
        if draft.runs_cpu_kernels() {
            draft.set_kv_cache_dtype(dtype)?;
        }
    }
    let draft = match draft {
        Some(draft) if draft.config().vocab_size != decoder.config().vocab_size => {
            return Err(StartError::Setting(format!(
                "the draft model's vocabulary ({} tokens) is not the model's ({}): a draft model must share the model's tokenizer",
                draft.config().vocab_size,
                decoder.config().vocab_size
            )))
        }
        Some(draft) => Some(
            crate::draft_model::DraftModel::new(
                draft,
                config.block_size,
                crate::speculation::MAX_SPECULATING_BATCH,
                config.speculate.clamp(1, crate::speculation::MAX_SPECULATE),
            )
            .map_err(|e| StartError::Setting(format!("the draft model's cache: {e}")))?,
        ),
        None => None,
    };
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
        decoder.allocate_cache(blocks, config.block_size)?;
        warm_up(&mut decoder, &scheduler_config(blocks))?;
        decoder.free_cache();
        decoder.synchronize()?;
    }
    let num_blocks = config.num_blocks(&decoder)?;
    let scheduler_config = scheduler_config(num_blocks);
    decoder.allocate_cache(num_blocks, config.block_size)?;
    let (warm_up_tokens, warm_up_time) = warm_up(&mut decoder, &scheduler_config)?;
    // Step costs are measured whatever the settings (speculation reads them too); the stall
    // bound applies them only when configured.
    let mut step_costs = PrefillBudget::new(
        config.max_decode_stall.unwrap_or(std::time::Duration::MAX),
        config.max_batch_prefill_tokens,
        config.block_size,
    );
    step_costs.observe(warm_up_tokens, 0, warm_up_time);
    // Loaded on one thread, run on the engine thread: nothing may still be in flight.
    decoder.synchronize()?;
    let shared = Arc::new(Shared {
        healthy: AtomicBool::new(true),
        stats: Mutex::new(SchedulerStats {
            total_blocks: num_blocks,
            free_blocks: num_blocks,
            ..Default::default()
        }),
        adapters: Mutex::new(Default::default()),
    });
    let (commands, receiver) = std::sync::mpsc::channel();
    let vocab_size = decoder.config().vocab_size;
    let cache_attention = decoder.attention_name();
    let kv_cache_dtype = decoder.kv_cache_dtype_name();
    let device = lantern_kernels::device_choice::name(decoder.device());
    let sample_on_device = config
        .sample_on_device
        .unwrap_or(!decoder.device().is_cpu());
    let worker = Worker::new(
        decoder,
        grammar.tokenizer.clone(),
        tokenizer.eos_token_ids.clone(),
        Scheduler::new(scheduler_config),
        receiver,
        shared.clone(),
    )
    .with_fault_policy(config.faults)
    .with_idle_release(config.release_memory_after_idle)
    .with_step_costs(step_costs, config.max_decode_stall.is_some())
    .with_speculation(config.speculate)
    .with_draft_model(draft)
    .with_sampling_place(sample_on_device)
    .with_adapters(config.max_loras, config.max_lora_rank);
    std::thread::Builder::new()
        .name("lantern-engine".into())
        .spawn(move || worker.run())
        .map_err(|e| StartError::Setting(format!("cannot start the engine thread: {e}")))?;
    tracing::info!(
        num_blocks,
        block_size = config.block_size,
        kv_cache_tokens = num_blocks * config.block_size,
        kv_cache_dtype = %kv_cache_dtype,
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
        constraints: grammar.constraints.clone(),
        device,
        attention: cache_attention,
        kv_cache_dtype,
    })
}

/// One forward step as large as the budgets allow: `max_num_seqs` sequences sharing
/// `max_batch_prefill_tokens` prompt tokens. Returns the tokens it ran and how long it took.
fn warm_up(
    decoder: &mut Decoder,
    config: &SchedulerConfig,
) -> Result<(usize, std::time::Duration), StartError> {
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
            adapter: None,
        })
        .collect();
    let started = Instant::now();
    decoder.forward(&steps).map_err(|e| {
        StartError::Warmup(format!(
            "warm-up at max_batch_prefill_tokens={} and max_num_seqs={} failed ({e}): lower them",
            config.max_batch_prefill_tokens, config.max_num_seqs
        ))
    })?;
    let elapsed = started.elapsed();
    tracing::info!(
        sequences,
        per_sequence,
        seconds = elapsed.as_secs_f64(),
        "warm-up step done"
    );
    Ok((sequences * per_sequence, elapsed))
}
