//! The API key is never printed: not by `lantern serve --help` (which shows other settings'
//! environment values), not in the logs of a server that refused and served requests with it.

use lantern_tests::{lantern_binary, tiny_server};
use std::process::Command;
use std::time::Duration;

const KEY: &str = "secret-key-5be2f7";

#[test]
fn help_and_logs_never_show_the_key() {
    let help = Command::new(lantern_binary())
        .args(["serve", "--help"])
        .env("LANTERN_API_KEY", KEY)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("--api-key"), "{text}");
    assert!(!text.contains(KEY), "--help shows the key");

    let (_model, server) = tiny_server("llama", 4, &[], &[("LANTERN_API_KEY", KEY)]);
    let refused = server.try_post_raw("/generate", "application/json", r#"{"inputs": "hi"}"#);
    assert_eq!(refused.map(|r| r.status), Some(401));
    let reply = server.get("/ping");
    assert_eq!(reply.status, 200);
    // The key reaches the server only in headers, which it never logs.
    assert!(server.log_says("request", Duration::from_secs(5)));
    assert!(!server.log().contains(KEY), "the log shows the key");
    assert!(!server.stdout().contains(KEY), "stdout shows the key");
}
