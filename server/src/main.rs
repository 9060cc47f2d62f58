//! `lantern`: `serve` runs the server; `dummy-model` writes a seeded model directory for tests
//! and load tests.

mod cli;
mod config;
mod http;
mod metrics;
mod serve;

use clap::Parser;

fn main() -> std::process::ExitCode {
    lantern_models::pin_thread_count();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let command = cli::Cli::parse();
    match command.run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
