//! What the plugin granted the kubelet: for each broker allocation it made, the
//! resource and the device ids the kubelet knows it by. Kept in
//! `<state-dir>/kubelet-grants.json` (written atomically after every change) so a
//! restarted allot-node still knows which pod devices belong to which
//! allocation, and releases each one once no pod holds its devices.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use allot_api::allocation::AllocationId;
use serde::{Deserialize, Serialize};

pub const GRANTS_FILE: &str = "kubelet-grants.json";

/// One allocation made for the kubelet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub resource: String,
    pub device_ids: BTreeSet<String>,
    /// When it was made (ms since the epoch).
    pub created_ms: u64,
    /// When the kubelet's Allocate confirmed it; `None` while it is only the
    /// answer to GetPreferredAllocation.
    pub allocated_ms: Option<u64>,
}

/// Every grant, by allocation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grants {
    pub grants: BTreeMap<AllocationId, Grant>,
}

#[derive(Debug, thiserror::Error)]
#[error("E-KUBELET-STATE: cannot {action} {path}: {problem}")]
pub struct GrantsError {
    action: &'static str,
    path: PathBuf,
    problem: String,
}

impl Grants {
    pub fn load(dir: &Path) -> Result<Grants, GrantsError> {
        let path = dir.join(GRANTS_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Grants::default()),
            Err(error) => return Err(GrantsError { action: "read", path, problem: error.to_string() }),
        };
        serde_json::from_str(&text).map_err(|error| GrantsError {
            action: "parse",
            path,
            problem: format!("{error}; it lists the allocations made for the kubelet: fix it or move it aside"),
        })
    }

    pub fn save(&self, dir: &Path) -> Result<(), GrantsError> {
        let path = dir.join(GRANTS_FILE);
        let fail = |action, problem: String| GrantsError { action, path: path.clone(), problem };
        std::fs::create_dir_all(dir).map_err(|error| fail("create the directory of", error.to_string()))?;
        let text = serde_json::to_string_pretty(self).map_err(|error| fail("encode", error.to_string()))?;
        let temp = dir.join(format!(".{GRANTS_FILE}.tmp"));
        std::fs::write(&temp, text).map_err(|error| fail("write", error.to_string()))?;
        std::fs::rename(&temp, &path).map_err(|error| fail("replace", error.to_string()))
    }

    /// Device ids held per allocation, for the device lists.
    pub fn held(&self) -> BTreeMap<AllocationId, Vec<String>> {
        self.grants.iter().map(|(id, grant)| (*id, grant.device_ids.iter().cloned().collect())).collect()
    }

    /// The grant of `resource` whose device ids are exactly `ids`.
    pub fn find_exact(&self, resource: &str, ids: &BTreeSet<String>) -> Option<AllocationId> {
        self.grants.iter().find(|(_, grant)| grant.resource == resource && &grant.device_ids == ids).map(|(id, _)| *id)
    }

    /// Grants of `resource` that hold any of `ids`.
    pub fn overlapping(&self, resource: &str, ids: &BTreeSet<String>) -> Vec<AllocationId> {
        self.grants
            .iter()
            .filter(|(_, grant)| grant.resource == resource && !grant.device_ids.is_disjoint(ids))
            .map(|(id, _)| *id)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_round_trip_and_are_found_by_their_exact_ids() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert_eq!(Grants::load(dir.path()).expect("missing is empty"), Grants::default());
        let mut grants = Grants::default();
        let ids: BTreeSet<String> = ["GPU-a".to_owned(), "GPU-b".to_owned()].into();
        grants.grants.insert(
            AllocationId::from_u64(7),
            Grant { resource: "allot.io/gpu".into(), device_ids: ids.clone(), created_ms: 1, allocated_ms: None },
        );
        grants.save(dir.path()).expect("save");
        let loaded = Grants::load(dir.path()).expect("load");
        assert_eq!(loaded, grants);
        assert_eq!(loaded.find_exact("allot.io/gpu", &ids), Some(AllocationId::from_u64(7)));
        let one: BTreeSet<String> = ["GPU-a".to_owned()].into();
        assert_eq!(loaded.find_exact("allot.io/gpu", &one), None);
        assert_eq!(loaded.overlapping("allot.io/gpu", &one), vec![AllocationId::from_u64(7)]);
        assert!(loaded.overlapping("allot.io/gpu-share", &one).is_empty());
        std::fs::write(dir.path().join(GRANTS_FILE), "{").expect("write");
        assert!(Grants::load(dir.path()).expect_err("garbage").to_string().contains("E-KUBELET-STATE"));
    }
}
