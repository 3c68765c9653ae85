//! CPU cores and memory: which free cores a request gets (NUMA-local to its GPUs,
//! spilling to the nearest NUMA node only when the local ones run out) and the
//! node-wide memory accounting.
//!
//! Memory is accounted per node, against the sum of the NUMA nodes' memory: the
//! broker does not pin memory to NUMA nodes (the node daemon binds `cpuset.mems` to
//! the NUMA nodes of the granted cores, and the kernel may still fall back to
//! others), so a per-NUMA ledger would promise more than it can keep.

use std::collections::BTreeMap;

use allot_api::topology::{Core, NodeInventory};
use allot_api::units::MiB;

use crate::gpus::Mode;
use crate::usage::NodeUsage;

/// Free cores per NUMA node (`None`: cores hwloc put on no NUMA node), NUMA nodes in
/// index order, `None` last.
pub(crate) fn free_cores_by_numa(inventory: &NodeInventory, usage: &NodeUsage, mode: Mode) -> Vec<(Option<u32>, u32)> {
    let mut free: Vec<(Option<u32>, u32)> = Vec::with_capacity(inventory.cpu.numa_nodes.len() + 1);
    // Cores come grouped by NUMA node, so the group of the previous core is
    // almost always the right one: this loop runs for every node on every request.
    let mut group = usize::MAX;
    for core in &inventory.cpu.cores {
        if mode == Mode::Now && usage.core_taken(core.index) {
            continue;
        }
        if free.get(group).is_none_or(|(numa, _)| *numa != core.numa_node) {
            group = match free.iter().position(|(numa, _)| *numa == core.numa_node) {
                Some(existing) => existing,
                None => {
                    free.push((core.numa_node, 0));
                    free.len() - 1
                }
            };
        }
        free[group].1 += 1;
    }
    if !free.is_sorted_by_key(|(numa, _)| (numa.is_none(), *numa)) {
        free.sort_by_key(|(numa, _)| (numa.is_none(), *numa));
    }
    free
}

pub(crate) fn total_free(free_by_numa: &[(Option<u32>, u32)]) -> u32 {
    free_by_numa.iter().map(|(_, count)| *count).sum()
}

/// Whether `wanted` cores would have to come partly from outside `local` NUMA
/// nodes. Without local NUMA nodes (a CPU-only request, GPUs of unknown locality):
/// whether no single NUMA node has them all.
pub(crate) fn would_spill(free_by_numa: &[(Option<u32>, u32)], local: &[(u32, u32)], wanted: u32) -> bool {
    if wanted == 0 {
        return false;
    }
    if local.is_empty() {
        return !free_by_numa.iter().any(|(numa, count)| numa.is_some() && *count >= wanted);
    }
    let local_free: u32 = free_by_numa
        .iter()
        .filter(|(numa, _)| numa.is_some_and(|numa| local.iter().any(|(local, _)| *local == numa)))
        .map(|(_, count)| *count)
        .sum();
    local_free < wanted
}

/// The NUMA nodes of the GPUs at these positions, with how many GPUs each holds,
/// most GPUs first, then by index.
pub(crate) fn gpu_numa_weights(inventory: &NodeInventory, positions: &[usize]) -> Vec<(u32, u32)> {
    let mut weights: Vec<(u32, u32)> = Vec::new();
    for numa in positions.iter().filter_map(|position| inventory.gpus.get(*position).and_then(|gpu| gpu.numa_node)) {
        match weights.iter_mut().find(|(existing, _)| *existing == numa) {
            Some((_, count)) => *count += 1,
            None => weights.push((numa, 1)),
        }
    }
    weights.sort_by_key(|(numa, count)| (std::cmp::Reverse(*count), *numa));
    weights
}

/// The ACPI distance between two NUMA nodes (by OS index); 10 to itself, 255 when
/// the firmware gives none.
pub(crate) fn numa_distance(inventory: &NodeInventory, from: u32, to: u32) -> u32 {
    if from == to {
        return 10;
    }
    let numa_nodes = &inventory.cpu.numa_nodes;
    let Some(from_node) = numa_nodes.iter().find(|node| node.index == from) else { return 255 };
    numa_nodes
        .iter()
        .position(|node| node.index == to)
        .and_then(|position| from_node.distances.get(position).copied())
        .unwrap_or(255)
}

/// Cores granted, and where they came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CoreGrant {
    pub cores: Vec<u32>,
    pub pus: Vec<u32>,
    /// NUMA nodes of the granted cores, sorted.
    pub numa_nodes: Vec<u32>,
    /// Cores taken on the local NUMA nodes: (NUMA node, count).
    pub local: Vec<(u32, u32)>,
    /// Cores taken elsewhere: (NUMA node, count, distance from the nearest local node).
    pub spilled: Vec<(Option<u32>, u32, u32)>,
    /// Free cores the local NUMA nodes had.
    pub local_free: u32,
}

/// Picks `wanted` free cores. `local` are the NUMA nodes of the granted GPUs with
/// their GPU counts; cores are split across them in proportion, then taken from the
/// other local nodes, and only then from the nearest other NUMA nodes. Without
/// local NUMA nodes, the cores go to the one NUMA node that fits them most snugly
/// (or, if none fits alone, the one with the most free cores, and spill from there).
/// Within a NUMA node, the lowest core indices first. `None` if too few cores are free.
pub(crate) fn assign_cores(
    inventory: &NodeInventory,
    usage: &NodeUsage,
    wanted: u32,
    local: &[(u32, u32)],
) -> Option<CoreGrant> {
    if wanted == 0 {
        return Some(CoreGrant::default());
    }
    let mut free: BTreeMap<Option<u32>, Vec<&Core>> = BTreeMap::new();
    for core in inventory.cpu.cores.iter().filter(|core| !usage.core_taken(core.index)) {
        free.entry(core.numa_node).or_default().push(core);
    }
    for cores in free.values_mut() {
        cores.sort_by_key(|core| core.index);
    }
    let home: Vec<(u32, u32)> = if local.is_empty() {
        let counts = free.iter().filter_map(|(numa, cores)| numa.map(|numa| (numa, cores.len())));
        let wanted_len = wanted as usize;
        let snug = counts.clone().filter(|(_, count)| *count >= wanted_len).min_by_key(|(numa, count)| (*count, *numa));
        let roomiest = counts.max_by_key(|(numa, count)| (*count, std::cmp::Reverse(*numa)));
        snug.or(roomiest).map(|(numa, _)| vec![(numa, 1)]).unwrap_or_default()
    } else {
        local.to_vec()
    };

    let mut grant = CoreGrant::default();
    let mut taken: BTreeMap<Option<u32>, usize> = BTreeMap::new();
    let mut remaining = wanted;
    let mut take = |numa: Option<u32>, count: u32, free: &BTreeMap<Option<u32>, Vec<&Core>>| -> u32 {
        let available = free.get(&numa).map_or(0, Vec::len);
        let already = taken.entry(numa).or_default();
        let more = (count as usize).min(available - *already);
        *already += more;
        more as u32
    };

    // Proportional quotas on the local NUMA nodes; the remainder goes to the nodes
    // with the most GPUs first.
    let total_weight: u32 = home.iter().map(|(_, weight)| *weight).sum::<u32>().max(1);
    let mut quotas: Vec<(u32, u32)> = home
        .iter()
        .map(|(numa, weight)| (*numa, (u64::from(wanted) * u64::from(*weight) / u64::from(total_weight)) as u32))
        .collect();
    let mut left = wanted - quotas.iter().map(|(_, quota)| *quota).sum::<u32>();
    for (_, quota) in quotas.iter_mut() {
        if left == 0 {
            break;
        }
        *quota += 1;
        left -= 1;
    }
    grant.local_free = home.iter().map(|(numa, _)| free.get(&Some(*numa)).map_or(0, Vec::len) as u32).sum();
    for (numa, quota) in &quotas {
        remaining -= take(Some(*numa), *quota, &free);
    }
    for (numa, _) in &home {
        if remaining == 0 {
            break;
        }
        remaining -= take(Some(*numa), remaining, &free);
    }
    // Spill to the nearest other NUMA nodes; cores on no NUMA node last.
    if remaining > 0 {
        let mut others: Vec<(u32, Option<u32>)> = free
            .keys()
            .filter(|numa| !numa.is_some_and(|numa| home.iter().any(|(local, _)| *local == numa)))
            .map(|numa| {
                let distance = match numa {
                    Some(numa) => {
                        home.iter().map(|(local, _)| numa_distance(inventory, *local, *numa)).min().unwrap_or(255)
                    }
                    None => u32::MAX,
                };
                (distance, *numa)
            })
            .collect();
        others.sort_by_key(|(distance, numa)| (*distance, numa.is_none(), *numa));
        for (distance, numa) in others {
            if remaining == 0 {
                break;
            }
            let more = take(numa, remaining, &free);
            if more > 0 {
                remaining -= more;
                grant.spilled.push((numa, more, distance));
            }
        }
    }
    if remaining > 0 {
        return None;
    }
    for (numa, count) in &taken {
        let Some(cores) = free.get(numa) else { continue };
        for core in cores.iter().take(*count) {
            grant.cores.push(core.index);
            grant.pus.extend_from_slice(core.pus.indices());
        }
        if let (Some(numa), true) = (numa, *count > 0) {
            grant.numa_nodes.push(*numa);
            if home.iter().any(|(local, _)| local == numa) {
                grant.local.push((*numa, *count as u32));
            }
        }
    }
    grant.cores.sort_unstable();
    grant.pus.sort_unstable();
    grant.pus.dedup();
    Some(grant)
}

/// The node's memory: the sum of its NUMA nodes'.
pub(crate) fn total_memory(inventory: &NodeInventory) -> MiB {
    MiB(inventory.cpu.numa_nodes.iter().map(|node| node.memory_mib.0).fold(0, u64::saturating_add))
}

pub(crate) fn free_memory(inventory: &NodeInventory, usage: &NodeUsage, mode: Mode) -> MiB {
    let total = total_memory(inventory);
    match mode {
        Mode::Now => MiB(total.0.saturating_sub(usage.memory().0)),
        Mode::Ever => total,
    }
}

#[cfg(test)]
mod tests {
    use allot_api::allocation::Binding;
    use allot_api::topology::{CpuTopology, NumaNode};
    use allot_api::units::CpuSet;

    use super::*;
    use crate::synthetic::{PcieServer, pcie_gpu_server};

    /// A two-NUMA machine with 4 cores on each, SLIT 10/21.
    fn machine() -> NodeInventory {
        let mut inventory = pcie_gpu_server(&PcieServer {
            hostname: "n".into(),
            gpu_model: "T4".into(),
            gpus: 0,
            gpu_memory: MiB(16_384),
            cores: 8,
            memory: MiB(64 * 1024),
        });
        inventory.cpu = CpuTopology {
            numa_nodes: (0..2)
                .map(|index| NumaNode {
                    index,
                    memory_mib: MiB(32 * 1024),
                    cpus: CpuSet::default(),
                    distances: if index == 0 { vec![10, 21] } else { vec![21, 10] },
                })
                .collect(),
            cores: (0..8)
                .map(|index| Core {
                    index,
                    package: Some(index / 4),
                    numa_node: Some(index / 4),
                    pus: CpuSet::new(vec![index, index + 8]),
                })
                .collect(),
            ..CpuTopology::default()
        }
        .into();
        inventory
    }

    fn usage_with_cores(cores: &[u32]) -> NodeUsage {
        NodeUsage::from_bindings(&[Binding {
            node: "n".parse().expect("name"),
            gpus: vec![],
            cpus: vec![],
            cores: cores.to_vec(),
            memory: MiB(0),
            numa_nodes: vec![],
        }])
    }

    /// `expected` is "cores | numa nodes | spilled (numa:count@distance)".
    fn check(taken: &[u32], wanted: u32, local: &[(u32, u32)], expected: &str) {
        let inventory = machine();
        let usage = usage_with_cores(taken);
        let actual = match assign_cores(&inventory, &usage, wanted, local) {
            None => "none".to_owned(),
            Some(grant) => {
                let spilled: Vec<String> = grant
                    .spilled
                    .iter()
                    .map(|(numa, count, distance)| format!("{numa:?}:{count}@{distance}"))
                    .collect();
                format!("{:?} | {:?} | {}", grant.cores, grant.numa_nodes, spilled.join(","))
            }
        };
        assert_eq!(actual, expected, "taken {taken:?}, wanted {wanted}, local {local:?}");
    }

    #[test]
    fn cores_stay_local_and_spill_only_when_needed() {
        check(&[], 2, &[(1, 1)], "[4, 5] | [1] | ");
        check(&[], 4, &[(0, 2), (1, 2)], "[0, 1, 4, 5] | [0, 1] | ");
        check(&[], 3, &[(0, 1), (1, 1)], "[0, 1, 4] | [0, 1] | ");
        // NUMA 1 is short: the other local node gives first.
        check(&[5, 6, 7], 4, &[(0, 1), (1, 1)], "[0, 1, 2, 4] | [0, 1] | ");
        // Only NUMA 0 is local and it has 2 free: spill 2 to NUMA 1 at distance 21.
        check(&[0, 1], 4, &[(0, 1)], "[2, 3, 4, 5] | [0, 1] | Some(1):2@21");
        check(&[], 9, &[(0, 1)], "none");
        check(&[], 0, &[(0, 1)], "[] | [] | ");
    }

    #[test]
    fn cpu_only_requests_go_to_the_snuggest_numa_node() {
        // NUMA 0 has 1 free, NUMA 1 has 4: 1 core fits NUMA 0 snugly.
        check(&[0, 1, 2], 1, &[], "[3] | [0] | ");
        check(&[0, 1, 2], 2, &[], "[4, 5] | [1] | ");
        // No NUMA node has 6 free: start on the roomiest and spill.
        check(&[0], 6, &[], "[1, 2, 4, 5, 6, 7] | [0, 1] | Some(0):2@21");
    }

    #[test]
    fn spill_is_predicted_from_free_counts() {
        let inventory = machine();
        let usage = usage_with_cores(&[0, 1]);
        let free = free_cores_by_numa(&inventory, &usage, Mode::Now);
        assert_eq!(free, vec![(Some(0), 2), (Some(1), 4)]);
        assert!(!would_spill(&free, &[(0, 1)], 2));
        assert!(would_spill(&free, &[(0, 1)], 3));
        assert!(!would_spill(&free, &[], 4));
        assert!(would_spill(&free, &[], 5));
        assert_eq!(numa_distance(&inventory, 0, 1), 21);
        assert_eq!(numa_distance(&inventory, 0, 7), 255);
    }
}
