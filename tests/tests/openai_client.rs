//! The OpenAI Python client's tool round trip against the real binary: a call forced with
//! `tool_choice: "required"`, the `tool` message with its result sent back, the answer; and
//! the same call streamed as tool-call deltas. The arguments must parse and validate against
//! the function's parameter schema (the jsonschema crate). The client runs from the venv
//! `.ci/run` makes (`openai` pinned there); without it the test says SKIPPED.

use lantern_tests::{ci_python_with, json, tiny_server};
use serde_json::{json as value, Value};
use std::process::Command;

const CLIENT: &str = r#"
import json, sys
from openai import OpenAI
client = OpenAI(base_url=sys.argv[1] + "/v1", api_key="not-needed")
tools = json.loads(sys.argv[2])
messages = [{"role": "user", "content": "What is the weather in Paris?"}]
ask = dict(model="tiny", tools=tools, parallel_tool_calls=False, max_tokens=240, temperature=0)
first = client.chat.completions.create(messages=messages, tool_choice="required", **ask)
message = first.choices[0].message
calls = [{"id": c.id, "name": c.function.name, "arguments": c.function.arguments} for c in message.tool_calls or []]
messages.append(message.model_dump(exclude_none=True))
for call in message.tool_calls or []:
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 degrees"})
second = client.chat.completions.create(messages=messages, **dict(ask, max_tokens=8))
streamed = {}
finish = None
for chunk in client.chat.completions.create(messages=messages[:1], tool_choice="required", stream=True, **ask):
    for choice in chunk.choices:
        finish = choice.finish_reason or finish
        for delta in choice.delta.tool_calls or []:
            call = streamed.setdefault(delta.index, {"name": "", "arguments": ""})
            call["name"] += delta.function.name or ""
            call["arguments"] += delta.function.arguments or ""
print(json.dumps({
    "finish_reason": first.choices[0].finish_reason,
    "calls": calls,
    "second_finish_reason": second.choices[0].finish_reason,
    "second_prompt_tokens": second.usage.prompt_tokens,
    "first_tokens": first.usage.prompt_tokens + first.usage.completion_tokens,
    "streamed": [streamed[i] for i in sorted(streamed)],
    "streamed_finish_reason": finish,
}))
"#;

fn tools() -> Value {
    value!([
        {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
         "parameters": {"type": "object", "properties": {
             "city": {"type": "string", "maxLength": 6},
             "unit": {"enum": ["celsius", "fahrenheit"]},
             "days": {"type": "integer", "minimum": 1, "maximum": 7}},
          "required": ["city", "unit", "days"], "additionalProperties": false}}}
    ])
}

#[test]
fn openai_client_tool_round_trip() {
    let Some(python) = ci_python_with("openai") else {
        return;
    };
    let (_model, server) = tiny_server("qwen2", 5, &[], &[]);
    let tools = tools();
    let output = Command::new(&python)
        .args(["-c", CLIENT, &server.base, &tools.to_string()])
        .output()
        .unwrap_or_else(|e| panic!("running the client: {e}"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the client failed: {stderr}");
    let got = json(&String::from_utf8_lossy(&output.stdout));
    assert_eq!(got["finish_reason"], "tool_calls", "{got}");
    let calls = got["calls"].as_array().cloned().unwrap_or_default();
    assert_eq!(calls.len(), 1, "{got}");
    let schema = &tools[0]["function"]["parameters"];
    let validator = jsonschema::validator_for(schema).unwrap_or_else(|e| panic!("{e}"));
    for call in &calls {
        assert_eq!(call["name"], "get_weather", "{got}");
        assert!(
            call["id"].as_str().is_some_and(|id| !id.is_empty()),
            "{got}"
        );
        let arguments: Value = serde_json::from_str(call["arguments"].as_str().unwrap_or(""))
            .unwrap_or_else(|e| panic!("arguments are not JSON ({e}): {got}"));
        assert!(
            validator.is_valid(&arguments),
            "{arguments} does not match {schema}"
        );
    }
    // The answer to the tool result: the call and the result were in its prompt.
    assert!(got["second_finish_reason"].is_string(), "{got}");
    assert!(
        got["second_prompt_tokens"].as_u64() > got["first_tokens"].as_u64(),
        "{got}"
    );
    // Streamed, greedy: the same call, assembled from deltas by the client's own types.
    assert_eq!(got["streamed_finish_reason"], "tool_calls", "{got}");
    let streamed: Vec<Value> = got["streamed"].as_array().cloned().unwrap_or_default();
    let collected: Vec<Value> = calls
        .iter()
        .map(|c| value!({"name": c["name"], "arguments": c["arguments"]}))
        .collect();
    assert_eq!(streamed, collected, "{got}");
}
