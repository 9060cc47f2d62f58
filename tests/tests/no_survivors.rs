//! No test leaves a server behind: the `http_api` test binary keeps its server in a `static`
//! (never dropped), so this runs that binary with a marker in its environment, which the
//! servers it starts inherit, and after it exits looks for any process still carrying it.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// The newest `http_api-*` test binary beside this one (cargo builds every test binary of the
/// package before running any).
fn http_api_binary() -> Option<PathBuf> {
    let dir = std::env::current_exe().ok()?.parent()?.to_path_buf();
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            name.starts_with("http_api-") && !name.contains('.')
        })
        .max_by_key(|entry| entry.metadata().and_then(|m| m.modified()).ok())
        .map(|entry| entry.path())
}

/// Processes whose environment holds `marker`.
fn carrying(marker: &str) -> Vec<u32> {
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    processes
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|&b| b == 0).any(|var| var == marker.as_bytes()))
        })
        .collect()
}

#[test]
fn the_http_tests_leave_no_server_running() {
    let Some(binary) = http_api_binary() else {
        lantern_tests::skip("the http_api test binary is not built (cargo test builds it)");
        return;
    };
    let marker = format!("LANTERN_SURVIVOR_MARKER={}", std::process::id());
    let (name, value) = marker.split_once('=').unwrap_or_default();
    let output = Command::new(&binary)
        .env(name, value)
        .arg("--test-threads=2")
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", binary.display()));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    // The shared server notices its stdin closing and exits within its shutdown path.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut left = carrying(&marker);
    while !left.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        left = carrying(&marker);
    }
    assert!(left.is_empty(), "processes left running: {left:?}");
}
