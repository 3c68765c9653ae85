//! `allot-node run`: registers this node with the broker, heartbeats with
//! telemetry and health, re-registers after a broker restart, and enforces its
//! assignments (cgroups, MIG instances), reconciling at every (re)connection and
//! periodically.
//!
//! The node holds no authority of its own: it reports what it sees and acts only
//! on allocations the broker has persisted. GPU events (Xid, ECC) are followed on
//! a blocking thread; a health change sends a heartbeat at once.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use allot_api::allocation::{Allocation, AllocationId, AllocationState};
use allot_api::bearer::Bearer;
use allot_api::proto;
use allot_api::proto::node_service_client::NodeServiceClient;
use allot_api::topology::{GpuHealth, NodeInventory, NvmlStatus};
use tokio_stream::StreamExt;
use tonic::transport::{Channel, Endpoint};

use crate::cli::DiscoveryPlan;
use crate::discovery::nvml::control::{GpuEvent, NvmlControl, watch_events};
use crate::enforce::cgroup::{self, DriverChoice};
use crate::enforce::health::HealthTracker;
use crate::enforce::mig::MigDriver;
use crate::enforce::{Enforcer, Report};
use crate::publish::Publisher;

/// How the agent behaves; the defaults suit production, tests shorten them.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub broker: String,
    /// Used until the broker says otherwise.
    pub heartbeat_interval: Duration,
    /// The longest wait between reconnection attempts.
    pub max_backoff: Duration,
    /// `None`: acknowledge assignments without enforcing them.
    pub enforce: Option<EnforceConfig>,
    /// A GPU is healthy again this long after its last critical event.
    pub xid_quiet_period: Duration,
    /// The node's credentials, sent with every call to the broker.
    pub bearer: Bearer,
    /// The broker's CA and this node's certificate.
    pub tls: allot_api::tls::ClientTls,
    /// Where to serve per-GPU telemetry on `/metrics` (port 0 picks one).
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Where to send traces of enforcement (OTLP/gRPC).
    pub otlp_endpoint: Option<String>,
    /// Where the node's state is published for the kubelet's device plugin.
    pub publish: Option<Publisher>,
}

/// Where and how allocations are enforced.
#[derive(Debug, Clone)]
pub struct EnforceConfig {
    pub state_dir: PathBuf,
    pub cgroup_root: Option<PathBuf>,
    pub cgroup_driver: DriverChoice,
    pub cgroup_parent: String,
    pub pids_max: u64,
    pub reconcile_interval: Duration,
}

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot reach the broker at {address:?}: {problem}")]
    BadAddress { address: String, problem: String },
    #[error("cannot map this node: {0}")]
    Discovery(#[from] crate::discovery::DiscoveryError),
    #[error("the broker refused this node: {0}")]
    Refused(String),
    #[error("cannot enforce on this node: {0}; fix it, or run with --no-enforce")]
    Enforce(String),
    #[error("{0}")]
    Telemetry(String),
}

fn endpoint(address: &str, tls: &allot_api::tls::ClientTls) -> Result<Endpoint, AgentError> {
    allot_api::tls::endpoint(address, tls, Duration::from_secs(3), Duration::from_secs(10))
        .map_err(|problem| AgentError::BadAddress { address: address.to_owned(), problem })
}

/// GPU health from events, shared by the event thread and the heartbeat.
#[derive(Debug)]
struct Health {
    tracker: Mutex<HealthTracker>,
    /// What `/metrics` shows.
    metrics: Arc<crate::metrics::NodeMetrics>,
    /// Wakes the heartbeat early when a GPU's health changed.
    changed: tokio::sync::Notify,
    started: Instant,
}

impl Health {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis().min(u128::from(u64::MAX)) as u64
    }

    /// Overlays event-based health on freshly discovered GPUs; the uncorrectable
    /// ECC count is an event source too (growth marks the GPU), and so is a GPU NVML
    /// cannot reach (lost): discovery lists it without telemetry, unhealthy.
    fn overlay(&self, inventory: &mut NodeInventory) {
        let now = self.now_ms();
        let nvml_present = matches!(inventory.nvml, NvmlStatus::Present { .. });
        let Ok(mut tracker) = self.tracker.lock() else { return };
        let mut changed = false;
        for gpu in &mut inventory.gpus {
            if let Some(count) = gpu.telemetry.as_ref().and_then(|telemetry| telemetry.ecc_uncorrected_volatile) {
                tracker.ecc_count(gpu.index, count, now);
            }
            if nvml_present
                && gpu.telemetry.is_none()
                && let GpuHealth::Unhealthy { reasons } = &gpu.health
            {
                let reason = reasons.first().map(String::as_str).unwrap_or("NVML cannot reach the GPU");
                if tracker.unreachable(gpu.index, reason, now) {
                    tracing::warn!(gpu = gpu.index, reason, "GPU unreachable through NVML");
                    changed = true;
                }
            }
            gpu.health = tracker.health(gpu.index, now);
        }
        drop(tracker);
        if changed {
            self.changed.notify_one();
        }
    }

    fn event(&self, event: &GpuEvent) {
        let now = self.now_ms();
        let changed = match self.tracker.lock() {
            Ok(mut tracker) => match event {
                GpuEvent::Xid { gpu, xid } => {
                    tracing::warn!(gpu, xid, "GPU Xid event");
                    self.metrics.xid(*gpu, *xid);
                    tracker.xid(*gpu, *xid, now)
                }
                GpuEvent::EccDoubleBit { gpu } => {
                    tracing::warn!(gpu, "uncorrectable ECC error");
                    tracker.ecc_uncorrectable(*gpu, now)
                }
                GpuEvent::EccSingleBit { gpu } => {
                    tracing::info!(gpu, "corrected ECC error");
                    false
                }
            },
            Err(_) => false,
        };
        if changed {
            self.changed.notify_one();
        }
    }
}

type SharedEnforcer = Arc<Mutex<Enforcer>>;

/// An `apply` span in the trace an assignment carries (none without one).
fn applying_span(
    trace_parent: &str,
    node: &str,
    id: &str,
) -> Option<allot_telemetry::opentelemetry::global::BoxedSpan> {
    use allot_telemetry::opentelemetry::KeyValue;
    use allot_telemetry::opentelemetry::trace::Tracer;
    if trace_parent.is_empty() {
        return None;
    }
    let parent = allot_telemetry::context_from(Some(trace_parent));
    let tracer = allot_telemetry::opentelemetry::global::tracer("allot-node");
    Some(
        tracer
            .span_builder("apply")
            .with_attributes([KeyValue::new("node", node.to_owned()), KeyValue::new("allocation", id.to_owned())])
            .start_with_context(&tracer, &parent),
    )
}

fn build_enforcer(plan: &DiscoveryPlan, config: &EnforceConfig) -> Result<Enforcer, AgentError> {
    let cgroups = cgroup::driver(config.cgroup_driver, config.cgroup_root.as_deref(), &config.cgroup_parent)
        .map_err(|error| AgentError::Enforce(error.to_string()))?;
    let mig = NvmlControl::open(&plan.gpus)
        .map_err(AgentError::Enforce)?
        .map(|control| Box::new(control) as Box<dyn MigDriver>);
    Enforcer::new(&plan.hostname, cgroups, mig, &config.state_dir, config.pids_max)
        .map_err(|error| AgentError::Enforce(error.to_string()))
}

/// Runs until the process is stopped. Connection problems are retried with
/// backoff; a refusal that retrying cannot fix (a bad name) ends it.
pub async fn run(plan: DiscoveryPlan, config: AgentConfig) -> Result<(), AgentError> {
    let endpoint = endpoint(&config.broker, &config.tls)?;
    // Discovery before anything else: a node that cannot map itself should say so
    // at once rather than retry forever.
    let inventory = discover(&plan).await?;
    tracing::info!(node = %plan.hostname, gpus = inventory.gpus.len(), "mapped this node");
    let enforcer = match &config.enforce {
        Some(enforce) => {
            let enforcer = build_enforcer(&plan, enforce)?;
            tracing::info!(
                node = %plan.hostname,
                cgroup = %enforcer.cgroup_driver().version(),
                state_dir = %enforce.state_dir.display(),
                "enforcing allocations"
            );
            Some(Arc::new(Mutex::new(enforcer)))
        }
        None => None,
    };
    let telemetry =
        Arc::new(allot_telemetry::init("allot-node", config.otlp_endpoint.as_deref()).map_err(AgentError::Telemetry)?);
    let metrics = crate::metrics::NodeMetrics::new(&plan.hostname);
    metrics.register();
    if let Some(listen) = config.metrics_listen {
        let address = crate::metrics::serve(listen, Arc::clone(&telemetry))
            .await
            .map_err(|error| AgentError::Telemetry(format!("cannot serve metrics on {listen}: {error}")))?;
        tracing::info!(%address, "metrics on http://{address}/metrics");
    }
    let health = Arc::new(Health {
        metrics,
        tracker: Mutex::new(HealthTracker::new(config.xid_quiet_period)),
        changed: tokio::sync::Notify::new(),
        started: Instant::now(),
    });
    {
        let mut seen = inventory.clone();
        health.overlay(&mut seen);
        health.metrics.inventory(&seen);
        if let Some(publisher) = &config.publish {
            publisher.inventory(&seen);
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    {
        let health = Arc::clone(&health);
        let source = plan.gpus.clone();
        let stop = Arc::clone(&stop);
        std::thread::Builder::new()
            .name("gpu-events".into())
            .spawn(move || {
                if let Err(reason) = watch_events(&source, stop, |event| health.event(&event)) {
                    tracing::warn!(%reason, "GPU events are not watched");
                }
            })
            .map_err(|error| AgentError::Enforce(format!("cannot start the GPU event thread: {error}")))?;
    }
    let mut backoff = Duration::from_millis(200);
    let result = loop {
        match session(&plan, &config, &endpoint, inventory.clone(), &health, enforcer.as_ref()).await {
            Ok(()) => backoff = Duration::from_millis(200),
            Err(SessionEnd::Fatal(error)) => break Err(error),
            Err(SessionEnd::Retry(reason)) => {
                tracing::warn!(node = %plan.hostname, %reason, retry_in_ms = backoff.as_millis() as u64, "broker unreachable");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(config.max_backoff);
            }
        }
    };
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    telemetry.shutdown();
    result
}

async fn discover(plan: &DiscoveryPlan) -> Result<NodeInventory, crate::discovery::DiscoveryError> {
    let plan = plan.clone();
    match tokio::task::spawn_blocking(move || plan.discover()).await {
        Ok(result) => result,
        Err(join_error) => Err(crate::discovery::DiscoveryError::Hwloc(format!("discovery task failed: {join_error}"))),
    }
}

/// The broker's node service, every call carrying the node's token.
type NodeClient = NodeServiceClient<tonic::service::interceptor::InterceptedService<Channel, Bearer>>;

enum SessionEnd {
    Retry(String),
    Fatal(AgentError),
}

/// One connection's life: register, follow assignments, heartbeat until the broker
/// asks for a new registration (`Ok`) or the connection breaks (`Retry`).
async fn session(
    plan: &DiscoveryPlan,
    config: &AgentConfig,
    endpoint: &Endpoint,
    mut inventory: NodeInventory,
    health: &Arc<Health>,
    enforcer: Option<&SharedEnforcer>,
) -> Result<(), SessionEnd> {
    let channel = endpoint.connect().await.map_err(|error| SessionEnd::Retry(error.to_string()))?;
    let mut client = NodeServiceClient::with_interceptor(channel.clone(), config.bearer.clone());
    health.overlay(&mut inventory);
    let registration = client
        .register(proto::RegisterNodeRequest {
            node_name: plan.hostname.clone(),
            daemon_version: env!("CARGO_PKG_VERSION").to_owned(),
            inventory: Some((&inventory).into()),
        })
        .await
        .map_err(|status| match status.code() {
            tonic::Code::InvalidArgument | tonic::Code::PermissionDenied => {
                SessionEnd::Fatal(AgentError::Refused(status.message().to_owned()))
            }
            _ => SessionEnd::Retry(status.to_string()),
        })?
        .into_inner();
    let epoch = registration.registration_epoch;
    let mut interval = match registration.heartbeat_interval_ms {
        0 => config.heartbeat_interval,
        ms => Duration::from_millis(u64::from(ms)),
    };
    tracing::info!(node = %plan.hostname, epoch, interval_ms = interval.as_millis() as u64, "registered");

    let reconcile_interval = config.enforce.as_ref().map_or(Duration::from_secs(30), |e| e.reconcile_interval);
    let mut watcher = tokio::spawn(follow_assignments(
        channel,
        config.bearer.clone(),
        plan.hostname.clone(),
        enforcer.cloned(),
        reconcile_interval,
        config.publish.clone(),
    ));
    // If the assignment stream ends (the broker restarted, or this node fell behind),
    // start over: register again and follow from a fresh snapshot.
    let result = tokio::select! {
        result = heartbeat_loop(plan, &mut client, epoch, &mut interval, health, config.publish.as_ref()) => result,
        _ = &mut watcher => Err(SessionEnd::Retry("the assignment stream ended".to_owned())),
    };
    watcher.abort();
    result
}

async fn heartbeat_loop(
    plan: &DiscoveryPlan,
    client: &mut NodeClient,
    epoch: u64,
    interval: &mut Duration,
    health: &Arc<Health>,
    publish: Option<&Publisher>,
) -> Result<(), SessionEnd> {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(*interval) => {}
            // A GPU's health changed: tell the broker now, not at the next beat.
            _ = health.changed.notified() => tracing::info!(node = %plan.hostname, "GPU health changed; heartbeat now"),
        }
        let gpus = match discover(plan).await {
            Ok(mut inventory) => {
                health.overlay(&mut inventory);
                health.metrics.inventory(&inventory);
                if let Some(publisher) = publish {
                    publisher.inventory(&inventory);
                }
                inventory
                    .gpus
                    .iter()
                    .map(|gpu| {
                        let wire: proto::Gpu = gpu.into();
                        proto::GpuStatus {
                            pci_bus_id: wire.pci_bus_id,
                            telemetry: wire.telemetry,
                            health: wire.health,
                            mig: wire.mig,
                        }
                    })
                    .collect()
            }
            Err(error) => {
                // Still alive, just blind for a moment: heartbeat without telemetry.
                tracing::warn!(%error, "telemetry unavailable for this heartbeat");
                Vec::new()
            }
        };
        let reply = client
            .heartbeat(proto::HeartbeatRequest { node_name: plan.hostname.clone(), registration_epoch: epoch, gpus })
            .await
            .map_err(|status| SessionEnd::Retry(status.to_string()))?
            .into_inner();
        if reply.heartbeat_interval_ms > 0 {
            *interval = Duration::from_millis(u64::from(reply.heartbeat_interval_ms));
        }
        if reply.register_again {
            tracing::info!(node = %plan.hostname, "broker asked for a new registration");
            return Ok(());
        }
    }
}

async fn report(client: &mut NodeClient, node: &str, report: Report) {
    if report.applied {
        tracing::info!(allocation = %report.allocation, message = %report.message, "applied");
    } else {
        tracing::warn!(allocation = %report.allocation, message = %report.message, "not applied");
    }
    let request = proto::ReportAppliedRequest {
        node_name: node.to_owned(),
        allocation_id: report.allocation.to_string(),
        generation: report.generation,
        applied: report.applied,
        message: report.message,
    };
    if let Err(status) = client.report_applied(request).await {
        tracing::warn!(%status, allocation = %report.allocation, "cannot report");
    }
}

/// Runs enforcement work off the async threads (cgroup and NVML calls block).
async fn blocking<T: Send + 'static>(
    enforcer: &SharedEnforcer,
    work: impl FnOnce(&mut Enforcer) -> T + Send + 'static,
) -> Option<T> {
    let enforcer = Arc::clone(enforcer);
    let outcome = tokio::task::spawn_blocking(move || {
        let mut guard = enforcer.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        work(&mut guard)
    })
    .await;
    match outcome {
        Ok(value) => Some(value),
        Err(error) => {
            tracing::error!(%error, "enforcement task failed");
            None
        }
    }
}

/// Follows this node's assignments and enforces them: the first snapshot is
/// reconciled as a whole, each change applied or released, and every
/// `reconcile_interval` the whole desired set is reconciled again.
async fn follow_assignments(
    channel: Channel,
    bearer: Bearer,
    node: String,
    enforcer: Option<SharedEnforcer>,
    reconcile_interval: Duration,
    publish: Option<Publisher>,
) {
    // Publishes the live allocations and what enforcement made of them.
    let published = |desired: &BTreeMap<AllocationId, Allocation>| {
        if let Some(publisher) = &publish {
            match &enforcer {
                Some(enforcer) => {
                    let guard = enforcer.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    publisher.allocations(desired, Some(&guard));
                }
                None => publisher.allocations(desired, None),
            }
        }
    };
    let mut client = NodeServiceClient::with_interceptor(channel, bearer);
    let stream = client.watch_assignments(proto::WatchAssignmentsRequest { node_name: node.clone() }).await;
    let mut stream = match stream {
        Ok(response) => response.into_inner(),
        Err(status) => {
            tracing::warn!(%status, "cannot follow assignments");
            return;
        }
    };
    let mut snapshot: BTreeMap<AllocationId, Allocation> = BTreeMap::new();
    let mut desired: BTreeMap<AllocationId, Allocation> = BTreeMap::new();
    let mut synced = false;
    let mut ticker = tokio::time::interval(reconcile_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        let event = tokio::select! {
            event = stream.next() => event,
            _ = ticker.tick(), if synced && enforcer.is_some() => {
                if let Some(enforcer) = &enforcer {
                    let wanted = desired.clone();
                    let reports = blocking(enforcer, move |enforcer| enforcer.reconcile(&wanted, false)).await;
                    for item in reports.unwrap_or_default() {
                        report(&mut client, &node, item).await;
                    }
                }
                continue;
            }
        };
        let event = match event {
            Some(Ok(event)) => event,
            Some(Err(status)) => {
                tracing::warn!(%status, "assignment stream ended");
                return;
            }
            None => return,
        };
        if event.kind == proto::assignment_event::Kind::Synced as i32 {
            tracing::info!(node = %node, allocations = snapshot.len(), "assignments in sync");
            desired = std::mem::take(&mut snapshot);
            synced = true;
            if let Some(enforcer) = &enforcer {
                let wanted = desired.clone();
                let reports = blocking(enforcer, move |enforcer| enforcer.reconcile(&wanted, true)).await;
                for item in reports.unwrap_or_default() {
                    report(&mut client, &node, item).await;
                }
            }
            published(&desired);
            continue;
        }
        let Some(wire) = event.allocation else { continue };
        let id = wire.id.clone();
        // The broker's trace of the create this came from: applying it is a span
        // there (ended when this iteration ends, whichever way it ends).
        let _span = applying_span(&event.trace_parent, &node, &id);
        let allocation = match Allocation::try_from(wire) {
            Ok(allocation) => allocation,
            Err(error) => {
                tracing::warn!(allocation = %id, %error, "unusable assignment");
                continue;
            }
        };
        tracing::info!(node = %node, allocation = %allocation.id, state = allocation.state.as_str(), generation = allocation.generation, "assignment");
        if !synced {
            if allocation.state.holds_capacity() {
                snapshot.insert(allocation.id, allocation);
            }
            continue;
        }
        let Some(enforcer) = &enforcer else {
            if allocation.state.holds_capacity() {
                desired.insert(allocation.id, allocation.clone());
            } else {
                desired.remove(&allocation.id);
            }
            published(&desired);
            let message = "received; enforcement is off on this node (--no-enforce)".to_owned();
            let item = Report { allocation: allocation.id, generation: allocation.generation, applied: false, message };
            report(&mut client, &node, item).await;
            continue;
        };
        if allocation.state.holds_capacity() {
            desired.insert(allocation.id, allocation.clone());
            let bound = allocation.state == AllocationState::Bound;
            let outcome = blocking(enforcer, move |enforcer| {
                if enforcer.is_enforced(&allocation) && !bound {
                    // Nothing new (the broker recorded our report): stay quiet.
                    return None;
                }
                let generation = allocation.generation;
                Some(match enforcer.apply(&allocation) {
                    Ok(message) => Report { allocation: allocation.id, generation, applied: true, message },
                    Err(error) => {
                        Report { allocation: allocation.id, generation, applied: false, message: error.to_string() }
                    }
                })
            })
            .await;
            published(&desired);
            if let Some(Some(item)) = outcome {
                report(&mut client, &node, item).await;
            }
        } else {
            desired.remove(&allocation.id);
            let id = allocation.id;
            let outcome = blocking(enforcer, move |enforcer| enforcer.release(id)).await;
            match outcome {
                Some(Ok(message)) => tracing::info!(allocation = %id, %message, "released"),
                Some(Err(error)) => {
                    tracing::warn!(allocation = %id, %error, "release incomplete; reconcile will retry")
                }
                None => {}
            }
            published(&desired);
        }
    }
}
