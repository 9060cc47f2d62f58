//! What the scheduler reports: its load, the prefix cache's hits and speculation's drafts,
//! and the sum of several engines' reports.

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

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SchedulerStats {
    /// Sequences (a request sampling `n` choices has `n`).
    pub running: usize,
    pub waiting: usize,
    /// Requests with a sequence running, and requests whose sequences all wait.
    pub running_requests: usize,
    pub waiting_requests: usize,
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
    /// Speculative decoding's drafts and what stood of them (engine thread).
    pub speculation: SpeculationStats,
}

/// Drafts verified, tokens they proposed, and proposed tokens accepted, since start (vLLM's
/// `spec_decode` counters).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpeculationStats {
    pub drafts: u64,
    pub draft_tokens: u64,
    pub accepted_tokens: u64,
    /// Proposals accepted at each position of their draft (0 = the first proposed token).
    pub accepted_at: [u64; crate::speculation::MAX_SPECULATE],
}

/// Several engines' statistics as one (a pool's aggregate `lantern_*` series). Every field
/// is named, so a new one cannot be left out of the sum.
impl std::ops::AddAssign for SchedulerStats {
    fn add_assign(&mut self, other: Self) {
        let Self {
            running,
            waiting,
            running_requests,
            waiting_requests,
            used_blocks,
            free_blocks,
            cached_idle_blocks,
            total_blocks,
            preemptions,
            prefix_cache:
                PrefixCacheStats {
                    queries,
                    queried_tokens,
                    hit_tokens,
                },
            last_batch_size,
            idle_releases,
            speculation,
        } = other;
        self.running += running;
        self.waiting += waiting;
        self.running_requests += running_requests;
        self.waiting_requests += waiting_requests;
        self.used_blocks += used_blocks;
        self.free_blocks += free_blocks;
        self.cached_idle_blocks += cached_idle_blocks;
        self.total_blocks += total_blocks;
        self.preemptions += preemptions;
        self.prefix_cache.queries += queries;
        self.prefix_cache.queried_tokens += queried_tokens;
        self.prefix_cache.hit_tokens += hit_tokens;
        self.last_batch_size += last_batch_size;
        self.idle_releases += idle_releases;
        self.speculation.drafts += speculation.drafts;
        self.speculation.draft_tokens += speculation.draft_tokens;
        self.speculation.accepted_tokens += speculation.accepted_tokens;
        for (total, add) in self
            .speculation
            .accepted_at
            .iter_mut()
            .zip(speculation.accepted_at)
        {
            *total += add;
        }
    }
}
