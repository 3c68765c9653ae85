//! The control-plane harness against upstream Kubernetes: a real kube-apiserver
//! and kube-scheduler (v1.37.2, `plugins/kubernetes/control-plane/build.sh`) on
//! a real etcd. Nodes are API objects with the extended resource a device plugin
//! would report (`allot.io/gpu`); the scheduler binds pods to them by itself, and
//! through a scheduler extender that the test serves (`extender/v1` JSON), which
//! is the wiring `allot-k8s` plugs into.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use allot_tests::control_plane::{
    ControlPlane, create_namespace, create_node, create_pod, node_name, pod_events, pod_requesting, wait_for_pod,
};
use axum::Router;
use axum::body::Bytes;
use axum::http::{StatusCode, header};
use axum::routing::post;
use serde_json::{Value, json};

/// How long a scheduling decision may take to show: the scheduler acts within
/// a second; the margin is for a busy machine.
const LONG: Duration = Duration::from_secs(60);

const GPU: &str = "allot.io/gpu";

/// What a node with 8 GPUs reports once its device plugin registered.
const NODE_RESOURCES: [(&str, &str); 4] = [(GPU, "8"), ("cpu", "64"), ("memory", "512Gi"), ("pods", "110")];

/// Two Ready nodes with 8 GPUs each and a namespace for the pods.
async fn two_gpu_nodes(control_plane: &ControlPlane, namespace: &str) {
    let client = control_plane.client();
    for name in ["gpu-node-1", "gpu-node-2"] {
        let node = create_node(&client, name, &[("allot.io/fixture", "dgx-h100")], &NODE_RESOURCES)
            .await
            .unwrap_or_else(|error| panic!("cannot create node {name}: {error}"));
        let allocatable = node.status.and_then(|status| status.allocatable).unwrap_or_default();
        assert_eq!(allocatable.get(GPU).map(|quantity| quantity.0.as_str()), Some("8"), "node {name}'s allocatable");
    }
    create_namespace(&client, namespace, &[("allot.io/team", "vision")])
        .await
        .unwrap_or_else(|error| panic!("cannot create namespace {namespace}: {error}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_scheduler_binds_a_gpu_pod_to_a_node_with_the_extended_resource() {
    let mut control_plane = ControlPlane::start().await;
    eprintln!("control plane (etcd, kube-apiserver) ready in {:?}", control_plane.started_in());
    let scheduler_ready = control_plane.start_scheduler(&json!({})).await;
    eprintln!("kube-scheduler ready in {scheduler_ready:?}");
    two_gpu_nodes(&control_plane, "vision").await;
    let client = control_plane.client();

    create_pod(&client, &pod_requesting("vision", "train", &[(GPU, "4")])).await.expect("create the pod");
    let pod =
        wait_for_pod(&client, "vision", "train", "is bound to a node", LONG, |pod| node_name(pod).is_some()).await;
    let node = node_name(&pod).unwrap_or_default();
    assert!(["gpu-node-1", "gpu-node-2"].contains(&node), "bound to {node}, not one of the GPU nodes");

    // Asking for more than any node has leaves the pod Pending, and the scheduler says why.
    create_pod(&client, &pod_requesting("vision", "too-big", &[(GPU, "9")])).await.expect("create the pod");
    let reason = wait_for_failed_scheduling(&control_plane, "vision", "too-big").await;
    assert!(reason.contains(&format!("Insufficient {GPU}")), "the scheduler's reason: {reason}");
}

/// The extender's state: how many filter calls it answered, and the last args.
#[derive(Default)]
struct Seen {
    filter_calls: usize,
    last_args: Value,
}

const REFUSAL: &str = "allot: team vision has no GPUs left on this node";

/// An `extender/v1` filter that refuses every node with [`REFUSAL`]. With
/// `nodeCacheCapable` the scheduler sends `NodeNames` and reads them back.
async fn refuse_every_node(
    seen: Arc<Mutex<Seen>>,
    body: Bytes,
) -> (StatusCode, [(header::HeaderName, &'static str); 1], String) {
    let json_type = [(header::CONTENT_TYPE, "application/json")];
    let args: Value = match serde_json::from_slice(&body) {
        Ok(args) => args,
        Err(error) => return (StatusCode::BAD_REQUEST, json_type, json!({"Error": error.to_string()}).to_string()),
    };
    let failed: BTreeMap<String, &str> = args["NodeNames"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|name| (name.to_owned(), REFUSAL))
        .collect();
    if let Ok(mut seen) = seen.lock() {
        seen.filter_calls += 1;
        seen.last_args = args;
    }
    let result = json!({"NodeNames": [], "FailedNodes": failed, "FailedAndUnresolvableNodes": {}, "Error": ""});
    (StatusCode::OK, json_type, result.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduler_extender_that_refuses_every_node_leaves_the_pod_pending_with_its_reason() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the extender");
    let extender_url = format!("http://{}", listener.local_addr().expect("extender address"));
    let state = Arc::clone(&seen);
    let app = Router::new().route("/filter", post(move |body: Bytes| refuse_every_node(Arc::clone(&state), body)));
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let mut control_plane = ControlPlane::start().await;
    control_plane
        .start_scheduler(&json!({
            "extenders": [{
                "urlPrefix": extender_url,
                "filterVerb": "filter",
                "nodeCacheCapable": true,
                "managedResources": [{"name": GPU, "ignoredByScheduler": false}],
                "httpTimeout": "5s",
            }],
        }))
        .await;
    two_gpu_nodes(&control_plane, "vision").await;
    let client = control_plane.client();

    create_pod(&client, &pod_requesting("vision", "refused", &[(GPU, "4")])).await.expect("create the pod");
    let reason = wait_for_failed_scheduling(&control_plane, "vision", "refused").await;
    assert!(reason.contains(REFUSAL), "the FailedScheduling event does not carry the extender's reason: {reason}");
    let pod = wait_for_pod(&client, "vision", "refused", "exists", LONG, |_| true).await;
    assert_eq!(node_name(&pod), None, "a pod every node refused was bound");
    assert_eq!(pod.status.and_then(|status| status.phase).as_deref(), Some("Pending"));

    let seen = seen.lock().expect("the extender's state");
    assert!(seen.filter_calls >= 1);
    // What allot-k8s will read: the pod (Go field names, the pod as the API server has it)
    // and, with nodeCacheCapable, node names only.
    assert_eq!(seen.last_args["Pod"]["metadata"]["name"], "refused");
    assert_eq!(seen.last_args["Pod"]["spec"]["containers"][0]["resources"]["requests"][GPU], "4");
    let mut names: Vec<&str> =
        seen.last_args["NodeNames"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["gpu-node-1", "gpu-node-2"]);
    assert!(seen.last_args.get("Nodes").is_none_or(Value::is_null), "nodeCacheCapable sends no Node objects");
    server.abort();
}

/// Waits for the scheduler's FailedScheduling event about a pod; returns its message.
async fn wait_for_failed_scheduling(control_plane: &ControlPlane, namespace: &str, pod: &str) -> String {
    let client = control_plane.client();
    let deadline = std::time::Instant::now() + LONG;
    loop {
        let events = pod_events(&client, namespace, pod).await.unwrap_or_default();
        if let Some(event) = events.iter().rev().find(|event| event.reason.as_deref() == Some("FailedScheduling")) {
            return event.message.clone().unwrap_or_default();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no FailedScheduling event for {namespace}/{pod} within {LONG:?}; events: {:?}\nkube-scheduler's log:\n{}",
            events.iter().map(|event| (&event.reason, &event.message)).collect::<Vec<_>>(),
            control_plane.scheduler_log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
