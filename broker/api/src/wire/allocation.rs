//! Allocation messages on the wire: specs validated into requests, grants and states.

use super::{WireError, wire_error};
use crate::allocation::{
    Allocation, AllocationId, AllocationState, Binding, DeviceSelector, GpuDemand, GpuGrant, Interconnect, MigGrant,
    MilliGpu, Pin, QuotaStanding, ShareGrant, ValidatedRequest,
};
use crate::proto;
use crate::units::MiB;

impl From<Interconnect> for proto::Interconnect {
    fn from(interconnect: Interconnect) -> Self {
        match interconnect {
            Interconnect::Any => proto::Interconnect::Any,
            Interconnect::Nvlink => proto::Interconnect::Nvlink,
            Interconnect::PcieSwitch => proto::Interconnect::PcieSwitch,
            Interconnect::Numa => proto::Interconnect::Numa,
        }
    }
}

impl From<&ValidatedRequest> for proto::AllocationSpec {
    fn from(request: &ValidatedRequest) -> Self {
        let gpus = match &request.gpus {
            GpuDemand::None => None,
            GpuDemand::Whole { count, models } => {
                Some(proto::allocation_spec::Gpus::Whole(proto::WholeGpus { count: *count, models: models.clone() }))
            }
            GpuDemand::Mig { profile } => {
                Some(proto::allocation_spec::Gpus::Mig(proto::MigDemand { profile: profile.clone() }))
            }
            GpuDemand::Share { compute, memory } => Some(proto::allocation_spec::Gpus::Share(proto::ShareDemand {
                milli_gpu: compute.0,
                memory_mib: memory.0,
            })),
        };
        proto::AllocationSpec {
            team: request.team.to_string(),
            gpus,
            cpus: request.cpus,
            memory_mib: request.memory.0,
            interconnect: proto::Interconnect::from(request.interconnect) as i32,
            rdma: request.rdma,
            min_gpu_memory_mib: request.min_gpu_memory.map(|memory| memory.0),
            owner: request.owner.clone(),
            pin: request.pin.as_ref().map(|pin| proto::Pin {
                node: pin.node.to_string(),
                devices: pin
                    .devices
                    .iter()
                    .map(|selector| proto::DeviceSelector {
                        gpu_uuid: selector.gpu_uuid.clone(),
                        mig_start: selector.mig_start,
                    })
                    .collect(),
            }),
            request_id: request.request_id.clone(),
        }
    }
}

impl TryFrom<proto::AllocationSpec> for ValidatedRequest {
    type Error = WireError;

    fn try_from(spec: proto::AllocationSpec) -> Result<Self, WireError> {
        let team = spec.team.parse().map_err(|error| wire_error("team", error))?;
        let gpus = match spec.gpus {
            None => GpuDemand::None,
            Some(proto::allocation_spec::Gpus::Whole(whole)) => {
                GpuDemand::Whole { count: whole.count, models: whole.models }
            }
            Some(proto::allocation_spec::Gpus::Mig(mig)) => GpuDemand::Mig { profile: mig.profile },
            Some(proto::allocation_spec::Gpus::Share(share)) => {
                GpuDemand::Share { compute: MilliGpu(share.milli_gpu), memory: MiB(share.memory_mib) }
            }
        };
        let interconnect = match proto::Interconnect::try_from(spec.interconnect) {
            Ok(proto::Interconnect::Unspecified | proto::Interconnect::Any) => Interconnect::Any,
            Ok(proto::Interconnect::Nvlink) => Interconnect::Nvlink,
            Ok(proto::Interconnect::PcieSwitch) => Interconnect::PcieSwitch,
            Ok(proto::Interconnect::Numa) => Interconnect::Numa,
            Err(_) => return Err(wire_error("interconnect", format!("unknown value {}", spec.interconnect))),
        };
        let request = ValidatedRequest::new(
            team,
            gpus,
            spec.cpus,
            MiB(spec.memory_mib),
            interconnect,
            spec.rdma,
            spec.min_gpu_memory_mib.map(MiB),
            spec.owner.filter(|owner| !owner.is_empty()),
        )
        .map_err(|error| wire_error(error.field, error.problem))?;
        let request = match spec.request_id.filter(|id| !id.is_empty()) {
            Some(id) => request.with_request_id(id).map_err(|error| wire_error(error.field, error.problem))?,
            None => request,
        };
        let Some(pin) = spec.pin else { return Ok(request) };
        let node = pin.node.parse().map_err(|error| wire_error("pin.node", error))?;
        let devices = pin
            .devices
            .into_iter()
            .map(|selector| DeviceSelector { gpu_uuid: selector.gpu_uuid, mig_start: selector.mig_start })
            .collect();
        request.pinned(Pin { node, devices }).map_err(|error| wire_error(error.field, error.problem))
    }
}

impl From<AllocationState> for proto::AllocationState {
    fn from(state: AllocationState) -> Self {
        match state {
            AllocationState::Pending => proto::AllocationState::Pending,
            AllocationState::Bound => proto::AllocationState::Bound,
            AllocationState::Enforced => proto::AllocationState::Enforced,
            AllocationState::Released => proto::AllocationState::Released,
            AllocationState::Lost => proto::AllocationState::Lost,
            AllocationState::Preempted => proto::AllocationState::Preempted,
        }
    }
}

fn state_from_wire(value: i32) -> Result<AllocationState, WireError> {
    Ok(match proto::AllocationState::try_from(value) {
        Ok(proto::AllocationState::Pending) => AllocationState::Pending,
        Ok(proto::AllocationState::Bound) => AllocationState::Bound,
        Ok(proto::AllocationState::Enforced) => AllocationState::Enforced,
        Ok(proto::AllocationState::Released) => AllocationState::Released,
        Ok(proto::AllocationState::Lost) => AllocationState::Lost,
        Ok(proto::AllocationState::Preempted) => AllocationState::Preempted,
        _ => return Err(wire_error("state", format!("unknown allocation state {value}"))),
    })
}

impl From<&Binding> for proto::Binding {
    fn from(binding: &Binding) -> Self {
        proto::Binding {
            node: binding.node.to_string(),
            gpus: binding
                .gpus
                .iter()
                .map(|gpu| proto::GpuGrant {
                    index: gpu.index,
                    uuid: gpu.uuid.clone(),
                    pci_bus_id: gpu.pci_bus_id.clone(),
                    mig: gpu.mig.as_ref().map(|mig| proto::MigGrant {
                        profile: mig.profile.clone(),
                        profile_id: mig.profile_id,
                        start: mig.start,
                        size: mig.size,
                        recarve: mig.recarve,
                    }),
                    share: gpu
                        .share
                        .map(|share| proto::ShareGrant { milli_gpu: share.compute.0, memory_mib: share.memory.0 }),
                    nic: gpu.nic.clone(),
                })
                .collect(),
            cpus: binding.cpus.clone(),
            cores: binding.cores.clone(),
            memory_mib: binding.memory.0,
            numa_nodes: binding.numa_nodes.clone(),
        }
    }
}

impl TryFrom<proto::Binding> for Binding {
    type Error = WireError;

    fn try_from(binding: proto::Binding) -> Result<Self, WireError> {
        Ok(Binding {
            node: binding.node.parse().map_err(|error| wire_error("binding.node", error))?,
            gpus: binding
                .gpus
                .into_iter()
                .map(|gpu| GpuGrant {
                    index: gpu.index,
                    uuid: gpu.uuid,
                    pci_bus_id: gpu.pci_bus_id,
                    mig: gpu.mig.map(|mig| MigGrant {
                        profile: mig.profile,
                        profile_id: mig.profile_id,
                        start: mig.start,
                        size: mig.size,
                        recarve: mig.recarve,
                    }),
                    share: gpu
                        .share
                        .map(|share| ShareGrant { compute: MilliGpu(share.milli_gpu), memory: MiB(share.memory_mib) }),
                    nic: gpu.nic,
                })
                .collect(),
            cpus: binding.cpus,
            cores: binding.cores,
            memory: MiB(binding.memory_mib),
            numa_nodes: binding.numa_nodes,
        })
    }
}

impl From<&Allocation> for proto::Allocation {
    fn from(allocation: &Allocation) -> Self {
        proto::Allocation {
            id: allocation.id.to_string(),
            spec: Some((&allocation.request).into()),
            state: proto::AllocationState::from(allocation.state) as i32,
            binding: allocation.binding.as_ref().map(Into::into),
            created_at_ms: allocation.created_at_ms,
            updated_at_ms: allocation.updated_at_ms,
            generation: allocation.generation,
            preemptible: allocation.quota.borrowed,
            reclaim_at_ms: allocation.quota.reclaim_at_ms,
            reclaim_for: allocation.quota.reclaim_for.map(|id| id.to_string()),
            waiting_reason: String::new(),
            queue_position: 0,
        }
    }
}

/// An allocation as a client sees it (without the placement explanation, which
/// `Explain` returns).
impl TryFrom<proto::Allocation> for Allocation {
    type Error = WireError;

    fn try_from(allocation: proto::Allocation) -> Result<Self, WireError> {
        Ok(Allocation {
            id: allocation.id.parse::<AllocationId>().map_err(|error| wire_error("id", error))?,
            request: allocation.spec.ok_or_else(|| wire_error("spec", "missing"))?.try_into()?,
            state: state_from_wire(allocation.state)?,
            binding: allocation.binding.map(Binding::try_from).transpose()?,
            explanation: String::new(),
            created_at_ms: allocation.created_at_ms,
            updated_at_ms: allocation.updated_at_ms,
            generation: allocation.generation,
            quota: QuotaStanding {
                borrowed: allocation.preemptible,
                reclaim_at_ms: allocation.reclaim_at_ms,
                reclaim_for: allocation
                    .reclaim_for
                    .map(|id| id.parse::<AllocationId>().map_err(|error| wire_error("reclaim_for", error)))
                    .transpose()?,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_allocation_survives_the_wire() {
        let request = ValidatedRequest::new(
            "vision".parse().expect("team"),
            GpuDemand::Mig { profile: "3g.40gb".into() },
            4,
            MiB(16_384),
            Interconnect::Any,
            false,
            None,
            Some("ns/pod/container".into()),
        )
        .expect("valid");
        let allocation = Allocation {
            id: AllocationId::from_u64(7),
            request,
            state: AllocationState::Bound,
            binding: Some(Binding {
                node: "dgx-a".parse().expect("node"),
                gpus: vec![GpuGrant {
                    index: 2,
                    uuid: Some("GPU-2".into()),
                    pci_bus_id: "0000:52:00.0".into(),
                    mig: Some(MigGrant { profile: "3g.40gb".into(), profile_id: 9, start: 4, size: 4, recarve: false }),
                    share: None,
                    nic: None,
                }],
                cpus: vec![0, 112],
                cores: vec![0],
                memory: MiB(16_384),
                numa_nodes: vec![0],
            }),
            explanation: String::new(),
            created_at_ms: 1,
            updated_at_ms: 2,
            generation: 3,
            quota: QuotaStanding {
                borrowed: true,
                reclaim_at_ms: Some(99),
                reclaim_for: Some(AllocationId::from_u64(8)),
            },
        };
        let back = Allocation::try_from(proto::Allocation::from(&allocation)).expect("round trip");
        assert_eq!(back, allocation);
    }

    #[test]
    fn a_bad_spec_names_its_field() {
        let spec = proto::AllocationSpec { team: "Bad Team".into(), ..Default::default() };
        assert_eq!(ValidatedRequest::try_from(spec).map_err(|e| e.field), Err("team".to_owned()));
        let spec = proto::AllocationSpec { team: "ok".into(), cpus: 0, ..Default::default() };
        assert_eq!(ValidatedRequest::try_from(spec).map_err(|e| e.field), Err("cpus".to_owned()));
    }
}
