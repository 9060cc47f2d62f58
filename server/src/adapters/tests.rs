//! The registry on the tiny dummy model: what it refuses, and that unregistering waits for
//! the requests holding an adapter.

use super::*;
use lantern_models::dummy::adapter::{write_dummy_adapter, AdapterSpec};
use lantern_models::dummy::{write_dummy_model, DummySize, DummySpec};
use lantern_models::Architecture;
use std::time::Duration;

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// A registry whose one root holds the base and two adapters (`good`, rank 8; `wide`,
/// rank 64).
fn registry(max_rank: usize, max_loras: usize) -> TestResult<(tempfile::TempDir, Arc<Adapters>)> {
    let root = tempfile::tempdir()?;
    let base = root.path().join("base");
    write_dummy_model(
        DummySpec {
            architecture: Architecture::Llama,
            size: DummySize::Tiny,
            seed: 1,
        },
        &base,
    )?;
    write_dummy_adapter(
        &AdapterSpec::all_projections(8, 1),
        &base,
        &root.path().join("good"),
    )?;
    write_dummy_adapter(
        &AdapterSpec::all_projections(64, 2),
        &base,
        &root.path().join("wide"),
    )?;
    let config = DecoderConfig::from_hf_json(&base.join("config.json"))?;
    let adapters = Adapters::new(config, vec![root.path().to_path_buf()], max_rank, max_loras);
    Ok((root, Arc::new(adapters)))
}

fn path(root: &tempfile::TempDir, name: &str) -> String {
    root.path().join(name).to_string_lossy().into_owned()
}

#[test]
fn registration_refuses_what_cannot_be_served() -> TestResult {
    let (root, adapters) = registry(16, 1)?;
    let first = adapters.register("tone", &path(&root, "good"), true, false)?;
    assert!(first.pinned);
    let again = adapters.register("tone", &path(&root, "good"), false, false);
    assert!(matches!(again, Err(RegistryError::Exists(_))), "{again:?}");
    let wide = adapters.register("wide", &path(&root, "wide"), false, false);
    assert!(
        matches!(&wide, Err(RegistryError::Bad { .. }) if wide.as_ref().err().is_some_and(|e| e.to_string().contains("max-lora-rank"))),
        "{wide:?}"
    );
    let pinned = adapters.register("second", &path(&root, "good"), true, false);
    assert!(
        matches!(pinned, Err(RegistryError::Invalid(_))),
        "{pinned:?}"
    );
    let remote = adapters.register("s3", "s3://bucket/adapter", false, false);
    assert!(matches!(
        remote,
        Err(RegistryError::Source(SourceError::Remote(_)))
    ));
    let outside = adapters.register("etc", "/etc", false, false);
    assert!(matches!(
        outside,
        Err(RegistryError::Source(SourceError::OutsideRoots { .. }))
    ));
    let base_dir = adapters.register("base", &path(&root, "base"), false, false);
    assert!(
        matches!(base_dir, Err(RegistryError::Bad { .. })),
        "{base_dir:?}"
    );
    assert!(adapters
        .register("", &path(&root, "good"), false, false)
        .is_err());
    // Nothing refused was registered; ids are never reused.
    assert_eq!(adapters.names(), vec!["tone".to_string()]);
    let next = adapters.register("other", &path(&root, "good"), false, false)?;
    assert!(next.id > first.id);
    Ok(())
}

#[tokio::test]
async fn unregistering_waits_for_the_requests_holding_the_adapter() -> TestResult {
    let (root, adapters) = registry(16, 4)?;
    adapters.register("tone", &path(&root, "good"), false, false)?;
    let held = adapters.acquire("tone").ok_or("registered")?;
    let waiting = tokio::spawn({
        let adapters = adapters.clone();
        async move { adapters.unregister("tone").await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !waiting.is_finished(),
        "unregistered while a request held it"
    );
    // Draining: no new request may take it.
    assert!(adapters.acquire("tone").is_none());
    drop(held);
    let removed = tokio::time::timeout(Duration::from_secs(5), waiting).await???;
    assert_eq!(removed.name, "tone");
    assert!(!adapters.any());
    assert!(matches!(
        adapters.unregister("tone").await,
        Err(RegistryError::NotFound(_))
    ));
    Ok(())
}
