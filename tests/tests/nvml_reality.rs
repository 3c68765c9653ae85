//! The broker over node daemons whose NVML behaves as real drivers do (issue 18): a cloud
//! VM whose NVSwitches the guest cannot address still gets NVLink placements, and a GPU
//! that falls off the bus while `allot-node run` is up leaves placement until NVML answers
//! for it again and the quiet period has passed.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use allot_tests::{
    Broker, StoreKind, allotctl, allotctl_json, node_statuses, start_broker, start_enforcing_node, wait_until,
};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(30);

fn create(broker: &Broker, args: &[&str]) -> Value {
    let mut all = vec!["alloc", "create", "--team", "ml"];
    all.extend_from_slice(args);
    allotctl_json(broker, &all)
}

fn gpu_indices(allocation: &Value) -> Vec<u64> {
    allocation["gpus"].as_array().expect("gpus").iter().map(|gpu| gpu["index"].as_u64().expect("index")).collect()
}

fn append(path: &Path, line: &str) {
    let mut file = std::fs::OpenOptions::new().append(true).create(true).open(path).expect("events file");
    writeln!(file, "{line}").expect("append event");
}

#[test]
fn a_vm_with_invisible_nvswitches_gets_nvlink_placements_and_a_lost_gpu_leaves_placement_until_it_answers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let events = dir.path().join("events.jsonl");
    std::fs::write(&events, "").expect("events file");
    let broker = start_broker(&StoreKind::Embedded(dir.path().join("state")), dir.path(), "broker", "3s");
    let _node = start_enforcing_node(
        &broker,
        "cloud-h100-vm",
        "vm",
        dir.path(),
        &["--no-enforce", "--xid-quiet-period", "2"],
        &[("ALLOT_FAKE_NVML_EVENTS", events.as_path())],
    );
    wait_until("the VM node is ready", LONG, || node_statuses(&broker).iter().any(|(n, s)| n == "vm" && s == "ready"));
    allotctl_json(&broker, &["team", "create", "ml"]);

    // NVLink through NVSwitches NVML gives no PCI address for: all eight GPUs, NV18.
    let whole = create(&broker, &["--gpus", "8", "--interconnect", "nvlink"]);
    assert_eq!(whole["state"], "bound", "{whole}");
    assert_eq!(gpu_indices(&whole).len(), 8, "{whole}");
    allotctl_json(&broker, &["alloc", "release", whole["id"].as_str().expect("id")]);

    let unhealthy =
        || allotctl_json(&broker, &["nodes", "list"])[0]["unhealthy_gpus"].as_u64().expect("unhealthy count");
    assert_eq!(unhealthy(), 0);

    // GPU 3 falls off the bus: every NVML call on it answers GPU_IS_LOST from now on.
    append(&events, r#"{"gpu": 3, "kind": "fallen_off_bus"}"#);
    wait_until("the broker sees GPU 3 unhealthy", LONG, || unhealthy() == 1);
    let refused =
        allotctl(&broker, &["alloc", "create", "--team", "ml", "--gpus", "8", "--interconnect", "nvlink", "--no-wait"]);
    assert!(!refused.status.success(), "8 GPUs granted with one lost");
    let four = create(&broker, &["--gpus", "4", "--interconnect", "nvlink"]);
    assert!(!gpu_indices(&four).contains(&3), "placed on the lost GPU: {four}");
    assert_eq!(unhealthy(), 1, "still lost, still unhealthy");

    // NVML answers for it again; after the quiet period it is offered again.
    append(&events, r#"{"gpu": 3, "kind": "back_on_bus"}"#);
    wait_until("GPU 3 is healthy again", LONG, || unhealthy() == 0);
    allotctl_json(&broker, &["alloc", "release", four["id"].as_str().expect("id")]);
    let again = create(&broker, &["--gpus", "8", "--interconnect", "nvlink"]);
    assert_eq!(gpu_indices(&again).len(), 8, "{again}");
}
