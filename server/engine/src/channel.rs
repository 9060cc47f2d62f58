//! What crosses between the engine's handles and its thread: the commands handles send, and
//! the state both sides read. A leaf: the handle and the worker both use it, and neither
//! imports the other.

use crate::adapters::{AdapterRef, AdapterStats};
use crate::request::{Event, GenerateRequest};
use crate::scheduler::{SchedulerStats, SequenceId};
use std::sync::atomic::AtomicBool;
use std::sync::Mutex;
use std::time::Instant;
use tokio::sync::mpsc::UnboundedSender;

/// What a handle asks of the engine thread.
pub(crate) enum Command {
    Submit {
        id: SequenceId,
        request: Box<GenerateRequest>,
        /// For a parallel sample: the sequence prefilling the same prompt.
        leader: Option<SequenceId>,
        events: UnboundedSender<Event>,
        submitted_at: Instant,
    },
    /// Load an adapter into the decoder now (a registration's `preload`); the reply says
    /// whether it loaded.
    LoadAdapter {
        adapter: AdapterRef,
        reply: tokio::sync::oneshot::Sender<Result<(), String>>,
    },
    /// Free an adapter no request runs under any more (an unregistered one).
    UnloadAdapter { id: u32 },
}

/// State shared between the handles and the engine thread.
pub(crate) struct Shared {
    pub healthy: AtomicBool,
    pub stats: Mutex<SchedulerStats>,
    pub adapters: Mutex<AdapterStats>,
}
