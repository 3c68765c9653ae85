//! `allot-node run`: registers this node with the broker, heartbeats with
//! telemetry, re-registers after a broker restart, and follows its assignments.
//!
//! The node holds no authority of its own: it reports what it sees and acts only
//! on allocations the broker has persisted. Enforcement (cgroups, MIG instances,
//! shares) arrives later; until then the node acknowledges each assignment and
//! says that it did not enforce it.

use std::time::Duration;

use allot_api::proto;
use allot_api::proto::node_service_client::NodeServiceClient;
use allot_api::topology::NodeInventory;
use tokio_stream::StreamExt;
use tonic::transport::{Channel, Endpoint};

use crate::cli::DiscoveryPlan;

/// How the agent behaves; the defaults suit production, tests shorten them.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub broker: String,
    /// Used until the broker says otherwise.
    pub heartbeat_interval: Duration,
    /// The longest wait between reconnection attempts.
    pub max_backoff: Duration,
}

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("invalid broker address {address:?}: {problem}; use host:port or http://host:port")]
    BadAddress { address: String, problem: String },
    #[error("cannot map this node: {0}")]
    Discovery(#[from] crate::discovery::DiscoveryError),
    #[error("the broker refused this node: {0}")]
    Refused(String),
}

fn endpoint(address: &str) -> Result<Endpoint, AgentError> {
    let uri = if address.contains("://") { address.to_owned() } else { format!("http://{address}") };
    Endpoint::from_shared(uri)
        .map(|endpoint| endpoint.connect_timeout(Duration::from_secs(3)).timeout(Duration::from_secs(10)))
        .map_err(|error| AgentError::BadAddress { address: address.to_owned(), problem: error.to_string() })
}

/// Runs until the process is stopped. Connection problems are retried with
/// backoff; a refusal that retrying cannot fix (a bad name) ends it.
pub async fn run(plan: DiscoveryPlan, config: AgentConfig) -> Result<(), AgentError> {
    let endpoint = endpoint(&config.broker)?;
    // Discovery before anything else: a node that cannot map itself should say so
    // at once rather than retry forever.
    let inventory = discover(&plan).await?;
    tracing::info!(node = %plan.hostname, gpus = inventory.gpus.len(), "mapped this node");
    let mut backoff = Duration::from_millis(200);
    loop {
        match session(&plan, &config, &endpoint, inventory.clone()).await {
            Ok(()) => backoff = Duration::from_millis(200),
            Err(SessionEnd::Fatal(error)) => return Err(error),
            Err(SessionEnd::Retry(reason)) => {
                tracing::warn!(node = %plan.hostname, %reason, retry_in_ms = backoff.as_millis() as u64, "broker unreachable");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(config.max_backoff);
            }
        }
    }
}

async fn discover(plan: &DiscoveryPlan) -> Result<NodeInventory, crate::discovery::DiscoveryError> {
    let plan = plan.clone();
    match tokio::task::spawn_blocking(move || plan.discover()).await {
        Ok(result) => result,
        Err(join_error) => Err(crate::discovery::DiscoveryError::Hwloc(format!("discovery task failed: {join_error}"))),
    }
}

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
    inventory: NodeInventory,
) -> Result<(), SessionEnd> {
    let channel = endpoint.connect().await.map_err(|error| SessionEnd::Retry(error.to_string()))?;
    let mut client = NodeServiceClient::new(channel.clone());
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

    let mut watcher = tokio::spawn(follow_assignments(channel, plan.hostname.clone()));
    // If the assignment stream ends (the broker restarted, or this node fell behind),
    // start over: register again and follow from a fresh snapshot.
    let result = tokio::select! {
        result = heartbeat_loop(plan, &mut client, epoch, &mut interval) => result,
        _ = &mut watcher => Err(SessionEnd::Retry("the assignment stream ended".to_owned())),
    };
    watcher.abort();
    result
}

async fn heartbeat_loop(
    plan: &DiscoveryPlan,
    client: &mut NodeServiceClient<Channel>,
    epoch: u64,
    interval: &mut Duration,
) -> Result<(), SessionEnd> {
    loop {
        tokio::time::sleep(*interval).await;
        let gpus = match discover(plan).await {
            Ok(inventory) => inventory
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
                .collect(),
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

/// Follows this node's assignments and acknowledges each generation.
async fn follow_assignments(channel: Channel, node: String) {
    let mut client = NodeServiceClient::new(channel);
    let stream = client.watch_assignments(proto::WatchAssignmentsRequest { node_name: node.clone() }).await;
    let mut stream = match stream {
        Ok(response) => response.into_inner(),
        Err(status) => {
            tracing::warn!(%status, "cannot follow assignments");
            return;
        }
    };
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(event) => event,
            Err(status) => {
                tracing::warn!(%status, "assignment stream ended");
                return;
            }
        };
        if event.kind == proto::assignment_event::Kind::Synced as i32 {
            tracing::info!(node = %node, "assignments in sync");
            continue;
        }
        let Some(allocation) = event.allocation else { continue };
        tracing::info!(node = %node, allocation = %allocation.id, state = allocation.state, generation = allocation.generation, "assignment");
        let report = proto::ReportAppliedRequest {
            node_name: node.clone(),
            allocation_id: allocation.id.clone(),
            generation: allocation.generation,
            applied: false,
            message: "received; this allot-node does not enforce allocations yet".to_owned(),
        };
        if let Err(status) = client.report_applied(report).await {
            tracing::warn!(%status, allocation = %allocation.id, "cannot report");
        }
    }
}
