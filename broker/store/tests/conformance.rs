//! The store conformance suite: one set of cases, run against a real etcd and the embedded store.
//!
//! Each case is an `async fn(&dyn Store)`; the `conformance!` macro runs every
//! case once per backend (`etcd::case` and `embedded::case`). Each etcd case
//! starts its own etcd on free loopback ports; each embedded case opens a store
//! in its own temporary directory. Backend-specific behaviour (reopening the
//! embedded store, etcd outages and compaction) follows the shared cases.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use allot_store::testing::EtcdHarness;
use allot_store::{
    Compare, CompareOp, EmbeddedOptions, EmbeddedStore, EventKind, KeyValue, Lease, MAX_TXN_OPS, Op, OpResult,
    Revision, Store, StoreError, Txn, TxnResult, WatchEvent, WatchStream,
};
use tempfile::TempDir;
use tokio::time::timeout;

/// How long a test waits for something that should happen at once.
const PATIENCE: Duration = Duration::from_secs(10);

/// A store under test and what keeps it alive.
struct Backend {
    store: Arc<dyn Store>,
    _etcd: Option<EtcdHarness>,
    _dir: Option<TempDir>,
}

async fn etcd_backend() -> Backend {
    let etcd = EtcdHarness::start().await;
    let mut config = etcd.config();
    // Small pages, so that the large-range case reads many of them.
    config.range_page_size = 500;
    let store = allot_store::EtcdStore::connect(config).await.expect("connect to the test etcd");
    Backend { store: Arc::new(store), _etcd: Some(etcd), _dir: None }
}

async fn embedded_backend() -> Backend {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = EmbeddedStore::open(dir.path()).await.expect("open the embedded store");
    Backend { store: Arc::new(store), _etcd: None, _dir: Some(dir) }
}

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod etcd {
            use std::sync::Arc;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let backend = super::etcd_backend().await;
                    super::$case(Arc::clone(&backend.store)).await;
                }
            )*
        }
        mod embedded {
            use std::sync::Arc;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let backend = super::embedded_backend().await;
                    super::$case(Arc::clone(&backend.store)).await;
                }
            )*
        }
    };
}

conformance!(
    put_get_and_range,
    revisions_increase_and_track_create_and_mod,
    cas_success_and_failure_leave_exact_state,
    multi_op_txns_are_all_or_nothing,
    delete_and_delete_prefix,
    watch_from_a_revision_delivers_every_event_in_order,
    watch_from_now_sees_only_later_changes,
    lease_expiry_deletes_keys_with_delete_events,
    revoke_deletes_keys_at_once,
    keep_alive_keeps_keys_past_the_ttl,
    concurrent_cas_increments_lose_no_update,
    ten_thousand_keys_range_at_one_revision,
    large_values_range_and_replay,
);

// ---- helpers ----

async fn put(store: &dyn Store, key: &str, value: &str) -> TxnResult {
    store.txn(Txn::new().then([Op::put(key, value)])).await.expect("put")
}

async fn get(store: &dyn Store, key: &str) -> Option<KeyValue> {
    store.get(key).await.expect("get")
}

async fn range(store: &dyn Store, prefix: &str) -> allot_store::RangeResult {
    store.range(prefix).await.expect("range")
}

async fn revision(store: &dyn Store) -> Revision {
    store.current_revision().await.expect("current_revision")
}

fn keys(kvs: &[KeyValue]) -> Vec<&str> {
    kvs.iter().map(|kv| kv.key.as_str()).collect()
}

async fn next_event(watch: &mut WatchStream) -> WatchEvent {
    match timeout(PATIENCE, watch.next()).await {
        Ok(Some(Ok(event))) => event,
        Ok(Some(Err(error))) => panic!("the watch failed: {error:?}"),
        Ok(None) => panic!("the watch ended"),
        Err(_) => panic!("no watch event within {PATIENCE:?}"),
    }
}

/// `(kind, key, revision)`, what most watch assertions compare.
fn summary(event: &WatchEvent) -> (EventKind, String, u64) {
    (event.kind, event.kv.key.clone(), event.revision.get())
}

async fn grant(store: &dyn Store, seconds: u64) -> Lease {
    store.grant_lease(Duration::from_secs(seconds)).await.expect("grant_lease")
}

/// Waits until `key` is gone, returning how long it took.
async fn wait_until_absent(store: &dyn Store, key: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    while get(store, key).await.is_some() {
        assert!(started.elapsed() < limit, "{key} still exists after {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    started.elapsed()
}

// ---- shared cases ----

async fn put_get_and_range(store: Arc<dyn Store>) {
    let store = store.as_ref();
    put(store, "/t/a/2", "two").await;
    put(store, "/t/a/1", "one").await;
    put(store, "/t/b/1", "other").await;

    let kv = get(store, "/t/a/1").await.expect("/t/a/1 exists");
    assert_eq!(kv.value, b"one");
    assert_eq!(kv.lease, None);
    assert_eq!(get(store, "/t/a/3").await, None);

    let under_a = range(store, "/t/a/").await;
    assert_eq!(keys(&under_a.kvs), ["/t/a/1", "/t/a/2"], "sorted by key, only the prefix");
    assert_eq!(under_a.kvs[1].value, b"two");
    assert_eq!(under_a.revision, revision(store).await);

    assert_eq!(keys(&range(store, "/t/").await.kvs), ["/t/a/1", "/t/a/2", "/t/b/1"]);
    assert_eq!(keys(&range(store, "").await.kvs), ["/t/a/1", "/t/a/2", "/t/b/1"], "the empty prefix is everything");
    assert!(range(store, "/t/c/").await.kvs.is_empty());
}

async fn revisions_increase_and_track_create_and_mod(store: Arc<dyn Store>) {
    let store = store.as_ref();
    let start = revision(store).await;
    assert!(start > Revision::ZERO, "0 means absent, so a store starts above it");

    let created = put(store, "/r/k", "1").await;
    assert!(created.succeeded);
    assert_eq!(created.revision, start.next(), "each change is the next revision");
    let kv = get(store, "/r/k").await.expect("/r/k exists");
    assert_eq!((kv.create_revision, kv.mod_revision), (created.revision, created.revision));

    let updated = put(store, "/r/k", "2").await;
    assert_eq!(updated.revision, created.revision.next());
    let kv = get(store, "/r/k").await.expect("/r/k exists");
    assert_eq!((kv.create_revision, kv.mod_revision), (created.revision, updated.revision));

    let both = store.txn(Txn::new().then([Op::put("/r/x", "x"), Op::put("/r/y", "y")])).await.expect("txn");
    assert_eq!(both.revision, updated.revision.next(), "one transaction is one revision");
    for key in ["/r/x", "/r/y"] {
        assert_eq!(get(store, key).await.expect("exists").mod_revision, both.revision);
    }

    // Changing nothing creates no revision.
    let nothing = store.txn(Txn::new().then([Op::delete("/r/absent"), Op::get("/r/k")])).await.expect("txn");
    assert_eq!(nothing.revision, both.revision);
    assert_eq!(revision(store).await, both.revision);

    let deleted = store.txn(Txn::new().then([Op::delete("/r/k")])).await.expect("delete");
    assert_eq!(deleted.revision, both.revision.next());
    let recreated = put(store, "/r/k", "3").await;
    let kv = get(store, "/r/k").await.expect("/r/k exists");
    assert_eq!(kv.create_revision, recreated.revision, "a key created again starts a new life");
    assert_eq!(revision(store).await, recreated.revision);
}

async fn cas_success_and_failure_leave_exact_state(store: Arc<dyn Store>) {
    let store = store.as_ref();
    let first = put(store, "/cas/k", "v1").await;
    put(store, "/cas/other", "o").await;
    let kv = get(store, "/cas/k").await.expect("exists");

    let swap = |expected: &KeyValue, value: &str| {
        Txn::new().when([Compare::unchanged(expected)]).then([Op::put("/cas/k", value)]).otherwise([Op::get("/cas/k")])
    };
    let won = store.txn(swap(&kv, "v2")).await.expect("txn");
    assert!(won.succeeded);
    assert_eq!(won.results, [OpResult::Put]);

    let before = range(store, "/cas/").await;
    let lost = store.txn(swap(&kv, "v3")).await.expect("txn");
    assert!(!lost.succeeded, "the key changed since it was read");
    assert_eq!(lost.revision, before.revision, "a failed compare changes nothing");
    let current = lost.get(0).expect("the failure branch read the key");
    assert_eq!((current.value.as_slice(), current.mod_revision), (b"v2".as_slice(), won.revision));
    assert_eq!(range(store, "/cas/").await, before, "state is exactly as it was");

    // Create-if-absent, value equality and ordered revision compares.
    let absent = |key: &str| Txn::new().when([Compare::absent(key)]).then([Op::put(key, "new")]);
    assert!(!store.txn(absent("/cas/k")).await.expect("txn").succeeded);
    assert!(store.txn(absent("/cas/fresh")).await.expect("txn").succeeded);
    let value_is = |value: &str| Txn::new().when([Compare::value_equals("/cas/k", value)]);
    assert!(store.txn(value_is("v2")).await.expect("txn").succeeded);
    assert!(!store.txn(value_is("v1")).await.expect("txn").succeeded);
    assert!(!store.txn(Txn::new().when([Compare::value_equals("/cas/none", "")])).await.expect("txn").succeeded);
    let at = |op, revision| Txn::new().when([Compare::mod_revision("/cas/k", op, revision)]);
    assert!(store.txn(at(CompareOp::Greater, first.revision)).await.expect("txn").succeeded);
    assert!(store.txn(at(CompareOp::Less, won.revision.next())).await.expect("txn").succeeded);
    assert!(!store.txn(at(CompareOp::Less, won.revision)).await.expect("txn").succeeded);
    assert!(store.txn(at(CompareOp::NotEqual, first.revision)).await.expect("txn").succeeded);
}

async fn multi_op_txns_are_all_or_nothing(store: Arc<dyn Store>) {
    let store = store.as_ref();
    put(store, "/all/old", "x").await;
    let applied = store
        .txn(Txn::new().then([
            Op::put("/all/a", "1"),
            Op::put("/all/b", "2"),
            Op::delete("/all/old"),
            Op::put("/all/c", "3"),
        ]))
        .await
        .expect("txn");
    assert!(applied.succeeded);
    let after = range(store, "/all/").await;
    assert_eq!(keys(&after.kvs), ["/all/a", "/all/b", "/all/c"]);
    assert!(after.kvs.iter().all(|kv| kv.mod_revision == applied.revision));

    // A missing lease refuses the whole transaction, not just its put.
    let lease = grant(store, 60).await;
    store.revoke_lease(lease.id).await.expect("revoke");
    let refused = store
        .txn(Txn::new().then([
            Op::put("/all/a", "changed"),
            Op::delete("/all/b"),
            Op::put_with_lease("/all/d", "4", lease.id),
        ]))
        .await;
    assert!(matches!(refused, Err(StoreError::LeaseNotFound { lease: id }) if id == lease.id), "{refused:?}");

    // Malformed transactions are refused the same way by both backends.
    let twice = store.txn(Txn::new().then([Op::put("/all/a", "1"), Op::put("/all/a", "2")])).await;
    assert!(matches!(twice, Err(StoreError::InvalidTxn { .. })), "{twice:?}");
    let put_and_delete = store.txn(Txn::new().then([Op::put("/all/a", "1"), Op::delete_prefix("/all/")])).await;
    assert!(matches!(put_and_delete, Err(StoreError::InvalidTxn { .. })), "{put_and_delete:?}");
    let too_many = Txn::new().then((0..=MAX_TXN_OPS).map(|i| Op::put(format!("/all/many/{i}"), "")));
    assert!(matches!(store.txn(too_many).await, Err(StoreError::InvalidTxn { .. })));
    let at_limit = Txn::new().then((0..MAX_TXN_OPS).map(|i| Op::put(format!("/all/many/{i:03}"), "")));
    assert!(store.txn(at_limit).await.expect("txn at the limit").succeeded);
    store.txn(Txn::new().then([Op::delete_prefix("/all/many/")])).await.expect("delete_prefix");

    assert_eq!(range(store, "/all/").await.kvs, after.kvs, "refused transactions changed nothing");
}

async fn delete_and_delete_prefix(store: Arc<dyn Store>) {
    let store = store.as_ref();
    for key in ["/d/p/a", "/d/p/b", "/d/p/c/d", "/d/pq", "/d/q/a"] {
        put(store, key, "v").await;
    }
    let one = store.txn(Txn::new().then([Op::delete("/d/p/a")])).await.expect("delete");
    assert_eq!(one.results, [OpResult::Delete { deleted: 1 }]);
    let none = store.txn(Txn::new().then([Op::delete("/d/p/a")])).await.expect("delete");
    assert_eq!((none.results.as_slice(), none.revision), ([OpResult::Delete { deleted: 0 }].as_slice(), one.revision));

    let prefix = store.txn(Txn::new().then([Op::delete_prefix("/d/p/")])).await.expect("delete_prefix");
    assert_eq!(prefix.results, [OpResult::Delete { deleted: 2 }]);
    assert_eq!(prefix.revision, one.revision.next(), "a prefix delete is one revision");
    assert_eq!(keys(&range(store, "/d/").await.kvs), ["/d/pq", "/d/q/a"], "only keys under the prefix went");
    let empty = store.txn(Txn::new().then([Op::delete_prefix("/d/p/")])).await.expect("delete_prefix");
    assert_eq!(empty.revision, prefix.revision);
}

async fn watch_from_a_revision_delivers_every_event_in_order(store: Arc<dyn Store>) {
    let store = store.as_ref();
    put(store, "/w/a", "1").await;
    let snapshot = range(store, "/w/").await;

    // Changes between the range and the watch.
    let b = put(store, "/w/b", "2").await.revision;
    let deleted_a = store.txn(Txn::new().then([Op::delete("/w/a")])).await.expect("delete").revision;
    put(store, "/x/outside", "ignored").await;
    let c_and_d = store.txn(Txn::new().then([Op::put("/w/d", "4"), Op::put("/w/c", "3")])).await.expect("txn").revision;

    let mut watch = store.watch("/w/", snapshot.revision.next()).await.expect("watch");

    // Changes after the watch started.
    let e = put(store, "/w/e", "5").await.revision;
    let cleared = store.txn(Txn::new().then([Op::delete_prefix("/w/")])).await.expect("delete_prefix").revision;

    let expected = [
        (EventKind::Put, "/w/b", b),
        (EventKind::Delete, "/w/a", deleted_a),
        (EventKind::Put, "/w/d", c_and_d),
        (EventKind::Put, "/w/c", c_and_d),
        (EventKind::Put, "/w/e", e),
        (EventKind::Delete, "/w/b", cleared),
        (EventKind::Delete, "/w/c", cleared),
        (EventKind::Delete, "/w/d", cleared),
        (EventKind::Delete, "/w/e", cleared),
    ];
    let mut seen = Vec::new();
    for _ in expected {
        seen.push(next_event(&mut watch).await);
    }
    let summaries: Vec<_> = seen.iter().map(summary).collect();
    let expected: Vec<_> =
        expected.iter().map(|(kind, key, revision)| (*kind, (*key).to_owned(), revision.get())).collect();
    assert_eq!(summaries, expected, "every change after the range, in order (ops in transaction order)");

    let put_c = &seen[3];
    assert_eq!(put_c.kv.value, b"3");
    assert_eq!((put_c.kv.create_revision, put_c.kv.mod_revision), (c_and_d, c_and_d));
    let delete_a = &seen[1];
    assert_eq!(delete_a.kv.value, b"", "a delete event carries no value");
    assert_eq!(delete_a.kv.mod_revision, deleted_a);
}

async fn watch_from_now_sees_only_later_changes(store: Arc<dyn Store>) {
    let store = store.as_ref();
    put(store, "/n/before", "1").await;
    let mut watch = store.watch("/n/", Revision::ZERO).await.expect("watch");
    let after = put(store, "/n/after", "2").await.revision;
    assert_eq!(summary(&next_event(&mut watch).await), (EventKind::Put, "/n/after".to_owned(), after.get()));

    // A second watcher of the same prefix gets the same events independently.
    let mut second = store.watch("/n/", after).await.expect("watch");
    assert_eq!(next_event(&mut second).await.revision, after);
    drop(watch);
    let later = put(store, "/n/later", "3").await.revision;
    assert_eq!(next_event(&mut second).await.revision, later);
}

async fn lease_expiry_deletes_keys_with_delete_events(store: Arc<dyn Store>) {
    let store = store.as_ref();
    let lease = grant(store, 1).await;
    assert!(lease.ttl >= Duration::from_secs(1) && lease.ttl <= Duration::from_secs(2), "{lease:?}");
    let mut watch = store.watch("/l/", Revision::ZERO).await.expect("watch");
    store
        .txn(Txn::new().then([
            Op::put_with_lease("/l/b", "b", lease.id),
            Op::put_with_lease("/l/a", "a", lease.id),
            Op::put("/l/kept", "no lease"),
        ]))
        .await
        .expect("txn");
    assert_eq!(get(store, "/l/a").await.expect("exists").lease, Some(lease.id));
    for _ in 0..3 {
        assert_eq!(next_event(&mut watch).await.kind, EventKind::Put);
    }

    let started = Instant::now();
    let first = next_event(&mut watch).await;
    let second = next_event(&mut watch).await;
    let waited = started.elapsed();
    assert_eq!(
        [summary(&first), summary(&second)],
        [
            (EventKind::Delete, "/l/a".to_owned(), first.revision.get()),
            (EventKind::Delete, "/l/b".to_owned(), first.revision.get())
        ],
        "both keys go at one revision, in key order"
    );
    assert!(waited < Duration::from_secs(5), "expiry took {waited:?}");
    assert_eq!(get(store, "/l/a").await, None);
    assert!(get(store, "/l/kept").await.is_some(), "keys without the lease stay");
    let renewed = store.keep_alive(lease.id).await;
    assert!(matches!(renewed, Err(StoreError::LeaseNotFound { lease: id }) if id == lease.id), "{renewed:?}");
}

async fn revoke_deletes_keys_at_once(store: Arc<dyn Store>) {
    let store = store.as_ref();
    let lease = grant(store, 60).await;
    put(store, "/v/free", "x").await;
    store.txn(Txn::new().then([Op::put_with_lease("/v/leased", "x", lease.id)])).await.expect("txn");
    // Moving a key to no lease detaches it from the lease.
    store.txn(Txn::new().then([Op::put_with_lease("/v/moved", "x", lease.id)])).await.expect("txn");
    put(store, "/v/moved", "y").await;
    let mut watch = store.watch("/v/", Revision::ZERO).await.expect("watch");

    store.revoke_lease(lease.id).await.expect("revoke");
    assert_eq!(get(store, "/v/leased").await, None, "revoking deletes at once");
    assert_eq!(keys(&range(store, "/v/").await.kvs), ["/v/free", "/v/moved"]);
    let event = next_event(&mut watch).await;
    assert_eq!((event.kind, event.kv.key.as_str()), (EventKind::Delete, "/v/leased"));

    let again = store.revoke_lease(lease.id).await;
    assert!(matches!(again, Err(StoreError::LeaseNotFound { .. })), "{again:?}");
    let put_with_revoked = store.txn(Txn::new().then([Op::put_with_lease("/v/late", "x", lease.id)])).await;
    assert!(matches!(put_with_revoked, Err(StoreError::LeaseNotFound { .. })), "{put_with_revoked:?}");
    let never_granted = store.keep_alive(allot_store::LeaseId::new(0x7a11_07ab)).await;
    assert!(matches!(never_granted, Err(StoreError::LeaseNotFound { .. })), "{never_granted:?}");
}

async fn keep_alive_keeps_keys_past_the_ttl(store: Arc<dyn Store>) {
    let store = store.as_ref();
    let lease = grant(store, 1).await;
    store.txn(Txn::new().then([Op::put_with_lease("/k/alive", "x", lease.id)])).await.expect("txn");
    let started = Instant::now();
    while started.elapsed() < lease.ttl * 3 {
        store.keep_alive(lease.id).await.expect("keep_alive");
        tokio::time::sleep(lease.ttl / 4).await;
    }
    assert!(get(store, "/k/alive").await.is_some(), "kept alive for three TTLs");
    let gone_after = wait_until_absent(store, "/k/alive", lease.ttl + Duration::from_secs(4)).await;
    assert!(gone_after >= lease.ttl / 2, "expired too early, after {gone_after:?}");
}

async fn concurrent_cas_increments_lose_no_update(shared: Arc<dyn Store>) {
    const TASKS: u64 = 32;
    const INCREMENTS: u64 = 5;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..TASKS {
        let store = Arc::clone(&shared);
        tasks.spawn(async move {
            let mut conflicts = 0u64;
            for _ in 0..INCREMENTS {
                loop {
                    let current = store.get("/c/counter").await.expect("get");
                    let (compare, value) = match &current {
                        Some(kv) => {
                            let text = std::str::from_utf8(&kv.value).expect("a UTF-8 counter");
                            (Compare::unchanged(kv), text.parse::<u64>().expect("a number"))
                        }
                        None => (Compare::absent("/c/counter"), 0),
                    };
                    let next = (value + 1).to_string();
                    let result =
                        store.txn(Txn::new().when([compare]).then([Op::put("/c/counter", next)])).await.expect("txn");
                    if result.succeeded {
                        break;
                    }
                    conflicts += 1;
                }
            }
            conflicts
        });
    }
    let mut conflicts = 0;
    while let Some(task) = tasks.join_next().await {
        conflicts += task.expect("an incrementing task panicked");
    }
    let counter = get(shared.as_ref(), "/c/counter").await.expect("the counter exists");
    assert_eq!(counter.value, (TASKS * INCREMENTS).to_string().as_bytes(), "no increment was lost");
    assert!(conflicts > 0, "32 concurrent writers should have collided at least once");
}

async fn ten_thousand_keys_range_at_one_revision(store: Arc<dyn Store>) {
    let store = store.as_ref();
    const KEYS: usize = 12_000;
    let ops: Vec<Op> = (0..KEYS).map(|i| Op::put(format!("/big/k{i:05}"), format!("value {i}"))).collect();
    for chunk in ops.chunks(100) {
        store.txn(Txn::new().then(chunk.iter().cloned())).await.expect("txn");
    }

    // While the range runs, a writer adds keys one revision at a time; the
    // range must contain exactly those written at or before its revision.
    let writer = async {
        let mut written = BTreeMap::new();
        for i in 0..100 {
            let key = format!("/big/late{i:03}");
            let revision = put(store, &key, "late").await.revision;
            written.insert(key, revision);
        }
        written
    };
    let (snapshot, written) = tokio::join!(range(store, "/big/"), writer);

    let expected_late: Vec<&str> =
        written.iter().filter(|(_, revision)| **revision <= snapshot.revision).map(|(key, _)| key.as_str()).collect();
    let (early, late): (Vec<&KeyValue>, Vec<&KeyValue>) =
        snapshot.kvs.iter().partition(|kv| kv.key.starts_with("/big/k"));
    assert_eq!(early.len(), KEYS);
    assert!(early.iter().enumerate().all(|(i, kv)| kv.key == format!("/big/k{i:05}")), "sorted and complete");
    assert_eq!(early[KEYS - 1].value, format!("value {}", KEYS - 1).as_bytes());
    assert_eq!(late.iter().map(|kv| kv.key.as_str()).collect::<Vec<_>>(), expected_late, "one consistent revision");
    assert!(snapshot.kvs.iter().all(|kv| kv.mod_revision <= snapshot.revision));

    let everything = range(store, "/big/").await;
    assert_eq!(everything.kvs.len(), KEYS + 100);
}

async fn large_values_range_and_replay(store: Arc<dyn Store>) {
    let store = store.as_ref();
    // 40 values of 200 KiB: 8 MiB, twice gRPC's default message limit, in one range page.
    const VALUE: usize = 200 << 10;
    let start = revision(store).await;
    for chunk in 0..8 {
        let ops = (0..5).map(|i| Op::put(format!("/large/{:02}", chunk * 5 + i), vec![b'v'; VALUE]));
        store.txn(Txn::new().then(ops)).await.expect("a 1 MB transaction");
    }
    let snapshot = range(store, "/large/").await;
    assert_eq!(snapshot.kvs.len(), 40);
    assert!(snapshot.kvs.iter().all(|kv| kv.value.len() == VALUE));

    // Replaying all of it at once delivers one large batch of events.
    let mut watch = store.watch("/large/", start.next()).await.expect("watch");
    for i in 0..40 {
        let event = next_event(&mut watch).await;
        assert_eq!((event.kv.key.as_str(), event.kv.value.len()), (format!("/large/{i:02}").as_str(), VALUE));
    }

    let too_large = store.txn(Txn::new().then([Op::put("/large/huge", vec![0; allot_store::MAX_TXN_BYTES])])).await;
    assert!(matches!(too_large, Err(StoreError::InvalidTxn { .. })), "both backends refuse what etcd would");
}

// ---- embedded store only ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_reopen_keeps_data_and_revision_and_expires_old_leases() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (before, revision_before) = {
        let store = EmbeddedStore::open(dir.path()).await.expect("open");
        put(&store, "/re/a", "1").await;
        put(&store, "/re/b", "2").await;
        let lease = grant(&store, 60).await;
        store.txn(Txn::new().then([Op::put_with_lease("/re/leased", "x", lease.id)])).await.expect("txn");
        let snapshot = range(&store, "/re/").await;
        (snapshot.kvs, snapshot.revision)
        // Dropping the last handle stops the writer and releases the file.
    };
    assert_eq!(keys(&before), ["/re/a", "/re/b", "/re/leased"]);

    let store = EmbeddedStore::open(dir.path()).await.expect("reopen");
    let after = range(&store, "/re/").await;
    let without_leased: Vec<KeyValue> = before.iter().filter(|kv| kv.key != "/re/leased").cloned().collect();
    assert_eq!(after.kvs, without_leased, "data survives; the dead process's lease expired at open");
    assert_eq!(after.revision, revision_before.next(), "expiring it took one revision");
    assert_eq!(revision(&store).await, after.revision);
    assert_eq!(put(&store, "/re/c", "3").await.revision, after.revision.next(), "revisions continue");

    // Watch history does not survive a restart: older revisions are compacted.
    let old = store.watch("/re/", revision_before).await;
    assert!(matches!(old, Err(StoreError::Compacted { .. })), "{old:?}");
    let opened_again = EmbeddedStore::open(dir.path()).await;
    assert!(opened_again.is_err(), "one process, one handle: the file is locked while open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_watcher_that_falls_out_of_history_ends_with_compacted() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let options = EmbeddedOptions { watch_history: 64, ..EmbeddedOptions::default() };
    let store = EmbeddedStore::open_with(dir.path(), options).await.expect("open");
    let start = revision(&store).await;
    let mut watch = store.watch("/slow/", Revision::ZERO).await.expect("watch");
    // 30 revisions of 100 events: far more than the watcher's buffer and the history.
    for round in 0..30 {
        let ops = (0..100).map(|i| Op::put(format!("/slow/{i:03}"), format!("{round}")));
        store.txn(Txn::new().then(ops)).await.expect("txn");
    }
    let mut delivered = 0;
    let mut last = start;
    let error = loop {
        match timeout(PATIENCE, watch.next()).await.expect("the watch answers") {
            Some(Ok(event)) => {
                assert!(event.revision >= last && event.revision <= last.next(), "no gap before {event:?}");
                last = event.revision;
                delivered += 1;
            }
            Some(Err(error)) => break error,
            None => panic!("the stream ended without saying why after {delivered} events"),
        }
    };
    assert!(matches!(error, StoreError::Compacted { .. }), "{error:?}");
    assert!(delivered < 3000, "it fell behind, so not everything was delivered ({delivered})");
    assert!(
        timeout(PATIENCE, watch.next()).await.expect("the watch answers").is_none(),
        "the stream ends after the error"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_group_commit_batches_concurrent_transactions() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = EmbeddedStore::open(dir.path()).await.expect("open");
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let store = store.clone();
        tasks.spawn(async move { put(&store, &format!("/g/{i:03}"), "x").await.revision });
    }
    let mut revisions = Vec::new();
    while let Some(revision) = tasks.join_next().await {
        revisions.push(revision.expect("a writing task panicked"));
    }
    revisions.sort();
    revisions.dedup();
    assert_eq!(revisions.len(), 200, "every transaction in a batch gets its own revision");
    let stats = store.write_stats();
    assert_eq!(stats.requests, 200);
    assert!(stats.commits < 200, "concurrent transactions share commits: {stats:?}");
}

// ---- etcd only ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_watch_from_a_compacted_revision_reports_compacted() {
    let etcd = EtcdHarness::start().await;
    let store = etcd.store().await;
    let first = put(&store, "/cmp/k", "1").await.revision;
    let latest = put(&store, "/cmp/k", "2").await.revision;
    etcd.compact(latest).await;
    let error = match store.watch("/cmp/", first).await {
        Err(error) => error,
        Ok(mut watch) => match timeout(PATIENCE, watch.next()).await.expect("the watch answers") {
            Some(Err(error)) => error,
            other => panic!("expected a compaction error, got {other:?}"),
        },
    };
    assert!(
        matches!(error, StoreError::Compacted { requested, oldest_available } if requested == first && oldest_available == latest),
        "{error:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_outage_fails_clearly_after_bounded_retries_and_recovers() {
    let mut etcd = EtcdHarness::start().await;
    let mut config = etcd.config();
    // Patient enough for the watch to outlive a restart.
    config.retry.attempts = 40;
    let patient = allot_store::EtcdStore::connect(config).await.expect("connect");
    let store = etcd.store().await;
    put(&store, "/out/before", "1").await;
    let mut watch = patient.watch("/out/", Revision::ZERO).await.expect("watch");

    etcd.stop();
    let started = Instant::now();
    let read = store.get("/out/before").await;
    assert!(matches!(read, Err(StoreError::Unavailable { attempts: 6, .. })), "{read:?}");
    let write = store.txn(Txn::new().then([Op::put("/out/during", "x")])).await;
    assert!(
        matches!(write, Err(StoreError::Unavailable { .. })),
        "a write that could not be sent is retried, then unavailable: {write:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(20), "bounded: {:?}", started.elapsed());
    let message = read.err().map(|error| error.to_string()).unwrap_or_default();
    assert!(message.starts_with("E-STORE-UNAVAILABLE") && message.contains("check that etcd is running"), "{message}");

    etcd.restart().await;
    let after = put(&store, "/out/after", "2").await.revision;
    assert_eq!(get(&store, "/out/before").await.expect("data survived").value, b"1");
    let event = next_event(&mut watch).await;
    assert_eq!(
        summary(&event),
        (EventKind::Put, "/out/after".to_owned(), after.get()),
        "the watch came back by itself"
    );
}

#[tokio::test]
async fn etcd_connect_to_nothing_is_unavailable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("address").port();
    let mut config = allot_store::EtcdConfig::new([format!("http://127.0.0.1:{port}")]);
    config.retry.attempts = 2;
    config.retry.initial_backoff = Duration::from_millis(10);
    let error = allot_store::EtcdStore::connect(config).await.expect_err("nothing listens there");
    assert!(matches!(error, StoreError::Unavailable { attempts: 2, .. }), "{error:?}");
}
