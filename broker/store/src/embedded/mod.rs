//! `EmbeddedStore`: the `Store` on a redb database in a directory, for one process.
//!
//! Layout on disk (`<dir>/store.redb`), see [`tables`]: a table of key →
//! record (create revision, mod revision, lease, value), a meta table (format
//! version, current revision, next lease id), a table of leases and an index of
//! each lease's keys.
//!
//! Writes go through one writer thread ([`writer`]) that applies every queued
//! request inside one redb write transaction and commits (fsyncs) once: group
//! commit. Watches replay from a bounded in-memory history ([`history`]).
//! Lease clocks live in memory ([`leases`]); a lease from a previous process is
//! treated as expired at open, and its keys are deleted then.

mod history;
mod leases;
mod tables;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redb::{Database, ReadableDatabase};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::AbortHandle;

use crate::error::StoreError;
use crate::store::Store;
use crate::types::{KeyValue, Lease, LeaseId, RangeResult, Revision, Txn, TxnResult};
use crate::watch::WatchStream;

use history::History;
use leases::LeaseClocks;
use writer::{Reply, WriteRequest};

/// The database file inside the store's directory.
pub const DATABASE_FILE: &str = "store.redb";

/// Tuning for an [`EmbeddedStore`].
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// The most write requests applied in one redb transaction (one fsync).
    pub max_batch: usize,
    /// How many recent watch events are kept for watchers to replay. A watcher
    /// that falls further behind, or asks for older revisions, gets
    /// [`StoreError::Compacted`] and its stream ends. The newest revision is
    /// always kept whole, however many events it has.
    pub watch_history: usize,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions { max_batch: 1024, watch_history: 65_536 }
    }
}

/// How many write requests the writer has applied, and in how many commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriteStats {
    pub requests: u64,
    pub commits: u64,
    pub largest_batch: u64,
}

/// The [`Store`] on a redb database in a directory.
///
/// Single-process: redb locks the file, and leases and watch history live in
/// this process's memory. Cloning shares the store; the writer thread stops
/// when the last clone is dropped (after finishing its batch), which releases
/// the file so it can be opened again.
#[derive(Debug, Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

/// State shared by the async front end, the writer thread, the lease expiry
/// task and the watcher tasks.
#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    history: Mutex<History>,
    /// The latest committed revision; watchers wait on it.
    revisions: watch::Receiver<Revision>,
    leases: LeaseClocks,
    requests_applied: AtomicU64,
    commits: AtomicU64,
    largest_batch: AtomicU64,
}

#[derive(Debug)]
struct Inner {
    shared: Arc<Shared>,
    db: Arc<Database>,
    requests: Option<mpsc::Sender<WriteRequest>>,
    writer: Option<JoinHandle<()>>,
    expiry: AbortHandle,
}

/// How many write requests may wait for the writer before senders wait too.
const REQUEST_QUEUE: usize = 4096;

impl EmbeddedStore {
    /// Opens (creating if needed) the store in `dir` with default options.
    pub async fn open(dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        EmbeddedStore::open_with(dir, EmbeddedOptions::default()).await
    }

    /// Opens (creating if needed) the store in `dir`.
    ///
    /// Leases left by a previous process are treated as expired: their keys are
    /// deleted here, in one revision, before the store is returned. Must be
    /// called inside a tokio runtime (it starts the lease expiry task).
    pub async fn open_with(dir: impl AsRef<Path>, options: EmbeddedOptions) -> Result<Self, StoreError> {
        let dir = dir.as_ref().to_owned();
        let opening = dir.clone();
        let opened = blocking(&dir, move || tables::open_database(&opening)).await??;
        if opened.expired_leases > 0 {
            tracing::info!(
                dir = %dir.display(),
                leases = opened.expired_leases,
                keys = opened.deleted_keys,
                "expired the leases of a previous process and deleted their keys"
            );
        }
        let db = Arc::new(opened.db);
        let (revision_sender, revisions) = watch::channel(opened.revision);
        let shared = Arc::new(Shared {
            dir: dir.clone(),
            history: Mutex::new(History::new(options.watch_history, opened.revision)),
            revisions,
            leases: LeaseClocks::default(),
            requests_applied: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            largest_batch: AtomicU64::new(0),
        });
        let (requests, queue) = mpsc::channel(REQUEST_QUEUE);
        let writer = writer::Writer {
            db: Arc::clone(&db),
            shared: Arc::clone(&shared),
            revision_sender,
            revision: opened.revision,
            next_lease_id: opened.next_lease_id,
            max_batch: options.max_batch.max(1),
        };
        let writer = std::thread::Builder::new()
            .name("allot-store-writer".to_owned())
            .spawn(move || writer.run(queue))
            .map_err(|source| StoreError::Io {
                path: dir.clone(),
                operation: "starting the writer thread for",
                source: Arc::new(source),
            })?;
        let expiry = tokio::spawn(leases::expire(Arc::clone(&shared), requests.downgrade())).abort_handle();
        Ok(EmbeddedStore {
            inner: Arc::new(Inner { shared, db, requests: Some(requests), writer: Some(writer), expiry }),
        })
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.shared.dir
    }

    /// Counters of the group-commit writer.
    pub fn write_stats(&self) -> WriteStats {
        let shared = &self.inner.shared;
        WriteStats {
            requests: shared.requests_applied.load(Ordering::Relaxed),
            commits: shared.commits.load(Ordering::Relaxed),
            largest_batch: shared.largest_batch.load(Ordering::Relaxed),
        }
    }

    fn closed(&self) -> StoreError {
        StoreError::Closed { path: self.inner.shared.dir.clone() }
    }

    /// Queues a request for the writer and waits for its answer.
    async fn submit<T>(
        &self,
        request: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> WriteRequest,
    ) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        let requests = self.inner.requests.as_ref().ok_or_else(|| self.closed())?;
        requests.send(request(reply)).await.map_err(|_| self.closed())?;
        answer.await.map_err(|_| self.closed())?
    }

    /// Runs a read against a fresh redb read transaction, off the async threads.
    async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&redb::ReadTransaction, &Path) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = Arc::clone(&self.inner.db);
        let dir = self.inner.shared.dir.clone();
        blocking(&self.inner.shared.dir, move || {
            let transaction = db.begin_read().context(&dir, "begin_read")?;
            read(&transaction, &dir)
        })
        .await?
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let key = key.to_owned();
        self.read(move |transaction, dir| {
            let kv = transaction.open_table(tables::KV).context(dir, "get")?;
            let record = kv.get(key.as_str()).context(dir, "get")?;
            Ok(record.map(|record| tables::key_value(&key, record.value())))
        })
        .await
    }

    async fn range(&self, prefix: &str) -> Result<RangeResult, StoreError> {
        let prefix = prefix.to_owned();
        self.read(move |transaction, dir| {
            let revision = tables::read_revision(transaction, dir)?;
            let kv = transaction.open_table(tables::KV).context(dir, "range")?;
            let mut kvs = Vec::new();
            for entry in kv.range::<&str>(prefix.as_str()..).context(dir, "range")? {
                let (key, record) = entry.context(dir, "range")?;
                let key = key.value();
                if !key.starts_with(prefix.as_str()) {
                    break;
                }
                kvs.push(tables::key_value(key, record.value()));
            }
            Ok(RangeResult { kvs, revision })
        })
        .await
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResult, StoreError> {
        txn.validate()?;
        self.submit(|reply| WriteRequest::Txn { txn, reply: Reply::new(reply) }).await
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream, StoreError> {
        let shared = &self.inner.shared;
        let from = {
            let history = lock(&shared.history);
            let from = if from == Revision::ZERO { history.latest().next() } else { from };
            history.check(from)?;
            from
        };
        let (sender, pending) = WatchStream::channel();
        let producer = tokio::spawn(history::run_watcher(
            Arc::clone(shared),
            prefix.to_owned(),
            from,
            sender,
            shared.revisions.clone(),
        ));
        Ok(pending.attach(producer.abort_handle()))
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<Lease, StoreError> {
        let seconds = crate::types::ttl_seconds(ttl)?.unsigned_abs();
        self.submit(|reply| WriteRequest::GrantLease { seconds, reply: Reply::new(reply) }).await
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.inner.shared.leases.keep_alive(lease, Instant::now())
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.submit(|reply| WriteRequest::RevokeLease { lease, only_if_expired: false, reply: Reply::new(reply) })
            .await
            .map(|_| ())
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        Ok(*self.inner.shared.revisions.borrow())
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.expiry.abort();
        // Closing the queue lets the writer finish what is queued and exit; joining
        // it releases the database file before the store counts as closed.
        drop(self.requests.take());
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            tracing::error!(dir = %self.shared.dir.display(), "the embedded store's writer thread panicked");
        }
    }
}

/// Locks a mutex whose data stays consistent even if a holder panicked (every
/// critical section here is a few plain field updates).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Attaches the store's path and the operation to a redb error.
trait RedbContext<T> {
    fn context(self, path: &Path, operation: &'static str) -> Result<T, StoreError>;
}

impl<T, E: Into<redb::Error>> RedbContext<T> for Result<T, E> {
    fn context(self, path: &Path, operation: &'static str) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::embedded(path, operation, source))
    }
}

/// Runs blocking work (redb reads, opening) off the async worker threads.
async fn blocking<T: Send + 'static>(dir: &Path, work: impl FnOnce() -> T + Send + 'static) -> Result<T, StoreError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => Ok(value),
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        Err(_) => Err(StoreError::Closed { path: dir.to_owned() }),
    }
}
