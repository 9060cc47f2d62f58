//! The OpenAI request fields beyond sampling: `response_format` (structured output),
//! `logit_bias`, and the fields Lantern does not honour, refused by name unless at their
//! defaults.

use crate::http::error::ApiError;
use crate::http::generate::JsonWhitespace;
use crate::http::ranges::{in_range, Bounds};
use lantern_engine::constraint::Grammar;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};

/// OpenAI fields Lantern cannot honour yet. Their default values are accepted; any other is
/// refused with a 400 naming the field, never silently dropped. The schema states the
/// defaults, so API fuzzers know.
#[derive(Debug, Default, Deserialize, JsonSchema)]
pub struct Unsupported {
    /// Only `[]` (the deprecated form of `tools`).
    #[schemars(length(max = 0))]
    pub functions: Option<Vec<Value>>,
    /// Only `"none"` or `"auto"` (the deprecated form of `tool_choice`).
    #[schemars(extend("enum" = ["none", "auto", null]))]
    pub function_call: Option<Value>,
    /// Only `["text"]`.
    pub modalities: Option<Vec<TextModality>>,
}

/// `response_format`: free text, any JSON object, or JSON matching a schema (compact JSON).
/// (A struct rather than a tagged enum: serde would take `"type": 0` for the first variant.)
#[derive(Debug, Deserialize, JsonSchema)]
pub struct ResponseFormat {
    #[serde(rename = "type")]
    #[schemars(extend("enum" = ["text", "json_object", "json_schema"]))]
    pub kind: String,
    /// With `"type": "json_schema"`.
    pub json_schema: Option<JsonSchemaFormat>,
    /// With JSON: `compact` (default) or `flexible` whitespace between tokens (a Lantern
    /// extension).
    #[serde(default)]
    pub whitespace: Option<JsonWhitespace>,
}

/// OpenAI's `json_schema`: only `schema` matters here; the others are part of the documented
/// shape, accepted and not needed.
#[derive(Debug, Deserialize, JsonSchema)]
#[allow(dead_code)]
pub struct JsonSchemaFormat {
    pub name: Option<String>,
    pub description: Option<String>,
    /// The schema the output matches; absent: any JSON value.
    pub schema: Option<Value>,
    /// Accepted; the output always matches the schema.
    pub strict: Option<bool>,
}

impl ResponseFormat {
    pub(super) fn grammar(&self) -> Result<Option<Grammar>, ApiError> {
        let whitespace = self.whitespace.unwrap_or_default();
        match (self.kind.as_str(), &self.json_schema) {
            ("text", _) if self.whitespace.is_some() => Err(ApiError::validation(
                "`response_format.whitespace` applies to JSON formats, not text",
                "response_format",
            )),
            ("text", _) => Ok(None),
            ("json_object", _) => Ok(Some(whitespace.grammar(json!({"type": "object"})))),
            ("json_schema", Some(format)) => Ok(Some(
                whitespace.grammar(format.schema.clone().unwrap_or_else(|| json!({}))),
            )),
            ("json_schema", None) => Err(ApiError::validation(
                "`response_format.json_schema` is required with `\"type\": \"json_schema\"`",
                "response_format",
            )),
            (other, _) => Err(ApiError::validation(
                format!(
                    "`response_format.type` `{other}` is not one of text, json_object, json_schema"
                ),
                "response_format",
            )),
        }
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct TextModality(#[schemars(extend("const" = "text"))] pub String);

impl Unsupported {
    /// The first field set to something Lantern cannot honour, as a 400 naming it.
    pub(super) fn check(&self) -> Result<(), ApiError> {
        let refuse = |field: &str, what: &str| {
            Err(ApiError::validation(
                format!("`{field}` is not supported: {what}"),
                field,
            ))
        };
        let not_none = |choice: &Option<Value>| {
            choice
                .as_ref()
                .is_some_and(|c| c != "none" && c != "auto" && !c.is_null())
        };
        if self.functions.as_ref().is_some_and(|f| !f.is_empty()) {
            return refuse(
                "functions",
                "the deprecated form of tool calling: use `tools`",
            );
        }
        if not_none(&self.function_call) {
            return refuse(
                "function_call",
                "the deprecated form of tool calling: use `tool_choice`",
            );
        }
        if self
            .modalities
            .as_ref()
            .is_some_and(|m| m.iter().any(|m| m.0 != "text"))
        {
            return refuse("modalities", "text only");
        }
        Ok(())
    }
}

/// OpenAI's `logit_bias`: token ids (written as strings, JSON keys being strings) to a bias in
/// [-100, 100] added to that token's logit before sampling. -100 all but bans a token and 100
/// all but forces it.
#[derive(Debug, Default, Deserialize, JsonSchema)]
pub struct LogitBias(
    #[schemars(extend(
        "propertyNames" = {"pattern": "^[0-9]+$"},
        "additionalProperties" = {"type": "number", "minimum": -100, "maximum": 100}
    ))]
    pub std::collections::BTreeMap<String, f64>,
);

impl LogitBias {
    /// `(token, bias)` pairs, one per token; ids are checked against the vocabulary later,
    /// with the model at hand.
    pub(super) fn entries(&self) -> Result<Vec<(u32, f32)>, ApiError> {
        let mut entries = Vec::with_capacity(self.0.len());
        for (key, &bias) in &self.0 {
            let token = key.parse::<u32>().map_err(|_| {
                ApiError::validation(
                    format!("`logit_bias` keys are token ids (whole numbers >= 0 written as strings), got \"{key}\""),
                    "logit_bias",
                )
            })?;
            let bias = in_range(Some(bias), "logit_bias", Bounds::LOGIT_BIAS)?.unwrap_or(0.0);
            entries.push((token, bias));
        }
        entries.sort_unstable_by_key(|&(token, _)| token);
        if let Some(pair) = entries.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(ApiError::validation(
                format!("`logit_bias` names token {} twice", pair[0].0),
                "logit_bias",
            ));
        }
        Ok(entries)
    }
}
