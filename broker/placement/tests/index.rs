//! Property test: the incremental index (`PlacementIndex`) decides exactly as the
//! exhaustive engine over every node, on random clusters of identical and
//! different machines (all-to-all NVSwitch, NVLink-bridged pairs, DGX-1's hybrid
//! cube-mesh, MIG, PCIe) under random streams of requests, releases, lost and
//! cordoned nodes and GPUs that start or stop throttling. Also: the
//! representatives it lists decide as every node does, with and without the
//! learned share mix.

mod common;

use allot_api::allocation::{Binding, GpuDemand, Interconnect, MilliGpu, NodeName, ValidatedRequest};
use allot_api::topology::{GpuHealth, NodeInventory, NvLink, NvLinkPeer, ThrottleReason};
use allot_api::units::MiB;
use allot_placement::learn::RequestMix;
use allot_placement::{
    ClusterContext, NodeStatus, NodeUsage, NodeView, PlacementIndex, PlacementOptions, place, place_learned,
    placement_shape,
};
use common::fixture;
use proptest::prelude::*;

/// DGX-1 (V100): eight GPUs in two fully connected quads with a cross link per
/// GPU, one or two NVLinks per pair (`nvidia-smi topo -m` of a DGX-1V), built
/// from the PCIe H100 NVL server's layout with its bridges replaced.
fn dgx1() -> NodeInventory {
    const LINKS: [(u32, u32, u32); 16] = [
        (0, 1, 1),
        (0, 2, 1),
        (0, 3, 2),
        (0, 4, 2),
        (1, 2, 2),
        (1, 3, 1),
        (1, 5, 2),
        (2, 3, 2),
        (2, 6, 1),
        (3, 7, 1),
        (4, 5, 1),
        (4, 6, 1),
        (4, 7, 2),
        (5, 6, 2),
        (5, 7, 1),
        (6, 7, 2),
    ];
    let mut inventory = fixture("pcie-h100-nvl");
    let buses: Vec<_> = inventory.gpus.iter().map(|gpu| gpu.pci_bus_id).collect();
    for gpu in &mut inventory.gpus {
        gpu.model = "Tesla V100-SXM2-32GB".into();
        gpu.memory_mib = Some(MiB(32 * 1024));
        gpu.nvlinks = LINKS
            .iter()
            .filter_map(|(a, b, links)| match gpu.index {
                index if index == *a => Some((*b, *links)),
                index if index == *b => Some((*a, *links)),
                _ => None,
            })
            .map(|(peer, links)| NvLink { peer: NvLinkPeer::Gpu, peer_pci_bus_id: buses[peer as usize], links })
            .collect();
    }
    inventory
}

const MACHINES: [&str; 5] = ["dgx-h100", "pcie-h100-nvl", "dgx1", "dgx-a100-mig", "pcie-l40s"];
const PROFILES: [&str; 4] = ["1g.10gb", "2g.20gb", "3g.40gb", "7g.80gb"];

fn machine(kind: usize) -> NodeInventory {
    match MACHINES[kind % MACHINES.len()] {
        "dgx1" => dgx1(),
        name => fixture(name),
    }
}

#[derive(Debug, Clone)]
enum Op {
    Place { gpus: u8, count: u32, milli: u32, profile: usize, cpus: u32, memory_gib: u64, interconnect: u8 },
    Release(usize),
    Status(usize, u8),
    Throttle(usize, usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..4, 1u32..=8, 1u32..1000, 0usize..4, 0u32..=24, 0u64..=300, 0u8..4).prop_map(
            |(gpus, count, milli, profile, cpus, memory_gib, interconnect)| Op::Place {
                gpus,
                count,
                milli,
                profile,
                cpus,
                memory_gib,
                interconnect
            }
        ),
        2 => any::<usize>().prop_map(Op::Release),
        1 => (any::<usize>(), 0u8..3).prop_map(|(node, status)| Op::Status(node, status)),
        1 => (any::<usize>(), 0usize..8).prop_map(|(node, gpu)| Op::Throttle(node, gpu)),
    ]
}

fn request(op: &Op) -> Option<ValidatedRequest> {
    let Op::Place { gpus, count, milli, profile, cpus, memory_gib, interconnect } = op else { return None };
    let interconnect = [Interconnect::Any, Interconnect::Nvlink, Interconnect::PcieSwitch, Interconnect::Numa]
        [*interconnect as usize % 4];
    let (demand, interconnect) = match gpus {
        0 => (GpuDemand::None, Interconnect::Any),
        1 => (GpuDemand::Whole { count: *count, models: vec![] }, interconnect),
        2 => (GpuDemand::Mig { profile: PROFILES[*profile].to_owned() }, Interconnect::Any),
        _ => (GpuDemand::Share { compute: MilliGpu(*milli), memory: MiB(u64::from(*milli) * 16) }, Interconnect::Any),
    };
    // Few distinct sizes, so request shapes repeat and rankings are reused.
    let cpus = cpus / 8 * 8;
    let memory = MiB(memory_gib / 100 * 100 * 1024);
    ValidatedRequest::new("ml".parse().ok()?, demand, cpus, memory, interconnect, false, None, None).ok()
}

struct World {
    names: Vec<NodeName>,
    inventories: Vec<NodeInventory>,
    statuses: Vec<NodeStatus>,
    bindings: Vec<Vec<Binding>>,
    usages: Vec<NodeUsage>,
    index: PlacementIndex,
}

impl World {
    fn new(kinds: &[usize]) -> World {
        let mut world = World {
            names: vec![],
            inventories: vec![],
            statuses: vec![],
            bindings: vec![],
            usages: vec![],
            index: PlacementIndex::new(PlacementOptions::default()),
        };
        for (position, kind) in kinds.iter().enumerate() {
            let mut inventory = machine(*kind);
            // Names and UUIDs differ between twins; placement must not care.
            inventory.hostname = format!("n{position:02}");
            for gpu in &mut inventory.gpus {
                gpu.uuid = Some(format!("GPU-{position}-{}", gpu.index));
            }
            world.names.push(inventory.hostname.parse().expect("name"));
            world.inventories.push(inventory);
            world.statuses.push(NodeStatus::Ready);
            world.bindings.push(vec![]);
            world.usages.push(NodeUsage::default());
        }
        // A sick GPU on one node makes a shape of its own.
        if let Some(inventory) = world.inventories.get_mut(1) {
            inventory.gpus[0].health = GpuHealth::Unhealthy { reasons: vec!["xid 79".into()] };
        }
        for position in 0..world.names.len() {
            world.sync(position);
        }
        world
    }

    fn sync(&mut self, position: usize) {
        self.usages[position] = NodeUsage::from_bindings(&self.bindings[position]);
        let shape = placement_shape(&self.inventories[position]);
        self.index.update(&self.names[position], shape, self.statuses[position], &self.usages[position]);
    }

    fn views(&self) -> Vec<NodeView<'_>> {
        (0..self.names.len())
            .map(|position| NodeView {
                name: &self.names[position],
                inventory: &self.inventories[position],
                status: self.statuses[position],
                usage: &self.usages[position],
            })
            .collect()
    }

    fn view_of<'a>(&'a self, name: &NodeName) -> Option<NodeView<'a>> {
        let position = self.names.binary_search(name).ok()?;
        Some(self.views()[position])
    }
}

fn run(kinds: &[usize], ops: &[Op]) -> Result<(), TestCaseError> {
    let mut world = World::new(kinds);
    let mut mix = RequestMix::default();
    let mut live: Vec<Binding> = Vec::new();
    for (step, op) in ops.iter().enumerate() {
        match op {
            Op::Release(pick) if !live.is_empty() => {
                let binding = live.remove(pick % live.len());
                let position = world.names.binary_search(&binding.node).expect("bound node");
                let held = &mut world.bindings[position];
                if let Some(at) = held.iter().position(|candidate| *candidate == binding) {
                    held.remove(at);
                }
                world.sync(position);
            }
            Op::Status(node, status) => {
                let position = node % world.names.len();
                world.statuses[position] =
                    [NodeStatus::Ready, NodeStatus::Lost, NodeStatus::Cordoned][*status as usize];
                world.sync(position);
            }
            Op::Throttle(node, gpu) => {
                let position = node % world.names.len();
                let gpus = &mut world.inventories[position].gpus;
                let count = gpus.len();
                let gpu = &mut gpus[gpu % count];
                let telemetry = gpu.telemetry.get_or_insert_with(Default::default);
                if telemetry.throttle_reasons.is_empty() {
                    telemetry.throttle_reasons = vec![ThrottleReason::HwThermalSlowdown];
                } else {
                    telemetry.throttle_reasons.clear();
                }
                world.sync(position);
            }
            Op::Place { .. } => {
                let Some(request) = request(op) else { continue };
                mix.observe(&request);
                let views = world.views();
                let all = place(&request, &views);
                // The representatives decide as every node does.
                let representatives = world.index.representatives();
                let rep_views: Vec<NodeView<'_>> =
                    representatives.iter().filter_map(|rep| world.view_of(&rep.name)).collect();
                prop_assert_eq!(rep_views.len(), representatives.len());
                let by_reps = place(&request, &rep_views);
                prop_assert_eq!(
                    all.as_ref().map(|decision| &decision.binding).ok(),
                    by_reps.as_ref().map(|decision| &decision.binding).ok(),
                    "step {}: {:?}",
                    step,
                    request
                );
                prop_assert_eq!(all.is_err(), by_reps.is_err());
                if let (Err(all), Err(reps)) = (&all, &by_reps) {
                    prop_assert_eq!(all.is_impossible(), reps.is_impossible(), "step {}", step);
                }
                // So do they under the learned mix, with the twins counted back in.
                let twins: Vec<usize> = representatives.iter().map(|rep| rep.twins).collect();
                let learned_all = place_learned(&request, &views, &ClusterContext { mix: &mix, twins: &[] });
                let learned_reps = place_learned(&request, &rep_views, &ClusterContext { mix: &mix, twins: &twins });
                prop_assert_eq!(
                    learned_all.as_ref().map(|decision| &decision.binding).ok(),
                    learned_reps.as_ref().map(|decision| &decision.binding).ok(),
                    "learned, step {}: {:?}",
                    step,
                    request
                );
                drop(rep_views);
                drop(views);
                // The index decides as the exhaustive engine.
                let mut index = std::mem::take(&mut world.index);
                let decided = index.place(&request, |name| world.view_of(name));
                world.index = index;
                match (&all, &decided) {
                    (Ok(all), Some(indexed)) => {
                        prop_assert_eq!(&all.binding, &indexed.binding, "step {}: {:?}", step, request);
                        prop_assert!(indexed.explanation.to_string().contains("placed on"));
                    }
                    (Err(_), None) => {}
                    (all, indexed) => {
                        return Err(TestCaseError::fail(format!(
                            "step {step}: {request:?}: exhaustive {:?}, index {:?}",
                            all.as_ref().map(|decision| &decision.binding),
                            indexed.as_ref().map(|decision| &decision.binding)
                        )));
                    }
                }
                if let Ok(decision) = all {
                    let position = world.names.binary_search(&decision.binding.node).expect("bound node");
                    world.bindings[position].push(decision.binding.clone());
                    live.push(decision.binding);
                    world.sync(position);
                }
            }
            Op::Release(_) => {}
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Mostly twins (few machine kinds), so classes have several members.
    #[test]
    fn the_index_decides_as_the_exhaustive_engine(
        kinds in prop::collection::vec(0usize..5, 2..14),
        ops in prop::collection::vec(op(), 1..80),
    ) {
        run(&kinds, &ops)?;
    }
}

/// Bridged pairs and the cube-mesh make the choice of GPUs matter: a 2-GPU NVLink
/// request must get a bridged pair, a 4-GPU one a quad of the cube-mesh.
#[test]
fn the_index_picks_bridged_pairs_and_cube_mesh_quads() {
    let pairs: [&[u32]; 4] = [&[0, 1], &[2, 3], &[4, 5], &[6, 7]];
    let quads: [&[u32]; 2] = [&[0, 1, 2, 3], &[4, 5, 6, 7]];
    for (kinds, count, allowed) in [(vec![1usize, 1, 1], 2, &pairs[..]), (vec![2usize, 2, 2], 4, &quads[..])] {
        let mut world = World::new(&kinds);
        let request = ValidatedRequest::new(
            "ml".parse().expect("team"),
            GpuDemand::Whole { count, models: vec![] },
            0,
            MiB(0),
            Interconnect::Nvlink,
            false,
            None,
            None,
        )
        .expect("request");
        for _ in 0..3 {
            let mut index = std::mem::take(&mut world.index);
            let decided = index.place(&request, |name| world.view_of(name)).expect("placed");
            world.index = index;
            let gpus: Vec<u32> = decided.binding.gpus.iter().map(|grant| grant.index).collect();
            assert!(allowed.contains(&gpus.as_slice()), "{gpus:?}: {}", decided.explanation);
            let exhaustive = place(&request, &world.views()).expect("placed");
            assert_eq!(decided.binding, exhaustive.binding);
            let position = world.names.binary_search(&decided.binding.node).expect("node");
            world.bindings[position].push(decided.binding);
            world.sync(position);
        }
    }
}

/// A share asked when no node is ready (all lost or cordoned) is refused, under
/// the learned mix too (the scarcity model once indexed an empty supply).
#[test]
fn a_share_with_no_ready_node_is_refused() {
    let mut world = World::new(&[0, 0]);
    world.statuses = vec![NodeStatus::Lost, NodeStatus::Cordoned];
    let request = ValidatedRequest::new(
        "ml".parse().expect("team"),
        GpuDemand::Share { compute: MilliGpu(200), memory: MiB(1024) },
        0,
        MiB(0),
        Interconnect::Any,
        false,
        None,
        None,
    )
    .expect("request");
    let mut mix = RequestMix::default();
    mix.observe(&request);
    let refusal =
        place_learned(&request, &world.views(), &ClusterContext { mix: &mix, twins: &[] }).expect_err("no ready node");
    assert!(!refusal.is_impossible(), "{refusal}");
}
