//! `allot-node exec --allocation ID -- COMMAND...`: runs a command inside an
//! allocation's cgroup with the environment of its devices, the way `srun` does
//! for Slurm users. It reads the node's state file (written by `allot-node run`),
//! so it works without the broker and refuses an allocation this node does not
//! enforce. The process joins the cgroup itself and then becomes the command, so
//! the command's `/proc/self/cgroup` names the allocation's cgroup and its exit
//! status is the command's.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::Path;

use allot_api::allocation::AllocationId;

use crate::enforce::state::NodeState;

/// Why a command could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("{0}")]
    BadId(String),
    #[error("{0}")]
    State(#[from] crate::enforce::state::StateError),
    #[error(
        "E-NOT-ON-THIS-NODE: allocation {allocation} is not enforced on this node{node}; \
         run allot-node exec on the node `allotctl alloc get {allocation}` names, once it is enforced"
    )]
    NotHere { allocation: AllocationId, node: String },
    #[error("E-NOT-READY: allocation {allocation} is still being enforced; try again in a moment")]
    NotReady { allocation: AllocationId },
    #[error("E-CGROUP-JOIN: cannot join {path}: {source}")]
    Join { path: String, source: std::io::Error },
    #[error("cannot run {command:?}: {source}")]
    Spawn { command: OsString, source: std::io::Error },
}

/// Joins the allocation's cgroup and replaces this process with the command.
/// Returns only on error.
pub fn exec(state_dir: &Path, allocation: &str, command: &[OsString]) -> ExecError {
    let allocation: AllocationId = match allocation.parse() {
        Ok(id) => id,
        Err(error) => return ExecError::BadId(error.to_string()),
    };
    let state = match NodeState::load(state_dir) {
        Ok(state) => state,
        Err(error) => return error.into(),
    };
    let node = if state.node.is_empty() { String::new() } else { format!(" ({})", state.node) };
    let Some(enforced) = state.allocations.get(&allocation) else {
        return ExecError::NotHere { allocation, node };
    };
    let Some(cgroup) = enforced.cgroup.as_ref().filter(|_| enforced.complete) else {
        return ExecError::NotReady { allocation };
    };
    let Some((program, arguments)) = command.split_first() else {
        return ExecError::Spawn { command: OsString::new(), source: std::io::Error::other("no command given") };
    };
    let pid = std::process::id().to_string();
    for procs in &cgroup.procs_files {
        if let Err(source) = std::fs::write(procs, &pid) {
            return ExecError::Join { path: procs.display().to_string(), source };
        }
    }
    let source = std::process::Command::new(program).args(arguments).envs(&enforced.environment).exec();
    ExecError::Spawn { command: program.clone(), source }
}
