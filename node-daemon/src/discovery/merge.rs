//! Combines hwloc's view with the driver's into one inventory, and refuses an
//! inventory that contradicts itself.

use allot_api::topology::{
    Gpu, GpuHealth, Nic, NicKind, NodeInventory, NvLink, NvLinkPeer, NvSwitch, NvmeDrive, NvmlStatus,
};

use allot_api::units::PciBusId;

use super::models::{contradicting_family, gpu_model};
use super::{
    DeviceDetails, DiscoveryError, DriverGpu, GpuReport, HostTopology, OsDeviceKind, PciDevice, UnreachableGpu,
    pci_class,
};

fn is_gpu(device: &PciDevice) -> bool {
    device.vendor == pci_class::NVIDIA && matches!(device.class, pci_class::VGA | pci_class::DISPLAY_3D)
}

fn is_nvswitch(device: &PciDevice) -> bool {
    device.vendor == pci_class::NVIDIA && device.class == pci_class::BRIDGE_OTHER
}

fn is_nic(device: &PciDevice) -> bool {
    (device.class >> 8) as u8 == pci_class::NETWORK_BASE
}

fn is_nvme(device: &PciDevice) -> bool {
    device.class == pci_class::NVME
}

/// Sorts `mlx5_10` after `mlx5_9`: the text before the trailing number, then the number.
fn natural_key(name: &str) -> (String, u64) {
    let digits = name.len() - name.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    let (stem, number) = name.split_at(name.len() - digits);
    (stem.to_owned(), number.parse().unwrap_or(0))
}

/// A GPU known only from hwloc's PCI device (no NVML answer for it): no UUID,
/// memory or telemetry.
fn hwloc_only_gpu(index: u32, device: &PciDevice, nvlinks: Vec<NvLink>, health: GpuHealth) -> Gpu {
    Gpu {
        index,
        uuid: None,
        model: gpu_model(device.device, device.device_name.as_deref()),
        memory_mib: None,
        pci_bus_id: device.bus_id,
        pci_id: device.pci_id(),
        numa_node: device.numa_node(),
        cpus: device.cpus.clone(),
        nvlinks,
        mig: None,
        telemetry: None,
        health,
    }
}

/// The NVLinks hwloc recorded for one GPU, in the inventory's terms.
fn hwloc_nvlinks(host: &HostTopology, gpu: PciBusId) -> Vec<NvLink> {
    host.nvlinks
        .iter()
        .filter(|link| link.gpu == gpu)
        .map(|link| NvLink { peer: link.peer_kind, peer_pci_bus_id: link.peer, links: link.links })
        .collect()
}

fn sorted_links(links: &[NvLink]) -> Vec<(PciBusId, u32)> {
    let mut pairs: Vec<(PciBusId, u32)> = links.iter().map(|link| (link.peer_pci_bus_id, link.links)).collect();
    pairs.sort();
    pairs
}

fn describe_links(links: &[NvLink]) -> String {
    if links.is_empty() {
        return "none".to_owned();
    }
    sorted_links(links).iter().map(|(peer, count)| format!("{count} to {peer}")).collect::<Vec<_>>().join(", ")
}

/// The PCI device of a GPU NVML cannot read. Its own bus id when NVML gave one; else, when
/// NVML enumerates the GPUs in PCI bus order (as it does by default, and as every GPU it
/// could read confirms) and counts exactly the GPUs hwloc sees, the one at its index.
fn locate_unreachable<'a>(
    lost: &UnreachableGpu,
    readable: &[DriverGpu],
    unreachable: &[UnreachableGpu],
    hwloc_gpus: &[&'a PciDevice],
    nvml_count: usize,
) -> Option<&'a PciDevice> {
    if let Some(bus_id) = lost.pci_bus_id {
        return hwloc_gpus.iter().find(|device| device.bus_id == bus_id).copied();
    }
    if nvml_count != hwloc_gpus.len() {
        return None;
    }
    let mut by_bus = hwloc_gpus.to_vec();
    by_bus.sort_by_key(|device| device.bus_id);
    let in_bus_order = readable
        .iter()
        .map(|gpu| (gpu.index, gpu.pci_bus_id))
        .chain(unreachable.iter().filter_map(|other| other.pci_bus_id.map(|bus_id| (other.index, bus_id))));
    let order_holds = in_bus_order
        .clone()
        .all(|(index, bus_id)| by_bus.get(index as usize).is_some_and(|device| device.bus_id == bus_id));
    if !order_holds {
        return None;
    }
    by_bus.get(lost.index as usize).copied()
}

/// Builds the inventory. `details` fills what hwloc lacks (link speed, capacity).
pub fn merge(
    hostname: &str,
    host: HostTopology,
    report: GpuReport,
    details: &dyn DeviceDetails,
) -> Result<NodeInventory, DiscoveryError> {
    let inconsistent = |problem: String| DiscoveryError::Inconsistent { origin: host.origin.clone(), problem };
    let mut warnings = host.warnings.clone();

    let mut nvswitches: Vec<NvSwitch> = host
        .devices
        .iter()
        .filter(|device| is_nvswitch(device))
        .map(|device| NvSwitch {
            pci_bus_id: device.bus_id,
            pci_id: device.pci_id(),
            numa_node: device.numa_node(),
            pci_visible: true,
        })
        .collect();

    let hwloc_gpus: Vec<&PciDevice> = host.devices.iter().filter(|device| is_gpu(device)).collect();
    let (nvml, gpus) = match report {
        GpuReport::Absent { reason } => {
            // Without the driver, hwloc's PCI devices are all we know; number them in
            // PCI bus order, as CUDA_DEVICE_ORDER=PCI_BUS_ID and NVML do.
            let mut sorted = hwloc_gpus.clone();
            sorted.sort_by_key(|device| device.bus_id);
            let gpus = sorted
                .iter()
                .enumerate()
                .map(|(index, device)| {
                    hwloc_only_gpu(index as u32, device, hwloc_nvlinks(&host, device.bus_id), GpuHealth::Unknown)
                })
                .collect();
            (NvmlStatus::Absent { reason }, gpus)
        }
        GpuReport::Present {
            library,
            driver_version,
            cuda_driver_version,
            gpus: driver_gpus,
            unreachable,
            warnings: nvml_warnings,
        } => {
            warnings.extend(nvml_warnings);
            let disagree = |problem: String| DiscoveryError::NvmlDisagrees {
                library: library.clone(),
                origin: host.origin.clone(),
                problem,
            };
            let hwloc_has_nvlinks = !host.nvlinks.is_empty();
            let mut gpus = Vec::new();
            for driver_gpu in &driver_gpus {
                let Some(device) = hwloc_gpus.iter().find(|device| device.bus_id == driver_gpu.pci_bus_id) else {
                    return Err(disagree(format!(
                        "NVML reports GPU {} at PCI bus id {}, but hwloc's PCIe tree has no NVIDIA GPU there",
                        driver_gpu.index, driver_gpu.pci_bus_id
                    )));
                };
                if let (Some(from_driver), Some(from_hwloc)) = (driver_gpu.numa_node, device.numa_node())
                    && from_driver != from_hwloc
                {
                    warnings.push(format!(
                        "GPU {}: NVML says NUMA node {from_driver}, hwloc says {from_hwloc}; using hwloc's",
                        driver_gpu.index
                    ));
                }
                if let Some(name) = &driver_gpu.name
                    && let Some(family) = contradicting_family(device.device, name)
                {
                    warnings.push(format!(
                        "GPU {} ({}): NVML names it {name:?}, but hwloc's PCI device id {} is an {family}'s; using NVML's name (check the driver, or whether the topology was exported on this machine)",
                        driver_gpu.index,
                        driver_gpu.pci_bus_id,
                        device.pci_id()
                    ));
                }
                let mut nvlinks = Vec::new();
                for link in &driver_gpu.nvlinks {
                    let remote_is_gpu = driver_gpus.iter().any(|other| other.pci_bus_id == link.remote_pci_bus_id);
                    let remote_is_switch = nvswitches.iter().any(|switch| switch.pci_bus_id == link.remote_pci_bus_id);
                    let not_visible = link.remote_pci_bus_id.is_not_visible();
                    let peer = match link.remote_kind {
                        Some(NvLinkPeer::Gpu) if remote_is_gpu => NvLinkPeer::Gpu,
                        Some(NvLinkPeer::NvSwitch) => {
                            if !remote_is_switch {
                                // NVSwitches are not always visible on the PCI bus (in a
                                // VM, or managed by the baseboard); NVML's word will do. The
                                // all-ones id is NVML saying so itself: no warning for it.
                                if !not_visible {
                                    warnings.push(format!(
                                        "NVSwitch {} (NVLink peer of GPU {}) is not in the PCIe tree",
                                        link.remote_pci_bus_id, driver_gpu.index
                                    ));
                                }
                                nvswitches.push(NvSwitch {
                                    pci_bus_id: link.remote_pci_bus_id,
                                    pci_id: String::new(),
                                    numa_node: None,
                                    pci_visible: false,
                                });
                            }
                            NvLinkPeer::NvSwitch
                        }
                        None if remote_is_gpu => NvLinkPeer::Gpu,
                        None if remote_is_switch => NvLinkPeer::NvSwitch,
                        _ => {
                            return Err(disagree(format!(
                                "NVML reports {} NVLink link(s) from GPU {} to {}, which hwloc's PCIe tree has neither as a GPU nor as an NVSwitch",
                                link.links, driver_gpu.index, link.remote_pci_bus_id
                            )));
                        }
                    };
                    nvlinks.push(NvLink { peer, peer_pci_bus_id: link.remote_pci_bus_id, links: link.links });
                }
                if hwloc_has_nvlinks {
                    let from_hwloc = hwloc_nvlinks(&host, driver_gpu.pci_bus_id);
                    if sorted_links(&from_hwloc) != sorted_links(&nvlinks) {
                        warnings.push(format!(
                            "GPU {}: NVML reports NVLinks {}, hwloc's NVLinkBandwidth distances {}; using NVML's",
                            driver_gpu.index,
                            describe_links(&nvlinks),
                            describe_links(&from_hwloc)
                        ));
                    }
                }
                gpus.push(Gpu {
                    index: driver_gpu.index,
                    uuid: driver_gpu.uuid.clone(),
                    model: driver_gpu
                        .name
                        .clone()
                        .unwrap_or_else(|| gpu_model(device.device, device.device_name.as_deref())),
                    memory_mib: driver_gpu.memory_mib,
                    pci_bus_id: driver_gpu.pci_bus_id,
                    pci_id: device.pci_id(),
                    numa_node: device.numa_node().or(driver_gpu.numa_node),
                    cpus: device.cpus.clone(),
                    nvlinks,
                    mig: driver_gpu.mig.clone(),
                    telemetry: Some(driver_gpu.telemetry.clone()),
                    health: driver_gpu.health.clone(),
                });
            }
            let total = driver_gpus.len() + unreachable.len();
            for lost in &unreachable {
                let Some(device) = locate_unreachable(lost, &driver_gpus, &unreachable, &hwloc_gpus, total) else {
                    warnings.push(format!(
                        "GPU {}: {}; NVML gives no PCI address for it and its place cannot be inferred, so it is not listed",
                        lost.index, lost.reason
                    ));
                    continue;
                };
                warnings.push(format!(
                    "GPU {} ({}): {}; it is unhealthy and not offered until NVML answers for it again",
                    lost.index, device.bus_id, lost.reason
                ));
                // No telemetry while NVML is present marks a GPU NVML cannot reach.
                let health = GpuHealth::Unhealthy { reasons: vec![lost.reason.clone()] };
                gpus.push(hwloc_only_gpu(lost.index, device, vec![], health));
            }
            gpus.sort_by_key(|gpu| gpu.index);
            for device in &hwloc_gpus {
                if !gpus.iter().any(|gpu| gpu.pci_bus_id == device.bus_id) {
                    warnings.push(format!(
                        "NVIDIA GPU {} is on the PCI bus but NVML does not report it (bound to another driver, or excluded); it is not offered",
                        device.bus_id
                    ));
                }
            }
            (NvmlStatus::Present { library, driver_version, cuda_driver_version }, gpus)
        }
    };

    let mut nics: Vec<Nic> = host
        .devices
        .iter()
        .filter(|device| is_nic(device))
        .map(|device| {
            let netdev = device.os_device(OsDeviceKind::Network);
            let rdma_device = device.os_device(OsDeviceKind::OpenFabrics);
            let link_layer = rdma_device.and_then(|rdma| rdma.info("Port1LinkLayer"));
            let kind = if device.class == pci_class::INFINIBAND || link_layer == Some("InfiniBand") {
                NicKind::Infiniband
            } else if device.class == 0x0200 {
                NicKind::Ethernet
            } else {
                NicKind::Other
            };
            let name = netdev
                .or(rdma_device)
                .map(|os_device| os_device.name.clone())
                .unwrap_or_else(|| device.bus_id.to_string());
            Nic {
                link_speed_mbps: netdev.and_then(|netdev| details.link_speed_mbps(&netdev.name)),
                name,
                pci_bus_id: device.bus_id,
                pci_id: device.pci_id(),
                numa_node: device.numa_node(),
                kind,
                rdma: rdma_device.is_some(),
                rdma_device: rdma_device.map(|rdma| rdma.name.clone()),
            }
        })
        .collect();
    // nvidia-smi numbers NICs by their RDMA device (mlx5_0, mlx5_1, ...); do the
    // same so the two matrices line up, and put NICs without RDMA after them.
    nics.sort_by_key(|nic| (nic.rdma_device.is_none(), nic.rdma_device.as_deref().map(natural_key), nic.pci_bus_id));

    let mut nvme = Vec::new();
    for device in host.devices.iter().filter(|device| is_nvme(device)) {
        let namespaces: Vec<_> =
            device.os_devices.iter().filter(|os_device| os_device.kind == OsDeviceKind::Block).collect();
        if namespaces.is_empty() {
            nvme.push(NvmeDrive {
                name: device.bus_id.to_string(),
                pci_bus_id: device.bus_id,
                numa_node: device.numa_node(),
                capacity_bytes: None,
                model: device.device_name.clone(),
            });
        }
        for namespace in namespaces {
            // hwloc records block device sizes in KiB.
            let from_hwloc =
                namespace.info("Size").and_then(|kib| kib.trim().parse::<u64>().ok()).map(|kib| kib * 1024);
            nvme.push(NvmeDrive {
                name: namespace.name.clone(),
                pci_bus_id: device.bus_id,
                numa_node: device.numa_node(),
                capacity_bytes: from_hwloc.or_else(|| details.block_capacity_bytes(&namespace.name)),
                model: namespace.info("Model").map(str::to_owned).or_else(|| device.device_name.clone()),
            });
        }
    }

    let inventory = NodeInventory {
        hostname: hostname.to_owned(),
        cpu: host.cpu.into(),
        gpus,
        nics,
        nvme,
        nvswitches,
        pci: host.pci.into(),
        nvml,
        warnings,
    };
    inventory.validate().map_err(|error| inconsistent(error.to_string()))?;
    Ok(inventory)
}

#[cfg(test)]
mod tests {
    use allot_api::topology::{GpuTelemetry, PciNode, PciNodeKind, PciTree};
    use allot_api::units::{CpuSet, PciBusId};

    use super::*;
    use crate::discovery::{DriverNvLink, HwlocNvLink, OsDevice};

    fn bus(text: &str) -> PciBusId {
        text.parse().expect("valid bus id")
    }

    /// One host bridge per NUMA node; every device directly below its node's bridge.
    fn host(devices: &[(&str, u16, u16, u32, Vec<OsDevice>)]) -> HostTopology {
        let mut nodes = vec![
            PciNode {
                kind: PciNodeKind::HostBridge,
                bus_id: None,
                parent: None,
                numa_nodes: vec![0],
                cpus: CpuSet::default(),
            },
            PciNode {
                kind: PciNodeKind::HostBridge,
                bus_id: None,
                parent: None,
                numa_nodes: vec![1],
                cpus: CpuSet::default(),
            },
        ];
        let mut pci_devices = Vec::new();
        for (bus_id, class, device, numa, os_devices) in devices {
            nodes.push(PciNode {
                kind: PciNodeKind::Device { class: *class, vendor: 0x10de, device: *device },
                bus_id: Some(bus(bus_id)),
                parent: Some(*numa as usize),
                numa_nodes: vec![*numa],
                cpus: CpuSet::default(),
            });
            pci_devices.push(PciDevice {
                bus_id: bus(bus_id),
                class: *class,
                vendor: if *class >> 8 == 0x02 || *class == 0x0108 { 0x15b3 } else { 0x10de },
                device: *device,
                vendor_name: None,
                device_name: None,
                numa_nodes: vec![*numa],
                cpus: CpuSet::default(),
                os_devices: os_devices.clone(),
            });
        }
        HostTopology {
            pci: PciTree { nodes },
            devices: pci_devices,
            origin: "test.xml".into(),
            ..HostTopology::default()
        }
    }

    fn driver_gpu(index: u32, bus_id: &str, nvlinks: Vec<DriverNvLink>) -> DriverGpu {
        DriverGpu {
            index,
            uuid: Some(format!("GPU-{index}")),
            name: Some("NVIDIA H100 80GB HBM3".into()),
            pci_bus_id: bus(bus_id),
            memory_mib: None,
            numa_node: None,
            nvlinks,
            mig: None,
            telemetry: GpuTelemetry::default(),
            health: GpuHealth::Healthy,
        }
    }

    fn present(gpus: Vec<DriverGpu>) -> GpuReport {
        GpuReport::Present {
            library: "fake".into(),
            driver_version: None,
            cuda_driver_version: None,
            gpus,
            unreachable: vec![],
            warnings: vec![],
        }
    }

    struct NoDetails;
    impl DeviceDetails for NoDetails {
        fn link_speed_mbps(&self, interface: &str) -> Option<u64> {
            (interface == "ib0").then_some(400_000)
        }
        fn block_capacity_bytes(&self, block_device: &str) -> Option<u64> {
            (block_device == "nvme1n1").then_some(1_000)
        }
    }

    fn os(name: &str, kind: OsDeviceKind, infos: &[(&str, &str)]) -> OsDevice {
        OsDevice {
            name: name.into(),
            kind,
            infos: infos.iter().map(|(key, value)| ((*key).to_owned(), (*value).to_owned())).collect(),
        }
    }

    #[test]
    fn without_nvml_gpus_come_from_the_pci_bus_in_bus_order() {
        let host = host(&[("0000:c3:00.0", 0x0302, 0x2330, 1, vec![]), ("0000:1b:00.0", 0x0302, 0x2330, 0, vec![])]);
        let inventory = merge("n", host, GpuReport::Absent { reason: "none".into() }, &NoDetails).expect("merges");
        let ids: Vec<String> = inventory.gpus.iter().map(|gpu| gpu.pci_bus_id.to_string()).collect();
        assert_eq!(ids, ["0000:1b:00.0", "0000:c3:00.0"]);
        assert_eq!(inventory.gpus[1].index, 1);
        assert_eq!(inventory.gpus[1].numa_node, Some(1));
        assert_eq!(inventory.gpus[0].model, "NVIDIA H100 80GB HBM3");
        assert_eq!(inventory.gpus[0].health, GpuHealth::Unknown);
    }

    #[test]
    fn an_nvml_gpu_missing_from_the_pci_tree_is_a_contradiction() {
        let host = host(&[("0000:1b:00.0", 0x0302, 0x2330, 0, vec![])]);
        let report = present(vec![driver_gpu(0, "0000:1b:00.0", vec![]), driver_gpu(1, "0000:43:00.0", vec![])]);
        let error = merge("n", host, report, &NoDetails).expect_err("contradiction");
        let message = error.to_string();
        assert!(message.contains("test.xml") && message.contains("0000:43:00.0"), "{message}");
    }

    #[test]
    fn an_nvlink_to_a_gpu_that_does_not_exist_is_a_contradiction() {
        let host = host(&[("0000:1b:00.0", 0x0302, 0x2330, 0, vec![])]);
        let link =
            DriverNvLink { remote_pci_bus_id: bus("0000:99:00.0"), remote_kind: Some(NvLinkPeer::Gpu), links: 4 };
        let report = present(vec![driver_gpu(0, "0000:1b:00.0", vec![link])]);
        let error = merge("n", host, report, &NoDetails).expect_err("contradiction");
        let message = error.to_string();
        assert!(message.contains("neither as a GPU nor as an NVSwitch"), "{message}");
        assert!(message.contains("NVML (fake) and the hwloc topology test.xml disagree"), "{message}");
        assert!(!message.contains("contradicts itself"), "{message}");
    }

    fn link(remote: &str, kind: Option<NvLinkPeer>, links: u32) -> DriverNvLink {
        DriverNvLink { remote_pci_bus_id: bus(remote), remote_kind: kind, links }
    }

    #[test]
    fn nvswitches_nvml_cannot_address_are_one_fabric_without_warnings() {
        let host = host(&[("0000:1b:00.0", 0x0302, 0x2330, 0, vec![]), ("0000:43:00.0", 0x0302, 0x2330, 1, vec![])]);
        let hidden = || link("FFFFFFFF:FF:FF.0", Some(NvLinkPeer::NvSwitch), 18);
        let report =
            present(vec![driver_gpu(0, "0000:1b:00.0", vec![hidden()]), driver_gpu(1, "0000:43:00.0", vec![hidden()])]);
        let inventory = merge("n", host, report, &NoDetails).expect("merges");
        assert_eq!(inventory.link_matrices().gpu_gpu[0][1].to_string(), "NV18");
        assert_eq!(inventory.nvswitches.len(), 1, "{:?}", inventory.nvswitches);
        assert!(!inventory.nvswitches[0].pci_visible);
        assert!(inventory.nvswitches[0].pci_bus_id.is_not_visible());
        assert_eq!(inventory.warnings, Vec::<String>::new());
    }

    fn unreachable(index: u32, bus_id: Option<&str>) -> UnreachableGpu {
        UnreachableGpu { index, pci_bus_id: bus_id.map(bus), reason: "NVML reports the GPU lost".into() }
    }

    fn with_unreachable(report: GpuReport, lost: Vec<UnreachableGpu>) -> GpuReport {
        match report {
            GpuReport::Present { library, driver_version, cuda_driver_version, gpus, warnings, .. } => {
                GpuReport::Present { library, driver_version, cuda_driver_version, gpus, unreachable: lost, warnings }
            }
            absent => absent,
        }
    }

    #[test]
    fn a_lost_gpu_is_listed_unhealthy_without_telemetry_at_its_place_in_bus_order() {
        let gpus = [("0000:1b:00.0", 0), ("0000:43:00.0", 0), ("0000:52:00.0", 1)];
        let devices: Vec<_> = gpus.iter().map(|(bus_id, numa)| (*bus_id, 0x0302, 0x2330, *numa, vec![])).collect();
        // NVML could not even give GPU 1's address: its place follows from NVML's bus order.
        let report = with_unreachable(
            present(vec![driver_gpu(0, "0000:1b:00.0", vec![]), driver_gpu(2, "0000:52:00.0", vec![])]),
            vec![unreachable(1, None)],
        );
        let inventory = merge("n", host(&devices), report, &NoDetails).expect("merges");
        let lost = &inventory.gpus[1];
        assert_eq!((lost.index, lost.pci_bus_id), (1, bus("0000:43:00.0")));
        assert_eq!((lost.telemetry.as_ref(), lost.uuid.as_ref()), (None, None));
        assert!(matches!(&lost.health, GpuHealth::Unhealthy { reasons } if reasons[0].contains("lost")));
        assert!(inventory.warnings.iter().any(|w| w.contains("GPU 1 (0000:43:00.0)") && w.contains("not offered")));
        assert!(!inventory.warnings.iter().any(|w| w.contains("does not report it")), "{:?}", inventory.warnings);

        // When NVML's order is not bus order, the place cannot be inferred: said, not guessed.
        let report = with_unreachable(
            present(vec![driver_gpu(0, "0000:43:00.0", vec![]), driver_gpu(2, "0000:52:00.0", vec![])]),
            vec![unreachable(1, None)],
        );
        let inventory = merge("n", host(&devices), report, &NoDetails).expect("merges");
        assert_eq!(inventory.gpus.len(), 2);
        assert!(inventory.warnings.iter().any(|w| w.contains("cannot be inferred")), "{:?}", inventory.warnings);

        // A lost GPU whose address NVML did give is placed by it.
        let report = with_unreachable(
            present(vec![driver_gpu(0, "0000:1b:00.0", vec![])]),
            vec![unreachable(2, Some("0000:52:00.0"))],
        );
        let inventory = merge("n", host(&devices), report, &NoDetails).expect("merges");
        assert_eq!(inventory.gpus.iter().map(|gpu| gpu.index).collect::<Vec<_>>(), [0, 2]);
    }

    #[test]
    fn a_driver_name_that_contradicts_the_pci_id_is_warned_about_naming_both() {
        let host = host(&[("0000:1b:00.0", 0x0302, 0x2330, 0, vec![])]);
        let mut gpu = driver_gpu(0, "0000:1b:00.0", vec![]);
        gpu.name = Some("NVIDIA GB200".into());
        let inventory = merge("n", host, present(vec![gpu]), &NoDetails).expect("merges");
        assert_eq!(inventory.gpus[0].model, "NVIDIA GB200");
        assert!(
            inventory
                .warnings
                .iter()
                .any(|w| w.contains("\"NVIDIA GB200\"") && w.contains("10de:2330") && w.contains("H100")),
            "{:?}",
            inventory.warnings
        );
    }

    fn with_hwloc_links(mut host: HostTopology, links: &[(&str, &str, NvLinkPeer, u32)]) -> HostTopology {
        host.nvlinks = links
            .iter()
            .map(|(gpu, peer, peer_kind, links)| HwlocNvLink {
                gpu: bus(gpu),
                peer: bus(peer),
                peer_kind: *peer_kind,
                links: *links,
            })
            .collect();
        host
    }

    #[test]
    fn hwloc_nvlinks_serve_without_nvml_and_lose_to_nvml_with_a_warning() {
        let devices = [("0000:1b:00.0", 0x0302, 0x2321, 0, vec![]), ("0000:43:00.0", 0x0302, 0x2321, 0, vec![])];
        let pair = [
            ("0000:1b:00.0", "0000:43:00.0", NvLinkPeer::Gpu, 12),
            ("0000:43:00.0", "0000:1b:00.0", NvLinkPeer::Gpu, 12),
        ];
        let inventory = merge(
            "n",
            with_hwloc_links(host(&devices), &pair),
            GpuReport::Absent { reason: "none".into() },
            &NoDetails,
        )
        .expect("merges");
        assert_eq!(inventory.link_matrices().gpu_gpu[0][1].to_string(), "NV12");

        let report = present(vec![
            driver_gpu(0, "0000:1b:00.0", vec![link("0000:43:00.0", Some(NvLinkPeer::Gpu), 8)]),
            driver_gpu(1, "0000:43:00.0", vec![link("0000:1b:00.0", Some(NvLinkPeer::Gpu), 8)]),
        ]);
        let inventory = merge("n", with_hwloc_links(host(&devices), &pair), report, &NoDetails).expect("merges");
        assert_eq!(inventory.link_matrices().gpu_gpu[0][1].to_string(), "NV8");
        assert!(
            inventory.warnings.iter().any(|w| w.contains("GPU 0")
                && w.contains("8 to 0000:43:00.0")
                && w.contains("12 to 0000:43:00.0")
                && w.contains("using NVML's")),
            "{:?}",
            inventory.warnings
        );
    }

    #[test]
    fn nvswitches_count_links_and_may_be_invisible_on_the_bus() {
        let host = host(&[
            ("0000:1b:00.0", 0x0302, 0x2330, 0, vec![]),
            ("0000:43:00.0", 0x0302, 0x2330, 0, vec![]),
            ("0000:05:00.0", 0x0680, 0x22a3, 0, vec![]),
        ]);
        let to_visible = |links| DriverNvLink {
            remote_pci_bus_id: bus("0000:05:00.0"),
            remote_kind: Some(NvLinkPeer::NvSwitch),
            links,
        };
        let to_hidden = |links| DriverNvLink {
            remote_pci_bus_id: bus("0000:06:00.0"),
            remote_kind: Some(NvLinkPeer::NvSwitch),
            links,
        };
        let report = present(vec![
            driver_gpu(0, "0000:1b:00.0", vec![to_visible(9), to_hidden(9)]),
            driver_gpu(1, "0000:43:00.0", vec![to_visible(9), to_hidden(9)]),
        ]);
        let inventory = merge("n", host, report, &NoDetails).expect("merges");
        assert_eq!(inventory.link_matrices().gpu_gpu[0][1].to_string(), "NV18");
        assert_eq!(inventory.nvswitches.len(), 2);
        assert!(inventory.warnings.iter().any(|w| w.contains("0000:06:00.0")), "{:?}", inventory.warnings);
    }

    #[test]
    fn a_gpu_nvml_does_not_report_is_warned_about_not_offered() {
        let host = host(&[("0000:1b:00.0", 0x0302, 0x2330, 0, vec![]), ("0000:43:00.0", 0x0302, 0x2330, 0, vec![])]);
        let report = present(vec![driver_gpu(0, "0000:1b:00.0", vec![])]);
        let inventory = merge("n", host, report, &NoDetails).expect("merges");
        assert_eq!(inventory.gpus.len(), 1);
        assert!(inventory.warnings.iter().any(|w| w.contains("0000:43:00.0")), "{:?}", inventory.warnings);
    }

    #[test]
    fn nics_and_drives_take_names_kinds_and_sizes_from_their_os_devices() {
        let host = host(&[
            (
                "0000:1a:00.0",
                0x0207,
                0x1021,
                0,
                vec![os("ib0", OsDeviceKind::Network, &[]), os("mlx5_0", OsDeviceKind::OpenFabrics, &[])],
            ),
            ("0000:2a:00.0", 0x0200, 0x101d, 1, vec![os("ens1f0np0", OsDeviceKind::Network, &[])]),
            ("0000:3a:00.0", 0x0108, 0x0010, 0, vec![os("nvme0n1", OsDeviceKind::Block, &[("Size", "2048")])]),
            ("0000:3b:00.0", 0x0108, 0x0010, 1, vec![os("nvme1n1", OsDeviceKind::Block, &[])]),
        ]);
        let inventory = merge("n", host, GpuReport::Absent { reason: "none".into() }, &NoDetails).expect("merges");
        assert_eq!(natural_key("mlx5_10").cmp(&natural_key("mlx5_9")), std::cmp::Ordering::Greater);
        let ib = &inventory.nics[0];
        assert_eq!(
            (ib.name.as_str(), ib.kind, ib.rdma, ib.link_speed_mbps),
            ("ib0", NicKind::Infiniband, true, Some(400_000))
        );
        assert_eq!(ib.rdma_device.as_deref(), Some("mlx5_0"));
        let eth = &inventory.nics[1];
        assert_eq!((eth.kind, eth.rdma, eth.numa_node), (NicKind::Ethernet, false, Some(1)));
        assert_eq!(inventory.nvme[0].capacity_bytes, Some(2048 * 1024));
        assert_eq!(inventory.nvme[1].capacity_bytes, Some(1_000));
    }
}
