//! `GET /openapi.json`: the API described from the very types the handlers deserialize
//! (schemars derives their JSON schemas), and the paths from the router's own route table
//! (`routes.rs`), so the document cannot drift from the code.

use super::adapters::{LoadLoraAdapterRequest, RegisterAdapterRequest, UnloadLoraAdapterRequest};
use super::bedrock::MessagesRequest;
use super::openai::{ChatRequest, CompletionRequest};
use super::routes::{operations, Answers, BodySchema};
use super::tgi::{TgiRequest, TokenizeRequest};
use axum::Json;
use schemars::generate::SchemaSettings;
use serde_json::{json, Map, Value};

pub fn document() -> Value {
    // OpenAPI 3.1 schemas are JSON Schema 2020-12: numeric `exclusiveMinimum` (a `top_p` in
    // (0, 1]), `null` as a type.
    let mut settings = SchemaSettings::draft2020_12();
    settings.definitions_path = "/components/schemas".into();
    settings.meta_schema = None;
    let mut generator = settings.into_generator();
    let schemas = [
        ("tgi", generator.subschema_for::<TgiRequest>()),
        ("tokenize", generator.subschema_for::<TokenizeRequest>()),
        ("chat", generator.subschema_for::<ChatRequest>()),
        ("completion", generator.subschema_for::<CompletionRequest>()),
        ("messages", generator.subschema_for::<MessagesRequest>()),
        (
            "register_adapter",
            generator.subschema_for::<RegisterAdapterRequest>(),
        ),
        (
            "load_lora",
            generator.subschema_for::<LoadLoraAdapterRequest>(),
        ),
        (
            "unload_lora",
            generator.subschema_for::<UnloadLoraAdapterRequest>(),
        ),
    ];
    let schema = |name: &str| -> Value {
        schemas
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(Value::Null, |(_, s)| s.as_value().clone())
    };
    let body_schema = |body: BodySchema| match body {
        BodySchema::Tgi => schema("tgi"),
        BodySchema::Tokenize => schema("tokenize"),
        BodySchema::Chat => schema("chat"),
        BodySchema::Completion => schema("completion"),
        // anyOf, not oneOf: a Bedrock body is also a valid chat body; the server tells them
        // apart by their fields (`inputs`, `anthropic_version` + `messages`, `messages`,
        // `prompt`).
        BodySchema::Invocations => json!({"anyOf": [
            schema("tgi"), schema("chat"), schema("completion"), schema("messages"),
        ]}),
        BodySchema::RegisterAdapter => schema("register_adapter"),
        BodySchema::LoadLoraAdapter => schema("load_lora"),
        BodySchema::UnloadLoraAdapter => schema("unload_lora"),
    };
    let error = json!({"description": "Error: TGI shape {\"error\", \"error_type\"}; on /v1, OpenAI's {\"error\": {\"message\", \"type\", \"param\", \"code\"}}"});
    let mut paths = Map::new();
    let not_found = json!({"description": "Not found (TGI's error shape)"});
    for op in operations() {
        let responses = match op.answers {
            Answers::Json => json!({
                "200": {"description": "Success"},
                "413": error, "415": error, "422": error, "400": error, "429": error, "503": error,
            }),
            Answers::File(media_type) => json!({
                "200": {"description": "The file", "content": {media_type: {"schema": {"type": "string"}}}},
                "404": not_found,
            }),
            Answers::RedirectToPage => json!({
                "303": {"description": "To the chat page, /ui"},
                "404": not_found,
            }),
            Answers::AdapterMessage => json!({
                "200": {"description": "Done: a text message (`Adapter <name> registered`, ...)"},
                "400": error, "403": error, "404": error, "408": error, "409": error,
                "413": error, "415": error, "424": error, "503": error,
            }),
        };
        let mut operation = json!({"summary": op.summary, "responses": responses});
        // Path parameters: `{name}` segments.
        let parameters: Vec<Value> = op
            .path
            .split('/')
            .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        if !parameters.is_empty() {
            operation["parameters"] = Value::Array(parameters);
        }
        if let Some(body) = op.body {
            let schema = body_schema(body);
            operation["requestBody"] =
                json!({"required": true, "content": {"application/json": {"schema": schema}}});
        }
        let item = paths
            .entry(op.path.to_string())
            .or_insert_with(|| json!({}));
        item[op.verb.name()] = operation;
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Lantern", "version": env!("CARGO_PKG_VERSION"), "description": "LLM inference server: SageMaker, TGI, OpenAI and Bedrock APIs"},
        "paths": paths,
        "components": {"schemas": generator.take_definitions(true)},
    })
}

pub async fn openapi_json() -> Json<Value> {
    Json(document())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_described_and_request_schemas_resolve() {
        let doc = document();
        for route in [
            "/",
            "/ping",
            "/invocations",
            "/generate",
            "/v1/chat/completions",
            "/v1/completions",
            "/tokenize",
        ] {
            assert!(doc["paths"][route].is_object(), "{route} missing");
        }
        let schemas = doc["components"]["schemas"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        for name in [
            "TgiRequest",
            "TgiParameters",
            "ChatRequest",
            "MessagesRequest",
            "CompletionRequest",
        ] {
            assert!(
                schemas.contains_key(name),
                "{name} missing from {:?}",
                schemas.keys().collect::<Vec<_>>()
            );
        }
        // Fields come from the handler types themselves.
        let tgi_params = &schemas["TgiParameters"]["properties"];
        assert!(tgi_params["max_new_tokens"].is_object() && tgi_params["ignore_eos"].is_object());
    }
}
