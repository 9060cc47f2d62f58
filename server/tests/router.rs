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
