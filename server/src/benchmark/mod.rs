//! `lantern benchmark`: load against any TGI-, OpenAI- or SageMaker-compatible endpoint, with
//! TTFT, inter-token and end-to-end latency percentiles, throughput, errors and goodput per
//! load level, optionally side by side with a second server (`--compare`). The JSON schema of
//! `--json` is documented in `benches/BENCHMARK.md`.
//!
//! A run: resolve each server's model name, make every prompt (exact lengths through the
//! server's `/tokenize`), warm each server up, then for each level and each server run the
//! level (`load.rs`), summarise it (`stats.rs`) and finally write the table, JSON and report
//! (`report.rs`, `plots.rs`). Ctrl-C ends the level in flight and still writes everything.

mod api;
mod client;
mod load;
mod plots;
mod probe;
mod progress;
mod report;
mod sse;
mod stats;
mod workload;

use anyhow::{bail, Context};
use api::{Api, Generation};
use client::{Client, Connections, Target};
use load::LevelPlan;
use report::LevelReport;
use stats::{LevelRun, LoadShape, Slos};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use workload::{Dataset, WorkloadSpec};

/// Most distinct prompts a run makes; runs with more requests send them again in order.
const DISTINCT_PROMPTS: usize = 2000;

#[derive(Debug, clap::Args)]
pub struct BenchmarkArgs {
    /// The server's base URL, e.g. `http://127.0.0.1:8080`.
    #[arg(long)]
    url: String,
    /// The request format to send.
    #[arg(long, value_enum, default_value = "openai-completions")]
    api: Api,
    /// The path requests are posted to under `--url` (default: the API's, e.g.
    /// `/v1/completions`), for gateways that expose an endpoint elsewhere (`/prod/invoke`).
    #[arg(long)]
    endpoint_path: Option<String>,
    /// The `model` field of OpenAI requests (TGI's `parameters.adapter_id`); default: the
    /// first of the server's `/v1/models`. Several, comma-separated: requests take them in
    /// turn (a base and its LoRA adapters, mixed uniformly); a `--prompts` line's `"model"`
    /// wins.
    #[arg(long, value_delimiter = ',')]
    model: Vec<String>,
    /// The server's name in tables and charts; default: the URL's host and port.
    #[arg(long)]
    label: Option<String>,
    /// A second server to run the same load against, level by level, in the same run.
    #[arg(long)]
    compare: Option<String>,
    /// The second server's request format; default: `--api`.
    #[arg(long, value_enum)]
    compare_api: Option<Api>,
    /// The second server's `model` field, for all its requests; default: the first of its
    /// `/v1/models`, each request naming its own model as `--model` spreads them.
    #[arg(long)]
    compare_model: Option<String>,
    /// The second server's name in tables and charts; default: its host and port.
    #[arg(long)]
    compare_label: Option<String>,
    /// An HTTP header for every request, `Name: value` (repeatable), e.g. an API key.
    #[arg(long = "header", value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// Closed-loop levels: this many clients, each sending its next request when its previous
    /// answer is in.
    #[arg(long, value_delimiter = ',', conflicts_with = "request_rate")]
    concurrency: Vec<usize>,
    /// Open-loop levels: requests per second, Poisson arrivals.
    #[arg(long, value_delimiter = ',')]
    request_rate: Vec<f64>,
    /// With `--request-rate`: most requests in flight at once.
    #[arg(long)]
    max_concurrency: Option<usize>,
    /// Requests per level (default 100 unless `--duration` is given). Up to 2000 distinct
    /// prompts are made; more requests reuse them in order.
    #[arg(long)]
    requests: Option<usize>,
    /// Seconds per level: no new request after this.
    #[arg(long)]
    duration: Option<f64>,
    /// Requests sent to each server before the first level, not counted.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    #[arg(long, value_enum, default_value = "random")]
    dataset: Dataset,
    /// Prompt tokens per request (per turn for multi-turn); exact when the server has
    /// `/tokenize` (TGI, Lantern, llama.cpp, vLLM), else about this many words.
    #[arg(long, default_value_t = 128)]
    input_len: usize,
    /// New tokens per request.
    #[arg(long, default_value_t = 128)]
    output_len: u32,
    /// Let the model stop where it wants: no `max_tokens` and no `ignore_eos`.
    #[arg(long)]
    free_output: bool,
    /// Ask for exactly `--output-len` tokens with `ignore_eos` (servers that lack it ignore it).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    ignore_eos: bool,
    /// `--dataset shared-prefix`: tokens of the system prompt every request shares.
    #[arg(long, default_value_t = 512)]
    prefix_len: usize,
    /// `--dataset multi-turn`: user turns per conversation.
    #[arg(long, default_value_t = 3)]
    turns: usize,
    /// `--dataset jsonl`: the prompts file.
    #[arg(long)]
    prompts: Option<PathBuf>,
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// JSON object merged into every request body, for server-specific parameters.
    #[arg(long)]
    extra_body: Option<String>,
    /// Seeds prompts and arrivals: same flags, same load.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// SLO on time to first token for goodput, in ms.
    #[arg(long)]
    slo_ttft_ms: Option<f64>,
    /// SLO on a request's mean inter-token latency for goodput, in ms.
    #[arg(long)]
    slo_itl_ms: Option<f64>,
    /// `per-request`: a new connection for every request; `keep-alive`: reuse idle ones.
    #[arg(long, value_enum, default_value = "per-request")]
    connections: Connections,
    /// Seconds before a request counts as a timeout.
    #[arg(long, default_value_t = 600.0)]
    request_timeout: f64,
    /// Write the level summaries as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the markdown table.
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Write one JSON line per request.
    #[arg(long)]
    requests_jsonl: Option<PathBuf>,
    /// Write the report: report.html (table and charts in one file), the charts as SVG,
    /// results.json and results.md.
    #[arg(long)]
    report: Option<PathBuf>,
}

pub fn run(args: BenchmarkArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(run_async(args));
    // A prompt builder interrupted mid-count finishes its one request, then sees the cancel.
    runtime.shutdown_timeout(Duration::from_secs(5));
    result
}

async fn run_async(args: BenchmarkArgs) -> anyhow::Result<()> {
    let shapes = load_shapes(&args)?;
    if args.requests == Some(0) {
        bail!("--requests must be at least 1");
    }
    let duration = args
        .duration
        .map(|s| {
            Duration::try_from_secs_f64(s)
                .context("--duration must be a positive number of seconds")
        })
        .transpose()?;
    let requests = match (args.requests, duration) {
        (None, None) => Some(100),
        (requests, _) => requests,
    };
    let timeout = Duration::try_from_secs_f64(args.request_timeout)
        .context("--request-timeout must be a positive number of seconds")?;
    let mut clients = Vec::new();
    for mut target in targets(&args)? {
        if target.generation.model.is_empty() {
            target.generation.model = probe::model_name(&target).await;
        }
        clients.push(Client::new(target, timeout, args.connections)?);
    }

    let spec = WorkloadSpec {
        dataset: args.dataset,
        input_len: args.input_len,
        output_len: (!args.free_output).then_some(args.output_len),
        prefix_len: args.prefix_len,
        turns: args.turns,
        prompts_file: args.prompts.clone(),
        seed: args.seed,
        // One model needs no spreading: every request names the server's.
        models: if args.model.len() > 1 {
            args.model.clone()
        } else {
            Vec::new()
        },
    };
    let (cancel_sender, cancel) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("interrupted: stopping, and writing what was measured");
            let _ = cancel_sender.send(true);
        }
    });
    // Every prompt is made (and its length counted by the server) before the first request.
    // The warm-up and each level get prompts of their own: a server that caches prompts
    // (llama.cpp's slots keep theirs) would otherwise find a later level's prompts already
    // computed and report a time to first token that no new prompt sees. Runs longer than
    // their share of prompts cycle through it.
    let per_level = requests
        .unwrap_or(DISTINCT_PROMPTS / shapes.len().max(1))
        .clamp(1, DISTINCT_PROMPTS);
    let prompts_for = |seed: u64, count: usize| {
        let spec = WorkloadSpec {
            seed,
            ..spec.clone()
        };
        let mut interrupted = cancel.clone();
        let client = &clients[0];
        let cancel = cancel.clone();
        async move {
            tokio::select! {
                jobs = probe::build_workload(client, spec, count, cancel) => jobs.map(Arc::new),
                _ = interrupted.wait_for(|c| *c) => bail!("interrupted before the first level"),
            }
        }
    };
    eprintln!("making {} prompts", args.warmup + per_level * shapes.len());
    let warmup_jobs = prompts_for(spec.seed.wrapping_sub(1), args.warmup.max(1)).await?;
    let mut level_jobs = Vec::with_capacity(shapes.len());
    for index in 0..shapes.len() {
        level_jobs.push(prompts_for(spec.seed.wrapping_add(index as u64), per_level).await?);
    }
    for client in &clients {
        warm_up(client, &warmup_jobs, args.warmup, cancel.clone()).await?;
    }
    let slos = Slos {
        ttft_ms: args.slo_ttft_ms,
        itl_ms: args.slo_itl_ms,
    };
    let mut levels = Vec::new();
    'levels: for (index, shape) in shapes.iter().enumerate() {
        for client in &clients {
            if *cancel.borrow() {
                break 'levels;
            }
            let label = &client.target().label;
            let plan = LevelPlan {
                shape: *shape,
                requests,
                duration,
                max_concurrency: args.max_concurrency,
                seed: args.seed.wrapping_add(index as u64),
            };
            let name = match shape {
                LoadShape::Concurrency(c) => format!("{label} c={c}"),
                LoadShape::RequestRate(r) => format!("{label} {r} req/s"),
            };
            let progress = progress::Progress::start(name, requests);
            let result = load::run_level(
                client,
                level_jobs[index].clone(),
                plan,
                progress,
                cancel.clone(),
            )
            .await;
            let run = LevelRun {
                server: label,
                shape: *shape,
                records: &result.records,
                duration_s: result.duration_s,
                interrupted: result.interrupted,
            };
            let summary = stats::summarise(&run, slos);
            levels.push(LevelReport {
                summary,
                records: result.records,
            });
        }
    }

    let table = report::markdown(&levels);
    println!("{table}");
    if let Some(path) = &args.json {
        report::write_json(path, &levels)?;
    }
    if let Some(path) = &args.markdown {
        std::fs::write(path, &table).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.requests_jsonl {
        report::write_requests(path, &levels)?;
    }
    if let Some(dir) = &args.report {
        let command: Vec<String> = std::env::args().collect();
        report::write_report(dir, &levels, &command.join(" "))?;
        eprintln!("report written to {}", dir.join("report.html").display());
    }
    Ok(())
}

fn load_shapes(args: &BenchmarkArgs) -> anyhow::Result<Vec<LoadShape>> {
    if args.concurrency.contains(&0) {
        bail!("--concurrency levels must be at least 1");
    }
    if args
        .request_rate
        .iter()
        .any(|r| !(r.is_finite() && *r > 0.0))
    {
        bail!("--request-rate levels must be positive numbers of requests per second");
    }
    Ok(if !args.request_rate.is_empty() {
        args.request_rate
            .iter()
            .map(|&r| LoadShape::RequestRate(r))
            .collect()
    } else if !args.concurrency.is_empty() {
        args.concurrency
            .iter()
            .map(|&c| LoadShape::Concurrency(c))
            .collect()
    } else {
        vec![LoadShape::Concurrency(1)]
    })
}

fn targets(args: &BenchmarkArgs) -> anyhow::Result<Vec<Target>> {
    let mut headers = reqwest::header::HeaderMap::new();
    for header in &args.headers {
        let (name, value) = header
            .split_once(':')
            .with_context(|| format!("--header {header:?}: expected `Name: value`"))?;
        headers.insert(
            reqwest::header::HeaderName::from_bytes(name.trim().as_bytes())
                .with_context(|| format!("--header {header:?}: bad name"))?,
            reqwest::header::HeaderValue::from_str(value.trim())
                .with_context(|| format!("--header {header:?}: bad value"))?,
        );
    }
    let extra_body = match &args.extra_body {
        None => serde_json::Map::new(),
        Some(text) => match serde_json::from_str(text).context("--extra-body")? {
            serde_json::Value::Object(fields) => fields,
            _ => bail!("--extra-body must be a JSON object"),
        },
    };
    let generation = |model: Option<&String>, per_request_models: bool| Generation {
        model: model.cloned().unwrap_or_default(),
        temperature: args.temperature,
        ignore_eos: args.ignore_eos && !args.free_output,
        extra_body: extra_body.clone(),
        per_request_models,
    };
    let mut targets = vec![Target {
        label: args.label.clone().unwrap_or_else(|| host_of(&args.url)),
        base_url: args.url.clone(),
        endpoint_path: args.endpoint_path.clone(),
        api: args.api,
        generation: generation(args.model.first(), true),
        headers: headers.clone(),
    }];
    if let Some(url) = &args.compare {
        let mut label = args.compare_label.clone().unwrap_or_else(|| host_of(url));
        if label == targets[0].label {
            label.push_str(" (compared)");
        }
        targets.push(Target {
            label,
            base_url: url.clone(),
            endpoint_path: None,
            api: args.compare_api.unwrap_or(args.api),
            generation: generation(args.compare_model.as_ref(), args.compare_model.is_none()),
            headers,
        });
    }
    for target in &targets {
        if !(target.base_url.starts_with("http://") || target.base_url.starts_with("https://")) {
            bail!(
                "{}: the URL must start with http:// or https://",
                target.base_url
            );
        }
    }
    Ok(targets)
}

fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.split('/').next().unwrap_or(rest).to_string()
}

/// Sends `count` requests one at a time; fails the run when none succeeds (a wrong URL or
/// API should stop the run before the levels, with the server's answer).
async fn warm_up(
    client: &Client,
    jobs: &[workload::Job],
    count: usize,
    cancel: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut last_error = None;
    let mut succeeded = false;
    for job in jobs.iter().cycle().take(count) {
        let record = client
            .send(&job.first, std::time::Instant::now(), cancel.clone())
            .await;
        match record.outcome.error_kind() {
            None => succeeded = true,
            Some(kind) => {
                last_error = Some(format!("{kind}: {}", record.error.unwrap_or_default()))
            }
        }
    }
    match last_error {
        Some(error) if !succeeded => bail!(
            "{} ({}): every warm-up request failed; the last: {error}",
            client.target().label,
            client.target().base_url
        ),
        _ => Ok(()),
    }
}
