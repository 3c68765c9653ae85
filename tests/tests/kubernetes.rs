//! allot-node as the kubelet's device plugin, against the kubelet's own device
//! manager: `kubelet-peer` (plugins/kubernetes/kubelet-peer, Go) links
//! `k8s.io/kubernetes/pkg/kubelet/cm/devicemanager` with its registration
//! server, the Topology Manager (`single-numa-node`) and the pod resources
//! server. Each test runs a real broker (embedded store), an enforcing allot-node
//! on a fixture (fake NVML) with `--kubelet-socket`, and the peer; it admits pods
//! through the device manager and checks what the kubelet would give them and
//! what the broker and NVML hold.
//!
//! Needs root (the peer bind-mounts over the device manager's fixed socket
//! directory in a private mount namespace) and the peer binary, which
//! `scripts/test.sh` builds with `plugins/kubernetes/kubelet-peer/build.sh`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use allot_device_plugin::v1beta1;
use allot_tests::{
    Broker, Process, StoreKind, allot_node, allotctl_json, empty_mig_layouts, repo, start_broker, start_enforcing_node,
    wait_until,
};
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(30);
const TEAM: &str = "kubernetes";

/// The kubelet's device manager in a child process, driven over JSON lines.
struct Kubelet {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    dir: PathBuf,
}

impl Kubelet {
    fn start(dir: &Path, pod_resources: &Path, numa_nodes: u32) -> Kubelet {
        let binary = repo().join("target/go/kubelet-peer");
        assert!(
            binary.is_file(),
            "{} is missing: build it with plugins/kubernetes/kubelet-peer/build.sh (needs Go 1.26); scripts/test.sh does",
            binary.display()
        );
        // SAFETY: geteuid has no preconditions and touches no memory.
        let euid = unsafe { libc::geteuid() };
        assert!(euid == 0, "the kubelet peer needs root (it bind-mounts the device plugin directory)");
        std::fs::create_dir_all(dir).expect("plugin dir");
        let log = std::fs::File::create(dir.with_extension("log")).expect("peer log");
        let mut child = Command::new("unshare")
            .args(["-m", "--propagation", "private"])
            .arg(&binary)
            .arg("--dir")
            .arg(dir)
            .args(["--numa-nodes", &numa_nodes.to_string(), "--cpus-per-numa", "4"])
            .arg("--pod-resources-socket")
            .arg(pod_resources)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("unshare runs the kubelet peer");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut kubelet = Kubelet { child, stdin, stdout, dir: dir.to_owned() };
        let ready = kubelet.read();
        assert_eq!(ready["ready"], true, "the kubelet peer did not start: {ready}\n{}", kubelet.log());
        kubelet
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.with_extension("log")).unwrap_or_default()
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("kubelet.sock")
    }

    fn read(&mut self) -> Value {
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("peer answers");
        serde_json::from_str(&line).unwrap_or_else(|error| panic!("peer said {line:?} ({error})"))
    }

    fn call(&mut self, request: Value) -> Value {
        writeln!(self.stdin, "{request}").expect("peer reads");
        let answer = self.read();
        assert_eq!(answer["ok"], true, "{request} failed: {answer}");
        answer
    }

    fn healthy(&mut self, resource: &str) -> Vec<Value> {
        self.call(json!({"op": "devices", "resource": resource}))["devices"].as_array().cloned().unwrap_or_default()
    }

    fn allocatable(&mut self, resource: &str) -> u64 {
        self.call(json!({"op": "capacity"}))["allocatable"][resource].as_u64().unwrap_or(0)
    }

    fn wait_allocatable(&mut self, resource: &str, count: u64, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let now = self.allocatable(resource);
            if now == count {
                return;
            }
            assert!(Instant::now() < deadline, "{resource}: allocatable {now}, waited for {count}\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Admits a one-container pod asking `limits`; returns the peer's answer.
    fn admit(&mut self, uid: &str, limits: &[(&str, &str)]) -> Value {
        let limits: BTreeMap<&str, &str> = limits.iter().copied().collect();
        self.call(json!({"op": "admit", "pod": {
            "uid": uid, "namespace": "default", "name": uid,
            "containers": [{"name": "main", "limits": limits}],
        }}))
    }

    fn remove_pod(&mut self, uid: &str) {
        self.call(json!({"op": "remove_pod", "uid": uid}));
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "{}", json!({"op": "quit"}));
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
    }
}

/// A broker, an allot-node in device plugin mode and the kubelet.
struct World {
    dir: tempfile::TempDir,
    broker: Broker,
    kubelet: Kubelet,
    node: Process,
    nvml_state: PathBuf,
    events: PathBuf,
}

impl World {
    fn new(fixture: &str, numa_nodes: u32) -> World {
        let dir = tempfile::tempdir().expect("temp dir");
        let broker = start_broker(&StoreKind::Embedded(dir.path().join("store")), dir.path(), "broker", "3s");
        allotctl_json(&broker, &["team", "create", TEAM]);
        // The node daemons' subject may allocate for the kubelet's team.
        allotctl_json(&broker, &["policy", "grant", "nodes", "member", "--team", TEAM]);
        let nvml_state = dir.path().join("nvml-state.json");
        let events = dir.path().join("events.jsonl");
        std::fs::write(&events, "").expect("events file");
        let plugin_dir = dir.path().join("device-plugins");
        let pod_resources = dir.path().join("pod-resources.sock");
        let kubelet = Kubelet::start(&plugin_dir, &pod_resources, numa_nodes);
        if fixture == "dgx-a100-mig" {
            empty_mig_layouts(fixture, &nvml_state);
        }
        let state = dir.path().join("node-state").display().to_string();
        let kubelet_socket = kubelet.socket().display().to_string();
        let pod_resources = pod_resources.display().to_string();
        let cdi = dir.path().join("cdi").display().to_string();
        let args = [
            "--state-dir",
            &state,
            "--kubelet-socket",
            &kubelet_socket,
            "--pod-resources-socket",
            &pod_resources,
            "--cdi-dir",
            &cdi,
            "--release-poll",
            "0.3",
            "--release-grace",
            "2",
            "--xid-quiet-period",
            "6",
        ];
        let env = [("ALLOT_FAKE_NVML_STATE", nvml_state.as_path()), ("ALLOT_FAKE_NVML_EVENTS", events.as_path())];
        let node = start_enforcing_node(&broker, fixture, "k8s-node", dir.path(), &args, &env);
        // Every resource registered: what the tests change starts from here.
        wait_until("the plugins registered with the kubelet", LONG, || registrations(&node) >= 1);
        World { dir, broker, kubelet, node, nvml_state, events }
    }

    fn inventory(&self, fixture: &str) -> Value {
        let output = allot_node(
            &["inventory", "--fixture", fixture, "--output", "json"],
            &[("ALLOT_FAKE_NVML_STATE", self.nvml_state.as_path())],
        );
        assert!(output.status.success(), "inventory: {}", String::from_utf8_lossy(&output.stderr));
        serde_json::from_slice(&output.stdout).expect("inventory JSON")
    }

    fn live_allocations(&self) -> Vec<Value> {
        allotctl_json(&self.broker, &["alloc", "list", "--team", TEAM]).as_array().cloned().unwrap_or_default()
    }

    fn plugin_socket(&self, local: &str) -> PathBuf {
        self.kubelet.dir.join(format!("allot-{local}.sock"))
    }

    fn inject(&self, line: &str) {
        let mut file = std::fs::OpenOptions::new().append(true).open(&self.events).expect("events file");
        writeln!(file, "{line}").expect("append event");
    }
}

/// How many times the node's plugins have registered with the kubelet so far.
fn registrations(node: &Process) -> usize {
    node.log_text().matches("registered with the kubelet").count()
}

fn ids(answer: &Value, resource: &str) -> Vec<String> {
    answer["containers"]["main"]["device_ids"][resource]
        .as_array()
        .map(|ids| ids.iter().filter_map(|id| id.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

fn binding_uuids(allocation: &Value) -> BTreeSet<String> {
    allocation["gpus"]
        .as_array()
        .map(|gpus| gpus.iter().filter_map(|gpu| gpu["uuid"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

#[test]
fn four_gpus_of_one_numa_node_are_the_brokers_nvlink_choice() {
    let mut world = World::new("dgx-h100", 2);
    world.kubelet.wait_allocatable("allot.io/gpu", 8, LONG);
    let devices = world.kubelet.healthy("allot.io/gpu");
    for numa in [0, 1] {
        let on = devices.iter().filter(|device| device["numa"] == json!([numa])).count();
        assert_eq!(on, 4, "NUMA {numa}: {devices:?}");
    }

    let answer = world.kubelet.admit("pod-a", &[("allot.io/gpu", "4")]);
    assert_eq!(answer["admitted"], true, "{answer}\n{}", world.node.log_text());
    let granted = ids(&answer, "allot.io/gpu");
    assert_eq!(granted.len(), 4, "{answer}");
    let numa: BTreeSet<String> = devices
        .iter()
        .filter(|device| granted.iter().any(|id| device["id"] == id.as_str()))
        .map(|device| device["numa"].to_string())
        .collect();
    assert_eq!(numa.len(), 1, "the 4 GPUs span NUMA nodes {numa:?}");

    // The broker holds exactly these GPUs for the kubelet's team.
    let live = world.live_allocations();
    assert_eq!(live.len(), 1, "{live:?}");
    let granted_set: BTreeSet<String> = granted.iter().cloned().collect();
    assert_eq!(binding_uuids(&live[0]), granted_set);
    assert!(live[0]["owner"].as_str().unwrap_or_default().starts_with("kubelet:k8s-node/allot.io/gpu"), "{}", live[0]);
    // ... and they are NVLink-connected (through the NVSwitches).
    let inventory = world.inventory("dgx-h100");
    let position = |uuid: &str| {
        inventory["gpus"]
            .as_array()
            .expect("gpus")
            .iter()
            .position(|gpu| gpu["uuid"] == uuid)
            .expect("GPU of the fixture")
    };
    for a in &granted {
        for b in &granted {
            let level = inventory["links"]["gpu_gpu"][position(a)][position(b)].to_string();
            assert!(a == b || level.to_ascii_lowercase().contains("nv"), "{a} - {b}: {level}");
        }
    }

    // Allocate's answer: the UUIDs, the device nodes and the CDI names.
    let container = &answer["containers"]["main"];
    let visible: BTreeSet<String> = container["envs"]["NVIDIA_VISIBLE_DEVICES"]
        .as_str()
        .unwrap_or_default()
        .split(',')
        .map(str::to_owned)
        .collect();
    assert_eq!(visible, granted_set, "{container}");
    let nodes: Vec<&str> =
        container["devices"].as_array().expect("devices").iter().filter_map(|d| d["host_path"].as_str()).collect();
    for node in ["/dev/nvidiactl", "/dev/nvidia-uvm"] {
        assert!(nodes.contains(&node), "{nodes:?}");
    }
    assert_eq!(nodes.iter().filter(|node| node.trim_start_matches("/dev/nvidia").parse::<u32>().is_ok()).count(), 4);
    let cdi: BTreeSet<String> = container["cdi_devices"]
        .as_array()
        .expect("cdi")
        .iter()
        .filter_map(|d| d.as_str().map(str::to_owned))
        .collect();
    let expected: BTreeSet<String> = granted.iter().map(|uuid| format!("allot.io/gpu={uuid}")).collect();
    assert_eq!(cdi, expected);
    let spec: Value = serde_json::from_str(
        &std::fs::read_to_string(world.dir.path().join("cdi/allot.io-gpu.json")).expect("the CDI spec is written"),
    )
    .expect("CDI JSON");
    assert_eq!(spec["kind"], "allot.io/gpu");
    for uuid in &granted {
        assert!(spec["devices"].as_array().expect("devices").iter().any(|device| device["name"] == uuid.as_str()));
    }
    // The kubelet now counts 4 of 8 as in use; a second pod gets the other NUMA node's 4.
    let second = world.kubelet.admit("pod-b", &[("allot.io/gpu", "4")]);
    assert_eq!(second["admitted"], true, "{second}");
    assert!(ids(&second, "allot.io/gpu").iter().all(|id| !granted.contains(id)));
    // A container that asked for no GPU gets nothing from the plugin.
    let plain = world.kubelet.admit("pod-c", &[]);
    assert_eq!(plain["admitted"], true, "{plain}");
    assert!(plain["containers"]["main"]["envs"].get("NVIDIA_VISIBLE_DEVICES").is_none(), "{plain}");

    // The pod ends: its allocation is released at the broker.
    world.kubelet.remove_pod("pod-a");
    wait_until("pod-a's allocation is released", LONG, || world.live_allocations().len() == 1);
}

#[test]
fn a_pod_the_scheduler_extender_placed_gets_its_allocation_and_no_second_one() {
    let mut world = World::new("dgx-h100", 2);
    world.kubelet.wait_allocatable("allot.io/gpu", 8, LONG);
    // What allot-k8s does at filter time: the pod's allocation, owned by the pod.
    let owner = "pod:default/pod-x/5b0e9c1a-0000-4000-8000-00000000000x";
    let created = allotctl_json(
        &world.broker,
        &["alloc", "create", "--team", TEAM, "--gpus", "4", "--interconnect", "nvlink", "--owner", owner],
    );
    let placed = binding_uuids(&created);
    assert_eq!(placed.len(), 4, "{created}");
    // Its GPUs stay on offer to the kubelet, which must hand them to that pod.
    wait_until("the extender's GPUs are offered", LONG, || world.kubelet.healthy("allot.io/gpu").len() == 8);
    let answer = world.kubelet.admit("pod-x", &[("allot.io/gpu", "4")]);
    assert_eq!(answer["admitted"], true, "{answer}\n{}", world.node.log_text());
    let granted: BTreeSet<String> = ids(&answer, "allot.io/gpu").into_iter().collect();
    assert_eq!(granted, placed, "the kubelet gives the pod the GPUs the broker bound to it");
    let live = world.live_allocations();
    assert_eq!(live.len(), 1, "adopted, not allocated twice: {live:#?}");
    assert_eq!(live[0]["owner"], owner);
    // Another pod is placed by the plugin itself, on the other GPUs.
    let other = world.kubelet.admit("pod-y", &[("allot.io/gpu", "4")]);
    assert_eq!(other["admitted"], true, "{other}");
    assert!(ids(&other, "allot.io/gpu").iter().all(|id| !placed.contains(id)));
    // The pod ends: the plugin releases the adopted allocation too.
    world.kubelet.remove_pod("pod-x");
    wait_until("pod-x's allocation is released", LONG, || {
        world.live_allocations().iter().all(|allocation| allocation["owner"] != owner)
    });
}

#[test]
fn a_share_the_scheduler_extender_placed_keeps_its_own_memory_cap() {
    let mut world = World::new("dgx-h100", 2);
    let resource = "allot.io/gpu-share";
    world.kubelet.wait_allocatable(resource, 800, LONG);
    // 30 hundredths with a 10,000 MiB cap: not the 30 % of 80 GB the plugin would size.
    let owner = "pod:default/share-x/5b0e9c1a-0000-4000-8000-0000000000aa";
    let created = allotctl_json(
        &world.broker,
        &["alloc", "create", "--team", TEAM, "--share", "300", "--gpu-memory", "10000", "--owner", owner],
    );
    let gpu = binding_uuids(&created).into_iter().next().expect("the share's GPU");
    let answer = world.kubelet.admit("share-x", &[(resource, "30")]);
    assert_eq!(answer["admitted"], true, "{answer}\n{}", world.node.log_text());
    let units = ids(&answer, resource);
    assert_eq!(units.len(), 30);
    assert!(units.iter().all(|unit| unit.starts_with(&format!("{gpu}::"))), "units of the broker's GPU: {units:?}");
    let envs = &answer["containers"]["main"]["envs"];
    assert_eq!(envs["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"], "0=10000M", "{envs}");
    assert_eq!(envs["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"], "30", "{envs}");
    let live = world.live_allocations();
    assert_eq!(live.len(), 1, "adopted, not allocated twice: {live:#?}");
    // The kubelet still counts the GPUs' 800 hundredths, 30 of them now in use.
    assert_eq!(world.kubelet.allocatable(resource), 800);
    world.kubelet.remove_pod("share-x");
    wait_until("share-x's allocation is released", LONG, || world.live_allocations().is_empty());
}

#[test]
fn a_mig_instance_is_carved_where_the_broker_chose_and_removed_with_its_pod() {
    let mut world = World::new("dgx-a100-mig", 2);
    let resource = "allot.io/mig-3g.40gb";
    wait_until("the MIG resource is offered", LONG, || world.kubelet.allocatable(resource) > 0);
    let whole_profile = "allot.io/mig-7g.80gb";
    wait_until("7g.80gb slots are offered", LONG, || world.kubelet.allocatable(whole_profile) > 0);
    let sevens = world.kubelet.allocatable(whole_profile);
    let registered = registrations(&world.node);
    let answer = world.kubelet.admit("mig-pod", &[(resource, "1")]);
    assert_eq!(answer["admitted"], true, "{answer}\n{}", world.node.log_text());
    let mig_uuid =
        answer["containers"]["main"]["envs"]["NVIDIA_VISIBLE_DEVICES"].as_str().unwrap_or_default().to_owned();
    assert!(mig_uuid.starts_with("MIG-"), "{answer}");
    let live = world.live_allocations();
    assert_eq!(live.len(), 1, "{live:?}");
    let grant = &live[0]["gpus"][0];
    let (gpu, start) = (grant["index"].as_u64().expect("index"), grant["mig"]["start"].as_u64().expect("start"));
    assert_eq!(ids(&answer, resource), vec![format!("{}::mig{start}", grant["uuid"].as_str().expect("uuid"))]);
    let instances = |world: &World| -> Vec<Value> {
        let inventory = world.inventory("dgx-a100-mig");
        inventory["gpus"][gpu as usize]["mig"]["instances"].as_array().cloned().unwrap_or_default()
    };
    let found = instances(&world);
    assert!(
        found.iter().any(|instance| instance["uuid"] == mig_uuid.as_str() && instance["start"].as_u64() == Some(start)),
        "no instance {mig_uuid} at slot {start} on GPU {gpu}: {found:?}"
    );
    assert!(answer["containers"]["main"]["cdi_devices"].to_string().contains(&mig_uuid), "{answer}");
    // The CDI spec names the new instance, and drops it when the instance goes.
    let spec_path = world.dir.path().join("cdi/allot.io-gpu.json");
    let spec_names = |path: &Path| std::fs::read_to_string(path).unwrap_or_default().contains(&mig_uuid);
    wait_until("the CDI spec names the MIG instance", LONG, || spec_names(&spec_path));

    // The new layout reaches the kubelet as a device list, not a restart: the GPU
    // holding a 3g.40gb can no longer take a 7g.80gb.
    world.kubelet.wait_allocatable(whole_profile, sevens - 1, LONG);

    world.kubelet.remove_pod("mig-pod");
    wait_until("the allocation is released", LONG, || world.live_allocations().is_empty());
    world.kubelet.wait_allocatable(whole_profile, sevens, LONG);
    assert_eq!(registrations(&world.node), registered, "the layout change made the plugins register again");
    wait_until("the MIG instance is destroyed", LONG, || {
        !instances(&world).iter().any(|instance| instance["uuid"] == mig_uuid.as_str())
    });
    wait_until("the CDI spec forgets the MIG instance", LONG, || !spec_names(&spec_path));
}

#[test]
fn two_shares_are_packed_by_the_broker_and_never_told_the_same_units() {
    let mut world = World::new("dgx-h100", 2);
    let resource = "allot.io/gpu-share";
    world.kubelet.wait_allocatable(resource, 800, LONG);
    let first = world.kubelet.admit("share-a", &[(resource, "25")]);
    let second = world.kubelet.admit("share-b", &[(resource, "30")]);
    for answer in [&first, &second] {
        assert_eq!(answer["admitted"], true, "{answer}\n{}", world.node.log_text());
    }
    let (a, b) = (ids(&first, resource), ids(&second, resource));
    assert_eq!((a.len(), b.len()), (25, 30));
    assert!(a.iter().all(|id| !b.contains(id)), "the two containers were told the same units");
    let live = world.live_allocations();
    assert_eq!(live.len(), 2, "{live:?}");
    for (answer, units, percent) in [(&first, &a, 25), (&second, &b, 30)] {
        let gpu = units[0].split("::").next().expect("GPU of the unit").to_owned();
        assert!(units.iter().all(|unit| unit.starts_with(&format!("{gpu}::"))), "units span GPUs: {units:?}");
        // The units name the GPU the broker bound.
        let allocation = live
            .iter()
            .find(|allocation| allocation["id"] == answer["containers"]["main"]["envs"]["ALLOT_ALLOCATION_ID"])
            .unwrap_or_else(|| panic!("no allocation for {answer}"));
        assert_eq!(binding_uuids(allocation), BTreeSet::from([gpu.clone()]));
        let envs = &answer["containers"]["main"]["envs"];
        assert_eq!(envs["NVIDIA_VISIBLE_DEVICES"], gpu.as_str());
        assert_eq!(envs["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"], percent.to_string());
        let cap = envs["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"].as_str().unwrap_or_default();
        let mib: u64 = cap.trim_start_matches("0=").trim_end_matches('M').parse().expect("memory cap in MiB");
        let share_memory = allocation["gpus"][0]["share"]["memory_mib"].as_u64().expect("share memory");
        assert_eq!(mib, share_memory, "{envs}");
    }
    // The broker packs shares: both land on one GPU, leaving the others whole.
    assert_eq!(a[0].split("::").next(), b[0].split("::").next(), "the broker spread two small shares");
    assert_eq!(world.kubelet.allocatable(resource), 800);
}

#[test]
fn an_xid_turns_a_gpu_unhealthy_at_the_kubelet_and_back_without_a_restart() {
    let mut world = World::new("dgx-h100", 2);
    world.kubelet.wait_allocatable("allot.io/gpu", 8, LONG);
    let registered = registrations(&world.node);
    world.inject(r#"{"gpu": 2, "kind": "xid", "value": 79}"#);
    world.kubelet.wait_allocatable("allot.io/gpu", 7, LONG);
    world.kubelet.wait_allocatable("allot.io/gpu-share", 700, LONG);
    assert_eq!(registrations(&world.node), registered, "health changes made the plugins register again");
    world.kubelet.wait_allocatable("allot.io/gpu", 8, LONG);
    assert!(!world.node.has_exited(), "allot-node stopped");
}

#[test]
fn after_a_kubelet_restart_the_plugins_register_again() {
    let mut world = World::new("dgx-h100", 2);
    world.kubelet.wait_allocatable("allot.io/gpu", 8, LONG);
    let registered = registrations(&world.node);
    let restarted = Instant::now();
    world.kubelet.call(json!({"op": "restart"}));
    // The restarted kubelet forgets the plugins until they register again.
    let deadline = Instant::now() + Duration::from_secs(15);
    while registrations(&world.node) <= registered {
        assert!(
            Instant::now() < deadline,
            "no new registration within 15 s of the kubelet's restart:\n{}\n{}",
            world.node.log_text(),
            world.kubelet.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    world.kubelet.wait_allocatable("allot.io/gpu", 8, Duration::from_secs(15));
    println!("registered again and capacity back {:?} after the kubelet restarted", restarted.elapsed());
    assert!(world.node.log_text().contains("the kubelet restarted"), "{}", world.node.log_text());
    // The new registration lists every device, each with its NUMA node. (Admitting
    // a pod right after the peer's simulated restart sometimes hangs inside the
    // peer, where the old device manager's shutdown blocks in PluginDisconnected,
    // so allocation after a restart is left to the tests above.)
    let devices = world.kubelet.healthy("allot.io/gpu");
    assert_eq!(devices.len(), 8, "{devices:?}");
    assert!(devices.iter().all(|device| device["numa"].as_array().is_some_and(|numa| numa.len() == 1)));
    // SIGTERM: allot-node stops cleanly and takes its plugin sockets with it.
    let socket = world.plugin_socket("gpu");
    assert!(socket.exists());
    let status = world.node.terminate(Duration::from_secs(10)).expect("allot-node exits on SIGTERM");
    assert!(status.success(), "{status:?}\n{}", world.node.log_text());
    assert!(!socket.exists(), "the plugin socket is left behind");
}

/// Calls a plugin's gRPC service the way a misbehaving kubelet would.
fn plugin_call<T>(
    socket: &Path,
    call: impl AsyncFnOnce(v1beta1::device_plugin_client::DevicePluginClient<tonic::transport::Channel>) -> T,
) -> T {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let channel = allot_device_plugin::kubelet::connect(socket).await.expect("plugin socket");
        call(v1beta1::device_plugin_client::DevicePluginClient::new(channel)).await
    })
}

#[test]
fn allocate_refuses_ids_no_allocation_granted_and_leaves_nothing_behind() {
    let mut world = World::new("dgx-h100", 2);
    world.kubelet.wait_allocatable("allot.io/gpu", 8, LONG);
    let socket = world.plugin_socket("gpu");
    let devices: Vec<String> =
        world.kubelet.healthy("allot.io/gpu").iter().filter_map(|d| d["id"].as_str().map(str::to_owned)).collect();
    let allocate = |ids: Vec<String>| {
        plugin_call(&socket, async move |mut client| {
            client
                .allocate(v1beta1::AllocateRequest {
                    container_requests: vec![v1beta1::ContainerAllocateRequest { devices_ids: ids }],
                })
                .await
        })
    };
    // Unknown ids.
    let unknown = allocate(vec!["GPU-00000000-0000-0000-0000-000000000000".into()]).expect_err("unknown id");
    assert_eq!(unknown.code(), tonic::Code::InvalidArgument, "{unknown:?}");
    assert!(unknown.message().contains("GPU-00000000-0000-0000-0000-000000000000"), "{unknown:?}");
    let malformed = allocate(vec!["GPU-x::07".into()]).expect_err("a share id on the GPU resource");
    assert_eq!(malformed.code(), tonic::Code::InvalidArgument);
    // More devices than advertised (a repeated one to make nine).
    let mut nine = devices.clone();
    nine.push(devices[0].clone());
    let too_many = allocate(nine).expect_err("nine of eight");
    assert_eq!(too_many.code(), tonic::Code::InvalidArgument, "{too_many:?}");
    // A subset of what GetPreferredAllocation granted together.
    let preferred = plugin_call(&socket, {
        let devices = devices.clone();
        async move |mut client| {
            client
                .get_preferred_allocation(v1beta1::PreferredAllocationRequest {
                    container_requests: vec![v1beta1::ContainerPreferredAllocationRequest {
                        available_device_i_ds: devices,
                        must_include_device_i_ds: vec![],
                        allocation_size: 2,
                    }],
                })
                .await
        }
    })
    .expect("preferred")
    .into_inner();
    let pair = preferred.container_responses[0].device_i_ds.clone();
    assert_eq!(pair.len(), 2);
    let subset = allocate(vec![pair[0].clone()]).expect_err("half of a grant");
    assert_eq!(subset.code(), tonic::Code::FailedPrecondition, "{subset:?}");
    assert!(subset.message().contains("E-NOT-GRANTED"), "{subset:?}");
    // Nothing was created by the refusals: only the preferred pair is held,
    // and it goes when no pod claims it within the grace period.
    assert_eq!(world.live_allocations().len(), 1);
    wait_until("the unclaimed grant is released", LONG, || world.live_allocations().is_empty());
}

#[test]
fn without_a_kubelet_the_node_serves_the_broker_and_retries() {
    let dir = tempfile::tempdir().expect("temp dir");
    let broker = start_broker(&StoreKind::Embedded(dir.path().join("store")), dir.path(), "broker", "3s");
    let state = dir.path().join("state").display().to_string();
    let absent = dir.path().join("no-kubelet/kubelet.sock").display().to_string();
    let mut node = start_enforcing_node(
        &broker,
        "dgx-h100",
        "lonely",
        dir.path(),
        &["--state-dir", &state, "--kubelet-socket", &absent, "--cdi-dir", "none"],
        &[],
    );
    wait_until("the node is ready at the broker", LONG, || {
        allot_tests::node_statuses(&broker).iter().any(|(name, status)| name == "lonely" && status == "ready")
    });
    wait_until("it says it cannot register, twice (backoff)", LONG, || {
        node.log_text().matches("cannot register with the kubelet").count() >= 2
    });
    assert!(!node.has_exited());
    // Work placed through the broker is still enforced on it.
    allotctl_json(&broker, &["team", "create", "ml"]);
    let created = allotctl_json(&broker, &["alloc", "create", "--team", "ml", "--gpus", "2"]);
    let id = created["id"].as_str().expect("allocation id").to_owned();
    wait_until("the allocation is enforced", LONG, || {
        allotctl_json(&broker, &["alloc", "get", &id])["state"] == "enforced"
    });
}

#[test]
fn an_invalid_resource_domain_is_refused_at_startup_with_its_rule() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = allot_node(
        &[
            "run",
            "--broker",
            "127.0.0.1:1",
            "--fixture",
            "dgx-h100",
            "--kubelet-socket",
            &dir.path().join("kubelet.sock").display().to_string(),
            "--resource-domain",
            "Allot_IO",
        ],
        &[],
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("E-RESOURCE-NAME") && stderr.contains("DNS subdomain"), "{stderr}");
}
