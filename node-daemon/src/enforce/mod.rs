//! Enforcement: makes this node do what the broker decided. For each allocation
//! a cgroup (cpuset, memory, pids), the MIG instances it was granted, and the
//! environment its processes get; on release all of it goes again. Reconcile
//! compares the broker's live allocations with what exists and repairs.
//!
//! Each external system sits behind a narrow trait: [`cgroup::CgroupDriver`]
//! (cgroups-rs, v1 or v2, its root a parameter) and [`mig::MigDriver`] (NVML,
//! implemented in `discovery/nvml/control.rs`). Everything is recorded in a
//! state file ([`state::NodeState`]) so a restarted daemon and `allot-node exec`
//! know what belongs to which allocation.

pub mod cgroup;
pub mod env;
pub mod health;
pub mod mig;
pub mod reconcile;
pub mod state;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use allot_api::allocation::{Allocation, AllocationId};
use allot_api::units::CpuSet;

use cgroup::{CgroupDriver, CgroupError, CgroupSpec};
use env::EnvError;
use mig::{MigDriver, MigError, RecordedMig};
use reconcile::{Action, Observed};
use state::{EnforcedAllocation, NodeState, StateError};

/// Why an allocation could not be enforced or released. Each names the
/// allocation's problem the way the broker and the user see it.
#[derive(Debug, thiserror::Error)]
pub enum EnforceError {
    #[error("E-NOT-THIS-NODE: allocation {allocation} is bound to node {bound}, not to this node ({node})")]
    NotThisNode { allocation: AllocationId, bound: String, node: String },
    #[error("E-UNBOUND: allocation {allocation} has no placement yet")]
    Unbound { allocation: AllocationId },
    #[error("{0}")]
    Cgroup(#[from] CgroupError),
    #[error("E-MIG: {0}")]
    Mig(#[from] MigError),
    #[error("E-NO-NVML: allocation {allocation} holds a MIG instance but this node has no NVML library")]
    NoNvml { allocation: AllocationId },
    #[error("E-ENV: {0}")]
    Env(#[from] EnvError),
    #[error("{0}")]
    State(#[from] StateError),
}

/// What the node tells the broker about an allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub allocation: AllocationId,
    pub generation: u64,
    pub applied: bool,
    pub message: String,
}

/// Applies and releases allocations on this node.
#[derive(Debug)]
pub struct Enforcer {
    node: String,
    cgroups: Box<dyn CgroupDriver>,
    mig: Option<Box<dyn MigDriver>>,
    state_dir: PathBuf,
    state: NodeState,
    pids_max: u64,
}

impl Enforcer {
    /// Loads what this node enforced before. A state file of another node is refused.
    pub fn new(
        node: &str,
        cgroups: Box<dyn CgroupDriver>,
        mig: Option<Box<dyn MigDriver>>,
        state_dir: &Path,
        pids_max: u64,
    ) -> Result<Enforcer, EnforceError> {
        let mut state = NodeState::load(state_dir)?;
        if state.node.is_empty() {
            state.node = node.to_owned();
        } else if state.node != node {
            return Err(EnforceError::State(StateError::Io {
                action: "use",
                path: NodeState::path(state_dir),
                problem: format!("it belongs to node {}, not {node}; give each node its own --state-dir", state.node),
            }));
        }
        Ok(Enforcer { node: node.to_owned(), cgroups, mig, state_dir: state_dir.to_owned(), state, pids_max })
    }

    pub fn state(&self) -> &NodeState {
        &self.state
    }

    pub fn cgroup_driver(&self) -> &dyn CgroupDriver {
        self.cgroups.as_ref()
    }

    fn save(&self) -> Result<(), StateError> {
        self.state.save(&self.state_dir)
    }

    fn spec(&self, allocation: &Allocation) -> Result<CgroupSpec, EnforceError> {
        let binding = allocation.binding.as_ref().ok_or(EnforceError::Unbound { allocation: allocation.id })?;
        if binding.node.as_str() != self.node {
            return Err(EnforceError::NotThisNode {
                allocation: allocation.id,
                bound: binding.node.to_string(),
                node: self.node.clone(),
            });
        }
        Ok(CgroupSpec {
            allocation: allocation.id,
            cpus: CpuSet::new(binding.cpus.clone()),
            mems: CpuSet::new(binding.numa_nodes.clone()),
            memory_bytes: (binding.memory.0 > 0).then(|| binding.memory.0.saturating_mul(1024 * 1024)),
            pids_max: self.pids_max,
        })
    }

    /// Whether the allocation is enforced as recorded and its cgroup exists:
    /// then applying it again changes nothing.
    pub fn is_enforced(&self, allocation: &Allocation) -> bool {
        self.state.allocations.get(&allocation.id).is_some_and(|enforced| enforced.complete)
            && self.cgroups.exists(allocation.id)
    }

    /// Enforces an allocation (again): its cgroup, its MIG instances, its
    /// environment. On error nothing this call created is left, and the
    /// previous record (if any) is kept.
    pub fn apply(&mut self, allocation: &Allocation) -> Result<String, EnforceError> {
        let spec = self.spec(allocation)?;
        let id = allocation.id;
        let previous = self.state.allocations.get(&id).cloned();
        let cgroup_existed = self.cgroups.exists(id);
        let applied = self.cgroups.apply(&spec)?;
        let mut entry = EnforcedAllocation {
            generation: allocation.generation,
            cgroup: Some(applied.clone()),
            mig: previous.as_ref().map(|previous| previous.mig.clone()).unwrap_or_default(),
            environment: BTreeMap::new(),
            complete: false,
        };
        self.state.allocations.insert(id, entry.clone());
        let mut created: Vec<RecordedMig> = Vec::new();
        let result = self.apply_mig(allocation, &mut entry, &mut created).and_then(|()| {
            entry.environment = env::environment(allocation, &entry.mig)?;
            entry.complete = true;
            self.state.allocations.insert(id, entry.clone());
            self.save()?;
            Ok(())
        });
        if let Err(error) = result {
            // Roll back what this call made: its MIG instances, a new cgroup, the record.
            let mut left = Vec::new();
            if !cgroup_existed && let Err(undo) = self.cgroups.remove(id) {
                left.push(undo.to_string());
            }
            if let Some(driver) = self.mig.as_deref() {
                for mig in &created {
                    if let Err(undo) = driver.destroy(mig.gpu_index, mig.gpu_instance_id) {
                        left.push(undo.to_string());
                    }
                }
            }
            match previous {
                Some(previous) => self.state.allocations.insert(id, previous),
                None => self.state.allocations.remove(&id),
            };
            if let Err(undo) = self.save() {
                left.push(undo.to_string());
            }
            if !left.is_empty() {
                tracing::error!(allocation = %id, left = ?left, "rollback incomplete; reconcile will retry");
            }
            return Err(error);
        }
        let mut message = format!(
            "enforced generation {}: cgroup {} ({}: cpus {}, mems {}, memory {}, pids {})",
            allocation.generation,
            applied.name,
            applied.version,
            if spec.cpus.is_empty() { "inherited".to_owned() } else { spec.cpus.to_string() },
            if spec.mems.is_empty() { "inherited".to_owned() } else { spec.mems.to_string() },
            spec.memory_bytes.map_or("unlimited".to_owned(), |bytes| format!("{} MiB", bytes / (1024 * 1024))),
            spec.pids_max,
        );
        for mig in &entry.mig {
            message.push_str(&format!(
                "; MIG {} at slot {} on GPU {} ({}): {}",
                mig.profile,
                mig.start,
                mig.gpu_index,
                if mig.created { "created" } else { "adopted" },
                mig.uuid.as_deref().unwrap_or("no device UUID")
            ));
        }
        Ok(message)
    }

    fn apply_mig(
        &mut self,
        allocation: &Allocation,
        entry: &mut EnforcedAllocation,
        created: &mut Vec<RecordedMig>,
    ) -> Result<(), EnforceError> {
        let Some(binding) = &allocation.binding else { return Ok(()) };
        let grants: Vec<_> = binding.gpus.iter().filter_map(|gpu| Some((gpu, gpu.mig.as_ref()?))).collect();
        if grants.is_empty() {
            return Ok(());
        }
        let driver = self.mig.as_deref().ok_or(EnforceError::NoNvml { allocation: allocation.id })?;
        let observed = driver.observe()?;
        for (gpu, grant) in grants {
            let present = entry.mig.iter().any(|mig| {
                mig.gpu_index == gpu.index
                    && mig.profile_id == grant.profile_id
                    && mig.start == grant.start
                    && observed.iter().any(|view| {
                        view.index == gpu.index
                            && view.instances.iter().any(|instance| instance.gpu_instance_id == mig.gpu_instance_id)
                    })
            });
            if present {
                continue;
            }
            entry.mig.retain(|mig| mig.gpu_index != gpu.index);
            let held: Vec<_> =
                self.state.held_instances().into_iter().filter(|(_, _, owner)| *owner != allocation.id).collect();
            let state = &mut self.state;
            let state_dir = &self.state_dir;
            let id = allocation.id;
            // Record each creation at once, so a crash right after leaves it
            // known (to reconcile) rather than an anonymous instance.
            let mut on_created = |recorded: &RecordedMig| {
                if let Some(record) = state.allocations.get_mut(&id) {
                    record.mig.push(recorded.clone());
                }
                if let Err(error) = state.save(state_dir) {
                    tracing::warn!(%error, "cannot record a new MIG instance");
                }
            };
            let recorded = mig::ensure(driver, gpu, grant, &held, &mut on_created)?;
            if recorded.created {
                created.push(recorded.clone());
            }
            entry.mig.push(recorded);
        }
        Ok(())
    }

    /// Releases an allocation: ends its processes and removes its cgroup, then
    /// destroys the MIG instances Allot created for it. Adopted instances stay.
    pub fn release(&mut self, allocation: AllocationId) -> Result<String, EnforceError> {
        let entry = self.state.allocations.get(&allocation).cloned();
        self.cgroups.remove(allocation)?;
        let mut destroyed = Vec::new();
        if let Some(entry) = &entry {
            for mig in entry.mig.iter().filter(|mig| mig.created) {
                let driver = self.mig.as_deref().ok_or(EnforceError::NoNvml { allocation })?;
                driver.destroy(mig.gpu_index, mig.gpu_instance_id)?;
                destroyed.push(format!("{} at slot {} on GPU {}", mig.profile, mig.start, mig.gpu_index));
            }
        }
        self.state.allocations.remove(&allocation);
        self.save()?;
        Ok(if destroyed.is_empty() {
            "released: cgroup removed".to_owned()
        } else {
            format!("released: cgroup removed, MIG {} destroyed", destroyed.join(", "))
        })
    }

    /// What exists now, for reconcile.
    pub fn observe(&self) -> Result<Observed, EnforceError> {
        let (cgroups, others) = self.cgroups.list()?;
        if !others.is_empty() {
            tracing::warn!(names = ?others, "cgroups under the parent that are not allocations; left alone");
        }
        let mut observed = Observed { cgroups: cgroups.into_iter().collect(), mig: BTreeSet::new(), mig_known: false };
        if let Some(driver) = self.mig.as_deref() {
            for gpu in driver.observe()? {
                for instance in gpu.instances {
                    observed.mig.insert((gpu.index, instance.gpu_instance_id, instance.profile_id, instance.start));
                }
            }
            observed.mig_known = true;
        }
        Ok(observed)
    }

    /// Moves what exists toward `desired` (the broker's live allocations for
    /// this node). With `report_all`, every desired allocation gets a report
    /// (after a restart the broker may be waiting for one); otherwise only
    /// those that changed or failed.
    pub fn reconcile(&mut self, desired: &BTreeMap<AllocationId, Allocation>, report_all: bool) -> Vec<Report> {
        let mut reports = Vec::new();
        let observed = match self.observe() {
            Ok(observed) => observed,
            Err(error) => {
                tracing::warn!(%error, "cannot observe this node; reconcile skipped");
                return reports;
            }
        };
        let generations = desired.iter().map(|(id, allocation)| (*id, allocation.generation)).collect();
        let actions = reconcile::plan(&generations, &self.state, &observed);
        let mut touched = BTreeSet::new();
        for action in actions {
            tracing::info!(?action, "reconcile");
            match action {
                Action::RemoveCgroup { allocation } => {
                    if let Err(error) = self.cgroups.remove(allocation) {
                        tracing::warn!(%allocation, %error, "cannot remove an orphaned cgroup");
                    }
                }
                Action::DestroyMig { allocation, gpu, gpu_instance_id } => {
                    if let Some(driver) = self.mig.as_deref()
                        && let Err(error) = driver.destroy(gpu, gpu_instance_id)
                    {
                        tracing::warn!(%allocation, %error, "cannot destroy an orphaned MIG instance");
                        // Keep the record so the next round tries again.
                        continue;
                    }
                    if let Some(record) = self.state.allocations.get_mut(&allocation) {
                        record.mig.retain(|mig| !(mig.gpu_index == gpu && mig.gpu_instance_id == gpu_instance_id));
                    }
                }
                Action::Forget { allocation } => {
                    let keep = self
                        .state
                        .allocations
                        .get(&allocation)
                        .is_some_and(|record| record.mig.iter().any(|mig| mig.created));
                    if !keep {
                        self.state.allocations.remove(&allocation);
                    }
                }
                Action::Apply { allocation } => {
                    let Some(wanted) = desired.get(&allocation) else { continue };
                    touched.insert(allocation);
                    reports.push(match self.apply(wanted) {
                        Ok(message) => Report { allocation, generation: wanted.generation, applied: true, message },
                        Err(error) => Report {
                            allocation,
                            generation: wanted.generation,
                            applied: false,
                            message: error.to_string(),
                        },
                    });
                }
                Action::ReportVanished { allocation, mig } => {
                    let Some(wanted) = desired.get(&allocation) else { continue };
                    touched.insert(allocation);
                    reports.push(Report {
                        allocation,
                        generation: wanted.generation,
                        applied: false,
                        message: format!(
                            "E-MIG-VANISHED: the {} instance at slot {} on GPU {} ({}) no longer exists; \
                             the allocation's work has lost its device: release the allocation and ask again",
                            mig.profile,
                            mig.start,
                            mig.gpu_index,
                            mig.uuid.as_deref().unwrap_or("no UUID")
                        ),
                    });
                }
            }
        }
        if let Err(error) = self.save() {
            tracing::warn!(%error, "cannot record reconcile results");
        }
        if report_all {
            for (id, allocation) in desired {
                if !touched.contains(id) && self.is_enforced(allocation) {
                    reports.push(Report {
                        allocation: *id,
                        generation: allocation.generation,
                        applied: true,
                        message: format!("enforced (found intact at generation {})", allocation.generation),
                    });
                }
            }
        }
        reports
    }
}
