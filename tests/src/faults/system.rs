//! The system under test and the faults injected into it: a three-member etcd
//! cluster, two broker slots (each broker reaches etcd through its own proxy
//! per member, so it can be cut off alone), node daemons that dial a front
//! door following whichever broker leads, and a tracker that reads the leader
//! key to say who leads.
//!
//! A broker that loses the lead exits (fail-stop); [`System::tend`] starts a
//! new standby in its slot, so two brokers run again. The methods are blocking
//! (they call the harness in `lib.rs`, which is), and run async work on the
//! test's runtime.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use allot_store::testing::EtcdCluster;
use allot_store::{EventKind, Revision, Store, layout};
use serde_json::Value;
use tokio::runtime::Runtime;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::history::Event;
use super::proxy::{Cut, Proxy};
use super::{Invariant, LeaderInfo, Rng, Violation, identity_pid};
use crate::{
    Broker, Process, StoreKind, allot_node, allotctl_json, node_statuses, spawn_standby_broker, standby_leads,
    start_node,
};

/// How long a broker that lost the lead may keep running before that counts as
/// a violation (it notices at its next lease renewal, within about 7 s, or
/// at its next write).
const FAIL_STOP_LIMIT: Duration = Duration::from_secs(60);

/// The kinds of fault, as the report counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// SIGKILL of the leading broker.
    BrokerKill,
    /// SIGSTOP of the leading broker until another leads (its lease ran out), then SIGCONT.
    BrokerPause,
    /// The leading broker's traffic to every etcd member stalled or reset.
    BrokerCut,
    /// SIGKILL of an etcd member that does not lead, restarted after a while.
    EtcdMemberKill,
    /// SIGKILL of the etcd leader, restarted after a while.
    EtcdLeaderKill,
    /// SIGKILL of a node daemon, started again after a while.
    NodeRestart,
}

impl FaultKind {
    pub const ALL: [FaultKind; 6] = [
        FaultKind::BrokerKill,
        FaultKind::BrokerPause,
        FaultKind::BrokerCut,
        FaultKind::EtcdMemberKill,
        FaultKind::EtcdLeaderKill,
        FaultKind::NodeRestart,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::BrokerKill => "kill the leading broker (SIGKILL)",
            FaultKind::BrokerPause => "pause the leading broker past its lease (SIGSTOP, SIGCONT)",
            FaultKind::BrokerCut => "cut the leading broker off from etcd",
            FaultKind::EtcdMemberKill => "kill an etcd follower",
            FaultKind::EtcdLeaderKill => "kill the etcd leader",
            FaultKind::NodeRestart => "restart a node daemon",
        }
    }
}

/// One injected fault.
#[derive(Debug, Clone)]
pub struct Fault {
    /// Since the system started.
    pub at: Duration,
    pub kind: FaultKind,
    /// What it hit and what came of it.
    pub note: String,
}

/// A node daemon the system runs.
#[derive(Debug)]
struct NodeDaemon {
    name: String,
    fixture: String,
    process: Option<Process>,
}

/// A broker process: waiting to lead, or leading (with its addresses).
#[derive(Debug)]
enum Running {
    Standby(Process),
    Leading(Broker),
}

impl Running {
    fn process(&mut self) -> &mut Process {
        match self {
            Running::Standby(process) => process,
            Running::Leading(broker) => &mut broker.process,
        }
    }

    fn pid(&self) -> u32 {
        match self {
            Running::Standby(process) => process.pid(),
            Running::Leading(broker) => broker.process.pid(),
        }
    }
}

/// A broker slot: its proxies to etcd and the broker process running in it.
#[derive(Debug)]
struct Slot {
    label: char,
    proxies: Vec<Proxy>,
    running: Option<Running>,
    generation: u32,
    ready: PathBuf,
    /// The broker lost the lead while paused or cut off: since when it should be stopping.
    stale_since: Option<Instant>,
    /// No new broker starts in the slot before then (after a kill).
    hold_until: Option<Instant>,
}

#[derive(Debug, Clone)]
struct KnownBroker {
    name: String,
    ready: PathBuf,
}

/// Everything running, and what was done to it.
#[derive(Debug)]
pub struct System {
    dir: PathBuf,
    runtime: Arc<Runtime>,
    etcd: EtcdCluster,
    /// The harness's own store client (straight to the members, never cut).
    store: allot_store::EtcdStore,
    slots: Vec<Slot>,
    nodes: Vec<NodeDaemon>,
    front: Arc<Proxy>,
    known: Arc<Mutex<HashMap<u32, KnownBroker>>>,
    leader: watch::Receiver<Option<LeaderInfo>>,
    tracker: JoinHandle<()>,
    started: Instant,
    pub faults: Vec<Fault>,
    /// Fail-stop violations seen while running.
    pub violations: Vec<Violation>,
    /// Every broker process started: process id → name.
    pub brokers: HashMap<u32, String>,
    /// The last leading broker whose slot started another: lent to
    /// `start_node` (for its node token) when no broker leads.
    retired: Option<Broker>,
}

impl System {
    /// Starts etcd, two brokers and the node daemons (`(name, fixture)`), creates
    /// the clients' team and waits until every node is ready.
    pub fn start(runtime: Arc<Runtime>, dir: &Path, nodes: &[(&str, &str)]) -> System {
        let etcd = runtime.block_on(EtcdCluster::start(3));
        let store = runtime.block_on(etcd.store());
        let mut slots = Vec::new();
        for label in ['a', 'b'] {
            let proxies =
                (0..etcd.len()).map(|member| runtime.block_on(Proxy::start(Some(etcd.address(member))))).collect();
            slots.push(Slot {
                label,
                proxies,
                running: None,
                generation: 0,
                ready: PathBuf::new(),
                stale_since: None,
                hold_until: None,
            });
        }
        let front = Arc::new(runtime.block_on(Proxy::start(None)));
        let known = Arc::new(Mutex::new(HashMap::new()));
        let (sender, leader) = watch::channel(None);
        let tracker = runtime.spawn(track(store.clone(), Arc::clone(&known), sender, Arc::clone(&front)));
        let mut system = System {
            dir: dir.to_owned(),
            runtime,
            etcd,
            store,
            slots,
            nodes: nodes
                .iter()
                .map(|(name, fixture)| NodeDaemon { name: (*name).into(), fixture: (*fixture).into(), process: None })
                .collect(),
            front,
            known,
            leader,
            tracker,
            started: Instant::now(),
            faults: Vec::new(),
            violations: Vec::new(),
            brokers: HashMap::new(),
            retired: None,
        };
        // `tend` starts a broker in each slot; whichever takes the lead first leads.
        system.wait_for_leader(Duration::from_secs(30));
        allotctl_json(system.leading_broker(), &["team", "create", super::clients::TEAM]);
        for index in 0..system.nodes.len() {
            system.start_node_daemon(index);
        }
        system.wait_until_nodes_ready(Duration::from_secs(60));
        system
    }

    /// Who leads, as the tracker last saw it.
    pub fn leader(&self) -> watch::Receiver<Option<LeaderInfo>> {
        self.leader.clone()
    }

    /// When the system started: the fault timeline's zero.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The platform admin's token file, written by the first broker.
    pub fn admin_token(&self) -> PathBuf {
        self.dir.join("admin.token")
    }

    fn record(&mut self, kind: FaultKind, note: String) {
        eprintln!("[{:>6.1}s] fault: {} — {note}", self.started.elapsed().as_secs_f64(), kind.name());
        self.faults.push(Fault { at: self.started.elapsed(), kind, note });
    }

    fn spawn_broker(&mut self, slot: usize) {
        let endpoints = self.slots[slot]
            .proxies
            .iter()
            .map(|proxy| format!("http://{}", proxy.address()))
            .collect::<Vec<_>>()
            .join(",");
        self.slots[slot].generation += 1;
        let name = format!("broker-{}-{}", self.slots[slot].label, self.slots[slot].generation);
        let (process, ready) = spawn_standby_broker(&StoreKind::Etcd(endpoints), &self.dir, &name);
        self.brokers.insert(process.pid(), name.clone());
        self.known
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(process.pid(), KnownBroker { name, ready: ready.clone() });
        let slot = &mut self.slots[slot];
        if let Some(Running::Leading(broker)) = slot.running.replace(Running::Standby(process)) {
            self.retired = Some(broker);
        }
        slot.ready = ready;
        slot.stale_since = None;
    }

    /// Restarts brokers that exited (once their slot's hold is over), notes
    /// the addresses of those that lead, and reports (then kills) a broker that
    /// lost the lead but kept running.
    pub fn tend(&mut self) {
        for index in 0..self.slots.len() {
            let slot = &mut self.slots[index];
            if slot.hold_until.is_some_and(|until| Instant::now() < until) {
                continue;
            }
            slot.hold_until = None;
            if let Some(Running::Standby(_)) = &slot.running
                && slot.ready.exists()
                && let Some(Running::Standby(process)) = slot.running.take()
            {
                slot.running = Some(Running::Leading(standby_leads(process, &slot.ready, &self.dir)));
            }
            let respawn = match slot.running.as_mut() {
                None => true,
                Some(running) => {
                    let stale = slot.stale_since;
                    let process = running.process();
                    if process.has_exited() {
                        if let Some(since) = stale {
                            eprintln!(
                                "[{:>6.1}s] {} stopped {:.1}s after it lost the lead",
                                self.started.elapsed().as_secs_f64(),
                                process.name,
                                since.elapsed().as_secs_f64()
                            );
                        }
                        true
                    } else if stale.is_some_and(|since| since.elapsed() > FAIL_STOP_LIMIT) {
                        let detail = format!(
                            "{} lost the lead but still ran {} s later (log {})",
                            process.name,
                            FAIL_STOP_LIMIT.as_secs(),
                            process.log.display()
                        );
                        self.violations.push(Violation { invariant: Invariant::StaleLeaderNeverWrote, detail });
                        process.kill();
                        true
                    } else {
                        false
                    }
                }
            };
            if respawn {
                self.spawn_broker(index);
            }
        }
    }

    /// Sleeps `duration`, tending the brokers meanwhile.
    pub fn wait(&mut self, duration: Duration) {
        let deadline = Instant::now() + duration;
        while Instant::now() < deadline {
            self.tend();
            std::thread::sleep(Duration::from_millis(50).min(deadline.saturating_duration_since(Instant::now())));
        }
    }

    /// Waits until `check` holds (tending meanwhile); false when `limit` passed.
    fn wait_until(&mut self, limit: Duration, mut check: impl FnMut(&mut System) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            self.tend();
            if check(self) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The leader, once one serves.
    ///
    /// # Panics
    /// When none serves within `limit`, with the brokers' logs.
    pub fn wait_for_leader(&mut self, limit: Duration) -> LeaderInfo {
        let serving = |system: &mut System| {
            system.leader.borrow().as_ref().is_some_and(|leader| leader.grpc.is_some())
                && system
                    .leader_slot()
                    .is_some_and(|slot| matches!(system.slots[slot].running, Some(Running::Leading(_))))
        };
        if !self.wait_until(limit, serving) {
            panic!("no broker leads after {limit:?}:\n{}", self.broker_logs());
        }
        self.leader.borrow().clone().expect("a leader")
    }

    /// The slot whose broker holds the leader key now.
    fn leader_slot(&self) -> Option<usize> {
        let pid = self.leader.borrow().as_ref()?.pid;
        self.slots.iter().position(|slot| slot.running.as_ref().is_some_and(|running| running.pid() == pid))
    }

    /// The leading broker (for allotctl).
    ///
    /// # Panics
    /// When none leads.
    pub fn leading_broker(&self) -> &Broker {
        let leader = self.leader.borrow().clone();
        match self.leader_slot().map(|slot| &self.slots[slot].running) {
            Some(Some(Running::Leading(broker))) => broker,
            _ => panic!("no broker of ours leads ({leader:?}):\n{}", self.broker_logs()),
        }
    }

    /// Waits until another broker than `pid` holds the leader key; false after `limit`.
    fn wait_for_other_leader(&mut self, pid: u32, limit: Duration) -> bool {
        self.wait_until(limit, |system| system.leader.borrow().as_ref().is_some_and(|leader| leader.pid != pid))
    }

    /// Both slots run a broker that is not stale, one of which serves as leader.
    pub fn wait_until_steady(&mut self, limit: Duration) {
        let steady =
            |system: &mut System| system.slots.iter().all(|slot| slot.running.is_some() && slot.stale_since.is_none());
        if !self.wait_until(limit, steady) {
            panic!("the brokers did not settle within {limit:?}:\n{}", self.broker_logs());
        }
        self.wait_for_leader(limit);
    }

    /// SIGKILL of the leading broker; its slot starts a new standby after `down`.
    pub fn kill_leader(&mut self, down: Duration) {
        let leader = self.wait_for_leader(Duration::from_secs(60));
        let slot = self.leader_slot().expect("the leader's slot");
        if let Some(running) = self.slots[slot].running.as_mut() {
            running.process().kill();
        }
        self.slots[slot].hold_until = Some(Instant::now() + down);
        self.record(FaultKind::BrokerKill, format!("{} killed", leader.name));
    }

    /// SIGSTOP of the leading broker until another broker leads (its lease ran
    /// out), then SIGCONT: it must find out and stop. `during` runs while it is
    /// paused (other faults).
    pub fn pause_leader(&mut self, during: impl FnOnce(&mut System)) {
        let leader = self.wait_for_leader(Duration::from_secs(60));
        let slot = self.leader_slot().expect("the leader's slot");
        signal(leader.pid, libc::SIGSTOP);
        let paused = Instant::now();
        during(self);
        let taken_over = self.wait_for_other_leader(leader.pid, Duration::from_secs(40));
        signal(leader.pid, libc::SIGCONT);
        let seconds = paused.elapsed().as_secs_f64();
        if taken_over {
            self.slots[slot].stale_since = Some(Instant::now());
        }
        let successor = self.leader.borrow().as_ref().map_or("nobody".to_owned(), |leader| leader.name.clone());
        self.record(
            FaultKind::BrokerPause,
            format!("{} paused {seconds:.1}s; {successor} took over: {taken_over}", leader.name),
        );
    }

    /// Cuts the leading broker off from every etcd member. With `past_lease`,
    /// the cut lasts until another broker leads, then heals (the cut broker
    /// must stop); otherwise it heals after `short` (a blip the leader may
    /// survive). `during` runs while it is cut.
    pub fn cut_leader(&mut self, cut: Cut, past_lease: bool, short: Duration, during: impl FnOnce(&mut System)) {
        let leader = self.wait_for_leader(Duration::from_secs(60));
        let slot = self.leader_slot().expect("the leader's slot");
        for proxy in &self.slots[slot].proxies {
            proxy.set_cut(cut);
        }
        let started = Instant::now();
        during(self);
        let taken_over = if past_lease {
            self.wait_for_other_leader(leader.pid, Duration::from_secs(40))
        } else {
            let rest = short.saturating_sub(started.elapsed());
            self.wait(rest);
            self.leader.borrow().as_ref().is_some_and(|now| now.pid != leader.pid)
        };
        for proxy in &self.slots[slot].proxies {
            proxy.set_cut(Cut::Open);
        }
        if taken_over && self.slots[slot].running.as_ref().is_some_and(|running| running.pid() == leader.pid) {
            self.slots[slot].stale_since = Some(Instant::now());
        }
        self.record(
            FaultKind::BrokerCut,
            format!(
                "{} cut off ({cut:?}) for {:.1}s; another took over: {taken_over}",
                leader.name,
                started.elapsed().as_secs_f64()
            ),
        );
    }

    /// SIGKILL of one etcd member (the leader, or a follower chosen by `rng`),
    /// restarted after `down`.
    pub fn kill_etcd(&mut self, leader: bool, down: Duration, rng: &mut Rng) {
        // A loaded machine, or a member that just rejoined, may leave the probe
        // without an answer for a moment: ask again for up to 10 s.
        let mut leading = self.runtime.block_on(self.etcd.leader());
        let asked = Instant::now();
        while leading.is_none() && asked.elapsed() < Duration::from_secs(10) {
            self.wait(Duration::from_millis(500));
            leading = self.runtime.block_on(self.etcd.leader());
        }
        let victim = match (leader, leading) {
            (true, Some(leading)) => leading,
            (false, Some(leading)) => {
                let followers: Vec<usize> = (0..self.etcd.len()).filter(|member| *member != leading).collect();
                rng.pick(&followers)
            }
            (_, None) => rng.between(0, self.etcd.len() as u64 - 1) as usize,
        };
        self.etcd.kill(victim);
        let started = Instant::now();
        self.wait(down);
        self.runtime.block_on(self.etcd.restart(victim));
        let after = self.runtime.block_on(self.etcd.leader());
        let kind = if leading == Some(victim) { FaultKind::EtcdLeaderKill } else { FaultKind::EtcdMemberKill };
        self.record(
            kind,
            format!(
                "member-{victim} down {:.1}s; leader before: {leading:?}, after: {after:?}",
                started.elapsed().as_secs_f64()
            ),
        );
    }

    /// SIGKILL of a node daemon, started again after `down` (longer than the
    /// node timeout, 3 s, makes it lost meanwhile).
    pub fn restart_node(&mut self, index: usize, down: Duration) {
        if let Some(mut process) = self.nodes[index].process.take() {
            process.kill();
        }
        self.wait(down);
        self.start_node_daemon(index);
        let name = self.nodes[index].name.clone();
        self.record(FaultKind::NodeRestart, format!("{name} down {:.1}s", down.as_secs_f64()));
    }

    /// Starts a node daemon with `start_node`, dialling the front door.
    fn start_node_daemon(&mut self, index: usize) {
        let front = self.front.address().to_string();
        let dir = self.dir.clone();
        let (name, fixture) = (self.nodes[index].name.clone(), self.nodes[index].fixture.clone());
        // start_node takes a Broker for its address and node token: lend it one
        // with the front door's address.
        let leading = self.slots.iter_mut().find_map(|slot| match slot.running.as_mut() {
            Some(Running::Leading(broker)) => Some(broker),
            _ => None,
        });
        let broker = leading.or(self.retired.as_mut()).expect("a broker that has led");
        let grpc = std::mem::replace(&mut broker.grpc, front.clone());
        let url = std::mem::replace(&mut broker.url, format!("http://{front}"));
        let process = start_node(broker, &fixture, &name, &dir);
        broker.grpc = grpc;
        broker.url = url;
        self.nodes[index].process = Some(process);
    }

    /// Waits until the leader lists every node as ready.
    ///
    /// # Panics
    /// When they are not within `limit`.
    pub fn wait_until_nodes_ready(&mut self, limit: Duration) {
        let count = self.nodes.len();
        let ready = |system: &mut System| {
            system.leader_slot().is_some_and(|slot| match &system.slots[slot].running {
                Some(Running::Leading(broker)) => {
                    node_statuses(broker).iter().filter(|(_, status)| status == "ready").count() == count
                }
                _ => false,
            })
        };
        if !self.wait_until(limit, ready) {
            let logs = self
                .nodes
                .iter()
                .filter_map(|node| node.process.as_ref())
                .map(|process| format!("--- {}\n{}", process.name, tail(&process.log_text(), 20)))
                .collect::<Vec<_>>()
                .join("\n");
            panic!("the nodes were not all ready within {limit:?}:\n{logs}\n{}", self.broker_logs());
        }
    }

    /// Heals every cut, restarts stopped etcd members and waits until the
    /// system is steady (two brokers, a leader, every node ready).
    pub fn heal(&mut self) {
        for slot in &self.slots {
            for proxy in &slot.proxies {
                proxy.set_cut(Cut::Open);
            }
        }
        for member in 0..self.etcd.len() {
            if !self.etcd.is_running(member) {
                self.runtime.block_on(self.etcd.restart(member));
            }
        }
        for index in 0..self.nodes.len() {
            if self.nodes[index].process.as_mut().is_none_or(Process::has_exited) {
                self.start_node_daemon(index);
            }
        }
        self.wait_until_steady(Duration::from_secs(90));
        self.wait_until_nodes_ready(Duration::from_secs(60));
    }

    /// Stops the brokers and node daemons (so the history stops growing) and
    /// reads etcd's whole history of Allot's keys, and the allocations stored
    /// at its last revision (decoded).
    pub fn stop_and_read_history(&mut self) -> (Vec<Event>, BTreeAllocations) {
        for slot in &mut self.slots {
            if let Some(running) = slot.running.as_mut() {
                running.process().kill();
            }
        }
        for node in &mut self.nodes {
            if let Some(process) = node.process.as_mut() {
                process.kill();
            }
        }
        self.tracker.abort();
        let store = self.store.clone();
        self.runtime.block_on(async move {
            let range = store.range(layout::prefix_allocations()).await.expect("the final allocations");
            let end = range.revision.get();
            let mut events = Vec::new();
            let mut stream = store.watch(layout::ROOT, Revision::new(1)).await.expect("a watch from revision 1");
            while events.last().is_none_or(|event: &Event| event.revision < end) {
                let next = tokio::time::timeout(Duration::from_secs(30), stream.next()).await;
                let event = match next {
                    Ok(Some(Ok(event))) => event,
                    Ok(Some(Err(error))) => panic!("the history could not be read: {error}"),
                    Ok(None) | Err(_) => panic!("the history ended before revision {end}"),
                };
                if event.revision.get() > end {
                    break;
                }
                events.push(history_event(event));
            }
            // The last revision may hold several events; the watch sends a
            // revision's events together, so they are all in once it is reached.
            while let Ok(Some(Ok(event))) = tokio::time::timeout(Duration::from_secs(2), stream.next()).await {
                if event.revision.get() > end {
                    break;
                }
                events.push(history_event(event));
            }
            let last = range
                .kvs
                .iter()
                .map(|kv| {
                    let allocation: allot_api::allocation::Allocation =
                        serde_json::from_slice(&kv.value).expect("a stored allocation");
                    (allocation.id.to_string(), allocation)
                })
                .collect();
            (events, last)
        })
    }

    /// Each GPU's memory in MiB by (node, index), from the fixtures' inventories.
    pub fn gpu_memory(&self) -> HashMap<(String, u32), u64> {
        let mut memory = HashMap::new();
        for node in &self.nodes {
            let output = allot_node(&["inventory", "--fixture", &node.fixture, "--output", "json"], &[]);
            let inventory: Value = serde_json::from_slice(&output.stdout).expect("inventory JSON");
            for gpu in inventory["gpus"].as_array().into_iter().flatten() {
                if let (Some(index), Some(mib)) = (gpu["index"].as_u64(), gpu["memory_mib"].as_u64()) {
                    memory.insert((node.name.clone(), index as u32), mib);
                }
            }
        }
        memory
    }

    /// The brokers whose write etcd refused because another broker held the
    /// leader key (the fence at work), from their logs.
    pub fn fenced_brokers(&self) -> Vec<String> {
        self.broker_log_paths()
            .iter()
            .filter(|path| {
                std::fs::read_to_string(path).unwrap_or_default().contains("lost leadership: this broker stops writing")
            })
            .filter_map(|path| path.file_stem().and_then(|stem| stem.to_str()).map(str::to_owned))
            .collect()
    }

    fn broker_log_paths(&self) -> Vec<PathBuf> {
        let mut logs: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map(|entries| entries.filter_map(Result::ok).map(|entry| entry.path()).collect())
            .unwrap_or_default();
        logs.retain(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("broker-") && name.ends_with(".log"))
        });
        logs.sort();
        logs
    }

    /// The tail of every broker's log, for a failure message.
    pub fn broker_logs(&self) -> String {
        self.broker_log_paths()
            .iter()
            .map(|path| {
                format!("--- {}\n{}", path.display(), tail(&std::fs::read_to_string(path).unwrap_or_default(), 15))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for System {
    fn drop(&mut self) {
        self.tracker.abort();
        // Paused brokers are killed like the rest (SIGKILL ends a stopped process).
    }
}

/// The allocations stored at the end, by id.
pub type BTreeAllocations = std::collections::BTreeMap<String, allot_api::allocation::Allocation>;

fn history_event(event: allot_store::WatchEvent) -> Event {
    Event {
        revision: event.revision.get(),
        key: event.kv.key,
        value: (event.kind == EventKind::Put).then_some(event.kv.value),
    }
}

fn signal(pid: u32, signal: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return };
    // SAFETY: kill has no memory preconditions; the pid is one of our own children.
    unsafe { libc::kill(pid, signal) };
}

/// A ready file's gRPC address and the URL clients dial, once it is written.
fn read_ready(path: &Path) -> Option<(String, String)> {
    let text = std::fs::read_to_string(path).ok()?;
    let addresses: Value = serde_json::from_str(&text).ok()?;
    let grpc = addresses["grpc"].as_str()?.to_owned();
    let url = addresses["url"].as_str().map_or_else(|| format!("http://{grpc}"), str::to_owned);
    Some((grpc, url))
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Reads the leader key every 100 ms and says who leads (with its gRPC address
/// once its ready file is written); points the front door at it.
async fn track(
    store: allot_store::EtcdStore,
    known: Arc<Mutex<HashMap<u32, KnownBroker>>>,
    sender: watch::Sender<Option<LeaderInfo>>,
    front: Arc<Proxy>,
) {
    loop {
        let read = tokio::time::timeout(Duration::from_secs(1), store.get(layout::leader())).await;
        if let Ok(Ok(value)) = read {
            let leader = value.and_then(|kv| {
                let identity = String::from_utf8_lossy(&kv.value).into_owned();
                let pid = identity_pid(&identity)?;
                let broker = known.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).get(&pid).cloned();
                let name = broker.as_ref().map_or_else(|| format!("pid {pid}"), |broker| broker.name.clone());
                let ready = broker.and_then(|broker| read_ready(&broker.ready));
                let grpc: Option<SocketAddr> = ready.as_ref().and_then(|(grpc, _)| grpc.parse().ok());
                let url = ready.map(|(_, url)| url);
                Some(LeaderInfo { identity, pid, name, grpc, url })
            });
            front.set_target(leader.as_ref().and_then(|leader| leader.grpc));
            sender.send_if_modified(|current| {
                let changed = *current != leader;
                *current = leader;
                changed
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
