//! `lantern benchmark` against the real `lantern serve` on a tiny dummy model: every request
//! is accounted for (sent = completed + errors), TTFT never exceeds end-to-end latency, the
//! tokens the benchmark counts are the tokens the server says it generated, and errors are
//! counted by status, not hidden.

use lantern_tests::{lantern_binary, tiny_server};
use serde_json::Value;
use std::path::Path;
use std::process::Command;

const OUTPUT_LEN: u64 = 12;
const REQUESTS: u64 = 10;

/// Runs `lantern benchmark` with `args`; returns the level summaries and request records.
fn benchmark(base: &str, dir: &Path, args: &[&str]) -> (Vec<Value>, Vec<Value>) {
    let summaries = dir.join("levels.json");
    let records = dir.join("requests.jsonl");
    let output = Command::new(lantern_binary())
        .args(["benchmark", "--url", base, "--json"])
        .arg(&summaries)
        .arg("--requests-jsonl")
        .arg(&records)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running lantern benchmark: {e}"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "lantern benchmark failed: {stderr}"
    );
    let read = |path: &Path| std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{e}"));
    let summaries: Vec<Value> = serde_json::from_str(&read(&summaries)).unwrap_or_default();
    let records = read(&records)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or(Value::Null))
        .collect();
    (summaries, records)
}

fn number(value: &Value, key: &str) -> f64 {
    value[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing in {value}"))
}

#[test]
fn counts_add_up_and_tokens_match_the_servers_usage() {
    let (_model, server) = tiny_server("llama", 3, &[], &[]);
    let out = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let requests = REQUESTS.to_string();
    let output_len = OUTPUT_LEN.to_string();
    for api in ["tgi", "openai-completions", "openai-chat", "sagemaker"] {
        let (summaries, records) = benchmark(
            &server.base,
            out.path(),
            &[
                "--api",
                api,
                "--concurrency",
                "1,4",
                "--requests",
                &requests,
                "--input-len",
                "24",
                "--output-len",
                &output_len,
            ],
        );
        assert_eq!(summaries.len(), 2, "{api}: one summary per level");
        assert_eq!(
            records.len() as u64,
            2 * REQUESTS,
            "{api}: one record per request"
        );
        for level in &summaries {
            let sent = number(level, "requests");
            assert_eq!(sent, REQUESTS as f64, "{api}: {level}");
            assert_eq!(sent, number(level, "completed") + number(level, "errors"));
            assert_eq!(
                number(level, "errors"),
                0.0,
                "{api}: a healthy server: {level}"
            );
            assert_eq!(
                number(level, "output_tokens"),
                (REQUESTS * OUTPUT_LEN) as f64
            );
            for key in ["ttft_ms", "itl_ms", "e2e_ms"] {
                let d = &level[key];
                let (p50, p90, p99) = (number(d, "p50"), number(d, "p90"), number(d, "p99"));
                assert!(p50 <= p90 && p90 <= p99, "{api} {key}: {d}");
            }
        }
        for record in &records {
            assert_eq!(record["outcome"], "completed", "{api}: {record}");
            let (ttft, e2e) = (number(record, "ttft_ms"), number(record, "e2e_ms"));
            assert!(0.0 < ttft && ttft <= e2e, "{api}: TTFT {ttft} > E2E {e2e}");
            // The server's own count (usage / details.generated_tokens), what was asked for...
            let usage = number(record, "usage_output_tokens");
            assert_eq!(usage, OUTPUT_LEN as f64, "{api}: {record}");
            assert_eq!(number(record, "output_tokens"), usage);
            // ...and what arrived: TGI streams one event per token; OpenAI chunks with text,
            // which a token that decodes to nothing yet does not produce.
            let chunks = number(record, "chunks");
            if api == "tgi" || api == "sagemaker" {
                assert_eq!(chunks, usage, "{api}: {record}");
            } else {
                assert!(0.0 < chunks && chunks <= usage, "{api}: {record}");
            }
            let gaps = record["itl_ms"].as_array().map_or(0, Vec::len) as f64;
            assert_eq!(
                gaps,
                chunks - 1.0,
                "{api}: one gap between consecutive chunks"
            );
        }
    }
}

#[test]
fn rejected_requests_are_counted_as_errors_by_status() {
    let (_model, server) = tiny_server("llama", 3, &["--max-total-tokens", "64"], &[]);
    let out = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    // 200 new tokens cannot fit in 64: every request is refused.
    let (summaries, records) = benchmark(
        &server.base,
        out.path(),
        &[
            "--warmup",
            "0",
            "--request-rate",
            "50",
            "--requests",
            "6",
            "--input-len",
            "8",
            "--output-len",
            "200",
        ],
    );
    let level = &summaries[0];
    assert_eq!(number(level, "requests"), 6.0);
    assert_eq!(number(level, "completed"), 0.0);
    assert_eq!(number(level, "errors"), 6.0);
    // OpenAI's completions API answers an invalid request with 400.
    assert_eq!(
        level["errors_by_kind"],
        serde_json::json!({"400": 6}),
        "{level}"
    );
    assert!(
        level["ttft_ms"]["p50"].is_null(),
        "no TTFT without a completed request"
    );
    assert!(records.iter().all(|r| r["outcome"]["http"] == 400));
}

#[test]
fn a_server_that_cannot_be_reached_stops_the_run_with_the_reason() {
    let port = lantern_tests::free_port();
    let output = Command::new(lantern_binary())
        .args([
            "benchmark",
            "--url",
            &format!("http://127.0.0.1:{port}"),
            "--requests",
            "2",
        ])
        .output()
        .unwrap_or_else(|e| panic!("running lantern benchmark: {e}"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("every warm-up request failed"), "{stderr}");
}

#[test]
fn ctrl_c_ends_the_run_and_still_writes_what_was_measured() {
    let (_model, server) = tiny_server("llama", 3, &[], &[]);
    let out = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let summaries = out.path().join("levels.json");
    // A run far longer than the test: 100 000 requests of 2000 tokens at 4 clients (each
    // request long enough that all 4 are in flight at almost any moment).
    let mut child = Command::new(lantern_binary())
        .args([
            "benchmark",
            "--url",
            &server.base,
            "--concurrency",
            "4",
            "--requests",
            "100000",
            "--input-len",
            "8",
            "--output-len",
            "2000",
            "--json",
        ])
        .arg(&summaries)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running lantern benchmark: {e}"));
    // Interrupt once the level has started and requests are in flight.
    let started = std::time::Instant::now();
    let mut stderr =
        std::io::BufReader::new(child.stderr.take().unwrap_or_else(|| panic!("stderr")));
    let mut line = String::new();
    while std::io::BufRead::read_line(&mut stderr, &mut line).unwrap_or(0) > 0 {
        if line.contains("c=4: started") {
            break;
        }
        line.clear();
        assert!(started.elapsed().as_secs() < 120, "the level never started");
    }
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let interrupted = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    assert!(interrupted.is_ok_and(|s| s.success()));
    let status = child.wait().unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success(), "{status}");
    let text = std::fs::read_to_string(&summaries).unwrap_or_else(|e| panic!("{e}"));
    let levels: Vec<Value> = serde_json::from_str(&text).unwrap_or_default();
    let level = &levels[0];
    assert_eq!(level["interrupted"], true, "{level}");
    let sent = number(level, "requests");
    assert!(sent > 0.0 && sent < 100_000.0, "{level}");
    assert_eq!(sent, number(level, "completed") + number(level, "errors"));
    // The requests in flight at the interrupt are counted, as cancelled.
    assert!(
        level["errors_by_kind"]["cancelled"].as_u64().unwrap_or(0) >= 1,
        "{level}"
    );
}

#[test]
fn an_endpoint_path_sends_requests_where_it_says() {
    let (_model, server) = tiny_server("llama", 3, &[], &[]);
    let out = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    // SageMaker's route, spelled out (as for a gateway), then a path the server lacks.
    let (ok, _) = benchmark(
        &server.base,
        out.path(),
        &[
            "--api",
            "sagemaker",
            "--endpoint-path",
            "/invocations",
            "--requests",
            "3",
            "--output-len",
            "4",
        ],
    );
    assert_eq!(number(&ok[0], "completed"), 3.0, "{}", ok[0]);
    let (missing, _) = benchmark(
        &server.base,
        out.path(),
        &[
            "--warmup",
            "0",
            "--endpoint-path",
            "/elsewhere",
            "--requests",
            "3",
            "--output-len",
            "4",
        ],
    );
    assert_eq!(
        missing[0]["errors_by_kind"],
        serde_json::json!({"404": 3}),
        "{}",
        missing[0]
    );
}
