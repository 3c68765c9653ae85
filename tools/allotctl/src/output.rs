//! What allotctl prints: tables for people, JSON for programs. Not log lines.

use allot_api::allocation::{Allocation, GpuDemand};
use allot_api::proto;
use clap::ValueEnum;
use serde_json::{Value, json};

use crate::CtlError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

pub(crate) fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

/// Lays out rows in aligned columns; the first row is the header.
pub(crate) fn table(rows: Vec<Vec<String>>) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|column| rows.iter().map(|row| row.get(column).map_or(0, String::len)).max().unwrap_or(0))
        .collect();
    rows.iter()
        .map(|row| {
            row.iter()
                .enumerate()
                .map(|(column, cell)| format!("{cell:<width$}", width = widths[column]))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_owned()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn node_status(status: i32) -> &'static str {
    match proto::NodeStatus::try_from(status) {
        Ok(proto::NodeStatus::Ready) => "ready",
        Ok(proto::NodeStatus::Lost) => "lost",
        _ => "unknown",
    }
}

pub fn nodes(nodes: &[proto::NodeSummary], format: Format) -> String {
    match format {
        Format::Json => pretty(&json!(
            nodes
                .iter()
                .map(|node| json!({
                    "name": node.name,
                    "status": node_status(node.status),
                    "gpus": node.gpus,
                    "gpus_free": node.gpus_free,
                    "gpu_model": node.gpu_model,
                    "unhealthy_gpus": node.unhealthy_gpus,
                    "cores": node.cores,
                    "cores_free": node.cores_free,
                    "allocations": node.allocations,
                    "last_heartbeat_ms": node.last_heartbeat_ms,
                }))
                .collect::<Vec<_>>()
        )),
        Format::Table => {
            let mut rows = vec![
                ["NODE", "STATUS", "GPUS FREE", "MODEL", "UNHEALTHY", "CORES FREE", "ALLOCATIONS"]
                    .map(str::to_owned)
                    .to_vec(),
            ];
            rows.extend(nodes.iter().map(|node| {
                vec![
                    node.name.clone(),
                    node_status(node.status).to_owned(),
                    format!("{}/{}", node.gpus_free, node.gpus),
                    node.gpu_model.clone(),
                    node.unhealthy_gpus.to_string(),
                    format!("{}/{}", node.cores_free, node.cores),
                    node.allocations.to_string(),
                ]
            }));
            table(rows)
        }
    }
}

/// An allocation with what only the wire carries: its place in the queue.
struct Shown {
    allocation: Allocation,
    waiting_reason: String,
    queue_position: u32,
}

impl std::ops::Deref for Shown {
    type Target = Allocation;
    fn deref(&self) -> &Allocation {
        &self.allocation
    }
}

fn decode(allocation: proto::Allocation) -> Result<Shown, CtlError> {
    let waiting_reason = allocation.waiting_reason.clone();
    let queue_position = allocation.queue_position;
    let allocation = Allocation::try_from(allocation).map_err(|error| CtlError::Protocol(error.to_string()))?;
    Ok(Shown { allocation, waiting_reason, queue_position })
}

/// The JSON form of an allocation: `cpus` are core ids, `pus` their hardware threads.
fn allocation_json(shown: &Shown) -> Value {
    let allocation = &shown.allocation;
    let binding = allocation.binding.as_ref();
    let gpus: Vec<Value> = binding
        .map(|binding| {
            binding
                .gpus
                .iter()
                .map(|gpu| {
                    json!({
                        "index": gpu.index,
                        "uuid": gpu.uuid,
                        "pci_bus_id": gpu.pci_bus_id,
                        "mig": gpu.mig.as_ref().map(|mig| json!({
                            "profile": mig.profile,
                            "profile_id": mig.profile_id,
                            "start": mig.start,
                            "size": mig.size,
                            "recarve": mig.recarve,
                        })),
                        "share": gpu.share.map(|share| json!({
                            "milli_gpu": share.compute.0,
                            "memory_mib": share.memory.0,
                        })),
                        "nic": gpu.nic,
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    json!({
        "id": allocation.id.to_string(),
        "state": allocation.state.as_str(),
        "team": allocation.request.team.to_string(),
        "owner": allocation.request.owner,
        "request_id": allocation.request.request_id,
        "node": binding.map(|binding| binding.node.to_string()),
        "cpus": binding.map(|binding| binding.cores.clone()).unwrap_or_default(),
        "pus": binding.map(|binding| binding.cpus.clone()).unwrap_or_default(),
        "numa_nodes": binding.map(|binding| binding.numa_nodes.clone()).unwrap_or_default(),
        "memory_mib": binding.map(|binding| binding.memory.0),
        "gpus": gpus,
        "request": allocation.request,
        "generation": allocation.generation,
        "preemptible": allocation.quota.borrowed,
        "reclaim_at_ms": allocation.quota.reclaim_at_ms,
        "reclaim_for": allocation.quota.reclaim_for.map(|id| id.to_string()),
        "queue_position": (shown.queue_position > 0).then_some(shown.queue_position),
        "waiting_reason": (!shown.waiting_reason.is_empty()).then_some(&shown.waiting_reason),
        "created_at_ms": allocation.created_at_ms,
        "updated_at_ms": allocation.updated_at_ms,
    })
}

fn demand(allocation: &Allocation) -> String {
    match &allocation.request.gpus {
        GpuDemand::None => "cpu only".to_owned(),
        GpuDemand::Whole { count, .. } => format!("{count} GPU"),
        GpuDemand::Mig { profile } => format!("MIG {profile}"),
        GpuDemand::Share { compute, memory } => format!("{}m/{} MiB", compute.0, memory.0),
    }
}

fn granted(allocation: &Allocation) -> String {
    let Some(binding) = &allocation.binding else { return "-".to_owned() };
    binding
        .gpus
        .iter()
        .map(|gpu| match (&gpu.mig, &gpu.share) {
            (Some(mig), _) => format!("{}:{}@{}", gpu.index, mig.profile, mig.start),
            (None, Some(share)) => format!("{}:{}m", gpu.index, share.compute.0),
            (None, None) => gpu.index.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn rows(allocations: &[Shown]) -> String {
    let mut rows = vec![["ID", "TEAM", "STATE", "NODE", "ASKED", "GPUS", "CORES", "OWNER"].map(str::to_owned).to_vec()];
    rows.extend(allocations.iter().map(|allocation| {
        let binding = allocation.binding.as_ref();
        let state = match (allocation.state, allocation.quota.reclaim_at_ms, allocation.quota.borrowed) {
            (allot_api::allocation::AllocationState::Pending, _, _) if allocation.queue_position > 0 => {
                format!("pending #{}", allocation.queue_position)
            }
            (_, Some(_), _) if allocation.state.holds_capacity() => {
                format!("{} (reclaiming)", allocation.state.as_str())
            }
            (_, None, true) if allocation.state.holds_capacity() => format!("{} (borrowed)", allocation.state.as_str()),
            _ => allocation.state.as_str().to_owned(),
        };
        vec![
            allocation.id.to_string(),
            allocation.request.team.to_string(),
            state,
            binding.map(|b| b.node.to_string()).unwrap_or_else(|| "-".into()),
            demand(allocation),
            granted(allocation),
            binding.map(|b| b.cores.len().to_string()).unwrap_or_else(|| "0".into()),
            allocation.request.owner.clone().unwrap_or_else(|| "-".into()),
        ]
    }));
    table(rows)
}

pub fn allocation(allocation: proto::Allocation, format: Format) -> Result<String, CtlError> {
    let allocation = decode(allocation)?;
    Ok(match format {
        Format::Json => pretty(&allocation_json(&allocation)),
        Format::Table => rows(std::slice::from_ref(&allocation)),
    })
}

pub fn allocations(list: Vec<proto::Allocation>, format: Format) -> Result<String, CtlError> {
    let list: Vec<Shown> = list.into_iter().map(decode).collect::<Result<_, _>>()?;
    Ok(match format {
        Format::Json => pretty(&json!(list.iter().map(allocation_json).collect::<Vec<_>>())),
        Format::Table if list.is_empty() => "no allocations".to_owned(),
        Format::Table => rows(&list),
    })
}

pub fn created(reply: proto::CreateAllocationResponse, format: Format) -> Result<String, CtlError> {
    match reply.allocation {
        Some(allocation) => {
            let allocation = decode(allocation)?;
            Ok(match format {
                Format::Json => pretty(&allocation_json(&allocation)),
                Format::Table if !allocation.waiting_reason.is_empty() => {
                    format!("{}\nqueued: {}", rows(std::slice::from_ref(&allocation)), allocation.waiting_reason)
                }
                Format::Table => rows(std::slice::from_ref(&allocation)),
            })
        }
        // A dry run: where it would go.
        None => {
            let binding = reply
                .binding
                .map(allot_api::allocation::Binding::try_from)
                .transpose()
                .map_err(|error| CtlError::Protocol(error.to_string()))?;
            Ok(match format {
                Format::Json => {
                    pretty(&json!({ "dry_run": true, "binding": binding, "explanation": reply.explanation }))
                }
                Format::Table => format!("dry run: nothing was allocated\n{}", reply.explanation),
            })
        }
    }
}

pub fn explanation(reply: &proto::ExplainResponse, format: Format) -> String {
    match format {
        Format::Json => pretty(&json!({ "id": reply.id, "explanation": reply.explanation })),
        Format::Table => reply.explanation.clone(),
    }
}
