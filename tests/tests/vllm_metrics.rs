//! `/metrics` under vLLM's names, read with the Prometheus text parser of the official Python
//! client (`prometheus_client`, from the venv `.ci/run` makes; SKIPPED without it): every name
//! Kubernetes inference routing and the autoscaling guides read, with its type and labels
//! (gauges, counters, latency histograms); requests waiting while the
//! engine is saturated; KV-cache usage within [0, 1], up under load and back to 0 after.

use lantern_tests::{ci_python_with, python_json, tiny_server};
use serde_json::{json as value, Value};
use std::path::Path;

const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
print(json.dumps([
    {"name": f.name, "type": f.type,
     "samples": [{"labels": s.labels, "value": s.value} for s in f.samples]}
    for f in text_string_to_metric_families(sys.stdin.read()) if f.name.startswith("vllm:")
]))
"#;

fn parse(python: &Path, text: &str) -> Vec<Value> {
    python_json(python, PARSE, text)
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The value of `name`'s one sample, with its family's type and label names checked.
fn sample(families: &[Value], name: &str, labels: &[&str]) -> f64 {
    let family = families
        .iter()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {families:?}"));
    assert_eq!(family["type"], "gauge", "{family}");
    let samples = family["samples"].as_array().cloned().unwrap_or_default();
    assert_eq!(samples.len(), 1, "{family}");
    for label in labels {
        assert!(
            samples[0]["labels"].get(*label).is_some(),
            "{name} lacks {label}: {family}"
        );
    }
    samples[0]["value"].as_f64().unwrap_or(f64::NAN)
}

#[test]
fn vllm_names_report_the_engine_s_load() {
    let Some(python) = ci_python_with("prometheus_client") else {
        return;
    };
    // One sequence at a time: the others wait.
    let (_model, server) = tiny_server("llama", 3, &["--max-num-seqs", "1"], &[]);
    let idle = parse(&python, &server.get("/metrics").body);
    let engine = ["model_name", "engine"];
    for name in [
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:gpu_cache_usage_perc",
    ] {
        sample(&idle, name, &engine);
    }
    sample(
        &idle,
        "vllm:cache_config_info",
        &["block_size", "num_gpu_blocks", "engine"],
    );
    sample(
        &idle,
        "vllm:lora_requests_info",
        &["running_lora_adapters", "waiting_lora_adapters", "max_lora"],
    );
    assert_eq!(sample(&idle, "vllm:kv_cache_usage_perc", &engine), 0.0);

    let mut seen = Vec::new();
    let mut saturated = None;
    std::thread::scope(|scope| {
        for i in 0..4 {
            let server = &server;
            scope.spawn(move || {
                let request = value!({"inputs": format!("request {i}"),
                    "parameters": {"max_new_tokens": 1000, "ignore_eos": true}});
                let (status, body) = server.post("/generate", &request);
                assert_eq!(status, 200, "{body}");
            });
        }
        // Scrapes while they run (read here by line; the parser reads the one kept).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while std::time::Instant::now() < deadline && saturated.is_none() {
            let text = server.get("/metrics").body;
            let value = |name: &str| {
                text.lines()
                    .find(|l| l.starts_with(&format!("{name}{{")))
                    .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .unwrap_or(0.0)
            };
            let (waiting, usage) = (
                value("vllm:num_requests_waiting"),
                value("vllm:kv_cache_usage_perc"),
            );
            seen.push((waiting, usage));
            if waiting > 0.0 && usage > 0.0 {
                saturated = Some(text.clone());
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    });
    let text = saturated
        .unwrap_or_else(|| panic!("never saw requests waiting with the cache in use: {seen:?}"));
    let families = parse(&python, &text);
    assert!(sample(&families, "vllm:num_requests_waiting", &engine) > 0.0);
    assert_eq!(sample(&families, "vllm:num_requests_running", &engine), 1.0);
    let usage = sample(&families, "vllm:kv_cache_usage_perc", &engine);
    assert!(usage > 0.0 && usage <= 1.0, "{usage}");
    assert_eq!(
        sample(&families, "vllm:gpu_cache_usage_perc", &engine),
        usage
    );
    let after = parse(&python, &server.get("/metrics").body);
    // The request counters and latency histograms, under vLLM's names and types
    // (prometheus_client names a counter family without its `_total`).
    let family = |name: &str| -> Value {
        after
            .iter()
            .find(|f| f["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name}"))
    };
    for (name, kind) in [
        ("vllm:prompt_tokens", "counter"),
        ("vllm:generation_tokens", "counter"),
        ("vllm:prefix_cache_queries", "counter"),
        ("vllm:prefix_cache_hits", "counter"),
        ("vllm:time_to_first_token_seconds", "histogram"),
        ("vllm:inter_token_latency_seconds", "histogram"),
        ("vllm:e2e_request_latency_seconds", "histogram"),
    ] {
        let family = family(name);
        assert_eq!(family["type"], kind, "{family}");
        let labels = &family["samples"][0]["labels"];
        assert!(
            labels["model_name"].is_string() && labels["engine"] == "0",
            "{family}"
        );
    }
    let generated = family("vllm:generation_tokens")["samples"][0]["value"]
        .as_f64()
        .unwrap_or(0.0);
    assert!(
        generated >= 4000.0,
        "4 requests of 1000 tokens: {generated}"
    );
    assert_eq!(sample(&after, "vllm:kv_cache_usage_perc", &engine), 0.0);
    assert_eq!(sample(&after, "vllm:num_requests_running", &engine), 0.0);

    // Every vLLM name the Kubernetes manifests (HPA adapter rule, KEDA query) read is one
    // this server exports.
    let exposition = server.get("/metrics").body;
    let k8s = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docker/k8s");
    let mut read = 0;
    for file in ["hpa.yaml", "keda-scaledobject.yaml"] {
        let text = std::fs::read_to_string(k8s.join(file)).unwrap_or_else(|e| panic!("{e}"));
        for (at, _) in text.match_indices("vllm:") {
            let name: String = text[at..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_' || *c == ':')
                .collect();
            assert!(
                exposition.contains(&format!("# TYPE {name} ")),
                "{file} reads {name}, which /metrics lacks"
            );
            read += 1;
        }
    }
    assert!(read >= 2, "the manifests read no vLLM metric");
}
