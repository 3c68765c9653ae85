//! The CDI (Container Device Interface) spec for the devices allot-node hands
//! out, so that runtimes that resolve CDI names (containerd, CRI-O) find what
//! Allocate names: one device per GPU and per MIG instance, named by UUID, under
//! the kind `<prefix>/gpu`. Rewritten whenever the node's GPUs or MIG instances
//! change, atomically, and only when its content changed.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::json;

use crate::resources::NodeSnapshot;

/// The CDI version the spec declares (the features used are in every version since).
pub const CDI_VERSION: &str = "0.6.0";

/// A device's fully qualified CDI name: `allot.io/gpu=<uuid>`.
pub fn device_name(prefix: &str, uuid: &str) -> String {
    format!("{prefix}/gpu={uuid}")
}

/// The spec file's name in the CDI directory.
pub fn file_name(prefix: &str) -> String {
    format!("{}-gpu.json", prefix.replace('/', "_"))
}

/// The spec as JSON: every GPU by UUID with its device node, and every MIG
/// instance by UUID with its parent's device node.
pub fn spec(prefix: &str, snapshot: &NodeSnapshot) -> serde_json::Value {
    let mut devices: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    let edits = |index: u32, uuid: &str| {
        json!({
            "deviceNodes": [{ "path": format!("/dev/nvidia{index}") }],
            "env": [format!("NVIDIA_VISIBLE_DEVICES={uuid}")],
        })
    };
    for gpu in snapshot.inventory.iter().flat_map(|inventory| &inventory.gpus) {
        if let Some(uuid) = &gpu.uuid {
            devices.insert(uuid.clone(), edits(gpu.index, uuid));
        }
        for instance in gpu.mig.iter().flat_map(|mig| &mig.instances) {
            if let Some(uuid) = &instance.uuid {
                devices.insert(uuid.clone(), edits(gpu.index, uuid));
            }
        }
    }
    // MIG instances just made for an allocation appear in its environment before
    // the next rediscovery lists them.
    for (id, environment) in &snapshot.environments {
        let Some(binding) = snapshot.allocations.get(id).and_then(|allocation| allocation.binding.as_ref()) else {
            continue;
        };
        let Some(list) = environment.get("NVIDIA_VISIBLE_DEVICES") else { continue };
        for (grant, uuid) in binding.gpus.iter().zip(list.split(',')) {
            if grant.mig.is_some() && uuid.starts_with("MIG-") {
                devices.entry(uuid.to_owned()).or_insert_with(|| edits(grant.index, uuid));
            }
        }
    }
    json!({
        "cdiVersion": CDI_VERSION,
        "kind": format!("{prefix}/gpu"),
        "containerEdits": {
            "deviceNodes": [
                { "path": "/dev/nvidiactl" },
                { "path": "/dev/nvidia-uvm" },
                { "path": "/dev/nvidia-uvm-tools" },
            ],
        },
        "devices": devices
            .into_iter()
            .map(|(name, edits)| json!({ "name": name, "containerEdits": edits }))
            .collect::<Vec<_>>(),
    })
}

/// Writes the spec when it differs from what is there; says whether it wrote.
pub fn write(dir: &Path, prefix: &str, snapshot: &NodeSnapshot) -> std::io::Result<bool> {
    let path = dir.join(file_name(prefix));
    let text = serde_json::to_string_pretty(&spec(prefix, snapshot)).map_err(std::io::Error::other)?;
    if std::fs::read_to_string(&path).is_ok_and(|existing| existing == text) {
        return Ok(false);
    }
    std::fs::create_dir_all(dir)?;
    let temp = dir.join(format!(".{}.tmp", file_name(prefix)));
    std::fs::write(&temp, &text)?;
    std::fs::rename(&temp, &path)?;
    Ok(true)
}

/// Keeps the spec in step with the node until the snapshot ends.
pub async fn keep_written(
    dir: std::path::PathBuf,
    prefix: String,
    mut snapshot: tokio::sync::watch::Receiver<NodeSnapshot>,
) {
    loop {
        let current = snapshot.borrow_and_update().clone();
        match write(&dir, &prefix, &current) {
            Ok(true) => tracing::info!(dir = %dir.display(), "CDI spec written"),
            Ok(false) => {}
            Err(error) => tracing::warn!(dir = %dir.display(), %error, "cannot write the CDI spec"),
        }
        if snapshot.changed().await.is_err() {
            return;
        }
    }
}
