//! Placement over the cluster state: the placement index for whole GPUs, MIG and
//! CPU-only requests, the exhaustive engine over one node per group of identical
//! nodes for the rest, and refusals as broker errors.

use allot_api::allocation::{GpuDemand, ValidatedRequest};
use allot_placement::RefusalReason;

use allot_store::{Op, layout};

use crate::error::BrokerError;
use crate::state::ClusterState;
use crate::state::codec::encode;

/// The store key of the learned task mix.
pub(crate) fn mix_key() -> String {
    layout::setting("learned-mix")
}

/// Stores the learned task mix if requests arrived since it was last stored, so
/// shares keep packing against it after a restart (a crash loses at most one
/// tick's arrivals).
pub(crate) fn save_mix(state: &mut ClusterState, writes: &mut Vec<Op>) {
    let seen = state.learned_mix.seen();
    if seen == state.mix_saved_seen {
        return;
    }
    match encode(&state.learned_mix) {
        Ok(bytes) => {
            writes.push(Op::put(mix_key(), bytes));
            state.mix_saved_seen = seen;
        }
        Err(error) => tracing::warn!(%error, "the learned task mix is not stored"),
    }
}

pub(crate) fn refusal_error(refusal: allot_placement::Refusal, note: &str) -> BrokerError {
    match refusal.reason {
        RefusalReason::Impossible { detail } => {
            BrokerError::Impossible { reason: format!("{detail}\n{}{note}", refusal.explanation) }
        }
        RefusalReason::NoCapacityNow { detail } => {
            BrokerError::NoCapacity { reason: format!("{detail}\n{}{note}", refusal.explanation) }
        }
    }
}

/// Where a request would go now, without taking anything.
/// A placement decision with its explanation in words.
pub(crate) struct Decided {
    pub(crate) binding: allot_api::allocation::Binding,
    pub(crate) explanation: String,
}

/// Places a request as the exhaustive engine would over every node. Whole GPUs,
/// MIG and CPU-only requests go through the placement index, which reads the few
/// groups of identical nodes that can be best instead of scoring every node;
/// shares (ranked under the learned mix, which weighs the whole cluster), pinned
/// requests and requests nothing can take now go to [`decide_over`].
pub(crate) fn decide(state: &mut ClusterState, request: &ValidatedRequest) -> Result<Decided, BrokerError> {
    let started = std::time::Instant::now();
    let record = |path: &'static str| {
        crate::state::metrics::histograms()
            .placement
            .record(started.elapsed().as_secs_f64(), &[allot_telemetry::opentelemetry::KeyValue::new("path", path)]);
    };
    if request.pin.is_none()
        && !matches!(request.gpus, GpuDemand::Share { .. })
        && let Some(decision) = state.place_indexed(request)
    {
        record("index");
        return Ok(Decided { binding: decision.binding, explanation: decision.explanation.to_string() });
    }
    let decided = decide_over(state, request, false);
    record("engine");
    decided
}

/// Runs placement over the distinct nodes (see `ClusterState::distinct_node_views`),
/// or over every node when `every_node`, and says in the explanation which
/// identical nodes it did not list.
pub(crate) fn decide_over(
    state: &ClusterState,
    request: &ValidatedRequest,
    every_node: bool,
) -> Result<Decided, BrokerError> {
    let (views, twins) = match &request.pin {
        // A pinned request looks at its node only, even when it is a twin that
        // the distinct views would have left out.
        Some(pin) => (
            state.node_views().into_iter().filter(|view| view.name == &pin.node).collect(),
            std::collections::BTreeMap::new(),
        ),
        None if every_node => (state.node_views(), std::collections::BTreeMap::new()),
        None => state.distinct_node_views(),
    };
    let note = || -> String {
        if twins.is_empty() {
            return String::new();
        }
        let listed: Vec<String> = twins.iter().map(|(name, count)| format!("{count} like {name}")).collect();
        format!("\nnodes identical to a listed one (hardware, status and usage), not listed: {}", listed.join(", "))
    };
    // Shares are ranked by Allot's policy under the learned mix, which counts
    // the identical idle nodes left out of `views` in the cluster's supply.
    let twin_counts: Vec<usize> = views.iter().map(|view| twins.get(view.name).copied().unwrap_or(0)).collect();
    let context = allot_placement::ClusterContext { mix: &state.learned_mix, twins: &twin_counts };
    match allot_placement::place_learned(request, &views, &context) {
        Ok(decision) => {
            Ok(Decided { binding: decision.binding, explanation: format!("{}{}", decision.explanation, note()) })
        }
        Err(refusal) => Err(refusal_error(refusal, &note())),
    }
}

/// Whether a demand names GPUs at all (for metrics).
pub fn wants_gpus(request: &ValidatedRequest) -> bool {
    !matches!(request.gpus, GpuDemand::None)
}

#[cfg(test)]
mod tests {
    use allot_api::allocation::{Interconnect, MilliGpu, NodeName};
    use allot_api::units::MiB;
    use allot_placement::NodeStatus;

    use super::*;
    use crate::state::testing::fixture;
    use crate::state::{NodeEntry, NodeRecord};

    fn request(gpus: GpuDemand, cpus: u32, interconnect: Interconnect) -> ValidatedRequest {
        ValidatedRequest::new("t".parse().expect("team"), gpus, cpus, MiB(0), interconnect, false, None, None)
            .expect("valid request")
    }

    /// Placing over distinct nodes, and through the placement index, decides
    /// exactly what placing over all nodes does, and the index follows every
    /// change made through the state.
    #[test]
    fn leaving_out_twins_and_the_index_change_no_decision() {
        let mut state = ClusterState::default();
        for (index, fixture_name) in
            ["dgx-h100", "dgx-h100", "dgx-a100-mig", "dgx-h100", "pcie-l40s", "dgx-h100", "pcie-l40s"]
                .iter()
                .enumerate()
        {
            let mut inventory = fixture(fixture_name);
            // Twins differ in what placement ignores: names and UUIDs.
            inventory.hostname = format!("n{index}");
            for gpu in &mut inventory.gpus {
                gpu.uuid = Some(format!("GPU-{index}-{}", gpu.index));
            }
            let name: NodeName = format!("n{index}").parse().expect("name");
            let record = NodeRecord { name: name.clone(), inventory, epoch: 1, registered_at_ms: 0, shape: None };
            state.insert_node(NodeEntry::new(record, NodeStatus::Ready, 0));
        }
        let (views, twins) = state.distinct_node_views();
        assert_eq!(views.len(), 3, "one of each shape while all are idle");
        assert_eq!(twins.values().sum::<usize>(), 4);

        let sequence = [
            request(GpuDemand::Whole { count: 1, models: vec![] }, 2, Interconnect::Any),
            request(GpuDemand::Whole { count: 4, models: vec![] }, 8, Interconnect::Nvlink),
            request(GpuDemand::Mig { profile: "3g.40gb".into() }, 1, Interconnect::Any),
            request(GpuDemand::Whole { count: 8, models: vec![] }, 0, Interconnect::Nvlink),
            request(GpuDemand::Share { compute: MilliGpu(300), memory: MiB(8000) }, 1, Interconnect::Any),
            request(GpuDemand::Whole { count: 2, models: vec!["L40S".into()] }, 4, Interconnect::PcieSwitch),
            request(GpuDemand::Whole { count: 8, models: vec![] }, 0, Interconnect::Nvlink),
            request(GpuDemand::Whole { count: 8, models: vec![] }, 0, Interconnect::Nvlink),
            request(GpuDemand::Whole { count: 8, models: vec![] }, 0, Interconnect::Nvlink),
            request(GpuDemand::Whole { count: 9, models: vec![] }, 0, Interconnect::Nvlink),
            request(GpuDemand::None, 4, Interconnect::Any),
        ];
        for (step, request) in sequence.iter().enumerate() {
            let all = allot_placement::place(request, &state.node_views());
            let distinct = allot_placement::place(request, &state.distinct_node_views().0);
            let indexed = match &request.gpus {
                GpuDemand::Share { .. } => None,
                _ => state.place_indexed(request).map(|decision| decision.binding),
            };
            assert!(state.index_agrees(), "step {step}");
            match (&all, &distinct) {
                (Ok(all), Ok(distinct)) => {
                    assert_eq!(all.binding, distinct.binding, "step {step}: {request:?}");
                    if !matches!(request.gpus, GpuDemand::Share { .. }) {
                        assert_eq!(indexed.as_ref(), Some(&all.binding), "step {step}: {request:?}");
                    }
                    let binding = all.binding.clone();
                    let node = binding.node.clone();
                    state.node_mut(&node).expect("node").usage.add(&binding);
                }
                (Err(all), Err(distinct)) => {
                    assert_eq!(indexed, None, "step {step}");
                    assert_eq!(all.is_impossible(), distinct.is_impossible(), "step {step}: {request:?}");
                }
                _ => panic!("step {step}: {request:?}: all nodes gave {all:?}, distinct nodes gave {distinct:?}"),
            }
        }
    }
}
