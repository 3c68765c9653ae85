//! Broker benchmarks, each against a baseline measured in the same run:
//!
//! 1. Allocations per second through gRPC with 32 concurrent clients on the etcd
//!    store, against sequential single-key etcd transactions (what a broker that
//!    wrote one allocation per transaction could reach at best).
//! 2. Broker restart to ready with 100,000 stored allocations, against reading
//!    those keys with one range.
//!
//! Run: `cargo run --release -p allot-tests --example broker_bench` after
//! `cargo build --release --workspace` (it starts the release allot-broker).

use std::sync::Arc;
use std::time::{Duration, Instant};

use allot_api::allocation::{
    Allocation, AllocationId, AllocationState, Binding, GpuDemand, GpuGrant, Interconnect, ValidatedRequest,
};
use allot_api::bearer::Bearer;
use allot_api::proto;
use allot_api::topology::NodeInventory;
use allot_api::units::MiB;
use allot_store::{Compare, Op, Store, Txn, layout};
use allot_tests::{StoreKind, start_broker};

const CLIENTS: usize = 32;
/// Enough GPUs (8 each) for every client to hold one at a time, with room to
/// choose; see `churn` for the large-cluster run.
const SMALL_CLUSTER: usize = 16;
const LARGE_CLUSTER: usize = 500;

fn inventory() -> NodeInventory {
    let path = allot_tests::repo().join("broker/placement/tests/data/dgx-h100.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    let mut value: serde_json::Value = serde_json::from_str(&text).expect("inventory JSON");
    if let Some(object) = value.as_object_mut() {
        object.remove("links");
    }
    serde_json::from_value(value).expect("inventory")
}

/// Sequential single-key CAS transactions: the one-write-per-allocation baseline.
async fn sequential_txns(store: &dyn Store, count: usize) -> f64 {
    let started = Instant::now();
    for index in 0..count {
        let key = format!("/bench/sequential/{index}");
        let txn = Txn::new().when([Compare::absent(key.clone())]).then([Op::put(key, b"x".to_vec())]);
        assert!(store.txn(txn).await.expect("txn").succeeded);
    }
    count as f64 / started.elapsed().as_secs_f64()
}

async fn register_nodes(address: &str, inventory: &NodeInventory, nodes: usize, bearer: Bearer) {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut client = proto::node_service_client::NodeServiceClient::with_interceptor(channel.clone(), bearer.clone());
    for index in 0..nodes {
        let mut node = inventory.clone();
        node.hostname = format!("dgx-{index:04}");
        client
            .register(proto::RegisterNodeRequest {
                node_name: node.hostname.clone(),
                daemon_version: "bench".into(),
                inventory: Some((&node).into()),
            })
            .await
            .expect("register");
    }
    proto::admin_service_client::AdminServiceClient::with_interceptor(channel, bearer)
        .create_team(proto::CreateTeamRequest { name: "bench".into(), ..Default::default() })
        .await
        .expect("team");
}

/// `count` one-GPU allocations from `CLIENTS` concurrent clients, each released
/// right after it was granted (jobs come and go); allocations/s and their latency.
/// Every cycle writes twice (the grant and the release), both persisted.
async fn churn(address: &str, count: usize, release: bool, bearer: Bearer) -> (f64, Vec<Duration>) {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let started = Instant::now();
    let per_client = count / CLIENTS;
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let mut client = proto::allocation_service_client::AllocationServiceClient::with_interceptor(
            channel.clone(),
            bearer.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per_client);
            for _ in 0..per_client {
                let spec = proto::AllocationSpec {
                    team: "bench".into(),
                    gpus: Some(proto::allocation_spec::Gpus::Whole(proto::WholeGpus { count: 1, models: vec![] })),
                    cpus: 1,
                    ..Default::default()
                };
                let begun = Instant::now();
                let reply = client
                    .create(proto::CreateAllocationRequest { spec: Some(spec), dry_run: false, no_wait: true })
                    .await
                    .expect("create")
                    .into_inner();
                latencies.push(begun.elapsed());
                let id = reply.allocation.expect("allocation").id;
                if release {
                    client.release(proto::AllocationRef { id }).await.expect("release");
                }
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("client"));
    }
    ((per_client * CLIENTS) as f64 / started.elapsed().as_secs_f64(), latencies)
}

/// Average commands per persisted batch, from the broker's /metrics.
async fn reqwest_metrics(http: &str, token: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(http).await else { return "unavailable".into() };
    let request = format!(
        "GET /metrics HTTP/1.1\r\nHost: {http}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        token.trim()
    );
    if stream.write_all(request.as_bytes()).await.is_err() {
        return "unavailable".into();
    }
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text).await;
    let value = |name: &str| {
        text.lines()
            .find(|line| line.starts_with(name))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
    };
    match (value("allot_writer_batches_total"), value("allot_writer_commands_total")) {
        (Some(batches), Some(commands)) if batches > 0.0 => {
            format!("{batches:.0} batches, {:.1} commands per batch", commands / batches)
        }
        _ => "unavailable".into(),
    }
}

fn percentile(latencies: &mut [Duration], fraction: f64) -> Duration {
    latencies.sort();
    latencies[((latencies.len() as f64 - 1.0) * fraction) as usize]
}

/// Writes `count` allocations (and the nodes they sit on) straight into the store.
async fn seed(store: &dyn Store, inventory: &NodeInventory, count: usize) {
    let nodes = count.div_ceil(8);
    let mut ops = Vec::new();
    let flush = |ops: Vec<Op>| async move {
        if !ops.is_empty() {
            assert!(store.txn(Txn::new().then(ops)).await.expect("seed txn").succeeded);
        }
    };
    // What a registration stores: the shape is computed once, as the broker does.
    let shape = allot_broker::state::placement_shape(inventory);
    for index in 0..nodes {
        let mut node = inventory.clone();
        node.hostname = format!("dgx-{index:05}");
        let record = serde_json::json!({
            "name": node.hostname, "inventory": node, "epoch": 1, "registered_at_ms": 0, "shape": shape
        });
        ops.push(Op::put(layout::node(&node.hostname), serde_json::to_vec(&record).expect("json")));
        // A registration is ~40 KiB; a transaction carries at most 1 MiB.
        if ops.len() == 16 {
            flush(std::mem::take(&mut ops)).await;
        }
    }
    let team = serde_json::json!({ "name": "bench", "created_at_ms": 0 });
    ops.push(Op::put(layout::team("bench"), serde_json::to_vec(&team).expect("json")));
    for index in 0..count {
        let node = format!("dgx-{:05}", index / 8);
        let gpu = &inventory.gpus[index % 8];
        let request = ValidatedRequest::new(
            "bench".parse().expect("team"),
            GpuDemand::Whole { count: 1, models: vec![] },
            1,
            MiB(0),
            Interconnect::Any,
            false,
            None,
            None,
        )
        .expect("request");
        let allocation = Allocation {
            id: AllocationId::from_u64(index as u64 + 1),
            request,
            state: AllocationState::Bound,
            binding: Some(Binding {
                node: node.parse().expect("node"),
                gpus: vec![GpuGrant {
                    index: gpu.index,
                    uuid: gpu.uuid.clone(),
                    pci_bus_id: gpu.pci_bus_id.to_string(),
                    mig: None,
                    share: None,
                    nic: None,
                }],
                cpus: vec![],
                cores: vec![(index % 8) as u32],
                memory: MiB(0),
                numa_nodes: vec![],
            }),
            explanation: "seeded".into(),
            created_at_ms: 0,
            updated_at_ms: 0,
            generation: 1,
            quota: Default::default(),
        };
        ops.push(Op::put(layout::allocation(allocation.id), serde_json::to_vec(&allocation).expect("json")));
        if ops.len() == 100 {
            flush(std::mem::take(&mut ops)).await;
        }
    }
    ops.push(Op::put(layout::counter("allocation"), (count + 1).to_string().into_bytes()));
    flush(ops).await;
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let inventory = inventory();
    runtime.block_on(async {
        // 1. Throughput on etcd.
        let etcd = allot_store::testing::EtcdHarness::start().await;
        let store: Arc<dyn Store> = Arc::new(etcd.store().await);
        let baseline = sequential_txns(store.as_ref(), 2000).await;
        println!("| measure | result |");
        println!("|---|---|");
        println!("| sequential single-key etcd transactions (baseline) | {baseline:.0}/s |");
        let runs = [
            ("churn-small", SMALL_CLUSTER, true, 6400),
            ("churn-large", LARGE_CLUSTER, true, 6400),
            ("grants-large", LARGE_CLUSTER, false, 3200),
        ];
        for (name, nodes, release, count) in runs {
            let broker = start_broker(&StoreKind::Etcd(etcd.endpoint()), dir.path(), &format!("bench-{name}"), "1h");
            let bearer = Bearer::from_file(&broker.admin_token).expect("admin token");
            register_nodes(&broker.grpc, &inventory, nodes, bearer.clone()).await;
            let (throughput, mut latencies) = churn(&broker.grpc, count, release, bearer).await;
            let p50 = percentile(&mut latencies, 0.5);
            let p99 = percentile(&mut latencies, 0.99);
            let pattern = if release { "each released right after its grant" } else { "grants only, the cluster filling up" };
            println!(
                "| allocations through gRPC, {CLIENTS} clients, {pattern}, etcd store, {nodes} DGX H100 nodes | {throughput:.0}/s ({:.1}x the baseline; p50 {:.1} ms, p99 {:.1} ms; {}) |",
                throughput / baseline,
                p50.as_secs_f64() * 1e3,
                p99.as_secs_f64() * 1e3,
                reqwest_metrics(&broker.http, &std::fs::read_to_string(&broker.admin_token).unwrap_or_default()).await,
            );
            drop(broker);
            // A fresh etcd prefix per run: the next broker must not see these nodes.
            assert!(store.txn(Txn::new().then([Op::delete_prefix(allot_store::layout::ROOT)])).await.expect("clear").succeeded);
        }
        drop(store);
        drop(etcd);

        // 2. Restart to ready with 100,000 allocations (embedded and etcd).
        for kind in ["embedded", "etcd"] {
            let etcd = if kind == "etcd" { Some(allot_store::testing::EtcdHarness::start().await) } else { None };
            let store_dir = dir.path().join(format!("restart-{kind}"));
            let (spec, store): (StoreKind, Arc<dyn Store>) = match &etcd {
                Some(etcd) => (StoreKind::Etcd(etcd.endpoint()), Arc::new(etcd.store().await)),
                None => (
                    StoreKind::Embedded(store_dir.clone()),
                    Arc::new(allot_store::EmbeddedStore::open(&store_dir).await.expect("embedded store")),
                ),
            };
            seed(store.as_ref(), &inventory, 100_000).await;
            let range_started = Instant::now();
            let all = store.range(layout::prefix_allocations()).await.expect("range");
            let range_time = range_started.elapsed();
            assert_eq!(all.kvs.len(), 100_000);
            drop(store);
            let started = Instant::now();
            let broker = start_broker(&spec, dir.path(), &format!("restart-{kind}"), "1h");
            let ready = started.elapsed();
            println!(
                "| broker restart to ready, 100,000 allocations, {kind} store | {:.2} s (one range of the keys alone: {:.2} s, ratio {:.1}x) |",
                ready.as_secs_f64(),
                range_time.as_secs_f64(),
                ready.as_secs_f64() / range_time.as_secs_f64()
            );
            for line in broker.process.log_text().lines().filter(|line| line.contains("elapsed_ms")) {
                eprintln!("{kind}: {line}");
            }
            drop(broker);
        }
    });
}
