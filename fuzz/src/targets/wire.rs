//! The broker's gRPC edge: `NodeService/Register` and `AllocationService/Create`
//! messages as bytes, decoded by prost and validated by `allot_api::wire` as
//! `broker/src/grpc.rs` does, then what the broker reads first from what it
//! accepted (the link matrices, the admission charge) and the way back.
//!
//! Seeds are readable JSON of the domain types (an inventory as `allot-node
//! inventory -o json` prints it, a `ValidatedRequest`), encoded when the corpus is
//! loaded; `.pb` files (crashes found before) are messages as they are.

use std::path::Path;
use std::time::Duration;

use allot_api::allocation::{GpuDemand, NodeName, ValidatedRequest};
use allot_api::proto;
use allot_api::topology::NodeInventory;
use prost::Message;

use super::message_of;
use crate::engine::{Outcome, Target};
use crate::protobuf;

/// Values the validation checks: bus ids in every spelling, cpu lists at their
/// bounds, MIG profile names, names at their length limits, enum names.
const DICTIONARY: &[&str] = &[
    "0000:1b:00.0",
    "00000000:1B:00.0",
    "1b:00.0",
    "ffffffff:ff:ff.0",
    "FFFF:FF:FF.7",
    "0000FFFF:ff:ff.0",
    "0000:00:1f.7",
    "0000:00:20.0",
    "0000:00:00.8",
    "123456789:00:00.0",
    "0-3",
    "0-3,8,10-11",
    "0-1048576",
    "1048576",
    "1048577",
    "0-4294967295",
    "3-1",
    "0,,1",
    " 0 - 3 ",
    "-",
    ",",
    "3g.40gb",
    "1g.10gb+me",
    "7g.80gb",
    "0g.0gb",
    "4294967295g.1gb",
    "g.gb",
    "vision",
    "dgx-a",
    "a-0000000000000001",
    "GPU-06742fd4-2bb4-eb94-76d5-de356f962165",
    "MIG-GPU-1",
    "sw_thermal_slowdown",
    "hw_power_brake_slowdown",
    "gpu_idle",
    "H100",
    "NVIDIA H100 80GB HBM3",
    "pod:vision/train-0/6f1c2d9e",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "\u{7f}",
    "\u{0}",
    "é",
];

pub const REGISTER: Target = Target {
    name: "wire-register",
    summary: "NodeService/Register: a RegisterNodeRequest decoded by prost, its inventory validated by allot_api::wire, its link matrices",
    run: register,
    structured: Some(protobuf::mutate),
    dictionary: DICTIONARY,
    max_len: 512 * 1024,
    time_limit: Duration::from_secs(2),
    load: load_register,
    isolate: false,
    debug_only_aborts: &[],
    scratch: None,
};

pub const ALLOCATION: Target = Target {
    name: "wire-allocation",
    summary: "AllocationService/Create: a CreateAllocationRequest decoded by prost, its spec validated into a ValidatedRequest, its charge",
    run: allocation,
    structured: Some(protobuf::mutate),
    dictionary: DICTIONARY,
    max_len: 64 * 1024,
    time_limit: Duration::from_secs(1),
    load: load_allocation,
    isolate: false,
    debug_only_aborts: &[],
    scratch: None,
};

fn is_json(path: &Path) -> bool {
    path.extension().is_some_and(|extension| extension == "json")
}

/// An inventory as `allot-node inventory -o json` prints it (the link matrices it
/// adds are ignored), registered under the file's name.
fn load_register(path: &Path, bytes: Vec<u8>) -> Result<Vec<u8>, String> {
    if !is_json(path) {
        return Ok(bytes);
    }
    let inventory: NodeInventory = serde_json::from_slice(&bytes).map_err(|error| error.to_string())?;
    let node_name = path.file_stem().map(|stem| stem.to_string_lossy().into_owned()).unwrap_or_default();
    let request =
        proto::RegisterNodeRequest { node_name, daemon_version: "0.1.0".into(), inventory: Some((&inventory).into()) };
    Ok(request.encode_to_vec())
}

/// A `ValidatedRequest` as JSON, asked for as it is (no dry run).
fn load_allocation(path: &Path, bytes: Vec<u8>) -> Result<Vec<u8>, String> {
    if !is_json(path) {
        return Ok(bytes);
    }
    let request: ValidatedRequest = serde_json::from_slice(&bytes).map_err(|error| error.to_string())?;
    let message = proto::CreateAllocationRequest { spec: Some((&request).into()), dry_run: false, no_wait: false };
    Ok(message.encode_to_vec())
}

fn register(input: &[u8]) -> Outcome {
    let request = proto::RegisterNodeRequest::decode(input).map_err(message_of)?;
    // grpc.rs refuses a bad name first; the inventory is checked anyway, so that a
    // mutated name does not hide what the mutation did to the inventory.
    let name = request.node_name.parse::<NodeName>().map_err(message_of);
    let inventory = request.inventory.ok_or_else(|| "inventory: missing".to_owned())?;
    let inventory = NodeInventory::try_from(inventory).map_err(message_of)?;
    name?;
    // What the broker derives first from a registered node.
    let matrices = inventory.link_matrices();
    assert_eq!(matrices.gpu_gpu.len(), inventory.gpus.len(), "one row per GPU");
    assert!(matrices.gpu_nic.iter().all(|row| row.len() == inventory.nics.len()), "one column per NIC");
    // Sent back to clients (allotctl node show), it must read the same.
    let again = NodeInventory::try_from(proto::NodeInventory::from(&inventory));
    assert_eq!(again.as_ref(), Ok(&inventory), "an accepted inventory does not survive the wire a second time");
    Ok(format!(
        "gpus {} nics {} mig {} nvlink {}",
        inventory.gpus.len().min(3),
        inventory.nics.len().min(2),
        inventory.gpus.iter().any(|gpu| gpu.mig.is_some()),
        inventory.gpus.iter().any(|gpu| !gpu.nvlinks.is_empty())
    ))
}

fn allocation(input: &[u8]) -> Outcome {
    let request = proto::CreateAllocationRequest::decode(input).map_err(message_of)?;
    let spec = request.spec.ok_or_else(|| "spec: missing".to_owned())?;
    let validated = ValidatedRequest::try_from(spec).map_err(message_of)?;
    // What admission charges it (broker/src/sharing.rs).
    let charge = allot_policy::charge(&validated.gpus, validated.cpus, validated.memory.0, None);
    assert!(!charge.describe().is_empty());
    // Stored and sent back to clients, it must read the same.
    let again = ValidatedRequest::try_from(proto::AllocationSpec::from(&validated));
    assert_eq!(again.as_ref(), Ok(&validated), "an accepted request does not survive the wire a second time");
    let kind = match validated.gpus {
        GpuDemand::None => "none",
        GpuDemand::Whole { .. } => "whole",
        GpuDemand::Mig { .. } => "mig",
        GpuDemand::Share { .. } => "share",
    };
    Ok(format!("{kind} pinned {} interconnect {}", validated.pin.is_some(), validated.interconnect))
}
