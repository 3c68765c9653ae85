//! Allot's packing policy for the broker's GPU shares: the bridge from the
//! broker's nodes (inventory and usage) and its learned task mix to the abstract
//! node state and the scoring of the `packing` module, the same code the trace
//! simulator measures.
//!
//! For a share request, every ready node becomes a [`NodeState`] (free milli-GPU
//! of each GPU that can take shares, free cores and memory, the GPU model as an
//! id), identical idle nodes the caller left out are counted back in, and each
//! GPU that could take the share is charged what Allot's policy expects the
//! placement to cost future work: the fragmentation it adds under the learned mix
//! plus the cluster-wide scarcity cost. Whole-GPU, MIG and CPU-only requests never
//! come here, so they pay nothing for it.

use allot_api::allocation::{GpuDemand, ValidatedRequest};

use crate::cores::free_memory;
use crate::fragment::{GpuPick, MAX_GPUS_PER_NODE, ModelSet, NodeState, TaskShape, WHOLE_GPU_MILLI};
use crate::gpus::Mode;
use crate::learn::RequestMix;
use crate::node::NodeCtx;
use crate::packing::{Packer, PackingPolicy};
use crate::{NodeStatus, NodeView};

/// What Allot's share policy needs besides the nodes placement is shown.
#[derive(Debug, Clone, Copy)]
pub struct ClusterContext<'a> {
    /// The task mix learned from the requests that have arrived.
    pub mix: &'a RequestMix,
    /// For each node view (same order), how many identical idle nodes it stands
    /// for that are not in the slice; empty when every node is there. They count
    /// in the cluster-wide supply of slots.
    pub twins: &'a [usize],
}

/// Model ids can only go up to 63, and 63 stands for "a model no node has".
const LAST_MODEL_ID: usize = 62;

/// The expected cost of a share on each GPU (by position in the node's
/// inventory), for every node view; `None` where the node is not ready or the GPU
/// cannot take the share.
pub(crate) type ShareCosts = Vec<Vec<Option<f64>>>;

/// Allot's cost of the share on every GPU of every ready node, or `None` when the
/// request is not a share.
pub(crate) fn share_costs(
    request: &ValidatedRequest,
    nodes: &[NodeView<'_>],
    context: &ClusterContext<'_>,
) -> Option<ShareCosts> {
    let GpuDemand::Share { compute, .. } = &request.gpus else {
        return None;
    };
    let mut models: Vec<String> = nodes
        .iter()
        .filter(|view| view.status == NodeStatus::Ready)
        .filter_map(|view| view.inventory.gpus.first().map(|gpu| gpu.model.to_lowercase()))
        .collect();
    models.sort();
    models.dedup();
    let model_id = |model: &str| models.binary_search(&model.to_lowercase()).map_or(0, |id| id.min(LAST_MODEL_ID));
    let model_ids = |wanted: &str| {
        let wanted = wanted.to_lowercase();
        models
            .iter()
            .enumerate()
            .filter(|(_, model)| model.contains(&wanted))
            .fold(ModelSet::ANY, |set, (id, _)| set.with(id.min(LAST_MODEL_ID) as u8))
    };
    let states: Vec<Option<NodeState>> = nodes
        .iter()
        .map(|view| {
            (view.status == NodeStatus::Ready).then(|| {
                let model = view.inventory.gpus.first().map_or(0, |gpu| model_id(&gpu.model));
                node_state(view, model as u8)
            })
        })
        .collect();
    let mut cluster: Vec<NodeState> = Vec::with_capacity(nodes.len());
    for (index, state) in states.iter().enumerate() {
        if let Some(state) = state {
            let copies = 1 + context.twins.get(index).copied().unwrap_or(0);
            cluster.extend(std::iter::repeat_n(*state, copies));
        }
    }
    let mix = context.mix.shape_mix(&model_ids, Some(request));
    let mut packer = Packer::new(PackingPolicy::Allot, mix);
    packer.allot_prepare(&cluster);
    let milli = u16::try_from(compute.0.min(u32::from(WHOLE_GPU_MILLI))).unwrap_or(WHOLE_GPU_MILLI);
    let task = TaskShape {
        cpu_milli: request.cpus.saturating_mul(1000),
        memory_mib: request.memory.0,
        gpu_count: 1,
        gpu_milli: milli,
        models: ModelSet::ANY,
    };
    let costs = states
        .iter()
        .zip(nodes)
        .map(|(state, view)| {
            let mut by_position = vec![None; view.inventory.gpus.len()];
            if let Some(state) = state {
                for (position, free) in state.gpus().iter().enumerate() {
                    if *free >= milli {
                        by_position[position] =
                            Some(packer.allot_score(state, &task, GpuPick::Share(position as u8)).fragment_added);
                    }
                }
            }
            by_position
        })
        .collect();
    Some(costs)
}

/// One ready node as packing sees it. A GPU offers shares only when it is
/// healthy, nobody has it whole and MIG is off; its free milli-GPU is what the
/// shares on it leave. GPUs past the sixteenth are not represented.
fn node_state(view: &NodeView<'_>, model: u8) -> NodeState {
    let node = NodeCtx::new(view.inventory, view.usage, Mode::Now);
    let count = view.inventory.gpus.len().min(MAX_GPUS_PER_NODE);
    let cores = u32::try_from(view.inventory.cpu.cores.len()).unwrap_or(u32::MAX);
    let free_cores = cores.saturating_sub(view.usage.cores_taken());
    let mut state = NodeState::idle(
        count as u8,
        model,
        free_cores.saturating_mul(1000),
        free_memory(view.inventory, view.usage, Mode::Now).0,
    );
    for gpu in node.gpus() {
        if gpu.position >= count {
            continue;
        }
        let index = view.inventory.gpus[gpu.position].index;
        let free = if gpu.unhealthy || gpu.mig_active || view.usage.is_whole(index) {
            0
        } else {
            let used = view.usage.share(index).map_or(0, |load| load.compute.0);
            u32::from(WHOLE_GPU_MILLI).saturating_sub(used) as u16
        };
        state.gpu_free[gpu.position] = free;
    }
    state
}

#[cfg(test)]
mod tests {
    use allot_api::allocation::{Interconnect, MilliGpu, NodeName};
    use allot_api::units::MiB;

    use super::*;
    use crate::synthetic::{PcieServer, pcie_gpu_server};
    use crate::{NodeUsage, place, place_learned};

    fn share(milli: u32, cpus: u32) -> ValidatedRequest {
        let demand = GpuDemand::Share { compute: MilliGpu(milli), memory: MiB(4096) };
        ValidatedRequest::new(
            "ml".parse().expect("team"),
            demand,
            cpus,
            MiB(1024),
            Interconnect::Any,
            false,
            None,
            None,
        )
        .expect("a valid request")
    }

    fn server(name: &str, gpus: u32) -> (NodeName, allot_api::topology::NodeInventory) {
        let spec = PcieServer {
            hostname: name.to_owned(),
            gpu_model: "NVIDIA L40S".to_owned(),
            gpus,
            gpu_memory: MiB(46_068),
            cores: 32,
            memory: MiB(256 * 1024),
        };
        (name.parse().expect("node name"), pcie_gpu_server(&spec))
    }

    /// The granted GPU index of a share decision.
    fn gpu_of(decision: &crate::Decision) -> (String, u32) {
        (decision.binding.node.to_string(), decision.binding.gpus[0].index)
    }

    #[test]
    fn broker_shares_follow_allot_where_best_fit_strands_a_leftover() {
        // One node, two GPUs; GPU 0 already carries a 400 milli-GPU share. The
        // workload so far is 500 milli-GPU shares. Best fit puts the next 500 on
        // GPU 0 (already shared, 100 left), where the 100 left can never serve the
        // workload. Allot puts it on GPU 1: 500 left there still serve one more
        // task, and both choices take one slot of the class.
        let (name, inventory) = server("gpu-a", 2);
        let mut usage = NodeUsage::default();
        let first = {
            let views = [NodeView { name: &name, inventory: &inventory, status: NodeStatus::Ready, usage: &usage }];
            place(&share(400, 1), &views).expect("room")
        };
        assert_eq!(gpu_of(&first), ("gpu-a".to_owned(), 0));
        usage.add(&first.binding);
        let views = [NodeView { name: &name, inventory: &inventory, status: NodeStatus::Ready, usage: &usage }];
        let mut mix = RequestMix::default();
        for _ in 0..20 {
            mix.observe(&share(500, 1));
        }
        let request = share(500, 1);
        let best_fit = place(&request, &views).expect("room");
        assert_eq!(gpu_of(&best_fit), ("gpu-a".to_owned(), 0), "best fit fills the shared GPU");
        let context = ClusterContext { mix: &mix, twins: &[] };
        let allot = place_learned(&request, &views, &context).expect("room");
        assert_eq!(gpu_of(&allot), ("gpu-a".to_owned(), 1), "Allot keeps a usable 500 on both GPUs");
        let why = allot.explanation.chosen.clone().unwrap_or_default();
        assert!(why.contains("a share of GPU 1") && why.contains("expected cost"), "{why}");
    }

    #[test]
    fn identical_idle_nodes_left_out_count_as_if_listed() {
        // The broker lists one of several identical idle nodes; the supply of
        // slots must be what the whole cluster holds, so the costs are those of
        // placement shown every node.
        let servers: Vec<_> = ["gpu-a", "gpu-b", "gpu-c", "gpu-d"].iter().map(|name| server(name, 1)).collect();
        let usage = NodeUsage::default();
        let views: Vec<NodeView<'_>> = servers
            .iter()
            .map(|(name, inventory)| NodeView { name, inventory, status: NodeStatus::Ready, usage: &usage })
            .collect();
        let whole = ValidatedRequest::new(
            "ml".parse().expect("team"),
            GpuDemand::Whole { count: 1, models: vec![] },
            1,
            MiB(1024),
            Interconnect::Any,
            false,
            None,
            None,
        )
        .expect("a valid request");
        let mut mix = RequestMix::default();
        for _ in 0..10 {
            mix.observe(&whole);
            mix.observe(&share(300, 1));
        }
        let request = share(300, 1);
        let listed = share_costs(&request, &views, &ClusterContext { mix: &mix, twins: &[] }).expect("a share");
        let twins = share_costs(&request, &views[..1], &ClusterContext { mix: &mix, twins: &[3] }).expect("a share");
        let alone = share_costs(&request, &views[..1], &ClusterContext { mix: &mix, twins: &[] }).expect("a share");
        assert_eq!(listed[0], twins[0]);
        assert_ne!(alone[0], twins[0], "one node alone is a different cluster");
        // A whole-GPU request is not a share: nothing is computed for it.
        assert!(share_costs(&whole, &views, &ClusterContext { mix: &mix, twins: &[] }).is_none());
    }
}
