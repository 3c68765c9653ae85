//! Scheduler extender benchmark (issue 13), on the real kube-apiserver and
//! kube-scheduler v1.37.2 with the release `allot-broker` and `allot-k8s`:
//!
//! 1. Filter and prioritize latency with every node named (nodeCacheCapable),
//!    one pod at a time as kube-scheduler's scheduling cycle calls them, then
//!    bind; beside it, the broker's own find and create for the same request
//!    straight through gRPC (what filter cannot go below), and filter repeated
//!    once the allocation exists, with every node and with one (what the node
//!    count costs).
//! 2. Pods scheduled per second end to end: the same batch of pods scheduled by
//!    kube-scheduler alone (it counts `allot.io/gpu` itself) and then through
//!    the extender (`ignoredByScheduler`), in the same run on the same
//!    control plane, as (pods) / (first create to last bound).
//!
//! The broker knows `--nodes` synthetic DGX H100 nodes, registered through the
//! gRPC NodeService without node daemons (`--node-timeout 1h` keeps them ready);
//! the API server has a Ready Node object of the same name for each.
//!
//! Run: `cargo build --release -p allot-broker -p allot-k8s --bins && cargo run
//! --release -p allot-tests --example extender_bench -- [--nodes 5000]
//! [--latency-pods 200] [--pods 500] [--gpus 4] [--extender-percentage 100]
//! [--baseline-percentage 0] [--phase-timeout 300] [--diagnose]`. It needs
//! `target/go/kube-{apiserver,scheduler}` (plugins/kubernetes/control-plane/build.sh).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use allot_api::bearer::Bearer;
use allot_api::proto;
use allot_api::topology::NodeInventory;
use allot_tests::control_plane::{ControlPlane, create_namespace, create_node, create_pod, node_name, pod_requesting};
use allot_tests::{Broker, Process, StoreKind, start_broker};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, WatchEvent, WatchParams};
use kube::{Client, Config};
use serde_json::{Value, json};
use tokio_stream::StreamExt as _;

const GPU: &str = "allot.io/gpu";
const TEAM: &str = "bench";
/// How many creations (Node objects, pods) the benchmark keeps in flight.
const CREATORS: usize = 16;

#[derive(Debug, Clone)]
struct Options {
    nodes: usize,
    latency_pods: usize,
    pods: usize,
    gpus: u32,
    /// `percentageOfNodesToScore` for the run with the extender (0: kube-scheduler's adaptive default).
    extender_percentage: u32,
    /// The same for kube-scheduler alone.
    baseline_percentage: u32,
    phase_timeout: Duration,
    /// Adds two runs that say where the time goes: kube-scheduler alone scoring
    /// every node, and the extender behind a proxy that times each call.
    diagnose: bool,
}

impl Options {
    fn parse() -> Result<Options, String> {
        let mut options = Options {
            nodes: 5000,
            latency_pods: 200,
            pods: 500,
            gpus: 4,
            extender_percentage: 100,
            baseline_percentage: 0,
            phase_timeout: Duration::from_secs(300),
            diagnose: false,
        };
        let mut args = std::env::args().skip(1);
        while let Some(flag) = args.next() {
            if flag == "--diagnose" {
                options.diagnose = true;
                continue;
            }
            let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
            let number = |what: &str| value.parse::<u64>().map_err(|_| format!("{what} {value}: give a whole number"));
            match flag.as_str() {
                "--nodes" => options.nodes = number(&flag)? as usize,
                "--latency-pods" => options.latency_pods = number(&flag)? as usize,
                "--pods" => options.pods = number(&flag)? as usize,
                "--gpus" => options.gpus = number(&flag)? as u32,
                "--extender-percentage" => options.extender_percentage = number(&flag)? as u32,
                "--baseline-percentage" => options.baseline_percentage = number(&flag)? as u32,
                "--phase-timeout" => options.phase_timeout = Duration::from_secs(number(&flag)?),
                _ => return Err(format!("unknown flag {flag}")),
            }
        }
        if !(1..=8).contains(&options.gpus) || options.pods * options.gpus as usize > options.nodes * 8 {
            return Err("--gpus is 1 to 8, and --pods x --gpus must fit in --nodes x 8".into());
        }
        Ok(options)
    }
}

fn node_name_of(index: usize) -> String {
    format!("node-{index:05}")
}

fn inventory() -> NodeInventory {
    let path = allot_tests::repo().join("broker/placement/tests/data/dgx-h100.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    let mut value: Value = serde_json::from_str(&text).expect("inventory JSON");
    if let Some(object) = value.as_object_mut() {
        object.remove("links");
    }
    serde_json::from_value(value).expect("inventory")
}

/// Runs `job(index)` for every index below `count` on `workers` concurrent tasks.
async fn for_each_concurrently<F, Fut>(count: usize, workers: usize, job: F)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let next = Arc::new(AtomicUsize::new(0));
    let job = Arc::new(job);
    let mut tasks = Vec::new();
    for _ in 0..workers.min(count.max(1)) {
        let (next, job) = (next.clone(), job.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= count {
                    break;
                }
                job(index).await;
            }
        }));
    }
    for task in tasks {
        task.await.expect("worker");
    }
}

async fn channel(address: &str) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{address}")).expect("uri").connect().await.expect("connect")
}

/// Registers the synthetic nodes (32 at a time, so the broker's writer batches
/// them) and creates the team; returns how long the registrations took.
async fn register_nodes(broker: &Broker, bearer: &Bearer, nodes: usize) -> Duration {
    let channel = channel(&broker.grpc).await;
    let inventory = Arc::new(inventory());
    let started = Instant::now();
    let (channel_for_jobs, bearer_for_jobs) = (channel.clone(), bearer.clone());
    for_each_concurrently(nodes, 32, move |index| {
        let mut client = proto::node_service_client::NodeServiceClient::with_interceptor(
            channel_for_jobs.clone(),
            bearer_for_jobs.clone(),
        );
        let inventory = inventory.clone();
        async move {
            let mut node = (*inventory).clone();
            node.hostname = node_name_of(index);
            client
                .register(proto::RegisterNodeRequest {
                    node_name: node.hostname.clone(),
                    daemon_version: "bench".into(),
                    inventory: Some((&node).into()),
                })
                .await
                .expect("register");
        }
    })
    .await;
    let registered = started.elapsed();
    proto::admin_service_client::AdminServiceClient::with_interceptor(channel, bearer.clone())
        .create_team(proto::CreateTeamRequest { name: TEAM.into(), ..Default::default() })
        .await
        .expect("team");
    registered
}

/// Creates the Ready Node objects, `CREATORS` at a time; returns how long it took.
async fn create_nodes(client: &Client, nodes: usize) -> Duration {
    let started = Instant::now();
    let client = client.clone();
    for_each_concurrently(nodes, CREATORS, move |index| {
        let client = client.clone();
        async move {
            let name = node_name_of(index);
            create_node(&client, &name, &[], &[(GPU, "8"), ("cpu", "224"), ("memory", "2Ti"), ("pods", "110")])
                .await
                .unwrap_or_else(|error| panic!("cannot create node {name}: {error}"));
        }
    })
    .await;
    started.elapsed()
}

/// allot-k8s with its deployment's defaults; returns it and its address.
fn start_allot_k8s(broker: &Broker, control_plane: &ControlPlane, dir: &Path) -> (Process, String) {
    // Its pod events and logs, not every request.
    allot_tests::control_plane::start_allot_k8s(
        broker,
        control_plane.kubeconfig(),
        dir,
        "allot-k8s",
        &[],
        &[("RUST_LOG", "warn")],
    )
}

/// kube-scheduler alone, or with the extender as deployed, scoring `percentage` of the nodes.
fn scheduler_config(extender: Option<&str>, percentage: u32) -> Value {
    let mut config = match extender {
        Some(address) => allot_tests::control_plane::deployed_scheduler_config(address),
        None => json!({}),
    };
    config["percentageOfNodesToScore"] = json!(percentage);
    config
}

/// An HTTP client for the extender (kube's, pointed at plain HTTP: it pools connections).
fn extender_client(address: &str) -> Client {
    let uri = format!("http://{address}").parse().expect("extender URL");
    Client::try_from(Config::new(uri)).expect("extender client")
}

/// POSTs a prepared body to the extender; returns the answer and the time it took.
async fn post(client: &Client, verb: &str, body: Vec<u8>) -> (String, Duration) {
    let request =
        http::Request::post(format!("/{verb}")).header("content-type", "application/json").body(body).expect("request");
    let started = Instant::now();
    let text = client.request_text(request).await.unwrap_or_else(|error| panic!("extender {verb}: {error}"));
    (text, started.elapsed())
}

/// One call kube-scheduler made to the extender, as the timing proxy saw it.
#[derive(Debug, Clone)]
struct Call {
    verb: String,
    took: Duration,
    request_bytes: usize,
    answer_bytes: usize,
}

#[derive(Clone)]
struct Proxy {
    target: Client,
    calls: Arc<std::sync::Mutex<Vec<Call>>>,
}

async fn forward(
    axum::extract::State(proxy): axum::extract::State<Proxy>,
    axum::extract::Path(verb): axum::extract::Path<String>,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let request_bytes = body.len();
    let (answer, took) = post(&proxy.target, &verb, body.to_vec()).await;
    let call = Call { verb, took, request_bytes, answer_bytes: answer.len() };
    proxy.calls.lock().expect("lock").push(call);
    ([(http::header::CONTENT_TYPE, "application/json")], answer).into_response()
}

/// A proxy in front of the extender that records every call; returns its address.
async fn start_proxy(target: &str, calls: Arc<std::sync::Mutex<Vec<Call>>>) -> String {
    let proxy = Proxy { target: extender_client(target), calls };
    let router = axum::Router::new().route("/{verb}", axum::routing::post(forward)).with_state(proxy);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("proxy listens");
    let address = listener.local_addr().expect("proxy address").to_string();
    tokio::spawn(async move { axum::serve(listener, router).await.expect("proxy serves") });
    address
}

fn call_rows(calls: &[Call], pods: usize) -> Vec<String> {
    let mut verbs: BTreeMap<&str, Vec<&Call>> = BTreeMap::new();
    for call in calls {
        verbs.entry(call.verb.as_str()).or_default().push(call);
    }
    verbs
        .iter()
        .map(|(verb, calls)| {
            let times = Latencies(calls.iter().map(|call| call.took).collect());
            let busy: Duration = times.0.iter().sum();
            let mean_bytes =
                |bytes: fn(&Call) -> usize| calls.iter().map(|call| bytes(call)).sum::<usize>() / calls.len();
            format!(
                "| {verb} | {} ({:.2} per pod) | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} s | {} KiB | {} KiB |",
                calls.len(),
                calls.len() as f64 / pods as f64,
                times.percentile(0.5).as_secs_f64() * 1e3,
                times.percentile(0.99).as_secs_f64() * 1e3,
                times.mean().as_secs_f64() * 1e3,
                busy.as_secs_f64(),
                mean_bytes(|call| call.request_bytes) / 1024,
                mean_bytes(|call| call.answer_bytes) / 1024,
            )
        })
        .collect()
}

#[derive(Debug, Default)]
struct Latencies(Vec<Duration>);

impl Latencies {
    fn percentile(&self, fraction: f64) -> Duration {
        let mut sorted = self.0.clone();
        sorted.sort();
        sorted.get(((sorted.len() as f64 - 1.0) * fraction).round() as usize).copied().unwrap_or_default()
    }

    fn mean(&self) -> Duration {
        self.0.iter().sum::<Duration>() / (self.0.len().max(1) as u32)
    }

    fn row(&self, what: &str) -> String {
        format!(
            "| {what} | {:.1} ms | {:.1} ms | {:.1} ms |",
            self.percentile(0.5).as_secs_f64() * 1e3,
            self.percentile(0.99).as_secs_f64() * 1e3,
            self.mean().as_secs_f64() * 1e3
        )
    }
}

fn spec(owner: String, gpus: u32) -> proto::AllocationSpec {
    proto::AllocationSpec {
        team: TEAM.into(),
        gpus: Some(proto::allocation_spec::Gpus::Whole(proto::WholeGpus { count: gpus, models: vec![] })),
        owner: Some(owner),
        ..Default::default()
    }
}

/// Releases every live allocation a pod owns and waits until none is left.
async fn release_pod_allocations(broker: &Broker, bearer: &Bearer) {
    let mut client = proto::allocation_service_client::AllocationServiceClient::with_interceptor(
        channel(&broker.grpc).await,
        bearer.clone(),
    );
    loop {
        let live = client
            .list(proto::ListAllocationsRequest { include_finished: false, ..Default::default() })
            .await
            .expect("list")
            .into_inner()
            .allocations;
        if live.is_empty() {
            return;
        }
        for allocation in live {
            // A release the controller made first answers FailedPrecondition; either way it is gone.
            let _ = client.release(proto::AllocationRef { id: allocation.id }).await;
        }
    }
}

/// Deletes every pod of a namespace at once (no kubelet confirms a graceful delete) and waits until none is left.
async fn delete_pods(client: &Client, namespace: &str) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    pods.delete_collection(
        &DeleteParams { grace_period_seconds: Some(0), ..Default::default() },
        &ListParams::default(),
    )
    .await
    .expect("delete pods");
    while !pods.list(&ListParams::default().limit(1)).await.expect("list").items.is_empty() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Phase 1: the broker alone, then filter, prioritize and bind through the extender, one pod at a time.
async fn latency(
    options: &Options,
    client: &Client,
    broker: &Broker,
    bearer: &Bearer,
    extender: &Client,
) -> BTreeMap<&'static str, Latencies> {
    let mut found = BTreeMap::new();
    let names: Vec<String> = (0..options.nodes).map(node_name_of).collect();

    // The broker's own calls for the same request: what filter cannot go below.
    let mut allocations = proto::allocation_service_client::AllocationServiceClient::with_interceptor(
        channel(&broker.grpc).await,
        bearer.clone(),
    );
    let (mut finds, mut creates) = (Latencies::default(), Latencies::default());
    for index in 0..options.latency_pods {
        let owner = format!("pod:{TEAM}/direct-{index}/uid-{index}");
        let started = Instant::now();
        let listed = allocations
            .list(proto::ListAllocationsRequest { owner: owner.clone(), ..Default::default() })
            .await
            .expect("list");
        assert!(listed.into_inner().allocations.is_empty());
        finds.0.push(started.elapsed());
        let started = Instant::now();
        allocations
            .create(proto::CreateAllocationRequest {
                spec: Some(spec(owner, options.gpus)),
                dry_run: false,
                no_wait: false,
            })
            .await
            .expect("create");
        creates.0.push(started.elapsed());
    }
    release_pod_allocations(broker, bearer).await;
    found.insert("a. broker find by owner (gRPC list)", finds);
    found.insert("b. broker create (gRPC, persisted)", creates);

    // Real pods, which no scheduler is running to place: the benchmark plays
    // kube-scheduler's part, with every node a candidate.
    let namespace = "latency";
    create_namespace(client, namespace, &[("allot.io/team", TEAM)]).await.expect("namespace");
    let (mut filters, mut prioritizes, mut binds, mut cycles) =
        (Latencies::default(), Latencies::default(), Latencies::default(), Latencies::default());
    let (mut filters_again, mut filters_one) = (Latencies::default(), Latencies::default());
    let mut failures = 0;
    for index in 0..options.latency_pods {
        let pod = pod_requesting(namespace, &format!("pod-{index:05}"), &[(GPU, &options.gpus.to_string())]);
        let pod = create_pod(client, &pod).await.expect("pod");
        let args = serde_json::to_vec(&json!({ "Pod": pod, "NodeNames": names })).expect("json");
        let (answer, filter_time) = post(extender, "filter", args.clone()).await;
        let (_, prioritize_time) = post(extender, "prioritize", args.clone()).await;
        let answer: Value = serde_json::from_str(&answer).expect("filter answer");
        let Some(node) = answer["NodeNames"].as_array().and_then(|passing| passing.first()).and_then(Value::as_str)
        else {
            failures += 1;
            continue;
        };
        // The same filter again (the allocation exists: no create), with every
        // node and with only the broker's: what the node count itself costs.
        let (_, again_time) = post(extender, "filter", args).await;
        let one = serde_json::to_vec(&json!({ "Pod": pod, "NodeNames": [node] })).expect("json");
        let (_, one_time) = post(extender, "filter", one).await;
        filters_again.0.push(again_time);
        filters_one.0.push(one_time);
        let binding = json!({
            "PodName": pod.metadata.name, "PodNamespace": namespace, "PodUID": pod.metadata.uid, "Node": node
        });
        let (answer, bind_time) = post(extender, "bind", serde_json::to_vec(&binding).expect("json")).await;
        let answer: Value = serde_json::from_str(&answer).expect("bind answer");
        assert_eq!(answer["Error"].as_str().unwrap_or_default(), "", "bind {node}");
        filters.0.push(filter_time);
        prioritizes.0.push(prioritize_time);
        binds.0.push(bind_time);
        cycles.0.push(filter_time + prioritize_time);
    }
    assert_eq!(failures, 0, "every latency pod fits");
    found.insert("c. filter", filters);
    found.insert("d. prioritize", prioritizes);
    found.insert("e. filter + prioritize", cycles);
    found.insert("f. bind (annotate, then the binding subresource)", binds);
    found.insert("g. filter again, allocation found, every node named", filters_again);
    found.insert("h. filter again, allocation found, only the broker's node named", filters_one);
    delete_pods(client, namespace).await;
    release_pod_allocations(broker, bearer).await;
    found
}

#[derive(Debug)]
struct Run {
    created_in: Duration,
    bound: usize,
    elapsed: Duration,
    /// Per pod, its create call's return to its binding being seen.
    waits: Latencies,
}

/// Phase 2: creates the pods (`CREATORS` at a time) and watches until all are bound.
async fn end_to_end(options: &Options, client: &Client, namespace: &str) -> Run {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let version = pods.list(&ListParams::default()).await.expect("list").metadata.resource_version.unwrap_or_default();
    let stream = pods.watch(&WatchParams::default().timeout(290), &version).await.expect("watch");
    let created: Arc<std::sync::Mutex<HashMap<String, Instant>>> = Arc::default();
    let started = Instant::now();
    let count = options.pods;
    let creating = {
        let (client, created, gpus, namespace) = (client.clone(), created.clone(), options.gpus, namespace.to_owned());
        tokio::spawn(async move {
            for_each_concurrently(count, CREATORS, move |index| {
                let (client, created, namespace) = (client.clone(), created.clone(), namespace.clone());
                async move {
                    let name = format!("pod-{index:05}");
                    create_pod(&client, &pod_requesting(&namespace, &name, &[(GPU, &gpus.to_string())]))
                        .await
                        .unwrap_or_else(|error| panic!("cannot create pod {name}: {error}"));
                    created.lock().expect("lock").insert(name, Instant::now());
                }
            })
            .await;
            started.elapsed()
        })
    };
    let mut bound: HashMap<String, Instant> = HashMap::new();
    let mut stream = std::pin::pin!(stream);
    let deadline = tokio::time::Instant::now() + options.phase_timeout;
    while bound.len() < count {
        let event = match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(event)) => event,
            Ok(None) => panic!("the pod watch ended (290 s) before the phase did: lower --pods or --phase-timeout"),
            Err(_) => break,
        };
        if let Ok(WatchEvent::Added(pod) | WatchEvent::Modified(pod)) = event
            && node_name(&pod).is_some()
            && let Some(name) = pod.metadata.name
        {
            bound.entry(name).or_insert_with(Instant::now);
        }
    }
    let elapsed = bound.values().max().map(|last| *last - started).unwrap_or(options.phase_timeout);
    let created_in = creating.await.expect("creator");
    let created = created.lock().expect("lock");
    let waits = Latencies(
        bound
            .iter()
            .filter_map(|(name, at)| created.get(name).map(|made| at.saturating_duration_since(*made)))
            .collect(),
    );
    Run { created_in, bound: bound.len(), elapsed, waits }
}

fn main() {
    let options = Options::parse().unwrap_or_else(|problem| {
        eprintln!("extender_bench: {problem}");
        std::process::exit(2);
    });
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    runtime.block_on(async {
        let broker = start_broker(&StoreKind::Embedded(dir.path().join("store")), dir.path(), "broker", "1h");
        let bearer = Bearer::from_file(&broker.admin_token).expect("admin token");
        let registered = register_nodes(&broker, &bearer, options.nodes).await;
        eprintln!("registered {} nodes with the broker in {:.1} s", options.nodes, registered.as_secs_f64());

        let mut control_plane = ControlPlane::start().await;
        let client = control_plane.client();
        let nodes_created = create_nodes(&client, options.nodes).await;
        eprintln!("created {} Node objects in {:.1} s", options.nodes, nodes_created.as_secs_f64());
        let (allot_k8s, address) = start_allot_k8s(&broker, &control_plane, dir.path());
        let extender = extender_client(&address);

        let latencies = latency(&options, &client, &broker, &bearer, &extender).await;
        eprintln!("latency phase done");

        let calls: Arc<std::sync::Mutex<Vec<Call>>> = Arc::default();
        let proxied = start_proxy(&address, calls.clone()).await;
        let mut plan = vec![
            ("kube-scheduler alone", "alone", None, options.baseline_percentage),
            ("kube-scheduler + allot-k8s extender", "extender", Some(address.as_str()), options.extender_percentage),
        ];
        if options.diagnose {
            plan.push(("kube-scheduler alone, every node scored", "alone-all", None, 100));
            plan.push((
                "kube-scheduler + extender behind a timing proxy",
                "traced",
                Some(proxied.as_str()),
                options.extender_percentage,
            ));
        }
        let mut runs = Vec::new();
        for (label, namespace, extender_address, percentage) in plan {
            create_namespace(&client, namespace, &[("allot.io/team", TEAM)]).await.expect("namespace");
            control_plane.start_scheduler(&scheduler_config(extender_address, percentage)).await;
            let run = end_to_end(&options, &client, namespace).await;
            eprintln!("{label}: {} pods bound in {:.1} s", run.bound, run.elapsed.as_secs_f64());
            control_plane.stop_scheduler();
            delete_pods(&client, namespace).await;
            release_pod_allocations(&broker, &bearer).await;
            runs.push((label, percentage, run));
        }

        println!();
        println!(
            "{} nodes (broker registrations {:.1} s, {:.0}/s; Node objects {:.1} s, {:.0}/s)",
            options.nodes,
            registered.as_secs_f64(),
            options.nodes as f64 / registered.as_secs_f64(),
            nodes_created.as_secs_f64(),
            options.nodes as f64 / nodes_created.as_secs_f64()
        );
        println!();
        println!(
            "Latency, {} pods of {} GPU one at a time, {} node names per call:",
            options.latency_pods, options.gpus, options.nodes
        );
        println!();
        println!("| call | p50 | p99 | mean |");
        println!("|---|---:|---:|---:|");
        for (what, found) in &latencies {
            println!("{}", found.row(what));
        }
        let cycle = latencies["e. filter + prioritize"].mean().as_secs_f64();
        println!();
        println!("filter + prioritize, sequential: {:.0} pods/s", 1.0 / cycle);
        println!();
        println!("End to end, {} pods of {} GPU each:", options.pods, options.gpus);
        println!();
        println!("| scheduler | percentageOfNodesToScore | pods bound | first create to last bound | pods/s | creates done after | create to bound p50 | p99 |");
        println!("|---|---:|---:|---:|---:|---:|---:|---:|");
        for (label, percentage, run) in &runs {
            // A run cut off by --phase-timeout has no rate: the pods left are the finding.
            let rate = if run.bound == options.pods {
                format!("{:.1}", run.bound as f64 / run.elapsed.as_secs_f64())
            } else {
                format!("none: {} not bound after {} s", options.pods - run.bound, options.phase_timeout.as_secs())
            };
            println!(
                "| {label} | {percentage} | {} of {} | {:.1} s | {rate} | {:.1} s | {:.2} s | {:.2} s |",
                run.bound,
                options.pods,
                run.elapsed.as_secs_f64(),
                run.created_in.as_secs_f64(),
                run.waits.percentile(0.5).as_secs_f64(),
                run.waits.percentile(0.99).as_secs_f64()
            );
        }
        let rate = |run: &Run| run.bound as f64 / run.elapsed.as_secs_f64();
        if let [(_, _, alone), (_, _, with), ..] = runs.as_slice()
            && alone.bound == options.pods
            && with.bound == options.pods
        {
            println!();
            println!("extender / alone: {:.2} (goal: at least 0.5)", rate(with) / rate(alone));
        }
        let calls = calls.lock().expect("lock");
        if !calls.is_empty() {
            println!();
            println!("Calls kube-scheduler made to the extender in the traced run, timed by the proxy:");
            println!();
            println!("| verb | calls | p50 | p99 | mean | sum | request | answer |");
            println!("|---|---:|---:|---:|---:|---:|---:|---:|");
            for row in call_rows(&calls, options.pods) {
                println!("{row}");
            }
        }
        drop(allot_k8s);
    });
}
