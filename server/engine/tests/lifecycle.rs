//! A request's life: refusal at submit when it can never fit, cancellation freeing blocks,
//! stop sequences spanning tokens, EOS, and text deltas that never split a character.

mod common;

use common::{config, run, tiny_engine, TestResult};
use lantern_engine::detokenize::IncrementalDecoder;
use lantern_engine::{Event, FinishReason, GenerateRequest, Refusal, SubmitError};
use std::time::{Duration, Instant};

#[tokio::test]
async fn a_request_that_can_never_fit_is_refused_at_submit() -> TestResult {
    let engine = tiny_engine(&config(8, 64))?; // 128 tokens of cache, 512 allowed per request
    let too_big = engine
        .handle
        .submit(GenerateRequest::greedy(vec![5; 100], 64));
    assert!(
        matches!(
            too_big,
            Err(SubmitError::Refused(Refusal::OverCache { .. }))
        ),
        "{too_big:?}"
    );
    let too_long = engine
        .handle
        .submit(GenerateRequest::greedy(vec![5; 500], 64));
    assert!(matches!(
        too_long,
        Err(SubmitError::Refused(Refusal::OverTotalTokens { .. }))
    ));
    let unknown = engine
        .handle
        .submit(GenerateRequest::greedy(vec![5, 9999], 4));
    assert!(matches!(
        unknown,
        Err(SubmitError::UnknownToken { token: 9999, .. })
    ));
    assert_eq!(engine.handle.stats().waiting, 0);
    // The engine still serves requests that fit.
    let ok = run(&engine.handle, GenerateRequest::greedy(vec![5; 10], 3)).await?;
    assert!(!ok.tokens.is_empty());
    Ok(())
}

#[tokio::test]
async fn dropping_the_stream_frees_the_blocks() -> TestResult {
    let engine = tiny_engine(&config(64, 64))?;
    let mut request = GenerateRequest::greedy(vec![7; 200], 300);
    request.ignore_eos = true;
    let mut stream = engine.handle.submit(request)?;
    assert!(matches!(stream.recv().await, Some(Event::Token(_))));
    // Stats are published after each step; the prompt alone holds 13 blocks of 16.
    wait_for(|| engine.handle.stats().used_blocks >= 13).await?;
    drop(stream);
    wait_for(|| engine.handle.stats().used_blocks == 0 && engine.handle.stats().running == 0).await
}

#[tokio::test]
async fn an_engine_that_handed_its_memory_back_gives_the_same_answers() -> TestResult {
    let mut settings = config(64, 64);
    settings.release_memory_after_idle = Some(Duration::from_millis(20));
    let engine = tiny_engine(&settings)?;
    let kept = tiny_engine(&config(64, 64))?;
    let request = || {
        let mut request = GenerateRequest::greedy((1..90).collect(), 24);
        request.ignore_eos = true;
        request
    };
    // Idle past the release (the warm-up's memory first), then after each request: the KV
    // pages and step buffers go back to the OS.
    wait_for(|| engine.handle.stats().idle_releases == 1).await?;
    let first = run(&engine.handle, request()).await?;
    wait_for(|| engine.handle.stats().idle_releases == 2).await?;
    let again = run(&engine.handle, request()).await?;
    wait_for(|| engine.handle.stats().idle_releases == 3).await?;
    assert_eq!(
        first, again,
        "answers changed after the memory was released"
    );
    assert_eq!(first, run(&kept.handle, request()).await?);
    assert_eq!(kept.handle.stats().idle_releases, 0);
    Ok(())
}

async fn wait_for(condition: impl Fn() -> bool) -> TestResult {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !condition() {
        if Instant::now() > deadline {
            return Err("condition not reached within 5 s".into());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

#[tokio::test]
async fn stop_sequences_spanning_tokens_end_generation_and_are_excluded() -> TestResult {
    let engine = tiny_engine(&config(64, 64))?;
    let prompt = engine
        .tokenizer
        .tokenizer
        .encode("The capital of France is", false)?
        .get_ids()
        .to_vec();
    let mut request = GenerateRequest::greedy(prompt, 40);
    request.ignore_eos = true;
    let free = run(&engine.handle, request.clone()).await?;
    // Pick a stop string that starts inside one token's text and ends inside the next one's.
    let decode = |n: usize| {
        engine
            .tokenizer
            .tokenizer
            .decode(&free.tokens[..n], true)
            .unwrap_or_default()
    };
    let bounds: Vec<usize> = (0..=free.tokens.len()).map(|n| decode(n).len()).collect();
    let stop = (2..bounds.len() - 2)
        .filter(|&i| bounds[i + 1] - bounds[i] >= 2 && bounds[i + 2] > bounds[i + 1])
        .find_map(|i| free.text.get(bounds[i] + 1..bounds[i + 1] + 1))
        .ok_or("no token pair to span")?
        .to_string();
    let expected = free.text[..free.text.find(&stop).ok_or("stop not in text")?].to_string();
    request.stop = vec![stop.clone()];
    let stopped = run(&engine.handle, request).await?;
    assert_eq!(stopped.finish, FinishReason::StopSequence, "stop {stop:?}");
    assert_eq!(stopped.text, expected, "stop {stop:?} in {:?}", free.text);
    assert!(!stopped.text.contains(&stop));
    Ok(())
}

#[tokio::test]
async fn eos_ends_generation_unless_ignored() -> TestResult {
    let engine = tiny_engine(&config(64, 64))?;
    // Find a prompt whose greedy continuation meets an EOS id within 64 tokens.
    let eos = engine.tokenizer.eos_token_ids.clone();
    for first in 3..200u32 {
        let mut request = GenerateRequest::greedy(vec![first, first + 1], 64);
        request.ignore_eos = true;
        let free = run(&engine.handle, request.clone()).await?;
        if let Some(at) = free.tokens.iter().position(|t| eos.contains(t)) {
            request.ignore_eos = false;
            let ended = run(&engine.handle, request).await?;
            assert_eq!(ended.finish, FinishReason::EosToken);
            assert_eq!(ended.tokens, free.tokens[..=at]);
            return Ok(());
        }
    }
    Err("no prompt reached EOS".into())
}

#[tokio::test]
async fn text_deltas_never_split_a_character() -> TestResult {
    let engine = tiny_engine(&config(64, 64))?;
    let tokenizer = &engine.tokenizer.tokenizer;
    let text = "Emoji 🙂🚀 👍🏽, 中文：语言模型, Größe — €5";
    let ids = tokenizer.encode(text, false)?.get_ids().to_vec();
    assert!(
        ids.len() > text.chars().count() / 2,
        "multi-byte characters span several tokens"
    );
    let mut decoder = IncrementalDecoder::new();
    let mut joined = String::new();
    for end in 1..=ids.len() {
        let delta = decoder.step(tokenizer, &ids[..end]);
        assert!(
            !delta.contains('\u{FFFD}'),
            "delta {delta:?} splits a character"
        );
        joined.push_str(&delta);
    }
    joined.push_str(&decoder.finish(tokenizer, &ids));
    assert_eq!(joined, tokenizer.decode(&ids, true)?);
    assert_eq!(joined, text);
    Ok(())
}

#[test]
fn a_budget_the_cache_cannot_hold_fails_at_start_naming_the_setting() {
    // 4 blocks of 16 tokens cannot take a 512-token prefill step.
    let error = tiny_engine(&config(4, 512))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(error.contains("--max-batch-prefill-tokens"), "{error}");
}
