//! allot-k8s: kube-scheduler asks Allot *where* and *whether* a GPU pod runs.
//!
//! The scheduler extender (`extender.rs` for the protocol) answers filter with
//! the broker's decision: the first time it sees a pod, it creates the pod's
//! allocation (owner `pod:<namespace>/<name>/<uid>`, the team from the
//! namespace's label), so a pod that cannot be granted now waits in the
//! broker's queue in fair-share order, and only the node the broker chose
//! passes. Bind annotates the pod with its allocation and devices and binds it
//! through the API server. The controller (`controller.rs`) releases the
//! allocations of pods that are gone or finished, evicts pods whose allocation
//! the broker preempted, and nudges kube-scheduler when the broker admits a
//! waiting pod. Nothing here holds state that a restart could lose: the broker
//! and the API server are the truth, and every step finds what exists first.

pub mod broker;
pub mod controller;
pub mod extender;
pub mod request;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use k8s_openapi::api::core::v1::{Binding, Namespace, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource};

use crate::broker::{Broker, BrokerError};
use crate::extender::{ExtenderArgs, ExtenderBindingArgs, ExtenderBindingResult, Verdict};
use crate::request::{Names, PodRef};

/// What the extender and the controller share.
#[derive(Clone)]
pub struct App {
    pub broker: Broker,
    pub kube: Client,
    pub names: Names,
    /// The namespace label that names a namespace's team.
    pub team_label: String,
    recorder: Recorder,
    /// Serialises find-or-create, so one pod never gets two allocations.
    creating: Arc<tokio::sync::Mutex<()>>,
    /// Warnings already published, per pod, so a pod the scheduler retries does
    /// not collect the same event again and again.
    warned: Arc<Mutex<HashSet<(String, String)>>>,
    /// Namespaces' teams as last read, with when: filter runs for every pod, and
    /// a label change shows within `TEAM_TTL`.
    teams: Arc<Mutex<TeamCache>>,
}

/// Per namespace: when its team was read, and the team or why there is none.
type TeamCache = BTreeMap<String, (Instant, Result<String, String>)>;

/// How long a namespace's team is taken from the cache.
const TEAM_TTL: Duration = Duration::from_secs(5);

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").field("broker", &self.broker).field("team_label", &self.team_label).finish()
    }
}

impl App {
    pub fn new(broker: Broker, kube: Client, domain: &str, team_label: &str) -> App {
        let reporter = Reporter { controller: "allot-k8s".into(), instance: std::env::var("POD_NAME").ok() };
        App {
            broker,
            recorder: Recorder::new(kube.clone(), reporter),
            kube,
            names: Names::new(domain),
            team_label: team_label.to_owned(),
            creating: Arc::new(tokio::sync::Mutex::new(())),
            warned: Arc::new(Mutex::new(HashSet::new())),
            teams: Arc::new(Mutex::new(BTreeMap::new())),
        }
    }

    /// Publishes an event on a pod; a warning only once per pod and message.
    pub async fn event(&self, pod: &Pod, type_: EventType, reason: &str, note: String) {
        if type_ == EventType::Warning {
            let key = (pod.metadata.uid.clone().unwrap_or_default(), note.clone());
            let Ok(mut warned) = self.warned.lock() else { return };
            if !warned.insert(key) {
                return;
            }
            if warned.len() > 100_000 {
                warned.clear();
            }
        }
        let reference: ObjectReference = pod.object_ref(&());
        let event =
            Event { type_, reason: reason.into(), note: Some(note), action: "Scheduling".into(), secondary: None };
        if let Err(error) = self.recorder.publish(&event, &reference).await {
            tracing::warn!(%error, "cannot publish an event");
        }
    }

    async fn team_of(&self, namespace: &str) -> Result<String, String> {
        if let Ok(teams) = self.teams.lock()
            && let Some((read, team)) = teams.get(namespace)
            && read.elapsed() < TEAM_TTL
        {
            return team.clone();
        }
        let team = self.read_team(namespace).await;
        if let Ok(mut teams) = self.teams.lock() {
            if teams.len() > 10_000 {
                teams.clear();
            }
            teams.insert(namespace.to_owned(), (Instant::now(), team.clone()));
        }
        team
    }

    async fn read_team(&self, namespace: &str) -> Result<String, String> {
        let namespaces: Api<Namespace> = Api::all(self.kube.clone());
        let found = namespaces
            .get_opt(namespace)
            .await
            .map_err(|error| format!("cannot read namespace {namespace}: {error}"))?
            .ok_or_else(|| format!("namespace {namespace} does not exist"))?;
        found.metadata.labels.as_ref().and_then(|labels| labels.get(&self.team_label)).cloned().ok_or_else(|| {
            format!(
                "namespace {namespace} is not mapped to an Allot team: label it, \
                 `kubectl label namespace {namespace} {}=<team>`",
                self.team_label
            )
        })
    }

    /// Where the broker has this pod: its allocation found, or made now.
    pub async fn verdict_for(&self, pod: &Pod) -> Verdict {
        let Some(reference) = pod_ref(pod) else {
            return Verdict::Refused { reason: "the pod has no namespace, name or UID".into() };
        };
        let refuse = async |reason: String, event: &str| {
            self.event(pod, EventType::Warning, event, reason.clone()).await;
            Verdict::Refused { reason }
        };
        if !request::manages(&self.names, &containers(pod), &annotations(pod)) {
            return Verdict::Unmanaged;
        }
        let team = match self.team_of(&reference.namespace).await {
            Ok(team) => team,
            Err(reason) => return refuse(reason, "AllotNoTeam").await,
        };
        let spec = match request::spec_for(&self.names, &team, &reference, &containers(pod), &annotations(pod)) {
            Ok(spec) => spec,
            Err(problems) if problems == [request::NOT_OURS] => return Verdict::Unmanaged,
            Err(problems) => return refuse(problems.join("; "), "AllotInvalidRequest").await,
        };
        let gang = match request::gang_of(&annotations(pod)) {
            Ok(gang) => gang,
            Err(reason) => return refuse(reason, "AllotInvalidRequest").await,
        };
        let _one_at_a_time = self.creating.lock().await;
        if let Some(gang) = gang {
            return self.gang_verdict(pod, &reference, &team, &gang).await;
        }
        let found = match self.broker.find(&reference.owner()).await {
            Ok(found) => found,
            Err(error) => return refuse(error.to_string(), "AllotUnavailable").await,
        };
        let allocation = match found {
            Some(allocation) => allocation,
            None => match self.broker.create(spec, false).await {
                Ok(allocation) => {
                    tracing::info!(pod = %reference.owner(), allocation = %allocation.id, "created");
                    allocation
                }
                Err(error @ BrokerError::Unreachable { .. }) => {
                    return refuse(error.to_string(), "AllotUnavailable").await;
                }
                Err(BrokerError::Refused(reason)) => return refuse(reason, "AllotRefused").await,
            },
        };
        broker::verdict(&allocation)
    }

    /// A gang member's verdict. Its allocation, if the gang was placed; else the
    /// whole gang is placed now, every member with `no_wait`, or none is: what
    /// one member got is released when another cannot be placed, so a gang
    /// never holds GPUs it cannot use. Called with `creating` held.
    async fn gang_verdict(&self, pod: &Pod, reference: &PodRef, team: &str, gang: &request::Gang) -> Verdict {
        let refuse = async |reason: String, event: &str| {
            self.event(pod, EventType::Warning, event, reason.clone()).await;
            Verdict::Refused { reason }
        };
        match self.broker.find(&reference.owner()).await {
            Ok(Some(allocation)) => return broker::verdict(&allocation),
            Ok(None) => {}
            Err(error) => return refuse(error.to_string(), "AllotUnavailable").await,
        }
        let pods: Api<Pod> = Api::namespaced(self.kube.clone(), &reference.namespace);
        let members: Vec<Pod> = match pods.list(&kube::api::ListParams::default()).await {
            Ok(list) => list
                .items
                .into_iter()
                .filter(|member| {
                    annotations(member).get(request::GANG).map(|name| name.trim()) == Some(gang.name.as_str())
                        && member.metadata.deletion_timestamp.is_none()
                        && !matches!(
                            member.status.as_ref().and_then(|status| status.phase.as_deref()),
                            Some("Succeeded" | "Failed")
                        )
                })
                .collect(),
            Err(error) => return refuse(format!("cannot list the gang's pods: {error}"), "AllotUnavailable").await,
        };
        if members.len() < gang.size as usize {
            return Verdict::Refused {
                reason: format!(
                    "gang {}: {} of its {} pods exist; they start together once all do",
                    gang.name,
                    members.len(),
                    gang.size
                ),
            };
        }
        let mut made: Vec<String> = Vec::new();
        let mut failure = None;
        for member in &members {
            let Some(member_ref) = pod_ref(member) else { continue };
            match self.broker.find(&member_ref.owner()).await {
                Ok(Some(_)) => continue,
                Ok(None) => {}
                Err(error) => {
                    failure = Some(error.to_string());
                    break;
                }
            }
            let spec =
                match request::spec_for(&self.names, team, &member_ref, &containers(member), &annotations(member)) {
                    Ok(spec) => spec,
                    Err(problems) => {
                        failure = Some(format!("pod {}: {}", member_ref.name, problems.join("; ")));
                        break;
                    }
                };
            match self.broker.create(spec, true).await {
                Ok(allocation) => made.push(allocation.id),
                Err(error) => {
                    failure = Some(format!("pod {} cannot be placed now: {error}", member_ref.name));
                    break;
                }
            }
        }
        if let Some(reason) = failure {
            for id in &made {
                if let Err(error) = self.broker.release(id).await {
                    tracing::warn!(allocation = %id, %error, "cannot release a gang member's allocation");
                }
            }
            return Verdict::Refused {
                reason: format!(
                    "gang {} ({} pods) waits until all of them fit at once: {reason}",
                    gang.name,
                    members.len()
                ),
            };
        }
        tracing::info!(gang = %gang.name, members = members.len(), "gang placed");
        match self.broker.find(&reference.owner()).await {
            Ok(Some(allocation)) => broker::verdict(&allocation),
            Ok(None) => Verdict::Refused { reason: format!("gang {}: this pod's allocation vanished", gang.name) },
            Err(error) => refuse(error.to_string(), "AllotUnavailable").await,
        }
    }

    /// Binds a pod to the broker's node: annotate, then the binding subresource.
    pub async fn bind(&self, args: &ExtenderBindingArgs) -> Result<(), String> {
        let pods: Api<Pod> = Api::namespaced(self.kube.clone(), &args.pod_namespace);
        let pod = pods
            .get_opt(&args.pod_name)
            .await
            .map_err(|error| format!("cannot read pod {}/{}: {error}", args.pod_namespace, args.pod_name))?
            .ok_or_else(|| format!("pod {}/{} is gone", args.pod_namespace, args.pod_name))?;
        if pod.metadata.uid.as_deref() != Some(args.pod_uid.as_str()) {
            return Err(format!("pod {}/{} is another pod now (UID changed)", args.pod_namespace, args.pod_name));
        }
        if pod.spec.as_ref().and_then(|spec| spec.node_name.as_deref()) == Some(args.node.as_str()) {
            return Ok(()); // bound already: a retried bind
        }
        let reference =
            PodRef { namespace: args.pod_namespace.clone(), name: args.pod_name.clone(), uid: args.pod_uid.clone() };
        if !request::manages(&self.names, &containers(&pod), &annotations(&pod)) {
            // Nothing of Allot's to hold (a share the device plugin places): bind as chosen.
            return self.bind_to_node(&pods, args).await;
        }
        let allocation = {
            let _one_at_a_time = self.creating.lock().await;
            match self.broker.find(&reference.owner()).await.map_err(|error| error.to_string())? {
                Some(allocation) => allocation,
                None => {
                    // Filter never saw it: place it on this node now, or refuse.
                    let team = self.team_of(&args.pod_namespace).await?;
                    let mut spec =
                        request::spec_for(&self.names, &team, &reference, &containers(&pod), &annotations(&pod))
                            .map_err(|problems| problems.join("; "))?;
                    spec.pin = Some(allot_api::proto::Pin { node: args.node.clone(), devices: Vec::new() });
                    self.broker.create(spec, true).await.map_err(|error| error.to_string())?
                }
            }
        };
        match broker::verdict(&allocation) {
            Verdict::Placed { node, .. } if node == args.node => {}
            verdict => return Err(format!("cannot bind to {}: {}", args.node, verdict.reason())),
        }
        let patch = serde_json::json!({
            "metadata": { "annotations": {
                request::ALLOCATION: allocation.id,
                request::DEVICES: broker::devices(&allocation),
            } }
        });
        pods.patch_metadata(&args.pod_name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|error| format!("cannot annotate pod {}/{}: {error}", args.pod_namespace, args.pod_name))?;
        self.bind_to_node(&pods, args).await?;
        tracing::info!(pod = %reference.owner(), node = %args.node, allocation = %allocation.id, "bound");
        Ok(())
    }

    /// The `pods/binding` subresource: the pod is on `args.node` from now on.
    async fn bind_to_node(&self, pods: &Api<Pod>, args: &ExtenderBindingArgs) -> Result<(), String> {
        let binding = Binding {
            metadata: ObjectMeta {
                name: Some(args.pod_name.clone()),
                namespace: Some(args.pod_namespace.clone()),
                uid: Some(args.pod_uid.clone()),
                ..Default::default()
            },
            target: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some(args.node.clone()),
                ..Default::default()
            },
        };
        pods.create_subresource::<Binding, serde_json::Value>(
            "binding",
            &args.pod_name,
            &PostParams::default(),
            &binding,
        )
        .await
        .map_err(|error| {
            format!("cannot bind pod {}/{} to {}: {error}", args.pod_namespace, args.pod_name, args.node)
        })?;
        Ok(())
    }
}

/// The pod's namespace, name and UID.
pub fn pod_ref(pod: &Pod) -> Option<PodRef> {
    Some(PodRef {
        namespace: pod.metadata.namespace.clone()?,
        name: pod.metadata.name.clone()?,
        uid: pod.metadata.uid.clone()?,
    })
}

/// Per container, its limits (requests where a limit is absent), as quantities.
pub fn containers(pod: &Pod) -> Vec<request::Resources> {
    let Some(spec) = &pod.spec else { return Vec::new() };
    spec.containers
        .iter()
        .map(|container| {
            let mut resources = BTreeMap::new();
            if let Some(requirements) = &container.resources {
                for source in [&requirements.requests, &requirements.limits].into_iter().flatten() {
                    for (name, quantity) in source {
                        resources.insert(name.clone(), quantity.0.clone());
                    }
                }
            }
            resources
        })
        .collect()
}

pub fn annotations(pod: &Pod) -> BTreeMap<String, String> {
    pod.metadata.annotations.clone().unwrap_or_default()
}

/// Parses a request, or answers 400 naming the field that was wrong.
fn parse<T: serde::de::DeserializeOwned>(verb: &str, body: &[u8]) -> Result<T, Box<Response>> {
    let mut reader = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut reader).map_err(|error| {
        let path = error.path().to_string();
        let place = if path == "." { String::new() } else { format!(" at {path}") };
        let text = format!("extender {verb}: malformed request{place}: {}", error.inner());
        Box::new((StatusCode::BAD_REQUEST, text).into_response())
    })
}

async fn filter(State(app): State<App>, body: Bytes) -> Response {
    let args: ExtenderArgs = match parse("filter", &body) {
        Ok(args) => args,
        Err(response) => return *response,
    };
    let verdict = app.verdict_for(&args.pod).await;
    axum::Json(extender::filter(&args, &verdict)).into_response()
}

async fn prioritize(State(app): State<App>, body: Bytes) -> Response {
    let args: ExtenderArgs = match parse("prioritize", &body) {
        Ok(args) => args,
        Err(response) => return *response,
    };
    let placed = match pod_ref(&args.pod) {
        Some(reference) => match app.broker.find(&reference.owner()).await {
            Ok(Some(allocation)) => match broker::verdict(&allocation) {
                Verdict::Placed { node, .. } => Some(node),
                _ => None,
            },
            _ => None,
        },
        None => None,
    };
    axum::Json(extender::prioritize(&args.candidates(), placed.as_deref())).into_response()
}

async fn bind(State(app): State<App>, body: Bytes) -> Response {
    let args: ExtenderBindingArgs = match parse("bind", &body) {
        Ok(args) => args,
        Err(response) => return *response,
    };
    let error = match app.bind(&args).await {
        Ok(()) => String::new(),
        Err(error) => {
            tracing::warn!(pod = %format!("{}/{}", args.pod_namespace, args.pod_name), %error, "bind refused");
            error
        }
    };
    axum::Json(ExtenderBindingResult { error }).into_response()
}

/// The extender's HTTP routes: `filter`, `prioritize`, `bind` under the root,
/// as the scheduler configuration's `urlPrefix` names them, and `/healthz`.
pub fn router(app: App) -> Router {
    Router::new()
        .route("/filter", post(filter))
        .route("/prioritize", post(prioritize))
        .route("/bind", post(bind))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(app)
}
