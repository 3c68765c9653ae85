//! Retention of finished allocations (`allot-broker serve --released-retention`):
//! released allocations older than the retention leave the store, and the List
//! RPC with `include_finished` (`allotctl alloc list --all`), after a broker
//! tick and at a broker's start; live ones (bound, pending) stay, however old.
//! The store is read directly: etcd while the broker runs, the embedded store
//! between two runs.

use std::collections::BTreeMap;
use std::time::Duration;

use allot_api::allocation::Allocation;
use allot_store::{Store, layout};
use allot_tests::{Broker, StoreKind, allotctl_json, node_statuses, start_broker_with, start_node, wait_until};
use serde_json::Value;

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock after 1970").as_millis() as u64
}

/// Every allocation in the store, by id.
fn stored(runtime: &tokio::runtime::Runtime, store: &dyn Store) -> BTreeMap<String, Allocation> {
    let range = runtime.block_on(store.range(layout::prefix_allocations())).expect("read the allocations");
    range
        .kvs
        .iter()
        .map(|kv| {
            let allocation: Allocation = serde_json::from_slice(&kv.value)
                .unwrap_or_else(|error| panic!("{} does not hold an allocation: {error}", kv.key));
            (allocation.id.to_string(), allocation)
        })
        .collect()
}

/// Ids and states from `allotctl alloc list --all` (the List RPC with include_finished).
fn listed_with_finished(broker: &Broker) -> BTreeMap<String, String> {
    let list = allotctl_json(broker, &["alloc", "list", "--all"]);
    list.as_array()
        .expect("a list")
        .iter()
        .map(|allocation| {
            (allocation["id"].as_str().expect("id").to_owned(), allocation["state"].as_str().expect("state").to_owned())
        })
        .collect()
}

fn create(broker: &Broker, gpus: &str) -> Value {
    allotctl_json(broker, &["alloc", "create", "--team", "ml", "--gpus", gpus])
}

fn id_of(allocation: &Value) -> String {
    allocation["id"].as_str().expect("id").to_owned()
}

/// One node, team `ml`; returns (a bound allocation, two released ones, a pending one).
fn live_and_released(broker: &Broker) -> (String, Vec<String>, String) {
    wait_until("node-a is ready", Duration::from_secs(30), || {
        node_statuses(broker).iter().any(|(name, status)| name == "node-a" && status == "ready")
    });
    allotctl_json(broker, &["team", "create", "ml"]);
    let live = create(broker, "1");
    assert_eq!(live["state"], "bound", "{live}");
    let mut released = Vec::new();
    for gpus in ["1", "2"] {
        let allocation = create(broker, gpus);
        let answer = allotctl_json(broker, &["alloc", "release", &id_of(&allocation)]);
        assert_eq!(answer["state"], "released", "{answer}");
        released.push(id_of(&allocation));
    }
    // Eight GPUs while one is taken: it waits in the queue.
    let pending = create(broker, "8");
    assert_eq!(pending["state"], "pending", "{pending}");
    (id_of(&live), released, id_of(&pending))
}

/// The live allocations are in the store and listed, in the state they had.
fn assert_live_kept(
    stored: &BTreeMap<String, Allocation>,
    listed: &BTreeMap<String, String>,
    live: &str,
    pending: &str,
) {
    for (id, state) in [(live, "bound"), (pending, "pending")] {
        let allocation = stored.get(id).unwrap_or_else(|| panic!("live allocation {id} is gone from the store"));
        assert_eq!(allocation.state.as_str(), state, "{id} in the store");
        assert_eq!(listed.get(id).map(String::as_str), Some(state), "{id} in alloc list --all: {listed:?}");
    }
}

#[test]
fn released_allocations_older_than_the_retention_leave_the_store_on_a_tick() {
    let dir = tempfile::tempdir().expect("temp dir");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let etcd = runtime.block_on(allot_store::testing::EtcdHarness::start());
    let store = runtime.block_on(etcd.store());
    let broker = start_broker_with(
        &StoreKind::Etcd(etcd.endpoint()),
        dir.path(),
        "broker",
        "30s",
        "127.0.0.1:0",
        &["--released-retention", "2s"],
    );
    let _node = start_node(&broker, "dgx-h100", "node-a", dir.path());
    let (live, released, pending) = live_and_released(&broker);

    wait_until("the released allocations are pruned", Duration::from_secs(60), || {
        let in_store = stored(&runtime, &store);
        let listed = listed_with_finished(&broker);
        released.iter().all(|id| !in_store.contains_key(id) && !listed.contains_key(id))
    });
    // The live ones were made before the released ones, so they are older than
    // the retention too, and still there.
    let in_store = stored(&runtime, &store);
    let listed = listed_with_finished(&broker);
    assert_live_kept(&in_store, &listed, &live, &pending);
    assert_eq!(in_store.len(), 2, "only the live allocations are left: {:?}", in_store.keys());
    assert_eq!(listed.len(), 2, "{listed:?}");
}

#[test]
fn released_allocations_that_expired_while_no_broker_ran_are_pruned_at_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state");
    let kind = StoreKind::Embedded(state.clone());
    // The embedded store is one process's at a time: read it between broker runs,
    // on a runtime of its own, so that nothing of the store outlives the read.
    let read_store = || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let store = runtime.block_on(allot_store::EmbeddedStore::open(&state)).expect("open the embedded store");
        let allocations = stored(&runtime, &store);
        drop(store);
        allocations
    };
    let start = |name: &str, retention: &str| {
        start_broker_with(&kind, dir.path(), name, "30s", "127.0.0.1:0", &["--released-retention", retention])
    };

    let broker = start("broker", "1h");
    let mut node = start_node(&broker, "dgx-h100", "node-a", dir.path());
    let (live, released, pending) = live_and_released(&broker);
    node.kill();
    drop(broker);
    let before = read_store();
    let released_at = released
        .iter()
        .map(|id| {
            let allocation = before.get(id).unwrap_or_else(|| panic!("released allocation {id} was not stored"));
            assert_eq!(allocation.state.as_str(), "released");
            allocation.updated_at_ms
        })
        .max()
        .expect("two released allocations");

    // A restart with the long retention keeps them: they are younger than it.
    let broker = start("broker-1h", "1h");
    let listed = listed_with_finished(&broker);
    for id in &released {
        assert_eq!(listed.get(id).map(String::as_str), Some("released"), "{id} after a restart: {listed:?}");
    }
    drop(broker);

    // Once they are older than one second, a broker with that retention starts
    // without them: they are deleted before it serves, so no waiting here.
    wait_until("the releases are more than a second old", Duration::from_secs(10), || now_ms() > released_at + 1_000);
    let broker = start("broker-1s", "1s");
    let listed = listed_with_finished(&broker);
    for id in &released {
        assert!(!listed.contains_key(id), "{id} is still listed after a start with a 1 s retention: {listed:?}");
    }
    drop(broker);
    let after = read_store();
    for id in &released {
        assert!(!after.contains_key(id), "{id} is still in the store after a start with a 1 s retention");
    }
    assert_live_kept(&after, &listed, &live, &pending);
    assert_eq!(after.len(), 2, "only the live allocations are left: {:?}", after.keys());
}
