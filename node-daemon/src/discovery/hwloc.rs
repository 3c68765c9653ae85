//! hwloc through hwlocality: CPUs, NUMA nodes, caches and the PCIe tree with its
//! OS devices, from this machine or from an hwloc XML export of another one.

use std::collections::HashMap;
use std::path::PathBuf;

use allot_api::topology::{
    CacheKind, CacheLevel, Core, CpuTopology, NumaNode, NvLinkPeer, Package, PciNode, PciNodeKind, PciTree,
};
use allot_api::units::{CpuSet, MiB, PciBusId};
use hwlocality::object::TopologyObject;
use hwlocality::object::attributes::{ObjectAttributes, UpstreamAttributes};
use hwlocality::object::types::{BridgeType, OSDeviceType, ObjectType};
use hwlocality::topology::Topology;
use hwlocality::topology::builder::TypeFilter;

use super::{DiscoveryError, HostTopology, HwlocNvLink, OsDevice, OsDeviceKind, PciDevice, TopologySource, pci_class};

/// Where hwloc reads the machine from.
#[derive(Debug, Clone)]
pub enum Hwloc {
    /// This machine, through the OS.
    Live,
    /// An XML export (`lstopo-no-graphics --whole-io --of xml`), of any machine.
    XmlFile(PathBuf),
    /// XML already in memory (a bundled fixture); the name is for messages.
    XmlText { origin: String, xml: String },
}

impl TopologySource for Hwloc {
    fn discover(&self) -> Result<HostTopology, DiscoveryError> {
        let (origin, xml) = match self {
            Hwloc::Live => ("this machine".to_owned(), None),
            Hwloc::XmlFile(path) => {
                let xml = std::fs::read_to_string(path)
                    .map_err(|source| DiscoveryError::XmlUnreadable { path: path.clone(), source })?;
                (path.display().to_string(), Some(xml))
            }
            Hwloc::XmlText { origin, xml } => (origin.clone(), Some(xml.clone())),
        };
        if let Some(xml) = &xml {
            check_looks_like_hwloc_xml(&origin, xml)?;
        }
        // hwlocality panics on hwloc errors it did not expect; a topology file from a
        // user must never take the daemon down, so such a panic becomes an error.
        let loaded = std::panic::catch_unwind(|| load(xml.as_deref()));
        let topology = match loaded {
            Ok(result) => result.map_err(|problem| match &xml {
                Some(_) => DiscoveryError::XmlMalformed { path: origin.clone().into(), problem },
                None => DiscoveryError::Hwloc(problem),
            })?,
            Err(_) => {
                return Err(DiscoveryError::XmlMalformed {
                    path: origin.into(),
                    problem: "hwloc failed unexpectedly while loading it".to_owned(),
                });
            }
        };
        let mut host = read_topology(&topology);
        host.origin = origin;
        Ok(host)
    }
}

/// Cheap checks that turn hwloc's silent rejection into a message a person can act on.
fn check_looks_like_hwloc_xml(origin: &str, xml: &str) -> Result<(), DiscoveryError> {
    let malformed = |problem: &str| DiscoveryError::XmlMalformed { path: origin.into(), problem: problem.to_owned() };
    if xml.trim().is_empty() {
        return Err(malformed("the file is empty"));
    }
    if xml.contains('\0') {
        return Err(malformed("the file contains NUL bytes"));
    }
    if !xml.contains("<topology") {
        return Err(malformed("there is no <topology> element"));
    }
    if !xml.trim_end().ends_with("</topology>") {
        return Err(malformed("the file ends before </topology> (truncated?)"));
    }
    check_object_tags(xml).map_err(|problem| malformed(&problem))
}

/// The escapes hwloc's built-in parser reads in a value (after the `&`); any other
/// `&` ends its reading of the tag.
const HWLOC_ESCAPES: [&str; 7] = ["#10;", "#13;", "#9;", "quot;", "lt;", "gt;", "amp;"];

/// Refuses `<object>` tags that crash hwloc 2.9 (a segmentation fault or a failed
/// assertion, which no `catch_unwind` catches) instead of failing: found by
/// fuzzing (`fuzz/`, target `hwloc-xml`), each checked against `lstopo`.
///
/// Tags are read as hwloc's built-in parser reads them: a tag ends at the first
/// `>`, attributes are `name="value"` pairs with names of lowercase letters and
/// `_` and only a few `&` escapes in values. That parser stops at the first pair
/// it cannot read and ignores the rest of the tag, takes an attribute given
/// twice, and ignores every object after the first top-level one closed; objects
/// left without their sets, or with a second `type`, crash it, and so does a
/// bitmap (a cpuset) that starts with a comma. hwloc also
/// dereferences `complete_cpuset` (a NUMA node's `complete_nodeset`) without
/// checking that the file gave one (open-mpi/hwloc#783). hwloc's own exports
/// never do any of this.
fn check_object_tags(xml: &str) -> Result<(), String> {
    let line = |offset: usize| xml[..offset].matches('\n').count() + 1;
    let mut depth = 0usize;
    let mut roots = 0usize;
    let mut next_tag = 0;
    for (offset, _) in xml.match_indices('<') {
        if offset < next_tag {
            continue;
        }
        let from_here = &xml[offset..];
        if from_here.starts_with("</object>") {
            depth =
                depth.checked_sub(1).ok_or_else(|| format!("line {}: </object> closes no <object>", line(offset)))?;
            continue;
        }
        let Some(tag_start) = from_here.strip_prefix("<object ") else { continue };
        let tag = tag_start.split('>').next().unwrap_or_default();
        next_tag = offset + "<object ".len() + tag.len();
        if depth == 0 && roots > 0 {
            return Err(format!(
                "line {}: an <object> after the machine's closed; hwloc ignores it and all after it (an extra </object>?)",
                line(offset)
            ));
        }
        let self_closing = tag.ends_with('/');
        let names = read_attributes(tag.strip_suffix('/').unwrap_or(tag))
            .map_err(|problem| format!("line {}: {problem}", line(offset)))?;
        for (set, complete) in [("cpuset", "complete_cpuset"), ("nodeset", "complete_nodeset")] {
            if names.contains(&set) && !names.contains(&complete) {
                return Err(format!("line {}: an <object> has a {set} but no {complete}", line(offset)));
            }
        }
        if depth == 0 {
            roots += 1;
        }
        if !self_closing {
            depth += 1;
        }
    }
    Ok(())
}

/// The attribute names of a tag, read as hwloc's built-in parser reads them, or
/// where it would stop reading.
fn read_attributes(tag: &str) -> Result<Vec<&str>, String> {
    let mut names = Vec::new();
    let mut attributes = tag.trim_start_matches([' ', '\t', '\n']);
    while !attributes.is_empty() {
        let unreadable = || {
            let unread: String = attributes.chars().take(40).collect();
            format!("hwloc cannot read the attributes of an <object> from {unread:?} on")
        };
        let name_length = attributes.find(|c: char| !(c.is_ascii_lowercase() || c == '_')).unwrap_or(attributes.len());
        let (name, after) = attributes.split_at(name_length);
        let value_start = after.strip_prefix("=\"").ok_or_else(unreadable)?;
        let mut value = value_start;
        let after_value = loop {
            let end = value.find(['"', '&']).ok_or_else(unreadable)?;
            let (_, from_end) = value.split_at(end);
            if let Some(after_value) = from_end.strip_prefix('"') {
                break after_value;
            }
            let escaped = &from_end[1..];
            let escape = HWLOC_ESCAPES.iter().find(|escape| escaped.starts_with(**escape)).ok_or_else(unreadable)?;
            value = &escaped[escape.len()..];
        };
        if names.contains(&name) {
            return Err(format!("attribute {name} appears twice in one <object>"));
        }
        // hwloc counts a bitmap's words from its second character: a leading comma
        // fails an assertion (SIGABRT) in hwloc_bitmap_sscanf.
        let raw = &value_start[..value_start.len() - after_value.len() - 1];
        if (name.ends_with("cpuset") || name.ends_with("nodeset")) && raw.starts_with(',') {
            return Err(format!("{name} {raw:?} starts with a comma"));
        }
        names.push(name);
        attributes = after_value.trim_start_matches([' ', '\t', '\n']);
    }
    Ok(names)
}

fn load(xml: Option<&str>) -> Result<Topology, String> {
    let mut builder = Topology::builder();
    if let Some(xml) = xml {
        builder = builder.from_xml(xml).map_err(|error| format!("hwloc rejected the XML: {error}"))?;
    }
    builder = builder
        .with_io_type_filter(TypeFilter::KeepAll)
        .map_err(|error| format!("cannot enable I/O discovery: {error}"))?
        .with_cpu_icache_type_filter(TypeFilter::KeepAll)
        .map_err(|error| format!("cannot enable instruction caches: {error}"))?;
    builder.build().map_err(|error| match xml {
        Some(_) => {
            "hwloc rejected it; run again with HWLOC_XML_VERBOSE=1 to see the element hwloc objects to".to_owned()
        }
        None => format!("hwloc_topology_load failed: {error}"),
    })
}

fn cpu_set(object: &TopologyObject) -> CpuSet {
    object.cpuset().map(|set| set.iter_set().map(|index| usize::from(index) as u32).collect()).unwrap_or_default()
}

fn node_set(object: &TopologyObject) -> Vec<u32> {
    object.nodeset().map(|set| set.iter_set().map(|index| usize::from(index) as u32).collect()).unwrap_or_default()
}

fn os_index(object: &TopologyObject) -> u32 {
    object.os_index().map(|index| index as u32).unwrap_or(object.logical_index() as u32)
}

fn info(object: &TopologyObject, key: &str) -> Option<String> {
    object.info(key).map(|value| value.to_string_lossy().into_owned())
}

fn read_topology(topology: &Topology) -> HostTopology {
    let cpu = read_cpu(topology);
    let (pci, devices) = read_pci(topology);
    let (nvlinks, warnings) = read_nvlinks(topology);
    HostTopology { cpu, pci, devices, nvlinks, warnings, origin: String::new() }
}

/// The name hwloc's NVML plugin gives its NVLink matrix.
const NVLINK_BANDWIDTH: &str = "NVLinkBandwidth";

/// Unidirectional MB/s per link hwloc's NVML plugin (2.x) records: 25000 for NVLink 2 to
/// 4, 20000 for NVLink 1. It sums the links between two objects.
const BANDWIDTH_PER_LINK: [u64; 2] = [25_000, 20_000];

/// The link count behind a recorded bandwidth, when it is a whole number of links.
fn links_from_bandwidth(bandwidth: u64) -> Option<u32> {
    BANDWIDTH_PER_LINK
        .iter()
        .find(|per_link| bandwidth.is_multiple_of(**per_link))
        .and_then(|per_link| u32::try_from(bandwidth / per_link).ok())
}

/// What one row or column of the NVLink matrix is: a GPU (hwloc's `nvmlN` OS device, below
/// its PCI function) or an NVSwitch (a PCI device). Anything else (the POWER9 CPUs of an
/// AC922) is not something Allot places on.
fn nvlink_end(object: &TopologyObject) -> Option<(PciBusId, NvLinkPeer)> {
    let pci_of = |object: &TopologyObject| match object.attributes() {
        Some(ObjectAttributes::PCIDevice(pci)) => Some((
            pci_bus_id(pci.domain(), pci.bus_id(), pci.bus_device(), pci.function()),
            pci.class_id(),
            pci.vendor_id(),
        )),
        _ => None,
    };
    match object.object_type() {
        ObjectType::OSDevice => {
            let (bus_id, class, vendor) = pci_of(object.parent()?)?;
            let is_gpu = vendor == pci_class::NVIDIA && matches!(class, pci_class::VGA | pci_class::DISPLAY_3D);
            is_gpu.then_some((bus_id, NvLinkPeer::Gpu))
        }
        ObjectType::PCIDevice => {
            let (bus_id, class, vendor) = pci_of(object)?;
            (vendor == pci_class::NVIDIA && class == pci_class::BRIDGE_OTHER).then_some((bus_id, NvLinkPeer::NvSwitch))
        }
        _ => None,
    }
}

/// NVLinks from hwloc's `NVLinkBandwidth` distances: one entry per GPU and peer with a
/// non-zero bandwidth, plus warnings for values that are no whole number of links.
fn read_nvlinks(topology: &Topology) -> (Vec<HwlocNvLink>, Vec<String>) {
    let mut links = Vec::new();
    let mut warnings = Vec::new();
    let Ok(matrices) = topology.distances_with_name(NVLINK_BANDWIDTH) else { return (links, warnings) };
    for matrix in &matrices {
        let ends: Vec<Option<(PciBusId, NvLinkPeer)>> =
            matrix.objects().map(|object| object.and_then(nvlink_end)).collect();
        let values = matrix.distances();
        let count = ends.len();
        if values.len() != count * count {
            continue;
        }
        for (row, end) in ends.iter().enumerate() {
            let Some((gpu, NvLinkPeer::Gpu)) = end else { continue };
            for (column, peer) in ends.iter().enumerate() {
                let (Some((peer_bus_id, peer_kind)), false) = (peer, row == column) else { continue };
                let bandwidth = values[row * count + column];
                match links_from_bandwidth(bandwidth) {
                    Some(0) => {}
                    Some(link_count) => links.push(HwlocNvLink {
                        gpu: *gpu,
                        peer: *peer_bus_id,
                        peer_kind: *peer_kind,
                        links: link_count,
                    }),
                    None => warnings.push(format!(
                        "hwloc's {NVLINK_BANDWIDTH} between {gpu} and {peer_bus_id} is {bandwidth} MB/s, no whole number of NVLinks (25000 or 20000 MB/s each); that link is left out"
                    )),
                }
            }
        }
    }
    (links, warnings)
}

fn read_cpu(topology: &Topology) -> CpuTopology {
    let numa_nodes: Vec<NumaNode> = topology
        .objects_with_type(ObjectType::NUMANode)
        .map(|node| {
            let memory = match node.attributes() {
                Some(ObjectAttributes::NUMANode(attributes)) => {
                    attributes.local_memory().map(|bytes| bytes.get()).unwrap_or(0)
                }
                _ => 0,
            };
            NumaNode {
                index: os_index(node),
                memory_mib: MiB::from_bytes(memory),
                cpus: cpu_set(node),
                distances: vec![],
            }
        })
        .collect();
    let numa_nodes = with_distances(topology, numa_nodes);

    let packages = topology
        .objects_with_type(ObjectType::Package)
        .map(|package| Package {
            index: os_index(package),
            model: info(package, "CPUModel"),
            cpus: cpu_set(package),
            numa_nodes: node_set(package),
        })
        .collect();

    let numa_of = |cpus: &CpuSet| -> Option<u32> {
        numa_nodes.iter().find(|node| !cpus.is_empty() && cpus.is_subset_of(&node.cpus)).map(|node| node.index)
    };
    let cores = topology
        .objects_with_type(ObjectType::Core)
        .map(|core| {
            let pus = cpu_set(core);
            Core {
                index: core.logical_index() as u32,
                package: core.first_ancestor_with_type(ObjectType::Package).map(os_index),
                numa_node: numa_of(&pus),
                pus,
            }
        })
        .collect();

    let mut pus: Vec<u32> = topology.objects_with_type(ObjectType::PU).map(os_index).collect();
    pus.sort_unstable();

    let cache_types = [
        (ObjectType::L1Cache, 1, CacheKind::Data),
        (ObjectType::L1ICache, 1, CacheKind::Instruction),
        (ObjectType::L2Cache, 2, CacheKind::Unified),
        (ObjectType::L2ICache, 2, CacheKind::Instruction),
        (ObjectType::L3Cache, 3, CacheKind::Unified),
        (ObjectType::L3ICache, 3, CacheKind::Instruction),
        (ObjectType::L4Cache, 4, CacheKind::Unified),
        (ObjectType::L5Cache, 5, CacheKind::Unified),
    ];
    let mut caches = Vec::new();
    for (object_type, level, default_kind) in cache_types {
        let instances: Vec<&TopologyObject> = topology.objects_with_type(object_type).collect();
        let Some(first) = instances.first() else { continue };
        let (size, kind) = match first.attributes() {
            Some(ObjectAttributes::Cache(attributes)) => {
                let kind = match attributes.cache_type() {
                    hwlocality::object::types::CacheType::Unified => CacheKind::Unified,
                    hwlocality::object::types::CacheType::Data => CacheKind::Data,
                    hwlocality::object::types::CacheType::Instruction => CacheKind::Instruction,
                    _ => default_kind,
                };
                (attributes.size().map(|size| size.get()).unwrap_or(0), kind)
            }
            _ => (0, default_kind),
        };
        caches.push(CacheLevel {
            level,
            kind,
            size_kib: size / 1024,
            count: instances.len() as u32,
            pus_per_instance: cpu_set(first).len() as u32,
        });
    }

    CpuTopology { packages, numa_nodes, cores, pus, caches }
}

/// Fills NUMA distances from hwloc's latency matrix, when the firmware gave one.
fn with_distances(topology: &Topology, mut numa_nodes: Vec<NumaNode>) -> Vec<NumaNode> {
    let Ok(matrices) = topology.distances_with_type(None, ObjectType::NUMANode) else {
        return numa_nodes;
    };
    let Some(matrix) = matrices.first() else { return numa_nodes };
    let order: Vec<Option<u32>> = matrix.objects().map(|object| object.map(os_index)).collect();
    let values = matrix.distances();
    let count = order.len();
    if values.len() != count * count {
        return numa_nodes;
    }
    let position_of = |index: u32| order.iter().position(|entry| *entry == Some(index));
    let node_indices: Vec<u32> = numa_nodes.iter().map(|node| node.index).collect();
    for node in &mut numa_nodes {
        let Some(row) = position_of(node.index) else { continue };
        let distances: Option<Vec<u32>> = node_indices
            .iter()
            .map(|other| position_of(*other).map(|column| values[row * count + column] as u32))
            .collect();
        node.distances = distances.unwrap_or_default();
    }
    numa_nodes
}

fn pci_bus_id(domain: impl Into<u32>, bus: u8, device: u8, function: u8) -> PciBusId {
    PciBusId { domain: domain.into(), bus, device, function }
}

fn read_pci(topology: &Topology) -> (PciTree, Vec<PciDevice>) {
    let mut nodes = Vec::new();
    let mut index_of = HashMap::new();
    let mut devices = Vec::new();

    // hwloc lists I/O objects parents first, so a parent is always indexed already.
    for object in topology.io_objects() {
        let kind_and_bus = match (object.object_type(), object.attributes()) {
            (ObjectType::Bridge, Some(ObjectAttributes::Bridge(bridge))) => match bridge.upstream_type() {
                BridgeType::Host => Some((PciNodeKind::HostBridge, None)),
                _ => {
                    let bus = match bridge.upstream_attributes() {
                        Some(UpstreamAttributes::PCI(pci)) => {
                            Some(pci_bus_id(pci.domain(), pci.bus_id(), pci.bus_device(), pci.function()))
                        }
                        _ => None,
                    };
                    Some((PciNodeKind::Bridge, bus))
                }
            },
            (ObjectType::PCIDevice, Some(ObjectAttributes::PCIDevice(pci))) => Some((
                PciNodeKind::Device { class: pci.class_id(), vendor: pci.vendor_id(), device: pci.device_id() },
                Some(pci_bus_id(pci.domain(), pci.bus_id(), pci.bus_device(), pci.function())),
            )),
            _ => None,
        };
        let Some((kind, bus_id)) = kind_and_bus else { continue };
        let parent = object.parent().and_then(|parent| index_of.get(&parent.global_persistent_index()).copied());
        let locality = object.first_non_io_ancestor();
        let numa_nodes = locality.map(node_set).unwrap_or_default();
        let cpus = locality.map(cpu_set).unwrap_or_default();
        index_of.insert(object.global_persistent_index(), nodes.len());
        if let (PciNodeKind::Device { class, vendor, device }, Some(bus_id)) = (&kind, bus_id) {
            devices.push(PciDevice {
                bus_id,
                class: *class,
                vendor: *vendor,
                device: *device,
                vendor_name: info(object, "PCIVendor"),
                device_name: info(object, "PCIDevice"),
                numa_nodes: numa_nodes.clone(),
                cpus: cpus.clone(),
                os_devices: os_devices_below(object),
            });
        }
        nodes.push(PciNode { kind, bus_id, parent, numa_nodes, cpus });
    }
    (PciTree { nodes }, devices)
}

/// OS devices hang directly below their PCI function.
fn os_devices_below(pci_device: &TopologyObject) -> Vec<OsDevice> {
    pci_device
        .io_children()
        .filter(|child| child.object_type() == ObjectType::OSDevice)
        .map(|child| {
            let kind = match child.attributes() {
                Some(ObjectAttributes::OSDevice(os_device)) => match os_device.device_type() {
                    OSDeviceType::Storage => OsDeviceKind::Block,
                    OSDeviceType::Network => OsDeviceKind::Network,
                    OSDeviceType::OpenFabrics => OsDeviceKind::OpenFabrics,
                    OSDeviceType::GPU => OsDeviceKind::Gpu,
                    OSDeviceType::CoProcessor => OsDeviceKind::CoProcessor,
                    OSDeviceType::DMA => OsDeviceKind::Dma,
                    _ => OsDeviceKind::Other,
                },
                _ => OsDeviceKind::Other,
            };
            OsDevice {
                name: child.name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default(),
                kind,
                infos: child
                    .infos()
                    .iter()
                    .map(|info| {
                        (info.name().to_string_lossy().into_owned(), info.value().to_string_lossy().into_owned())
                    })
                    .collect(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_tags_that_crash_hwloc_are_refused_before_it() {
        let object = |attributes: &str| format!("<topology>\n  <object type=\"PU\" {attributes}/>\n</topology>");
        let check = |attributes: &str| check_object_tags(&object(attributes));
        let whole = "os_index=\"0\" cpuset=\"0x1\" complete_cpuset=\"0x1\" nodeset=\"0x1\" complete_nodeset=\"0x1\"";
        assert_eq!(check(whole), Ok(()));
        assert_eq!(check("os_index=\"0\""), Ok(()), "I/O objects have no sets");
        let refused = [
            (
                "cpuset=\"0x1\" nodeset=\"0x1\" complete_nodeset=\"0x1\"",
                "line 2: an <object> has a cpuset but no complete_cpuset",
            ),
            (
                "cpuset=\"0x1\" complete_cpuset=\"0x1\" nodeset=\"0x1\"",
                "line 2: an <object> has a nodeset but no complete_nodeset",
            ),
            // hwloc would stop reading at the first pair it cannot read.
            (
                "cpuset=\"0x1\" complete_cpuset\"=\"0x1\"",
                "line 2: hwloc cannot read the attributes of an <object> from",
            ),
            ("os1000_index=\"0\"", "line 2: hwloc cannot read the attributes"),
            ("depth=\"3\"type=\"L3Cache\"", "line 2: attribute type appears twice in one <object>"),
            (
                "cpuset=\"0x1\" complete_cpuset=\"0x1\" complete_cpuset=\"0x3\"",
                "attribute complete_cpuset appears twice",
            ),
            ("online_cpuset=\"0x0000f&#0;fff\" cpuset=\"0x1\"", "line 2: hwloc cannot read the attributes"),
            ("cpuset=\",,,,0x0\" complete_cpuset=\"0x1\"", "line 2: cpuset \",,,,0x0\" starts with a comma"),
        ];
        for (attributes, expected) in refused {
            let error = check(attributes).expect_err(attributes);
            assert!(error.starts_with(expected) || error.contains(expected), "{error:?} for {attributes:?}");
        }
        assert_eq!(check("name=\"a&amp;b&#10;\" os_index=\"1\""), Ok(()), "the escapes hwloc writes");
        // Objects nest under one machine; hwloc ignores whatever comes after it.
        let machine = "<object type=\"Machine\" os_index=\"0\">\n  <object type=\"PU\" os_index=\"0\"/>\n</object>";
        let file = |objects: &str| check_object_tags(&format!("<topology>\n{objects}\n</topology>"));
        assert_eq!(file(machine), Ok(()));
        let error = file(&format!("{machine}\n<object type=\"PU\" os_index=\"1\"/>")).expect_err("a second root");
        assert!(error.starts_with("line 5: an <object> after the machine's closed"), "{error}");
        let error = file(&format!("{machine}\n</object>")).expect_err("a stray close");
        assert!(error.starts_with("line 5: </object> closes no <object>"), "{error}");
    }
}
