//! Two CPU engines behind one front (`--data-parallel 2`): greedy outputs are those of one
//! engine; under 12 concurrent requests both engines serve (their `engine`-labelled vLLM
//! series move); a conversation's next turn goes back to the engine that holds its prefix
//! and reports cached prompt tokens; an engine that fails fails only its own requests while
//! `/ping` stays 200, and `/ping` turns 503 once every engine has failed.

use lantern_tests::{json, tiny_server, Server};
use serde_json::{json as body, Value};
use std::time::{Duration, Instant};

const SEED: u64 = 33;

fn greedy(prompt: &str, max_new_tokens: usize) -> Value {
    body!({"inputs": prompt,
        "parameters": {"max_new_tokens": max_new_tokens, "do_sample": false, "details": true}})
}

fn generated(server: &Server, request: &Value) -> Value {
    let (status, text) = server.post("/generate", request);
    assert_eq!(status, 200, "{text}");
    json(&text)
}

/// The sample of `name` labelled `engine="<engine>"` in the text exposition (0 if absent).
fn engine_sample(metrics: &str, name: &str, engine: usize) -> f64 {
    let label = format!("engine=\"{engine}\"");
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(&label))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

fn prompt(i: usize) -> String {
    format!(
        "Request {i}: tell me about the {} rivers of the north.",
        i * 7 + 3
    )
}

#[test]
fn two_engines_answer_as_one_share_the_load_and_keep_conversations_where_their_prefix_is() {
    let (_one_model, one) = tiny_server("llama", SEED, &[], &[]);
    let (_model, two) = tiny_server("llama", SEED, &["--data-parallel", "2"], &[]);
    let info = json(&two.get("/info").body);
    assert_eq!(info["data_parallel"], 2, "{info}");

    let expected: Vec<Value> = (0..12)
        .map(|i| generated(&one, &greedy(&prompt(i), 40))["generated_text"].clone())
        .collect();
    let answers: Vec<Value> = std::thread::scope(|scope| {
        let two = &two;
        let threads: Vec<_> = (0..12)
            .map(|i| scope.spawn(move || generated(two, &greedy(&prompt(i), 40))))
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().unwrap_or_else(|_| panic!("client thread")))
            .collect()
    });
    for (i, (answer, expected)) in answers.iter().zip(&expected).enumerate() {
        assert_eq!(&answer["generated_text"], expected, "request {i}");
    }
    let metrics = two.get("/metrics").body;
    for engine in 0..2 {
        for name in ["vllm:generation_tokens_total", "vllm:prompt_tokens_total"] {
            assert!(
                engine_sample(&metrics, name, engine) > 0.0,
                "engine {engine} served nothing ({name}):\n{metrics}"
            );
        }
        assert_eq!(
            engine_sample(&metrics, "vllm:num_requests_running", engine),
            0.0
        );
    }

    // Conversation A starts on the idle pool (engine 0). While a long request keeps engine 0
    // busy, conversation B starts on engine 1. Back at idle, B's next turn goes to engine 1,
    // where its prefix is, though engine 0 is as idle (the least-work choice alone would
    // take engine 0, which never saw B).
    let long_context = "The river runs past the mill and the old stone bridge. ".repeat(6);
    // Distinct from the first token: neither engine can hold a prefix of the other's.
    let a_first = format!("Conversation A. {long_context}Where does the river go?");
    let b_first = format!("Conversation B. {long_context}Who built the bridge?");
    let a_reply = generated(&two, &greedy(&a_first, 8));
    std::thread::scope(|scope| {
        let two = &two;
        let busy = scope.spawn(move || {
            let request = body!({"inputs": "Keep engine zero busy.",
                "parameters": {"max_new_tokens": 1500, "ignore_eos": true}});
            two.post("/generate", &request)
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        while engine_sample(&two.get("/metrics").body, "vllm:num_requests_running", 0) < 1.0 {
            assert!(Instant::now() < deadline, "the long request never ran");
            std::thread::sleep(Duration::from_millis(5));
        }
        let b_reply = generated(two, &greedy(&b_first, 8));
        let (status, text) = busy.join().unwrap_or_else(|_| panic!("busy thread"));
        assert_eq!(status, 200, "{text}");
        let b_second = format!(
            "{b_first}{} And who crossed it first?",
            b_reply["generated_text"].as_str().unwrap_or_default()
        );
        let b_turn = generated(two, &greedy(&b_second, 8));
        let cached = b_turn["details"]["cached_tokens"].as_u64().unwrap_or(0);
        assert!(
            cached >= 64,
            "B's second turn found {cached} cached prompt tokens: {b_turn}"
        );
    });
    let a_second = format!(
        "{a_first}{} And then?",
        a_reply["generated_text"].as_str().unwrap_or_default()
    );
    let a_turn = generated(&two, &greedy(&a_second, 8));
    assert!(
        a_turn["details"]["cached_tokens"].as_u64().unwrap_or(0) >= 64,
        "{a_turn}"
    );
}

#[test]
fn a_failed_engine_fails_only_its_requests_and_the_last_one_takes_ping_down() {
    let (_reference_model, reference) = tiny_server("llama", SEED, &[], &[]);
    // Engine 0's every step fails, and one failure makes it unhealthy.
    let faulty = [
        "--data-parallel",
        "2",
        "--inject-step-faults",
        "1",
        "--max-consecutive-step-failures",
        "1",
    ];
    let mut args = faulty.to_vec();
    args.extend(["--inject-step-faults-engine", "0"]);
    let (_model, server) = tiny_server("llama", SEED, &args, &[]);
    let replies: Vec<(u16, String)> = std::thread::scope(|scope| {
        let server = &server;
        let threads: Vec<_> = (0..6)
            .map(|i| scope.spawn(move || server.post("/generate", &greedy(&prompt(i), 30))))
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().unwrap_or_else(|_| panic!("client thread")))
            .collect()
    });
    let failed = replies.iter().filter(|(status, _)| *status != 200).count();
    assert!(failed >= 1, "engine 0 failed nothing: {replies:?}");
    assert!(
        failed < replies.len(),
        "engine 1 served nothing: {replies:?}"
    );
    for (i, (status, text)) in replies.iter().enumerate() {
        if *status == 200 {
            let expected = generated(&reference, &greedy(&prompt(i), 30));
            assert_eq!(json(text)["generated_text"], expected["generated_text"]);
        } else {
            // Failed in engine 0's step, or queued there when it gave up.
            assert_eq!(*status, 500, "{text}");
            assert!(
                text.contains("injected fault") || text.contains("engine is unhealthy"),
                "{text}"
            );
        }
    }
    assert_eq!(server.get("/ping").status, 200);
    let metrics = server.get("/metrics").body;
    assert_eq!(
        engine_sample(&metrics, "lantern_engine_healthy", 0),
        0.0,
        "{metrics}"
    );
    assert_eq!(
        engine_sample(&metrics, "lantern_engine_healthy", 1),
        1.0,
        "{metrics}"
    );
    for i in 6..10 {
        let expected = generated(&reference, &greedy(&prompt(i), 30));
        let answer = generated(&server, &greedy(&prompt(i), 30));
        assert_eq!(answer["generated_text"], expected["generated_text"]);
    }
    assert_eq!(server.get("/ping").status, 200);

    // Every engine failing: each takes down the request it runs, then /ping says 503.
    let (_all_model, all) = tiny_server("llama", SEED, &faulty, &[]);
    for i in 0..2 {
        let (status, text) = all.post("/generate", &greedy(&prompt(i), 30));
        assert_eq!(status, 500, "{text}");
    }
    assert_eq!(all.get("/ping").status, 503);
    let (status, text) = all.post("/generate", &greedy(&prompt(3), 30));
    assert_eq!(status, 503, "{text}");
}
