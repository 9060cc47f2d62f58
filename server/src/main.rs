//! `lantern`: `serve` runs the server; `dummy-model` writes a seeded model directory for tests
//! and load tests; `benchmark` load-tests a server.

use clap::Parser;
use lantern::cli;

/// jemalloc, whose background threads return freed memory to the OS once a burst is over
/// (glibc kept 10-20 MB of it in its per-thread arenas after a soak; mimalloc more).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    lantern_models::pin_thread_count();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // LOG_FORMAT=json: one JSON object per line, which CloudWatch parses.
    let json = std::env::var("LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    if json {
        logs.json().init();
    } else {
        logs.init();
    }
    let command = cli::Cli::parse();
    match command.run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) if json => {
            // The reason the process stops, as one JSON line like every other (CloudWatch).
            tracing::error!(error = format!("{error:#}"), "lantern stopped");
            std::process::ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
