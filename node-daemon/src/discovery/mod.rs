//! Hardware discovery: what the machine is made of, from hwloc, NVML and sysfs.
//!
//! Each external system sits behind a narrow trait shaped by what Allot needs:
//! [`TopologySource`] (hwloc: CPUs, NUMA, caches, the PCIe tree and the OS devices
//! in it), [`GpuSource`] (NVML: what only the driver knows) and [`DeviceDetails`]
//! (sysfs: NIC link speed and drive capacity when hwloc lacks them). [`merge`]
//! combines them into one [`NodeInventory`] and rejects contradictions.

pub mod host_cpus;
pub mod hwloc;
mod merge;
mod models;
pub mod nvml;
pub mod sysfs;

use std::path::PathBuf;

use allot_api::topology::{CpuTopology, GpuHealth, GpuTelemetry, MigInfo, NodeInventory, NvLinkPeer, PciTree};
use allot_api::units::{CpuSet, MiB, PciBusId};

pub use merge::merge;

/// What hwloc sees: the CPU side and the PCIe tree with its devices.
#[derive(Debug, Clone, Default)]
pub struct HostTopology {
    pub cpu: CpuTopology,
    pub pci: PciTree,
    pub devices: Vec<PciDevice>,
    /// NVLinks hwloc recorded (its `NVLinkBandwidth` distances, present in exports made
    /// where hwloc's NVML plugin ran), one entry per GPU and peer.
    pub nvlinks: Vec<HwlocNvLink>,
    /// What hwloc recorded that could not be used, for the inventory's warnings.
    pub warnings: Vec<String>,
    /// Where this view came from (a file, or "this machine"), for error messages.
    pub origin: String,
}

/// NVLink links from a GPU to a peer, as hwloc's `NVLinkBandwidth` matrix records them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HwlocNvLink {
    pub gpu: PciBusId,
    pub peer: PciBusId,
    pub peer_kind: NvLinkPeer,
    pub links: u32,
}

/// A PCI function (not a bridge) and the OS devices the kernel made for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciDevice {
    pub bus_id: PciBusId,
    pub class: u16,
    pub vendor: u16,
    pub device: u16,
    pub vendor_name: Option<String>,
    pub device_name: Option<String>,
    pub numa_nodes: Vec<u32>,
    pub cpus: CpuSet,
    pub os_devices: Vec<OsDevice>,
}

impl PciDevice {
    pub fn pci_id(&self) -> String {
        format!("{:04x}:{:04x}", self.vendor, self.device)
    }

    /// The NUMA node, when the device is local to exactly one.
    pub fn numa_node(&self) -> Option<u32> {
        match self.numa_nodes.as_slice() {
            [node] => Some(*node),
            _ => None,
        }
    }

    pub fn os_device(&self, kind: OsDeviceKind) -> Option<&OsDevice> {
        self.os_devices.iter().find(|os_device| os_device.kind == kind)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsDevice {
    pub name: String,
    pub kind: OsDeviceKind,
    /// hwloc's key/value information (`Size`, `Model`, `Address`, ...).
    pub infos: Vec<(String, String)>,
}

impl OsDevice {
    pub fn info(&self, key: &str) -> Option<&str> {
        self.infos.iter().find(|(name, _)| name == key).map(|(_, value)| value.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OsDeviceKind {
    Block,
    Network,
    OpenFabrics,
    Gpu,
    CoProcessor,
    Dma,
    Other,
}

/// PCI class codes Allot cares about (base class << 8 | subclass).
pub mod pci_class {
    pub const NVME: u16 = 0x0108;
    pub const VGA: u16 = 0x0300;
    pub const DISPLAY_3D: u16 = 0x0302;
    pub const BRIDGE_OTHER: u16 = 0x0680;
    pub const NETWORK_BASE: u8 = 0x02;
    pub const INFINIBAND: u16 = 0x0207;
    pub const NVIDIA: u16 = 0x10de;
}

/// hwloc, or anything else that can map the CPUs and the PCIe tree.
pub trait TopologySource {
    fn discover(&self) -> Result<HostTopology, DiscoveryError>;
}

/// NVML, or anything else that knows the GPUs from the driver's side.
pub trait GpuSource {
    fn discover(&self) -> Result<GpuReport, DiscoveryError>;
}

/// Facts the OS keeps outside hwloc: NIC link speed, block device capacity.
pub trait DeviceDetails {
    fn link_speed_mbps(&self, interface: &str) -> Option<u64>;
    fn block_capacity_bytes(&self, block_device: &str) -> Option<u64>;
}

/// What the GPU source found.
#[derive(Debug, Clone, PartialEq)]
pub enum GpuReport {
    /// No driver library on this machine; not an error.
    Absent { reason: String },
    Present {
        library: String,
        driver_version: Option<String>,
        cuda_driver_version: Option<String>,
        gpus: Vec<DriverGpu>,
        /// GPUs NVML counts but cannot read: lost (fallen off the bus), or failing a query
        /// every GPU answers. They are listed unhealthy, never offered.
        unreachable: Vec<UnreachableGpu>,
        warnings: Vec<String>,
    },
}

/// A GPU NVML enumerates but cannot read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnreachableGpu {
    pub index: u32,
    /// `None` when even its PCI address could not be read (a lost GPU answers nothing).
    pub pci_bus_id: Option<PciBusId>,
    pub reason: String,
}

/// One GPU as the driver reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct DriverGpu {
    pub index: u32,
    pub uuid: Option<String>,
    pub name: Option<String>,
    pub pci_bus_id: PciBusId,
    pub memory_mib: Option<MiB>,
    pub numa_node: Option<u32>,
    pub nvlinks: Vec<DriverNvLink>,
    pub mig: Option<MigInfo>,
    pub telemetry: GpuTelemetry,
    pub health: GpuHealth,
}

/// Active NVLink links to one remote PCI device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverNvLink {
    pub remote_pci_bus_id: PciBusId,
    /// What the driver says is on the other end, when it says.
    pub remote_kind: Option<NvLinkPeer>,
    pub links: u32,
}

/// Why discovery failed. Each variant names the file or library involved.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("cannot read hwloc topology {path}: {source}")]
    XmlUnreadable { path: PathBuf, source: std::io::Error },
    #[error(
        "{path} is not an hwloc XML topology: {problem}; export one with `lstopo-no-graphics --whole-io --of xml FILE`"
    )]
    XmlMalformed { path: PathBuf, problem: String },
    #[error("hwloc could not map this machine: {0}")]
    Hwloc(String),
    #[error("cannot load NVML library {path}: {problem}")]
    NvmlLibrary { path: PathBuf, problem: String },
    #[error("NVML call {call} failed: {problem}")]
    Nvml { call: String, problem: String },
    #[error("{origin} contradicts itself: {problem}")]
    Inconsistent { origin: String, problem: String },
    #[error(
        "NVML ({library}) and the hwloc topology {origin} disagree: {problem}; export the topology on the machine whose driver answers (or pass the fixture's own NVML description)"
    )]
    NvmlDisagrees { library: String, origin: String, problem: String },
    #[error("fixture {name:?}: {problem}")]
    Fixture { name: String, problem: String },
}

/// Runs every source and merges what they found.
pub fn discover(
    hostname: &str,
    topology: &dyn TopologySource,
    gpus: &dyn GpuSource,
    details: &dyn DeviceDetails,
) -> Result<NodeInventory, DiscoveryError> {
    let host = topology.discover()?;
    let report = gpus.discover()?;
    merge(hostname, host, report, details)
}
