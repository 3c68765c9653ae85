//! Synthetic node inventories for simulators, benchmarks and tests: a plain PCIe
//! GPU server built from a few numbers, as a trace gives them (GPU model and count,
//! cores, memory), with a believable topology.

use allot_api::topology::{
    Core, CpuTopology, Gpu, GpuHealth, GpuTelemetry, NodeInventory, NumaNode, NvmlStatus, Package, PciNode,
    PciNodeKind, PciTree,
};
use allot_api::units::{CpuSet, MiB, PciBusId};

/// The numbers that describe a PCIe GPU server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcieServer {
    pub hostname: String,
    pub gpu_model: String,
    /// At most 64 are built.
    pub gpus: u32,
    pub gpu_memory: MiB,
    /// Cores (one hardware thread each). At most 4,096 are built.
    pub cores: u32,
    pub memory: MiB,
}

/// Builds a PCIe GPU server: two NUMA nodes (one when it has fewer than 8 cores)
/// sharing cores and memory evenly, SLIT 10/21; the first half of the GPUs on NUMA
/// node 0; GPUs in pairs below one PCIe switch per pair (PIX within a pair, PHB
/// between pairs of one socket, SYS across sockets); no NVLink, no MIG, no NICs.
pub fn pcie_gpu_server(spec: &PcieServer) -> NodeInventory {
    let cores = spec.cores.min(4096);
    let gpus = spec.gpus.min(64);
    let numa_count: u32 = if cores >= 8 { 2 } else { 1 };
    let numa_of_core = |core: u32| core * numa_count / cores.max(1);
    let numa_cpus = |numa: u32| -> CpuSet { (0..cores).filter(|core| numa_of_core(*core) == numa).collect() };
    let numa_nodes: Vec<NumaNode> = (0..numa_count)
        .map(|numa| NumaNode {
            index: numa,
            memory_mib: MiB(spec.memory.0 / u64::from(numa_count)),
            cpus: numa_cpus(numa),
            distances: (0..numa_count).map(|other| if other == numa { 10 } else { 21 }).collect(),
        })
        .collect();
    let cpu = CpuTopology {
        packages: (0..numa_count)
            .map(|numa| Package { index: numa, model: None, cpus: numa_cpus(numa), numa_nodes: vec![numa] })
            .collect(),
        numa_nodes,
        cores: (0..cores)
            .map(|core| Core {
                index: core,
                package: Some(numa_of_core(core)),
                numa_node: Some(numa_of_core(core)),
                pus: CpuSet::new(vec![core]),
            })
            .collect(),
        pus: (0..cores).collect(),
        caches: vec![],
    };

    let mut pci = PciTree::default();
    let mut next_bus: u8 = 1;
    let mut bus_id = || {
        let id = PciBusId { domain: 0, bus: next_bus, device: 0, function: 0 };
        next_bus = next_bus.saturating_add(1);
        id
    };
    let add = |pci: &mut PciTree, kind: PciNodeKind, bus_id: Option<PciBusId>, parent: Option<usize>, numa| {
        pci.nodes.push(PciNode { kind, bus_id, parent, numa_nodes: vec![numa], cpus: numa_cpus(numa) });
        pci.nodes.len() - 1
    };
    let host_bridges: Vec<usize> =
        (0..numa_count).map(|numa| add(&mut pci, PciNodeKind::HostBridge, None, None, numa)).collect();
    let mut gpu_list = Vec::new();
    let mut switch = None;
    for index in 0..gpus {
        let numa = if gpus <= 1 { 0 } else { index * numa_count / gpus };
        if index % 2 == 0 {
            let root = add(&mut pci, PciNodeKind::Bridge, Some(bus_id()), Some(host_bridges[numa as usize]), numa);
            switch = Some(add(&mut pci, PciNodeKind::Bridge, Some(bus_id()), Some(root), numa));
        }
        let downstream = add(&mut pci, PciNodeKind::Bridge, Some(bus_id()), switch, numa);
        let gpu_bus = bus_id();
        add(
            &mut pci,
            PciNodeKind::Device { class: 0x0302, vendor: 0x10de, device: 0 },
            Some(gpu_bus),
            Some(downstream),
            numa,
        );
        gpu_list.push(Gpu {
            index,
            uuid: Some(format!("GPU-{}-{index}", spec.hostname)),
            model: spec.gpu_model.clone(),
            memory_mib: Some(spec.gpu_memory),
            pci_bus_id: gpu_bus,
            pci_id: "10de:0000".to_owned(),
            numa_node: Some(numa),
            cpus: numa_cpus(numa),
            nvlinks: vec![],
            mig: None,
            telemetry: Some(GpuTelemetry::default()),
            health: GpuHealth::Healthy,
        });
    }
    NodeInventory {
        hostname: spec.hostname.clone(),
        cpu: cpu.into(),
        gpus: gpu_list,
        nics: vec![],
        nvme: vec![],
        nvswitches: vec![],
        pci: pci.into(),
        nvml: NvmlStatus::Present { library: "synthetic".to_owned(), driver_version: None, cuda_driver_version: None },
        warnings: vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_synthetic_server_is_consistent_and_has_the_promised_levels() {
        let inventory = pcie_gpu_server(&PcieServer {
            hostname: "t4-1".into(),
            gpu_model: "T4".into(),
            gpus: 8,
            gpu_memory: MiB(15_360),
            cores: 96,
            memory: MiB(393_216),
        });
        assert_eq!(inventory.validate(), Ok(()));
        let levels: Vec<String> = inventory.link_matrices().gpu_gpu[0].iter().map(|level| level.to_string()).collect();
        assert_eq!(levels, ["X", "PIX", "PHB", "PHB", "SYS", "SYS", "SYS", "SYS"]);
        assert_eq!(inventory.cpu.cores.len(), 96);
        assert_eq!(inventory.gpus[7].numa_node, Some(1));
        assert_eq!(inventory.cpu.numa_nodes[1].memory_mib, MiB(196_608));
    }
}
