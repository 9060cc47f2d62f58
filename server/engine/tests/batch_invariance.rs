//! The same greedy request gives exactly the same tokens alone or among 31 others submitted at
//! random moments; also when the cache is so small that sequences are preempted and
//! recomputed, and when prompts are prefilled in small chunks. Seeded sampling likewise.

mod common;

use common::{collect, config, run, tiny_engine_on, Outcome, TestResult, Weights};
use lantern_engine::{EngineConfig, GenerateRequest, SamplingParams};
use lantern_models::{KernelPath, QuantFormat};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::Duration;

fn random_requests(count: usize, seed: u64) -> Vec<GenerateRequest> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..count)
        .map(|_| {
            let prompt_len = rng.random_range(1..=300);
            let prompt = (0..prompt_len).map(|_| rng.random_range(3..512)).collect();
            GenerateRequest::greedy(prompt, rng.random_range(1..=64))
        })
        .collect()
}

async fn alone(
    config: &EngineConfig,
    kernels: Weights,
    requests: &[GenerateRequest],
) -> TestResult<Vec<Outcome>> {
    let engine = tiny_engine_on(config, kernels)?;
    let mut outcomes = Vec::new();
    for request in requests {
        outcomes.push(run(&engine.handle, request.clone()).await?);
    }
    Ok(outcomes)
}

/// Submits every request at a random moment (0 to `spread_ms` apart; with 0, all at once,
/// before the engine can finish any) and gathers the outcomes.
async fn together(
    config: &EngineConfig,
    kernels: Weights,
    requests: &[GenerateRequest],
    (seed, spread_ms): (u64, u64),
) -> TestResult<(Vec<Outcome>, u64)> {
    let engine = tiny_engine_on(config, kernels)?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut tasks = Vec::new();
    for request in requests {
        if spread_ms > 0 {
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..=spread_ms))).await;
        }
        let stream = engine.handle.submit(request.clone())?;
        tasks.push(tokio::spawn(collect(stream)));
    }
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await??);
    }
    Ok((outcomes, engine.handle.stats().preemptions))
}

fn assert_same(alone: &[Outcome], together: &[Outcome], what: &str) {
    for (i, (a, t)) in alone.iter().zip(together).enumerate() {
        assert_eq!(a, t, "{what}: request {i} differs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greedy_tokens_do_not_depend_on_batching_preemption_or_chunking_cpu_kernels() -> TestResult
{
    greedy_invariance(KernelPath::Cpu.into()).await
}

/// The integer kernels (weights quantized to Q4_1 at load, activations per row to 8 bits).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greedy_tokens_do_not_depend_on_batching_preemption_or_chunking_quantized() -> TestResult {
    greedy_invariance(Weights {
        kernels: KernelPath::Cpu,
        quantize: Some(QuantFormat::Q4_1),
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greedy_tokens_do_not_depend_on_batching_preemption_or_chunking_portable() -> TestResult {
    greedy_invariance(KernelPath::Portable.into()).await
}

async fn greedy_invariance(kernels: Weights) -> TestResult {
    let requests = random_requests(32, 1);
    let roomy = config(1024, 512);
    let reference = alone(&roomy, kernels, &requests).await?;
    assert!(reference.iter().all(|o| !o.tokens.is_empty()));

    let (batched, _) = together(&roomy, kernels, &requests, (2, 30)).await?;
    assert_same(&reference, &batched, "batched");

    // 40 blocks of 16 tokens: the largest request (364 tokens) fits alone, 32 do not. Sent in
    // a burst, or a fast engine finishes requests before the cache fills.
    let (tight, preemptions) = together(&config(40, 512), kernels, &requests, (3, 0)).await?;
    assert!(
        preemptions > 0,
        "the small cache should have forced preemptions"
    );
    assert_same(&reference, &tight, "preempted");

    let (chunked, _) = together(&config(1024, 7), kernels, &requests, (4, 30)).await?;
    assert_same(&reference, &chunked, "prefill chunks of 7");

    // Prefill held to the smallest chunks while anything decodes (a stall bound no step meets).
    let held = EngineConfig {
        max_decode_stall: Some(Duration::from_micros(1)),
        ..roomy
    };
    let (held, _) = together(&held, kernels, &requests, (6, 30)).await?;
    assert_same(&reference, &held, "prefill held beside decoding");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_sampling_is_the_same_alone_and_in_a_batch_of_16() -> TestResult {
    for kernels in [KernelPath::Cpu, KernelPath::Portable] {
        seeded_sampling(kernels.into()).await?;
    }
    Ok(())
}

async fn seeded_sampling(kernels: Weights) -> TestResult {
    let sampled = |request: GenerateRequest, seed: u64| GenerateRequest {
        sampling: SamplingParams {
            temperature: 0.9,
            top_k: Some(50),
            top_p: Some(0.95),
            seed: Some(seed),
            ..Default::default()
        },
        ..request
    };
    let requests: Vec<GenerateRequest> = random_requests(16, 9)
        .into_iter()
        .enumerate()
        .map(|(i, r)| sampled(r, 100 + i as u64))
        .collect();
    let roomy = config(1024, 512);
    let reference = alone(&roomy, kernels, &requests[..1]).await?;
    let (batched, _) = together(&roomy, kernels, &requests, (5, 30)).await?;
    assert_eq!(reference[0], batched[0]);
    // Sampling really happens: another seed gives other tokens.
    let other = alone(&roomy, kernels, &[sampled(requests[0].clone(), 7)]).await?;
    assert_ne!(reference[0].tokens, other[0].tokens);
    Ok(())
}
