//! A fixture's PCIe tree and GPUs on this machine's real CPUs (`--host-cpus`).
//!
//! A fixture describes, say, a DGX A100 with 256 PUs; its cores do not exist on
//! the machine running the tests, so a cpuset of the broker's chosen cores could
//! not be written. This source takes the CPU side (packages, NUMA nodes, cores,
//! PUs, caches) from this machine's live hwloc and the I/O side (PCIe tree,
//! GPUs, NICs, drives) from the fixture, and maps each device's NUMA node onto
//! this machine's: fixture node `n` becomes the `n mod k`-th of this machine's
//! `k` NUMA nodes (so on a one-node machine every GPU is local to node 0). The
//! broker then chooses cores that exist, and the cpuset is really applied.

use std::collections::BTreeSet;

use allot_api::units::CpuSet;

use super::hwloc::Hwloc;
use super::{DiscoveryError, HostTopology, TopologySource};

/// The fixture's devices over this machine's CPUs.
#[derive(Debug, Clone)]
pub struct HostCpus {
    pub host: Hwloc,
    pub devices: Hwloc,
}

/// Maps fixture NUMA nodes to this machine's, and gives their CPUs.
fn remap(nodes: &[u32], host_nodes: &[(u32, CpuSet)]) -> (Vec<u32>, CpuSet) {
    if host_nodes.is_empty() {
        return (Vec::new(), CpuSet::default());
    }
    let mapped: BTreeSet<u32> = nodes.iter().map(|node| host_nodes[*node as usize % host_nodes.len()].0).collect();
    let cpus = host_nodes
        .iter()
        .filter(|(index, _)| mapped.contains(index))
        .fold(CpuSet::default(), |cpus, (_, node_cpus)| cpus.union(node_cpus));
    (mapped.into_iter().collect(), cpus)
}

/// Puts `devices`' I/O side on `host`'s CPU side.
pub fn combine(host: HostTopology, devices: HostTopology) -> HostTopology {
    let mut host_nodes: Vec<(u32, CpuSet)> =
        host.cpu.numa_nodes.iter().map(|node| (node.index, node.cpus.clone())).collect();
    host_nodes.sort_by_key(|(index, _)| *index);
    let mut pci = devices.pci;
    for node in &mut pci.nodes {
        (node.numa_nodes, node.cpus) = remap(&node.numa_nodes, &host_nodes);
    }
    let mut pci_devices = devices.devices;
    for device in &mut pci_devices {
        (device.numa_nodes, device.cpus) = remap(&device.numa_nodes, &host_nodes);
    }
    HostTopology {
        cpu: host.cpu,
        pci,
        devices: pci_devices,
        nvlinks: devices.nvlinks,
        warnings: devices.warnings,
        origin: format!("{} on the CPUs of {}", devices.origin, host.origin),
    }
}

impl TopologySource for HostCpus {
    fn discover(&self) -> Result<HostTopology, DiscoveryError> {
        let host = self.host.discover()?;
        let devices = self.devices.discover()?;
        Ok(combine(host, devices))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixture_numa_nodes_fold_onto_this_machines() {
        let one = vec![(0, "0-1".parse::<CpuSet>().expect("cpus"))];
        assert_eq!(remap(&[3], &one), (vec![0], "0-1".parse().expect("cpus")));
        let two = vec![(0, "0-3".parse::<CpuSet>().expect("cpus")), (1, "4-7".parse().expect("cpus"))];
        assert_eq!(remap(&[5], &two), (vec![1], "4-7".parse().expect("cpus")));
        assert_eq!(remap(&[0, 1], &two), (vec![0, 1], "0-7".parse().expect("cpus")));
        assert_eq!(remap(&[], &two), (vec![], CpuSet::default()));
    }
}
