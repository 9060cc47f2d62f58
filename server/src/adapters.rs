//! The LoRA adapters the server serves, by name: registered at start (`--lora-adapters`) or
//! at run time (SageMaker's `POST /adapters`, vLLM's `/v1/load_lora_adapter`), each checked
//! against the base model before it is accepted, so nothing half-loaded is ever served.
//!
//! Requests hold a [`AdapterUse`] while they run. Unregistering first stops new requests
//! from taking the adapter, then waits until the last running one drops its use, and only
//! then removes it (the engines free it after): requests in flight are never lost.

use lantern_engine::{AdapterRef, AdapterSource};
use lantern_models::lora::source::{resolve, SourceError};
use lantern_models::lora::{load_adapter, AdapterError};
use lantern_models::DecoderConfig;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;

/// Why an adapter was not registered or not found; each is the caller's to fix.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RegistryError {
    #[error("{0}")]
    Invalid(String),
    #[error("adapter `{0}` is already registered: unregister it first to replace it")]
    Exists(String),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("adapter `{name}`: {error}")]
    Bad { name: String, error: AdapterError },
    #[error("the adapter {0} was not found")]
    NotFound(String),
}

/// One registered adapter, as listings show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub adapter: AdapterRef,
    /// The source as given (`GET /adapters` shows it back).
    pub src: String,
    pub rank: usize,
    pub in_flight: usize,
}

struct Entry {
    adapter: AdapterRef,
    src: String,
    rank: usize,
    in_flight: usize,
    /// Being unregistered: no new request may take it.
    draining: bool,
}

pub struct Adapters {
    base: DecoderConfig,
    roots: Vec<PathBuf>,
    max_rank: usize,
    max_loras: usize,
    next_id: AtomicU32,
    entries: Mutex<BTreeMap<String, Entry>>,
    released: Notify,
}

impl std::fmt::Debug for Adapters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Adapters")
            .field("roots", &self.roots)
            .field("names", &self.names())
            .finish()
    }
}

/// A request's hold on its adapter, released when dropped.
pub struct AdapterUse {
    adapters: Arc<Adapters>,
    adapter: AdapterRef,
}

impl AdapterUse {
    pub fn adapter(&self) -> &AdapterRef {
        &self.adapter
    }
}

impl Drop for AdapterUse {
    fn drop(&mut self) {
        if let Some(entry) = self.adapters.lock().get_mut(&self.adapter.name) {
            if entry.adapter.id == self.adapter.id {
                entry.in_flight = entry.in_flight.saturating_sub(1);
            }
        }
        self.adapters.released.notify_waiters();
    }
}

impl Adapters {
    /// Adapters for a base shaped `base`, read from under `roots` at run time.
    pub fn new(
        base: DecoderConfig,
        roots: Vec<PathBuf>,
        max_rank: usize,
        max_loras: usize,
    ) -> Self {
        Self {
            base,
            roots,
            max_rank,
            max_loras,
            next_id: AtomicU32::new(1),
            entries: Mutex::new(BTreeMap::new()),
            released: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    pub fn max_loras(&self) -> usize {
        self.max_loras
    }

    /// Whether any adapter is registered (OpenAI's `model` is then checked).
    pub fn any(&self) -> bool {
        !self.lock().is_empty()
    }

    pub fn names(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// The name an id was registered under (metrics labels).
    pub fn name_of(&self, id: u32) -> Option<String> {
        self.lock()
            .values()
            .find(|e| e.adapter.id == id)
            .map(|e| e.adapter.name.clone())
    }

    pub fn list(&self) -> Vec<Listed> {
        self.lock()
            .values()
            .map(|e| Listed {
                adapter: e.adapter.clone(),
                src: e.src.clone(),
                rank: e.rank,
                in_flight: e.in_flight,
            })
            .collect()
    }

    /// Registers the adapter in `src` (checked against the roots unless `trusted`: the
    /// operator's own `--lora-adapters`) as `name`, after reading it whole against the base
    /// model. Blocking (it reads the adapter's weights): call from the blocking pool.
    pub fn register(
        &self,
        name: &str,
        src: &str,
        pin: bool,
        trusted: bool,
    ) -> Result<AdapterRef, RegistryError> {
        let name = name.trim();
        if name.is_empty() || name.len() > 256 || (!trusted && name.contains(['/', '\\'])) {
            return Err(RegistryError::Invalid(
                "`name` must be 1 to 256 characters, without slashes".into(),
            ));
        }
        if src.trim().is_empty() {
            return Err(RegistryError::Invalid("`src` must not be empty".into()));
        }
        if self.lock().contains_key(name) {
            return Err(RegistryError::Exists(name.to_string()));
        }
        let dir = if trusted {
            std::path::Path::new(src)
                .canonicalize()
                .map_err(|_| SourceError::Missing(src.into()))?
        } else {
            resolve(src, &self.roots)?
        };
        let read =
            load_adapter(&dir, &self.base, self.max_rank).map_err(|error| RegistryError::Bad {
                name: name.to_string(),
                error,
            })?;
        let mut entries = self.lock();
        if entries.contains_key(name) {
            return Err(RegistryError::Exists(name.to_string()));
        }
        if pin {
            let pinned = entries.values().filter(|e| e.adapter.pinned).count();
            if pinned >= self.max_loras {
                return Err(RegistryError::Invalid(format!(
                    "`pin`: {pinned} adapters are pinned already and --max-loras is {}: unpin one or raise --max-loras",
                    self.max_loras
                )));
            }
        }
        let adapter = Arc::new(AdapterSource {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            name: name.to_string(),
            dir,
            pinned: pin,
        });
        entries.insert(
            name.to_string(),
            Entry {
                adapter: adapter.clone(),
                src: src.to_string(),
                rank: read.rank,
                in_flight: 0,
                draining: false,
            },
        );
        tracing::info!(
            adapter = name,
            rank = read.rank,
            pinned = pin,
            "adapter registered"
        );
        Ok(adapter)
    }

    /// A hold on adapter `name` for one request; `None` if no such adapter is registered (or
    /// it is being unregistered).
    pub fn acquire(self: &Arc<Self>, name: &str) -> Option<AdapterUse> {
        let mut entries = self.lock();
        let entry = entries.get_mut(name).filter(|e| !e.draining)?;
        entry.in_flight += 1;
        Some(AdapterUse {
            adapters: self.clone(),
            adapter: entry.adapter.clone(),
        })
    }

    /// Stops new requests from taking `name`, waits for the running ones to finish, and
    /// removes it. The adapter is returned for the engines to free.
    pub async fn unregister(&self, name: &str) -> Result<AdapterRef, RegistryError> {
        {
            let mut entries = self.lock();
            let entry = entries
                .get_mut(name)
                .filter(|e| !e.draining)
                .ok_or_else(|| RegistryError::NotFound(name.to_string()))?;
            entry.draining = true;
        }
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            {
                let mut entries = self.lock();
                if entries.get(name).is_none_or(|e| e.in_flight == 0) {
                    let entry = entries
                        .remove(name)
                        .ok_or_else(|| RegistryError::NotFound(name.to_string()))?;
                    tracing::info!(adapter = name, "adapter unregistered");
                    return Ok(entry.adapter);
                }
            }
            released.await;
        }
    }

    /// Forgets `name` at once (a registration whose preload failed).
    pub fn forget(&self, name: &str) {
        self.lock().remove(name);
    }
}

#[cfg(test)]
mod tests;
