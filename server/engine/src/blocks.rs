//! `BlockAllocator`: the KV cache's blocks, handed out by id from a free list, with reference
//! counts so that a block may later be shared (prefix caching, forks).
//!
//! Invariants: a block is either on the free list with count 0, or off it with count >= 1;
//! `free() + used() == total()`. Allocation and release are O(1) per block.

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum BlockError {
    #[error("block {0} released while free (double free)")]
    DoubleFree(u32),
    #[error("block {0} does not exist")]
    OutOfRange(u32),
}

#[derive(Debug, Clone)]
pub struct BlockAllocator {
    free_list: Vec<u32>,
    ref_counts: Vec<u32>,
}

impl BlockAllocator {
    pub fn new(total: usize) -> Self {
        Self {
            // Popping from the end hands out low ids first.
            free_list: (0..total as u32).rev().collect(),
            ref_counts: vec![0; total],
        }
    }

    pub fn total(&self) -> usize {
        self.ref_counts.len()
    }

    pub fn free(&self) -> usize {
        self.free_list.len()
    }

    pub fn used(&self) -> usize {
        self.total() - self.free()
    }

    /// `count` fresh blocks, or `None` (and nothing taken) when fewer are free.
    pub fn allocate(&mut self, count: usize) -> Option<Vec<u32>> {
        if count > self.free_list.len() {
            return None;
        }
        let blocks = self.free_list.split_off(self.free_list.len() - count);
        for &block in &blocks {
            self.ref_counts[block as usize] = 1;
        }
        Some(blocks)
    }

    /// One more owner for an allocated block.
    pub fn retain(&mut self, block: u32) -> Result<(), BlockError> {
        match self.ref_counts.get_mut(block as usize) {
            None => Err(BlockError::OutOfRange(block)),
            Some(0) => Err(BlockError::DoubleFree(block)),
            Some(count) => {
                *count += 1;
                Ok(())
            }
        }
    }

    /// One owner fewer; the block returns to the free list when none is left.
    pub fn release(&mut self, block: u32) -> Result<(), BlockError> {
        match self.ref_counts.get_mut(block as usize) {
            None => Err(BlockError::OutOfRange(block)),
            Some(0) => Err(BlockError::DoubleFree(block)),
            Some(count) => {
                *count -= 1;
                if *count == 0 {
                    self.free_list.push(block);
                }
                Ok(())
            }
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
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0usize..6).prop_map(Op::Allocate),
            any::<usize>().prop_map(Op::Retain),
            any::<usize>().prop_map(Op::Release),
        ]
    }

    proptest! {
        /// Against a model of owners: counts match, nothing leaks, double frees are refused,
        /// and releasing every owner frees every block.
        #[test]
        fn allocator_matches_a_model_of_owners(ops in proptest::collection::vec(op(), 1..200)) {
            let mut allocator = BlockAllocator::new(16);
            let mut owners: Vec<u32> = Vec::new(); // one entry per (block, owner)
            for op in ops {
                match op {
                    Op::Allocate(n) => match allocator.allocate(n) {
                        Some(blocks) => {
                            prop_assert_eq!(blocks.len(), n);
                            for b in blocks {
                                prop_assert!(!owners.contains(&b), "block {} handed out twice", b);
                                owners.push(b);
                            }
                        }
                        None => prop_assert!(n > allocator.free()),
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
                    _ => {}
                }
                let mut distinct = owners.clone();
                distinct.sort_unstable();
                distinct.dedup();
                prop_assert_eq!(allocator.used(), distinct.len());
                prop_assert_eq!(allocator.free() + allocator.used(), allocator.total());
            }
            for b in owners.drain(..) {
                prop_assert!(allocator.release(b).is_ok());
            }
            prop_assert_eq!(allocator.used(), 0);
        }
    }
}
