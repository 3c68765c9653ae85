//! The gRPC services: thin translations between the wire and the core.

use std::pin::Pin;
use std::sync::Arc;

use allot_api::allocation::{AllocationId, AllocationState, NodeName, TeamName, ValidatedRequest};
use allot_api::proto;
use allot_api::topology::{MigInfo, NodeInventory};
use allot_placement::NodeStatus;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::error::BrokerError;
use crate::rounds::placing::decide_over;
use crate::service::auth::{Auth, Caller};
use crate::writer::{Command, Core, now_ms};

#[derive(Debug, Clone)]
pub struct Services {
    pub core: Arc<Core>,
    pub auth: Arc<Auth>,
}

impl Services {
    /// Who calls, checked against the permission `call` needs for `team`.
    pub fn authorize<T>(&self, request: &Request<T>, call: &str, team: Option<&TeamName>) -> Result<Caller, Status> {
        let caller = self.caller(request)?;
        self.auth.check(&caller, call, team)?;
        Ok(caller)
    }

    /// The team an allocation belongs to (the state lock is released on return).
    fn team_of(&self, id: AllocationId) -> Result<TeamName, Status> {
        let state = self.core.state();
        match state.allocations.get(&id).filter(|_| !state.unpersisted.contains(&id)) {
            Some(allocation) => Ok(allocation.request.team.clone()),
            None => Err(BrokerError::NotFound { what: format!("allocation {id}") }.into()),
        }
    }

    /// Who calls (anonymous without a token; an unknown token is refused).
    pub fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        let header = request.metadata().get("authorization").and_then(|value| value.to_str().ok());
        let certificates = request.peer_certs();
        let certificate = certificates.as_ref().and_then(|certificates| certificates.first());
        Ok(self.auth.identify(header, certificate)?)
    }
}

/// Who asked for a change, from where and when, taken before the call runs;
/// [`Services::audit`] adds what came of it.
#[derive(Debug)]
pub struct Asked {
    at_ms: u64,
    subject: String,
    from: String,
    call: &'static str,
    target: String,
    team: Option<String>,
}

impl Services {
    pub fn asked<T>(&self, request: &Request<T>, call: &'static str, target: String, team: Option<String>) -> Asked {
        let subject = match self.caller(request) {
            Ok(caller) => caller.name().to_owned(),
            Err(_) => "unauthenticated".to_owned(),
        };
        let from = request.remote_addr().map_or_else(|| "unknown".to_owned(), |address| address.to_string());
        Asked { at_ms: now_ms(), subject, from, call, target, team: team.filter(|team| !team.is_empty()) }
    }

    /// Runs a changing call and appends it, with its outcome, to the audit log.
    pub async fn audited<R>(
        &self,
        asked: Asked,
        call: impl std::future::Future<Output = Result<R, Status>>,
    ) -> Result<R, Status> {
        let result = call.await;
        self.audit(asked, &result).await;
        result
    }

    /// Appends the call and its outcome to the audit log (through the writer).
    pub async fn audit<R>(&self, asked: Asked, result: &Result<R, Status>) {
        let outcome = match result {
            Ok(_) => "ok".to_owned(),
            Err(status) if matches!(status.code(), tonic::Code::PermissionDenied | tonic::Code::Unauthenticated) => {
                format!("denied: {}", first_line(status.message()))
            }
            Err(status) => format!("failed: {}", first_line(status.message())),
        };
        let entry = crate::state::audit::AuditEntry {
            at_ms: asked.at_ms,
            seq: 0,
            subject: asked.subject,
            from: asked.from,
            call: asked.call.to_owned(),
            target: asked.target,
            team: asked.team,
            outcome,
        };
        self.core.tell(Command::Audit(Box::new(entry))).await;
    }

    /// The team of an allocation named on the wire, if it is known.
    fn team_of_ref(&self, id: &str) -> Option<String> {
        let id = id.parse::<AllocationId>().ok()?;
        self.core.state().allocations.get(&id).map(|allocation| allocation.request.team.to_string())
    }
}

/// A server span for `name`, child of the request's `traceparent` metadata (a
/// new trace without one), when traces are exported.
fn trace_span<T>(request: &Request<T>, name: &'static str) -> Option<allot_telemetry::opentelemetry::Context> {
    use allot_telemetry::opentelemetry::trace::{Span, SpanKind, TraceContextExt, Tracer, TracerProvider};
    let provider = allot_telemetry::opentelemetry::global::tracer_provider();
    let tracer = provider.tracer("allot-broker");
    let parent =
        allot_telemetry::context_from(request.metadata().get("traceparent").and_then(|value| value.to_str().ok()));
    let span = tracer.span_builder(name).with_kind(SpanKind::Server).start_with_context(&tracer, &parent);
    if !span.span_context().is_sampled() {
        return None;
    }
    Some(parent.with_span(span))
}

/// An error's first line, at most 300 characters (explanations run long).
fn first_line(message: &str) -> String {
    message.lines().next().unwrap_or_default().chars().take(300).collect()
}

/// What an allocation create asks, in words.
fn create_target(request: &proto::CreateAllocationRequest) -> String {
    let Some(spec) = &request.spec else { return "allocation (no spec)".to_owned() };
    let mut words = format!("allocation for team {}", spec.team);
    if let Some(owner) = &spec.owner {
        words.push_str(&format!(", owner {owner}"));
    }
    if let Some(id) = &spec.request_id {
        words.push_str(&format!(", request id {id}"));
    }
    if request.dry_run {
        words.push_str(" (dry run)");
    }
    words
}

/// An allocation for the wire, with its place in the queue when it waits.
pub fn allocation_to_wire(
    state: &crate::state::ClusterState,
    allocation: &allot_api::allocation::Allocation,
) -> proto::Allocation {
    let mut wire: proto::Allocation = allocation.into();
    if let Some((position, reason)) = state.queue_info.get(&allocation.id) {
        wire.queue_position = *position as u32;
        wire.waiting_reason = reason.clone();
    } else if allocation.state == AllocationState::Pending {
        wire.waiting_reason = allocation.explanation.clone();
    }
    wire
}

fn invalid(field: &str, error: impl ToString) -> Status {
    BrokerError::InvalidArgument { field: field.to_owned(), problem: error.to_string() }.into()
}

fn allocation_id(text: &str) -> Result<AllocationId, Status> {
    text.parse().map_err(|error| invalid("id", error))
}

fn node_name(text: &str) -> Result<NodeName, Status> {
    text.parse().map_err(|error| invalid("node_name", error))
}

#[tonic::async_trait]
impl proto::node_service_server::NodeService for Services {
    async fn register(
        &self,
        request: Request<proto::RegisterNodeRequest>,
    ) -> Result<Response<proto::RegisterNodeResponse>, Status> {
        let asked = self.asked(&request, "NodeService/Register", format!("node {}", request.get_ref().node_name), None);
        self.audited(asked, async move {
            let caller = self.authorize(&request, "NodeService/Register", None)?;
            let request = request.into_inner();
            let name = node_name(&request.node_name)?;
            caller.may_act_as_node(name.as_str())?;
            let inventory = request.inventory.ok_or_else(|| invalid("inventory", "missing"))?;
            let inventory = NodeInventory::try_from(inventory).map_err(BrokerError::from)?;
            let epoch = self
                .core
                .ask(|reply| Command::RegisterNode { name: name.clone(), inventory: Box::new(inventory), reply })
                .await?;
            tracing::info!(node = %name, epoch, "node registered");
            Ok(Response::new(proto::RegisterNodeResponse {
                registration_epoch: epoch,
                heartbeat_interval_ms: self.core.heartbeat_interval.as_millis().min(u128::from(u32::MAX)) as u32,
            }))
        })
        .await
    }

    async fn heartbeat(
        &self,
        request: Request<proto::HeartbeatRequest>,
    ) -> Result<Response<proto::HeartbeatResponse>, Status> {
        let caller = self.authorize(&request, "NodeService/Heartbeat", None)?;
        let request = request.into_inner();
        let name = node_name(&request.node_name)?;
        caller.may_act_as_node(name.as_str())?;
        let interval = self.core.heartbeat_interval.as_millis().min(u128::from(u32::MAX)) as u32;
        let returned = {
            let mut state = self.core.state();
            let Some(mut entry) = state.node_mut(&name) else {
                return Ok(Response::new(proto::HeartbeatResponse {
                    register_again: true,
                    heartbeat_interval_ms: interval,
                }));
            };
            if entry.record.epoch != request.registration_epoch {
                return Ok(Response::new(proto::HeartbeatResponse {
                    register_again: true,
                    heartbeat_interval_ms: interval,
                }));
            }
            entry.last_heartbeat_ms = now_ms();
            let mut reshaped = false;
            if !request.gpus.is_empty() {
                apply_telemetry(&mut entry.record.inventory, request.gpus);
                let shape = crate::state::placement_shape(&entry.record.inventory);
                reshaped = shape != entry.shape;
                entry.shape = shape;
            }
            let returned = entry.status == NodeStatus::Lost;
            drop(entry);
            (returned, reshaped && !state.queue.is_empty())
        };
        let (returned, reschedule) = returned;
        if returned {
            self.core.tell(Command::NodeReturned { name }).await;
        } else if reschedule {
            self.core.tell(Command::Schedule).await;
        }
        Ok(Response::new(proto::HeartbeatResponse { register_again: false, heartbeat_interval_ms: interval }))
    }

    type WatchAssignmentsStream = Pin<Box<dyn Stream<Item = Result<proto::AssignmentEvent, Status>> + Send>>;

    async fn watch_assignments(
        &self,
        request: Request<proto::WatchAssignmentsRequest>,
    ) -> Result<Response<Self::WatchAssignmentsStream>, Status> {
        let caller = self.authorize(&request, "NodeService/WatchAssignments", None)?;
        let name = node_name(&request.into_inner().node_name)?;
        caller.may_act_as_node(name.as_str())?;
        // Subscribe before the snapshot, so no change falls between the two.
        let mut changes = self.core.assignments.subscribe();
        let existing = {
            let state = self.core.state();
            if !state.nodes().contains_key(&name) {
                return Err(BrokerError::NotFound { what: format!("node {name}; register it first") }.into());
            }
            // Allocations whose batch is not stored yet arrive as changes once it is.
            state
                .live_refs_on(&name)
                .filter(|allocation| !state.unpersisted.contains(&allocation.id))
                .map(|allocation| {
                    let trace = state.trace_of(allocation.id).unwrap_or_default().to_owned();
                    (allocation.clone(), trace)
                })
                .collect::<Vec<_>>()
        };
        let core = Arc::clone(&self.core);
        let stream = async_stream(move |sender| async move {
            for (allocation, trace_parent) in existing {
                let event = proto::AssignmentEvent {
                    kind: proto::assignment_event::Kind::Existing as i32,
                    allocation: Some((&allocation).into()),
                    trace_parent,
                };
                if sender.send(Ok(event)).await.is_err() {
                    return;
                }
            }
            let synced = proto::AssignmentEvent {
                kind: proto::assignment_event::Kind::Synced as i32,
                allocation: None,
                trace_parent: String::new(),
            };
            if sender.send(Ok(synced)).await.is_err() {
                return;
            }
            loop {
                // Stop as soon as the node hangs up, not at the next change.
                let received = tokio::select! {
                    received = changes.recv() => received,
                    _ = sender.closed() => return,
                };
                match received {
                    Ok(allocation) => {
                        if allocation.binding.as_ref().is_none_or(|binding| binding.node != name) {
                            continue;
                        }
                        let trace_parent = core.state().trace_of(allocation.id).unwrap_or_default().to_owned();
                        let event = proto::AssignmentEvent {
                            kind: proto::assignment_event::Kind::Changed as i32,
                            allocation: Some((&allocation).into()),
                            trace_parent,
                        };
                        if sender.send(Ok(event)).await.is_err() {
                            return;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                        // The node must resynchronise; ending the stream makes it reconnect.
                        let _ = sender
                            .send(Err(Status::aborted(format!(
                                "missed {missed} changes; watch again to resynchronise"
                            ))))
                            .await;
                        return;
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(stream))
    }

    async fn report_applied(
        &self,
        request: Request<proto::ReportAppliedRequest>,
    ) -> Result<Response<proto::ReportAppliedResponse>, Status> {
        let caller = self.authorize(&request, "NodeService/ReportApplied", None)?;
        let request = request.into_inner();
        let id = allocation_id(&request.allocation_id)?;
        caller.may_act_as_node(&request.node_name)?;
        {
            let mut state = self.core.state();
            let Some(allocation) = state.allocations.get(&id) else {
                return Err(BrokerError::NotFound { what: format!("allocation {id}") }.into());
            };
            let on_node = allocation.binding.as_ref().is_some_and(|binding| binding.node.as_str() == request.node_name);
            if !on_node {
                return Err(BrokerError::FailedPrecondition(format!(
                    "allocation {id} is not on node {}",
                    request.node_name
                ))
                .into());
            }
            state.node_reports.insert(id, request.message.clone());
        }
        if request.applied {
            self.core.tell(Command::Applied { id, generation: request.generation }).await;
        }
        Ok(Response::new(proto::ReportAppliedResponse {}))
    }
}

/// Overlays a heartbeat's telemetry on the registered inventory. A GPU status that
/// does not parse is skipped (the previous values stay), never fatal.
fn apply_telemetry(inventory: &mut NodeInventory, gpus: Vec<proto::GpuStatus>) {
    use allot_api::wire::{health_from_wire, mig_from_wire, telemetry_from_wire};
    for status in gpus {
        let Ok(bus_id) = status.pci_bus_id.parse::<allot_api::units::PciBusId>() else { continue };
        let Some(gpu) = inventory.gpus.iter_mut().find(|gpu| gpu.pci_bus_id == bus_id) else { continue };
        if let Some(Ok(telemetry)) = status.telemetry.map(|t| telemetry_from_wire("telemetry", t)) {
            gpu.telemetry = Some(telemetry);
        }
        if let Ok(health) = health_from_wire("health", status.health) {
            gpu.health = health;
        }
        if let Some(Ok(mig)) = status.mig.map(|m| mig_from_wire("mig", m)) {
            let mig: MigInfo = mig;
            gpu.mig = Some(mig);
        }
    }
}

/// A stream fed by a task, ended when the receiver goes away.
fn async_stream<F, Fut>(body: F) -> Pin<Box<dyn Stream<Item = Result<proto::AssignmentEvent, Status>> + Send>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<proto::AssignmentEvent, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (sender, receiver) = tokio::sync::mpsc::channel(64);
    tokio::spawn(body(sender));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver))
}

#[tonic::async_trait]
impl proto::allocation_service_server::AllocationService for Services {
    async fn create(
        &self,
        request: Request<proto::CreateAllocationRequest>,
    ) -> Result<Response<proto::CreateAllocationResponse>, Status> {
        let asked = self.asked(
            &request,
            "AllocationService/Create",
            create_target(request.get_ref()),
            request.get_ref().spec.as_ref().map(|spec| spec.team.clone()),
        );
        // A span for the create (under the caller's, when it sent a traceparent);
        // placement and the commit are its children, the node's enforcement too.
        let span = trace_span(&request, "AllocationService/Create");
        let trace = span.as_ref().and_then(allot_telemetry::traceparent);
        let result = self
            .audited(asked, async move {
                let caller = self.caller(&request)?;
                let request = request.into_inner();
                let spec = request.spec.ok_or_else(|| invalid("spec", "missing"))?;
                let validated = ValidatedRequest::try_from(spec).map_err(BrokerError::from)?;
                self.auth.check(&caller, "AllocationService/Create", Some(&validated.team))?;
                if request.dry_run {
                    let (binding, explanation) = dry_run(&self.core, &validated)?;
                    return Ok(Response::new(proto::CreateAllocationResponse {
                        allocation: None,
                        binding: Some((&binding).into()),
                        explanation,
                    }));
                }
                let no_wait = request.no_wait;
                let (allocation, explanation) = self
                    .core
                    .ask(|reply| Command::CreateAllocation { request: Box::new(validated), no_wait, trace, reply })
                    .await?;
                // Only a waiting allocation needs the state (for its place in the queue):
                // a grant is answered without waiting for the writer's lock.
                let wire = if allocation.state == AllocationState::Pending {
                    allocation_to_wire(&self.core.state(), &allocation)
                } else {
                    (&allocation).into()
                };
                Ok(Response::new(proto::CreateAllocationResponse {
                    binding: allocation.binding.as_ref().map(Into::into),
                    allocation: Some(wire),
                    explanation,
                }))
            })
            .await;
        if let Some(cx) = &span {
            use allot_telemetry::opentelemetry::trace::TraceContextExt;
            let span = cx.span();
            if let Ok(response) = &result
                && let Some(allocation) = &response.get_ref().allocation
            {
                span.set_attribute(allot_telemetry::opentelemetry::KeyValue::new("allocation", allocation.id.clone()));
            }
            if let Err(status) = &result {
                span.set_status(allot_telemetry::opentelemetry::trace::Status::error(status.message().to_owned()));
            }
            span.end();
        }
        result
    }

    async fn get(&self, request: Request<proto::AllocationRef>) -> Result<Response<proto::Allocation>, Status> {
        let caller = self.caller(&request)?;
        let id = allocation_id(&request.into_inner().id)?;
        // The state lock is never held while authorizing (which reads the state too).
        let team = self.team_of(id)?;
        self.auth.check(&caller, "AllocationService/Get", Some(&team))?;
        let state = self.core.state();
        let allocation = state
            .allocations
            .get(&id)
            .filter(|_| !state.unpersisted.contains(&id))
            .ok_or_else(|| BrokerError::NotFound { what: format!("allocation {id}") })?;
        Ok(Response::new(allocation_to_wire(&state, allocation)))
    }

    async fn list(
        &self,
        request: Request<proto::ListAllocationsRequest>,
    ) -> Result<Response<proto::ListAllocationsResponse>, Status> {
        let caller = self.caller(&request)?;
        let request = request.into_inner();
        let team = match request.team.as_str() {
            "" => None,
            text => Some(text.parse::<TeamName>().map_err(|error| invalid("team", error))?),
        };
        if let Some(team) = &team {
            self.auth.check(&caller, "AllocationService/List", Some(team))?;
        }
        let readable = self.readable_teams(&caller, "AllocationService/List")?;
        if readable.is_empty() {
            // Nothing to show is an answer only for a caller who may ask at all.
            self.auth.check(&caller, "AllocationService/List", None)?;
        }
        let state = self.core.state();
        let allocations = state
            .allocations
            .values()
            .filter(|allocation| !state.unpersisted.contains(&allocation.id))
            .filter(|allocation| {
                request.include_finished
                    || !matches!(allocation.state, AllocationState::Released | AllocationState::Preempted)
            })
            .filter(|allocation| team.as_ref().is_none_or(|team| &allocation.request.team == team))
            .filter(|allocation| {
                request.node.is_empty()
                    || allocation.binding.as_ref().is_some_and(|binding| binding.node.as_str() == request.node)
            })
            .filter(|allocation| {
                request.owner.is_empty() || allocation.request.owner.as_deref() == Some(request.owner.as_str())
            })
            .filter(|allocation| readable.contains(&allocation.request.team))
            .map(|allocation| allocation_to_wire(&state, allocation))
            .collect();
        Ok(Response::new(proto::ListAllocationsResponse { allocations }))
    }

    async fn explain(
        &self,
        request: Request<proto::AllocationRef>,
    ) -> Result<Response<proto::ExplainResponse>, Status> {
        let caller = self.caller(&request)?;
        let id = allocation_id(&request.into_inner().id)?;
        let team = self.team_of(id)?;
        self.auth.check(&caller, "AllocationService/Explain", Some(&team))?;
        let state = self.core.state();
        let allocation =
            state.allocations.get(&id).ok_or_else(|| BrokerError::NotFound { what: format!("allocation {id}") })?;
        let mut explanation = allocation.explanation.clone();
        if let Some(report) = state.node_reports.get(&id) {
            explanation.push_str(&format!("\nnode reports: {report}"));
        }
        Ok(Response::new(proto::ExplainResponse { id: id.to_string(), explanation }))
    }

    async fn release(&self, request: Request<proto::AllocationRef>) -> Result<Response<proto::Allocation>, Status> {
        let asked = self.asked(
            &request,
            "AllocationService/Release",
            format!("allocation {}", request.get_ref().id),
            self.team_of_ref(&request.get_ref().id),
        );
        self.audited(asked, async move {
            let caller = self.caller(&request)?;
            let id = allocation_id(&request.into_inner().id)?;
            let team = self.team_of(id)?;
            self.auth.check(&caller, "AllocationService/Release", Some(&team))?;
            let allocation = self.core.ask(|reply| Command::Release { id, reply }).await?;
            Ok(Response::new((&allocation).into()))
        })
        .await
    }

    async fn find_by_device(
        &self,
        request: Request<proto::FindByDeviceRequest>,
    ) -> Result<Response<proto::Allocation>, Status> {
        let caller = self.caller(&request)?;
        let request = request.into_inner();
        let node = node_name(&request.node)?;
        if request.device_uuid.is_empty() {
            return Err(invalid("device_uuid", "missing"));
        }
        let found = {
            let state = self.core.state();
            state
                .live_refs_on(&node)
                .filter(|allocation| !state.unpersisted.contains(&allocation.id))
                .find(|allocation| {
                    allocation.binding.as_ref().is_some_and(|binding| {
                        binding.gpus.iter().any(|gpu| {
                            gpu.uuid.as_deref() == Some(request.device_uuid.as_str())
                                || mig_uuid(&state, &node, gpu).as_deref() == Some(request.device_uuid.as_str())
                        })
                    })
                })
                .cloned()
        };
        let allocation = found.ok_or_else(|| BrokerError::NotFound {
            what: format!("a live allocation holding device {} on node {node}", request.device_uuid),
        })?;
        self.auth.check(&caller, "AllocationService/FindByDevice", Some(&allocation.request.team))?;
        Ok(Response::new(allocation_to_wire(&self.core.state(), &allocation)))
    }
}

/// The MIG device UUID the node reports for a granted instance, if it exists yet.
fn mig_uuid(
    state: &crate::state::ClusterState,
    node: &NodeName,
    grant: &allot_api::allocation::GpuGrant,
) -> Option<String> {
    let mig = grant.mig.as_ref()?;
    let entry = state.nodes().get(node)?;
    let gpu = entry.record.inventory.gpus.iter().find(|gpu| gpu.index == grant.index)?;
    gpu.mig
        .as_ref()?
        .instances
        .iter()
        .find(|instance| instance.start == mig.start && instance.profile == mig.profile)?
        .uuid
        .clone()
}

pub fn dry_run(
    core: &Core,
    request: &ValidatedRequest,
) -> Result<(allot_api::allocation::Binding, String), BrokerError> {
    let state = core.state();
    if !state.teams.contains_key(&request.team) {
        return Err(BrokerError::UnknownTeam { team: request.team.to_string() });
    }
    // On demand, every node's verdict: the exhaustive engine over all nodes.
    let decision = decide_over(&state, request, true)?;
    Ok((decision.binding, decision.explanation))
}
