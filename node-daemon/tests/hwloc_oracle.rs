//! An oracle for `allot-node inventory --hwloc-xml`: for every hwloc XML export the
//! repository carries (the real machines under `tests/data/real/` and the fixtures'
//! `tests/data/*/topology.xml`), the real binary's JSON must agree with what hwloc's
//! own command-line tool, `hwloc-info`, says about the same file:
//!
//! - which PCI functions are NVIDIA GPUs (vendor 0x10de, class 0x0300 or 0x0302),
//!   numbered in PCI bus-id order, and which are NICs (class 0x02xx);
//! - each GPU's and NIC's NUMA node: the OS index of the only NUMA node in the nodeset
//!   of the device's first non-I/O ancestor, or none when that nodeset holds several;
//! - every GPU×GPU and GPU×NIC connection level of the `nvidia-smi topo -m` legend,
//!   derived here from the ancestor chains `hwloc-info --ancestors` prints.
//!
//! The oracle deliberately shares no code with Allot: it parses `hwloc-info` text and
//! applies the legend's definitions itself. Levels, for two distinct devices:
//! - their lowest common I/O ancestor is a PCI bridge and each device sits at most one
//!   bridge below it (directly under it, or under one of its downstream ports): PIX;
//! - that ancestor is a PCI bridge but a device is deeper: PXB;
//! - that ancestor is a host bridge: PHB;
//! - no common I/O ancestor (different host bridges): NODE when the host bridges'
//!   non-I/O parents cover the same NUMA nodes, SYS otherwise.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const INSTALL_HINT: &str = "install Debian's hwloc package (apt-get install hwloc)";

fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("node-daemon/ sits in the repository root").to_path_buf()
}

/// Every hwloc XML the repository carries: `tests/data/real/*.xml`, then each
/// fixture's `tests/data/*/topology.xml`.
fn topology_files() -> Vec<PathBuf> {
    let data = repository_root().join("tests/data");
    let mut real: Vec<PathBuf> = std::fs::read_dir(data.join("real"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|entry| entry.path())
                .filter(|path| path.extension().is_some_and(|ext| ext == "xml"))
                .collect()
        })
        .unwrap_or_default();
    real.sort();
    let mut fixtures: Vec<PathBuf> = std::fs::read_dir(&data)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|entry| entry.path().join("topology.xml"))
                .filter(|path| path.is_file())
                .collect()
        })
        .unwrap_or_default();
    fixtures.sort();
    real.into_iter().chain(fixtures).collect()
}

/// Runs an hwloc tool; a missing tool is a setup problem, not a finding.
fn run_hwloc_tool(tool: &str, args: &[&str]) -> Result<String, String> {
    let output = match Command::new(tool).args(args).output() {
        Ok(output) => output,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            panic!("`{tool}` is not installed: {INSTALL_HINT}")
        }
        Err(error) => panic!("cannot run `{tool}` ({error}): {INSTALL_HINT}"),
    };
    if !output.status.success() {
        return Err(format!(
            "`{tool} {}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    String::from_utf8(output.stdout).map_err(|error| format!("`{tool}` printed invalid UTF-8: {error}"))
}

// ---------------------------------------------------------------------------------
// Reading hwloc-info's text output.
// ---------------------------------------------------------------------------------

/// A PCI bus id as numbers, so that ordering and comparison do not depend on how
/// either side pads the domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct BusId {
    domain: u32,
    bus: u8,
    device: u8,
    function: u8,
}

impl BusId {
    fn parse(text: &str) -> Option<BusId> {
        let text = text.trim();
        let (domain, rest) = text.split_once(':')?;
        let (bus, rest) = rest.split_once(':')?;
        let (device, function) = rest.split_once('.')?;
        Some(BusId {
            domain: u32::from_str_radix(domain, 16).ok()?,
            bus: u8::from_str_radix(bus, 16).ok()?,
            device: u8::from_str_radix(device, 16).ok()?,
            function: u8::from_str_radix(function, 16).ok()?,
        })
    }
}

impl std::fmt::Display for BusId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04x}:{:02x}:{:02x}.{:x}", self.domain, self.bus, self.device, self.function)
    }
}

/// One object as `hwloc-info` describes it: a header line then ` key = value` lines.
#[derive(Debug, Clone, Default)]
struct Described {
    header: String,
    fields: BTreeMap<String, String>,
}

impl Described {
    fn field(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }
}

/// Parses `hwloc-info -n` output into objects keyed by the `-n` prefix (`3` for the
/// fourth listed object, `3.2` for the second ancestor of the fourth location),
/// in output order.
fn parse_described(text: &str) -> Vec<(String, Described)> {
    let mut objects: Vec<(String, Described)> = Vec::new();
    for line in text.lines() {
        let Some((prefix, rest)) = line.split_once(": ") else { continue };
        if let Some(field) = rest.strip_prefix(' ') {
            let Some((key, value)) = field.split_once(" = ") else { continue };
            if let Some((last_prefix, object)) = objects.last_mut()
                && last_prefix == prefix
            {
                object.fields.insert(key.trim().to_owned(), value.trim().to_owned());
            }
        } else {
            objects.push((prefix.to_owned(), Described { header: rest.to_owned(), fields: BTreeMap::new() }));
        }
    }
    objects
}

/// An hwloc bitmap string (`0x00000101`, `0x0000ffff,0xffffffff,,,0x0`: 32-bit words,
/// most significant first, empty words zero) as the set of its bit indexes.
fn parse_bitmap(text: &str) -> Option<BTreeSet<u32>> {
    let mut set = BTreeSet::new();
    for (word_index, word) in text.trim().split(',').rev().enumerate() {
        let digits = word.trim().trim_start_matches("0x");
        if digits.is_empty() {
            continue;
        }
        let value = u32::from_str_radix(digits, 16).ok()?;
        for bit in 0..32 {
            if value & (1 << bit) != 0 {
                set.insert(word_index as u32 * 32 + bit);
            }
        }
    }
    Some(set)
}

/// A PCI function as `hwloc-info pci:all` lists it.
#[derive(Debug, Clone)]
struct PciFunction {
    bus_id: BusId,
    class: u16,
    vendor: u16,
}

fn list_pci_functions(file: &str) -> Result<Vec<PciFunction>, String> {
    let text = run_hwloc_tool("hwloc-info", &["-i", file, "--whole-io", "-n", "pci:all"])?;
    parse_described(&text)
        .into_iter()
        .map(|(_, object)| {
            let bus_id = object.field("attr PCI bus id").and_then(BusId::parse);
            let class = object.field("attr PCI class").and_then(|class| u16::from_str_radix(class, 16).ok());
            let vendor = object
                .field("attr PCI id")
                .and_then(|id| id.split_once(':'))
                .and_then(|(vendor, _)| u16::from_str_radix(vendor, 16).ok());
            match (bus_id, class, vendor) {
                (Some(bus_id), Some(class), Some(vendor)) => Ok(PciFunction { bus_id, class, vendor }),
                _ => Err(format!("hwloc-info described a PCI object without bus id, class or id: {object:?}")),
            }
        })
        .collect()
}

fn list_numa_nodes(file: &str) -> Result<BTreeSet<u32>, String> {
    let text = run_hwloc_tool("hwloc-info", &["-i", file, "--whole-io", "-n", "NUMANode:all"])?;
    parse_described(&text)
        .into_iter()
        .map(|(_, object)| {
            object
                .field("os index")
                .and_then(|index| index.parse().ok())
                .ok_or_else(|| format!("NUMA node without an OS index: {object:?}"))
        })
        .collect()
}

/// One link of an ancestor chain, device first.
#[derive(Debug, Clone)]
struct ChainLink {
    /// hwloc's global persistent index: identity within one hwloc-info run.
    gp_index: String,
    /// `type`: Bridge, PCIDev, OSDev for I/O objects; Package, Group, Machine, ...
    kind: String,
    /// `full type`: HostBridge or PCIBridge for bridges.
    full_kind: String,
    nodeset: Option<BTreeSet<u32>>,
    header: String,
}

impl ChainLink {
    fn is_io(&self) -> bool {
        matches!(self.kind.as_str(), "Bridge" | "PCIDev" | "OSDev")
    }
}

/// The ancestor chains of the given devices, from one `hwloc-info --ancestors` run so
/// that global persistent indexes are comparable across chains.
fn ancestor_chains(file: &str, devices: &[BusId]) -> Result<BTreeMap<BusId, Vec<ChainLink>>, String> {
    if devices.is_empty() {
        return Ok(BTreeMap::new());
    }
    let locations: Vec<String> = devices.iter().map(|bus_id| format!("pci={bus_id}")).collect();
    let mut args = vec!["-i", file, "--whole-io", "-n", "--ancestors"];
    args.extend(locations.iter().map(String::as_str));
    let text = run_hwloc_tool("hwloc-info", &args)?;

    // Chains keyed by the `-n` location number, then re-keyed by the bus id that
    // hwloc-info reports for the device itself (not by command-line order).
    let mut chains: BTreeMap<String, (BusId, Vec<ChainLink>)> = BTreeMap::new();
    for (prefix, object) in parse_described(&text) {
        let location = prefix.split_once('.').map(|(location, _)| location).unwrap_or(&prefix).to_owned();
        let link = ChainLink {
            gp_index: object.field("gp index").unwrap_or_default().to_owned(),
            kind: object.field("type").unwrap_or_default().to_owned(),
            full_kind: object.field("full type").unwrap_or_default().to_owned(),
            nodeset: object.field("nodeset").and_then(parse_bitmap),
            header: object.header.clone(),
        };
        if link.gp_index.is_empty() || link.kind.is_empty() {
            return Err(format!("hwloc-info printed an ancestor without gp index or type: {object:?}"));
        }
        match chains.get_mut(&location) {
            Some((_, chain)) => chain.push(link),
            None => {
                // The first object of each location is the device itself.
                let device = object.field("attr PCI bus id").and_then(BusId::parse).ok_or_else(|| {
                    format!("the first object of ancestor chain {location} is not a PCI device: {object:?}")
                })?;
                chains.insert(location, (device, vec![link]));
            }
        }
    }
    let by_bus: BTreeMap<BusId, Vec<ChainLink>> = chains.into_values().collect();
    for device in devices {
        if !by_bus.contains_key(device) {
            return Err(format!("hwloc-info printed no ancestor chain for {device}"));
        }
    }
    Ok(by_bus)
}

/// The NUMA node a device is local to: the nodeset of its first non-I/O ancestor,
/// when that holds exactly one node.
fn numa_node_of(chain: &[ChainLink]) -> Result<Option<u32>, String> {
    let locality = chain.iter().find(|link| !link.is_io()).ok_or("the chain has no non-I/O ancestor")?;
    let nodeset = locality.nodeset.as_ref().ok_or_else(|| format!("{} has no nodeset", locality.header))?;
    Ok(if nodeset.len() == 1 { nodeset.iter().next().copied() } else { None })
}

/// The `nvidia-smi topo -m` level between two devices, from their ancestor chains.
fn oracle_level(a: &[ChainLink], b: &[ChainLink]) -> Result<&'static str, String> {
    if a[0].gp_index == b[0].gp_index {
        return Ok("X");
    }
    let a_io: Vec<&ChainLink> = a.iter().take_while(|link| link.is_io()).collect();
    let b_io: Vec<&ChainLink> = b.iter().take_while(|link| link.is_io()).collect();
    let common = a_io.iter().enumerate().find_map(|(a_depth, link)| {
        b_io.iter().position(|other| other.gp_index == link.gp_index).map(|b_depth| (a_depth, b_depth))
    });
    if let Some((a_depth, b_depth)) = common {
        let ancestor = a_io[a_depth];
        if a_depth == 0 || b_depth == 0 {
            return Err(format!("one device is an ancestor of the other ({})", ancestor.header));
        }
        return match (ancestor.kind.as_str(), ancestor.full_kind.as_str()) {
            ("Bridge", "HostBridge") => Ok("PHB"),
            ("Bridge", "PCIBridge") => {
                // Objects strictly between each device and the common ancestor.
                let (a_between, b_between) = (a_depth - 1, b_depth - 1);
                Ok(if a_between <= 1 && b_between <= 1 { "PIX" } else { "PXB" })
            }
            _ => Err(format!("unexpected lowest common I/O ancestor {}", ancestor.header)),
        };
    }
    let a_local = a.iter().find(|link| !link.is_io()).ok_or("no non-I/O ancestor")?;
    let b_local = b.iter().find(|link| !link.is_io()).ok_or("no non-I/O ancestor")?;
    match (&a_local.nodeset, &b_local.nodeset) {
        (Some(a_nodes), Some(b_nodes)) => Ok(if a_nodes == b_nodes { "NODE" } else { "SYS" }),
        _ => Err(format!("no nodeset on {} or {}", a_local.header, b_local.header)),
    }
}

// ---------------------------------------------------------------------------------
// Reading Allot's JSON.
// ---------------------------------------------------------------------------------

fn allot_inventory(file: &Path) -> Result<Value, String> {
    let output = Command::new(env!("CARGO_BIN_EXE_allot-node"))
        .args(["inventory", "--hwloc-xml"])
        .arg(file)
        .args(["--output", "json"])
        .output()
        .map_err(|error| format!("cannot run allot-node: {error}"))?;
    if !output.status.success() {
        return Err(format!(
            "allot-node inventory failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    serde_json::from_slice(&output.stdout).map_err(|error| format!("allot-node printed invalid JSON: {error}"))
}

fn json_bus_id(value: &Value, what: &str) -> Result<BusId, String> {
    value
        .get("pci_bus_id")
        .and_then(Value::as_str)
        .and_then(BusId::parse)
        .ok_or_else(|| format!("{what} has no parseable pci_bus_id: {value}"))
}

fn json_numa(value: &Value) -> Option<u32> {
    value.get("numa_node").and_then(Value::as_u64).map(|node| node as u32)
}

fn json_matrix(inventory: &Value, name: &str) -> Result<Vec<Vec<String>>, String> {
    let rows = inventory
        .pointer(&format!("/links/{name}"))
        .and_then(Value::as_array)
        .ok_or_else(|| format!("the JSON has no links.{name} array"))?;
    rows.iter()
        .map(|row| {
            row.as_array()
                .ok_or_else(|| format!("links.{name} has a row that is not an array"))?
                .iter()
                .map(|cell| {
                    cell.as_str().map(str::to_owned).ok_or_else(|| format!("links.{name} has a non-string cell"))
                })
                .collect()
        })
        .collect()
}

fn show_numa(node: Option<u32>) -> String {
    node.map(|node| node.to_string()).unwrap_or_else(|| "none".to_owned())
}

// ---------------------------------------------------------------------------------
// The comparison.
// ---------------------------------------------------------------------------------

/// Compares Allot with hwloc-info on one XML file; returns every disagreement, each
/// naming the file, the devices and both answers.
fn check_file(path: &Path) -> Vec<String> {
    let name = path.strip_prefix(repository_root()).unwrap_or(path).display().to_string();
    let mut problems = Vec::new();
    if let Err(problem) = compare(path, &name, &mut problems) {
        problems.push(format!("{name}: {problem}"));
    }
    problems
}

fn compare(path: &Path, name: &str, problems: &mut Vec<String>) -> Result<(), String> {
    let file = path.to_str().ok_or("the path is not UTF-8")?;
    let inventory = allot_inventory(path)?;

    // hwloc's side.
    let functions = list_pci_functions(file)?;
    let mut hwloc_gpus: Vec<BusId> = functions
        .iter()
        .filter(|function| function.vendor == 0x10de && matches!(function.class, 0x0300 | 0x0302))
        .map(|function| function.bus_id)
        .collect();
    hwloc_gpus.sort();
    let hwloc_nics: BTreeSet<BusId> =
        functions.iter().filter(|function| function.class >> 8 == 0x02).map(|function| function.bus_id).collect();
    let devices: Vec<BusId> = hwloc_gpus.iter().chain(hwloc_nics.iter()).copied().collect();
    let chains = ancestor_chains(file, &devices)?;

    // Allot's side.
    let gpus = inventory.get("gpus").and_then(Value::as_array).ok_or("the JSON has no gpus array")?;
    let nics = inventory.get("nics").and_then(Value::as_array).ok_or("the JSON has no nics array")?;
    let allot_gpus: Vec<BusId> =
        gpus.iter().enumerate().map(|(i, gpu)| json_bus_id(gpu, &format!("gpus[{i}]"))).collect::<Result<_, _>>()?;
    let allot_nics: Vec<BusId> =
        nics.iter().enumerate().map(|(i, nic)| json_bus_id(nic, &format!("nics[{i}]"))).collect::<Result<_, _>>()?;

    // NUMA nodes of the machine.
    let hwloc_numa = list_numa_nodes(file)?;
    let allot_numa: BTreeSet<u32> = inventory
        .pointer("/cpu/numa_nodes")
        .and_then(Value::as_array)
        .map(|nodes| {
            nodes.iter().filter_map(|node| node.get("index").and_then(Value::as_u64)).map(|i| i as u32).collect()
        })
        .unwrap_or_default();
    if hwloc_numa != allot_numa {
        problems.push(format!(
            "{name}: NUMA nodes (OS indexes): hwloc-info says {hwloc_numa:?}, Allot says {allot_numa:?}"
        ));
    }

    // GPUs: which, in which order, and their NUMA nodes.
    if hwloc_gpus != allot_gpus {
        let show = |ids: &[BusId]| ids.iter().map(BusId::to_string).collect::<Vec<_>>().join(", ");
        problems.push(format!(
            "{name}: GPUs in bus-id order: hwloc-info says {} [{}], Allot says {} [{}]",
            hwloc_gpus.len(),
            show(&hwloc_gpus),
            allot_gpus.len(),
            show(&allot_gpus)
        ));
        // The matrices are indexed by GPU; nothing below would be meaningful.
        return Ok(());
    }
    for (position, gpu) in gpus.iter().enumerate() {
        if gpu.get("index").and_then(Value::as_u64) != Some(position as u64) {
            problems.push(format!("{name}: gpus[{position}] has index {:?}, expected {position}", gpu.get("index")));
        }
        let bus_id = hwloc_gpus[position];
        let expected = numa_node_of(&chains[&bus_id])?;
        if json_numa(gpu) != expected {
            problems.push(format!(
                "{name}: GPU {position} ({bus_id}) NUMA node: hwloc-info says {}, Allot says {}",
                show_numa(expected),
                show_numa(json_numa(gpu))
            ));
        }
    }

    // NICs: the same set, and their NUMA nodes.
    let allot_nic_set: BTreeSet<BusId> = allot_nics.iter().copied().collect();
    if hwloc_nics != allot_nic_set || allot_nics.len() != allot_nic_set.len() {
        problems.push(format!(
            "{name}: NICs (class 0x02xx): hwloc-info lists {:?}, Allot lists {:?}",
            hwloc_nics.iter().map(BusId::to_string).collect::<Vec<_>>(),
            allot_nics.iter().map(BusId::to_string).collect::<Vec<_>>()
        ));
        return Ok(());
    }
    for (position, nic) in nics.iter().enumerate() {
        let bus_id = allot_nics[position];
        let expected = numa_node_of(&chains[&bus_id])?;
        if json_numa(nic) != expected {
            problems.push(format!(
                "{name}: NIC {} ({bus_id}) NUMA node: hwloc-info says {}, Allot says {}",
                nic.get("name").and_then(Value::as_str).unwrap_or("?"),
                show_numa(expected),
                show_numa(json_numa(nic))
            ));
        }
    }

    // Connection levels.
    let gpu_gpu = json_matrix(&inventory, "gpu_gpu")?;
    let gpu_nic = json_matrix(&inventory, "gpu_nic")?;
    if gpu_gpu.len() != hwloc_gpus.len() || gpu_gpu.iter().any(|row| row.len() != hwloc_gpus.len()) {
        problems.push(format!("{name}: links.gpu_gpu is not {0}×{0}", hwloc_gpus.len()));
        return Ok(());
    }
    if gpu_nic.len() != hwloc_gpus.len() || gpu_nic.iter().any(|row| row.len() != allot_nics.len()) {
        problems.push(format!("{name}: links.gpu_nic is not {}×{}", hwloc_gpus.len(), allot_nics.len()));
        return Ok(());
    }
    for (a, a_bus) in hwloc_gpus.iter().enumerate() {
        for (b, b_bus) in hwloc_gpus.iter().enumerate() {
            let expected = oracle_level(&chains[a_bus], &chains[b_bus])
                .map_err(|problem| format!("GPU {a} ({a_bus}) × GPU {b} ({b_bus}): {problem}"))?;
            if gpu_gpu[a][b] != expected {
                problems.push(format!(
                    "{name}: GPU {a} ({a_bus}) × GPU {b} ({b_bus}): hwloc-info's ancestors say {expected}, Allot says {}",
                    gpu_gpu[a][b]
                ));
            }
        }
        for (n, n_bus) in allot_nics.iter().enumerate() {
            let nic_name = nics[n].get("name").and_then(Value::as_str).unwrap_or("?");
            let expected = oracle_level(&chains[a_bus], &chains[n_bus])
                .map_err(|problem| format!("GPU {a} ({a_bus}) × NIC {nic_name} ({n_bus}): {problem}"))?;
            if gpu_nic[a][n] != expected {
                problems.push(format!(
                    "{name}: GPU {a} ({a_bus}) × NIC {nic_name} ({n_bus}): hwloc-info's ancestors say {expected}, Allot says {}",
                    gpu_nic[a][n]
                ));
            }
        }
    }
    eprintln!(
        "{name}: {} GPU(s), {} NIC(s), {} NUMA node(s): {} GPU×GPU and {} GPU×NIC levels compared",
        hwloc_gpus.len(),
        allot_nics.len(),
        hwloc_numa.len(),
        hwloc_gpus.len() * hwloc_gpus.len(),
        hwloc_gpus.len() * allot_nics.len()
    );
    Ok(())
}

#[test]
fn allot_agrees_with_hwloc_info_on_every_bundled_topology() {
    // Fail with the install hint before anything else when the tool is missing.
    if let Err(problem) = run_hwloc_tool("hwloc-info", &["--version"]) {
        panic!("{problem}: {INSTALL_HINT}");
    }
    let files = topology_files();
    assert!(
        !files.is_empty(),
        "found no hwloc XML under {0}/tests/data/real/*.xml or {0}/tests/data/*/topology.xml",
        repository_root().display()
    );
    let problems: Vec<String> = files.iter().flat_map(|file| check_file(file)).collect();
    assert!(
        problems.is_empty(),
        "Allot disagrees with hwloc's tools on {} point(s):\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
}

#[test]
fn the_oracle_reads_hwloc_bitmaps_and_bus_ids() {
    assert_eq!(parse_bitmap("0x00000101"), Some(BTreeSet::from([0, 8])));
    assert_eq!(parse_bitmap("0x0"), Some(BTreeSet::new()));
    assert_eq!(parse_bitmap("0x00000001,,0x0"), Some(BTreeSet::from([64])));
    let bus = BusId::parse("0035:03:00.0").expect("parses");
    assert_eq!(bus.to_string(), "0035:03:00.0");
    assert!(BusId::parse("0000:1b:00.0").expect("parses") < BusId::parse("0001:00:00.0").expect("parses"));
}

/// The oracle's own reading of the legend, on hand-made chains (device first).
#[test]
fn the_oracle_applies_the_nvidia_smi_legend() {
    let link = |gp: &str, kind: &str, full_kind: &str, nodes: &[u32]| ChainLink {
        gp_index: gp.to_owned(),
        kind: kind.to_owned(),
        full_kind: full_kind.to_owned(),
        nodeset: (!nodes.is_empty()).then(|| nodes.iter().copied().collect()),
        header: gp.to_owned(),
    };
    let device = |gp: &str| link(gp, "PCIDev", "PCI", &[]);
    let bridge = |gp: &str| link(gp, "Bridge", "PCIBridge", &[]);
    let host = |gp: &str| link(gp, "Bridge", "HostBridge", &[]);
    let package = |gp: &str, node: u32| link(gp, "Package", "Package", &[node]);
    // Socket 0: host bridge h0, root port r0, switch upstream u0 with downstream ports
    // d0 and d1; a second switch (u1, d2) below d1; a second root port r1. Host bridge
    // h1 on the same socket, h2 on socket 1.
    let gpu = vec![device("g"), bridge("d0"), bridge("u0"), bridge("r0"), host("h0"), package("p0", 0)];
    let beside = vec![device("n"), bridge("d1"), bridge("u0"), bridge("r0"), host("h0"), package("p0", 0)];
    let deeper = vec![
        device("m"),
        bridge("d2"),
        bridge("u1"),
        bridge("d1"),
        bridge("u0"),
        bridge("r0"),
        host("h0"),
        package("p0", 0),
    ];
    let root_port = vec![device("k"), bridge("r1"), host("h0"), package("p0", 0)];
    let same_node = vec![device("s"), bridge("r2"), host("h1"), package("p0", 0)];
    let other_node = vec![device("o"), bridge("r3"), host("h2"), package("p1", 1)];
    assert_eq!(oracle_level(&gpu, &gpu), Ok("X"));
    assert_eq!(oracle_level(&gpu, &beside), Ok("PIX"));
    assert_eq!(oracle_level(&gpu, &deeper), Ok("PXB"));
    assert_eq!(oracle_level(&gpu, &root_port), Ok("PHB"));
    assert_eq!(oracle_level(&gpu, &same_node), Ok("NODE"));
    assert_eq!(oracle_level(&gpu, &other_node), Ok("SYS"));
    assert_eq!(numa_node_of(&other_node), Ok(Some(1)));
}
