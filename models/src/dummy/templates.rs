//! The dummy models' chat templates: each family's layout, tools included, so that tool
//! calling is tested with tools really in the prompt. Written for the dummy tokenizer, whose
//! only special tokens are ChatML's: Llama's and Mistral's headers and brackets are plain
//! text there, and `eos_token` (`<|im_end|>`) ends every turn where the families write their
//! own end-of-turn token.

use crate::config::Architecture;

/// Qwen 2.5 / Qwen 3 style: ChatML, tools listed in the system turn inside `<tools>`, calls as
/// Hermes `<tool_call>` JSON, results as `<tool_response>` in a user turn.
const QWEN: &str = r#"{%- if tools %}
{{- '<|im_start|>system\n' }}
{%- if messages[0].role == 'system' %}{{- messages[0].content + '\n\n' }}{%- endif %}
{{- '# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>' }}
{%- for tool in tools %}{{- '\n' + (tool | tojson) }}{%- endfor %}
{{- '\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n' }}
{%- elif messages[0].role == 'system' %}
{{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
{%- endif %}
{%- for message in messages %}
{%- if message.role == 'system' and loop.first %}
{%- elif message.role == 'tool' %}
{%- if loop.first or loop.previtem.role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}
{{- '\n<tool_response>\n' + message.content + '\n</tool_response>' }}
{%- if loop.last or loop.nextitem.role != 'tool' %}{{- '<|im_end|>\n' }}{%- endif %}
{%- elif message.role == 'assistant' and message.tool_calls is defined %}
{{- '<|im_start|>assistant' }}
{%- if message.content %}{{- '\n' + message.content }}{%- endif %}
{%- for call in message.tool_calls %}
{{- '\n<tool_call>\n{"name": ' + (call.function.name | tojson) + ', "arguments": ' + (call.function.arguments | tojson) + '}\n</tool_call>' }}
{%- endfor %}
{{- '<|im_end|>\n' }}
{%- else %}
{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"#;

/// Llama 3.1 style: header-delimited turns, tools in the first user turn with the instruction
/// to answer `{"name": ..., "parameters": ...}`, results in `ipython` turns.
const LLAMA: &str = r#"{{- bos_token + '<|start_header_id|>system<|end_header_id|>\n\n' }}
{%- if tools %}{{- 'Environment: ipython\n\n' }}{%- endif %}
{%- if messages[0].role == 'system' %}{{- messages[0].content }}{%- endif %}
{{- eos_token }}
{%- set ns = namespace(tools_written=false) %}
{%- for message in messages %}
{%- if message.role == 'system' and loop.first %}
{%- elif message.role == 'user' %}
{{- '<|start_header_id|>user<|end_header_id|>\n\n' }}
{%- if tools and not ns.tools_written %}
{{- 'Given the following functions, please respond with a JSON for a function call with its proper arguments that best answers the given prompt.\n\n' }}
{{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}. Do not use variables.\n\n' }}
{%- for tool in tools %}{{- (tool | tojson(indent=4)) + '\n\n' }}{%- endfor %}
{%- set ns.tools_written = true %}
{%- endif %}
{{- message.content + eos_token }}
{%- elif message.role == 'assistant' and message.tool_calls is defined %}
{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- for call in message.tool_calls %}
{%- if not loop.first %}{{- '; ' }}{%- endif %}
{{- '{"name": ' + (call.function.name | tojson) + ', "parameters": ' + (call.function.arguments | tojson) + '}' }}
{%- endfor %}
{{- eos_token }}
{%- elif message.role == 'tool' %}
{{- '<|start_header_id|>ipython<|end_header_id|>\n\n' + message.content + eos_token }}
{%- else %}
{{- '<|start_header_id|>' + message.role + '<|end_header_id|>\n\n' + message.content + eos_token }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif %}"#;

/// Mistral (v3 tokenizer) style: `[INST]` turns, the tools in `[AVAILABLE_TOOLS]` before the
/// last user turn (which also carries the system text), calls after `[TOOL_CALLS]`, results in
/// `[TOOL_RESULTS]`.
const MISTRAL: &str = r#"{%- set ns = namespace(last_user=-1, system='') %}
{%- for message in messages %}
{%- if message.role == 'user' %}{%- set ns.last_user = loop.index0 %}
{%- elif message.role == 'system' %}{%- set ns.system = message.content %}{%- endif %}
{%- endfor %}
{{- bos_token }}
{%- for message in messages %}
{%- if message.role == 'user' %}
{%- if tools and loop.index0 == ns.last_user %}{{- '[AVAILABLE_TOOLS] ' + (tools | tojson) + '[/AVAILABLE_TOOLS]' }}{%- endif %}
{%- if ns.system and loop.index0 == ns.last_user %}{{- '[INST] ' + ns.system + '\n\n' + message.content + '[/INST]' }}
{%- else %}{{- '[INST] ' + message.content + '[/INST]' }}{%- endif %}
{%- elif message.role == 'assistant' and message.tool_calls is defined %}
{{- '[TOOL_CALLS] [' }}
{%- for call in message.tool_calls %}
{%- if not loop.first %}{{- ', ' }}{%- endif %}
{{- '{"name": ' + (call.function.name | tojson) + ', "arguments": ' + (call.function.arguments | tojson) + '}' }}
{%- endfor %}
{{- ']' + eos_token }}
{%- elif message.role == 'assistant' %}{{- ' ' + message.content + eos_token }}
{%- elif message.role == 'tool' %}{{- '[TOOL_RESULTS] {"content": ' + (message.content | tojson) + '}[/TOOL_RESULTS]' }}
{%- endif %}
{%- endfor %}"#;

/// Phi-3 style: `<|system|>`, `<|user|>`, `<|assistant|>` turns each closed by `<|end|>`
/// (Phi-3's template takes no tools).
const PHI3: &str = r#"{{- bos_token }}
{%- for message in messages %}
{{- '<|' + message.role + '|>\n' + message.content + '<|end|>\n' }}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|assistant|>\n' }}{%- else %}{{- eos_token }}{%- endif %}"#;

/// Gemma style: `<start_of_turn>user` / `<start_of_turn>model` turns closed by
/// `<end_of_turn>`, a system message folded into the first user turn (Gemma takes no tools).
const GEMMA: &str = r#"{{- bos_token }}
{%- set ns = namespace(system='') %}
{%- for message in messages %}
{%- if message.role == 'system' %}{%- set ns.system = message.content + '\n\n' %}
{%- else %}
{%- set role = 'model' if message.role == 'assistant' else message.role %}
{{- '<start_of_turn>' + role + '\n' + ns.system + message.content | trim + '<end_of_turn>\n' }}
{%- set ns.system = '' %}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<start_of_turn>model\n' }}{%- endif %}"#;

/// The chat template written into a dummy model of `architecture`.
pub fn chat_template(architecture: Architecture) -> &'static str {
    match architecture {
        Architecture::Qwen2 | Architecture::Qwen3 => QWEN,
        Architecture::Llama => LLAMA,
        Architecture::Mistral => MISTRAL,
        Architecture::Phi3 => PHI3,
        Architecture::Gemma2 | Architecture::Gemma3 => GEMMA,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::{ChatMessage, ChatTemplate, TemplateToolCall};
    use crate::tool_calls::{split, ParsedCall, ToolSyntax};
    use serde_json::json;

    fn template(architecture: Architecture) -> ChatTemplate {
        ChatTemplate::new(
            chat_template(architecture).into(),
            "<|im_start|>".into(),
            "<|im_end|>".into(),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn weather_tool() -> serde_json::Value {
        json!({"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
               "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}})
    }

    #[test]
    fn qwen_renders_chatml_and_tools_like_qwen() {
        let t = template(Architecture::Qwen2);
        let plain = t
            .render(&[ChatMessage::new("user", "Hi")], true)
            .unwrap_or_default();
        assert_eq!(
            plain,
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        let call = TemplateToolCall::function("call_1", "get_weather", json!({"city": "Paris"}));
        let messages = [
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "Weather in Paris?"),
            ChatMessage::tool_calls("", vec![call]),
            ChatMessage::tool_result(Some("call_1"), Some("get_weather"), "sunny"),
        ];
        let text = t
            .render_with_tools(&messages, &[weather_tool()], true)
            .unwrap_or_else(|e| panic!("{e}"));
        let expected = concat!(
            "<|im_start|>system\nBe brief.\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n",
            "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n",
            "{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"description\": \"Weather in a city\", \"parameters\": {\"type\": \"object\", \"properties\": {\"city\": {\"type\": \"string\"}}, \"required\": [\"city\"]}}}\n",
            "</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n",
            "<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n",
            "<|im_start|>user\nWeather in Paris?<|im_end|>\n",
            "<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call><|im_end|>\n",
            "<|im_start|>user\n<tool_response>\nsunny\n</tool_response><|im_end|>\n",
            "<|im_start|>assistant\n",
        );
        assert_eq!(text, expected);
    }

    /// Each family's template writes a past call in the syntax it teaches, and that syntax's
    /// parser reads the same call back: template and parser agree.
    #[test]
    fn every_template_writes_calls_its_parser_reads_back() {
        let without = [
            Architecture::Phi3,
            Architecture::Gemma2,
            Architecture::Gemma3,
        ];
        let with_tools = Architecture::ALL
            .into_iter()
            .filter(|a| !without.contains(a));
        for architecture in without {
            assert_eq!(template(architecture).tool_syntax(), None);
        }
        for architecture in with_tools {
            let t = template(architecture);
            let syntax = t
                .tool_syntax()
                .unwrap_or_else(|| panic!("{architecture:?} takes no tools"));
            let calls = vec![
                TemplateToolCall::function("a", "get_weather", json!({"city": "Paris \"15e\""})),
                TemplateToolCall::function("b", "get_time", json!({"zone": "CET", "n": [1, 2]})),
            ];
            let before = [ChatMessage::new("user", "Weather?")];
            let mut after = before.to_vec();
            after.push(ChatMessage::tool_calls("", calls));
            let prompt = t
                .render_with_tools(&before, &[weather_tool()], false)
                .unwrap_or_default();
            let full = t
                .render_with_tools(&after, &[weather_tool()], false)
                .unwrap_or_default();
            assert!(
                prompt.contains("get_weather"),
                "{architecture:?}: tools in the prompt: {prompt}"
            );
            let written = full
                .strip_prefix(prompt.as_str())
                .unwrap_or_else(|| panic!("{architecture:?}: {full}"));
            let written = written
                .trim_start_matches("<|start_header_id|>assistant<|end_header_id|>\n\n")
                .trim_start_matches("<|im_start|>assistant")
                .trim_end_matches('\n')
                .trim_end_matches("<|im_end|>");
            let (_, parsed) = split(syntax.parse(written));
            let expected = [
                ParsedCall {
                    name: "get_weather".into(),
                    arguments: json!({"city": "Paris \"15e\""}),
                },
                ParsedCall {
                    name: "get_time".into(),
                    arguments: json!({"zone": "CET", "n": [1, 2]}),
                },
            ];
            assert_eq!(parsed, expected, "{architecture:?}: {written}");
        }
        assert_eq!(
            template(Architecture::Qwen3).tool_syntax(),
            Some(ToolSyntax::Hermes)
        );
        assert_eq!(
            template(Architecture::Llama).tool_syntax(),
            Some(ToolSyntax::Llama3Json)
        );
        assert_eq!(
            template(Architecture::Mistral).tool_syntax(),
            Some(ToolSyntax::Mistral)
        );
    }
}
