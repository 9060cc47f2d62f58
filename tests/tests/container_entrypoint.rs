//! Playing SageMaker without Docker: the container's entrypoint run exactly as SageMaker runs
//! it (`serve`, SageMaker's environment, a model directory standing in for /opt/ml/model via
//! SM_MODEL_DIR, the port from SAGEMAKER_BIND_TO_PORT), then `/ping` and the seed payload.

use lantern_tests::{dummy_model, free_port, json, lantern_binary, Server};
use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;

#[test]
fn entrypoint_serve_behaves_as_sagemaker_expects() {
    let artifacts = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    dummy_model("qwen2", 8, artifacts.path());
    let entrypoint = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docker/entrypoint.sh");
    let binary = lantern_binary();
    let port = free_port();
    let port_text = port.to_string();
    let server = Server::spawn_program(
        &entrypoint,
        &["serve"],
        &[
            ("LANTERN_BIN", binary.to_str().unwrap_or_default()),
            (
                "SM_MODEL_DIR",
                artifacts.path().to_str().unwrap_or_default(),
            ),
            ("SAGEMAKER_BIND_TO_PORT", port_text.as_str()),
            ("SM_NUM_GPUS", "1"),
            ("LANTERN_KV_CACHE_MEMORY", "32Mi"),
            ("LOG_FORMAT", "json"),
        ],
        free_port(),
    );
    let server = Server::at(server, port);
    server.wait_ready(Duration::from_secs(120));
    let (status, body) = server.post(
        "/invocations",
        &json!({"inputs": "What is machine learning?", "parameters": {"max_new_tokens": 100}}),
    );
    assert_eq!(status, 200, "{body}");
    assert!(json(&body)[0]["generated_text"].is_string());
    // LOG_FORMAT=json: every log line is a JSON object, the resolved configuration among them.
    let log = server.log();
    assert!(
        log.lines()
            .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()),
        "{log}"
    );
    assert!(log.contains("listening"), "{log}");
    // The model served is the one in the artifact directory, not the default.
    let info = json(&server.get("/info").body);
    assert_eq!(
        info["model_id"].as_str(),
        artifacts.path().file_name().and_then(|n| n.to_str())
    );
}
