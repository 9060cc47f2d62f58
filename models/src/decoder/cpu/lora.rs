//! LoRA adapters on the CPU kernels: each adapter's `A` and `B` packed (bf16 when stored so,
//! else f32), and per product the delta `scaling · B A x` of every row that runs under an
//! adapter, computed group by group (the rows of one adapter gathered into one product) and
//! added by the base product between its bias and its epilogue (`RowDelta`).
//!
//! Each row's delta is two packed products of that row alone (their bits do not depend on the
//! row count), so a request's output does not depend on which adapters share its step.

use crate::lora::{LoraAdapter, Projection};
use lantern_kernels::cpu::{CpuKernels, PackedMatrix, RowDelta, WeightFormat};
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

    /// The delta of one product: `parts` are the projections it stacks with the column each
    /// starts at, `width` its full width, `x` its `(rows, in)` input. `None` when no row of
    /// the step runs under an adapter that has one of these projections in `layer`.
    ///
    /// The low-rank products are small: they run one adapter after another on the calling
    /// thread (a parallel region per product and adapter cost more in wake-ups than the
    /// arithmetic, measured). Only the rows under an adapter are written.
    #[allow(clippy::too_many_arguments)]
    pub fn delta<'b>(
        &self,
        kernels: &CpuKernels,
        groups: &RowGroups,
        layer: usize,
        parts: &[(Projection, usize)],
        width: usize,
        x: &[f32],
        buffers: &'b mut LoraBuffers,
    ) -> Option<RowDelta<'b>> {
        let rows = groups.rows;
        let inp = x.len() / rows.max(1);
        let LoraBuffers {
            values,
            flags,
            gathered,
            low,
            product,
            scratch,
        } = buffers;
        let mut any = false;
        for (id, members) in &groups.by_adapter {
            let Some(adapter) = self.by_id.get(id) else {
                continue;
            };
            let pairs = parts.iter().enumerate().map(|(i, &(projection, column))| {
                let end = parts.get(i + 1).map_or(width, |&(_, next)| next);
                (
                    adapter.layers[layer][projection.index()].as_ref(),
                    column,
                    end,
                )
            });
            if pairs.clone().all(|(pair, _, _)| pair.is_none()) {
                continue;
            }
            if !any {
                any = true;
                // Rows without an adapter are never read: no need to clear them.
                values.resize(rows * width, 0.0);
                flags.clear();
                flags.resize(rows, false);
            }
            let count = members.len();
            gathered.clear();
            for &r in members {
                gathered.extend_from_slice(&x[r * inp..(r + 1) * inp]);
                flags[r] = true;
            }
            for (pair, column, end) in pairs {
                let Some(pair) = pair else {
                    // A projection this adapter leaves alone: a zero delta.
                    for &r in members {
                        values[r * width + column..r * width + end].fill(0.0);
                    }
                    continue;
                };
                let (rank, out) = (pair.down.out_features(), pair.up.out_features());
                low.resize(count * rank, 0.0);
                kernels.matmul_on_this_thread(gathered, count, &pair.down, low, scratch);
                product.resize(count * out, 0.0);
                kernels.matmul_on_this_thread(low, count, &pair.up, product, scratch);
                for (i, &r) in members.iter().enumerate() {
                    let dst = &mut values[r * width + column..][..out];
                    for (d, &p) in dst.iter_mut().zip(&product[i * out..(i + 1) * out]) {
                        *d = adapter.scaling * p;
                    }
                }
            }
        }
        any.then_some(RowDelta {
            values,
            rows: flags,
        })
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

/// The buffers the deltas reuse from product to product.
#[derive(Debug, Default)]
pub(super) struct LoraBuffers {
    values: Vec<f32>,
    flags: Vec<bool>,
    gathered: Vec<f32>,
    low: Vec<f32>,
    product: Vec<f32>,
    scratch: Vec<f32>,
}
