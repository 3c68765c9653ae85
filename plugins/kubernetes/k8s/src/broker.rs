//! The broker, as allot-k8s uses it: a gRPC client that finds a pod's allocation
//! by its owner, creates it once, and releases it. The broker stays
//! Kubernetes-free; everything it knows of a pod is the owner string.

use std::time::Duration;

use allot_api::bearer::Bearer;
use allot_api::proto;
use allot_api::proto::allocation_service_client::AllocationServiceClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::extender::Verdict;

type Client = AllocationServiceClient<InterceptedService<Channel, Bearer>>;

#[derive(Debug, Clone)]
pub struct Broker {
    address: String,
    client: Client,
}

/// What went wrong talking to the broker, worded for a pod's event.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("the Allot broker at {address} does not answer ({problem}); nothing was granted")]
    Unreachable { address: String, problem: String },
    #[error("the Allot broker refused: {0}")]
    Refused(String),
}

impl Broker {
    /// A lazy connection: the first call dials, and a broker that is down makes
    /// each call fail with [`BrokerError::Unreachable`] instead of a hang.
    pub fn new(address: &str, bearer: Bearer, tls: &allot_api::tls::ClientTls) -> Result<Broker, String> {
        let endpoint = allot_api::tls::endpoint(address, tls, Duration::from_secs(2), Duration::from_secs(10))
            .map_err(|problem| format!("--broker {address}: {problem}"))?;
        let channel = endpoint.connect_lazy();
        Ok(Broker { address: address.to_owned(), client: AllocationServiceClient::with_interceptor(channel, bearer) })
    }

    fn error(&self, status: Status) -> BrokerError {
        match status.code() {
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
                BrokerError::Unreachable { address: self.address.clone(), problem: status.message().to_owned() }
            }
            _ => BrokerError::Refused(status.message().to_owned()),
        }
    }

    /// Allocations with `owner` (every owner when empty), finished ones too if asked.
    async fn list(&self, owner: &str, include_finished: bool) -> Result<Vec<proto::Allocation>, BrokerError> {
        let request = proto::ListAllocationsRequest {
            team: String::new(),
            node: String::new(),
            owner: owner.to_owned(),
            include_finished,
        };
        let reply = self.client.clone().list(request).await.map_err(|status| self.error(status))?;
        Ok(reply.into_inner().allocations)
    }

    /// The live allocation owned by `owner`, if any (pending counts as live).
    pub async fn find(&self, owner: &str) -> Result<Option<proto::Allocation>, BrokerError> {
        Ok(self.list(owner, false).await?.into_iter().min_by_key(|allocation| allocation.created_at_ms))
    }

    /// Creates the allocation, waiting in the broker's queue when it cannot be granted now.
    pub async fn create(&self, spec: proto::AllocationSpec, no_wait: bool) -> Result<proto::Allocation, BrokerError> {
        let reply = self
            .client
            .clone()
            .create(proto::CreateAllocationRequest { spec: Some(spec), dry_run: false, no_wait })
            .await
            .map_err(|status| self.error(status))?
            .into_inner();
        reply.allocation.ok_or_else(|| BrokerError::Refused("the broker answered a create with no allocation".into()))
    }

    /// Every allocation a pod owns, live or finished (preempted ones included).
    pub async fn pods_allocations(&self, prefix: &str) -> Result<Vec<proto::Allocation>, BrokerError> {
        let all = self.list("", true).await?;
        Ok(all
            .into_iter()
            .filter(|allocation| {
                allocation
                    .spec
                    .as_ref()
                    .and_then(|spec| spec.owner.as_deref())
                    .is_some_and(|owner| owner.starts_with(prefix))
            })
            .collect())
    }

    /// Releases an allocation; one already finished counts as released.
    pub async fn release(&self, id: &str) -> Result<(), BrokerError> {
        match self.client.clone().release(proto::AllocationRef { id: id.to_owned() }).await {
            Ok(_) => Ok(()),
            Err(status) if matches!(status.code(), Code::NotFound | Code::FailedPrecondition) => Ok(()),
            Err(status) => Err(self.error(status)),
        }
    }
}

/// Where an allocation stands, as filter answers it.
pub fn verdict(allocation: &proto::Allocation) -> Verdict {
    let state = proto::AllocationState::try_from(allocation.state).unwrap_or(proto::AllocationState::Unspecified);
    match (state, &allocation.binding) {
        (proto::AllocationState::Bound | proto::AllocationState::Enforced, Some(binding)) => {
            Verdict::Placed { allocation: allocation.id.clone(), node: binding.node.clone() }
        }
        (proto::AllocationState::Pending, _) => Verdict::Waiting {
            allocation: allocation.id.clone(),
            position: allocation.queue_position,
            reason: allocation.waiting_reason.clone(),
        },
        (state, _) => Verdict::Refused {
            reason: format!(
                "allocation {} is {}",
                allocation.id,
                state.as_str_name().trim_start_matches("ALLOCATION_STATE_").to_lowercase()
            ),
        },
    }
}

/// Whether an allocation is still live.
pub fn is_live(allocation: &proto::Allocation) -> bool {
    matches!(
        proto::AllocationState::try_from(allocation.state),
        Ok(proto::AllocationState::Pending | proto::AllocationState::Bound | proto::AllocationState::Enforced)
    )
}

/// The devices an allocation was granted, for the pod's annotation: GPU UUIDs,
/// MIG slots as `<uuid>::mig<start>`, shares as `<uuid>::share<milli>`.
pub fn devices(allocation: &proto::Allocation) -> String {
    let Some(binding) = &allocation.binding else { return String::new() };
    binding
        .gpus
        .iter()
        .map(|gpu| {
            let id = gpu.uuid.clone().unwrap_or_else(|| gpu.pci_bus_id.clone());
            match (&gpu.mig, &gpu.share) {
                (Some(mig), _) => format!("{id}::mig{}", mig.start),
                (None, Some(share)) => format!("{id}::share{}", share.milli_gpu),
                (None, None) => id,
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}
