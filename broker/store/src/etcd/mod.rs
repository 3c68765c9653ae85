//! `EtcdStore`: the `Store` on etcd v3, through `etcd-client`.
//!
//! Every `Txn` is one etcd transaction, so a multi-key write is never half
//! applied. Ranges are paginated at one revision (a consistent snapshot of any
//! size). Watches re-establish themselves after a broken connection from the
//! revision after the last event they delivered. Transient failures are retried
//! with backoff ([`retry`]); writes only when they cannot have been applied.

mod convert;
mod retry;
mod watch;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{ConnectOptions, GetOptions, LeaseGrantOptions};

use crate::error::StoreError;
use crate::store::Store;
use crate::types::{KeyValue, Lease, LeaseId, RangeResult, Revision, Txn, TxnResult, prefix_end};
use crate::watch::WatchStream;

pub use retry::RetryPolicy;
use retry::{Call, is_compacted, is_lease_not_found, is_too_large};

/// Where etcd is and how patiently to talk to it.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// Client URLs, like `http://127.0.0.1:2379`; requests are balanced over them.
    pub endpoints: Vec<String>,
    /// How long to wait for a TCP connection to an endpoint.
    pub connect_timeout: Duration,
    /// How long one request may take before it counts as failed.
    pub request_timeout: Duration,
    pub retry: RetryPolicy,
    /// Keys in the first page of a range; a range of any size is read page by
    /// page at one revision, later pages sized to carry about
    /// [`RANGE_PAGE_BYTES`].
    pub range_page_size: usize,
}

impl EtcdConfig {
    /// Defaults for the given endpoints: 2 s to connect, 5 s per request, the
    /// default retry policy, 1,000 keys per range page.
    pub fn new(endpoints: impl IntoIterator<Item = impl Into<String>>) -> Self {
        EtcdConfig {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
            retry: RetryPolicy::default(),
            range_page_size: 1000,
        }
    }
}

/// The [`Store`] on an etcd cluster. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct EtcdStore {
    client: etcd_client::Client,
    config: Arc<EtcdConfig>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore").field("config", &self.config).finish_non_exhaustive()
    }
}

/// How many times a range starts over when etcd compacts the revision it was
/// reading between two pages.
const RANGE_RESTARTS: u32 = 3;

/// About how many bytes of keys and values a range page after the first asks
/// for. Fewer, larger pages matter on etcd 3.4 (Debian 12's): it walks its
/// index from a page's first key to the range's end on every page, so 1,000-key
/// pages over 100,000 allocations cost 100 walks of up to 100,000 keys (over a
/// second of a broker's start). Pages are still bounded, in etcd's memory and
/// in the time one request takes.
pub const RANGE_PAGE_BYTES: usize = 8 << 20;

/// The most keys one range page asks for.
const RANGE_PAGE_MAX_KEYS: i64 = 100_000;

/// The keys the next page asks for: as many as fit [`RANGE_PAGE_BYTES`] at
/// the sizes this page had, never fewer than `floor`.
fn next_page_size(keys: usize, bytes: usize, floor: i64) -> i64 {
    let per_key = (bytes / keys.max(1)).max(1);
    i64::try_from(RANGE_PAGE_BYTES / per_key).unwrap_or(i64::MAX).clamp(floor.max(1), RANGE_PAGE_MAX_KEYS.max(floor))
}

impl EtcdStore {
    /// Connects to etcd and checks that it answers (with the retry policy), so a
    /// wrong address fails here with [`StoreError::Unavailable`].
    pub async fn connect(config: EtcdConfig) -> Result<Self, StoreError> {
        if config.endpoints.is_empty() {
            return Err(StoreError::InvalidArgument { what: "etcd endpoints", reason: "none given".to_owned() });
        }
        let options = ConnectOptions::new()
            .with_connect_timeout(config.connect_timeout)
            .with_timeout(config.request_timeout)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_require_leader(true);
        let client = etcd_client::Client::connect(&config.endpoints, Some(options)).await.map_err(|source| {
            StoreError::Etcd { operation: "connect", endpoints: config.endpoints.join(","), source: Arc::new(source) }
        })?;
        let store = EtcdStore { client, config: Arc::new(config) };
        store.current_revision().await?;
        Ok(store)
    }

    /// The configuration this store was connected with.
    pub fn config(&self) -> &EtcdConfig {
        &self.config
    }

    fn endpoints(&self) -> String {
        self.config.endpoints.join(",")
    }

    /// One range at one revision, page by page. A page too large for one gRPC
    /// message is asked for again with half as many keys.
    async fn range_at_one_revision(&self, prefix: &str) -> Result<RangeResult, StoreError> {
        let (start, end) = range_bounds(prefix);
        let first_page = i64::try_from(self.config.range_page_size.max(1)).unwrap_or(i64::MAX);
        let mut page_size = first_page;
        let mut too_large = false;
        let mut kvs = Vec::new();
        let mut revision = 0;
        let mut from = start;
        loop {
            let options = GetOptions::new().with_range(end.clone()).with_limit(page_size).with_revision(revision);
            let key = from.clone();
            let page = self
                .call(Call::idempotent("range"), |client| {
                    let (key, options) = (key.clone(), options.clone());
                    async move { kv_client(&client).get(key, Some(options)).await }
                })
                .await;
            let response = match page {
                Err(error) if is_too_large(&error) && page_size > 1 => {
                    page_size /= 2;
                    too_large = true;
                    continue;
                }
                page => page?,
            };
            if revision == 0 {
                revision = self.header_revision("range", response.header())?;
            }
            let bytes: usize = response.kvs().iter().map(|kv| kv.key().len() + kv.value().len()).sum();
            for kv in response.kvs() {
                kvs.push(self.key_value("range", kv)?);
            }
            // A page that was too large never grows back.
            if !too_large {
                page_size = next_page_size(response.kvs().len(), bytes, first_page);
            }
            match (response.more(), response.kvs().last()) {
                (true, Some(last)) => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => break,
            }
        }
        Ok(RangeResult { kvs, revision: self.revision("range", revision)? })
    }
}

/// The largest response accepted from etcd (tonic's default is 4 MiB; a page
/// of large values, or a transaction's gets, may exceed it).
const MAX_RESPONSE_BYTES: usize = 256 << 20;

/// A KV client that accepts responses up to [`MAX_RESPONSE_BYTES`].
fn kv_client(client: &etcd_client::Client) -> etcd_client::KvClient {
    client.kv_client().max_decoding_message_size(MAX_RESPONSE_BYTES)
}

/// The first lease a transaction puts a key with.
fn first_lease(txn: &Txn) -> Option<LeaseId> {
    txn.success.iter().chain(&txn.failure).find_map(|op| match op {
        crate::types::Op::Put { lease, .. } => *lease,
        _ => None,
    })
}

/// etcd's `[key, range_end)` for a prefix; `"\0"` as `range_end` means "to the end".
fn range_bounds(prefix: &str) -> (Vec<u8>, Vec<u8>) {
    let start = if prefix.is_empty() { vec![0] } else { prefix.as_bytes().to_vec() };
    let end = prefix_end(prefix.as_bytes()).unwrap_or_else(|| vec![0]);
    (start, end)
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let response = self
            .call(Call::idempotent("get"), |client| {
                let key = key.to_owned();
                async move { kv_client(&client).get(key, None).await }
            })
            .await?;
        response.kvs().first().map(|kv| self.key_value("get", kv)).transpose()
    }

    async fn range(&self, prefix: &str) -> Result<RangeResult, StoreError> {
        let mut restarts = 0;
        loop {
            match self.range_at_one_revision(prefix).await {
                Err(error) if is_compacted(&error) && restarts < RANGE_RESTARTS => {
                    restarts += 1;
                    tracing::debug!(prefix, restarts, "etcd compacted the revision of a paginated range; restarting");
                }
                result => return result,
            }
        }
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResult, StoreError> {
        txn.validate()?;
        let request = convert::txn_request(&txn);
        let response = self
            .call(Call::write("txn"), |client| {
                let request = request.clone();
                async move { kv_client(&client).txn(request).await }
            })
            .await
            .map_err(|error| match (error, first_lease(&txn)) {
                // etcd does not say which lease; name the first one the transaction uses.
                (StoreError::Etcd { source, .. }, Some(lease)) if is_lease_not_found(&source) => {
                    StoreError::LeaseNotFound { lease }
                }
                (error, _) => error,
            })?;
        self.txn_result(&response)
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream, StoreError> {
        watch::start(self.clone(), prefix.to_owned(), from).await
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<Lease, StoreError> {
        let seconds = crate::types::ttl_seconds(ttl)?;
        let response = self
            .call(Call::idempotent("grant_lease"), |mut client| async move {
                client.lease_grant(seconds, None::<LeaseGrantOptions>).await
            })
            .await?;
        let ttl = u64::try_from(response.ttl()).map_err(|_| StoreError::Protocol {
            operation: "grant_lease",
            endpoints: self.endpoints(),
            detail: format!("a negative ttl {}", response.ttl()),
        })?;
        Ok(Lease { id: LeaseId::new(response.id()), ttl: Duration::from_secs(ttl) })
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        // etcd-client's keep_alive sends one keep-alive and fails with "lease not
        // found" when the answer has no TTL left; that one round trip is all we need.
        self.call(Call::lease("keep_alive", lease), |mut client| async move {
            client.lease_keep_alive(lease.get()).await.map(|_| ())
        })
        .await
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        let mut attempts = 0;
        let result = self
            .call(Call::lease("revoke_lease", lease), |mut client| {
                attempts += 1;
                async move { client.lease_revoke(lease.get()).await.map(|_| ()) }
            })
            .await;
        match result {
            // An earlier attempt revoked it and its answer was lost.
            Err(StoreError::LeaseNotFound { .. }) if attempts > 1 => Ok(()),
            result => result,
        }
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        let response = self
            .call(Call::idempotent("current_revision"), |mut client| async move {
                // A count of an impossible key range costs etcd nothing and carries the header.
                client.get(vec![0], Some(GetOptions::new().with_count_only())).await
            })
            .await?;
        let revision = self.header_revision("current_revision", response.header())?;
        self.revision("current_revision", revision)
    }
}

#[cfg(test)]
mod paging_tests {
    use super::*;

    #[test]
    fn pages_grow_to_the_byte_budget_and_never_shrink_below_the_first() {
        // 1,000 keys of 600 bytes: about 14,000 keys make the budget.
        assert_eq!(next_page_size(1_000, 600_000, 1_000), (RANGE_PAGE_BYTES / 600) as i64);
        // Large values: never fewer keys than the first page asked for.
        assert_eq!(next_page_size(1_000, 40 << 20, 1_000), 1_000);
        // Tiny values: bounded.
        assert_eq!(next_page_size(1_000, 10_000, 1_000), RANGE_PAGE_MAX_KEYS);
        // An empty page (the range's end) asks for something sane.
        assert!(next_page_size(0, 0, 500) >= 500);
    }
}
