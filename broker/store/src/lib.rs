//! Allot's state store: a revisioned key-value [`Store`] with etcd and embedded backends.
//!
//! The broker keeps its state (node registrations, allocations, quotas,
//! counters, its leader lease) in a [`Store`]: etcd's model of revisioned
//! keys, compare-and-swap transactions, prefix watches and leases, shaped by
//! what the broker needs and usable as `Arc<dyn Store>`.
//!
//! - [`EtcdStore`]: etcd v3 through `etcd-client`, for a replicated broker.
//! - [`EmbeddedStore`]: a redb database in a directory, for a single broker
//!   process, with group commit.
//! - [`layout`]: the one place that knows Allot's key names.
//! - `testing` (feature `testing`): a real etcd on free loopback ports.
//!
//! Both backends pass one conformance suite (`tests/conformance.rs`); see
//! `docs/store.md` for the design.

mod embedded;
mod error;
mod etcd;
pub mod layout;
mod store;
#[cfg(feature = "testing")]
pub mod testing;
mod types;
mod watch;

pub use embedded::{DATABASE_FILE, EmbeddedOptions, EmbeddedStore, WriteStats};
pub use error::StoreError;
pub use etcd::{EtcdConfig, EtcdStore, RetryPolicy};
pub use store::Store;
pub use types::{
    Compare, CompareOp, CompareTarget, EventKind, KeyValue, Lease, LeaseId, MAX_TXN_BYTES, MAX_TXN_OPS, Op, OpResult,
    RangeResult, Revision, Txn, TxnResult, WatchEvent,
};
pub use watch::WatchStream;
