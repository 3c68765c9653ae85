//! Property test: random sequences of whole-GPU, MIG, share and CPU-only requests
//! and releases never grant a GPU, MIG slice, share capacity, core or memory twice,
//! always honour the interconnect and RDMA asked for, never touch an unhealthy GPU,
//! decide the same way twice, and call impossible only what an idle cluster refuses.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use allot_api::allocation::{Binding, GpuDemand, Interconnect, MilliGpu, ValidatedRequest};
use allot_api::topology::{ConnectionLevel, GpuHealth, MigMode, NodeInventory};
use allot_api::units::MiB;
use allot_placement::synthetic::{PcieServer, pcie_gpu_server};
use allot_placement::{NodeUsage, NodeView, PlacementOptions, place_with};
use common::Cluster;
use proptest::prelude::*;

const PROFILES: [&str; 8] = ["1g.10gb", "1g.10gb+me", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb", "3g.41gb"];

#[derive(Debug, Clone)]
enum Gpus {
    None,
    Whole(u32),
    Mig(&'static str),
    Share(u32, u64),
}

#[derive(Debug, Clone)]
enum Op {
    Place { gpus: Gpus, cpus: u32, memory_gib: u64, interconnect: Interconnect, rdma: bool },
    Release(usize),
}

fn interconnect() -> impl Strategy<Value = Interconnect> {
    prop_oneof![
        Just(Interconnect::Any),
        Just(Interconnect::Nvlink),
        Just(Interconnect::PcieSwitch),
        Just(Interconnect::Numa),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let gpus = prop_oneof![
        Just(Gpus::None),
        (1u32..=5).prop_map(Gpus::Whole),
        prop::sample::select(&PROFILES[..]).prop_map(Gpus::Mig),
        (1u32..1000, 1u64..=48_000).prop_map(|(compute, memory)| Gpus::Share(compute, memory)),
    ];
    prop_oneof![
        4 => (gpus, 0u32..=40, 0u64..=600, interconnect(), prop::bool::weighted(0.2)).prop_map(
            |(gpus, cpus, memory_gib, interconnect, rdma)| Op::Place { gpus, cpus, memory_gib, interconnect, rdma }
        ),
        1 => any::<usize>().prop_map(Op::Release),
    ]
}

fn request(
    gpus: &Gpus,
    cpus: u32,
    memory_gib: u64,
    interconnect: Interconnect,
    rdma: bool,
) -> Option<ValidatedRequest> {
    let (demand, interconnect) = match gpus {
        Gpus::None => (GpuDemand::None, Interconnect::Any),
        Gpus::Whole(count) => (GpuDemand::Whole { count: *count, models: vec![] }, interconnect),
        Gpus::Mig(profile) => (GpuDemand::Mig { profile: (*profile).to_owned() }, Interconnect::Any),
        Gpus::Share(compute, memory) => {
            (GpuDemand::Share { compute: MilliGpu(*compute), memory: MiB(*memory) }, Interconnect::Any)
        }
    };
    let rdma = rdma && !matches!(gpus, Gpus::None);
    ValidatedRequest::new("ml".parse().ok()?, demand, cpus, MiB(memory_gib * 1024), interconnect, rdma, None, None).ok()
}

/// A MIG-enabled A100, an L40S server with a throttling GPU, a DGX H100 with one
/// unhealthy GPU, and a synthetic 8-GPU T4 server.
fn cluster() -> Cluster {
    let t4 = pcie_gpu_server(&PcieServer {
        hostname: "t4".into(),
        gpu_model: "T4".into(),
        gpus: 8,
        gpu_memory: MiB(15_360),
        cores: 32,
        memory: MiB(128 * 1024),
    });
    Cluster::new()
        .node("a100", "dgx-a100-mig")
        .node("h100", "dgx-h100")
        .node("l40s", "pcie-l40s")
        .node_from("t4", t4)
        .edit("h100", |inventory| inventory.gpus[6].health = GpuHealth::Unhealthy { reasons: vec!["xid 79".into()] })
}

fn views<'a>(cluster: &'a Cluster, usages: &'a [NodeUsage]) -> Vec<NodeView<'a>> {
    cluster
        .nodes
        .iter()
        .zip(usages)
        .map(|(node, usage)| NodeView { name: &node.name, inventory: &node.inventory, status: node.status, usage })
        .collect()
}

/// Checks a new binding against what was asked and the layout it was placed on.
fn check_new_binding(
    request: &ValidatedRequest,
    binding: &Binding,
    inventory: &NodeInventory,
    before: &NodeUsage,
) -> Result<(), String> {
    let position = |index: u32| inventory.gpus.iter().position(|gpu| gpu.index == index);
    if binding.cores.len() != request.cpus as usize || binding.memory != request.memory {
        return Err(format!("asked {} cores and {}, got {:?}", request.cpus, request.memory, binding));
    }
    let mut pus: Vec<u32> = binding
        .cores
        .iter()
        .flat_map(|core| inventory.cpu.cores.iter().find(|c| c.index == *core).map(|c| c.pus.indices().to_vec()))
        .flatten()
        .collect();
    pus.sort_unstable();
    if pus != binding.cpus {
        return Err(format!("PUs {:?} are not those of cores {:?}", binding.cpus, binding.cores));
    }
    for grant in &binding.gpus {
        let gpu = position(grant.index).map(|p| &inventory.gpus[p]).ok_or("granted GPU not in inventory")?;
        if matches!(gpu.health, GpuHealth::Unhealthy { .. }) {
            return Err(format!("unhealthy GPU {} granted", gpu.index));
        }
        if request.rdma && grant.nic.is_none() {
            return Err(format!("RDMA asked, GPU {} has no NIC", gpu.index));
        }
        if let Some(mig) = &grant.mig {
            let info = gpu.mig.as_ref().ok_or("MIG on a GPU without MIG")?;
            if !mig.recarve {
                if info.mode != MigMode::Enabled {
                    return Err(format!("no re-carve, but MIG is off on GPU {}", gpu.index));
                }
                let owned = before.mig_slots(gpu.index);
                let blocking = info.instances.iter().filter(|instance| {
                    let orphan = !owned.iter().any(|slot| slot.start == instance.start && slot.size == instance.size);
                    let overlaps = instance.start < mig.start + mig.size && mig.start < instance.start + instance.size;
                    let exact = instance.start == mig.start && instance.size == mig.size;
                    orphan && overlaps && !exact
                });
                if blocking.count() > 0 {
                    return Err(format!(
                        "no re-carve, but unowned instances are in the way: {mig:?} on GPU {}",
                        gpu.index
                    ));
                }
            }
        }
    }
    if let GpuDemand::Whole { count, .. } = &request.gpus {
        if binding.gpus.len() != *count as usize {
            return Err(format!("asked {count} GPUs, got {}", binding.gpus.len()));
        }
        let positions: Vec<usize> = binding.gpus.iter().filter_map(|grant| position(grant.index)).collect();
        for (i, a) in positions.iter().enumerate() {
            for b in &positions[i + 1..] {
                let (gpu_a, gpu_b) = (&inventory.gpus[*a], &inventory.gpus[*b]);
                let ok = match request.interconnect {
                    Interconnect::Any => true,
                    Interconnect::Nvlink => matches!(inventory.gpu_gpu_level(*a, *b), Some(ConnectionLevel::NvLink(_))),
                    Interconnect::PcieSwitch => matches!(
                        inventory.pci.pcie_level(gpu_a.pci_bus_id, gpu_b.pci_bus_id),
                        Some(ConnectionLevel::Pix | ConnectionLevel::Pxb)
                    ),
                    Interconnect::Numa => gpu_a.numa_node.is_some() && gpu_a.numa_node == gpu_b.numa_node,
                };
                if !ok {
                    return Err(format!("GPUs {} and {} are not {}", gpu_a.index, gpu_b.index, request.interconnect));
                }
            }
        }
    }
    Ok(())
}

/// Checks that the live bindings of one node never share anything.
fn check_node(inventory: &NodeInventory, bindings: &[&Binding]) -> Result<(), String> {
    let mut whole: BTreeSet<u32> = BTreeSet::new();
    let mut mig: BTreeMap<u32, Vec<(u32, u32, u32)>> = BTreeMap::new();
    let mut shares: BTreeMap<u32, (u32, u64)> = BTreeMap::new();
    let mut cores: BTreeSet<u32> = BTreeSet::new();
    let mut memory = 0u64;
    for binding in bindings {
        memory += binding.memory.0;
        for core in &binding.cores {
            if !cores.insert(*core) {
                return Err(format!("core {core} granted twice"));
            }
        }
        for grant in &binding.gpus {
            match (&grant.mig, &grant.share) {
                (Some(m), _) => mig.entry(grant.index).or_default().push((m.start, m.size, m.profile_id)),
                (None, Some(s)) => {
                    let load = shares.entry(grant.index).or_default();
                    load.0 += s.compute.0;
                    load.1 += s.memory.0;
                }
                (None, None) => {
                    if !whole.insert(grant.index) {
                        return Err(format!("GPU {} granted whole twice", grant.index));
                    }
                }
            }
        }
    }
    if cores.len() > inventory.cpu.cores.len()
        || cores.iter().any(|c| !inventory.cpu.cores.iter().any(|k| k.index == *c))
    {
        return Err("cores granted that the node does not have".into());
    }
    let total_memory: u64 = inventory.cpu.numa_nodes.iter().map(|numa| numa.memory_mib.0).sum();
    if memory > total_memory {
        return Err(format!("{memory} MiB granted of {total_memory}"));
    }
    for gpu in &inventory.gpus {
        let kinds = [whole.contains(&gpu.index), mig.contains_key(&gpu.index), shares.contains_key(&gpu.index)];
        if kinds.iter().filter(|used| **used).count() > 1 {
            return Err(format!("GPU {} used in two ways: {kinds:?}", gpu.index));
        }
        if let Some(&(compute, mem)) = shares.get(&gpu.index) {
            if compute > 1000 || Some(MiB(mem)) > gpu.memory_mib {
                return Err(format!("GPU {} shares add up to {compute} milli-GPU and {mem} MiB", gpu.index));
            }
            if gpu.mig.as_ref().is_some_and(|info| info.mode == MigMode::Enabled) {
                return Err(format!("shares on MIG-enabled GPU {}", gpu.index));
            }
        }
        if let Some(slots) = mig.get(&gpu.index) {
            let info = gpu.mig.as_ref().ok_or("MIG slots on a GPU without MIG")?;
            let mut mask = 0u64;
            let mut compute = 0;
            for (start, size, profile_id) in slots {
                let profile = info.profiles.iter().find(|p| p.profile_id == *profile_id).ok_or("unknown profile")?;
                if !profile.placements.contains(start) || profile.memory_slices != *size {
                    return Err(format!("{} at {start} is not a valid placement", profile.name));
                }
                let bits = ((1u64 << size) - 1) << start;
                if mask & bits != 0 {
                    return Err(format!("MIG slices overlap on GPU {}: {slots:?}", gpu.index));
                }
                mask |= bits;
                compute += profile.compute_slices;
                let same = slots.iter().filter(|(_, _, id)| id == profile_id).count() as u32;
                if same > profile.max_count {
                    return Err(format!("{same} x {} on GPU {}", profile.name, gpu.index));
                }
            }
            if compute > 7 || slots.len() > 7 {
                return Err(format!("GPU {} holds {} instances with {compute} compute slices", gpu.index, slots.len()));
            }
        }
    }
    Ok(())
}

fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    let mut cluster = cluster();
    let idle = cluster.clone();
    let options = PlacementOptions::default();
    let mut live: Vec<Binding> = Vec::new();
    for op in ops {
        match op {
            Op::Release(index) => {
                if !live.is_empty() {
                    let binding = live.remove(index % live.len());
                    let node = cluster.nodes.iter_mut().find(|node| node.name == binding.node).expect("node");
                    let position = node.bindings.iter().position(|b| *b == binding).expect("binding recorded");
                    node.bindings.remove(position);
                }
            }
            Op::Place { gpus, cpus, memory_gib, interconnect, rdma } => {
                let Some(request) = request(gpus, *cpus, *memory_gib, *interconnect, *rdma) else { continue };
                let usages = cluster.usages();
                let nodes = views(&cluster, &usages);
                let result = place_with(&request, &nodes, &options);
                prop_assert_eq!(&result, &place_with(&request, &nodes, &options), "the same input decides the same");
                match result {
                    Ok(decision) => {
                        let at =
                            cluster.nodes.iter().position(|node| node.name == decision.binding.node).expect("node");
                        check_new_binding(&request, &decision.binding, &cluster.nodes[at].inventory, &usages[at])
                            .map_err(TestCaseError::fail)?;
                        live.push(decision.binding.clone());
                        cluster.commit(decision.binding);
                    }
                    Err(refusal) if refusal.is_impossible() => {
                        let idle_usages = idle.usages();
                        let idle_nodes = views(&idle, &idle_usages);
                        let on_idle = place_with(&request, &idle_nodes, &options);
                        prop_assert!(on_idle.is_err(), "impossible, yet an idle cluster takes it: {}", refusal);
                    }
                    Err(_) => {}
                }
                for node in &cluster.nodes {
                    let bindings: Vec<&Binding> = live.iter().filter(|b| b.node == node.name).collect();
                    check_node(&node.inventory, &bindings).map_err(TestCaseError::fail)?;
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn placements_never_grant_anything_twice(ops in prop::collection::vec(op(), 1..60)) {
        run(&ops)?;
    }
}

#[test]
fn a_long_mig_sequence_fills_the_a100_without_overlap() {
    // Many small instances, then big ones: the GPUs fill up, never overlapping.
    let ops: Vec<Op> = ["1g.10gb", "3g.40gb", "2g.20gb", "1g.20gb", "4g.40gb", "7g.80gb"]
        .iter()
        .cycle()
        .take(80)
        .map(|profile| Op::Place {
            gpus: Gpus::Mig(profile),
            cpus: 1,
            memory_gib: 1,
            interconnect: Interconnect::Any,
            rdma: false,
        })
        .collect();
    run(&ops).expect("no double grants");
}
