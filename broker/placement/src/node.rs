//! One node during one placement: its inventory and usage, and what is derived from
//! them at most once (free cores per NUMA node, free GPUs), only when needed.

use std::cell::OnceCell;

use allot_api::topology::NodeInventory;

use crate::cores::free_cores_by_numa;
use crate::gpus::{Mode, free_gpu_count};
use crate::usage::NodeUsage;

pub(crate) struct NodeCtx<'a> {
    pub inventory: &'a NodeInventory,
    pub usage: &'a NodeUsage,
    pub mode: Mode,
    free_by_numa: OnceCell<Vec<(Option<u32>, u32)>>,
    free_gpus: OnceCell<u32>,
}

impl<'a> NodeCtx<'a> {
    pub fn new(inventory: &'a NodeInventory, usage: &'a NodeUsage, mode: Mode) -> Self {
        NodeCtx { inventory, usage, mode, free_by_numa: OnceCell::new(), free_gpus: OnceCell::new() }
    }

    /// Free cores per NUMA node (see [`free_cores_by_numa`]).
    pub fn free_cores_by_numa(&self) -> &[(Option<u32>, u32)] {
        self.free_by_numa.get_or_init(|| free_cores_by_numa(self.inventory, self.usage, self.mode))
    }

    /// Healthy GPUs nobody uses.
    pub fn free_gpus(&self) -> u32 {
        *self.free_gpus.get_or_init(|| free_gpu_count(self.inventory, self.usage, self.mode))
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
