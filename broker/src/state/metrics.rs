//! Counters the writer updates and `/metrics` reads.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters the writer updates.
#[derive(Debug, Default)]
pub struct Metrics {
    pub(crate) batches: AtomicU64,
    pub(crate) commands: AtomicU64,
    pub(crate) writes: AtomicU64,
}

impl Metrics {
    pub fn batch(&self, commands: usize, writes: usize) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.commands.fetch_add(commands as u64, Ordering::Relaxed);
        self.writes.fetch_add(writes as u64, Ordering::Relaxed);
    }
}
