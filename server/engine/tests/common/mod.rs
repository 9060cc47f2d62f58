//! Engines over the tiny dummy model, and a helper that runs a request to its end.

#![allow(dead_code)]

use lantern_engine::{
    start, CacheSize, Completion, EngineConfig, EngineHandle, Event, EventStream, FinishReason,
    GenerateRequest,
};
use lantern_models::dummy::{write_dummy_model, DummySize, DummySpec};
use lantern_models::{
    load, Architecture, KernelPath, LoadOptions, ModelSource, QuantFormat, TokenizerBundle,
};

pub type TestResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

pub struct TestEngine {
    pub handle: EngineHandle,
    pub tokenizer: TokenizerBundle,
    _dir: tempfile::TempDir,
}

pub fn config(blocks: usize, prefill: usize) -> EngineConfig {
    EngineConfig {
        block_size: 16,
        cache: CacheSize::Blocks(blocks),
        max_batch_total_tokens: None,
        max_batch_prefill_tokens: prefill,
        max_num_seqs: 64,
        max_total_tokens: 512,
        faults: Default::default(),
        release_memory_after_idle: None,
        prefix_caching: true,
        // Timing-free chunking: the suites that bound prefill beside decoding say so.
        max_decode_stall: None,
        speculate: 0,
        sample_on_device: None,
        max_loras: lantern_engine::config::DEFAULT_MAX_LORAS,
        max_lora_rank: lantern_engine::config::DEFAULT_MAX_LORA_RANK,
        kv_cache_dtype: None,
    }
}

/// The device the engine suites run the portable path on: `LANTERN_TEST_DEVICE=cuda` (a
/// CUDA build on a GPU machine) puts them on GPU 0; otherwise the CPU. The CPU kernels always
/// run on the CPU.
pub fn test_device(kernels: KernelPath) -> candle_core::Device {
    match (std::env::var("LANTERN_TEST_DEVICE").as_deref(), kernels) {
        (Ok("cuda"), KernelPath::Portable) => {
            match lantern_kernels::device_choice::DeviceChoice::Cuda(0).open() {
                Ok(opened) => opened.device,
                Err(error) => panic!("LANTERN_TEST_DEVICE=cuda: {error}"),
            }
        }
        _ => candle_core::Device::Cpu,
    }
}

pub fn tiny_engine(config: &EngineConfig) -> TestResult<TestEngine> {
    tiny_engine_on(config, KernelPath::Auto)
}

/// What runs the tiny model's forward pass, and in which weight format.
#[derive(Debug, Clone, Copy)]
pub struct Weights {
    pub kernels: KernelPath,
    /// Quantize the dense checkpoint at load (the CPU integer kernels).
    pub quantize: Option<QuantFormat>,
}

impl From<KernelPath> for Weights {
    fn from(kernels: KernelPath) -> Self {
        Self {
            kernels,
            quantize: None,
        }
    }
}

/// [`tiny_engine`] with its forward pass run by the given kernels, on the given weights.
pub fn tiny_engine_on(
    config: &EngineConfig,
    weights: impl Into<Weights>,
) -> TestResult<TestEngine> {
    let weights = weights.into();
    let dir = tempfile::tempdir()?;
    let spec = DummySpec {
        architecture: Architecture::Llama,
        size: DummySize::Tiny,
        seed: 5,
    };
    write_dummy_model(spec, dir.path())?;
    let model = load(
        &ModelSource::Directory(dir.path().into()),
        &LoadOptions {
            kernels: weights.kernels,
            quantize: weights.quantize,
            device: test_device(weights.kernels),
            // f32 on a GPU too: the suites compare tokens bit for bit across runs.
            dtype: Some(candle_core::DType::F32),
            ..LoadOptions::cpu()
        },
    )?;
    let handle = start(model.decoder, &model.tokenizer, config)?;
    Ok(TestEngine {
        handle,
        tokenizer: model.tokenizer,
        _dir: dir,
    })
}

/// What one request produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub tokens: Vec<u32>,
    /// Compared bit for bit: any difference in the logits shows here before it flips a token.
    pub logprobs: Vec<f32>,
    pub text: String,
    pub finish: FinishReason,
}

pub async fn run(handle: &EngineHandle, request: GenerateRequest) -> TestResult<Outcome> {
    collect(handle.submit(request)?).await
}

/// Reads a submitted request's events to its end.
pub async fn collect(stream: EventStream) -> TestResult<Outcome> {
    Ok(collect_with_end(stream).await?.0)
}

/// [`collect`], with the request's end event (cached tokens, prompt log-probabilities).
pub async fn collect_with_end(mut stream: EventStream) -> TestResult<(Outcome, Completion)> {
    let mut tokens = Vec::new();
    let mut logprobs = Vec::new();
    let mut text = String::new();
    while let Some(event) = stream.recv().await {
        match event {
            Event::Token(token) => {
                tokens.push(token.id);
                logprobs.push(token.logprob);
                text.push_str(&token.text);
            }
            Event::End(end) => {
                text.push_str(&end.trailing_text);
                let outcome = Outcome {
                    tokens,
                    logprobs,
                    text,
                    finish: end.finish_reason,
                };
                return Ok((outcome, end));
            }
            Event::Failed(message) => return Err(message.into()),
        }
    }
    Err("stream ended without an end event".into())
}
