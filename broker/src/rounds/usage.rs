//! Wiring of the usage history (`allot-history`) into the writer: on each tick,
//! sample GPU telemetry and the capacity split, note each team's quota,
//! downsample what aged, and store the buckets that changed. Allocation changes
//! reach the history through `ClusterState::put_allocation`; the logic itself
//! is in `allot-history`. Every write goes through the writer's batch, like any
//! other change; the history is stored under `layout::usage_bucket`.

use allot_history::recorder::WRITES_PER_COMPACTION;
use allot_history::{Bucket, GpuSample, NodeSample};
use allot_placement::NodeStatus;
use allot_policy::ResourceClass;
use allot_store::{Op, layout};

use crate::state::ClusterState;
use crate::state::codec::encode;

/// How often changed buckets are stored (the shutdown stores the rest).
pub const SAVE_EVERY_MS: u64 = 10_000;

/// The least time between two telemetry samples.
const SAMPLE_EVERY_MS: u64 = 5_000;

/// The most buckets one tick stores (a long outage credited at start makes many).
const SAVE_LIMIT: usize = 48;

// A tick's history writes plus retention's deletions fit one transaction.
const _: () = assert!(
    (if SAVE_LIMIT > WRITES_PER_COMPACTION { SAVE_LIMIT } else { WRITES_PER_COMPACTION })
        + crate::rounds::retention::PRUNE_LIMIT
        <= crate::state::codec::OPS_PER_TXN
);

/// GPU units of a class set: `gpu/any` or its families added up, whichever is more.
fn gpu_total(amounts: &allot_policy::Resources) -> u64 {
    let families: u64 =
        amounts.0.iter().filter(|(class, _)| matches!(class, ResourceClass::GpuFamily(_))).map(|(_, a)| *a).sum();
    amounts.get(&ResourceClass::GpuAny).max(families)
}

/// The ready nodes as the history samples them.
fn samples(state: &ClusterState) -> Vec<NodeSample> {
    state
        .nodes()
        .iter()
        .filter(|(_, entry)| entry.status == NodeStatus::Ready)
        .map(|(name, entry)| {
            let inventory = &entry.record.inventory;
            let usage = &entry.usage;
            let gpus = inventory
                .gpus
                .iter()
                .map(|gpu| {
                    let held = if !usage.gpu_in_use(gpu.index) {
                        0
                    } else if usage.is_whole(gpu.index) || !usage.mig_slots(gpu.index).is_empty() {
                        1000
                    } else {
                        usage.share(gpu.index).map_or(1000, |share| share.compute.0.min(1000))
                    };
                    let telemetry = gpu.telemetry.as_ref();
                    GpuSample {
                        key: format!("{name}/{}", gpu.index),
                        model: gpu.model.clone(),
                        held_milli_gpu: held,
                        utilization_pct: telemetry.and_then(|t| t.utilization_pct),
                        memory_used_mib: telemetry.and_then(|t| t.memory_used_mib).map(|memory| memory.0),
                        temperature_c: telemetry.and_then(|t| t.temperature_c),
                        power_mw: telemetry.and_then(|t| t.power_draw_mw),
                        throttled: telemetry.is_some_and(|t| t.is_throttling()),
                    }
                })
                .collect();
            let cores = inventory.cpu.cores.len() as u32;
            let memory: u64 = inventory.cpu.numa_nodes.iter().map(|numa| numa.memory_mib.0).sum();
            NodeSample {
                gpus,
                free_cores: cores.saturating_sub(usage.cores_taken()),
                free_memory_mib: memory.saturating_sub(usage.memory().0),
            }
        })
        .collect()
}

fn put(bucket: &Bucket, writes: &mut Vec<Op>) {
    if let Ok(bytes) = encode(bucket) {
        writes.push(Op::put(layout::usage_bucket(bucket.start_ms), bytes));
    }
}

/// The ticker's share: sample, note quotas, downsample, store what is due.
pub fn tick(state: &mut ClusterState, writes: &mut Vec<Op>, now: u64) {
    if state.usage.last_sample_ms().is_none_or(|last| now.saturating_sub(last) >= SAMPLE_EVERY_MS) {
        let nodes = samples(state);
        state.usage.sample(now, &nodes);
        let quotas: Vec<(String, u64, Option<u64>)> = state
            .tree
            .teams()
            .map(|spec| {
                let limit = spec.quota.limit_of(&ResourceClass::GpuAny);
                (spec.name.to_string(), gpu_total(&spec.quota.guaranteed), limit)
            })
            .collect();
        state.usage.quotas(now, quotas.iter().map(|(team, guarantee, limit)| (team.as_str(), *guarantee, *limit)));
    }
    // A tick writes either a compaction (at most WRITES_PER_COMPACTION keys) or a save
    // (at most SAVE_LIMIT buckets), so that with retention's deletions it stays
    // within one transaction; a save put off waits for the next tick.
    let changes = state.usage.compact(now);
    if !changes.is_empty() {
        for start in changes.delete {
            writes.push(Op::delete(layout::usage_bucket(start)));
        }
        for bucket in &changes.put {
            put(bucket, writes);
        }
        return;
    }
    for bucket in state.usage.take_due(now, SAVE_EVERY_MS, SAVE_LIMIT) {
        put(&bucket, writes);
    }
}

/// Stores every changed bucket now (before the broker stops).
pub fn flush(state: &mut ClusterState, writes: &mut Vec<Op>, now: u64) -> usize {
    state.usage.advance(now);
    let buckets = state.usage.take_dirty(usize::MAX);
    for bucket in &buckets {
        put(bucket, writes);
    }
    buckets.len()
}

/// Reads the stored history and resumes recording over the loaded allocations
/// (after `load` rebuilt the rest of the state). An unreadable bucket is left
/// out with a warning: the history informs reports, it never blocks a start.
pub fn resume(state: &mut ClusterState, stored: &[allot_store::KeyValue], now: u64) {
    let mut buckets = Vec::with_capacity(stored.len());
    for kv in stored {
        match serde_json::from_slice::<Bucket>(&kv.value) {
            Ok(bucket) => buckets.push(bucket),
            Err(error) => tracing::warn!(key = %kv.key, %error, "usage history bucket unreadable; left out"),
        }
    }
    state.usage = allot_history::Recorder::load(buckets);
    let contributions: Vec<allot_history::Contribution> =
        state.allocations.values().map(|allocation| state.usage_contribution(allocation)).collect();
    state.usage.resume(contributions.iter(), now);
}
