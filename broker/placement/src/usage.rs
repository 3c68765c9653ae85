//! What is already taken on one node, derived from the bindings of the allocations
//! that hold capacity there.
//!
//! The broker keeps allocations, not counters: [`NodeUsage::from_bindings`] rebuilds
//! the usage from them, so it can never drift from what was granted.

use std::collections::{BTreeMap, BTreeSet};

use allot_api::allocation::{Binding, MilliGpu};
use allot_api::units::MiB;

/// A MIG instance an allocation owns: its first memory slice, how many it takes,
/// and its NVML profile id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MigSlot {
    pub start: u32,
    pub size: u32,
    pub profile_id: u32,
}

impl MigSlot {
    pub fn overlaps(&self, start: u32, size: u32) -> bool {
        self.start < start.saturating_add(size) && start < self.start.saturating_add(self.size)
    }
}

/// The shares granted on one GPU, added up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ShareLoad {
    pub compute: MilliGpu,
    pub memory: MiB,
    /// How many shares.
    pub count: u32,
}

/// Core indices below this are kept in a bit set (fast to test); larger ones, which
/// no real machine has, in an ordered set, so a corrupt binding cannot make us
/// allocate gigabytes.
const CORE_BITS_LIMIT: u32 = 1 << 16;

/// A set of core indices, quick to test for the few hundred cores of a server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
struct CoreSet {
    bits: Vec<u64>,
    overflow: BTreeSet<u32>,
    len: u32,
}

impl CoreSet {
    fn insert(&mut self, index: u32) {
        if index >= CORE_BITS_LIMIT {
            if self.overflow.insert(index) {
                self.len += 1;
            }
            return;
        }
        let word = (index / 64) as usize;
        if self.bits.len() <= word {
            self.bits.resize(word + 1, 0);
        }
        let bit = 1u64 << (index % 64);
        if self.bits[word] & bit == 0 {
            self.bits[word] |= bit;
            self.len += 1;
        }
    }

    fn contains(&self, index: u32) -> bool {
        if index >= CORE_BITS_LIMIT {
            return self.overflow.contains(&index);
        }
        self.bits.get((index / 64) as usize).is_some_and(|word| word & (1u64 << (index % 64)) != 0)
    }
}

/// Everything taken on one node: whole GPUs, MIG instances, GPU shares, cores and
/// memory. GPUs are named by their index (`Gpu::index`), as in [`Binding`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct NodeUsage {
    whole: BTreeSet<u32>,
    mig: BTreeMap<u32, Vec<MigSlot>>,
    shares: BTreeMap<u32, ShareLoad>,
    /// GPUs below index 64 used in any way, as bits: placement asks this for every
    /// GPU of every node on every request.
    in_use_bits: u64,
    /// GPUs of index 64 and above used in any way (no real machine has them).
    in_use_high: BTreeSet<u32>,
    cores: CoreSet,
    memory: MiB,
}

impl NodeUsage {
    /// The usage of the bindings given; pass those of the allocations that hold
    /// capacity (`AllocationState::holds_capacity`) on this one node.
    pub fn from_bindings<'b>(bindings: impl IntoIterator<Item = &'b Binding>) -> Self {
        let mut usage = NodeUsage::default();
        for binding in bindings {
            usage.add(binding);
        }
        usage
    }

    /// Adds one binding's GPUs, MIG instances, shares, cores and memory.
    pub fn add(&mut self, binding: &Binding) {
        for grant in &binding.gpus {
            if grant.index < 64 {
                self.in_use_bits |= 1u64 << grant.index;
            } else {
                self.in_use_high.insert(grant.index);
            }
            match (&grant.mig, &grant.share) {
                (Some(mig), _) => {
                    let slots = self.mig.entry(grant.index).or_default();
                    let slot = MigSlot { start: mig.start, size: mig.size, profile_id: mig.profile_id };
                    let position = slots.partition_point(|existing| *existing < slot);
                    slots.insert(position, slot);
                }
                (None, Some(share)) => {
                    let load = self.shares.entry(grant.index).or_default();
                    load.compute = MilliGpu(load.compute.0.saturating_add(share.compute.0));
                    load.memory = MiB(load.memory.0.saturating_add(share.memory.0));
                    load.count = load.count.saturating_add(1);
                }
                (None, None) => {
                    self.whole.insert(grant.index);
                }
            }
        }
        for core in &binding.cores {
            self.cores.insert(*core);
        }
        self.memory = MiB(self.memory.0.saturating_add(binding.memory.0));
    }

    /// Whether nothing at all is taken.
    pub fn is_empty(&self) -> bool {
        *self == NodeUsage::default()
    }

    /// GPUs granted whole, by index.
    pub fn whole_gpus(&self) -> impl Iterator<Item = u32> + '_ {
        self.whole.iter().copied()
    }

    pub fn is_whole(&self, gpu: u32) -> bool {
        self.gpu_in_use(gpu) && self.whole.contains(&gpu)
    }

    /// MIG instances owned on this GPU, ordered by start slot.
    pub fn mig_slots(&self, gpu: u32) -> &[MigSlot] {
        if !self.gpu_in_use(gpu) {
            return &[];
        }
        self.mig.get(&gpu).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The shares granted on this GPU, added up.
    pub fn share(&self, gpu: u32) -> Option<ShareLoad> {
        if !self.gpu_in_use(gpu) {
            return None;
        }
        self.shares.get(&gpu).copied()
    }

    /// Whether any allocation uses this GPU in any way.
    pub fn gpu_in_use(&self, gpu: u32) -> bool {
        if gpu < 64 { self.in_use_bits & (1u64 << gpu) != 0 } else { self.in_use_high.contains(&gpu) }
    }

    /// How many distinct GPUs are used in any way.
    pub fn gpus_in_use(&self) -> u32 {
        self.in_use_bits.count_ones() + self.in_use_high.len() as u32
    }

    pub fn core_taken(&self, core: u32) -> bool {
        self.cores.contains(core)
    }

    /// How many distinct cores are taken.
    pub fn cores_taken(&self) -> u32 {
        self.cores.len
    }

    /// Memory granted, summed over the node.
    pub fn memory(&self) -> MiB {
        self.memory
    }
}

#[cfg(test)]
mod tests {
    use allot_api::allocation::{GpuGrant, MigGrant, ShareGrant};

    use super::*;

    fn grant(index: u32, mig: Option<(u32, u32)>, share: Option<(u32, u64)>) -> GpuGrant {
        GpuGrant {
            index,
            uuid: None,
            pci_bus_id: String::new(),
            mig: mig.map(|(start, size)| MigGrant { profile: "x".into(), profile_id: 9, start, size, recarve: false }),
            share: share.map(|(compute, memory)| ShareGrant { compute: MilliGpu(compute), memory: MiB(memory) }),
            nic: None,
        }
    }

    fn binding(gpus: Vec<GpuGrant>, cores: Vec<u32>, memory: u64) -> Binding {
        Binding {
            node: "n".parse().expect("node name"),
            gpus,
            cpus: vec![],
            cores,
            memory: MiB(memory),
            numa_nodes: vec![],
        }
    }

    #[test]
    fn usage_adds_up_every_kind_of_grant() {
        let bindings = [
            binding(vec![grant(0, None, None), grant(1, None, None)], vec![0, 1, 70_000], 100),
            binding(vec![grant(2, Some((4, 4)), None)], vec![2], 50),
            binding(vec![grant(2, Some((0, 1)), None)], vec![], 0),
            binding(vec![grant(3, None, Some((250, 1000)))], vec![3], 0),
            binding(vec![grant(3, None, Some((500, 2000)))], vec![3], 0),
        ];
        let usage = NodeUsage::from_bindings(&bindings);
        assert_eq!(usage.whole_gpus().collect::<Vec<_>>(), vec![0, 1]);
        let starts: Vec<u32> = usage.mig_slots(2).iter().map(|slot| slot.start).collect();
        assert_eq!(starts, vec![0, 4]);
        assert_eq!(usage.share(3), Some(ShareLoad { compute: MilliGpu(750), memory: MiB(3000), count: 2 }));
        assert!(usage.gpu_in_use(2) && !usage.gpu_in_use(4));
        assert_eq!(usage.gpus_in_use(), 4);
        let high = NodeUsage::from_bindings(&[binding(vec![grant(70, None, None), grant(1, None, None)], vec![], 0)]);
        assert!(high.gpu_in_use(70) && high.is_whole(70) && !high.gpu_in_use(69));
        assert_eq!(high.gpus_in_use(), 2);
        assert_eq!(usage.cores_taken(), 5, "core 3 twice counts once");
        assert!(usage.core_taken(70_000) && !usage.core_taken(69_999));
        assert_eq!(usage.memory(), MiB(150));
        assert!(!usage.is_empty() && NodeUsage::default().is_empty());
    }

    #[test]
    fn mig_slots_overlap_only_when_they_share_a_slice() {
        let slot = MigSlot { start: 4, size: 2, profile_id: 14 };
        for (start, size, expected) in [(0, 4, false), (2, 2, false), (3, 2, true), (5, 1, true), (6, 2, false)] {
            assert_eq!(slot.overlaps(start, size), expected, "{start}+{size}");
        }
    }
}
