//! The node inventory: what one GPU server is made of, as plain Rust types.
//!
//! The node daemon fills it from hwloc, NVML and sysfs; the broker places work with
//! it. Everything here is data plus pure derivations ([`levels`]); no IO.

mod levels;

pub use levels::{ConnectionLevel, LinkMatrices, TopologyError};

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::units::{CpuSet, MiB, PciBusId};

/// Everything the node daemon knows about one machine.
///
/// The parts that are the same on every machine of a kind (the CPU topology, the
/// PCIe tree, MIG profiles, cpu sets) are reference-counted and never changed in
/// place, so that a clone shares them: the broker fills in thousands of nodes
/// from one inventory template at the cost of their own details (see
/// `allot-broker`'s `state::inventory`). Change them with [`Arc::make_mut`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInventory {
    pub hostname: String,
    pub cpu: Arc<CpuTopology>,
    /// GPUs in NVML enumeration order when NVML is present, else in PCI bus order
    /// (what `CUDA_DEVICE_ORDER=PCI_BUS_ID` gives).
    pub gpus: Vec<Gpu>,
    pub nics: Vec<Nic>,
    pub nvme: Vec<NvmeDrive>,
    pub nvswitches: Vec<NvSwitch>,
    /// The PCIe tree every GPU, NIC, NVMe drive and NVSwitch hangs in.
    pub pci: Arc<PciTree>,
    pub nvml: NvmlStatus,
    /// Partial failures: discovery goes on when one device is unreadable, and says so here.
    pub warnings: Vec<String>,
}

/// Packages, NUMA nodes, cores, PUs and caches.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct CpuTopology {
    pub packages: Vec<Package>,
    pub numa_nodes: Vec<NumaNode>,
    pub cores: Vec<Core>,
    /// OS indices of every processing unit (hardware thread), sorted.
    pub pus: Vec<u32>,
    pub caches: Vec<CacheLevel>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Package {
    pub index: u32,
    pub model: Option<String>,
    pub cpus: CpuSet,
    pub numa_nodes: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NumaNode {
    /// The OS index, as in `/sys/devices/system/node/nodeN`.
    pub index: u32,
    pub memory_mib: MiB,
    pub cpus: CpuSet,
    /// Relative distances to every NUMA node, in the order of `CpuTopology::numa_nodes`
    /// (10 is local, as in the ACPI SLIT). Empty when the firmware gives none.
    pub distances: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Core {
    /// hwloc's logical index: cores numbered in topology order.
    pub index: u32,
    pub package: Option<u32>,
    pub numa_node: Option<u32>,
    /// OS indices of the core's hardware threads.
    pub pus: CpuSet,
}

/// All caches of one level and kind, summarised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheLevel {
    pub level: u32,
    pub kind: CacheKind,
    pub size_kib: u64,
    /// How many instances the machine has.
    pub count: u32,
    /// How many PUs share one instance.
    pub pus_per_instance: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheKind {
    Unified,
    Data,
    Instruction,
}

/// One GPU: identity, placement in the machine, links, MIG and telemetry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gpu {
    pub index: u32,
    pub uuid: Option<String>,
    pub model: String,
    pub memory_mib: Option<MiB>,
    pub pci_bus_id: PciBusId,
    /// `vendor:device` in hex, like `10de:2330`.
    pub pci_id: String,
    pub numa_node: Option<u32>,
    /// CPUs local to the GPU.
    pub cpus: CpuSet,
    pub nvlinks: Vec<NvLink>,
    /// `None` when the GPU cannot be partitioned with MIG (or NVML is absent).
    pub mig: Option<MigInfo>,
    /// `None` when NVML is absent.
    pub telemetry: Option<GpuTelemetry>,
    pub health: GpuHealth,
}

/// One or more NVLink links from a GPU to the same peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NvLink {
    pub peer: NvLinkPeer,
    pub peer_pci_bus_id: PciBusId,
    pub links: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NvLinkPeer {
    Gpu,
    NvSwitch,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigInfo {
    pub mode: MigMode,
    /// What the mode becomes after the next GPU reset.
    pub pending_mode: MigMode,
    pub profiles: Arc<Vec<MigProfile>>,
    pub instances: Vec<MigInstance>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MigMode {
    Disabled,
    Enabled,
}

/// A GPU instance profile with the start slots it may be placed at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigProfile {
    /// Like `3g.40gb`.
    pub name: String,
    /// NVML's profile id (not the profile enum).
    pub profile_id: u32,
    pub compute_slices: u32,
    pub memory_slices: u32,
    pub memory_mib: MiB,
    pub max_count: u32,
    /// Memory-slice positions an instance of this profile may start at.
    pub placements: Vec<u32>,
}

/// A GPU instance that exists on the GPU now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigInstance {
    pub profile: String,
    pub profile_id: u32,
    pub gpu_instance_id: u32,
    /// First memory slice.
    pub start: u32,
    /// Memory slices taken.
    pub size: u32,
    /// The MIG device UUID (`MIG-...`) of its first compute instance, when it has one.
    pub uuid: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct GpuTelemetry {
    pub temperature_c: Option<u32>,
    /// Where the GPU starts slowing itself down.
    pub slowdown_temperature_c: Option<u32>,
    pub power_draw_mw: Option<u32>,
    pub power_limit_mw: Option<u32>,
    pub throttle_reasons: Vec<ThrottleReason>,
    /// Uncorrectable ECC errors since the driver loaded.
    pub ecc_uncorrected_volatile: Option<u64>,
    /// Percent of the last sample period a kernel ran (NVML's GPU utilisation).
    #[serde(default)]
    pub utilization_pct: Option<u32>,
    /// Device memory in use.
    #[serde(default)]
    pub memory_used_mib: Option<MiB>,
}

impl GpuTelemetry {
    /// Whether the clocks are being held down for a reason that costs performance
    /// (idling and application clock settings do not count).
    pub fn is_throttling(&self) -> bool {
        self.throttle_reasons.iter().any(|reason| reason.slows_work())
    }
}

/// Why a GPU's clocks are below their maximum, as NVML reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThrottleReason {
    GpuIdle,
    ApplicationsClocksSetting,
    SwPowerCap,
    HwSlowdown,
    SyncBoost,
    SwThermalSlowdown,
    HwThermalSlowdown,
    HwPowerBrakeSlowdown,
    DisplayClockSetting,
}

impl ThrottleReason {
    pub fn slows_work(self) -> bool {
        !matches!(
            self,
            ThrottleReason::GpuIdle | ThrottleReason::ApplicationsClocksSetting | ThrottleReason::DisplayClockSetting
        )
    }

    pub fn is_thermal(self) -> bool {
        matches!(self, ThrottleReason::SwThermalSlowdown | ThrottleReason::HwThermalSlowdown)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ThrottleReason::GpuIdle => "gpu_idle",
            ThrottleReason::ApplicationsClocksSetting => "applications_clocks_setting",
            ThrottleReason::SwPowerCap => "sw_power_cap",
            ThrottleReason::HwSlowdown => "hw_slowdown",
            ThrottleReason::SyncBoost => "sync_boost",
            ThrottleReason::SwThermalSlowdown => "sw_thermal_slowdown",
            ThrottleReason::HwThermalSlowdown => "hw_thermal_slowdown",
            ThrottleReason::HwPowerBrakeSlowdown => "hw_power_brake_slowdown",
            ThrottleReason::DisplayClockSetting => "display_clock_setting",
        }
    }

    pub const ALL: [ThrottleReason; 9] = [
        ThrottleReason::GpuIdle,
        ThrottleReason::ApplicationsClocksSetting,
        ThrottleReason::SwPowerCap,
        ThrottleReason::HwSlowdown,
        ThrottleReason::SyncBoost,
        ThrottleReason::SwThermalSlowdown,
        ThrottleReason::HwThermalSlowdown,
        ThrottleReason::HwPowerBrakeSlowdown,
        ThrottleReason::DisplayClockSetting,
    ];

    pub fn from_name(name: &str) -> Option<ThrottleReason> {
        ThrottleReason::ALL.into_iter().find(|reason| reason.as_str() == name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum GpuHealth {
    Healthy,
    Unhealthy {
        reasons: Vec<String>,
    },
    /// NVML is absent, so nothing can be said.
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nic {
    /// The network interface name (`ibp24s0`, `ens1f0np0`), else the RDMA device name.
    pub name: String,
    pub pci_bus_id: PciBusId,
    pub pci_id: String,
    pub numa_node: Option<u32>,
    pub kind: NicKind,
    pub link_speed_mbps: Option<u64>,
    /// The RDMA (verbs) device, like `mlx5_0`, when the NIC has one.
    pub rdma_device: Option<String>,
    pub rdma: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NicKind {
    Ethernet,
    Infiniband,
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NvmeDrive {
    /// The block device name, like `nvme0n1`, else the controller's bus id.
    pub name: String,
    pub pci_bus_id: PciBusId,
    pub numa_node: Option<u32>,
    pub capacity_bytes: Option<u64>,
    pub model: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NvSwitch {
    /// [`PciBusId::NOT_VISIBLE`] when NVML names no address: the NVSwitches of a VM or of a
    /// baseboard that hides them. One such entry stands for all of them, and the GPUs' link
    /// counts to it are their links into the NVSwitch fabric.
    pub pci_bus_id: PciBusId,
    /// `vendor:device`; empty when the switch is not on this host's PCI bus.
    pub pci_id: String,
    pub numa_node: Option<u32>,
    /// Whether the switch is in this host's PCIe tree. NVLink works either way.
    #[serde(default = "visible")]
    pub pci_visible: bool,
}

fn visible() -> bool {
    true
}

/// Whether NVML could be used, and if so which driver answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum NvmlStatus {
    Present {
        library: String,
        driver_version: Option<String>,
        cuda_driver_version: Option<String>,
    },
    /// No NVML on this machine (no NVIDIA driver): GPUs come from hwloc alone.
    Absent {
        reason: String,
    },
}

/// The PCIe tree: host bridges, bridges (switch ports, root ports) and devices.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PciTree {
    pub nodes: Vec<PciNode>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciNode {
    pub kind: PciNodeKind,
    /// Absent for host bridges, which have no address of their own.
    pub bus_id: Option<PciBusId>,
    /// Index in `PciTree::nodes`; `None` for the top of a hierarchy (a host bridge).
    pub parent: Option<usize>,
    /// NUMA nodes the hierarchy attaches to (from the CPU-side object it hangs under).
    pub numa_nodes: Vec<u32>,
    pub cpus: CpuSet,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PciNodeKind {
    HostBridge,
    Bridge,
    Device { class: u16, vendor: u16, device: u16 },
}

impl PciTree {
    pub fn find(&self, bus_id: PciBusId) -> Option<usize> {
        self.nodes.iter().position(|node| node.bus_id == Some(bus_id))
    }

    /// The chain from `index` up to the top of its hierarchy, `index` first.
    /// Stops at a cycle or a dangling parent rather than looping. Linear in the
    /// depth: a tree comes from a registering node, and may be one long chain.
    fn ancestors(&self, index: usize) -> Vec<usize> {
        let mut chain = vec![index];
        let mut seen = std::collections::HashSet::from([index]);
        let mut current = index;
        while let Some(parent) = self.nodes.get(current).and_then(|node| node.parent) {
            if parent >= self.nodes.len() || !seen.insert(parent) {
                break;
            }
            chain.push(parent);
            current = parent;
        }
        chain
    }

    /// Checks that every parent exists and no node is its own ancestor.
    ///
    /// Linear in the number of nodes: each walk up stops at a node already known
    /// to reach a root (walking every node's whole chain was cubic in the depth,
    /// minutes for a chain of 2,000 nodes in a 60 KB registration).
    pub fn validate(&self) -> Result<(), TopologyError> {
        let count = self.nodes.len();
        // Whether each node is known to reach a root; `visited` marks the walk in progress.
        let mut rooted = vec![false; count];
        let mut visited = vec![false; count];
        for (index, node) in self.nodes.iter().enumerate() {
            if let Some(parent) = node.parent.filter(|parent| *parent >= count) {
                return Err(TopologyError::PciParentMissing { index, parent });
            }
            let mut path = Vec::new();
            let mut current = index;
            let reaches_root = loop {
                if rooted[current] {
                    break true;
                }
                if visited[current] {
                    break false;
                }
                visited[current] = true;
                path.push(current);
                match self.nodes[current].parent {
                    None => break true,
                    Some(parent) if parent >= count => break false,
                    Some(parent) => current = parent,
                }
            };
            if !reaches_root {
                return Err(TopologyError::PciCycle { index });
            }
            for member in path {
                rooted[member] = true;
            }
        }
        Ok(())
    }
}

impl NodeInventory {
    /// The GPU with this PCI bus id.
    pub fn gpu_by_bus_id(&self, bus_id: PciBusId) -> Option<&Gpu> {
        self.gpus.iter().find(|gpu| gpu.pci_bus_id == bus_id)
    }
}
