//! GPU shares: which GPU carries a fraction of its compute and a slice of its memory
//! for a request, and the policy that ranks the candidates.
//!
//! A GPU takes shares when MIG is off on it, nobody has it whole, and the shares
//! fit: compute adds up to at most 1000 milli-GPU and memory to at most the GPU's.

use allot_api::allocation::{MilliGpu, ShareGrant};
use allot_api::units::MiB;

use crate::explain::{GpuExclusions, NodeRefusal};
use crate::gpus::{GpuFilter, Mode, has_rdma_nic, passes_filter};
use crate::node::NodeCtx;
use crate::score::ShareScore;

/// How shares are packed onto GPUs. A trace simulator compares policies; new ones
/// are new variants of [`SharePolicy::rank`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SharePolicy {
    /// Allot's packing policy (`packing::PackingPolicy::Allot`): the GPU whose
    /// share is expected to cost future work least, that is the fragmentation it
    /// adds under the learned task mix plus the cluster-wide scarcity cost; then
    /// as best fit. It needs the learned mix ([`crate::place_learned`]); without
    /// one ([`crate::place`]) nothing is known of the workload and it ranks as
    /// best fit.
    #[default]
    Allot,
    /// The GPU left with the least free capacity (compute and memory, each as a
    /// fraction of the GPU, added), GPUs already shared before fresh ones: keeps
    /// whole GPUs free and fragments least.
    BestFit,
    /// The GPU left with the most free capacity: spreads shares out, so each gets
    /// the most headroom (interference aside), at the cost of fragmentation.
    WorstFit,
}

/// One GPU that could take the share, as the policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShareCandidate {
    pub compute_left: MilliGpu,
    pub memory_left: MiB,
    pub gpu_memory: MiB,
    pub shared_before: bool,
    pub throttling: bool,
    pub cores_spill: bool,
    pub free_gpus_after: u32,
    /// Allot's policy only: the expected milli-GPU of future work the share
    /// costs, in thousandths (see [`quantize_cost`]).
    pub expected_cost: Option<i64>,
}

/// An expected cost in milli-GPU as thousandths of milli-GPU, rounded, so that
/// equal placements compare equal despite floating-point noise.
pub fn quantize_cost(cost: f64) -> i64 {
    if cost.is_finite() { (cost * 1000.0).round().clamp(-1e15, 1e15) as i64 } else { i64::MAX / 2 }
}

/// A cost in thousandths of milli-GPU as a rank word: order-preserving.
fn cost_rank(cost: i64) -> u32 {
    (cost.clamp(-(1 << 31), (1 << 31) - 1) + (1 << 31)) as u32
}

impl ShareCandidate {
    /// Free capacity left, in millionths: compute and memory each as a fraction of
    /// the GPU (0 to 1,000,000), added.
    pub fn leftover_ppm(&self) -> u32 {
        let compute = self.compute_left.0.min(1000) * 1000;
        let memory = if self.gpu_memory.0 == 0 {
            0
        } else {
            (u128::from(self.memory_left.0.min(self.gpu_memory.0)) * 1_000_000 / u128::from(self.gpu_memory.0)) as u32
        };
        compute + memory
    }
}

impl SharePolicy {
    /// What the policy ranks candidates by, smallest first. Ties break by node
    /// name, then GPU index.
    pub fn rank(&self, candidate: &ShareCandidate) -> [u32; 4] {
        let flags = u32::from(candidate.throttling) * 2 + u32::from(candidate.cores_spill);
        match (self, candidate.expected_cost) {
            (SharePolicy::Allot, Some(cost)) => {
                [flags, cost_rank(cost), u32::from(!candidate.shared_before), candidate.leftover_ppm()]
            }
            (SharePolicy::BestFit | SharePolicy::Allot, _) => {
                [flags, u32::from(!candidate.shared_before), candidate.leftover_ppm(), candidate.free_gpus_after]
            }
            (SharePolicy::WorstFit, _) => [flags, 0, 2_000_000 - candidate.leftover_ppm(), 0],
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            SharePolicy::Allot => "allot",
            SharePolicy::BestFit => "best-fit",
            SharePolicy::WorstFit => "worst-fit",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct ShareAsk<'r> {
    pub compute: MilliGpu,
    pub memory: MiB,
    pub filter: GpuFilter<'r>,
    pub cpus: u32,
    pub policy: SharePolicy,
    /// Allot's expected cost of the share on each GPU of this node, by position
    /// (see `learned::share_costs`); `None` without a learned mix.
    pub costs: Option<&'r [Option<f64>]>,
}

#[derive(Debug, Clone)]
pub(crate) struct ShareOffer {
    pub score: ShareScore,
    pub position: usize,
    pub grant: ShareGrant,
}

pub(crate) fn evaluate(node: &NodeCtx<'_>, ask: &ShareAsk<'_>) -> Result<ShareOffer, NodeRefusal> {
    let inventory = node.inventory;
    let mut excluded = GpuExclusions::default();
    let mut best: Option<ShareOffer> = None;
    for state in node.gpus() {
        let position = state.position;
        let gpu = &inventory.gpus[position];
        if !passes_filter(gpu, &ask.filter, node.mode, &mut excluded) {
            continue;
        }
        let Some(gpu_memory) = gpu.memory_mib else {
            // Without the GPU's memory, the cap cannot be checked.
            excluded.too_small += 1;
            continue;
        };
        let load = match node.mode {
            Mode::Now => {
                if node.usage.is_whole(gpu.index) {
                    excluded.in_use += 1;
                    continue;
                }
                if state.mig_active {
                    excluded.mig_enabled += 1;
                    continue;
                }
                node.usage.share(gpu.index).unwrap_or_default()
            }
            Mode::Ever => Default::default(),
        };
        let compute_after = load.compute.0.saturating_add(ask.compute.0);
        let memory_after = load.memory.0.saturating_add(ask.memory.0);
        if compute_after > MilliGpu::WHOLE.0 || memory_after > gpu_memory.0 {
            excluded.full += 1;
            continue;
        }
        if !has_rdma_nic(inventory, position, &ask.filter, &mut excluded) {
            continue;
        }
        let shared_before = load.count > 0;
        let expected_cost = match (ask.policy, ask.costs) {
            // A GPU the abstract state cannot represent ranks after those it can.
            (SharePolicy::Allot, Some(costs)) => {
                Some(quantize_cost(costs.get(position).copied().flatten().unwrap_or(f64::INFINITY)))
            }
            _ => None,
        };
        let candidate = ShareCandidate {
            compute_left: MilliGpu(MilliGpu::WHOLE.0 - compute_after),
            memory_left: MiB(gpu_memory.0 - memory_after),
            gpu_memory,
            shared_before,
            throttling: state.throttling,
            cores_spill: node.cores_spill(std::iter::once(gpu.numa_node), ask.cpus),
            free_gpus_after: node.free_gpus().saturating_sub(u32::from(!shared_before)),
            expected_cost,
        };
        let score = ShareScore {
            rank: ask.policy.rank(&candidate),
            throttling: candidate.throttling,
            cores_spill: candidate.cores_spill,
            shared_before,
            compute_left: candidate.compute_left,
            memory_left: candidate.memory_left,
            free_gpus_after: candidate.free_gpus_after,
            expected_cost,
        };
        if best.as_ref().is_none_or(|best| score < best.score) {
            best = Some(ShareOffer { score, position, grant: ShareGrant { compute: ask.compute, memory: ask.memory } });
        }
    }
    best.ok_or(NodeRefusal::NoShareRoom { excluded })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(compute_left: u32, memory_left: u64, shared_before: bool) -> ShareCandidate {
        ShareCandidate {
            compute_left: MilliGpu(compute_left),
            memory_left: MiB(memory_left),
            gpu_memory: MiB(40_000),
            shared_before,
            throttling: false,
            cores_spill: false,
            free_gpus_after: 0,
            expected_cost: None,
        }
    }

    #[test]
    fn best_fit_prefers_shared_then_tight_and_worst_fit_the_opposite() {
        let tight = candidate(100, 4_000, true);
        let loose = candidate(600, 30_000, true);
        let fresh = candidate(50, 1_000, false);
        assert_eq!(tight.leftover_ppm(), 100_000 + 100_000);
        let best = SharePolicy::BestFit;
        assert!(best.rank(&tight) < best.rank(&loose));
        assert!(best.rank(&loose) < best.rank(&fresh), "an already shared GPU before a fresh one");
        let worst = SharePolicy::WorstFit;
        assert!(worst.rank(&loose) < worst.rank(&tight));
        let throttling = ShareCandidate { throttling: true, ..tight };
        assert!(best.rank(&fresh) < best.rank(&throttling));
    }
}
