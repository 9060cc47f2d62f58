//! One layer's K/V block pool in the CPU kernels' layout: `[kv_head][block][slot][head_dim]`,
//! so the keys of one head in one block are one contiguous run, and a sequence whose blocks
//! have consecutive ids reads one long run per head (measured: 24 -> 16 ms of attention per
//! decode step at 32 sequences, against `[block][kv_head][slot][head_dim]`).

use super::generic::KvElement;
use crate::KvCacheShape;

/// What a KV cache stores each key and value element as (`--kv-cache-dtype`). Half
/// precision halves the cache's memory and the bytes attention reads; values are rounded to
/// nearest even when written and widened exactly when read, so a row's result still depends
/// only on its own keys and values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvDtype {
    #[default]
    F32,
    F16,
    Bf16,
}

impl KvDtype {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "f32" | "float32" => Some(Self::F32),
            "f16" | "float16" => Some(Self::F16),
            "bf16" | "bfloat16" => Some(Self::Bf16),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
        }
    }

    pub fn size_in_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::Bf16 => 2,
        }
    }
}

/// Zeroed memory that costs nothing until written: an anonymous mapping, whose pages the OS
/// supplies zeroed on first touch. (A `vec![0.0; n]` is only lazy when the allocator happens
/// to map it fresh: glibc raises its mmap threshold after large frees, as model loading does,
/// and then zeroes heap memory eagerly; a 256 MiB cache was resident at start.)
pub(super) struct Zeroed<T> {
    map: Option<memmap2::MmapMut>,
    element: std::marker::PhantomData<T>,
}

impl<T: bytemuck::Pod> Zeroed<T> {
    fn new(len: usize, what: &str) -> Result<Self, String> {
        let element = std::marker::PhantomData;
        if len == 0 {
            return Ok(Self { map: None, element });
        }
        let bytes = len
            .checked_mul(std::mem::size_of::<T>())
            .ok_or_else(|| format!("the {what} cache of {len} elements overflows"))?;
        let map = memmap2::MmapMut::map_anon(bytes)
            .map_err(|e| format!("cannot allocate the {what} cache ({len} elements): {e}"))?;
        Ok(Self {
            map: Some(map),
            element,
        })
    }
}

impl<T: bytemuck::Pod> std::ops::Deref for Zeroed<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // Mappings are page-aligned and hold whole elements, so the cast cannot fail.
        self.map.as_deref().map_or(&[], bytemuck::cast_slice)
    }
}

impl<T: bytemuck::Pod> std::ops::DerefMut for Zeroed<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        self.map
            .as_deref_mut()
            .map_or(&mut [], bytemuck::cast_slice_mut)
    }
}

impl<T> std::fmt::Debug for Zeroed<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let bytes = self.map.as_ref().map_or(0, |m| m.len());
        write!(f, "Zeroed({bytes} bytes)")
    }
}

/// One pool (keys or values) in the element type of its cache.
#[derive(Debug)]
pub(super) enum KvPool {
    F32(Zeroed<f32>),
    F16(Zeroed<half::f16>),
    Bf16(Zeroed<half::bf16>),
}

impl KvPool {
    fn new(dtype: KvDtype, len: usize, what: &str) -> Result<Self, String> {
        Ok(match dtype {
            KvDtype::F32 => Self::F32(Zeroed::new(len, what)?),
            KvDtype::F16 => Self::F16(Zeroed::new(len, what)?),
            KvDtype::Bf16 => Self::Bf16(Zeroed::new(len, what)?),
        })
    }

    fn dtype(&self) -> KvDtype {
        match self {
            Self::F32(_) => KvDtype::F32,
            Self::F16(_) => KvDtype::F16,
            Self::Bf16(_) => KvDtype::Bf16,
        }
    }

    fn len(&self) -> usize {
        match self {
            Self::F32(p) => p.len(),
            Self::F16(p) => p.len(),
            Self::Bf16(p) => p.len(),
        }
    }

    /// `values` narrowed into `at..`.
    fn store(&mut self, at: usize, values: &[f32]) {
        fn narrow<T: KvElement>(pool: &mut [T], at: usize, values: &[f32]) {
            for (slot, &v) in pool[at..at + values.len()].iter_mut().zip(values) {
                *slot = T::from_f32(v);
            }
        }
        match self {
            Self::F32(p) => p[at..at + values.len()].copy_from_slice(values),
            Self::F16(p) => narrow(p, at, values),
            Self::Bf16(p) => narrow(p, at, values),
        }
    }

    /// `len` elements at `at` copied from `other` (the same element type).
    fn copy_from(&mut self, other: &Self, at: usize, len: usize) {
        match (self, other) {
            (Self::F32(to), Self::F32(from)) => {
                to[at..at + len].copy_from_slice(&from[at..at + len])
            }
            (Self::F16(to), Self::F16(from)) => {
                to[at..at + len].copy_from_slice(&from[at..at + len])
            }
            (Self::Bf16(to), Self::Bf16(from)) => {
                to[at..at + len].copy_from_slice(&from[at..at + len])
            }
            _ => {}
        }
    }

    /// Element `i` widened.
    #[cfg(test)]
    pub(super) fn get(&self, i: usize) -> f32 {
        match self {
            Self::F32(p) => p[i],
            Self::F16(p) => p[i].to_f32(),
            Self::Bf16(p) => p[i].to_f32(),
        }
    }
}

/// One layer's K/V block pool in the CPU layout.
#[derive(Debug)]
pub struct KvBlocks {
    pub(super) shape: KvCacheShape,
    pub(super) key: KvPool,
    pub(super) value: KvPool,
}

impl KvBlocks {
    /// A zeroed f32 pool; fails instead of aborting when the memory can't be had.
    pub fn new(shape: KvCacheShape) -> Result<Self, String> {
        Self::with_dtype(shape, KvDtype::F32)
    }

    /// A zeroed pool of `dtype` elements.
    pub fn with_dtype(shape: KvCacheShape, dtype: KvDtype) -> Result<Self, String> {
        let len = shape
            .num_blocks
            .checked_mul(shape.block_size)
            .and_then(|v| v.checked_mul(shape.num_kv_heads))
            .and_then(|v| v.checked_mul(shape.head_dim))
            .ok_or_else(|| format!("KV cache shape {shape:?} overflows"))?;
        Ok(Self {
            shape,
            key: KvPool::new(dtype, len, "key")?,
            value: KvPool::new(dtype, len, "value")?,
        })
    }

    pub fn dtype(&self) -> KvDtype {
        self.key.dtype()
    }

    /// Hands the pool's pages back to the OS: fresh zero mappings replace the old, into which
    /// the blocks in `keep` are copied, so only those and what is written from now on are
    /// resident. Every other block's content is gone: call it only while no sequence holds
    /// them (an idle engine). If new mappings cannot be had, the old ones stay.
    pub fn release_pages(&mut self, keep: &[u32]) {
        let (len, dtype) = (self.key.len(), self.dtype());
        let (Ok(mut key), Ok(mut value)) = (
            KvPool::new(dtype, len, "key"),
            KvPool::new(dtype, len, "value"),
        ) else {
            return;
        };
        let run = self.shape.block_size * self.shape.head_dim;
        for &block in keep
            .iter()
            .filter(|&&b| (b as usize) < self.shape.num_blocks)
        {
            for head in 0..self.shape.num_kv_heads {
                let at = self.offset(block as usize, head, 0);
                key.copy_from(&self.key, at, run);
                value.copy_from(&self.value, at, run);
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

    /// Stores one token's keys and values (`num_kv_heads * head_dim` each) at `position`,
    /// narrowed to the cache's element type.
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
            self.key.store(at, &key[h * d..(h + 1) * d]);
            self.value.store(at, &value[h * d..(h + 1) * d]);
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
        let read =
            |pool: &KvPool, at: usize| -> Vec<f32> { (at..at + 8).map(|i| pool.get(i)).collect() };
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
        assert_eq!(read(&blocks.key, kept), &token[8..]);
        assert_eq!(read(&blocks.value, kept), &token[8..]);
        // Block 0's token is gone: only block 2's 16 values per pool remain.
        let written = |pool: &KvPool| (0..pool.len()).filter(|&i| pool.get(i) != 0.0).count();
        assert_eq!(written(&blocks.key), 16);
        assert_eq!(written(&blocks.value), 16);
        blocks
            .write(&table, 17, &token, &token)
            .unwrap_or_else(|e| panic!("{e}"));
        let at = blocks.offset(0, 1, 1);
        assert_eq!(read(&blocks.value, at), &token[8..]);
    }
}
