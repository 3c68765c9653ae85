//! Fault injection, Jepsen style (issue 17, item 5): a three-member etcd
//! cluster on loopback, two brokers and four node daemons, under a stream of
//! creates and releases from eight concurrent gRPC clients, while faults are
//! injected: the leading broker killed (SIGKILL), paused (SIGSTOP) until its
//! lease ran out and another broker leads, then resumed, and cut off from
//! etcd (its traffic to every member stalled or reset, past its lease or for a
//! blip shorter than it); an etcd follower and the etcd leader killed and
//! restarted; node daemons killed and restarted (some for longer than the node
//! timeout, so they are lost and come back).
//!
//! Every create carries its own request id and is retried with it until it
//! gets a definitive answer; every answer is logged with the broker (process)
//! that gave it. Afterwards `allot_tests::faults::history` replays etcd's
//! history from revision 1 and checks, at every revision and against every
//! client's log: no GPU, MIG slot, share capacity or core granted twice; every
//! acknowledged allocation stored as acknowledged and live unless released; no
//! allocation live that no client holds; one allocation per request id; no
//! write while no broker held the leader key, no acknowledgement of a write
//! stored after the acknowledging broker's leadership ended, and every broker
//! that lost the lead stopped. Its module documentation says what this cannot
//! check.
//!
//! The CI run injects 24 faults of all six kinds (2 to 8 of each) in about
//! two minutes on two cores.
//! `ALLOT_FAULTS_SECONDS=900` (or `ALLOT_FAULTS_LONG=1`, 15 minutes) keeps
//! injecting random rounds of faults for longer; `ALLOT_FAULTS_SEED` picks the
//! seed (printed in the report).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use allot_api::bearer::Bearer;
use allot_tests::faults::clients::{ClientLog, CreateOutcome, ReleaseOutcome, WorkloadSettings, run_client};
use allot_tests::faults::history::{self, Checked};
use allot_tests::faults::proxy::Cut;
use allot_tests::faults::system::{FaultKind, System};
use allot_tests::faults::{Invariant, Rng, Violation};

/// The node daemons: two DGX H100 (whole GPUs and shares), a MIG-enabled DGX
/// A100 (MIG instances) and a PCIe L40S server (shares).
const NODES: [(&str, &str); 4] = [
    ("node-h100-a", "dgx-h100"),
    ("node-h100-b", "dgx-h100"),
    ("node-mig", "dgx-a100-mig"),
    ("node-l40s", "pcie-l40s"),
];

/// What happens to the leading broker in a round.
#[derive(Debug, Clone, Copy)]
enum BrokerFault {
    Kill,
    Pause,
    /// Cut off until another broker leads.
    CutPastLease(Cut),
    /// Cut off for a few seconds, less than its lease.
    CutBlip(Cut),
}

/// One round: a broker fault, an etcd member killed (the leader or a
/// follower) while the brokers fail over, and a node daemon restarted.
#[derive(Debug, Clone, Copy)]
struct Round {
    broker: BrokerFault,
    etcd_leader: bool,
    node: usize,
    node_down: Duration,
}

/// The CI run: eight rounds, 24 faults, every kind at least twice.
fn ci_rounds() -> Vec<Round> {
    let round = |broker, etcd_leader, node, down_ms| Round {
        broker,
        etcd_leader,
        node,
        node_down: Duration::from_millis(down_ms),
    };
    vec![
        round(BrokerFault::Kill, false, 0, 1000),
        round(BrokerFault::Pause, true, 1, 4500),
        round(BrokerFault::CutPastLease(Cut::Stall), false, 2, 500),
        round(BrokerFault::Kill, true, 3, 2000),
        round(BrokerFault::CutBlip(Cut::Stall), false, 0, 4500),
        round(BrokerFault::Pause, true, 1, 1000),
        round(BrokerFault::CutPastLease(Cut::Reset), false, 2, 4500),
        round(BrokerFault::Kill, true, 3, 500),
    ]
}

fn random_round(rng: &mut Rng) -> Round {
    let cut = if rng.chance(0.5) { Cut::Stall } else { Cut::Reset };
    let broker =
        rng.pick(&[BrokerFault::Kill, BrokerFault::Pause, BrokerFault::CutPastLease(cut), BrokerFault::CutBlip(cut)]);
    Round {
        broker,
        etcd_leader: rng.chance(0.5),
        node: rng.between(0, NODES.len() as u64 - 1) as usize,
        node_down: Duration::from_millis(rng.between(300, 5000)),
    }
}

/// The etcd fault and the node restart of a round.
fn side_faults(system: &mut System, round: Round, rng: &mut Rng) {
    let down = Duration::from_millis(rng.between(1500, 3000));
    system.kill_etcd(round.etcd_leader, down, rng);
    system.restart_node(round.node, round.node_down);
}

fn run_round(system: &mut System, round: Round, rng: &mut Rng) {
    system.wait_until_steady(Duration::from_secs(90));
    system.wait(Duration::from_millis(rng.between(1500, 3500)));
    match round.broker {
        BrokerFault::Kill => {
            system.kill_leader(Duration::from_millis(rng.between(500, 2000)));
            system.wait(Duration::from_millis(500));
            side_faults(system, round, rng);
        }
        BrokerFault::Pause => {
            system.pause_leader(|system| {
                system.wait(Duration::from_millis(500));
                side_faults(system, round, rng);
            });
        }
        BrokerFault::CutPastLease(cut) => {
            system.cut_leader(cut, true, Duration::ZERO, |system| {
                system.wait(Duration::from_millis(500));
                side_faults(system, round, rng);
            });
        }
        BrokerFault::CutBlip(cut) => {
            let blip = Duration::from_millis(rng.between(5000, 8000));
            system.cut_leader(cut, false, blip, |_| {});
            side_faults(system, round, rng);
        }
    }
}

#[derive(Debug)]
struct Settings {
    /// Keep injecting random rounds until this much time has passed (the CI
    /// rounds come first either way).
    seconds: Option<u64>,
    seed: u64,
}

impl Settings {
    fn from_env() -> Settings {
        let number = |name: &str| {
            std::env::var(name).ok().map(|text| {
                text.trim().parse::<u64>().unwrap_or_else(|_| panic!("{name}={text:?}: give a whole number"))
            })
        };
        let long = std::env::var("ALLOT_FAULTS_LONG").is_ok_and(|value| !value.is_empty() && value != "0");
        let seconds = number("ALLOT_FAULTS_SECONDS").or(long.then_some(900));
        Settings { seconds, seed: number("ALLOT_FAULTS_SEED").unwrap_or(17) }
    }
}

#[test]
fn brokers_etcd_and_node_daemons_under_faults_keep_every_invariant() {
    let settings = Settings::from_env();
    let runtime =
        Arc::new(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime"));
    let dir = tempfile::Builder::new().prefix("allot-faults-").tempdir().expect("temp dir");
    let started = Instant::now();
    let mut system = System::start(Arc::clone(&runtime), dir.path(), &NODES);
    eprintln!(
        "[{:>6.1}s] started: 3 etcd members, 2 brokers, {} node daemons",
        started.elapsed().as_secs_f64(),
        NODES.len()
    );

    let workload = WorkloadSettings {
        clients: 8,
        max_held: 5,
        think: (Duration::from_millis(10), Duration::from_millis(60)),
        call_timeout: Duration::from_secs(3),
        resolve_for: Duration::from_secs(60),
    };
    let bearer = Bearer::from_file(&system.admin_token()).expect("the admin token");
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..workload.clients)
        .map(|client| {
            runtime.spawn(run_client(
                client,
                settings.seed.wrapping_mul(1000).wrapping_add(client as u64),
                workload.clone(),
                system.leader(),
                bearer.clone(),
                Arc::clone(&stop),
                system.started(),
            ))
        })
        .collect();

    let mut rng = Rng::new(settings.seed);
    for round in ci_rounds() {
        run_round(&mut system, round, &mut rng);
    }
    if let Some(seconds) = settings.seconds {
        while started.elapsed() < Duration::from_secs(seconds) {
            let round = random_round(&mut rng);
            run_round(&mut system, round, &mut rng);
        }
    }
    let faulted = started.elapsed();

    // Heal everything, let the clients run on a healthy system for a moment,
    // then stop them: each finishes (retrying) what it has in hand.
    system.heal();
    system.wait(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let logs: Vec<ClientLog> = runtime.block_on(async {
        let mut logs = Vec::new();
        for client in clients {
            logs.push(client.await.expect("a client task"));
        }
        logs
    });
    let (events, stored) = system.stop_and_read_history();
    let checked = history::check(&events, &system.gpu_memory(), &system.brokers, &logs);

    let mut violations: Vec<Violation> = system.violations.clone();
    violations.extend(checked.violations.iter().cloned());
    if checked.last != stored {
        violations.push(Violation {
            invariant: Invariant::AcknowledgedAllocationKept,
            detail: format!(
                "the replayed history ends with {} allocations, the store holds {} (the history is incomplete)",
                checked.last.len(),
                stored.len()
            ),
        });
    }
    println!("{}", report(&settings, &system, &logs, &checked, &violations, started.elapsed(), faulted));

    let mut counts: BTreeMap<FaultKind, usize> = BTreeMap::new();
    for fault in &system.faults {
        *counts.entry(fault.kind).or_default() += 1;
    }
    if !violations.is_empty() {
        let kept = dir.keep();
        let listed = violations.iter().take(60).map(|violation| format!("  - {violation}")).collect::<Vec<_>>();
        panic!("{} invariant violations (logs kept in {}):\n{}", violations.len(), kept.display(), listed.join("\n"));
    }
    for kind in FaultKind::ALL {
        assert!(counts.get(&kind).copied().unwrap_or(0) >= 2, "fewer than 2 faults of kind {:?}: {counts:?}", kind);
    }
    assert!(system.faults.len() >= 20, "only {} faults injected", system.faults.len());
    let acknowledged = logs
        .iter()
        .flat_map(|log| &log.creates)
        .filter(|create| matches!(create.outcome, CreateOutcome::Acknowledged { .. }));
    assert!(acknowledged.count() >= 500, "too few allocations were made for the checks to mean much");
}

/// What the run did and found, for people.
fn report(
    settings: &Settings,
    system: &System,
    logs: &[ClientLog],
    checked: &Checked,
    violations: &[Violation],
    elapsed: Duration,
    faulted: Duration,
) -> String {
    let mut lines = vec![format!(
        "== fault injection: seed {}, {:.0} s in all ({:.0} s of faults) ==",
        settings.seed,
        elapsed.as_secs_f64(),
        faulted.as_secs_f64()
    )];
    lines.push(format!("faults injected: {}", system.faults.len()));
    for kind in FaultKind::ALL {
        let count = system.faults.iter().filter(|fault| fault.kind == kind).count();
        lines.push(format!("  {count:>4}  {}", kind.name()));
    }
    let creates: Vec<_> = logs.iter().flat_map(|log| &log.creates).collect();
    let releases: Vec<_> = logs.iter().flat_map(|log| &log.releases).collect();
    let count = |test: &dyn Fn(&CreateOutcome) -> bool| creates.iter().filter(|create| test(&create.outcome)).count();
    let acknowledged = count(&|outcome| matches!(outcome, CreateOutcome::Acknowledged { .. }));
    let queued = count(&|outcome| matches!(outcome, CreateOutcome::Acknowledged { pending: true, .. }));
    let refused = count(&|outcome| matches!(outcome, CreateOutcome::Refused { .. }));
    let unanswered = count(&|outcome| matches!(outcome, CreateOutcome::Unknown));
    let retried = creates.iter().filter(|create| create.unknown_attempts > 0).count();
    let released = releases.iter().filter(|release| matches!(release.outcome, ReleaseOutcome::Released { .. })).count();
    let already =
        releases.iter().filter(|release| matches!(release.outcome, ReleaseOutcome::AlreadyFinished { .. })).count();
    let calls: u32 = creates.iter().map(|create| create.attempts).sum::<u32>()
        + releases.iter().map(|release| release.attempts).sum::<u32>();
    let mut unknown: BTreeMap<&str, u32> = BTreeMap::new();
    for log in logs {
        for (reason, count) in &log.unknown_by_reason {
            *unknown.entry(reason).or_default() += count;
        }
    }
    let unknown_total: u32 = unknown.values().sum();
    lines.push(format!(
        "requests: {} from {} clients ({calls} calls; {unknown_total} with an unknown outcome: {unknown:?})",
        creates.len() + releases.len(),
        logs.len()
    ));
    lines.push(format!(
        "  creates {}: {acknowledged} acknowledged ({queued} queued first), {refused} refused, {unanswered} unanswered; {retried} retried with their request id",
        creates.len()
    ));
    lines.push(format!(
        "  releases {}: {released} acknowledged, {already} answered \"already released\" after an unknown attempt",
        releases.len()
    ));
    let odd: Vec<&String> = logs.iter().flat_map(|log| &log.odd).collect();
    if !odd.is_empty() {
        lines.push(format!("  unexpected answers: {}", odd.len()));
        lines.extend(odd.iter().take(10).map(|line| format!("    {line}")));
    }
    let leaders: std::collections::BTreeSet<&str> = checked.terms.iter().map(|term| term.identity.as_str()).collect();
    lines.push(format!(
        "history: {} revisions ({} wrote allocations), {} allocations stored, at most {} holding capacity at once; {} leader terms of {} brokers",
        checked.revisions,
        checked.allocation_revisions,
        checked.allocations,
        checked.peak_holding,
        checked.terms.len(),
        leaders.len()
    ));
    let fenced = system.fenced_brokers();
    lines.push(format!(
        "fencing: {} brokers had a write refused by etcd after losing the lead, then stopped ({})",
        fenced.len(),
        fenced.join(", ")
    ));
    lines.push(format!(
        "acknowledgements checked against leader terms: {} ({} answered from an earlier leader's write)",
        checked.attributed, checked.replayed
    ));
    lines.push(format!("violations: {}", violations.len()));
    let mut by_invariant: BTreeMap<Invariant, usize> = BTreeMap::new();
    for violation in violations {
        *by_invariant.entry(violation.invariant).or_default() += 1;
    }
    for (invariant, count) in by_invariant {
        lines.push(format!("  {count:>4}  {invariant}"));
    }
    lines.join("\n")
}
