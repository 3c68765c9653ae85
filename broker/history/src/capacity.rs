//! How the cluster's GPU capacity splits at one instant: held by allocations,
//! free and usable by the typical request, free but fragmented (in pieces the
//! typical request cannot use), and stranded (free on a node with no core or
//! memory left, so nothing can use it).

use serde::{Deserialize, Serialize};

/// One GPU as a sample sees it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GpuSample {
    /// `node/index`.
    pub key: String,
    pub model: String,
    /// How much of it allocations hold, in milli-GPU: 1000 for a whole GPU or a
    /// MIG-partitioned one in use, the shares' compute added up for shared ones.
    pub held_milli_gpu: u32,
    pub utilization_pct: Option<u32>,
    pub memory_used_mib: Option<u64>,
    pub temperature_c: Option<u32>,
    pub power_mw: Option<u32>,
    /// Clocks held down for a reason that costs work.
    pub throttled: bool,
}

/// One ready node as a sample sees it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeSample {
    pub gpus: Vec<GpuSample>,
    pub free_cores: u32,
    pub free_memory_mib: u64,
}

/// The split of GPU capacity, in milli-GPU.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Split {
    pub total: u64,
    pub allocated: u64,
    pub free_usable: u64,
    pub fragmented: u64,
    pub stranded: u64,
}

/// Splits the capacity of `nodes` for a typical request of `typical_milli_gpu`
/// (1000 or more: that many whole GPUs on one node; less: a share of one GPU).
///
/// - stranded: every free milli-GPU of a node without a free core or free memory;
/// - for whole-GPU requests of `g` GPUs, a node with `f` wholly free GPUs can
///   serve `floor(f / g)` of them: `g × floor(f / g)` GPUs are usable, the other
///   free GPUs and every partly used GPU's free part are fragmented;
/// - for shares of `s` milli-GPU, a GPU with `m` free can serve `floor(m / s)`:
///   `s × floor(m / s)` is usable, the rest fragmented.
pub fn classify(nodes: &[NodeSample], typical_milli_gpu: u32) -> Split {
    let typical = u64::from(typical_milli_gpu.max(1));
    let mut split = Split::default();
    for node in nodes {
        let free_of = |gpu: &GpuSample| 1000u64.saturating_sub(u64::from(gpu.held_milli_gpu));
        let node_total = 1000 * node.gpus.len() as u64;
        let node_free: u64 = node.gpus.iter().map(free_of).sum();
        split.total += node_total;
        split.allocated += node_total - node_free;
        if node.free_cores == 0 || node.free_memory_mib == 0 {
            split.stranded += node_free;
            continue;
        }
        let usable = if typical >= 1000 {
            let per_request = typical.div_ceil(1000);
            let whole_free = node.gpus.iter().filter(|gpu| gpu.held_milli_gpu == 0).count() as u64;
            (whole_free / per_request) * per_request * 1000
        } else {
            node.gpus.iter().map(|gpu| (free_of(gpu) / typical) * typical).sum()
        };
        split.free_usable += usable;
        split.fragmented += node_free - usable;
    }
    split
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(held: &[u32], free_cores: u32) -> NodeSample {
        NodeSample {
            gpus: held
                .iter()
                .enumerate()
                .map(|(index, held)| GpuSample {
                    key: format!("n/{index}"),
                    held_milli_gpu: *held,
                    ..Default::default()
                })
                .collect(),
            free_cores,
            free_memory_mib: 1024,
        }
    }

    /// One case: nodes (milli-GPU held per GPU, free cores), the typical
    /// request, and (allocated, usable, fragmented, stranded) in milli-GPU.
    fn check(nodes: &[(&[u32], u32)], typical: u32, expected: (u64, u64, u64, u64)) {
        let samples: Vec<NodeSample> = nodes.iter().map(|(held, cores)| node(held, *cores)).collect();
        let split = classify(&samples, typical);
        assert_eq!(
            (split.allocated, split.free_usable, split.fragmented, split.stranded),
            expected,
            "{nodes:?} for {typical}"
        );
        assert_eq!(split.total, split.allocated + split.free_usable + split.fragmented + split.stranded);
    }

    #[test]
    fn free_gpus_split_by_what_the_typical_request_can_use() {
        // 8 GPUs, 3 held whole: 5 free. Typical 1 GPU: all 5 usable.
        check(&[(&[1000, 1000, 1000, 0, 0, 0, 0, 0], 10)], 1000, (3000, 5000, 0, 0));
        // Typical 2 GPUs: 4 usable, 1 fragmented.
        check(&[(&[1000, 1000, 1000, 0, 0, 0, 0, 0], 10)], 2000, (3000, 4000, 1000, 0));
        // Typical 8 GPUs: none usable.
        check(&[(&[1000, 1000, 1000, 0, 0, 0, 0, 0], 10)], 8000, (3000, 0, 5000, 0));
        // A GPU shared at 300: its 700 free is fragmented for whole GPUs...
        check(&[(&[300, 0], 10)], 1000, (300, 1000, 700, 0));
        // ...and for shares of 500, 500 of it is usable, 200 fragmented.
        check(&[(&[300, 0], 10)], 500, (300, 1500, 200, 0));
        // No free core: every free GPU is stranded.
        check(&[(&[1000, 0, 0, 0], 0), (&[0, 0], 4)], 1000, (1000, 2000, 0, 3000));
        check(&[], 1000, (0, 0, 0, 0));
    }
}
