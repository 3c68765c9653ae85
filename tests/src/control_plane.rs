//! A real Kubernetes control plane on loopback for tests: etcd
//! (`allot_store::testing`), upstream `kube-apiserver` and `kube-scheduler`
//! (k8s.io/kubernetes v1.37.2, built into `target/go/` by
//! `plugins/kubernetes/control-plane/build.sh`), an admin kubeconfig and client,
//! and the API helpers tests need where there is no kubelet: Node objects with
//! the capacity a device plugin would report, labelled namespaces, pods that ask
//! for extended resources, and the events about a pod.
//!
//! ```no_run
//! # async fn example() {
//! use allot_tests::control_plane::{ControlPlane, create_node};
//! let mut control_plane = ControlPlane::start().await;
//! control_plane.start_scheduler(&serde_json::json!({})).await;
//! let node = create_node(&control_plane.client(), "gpu-1", &[], &[("allot.io/gpu", "8")]).await;
//! # }
//! ```
//!
//! Starting panics with what to install or what went wrong (with the log's
//! tail): it is test setup. The API helpers return the client's errors, so a
//! test can also check a refusal.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use allot_store::testing::EtcdHarness;
use base64::Engine as _;
use k8s_openapi::api::core::v1::{Container, Event, Namespace, Node, Pod, PodSpec, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::{Process, repo};

/// How long kube-apiserver and kube-scheduler may take to become ready. They
/// start in seconds; the margin is for a machine busy compiling.
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// The user the scheduler runs as: the bootstrap RBAC policy grants it exactly
/// what a real kube-scheduler may do.
const SCHEDULER_USER: &str = "system:kube-scheduler";

/// The image of the pods tests create; there is no kubelet, so it is never pulled.
pub const PAUSE_IMAGE: &str = "registry.k8s.io/pause:3.10";

/// A single-member control plane on 127.0.0.1: etcd, kube-apiserver and, once
/// [`start_scheduler`](Self::start_scheduler) is called, kube-scheduler. Every
/// process stops when it drops.
pub struct ControlPlane {
    scheduler: Option<Process>,
    apiserver: Process,
    etcd: EtcdHarness,
    url: String,
    kubeconfig: PathBuf,
    scheduler_kubeconfig: PathBuf,
    admin_token: String,
    client: Client,
    scheduler_starts: u32,
    started_in: Duration,
    // Last, so the processes are gone before their directory is deleted.
    dir: TempDir,
}

impl ControlPlane {
    /// Starts etcd and kube-apiserver and waits until the API server's
    /// `/readyz` answers.
    ///
    /// # Panics
    /// When a binary is missing (saying how to build or install it), or when a
    /// process does not become ready (with its log).
    pub async fn start() -> ControlPlane {
        let started = Instant::now();
        let apiserver_binary = go_binary("kube-apiserver");
        // Checked now, so a missing scheduler fails before minutes of waiting.
        go_binary("kube-scheduler");
        let etcd = EtcdHarness::start().await;
        let dir = tempfile::Builder::new()
            .prefix("allot-kube-")
            .tempdir()
            .unwrap_or_else(|error| panic!("cannot create a temporary directory for the control plane: {error}"));
        let credentials = Credentials::write(dir.path()).unwrap_or_else(|error| panic!("{error}"));
        let cert_dir = dir.path().join("certs");
        let mut failure = String::new();
        // Another process may take the port between our probe and the bind; try new ones.
        for _ in 0..3 {
            let port = free_port();
            let mut apiserver =
                spawn_apiserver(&apiserver_binary, dir.path(), &cert_dir, &credentials, &etcd.endpoint(), port);
            let url = format!("https://127.0.0.1:{port}");
            let kubeconfig = dir.path().join("admin.kubeconfig");
            let ca = cert_dir.join("apiserver.crt");
            write_kubeconfig(&kubeconfig, &url, &ca, "admin", &credentials.admin_token);
            match wait_for_apiserver(&mut apiserver, port, &kubeconfig, &ca).await {
                Ok(client) => {
                    let scheduler_kubeconfig = dir.path().join("scheduler.kubeconfig");
                    write_kubeconfig(&scheduler_kubeconfig, &url, &ca, SCHEDULER_USER, &credentials.scheduler_token);
                    return ControlPlane {
                        scheduler: None,
                        apiserver,
                        etcd,
                        url,
                        kubeconfig,
                        scheduler_kubeconfig,
                        admin_token: credentials.admin_token,
                        client,
                        scheduler_starts: 0,
                        started_in: started.elapsed(),
                        dir,
                    };
                }
                Err(why) => {
                    apiserver.kill();
                    failure = format!("{why}\nkube-apiserver's log (last lines):\n{}", tail(&apiserver.log_text(), 40));
                    if !failure.contains("address already in use") {
                        break;
                    }
                }
            }
        }
        panic!("kube-apiserver did not become ready: {failure}\netcd's log (last lines):\n{}", tail(&etcd.log(), 20));
    }

    /// The API server's URL, like `https://127.0.0.1:40123`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A kubeconfig for the admin (a `system:masters` user, bearer token, the
    /// API server's CA).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The admin's bearer token.
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// A client for the admin.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The directory holding the kubeconfigs, keys, configurations and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// How long [`start`](Self::start) took, etcd included.
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// The etcd behind the API server.
    pub fn etcd(&self) -> &EtcdHarness {
        &self.etcd
    }

    /// kube-apiserver's log so far.
    pub fn apiserver_log(&self) -> String {
        self.apiserver.log_text()
    }

    /// The running kube-scheduler's log so far (empty when none runs).
    pub fn scheduler_log(&self) -> String {
        self.scheduler.as_ref().map(Process::log_text).unwrap_or_default()
    }

    /// Starts kube-scheduler (stopping one already running) with `config`, a
    /// `KubeSchedulerConfiguration` as JSON (YAML's superset), like
    /// `{"extenders": [{"urlPrefix": "http://127.0.0.1:PORT", "filterVerb": "filter", ...}]}`.
    /// `apiVersion` and `kind` are filled in when absent; `clientConnection.kubeconfig`
    /// (the scheduler's own user, `system:kube-scheduler`) and
    /// `leaderElection.leaderElect: false` are always set. Waits until its
    /// `/readyz` answers.
    ///
    /// # Panics
    /// When `config` is not a JSON object, or the scheduler does not become ready.
    pub async fn start_scheduler(&mut self, config: &Value) -> Duration {
        self.stop_scheduler();
        let started = Instant::now();
        let binary = go_binary("kube-scheduler");
        self.scheduler_starts += 1;
        let config_path = self.dir.path().join(format!("scheduler-{}.json", self.scheduler_starts));
        let config = scheduler_config(config, &self.scheduler_kubeconfig).unwrap_or_else(|why| panic!("{why}"));
        std::fs::write(&config_path, config.to_string())
            .unwrap_or_else(|error| panic!("cannot write {}: {error}", config_path.display()));
        let mut failure = String::new();
        for _ in 0..3 {
            let port = free_port();
            let name = format!("kube-scheduler-{}", self.scheduler_starts);
            let mut command = Command::new(&binary);
            command
                // The kubeconfig and leader election are in the configuration: with
                // --config, kube-scheduler ignores its deprecated --kubeconfig flag.
                .arg(format!("--config={}", config_path.display()))
                .arg("--bind-address=127.0.0.1")
                .arg(format!("--secure-port={port}"))
                .arg(format!("--cert-dir={}", self.dir.path().join(&name).display()));
            let mut scheduler = Process::spawn(&name, &mut command, self.dir.path());
            match wait_for_scheduler(&mut scheduler, port).await {
                Ok(()) => {
                    self.scheduler = Some(scheduler);
                    return started.elapsed();
                }
                Err(why) => {
                    scheduler.kill();
                    failure = format!("{why}\nkube-scheduler's log (last lines):\n{}", tail(&scheduler.log_text(), 40));
                    if !failure.contains("address already in use") {
                        break;
                    }
                }
            }
        }
        panic!("kube-scheduler did not become ready: {failure}");
    }

    /// Stops kube-scheduler (SIGTERM, then SIGKILL after 10 s), if one runs.
    pub fn stop_scheduler(&mut self) {
        if let Some(mut scheduler) = self.scheduler.take()
            && scheduler.terminate(Duration::from_secs(10)).is_none()
        {
            scheduler.kill();
        }
    }
}

impl std::fmt::Debug for ControlPlane {
    // kube's Client is not Debug; the URL and the directory say which control plane this is.
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ControlPlane")
            .field("url", &self.url)
            .field("dir", &self.dir.path())
            .field("scheduler", &self.scheduler.as_ref().map(|process| &process.name))
            .finish_non_exhaustive()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // The scheduler before the API server, so neither logs the other's end;
        // etcd stops when its harness drops.
        self.stop_scheduler();
        self.apiserver.kill();
    }
}

/// kube-scheduler's configuration as `plugins/kubernetes/deploy/scheduler-config.yaml`
/// ships it, its extender pointed at `address` (`start_scheduler` sets the
/// kubeconfig): the tests run what users deploy.
///
/// # Panics
/// When the shipped file cannot be read or has no extender.
pub fn deployed_scheduler_config(address: &str) -> Value {
    let path = crate::repo().join("plugins/kubernetes/deploy/scheduler-config.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    let mut config: Value =
        serde_saphyr::from_str(&text).unwrap_or_else(|error| panic!("{}: not YAML: {error}", path.display()));
    if let Some(object) = config.as_object_mut() {
        object.remove("clientConnection");
    }
    let extender = config["extenders"][0].as_object_mut().unwrap_or_else(|| panic!("{}: no extender", path.display()));
    extender.insert("urlPrefix".into(), Value::String(format!("http://{address}")));
    config
}

/// Starts `allot-k8s` against `broker` and the API server `kubeconfig` names,
/// with `extra` arguments and environment; returns it and the address its
/// extender listens on (it picks a free port and says which on stderr).
///
/// # Panics
/// When it does not start within 30 s, with its log.
pub fn start_allot_k8s(
    broker: &crate::Broker,
    kubeconfig: &Path,
    dir: &Path,
    name: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (crate::Process, String) {
    let mut command = Command::new(crate::binary("allot-k8s"));
    if broker.pki.is_some() {
        // Its own client certificate; the admin token names the caller.
        let prefix =
            crate::issue_certificate(broker, &["--subject", "k8s-scheduler"], &dir.join(format!("{name}-tls")));
        command.args(crate::tls_args(broker, Some(&prefix)));
    }
    command
        .args(["--broker", &broker.url, "--listen", "127.0.0.1:0"])
        .arg("--token-file")
        .arg(&broker.admin_token)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(extra)
        .envs(env.iter().copied());
    let mut process = crate::Process::spawn(name, &mut command, dir);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = process.log_text();
        if let Some(line) = log.lines().find_map(|line| line.strip_prefix("allot-k8s: listening on ")) {
            return (process, line.trim().to_owned());
        }
        if process.has_exited() || Instant::now() > deadline {
            panic!("allot-k8s did not start:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Creates a Node with `labels` whose capacity and allocatable are `resources`
/// (like `[("allot.io/gpu", "8"), ("cpu", "64"), ("memory", "512Gi"), ("pods", "110")]`),
/// Ready, as a kubelet would register it. The status goes through the `/status`
/// subresource; no kubelet renews it, and none needs to: the control plane here
/// runs no node lifecycle controller.
pub async fn create_node(
    client: &Client,
    name: &str,
    labels: &[(&str, &str)],
    resources: &[(&str, &str)],
) -> Result<Node, kube::Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node = Node {
        metadata: ObjectMeta { name: Some(name.to_owned()), labels: Some(string_map(labels)), ..ObjectMeta::default() },
        ..Node::default()
    };
    nodes.create(&PostParams::default(), &node).await?;
    let resources: BTreeMap<String, String> = string_map(resources);
    let now = serde_json::to_value(Time(k8s_openapi::jiff::Timestamp::now())).unwrap_or(Value::Null);
    let status = json!({
        "status": {
            "capacity": resources,
            "allocatable": resources,
            "conditions": [{
                "type": "Ready",
                "status": "True",
                "reason": "KubeletReady",
                "message": "created by the allot tests",
                "lastHeartbeatTime": now,
                "lastTransitionTime": now,
            }],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": name}],
        }
    });
    nodes.patch_status(name, &PatchParams::default(), &Patch::Merge(&status)).await
}

/// Creates a namespace with `labels` (like `[("allot.io/team", "vision")]`).
pub async fn create_namespace(client: &Client, name: &str, labels: &[(&str, &str)]) -> Result<Namespace, kube::Error> {
    let namespace = Namespace {
        metadata: ObjectMeta { name: Some(name.to_owned()), labels: Some(string_map(labels)), ..ObjectMeta::default() },
        ..Namespace::default()
    };
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &namespace).await
}

/// A pod with one container whose requests and limits are `resources` (like
/// `[("allot.io/gpu", "4")]`; extended resources need requests equal to limits).
pub fn pod_requesting(namespace: &str, name: &str, resources: &[(&str, &str)]) -> Pod {
    let quantities: BTreeMap<String, Quantity> =
        resources.iter().map(|(resource, amount)| ((*resource).to_owned(), Quantity((*amount).to_owned()))).collect();
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "main".to_owned(),
                image: Some(PAUSE_IMAGE.to_owned()),
                resources: Some(ResourceRequirements {
                    requests: Some(quantities.clone()),
                    limits: Some(quantities),
                    ..ResourceRequirements::default()
                }),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        ..Pod::default()
    }
}

/// Creates `pod` in its namespace.
pub async fn create_pod(client: &Client, pod: &Pod) -> Result<Pod, kube::Error> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    Api::<Pod>::namespaced(client.clone(), namespace).create(&PostParams::default(), pod).await
}

/// Deletes a pod at once (grace period 0): with no kubelet, a graceful delete
/// of a bound pod would wait for ever for a kubelet to confirm it.
pub async fn force_delete_pod(client: &Client, namespace: &str, name: &str) -> Result<(), kube::Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    pods.delete(name, &DeleteParams { grace_period_seconds: Some(0), ..DeleteParams::default() }).await.map(|_| ())
}

/// The events about a pod (core/v1, which also holds those the scheduler
/// records through events.k8s.io/v1), oldest first.
pub async fn pod_events(client: &Client, namespace: &str, pod: &str) -> Result<Vec<Event>, kube::Error> {
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    let selector = format!("involvedObject.kind=Pod,involvedObject.name={pod}");
    let mut list = events.list(&ListParams::default().fields(&selector)).await?.items;
    list.sort_by_key(|event| event.metadata.creation_timestamp.clone());
    Ok(list)
}

/// Polls a pod until `check` holds (at most `limit`); returns it.
///
/// # Panics
/// When the time is up, naming `what` and showing the pod and its events.
pub async fn wait_for_pod(
    client: &Client,
    namespace: &str,
    name: &str,
    what: &str,
    limit: Duration,
    mut check: impl FnMut(&Pod) -> bool,
) -> Pod {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let deadline = Instant::now() + limit;
    loop {
        let last = pods.get_opt(name).await;
        if let Ok(Some(pod)) = &last
            && check(pod)
        {
            return pod.clone();
        }
        if Instant::now() > deadline {
            let events = pod_events(client, namespace, name).await.unwrap_or_default();
            let events: Vec<String> = events
                .iter()
                .map(|event| {
                    format!("{}: {}", event.reason.as_deref().unwrap_or(""), event.message.as_deref().unwrap_or(""))
                })
                .collect();
            panic!(
                "timed out after {limit:?} waiting until pod {namespace}/{name} {what}; last seen: {}\nits events: {events:#?}",
                match last {
                    Ok(Some(pod)) => serde_json::to_string(&pod.status).unwrap_or_default(),
                    Ok(None) => "no such pod".to_owned(),
                    Err(error) => format!("error {error}"),
                }
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The node a pod is bound to, if any.
pub fn node_name(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref().and_then(|spec| spec.node_name.as_deref())
}

/// `target/go/<name>`, or a panic saying how to build it.
fn go_binary(name: &str) -> PathBuf {
    let binary = repo().join("target/go").join(name);
    assert!(
        binary.is_file(),
        "{} is missing: build it with plugins/kubernetes/control-plane/build.sh (needs Go 1.26 in /usr/local/go \
         and the Go module proxy; scripts/test.sh does)",
        binary.display()
    );
    binary
}

/// The tokens and the service-account key pair the API server is started with.
struct Credentials {
    admin_token: String,
    scheduler_token: String,
    tokens_file: PathBuf,
    service_account_private: PathBuf,
    service_account_public: PathBuf,
}

impl Credentials {
    fn write(dir: &Path) -> Result<Credentials, String> {
        let random = SystemRandom::new();
        let admin_token = random_token(&random)?;
        let scheduler_token = random_token(&random)?;
        // kube-apiserver's static token file: token,user,uid[,"group,group"].
        let tokens = format!(
            "{admin_token},admin,admin,\"system:masters\"\n{scheduler_token},{SCHEDULER_USER},{SCHEDULER_USER}\n"
        );
        let tokens_file = dir.join("tokens.csv");
        write_private(&tokens_file, &tokens)?;
        let (private, public) = service_account_key_pair(&random)?;
        let service_account_private = dir.join("service-account.key");
        let service_account_public = dir.join("service-account.pub");
        write_private(&service_account_private, &private)?;
        write_private(&service_account_public, &public)?;
        Ok(Credentials { admin_token, scheduler_token, tokens_file, service_account_private, service_account_public })
    }
}

/// 128 random bits as hex.
fn random_token(random: &SystemRandom) -> Result<String, String> {
    let mut bytes = [0_u8; 16];
    random.fill(&mut bytes).map_err(|_| "the system random source failed".to_owned())?;
    Ok(bytes.iter().fold(String::new(), |mut text, byte| {
        let _ = write!(text, "{byte:02x}");
        text
    }))
}

/// An ECDSA P-256 key pair for signing service-account tokens, as PEM: the
/// private key in PKCS#8 (`--service-account-signing-key-file`) and the public
/// key as a SubjectPublicKeyInfo (`--service-account-key-file`, which reads EC
/// private keys only in SEC 1 form).
fn service_account_key_pair(random: &SystemRandom) -> Result<(String, String), String> {
    // DER of SEQUENCE { SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING (66 bytes: no unused
    // bits, then the 65-byte uncompressed point) }: every P-256 SubjectPublicKeyInfo starts so.
    const P256_SPKI_PREFIX: [u8; 26] = [
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48,
        0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ];
    let algorithm = &ECDSA_P256_SHA256_FIXED_SIGNING;
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(algorithm, random)
        .map_err(|_| "cannot generate the service-account key".to_owned())?;
    let pair = EcdsaKeyPair::from_pkcs8(algorithm, pkcs8.as_ref(), random)
        .map_err(|_| "cannot read back the service-account key".to_owned())?;
    let mut public = P256_SPKI_PREFIX.to_vec();
    public.extend_from_slice(pair.public_key().as_ref());
    Ok((pem("PRIVATE KEY", pkcs8.as_ref()), pem("PUBLIC KEY", &public)))
}

fn pem(label: &str, der: &[u8]) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(der);
    let mut text = format!("-----BEGIN {label}-----\n");
    for line in encoded.as_bytes().chunks(64) {
        text.push_str(&String::from_utf8_lossy(line));
        text.push('\n');
    }
    text.push_str(&format!("-----END {label}-----\n"));
    text
}

fn write_private(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut file| file.write_all(text.as_bytes()))
        .map_err(|error| format!("cannot write {}: {error}", path.display()))
}

fn spawn_apiserver(
    binary: &Path,
    dir: &Path,
    cert_dir: &Path,
    credentials: &Credentials,
    etcd: &str,
    port: u16,
) -> Process {
    let mut command = Command::new(binary);
    command
        .arg(format!("--etcd-servers={etcd}"))
        .arg("--bind-address=127.0.0.1")
        .arg("--advertise-address=127.0.0.1")
        .arg(format!("--secure-port={port}"))
        // The serving certificate is made by the API server itself (with its CA, for
        // 127.0.0.1 and localhost) on first start, in --cert-dir.
        .arg(format!("--cert-dir={}", cert_dir.display()))
        // Else it refuses to advertise 127.0.0.1 (the kubernetes Service's endpoints).
        .arg("--endpoint-reconciler-type=none")
        .arg(format!("--token-auth-file={}", credentials.tokens_file.display()))
        .arg("--authorization-mode=RBAC")
        .arg(format!("--service-account-key-file={}", credentials.service_account_public.display()))
        .arg(format!("--service-account-signing-key-file={}", credentials.service_account_private.display()))
        .arg("--service-account-issuer=https://kubernetes.default.svc")
        // Nodes are API objects with no kubelet: TaintNodesByCondition would keep them
        // tainted not-ready; ServiceAccount would hold pods for a token controller that
        // is not running.
        .arg("--disable-admission-plugins=ServiceAccount,TaintNodesByCondition")
        .arg("--service-cluster-ip-range=10.0.0.0/24")
        .arg("--profiling=false");
    Process::spawn("kube-apiserver", &mut command, dir)
}

/// Waits until the API server's `/readyz` answers 200 through the kubeconfig;
/// returns the admin client. The API server writes its certificate to `ca`
/// before it listens; the client is made only once the port accepts
/// connections, because one made from a half-written file would keep an empty
/// trust store until kube's reloading verifier looks again (a minute later).
async fn wait_for_apiserver(
    apiserver: &mut Process,
    port: u16,
    kubeconfig: &Path,
    ca: &Path,
) -> Result<Client, String> {
    let deadline = Instant::now() + START_TIMEOUT;
    let mut client = None;
    let mut last = String::from("it did not listen yet");
    loop {
        if apiserver.has_exited() {
            return Err(format!("kube-apiserver exited ({last})"));
        }
        if client.is_none() && tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            if !ca.is_file() {
                return Err(format!("kube-apiserver listens but wrote no certificate to {}", ca.display()));
            }
            client = Some(client_from_kubeconfig(kubeconfig).await?);
        }
        if let Some(client) = &client {
            match readyz(client).await {
                Ok(()) => return Ok(client.clone()),
                Err(why) => last = why,
            }
        }
        if Instant::now() > deadline {
            return Err(format!("no answer from /readyz within {START_TIMEOUT:?}: {last}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the scheduler's `/readyz` (informers synced, handlers added)
/// answers 200. It serves a self-signed certificate; health paths need no user.
async fn wait_for_scheduler(scheduler: &mut Process, port: u16) -> Result<(), String> {
    let url = format!("https://127.0.0.1:{port}");
    let uri = url.parse().map_err(|error| format!("bad scheduler URL {url}: {error}"))?;
    let mut config = Config::new(uri);
    config.accept_invalid_certs = true;
    let client = Client::try_from(config).map_err(|error| format!("cannot make a client for {url}: {error}"))?;
    let deadline = Instant::now() + START_TIMEOUT;
    let mut last = String::from("no answer yet");
    loop {
        if scheduler.has_exited() {
            return Err(format!("kube-scheduler exited ({last})"));
        }
        match readyz(&client).await {
            Ok(()) => return Ok(()),
            Err(why) => last = why,
        }
        if Instant::now() > deadline {
            return Err(format!("no answer from {url}/readyz within {START_TIMEOUT:?}: {last}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One `/readyz` call, bounded: a server still starting may accept a connection
/// and answer late, and the caller's deadline must still hold.
async fn readyz(client: &Client) -> Result<(), String> {
    let request = http::Request::get("/readyz").body(Vec::new()).map_err(|error| error.to_string())?;
    match tokio::time::timeout(Duration::from_secs(5), client.request_text(request)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => Err(format!("/readyz: {error}")),
        Err(_) => Err("/readyz did not answer within 5 s".to_owned()),
    }
}

async fn client_from_kubeconfig(path: &Path) -> Result<Client, String> {
    let kubeconfig = Kubeconfig::read_from(path).map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|error| format!("bad kubeconfig {}: {error}", path.display()))?;
    Client::try_from(config).map_err(|error| format!("cannot make a client from {}: {error}", path.display()))
}

fn write_kubeconfig(path: &Path, url: &str, ca: &Path, user: &str, token: &str) {
    let text = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: allot-test
  cluster:
    server: {url}
    certificate-authority: {ca}
users:
- name: {user}
  user:
    token: {token}
contexts:
- name: {user}
  context:
    cluster: allot-test
    user: {user}
current-context: {user}
",
        ca = ca.display()
    );
    write_private(path, &text).unwrap_or_else(|why| panic!("{why}"));
}

/// The test's configuration with the harness's parts set.
fn scheduler_config(config: &Value, kubeconfig: &Path) -> Result<Value, String> {
    let Value::Object(fields) = config else {
        return Err(format!("a KubeSchedulerConfiguration is a JSON object, not {config}"));
    };
    let mut fields = fields.clone();
    fields.entry("apiVersion").or_insert_with(|| json!("kubescheduler.config.k8s.io/v1"));
    fields.entry("kind").or_insert_with(|| json!("KubeSchedulerConfiguration"));
    fields.insert("clientConnection".to_owned(), json!({"kubeconfig": kubeconfig.display().to_string()}));
    fields.insert("leaderElection".to_owned(), json!({"leaderElect": false}));
    Ok(Value::Object(fields))
}

fn string_map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(key, value)| ((*key).to_owned(), (*value).to_owned())).collect()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .unwrap_or_else(|error| panic!("cannot find a free port on 127.0.0.1: {error}"))
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheduler_config_keeps_the_tests_parts_and_sets_the_harness_ones() {
        let config =
            json!({"extenders": [{"urlPrefix": "http://127.0.0.1:1"}], "leaderElection": {"leaderElect": true}});
        let written = scheduler_config(&config, Path::new("/k")).expect("an object");
        assert_eq!(written["kind"], "KubeSchedulerConfiguration");
        assert_eq!(written["apiVersion"], "kubescheduler.config.k8s.io/v1");
        assert_eq!(written["extenders"][0]["urlPrefix"], "http://127.0.0.1:1");
        assert_eq!(written["leaderElection"]["leaderElect"], false);
        assert_eq!(written["clientConnection"]["kubeconfig"], "/k");
        assert!(scheduler_config(&json!([]), Path::new("/k")).is_err());
    }

    #[test]
    fn the_service_account_public_key_is_a_p256_subject_public_key_info() {
        let (private, public) = service_account_key_pair(&SystemRandom::new()).expect("a key pair");
        assert!(private.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let body: String = public.lines().filter(|line| !line.starts_with("-----")).collect();
        let der = base64::engine::general_purpose::STANDARD.decode(body).expect("base64");
        // 26 bytes of algorithm header, then the uncompressed point (0x04, x, y).
        assert_eq!(der.len(), 91);
        assert_eq!(der[26], 0x04);
    }
}
