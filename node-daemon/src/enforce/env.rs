//! The environment a workload gets: which devices it sees and, for a share,
//! the MPS limits. Pure: the allocation and the MIG device UUIDs in, variables out.

use std::collections::BTreeMap;

use allot_api::allocation::Allocation;

use super::mig::RecordedMig;

/// Why an environment cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    #[error("GPU {gpu}: the MIG instance has no device UUID yet (no compute instance)")]
    MigWithoutUuid { gpu: u32 },
    #[error("GPU {gpu}: no MIG instance recorded for the grant")]
    MigMissing { gpu: u32 },
}

/// Variables for a process of `allocation`. `mig` are the instances enforcement
/// recorded for it. Devices are named by UUID (stable across reboots and
/// renumbering); a GPU whose UUID NVML did not report falls back to its index.
pub fn environment(allocation: &Allocation, mig: &[RecordedMig]) -> Result<BTreeMap<String, String>, EnvError> {
    let mut env = BTreeMap::new();
    env.insert("ALLOT_ALLOCATION_ID".to_owned(), allocation.id.to_string());
    let mut devices = Vec::new();
    let mut share = None;
    if let Some(binding) = &allocation.binding {
        env.insert("ALLOT_NODE".to_owned(), binding.node.to_string());
        for gpu in &binding.gpus {
            if gpu.mig.is_some() {
                let recorded = mig.iter().find(|recorded| recorded.gpu_index == gpu.index);
                let recorded = recorded.ok_or(EnvError::MigMissing { gpu: gpu.index })?;
                devices.push(recorded.uuid.clone().ok_or(EnvError::MigWithoutUuid { gpu: gpu.index })?);
            } else {
                devices.push(gpu.uuid.clone().unwrap_or_else(|| gpu.index.to_string()));
            }
            if let Some(grant) = gpu.share {
                share = Some(grant);
            }
        }
    }
    if devices.is_empty() {
        // Hide every GPU: "void" is the NVIDIA container runtime's word for none,
        // an empty CUDA_VISIBLE_DEVICES is CUDA's.
        env.insert("NVIDIA_VISIBLE_DEVICES".to_owned(), "void".to_owned());
        env.insert("CUDA_VISIBLE_DEVICES".to_owned(), String::new());
    } else {
        let list = devices.join(",");
        env.insert("NVIDIA_VISIBLE_DEVICES".to_owned(), list.clone());
        env.insert("CUDA_VISIBLE_DEVICES".to_owned(), list);
    }
    if let Some(share) = share {
        // MPS takes whole percents of the SMs; round up so a small share still runs.
        let percent = share.compute.0.div_ceil(10).clamp(1, 100);
        env.insert("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE".to_owned(), percent.to_string());
        // Ordinal 0: the one device CUDA_VISIBLE_DEVICES leaves visible.
        env.insert("CUDA_MPS_PINNED_DEVICE_MEM_LIMIT".to_owned(), format!("0={}M", share.memory.0));
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use allot_api::allocation::{
        AllocationId, AllocationState, Binding, GpuDemand, GpuGrant, Interconnect, MigGrant, MilliGpu, ShareGrant,
        ValidatedRequest,
    };
    use allot_api::units::MiB;

    use super::*;

    fn allocation(gpus: Vec<GpuGrant>) -> Allocation {
        let request = ValidatedRequest::new(
            "ml".parse().expect("team"),
            GpuDemand::None,
            1,
            MiB(0),
            Interconnect::Any,
            false,
            None,
            None,
        )
        .expect("valid");
        let binding = Binding {
            node: "n1".parse().expect("node"),
            gpus,
            cpus: vec![0],
            cores: vec![0],
            memory: MiB(0),
            numa_nodes: vec![0],
        };
        // Through serde, so fields other work adds (with defaults) need no change here.
        serde_json::from_value(serde_json::json!({
            "id": AllocationId::from_u64(1),
            "request": request,
            "state": AllocationState::Bound,
            "binding": binding,
            "explanation": "",
            "created_at_ms": 0,
            "updated_at_ms": 0,
            "generation": 1,
        }))
        .expect("allocation")
    }

    fn gpu(index: u32, uuid: Option<&str>) -> GpuGrant {
        GpuGrant { index, uuid: uuid.map(str::to_owned), pci_bus_id: String::new(), mig: None, share: None, nic: None }
    }

    fn recorded(gpu_index: u32, uuid: Option<&str>) -> RecordedMig {
        RecordedMig {
            gpu_index,
            gpu_uuid: None,
            profile: "3g.40gb".into(),
            profile_id: 9,
            start: 4,
            size: 4,
            gpu_instance_id: 2,
            uuid: uuid.map(str::to_owned),
            created: true,
        }
    }

    fn check(gpus: Vec<GpuGrant>, mig: &[RecordedMig], expected: &[(&str, &str)]) {
        let env = environment(&allocation(gpus), mig).expect("environment");
        for (name, value) in expected {
            assert_eq!(env.get(*name).map(String::as_str), Some(*value), "{name} in {env:?}");
        }
    }

    #[test]
    fn whole_gpus_are_named_by_uuid() {
        check(
            vec![gpu(0, Some("GPU-a")), gpu(3, Some("GPU-b"))],
            &[],
            &[("NVIDIA_VISIBLE_DEVICES", "GPU-a,GPU-b"), ("CUDA_VISIBLE_DEVICES", "GPU-a,GPU-b")],
        );
        check(vec![gpu(5, None)], &[], &[("CUDA_VISIBLE_DEVICES", "5")]);
    }

    #[test]
    fn no_gpu_hides_them_all() {
        check(vec![], &[], &[("NVIDIA_VISIBLE_DEVICES", "void"), ("CUDA_VISIBLE_DEVICES", "")]);
    }

    #[test]
    fn a_mig_grant_shows_the_mig_device() {
        let mut grant = gpu(1, Some("GPU-a"));
        grant.mig = Some(MigGrant { profile: "3g.40gb".into(), profile_id: 9, start: 4, size: 4, recarve: false });
        check(
            vec![grant.clone()],
            &[recorded(1, Some("MIG-x"))],
            &[
                ("NVIDIA_VISIBLE_DEVICES", "MIG-x"),
                ("CUDA_VISIBLE_DEVICES", "MIG-x"),
                ("ALLOT_ALLOCATION_ID", "a-0000000000000001"),
            ],
        );
        assert_eq!(environment(&allocation(vec![grant.clone()]), &[]), Err(EnvError::MigMissing { gpu: 1 }));
        assert_eq!(
            environment(&allocation(vec![grant]), &[recorded(1, None)]),
            Err(EnvError::MigWithoutUuid { gpu: 1 })
        );
    }

    #[test]
    fn a_share_sets_the_mps_limits() {
        let mut grant = gpu(2, Some("GPU-c"));
        grant.share = Some(ShareGrant { compute: MilliGpu(250), memory: MiB(10_240) });
        check(
            vec![grant.clone()],
            &[],
            &[
                ("CUDA_VISIBLE_DEVICES", "GPU-c"),
                ("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "25"),
                ("CUDA_MPS_PINNED_DEVICE_MEM_LIMIT", "0=10240M"),
            ],
        );
        grant.share = Some(ShareGrant { compute: MilliGpu(1), memory: MiB(1) });
        check(vec![grant], &[], &[("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "1")]);
    }
}
