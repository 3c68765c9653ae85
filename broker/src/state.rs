//! The broker's in-memory view of the cluster, rebuilt from the store at start.
//!
//! The store holds the minimum (node registrations, teams, allocations, the id
//! counter); liveness and telemetry come from heartbeats and live only here.

use std::collections::{BTreeMap, BTreeSet};

use allot_api::allocation::{Allocation, AllocationId, AllocationState, NodeName, TeamName};
use allot_api::topology::NodeInventory;
use allot_placement::{NodeStatus, NodeUsage, NodeView};
use serde::{Deserialize, Serialize};

/// A node's registration, as persisted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub name: NodeName,
    pub inventory: NodeInventory,
    /// Incremented on every registration of this name.
    pub epoch: u64,
    pub registered_at_ms: u64,
}

/// A team, as persisted (quotas arrive with the policy work).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TeamRecord {
    pub name: TeamName,
    pub created_at_ms: u64,
}

/// A node as the broker sees it now.
#[derive(Debug, Clone)]
pub struct NodeEntry {
    pub record: NodeRecord,
    pub status: NodeStatus,
    pub last_heartbeat_ms: u64,
    /// Capacity held by allocations on this node, derived from them.
    pub usage: NodeUsage,
}

/// Everything the broker knows.
#[derive(Debug, Default)]
pub struct ClusterState {
    pub nodes: BTreeMap<NodeName, NodeEntry>,
    pub allocations: BTreeMap<AllocationId, Allocation>,
    pub teams: BTreeSet<TeamName>,
    /// The next allocation id to hand out.
    pub next_id: u64,
    /// The node's last word on each allocation (not persisted).
    pub node_reports: BTreeMap<AllocationId, String>,
    /// Allocations holding capacity, by node: keeps per-node work proportional to
    /// the node's own allocations, not to the history of the cluster.
    live_by_node: BTreeMap<NodeName, BTreeSet<AllocationId>>,
}

impl ClusterState {
    /// Inserts or replaces an allocation, keeping the per-node index right.
    pub fn put_allocation(&mut self, allocation: Allocation) {
        if let Some(previous) = self.allocations.get(&allocation.id)
            && let Some(binding) = &previous.binding
            && let Some(live) = self.live_by_node.get_mut(&binding.node)
        {
            live.remove(&previous.id);
        }
        if allocation.state.holds_capacity()
            && let Some(binding) = &allocation.binding
        {
            self.live_by_node.entry(binding.node.clone()).or_default().insert(allocation.id);
        }
        self.allocations.insert(allocation.id, allocation);
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
        if let Some(entry) = self.nodes.get_mut(node) {
            entry.usage = usage;
        }
    }

    /// Rebuilds the per-node index and every node's usage (after loading).
    pub fn recompute_all_usage(&mut self) {
        self.live_by_node.clear();
        for allocation in self.allocations.values().filter(|allocation| allocation.state.holds_capacity()) {
            if let Some(binding) = &allocation.binding {
                self.live_by_node.entry(binding.node.clone()).or_default().insert(allocation.id);
            }
        }
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

    /// Allocations on a node that hold capacity, as the node should see them.
    pub fn live_on(&self, node: &NodeName) -> Vec<Allocation> {
        self.live_by_node
            .get(node)
            .map(|live| live.iter().filter_map(|id| self.allocations.get(id)).cloned().collect())
            .unwrap_or_default()
    }

    /// How many allocations hold capacity on a node.
    pub fn live_count(&self, node: &NodeName) -> usize {
        self.live_by_node.get(node).map_or(0, BTreeSet::len)
    }

    pub fn count_in_state(&self, state: AllocationState) -> usize {
        self.allocations.values().filter(|allocation| allocation.state == state).count()
    }
}
