//! LoRA adapters on the CPU kernels: each adapter's `A` and `B` packed (bf16 when stored so,
//! else f32). Per product, the rows of each adapter are gathered and multiplied by its `A`;
//! the base product then adds `scaling · B (A x)` to those rows between its bias and its
//! epilogue (`LowRankGroup`, computed on the panels each of its threads owns).
//!
//! Each row's addend is two FMA-chain products of that row alone (their bits do not depend on
//! the row count), so a request's output does not depend on which adapters share its step.

use crate::lora::{LoraAdapter, Projection};
use lantern_kernels::cpu::{CpuKernels, LowRankGroup, LowRankPart, PackedMatrix, WeightFormat};
use std::collections::HashMap;

/// One projection's low-rank pair.
#[derive(Debug)]
struct LowRank {
    /// `A`, `(rank, in)`.
    down: PackedMatrix,
    /// `B`, `(out, rank)`; its product is scaled as it is scattered.
    up: PackedMatrix,
}

/// One adapter: its scaling, and per layer, per [`Projection::index`], the pair where it has
/// one.
#[derive(Debug)]
struct AdapterLayers {
    scaling: f32,
    layers: Vec<[Option<LowRank>; 7]>,
}

/// The adapters loaded into the decoder, by the id steps name them with.
#[derive(Debug, Default)]
pub(super) struct CpuAdapters {
    by_id: HashMap<u32, AdapterLayers>,
}

impl CpuAdapters {
    /// Packs `adapter`'s pairs in the precision they were stored in: bf16 weights stay bf16
    /// (exact; the products read half the bytes, which is what adapters cost a
    /// memory-bound step), others f32.
    pub fn insert(&mut self, id: u32, adapter: &LoraAdapter, num_layers: usize) {
        let format = if adapter.bf16 {
            WeightFormat::Bf16
        } else {
            WeightFormat::F32
        };
        let mut layers: Vec<[Option<LowRank>; 7]> =
            (0..num_layers).map(|_| Default::default()).collect();
        for (&(layer, projection), delta) in &adapter.deltas {
            let (rank, inp, out) = (delta.rank, delta.in_features, delta.out_features);
            layers[layer][projection.index()] = Some(LowRank {
                down: PackedMatrix::pack(&delta.a, rank, inp, format),
                up: PackedMatrix::pack(&delta.b, out, rank, format),
            });
        }
        let scaling = adapter.scaling;
        self.by_id.insert(id, AdapterLayers { scaling, layers });
    }

    pub fn remove(&mut self, id: u32) -> bool {
        self.by_id.remove(&id).is_some()
    }

    pub fn contains(&self, id: u32) -> bool {
        self.by_id.contains_key(&id)
    }

    /// Bytes of packed adapter weights.
    pub fn bytes(&self) -> usize {
        self.by_id
            .values()
            .flat_map(|adapter| &adapter.layers)
            .flatten()
            .flatten()
            .map(|pair| pair.down.weight_bytes() + pair.up.weight_bytes())
            .sum()
    }

    /// The low-rank addends of one product: `parts` are the projections it stacks with the
    /// column each starts at, `x` its `(rows, in)` input. Each adapter's `A x` for its rows is
    /// computed here, on the calling thread (small products: a parallel region each would
    /// cost more in wake-ups than the arithmetic); `B (A x)` is computed by the product's own
    /// threads, in its epilogue (`LowRankGroup`). Empty when no row of the step runs under an
    /// adapter with one of these projections in `layer`.
    pub fn low_rank<'b>(
        &'b self,
        kernels: &CpuKernels,
        groups: &'b RowGroups,
        layer: usize,
        parts: &[(Projection, usize)],
        x: &[f32],
        buffers: &'b mut LoraBuffers,
    ) -> Vec<LowRankGroup<'b>> {
        let inp = x.len() / groups.rows.max(1);
        // (group, its adapter's pair and column) for every pair the product has.
        let mut work: Vec<(usize, &'b LowRank, usize)> = Vec::new();
        for (g, (id, _)) in groups.by_adapter.iter().enumerate() {
            let Some(adapter) = self.by_id.get(id) else {
                continue;
            };
            for &(projection, column) in parts {
                if let Some(pair) = adapter.layers[layer][projection.index()].as_ref() {
                    work.push((g, pair, column));
                }
            }
        }
        if work.is_empty() {
            return Vec::new();
        }
        let LoraBuffers {
            gathered,
            lows,
            scratch,
        } = buffers;
        if lows.len() < work.len() {
            lows.resize_with(work.len(), Vec::new);
        }
        let mut gathered_for = usize::MAX;
        for (&(g, pair, _), low) in work.iter().zip(lows.iter_mut()) {
            let members = &groups.by_adapter[g].1;
            if gathered_for != g {
                gathered.clear();
                for &r in members {
                    gathered.extend_from_slice(&x[r * inp..(r + 1) * inp]);
                }
                gathered_for = g;
            }
            low.resize(members.len() * pair.down.out_features(), 0.0);
            kernels.matmul_on_this_thread(gathered, members.len(), &pair.down, low, scratch);
        }
        let mut addends: Vec<LowRankGroup<'b>> = Vec::new();
        for (&(g, pair, column), low) in work.iter().zip(lows.iter()) {
            let (id, members) = &groups.by_adapter[g];
            let part = LowRankPart {
                column,
                b: &pair.up,
                low,
            };
            match addends.last_mut() {
                Some(last) if std::ptr::eq(last.rows, members.as_slice()) => last.parts.push(part),
                _ => addends.push(LowRankGroup {
                    rows: members,
                    scaling: self.by_id.get(id).map_or(0.0, |a| a.scaling),
                    parts: vec![part],
                }),
            }
        }
        addends
    }
}

/// The rows of a step grouped by the adapter they run under (rows of the base model in none).
#[derive(Debug, Default)]
pub(super) struct RowGroups {
    rows: usize,
    by_adapter: Vec<(u32, Vec<usize>)>,
}

impl RowGroups {
    /// `adapters` gives each sequence's adapter and row count, in batch order.
    pub fn new(adapters: impl Iterator<Item = (Option<u32>, usize)>) -> Self {
        let mut groups = Self::default();
        for (adapter, len) in adapters {
            let first = groups.rows;
            groups.rows += len;
            let Some(id) = adapter else { continue };
            let members = match groups.by_adapter.iter_mut().find(|(g, _)| *g == id) {
                Some((_, members)) => members,
                None => {
                    groups.by_adapter.push((id, Vec::new()));
                    let last = groups.by_adapter.len() - 1;
                    &mut groups.by_adapter[last].1
                }
            };
            members.extend(first..first + len);
        }
        groups
    }
}

/// What computing the addends reuses from product to product: the gathered rows of one
/// adapter, each pair's `A x`, the kernels' scratch.
#[derive(Debug, Default)]
pub(super) struct LoraBuffers {
    gathered: Vec<f32>,
    lows: Vec<Vec<f32>>,
    scratch: Vec<f32>,
}
