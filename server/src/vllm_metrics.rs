//! The engine's load under vLLM's metric names, beside Lantern's own: Kubernetes inference
//! routing (the Gateway API Inference Extension's endpoint picker, llm-d, KServe) and the
//! published KEDA/HPA guides read these names (the extension's model-server protocol,
//! `docs/proposals/003-model-server-protocol`), and read a pod without an engine label as vLLM.
//!
//! Series carry vLLM's labels: `model_name`, and `engine` (the engine's index among the
//! data-parallel engines, "0" alone). Gauges are set from each engine's statistics at each
//! scrape; counters and histograms move as requests are routed and end.

use lantern_engine::{Completion, SchedulerStats};
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};
use std::borrow::Cow;
use std::sync::OnceLock;

/// What the configuration says about the KV cache, for `vllm:cache_config_info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    pub block_size: usize,
    pub cache_dtype: String,
    pub prefix_caching: bool,
}

/// The adapters of running and waiting requests (names) and how many may be loaded at
/// once, for `vllm:lora_requests_info`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoraInfo {
    pub running: Vec<String>,
    pub waiting: Vec<String>,
    pub max_lora: usize,
}

pub struct VllmMetrics {
    registry: Registry,
    /// The served model's name, once it is loaded (the `model_name` label).
    model_name: OnceLock<String>,
    running: GaugeVec,
    waiting: GaugeVec,
    kv_cache_usage: GaugeVec,
    gpu_cache_usage: GaugeVec,
    cache_config: GaugeVec,
    lora_requests: GaugeVec,
    prompt_tokens: IntCounterVec,
    generation_tokens: IntCounterVec,
    prefix_cache_queries: IntCounterVec,
    prefix_cache_hits: IntCounterVec,
    spec_drafts: IntCounterVec,
    spec_draft_tokens: IntCounterVec,
    spec_accepted_tokens: IntCounterVec,
    spec_accepted_per_position: IntCounterVec,
    time_to_first_token: HistogramVec,
    inter_token_latency: HistogramVec,
    e2e_request_latency: HistogramVec,
}

impl VllmMetrics {
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let gauge = |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<GaugeVec> {
            let gauge = GaugeVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(gauge.clone()))?;
            Ok(gauge)
        };
        let engine = ["model_name", "engine"];
        let counter = |name: &str, help: &str| -> prometheus::Result<IntCounterVec> {
            let counter = IntCounterVec::new(Opts::new(name, help), &engine)?;
            registry.register(Box::new(counter.clone()))?;
            Ok(counter)
        };
        let histogram =
            |name: &str, help: &str, buckets: &[f64]| -> prometheus::Result<HistogramVec> {
                let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
                let histogram = HistogramVec::new(opts, &engine)?;
                registry.register(Box::new(histogram.clone()))?;
                Ok(histogram)
            };
        let latency = [
            0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0,
        ];
        Ok(Self {
            model_name: OnceLock::new(),
            prompt_tokens: counter(
                "vllm:prompt_tokens_total",
                "Prompt tokens submitted (lantern_prompt_tokens_total)",
            )?,
            generation_tokens: counter(
                "vllm:generation_tokens_total",
                "Tokens generated (lantern_generated_tokens_total)",
            )?,
            prefix_cache_queries: counter(
                "vllm:prefix_cache_queries_total",
                "Prompt tokens looked up in the prefix cache (lantern_prefix_cache_query_tokens_total)",
            )?,
            prefix_cache_hits: counter(
                "vllm:prefix_cache_hits_total",
                "Prompt tokens found in the prefix cache (lantern_prefix_cache_hits_total)",
            )?,
            spec_drafts: counter(
                "vllm:spec_decode_num_drafts_total",
                "Speculative drafts verified (--speculate)",
            )?,
            spec_draft_tokens: counter(
                "vllm:spec_decode_num_draft_tokens_total",
                "Tokens the verified drafts proposed",
            )?,
            spec_accepted_tokens: counter(
                "vllm:spec_decode_num_accepted_tokens_total",
                "Proposed tokens that stood",
            )?,
            spec_accepted_per_position: {
                let counter = IntCounterVec::new(
                    Opts::new(
                        "vllm:spec_decode_num_accepted_tokens_per_pos_total",
                        "Proposed tokens that stood, by their position in the draft",
                    ),
                    &["model_name", "engine", "position"],
                )?;
                registry.register(Box::new(counter.clone()))?;
                counter
            },
            time_to_first_token: histogram(
                "vllm:time_to_first_token_seconds",
                "Submission to first token (lantern_time_to_first_token_seconds)",
                &latency,
            )?,
            inter_token_latency: histogram(
                "vllm:inter_token_latency_seconds",
                "Mean time between a request's tokens (lantern_inter_token_latency_seconds)",
                &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0],
            )?,
            e2e_request_latency: histogram(
                "vllm:e2e_request_latency_seconds",
                "Submission to last token (lantern_request_duration_seconds)",
                &latency,
            )?,
            running: gauge(
                "vllm:num_requests_running",
                "Requests in the running batch (vLLM's name)",
                &engine,
            )?,
            waiting: gauge(
                "vllm:num_requests_waiting",
                "Requests waiting to be scheduled (vLLM's name)",
                &engine,
            )?,
            kv_cache_usage: gauge(
                "vllm:kv_cache_usage_perc",
                "KV-cache usage: the fraction of blocks held by requests, 0 to 1 (vLLM's name)",
                &engine,
            )?,
            gpu_cache_usage: gauge(
                "vllm:gpu_cache_usage_perc",
                "The same fraction under vLLM's older name, which older endpoint pickers read",
                &engine,
            )?,
            cache_config: gauge(
                "vllm:cache_config_info",
                "The KV cache's configuration in labels (value 1)",
                &[
                    "engine",
                    "block_size",
                    "num_gpu_blocks",
                    "cache_dtype",
                    "enable_prefix_caching",
                ],
            )?,
            lora_requests: gauge(
                "vllm:lora_requests_info",
                "Adapters running and waiting, as labels; the value is when they were last read (Unix seconds)",
                &["running_lora_adapters", "waiting_lora_adapters", "max_lora"],
            )?,
            registry,
        })
    }

    /// Names the served model (once, when it is loaded).
    pub fn set_model_name(&self, name: &str) {
        let _ = self.model_name.set(name.to_string());
    }

    fn labels(&self, engine: usize) -> [Cow<'_, str>; 2] {
        [
            Cow::Borrowed(self.model_name.get().map_or("", String::as_str)),
            Cow::Owned(engine.to_string()),
        ]
    }

    /// A request routed to `engine` with `prompt_tokens` in its prompt.
    pub fn submitted(&self, engine: usize, prompt_tokens: usize) {
        let labels = self.labels(engine);
        self.prompt_tokens
            .with_label_values(&labels)
            .inc_by(prompt_tokens as u64);
    }

    /// A request's end on `engine`: its tokens and timings.
    pub fn observe(&self, completion: &Completion, engine: usize) {
        let labels = self.labels(engine);
        self.generation_tokens
            .with_label_values(&labels)
            .inc_by(completion.generated_tokens as u64);
        self.time_to_first_token
            .with_label_values(&labels)
            .observe(completion.time_to_first_token.as_secs_f64());
        self.e2e_request_latency
            .with_label_values(&labels)
            .observe(completion.total_time.as_secs_f64());
        if let Some(seconds) = crate::metrics::inter_token_latency(completion) {
            self.inter_token_latency
                .with_label_values(&labels)
                .observe(seconds);
        }
    }

    /// The text exposition for the engines as `engines` (one entry per engine, in index
    /// order) describe them now; the prefix-cache counters follow each engine's counts.
    pub fn render(&self, engines: &[(SchedulerStats, CacheConfig)], lora: &LoraInfo) -> String {
        // One info series per engine: an old label set (another block count) is dropped first.
        self.cache_config.reset();
        for (index, (stats, cache)) in engines.iter().enumerate() {
            self.set_engine(index, stats, cache);
        }
        // One series, its value the time of the scrape as vLLM's: the label set of the last
        // scrape is dropped first, so a router never reads a stale adapter list.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.lora_requests.reset();
        self.lora_requests
            .with_label_values(&[
                lora.running.join(","),
                lora.waiting.join(","),
                lora.max_lora.to_string(),
            ])
            .set(now);
        let mut buffer = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buffer);
        String::from_utf8(buffer).unwrap_or_default()
    }

    fn set_engine(&self, index: usize, stats: &SchedulerStats, cache: &CacheConfig) {
        let labels = self.labels(index);
        let follow = |counter: &IntCounterVec, total: u64| {
            let counter = counter.with_label_values(&labels);
            counter.inc_by(total.saturating_sub(counter.get()));
        };
        follow(
            &self.prefix_cache_queries,
            stats.prefix_cache.queried_tokens,
        );
        follow(&self.prefix_cache_hits, stats.prefix_cache.hit_tokens);
        let spec = &stats.speculation;
        follow(&self.spec_drafts, spec.drafts);
        follow(&self.spec_draft_tokens, spec.draft_tokens);
        follow(&self.spec_accepted_tokens, spec.accepted_tokens);
        for (position, &accepted) in spec.accepted_at.iter().enumerate() {
            if accepted == 0 {
                continue; // positions never reached stay absent
            }
            let position = position.to_string();
            let counter = self.spec_accepted_per_position.with_label_values(&[
                &*labels[0],
                &*labels[1],
                &position,
            ]);
            counter.inc_by(accepted.saturating_sub(counter.get()));
        }
        self.running
            .with_label_values(&labels)
            .set(stats.running_requests as f64);
        self.waiting
            .with_label_values(&labels)
            .set(stats.waiting_requests as f64);
        let usage = if stats.total_blocks == 0 {
            0.0
        } else {
            stats.used_blocks as f64 / stats.total_blocks as f64
        };
        self.kv_cache_usage.with_label_values(&labels).set(usage);
        self.gpu_cache_usage.with_label_values(&labels).set(usage);
        let (block_size, blocks) = (cache.block_size.to_string(), stats.total_blocks.to_string());
        let prefix_caching = if cache.prefix_caching {
            "True"
        } else {
            "False"
        };
        self.cache_config
            .with_label_values(&[
                &*labels[1],
                &block_size,
                &blocks,
                &cache.cache_dtype,
                prefix_caching,
            ])
            .set(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_the_fraction_of_blocks_held_and_info_series_stay_one_per_engine() {
        let metrics = VllmMetrics::new().unwrap_or_else(|e| panic!("{e}"));
        let cache = CacheConfig {
            block_size: 16,
            cache_dtype: "float32".into(),
            prefix_caching: true,
        };
        let stats = SchedulerStats {
            total_blocks: 8,
            used_blocks: 2,
            running: 5,
            waiting: 2,
            running_requests: 3,
            waiting_requests: 1,
            ..Default::default()
        };
        metrics.set_model_name("m");
        let text = metrics.render(&[(stats, cache.clone())], &LoraInfo::default());
        assert!(
            text.contains("vllm:kv_cache_usage_perc{engine=\"0\",model_name=\"m\"} 0.25"),
            "{text}"
        );
        assert!(
            text.contains("vllm:num_requests_waiting{engine=\"0\",model_name=\"m\"} 1"),
            "{text}"
        );
        metrics.submitted(1, 7);
        let again = metrics.render(
            &[
                (
                    SchedulerStats {
                        total_blocks: 9,
                        ..stats
                    },
                    cache.clone(),
                ),
                (stats, cache),
            ],
            &LoraInfo::default(),
        );
        assert!(
            again.contains("vllm:prompt_tokens_total{engine=\"1\",model_name=\"m\"} 7"),
            "{again}"
        );
        assert_eq!(
            again.matches("vllm:cache_config_info{").count(),
            2,
            "{again}"
        );
        assert!(again.contains("num_gpu_blocks=\"9\""), "{again}");
        assert!(
            again.contains("vllm:num_requests_running{engine=\"1\",model_name=\"m\"} 3"),
            "{again}"
        );
    }

    /// One `lora_requests_info` series, naming the adapters as of this scrape.
    #[test]
    fn lora_requests_info_keeps_only_the_latest_label_set() {
        let metrics = VllmMetrics::new().unwrap_or_else(|e| panic!("{e}"));
        let busy = LoraInfo {
            running: vec!["tone".into(), "sql".into()],
            waiting: vec!["legal".into()],
            max_lora: 8,
        };
        let text = metrics.render(&[], &busy);
        assert!(
            text.contains("running_lora_adapters=\"tone,sql\"")
                && text.contains("waiting_lora_adapters=\"legal\"")
                && text.contains("max_lora=\"8\""),
            "{text}"
        );
        let idle = metrics.render(
            &[],
            &LoraInfo {
                max_lora: 8,
                ..LoraInfo::default()
            },
        );
        assert_eq!(
            idle.matches("vllm:lora_requests_info{").count(),
            1,
            "{idle}"
        );
        assert!(!idle.contains("tone"), "{idle}");
    }
}
