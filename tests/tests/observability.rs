//! Request ids and CloudWatch EMF records from the real binary: a caller's id (SageMaker's
//! inference id or `X-Request-Id`) is echoed and names the request's log lines, a new one is
//! made otherwise; with `--cloudwatch-emf`, each finished generation request, streamed or not,
//! refused or not, writes one EMF line on stdout that CloudWatch can read.

use lantern_tests::{json, tiny_server, Server};
use serde_json::{json as body, Value};
use std::time::Duration;

fn post_with(
    server: &Server,
    path: &str,
    body: &Value,
    headers: &[(&str, &str)],
) -> (u16, Option<String>) {
    let mut request =
        ureq::post(&format!("{}{path}", server.base)).set("Content-Type", "application/json");
    for (name, value) in headers {
        request = request.set(name, value);
    }
    let response = match request.send_string(&body.to_string()) {
        Ok(response) | Err(ureq::Error::Status(_, response)) => response,
        Err(e) => panic!("{path}: {e}"),
    };
    let id = response.header("x-request-id").map(str::to_string);
    let status = response.status();
    let _ = response.into_string();
    (status, id)
}

/// The EMF records on stdout so far (lines with an `_aws` member).
fn emf_records(server: &Server) -> Vec<Value> {
    server
        .stdout()
        .lines()
        .filter(|line| line.starts_with('{'))
        .map(json)
        .filter(|doc| doc.get("_aws").is_some())
        .collect()
}

#[test]
fn request_ids_are_echoed_and_name_the_log_lines() {
    let (_model, server) = tiny_server("llama", 31, &[], &[]);
    let generate = body!({"inputs": "Hello", "parameters": {"max_new_tokens": 3}});
    let (status, id) = post_with(
        &server,
        "/generate",
        &generate,
        &[("X-Request-Id", "caller-id-42")],
    );
    assert_eq!((status, id.as_deref()), (200, Some("caller-id-42")));
    let (_, id) = post_with(
        &server,
        "/generate",
        &generate,
        &[
            ("X-Amzn-SageMaker-Inference-Id", "sm-inference-7"),
            ("X-Request-Id", "other"),
        ],
    );
    assert_eq!(
        id.as_deref(),
        Some("sm-inference-7"),
        "SageMaker's id comes first"
    );
    let (_, made) = post_with(
        &server,
        "/generate",
        &generate,
        &[("X-Request-Id", "bad id with spaces")],
    );
    let made = made.unwrap_or_default();
    assert_eq!(made.len(), 32, "a new id replaces an unusable one: {made}");
    // Refused requests get one too, and their log line names it.
    let (status, _) = post_with(
        &server,
        "/generate",
        &body!({"inputs": 5}),
        &[("X-Request-Id", "refused-1")],
    );
    assert_eq!(status, 422);
    for id in ["caller-id-42", "sm-inference-7", "refused-1"] {
        assert!(
            server.log_says(id, Duration::from_secs(5)),
            "{id} not in the log:\n{}",
            server.log()
        );
    }
    assert!(!server.log().contains("Hello"), "the prompt was logged");
}

#[test]
fn each_finished_request_writes_one_emf_record() {
    let (_model, server) = tiny_server("llama", 32, &["--cloudwatch-emf"], &[]);
    let params = body!({"max_new_tokens": 4, "ignore_eos": true});
    let plain = body!({"inputs": "Hello", "parameters": params});
    let streamed = body!({"inputs": "Hello", "parameters": params, "stream": true});
    assert_eq!(
        post_with(
            &server,
            "/generate",
            &plain,
            &[("X-Request-Id", "emf-plain")]
        )
        .0,
        200
    );
    assert_eq!(
        post_with(
            &server,
            "/generate_stream",
            &streamed,
            &[("X-Request-Id", "emf-stream")]
        )
        .0,
        200
    );
    assert_eq!(
        post_with(
            &server,
            "/generate",
            &body!({"inputs": 5}),
            &[("X-Request-Id", "emf-bad")]
        )
        .0,
        422
    );
    let chat = body!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4});
    assert_eq!(
        post_with(
            &server,
            "/v1/chat/completions",
            &chat,
            &[("X-Request-Id", "emf-chat")]
        )
        .0,
        200
    );
    // Not a generation route: no record.
    assert_eq!(server.get("/info").status, 200);

    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut records = emf_records(&server);
    while records.len() < 4 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        records = emf_records(&server);
    }
    assert_eq!(records.len(), 4, "{}", server.stdout());
    let by_id = |id: &str| {
        records
            .iter()
            .find(|r| r["RequestId"] == id)
            .unwrap_or_else(|| panic!("no record for {id}: {records:?}"))
    };
    for (id, api, status, tokens) in [
        ("emf-plain", "/generate", 200, Some(4.0)),
        ("emf-stream", "/generate_stream", 200, Some(4.0)),
        ("emf-bad", "/generate", 422, None),
        ("emf-chat", "/v1/chat/completions", 200, None),
    ] {
        let record = by_id(id);
        assert_eq!(record["Api"], api, "{record}");
        assert_eq!(record["Status"], status, "{record}");
        assert!(
            record["Model"].as_str().is_some_and(|m| !m.is_empty()),
            "{record}"
        );
        assert!(record["_aws"]["Timestamp"].as_u64().is_some(), "{record}");
        let directive = &record["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(
            directive["Dimensions"],
            body!([["Model", "Api"]]),
            "{record}"
        );
        // Every declared metric has a number at the root.
        for metric in directive["Metrics"].as_array().into_iter().flatten() {
            let name = metric["Name"].as_str().unwrap_or_default();
            assert!(record[name].is_number(), "{name} in {record}");
        }
        if let Some(tokens) = tokens {
            assert_eq!(record["OutputTokens"], tokens, "{record}");
            assert!(
                record["TimeToFirstToken"].as_f64().is_some_and(|t| t > 0.0),
                "{record}"
            );
        }
        if status != 200 {
            assert!(record.get("OutputTokens").is_none(), "{record}");
        }
    }
}
