//! LoRA adapters' side of the scheduler: at most `max_adapters` distinct adapters run at once
//! (the decoder holds that many), a waiting request for another lets those behind it go
//! ahead, and the adapters of running and waiting sequences are reported.

use super::{Scheduler, SequenceId};

impl Scheduler {
    /// Caps the distinct LoRA adapters running at once (the decoder holds that many): a
    /// waiting request for another adapter waits, and those behind it go ahead.
    pub fn set_max_adapters(&mut self, adapters: usize) {
        self.max_adapters = adapters.max(1);
    }

    /// Whether a sequence under `adapter` can join the running ones.
    pub(super) fn adapter_fits(&self, adapter: Option<u32>) -> bool {
        let Some(adapter) = adapter else {
            return true;
        };
        let running = self.running_adapters();
        running.contains(&adapter) || running.len() < self.max_adapters
    }

    /// The adapters of the running sequences, each once.
    pub fn running_adapters(&self) -> Vec<u32> {
        self.adapters_of(self.running.iter())
    }

    /// The adapters of the waiting sequences, each once.
    pub fn waiting_adapters(&self) -> Vec<u32> {
        self.adapters_of(self.waiting.iter())
    }

    fn adapters_of<'a>(&self, ids: impl Iterator<Item = &'a SequenceId>) -> Vec<u32> {
        let mut adapters: Vec<u32> = ids
            .filter_map(|id| self.sequences.get(id)?.adapter)
            .collect();
        adapters.sort_unstable();
        adapters.dedup();
        adapters
    }

    /// The adapter sequence `id` runs under.
    pub fn adapter_of(&self, id: SequenceId) -> Option<u32> {
        self.sequences.get(&id)?.adapter
    }
}
