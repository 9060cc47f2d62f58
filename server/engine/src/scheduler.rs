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
//! `max_num_seqs`, the prefill budget and free blocks allow. While any sequence decodes, the
//! prefill budget is the smaller one the worker learns from step times (prefill_budget.rs), so
//! no decoding sequence waits long behind a prompt. When blocks run out, the most
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

use crate::blocks::{block_hash, chain_root, BlockAllocator, BlockHash};
pub use crate::limits::Refusal;
use crate::limits::{FieldNames, Limits, RequestSize};
use lantern_models::{LogitsWanted, SequenceStep};
use std::collections::{BTreeSet, HashMap, HashSet};

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
    /// The request limits this configuration sets (the HTTP layer adds `max_input_tokens`).
    pub fn limits(&self) -> Limits {
        Limits {
            max_input_tokens: None,
            max_total_tokens: self.max_total_tokens,
            num_blocks: self.num_blocks,
            block_size: self.block_size,
        }
    }

    /// Checks a request against the limits it can never exceed (see [`Limits::check`]).
    pub fn check(&self, prompt: usize, max_new_tokens: usize) -> Result<(), Refusal> {
        let size = RequestSize {
            prompt_tokens: Some(prompt),
            max_new_tokens: Some(max_new_tokens),
            top_n_tokens: 0,
        };
        self.limits().check(size, FieldNames::ENGINE)
    }
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
    /// Proposed tokens at the end of `tokens` (speculative decoding), fed with the last real
    /// one in a single step and kept only as far as they are accepted ([`Scheduler::settle`]).
    draft: usize,
    /// The LoRA adapter it runs under (the decoder's id); `None` for the base model.
    adapter: Option<u32>,
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
    /// The LoRA adapter it runs under (the decoder's id). Its cached prefixes are its own.
    pub adapter: Option<u32>,
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
    /// Running sequences that were decoding (one token left to feed) when it was planned.
    pub decoding: usize,
    /// Prompt (or recomputed) tokens it prefills.
    pub prefill_tokens: usize,
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
    /// See [`Scheduler::set_prefill_while_decoding`].
    prefill_while_decoding: usize,
    /// See [`Scheduler::set_max_adapters`].
    max_adapters: usize,
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
            prefill_while_decoding: usize::MAX,
            max_adapters: usize::MAX,
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
                draft: 0,
                adapter: options.adapter,
            },
        );
        self.waiting.insert(id);
        Ok(())
    }

    /// Plans the next step, allocating the blocks it needs.
    pub fn schedule(&mut self) -> Plan {
        self.allocator.tick();
        let mut plan = Plan::default();
        let decoding = self
            .running
            .iter()
            .filter_map(|id| self.sequences.get(id))
            .filter(|seq| seq.tokens.len() - seq.computed == 1 + seq.draft)
            .count();
        // While anything decodes, prefill is held to what keeps its step short
        // (prefill_budget.rs).
        let mut prefill_budget = if decoding > 0 {
            self.config
                .max_batch_prefill_tokens
                .min(self.prefill_while_decoding)
        } else {
            self.config.max_batch_prefill_tokens
        };
        let full_budget = prefill_budget;
        let mut index = 0;
        while index < self.running.len() {
            let id = self.running[index];
            let Some(seq) = self.sequences.get(&id) else {
                self.running.remove(index);
                continue;
            };
            let remaining = seq.tokens.len() - seq.computed;
            let drafted = seq.draft > 0 && remaining == 1 + seq.draft;
            if drafted && !self.fits_without_preempting(id, remaining) {
                // No sequence is preempted to make room for proposals: they are dropped.
                self.drop_draft(id);
            }
            let Some(seq) = self.sequences.get(&id) else {
                continue;
            };
            let remaining = seq.tokens.len() - seq.computed;
            let decoding = remaining == 1 + seq.draft;
            let take = if decoding {
                remaining
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
            if !decoding {
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
            if self.waits_for_leader(seq) || !self.adapter_fits(seq.adapter) {
                continue;
            }
            let prefix = if seq.logits_until > 0 {
                Vec::new()
            } else {
                self.cached_prefix(&seq.tokens, seq.adapter)
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
        plan.decoding = decoding;
        plan.prefill_tokens = full_budget - prefill_budget;
        plan
    }

    /// Caps the prompt tokens a step prefills while sequences are decoding (the
    /// configuration's `max_batch_prefill_tokens` caps it too).
    pub fn set_prefill_while_decoding(&mut self, tokens: usize) {
        self.prefill_while_decoding = tokens.max(1);
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
    fn cached_prefix(&self, tokens: &[u32], adapter: Option<u32>) -> Vec<(u32, BlockHash)> {
        let mut prefix: Vec<(u32, BlockHash)> = Vec::new();
        if !self.config.prefix_caching {
            return prefix;
        }
        let size = self.config.block_size;
        let matchable = tokens.len().saturating_sub(1) / size;
        let root = chain_root(adapter);
        for chunk in tokens.chunks_exact(size).take(matchable) {
            let hash = block_hash(prefix.last().map(|(_, h)| h).or(root.as_ref()), chunk);
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
            let root = chain_root(seq.adapter);
            let hash = block_hash(seq.hashes.last().or(root.as_ref()), tokens);
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
        self.drop_draft(id);
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
                adapter: seq.adapter,
                logits: if seq.computed < seq.logits_until || seq.draft > 0 {
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
                if seq.draft > 0 {
                    continue; // what of it stands is known once verified: `settle`
                }
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
        // A request's samples share the leader's id: a request runs while any sample runs,
        // and waits while all of them wait.
        let request =
            |id: &SequenceId| self.sequences.get(id).and_then(|s| s.leader).unwrap_or(*id);
        let running_requests: HashSet<SequenceId> = self.running.iter().map(request).collect();
        let waiting_requests: HashSet<SequenceId> = self
            .waiting
            .iter()
            .map(request)
            .filter(|r| !running_requests.contains(r))
            .collect();
        SchedulerStats {
            running: self.running.len(),
            waiting: self.waiting.len(),
            running_requests: running_requests.len(),
            waiting_requests: waiting_requests.len(),
            used_blocks: self.allocator.used(),
            free_blocks: self.allocator.available(),
            cached_idle_blocks: self.allocator.cached_idle(),
            total_blocks: self.allocator.total(),
            preemptions: self.preemptions,
            prefix_cache: self.prefix_cache,
            last_batch_size: 0,
            idle_releases: 0,
            speculation: SpeculationStats::default(),
        }
    }

    /// Blocks held by each sequence (for invariant checks).
    pub fn held_blocks(&self) -> impl Iterator<Item = (SequenceId, &[u32])> + '_ {
        self.sequences
            .iter()
            .map(|(id, s)| (*id, s.blocks.as_slice()))
    }
}

mod adapters;
mod drafts;
mod stats;
pub use stats::{PrefixCacheStats, SchedulerStats, SpeculationStats};

#[cfg(test)]
mod tests;
