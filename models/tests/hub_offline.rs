//! The hub path without a hub: offline mode with an empty cache, and an unreachable endpoint,
//! both fail within seconds with a message that says how to use a local path instead.
//! One test in its own binary, because it sets process-wide environment variables.

use lantern_models::hub::{fetch, HubModel};
use std::time::{Duration, Instant};

#[test]
fn hub_failures_are_fast_and_explain_the_local_alternative() {
    let cache = tempfile::tempdir().map(|d| d.keep()).unwrap_or_default();
    let model = HubModel {
        id: "HuggingFaceTB/SmolLM2-135M-Instruct".into(),
        revision: "main".into(),
    };
    std::env::set_var("HF_HOME", &cache);

    std::env::set_var("HF_HUB_OFFLINE", "1");
    let started = Instant::now();
    let message = fetch(&model)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        message.contains("HF_HUB_OFFLINE") && message.contains("--model-id DIR"),
        "{message}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));

    std::env::remove_var("HF_HUB_OFFLINE");
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(9);
    std::env::set_var("HF_ENDPOINT", format!("http://127.0.0.1:{closed_port}"));
    let started = Instant::now();
    let message = fetch(&model)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        message.contains("cannot reach") && message.contains("--model-id DIR"),
        "{message}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}
