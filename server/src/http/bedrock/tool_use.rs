//! Anthropic's tool use in Bedrock Messages bodies: `tools` with `input_schema`, `tool_choice`
//! (`auto`, `any`, `tool`, `none`), `tool_use` blocks from the assistant and `tool_result`
//! blocks from the user.

use crate::http::error::ApiError;
use crate::http::tools::{is_tool_name, ToolChoice, Tools};
use lantern_models::{ChatMessage, TemplateToolCall};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Deserialize, JsonSchema)]
pub struct Tool {
    #[schemars(extend("pattern" = "^[a-zA-Z0-9_-]{1,64}$"))]
    pub name: String,
    pub description: Option<String>,
    /// The JSON schema of the tool's input.
    pub input_schema: serde_json::Map<String, Value>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ToolChoiceField {
    #[serde(rename = "type")]
    #[schemars(extend("enum" = ["auto", "any", "tool", "none"]))]
    pub kind: String,
    /// With `"type": "tool"`.
    pub name: Option<String>,
    #[serde(default)]
    pub disable_parallel_tool_use: bool,
}

/// A message's content: a string, or blocks.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Blocks(Vec<Block>),
}

/// A content block: `text`, `tool_use` (`id`, `name`, `input`) or `tool_result`
/// (`tool_use_id`, `content`).
#[derive(Debug, Deserialize, JsonSchema)]
pub struct Block {
    #[serde(rename = "type")]
    #[schemars(extend("enum" = ["text", "tool_use", "tool_result"]))]
    pub kind: String,
    #[serde(default)]
    pub text: String,
    pub id: Option<String>,
    pub name: Option<String>,
    pub input: Option<serde_json::Map<String, Value>>,
    pub tool_use_id: Option<String>,
    pub content: Option<ResultContent>,
    #[serde(default)]
    pub is_error: bool,
}

/// A tool result: a string or text blocks.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ResultContent {
    Text(String),
    Blocks(Vec<TextBlock>),
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct TextBlock {
    #[serde(rename = "type")]
    #[schemars(extend("enum" = ["text"]))]
    pub kind: String,
    #[serde(default)]
    pub text: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct Message {
    #[schemars(extend("enum" = ["user", "assistant"]))]
    pub role: String,
    pub content: MessageContent,
}

/// The request's tools, validated.
pub fn tools(tools: Option<&[Tool]>, choice: Option<&ToolChoiceField>) -> Result<Tools, ApiError> {
    let tools = tools.unwrap_or_default();
    let mut specs = Vec::new();
    for (i, tool) in tools.iter().enumerate() {
        if !is_tool_name(&tool.name, b"_-") {
            return Err(ApiError::validation(
                format!("`tools[{i}].name` must be 1 to 64 letters, digits, `_` or `-`"),
                "tools",
            ));
        }
        let schema = Value::Object(tool.input_schema.clone());
        specs.push((tool.name.clone(), tool.description.clone(), Some(schema)));
    }
    let (choice, parallel) = match choice {
        None => (ToolChoice::Auto, true),
        Some(c) => {
            let choice = match (c.kind.as_str(), &c.name) {
                ("auto", _) => ToolChoice::Auto,
                ("any", _) => ToolChoice::Required,
                ("none", _) => ToolChoice::None,
                ("tool", Some(name)) => ToolChoice::Named(name.clone()),
                ("tool", None) => {
                    return Err(ApiError::validation(
                        "`tool_choice.name` is required with `\"type\": \"tool\"`",
                        "tool_choice",
                    ))
                }
                (other, _) => {
                    return Err(ApiError::validation(
                        format!("`tool_choice.type` `{other}` is not one of auto, any, tool, none"),
                        "tool_choice",
                    ))
                }
            };
            (choice, !c.disable_parallel_tool_use)
        }
    };
    Tools::new(specs, choice, parallel, "tools", "tool_choice")
}

/// The conversation as the chat template takes it: each `tool_result` block becomes a `tool`
/// turn, `tool_use` blocks the assistant turn's calls.
pub fn chat_messages(
    system: Option<String>,
    messages: &[Message],
) -> Result<Vec<ChatMessage>, ApiError> {
    let mut out: Vec<ChatMessage> = Vec::new();
    if let Some(system) = system {
        out.push(ChatMessage::new("system", &system));
    }
    for (i, m) in messages.iter().enumerate() {
        let blocks = match &m.content {
            MessageContent::Text(text) => {
                out.push(ChatMessage::new(&m.role, text));
                continue;
            }
            MessageContent::Blocks(blocks) => blocks,
        };
        let mut text = String::new();
        let mut calls = Vec::new();
        let mut results = 0;
        for (j, block) in blocks.iter().enumerate() {
            let missing = |field: &str| {
                ApiError::validation(
                    format!(
                        "`messages[{i}].content[{j}].{field}` is required on a `{}` block",
                        block.kind
                    ),
                    "messages",
                )
            };
            match block.kind.as_str() {
                "text" => text.push_str(&block.text),
                "tool_use" => {
                    let id = block.id.as_deref().ok_or_else(|| missing("id"))?;
                    let name = block.name.as_deref().ok_or_else(|| missing("name"))?;
                    let input = Value::Object(block.input.clone().unwrap_or_default());
                    calls.push(TemplateToolCall::function(id, name, input));
                }
                "tool_result" => {
                    let id = block.tool_use_id.as_deref().ok_or_else(|| missing("tool_use_id"))?;
                    let name = ChatMessage::called_tool(&out, id);
                    let mut content = match &block.content {
                        None => String::new(),
                        Some(ResultContent::Text(text)) => text.clone(),
                        Some(ResultContent::Blocks(parts)) => {
                            if let Some(part) = parts.iter().find(|p| p.kind != "text") {
                                return Err(ApiError::validation(
                                    format!("`messages[{i}].content[{j}].content` holds a `{}` block: text only", part.kind),
                                    "messages",
                                ));
                            }
                            parts.iter().map(|p| p.text.as_str()).collect()
                        }
                    };
                    if block.is_error {
                        content = format!("Error: {content}");
                    }
                    out.push(ChatMessage::tool_result(Some(id), name.as_deref(), &content));
                    results += 1;
                }
                other => {
                    return Err(ApiError::validation(
                        format!("`messages[{i}].content[{j}].type` `{other}` is not one of text, tool_use, tool_result"),
                        "messages",
                    ))
                }
            }
        }
        if !calls.is_empty() {
            out.push(ChatMessage {
                role: m.role.clone(),
                ..ChatMessage::tool_calls(&text, calls)
            });
        } else if !text.is_empty() || results == 0 {
            out.push(ChatMessage::new(&m.role, &text));
        }
    }
    Ok(out)
}
