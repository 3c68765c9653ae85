//! When no node can take a request: is it impossible (no node could ever, even
//! idle, repaired and re-carved), or only short of capacity now? Each comes with a
//! message a person can act on.

use std::collections::{BTreeMap, BTreeSet};

use allot_api::allocation::{GpuDemand, Interconnect, ValidatedRequest};
use allot_api::units::MiB;

use crate::explain::{GpuExclusions, NodeRefusal, Refusal, RefusalReason, describe_request, gpus_words};
use crate::gpus::{GpuFilter, Mode};
use crate::node::NodeCtx;
use crate::place::{evaluate_node, explanation};
use crate::score::Score;
use crate::usage::NodeUsage;
use crate::whole::{self, WholeAsk};
use crate::{NodeView, PlacementOptions};

pub(crate) fn refusal(
    request: &ValidatedRequest,
    nodes: &[NodeView<'_>],
    outcomes: Vec<(usize, Result<Score, NodeRefusal>)>,
    options: &PlacementOptions,
) -> Refusal {
    let idle = NodeUsage::default();
    let mut could: Vec<usize> = Vec::new();
    let mut never: Vec<(usize, NodeRefusal)> = Vec::new();
    for (index, _) in &outcomes {
        let view = &nodes[*index];
        if request.pin.as_ref().is_some_and(|pin| &pin.node != view.name) {
            never.push((*index, NodeRefusal::NotPinned));
            continue;
        }
        match evaluate_node(request, view.inventory, &idle, Mode::Ever, options, None) {
            Ok(_) => could.push(*index),
            Err(reason) => never.push((*index, reason)),
        }
    }
    let pinned_absent = request.pin.as_ref().filter(|pin| !nodes.iter().any(|view| view.name == &pin.node));
    let reason = if let Some(pin) = pinned_absent {
        RefusalReason::Impossible {
            detail: format!("the request is pinned to node {}, which is not registered", pin.node),
        }
    } else if nodes.is_empty() {
        RefusalReason::Impossible { detail: "the cluster has no nodes; register a node first".to_owned() }
    } else if could.is_empty() {
        RefusalReason::Impossible { detail: impossible_detail(request, nodes, &never) }
    } else {
        RefusalReason::NoCapacityNow { detail: no_capacity_detail(request, nodes, &could, &outcomes) }
    };
    Refusal { reason, explanation: explanation(request, nodes, outcomes, None, None) }
}

fn no_capacity_detail(
    request: &ValidatedRequest,
    nodes: &[NodeView<'_>],
    could: &[usize],
    outcomes: &[(usize, Result<Score, NodeRefusal>)],
) -> String {
    let mut kinds: BTreeMap<&'static str, usize> = BTreeMap::new();
    for (index, outcome) in outcomes {
        if let (true, Err(reason)) = (could.contains(index), outcome) {
            *kinds.entry(reason.kind()).or_default() += 1;
        }
    }
    let examples: Vec<&str> = could.iter().take(3).map(|index| nodes[*index].name.as_str()).collect();
    let more = if could.len() > examples.len() { ", ..." } else { "" };
    let now: Vec<String> = kinds.iter().map(|(kind, count)| format!("{count} {kind}")).collect();
    let mut detail = format!(
        "{}: {} of {} nodes could take it when idle ({}{more}) but none can now ({}); it fits once capacity is released",
        describe_request(request),
        could.len(),
        nodes.len(),
        examples.join(", "),
        now.join(", "),
    );
    if kinds.contains_key("lost") {
        detail.push_str(", or when a lost node returns");
    }
    if kinds.contains_key("cordoned") {
        detail.push_str(", or when a node is uncordoned");
    }
    detail
}

fn impossible_detail(request: &ValidatedRequest, nodes: &[NodeView<'_>], never: &[(usize, NodeRefusal)]) -> String {
    let refusals = || never.iter().map(|(_, reason)| reason);
    // Nodes that have the GPUs but too few cores or too little memory went furthest.
    let most_memory = refusals().filter_map(|reason| match reason {
        NodeRefusal::NotEnoughMemory { free, .. } => Some(*free),
        _ => None,
    });
    let which = if matches!(request.gpus, GpuDemand::None) {
        "the largest node has"
    } else {
        "the nodes with such GPUs have at most"
    };
    if let Some(most) = most_memory.max() {
        return format!("{} of memory requested, {which} {most}; ask for less memory", request.memory);
    }
    let most_cores = refusals().filter_map(|reason| match reason {
        NodeRefusal::NotEnoughCores { free, .. } => Some(*free),
        _ => None,
    });
    if let Some(most) = most_cores.max() {
        return format!("{} cores requested, {which} {most}; ask for fewer cores", request.cpus);
    }
    let mut excluded = GpuExclusions::default();
    for reason in refusals() {
        if let NodeRefusal::TooFewGpus { excluded: more, .. }
        | NodeRefusal::NoMigSlot { excluded: more, .. }
        | NodeRefusal::NoShareRoom { excluded: more } = reason
        {
            add(&mut excluded, more);
        }
    }
    match &request.gpus {
        GpuDemand::None => "the request fits no node".to_owned(),
        GpuDemand::Whole { count, models } => {
            let most_usable = refusals()
                .filter_map(|reason| match reason {
                    NodeRefusal::TooFewGpus { eligible, .. } | NodeRefusal::NoConnectedSet { eligible, .. } => {
                        Some(*eligible)
                    }
                    _ => None,
                })
                .max()
                .unwrap_or(0);
            if most_usable == 0 {
                return gpu_filter_detail(request, nodes, models, &excluded);
            }
            let what = gpus_words(*count, request.interconnect, models);
            match request.interconnect {
                Interconnect::Any => format!(
                    "{what} requested on one node, the most any node has is {most_usable}; \
                     ask for at most {most_usable}, or split the work across nodes"
                ),
                interconnect => {
                    let largest = largest_domain(request, nodes, never, models, interconnect);
                    let domain = match interconnect {
                        Interconnect::Nvlink => "the largest NVLink domain in the cluster has",
                        Interconnect::PcieSwitch => {
                            "the largest group of GPUs under one PCIe switch in the cluster has"
                        }
                        _ => "the most GPUs on one NUMA node in the cluster is",
                    };
                    format!(
                        "{what} requested, {domain} {largest}; ask for at most {largest}, \
                         or relax the interconnect (interconnect any)"
                    )
                }
            }
        }
        GpuDemand::Mig { profile } => {
            if refusals().all(|reason| matches!(reason, NodeRefusal::NoMigProfile { .. })) {
                let offered: BTreeSet<&str> = nodes
                    .iter()
                    .flat_map(|view| &view.inventory.gpus)
                    .filter_map(|gpu| gpu.mig.as_ref())
                    .flat_map(|mig| mig.profiles.iter().map(|profile| profile.name.as_str()))
                    .collect();
                if offered.is_empty() {
                    return format!("MIG {profile} requested, but no GPU in the cluster supports MIG");
                }
                let offered: Vec<&str> = offered.into_iter().collect();
                return format!(
                    "no GPU in the cluster offers MIG profile {profile}; offered: {}; ask for one of those",
                    offered.join(", ")
                );
            }
            gpu_filter_detail(request, nodes, &[], &excluded)
        }
        GpuDemand::Share { memory, .. } => {
            if excluded.full > 0 && excluded.wrong_model + excluded.too_small + excluded.no_rdma_nic == 0 {
                let largest = nodes
                    .iter()
                    .flat_map(|view| &view.inventory.gpus)
                    .filter_map(|gpu| gpu.memory_mib)
                    .max()
                    .unwrap_or(MiB(0));
                return format!(
                    "a share with {memory} of GPU memory requested, the largest GPU has {largest}; \
                     ask for less memory or for a whole GPU"
                );
            }
            gpu_filter_detail(request, nodes, &[], &excluded)
        }
    }
}

/// No GPU of the cluster passes the request's filters: say which filter.
fn gpu_filter_detail(
    request: &ValidatedRequest,
    nodes: &[NodeView<'_>],
    models: &[String],
    excluded: &GpuExclusions,
) -> String {
    let gpus = || nodes.iter().flat_map(|view| &view.inventory.gpus);
    if gpus().next().is_none() {
        return "the cluster has no GPUs".to_owned();
    }
    let of_model = if models.is_empty() { String::new() } else { format!(" of model {}", models.join(" or ")) };
    if excluded.wrong_model > 0 && excluded.wrong_model == excluded.total() {
        let known: BTreeSet<&str> = gpus().map(|gpu| gpu.model.as_str()).collect();
        let known: Vec<&str> = known.into_iter().collect();
        return format!("no node has a GPU{of_model}; the cluster has {}; ask for one of those", known.join(", "));
    }
    if excluded.too_small > 0 {
        let largest =
            gpus().filter(|gpu| crate::gpus::model_matches(&gpu.model, models)).filter_map(|gpu| gpu.memory_mib).max();
        let wanted = request.min_gpu_memory.unwrap_or(MiB(0));
        return match (largest, &request.gpus) {
            (_, GpuDemand::Mig { profile }) => {
                format!(
                    "no MIG {profile} instance has {wanted} of memory; ask for a larger profile or lower the minimum"
                )
            }
            (Some(largest), _) => format!(
                "no GPU{of_model} has {wanted} of memory, the largest has {largest}; lower the minimum GPU memory"
            ),
            (None, _) => format!("no GPU{of_model} reports its memory size, so none is known to have {wanted}"),
        };
    }
    if excluded.no_rdma_nic > 0 {
        return format!(
            "no GPU{of_model} has an RDMA NIC under its PCIe switch (PIX or PXB); drop rdma or ask an admin to add such NICs"
        );
    }
    format!("no GPU{of_model} can take it ({excluded})")
}

/// The largest set of GPUs connected as asked on any node, idle.
fn largest_domain(
    request: &ValidatedRequest,
    nodes: &[NodeView<'_>],
    never: &[(usize, NodeRefusal)],
    models: &[String],
    interconnect: Interconnect,
) -> u32 {
    let idle = NodeUsage::default();
    let filter =
        GpuFilter { models, min_memory: request.min_gpu_memory, rdma: request.rdma, pin: request.pin.as_ref() };
    never
        .iter()
        .map(|(index, _)| {
            let node = NodeCtx::new(nodes[*index].inventory, &idle, Mode::Ever);
            let ask = WholeAsk { count: 2, interconnect, filter, cpus: 0 };
            whole::largest_domain(&node, &ask)
        })
        .max()
        .unwrap_or(0)
}

fn add(total: &mut GpuExclusions, more: &GpuExclusions) {
    total.wrong_model += more.wrong_model;
    total.too_small += more.too_small;
    total.unhealthy += more.unhealthy;
    total.no_rdma_nic += more.no_rdma_nic;
    total.in_use += more.in_use;
    total.mig_enabled += more.mig_enabled;
    total.no_mig_profile += more.no_mig_profile;
    total.full += more.full;
    total.not_listed += more.not_listed;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusions_add_up() {
        let mut total = GpuExclusions::default();
        add(&mut total, &GpuExclusions { wrong_model: 2, full: 1, ..Default::default() });
        add(&mut total, &GpuExclusions { wrong_model: 1, in_use: 3, ..Default::default() });
        assert_eq!(total.total(), 7);
        assert_eq!(total.to_string(), "3 other model, 3 in use, 1 full");
    }
}
