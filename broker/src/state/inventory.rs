//! Node inventories stored once per hardware type. A DGX H100's inventory is
//! about 40 KiB of JSON, nearly all of it (cores, caches, the PCIe tree, NVLink)
//! the same on every DGX H100; 12,500 of them made 500 MB for etcd to hold and
//! for a starting broker to decode. So a stored node keeps only its own details
//! (names, UUIDs, telemetry, warnings, NVML status) and the id of a shared
//! template with the rest, stored once. [`split`] and [`join`] are exact
//! inverses: `join(split(x)) == x` for every inventory.

use allot_api::topology::{GpuTelemetry, NodeInventory, NvmlStatus};
use serde::{Deserialize, Serialize};

/// What one node's inventory has of its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OwnDetails {
    pub hostname: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    pub nvml: NvmlStatus,
    /// Per GPU, in the template's order.
    pub gpus: Vec<GpuDetails>,
}

/// What one GPU has of its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuDetails {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telemetry: Option<GpuTelemetry>,
    /// The UUID of each MIG instance, in the template's order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mig_uuids: Vec<Option<String>>,
}

/// The shared template and this node's own details.
pub fn split(inventory: &NodeInventory) -> (NodeInventory, OwnDetails) {
    let mut template = inventory.clone();
    let own = OwnDetails {
        hostname: std::mem::take(&mut template.hostname),
        warnings: std::mem::take(&mut template.warnings),
        nvml: std::mem::replace(&mut template.nvml, NvmlStatus::Absent { reason: String::new() }),
        gpus: template
            .gpus
            .iter_mut()
            .map(|gpu| GpuDetails {
                uuid: gpu.uuid.take(),
                telemetry: gpu.telemetry.take(),
                mig_uuids: gpu
                    .mig
                    .as_mut()
                    .map(|mig| mig.instances.iter_mut().map(|instance| instance.uuid.take()).collect())
                    .unwrap_or_default(),
            })
            .collect(),
    };
    (template, own)
}

/// The inventory `split` took apart; an error when the details do not fit the
/// template (a different GPU or MIG instance count: a corrupt or foreign record).
pub fn join(template: &NodeInventory, own: &OwnDetails) -> Result<NodeInventory, String> {
    if template.gpus.len() != own.gpus.len() {
        return Err(format!("{} GPUs in the details, {} in the template", own.gpus.len(), template.gpus.len()));
    }
    let mut inventory = template.clone();
    inventory.hostname = own.hostname.clone();
    inventory.warnings = own.warnings.clone();
    inventory.nvml = own.nvml.clone();
    for (gpu, details) in inventory.gpus.iter_mut().zip(&own.gpus) {
        gpu.uuid = details.uuid.clone();
        gpu.telemetry = details.telemetry.clone();
        let instances = gpu.mig.as_mut().map_or(&mut [][..], |mig| &mut mig.instances[..]);
        if instances.len() != details.mig_uuids.len() {
            return Err(format!(
                "GPU {}: {} MIG instance UUIDs in the details, {} instances in the template",
                gpu.index,
                details.mig_uuids.len(),
                instances.len()
            ));
        }
        for (instance, uuid) in instances.iter_mut().zip(&details.mig_uuids) {
            instance.uuid = uuid.clone();
        }
    }
    Ok(inventory)
}

/// A template's id: a fingerprint of its JSON (fixed hash keys, so the same in
/// every run and on every broker).
pub fn template_id(template: &NodeInventory) -> u64 {
    allot_placement::placement_shape(template)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::state::testing::fixture;

    #[test]
    fn join_undoes_split_and_twins_share_a_template() {
        for name in ["dgx-h100", "dgx-a100-mig", "pcie-l40s", "pcie-h100-nvl"] {
            let inventory = fixture(name);
            let (template, own) = split(&inventory);
            assert_eq!(join(&template, &own).expect("joins"), inventory, "{name}");
            let mut twin = inventory.clone();
            twin.hostname = "twin".into();
            twin.warnings.push("a sensor is missing".into());
            for gpu in &mut twin.gpus {
                gpu.uuid = Some(format!("GPU-twin-{}", gpu.index));
                if let Some(telemetry) = &mut gpu.telemetry {
                    telemetry.temperature_c = Some(91);
                }
            }
            let (twin_template, twin_own) = split(&twin);
            assert_eq!(twin_template, template, "{name}: twins share the template");
            assert_eq!(template_id(&twin_template), template_id(&template));
            assert_eq!(join(&twin_template, &twin_own).expect("joins"), twin);
            let stored = serde_json::to_vec(&twin_own).expect("encodes");
            let whole = serde_json::to_vec(&twin).expect("encodes");
            assert!(stored.len() * 4 < whole.len(), "{name}: {} of {} bytes", stored.len(), whole.len());
        }
    }

    #[test]
    fn details_that_do_not_fit_the_template_are_refused() {
        let (template, mut own) = split(&fixture("dgx-h100"));
        own.gpus.pop();
        assert!(join(&template, &own).expect_err("one GPU short").contains("GPUs"));
        let (template, mut own) = split(&fixture("dgx-a100-mig"));
        if let Some(gpu) = own.gpus.iter_mut().find(|gpu| !gpu.mig_uuids.is_empty()) {
            gpu.mig_uuids.push(None);
        }
        assert!(join(&template, &own).expect_err("one instance too many").contains("MIG"));
    }
}
