//! What the node knows, published for the parts of allot-node that serve other
//! schedulers (the kubelet's device plugin): the inventory with health as of the
//! last discovery, the broker's live allocations on this node, and the
//! environment enforcement built for each. A `watch` channel: readers see the
//! latest state and wake when it changes.

use std::collections::BTreeMap;

use allot_api::allocation::{Allocation, AllocationId};
use allot_api::topology::NodeInventory;
use allot_device_plugin::NodeSnapshot;
use tokio::sync::watch;

use crate::enforce::Enforcer;

/// The sending side; cheap to clone. Without receivers it still keeps the state.
#[derive(Debug, Clone)]
pub struct Publisher {
    sender: watch::Sender<NodeSnapshot>,
}

impl Publisher {
    pub fn new() -> (Publisher, watch::Receiver<NodeSnapshot>) {
        let (sender, receiver) = watch::channel(NodeSnapshot::default());
        (Publisher { sender }, receiver)
    }

    pub fn inventory(&self, inventory: &NodeInventory) {
        self.sender.send_if_modified(|snapshot| {
            let changed = snapshot.inventory.as_ref() != Some(inventory);
            if changed {
                snapshot.inventory = Some(inventory.clone());
            }
            changed
        });
    }

    /// The live allocations and what enforcement made of them.
    pub fn allocations(&self, live: &BTreeMap<AllocationId, Allocation>, enforcer: Option<&Enforcer>) {
        let environments: BTreeMap<AllocationId, BTreeMap<String, String>> = enforcer
            .map(|enforcer| {
                enforcer
                    .state()
                    .allocations
                    .iter()
                    .filter(|(id, enforced)| enforced.complete && live.contains_key(id))
                    .map(|(id, enforced)| (*id, enforced.environment.clone()))
                    .collect()
            })
            .unwrap_or_default();
        self.sender.send_if_modified(|snapshot| {
            let changed = snapshot.allocations != *live || snapshot.environments != environments;
            if changed {
                snapshot.allocations = live.clone();
                snapshot.environments = environments;
            }
            changed
        });
    }
}
