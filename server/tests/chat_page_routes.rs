//! The chat page's routes without a browser: every file under a strict Content-Security-Policy
//! with its media type, `GET /` sent to `/ui`, `--ui false` answering 404, and
//! `POST /` still TGI's.

mod common;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use common::{app, post};
use serde_json::json;
use tower::ServiceExt;

async fn get(app: &axum::Router, path: &str, accept: &str) -> axum::response::Response {
    let request = Request::builder()
        .uri(path)
        .header(header::ACCEPT, accept)
        .body(Body::empty())
        .unwrap_or_else(|e| panic!("{e}"));
    app.clone()
        .oneshot(request)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test]
async fn files_are_served_under_a_strict_policy_and_browsers_are_sent_to_the_page() {
    let (_model, app) = app(&[]);
    for (path, media) in [
        ("/ui", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/style.css", "text/css"),
        ("/ui/vendor/marked.js", "text/javascript"),
        ("/ui/vendor/purify.js", "text/javascript"),
    ] {
        let response = get(&app, path, "*/*").await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let headers = response.headers();
        let content_type = headers[header::CONTENT_TYPE].to_str().unwrap_or_default();
        assert!(content_type.starts_with(media), "{path}: {content_type}");
        let policy = headers[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap_or_default();
        assert!(
            policy.contains("default-src 'self'")
                && policy.contains("script-src 'self'")
                && !policy.contains("unsafe"),
            "{path}: {policy}"
        );
    }
    // The page loads its scripts as files: no inline script for the policy to refuse.
    let page = get(&app, "/ui", "text/html").await;
    let body = axum::body::to_bytes(page.into_body(), usize::MAX)
        .await
        .unwrap_or_default();
    let html = String::from_utf8_lossy(&body);
    assert!(!html.contains("<script>") && html.contains("src=\"/ui/app.js\""));
    assert!(!html.contains("http://") && !html.contains("https://"));

    let browser = get(&app, "/", "text/html,application/xhtml+xml").await;
    assert_eq!(browser.status(), StatusCode::SEE_OTHER);
    assert_eq!(browser.headers()[header::LOCATION], "/ui");
    let other = get(&app, "/", "application/json").await;
    assert_eq!(other.status(), StatusCode::SEE_OTHER);
    let tgi = post(
        &app,
        "/",
        json!({"inputs": "hi", "parameters": {"max_new_tokens": 2}}),
    )
    .await;
    assert_eq!(tgi.status, StatusCode::OK, "{}", tgi.text);
}

#[tokio::test]
async fn ui_false_turns_the_page_off() {
    let (_model, app) = app(&["--ui", "false"]);
    assert_eq!(
        get(&app, "/ui", "text/html").await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(&app, "/ui/app.js", "*/*").await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(&app, "/", "text/html").await.status(),
        StatusCode::NOT_FOUND
    );
}
