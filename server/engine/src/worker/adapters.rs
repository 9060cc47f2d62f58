//! The adapters the decoder holds. A step's adapters are loaded before it runs (read from
//! their directory, checked against the model, packed); at most `max` stay loaded, and the
//! least recently used one that is neither pinned nor running is unloaded to make room. The
//! scheduler never runs more than `max` adapters at once (`Scheduler::set_max_adapters`),
//! so room can be made unless pinned adapters fill it (then the decoder holds one more until
//! a pinned one is unregistered).

use super::Worker;
use crate::adapters::{AdapterRef, AdapterStats};
use crate::request::Event;
use crate::scheduler::{Plan, SequenceId};
use std::collections::HashMap;

/// An adapter in the decoder.
struct Loaded {
    adapter: AdapterRef,
    /// The step that last ran it.
    last_used: u64,
}

pub(super) struct ResidentAdapters {
    max: usize,
    max_rank: usize,
    loaded: HashMap<u32, Loaded>,
    loads: u64,
}

impl ResidentAdapters {
    pub fn new(max: usize, max_rank: usize) -> Self {
        Self {
            max: max.max(1),
            max_rank,
            loaded: HashMap::new(),
            loads: 0,
        }
    }

    pub fn max(&self) -> usize {
        self.max
    }
}

impl Worker {
    /// Loads every adapter `plan` runs under that the decoder lacks. A sequence whose adapter
    /// cannot be loaded (its files changed since registration) fails alone; false when any
    /// did, and the plan must not run (it is planned again without them).
    pub(super) fn load_adapters_of(&mut self, plan: &Plan) -> bool {
        let mut needed: Vec<(SequenceId, AdapterRef)> = Vec::new();
        for scheduled in &plan.steps {
            if let Some(adapter) = self
                .active
                .get(&scheduled.id)
                .and_then(|a| a.adapter.clone())
            {
                needed.push((scheduled.id, adapter));
            }
        }
        let in_plan: Vec<u32> = needed.iter().map(|(_, a)| a.id).collect();
        let mut failed = Vec::new();
        for (id, adapter) in &needed {
            if let Some(loaded) = self.adapters.loaded.get_mut(&adapter.id) {
                loaded.last_used = self.model_steps;
                continue;
            }
            if let Err(message) = self.load_adapter(adapter, &in_plan) {
                failed.push((*id, message));
            }
        }
        for (id, message) in &failed {
            self.scheduler.remove(*id);
            if let Some(active) = self.active.remove(id) {
                let _ = active.events.send(Event::Failed(message.clone()));
            }
        }
        failed.is_empty()
    }

    /// Loads `adapter` into the decoder, first unloading the least recently used one that
    /// is not pinned, not running and not in `keep`, while the decoder is full.
    pub(super) fn load_adapter(
        &mut self,
        adapter: &AdapterRef,
        keep: &[u32],
    ) -> Result<(), String> {
        if self.adapters.loaded.contains_key(&adapter.id) {
            return Ok(());
        }
        let running = self.scheduler.running_adapters();
        while self.adapters.loaded.len() >= self.adapters.max {
            let victim = self
                .adapters
                .loaded
                .iter()
                .filter(|(id, l)| !l.adapter.pinned && !keep.contains(id) && !running.contains(id))
                .min_by_key(|(_, l)| l.last_used)
                .map(|(&id, _)| id);
            let Some(victim) = victim else { break };
            self.unload_adapter(victim);
        }
        let config = self.decoder.config();
        let read = lantern_models::lora::load_adapter(&adapter.dir, config, self.adapters.max_rank)
            .map_err(|e| format!("adapter `{}`: {e}", adapter.name))?;
        self.decoder
            .add_adapter(adapter.id, &read)
            .map_err(|e| format!("adapter `{}`: {e}", adapter.name))?;
        self.adapters.loads += 1;
        tracing::info!(adapter = %adapter.name, id = adapter.id, rank = read.rank, "adapter loaded");
        self.adapters.loaded.insert(
            adapter.id,
            Loaded {
                adapter: adapter.clone(),
                last_used: self.model_steps,
            },
        );
        Ok(())
    }

    pub(super) fn unload_adapter(&mut self, id: u32) {
        if let Some(loaded) = self.adapters.loaded.remove(&id) {
            self.decoder.remove_adapter(id);
            tracing::info!(adapter = %loaded.adapter.name, id, "adapter unloaded");
        }
    }

    pub(super) fn adapter_stats(&self) -> AdapterStats {
        let mut loaded: Vec<u32> = self.adapters.loaded.keys().copied().collect();
        loaded.sort_unstable();
        AdapterStats {
            running: self.scheduler.running_adapters(),
            waiting: self.scheduler.waiting_adapters(),
            loaded,
            bytes: self.decoder.adapter_bytes(),
            loads: self.adapters.loads,
        }
    }
}
