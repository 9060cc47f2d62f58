//! `BlockAllocator`: the KV cache's blocks, handed out by id, with reference counts (sequences
//! share blocks: a cached prompt prefix, a forked prompt), and the prefix cache: full blocks
//! whose keys and values are known to be those of a token prefix, found again by a hash of that
//! prefix.
//!
//! A block is in one of three states:
//! - free: count 0, no content, on the free list;
//! - held: count >= 1 (the number of sequences whose block table holds it), cached or not;
//! - cached and idle: count 0 with content; it can be held again by a prompt with the same
//!   prefix, or evicted (least recently used first) when fresh blocks are needed.
//!
//! `available() == free + cached-and-idle`, `used() + available() == total()`; each operation
//! is O(log n) per block at most.

use sha2::{Digest, Sha256};
use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};
use thiserror::Error;

/// Names the keys and values of one full block: SHA-256 of the previous block's hash and this
/// block's token ids, so equal hashes mean equal whole prefixes (no collision is known for
/// SHA-256; a weaker hash would let a crafted prompt read another prompt's keys).
pub type BlockHash = [u8; 32];

/// The hash of a full block of `tokens` following the block hashed `parent` (`None` for a
/// prompt's first block).
pub fn block_hash(parent: Option<&BlockHash>, tokens: &[u32]) -> BlockHash {
    let mut hasher = Sha256::new();
    hasher.update(parent.map_or(&[0u8; 32][..], |p| &p[..]));
    for token in tokens {
        hasher.update(token.to_le_bytes());
    }
    hasher.finalize().into()
}

/// The parent of a sequence's first block: none for the base model; for a LoRA adapter, a
/// hash of its id. Keys and values computed under one adapter are then found only by
/// prompts that run under the same one (ids are never reused for another adapter).
pub fn chain_root(adapter: Option<u32>) -> Option<BlockHash> {
    adapter.map(|id| {
        let mut hasher = Sha256::new();
        hasher.update(b"lora adapter");
        hasher.update(id.to_le_bytes());
        hasher.finalize().into()
    })
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum BlockError {
    #[error("block {0} released while free (double free)")]
    DoubleFree(u32),
    #[error("block {0} does not exist")]
    OutOfRange(u32),
}

/// What a cached block holds.
#[derive(Debug, Clone)]
struct Content {
    hash: BlockHash,
    /// Its tokens, compared on every hit: a hit is exact, not merely likely.
    tokens: Vec<u32>,
    /// Blocks before it in its prefix: among blocks idle since the same step, the deepest is
    /// evicted first, so a prefix loses its tail before its head (a head alone still hits).
    depth: usize,
    /// When it last became idle (see `clock`).
    idle_since: u64,
}

#[derive(Debug, Clone)]
pub struct BlockAllocator {
    free_list: Vec<u32>,
    ref_counts: Vec<u32>,
    contents: HashMap<u32, Content>,
    by_hash: HashMap<BlockHash, u32>,
    /// Cached blocks no sequence holds, in eviction order: least recently idle, deepest first.
    idle: BTreeSet<(u64, Reverse<usize>, u32)>,
    /// Advanced by [`BlockAllocator::tick`] (once a step): blocks released in the same tick
    /// are equally recent.
    clock: u64,
}

impl BlockAllocator {
    pub fn new(total: usize) -> Self {
        Self {
            // Popping from the end hands out low ids first.
            free_list: (0..total as u32).rev().collect(),
            ref_counts: vec![0; total],
            contents: HashMap::new(),
            by_hash: HashMap::new(),
            idle: BTreeSet::new(),
            clock: 0,
        }
    }

    pub fn total(&self) -> usize {
        self.ref_counts.len()
    }

    /// Blocks an allocation can have: free ones, then cached idle ones (evicted).
    pub fn available(&self) -> usize {
        self.free_list.len() + self.idle.len()
    }

    /// Blocks held by sequences.
    pub fn used(&self) -> usize {
        self.total() - self.available()
    }

    /// Cached blocks no sequence holds.
    pub fn cached_idle(&self) -> usize {
        self.idle.len()
    }

    /// Sequences holding `block`.
    pub fn ref_count(&self, block: u32) -> u32 {
        self.ref_counts.get(block as usize).copied().unwrap_or(0)
    }

    /// `count` blocks for new keys, or `None` (and nothing taken) when fewer are available.
    /// Free blocks go first; then cached idle ones are evicted, least recently used first.
    pub fn allocate(&mut self, count: usize) -> Option<Vec<u32>> {
        if count > self.available() {
            return None;
        }
        let from_free = count.min(self.free_list.len());
        let mut blocks = self.free_list.split_off(self.free_list.len() - from_free);
        while blocks.len() < count {
            let (_, _, block) = self.idle.pop_first()?;
            self.forget(block);
            blocks.push(block);
        }
        for &block in &blocks {
            self.ref_counts[block as usize] = 1;
        }
        Some(blocks)
    }

    /// One more sequence holds `block`: an allocated block, or a cached idle one (which stops
    /// being evictable).
    pub fn retain(&mut self, block: u32) -> Result<(), BlockError> {
        let count = self
            .ref_counts
            .get(block as usize)
            .copied()
            .ok_or(BlockError::OutOfRange(block))?;
        if count == 0 {
            let content = self
                .contents
                .get(&block)
                .ok_or(BlockError::DoubleFree(block))?;
            self.idle
                .remove(&(content.idle_since, Reverse(content.depth), block));
        }
        self.ref_counts[block as usize] = count + 1;
        Ok(())
    }

    /// One sequence fewer holds `block`. With none left, a cached block turns idle (evictable),
    /// any other returns to the free list.
    pub fn release(&mut self, block: u32) -> Result<(), BlockError> {
        match self.ref_counts.get_mut(block as usize) {
            None => Err(BlockError::OutOfRange(block)),
            Some(0) => Err(BlockError::DoubleFree(block)),
            Some(count) => {
                *count -= 1;
                if *count == 0 {
                    match self.contents.get_mut(&block) {
                        Some(content) => {
                            content.idle_since = self.clock;
                            self.idle
                                .insert((self.clock, Reverse(content.depth), block));
                        }
                        None => self.free_list.push(block),
                    }
                }
                Ok(())
            }
        }
    }

    /// Time moves on: blocks released from now on are more recent than those before.
    pub fn tick(&mut self) {
        self.clock += 1;
    }

    /// Records that held `block` now has the keys and values of the full block `tokens`,
    /// hashed `hash`, at `depth` in its prefix. When another block already has that content,
    /// this one stays uncached (it is freed as usual when released).
    pub fn publish(&mut self, block: u32, hash: BlockHash, tokens: &[u32], depth: usize) {
        if self.ref_count(block) == 0
            || self.by_hash.contains_key(&hash)
            || self.contents.contains_key(&block)
        {
            return;
        }
        self.by_hash.insert(hash, block);
        self.contents.insert(
            block,
            Content {
                hash,
                tokens: tokens.to_vec(),
                depth,
                idle_since: 0,
            },
        );
    }

    /// The cached block for the full block `tokens` hashed `hash`, if any.
    pub fn lookup(&self, hash: &BlockHash, tokens: &[u32]) -> Option<u32> {
        let block = *self.by_hash.get(hash)?;
        let content = self.contents.get(&block)?;
        (content.tokens == tokens).then_some(block)
    }

    /// Every cached block with its hash and tokens (for invariant checks, and for keeping
    /// their keys when the idle engine hands memory back).
    pub fn cached(&self) -> impl Iterator<Item = (u32, &BlockHash, &[u32])> + '_ {
        self.contents
            .iter()
            .map(|(block, c)| (*block, &c.hash, c.tokens.as_slice()))
    }

    fn forget(&mut self, block: u32) {
        if let Some(content) = self.contents.remove(&block) {
            self.by_hash.remove(&content.hash);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Allocate(usize),
        Retain(usize),
        Release(usize),
        Publish(usize),
        Lookup(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0usize..6).prop_map(Op::Allocate),
            any::<usize>().prop_map(Op::Retain),
            any::<usize>().prop_map(Op::Release),
            any::<usize>().prop_map(Op::Publish),
            any::<u8>().prop_map(Op::Lookup),
        ]
    }

    fn tokens_of(key: u8) -> Vec<u32> {
        vec![key as u32; 4]
    }

    proptest! {
        /// Against a model of owners: counts match, nothing leaks, double frees are refused,
        /// cached blocks are found by their content only, and releasing every owner leaves
        /// every block available.
        #[test]
        fn allocator_matches_a_model_of_owners(ops in proptest::collection::vec(op(), 1..300)) {
            let mut allocator = BlockAllocator::new(16);
            let mut owners: Vec<u32> = Vec::new(); // one entry per (block, owner)
            let mut next_key = 0u8;
            for op in ops {
                match op {
                    Op::Allocate(n) => match allocator.allocate(n) {
                        Some(blocks) => {
                            prop_assert_eq!(blocks.len(), n);
                            for b in blocks {
                                prop_assert!(!owners.contains(&b), "block {} handed out twice", b);
                                prop_assert!(allocator.cached().all(|(c, _, _)| c != b), "an evicted block kept its content");
                                owners.push(b);
                            }
                        }
                        None => prop_assert!(n > allocator.available()),
                    },
                    Op::Retain(i) if !owners.is_empty() => {
                        let b = owners[i % owners.len()];
                        prop_assert!(allocator.retain(b).is_ok());
                        owners.push(b);
                    }
                    Op::Release(i) if !owners.is_empty() => {
                        let b = owners.swap_remove(i % owners.len());
                        prop_assert!(allocator.release(b).is_ok());
                        if !owners.contains(&b) {
                            prop_assert_eq!(allocator.release(b), Err(BlockError::DoubleFree(b)));
                        }
                    }
                    Op::Publish(i) if !owners.is_empty() => {
                        let b = owners[i % owners.len()];
                        let tokens = tokens_of(next_key);
                        allocator.publish(b, block_hash(None, &tokens), &tokens, 0);
                        next_key = next_key.wrapping_add(1);
                    }
                    Op::Lookup(key) => {
                        let tokens = tokens_of(key);
                        if let Some(b) = allocator.lookup(&block_hash(None, &tokens), &tokens) {
                            // A hit holds those tokens; holding it again takes it off the idle set.
                            let cached: Vec<u32> = allocator.cached().filter(|(_, _, t)| *t == tokens.as_slice()).map(|(c, _, _)| c).collect();
                            prop_assert_eq!(cached, vec![b]);
                            prop_assert!(allocator.retain(b).is_ok());
                            owners.push(b);
                        }
                    }
                    _ => {}
                }
                let mut distinct = owners.clone();
                distinct.sort_unstable();
                distinct.dedup();
                prop_assert_eq!(allocator.used(), distinct.len());
                for &b in &distinct {
                    prop_assert_eq!(allocator.ref_count(b) as usize, owners.iter().filter(|&&o| o == b).count());
                }
                prop_assert_eq!(allocator.available() + allocator.used(), allocator.total());
                for (_, hash, tokens) in allocator.cached() {
                    prop_assert_eq!(*hash, block_hash(None, tokens));
                }
            }
            for b in owners.drain(..) {
                prop_assert!(allocator.release(b).is_ok());
            }
            prop_assert_eq!(allocator.used(), 0);
            prop_assert_eq!(allocator.available(), 16);
        }
    }

    #[test]
    fn idle_cached_blocks_are_evicted_least_recently_used_and_tail_first() {
        let mut allocator = BlockAllocator::new(4);
        let Some(blocks) = allocator.allocate(4) else {
            panic!("4 blocks of 4")
        };
        let mut parent = None;
        for (depth, &b) in blocks.iter().enumerate() {
            let tokens = vec![depth as u32; 2];
            let hash = block_hash(parent.as_ref(), &tokens);
            allocator.publish(b, hash, &tokens, depth);
            parent = Some(hash);
        }
        // The prefix's blocks are released head first in one step (as a finished sequence
        // does); in a later step the second block is held and released again.
        for &b in &blocks {
            assert_eq!(allocator.release(b), Ok(()));
        }
        allocator.tick();
        assert_eq!(allocator.retain(blocks[1]), Ok(()));
        assert_eq!(allocator.release(blocks[1]), Ok(()));
        assert_eq!(allocator.cached_idle(), 4);
        // Oldest first, and among equally old the deepest first.
        assert_eq!(allocator.allocate(1), Some(vec![blocks[3]]));
        assert_eq!(allocator.allocate(1), Some(vec![blocks[2]]));
        assert_eq!(allocator.allocate(1), Some(vec![blocks[0]]));
        assert_eq!(allocator.cached().count(), 1);
        let head = vec![0u32; 2];
        let second = vec![1u32; 2];
        let second_hash = block_hash(Some(&block_hash(None, &head)), &second);
        assert_eq!(allocator.lookup(&second_hash, &second), Some(blocks[1]));
        assert_eq!(allocator.lookup(&block_hash(None, &head), &head), None);
        // The same hash with other tokens is no hit.
        assert_eq!(allocator.lookup(&second_hash, &[9, 9]), None);
    }
}
