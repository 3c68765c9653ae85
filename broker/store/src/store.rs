//! The `Store` trait: what the broker needs from a revisioned key-value store.

use std::time::Duration;

use async_trait::async_trait;

use crate::error::StoreError;
use crate::types::{KeyValue, Lease, LeaseId, RangeResult, Revision, Txn, TxnResult};
use crate::watch::WatchStream;

/// A revisioned key-value store with compare-and-swap transactions, prefix
/// watches and leases: etcd's model, which the embedded store reproduces.
///
/// Keys are opaque UTF-8 strings; [`crate::layout`] names Allot's keys. Every
/// method is usable through `Arc<dyn Store>`.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// One key, or `None` when it does not exist.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;

    /// Every key that starts with `prefix` (all keys for `""`), sorted, read at
    /// one revision (a consistent snapshot, however many keys there are).
    async fn range(&self, prefix: &str) -> Result<RangeResult, StoreError>;

    /// Evaluates the compares and applies one branch, all or nothing.
    async fn txn(&self, txn: Txn) -> Result<TxnResult, StoreError>;

    /// Every change to keys under `prefix` with a revision of at least `from`,
    /// in revision order (and, within a revision, in the order of the
    /// transaction's operations). `Revision::ZERO` means "changes after this
    /// call". After `range`, `watch(prefix, range.revision.next())` misses
    /// nothing. If the history from `from` is gone, this or the stream's first
    /// item is [`StoreError::Compacted`].
    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream, StoreError>;

    /// Grants a lease of about `ttl` (rounded up to whole seconds; etcd may
    /// raise it to its minimum, see [`Lease::ttl`]).
    async fn grant_lease(&self, ttl: Duration) -> Result<Lease, StoreError>;

    /// Restarts the lease's TTL. [`StoreError::LeaseNotFound`] once it expired.
    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError>;

    /// Ends the lease now, deleting its keys (with watch `Delete` events).
    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError>;

    /// The revision of the latest committed change.
    async fn current_revision(&self) -> Result<Revision, StoreError>;
}
