//! Engine faults stay contained: with a step failing now and then (the hidden
//! `--inject-step-faults`, alternately an error and a panic), the requests of that step get an
//! error, every other request completes with the same tokens as on a server without faults,
//! no KV block leaks and `/ping` stays 200. Failing every step turns the engine unhealthy after
//! `--max-consecutive-step-failures` (3) and `/ping` says 503.

use lantern_tests::{json, tiny_server, Server};
use serde_json::{json as body, Value};
use std::time::{Duration, Instant};

const CLIENTS: usize = 32;
const REQUESTS_PER_CLIENT: usize = 4;

fn request(client: usize, turn: usize) -> Value {
    body!({
        "inputs": format!("Client {client} asks question {turn}: what is the sea made of?"),
        "parameters": {"max_new_tokens": 6 + (client * 7 + turn * 5) % 19, "do_sample": false}
    })
}

#[test]
fn faults_in_some_steps_fail_only_their_requests() {
    let (_reference_model, reference) = tiny_server("llama", 21, &[], &[]);
    let (_model, server) = tiny_server("llama", 21, &["--inject-step-faults", "50"], &[]);
    let expected: Vec<Vec<String>> = (0..CLIENTS)
        .map(|c| {
            (0..REQUESTS_PER_CLIENT)
                .map(|t| {
                    let (status, text) = reference.post("/generate", &request(c, t));
                    assert_eq!(status, 200, "{text}");
                    json(&text)["generated_text"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string()
                })
                .collect()
        })
        .collect();

    let replies: Vec<Vec<(u16, String)>> = std::thread::scope(|scope| {
        let server = &server;
        let threads: Vec<_> = (0..CLIENTS)
            .map(|c| {
                scope.spawn(move || {
                    (0..REQUESTS_PER_CLIENT)
                        .map(|t| server.post("/generate", &request(c, t)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().unwrap_or_else(|_| panic!("client thread")))
            .collect()
    });
    let (mut ok, mut failed) = (0, 0);
    for (c, client) in replies.iter().enumerate() {
        for (t, (status, text)) in client.iter().enumerate() {
            if *status == 200 {
                ok += 1;
                assert_eq!(
                    json(text)["generated_text"].as_str().unwrap_or_default(),
                    expected[c][t],
                    "client {c} request {t}: not the fault-free answer"
                );
            } else {
                failed += 1;
                assert_eq!(*status, 500, "{text}");
                assert!(text.contains("injected fault"), "{text}");
            }
        }
    }
    eprintln!("{ok} completed, {failed} failed by injected faults");
    assert!(failed > 0, "no fault hit a request");
    assert!(ok > 0, "nothing completed");
    assert_eq!(server.get("/ping").status, 200, "{}", server.log());
    assert_eq!(blocks_used_when_idle(&server), 0.0, "blocks leaked");
    assert!(
        server.log_says("the engine goes on", Duration::from_secs(5)),
        "{}",
        server.log()
    );
}

#[test]
fn failing_every_step_turns_the_engine_unhealthy() {
    let (_model, server) = tiny_server("llama", 22, &["--inject-step-faults", "1"], &[]);
    for attempt in 1..=3 {
        assert_eq!(server.get("/ping").status, 200, "before attempt {attempt}");
        let (status, text) = server.post("/generate", &request(0, attempt));
        assert_eq!(status, 500, "{text}");
    }
    assert_eq!(server.get("/ping").status, 503, "{}", server.log());
    assert_eq!(server.get("/health").status, 503);
    assert!(
        server.log_says("engine marked unhealthy", Duration::from_secs(5)),
        "{}",
        server.log()
    );
}

/// `lantern_kv_cache_blocks_used` once the engine has published its idle state.
fn blocks_used_when_idle(server: &Server) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let used = server
            .metric("lantern_kv_cache_blocks_used")
            .unwrap_or(-1.0);
        if used == 0.0 || Instant::now() > deadline {
            return used;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
