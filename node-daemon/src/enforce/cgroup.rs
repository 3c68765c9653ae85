//! Control groups for allocations, through cgroups-rs, on cgroup v1 and v2.
//!
//! Each allocation gets `<parent>/<allocation-id>` (v1: under every controller's
//! mount, `<root>/<controller>/<parent>/<id>`; v2: `<root>/<parent>/<id>`) with a
//! cpuset (the cores and NUMA nodes the broker chose), a memory limit and a pids
//! limit. cgroups-rs ignores a write that fails and, on v2, skips controllers
//! that are not enabled, so after applying the driver reads every value back and
//! fails loudly, naming the controller and the file, when one did not apply; a
//! failed creation removes what it made.
//!
//! The root is a parameter: tests point the v2 driver at a temp dir with real
//! files, the way youki tests its cgroup managers.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use allot_api::allocation::AllocationId;
use allot_api::units::CpuSet;
use cgroups_rs::fs::cgroup::Cgroup;
use cgroups_rs::fs::cpuset::CpuSetController;
use cgroups_rs::fs::memory::MemController;
use cgroups_rs::fs::pid::PidController;
use cgroups_rs::fs::{Hierarchy, MaxValue, Resources, Subsystem};

/// The controllers every allocation's cgroup needs.
pub const CONTROLLERS: [&str; 3] = ["cpuset", "memory", "pids"];

/// Which cgroup interface a driver speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupVersion {
    V1,
    V2,
    /// Not Allot's: the container runtime makes the cgroups (in Kubernetes, the
    /// kubelet's CPU and memory managers decide them).
    Runtime,
}

impl fmt::Display for CgroupVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CgroupVersion::V1 => "v1",
            CgroupVersion::V2 => "v2",
            CgroupVersion::Runtime => "container runtime",
        })
    }
}

/// What an allocation's cgroup must enforce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupSpec {
    pub allocation: AllocationId,
    /// OS indices of the PUs; empty means "no cores granted": the cpuset is
    /// inherited from the parent.
    pub cpus: CpuSet,
    /// NUMA nodes for `cpuset.mems`; empty means inherited.
    pub mems: CpuSet,
    /// Bytes; `None` means no limit (the request asked for no host memory).
    pub memory_bytes: Option<u64>,
    pub pids_max: u64,
}

/// A cgroup that exists and enforces its spec.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AppliedCgroup {
    pub version: CgroupVersion,
    /// The cgroup's directory per controller (v1) or its one directory (v2).
    pub paths: Vec<PathBuf>,
    /// Files a process writes its pid to, to join the cgroup.
    pub procs_files: Vec<PathBuf>,
    /// The path the kernel shows in `/proc/<pid>/cgroup`: `/<parent>/<id>`.
    pub name: String,
}

/// Why a cgroup could not be created, changed, listed or removed.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "E-CGROUP-CONTROLLER: cgroup {version} controller {controller} is not available at {path}: {problem}; \
         mount or enable it, or point --cgroup-root at a hierarchy that has it"
    )]
    MissingController { version: CgroupVersion, controller: &'static str, path: PathBuf, problem: String },
    #[error("E-CGROUP-NOT-APPLIED: {file}: wrote {wanted:?} but the kernel holds {found:?}")]
    NotApplied { file: PathBuf, wanted: String, found: String },
    #[error("E-CGROUP-IO: {action} {path}: {source}")]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },
    #[error("E-CGROUP: {action} {path}: {problem}")]
    Cgroups { action: &'static str, path: PathBuf, problem: String },
    #[error("E-CGROUP-ROOT: {0}")]
    Root(String),
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io { action, path: path.to_owned(), source }
}

/// One external system, shaped by what Allot needs: create an allocation's
/// cgroup (verified, or nothing left behind), remove it, list what exists.
pub trait CgroupDriver: fmt::Debug + Send + Sync {
    fn version(&self) -> CgroupVersion;
    /// Creates (or updates) the cgroup and checks every value took effect. On
    /// error nothing this call created is left.
    fn apply(&self, spec: &CgroupSpec) -> Result<AppliedCgroup, CgroupError>;
    /// Kills what still runs in the cgroup and removes it; absent is fine.
    fn remove(&self, allocation: AllocationId) -> Result<(), CgroupError>;
    /// Allocation cgroups under the parent, and names there that are not
    /// allocation ids (left alone, reported).
    fn list(&self) -> Result<(Vec<AllocationId>, Vec<String>), CgroupError>;
    /// Whether the cgroup of this allocation exists (in every controller).
    fn exists(&self, allocation: AllocationId) -> bool;
}

/// The cgroup name under the parent: `<parent>/<id>`.
fn relative(parent: &str, allocation: AllocationId) -> String {
    format!("{parent}/{allocation}")
}

/// Checks a `--cgroup-parent` value: a relative path of plain names.
pub fn check_parent(parent: &str) -> Result<(), CgroupError> {
    let valid = !parent.is_empty()
        && parent.split('/').all(|part| {
            !part.is_empty()
                && part != "."
                && part != ".."
                && part.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        });
    if valid {
        Ok(())
    } else {
        Err(CgroupError::Root(format!(
            "cgroup parent {parent:?}: use names of letters, digits, '-', '_' and '.', separated by '/'"
        )))
    }
}

fn resources(spec: &CgroupSpec) -> Resources {
    let mut resources = Resources::default();
    if !spec.cpus.is_empty() {
        resources.cpu.cpus = Some(spec.cpus.to_string());
    }
    if !spec.mems.is_empty() {
        resources.cpu.mems = Some(spec.mems.to_string());
    }
    resources.memory.memory_hard_limit = spec.memory_bytes.map(|bytes| i64::try_from(bytes).unwrap_or(i64::MAX));
    resources.pid.maximum_number_of_processes = Some(MaxValue::Value(i64::try_from(spec.pids_max).unwrap_or(i64::MAX)));
    resources
}

fn read_trimmed(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map(|text| text.trim().to_owned()).map_err(io("cannot read", path))
}

/// Compares what the kernel holds with what was written, as values (cpu lists
/// as sets, numbers as numbers).
fn verify(dir: &Path, file: &str, wanted: &str, same: impl Fn(&str, &str) -> bool) -> Result<(), CgroupError> {
    let path = dir.join(file);
    let found = read_trimmed(&path)?;
    if same(wanted, &found) {
        Ok(())
    } else {
        Err(CgroupError::NotApplied { file: path, wanted: wanted.to_owned(), found })
    }
}

fn same_cpu_list(wanted: &str, found: &str) -> bool {
    match (wanted.parse::<CpuSet>(), found.parse::<CpuSet>()) {
        (Ok(wanted), Ok(found)) => wanted == found,
        _ => false,
    }
}

fn same_number(wanted: &str, found: &str) -> bool {
    wanted == found || matches!((wanted.parse::<u64>(), found.parse::<u64>()), (Ok(a), Ok(b)) if a == b)
}

/// Verifies cpuset, memory and pids values in the directories given per controller.
fn verify_spec(spec: &CgroupSpec, cpuset: &Path, memory: &Path, pids: &Path, v2: bool) -> Result<(), CgroupError> {
    if !spec.cpus.is_empty() {
        verify(cpuset, "cpuset.cpus", &spec.cpus.to_string(), same_cpu_list)?;
    }
    if !spec.mems.is_empty() {
        verify(cpuset, "cpuset.mems", &spec.mems.to_string(), same_cpu_list)?;
    }
    if let Some(bytes) = spec.memory_bytes {
        let file = if v2 { "memory.max" } else { "memory.limit_in_bytes" };
        verify(memory, file, &bytes.to_string(), same_number)?;
    }
    verify(pids, "pids.max", &spec.pids_max.to_string(), same_number)
}

/// Sends SIGKILL to every process listed in a `cgroup.procs` file and waits
/// (briefly) until the file is empty.
fn kill_members(procs: &Path) {
    for _ in 0..50 {
        let Ok(text) = std::fs::read_to_string(procs) else { return };
        let pids: Vec<i32> = text.split_whitespace().filter_map(|pid| pid.parse().ok()).collect();
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            // SAFETY: kill(2) takes plain integers and has no memory effects; a pid
            // that exited meanwhile gives ESRCH, which is fine.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Removes a cgroup directory: child cgroups first, then itself. On cgroupfs
/// `rmdir` removes the interface files; on a plain directory tree (tests) the
/// files are removed first, which on cgroupfs would fail harmlessly.
fn remove_cgroup_dir(dir: &Path) -> Result<(), CgroupError> {
    if !dir.exists() {
        return Ok(());
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                remove_cgroup_dir(&path)?;
            }
        }
    }
    let mut last = None;
    for attempt in 0..10 {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::DirectoryNotEmpty => {
                // A plain directory (not cgroupfs): drop the files we wrote.
                if let Ok(entries) = std::fs::read_dir(dir) {
                    for entry in entries.flatten() {
                        if entry.file_type().is_ok_and(|kind| kind.is_file()) {
                            let _ = std::fs::remove_file(entry.path());
                        }
                    }
                }
                last = Some(error);
            }
            Err(error) => {
                // EBUSY: processes are still leaving; try again shortly.
                last = Some(error);
                std::thread::sleep(std::time::Duration::from_millis(10 * (attempt + 1)));
            }
        }
    }
    Err(CgroupError::Io {
        action: "cannot remove",
        path: dir.to_owned(),
        source: last.unwrap_or_else(|| std::io::Error::other("gave up")),
    })
}

/// Lists allocation cgroups in a directory.
fn list_dir(dir: &Path) -> Result<(Vec<AllocationId>, Vec<String>), CgroupError> {
    let mut ids = Vec::new();
    let mut others = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok((ids, others)),
        Err(error) => return Err(CgroupError::Io { action: "cannot list", path: dir.to_owned(), source: error }),
    };
    for entry in entries.flatten() {
        if !entry.file_type().is_ok_and(|kind| kind.is_dir()) {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        match name.parse::<AllocationId>() {
            Ok(id) => ids.push(id),
            Err(_) => others.push(name),
        }
    }
    ids.sort();
    others.sort();
    Ok((ids, others))
}

/// A cgroups-rs hierarchy rooted where we say, not where cgroups-rs assumes.
#[derive(Debug, Clone)]
struct RootedHierarchy {
    root: PathBuf,
    version: CgroupVersion,
}

impl RootedHierarchy {
    fn controller_dir(&self, controller: &str) -> PathBuf {
        match self.version {
            CgroupVersion::V1 => self.root.join(controller),
            // Only the v1 and v2 drivers build a hierarchy.
            CgroupVersion::V2 | CgroupVersion::Runtime => self.root.clone(),
        }
    }
}

impl Hierarchy for RootedHierarchy {
    fn subsystems(&self) -> Vec<Subsystem> {
        let v2 = self.version == CgroupVersion::V2;
        let point = |name: &str| self.controller_dir(name);
        vec![
            Subsystem::Mem(MemController::new(point("memory"), point("memory"), v2)),
            Subsystem::Pid(PidController::new(point("pids"), point("pids"), v2)),
            Subsystem::CpuSet(CpuSetController::new(point("cpuset"), point("cpuset"), v2)),
        ]
    }

    fn root(&self) -> PathBuf {
        self.root.clone()
    }

    fn root_control_group(&self) -> Cgroup {
        Cgroup::load(Box::new(self.clone()), "")
    }

    fn parent_control_group(&self, path: &str) -> Cgroup {
        let parent = Path::new(path).parent().map(Path::to_path_buf).unwrap_or_default();
        Cgroup::load(Box::new(self.clone()), parent)
    }

    fn v2(&self) -> bool {
        self.version == CgroupVersion::V2
    }
}

/// cgroup v1: one hierarchy per controller, `<root>/<controller>`.
#[derive(Debug, Clone)]
pub struct V1Driver {
    hierarchy: RootedHierarchy,
    parent: String,
}

impl V1Driver {
    pub fn new(root: impl Into<PathBuf>, parent: &str) -> Result<Self, CgroupError> {
        check_parent(parent)?;
        Ok(V1Driver {
            hierarchy: RootedHierarchy { root: root.into(), version: CgroupVersion::V1 },
            parent: parent.to_owned(),
        })
    }

    fn dir(&self, controller: &str, allocation: AllocationId) -> PathBuf {
        self.hierarchy.controller_dir(controller).join(relative(&self.parent, allocation))
    }

    /// The file the kernel creates in every new cgroup of this controller.
    fn marker(controller: &str) -> &'static str {
        match controller {
            "cpuset" => "cpuset.cpus",
            "memory" => "memory.limit_in_bytes",
            _ => "pids.max",
        }
    }
}

impl CgroupDriver for V1Driver {
    fn version(&self) -> CgroupVersion {
        CgroupVersion::V1
    }

    fn apply(&self, spec: &CgroupSpec) -> Result<AppliedCgroup, CgroupError> {
        // Before creating anything: every controller must be mounted.
        for controller in CONTROLLERS {
            let mount = self.hierarchy.controller_dir(controller);
            if !mount.join("cgroup.procs").is_file() {
                return Err(CgroupError::MissingController {
                    version: CgroupVersion::V1,
                    controller,
                    path: mount,
                    problem: "no cgroup hierarchy is mounted there".to_owned(),
                });
            }
        }
        let existed = self.exists(spec.allocation);
        let result = self.apply_inner(spec);
        if result.is_err() && !existed {
            // Roll back: leave nothing of a cgroup we failed to set up.
            let _ = self.remove(spec.allocation);
        }
        result
    }

    fn remove(&self, allocation: AllocationId) -> Result<(), CgroupError> {
        let dirs: Vec<PathBuf> = CONTROLLERS.iter().map(|controller| self.dir(controller, allocation)).collect();
        for dir in &dirs {
            kill_members(&dir.join("cgroup.procs"));
        }
        let mut first_error = None;
        for dir in &dirs {
            if let Err(error) = remove_cgroup_dir(dir) {
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn list(&self) -> Result<(Vec<AllocationId>, Vec<String>), CgroupError> {
        // An allocation with a directory in any controller counts as present, so
        // a half-removed one is found and finished.
        let mut ids = BTreeSet::new();
        let mut others = BTreeSet::new();
        for controller in CONTROLLERS {
            let (found, other) = list_dir(&self.hierarchy.controller_dir(controller).join(&self.parent))?;
            ids.extend(found);
            others.extend(other);
        }
        Ok((ids.into_iter().collect(), others.into_iter().collect()))
    }

    fn exists(&self, allocation: AllocationId) -> bool {
        CONTROLLERS.iter().all(|controller| self.dir(controller, allocation).is_dir())
    }
}

impl V1Driver {
    fn apply_inner(&self, spec: &CgroupSpec) -> Result<AppliedCgroup, CgroupError> {
        let name = relative(&self.parent, spec.allocation);
        let cgroup = Cgroup::load(Box::new(self.hierarchy.clone()), name.as_str());
        cgroup.create().map_err(|error| CgroupError::Cgroups {
            action: "cannot create",
            path: self.dir("cpuset", spec.allocation),
            problem: error.to_string(),
        })?;
        for controller in CONTROLLERS {
            let dir = self.dir(controller, spec.allocation);
            if !dir.join(Self::marker(controller)).is_file() {
                return Err(CgroupError::MissingController {
                    version: CgroupVersion::V1,
                    controller,
                    path: self.hierarchy.controller_dir(controller),
                    problem: format!(
                        "the kernel made no {} in {}: not a cgroup v1 {controller} hierarchy",
                        Self::marker(controller),
                        dir.display()
                    ),
                });
            }
        }
        cgroup.apply(&resources(spec)).map_err(|error| CgroupError::Cgroups {
            action: "cannot apply limits to",
            path: self.dir("cpuset", spec.allocation),
            problem: error.to_string(),
        })?;
        verify_spec(
            spec,
            &self.dir("cpuset", spec.allocation),
            &self.dir("memory", spec.allocation),
            &self.dir("pids", spec.allocation),
            false,
        )?;
        let paths: Vec<PathBuf> = CONTROLLERS.iter().map(|controller| self.dir(controller, spec.allocation)).collect();
        Ok(AppliedCgroup {
            version: CgroupVersion::V1,
            procs_files: paths.iter().map(|dir| dir.join("cgroup.procs")).collect(),
            paths,
            name: format!("/{name}"),
        })
    }
}

/// cgroup v2: one unified hierarchy at `<root>`; controllers are enabled for the
/// children of each level through `cgroup.subtree_control`.
#[derive(Debug, Clone)]
pub struct V2Driver {
    hierarchy: RootedHierarchy,
    parent: String,
}

impl V2Driver {
    pub fn new(root: impl Into<PathBuf>, parent: &str) -> Result<Self, CgroupError> {
        check_parent(parent)?;
        Ok(V2Driver {
            hierarchy: RootedHierarchy { root: root.into(), version: CgroupVersion::V2 },
            parent: parent.to_owned(),
        })
    }

    fn dir(&self, allocation: AllocationId) -> PathBuf {
        self.hierarchy.root.join(relative(&self.parent, allocation))
    }

    fn controllers_of(dir: &Path) -> Result<Vec<String>, CgroupError> {
        Ok(read_trimmed(&dir.join("cgroup.controllers"))?.split_whitespace().map(str::to_owned).collect())
    }

    fn apply_inner(&self, spec: &CgroupSpec, created: &mut Vec<PathBuf>) -> Result<AppliedCgroup, CgroupError> {
        let root = &self.hierarchy.root;
        let available = Self::controllers_of(root).map_err(|error| CgroupError::MissingController {
            version: CgroupVersion::V2,
            controller: "cpuset",
            path: root.clone(),
            problem: format!("not a cgroup v2 hierarchy ({error})"),
        })?;
        for controller in CONTROLLERS {
            if !available.iter().any(|name| name == controller) {
                return Err(CgroupError::MissingController {
                    version: CgroupVersion::V2,
                    controller,
                    path: root.join("cgroup.controllers"),
                    problem: format!("the root offers only [{}]", available.join(" ")),
                });
            }
        }
        // Walk down: enable the controllers for the children of each level, then
        // make the next level.
        let enable = format!("+{}", CONTROLLERS.join(" +"));
        let name = relative(&self.parent, spec.allocation);
        let mut dir = root.clone();
        for part in name.split('/') {
            let subtree = dir.join("cgroup.subtree_control");
            std::fs::write(&subtree, &enable).map_err(io("cannot enable controllers in", &subtree))?;
            dir.push(part);
            if !dir.is_dir() {
                std::fs::create_dir(&dir).map_err(io("cannot create", &dir))?;
                created.push(dir.clone());
            }
        }
        let enabled = Self::controllers_of(&dir)?;
        for controller in CONTROLLERS {
            if !enabled.iter().any(|name| name == controller) {
                return Err(CgroupError::MissingController {
                    version: CgroupVersion::V2,
                    controller,
                    path: dir.join("cgroup.controllers"),
                    problem: format!("the cgroup got only [{}] from its parent", enabled.join(" ")),
                });
            }
        }
        let cgroup = Cgroup::load(Box::new(self.hierarchy.clone()), name.as_str());
        cgroup.apply(&resources(spec)).map_err(|error| CgroupError::Cgroups {
            action: "cannot apply limits to",
            path: dir.clone(),
            problem: error.to_string(),
        })?;
        verify_spec(spec, &dir, &dir, &dir, true)?;
        Ok(AppliedCgroup {
            version: CgroupVersion::V2,
            procs_files: vec![dir.join("cgroup.procs")],
            paths: vec![dir],
            name: format!("/{name}"),
        })
    }
}

impl CgroupDriver for V2Driver {
    fn version(&self) -> CgroupVersion {
        CgroupVersion::V2
    }

    fn apply(&self, spec: &CgroupSpec) -> Result<AppliedCgroup, CgroupError> {
        let mut created = Vec::new();
        let result = self.apply_inner(spec, &mut created);
        if result.is_err() {
            // Roll back the directories this call made, deepest first.
            for dir in created.iter().rev() {
                let _ = remove_cgroup_dir(dir);
            }
        }
        result
    }

    fn remove(&self, allocation: AllocationId) -> Result<(), CgroupError> {
        let dir = self.dir(allocation);
        let kill = dir.join("cgroup.kill");
        if kill.is_file() {
            let _ = std::fs::write(&kill, "1");
        }
        kill_members(&dir.join("cgroup.procs"));
        remove_cgroup_dir(&dir)
    }

    fn list(&self) -> Result<(Vec<AllocationId>, Vec<String>), CgroupError> {
        list_dir(&self.hierarchy.root.join(&self.parent))
    }

    fn exists(&self, allocation: AllocationId) -> bool {
        self.dir(allocation).is_dir()
    }
}

/// How to pick the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverChoice {
    Auto,
    V1,
    V2,
    /// Leave cgroups to the container runtime (see [`RuntimeOwned`]).
    Runtime,
}

/// The driver for nodes whose container runtime owns cgroups (Kubernetes): it
/// makes none, and remembers which allocations it was asked for so the
/// enforcer's bookkeeping (applied, exists, removed) still holds.
#[derive(Debug, Default)]
pub struct RuntimeOwned {
    applied: std::sync::Mutex<std::collections::BTreeSet<AllocationId>>,
}

impl RuntimeOwned {
    fn applied(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeSet<AllocationId>> {
        self.applied.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl CgroupDriver for RuntimeOwned {
    fn version(&self) -> CgroupVersion {
        CgroupVersion::Runtime
    }

    fn apply(&self, spec: &CgroupSpec) -> Result<AppliedCgroup, CgroupError> {
        self.applied().insert(spec.allocation);
        Ok(AppliedCgroup {
            version: CgroupVersion::Runtime,
            paths: Vec::new(),
            procs_files: Vec::new(),
            name: "(the container runtime's)".to_owned(),
        })
    }

    fn remove(&self, allocation: AllocationId) -> Result<(), CgroupError> {
        self.applied().remove(&allocation);
        Ok(())
    }

    fn list(&self) -> Result<(Vec<AllocationId>, Vec<String>), CgroupError> {
        Ok((self.applied().iter().copied().collect(), Vec::new()))
    }

    fn exists(&self, allocation: AllocationId) -> bool {
        self.applied().contains(&allocation)
    }
}

/// Where the kernel mounts cgroups, from `/proc/self/mountinfo` text: the v2
/// unified mount (when `/sys/fs/cgroup` itself is cgroup2) or the directory
/// holding the v1 controller mounts.
pub fn detect_root(mountinfo: &str) -> Option<(CgroupVersion, PathBuf)> {
    let mut v1_root = None;
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else { continue };
        let mount_point = left.split_whitespace().nth(4);
        let fs_type = right.split_whitespace().next();
        let super_options = right.split_whitespace().nth(2).unwrap_or("");
        match (fs_type, mount_point) {
            (Some("cgroup2"), Some(point)) if point == "/sys/fs/cgroup" => {
                return Some((CgroupVersion::V2, PathBuf::from(point)));
            }
            (Some("cgroup"), Some(point)) if super_options.split(',').any(|option| option == "cpuset") => {
                v1_root = Path::new(point).parent().map(Path::to_path_buf);
            }
            _ => {}
        }
    }
    v1_root.map(|root| (CgroupVersion::V1, root))
}

/// Builds the driver: an explicit version, or one decided from the root (a
/// `cgroup.controllers` file means v2), or from this machine's mounts.
pub fn driver(choice: DriverChoice, root: Option<&Path>, parent: &str) -> Result<Box<dyn CgroupDriver>, CgroupError> {
    if choice == DriverChoice::Runtime {
        return Ok(Box::new(RuntimeOwned::default()));
    }
    let (version, root) = match root {
        Some(root) => {
            let version = match choice {
                DriverChoice::V1 => CgroupVersion::V1,
                DriverChoice::V2 => CgroupVersion::V2,
                DriverChoice::Auto if root.join("cgroup.controllers").is_file() => CgroupVersion::V2,
                DriverChoice::Auto | DriverChoice::Runtime => CgroupVersion::V1,
            };
            (version, root.to_owned())
        }
        None => {
            let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
            let (detected, root) = detect_root(&mountinfo).ok_or_else(|| {
                CgroupError::Root(
                    "no cgroup v2 at /sys/fs/cgroup and no cgroup v1 cpuset mount; pass --cgroup-root".into(),
                )
            })?;
            let version = match choice {
                DriverChoice::Auto | DriverChoice::Runtime => detected,
                DriverChoice::V1 => CgroupVersion::V1,
                DriverChoice::V2 => CgroupVersion::V2,
            };
            (version, root)
        }
    };
    Ok(match version {
        CgroupVersion::V1 => Box::new(V1Driver::new(root, parent)?),
        CgroupVersion::V2 | CgroupVersion::Runtime => Box::new(V2Driver::new(root, parent)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_decide_the_version() {
        let v1 = "34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset\n\
                  41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(detect_root(v1), Some((CgroupVersion::V1, PathBuf::from("/sys/fs/cgroup"))));
        let v2 = "29 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(detect_root(v2), Some((CgroupVersion::V2, PathBuf::from("/sys/fs/cgroup"))));
        assert_eq!(detect_root("22 1 0:21 / /proc rw - proc proc rw\n"), None);
    }

    #[test]
    fn parents_are_plain_relative_names() {
        for good in ["allot", "allot/node-1", "allot.slice"] {
            assert!(check_parent(good).is_ok(), "{good}");
        }
        for bad in ["", "/allot", "allot/", "../x", "a//b", "a b"] {
            assert!(check_parent(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn values_compare_as_values() {
        assert!(same_cpu_list("0-3", "0,1,2,3"));
        assert!(!same_cpu_list("0-3", "0-2"));
        assert!(same_number("4096", "4096"));
        assert!(!same_number("4096", "max"));
    }
}
