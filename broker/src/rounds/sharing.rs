//! Quotas and fair share inside the broker: the bridge between the cluster state
//! and the pure admission rules of `allot-policy`.
//!
//! The writer calls [`schedule`] at the end of a batch that may let a waiting
//! request in (a release, a new or returning node, a quota change, a new pending
//! request, a reclaim that came due), and [`tick`] periodically to preempt
//! reclaimed allocations whose grace period ended and to age the usage history.
//! Both only change memory and add store writes; the writer persists them with
//! the batch before anyone hears of them.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Duration;

use allot_api::allocation::{Allocation, AllocationId, AllocationState, NodeName, TeamName, ValidatedRequest};
use allot_placement::NodeUsage;
use allot_policy::admission::Ledger;
use allot_policy::{Placer, Resources, RoundSettings, Running, Waiting};
use allot_store::{Op, layout};

use crate::rounds::placing::{Decided, decide};
use crate::state::ClusterState;
use crate::state::codec::encode;

/// How reclaim, fair share and the ticker's housekeeping behave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicySettings {
    /// How long a reclaimed allocation keeps running before it is preempted.
    pub grace: Duration,
    /// Half-life of the usage history; zero turns history off.
    pub half_life: Duration,
    /// How long a finished allocation is kept after its last change (see `retention`).
    pub released_retention: Duration,
}

impl Default for PolicySettings {
    fn default() -> Self {
        PolicySettings {
            grace: Duration::from_secs(30),
            half_life: Duration::from_secs(24 * 3600),
            released_retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// How often the usage history is written to the store.
const HISTORY_SAVE_INTERVAL_MS: u64 = 60_000;

/// The quota's view of the cluster now.
pub fn ledger(state: &ClusterState) -> Ledger<'_> {
    Ledger { tree: &state.tree, capacity: &state.capacity, usage: state.team_usage.clone() }
}

/// What a request will be charged before it is placed (no GPU family yet).
pub fn request_charge(request: &ValidatedRequest) -> allot_policy::Resources {
    allot_policy::charge(&request.gpus, request.cpus, request.memory.0, None)
}

/// The GPU model a decision landed on.
pub fn decided_model(state: &ClusterState, binding: &allot_api::allocation::Binding) -> Option<String> {
    let gpu = binding.gpus.first()?;
    let entry = state.nodes().get(&binding.node)?;
    entry.record.inventory.gpus.iter().find(|candidate| candidate.index == gpu.index).map(|found| found.model.clone())
}

/// The real placement engine over the cluster state, holding what it placed in
/// this round until the round decides. The state is shared with the round's
/// [`LiveView`] (which reads a team's allocations only when a reclaim asks);
/// each call borrows it for its own length.
struct StatePlacer<'s, 'a> {
    state: &'s RefCell<&'a mut ClusterState>,
    requests: BTreeMap<u64, ValidatedRequest>,
    placed: BTreeMap<u64, Decided>,
}

impl StatePlacer<'_, '_> {
    /// Usage of a node from its live allocations (minus `without`) plus what
    /// this round placed there.
    fn usage_of(&self, node: &NodeName, without: &[u64]) -> NodeUsage {
        let state = self.state.borrow();
        let mut usage = NodeUsage::from_bindings(
            state
                .live_refs_on(node)
                .filter(|allocation| !without.contains(&allocation.id.as_u64()))
                .filter_map(|allocation| allocation.binding.as_ref()),
        );
        for decided in self.placed.values().filter(|decided| &decided.binding.node == node) {
            usage.add(&decided.binding);
        }
        usage
    }
}

impl Placer for StatePlacer<'_, '_> {
    fn place(&mut self, id: u64) -> Result<Option<String>, String> {
        let Some(request) = self.requests.get(&id) else { return Err("unknown request".into()) };
        let mut state = self.state.borrow_mut();
        match decide(&mut state, request) {
            Ok(decided) => {
                if let Some(mut entry) = state.node_mut(&decided.binding.node) {
                    entry.usage.add(&decided.binding);
                }
                let model = decided_model(&state, &decided.binding);
                self.placed.insert(id, decided);
                Ok(model)
            }
            Err(error) => Err(error.to_string().lines().next().unwrap_or("no capacity now").to_owned()),
        }
    }

    fn unplace(&mut self, id: u64) {
        if let Some(decided) = self.placed.remove(&id) {
            let node = decided.binding.node.clone();
            let usage = self.usage_of(&node, &[]);
            if let Some(mut entry) = self.state.borrow_mut().node_mut(&node) {
                entry.usage = usage;
            }
        }
    }

    fn fits_without(&mut self, id: u64, victims: &[u64]) -> bool {
        let Some(request) = self.requests.get(&id).cloned() else { return false };
        let mut nodes: Vec<NodeName> = {
            let state = self.state.borrow();
            victims
                .iter()
                .filter_map(|victim| state.allocations.get(&AllocationId::from_u64(*victim)))
                .filter_map(|allocation| allocation.binding.as_ref().map(|binding| binding.node.clone()))
                .collect()
        };
        nodes.sort();
        nodes.dedup();
        let mut saved = Vec::new();
        for node in &nodes {
            let usage = self.usage_of(node, victims);
            if let Some(mut entry) = self.state.borrow_mut().node_mut(node) {
                saved.push((node.clone(), std::mem::replace(&mut entry.usage, usage)));
            }
        }
        let fits = decide(&mut self.state.borrow_mut(), &request).is_ok();
        for (node, usage) in saved {
            if let Some(mut entry) = self.state.borrow_mut().node_mut(&node) {
                entry.usage = usage;
            }
        }
        fits
    }
}

fn persist(allocation: &Allocation, writes: &mut Vec<Op>) {
    if let Ok(bytes) = encode(allocation) {
        writes.push(Op::put(layout::allocation(allocation.id.to_string()), bytes));
    }
}

/// One scheduling round over the queue. Returns the allocations that changed
/// (admitted, marked for reclaim, reclaim cancelled), to tell their nodes.
/// What a round reads of the live allocations, from the state's indexes:
/// per-team usage and the reclaims under way, copied when the round begins, and
/// a team's allocations only when a reclaim asks for them. A round costs the
/// queue and what it reclaims from, not every live allocation.
struct LiveView<'s, 'a> {
    state: &'s RefCell<&'a mut ClusterState>,
    usage: BTreeMap<TeamName, Resources>,
    reclaiming: Vec<Running>,
}

fn running(allocation: &Allocation, charge: &Resources) -> Running {
    Running {
        id: allocation.id.as_u64(),
        team: allocation.request.team.clone(),
        charge: charge.clone(),
        created_ms: allocation.created_at_ms,
        reclaim_at_ms: allocation.quota.reclaim_at_ms,
        reclaim_for: allocation.quota.reclaim_for.map(AllocationId::as_u64),
    }
}

impl<'s, 'a> LiveView<'s, 'a> {
    fn of(state: &'s RefCell<&'a mut ClusterState>) -> LiveView<'s, 'a> {
        let (usage, reclaiming) = {
            let state = state.borrow();
            // Teams with no live allocation are left out, as a scan would.
            let usage = state
                .team_usage
                .iter()
                .filter(|(_, usage)| usage.0.values().any(|amount| *amount > 0))
                .map(|(team, usage)| (team.clone(), usage.clone()))
                .collect();
            let reclaiming = state
                .reclaiming()
                .filter_map(|allocation| Some(running(allocation, state.charge(allocation.id)?)))
                .collect();
            (usage, reclaiming)
        };
        LiveView { state, usage, reclaiming }
    }
}

impl allot_policy::Live for LiveView<'_, '_> {
    fn usage(&self) -> BTreeMap<TeamName, Resources> {
        self.usage.clone()
    }

    fn reclaiming(&self) -> Vec<Running> {
        self.reclaiming.clone()
    }

    fn of_team(&self, team: &TeamName) -> Vec<Running> {
        let state = self.state.borrow();
        state.live_of_team(team).map(|(allocation, charge)| running(allocation, charge)).collect()
    }
}

pub fn schedule(state: &mut ClusterState, writes: &mut Vec<Op>, now: u64, settings: PolicySettings) -> Vec<Allocation> {
    if state.queue.is_empty() {
        state.queue_info.clear();
        return Vec::new();
    }
    let mut waiting = Vec::new();
    let mut requests = BTreeMap::new();
    for id in &state.queue {
        let Some(allocation) = state.allocations.get(id) else { continue };
        waiting.push(Waiting {
            id: id.as_u64(),
            team: allocation.request.team.clone(),
            charge: request_charge(&allocation.request),
            created_ms: allocation.created_at_ms,
        });
        requests.insert(id.as_u64(), allocation.request.clone());
    }
    let tree = state.tree.clone();
    let capacity = state.capacity.clone();
    let history = state.history.clone();
    let round = RoundSettings {
        now_ms: now,
        grace_ms: settings.grace.as_millis() as u64,
        use_history: !settings.half_life.is_zero(),
    };
    let shared = RefCell::new(state);
    let (result, mut placed) = {
        let live = LiveView::of(&shared);
        let mut placer = StatePlacer { state: &shared, requests, placed: BTreeMap::new() };
        let result = allot_policy::admit(&tree, &capacity, &history, &live, &waiting, &mut placer, round);
        (result, placer.placed)
    };
    let state = shared.into_inner();
    let mut changed = Vec::new();
    for admitted in &result.admitted {
        let id = AllocationId::from_u64(admitted.id);
        let (Some(mut allocation), Some(decided)) = (state.allocations.get(&id).cloned(), placed.remove(&admitted.id))
        else {
            continue;
        };
        let waited_ms = now.saturating_sub(allocation.created_at_ms);
        crate::state::metrics::histograms().queue_wait.record(waited_ms as f64 / 1000.0, &[]);
        allocation.state = AllocationState::Bound;
        allocation.binding = Some(decided.binding);
        allocation.explanation = decided.explanation;
        allocation.quota.borrowed = admitted.borrowed;
        allocation.updated_at_ms = now;
        allocation.generation += 1;
        persist(&allocation, writes);
        state.put_allocation(allocation.clone());
        changed.push(allocation);
    }
    let mut mark = |state: &mut ClusterState, id: u64, at: Option<u64>, target: Option<u64>| {
        let Some(mut allocation) = state.allocations.get(&AllocationId::from_u64(id)).cloned() else { return };
        allocation.quota.reclaim_at_ms = at;
        allocation.quota.reclaim_for = target.map(AllocationId::from_u64);
        allocation.updated_at_ms = now;
        allocation.generation += 1;
        persist(&allocation, writes);
        state.put_allocation(allocation.clone());
        changed.push(allocation);
    };
    for reclaim in &result.reclaim {
        tracing::info!(
            victim = reclaim.victim,
            for_request = reclaim.for_request,
            at_ms = reclaim.at_ms,
            "reclaiming a borrowed allocation"
        );
        mark(state, reclaim.victim, Some(reclaim.at_ms), Some(reclaim.for_request));
    }
    for id in &result.cancel_reclaim {
        mark(state, *id, None, None);
    }
    state.queue_info = result
        .waiting
        .into_iter()
        .map(|waiting| (AllocationId::from_u64(waiting.id), (waiting.position, waiting.reason)))
        .collect();
    changed
}

/// Preempts reclaimed allocations whose grace period has ended and ages the
/// usage history. Returns what changed and whether a round should follow.
pub fn tick(
    state: &mut ClusterState,
    writes: &mut Vec<Op>,
    now: u64,
    settings: PolicySettings,
) -> (Vec<Allocation>, bool) {
    let due: Vec<AllocationId> = state
        .reclaiming()
        .filter(|allocation| allocation.quota.reclaim_at_ms.is_some_and(|at| at <= now))
        .map(|allocation| allocation.id)
        .collect();
    let mut changed = Vec::new();
    for id in &due {
        let Some(mut allocation) = state.allocations.get(id).cloned() else { continue };
        tracing::warn!(allocation = %id, team = %allocation.request.team, "preempted: reclaimed for a team below its guarantee");
        allocation.state = AllocationState::Preempted;
        allocation.updated_at_ms = now;
        allocation.generation += 1;
        persist(&allocation, writes);
        state.put_allocation(allocation.clone());
        if let Some(binding) = &allocation.binding {
            let node = binding.node.clone();
            state.recompute_usage(&node);
        }
        changed.push(allocation);
    }
    let half_life = settings.half_life.as_millis() as u64;
    let current = allot_policy::fairshare::subtree_dimensions(&state.tree, &state.team_usage);
    state.history.advance(now, &current, half_life);
    if half_life > 0 && now >= state.history_saved_ms + HISTORY_SAVE_INTERVAL_MS {
        state.history_saved_ms = now;
        if let Ok(bytes) = encode(&state.history) {
            writes.push(Op::put(layout::setting("usage-history"), bytes));
        }
    }
    (changed, !due.is_empty() || (!state.queue.is_empty() && state.queue_info.is_empty()))
}
