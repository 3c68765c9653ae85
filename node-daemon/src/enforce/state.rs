//! The node's record of what it enforced: `<state-dir>/state.json`, written
//! atomically (a temp file renamed over it) after every change, so that a
//! restarted daemon (and `allot-node exec`) knows which cgroups and MIG
//! instances belong to which allocation, and which MIG instances Allot created
//! as opposed to an administrator.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use allot_api::allocation::AllocationId;

use super::cgroup::AppliedCgroup;
use super::mig::RecordedMig;

pub const STATE_FILE: &str = "state.json";

/// One allocation as enforced here.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EnforcedAllocation {
    pub generation: u64,
    pub cgroup: Option<AppliedCgroup>,
    #[serde(default)]
    pub mig: Vec<RecordedMig>,
    /// The environment `allot-node exec` gives its command.
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    /// False while enforcement is under way (a crash then leaves a record of
    /// what was created, for reconcile to finish or undo).
    pub complete: bool,
}

/// Everything this node enforces.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeState {
    pub node: String,
    pub allocations: BTreeMap<AllocationId, EnforcedAllocation>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("E-STATE: cannot {action} {path}: {problem}")]
    Io { action: &'static str, path: PathBuf, problem: String },
}

impl NodeState {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(STATE_FILE)
    }

    /// Reads the state; a missing file is an empty state.
    pub fn load(dir: &Path) -> Result<NodeState, StateError> {
        let path = Self::path(dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(NodeState::default()),
            Err(error) => return Err(StateError::Io { action: "read", path, problem: error.to_string() }),
        };
        serde_json::from_str(&text).map_err(|error| StateError::Io {
            action: "parse",
            path,
            problem: format!("{error}; move it aside only after checking which cgroups and MIG instances it names"),
        })
    }

    pub fn save(&self, dir: &Path) -> Result<(), StateError> {
        let path = Self::path(dir);
        let io = |action, problem: std::io::Error| StateError::Io {
            action,
            path: path.clone(),
            problem: problem.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(|error| io("create the directory of", error))?;
        let text = serde_json::to_string_pretty(self).map_err(|error| StateError::Io {
            action: "encode",
            path: path.clone(),
            problem: error.to_string(),
        })?;
        let temp = dir.join(format!(".{STATE_FILE}.tmp"));
        std::fs::write(&temp, text).map_err(|error| io("write", error))?;
        std::fs::rename(&temp, &path).map_err(|error| io("replace", error))
    }

    /// MIG instances live allocations hold: (GPU index, GPU instance id, allocation).
    pub fn held_instances(&self) -> Vec<(u32, u32, AllocationId)> {
        self.allocations
            .iter()
            .flat_map(|(id, enforced)| enforced.mig.iter().map(|mig| (mig.gpu_index, mig.gpu_instance_id, *id)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_a_missing_file_is_empty() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert_eq!(NodeState::load(dir.path()).expect("empty"), NodeState::default());
        let mut state = NodeState { node: "n1".into(), ..NodeState::default() };
        state.allocations.insert(
            AllocationId::from_u64(3),
            EnforcedAllocation {
                generation: 2,
                cgroup: None,
                mig: vec![],
                environment: BTreeMap::new(),
                complete: true,
            },
        );
        state.save(dir.path()).expect("save");
        assert_eq!(NodeState::load(dir.path()).expect("load"), state);
        std::fs::write(NodeState::path(dir.path()), "{").expect("write");
        let error = NodeState::load(dir.path()).expect_err("malformed");
        assert!(error.to_string().contains("state.json"), "{error}");
    }
}
