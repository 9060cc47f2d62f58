//! The binary's own command line. (Having an integration test here also makes
//! `cargo test --workspace` build `target/<profile>/lantern`, which the end-to-end tests run.)

use std::process::Command;

#[test]
fn help_lists_the_commands() {
    let output = Command::new(env!("CARGO_BIN_EXE_lantern"))
        .arg("--help")
        .output();
    let stdout = output
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    assert!(stdout.contains("dummy-model"), "{stdout}");
}

#[test]
fn unknown_architecture_is_refused_with_the_choices() {
    let output = Command::new(env!("CARGO_BIN_EXE_lantern"))
        .args([
            "dummy-model",
            "--arch",
            "gpt2",
            "--out",
            "/tmp/never-written",
        ])
        .output();
    let (status, stderr) = output
        .map(|o| {
            (
                o.status.success(),
                String::from_utf8_lossy(&o.stderr).into_owned(),
            )
        })
        .unwrap_or_default();
    assert!(!status);
    assert!(
        stderr.contains("llama") && stderr.contains("qwen3"),
        "{stderr}"
    );
}
