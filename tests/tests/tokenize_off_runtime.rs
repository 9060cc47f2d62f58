//! Prompts of megabytes are tokenized off the async workers: while four of them are being
//! tokenized at once, `/ping` keeps answering (SageMaker gives it 2 s; we ask p99 < 100 ms).
//! Alone in its test binary, so no other test loads the machine meanwhile.

use lantern_tests::tiny_server;
use std::time::{Duration, Instant};

#[test]
fn ping_stays_fast_while_multi_megabyte_prompts_are_tokenized() {
    let (_model, server) = tiny_server("llama", 6, &["--max-payload-bytes", "8000000"], &[]);
    // ~2.5 MB of text each: far past the prompt limit, so each is refused, after tokenizing.
    let words = [
        "river", "mountain", "quiet", "engine", "paper", "window", "orange",
    ];
    let prompt: String = (0..400_000)
        .map(|i| words[i % words.len()])
        .collect::<Vec<_>>()
        .join(" ");
    let body = serde_json::json!({"inputs": prompt, "parameters": {"max_new_tokens": 1}});
    let started = Instant::now();
    let done = std::sync::atomic::AtomicUsize::new(0);
    let pings = std::thread::scope(|scope| {
        let senders: Vec<_> = (0..4)
            .map(|_| {
                scope.spawn(|| {
                    let reply = server.post("/generate", &body);
                    done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    reply
                })
            })
            .collect();
        let pinger = scope.spawn(|| {
            let mut latencies = Vec::new();
            while done.load(std::sync::atomic::Ordering::SeqCst) < 4
                && started.elapsed() < Duration::from_secs(60)
            {
                let sent = Instant::now();
                let status = server.get("/ping").status;
                latencies.push((sent.elapsed(), status));
                std::thread::sleep(Duration::from_millis(10));
            }
            latencies
        });
        for sender in senders {
            let (status, reply) = sender
                .join()
                .unwrap_or_else(|_| panic!("a sender panicked"));
            assert!(
                (400..500).contains(&status),
                "a refused prompt: {status} {reply}"
            );
        }
        pinger
            .join()
            .unwrap_or_else(|_| panic!("the pinger panicked"))
    });
    let busy = started.elapsed();
    assert!(pings.iter().all(|(_, status)| *status == 200), "{pings:?}");
    let mut latencies: Vec<Duration> = pings.iter().map(|(l, _)| *l).collect();
    latencies.sort();
    let p99 = latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)];
    eprintln!(
        "{} pings over {busy:?} of tokenizing: p99 {p99:?}, max {:?}",
        latencies.len(),
        latencies.last()
    );
    assert!(
        latencies.len() >= 20,
        "the prompts were tokenized too fast to measure: {busy:?}"
    );
    assert!(p99 < Duration::from_millis(100), "ping p99 {p99:?}");
}
