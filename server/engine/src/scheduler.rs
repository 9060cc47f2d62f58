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
//! Prefix caching: every full block a step completes is published under the hash of its whole
//! prefix (blocks.rs). A sequence being admitted first takes the longest run of cached blocks
//! matching its tokens, at most `(len - 1) / block_size` of them so that its last token is
//! always computed (its logits are needed) in a block of its own: it never writes into a
//! shared block. Keys and values depend only on the tokens before them, and the CPU forward
//! pass gives a row the same bits whatever else is in its step, so a request's tokens do not
//! change with what came from the cache.
//!
//! Invariant: every used block is held by at least one sequence, and its reference count is
//! the number of sequences holding it; a scheduled sequence's blocks cover every position it
//! will have; a cached block's hash is that of its tokens and their prefix.

use crate::blocks::{block_hash, BlockAllocator, BlockHash};
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
    /// Reuse the keys and values of cached prompt prefixes.
    pub prefix_caching: bool,
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
    /// Hashes of the full blocks among `blocks`, in order (each chained on the one before).
    hashes: Vec<BlockHash>,
    /// Tokens taken from the prefix cache when last admitted.
    cached_tokens: usize,
    /// For a parallel sample of the same prompt: the sequence that prefills it.
    leader: Option<SequenceId>,
    /// Steps over positions below this want every row's logits (prompt log-probabilities);
    /// 0 when none are wanted.
    logits_until: usize,
}

/// How a sequence is to be run, beyond its tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SequenceOptions {
    /// For a parallel sample: the sequence prefilling the same prompt. It is admitted once
    /// the leader has computed the prompt's full blocks, which it then shares through the
    /// prefix cache.
    pub leader: Option<SequenceId>,
    /// Every prompt token's logits are wanted: the prompt is computed whole (no cache
    /// lookup), though its blocks are still published.
    pub prompt_logprobs: bool,
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
    prefix_cache: PrefixCacheStats,
}

/// What the prefix cache did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrefixCacheStats {
    /// Admissions that looked their prompt up.
    pub queries: u64,
    /// Prompt tokens those admissions could have taken from the cache (all but the last).
    pub queried_tokens: u64,
    /// Prompt tokens they took from it.
    pub hit_tokens: u64,
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
            prefix_cache: PrefixCacheStats::default(),
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
        self.add_with(id, prompt, max_new_tokens, SequenceOptions::default())
    }

    /// [`Scheduler::add`] with options: a parallel sample, prompt log-probabilities.
    pub fn add_with(
        &mut self,
        id: SequenceId,
        prompt: Vec<u32>,
        max_new_tokens: usize,
        options: SequenceOptions,
    ) -> Result<(), Refusal> {
        self.check(prompt.len(), max_new_tokens)?;
        let logits_until = if options.prompt_logprobs {
            prompt.len()
        } else {
            0
        };
        self.sequences.insert(
            id,
            Sequence {
                tokens: prompt,
                computed: 0,
                blocks: Vec::new(),
                hashes: Vec::new(),
                cached_tokens: 0,
                leader: options.leader,
                logits_until,
            },
        );
        self.waiting.insert(id);
        Ok(())
    }

    /// Plans the next step, allocating the blocks it needs.
    pub fn schedule(&mut self) -> Plan {
        self.allocator.tick();
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
        let candidates: Vec<SequenceId> = self.waiting.iter().copied().collect();
        for id in candidates {
            if self.running.len() >= self.config.max_num_seqs || prefill_budget == 0 {
                break;
            }
            let Some(seq) = self.sequences.get(&id) else {
                self.waiting.remove(&id);
                continue;
            };
            if self.waits_for_leader(seq) {
                continue;
            }
            let prefix = if seq.logits_until > 0 {
                Vec::new()
            } else {
                self.cached_prefix(&seq.tokens)
            };
            // Cached blocks no one holds count as available until this sequence holds them.
            let taken_from_idle = prefix
                .iter()
                .filter(|(block, _)| self.allocator.ref_count(*block) == 0)
                .count();
            // Admit only when the whole rest fits, keeping a block of headroom per running
            // sequence: admitting more would only cause preemptions a few steps later.
            let whole = self.blocks_for(seq.tokens.len()) - prefix.len();
            if whole + self.running.len() + taken_from_idle > self.allocator.available() {
                break;
            }
            self.attach_prefix(id, prefix);
            let Some(seq) = self.sequences.get(&id) else {
                break;
            };
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

    /// A parallel sample waits while its leader has not yet computed the blocks it will take
    /// from the cache (all but the prompt's last partial block).
    fn waits_for_leader(&self, seq: &Sequence) -> bool {
        if !self.config.prefix_caching {
            return false;
        }
        let Some(leader) = seq.leader.and_then(|l| self.sequences.get(&l)) else {
            return false;
        };
        let size = self.config.block_size;
        leader.computed < seq.tokens.len().saturating_sub(1) / size * size
    }

    /// The longest run of cached blocks holding a prefix of `tokens`, leaving the last token
    /// to compute; with each block its hash. Empty when prefix caching is off.
    fn cached_prefix(&self, tokens: &[u32]) -> Vec<(u32, BlockHash)> {
        let mut prefix: Vec<(u32, BlockHash)> = Vec::new();
        if !self.config.prefix_caching {
            return prefix;
        }
        let size = self.config.block_size;
        let matchable = tokens.len().saturating_sub(1) / size;
        for chunk in tokens.chunks_exact(size).take(matchable) {
            let hash = block_hash(prefix.last().map(|(_, h)| h), chunk);
            match self.allocator.lookup(&hash, chunk) {
                Some(block) => prefix.push((block, hash)),
                None => break,
            }
        }
        prefix
    }

    /// Gives waiting sequence `id`, which holds no blocks, the cached blocks of `prefix`, and
    /// counts the lookup.
    fn attach_prefix(&mut self, id: SequenceId, prefix: Vec<(u32, BlockHash)>) {
        let Some(seq) = self.sequences.get_mut(&id) else {
            return;
        };
        // Prompts whose logits are wanted do not look up (nor count as lookups).
        if !self.config.prefix_caching || !seq.blocks.is_empty() || seq.logits_until > 0 {
            return;
        }
        let size = self.config.block_size;
        self.prefix_cache.queries += 1;
        self.prefix_cache.queried_tokens +=
            (seq.tokens.len().saturating_sub(1) / size * size) as u64;
        self.prefix_cache.hit_tokens += (prefix.len() * size) as u64;
        for (block, hash) in prefix {
            if let Err(error) = self.allocator.retain(block) {
                tracing::error!(%error, sequence = id, "block bookkeeping bug");
                break;
            }
            seq.blocks.push(block);
            seq.hashes.push(hash);
        }
        seq.computed = seq.blocks.len() * size;
        seq.cached_tokens = seq.computed;
    }

    /// Publishes the blocks of `id` that its computed tokens have filled since last time.
    fn publish_full_blocks(&mut self, id: SequenceId) {
        if !self.config.prefix_caching {
            return;
        }
        let size = self.config.block_size;
        let Some(seq) = self.sequences.get_mut(&id) else {
            return;
        };
        while seq.hashes.len() < seq.computed / size {
            let depth = seq.hashes.len();
            let (Some(&block), Some(tokens)) = (
                seq.blocks.get(depth),
                seq.tokens.get(depth * size..(depth + 1) * size),
            ) else {
                return;
            };
            let hash = block_hash(seq.hashes.last(), tokens);
            self.allocator.publish(block, hash, tokens, depth);
            seq.hashes.push(hash);
        }
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
            seq.hashes.clear();
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
                logits: if seq.computed < seq.logits_until {
                    LogitsWanted::All
                } else if end == seq.tokens.len() {
                    LogitsWanted::Last
                } else {
                    LogitsWanted::None
                },
            },
        }
    }

    /// Records that the plan's tokens are now in the cache, and publishes the blocks they filled.
    pub fn complete(&mut self, plan: &Plan) {
        for scheduled in &plan.steps {
            if let Some(seq) = self.sequences.get_mut(&scheduled.id) {
                seq.computed += scheduled.step.tokens.len();
            }
            self.publish_full_blocks(scheduled.id);
        }
    }

    /// Whether every token of `id` is in the cache (its last step's last row is sampled).
    pub fn is_computed(&self, id: SequenceId) -> bool {
        self.sequences
            .get(&id)
            .is_some_and(|s| s.computed == s.tokens.len())
    }

    /// Prompt tokens `id` took from the prefix cache when last admitted.
    pub fn cached_tokens(&self, id: SequenceId) -> usize {
        self.sequences.get(&id).map_or(0, |s| s.cached_tokens)
    }

    /// Every cached block (held or idle): the blocks whose keys must survive.
    pub fn cached_blocks(&self) -> Vec<u32> {
        self.allocator.cached().map(|(block, _, _)| block).collect()
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
            free_blocks: self.allocator.available(),
            cached_idle_blocks: self.allocator.cached_idle(),
            total_blocks: self.allocator.total(),
            preemptions: self.preemptions,
            prefix_cache: self.prefix_cache,
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
    /// Blocks a sequence can have: free, or cached and held by none (evicted when needed).
    pub free_blocks: usize,
    /// Of `free_blocks`, those holding a cached prefix.
    pub cached_idle_blocks: usize,
    pub total_blocks: usize,
    pub preemptions: u64,
    pub prefix_cache: PrefixCacheStats,
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
        Step {
            finish: Vec<bool>,
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
                    Op::Submit { prompt, max_new, family } => {
                        let fits = s.check(prompt, max_new).is_ok();
                        let tokens = (0..prompt as u32).map(|i| family * 100 + i % 7).collect();
                        prop_assert_eq!(s.add(next_id, tokens, max_new).is_ok(), fits);
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
                    if scheduled.step.logits == LogitsWanted::Last {
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
                        s.cached_prefix(&q.tokens).len()
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
