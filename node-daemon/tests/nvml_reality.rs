//! `allot-node inventory` on NVML as real drivers behave, through the fake NVML library
//! made to behave that way: NVSwitches a VM guest cannot address (NVLink remote bus id
//! all ones), GPUs that fell off the bus (`NVML_ERROR_GPU_IS_LOST`), MIG profile queries
//! that are not supported, and a driver name that contradicts the PCI device id.
//!
//! Needs `target/<profile>/libnvidia_ml_fake.so` (`cargo build -p allot-fake-nvml`).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data").join(name)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// Runs `allot-node inventory -o json` with extra arguments and environment.
fn inventory_of(args: &[&str], env: &[(&str, &Path)]) -> Value {
    let mut command = Command::new(env!("CARGO_BIN_EXE_allot-node"));
    command.args(["inventory", "--output", "json"]).args(args);
    command.env_remove("ALLOT_FAKE_NVML_MACHINE").env_remove("ALLOT_FIXTURES_DIR").env_remove("ALLOT_FAKE_NVML_EVENTS");
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command.output().expect("allot-node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "allot-node {args:?} failed:\n{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_str(&stdout).unwrap_or_else(|error| panic!("{args:?}: not JSON ({error}):\n{stdout}"))
}

/// A copy of a fixture in a scratch fixtures directory, its `nvml.toml` edited.
fn scratch_fixture(name: &str, edit: impl Fn(String) -> String) -> tempfile::TempDir {
    let root = tempfile::tempdir().expect("temp dir");
    let target = root.path().join(name);
    std::fs::create_dir_all(&target).expect("mkdir");
    std::fs::write(target.join("topology.xml"), read(&fixture_dir(name).join("topology.xml"))).expect("write");
    let edited = edit(read(&fixture_dir(name).join("nvml.toml")));
    std::fs::write(target.join("nvml.toml"), edited).expect("write");
    root
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|items| items.iter().filter_map(|item| item.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

fn gpu_gpu(inventory: &Value) -> Vec<Vec<String>> {
    inventory["links"]["gpu_gpu"].as_array().expect("links.gpu_gpu").iter().map(strings).collect()
}

#[test]
fn nvswitches_a_vm_cannot_address_still_give_nv18_between_every_gpu_pair() {
    let inventory = inventory_of(&["--fixture", "cloud-h100-vm"], &[]);
    let expected: Value =
        serde_json::from_str(&read(&fixture_dir("cloud-h100-vm").join("expected.json"))).expect("json");
    let matrix = gpu_gpu(&inventory);
    assert_eq!(matrix.len(), 8);
    for (row, cells) in matrix.iter().enumerate() {
        for (column, cell) in cells.iter().enumerate() {
            assert_eq!(cell, if row == column { "X" } else { "NV18" }, "GPU{row} x GPU{column}");
        }
    }
    // The generator's own answer, derived from its model of the machine.
    let from_model: Vec<Vec<String>> =
        expected["matrices"]["gpu_gpu"].as_array().expect("matrix").iter().map(strings).collect();
    assert_eq!(matrix, from_model);

    let warnings = strings(&inventory["warnings"]);
    assert!(warnings.iter().all(|w| !w.contains("bus id") && !w.contains("NVSwitch")), "{warnings:?}");
    let switches = inventory["nvswitches"].as_array().expect("nvswitches");
    assert_eq!(switches.len(), 1, "one entry stands for the fabric: {switches:?}");
    assert_eq!(switches[0]["pci_visible"], Value::Bool(false));
    assert_eq!(switches[0]["pci_bus_id"], "ffffffff:ff:ff.0");
    for gpu in inventory["gpus"].as_array().expect("gpus") {
        assert_eq!(gpu["nvlinks"][0]["links"], 18, "{gpu}");
    }
}

#[test]
fn the_table_says_the_nvswitches_are_not_pci_visible() {
    let output = Command::new(env!("CARGO_BIN_EXE_allot-node"))
        .args(["inventory", "--fixture", "cloud-h100-vm"])
        .env_remove("ALLOT_FIXTURES_DIR")
        .output()
        .expect("runs");
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(table.contains("not PCI-visible"), "{table}");
    assert!(!table.contains("Warnings:"), "{table}");
}

#[test]
fn a_gpu_that_fell_off_the_bus_is_listed_unhealthy_without_telemetry_and_not_offered() {
    let dir = tempfile::tempdir().expect("temp dir");
    let events = dir.path().join("events.jsonl");
    std::fs::write(&events, "{\"gpu\": 3, \"kind\": \"fallen_off_bus\"}\n").expect("write");
    let inventory = inventory_of(&["--fixture", "dgx-h100"], &[("ALLOT_FAKE_NVML_EVENTS", &events)]);
    let gpus = inventory["gpus"].as_array().expect("gpus");
    assert_eq!(gpus.len(), 8, "the lost GPU is still listed");
    let lost = &gpus[3];
    // The fake answers GPU_IS_LOST even for the handle, so the address comes from NVML's
    // bus order over hwloc's GPUs: GPU 3 of the DGX H100 is at 61:00.0.
    assert_eq!(lost["pci_bus_id"], "0000:61:00.0");
    assert_eq!((&lost["uuid"], &lost["telemetry"]), (&Value::Null, &Value::Null));
    assert_eq!(lost["health"]["state"], "unhealthy");
    assert!(strings(&lost["health"]["reasons"])[0].contains("lost (fallen off the bus)"), "{lost}");
    for (index, gpu) in gpus.iter().enumerate().filter(|(index, _)| *index != 3) {
        assert_eq!(gpu["health"]["state"], "healthy", "GPU {index}");
    }
    let warnings = strings(&inventory["warnings"]);
    assert!(warnings.iter().any(|w| w.contains("GPU 3 (0000:61:00.0)") && w.contains("not offered")), "{warnings:?}");

    // Back on the bus: NVML answers, and discovery reports it as any other GPU.
    std::fs::write(&events, "{\"gpu\": 3, \"kind\": \"fallen_off_bus\"}\n{\"gpu\": 3, \"kind\": \"back_on_bus\"}\n")
        .expect("write");
    let inventory = inventory_of(&["--fixture", "dgx-h100"], &[("ALLOT_FAKE_NVML_EVENTS", &events)]);
    assert_eq!(inventory["gpus"][3]["health"]["state"], "healthy");
    assert!(inventory["gpus"][3]["uuid"].is_string());
}

#[test]
fn mig_profiles_that_cannot_be_read_are_warned_about() {
    // GPU 5 of the DGX A100 has MIG enabled and no instances; now its profile queries
    // answer NOT_SUPPORTED, as on some virtualised GPUs.
    let scratch = scratch_fixture("dgx-a100-mig", |text| {
        let fifth = text.match_indices("[[gpu]]").nth(5).map(|(at, _)| at).expect("six GPUs");
        let (head, tail) = text.split_at(fifth);
        format!(
            "{head}{}",
            tail.replacen("ecc_enabled = true", "ecc_enabled = true\nmig_profile_info_supported = false", 1)
        )
    });
    let inventory = inventory_of(&["--fixture", "dgx-a100-mig"], &[("ALLOT_FIXTURES_DIR", scratch.path())]);
    let warnings = strings(&inventory["warnings"]);
    assert!(
        warnings.iter().any(|w| w.starts_with("GPU 5: MIG is enabled but its profiles cannot be read")
            && w.contains("nvmlDeviceGetGpuInstanceProfileInfo")
            && w.contains("not available")),
        "{warnings:?}"
    );
    assert_eq!(inventory["gpus"][5]["mig"]["profiles"], Value::Array(vec![]));
    assert!(warnings.iter().all(|w| !w.starts_with("GPU 4:")), "other GPUs read fine: {warnings:?}");
}

#[test]
fn a_driver_name_that_contradicts_the_pci_device_id_is_warned_about_naming_both() {
    let scratch = scratch_fixture("dgx-h100", |text| text.replacen("NVIDIA H100 80GB HBM3", "NVIDIA GB200", 1));
    let inventory = inventory_of(&["--fixture", "dgx-h100"], &[("ALLOT_FIXTURES_DIR", scratch.path())]);
    let warnings = strings(&inventory["warnings"]);
    assert!(
        warnings.iter().any(|w| w.contains("GPU 0 (0000:1b:00.0)")
            && w.contains("\"NVIDIA GB200\"")
            && w.contains("10de:2330")
            && w.contains("H100")),
        "{warnings:?}"
    );
    assert_eq!(warnings.len(), 1, "{warnings:?}");
}

/// hwloc's own reading of a file's NVLinkBandwidth matrix (`lstopo-no-graphics
/// --distances`): for each `nvmlN` GPU, its peers (an NVSwitch by bus id, or `nvmlM`) and
/// the link count, at 25000 MB/s per link as hwloc 2.x records NVLink 2 to 4.
fn lstopo_nvlinks(file: &Path) -> Vec<(String, String, u64)> {
    let output = Command::new("lstopo-no-graphics")
        .arg("-i")
        .arg(file)
        .args(["--whole-io", "--distances"])
        .output()
        .unwrap_or_else(|error| panic!("`lstopo-no-graphics` cannot run ({error}): install Debian's hwloc package"));
    assert!(output.status.success(), "lstopo failed: {}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8_lossy(&output.stdout);
    let mut lines = text.lines().skip_while(|line| !line.contains("name NVLinkBandwidth"));
    assert!(lines.next().is_some(), "lstopo reports no NVLinkBandwidth matrix:\n{text}");
    let header: Vec<String> = lines.next().expect("header").split_whitespace().skip(1).map(str::to_owned).collect();
    let mut links = Vec::new();
    for line in lines.take(header.len()) {
        let mut cells = line.split_whitespace();
        let row = cells.next().expect("row name").to_owned();
        for (column, value) in header.iter().zip(cells) {
            let value: u64 = value.parse().expect("bandwidth");
            if row.starts_with("nvml") && *column != row && value > 0 {
                links.push((row.clone(), column.clone(), value / 25_000));
            }
        }
    }
    links
}

/// Allot's NVLinks in `lstopo_nvlinks`'s terms: for each GPU (`nvmlN` by its index), its
/// peers (another GPU as `nvmlM`, an NVSwitch by bus id) and the link count.
fn allot_nvlinks(inventory: &Value) -> Vec<(String, String, u64)> {
    let gpus = inventory["gpus"].as_array().expect("gpus");
    let mut links = Vec::new();
    for gpu in gpus {
        let name = format!("nvml{}", gpu["index"]);
        for link in gpu["nvlinks"].as_array().expect("nvlinks") {
            let peer = link["peer_pci_bus_id"].as_str().expect("peer").to_owned();
            let peer = match gpus.iter().find(|other| other["pci_bus_id"] == peer.as_str()) {
                Some(other) => format!("nvml{}", other["index"]),
                None => peer,
            };
            links.push((name.clone(), peer, link["links"].as_u64().expect("links")));
        }
    }
    links
}

#[test]
fn nvlink_from_hwloc_distances_alone_matches_what_lstopo_reads_in_the_same_file() {
    for fixture in ["dgx-h100", "dgx-a100-mig"] {
        let file = fixture_dir(fixture).join("topology-nvml.xml");
        let inventory = inventory_of(&["--hwloc-xml", file.to_str().expect("utf-8 path")], &[]);
        assert_eq!(inventory["nvml"]["state"], "absent", "{fixture}: no NVML was consulted");
        let mut from_allot = allot_nvlinks(&inventory);
        let mut from_hwloc = lstopo_nvlinks(&file);
        from_allot.sort();
        from_hwloc.sort();
        assert!(!from_hwloc.is_empty(), "{fixture}");
        assert_eq!(from_allot, from_hwloc, "{fixture}");
        // And the matrix nvidia-smi would print: every pair through the switches.
        let expected = if fixture == "dgx-h100" { "NV18" } else { "NV12" };
        for (row, cells) in gpu_gpu(&inventory).iter().enumerate() {
            for (column, cell) in cells.iter().enumerate() {
                assert_eq!(cell, if row == column { "X" } else { expected }, "{fixture}: GPU{row} x GPU{column}");
            }
        }
        assert_eq!(strings(&inventory["warnings"]), Vec::<String>::new(), "{fixture}");
    }
}

/// The four NVLink-bridged pairs of the H100 NVL server, by GPU index.
const BRIDGED_PAIRS: [(usize, usize); 4] = [(0, 1), (2, 3), (4, 5), (6, 7)];

fn bridged(row: usize, column: usize) -> bool {
    BRIDGED_PAIRS.iter().any(|&(a, b)| (a, b) == (row, column) || (b, a) == (row, column))
}

#[test]
fn nvlink_bridged_pairs_from_hwloc_distances_alone_are_nv12_and_pcie_elsewhere_as_lstopo_reads_them() {
    let file = fixture_dir("pcie-h100-nvl").join("topology-nvml.xml");
    let inventory = inventory_of(&["--hwloc-xml", file.to_str().expect("utf-8 path")], &[]);
    assert_eq!(inventory["nvml"]["state"], "absent", "no NVML was consulted");

    // hwloc's reading: bandwidth between the two GPUs of a pair, nothing else, 12 links each.
    let mut from_hwloc = lstopo_nvlinks(&file);
    from_hwloc.sort();
    let mut want: Vec<(String, String, u64)> = BRIDGED_PAIRS
        .iter()
        .flat_map(|&(a, b)| {
            [(format!("nvml{a}"), format!("nvml{b}"), 12), (format!("nvml{b}"), format!("nvml{a}"), 12)]
        })
        .collect();
    want.sort();
    assert_eq!(from_hwloc, want, "what lstopo reads in the file");
    let mut from_allot = allot_nvlinks(&inventory);
    from_allot.sort();
    assert_eq!(from_allot, from_hwloc, "what allot-node reads in the same file");

    // The matrix: NV12 inside a pair, the PCIe level (from the generator's model) elsewhere.
    let expected: Value =
        serde_json::from_str(&read(&fixture_dir("pcie-h100-nvl").join("expected.json"))).expect("json");
    let pcie: Vec<Vec<String>> =
        expected["matrices"]["gpu_gpu_pcie"].as_array().expect("matrix").iter().map(strings).collect();
    let matrix = gpu_gpu(&inventory);
    assert_eq!(matrix.len(), 8);
    for (row, cells) in matrix.iter().enumerate() {
        for (column, cell) in cells.iter().enumerate() {
            let want = if bridged(row, column) { "NV12" } else { pcie[row][column].as_str() };
            assert!(!want.starts_with("NV") || bridged(row, column), "GPU{row} x GPU{column}");
            assert_eq!(cell, want, "GPU{row} x GPU{column}");
        }
    }
    // Pairs share a PCIe switch; pairs on one socket meet at NODE, across sockets at SYS.
    assert_eq!((matrix[0][2].as_str(), matrix[1][3].as_str(), matrix[0][4].as_str()), ("NODE", "NODE", "SYS"));
    assert_eq!(strings(&inventory["warnings"]), Vec::<String>::new());
}

#[test]
fn nvlink_bridged_pairs_through_the_fake_nvml_are_nv12_and_agree_with_hwloc() {
    let inventory = inventory_of(&["--fixture", "pcie-h100-nvl"], &[]);
    assert_eq!(inventory["nvml"]["state"], "present");
    let gpus = inventory["gpus"].as_array().expect("gpus");
    for (index, gpu) in gpus.iter().enumerate() {
        let peer = BRIDGED_PAIRS
            .iter()
            .find_map(|&(a, b)| {
                if a == index {
                    Some(b)
                } else if b == index {
                    Some(a)
                } else {
                    None
                }
            })
            .expect("every GPU is in a pair");
        let links = gpu["nvlinks"].as_array().expect("nvlinks");
        assert_eq!(links.len(), 1, "GPU{index}: one peer, its bridge partner: {links:?}");
        assert_eq!(links[0]["peer_pci_bus_id"], gpus[peer]["pci_bus_id"], "GPU{index}");
        assert_eq!(links[0]["links"], 12, "GPU{index}");
        // MIG-capable like every H100 NVL, but not enabled.
        assert!(!gpu["mig"].is_null(), "GPU{index}: MIG-capable");
    }
    let matrix = gpu_gpu(&inventory);
    for (row, cells) in matrix.iter().enumerate() {
        for (column, cell) in cells.iter().enumerate() {
            assert_eq!(cell == "NV12", bridged(row, column), "GPU{row} x GPU{column}: {cell}");
        }
    }
    // NVML and hwloc's distances say the same, so there is nothing to warn about.
    let from_xml = inventory_of(
        &["--hwloc-xml", fixture_dir("pcie-h100-nvl").join("topology-nvml.xml").to_str().expect("utf-8 path")],
        &[],
    );
    assert_eq!(matrix, gpu_gpu(&from_xml));
    assert_eq!(strings(&inventory["warnings"]), Vec::<String>::new());
}
