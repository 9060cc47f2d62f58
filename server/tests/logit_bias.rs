//! OpenAI `logit_bias` through the router: -100 bans a token, +100 forces it, the answer is the
//! same bits alone and batched with other requests, and bad maps are refused naming the field.

mod common;

use axum::http::StatusCode;
use common::{app, post, Answer};
use serde_json::{json, Value};

/// Greedy completion of `prompt`, with `extra` fields.
fn completion(prompt: &str, extra: Value) -> Value {
    let mut body = json!({"prompt": prompt, "max_tokens": 8, "temperature": 0});
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    body
}

/// The ids and texts of the tokens a greedy TGI request generates for `prompt` (TGI reports
/// ids; the prompt is tokenized as OpenAI completions tokenize it).
async fn greedy_tokens(app: &axum::Router, prompt: &str) -> Vec<(u64, String)> {
    let answer = post(
        app,
        "/generate",
        json!({"inputs": prompt, "parameters": {"max_new_tokens": 8, "details": true}}),
    )
    .await;
    answer.body["details"]["tokens"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| Some((t["id"].as_u64()?, t["text"].as_str()?.to_string())))
        .collect()
}

/// The text of each token of a completion (`logprobs: 0` reports them).
fn token_texts(answer: &Answer) -> Vec<String> {
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    answer.body["choices"][0]["logprobs"]["tokens"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t.as_str().map(String::from))
        .collect()
}

#[tokio::test]
async fn minus_100_bans_and_plus_100_forces_alone_and_batched() {
    let (_model, app) = app(&[]);
    let prompt = "The weather today";
    let plain = greedy_tokens(&app, prompt).await;
    assert!(!plain.is_empty());
    let (first, first_text) = plain[0].clone();

    // Banned: the first token the model picks is another.
    let ban = json!({"logit_bias": {first.to_string(): -100}, "logprobs": 0});
    let banned = token_texts(&post(&app, "/v1/completions", completion(prompt, ban.clone())).await);
    assert!(!banned.is_empty());
    assert_ne!(banned[0], first_text, "token {first} was not banned");

    // Forced: a plain-text token the model does not pick, at every position.
    let candidates = post(&app, "/tokenize", json!({"inputs": "zebra quartz"})).await;
    let (forced_id, forced_text) = candidates
        .body
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| Some((t["id"].as_u64()?, t["text"].as_str()?.to_string())))
        .find(|(id, text)| !text.is_empty() && plain.iter().all(|(p, _)| p != id))
        .unwrap_or_else(|| panic!("no candidate: {}", candidates.text));
    let force = json!({"logit_bias": {forced_id.to_string(): 100}, "logprobs": 0});
    let forced =
        token_texts(&post(&app, "/v1/completions", completion(prompt, force.clone())).await);
    assert_eq!(forced.len(), 8);
    assert!(
        forced.iter().all(|t| *t == forced_text),
        "forced {forced_id} ({forced_text:?}): {forced:?}"
    );

    // Batched with other requests (other prompts, other biases, sampled): the same bits.
    let others = [
        completion("Once upon a time", json!({"temperature": 1.0, "seed": 3})),
        completion("A list of colours", json!({"logit_bias": {"7": 5}})),
        completion("def main():", json!({})),
    ];
    for biased in [ban, force] {
        // Text, tokens and log-probabilities alike.
        let alone = post(&app, "/v1/completions", completion(prompt, biased.clone())).await;
        let batch = together(&app, completion(prompt, biased), &others).await;
        assert_eq!(batch, alone.body["choices"][0]);
    }
}

/// `target` sent at the same time as `others`; its choice.
async fn together(app: &axum::Router, target: Value, others: &[Value]) -> Value {
    let mut tasks = Vec::new();
    for body in others {
        let (app, body) = (app.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            post(&app, "/v1/completions", body).await
        }));
    }
    let answer = post(app, "/v1/completions", target).await;
    for task in tasks {
        let other = task.await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(other.status, StatusCode::OK, "{}", other.text);
    }
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    answer.body["choices"][0].clone()
}

#[tokio::test]
async fn bad_logit_bias_maps_are_refused_naming_the_field() {
    let (_model, app) = app(&[]);
    for bias in [
        json!({"5": 100.00000000000001}),
        json!({"5": -101}),
        json!({"x": 1}),
        json!({"-3": 1}),
        json!({"5": 1, "05": 2}),
        json!({"100000": 1}),
    ] {
        for (path, body) in [
            (
                "/v1/completions",
                json!({"prompt": "hi", "logit_bias": bias}),
            ),
            (
                "/v1/chat/completions",
                json!({"messages": [{"role": "user", "content": "hi"}], "logit_bias": bias}),
            ),
        ] {
            let answer = post(&app, path, body).await;
            assert_eq!(
                answer.status,
                StatusCode::BAD_REQUEST,
                "{bias}: {}",
                answer.text
            );
            let param = answer.body["error"]["param"].as_str().unwrap_or_default();
            assert!(param.starts_with("logit_bias"), "{bias}: {}", answer.text);
        }
    }
    // An empty map is no bias.
    let answer = post(
        &app,
        "/v1/completions",
        json!({"prompt": "hi", "max_tokens": 2, "logit_bias": {}}),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
}
