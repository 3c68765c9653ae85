//! hwloc XML exports, loaded the way `allot-node inventory --hwloc-xml FILE`
//! does: written to a file, read by the node daemon's real hwloc path
//! (`discovery::hwloc::Hwloc::XmlFile`), merged into an inventory without NVML
//! or sysfs, rendered, and registered over the wire (the broker must accept what
//! a node builds). hwloc takes milliseconds per file, so this target runs far
//! fewer inputs than the others.

use std::path::PathBuf;
use std::time::Duration;

use allot_api::proto;
use allot_api::topology::NodeInventory;
use allot_node::discovery::hwloc::Hwloc;
use allot_node::discovery::sysfs::Sysfs;
use allot_node::discovery::{GpuReport, TopologySource, merge};
use allot_node::render;

use super::{as_is, message_of};
use crate::engine::{Outcome, Target};

const DICTIONARY: &[&str] = &[
    "<object type=\"PCIDev\" os_index=\"4096\" pci_busid=\"0000:1b:00.0\" pci_type=\"0302 [10de:2330] [10de:16c1] a1\" pci_link_speed=\"0.000000\">",
    "<object type=\"Bridge\" os_index=\"16\" bridge_type=\"1-1\" depth=\"0\" bridge_pci=\"0000:[17-1b]\" pci_busid=\"0000:16:00.0\" pci_type=\"0604 [8086:352a] [0000:0000] 04\">",
    "<object type=\"OSDev\" name=\"nvml0\" osdev_type=\"5\"/>",
    "<object type=\"OSDev\" name=\"ib0\" osdev_type=\"2\"/>",
    "<object type=\"NUMANode\" os_index=\"0\" cpuset=\"0x0000000f\" local_memory=\"1024\"/>",
    "<object type=\"PU\" os_index=\"0\" cpuset=\"0x00000001\"/>",
    "</object>",
    "<distances2 type=\"NUMANode\" nbobjs=\"2\" kind=\"5\" name=\"NVLinkBandwidth\" indexing=\"gp\">",
    "<indexes length=\"3\">1 2 3</indexes>",
    "<u64values length=\"4\">10 20 20 10</u64values>",
    "</distances2>",
    "<info name=\"PCIVendor\" value=\"NVIDIA Corporation\"/>",
    "type=\"PCIDev\"",
    "type=\"OSDev\"",
    "type=\"Bridge\"",
    "type=\"Package\"",
    "type=\"Core\"",
    "type=\"L3Cache\"",
    "type=\"NUMANode\"",
    "pci_busid=\"",
    "pci_type=\"",
    "bridge_pci=\"",
    "bridge_type=\"",
    "cpuset=\"",
    "nodeset=\"",
    "os_index=\"",
    "gp_index=\"",
    "cache_size=\"",
    "local_memory=\"",
    "depth=\"",
    "0x",
    "0xffffffff,0xffffffff",
    "0xf...f",
    "0000:[17-1b]",
    "ffff:ff:1f.7",
    "0302 [10de:2330] [10de:16c1] a1",
    "0680 [10de:22a3] [10de:1796] a1",
    "0207 [15b3:1021] [15b3:0041] 00",
    "&amp;",
    "&#0;",
    "<!--",
    "-->",
    "<![CDATA[",
    "]]>",
];

pub const TARGET: Target = Target {
    name: "hwloc-xml",
    summary: "hwloc XML through allot-node's hwloc path (Hwloc::XmlFile), merged without NVML, rendered, registered over the wire",
    run,
    structured: None,
    dictionary: DICTIONARY,
    max_len: 512 * 1024,
    time_limit: Duration::from_secs(10),
    load: as_is,
    // hwloc is C: a malformed file can end the process (a segmentation fault) instead of failing.
    isolate: true,
    // hwlocality runs hwloc's consistency check after every load in debug builds
    // (`cfg!(debug_assertions)`), and the check aborts on a topology hwloc itself
    // accepted; release builds, which ship, never run it.
    debug_only_aborts: &[": hwloc_topology_check: Assertion", ": hwloc__check_"],
    scratch: Some(scratch_file),
};

/// The file `--hwloc-xml` reads, one per process that runs inputs (each isolated
/// input runs in a child of its own), removed when the input is done.
fn scratch_file(pid: u32) -> PathBuf {
    std::env::temp_dir().join(format!("allot-fuzz-hwloc-{pid}.xml"))
}

/// Removes the scratch file however the input ends, short of a signal (then the
/// engine does).
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        std::fs::remove_file(&self.0).ok();
    }
}

fn run(input: &[u8]) -> Outcome {
    let file = Scratch(scratch_file(std::process::id()));
    std::fs::write(&file.0, input).map_err(message_of)?;
    // Messages name the file; the same name every time keeps them comparable.
    let named = |error: allot_node::discovery::DiscoveryError| {
        message_of(error).replace(&file.0.display().to_string(), "topology.xml")
    };
    let host = Hwloc::XmlFile(file.0.clone()).discover().map_err(named)?;
    let report = GpuReport::Absent { reason: "no NVML: an XML file of another machine".into() };
    let inventory = merge("fuzz-node", host, report, &Sysfs::none()).map_err(named)?;
    // What `allot-node inventory` prints.
    assert!(!render::table(&inventory).is_empty());
    assert!(!render::json(&inventory).is_empty());
    // What `allot-node run` registers: the broker must take it as it is.
    let accepted = NodeInventory::try_from(proto::NodeInventory::from(&inventory));
    match accepted {
        Ok(back) => assert_eq!(back, inventory, "the broker reads another inventory than the node sent"),
        Err(error) => panic!("the broker refuses an inventory the node built: {error}"),
    }
    Ok(format!(
        "gpus {} nics {} numa {} warnings {}",
        inventory.gpus.len().min(4),
        inventory.nics.len().min(2),
        inventory.cpu.numa_nodes.len().min(3),
        !inventory.warnings.is_empty()
    ))
}
