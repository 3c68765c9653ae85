//! Where MIG state lives: in the process, or in the state file shared by every process.
//!
//! The state file is JSON, `{"gpus": {"GPU-…": {"current": true, "pending": true,
//! "gpu_instances": [...]}}}`, keyed by GPU UUID. Readers take a shared `flock`, writers an
//! exclusive one around read-modify-write, so the file is the one truth for all processes, as
//! the driver is on a real machine. A missing or empty file means "as the description says".

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::machine::Machine;
use crate::mig::GpuMig;

/// MIG state of every GPU, by position in [`Machine::gpus`]; `None` for GPUs that are not
/// MIG-capable.
pub(crate) type MigStates = Vec<Option<GpuMig>>;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    gpus: BTreeMap<String, GpuMig>,
}

/// A state file that cannot be read, parsed or written.
#[derive(Debug)]
pub(crate) struct StateError {
    pub(crate) path: PathBuf,
    pub(crate) problem: String,
}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.problem)
    }
}

/// Holds the MIG state of a process, in memory or in the state file.
#[derive(Debug)]
pub(crate) enum MigStore {
    Memory(MigStates),
    File(PathBuf),
}

impl MigStore {
    /// Chooses the store and, for a state file, checks that it can be read now, so that a
    /// broken file fails `nvmlInit_v2` rather than a later call.
    pub(crate) fn open(state_path: Option<PathBuf>, machine: &Machine) -> Result<MigStore, StateError> {
        match state_path {
            None => Ok(MigStore::Memory(initial_states(machine))),
            Some(path) => {
                read_file(&path, machine)?;
                Ok(MigStore::File(path))
            }
        }
    }

    /// The current MIG state of every GPU.
    pub(crate) fn read(&self, machine: &Machine) -> Result<MigStates, StateError> {
        match self {
            MigStore::Memory(states) => Ok(states.clone()),
            MigStore::File(path) => read_file(path, machine),
        }
    }

    /// Applies `change` to the current state and keeps the result when `change` succeeds.
    pub(crate) fn update<T, E>(
        &mut self,
        machine: &Machine,
        change: impl FnOnce(&mut MigStates) -> Result<T, E>,
    ) -> Result<Result<T, E>, StateError> {
        match self {
            MigStore::Memory(states) => {
                let mut changed = states.clone();
                let result = change(&mut changed);
                if result.is_ok() {
                    *states = changed;
                }
                Ok(result)
            }
            MigStore::File(path) => update_file(path, machine, change),
        }
    }
}

/// The state the description gives: its `mig_mode` and `mig_instance` entries.
pub(crate) fn initial_states(machine: &Machine) -> MigStates {
    machine.gpus.iter().map(|gpu| gpu.mig.as_ref().map(|mig| mig.initial.clone())).collect()
}

fn read_file(path: &Path, machine: &Machine) -> Result<MigStates, StateError> {
    let error = |problem: String| StateError { path: path.to_owned(), problem };
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(initial_states(machine)),
        Err(err) => return Err(error(err.to_string())),
    };
    flock(&file, libc::LOCK_SH).map_err(|err| error(format!("cannot lock: {err}")))?;
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(|err| error(err.to_string()))?;
    decode(&text, machine).map_err(error)
}

fn update_file<T, E>(
    path: &Path,
    machine: &Machine,
    change: impl FnOnce(&mut MigStates) -> Result<T, E>,
) -> Result<Result<T, E>, StateError> {
    let error = |problem: String| StateError { path: path.to_owned(), problem };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|err| error(err.to_string()))?;
    flock(&file, libc::LOCK_EX).map_err(|err| error(format!("cannot lock: {err}")))?;
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(|err| error(err.to_string()))?;
    let mut states = decode(&text, machine).map_err(error)?;
    let before = states.clone();
    let result = change(&mut states);
    if result.is_ok() && states != before {
        let encoded = encode(&states, machine).map_err(error)?;
        // Rewritten in place, not renamed over, so that every process locks the same inode.
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(encoded.as_bytes()))
            .and_then(|()| file.flush())
            .map_err(|err| error(format!("cannot write: {err}")))?;
    }
    // Closing the file releases the lock.
    Ok(result)
}

fn flock(file: &File, operation: libc::c_int) -> io::Result<()> {
    loop {
        // SAFETY: flock only reads the descriptor number, which `file` keeps open for the
        // whole call; it touches no memory of ours.
        let rc = unsafe { libc::flock(file.as_raw_fd(), operation) };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

fn decode(text: &str, machine: &Machine) -> Result<MigStates, String> {
    let mut states = initial_states(machine);
    if text.trim().is_empty() {
        return Ok(states);
    }
    let file: StateFile = serde_json::from_str(text).map_err(|err| err.to_string())?;
    for (uuid, mig) in file.gpus {
        let position = machine
            .gpu_by_uuid(&uuid)
            .ok_or_else(|| format!("gpus.{uuid}: the machine description has no GPU with this UUID"))?;
        let geometry = machine.gpus[position]
            .mig
            .as_ref()
            .map(|config| config.geometry)
            .ok_or_else(|| format!("gpus.{uuid}: the machine description gives this GPU no mig_geometry"))?;
        mig.validate(geometry).map_err(|problem| format!("gpus.{uuid}: {problem}"))?;
        states[position] = Some(mig);
    }
    Ok(states)
}

fn encode(states: &MigStates, machine: &Machine) -> Result<String, String> {
    let gpus = machine
        .gpus
        .iter()
        .zip(states)
        .filter_map(|(gpu, state)| state.clone().map(|mig| (gpu.uuid.clone(), mig)))
        .collect();
    let mut text = serde_json::to_string_pretty(&StateFile { gpus }).map_err(|err| err.to_string())?;
    text.push('\n');
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MACHINE: &str = r#"
        [[gpu]]
        index = 0
        uuid = "GPU-0"
        name = "NVIDIA A100-SXM4-40GB"
        pci_bus_id = "0000:07:00.0"
        memory_total_mib = 40960
        mig_geometry = "a100-40gb"
        mig_mode = "enabled"
    "#;

    #[test]
    fn file_round_trip_and_rejection() {
        let machine = Machine::parse(MACHINE).expect("valid");
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("state.json");
        let mut store = MigStore::open(Some(path.clone()), &machine).expect("opens");
        let geometry = machine.gpus[0].mig.as_ref().expect("MIG").geometry;
        let created = store
            .update(&machine, |states| match states[0].as_mut() {
                Some(mig) => mig.create_gpu_instance(geometry, 9, None),
                None => Err(crate::mig::MigError::NotSupported),
            })
            .expect("file works");
        assert_eq!(created, Ok(1));
        let again = MigStore::open(Some(path.clone()), &machine).expect("opens");
        let states = again.read(&machine).expect("reads");
        assert_eq!(states[0].as_ref().map(|mig| mig.gpu_instances.len()), Some(1));

        std::fs::write(&path, r#"{"gpus": {"GPU-9": {"current": true, "pending": true}}}"#).expect("write");
        let err = again.read(&machine).err().map(|err| err.problem);
        assert_eq!(err.as_deref(), Some("gpus.GPU-9: the machine description has no GPU with this UUID"));
    }
}
