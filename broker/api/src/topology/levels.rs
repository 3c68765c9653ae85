//! How close two devices are: the connection levels of `nvidia-smi topo -m`
//! (X, NV#, PIX, PXB, PHB, NODE, SYS), derived from the PCIe tree and NVLink data.
//!
//! Definitions, from the legend of `nvidia-smi topo -m`:
//! - PIX: through at most a single PCIe switch (bridge);
//! - PXB: through several PCIe switches, without a host bridge;
//! - PHB: through a PCIe host bridge (typically the CPU);
//! - NODE: between host bridges within one NUMA node;
//! - SYS: across the interconnect between NUMA nodes (QPI/UPI, Infinity Fabric);
//! - NV#: through # NVLink links, directly or through NVSwitches.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{Gpu, NodeInventory, NvLinkPeer, PciNodeKind, PciTree};
use crate::units::PciBusId;

/// The connection between two devices, best first (the derived `Ord` follows this).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ConnectionLevel {
    /// The device itself.
    Same,
    /// NVLink with this many links.
    NvLink(u32),
    Pix,
    Pxb,
    Phb,
    Node,
    Sys,
}

impl ConnectionLevel {
    /// A rank for scoring: lower is closer; more NVLink links are closer than fewer.
    pub fn rank(self) -> (u8, u32) {
        match self {
            ConnectionLevel::Same => (0, 0),
            ConnectionLevel::NvLink(links) => (1, u32::MAX - links),
            ConnectionLevel::Pix => (2, 0),
            ConnectionLevel::Pxb => (3, 0),
            ConnectionLevel::Phb => (4, 0),
            ConnectionLevel::Node => (5, 0),
            ConnectionLevel::Sys => (6, 0),
        }
    }
}

impl fmt::Display for ConnectionLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectionLevel::Same => f.write_str("X"),
            ConnectionLevel::NvLink(links) => write!(f, "NV{links}"),
            ConnectionLevel::Pix => f.write_str("PIX"),
            ConnectionLevel::Pxb => f.write_str("PXB"),
            ConnectionLevel::Phb => f.write_str("PHB"),
            ConnectionLevel::Node => f.write_str("NODE"),
            ConnectionLevel::Sys => f.write_str("SYS"),
        }
    }
}

impl Serialize for ConnectionLevel {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ConnectionLevel {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let level = match text.as_str() {
            "X" => ConnectionLevel::Same,
            "PIX" => ConnectionLevel::Pix,
            "PXB" => ConnectionLevel::Pxb,
            "PHB" => ConnectionLevel::Phb,
            "NODE" => ConnectionLevel::Node,
            "SYS" => ConnectionLevel::Sys,
            other => match other.strip_prefix("NV").and_then(|n| n.parse().ok()) {
                Some(links) => ConnectionLevel::NvLink(links),
                None => return Err(serde::de::Error::custom(format!("unknown connection level {other:?}"))),
            },
        };
        Ok(level)
    }
}

/// An inventory that contradicts itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopologyError {
    #[error("{device} {bus_id} is not in the PCIe tree")]
    NotInPciTree { device: String, bus_id: PciBusId },
    #[error("GPU {gpu} ({bus_id}) has an NVLink to {peer}, which is neither a GPU nor an NVSwitch of this machine")]
    NvLinkPeerMissing { gpu: u32, bus_id: PciBusId, peer: PciBusId },
    #[error("PCIe tree node {index} names parent {parent}, which does not exist")]
    PciParentMissing { index: usize, parent: usize },
    #[error("PCIe tree node {index} is its own ancestor")]
    PciCycle { index: usize },
    #[error("two GPUs share PCI bus id {bus_id}")]
    DuplicateGpu { bus_id: PciBusId },
}

impl PciTree {
    /// The PCIe-only connection level between two devices of this tree.
    pub fn pcie_level(&self, a: PciBusId, b: PciBusId) -> Option<ConnectionLevel> {
        let a_index = self.find(a)?;
        let b_index = self.find(b)?;
        if a_index == b_index {
            return Some(ConnectionLevel::Same);
        }
        let a_chain = self.ancestors(a_index);
        let b_chain = self.ancestors(b_index);
        // Depth of each of b's ancestors, so the common one is found in one pass
        // over a's chain (not one pass over b's per member of a's).
        let b_depths: std::collections::HashMap<usize, usize> =
            b_chain.iter().enumerate().map(|(depth, node)| (*node, depth)).collect();
        let common = a_chain.iter().position(|node| b_depths.contains_key(node));
        let Some(a_depth) = common else {
            // Different host bridges: the CPU-side attachment decides.
            let a_top = &self.nodes[a_chain[a_chain.len() - 1]];
            let b_top = &self.nodes[b_chain[b_chain.len() - 1]];
            let same_numa = !a_top.numa_nodes.is_empty() && a_top.numa_nodes == b_top.numa_nodes;
            return Some(if same_numa { ConnectionLevel::Node } else { ConnectionLevel::Sys });
        };
        let ancestor = a_chain[a_depth];
        let b_depth = b_depths.get(&ancestor).copied().unwrap_or(0);
        Some(match self.nodes[ancestor].kind {
            PciNodeKind::HostBridge => ConnectionLevel::Phb,
            // One device below the other cannot happen for endpoints; treat it as one hop.
            PciNodeKind::Device { .. } => ConnectionLevel::Pix,
            PciNodeKind::Bridge => {
                // A switch shows up as an upstream port with one downstream port per
                // slot. Devices below the same switch are at most one bridge (their
                // downstream port) below the common ancestor; anything deeper crosses
                // another switch.
                let bridges_between = |depth: usize| depth.saturating_sub(1);
                if bridges_between(a_depth) <= 1 && bridges_between(b_depth) <= 1 {
                    ConnectionLevel::Pix
                } else {
                    ConnectionLevel::Pxb
                }
            }
        })
    }
}

/// NVLink links between two GPUs: direct links plus, when both reach NVSwitches,
/// the smaller of their switch link counts (the NVSwitches of one baseboard form
/// one fabric, which is why `nvidia-smi topo -m` prints NV18 for every pair of an
/// HGX H100).
///
/// Counts come from a registering node (or an XML file) and are summed saturating:
/// absurd counts give an absurd level, never an overflow panic.
pub fn nvlink_links(a: &Gpu, b: &Gpu) -> u32 {
    let direct = a
        .nvlinks
        .iter()
        .filter(|link| link.peer == NvLinkPeer::Gpu && link.peer_pci_bus_id == b.pci_bus_id)
        .fold(0u32, |sum, link| sum.saturating_add(link.links));
    let to_switches = |gpu: &Gpu| -> u32 {
        gpu.nvlinks
            .iter()
            .filter(|link| link.peer == NvLinkPeer::NvSwitch)
            .fold(0u32, |sum, link| sum.saturating_add(link.links))
    };
    direct.saturating_add(to_switches(a).min(to_switches(b)))
}

/// GPU×GPU and GPU×NIC connection matrices, rows and columns in inventory order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkMatrices {
    pub gpu_gpu: Vec<Vec<ConnectionLevel>>,
    pub gpu_nic: Vec<Vec<ConnectionLevel>>,
}

impl NodeInventory {
    /// The connection between two GPUs (by position in `gpus`).
    pub fn gpu_gpu_level(&self, a: usize, b: usize) -> Option<ConnectionLevel> {
        let (gpu_a, gpu_b) = (self.gpus.get(a)?, self.gpus.get(b)?);
        if a == b {
            return Some(ConnectionLevel::Same);
        }
        match nvlink_links(gpu_a, gpu_b) {
            0 => self.pci.pcie_level(gpu_a.pci_bus_id, gpu_b.pci_bus_id),
            links => Some(ConnectionLevel::NvLink(links)),
        }
    }

    /// The connection between a GPU and a NIC (by position in `gpus` and `nics`).
    pub fn gpu_nic_level(&self, gpu: usize, nic: usize) -> Option<ConnectionLevel> {
        let (gpu, nic) = (self.gpus.get(gpu)?, self.nics.get(nic)?);
        self.pci.pcie_level(gpu.pci_bus_id, nic.pci_bus_id)
    }

    /// Both matrices. Call [`NodeInventory::validate`] first: a device missing from
    /// the PCIe tree shows as SYS here.
    pub fn link_matrices(&self) -> LinkMatrices {
        let gpu_gpu = (0..self.gpus.len())
            .map(|a| (0..self.gpus.len()).map(|b| self.gpu_gpu_level(a, b).unwrap_or(ConnectionLevel::Sys)).collect())
            .collect();
        let gpu_nic = (0..self.gpus.len())
            .map(|gpu| {
                (0..self.nics.len()).map(|nic| self.gpu_nic_level(gpu, nic).unwrap_or(ConnectionLevel::Sys)).collect()
            })
            .collect();
        LinkMatrices { gpu_gpu, gpu_nic }
    }

    /// Checks that the inventory agrees with itself: every GPU, NIC and NVMe drive
    /// sits in the PCIe tree, and every NVLink ends at a GPU or NVSwitch. NVSwitches
    /// need not be in the tree: in a VM, or behind some baseboards, the host cannot
    /// see them on the PCI bus even though NVML reports links to them.
    ///
    /// Linear in the size of the inventory: devices and links are looked up in
    /// sets, not by scanning (a registration of 50,000 NVLinks to the last of
    /// 50,000 NVSwitches, 2 MB, took the broker seconds).
    pub fn validate(&self) -> Result<(), TopologyError> {
        use std::collections::HashSet;
        self.pci.validate()?;
        let mut gpus = HashSet::new();
        for gpu in &self.gpus {
            if !gpus.insert(gpu.pci_bus_id) {
                return Err(TopologyError::DuplicateGpu { bus_id: gpu.pci_bus_id });
            }
        }
        let in_tree: HashSet<PciBusId> = self.pci.nodes.iter().filter_map(|node| node.bus_id).collect();
        let placed = self
            .gpus
            .iter()
            .map(|gpu| (gpu.pci_bus_id, DeviceName::Gpu(gpu.index)))
            .chain(self.nics.iter().map(|nic| (nic.pci_bus_id, DeviceName::Nic(&nic.name))))
            .chain(self.nvme.iter().map(|drive| (drive.pci_bus_id, DeviceName::Nvme(&drive.name))));
        for (bus_id, device) in placed {
            if !in_tree.contains(&bus_id) {
                return Err(TopologyError::NotInPciTree { device: device.to_string(), bus_id });
            }
        }
        let switches: HashSet<PciBusId> = self.nvswitches.iter().map(|switch| switch.pci_bus_id).collect();
        for gpu in &self.gpus {
            for link in &gpu.nvlinks {
                let exists = match link.peer {
                    NvLinkPeer::Gpu => gpus.contains(&link.peer_pci_bus_id),
                    NvLinkPeer::NvSwitch => switches.contains(&link.peer_pci_bus_id),
                };
                if !exists {
                    return Err(TopologyError::NvLinkPeerMissing {
                        gpu: gpu.index,
                        bus_id: gpu.pci_bus_id,
                        peer: link.peer_pci_bus_id,
                    });
                }
            }
        }
        Ok(())
    }
}

/// A device as [`TopologyError::NotInPciTree`] names it, formatted only for the error.
enum DeviceName<'a> {
    Gpu(u32),
    Nic(&'a str),
    Nvme(&'a str),
}

impl fmt::Display for DeviceName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceName::Gpu(index) => write!(f, "GPU {index}"),
            DeviceName::Nic(name) => write!(f, "NIC {name}"),
            DeviceName::Nvme(name) => write!(f, "NVMe drive {name}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::PciNode;
    use crate::units::CpuSet;

    /// Builds a tree from lines `name parent kind numa`, where kind is `host`,
    /// `bridge` or `dev`, and devices are named by their bus id.
    fn tree(spec: &[(&str, Option<&str>, &str, u32)]) -> PciTree {
        let names: Vec<&str> = spec.iter().map(|(name, ..)| *name).collect();
        let nodes = spec
            .iter()
            .map(|(name, parent, kind, numa)| PciNode {
                kind: match *kind {
                    "host" => PciNodeKind::HostBridge,
                    "bridge" => PciNodeKind::Bridge,
                    _ => PciNodeKind::Device { class: 0x0302, vendor: 0x10de, device: 0x2330 },
                },
                bus_id: name.parse().ok(),
                parent: parent.map(|p| names.iter().position(|n| *n == p).expect("parent in spec")),
                numa_nodes: vec![*numa],
                cpus: CpuSet::default(),
            })
            .collect();
        PciTree { nodes }
    }

    fn check(tree: &PciTree, a: &str, b: &str, expected: &str) {
        let level =
            tree.pcie_level(a.parse().expect("bus id"), b.parse().expect("bus id")).map(|level| level.to_string());
        assert_eq!(level.as_deref(), Some(expected), "{a} <-> {b}");
    }

    #[test]
    fn pcie_levels_follow_the_nvidia_smi_legend() {
        // Socket 0: host bridge hb0 with a root port, a two-level switch (DGX A100
        // style) and a one-level switch; host bridge hb1 on the same NUMA node.
        // Socket 1: host bridge hb2.
        let tree = tree(&[
            ("hb0", None, "host", 0),
            ("0000:00:01.0", Some("hb0"), "bridge", 0),          // root port
            ("0000:01:00.0", Some("0000:00:01.0"), "bridge", 0), // switch A upstream
            ("0000:02:00.0", Some("0000:01:00.0"), "bridge", 0), // A downstream 0
            ("0000:02:01.0", Some("0000:01:00.0"), "bridge", 0), // A downstream 1
            ("0000:03:00.0", Some("0000:02:00.0"), "dev", 0),    // GPU under A
            ("0000:04:00.0", Some("0000:02:01.0"), "dev", 0),    // NIC under A
            ("0000:02:02.0", Some("0000:01:00.0"), "bridge", 0), // A downstream 2
            ("0000:05:00.0", Some("0000:02:02.0"), "bridge", 0), // switch B upstream, below A
            ("0000:06:00.0", Some("0000:05:00.0"), "bridge", 0), // B downstream
            ("0000:07:00.0", Some("0000:06:00.0"), "dev", 0),    // device under B
            ("0000:00:02.0", Some("hb0"), "bridge", 0),          // second root port
            ("0000:08:00.0", Some("0000:00:02.0"), "dev", 0),    // device on a root port
            ("hb1", None, "host", 0),
            ("0000:40:01.0", Some("hb1"), "bridge", 0),
            ("0000:41:00.0", Some("0000:40:01.0"), "dev", 0),
            ("hb2", None, "host", 1),
            ("0000:80:01.0", Some("hb2"), "bridge", 1),
            ("0000:81:00.0", Some("0000:80:01.0"), "dev", 1),
        ]);
        check(&tree, "0000:03:00.0", "0000:03:00.0", "X");
        check(&tree, "0000:03:00.0", "0000:04:00.0", "PIX");
        check(&tree, "0000:03:00.0", "0000:07:00.0", "PXB");
        check(&tree, "0000:03:00.0", "0000:08:00.0", "PHB");
        check(&tree, "0000:03:00.0", "0000:41:00.0", "NODE");
        check(&tree, "0000:03:00.0", "0000:81:00.0", "SYS");
        check(&tree, "0000:41:00.0", "0000:81:00.0", "SYS");
    }

    #[test]
    fn levels_order_best_first_and_round_trip_through_text() {
        let levels = [
            ConnectionLevel::Same,
            ConnectionLevel::NvLink(18),
            ConnectionLevel::NvLink(4),
            ConnectionLevel::Pix,
            ConnectionLevel::Pxb,
            ConnectionLevel::Phb,
            ConnectionLevel::Node,
            ConnectionLevel::Sys,
        ];
        for pair in levels.windows(2) {
            assert!(pair[0].rank() < pair[1].rank(), "{} should rank before {}", pair[0], pair[1]);
        }
        for level in levels {
            let json = format!("\"{level}\"");
            let back: ConnectionLevel = serde_json::from_str(&json).expect("parses");
            assert_eq!(back, level);
        }
        assert!(serde_json::from_str::<ConnectionLevel>("\"NVX\"").is_err());
    }

    #[test]
    fn a_cyclic_tree_is_rejected_not_looped_over() {
        let mut cyclic = tree(&[("0000:01:00.0", None, "bridge", 0), ("0000:02:00.0", Some("0000:01:00.0"), "dev", 0)]);
        cyclic.nodes[0].parent = Some(1);
        assert_eq!(cyclic.validate(), Err(TopologyError::PciCycle { index: 0 }));
        assert!(cyclic.pcie_level("0000:01:00.0".parse().expect("id"), "0000:02:00.0".parse().expect("id")).is_some());
    }

    #[test]
    fn a_deep_chain_is_checked_and_measured_in_linear_time() {
        // A registering node may send any tree; this one is a chain of 20,000
        // bridges (the checks were cubic in the depth: hours for this one).
        let bridge = |parent: Option<usize>| PciNode {
            kind: PciNodeKind::Bridge,
            bus_id: None,
            parent,
            numa_nodes: vec![],
            cpus: CpuSet::default(),
        };
        let mut nodes: Vec<PciNode> = (0..20_000).map(|index: usize| bridge(index.checked_sub(1))).collect();
        let device = |bus: &str, parent| PciNode {
            kind: PciNodeKind::Device { class: 0x0302, vendor: 0x10de, device: 0x2330 },
            bus_id: Some(bus.parse().expect("id")),
            parent: Some(parent),
            numa_nodes: vec![],
            cpus: CpuSet::default(),
        };
        nodes.push(device("0000:01:00.0", 19_999));
        nodes.push(device("0000:02:00.0", 10));
        let deep = PciTree { nodes };
        let started = std::time::Instant::now();
        assert_eq!(deep.validate(), Ok(()));
        let level = deep.pcie_level("0000:01:00.0".parse().expect("id"), "0000:02:00.0".parse().expect("id"));
        assert_eq!(level, Some(ConnectionLevel::Pxb));
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "{:?}", started.elapsed());
    }

    #[test]
    fn absurd_nvlink_counts_saturate_rather_than_overflow() {
        use crate::topology::{GpuHealth, NvLink};
        let gpu = |bus: &str, links: &[(NvLinkPeer, &str, u32)]| Gpu {
            index: 0,
            uuid: None,
            model: "GPU".into(),
            memory_mib: None,
            pci_bus_id: bus.parse().expect("id"),
            pci_id: String::new(),
            numa_node: None,
            cpus: CpuSet::default(),
            nvlinks: links
                .iter()
                .map(|(peer, to, links)| NvLink {
                    peer: *peer,
                    peer_pci_bus_id: to.parse().expect("id"),
                    links: *links,
                })
                .collect(),
            mig: None,
            telemetry: None,
            health: GpuHealth::Healthy,
        };
        // A registering node sent these (the wire carries any u32).
        let a = gpu(
            "0000:01:00.0",
            &[
                (NvLinkPeer::Gpu, "0000:02:00.0", u32::MAX),
                (NvLinkPeer::Gpu, "0000:02:00.0", 4),
                (NvLinkPeer::NvSwitch, "0000:05:00.0", u32::MAX),
                (NvLinkPeer::NvSwitch, "0000:06:00.0", 2),
            ],
        );
        let b = gpu("0000:02:00.0", &[(NvLinkPeer::NvSwitch, "0000:05:00.0", u32::MAX)]);
        assert_eq!(nvlink_links(&a, &b), u32::MAX);
        assert_eq!(nvlink_links(&b, &a), u32::MAX);
    }
}
