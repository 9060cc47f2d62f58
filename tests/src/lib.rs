//! End-to-end tests live in `tests/`; this crate holds only their shared helpers.
