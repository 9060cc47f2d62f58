//! The real binary serving the tiny dummy model on 127.0.0.1: every API's happy path, its
//! streaming shape, and the errors clients get for their mistakes.

use lantern_tests::{dummy_model, json, sse_data, Server};
use serde_json::{json, Value};
use std::sync::OnceLock;

/// One server for the whole file (model and engine start once).
fn server() -> &'static Server {
    static SERVER: OnceLock<(tempfile::TempDir, Server)> = OnceLock::new();
    &SERVER
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
            dummy_model("qwen3", 3, dir.path());
            let model = dir.path().to_string_lossy().into_owned();
            let server = Server::start(
                &[
                    "serve",
                    "--model-id",
                    &model,
                    "--kv-cache-memory",
                    "64Mi",
                    "--max-total-tokens",
                    "512",
                    "--max-input-tokens",
                    "400",
                ],
                &[],
                0,
            );
            (dir, server)
        })
        .1
}

#[test]
fn sagemaker_seed_payload_answers_in_the_hf_toolkit_shape() {
    let reply = server().post_raw(
        "/invocations",
        "application/json",
        r#"{"inputs": "What is machine learning?", "parameters": {"max_new_tokens": 100}}"#,
        &[("X-Amzn-SageMaker-Custom-Attributes", "trace=abc")],
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    let body = json(&reply.body);
    assert!(body[0]["generated_text"].is_string(), "{body}");
    let echoed = reply.custom_attributes.unwrap_or_default();
    assert!(echoed.starts_with("trace=abc"), "{echoed}");
}

#[test]
fn generate_with_details_matches_its_stream() {
    let request = json!({"inputs": "The capital of France is", "parameters": {"max_new_tokens": 12, "details": true, "ignore_eos": true}});
    let (status, body) = server().post("/generate", &request);
    assert_eq!(status, 200, "{body}");
    let body = json(&body);
    let details = &body["details"];
    assert_eq!(details["finish_reason"], "length");
    assert_eq!(details["generated_tokens"], 12);
    assert_eq!(details["tokens"].as_array().map(Vec::len), Some(12));
    let joined: String = details["tokens"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["text"].as_str())
        .collect();
    assert_eq!(body["generated_text"].as_str(), Some(joined.as_str()));

    // Greedy: the stream gives the same text, the last event carrying it whole.
    let (status, stream) = server().post("/generate_stream", &request);
    assert_eq!(status, 200, "{stream}");
    let events: Vec<Value> = sse_data(&stream).iter().map(|d| json(d)).collect();
    assert_eq!(events.len(), 12);
    let streamed: String = events
        .iter()
        .filter_map(|e| e["token"]["text"].as_str())
        .collect();
    assert_eq!(streamed, joined);
    let last = events.last().cloned().unwrap_or_default();
    assert_eq!(last["generated_text"], body["generated_text"]);
    assert_eq!(last["details"]["finish_reason"], "length");
    assert!(events[0]["generated_text"].is_null());
}

/// TGI's root route: huggingface_hub's `InferenceClient.text_generation` posts here, with
/// `"stream": true` for a stream.
#[test]
fn tgi_root_route_generates_and_streams_like_generate() {
    let request = json!({"inputs": "The capital of France is", "parameters": {"max_new_tokens": 6, "details": true}});
    let (status, body) = server().post("/", &request);
    assert_eq!(status, 200, "{body}");
    let (_, reference) = server().post("/generate", &request);
    assert_eq!(
        json(&body)["generated_text"],
        json(&reference)["generated_text"]
    );
    let mut streamed = request.clone();
    streamed["stream"] = json!(true);
    let (status, stream) = server().post("/", &streamed);
    assert_eq!(status, 200, "{stream}");
    let events: Vec<Value> = sse_data(&stream).iter().map(|d| json(d)).collect();
    let last = events.last().cloned().unwrap_or_default();
    assert_eq!(last["generated_text"], json(&reference)["generated_text"]);
}

#[test]
fn openai_chat_completion_and_its_stream_agree() {
    let request = json!({"model": "tiny", "messages": [{"role": "user", "content": "Hello there"}], "temperature": 0, "max_tokens": 10});
    let (status, body) = server().post("/v1/chat/completions", &request);
    assert_eq!(status, 200, "{body}");
    let body = json(&body);
    assert_eq!(body["object"], "chat.completion");
    let content = body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let usage = &body["usage"];
    assert_eq!(
        usage["total_tokens"],
        usage["prompt_tokens"].as_u64().unwrap_or(0)
            + usage["completion_tokens"].as_u64().unwrap_or(0)
    );

    let mut streaming = request.clone();
    streaming["stream"] = json!(true);
    streaming["stream_options"] = json!({"include_usage": true});
    let (status, stream) = server().post("/v1/chat/completions", &streaming);
    assert_eq!(status, 200);
    let data = sse_data(&stream);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1].iter().map(|d| json(d)).collect();
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(streamed, content);
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(
        chunks.last().map(|c| c["usage"].clone()),
        Some(body["usage"].clone())
    );

    // The same body through SageMaker's /invocations gives the same answer.
    let (status, via_sagemaker) = server().post("/invocations", &request);
    assert_eq!(status, 200);
    assert_eq!(
        json(&via_sagemaker)["choices"][0]["message"]["content"],
        content.as_str()
    );
}

#[test]
fn openai_completions_and_models() {
    let (status, body) = server().post(
        "/v1/completions",
        &json!({"prompt": "Once upon a time", "max_tokens": 5, "temperature": 0}),
    );
    assert_eq!(status, 200, "{body}");
    let body = json(&body);
    assert_eq!(body["object"], "text_completion");
    assert!(body["usage"]["completion_tokens"]
        .as_u64()
        .is_some_and(|n| (1..=5).contains(&n)));
    let models = json(&server().get("/v1/models").body);
    assert_eq!(models["data"].as_array().map(Vec::len), Some(1));
}

#[test]
fn bedrock_messages_through_invocations() {
    let request = json!({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 8, "system": "Be brief.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi!"}]}], "temperature": 0});
    let (status, body) = server().post("/invocations", &request);
    assert_eq!(status, 200, "{body}");
    let body = json(&body);
    assert_eq!(body["type"], "message");
    assert!(body["content"][0]["text"].is_string());
    assert!(["end_turn", "max_tokens"].contains(&body["stop_reason"].as_str().unwrap_or_default()));
    assert!(body["usage"]["output_tokens"]
        .as_u64()
        .is_some_and(|n| n <= 8));

    let mut streaming = request.clone();
    streaming["stream"] = json!(true);
    let (status, stream) = server().post("/invocations", &streaming);
    assert_eq!(status, 200);
    let names: Vec<&str> = stream
        .lines()
        .filter_map(|l| l.strip_prefix("event:"))
        .map(str::trim)
        .collect();
    assert_eq!(names.first(), Some(&"message_start"));
    assert_eq!(names.last(), Some(&"message_stop"));

    // Errors come back in Anthropic's shape too, as its SDKs parse them.
    let mut invalid = request.clone();
    invalid["max_tokens"] = json!("many");
    let (status, error) = server().post("/invocations", &invalid);
    assert_eq!(status, 400, "{error}");
    let error = json(&error);
    assert_eq!(error["type"], "error", "{error}");
    assert_eq!(error["error"]["type"], "invalid_request_error", "{error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("max_tokens")),
        "{error}"
    );
}

#[test]
fn client_mistakes_get_clear_4xx_errors() {
    let s = server();
    let malformed = s.post_raw("/generate", "application/json", "{\"inputs\": ", &[]);
    assert_eq!(malformed.status, 422);
    assert_eq!(json(&malformed.body)["error_type"], "validation");

    let wrong_type = s.post_raw(
        "/generate",
        "application/json",
        r#"{"inputs": "hi", "parameters": {"max_new_tokens": "many"}}"#,
        &[],
    );
    assert_eq!(wrong_type.status, 422);
    assert!(
        json(&wrong_type.body)["error"]
            .as_str()
            .unwrap_or_default()
            .contains("parameters.max_new_tokens"),
        "{}",
        wrong_type.body
    );

    let missing = s.post_raw(
        "/v1/chat/completions",
        "application/json",
        r#"{"model": "x"}"#,
        &[],
    );
    assert_eq!(missing.status, 400);
    let error = json(&missing.body);
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("messages"),
        "{error}"
    );

    let bad_range = s.post(
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "x"}], "top_p": 1.5}),
    );
    assert_eq!(bad_range.0, 400);
    assert_eq!(json(&bad_range.1)["error"]["param"], "top_p");

    let too_long = s.post(
        "/generate",
        &json!({"inputs": "word ".repeat(2000), "parameters": {"max_new_tokens": 4}}),
    );
    assert_eq!(too_long.0, 422);
    assert!(too_long.1.contains("max_input_tokens"), "{}", too_long.1);

    let stops = s.post(
        "/generate",
        &json!({"inputs": "hi", "parameters": {"stop": ["a", "b", "c", "d", "e"]}}),
    );
    assert_eq!(stops.0, 422);
    assert!(stops.1.contains("stop"));

    let unknown_schema = s.post("/invocations", &json!({"question": "hi"}));
    assert_eq!(unknown_schema.0, 422);

    let text = s.post_raw("/invocations", "text/plain", "hello", &[]);
    assert_eq!(text.status, 415);

    // The server reads an oversized body to its end before answering 413 (up to 64 MiB), so
    // a client still sending cannot lose the answer to a connection reset.
    let huge_body = format!("{{\"inputs\": \"{}\"}}", "a".repeat(7 * 1024 * 1024));
    let huge = s
        .try_post_raw("/generate", "application/json", &huge_body)
        .unwrap_or_else(|| panic!("the oversized request lost its answer"));
    assert_eq!(huge.status, 413);
    assert_eq!(json(&huge.body)["error_type"], "payload_too_large");

    // After all that, the server still answers.
    assert_eq!(s.get("/ping").status, 200);
}

#[test]
fn batch_transform_answers_line_by_line() {
    let lines = "{\"inputs\": \"one\", \"parameters\": {\"max_new_tokens\": 3}}\nnot json\n{\"inputs\": \"three\", \"parameters\": {\"max_new_tokens\": 3}}\n";
    let reply = server().post_raw("/invocations", "application/jsonlines", lines, &[]);
    assert_eq!(reply.status, 200);
    let out: Vec<Value> = reply.body.lines().map(json).collect();
    assert_eq!(out.len(), 3);
    assert!(out[0][0]["generated_text"].is_string());
    assert_eq!(out[1]["error_type"], "validation");
    assert!(out[2][0]["generated_text"].is_string());
}

#[test]
fn info_metrics_and_execution_parameters() {
    let s = server();
    let info = json(&s.get("/info").body);
    assert_eq!(info["max_total_tokens"], 512);
    assert_eq!(info["max_input_tokens"], 400);
    assert_eq!(s.get("/health").status, 200);
    let _ = s.post(
        "/generate",
        &json!({"inputs": "metrics", "parameters": {"max_new_tokens": 2}}),
    );
    let metrics = s.get("/metrics").body;
    assert!(
        metrics.contains("lantern_generated_tokens_total"),
        "{metrics}"
    );
    assert!(metrics.contains("lantern_kv_cache_blocks "));
    let params = json(&s.get("/execution-parameters").body);
    assert_eq!(params["BatchStrategy"], "MULTI_RECORD");
    assert_eq!(params["MaxPayloadInMB"], 6);
}

#[test]
fn sixty_four_concurrent_requests_equal_the_same_requests_one_at_a_time() {
    let s = server();
    let request = |i: usize| {
        json!({"inputs": format!("Request number {i} asks about {}", "paris ".repeat(i % 7)),
        "parameters": {"max_new_tokens": 8 + i % 9, "ignore_eos": true}})
    };
    let alone: Vec<String> = (0..64)
        .map(|i| s.post("/generate", &request(i)).1)
        .collect();
    let together: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..64)
            .map(|i| scope.spawn(move || s.post("/generate", &request(i)).1))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    for (i, (a, t)) in alone.iter().zip(&together).enumerate() {
        assert!(json(a)["generated_text"].is_string(), "{a}");
        assert_eq!(a, t, "request {i}");
    }
}

#[test]
fn a_client_leaving_mid_stream_frees_its_kv_blocks() {
    use std::io::Read;
    let s = server();
    let idle = wait_for_metric(s, "lantern_kv_cache_blocks_used", |v| v == 0.0);
    assert_eq!(idle, Some(0.0));
    let long = json!({"inputs": "a long story", "parameters": {"max_new_tokens": 400, "ignore_eos": true}});
    let response =
        ureq::post(&format!("{}/generate_stream", s.base)).send_string(&long.to_string());
    let mut reader = response
        .map(|r| r.into_reader())
        .unwrap_or_else(|e| panic!("{e}"));
    let mut first = [0u8; 64];
    let _ = reader.read(&mut first);
    assert!(wait_for_metric(s, "lantern_kv_cache_blocks_used", |v| v > 0.0).is_some());
    drop(reader);
    assert_eq!(
        wait_for_metric(s, "lantern_kv_cache_blocks_used", |v| v == 0.0),
        Some(0.0)
    );
}

fn wait_for_metric(s: &Server, name: &str, good: impl Fn(f64) -> bool) -> Option<f64> {
    for _ in 0..200 {
        if let Some(v) = s.metric(name).filter(|v| good(*v)) {
            return Some(v);
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    None
}

#[test]
fn metrics_parse_as_prometheus_text() {
    let s = server();
    let _ = s.post(
        "/generate",
        &json!({"inputs": "count me", "parameters": {"max_new_tokens": 2}}),
    );
    let text = s.get("/metrics").body;
    let mut samples = 0;
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(comment) = line.strip_prefix("# ") {
            assert!(
                comment.starts_with("HELP ") || comment.starts_with("TYPE "),
                "{line}"
            );
            continue;
        }
        // name{labels} value
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        assert!(value.parse::<f64>().is_ok(), "bad value in {line}");
        let name = series.split('{').next().unwrap_or_default();
        // Lantern's names, and vLLM's (with their colon) for the engine's load.
        let vllm = name.starts_with("vllm:");
        assert!(
            (name.starts_with("lantern_") || vllm)
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || (vllm && c == ':')),
            "{line}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            assert!(
                labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
                "{line}"
            );
        }
        samples += 1;
    }
    assert!(samples > 20);
    assert!(
        text.contains("lantern_requests_total{route=\"/generate\",status=\"200\"}"),
        "{text}"
    );
    assert!(text.contains("lantern_time_to_first_token_seconds_bucket"));
    assert!(text.contains("lantern_batch_size "));
}

#[test]
fn timing_headers_and_custom_attributes_carry_the_counts() {
    let reply = server().post_raw(
        "/invocations",
        "application/json",
        r#"{"inputs": "time me", "parameters": {"max_new_tokens": 3, "ignore_eos": true}}"#,
        &[(
            "X-Amzn-SageMaker-Custom-Attributes",
            "c000b4f9-df62-4c85-a0bf-7c525f9104a4",
        )],
    );
    assert_eq!(reply.status, 200);
    let echoed = reply.custom_attributes.unwrap_or_default();
    assert!(
        echoed.starts_with("c000b4f9-df62-4c85-a0bf-7c525f9104a4,"),
        "{echoed}"
    );
    assert!(echoed.contains("generated-tokens=3"), "{echoed}");
    assert!(echoed.contains("prompt-tokens="), "{echoed}");
}

#[test]
fn remaining_routes_and_options() {
    let s = server();
    // /ping answers POST too (SageMaker may use either).
    assert_eq!(s.post_raw("/ping", "application/json", "", &[]).status, 200);
    // /tokenize returns ids with their offsets.
    let tokens = json(&s.post("/tokenize", &json!({"inputs": "Hello world"})).1);
    let pieces: String = tokens
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["text"].as_str())
        .collect();
    // Byte-level offsets leave out a token's leading space, as the tokenizer reports them.
    assert_eq!(pieces, "Helloworld");
    // OpenAI completions stream, ending in [DONE].
    let (status, stream) = s.post(
        "/v1/completions",
        &json!({"prompt": "Once", "max_tokens": 4, "temperature": 0, "stream": true}),
    );
    assert_eq!(status, 200);
    assert_eq!(sse_data(&stream).last().map(String::as_str), Some("[DONE]"));
    // Chat logprobs with alternatives.
    let chat = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "temperature": 0, "logprobs": true, "top_logprobs": 2, "ignore_eos": true});
    let body = json(&s.post("/v1/chat/completions", &chat).1);
    let content = body["choices"][0]["logprobs"]["content"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(content.len(), 3, "{body}");
    assert_eq!(content[0]["top_logprobs"].as_array().map(Vec::len), Some(2));
    // TGI: alternatives, prompt details, full text.
    let tgi = json!({"inputs": "Say", "parameters": {"max_new_tokens": 2, "details": true, "decoder_input_details": true,
        "top_n_tokens": 3, "return_full_text": true, "ignore_eos": true}});
    let body = json(&s.post("/generate", &tgi).1);
    assert!(
        body["generated_text"]
            .as_str()
            .unwrap_or_default()
            .starts_with("Say"),
        "{body}"
    );
    assert!(!body["details"]["prefill"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .is_empty());
    assert_eq!(
        body["details"]["top_tokens"][0].as_array().map(Vec::len),
        Some(3)
    );
    // Seeded sampling: the same seed gives the same text.
    let sampled = json!({"inputs": "Pick", "parameters": {"max_new_tokens": 8, "do_sample": true, "temperature": 1.0, "seed": 42, "details": true}});
    let first = json(&s.post("/generate", &sampled).1);
    let second = json(&s.post("/generate", &sampled).1);
    assert_eq!(first["generated_text"], second["generated_text"]);
    assert_eq!(first["details"]["seed"], 42);
}
