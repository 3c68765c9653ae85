//! Enforcement end to end: the real broker, an enforcing allot-node on a fixture's
//! GPUs (the fake NVML library, its MIG state in a file) over this machine's real
//! CPUs (`--host-cpus`), real cgroups, `allot-node exec`, restarts, Xid events,
//! and the bad inputs (a foreign allocation, a missing cgroup controller).
//!
//! These tests need root and cgroup v1 cpuset, memory and pids controllers
//! (this sandbox's layout); without them they fail and say so.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use allot_tests::{
    Broker, Process, StoreKind, allot_node, allotctl, allotctl_json, node_statuses, start_broker, start_enforcing_node,
    start_node, wait_until,
};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(30);
const V1_ROOT: &str = "/sys/fs/cgroup";

fn require_cgroup_v1() {
    // SAFETY: geteuid has no preconditions and touches no memory.
    let root = unsafe { libc::geteuid() } == 0;
    let missing: Vec<&str> = ["cpuset", "memory", "pids"]
        .into_iter()
        .filter(|controller| !Path::new(V1_ROOT).join(controller).join("cgroup.procs").is_file())
        .collect();
    assert!(
        root && missing.is_empty(),
        "enforcement tests need root and cgroup v1 controllers cpuset, memory and pids under {V1_ROOT} \
         (root: {root}, missing: {missing:?}); run them as root on a machine with cgroup v1 mounted"
    );
    println!("cgroup: enforcing for real on cgroup v1 under {V1_ROOT}");
}

fn cpu_list(text: &str) -> BTreeSet<u32> {
    text.trim()
        .split(',')
        .filter(|part| !part.is_empty())
        .flat_map(|part| match part.split_once('-') {
            Some((a, b)) => a.parse::<u32>().expect("cpu")..=b.parse::<u32>().expect("cpu"),
            None => part.parse::<u32>().expect("cpu")..=part.parse::<u32>().expect("cpu"),
        })
        .collect()
}

/// One test's world: a broker, a temp dir, a cgroup parent of its own (removed
/// at the end), the fake NVML's state and events files.
struct World {
    dir: tempfile::TempDir,
    broker: Broker,
    parent: String,
    state_dir: PathBuf,
    nvml_state: PathBuf,
    events: PathBuf,
}

impl World {
    fn new(name: &str) -> World {
        require_cgroup_v1();
        let dir = tempfile::tempdir().expect("temp dir");
        let store = StoreKind::Embedded(dir.path().join("store"));
        let broker = start_broker(&store, dir.path(), "broker", "3s");
        allotctl_json(&broker, &["team", "create", "ml"]);
        let parent = format!("allot-test-{}-{name}", std::process::id());
        let state_dir = dir.path().join("node-state");
        let nvml_state = dir.path().join("nvml-state.json");
        let events = dir.path().join("events.jsonl");
        std::fs::write(&events, "").expect("events file");
        World { dir, broker, parent, state_dir, nvml_state, events }
    }

    fn node(&self, fixture: &str, name: &str) -> Process {
        let state_dir = self.state_dir.display().to_string();
        let args = [
            "--host-cpus",
            "--state-dir",
            &state_dir,
            "--cgroup-parent",
            &self.parent,
            "--reconcile-interval",
            "0.5",
            // Long enough that the checks made while a GPU is unhealthy finish well
            // within it; the test then waits (with a deadline) for it to clear.
            "--xid-quiet-period",
            "8",
        ];
        let env =
            [("ALLOT_FAKE_NVML_STATE", self.nvml_state.as_path()), ("ALLOT_FAKE_NVML_EVENTS", self.events.as_path())];
        let process = start_enforcing_node(&self.broker, fixture, name, self.dir.path(), &args, &env);
        wait_until(&format!("{name} is ready"), LONG, || {
            node_statuses(&self.broker).iter().any(|(node, status)| node == name && status == "ready")
        });
        process
    }

    fn cgroup_dir(&self, controller: &str, id: &str) -> PathBuf {
        Path::new(V1_ROOT).join(controller).join(&self.parent).join(id)
    }

    fn cgroup_exists(&self, id: &str) -> bool {
        ["cpuset", "memory", "pids"].iter().any(|controller| self.cgroup_dir(controller, id).exists())
    }

    fn node_state(&self) -> Value {
        let text = std::fs::read_to_string(self.state_dir.join("state.json")).unwrap_or_else(|_| "{}".into());
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    /// The fixture's MIG layout as NVML reports it now (through the real path).
    fn mig_instances(&self, fixture: &str, gpu: u64) -> Vec<Value> {
        let output = allot_node(
            &["inventory", "--fixture", fixture, "--output", "json"],
            &[("ALLOT_FAKE_NVML_STATE", self.nvml_state.as_path())],
        );
        assert!(output.status.success(), "inventory: {}", String::from_utf8_lossy(&output.stderr));
        let inventory: Value = serde_json::from_slice(&output.stdout).expect("inventory JSON");
        inventory["gpus"]
            .as_array()
            .expect("gpus")
            .iter()
            .find(|entry| entry["index"].as_u64() == Some(gpu))
            .and_then(|entry| entry["mig"]["instances"].as_array().cloned())
            .unwrap_or_default()
    }

    /// Empties every MIG-enabled GPU of the fixture, so what appears is what Allot made.
    fn empty_mig_layouts(&self, fixture: &str) {
        allot_tests::empty_mig_layouts(fixture, &self.nvml_state);
    }

    fn inject(&self, line: &str) {
        let mut file = std::fs::OpenOptions::new().append(true).open(&self.events).expect("events file");
        writeln!(file, "{line}").expect("append event");
    }

    fn exec(&self, id: &str, script: &str) -> std::process::Output {
        let state_dir = self.state_dir.display().to_string();
        allot_node(&["exec", "--state-dir", &state_dir, "--allocation", id, "--", "sh", "-c", script], &[])
    }

    fn state_of(&self, id: &str) -> String {
        allotctl_json(&self.broker, &["alloc", "get", id])["state"].as_str().unwrap_or_default().to_owned()
    }

    fn explain(&self, id: &str) -> String {
        String::from_utf8_lossy(&allotctl(&self.broker, &["alloc", "explain", id]).stdout).into_owned()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for controller in ["cpuset", "memory", "pids"] {
            let parent = Path::new(V1_ROOT).join(controller).join(&self.parent);
            if let Ok(entries) = std::fs::read_dir(&parent) {
                for entry in entries.flatten() {
                    let _ = std::fs::remove_dir(entry.path());
                }
            }
            let _ = std::fs::remove_dir(&parent);
        }
    }
}

fn create(world: &World, args: &[&str]) -> Value {
    let mut all = vec!["alloc", "create", "--team", "ml"];
    all.extend_from_slice(args);
    allotctl_json(&world.broker, &all)
}

fn wait_enforced(world: &World, id: &str) {
    wait_until(&format!("{id} is enforced"), LONG, || world.state_of(id) == "enforced");
}

#[test]
fn a_mig_allocation_gets_its_instance_and_cgroup_exec_runs_inside_and_release_removes_both() {
    let world = World::new("mig");
    world.empty_mig_layouts("dgx-a100-mig");
    let _node = world.node("dgx-a100-mig", "a100");
    let allocation = create(&world, &["--mig", "3g.40gb", "--cpus", "1", "--memory", "256"]);
    let id = allocation["id"].as_str().expect("id").to_owned();
    let grant = &allocation["gpus"][0];
    let gpu = grant["index"].as_u64().expect("gpu index");
    let start = grant["mig"]["start"].as_u64().expect("start");
    wait_enforced(&world, &id);

    // The instance exists where the broker said, created by Allot.
    let instances = world.mig_instances("dgx-a100-mig", gpu);
    let instance = instances
        .iter()
        .find(|instance| instance["profile"] == "3g.40gb" && instance["start"].as_u64() == Some(start))
        .unwrap_or_else(|| panic!("no 3g.40gb at slot {start} on GPU {gpu}: {instances:?}"));
    let mig_uuid = instance["uuid"].as_str().expect("MIG device UUID").to_owned();
    assert_eq!(world.node_state()["allocations"][&id]["mig"][0]["created"], true);

    // The cgroup holds the broker's cores and the memory limit.
    let pus: BTreeSet<u32> =
        allocation["pus"].as_array().expect("pus").iter().map(|pu| pu.as_u64().expect("pu") as u32).collect();
    let cpuset = std::fs::read_to_string(world.cgroup_dir("cpuset", &id).join("cpuset.cpus")).expect("cpuset");
    assert_eq!(cpu_list(&cpuset), pus);
    let limit = std::fs::read_to_string(world.cgroup_dir("memory", &id).join("memory.limit_in_bytes")).expect("limit");
    assert_eq!(limit.trim(), (256u64 << 20).to_string());

    // exec runs the command inside the cgroup with the MIG device.
    let output = world.exec(
        &id,
        "cat /proc/self/cgroup; echo NVIDIA=$NVIDIA_VISIBLE_DEVICES; echo CUDA=$CUDA_VISIBLE_DEVICES; \
         grep Cpus_allowed_list /proc/self/status",
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "exec failed: {}", String::from_utf8_lossy(&output.stderr));
    let cgroup = format!("/{}/{id}", world.parent);
    for controller in ["cpuset", "memory", "pids"] {
        assert!(
            stdout.lines().any(|line| line.ends_with(&format!(":{controller}:{cgroup}"))),
            "{controller}: {stdout}"
        );
    }
    assert!(stdout.contains(&format!("NVIDIA={mig_uuid}\n")), "{stdout}");
    assert!(stdout.contains(&format!("CUDA={mig_uuid}\n")), "{stdout}");
    let allowed = stdout.lines().find_map(|line| line.strip_prefix("Cpus_allowed_list:")).expect("cpus allowed");
    assert_eq!(cpu_list(allowed), pus);
    assert!(world.explain(&id).contains("node reports: enforced"), "{}", world.explain(&id));

    // Release removes the instance, the cgroup and the record.
    allotctl_json(&world.broker, &["alloc", "release", &id]);
    wait_until("the cgroup and the MIG instance are gone", LONG, || {
        !world.cgroup_exists(&id)
            && !world.mig_instances("dgx-a100-mig", gpu).iter().any(|instance| instance["uuid"] == mig_uuid.as_str())
    });
    assert!(world.node_state()["allocations"].get(&id).is_none(), "{}", world.node_state());
}

#[test]
fn after_a_restart_reconcile_removes_orphans_and_keeps_live_allocations() {
    let world = World::new("restart");
    world.empty_mig_layouts("dgx-a100-mig");
    let mut node = world.node("dgx-a100-mig", "a100");
    let doomed = create(&world, &["--mig", "3g.40gb", "--cpus", "1"]);
    let live = create(&world, &["--mig", "2g.20gb", "--cpus", "1"]);
    let doomed_id = doomed["id"].as_str().expect("id").to_owned();
    let live_id = live["id"].as_str().expect("id").to_owned();
    wait_enforced(&world, &doomed_id);
    wait_enforced(&world, &live_id);
    let doomed_gpu = doomed["gpus"][0]["index"].as_u64().expect("gpu");
    let live_gpu = live["gpus"][0]["index"].as_u64().expect("gpu");
    let instance_uuid = |id: &str| world.node_state()["allocations"][id]["mig"][0]["uuid"].as_str().map(str::to_owned);
    let doomed_uuid = instance_uuid(&doomed_id).expect("doomed MIG uuid");
    let live_uuid = instance_uuid(&live_id).expect("live MIG uuid");

    // The daemon dies; meanwhile one allocation is released, and a crash left a
    // cgroup behind that nobody recorded.
    node.kill();
    allotctl_json(&world.broker, &["alloc", "release", &doomed_id]);
    let stray = "a-00000000000000ff";
    for controller in ["cpuset", "memory", "pids"] {
        std::fs::create_dir_all(world.cgroup_dir(controller, stray)).expect("stray cgroup");
    }
    assert!(world.cgroup_exists(&doomed_id), "nothing removes it while the daemon is down");

    let _node = world.node("dgx-a100-mig", "a100");
    wait_until("reconcile removed the released allocation and the stray cgroup", LONG, || {
        !world.cgroup_exists(&doomed_id)
            && !world.cgroup_exists(stray)
            && !world.mig_instances("dgx-a100-mig", doomed_gpu).iter().any(|i| i["uuid"] == doomed_uuid.as_str())
    });
    // The live allocation is intact: same instance, same cgroup, still enforced.
    assert!(world.mig_instances("dgx-a100-mig", live_gpu).iter().any(|i| i["uuid"] == live_uuid.as_str()));
    assert!(world.cgroup_exists(&live_id));
    wait_enforced(&world, &live_id);
    let output = world.exec(&live_id, "echo $CUDA_VISIBLE_DEVICES");
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), live_uuid);
}

#[test]
fn a_vanished_mig_instance_of_a_live_allocation_is_reported_to_the_broker() {
    let world = World::new("vanish");
    world.empty_mig_layouts("dgx-a100-mig");
    let _node = world.node("dgx-a100-mig", "a100");
    let allocation = create(&world, &["--mig", "1g.10gb"]);
    let id = allocation["id"].as_str().expect("id").to_owned();
    wait_enforced(&world, &id);
    // Someone destroys the instance behind Allot's back: empty the GPU's layout.
    world.empty_mig_layouts("dgx-a100-mig");
    wait_until("the node reports the vanished instance", LONG, || world.explain(&id).contains("E-MIG-VANISHED"));
}

#[test]
fn an_xid_takes_a_gpu_out_of_placement_until_the_quiet_period_passes() {
    let world = World::new("xid");
    let node = world.node("dgx-h100", "h100");
    wait_until("the node watches GPU events", LONG, || node.log_text().contains("watching GPU events"));
    // Application Xids (13) do not count; 79 (fallen off the bus) does.
    world.inject(r#"{"gpu": 1, "kind": "xid", "value": 13}"#);
    world.inject(r#"{"gpu": 2, "kind": "xid", "value": 79}"#);
    let unhealthy =
        || allotctl_json(&world.broker, &["nodes", "list"])[0]["unhealthy_gpus"].as_u64().expect("unhealthy count");
    wait_until("the broker sees GPU 2 unhealthy", LONG, || unhealthy() == 1);
    // No new allocation lands on it: eight GPUs cannot be had, seven avoid GPU 2.
    let refused = allotctl(&world.broker, &["alloc", "create", "--team", "ml", "--gpus", "8", "--no-wait"]);
    assert!(!refused.status.success(), "8 GPUs granted with one unhealthy");
    let seven = create(&world, &["--gpus", "7"]);
    let indices: Vec<u64> =
        seven["gpus"].as_array().expect("gpus").iter().map(|gpu| gpu["index"].as_u64().expect("index")).collect();
    assert!(!indices.contains(&2), "placed on the unhealthy GPU: {indices:?}");
    assert!(unhealthy() == 1, "GPU 1's application Xid made it unhealthy");
    // The condition clears: no new critical Xid for the quiet period.
    wait_until("GPU 2 is healthy again", LONG, || unhealthy() == 0);
    allotctl_json(&world.broker, &["alloc", "release", seven["id"].as_str().expect("id")]);
    let all = create(&world, &["--gpus", "8"]);
    assert_eq!(all["gpus"].as_array().map(Vec::len), Some(8));
}

#[test]
fn exec_refuses_an_allocation_of_another_node() {
    let world = World::new("foreign");
    let _enforcing = world.node("dgx-h100", "h100");
    let _other = start_node(&world.broker, "pcie-l40s", "l40s", world.dir.path());
    wait_until("l40s is ready", LONG, || node_statuses(&world.broker).iter().any(|(n, s)| n == "l40s" && s == "ready"));
    let foreign = create(&world, &["--gpus", "1", "--gpu-model", "L40S"]);
    let id = foreign["id"].as_str().expect("id");
    assert_eq!(foreign["node"], "l40s");
    let output = world.exec(id, "echo ran");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "exec ran a foreign allocation");
    assert!(stderr.contains("E-NOT-ON-THIS-NODE") && stderr.contains(id), "{stderr}");
    assert!(!String::from_utf8_lossy(&output.stdout).contains("ran"));
}

#[test]
fn a_missing_cgroup_controller_is_reported_and_nothing_is_left_behind() {
    let world = World::new("nopids");
    // A cgroup root whose cpuset and memory are the real hierarchies but whose
    // "pids" is a plain directory: no pids controller there.
    let root = world.dir.path().join("cgroup-root");
    std::fs::create_dir_all(root.join("pids")).expect("fake pids dir");
    std::fs::write(root.join("pids/cgroup.procs"), "").expect("looks like a hierarchy at first sight");
    for controller in ["cpuset", "memory"] {
        std::os::unix::fs::symlink(Path::new(V1_ROOT).join(controller), root.join(controller)).expect("symlink");
    }
    let state_dir = world.state_dir.display().to_string();
    let root_arg = root.display().to_string();
    let args = ["--host-cpus", "--state-dir", &state_dir, "--cgroup-parent", &world.parent, "--cgroup-root", &root_arg];
    let _node = start_enforcing_node(&world.broker, "dgx-h100", "h100", world.dir.path(), &args, &[]);
    wait_until("h100 is ready", LONG, || node_statuses(&world.broker).iter().any(|(n, s)| n == "h100" && s == "ready"));
    let allocation = create(&world, &["--gpus", "1", "--cpus", "1"]);
    let id = allocation["id"].as_str().expect("id").to_owned();
    wait_until("the node reports the missing controller", LONG, || world.explain(&id).contains("E-CGROUP-CONTROLLER"));
    let explanation = world.explain(&id);
    assert!(explanation.contains("pids"), "{explanation}");
    assert_eq!(world.state_of(&id), "bound", "a failed enforcement must not count as enforced");
    // Rolled back: no cgroup in any controller, nothing recorded.
    assert!(!world.cgroup_exists(&id), "a half-made cgroup was left");
    assert!(!root.join("pids").join(&world.parent).join(&id).exists());
    assert!(world.node_state()["allocations"].get(&id).is_none(), "{}", world.node_state());
    let output = world.exec(&id, "echo ran");
    assert!(!output.status.success());
}
