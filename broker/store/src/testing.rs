//! A real etcd for tests: free loopback ports, a temporary data directory, killed on drop.
//!
//! ```no_run
//! # async fn example() {
//! use allot_store::{Store, testing::EtcdHarness};
//! let etcd = EtcdHarness::start().await;
//! let store = etcd.store().await;
//! assert!(store.get("/nothing").await.expect("get").is_none());
//! # }
//! ```
//!
//! The harness runs the `etcd` found on `PATH` (or the one named by
//! `ALLOT_ETCD_BIN`), and panics with what to install when there is none. Its
//! log is kept in the temporary directory and printed when etcd fails to start.
//! It is test code: every failure panics with a message saying what went wrong.
//!
//! [`EtcdCluster`] starts several members (three for the fault tests) on
//! loopback; each can be killed and restarted on its own, and
//! [`EtcdCluster::leader`] says which one leads (etcd's maintenance status).

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcd_client::{Client, CompactionOptions, ConnectOptions, GetOptions};
use tempfile::TempDir;

use crate::etcd::{EtcdConfig, EtcdStore, RetryPolicy};
use crate::types::Revision;

/// The message when etcd is missing.
const NOT_FOUND: &str = "etcd not found: install Debian's etcd-server (apt-get install etcd-server)";

/// How long etcd may take to start answering.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A single-member etcd cluster on 127.0.0.1, stopped and deleted on drop.
#[derive(Debug)]
pub struct EtcdHarness {
    child: Option<Child>,
    binary: PathBuf,
    client_port: u16,
    peer_port: u16,
    dir: TempDir,
}

impl EtcdHarness {
    /// Starts etcd on free loopback ports and waits until it answers.
    ///
    /// # Panics
    /// When etcd is not installed, or does not become healthy within 30 s.
    pub async fn start() -> EtcdHarness {
        let binary = find_etcd();
        let dir = tempfile::Builder::new()
            .prefix("allot-etcd-")
            .tempdir()
            .unwrap_or_else(|error| panic!("cannot create a temporary directory for etcd: {error}"));
        let mut harness = EtcdHarness { child: None, binary, client_port: 0, peer_port: 0, dir };
        let mut log = String::new();
        // Another process may take a port between our probe and etcd's bind; try new ones.
        for _ in 0..3 {
            (harness.client_port, harness.peer_port) = free_ports();
            harness.spawn();
            match harness.wait_until_healthy().await {
                Ok(()) => return harness,
                Err(failure) => {
                    log = failure;
                    harness.stop();
                    // A half-initialised member would remember the old peer URL.
                    let _ = std::fs::remove_dir_all(harness.dir.path().join("data"));
                    if !log.contains("address already in use") {
                        break;
                    }
                }
            }
        }
        panic!("etcd did not become healthy; its log:\n{log}");
    }

    /// The client URL, like `http://127.0.0.1:40123`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// A store configuration for this etcd, with a retry policy short enough
    /// for tests (about 1.5 s of backoff in all).
    pub fn config(&self) -> EtcdConfig {
        test_config([self.endpoint()])
    }

    /// A store connected to this etcd with [`config`](Self::config).
    ///
    /// # Panics
    /// When it cannot connect.
    pub async fn store(&self) -> EtcdStore {
        EtcdStore::connect(self.config())
            .await
            .unwrap_or_else(|error| panic!("cannot connect to the test etcd at {}: {error:?}", self.endpoint()))
    }

    /// Stops etcd (SIGKILL, like a crash), keeping its data for [`restart`](Self::restart).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // It may have exited already; either way it is gone after wait.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts etcd again on the same ports with the same data.
    ///
    /// # Panics
    /// When it does not become healthy.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn();
        if let Err(log) = self.wait_until_healthy().await {
            panic!("etcd did not come back after a restart; its log:\n{log}");
        }
    }

    /// Compacts etcd's history up to `revision`, as an operator (or etcd's
    /// auto-compaction) would: watches from older revisions then fail.
    ///
    /// # Panics
    /// When etcd refuses.
    pub async fn compact(&self, revision: Revision) {
        let mut client = self.client().await;
        let revision = i64::try_from(revision.get()).unwrap_or(i64::MAX);
        client
            .compact(revision, Some(CompactionOptions::new().with_physical()))
            .await
            .unwrap_or_else(|error| panic!("etcd refused to compact to {revision}: {error}"));
    }

    /// etcd's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    fn spawn(&mut self) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap_or_else(|error| panic!("cannot create etcd's log {}: {error}", self.log_path().display()));
        let log_for_stderr =
            log.try_clone().unwrap_or_else(|error| panic!("cannot share etcd's log file between streams: {error}"));
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let data = self.dir.path().join("data");
        let logs = (log, log_for_stderr);
        let child =
            member_command(&self.binary, "allot-test", &data, (&client, &peer), &format!("allot-test={peer}"), logs)
                .arg("--initial-cluster-token=allot-test")
                // A short election makes a single member lead quickly, and lowers
                // etcd's minimum lease TTL (1.5 elections) to 1 s, so lease tests stay short.
                .arg("--heartbeat-interval=25")
                .arg("--election-timeout=250")
                .spawn()
                .unwrap_or_else(|error| panic!("cannot start {}: {error}", self.binary.display()));
        self.child = Some(child);
    }

    async fn client(&self) -> Client {
        let options =
            ConnectOptions::new().with_connect_timeout(Duration::from_millis(500)).with_timeout(Duration::from_secs(5));
        Client::connect([self.endpoint()], Some(options))
            .await
            .unwrap_or_else(|error| panic!("cannot connect to the test etcd at {}: {error}", self.endpoint()))
    }

    /// Waits until etcd serves a linearizable read; on failure, returns its log.
    async fn wait_until_healthy(&mut self) -> Result<(), String> {
        let started = Instant::now();
        let mut client = self.client().await;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(format!("etcd exited with {status}\n{}", self.log()));
            }
            if client.get(vec![0], Some(GetOptions::new().with_count_only())).await.is_ok() {
                return Ok(());
            }
            if started.elapsed() > START_TIMEOUT {
                return Err(format!("etcd did not answer within {START_TIMEOUT:?}\n{}", self.log()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for EtcdHarness {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How long one member's status may take before [`EtcdCluster::leader`] gives up on it.
const STATUS_TIMEOUT: Duration = Duration::from_millis(500);

/// Several etcd members on 127.0.0.1 forming one cluster, each of which can be
/// killed (SIGKILL, like a crash) and restarted with its data; all are killed
/// and their data deleted on drop.
///
/// Elections are slower than [`EtcdHarness`]'s (50 ms heartbeats, 1 s election
/// timeout, pre-vote): a loaded two-core machine running brokers and node
/// daemons beside three members would otherwise see elections nobody caused,
/// and a member that rejoins after a restart would depose a healthy leader.
#[derive(Debug)]
pub struct EtcdCluster {
    binary: PathBuf,
    dir: TempDir,
    members: Vec<ClusterMember>,
    /// etcd's id of each member, by index, for [`leader`](Self::leader).
    ids: Vec<u64>,
}

#[derive(Debug)]
struct ClusterMember {
    name: String,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

impl EtcdCluster {
    /// Starts `size` members on free loopback ports and waits until each one
    /// serves a linearizable read.
    ///
    /// # Panics
    /// When etcd is not installed, or the cluster does not become healthy within 30 s.
    pub async fn start(size: usize) -> EtcdCluster {
        assert!(size > 0, "a cluster needs at least one member");
        let binary = find_etcd();
        let dir = tempfile::Builder::new()
            .prefix("allot-etcd-cluster-")
            .tempdir()
            .unwrap_or_else(|error| panic!("cannot create a temporary directory for etcd: {error}"));
        let mut cluster = EtcdCluster { binary, dir, members: Vec::new(), ids: Vec::new() };
        let mut failure = String::new();
        // Another process may take a port between our probe and etcd's bind; try new ones.
        for _ in 0..3 {
            let ports = free_port_list(2 * size);
            cluster.members = (0..size)
                .map(|index| ClusterMember {
                    name: format!("member-{index}"),
                    client_port: ports[2 * index],
                    peer_port: ports[2 * index + 1],
                    child: None,
                })
                .collect();
            for index in 0..size {
                cluster.spawn(index);
            }
            let mut healthy = Ok(());
            for index in 0..size {
                healthy = cluster.wait_until_healthy(index).await;
                if healthy.is_err() {
                    break;
                }
            }
            match healthy {
                Ok(()) => {
                    cluster.ids = cluster.learn_ids().await;
                    return cluster;
                }
                Err(log) => {
                    failure = log;
                    for index in 0..size {
                        cluster.kill(index);
                        // A half-initialised member would remember the old peer URLs.
                        let _ = std::fs::remove_dir_all(cluster.data_dir(index));
                    }
                    if !failure.contains("address already in use") {
                        break;
                    }
                }
            }
        }
        panic!("the etcd cluster did not become healthy; its logs:\n{failure}");
    }

    /// How many members the cluster has (running or not).
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the cluster has no member (never: [`start`](Self::start) refuses).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// One member's client URL, like `http://127.0.0.1:40123`.
    pub fn endpoint(&self, member: usize) -> String {
        format!("http://127.0.0.1:{}", self.members[member].client_port)
    }

    /// One member's client address, like `127.0.0.1:40123` (for a proxy in front of it).
    pub fn address(&self, member: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.members[member].client_port))
    }

    /// Every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.len()).map(|member| self.endpoint(member)).collect()
    }

    /// Whether the member's process runs (it may still be catching up).
    pub fn is_running(&mut self, member: usize) -> bool {
        match self.members[member].child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Kills one member (SIGKILL, like a crash), keeping its data for
    /// [`restart`](Self::restart). Killing a member that is not running does nothing.
    pub fn kill(&mut self, member: usize) {
        if let Some(mut child) = self.members[member].child.take() {
            // It may have exited already; either way it is gone after wait.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a member again on its ports with its data (killing it first if
    /// it runs) and waits until it serves a linearizable read, which needs a
    /// quorum of the cluster.
    ///
    /// # Panics
    /// When it does not become healthy within 30 s.
    pub async fn restart(&mut self, member: usize) {
        self.kill(member);
        self.spawn(member);
        if let Err(log) = self.wait_until_healthy(member).await {
            panic!("etcd {} did not come back after a restart; its log:\n{log}", self.members[member].name);
        }
    }

    /// The member that leads now, by index, as the running members report it
    /// (etcd's maintenance status); `None` while there is no leader or no
    /// member answers.
    pub async fn leader(&mut self) -> Option<usize> {
        for member in 0..self.len() {
            if !self.is_running(member) {
                continue;
            }
            let Ok(mut client) = member_client(&self.endpoint(member)).await else { continue };
            let Ok(Ok(status)) = tokio::time::timeout(STATUS_TIMEOUT, client.status()).await else { continue };
            if status.leader() == 0 {
                continue;
            }
            if let Some(index) = self.ids.iter().position(|id| *id == status.leader()) {
                return Some(index);
            }
        }
        None
    }

    /// A store configuration for every member, with [`EtcdHarness::config`]'s
    /// short timeouts and retries.
    pub fn config(&self) -> EtcdConfig {
        test_config(self.endpoints())
    }

    /// A store connected to every member with [`config`](Self::config).
    ///
    /// # Panics
    /// When it cannot connect.
    pub async fn store(&self) -> EtcdStore {
        EtcdStore::connect(self.config())
            .await
            .unwrap_or_else(|error| panic!("cannot connect to the test etcd cluster {:?}: {error:?}", self.endpoints()))
    }

    /// One member's log so far (every start of it, appended).
    pub fn log(&self, member: usize) -> String {
        std::fs::read_to_string(self.log_path(member)).unwrap_or_default()
    }

    fn log_path(&self, member: usize) -> PathBuf {
        self.dir.path().join(format!("{}.log", self.members[member].name))
    }

    fn data_dir(&self, member: usize) -> PathBuf {
        self.dir.path().join(&self.members[member].name)
    }

    fn spawn(&mut self, member: usize) {
        let log_path = self.log_path(member);
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap_or_else(|error| panic!("cannot create etcd's log {}: {error}", log_path.display()));
        let log_for_stderr =
            log.try_clone().unwrap_or_else(|error| panic!("cannot share etcd's log file between streams: {error}"));
        let initial_cluster = self
            .members
            .iter()
            .map(|other| format!("{}=http://127.0.0.1:{}", other.name, other.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let this = &self.members[member];
        let client = format!("http://127.0.0.1:{}", this.client_port);
        let peer = format!("http://127.0.0.1:{}", this.peer_port);
        // `--initial-cluster-state=new` is ignored once the member has data: a
        // restart rejoins the cluster.
        let (urls, logs) = ((client.as_str(), peer.as_str()), (log, log_for_stderr));
        let child = member_command(&self.binary, &this.name, &self.data_dir(member), urls, &initial_cluster, logs)
            .arg("--initial-cluster-token=allot-test-cluster")
            .arg("--heartbeat-interval=50")
            .arg("--election-timeout=1000")
            // A member that rejoins after a restart does not depose a healthy leader.
            .arg("--pre-vote=true")
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {}: {error}", self.binary.display()));
        self.members[member].child = Some(child);
    }

    /// Waits until one member serves a linearizable read; on failure, returns its log.
    async fn wait_until_healthy(&mut self, member: usize) -> Result<(), String> {
        let started = Instant::now();
        let endpoint = self.endpoint(member);
        loop {
            if let Some(child) = self.members[member].child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(format!("etcd {} exited with {status}\n{}", self.members[member].name, self.log(member)));
            }
            if let Ok(mut client) = member_client(&endpoint).await
                && let Ok(Ok(_)) = tokio::time::timeout(
                    Duration::from_secs(2),
                    client.get(vec![0], Some(GetOptions::new().with_count_only())),
                )
                .await
            {
                return Ok(());
            }
            if started.elapsed() > START_TIMEOUT {
                return Err(format!(
                    "etcd {} did not answer within {START_TIMEOUT:?}\n{}",
                    self.members[member].name,
                    self.log(member)
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Each member's etcd id, from its own status.
    async fn learn_ids(&self) -> Vec<u64> {
        let mut ids = Vec::new();
        for member in 0..self.len() {
            let mut client = member_client(&self.endpoint(member))
                .await
                .unwrap_or_else(|error| panic!("cannot connect to etcd {}: {error}", self.members[member].name));
            let status = client
                .status()
                .await
                .unwrap_or_else(|error| panic!("etcd {} has no status: {error}", self.members[member].name));
            ids.push(status.header().map_or(0, |header| header.member_id()));
        }
        ids
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for member in 0..self.len() {
            self.kill(member);
        }
    }
}

/// A client of one member only (no balancing), with short timeouts.
async fn member_client(endpoint: &str) -> Result<Client, etcd_client::Error> {
    let options =
        ConnectOptions::new().with_connect_timeout(Duration::from_millis(500)).with_timeout(Duration::from_secs(2));
    Client::connect([endpoint], Some(options)).await
}

/// A store configuration for test etcd endpoints: short timeouts, and about
/// 1.5 s of backoff in all.
fn test_config(endpoints: impl IntoIterator<Item = String>) -> EtcdConfig {
    let mut config = EtcdConfig::new(endpoints);
    config.connect_timeout = Duration::from_millis(500);
    config.request_timeout = Duration::from_secs(5);
    config.retry = RetryPolicy {
        attempts: 6,
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(500),
    };
    config
}

/// `ALLOT_ETCD_BIN`, or `etcd` on `PATH`.
fn find_etcd() -> PathBuf {
    if let Some(binary) = std::env::var_os("ALLOT_ETCD_BIN") {
        let binary = PathBuf::from(binary);
        if is_executable(&binary) {
            return binary;
        }
        panic!("ALLOT_ETCD_BIN names {}, which is not an executable file", binary.display());
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("etcd"))
        .find(|candidate| is_executable(candidate))
        .unwrap_or_else(|| panic!("{NOT_FOUND}"))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata().is_ok_and(|metadata| metadata.is_file() && metadata.permissions().mode() & 0o111 != 0)
}

/// Two distinct free ports on 127.0.0.1 (held together while probing so they differ).
fn free_ports() -> (u16, u16) {
    let ports = free_port_list(2);
    (ports[0], ports[1])
}

/// `count` distinct free ports on 127.0.0.1 (held together while probing so they differ).
fn free_port_list(count: usize) -> Vec<u16> {
    let bind = || {
        TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr().map(|address: SocketAddr| (listener, address.port())))
            .unwrap_or_else(|error| panic!("cannot find a free port on 127.0.0.1: {error}"))
    };
    let held: Vec<(TcpListener, u16)> = (0..count).map(|_| bind()).collect();
    held.into_iter().map(|(_listener, port)| port).collect()
}

/// An etcd member's command with what every test member shares: its name, data
/// directory, client and peer URLs on loopback, the initial cluster, and its
/// log (stdout and stderr) in a file.
fn member_command(
    binary: &Path,
    name: &str,
    data: &Path,
    (client, peer): (&str, &str),
    initial_cluster: &str,
    (log, log_for_stderr): (File, File),
) -> Command {
    let mut command = Command::new(binary);
    command
        .arg("--logger=zap")
        .arg("--log-outputs=stderr")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_for_stderr)
        .arg(format!("--name={name}"))
        .arg(format!("--data-dir={}", data.display()))
        .arg(format!("--listen-client-urls={client}"))
        .arg(format!("--advertise-client-urls={client}"))
        .arg(format!("--listen-peer-urls={peer}"))
        .arg(format!("--initial-advertise-peer-urls={peer}"))
        .arg(format!("--initial-cluster={initial_cluster}"))
        .arg("--initial-cluster-state=new");
    command
}
