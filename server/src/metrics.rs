//! Prometheus metrics, named `lantern_*`, durations in seconds, counters ending in `_total`.

use lantern_engine::{Completion, SchedulerStats};
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub requests_started: IntCounter,
    /// Requests whose client went away before the answer ended (a closed stream, a Stop).
    pub requests_cancelled: IntCounter,
    pub requests: IntCounterVec,
    pub generated_tokens: IntCounter,
    pub prompt_tokens: IntCounter,
    pub time_to_first_token: Histogram,
    pub queue_time: Histogram,
    pub request_duration: Histogram,
    pub inter_token_latency: Histogram,
    kv_blocks_used: IntGauge,
    kv_blocks_total: IntGauge,
    running: IntGauge,
    batch_size: IntGauge,
    waiting: IntGauge,
    preemptions: IntCounter,
    kv_blocks_cached_idle: IntGauge,
    prefix_cache_queries: IntCounter,
    prefix_cache_query_tokens: IntCounter,
    prefix_cache_hits: IntCounter,
    /// 1 per healthy engine, 0 per failed one (`engine` label): a pool that lost an engine
    /// still answers `/ping` 200, and this shows the capacity it lost.
    engine_healthy: prometheus::IntGaugeVec,
    /// Generation requests per LoRA adapter (`adapter` label, the registered name).
    lora_requests: IntCounterVec,
    /// The engine's load under vLLM's names, rendered after these.
    pub vllm: crate::vllm_metrics::VllmMetrics,
}

fn counter(registry: &Registry, name: &str, help: &str) -> prometheus::Result<IntCounter> {
    let c = IntCounter::new(name, help)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

/// Brings a counter up to a total the engine keeps since it started.
/// The mean time between a request's tokens after the first, in seconds (`None` for fewer
/// than two tokens).
pub fn inter_token_latency(completion: &Completion) -> Option<f64> {
    let gaps = completion
        .generated_tokens
        .checked_sub(1)
        .filter(|&n| n > 0)?;
    let decoding = completion
        .total_time
        .saturating_sub(completion.time_to_first_token);
    Some(decoding.as_secs_f64() / gaps as f64)
}

fn catch_up(counter: &IntCounter, total: u64) {
    counter.inc_by(total.saturating_sub(counter.get()));
}

fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    buckets: Vec<f64>,
) -> prometheus::Result<Histogram> {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))?;
    registry.register(Box::new(h.clone()))?;
    Ok(h)
}

fn gauge(registry: &Registry, name: &str, help: &str) -> prometheus::Result<IntGauge> {
    let g = IntGauge::new(name, help)?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}

impl Metrics {
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let latency = vec![
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        ];
        let requests_started = IntCounter::new(
            "lantern_requests_started_total",
            "Generation requests submitted to the engine",
        )?;
        registry.register(Box::new(requests_started.clone()))?;
        let requests = IntCounterVec::new(
            Opts::new(
                "lantern_requests_total",
                "Finished HTTP requests by route and status",
            ),
            &["route", "status"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        let generated_tokens =
            IntCounter::new("lantern_generated_tokens_total", "Tokens generated")?;
        registry.register(Box::new(generated_tokens.clone()))?;
        let prompt_tokens =
            IntCounter::new("lantern_prompt_tokens_total", "Prompt tokens submitted")?;
        registry.register(Box::new(prompt_tokens.clone()))?;
        let engine_healthy = prometheus::IntGaugeVec::new(
            Opts::new(
                "lantern_engine_healthy",
                "1 while the engine serves, 0 once it has failed (one series per data-parallel engine)",
            ),
            &["engine"],
        )?;
        registry.register(Box::new(engine_healthy.clone()))?;
        let lora_requests = IntCounterVec::new(
            Opts::new(
                "lantern_lora_requests_total",
                "Generation requests run under each LoRA adapter",
            ),
            &["adapter"],
        )?;
        registry.register(Box::new(lora_requests.clone()))?;
        Ok(Self {
            lora_requests,
            prompt_tokens,
            time_to_first_token: histogram(
                &registry,
                "lantern_time_to_first_token_seconds",
                "Submission to first token",
                latency.clone(),
            )?,
            queue_time: histogram(
                &registry,
                "lantern_queue_time_seconds",
                "Submission to first scheduling",
                latency.clone(),
            )?,
            request_duration: histogram(
                &registry,
                "lantern_request_duration_seconds",
                "Submission to last token",
                latency,
            )?,
            inter_token_latency: histogram(
                &registry,
                "lantern_inter_token_latency_seconds",
                "Mean time between tokens of a request",
                vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0],
            )?,
            kv_blocks_used: gauge(
                &registry,
                "lantern_kv_cache_blocks_used",
                "KV-cache blocks in use",
            )?,
            kv_blocks_total: gauge(
                &registry,
                "lantern_kv_cache_blocks",
                "KV-cache blocks in all (capacity)",
            )?,
            running: gauge(
                &registry,
                "lantern_running_sequences",
                "Sequences being decoded",
            )?,
            waiting: gauge(&registry, "lantern_waiting_sequences", "Sequences queued")?,
            batch_size: gauge(
                &registry,
                "lantern_batch_size",
                "Sequences in the last engine step",
            )?,
            preemptions: counter(
                &registry,
                "lantern_preemptions_total",
                "Sequences preempted (their blocks freed, recomputed later)",
            )?,
            kv_blocks_cached_idle: gauge(
                &registry,
                "lantern_kv_cache_blocks_cached_idle",
                "KV-cache blocks holding a cached prefix that no sequence holds (evicted when needed)",
            )?,
            prefix_cache_queries: counter(
                &registry,
                "lantern_prefix_cache_queries_total",
                "Admissions that looked their prompt up in the prefix cache",
            )?,
            prefix_cache_query_tokens: counter(
                &registry,
                "lantern_prefix_cache_query_tokens_total",
                "Prompt tokens those lookups could have found (whole blocks, the last token excluded)",
            )?,
            prefix_cache_hits: counter(
                &registry,
                "lantern_prefix_cache_hits_total",
                "Prompt tokens taken from the prefix cache instead of prefilled",
            )?,
            requests_cancelled: counter(
                &registry,
                "lantern_requests_cancelled_total",
                "Generation requests cancelled because their client went away before the end",
            )?,
            requests_started,
            requests,
            generated_tokens,
            registry,
            engine_healthy,
            vllm: crate::vllm_metrics::VllmMetrics::new()?,
        })
    }

    /// Each engine's health, in engine order, for the next render.
    pub fn set_engine_health(&self, healthy: impl IntoIterator<Item = bool>) {
        for (engine, healthy) in healthy.into_iter().enumerate() {
            self.engine_healthy
                .with_label_values(&[&engine.to_string()])
                .set(i64::from(healthy));
        }
    }

    /// A request for LoRA adapter `name`.
    pub fn lora_request(&self, name: &str) {
        self.lora_requests.with_label_values(&[name]).inc();
    }

    /// A request routed to `engine`, its prompt `prompt_tokens` long.
    pub fn submitted(&self, engine: usize, prompt_tokens: usize) {
        self.prompt_tokens.inc_by(prompt_tokens as u64);
        self.vllm.submitted(engine, prompt_tokens);
    }

    /// A request's end on `engine`.
    pub fn observe(&self, completion: &Completion, engine: usize) {
        self.vllm.observe(completion, engine);
        self.generated_tokens
            .inc_by(completion.generated_tokens as u64);
        self.time_to_first_token
            .observe(completion.time_to_first_token.as_secs_f64());
        self.queue_time.observe(completion.queue_time.as_secs_f64());
        self.request_duration
            .observe(completion.total_time.as_secs_f64());
        if let Some(seconds) = inter_token_latency(completion) {
            self.inter_token_latency.observe(seconds);
        }
    }

    /// The text exposition, with the engine's gauges as of now.
    pub fn render(&self, engine: Option<SchedulerStats>) -> String {
        if let Some(stats) = engine {
            self.kv_blocks_used.set(stats.used_blocks as i64);
            self.kv_blocks_total.set(stats.total_blocks as i64);
            self.running.set(stats.running as i64);
            self.batch_size.set(stats.last_batch_size as i64);
            self.waiting.set(stats.waiting as i64);
            self.kv_blocks_cached_idle
                .set(stats.cached_idle_blocks as i64);
            // The engine counts since start; the counters catch up to it.
            catch_up(&self.preemptions, stats.preemptions);
            catch_up(&self.prefix_cache_queries, stats.prefix_cache.queries);
            catch_up(
                &self.prefix_cache_query_tokens,
                stats.prefix_cache.queried_tokens,
            );
            catch_up(&self.prefix_cache_hits, stats.prefix_cache.hit_tokens);
        }
        let mut buffer = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buffer);
        String::from_utf8(buffer).unwrap_or_default()
    }
}
