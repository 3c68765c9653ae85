//! The placement decision: evaluate every node, keep the best candidate, build its
//! binding (GPUs, NICs, cores, memory) and say why.

use std::fmt::Write as _;

use allot_api::allocation::{Binding, GpuDemand, GpuGrant, MigGrant, ShareGrant, ValidatedRequest};
use allot_api::topology::NodeInventory;
use allot_api::units::CpuSet;

use crate::cores::{CoreGrant, assign_cores, free_memory, gpu_numa_weights, total_free, would_spill};
use crate::explain::{Explanation, NodeRefusal, NodeVerdict, Refusal, RefusalReason, Verdict, describe_request};
use crate::gpus::{GpuFilter, Mode, assign_nics};
use crate::learned::{self, ClusterContext};
use crate::mig::{self, MigAsk};
use crate::node::NodeCtx;
use crate::score::{CpuScore, Score, blocked_words};
use crate::share::SharePolicy;
use crate::share::{self, ShareAsk};
use crate::usage::NodeUsage;
use crate::whole::{self, WholeAsk};
use crate::{Decision, NodeStatus, NodeView, PlacementOptions};

/// What one node can offer: its score and what it would grant.
#[derive(Debug, Clone)]
pub(crate) struct Offer {
    pub score: Score,
    plan: Plan,
}

#[derive(Debug, Clone)]
enum Plan {
    Whole { positions: Vec<usize> },
    Mig { position: usize, grant: MigGrant },
    Share { position: usize, grant: ShareGrant },
    Cpu,
}

/// Evaluates one node for the request, as it is now or as it could ever be.
pub(crate) fn evaluate_node(
    request: &ValidatedRequest,
    inventory: &NodeInventory,
    usage: &NodeUsage,
    mode: Mode,
    options: &PlacementOptions,
    share_costs: Option<&[Option<f64>]>,
) -> Result<Offer, NodeRefusal> {
    let node = NodeCtx::new(inventory, usage, mode);
    let filter =
        GpuFilter { models: &[], min_memory: request.min_gpu_memory, rdma: request.rdma, pin: request.pin.as_ref() };
    let offer = match &request.gpus {
        GpuDemand::None => {
            let free = total_free(node.free_cores_by_numa());
            if request.cpus > free {
                return Err(NodeRefusal::NotEnoughCores { requested: request.cpus, free });
            }
            let score = CpuScore {
                spills: would_spill(node.free_cores_by_numa(), &[], request.cpus),
                free_gpus: node.free_gpus(),
                cores_left: free - request.cpus,
            };
            Offer { score: Score::Cpu(score), plan: Plan::Cpu }
        }
        GpuDemand::Whole { count, models } => {
            let ask = WholeAsk {
                count: *count,
                interconnect: request.interconnect,
                filter: GpuFilter { models, ..filter },
                cpus: request.cpus,
            };
            let offer = whole::evaluate(&node, &ask, options.exhaustive_limit)?;
            Offer { score: Score::Whole(offer.score), plan: Plan::Whole { positions: offer.positions } }
        }
        GpuDemand::Mig { profile } => {
            let offer = mig::evaluate(&node, &MigAsk { profile, filter, cpus: request.cpus })?;
            Offer { score: Score::Mig(offer.score), plan: Plan::Mig { position: offer.position, grant: offer.grant } }
        }
        GpuDemand::Share { compute, memory } => {
            let ask = ShareAsk {
                compute: *compute,
                memory: *memory,
                filter,
                cpus: request.cpus,
                policy: options.share_policy,
                costs: share_costs,
            };
            let offer = share::evaluate(&node, &ask)?;
            Offer {
                score: Score::Share(offer.score),
                plan: Plan::Share { position: offer.position, grant: offer.grant },
            }
        }
    };
    // Cores taken that the inventory does not list make this an underestimate,
    // which errs on the side of refusing.
    let cores = u32::try_from(inventory.cpu.cores.len()).unwrap_or(u32::MAX);
    let free_cores = match mode {
        Mode::Now => cores.saturating_sub(usage.cores_taken()),
        Mode::Ever => cores,
    };
    if request.cpus > free_cores {
        return Err(NodeRefusal::NotEnoughCores { requested: request.cpus, free: free_cores });
    }
    let free_memory = free_memory(inventory, usage, mode);
    if request.memory > free_memory {
        return Err(NodeRefusal::NotEnoughMemory { requested: request.memory, free: free_memory });
    }
    Ok(offer)
}

pub(crate) fn place_with(
    request: &ValidatedRequest,
    nodes: &[NodeView<'_>],
    options: &PlacementOptions,
    context: Option<&ClusterContext<'_>>,
) -> Result<Decision, Refusal> {
    // Only share requests under Allot's policy with a learned mix pay for it.
    let share_costs = match (options.share_policy, context) {
        (SharePolicy::Allot, Some(context)) => learned::share_costs(request, nodes, context),
        _ => None,
    };
    let mut order: Vec<usize> = (0..nodes.len()).collect();
    order.sort_by(|a, b| nodes[*a].name.cmp(nodes[*b].name));
    let mut outcomes: Vec<(usize, Result<Score, NodeRefusal>)> = Vec::with_capacity(nodes.len());
    let mut best: Option<(usize, Offer)> = None;
    for index in order {
        let view = &nodes[index];
        let pinned_elsewhere = request.pin.as_ref().is_some_and(|pin| &pin.node != view.name);
        let outcome = match view.status {
            _ if pinned_elsewhere => Err(NodeRefusal::NotPinned),
            NodeStatus::Lost => Err(NodeRefusal::Lost),
            NodeStatus::Cordoned => Err(NodeRefusal::Cordoned),
            NodeStatus::Ready => {
                let costs = share_costs.as_ref().and_then(|costs| costs.get(index)).map(Vec::as_slice);
                evaluate_node(request, view.inventory, view.usage, Mode::Now, options, costs)
            }
        };
        match outcome {
            Ok(offer) => {
                outcomes.push((index, Ok(offer.score.clone())));
                // Nodes come in name order and only a strictly better score
                // replaces the best: ties go to the first name.
                if best.as_ref().is_none_or(|(_, best)| offer.score < best.score) {
                    best = Some((index, offer));
                }
            }
            Err(reason) => outcomes.push((index, Err(reason))),
        }
    }
    let Some((chosen, offer)) = best else {
        return Err(crate::refuse::refusal(request, nodes, outcomes, options));
    };
    let view = &nodes[chosen];
    let binding = match bind(request, view, &offer) {
        Ok(binding) => binding,
        Err(detail) => {
            let explanation = explanation(request, nodes, outcomes, None, None);
            return Err(Refusal { reason: RefusalReason::NoCapacityNow { detail }, explanation });
        }
    };
    let text = chosen_text(request, view, &offer, &binding, &outcomes, chosen, nodes);
    let explanation = explanation(request, nodes, outcomes, Some(chosen), Some(text));
    Ok(Decision { binding: binding.binding, explanation })
}

/// The decision for an offer already known to be the best, as the index finds it:
/// the binding, and an explanation that names the runner-up (a node whose offer
/// scored next) instead of every node's verdict; `note` is added to the words.
pub(crate) fn decide_offer(
    request: &ValidatedRequest,
    chosen: NodeView<'_>,
    offer: &Offer,
    runner_up: Option<(NodeView<'_>, Score)>,
    note: &str,
) -> Result<Decision, String> {
    let mut nodes = vec![chosen];
    let mut outcomes: Vec<(usize, Result<Score, NodeRefusal>)> = vec![(0, Ok(offer.score.clone()))];
    if let Some((view, score)) = runner_up {
        nodes.push(view);
        outcomes.push((1, Ok(score)));
    }
    let bound = bind(request, &chosen, offer)?;
    let mut text = chosen_text(request, &chosen, offer, &bound, &outcomes, 0, &nodes);
    text.push_str(note);
    let explanation = explanation(request, &nodes, outcomes, Some(0), Some(text));
    Ok(Decision { binding: bound.binding, explanation })
}

/// A binding with the core grant it was built from (for the explanation).
struct Bound {
    binding: Binding,
    cores: CoreGrant,
}

fn bind(request: &ValidatedRequest, view: &NodeView<'_>, offer: &Offer) -> Result<Bound, String> {
    let inventory = view.inventory;
    let positions: Vec<usize> = match &offer.plan {
        Plan::Whole { positions } => positions.clone(),
        Plan::Mig { position, .. } | Plan::Share { position, .. } => vec![*position],
        Plan::Cpu => vec![],
    };
    let local = gpu_numa_weights(inventory, &positions);
    let cores = assign_cores(inventory, view.usage, request.cpus, &local)
        .ok_or_else(|| format!("core accounting of node {} disagrees with its inventory", view.name))?;
    let nics = if request.rdma { assign_nics(inventory, &positions) } else { vec![None; positions.len()] };
    let gpus = positions
        .iter()
        .zip(nics)
        .map(|(position, nic)| {
            let gpu = &inventory.gpus[*position];
            let (mig, share) = match &offer.plan {
                Plan::Mig { grant, .. } => (Some(grant.clone()), None),
                Plan::Share { grant, .. } => (None, Some(*grant)),
                _ => (None, None),
            };
            GpuGrant {
                index: gpu.index,
                uuid: gpu.uuid.clone(),
                pci_bus_id: gpu.pci_bus_id.to_string(),
                mig,
                share,
                nic: nic.and_then(|(nic, _)| inventory.nics.get(nic)).map(|nic| nic.name.clone()),
            }
        })
        .collect();
    let numa_nodes = if cores.numa_nodes.is_empty() {
        let mut numa: Vec<u32> = local.iter().map(|(numa, _)| *numa).collect();
        numa.sort_unstable();
        numa
    } else {
        cores.numa_nodes.clone()
    };
    let binding = Binding {
        node: view.name.clone(),
        gpus,
        cpus: cores.pus.clone(),
        cores: cores.cores.clone(),
        memory: request.memory,
        numa_nodes,
    };
    Ok(Bound { binding, cores })
}

/// Every node's verdict: the chosen first, then candidates best first, then the
/// refused by name (the order `outcomes` arrive in).
pub(crate) fn explanation(
    request: &ValidatedRequest,
    nodes: &[NodeView<'_>],
    outcomes: Vec<(usize, Result<Score, NodeRefusal>)>,
    chosen: Option<usize>,
    chosen_text: Option<String>,
) -> Explanation {
    // Order positions in `outcomes`, then move each outcome once: with ten thousand
    // nodes, shuffling the verdicts themselves costs more than deciding.
    let mut candidates: Vec<usize> = Vec::new();
    let mut refused: Vec<usize> = Vec::new();
    let mut first: Option<usize> = None;
    for (position, (index, outcome)) in outcomes.iter().enumerate() {
        match outcome {
            Ok(_) if Some(*index) == chosen => first = Some(position),
            Ok(_) => candidates.push(position),
            Err(_) => refused.push(position),
        }
    }
    let score = |position: &usize| outcomes[*position].1.as_ref().ok();
    // A stable sort keeps name order among equal scores.
    candidates.sort_by(|a, b| score(a).cmp(&score(b)));
    let mut slots: Vec<Option<(usize, Result<Score, NodeRefusal>)>> = outcomes.into_iter().map(Some).collect();
    let verdicts = first
        .into_iter()
        .chain(candidates)
        .chain(refused)
        .filter_map(|position| slots[position].take())
        .map(|(index, outcome)| NodeVerdict {
            node: nodes[index].name.clone(),
            verdict: match outcome {
                Ok(score) if Some(index) == chosen => Verdict::Chosen { score },
                Ok(score) => Verdict::Candidate { score },
                Err(reason) => Verdict::Refused { reason },
            },
        })
        .collect();
    Explanation { request: describe_request(request), chosen: chosen_text, nodes: verdicts }
}

/// Why this node and these GPUs, cores and memory, in words.
fn chosen_text(
    request: &ValidatedRequest,
    view: &NodeView<'_>,
    offer: &Offer,
    bound: &Bound,
    outcomes: &[(usize, Result<Score, NodeRefusal>)],
    chosen: usize,
    nodes: &[NodeView<'_>],
) -> String {
    let inventory = view.inventory;
    let binding = &bound.binding;
    let mut text = String::new();
    let gpu_indices: Vec<String> = binding.gpus.iter().map(|grant| grant.index.to_string()).collect();
    let _ = match (&offer.plan, &offer.score) {
        (Plan::Whole { .. }, Score::Whole(score)) => write!(
            text,
            "placed on {}: GPU{} {} ({score})",
            view.name,
            if gpu_indices.len() == 1 { "" } else { "s" },
            gpu_indices.join(", ")
        ),
        (Plan::Mig { grant, .. }, Score::Mig(score)) => {
            let how = if grant.recarve {
                "after a re-carve (MIG enabled or unowned instances removed first)"
            } else if score.reuses_orphan {
                "reusing an existing unowned instance"
            } else {
                "carved into free slices"
            };
            write!(
                text,
                "placed on {}: MIG {} on GPU {} at memory slices {}-{}, {how}; blocks {}",
                view.name,
                grant.profile,
                gpu_indices.join(", "),
                grant.start,
                grant.start + grant.size.saturating_sub(1),
                blocked_words(&score.blocked),
            )
        }
        (Plan::Share { grant, .. }, Score::Share(score)) => write!(
            text,
            "placed on {}: a share of GPU {} ({} milli-GPU, {}); {score}",
            view.name,
            gpu_indices.join(", "),
            grant.compute.0,
            grant.memory
        ),
        _ => write!(text, "placed on {}: no GPU", view.name),
    };
    let nics: Vec<String> = binding
        .gpus
        .iter()
        .filter_map(|grant| grant.nic.as_ref().map(|nic| format!("GPU {} -> {nic}", grant.index)))
        .collect();
    if !nics.is_empty() {
        let _ = write!(text, "\nRDMA NICs: {}", nics.join(", "));
    }
    let runner_up = outcomes
        .iter()
        .filter(|(index, _)| *index != chosen)
        .filter_map(|(index, outcome)| outcome.as_ref().ok().map(|score| (*index, score)))
        .min_by(|a, b| a.1.cmp(b.1));
    let _ = match runner_up {
        None => write!(text, "\nwhy: the only node that can take it"),
        Some((index, score)) => match offer.score.decisive(score) {
            Some(words) => write!(text, "\nwhy: beats {}: {words}", nodes[index].name),
            None => write!(text, "\nwhy: ties with {} on every criterion; the first name wins", nodes[index].name),
        },
    };
    let _ = write!(text, "\ncores: {}", cores_words(&bound.cores, request.cpus, &offer.plan));
    let _ = write!(text, "\nmemory: {} of {} free", request.memory, free_memory(inventory, view.usage, Mode::Now));
    text
}

fn cores_words(grant: &CoreGrant, wanted: u32, plan: &Plan) -> String {
    if wanted == 0 {
        return "none asked".to_owned();
    }
    let local: Vec<String> = grant.local.iter().map(|(numa, count)| format!("{count} on NUMA {numa}")).collect();
    let cpu_only = matches!(plan, Plan::Cpu);
    let whose = if !cpu_only && !grant.local.is_empty() { ", local to the GPUs" } else { "" };
    let mut words = format!("{} ({}{whose})", CpuSet::new(grant.cores.clone()), local.join(", "));
    if !grant.spilled.is_empty() {
        let spilled: Vec<String> = grant
            .spilled
            .iter()
            .map(|(numa, count, distance)| match numa {
                Some(numa) => format!("{count} to NUMA {numa} (distance {distance})"),
                None => format!("{count} to cores of no NUMA node"),
            })
            .collect();
        let why = if cpu_only {
            format!("no NUMA node has {wanted} free cores")
        } else {
            format!("the GPUs' NUMA nodes had only {} free cores", grant.local_free)
        };
        let _ = write!(words, "; spilled {} because {why}", spilled.join(", "));
    }
    words
}
