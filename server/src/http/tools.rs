//! Tool calling, shared by OpenAI chat and Bedrock Messages: the tools a request offers, how
//! the model must choose among them, the grammar that forces a call, and the calls found in
//! the answer (in the syntax the model's chat template teaches).

use super::error::ApiError;
use super::state::ServingModel;
use lantern_engine::constraint::Grammar;
use lantern_models::tool_calls::{split, CallStream, Piece};
use lantern_models::{ParsedCall, ToolSpec, ToolSyntax};
use serde_json::{json, Value};

/// How the model must use the tools (OpenAI's `tool_choice`, Anthropic's `tool_choice.type`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    /// No call: the tools are left out of the prompt.
    None,
    /// The model decides; its calls are read from its answer.
    Auto,
    /// At least one call, of any of the tools: the answer is held to the call syntax.
    Required,
    /// One call of this tool.
    Named(String),
}

/// The tools of one request, validated.
#[derive(Debug, Clone)]
pub struct Tools {
    /// Each tool as chat templates take it (transformers' shape:
    /// `{"type": "function", "function": {"name", "description", "parameters"}}`).
    pub offered: Vec<Value>,
    pub specs: Vec<ToolSpec>,
    pub choice: ToolChoice,
    /// More than one call per answer allowed.
    pub parallel: bool,
}

impl Tools {
    /// Tools from their names, descriptions and parameter schemas; `field` names the list in
    /// errors (`tools`), `choice_field` the choice (`tool_choice`).
    pub fn new(
        tools: Vec<(String, Option<String>, Option<Value>)>,
        choice: ToolChoice,
        parallel: bool,
        field: &'static str,
        choice_field: &'static str,
    ) -> Result<Self, ApiError> {
        let mut offered = Vec::new();
        let mut specs: Vec<ToolSpec> = Vec::new();
        for (name, description, parameters) in tools {
            if specs.iter().any(|s| s.name == name) {
                return Err(ApiError::validation(
                    format!("`{field}` names the tool `{name}` twice"),
                    field,
                ));
            }
            let parameters = parameters.unwrap_or_else(|| json!({"type": "object"}));
            let mut function = json!({"name": name});
            if let Some(description) = description {
                function["description"] = json!(description);
            }
            function["parameters"] = parameters.clone();
            offered.push(json!({"type": "function", "function": function}));
            specs.push(ToolSpec { name, parameters });
        }
        match &choice {
            ToolChoice::Named(name) if !specs.iter().any(|s| &s.name == name) => {
                return Err(ApiError::validation(
                    format!("`{choice_field}` names `{name}`, which is not among `{field}`"),
                    choice_field,
                ))
            }
            ToolChoice::Required | ToolChoice::Named(_) if specs.is_empty() => {
                return Err(ApiError::validation(
                    format!("`{choice_field}` asks for a tool call but `{field}` is empty"),
                    choice_field,
                ))
            }
            _ => {}
        }
        Ok(Self {
            offered,
            specs,
            choice,
            parallel,
        })
    }

    /// The tools go into the prompt and calls are read from the answer (`auto` with no tools
    /// offers none).
    pub fn active(&self) -> bool {
        !self.specs.is_empty() && self.choice != ToolChoice::None
    }

    /// The tools as the prompt gets them: none when the choice is `none`.
    pub fn for_prompt(&self) -> Vec<Value> {
        if self.active() {
            self.offered.clone()
        } else {
            Vec::new()
        }
    }

    /// How `model` writes calls; an error naming `field` when its chat template takes no
    /// tools (they would be silently dropped from the prompt).
    pub fn syntax(
        &self,
        model: &ServingModel,
        field: &'static str,
    ) -> Result<Option<ToolSyntax>, ApiError> {
        if !self.active() {
            return Ok(None);
        }
        match model
            .tokenizer
            .chat_template
            .as_ref()
            .and_then(|t| t.tool_syntax())
        {
            Some(syntax) => Ok(Some(syntax)),
            None => Err(ApiError::validation(
                format!(
                    "`{field}`: the chat template of `{}` does not take tools (no tool-call syntax in it)",
                    model.name
                ),
                field,
            )),
        }
    }

    /// The grammar a `required` or named choice holds the answer to.
    pub fn grammar(&self, syntax: ToolSyntax) -> Option<Grammar> {
        let specs: Vec<ToolSpec> = match &self.choice {
            ToolChoice::None | ToolChoice::Auto => return None,
            ToolChoice::Required => self.specs.clone(),
            ToolChoice::Named(name) => self
                .specs
                .iter()
                .filter(|s| &s.name == name)
                .cloned()
                .collect(),
        };
        let parallel = self.parallel && matches!(self.choice, ToolChoice::Required);
        Some(Grammar::Lark {
            grammar: syntax.call_grammar(&specs, parallel),
            json_schemas: specs.iter().map(ToolSpec::arguments_schema).collect(),
        })
    }
}

/// A tool name as the APIs allow it: 1 to 64 ASCII letters, digits and the `punctuation`
/// each API admits.
pub fn is_tool_name(name: &str, punctuation: &[u8]) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || punctuation.contains(&b))
}

/// A call with the id the response gives it.
#[derive(Debug, Clone)]
pub struct IdentifiedCall {
    pub id: String,
    pub call: ParsedCall,
}

impl IdentifiedCall {
    pub fn new(call: ParsedCall, prefix: &str) -> Self {
        Self {
            id: super::ids::fresh_id(prefix),
            call,
        }
    }

    /// The arguments as OpenAI sends them: a JSON string.
    pub fn arguments_json(&self) -> String {
        self.call.arguments.to_string()
    }
}

/// An answer's text and the calls in it. With calls, the text around them is trimmed (the
/// syntaxes put line breaks between calls).
pub fn answer_parts(syntax: ToolSyntax, text: &str, prefix: &str) -> (String, Vec<IdentifiedCall>) {
    let (text, calls) = split(syntax.parse(text));
    if calls.is_empty() {
        return (text, Vec::new());
    }
    let calls = calls
        .into_iter()
        .map(|c| IdentifiedCall::new(c, prefix))
        .collect();
    (text.trim().to_string(), calls)
}

/// One choice's streamed answer split into text and calls as tokens arrive.
#[derive(Debug)]
pub struct StreamedCalls {
    stream: CallStream,
    prefix: &'static str,
    /// Calls passed on so far.
    pub calls: usize,
}

/// A piece of a streamed answer.
pub enum StreamedPiece {
    Text(String),
    /// The call and its position among the answer's calls.
    Call(usize, IdentifiedCall),
}

impl StreamedCalls {
    pub fn new(syntax: ToolSyntax, prefix: &'static str) -> Self {
        Self {
            stream: CallStream::new(syntax),
            prefix,
            calls: 0,
        }
    }

    pub fn push(&mut self, text: &str) -> Vec<StreamedPiece> {
        let pieces = self.stream.push(text);
        self.identify(pieces)
    }

    pub fn finish(&mut self) -> Vec<StreamedPiece> {
        let pieces = self.stream.finish();
        self.identify(pieces)
    }

    fn identify(&mut self, pieces: Vec<Piece>) -> Vec<StreamedPiece> {
        let mut out = Vec::new();
        for piece in pieces {
            match piece {
                // Line breaks between calls are the syntax's, not the answer's text.
                Piece::Text(text) if self.calls > 0 && text.trim().is_empty() => {}
                Piece::Text(text) => out.push(StreamedPiece::Text(text)),
                Piece::Call(call) => {
                    out.push(StreamedPiece::Call(
                        self.calls,
                        IdentifiedCall::new(call, self.prefix),
                    ));
                    self.calls += 1;
                }
            }
        }
        out
    }
}

/// Arguments a client sent back in a past call: OpenAI's JSON string as the object templates
/// expect, or the string itself when it is not JSON (templates then write it quoted).
pub fn past_arguments(arguments: &str) -> Value {
    serde_json::from_str(arguments)
        .ok()
        .filter(Value::is_object)
        .unwrap_or_else(|| Value::String(arguments.to_string()))
}
