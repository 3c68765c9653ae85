//! The embedded store's writer thread: group commit of queued write requests.
//!
//! One thread owns all writes. It waits for a request, takes every other
//! request already queued (up to `max_batch`), and applies them one after
//! another inside ONE redb write transaction: each sees the effects of those
//! before it, and each gets its own outcome (success or failure, its own
//! revision). Then it commits once (one fsync), publishes the batch's watch
//! events, and only then answers the callers. While it commits, new requests
//! queue up and form the next batch, so the batch size follows the load.
//!
//! Each transaction is all-or-nothing within the batch: it is checked
//! completely (compares, lease existence) before its first write. If redb
//! itself fails (I/O, a full disk), nothing of the batch is committed and every
//! caller in it gets the error.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use redb::{Database, MultimapTable, ReadableTable, Table};
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::StoreError;
use crate::types::{EventKind, KeyValue, Lease, LeaseId, Op, OpResult, Revision, Txn, TxnResult, WatchEvent};

use super::tables::{self, Record};
use super::{RedbContext, Shared, lock};

/// A caller waiting for the outcome of its request.
#[derive(Debug)]
pub(super) struct Reply<T> {
    sender: oneshot::Sender<Result<T, StoreError>>,
    outcome: Option<Result<T, StoreError>>,
}

impl<T> Reply<T> {
    pub(super) fn new(sender: oneshot::Sender<Result<T, StoreError>>) -> Self {
        Reply { sender, outcome: None }
    }

    fn set(&mut self, outcome: Result<T, StoreError>) {
        self.outcome = Some(outcome);
    }

    /// Sends the outcome, or `error` when the batch failed.
    fn send(self, batch_error: Option<&StoreError>) {
        let outcome = match (batch_error, self.outcome) {
            (Some(error), _) => Err(error.clone()),
            (None, Some(outcome)) => outcome,
            // `apply` sets an outcome for every request of a batch that committed.
            (None, None) => Err(StoreError::InvalidTxn { reason: "the writer did not evaluate it".to_owned() }),
        };
        // The caller may have given up waiting; then no one needs the answer.
        let _ = self.sender.send(outcome);
    }
}

/// A write for the writer thread.
#[derive(Debug)]
pub(super) enum WriteRequest {
    Txn {
        txn: Txn,
        reply: Reply<TxnResult>,
    },
    GrantLease {
        seconds: u64,
        reply: Reply<Lease>,
    },
    /// Revokes a lease. With `only_if_expired`, only if its deadline has passed
    /// (a keep-alive may have moved it since the expiry task looked); the
    /// outcome says whether it was revoked.
    RevokeLease {
        lease: LeaseId,
        only_if_expired: bool,
        reply: Reply<bool>,
    },
}

impl WriteRequest {
    fn send(self, batch_error: Option<&StoreError>) {
        match self {
            WriteRequest::Txn { reply, .. } => reply.send(batch_error),
            WriteRequest::GrantLease { reply, .. } => reply.send(batch_error),
            WriteRequest::RevokeLease { reply, .. } => reply.send(batch_error),
        }
    }
}

/// The writer thread's state: the last committed revision and lease id.
pub(super) struct Writer {
    pub(super) db: Arc<Database>,
    pub(super) shared: Arc<Shared>,
    pub(super) revision_sender: watch::Sender<Revision>,
    pub(super) revision: Revision,
    pub(super) next_lease_id: i64,
    pub(super) max_batch: usize,
}

/// What a batch changed, to publish once it is committed.
struct BatchState {
    revision: Revision,
    next_lease_id: i64,
    events: Vec<WatchEvent>,
    granted: Vec<(LeaseId, Duration)>,
    revoked: Vec<LeaseId>,
    /// Whether anything was written; a batch of reads and failed compares
    /// commits nothing and costs no fsync.
    dirty: bool,
}

struct Tables<'txn> {
    kv: Table<'txn, &'static str, Record>,
    meta: Table<'txn, &'static str, u64>,
    leases: Table<'txn, i64, u64>,
    lease_keys: MultimapTable<'txn, i64, &'static str>,
}

impl Writer {
    /// Applies batches until every sender is gone.
    pub(super) fn run(mut self, mut queue: mpsc::Receiver<WriteRequest>) {
        let mut batch = Vec::with_capacity(self.max_batch);
        while let Some(first) = queue.blocking_recv() {
            batch.push(first);
            while batch.len() < self.max_batch {
                match queue.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
            self.commit_batch(&mut batch);
        }
    }

    fn commit_batch(&mut self, batch: &mut Vec<WriteRequest>) {
        let mut state = BatchState {
            revision: self.revision,
            next_lease_id: self.next_lease_id,
            events: Vec::new(),
            granted: Vec::new(),
            revoked: Vec::new(),
            dirty: false,
        };
        match self.apply_batch(batch, &mut state) {
            Ok(()) => {
                self.revision = state.revision;
                self.next_lease_id = state.next_lease_id;
                let shared = &self.shared;
                // Granted before revoked: a lease granted and revoked in one batch ends with no clock.
                shared.leases.granted(&state.granted, Instant::now());
                shared.leases.revoked(&state.revoked);
                lock(&shared.history).publish(state.revision, std::mem::take(&mut state.events));
                self.revision_sender.send_replace(state.revision);
                let size = batch.len() as u64;
                shared.requests_applied.fetch_add(size, Ordering::Relaxed);
                if state.dirty {
                    shared.commits.fetch_add(1, Ordering::Relaxed);
                }
                shared.largest_batch.fetch_max(size, Ordering::Relaxed);
                for request in batch.drain(..) {
                    request.send(None);
                }
            }
            Err(error) => {
                tracing::error!(dir = %self.shared.dir.display(), %error, requests = batch.len(), "a write batch failed");
                self.shared.leases.unclaim(&state.revoked);
                for request in batch.drain(..) {
                    request.send(Some(&error));
                }
            }
        }
    }

    /// Applies every request inside one write transaction and commits it.
    fn apply_batch(&self, batch: &mut [WriteRequest], state: &mut BatchState) -> Result<(), StoreError> {
        let dir = self.shared.dir.as_path();
        let transaction = self.db.begin_write().context(dir, "begin_write")?;
        {
            let mut tables = Tables {
                kv: transaction.open_table(tables::KV).context(dir, "open_table")?,
                meta: transaction.open_table(tables::META).context(dir, "open_table")?,
                leases: transaction.open_table(tables::LEASES).context(dir, "open_table")?,
                lease_keys: transaction.open_multimap_table(tables::LEASE_KEYS).context(dir, "open_table")?,
            };
            let now = Instant::now();
            for request in batch.iter_mut() {
                self.apply(&mut tables, state, request, now).context(dir, "write")?;
            }
            if state.dirty {
                tables.meta.insert(tables::META_REVISION, state.revision.get()).context(dir, "write")?;
                let next_lease_id = state.next_lease_id.unsigned_abs();
                tables.meta.insert(tables::META_NEXT_LEASE_ID, next_lease_id).context(dir, "write")?;
            }
        }
        if state.dirty {
            transaction.commit().context(dir, "commit")?;
        } else {
            transaction.abort().context(dir, "abort")?;
        }
        Ok(())
    }

    fn apply(
        &self,
        tables: &mut Tables<'_>,
        state: &mut BatchState,
        request: &mut WriteRequest,
        now: Instant,
    ) -> Result<(), redb::Error> {
        match request {
            WriteRequest::Txn { txn, reply } => reply.set(apply_txn(tables, state, txn)?),
            WriteRequest::GrantLease { seconds, reply } => {
                let lease = LeaseId::new(state.next_lease_id);
                state.next_lease_id = state.next_lease_id.saturating_add(1);
                tables.leases.insert(lease.get(), *seconds)?;
                let ttl = Duration::from_secs(*seconds);
                state.granted.push((lease, ttl));
                state.dirty = true;
                reply.set(Ok(Lease { id: lease, ttl }));
            }
            WriteRequest::RevokeLease { lease, only_if_expired, reply } => {
                let lease = *lease;
                if tables.leases.get(lease.get())?.is_none() {
                    reply.set(Err(StoreError::LeaseNotFound { lease }));
                } else if !self.shared.leases.claim(lease, *only_if_expired, now) {
                    reply.set(Ok(false));
                } else {
                    revoke(tables, state, lease)?;
                    reply.set(Ok(true));
                }
            }
        }
        Ok(())
    }
}

/// Evaluates and applies one transaction. The inner error is the caller's (a
/// lease that does not exist); the outer one fails the batch.
fn apply_txn(
    tables: &mut Tables<'_>,
    state: &mut BatchState,
    txn: &Txn,
) -> Result<Result<TxnResult, StoreError>, redb::Error> {
    let mut succeeded = true;
    for compare in &txn.compares {
        let record = tables.kv.get(compare.key.as_str())?;
        let holds = match &record {
            Some(record) => {
                let (_, mod_revision, _, value) = record.value();
                compare.holds(Some((value, Revision::new(mod_revision))))
            }
            None => compare.holds(None),
        };
        if !holds {
            succeeded = false;
            break;
        }
    }
    let ops = if succeeded { &txn.success } else { &txn.failure };

    // Everything that can refuse the transaction is checked before its first write.
    for op in ops {
        if let Op::Put { lease: Some(lease), .. } = op
            && tables.leases.get(lease.get())?.is_none()
        {
            return Ok(Err(StoreError::LeaseNotFound { lease: *lease }));
        }
    }

    let revision = state.revision.next();
    let mut changed = false;
    let mut results = Vec::with_capacity(ops.len());
    for op in ops {
        match op {
            Op::Get { key } => {
                let kv = tables.kv.get(key.as_str())?.map(|record| tables::key_value(key, record.value()));
                results.push(OpResult::Get(kv));
            }
            Op::Put { key, value, lease } => {
                put(tables, state, key, value, *lease, revision)?;
                changed = true;
                results.push(OpResult::Put);
            }
            Op::Delete { key } => {
                let deleted = u64::from(delete(tables, state, key, revision)?);
                changed |= deleted > 0;
                results.push(OpResult::Delete { deleted });
            }
            Op::DeletePrefix { prefix } => {
                let mut deleted = 0;
                for key in keys_with_prefix(&tables.kv, prefix)? {
                    deleted += u64::from(delete(tables, state, &key, revision)?);
                }
                changed |= deleted > 0;
                results.push(OpResult::Delete { deleted });
            }
        }
    }
    if changed {
        state.revision = revision;
        state.dirty = true;
    }
    Ok(Ok(TxnResult { succeeded, revision: state.revision, results }))
}

fn put(
    tables: &mut Tables<'_>,
    state: &mut BatchState,
    key: &str,
    value: &[u8],
    lease: Option<LeaseId>,
    revision: Revision,
) -> Result<(), redb::Error> {
    let previous = tables.kv.get(key)?.map(|record| {
        let (create_revision, _, lease, _) = record.value();
        (create_revision, lease)
    });
    let create_revision = previous.map_or(revision.get(), |(create_revision, _)| create_revision);
    let old_lease = previous.map_or(0, |(_, lease)| lease);
    let new_lease = lease.map_or(0, LeaseId::get);
    if old_lease != new_lease {
        if old_lease != 0 {
            tables.lease_keys.remove(old_lease, key)?;
        }
        if new_lease != 0 {
            tables.lease_keys.insert(new_lease, key)?;
        }
    }
    tables.kv.insert(key, (create_revision, revision.get(), new_lease, value))?;
    state.events.push(WatchEvent {
        kind: EventKind::Put,
        kv: KeyValue {
            key: key.to_owned(),
            value: value.to_vec(),
            create_revision: Revision::new(create_revision),
            mod_revision: revision,
            lease,
        },
        revision,
    });
    Ok(())
}

/// Deletes a key if it exists, detaching it from its lease. Returns whether it existed.
fn delete(tables: &mut Tables<'_>, state: &mut BatchState, key: &str, revision: Revision) -> Result<bool, redb::Error> {
    let lease = match tables.kv.remove(key)? {
        Some(record) => record.value().2,
        None => return Ok(false),
    };
    if lease != 0 {
        tables.lease_keys.remove(lease, key)?;
    }
    state.events.push(WatchEvent::deleted(key.to_owned(), revision));
    Ok(true)
}

fn keys_with_prefix(kv: &Table<'_, &'static str, Record>, prefix: &str) -> Result<Vec<String>, redb::Error> {
    let mut keys = Vec::new();
    for entry in kv.range::<&str>(prefix..)? {
        let (key, _) = entry?;
        let key = key.value();
        if !key.starts_with(prefix) {
            break;
        }
        keys.push(key.to_owned());
    }
    Ok(keys)
}

/// Deletes a lease and its keys (in key order, as etcd does), at one revision
/// if it had any.
fn revoke(tables: &mut Tables<'_>, state: &mut BatchState, lease: LeaseId) -> Result<(), redb::Error> {
    let mut keys = Vec::new();
    for key in tables.lease_keys.remove_all(lease.get())? {
        keys.push(key?.value().to_owned());
    }
    let revision = state.revision.next();
    let mut changed = false;
    for key in keys {
        if tables.kv.remove(key.as_str())?.is_some() {
            state.events.push(WatchEvent::deleted(key, revision));
            changed = true;
        }
    }
    tables.leases.remove(lease.get())?;
    if changed {
        state.revision = revision;
    }
    state.revoked.push(lease);
    state.dirty = true;
    Ok(())
}
