//! What the router tests share: a tiny dummy model served in-process, requests through
//! `tower::ServiceExt::oneshot`, and Server-Sent Events bodies read back.
#![allow(dead_code)] // each test file uses its own part

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use clap::Parser;
use lantern::config::ServeArgs;
use lantern::http::{router, AppState};
use lantern::metrics::Metrics;
use lantern_models::dummy::{write_dummy_model, DummySize, DummySpec};
use lantern_models::Architecture;
use serde_json::Value;
use tower::ServiceExt;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    serve: ServeArgs,
}

/// The router over a freshly loaded tiny Llama; the directory lives as long as the guard.
pub fn app(extra: &[&str]) -> (tempfile::TempDir, Router) {
    app_for(Architecture::Llama, extra)
}

/// The router over a freshly loaded tiny model of `architecture`.
pub fn app_for(architecture: Architecture, extra: &[&str]) -> (tempfile::TempDir, Router) {
    app_seeded(architecture, 41, extra)
}

/// The router over a freshly loaded tiny model of `architecture` with weights from `seed`.
pub fn app_seeded(
    architecture: Architecture,
    seed: u64,
    extra: &[&str],
) -> (tempfile::TempDir, Router) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let spec = DummySpec {
        architecture,
        size: DummySize::Tiny,
        seed,
    };
    write_dummy_model(spec, dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let router = serve(dir.path(), extra);
    (dir, router)
}

/// The router over the model in `dir`.
pub fn serve(dir: &std::path::Path, extra: &[&str]) -> Router {
    let model = dir.to_string_lossy().into_owned();
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
    router(state)
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub body: Value,
    pub text: String,
}

pub async fn send(
    app: &Router,
    method: &str,
    path: &str,
    content_type: &str,
    body: &str,
) -> Answer {
    send_with_headers(
        app,
        method,
        path,
        &[(header::CONTENT_TYPE.as_str(), content_type)],
        body,
    )
    .await
}

/// A request with `headers`; a `GET` goes without a body.
pub async fn send_with_headers(
    app: &Router,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let mut request = Request::builder().method(method).uri(path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let body = if method == "GET" {
        Body::empty()
    } else {
        Body::from(body.to_string())
    };
    let response = app
        .clone()
        .oneshot(request.body(body).unwrap_or_else(|e| panic!("{e}")))
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

pub async fn post(app: &Router, path: &str, body: Value) -> Answer {
    send(app, "POST", path, "application/json", &body.to_string()).await
}

/// The last `data:` event of a Server-Sent Events body, as JSON.
pub fn last_event(text: &str) -> Value {
    text.lines()
        .rev()
        .filter_map(|line| line.strip_prefix("data:"))
        .find_map(|data| serde_json::from_str(data.trim()).ok())
        .unwrap_or(Value::Null)
}

/// Every `data:` event of a Server-Sent Events body that is JSON.
pub fn events(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|line| line.strip_prefix("data:"))
        .filter_map(|data| serde_json::from_str(data.trim()).ok())
        .collect()
}

/// The text of each choice of an OpenAI completion response.
pub fn choice_texts(answer: &Answer) -> Vec<String> {
    answer.body["choices"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| c["text"].as_str().unwrap_or_default().to_string())
        .collect()
}
