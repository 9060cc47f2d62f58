//! The engine's load under vLLM's metric names, beside Lantern's own: Kubernetes inference
//! routing (the Gateway API Inference Extension's endpoint picker, llm-d, KServe) and the
//! published KEDA/HPA guides read these names (the extension's model-server protocol,
//! `docs/proposals/003-model-server-protocol`), and read a pod without an engine label as vLLM.
//!
//! Series carry vLLM's labels: `model_name`, and `engine` (the engine's index; one engine
//! today). Set from the engine's statistics at each scrape, like the `lantern_*` gauges.

use lantern_engine::SchedulerStats;
use prometheus::{Encoder, GaugeVec, Opts, Registry, TextEncoder};

/// What the configuration says about the KV cache, for `vllm:cache_config_info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    pub block_size: usize,
    pub cache_dtype: String,
    pub prefix_caching: bool,
}

pub struct VllmMetrics {
    registry: Registry,
    running: GaugeVec,
    waiting: GaugeVec,
    kv_cache_usage: GaugeVec,
    gpu_cache_usage: GaugeVec,
    cache_config: GaugeVec,
    lora_requests: GaugeVec,
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
        Ok(Self {
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

    /// The text exposition for the engine of `model` as `stats` describe it now.
    pub fn render(&self, model: &str, stats: &SchedulerStats, cache: &CacheConfig) -> String {
        let engine = "0";
        let labels = [model, engine];
        self.running
            .with_label_values(&labels)
            .set(stats.running as f64);
        self.waiting
            .with_label_values(&labels)
            .set(stats.waiting as f64);
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
        // One info series: an old label set (another block count) is dropped first.
        self.cache_config.reset();
        self.cache_config
            .with_label_values(&[
                engine,
                &block_size,
                &blocks,
                &cache.cache_dtype,
                prefix_caching,
            ])
            .set(1.0);
        // No adapters are served yet: empty lists, no adapter slots.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.lora_requests.reset();
        self.lora_requests
            .with_label_values(&["", "", "0"])
            .set(now);
        let mut buffer = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buffer);
        String::from_utf8(buffer).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_the_fraction_of_blocks_held_and_info_series_stay_single() {
        let metrics = VllmMetrics::new().unwrap_or_else(|e| panic!("{e}"));
        let cache = CacheConfig {
            block_size: 16,
            cache_dtype: "float32".into(),
            prefix_caching: true,
        };
        let stats = SchedulerStats {
            total_blocks: 8,
            used_blocks: 2,
            running: 3,
            waiting: 1,
            ..Default::default()
        };
        let text = metrics.render("m", &stats, &cache);
        assert!(
            text.contains("vllm:kv_cache_usage_perc{engine=\"0\",model_name=\"m\"} 0.25"),
            "{text}"
        );
        assert!(
            text.contains("vllm:num_requests_waiting{engine=\"0\",model_name=\"m\"} 1"),
            "{text}"
        );
        let again = metrics.render(
            "m",
            &SchedulerStats {
                total_blocks: 9,
                ..stats
            },
            &cache,
        );
        assert_eq!(
            again.matches("vllm:cache_config_info{").count(),
            1,
            "{again}"
        );
        assert!(again.contains("num_gpu_blocks=\"9\""), "{again}");
    }
}
