//! allot-k8s on a real control plane: kube-apiserver and kube-scheduler v1.37.2
//! (built from upstream, `plugins/kubernetes/control-plane/build.sh`) with the
//! extender configured, a real broker and three allot-node daemons on the
//! dgx-h100 fixture whose names are the Node objects' names.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use allot_tests::control_plane::{
    ControlPlane, create_namespace, create_node, create_pod, deployed_scheduler_config, force_delete_pod, node_name,
    pod_events, pod_requesting, start_allot_k8s, wait_for_pod,
};
use allot_tests::{
    Broker, Process, StoreKind, allotctl, allotctl_json, node_statuses, repo, start_broker_with, start_node, wait_until,
};
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use serde_json::Value;

const GPU: &str = "allot.io/gpu";
const NODES: [&str; 3] = ["node-a", "node-b", "node-c"];
/// A scheduling decision shows within a second or two; the margin is for a busy machine.
const LONG: Duration = Duration::from_secs(60);

/// Applies the ServiceAccount and RBAC of `plugins/kubernetes/deploy/allot-k8s.yaml`
/// and returns a kubeconfig with that ServiceAccount's token: allot-k8s runs with
/// exactly the rights the manifest grants.
async fn deployed_kubeconfig(control_plane: &ControlPlane, dir: &Path) -> PathBuf {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    use k8s_openapi::api::core::v1::ServiceAccount;
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
    use kube::Api;
    use kube::api::PostParams;
    let client = control_plane.client();
    let manifest = std::fs::read_to_string(repo().join("plugins/kubernetes/deploy/allot-k8s.yaml")).expect("manifest");
    create_namespace(&client, "allot-system", &[]).await.expect("namespace allot-system");
    let post = PostParams::default();
    for document in manifest.split("\n---\n") {
        let value: Value = serde_saphyr::from_str(document).unwrap_or_else(|error| panic!("manifest YAML: {error}"));
        match value["kind"].as_str() {
            Some("ServiceAccount") => {
                let account: ServiceAccount = serde_json::from_value(value).expect("ServiceAccount");
                Api::<ServiceAccount>::namespaced(client.clone(), "allot-system")
                    .create(&post, &account)
                    .await
                    .expect("create");
            }
            Some("ClusterRole") => {
                let role: ClusterRole = serde_json::from_value(value).expect("ClusterRole");
                Api::<ClusterRole>::all(client.clone()).create(&post, &role).await.expect("create");
            }
            Some("ClusterRoleBinding") => {
                let binding: ClusterRoleBinding = serde_json::from_value(value).expect("ClusterRoleBinding");
                Api::<ClusterRoleBinding>::all(client.clone()).create(&post, &binding).await.expect("create");
            }
            _ => {}
        }
    }
    let request = TokenRequest {
        spec: Some(TokenRequestSpec { expiration_seconds: Some(3600), ..TokenRequestSpec::default() }),
        ..TokenRequest::default()
    };
    let issued: TokenRequest = Api::<ServiceAccount>::namespaced(client.clone(), "allot-system")
        .create_subresource("token", "allot-k8s", &post, &request)
        .await
        .expect("a token for the allot-k8s ServiceAccount");
    let token = issued.status.and_then(|status| status.token).expect("the issued token");
    let admin = std::fs::read_to_string(control_plane.kubeconfig()).expect("admin kubeconfig");
    assert!(admin.contains(control_plane.admin_token()));
    let path = dir.join("allot-k8s.kubeconfig");
    std::fs::write(&path, admin.replace(control_plane.admin_token(), &token)).expect("write kubeconfig");
    path
}

fn pod_with(namespace: &str, name: &str, gpus: u32, annotations: &[(&str, &str)]) -> Pod {
    let mut pod = pod_requesting(namespace, name, &[(GPU, &gpus.to_string())]);
    if !annotations.is_empty() {
        pod.metadata.annotations =
            Some(annotations.iter().map(|(key, value)| (key.to_string(), value.to_string())).collect());
    }
    pod
}

/// The broker's live allocations, by owner.
fn live_by_owner(broker: &Broker) -> BTreeMap<String, Vec<Value>> {
    let mut found: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for allocation in allotctl_json(broker, &["alloc", "list"]).as_array().cloned().unwrap_or_default() {
        let owner = allocation["owner"].as_str().unwrap_or_default().to_owned();
        found.entry(owner).or_default().push(allocation);
    }
    found
}

fn owner_of(pod: &Pod) -> String {
    format!(
        "pod:{}/{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default(),
        pod.metadata.uid.as_deref().unwrap_or_default()
    )
}

async fn events_text(client: &Client, namespace: &str, pod: &str) -> String {
    pod_events(client, namespace, pod)
        .await
        .unwrap_or_default()
        .iter()
        .map(|event| format!("{}: {}", event.reason.as_deref().unwrap_or(""), event.message.as_deref().unwrap_or("")))
        .collect::<Vec<_>>()
        .join("\n")
}

async fn wait_for_event(client: &Client, namespace: &str, pod: &str, needle: &str) -> String {
    let deadline = Instant::now() + LONG;
    loop {
        let text = events_text(client, namespace, pod).await;
        if text.contains(needle) {
            return text;
        }
        if Instant::now() > deadline {
            panic!("no event of pod {namespace}/{pod} contains {needle:?}; its events:\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn bound(pod: &Pod) -> bool {
    node_name(pod).is_some()
}

/// A broker with dgx-h100 node daemons, the teams, and the control plane with
/// a Ready Node object per daemon, sized from what the broker knows of it (its
/// GPUs, its cores, share units for its GPUs).
struct World {
    dir: tempfile::TempDir,
    broker: Broker,
    _nodes: Vec<Process>,
    control_plane: ControlPlane,
    client: Client,
}

impl World {
    /// `teams`: name and guarantee (`gpu/any=8`), or none. `namespaces`: name and
    /// the team its `allot.io/team` label names, or none (unmapped).
    async fn start(
        nodes: &[&str],
        teams: &[(&str, Option<&str>)],
        namespaces: &[(&str, Option<&str>)],
        broker_args: &[&str],
    ) -> World {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = StoreKind::Embedded(dir.path().join("store"));
        // Mutual TLS between allot-k8s, the node daemons and the broker, as deployed.
        let pki = dir.path().join("pki").display().to_string();
        let args: Vec<&str> = broker_args.iter().copied().chain(["--pki", pki.as_str()]).collect();
        let broker = start_broker_with(&store, dir.path(), "broker", "5s", "127.0.0.1:0", &args);
        let daemons: Vec<Process> =
            nodes.iter().map(|name| start_node(&broker, "dgx-h100", name, dir.path())).collect();
        wait_until("every node ready", Duration::from_secs(60), || {
            node_statuses(&broker).iter().filter(|(_, status)| status == "ready").count() == nodes.len()
        });
        for (team, guaranteed) in teams {
            let mut args = vec!["team", "create", team];
            if let Some(guaranteed) = guaranteed {
                args.extend(["--guaranteed", guaranteed]);
            }
            let output = allotctl(&broker, &args);
            assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        }
        let control_plane = ControlPlane::start().await;
        let client = control_plane.client();
        for node in allotctl_json(&broker, &["nodes", "list"]).as_array().cloned().unwrap_or_default() {
            let name = node["name"].as_str().unwrap_or_default();
            let gpus = node["gpus"].as_u64().unwrap_or_default();
            let (gpus, shares, cores) = (gpus.to_string(), (gpus * 100).to_string(), node["cores"].to_string());
            let resources = [
                (GPU, gpus.as_str()),
                ("allot.io/gpu-share", &shares),
                ("cpu", &cores),
                ("memory", "2Ti"),
                ("pods", "110"),
            ];
            create_node(&client, name, &[], &resources)
                .await
                .unwrap_or_else(|error| panic!("cannot create node {name}: {error}"));
        }
        for (namespace, team) in namespaces {
            let labels: Vec<(&str, &str)> = team.iter().map(|team| ("allot.io/team", *team)).collect();
            create_namespace(&client, namespace, &labels).await.expect("namespace");
        }
        World { dir, broker, _nodes: daemons, control_plane, client }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// allot-k8s (as the admin, or with `kubeconfig`) and kube-scheduler pointed at it.
    async fn start_extender(&mut self, kubeconfig: Option<&Path>, name: &str) -> (Process, String) {
        let kubeconfig = kubeconfig.unwrap_or(self.control_plane.kubeconfig()).to_owned();
        let fast = ["--poll", "0.3", "--gone-grace", "3"];
        let (extender, address) = start_allot_k8s(&self.broker, &kubeconfig, self.dir.path(), name, &fast, &[]);
        self.control_plane.start_scheduler(&deployed_scheduler_config(&address)).await;
        (extender, address)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_scheduler_places_gpu_pods_where_the_broker_does_and_waits_in_its_queue() {
    let teams = [("vision", Some("gpu/any=8")), ("nlp", Some("gpu/any=16"))];
    let namespaces = [("vision", Some("vision")), ("nlp", Some("nlp")), ("unmapped", None)];
    let mut world = World::start(&NODES, &teams, &namespaces, &[]).await;
    let client = world.client.clone();
    // allot-k8s with the rights its deploy manifest grants, no more.
    let kubeconfig = deployed_kubeconfig(&world.control_plane, world.path()).await;
    let (mut extender, _) = world.start_extender(Some(&kubeconfig), "allot-k8s").await;

    // 8 NVLink GPUs land on an empty node, exactly where the broker put them.
    create_pod(&client, &pod_with("vision", "big", 8, &[("allot.io/interconnect", "nvlink")])).await.expect("pod");
    let big = wait_for_pod(&client, "vision", "big", "is bound", LONG, bound).await;
    let live = live_by_owner(&world.broker);
    let allocation =
        &live.get(&owner_of(&big)).unwrap_or_else(|| panic!("no allocation owned by {}: {live:#?}", owner_of(&big)))[0];
    assert_eq!(allocation["node"].as_str(), node_name(&big), "the pod is where the broker placed it");
    assert_eq!(allocation["gpus"].as_array().map(Vec::len), Some(8));
    let annotations = big.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(annotations.get("allot.io/allocation").map(String::as_str), allocation["id"].as_str());
    let devices = annotations.get("allot.io/devices").cloned().unwrap_or_default();
    assert_eq!(devices.split(',').count(), 8, "the pod names its 8 GPUs: {devices}");

    // 4-GPU pods get 4 NVLink GPUs of one NUMA node each.
    for name in ["nlp-0", "nlp-1"] {
        create_pod(&client, &pod_with("nlp", name, 4, &[])).await.expect("pod");
    }
    for name in ["nlp-0", "nlp-1"] {
        let pod = wait_for_pod(&client, "nlp", name, "is bound", LONG, bound).await;
        let live = live_by_owner(&world.broker);
        let allocation = &live[&owner_of(&pod)][0];
        assert_eq!(allocation["numa_nodes"].as_array().map(Vec::len), Some(1), "{name}: one NUMA node: {allocation}");
        assert_eq!(allocation["node"].as_str(), node_name(&pod));
        assert_ne!(node_name(&pod), node_name(&big), "the 8-GPU node is full");
    }

    // Fill the cluster, then a vision pod waits with the broker's reason and place.
    for name in ["nlp-2", "nlp-3"] {
        create_pod(&client, &pod_with("nlp", name, 4, &[])).await.expect("pod");
        wait_for_pod(&client, "nlp", name, "is bound", LONG, bound).await;
    }
    create_pod(&client, &pod_with("vision", "waiting", 4, &[])).await.expect("pod");
    let events = wait_for_event(&client, "vision", "waiting", "waiting in the broker's queue at position 1").await;
    assert!(events.contains("FailedScheduling"), "kube-scheduler says why: {events}");
    let pod = wait_for_pod(&client, "vision", "waiting", "exists", LONG, |_| true).await;
    assert!(!bound(&pod), "a waiting pod stays Pending");
    let waiting_owner = owner_of(&pod);
    assert_eq!(live_by_owner(&world.broker)[&waiting_owner][0]["state"], "pending");

    // Restart allot-k8s in the middle: nothing lost, nothing duplicated.
    extender.kill();
    extender = world.start_extender(Some(&kubeconfig), "allot-k8s-2").await.0;

    // Deleting a pod releases its allocation; the waiting pod is bound soon after.
    let nlp3 = wait_for_pod(&client, "nlp", "nlp-3", "exists", LONG, |_| true).await;
    force_delete_pod(&client, "nlp", "nlp-3").await.expect("delete");
    let released = owner_of(&nlp3);
    wait_until("nlp-3's allocation is released", LONG, || !live_by_owner(&world.broker).contains_key(&released));
    let pod = wait_for_pod(&client, "vision", "waiting", "is bound once nlp-3 is gone", LONG, bound).await;
    assert_eq!(
        live_by_owner(&world.broker)[&waiting_owner][0]["node"].as_str(),
        node_name(&pod),
        "the waiting pod runs where the broker admitted it"
    );

    // allot-k8s's own events go out with the manifest's rights too.
    create_pod(&client, &pod_with("unmapped", "orphan", 1, &[])).await.expect("pod");
    wait_for_event(&client, "unmapped", "orphan", "is not mapped to an Allot team").await;
    for log in ["allot-k8s.log", "allot-k8s-2.log"] {
        let text = std::fs::read_to_string(world.path().join(log)).unwrap_or_default();
        assert!(!text.contains("forbidden"), "allot-k8s lacked a right its manifest should grant:\n{text}");
    }

    // Every pod holds exactly one live allocation, and every pod allocation has its pod.
    let live = live_by_owner(&world.broker);
    for (namespace, name) in
        [("vision", "big"), ("vision", "waiting"), ("nlp", "nlp-0"), ("nlp", "nlp-1"), ("nlp", "nlp-2")]
    {
        let pod = wait_for_pod(&client, namespace, name, "exists", LONG, |_| true).await;
        assert_eq!(live.get(&owner_of(&pod)).map(Vec::len), Some(1), "{namespace}/{name}: {live:#?}");
    }
    let pod_owned = live.keys().filter(|owner| owner.starts_with("pod:")).count();
    assert_eq!(pod_owned, 5, "no allocation without its pod: {live:#?}");
    drop(extender);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_pods_get_events_that_say_what_to_fix_and_bad_json_gets_a_400() {
    let teams = [("vision", Some("gpu/any=8"))];
    let namespaces = [("vision", Some("vision")), ("unmapped", None)];
    let mut world = World::start(&["node-a"], &teams, &namespaces, &[]).await;
    let client = world.client.clone();
    let (_extender, address) = world.start_extender(None, "allot-k8s").await;

    // An annotation with a value Allot does not know.
    create_pod(&client, &pod_with("vision", "typo", 2, &[("allot.io/interconnect", "infiniband")])).await.expect("pod");
    wait_for_event(
        &client,
        "vision",
        "typo",
        "annotation allot.io/interconnect: \"infiniband\" is not one of nvlink, pcie-switch, numa, any",
    )
    .await;
    // A shape no node can ever hold.
    create_pod(&client, &pod_with("vision", "nine", 9, &[("allot.io/interconnect", "nvlink")])).await.expect("pod");
    wait_for_event(&client, "vision", "nine", "E-IMPOSSIBLE").await;
    // A namespace with no team.
    create_pod(&client, &pod_with("unmapped", "orphan", 1, &[])).await.expect("pod");
    wait_for_event(&client, "unmapped", "orphan", "kubectl label namespace unmapped allot.io/team=<team>").await;
    let live = live_by_owner(&world.broker);
    assert!(live.keys().all(|owner| !owner.starts_with("pod:")), "nothing was granted: {live:#?}");

    // Malformed and truncated JSON: a 400 naming what is wrong.
    for (body, needle) in [
        (r#"{"Pod": {"metadata": {"name": "p"}}, "NodeNames": 7}"#, "NodeNames"),
        (r#"{"Pod": {"metadata": {"#, "EOF"),
        (r#"{"NodeNames": ["node-a"]}"#, "missing field `Pod`"),
    ] {
        let (status, text) = post(&address, "/filter", body).await;
        assert_eq!(status, 400, "{body}: {text}");
        assert!(text.contains(needle), "{body}: {text}");
    }
    let (status, text) = post(&address, "/bind", r#"{"PodName": "p", "Node": "node-a"}"#).await;
    assert_eq!(status, 400);
    assert!(text.contains("PodNamespace") || text.contains("PodUID"), "{text}");

    // The broker unreachable: filter fails closed and nothing is bound.
    drop(world.broker);
    create_pod(&client, &pod_with("vision", "no-broker", 1, &[])).await.expect("pod");
    wait_for_event(&client, "vision", "no-broker", "does not answer").await;
    let pod = wait_for_pod(&client, "vision", "no-broker", "exists", LONG, |_| true).await;
    assert!(!bound(&pod), "nothing is bound without an allocation");
}

/// POSTs `body` to the extender; returns the status and the body.
async fn post(address: &str, path: &str, body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.expect("connect to allot-k8s");
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    let status = response.split_whitespace().nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn borrowed_pods_are_evicted_when_a_team_asks_within_its_guarantee() {
    let teams = [("vision", Some("gpu/any=8")), ("nlp", Some("gpu/any=16"))];
    let namespaces = [("vision", Some("vision")), ("nlp", Some("nlp"))];
    let mut world = World::start(&NODES, &teams, &namespaces, &["--reclaim-grace", "2s"]).await;
    let client = world.client.clone();
    let _extender = world.start_extender(None, "allot-k8s").await;

    // nlp (guaranteed 16) fills all 24 GPUs: its last two pods borrow vision's idle 8.
    let mut nlp = Vec::new();
    for index in 0..6 {
        let name = format!("nlp-{index}");
        create_pod(&client, &pod_with("nlp", &name, 4, &[])).await.expect("pod");
        nlp.push(wait_for_pod(&client, "nlp", &name, "is bound", LONG, bound).await);
    }
    let live = live_by_owner(&world.broker);
    let borrowed: Vec<&Pod> = nlp.iter().filter(|pod| live[&owner_of(pod)][0]["preemptible"] == true).collect();
    assert_eq!(borrowed.len(), 2, "two nlp pods borrow: {live:#?}");

    // vision asks within its guarantee: the newest borrowed nlp pod is reclaimed,
    // evicted after the grace period, and vision's pod runs in its place.
    create_pod(&client, &pod_with("vision", "owed", 4, &[])).await.expect("pod");
    let victim = nlp.last().expect("six pods");
    let victim_name = victim.metadata.name.clone().unwrap_or_default();
    wait_for_event(&client, "nlp", &victim_name, "Allot reclaims this pod's GPUs").await;
    let evicted =
        wait_for_pod(&client, "nlp", &victim_name, "is evicted", LONG, |pod| pod.metadata.deletion_timestamp.is_some())
            .await;
    assert!(evicted.metadata.deletion_timestamp.is_some());
    wait_for_event(&client, "nlp", &victim_name, "Allot preempted allocation").await;
    let owed = wait_for_pod(&client, "vision", "owed", "is bound after the reclaim", LONG, bound).await;
    assert_eq!(node_name(&owed), node_name(victim), "vision runs on the reclaimed GPUs");

    // nlp's other pods are untouched, its own guarantee included.
    for pod in &nlp[..5] {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let now = wait_for_pod(&client, "nlp", &name, "exists", LONG, |_| true).await;
        assert!(now.metadata.deletion_timestamp.is_none(), "{name} was not reclaimed");
    }
    let live = live_by_owner(&world.broker);
    assert!(!live.contains_key(&owner_of(victim)), "the victim's allocation is gone: {live:#?}");
    assert_eq!(live.keys().filter(|owner| owner.starts_with("pod:nlp/")).count(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gang_starts_all_at_once_or_not_at_all() {
    let nodes = ["node-a", "node-b", "node-c", "node-d"];
    let teams = [("ml", None), ("ops", None)];
    let namespaces = [("ml", Some("ml")), ("ops", Some("ops"))];
    let mut world = World::start(&nodes, &teams, &namespaces, &[]).await;
    let client = world.client.clone();
    let _extender = world.start_extender(None, "allot-k8s").await;

    // One node busy: three are free, and the gang needs four.
    create_pod(&client, &pod_with("ops", "blocker", 8, &[])).await.expect("pod");
    wait_for_pod(&client, "ops", "blocker", "is bound", LONG, bound).await;
    let members: Vec<String> = (0..4).map(|index| format!("train-{index}")).collect();
    for name in &members {
        let annotations =
            [("allot.io/gang", "train"), ("allot.io/gang-size", "4"), ("allot.io/interconnect", "nvlink")];
        create_pod(&client, &pod_with("ml", name, 8, &annotations)).await.expect("pod");
    }
    let last = members.last().expect("four members");
    wait_for_event(&client, "ml", last, "gang train (4 pods) waits until all of them fit at once").await;
    // A few scheduling rounds later, still none of them runs or holds a GPU.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for name in &members {
        let pod = wait_for_pod(&client, "ml", name, "exists", LONG, |_| true).await;
        assert!(!bound(&pod), "{name} started without its gang");
    }
    let live = live_by_owner(&world.broker);
    assert!(live.keys().all(|owner| !owner.starts_with("pod:ml/")), "a waiting gang holds nothing: {live:#?}");

    // The fourth node frees: all four start, one per node.
    force_delete_pod(&client, "ops", "blocker").await.expect("delete");
    let mut used = std::collections::BTreeSet::new();
    for name in &members {
        let pod = wait_for_pod(&client, "ml", name, "is bound with its gang", LONG, bound).await;
        used.insert(node_name(&pod).unwrap_or_default().to_owned());
    }
    assert_eq!(used.len(), 4, "one 8-GPU member per node: {used:?}");
    let live = live_by_owner(&world.broker);
    assert_eq!(live.keys().filter(|owner| owner.starts_with("pod:ml/")).count(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_share_with_its_own_memory_cap_is_placed_by_the_broker_and_one_without_by_the_plugin() {
    let teams = [("vision", Some("gpu/any=8"))];
    let mut world = World::start(&["node-a"], &teams, &[("vision", Some("vision"))], &[]).await;
    let client = world.client.clone();
    let _extender = world.start_extender(None, "allot-k8s").await;

    let mut capped = pod_requesting("vision", "capped", &[("allot.io/gpu-share", "30")]);
    capped.metadata.annotations = Some([("allot.io/gpu-memory".to_owned(), "10000".to_owned())].into());
    create_pod(&client, &capped).await.expect("pod");
    let capped = wait_for_pod(&client, "vision", "capped", "is bound", LONG, bound).await;
    let live = live_by_owner(&world.broker);
    let allocation = &live.get(&owner_of(&capped)).unwrap_or_else(|| panic!("no allocation: {live:#?}"))[0];
    assert_eq!(allocation["gpus"][0]["share"]["milli_gpu"], 300, "{allocation}");
    assert_eq!(allocation["gpus"][0]["share"]["memory_mib"], 10000, "its own cap: {allocation}");

    create_pod(&client, &pod_requesting("vision", "plain", &[("allot.io/gpu-share", "25")])).await.expect("pod");
    let plain = wait_for_pod(&client, "vision", "plain", "is bound", LONG, bound).await;
    assert!(
        !live_by_owner(&world.broker).contains_key(&owner_of(&plain)),
        "a share without its own cap is left to the device plugin on the node"
    );
}
