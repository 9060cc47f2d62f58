//! Prefix caching is exact: a request gives bitwise the same tokens and logprobs whether its
//! prefix's keys came from the cache (whole or in part), were evicted and recomputed, or its
//! sequence was preempted, as on an engine with caching off. On the CPU kernels, whose rows
//! do not depend on what else is in a step.

mod common;

use common::{collect, collect_with_end, config, tiny_engine, Outcome, TestResult};
use lantern_engine::{EngineConfig, EngineHandle, EventStream, GenerateRequest, SamplingParams};

/// A request's outcome and how many of its prompt tokens came from the cache.
async fn run_counting_cache(
    handle: &EngineHandle,
    request: GenerateRequest,
) -> TestResult<(Outcome, usize)> {
    collect_counting_cache(handle.submit(request)?).await
}

async fn collect_counting_cache(stream: EventStream) -> TestResult<(Outcome, usize)> {
    let (outcome, end) = collect_with_end(stream).await?;
    Ok((outcome, end.cached_tokens))
}

fn prompt(len: usize, salt: u32) -> Vec<u32> {
    (0..len as u32)
        .map(|i| 3 + (i * 7 + salt * 13) % 400)
        .collect()
}

fn greedy(prompt: Vec<u32>, new: usize) -> GenerateRequest {
    let mut request = GenerateRequest::greedy(prompt, new);
    request.ignore_eos = true;
    request
}

fn seeded(prompt: Vec<u32>, new: usize) -> GenerateRequest {
    let mut request = greedy(prompt, new);
    request.sampling = SamplingParams {
        temperature: 0.9,
        top_k: Some(40),
        seed: Some(11),
        ..SamplingParams::default()
    };
    request
}

fn without_cache(settings: &EngineConfig) -> EngineConfig {
    EngineConfig {
        prefix_caching: false,
        ..settings.clone()
    }
}

#[tokio::test]
async fn cold_warm_and_partial_hits_give_the_same_bits() -> TestResult {
    let settings = config(64, 512);
    let cached = tiny_engine(&settings)?;
    let reference = tiny_engine(&without_cache(&settings))?;
    let makers: [fn(Vec<u32>, usize) -> GenerateRequest; 2] = [greedy, seeded];
    for (round, make) in makers.into_iter().enumerate() {
        let whole = make(prompt(100, 1), 24);
        let (expected, none) = run_counting_cache(&reference.handle, whole.clone()).await?;
        assert_eq!(none, 0);
        // Cold, then warm: 6 full blocks of 16 hit (the 7th holds the last prompt token).
        let (cold, cold_hits) = run_counting_cache(&cached.handle, whole.clone()).await?;
        let (warm, warm_hits) = run_counting_cache(&cached.handle, whole.clone()).await?;
        assert_eq!(cold, expected);
        assert_eq!(warm, expected);
        // The second round's cold run finds the first round's blocks.
        assert_eq!(cold_hits, if round == 0 { 0 } else { 96 });
        assert_eq!(warm_hits, 96);
        // A prompt sharing the first 50 tokens: 3 blocks hit, the rest is computed.
        let mut partial_prompt = prompt(50, 1);
        partial_prompt.extend(prompt(40, 2));
        let partial = make(partial_prompt, 24);
        let (hit, hits) = run_counting_cache(&cached.handle, partial.clone()).await?;
        // In the second round, all 5 full blocks: the first round computed this prompt.
        assert_eq!(hits, if round == 0 { 48 } else { 80 });
        assert_eq!(hit, run_counting_cache(&reference.handle, partial).await?.0);
    }
    Ok(())
}

#[tokio::test]
async fn evicted_prefixes_are_recomputed_to_the_same_bits() -> TestResult {
    // 16 blocks of 16 tokens: one 124-token sequence takes 8 of them.
    let settings = config(16, 128);
    let cached = tiny_engine(&settings)?;
    let reference = tiny_engine(&without_cache(&settings))?;
    let first = greedy(prompt(100, 3), 24);
    let expected = run_counting_cache(&reference.handle, first.clone())
        .await?
        .0;
    assert_eq!(
        run_counting_cache(&cached.handle, first.clone()).await?.0,
        expected
    );
    // Other prompts need the blocks: the first prompt's cached blocks are evicted.
    for salt in [4, 5] {
        run_counting_cache(&cached.handle, greedy(prompt(100, salt), 24)).await?;
    }
    let (again, hits) = run_counting_cache(&cached.handle, first).await?;
    assert!(hits < 96, "nothing was evicted ({hits} tokens hit)");
    assert_eq!(again, expected);
    Ok(())
}

#[tokio::test]
async fn preempted_sequences_sharing_prefixes_keep_their_bits() -> TestResult {
    // Six requests over two shared prefixes at once on a cache too small for all of them:
    // sequences are preempted and recomputed (from the cache where their blocks survived).
    let settings = config(20, 64);
    let cached = tiny_engine(&settings)?;
    let reference = tiny_engine(&without_cache(&settings))?;
    let requests: Vec<GenerateRequest> = (0..6)
        .map(|i| {
            let mut tokens = prompt(40, i % 2);
            tokens.extend(prompt(3 + i as usize, 10 + i));
            if i % 3 == 0 {
                seeded(tokens, 60)
            } else {
                greedy(tokens, 60)
            }
        })
        .collect();
    let mut expected = Vec::new();
    for request in &requests {
        expected.push(
            run_counting_cache(&reference.handle, request.clone())
                .await?
                .0,
        );
    }
    let streams = requests
        .iter()
        .map(|r| cached.handle.submit(r.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    let mut outcomes = Vec::new();
    for stream in streams {
        outcomes.push(collect(stream).await?);
    }
    let stats = cached.handle.stats();
    assert!(stats.preemptions > 0, "{stats:?}");
    assert!(stats.prefix_cache.hit_tokens > 0, "{stats:?}");
    assert_eq!(outcomes, expected);
    Ok(())
}

#[tokio::test]
async fn parallel_samples_share_the_prompt_and_differ_reproducibly() -> TestResult {
    let engine = tiny_engine(&config(64, 512))?;
    let request = seeded(prompt(70, 6), 16);
    let (handle, sample) = (&engine.handle, &request);
    let samples = |n| async move {
        let mut outcomes = Vec::new();
        for stream in handle.submit_samples(sample.clone(), n)? {
            outcomes.push(collect_counting_cache(stream).await?);
        }
        TestResult::Ok(outcomes)
    };
    let first = samples(4).await?;
    // The first sample prefilled the prompt; the others took its 4 full blocks.
    let hits: Vec<usize> = first.iter().map(|(_, hits)| *hits).collect();
    assert_eq!(hits, vec![0, 64, 64, 64]);
    let mut distinct: Vec<&Vec<u32>> = first.iter().map(|(o, _)| &o.tokens).collect();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 4, "4 seeds, 4 completions: {first:?}");
    // Reproducible: the same 4 again, and sample 0 is the request itself.
    let again = samples(4).await?;
    let outcomes =
        |runs: &[(Outcome, usize)]| runs.iter().map(|(o, _)| o.clone()).collect::<Vec<_>>();
    assert_eq!(outcomes(&again), outcomes(&first));
    assert_eq!(
        run_counting_cache(&engine.handle, request).await?.0,
        first[0].0
    );
    Ok(())
}

#[tokio::test]
async fn prompt_logprobs_are_those_of_the_same_tokens_generated() -> TestResult {
    // Prefill chunks of 32: the 68-token prompt below takes three steps of every-row logits.
    let engine = tiny_engine(&config(64, 32))?;
    let start = prompt(60, 8);
    let (generated, _) = run_counting_cache(&engine.handle, greedy(start.clone(), 8)).await?;
    // The start and what the model generated after it, as a prompt: the log-probability of
    // each generated token given what precedes it is the one reported when it was generated.
    let mut whole = start.clone();
    whole.extend(&generated.tokens);
    let mut request = greedy(whole.clone(), 4);
    request.prompt_logprobs = true;
    let (with_logprobs, end) = collect_with_end(engine.handle.submit(request)?).await?;
    assert_eq!(end.prompt_logprobs.len(), whole.len());
    assert_eq!(end.prompt_logprobs[0], None);
    assert!(end.prompt_logprobs[1..].iter().all(Option::is_some));
    let at_generated: Vec<f32> = end.prompt_logprobs[60..]
        .iter()
        .map(|p| p.as_ref().map_or(f32::NAN, |p| p.logprob))
        .collect();
    assert_eq!(at_generated, generated.logprobs, "bit for bit");
    // The prompt was computed whole (its start is cached, but cached keys have no logits),
    // and what follows it is what the same request gives without prompt log-probabilities.
    assert_eq!(end.cached_tokens, 0);
    let (plain, hits) = run_counting_cache(&engine.handle, greedy(whole, 4)).await?;
    assert!(hits > 0);
    assert_eq!(plain, with_logprobs);
    Ok(())
}
