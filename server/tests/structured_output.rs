//! Structured output through the router: TGI `parameters.grammar` and OpenAI
//! `response_format` hold every answer to its schema or regex, compact by default or with
//! flexible whitespace when asked; invalid or slow grammars are refused naming the field.

mod common;

use axum::http::StatusCode;
use common::{app, choice_texts, last_event, post};
use serde_json::{json, Value};

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

/// `"whitespace": "flexible"` is taken on JSON grammars (the output still holds) and refused,
/// naming the field, where there is no JSON.
#[tokio::test]
async fn json_whitespace_is_compact_unless_asked_and_only_for_json() {
    let (_model, app) = app(&[]);
    let schema = json!({"type": "object", "properties": {"rank": {"type": "integer", "minimum": 1, "maximum": 9}},
                        "required": ["rank"], "additionalProperties": false});
    for seed in 0..3 {
        let answer = post(
            &app,
            "/generate",
            json!({"inputs": "hi", "parameters": {"max_new_tokens": 60, "seed": seed, "do_sample": true,
                   "grammar": {"type": "json", "value": schema, "whitespace": "flexible"}}}),
        )
        .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
        let text = answer.body["generated_text"].as_str().unwrap_or_default();
        if answer.body["details"]["finish_reason"] != "length" {
            let value: Value = serde_json::from_str(text).unwrap_or(Value::Null);
            assert!(
                value["rank"].as_u64().is_some_and(|r| (1..=9).contains(&r)),
                "{text:?}"
            );
        }
    }
    let chat = post(
        &app,
        "/v1/chat/completions",
        json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 60,
               "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}, "whitespace": "flexible"}}),
    )
    .await;
    assert_eq!(chat.status, StatusCode::OK, "{}", chat.text);
    for (path, body, param) in [
        (
            "/generate",
            json!({"inputs": "hi", "parameters": {"grammar": {"type": "regex", "value": "[0-9]+", "whitespace": "flexible"}}}),
            None,
        ),
        (
            "/generate",
            json!({"inputs": "hi", "parameters": {"grammar": {"type": "json", "value": schema, "whitespace": "loose"}}}),
            None,
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "text", "whitespace": "flexible"}}),
            Some("response_format"),
        ),
    ] {
        let refused = post(&app, path, body.clone()).await;
        assert!(refused.status.is_client_error(), "{body}: {}", refused.text);
        assert!(
            refused.text.contains("whitespace") || refused.text.contains("loose"),
            "{}",
            refused.text
        );
        if let Some(param) = param {
            assert_eq!(refused.body["error"]["param"], param, "{}", refused.text);
        }
    }
}
