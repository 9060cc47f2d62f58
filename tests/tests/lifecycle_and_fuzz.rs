//! The server under stress and at its end: ping stays fast while saturated, SIGTERM lets the
//! request in flight finish and exits 0, and thousands of random or mutated bodies never get
//! a 5xx or bring it down.

use lantern_tests::{json, tiny_server};
use serde_json::json;
use std::time::{Duration, Instant};

#[test]
fn ping_answers_fast_while_the_engine_is_saturated_and_overload_gets_429() {
    let (_dir, s) = tiny_server(
        "llama",
        6,
        &["--max-total-tokens", "4096", "--max-input-tokens", "256"],
        &[("MAX_CONCURRENT_REQUESTS", "8")],
    );
    // Long enough that the 8 requests are still running after the pings below, even on the
    // CPU kernels (a few seconds).
    let busy =
        json!({"inputs": "keep busy", "parameters": {"max_new_tokens": 4000, "ignore_eos": true}});
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..8)
            .map(|_| scope.spawn(|| s.post("/generate", &busy).0))
            .collect();
        std::thread::sleep(Duration::from_millis(500));
        let mut worst = Duration::ZERO;
        for _ in 0..20 {
            let started = Instant::now();
            assert_eq!(s.get("/ping").status, 200);
            worst = worst.max(started.elapsed());
        }
        assert!(
            worst < Duration::from_millis(100),
            "slowest /ping took {worst:?}"
        );
        let (status, body) = s.post(
            "/generate",
            &json!({"inputs": "one more", "parameters": {"max_new_tokens": 2}}),
        );
        assert_eq!(status, 429, "{body}");
        assert!(
            json(&body)["error"]
                .as_str()
                .unwrap_or_default()
                .contains("retry"),
            "{body}"
        );
        for worker in workers {
            assert_eq!(worker.join().unwrap_or_default(), 200);
        }
    });
}

/// Test servers run with `LANTERN_EXIT_ON_STDIN_EOF`: when the process that started them dies,
/// its end of their stdin closes and they shut down, instead of outliving the tests.
#[test]
fn a_server_shuts_down_when_its_stdin_closes() {
    let (_model, mut server) = tiny_server("llama", 1, &[], &[]);
    server.close_stdin();
    let status = server.wait_exit(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "still running or failed ({status:?}); log:\n{}",
        server.log()
    );
}

#[test]
fn sigterm_lets_the_request_in_flight_finish_then_exits_0() {
    let (_dir, mut s) = tiny_server("qwen2", 6, &[], &[]);
    let request = json!({"inputs": "finish me", "parameters": {"max_new_tokens": 300, "ignore_eos": true, "details": true}});
    std::thread::scope(|scope| {
        let in_flight = scope.spawn(|| s.post("/generate", &request));
        std::thread::sleep(Duration::from_millis(300));
        s.terminate();
        let (status, body) = in_flight.join().unwrap_or_default();
        assert_eq!(status, 200, "{body}");
        assert_eq!(json(&body)["details"]["generated_tokens"], 300);
    });
    let exit = s.wait_exit(Duration::from_secs(30));
    assert!(
        exit.is_some_and(|e| e.success()),
        "exit status {exit:?}; log:\n{}",
        s.log()
    );
}

#[test]
fn random_and_mutated_bodies_never_get_a_5xx() {
    let (_dir, s) = tiny_server(
        "mistral",
        6,
        &["--max-total-tokens", "64", "--max-input-tokens", "48"],
        &[],
    );
    let seeds = [
        r#"{"inputs": "What is machine learning?", "parameters": {"max_new_tokens": 4}}"#,
        r#"{"inputs": "hi", "parameters": {"temperature": 0.7, "top_k": 5, "top_p": 0.9, "seed": 3, "stop": ["x"], "details": true, "max_new_tokens": 3}}"#,
        r#"{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "temperature": 0}"#,
        r#"{"anthropic_version": "bedrock-2023-05-31", "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]}"#,
        r#"{"prompt": "hello", "max_tokens": 3, "logprobs": 2}"#,
    ];
    let mut rng: u64 = 0x9e3779b97f4a7c15;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let fragments = [
        "null",
        "-1",
        "1e309",
        "\"\"",
        "[]",
        "{}",
        "true",
        "99999999999999999999",
        "\"\\ud800\"",
        "0.5",
        "\"é🙂\"",
        ",",
    ];
    let mut statuses = std::collections::BTreeMap::new();
    for round in 0..2000 {
        let seed = seeds[(next() % seeds.len() as u64) as usize]
            .as_bytes()
            .to_vec();
        let mut body = seed.clone();
        for _ in 0..=(next() % 3) {
            let at = (next() % (body.len() as u64 + 1)) as usize;
            match next() % 4 {
                0 => {
                    body.truncate(at);
                }
                1 => {
                    let f = fragments[(next() % fragments.len() as u64) as usize];
                    body.splice(at..at, f.bytes());
                }
                2 if at < body.len() => {
                    body[at] = (next() % 256) as u8;
                }
                _ => {
                    let end = (at + (next() % 8) as usize).min(body.len());
                    body.drain(at..end);
                }
            }
        }
        let path = if round % 2 == 0 {
            "/invocations"
        } else {
            "/generate"
        };
        let reply = s.post_raw(
            path,
            "application/json",
            &String::from_utf8_lossy(&body),
            &[],
        );
        assert!(
            reply.status < 500,
            "{path} answered {} to {:?}: {}",
            reply.status,
            String::from_utf8_lossy(&body),
            reply.body
        );
        *statuses.entry(reply.status).or_insert(0) += 1;
    }
    assert!(statuses.len() > 1, "{statuses:?}");
    assert_eq!(s.get("/ping").status, 200);
    assert_eq!(
        s.post(
            "/generate",
            &json!({"inputs": "still fine?", "parameters": {"max_new_tokens": 2}})
        )
        .0,
        200
    );
}

#[test]
fn a_request_past_the_deadline_returns_what_it_has() {
    let (_dir, s) = tiny_server(
        "qwen3",
        6,
        &[
            "--request-timeout",
            "1",
            "--max-total-tokens",
            "60000",
            "--max-input-tokens",
            "100",
        ],
        &[],
    );
    let started = Instant::now();
    let (status, body) = s.post("/generate", &json!({"inputs": "go on", "parameters": {"max_new_tokens": 50000, "ignore_eos": true, "details": true}}));
    assert_eq!(status, 200, "{body}");
    let body = json(&body);
    assert_eq!(body["details"]["finish_reason"], "time_limit");
    assert!(body["details"]["generated_tokens"]
        .as_u64()
        .is_some_and(|n| n > 0 && n < 50000));
    assert!(started.elapsed() < Duration::from_secs(10));
    // The stream is cut the same way, with a final event that says so.
    let (status, stream) = s.post("/generate_stream", &json!({"inputs": "go on", "parameters": {"max_new_tokens": 50000, "ignore_eos": true, "details": true}}));
    assert_eq!(status, 200);
    let last = lantern_tests::sse_data(&stream)
        .last()
        .map(|d| json(d))
        .unwrap_or_default();
    assert_eq!(last["details"]["finish_reason"], "time_limit");
}
