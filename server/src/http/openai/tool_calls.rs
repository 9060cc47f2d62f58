//! OpenAI's tool calling fields: `tools`, `tool_choice`, `parallel_tool_calls`, and the
//! messages that carry calls back (`assistant` with `tool_calls`, `tool` with `tool_call_id`).

use super::Content;
use crate::http::error::ApiError;
use crate::http::tools::{is_tool_name, past_arguments, ToolChoice, Tools};
use lantern_models::{ChatMessage, TemplateToolCall};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

/// One tool: a function the model may call.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct Tool {
    #[serde(rename = "type")]
    #[schemars(extend("enum" = ["function"]))]
    pub kind: String,
    pub function: FunctionDefinition,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct FunctionDefinition {
    /// Letters, digits, `_`, `.` and `-`, at most 64.
    #[schemars(extend("pattern" = "^[a-zA-Z0-9_.-]{1,64}$"))]
    pub name: String,
    pub description: Option<String>,
    /// The JSON schema of the arguments; absent: any object.
    pub parameters: Option<serde_json::Map<String, Value>>,
    /// Accepted; with `tool_choice` `required` or a named function the arguments always match
    /// the schema.
    #[allow(dead_code)]
    pub strict: Option<bool>,
}

/// `tool_choice`: `"none"`, `"auto"`, `"required"`, or `{"type": "function", "function":
/// {"name"}}`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ToolChoiceField {
    Mode(#[schemars(extend("enum" = ["none", "auto", "required"]))] String),
    Function(NamedTool),
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct NamedTool {
    #[serde(rename = "type")]
    #[schemars(extend("enum" = ["function"]))]
    pub kind: String,
    pub function: NamedFunction,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct NamedFunction {
    pub name: String,
}

/// A call in a past assistant message, as the client received it.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct MessageToolCall {
    pub id: String,
    #[serde(rename = "type")]
    #[schemars(extend("enum" = ["function"]))]
    pub kind: String,
    pub function: CalledFunction,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct CalledFunction {
    pub name: String,
    /// The arguments as a JSON string.
    pub arguments: String,
}

/// A chat message: `content` may be null on an assistant turn with `tool_calls`; a `tool`
/// turn answers the call `tool_call_id`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct Message {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
    pub tool_calls: Option<Vec<MessageToolCall>>,
    pub tool_call_id: Option<String>,
    /// The tool's name on a `tool` turn (found from `tool_call_id` when absent).
    pub name: Option<String>,
}

/// The request's tools, validated (an empty list or `tool_choice: "none"` offers none).
pub fn tools(
    tools: Option<&[Tool]>,
    choice: Option<&ToolChoiceField>,
    parallel: Option<bool>,
) -> Result<Tools, ApiError> {
    let tools = tools.unwrap_or_default();
    let mut specs = Vec::new();
    for (i, tool) in tools.iter().enumerate() {
        if tool.kind != "function" {
            return Err(ApiError::validation(
                format!("`tools[{i}].type` must be \"function\""),
                "tools",
            ));
        }
        let f = &tool.function;
        if !is_tool_name(&f.name, b"_.-") {
            return Err(ApiError::validation(
                format!(
                    "`tools[{i}].function.name` must be 1 to 64 letters, digits, `_`, `.` or `-`"
                ),
                "tools",
            ));
        }
        let parameters = f.parameters.clone().map(Value::Object);
        specs.push((f.name.clone(), f.description.clone(), parameters));
    }
    let choice = match choice {
        // OpenAI's default: `auto` with tools, `none` without.
        None => ToolChoice::Auto,
        Some(ToolChoiceField::Mode(mode)) => match mode.as_str() {
            "none" => ToolChoice::None,
            "auto" => ToolChoice::Auto,
            "required" => ToolChoice::Required,
            other => {
                return Err(ApiError::validation(
                    format!("`tool_choice` `{other}` is not one of none, auto, required"),
                    "tool_choice",
                ))
            }
        },
        Some(ToolChoiceField::Function(named)) if named.kind == "function" => {
            ToolChoice::Named(named.function.name.clone())
        }
        Some(ToolChoiceField::Function(_)) => {
            return Err(ApiError::validation(
                "`tool_choice.type` must be \"function\"",
                "tool_choice",
            ))
        }
    };
    Tools::new(
        specs,
        choice,
        parallel.unwrap_or(true),
        "tools",
        "tool_choice",
    )
}

/// The conversation as the chat template takes it.
pub fn chat_messages(messages: &[Message]) -> Result<Vec<ChatMessage>, ApiError> {
    let mut out: Vec<ChatMessage> = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let content = match &m.content {
            Some(content) => content.text()?,
            None => String::new(),
        };
        let message = match m.role.as_str() {
            "tool" | "function" => {
                let name = m
                    .name
                    .clone()
                    .or_else(|| ChatMessage::called_tool(&out, m.tool_call_id.as_deref()?));
                ChatMessage::tool_result(m.tool_call_id.as_deref(), name.as_deref(), &content)
            }
            _ => match &m.tool_calls {
                Some(calls) if !calls.is_empty() => {
                    let calls = calls
                        .iter()
                        .enumerate()
                        .map(|(j, call)| {
                            if call.kind != "function" {
                                return Err(ApiError::validation(
                                    format!(
                                        "`messages[{i}].tool_calls[{j}].type` must be \"function\""
                                    ),
                                    "messages",
                                ));
                            }
                            Ok(TemplateToolCall::function(
                                &call.id,
                                &call.function.name,
                                past_arguments(&call.function.arguments),
                            ))
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    ChatMessage {
                        role: m.role.clone(),
                        ..ChatMessage::tool_calls(&content, calls)
                    }
                }
                _ => ChatMessage::new(&m.role, &content),
            },
        };
        out.push(message);
    }
    Ok(out)
}
