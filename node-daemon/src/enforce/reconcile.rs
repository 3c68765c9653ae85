//! Reconcile planning: desired state (the broker's live allocations for this
//! node) against what exists (cgroups, MIG instances) and what this node
//! recorded, to a list of repairs. Pure, so the rules are a table of cases.
//!
//! The rules:
//! - an allocation recorded here but not desired is released: its cgroup is
//!   removed (ending its processes), the MIG instances Allot created for it are
//!   destroyed, its record dropped;
//! - a cgroup under the parent whose allocation is neither desired nor recorded
//!   (a crash between creating it and recording it) is removed;
//! - a desired allocation that is not recorded, not complete, or whose cgroup
//!   is gone is applied (again);
//! - a desired allocation whose recorded MIG instance has vanished is reported,
//!   not silently re-created: the work using it has lost its device;
//! - MIG instances nobody recorded (an administrator's) are never touched here,
//!   and nothing recorded for a desired allocation is ever destroyed.

use std::collections::{BTreeMap, BTreeSet};

use allot_api::allocation::AllocationId;

use super::mig::RecordedMig;
use super::state::NodeState;

/// What exists now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// Allocations with a cgroup under the parent (complete or not).
    pub cgroups: BTreeSet<AllocationId>,
    /// MIG GPU instances that exist: (GPU index, GPU instance id, profile id, start).
    pub mig: BTreeSet<(u32, u32, u32, u32)>,
    /// Whether MIG could be observed at all (no NVML: nothing is said about MIG).
    pub mig_known: bool,
}

/// One repair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Destroy a MIG instance Allot created for an allocation that is over.
    DestroyMig {
        allocation: AllocationId,
        gpu: u32,
        gpu_instance_id: u32,
    },
    RemoveCgroup {
        allocation: AllocationId,
    },
    Forget {
        allocation: AllocationId,
    },
    Apply {
        allocation: AllocationId,
    },
    /// A live allocation's MIG instance is gone.
    ReportVanished {
        allocation: AllocationId,
        mig: RecordedMig,
    },
}

fn exists(observed: &Observed, mig: &RecordedMig) -> bool {
    observed.mig.contains(&(mig.gpu_index, mig.gpu_instance_id, mig.profile_id, mig.start))
}

/// The repairs that move `observed` toward `desired` (allocation id → generation).
pub fn plan(desired: &BTreeMap<AllocationId, u64>, recorded: &NodeState, observed: &Observed) -> Vec<Action> {
    let mut actions = Vec::new();
    for (id, enforced) in &recorded.allocations {
        if desired.contains_key(id) {
            continue;
        }
        // The cgroup first: removing it ends the allocation's processes, and a
        // GPU refuses to destroy an instance that processes still use.
        if observed.cgroups.contains(id) || enforced.cgroup.is_some() {
            actions.push(Action::RemoveCgroup { allocation: *id });
        }
        for mig in enforced.mig.iter().filter(|mig| mig.created) {
            if !observed.mig_known || exists(observed, mig) {
                actions.push(Action::DestroyMig {
                    allocation: *id,
                    gpu: mig.gpu_index,
                    gpu_instance_id: mig.gpu_instance_id,
                });
            }
        }
        actions.push(Action::Forget { allocation: *id });
    }
    for id in &observed.cgroups {
        if !desired.contains_key(id) && !recorded.allocations.contains_key(id) {
            actions.push(Action::RemoveCgroup { allocation: *id });
        }
    }
    for id in desired.keys() {
        match recorded.allocations.get(id) {
            Some(enforced) if enforced.complete && observed.cgroups.contains(id) => {
                if observed.mig_known {
                    for mig in enforced.mig.iter().filter(|mig| !exists(observed, mig)) {
                        actions.push(Action::ReportVanished { allocation: *id, mig: mig.clone() });
                    }
                }
            }
            _ => actions.push(Action::Apply { allocation: *id }),
        }
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::super::state::EnforcedAllocation;
    use super::*;

    fn id(n: u64) -> AllocationId {
        AllocationId::from_u64(n)
    }

    fn mig(gpu: u32, gi: u32, created: bool) -> RecordedMig {
        RecordedMig {
            gpu_index: gpu,
            gpu_uuid: None,
            profile: "3g.40gb".into(),
            profile_id: 9,
            start: 0,
            size: 4,
            gpu_instance_id: gi,
            uuid: Some("MIG-x".into()),
            created,
        }
    }

    fn record(migs: Vec<RecordedMig>, complete: bool) -> EnforcedAllocation {
        EnforcedAllocation { generation: 1, cgroup: None, mig: migs, environment: BTreeMap::new(), complete }
    }

    /// One case: desired ids, recorded (id, record), cgroups present, MIG
    /// instances present (gpu, gi), and the expected actions.
    fn check(
        desired: &[u64],
        recorded: Vec<(u64, EnforcedAllocation)>,
        cgroups: &[u64],
        instances: &[(u32, u32)],
        expected: Vec<Action>,
    ) {
        let desired = desired.iter().map(|n| (id(*n), 1)).collect();
        let state = NodeState {
            node: "n".into(),
            allocations: recorded.into_iter().map(|(n, record)| (id(n), record)).collect(),
        };
        let observed = Observed {
            cgroups: cgroups.iter().map(|n| id(*n)).collect(),
            mig: instances.iter().map(|(gpu, gi)| (*gpu, *gi, 9, 0)).collect(),
            mig_known: true,
        };
        assert_eq!(plan(&desired, &state, &observed), expected);
    }

    #[test]
    fn nothing_to_do_when_everything_matches() {
        check(&[1], vec![(1, record(vec![mig(0, 1, true)], true))], &[1], &[(0, 1)], vec![]);
    }

    #[test]
    fn a_released_allocation_loses_its_created_instances_and_cgroup() {
        check(
            &[],
            vec![(1, record(vec![mig(0, 1, true)], true))],
            &[1],
            &[(0, 1)],
            vec![
                Action::RemoveCgroup { allocation: id(1) },
                Action::DestroyMig { allocation: id(1), gpu: 0, gpu_instance_id: 1 },
                Action::Forget { allocation: id(1) },
            ],
        );
    }

    #[test]
    fn an_adopted_instance_is_left_in_place_on_release() {
        check(
            &[],
            vec![(1, record(vec![mig(0, 1, false)], true))],
            &[],
            &[(0, 1)],
            vec![Action::Forget { allocation: id(1) }],
        );
    }

    #[test]
    fn an_unrecorded_cgroup_of_a_dead_allocation_is_removed() {
        check(&[], vec![], &[4], &[], vec![Action::RemoveCgroup { allocation: id(4) }]);
    }

    #[test]
    fn administrators_instances_are_never_touched() {
        check(&[], vec![], &[], &[(0, 1), (3, 7)], vec![]);
    }

    #[test]
    fn a_desired_allocation_that_is_missing_or_incomplete_is_applied() {
        check(&[1], vec![], &[], &[], vec![Action::Apply { allocation: id(1) }]);
        check(&[1], vec![(1, record(vec![], false))], &[1], &[], vec![Action::Apply { allocation: id(1) }]);
        check(&[1], vec![(1, record(vec![], true))], &[], &[], vec![Action::Apply { allocation: id(1) }]);
    }

    #[test]
    fn a_vanished_instance_of_a_live_allocation_is_reported_not_destroyed() {
        check(
            &[1],
            vec![(1, record(vec![mig(0, 1, true)], true))],
            &[1],
            &[],
            vec![Action::ReportVanished { allocation: id(1), mig: mig(0, 1, true) }],
        );
    }

    #[test]
    fn live_allocations_are_never_destroyed_whatever_else_happens() {
        // Two live, one dead sharing a GPU: only the dead one's instance goes.
        let actions = {
            let desired: BTreeMap<_, _> = [(id(1), 1), (id(2), 1)].into_iter().collect();
            let state = NodeState {
                node: "n".into(),
                allocations: [
                    (id(1), record(vec![mig(0, 1, true)], true)),
                    (id(2), record(vec![mig(0, 2, true)], false)),
                    (id(3), record(vec![mig(0, 3, true)], true)),
                ]
                .into_iter()
                .collect(),
            };
            let observed = Observed {
                cgroups: [id(1), id(2), id(3)].into_iter().collect(),
                mig: [(0, 1, 9, 0), (0, 2, 9, 0), (0, 3, 9, 0)].into_iter().collect(),
                mig_known: true,
            };
            plan(&desired, &state, &observed)
        };
        for action in &actions {
            match action {
                Action::DestroyMig { allocation, .. }
                | Action::RemoveCgroup { allocation }
                | Action::Forget { allocation } => {
                    assert_eq!(*allocation, id(3), "{actions:?}")
                }
                _ => {}
            }
        }
        assert!(actions.contains(&Action::Apply { allocation: id(2) }), "{actions:?}");
    }
}
