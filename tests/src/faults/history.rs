//! The invariants, checked after a run over etcd's history (every revision
//! from 1, as a watch replays it) and every client's log.
//!
//! Over the history, revision by revision:
//! - capacity: at every revision, on every node, no GPU is held whole by one
//!   live allocation (bound, enforced or lost) and used by another, no two MIG
//!   instances overlap in a GPU's memory slices, no GPU mixes MIG instances and
//!   shares, the shares of a GPU add up to at most 1000 milli-GPU and its
//!   memory, and no core is granted twice;
//! - allocations: an allocation key always holds the allocation of that id,
//!   for the request it was made for; once bound it stays where it was bound;
//!   a released or preempted allocation never holds again; only finished ones
//!   are deleted; a (team, request id) makes at most one allocation;
//! - leadership: no revision writes Allot's keys while no broker holds the
//!   leader key.
//!
//! Against the clients' logs:
//! - every acknowledged allocation was stored for its request, with the grant
//!   the client was told, and is live at the end unless its client released it;
//! - every acknowledged release is stored as released; "already finished" comes
//!   only after an attempt whose outcome the client could not know;
//! - no allocation is live at the end that its client does not hold: none whose
//!   create was refused, none with a request id no client used;
//! - every acknowledgement came from a broker that led when the acknowledged
//!   write was stored, or is a retry answered from an earlier leader's write
//!   (stored before that broker first led): a broker that acknowledges a write
//!   stored after its leadership ended wrote as a stale leader (or claims a
//!   write it did not make);
//! - every request got a definitive answer once the faults stopped.
//!
//! The system under test adds one more check while it runs
//! (`system::System::tend`): a broker that lost the lead while paused or cut
//! off stops within 30 s (the report also names the brokers whose write etcd
//! refused by the leader-key fence).
//!
//! What it cannot check:
//! - who wrote: etcd's history does not say which broker made a write, so a
//!   stale leader writing while another broker holds the key (an unfenced
//!   write) is caught only when a client acknowledgement, a capacity conflict
//!   or a changed record exposes it;
//! - time between revisions: capacity is checked at etcd revisions, not at the
//!   instants node daemons act on them (they run with `--no-enforce` here);
//! - reads: clients only create and release, so a stale answer to `Get` or
//!   `List` (from a paused broker that resumed) is not looked for;
//! - what is not exercised: one team without quotas (no borrowing, reclaim or
//!   preemption), node memory, faults inside etcd's own network (the proxies
//!   sit between brokers and etcd), clocks and disks.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

use allot_api::allocation::{Allocation, AllocationState};

use super::clients::{ClientLog, CreateOutcome, ReleaseOutcome};
use super::{Grant, Invariant, Violation, identity_pid};

/// One change in etcd's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub revision: u64,
    pub key: String,
    /// `None` for a deletion.
    pub value: Option<Vec<u8>>,
}

/// A broker's time holding the leader key: from the revision that put it to
/// the one that deleted it (`None`: still held at the end).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term {
    pub identity: String,
    pub pid: Option<u32>,
    pub from: u64,
    pub to: Option<u64>,
}

impl Term {
    fn covers(&self, revision: u64) -> bool {
        self.from < revision && self.to.is_none_or(|to| revision < to)
    }
}

/// What the check found, and what it went over.
#[derive(Debug, Clone, Default)]
pub struct Checked {
    pub violations: Vec<Violation>,
    /// Revisions replayed, and those that wrote allocations.
    pub revisions: u64,
    pub allocation_revisions: u64,
    /// Distinct allocations stored.
    pub allocations: usize,
    /// The most allocations holding capacity at one revision.
    pub peak_holding: usize,
    pub terms: Vec<Term>,
    /// Acknowledgements (creates and releases) checked against the leader terms,
    /// and those a broker answered from a write made before it first led.
    pub attributed: usize,
    pub replayed: usize,
    /// The allocations at the end, by id.
    pub last: BTreeMap<String, Allocation>,
}

const ALLOCATIONS: &str = "/allot/v1/allocations/";
const LEADER: &str = "/allot/v1/leader";

fn finished(state: AllocationState) -> bool {
    matches!(state, AllocationState::Released | AllocationState::Preempted)
}

/// Replays `events` (in revision order) and checks every client's log against
/// the result. `gpu_memory` is each (node, GPU index)'s memory in MiB, for the
/// shares' memory; `brokers` names broker processes by id, for messages.
pub fn check(
    events: &[Event],
    gpu_memory: &HashMap<(String, u32), u64>,
    brokers: &HashMap<u32, String>,
    logs: &[ClientLog],
) -> Checked {
    let mut replay = Replay {
        gpu_memory,
        violations: Vec::new(),
        reported: BTreeSet::new(),
        revisions: 0,
        allocation_revisions: 0,
        peak_holding: 0,
        terms: Vec::new(),
        leader: None,
        records: BTreeMap::new(),
        first_stored: HashMap::new(),
        first_finished: HashMap::new(),
        first_grant: HashMap::new(),
        by_request: BTreeMap::new(),
        holding: BTreeMap::new(),
        states: HashMap::new(),
        attributed: 0,
        replayed: 0,
    };
    let mut start = 0;
    while start < events.len() {
        let revision = events[start].revision;
        let end = start + events[start..].iter().take_while(|event| event.revision == revision).count();
        replay.apply(revision, &events[start..end]);
        start = end;
    }
    let mut checked = Checked {
        revisions: replay.revisions,
        allocation_revisions: replay.allocation_revisions,
        allocations: replay.first_stored.len(),
        peak_holding: replay.peak_holding,
        terms: replay.terms.clone(),
        ..Default::default()
    };
    replay.check_logs(logs, brokers);
    checked.attributed = replay.attributed;
    checked.replayed = replay.replayed;
    checked.violations = replay.violations;
    checked.last = replay.records;
    checked
}

struct Replay<'a> {
    gpu_memory: &'a HashMap<(String, u32), u64>,
    violations: Vec<Violation>,
    /// Conflicts already reported, so one that lasts is reported once.
    reported: BTreeSet<String>,
    revisions: u64,
    allocation_revisions: u64,
    peak_holding: usize,
    terms: Vec<Term>,
    leader: Option<String>,
    records: BTreeMap<String, Allocation>,
    /// Allocation id → the revision that first stored it.
    first_stored: HashMap<String, u64>,
    /// Allocation id → the revision that first stored it finished.
    first_finished: HashMap<String, u64>,
    /// Allocation id → its first grant and the revision that stored it.
    first_grant: HashMap<String, (Grant, u64)>,
    /// (team, request id) → the allocations it made.
    by_request: BTreeMap<(String, String), BTreeSet<String>>,
    /// Node → allocations holding capacity there.
    holding: BTreeMap<String, BTreeSet<String>>,
    /// Allocation id → each stored state change (revision, state), for messages.
    states: HashMap<String, Vec<(u64, AllocationState)>>,
    attributed: usize,
    replayed: usize,
}

impl Replay<'_> {
    fn violation(&mut self, invariant: Invariant, detail: String) {
        self.violations.push(Violation { invariant, detail });
    }

    /// Reports a conflict once, however many revisions it lasts.
    fn conflict(&mut self, key: String, detail: String) {
        if self.reported.insert(key) {
            self.violation(Invariant::CapacityGrantedTwice, detail);
        }
    }

    fn apply(&mut self, revision: u64, group: &[Event]) {
        self.revisions += 1;
        let others: Vec<&str> =
            group.iter().filter(|event| event.key != LEADER).map(|event| event.key.as_str()).collect();
        if !others.is_empty() && self.leader.is_none() {
            let shown = others.iter().take(3).copied().collect::<Vec<_>>().join(", ");
            self.violation(
                Invariant::StaleLeaderNeverWrote,
                format!(
                    "revision {revision} wrote {} keys ({shown}) while no broker held the leader key",
                    others.len()
                ),
            );
        }
        let mut touched = BTreeSet::new();
        let mut allocations = false;
        for event in group {
            if event.key == LEADER {
                self.leader_event(revision, event);
            } else if let Some(id) = event.key.strip_prefix(ALLOCATIONS) {
                allocations = true;
                self.allocation_event(revision, id, event.value.as_deref(), &mut touched);
            }
        }
        if allocations {
            self.allocation_revisions += 1;
        }
        for node in touched {
            self.check_node(revision, &node);
        }
        let holding = self.holding.values().map(BTreeSet::len).sum();
        self.peak_holding = self.peak_holding.max(holding);
    }

    fn leader_event(&mut self, revision: u64, event: &Event) {
        if let Some(open) = self.terms.last_mut().filter(|term| term.to.is_none()) {
            open.to = Some(revision);
        }
        match &event.value {
            Some(value) => {
                let identity = String::from_utf8_lossy(value).into_owned();
                self.terms.push(Term {
                    pid: identity_pid(&identity),
                    identity: identity.clone(),
                    from: revision,
                    to: None,
                });
                self.leader = Some(identity);
            }
            None => self.leader = None,
        }
    }

    fn allocation_event(&mut self, revision: u64, id: &str, value: Option<&[u8]>, touched: &mut BTreeSet<String>) {
        let previous = self.records.get(id).cloned();
        if let Some(node) = previous.as_ref().and_then(|record| record.binding.as_ref()).map(|b| b.node.to_string()) {
            if let Some(holding) = self.holding.get_mut(&node) {
                holding.remove(id);
            }
            touched.insert(node);
        }
        let Some(value) = value else {
            if let Some(previous) = &previous
                && !finished(previous.state)
            {
                self.violation(
                    Invariant::AcknowledgedAllocationKept,
                    format!("revision {revision} deleted allocation {id} while it was {}", previous.state.as_str()),
                );
            }
            self.records.remove(id);
            return;
        };
        let record: Allocation = match serde_json::from_slice(value) {
            Ok(record) => record,
            Err(error) => {
                self.violation(
                    Invariant::AcknowledgedAllocationKept,
                    format!("revision {revision} stored an unreadable allocation {id}: {error}"),
                );
                return;
            }
        };
        if record.id.to_string() != id {
            self.violation(
                Invariant::OneAllocationPerRequest,
                format!("revision {revision} stored allocation {} under the key of {id}", record.id),
            );
        }
        let grant = record.binding.as_ref().map(Grant::from_binding);
        match &previous {
            Some(previous) => {
                if previous.request != record.request {
                    self.violation(
                        Invariant::OneAllocationPerRequest,
                        format!(
                            "revision {revision} reused allocation id {id}: made for request {:?} ({:?}), now {:?} ({:?})",
                            previous.request.request_id,
                            previous.request.gpus,
                            record.request.request_id,
                            record.request.gpus
                        ),
                    );
                }
                if finished(previous.state) && !finished(record.state) {
                    self.violation(
                        Invariant::NoUnknownAllocationLive,
                        format!(
                            "revision {revision} made allocation {id} {} again after it was {}",
                            record.state.as_str(),
                            previous.state.as_str()
                        ),
                    );
                }
            }
            None => {
                self.first_stored.entry(id.to_owned()).or_insert(revision);
                if let Some(request_id) = &record.request.request_id {
                    let made =
                        self.by_request.entry((record.request.team.to_string(), request_id.clone())).or_default();
                    made.insert(id.to_owned());
                    if made.len() == 2 {
                        let made = made.iter().cloned().collect::<Vec<_>>().join(", ");
                        self.violation(
                            Invariant::OneAllocationPerRequest,
                            format!(
                                "request id {request_id} made allocations {made} (the second at revision {revision})"
                            ),
                        );
                    }
                }
            }
        }
        match (&grant, self.first_grant.get(id)) {
            (Some(grant), None) => {
                self.first_grant.insert(id.to_owned(), (grant.clone(), revision));
            }
            (Some(grant), Some((first, at))) if grant != first => {
                let detail = format!(
                    "allocation {id} was bound to {first} at revision {at}, then to {grant} at revision {revision}"
                );
                self.violation(Invariant::AcknowledgedAllocationKept, detail);
            }
            (None, Some((first, at))) if !finished(record.state) => {
                let detail = format!(
                    "allocation {id} was bound to {first} at revision {at}, then unbound at revision {revision}"
                );
                self.violation(Invariant::AcknowledgedAllocationKept, detail);
            }
            _ => {}
        }
        if finished(record.state) {
            self.first_finished.entry(id.to_owned()).or_insert(revision);
        }
        let states = self.states.entry(id.to_owned()).or_default();
        if states.last().is_none_or(|(_, state)| *state != record.state) {
            states.push((revision, record.state));
        }
        if record.state.holds_capacity()
            && let Some(grant) = &grant
        {
            self.holding.entry(grant.node.clone()).or_default().insert(id.to_owned());
            touched.insert(grant.node.clone());
        }
        self.records.insert(id.to_owned(), record);
    }

    /// Adds up what the live allocations on one node hold and reports every overlap.
    fn check_node(&mut self, revision: u64, node: &str) {
        let ids: Vec<String> = self.holding.get(node).map(|ids| ids.iter().cloned().collect()).unwrap_or_default();
        let mut whole: BTreeMap<u32, Vec<String>> = BTreeMap::new();
        let mut mig: BTreeMap<u32, Vec<(u32, u32, String)>> = BTreeMap::new();
        let mut shares: BTreeMap<u32, Vec<(u32, u64, String)>> = BTreeMap::new();
        let mut cores: BTreeMap<u32, Vec<String>> = BTreeMap::new();
        for id in &ids {
            let Some(binding) = self.records.get(id).and_then(|record| record.binding.as_ref()) else { continue };
            let grant = Grant::from_binding(binding);
            for gpu in &grant.gpus {
                match (gpu.mig, gpu.share) {
                    (Some((start, size)), _) => mig.entry(gpu.index).or_default().push((start, size, id.clone())),
                    (None, Some((milli, memory))) => {
                        shares.entry(gpu.index).or_default().push((milli, memory, id.clone()))
                    }
                    (None, None) => whole.entry(gpu.index).or_default().push(id.clone()),
                }
            }
            for core in &grant.cores {
                cores.entry(*core).or_default().push(id.clone());
            }
        }
        let gpus: BTreeSet<u32> = whole.keys().chain(mig.keys()).chain(shares.keys()).copied().collect();
        for gpu in gpus {
            let mut users: Vec<String> = whole.get(&gpu).cloned().unwrap_or_default();
            users.extend(mig.get(&gpu).into_iter().flatten().map(|(_, _, id)| id.clone()));
            users.extend(shares.get(&gpu).into_iter().flatten().map(|(_, _, id)| id.clone()));
            if whole.get(&gpu).is_some_and(|holders| !holders.is_empty()) && users.len() > 1 {
                self.conflict(
                    format!("whole {node} {gpu} {users:?}"),
                    format!(
                        "revision {revision}: GPU {gpu} of {node} is held whole and used again by {}",
                        users.join(", ")
                    ),
                );
            }
            if mig.contains_key(&gpu) && shares.contains_key(&gpu) {
                self.conflict(
                    format!("mixed {node} {gpu} {users:?}"),
                    format!(
                        "revision {revision}: GPU {gpu} of {node} has MIG instances and shares: {}",
                        users.join(", ")
                    ),
                );
            }
            let slots = mig.get(&gpu).cloned().unwrap_or_default();
            for (position, (start, size, id)) in slots.iter().enumerate() {
                for (other_start, other_size, other) in &slots[position + 1..] {
                    if *start < other_start + other_size && *other_start < start + size {
                        self.conflict(
                            format!("mig {node} {gpu} {id} {other}"),
                            format!(
                                "revision {revision}: MIG slots {start}+{size} ({id}) and {other_start}+{other_size} ({other}) overlap on GPU {gpu} of {node}"
                            ),
                        );
                    }
                }
            }
            let share = shares.get(&gpu).cloned().unwrap_or_default();
            let milli: u32 = share.iter().map(|(milli, _, _)| milli).sum();
            let memory: u64 = share.iter().map(|(_, memory, _)| memory).sum();
            let ids: Vec<&str> = share.iter().map(|(_, _, id)| id.as_str()).collect();
            if milli > 1000 {
                self.conflict(
                    format!("share {node} {gpu} {ids:?}"),
                    format!(
                        "revision {revision}: shares of GPU {gpu} of {node} add up to {milli} milli-GPU: {}",
                        ids.join(", ")
                    ),
                );
            }
            if let Some(limit) = self.gpu_memory.get(&(node.to_owned(), gpu))
                && memory > *limit
            {
                self.conflict(
                    format!("share memory {node} {gpu} {ids:?}"),
                    format!(
                        "revision {revision}: shares of GPU {gpu} of {node} add up to {memory} MiB of its {limit}: {}",
                        ids.join(", ")
                    ),
                );
            }
        }
        for (core, holders) in cores {
            if holders.len() > 1 {
                self.conflict(
                    format!("core {node} {core} {holders:?}"),
                    format!("revision {revision}: core {core} of {node} is granted to {}", holders.join(", ")),
                );
            }
        }
    }

    /// An allocation's stored states, like `bound@12 enforced@15`.
    fn stored_states(&self, id: &str) -> String {
        let states = self.states.get(id).map(Vec::as_slice).unwrap_or_default();
        states.iter().map(|(revision, state)| format!("{}@{revision}", state.as_str())).collect::<Vec<_>>().join(" ")
    }

    /// Whether broker `pid` may have acknowledged a write stored at `revision`:
    /// it led then, or the write predates its first term (a retry answered
    /// from an earlier leader's write). `Err` says why not.
    fn acknowledged_by(&mut self, pid: u32, revision: u64) -> Result<(), String> {
        self.attributed += 1;
        let terms: Vec<&Term> = self.terms.iter().filter(|term| term.pid == Some(pid)).collect();
        let Some(first) = terms.first() else {
            return Err("it never held the leader key".to_owned());
        };
        if revision < first.from {
            self.replayed += 1;
            return Ok(());
        }
        if terms.iter().any(|term| term.covers(revision)) {
            return Ok(());
        }
        let led = terms
            .iter()
            .map(|term| format!("{}..{}", term.from, term.to.map_or("end".to_owned(), |to| to.to_string())))
            .collect::<Vec<_>>()
            .join(", ");
        Err(format!("it led revisions {led} only"))
    }

    fn check_logs(&mut self, logs: &[ClientLog], brokers: &HashMap<u32, String>) {
        let name = |pid: u32| brokers.get(&pid).cloned().unwrap_or_else(|| format!("pid {pid}"));
        // Request id → what its client was told; allocation id → how its client released it.
        let mut told: HashMap<&str, &CreateOutcome> = HashMap::new();
        let mut released: HashMap<&str, &ReleaseOutcome> = HashMap::new();
        let mut release_trails: HashMap<&str, String> = HashMap::new();
        for log in logs {
            for release in &log.releases {
                released.insert(&release.id, &release.outcome);
                release_trails.insert(&release.id, release.trail.join("; "));
            }
        }
        for log in logs {
            for create in &log.creates {
                told.insert(&create.request_id, &create.outcome);
                let made: Vec<String> = self
                    .by_request
                    .get(&(super::clients::TEAM.to_owned(), create.request_id.clone()))
                    .map(|made| made.iter().cloned().collect())
                    .unwrap_or_default();
                match &create.outcome {
                    CreateOutcome::Acknowledged { id, grant, by, .. } => {
                        let Some(stored_at) = self.first_stored.get(id).copied() else {
                            self.violation(
                                Invariant::AcknowledgedAllocationKept,
                                format!(
                                    "{} acknowledged {id} for request {} ({}), never stored",
                                    name(*by),
                                    create.request_id,
                                    create.ask
                                ),
                            );
                            continue;
                        };
                        if !made.contains(id) {
                            self.violation(
                                Invariant::OneAllocationPerRequest,
                                format!(
                                    "{} acknowledged {id} for request {}, but {id} was stored for another request",
                                    name(*by),
                                    create.request_id
                                ),
                            );
                        }
                        if let Some(grant) = grant
                            && let Some((stored, _)) = self.first_grant.get(id)
                            && grant != stored
                        {
                            let detail = format!("{} acknowledged {id} on {grant}, stored on {stored}", name(*by));
                            self.violation(Invariant::AcknowledgedAllocationKept, detail);
                        }
                        if let Err(why) = self.acknowledged_by(*by, stored_at) {
                            self.violation(
                                Invariant::StaleLeaderNeverWrote,
                                format!("{} acknowledged {id} (request {}), first stored at revision {stored_at}, but {why}", name(*by), create.request_id),
                            );
                        }
                        let released_by_client = released.get(id.as_str()).is_some_and(|outcome| {
                            matches!(outcome, ReleaseOutcome::Released { .. } | ReleaseOutcome::AlreadyFinished { .. })
                        });
                        let state = self.records.get(id).map(|record| record.state);
                        match state {
                            None => self.violation(
                                Invariant::AcknowledgedAllocationKept,
                                format!("acknowledged allocation {id} (request {}) is gone from the store", create.request_id),
                            ),
                            Some(state) if finished(state) && !released_by_client && !released.contains_key(id.as_str()) => self.violation(
                                Invariant::AcknowledgedAllocationKept,
                                format!("acknowledged allocation {id} (request {}) is {} though its client never released it", create.request_id, state.as_str()),
                            ),
                            _ => {}
                        }
                    }
                    CreateOutcome::Refused { code, by, message } => {
                        if !made.is_empty() {
                            self.violation(
                                Invariant::NoUnknownAllocationLive,
                                format!(
                                    "{} refused request {} ({code:?}: {message}), yet it made {} (attempts: {})",
                                    name(*by),
                                    create.request_id,
                                    made.join(", "),
                                    create.trail.join("; ")
                                ),
                            );
                        }
                    }
                    CreateOutcome::Unknown => self.violation(
                        Invariant::EveryRequestAnswered,
                        format!(
                            "create {} ({}) had no answer after {} attempts (allocations stored for it: {:?})",
                            create.request_id, create.ask, create.attempts, made
                        ),
                    ),
                }
            }
            for release in &log.releases {
                let id = &release.id;
                let state = self.records.get(id).map(|record| record.state);
                match &release.outcome {
                    ReleaseOutcome::Released { by } => {
                        if !state.is_some_and(finished) {
                            self.violation(
                                Invariant::AcknowledgedAllocationKept,
                                format!(
                                    "{} acknowledged the release of {id}, which is {} at the end",
                                    name(*by),
                                    state.map_or("gone", |state| state.as_str())
                                ),
                            );
                        }
                        if let Some(at) = self.first_finished.get(id).copied()
                            && let Err(why) = self.acknowledged_by(*by, at)
                        {
                            self.violation(
                                Invariant::StaleLeaderNeverWrote,
                                format!(
                                    "{} acknowledged the release of {id}, stored at revision {at}, but {why}",
                                    name(*by)
                                ),
                            );
                        }
                    }
                    ReleaseOutcome::AlreadyFinished { message, by } if release.unknown_attempts == 0 => self.violation(
                        Invariant::NoUnknownAllocationLive,
                        format!(
                            "{} says {id} was already finished before its client released it: {message}",
                            name(*by)
                        ),
                    ),
                    ReleaseOutcome::AlreadyFinished { .. } => {}
                    ReleaseOutcome::NotFound { message, by } => self.violation(
                        Invariant::AcknowledgedAllocationKept,
                        format!("{} does not know acknowledged allocation {id}: {message}", name(*by)),
                    ),
                    ReleaseOutcome::Unknown => self.violation(
                        Invariant::EveryRequestAnswered,
                        format!("the release of {id} had no answer after {} attempts", release.attempts),
                    ),
                }
            }
        }
        let live: Vec<(String, Option<String>, AllocationState)> = self
            .records
            .values()
            .filter(|record| !finished(record.state))
            .map(|record| (record.id.to_string(), record.request.request_id.clone(), record.state))
            .collect();
        for (id, request_id, state) in live {
            let outcome = request_id.as_deref().and_then(|request_id| told.get(request_id).copied());
            let problem = match outcome {
                None => Some("no client ever asked for it".to_owned()),
                Some(CreateOutcome::Acknowledged { id: acknowledged, .. }) if *acknowledged != id => {
                    Some(format!("its client was told {acknowledged}"))
                }
                Some(CreateOutcome::Acknowledged { .. }) => {
                    let trail = release_trails.get(id.as_str()).cloned().unwrap_or_default();
                    match released.get(id.as_str()) {
                        Some(ReleaseOutcome::Released { by }) => {
                            Some(format!("{} acknowledged its release (attempts: {trail})", name(*by)))
                        }
                        Some(ReleaseOutcome::AlreadyFinished { by, .. }) => {
                            Some(format!("{} said it was already finished (attempts: {trail})", name(*by)))
                        }
                        _ => None,
                    }
                }
                Some(CreateOutcome::Refused { code, .. }) => Some(format!("its create was refused ({code:?})")),
                // Reported above as unanswered.
                Some(CreateOutcome::Unknown) => None,
            };
            if let Some(problem) = problem {
                let mut detail = format!("allocation {id} is {} at the end, ", state.as_str());
                let _ = write!(detail, "request {}: {problem}", request_id.as_deref().unwrap_or("(none)"));
                let _ = write!(detail, "; stored as {}", self.stored_states(&id));
                self.violation(Invariant::NoUnknownAllocationLive, detail);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use allot_api::allocation::{AllocationId, Binding, GpuGrant, MigGrant, MilliGpu, ShareGrant};
    use allot_api::units::MiB;

    use super::*;
    use crate::faults::clients::{CreateLog, ReleaseLog};

    /// A GPU of a test allocation: its index, a MIG slot range, a share in milli-GPU.
    type Gpu = (u32, Option<(u32, u32)>, Option<u32>);

    fn allocation(id: u64, request_id: &str, state: AllocationState, gpus: &[Gpu]) -> Allocation {
        let request = crate::one_gpu_request("ml").with_request_id(request_id.to_owned()).expect("request id");
        let grants = gpus
            .iter()
            .map(|(index, mig, share)| GpuGrant {
                index: *index,
                uuid: None,
                pci_bus_id: String::new(),
                mig: mig.map(|(start, size)| MigGrant {
                    profile: "1g.10gb".into(),
                    profile_id: 19,
                    start,
                    size,
                    recarve: false,
                }),
                share: share.map(|milli| ShareGrant { compute: MilliGpu(milli), memory: MiB(1024) }),
                nic: None,
            })
            .collect();
        Allocation {
            id: AllocationId::from_u64(id),
            request,
            state,
            binding: Some(Binding {
                node: "node-a".parse().expect("node"),
                gpus: grants,
                cpus: vec![],
                cores: vec![u32::try_from(id).expect("small id")],
                memory: MiB(0),
                numa_nodes: vec![],
            }),
            explanation: String::new(),
            created_at_ms: 0,
            updated_at_ms: 0,
            generation: 1,
            quota: Default::default(),
        }
    }

    fn put(revision: u64, allocation: &Allocation) -> Event {
        Event {
            revision,
            key: format!("{ALLOCATIONS}{}", allocation.id),
            value: Some(serde_json::to_vec(allocation).expect("json")),
        }
    }

    fn leader(revision: u64, pid: Option<u32>) -> Event {
        Event { revision, key: LEADER.to_owned(), value: pid.map(|pid| format!("host:{pid}:1").into_bytes()) }
    }

    fn acknowledged(request_id: &str, id: u64, by: u32) -> CreateLog {
        CreateLog {
            client: 0,
            request_id: request_id.to_owned(),
            ask: "1 GPU".into(),
            attempts: 1,
            unknown_attempts: 0,
            outcome: CreateOutcome::Acknowledged {
                id: AllocationId::from_u64(id).to_string(),
                pending: false,
                grant: None,
                by,
            },
            trail: Vec::new(),
        }
    }

    fn run(events: &[Event], creates: Vec<CreateLog>, releases: Vec<ReleaseLog>) -> Vec<Invariant> {
        let logs = [ClientLog { creates, releases, ..Default::default() }];
        let checked = check(events, &HashMap::new(), &HashMap::new(), &logs);
        checked.violations.iter().map(|violation| violation.invariant).collect()
    }

    #[test]
    fn a_clean_history_has_no_violation() {
        let one = allocation(1, "r1", AllocationState::Bound, &[(0, None, None)]);
        let two = allocation(2, "r2", AllocationState::Bound, &[(1, Some((0, 1)), None), (2, None, Some(500))]);
        let three = allocation(3, "r3", AllocationState::Bound, &[(1, Some((1, 2)), None), (2, None, Some(500))]);
        let mut released = one.clone();
        released.state = AllocationState::Released;
        let events = [leader(1, Some(10)), put(2, &one), put(3, &two), put(3, &three), put(4, &released)];
        let release = ReleaseLog {
            client: 0,
            id: one.id.to_string(),
            attempts: 1,
            unknown_attempts: 0,
            outcome: ReleaseOutcome::Released { by: 10 },
            trail: Vec::new(),
        };
        let creates = vec![acknowledged("r1", 1, 10), acknowledged("r2", 2, 10), acknowledged("r3", 3, 10)];
        assert_eq!(run(&events, creates, vec![release]), []);
    }

    #[test]
    fn capacity_granted_twice_is_found_at_the_revision_it_happens() {
        let cases: [(&[Gpu], &[Gpu]); 4] = [
            (&[(0, None, None)], &[(0, None, None)]),
            (&[(0, None, None)], &[(0, None, Some(100))]),
            (&[(0, Some((0, 4)), None)], &[(0, Some((2, 2)), None)]),
            (&[(0, None, Some(600))], &[(0, None, Some(500))]),
        ];
        for (first, second) in cases {
            let one = allocation(1, "r1", AllocationState::Bound, first);
            let two = allocation(2, "r2", AllocationState::Lost, second);
            let events = [leader(1, Some(10)), put(2, &one), put(3, &two)];
            let found = run(&events, vec![acknowledged("r1", 1, 10), acknowledged("r2", 2, 10)], vec![]);
            assert_eq!(found, [Invariant::CapacityGrantedTwice], "{first:?} then {second:?}");
        }
    }

    #[test]
    fn writes_without_a_leader_and_acknowledgements_after_a_term_are_stale() {
        let one = allocation(1, "r1", AllocationState::Bound, &[(0, None, None)]);
        let events = [leader(1, Some(10)), leader(2, None), put(3, &one)];
        let found = run(&events, vec![acknowledged("r1", 1, 10)], vec![]);
        assert_eq!(found, [Invariant::StaleLeaderNeverWrote, Invariant::StaleLeaderNeverWrote]);

        // Broker 10 led before the write, 20 when it was stored: 10 acknowledging it is stale,
        // 30 (which led only later) answering a retry of it is not.
        let events = [
            leader(1, Some(10)),
            leader(2, None),
            leader(3, Some(20)),
            put(4, &one),
            leader(5, None),
            leader(6, Some(30)),
        ];
        assert_eq!(run(&events, vec![acknowledged("r1", 1, 10)], vec![]), [Invariant::StaleLeaderNeverWrote]);
        assert_eq!(run(&events, vec![acknowledged("r1", 1, 30)], vec![]), []);
    }

    #[test]
    fn lost_acknowledged_refused_and_unknown_allocations_are_found() {
        let one = allocation(1, "r1", AllocationState::Bound, &[(0, None, None)]);
        let events = [leader(1, Some(10))];
        assert_eq!(run(&events, vec![acknowledged("r1", 1, 10)], vec![]), [Invariant::AcknowledgedAllocationKept]);

        let events = [leader(1, Some(10)), put(2, &one)];
        let refused = CreateLog {
            outcome: CreateOutcome::Refused { code: tonic::Code::ResourceExhausted, message: "full".into(), by: 10 },
            ..acknowledged("r1", 1, 10)
        };
        assert_eq!(
            run(&events, vec![refused], vec![]),
            [Invariant::NoUnknownAllocationLive, Invariant::NoUnknownAllocationLive]
        );
        assert_eq!(run(&events, vec![], vec![]), [Invariant::NoUnknownAllocationLive]);

        let again = allocation(2, "r1", AllocationState::Bound, &[(1, None, None)]);
        let events = [leader(1, Some(10)), put(2, &one), put(3, &again)];
        assert_eq!(
            run(&events, vec![acknowledged("r1", 1, 10)], vec![]),
            [Invariant::OneAllocationPerRequest, Invariant::NoUnknownAllocationLive]
        );
    }

    #[test]
    fn an_allocation_keeps_its_request_and_its_place() {
        let one = allocation(1, "r1", AllocationState::Bound, &[(0, None, None)]);
        let moved = allocation(1, "r1", AllocationState::Enforced, &[(3, None, None)]);
        let events = [leader(1, Some(10)), put(2, &one), put(3, &moved)];
        assert_eq!(run(&events, vec![acknowledged("r1", 1, 10)], vec![]), [Invariant::AcknowledgedAllocationKept]);

        let reused = allocation(1, "r9", AllocationState::Bound, &[(0, None, None)]);
        let events = [leader(1, Some(10)), put(2, &one), put(3, &reused)];
        let found = run(&events, vec![acknowledged("r1", 1, 10)], vec![]);
        assert!(found.contains(&Invariant::OneAllocationPerRequest), "{found:?}");
    }
}
