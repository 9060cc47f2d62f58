//! The request and stream formats `lantern benchmark` speaks: what body each API takes and
//! how its streamed events say "a chunk of output arrived", "this many tokens were generated"
//! and "something failed". Only translation; the timing lives in `client.rs`.

use clap::ValueEnum;
use serde::Deserialize;
use serde_json::{json, Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Api {
    /// `POST /v1/chat/completions`, streamed, usage asked for with `stream_options`.
    OpenaiChat,
    /// `POST /v1/completions`, streamed (vLLM, llama.cpp's llama-server, TGI's Messages API).
    OpenaiCompletions,
    /// TGI's `POST /generate_stream` with `{"inputs", "parameters"}`.
    Tgi,
    /// The SageMaker container contract: `POST /invocations` with a TGI payload and
    /// `"stream": true` (a container run locally, or a gateway that forwards to one).
    Sagemaker,
}

/// One chat message of a prompt.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// What a request asks the model to continue.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    Text(String),
    Chat(Vec<Message>),
}

impl Prompt {
    /// The prompt as one text, for APIs that take no messages: `role: content` lines and an
    /// open `assistant:` turn.
    fn as_text(&self) -> String {
        match self {
            Prompt::Text(text) => text.clone(),
            Prompt::Chat(messages) => {
                let mut text: String = messages
                    .iter()
                    .map(|m| format!("{}: {}\n", m.role, m.content))
                    .collect();
                text.push_str("assistant:");
                text
            }
        }
    }
}

/// Sampling settings shared by every request of a run.
#[derive(Debug, Clone)]
pub struct Generation {
    pub model: String,
    pub temperature: f64,
    /// Ask the server to ignore end-of-sequence tokens, so every request produces exactly its
    /// `max_tokens` (vLLM, llama.cpp, Lantern and TGI's `/generate` know `ignore_eos`).
    pub ignore_eos: bool,
    /// Merged into every body last, for server-specific parameters.
    pub extra_body: Map<String, Value>,
    /// Requests name the model their work item names, if any (off for a compared server
    /// given its own `--compare-model`).
    pub per_request_models: bool,
}

/// What one streamed event says.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct StreamEvent {
    /// A piece of output (possibly empty for TGI, which sends one event per token even when
    /// the token's text is not yet printable); `None` for events that carry no output.
    pub output: Option<String>,
    pub usage_output_tokens: Option<u64>,
    pub usage_input_tokens: Option<u64>,
    /// The server reported an error inside the stream.
    pub error: Option<String>,
    /// `[DONE]`: nothing more follows.
    pub done: bool,
}

impl Api {
    pub fn path(self) -> &'static str {
        match self {
            Api::OpenaiChat => "/v1/chat/completions",
            Api::OpenaiCompletions => "/v1/completions",
            Api::Tgi => "/generate_stream",
            Api::Sagemaker => "/invocations",
        }
    }

    /// A request's body. `model` (the work item's, when it names one) is OpenAI's `model`,
    /// or TGI's `parameters.adapter_id`.
    pub fn body(
        self,
        prompt: &Prompt,
        max_tokens: Option<u32>,
        model: Option<&str>,
        settings: &Generation,
    ) -> Value {
        let named = model.filter(|_| settings.per_request_models);
        let mut body = match self {
            Api::OpenaiChat | Api::OpenaiCompletions => {
                let mut body = json!({
                    "model": named.unwrap_or(&settings.model),
                    "stream": true,
                    "stream_options": {"include_usage": true},
                    "temperature": settings.temperature,
                });
                match (self, prompt) {
                    (Api::OpenaiChat, Prompt::Chat(messages)) => {
                        body["messages"] = json!(messages);
                    }
                    (Api::OpenaiChat, Prompt::Text(text)) => {
                        body["messages"] = json!([{"role": "user", "content": text}]);
                    }
                    _ => body["prompt"] = json!(prompt.as_text()),
                }
                if let Some(max) = max_tokens {
                    body["max_tokens"] = json!(max);
                }
                if settings.ignore_eos {
                    body["ignore_eos"] = json!(true);
                }
                body
            }
            Api::Tgi | Api::Sagemaker => {
                // TGI rejects temperature 0: greedy is `do_sample: false`.
                let mut parameters =
                    json!({"details": true, "do_sample": settings.temperature > 0.0});
                if settings.temperature > 0.0 {
                    parameters["temperature"] = json!(settings.temperature);
                }
                if let Some(max) = max_tokens {
                    parameters["max_new_tokens"] = json!(max);
                }
                if settings.ignore_eos {
                    parameters["ignore_eos"] = json!(true);
                }
                if let Some(adapter) = named {
                    parameters["adapter_id"] = json!(adapter);
                }
                let mut body = json!({"inputs": prompt.as_text(), "parameters": parameters});
                if self == Api::Sagemaker {
                    body["stream"] = json!(true);
                }
                body
            }
        };
        if let Value::Object(fields) = &mut body {
            for (key, value) in &settings.extra_body {
                fields.insert(key.clone(), value.clone());
            }
        }
        body
    }

    /// Reads one event's `data`. Unparseable data is an error of the stream, not a crash.
    pub fn parse_event(self, data: &str) -> StreamEvent {
        let data = data.trim();
        if data == "[DONE]" {
            return StreamEvent {
                done: true,
                ..StreamEvent::default()
            };
        }
        let value: Value = match serde_json::from_str(data) {
            Ok(value) => value,
            Err(e) => {
                return StreamEvent {
                    error: Some(format!("unreadable event ({e}): {}", clip(data))),
                    ..StreamEvent::default()
                }
            }
        };
        if let Some(error) = value.get("error").filter(|e| !e.is_null()) {
            let message = error
                .get("message")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| clip(&error.to_string()));
            return StreamEvent {
                error: Some(message),
                ..StreamEvent::default()
            };
        }
        match self {
            Api::OpenaiChat | Api::OpenaiCompletions => openai_event(self, &value),
            Api::Tgi | Api::Sagemaker => tgi_event(&value),
        }
    }
}

fn openai_event(api: Api, value: &Value) -> StreamEvent {
    let choices = value.get("choices").and_then(Value::as_array);
    let text: String = choices
        .into_iter()
        .flatten()
        .filter_map(|choice| match api {
            Api::OpenaiChat => choice.pointer("/delta/content"),
            _ => choice.get("text"),
        })
        .filter_map(Value::as_str)
        .collect();
    let usage = value.get("usage").filter(|u| !u.is_null());
    StreamEvent {
        // Role-only and empty chunks carry no output (vLLM's benchmark skips them too).
        output: (!text.is_empty()).then_some(text),
        usage_output_tokens: usage.and_then(|u| u.get("completion_tokens")?.as_u64()),
        usage_input_tokens: usage.and_then(|u| u.get("prompt_tokens")?.as_u64()),
        ..StreamEvent::default()
    }
}

fn tgi_event(value: &Value) -> StreamEvent {
    let token = value.get("token").filter(|t| !t.is_null());
    StreamEvent {
        output: token.map(|t| {
            t.get("text")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        }),
        usage_output_tokens: value
            .pointer("/details/generated_tokens")
            .and_then(Value::as_u64),
        ..StreamEvent::default()
    }
}

pub fn clip(text: &str) -> String {
    const MAX: usize = 300;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Generation {
        Generation {
            model: "m".into(),
            temperature: 0.0,
            ignore_eos: true,
            extra_body: Map::new(),
            per_request_models: true,
        }
    }

    #[test]
    fn bodies_follow_each_api() {
        let prompt = Prompt::Text("hi".into());
        let chat = Api::OpenaiChat.body(&prompt, Some(5), None, &settings());
        assert_eq!(chat["messages"][0]["content"], "hi");
        assert_eq!(chat["max_tokens"], 5);
        assert_eq!(chat["stream_options"]["include_usage"], true);
        let completions = Api::OpenaiCompletions.body(&prompt, None, None, &settings());
        assert_eq!(completions["prompt"], "hi");
        assert!(completions.get("max_tokens").is_none());
        let tgi = Api::Tgi.body(&prompt, Some(7), None, &settings());
        assert_eq!(tgi["parameters"]["max_new_tokens"], 7);
        assert_eq!(tgi["parameters"]["do_sample"], false);
        assert!(tgi.get("stream").is_none());
        assert_eq!(
            Api::Sagemaker.body(&prompt, Some(7), None, &settings())["stream"],
            true
        );
        let mut extra = settings();
        extra.extra_body.insert("top_k".into(), json!(3));
        assert_eq!(
            Api::OpenaiCompletions.body(&prompt, None, None, &extra)["top_k"],
            3
        );
        // A request naming its own model (an adapter): OpenAI's `model`, TGI's `adapter_id`;
        // not for a server given one model for all its requests.
        let named = Api::OpenaiCompletions.body(&prompt, None, Some("tone"), &settings());
        assert_eq!(named["model"], "tone");
        let named = Api::Tgi.body(&prompt, None, Some("tone"), &settings());
        assert_eq!(named["parameters"]["adapter_id"], "tone");
        let fixed = Generation {
            per_request_models: false,
            ..settings()
        };
        assert_eq!(
            Api::OpenaiChat.body(&prompt, None, Some("tone"), &fixed)["model"],
            "m"
        );
    }

    #[test]
    fn events_are_read_per_api() {
        let chunk = Api::OpenaiCompletions
            .parse_event(r#"{"choices":[{"index":0,"text":" Paris"}],"usage":null}"#);
        assert_eq!(chunk.output.as_deref(), Some(" Paris"));
        let usage = Api::OpenaiChat.parse_event(
            r#"{"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":4,"total_tokens":13}}"#,
        );
        assert_eq!(usage.output, None);
        assert_eq!(
            (usage.usage_input_tokens, usage.usage_output_tokens),
            (Some(9), Some(4))
        );
        let role_only =
            Api::OpenaiChat.parse_event(r#"{"choices":[{"delta":{"role":"assistant"}}]}"#);
        assert_eq!(role_only.output, None);
        let token =
            Api::Tgi.parse_event(r#"{"token":{"id":1,"text":"","special":false},"details":null}"#);
        assert_eq!(token.output.as_deref(), Some(""));
        let last = Api::Sagemaker
            .parse_event(r#"{"token":{"id":2,"text":"x"},"details":{"generated_tokens":12}}"#);
        assert_eq!(last.usage_output_tokens, Some(12));
        assert!(Api::Tgi.parse_event("[DONE]").done);
        assert!(Api::Tgi
            .parse_event(r#"{"error":"boom","error_type":"x"}"#)
            .error
            .is_some());
        assert!(Api::OpenaiChat.parse_event("{not json").error.is_some());
    }
}
