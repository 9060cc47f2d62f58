//! `Scheduler`: which tokens of which sequences run in the next forward step. Plain
//! synchronous policy, no threads: the worker calls [`Scheduler::schedule`], runs the model,
//! then reports back with [`Scheduler::complete`], [`Scheduler::push_token`] and
//! [`Scheduler::remove`].
//!
//! A sequence is its tokens (prompt, then generated ones) and how many of them are in the KV
//! cache (`computed`). A step feeds it `tokens[computed..computed + n]`: the whole rest when one
//! token remains (a decode), else a chunk within the step's prefill budget. Prefill, chunked
//! prefill, decode and recomputation after preemption are therefore all one thing.
//!
//! Each step: running sequences first, oldest first; then waiting ones in arrival order while
//! `max_num_seqs`, the prefill budget and free blocks allow. When blocks run out, the most
//! recently admitted running sequence is preempted: its blocks are freed and it waits again, to
//! be recomputed from its tokens. A request that could never fit is refused in [`Scheduler::add`].
//!
//! Invariant: the blocks held by sequences are exactly the allocator's used blocks, each held
//! by one sequence, and a scheduled sequence's blocks cover every position it will have.

use crate::blocks::BlockAllocator;
use lantern_models::{LogitsWanted, SequenceStep};
use std::collections::{BTreeSet, HashMap};

/// Identifies a sequence; ids grow with arrival, so their order is arrival order.
pub type SequenceId = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerConfig {
    pub block_size: usize,
    pub num_blocks: usize,
    pub max_num_seqs: usize,
    /// Prompt tokens (chunks included) one step may prefill, across sequences.
    pub max_batch_prefill_tokens: usize,
    /// Prompt plus new tokens allowed for one request.
    pub max_total_tokens: usize,
}

impl SchedulerConfig {
    /// Checks a request against the limits it can never exceed (counts from clients: no
    /// arithmetic here can overflow).
    pub fn check(&self, prompt: usize, max_new_tokens: usize) -> Result<(), Refusal> {
        if prompt == 0 {
            return Err(Refusal::EmptyPrompt);
        }
        let total = prompt
            .checked_add(max_new_tokens)
            .filter(|&total| total <= self.max_total_tokens)
            .ok_or(Refusal::OverTotalTokens {
                prompt,
                max_new_tokens,
                limit: self.max_total_tokens,
            })?;
        let needed = total.div_ceil(self.block_size.max(1));
        if needed > self.num_blocks {
            return Err(Refusal::OverCache {
                prompt,
                max_new_tokens,
                needed,
                total: self.num_blocks,
                block_size: self.block_size,
            });
        }
        Ok(())
    }
}

/// Why [`Scheduler::add`] refused a request: it could never run, so it must not wait.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("prompt ({prompt} tokens) + max_new_tokens ({max_new_tokens}) = {} exceeds max_total_tokens ({limit})", prompt.saturating_add(*max_new_tokens))]
    OverTotalTokens {
        prompt: usize,
        max_new_tokens: usize,
        limit: usize,
    },
    #[error("prompt ({prompt} tokens) + max_new_tokens ({max_new_tokens}) needs {needed} KV-cache blocks, more than the whole cache ({total} blocks of {block_size} tokens)")]
    OverCache {
        prompt: usize,
        max_new_tokens: usize,
        needed: usize,
        total: usize,
        block_size: usize,
    },
}

#[derive(Debug)]
struct Sequence {
    tokens: Vec<u32>,
    computed: usize,
    blocks: Vec<u32>,
}

/// One scheduled sequence of a step.
#[derive(Debug, Clone)]
pub struct ScheduledStep {
    pub id: SequenceId,
    pub step: SequenceStep,
}

#[derive(Debug, Default)]
pub struct Plan {
    pub steps: Vec<ScheduledStep>,
    /// Sequences preempted while planning this step (they wait again, blocks freed).
    pub preempted: Vec<SequenceId>,
    /// Sequences that were admitted (left the waiting queue) in this step.
    pub admitted: Vec<SequenceId>,
}

#[derive(Debug)]
pub struct Scheduler {
    config: SchedulerConfig,
    allocator: BlockAllocator,
    sequences: HashMap<SequenceId, Sequence>,
    waiting: BTreeSet<SequenceId>,
    /// In admission order: the last one is the first to be preempted.
    running: Vec<SequenceId>,
    preemptions: u64,
}

impl Scheduler {
    pub fn new(config: SchedulerConfig) -> Self {
        Self {
            allocator: BlockAllocator::new(config.num_blocks),
            config,
            sequences: HashMap::new(),
            waiting: BTreeSet::new(),
            running: Vec::new(),
            preemptions: 0,
        }
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.config.block_size)
    }

    /// See [`SchedulerConfig::check`].
    pub fn check(&self, prompt: usize, max_new_tokens: usize) -> Result<(), Refusal> {
        self.config.check(prompt, max_new_tokens)
    }

    /// Queues a request. Waiting requests are admitted in `id` order.
    pub fn add(
        &mut self,
        id: SequenceId,
        prompt: Vec<u32>,
        max_new_tokens: usize,
    ) -> Result<(), Refusal> {
        self.check(prompt.len(), max_new_tokens)?;
        self.sequences.insert(
            id,
            Sequence {
                tokens: prompt,
                computed: 0,
                blocks: Vec::new(),
            },
        );
        self.waiting.insert(id);
        Ok(())
    }

    /// Plans the next step, allocating the blocks it needs.
    pub fn schedule(&mut self) -> Plan {
        let mut plan = Plan::default();
        let mut prefill_budget = self.config.max_batch_prefill_tokens;
        let mut index = 0;
        while index < self.running.len() {
            let id = self.running[index];
            let Some(seq) = self.sequences.get(&id) else {
                self.running.remove(index);
                continue;
            };
            let remaining = seq.tokens.len() - seq.computed;
            let take = if remaining == 1 {
                1
            } else {
                remaining.min(prefill_budget)
            };
            if take == 0 {
                index += 1;
                continue;
            }
            if !self.reserve(id, take, &mut plan.preempted) {
                continue; // `id` itself was preempted; the same index now holds the next one
            }
            if remaining > 1 {
                prefill_budget -= take;
            }
            plan.steps.push(self.step_for(id, take));
            index += 1;
        }
        while self.running.len() < self.config.max_num_seqs && prefill_budget > 0 {
            let Some(&id) = self.waiting.first() else {
                break;
            };
            let Some(seq) = self.sequences.get(&id) else {
                self.waiting.remove(&id);
                continue;
            };
            // Admit only when the whole rest fits, keeping a block of headroom per running
            // sequence: admitting more would only cause preemptions a few steps later.
            let whole = self.blocks_for(seq.tokens.len());
            if whole + self.running.len() > self.allocator.free() {
                break;
            }
            let take = (seq.tokens.len() - seq.computed).min(prefill_budget);
            self.waiting.remove(&id);
            self.running.push(id);
            if !self.reserve(id, take, &mut plan.preempted) {
                break;
            }
            prefill_budget -= take.min(prefill_budget);
            plan.admitted.push(id);
            plan.steps.push(self.step_for(id, take));
        }
        plan
    }

    /// Makes sure `id` has blocks for `take` more tokens, preempting the newest running
    /// sequences as needed. Returns false when `id` itself had to be preempted.
    fn reserve(&mut self, id: SequenceId, take: usize, preempted: &mut Vec<SequenceId>) -> bool {
        loop {
            let Some(seq) = self.sequences.get(&id) else {
                return false;
            };
            let needed = self
                .blocks_for(seq.computed + take)
                .saturating_sub(seq.blocks.len());
            if let Some(blocks) = self.allocator.allocate(needed) {
                if let Some(seq) = self.sequences.get_mut(&id) {
                    seq.blocks.extend(blocks);
                }
                return true;
            }
            let Some(&victim) = self.running.last() else {
                return false;
            };
            self.preempt(victim);
            preempted.push(victim);
            if victim == id {
                return false;
            }
        }
    }

    fn preempt(&mut self, id: SequenceId) {
        self.release_blocks(id);
        if let Some(seq) = self.sequences.get_mut(&id) {
            seq.computed = 0;
        }
        self.running.retain(|&r| r != id);
        self.waiting.insert(id);
        self.preemptions += 1;
    }

    fn release_blocks(&mut self, id: SequenceId) {
        if let Some(seq) = self.sequences.get_mut(&id) {
            for block in seq.blocks.drain(..) {
                if let Err(error) = self.allocator.release(block) {
                    tracing::error!(%error, sequence = id, "block bookkeeping bug");
                }
            }
        }
    }

    fn step_for(&self, id: SequenceId, take: usize) -> ScheduledStep {
        let seq = &self.sequences[&id];
        let end = seq.computed + take;
        ScheduledStep {
            id,
            step: SequenceStep {
                tokens: seq.tokens[seq.computed..end].to_vec(),
                context_before: seq.computed,
                block_table: seq.blocks.clone(),
                logits: if end == seq.tokens.len() {
                    LogitsWanted::Last
                } else {
                    LogitsWanted::None
                },
            },
        }
    }

    /// Records that the plan's tokens are now in the cache.
    pub fn complete(&mut self, plan: &Plan) {
        for scheduled in &plan.steps {
            if let Some(seq) = self.sequences.get_mut(&scheduled.id) {
                seq.computed += scheduled.step.tokens.len();
            }
        }
    }

    /// Appends a sampled token; it is fed to the model in the next step.
    pub fn push_token(&mut self, id: SequenceId, token: u32) {
        if let Some(seq) = self.sequences.get_mut(&id) {
            seq.tokens.push(token);
        }
    }

    /// Forgets a finished or cancelled sequence, freeing its blocks at once.
    pub fn remove(&mut self, id: SequenceId) {
        self.release_blocks(id);
        self.sequences.remove(&id);
        self.waiting.remove(&id);
        self.running.retain(|&r| r != id);
    }

    pub fn contains(&self, id: SequenceId) -> bool {
        self.sequences.contains_key(&id)
    }

    pub fn ids(&self) -> impl Iterator<Item = SequenceId> + '_ {
        self.sequences.keys().copied()
    }

    pub fn is_idle(&self) -> bool {
        self.sequences.is_empty()
    }

    pub fn stats(&self) -> SchedulerStats {
        SchedulerStats {
            running: self.running.len(),
            waiting: self.waiting.len(),
            used_blocks: self.allocator.used(),
            free_blocks: self.allocator.free(),
            total_blocks: self.allocator.total(),
            preemptions: self.preemptions,
            last_batch_size: 0,
            idle_releases: 0,
        }
    }

    /// Blocks held by each sequence (for invariant checks).
    pub fn held_blocks(&self) -> impl Iterator<Item = (SequenceId, &[u32])> + '_ {
        self.sequences
            .iter()
            .map(|(id, s)| (*id, s.blocks.as_slice()))
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SchedulerStats {
    pub running: usize,
    pub waiting: usize,
    pub used_blocks: usize,
    pub free_blocks: usize,
    pub total_blocks: usize,
    pub preemptions: u64,
    /// Sequences in the last step that ran (filled in by the engine thread).
    pub last_batch_size: usize,
    /// Times the idle engine handed its KV pages and step buffers back (engine thread).
    pub idle_releases: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn config(num_blocks: usize) -> SchedulerConfig {
        SchedulerConfig {
            block_size: 4,
            num_blocks,
            max_num_seqs: 4,
            max_batch_prefill_tokens: 10,
            max_total_tokens: 64,
        }
    }

    /// Checks the invariants of the module doc.
    fn check_invariants(s: &Scheduler, plan: &Plan) -> Result<(), TestCaseError> {
        let mut held: Vec<u32> = s.held_blocks().flat_map(|(_, b)| b.to_vec()).collect();
        let count = held.len();
        held.sort_unstable();
        held.dedup();
        prop_assert_eq!(held.len(), count, "a block is held twice");
        prop_assert_eq!(
            count,
            s.stats().used_blocks,
            "held blocks != used blocks (leak)"
        );
        for scheduled in &plan.steps {
            let step = &scheduled.step;
            let capacity = step.block_table.len() * s.config.block_size;
            prop_assert!(capacity >= step.context_before + step.tokens.len());
        }
        prop_assert!(s.stats().running <= s.config.max_num_seqs);
        Ok(())
    }

    #[derive(Debug, Clone)]
    enum Op {
        Submit { prompt: usize, max_new: usize },
        Cancel(usize),
        Step { finish: Vec<bool> },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1usize..40, 0usize..30).prop_map(|(prompt, max_new)| Op::Submit { prompt, max_new }),
            any::<usize>().prop_map(Op::Cancel),
            proptest::collection::vec(proptest::bool::weighted(0.2), 8)
                .prop_map(|finish| Op::Step { finish }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// Random submits, cancels and steps (each sampled sequence finishing at random): no
        /// block leaks or is held twice, and once everything ends no block is used.
        #[test]
        fn no_block_leaks_over_random_histories(ops in proptest::collection::vec(op(), 1..120), blocks in 8usize..40) {
            let mut s = Scheduler::new(config(blocks));
            let mut next_id = 0;
            let mut generated: HashMap<SequenceId, (usize, usize)> = HashMap::new(); // (new, max_new)
            for op in ops {
                let mut plan = Plan::default();
                match op {
                    Op::Submit { prompt, max_new } => {
                        let fits = s.check(prompt, max_new).is_ok();
                        prop_assert_eq!(s.add(next_id, vec![7; prompt], max_new).is_ok(), fits);
                        if fits {
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
                    Op::Step { finish } => {
                        plan = s.schedule();
                        check_invariants(&s, &plan)?;
                        s.complete(&plan);
                        for (i, scheduled) in plan.steps.iter().enumerate() {
                            if scheduled.step.logits != LogitsWanted::Last { continue; }
                            let Some(entry) = generated.get_mut(&scheduled.id) else { continue };
                            entry.0 += 1;
                            if finish[i % finish.len()] || entry.0 >= entry.1.max(1) {
                                s.remove(scheduled.id);
                                generated.remove(&scheduled.id);
                            } else {
                                s.push_token(scheduled.id, 9);
                            }
                        }
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
                    if scheduled.step.logits == LogitsWanted::Last {
                        s.remove(scheduled.id);
                    }
                }
            }
            prop_assert!(s.is_idle());
            prop_assert_eq!(s.stats().used_blocks, 0);
        }
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
        assert_eq!(s.add(2, vec![], 1), Err(Refusal::EmptyPrompt));
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
}
