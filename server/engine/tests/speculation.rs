//! Speculative decoding (`speculate`: prompt lookup, or a draft model) changes no output:
//! greedy and seeded sampled requests get the same tokens and log-probabilities, bit for bit on
//! the CPU kernels, alone and batched, with preemption, chunked prefill, prefix caching, stop
//! sequences, grammars, penalties, logit bias and alternatives; proposals really run and some
//! stand; and once everything ends no KV block is held.

mod common;

use common::{collect, config, run, tiny_engine_on, Outcome, TestResult};
use lantern_engine::{EngineConfig, GenerateRequest, SamplingParams};
use lantern_models::KernelPath;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Prompts that repeat a phrase (so lookups find matches), with room to generate.
fn repetitive_requests(count: usize, seed: u64) -> Vec<GenerateRequest> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..count)
        .map(|_| {
            let phrase: Vec<u32> = (0..rng.random_range(3..12))
                .map(|_| rng.random_range(3..512))
                .collect();
            let repeats = rng.random_range(2..6);
            let prompt = phrase
                .iter()
                .copied()
                .cycle()
                .take(phrase.len() * repeats)
                .collect();
            GenerateRequest::greedy(prompt, rng.random_range(20..160))
        })
        .collect()
}

fn speculating(settings: &EngineConfig, tokens: usize) -> EngineConfig {
    EngineConfig {
        speculate: tokens,
        ..settings.clone()
    }
}

async fn one_by_one(
    settings: &EngineConfig,
    requests: &[GenerateRequest],
) -> TestResult<(Vec<Outcome>, lantern_engine::SchedulerStats)> {
    let engine = tiny_engine_on(settings, KernelPath::Cpu)?;
    let mut outcomes = Vec::new();
    for request in requests {
        outcomes.push(run(&engine.handle, request.clone()).await?);
    }
    Ok((outcomes, settled(&engine.handle).await))
}

/// The engine's statistics once it has published the step that ended the last request.
async fn settled(handle: &lantern_engine::EngineHandle) -> lantern_engine::SchedulerStats {
    for _ in 0..200 {
        let stats = handle.stats();
        if stats.running == 0 && stats.waiting == 0 {
            return stats;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    handle.stats()
}

async fn all_at_once(
    settings: &EngineConfig,
    requests: &[GenerateRequest],
) -> TestResult<(Vec<Outcome>, lantern_engine::SchedulerStats)> {
    let engine = tiny_engine_on(settings, KernelPath::Cpu)?;
    let mut tasks = Vec::new();
    for request in requests {
        let stream = engine.handle.submit(request.clone())?;
        tasks.push(tokio::spawn(collect(stream)));
    }
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await??);
    }
    Ok((outcomes, settled(&engine.handle).await))
}

fn assert_same(expected: &[Outcome], got: &[Outcome], what: &str) {
    for (i, (e, g)) in expected.iter().zip(got).enumerate() {
        assert_eq!(e, g, "{what}: request {i} differs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greedy_outputs_are_the_same_with_and_without_speculation() -> TestResult {
    let requests = repetitive_requests(16, 11);
    let roomy = config(1024, 512);
    let (reference, _) = one_by_one(&roomy, &requests).await?;

    let (alone, stats) = one_by_one(&speculating(&roomy, 4), &requests).await?;
    assert_same(&reference, &alone, "speculating, one at a time");
    let spec = stats.speculation;
    assert!(spec.drafts > 0, "no draft was proposed: {spec:?}");
    assert!(
        spec.accepted_tokens > 0 && spec.accepted_tokens <= spec.draft_tokens,
        "{spec:?}"
    );
    assert_eq!(stats.used_blocks, 0, "blocks left held: {stats:?}");

    // Batched (speculation halves, then stops, as the batch grows), preempted in a small
    // cache, and prefilled in chunks of 7.
    let (batched, stats) = all_at_once(&speculating(&roomy, 4), &requests).await?;
    assert_same(&reference, &batched, "speculating, batched");
    assert_eq!(stats.used_blocks, 0);
    let (tight, stats) = all_at_once(&speculating(&config(40, 512), 4), &requests).await?;
    assert_same(&reference, &tight, "speculating, preempted");
    assert!(
        stats.preemptions > 0,
        "the small cache should force preemptions"
    );
    assert_eq!(stats.used_blocks, 0, "blocks left held: {stats:?}");
    let (chunked, _) = all_at_once(&speculating(&config(1024, 7), 3), &requests).await?;
    assert_same(&reference, &chunked, "speculating, prefill chunks of 7");
    // The same prompts again on one engine: the second round takes their prefixes (accepted
    // proposals' blocks among them) from the cache.
    let twice: Vec<GenerateRequest> = requests.iter().chain(&requests).cloned().collect();
    let (again, stats) = one_by_one(&speculating(&roomy, 4), &twice).await?;
    assert_same(&reference, &again[..requests.len()], "first round");
    assert_same(
        &reference,
        &again[requests.len()..],
        "from the prefix cache",
    );
    assert!(stats.prefix_cache.hit_tokens > 0, "{stats:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_sampling_is_the_same_with_and_without_speculation() -> TestResult {
    let requests: Vec<GenerateRequest> = repetitive_requests(8, 12)
        .into_iter()
        .enumerate()
        .map(|(i, r)| GenerateRequest {
            sampling: SamplingParams {
                temperature: 0.7,
                top_k: Some(20),
                seed: Some(40 + i as u64),
                ..Default::default()
            },
            ..r
        })
        .collect();
    let roomy = config(1024, 512);
    let (reference, _) = one_by_one(&roomy, &requests).await?;
    let (speculated, stats) = one_by_one(&speculating(&roomy, 4), &requests).await?;
    assert_same(&reference, &speculated, "seeded sampling");
    assert!(stats.speculation.drafts > 0, "{:?}", stats.speculation);
    Ok(())
}

/// Requests for `engine`: the repetitive greedy ones with `stops`, penalties, a logit bias,
/// alternatives, every fourth ignoring EOS, and two held to a grammar, in one batch.
fn mixed_requests(
    engine: &common::TestEngine,
    stops: &[Vec<String>],
) -> TestResult<Vec<GenerateRequest>> {
    let mut requests = repetitive_requests(stops.len(), 13);
    for (i, (request, stop)) in requests.iter_mut().zip(stops).enumerate() {
        request.stop = stop.clone();
        request.ignore_eos = i % 4 == 3;
        // Penalties, a logit bias and alternatives: each row sees the tokens before it.
        match i % 4 {
            0 => request.sampling.repetition_penalty = Some(1.3),
            1 => request.sampling.frequency_penalty = 0.4,
            2 => {
                request.sampling.top_n_tokens = 3;
                request.sampling.logit_bias = vec![(request.prompt[0], 2.5)];
            }
            _ => {}
        }
    }
    let constraints = engine.handle.constraints()?;
    for seed in 0..2u32 {
        let mut held = GenerateRequest::greedy((3 + seed..30 + seed).collect(), 40);
        held.constraint = Some(
            constraints.compile(lantern_engine::constraint::Grammar::Regex(
                "[a-z]{2,6}( [a-z]{2,6}){1,5}".into(),
            ))?,
        );
        requests.push(held);
    }
    Ok(requests)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_sequences_grammars_and_block_sizes_keep_their_outputs_under_speculation() -> TestResult
{
    for block_size in [16, 32] {
        let plain = EngineConfig {
            block_size,
            ..config(1024 * 16 / block_size, 512)
        };
        // Stop sequences that really stop: two characters from the middle of each answer.
        let probe = tiny_engine_on(&plain, KernelPath::Cpu)?;
        let mut stops = Vec::new();
        for request in repetitive_requests(12, 13) {
            let text = run(&probe.handle, request).await?.text;
            let chars: Vec<char> = text.chars().collect();
            stops.push(if chars.len() >= 6 {
                vec![chars[chars.len() / 2..chars.len() / 2 + 2].iter().collect()]
            } else {
                Vec::new()
            });
        }
        let reference_engine = tiny_engine_on(&plain, KernelPath::Cpu)?;
        let mut reference = Vec::new();
        for request in mixed_requests(&reference_engine, &stops)? {
            reference.push(run(&reference_engine.handle, request).await?);
        }
        assert!(
            reference
                .iter()
                .any(|o| o.finish == lantern_engine::FinishReason::StopSequence),
            "no stop sequence was met"
        );
        let speculating_engine = tiny_engine_on(&speculating(&plain, 4), KernelPath::Cpu)?;
        let mut tasks = Vec::new();
        for request in mixed_requests(&speculating_engine, &stops)? {
            let stream = speculating_engine.handle.submit(request)?;
            tasks.push(tokio::spawn(collect(stream)));
        }
        let mut speculated = Vec::new();
        for task in tasks {
            speculated.push(task.await??);
        }
        assert_same(&reference, &speculated, &format!("block size {block_size}"));
        let stats = settled(&speculating_engine.handle).await;
        assert!(stats.speculation.drafts > 0, "{:?}", stats.speculation);
        assert_eq!(stats.used_blocks, 0, "{stats:?}");
        // One at a time, every request speculates (alone in its steps).
        let alone_engine = tiny_engine_on(&speculating(&plain, 4), KernelPath::Cpu)?;
        let mut alone = Vec::new();
        for request in mixed_requests(&alone_engine, &stops)? {
            alone.push(run(&alone_engine.handle, request).await?);
        }
        assert_same(
            &reference,
            &alone,
            &format!("block size {block_size}, one at a time"),
        );
    }
    Ok(())
}

/// A tiny Llama (the suites' model is seed 5) on the CPU kernels, as a draft model.
fn tiny_decoder(seed: u64) -> TestResult<(tempfile::TempDir, lantern_models::Decoder)> {
    let (dir, model) = tiny_model(lantern_models::Architecture::Llama, seed)?;
    Ok((dir, model.decoder))
}

/// A tiny model of `architecture` on the CPU kernels, in f32.
fn tiny_model(
    architecture: lantern_models::Architecture,
    seed: u64,
) -> TestResult<(tempfile::TempDir, lantern_models::LoadedModel)> {
    use lantern_models::dummy::{write_dummy_model, DummySize, DummySpec};
    let dir = tempfile::tempdir()?;
    let spec = DummySpec {
        architecture,
        size: DummySize::Tiny,
        seed,
    };
    write_dummy_model(spec, dir.path())?;
    let model = lantern_models::load(
        &lantern_models::ModelSource::Directory(dir.path().into()),
        &lantern_models::LoadOptions {
            kernels: KernelPath::Cpu,
            dtype: Some(candle_core::DType::F32),
            ..lantern_models::LoadOptions::cpu()
        },
    )?;
    Ok((dir, model))
}

/// Every family's decoder (its toggles: Qwen3's q/k norms, Phi-3's fused projections and
/// LongRoPE, Gemma's soft-caps and sliding windows, Mistral's window) verifies the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_family_gives_the_same_tokens_with_and_without_speculation() -> TestResult {
    use lantern_models::Architecture::*;
    let requests = repetitive_requests(4, 15);
    for architecture in [Mistral, Qwen2, Qwen3, Phi3, Gemma2, Gemma3] {
        let mut outcomes: Vec<Vec<Outcome>> = Vec::new();
        let mut drafts = 0;
        for speculate in [0, 4] {
            let (_dir, model) = tiny_model(architecture, 8)?;
            let settings = speculating(&config(1024, 512), speculate);
            let handle = lantern_engine::start(model.decoder, &model.tokenizer, &settings)?;
            let mut these = Vec::new();
            for request in &requests {
                these.push(run(&handle, request.clone()).await?);
            }
            drafts = settled(&handle).await.speculation.drafts;
            outcomes.push(these);
        }
        assert_same(&outcomes[0], &outcomes[1], architecture.name());
        assert!(drafts > 0, "{}: no draft", architecture.name());
    }
    Ok(())
}

/// A draft model proposes instead of prompt lookup: outputs stay the same; the model as its
/// own draft has every greedy proposal accepted (its logits are the target's, bit for bit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draft_model_changes_no_output_and_itself_as_draft_is_always_right() -> TestResult {
    let requests = repetitive_requests(6, 14);
    // Penalized twins: the draft proposes unpenalized tokens, so some stand and some do not,
    // and each row's penalty must count the tokens accepted before it.
    let penalized: Vec<GenerateRequest> = requests
        .iter()
        .map(|r| {
            let mut r = r.clone();
            r.sampling.frequency_penalty = 0.6;
            r.max_new_tokens = 60;
            r
        })
        .collect();
    let roomy = config(1024, 512);
    let (reference, _) = one_by_one(&roomy, &requests).await?;
    let (penalized_reference, _) = one_by_one(&roomy, &penalized).await?;
    for (draft_seed, always_right) in [(5, true), (6, false)] {
        // (Its tokenizer is the target's; its own engine is not used.)
        let engine = tiny_engine_on(&roomy, KernelPath::Cpu)?;
        let (_draft_dir, draft) = tiny_decoder(draft_seed)?;
        let (_target_dir, target) = tiny_decoder(5)?;
        let handle = lantern_engine::start_with_draft(
            target,
            Some(draft),
            &engine.tokenizer,
            &speculating(&roomy, 4),
        )?;
        let mut outcomes = Vec::new();
        for request in &requests {
            outcomes.push(run(&handle, request.clone()).await?);
        }
        assert_same(&reference, &outcomes, &format!("draft seed {draft_seed}"));
        let spec = settled(&handle).await.speculation;
        assert!(spec.drafts > 0, "{spec:?}");
        let mut penalized_outcomes = Vec::new();
        for request in &penalized {
            penalized_outcomes.push(run(&handle, request.clone()).await?);
        }
        assert_same(
            &penalized_reference,
            &penalized_outcomes,
            &format!("draft seed {draft_seed}, frequency penalty"),
        );
        if always_right {
            assert_eq!(spec.accepted_tokens, spec.draft_tokens, "{spec:?}");
        } else {
            assert!(spec.accepted_tokens < spec.draft_tokens, "{spec:?}");
        }
    }
    Ok(())
}
