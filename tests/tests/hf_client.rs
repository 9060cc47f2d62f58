//! huggingface_hub's `InferenceClient.text_generation` (plain, with details, streamed) against
//! the real binary: TGI clients post to the root route. The client runs from the venv that
//! `.ci/run` makes (`target/ci-venv`, huggingface_hub pinned there); without it the test says
//! SKIPPED.

use lantern_tests::{ci_python_with, json, tiny_server};
use serde_json::json as value;
use std::process::Command;

const CLIENT: &str = r#"
import json, sys
from huggingface_hub import InferenceClient
client = InferenceClient(base_url=sys.argv[1])
prompt = "The capital of France is"
plain = client.text_generation(prompt, max_new_tokens=6)
detailed = client.text_generation(prompt, max_new_tokens=6, details=True)
streamed = list(client.text_generation(prompt, max_new_tokens=6, stream=True))
print(json.dumps({
    "plain": plain,
    "detailed_text": detailed.generated_text,
    "finish_reason": str(detailed.details.finish_reason),
    "generated_tokens": detailed.details.generated_tokens,
    "detail_tokens": len(detailed.details.tokens),
    "streamed": streamed,
}))
"#;

#[test]
fn huggingface_hub_inference_client_generates_and_streams() {
    let Some(python) = ci_python_with("huggingface_hub") else {
        return;
    };
    let (_model, server) = tiny_server("llama", 4, &[], &[]);
    let output = Command::new(&python)
        .args(["-c", CLIENT, &server.base])
        .env_remove("HF_HUB_OFFLINE")
        .output()
        .unwrap_or_else(|e| panic!("running the client: {e}"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the client failed: {stderr}");
    let got = json(&String::from_utf8_lossy(&output.stdout));
    // Greedy: the same text as /generate, whichever way it was asked for.
    let (status, reference) = server.post(
        "/generate",
        &value!({"inputs": "The capital of France is", "parameters": {"max_new_tokens": 6}}),
    );
    assert_eq!(status, 200, "{reference}");
    let text = json(&reference)["generated_text"].clone();
    assert_eq!(got["plain"], text, "{got}");
    assert_eq!(got["detailed_text"], text, "{got}");
    assert_eq!(got["generated_tokens"], 6, "{got}");
    assert_eq!(got["detail_tokens"], 6, "{got}");
    assert_eq!(got["finish_reason"], "length", "{got}");
    let streamed: String = got["streamed"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t.as_str())
        .collect();
    assert_eq!(Some(streamed.as_str()), text.as_str(), "{got}");
}
