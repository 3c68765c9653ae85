//! The cgroup drivers: v1 against this machine's real hierarchies, v2 against a
//! real writable v2 hierarchy when one offers cpuset, memory and pids, and
//! always against a temp-dir tree with real files (the way youki tests its
//! managers). Each test prints which it ran.

use std::path::{Path, PathBuf};

use allot_api::allocation::AllocationId;
use allot_node::enforce::cgroup::{
    CONTROLLERS, CgroupDriver, CgroupError, CgroupSpec, V1Driver, V2Driver, detect_root,
};

fn spec(id: u64, cpus: &str, memory_mib: Option<u64>) -> CgroupSpec {
    CgroupSpec {
        allocation: AllocationId::from_u64(id),
        cpus: cpus.parse().expect("cpus"),
        mems: "0".parse().expect("mems"),
        memory_bytes: memory_mib.map(|mib| mib << 20),
        pids_max: 32,
    }
}

fn parent(name: &str) -> String {
    format!("allot-unit-{}-{name}", std::process::id())
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|error| panic!("{}: {error}", path.display())).trim().to_owned()
}

/// Exercises a driver: apply, verify the kernel's values, a process joins,
/// remove ends it and leaves nothing.
fn exercise(driver: &dyn CgroupDriver, memory_file: &str, real: bool) {
    let wanted = spec(1, "0", Some(64));
    let applied = driver.apply(&wanted).expect("apply");
    let cpuset_dir = applied.paths.iter().find(|path| path.join("cpuset.cpus").is_file()).expect("cpuset dir");
    assert_eq!(read(&cpuset_dir.join("cpuset.cpus")), "0");
    let memory_dir = applied.paths.iter().find(|path| path.join(memory_file).is_file()).expect("memory dir");
    assert_eq!(read(&memory_dir.join(memory_file)), (64u64 << 20).to_string());
    let pids_dir = applied.paths.iter().find(|path| path.join("pids.max").is_file()).expect("pids dir");
    assert_eq!(read(&pids_dir.join("pids.max")), "32");
    assert!(driver.exists(wanted.allocation));
    let (listed, _) = driver.list().expect("list");
    assert_eq!(listed, vec![wanted.allocation]);
    // Applying again is harmless (a restart re-applies).
    driver.apply(&wanted).expect("apply again");
    let mut child = None;
    if real {
        let mut sleeper = std::process::Command::new("sleep").arg("30").spawn().expect("sleep");
        for procs in &applied.procs_files {
            std::fs::write(procs, sleeper.id().to_string()).expect("join");
        }
        let cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", sleeper.id())).expect("cgroup");
        assert!(cgroup.contains(&applied.name), "{cgroup}");
        let _ = sleeper.try_wait();
        child = Some(sleeper);
    }
    driver.remove(wanted.allocation).expect("remove");
    assert!(!driver.exists(wanted.allocation));
    assert!(applied.paths.iter().all(|path| !path.exists()), "{:?}", applied.paths);
    if let Some(mut sleeper) = child {
        let status = sleeper.wait().expect("wait");
        assert!(!status.success(), "remove must end the allocation's processes");
    }
    driver.remove(wanted.allocation).expect("removing an absent cgroup is fine");
}

fn cleanup(dirs: &[PathBuf]) {
    for dir in dirs {
        let _ = std::fs::remove_dir(dir);
    }
}

#[test]
fn cgroup_v1_driver_on_this_machines_hierarchies() {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let root = match detect_root(&mountinfo) {
        Some((allot_node::enforce::cgroup::CgroupVersion::V1, root)) => root,
        other => panic!(
            "this test needs cgroup v1 cpuset, memory and pids mounts (found {other:?}); \
             on a cgroup v2 machine run it where v1 is mounted, e.g. in this project's sandbox"
        ),
    };
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "creating cgroups needs root");
    println!("cgroup v1: ran against the real hierarchies under {}", root.display());
    let parent = parent("v1");
    let driver = V1Driver::new(&root, &parent).expect("driver");
    exercise(&driver, "memory.limit_in_bytes", true);

    // A cpuset the machine cannot honour: a clear error and nothing left behind.
    let error = driver.apply(&spec(2, "4095", None)).expect_err("no CPU 4095 here");
    assert!(matches!(error, CgroupError::NotApplied { .. }), "{error}");
    assert!(error.to_string().contains("cpuset.cpus"), "{error}");
    assert!(!driver.exists(AllocationId::from_u64(2)));
    cleanup(&CONTROLLERS.map(|controller| root.join(controller).join(&parent)));
}

#[test]
fn cgroup_v1_driver_refuses_a_root_without_a_controller() {
    let dir = tempfile::tempdir().expect("temp dir");
    for controller in ["cpuset", "memory"] {
        std::fs::create_dir_all(dir.path().join(controller)).expect("dir");
        std::fs::write(dir.path().join(controller).join("cgroup.procs"), "").expect("procs");
    }
    let driver = V1Driver::new(dir.path(), "allot").expect("driver");
    let error = driver.apply(&spec(1, "0", None)).expect_err("no pids");
    assert!(error.to_string().contains("E-CGROUP-CONTROLLER") && error.to_string().contains("pids"), "{error}");
    assert!(!dir.path().join("cpuset/allot").exists(), "nothing is created before the check");
}

/// Writes what the kernel would show in a fresh v2 cgroup.
fn kernel_made(dir: &Path, controllers: &str) {
    std::fs::create_dir_all(dir).expect("dir");
    std::fs::write(dir.join("cgroup.controllers"), controllers).expect("controllers");
}

#[test]
fn cgroup_v2_driver_on_a_temp_tree() {
    println!("cgroup v2: ran against a temp-dir tree with real files");
    let dir = tempfile::tempdir().expect("temp dir");
    kernel_made(dir.path(), "cpuset cpu io memory pids");
    kernel_made(&dir.path().join("allot/a-0000000000000001"), "cpuset memory pids");
    let driver = V2Driver::new(dir.path(), "allot").expect("driver");
    exercise(&driver, "memory.max", false);
    assert_eq!(read(&dir.path().join("cgroup.subtree_control")), "+cpuset +memory +pids");
}

#[test]
fn cgroup_v2_driver_names_the_missing_controller_and_creates_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    kernel_made(dir.path(), "cpuset pids hugetlb");
    let driver = V2Driver::new(dir.path(), "allot").expect("driver");
    let error = driver.apply(&spec(1, "0", Some(64))).expect_err("no memory controller");
    let text = error.to_string();
    assert!(text.contains("E-CGROUP-CONTROLLER") && text.contains("memory"), "{text}");
    assert!(!dir.path().join("allot").exists());
    // A leaf that did not get a controller from its parent is rolled back.
    kernel_made(dir.path(), "cpuset memory pids");
    kernel_made(&dir.path().join("allot"), "cpuset memory pids");
    std::fs::write(dir.path().join("allot/a-0000000000000002"), "").expect("a file where the cgroup goes");
    let error = driver.apply(&spec(2, "0", None)).expect_err("not a directory");
    assert!(error.to_string().contains("a-0000000000000002"), "{error}");
}

/// A writable v2 hierarchy offering cpuset, memory and pids, if this machine has one.
fn real_v2_root() -> Result<PathBuf, String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").map_err(|error| error.to_string())?;
    let mut seen = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else { continue };
        if right.split_whitespace().next() != Some("cgroup2") {
            continue;
        }
        let Some(point) = left.split_whitespace().nth(4) else { continue };
        let controllers = std::fs::read_to_string(Path::new(point).join("cgroup.controllers")).unwrap_or_default();
        if CONTROLLERS.iter().all(|controller| controllers.split_whitespace().any(|c| c == *controller)) {
            return Ok(PathBuf::from(point));
        }
        seen.push(format!("[{}] at {point}", controllers.trim()));
    }
    Err(if seen.is_empty() { "no cgroup2 mount".to_owned() } else { format!("only {}", seen.join(", ")) })
}

#[test]
fn cgroup_v2_driver_on_a_real_hierarchy_or_else_a_temp_tree() {
    match real_v2_root() {
        Ok(root) => {
            println!("cgroup v2: ran against the real hierarchy at {}", root.display());
            let parent = parent("v2");
            let driver = V2Driver::new(&root, &parent).expect("driver");
            exercise(&driver, "memory.max", true);
            cleanup(&[root.join(&parent)]);
        }
        Err(found) => {
            println!(
                "cgroup v2: no writable v2 hierarchy with cpuset, memory and pids here ({found}); \
                 ran against a temp-dir tree instead"
            );
            let dir = tempfile::tempdir().expect("temp dir");
            kernel_made(dir.path(), "cpuset memory pids");
            kernel_made(&dir.path().join("allot/a-0000000000000001"), "cpuset memory pids");
            exercise(&V2Driver::new(dir.path(), "allot").expect("driver"), "memory.max", false);
        }
    }
}
