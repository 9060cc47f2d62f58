//! API keys through the router: a missing or wrong key is a 401 in the shape of the API the
//! request speaks (TGI, OpenAI, Bedrock through /invocations); the right key, as a bearer
//! token or `x-api-key`, goes through; the health checks, the chat page's files and (unless
//! asked) /metrics stay open.

mod common;

use axum::http::StatusCode;
use axum::Router;
use common::{app, send_with_headers, Answer};
use serde_json::{json, Value};

const KEY: &str = "test-key-8c1f";

async fn call(
    app: &Router,
    method: &str,
    path: &str,
    key: Option<(&str, String)>,
    body: Value,
) -> Answer {
    let mut headers = vec![("content-type", "application/json".to_string())];
    headers.extend(key);
    let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    send_with_headers(app, method, path, &headers, &body.to_string()).await
}

fn bearer(key: &str) -> Option<(&'static str, String)> {
    Some(("authorization", format!("Bearer {key}")))
}

#[tokio::test]
async fn keys_are_required_and_refusals_speak_each_api() {
    let (_model, app) = app(&["--api-key", KEY]);
    let tgi = json!({"inputs": "hi", "parameters": {"max_new_tokens": 2}});
    let chat = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});
    let bedrock = json!({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 2,
                         "messages": [{"role": "user", "content": "hi"}]});
    let cases = [
        ("/generate", tgi.clone(), "tgi"),
        ("/invocations", tgi.clone(), "tgi"),
        ("/v1/chat/completions", chat.clone(), "openai"),
        ("/invocations", chat.clone(), "openai"),
        ("/invocations", bedrock.clone(), "anthropic"),
    ];
    for (path, body, shape) in cases {
        for key in [
            None,
            bearer("wrong"),
            Some(("x-api-key", "wrong".to_string())),
        ] {
            let refused = call(&app, "POST", path, key, body.clone()).await;
            assert_eq!(
                refused.status,
                StatusCode::UNAUTHORIZED,
                "{path}: {}",
                refused.text
            );
            assert!(!refused.text.contains(KEY));
            let shaped = match shape {
                "tgi" => refused.body["error_type"] == "unauthorized",
                "openai" => refused.body["error"]["code"] == "unauthorized",
                _ => {
                    refused.body["type"] == "error"
                        && refused.body["error"]["type"] == "authentication_error"
                }
            };
            assert!(shaped, "{path} ({shape}): {}", refused.text);
        }
        for key in [bearer(KEY), Some(("x-api-key", KEY.to_string()))] {
            let allowed = call(&app, "POST", path, key, body.clone()).await;
            assert_eq!(allowed.status, StatusCode::OK, "{path}: {}", allowed.text);
        }
    }
    // Open without a key: the health checks, the chat page, /metrics (by default).
    for path in ["/ping", "/health", "/ui", "/ui/app.js", "/metrics"] {
        assert_eq!(
            call(&app, "GET", path, None, Value::Null).await.status,
            StatusCode::OK,
            "{path}"
        );
    }
    // Closed: everything else, reads included.
    for path in ["/info", "/v1/models", "/openapi.json"] {
        assert_eq!(
            call(&app, "GET", path, None, Value::Null).await.status,
            StatusCode::UNAUTHORIZED,
            "{path}"
        );
        assert_eq!(
            call(&app, "GET", path, bearer(KEY), Value::Null)
                .await
                .status,
            StatusCode::OK,
            "{path}"
        );
    }
}

#[tokio::test]
async fn metrics_can_require_the_key_and_no_key_means_open() {
    let (_model, guarded) = app(&["--api-key", KEY, "--metrics-require-key"]);
    assert_eq!(
        call(&guarded, "GET", "/metrics", None, Value::Null)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(&guarded, "GET", "/metrics", bearer(KEY), Value::Null)
            .await
            .status,
        StatusCode::OK
    );
    let (_model, open) = app(&[]);
    let answer = call(
        &open,
        "POST",
        "/generate",
        None,
        json!({"inputs": "hi", "parameters": {"max_new_tokens": 2}}),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
}
