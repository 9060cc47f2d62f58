//! `/metrics` read with the Prometheus text parser of the official Python client
//! (`prometheus_client`, installed by `.ci/run` in `target/ci-venv`; without it the test says
//! SKIPPED): every family is `lantern_*` (or one of vLLM's names, `vllm:*`), what only grows is a counter named `*_total`, gauges
//! are not named like counters, durations are histograms in seconds.

use lantern_tests::{ci_python_with, python_json, tiny_server};
use serde_json::{json as value, Value};

const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
families = [
    {"name": f.name, "type": f.type, "samples": sorted({s.name for s in f.samples})}
    for f in text_string_to_metric_families(sys.stdin.read())
]
print(json.dumps(families))
"#;

#[test]
fn metrics_parse_as_prometheus_text_with_conventional_names_and_types() {
    let Some(python) = ci_python_with("prometheus_client") else {
        return;
    };
    // A cache of 10 blocks for 3 long requests at once: preemptions happen.
    let (_model, server) = tiny_server(
        "llama",
        2,
        &[
            "--max-batch-total-tokens",
            "160",
            "--max-batch-prefill-tokens",
            "64",
            "--max-total-tokens",
            "160",
        ],
        &[],
    );
    std::thread::scope(|scope| {
        for i in 0..3 {
            let server = &server;
            scope.spawn(move || {
                let request = value!({"inputs": format!("request {i}"), "parameters": {"max_new_tokens": 100, "ignore_eos": true}});
                let (status, body) = server.post("/generate", &request);
                assert_eq!(status, 200, "{body}");
            });
        }
    });
    let text = server.get("/metrics").body;
    let families = python_json(&python, PARSE, &text);
    let families = families.as_array().cloned().unwrap_or_default();
    assert!(families.len() >= 10, "{families:?}");
    let kind = |name: &str| -> Option<String> {
        families
            .iter()
            .find(|f| f["name"] == name)
            .and_then(|f| f["type"].as_str().map(str::to_string))
    };
    for family in &families {
        let (name, kind) = (
            family["name"].as_str().unwrap_or_default(),
            family["type"].as_str().unwrap_or_default(),
        );
        // Lantern's own names, and the engine's load under vLLM's (vllm_metrics.rs).
        assert!(
            name.starts_with("lantern_") || name.starts_with("vllm:"),
            "{family}"
        );
        let samples: Vec<&str> = family["samples"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        match kind {
            "counter" => assert!(samples.iter().all(|s| s.ends_with("_total")), "{family}"),
            "gauge" => assert!(
                !name.ends_with("_total"),
                "a gauge named like a counter: {family}"
            ),
            "histogram" => assert!(name.ends_with("_seconds"), "{family}"),
            other => panic!("unexpected type {other}: {family}"),
        }
    }
    // prometheus_client names a counter family without its `_total`.
    assert_eq!(kind("lantern_preemptions").as_deref(), Some("counter"));
    assert_eq!(kind("lantern_kv_cache_blocks").as_deref(), Some("gauge"));
    assert_eq!(
        kind("lantern_kv_cache_blocks_cached_idle").as_deref(),
        Some("gauge")
    );
    for counter in [
        "lantern_prefix_cache_queries",
        "lantern_prefix_cache_query_tokens",
        "lantern_prefix_cache_hits",
    ] {
        assert_eq!(kind(counter).as_deref(), Some("counter"), "{counter}");
    }
    assert_eq!(
        kind("lantern_time_to_first_token_seconds").as_deref(),
        Some("histogram")
    );
    assert!(text.contains("lantern_preemptions_total"), "{text}");
    let preemptions = text
        .lines()
        .find(|l| l.starts_with("lantern_preemptions_total "))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(
        preemptions > 0.0,
        "a 10-block cache for 3 requests of 100 tokens preempts: {text}"
    );
}
