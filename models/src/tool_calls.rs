//! Tool calls in a model's own syntax: which syntax a chat template teaches, the calls found in
//! generated text (whole, or as it streams), and the grammar that holds an output to a valid
//! call of given tools.
//!
//! Three syntaxes cover the families Lantern serves:
//! - **Hermes** (Qwen 2.5 and 3, Hermes, many fine-tunes): each call is
//!   `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`, text may surround them.
//! - **Llama 3.1 JSON**: the whole answer is `{"name": ..., "parameters": {...}}`, after an
//!   optional `<|python_tag|>`.
//! - **Mistral**: `[TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...]`.
//!
//! Text that looks like the start of a call but does not parse stays text: nothing the model
//! wrote is dropped.

use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolSyntax {
    Hermes,
    Llama3Json,
    Mistral,
}

/// A tool the model may call: its name and the JSON schema of its arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    pub name: String,
    pub parameters: Value,
}

impl ToolSpec {
    /// The schema a call's arguments follow: the parameters, or any object when a tool gives
    /// none.
    pub fn arguments_schema(&self) -> Value {
        Self::schema_of(&self.parameters)
    }

    fn schema_of(parameters: &Value) -> Value {
        match parameters {
            Value::Object(_) => parameters.clone(),
            _ => json!({"type": "object"}),
        }
    }
}

/// A call the model made.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedCall {
    pub name: String,
    /// An object, as the model wrote it (a string holding JSON is read as that JSON).
    pub arguments: Value,
}

/// What a piece of output turned out to be.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    Text(String),
    Call(ParsedCall),
}

impl ToolSyntax {
    /// The syntax a chat template teaches, found by the markers it writes; `None` for a
    /// template that does not take tools.
    pub fn of_template(source: &str) -> Option<Self> {
        if source.contains("<tool_call>") {
            Some(Self::Hermes)
        } else if source.contains("[TOOL_CALLS]") {
            Some(Self::Mistral)
        } else if source.contains("<|python_tag|>") || source.contains("\"parameters\": dictionary")
        {
            Some(Self::Llama3Json)
        } else {
            None
        }
    }

    /// Where calls begin wherever they appear in the text.
    fn marker(self) -> &'static str {
        match self {
            Self::Hermes => "<tool_call>",
            Self::Mistral => "[TOOL_CALLS]",
            Self::Llama3Json => "<|python_tag|>",
        }
    }

    /// The character that begins calls written without the marker, when it is the first of
    /// the answer (the marker is a special token some tokenizers drop from text).
    fn bare_opening(self) -> Option<char> {
        match self {
            Self::Hermes => None,
            Self::Mistral => Some('['),
            Self::Llama3Json => Some('{'),
        }
    }

    /// The key this syntax writes the arguments under.
    fn arguments_key(self) -> &'static str {
        match self {
            Self::Llama3Json => "parameters",
            Self::Hermes | Self::Mistral => "arguments",
        }
    }

    /// `text` split into text and calls.
    pub fn parse(self, text: &str) -> Vec<Piece> {
        let mut stream = CallStream::new(self);
        let mut pieces = stream.push(text);
        pieces.extend(stream.finish());
        pieces
    }

    /// A Lark grammar (llguidance's dialect) whose every sentence is one call, or with
    /// `parallel` one or more, of the `tools` in this syntax, arguments matching each tool's
    /// schema in compact JSON.
    pub fn call_grammar(self, tools: &[ToolSpec], parallel: bool) -> String {
        let mut rules = Vec::new();
        let mut alternatives = Vec::new();
        for (i, tool) in tools.iter().enumerate() {
            let head = format!(
                "{{\"name\": {}, \"{}\": ",
                Value::String(tool.name.clone()),
                self.arguments_key()
            );
            alternatives.push(format!("{} args_{i} \"}}\"", lark_literal(&head)));
            rules.push(format!(
                "args_{i}: %json {}",
                compact_schema(&tool.parameters)
            ));
        }
        let call = format!("call: {}", alternatives.join(" | "));
        let start = match (self, parallel) {
            (Self::Hermes, false) => r#"start: "<tool_call>\n" call "\n</tool_call>""#,
            (Self::Hermes, true) => {
                r#"start: "<tool_call>\n" call "\n</tool_call>" ("\n<tool_call>\n" call "\n</tool_call>")*"#
            }
            // Llama 3.1 calls one tool per turn.
            (Self::Llama3Json, _) => "start: call",
            (Self::Mistral, false) => r#"start: "[TOOL_CALLS] [" call "]""#,
            (Self::Mistral, true) => r#"start: "[TOOL_CALLS] [" call (", " call)* "]""#,
        };
        let mut grammar = vec![start.to_string(), call];
        grammar.extend(rules);
        grammar.join("\n")
    }

    /// The calls in a stretch of text that began at a marker or a bare opening; `None` when
    /// it does not parse as calls of this syntax.
    fn calls_in(self, section: &str) -> Option<Vec<ParsedCall>> {
        let body = section
            .trim()
            .strip_prefix(self.marker())
            .unwrap_or(section.trim())
            .trim();
        match self {
            Self::Hermes => {
                let inner = body.strip_suffix("</tool_call>").unwrap_or(body);
                call_of(self, &serde_json::from_str(inner.trim()).ok()?).map(|c| vec![c])
            }
            Self::Mistral => match serde_json::from_str(body).ok()? {
                Value::Array(items) => items.iter().map(|v| call_of(self, v)).collect(),
                _ => None,
            },
            Self::Llama3Json => {
                // One object, or several separated by `;` (as Llama 3.2 writes parallel calls).
                body.split(';')
                    .map(|part| call_of(self, &serde_json::from_str(part.trim()).ok()?))
                    .collect()
            }
        }
    }
}

/// `{"name": ..., "arguments" or "parameters": ...}` as a call.
fn call_of(syntax: ToolSyntax, value: &Value) -> Option<ParsedCall> {
    let name = value.get("name")?.as_str()?.to_string();
    let arguments = value
        .get(syntax.arguments_key())
        .or_else(|| value.get("arguments"))
        .cloned()
        .unwrap_or_else(|| json!({}));
    let arguments = match arguments {
        Value::String(text) => serde_json::from_str(&text).ok()?,
        other => other,
    };
    arguments
        .is_object()
        .then_some(ParsedCall { name, arguments })
}

/// `text` as a Lark string literal (JSON's escapes, which llguidance's Lark reads).
fn lark_literal(text: &str) -> String {
    Value::String(text.to_string()).to_string()
}

/// A tool's parameter schema as a `%json` body, prepared like every output schema (objects
/// closed, JSON without free whitespace unless it chose).
fn compact_schema(parameters: &Value) -> Value {
    let schema = ToolSpec::schema_of(parameters);
    crate::output_schema::prepare_output_schema(&schema, crate::output_schema::Whitespace::Compact)
}

/// Tool calls found in text as it streams: text is passed on as soon as it cannot be the
/// beginning of a call; a call is passed on once it is complete.
#[derive(Debug)]
pub struct CallStream {
    syntax: ToolSyntax,
    /// Text not yet passed on.
    held: String,
    /// Inside a call section (after a marker or bare opening).
    in_call: bool,
    /// Any non-whitespace text seen yet (a bare opening counts only first).
    started: bool,
}

impl CallStream {
    pub fn new(syntax: ToolSyntax) -> Self {
        Self {
            syntax,
            held: String::new(),
            in_call: false,
            started: false,
        }
    }

    /// The pieces that `text`, appended to what came before, completes.
    pub fn push(&mut self, text: &str) -> Vec<Piece> {
        self.held.push_str(text);
        let mut pieces = Vec::new();
        loop {
            if self.in_call {
                // Hermes calls close one by one; the others run to the end of the answer.
                let closing = "</tool_call>";
                let Some(end) = (self.syntax == ToolSyntax::Hermes)
                    .then(|| self.held.find(closing))
                    .flatten()
                else {
                    return pieces;
                };
                let section: String = self.held.drain(..end + closing.len()).collect();
                pieces.extend(self.section(section));
                self.in_call = false;
                continue;
            }
            if !self.started {
                let trimmed = self.held.trim_start();
                if trimmed.is_empty() {
                    return pieces;
                }
                self.started = true;
                if self.syntax.bare_opening() == trimmed.chars().next() {
                    self.in_call = true;
                    continue;
                }
            }
            let marker = self.syntax.marker();
            if let Some(at) = self.held.find(marker) {
                let before: String = self.held.drain(..at).collect();
                push_text(&mut pieces, before);
                self.in_call = true;
                continue;
            }
            // Keep back a tail that may be the first part of a marker.
            let keep = (1..marker.len())
                .rev()
                .find(|&n| self.held.ends_with(&marker[..n]))
                .unwrap_or(0);
            let cut = self.held.len() - keep;
            let text: String = self.held.drain(..cut).collect();
            push_text(&mut pieces, text);
            return pieces;
        }
    }

    /// Whatever is left at the end of the answer.
    pub fn finish(&mut self) -> Vec<Piece> {
        let rest = std::mem::take(&mut self.held);
        if self.in_call {
            self.in_call = false;
            self.section(rest)
        } else {
            let mut pieces = Vec::new();
            push_text(&mut pieces, rest);
            pieces
        }
    }

    fn section(&self, section: String) -> Vec<Piece> {
        match self.syntax.calls_in(&section) {
            Some(calls) => calls.into_iter().map(Piece::Call).collect(),
            None => vec![Piece::Text(section)],
        }
    }
}

fn push_text(pieces: &mut Vec<Piece>, text: String) {
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
}

/// The text of `pieces` (calls left out) and the calls, in order.
pub fn split(pieces: Vec<Piece>) -> (String, Vec<ParsedCall>) {
    let mut text = String::new();
    let mut calls = Vec::new();
    for piece in pieces {
        match piece {
            Piece::Text(t) => text.push_str(&t),
            Piece::Call(c) => calls.push(c),
        }
    }
    (text, calls)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn call(name: &str, arguments: Value) -> Piece {
        Piece::Call(ParsedCall {
            name: name.into(),
            arguments,
        })
    }

    #[test]
    fn hermes_calls_are_found_between_text() {
        let text = "Let me check.\n<tool_call>\n{\"name\": \"weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"time\", \"arguments\": \"{\\\"tz\\\": \\\"CET\\\"}\"}\n</tool_call>";
        assert_eq!(
            ToolSyntax::Hermes.parse(text),
            vec![
                Piece::Text("Let me check.\n".into()),
                call("weather", json!({"city": "Paris"})),
                Piece::Text("\n".into()),
                call("time", json!({"tz": "CET"})),
            ]
        );
    }

    #[test]
    fn text_that_does_not_parse_as_a_call_stays_text() {
        for (syntax, text) in [
            (ToolSyntax::Hermes, "a <tool_call> not json </tool_call> b"),
            (ToolSyntax::Hermes, "unclosed <tool_call>{\"name\": 3}"),
            (ToolSyntax::Llama3Json, "{\"no_name\": 1}"),
            (
                ToolSyntax::Mistral,
                "[TOOL_CALLS] [{\"name\": \"f\", \"arguments\": [1]}]",
            ),
            (ToolSyntax::Mistral, "[1, 2]"),
        ] {
            let (out, calls) = split(syntax.parse(text));
            assert_eq!(out, text, "{syntax:?}");
            assert!(calls.is_empty());
        }
    }

    #[test]
    fn llama_and_mistral_calls_parse_with_or_without_their_marker() {
        let expected = vec![call("f", json!({"x": 1}))];
        assert_eq!(
            ToolSyntax::Llama3Json
                .parse("<|python_tag|>{\"name\": \"f\", \"parameters\": {\"x\": 1}}"),
            expected
        );
        assert_eq!(
            ToolSyntax::Llama3Json.parse(" {\"name\": \"f\", \"parameters\": {\"x\": 1}}"),
            expected
        );
        assert_eq!(
            ToolSyntax::Mistral
                .parse("[TOOL_CALLS] [{\"name\": \"f\", \"arguments\": {\"x\": 1}}]"),
            expected
        );
        assert_eq!(
            ToolSyntax::Mistral.parse("[{\"name\": \"f\", \"arguments\": {\"x\": 1}}]"),
            expected
        );
        // A brace later in an answer is text.
        let text = "Use {\"name\": \"f\", \"parameters\": {}}";
        assert_eq!(
            ToolSyntax::Llama3Json.parse(text),
            vec![Piece::Text(text.into())]
        );
    }

    #[test]
    fn syntax_is_read_from_the_template() {
        assert_eq!(
            ToolSyntax::of_template("{{ '<tool_call>' }}"),
            Some(ToolSyntax::Hermes)
        );
        assert_eq!(
            ToolSyntax::of_template("{{ '[TOOL_CALLS] ' }}"),
            Some(ToolSyntax::Mistral)
        );
        assert_eq!(
            ToolSyntax::of_template("{{ '<|python_tag|>' }}"),
            Some(ToolSyntax::Llama3Json)
        );
        assert_eq!(ToolSyntax::of_template("{{ messages }}"), None);
    }

    #[test]
    fn the_grammar_names_each_tool_and_its_schema() {
        let tools = [ToolSpec {
            name: "get \"weather\"".into(),
            parameters: json!({"type": "object", "properties": {"city": {"type": "string"}}}),
        }];
        let grammar = ToolSyntax::Hermes.call_grammar(&tools, false);
        assert!(
            grammar.starts_with(r#"start: "<tool_call>\n" call "\n</tool_call>""#),
            "{grammar}"
        );
        assert!(
            grammar.contains(
                r#"call: "{\"name\": \"get \\\"weather\\\"\", \"arguments\": " args_0 "}""#
            ),
            "{grammar}"
        );
        assert!(
            grammar.contains(r#""x-guidance":{"whitespace_flexible":false}"#),
            "{grammar}"
        );
    }

    proptest! {
        /// However the output is cut into stream pieces, the pieces join to what parsing the
        /// whole gives, and no text is lost.
        #[test]
        fn streaming_in_any_cuts_equals_parsing_whole(
            syntax in prop_oneof![Just(ToolSyntax::Hermes), Just(ToolSyntax::Llama3Json), Just(ToolSyntax::Mistral)],
            parts in proptest::collection::vec(prop_oneof![
                Just("Sure. ".to_string()),
                Just("<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": 1}}\n</tool_call>".to_string()),
                Just("[TOOL_CALLS] [{\"name\": \"g\", \"arguments\": {}}]".to_string()),
                Just("{\"name\": \"h\", \"parameters\": {\"b\": [2]}}".to_string()),
                Just("<tool".to_string()),
                Just(" [".to_string()),
                Just("é".to_string()),
            ], 0..6),
            cuts in proptest::collection::vec(0usize..200, 0..8),
        ) {
            let text: String = parts.concat();
            let whole = syntax.parse(&text);
            let mut bounds: Vec<usize> = cuts.into_iter().map(|c| c % (text.len() + 1)).filter(|&c| text.is_char_boundary(c)).collect();
            bounds.push(0);
            bounds.push(text.len());
            bounds.sort_unstable();
            let mut stream = CallStream::new(syntax);
            let mut pieces = Vec::new();
            for pair in bounds.windows(2) {
                pieces.extend(stream.push(&text[pair[0]..pair[1]]));
            }
            pieces.extend(stream.finish());
            prop_assert_eq!(split(pieces), split(whole.clone()));
            // Nothing lost: with no call found, the text is the input.
            let (out, calls) = split(whole);
            if calls.is_empty() {
                prop_assert_eq!(out, text);
            }
        }
    }
}
