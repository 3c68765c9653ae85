//! Scheduling-round benchmark: the time of one round (`rounds::sharing::schedule`)
//! with a 1,000-request queue on 12,500 DGX H100 nodes, with 100,000 live
//! allocations against the same round with 1,000 (the baseline, same run). The
//! waiting requests are over their team's limit, so every round looks at the
//! whole queue and admits nothing, and rounds repeat the same work.
//!
//! `cargo run --release -p allot-broker --example round_bench`. Prints a Markdown table.

use std::time::{Duration, Instant};

use allot_api::allocation::{
    Allocation, AllocationId, AllocationState, Binding, GpuDemand, GpuGrant, Interconnect, ValidatedRequest,
};
use allot_api::topology::NodeInventory;
use allot_api::units::MiB;
use allot_broker::rounds::sharing::{PolicySettings, schedule};
use allot_broker::state::{ClusterState, NodeEntry, NodeRecord, TeamRecord};
use allot_placement::NodeStatus;
use allot_policy::{Quota, ResourceClass, Resources};

const NODES: usize = 12_500;
const QUEUE: usize = 1_000;

fn inventory() -> NodeInventory {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("placement/tests/data/dgx-h100.json");
    let text = std::fs::read_to_string(&path).expect("the dgx-h100 fixture");
    let mut value: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    if let Some(object) = value.as_object_mut() {
        object.remove("links");
    }
    serde_json::from_value(value).expect("inventory")
}

fn request(team: &str) -> ValidatedRequest {
    ValidatedRequest::new(
        team.parse().expect("team"),
        GpuDemand::Whole { count: 1, models: vec![] },
        1,
        MiB(0),
        Interconnect::Any,
        false,
        None,
        None,
    )
    .expect("request")
}

fn allocation(id: u64, request: ValidatedRequest, state: AllocationState, binding: Option<Binding>) -> Allocation {
    Allocation {
        id: AllocationId::from_u64(id),
        request,
        state,
        binding,
        explanation: String::new(),
        created_at_ms: id,
        updated_at_ms: id,
        generation: 1,
        quota: Default::default(),
    }
}

/// 12,500 nodes, `live` one-GPU allocations of team `serving` spread over them,
/// and `QUEUE` waiting requests of team `batch`, which is at its limit.
fn cluster(live: usize, inventory: &NodeInventory) -> ClusterState {
    let mut state = ClusterState::default();
    let shape = allot_broker::state::placement_shape(inventory);
    for index in 0..NODES {
        let mut node = inventory.clone();
        node.hostname = format!("dgx-{index:05}");
        let record = NodeRecord {
            name: node.hostname.parse().expect("name"),
            inventory: node,
            epoch: 1,
            registered_at_ms: 0,
            shape: Some(shape),
        };
        state.insert_node(NodeEntry::new(record, NodeStatus::Ready, 0));
    }
    let gpus = |count: u64| Resources([(ResourceClass::GpuAny, count * 1000)].into_iter().collect());
    for (name, limit) in [("serving", None), ("batch", Some(gpus(1)))] {
        let quota = Quota { limit: limit.unwrap_or_default(), ..Quota::default() };
        let record = TeamRecord { name: name.parse().expect("team"), created_at_ms: 0, parent: None, quota };
        state.teams.insert(record.name.clone(), record);
    }
    state.rebuild_tree(Default::default()).expect("the teams check");
    let mut id = 1;
    let mut bind = |state: &mut ClusterState, team: &str, slot: usize| {
        let node = format!("dgx-{:05}", slot / 8);
        let gpu = &inventory.gpus[slot % 8];
        let binding = Binding {
            node: node.parse().expect("node"),
            gpus: vec![GpuGrant {
                index: gpu.index,
                uuid: None,
                pci_bus_id: gpu.pci_bus_id.to_string(),
                mig: None,
                share: None,
                nic: None,
            }],
            cpus: vec![],
            cores: vec![(slot % 8) as u32],
            memory: MiB(0),
            numa_nodes: vec![],
        };
        state.put_allocation(allocation(id, request(team), AllocationState::Bound, Some(binding)));
        id += 1;
    };
    // The batch team holds its one GPU (its limit); serving holds the rest.
    bind(&mut state, "batch", 0);
    for slot in 1..live {
        bind(&mut state, "serving", slot);
    }
    for _ in 0..QUEUE {
        state.put_allocation(allocation(id, request("batch"), AllocationState::Pending, None));
        id += 1;
    }
    state.recompute_all_usage();
    state
}

/// The median of nine rounds, in the state `live` allocations make.
fn round_time(live: usize, inventory: &NodeInventory) -> (Duration, usize) {
    let mut state = cluster(live, inventory);
    let mut times = Vec::new();
    let mut admitted = 0;
    for round in 0..9 {
        let mut writes = Vec::new();
        let started = Instant::now();
        admitted += schedule(&mut state, &mut writes, 1_000_000 + round, PolicySettings::default()).len();
        times.push(started.elapsed());
    }
    times.sort();
    (times[4], admitted)
}

fn main() {
    let inventory = inventory();
    println!("| live allocations | queue | round (median of 9) | admitted |");
    println!("|---:|---:|---:|---:|");
    let (small, small_admitted) = round_time(1_000, &inventory);
    let (large, large_admitted) = round_time(100_000, &inventory);
    for (live, time, admitted) in [(1_000, small, small_admitted), (100_000, large, large_admitted)] {
        println!("| {live} | {QUEUE} | {:.2} ms | {admitted} |", time.as_secs_f64() * 1e3);
    }
    println!(
        "\n100,000 live allocations against 1,000: {:.2}x the round time (goal: within 2x)",
        large.as_secs_f64() / small.as_secs_f64()
    );
}
