//! OpenTelemetry end to end: the broker's and a node daemon's `/metrics` parse
//! with an independent Prometheus text parser and hold the latency histograms
//! and dcgm-exporter's GPU names (every metric the shipped Grafana dashboard
//! queries among them), and a test OTLP collector receives one trace that
//! spans the broker and the node for one allocation.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use allot_tests::{
    Broker, Process, StoreKind, allotctl_json, http_get, repo, start_broker_with, start_enforcing_node, wait_until,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;

fn scrape(text: &str) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(text.lines().map(|line| Ok(line.to_owned())))
        .unwrap_or_else(|error| panic!("/metrics is not Prometheus text ({error}):\n{text}"))
}

fn names(scrape: &prometheus_parse::Scrape) -> BTreeSet<String> {
    scrape.samples.iter().map(|sample| sample.metric.clone()).collect()
}

/// The address a node daemon logged for its `/metrics`.
fn node_metrics_address(node: &Process) -> String {
    let mut address = None;
    wait_until("the node serves /metrics", Duration::from_secs(20), || {
        let log = node.log_text();
        address =
            log.split("metrics on http://").nth(1).and_then(|rest| rest.split("/metrics").next()).map(str::to_owned);
        address.is_some()
    });
    address.expect("an address")
}

/// The dgx-h100 fixture as a busy machine: its GPUs report 40 % utilisation
/// (the bundled one says NVML does not support it, as some VMs do).
fn busy_fixture(root: &Path) -> std::path::PathBuf {
    let fixtures = root.join("fixtures").join("dgx-busy");
    std::fs::create_dir_all(root.join("fixtures")).expect("fixtures dir");
    let source = repo().join("tests/data/dgx-h100");
    let copied = std::process::Command::new("cp").arg("-r").arg(&source).arg(&fixtures).status().expect("cp runs");
    assert!(copied.success(), "cannot copy the dgx-h100 fixture");
    let description = std::fs::read_to_string(source.join("nvml.toml")).expect("nvml.toml");
    let busy = description.replace("power_limit_mw = 700000", "power_limit_mw = 700000\nutilization_gpu_pct = 40");
    assert!(busy.contains("utilization_gpu_pct"), "the fixture was not edited");
    std::fs::write(fixtures.join("nvml.toml"), busy).expect("write nvml.toml");
    root.join("fixtures")
}

fn ready_node(broker: &Broker, dir: &Path, extra: &[&str]) -> Process {
    let mut args = vec!["--no-enforce"];
    args.extend_from_slice(extra);
    let fixtures = busy_fixture(dir);
    let node = start_enforcing_node(broker, "dgx-busy", "gpu-a", dir, &args, &[("ALLOT_FIXTURES_DIR", &fixtures)]);
    wait_until("gpu-a is ready", Duration::from_secs(30), || {
        allot_tests::node_statuses(broker).iter().any(|(name, status)| name == "gpu-a" && status == "ready")
    });
    node
}

#[test]
fn metrics_parse_and_hold_the_histograms_the_gpu_names_and_what_the_dashboard_asks_for() {
    let dir = tempfile::tempdir().expect("temp dir");
    let broker = start_broker_with(
        &StoreKind::Embedded(dir.path().join("store")),
        dir.path(),
        "broker",
        "5s",
        "127.0.0.1:0",
        &[],
    );
    let node = ready_node(&broker, dir.path(), &["--metrics-listen", "127.0.0.1:0"]);
    allotctl_json(&broker, &["team", "create", "ml"]);
    // A grant, a request that waits for it, and the release that admits it:
    // every histogram gets a sample.
    let first = allotctl_json(&broker, &["alloc", "create", "--team", "ml", "--gpus", "8"]);
    let waiting = allotctl_json(&broker, &["alloc", "create", "--team", "ml", "--gpus", "1"]);
    assert_eq!(waiting["state"], "pending", "{waiting}");
    allotctl_json(&broker, &["alloc", "release", first["id"].as_str().expect("id")]);
    let id = waiting["id"].as_str().expect("id").to_owned();
    wait_until("the waiting request is admitted", Duration::from_secs(10), || {
        allotctl_json(&broker, &["alloc", "get", &id])["state"] != "pending"
    });

    let token = std::fs::read_to_string(&broker.admin_token).expect("admin token");
    let text = http_get(&broker.http, "/metrics", Some(&token)).expect("the broker's /metrics");
    let broker_metrics = scrape(&text);
    let broker_names = names(&broker_metrics);
    for histogram in [
        "allot_rpc_duration_seconds",
        "allot_placement_duration_seconds",
        "allot_store_txn_duration_seconds",
        "allot_queue_wait_seconds",
    ] {
        let sample = broker_metrics
            .samples
            .iter()
            .find(|sample| sample.metric == histogram)
            .unwrap_or_else(|| panic!("no {histogram} in /metrics:\n{text}"));
        match &sample.value {
            prometheus_parse::Value::Histogram(buckets) => {
                assert!(buckets.iter().any(|bucket| bucket.count > 0.0), "{histogram} counted nothing:\n{text}")
            }
            other => panic!("{histogram} is not a histogram: {other:?}"),
        }
    }
    let create = broker_metrics.samples.iter().find(|sample| {
        sample.metric == "allot_rpc_duration_seconds" && sample.labels.get("rpc") == Some("AllocationService/Create")
    });
    assert!(create.is_some(), "no latency of AllocationService/Create:\n{text}");
    for gauge in ["allot_nodes", "allot_allocations", "allot_gpus", "allot_queue_pending", "allot_writer_batches_total"]
    {
        assert!(broker_names.contains(gauge), "no {gauge} in /metrics:\n{text}");
    }
    let used = broker_metrics
        .samples
        .iter()
        .find(|sample| sample.metric == "allot_gpus" && sample.labels.get("use") == Some("used"))
        .expect("allot_gpus{use=used}");
    assert!(matches!(used.value, prometheus_parse::Value::Gauge(value) if value == 1.0), "{used:?}");

    let address = node_metrics_address(&node);
    let text = http_get(&address, "/metrics", None).expect("the node's /metrics");
    let node_metrics = scrape(&text);
    let node_names = names(&node_metrics);
    let temperatures: Vec<_> =
        node_metrics.samples.iter().filter(|sample| sample.metric == "DCGM_FI_DEV_GPU_TEMP").collect();
    assert_eq!(temperatures.len(), 8, "one temperature per GPU of the DGX H100 fixture:\n{text}");
    for sample in &temperatures {
        assert_eq!(sample.labels.get("Hostname"), Some("gpu-a"));
        assert!(sample.labels.get("UUID").is_some_and(|uuid| uuid.starts_with("GPU-")), "{sample:?}");
        assert!(sample.labels.get("modelName").is_some_and(|model| model.contains("H100")), "{sample:?}");
    }
    let busy = node_metrics
        .samples
        .iter()
        .filter(|sample| sample.metric == "DCGM_FI_DEV_GPU_UTIL")
        .filter(|sample| matches!(sample.value, prometheus_parse::Value::Gauge(value) if value == 40.0))
        .count();
    assert_eq!(busy, 8, "every GPU's utilisation, as NVML reports it:\n{text}");
    for name in ["DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE", "DCGM_FI_DEV_POWER_USAGE", "allot_node_gpu_healthy"] {
        assert!(node_names.contains(name), "no {name} on the node's /metrics:\n{text}");
    }

    // Every metric the Grafana dashboard queries is served by one of the two.
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join("docs/grafana/allot.json")).expect("dashboard"))
            .expect("the dashboard is JSON");
    let mut queried = BTreeSet::new();
    collect_queries(&dashboard, &mut queried);
    assert!(queried.len() > 15, "only {} metrics found in the dashboard's queries", queried.len());
    let served: BTreeSet<String> = broker_names.union(&node_names).cloned().collect();
    let missing: Vec<_> = queried
        .iter()
        .filter(|name| {
            let base = name.trim_end_matches("_bucket").trim_end_matches("_count").trim_end_matches("_sum");
            !served.contains(*name) && !served.contains(base)
        })
        .collect();
    assert!(missing.is_empty(), "the dashboard queries metrics nobody serves: {missing:?}\nserved: {served:?}");
}

/// Metric names (Allot's and DCGM's) in every `expr` and `query` of a dashboard.
fn collect_queries(value: &serde_json::Value, names: &mut BTreeSet<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                if matches!(key.as_str(), "expr" | "query" | "definition")
                    && let Some(text) = value.as_str()
                {
                    let mut word = String::new();
                    for character in text.chars().chain([' ']) {
                        if character.is_ascii_alphanumeric() || character == '_' {
                            word.push(character);
                        } else {
                            if word.starts_with("allot_") || word.starts_with("DCGM_") {
                                names.insert(word.clone());
                            }
                            word.clear();
                        }
                    }
                }
                collect_queries(value, names);
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|item| collect_queries(item, names)),
        _ => {}
    }
}

/// A span as the test collector keeps it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    trace: Vec<u8>,
    id: Vec<u8>,
    parent: Vec<u8>,
}

#[derive(Debug, Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Received>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().expect("spans");
        for resource in request.into_inner().resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|resource| &resource.attributes)
                .find(|attribute| attribute.key == "service.name")
                .and_then(|attribute| match attribute.value.as_ref()?.value.as_ref()? {
                    AnyValue::StringValue(name) => Some(name.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for scope in resource.scope_spans {
                for span in scope.spans {
                    spans.push(Received {
                        service: service.clone(),
                        name: span.name,
                        trace: span.trace_id,
                        id: span.span_id,
                        parent: span.parent_span_id,
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

#[test]
fn one_allocation_is_one_trace_from_the_create_through_the_commit_to_the_node() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let collector = Collector::default();
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("collector port");
    let endpoint = format!("http://{}", listener.local_addr().expect("address"));
    let service = TraceServiceServer::new(collector.clone());
    runtime.spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
    });

    let dir = tempfile::tempdir().expect("temp dir");
    let store = StoreKind::Embedded(dir.path().join("store"));
    let broker = start_broker_with(&store, dir.path(), "broker", "5s", "127.0.0.1:0", &["--otlp-endpoint", &endpoint]);
    let _node = ready_node(&broker, dir.path(), &["--otlp-endpoint", &endpoint]);
    allotctl_json(&broker, &["team", "create", "ml"]);
    let created = allotctl_json(&broker, &["alloc", "create", "--team", "ml", "--gpus", "2"]);
    assert_eq!(created["state"], "bound", "{created}");

    // Spans are sent in batches (every 5 s by default).
    let mut trace: HashMap<String, Received> = HashMap::new();
    wait_until("the collector has the allocation's trace from both processes", Duration::from_secs(40), || {
        let spans = collector.spans.lock().expect("spans").clone();
        let Some(create) =
            spans.iter().find(|span| span.service == "allot-broker" && span.name == "AllocationService/Create")
        else {
            return false;
        };
        trace = spans
            .iter()
            .filter(|span| span.trace == create.trace)
            .map(|span| (format!("{}/{}", span.service, span.name), span.clone()))
            .collect();
        trace.contains_key("allot-node/apply") && trace.contains_key("allot-broker/commit")
    });
    let create = &trace["allot-broker/AllocationService/Create"];
    assert!(create.parent.is_empty(), "allotctl sent no trace context: the create is the root");
    for child in ["allot-broker/place", "allot-broker/commit", "allot-node/apply"] {
        let span = trace.get(child).unwrap_or_else(|| panic!("no {child} span in the trace: {trace:?}"));
        assert_eq!(span.parent, create.id, "{child} is not a child of the create: {trace:?}");
        assert_eq!(span.trace, create.trace);
    }
    let services: BTreeSet<&str> = trace.values().map(|span| span.service.as_str()).collect();
    assert_eq!(services, BTreeSet::from(["allot-broker", "allot-node"]));
}
