//! The chat page at /ui in a real browser: Debian's headless Chromium driven by Playwright
//! (`tests/browser/chat_page.py`, from the venv `.ci/run` makes) against the real binary on a
//! tiny dummy model. The script checks streaming, Stop (cancellation counted, KV blocks given
//! back), Markdown, stored hostile HTML, settings across reloads, errors, phone width, and that
//! nothing leaves the origin or breaks the Content-Security-Policy, and that a server asking
//! for an API key gets one from the page's key field; it takes screenshots into
//! `target/ui-screenshots/`. Without Playwright or Chromium the test says SKIPPED (CI has both).

use lantern_tests::{ci_python_with, skip, tiny_server};
use std::path::Path;
use std::process::Command;

const CHROMIUM: &str = "/usr/bin/chromium";
const KEY: &str = "page-key-41d0";

#[test]
fn the_chat_page_works_in_a_real_browser() {
    let Some(python) = ci_python_with("playwright") else {
        return;
    };
    if !Path::new(CHROMIUM).exists() {
        skip(&format!(
            "no Chromium at {CHROMIUM} (.ci/run installs Debian's `chromium`)"
        ));
        return;
    }
    let (_model, server) = tiny_server("llama", 4, &[], &[]);
    // A second server that asks for an API key: the page must ask for it too.
    let (_keyed_model, keyed) = tiny_server("llama", 4, &[], &[("LANTERN_API_KEY", KEY)]);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let shots = root.join("target/ui-screenshots");
    std::fs::create_dir_all(&shots).unwrap_or_else(|e| panic!("{e}"));
    let output = Command::new(&python)
        .arg(root.join("tests/browser/chat_page.py"))
        .arg(&server.base)
        .arg(&shots)
        .arg(CHROMIUM)
        .arg(&keyed.base)
        .arg(KEY)
        .output()
        .unwrap_or_else(|e| panic!("running the browser script: {e}"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stderr}\n{stdout}");
    eprintln!("chat page: {stdout}");
    for shot in ["desktop.png", "phone.png"] {
        let size = std::fs::metadata(shots.join(shot)).map_or(0, |m| m.len());
        assert!(size > 10_000, "{shot} is missing or empty ({size} bytes)");
    }
}
