//! Command-line interface of the `lantern` binary.

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use lantern_models::dummy::gguf::GgufTokenizer;
use lantern_models::dummy::{write_dummy_gguf, write_dummy_model, DummySize, DummySpec};
use lantern_models::Architecture;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "lantern",
    version,
    about = "An LLM inference server for SageMaker, ECS, EKS and docker"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve a model over HTTP: the SageMaker contract (/ping, /invocations) and the TGI,
    /// OpenAI and Bedrock APIs. Every option is also an environment variable.
    Serve(Box<crate::config::ServeArgs>),
    /// Write a complete Hugging Face model directory with seeded random weights and a real
    /// tokenizer: for tests and for load-testing a deployment without downloading weights.
    DummyModel(DummyModelArgs),
    /// Write a PEFT LoRA adapter directory for a model directory, with seeded random weights:
    /// for tests and for load-testing adapter serving.
    DummyAdapter(DummyAdapterArgs),
    /// Load-test a TGI-, OpenAI- or SageMaker-compatible endpoint (this server or another):
    /// TTFT, inter-token and end-to-end latency percentiles and throughput per concurrency or
    /// request rate, as a table, JSON and an HTML report with SVG charts.
    Benchmark(Box<crate::benchmark::BenchmarkArgs>),
    /// The checks `benches/gpu/verify.sh` runs on a GPU machine (parity, engine, throughput).
    #[command(hide = true)]
    Selftest(crate::selftest::SelftestArgs),
}

#[derive(Debug, clap::Args)]
struct DummyModelArgs {
    /// Model family whose layout and config the directory follows.
    #[arg(long, value_enum)]
    arch: ArchArg,
    /// `tiny` (a few hundred KB, for tests), `small` (SmolLM2-135M's shape) or `1b`
    /// (Llama-3.2-1B's shape with SmolLM2's vocabulary size): the last two for benchmarks.
    #[arg(long, value_enum, default_value = "tiny")]
    size: SizeArg,
    /// `hf`: a Hugging Face directory (config.json, model.safetensors, tokenizer files);
    /// `gguf`: one GGUF file in llama.cpp's layout, f16 matrices, with the tokenizer in its
    /// metadata (what llama-server and llama-quantize take).
    #[arg(long, value_enum, default_value = "hf")]
    format: FormatArg,
    /// With `--format gguf`: copy the tokenizer metadata of this GGUF file (its vocabulary
    /// must have the model's size, e.g. SmolLM2's for `small` and `1b`) instead of writing
    /// the dummy tokenizer's.
    #[arg(long)]
    tokenizer_from: Option<PathBuf>,
    /// Same seed, byte-identical files.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Directory to write (`hf`), or the .gguf file (`gguf`); existing files are overwritten.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Debug, clap::Args)]
struct DummyAdapterArgs {
    /// The model directory (Hugging Face layout, one model.safetensors) the adapter is for.
    #[arg(long)]
    base: PathBuf,
    #[arg(long, default_value_t = 16)]
    rank: usize,
    /// lora_alpha (scaling alpha/r, or alpha/sqrt(r) with --rslora). Unset: twice the rank.
    #[arg(long)]
    alpha: Option<f64>,
    #[arg(long)]
    rslora: bool,
    /// Target modules, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
    )]
    targets: Vec<String>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Store the weights in f32 rather than bf16 (what PEFT saves for a bf16 model).
    #[arg(long)]
    f32: bool,
    /// Directory to write (adapter_config.json, adapter_model.safetensors).
    #[arg(long)]
    out: PathBuf,
    /// Also write the base with the adapter merged into its weights (f32) to this directory:
    /// the oracle the end-to-end tests compare a served adapter with.
    #[arg(long, hide = true)]
    merged_into: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum FormatArg {
    Hf,
    Gguf,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ArchArg {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
    Phi3,
    Gemma2,
    /// Gemma 3's text model (`gemma3_text`).
    #[value(name = "gemma3_text", alias = "gemma3")]
    Gemma3,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum SizeArg {
    Tiny,
    Small,
    #[value(name = "1b")]
    OneB,
}

impl Cli {
    pub fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Serve(args) => {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .build()?;
                let served = runtime.block_on(crate::serve::run(*args));
                // Dropping a runtime waits for its blocking tasks, and a read of a stdin that
                // stays open (`--exit-on-stdin-eof` stopped by SIGTERM) never ends.
                runtime.shutdown_timeout(std::time::Duration::from_secs(1));
                served
            }
            Command::Benchmark(args) => crate::benchmark::run(*args),
            Command::Selftest(args) => crate::selftest::run(args),
            Command::DummyAdapter(args) => {
                let spec = lantern_models::dummy::adapter::AdapterSpec {
                    rank: args.rank,
                    alpha: args.alpha.unwrap_or(2.0 * args.rank as f64),
                    rslora: args.rslora,
                    targets: args.targets,
                    seed: args.seed,
                    zero_b: false,
                    bf16: !args.f32,
                };
                lantern_models::dummy::adapter::write_dummy_adapter(&spec, &args.base, &args.out)
                    .with_context(|| format!("writing a dummy adapter to {}", args.out.display()))?;
                if let Some(merged) = &args.merged_into {
                    lantern_models::dummy::adapter::write_merged_model(
                        &args.base, &args.out, merged,
                    )
                    .with_context(|| format!("writing the merged model to {}", merged.display()))?;
                }
                tracing::info!(out = %args.out.display(), rank = spec.rank, "dummy adapter written");
                Ok(())
            }
            Command::DummyModel(args) => {
                let spec = DummySpec {
                    architecture: match args.arch {
                        ArchArg::Llama => Architecture::Llama,
                        ArchArg::Mistral => Architecture::Mistral,
                        ArchArg::Qwen2 => Architecture::Qwen2,
                        ArchArg::Qwen3 => Architecture::Qwen3,
                        ArchArg::Phi3 => Architecture::Phi3,
                        ArchArg::Gemma2 => Architecture::Gemma2,
                        ArchArg::Gemma3 => Architecture::Gemma3,
                    },
                    size: match args.size {
                        SizeArg::Tiny => DummySize::Tiny,
                        SizeArg::Small => DummySize::Small,
                        SizeArg::OneB => DummySize::OneB,
                    },
                    seed: args.seed,
                };
                let written = match (args.format, &args.tokenizer_from) {
                    (FormatArg::Hf, Some(_)) => {
                        anyhow::bail!("--tokenizer-from goes with --format gguf")
                    }
                    (FormatArg::Hf, None) => write_dummy_model(spec, &args.out),
                    (FormatArg::Gguf, from) => {
                        let tokenizer = from
                            .as_deref()
                            .map_or(GgufTokenizer::FromDirectory, GgufTokenizer::FromGguf);
                        write_dummy_gguf(spec, &args.out, tokenizer)
                    }
                };
                written
                    .with_context(|| format!("writing a dummy model to {}", args.out.display()))?;
                tracing::info!(out = %args.out.display(), ?spec, "dummy model written");
                Ok(())
            }
        }
    }
}
