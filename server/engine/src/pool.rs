//! Several engines behind one handle (data parallelism): each with its own device, weights
//! and KV cache, requests routed among them by `routing.rs`. An engine that fails takes
//! only its own requests down; the pool serves while any engine is healthy.

use crate::adapters::{AdapterRef, AdapterStats};
use crate::constraint::Constraints;
use crate::handle::{EngineHandle, EventStream, SubmitError};
use crate::request::GenerateRequest;
use crate::routing::Router;
use crate::scheduler::{SchedulerConfig, SchedulerStats};
use crate::StartError;
use std::sync::Arc;

pub struct EnginePool {
    engines: Vec<EngineHandle>,
    router: Router,
}

impl std::fmt::Debug for EnginePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnginePool")
            .field("engines", &self.engines)
            .field("loads", &self.router.loads())
            .finish()
    }
}

impl EnginePool {
    /// The pool of `engines`; prompts are hashed in blocks of `block_size` tokens for
    /// prefix affinity.
    pub fn new(engines: Vec<EngineHandle>, block_size: usize) -> Result<Self, StartError> {
        if engines.is_empty() {
            return Err(StartError::Setting("no engine to start".into()));
        }
        let prefix_caching = engines.iter().all(|e| e.limits().prefix_caching);
        Ok(Self {
            router: Router::new(engines.len(), block_size, prefix_caching),
            engines,
        })
    }

    /// Queues a request on the engine the router picks.
    pub fn submit(&self, request: GenerateRequest) -> Result<EventStream, SubmitError> {
        let mut streams = self.submit_samples(request, 1)?;
        streams
            .pop()
            .ok_or_else(|| SubmitError::Unavailable("no stream came back".into()))
    }

    /// Queues `n` samples of one request, all on one engine (they share its prefill; see
    /// [`EngineHandle::submit_samples`]). An engine that turns out to have failed is passed
    /// over for the next choice; a request the engine refuses is refused.
    pub fn submit_samples(
        &self,
        request: GenerateRequest,
        n: usize,
    ) -> Result<Vec<EventStream>, SubmitError> {
        let per_sample = request.prompt.len() + request.max_new_tokens;
        let mut failed = vec![false; self.engines.len()];
        loop {
            let usable = |e: usize| !failed[e] && self.engines[e].is_healthy();
            // The first sample's stream holds the route's count; each other one its own.
            let adapter = request.adapter.as_ref().map(|a| a.id);
            let Some(route) = self
                .router
                .choose(&request.prompt, adapter, per_sample, usable)
            else {
                return Err(SubmitError::Unavailable(
                    "every engine has failed".to_string(),
                ));
            };
            let engine = route.engine;
            tracing::debug!(
                engine,
                expected_cached_tokens = route.expected_cached_tokens,
                "request routed"
            );
            match self.engines[engine].submit_samples(request.clone(), n) {
                Ok(streams) => {
                    let mut first = Some(route.outstanding);
                    return Ok(streams
                        .into_iter()
                        .map(|s| {
                            let held = first
                                .take()
                                .or_else(|| self.router.hold(engine, per_sample));
                            s.routed(engine, held)
                        })
                        .collect());
                }
                Err(SubmitError::Unavailable(reason)) => {
                    tracing::warn!(engine, %reason, "engine unavailable: routing elsewhere");
                    failed[engine] = true;
                }
                Err(refused) => return Err(refused),
            }
        }
    }

    pub fn engines(&self) -> &[EngineHandle] {
        &self.engines
    }

    /// Outstanding work per engine, in tokens (prompts and new-token budgets of the
    /// requests each holds).
    pub fn loads(&self) -> Vec<usize> {
        self.router.loads()
    }

    /// Healthy while any engine is: `/ping` answers 200 until the last one fails.
    pub fn is_healthy(&self) -> bool {
        self.engines.iter().any(EngineHandle::is_healthy)
    }

    /// All engines' statistics added together.
    pub fn stats(&self) -> SchedulerStats {
        let mut total = SchedulerStats::default();
        for engine in &self.engines {
            total += engine.stats();
        }
        total
    }

    /// The limits requests are checked against: the smallest engine's cache, so a request
    /// that passes fits whichever engine takes it.
    pub fn limits(&self) -> &SchedulerConfig {
        let smallest = self.engines.iter().min_by_key(|e| e.limits().num_blocks);
        smallest.unwrap_or(&self.engines[0]).limits()
    }

    /// KV-cache tokens of all engines together.
    pub fn kv_cache_tokens(&self) -> usize {
        self.engines
            .iter()
            .map(|e| e.limits().num_blocks * e.limits().block_size)
            .sum()
    }

    pub fn vocab_size(&self) -> usize {
        self.engines[0].vocab_size()
    }

    /// The grammar compiler, shared by every engine.
    pub fn constraints(&self) -> Result<Arc<Constraints>, String> {
        self.engines[0].constraints()
    }

    /// Every engine's device, in engine order (`cpu`, `cuda:0`, ...).
    pub fn devices(&self) -> Vec<&str> {
        self.engines.iter().map(EngineHandle::device).collect()
    }

    pub fn attention(&self) -> &'static str {
        self.engines[0].attention()
    }

    /// What the KV caches store keys and values as (every engine alike).
    pub fn kv_cache_dtype(&self) -> &str {
        self.engines[0].kv_cache_dtype()
    }

    /// Loads `adapter` into every engine's decoder now; the first engine's error if any
    /// fails (engines that did load it keep it until it is unloaded).
    pub async fn load_adapter(&self, adapter: &AdapterRef) -> Result<(), String> {
        let replies: Vec<_> = self
            .engines
            .iter()
            .filter(|e| e.is_healthy())
            .map(|e| e.load_adapter(adapter.clone()))
            .collect();
        for reply in replies {
            reply.await?;
        }
        Ok(())
    }

    /// Frees adapter `id` in every engine (no request may run under it any more).
    pub fn unload_adapter(&self, id: u32) {
        for engine in &self.engines {
            engine.unload_adapter(id);
        }
    }

    /// Every engine's adapter statistics together.
    pub fn adapter_stats(&self) -> AdapterStats {
        let mut total = AdapterStats::default();
        for engine in &self.engines {
            total += engine.adapter_stats();
        }
        total
    }
}

impl From<EngineHandle> for EnginePool {
    fn from(engine: EngineHandle) -> Self {
        let block_size = engine.limits().block_size;
        let prefix_caching = engine.limits().prefix_caching;
        Self {
            router: Router::new(1, block_size, prefix_caching),
            engines: vec![engine],
        }
    }
}
