//! The HTTP router in-process (`tower::ServiceExt::oneshot`, no socket) around a tiny dummy
//! model: validation errors in each API's shape and status, the headers every response
//! carries, the limits on bodies and routes.

mod common;

use axum::http::StatusCode;
use common::{app, choice_texts, events, last_event, post, send};
use serde_json::{json, Value};

#[tokio::test]
async fn each_api_refuses_a_bad_field_in_its_own_shape() {
    let (_model, app) = app(&[]);
    // TGI: 422, {"error", "error_type"}, the field named.
    let tgi = post(
        &app,
        "/generate",
        json!({"inputs": "hi", "parameters": {"top_p": 1.5}}),
    )
    .await;
    assert_eq!(tgi.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(tgi.body["error_type"], "validation");
    assert!(
        tgi.body["error"]
            .as_str()
            .is_some_and(|e| e.contains("top_p")),
        "{}",
        tgi.body
    );
    // OpenAI: 400, {"error": {"message", "type", "param", "code"}}.
    let openai = post(
        &app,
        "/v1/chat/completions",
        json!({"messages": [{"role": "user", "content": "hi"}], "n": 17}),
    )
    .await;
    assert_eq!(openai.status, StatusCode::BAD_REQUEST);
    assert_eq!(openai.body["error"]["param"], "n", "{}", openai.body);
    assert_eq!(openai.body["error"]["type"], "invalid_request_error");
    // Bedrock through SageMaker: 400 in Anthropic's shape.
    let bedrock = post(
        &app,
        "/invocations",
        json!({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 4, "messages": []}),
    )
    .await;
    assert_eq!(bedrock.status, StatusCode::BAD_REQUEST);
    assert_eq!(bedrock.body["type"], "error", "{}", bedrock.body);
    assert_eq!(bedrock.body["error"]["type"], "invalid_request_error");
    // Bodies that fail to parse are refused by the one body extractor, in each API's shape and
    // with the path of the field at fault.
    let tgi_type = post(
        &app,
        "/generate",
        json!({"inputs": "hi", "parameters": {"max_new_tokens": "x"}}),
    )
    .await;
    assert_eq!(tgi_type.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        tgi_type.body["error"]
            .as_str()
            .is_some_and(|e| e.contains("parameters.max_new_tokens")),
        "{}",
        tgi_type.body
    );
    let openai_type = post(
        &app,
        "/v1/chat/completions",
        json!({"messages": [{"role": "user", "content": 5}]}),
    )
    .await;
    assert_eq!(openai_type.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        openai_type.body["error"]["param"], "messages[0].content",
        "{}",
        openai_type.body
    );
    let bedrock_type = post(
        &app,
        "/invocations",
        json!({"anthropic_version": "bedrock-2023-05-31", "max_tokens": "four", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(bedrock_type.status, StatusCode::BAD_REQUEST);
    assert_eq!(bedrock_type.body["error"]["type"], "invalid_request_error");
    assert!(
        bedrock_type.body["error"]["message"]
            .as_str()
            .is_some_and(|e| e.contains("max_tokens")),
        "{}",
        bedrock_type.body
    );
    // A body no schema claims: 422, naming the fields that decide.
    let unknown = post(&app, "/invocations", json!({"question": "hi"})).await;
    assert_eq!(unknown.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(unknown.body["error"]
        .as_str()
        .is_some_and(|e| e.contains("inputs")));
}

#[tokio::test]
async fn answers_carry_their_request_id_and_token_counts() {
    let (_model, app) = app(&[]);
    let ok = post(
        &app,
        "/generate",
        json!({"inputs": "hello", "parameters": {"max_new_tokens": 3, "ignore_eos": true}}),
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
    let header = |name: &str| {
        ok.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    assert_eq!(header("x-generated-tokens").as_deref(), Some("3"));
    assert!(header("x-prompt-tokens").is_some_and(|n| n.parse::<u32>().is_ok_and(|n| n > 0)));
    assert!(header("x-request-id").is_some_and(|id| id.len() == 32));
    // Refusals get an id too.
    let refused = post(&app, "/generate", json!({"inputs": 3})).await;
    assert!(refused.headers.contains_key("x-request-id"));
}

#[tokio::test]
async fn bodies_and_routes_outside_the_limits_are_refused() {
    let (_model, app) = app(&["--max-payload-bytes", "1000"]);
    let big = json!({"inputs": "x".repeat(2000)}).to_string();
    let too_large = send(&app, "POST", "/generate", "application/json", &big).await;
    assert_eq!(too_large.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(too_large.body["error_type"], "payload_too_large");
    let xml = send(&app, "POST", "/invocations", "application/xml", "<a/>").await;
    assert_eq!(xml.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let malformed = send(
        &app,
        "POST",
        "/v1/completions",
        "application/json",
        "{\"prompt\": ",
    )
    .await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
    assert!(malformed.body["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("malformed JSON")));
    let nowhere = send(&app, "GET", "/nowhere", "application/json", "").await;
    assert_eq!(nowhere.status, StatusCode::NOT_FOUND);
    let wrong_method = send(&app, "GET", "/generate", "application/json", "").await;
    assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
}

/// A stream whose engine step fails ends with an error event in its API's own shape (the same
/// bodies error.rs gives collected responses).
#[tokio::test]
async fn failed_streams_end_with_an_error_event_in_their_apis_shape() {
    let (_model, app) = app(&[
        "--inject-step-faults",
        "1",
        "--max-consecutive-step-failures",
        "100",
    ]);
    let tgi = post(&app, "/generate_stream", json!({"inputs": "hi"})).await;
    assert_eq!(tgi.status, StatusCode::OK);
    let event = last_event(&tgi.text);
    assert_eq!(event["error_type"], "generation", "{}", tgi.text);
    assert!(
        event["error"]
            .as_str()
            .is_some_and(|e| e.contains("injected fault")),
        "{event}"
    );
    let chat = post(
        &app,
        "/v1/chat/completions",
        json!({"messages": [{"role": "user", "content": "hi"}], "stream": true}),
    )
    .await;
    let event = last_event(&chat.text);
    assert_eq!(event["error"]["type"], "server_error", "{}", chat.text);
    assert_eq!(event["error"]["code"], "generation");
    let bedrock = post(
        &app,
        "/invocations",
        json!({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 4, "stream": true,
               "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    let event = last_event(&bedrock.text);
    assert_eq!(event["type"], "error", "{}", bedrock.text);
    assert_eq!(event["error"]["type"], "api_error");
}

/// The document and the router come from one table: every documented operation is routed.
#[tokio::test]
async fn every_documented_operation_is_served() {
    let (_model, app) = app(&[]);
    let doc = send(&app, "GET", "/openapi.json", "application/json", "")
        .await
        .body;
    let paths = doc["paths"].as_object().cloned().unwrap_or_default();
    assert!(paths.len() >= 14, "{doc}");
    for (path, item) in paths {
        for method in item
            .as_object()
            .map(|m| m.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default()
        {
            // A path parameter gets a value; a handler may answer 404 for it (no such
            // adapter), in its JSON error shape, which an unrouted path does not have.
            let concrete = path.replace("{adapter_name}", "absent");
            let answer = send(
                &app,
                &method.to_uppercase(),
                &concrete,
                "application/json",
                "{}",
            )
            .await;
            let handler_not_found =
                answer.status == StatusCode::NOT_FOUND && answer.body["error"].is_string();
            assert!(
                (answer.status != StatusCode::NOT_FOUND || handler_not_found)
                    && answer.status != StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path}: {}",
                answer.status
            );
        }
    }
}

/// Sum of a completion choice's token log-probabilities.
fn cumulative_logprob(choice: &Value) -> f64 {
    choice["logprobs"]["token_logprobs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_f64)
        .sum()
}

#[tokio::test]
async fn openai_samples_choices_prompt_lists_and_echo() {
    let (_model, app) = app(&[]);
    let sampled = json!({"prompt": "once upon", "max_tokens": 6, "temperature": 1.0, "seed": 5, "n": 4, "ignore_eos": true});
    let first = post(&app, "/v1/completions", sampled.clone()).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    let mut texts = choice_texts(&first);
    assert_eq!(texts.len(), 4);
    assert_eq!(
        choice_texts(&post(&app, "/v1/completions", sampled).await),
        texts,
        "reproducible"
    );
    texts.sort();
    texts.dedup();
    assert_eq!(
        texts.len(),
        4,
        "four seeds, four completions: {}",
        first.body
    );
    // Each prompt counted once; the repeated prompt's blocks came from the cache (the prompt
    // is short: its full blocks, if any).
    assert_eq!(first.body["usage"]["completion_tokens"], 24);
    assert!(first.body["usage"]["prompt_tokens_details"]["cached_tokens"].is_u64());

    // best_of = 3: the sample with the highest cumulative log-probability of the same three.
    let three = json!({"prompt": "the sea", "max_tokens": 5, "temperature": 1.0, "seed": 9, "n": 3, "logprobs": 0, "ignore_eos": true});
    let all = post(&app, "/v1/completions", three).await;
    let choices = all.body["choices"].as_array().cloned().unwrap_or_default();
    assert_eq!(choices.len(), 3, "{}", all.body);
    let best = choices
        .iter()
        .max_by(|a, b| cumulative_logprob(a).total_cmp(&cumulative_logprob(b)))
        .map(|c| c["text"].clone());
    let best_of = post(
        &app,
        "/v1/completions",
        json!({"prompt": "the sea", "max_tokens": 5, "temperature": 1.0, "seed": 9, "best_of": 3, "ignore_eos": true}),
    )
    .await;
    assert_eq!(choice_texts(&best_of).len(), 1);
    assert_eq!(best, Some(best_of.body["choices"][0]["text"].clone()));

    // Three prompts (one as token ids) x n = 2, greedy: six choices, prompt by prompt, each
    // the same as that prompt sent alone.
    let prompts = json!(["red", "green", "blue"]);
    let listed = post(
        &app,
        "/v1/completions",
        json!({"prompt": prompts, "n": 2, "max_tokens": 4, "temperature": 0, "ignore_eos": true}),
    )
    .await;
    let texts = choice_texts(&listed);
    assert_eq!(texts.len(), 6, "{}", listed.body);
    for (i, prompt) in ["red", "green", "blue"].iter().enumerate() {
        let alone = post(
            &app,
            "/v1/completions",
            json!({"prompt": prompt, "max_tokens": 4, "temperature": 0, "ignore_eos": true}),
        )
        .await;
        assert_eq!(texts[2 * i], choice_texts(&alone)[0]);
        assert_eq!(texts[2 * i + 1], choice_texts(&alone)[0]);
        assert_eq!(listed.body["choices"][2 * i + 1]["index"], 2 * i + 1);
    }
    let ids = post(&app, "/tokenize", json!({"inputs": "green"})).await;
    let ids: Vec<Value> = ids
        .body
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| t["id"].clone())
        .collect();
    let by_ids = post(
        &app,
        "/v1/completions",
        json!({"prompt": ids, "max_tokens": 4, "temperature": 0, "ignore_eos": true}),
    )
    .await;
    assert_eq!(
        choice_texts(&by_ids),
        vec![texts[2].clone()],
        "{}",
        by_ids.body
    );

    // echo: the prompt's text first.
    let echoed = post(
        &app,
        "/v1/completions",
        json!({"prompt": "echo me", "echo": true, "max_tokens": 3, "temperature": 0, "ignore_eos": true}),
    )
    .await;
    let text = choice_texts(&echoed).pop().unwrap_or_default();
    assert!(
        text.starts_with("echo me") && text.len() > "echo me".len(),
        "{text:?}"
    );

    // echo with logprobs: the prompt's tokens first, the first without a log-probability.
    let scored = post(
        &app,
        "/v1/completions",
        json!({"prompt": "echo me", "echo": true, "logprobs": 1, "max_tokens": 3, "temperature": 0, "ignore_eos": true}),
    )
    .await;
    assert_eq!(scored.status, StatusCode::OK, "{}", scored.body);
    let logprobs = &scored.body["choices"][0]["logprobs"];
    let values = logprobs["token_logprobs"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let prompt_len = scored.body["usage"]["prompt_tokens"].as_u64().unwrap_or(0) as usize;
    assert_eq!(values.len(), prompt_len + 3, "{}", scored.body);
    assert!(values[0].is_null());
    assert!(values[1..].iter().all(Value::is_f64), "{}", scored.body);
    let tokens: Vec<&str> = logprobs["tokens"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    assert!(tokens.concat().starts_with("echo me"), "{tokens:?}");
    // TGI's decoder_input_details: the prefill tokens' log-probabilities likewise.
    let details = post(
        &app,
        "/generate",
        json!({"inputs": "some words here", "parameters": {"max_new_tokens": 2, "decoder_input_details": true}}),
    )
    .await;
    let prefill = details.body["details"]["prefill"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(prefill.len() > 2, "{}", details.body);
    assert!(prefill[0]["logprob"].is_null());
    assert!(
        prefill[1..].iter().all(|t| t["logprob"].is_f64()),
        "{}",
        details.body
    );

    // Chat with n = 2 and a seed: two choices.
    let chat = post(
        &app,
        "/v1/chat/completions",
        json!({"messages": [{"role": "user", "content": "hi"}], "n": 2, "seed": 3, "max_tokens": 3}),
    )
    .await;
    assert_eq!(
        chat.body["choices"].as_array().map(Vec::len),
        Some(2),
        "{}",
        chat.body
    );
    assert_eq!(chat.body["choices"][1]["index"], 1);
}

#[tokio::test]
async fn openai_fields_that_cannot_be_honoured_are_refused_by_name() {
    let (_model, app) = app(&[]);
    for (field, value) in [(
        "functions",
        json!([{"name": "f", "parameters": {"type": "object"}}]),
    )] {
        let mut body = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});
        body[field] = value;
        let refused = post(&app, "/v1/chat/completions", body).await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{field}");
        assert_eq!(refused.body["error"]["param"], field, "{}", refused.body);
    }
    // Their defaults, metadata fields and unknown fields are accepted.
    let accepted = post(
        &app,
        "/v1/chat/completions",
        json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "logit_bias": {},
               "tools": [], "tool_choice": "none", "response_format": {"type": "text"},
               "user": "u1", "metadata": {"k": "v"}, "service_tier": "auto", "store": false,
               "a_field_from_the_future": 1}),
    )
    .await;
    assert_eq!(accepted.status, StatusCode::OK, "{}", accepted.body);
    // best_of picks among finished samples: not streamed.
    let streamed_best_of = post(
        &app,
        "/v1/completions",
        json!({"prompt": "x", "best_of": 2, "stream": true, "max_tokens": 2}),
    )
    .await;
    assert_eq!(streamed_best_of.status, StatusCode::BAD_REQUEST);
    assert_eq!(streamed_best_of.body["error"]["param"], "best_of");
}

#[tokio::test]
async fn several_choices_stream_interleaved_by_index() {
    let (_model, app) = app(&[]);
    // Two prompts x n = 2, greedy, echoed: four choices, each its prompt then the same text as
    // the collected answer, one finish per choice, then usage and [DONE].
    let body = json!({"prompt": ["red", "blue"], "n": 2, "max_tokens": 4, "temperature": 0,
                      "echo": true, "ignore_eos": true, "stream_options": {"include_usage": true}});
    let mut streamed_body = body.clone();
    streamed_body["stream"] = json!(true);
    let collected = post(&app, "/v1/completions", body).await;
    let streamed = post(&app, "/v1/completions", streamed_body).await;
    assert_eq!(streamed.status, StatusCode::OK, "{}", streamed.text);
    assert!(
        streamed.text.trim_end().ends_with("data: [DONE]"),
        "{}",
        streamed.text
    );
    let chunks = events(&streamed.text);
    let mut texts = vec![String::new(); 4];
    let mut finishes = vec![0; 4];
    for chunk in &chunks {
        for choice in chunk["choices"].as_array().into_iter().flatten() {
            let index = choice["index"].as_u64().unwrap_or(99) as usize;
            assert!(index < 4, "{chunk}");
            texts[index].push_str(choice["text"].as_str().unwrap_or_default());
            finishes[index] += usize::from(!choice["finish_reason"].is_null());
        }
    }
    assert_eq!(texts, choice_texts(&collected));
    assert_eq!(finishes, vec![1; 4]);
    let usage = chunks
        .iter()
        .rev()
        .find(|c| c.get("usage").is_some())
        .map(|c| c["usage"].clone());
    assert_eq!(
        usage.map(|u| u["completion_tokens"].clone()),
        Some(json!(16))
    );
    // Chat with n = 3: three choices, each opening with the assistant's role.
    let chat = post(
        &app,
        "/v1/chat/completions",
        json!({"messages": [{"role": "user", "content": "hi"}], "n": 3, "seed": 2, "max_tokens": 3, "stream": true}),
    )
    .await;
    let mut roles = vec![0; 3];
    for chunk in events(&chat.text) {
        for choice in chunk["choices"].as_array().into_iter().flatten() {
            if choice["delta"]["role"] == "assistant" {
                roles[choice["index"].as_u64().unwrap_or(0) as usize] += 1;
            }
        }
    }
    assert_eq!(roles, vec![1; 3], "{}", chat.text);
}

#[tokio::test]
async fn tgi_best_of_returns_the_best_sample_with_the_others_in_details() {
    let (_model, app) = app(&[]);
    let answer = post(
        &app,
        "/generate",
        json!({"inputs": "hello", "parameters": {"best_of": 3, "do_sample": true, "seed": 4,
               "max_new_tokens": 5, "details": true, "ignore_eos": true}}),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let details = &answer.body["details"];
    let others = details["best_of_sequences"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(others.len(), 2, "{}", answer.body);
    let logprob = |tokens: &Value| -> f64 {
        tokens
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["logprob"].as_f64())
            .sum()
    };
    let best = logprob(&details["tokens"]);
    for other in &others {
        assert!(best >= logprob(&other["tokens"]), "{}", answer.body);
        assert!(other["generated_text"].is_string());
    }
    // best_of needs sampling.
    let greedy = post(
        &app,
        "/generate",
        json!({"inputs": "hello", "parameters": {"best_of": 2, "max_new_tokens": 2}}),
    )
    .await;
    assert_eq!(greedy.status, StatusCode::UNPROCESSABLE_ENTITY);
    // A prompt sent twice reports the cached part of the second.
    let prompt = "a prompt long enough to fill a few blocks of sixteen tokens ".repeat(4);
    let request = json!({"inputs": prompt, "parameters": {"max_new_tokens": 2, "details": true}});
    post(&app, "/generate", request.clone()).await;
    let again = post(&app, "/generate", request).await;
    let cached = again.body["details"]["cached_tokens"].as_u64().unwrap_or(0);
    assert!(cached >= 16, "{}", again.body);
    assert_eq!(
        again
            .headers
            .get("x-cached-tokens")
            .and_then(|v| v.to_str().ok()),
        Some(cached.to_string().as_str())
    );
}

/// `/info` names the model family and the toggles its config turned on.
#[tokio::test]
async fn info_names_the_family_and_its_toggles() {
    let (_model, app) = common::app_for(lantern_models::Architecture::Phi3, &[]);
    let info = send(&app, "GET", "/info", "application/json", "").await;
    assert_eq!(info.status, StatusCode::OK);
    assert_eq!(info.body["model_family"], "phi3", "{}", info.body);
    let toggles: Vec<String> = info.body["model_toggles"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t.as_str().map(String::from))
        .collect();
    assert!(
        toggles.contains(&"fused_projections".to_string()),
        "{toggles:?}"
    );
    assert!(
        toggles.iter().any(|t| t.starts_with("rope_longrope")),
        "{toggles:?}"
    );
}
