//! Tool calling through the router on dummy models of each family, whose chat templates take
//! tools in their family's layout: forced calls (`required`, a named tool) always parse and
//! their arguments validate against the tool's schema (the jsonschema crate is the oracle),
//! greedy and sampled, streamed and not; results go back in; the errors name their field.

mod common;

use axum::http::StatusCode;
use common::{app_for, events, post};
use lantern_models::Architecture;
use serde_json::{json, Value};

/// Two tools whose arguments are bounded (short strings, enums, integers in a range), so a
/// random model's call fits in `MAX_TOKENS`. Their schemas say nothing of other keys: the
/// server closes them, so calls end.
fn tools() -> Value {
    json!([
        {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
         "parameters": {"type": "object", "properties": {
             "city": {"type": "string", "maxLength": 6},
             "unit": {"enum": ["celsius", "fahrenheit"]}},
          "required": ["city", "unit"]}}},
        {"type": "function", "function": {"name": "get_time", "description": "Time in a zone",
         "parameters": {"type": "object", "properties": {
             "zone": {"enum": ["UTC", "CET"]},
             "offset": {"type": "integer", "minimum": -12, "maximum": 12}},
          "required": ["zone", "offset"]}}}
    ])
}

const MAX_TOKENS: usize = 240;

fn schema_of(name: &str) -> Value {
    tools()
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["function"]["name"] == name)
        .map_or(Value::Null, |t| t["function"]["parameters"].clone())
}

/// A call (`{"name", "arguments"}` with the arguments as OpenAI's JSON string) is of one of
/// the tools and its arguments validate.
fn assert_valid_call(function: &Value, context: &str) {
    let name = function["name"].as_str().unwrap_or_default();
    let schema = schema_of(name);
    assert!(!schema.is_null(), "{context}: unknown tool {name}");
    let arguments: Value = serde_json::from_str(function["arguments"].as_str().unwrap_or(""))
        .unwrap_or_else(|e| panic!("{context}: arguments are not JSON ({e}): {function}"));
    let validator = jsonschema::validator_for(&schema).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        validator.is_valid(&arguments),
        "{context}: {arguments} does not match {schema}"
    );
}

fn chat(tool_choice: Value, extra: Value) -> Value {
    let mut body = json!({
        "messages": [{"role": "system", "content": "You call tools."},
                     {"role": "user", "content": "What is the weather in Paris?"}],
        "tools": tools(), "tool_choice": tool_choice, "parallel_tool_calls": false,
        "max_tokens": MAX_TOKENS,
    });
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    body
}

/// The calls of a streamed chat answer, assembled from its tool-call deltas the way OpenAI
/// clients do, and its finish reason.
fn streamed_calls(text: &str) -> (Vec<Value>, Value) {
    let mut calls: Vec<Value> = Vec::new();
    let mut finish = Value::Null;
    for event in events(text) {
        let Some(choice) = event["choices"].get(0) else {
            continue;
        };
        if !choice["finish_reason"].is_null() {
            finish = choice["finish_reason"].clone();
        }
        for delta in choice["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let index = delta["index"].as_u64().unwrap_or(0) as usize;
            if calls.len() <= index {
                calls.resize(index + 1, json!({"name": "", "arguments": ""}));
            }
            let call = &mut calls[index];
            if let Some(name) = delta["function"]["name"].as_str() {
                call["name"] = json!(format!("{}{name}", call["name"].as_str().unwrap_or("")));
            }
            if let Some(arguments) = delta["function"]["arguments"].as_str() {
                call["arguments"] = json!(format!(
                    "{}{arguments}",
                    call["arguments"].as_str().unwrap_or("")
                ));
            }
        }
    }
    (calls, finish)
}

#[tokio::test]
async fn required_and_named_calls_parse_and_validate_in_every_family() {
    for architecture in [
        Architecture::Qwen2,
        Architecture::Llama,
        Architecture::Mistral,
    ] {
        let (_model, app) = app_for(architecture, &[]);
        let cases = [
            (json!("required"), json!({"temperature": 0})),
            (json!("required"), json!({"temperature": 1.0, "seed": 1})),
            (json!("required"), json!({"temperature": 1.0, "seed": 2})),
            (
                json!({"type": "function", "function": {"name": "get_time"}}),
                json!({"temperature": 1.0, "seed": 3}),
            ),
        ];
        for (choice, extra) in cases {
            let context = format!("{architecture:?} {choice} {extra}");
            let answer = post(
                &app,
                "/v1/chat/completions",
                chat(choice.clone(), extra.clone()),
            )
            .await;
            assert_eq!(answer.status, StatusCode::OK, "{context}: {}", answer.body);
            let choice0 = &answer.body["choices"][0];
            assert_eq!(
                choice0["finish_reason"], "tool_calls",
                "{context}: {}",
                answer.body
            );
            let calls = choice0["message"]["tool_calls"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            assert_eq!(
                calls.len(),
                1,
                "{context}: parallel_tool_calls is false: {}",
                answer.body
            );
            for call in &calls {
                assert_eq!(call["type"], "function");
                assert!(call["id"]
                    .as_str()
                    .is_some_and(|id| id.starts_with("call_")));
                assert_valid_call(&call["function"], &context);
            }
            if choice["type"] == "function" {
                assert_eq!(calls[0]["function"]["name"], "get_time", "{context}");
            }
            // Streamed, the same request (same seed) gives the same call as tool-call deltas.
            let mut streamed = chat(choice, extra);
            streamed["stream"] = json!(true);
            let stream = post(&app, "/v1/chat/completions", streamed).await;
            assert_eq!(stream.status, StatusCode::OK, "{context}");
            let (deltas, finish) = streamed_calls(&stream.text);
            assert_eq!(finish, "tool_calls", "{context}: {}", stream.text);
            let collected: Vec<Value> = calls.iter().map(|c| c["function"].clone()).collect();
            assert_eq!(deltas, collected, "{context}: {}", stream.text);
        }
    }
}

#[tokio::test]
async fn parallel_calls_are_each_valid() {
    let (_model, app) = app_for(Architecture::Qwen2, &[]);
    for seed in 0..4 {
        let answer = post(
            &app,
            "/v1/chat/completions",
            chat(
                json!("required"),
                json!({"parallel_tool_calls": true, "seed": seed, "max_tokens": 600}),
            ),
        )
        .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        let choice = &answer.body["choices"][0];
        let calls = choice["message"]["tool_calls"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        // A sampled model may go on calling until the token limit; every complete call is
        // valid, and the cut one stays text.
        assert!(!calls.is_empty(), "{}", answer.body);
        for call in &calls {
            assert_valid_call(&call["function"], &format!("seed {seed}"));
        }
        if choice["finish_reason"] == "tool_calls" {
            assert!(choice["message"]["content"].is_null(), "{}", answer.body);
        }
    }
}

#[tokio::test]
async fn results_go_back_into_the_conversation() {
    let (_model, app) = app_for(Architecture::Qwen2, &[]);
    let first = post(
        &app,
        "/v1/chat/completions",
        chat(json!("required"), json!({"temperature": 0})),
    )
    .await;
    let message = first.body["choices"][0]["message"].clone();
    let call = message["tool_calls"][0].clone();
    assert!(call.is_object(), "{}", first.body);
    let mut follow_up = chat(json!("auto"), json!({"temperature": 0, "max_tokens": 4}));
    if let Some(messages) = follow_up["messages"].as_array_mut() {
        messages.push(message);
        messages.push(
            json!({"role": "tool", "tool_call_id": call["id"], "content": "sunny, 21 degrees"}),
        );
    }
    let second = post(&app, "/v1/chat/completions", follow_up).await;
    assert_eq!(second.status, StatusCode::OK, "{}", second.body);
    // The call and its result are in the prompt: more prompt tokens than the first request
    // plus the call itself.
    let grew = second.body["usage"]["prompt_tokens"].as_u64().unwrap_or(0)
        > first.body["usage"]["prompt_tokens"].as_u64().unwrap_or(0)
            + first.body["usage"]["completion_tokens"]
                .as_u64()
                .unwrap_or(0);
    assert!(
        grew,
        "{} then {}",
        first.body["usage"], second.body["usage"]
    );
}

#[tokio::test]
async fn tools_reach_the_prompt_unless_the_choice_is_none() {
    let (_model, app) = app_for(Architecture::Mistral, &[]);
    let prompt_tokens = |answer: &common::Answer| answer.body["usage"]["prompt_tokens"].as_u64();
    let plain = json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1});
    let mut with_tools = plain.clone();
    with_tools["tools"] = tools();
    let mut with_none = with_tools.clone();
    with_none["tool_choice"] = json!("none");
    let plain = post(&app, "/v1/chat/completions", plain).await;
    let auto = post(&app, "/v1/chat/completions", with_tools).await;
    let none = post(&app, "/v1/chat/completions", with_none).await;
    assert_eq!(auto.status, StatusCode::OK, "{}", auto.body);
    assert!(prompt_tokens(&auto) > prompt_tokens(&plain));
    assert_eq!(prompt_tokens(&none), prompt_tokens(&plain));
}

#[tokio::test]
async fn bad_tool_requests_are_refused_naming_the_field() {
    let (_model, app) = app_for(Architecture::Qwen2, &[]);
    let named = json!({"type": "function", "function": {"name": "nowhere"}});
    let mut no_tools = chat(json!("required"), json!({}));
    no_tools["tools"] = json!([]);
    let mut twice = chat(json!("auto"), json!({}));
    twice["tools"] = json!([tools()[0], tools()[0]]);
    let mut bad_name = chat(json!("auto"), json!({}));
    bad_name["tools"][0]["function"]["name"] = json!("has space");
    let mut bad_schema = chat(json!("required"), json!({}));
    bad_schema["tools"][0]["function"]["parameters"] =
        json!({"type": "object", "properties": {"a": {"type": "no-such-type"}}});
    for (body, param) in [
        (chat(named, json!({})), "tool_choice"),
        (no_tools, "tool_choice"),
        (twice, "tools"),
        (bad_name, "tools"),
        (bad_schema, "tools"),
        (
            chat(
                json!("required"),
                json!({"response_format": {"type": "json_object"}}),
            ),
            "tool_choice",
        ),
    ] {
        let refused = post(&app, "/v1/chat/completions", body.clone()).await;
        assert_eq!(
            refused.status,
            StatusCode::BAD_REQUEST,
            "{body}: {}",
            refused.body
        );
        assert_eq!(refused.body["error"]["param"], param, "{}", refused.body);
    }
    let completion = post(
        &app,
        "/v1/completions",
        json!({"prompt": "x", "tools": tools()}),
    )
    .await;
    assert_eq!(completion.status, StatusCode::BAD_REQUEST);
    assert_eq!(completion.body["error"]["param"], "tools");
}

#[tokio::test]
async fn a_template_without_tools_refuses_them() {
    let (dir, _) = app_for(Architecture::Qwen2, &[]);
    // The same model with plain ChatML, which has no place for tools.
    let config_path = dir.path().join("tokenizer_config.json");
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap_or_default())
            .unwrap_or_else(|e| panic!("{e}"));
    config["chat_template"] = json!(lantern_models::chat::CHATML_TEMPLATE);
    std::fs::write(&config_path, config.to_string()).unwrap_or_else(|e| panic!("{e}"));
    let app = common::serve(dir.path(), &[]);
    let refused = post(&app, "/v1/chat/completions", chat(json!("auto"), json!({}))).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{}", refused.body);
    assert_eq!(refused.body["error"]["param"], "tools");
    assert!(
        refused.text.contains("does not take tools"),
        "{}",
        refused.text
    );
}

/// Bedrock Messages through `/invocations`: `tool_choice: any` gives `tool_use` blocks whose
/// input validates, streamed as `input_json_delta`; the `tool_result` goes back.
#[tokio::test]
async fn bedrock_tool_use_round_trip() {
    let (_model, app) = app_for(Architecture::Llama, &[]);
    let bedrock_tools: Vec<Value> = tools()
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            json!({"name": t["function"]["name"], "description": t["function"]["description"],
                        "input_schema": t["function"]["parameters"]})
        })
        .collect();
    let request = json!({
        "anthropic_version": "bedrock-2023-05-31", "max_tokens": MAX_TOKENS, "temperature": 0,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]}],
        "tools": bedrock_tools, "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
    });
    let answer = post(&app, "/invocations", request.clone()).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.body["stop_reason"], "tool_use", "{}", answer.body);
    let uses: Vec<Value> = answer.body["content"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|b| b["type"] == "tool_use")
        .cloned()
        .collect();
    assert_eq!(uses.len(), 1, "{}", answer.body);
    let tool_use = &uses[0];
    assert!(tool_use["id"]
        .as_str()
        .is_some_and(|id| id.starts_with("toolu_")));
    assert_valid_call(
        &json!({"name": tool_use["name"], "arguments": tool_use["input"].to_string()}),
        "bedrock",
    );
    // Streamed: one tool_use block whose input_json_delta is the same input.
    let mut streamed = request.clone();
    streamed["stream"] = json!(true);
    let stream = post(&app, "/invocations", streamed).await;
    let events = events(&stream.text);
    let start = events
        .iter()
        .find(|e| e["type"] == "content_block_start" && e["content_block"]["type"] == "tool_use")
        .unwrap_or_else(|| panic!("no tool_use block: {}", stream.text));
    assert_eq!(start["content_block"]["name"], tool_use["name"]);
    let partial: String = events
        .iter()
        .filter(|e| e["delta"]["type"] == "input_json_delta")
        .filter_map(|e| e["delta"]["partial_json"].as_str())
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&partial).ok().as_ref(),
        Some(&tool_use["input"])
    );
    let stop = events
        .iter()
        .find(|e| e["type"] == "message_delta")
        .cloned()
        .unwrap_or_default();
    assert_eq!(stop["delta"]["stop_reason"], "tool_use", "{}", stream.text);
    // The result goes back as a tool_result block after the assistant's tool_use.
    let mut follow_up = request;
    follow_up["tool_choice"] = json!({"type": "auto"});
    follow_up["max_tokens"] = json!(4);
    if let Some(messages) = follow_up["messages"].as_array_mut() {
        messages.push(json!({"role": "assistant", "content": answer.body["content"]}));
        messages.push(json!({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": tool_use["id"], "content": [{"type": "text", "text": "sunny"}]},
            {"type": "text", "text": "And tomorrow?"}]}));
    }
    let second = post(&app, "/invocations", follow_up).await;
    assert_eq!(second.status, StatusCode::OK, "{}", second.body);
    assert!(
        second.body["usage"]["input_tokens"].as_u64()
            > Some(
                answer.body["usage"]["input_tokens"].as_u64().unwrap_or(0)
                    + answer.body["usage"]["output_tokens"].as_u64().unwrap_or(0)
            ),
        "{}",
        second.body
    );
}
