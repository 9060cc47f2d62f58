//! The chat page at `/ui`: one HTML page, its script and style, and two vendored libraries
//! (a Markdown renderer and an HTML sanitizer, `server/ui/vendor/`), all embedded in the
//! binary so the page works offline. Every file goes out with a strict Content-Security-Policy:
//! scripts and styles only from this origin, no inline script, requests only to this origin.
//! `--ui false` turns the page off (404). `GET /` is sent on to `/ui`.

use super::error::ApiError;
use super::state::AppState;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// What the page may load and do: only this origin's scripts, styles, images and requests; no
/// plugins, no framing, no form posts elsewhere.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// One embedded file and its media type.
pub struct Asset {
    pub path: &'static str,
    pub media_type: &'static str,
    body: &'static str,
}

pub const PAGE: Asset = Asset {
    path: "/ui",
    media_type: "text/html; charset=utf-8",
    body: include_str!("../../ui/index.html"),
};
pub const SCRIPT: Asset = Asset {
    path: "/ui/app.js",
    media_type: "text/javascript; charset=utf-8",
    body: include_str!("../../ui/app.js"),
};
pub const STYLE: Asset = Asset {
    path: "/ui/style.css",
    media_type: "text/css; charset=utf-8",
    body: include_str!("../../ui/style.css"),
};
pub const MARKED: Asset = Asset {
    path: "/ui/vendor/marked.js",
    media_type: "text/javascript; charset=utf-8",
    body: include_str!("../../ui/vendor/marked.js"),
};
pub const PURIFY: Asset = Asset {
    path: "/ui/vendor/purify.js",
    media_type: "text/javascript; charset=utf-8",
    body: include_str!("../../ui/vendor/purify.js"),
};

impl Asset {
    /// The file, with its headers; 404 with `--ui false`.
    pub fn response(&self, state: &AppState) -> Response {
        if !state.config.ui {
            return ApiError::NotFound("the chat page is off (--ui false)".into()).into_response();
        }
        (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(self.media_type),
                ),
                (
                    header::CONTENT_SECURITY_POLICY,
                    HeaderValue::from_static(CONTENT_SECURITY_POLICY),
                ),
                (
                    header::X_CONTENT_TYPE_OPTIONS,
                    HeaderValue::from_static("nosniff"),
                ),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            ],
            self.body,
        )
            .into_response()
    }
}

/// `GET /`: sent on to the chat page (browsers open the server's address); with `--ui false`,
/// 404. Generation at the root is `POST /` (TGI's).
pub async fn root(State(state): State<AppState>) -> Response {
    if !state.config.ui {
        return ApiError::NotFound(
            "the chat page is off (--ui false); generation is POST / (TGI) or /invocations".into(),
        )
        .into_response();
    }
    (StatusCode::SEE_OTHER, [(header::LOCATION, PAGE.path)]).into_response()
}
