//! The embedded store's redb tables, their record format, and opening a database.
//!
//! | table | key | value |
//! |---|---|---|
//! | `kv` | the key (`&str`) | `(create_revision: u64, mod_revision: u64, lease: i64, value: &[u8])`; lease 0 is none |
//! | `meta` | `"format"`, `"revision"`, `"next_lease_id"` | `u64` |
//! | `leases` | lease id (`i64`) | granted TTL in seconds (`u64`) |
//! | `lease_keys` (multimap) | lease id (`i64`) | each key attached to the lease (`&str`) |
//!
//! Lease deadlines are not stored: they live in memory, and a lease found in
//! the table at open belongs to a previous process and is expired.

use std::path::Path;
use std::sync::Arc;

use redb::{Database, MultimapTableDefinition, ReadableTable, ReadableTableMetadata, TableDefinition};

use crate::error::StoreError;
use crate::types::{KeyValue, LeaseId, Revision};

use super::RedbContext;

/// `(create_revision, mod_revision, lease, value)`.
pub(super) type Record = (u64, u64, i64, &'static [u8]);

pub(super) const KV: TableDefinition<&str, Record> = TableDefinition::new("kv");
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub(super) const LEASES: TableDefinition<i64, u64> = TableDefinition::new("leases");
pub(super) const LEASE_KEYS: MultimapTableDefinition<i64, &str> = MultimapTableDefinition::new("lease_keys");

const META_FORMAT: &str = "format";
pub(super) const META_REVISION: &str = "revision";
pub(super) const META_NEXT_LEASE_ID: &str = "next_lease_id";

/// The record format this code reads and writes.
const FORMAT: u64 = 1;

/// The revision of a new store: etcd also starts at 1, so the first change of
/// either backend is revision 2, and 0 stays free to mean "absent".
const FIRST_REVISION: u64 = 1;

/// Turns a stored record into the store's key-value.
pub(super) fn key_value(key: &str, (create_revision, mod_revision, lease, value): (u64, u64, i64, &[u8])) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: value.to_vec(),
        create_revision: Revision::new(create_revision),
        mod_revision: Revision::new(mod_revision),
        lease: lease_from_record(lease),
    }
}

pub(super) fn lease_from_record(lease: i64) -> Option<LeaseId> {
    (lease != 0).then_some(LeaseId::new(lease))
}

/// The committed revision, as seen by a read transaction.
pub(super) fn read_revision(transaction: &redb::ReadTransaction, dir: &Path) -> Result<Revision, StoreError> {
    let meta = transaction.open_table(META).context(dir, "reading meta")?;
    let revision = meta.get(META_REVISION).context(dir, "reading meta")?;
    match revision {
        Some(revision) => Ok(Revision::new(revision.value())),
        None => Err(corrupt(dir, "the meta table has no revision")),
    }
}

fn corrupt(dir: &Path, detail: &str) -> StoreError {
    StoreError::Corrupt { path: dir.join(super::DATABASE_FILE), detail: detail.to_owned() }
}

/// A database just opened, after the previous process's leases were expired.
pub(super) struct Opened {
    pub(super) db: Database,
    pub(super) revision: Revision,
    pub(super) next_lease_id: i64,
    pub(super) expired_leases: usize,
    pub(super) deleted_keys: usize,
}

/// redb's page cache. Its default (1 GiB) would keep every page a broker's
/// start reads: the broker reads the whole store once and then keeps its state
/// in memory, so the cache serves little more than the writes' B-tree interior.
const CACHE_BYTES: usize = 64 << 20;

/// Opens or creates `dir/store.redb`, creates missing tables, checks the
/// format, and deletes the keys of every lease left by a previous process.
pub(super) fn open_database(dir: &Path) -> Result<Opened, StoreError> {
    std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
        path: dir.to_owned(),
        operation: "creating the store directory",
        source: Arc::new(source),
    })?;
    let path = dir.join(super::DATABASE_FILE);
    let path = path.as_path();
    let db = redb::Builder::new().set_cache_size(CACHE_BYTES).create(path).context(path, "open")?;

    let transaction = db.begin_write().context(path, "begin_write")?;
    let (revision, next_lease_id, expired_leases, deleted_keys) = {
        let mut meta = transaction.open_table(META).context(path, "open")?;
        let mut kv = transaction.open_table(KV).context(path, "open")?;
        let mut leases = transaction.open_table(LEASES).context(path, "open")?;
        let mut lease_keys = transaction.open_multimap_table(LEASE_KEYS).context(path, "open")?;

        let format = meta.get(META_FORMAT).context(path, "open")?.map(|format| format.value());
        match format {
            None => {
                if kv.len().context(path, "open")? > 0 {
                    return Err(corrupt(dir, "keys are stored but the meta table has no format"));
                }
                meta.insert(META_FORMAT, FORMAT).context(path, "open")?;
                meta.insert(META_REVISION, FIRST_REVISION).context(path, "open")?;
                meta.insert(META_NEXT_LEASE_ID, 1).context(path, "open")?;
            }
            Some(FORMAT) => {}
            Some(other) => {
                return Err(corrupt(dir, &format!("format {other} is not {FORMAT}, the only one this version reads")));
            }
        }
        let read_meta = |name: &str| -> Result<u64, StoreError> {
            match meta.get(name).context(path, "open")? {
                Some(value) => Ok(value.value()),
                None => Err(corrupt(dir, &format!("the meta table has no {name}"))),
            }
        };
        let mut revision = read_meta(META_REVISION)?;
        let next_lease_id = i64::try_from(read_meta(META_NEXT_LEASE_ID)?)
            .map_err(|_| corrupt(dir, "next_lease_id does not fit a lease id"))?;

        // Every lease still stored belongs to a process that is gone: expire it.
        let mut expired = Vec::new();
        for entry in leases.iter().context(path, "expiring old leases")? {
            let (lease, _ttl) = entry.context(path, "expiring old leases")?;
            expired.push(lease.value());
        }
        let mut deleted_keys = 0;
        for lease in &expired {
            let mut keys = Vec::new();
            for key in lease_keys.remove_all(lease).context(path, "expiring old leases")? {
                keys.push(key.context(path, "expiring old leases")?.value().to_owned());
            }
            for key in keys {
                if kv.remove(key.as_str()).context(path, "expiring old leases")?.is_some() {
                    deleted_keys += 1;
                }
            }
            leases.remove(lease).context(path, "expiring old leases")?;
        }
        if deleted_keys > 0 {
            revision += 1;
            meta.insert(META_REVISION, revision).context(path, "expiring old leases")?;
        }
        (Revision::new(revision), next_lease_id, expired.len(), deleted_keys)
    };
    transaction.commit().context(path, "commit")?;
    Ok(Opened { db, revision, next_lease_id, expired_leases, deleted_keys })
}
