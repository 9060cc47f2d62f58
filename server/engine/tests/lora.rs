//! LoRA adapters in the engine, on the CPU kernels: a request under an adapter gives the same
//! bits alone and batched with requests for other adapters and the base; a prefix computed
//! under one adapter never serves another; with room for one adapter, requests for several
//! all finish, their adapters unloaded and loaded again as they take turns; an adapter whose
//! files went away fails its own requests only.

mod common;

use common::{collect, collect_with_end, config, Outcome, TestResult};
use lantern_engine::{
    start, AdapterRef, AdapterSource, EngineConfig, EngineHandle, GenerateRequest,
};
use lantern_models::dummy::adapter::{write_dummy_adapter, AdapterSpec};
use lantern_models::dummy::{write_dummy_model, DummySize, DummySpec};
use lantern_models::{load, Architecture, KernelPath, LoadOptions, ModelSource};
use std::path::Path;
use std::sync::Arc;

struct Setup {
    handle: EngineHandle,
    adapters: Vec<AdapterRef>,
    _dir: tempfile::TempDir,
}

/// The tiny Llama on the CPU kernels with `count` rank-8 adapters written beside it.
fn setup(settings: &EngineConfig, count: usize) -> TestResult<Setup> {
    let dir = tempfile::tempdir()?;
    let base = dir.path().join("base");
    let spec = DummySpec {
        architecture: Architecture::Llama,
        size: DummySize::Tiny,
        seed: 5,
    };
    write_dummy_model(spec, &base)?;
    let adapters = (0..count)
        .map(|i| -> TestResult<AdapterRef> {
            let path = dir.path().join(format!("adapter-{i}"));
            write_dummy_adapter(
                &AdapterSpec::all_projections(8, 20 + i as u64),
                &base,
                &path,
            )?;
            Ok(Arc::new(AdapterSource {
                id: 100 + i as u32,
                name: format!("adapter-{i}"),
                dir: path,
                pinned: false,
            }))
        })
        .collect::<TestResult<_>>()?;
    let model = load(
        &ModelSource::Directory(base),
        &LoadOptions {
            kernels: KernelPath::Cpu,
            dtype: Some(candle_core::DType::F32),
            ..LoadOptions::cpu()
        },
    )?;
    let handle = start(model.decoder, &model.tokenizer, settings)?;
    Ok(Setup {
        handle,
        adapters,
        _dir: dir,
    })
}

fn prompt(len: usize, salt: u32) -> Vec<u32> {
    (0..len as u32)
        .map(|i| 3 + (i * 7 + salt * 13) % 400)
        .collect()
}

fn request(prompt: Vec<u32>, adapter: Option<&AdapterRef>) -> GenerateRequest {
    let mut request = GenerateRequest::greedy(prompt, 12);
    request.ignore_eos = true;
    request.adapter = adapter.cloned();
    request
}

async fn run_all(
    handle: &EngineHandle,
    requests: Vec<GenerateRequest>,
) -> TestResult<Vec<Outcome>> {
    let streams = requests
        .into_iter()
        .map(|r| handle.submit(r))
        .collect::<Result<Vec<_>, _>>()?;
    let mut outcomes = Vec::new();
    for stream in streams {
        outcomes.push(collect(stream).await?);
    }
    Ok(outcomes)
}

/// Requests for three adapters and the base, each run alone, then all at once.
fn mixed(adapters: &[AdapterRef]) -> Vec<GenerateRequest> {
    (0..8)
        .map(|i| {
            let adapter = (i % 4 != 3).then(|| &adapters[i % 3]);
            request(prompt(10 + 5 * i, i as u32), adapter)
        })
        .collect()
}

#[tokio::test]
async fn a_request_gives_the_same_bits_alone_and_among_other_adapters() -> TestResult {
    let setup = setup(&config(128, 64), 3)?;
    let requests = mixed(&setup.adapters);
    let mut alone = Vec::new();
    for r in requests.clone() {
        alone.extend(run_all(&setup.handle, vec![r]).await?);
    }
    let together = run_all(&setup.handle, requests).await?;
    assert_eq!(alone, together);
    // The adapters matter: the same prompt gives other tokens under each.
    let same_prompt = |a: Option<&AdapterRef>| request(prompt(20, 9), a);
    let outcomes = run_all(
        &setup.handle,
        vec![
            same_prompt(None),
            same_prompt(Some(&setup.adapters[0])),
            same_prompt(Some(&setup.adapters[1])),
        ],
    )
    .await?;
    assert_ne!(outcomes[0].logprobs, outcomes[1].logprobs);
    assert_ne!(outcomes[1].logprobs, outcomes[2].logprobs);
    Ok(())
}

#[tokio::test]
async fn a_prefix_computed_under_one_adapter_never_serves_another() -> TestResult {
    let setup = setup(&config(128, 512), 2)?;
    let (a, b) = (&setup.adapters[0], &setup.adapters[1]);
    let long = prompt(70, 4);
    let run = |adapter: Option<&AdapterRef>| {
        let stream = setup.handle.submit(request(long.clone(), adapter));
        async move { collect_with_end(stream?).await }
    };
    let (first, end) = run(Some(a)).await?;
    assert_eq!(end.cached_tokens, 0);
    let (again, end) = run(Some(a)).await?;
    assert_eq!(end.cached_tokens, 64, "the same adapter finds its prefix");
    assert_eq!(first, again);
    for other in [Some(b), None] {
        let (_, end) = run(other).await?;
        assert_eq!(
            end.cached_tokens,
            0,
            "{:?} found adapter a's prefix",
            other.map(|o| &o.name)
        );
    }
    Ok(())
}

#[tokio::test]
async fn with_room_for_one_adapter_requests_for_three_take_turns() -> TestResult {
    let roomy = setup(&config(128, 64), 3)?;
    let requests = mixed(&roomy.adapters);
    let expected = run_all(&roomy.handle, requests.clone()).await?;
    let tight = setup(
        &EngineConfig {
            max_loras: 1,
            ..config(128, 64)
        },
        3,
    )?;
    // Each adapter's id and files are the tight engine's own; the requests otherwise the same.
    let requests: Vec<GenerateRequest> = requests
        .into_iter()
        .map(|mut r| {
            r.adapter = r
                .adapter
                .map(|a| tight.adapters[(a.id - 100) as usize].clone());
            r
        })
        .collect();
    let outcomes = run_all(&tight.handle, requests).await?;
    assert_eq!(outcomes, expected);
    let stats = tight.handle.adapter_stats();
    assert!(stats.loaded.len() <= 1, "{stats:?}");
    assert!(stats.loads >= 3, "{stats:?}");
    Ok(())
}

#[tokio::test]
async fn an_adapter_that_cannot_load_fails_its_own_requests_only() -> TestResult {
    let setup = setup(&config(128, 64), 2)?;
    let broken = &setup.adapters[1];
    std::fs::remove_file(broken.dir.join("adapter_model.safetensors"))?;
    let good = setup
        .handle
        .submit(request(prompt(30, 1), Some(&setup.adapters[0])))?;
    let bad = setup.handle.submit(request(prompt(30, 2), Some(broken)))?;
    let base = setup.handle.submit(request(prompt(30, 3), None))?;
    let error = collect(bad).await.expect_err("its files are gone");
    assert!(error.to_string().contains("adapter-1"), "{error}");
    assert_eq!(collect(good).await?.tokens.len(), 12);
    assert_eq!(collect(base).await?.tokens.len(), 12);
    // Preloading it says why, and the engine stays healthy.
    let preload = setup.handle.load_adapter(broken.clone()).await;
    assert!(preload.is_err());
    assert!(setup.handle.is_healthy());
    assert!(Path::new(&setup.adapters[0].dir).exists());
    Ok(())
}
