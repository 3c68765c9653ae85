//! A node's placement shape: a fingerprint of what placement reads of its
//! inventory, so nodes that differ only in names, UUIDs and exact telemetry can be
//! grouped (the broker's twins, [`crate::PlacementIndex`]'s classes).

use allot_api::topology::NodeInventory;

/// A fingerprint of what placement looks at in an inventory: the hardware, its
/// topology, health, whether a GPU throttles, and MIG state; not names, UUIDs,
/// serials or exact temperatures. Two idle nodes with the same shape get the same
/// score for any request, so placement need only see the first of them by name
/// (the one it would pick anyway, since ties go to the smaller name).
pub fn placement_shape(inventory: &NodeInventory) -> u64 {
    use std::hash::Hasher;
    let mut shape = inventory.clone();
    shape.hostname.clear();
    shape.warnings.clear();
    shape.nvml = allot_api::topology::NvmlStatus::Absent { reason: String::new() };
    for gpu in &mut shape.gpus {
        gpu.uuid = None;
        // Placement asks only whether a GPU throttles.
        let throttling = gpu.telemetry.as_ref().is_some_and(|telemetry| telemetry.is_throttling());
        gpu.telemetry = throttling.then(|| allot_api::topology::GpuTelemetry {
            throttle_reasons: vec![allot_api::topology::ThrottleReason::SwThermalSlowdown],
            ..Default::default()
        });
        if let Some(mig) = &mut gpu.mig {
            for instance in &mut mig.instances {
                instance.uuid = None;
            }
        }
    }
    /// Feeds serialised bytes straight into the hasher, without building a string.
    struct HashWriter(std::collections::hash_map::DefaultHasher);
    impl std::io::Write for HashWriter {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.write(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    // DefaultHasher::new() has fixed keys: the same shape hashes the same in every run.
    let mut writer = HashWriter(std::collections::hash_map::DefaultHasher::new());
    if serde_json::to_writer(&mut writer, &shape).is_err() {
        // Unreachable for plain data; hashing the name keeps the node out of any group.
        let mut by_name = std::collections::hash_map::DefaultHasher::new();
        std::hash::Hash::hash(&inventory.hostname, &mut by_name);
        return by_name.finish();
    }
    writer.0.finish()
}
