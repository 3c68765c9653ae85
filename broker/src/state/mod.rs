//! The broker's in-memory view of the cluster, rebuilt from the store at start.
//!
//! The store holds the minimum (node registrations, teams, allocations, the id
//! counter); liveness and telemetry come from heartbeats and live only here.

use std::collections::{BTreeMap, BTreeSet};

use allot_api::allocation::{Allocation, AllocationId, AllocationState, NodeName, TeamName, ValidatedRequest};
use allot_api::topology::NodeInventory;

use allot_placement::{NodeStatus, NodeUsage, NodeView};
use allot_policy::{Quota, QuotaTree, Resources, TeamSpec, UsageHistory};
use serde::{Deserialize, Serialize};

pub mod audit;
pub mod codec;
pub mod inventory;
pub mod metrics;

/// What the crate's unit tests share.
#[cfg(test)]
pub(crate) mod testing {
    use allot_api::topology::NodeInventory;

    /// A fixture machine's inventory, as `allot-node inventory` prints it
    /// (`placement/tests/data/`), without its link matrices.
    pub fn fixture(name: &str) -> NodeInventory {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("placement/tests/data/{name}.json"));
        let text = std::fs::read_to_string(&path).expect("fixture inventory");
        let mut value: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        value.as_object_mut().expect("object").remove("links");
        serde_json::from_value(value).expect("inventory")
    }
}

/// Whether an allocation is finished: released or preempted, it holds nothing,
/// waits for nothing and never changes again. Only finished allocations are
/// ever forgotten (see `retention`).
pub fn is_finished(state: AllocationState) -> bool {
    matches!(state, AllocationState::Released | AllocationState::Preempted)
}

/// The milli-GPU a request asks for (before it is placed).
fn gpus_asked(request: &allot_api::allocation::ValidatedRequest) -> u64 {
    allot_policy::charge(&request.gpus, request.cpus, request.memory.0, None).get(&allot_policy::ResourceClass::GpuAny)
}

/// A node's registration, as persisted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub name: NodeName,
    pub inventory: NodeInventory,
    /// Incremented on every registration of this name.
    pub epoch: u64,
    pub registered_at_ms: u64,
    /// [`placement_shape`] of `inventory`, kept so that a broker start need not
    /// recompute it for every node.
    #[serde(default)]
    pub shape: Option<u64>,
}

/// A node's registration as stored: its own inventory details and the id of
/// the template holding the rest (see [`inventory`]), or the whole inventory
/// (records from before templates, and the rare node whose template id
/// collides with another's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredNode {
    pub name: NodeName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inventory: Option<NodeInventory>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub own: Option<inventory::OwnDetails>,
    pub epoch: u64,
    pub registered_at_ms: u64,
    #[serde(default)]
    pub shape: Option<u64>,
}

impl StoredNode {
    /// The registration as the broker keeps it, with its template filled in.
    pub fn into_record(self, templates: &BTreeMap<u64, NodeInventory>) -> Result<NodeRecord, String> {
        let inventory = match (self.inventory, self.template, &self.own) {
            (Some(inventory), _, _) => inventory,
            (None, Some(id), Some(own)) => {
                let template =
                    templates.get(&id).ok_or_else(|| format!("its inventory template {id:016x} is missing"))?;
                inventory::join(template, own)?
            }
            _ => return Err("it holds neither an inventory nor a template and details".into()),
        };
        Ok(NodeRecord {
            name: self.name,
            inventory,
            epoch: self.epoch,
            registered_at_ms: self.registered_at_ms,
            shape: self.shape,
        })
    }
}

/// A team (or organisation, or project), as persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TeamRecord {
    pub name: TeamName,
    pub created_at_ms: u64,
    #[serde(default)]
    pub parent: Option<TeamName>,
    #[serde(default)]
    pub quota: Quota,
}

impl TeamRecord {
    pub fn spec(&self) -> TeamSpec {
        TeamSpec { name: self.name.clone(), parent: self.parent.clone(), quota: self.quota.clone() }
    }
}

/// A node as the broker sees it now.
#[derive(Debug, Clone)]
pub struct NodeEntry {
    pub record: NodeRecord,
    pub status: NodeStatus,
    pub last_heartbeat_ms: u64,
    /// Capacity held by allocations on this node, derived from them.
    pub usage: NodeUsage,
    /// Everything about the hardware that placement looks at (see [`placement_shape`]).
    pub shape: u64,
}

impl NodeEntry {
    pub fn new(record: NodeRecord, status: NodeStatus, last_heartbeat_ms: u64) -> Self {
        let shape = record.shape.unwrap_or_else(|| placement_shape(&record.inventory));
        NodeEntry { record, status, last_heartbeat_ms, usage: NodeUsage::default(), shape }
    }
}

pub use allot_placement::placement_shape;

/// One node being changed: derefs to its entry, and tells the placement index
/// what changed when dropped.
#[derive(Debug)]
pub struct NodeMut<'a> {
    name: NodeName,
    entry: &'a mut NodeEntry,
    index: &'a mut allot_placement::PlacementIndex,
}

impl std::ops::Deref for NodeMut<'_> {
    type Target = NodeEntry;
    fn deref(&self) -> &NodeEntry {
        self.entry
    }
}

impl std::ops::DerefMut for NodeMut<'_> {
    fn deref_mut(&mut self) -> &mut NodeEntry {
        self.entry
    }
}

impl Drop for NodeMut<'_> {
    fn drop(&mut self) {
        self.index.update(&self.name, self.entry.shape, self.entry.status, &self.entry.usage);
    }
}

/// A bearer token's record: only its hash is the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub subject: String,
    pub created_at_ms: u64,
    /// When it stops working (ms since the epoch); `None`: until revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
}

impl TokenRecord {
    pub fn expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_some_and(|at| now_ms >= at)
    }
}

/// A token's id: the first 16 hex digits of its hash (enough to name it, of
/// no use to guess the token).
pub fn token_id(hash: &str) -> &str {
    hash.get(..16).unwrap_or(hash)
}

/// Everything the broker knows.
#[derive(Debug, Default)]
pub struct ClusterState {
    /// Private so that every change goes through [`ClusterState::node_mut`] or
    /// [`ClusterState::insert_node`], which keep `index` in step.
    nodes: BTreeMap<NodeName, NodeEntry>,
    /// The nodes grouped for placement (classes of identical shape, status and
    /// usage, ranked per request shape), updated with every node change.
    index: allot_placement::PlacementIndex,
    pub allocations: BTreeMap<AllocationId, Allocation>,
    pub teams: BTreeMap<TeamName, TeamRecord>,
    /// The checked quota tree made of `teams` and the GPU values.
    pub tree: QuotaTree,
    /// What the ready nodes have, per resource class.
    pub capacity: Resources,
    /// Usage per team, from the allocations that hold capacity.
    pub team_usage: BTreeMap<TeamName, Resources>,
    /// What each allocation holding capacity is charged (for `team_usage`).
    charges: BTreeMap<AllocationId, Resources>,
    /// The allocations in `charges`, by team (reclaim candidates for a round).
    live_by_team: BTreeMap<TeamName, BTreeSet<AllocationId>>,
    /// Pending allocations, by id (arrival order).
    pub queue: BTreeSet<AllocationId>,
    /// The W3C traceparent each traced create came with, sent to the node with
    /// its assignment so that enforcement joins the trace. Bounded: the oldest
    /// go first (a trace is only as good as its newest spans).
    traces: BTreeMap<AllocationId, String>,
    /// Each pending allocation's place in the queue and why it waits (not persisted:
    /// every scheduling round computes it again).
    pub queue_info: BTreeMap<AllocationId, (usize, String)>,
    /// Decayed past usage per team, for fair share.
    pub history: UsageHistory,
    /// When the usage history was last persisted.
    pub history_saved_ms: u64,
    /// Set by a change that may let a waiting request in; the writer then runs a
    /// scheduling round before it persists the batch.
    pub round_wanted: bool,
    /// Allocations being reclaimed (holding capacity until their grace ends).
    reclaiming: BTreeSet<AllocationId>,
    /// Role grants (the casbin `g` lines in the store).
    pub grants: BTreeSet<allot_policy::Grant>,
    /// Bearer tokens by the hex SHA-256 of the token.
    pub tokens: BTreeMap<String, TokenRecord>,
    /// Whether the role permissions (casbin `p` lines) are in the store.
    pub permissions_stored: bool,
    /// The next allocation id to hand out.
    pub next_id: u64,
    /// The node's last word on each allocation (not persisted).
    pub node_reports: BTreeMap<AllocationId, String>,
    /// Allocations created in memory whose batch is not stored yet: readers do not
    /// see them, and nodes hear of them only once they are stored.
    pub unpersisted: BTreeSet<AllocationId>,
    /// Allocations holding capacity, by node: keeps per-node work proportional to
    /// the node's own allocations, not to the history of the cluster.
    live_by_node: BTreeMap<NodeName, BTreeSet<AllocationId>>,
    /// Finished allocations (released, preempted) by the time of their last
    /// change, oldest first: what `retention` prunes, without a scan.
    pub(crate) finished: BTreeSet<(u64, AllocationId)>,
    /// Allocations by their caller's request id, per team (idempotent creates);
    /// kept as long as the allocation is.
    by_request_id: BTreeMap<(TeamName, String), AllocationId>,
    /// The usage history, recorded from every allocation change (see `usage.rs`).
    pub usage: allot_history::Recorder,
    /// The task mix learned from the requests that arrived (each allocation
    /// counted once, when it is first put), which Allot's share placement packs
    /// against. Stored by the writer's ticker when it changed (see
    /// `rounds::placing::save_mix`), loaded at start.
    pub learned_mix: allot_placement::learn::RequestMix,
    /// How many requests the stored mix had counted.
    pub(crate) mix_saved_seen: u64,
    /// The audit log's newest entries (see [`audit`]).
    pub audit: audit::AuditLog,
    /// The stored inventory templates, by id (see [`inventory`]).
    pub templates: BTreeMap<u64, NodeInventory>,
}

impl ClusterState {
    /// Inserts or replaces an allocation, keeping the per-node index, the queue
    /// and the per-team usage right.
    pub fn put_allocation(&mut self, allocation: Allocation) {
        if !self.allocations.contains_key(&allocation.id) {
            self.learned_mix.observe(&allocation.request);
        }
        if let Some(key) = &allocation.request.request_id {
            self.by_request_id.insert((allocation.request.team.clone(), key.clone()), allocation.id);
        }
        self.record_usage(&allocation);
        if let Some(previous) = self.allocations.get(&allocation.id)
            && let Some(binding) = &previous.binding
            && let Some(live) = self.live_by_node.get_mut(&binding.node)
        {
            live.remove(&previous.id);
        }
        if let Some(charge) = self.charges.remove(&allocation.id)
            && let Some(usage) = self.team_usage.get_mut(&allocation.request.team)
        {
            usage.subtract(&charge);
        }
        if let Some(live) = self.live_by_team.get_mut(&allocation.request.team) {
            live.remove(&allocation.id);
        }
        if let Some(previous) = self.allocations.get(&allocation.id) {
            self.finished.remove(&(previous.updated_at_ms, previous.id));
        }
        if is_finished(allocation.state) {
            self.finished.insert((allocation.updated_at_ms, allocation.id));
        }
        if allocation.state.holds_capacity()
            && let Some(binding) = &allocation.binding
        {
            self.live_by_node.entry(binding.node.clone()).or_default().insert(allocation.id);
            let charge = self.charge_of(&allocation);
            self.team_usage.entry(allocation.request.team.clone()).or_default().add(&charge);
            self.live_by_team.entry(allocation.request.team.clone()).or_default().insert(allocation.id);
            self.charges.insert(allocation.id, charge);
        }
        if allocation.state.holds_capacity() && allocation.quota.reclaim_at_ms.is_some() {
            self.reclaiming.insert(allocation.id);
        } else {
            self.reclaiming.remove(&allocation.id);
        }
        if allocation.state == AllocationState::Pending {
            self.queue.insert(allocation.id);
        } else {
            self.queue.remove(&allocation.id);
            self.queue_info.remove(&allocation.id);
        }
        self.allocations.insert(allocation.id, allocation);
    }

    /// What an allocation adds to the usage history's levels now: GPUs held (by
    /// team and model, borrowed or not) or waited for.
    pub fn usage_contribution(&self, allocation: &Allocation) -> allot_history::Contribution {
        use allot_history::Contribution;
        let team = allocation.request.team.to_string();
        if allocation.state.holds_capacity()
            && let Some(binding) = &allocation.binding
        {
            let milli_gpu = self.charge_of(allocation).get(&allot_policy::ResourceClass::GpuAny);
            if milli_gpu == 0 {
                return Contribution::Nothing;
            }
            let model = binding
                .gpus
                .first()
                .and_then(|gpu| {
                    self.nodes.get(&binding.node)?.record.inventory.gpus.iter().find(|g| g.index == gpu.index)
                })
                .map(|gpu| gpu.model.clone())
                .unwrap_or_default();
            return Contribution::Holds { team, model, milli_gpu, borrowed: allocation.quota.borrowed };
        }
        if allocation.state == AllocationState::Pending {
            let milli_gpu = gpus_asked(&allocation.request);
            if milli_gpu > 0 {
                return Contribution::Waits { team, milli_gpu };
            }
        }
        Contribution::Nothing
    }

    /// Tells the usage history about one allocation's change: its levels, and
    /// the arrival, grant (with its wait), reclaim or preemption it is.
    fn record_usage(&mut self, allocation: &Allocation) {
        use allot_history::Event;
        let previous = self.allocations.get(&allocation.id);
        let at = allocation.updated_at_ms;
        let before = previous.map(|previous| self.usage_contribution(previous)).unwrap_or_default();
        let after = self.usage_contribution(allocation);
        let mut events = Vec::new();
        let was = previous.map(|previous| previous.state);
        if previous.is_none() {
            let asked = gpus_asked(&allocation.request);
            events.push(Event::Arrived { milli_gpu: u32::try_from(asked).unwrap_or(u32::MAX) });
        }
        if allocation.state.holds_capacity() && matches!(was, None | Some(AllocationState::Pending)) {
            events.push(Event::Granted { wait_ms: at.saturating_sub(allocation.created_at_ms) });
        }
        if allocation.quota.reclaim_at_ms.is_some()
            && previous.is_some_and(|previous| previous.quota.reclaim_at_ms.is_none())
        {
            events.push(Event::Reclaimed);
        }
        if allocation.state == AllocationState::Preempted && was != Some(AllocationState::Preempted) {
            events.push(Event::Preempted);
        }
        self.usage.change(at, &before, &after);
        let team = allocation.request.team.as_str();
        for event in events {
            self.usage.event(at, team, event);
        }
    }

    /// Forgets a finished allocation (see `retention`). An allocation that is not
    /// finished is never removed: the answer is then `None` and nothing changes.
    pub fn remove_finished(&mut self, id: AllocationId) -> Option<Allocation> {
        let allocation = self.allocations.get(&id)?;
        if !is_finished(allocation.state) {
            return None;
        }
        // A finished allocation holds no capacity and waits in no queue, so
        // `put_allocation` keeps it in no other index.
        self.finished.remove(&(allocation.updated_at_ms, id));
        if let Some(key) = &allocation.request.request_id {
            self.by_request_id.remove(&(allocation.request.team.clone(), key.clone()));
        }
        self.node_reports.remove(&id);
        self.allocations.remove(&id)
    }

    /// What an allocation is charged against its team's quota: GPU units (and its
    /// GPU family, once placed), cores and memory.
    pub fn charge_of(&self, allocation: &Allocation) -> Resources {
        let model = allocation.binding.as_ref().and_then(|binding| {
            let gpu = binding.gpus.first()?;
            let entry = self.nodes.get(&binding.node)?;
            entry.record.inventory.gpus.iter().find(|candidate| candidate.index == gpu.index).map(|g| g.model.clone())
        });
        let request = &allocation.request;
        allot_policy::charge(&request.gpus, request.cpus, request.memory.0, model.as_deref())
    }

    /// The allocations that hold capacity, each with what it is charged (kept up
    /// to date by `put_allocation`, so a scheduling round need not recompute
    /// them), in id order.
    pub fn live_charges(&self) -> impl Iterator<Item = (&Allocation, &Resources)> {
        self.charges.iter().filter_map(|(id, charge)| self.allocations.get(id).map(|allocation| (allocation, charge)))
    }

    /// A team's allocations that hold capacity, with their charges.
    pub fn live_of_team(&self, team: &TeamName) -> impl Iterator<Item = (&Allocation, &Resources)> {
        self.live_by_team
            .get(team)
            .into_iter()
            .flatten()
            .filter_map(|id| Some((self.allocations.get(id)?, self.charges.get(id)?)))
    }

    /// What an allocation that holds capacity is charged.
    pub fn charge(&self, id: AllocationId) -> Option<&Resources> {
        self.charges.get(&id)
    }

    /// Allocations being reclaimed.
    pub fn reclaiming(&self) -> impl Iterator<Item = &Allocation> {
        self.reclaiming.iter().filter_map(|id| self.allocations.get(id))
    }

    /// Rebuilds the quota tree from the team records, keeping the GPU values.
    pub fn rebuild_tree(
        &mut self,
        gpu_values: std::collections::BTreeMap<String, u32>,
    ) -> Result<(), Vec<allot_policy::QuotaError>> {
        let specs = self.teams.values().map(TeamRecord::spec).collect();
        self.tree = QuotaTree::new(specs, gpu_values, &self.gpu_families())?;
        Ok(())
    }

    /// What the ready nodes have: GPUs (whole, in milli-GPU, also per family),
    /// cores and memory.
    pub fn recompute_capacity(&mut self) {
        use allot_policy::ResourceClass;
        let mut capacity = Resources::default();
        for entry in self.nodes.values().filter(|entry| entry.status == NodeStatus::Ready) {
            let inventory = &entry.record.inventory;
            let mut node = std::collections::BTreeMap::new();
            for gpu in &inventory.gpus {
                *node.entry(ResourceClass::GpuAny).or_insert(0) += 1000;
                *node.entry(ResourceClass::gpu_family(&allot_policy::gpu_family(&gpu.model))).or_insert(0) += 1000;
            }
            node.insert(ResourceClass::Cpu, inventory.cpu.cores.len() as u64 * 1000);
            node.insert(ResourceClass::Memory, inventory.cpu.numa_nodes.iter().map(|numa| numa.memory_mib.0).sum());
            capacity.add(&Resources(node));
        }
        self.capacity = capacity;
    }

    /// The GPU families the cluster has, which quotas may name.
    pub fn gpu_families(&self) -> BTreeSet<String> {
        self.nodes
            .values()
            .flat_map(|entry| entry.record.inventory.gpus.iter().map(|gpu| allot_policy::gpu_family(&gpu.model)))
            .collect()
    }

    /// Recomputes a node's usage from the allocations that hold capacity on it.
    pub fn recompute_usage(&mut self, node: &NodeName) {
        let usage = match self.live_by_node.get(node) {
            Some(live) => NodeUsage::from_bindings(
                live.iter()
                    .filter_map(|id| self.allocations.get(id))
                    .filter_map(|allocation| allocation.binding.as_ref()),
            ),
            None => NodeUsage::default(),
        };
        if let Some(mut entry) = self.node_mut(node) {
            entry.usage = usage;
        }
    }

    /// Rebuilds the per-node index and every node's usage (after loading).
    pub fn recompute_all_usage(&mut self) {
        self.live_by_node.clear();
        self.team_usage.clear();
        self.charges.clear();
        self.live_by_team.clear();
        self.queue.clear();
        self.reclaiming.clear();
        self.finished.clear();
        self.by_request_id.clear();
        let mut charged = Vec::new();
        for allocation in self.allocations.values() {
            if let Some(key) = &allocation.request.request_id {
                self.by_request_id.insert((allocation.request.team.clone(), key.clone()), allocation.id);
            }
            if allocation.state == AllocationState::Pending {
                self.queue.insert(allocation.id);
            }
            if is_finished(allocation.state) {
                self.finished.insert((allocation.updated_at_ms, allocation.id));
            }
            if !allocation.state.holds_capacity() {
                continue;
            }
            if allocation.quota.reclaim_at_ms.is_some() {
                self.reclaiming.insert(allocation.id);
            }
            if let Some(binding) = &allocation.binding {
                self.live_by_node.entry(binding.node.clone()).or_default().insert(allocation.id);
                charged.push((allocation.id, allocation.request.team.clone(), self.charge_of(allocation)));
            }
        }
        for (id, team, charge) in charged {
            self.team_usage.entry(team.clone()).or_default().add(&charge);
            self.live_by_team.entry(team).or_default().insert(id);
            self.charges.insert(id, charge);
        }
        self.recompute_capacity();
        let names: Vec<NodeName> = self.nodes.keys().cloned().collect();
        for name in names {
            self.recompute_usage(&name);
        }
    }

    /// The nodes as placement sees them.
    pub fn node_views(&self) -> Vec<NodeView<'_>> {
        self.nodes
            .iter()
            .map(|(name, entry)| NodeView {
                name,
                inventory: &entry.record.inventory,
                status: entry.status,
                usage: &entry.usage,
            })
            .collect()
    }

    /// The nodes placement must look at: one node of each group of identical
    /// nodes (same placement shape, status and usage; the first by name), which
    /// decides exactly as over all nodes: the others score the same and lose the
    /// tie on name. Also returns how many twins each stands for (when any).
    pub fn distinct_node_views(&self) -> (Vec<NodeView<'_>>, BTreeMap<&NodeName, usize>) {
        let mut twins: BTreeMap<&NodeName, usize> = BTreeMap::new();
        let mut views = Vec::new();
        for representative in self.index.representatives() {
            let Some((name, entry)) = self.nodes.get_key_value(&representative.name) else { continue };
            if representative.twins > 0 {
                twins.insert(name, representative.twins);
            }
            views.push(NodeView {
                name,
                inventory: &entry.record.inventory,
                status: entry.status,
                usage: &entry.usage,
            });
        }
        (views, twins)
    }

    /// The allocation a team's request id made, if it is still kept.
    pub fn by_request_id(&self, team: &TeamName, request_id: &str) -> Option<&Allocation> {
        let id = self.by_request_id.get(&(team.clone(), request_id.to_owned()))?;
        self.allocations.get(id)
    }

    /// Every node, by name.
    pub fn nodes(&self) -> &BTreeMap<NodeName, NodeEntry> {
        &self.nodes
    }

    /// Adds or replaces a node.
    pub fn insert_node(&mut self, entry: NodeEntry) {
        let name = entry.record.name.clone();
        self.index.update(&name, entry.shape, entry.status, &entry.usage);
        self.nodes.insert(name, entry);
    }

    /// A node to change; the placement index follows when the guard drops.
    pub fn node_mut(&mut self, name: &NodeName) -> Option<NodeMut<'_>> {
        let entry = self.nodes.get_mut(name)?;
        Some(NodeMut { name: name.clone(), entry, index: &mut self.index })
    }

    /// Places an unpinned request through the placement index: the decision the
    /// exhaustive engine would make over every node, with a short explanation.
    /// `None` when nothing can take it now, or the index does not decide it (see
    /// [`allot_placement::PlacementIndex::place`]).
    pub fn place_indexed(&mut self, request: &ValidatedRequest) -> Option<allot_placement::Decision> {
        let Self { index, nodes, .. } = self;
        index.place(request, |name| {
            nodes.get_key_value(name).map(|(name, entry)| NodeView {
                name,
                inventory: &entry.record.inventory,
                status: entry.status,
                usage: &entry.usage,
            })
        })
    }

    /// Whether the placement index agrees with every node (for tests).
    pub fn index_agrees(&self) -> bool {
        self.index.len() == self.nodes.len()
            && self.nodes.iter().all(|(name, entry)| self.index.agrees(name, entry.shape, entry.status, &entry.usage))
    }

    /// Allocations on a node that hold capacity, as the node should see them.
    pub fn live_on(&self, node: &NodeName) -> Vec<Allocation> {
        self.live_refs_on(node).cloned().collect()
    }

    /// [`ClusterState::live_on`] without copies.
    pub fn live_refs_on(&self, node: &NodeName) -> impl Iterator<Item = &Allocation> {
        self.live_by_node.get(node).into_iter().flatten().filter_map(|id| self.allocations.get(id))
    }

    /// How many allocations hold capacity, over all nodes.
    pub fn live_count_total(&self) -> usize {
        self.charges.len()
    }

    /// How many allocations hold capacity on a node.
    pub fn live_count(&self, node: &NodeName) -> usize {
        self.live_by_node.get(node).map_or(0, BTreeSet::len)
    }

    /// Keeps the traceparent an allocation was created under (at most 10,000).
    pub fn remember_trace(&mut self, id: AllocationId, traceparent: String) {
        const KEPT: usize = 10_000;
        self.traces.insert(id, traceparent);
        while self.traces.len() > KEPT {
            self.traces.pop_first();
        }
    }

    /// The traceparent an allocation was created under, if it was traced.
    pub fn trace_of(&self, id: AllocationId) -> Option<&str> {
        self.traces.get(&id).map(String::as_str)
    }

    pub fn count_in_state(&self, state: AllocationState) -> usize {
        self.allocations.values().filter(|allocation| allocation.state == state).count()
    }
}
