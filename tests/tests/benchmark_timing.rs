//! `lantern benchmark`'s clock against a stub server whose delays are known: the first token
//! 150 ms after the request, then one token every 100 ms. The reported medians must be within
//! 5% of those delays. Alone in its test binary, so no other test loads the machine meanwhile.

use lantern_tests::lantern_binary;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

const FIRST_TOKEN: Duration = Duration::from_millis(150);
const BETWEEN_TOKENS: Duration = Duration::from_millis(100);
const TOKENS: usize = 5;

/// Reads one HTTP request; returns its path.
fn read_request(stream: &TcpStream) -> Option<String> {
    let mut reader = BufReader::new(stream);
    let mut request_line = String::new();
    reader.read_line(&mut request_line).ok()?;
    let path = request_line.split_whitespace().nth(1)?.to_string();
    let mut length = 0;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        if header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(path)
}

/// TGI's `/generate_stream`, slowly; 404 for anything else (`/v1/models`, `/tokenize`).
fn serve(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let Some(path) = read_request(&stream) else {
        return;
    };
    if path != "/generate_stream" {
        let _ = stream
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    }
    let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n";
    if stream.write_all(head.as_bytes()).is_err() {
        return;
    }
    std::thread::sleep(FIRST_TOKEN);
    for index in 0..TOKENS {
        if index > 0 {
            std::thread::sleep(BETWEEN_TOKENS);
        }
        let details = if index + 1 == TOKENS {
            format!("{{\"generated_tokens\": {TOKENS}}}")
        } else {
            "null".into()
        };
        let event = format!(
            "data: {{\"token\": {{\"id\": {index}, \"text\": \" t{index}\", \"special\": false}}, \"details\": {details}}}\n\n"
        );
        if stream.write_all(event.as_bytes()).is_err() {
            return;
        }
    }
}

#[test]
fn reported_ttft_and_itl_match_a_stub_servers_known_delays() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || serve(stream));
        }
    });
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let summaries = dir.path().join("levels.json");
    let output = Command::new(lantern_binary())
        .args([
            "benchmark",
            "--url",
            &format!("http://127.0.0.1:{port}"),
            "--api",
            "tgi",
            "--concurrency",
            "2",
            "--requests",
            "8",
            "--warmup",
            "0",
            "--output-len",
            "5",
            "--json",
        ])
        .arg(&summaries)
        .output()
        .unwrap_or_else(|e| panic!("running lantern benchmark: {e}"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let text = std::fs::read_to_string(&summaries).unwrap_or_else(|e| panic!("{e}"));
    let levels: Value = serde_json::from_str(&text).unwrap_or_default();
    let level = &levels[0];
    assert_eq!(level["completed"], 8, "{level}");
    assert_eq!(level["output_tokens"], 8 * TOKENS, "{level}");
    let median = |key: &str| level[key]["p50"].as_f64().unwrap_or(f64::NAN);
    let within_5_percent = |measured: f64, expected: Duration| {
        let expected = expected.as_secs_f64() * 1000.0;
        (measured - expected).abs() <= 0.05 * expected
    };
    assert!(
        within_5_percent(median("ttft_ms"), FIRST_TOKEN),
        "TTFT p50 {}",
        median("ttft_ms")
    );
    assert!(
        within_5_percent(median("itl_ms"), BETWEEN_TOKENS),
        "ITL p50 {}",
        median("itl_ms")
    );
    let e2e = FIRST_TOKEN + BETWEEN_TOKENS * (TOKENS as u32 - 1);
    assert!(
        within_5_percent(median("e2e_ms"), e2e),
        "E2E p50 {}",
        median("e2e_ms")
    );
}
