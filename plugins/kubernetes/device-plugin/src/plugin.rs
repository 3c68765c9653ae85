//! The `DevicePlugin` service, one instance per resource, over state they share.
//!
//! The broker decides, the kubelet obeys:
//! - GetPreferredAllocation creates the allocation at the broker, pinned to this
//!   node and to the devices the kubelet offers (after its Topology Manager
//!   narrowed them), and answers with the broker's choice.
//! - A pod placed by the scheduler extender (allot-k8s) already has its
//!   allocation, owned `pod:<ns>/<name>/<uid>` and bound to this node: its devices
//!   are offered (a share as units of its GPU the plugin picks), GetPreferredAllocation
//!   answers with them (the oldest such allocation of the asked size first) and
//!   Allocate adopts it, creating nothing.
//! - Allocate finds the allocation whose devices are exactly the ones asked for
//!   (or, when the kubelet had no choice to make and skipped GetPreferredAllocation,
//!   creates one pinned to exactly those), waits until this node enforced it
//!   (MIG instance created) and answers with its environment, device nodes and
//!   CDI names. Ids that no allocation granted together are refused, and nothing
//!   this call made is left behind.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use allot_api::allocation::{AllocationId, DeviceSelector, NodeName, Pin, TeamName, ValidatedRequest};
use allot_api::bearer::Bearer;
use allot_api::proto;
use allot_api::proto::allocation_service_client::AllocationServiceClient;
use allot_api::units::MiB;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::grants::{Grant, Grants};
use crate::resources::{self, Device, DeviceRef, Kind, NodeSnapshot, Resource};
use crate::v1beta1;

/// How the plugin runs; `allot-node run --kubelet-socket` fills it.
#[derive(Debug, Clone)]
pub struct Config {
    pub node: NodeName,
    /// The kubelet's registration socket; plugin sockets go in its directory.
    pub kubelet_socket: PathBuf,
    /// The kubelet's pod resources socket, read to release allocations of pods
    /// that ended. `None`: allocations are never released by the plugin.
    pub pod_resources_socket: Option<PathBuf>,
    /// The domain of the resource names (`allot.io`).
    pub prefix: String,
    /// The team whose quota pods without the scheduler extender count against.
    pub team: TeamName,
    /// Where the grants file lives (allot-node's state directory).
    pub state_dir: PathBuf,
    /// Where the CDI spec is written (`/var/run/cdi`); `None`: no spec.
    pub cdi_dir: Option<PathBuf>,
    /// How often pod resources are read.
    pub release_poll: Duration,
    /// How long an allocation may go unclaimed by any pod before it is released
    /// (covers the moment between Allocate and the kubelet recording the pod).
    pub release_grace: Duration,
    /// How long Allocate waits for this node to enforce the allocation.
    pub enforce_timeout: Duration,
}

/// Why the plugin cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Name(#[from] resources::NameError),
    #[error(transparent)]
    Grants(#[from] crate::grants::GrantsError),
}

type Broker = AllocationServiceClient<InterceptedService<Channel, Bearer>>;

/// The plugins of one node, cheap to clone.
#[derive(Debug, Clone)]
pub struct Plugins {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    config: Config,
    resources: Vec<Resource>,
    snapshot: watch::Receiver<NodeSnapshot>,
    broker: Broker,
    grants: Mutex<Grants>,
    /// Bumped whenever the grants change, so device lists are recomputed.
    grants_changed: watch::Sender<u64>,
    /// One placement at a time: the kubelet admits one container at a time
    /// anyway, and the answers must not race over the same devices.
    placing: tokio::sync::Mutex<()>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_millis() as u64)
}

impl Plugins {
    /// Checks the configuration (every resource name) and loads the grants.
    pub fn new(
        config: Config,
        snapshot: watch::Receiver<NodeSnapshot>,
        channel: Channel,
        bearer: Bearer,
    ) -> Result<Plugins, StartError> {
        let resources = match &snapshot.borrow().inventory {
            Some(inventory) => resources::resources(&config.prefix, &inventory.gpus),
            None => resources::resources(&config.prefix, &[]),
        };
        for resource in &resources {
            resources::check_name(&resource.name)?;
        }
        let grants = Grants::load(&config.state_dir)?;
        let (grants_changed, _) = watch::channel(0);
        Ok(Plugins {
            shared: Arc::new(Shared {
                config,
                resources,
                snapshot,
                broker: AllocationServiceClient::with_interceptor(channel, bearer),
                grants: Mutex::new(grants),
                grants_changed,
                placing: tokio::sync::Mutex::new(()),
            }),
        })
    }

    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    pub fn resources(&self) -> &[Resource] {
        &self.shared.resources
    }

    pub fn snapshot(&self) -> watch::Receiver<NodeSnapshot> {
        self.shared.snapshot.clone()
    }

    /// The gRPC service for one resource.
    pub fn service(&self, resource: &Resource) -> v1beta1::device_plugin_server::DevicePluginServer<ResourcePlugin> {
        v1beta1::device_plugin_server::DevicePluginServer::new(ResourcePlugin {
            shared: Arc::clone(&self.shared),
            resource: resource.clone(),
        })
    }

    /// The devices of a resource as the kubelet should see them now.
    /// Devices held by a grant, or by a pod's allocation waiting to be adopted,
    /// are offered: the kubelet must be able to hand them to their pod.
    pub fn devices(&self, resource: &Resource) -> Vec<Device> {
        let mut held = self.shared.lock_grants().held();
        for (id, ids, _) in self.shared.adoptable(resource) {
            held.insert(id, ids.into_iter().collect());
        }
        resources::devices(resource, &self.shared.snapshot.borrow(), &held)
    }

    /// Releases allocations no pod holds any more. `held` is every (resource,
    /// device id) the kubelet's pods hold now.
    pub async fn release_unclaimed(&self, held: &BTreeSet<(String, String)>) {
        let now = now_ms();
        let grace = self.shared.config.release_grace.as_millis() as u64;
        let candidates: Vec<AllocationId> = {
            let grants = self.shared.lock_grants();
            grants
                .grants
                .iter()
                .filter(|(_, grant)| {
                    let claimed =
                        grant.device_ids.iter().any(|id| held.contains(&(grant.resource.clone(), id.clone())));
                    let since = grant.allocated_ms.unwrap_or(grant.created_ms);
                    !claimed && now.saturating_sub(since) >= grace
                })
                .map(|(id, _)| *id)
                .collect()
        };
        for id in candidates {
            let why = if self.shared.lock_grants().grants.get(&id).is_some_and(|grant| grant.allocated_ms.is_some()) {
                "no pod holds its devices any more"
            } else {
                "the kubelet never allocated it (the pod was not admitted)"
            };
            match self.shared.release(id).await {
                Ok(()) => tracing::info!(allocation = %id, why, "released an allocation made for the kubelet"),
                Err(status) => tracing::warn!(allocation = %id, %status, "cannot release; will retry"),
            }
        }
    }
}

impl Shared {
    fn lock_grants(&self) -> MutexGuard<'_, Grants> {
        self.grants.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn update_grants(&self, change: impl FnOnce(&mut Grants)) {
        let saved = {
            let mut grants = self.lock_grants();
            change(&mut grants);
            grants.save(&self.config.state_dir)
        };
        if let Err(error) = saved {
            tracing::error!(%error, "cannot record the kubelet's grants");
        }
        self.grants_changed.send_modify(|version| *version += 1);
    }

    /// Allocations the scheduler extender made for pods bound to this node that
    /// no grant holds yet, with their device ids under `resource`, oldest first.
    ///
    /// A share's units are the lowest-numbered units of its GPU that no grant and
    /// no older share holds: a pure function of the grants and the snapshot, so
    /// the lists the kubelet sees and the answers it gets agree.
    fn adoptable(&self, resource: &Resource) -> Vec<(AllocationId, BTreeSet<String>, u64)> {
        let grants = self.lock_grants();
        let snapshot = self.snapshot.borrow();
        let mut waiting: Vec<&allot_api::allocation::Allocation> = snapshot
            .allocations
            .values()
            .filter(|allocation| !grants.grants.contains_key(&allocation.id))
            .filter(|allocation| allocation.binding.as_ref().is_some_and(|binding| binding.node == self.config.node))
            .filter(|allocation| resources::is_pod_allocation(allocation))
            .collect();
        waiting.sort_by_key(|allocation| (allocation.created_at_ms, allocation.id));
        let mut taken: BTreeSet<String> = grants
            .grants
            .values()
            .filter(|grant| grant.resource == resource.name)
            .flat_map(|grant| grant.device_ids.iter().cloned())
            .collect();
        let mut found = Vec::new();
        for allocation in waiting {
            let ids = match (&resource.kind, resources::pod_share(allocation)) {
                (Kind::Share, Some((gpu, units))) => {
                    let free: BTreeSet<String> = (0..resources::SHARE_UNITS_PER_GPU)
                        .map(|unit| resources::share_id(&gpu, unit))
                        .filter(|id| !taken.contains(id))
                        .take(units as usize)
                        .collect();
                    if free.len() != units as usize {
                        continue;
                    }
                    taken.extend(free.iter().cloned());
                    Some(free)
                }
                (Kind::Share, None) => None,
                _ => resources::pod_allocation_ids(resource, allocation),
            };
            if let Some(ids) = ids {
                found.push((allocation.id, ids, allocation.created_at_ms));
            }
        }
        found
    }

    /// Waits (a few seconds at most) until this node has heard of every pod
    /// allocation the broker bound here: allot-k8s binds the pod right after
    /// making its allocation, so the kubelet may ask before the assignment
    /// stream told this node. A broker that does not answer leaves the
    /// snapshot as it is.
    async fn catch_up(&self) {
        let listed = self
            .broker
            .clone()
            .list(proto::ListAllocationsRequest {
                team: String::new(),
                node: self.config.node.to_string(),
                owner: String::new(),
                include_finished: false,
            })
            .await;
        let Ok(listed) = listed else { return };
        let expected: BTreeSet<AllocationId> = listed
            .into_inner()
            .allocations
            .iter()
            .filter(|allocation| {
                allocation.binding.is_some()
                    && allocation
                        .spec
                        .as_ref()
                        .and_then(|spec| spec.owner.as_deref())
                        .is_some_and(|owner| owner.starts_with(resources::POD_OWNER_PREFIX))
            })
            .filter_map(|allocation| allocation.id.parse().ok())
            .collect();
        let mut snapshot = self.snapshot.clone();
        let wait = async {
            loop {
                if expected.iter().all(|id| snapshot.borrow_and_update().allocations.contains_key(id)) {
                    return;
                }
                if snapshot.changed().await.is_err() {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), wait).await;
    }

    /// Records a pod's allocation as the grant of `ids`.
    fn adopt(&self, resource: &Resource, id: AllocationId, ids: &BTreeSet<String>) {
        tracing::info!(resource = %resource, allocation = %id, devices = ?ids, "adopted the scheduler extender's allocation");
        self.record_grant(resource, id, ids);
    }

    /// Records that allocation `id` holds `ids` of `resource`, not yet claimed by a container.
    fn record_grant(&self, resource: &Resource, id: AllocationId, ids: &BTreeSet<String>) {
        self.update_grants(|grants| {
            grants.grants.insert(
                id,
                Grant {
                    resource: resource.name.clone(),
                    device_ids: ids.clone(),
                    created_ms: now_ms(),
                    allocated_ms: None,
                },
            );
        });
    }

    async fn release(&self, id: AllocationId) -> Result<(), Status> {
        let mut broker = self.broker.clone();
        match broker.release(proto::AllocationRef { id: id.to_string() }).await {
            Ok(_) => {}
            // Released already (by allot-k8s when the pod ended, or by an admin).
            Err(status) if matches!(status.code(), tonic::Code::NotFound | tonic::Code::FailedPrecondition) => {}
            Err(status) => return Err(status),
        }
        self.update_grants(|grants| {
            grants.grants.remove(&id);
        });
        Ok(())
    }

    /// Asks the broker for `count` devices of `resource` on this node among
    /// `allowed`, and records the grant. Returns the allocation and its ids.
    async fn place(
        &self,
        resource: &Resource,
        count: u32,
        allowed: &[DeviceRef],
        available_ids: &[String],
    ) -> Result<(AllocationId, BTreeSet<String>), Status> {
        let inventory_memory = |gpu: &str| -> Option<MiB> {
            let snapshot = self.snapshot.borrow();
            snapshot.inventory.as_ref()?.gpus.iter().find(|g| g.uuid.as_deref() == Some(gpu))?.memory_mib
        };
        // Shares are sized by the memory of the GPUs on offer (one model per node
        // in practice; the smallest is the safe cap otherwise).
        let memory = allowed.iter().filter_map(|device| inventory_memory(device.gpu())).min();
        let demand = resources::demand(&resource.kind, count, memory).map_err(Status::invalid_argument)?;
        let mut selectors: Vec<DeviceSelector> = allowed
            .iter()
            .map(|device| DeviceSelector {
                gpu_uuid: device.gpu().to_owned(),
                mig_start: match device {
                    DeviceRef::MigSlot { start, .. } => Some(*start),
                    _ => None,
                },
            })
            .collect();
        if let Kind::Share = resource.kind {
            // A share is on one GPU: only GPUs with enough units on offer qualify.
            let mut units: BTreeMap<&str, u32> = BTreeMap::new();
            for device in allowed {
                *units.entry(device.gpu()).or_default() += 1;
            }
            selectors.retain(|selector| units.get(selector.gpu_uuid.as_str()).is_some_and(|n| *n >= count));
        }
        selectors.sort();
        selectors.dedup();
        if selectors.is_empty() {
            return Err(Status::resource_exhausted(format!(
                "E-NO-DEVICE: no GPU among the {} offered devices of {resource} has room for {count}",
                allowed.len()
            )));
        }
        let owner = format!("kubelet:{}/{}", self.config.node, resource.name);
        let request = ValidatedRequest::new(
            self.config.team.clone(),
            demand,
            0,
            MiB(0),
            allot_api::allocation::Interconnect::Any,
            false,
            None,
            Some(owner),
        )
        .and_then(|request| request.pinned(Pin { node: self.config.node.clone(), devices: selectors }))
        .map_err(|error| Status::invalid_argument(format!("{}: {}", error.field, error.problem)))?;
        let mut broker = self.broker.clone();
        let response = broker
            .create(proto::CreateAllocationRequest { spec: Some((&request).into()), dry_run: false, no_wait: true })
            .await
            .map_err(|status| {
                Status::new(status.code(), format!("the broker refused {count} of {resource}: {}", status.message()))
            })?
            .into_inner();
        let allocation =
            response.allocation.ok_or_else(|| Status::internal("the broker answered without an allocation"))?;
        let id: AllocationId = allocation.id.parse().map_err(|error| Status::internal(format!("{error}")))?;
        let binding = allocation.binding.or(response.binding).unwrap_or_default();
        let ids = match device_ids(resource, &binding, count, available_ids) {
            Ok(ids) => ids,
            Err(problem) => {
                // Nothing may stay granted that the kubelet will not know of.
                let _ = broker.release(proto::AllocationRef { id: id.to_string() }).await;
                return Err(Status::internal(problem));
            }
        };
        self.record_grant(resource, id, &ids);
        Ok((id, ids))
    }

    /// Waits until this node enforced the allocation, and returns its environment.
    async fn enforced(&self, id: AllocationId) -> Result<BTreeMap<String, String>, Status> {
        let mut snapshot = self.snapshot.clone();
        let wait = async {
            loop {
                if let Some(environment) = snapshot.borrow_and_update().environments.get(&id) {
                    return Ok(environment.clone());
                }
                if snapshot.changed().await.is_err() {
                    return Err(Status::unavailable("allot-node is stopping"));
                }
            }
        };
        match tokio::time::timeout(self.config.enforce_timeout, wait).await {
            Ok(result) => result,
            Err(_) => Err(Status::deadline_exceeded(format!(
                "E-NOT-ENFORCED: allocation {id} was not enforced on this node within {:?}; see `allotctl alloc explain {id}`",
                self.config.enforce_timeout
            ))),
        }
    }
}

/// The device ids the kubelet will know an allocation by.
fn device_ids(
    resource: &Resource,
    binding: &proto::Binding,
    count: u32,
    available: &[String],
) -> Result<BTreeSet<String>, String> {
    let uuid = |grant: &proto::GpuGrant| {
        grant.uuid.clone().ok_or_else(|| format!("GPU {} of the binding has no UUID", grant.index))
    };
    let mut ids = BTreeSet::new();
    match &resource.kind {
        Kind::Whole => {
            for grant in &binding.gpus {
                ids.insert(uuid(grant)?);
            }
        }
        Kind::Mig { .. } => {
            for grant in &binding.gpus {
                let mig = grant.mig.as_ref().ok_or("the binding holds no MIG grant")?;
                ids.insert(resources::mig_id(&uuid(grant)?, mig.start));
            }
        }
        Kind::Share => {
            let grant = binding.gpus.first().ok_or("the binding holds no GPU")?;
            let gpu = uuid(grant)?;
            let prefix = format!("{gpu}::");
            ids.extend(available.iter().filter(|id| id.starts_with(&prefix)).take(count as usize).cloned());
        }
    }
    if ids.len() != count as usize {
        return Err(format!("the broker granted {} devices of {resource} where {count} were asked", ids.len()));
    }
    Ok(ids)
}

/// One resource's `DevicePlugin` service.
#[derive(Debug, Clone)]
pub struct ResourcePlugin {
    shared: Arc<Shared>,
    resource: Resource,
}

impl ResourcePlugin {
    fn parse_all(&self, ids: &[String]) -> Result<Vec<DeviceRef>, Status> {
        let unknown: Vec<&str> = ids
            .iter()
            .filter(|id| resources::parse_id(&self.resource.kind, id).is_none())
            .map(String::as_str)
            .collect();
        if !unknown.is_empty() {
            return Err(Status::invalid_argument(format!(
                "E-UNKNOWN-DEVICE: {} are not device ids of {}",
                unknown.join(", "),
                self.resource
            )));
        }
        Ok(ids.iter().filter_map(|id| resources::parse_id(&self.resource.kind, id)).collect())
    }

    /// Checks that `ids` are advertised now (or held by a grant).
    fn check_advertised(&self, ids: &BTreeSet<String>) -> Result<(), Status> {
        let advertised: BTreeSet<String> =
            Plugins { shared: Arc::clone(&self.shared) }.devices(&self.resource).into_iter().map(|d| d.id).collect();
        let missing: Vec<&str> = ids.iter().filter(|id| !advertised.contains(*id)).map(String::as_str).collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(Status::invalid_argument(format!(
                "E-UNKNOWN-DEVICE: {} {} not offered by this node for {}",
                missing.join(", "),
                if missing.len() == 1 { "is" } else { "are" },
                self.resource
            )))
        }
    }

    async fn allocate_container(&self, ids: &[String]) -> Result<v1beta1::ContainerAllocateResponse, Status> {
        let wanted: BTreeSet<String> = ids.iter().cloned().collect();
        if wanted.len() != ids.len() {
            return Err(Status::invalid_argument(format!("E-DUPLICATE-DEVICE: the ids {ids:?} repeat a device")));
        }
        let devices = self.parse_all(ids)?;
        let shared = &self.shared;
        let _placing = shared.placing.lock().await;
        let mut existing = shared.lock_grants().find_exact(&self.resource.name, &wanted);
        if existing.is_none() {
            shared.catch_up().await;
            existing = shared.lock_grants().find_exact(&self.resource.name, &wanted);
        }
        let adopted = existing.is_none().then(|| {
            shared.adoptable(&self.resource).into_iter().find(|(_, ids, _)| ids == &wanted).map(|(id, _, _)| id)
        });
        let id = match existing.or(adopted.flatten()) {
            Some(id) => {
                if existing.is_none() {
                    shared.adopt(&self.resource, id, &wanted);
                }
                id
            }
            None => {
                let overlapping = shared.lock_grants().overlapping(&self.resource.name, &wanted);
                if !overlapping.is_empty() {
                    let names: Vec<String> = overlapping.iter().map(ToString::to_string).collect();
                    return Err(Status::failed_precondition(format!(
                        "E-NOT-GRANTED: {} were not granted together: they overlap allocation(s) {} made for other devices",
                        ids.join(", "),
                        names.join(", ")
                    )));
                }
                self.check_advertised(&wanted)?;
                // The kubelet had no choice (it skipped GetPreferredAllocation):
                // pin the broker to exactly these devices.
                let count = u32::try_from(ids.len()).unwrap_or(u32::MAX);
                let (id, granted) = shared.place(&self.resource, count, &devices, ids).await?;
                if granted != wanted {
                    let _ = shared.release(id).await;
                    return Err(Status::internal("the broker chose other devices than the pinned ones"));
                }
                id
            }
        };
        // Claimed from now on: the release loop's grace runs from here, so a
        // slow enforcement (a MIG re-carve) is not mistaken for an unclaimed grant.
        shared.update_grants(|grants| {
            if let Some(grant) = grants.grants.get_mut(&id) {
                grant.allocated_ms = Some(now_ms());
            }
        });
        let environment = match shared.enforced(id).await {
            Ok(environment) => environment,
            Err(status) => {
                // The kubelet fails the pod: nothing may stay granted for it.
                let _ = shared.release(id).await;
                return Err(status);
            }
        };
        let snapshot = shared.snapshot.borrow();
        let binding = snapshot.allocations.get(&id).and_then(|allocation| allocation.binding.clone());
        Ok(answer(&shared.config.prefix, id, &environment, binding.as_ref()))
    }
}

/// The kubelet's answer for one container: the allocation's environment, the
/// device nodes of its GPUs and the CDI names of its devices.
pub fn answer(
    prefix: &str,
    id: AllocationId,
    environment: &BTreeMap<String, String>,
    binding: Option<&allot_api::allocation::Binding>,
) -> v1beta1::ContainerAllocateResponse {
    // Enforcement's environment already names the allocation (ALLOT_ALLOCATION_ID).
    let envs: std::collections::HashMap<String, String> =
        environment.iter().map(|(key, value)| (key.clone(), value.clone())).collect();
    let mut nodes: Vec<String> =
        ["/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"].iter().map(|path| (*path).to_owned()).collect();
    if let Some(binding) = binding {
        // The device node's minor number is the NVML index on every driver
        // Allot has seen; NVML's own minor number is not read yet.
        nodes.extend(binding.gpus.iter().map(|gpu| format!("/dev/nvidia{}", gpu.index)));
    }
    let devices = nodes
        .into_iter()
        .map(|path| v1beta1::DeviceSpec { container_path: path.clone(), host_path: path, permissions: "rw".to_owned() })
        .collect();
    let cdi_devices = environment
        .get("NVIDIA_VISIBLE_DEVICES")
        .map(|list| {
            list.split(',')
                .filter(|uuid| !uuid.is_empty() && *uuid != "void")
                .map(|uuid| v1beta1::CdiDevice { name: crate::cdi::device_name(prefix, uuid) })
                .collect()
        })
        .unwrap_or_default();
    let annotations = [(format!("{prefix}/allocation"), id.to_string())].into_iter().collect();
    v1beta1::ContainerAllocateResponse { envs, mounts: Vec::new(), devices, annotations, cdi_devices }
}

#[tonic::async_trait]
impl v1beta1::device_plugin_server::DevicePlugin for ResourcePlugin {
    async fn get_device_plugin_options(
        &self,
        _request: Request<v1beta1::Empty>,
    ) -> Result<Response<v1beta1::DevicePluginOptions>, Status> {
        Ok(Response::new(v1beta1::DevicePluginOptions {
            pre_start_required: false,
            get_preferred_allocation_available: true,
        }))
    }

    type ListAndWatchStream = ReceiverStream<Result<v1beta1::ListAndWatchResponse, Status>>;

    async fn list_and_watch(
        &self,
        _request: Request<v1beta1::Empty>,
    ) -> Result<Response<Self::ListAndWatchStream>, Status> {
        let (sender, receiver) = mpsc::channel(4);
        let plugins = Plugins { shared: Arc::clone(&self.shared) };
        let resource = self.resource.clone();
        tokio::spawn(async move {
            let mut snapshot = plugins.shared.snapshot.clone();
            let mut grants = plugins.shared.grants_changed.subscribe();
            let mut last: Option<Vec<Device>> = None;
            loop {
                snapshot.mark_unchanged();
                grants.mark_unchanged();
                // Lists change while a container is being placed (its grant, its
                // enforcement); send them once the kubelet has its answer, so a
                // resource's list never moves under an Allocate in flight.
                let list = {
                    let _placed = plugins.shared.placing.lock().await;
                    plugins.devices(&resource)
                };
                if last.as_ref() != Some(&list) {
                    let healthy = list.iter().filter(|device| device.healthy).count();
                    tracing::info!(resource = %resource, devices = list.len(), healthy, "devices for the kubelet");
                    if sender.send(Ok(to_wire(&list))).await.is_err() {
                        return;
                    }
                    last = Some(list);
                }
                tokio::select! {
                    changed = snapshot.changed() => if changed.is_err() { return },
                    changed = grants.changed() => if changed.is_err() { return },
                    () = sender.closed() => return,
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn get_preferred_allocation(
        &self,
        request: Request<v1beta1::PreferredAllocationRequest>,
    ) -> Result<Response<v1beta1::PreferredAllocationResponse>, Status> {
        let mut container_responses = Vec::new();
        for container in request.into_inner().container_requests {
            let size = u32::try_from(container.allocation_size)
                .map_err(|_| Status::invalid_argument(format!("allocation size {}", container.allocation_size)))?;
            if !container.must_include_device_i_ds.is_empty() {
                // Devices the kubelet reuses (from an init container) are already
                // granted: keep them and take the rest in the order offered.
                let mut ids = container.must_include_device_i_ds.clone();
                ids.extend(
                    container
                        .available_device_i_ds
                        .iter()
                        .filter(|id| !container.must_include_device_i_ds.contains(id))
                        .take((size as usize).saturating_sub(ids.len()))
                        .cloned(),
                );
                container_responses.push(v1beta1::ContainerPreferredAllocationResponse { device_i_ds: ids });
                continue;
            }
            let available = self.parse_all(&container.available_device_i_ds)?;
            let _placing = self.shared.placing.lock().await;
            self.shared.catch_up().await;
            // A pod the scheduler extender placed: its allocation's devices, the
            // oldest such allocation first (the kubelet admits pods in the order
            // they were bound, as a rule).
            let offered: BTreeSet<&String> = container.available_device_i_ds.iter().collect();
            let adoptable = self
                .shared
                .adoptable(&self.resource)
                .into_iter()
                .find(|(_, ids, _)| ids.len() == size as usize && ids.iter().all(|id| offered.contains(id)));
            if let Some((id, ids, _)) = adoptable {
                self.shared.adopt(&self.resource, id, &ids);
                container_responses
                    .push(v1beta1::ContainerPreferredAllocationResponse { device_i_ds: ids.into_iter().collect() });
                continue;
            }
            let (id, ids) =
                self.shared.place(&self.resource, size, &available, &container.available_device_i_ds).await?;
            tracing::info!(resource = %self.resource, allocation = %id, devices = ?ids, "preferred: the broker's choice");
            container_responses
                .push(v1beta1::ContainerPreferredAllocationResponse { device_i_ds: ids.into_iter().collect() });
        }
        Ok(Response::new(v1beta1::PreferredAllocationResponse { container_responses }))
    }

    async fn allocate(
        &self,
        request: Request<v1beta1::AllocateRequest>,
    ) -> Result<Response<v1beta1::AllocateResponse>, Status> {
        let mut container_responses = Vec::new();
        for container in request.into_inner().container_requests {
            let answer = self.allocate_container(&container.devices_ids).await.inspect_err(|status| {
                tracing::warn!(resource = %self.resource, devices = ?container.devices_ids, %status, "allocate refused");
            })?;
            container_responses.push(answer);
        }
        Ok(Response::new(v1beta1::AllocateResponse { container_responses }))
    }

    async fn pre_start_container(
        &self,
        _request: Request<v1beta1::PreStartContainerRequest>,
    ) -> Result<Response<v1beta1::PreStartContainerResponse>, Status> {
        Ok(Response::new(v1beta1::PreStartContainerResponse {}))
    }
}

fn to_wire(list: &[Device]) -> v1beta1::ListAndWatchResponse {
    v1beta1::ListAndWatchResponse {
        devices: list
            .iter()
            .map(|device| v1beta1::Device {
                id: device.id.clone(),
                health: if device.healthy { "Healthy" } else { "Unhealthy" }.to_owned(),
                topology: device
                    .numa_node
                    .map(|numa| v1beta1::TopologyInfo { nodes: vec![v1beta1::NumaNode { id: i64::from(numa) }] }),
            })
            .collect(),
    }
}
