//! Adding and removing LoRA adapters at run time, in the two shapes clients send:
//!
//! - AWS's container standard for SageMaker adapter inference components (PyPI
//!   `model-hosting-container-standards`, `sagemaker/lora`): `POST /adapters` with
//!   `{"name", "src", "preload", "pin"}` and `DELETE /adapters/{adapter_name}`, answering
//!   its messages (`Adapter <alias> registered`, ...) with the alias header's name when
//!   given; 400 for a malformed request, 424 for an adapter that cannot be served.
//! - vLLM's `POST /v1/load_lora_adapter` `{"lora_name", "lora_path"}` and
//!   `POST /v1/unload_lora_adapter` `{"lora_name"}`, errors in OpenAI's shape.
//!
//! plus `GET /adapters`, a listing. Sources are local directories under the adapter roots;
//! unregistering waits for the adapter's running requests to finish.

use super::body::json_body;
use super::error::{ApiError, Flavor};
use super::generate::off_the_runtime;
use super::sagemaker::ADAPTER_ALIAS_HEADER;
use super::state::AppState;
use crate::adapters::RegistryError;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use lantern_models::lora::source::SourceError;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;

/// SageMaker's registration (the container standard's `SageMakerRegisterLoRAAdapterRequest`).
#[derive(Debug, Deserialize, JsonSchema)]
pub struct RegisterAdapterRequest {
    /// The name requests will use (the adapter inference component's).
    pub name: String,
    /// A local directory holding `adapter_config.json` and `adapter_model.safetensors`,
    /// under one of the adapter roots.
    pub src: String,
    /// Load it into the model now rather than at its first request.
    #[serde(default = "yes")]
    pub preload: bool,
    /// Never unload it to make room for another.
    #[serde(default)]
    pub pin: bool,
}

fn yes() -> bool {
    true
}

/// vLLM's `/v1/load_lora_adapter` body.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct LoadLoraAdapterRequest {
    pub lora_name: String,
    pub lora_path: String,
}

/// vLLM's `/v1/unload_lora_adapter` body.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct UnloadLoraAdapterRequest {
    pub lora_name: String,
}

fn refused(error: RegistryError) -> ApiError {
    let message = error.to_string();
    match error {
        RegistryError::Invalid(_) | RegistryError::Source(SourceError::Remote(_)) => {
            ApiError::validation(message, "src")
        }
        RegistryError::Exists(_) => ApiError::Conflict(message),
        RegistryError::Source(SourceError::OutsideRoots { .. }) => ApiError::Forbidden(message),
        RegistryError::Source(SourceError::Missing(_)) | RegistryError::Bad { .. } => {
            ApiError::BadAdapter(message)
        }
        RegistryError::NotFound(_) => ApiError::NotFound(message),
    }
}

/// Registers `name` from `src` (checked whole against the model, off the async runtime)
/// and, with `preload`, loads it into every engine; nothing stays registered if either
/// fails.
async fn register(
    state: &AppState,
    name: String,
    src: String,
    preload: bool,
    pin: bool,
) -> Result<(), ApiError> {
    let model = state.model()?;
    let registry = model.adapters.clone();
    let (n, s) = (name.clone(), src.clone());
    let adapter = off_the_runtime(move || registry.register(&n, &s, pin, false))
        .await
        .map_err(ApiError::Generation)?
        .map_err(refused)?;
    if preload {
        if let Err(error) = model.engine.load_adapter(&adapter).await {
            model.adapters.forget(&name);
            model.engine.unload_adapter(adapter.id);
            return Err(ApiError::BadAdapter(error));
        }
    }
    Ok(())
}

/// Unregisters `name` once its requests are done, then frees it in every engine.
async fn unregister(state: &AppState, name: &str) -> Result<(), ApiError> {
    let model = state.model()?;
    let adapter = model.adapters.unregister(name).await.map_err(refused)?;
    model.engine.unload_adapter(adapter.id);
    Ok(())
}

fn alias(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(ADAPTER_ALIAS_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .unwrap_or(name)
        .to_string()
}

/// `POST /adapters`.
pub async fn register_sagemaker(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let outcome = async {
        let request: RegisterAdapterRequest = json_body(body, state.config.max_payload_bytes)?;
        let alias = alias(&headers, &request.name);
        register(
            &state,
            request.name,
            request.src,
            request.preload,
            request.pin,
        )
        .await?;
        Ok::<_, ApiError>(format!("Adapter {alias} registered"))
    };
    match outcome.await {
        Ok(message) => message.into_response(),
        Err(error) => sagemaker_error(error),
    }
}

/// `DELETE /adapters/{adapter_name}`.
pub async fn unregister_sagemaker(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    let alias = alias(&headers, &name);
    match unregister(&state, &name).await {
        Ok(()) => format!("Adapter {alias} unregistered").into_response(),
        Err(ApiError::NotFound(_)) => sagemaker_error(ApiError::NotFound(format!(
            "The adapter {alias} was not found"
        ))),
        Err(error) => sagemaker_error(error),
    }
}

/// The container standard answers a malformed request with 400 (TGI's shape would say 422).
fn sagemaker_error(error: ApiError) -> Response {
    match error {
        ApiError::Validation { .. } => error.into_response_as(Flavor::OpenAi),
        other => other.into_response_as(Flavor::Tgi),
    }
}

/// `GET /adapters`: every registered adapter, whether it is loaded, and its requests in
/// flight.
pub async fn list(State(state): State<AppState>) -> Response {
    let model = match state.model() {
        Ok(model) => model,
        Err(error) => return error.into_response(),
    };
    let loaded = model.engine.adapter_stats().loaded;
    let adapters: Vec<_> = model
        .adapters
        .list()
        .into_iter()
        .map(|listed| {
            json!({
                "name": listed.adapter.name,
                "src": listed.src,
                "rank": listed.rank,
                "pinned": listed.adapter.pinned,
                "loaded": loaded.contains(&listed.adapter.id),
                "requests_in_flight": listed.in_flight,
            })
        })
        .collect();
    Json(json!({
        "adapters": adapters,
        "max_loras": model.adapters.max_loras(),
        "roots": model.adapters.roots(),
    }))
    .into_response()
}

/// vLLM's `POST /v1/load_lora_adapter` (loads at once, like vLLM).
pub async fn load_vllm(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let outcome = async {
        let request: LoadLoraAdapterRequest = json_body(body, state.config.max_payload_bytes)?;
        let name = request.lora_name;
        register(&state, name.clone(), request.lora_path, true, false).await?;
        Ok::<_, ApiError>(format!(
            "Success: LoRA adapter '{name}' added successfully."
        ))
    };
    match outcome.await {
        Ok(message) => message.into_response(),
        Err(error) => error.into_response_as(Flavor::OpenAi),
    }
}

/// vLLM's `POST /v1/unload_lora_adapter`.
pub async fn unload_vllm(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let outcome = async {
        let request: UnloadLoraAdapterRequest = json_body(body, state.config.max_payload_bytes)?;
        let name = request.lora_name;
        unregister(&state, &name).await?;
        Ok::<_, ApiError>(format!(
            "Success: LoRA adapter '{name}' removed successfully."
        ))
    };
    match outcome.await {
        Ok(message) => message.into_response(),
        Err(error) => error.into_response_as(Flavor::OpenAi),
    }
}
