//! `StoreError`: every way a store operation can fail, with the context to act on it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::types::{LeaseId, Revision};

/// An error from a [`Store`](crate::Store) operation.
///
/// Each message starts with a stable code (`E-STORE-…`) and, where there is one,
/// a hint. The underlying error is the [`source`](std::error::Error::source),
/// not part of the message.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// etcd did not answer, and the operation was retried until the retry
    /// policy ran out. Nothing was written.
    #[error(
        "E-STORE-UNAVAILABLE: {operation} failed: etcd at {endpoints} did not answer after {attempts} attempts \
         over {elapsed:?}; check that etcd is running and reachable"
    )]
    Unavailable {
        operation: &'static str,
        endpoints: String,
        attempts: u32,
        elapsed: Duration,
        #[source]
        source: Arc<etcd_client::Error>,
    },

    /// A write reached etcd (or may have), and then the connection broke or the
    /// request timed out: it may or may not have been applied. It is not retried,
    /// because a retried compare-and-swap would misreport its own success as a
    /// conflict.
    #[error(
        "E-STORE-INDETERMINATE: {operation} may or may not have been applied: the request to etcd at {endpoints} \
         failed in flight; read the keys again before retrying"
    )]
    Indeterminate {
        operation: &'static str,
        endpoints: String,
        #[source]
        source: Arc<etcd_client::Error>,
    },

    /// etcd refused the request (a permanent error: retrying will not help).
    #[error("E-STORE-ETCD: etcd at {endpoints} refused {operation}")]
    Etcd {
        operation: &'static str,
        endpoints: String,
        #[source]
        source: Arc<etcd_client::Error>,
    },

    /// etcd sent something that cannot be right (a negative revision, an
    /// unknown event type).
    #[error("E-STORE-PROTOCOL: etcd at {endpoints} answered {operation} with {detail}")]
    Protocol { operation: &'static str, endpoints: String, detail: String },

    /// The lease does not exist: it expired, was revoked, or never existed.
    #[error("E-STORE-LEASE-NOT-FOUND: lease {lease} does not exist (expired or revoked); grant a new lease")]
    LeaseNotFound { lease: LeaseId },

    /// The history a watch asked for is gone: etcd compacted it, or it is older
    /// than the embedded store's in-memory history (or than its opening).
    #[error(
        "E-STORE-COMPACTED: changes from revision {requested} are no longer available (oldest available is \
         {oldest_available}); range again and watch from the range's revision + 1"
    )]
    Compacted { requested: Revision, oldest_available: Revision },

    /// The transaction is malformed; the store did not evaluate it.
    #[error("E-STORE-INVALID-TXN: {reason}")]
    InvalidTxn { reason: String },

    /// An argument other than a transaction is out of range.
    #[error("E-STORE-INVALID-ARGUMENT: {what}: {reason}")]
    InvalidArgument { what: &'static str, reason: String },

    /// A key read from etcd is not UTF-8; Allot writes only UTF-8 keys, so
    /// something else wrote under the watched or ranged prefix.
    #[error("E-STORE-INVALID-KEY: key {key:?} read from etcd at {endpoints} is not UTF-8")]
    InvalidKey { key: String, endpoints: String },

    /// The embedded store's database file failed (I/O, a full disk, another
    /// process holding it).
    #[error("E-STORE-EMBEDDED: {operation} on the embedded store at {path} failed")]
    Embedded {
        path: PathBuf,
        operation: &'static str,
        #[source]
        source: Arc<redb::Error>,
    },

    /// The embedded store's directory could not be prepared.
    #[error("E-STORE-IO: {operation} {path} failed")]
    Io {
        path: PathBuf,
        operation: &'static str,
        #[source]
        source: Arc<std::io::Error>,
    },

    /// The embedded store's database holds something this version does not
    /// understand.
    #[error("E-STORE-CORRUPT: the embedded store at {path} is not usable: {detail}")]
    Corrupt { path: PathBuf, detail: String },

    /// The embedded store was closed (dropped) while the operation waited.
    #[error("E-STORE-CLOSED: the embedded store at {path} is closed")]
    Closed { path: PathBuf },
}

impl StoreError {
    /// Whether the operation may succeed if simply tried again later (etcd was
    /// unreachable). An [`Indeterminate`](Self::Indeterminate) write is not
    /// retryable as is: read first.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }

    pub(crate) fn embedded(path: &std::path::Path, operation: &'static str, source: impl Into<redb::Error>) -> Self {
        StoreError::Embedded { path: path.to_owned(), operation, source: Arc::new(source.into()) }
    }
}
