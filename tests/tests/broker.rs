//! The broker end to end, on etcd and on the embedded store: two DGX H100 node
//! daemons and a MIG-enabled DGX A100 (fixtures through the fake NVML), allotctl,
//! and a gRPC client that fires 200 requests at once.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use allot_api::proto;
use allot_api::proto::allocation_service_client::AllocationServiceClient;
use allot_tests::{
    Broker, StoreKind, allotctl, allotctl_json, node_statuses, spawn_standby_broker, start_broker, start_broker_on,
    start_node, wait_until,
};
use serde_json::Value;

fn cpu_list(text: &str) -> BTreeSet<u32> {
    text.split(',')
        .filter(|part| !part.is_empty())
        .flat_map(|part| match part.split_once('-') {
            Some((a, b)) => a.parse::<u32>().expect("cpu")..=b.parse::<u32>().expect("cpu"),
            None => part.parse::<u32>().expect("cpu")..=part.parse::<u32>().expect("cpu"),
        })
        .collect()
}

/// NUMA node → CPUs of the dgx-h100 fixture, from its own inventory.
fn dgx_h100_numa_cpus() -> Vec<BTreeSet<u32>> {
    let output = std::process::Command::new(allot_tests::binary("allot-node"))
        .args(["inventory", "--fixture", "dgx-h100", "--output", "json"])
        .output()
        .expect("allot-node runs");
    let inventory: Value = serde_json::from_slice(&output.stdout).expect("inventory JSON");
    inventory["cpu"]["numa_nodes"]
        .as_array()
        .expect("numa nodes")
        .iter()
        .map(|node| cpu_list(node["cpus"].as_str().expect("cpus")))
        .collect()
}

fn create(broker: &Broker, args: &[&str]) -> Value {
    let mut all = vec!["alloc", "create", "--team", "ml"];
    all.extend_from_slice(args);
    allotctl_json(broker, &all)
}

fn refused(broker: &Broker, args: &[&str], code: &str, mention: &str) {
    let before = allotctl_json(broker, &["alloc", "list", "--all"]);
    let output = allotctl(broker, args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "allotctl {args:?} should fail");
    assert!(
        stderr.contains(code) && stderr.contains(mention),
        "allotctl {args:?}: expected {code} mentioning {mention:?}, got: {stderr}"
    );
    let after = allotctl_json(broker, &["alloc", "list", "--all"]);
    assert_eq!(before, after, "a refused request changed state: {args:?}");
}

fn gpus_of(allocation: &Value) -> Vec<(String, u64)> {
    let node = allocation["node"].as_str().expect("node").to_owned();
    allocation["gpus"]
        .as_array()
        .expect("gpus")
        .iter()
        .map(|gpu| (node.clone(), gpu["index"].as_u64().expect("index")))
        .collect()
}

async fn fire_concurrently(
    address: &str,
    token: &Path,
    count: usize,
) -> (Vec<proto::Allocation>, Vec<proto::Allocation>) {
    let bearer = allot_api::bearer::Bearer::from_file(token).expect("admin token");
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut tasks = Vec::new();
    for index in 0..count {
        let mut client = AllocationServiceClient::with_interceptor(channel.clone(), bearer.clone());
        tasks.push(tokio::spawn(async move {
            let spec = proto::AllocationSpec {
                team: "ml".into(),
                gpus: Some(proto::allocation_spec::Gpus::Whole(proto::WholeGpus {
                    count: 1,
                    models: vec!["H100".into()],
                })),
                cpus: 1,
                owner: Some(format!("job-{index}")),
                ..Default::default()
            };
            client.create(proto::CreateAllocationRequest { spec: Some(spec), dry_run: false, no_wait: false }).await
        }));
    }
    let mut granted = Vec::new();
    let mut queued = Vec::new();
    for task in tasks {
        match task.await.expect("task") {
            Ok(response) => {
                let allocation = response.into_inner().allocation.expect("allocation");
                if allocation.state == proto::AllocationState::Pending as i32 {
                    queued.push(allocation);
                } else {
                    granted.push(allocation);
                }
            }
            Err(status) => panic!("unexpected failure: {status}"),
        }
    }
    (granted, queued)
}

fn scenario(store: StoreKind, dir: &Path) {
    let broker = start_broker(&store, dir, "broker", "2s");
    let _node_a = start_node(&broker, "dgx-h100", "node-a", dir);
    let mut node_b = start_node(&broker, "dgx-h100", "node-b", dir);
    let _node_mig = start_node(&broker, "dgx-a100-mig", "node-mig", dir);
    wait_until("three nodes are ready", Duration::from_secs(30), || {
        node_statuses(&broker).iter().filter(|(_, status)| status == "ready").count() == 3
    });
    allotctl_json(&broker, &["team", "create", "ml"]);

    // Bad input: refused with a clear status, state unchanged.
    refused(&broker, &["alloc", "create", "--team", "nobody", "--gpus", "1"], "NOT_FOUND", "nobody");
    refused(
        &broker,
        &["alloc", "create", "--team", "ml", "--gpus", "9", "--interconnect", "nvlink"],
        "INVALID_ARGUMENT",
        "E-IMPOSSIBLE",
    );
    refused(&broker, &["alloc", "create", "--team", "ml", "--mig", "9g.99gb"], "INVALID_ARGUMENT", "9g.99gb");
    refused(
        &broker,
        &["alloc", "create", "--team", "ml", "--gpus", "1", "--gpu-model", "B300"],
        "INVALID_ARGUMENT",
        "B300",
    );
    refused(&broker, &["alloc", "get", "a-00000000ffffffff"], "NOT_FOUND", "a-00000000ffffffff");
    refused(&broker, &["alloc", "release", "not-an-id"], "", "allocation id");

    // An 8-GPU NVLink request gets a whole node.
    let whole = create(&broker, &["--gpus", "8", "--interconnect", "nvlink", "--gpu-model", "H100"]);
    let whole_gpus = gpus_of(&whole);
    assert_eq!(whole_gpus.len(), 8);
    assert_eq!(whole_gpus.iter().map(|(_, index)| *index).collect::<BTreeSet<_>>().len(), 8, "{whole}");
    assert_eq!(whole["state"], "bound");

    // A 4-GPU NVLink request: 4 GPUs on the other node, cores of their NUMA node.
    let four = create(&broker, &["--gpus", "4", "--interconnect", "nvlink", "--cpus", "16", "--gpu-model", "H100"]);
    assert_ne!(four["node"], whole["node"], "the 8-GPU node is full");
    assert_eq!(four["gpus"].as_array().expect("gpus").len(), 4);
    assert_eq!(four["cpus"].as_array().expect("cores").len(), 16);
    let numa = dgx_h100_numa_cpus();
    let pus: BTreeSet<u32> =
        four["pus"].as_array().expect("pus").iter().map(|pu| pu.as_u64().expect("pu") as u32).collect();
    let local = numa.iter().position(|cpus| pus.is_subset(cpus));
    assert!(local.is_some(), "cores {pus:?} are not all on one NUMA node");
    assert_eq!(four["numa_nodes"].as_array().expect("numa").len(), 1, "{four}");

    // A 3g.40gb MIG instance on the A100 node gets a valid free slot.
    let mig = create(&broker, &["--mig", "3g.40gb"]);
    assert_eq!(mig["node"], "node-mig");
    let grant = &mig["gpus"][0]["mig"];
    assert_eq!(grant["profile"], "3g.40gb");
    assert!([0, 4].contains(&grant["start"].as_u64().expect("start")), "{grant}");
    let second_mig = create(&broker, &["--mig", "3g.40gb"]);
    let overlap = second_mig["gpus"][0]["index"] == mig["gpus"][0]["index"]
        && second_mig["gpus"][0]["mig"]["start"] == grant["start"];
    assert!(!overlap, "two 3g.40gb instances on one slot: {mig} {second_mig}");
    let explanation = allotctl(&broker, &["alloc", "explain", mig["id"].as_str().expect("id")]);
    assert!(explanation.status.success());
    assert!(String::from_utf8_lossy(&explanation.stdout).contains("node-mig"));

    // Release everything, then 200 concurrent 1-GPU requests for the 16 H100s.
    for allocation in [&whole, &four, &mig, &second_mig] {
        let released = allotctl_json(&broker, &["alloc", "release", allocation["id"].as_str().expect("id")]);
        assert_eq!(released["state"], "released");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let (granted, queued) = runtime.block_on(fire_concurrently(&broker.grpc, &broker.admin_token, 200));
    assert_eq!(granted.len(), 16, "exactly the 16 free GPUs are granted");
    assert_eq!(queued.len(), 184, "the rest wait in the queue");
    assert!(queued.iter().all(|allocation| allocation.binding.is_none() && !allocation.waiting_reason.is_empty()));
    let mut devices = BTreeSet::new();
    for allocation in &granted {
        let binding = allocation.binding.as_ref().expect("binding");
        assert_eq!(binding.gpus.len(), 1);
        assert!(devices.insert((binding.node.clone(), binding.gpus[0].index)), "GPU granted twice: {binding:?}");
    }

    // After a broker restart every allocation is still there.
    // The queue's positions are recomputed by each scheduling round, not stored.
    let without_queue_places = |mut list: Value| {
        for allocation in list.as_array_mut().expect("list") {
            let fields = allocation.as_object_mut().expect("allocation");
            fields.remove("queue_position");
            fields.remove("waiting_reason");
        }
        list
    };
    let before: Value = without_queue_places(allotctl_json(&broker, &["alloc", "list", "--all"]));
    let address = broker.grpc.clone();
    drop(broker);
    let broker = start_broker_on(&store, dir, "broker-restarted", "2s", &address);
    let after: Value = without_queue_places(allotctl_json(&broker, &["alloc", "list", "--all"]));
    assert_eq!(before, after, "allocations changed across a restart");
    // The nodes find the new broker: their heartbeats arrive there.
    let restarted_at =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as u64;
    wait_until("every node heartbeats to the restarted broker", Duration::from_secs(30), || {
        let nodes = allotctl_json(&broker, &["nodes", "list"]);
        nodes.as_array().is_some_and(|nodes| {
            nodes.len() == 3
                && nodes.iter().all(|node| {
                    node["status"] == "ready" && node["last_heartbeat_ms"].as_u64().unwrap_or(0) > restarted_at + 1
                })
        })
    });
    // Still nothing more to give: the restart did not forget what was granted.
    let output =
        allotctl(&broker, &["alloc", "create", "--team", "ml", "--gpus", "1", "--gpu-model", "H100", "--no-wait"]);
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("RESOURCE_EXHAUSTED"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // A killed node daemon: its node is lost within the timeout, and so are its allocations.
    node_b.kill();
    wait_until("node-b is lost", Duration::from_secs(10), || {
        node_statuses(&broker).iter().any(|(name, status)| name == "node-b" && status == "lost")
    });
    let on_b = allotctl_json(&broker, &["alloc", "list", "--node", "node-b"]);
    let on_b = on_b.as_array().expect("list");
    assert_eq!(on_b.len(), 8);
    assert!(on_b.iter().all(|allocation| allocation["state"] == "lost"), "{on_b:?}");
    // It comes back: its allocations hold again.
    let _node_b = start_node(&broker, "dgx-h100", "node-b", dir);
    wait_until("node-b's allocations are bound again", Duration::from_secs(30), || {
        let list = allotctl_json(&broker, &["alloc", "list", "--node", "node-b"]);
        list.as_array().is_some_and(|list| list.len() == 8 && list.iter().all(|a| a["state"] == "bound"))
    });
}

#[test]
fn broker_on_etcd() {
    let dir = tempfile::tempdir().expect("temp dir");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let etcd = runtime.block_on(allot_store::testing::EtcdHarness::start());
    scenario(StoreKind::Etcd(etcd.endpoint()), dir.path());
}

#[test]
fn broker_on_the_embedded_store() {
    let dir = tempfile::tempdir().expect("temp dir");
    scenario(StoreKind::Embedded(dir.path().join("state")), dir.path());
}

#[test]
fn a_second_broker_on_the_same_etcd_waits_until_it_leads() {
    let dir = tempfile::tempdir().expect("temp dir");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let etcd = runtime.block_on(allot_store::testing::EtcdHarness::start());
    let store = StoreKind::Etcd(etcd.endpoint());
    let first = start_broker(&store, dir.path(), "first", "3s");
    allotctl_json(&first, &["team", "create", "ml"]);
    let (mut second, ready) = spawn_standby_broker(&store, dir.path(), "second");
    std::thread::sleep(Duration::from_secs(2));
    assert!(!ready.exists(), "the second broker serves while the first leads:\n{}", second.log_text());
    assert!(!second.has_exited(), "the standby broker exited:\n{}", second.log_text());
    drop(first);
    // The first's lease runs out (10 s), then the second takes over with the same state.
    wait_until("the second broker leads", Duration::from_secs(30), || ready.exists());
    let text = std::fs::read_to_string(&ready).expect("ready file");
    let addresses: Value = serde_json::from_str(&text).expect("the ready file is written whole");
    let url = addresses["url"].as_str().expect("url").to_owned();
    let output = std::process::Command::new(allot_tests::binary("allotctl"))
        .args(["--broker", &url, "team", "list", "-o", "json"])
        .env("ALLOT_TOKEN_FILE", dir.path().join("admin.token"))
        .output()
        .expect("allotctl");
    assert!(String::from_utf8_lossy(&output.stdout).contains("\"ml\""), "{}", String::from_utf8_lossy(&output.stdout));
}

/// Idempotent creates: a create repeated with its request id gets the allocation
/// that id made, a different ask under the same id is refused, and after the
/// leading broker is killed (SIGKILL, also while a create is in flight) the new
/// leader answers the same: every request id ends with exactly one allocation.
#[test]
fn a_create_retried_with_its_request_id_returns_one_allocation_across_a_failover() {
    let dir = tempfile::tempdir().expect("temp dir");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let etcd = runtime.block_on(allot_store::testing::EtcdHarness::start());
    let store = StoreKind::Etcd(etcd.endpoint());
    let mut first = start_broker(&store, dir.path(), "first", "3s");
    allotctl_json(&first, &["team", "create", "ml"]);
    let mut node = start_node(&first, "dgx-h100", "node-a", dir.path());
    wait_until("the node registers", Duration::from_secs(20), || !node_statuses(&first).is_empty());

    let made = create(&first, &["--gpus", "1", "--request-id", "job-1"]);
    let again = create(&first, &["--gpus", "1", "--request-id", "job-1"]);
    assert_eq!(made["id"], again["id"], "the same request id made a second allocation: {again}");
    assert_eq!(made["request_id"], "job-1");
    refused(
        &first,
        &["alloc", "create", "--team", "ml", "--gpus", "2", "--request-id", "job-1"],
        "E-REQUEST-ID-REUSED",
        "job-1",
    );
    let other = create(&first, &["--gpus", "1"]);
    assert_ne!(other["id"], made["id"], "a create without a request id gets its own allocation");

    // A create in flight when the leader dies: it may or may not have been stored.
    let (second, ready) = spawn_standby_broker(&store, dir.path(), "second");
    let in_flight = std::process::Command::new(allot_tests::binary("allotctl"))
        .args(["--broker", &first.url, "-o", "json", "alloc", "create", "--team", "ml", "--gpus", "1"])
        .args(["--request-id", "job-2"])
        .env("ALLOT_TOKEN_FILE", &first.admin_token)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("allotctl");
    std::thread::sleep(Duration::from_millis(20));
    first.process.kill();
    node.kill();
    let mut in_flight = in_flight;
    let _ = in_flight.wait();
    wait_until("the second broker leads", Duration::from_secs(40), || ready.exists());
    let mut second_broker = allot_tests::standby_leads(second, &ready, dir.path());
    let retried = create(&second_broker, &["--gpus", "1", "--request-id", "job-1"]);
    assert_eq!(retried["id"], made["id"], "after the failover the request id made a second allocation: {retried}");
    // The in-flight create retried: one allocation for job-2, stored or made now
    // (or refused for capacity, when the node is already lost: then none).
    let output = allotctl(&second_broker, &["alloc", "create", "--team", "ml", "--gpus", "1", "--request-id", "job-2"]);
    let all = allotctl_json(&second_broker, &["alloc", "list", "--all"]);
    let count =
        |key: &str| all.as_array().expect("list").iter().filter(|allocation| allocation["request_id"] == key).count();
    assert_eq!(count("job-1"), 1, "{all}");
    assert_eq!(
        count("job-2"),
        usize::from(output.status.success()),
        "{all}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    second_broker.process.kill();
}

/// What `allot_learned_requests` says on the broker's `/metrics`.
fn learned_requests(broker: &Broker) -> Option<u64> {
    use std::io::{Read, Write};
    let token = std::fs::read_to_string(&broker.admin_token).ok()?;
    let mut stream = std::net::TcpStream::connect(&broker.http).ok()?;
    let request = format!(
        "GET /metrics HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        broker.http,
        token.trim()
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    text.lines().find_map(|line| line.strip_prefix("allot_learned_requests ")).and_then(|n| n.trim().parse().ok())
}

/// The task mix that share packing learns (shares and MIG requests) is stored
/// and comes back after a restart, before any new request arrives.
#[test]
fn the_learned_task_mix_survives_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = StoreKind::Embedded(dir.path().join("store"));
    let mut broker = start_broker(&store, dir.path(), "broker", "3s");
    allotctl_json(&broker, &["team", "create", "ml"]);
    let mut node = start_node(&broker, "dgx-a100-mig", "node-mig", dir.path());
    wait_until("the node registers", Duration::from_secs(20), || !node_statuses(&broker).is_empty());
    assert_eq!(learned_requests(&broker), Some(0));
    create(&broker, &["--share", "250", "--gpu-memory", "8000", "--cpus", "1"]);
    create(&broker, &["--share", "500", "--gpu-memory", "8000", "--cpus", "1"]);
    create(&broker, &["--mig", "3g.40gb", "--cpus", "1"]);
    assert_eq!(learned_requests(&broker), Some(3), "shares and MIG requests are counted");
    // The ticker stores the mix within a second; give it a few.
    std::thread::sleep(Duration::from_secs(3));
    let address = broker.grpc.clone();
    broker.process.kill();
    node.kill();
    let restarted = start_broker_on(&store, dir.path(), "broker-restarted", "3s", &address);
    assert_eq!(learned_requests(&restarted), Some(3), "the mix was not stored:\n{}", restarted.process.log_text());
}

/// A node that was lost when the broker stopped is still lost after the restart,
/// and its allocations hold again once it comes back.
#[test]
fn a_lost_node_stays_lost_across_a_broker_restart_until_it_returns() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = StoreKind::Embedded(dir.path().join("state"));
    let broker = start_broker(&store, dir.path(), "broker", "1s");
    let mut node = start_node(&broker, "dgx-h100", "node-a", dir.path());
    wait_until("node-a is ready", Duration::from_secs(30), || {
        node_statuses(&broker).iter().any(|(name, status)| name == "node-a" && status == "ready")
    });
    allotctl_json(&broker, &["team", "create", "ml"]);
    let allocation = create(&broker, &["--gpus", "2"]);
    node.kill();
    wait_until("node-a is lost", Duration::from_secs(10), || {
        node_statuses(&broker).iter().any(|(name, status)| name == "node-a" && status == "lost")
    });
    let address = broker.grpc.clone();
    drop(broker);
    let broker = start_broker_on(&store, dir.path(), "broker-restarted", "1s", &address);
    assert!(
        node_statuses(&broker).iter().any(|(name, status)| name == "node-a" && status == "lost"),
        "node-a should still be lost: {:?}",
        node_statuses(&broker)
    );
    let id = allocation["id"].as_str().expect("id");
    assert_eq!(allotctl_json(&broker, &["alloc", "get", id])["state"], "lost");
    let _node = start_node(&broker, "dgx-h100", "node-a", dir.path());
    wait_until("the allocation is bound again", Duration::from_secs(30), || {
        allotctl_json(&broker, &["alloc", "get", id])["state"] == "bound"
    });
}

/// A node may not come back with different GPUs under a live allocation.
#[test]
fn a_node_cannot_re_register_without_the_gpus_its_allocations_hold() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = StoreKind::Embedded(dir.path().join("state"));
    let broker = start_broker(&store, dir.path(), "broker", "30s");
    let mut node = start_node(&broker, "dgx-h100", "node-a", dir.path());
    wait_until("node-a is ready", Duration::from_secs(30), || {
        node_statuses(&broker).iter().any(|(name, status)| name == "node-a" && status == "ready")
    });
    allotctl_json(&broker, &["team", "create", "ml"]);
    create(&broker, &["--gpus", "1"]);
    node.kill();
    // The same name, now on other hardware (an L40S box): refused, and the
    // allocation keeps its GPU.
    let mut imposter = start_node(&broker, "pcie-l40s", "node-a", dir.path());
    wait_until("the registration is refused", Duration::from_secs(30), || {
        imposter.log_text().contains("E-HARDWARE-CHANGED")
    });
    imposter.kill();
    let nodes = allotctl_json(&broker, &["nodes", "list"]);
    assert!(nodes.to_string().contains("H100"), "the registration must not have changed: {nodes}");
}
