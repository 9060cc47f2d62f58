//! LoRA adapters on the portable path: each adapter's `A^T` and `(scaling · B)^T` as tensors
//! on the model's device and dtype, and per projection `y += (x A^T) (scaling · B)^T` for the
//! rows of each adapter, gathered and scattered back by row index.

use crate::error::Result;
use crate::lora::{LoraAdapter, Projection};
use candle_core::{DType, Device, Tensor};
use lantern_kernels::Uploads;
use std::collections::HashMap;

/// One projection's `(A^T, (scaling · B)^T)`: `(in, rank)` and `(rank, out)`.
type LowRank = (Tensor, Tensor);

#[derive(Debug, Default)]
pub(super) struct PortableAdapters {
    by_id: HashMap<u32, Vec<[Option<LowRank>; 7]>>,
}

impl PortableAdapters {
    pub fn insert(
        &mut self,
        id: u32,
        adapter: &LoraAdapter,
        num_layers: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<()> {
        let mut layers: Vec<[Option<LowRank>; 7]> =
            (0..num_layers).map(|_| Default::default()).collect();
        for (&(layer, projection), delta) in &adapter.deltas {
            let (rank, inp, out) = (delta.rank, delta.in_features, delta.out_features);
            let a = Tensor::from_slice(&delta.a, (rank, inp), device)?;
            let b = Tensor::from_slice(&delta.scaled_b(adapter.scaling), (out, rank), device)?;
            layers[layer][projection.index()] = Some((
                a.t()?.contiguous()?.to_dtype(dtype)?,
                b.t()?.contiguous()?.to_dtype(dtype)?,
            ));
        }
        self.by_id.insert(id, layers);
        Ok(())
    }

    pub fn remove(&mut self, id: u32) -> bool {
        self.by_id.remove(&id).is_some()
    }

    pub fn contains(&self, id: u32) -> bool {
        self.by_id.contains_key(&id)
    }

    pub fn bytes(&self) -> usize {
        self.by_id
            .values()
            .flatten()
            .flatten()
            .flatten()
            .map(|(a, b)| (a.elem_count() + b.elem_count()) * a.dtype().size_in_bytes())
            .sum()
    }

    /// `y` (the base projection of `x`) plus the delta of every row group that has this
    /// projection in `layer`.
    pub fn apply(
        &self,
        groups: &StepGroups,
        layer: usize,
        projection: Projection,
        x: &Tensor,
        mut y: Tensor,
    ) -> Result<Tensor> {
        for (id, rows) in &groups.by_adapter {
            let Some(layers) = self.by_id.get(id) else {
                continue;
            };
            let Some((a_t, b_t)) = &layers[layer][projection.index()] else {
                continue;
            };
            let delta = x.index_select(rows, 0)?.matmul(a_t)?.matmul(b_t)?;
            y = y.index_add(rows, &delta, 0)?;
        }
        Ok(y)
    }
}

/// A step's rows grouped by adapter, as index tensors on the device.
#[derive(Debug, Default)]
pub(super) struct StepGroups {
    by_adapter: Vec<(u32, Tensor)>,
}

impl StepGroups {
    /// `adapters` gives each sequence's adapter and row count, in batch order.
    pub fn new(
        adapters: impl Iterator<Item = (Option<u32>, usize)>,
        device: &Device,
        uploads: &dyn Uploads,
    ) -> Result<Self> {
        let mut rows: Vec<(u32, Vec<u32>)> = Vec::new();
        let mut first = 0u32;
        for (adapter, len) in adapters {
            let range = first..first + len as u32;
            first += len as u32;
            let Some(id) = adapter else { continue };
            match rows.iter_mut().find(|(g, _)| *g == id) {
                Some((_, members)) => members.extend(range),
                None => rows.push((id, range.collect())),
            }
        }
        let by_adapter = rows
            .into_iter()
            .map(|(id, members)| {
                let n = members.len();
                Ok((id, uploads.u32s(members, &[n], device)?))
            })
            .collect::<Result<_>>()?;
        Ok(Self { by_adapter })
    }
}
