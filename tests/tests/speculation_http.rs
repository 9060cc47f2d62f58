//! `lantern serve --speculate 4` and `--draft-model` over HTTP: the same answers as a server
//! without speculation (TGI and OpenAI chat, greedy and seeded), and vLLM's `spec_decode`
//! counters in `/metrics` showing that proposals ran and stood.

use lantern_tests::{dummy_model, json, tiny_server};
use serde_json::{json as body, Value};

fn requests() -> Vec<(&'static str, Value)> {
    let copy = "the river runs past the mill and the river runs past the bridge and the river";
    vec![
        (
            "/generate",
            body!({"inputs": copy, "parameters": {"max_new_tokens": 48}}),
        ),
        (
            "/generate",
            body!({"inputs": format!("{copy} again"), "parameters":
                {"max_new_tokens": 40, "do_sample": true, "seed": 9, "temperature": 0.8}}),
        ),
        (
            "/v1/chat/completions",
            body!({"messages": [{"role": "user", "content": copy}], "max_tokens": 40,
                   "temperature": 0, "frequency_penalty": 0.5}),
        ),
    ]
}

fn answers(server: &lantern_tests::Server) -> Vec<Value> {
    requests()
        .into_iter()
        .map(|(path, request)| {
            let (status, text) = server.post(path, &request);
            assert_eq!(status, 200, "{text}");
            let reply = json(&text);
            // The text, and the token counts: ids and timings aside.
            match path {
                "/generate" => reply["generated_text"].clone(),
                _ => body!([
                    reply["choices"][0]["message"]["content"],
                    reply["usage"]["completion_tokens"]
                ]),
            }
        })
        .collect()
}

fn counter(server: &lantern_tests::Server, name: &str) -> f64 {
    server
        .get("/metrics")
        .body
        .lines()
        .find(|l| l.starts_with(&format!("{name}{{")))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn speculating_servers_answer_as_plain_ones() {
    let (_plain_model, plain) = tiny_server("llama", 5, &[], &[]);
    let expected = answers(&plain);
    let (_model, lookup) = tiny_server("llama", 5, &["--speculate", "4"], &[]);
    assert_eq!(answers(&lookup), expected, "prompt lookup");
    assert!(counter(&lookup, "vllm:spec_decode_num_drafts_total") > 0.0);
    assert!(counter(&lookup, "vllm:spec_decode_num_accepted_tokens_total") > 0.0);

    // The model as its own draft: the same answers, and every greedy proposal stands.
    let draft = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    dummy_model("llama", 5, draft.path());
    let draft_path = draft.path().to_string_lossy().into_owned();
    let (_drafted_model, drafted) =
        tiny_server("llama", 5, &["--draft-model", draft_path.as_str()], &[]);
    assert_eq!(answers(&drafted), expected, "draft model");
    assert!(counter(&drafted, "vllm:spec_decode_num_drafts_total") > 0.0);
}
