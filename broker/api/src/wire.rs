//! Conversion between the domain types and their protobuf form.
//!
//! Outgoing conversions cannot fail. Incoming ones validate everything a peer could
//! get wrong and name the field: `gpus[3].pci_bus_id: invalid PCI bus id "zz"`.

mod allocation;

use crate::proto;
use crate::topology::{
    CacheKind, CacheLevel, Core, CpuTopology, Gpu, GpuHealth, GpuTelemetry, MigInfo, MigInstance, MigMode, MigProfile,
    Nic, NicKind, NodeInventory, NumaNode, NvLink, NvLinkPeer, NvSwitch, NvmeDrive, NvmlStatus, Package, PciNode,
    PciNodeKind, PciTree, ThrottleReason,
};
use crate::units::{CpuSet, MiB, PciBusId};

/// A message from the wire that does not make sense.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct WireError {
    pub field: String,
    pub problem: String,
}

pub(crate) fn wire_error(field: impl Into<String>, problem: impl ToString) -> WireError {
    WireError { field: field.into(), problem: problem.to_string() }
}

fn bus_id(field: &str, text: &str) -> Result<PciBusId, WireError> {
    text.parse().map_err(|error| wire_error(field, error))
}

fn cpus(field: &str, text: &str) -> Result<CpuSet, WireError> {
    text.parse().map_err(|error| wire_error(field, error))
}

fn small(field: &str, value: u32) -> Result<u16, WireError> {
    u16::try_from(value).map_err(|_| wire_error(field, format!("{value} does not fit in 16 bits")))
}

impl From<&NodeInventory> for proto::NodeInventory {
    fn from(inventory: &NodeInventory) -> Self {
        proto::NodeInventory {
            hostname: inventory.hostname.clone(),
            cpu: Some(inventory.cpu.as_ref().into()),
            gpus: inventory.gpus.iter().map(Into::into).collect(),
            nics: inventory.nics.iter().map(Into::into).collect(),
            nvme: inventory
                .nvme
                .iter()
                .map(|drive| proto::NvmeDrive {
                    name: drive.name.clone(),
                    pci_bus_id: drive.pci_bus_id.to_string(),
                    numa_node: drive.numa_node,
                    capacity_bytes: drive.capacity_bytes,
                    model: drive.model.clone(),
                })
                .collect(),
            nvswitches: inventory
                .nvswitches
                .iter()
                .map(|switch| proto::NvSwitch {
                    pci_bus_id: switch.pci_bus_id.to_string(),
                    pci_id: switch.pci_id.clone(),
                    numa_node: switch.numa_node,
                    not_pci_visible: !switch.pci_visible,
                })
                .collect(),
            pci_nodes: inventory.pci.nodes.iter().map(Into::into).collect(),
            nvml: Some((&inventory.nvml).into()),
            warnings: inventory.warnings.clone(),
        }
    }
}

impl TryFrom<proto::NodeInventory> for NodeInventory {
    type Error = WireError;

    fn try_from(message: proto::NodeInventory) -> Result<Self, WireError> {
        let cpu = CpuTopology::try_from(message.cpu.ok_or_else(|| wire_error("cpu", "missing"))?)?.into();
        let gpus = message
            .gpus
            .into_iter()
            .enumerate()
            .map(|(index, gpu)| gpu_from_wire(&format!("gpus[{index}]"), gpu))
            .collect::<Result<_, _>>()?;
        let nics = message
            .nics
            .into_iter()
            .enumerate()
            .map(|(index, nic)| nic_from_wire(&format!("nics[{index}]"), nic))
            .collect::<Result<_, _>>()?;
        let nvme = message
            .nvme
            .into_iter()
            .enumerate()
            .map(|(index, drive)| {
                Ok(NvmeDrive {
                    pci_bus_id: bus_id(&format!("nvme[{index}].pci_bus_id"), &drive.pci_bus_id)?,
                    name: drive.name,
                    numa_node: drive.numa_node,
                    capacity_bytes: drive.capacity_bytes,
                    model: drive.model,
                })
            })
            .collect::<Result<_, WireError>>()?;
        let nvswitches = message
            .nvswitches
            .into_iter()
            .enumerate()
            .map(|(index, switch)| {
                Ok(NvSwitch {
                    pci_bus_id: bus_id(&format!("nvswitches[{index}].pci_bus_id"), &switch.pci_bus_id)?,
                    pci_id: switch.pci_id,
                    numa_node: switch.numa_node,
                    pci_visible: !switch.not_pci_visible,
                })
            })
            .collect::<Result<_, WireError>>()?;
        let node_count = message.pci_nodes.len();
        let nodes = message
            .pci_nodes
            .into_iter()
            .enumerate()
            .map(|(index, node)| pci_node_from_wire(&format!("pci_nodes[{index}]"), node, node_count))
            .collect::<Result<_, _>>()?;
        let nvml = nvml_from_wire(message.nvml.ok_or_else(|| wire_error("nvml", "missing"))?);
        let inventory = NodeInventory {
            hostname: message.hostname,
            cpu,
            gpus,
            nics,
            nvme,
            nvswitches,
            pci: PciTree { nodes }.into(),
            nvml,
            warnings: message.warnings,
        };
        inventory.validate().map_err(|error| wire_error("inventory", error))?;
        Ok(inventory)
    }
}

impl From<&CpuTopology> for proto::CpuTopology {
    fn from(cpu: &CpuTopology) -> Self {
        proto::CpuTopology {
            packages: cpu
                .packages
                .iter()
                .map(|package| proto::Package {
                    index: package.index,
                    model: package.model.clone(),
                    cpus: package.cpus.to_string(),
                    numa_nodes: package.numa_nodes.clone(),
                })
                .collect(),
            numa_nodes: cpu
                .numa_nodes
                .iter()
                .map(|node| proto::NumaNode {
                    index: node.index,
                    memory_mib: node.memory_mib.0,
                    cpus: node.cpus.to_string(),
                    distances: node.distances.clone(),
                })
                .collect(),
            cores: cpu
                .cores
                .iter()
                .map(|core| proto::Core {
                    index: core.index,
                    package: core.package,
                    numa_node: core.numa_node,
                    pus: core.pus.to_string(),
                })
                .collect(),
            pus: cpu.pus.clone(),
            caches: cpu
                .caches
                .iter()
                .map(|cache| proto::CacheLevel {
                    level: cache.level,
                    kind: match cache.kind {
                        CacheKind::Unified => proto::CacheKind::Unified,
                        CacheKind::Data => proto::CacheKind::Data,
                        CacheKind::Instruction => proto::CacheKind::Instruction,
                    } as i32,
                    size_kib: cache.size_kib,
                    count: cache.count,
                    pus_per_instance: cache.pus_per_instance,
                })
                .collect(),
        }
    }
}

impl TryFrom<proto::CpuTopology> for CpuTopology {
    type Error = WireError;

    fn try_from(cpu: proto::CpuTopology) -> Result<Self, WireError> {
        let packages = cpu
            .packages
            .into_iter()
            .enumerate()
            .map(|(index, package)| {
                Ok(Package {
                    cpus: cpus(&format!("cpu.packages[{index}].cpus"), &package.cpus)?,
                    index: package.index,
                    model: package.model,
                    numa_nodes: package.numa_nodes,
                })
            })
            .collect::<Result<_, WireError>>()?;
        let numa_nodes = cpu
            .numa_nodes
            .into_iter()
            .enumerate()
            .map(|(index, node)| {
                Ok(NumaNode {
                    cpus: cpus(&format!("cpu.numa_nodes[{index}].cpus"), &node.cpus)?,
                    index: node.index,
                    memory_mib: MiB(node.memory_mib),
                    distances: node.distances,
                })
            })
            .collect::<Result<_, WireError>>()?;
        let cores = cpu
            .cores
            .into_iter()
            .enumerate()
            .map(|(index, core)| {
                Ok(Core {
                    pus: cpus(&format!("cpu.cores[{index}].pus"), &core.pus)?,
                    index: core.index,
                    package: core.package,
                    numa_node: core.numa_node,
                })
            })
            .collect::<Result<_, WireError>>()?;
        let caches = cpu
            .caches
            .into_iter()
            .enumerate()
            .map(|(index, cache)| {
                let kind = match proto::CacheKind::try_from(cache.kind) {
                    Ok(proto::CacheKind::Unified) => CacheKind::Unified,
                    Ok(proto::CacheKind::Data) => CacheKind::Data,
                    Ok(proto::CacheKind::Instruction) => CacheKind::Instruction,
                    _ => return Err(wire_error(format!("cpu.caches[{index}].kind"), "unknown cache kind")),
                };
                Ok(CacheLevel {
                    level: cache.level,
                    kind,
                    size_kib: cache.size_kib,
                    count: cache.count,
                    pus_per_instance: cache.pus_per_instance,
                })
            })
            .collect::<Result<_, WireError>>()?;
        Ok(CpuTopology { packages, numa_nodes, cores, pus: cpu.pus, caches })
    }
}

impl From<&Gpu> for proto::Gpu {
    fn from(gpu: &Gpu) -> Self {
        proto::Gpu {
            index: gpu.index,
            uuid: gpu.uuid.clone(),
            model: gpu.model.clone(),
            memory_mib: gpu.memory_mib.map(|memory| memory.0),
            pci_bus_id: gpu.pci_bus_id.to_string(),
            pci_id: gpu.pci_id.clone(),
            numa_node: gpu.numa_node,
            cpus: gpu.cpus.to_string(),
            nvlinks: gpu
                .nvlinks
                .iter()
                .map(|link| proto::NvLink {
                    peer: match link.peer {
                        NvLinkPeer::Gpu => proto::NvLinkPeer::Gpu,
                        NvLinkPeer::NvSwitch => proto::NvLinkPeer::Nvswitch,
                    } as i32,
                    peer_pci_bus_id: link.peer_pci_bus_id.to_string(),
                    links: link.links,
                })
                .collect(),
            mig: gpu.mig.as_ref().map(|mig| proto::MigInfo {
                mode: mig_mode_to_wire(mig.mode) as i32,
                pending_mode: mig_mode_to_wire(mig.pending_mode) as i32,
                profiles: mig
                    .profiles
                    .iter()
                    .map(|profile| proto::MigProfile {
                        name: profile.name.clone(),
                        profile_id: profile.profile_id,
                        compute_slices: profile.compute_slices,
                        memory_slices: profile.memory_slices,
                        memory_mib: profile.memory_mib.0,
                        max_count: profile.max_count,
                        placements: profile.placements.clone(),
                    })
                    .collect(),
                instances: mig
                    .instances
                    .iter()
                    .map(|instance| proto::MigInstance {
                        profile: instance.profile.clone(),
                        profile_id: instance.profile_id,
                        gpu_instance_id: instance.gpu_instance_id,
                        start: instance.start,
                        size: instance.size,
                        uuid: instance.uuid.clone(),
                    })
                    .collect(),
            }),
            telemetry: gpu.telemetry.as_ref().map(|telemetry| proto::GpuTelemetry {
                temperature_c: telemetry.temperature_c,
                slowdown_temperature_c: telemetry.slowdown_temperature_c,
                power_draw_mw: telemetry.power_draw_mw,
                power_limit_mw: telemetry.power_limit_mw,
                throttle_reasons: telemetry.throttle_reasons.iter().map(|r| r.as_str().to_owned()).collect(),
                ecc_uncorrected_volatile: telemetry.ecc_uncorrected_volatile,
                utilization_pct: telemetry.utilization_pct,
                memory_used_mib: telemetry.memory_used_mib.map(|memory| memory.0),
            }),
            health: Some(match &gpu.health {
                GpuHealth::Healthy => proto::GpuHealth { state: proto::HealthState::Healthy as i32, reasons: vec![] },
                GpuHealth::Unhealthy { reasons } => {
                    proto::GpuHealth { state: proto::HealthState::Unhealthy as i32, reasons: reasons.clone() }
                }
                GpuHealth::Unknown => proto::GpuHealth { state: proto::HealthState::Unknown as i32, reasons: vec![] },
            }),
        }
    }
}

fn mig_mode_to_wire(mode: MigMode) -> proto::MigMode {
    match mode {
        MigMode::Disabled => proto::MigMode::Disabled,
        MigMode::Enabled => proto::MigMode::Enabled,
    }
}

fn mig_mode_from_wire(field: &str, value: i32) -> Result<MigMode, WireError> {
    match proto::MigMode::try_from(value) {
        Ok(proto::MigMode::Disabled) => Ok(MigMode::Disabled),
        Ok(proto::MigMode::Enabled) => Ok(MigMode::Enabled),
        _ => Err(wire_error(field, format!("unknown MIG mode {value}"))),
    }
}

/// A GPU's MIG state from the wire (also what a heartbeat carries).
pub fn mig_from_wire(field: &str, mig: proto::MigInfo) -> Result<MigInfo, WireError> {
    Ok(MigInfo {
        mode: mig_mode_from_wire(&format!("{field}.mode"), mig.mode)?,
        pending_mode: mig_mode_from_wire(&format!("{field}.pending_mode"), mig.pending_mode)?,
        profiles: mig
            .profiles
            .into_iter()
            .map(|profile| MigProfile {
                name: profile.name,
                profile_id: profile.profile_id,
                compute_slices: profile.compute_slices,
                memory_slices: profile.memory_slices,
                memory_mib: MiB(profile.memory_mib),
                max_count: profile.max_count,
                placements: profile.placements,
            })
            .collect::<Vec<_>>()
            .into(),
        instances: mig
            .instances
            .into_iter()
            .map(|instance| MigInstance {
                profile: instance.profile,
                profile_id: instance.profile_id,
                gpu_instance_id: instance.gpu_instance_id,
                start: instance.start,
                size: instance.size,
                uuid: instance.uuid,
            })
            .collect(),
    })
}

/// A GPU's telemetry from the wire (also what a heartbeat carries).
pub fn telemetry_from_wire(field: &str, telemetry: proto::GpuTelemetry) -> Result<GpuTelemetry, WireError> {
    Ok(GpuTelemetry {
        temperature_c: telemetry.temperature_c,
        slowdown_temperature_c: telemetry.slowdown_temperature_c,
        power_draw_mw: telemetry.power_draw_mw,
        power_limit_mw: telemetry.power_limit_mw,
        throttle_reasons: telemetry
            .throttle_reasons
            .iter()
            .map(|name| {
                ThrottleReason::from_name(name)
                    .ok_or_else(|| wire_error(format!("{field}.throttle_reasons"), format!("unknown reason {name:?}")))
            })
            .collect::<Result<_, _>>()?,
        ecc_uncorrected_volatile: telemetry.ecc_uncorrected_volatile,
        utilization_pct: match telemetry.utilization_pct {
            Some(pct) if pct > 100 => {
                return Err(wire_error(format!("{field}.utilization_pct"), format!("{pct} is above 100")));
            }
            other => other,
        },
        memory_used_mib: telemetry.memory_used_mib.map(MiB),
    })
}

/// A GPU's health from the wire (also what a heartbeat carries).
pub fn health_from_wire(field: &str, health: Option<proto::GpuHealth>) -> Result<GpuHealth, WireError> {
    let Some(health) = health else { return Err(wire_error(field, "missing")) };
    Ok(match proto::HealthState::try_from(health.state) {
        Ok(proto::HealthState::Healthy) => GpuHealth::Healthy,
        Ok(proto::HealthState::Unhealthy) => GpuHealth::Unhealthy { reasons: health.reasons },
        Ok(proto::HealthState::Unknown) => GpuHealth::Unknown,
        _ => return Err(wire_error(format!("{field}.state"), "unknown health state")),
    })
}

fn gpu_from_wire(field: &str, gpu: proto::Gpu) -> Result<Gpu, WireError> {
    let nvlinks = gpu
        .nvlinks
        .into_iter()
        .enumerate()
        .map(|(index, link)| {
            let link_field = format!("{field}.nvlinks[{index}]");
            let peer = match proto::NvLinkPeer::try_from(link.peer) {
                Ok(proto::NvLinkPeer::Gpu) => NvLinkPeer::Gpu,
                Ok(proto::NvLinkPeer::Nvswitch) => NvLinkPeer::NvSwitch,
                _ => return Err(wire_error(format!("{link_field}.peer"), "unknown NVLink peer type")),
            };
            Ok(NvLink {
                peer,
                peer_pci_bus_id: bus_id(&format!("{link_field}.peer_pci_bus_id"), &link.peer_pci_bus_id)?,
                links: link.links,
            })
        })
        .collect::<Result<_, _>>()?;
    let mig = gpu.mig.map(|mig| mig_from_wire(&format!("{field}.mig"), mig)).transpose()?;
    let telemetry =
        gpu.telemetry.map(|telemetry| telemetry_from_wire(&format!("{field}.telemetry"), telemetry)).transpose()?;
    let health = health_from_wire(&format!("{field}.health"), gpu.health)?;
    Ok(Gpu {
        index: gpu.index,
        uuid: gpu.uuid,
        model: gpu.model,
        memory_mib: gpu.memory_mib.map(MiB),
        pci_bus_id: bus_id(&format!("{field}.pci_bus_id"), &gpu.pci_bus_id)?,
        pci_id: gpu.pci_id,
        numa_node: gpu.numa_node,
        cpus: cpus(&format!("{field}.cpus"), &gpu.cpus)?,
        nvlinks,
        mig,
        telemetry,
        health,
    })
}

impl From<&Nic> for proto::Nic {
    fn from(nic: &Nic) -> Self {
        proto::Nic {
            name: nic.name.clone(),
            pci_bus_id: nic.pci_bus_id.to_string(),
            pci_id: nic.pci_id.clone(),
            numa_node: nic.numa_node,
            kind: match nic.kind {
                NicKind::Ethernet => proto::NicKind::Ethernet,
                NicKind::Infiniband => proto::NicKind::Infiniband,
                NicKind::Other => proto::NicKind::Other,
            } as i32,
            link_speed_mbps: nic.link_speed_mbps,
            rdma_device: nic.rdma_device.clone(),
            rdma: nic.rdma,
        }
    }
}

fn nic_from_wire(field: &str, nic: proto::Nic) -> Result<Nic, WireError> {
    let kind = match proto::NicKind::try_from(nic.kind) {
        Ok(proto::NicKind::Ethernet) => NicKind::Ethernet,
        Ok(proto::NicKind::Infiniband) => NicKind::Infiniband,
        Ok(proto::NicKind::Other) => NicKind::Other,
        _ => return Err(wire_error(format!("{field}.kind"), "unknown NIC kind")),
    };
    Ok(Nic {
        pci_bus_id: bus_id(&format!("{field}.pci_bus_id"), &nic.pci_bus_id)?,
        name: nic.name,
        pci_id: nic.pci_id,
        numa_node: nic.numa_node,
        kind,
        link_speed_mbps: nic.link_speed_mbps,
        rdma_device: nic.rdma_device,
        rdma: nic.rdma,
    })
}

impl From<&PciNode> for proto::PciNode {
    fn from(node: &PciNode) -> Self {
        let (kind, class, vendor, device) = match node.kind {
            PciNodeKind::HostBridge => (proto::PciNodeKind::HostBridge, 0, 0, 0),
            PciNodeKind::Bridge => (proto::PciNodeKind::Bridge, 0, 0, 0),
            PciNodeKind::Device { class, vendor, device } => {
                (proto::PciNodeKind::Device, class.into(), vendor.into(), device.into())
            }
        };
        proto::PciNode {
            kind: kind as i32,
            bus_id: node.bus_id.map(|id| id.to_string()).unwrap_or_default(),
            parent: node.parent.and_then(|parent| u32::try_from(parent).ok()),
            numa_nodes: node.numa_nodes.clone(),
            cpus: node.cpus.to_string(),
            class,
            vendor,
            device,
        }
    }
}

fn pci_node_from_wire(field: &str, node: proto::PciNode, node_count: usize) -> Result<PciNode, WireError> {
    let kind = match proto::PciNodeKind::try_from(node.kind) {
        Ok(proto::PciNodeKind::HostBridge) => PciNodeKind::HostBridge,
        Ok(proto::PciNodeKind::Bridge) => PciNodeKind::Bridge,
        Ok(proto::PciNodeKind::Device) => PciNodeKind::Device {
            class: small(&format!("{field}.class"), node.class)?,
            vendor: small(&format!("{field}.vendor"), node.vendor)?,
            device: small(&format!("{field}.device"), node.device)?,
        },
        _ => return Err(wire_error(format!("{field}.kind"), "unknown PCI node kind")),
    };
    let parent = match node.parent {
        None => None,
        Some(parent) if (parent as usize) < node_count => Some(parent as usize),
        Some(parent) => {
            return Err(wire_error(format!("{field}.parent"), format!("{parent} is past the {node_count} nodes")));
        }
    };
    let bus_id = match node.bus_id.as_str() {
        "" => None,
        text => Some(bus_id(&format!("{field}.bus_id"), text)?),
    };
    Ok(PciNode { kind, bus_id, parent, numa_nodes: node.numa_nodes, cpus: cpus(&format!("{field}.cpus"), &node.cpus)? })
}

impl From<&NvmlStatus> for proto::NvmlStatus {
    fn from(status: &NvmlStatus) -> Self {
        match status {
            NvmlStatus::Present { library, driver_version, cuda_driver_version } => proto::NvmlStatus {
                present: true,
                library: library.clone(),
                reason: String::new(),
                driver_version: driver_version.clone(),
                cuda_driver_version: cuda_driver_version.clone(),
            },
            NvmlStatus::Absent { reason } => proto::NvmlStatus {
                present: false,
                library: String::new(),
                reason: reason.clone(),
                driver_version: None,
                cuda_driver_version: None,
            },
        }
    }
}

fn nvml_from_wire(status: proto::NvmlStatus) -> NvmlStatus {
    if status.present {
        NvmlStatus::Present {
            library: status.library,
            driver_version: status.driver_version,
            cuda_driver_version: status.cuda_driver_version,
        }
    } else {
        NvmlStatus::Absent { reason: status.reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small_inventory() -> NodeInventory {
        let bus = |text: &str| text.parse::<PciBusId>().expect("valid bus id");
        NodeInventory {
            hostname: "node-a".into(),
            cpu: std::sync::Arc::new(CpuTopology {
                packages: vec![Package {
                    index: 0,
                    model: Some("Xeon".into()),
                    cpus: "0-3".parse().expect("cpus"),
                    numa_nodes: vec![0],
                }],
                numa_nodes: vec![NumaNode {
                    index: 0,
                    memory_mib: MiB(1024),
                    cpus: "0-3".parse().expect("cpus"),
                    distances: vec![10],
                }],
                cores: vec![Core { index: 0, package: Some(0), numa_node: Some(0), pus: "0,2".parse().expect("cpus") }],
                pus: vec![0, 1, 2, 3],
                caches: vec![CacheLevel {
                    level: 3,
                    kind: CacheKind::Unified,
                    size_kib: 1024,
                    count: 1,
                    pus_per_instance: 4,
                }],
            }),
            gpus: vec![Gpu {
                index: 0,
                uuid: Some("GPU-1".into()),
                model: "NVIDIA H100 80GB HBM3".into(),
                memory_mib: Some(MiB(81559)),
                pci_bus_id: bus("0000:1b:00.0"),
                pci_id: "10de:2330".into(),
                numa_node: Some(0),
                cpus: "0-3".parse().expect("cpus"),
                nvlinks: vec![NvLink { peer: NvLinkPeer::NvSwitch, peer_pci_bus_id: bus("0000:05:00.0"), links: 5 }],
                mig: Some(MigInfo {
                    mode: MigMode::Enabled,
                    pending_mode: MigMode::Enabled,
                    profiles: std::sync::Arc::new(vec![MigProfile {
                        name: "3g.40gb".into(),
                        profile_id: 9,
                        compute_slices: 3,
                        memory_slices: 4,
                        memory_mib: MiB(40192),
                        max_count: 2,
                        placements: vec![0, 4],
                    }]),
                    instances: vec![MigInstance {
                        profile: "3g.40gb".into(),
                        profile_id: 9,
                        gpu_instance_id: 1,
                        start: 4,
                        size: 4,
                        uuid: None,
                    }],
                }),
                telemetry: Some(GpuTelemetry {
                    temperature_c: Some(40),
                    throttle_reasons: vec![ThrottleReason::SwThermalSlowdown],
                    utilization_pct: Some(55),
                    memory_used_mib: Some(MiB(1234)),
                    ..GpuTelemetry::default()
                }),
                health: GpuHealth::Unhealthy { reasons: vec!["xid 79".into()] },
            }],
            nics: vec![],
            nvme: vec![],
            nvswitches: vec![
                NvSwitch {
                    pci_bus_id: bus("0000:05:00.0"),
                    pci_id: "10de:22a3".into(),
                    numa_node: Some(0),
                    pci_visible: true,
                },
                NvSwitch {
                    pci_bus_id: PciBusId::NOT_VISIBLE,
                    pci_id: String::new(),
                    numa_node: None,
                    pci_visible: false,
                },
            ],
            pci: std::sync::Arc::new(PciTree {
                nodes: vec![
                    PciNode {
                        kind: PciNodeKind::HostBridge,
                        bus_id: None,
                        parent: None,
                        numa_nodes: vec![0],
                        cpus: CpuSet::default(),
                    },
                    PciNode {
                        kind: PciNodeKind::Device { class: 0x0302, vendor: 0x10de, device: 0x2330 },
                        bus_id: Some(bus("0000:1b:00.0")),
                        parent: Some(0),
                        numa_nodes: vec![0],
                        cpus: CpuSet::default(),
                    },
                    PciNode {
                        kind: PciNodeKind::Device { class: 0x0680, vendor: 0x10de, device: 0x22a3 },
                        bus_id: Some(bus("0000:05:00.0")),
                        parent: Some(0),
                        numa_nodes: vec![0],
                        cpus: CpuSet::default(),
                    },
                ],
            }),
            nvml: NvmlStatus::Present {
                library: "fake".into(),
                driver_version: Some("550".into()),
                cuda_driver_version: None,
            },
            warnings: vec!["one warning".into()],
        }
    }

    #[test]
    fn an_inventory_survives_the_wire() {
        let inventory = small_inventory();
        let message = proto::NodeInventory::from(&inventory);
        let back = NodeInventory::try_from(message).expect("round trip");
        assert_eq!(back, inventory);
    }

    #[test]
    fn a_large_inventory_is_checked_in_linear_time() {
        // 50,000 NVLinks to the last of 50,000 NVSwitches, and 50,000 NICs on the last
        // of 50,000 PCI nodes: 3 MB on the wire, seconds of broker time when each
        // link and device was looked up by scanning.
        let mut inventory = small_inventory();
        let last_switch = inventory.nvswitches[0].clone();
        let filler = NvSwitch { pci_bus_id: "0000:06:00.0".parse().expect("id"), ..last_switch.clone() };
        inventory.nvswitches = std::iter::repeat_n(filler, 50_000).chain([last_switch.clone()]).collect();
        let link = NvLink { peer: NvLinkPeer::NvSwitch, peer_pci_bus_id: last_switch.pci_bus_id, links: 1 };
        inventory.gpus[0].nvlinks = vec![link; 50_000];
        let bridge = inventory.pci.nodes[0].clone();
        let nic_node = PciNode { bus_id: Some("0000:07:00.0".parse().expect("id")), ..inventory.pci.nodes[1].clone() };
        std::sync::Arc::make_mut(&mut inventory.pci)
            .nodes
            .extend(std::iter::repeat_n(bridge, 50_000).chain([nic_node]));
        let nic = Nic {
            name: "eth0".into(),
            pci_bus_id: "0000:07:00.0".parse().expect("id"),
            pci_id: String::new(),
            numa_node: None,
            kind: NicKind::Ethernet,
            link_speed_mbps: None,
            rdma_device: None,
            rdma: false,
        };
        inventory.nics = vec![nic; 50_000];
        let started = std::time::Instant::now();
        assert_eq!(inventory.validate(), Ok(()));
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "{:?}", started.elapsed());
    }

    #[test]
    fn bad_fields_are_named() {
        let mut message = proto::NodeInventory::from(&small_inventory());
        message.gpus[0].pci_bus_id = "zz".into();
        let error = NodeInventory::try_from(message).expect_err("bad bus id");
        assert_eq!(error.field, "gpus[0].pci_bus_id");

        let mut message = proto::NodeInventory::from(&small_inventory());
        message.pci_nodes[1].parent = Some(99);
        let error = NodeInventory::try_from(message).expect_err("dangling parent");
        assert_eq!(error.field, "pci_nodes[1].parent");

        let mut message = proto::NodeInventory::from(&small_inventory());
        message.nvswitches.clear();
        let error = NodeInventory::try_from(message).expect_err("NVLink to nothing");
        assert!(error.to_string().contains("neither a GPU nor an NVSwitch"), "{error}");
    }
}
