//! Chat templates: the Jinja template a model ships (in `tokenizer_config.json`,
//! `chat_template.jinja` or GGUF `tokenizer.chat_template`) rendered with minijinja, with the
//! Python string methods, `raise_exception` and Python's `tojson` that Hugging Face templates
//! rely on. Tools and tool calls reach the template in transformers' shapes.

use crate::error::{ModelError, Result};
use crate::tool_calls::ToolSyntax;
use minijinja::{context, Environment, ErrorKind};
use serde::Serialize;
use serde_json::Value;

/// One turn of a conversation as templates expect it: `tool_calls` on an assistant turn that
/// called tools, `tool_call_id` and `name` on a `tool` turn that answers one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<TemplateToolCall>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A tool call as transformers hands it to templates:
/// `{"id", "type": "function", "function": {"name", "arguments"}}` with the arguments as an
/// object (templates write them with `tojson`), not OpenAI's JSON string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TemplateToolCall {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: TemplateFunction,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TemplateFunction {
    pub name: String,
    pub arguments: Value,
}

impl TemplateToolCall {
    pub fn function(id: &str, name: &str, arguments: Value) -> Self {
        Self {
            id: id.into(),
            kind: "function",
            function: TemplateFunction {
                name: name.into(),
                arguments,
            },
        }
    }
}

impl ChatMessage {
    pub fn new(role: &str, content: &str) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
            ..Self::default()
        }
    }

    /// An assistant turn that called tools (with whatever text came before the calls).
    pub fn tool_calls(content: &str, calls: Vec<TemplateToolCall>) -> Self {
        Self {
            tool_calls: calls,
            ..Self::new("assistant", content)
        }
    }

    /// The name of the tool that the call `id` of an earlier assistant turn in `history`
    /// called: what a tool result names when its API gives only the call's id.
    pub fn called_tool(history: &[ChatMessage], id: &str) -> Option<String> {
        history
            .iter()
            .flat_map(|past| &past.tool_calls)
            .find(|call| call.id == id)
            .map(|call| call.function.name.clone())
    }

    /// A `tool` turn: the result of the call `id` to the tool `name`.
    pub fn tool_result(id: Option<&str>, name: Option<&str>, content: &str) -> Self {
        Self {
            tool_call_id: id.map(Into::into),
            name: name.map(Into::into),
            ..Self::new("tool", content)
        }
    }
}

#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    tool_syntax: Option<ToolSyntax>,
}

const TEMPLATE_NAME: &str = "chat";

impl ChatTemplate {
    /// Parses `source`; a template that does not compile is refused here, at load, not per request.
    pub fn new(source: String, bos_token: String, eos_token: String) -> Result<Self> {
        let mut env = Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        // minijinja's own `tojson` escapes HTML characters and writes no spaces; templates
        // were written against Python's `json.dumps`.
        env.add_filter("tojson", python_tojson);
        let tool_syntax = ToolSyntax::of_template(&source);
        env.add_template_owned(TEMPLATE_NAME, source)
            .map_err(|e| ModelError::ChatTemplate(format!("does not compile: {e}")))?;
        Ok(Self {
            env,
            bos_token,
            eos_token,
            tool_syntax,
        })
    }

    /// How this template writes tool calls; `None` when it does not take tools.
    pub fn tool_syntax(&self) -> Option<ToolSyntax> {
        self.tool_syntax
    }

    /// Renders `messages`; with `add_generation_prompt` the text ends where the assistant's
    /// answer begins.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        self.render_with_tools(messages, &[], add_generation_prompt)
    }

    /// Renders `messages` with `tools` (each `{"type": "function", "function": {"name",
    /// "description", "parameters"}}`, as transformers passes them) offered to the model.
    pub fn render_with_tools(
        &self,
        messages: &[ChatMessage],
        tools: &[Value],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| ModelError::ChatTemplate(e.to_string()))?;
        let tools = (!tools.is_empty()).then_some(tools);
        template
            .render(context! {
                messages => messages,
                tools => tools,
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(|e| ModelError::ChatTemplate(e.to_string()))
    }
}

/// Python's `json.dumps(value, ensure_ascii=False)` (`", "` and `": "` between items), or with
/// `indent`, its indented form: what transformers' `tojson` writes.
fn python_tojson(
    value: minijinja::Value,
    indent: Option<usize>,
    kwargs: minijinja::value::Kwargs,
) -> std::result::Result<String, minijinja::Error> {
    // Other keywords (`sort_keys`, `ensure_ascii`) are rare in templates and left at the
    // defaults transformers uses.
    let indent = indent.or(kwargs.get::<Option<usize>>("indent")?);
    let failed =
        |e: serde_json::Error| minijinja::Error::new(ErrorKind::InvalidOperation, e.to_string());
    let mut out = Vec::new();
    match indent {
        Some(width) => {
            let spaces = vec![b' '; width];
            let formatter = serde_json::ser::PrettyFormatter::with_indent(&spaces);
            let mut serializer = serde_json::Serializer::with_formatter(&mut out, formatter);
            value.serialize(&mut serializer).map_err(failed)?;
        }
        None => {
            let mut serializer = serde_json::Serializer::with_formatter(&mut out, PythonSpacing);
            value.serialize(&mut serializer).map_err(failed)?;
        }
    }
    String::from_utf8(out)
        .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, e.to_string()))
}

/// `json.dumps`'s default separators.
struct PythonSpacing;

/// `", "` before every item but the first.
fn item_separator<W: ?Sized + std::io::Write>(writer: &mut W, first: bool) -> std::io::Result<()> {
    if first {
        Ok(())
    } else {
        writer.write_all(b", ")
    }
}

impl serde_json::ser::Formatter for PythonSpacing {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        item_separator(writer, first)
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        item_separator(writer, first)
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
    ) -> std::io::Result<()> {
        writer.write_all(b": ")
    }
}

/// The ChatML template written into dummy models (the format SmolLM2 and Qwen use).
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_renders_a_generation_prompt() -> Result<()> {
        let t = ChatTemplate::new(CHATML_TEMPLATE.into(), String::new(), "<|im_end|>".into())?;
        let text = t.render(
            &[ChatMessage::new("user", "What is the capital of France?")],
            true,
        )?;
        assert_eq!(
            text,
            "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
        );
        Ok(())
    }

    #[test]
    fn raise_exception_becomes_an_error_naming_the_cause() -> Result<()> {
        let t = ChatTemplate::new(
            "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first turn must be user') }}{% endif %}".into(),
            String::new(),
            String::new(),
        )?;
        let err = t.render(&[ChatMessage::new("assistant", "hi")], true).err();
        assert!(err.is_some_and(|e| e.to_string().contains("first turn must be user")));
        Ok(())
    }

    #[test]
    fn python_string_methods_work() -> Result<()> {
        let t = ChatTemplate::new(
            "{{ messages[0]['content'].strip().upper() }}".into(),
            String::new(),
            String::new(),
        )?;
        assert_eq!(t.render(&[ChatMessage::new("user", "  hi ")], false)?, "HI");
        Ok(())
    }

    #[test]
    fn tojson_writes_what_pythons_json_dumps_writes() -> Result<()> {
        // Expected strings from Python 3: json.dumps(v, ensure_ascii=False) and indent=2.
        let t = ChatTemplate::new(
            "{{ tools[0] | tojson }}|{{ tools[0] | tojson(indent=2) }}".into(),
            String::new(),
            String::new(),
        )?;
        let tool = serde_json::json!({"name": "météo", "args": [1, "<a&b>"], "empty": {}});
        let text = t.render_with_tools(&[], &[tool], false)?;
        assert_eq!(
            text,
            "{\"name\": \"météo\", \"args\": [1, \"<a&b>\"], \"empty\": {}}|{\n  \"name\": \"météo\",\n  \"args\": [\n    1,\n    \"<a&b>\"\n  ],\n  \"empty\": {}\n}"
        );
        Ok(())
    }

    #[test]
    fn a_broken_template_is_refused_at_load() {
        assert!(ChatTemplate::new("{% for %}".into(), String::new(), String::new()).is_err());
    }
}
