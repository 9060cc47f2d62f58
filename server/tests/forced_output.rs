//! Forced output that ends, and bad input that is the client's error: a forced tool call whose
//! schema says nothing of other keys ends with a valid call (the server closes its objects);
//! grammars that compile but cannot run, a `n` over its limit and token ids outside the
//! vocabulary are 4xx answers naming the field, on every route, collected and streamed.

mod common;

use axum::http::StatusCode;
use common::{app, app_seeded, events, post};
use lantern_models::Architecture;
use serde_json::{json, Value};

/// The tool of the report: its object lists its properties and says nothing of others.
fn weather_schema() -> Value {
    json!({"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 20},
        "unit": {"enum": ["c", "f"]}},
        "required": ["city", "unit"]})
}

fn assert_matches_schema(arguments: &Value, context: &str) {
    let schema = weather_schema();
    let validator = jsonschema::validator_for(&schema).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        validator.is_valid(arguments),
        "{context}: {arguments} does not match {schema}"
    );
    // The server closed the object: no key beyond the declared ones.
    assert!(
        arguments.as_object().is_some_and(|o| o.len() == 2),
        "{context}: {arguments}"
    );
}

/// The report's OpenAI request: the weather tool forced by `tool_choice`, 80 tokens, greedy.
fn forced_chat(tool_choice: Value, stream: bool) -> Value {
    json!({
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        "tools": [{"type": "function", "function": {"name": "get_weather",
                   "parameters": weather_schema()}}],
        "tool_choice": tool_choice, "max_tokens": 80, "temperature": 0, "stream": stream,
    })
}

#[tokio::test]
async fn forced_calls_end_with_a_valid_call_within_the_reported_budgets() {
    // The report: tiny llama dummy, seed 7, greedy; OpenAI with 80 tokens, Bedrock with 60.
    let (_model, app) = app_seeded(Architecture::Llama, 7, &[]);
    let openai = post(
        &app,
        "/v1/chat/completions",
        forced_chat(json!("required"), false),
    )
    .await;
    assert_eq!(openai.status, StatusCode::OK, "{}", openai.text);
    let choice = &openai.body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{}", openai.body);
    let function = &choice["message"]["tool_calls"][0]["function"];
    assert_eq!(function["name"], "get_weather");
    let arguments: Value = serde_json::from_str(function["arguments"].as_str().unwrap_or_default())
        .unwrap_or(Value::Null);
    assert_matches_schema(&arguments, "openai");

    let bedrock = post(
        &app,
        "/invocations",
        json!({
            "anthropic_version": "bedrock-2023-05-31", "max_tokens": 60, "temperature": 0,
            "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
            "tools": [{"name": "get_weather", "input_schema": weather_schema()}],
            "tool_choice": {"type": "any"},
        }),
    )
    .await;
    assert_eq!(bedrock.status, StatusCode::OK, "{}", bedrock.text);
    assert_eq!(bedrock.body["stop_reason"], "tool_use", "{}", bedrock.body);
    let tool_use = bedrock.body["content"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|b| b["type"] == "tool_use")
        .cloned()
        .unwrap_or_default();
    assert_matches_schema(&tool_use["input"], "bedrock");
}

/// Each grammar compiles to a parser but fails once its lexer is built or its first mask is
/// computed (before: a 500, or an error inside a 200 stream).
fn bad_grammars() -> Vec<(&'static str, Value)> {
    vec![
        ("regex", json!("a{1000000}")),
        ("regex", json!("((a{100}){100}){100}")),
        (
            "json",
            json!({"$ref": "#/$defs/a", "$defs": {"a": {"$ref": "#/$defs/a"}}}),
        ),
    ]
}

#[tokio::test]
async fn bad_grammars_are_client_errors_on_every_route_collected_and_streamed() {
    let (_model, app) = app(&[]);
    for (kind, value) in bad_grammars() {
        let parameters = json!({"max_new_tokens": 4, "grammar": {"type": kind, "value": value}});
        for (path, stream) in [
            ("/generate", false),
            ("/generate_stream", true),
            ("/", false),
            ("/", true),
            ("/invocations", false),
            ("/invocations", true),
        ] {
            let body = json!({"inputs": "hi", "parameters": parameters, "stream": stream});
            let answer = post(&app, path, body).await;
            assert_eq!(
                answer.status,
                StatusCode::UNPROCESSABLE_ENTITY,
                "{kind} {value} on {path} (stream {stream}): {}",
                answer.text
            );
            assert!(answer.text.contains("grammar"), "{}", answer.text);
        }
        if kind != "json" {
            continue;
        }
        // The same schema as OpenAI's response_format and as a tool's parameters.
        let format = json!({"type": "json_schema", "json_schema": {"name": "x", "schema": value}});
        let tool = json!([{"type": "function", "function": {"name": "f", "parameters": value}}]);
        for stream in [false, true] {
            for (extra, field) in [
                (json!({"response_format": format}), "response_format"),
                (json!({"tools": tool, "tool_choice": "required"}), "tools"),
            ] {
                let mut body = json!({"messages": [{"role": "user", "content": "hi"}],
                                      "max_tokens": 4, "stream": stream});
                if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
                    body.extend(extra.clone());
                }
                let answer = post(&app, "/v1/chat/completions", body).await;
                assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.text);
                assert_eq!(answer.body["error"]["param"], field, "{}", answer.text);
            }
        }
    }
}

#[tokio::test]
async fn counts_and_token_ids_out_of_range_are_named() {
    let (_model, app) = app(&[]);
    for path in ["/v1/completions", "/v1/chat/completions"] {
        let answer = post(
            &app,
            path,
            json!({"prompt": "hi", "messages": [{"role": "user", "content": "hi"}], "n": 1000}),
        )
        .await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.text);
        assert_eq!(answer.body["error"]["param"], "n", "{}", answer.text);
        let message = answer.body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("16") && message.contains("1000"),
            "{message}"
        );
    }
    // Limits name the field as each API spells it (one check, called before any work).
    for (path, body, field) in [
        (
            "/generate",
            json!({"inputs": "hi", "parameters": {"max_new_tokens": 100000}}),
            "max_new_tokens",
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi", "max_tokens": 100000}),
            "max_tokens",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "hi"}],
                                        "max_completion_tokens": 100000}),
            "max_completion_tokens",
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi", "max_tokens": 0}),
            "max_tokens",
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi", "logprobs": 9}),
            "logprobs",
        ),
    ] {
        let answer = post(&app, path, body).await;
        assert!(answer.status.is_client_error(), "{path}: {}", answer.text);
        let named = answer.body["error"]["param"].as_str().map(String::from);
        let message = answer.text.clone();
        assert!(
            named.as_deref() == Some(field) || (path == "/generate" && message.contains(field)),
            "{path}: {message}"
        );
    }
    for (prompt, named) in [
        (json!([1_000_000_000_000u64]), "1000000000000"),
        (json!([[1, -1]]), "-1"),
        (json!([5, 100000]), "100000"),
    ] {
        let answer = post(&app, "/v1/completions", json!({"prompt": prompt})).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.text);
        let message = answer.body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(named) && message.contains("token"),
            "{prompt}: {message}"
        );
        assert!(!message.contains("variant"), "{message}");
    }
}

#[tokio::test]
async fn forced_calls_stream_a_valid_call_too() {
    let (_model, app) = app_seeded(Architecture::Llama, 7, &[]);
    let named = json!({"type": "function", "function": {"name": "get_weather"}});
    let answer = post(&app, "/v1/chat/completions", forced_chat(named, true)).await;
    let arguments: String = events(&answer.text)
        .iter()
        .filter_map(|e| {
            e["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
                .as_str()
                .map(String::from)
        })
        .collect();
    let arguments: Value = serde_json::from_str(&arguments).unwrap_or(Value::Null);
    assert_matches_schema(&arguments, "streamed");
}
