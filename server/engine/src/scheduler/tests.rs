//! The scheduler's invariants under random and seeded workloads, and its policies.
use super::*;
use proptest::prelude::*;

fn config(num_blocks: usize) -> SchedulerConfig {
    SchedulerConfig {
        block_size: 4,
        num_blocks,
        max_num_seqs: 4,
        max_batch_prefill_tokens: 10,
        max_total_tokens: 64,
        prefix_caching: true,
    }
}

/// Checks the invariants of the module doc.
fn check_invariants(s: &Scheduler, plan: &Plan) -> Result<(), TestCaseError> {
    let size = s.config.block_size;
    let mut holders: HashMap<u32, u32> = HashMap::new();
    for (id, blocks) in s.held_blocks() {
        let mut distinct = blocks.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        prop_assert_eq!(
            distinct.len(),
            blocks.len(),
            "sequence {} holds a block twice",
            id
        );
        for &block in blocks {
            *holders.entry(block).or_default() += 1;
        }
    }
    prop_assert_eq!(
        holders.len(),
        s.stats().used_blocks,
        "held blocks != used blocks (leak)"
    );
    for (&block, &count) in &holders {
        prop_assert_eq!(s.allocator.ref_count(block), count, "block {}", block);
    }
    // Each sequence's full blocks are hashed from its own tokens, and a cached block it
    // holds has exactly those tokens: nothing is read under another prefix's name.
    let cached: HashMap<u32, (BlockHash, Vec<u32>)> = s
        .allocator
        .cached()
        .map(|(block, hash, tokens)| (block, (*hash, tokens.to_vec())))
        .collect();
    for seq in s.sequences.values() {
        prop_assert!(seq.hashes.len() <= seq.computed / size);
        let mut parent = None;
        for (i, hash) in seq.hashes.iter().enumerate() {
            let tokens = &seq.tokens[i * size..(i + 1) * size];
            prop_assert_eq!(*hash, block_hash(parent.as_ref(), tokens));
            if let Some((cached_hash, cached_tokens)) = cached.get(&seq.blocks[i]) {
                prop_assert_eq!(cached_hash, hash);
                prop_assert_eq!(cached_tokens.as_slice(), tokens);
            }
            parent = Some(*hash);
        }
    }
    for scheduled in &plan.steps {
        let step = &scheduled.step;
        let end = step.context_before + step.tokens.len();
        prop_assert!(step.block_table.len() * size >= end);
        // A step writes only into blocks its sequence alone holds, none of them cached.
        for &block in &step.block_table[step.context_before / size..end.div_ceil(size)] {
            prop_assert_eq!(s.allocator.ref_count(block), 1, "a shared block is written");
            prop_assert!(!cached.contains_key(&block), "a cached block is written");
        }
    }
    prop_assert!(s.stats().running <= s.config.max_num_seqs);
    Ok(())
}

#[derive(Debug, Clone)]
enum Op {
    /// A prompt of `prompt` tokens from one of a few families sharing their prefixes.
    Submit {
        prompt: usize,
        max_new: usize,
        family: u32,
    },
    Cancel(usize),
    /// Proposes `len` draft tokens for a decoding sequence (speculative decoding); the step
    /// that verifies them accepts `accept % (len + 1)`.
    Propose {
        pick: usize,
        len: usize,
    },
    Step {
        finish: Vec<bool>,
        accept: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1usize..40, 0usize..30, 0u32..3).prop_map(|(prompt, max_new, family)| Op::Submit {
            prompt,
            max_new,
            family
        }),
        any::<usize>().prop_map(Op::Cancel),
        (any::<usize>(), 1usize..6).prop_map(|(pick, len)| Op::Propose { pick, len }),
        (
            proptest::collection::vec(proptest::bool::weighted(0.2), 8),
            any::<usize>()
        )
            .prop_map(|(finish, accept)| Op::Step { finish, accept }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    /// Random submits, cancels and steps (each sampled sequence finishing at random): no
    /// block leaks or is held twice, and once everything ends no block is used.
    #[test]
    fn no_block_leaks_over_random_histories(ops in proptest::collection::vec(op(), 1..120), blocks in 8usize..40, stall_cap in 1usize..12) {
        let mut s = Scheduler::new(config(blocks));
        s.set_prefill_while_decoding(stall_cap);
        let mut next_id = 0;
        let mut generated: HashMap<SequenceId, (usize, usize)> = HashMap::new(); // (new, max_new)
        let mut prompts: HashMap<SequenceId, usize> = HashMap::new();
        for op in ops {
            let mut plan = Plan::default();
            match op {
                Op::Submit { prompt, max_new, family } => {
                    let fits = s.check(prompt, max_new).is_ok();
                    let tokens = (0..prompt as u32).map(|i| family * 100 + i % 7).collect();
                    prop_assert_eq!(s.add(next_id, tokens, max_new).is_ok(), fits);
                    if fits {
                        prompts.insert(next_id, prompt);
                        generated.insert(next_id, (0, max_new));
                    }
                    next_id += 1;
                }
                Op::Cancel(pick) => {
                    let ids: Vec<_> = { let mut v: Vec<_> = s.ids().collect(); v.sort_unstable(); v };
                    if !ids.is_empty() {
                        let id = ids[pick % ids.len()];
                        s.remove(id);
                        generated.remove(&id);
                    }
                }
                Op::Propose { pick, len } => {
                    let ids: Vec<_> = { let mut v: Vec<_> = s.ids().collect(); v.sort_unstable(); v };
                    if !ids.is_empty() {
                        let id = ids[pick % ids.len()];
                        let room = generated.get(&id).map_or(0, |g| g.1.saturating_sub(g.0 + 1));
                        let draft: Vec<u32> = (0..len.min(room) as u32).map(|i| 20 + i).collect();
                        if !draft.is_empty() {
                            s.propose(id, &draft);
                        }
                    }
                }
                Op::Step { finish, accept } => {
                    plan = s.schedule();
                    check_invariants(&s, &plan)?;
                    // The stall bound: while a sequence decodes (feeds its one generated
                    // token), the step's prefill chunks stay within the cap.
                    let decodes = plan.steps.iter().any(|p| {
                        let length = prompts.get(&p.id).copied().unwrap_or(0) + generated.get(&p.id).map_or(0, |g| g.0);
                        p.step.tokens.len() == 1 && p.step.context_before + 1 == length && generated.get(&p.id).is_some_and(|g| g.0 > 0)
                    });
                    // (A verified draft is a decode of several tokens, not prefill.)
                    let prefill: usize = plan.steps.iter().filter(|p| s.draft_of(p.id) == 0).map(|p| p.step.tokens.len()).filter(|&n| n > 1).sum();
                    if decodes {
                        prop_assert!(prefill <= stall_cap, "{} prefill tokens beside decodes, cap {}", prefill, stall_cap);
                    }
                    prop_assert!(plan.prefill_tokens <= s.config.max_batch_prefill_tokens);
                    s.complete(&plan);
                    for (i, scheduled) in plan.steps.iter().enumerate() {
                        let draft = s.draft_of(scheduled.id);
                        if draft > 0 {
                            // Verified: some proposals stand, then the model's own token.
                            let accepted = accept % (draft + 1);
                            s.settle(scheduled.id, accepted);
                            if let Some(entry) = generated.get_mut(&scheduled.id) {
                                entry.0 += accepted;
                            }
                            check_invariants(&s, &Plan::default())?;
                        } else if scheduled.step.logits != LogitsWanted::Last {
                            continue;
                        }
                        let Some(entry) = generated.get_mut(&scheduled.id) else { continue };
                        entry.0 += 1;
                        if finish[i % finish.len()] || entry.0 >= entry.1.max(1) {
                            s.remove(scheduled.id);
                            generated.remove(&scheduled.id);
                        } else {
                            s.push_token(scheduled.id, 9 + entry.0 as u32 % 2);
                        }
                    }
                    // The plan's own checks hold when it is made, not after it ran.
                    plan = Plan::default();
                }
            }
            check_invariants(&s, &plan)?;
        }
        // Drain: everything left must finish without deadlock.
        for _ in 0..10_000 {
            if s.is_idle() { break; }
            let plan = s.schedule();
            prop_assert!(!plan.steps.is_empty(), "stalled with work left: {:?}", s.stats());
            check_invariants(&s, &plan)?;
            s.complete(&plan);
            for scheduled in &plan.steps {
                if s.draft_of(scheduled.id) > 0 {
                    s.settle(scheduled.id, 0);
                    s.remove(scheduled.id);
                } else if scheduled.step.logits == LogitsWanted::Last {
                    s.remove(scheduled.id);
                }
            }
        }
        prop_assert!(s.is_idle());
        prop_assert_eq!(s.stats().used_blocks, 0);
    }
}

/// 100k seeded operations (admit, share a running or cached prefix, fork a parallel
/// sample, finish, cancel, and the preemptions and evictions a small cache forces), every invariant checked after
/// each; then everything drains and no block stays held.
#[test]
fn a_seeded_workload_of_100k_operations_keeps_every_invariant() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(14);
    let mut s = Scheduler::new(SchedulerConfig {
        max_num_seqs: 6,
        max_batch_prefill_tokens: 24,
        ..config(24)
    });
    let check = |s: &Scheduler, plan: &Plan| {
        check_invariants(s, plan).unwrap_or_else(|e| panic!("{e}"));
    };
    let mut prompts: Vec<Vec<u32>> = Vec::new();
    let mut budgets: HashMap<SequenceId, usize> = HashMap::new();
    let mut next_id = 0;
    let mut counts = (0u64, 0u64, 0u64, 0u64); // (shared prompts, steps, cancels, forks)
    let mut prompts_of: HashMap<SequenceId, Vec<u32>> = HashMap::new();
    for _ in 0..100_000 {
        let mut plan = Plan::default();
        match rng.random_range(0..10) {
            // Clients wait when the queue is long, as they would on 429s.
            0..3 if s.waiting.len() < 8 => {
                // Half the time a prompt seen before, or one extending it: a fork or a
                // later turn of the same conversation.
                let tokens = match prompts.len() {
                    0 => vec![1],
                    n if rng.random_bool(0.5) => {
                        counts.0 += 1;
                        let mut seen = prompts[rng.random_range(0..n)].clone();
                        let extra = rng.random_range(0..6);
                        seen.extend((0..extra).map(|_| rng.random_range(0..50)));
                        seen
                    }
                    _ => (0..rng.random_range(1..40))
                        .map(|_| rng.random_range(0..50))
                        .collect(),
                };
                let mut tokens: Vec<u32> = tokens.into_iter().take(40).collect();
                let max_new = rng.random_range(1..20);
                // A fifth of the time, a parallel sample of a live sequence's prompt.
                let mut options = SequenceOptions::default();
                let live: Vec<SequenceId> = s.ids().collect();
                if !live.is_empty() && rng.random_bool(0.2) {
                    let leader = live[rng.random_range(0..live.len())];
                    if let Some(prompt) = prompts_of.get(&leader) {
                        tokens = prompt.clone();
                        options.leader = Some(leader);
                        counts.3 += 1;
                    }
                }
                if s.add_with(next_id, tokens.clone(), max_new, options)
                    .is_ok()
                {
                    budgets.insert(next_id, max_new);
                    prompts_of.insert(next_id, tokens.clone());
                    prompts.push(tokens);
                    if prompts.len() > 32 {
                        prompts.swap_remove(rng.random_range(0..32));
                    }
                }
                next_id += 1;
            }
            0..4 => {
                let mut ids: Vec<_> = s.ids().collect();
                ids.sort_unstable();
                if !ids.is_empty() {
                    counts.2 += 1;
                    s.remove(ids[rng.random_range(0..ids.len())]);
                }
            }
            _ => {
                counts.1 += 1;
                plan = s.schedule();
                check(&s, &plan);
                s.complete(&plan);
                for scheduled in &plan.steps {
                    if scheduled.step.logits != LogitsWanted::Last {
                        continue;
                    }
                    // Each sampled token spends the budget; a sequence ends at its
                    // max_new_tokens (as the engine ends it) or at random (EOS).
                    let left = budgets.entry(scheduled.id).or_default();
                    *left = left.saturating_sub(1);
                    if *left == 0 || rng.random_bool(0.1) {
                        s.remove(scheduled.id);
                        budgets.remove(&scheduled.id);
                    } else {
                        s.push_token(scheduled.id, rng.random_range(0..50));
                    }
                }
                plan = Plan::default();
            }
        }
        check(&s, &plan);
    }
    for _ in 0..100_000 {
        if s.is_idle() {
            break;
        }
        let plan = s.schedule();
        if plan.steps.is_empty() {
            let first = s
                .waiting
                .first()
                .and_then(|id| s.sequences.get(id).map(|q| (id, q)));
            let detail = first.map(|(id, q)| {
                format!(
                    "first waiting {id}: {} tokens, {} computed, {} blocks, prefix {}",
                    q.tokens.len(),
                    q.computed,
                    q.blocks.len(),
                    s.cached_prefix(&q.tokens, q.adapter).len()
                )
            });
            panic!("stalled: {:?} {detail:?}", s.stats());
        }
        check(&s, &plan);
        s.complete(&plan);
        for scheduled in &plan.steps {
            if scheduled.step.logits == LogitsWanted::Last {
                s.remove(scheduled.id);
            }
        }
    }
    let stats = s.stats();
    assert!(s.is_idle());
    assert_eq!(stats.used_blocks, 0);
    assert_eq!(stats.free_blocks, stats.total_blocks);
    // The workload did exercise what it is about.
    assert!(stats.preemptions > 100, "{stats:?}");
    assert!(stats.prefix_cache.hit_tokens > 10_000, "{stats:?}");
    assert!(stats.cached_idle_blocks > 0, "{stats:?}");
    assert!(
        counts.0 > 10_000 && counts.1 > 50_000 && counts.2 > 5_000,
        "{counts:?}"
    );
}

#[test]
fn a_cached_prefix_is_shared_and_the_last_token_always_computed() {
    let roomy = SchedulerConfig {
        max_batch_prefill_tokens: 64,
        ..config(16)
    };
    let mut s = Scheduler::new(roomy);
    let prompt: Vec<u32> = (0..12).collect(); // three full blocks of 4
    s.add(0, prompt.clone(), 2).ok();
    let plan = s.schedule();
    s.complete(&plan);
    s.push_token(0, 99);
    // While 0 still runs, the same prompt shares its first two blocks (the third holds
    // the last prompt token, which must be computed for its logits).
    s.add(1, prompt.clone(), 2).ok();
    let plan = s.schedule();
    let second = &plan.steps[1].step;
    assert_eq!(second.context_before, 8);
    assert_eq!(second.tokens, vec![8, 9, 10, 11]);
    assert_eq!(
        &second.block_table[..2],
        &plan.steps[0].step.block_table[..2]
    );
    assert_ne!(second.block_table[2], plan.steps[0].step.block_table[2]);
    s.complete(&plan);
    assert_eq!(s.cached_tokens(1), 8);
    // Both end; a longer prompt with the same start finds all three blocks, idle now.
    s.remove(0);
    s.remove(1);
    assert_eq!(s.stats().used_blocks, 0);
    assert_eq!(s.stats().cached_idle_blocks, 3);
    let mut longer = prompt.clone();
    longer.extend([50, 51]);
    s.add(2, longer, 2).ok();
    let plan = s.schedule();
    assert_eq!(plan.steps[0].step.context_before, 12);
    assert_eq!(plan.steps[0].step.tokens, vec![50, 51]);
    let stats = s.stats();
    assert_eq!(stats.prefix_cache.queries, 3);
    assert_eq!(stats.prefix_cache.hit_tokens, 8 + 12);
    // With caching off nothing is shared.
    let mut off = Scheduler::new(SchedulerConfig {
        prefix_caching: false,
        ..roomy
    });
    for id in 0..2 {
        off.add(id, prompt.clone(), 2).ok();
        let plan = off.schedule();
        assert_eq!(plan.steps.last().map(|p| p.step.context_before), Some(0));
        off.complete(&plan);
    }
    assert_eq!(off.stats().cached_idle_blocks, 0);
}

#[test]
fn a_request_that_can_never_fit_is_refused() {
    let mut s = Scheduler::new(config(4)); // 16 tokens of cache
    assert!(matches!(
        s.add(0, vec![1; 10], 10),
        Err(Refusal::OverCache { needed: 5, .. })
    ));
    assert!(matches!(
        s.add(1, vec![1; 60], 10),
        Err(Refusal::OverTotalTokens { .. })
    ));
    assert!(matches!(
        s.add(2, vec![], 1),
        Err(Refusal::EmptyPrompt { .. })
    ));
    assert!(s.is_idle());
}

#[test]
fn long_prompts_are_chunked_and_decodes_keep_running() {
    let mut s = Scheduler::new(config(40));
    s.add(0, vec![1; 3], 5).ok();
    let plan = s.schedule();
    s.complete(&plan);
    s.push_token(0, 5);
    s.add(1, vec![1; 25], 5).ok();
    // Each step: sequence 0 decodes one token; sequence 1 gets at most the prefill budget.
    for expected_chunk in [10, 10, 5] {
        let plan = s.schedule();
        let lens: Vec<usize> = plan.steps.iter().map(|p| p.step.tokens.len()).collect();
        assert_eq!(lens, vec![1, expected_chunk]);
        s.complete(&plan);
        s.push_token(0, 5);
    }
}

#[test]
fn counts_that_would_overflow_are_refused_not_wrapped() {
    let limits = config(40);
    let refusal = limits.check(usize::MAX, usize::MAX);
    assert!(
        matches!(refusal, Err(Refusal::OverTotalTokens { .. })),
        "{refusal:?}"
    );
    assert!(matches!(
        limits.check(3, usize::MAX),
        Err(Refusal::OverTotalTokens { .. })
    ));
    // The message adds them without overflowing either.
    let message = refusal.map_err(|r| r.to_string()).err().unwrap_or_default();
    assert!(message.contains(&usize::MAX.to_string()), "{message}");
}

#[test]
fn running_out_of_blocks_preempts_the_newest_sequence() {
    let mut s = Scheduler::new(SchedulerConfig {
        max_batch_prefill_tokens: 64,
        ..config(5)
    });
    s.add(0, vec![1; 8], 12).ok(); // 2 blocks now, up to 5
    s.add(1, vec![1; 4], 12).ok(); // 1 block now
    let plan = s.schedule();
    assert_eq!(plan.admitted, vec![0, 1]);
    s.complete(&plan);
    let mut preempted = Vec::new();
    for _ in 0..12 {
        s.push_token(0, 3);
        s.push_token(1, 3);
        let plan = s.schedule();
        preempted.extend(plan.preempted.iter().copied());
        s.complete(&plan);
    }
    assert_eq!(preempted.first(), Some(&1));
    assert!(s.stats().preemptions > 0);
}

#[test]
fn requests_are_counted_once_however_many_samples_they_have() {
    let mut s = Scheduler::new(config(64));
    let prompt: Vec<u32> = (0..9).collect();
    let sample = |leader| SequenceOptions {
        leader,
        prompt_logprobs: false,
        adapter: None,
    };
    for (id, leader) in [(0, None), (1, Some(0)), (2, Some(0))] {
        s.add_with(id, prompt.clone(), 4, sample(leader))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    s.add(3, vec![7; 5], 4).unwrap_or_else(|e| panic!("{e}"));
    let stats = s.stats();
    assert_eq!((stats.waiting, stats.waiting_requests), (4, 2));
    assert_eq!(stats.running_requests, 0);
    // The leader runs, its samples wait for its blocks: that request is running.
    let plan = s.schedule();
    assert!(plan.admitted.contains(&0) && !plan.admitted.contains(&1));
    let stats = s.stats();
    assert!(stats.waiting >= 2, "{stats:?}");
    assert_eq!(
        stats.running_requests + stats.waiting_requests,
        2,
        "{stats:?}"
    );
    assert!(stats.running_requests >= 1, "{stats:?}");
}

/// A verified draft keeps the accepted proposals' keys and values, gives back the blocks only
/// the rejected ones needed, and publishes no block holding a rejected token.
#[test]
fn a_settled_draft_keeps_what_stood_and_publishes_no_rejected_token() {
    let mut s = Scheduler::new(config(64));
    s.add(0, (1..=6).collect(), 20)
        .unwrap_or_else(|e| panic!("{e}"));
    let plan = s.schedule();
    s.complete(&plan);
    s.push_token(0, 7);
    assert!(s.propose(0, &[8, 90, 91, 92, 93]));
    assert!(!s.propose(0, &[1]), "one draft at a time");
    let plan = s.schedule();
    let step = &plan.steps[0].step;
    assert_eq!(step.tokens, vec![7, 8, 90, 91, 92, 93]);
    assert_eq!(step.logits, LogitsWanted::All);
    assert_eq!(plan.prefill_tokens, 0, "a draft is decoding, not prefill");
    assert_eq!(step.block_table.len(), 3);
    s.complete(&plan);
    // The model chose 8 after 7, then something else than 90.
    s.settle(0, 1);
    let seq = &s.sequences[&0];
    assert_eq!(seq.tokens, (1..=8).collect::<Vec<u32>>());
    assert_eq!((seq.computed, seq.draft, seq.blocks.len()), (8, 0, 2));
    assert_eq!(s.stats().used_blocks, 2);
    for (_, _, tokens) in s.allocator.cached() {
        assert!(
            !tokens.iter().any(|t| (90..=93).contains(t)),
            "a rejected token was published: {tokens:?}"
        );
    }
    assert_eq!(
        s.allocator.cached().count(),
        2,
        "both full blocks of accepted tokens"
    );
    // Decoding goes on from the model's own token.
    s.push_token(0, 50);
    let plan = s.schedule();
    assert_eq!(plan.steps[0].step.tokens, vec![50]);
    assert_eq!(plan.steps[0].step.context_before, 8);
}

/// With room for one adapter, a request for a second waits while the first runs (requests
/// for the base and for the running adapter go ahead of it), and runs once it is done.
#[test]
fn requests_for_more_adapters_than_fit_wait_their_turn() {
    let mut s = Scheduler::new(config(64));
    s.set_max_adapters(1);
    let under = |adapter| SequenceOptions {
        adapter,
        ..SequenceOptions::default()
    };
    for (id, adapter) in [(0, Some(5)), (1, Some(6)), (2, None), (3, Some(5))] {
        s.add_with(id, vec![1, 2, 3], 4, under(adapter))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let plan = s.schedule();
    let admitted: Vec<SequenceId> = plan.steps.iter().map(|step| step.id).collect();
    assert_eq!(admitted, [0, 2, 3]);
    assert!(plan
        .steps
        .iter()
        .all(|step| step.step.adapter == s.adapter_of(step.id)));
    assert_eq!(s.running_adapters(), [5]);
    assert_eq!(s.waiting_adapters(), [6]);
    s.complete(&plan);
    for id in [0, 3] {
        s.remove(id);
    }
    let plan = s.schedule();
    assert!(plan.admitted.contains(&1));
    assert_eq!(s.running_adapters(), [6]);
}
