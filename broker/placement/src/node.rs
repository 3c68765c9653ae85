//! One node during one placement: its inventory and usage, and what is derived from
//! them at most once (each GPU's state, free cores per NUMA node), only when needed.

use std::cell::OnceCell;

use allot_api::topology::NodeInventory;

use crate::cores::free_cores_by_numa;
use crate::gpus::{Mode, is_throttling, is_unhealthy, mig_active, positions_by_index};
use crate::usage::NodeUsage;

/// One GPU's state during a placement. In [`Mode::Ever`] every flag is false: the
/// node is idle, repaired, and its MIG modes can change.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GpuState {
    /// Position in `NodeInventory::gpus`.
    pub position: usize,
    pub numa: Option<u32>,
    pub unhealthy: bool,
    /// Granted whole, or carrying MIG instances or shares.
    pub in_use: bool,
    /// MIG is (or is about to be) enabled.
    pub mig_active: bool,
    pub throttling: bool,
}

impl GpuState {
    /// Healthy and used by nobody.
    pub fn free(&self) -> bool {
        !self.unhealthy && !self.in_use
    }
}

pub(crate) struct NodeCtx<'a> {
    pub inventory: &'a NodeInventory,
    pub usage: &'a NodeUsage,
    pub mode: Mode,
    gpus: OnceCell<Vec<GpuState>>,
    free_by_numa: OnceCell<Vec<(Option<u32>, u32)>>,
}

impl<'a> NodeCtx<'a> {
    pub fn new(inventory: &'a NodeInventory, usage: &'a NodeUsage, mode: Mode) -> Self {
        NodeCtx { inventory, usage, mode, gpus: OnceCell::new(), free_by_numa: OnceCell::new() }
    }

    /// Every GPU's state, in GPU index order.
    pub fn gpus(&self) -> &[GpuState] {
        self.gpus.get_or_init(|| {
            let now = self.mode == Mode::Now;
            positions_by_index(self.inventory)
                .map(|position| {
                    let gpu = &self.inventory.gpus[position];
                    GpuState {
                        position,
                        numa: gpu.numa_node,
                        unhealthy: now && is_unhealthy(gpu),
                        in_use: now && self.usage.gpu_in_use(gpu.index),
                        mig_active: now && mig_active(gpu, self.usage),
                        throttling: now && is_throttling(gpu),
                    }
                })
                .collect()
        })
    }

    /// Free cores per NUMA node (see [`free_cores_by_numa`]).
    pub fn free_cores_by_numa(&self) -> &[(Option<u32>, u32)] {
        self.free_by_numa.get_or_init(|| free_cores_by_numa(self.inventory, self.usage, self.mode))
    }

    /// Healthy GPUs nobody uses.
    pub fn free_gpus(&self) -> u32 {
        self.gpus().iter().filter(|gpu| gpu.free()).count() as u32
    }

    /// Whether `wanted` cores local to GPUs on these NUMA nodes would have to spill
    /// to other NUMA nodes. GPUs of unknown locality never make cores spill.
    pub fn cores_spill(&self, gpu_numa_nodes: impl Iterator<Item = Option<u32>> + Clone, wanted: u32) -> bool {
        if wanted == 0 || gpu_numa_nodes.clone().all(|numa| numa.is_none()) {
            return false;
        }
        let local_free: u32 = self
            .free_cores_by_numa()
            .iter()
            .filter(|(numa, _)| numa.is_some() && gpu_numa_nodes.clone().any(|gpu_numa| gpu_numa == *numa))
            .map(|(_, free)| *free)
            .sum();
        local_free < wanted
    }
}
