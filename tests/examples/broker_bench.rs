//! Broker benchmarks, each against a baseline measured in the same run:
//!
//! 1. Allocations per second through gRPC with 32 concurrent clients on the etcd
//!    store (and with 4 requests in flight per client), against two baselines:
//!    sequential single-key etcd transactions (what a broker that wrote one
//!    allocation per transaction could reach at best), and 32 concurrent clients
//!    each writing its own keys, one transaction per allocation (etcd's own
//!    concurrency, which group commit exists to beat).
//!    The same in open loop (`--only open-loop`, and `--only open-loop-tls`
//!    over mutual TLS, the broker's default): requests start on a fixed
//!    schedule at rates stepping up in multiples of baseline 2, latency counted
//!    from each request's scheduled start.
//! 2. Broker restart to ready with 100,000 stored allocations on 12,500 nodes,
//!    stored as the broker stores them (inventory templates) and, as the
//!    baseline, with every node's whole inventory (the form before templates);
//!    plus one range of the allocation keys, and the broker's RSS once ready.
//!
//! Run: `cargo run --release -p allot-tests --example broker_bench [-- --only
//! throughput|open-loop|open-loop-tls|restart]` after `cargo build --release -p allot-broker` (it starts
//! the release allot-broker).

use std::sync::Arc;
use std::time::{Duration, Instant};

use allot_api::bearer::Bearer;
use allot_api::proto;
use allot_api::topology::NodeInventory;
use allot_store::{Compare, Op, Store, Txn, layout};
use allot_tests::{Broker, StoreKind, start_broker};

#[path = "common/seed.rs"]
mod seed;
use seed::{inventory, seed};

const CLIENTS: usize = 32;
/// Enough GPUs (8 each) for every client to hold one at a time, with room to
/// choose; see `churn` for the large-cluster run.
const SMALL_CLUSTER: usize = 16;
const LARGE_CLUSTER: usize = 500;

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

/// `CLIENTS` concurrent clients, each doing single-key CAS transactions on keys
/// of its own: one transaction per allocation, with etcd's own concurrency.
async fn concurrent_txns(store: Arc<dyn Store>, per_client: usize) -> f64 {
    let started = Instant::now();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                for index in 0..per_client {
                    let key = format!("/bench/concurrent/{client}/{index}");
                    let txn = Txn::new().when([Compare::absent(key.clone())]).then([Op::put(key, b"x".to_vec())]);
                    assert!(store.txn(txn).await.expect("txn").succeeded);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("client");
    }
    (CLIENTS * per_client) as f64 / started.elapsed().as_secs_f64()
}

/// How a client reaches `broker`: plain text, or mutual TLS with the admin's
/// certificate from the broker's PKI directory.
fn endpoint(broker: &Broker) -> tonic::transport::Endpoint {
    use allot_api::tls::{ClientTls, files};
    let tls = match &broker.pki {
        Some(pki) => ClientTls {
            ca: Some(pki.join(files::CA)),
            cert: Some(pki.join(files::ADMIN)),
            key: Some(pki.join(files::ADMIN_KEY)),
        },
        None => ClientTls::default(),
    };
    allot_api::tls::endpoint(&broker.url, &tls, Duration::from_secs(5), Duration::from_secs(60))
        .expect("endpoint")
        .tcp_nodelay(true)
}

async fn register_nodes(broker: &Broker, inventory: &NodeInventory, nodes: usize, bearer: Bearer) {
    let channel = endpoint(broker).connect().await.expect("connect");
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
/// One connection per client, as `CLIENTS` separate programs would have.
async fn connections(broker: &Broker) -> Vec<tonic::transport::Channel> {
    let mut channels = Vec::new();
    for _ in 0..CLIENTS {
        channels.push(endpoint(broker).connect().await.expect("connect"));
    }
    channels
}

async fn churn(broker: &Broker, count: usize, release: bool, depth: usize, bearer: Bearer) -> (f64, Vec<Duration>) {
    let channels = connections(broker).await;
    let started = Instant::now();
    // Each client keeps `depth` requests in flight.
    let streams = CLIENTS * depth;
    let per_client = count / streams;
    let mut tasks = Vec::new();
    for stream in 0..streams {
        let mut client = proto::allocation_service_client::AllocationServiceClient::with_interceptor(
            channels[stream % CLIENTS].clone(),
            bearer.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per_client);
            for _ in 0..per_client {
                let spec = one_gpu();
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
    ((per_client * streams) as f64 / started.elapsed().as_secs_f64(), latencies)
}

/// The writer's counters from the broker's /metrics: batches, commands, and
/// the store transactions' summed seconds and count.
#[derive(Clone, Copy, Default)]
struct WriterCounters {
    batches: f64,
    commands: f64,
    txn_seconds: f64,
    txns: f64,
}

impl WriterCounters {
    async fn read(http: &str, token: &str) -> Option<WriterCounters> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(http).await.ok()?;
        let request = format!(
            "GET /metrics HTTP/1.1\r\nHost: {http}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
            token.trim()
        );
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut text = String::new();
        let _ = stream.read_to_string(&mut text).await;
        let value = |name: &str| {
            text.lines()
                .find(|line| line.starts_with(name))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        };
        Some(WriterCounters {
            batches: value("allot_writer_batches_total")?,
            commands: value("allot_writer_commands_total")?,
            txn_seconds: value("allot_store_txn_duration_seconds_sum").unwrap_or(0.0),
            txns: value("allot_store_txn_duration_seconds_count").unwrap_or(0.0),
        })
    }

    /// What happened between `earlier` and these.
    fn since(self, earlier: WriterCounters) -> WriterCounters {
        WriterCounters {
            batches: self.batches - earlier.batches,
            commands: self.commands - earlier.commands,
            txn_seconds: self.txn_seconds - earlier.txn_seconds,
            txns: self.txns - earlier.txns,
        }
    }

    fn describe(self) -> String {
        if self.batches <= 0.0 {
            return "no batches".into();
        }
        let txn = if self.txns > 0.0 {
            format!("; store transactions {:.2} ms on average", self.txn_seconds / self.txns * 1e3)
        } else {
            String::new()
        };
        format!("{:.0} batches, {:.1} commands per batch{txn}", self.batches, self.commands / self.batches)
    }
}

/// Average commands per persisted batch, from the broker's /metrics.
async fn reqwest_metrics(http: &str, token: &str) -> String {
    WriterCounters::read(http, token).await.map_or_else(|| "unavailable".into(), WriterCounters::describe)
}

/// CPU time (user + system, in seconds) used so far by process `pid`, and by
/// the whole machine (all cores, idle excluded).
fn cpu_seconds(pid: u32) -> (f64, f64) {
    let ticks = 100.0; // USER_HZ on Linux
    let process = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // Fields after the command's closing parenthesis; utime and stime are the 12th and 13th.
            let rest = &stat[stat.rfind(')')? + 2..];
            let fields: Vec<&str> = rest.split_whitespace().collect();
            Some((fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?) / ticks)
        })
        .unwrap_or(0.0);
    let machine = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|stat| {
            let fields: Vec<f64> =
                stat.lines().next()?.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
            // user nice system idle iowait irq softirq steal
            let busy: f64 = fields.iter().take(8).sum::<f64>() - fields.get(3)? - fields.get(4)?;
            Some(busy / ticks)
        })
        .unwrap_or(0.0);
    (process, machine)
}

fn percentile(latencies: &mut [Duration], fraction: f64) -> Duration {
    latencies.sort();
    latencies[((latencies.len() as f64 - 1.0) * fraction) as usize]
}

/// The broker's resident set size, from `/proc/<pid>/status`, in MiB.
fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

fn main() {
    let only = std::env::args().skip_while(|arg| arg != "--only").nth(1);
    let wanted = |part: &str| only.as_deref().is_none_or(|only| only == part);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let inventory = inventory();
    println!("| measure | result |");
    println!("|---|---|");
    runtime.block_on(async {
        if wanted("throughput") {
            throughput(&dir, &inventory).await;
        }
        if wanted("open-loop") {
            open_loop(&dir, &inventory, false).await;
        }
        if wanted("open-loop-tls") {
            open_loop(&dir, &inventory, true).await;
        }
        if wanted("restart") {
            restart(&dir, &inventory).await;
        }
    });
}

/// Measures and prints both baselines on this etcd: sequential single-key
/// transactions, and `CLIENTS` clients each writing keys of its own.
async fn baselines(store: &Arc<dyn Store>) -> (f64, f64) {
    let baseline = sequential_txns(store.as_ref(), 2000).await;
    let concurrent = concurrent_txns(Arc::clone(store), 200).await;
    println!("| sequential single-key etcd transactions (baseline 1) | {baseline:.0}/s |");
    println!(
        "| {CLIENTS} clients, one transaction per allocation on keys of their own (baseline 2) | {concurrent:.0}/s ({:.1}x baseline 1) |",
        concurrent / baseline
    );
    (baseline, concurrent)
}

/// Throughput on etcd, against both baselines measured on the same etcd.
async fn throughput(dir: &tempfile::TempDir, inventory: &NodeInventory) {
    let etcd = allot_store::testing::EtcdHarness::start().await;
    let store: Arc<dyn Store> = Arc::new(etcd.store().await);
    let (baseline, concurrent) = baselines(&store).await;
    let runs = [
        ("churn-small", SMALL_CLUSTER, true, 1, 6400),
        ("churn-large", LARGE_CLUSTER, true, 1, 6400),
        ("grants-large", LARGE_CLUSTER, false, 1, 3200),
        ("grants-large-deep", LARGE_CLUSTER, false, 4, 3200),
    ];
    for (name, nodes, release, depth, count) in runs {
        let broker = start_broker(&StoreKind::Etcd(etcd.endpoint()), dir.path(), &format!("bench-{name}"), "1h");
        let bearer = Bearer::from_file(&broker.admin_token).expect("admin token");
        register_nodes(&broker, inventory, nodes, bearer.clone()).await;
        let (throughput, mut latencies) = churn(&broker, count, release, depth, bearer).await;
        let p50 = percentile(&mut latencies, 0.5);
        let p99 = percentile(&mut latencies, 0.99);
        let pattern =
            if release { "each released right after its grant" } else { "grants only, the cluster filling up" };
        println!(
            "| allocations through gRPC, {CLIENTS} clients x {depth} in flight, {pattern}, etcd store, {nodes} DGX H100 nodes | {throughput:.0}/s ({:.1}x baseline 1, {:.2}x baseline 2; p50 {:.1} ms, p99 {:.1} ms; {}) |",
            throughput / baseline,
            throughput / concurrent,
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3,
            reqwest_metrics(&broker.http, &std::fs::read_to_string(&broker.admin_token).unwrap_or_default()).await,
        );
        drop(broker);
        // A fresh etcd prefix per run: the next broker must not see these nodes.
        assert!(
            store.txn(Txn::new().then([Op::delete_prefix(allot_store::layout::ROOT)])).await.expect("clear").succeeded
        );
    }
}

/// Nodes for the open-loop runs: room for every grant of the fastest step.
const OPEN_LOOP_CLUSTER: usize = 1_000;
/// How long each offered rate is held.
const OPEN_LOOP_STEP: Duration = Duration::from_millis(500);
/// How often the open-loop generator sends what is due.
const GENERATOR_TICK: Duration = Duration::from_millis(1);
/// Requests outstanding at most; beyond, the offered rate is not kept.
const OPEN_LOOP_OUTSTANDING: usize = 4_000;

/// Open loop: requests start on a fixed schedule, whether or not earlier ones
/// finished (spread over `CLIENTS` connections), at rates that step up as
/// multiples of baseline 2; latency counts from each request's scheduled
/// start, so a broker that falls behind cannot hide it by slowing the clients.
///
/// With `tls`, the broker serves mutual TLS (its default) and the clients
/// present the admin's certificate; without, plain text (`--plaintext`).
async fn open_loop(dir: &tempfile::TempDir, inventory: &NodeInventory, tls: bool) {
    let etcd = allot_store::testing::EtcdHarness::start().await;
    let store: Arc<dyn Store> = Arc::new(etcd.store().await);
    let (baseline, concurrent) = baselines(&store).await;
    let store_kind = StoreKind::Etcd(etcd.endpoint());
    let broker = if tls {
        let pki = dir.path().join("pki-open-loop");
        let pki = pki.to_str().expect("a UTF-8 path");
        allot_tests::start_broker_with(
            &store_kind,
            dir.path(),
            "bench-open-loop-tls",
            "1h",
            "127.0.0.1:0",
            &["--pki", pki],
        )
    } else {
        start_broker(&store_kind, dir.path(), "bench-open-loop", "1h")
    };
    let transport = if tls { "mutual TLS" } else { "plain text" };
    let bearer = Bearer::from_file(&broker.admin_token).expect("admin token");
    register_nodes(&broker, inventory, OPEN_LOOP_CLUSTER, bearer.clone()).await;
    let channels = connections(&broker).await;
    for release in [false, true] {
        for multiple in [0.5, 0.75, 1.0, 1.25, 1.5, 2.0] {
            let rate = concurrent * multiple;
            let token = std::fs::read_to_string(&broker.admin_token).unwrap_or_default();
            let counters = WriterCounters::read(&broker.http, &token).await.unwrap_or_default();
            let (broker_cpu, machine_cpu) = cpu_seconds(broker.process.pid());
            let (clients_cpu, _) = cpu_seconds(std::process::id());
            let step_started = Instant::now();
            let step = offered(&channels, &bearer, rate, release).await;
            let wall = step_started.elapsed().as_secs_f64();
            let (broker_after, machine_after) = cpu_seconds(broker.process.pid());
            let (clients_after, _) = cpu_seconds(std::process::id());
            let writer = WriterCounters::read(&broker.http, &token)
                .await
                .map_or_else(|| "unavailable".into(), |now| now.since(counters).describe());
            let pattern = if release { "grant, then release" } else { "grants" };
            println!(
                "| open loop, {transport}, {pattern}, offered {rate:.0}/s ({multiple:.2}x baseline 2), etcd store, {OPEN_LOOP_CLUSTER} DGX H100 nodes | {:.0}/s done ({:.1}x baseline 1, {:.2}x baseline 2); p50 {:.1} ms, p99 {:.1} ms from the scheduled start{}; {writer}; cores busy: broker {:.2}, clients {:.2}, machine {:.2} |",
                step.done_per_second,
                step.done_per_second / baseline,
                step.done_per_second / concurrent,
                step.p50.as_secs_f64() * 1e3,
                step.p99.as_secs_f64() * 1e3,
                if step.not_sent > 0 {
                    format!("; {} not sent ({OPEN_LOOP_OUTSTANDING} outstanding)", step.not_sent)
                } else {
                    String::new()
                },
                (broker_after - broker_cpu) / wall,
                (clients_after - clients_cpu) / wall,
                (machine_after - machine_cpu) / wall,
            );
            // Grants stay until released here, outside the measurement.
            release_all(&channels[0], &bearer, step.granted).await;
        }
    }
    let rss = rss_mib(broker.process.pid()).map_or("unknown".to_owned(), |mib| format!("{mib:.0} MiB"));
    println!("| open loop, {transport}: broker RSS after the run | {rss} |");
}

/// What one offered rate achieved.
struct Step {
    done_per_second: f64,
    p50: Duration,
    p99: Duration,
    not_sent: usize,
    /// Allocations still held (grants-only steps).
    granted: Vec<String>,
}

async fn offered(channels: &[tonic::transport::Channel], bearer: &Bearer, rate: f64, release: bool) -> Step {
    let total = (rate * OPEN_LOOP_STEP.as_secs_f64()) as usize;
    let outstanding = Arc::new(tokio::sync::Semaphore::new(OPEN_LOOP_OUTSTANDING));
    let started = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(total);
    let mut not_sent = 0;
    for index in 0..total {
        let due = started + Duration::from_secs_f64(index as f64 / rate);
        // Requests go out in bursts of what is due each millisecond: a timer
        // wake-up per request would cost the clients (on the broker's cores)
        // more than sending them. Latency still counts from each one's own start.
        if due > tokio::time::Instant::now() {
            tokio::time::sleep_until(due.max(tokio::time::Instant::now() + GENERATOR_TICK)).await;
        }
        let Ok(permit) = Arc::clone(&outstanding).try_acquire_owned() else {
            not_sent += 1;
            continue;
        };
        let mut client = proto::allocation_service_client::AllocationServiceClient::with_interceptor(
            channels[index % channels.len()].clone(),
            bearer.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let reply = client
                .create(proto::CreateAllocationRequest { spec: Some(one_gpu()), dry_run: false, no_wait: true })
                .await
                .expect("create")
                .into_inner();
            let id = reply.allocation.expect("allocation").id;
            if release {
                client.release(proto::AllocationRef { id: id.clone() }).await.expect("release");
            }
            (due.elapsed(), tokio::time::Instant::now(), id)
        }));
    }
    let mut latencies = Vec::with_capacity(tasks.len());
    let mut granted = Vec::new();
    let mut last = started;
    for task in tasks {
        let (latency, finished, id) = task.await.expect("request");
        latencies.push(latency);
        last = last.max(finished);
        if !release {
            granted.push(id);
        }
    }
    let done = latencies.len();
    Step {
        done_per_second: done as f64 / (last - started).as_secs_f64(),
        p50: percentile(&mut latencies, 0.5),
        p99: percentile(&mut latencies, 0.99),
        not_sent,
        granted,
    }
}

fn one_gpu() -> proto::AllocationSpec {
    proto::AllocationSpec {
        team: "bench".into(),
        gpus: Some(proto::allocation_spec::Gpus::Whole(proto::WholeGpus { count: 1, models: vec![] })),
        cpus: 1,
        ..Default::default()
    }
}

async fn release_all(channel: &tonic::transport::Channel, bearer: &Bearer, ids: Vec<String>) {
    let mut client =
        proto::allocation_service_client::AllocationServiceClient::with_interceptor(channel.clone(), bearer.clone());
    for id in ids {
        client.release(proto::AllocationRef { id }).await.expect("release");
    }
}

/// Restart to ready with 100,000 allocations on 12,500 nodes (embedded and
/// etcd), nodes stored with templates and, as the baseline, whole.
async fn restart(dir: &tempfile::TempDir, inventory: &NodeInventory) {
    for kind in ["embedded", "etcd"] {
        for templates in [false, true] {
            let form = if templates { "templates" } else { "whole inventories (baseline)" };
            let etcd = if kind == "etcd" { Some(allot_store::testing::EtcdHarness::start().await) } else { None };
            let store_dir = dir.path().join(format!("restart-{kind}-{templates}"));
            let (spec, store): (StoreKind, Arc<dyn Store>) = match &etcd {
                Some(etcd) => (StoreKind::Etcd(etcd.endpoint()), Arc::new(etcd.store().await)),
                None => (
                    StoreKind::Embedded(store_dir.clone()),
                    Arc::new(allot_store::EmbeddedStore::open(&store_dir).await.expect("embedded store")),
                ),
            };
            seed(store.as_ref(), inventory, 100_000, templates).await;
            let range_started = Instant::now();
            let all = store.range(layout::prefix_allocations()).await.expect("range");
            let range_time = range_started.elapsed();
            assert_eq!(all.kvs.len(), 100_000);
            drop(store);
            let started = Instant::now();
            let broker = start_broker(&spec, dir.path(), &format!("restart-{kind}-{templates}"), "1h");
            let ready = started.elapsed();
            let rss = rss_mib(broker.process.pid()).map_or("unknown".to_owned(), |mib| format!("{mib:.0} MiB"));
            println!(
                "| broker restart to ready, 100,000 allocations on 12,500 nodes, {kind} store, {form} | {:.2} s (one range of the allocation keys: {:.2} s; RSS when ready {rss}) |",
                ready.as_secs_f64(),
                range_time.as_secs_f64(),
            );
            for line in broker
                .process
                .log_text()
                .lines()
                .filter(|line| line.contains("elapsed_ms") || line.contains("per phase"))
            {
                eprintln!("{kind}: {line}");
            }
            drop(broker);
        }
    }
}
