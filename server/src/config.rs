//! `lantern serve` settings: one clap struct, every field also an environment variable (TGI's
//! names where TGI has one, so a TGI deployment's settings carry over), validated once.

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use lantern_engine::{CacheSize, EngineConfig, FaultPolicy};
use lantern_kernels::device_choice::{DeviceChoice, CPU_BLOCK_SIZE};
use lantern_models::{Dequantize, KernelPath, ModelSource, QuantFormat};
use std::path::Path;
use values::{parse_bytes, parse_lora_adapters};

mod values;

/// Served when no model is named and `/opt/ml/model` holds none.
pub const DEFAULT_MODEL: &str = "HuggingFaceTB/SmolLM2-135M-Instruct";
/// SageMaker's model artifact directory (`SM_MODEL_DIR` overrides it, as in SageMaker's own
/// containers; tests use that to stand in for it).
pub const SAGEMAKER_MODEL_DIR: &str = "/opt/ml/model";

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Model: a local directory (Hugging Face layout), a .gguf file, or a hub id. Unset: TGI's
    /// MODEL_ID, then /opt/ml/model when it holds a model (SageMaker), then SmolLM2-135M-Instruct.
    #[arg(long, env = "HF_MODEL_ID")]
    pub model_id: Option<String>,
    /// Hub revision (branch, tag or commit).
    #[arg(long, env = "REVISION")]
    pub revision: Option<String>,
    /// Address to listen on.
    #[arg(long, env = "LANTERN_HOST", default_value = "0.0.0.0")]
    pub host: String,
    /// Port to listen on; SAGEMAKER_BIND_TO_PORT (multi-container endpoints) wins over it.
    #[arg(long, env = "PORT", default_value_t = 8080)]
    pub port: u16,
    /// Weights dtype. Unset: bfloat16 on GPU; on CPU bfloat16 for bfloat16 checkpoints served by
    /// the CPU kernels (f32 arithmetic, half the bytes), else float32.
    #[arg(long, env = "DTYPE", value_enum)]
    pub dtype: Option<DtypeArg>,
    /// Expand GGUF weights to dense at load. auto: never on GPU; on CPU, never for files whose
    /// every matrix is in a format the CPU integer kernels take (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
    /// Q4_K, Q5_K, Q6_K: served quantized whatever the memory), else when the dense weights
    /// take under half the free memory. on: always (more memory, the dense kernels); off: never.
    #[arg(long, env = "LANTERN_DEQUANTIZE", value_enum, default_value = "auto")]
    pub dequantize: DequantizeArg,
    /// What runs the forward pass. auto: the CPU kernels on CPU with dense weights or GGUF
    /// Q4_0/Q4_1/Q5_0/Q5_1/Q8_0/Q4_K/Q5_K/Q6_K blocks, else the portable candle path;
    /// portable forces the reference path (debugging, comparison).
    #[arg(long, env = "LANTERN_KERNELS", value_enum, default_value = "auto")]
    pub kernels: KernelsArg,
    /// Quantize a safetensors checkpoint's matrices at load (CPU kernels): q8_0 (a quarter of
    /// f32's bytes, closest to the original), q4_k (llama.cpp's usual 4-bit format; matrices
    /// whose input size is not a multiple of 256 fall back to q4_0, logged), q4_0/q4_1 (about
    /// an eighth), q5_0/q5_1/q5_k/q6_k.
    #[arg(long, env = "LANTERN_QUANTIZE", value_enum)]
    pub quantize: Option<QuantizeArg>,
    /// Longest prompt accepted, in tokens (TGI's legacy MAX_INPUT_LENGTH also works).
    #[arg(long, env = "MAX_INPUT_TOKENS")]
    pub max_input_tokens: Option<usize>,
    /// Prompt plus new tokens allowed per request.
    #[arg(long, env = "MAX_TOTAL_TOKENS", default_value_t = 4096)]
    pub max_total_tokens: usize,
    /// Prompt tokens one engine step may prefill: higher raises throughput and the latency other requests see.
    #[arg(long, env = "MAX_BATCH_PREFILL_TOKENS", default_value_t = 512)]
    pub max_batch_prefill_tokens: usize,
    /// While sequences are decoding, the most time the prompt tokens prefilled in a step may
    /// add to it (learned from measured step times): a decoding sequence's next token waits
    /// behind at most this much prefill, and long prompts progress over several steps. With
    /// nothing decoding, prefill runs at MAX_BATCH_PREFILL_TOKENS. 0: no bound.
    #[arg(long, env = "LANTERN_MAX_DECODE_STALL_MS", default_value_t = lantern_engine::config::DEFAULT_MAX_DECODE_STALL_MS)]
    pub max_decode_stall_ms: u64,
    /// Speculative decoding by prompt lookup: up to this many tokens, copied from where the
    /// sequence's last few tokens occurred before (in its prompt or output), are checked per
    /// step; each stands only if it is the token the request would get anyway, so outputs do
    /// not change: each row is chosen as plain decoding would, grammar and penalties
    /// included. Proposed only while it pays by measured step costs; halved when several
    /// sequences decode, off past 4. 0: off.
    #[arg(long, env = "SPECULATE", default_value_t = 0)]
    pub speculate: usize,
    /// A small model sharing the served model's tokenizer (a directory, .gguf file or hub
    /// id) that proposes the speculative tokens instead of prompt lookup: its greedy
    /// continuation of each sequence's last 256 tokens, checked like any proposal (outputs do
    /// not change). Turns --speculate to 4 when that is unset.
    #[arg(long, env = "LANTERN_DRAFT_MODEL")]
    pub draft_model: Option<String>,
    /// Tokens the whole batch may hold in the KV cache (caps the cache).
    #[arg(long, env = "MAX_BATCH_TOTAL_TOKENS")]
    pub max_batch_total_tokens: Option<usize>,
    /// Sequences decoded together each step.
    #[arg(long, env = "LANTERN_MAX_NUM_SEQS", default_value_t = 64)]
    pub max_num_seqs: usize,
    /// Requests in flight before new ones get 429.
    #[arg(long, env = "MAX_CONCURRENT_REQUESTS", default_value_t = 128)]
    pub max_concurrent_requests: usize,
    /// Stop sequences a request may give.
    #[arg(long, env = "MAX_STOP_SEQUENCES", default_value_t = 4)]
    pub max_stop_sequences: usize,
    /// max_new_tokens when a request gives none (capped by what fits in max_total_tokens).
    #[arg(long, env = "LANTERN_DEFAULT_MAX_NEW_TOKENS", default_value_t = 256)]
    pub default_max_new_tokens: usize,
    /// What the KV cache stores keys and values as: auto (f16 on the CPU kernels, as
    /// llama.cpp; the weights' dtype on the portable path and GPUs), f32, f16, bf16. Half
    /// precision halves the cache's memory (twice the tokens in the same bytes) and the bytes
    /// attention reads; values are rounded to nearest even when written.
    #[arg(
        long,
        env = "LANTERN_KV_CACHE_DTYPE",
        value_enum,
        default_value = "auto"
    )]
    pub kv_cache_dtype: KvCacheDtypeArg,
    /// KV cache size in bytes (suffixes K, M, G, Ki, Mi, Gi). Unset: 30% of free memory on
    /// CPU; on a GPU, what --gpu-memory-utilization leaves.
    #[arg(long, env = "LANTERN_KV_CACHE_MEMORY", value_parser = parse_bytes)]
    pub kv_cache_memory: Option<usize>,
    /// GPU: the fraction of the GPU's memory Lantern may use in all (weights, activations, KV
    /// cache); the KV cache gets what the rest leaves (TGI's CUDA_MEMORY_FRACTION, vLLM's
    /// gpu_memory_utilization). MAX_BATCH_TOTAL_TOKENS caps it; --kv-cache-memory wins.
    #[arg(long, env = "CUDA_MEMORY_FRACTION", default_value_t = 0.9)]
    pub gpu_memory_utilization: f64,
    /// Where the model runs: auto (CUDA GPU 0 when this build has CUDA and a GPU answers, else
    /// the CPU), cpu, cuda or cuda:N.
    #[arg(long, env = "LANTERN_DEVICE", default_value = "auto")]
    pub device: String,
    /// Tokens per KV-cache block. Unset: 16 on CPU, 32 on a GPU (FlashAttention's paged
    /// cache takes multiples of 32).
    #[arg(long, env = "LANTERN_BLOCK_SIZE")]
    pub block_size: Option<usize>,
    /// Largest request body accepted (SageMaker's real-time limit is 6 MB).
    #[arg(long, env = "LANTERN_MAX_PAYLOAD_BYTES", default_value_t = 6 * 1024 * 1024)]
    pub max_payload_bytes: usize,
    /// GPUs SageMaker gives the container. With --data-parallel unset, Lantern runs one
    /// engine per GPU (at most this many) when the model fits one GPU.
    #[arg(long, env = "SM_NUM_GPUS")]
    pub num_gpus: Option<usize>,
    /// Engines serving the model, each with its own device, weights and KV cache, behind one
    /// HTTP front: a request goes to the engine with the least outstanding work, a
    /// conversation's next turn back to the engine holding its prefix while load allows. An
    /// engine that fails fails only its own requests. Unset: one engine per visible GPU when
    /// the model fits one GPU, else one. On the CPU, engines share the cores and the KV-cache
    /// budget (isolation, no speed-up).
    #[arg(long, env = "LANTERN_DATA_PARALLEL", value_parser = clap::value_parser!(u64).range(1..))]
    pub data_parallel: Option<u64>,
    /// Failed engine steps in a row after which the engine turns unhealthy (`/ping` 503). A
    /// failed step fails only the requests it carried; the engine goes on below this.
    #[arg(long, env = "LANTERN_MAX_CONSECUTIVE_STEP_FAILURES", default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_consecutive_step_failures: u64,
    /// Seconds with no request running after which the engine hands the KV-cache pages it
    /// wrote and its step buffers back to the OS, so resident memory returns to its idle size
    /// (0: keep them).
    #[arg(long, env = "LANTERN_RELEASE_MEMORY_AFTER_IDLE", default_value_t = 10)]
    pub release_memory_after_idle: u64,
    /// Reuse the keys and values of prompt prefixes already computed (a system prompt, the
    /// earlier turns of a conversation): only the rest of a prompt is prefilled. Outputs are
    /// the same bits either way.
    #[arg(long, env = "LANTERN_PREFIX_CACHING", default_value_t = true, action = clap::ArgAction::Set)]
    pub prefix_caching: bool,
    /// Test-only: every N-th engine step fails (alternately an error and a panic).
    #[arg(long, env = "LANTERN_INJECT_STEP_FAULTS", hide = true)]
    pub inject_step_faults: Option<u64>,
    /// Test-only: with several engines, only this engine's steps fail.
    #[arg(long, env = "LANTERN_INJECT_STEP_FAULTS_ENGINE", hide = true)]
    pub inject_step_faults_engine: Option<usize>,
    /// One CloudWatch Embedded Metric Format record per finished generation request on stdout
    /// (SageMaker and ECS ship stdout to CloudWatch Logs, which makes them metrics).
    #[arg(long, env = "LANTERN_CLOUDWATCH_EMF")]
    pub cloudwatch_emf: bool,
    /// Connections open at once; past it new connections get a 503 and are closed (logged).
    #[arg(long, env = "LANTERN_MAX_CONNECTIONS", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Seconds a client may take to send a request's headers, and may stay silent while
    /// sending its body; past it the connection is closed (headers) or answered 408 (body).
    #[arg(long, env = "LANTERN_CLIENT_READ_TIMEOUT", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub client_read_timeout: u64,
    /// Seconds to let requests in flight finish after SIGTERM (SageMaker and ECS kill 30 s after it).
    #[arg(long, env = "LANTERN_SHUTDOWN_GRACE_SECONDS", default_value_t = 25)]
    pub shutdown_grace_seconds: u64,
    /// Shut down when standard input closes: a supervisor (or a test harness) that dies takes
    /// the server with it. Off by default (containers run without stdin).
    #[arg(long, env = "LANTERN_EXIT_ON_STDIN_EOF", hide = true)]
    pub exit_on_stdin_eof: bool,
    /// Seconds after which a request returns what it has (finish reason `time_limit`);
    /// SageMaker cuts real-time invocations at 60 s. Default 55, or 600 with SAGEMAKER_BATCH=true.
    #[arg(long, env = "LANTERN_REQUEST_TIMEOUT")]
    pub request_timeout: Option<u64>,
    /// Milliseconds a grammar (JSON schema, regex) may take to compile before its request is
    /// refused (422/400); compiled grammars are kept for reuse, so a schema pays this once.
    #[arg(long, env = "LANTERN_MAX_GRAMMAR_COMPILE_MS", default_value_t = 2000)]
    pub max_grammar_compile_ms: u64,
    /// Special-token text (`<|im_start|>`, `[INST]`, ...) inside chat message content and tool
    /// results. text: tokenized as the text it is, so a user cannot forge a turn boundary or a
    /// system turn; parse: as control tokens, like TGI and vLLM (for callers that rely on it).
    /// The chat template's own structure is always control tokens; raw prompts (TGI `inputs`,
    /// OpenAI completions, `/tokenize`) are always parsed.
    #[arg(
        long,
        env = "LANTERN_CONTENT_SPECIAL_TOKENS",
        value_enum,
        default_value = "text"
    )]
    pub content_special_tokens: ContentSpecialTokens,
    /// Serve the chat page at /ui (GET / is sent there). SageMaker forwards only
    /// /ping and /invocations, so there the page is reachable only through a port forward.
    #[arg(long, env = "LANTERN_UI", default_value_t = true, action = clap::ArgAction::Set)]
    pub ui: bool,
    /// Require this key on every route but /ping, /health, the chat page's files and (unless
    /// --metrics-require-key) /metrics: `Authorization: Bearer <key>` or `x-api-key: <key>`.
    /// Unset on SageMaker, which authenticates its callers itself. Never printed.
    #[arg(long, env = "LANTERN_API_KEY", hide_env_values = true)]
    pub api_key: Option<Secret>,
    /// Read the API key from this file (its first line), instead of --api-key.
    #[arg(long, env = "LANTERN_API_KEY_FILE", conflicts_with = "api_key")]
    pub api_key_file: Option<std::path::PathBuf>,
    /// With an API key, require it on /metrics too.
    #[arg(long, env = "LANTERN_METRICS_REQUIRE_KEY")]
    pub metrics_require_key: bool,
    /// LoRA adapters served from the start: NAME=PATH (a PEFT directory) or a hub id (its
    /// name), comma-separated (TGI's LORA_ADAPTERS). Requests pick one by name: TGI's
    /// `parameters.adapter_id`, OpenAI's `model`, SageMaker's
    /// X-Amzn-SageMaker-Adapter-Identifier header. More can be added and removed at run time
    /// (POST /adapters, DELETE /adapters/NAME; vLLM's /v1/load_lora_adapter).
    #[arg(long, env = "LORA_ADAPTERS")]
    pub lora_adapters: Option<String>,
    /// Directories adapters added at run time may be read from (repeatable, or
    /// comma-separated). Unset: the directory holding the model's directory or file, and the
    /// hub cache.
    #[arg(
        long = "lora-adapter-root",
        env = "LANTERN_LORA_ADAPTER_ROOTS",
        value_delimiter = ','
    )]
    pub lora_adapter_roots: Vec<std::path::PathBuf>,
    /// Adapters loaded in the model at once; a request for another waits while that many
    /// others run (the least recently used idle one is unloaded for it; pinned ones stay).
    #[arg(long, env = "LANTERN_MAX_LORAS", default_value_t = lantern_engine::config::DEFAULT_MAX_LORAS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_loras: usize,
    /// The highest adapter rank accepted.
    #[arg(long, env = "LANTERN_MAX_LORA_RANK", default_value_t = lantern_engine::config::DEFAULT_MAX_LORA_RANK, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_lora_rank: usize,
}

/// A setting that must never be printed (the API key): `Debug` shows a placeholder.
#[derive(Clone)]
pub struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(Self(text.to_string()))
    }
}

/// How special-token text inside chat message content is tokenized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ContentSpecialTokens {
    Text,
    Parse,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DtypeArg {
    #[value(alias = "f32")]
    Float32,
    #[value(alias = "bf16")]
    Bfloat16,
    #[value(alias = "f16")]
    Float16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KvCacheDtypeArg {
    Auto,
    #[value(alias = "float32")]
    F32,
    #[value(alias = "float16")]
    F16,
    #[value(alias = "bfloat16")]
    Bf16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KernelsArg {
    Auto,
    Cpu,
    Portable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum QuantizeArg {
    #[value(name = "q8_0")]
    Q8_0,
    #[value(name = "q4_0")]
    Q4_0,
    #[value(name = "q4_1")]
    Q4_1,
    #[value(name = "q5_0")]
    Q5_0,
    #[value(name = "q5_1")]
    Q5_1,
    #[value(name = "q4_k")]
    Q4K,
    #[value(name = "q5_k")]
    Q5K,
    #[value(name = "q6_k")]
    Q6K,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DequantizeArg {
    Auto,
    On,
    Off,
}

/// Settings after resolution and validation.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub device: DeviceChoice,
    /// `--data-parallel` as given (`None`: decided once the model is on a device).
    pub data_parallel: Option<usize>,
    /// `--draft-model`: proposes speculative tokens in every engine.
    pub draft_model: Option<ModelSource>,
    /// GPUs the platform says the container has (SageMaker's SM_NUM_GPUS).
    pub num_gpus: Option<usize>,
    /// Test-only: the one engine injected faults go to (`None`: all).
    pub inject_faults_engine: Option<usize>,
    /// `--block-size` as given; `engine.block_size` until the device is known.
    pub block_size: Option<usize>,
    pub model: ModelSource,
    pub host: String,
    pub port: u16,
    pub dtype: Option<candle_core::DType>,
    pub dequantize: Dequantize,
    pub kernels: KernelPath,
    pub quantize: Option<QuantFormat>,
    pub max_input_tokens: usize,
    pub max_total_tokens: usize,
    pub max_concurrent_requests: usize,
    pub max_stop_sequences: usize,
    pub default_max_new_tokens: usize,
    pub max_payload_bytes: usize,
    pub shutdown_grace_seconds: u64,
    pub max_connections: usize,
    pub client_read_timeout: std::time::Duration,
    pub cloudwatch_emf: bool,
    pub exit_on_stdin_eof: bool,
    pub request_timeout: std::time::Duration,
    pub max_grammar_compile: std::time::Duration,
    pub content_special_tokens: ContentSpecialTokens,
    pub ui: bool,
    pub api_key: Option<crate::http::api_key::ApiKey>,
    pub metrics_require_key: bool,
    pub engine: EngineConfig,
    pub sagemaker_batch: Option<SagemakerBatch>,
    /// `--lora-adapters`: (name, directory or hub id).
    pub lora_adapters: Vec<(String, String)>,
    /// `--lora-adapter-root` (empty: the defaults, known once the model is).
    pub lora_adapter_roots: Vec<std::path::PathBuf>,
}

/// SageMaker Batch Transform settings, reported by `/execution-parameters`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagemakerBatch {
    pub max_concurrent_transforms: usize,
    pub batch_strategy: String,
    pub max_payload_in_mb: usize,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn env_number(name: &str) -> anyhow::Result<Option<usize>> {
    env(name)
        .map(|v| {
            v.trim()
                .parse::<usize>()
                .with_context(|| format!("{name}=`{v}` is not a number"))
        })
        .transpose()
}

impl ServeArgs {
    pub fn resolve(self) -> anyhow::Result<ServerConfig> {
        let model_spec = self
            .model_id
            .clone()
            .or_else(|| env("MODEL_ID"))
            .or_else(|| {
                let artifacts =
                    env("SM_MODEL_DIR").unwrap_or_else(|| SAGEMAKER_MODEL_DIR.to_string());
                holds_model(Path::new(&artifacts)).then_some(artifacts)
            })
            .unwrap_or_else(|| DEFAULT_MODEL.to_string());
        let revision = self.revision.clone().or_else(|| env("HF_MODEL_REVISION"));
        let model = ModelSource::resolve(&model_spec, revision.as_deref())?;
        let port = match env_number("SAGEMAKER_BIND_TO_PORT")? {
            Some(port) => u16::try_from(port).context("SAGEMAKER_BIND_TO_PORT is not a port")?,
            None => self.port,
        };
        let max_input_tokens = match (self.max_input_tokens, env_number("MAX_INPUT_LENGTH")?) {
            (Some(tokens), _) | (None, Some(tokens)) => tokens,
            (None, None) => self.max_total_tokens.saturating_sub(1),
        };
        if max_input_tokens == 0 || max_input_tokens >= self.max_total_tokens {
            bail!(
                "max_input_tokens ({max_input_tokens}) must be positive and below max_total_tokens ({}): lower MAX_INPUT_TOKENS or raise MAX_TOTAL_TOKENS",
                self.max_total_tokens
            );
        }
        if let Some(total) = self.max_batch_total_tokens {
            if total < self.max_total_tokens {
                bail!("max_batch_total_tokens ({total}) must be at least max_total_tokens ({}): one request must fit", self.max_total_tokens);
            }
        }
        if self.max_concurrent_requests == 0 || self.max_num_seqs == 0 || self.block_size == Some(0)
        {
            bail!("max_concurrent_requests, max_num_seqs and block_size must be positive");
        }
        if !(self.gpu_memory_utilization > 0.0 && self.gpu_memory_utilization <= 1.0) {
            bail!(
                "gpu_memory_utilization ({}) must be in (0, 1]: set CUDA_MEMORY_FRACTION or --gpu-memory-utilization to e.g. 0.9",
                self.gpu_memory_utilization
            );
        }
        let sagemaker_batch = env("SAGEMAKER_BATCH")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
            .then(|| -> anyhow::Result<SagemakerBatch> {
                Ok(SagemakerBatch {
                    max_concurrent_transforms: env_number("SAGEMAKER_MAX_CONCURRENT_TRANSFORMS")?
                        .unwrap_or(self.max_concurrent_requests),
                    batch_strategy: env("SAGEMAKER_BATCH_STRATEGY")
                        .unwrap_or_else(|| "MULTI_RECORD".into()),
                    max_payload_in_mb: env_number("SAGEMAKER_MAX_PAYLOAD_IN_MB")?.unwrap_or(6),
                })
            })
            .transpose()?;
        let max_payload_bytes = sagemaker_batch
            .as_ref()
            .map_or(self.max_payload_bytes, |b| {
                b.max_payload_in_mb * 1024 * 1024
            });
        let api_key = match (&self.api_key, &self.api_key_file) {
            (Some(key), _) => Some(key.0.trim().to_string()),
            (None, Some(path)) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading the API key file {}", path.display()))?
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_string(),
            ),
            (None, None) => None,
        };
        if api_key.as_ref().is_some_and(String::is_empty) {
            bail!("the API key is empty: give a key, or leave --api-key and --api-key-file unset");
        }
        Ok(ServerConfig {
            content_special_tokens: self.content_special_tokens,
            ui: self.ui,
            api_key: api_key.as_deref().map(crate::http::api_key::ApiKey::new),
            metrics_require_key: self.metrics_require_key,
            model,
            host: self.host,
            port,
            dtype: self.dtype.map(|d| match d {
                DtypeArg::Float32 => candle_core::DType::F32,
                DtypeArg::Bfloat16 => candle_core::DType::BF16,
                DtypeArg::Float16 => candle_core::DType::F16,
            }),
            dequantize: match self.dequantize {
                DequantizeArg::Auto => Dequantize::Auto,
                DequantizeArg::On => Dequantize::On,
                DequantizeArg::Off => Dequantize::Off,
            },
            quantize: self.quantize.map(|q| match q {
                QuantizeArg::Q8_0 => QuantFormat::Q8_0,
                QuantizeArg::Q4_0 => QuantFormat::Q4_0,
                QuantizeArg::Q4_1 => QuantFormat::Q4_1,
                QuantizeArg::Q5_0 => QuantFormat::Q5_0,
                QuantizeArg::Q5_1 => QuantFormat::Q5_1,
                QuantizeArg::Q4K => QuantFormat::Q4K,
                QuantizeArg::Q5K => QuantFormat::Q5K,
                QuantizeArg::Q6K => QuantFormat::Q6K,
            }),
            kernels: match self.kernels {
                KernelsArg::Auto => KernelPath::Auto,
                KernelsArg::Cpu => KernelPath::Cpu,
                KernelsArg::Portable => KernelPath::Portable,
            },
            max_input_tokens,
            max_total_tokens: self.max_total_tokens,
            max_concurrent_requests: self.max_concurrent_requests,
            max_stop_sequences: self.max_stop_sequences,
            default_max_new_tokens: self.default_max_new_tokens,
            max_payload_bytes,
            shutdown_grace_seconds: self.shutdown_grace_seconds,
            max_connections: self.max_connections as usize,
            cloudwatch_emf: self.cloudwatch_emf,
            client_read_timeout: std::time::Duration::from_secs(self.client_read_timeout),
            exit_on_stdin_eof: self.exit_on_stdin_eof,
            max_grammar_compile: std::time::Duration::from_millis(self.max_grammar_compile_ms),
            request_timeout: std::time::Duration::from_secs(
                self.request_timeout
                    .unwrap_or(if sagemaker_batch.is_some() { 600 } else { 55 }),
            ),
            device: DeviceChoice::parse(&self.device).map_err(anyhow::Error::msg)?,
            data_parallel: self.data_parallel.map(|n| n as usize),
            draft_model: self
                .draft_model
                .as_deref()
                .map(|id| ModelSource::resolve(id, None))
                .transpose()?,
            num_gpus: self.num_gpus,
            inject_faults_engine: self.inject_step_faults_engine,
            block_size: self.block_size,
            engine: EngineConfig {
                // Resolved once the device is known (`ServerConfig::block_size`).
                block_size: self.block_size.unwrap_or(CPU_BLOCK_SIZE),
                cache: self.kv_cache_memory.map_or(
                    CacheSize::DeviceMemoryUtilization(self.gpu_memory_utilization),
                    CacheSize::Bytes,
                ),
                max_batch_total_tokens: self.max_batch_total_tokens,
                max_batch_prefill_tokens: self.max_batch_prefill_tokens,
                max_num_seqs: self.max_num_seqs,
                max_total_tokens: self.max_total_tokens,
                faults: FaultPolicy {
                    max_consecutive: self.max_consecutive_step_failures as usize,
                    inject_every: self.inject_step_faults,
                },
                prefix_caching: self.prefix_caching,
                speculate: if self.draft_model.is_some() && self.speculate == 0 {
                    4
                } else {
                    self.speculate
                },
                max_decode_stall: (self.max_decode_stall_ms > 0)
                    .then(|| std::time::Duration::from_millis(self.max_decode_stall_ms)),
                sample_on_device: None,
                max_loras: self.max_loras,
                max_lora_rank: self.max_lora_rank,
                kv_cache_dtype: match self.kv_cache_dtype {
                    KvCacheDtypeArg::Auto => None,
                    KvCacheDtypeArg::F32 => Some(lantern_models::KvDtype::F32),
                    KvCacheDtypeArg::F16 => Some(lantern_models::KvDtype::F16),
                    KvCacheDtypeArg::Bf16 => Some(lantern_models::KvDtype::Bf16),
                },
                release_memory_after_idle: (self.release_memory_after_idle > 0)
                    .then(|| std::time::Duration::from_secs(self.release_memory_after_idle)),
            },
            sagemaker_batch,
            lora_adapters: self
                .lora_adapters
                .as_deref()
                .map(parse_lora_adapters)
                .transpose()?
                .unwrap_or_default(),
            lora_adapter_roots: self.lora_adapter_roots,
        })
    }
}

fn holds_model(dir: &Path) -> bool {
    dir.join("config.json").exists()
        || std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .any(|e| e.path().extension().is_some_and(|x| x == "gguf"))
            })
            .unwrap_or(false)
}

#[cfg(test)]
mod tests;
