//! Harness for cross-component tests: starts the real `allot-broker`, `allot-node`
//! and `allotctl` binaries (built by `cargo build --workspace`) on loopback ports,
//! and a real etcd through `allot_store::testing`; `control_plane` runs a real
//! Kubernetes control plane (kube-apiserver, kube-scheduler) on that etcd.
//!
//! Every process is killed when its handle drops, so a failing test leaves
//! nothing running.

pub mod chromium;
pub mod control_plane;
pub mod faults;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A workspace binary, next to the test executable's `deps/` directory.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let candidates = exe.ancestors().skip(1).take(2).map(|dir| dir.join(name)).collect::<Vec<_>>();
    candidates.iter().find(|path| path.is_file()).cloned().unwrap_or_else(|| {
        panic!(
            "{name} is not built (looked in {candidates:?}): run `cargo build --workspace` first (scripts/test.sh does)"
        )
    })
}

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A child process killed on drop; its stderr goes to a file kept for messages.
#[derive(Debug)]
pub struct Process {
    pub name: String,
    child: Child,
    pub log: PathBuf,
}

impl Process {
    pub fn spawn(name: &str, command: &mut Command, log_dir: &Path) -> Process {
        let log = log_dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {name}: {error}"));
        Process { name: name.to_owned(), child, log }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The process id (for reading `/proc/<pid>/status`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Sends SIGTERM and waits (at most `limit`) for the exit status.
    pub fn terminate(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let pid = libc::pid_t::try_from(self.child.id()).ok()?;
        // SAFETY: kill has no memory preconditions; the pid is our own child's.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Where a broker keeps its state.
#[derive(Debug, Clone)]
pub enum StoreKind {
    Embedded(PathBuf),
    Etcd(String),
}

impl StoreKind {
    pub fn flag(&self) -> String {
        match self {
            StoreKind::Embedded(dir) => format!("embedded:{}", dir.display()),
            StoreKind::Etcd(endpoints) => format!("etcd:{endpoints}"),
        }
    }
}

/// A running broker.
#[derive(Debug)]
pub struct Broker {
    pub process: Process,
    /// The gRPC address, `IP:PORT`.
    pub grpc: String,
    /// How clients reach it: `http://IP:PORT` (plain text), or `https://IP:PORT`.
    pub url: String,
    /// Its PKI directory when it serves mutual TLS (see `start_tls_broker`).
    pub pki: Option<PathBuf>,
    pub http: String,
    /// The platform admin's token, written by the broker on its first start.
    pub admin_token: PathBuf,
    /// The node daemons' token.
    pub node_token: PathBuf,
}

/// Starts a broker and waits until it serves (or fails the test with its log).
pub fn start_broker(store: &StoreKind, dir: &Path, name: &str, node_timeout: &str) -> Broker {
    start_broker_on(store, dir, name, node_timeout, "127.0.0.1:0")
}

/// Spawns `allot-broker serve` with a ready file; returns the process and the file.
/// Every broker on a directory shares its token files: the first start writes them.
fn spawn_broker(
    store: &StoreKind,
    dir: &Path,
    name: &str,
    node_timeout: &str,
    listen: &str,
    extra: &[&str],
) -> (Process, PathBuf) {
    let ready = dir.join(format!("{name}.ready"));
    let _ = std::fs::remove_file(&ready);
    let mut command = Command::new(binary("allot-broker"));
    command.args(["serve", "--store", &store.flag(), "--listen", listen, "--http", "127.0.0.1:0"]);
    command.args(["--node-timeout", node_timeout, "--heartbeat-interval", "200ms", "--ready-file"]);
    command.arg(&ready);
    command.arg("--admin-token-file").arg(dir.join("admin.token"));
    command.arg("--node-token-file").arg(dir.join("node.token"));
    // Plain text unless the test asks for TLS (start_tls_broker); TLS has its own tests (tests/tls.rs).
    if !extra.contains(&"--pki") {
        command.arg("--plaintext");
    }
    command.args(extra);
    (Process::spawn(name, &mut command, dir), ready)
}

/// Starts a broker on a given gRPC address (to restart one where nodes look for it).
pub fn start_broker_on(store: &StoreKind, dir: &Path, name: &str, node_timeout: &str, listen: &str) -> Broker {
    start_broker_with(store, dir, name, node_timeout, listen, &[])
}

/// Starts a broker with extra `serve` arguments (like `--reclaim-grace 2s`).
pub fn start_broker_with(
    store: &StoreKind,
    dir: &Path,
    name: &str,
    node_timeout: &str,
    listen: &str,
    extra: &[&str],
) -> Broker {
    let (mut process, ready) = spawn_broker(store, dir, name, node_timeout, listen, extra);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(&ready)
            && let Ok(addresses) = serde_json::from_str::<Value>(&text)
        {
            let grpc = addresses["grpc"].as_str().unwrap_or_default().to_owned();
            let http = addresses["http"].as_str().unwrap_or_default().to_owned();
            let url = addresses["url"].as_str().unwrap_or_default().to_owned();
            let pki = extra.iter().position(|arg| *arg == "--pki").and_then(|at| extra.get(at + 1)).map(PathBuf::from);
            return Broker {
                process,
                grpc,
                url,
                pki,
                http,
                admin_token: dir.join("admin.token"),
                node_token: dir.join("node.token"),
            };
        }
        if process.has_exited() || Instant::now() > deadline {
            panic!("broker {name} did not become ready:\n{}", process.log_text());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts a broker serving mutual TLS with its own CA in `dir/pki`.
pub fn start_tls_broker(store: &StoreKind, dir: &Path, name: &str) -> Broker {
    let pki = dir.join("pki");
    let pki = pki.to_str().expect("a UTF-8 path");
    start_broker_with(store, dir, name, "5s", "127.0.0.1:0", &["--pki", pki])
}

/// The TLS arguments of a client of `broker`: its CA, and a certificate and key
/// when given (`pki issue` writes PREFIX.pem and PREFIX-key.pem).
pub fn tls_args(broker: &Broker, identity: Option<&Path>) -> Vec<String> {
    let Some(pki) = &broker.pki else { return Vec::new() };
    let mut args = vec!["--ca".to_owned(), pki.join("ca.pem").display().to_string()];
    if let Some(prefix) = identity {
        let name = prefix.file_name().expect("a file prefix").to_string_lossy().into_owned();
        args.extend(["--cert".to_owned(), prefix.with_file_name(format!("{name}.pem")).display().to_string()]);
        args.extend(["--key".to_owned(), prefix.with_file_name(format!("{name}-key.pem")).display().to_string()]);
    }
    args
}

/// Signs a certificate with a TLS broker's CA (`allot-broker pki issue`):
/// `what` is `["--node", NAME]` or `["--subject", NAME]`; returns its prefix.
pub fn issue_certificate(broker: &Broker, what: &[&str], prefix: &Path) -> PathBuf {
    let pki = broker.pki.as_ref().expect("a TLS broker");
    let output = Command::new(binary("allot-broker"))
        .args(["pki", "issue", "--pki"])
        .arg(pki)
        .args(what)
        .arg("--out")
        .arg(prefix)
        .output()
        .expect("allot-broker pki runs");
    assert!(output.status.success(), "pki issue {what:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    prefix.to_path_buf()
}

/// Starts a broker that is expected to wait (a standby); returns it and its
/// ready file, which appears once it leads.
pub fn spawn_standby_broker(store: &StoreKind, dir: &Path, name: &str) -> (Process, PathBuf) {
    spawn_broker(store, dir, name, "3s", "127.0.0.1:0", &[])
}

/// A standby broker (`spawn_standby_broker`) that leads now: its ready file is there.
pub fn standby_leads(process: Process, ready: &Path, dir: &Path) -> Broker {
    let text = std::fs::read_to_string(ready).expect("ready file");
    let addresses: Value = serde_json::from_str(&text).expect("the ready file is written whole");
    let field = |name: &str| addresses[name].as_str().unwrap_or_else(|| panic!("{name} in {text}")).to_owned();
    Broker {
        process,
        grpc: field("grpc"),
        http: field("http"),
        url: field("url"),
        pki: None,
        admin_token: dir.join("admin.token"),
        node_token: dir.join("node.token"),
    }
}

/// Starts a node daemon for a fixture under a name. Broker tests run fixture
/// nodes whose CPUs this machine lacks, so it does not enforce; enforcement has
/// its own tests (tests/enforcement.rs, `start_enforcing_node`).
pub fn start_node(broker: &Broker, fixture: &str, name: &str, dir: &Path) -> Process {
    start_enforcing_node(broker, fixture, name, dir, &["--no-enforce"], &[])
}

/// Runs allotctl against a broker as its platform admin; returns the raw output.
pub fn allotctl(broker: &Broker, args: &[&str]) -> Output {
    allotctl_as(broker, &broker.admin_token, args)
}

/// Runs allotctl with the token in `token_file`.
pub fn allotctl_as(broker: &Broker, token_file: &Path, args: &[&str]) -> Output {
    let admin = broker.pki.as_ref().map(|pki| pki.join("admin"));
    Command::new(binary("allotctl"))
        .arg("--broker")
        .arg(&broker.url)
        .args(tls_args(broker, admin.as_deref()))
        .env("ALLOT_TOKEN_FILE", token_file)
        .env_remove("ALLOT_TOKEN")
        .args(args)
        .output()
        .expect("allotctl runs")
}

/// Makes a token for `subject` with `role` (in `team`, or cluster-wide) and
/// writes it to a file in `dir`; returns the file.
pub fn token_for(broker: &Broker, dir: &Path, subject: &str, role: &str, team: Option<&str>) -> PathBuf {
    let mut args = vec!["token", "create", subject, "--role", role];
    if let Some(team) = team {
        args.extend(["--team", team]);
    }
    let created = allotctl_json(broker, &args);
    let path = dir.join(format!("{subject}.token"));
    std::fs::write(&path, created["token"].as_str().expect("token")).expect("write token");
    path
}

/// Runs allotctl with `-o json` and parses the answer; fails the test on error.
pub fn allotctl_json(broker: &Broker, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let output = allotctl(broker, &all);
    assert!(output.status.success(), "allotctl {all:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!("allotctl {all:?}: not JSON ({error}): {}", String::from_utf8_lossy(&output.stdout))
    })
}

/// A request for one whole GPU (any model, one core) for `team`, as the
/// benchmarks and the fault checker's own tests build allocations by hand.
pub fn one_gpu_request(team: &str) -> allot_api::allocation::ValidatedRequest {
    use allot_api::allocation::{GpuDemand, Interconnect, ValidatedRequest};
    ValidatedRequest::new(
        team.parse().expect("team"),
        GpuDemand::Whole { count: 1, models: vec![] },
        1,
        allot_api::units::MiB(0),
        Interconnect::Any,
        false,
        None,
        None,
    )
    .expect("a one-GPU request")
}

/// GET `path` over plain HTTP/1.1 (with a bearer token when given); the body
/// when the answer is 200, else None.
pub fn http_get(address: &str, path: &str, token: Option<&str>) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let authorization = token.map(|token| format!("Authorization: Bearer {}\r\n", token.trim())).unwrap_or_default();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\n{authorization}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    // axum answers with a length; a chunked body would need decoding.
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        return Some(dechunk(body));
    }
    Some(body.to_owned())
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else { break };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// Polls until `check` holds or the time is up.
pub fn wait_until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        if Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting until {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Node name → status from `allotctl nodes list`.
pub fn node_statuses(broker: &Broker) -> Vec<(String, String)> {
    let output = allotctl(broker, &["nodes", "list", "-o", "json"]);
    if !output.status.success() {
        return Vec::new();
    }
    let nodes: Value = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
    nodes
        .as_array()
        .map(|nodes| {
            nodes
                .iter()
                .map(|node| {
                    (node["name"].as_str().unwrap_or("").to_owned(), node["status"].as_str().unwrap_or("").to_owned())
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Starts a node daemon that enforces: `start_node`'s arguments plus `args`
/// (like `--host-cpus`, `--state-dir`, `--cgroup-parent`) and `env` (like the fake
/// NVML's `ALLOT_FAKE_NVML_STATE` and `ALLOT_FAKE_NVML_EVENTS`).
pub fn start_enforcing_node(
    broker: &Broker,
    fixture: &str,
    name: &str,
    dir: &Path,
    args: &[&str],
    env: &[(&str, &Path)],
) -> Process {
    let mut command = Command::new(binary("allot-node"));
    command.args(["run", "--broker", &broker.url, "--fixture", fixture, "--name", name, "--heartbeat-interval", "0.2"]);
    if broker.pki.is_some() {
        // A node certificate for this node's name: the node token is not needed.
        let prefix = issue_certificate(broker, &["--node", name], &dir.join(format!("{name}-node")));
        command.args(tls_args(broker, Some(&prefix)));
    } else {
        command.arg("--token-file").arg(&broker.node_token);
    }
    command.args(args);
    for (variable, value) in env {
        command.env(variable, value);
    }
    Process::spawn(name, &mut command, dir)
}

/// Runs `allot-node` with arguments and environment; returns the raw output.
pub fn allot_node(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut command = Command::new(binary("allot-node"));
    command.args(args);
    for (variable, value) in env {
        command.env(variable, value);
    }
    command.output().expect("allot-node runs")
}

/// Empties every MIG-enabled GPU of a fixture in the fake NVML's state file, so
/// the instances that appear later are the ones Allot made.
pub fn empty_mig_layouts(fixture: &str, nvml_state: &Path) {
    let output = allot_node(&["inventory", "--fixture", fixture, "--output", "json"], &[]);
    let inventory: Value = serde_json::from_slice(&output.stdout).expect("inventory JSON");
    let mut gpus = serde_json::Map::new();
    for gpu in inventory["gpus"].as_array().expect("gpus") {
        if gpu["mig"]["mode"].as_str() == Some("enabled") {
            let uuid = gpu["uuid"].as_str().expect("uuid").to_owned();
            gpus.insert(uuid, serde_json::json!({"current": true, "pending": true, "gpu_instances": []}));
        }
    }
    std::fs::write(nvml_state, serde_json::json!({ "gpus": gpus }).to_string()).expect("nvml state");
}
