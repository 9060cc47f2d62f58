//! The HTTP layer: it validates, submits to the engine and shapes events into each API's
//! responses. One module per wire schema.

mod adapters;
pub mod api_key;
mod bedrock;
pub mod body;
mod drive;
pub mod error;
mod generate;
mod ids;
mod openai;
mod openapi;
mod oversized;
mod pipeline;
mod ranges;
mod request_id;
mod routes;
mod sagemaker;
mod sse;
pub mod state;
mod tgi;
mod tools;
mod ui;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{from_fn_with_state, Next};
use axum::response::Response;
use axum::Router;
pub use state::{AppState, ServingModel};

pub fn router(state: AppState) -> Router {
    // Our own limit check answers 413 in our shape; axum's limit sits just above it.
    let limit = state.config.max_payload_bytes;
    let mut router = Router::new();
    // Methods of one path are merged into one route (axum refuses a path twice).
    let mut paths: Vec<(&str, axum::routing::MethodRouter<AppState>)> = Vec::new();
    for operation in routes::operations() {
        match paths.iter_mut().find(|(path, _)| *path == operation.path) {
            Some((_, handler)) => *handler = std::mem::take(handler).merge(operation.handler),
            None => paths.push((operation.path, operation.handler)),
        }
    }
    for (path, handler) in paths {
        router = router.route(path, handler);
    }
    router
        // Inside the counting: refused requests are counted with their 401.
        .route_layer(from_fn_with_state(state.clone(), api_key::require))
        .route_layer(from_fn_with_state(state.clone(), count_requests))
        .layer(DefaultBodyLimit::max(limit))
        .layer(from_fn_with_state(
            state.clone(),
            oversized::refuse_oversized_bodies,
        ))
        // A body that stops arriving fails its read (408) instead of holding the connection,
        // the oversized-body drain included.
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            state.config.client_read_timeout,
        ))
        // Outermost: every request, refused or not, gets its id and span.
        .layer(axum::middleware::from_fn(request_id::assign))
        .with_state(state)
}

/// Counts `lantern_requests_total{route, status}` (routes only, so unknown paths add no
/// labels) and logs each non-streamed request once, with its timings and token counts (in the
/// request's span, which names its id), and writes its EMF record when asked; prompts are never
/// logged. A stream's EMF record is written when it ends (sse.rs); its choices' ends are logged
/// by its driver (drive.rs).
async fn count_requests(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(String::new, |p| p.as_str().to_string());
    let context = request_id::RequestContext {
        id: request
            .extensions()
            .get::<request_id::RequestId>()
            .map_or_else(String::new, |id| id.0.clone()),
        route: route.clone(),
    };
    let started = std::time::Instant::now();
    let response = request_id::CONTEXT
        .scope(context.clone(), next.run(request))
        .await;
    let status = response.status();
    state
        .metrics
        .requests
        .with_label_values(&[route.as_str(), status.as_str()])
        .inc();
    let streaming = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if route == "/ping" || route == "/metrics" || streaming {
        return response;
    }
    let completion = response.extensions().get::<lantern_engine::Completion>();
    tracing::info!(
        route,
        status = status.as_u16(),
        seconds = started.elapsed().as_secs_f64(),
        prompt_tokens = completion.map(|c| c.prompt_tokens),
        generated_tokens = completion.map(|c| c.generated_tokens),
        queue_ms = completion.map(|c| c.queue_time.as_millis() as u64),
        "request"
    );
    if generates(&route) {
        report_emf(
            &state,
            &context,
            status.as_u16(),
            started.elapsed(),
            completion,
        );
    }
    response
}

/// Routes that run the model: the ones CloudWatch records are about.
fn generates(route: &str) -> bool {
    matches!(
        route,
        "/" | "/generate"
            | "/generate_stream"
            | "/invocations"
            | "/v1/chat/completions"
            | "/v1/completions"
    )
}

/// One EMF record for a finished request, when `--cloudwatch-emf` is on.
pub(crate) fn report_emf(
    state: &AppState,
    context: &request_id::RequestContext,
    status: u16,
    latency: std::time::Duration,
    completion: Option<&lantern_engine::Completion>,
) {
    if !state.config.cloudwatch_emf {
        return;
    }
    let model = state.model().map(|m| m.name.clone()).unwrap_or_default();
    crate::emf::emit(&crate::emf::RequestRecord {
        model: &model,
        route: &context.route,
        status,
        request_id: &context.id,
        latency,
        completion,
    });
}

/// TGI's liveness: 200 while the engine is healthy, 503 otherwise.
/// Lantern's metrics, then the engine's load under vLLM's names (`vllm_metrics.rs`) once a
/// model serves.
async fn metrics(State(state): State<AppState>) -> String {
    let model = state.model().ok();
    let stats = model.as_ref().map(|m| m.engine.stats());
    if let Some(model) = &model {
        let engines = model.engine.engines();
        state
            .metrics
            .set_engine_health(engines.iter().map(|e| e.is_healthy()));
    }
    let mut text = state.metrics.render(stats);
    if let Some(model) = &model {
        let cache_dtype = model.engine.kv_cache_dtype().to_string();
        let engines: Vec<_> = model
            .engine
            .engines()
            .iter()
            .map(|engine| {
                let cache = crate::vllm_metrics::CacheConfig {
                    block_size: engine.limits().block_size,
                    cache_dtype: cache_dtype.clone(),
                    prefix_caching: engine.limits().prefix_caching,
                };
                (engine.stats(), cache)
            })
            .collect();
        let adapters = model.engine.adapter_stats();
        let names = |ids: &[u32]| -> Vec<String> {
            ids.iter()
                .filter_map(|&id| model.adapters.name_of(id))
                .collect()
        };
        let lora = crate::vllm_metrics::LoraInfo {
            running: names(&adapters.running),
            waiting: names(&adapters.waiting),
            max_lora: model.adapters.max_loras(),
        };
        text.push_str(&state.metrics.vllm.render(&engines, &lora));
    }
    text
}
