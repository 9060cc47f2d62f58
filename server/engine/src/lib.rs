//! The continuous-batching engine: scheduler, KV blocks, sampling. Built in the engine issue.
