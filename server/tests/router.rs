//! The HTTP router in-process (`tower::ServiceExt::oneshot`, no socket) around a tiny dummy
//! model: validation errors in each API's shape and status, the headers every response
//! carries, the limits on bodies and routes.

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use clap::Parser;
use lantern::config::ServeArgs;
use lantern::http::{router, AppState};
use lantern::metrics::Metrics;
use lantern_models::dummy::{write_dummy_model, DummySize, DummySpec};
use lantern_models::Architecture;
use serde_json::{json, Value};
use tower::ServiceExt;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    serve: ServeArgs,
}

/// The router over a freshly loaded tiny model; the directory lives as long as the guard.
fn app(extra: &[&str]) -> (tempfile::TempDir, Router) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let spec = DummySpec {
        architecture: Architecture::Llama,
        size: DummySize::Tiny,
        seed: 41,
    };
    write_dummy_model(spec, dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let model = dir.path().to_string_lossy().into_owned();
    let mut argv = vec![
        "serve",
        "--model-id",
        model.as_str(),
        "--kv-cache-memory",
        "16Mi",
    ];
    argv.extend_from_slice(extra);
    let config = Args::parse_from(argv)
        .serve
        .resolve()
        .unwrap_or_else(|e| panic!("{e}"));
    let (_sender, shutdown) = tokio::sync::watch::channel(false);
    let state = AppState::new(
        config.clone(),
        Metrics::new().unwrap_or_else(|e| panic!("{e}")),
        shutdown,
    );
    let model = lantern::serve::load_model(&config).unwrap_or_else(|e| panic!("{e}"));
    state.set_model(model);
    (dir, router(state))
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Value,
    text: String,
}

async fn send(app: &Router, method: &str, path: &str, content_type: &str, body: &str) -> Answer {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from(body.to_string()))
        .unwrap_or_else(|e| panic!("{e}"));
    let response = app
        .clone()
        .oneshot(request)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap_or_default();
    Answer {
        status,
        headers,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        text: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

async fn post(app: &Router, path: &str, body: Value) -> Answer {
    send(app, "POST", path, "application/json", &body.to_string()).await
}

#[tokio::test]
async fn each_api_refuses_a_bad_field_in_its_own_shape() {
    let (_model, app) = app(&[]);
    // TGI: 422, {"error", "error_type"}, the field named.
    let tgi = post(
        &app,
        "/generate",
        json!({"inputs": "hi", "parameters": {"top_p": 1.5}}),
    )
    .await;
    assert_eq!(tgi.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(tgi.body["error_type"], "validation");
    assert!(
        tgi.body["error"]
            .as_str()
            .is_some_and(|e| e.contains("top_p")),
        "{}",
        tgi.body
    );
    // OpenAI: 400, {"error": {"message", "type", "param", "code"}}.
    let openai = post(
        &app,
        "/v1/chat/completions",
        json!({"messages": [{"role": "user", "content": "hi"}], "n": 17}),
    )
    .await;
    assert_eq!(openai.status, StatusCode::BAD_REQUEST);
    assert_eq!(openai.body["error"]["param"], "n", "{}", openai.body);
    assert_eq!(openai.body["error"]["type"], "invalid_request_error");
    // Bedrock through SageMaker: 400 in Anthropic's shape.
    let bedrock = post(
        &app,
        "/invocations",
        json!({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 4, "messages": []}),
    )
    .await;
    assert_eq!(bedrock.status, StatusCode::BAD_REQUEST);
    assert_eq!(bedrock.body["type"], "error", "{}", bedrock.body);
    assert_eq!(bedrock.body["error"]["type"], "invalid_request_error");
    // Bodies that fail to parse are refused by the one body extractor, in each API's shape and
    // with the path of the field at fault.
    let tgi_type = post(
        &app,
        "/generate",
        json!({"inputs": "hi", "parameters": {"max_new_tokens": "x"}}),
    )
    .await;
    assert_eq!(tgi_type.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        tgi_type.body["error"]
            .as_str()
            .is_some_and(|e| e.contains("parameters.max_new_tokens")),
        "{}",
        tgi_type.body
    );
    let openai_type = post(
        &app,
        "/v1/chat/completions",
        json!({"messages": [{"role": "user", "content": 5}]}),
    )
    .await;
    assert_eq!(openai_type.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        openai_type.body["error"]["param"], "messages[0].content",
        "{}",
        openai_type.body
    );
    let bedrock_type = post(
        &app,
        "/invocations",
        json!({"anthropic_version": "bedrock-2023-05-31", "max_tokens": "four", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(bedrock_type.status, StatusCode::BAD_REQUEST);
    assert_eq!(bedrock_type.body["error"]["type"], "invalid_request_error");
    assert!(
        bedrock_type.body["error"]["message"]
            .as_str()
            .is_some_and(|e| e.contains("max_tokens")),
        "{}",
        bedrock_type.body
    );
    // A body no schema claims: 422, naming the fields that decide.
    let unknown = post(&app, "/invocations", json!({"question": "hi"})).await;
    assert_eq!(unknown.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(unknown.body["error"]
        .as_str()
        .is_some_and(|e| e.contains("inputs")));
}

#[tokio::test]
async fn answers_carry_their_request_id_and_token_counts() {
    let (_model, app) = app(&[]);
    let ok = post(
        &app,
        "/generate",
        json!({"inputs": "hello", "parameters": {"max_new_tokens": 3, "ignore_eos": true}}),
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
    let header = |name: &str| {
        ok.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    assert_eq!(header("x-generated-tokens").as_deref(), Some("3"));
    assert!(header("x-prompt-tokens").is_some_and(|n| n.parse::<u32>().is_ok_and(|n| n > 0)));
    assert!(header("x-request-id").is_some_and(|id| id.len() == 32));
    // Refusals get an id too.
    let refused = post(&app, "/generate", json!({"inputs": 3})).await;
    assert!(refused.headers.contains_key("x-request-id"));
}

#[tokio::test]
async fn bodies_and_routes_outside_the_limits_are_refused() {
    let (_model, app) = app(&["--max-payload-bytes", "1000"]);
    let big = json!({"inputs": "x".repeat(2000)}).to_string();
    let too_large = send(&app, "POST", "/generate", "application/json", &big).await;
    assert_eq!(too_large.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(too_large.body["error_type"], "payload_too_large");
    let xml = send(&app, "POST", "/invocations", "application/xml", "<a/>").await;
    assert_eq!(xml.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let malformed = send(
        &app,
        "POST",
        "/v1/completions",
        "application/json",
        "{\"prompt\": ",
    )
    .await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
    assert!(malformed.body["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("malformed JSON")));
    let nowhere = send(&app, "GET", "/nowhere", "application/json", "").await;
    assert_eq!(nowhere.status, StatusCode::NOT_FOUND);
    let wrong_method = send(&app, "GET", "/generate", "application/json", "").await;
    assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
}

/// The last `data:` event of a Server-Sent Events body, as JSON.
fn last_event(text: &str) -> Value {
    text.lines()
        .rev()
        .filter_map(|line| line.strip_prefix("data:"))
        .find_map(|data| serde_json::from_str(data.trim()).ok())
        .unwrap_or(Value::Null)
}

/// A stream whose engine step fails ends with an error event in its API's own shape (the same
/// bodies error.rs gives collected responses).
#[tokio::test]
async fn failed_streams_end_with_an_error_event_in_their_apis_shape() {
    let (_model, app) = app(&[
        "--inject-step-faults",
        "1",
        "--max-consecutive-step-failures",
        "100",
    ]);
    let tgi = post(&app, "/generate_stream", json!({"inputs": "hi"})).await;
    assert_eq!(tgi.status, StatusCode::OK);
    let event = last_event(&tgi.text);
    assert_eq!(event["error_type"], "generation", "{}", tgi.text);
    assert!(
        event["error"]
            .as_str()
            .is_some_and(|e| e.contains("injected fault")),
        "{event}"
    );
    let chat = post(
        &app,
        "/v1/chat/completions",
        json!({"messages": [{"role": "user", "content": "hi"}], "stream": true}),
    )
    .await;
    let event = last_event(&chat.text);
    assert_eq!(event["error"]["type"], "server_error", "{}", chat.text);
    assert_eq!(event["error"]["code"], "generation");
    let bedrock = post(
        &app,
        "/invocations",
        json!({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 4, "stream": true,
               "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    let event = last_event(&bedrock.text);
    assert_eq!(event["type"], "error", "{}", bedrock.text);
    assert_eq!(event["error"]["type"], "api_error");
}

/// The document and the router come from one table: every documented operation is routed.
#[tokio::test]
async fn every_documented_operation_is_served() {
    let (_model, app) = app(&[]);
    let doc = send(&app, "GET", "/openapi.json", "application/json", "")
        .await
        .body;
    let paths = doc["paths"].as_object().cloned().unwrap_or_default();
    assert!(paths.len() >= 14, "{doc}");
    for (path, item) in paths {
        for method in item
            .as_object()
            .map(|m| m.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default()
        {
            let answer = send(
                &app,
                &method.to_uppercase(),
                &path,
                "application/json",
                "{}",
            )
            .await;
            assert!(
                answer.status != StatusCode::NOT_FOUND
                    && answer.status != StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path}: {}",
                answer.status
            );
        }
    }
}

/// The text of each choice of an OpenAI completion response.
fn choice_texts(answer: &Answer) -> Vec<String> {
    answer.body["choices"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| c["text"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Sum of a completion choice's token log-probabilities.
fn cumulative_logprob(choice: &Value) -> f64 {
    choice["logprobs"]["token_logprobs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_f64)
        .sum()
}

#[tokio::test]
async fn openai_samples_choices_prompt_lists_and_echo() {
    let (_model, app) = app(&[]);
    let sampled = json!({"prompt": "once upon", "max_tokens": 6, "temperature": 1.0, "seed": 5, "n": 4, "ignore_eos": true});
    let first = post(&app, "/v1/completions", sampled.clone()).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    let mut texts = choice_texts(&first);
    assert_eq!(texts.len(), 4);
    assert_eq!(
        choice_texts(&post(&app, "/v1/completions", sampled).await),
        texts,
        "reproducible"
    );
    texts.sort();
    texts.dedup();
    assert_eq!(
        texts.len(),
        4,
        "four seeds, four completions: {}",
        first.body
    );
    // Each prompt counted once; the repeated prompt's blocks came from the cache (the prompt
    // is short: its full blocks, if any).
    assert_eq!(first.body["usage"]["completion_tokens"], 24);
    assert!(first.body["usage"]["prompt_tokens_details"]["cached_tokens"].is_u64());

    // best_of = 3: the sample with the highest cumulative log-probability of the same three.
    let three = json!({"prompt": "the sea", "max_tokens": 5, "temperature": 1.0, "seed": 9, "n": 3, "logprobs": 0, "ignore_eos": true});
    let all = post(&app, "/v1/completions", three).await;
    let choices = all.body["choices"].as_array().cloned().unwrap_or_default();
    assert_eq!(choices.len(), 3, "{}", all.body);
    let best = choices
        .iter()
        .max_by(|a, b| cumulative_logprob(a).total_cmp(&cumulative_logprob(b)))
        .map(|c| c["text"].clone());
    let best_of = post(
        &app,
        "/v1/completions",
        json!({"prompt": "the sea", "max_tokens": 5, "temperature": 1.0, "seed": 9, "best_of": 3, "ignore_eos": true}),
    )
    .await;
    assert_eq!(choice_texts(&best_of).len(), 1);
    assert_eq!(best, Some(best_of.body["choices"][0]["text"].clone()));

    // Three prompts (one as token ids) x n = 2, greedy: six choices, prompt by prompt, each
    // the same as that prompt sent alone.
    let prompts = json!(["red", "green", "blue"]);
    let listed = post(
        &app,
        "/v1/completions",
        json!({"prompt": prompts, "n": 2, "max_tokens": 4, "temperature": 0, "ignore_eos": true}),
    )
    .await;
    let texts = choice_texts(&listed);
    assert_eq!(texts.len(), 6, "{}", listed.body);
    for (i, prompt) in ["red", "green", "blue"].iter().enumerate() {
        let alone = post(
            &app,
            "/v1/completions",
            json!({"prompt": prompt, "max_tokens": 4, "temperature": 0, "ignore_eos": true}),
        )
        .await;
        assert_eq!(texts[2 * i], choice_texts(&alone)[0]);
        assert_eq!(texts[2 * i + 1], choice_texts(&alone)[0]);
        assert_eq!(listed.body["choices"][2 * i + 1]["index"], 2 * i + 1);
    }
    let ids = post(&app, "/tokenize", json!({"inputs": "green"})).await;
    let ids: Vec<Value> = ids
        .body
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| t["id"].clone())
        .collect();
    let by_ids = post(
        &app,
        "/v1/completions",
        json!({"prompt": ids, "max_tokens": 4, "temperature": 0, "ignore_eos": true}),
    )
    .await;
    assert_eq!(
        choice_texts(&by_ids),
        vec![texts[2].clone()],
        "{}",
        by_ids.body
    );

    // echo: the prompt's text first.
    let echoed = post(
        &app,
        "/v1/completions",
        json!({"prompt": "echo me", "echo": true, "max_tokens": 3, "temperature": 0, "ignore_eos": true}),
    )
    .await;
    let text = choice_texts(&echoed).pop().unwrap_or_default();
    assert!(
        text.starts_with("echo me") && text.len() > "echo me".len(),
        "{text:?}"
    );

    // echo with logprobs: the prompt's tokens first, the first without a log-probability.
    let scored = post(
        &app,
        "/v1/completions",
        json!({"prompt": "echo me", "echo": true, "logprobs": 1, "max_tokens": 3, "temperature": 0, "ignore_eos": true}),
    )
    .await;
    assert_eq!(scored.status, StatusCode::OK, "{}", scored.body);
    let logprobs = &scored.body["choices"][0]["logprobs"];
    let values = logprobs["token_logprobs"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let prompt_len = scored.body["usage"]["prompt_tokens"].as_u64().unwrap_or(0) as usize;
    assert_eq!(values.len(), prompt_len + 3, "{}", scored.body);
    assert!(values[0].is_null());
    assert!(values[1..].iter().all(Value::is_f64), "{}", scored.body);
    let tokens: Vec<&str> = logprobs["tokens"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    assert!(tokens.concat().starts_with("echo me"), "{tokens:?}");
    // TGI's decoder_input_details: the prefill tokens' log-probabilities likewise.
    let details = post(
        &app,
        "/generate",
        json!({"inputs": "some words here", "parameters": {"max_new_tokens": 2, "decoder_input_details": true}}),
    )
    .await;
    let prefill = details.body["details"]["prefill"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(prefill.len() > 2, "{}", details.body);
    assert!(prefill[0]["logprob"].is_null());
    assert!(
        prefill[1..].iter().all(|t| t["logprob"].is_f64()),
        "{}",
        details.body
    );

    // Chat with n = 2 and a seed: two choices.
    let chat = post(
        &app,
        "/v1/chat/completions",
        json!({"messages": [{"role": "user", "content": "hi"}], "n": 2, "seed": 3, "max_tokens": 3}),
    )
    .await;
    assert_eq!(
        chat.body["choices"].as_array().map(Vec::len),
        Some(2),
        "{}",
        chat.body
    );
    assert_eq!(chat.body["choices"][1]["index"], 1);
}

#[tokio::test]
async fn openai_fields_that_cannot_be_honoured_are_refused_by_name() {
    let (_model, app) = app(&[]);
    for (field, value) in [
        ("logit_bias", json!({"5": 10})),
        (
            "tools",
            json!([{"type": "function", "function": {"name": "f"}}]),
        ),
    ] {
        let mut body = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});
        body[field] = value;
        let refused = post(&app, "/v1/chat/completions", body).await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{field}");
        assert_eq!(refused.body["error"]["param"], field, "{}", refused.body);
    }
    // Their defaults, metadata fields and unknown fields are accepted.
    let accepted = post(
        &app,
        "/v1/chat/completions",
        json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "logit_bias": {},
               "tools": [], "tool_choice": "none", "response_format": {"type": "text"},
               "user": "u1", "metadata": {"k": "v"}, "service_tier": "auto", "store": false,
               "a_field_from_the_future": 1}),
    )
    .await;
    assert_eq!(accepted.status, StatusCode::OK, "{}", accepted.body);
    // best_of picks among finished samples: not streamed.
    let streamed_best_of = post(
        &app,
        "/v1/completions",
        json!({"prompt": "x", "best_of": 2, "stream": true, "max_tokens": 2}),
    )
    .await;
    assert_eq!(streamed_best_of.status, StatusCode::BAD_REQUEST);
    assert_eq!(streamed_best_of.body["error"]["param"], "best_of");
}

/// Every `data:` event of a Server-Sent Events body that is JSON.
fn events(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|line| line.strip_prefix("data:"))
        .filter_map(|data| serde_json::from_str(data.trim()).ok())
        .collect()
}

#[tokio::test]
async fn several_choices_stream_interleaved_by_index() {
    let (_model, app) = app(&[]);
    // Two prompts x n = 2, greedy, echoed: four choices, each its prompt then the same text as
    // the collected answer, one finish per choice, then usage and [DONE].
    let body = json!({"prompt": ["red", "blue"], "n": 2, "max_tokens": 4, "temperature": 0,
                      "echo": true, "ignore_eos": true, "stream_options": {"include_usage": true}});
    let mut streamed_body = body.clone();
    streamed_body["stream"] = json!(true);
    let collected = post(&app, "/v1/completions", body).await;
    let streamed = post(&app, "/v1/completions", streamed_body).await;
    assert_eq!(streamed.status, StatusCode::OK, "{}", streamed.text);
    assert!(
        streamed.text.trim_end().ends_with("data: [DONE]"),
        "{}",
        streamed.text
    );
    let chunks = events(&streamed.text);
    let mut texts = vec![String::new(); 4];
    let mut finishes = vec![0; 4];
    for chunk in &chunks {
        for choice in chunk["choices"].as_array().into_iter().flatten() {
            let index = choice["index"].as_u64().unwrap_or(99) as usize;
            assert!(index < 4, "{chunk}");
            texts[index].push_str(choice["text"].as_str().unwrap_or_default());
            finishes[index] += usize::from(!choice["finish_reason"].is_null());
        }
    }
    assert_eq!(texts, choice_texts(&collected));
    assert_eq!(finishes, vec![1; 4]);
    let usage = chunks
        .iter()
        .rev()
        .find(|c| c.get("usage").is_some())
        .map(|c| c["usage"].clone());
    assert_eq!(
        usage.map(|u| u["completion_tokens"].clone()),
        Some(json!(16))
    );
    // Chat with n = 3: three choices, each opening with the assistant's role.
    let chat = post(
        &app,
        "/v1/chat/completions",
        json!({"messages": [{"role": "user", "content": "hi"}], "n": 3, "seed": 2, "max_tokens": 3, "stream": true}),
    )
    .await;
    let mut roles = vec![0; 3];
    for chunk in events(&chat.text) {
        for choice in chunk["choices"].as_array().into_iter().flatten() {
            if choice["delta"]["role"] == "assistant" {
                roles[choice["index"].as_u64().unwrap_or(0) as usize] += 1;
            }
        }
    }
    assert_eq!(roles, vec![1; 3], "{}", chat.text);
}

#[tokio::test]
async fn tgi_best_of_returns_the_best_sample_with_the_others_in_details() {
    let (_model, app) = app(&[]);
    let answer = post(
        &app,
        "/generate",
        json!({"inputs": "hello", "parameters": {"best_of": 3, "do_sample": true, "seed": 4,
               "max_new_tokens": 5, "details": true, "ignore_eos": true}}),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let details = &answer.body["details"];
    let others = details["best_of_sequences"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(others.len(), 2, "{}", answer.body);
    let logprob = |tokens: &Value| -> f64 {
        tokens
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["logprob"].as_f64())
            .sum()
    };
    let best = logprob(&details["tokens"]);
    for other in &others {
        assert!(best >= logprob(&other["tokens"]), "{}", answer.body);
        assert!(other["generated_text"].is_string());
    }
    // best_of needs sampling.
    let greedy = post(
        &app,
        "/generate",
        json!({"inputs": "hello", "parameters": {"best_of": 2, "max_new_tokens": 2}}),
    )
    .await;
    assert_eq!(greedy.status, StatusCode::UNPROCESSABLE_ENTITY);
    // A prompt sent twice reports the cached part of the second.
    let prompt = "a prompt long enough to fill a few blocks of sixteen tokens ".repeat(4);
    let request = json!({"inputs": prompt, "parameters": {"max_new_tokens": 2, "details": true}});
    post(&app, "/generate", request.clone()).await;
    let again = post(&app, "/generate", request).await;
    let cached = again.body["details"]["cached_tokens"].as_u64().unwrap_or(0);
    assert!(cached >= 16, "{}", again.body);
    assert_eq!(
        again
            .headers
            .get("x-cached-tokens")
            .and_then(|v| v.to_str().ok()),
        Some(cached.to_string().as_str())
    );
}

#[tokio::test]
async fn structured_output_on_tgi_and_openai() {
    let (_model, app) = app(&[]);
    let schema = json!({"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 6},
        "rank": {"type": "integer", "minimum": 1, "maximum": 9}},
        "required": ["city", "rank"], "additionalProperties": false});
    let holds = |text: &str| {
        let value: Value = serde_json::from_str(text).unwrap_or(Value::Null);
        value["city"]
            .as_str()
            .is_some_and(|c| c.chars().count() <= 6)
            && value["rank"].as_u64().is_some_and(|r| (1..=9).contains(&r))
            && value.as_object().is_some_and(|o| o.len() == 2)
    };
    // TGI: parameters.grammar, collected and streamed.
    for path in ["/generate", "/generate_stream"] {
        let answer = post(
            &app,
            path,
            json!({"inputs": "hi", "parameters": {"max_new_tokens": 200, "grammar": {"type": "json", "value": schema}}}),
        )
        .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
        let text = if path == "/generate" {
            answer.body["generated_text"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        } else {
            last_event(&answer.text)["generated_text"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        };
        assert!(holds(&text), "{path}: {text:?}");
    }
    let regex = post(
        &app,
        "/generate",
        json!({"inputs": "hi", "parameters": {"max_new_tokens": 20, "grammar": {"type": "regex", "value": "[0-9]{3}-[0-9]{4}"}}}),
    )
    .await;
    let text = regex.body["generated_text"].as_str().unwrap_or_default();
    assert!(
        text.len() == 8
            && text.chars().enumerate().all(|(i, c)| if i == 3 {
                c == '-'
            } else {
                c.is_ascii_digit()
            }),
        "{text:?}"
    );
    // OpenAI: response_format json_schema on chat, json_object on completions.
    let chat = post(
        &app,
        "/v1/chat/completions",
        json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 200,
               "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": true}}}),
    )
    .await;
    let content = chat.body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default();
    assert!(holds(content), "{}", chat.body);
    assert_eq!(chat.body["choices"][0]["finish_reason"], "stop");
    let object = post(
        &app,
        "/v1/completions",
        json!({"prompt": "x", "max_tokens": 200, "temperature": 0.7, "seed": 1, "response_format": {"type": "json_object"}}),
    )
    .await;
    // Nothing bounds an object's keys: a random model may run out of tokens inside one; the
    // output is an object whenever it stopped by itself, and always starts as one.
    let text = choice_texts(&object).pop().unwrap_or_default();
    assert!(text.starts_with('{'), "{text:?}");
    if object.body["choices"][0]["finish_reason"] == "stop" {
        assert!(
            serde_json::from_str::<serde_json::Map<String, Value>>(&text).is_ok(),
            "{text:?}"
        );
    }
    // An invalid grammar is the client's error, naming the field and the problem.
    let invalid = post(
        &app,
        "/v1/chat/completions",
        json!({"messages": [{"role": "user", "content": "hi"}],
               "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "array", "uniqueItems": true}}}}),
    )
    .await;
    assert_eq!(invalid.status, StatusCode::BAD_REQUEST);
    assert_eq!(invalid.body["error"]["param"], "response_format");
    assert!(
        invalid.body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("uniqueItems")),
        "{}",
        invalid.body
    );
    let bad_regex = post(
        &app,
        "/generate",
        json!({"inputs": "hi", "parameters": {"grammar": {"type": "regex", "value": "(unclosed"}}}),
    )
    .await;
    assert_eq!(bad_regex.status, StatusCode::UNPROCESSABLE_ENTITY);
}

/// A grammar that cannot compile within --max-grammar-compile-ms is refused, saying so.
#[tokio::test]
async fn grammars_compile_within_the_limit_or_are_refused() {
    let (_model, impatient) = app(&["--max-grammar-compile-ms", "0"]);
    let slow = post(
        &impatient,
        "/generate",
        json!({"inputs": "hi", "parameters": {"grammar": {"type": "regex", "value": "[a-z]{1,40}"}}}),
    )
    .await;
    assert_eq!(
        slow.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        slow.body
    );
    assert!(
        slow.body["error"]
            .as_str()
            .is_some_and(|m| m.contains("--max-grammar-compile-ms")),
        "{}",
        slow.body
    );
}
