//! Playing SageMaker without Docker: the server configured only through SageMaker's and TGI's
//! environment variables; overload answered with 429; `/ping` 503 while the model loads.

use lantern_tests::{dummy_model, free_port, json, tiny_server, Server};
use serde_json::json;
use std::io::Read;
use std::time::Duration;

#[test]
fn environment_only_configuration_serves_the_seed_payload() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    dummy_model("llama", 4, dir.path());
    let model = dir.path().to_string_lossy().into_owned();
    let port = free_port();
    let port_text = port.to_string();
    let other_port = free_port().to_string();
    // PORT says something else: SAGEMAKER_BIND_TO_PORT must win.
    let server = Server::start(
        &["serve"],
        &[
            ("HF_MODEL_ID", model.as_str()),
            ("SAGEMAKER_BIND_TO_PORT", port_text.as_str()),
            ("PORT", other_port.as_str()),
            ("SM_NUM_GPUS", "1"),
            ("MAX_INPUT_TOKENS", "256"),
            ("MAX_TOTAL_TOKENS", "512"),
            ("LANTERN_KV_CACHE_MEMORY", "32Mi"),
        ],
        port,
    );
    assert_eq!(server.get("/ping").status, 200);
    let (status, body) = server.post(
        "/invocations",
        &json!({"inputs": "What is machine learning?", "parameters": {"max_new_tokens": 100}}),
    );
    assert_eq!(status, 200, "{body}");
    assert!(json(&body)[0]["generated_text"].is_string());
    assert_eq!(json(&server.get("/info").body)["max_input_tokens"], 256);
}

#[test]
fn requests_beyond_max_concurrent_get_429() {
    let (_dir, server) = tiny_server(
        "mistral",
        4,
        &["--max-total-tokens", "2048"],
        &[("MAX_CONCURRENT_REQUESTS", "1")],
    );
    // Hold the only slot with a long stream, read slowly.
    let long =
        json!({"inputs": "hold", "parameters": {"max_new_tokens": 1500, "ignore_eos": true}});
    let response =
        ureq::post(&format!("{}/generate_stream", server.base)).send_string(&long.to_string());
    let mut reader = response
        .map(|r| r.into_reader())
        .unwrap_or_else(|e| panic!("{e}"));
    let mut first = [0u8; 16];
    let _ = reader.read(&mut first);
    let (status, body) = server.post(
        "/generate",
        &json!({"inputs": "second", "parameters": {"max_new_tokens": 2}}),
    );
    assert_eq!(status, 429, "{body}");
    assert_eq!(json(&body)["error_type"], "overloaded");
    drop(reader);
    // Once the stream is gone its slot frees: the server serves again.
    let mut served = false;
    for _ in 0..100 {
        if server
            .post(
                "/generate",
                &json!({"inputs": "third", "parameters": {"max_new_tokens": 2}}),
            )
            .0
            == 200
        {
            served = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(served, "the slot was never released");
}

#[test]
fn ping_is_503_while_loading_and_a_load_failure_exits_with_the_reason() {
    // A hub that accepts connections and never answers: the model cannot load.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let endpoint = format!(
        "http://{}",
        silent
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default()
    );
    let cache = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut server = Server::spawn(
        &["serve", "--model-id", "org/some-model"],
        &[
            ("HF_ENDPOINT", endpoint.as_str()),
            ("HF_HOME", cache.path().to_str().unwrap_or_default()),
        ],
        0,
    );
    let mut saw_503 = false;
    for _ in 0..50 {
        if let Err(ureq::Error::Status(503, _)) = ureq::get(&format!("{}/ping", server.base)).call()
        {
            saw_503 = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        saw_503,
        "/ping should answer 503 while loading; log:\n{}",
        server.log()
    );
    let status = server.wait_exit(Duration::from_secs(60));
    assert!(
        status.is_some_and(|s| !s.success()),
        "the server should exit when the model cannot load"
    );
    let log = server.log();
    assert!(
        log.contains("org/some-model") && log.contains("--model-id DIR"),
        "{log}"
    );
    drop(silent);
}
