//! One layer's K/V block pool in the CPU kernels' layout: `[kv_head][block][slot][head_dim]`,
//! so the keys of one head in one block are one contiguous run, and a sequence whose blocks
//! have consecutive ids reads one long run per head (measured: 24 -> 16 ms of attention per
//! decode step at 32 sequences, against `[block][kv_head][slot][head_dim]`).

use crate::KvCacheShape;

/// Zeroed f32 memory that costs nothing until written: an anonymous mapping, whose pages the
/// OS supplies zeroed on first touch. (A `vec![0.0; n]` is only lazy when the allocator
/// happens to map it fresh: glibc raises its mmap threshold after large frees, as model
/// loading does, and then zeroes heap memory eagerly; a 256 MiB cache was resident at start.)
pub(super) struct ZeroedF32 {
    map: Option<memmap2::MmapMut>,
}

impl ZeroedF32 {
    fn new(len: usize, what: &str) -> Result<Self, String> {
        if len == 0 {
            return Ok(Self { map: None });
        }
        let bytes = len
            .checked_mul(4)
            .ok_or_else(|| format!("the {what} cache of {len} floats overflows"))?;
        let map = memmap2::MmapMut::map_anon(bytes)
            .map_err(|e| format!("cannot allocate the {what} cache ({len} floats): {e}"))?;
        Ok(Self { map: Some(map) })
    }
}

impl std::ops::Deref for ZeroedF32 {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        // Mappings are page-aligned and hold whole floats, so the cast cannot fail.
        self.map.as_deref().map_or(&[], bytemuck::cast_slice)
    }
}

impl std::ops::DerefMut for ZeroedF32 {
    fn deref_mut(&mut self) -> &mut [f32] {
        self.map
            .as_deref_mut()
            .map_or(&mut [], bytemuck::cast_slice_mut)
    }
}

impl std::fmt::Debug for ZeroedF32 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ZeroedF32({} floats)", self.len())
    }
}

/// One layer's K/V block pool in the CPU layout.
#[derive(Debug)]
pub struct KvBlocks {
    pub(super) shape: KvCacheShape,
    pub(super) key: ZeroedF32,
    pub(super) value: ZeroedF32,
}

impl KvBlocks {
    /// A zeroed pool; fails instead of aborting when the memory can't be had.
    pub fn new(shape: KvCacheShape) -> Result<Self, String> {
        let len = shape
            .num_blocks
            .checked_mul(shape.block_size)
            .and_then(|v| v.checked_mul(shape.num_kv_heads))
            .and_then(|v| v.checked_mul(shape.head_dim))
            .ok_or_else(|| format!("KV cache shape {shape:?} overflows"))?;
        Ok(Self {
            shape,
            key: ZeroedF32::new(len, "key")?,
            value: ZeroedF32::new(len, "value")?,
        })
    }

    /// Hands the pool's pages back to the OS: fresh zero mappings replace the old, into which
    /// the blocks in `keep` are copied, so only those and what is written from now on are
    /// resident. Every other block's content is gone: call it only while no sequence holds
    /// them (an idle engine). If new mappings cannot be had, the old ones stay.
    pub fn release_pages(&mut self, keep: &[u32]) {
        let len = self.key.len();
        let (Ok(mut key), Ok(mut value)) =
            (ZeroedF32::new(len, "key"), ZeroedF32::new(len, "value"))
        else {
            return;
        };
        let run = self.shape.block_size * self.shape.head_dim;
        for &block in keep
            .iter()
            .filter(|&&b| (b as usize) < self.shape.num_blocks)
        {
            for head in 0..self.shape.num_kv_heads {
                let at = self.offset(block as usize, head, 0);
                key[at..at + run].copy_from_slice(&self.key[at..at + run]);
                value[at..at + run].copy_from_slice(&self.value[at..at + run]);
            }
        }
        self.key = key;
        self.value = value;
    }

    /// Index of `slot` of `block` for KV head `head` in `key` and `value`.
    pub(super) fn offset(&self, block: usize, head: usize, slot: usize) -> usize {
        let s = &self.shape;
        ((head * s.num_blocks + block) * s.block_size + slot) * s.head_dim
    }

    fn block_of(&self, block_table: &[u32], position: usize) -> Result<usize, String> {
        let block = *block_table
            .get(position / self.shape.block_size)
            .ok_or_else(|| format!("no block for position {position}"))?
            as usize;
        if block >= self.shape.num_blocks {
            return Err(format!(
                "block {block} is outside the cache of {} blocks",
                self.shape.num_blocks
            ));
        }
        Ok(block)
    }

    /// Stores one token's keys and values (`num_kv_heads * head_dim` each) at `position`.
    pub fn write(
        &mut self,
        block_table: &[u32],
        position: usize,
        key: &[f32],
        value: &[f32],
    ) -> Result<(), String> {
        let (heads, d) = (self.shape.num_kv_heads, self.shape.head_dim);
        if key.len() != heads * d || value.len() != heads * d {
            return Err(format!("a token's K/V must have {heads} x {d} values"));
        }
        let block = self.block_of(block_table, position)?;
        let slot = position % self.shape.block_size;
        for h in 0..heads {
            let at = self.offset(block, h, slot);
            self.key[at..at + d].copy_from_slice(&key[h * d..(h + 1) * d]);
            self.value[at..at + d].copy_from_slice(&value[h * d..(h + 1) * d]);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn released_pages_keep_the_kept_blocks_and_take_new_writes() {
        let shape = KvCacheShape {
            num_blocks: 4,
            block_size: 16,
            num_kv_heads: 2,
            head_dim: 8,
        };
        let mut blocks = KvBlocks::new(shape).unwrap_or_else(|e| panic!("{e}"));
        let len = blocks.key.len();
        let token: Vec<f32> = (1..=16).map(|v| v as f32).collect();
        let table = [2u32, 0];
        // Position 2 lands in block 2, position 17 in block 0.
        for position in [2, 17] {
            blocks
                .write(&table, position, &token, &token)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let kept = blocks.offset(2, 1, 2);
        blocks.release_pages(&[2]);
        assert_eq!(blocks.key.len(), len);
        assert_eq!(blocks.value.len(), len);
        assert_eq!(&blocks.key[kept..kept + 8], &token[8..]);
        assert_eq!(&blocks.value[kept..kept + 8], &token[8..]);
        // Block 0's token is gone: only block 2's 16 values per pool remain.
        let written = |pool: &[f32]| pool.iter().filter(|v| **v != 0.0).count();
        assert_eq!(written(&blocks.key), 16);
        assert_eq!(written(&blocks.value), 16);
        blocks
            .write(&table, 17, &token, &token)
            .unwrap_or_else(|e| panic!("{e}"));
        let at = blocks.offset(0, 1, 1);
        assert_eq!(&blocks.value[at..at + 8], &token[8..]);
    }
}
