//! The broker's core: the in-memory state behind a lock, and the single writer
//! task through which every change goes.
//!
//! Every mutation is a [`Command`] sent to the writer. The writer drains what is
//! queued (up to [`MAX_BATCH`]), applies each command to the state in order
//! (placement sees the effect of the requests before it), then persists the
//! whole batch in as few store transactions as etcd's operation limit allows
//! (group commit: one fsync for many allocations), and only then answers the
//! callers and tells the nodes. If the store refuses or fails, the state is
//! reloaded from the store and every caller of the batch gets an error: nothing
//! is half-written, and nothing unpersisted is acted on.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use allot_api::allocation::{Allocation, AllocationId, AllocationState, NodeName, ValidatedRequest};
use allot_api::topology::NodeInventory;
use allot_placement::NodeStatus;
use allot_store::{Compare, Op, Store, Txn, layout};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::error::BrokerError;
use crate::rounds::placing::decide;
use crate::rounds::retention;
use crate::rounds::sharing::{self, PolicySettings};
use crate::state::codec::{MAX_RECORD_BYTES, OPS_PER_TXN, decode, decode_all, encode};
use crate::state::{ClusterState, NodeEntry, NodeRecord, TeamRecord};
pub use leader::Leadership;
use teams::TeamCommand;

pub mod leader;
pub mod teams;

/// The most commands one writer batch takes.
pub const MAX_BATCH: usize = 512;

// A tick's deletions fit the half transaction a batch keeps free for a command
// that may write much (see `fits`).
const _: () = assert!(retention::PRUNE_LIMIT <= OPS_PER_TXN / 2);

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_millis() as u64).unwrap_or(0)
}

/// A change to cluster state, with where to send the answer.
#[derive(Debug)]
pub enum Command {
    CreateAllocation {
        request: Box<ValidatedRequest>,
        /// Refuse instead of queueing when it cannot be granted now.
        no_wait: bool,
        /// The W3C traceparent of the caller's span, when traces are exported.
        trace: Option<String>,
        reply: oneshot::Sender<Result<(Allocation, String), BrokerError>>,
    },
    Release {
        id: AllocationId,
        reply: oneshot::Sender<Result<Allocation, BrokerError>>,
    },
    /// Teams, quotas, GPU values and grants (see `teams.rs`).
    Team(TeamCommand),
    /// Preempt what is due, age the usage history, prune a few expired finished
    /// allocations.
    Tick,
    /// Appends one entry to the audit log (no answer).
    Audit(Box<crate::state::audit::AuditEntry>),
    /// Store every changed bucket of the usage history now (before a shutdown);
    /// answers how many.
    FlushUsage {
        reply: oneshot::Sender<Result<usize, BrokerError>>,
    },
    /// Prune up to `retention::PRUNE_LIMIT` expired finished allocations; answers
    /// how many (the broker's start repeats it until none are left).
    Prune {
        reply: oneshot::Sender<Result<usize, BrokerError>>,
    },
    /// Something placement looks at changed outside the writer (a GPU's health or
    /// throttling, from a heartbeat): try the queue again.
    Schedule,
    RegisterNode {
        name: NodeName,
        inventory: Box<NodeInventory>,
        reply: oneshot::Sender<Result<u64, BrokerError>>,
    },
    /// Heartbeats stopped: the node and its allocations are lost.
    NodeLost {
        name: NodeName,
        last_heartbeat_ms: u64,
    },
    /// A lost node heartbeats again: its allocations hold again.
    NodeReturned {
        name: NodeName,
    },
    /// The node applied an allocation's generation.
    Applied {
        id: AllocationId,
        generation: u64,
    },
}

/// The broker: state, the writer's queue, and the node notification channel.
#[derive(Debug)]
pub struct Core {
    state: Mutex<ClusterState>,
    commands: mpsc::Sender<Command>,
    /// Every persisted allocation change, for nodes following their assignments.
    pub assignments: broadcast::Sender<Allocation>,
    pub node_timeout: Duration,
    pub heartbeat_interval: Duration,
    pub policy: PolicySettings,
    pub metrics: crate::state::metrics::Metrics,
    /// Signalled when a write finds that another broker leads now.
    pub fenced: tokio::sync::Notify,
}

impl Core {
    /// Loads state from the store and starts the writer task.
    pub async fn start(
        store: Arc<dyn Store>,
        leadership: Leadership,
        node_timeout: Duration,
        heartbeat_interval: Duration,
        policy: PolicySettings,
    ) -> Result<Arc<Core>, BrokerError> {
        let state = load(store.as_ref()).await?;
        let (commands, receiver) = mpsc::channel(4096);
        let (assignments, _) = broadcast::channel(4096);
        let core = Arc::new(Core {
            state: Mutex::new(state),
            commands,
            assignments,
            node_timeout,
            heartbeat_interval,
            policy,
            metrics: crate::state::metrics::Metrics::default(),
            fenced: tokio::sync::Notify::new(),
        });
        tokio::spawn(writer(Arc::clone(&core), store, leadership, receiver));
        // What expired while no broker ran is deleted before anyone is served.
        let mut pruned = 0;
        loop {
            match core.ask(|reply| Command::Prune { reply }).await {
                Ok(removed) => {
                    pruned += removed;
                    if removed < retention::PRUNE_LIMIT {
                        break;
                    }
                }
                // Not fatal: the ticker prunes the rest.
                Err(error) => {
                    tracing::warn!(%error, "could not prune finished allocations at start; the ticker will");
                    break;
                }
            }
        }
        if pruned > 0 {
            tracing::info!(pruned, retention_s = policy.released_retention.as_secs(), "pruned finished allocations");
        }
        Ok(core)
    }

    /// The state, for reading. Never held across an await.
    pub fn state(&self) -> MutexGuard<'_, ClusterState> {
        // A panic while holding the lock would poison it; the state is still the
        // best we have, so keep serving it.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sends a command to the writer and waits for its answer.
    pub async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, BrokerError>>) -> Command,
    ) -> Result<T, BrokerError> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(make(reply)).await.map_err(|_| BrokerError::NotLeader)?;
        answer.await.map_err(|_| BrokerError::NotLeader)?
    }

    /// Sends a command whose answer nobody waits for.
    pub async fn tell(&self, command: Command) {
        let _ = self.commands.send(command).await;
    }
}

/// Fills in every stored node's template, on every core (each is a copy of a
/// template of some 40 KiB of JSON worth of structures).
fn join_all(
    stored: Vec<crate::state::StoredNode>,
    templates: &std::collections::BTreeMap<u64, NodeInventory>,
) -> Vec<Result<NodeRecord, String>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 8);
    if stored.len() < 256 || threads == 1 {
        return stored.into_iter().map(|node| node.into_record(templates)).collect();
    }
    let chunk = stored.len().div_ceil(threads);
    let mut parts: Vec<Vec<crate::state::StoredNode>> = Vec::new();
    let mut rest = stored;
    while rest.len() > chunk {
        let tail = rest.split_off(chunk);
        parts.push(rest);
        rest = tail;
    }
    parts.push(rest);
    std::thread::scope(|scope| {
        let workers: Vec<_> = parts
            .into_iter()
            .map(|part| {
                scope.spawn(move || part.into_iter().map(|node| node.into_record(templates)).collect::<Vec<_>>())
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|worker| worker.join().unwrap_or_else(|_| vec![Err("a decoding thread panicked".into())]))
            .collect()
    })
}

/// Gives the heap that loading freed (the store's pages, the decoding threads'
/// buffers: a third of the peak with 100,000 allocations) back to the system;
/// glibc's malloc otherwise keeps it, in the arena of each thread that used it.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of malloc's own arenas to the
    // kernel; it takes no pointers and is safe to call at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Reads everything the broker persists.
pub async fn load(store: &dyn Store) -> Result<ClusterState, BrokerError> {
    let unavailable = |error: allot_store::StoreError| BrokerError::StoreUnavailable(error.to_string());
    let mut state = ClusterState::default();
    let now = now_ms();
    let mut lap = std::time::Instant::now();
    let mut phases: Vec<(&str, u128)> = Vec::new();
    let mut phase = |name: &'static str| {
        phases.push((name, lap.elapsed().as_millis()));
        lap = std::time::Instant::now();
    };
    for kv in store.range(layout::prefix_inventory_templates()).await.map_err(unavailable)?.kvs {
        let template: NodeInventory = decode(&kv.key, &kv.value)?;
        state.templates.insert(crate::state::inventory::template_id(&template), template);
    }
    let nodes = store.range(layout::prefix_nodes()).await.map_err(unavailable)?.kvs;
    phase("range nodes");
    let stored = decode_all::<crate::state::StoredNode>(&nodes)?;
    phase("decode nodes");
    let joined = join_all(stored, &state.templates);
    phase("join nodes");
    for (kv, record) in nodes.iter().zip(joined) {
        match record {
            // A node gets one timeout after a broker start to show it is alive.
            Ok(record) => state.insert_node(NodeEntry::new(record, NodeStatus::Ready, now)),
            // It registers again when it next heartbeats.
            Err(problem) => {
                tracing::warn!(key = %kv.key, %problem, "a stored node is unreadable; waiting for it to register")
            }
        }
    }
    drop(nodes);
    phase("index nodes");
    for kv in store.range(layout::prefix_teams()).await.map_err(unavailable)?.kvs {
        let record: TeamRecord = decode(&kv.key, &kv.value)?;
        state.teams.insert(record.name.clone(), record);
    }
    let gpu_values: std::collections::BTreeMap<String, u32> =
        match store.get(&layout::setting("gpu-values")).await.map_err(unavailable)? {
            Some(kv) => decode(&kv.key, &kv.value)?,
            None => Default::default(),
        };
    if let Some(kv) = store.get(&layout::setting("usage-history")).await.map_err(unavailable)? {
        state.history = decode(&kv.key, &kv.value)?;
        state.history_saved_ms = state.history.as_of_ms;
    }
    for kv in store.range(layout::prefix_rbac()).await.map_err(unavailable)?.kvs {
        let line: Vec<String> = decode(&kv.key, &kv.value)?;
        if let Some(grant) = teams::grant_from_line(&line) {
            state.grants.insert(grant);
        }
        state.permissions_stored |= line.first().is_some_and(|kind| kind == "p");
    }
    for kv in store.range(layout::prefix_tokens()).await.map_err(unavailable)?.kvs {
        let record: crate::state::TokenRecord = decode(&kv.key, &kv.value)?;
        if let Some(allot_store::layout::LayoutKey::Token(hash)) = layout::parse(&kv.key) {
            state.tokens.insert(hash, record);
        }
    }
    phase("teams, grants, tokens");
    let allocations = store.range(layout::prefix_allocations()).await.map_err(unavailable)?.kvs;
    phase("range allocations");
    let decoded = decode_all::<Allocation>(&allocations)?;
    drop(allocations);
    phase("decode allocations");
    for allocation in decoded {
        state.allocations.insert(allocation.id, allocation);
    }
    let counter = store.get(&layout::counter("allocation")).await.map_err(unavailable)?;
    state.next_id = match counter {
        Some(kv) => decode(&kv.key, &kv.value)?,
        None => 1,
    };
    // Never reuse an id, even if the counter lagged.
    if let Some(last) = state.allocations.keys().next_back() {
        state.next_id = state.next_id.max(last.as_u64() + 1);
    }
    state.recompute_all_usage();
    phase("usage");
    if let Some(kv) = store.get(&crate::rounds::placing::mix_key()).await.map_err(unavailable)? {
        // The mix only steers packing: an unreadable one is started again, not fatal.
        match decode::<allot_placement::learn::RequestMix>(&kv.key, &kv.value) {
            Ok(mix) => {
                state.mix_saved_seen = mix.seen();
                state.learned_mix = mix;
            }
            Err(error) => tracing::warn!(%error, "the stored task mix is unreadable; learning it again"),
        }
    }
    let audit = store.range(layout::prefix_audit()).await.map_err(unavailable)?.kvs;
    for (kv, stored) in audit.iter().zip(decode_all::<crate::state::audit::StoredAudit>(&audit)?) {
        state.audit.push_stored(kv.key.clone(), stored.into_entries());
    }
    phase("mix, audit");
    let usage = store.range(layout::prefix_usage()).await.map_err(unavailable)?.kvs;
    crate::rounds::usage::resume(&mut state, &usage, now);
    phase("history");
    // Every record was checked before it was written; a tree that does not check
    // now (a GPU family no node has any more, say) is still the admins' intent.
    if let Err(problems) = state.rebuild_tree(gpu_values.clone()) {
        tracing::warn!(?problems, "the stored quota tree no longer checks; using it as stored");
        let specs = state.teams.values().map(TeamRecord::spec).collect();
        let families = teams::named_families(&state);
        state.tree = allot_policy::QuotaTree::new(specs, gpu_values, &families).unwrap_or_default();
    }
    state.round_wanted = !state.queue.is_empty();
    // A node whose allocations were lost when the broker stopped is still lost
    // until it heartbeats: then they are bound again and it is told.
    let lost_nodes: Vec<NodeName> = state
        .nodes()
        .keys()
        .filter(|name| state.live_refs_on(name).any(|allocation| allocation.state == AllocationState::Lost))
        .cloned()
        .collect();
    for name in lost_nodes {
        if let Some(mut entry) = state.node_mut(&name) {
            entry.status = NodeStatus::Lost;
        }
    }
    phase("tree, lost nodes");
    tracing::info!(?phases, "state loaded: milliseconds per phase");
    release_free_memory();
    Ok(state)
}

/// What one applied command must do once the batch is persisted.
pub(crate) enum Pending {
    /// Answered with the allocation as it stands when the batch is stored (a
    /// queued request may have been admitted by the batch's scheduling round).
    Allocation(oneshot::Sender<Result<(Allocation, String), BrokerError>>, AllocationId, String),
    Released(oneshot::Sender<Result<Allocation, BrokerError>>, Box<Allocation>),
    /// An answer that needs nothing from the state after the write.
    Done(Box<dyn Deliver>),
    Registered(oneshot::Sender<Result<u64, BrokerError>>, u64, Vec<Allocation>),
    Changed(Vec<Allocation>),
}

/// An answer to send once the batch is stored (or an error if it is not).
pub(crate) trait Deliver: Send {
    fn deliver(self: Box<Self>);
    fn fail(self: Box<Self>, error: BrokerError);
}

/// A refusal that rests on changes of the batch it is in: sent once the batch
/// is stored; if the batch fails, the caller hears that instead (the state the
/// refusal read never existed).
pub(crate) struct Refusal<T> {
    pub reply: oneshot::Sender<Result<T, BrokerError>>,
    pub error: BrokerError,
}

impl<T: Send> Deliver for Refusal<T> {
    fn deliver(self: Box<Self>) {
        let _ = self.reply.send(Err(self.error));
    }
    fn fail(self: Box<Self>, error: BrokerError) {
        let _ = self.reply.send(Err(error));
    }
}

/// A reply with its value, ready to send.
pub(crate) struct Answer<T> {
    pub reply: oneshot::Sender<Result<T, BrokerError>>,
    pub value: T,
}

impl<T: Send> Deliver for Answer<T> {
    fn deliver(self: Box<Self>) {
        let _ = self.reply.send(Ok(self.value));
    }
    fn fail(self: Box<Self>, error: BrokerError) {
        let _ = self.reply.send(Err(error));
    }
}

/// Applies one command to the state. Returns the store writes it needs and what
/// to do after they are persisted. A refusal that reads the state (quota,
/// capacity, a repeated release, a reused request id, hardware that no longer
/// fits) is answered with the batch, since what it read may not be stored yet;
/// only errors about the request alone (too large to store) are answered at once.
fn apply(state: &mut ClusterState, command: Command, writes: &mut Vec<Op>, policy: PolicySettings) -> Option<Pending> {
    let now = now_ms();
    match command {
        // A retry of a create: the allocation its request id made, answered once
        // it is stored (it may be in this very batch), not a second one.
        Command::CreateAllocation { request, reply, .. } if retried(state, &request).is_some() => {
            match retried(state, &request) {
                Some(Ok((id, explanation))) => Some(Pending::Allocation(reply, id, explanation)),
                // The allocation the id made may not be stored yet: refused with the batch.
                Some(Err(error)) => Some(Pending::Done(Box::new(Refusal { reply, error }))),
                None => None,
            }
        }
        Command::CreateAllocation { request, no_wait, trace, reply } => {
            match traced(trace.as_deref(), "place", || admit_request(state, *request, no_wait, now)) {
                Ok((allocation, explanation)) => {
                    if let Some(trace) = trace {
                        state.remember_trace(allocation.id, trace);
                    }
                    match encode(&allocation) {
                        Ok(bytes) if bytes.len() > MAX_RECORD_BYTES => {
                            let _ = reply.send(Err(BrokerError::InvalidArgument {
                                field: "spec".into(),
                                problem: format!(
                                    "the allocation would take {} KiB to store; make the request smaller",
                                    bytes.len() / 1024
                                ),
                            }));
                            return None;
                        }
                        Ok(bytes) => writes.push(Op::put(layout::allocation(allocation.id.to_string()), bytes)),
                        Err(error) => {
                            let _ = reply.send(Err(error));
                            return None;
                        }
                    }
                    state.unpersisted.insert(allocation.id);
                    if let Some(binding) = &allocation.binding
                        && let Some(mut entry) = state.node_mut(&binding.node)
                    {
                        entry.usage.add(binding);
                    }
                    if allocation.state == AllocationState::Pending {
                        state.round_wanted = true;
                    }
                    let id = allocation.id;
                    state.put_allocation(allocation);
                    Some(Pending::Allocation(reply, id, explanation))
                }
                // A quota or capacity refusal reads what this batch changed before
                // it (a grant that may yet fail to be stored): answered with the batch.
                Err(error) => Some(Pending::Done(Box::new(Refusal { reply, error }))),
            }
        }
        Command::Release { id, reply } => {
            let Some(allocation) = state.allocations.get(&id) else {
                let _ = reply.send(Err(BrokerError::NotFound { what: format!("allocation {id}") }));
                return None;
            };
            if matches!(allocation.state, AllocationState::Released | AllocationState::Preempted) {
                // The release it repeats may be in this very batch, not stored yet:
                // answered once the batch is (if the batch fails, with its error).
                let error = BrokerError::FailedPrecondition(format!(
                    "allocation {id} is already {}",
                    allocation.state.as_str()
                ));
                return Some(Pending::Done(Box::new(Refusal { reply, error })));
            }
            let mut released = allocation.clone();
            released.state = AllocationState::Released;
            released.updated_at_ms = now;
            released.generation += 1;
            match encode(&released) {
                Ok(bytes) => writes.push(Op::put(layout::allocation(id.to_string()), bytes)),
                Err(error) => {
                    let _ = reply.send(Err(error));
                    return None;
                }
            }
            state.put_allocation(released.clone());
            state.node_reports.remove(&id);
            if let Some(binding) = &released.binding {
                let node = binding.node.clone();
                state.recompute_usage(&node);
            }
            state.round_wanted = !state.queue.is_empty() || state.reclaiming().next().is_some();
            Some(Pending::Released(reply, Box::new(released)))
        }
        Command::Team(command) => teams::apply(state, command, writes, now),
        Command::Schedule => {
            state.round_wanted |= !state.queue.is_empty();
            None
        }
        Command::Tick => {
            let (changed, round) = sharing::tick(state, writes, now, policy);
            state.round_wanted |= round;
            retention::prune(state, writes, now, policy.released_retention, retention::PRUNE_LIMIT);
            crate::rounds::usage::tick(state, writes, now);
            crate::rounds::placing::save_mix(state, writes);
            crate::rounds::audit::prune(state, writes, now);
            (!changed.is_empty()).then_some(Pending::Changed(changed))
        }
        Command::Audit(entry) => {
            crate::rounds::audit::append(state, *entry, writes);
            None
        }
        Command::FlushUsage { reply } => {
            let value = crate::rounds::usage::flush(state, writes, now);
            crate::rounds::placing::save_mix(state, writes);
            Some(Pending::Done(Box::new(Answer { reply, value })))
        }
        Command::Prune { reply } => {
            let value = retention::prune(state, writes, now, policy.released_retention, retention::PRUNE_LIMIT);
            Some(Pending::Done(Box::new(Answer { reply, value })))
        }
        Command::RegisterNode { name, inventory, reply } => {
            if let Err(problem) = bindings_still_fit(state, &name, &inventory) {
                // It rests on the live allocations, which this batch may have changed.
                let error = BrokerError::FailedPrecondition(problem);
                return Some(Pending::Done(Box::new(Refusal { reply, error })));
            }
            let epoch = state.nodes().get(&name).map_or(1, |entry| entry.record.epoch + 1);
            let shape = Some(crate::state::placement_shape(&inventory));
            let mut record =
                NodeRecord { name: name.clone(), inventory: *inventory, epoch, registered_at_ms: now, shape };
            // The whole record is checked against the limit, as before templates.
            match encode(&record) {
                Ok(bytes) if bytes.len() > MAX_RECORD_BYTES => {
                    let _ = reply.send(Err(BrokerError::InvalidArgument {
                        field: "inventory".into(),
                        problem: format!("{} KiB is more than a node inventory may take", bytes.len() / 1024),
                    }));
                    return None;
                }
                Ok(_) => {}
                Err(error) => {
                    let _ = reply.send(Err(error));
                    return None;
                }
            }
            match stored_node(state, &record) {
                Ok((template, bytes, shared)) => {
                    if let Some((id, template, template_bytes)) = template {
                        writes.push(Op::put(layout::inventory_template(id), template_bytes));
                        state.templates.insert(id, template);
                    }
                    writes.push(Op::put(layout::node(name.as_str()), bytes));
                    if let Some(shared) = shared {
                        record.inventory = shared;
                    }
                }
                Err(error) => {
                    let _ = reply.send(Err(error));
                    return None;
                }
            }
            let was_lost = state.nodes().get(&name).is_some_and(|entry| entry.status == NodeStatus::Lost);
            let usage = state.nodes().get(&name).map(|entry| entry.usage.clone()).unwrap_or_default();
            let mut entry = NodeEntry::new(record, NodeStatus::Ready, now);
            entry.usage = usage;
            state.insert_node(entry);
            let mut changed = Vec::new();
            if was_lost {
                changed = set_lost_allocations(state, &name, false, now, writes);
            }
            state.recompute_usage(&name);
            state.recompute_capacity();
            state.round_wanted = !state.queue.is_empty();
            Some(Pending::Registered(reply, epoch, changed))
        }
        Command::NodeLost { name, last_heartbeat_ms } => {
            let mut entry = state.node_mut(&name)?;
            // A heartbeat that arrived after the detector looked keeps the node.
            if entry.status == NodeStatus::Lost || entry.last_heartbeat_ms != last_heartbeat_ms {
                return None;
            }
            entry.status = NodeStatus::Lost;
            drop(entry);
            tracing::warn!(node = %name, "node lost: no heartbeat within the timeout");
            let changed = set_lost_allocations(state, &name, true, now, writes);
            state.recompute_capacity();
            Some(Pending::Changed(changed))
        }
        Command::NodeReturned { name } => {
            let mut entry = state.node_mut(&name)?;
            if entry.status != NodeStatus::Lost {
                return None;
            }
            entry.status = NodeStatus::Ready;
            drop(entry);
            tracing::info!(node = %name, "node back");
            let changed = set_lost_allocations(state, &name, false, now, writes);
            state.recompute_capacity();
            state.round_wanted = !state.queue.is_empty();
            Some(Pending::Changed(changed))
        }
        Command::Applied { id, generation } => {
            let allocation = state.allocations.get(&id)?;
            if allocation.generation != generation || allocation.state != AllocationState::Bound {
                return None;
            }
            let mut changed = allocation.clone();
            changed.state = AllocationState::Enforced;
            changed.updated_at_ms = now;
            changed.generation += 1;
            state.put_allocation(changed.clone());
            if let Ok(bytes) = encode(&changed) {
                writes.push(Op::put(layout::allocation(id.to_string()), bytes));
            }
            Some(Pending::Changed(vec![changed]))
        }
    }
}

/// A new inventory template to store (with its id), if the node brings one,
/// and the node's stored record: its own details and its template's id, or the
/// whole inventory when that id is taken by a different template; and the
/// inventory filled in from the template the broker keeps, to keep in memory
/// instead of the registered one (its unchanging parts shared with every node
/// of the same template, see `NodeInventory`).
type StoredRecord = (Option<(u64, NodeInventory, Vec<u8>)>, Vec<u8>, Option<NodeInventory>);

fn stored_node(state: &ClusterState, record: &NodeRecord) -> Result<StoredRecord, BrokerError> {
    use crate::state::{StoredNode, inventory};
    let (template, own) = inventory::split(&record.inventory);
    let id = inventory::template_id(&template);
    let stored = |inventory: Option<NodeInventory>, template: Option<u64>, own: Option<inventory::OwnDetails>| {
        encode(&StoredNode {
            name: record.name.clone(),
            inventory,
            template,
            own,
            epoch: record.epoch,
            registered_at_ms: record.registered_at_ms,
            shape: record.shape,
        })
    };
    match state.templates.get(&id) {
        Some(known) if *known == template => {
            let shared = inventory::join(known, &own).ok();
            Ok((None, stored(None, Some(id), Some(own))?, shared))
        }
        Some(_) => Ok((None, stored(Some(record.inventory.clone()), None, None)?, None)),
        None => {
            let bytes = encode(&template)?;
            let shared = inventory::join(&template, &own).ok();
            Ok((Some((id, template, bytes)), stored(None, Some(id), Some(own))?, shared))
        }
    }
}

/// A node may re-register with changed hardware only if every live allocation
/// on it still names the same GPUs (by index and PCI bus id, and UUID when both
/// sides know it): usage is kept by index, and NVML indices shift when a GPU
/// falls off the bus.
fn bindings_still_fit(state: &ClusterState, node: &NodeName, inventory: &NodeInventory) -> Result<(), String> {
    for allocation in state.live_refs_on(node) {
        let Some(binding) = &allocation.binding else { continue };
        for grant in &binding.gpus {
            let found = inventory.gpus.iter().find(|gpu| gpu.index == grant.index);
            let matches = found.is_some_and(|gpu| {
                gpu.pci_bus_id.to_string() == grant.pci_bus_id
                    && (grant.uuid.is_none() || gpu.uuid.is_none() || gpu.uuid == grant.uuid)
            });
            if !matches {
                return Err(format!(
                    "E-HARDWARE-CHANGED: node {node} registers without GPU {} at {} that allocation {} holds; \
                     release it (allotctl alloc release {}) or restore the GPU, then restart allot-node",
                    grant.index, grant.pci_bus_id, allocation.id, allocation.id
                ));
            }
        }
    }
    Ok(())
}

/// Marks a node's live allocations lost (or bound again when it returns).
/// Lost allocations still hold capacity, so they stay in the node's index.
fn set_lost_allocations(
    state: &mut ClusterState,
    node: &NodeName,
    lost: bool,
    now: u64,
    writes: &mut Vec<Op>,
) -> Vec<Allocation> {
    let mut changed = Vec::new();
    for mut allocation in state.live_on(node) {
        let applies = if lost {
            matches!(allocation.state, AllocationState::Bound | AllocationState::Enforced)
        } else {
            allocation.state == AllocationState::Lost
        };
        if !applies {
            continue;
        }
        allocation.state = if lost { AllocationState::Lost } else { AllocationState::Bound };
        allocation.updated_at_ms = now;
        allocation.generation += 1;
        if let Ok(bytes) = encode(&allocation) {
            writes.push(Op::put(layout::allocation(allocation.id.to_string()), bytes));
        }
        state.put_allocation(allocation.clone());
        changed.push(allocation);
    }
    changed
}

/// Admits a request now (placed and bound), queues it (pending), or refuses it:
/// an unknown team, a request no node could ever hold, one larger than a limit
/// of its team, or (with `no_wait`) one that cannot be granted now.
/// What an earlier create with this request's id made: its allocation and
/// explanation, or an error when the id was used for a different request.
fn retried(state: &ClusterState, request: &ValidatedRequest) -> Option<Result<(AllocationId, String), BrokerError>> {
    let key = request.request_id.as_ref()?;
    let existing = state.by_request_id(&request.team, key)?;
    if existing.request.same_ask(request) {
        return Some(Ok((existing.id, existing.explanation.clone())));
    }
    Some(Err(BrokerError::FailedPrecondition(format!(
        "E-REQUEST-ID-REUSED: request id {key:?} of team {} made allocation {} for a different request; \
         give each create its own request id",
        request.team, existing.id
    ))))
}

fn admit_request(
    state: &mut ClusterState,
    request: ValidatedRequest,
    no_wait: bool,
    now: u64,
) -> Result<(Allocation, String), BrokerError> {
    if !state.teams.contains_key(&request.team) {
        return Err(BrokerError::UnknownTeam { team: request.team.to_string() });
    }
    if !state.tree.is_leaf(&request.team) {
        let projects: Vec<&str> = state.tree.children(&request.team).iter().map(|team| team.as_str()).collect();
        return Err(BrokerError::FailedPrecondition(format!(
            "E-NOT-A-LEAF: team {} has projects; allocate in one of them ({})",
            request.team,
            projects.join(", ")
        )));
    }
    let charge = sharing::request_charge(&request);
    let verdict = sharing::ledger(state).verdict(&request.team, &charge);
    if let allot_policy::Verdict::Never(reason) = &verdict {
        return Err(BrokerError::QuotaExceeded { reason: reason.clone() });
    }
    let queue_is_empty = state.queue.is_empty();
    let wait_reason = match (&verdict, decide(state, &request)) {
        (_, Err(error @ BrokerError::Impossible { .. })) => return Err(error),
        // The queue goes first: a request that fits now still waits its turn
        // behind others (unless its caller asked not to wait at all).
        (allot_policy::Verdict::Fits { .. }, Ok(decided)) if queue_is_empty || no_wait => {
            let model = sharing::decided_model(state, &decided.binding);
            let mut full = charge.clone();
            if let Some(model) = &model {
                let gpu = full.get(&allot_policy::ResourceClass::GpuAny);
                full.0.insert(allot_policy::ResourceClass::gpu_family(&allot_policy::gpu_family(model)), gpu);
            }
            match sharing::ledger(state).verdict(&request.team, &full) {
                allot_policy::Verdict::Fits { borrowed } => {
                    let allocation = new_allocation(
                        state,
                        request,
                        AllocationState::Bound,
                        Some(decided.binding),
                        &decided.explanation,
                        borrowed,
                        now,
                    );
                    return Ok((allocation, decided.explanation));
                }
                allot_policy::Verdict::Wait(reason) | allot_policy::Verdict::Never(reason) => reason,
            }
        }
        (allot_policy::Verdict::Wait(reason), _) => reason.clone(),
        (_, Ok(_)) => "waiting for its turn in the queue".to_owned(),
        (_, Err(error)) => error.to_string().lines().next().unwrap_or("no capacity now").to_owned(),
    };
    if no_wait {
        return Err(BrokerError::NoCapacity { reason: format!("{wait_reason} (and the request asked not to wait)") });
    }
    let allocation = new_allocation(state, request, AllocationState::Pending, None, &wait_reason, false, now);
    state.queue_info.insert(allocation.id, (state.queue.len() + 1, wait_reason.clone()));
    Ok((allocation, format!("queued: {wait_reason}")))
}

fn new_allocation(
    state: &mut ClusterState,
    request: ValidatedRequest,
    phase: AllocationState,
    binding: Option<allot_api::allocation::Binding>,
    explanation: &str,
    borrowed: bool,
    now: u64,
) -> Allocation {
    let id = AllocationId::from_u64(state.next_id);
    state.next_id += 1;
    Allocation {
        id,
        request,
        state: phase,
        binding,
        explanation: explanation.to_owned(),
        created_at_ms: now,
        updated_at_ms: now,
        generation: 1,
        quota: allot_api::allocation::QuotaStanding { borrowed, ..Default::default() },
    }
}

/// Runs `work` in a span named `name` under the caller's trace, when there is one.
fn traced<T>(trace: Option<&str>, name: &'static str, work: impl FnOnce() -> T) -> T {
    use allot_telemetry::opentelemetry::trace::{Span, Tracer};
    let Some(trace) = trace else { return work() };
    let parent = allot_telemetry::context_from(Some(trace));
    let mut span = allot_telemetry::opentelemetry::global::tracer("allot-broker").start_with_context(name, &parent);
    let result = work();
    span.end();
    result
}

/// A `commit` span, from the start of the batch's store write to now, in the
/// trace of each allocation the batch created.
fn trace_commits(core: &Core, pending: &[Pending], started: std::time::SystemTime) {
    use allot_telemetry::opentelemetry::trace::{Span, Tracer};
    let state = core.state();
    let tracer = allot_telemetry::opentelemetry::global::tracer("allot-broker");
    for done in pending {
        if let Pending::Allocation(_, id, _) = done
            && let Some(trace) = state.trace_of(*id)
        {
            let parent = allot_telemetry::context_from(Some(trace));
            let mut span = tracer.span_builder("commit").with_start_time(started).start_with_context(&tracer, &parent);
            span.set_attribute(allot_telemetry::opentelemetry::KeyValue::new("allocation", id.to_string()));
            span.end();
        }
    }
}

/// A placement refusal for the caller: the one-line reason first, then each node's verdict.
/// The writer task: batches commands, persists each batch, then answers.
async fn writer(core: Arc<Core>, store: Arc<dyn Store>, leadership: Leadership, mut receiver: mpsc::Receiver<Command>) {
    let mut queued: std::collections::VecDeque<Command> = std::collections::VecDeque::new();
    let mut received = Vec::with_capacity(MAX_BATCH);
    loop {
        // A round left for the next batch runs without waiting for a command.
        if queued.is_empty() && !core.state().round_wanted {
            if receiver.recv_many(&mut received, MAX_BATCH).await == 0 {
                return;
            }
            queued.extend(received.drain(..));
        }
        let batch_started = std::time::Instant::now();
        let (writes, pending) = take_batch(&mut core.state(), &mut queued, core.policy);
        if writes.is_empty() {
            finish(&core, pending);
            continue;
        }
        core.metrics.batch(pending.len(), writes.len());
        let applied = batch_started.elapsed();
        // The last write, to find out afterwards whether a failed-looking batch
        // was stored after all (a connection that broke after etcd committed).
        let probe = writes.iter().rev().find_map(|op| match op {
            Op::Put { key, value, .. } => Some((key.clone(), value.clone())),
            _ => None,
        });
        // The batch's audit block, its last write when it has one: its entries
        // record calls answered before this batch, and are appended again if
        // the batch is lost.
        let audit_block =
            probe.as_ref().map(|(key, _)| key).filter(|key| key.starts_with(layout::prefix_audit())).cloned();
        let commit_started = std::time::SystemTime::now();
        let result = persist(store.as_ref(), &leadership, writes).await;
        if result.is_ok() {
            trace_commits(&core, &pending, commit_started);
        }
        tracing::debug!(
            commands = pending.len(),
            apply_us = applied.as_micros() as u64,
            persist_us = (batch_started.elapsed() - applied).as_micros() as u64,
            "batch"
        );
        match result {
            Ok(()) => finish(&core, pending),
            Err(error) => {
                tracing::error!(%error, "could not persist a batch; reloading state from the store");
                let lost_leadership = matches!(error, BrokerError::NotLeader);
                if lost_leadership {
                    fail(pending, &error);
                    // Another broker leads now: stop taking commands (fail-stop).
                    tracing::error!("lost leadership: this broker stops writing");
                    receiver.close();
                    while let Some(command) = queued.pop_front() {
                        refuse(command, BrokerError::NotLeader);
                    }
                    core.fenced.notify_one();
                    return;
                }
                // Memory may hold changes the store refused: nothing else is applied
                // until the state is the store's again.
                let audited = audit_block.and_then(|key| core.state().audit.block(&key)).unwrap_or_default();
                let mut delay = Duration::from_millis(100);
                loop {
                    match load(store.as_ref()).await {
                        Ok(reloaded) => {
                            *core.state() = reloaded;
                            break;
                        }
                        Err(reload_error) => {
                            tracing::error!(%reload_error, retry_in_ms = delay.as_millis() as u64, "reload failed; retrying");
                            tokio::time::sleep(delay).await;
                            delay = (delay * 2).min(Duration::from_secs(5));
                        }
                    }
                }
                // The batch is one transaction: if its last write is in the store,
                // all of it is, and its callers get their answers after all.
                let stored = match &probe {
                    Some((key, value)) => store.get(key).await.ok().flatten().is_some_and(|kv| &kv.value == value),
                    None => false,
                };
                if stored {
                    tracing::warn!("the batch was stored after all; answering its callers");
                    finish(&core, pending);
                } else {
                    fail(pending, &error);
                    // First in the next batch, numbered anew.
                    for entry in audited.into_iter().rev() {
                        queued.push_front(Command::Audit(Box::new(entry)));
                    }
                }
            }
        }
    }
}

/// Applies the commands at the front of `queued` that fit one transaction (see
/// [`fits`]), then the scheduling round they asked for: the batch's writes, each
/// key once, and what to do once they are stored.
fn take_batch(
    state: &mut ClusterState,
    queued: &mut std::collections::VecDeque<Command>,
    policy: PolicySettings,
) -> (Vec<Op>, Vec<Pending>) {
    let mut writes = Vec::new();
    let mut pending = Vec::new();
    let next_id_before = state.next_id;
    // Take commands while the batch still fits one transaction, so that a
    // batch is stored all or nothing. (A single command that changes more,
    // like a node with hundreds of allocations going lost, is split; it has
    // no caller waiting, and a failure reloads the state.)
    let mut bytes = 0;
    while let Some(command) = queued.front() {
        if !fits(command, writes.len(), state.round_wanted) || bytes >= BYTES_PER_TXN / 2 {
            break;
        }
        let command = queued.pop_front().expect("a command was in front");
        let before = writes.len();
        if let Some(done) = apply(state, command, &mut writes, policy) {
            pending.push(done);
        }
        bytes += writes[before..].iter().map(op_bytes).sum::<usize>();
    }
    // The round writes after the commands, as much as it admits: it runs in a
    // batch whose commands left it the other half of the transaction, else it
    // opens the next batch (which takes commands only while under half full).
    if state.round_wanted && writes.len() <= OPS_PER_TXN / 2 {
        state.round_wanted = false;
        let changed = sharing::schedule(state, &mut writes, now_ms(), policy);
        if !changed.is_empty() {
            pending.push(Pending::Changed(changed));
        }
    }
    if state.next_id != next_id_before {
        writes.push(Op::put(layout::counter("allocation"), state.next_id.to_string().into_bytes()));
    }
    crate::rounds::audit::write_block(state, &mut writes);
    (last_write_per_key(writes), pending)
}

/// Writes a batch keeps free for what follows its commands: the allocation id
/// counter and the batch's audit block.
const BATCH_RESERVE: usize = 2;

/// Whether a batch that holds `writes` writes so far takes `command` too. A
/// command whose writes are few and known (a create, a release, a node's
/// report: one allocation each; an audit entry: none of its own, it joins the
/// batch's block) is taken while the transaction has room for it and for the
/// reserve. Any other command (a tick, a node, a team, a node going lost) may
/// write many, and is taken only while the batch is under half a transaction,
/// as is everything once a scheduling round is due, which writes after the
/// commands: the other half is theirs.
fn fits(command: &Command, writes: usize, round_wanted: bool) -> bool {
    let known = match command {
        Command::CreateAllocation { .. } | Command::Release { .. } | Command::Applied { .. } => Some(1),
        Command::Audit(_) | Command::Schedule => Some(0),
        Command::Team(_)
        | Command::Tick
        | Command::FlushUsage { .. }
        | Command::Prune { .. }
        | Command::RegisterNode { .. }
        | Command::NodeLost { .. }
        | Command::NodeReturned { .. } => None,
    };
    match known {
        Some(count) if !round_wanted => writes + count + BATCH_RESERVE <= OPS_PER_TXN,
        _ => writes < OPS_PER_TXN / 2,
    }
}

/// Keeps only the last write of each key (a batch may release an allocation
/// and mark it lost, say): a transaction may not name a key twice.
fn last_write_per_key(writes: Vec<Op>) -> Vec<Op> {
    let key = |op: &Op| match op {
        Op::Put { key, .. } | Op::Get { key } | Op::Delete { key } => key.clone(),
        Op::DeletePrefix { prefix } => prefix.clone(),
    };
    let mut last = std::collections::HashMap::new();
    for (position, op) in writes.iter().enumerate() {
        last.insert(key(op), position);
    }
    writes
        .into_iter()
        .enumerate()
        .filter(|(position, op)| last.get(&key(op)) == Some(position))
        .map(|(_, op)| op)
        .collect()
}

/// Answers a command that will not be applied.
fn refuse(command: Command, error: BrokerError) {
    match command {
        Command::CreateAllocation { reply, .. } => {
            let _ = reply.send(Err(error));
        }
        Command::Release { reply, .. } => {
            let _ = reply.send(Err(error));
        }
        Command::Prune { reply } | Command::FlushUsage { reply } => {
            let _ = reply.send(Err(error));
        }
        Command::RegisterNode { reply, .. } => {
            let _ = reply.send(Err(error));
        }
        Command::Team(command) => command.refuse(error),
        Command::NodeLost { .. }
        | Command::NodeReturned { .. }
        | Command::Applied { .. }
        | Command::Tick
        | Command::Audit(_)
        | Command::Schedule => {}
    }
}

/// Bytes of keys and values per transaction: the store refuses more than 1 MiB
/// (etcd's request limit is 1.5 MiB); a node registration alone is ~40 KiB.
const BYTES_PER_TXN: usize = 768 * 1024;

fn op_bytes(op: &Op) -> usize {
    match op {
        Op::Put { key, value, .. } => key.len() + value.len(),
        Op::Get { key } | Op::Delete { key } => key.len(),
        Op::DeletePrefix { prefix } => prefix.len(),
    }
}

/// Splits writes into transactions within both limits, keeping their order.
fn chunks(writes: Vec<Op>) -> Vec<Vec<Op>> {
    let mut chunks = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0;
    for op in writes {
        let size = op_bytes(&op);
        if !current.is_empty() && (current.len() == OPS_PER_TXN || bytes + size > BYTES_PER_TXN) {
            chunks.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += size;
        current.push(op);
    }
    if !current.is_empty() {
        chunks.push(current);
    }
    chunks
}

/// Writes the batch in transactions within the store's limits, each fenced by
/// leadership. Chunks commit in order; if one fails, the ones before it stand and
/// the caller reloads state from the store, so memory and store agree again.
async fn persist(store: &dyn Store, leadership: &Leadership, writes: Vec<Op>) -> Result<(), BrokerError> {
    for chunk in chunks(writes) {
        let txn =
            Txn::new().when([Compare::value_equals(leadership.key.clone(), leadership.value.clone())]).then(chunk);
        let started = std::time::Instant::now();
        let result = store.txn(txn).await.map_err(|error| BrokerError::StoreUnavailable(error.to_string()))?;
        crate::state::metrics::histograms().store_txn.record(started.elapsed().as_secs_f64(), &[]);
        if !result.succeeded {
            return Err(BrokerError::NotLeader);
        }
    }
    Ok(())
}

fn finish(core: &Core, pending: Vec<Pending>) {
    // Nodes hear of each changed allocation once, as it stands now.
    let mut notify: std::collections::BTreeSet<AllocationId> = std::collections::BTreeSet::new();
    let mut replies = Vec::new();
    {
        let mut state = core.state();
        for done in pending {
            match done {
                Pending::Allocation(reply, id, explanation) => {
                    state.unpersisted.remove(&id);
                    notify.insert(id);
                    let answer = match state.allocations.get(&id) {
                        Some(allocation) if allocation.state == AllocationState::Pending => {
                            (allocation.clone(), explanation)
                        }
                        Some(allocation) => (allocation.clone(), allocation.explanation.clone()),
                        None => continue,
                    };
                    replies.push(Box::new(move || {
                        let _ = reply.send(Ok(answer));
                    }) as Box<dyn FnOnce() + Send>);
                }
                Pending::Released(reply, allocation) => {
                    notify.insert(allocation.id);
                    replies.push(Box::new(move || {
                        let _ = reply.send(Ok(*allocation));
                    }));
                }
                Pending::Done(answer) => replies.push(Box::new(move || answer.deliver())),
                Pending::Registered(reply, epoch, changed) => {
                    notify.extend(changed.iter().map(|allocation| allocation.id));
                    replies.push(Box::new(move || {
                        let _ = reply.send(Ok(epoch));
                    }));
                }
                Pending::Changed(allocations) => notify.extend(allocations.iter().map(|allocation| allocation.id)),
            }
        }
        for id in notify {
            if let Some(allocation) = state.allocations.get(&id)
                && allocation.binding.is_some()
            {
                let _ = core.assignments.send(allocation.clone());
            }
        }
    }
    for reply in replies {
        reply();
    }
}

fn fail(pending: Vec<Pending>, error: &BrokerError) {
    let again = || match error {
        BrokerError::NotLeader => BrokerError::NotLeader,
        other => BrokerError::StoreUnavailable(other.to_string()),
    };
    for done in pending {
        match done {
            Pending::Allocation(reply, ..) => {
                let _ = reply.send(Err(again()));
            }
            Pending::Released(reply, _) => {
                let _ = reply.send(Err(again()));
            }
            Pending::Done(answer) => answer.fail(again()),
            Pending::Registered(reply, ..) => {
                let _ = reply.send(Err(again()));
            }
            Pending::Changed(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_writes_each_key_once_with_its_last_value() {
        let writes = vec![
            Op::put("a", b"1".to_vec()),
            Op::put("b", b"1".to_vec()),
            Op::put("a", b"2".to_vec()),
            Op::put("c", b"1".to_vec()),
        ];
        let kept: Vec<(String, Vec<u8>)> = last_write_per_key(writes)
            .into_iter()
            .map(|op| match op {
                Op::Put { key, value, .. } => (key, value),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(kept, [("b".into(), b"1".to_vec()), ("a".into(), b"2".to_vec()), ("c".into(), b"1".to_vec())]);
    }

    /// Registers a copy of a fixture machine under `name`, with its own UUIDs.
    fn register(state: &mut ClusterState, writes: &mut Vec<Op>, fixture: &str, name: &str) -> NodeInventory {
        let mut inventory = crate::state::testing::fixture(fixture);
        inventory.hostname = name.to_owned();
        for gpu in &mut inventory.gpus {
            gpu.uuid = Some(format!("GPU-{name}-{}", gpu.index));
        }
        let (reply, mut answer) = oneshot::channel();
        let command =
            Command::RegisterNode { name: name.parse().expect("name"), inventory: Box::new(inventory.clone()), reply };
        assert!(apply(state, command, writes, PolicySettings::default()).is_some(), "{name} registers");
        assert!(answer.try_recv().is_err(), "{name}: answered only once stored");
        inventory
    }

    /// Whether two inventories share their unchanging parts in memory.
    fn shared(a: &NodeInventory, b: &NodeInventory) -> bool {
        let profiles = |inventory: &NodeInventory| {
            inventory.gpus.iter().filter_map(|gpu| gpu.mig.as_ref().map(|mig| Arc::clone(&mig.profiles))).collect()
        };
        let (a_profiles, b_profiles): (Vec<_>, Vec<_>) = (profiles(a), profiles(b));
        Arc::ptr_eq(&a.cpu, &b.cpu)
            && Arc::ptr_eq(&a.pci, &b.pci)
            && a_profiles.len() == b_profiles.len()
            && a_profiles.iter().zip(&b_profiles).all(|(x, y)| Arc::ptr_eq(x, y))
    }

    #[tokio::test]
    async fn nodes_of_one_template_share_it_in_memory_when_registered_and_when_loaded() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = allot_store::EmbeddedStore::open(dir.path()).await.expect("store");
        let mut state = ClusterState::default();
        let mut writes = Vec::new();
        let mut registered = Vec::new();
        for (fixture, name) in [("dgx-h100", "h1"), ("dgx-h100", "h2"), ("dgx-a100-mig", "a1"), ("dgx-a100-mig", "a2")]
        {
            registered.push((name, register(&mut state, &mut writes, fixture, name)));
        }
        let inventory = |state: &ClusterState, name: &str| {
            state.nodes().get(&name.parse::<NodeName>().expect("name")).expect("node").record.inventory.clone()
        };
        for (name, expected) in &registered {
            assert_eq!(&inventory(&state, name), expected, "{name} keeps what it registered");
        }
        assert!(shared(&inventory(&state, "h1"), &inventory(&state, "h2")));
        assert!(shared(&inventory(&state, "a1"), &inventory(&state, "a2")));
        assert!(!shared(&inventory(&state, "h1"), &inventory(&state, "a1")));
        assert_eq!(state.templates.len(), 2);

        assert!(store.txn(Txn::new().then(writes)).await.expect("stored").succeeded);
        let loaded = load(&store).await.expect("loads");
        for (name, expected) in &registered {
            assert_eq!(&inventory(&loaded, name), expected, "{name} loads as registered");
        }
        assert!(shared(&inventory(&loaded, "h1"), &inventory(&loaded, "h2")));
        assert!(shared(&inventory(&loaded, "a1"), &inventory(&loaded, "a2")));
        assert!(!shared(&inventory(&loaded, "h2"), &inventory(&loaded, "a2")));
    }

    /// A state with a team and `nodes` DGX H100 nodes, registered as stored.
    fn cluster(nodes: usize) -> ClusterState {
        let mut state = ClusterState::default();
        let mut writes = Vec::new();
        for index in 0..nodes {
            register(&mut state, &mut writes, "dgx-h100", &format!("n{index}"));
        }
        let (reply, _answer) = oneshot::channel();
        let team =
            TeamCommand::Create { name: "t".parse().expect("team"), parent: None, quota: Default::default(), reply };
        assert!(apply(&mut state, Command::Team(team), &mut writes, PolicySettings::default()).is_some());
        state
    }

    /// A one-GPU create, refused rather than queued when it does not fit (nobody
    /// waits for its answer).
    fn create() -> Command {
        let request = ValidatedRequest::new(
            "t".parse().expect("team"),
            allot_api::allocation::GpuDemand::Whole { count: 1, models: vec![] },
            1,
            allot_api::units::MiB(0),
            allot_api::allocation::Interconnect::Any,
            false,
            None,
            None,
        )
        .expect("valid request");
        let (reply, _) = oneshot::channel();
        Command::CreateAllocation { request: Box::new(request), no_wait: true, trace: None, reply }
    }

    /// Creates fill a whole transaction (not half of one, as commands that may
    /// write much do), and every batch still fits one.
    #[test]
    fn creates_fill_a_transaction_and_commands_that_may_write_much_wait_for_the_next() {
        let mut state = cluster(50);
        let mut queued: std::collections::VecDeque<Command> = (0..300).map(|_| create()).collect();
        let mut sizes = Vec::new();
        while !queued.is_empty() {
            let (writes, pending) = take_batch(&mut state, &mut queued, PolicySettings::default());
            assert!(writes.len() <= OPS_PER_TXN, "{} writes: more than one transaction", writes.len());
            sizes.push(pending.len());
        }
        assert_eq!(
            sizes,
            [OPS_PER_TXN - BATCH_RESERVE, OPS_PER_TXN - BATCH_RESERVE, 300 - 2 * (OPS_PER_TXN - BATCH_RESERVE)]
        );
        assert_eq!(state.allocations.len(), 300, "every create was granted");

        // A tick (it may delete up to a prune's worth) waits once half the transaction is written.
        let mut queued: std::collections::VecDeque<Command> = (0..70).map(|_| create()).collect();
        queued.push_back(Command::Tick);
        queued.extend((0..5).map(|_| create()));
        let (_, pending) = take_batch(&mut state, &mut queued, PolicySettings::default());
        assert_eq!(pending.len(), 70);
        assert!(matches!(queued.front(), Some(Command::Tick)), "the tick opens the next batch");
        let (writes, _) = take_batch(&mut state, &mut queued, PolicySettings::default());
        assert!(queued.is_empty() && writes.len() >= 5, "the tick and the creates behind it: {} writes", writes.len());
    }

    /// A scheduling round due in a batch whose commands wrote more than half a
    /// transaction runs first thing in the next batch instead.
    #[test]
    fn a_round_due_after_half_a_transaction_opens_the_next_batch() {
        let mut state = cluster(1);
        let demand = |gpus: u32| {
            let gpus = match gpus {
                0 => allot_api::allocation::GpuDemand::None,
                count => allot_api::allocation::GpuDemand::Whole { count, models: vec![] },
            };
            ValidatedRequest::new(
                "t".parse().expect("team"),
                gpus,
                1,
                allot_api::units::MiB(0),
                allot_api::allocation::Interconnect::Any,
                false,
                None,
                None,
            )
            .expect("valid request")
        };
        let command = |gpus: u32, no_wait: bool| {
            let (reply, _) = oneshot::channel();
            Command::CreateAllocation { request: Box::new(demand(gpus)), no_wait, trace: None, reply }
        };
        // The node's 8 GPUs are taken; a ninth waits in the queue.
        let mut queued: std::collections::VecDeque<Command> = (0..8).map(|_| command(1, true)).collect();
        queued.push_back(command(1, false));
        take_batch(&mut state, &mut queued, PolicySettings::default());
        assert_eq!(state.queue.len(), 1);
        let waiting = *state.queue.iter().next().expect("queued");
        let holder = state.allocations.keys().copied().find(|id| *id != waiting).expect("a GPU holder");
        // 70 CPU-only grants, then a release that lets the waiting one in.
        let mut queued: std::collections::VecDeque<Command> = (0..70).map(|_| command(0, true)).collect();
        let (reply, _) = oneshot::channel();
        queued.push_back(Command::Release { id: holder, reply });
        let (writes, _) = take_batch(&mut state, &mut queued, PolicySettings::default());
        assert!(writes.len() <= OPS_PER_TXN);
        assert_eq!(state.allocations[&waiting].state, AllocationState::Pending, "no round in a batch past half");
        assert!(state.round_wanted, "the round is still due");
        // The next batch, with no command at all, runs it.
        take_batch(&mut state, &mut queued, PolicySettings::default());
        assert_eq!(state.allocations[&waiting].state, AllocationState::Bound);
        assert!(!state.round_wanted);
    }

    /// The embedded store, with a transaction that fails when told to.
    #[derive(Debug)]
    struct FailingOnce {
        inner: allot_store::EmbeddedStore,
        fail_next: std::sync::atomic::AtomicBool,
    }

    #[async_trait::async_trait]
    impl Store for FailingOnce {
        async fn get(&self, key: &str) -> Result<Option<allot_store::KeyValue>, allot_store::StoreError> {
            self.inner.get(key).await
        }
        async fn range(&self, prefix: &str) -> Result<allot_store::RangeResult, allot_store::StoreError> {
            self.inner.range(prefix).await
        }
        async fn txn(&self, txn: Txn) -> Result<allot_store::TxnResult, allot_store::StoreError> {
            if self.fail_next.swap(false, std::sync::atomic::Ordering::SeqCst) {
                return Err(allot_store::StoreError::Protocol {
                    operation: "txn",
                    endpoints: "the test".into(),
                    detail: "failed on purpose".into(),
                });
            }
            self.inner.txn(txn).await
        }
        async fn watch(
            &self,
            prefix: &str,
            from: allot_store::Revision,
        ) -> Result<allot_store::WatchStream, allot_store::StoreError> {
            self.inner.watch(prefix, from).await
        }
        async fn grant_lease(&self, ttl: Duration) -> Result<allot_store::Lease, allot_store::StoreError> {
            self.inner.grant_lease(ttl).await
        }
        async fn keep_alive(&self, lease: allot_store::LeaseId) -> Result<(), allot_store::StoreError> {
            self.inner.keep_alive(lease).await
        }
        async fn revoke_lease(&self, lease: allot_store::LeaseId) -> Result<(), allot_store::StoreError> {
            self.inner.revoke_lease(lease).await
        }
        async fn current_revision(&self) -> Result<allot_store::Revision, allot_store::StoreError> {
            self.inner.current_revision().await
        }
    }

    /// A batch that fails to store loses none of the audit entries it carried:
    /// they record calls answered before it, and go into the next batch.
    #[tokio::test]
    async fn audit_entries_of_a_lost_batch_are_stored_with_the_next() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(FailingOnce {
            inner: allot_store::EmbeddedStore::open(dir.path()).await.expect("store"),
            fail_next: false.into(),
        });
        let shared: Arc<dyn Store> = Arc::clone(&store) as Arc<dyn Store>;
        let leadership = leader::acquire(Arc::clone(&shared), "test".into(), || {}).await.expect("leads");
        let core = Core::start(
            Arc::clone(&shared),
            leadership,
            Duration::from_secs(60),
            Duration::from_secs(10),
            PolicySettings::default(),
        )
        .await
        .expect("core");
        let entry = |target: &str| crate::state::audit::AuditEntry {
            at_ms: now_ms(),
            seq: 0,
            subject: "admin".into(),
            from: "127.0.0.1:1".into(),
            call: "AdminService/CreateTeam".into(),
            target: target.into(),
            team: None,
            outcome: "ok".into(),
        };
        let stored_targets = || async {
            let mut targets = Vec::new();
            for kv in shared.range(layout::prefix_audit()).await.expect("range").kvs {
                let block: crate::state::audit::StoredAudit = decode(&kv.key, &kv.value).expect("block");
                targets.extend(block.into_entries().into_iter().map(|entry| entry.target));
            }
            targets
        };
        core.tell(Command::Audit(Box::new(entry("before")))).await;
        core.ask(|reply| Command::FlushUsage { reply }).await.expect("stored");
        assert_eq!(stored_targets().await, ["before"]);

        // The next batch, carrying one entry, fails; the flush in it is refused.
        store.fail_next.store(true, std::sync::atomic::Ordering::SeqCst);
        core.tell(Command::Audit(Box::new(entry("lost batch")))).await;
        let refused = core.ask(|reply| Command::FlushUsage { reply }).await;
        core.ask(|reply| Command::FlushUsage { reply }).await.expect("stored");
        assert_eq!(stored_targets().await, ["before", "lost batch"], "the flush was {refused:?}");
        let seqs: Vec<u64> = core.state().audit.entries.iter().map(|entry| entry.seq).collect();
        assert_eq!(seqs.len(), 2, "in memory too, once: {seqs:?}");
        assert!(seqs[0] < seqs[1]);
    }

    #[test]
    fn batches_split_by_operation_count_and_by_size() {
        let small: Vec<Op> = (0..250).map(|i| Op::put(format!("k{i}"), vec![0; 10])).collect();
        let sizes: Vec<usize> = chunks(small).iter().map(Vec::len).collect();
        assert_eq!(sizes, [120, 120, 10]);
        let big: Vec<Op> = (0..5).map(|i| Op::put(format!("k{i}"), vec![0; 300 * 1024])).collect();
        let sizes: Vec<usize> = chunks(big).iter().map(Vec::len).collect();
        assert_eq!(sizes, [2, 2, 1]);
    }
}
