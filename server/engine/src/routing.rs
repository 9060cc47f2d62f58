//! Which of several engines takes a request: the least outstanding work, unless an engine
//! already holds the request's prompt prefix in its cache and is not too busy for it.
//!
//! The router never asks the engines what they cache. It remembers where it sent each prompt
//! block (an LRU map from block hashes, the prefix cache's own, to engine index), so the
//! next turn of a conversation, whose prompt starts with the previous turn's, goes back to
//! the engine that computed that prefix. Outstanding work is counted here too: a request's
//! prompt and new-token budget from when it is routed until its event stream is dropped.

use crate::blocks::{block_hash, chain_root, BlockHash};
use lru::LruCache;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Prompt blocks remembered: 64Ki entries of about 80 bytes, a few MiB, covering some
/// million prompt tokens at 16 tokens a block.
const REMEMBERED_BLOCKS: usize = 1 << 16;

/// One routed request's work, counted against its engine until dropped.
#[derive(Debug)]
pub struct Outstanding {
    load: Arc<AtomicUsize>,
    work: usize,
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.load.fetch_sub(self.work, Ordering::AcqRel);
    }
}

/// Where a request goes, and its work, counted against that engine while held.
#[derive(Debug)]
pub struct Route {
    pub engine: usize,
    /// Prompt tokens the chosen engine is believed to hold (whole blocks).
    pub expected_cached_tokens: usize,
    pub outstanding: Outstanding,
}

pub struct Router {
    block_size: usize,
    /// Whether the engines reuse cached prefixes at all: without, affinity gains nothing.
    prefix_caching: bool,
    loads: Vec<Arc<AtomicUsize>>,
    affinity: Mutex<LruCache<BlockHash, usize>>,
}

impl Router {
    pub fn new(engines: usize, block_size: usize, prefix_caching: bool) -> Self {
        Self {
            block_size: block_size.max(1),
            prefix_caching,
            loads: (0..engines)
                .map(|_| Arc::new(AtomicUsize::new(0)))
                .collect(),
            affinity: Mutex::new(LruCache::new(
                NonZeroUsize::new(REMEMBERED_BLOCKS).unwrap_or(NonZeroUsize::MIN),
            )),
        }
    }

    /// Outstanding work (tokens) per engine.
    pub fn loads(&self) -> Vec<usize> {
        self.loads
            .iter()
            .map(|l| l.load(Ordering::Acquire))
            .collect()
    }

    /// Chooses among the engines `usable` allows and counts `work` tokens against the choice
    /// (one decision under the lock, so simultaneous requests see each other's load). The
    /// least loaded wins unless the engine that computed the longest remembered prefix of
    /// `prompt` (under `adapter`) is busier than it by no more than the prompt tokens that
    /// prefix saves. `None` when no engine is usable.
    pub fn choose(
        &self,
        prompt: &[u32],
        adapter: Option<u32>,
        work: usize,
        usable: impl Fn(usize) -> bool,
    ) -> Option<Route> {
        let hashes = if self.prefix_caching {
            self.block_hashes(prompt, adapter)
        } else {
            Vec::new()
        };
        let mut affinity = self.affinity.lock().unwrap_or_else(|p| p.into_inner());
        let loads = self.loads();
        let least = (0..loads.len())
            .filter(|&e| usable(e))
            .min_by_key(|&e| loads[e])?;
        let remembered = hashes.iter().enumerate().rev().find_map(|(depth, hash)| {
            affinity
                .peek(hash)
                .filter(|&&engine| usable(engine))
                .map(|&engine| (engine, depth + 1))
        });
        let (engine, expected_cached_tokens) = match remembered {
            Some((engine, blocks)) if loads[engine] <= loads[least] + blocks * self.block_size => {
                (engine, blocks * self.block_size)
            }
            _ => (least, 0),
        };
        for hash in hashes {
            affinity.put(hash, engine);
        }
        let outstanding = self.hold(engine, work)?;
        Some(Route {
            engine,
            expected_cached_tokens,
            outstanding,
        })
    }

    /// Counts `work` tokens against `engine` until the result is dropped.
    pub fn hold(&self, engine: usize, work: usize) -> Option<Outstanding> {
        let load = self.loads.get(engine)?.clone();
        load.fetch_add(work, Ordering::AcqRel);
        Some(Outstanding { load, work })
    }

    /// The chained hashes of the prompt's whole blocks, as the prefix cache names them.
    fn block_hashes(&self, prompt: &[u32], adapter: Option<u32>) -> Vec<BlockHash> {
        let mut hashes: Vec<BlockHash> = Vec::with_capacity(prompt.len() / self.block_size);
        let root = chain_root(adapter);
        for block in prompt.chunks_exact(self.block_size) {
            let hash = block_hash(hashes.last().or(root.as_ref()), block);
            hashes.push(hash);
        }
        hashes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompt(seed: u32, len: usize) -> Vec<u32> {
        (0..len as u32).map(|i| seed * 1000 + i).collect()
    }

    #[test]
    fn unknown_prompts_go_to_the_least_loaded_engine() {
        let router = Router::new(3, 4, true);
        let _busy = router.hold(0, 100);
        let _busier = router.hold(1, 200);
        let route = router.choose(&prompt(1, 10), None, 5, |_| true);
        assert_eq!(route.as_ref().map(|r| r.engine), Some(2));
        // The choice counts at once: the next request sees it.
        assert_eq!(router.loads(), vec![100, 200, 5]);
        drop(route);
        assert_eq!(router.loads(), vec![100, 200, 0]);
    }

    #[test]
    fn a_conversations_next_turn_returns_to_its_engine_while_load_allows() {
        let router = Router::new(2, 4, true);
        let first_turn = prompt(7, 12);
        let first = router
            .choose(&first_turn, None, 0, |_| true)
            .map(|r| r.engine);
        assert_eq!(first, Some(0));
        // The other engine is now the less loaded one, by less than the 12 cached tokens.
        let _held = router.hold(0, 8);
        let mut second_turn = first_turn.clone();
        second_turn.extend(prompt(8, 9));
        let route = router.choose(&second_turn, None, 0, |_| true);
        assert_eq!(route.as_ref().map(|r| r.engine), Some(0));
        assert_eq!(route.map(|r| r.expected_cached_tokens), Some(12));
        // Busier by more than the prefix saves: the load wins, and the prefix moves.
        let _more = router.hold(0, 100);
        let third = router.choose(&second_turn, None, 0, |_| true);
        assert_eq!(third.map(|r| r.engine), Some(1));
        let fourth = router.choose(&second_turn, None, 0, |_| true);
        assert_eq!(fourth.map(|r| r.expected_cached_tokens), Some(20));
        // Without prefix caching there is nothing to return to.
        let uncached = Router::new(2, 4, false);
        let _busy = uncached.hold(0, 1);
        assert_eq!(
            uncached
                .choose(&first_turn, None, 0, |_| true)
                .map(|r| r.engine),
            Some(1)
        );
        let _busier = uncached.hold(1, 5);
        assert_eq!(
            uncached
                .choose(&first_turn, None, 0, |_| true)
                .map(|r| r.engine),
            Some(0)
        );
    }

    /// A prefix computed under an adapter is that adapter's: the same prompt under another
    /// (or the base) expects nothing cached.
    #[test]
    fn prefixes_are_remembered_per_adapter() {
        let router = Router::new(2, 4, true);
        let turn = prompt(3, 12);
        let first = router.choose(&turn, Some(7), 0, |_| true);
        assert_eq!(first.map(|r| r.engine), Some(0));
        let same = router.choose(&turn, Some(7), 0, |_| true);
        assert_eq!(same.map(|r| r.expected_cached_tokens), Some(12));
        for other in [Some(8), None] {
            let route = router.choose(&turn, other, 0, |_| true);
            assert_eq!(
                route.map(|r| r.expected_cached_tokens),
                Some(0),
                "{other:?}"
            );
        }
    }

    #[test]
    fn a_failed_engine_s_deeper_prefix_gives_way_to_a_shallower_one_elsewhere() {
        let router = Router::new(3, 4, true);
        let shared = prompt(2, 8);
        let tail = |seed| {
            let mut p = shared.clone();
            p.extend(prompt(seed, 8));
            p
        };
        let (b, c) = (tail(3), tail(4));
        let _busy = (router.hold(0, 150), router.hold(1, 100), router.hold(2, 0));
        // B lands on engine 2; C, sharing B's first two blocks, on engine 1 (engine 2 is too
        // busy by then), which now holds those two blocks.
        let _b = router.choose(&b, None, 200, |_| true);
        assert_eq!(_b.as_ref().map(|r| r.engine), Some(2));
        let c_route = router.choose(&c, None, 0, |_| true);
        assert_eq!(c_route.map(|r| r.engine), Some(1));
        // Engine 2 fails: B's deepest blocks point at it, the shared two at engine 1.
        let again = router.choose(&b, None, 0, |e| e != 2);
        assert_eq!(again.as_ref().map(|r| r.engine), Some(1));
        assert_eq!(again.map(|r| r.expected_cached_tokens), Some(8));
    }

    #[test]
    fn unusable_engines_are_never_chosen() {
        let router = Router::new(2, 4, true);
        let p = prompt(3, 8);
        assert_eq!(
            router.choose(&p, None, 0, |_| true).map(|r| r.engine),
            Some(0)
        );
        assert_eq!(
            router.choose(&p, None, 0, |e| e != 0).map(|r| r.engine),
            Some(1)
        );
        assert!(router.choose(&p, None, 0, |_| false).is_none());
    }

    #[test]
    fn held_work_is_released_when_dropped() {
        let router = Router::new(2, 4, true);
        let held = router.hold(1, 50);
        assert_eq!(router.loads(), vec![0, 50]);
        drop(held);
        assert_eq!(router.loads(), vec![0, 0]);
        assert!(router.hold(2, 1).is_none());
    }
}
