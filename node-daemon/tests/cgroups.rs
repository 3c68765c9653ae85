//! The cgroup drivers: v1 against this machine's real hierarchies; v2 always
//! against a temp-dir tree with real files (the way youki tests its managers),
//! and against every cgroup2 mount of this machine, where it must enforce when the
//! mount offers cpuset, memory and pids and refuse naming the missing controller
//! when it does not. Each test's name says what it checks.

use std::path::{Path, PathBuf};

use allot_api::allocation::AllocationId;
use allot_node::enforce::cgroup::{
    CONTROLLERS, CgroupDriver, CgroupError, CgroupSpec, DriverChoice, V1Driver, V2Driver, detect_root, driver,
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

/// Every cgroup2 mount of this machine, with the controllers its root offers.
fn cgroup2_mounts() -> Vec<(PathBuf, Vec<String>)> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let mut mounts = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else { continue };
        if right.split_whitespace().next() != Some("cgroup2") {
            continue;
        }
        let Some(point) = left.split_whitespace().nth(4) else { continue };
        let controllers = std::fs::read_to_string(Path::new(point).join("cgroup.controllers")).unwrap_or_default();
        mounts.push((PathBuf::from(point), controllers.split_whitespace().map(str::to_owned).collect()));
    }
    mounts
}

/// The daemon's v2 driver (`--cgroup-driver v2 --cgroup-root MOUNT`) on every
/// cgroup2 mount of this machine. A mount offering cpuset, memory and pids must
/// enforce for real: limits read back, a process joins, remove ends it. A mount
/// lacking one must be refused with E-CGROUP-CONTROLLER naming what is missing,
/// creating nothing: that is what the daemon does there (this project's sandbox
/// mounts a cgroup2 hierarchy offering only hugetlb). Which of the two each
/// mount got is in the failure message and printed.
#[test]
fn cgroup_v2_on_this_machine_enforces_or_refuses_naming_the_missing_controller() {
    let mounts = cgroup2_mounts();
    assert!(
        !mounts.is_empty(),
        "this test needs a cgroup2 mount (with or without controllers); this machine has none in /proc/self/mountinfo"
    );
    for (point, controllers) in mounts {
        let parent = parent("v2");
        let driver = driver(DriverChoice::V2, Some(&point), &parent).expect("driver");
        let missing = CONTROLLERS.iter().find(|controller| !controllers.iter().any(|offered| offered == *controller));
        match missing {
            None => {
                println!("cgroup v2: enforced on the real hierarchy at {}", point.display());
                exercise(driver.as_ref(), "memory.max", true);
                cleanup(&[point.join(&parent)]);
            }
            Some(missing) => {
                println!(
                    "cgroup v2: {} offers only [{}]; refused with E-CGROUP-CONTROLLER, as the daemon is",
                    point.display(),
                    controllers.join(" ")
                );
                let error = driver.apply(&spec(1, "0", Some(64))).expect_err(&format!(
                    "{} offers only [{}], yet the v2 driver applied a cgroup there",
                    point.display(),
                    controllers.join(" ")
                ));
                let text = error.to_string();
                assert!(
                    text.contains("E-CGROUP-CONTROLLER") && text.contains(missing),
                    "{}: expected E-CGROUP-CONTROLLER naming {missing}, got: {text}",
                    point.display()
                );
                assert!(!point.join(&parent).exists(), "a refused apply created {}", point.join(&parent).display());
            }
        }
    }
}
