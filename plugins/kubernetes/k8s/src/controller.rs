//! The pod controller: keeps the broker's pod allocations and the API server's
//! pods in step. Each pass reads both and acts on the difference, so a restart
//! resumes where the last pass left off: nothing held in memory decides.
//!
//! - a pod that is gone, or Succeeded or Failed: its live allocation is released;
//! - the broker admitted a waiting pod: the pod is annotated, which makes
//!   kube-scheduler try it again (a pod update requeues an unschedulable pod);
//! - the broker marked the allocation for reclaim: a warning event with the time;
//! - the broker preempted it: the pod is evicted through the Eviction API, with
//!   an event saying why;
//! - capacity was released: waiting gangs are annotated, so they are tried again.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use allot_api::proto;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{EvictParams, ListParams, Patch, PatchParams};
use kube::runtime::events::EventType;

use crate::App;
use crate::broker::is_live;
use crate::request::{self, OWNER_PREFIX, PodRef};

/// How the controller runs.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Time between passes.
    pub poll: Duration,
    /// An allocation younger than this is left alone when its pod is not seen
    /// yet (filter creates the allocation of a pod the list may not show yet).
    pub gone_grace: Duration,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|since| since.as_millis() as u64).unwrap_or(0)
}

fn state(allocation: &proto::Allocation) -> proto::AllocationState {
    proto::AllocationState::try_from(allocation.state).unwrap_or(proto::AllocationState::Unspecified)
}

fn terminal(pod: &Pod) -> bool {
    matches!(pod.status.as_ref().and_then(|status| status.phase.as_deref()), Some("Succeeded" | "Failed"))
}

/// What one pass did, for logs and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pass {
    pub released: Vec<String>,
    pub admitted: Vec<String>,
    pub evicted: Vec<String>,
    pub retried: Vec<String>,
}

/// Runs passes until the process ends; a failed pass is logged and retried.
pub async fn run(app: App, settings: Settings) {
    let mut warned_reclaim: HashSet<String> = HashSet::new();
    loop {
        match pass(&app, settings, &mut warned_reclaim).await {
            Ok(done) if done != Pass::default() => tracing::info!(?done, "pod controller pass"),
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "pod controller pass failed; retrying"),
        }
        tokio::time::sleep(settings.poll).await;
    }
}

/// One pass over every pod-owned allocation.
pub async fn pass(app: &App, settings: Settings, warned_reclaim: &mut HashSet<String>) -> Result<Pass, String> {
    let allocations = app.broker.pods_allocations(OWNER_PREFIX).await.map_err(|error| error.to_string())?;
    if allocations.is_empty() {
        return Ok(Pass::default());
    }
    let pods: Api<Pod> = Api::all(app.kube.clone());
    let listed = pods.list(&ListParams::default()).await.map_err(|error| format!("cannot list pods: {error}"))?;
    let by_uid: BTreeMap<String, Pod> =
        listed.items.into_iter().filter_map(|pod| Some((pod.metadata.uid.clone()?, pod))).collect();
    let mut done = Pass::default();
    let now = now_ms();
    for allocation in &allocations {
        let Some(owner) = allocation.spec.as_ref().and_then(|spec| spec.owner.as_deref()) else { continue };
        let Some(uid) = PodRef::uid_of_owner(owner) else { continue };
        let live = is_live(allocation);
        let pod = by_uid.get(uid);
        match pod {
            None => {
                let young = now.saturating_sub(allocation.created_at_ms) < settings.gone_grace.as_millis() as u64;
                if live && !young {
                    release(app, allocation, &mut done, "its pod is gone").await;
                }
            }
            Some(pod) if terminal(pod) => {
                if live {
                    release(app, allocation, &mut done, "its pod finished").await;
                }
            }
            Some(pod) => act_on_pod(app, pod, allocation, &mut done, warned_reclaim).await,
        }
    }
    if !done.released.is_empty() {
        retry_gangs(app, by_uid.values(), &mut done).await;
    }
    Ok(done)
}

/// Capacity was released: gangs that wait (they hold no allocation while they
/// do, so the broker admits nothing for them) are tried again now, rather than
/// at kube-scheduler's next periodic retry.
async fn retry_gangs<'a>(app: &App, pods: impl Iterator<Item = &'a Pod>, done: &mut Pass) {
    let stamp = now_ms().to_string();
    for pod in pods {
        let in_gang =
            pod.metadata.annotations.as_ref().is_some_and(|annotations| annotations.contains_key(request::GANG));
        let waiting = pod.spec.as_ref().is_some_and(|spec| spec.node_name.is_none())
            && pod.metadata.deletion_timestamp.is_none()
            && !terminal(pod);
        if !(in_gang && waiting) {
            continue;
        }
        let (Some(namespace), Some(name)) = (&pod.metadata.namespace, &pod.metadata.name) else { continue };
        let pods: Api<Pod> = Api::namespaced(app.kube.clone(), namespace);
        let patch = serde_json::json!({ "metadata": { "annotations": { request::RETRY: stamp } } });
        match pods.patch_metadata(name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => done.retried.push(format!("{namespace}/{name}")),
            Err(error) => tracing::warn!(pod = %name, %error, "cannot ask for the gang to be tried again"),
        }
    }
}

async fn release(app: &App, allocation: &proto::Allocation, done: &mut Pass, why: &str) {
    match app.broker.release(&allocation.id).await {
        Ok(()) => {
            tracing::info!(allocation = %allocation.id, why, "released");
            done.released.push(allocation.id.clone());
        }
        Err(error) => tracing::warn!(allocation = %allocation.id, %error, "cannot release"),
    }
}

async fn act_on_pod(
    app: &App,
    pod: &Pod,
    allocation: &proto::Allocation,
    done: &mut Pass,
    warned_reclaim: &mut HashSet<String>,
) {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(app.kube.clone(), &namespace);
    let scheduled = pod.spec.as_ref().and_then(|spec| spec.node_name.as_deref()).is_some();
    let annotated = pod.metadata.annotations.as_ref().and_then(|annotations| annotations.get(request::ADMITTED));
    match state(allocation) {
        proto::AllocationState::Bound | proto::AllocationState::Enforced => {
            if !scheduled && annotated != Some(&allocation.id) {
                // The broker admitted a waiting pod: a pod update makes
                // kube-scheduler try it again now instead of at its next retry.
                let patch = serde_json::json!({ "metadata": { "annotations": { request::ADMITTED: allocation.id } } });
                match pods.patch_metadata(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                    Ok(_) => done.admitted.push(allocation.id.clone()),
                    Err(error) => tracing::warn!(pod = %name, %error, "cannot mark the pod admitted"),
                }
            }
            if let Some(at) = allocation.reclaim_at_ms
                && warned_reclaim.insert(allocation.id.clone())
            {
                let seconds = at.saturating_sub(now_ms()) / 1000;
                let note = format!(
                    "Allot reclaims this pod's GPUs (allocation {}) for {} in about {seconds} s: its team uses \
                     capacity beyond its guarantee that another team's guarantee now needs; release it first to \
                     avoid eviction",
                    allocation.id,
                    allocation.reclaim_for.as_deref().unwrap_or("another team")
                );
                app.event(pod, EventType::Warning, "AllotReclaim", note).await;
            }
        }
        proto::AllocationState::Preempted if pod.metadata.deletion_timestamp.is_none() => {
            let note = format!(
                "Allot preempted allocation {} (GPUs borrowed beyond the team's guarantee, reclaimed for {}); \
                     evicting the pod",
                allocation.id,
                allocation.reclaim_for.as_deref().unwrap_or("another team")
            );
            app.event(pod, EventType::Warning, "AllotPreempted", note).await;
            match pods.evict(&name, &EvictParams::default()).await {
                Ok(_) => done.evicted.push(format!("{namespace}/{name}")),
                Err(error) => tracing::warn!(pod = %name, %error, "cannot evict"),
            }
        }
        _ => {}
    }
}
