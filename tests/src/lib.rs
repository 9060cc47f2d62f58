//! Shared helpers of the end-to-end tests, which run the real `lantern` binary.

use std::path::PathBuf;

/// `target/<profile>/lantern`, built by `cargo test --workspace` (the `lantern` package has
/// integration tests, so cargo builds its binary before any test runs).
pub fn lantern_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test-binary> -> target/<profile>/lantern
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(PathBuf::from)
        .unwrap_or_default();
    let binary = profile_dir.join(format!("lantern{}", std::env::consts::EXE_SUFFIX));
    assert!(
        binary.exists(),
        "{} is missing: run the tests with `cargo test --workspace`, which builds it",
        binary.display()
    );
    binary
}
