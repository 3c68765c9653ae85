//! `allot-node inventory` end to end: the real binary on this machine, on every
//! bundled fixture through hwloc and the fake NVML library, and on bad input.
//!
//! The fixture tests need `target/<profile>/libnvidia_ml_fake.so`; `scripts/test.sh`
//! builds the whole workspace first. Without it allot-node fails and says how to
//! build it, and so do these tests.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn fixture_dir(name: &str) -> PathBuf {
    repo().join("tests/data").join(name)
}

struct Outcome {
    success: bool,
    stdout: String,
    stderr: String,
}

fn allot_node(args: &[&str], env: &[(&str, &Path)]) -> Outcome {
    let mut command = Command::new(env!("CARGO_BIN_EXE_allot-node"));
    command.args(args).env_remove("ALLOT_FAKE_NVML_MACHINE").env_remove("ALLOT_FIXTURES_DIR");
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command.output().expect("allot-node runs");
    Outcome {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn inventory_json(args: &[&str]) -> Value {
    let mut all = vec!["inventory", "--output", "json"];
    all.extend_from_slice(args);
    let outcome = allot_node(&all, &[]);
    assert!(outcome.success, "allot-node {all:?} failed:\n{}", outcome.stderr);
    serde_json::from_str(&outcome.stdout)
        .unwrap_or_else(|error| panic!("{all:?}: not JSON ({error}):\n{}", outcome.stdout))
}

fn matrix(inventory: &Value, name: &str) -> Vec<Vec<String>> {
    inventory["links"][name]
        .as_array()
        .unwrap_or_else(|| panic!("links.{name} missing"))
        .iter()
        .map(|row| row.as_array().expect("row").iter().map(|cell| cell.as_str().expect("level").to_owned()).collect())
        .collect()
}

fn nvml_machine(name: &str) -> toml::Table {
    let path = fixture_dir(name).join("nvml.toml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    text.parse().unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// The fixture generator's own answer (derived from its model, not from Allot).
fn expected(name: &str) -> Value {
    let path = fixture_dir(name).join("expected.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

const FIXTURES: [&str; 5] = ["dgx-h100", "dgx-a100-mig", "pcie-l40s", "cloud-h100-vm", "pcie-h100-nvl"];

#[test]
fn dgx_h100_has_8_nvlinked_gpus_4_per_numa_node_each_beside_a_nic() {
    let inventory = inventory_json(&["--fixture", "dgx-h100"]);
    let gpus = inventory["gpus"].as_array().expect("gpus");
    assert_eq!(gpus.len(), 8);
    let gpu_gpu = matrix(&inventory, "gpu_gpu");
    for (a, row) in gpu_gpu.iter().enumerate() {
        for (b, level) in row.iter().enumerate() {
            let want = if a == b { "X" } else { "NV18" };
            assert_eq!(level, want, "GPU{a} <-> GPU{b}");
        }
    }
    assert_eq!(inventory["cpu"]["numa_nodes"].as_array().expect("numa").len(), 2);
    for node in [0, 1] {
        let local = gpus.iter().filter(|gpu| gpu["numa_node"] == node).count();
        assert_eq!(local, 4, "GPUs on NUMA node {node}");
    }
    for (gpu, row) in matrix(&inventory, "gpu_nic").iter().enumerate() {
        assert!(row.iter().any(|level| level == "PIX" || level == "PXB"), "GPU{gpu} has no NIC at PIX/PXB: {row:?}");
    }
    assert_eq!(inventory["nvml"]["state"], "present");
    // Link speeds come from the fixture's sysfs excerpt (hwloc does not record them).
    let nics = inventory["nics"].as_array().expect("nics");
    let compute = nics.iter().find(|nic| nic["rdma_device"] == "mlx5_0").expect("mlx5_0");
    assert_eq!(compute["link_speed_mbps"], 400_000, "{compute}");
    assert_eq!(compute["kind"], "infiniband");
}

#[test]
fn every_fixture_matches_its_description_and_its_generator() {
    for name in FIXTURES {
        let inventory = inventory_json(&["--fixture", name]);
        let machine = nvml_machine(name);
        let described = machine["gpu"].as_array().expect("[[gpu]]");
        let gpus = inventory["gpus"].as_array().expect("gpus");
        assert_eq!(gpus.len(), described.len(), "{name}: GPU count");
        for (gpu, description) in gpus.iter().zip(described) {
            let context = format!("{name} GPU {}", gpu["index"]);
            assert_eq!(gpu["uuid"].as_str(), description["uuid"].as_str(), "{context}: uuid");
            assert_eq!(gpu["pci_bus_id"].as_str(), description["pci_bus_id"].as_str(), "{context}: bus id");
            assert_eq!(gpu["model"].as_str(), description["name"].as_str(), "{context}: model");
            assert_eq!(gpu["memory_mib"].as_i64(), description["memory_total_mib"].as_integer(), "{context}: memory");
            assert_eq!(gpu["numa_node"].as_i64(), description["numa_node"].as_integer(), "{context}: NUMA node");
            assert_eq!(gpu["cpus"].as_str(), description["cpus"].as_str(), "{context}: CPUs");
            let mig_described = description.get("mig_geometry").is_some();
            assert_eq!(!gpu["mig"].is_null(), mig_described, "{context}: MIG capability");
            if let Some(instances) = description.get("mig_instance").and_then(|value| value.as_array()) {
                let mut want: Vec<(String, i64)> = instances
                    .iter()
                    .map(|i| {
                        (i["profile"].as_str().expect("profile").to_owned(), i["start"].as_integer().expect("start"))
                    })
                    .collect();
                want.sort_by_key(|(_, start)| *start);
                let got: Vec<(String, i64)> = gpu["mig"]["instances"]
                    .as_array()
                    .expect("instances")
                    .iter()
                    .map(|i| (i["profile"].as_str().expect("profile").to_owned(), i["start"].as_i64().expect("start")))
                    .collect();
                assert_eq!(got, want, "{context}: MIG layout");
            }
        }
        // expected.json names NIC columns by RDMA device, as nvidia-smi does.
        let want = &expected(name)["matrices"];
        let want_gpu_gpu: Vec<Vec<String>> = serde_json::from_value(want["gpu_gpu"].clone()).expect("gpu_gpu");
        assert_eq!(matrix(&inventory, "gpu_gpu"), want_gpu_gpu, "{name}: gpu_gpu");
        let want_nics: Vec<String> = serde_json::from_value(want["nics"].clone()).expect("nics");
        let want_gpu_nic: Vec<Vec<String>> = serde_json::from_value(want["gpu_nic"].clone()).expect("gpu_nic");
        let our_nics: Vec<Option<&str>> =
            inventory["nics"].as_array().expect("nics").iter().map(|nic| nic["rdma_device"].as_str()).collect();
        let gpu_nic = matrix(&inventory, "gpu_nic");
        for (column, rdma) in want_nics.iter().enumerate() {
            let ours = our_nics.iter().position(|nic| *nic == Some(rdma.as_str()));
            let ours = ours.unwrap_or_else(|| panic!("{name}: no NIC with RDMA device {rdma}"));
            assert_eq!(ours, column, "{name}: NIC {rdma} should be column {column}, as in nvidia-smi");
            for (gpu, row) in want_gpu_nic.iter().enumerate() {
                assert_eq!(gpu_nic[gpu][ours], row[column], "{name}: GPU{gpu} <-> {rdma}");
            }
        }
    }
}

#[test]
fn without_nvml_the_same_xml_gives_the_same_gpus_and_pcie_levels() {
    for name in FIXTURES {
        let xml = fixture_dir(name).join("topology.xml");
        let from_xml = inventory_json(&["--hwloc-xml", xml.to_str().expect("utf-8 path")]);
        let with_nvml = inventory_json(&["--fixture", name]);
        assert_eq!(from_xml["nvml"]["state"], "absent", "{name}");
        let bus_ids = |inventory: &Value| -> Vec<String> {
            inventory["gpus"]
                .as_array()
                .expect("gpus")
                .iter()
                .map(|g| g["pci_bus_id"].as_str().expect("id").to_owned())
                .collect()
        };
        assert_eq!(bus_ids(&from_xml), bus_ids(&with_nvml), "{name}: GPUs in PCI bus order both ways");
        assert_eq!(matrix(&from_xml, "gpu_nic"), matrix(&with_nvml, "gpu_nic"), "{name}: GPU-NIC levels");
        for gpu in from_xml["gpus"].as_array().expect("gpus") {
            assert_eq!(gpu["health"]["state"], "unknown", "{name}: health without NVML");
            assert!(gpu["uuid"].is_null(), "{name}: no UUID without NVML");
        }
    }
}

#[test]
fn pcie_l40s_reports_its_warm_gpu_throttling() {
    let inventory = inventory_json(&["--fixture", "pcie-l40s"]);
    let machine = nvml_machine("pcie-l40s");
    for (gpu, description) in
        inventory["gpus"].as_array().expect("gpus").iter().zip(machine["gpu"].as_array().expect("gpus"))
    {
        let reasons: Vec<&str> = gpu["telemetry"]["throttle_reasons"]
            .as_array()
            .expect("reasons")
            .iter()
            .map(|reason| reason.as_str().expect("name"))
            .collect();
        let described: Vec<&str> = description
            .get("throttle_reasons")
            .and_then(|value| value.as_array())
            .map(|list| list.iter().map(|reason| reason.as_str().expect("name")).collect())
            .unwrap_or_default();
        assert_eq!(reasons, described, "GPU {}", gpu["index"]);
        assert_eq!(gpu["telemetry"]["temperature_c"].as_i64(), description["temperature_c"].as_integer());
        assert!(gpu["nvlinks"].as_array().expect("nvlinks").is_empty());
    }
    let table = allot_node(&["inventory", "--fixture", "pcie-l40s"], &[]);
    assert!(table.success, "{}", table.stderr);
    assert!(table.stdout.contains("throttling: sw_thermal_slowdown"), "{}", table.stdout);
}

#[test]
fn the_table_is_a_topology_matrix_for_a_person() {
    let outcome = allot_node(&["inventory", "--fixture", "dgx-h100"], &[]);
    assert!(outcome.success, "{}", outcome.stderr);
    let text = outcome.stdout;
    let header = text
        .lines()
        .find(|line| line.trim_start().starts_with("GPU0") && line.contains("NIC0"))
        .expect("matrix header");
    assert!(header.contains("CPU Affinity") && header.contains("NUMA Affinity"), "{header}");
    let gpu0 = text.lines().find(|line| line.starts_with("GPU0 ")).expect("GPU0 row");
    assert!(gpu0.contains(" X ") && gpu0.contains("NV18") && gpu0.contains("PXB"), "{gpu0}");
    assert!(text.contains("nearest NIC: NIC"), "{text}");
    assert!(text.contains("Legend:"), "{text}");
}

/// Counts NVIDIA display-class PCI functions in sysfs, independently of hwloc.
fn nvidia_gpus_in_sysfs() -> usize {
    let Ok(entries) = std::fs::read_dir("/sys/bus/pci/devices") else { return 0 };
    entries
        .filter_map(Result::ok)
        .filter(|entry| {
            let read = |file: &str| std::fs::read_to_string(entry.path().join(file)).unwrap_or_default();
            read("vendor").trim() == "0x10de" && read("class").trim().starts_with("0x03")
        })
        .count()
}

fn cpu_list_len(text: &str) -> usize {
    text.trim()
        .split(',')
        .filter(|part| !part.is_empty())
        .map(|part| match part.split_once('-') {
            Some((first, last)) => {
                last.parse::<usize>().expect("cpu list") - first.parse::<usize>().expect("cpu list") + 1
            }
            None => 1,
        })
        .sum()
}

#[test]
fn this_machine_reports_its_real_cpus_numa_nodes_and_gpus() {
    let inventory = inventory_json(&[]);
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online").expect("sysfs cpu/online");
    assert_eq!(inventory["cpu"]["pus"].as_array().expect("pus").len(), cpu_list_len(&online), "PU count");
    let numa_nodes = std::fs::read_dir("/sys/devices/system/node")
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|entry| {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    name.strip_prefix("node").is_some_and(|rest| rest.parse::<u32>().is_ok())
                })
                .count()
        })
        .unwrap_or(1)
        .max(1);
    assert_eq!(inventory["cpu"]["numa_nodes"].as_array().expect("numa").len(), numa_nodes, "NUMA nodes");
    assert_eq!(inventory["gpus"].as_array().expect("gpus").len(), nvidia_gpus_in_sysfs(), "GPUs");
}

fn check_rejected(args: &[&str], env: &[(&str, &Path)], must_mention: &[&str]) {
    let outcome = allot_node(args, env);
    assert!(!outcome.success, "allot-node {args:?} should fail, printed:\n{}", outcome.stdout);
    assert!(outcome.stderr.contains("allot-node: error: "), "{args:?}: {}", outcome.stderr);
    for needle in must_mention {
        assert!(outcome.stderr.contains(needle), "{args:?}: error should mention {needle:?}:\n{}", outcome.stderr);
    }
    assert!(!outcome.stderr.contains("panicked"), "{args:?} panicked:\n{}", outcome.stderr);
}

#[test]
fn bad_topology_files_are_refused_with_the_file_and_the_problem() {
    let dir = tempfile::tempdir().expect("temp dir");
    let good = std::fs::read_to_string(fixture_dir("pcie-l40s").join("topology.xml")).expect("fixture xml");
    let cases: Vec<(&str, String, &str)> = vec![
        ("empty.xml", String::new(), "empty"),
        ("garbage.xml", "this is not xml".into(), "<topology>"),
        ("truncated.xml", good[..good.len() / 2].to_owned(), "truncated"),
        ("unknown-type.xml", good.replacen("type=\"Package\"", "type=\"Bogus\"", 1), "HWLOC_XML_VERBOSE"),
        ("bad-nesting.xml", good.replacen("</object>", "", 3), "bad-nesting.xml"),
    ];
    for (file, content, problem) in &cases {
        let path = dir.path().join(file);
        std::fs::write(&path, content).expect("write");
        check_rejected(&["inventory", "--hwloc-xml", path.to_str().expect("utf-8")], &[], &[file, problem]);
    }
    check_rejected(&["inventory", "--hwloc-xml", "/nonexistent/x.xml"], &[], &["/nonexistent/x.xml", "No such file"]);
}

#[test]
fn a_missing_or_foreign_nvml_library_is_refused() {
    check_rejected(
        &["inventory", "--nvml-lib", "/nonexistent/libnvidia-ml.so.1"],
        &[],
        &["/nonexistent/libnvidia-ml.so.1"],
    );
    // A real shared library that is not NVML: the C library this test runs on.
    let maps = std::fs::read_to_string("/proc/self/maps").expect("/proc/self/maps");
    let libc = maps
        .split_whitespace()
        .find(|field| field.starts_with('/') && field.contains("libc.so"))
        .expect("libc mapped")
        .to_owned();
    check_rejected(&["inventory", "--nvml-lib", &libc], &[], &[&libc, "not an NVML library", "nvmlInit_v2"]);
    // Not a shared library at all.
    let readme = repo().join("README.md");
    check_rejected(&["inventory", "--nvml-lib", readme.to_str().expect("utf-8")], &[], &["README.md"]);
}

/// Copies a fixture into a scratch fixtures directory so that it can be broken.
fn scratch_fixture(name: &str, edit: impl Fn(&str, String) -> String) -> tempfile::TempDir {
    let root = tempfile::tempdir().expect("temp dir");
    let target = root.path().join(name);
    std::fs::create_dir_all(&target).expect("mkdir");
    for file in ["topology.xml", "nvml.toml"] {
        let text = std::fs::read_to_string(fixture_dir(name).join(file)).expect("fixture file");
        std::fs::write(target.join(file), edit(file, text)).expect("write");
    }
    root
}

#[test]
fn a_fixture_whose_nvml_and_hwloc_disagree_is_refused_naming_both() {
    // NVML reports GPU 0 at a bus id that the hwloc XML does not have: the error is a
    // disagreement between two sources, named as such, not a file contradicting itself.
    let machine = nvml_machine("dgx-h100");
    let first_bus = machine["gpu"][0]["pci_bus_id"].as_str().expect("bus id").to_owned();
    let moved = scratch_fixture("dgx-h100", |file, text| {
        if file == "nvml.toml" { text.replace(&format!("\"{first_bus}\""), "\"0000:fe:00.0\"") } else { text }
    });
    check_rejected(
        &["inventory", "--fixture", "dgx-h100"],
        &[("ALLOT_FIXTURES_DIR", moved.path())],
        &["NVML (", "libnvidia_ml_fake.so", "dgx-h100/topology.xml", "disagree", "0000:fe:00.0"],
    );

    // A malformed description: the fake NVML library refuses to initialise and says why.
    let broken =
        scratch_fixture(
            "pcie-l40s",
            |file, text| if file == "nvml.toml" { text.replace("[[gpu]]", "[[gpu]\n") } else { text },
        );
    check_rejected(&["inventory", "--fixture", "pcie-l40s"], &[("ALLOT_FIXTURES_DIR", broken.path())], &["nvml"]);
}

#[test]
fn an_unknown_fixture_names_the_known_ones() {
    check_rejected(&["inventory", "--fixture", "dgx-z900"], &[], &["dgx-z900", "dgx-h100", "pcie-l40s"]);
}
