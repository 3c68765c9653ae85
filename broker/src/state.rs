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
}

impl ClusterState {
    /// Recomputes a node's usage from the allocations that hold capacity on it.
    pub fn recompute_usage(&mut self, node: &NodeName) {
        let bindings: Vec<_> = self
            .allocations
            .values()
            .filter(|allocation| allocation.state.holds_capacity())
            .filter_map(|allocation| allocation.binding.as_ref())
            .filter(|binding| &binding.node == node)
            .cloned()
            .collect();
        if let Some(entry) = self.nodes.get_mut(node) {
            entry.usage = NodeUsage::from_bindings(bindings.iter());
        }
    }

    pub fn recompute_all_usage(&mut self) {
        let mut by_node: BTreeMap<NodeName, Vec<allot_api::allocation::Binding>> = BTreeMap::new();
        for allocation in self.allocations.values().filter(|allocation| allocation.state.holds_capacity()) {
            if let Some(binding) = &allocation.binding {
                by_node.entry(binding.node.clone()).or_default().push(binding.clone());
            }
        }
        for (name, entry) in &mut self.nodes {
            let bindings = by_node.remove(name).unwrap_or_default();
            entry.usage = NodeUsage::from_bindings(bindings.iter());
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
        self.allocations
            .values()
            .filter(|allocation| allocation.state.holds_capacity())
            .filter(|allocation| allocation.binding.as_ref().is_some_and(|binding| &binding.node == node))
            .cloned()
            .collect()
    }

    pub fn count_in_state(&self, state: AllocationState) -> usize {
        self.allocations.values().filter(|allocation| allocation.state == state).count()
    }
}
