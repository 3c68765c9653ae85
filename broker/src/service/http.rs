//! A small HTTP endpoint: `/healthz`, `/readyz` and Prometheus `/metrics`.
//!
//! Metrics go through OpenTelemetry (`allot_telemetry`): the gauges below are
//! observed from the state when `/metrics` is read; the latency histograms are
//! recorded where the work happens (`state::metrics`). Metric names and labels
//! are an API; each is documented where it is made.

use std::sync::Arc;

use allot_api::allocation::AllocationState;
use allot_placement::NodeStatus;
use allot_telemetry::Telemetry;
use allot_telemetry::opentelemetry::KeyValue;
use allot_telemetry::opentelemetry::metrics::Meter;
use axum::Router;
use axum::extract::State;
use axum::routing::get;

use crate::service::auth::Auth;
use crate::writer::Core;

pub fn router(telemetry: Arc<Telemetry>, auth: Arc<Auth>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(|| async { "ready\n" }))
        .route("/metrics", get(metrics))
        .layer(axum::middleware::from_fn_with_state(auth, authorize))
        .with_state(telemetry)
}

/// Every route is checked like a gRPC call (`GET /metrics` needs a viewer;
/// the health routes are open to everyone through the `guest` permission).
async fn authorize(
    State(auth): State<Arc<Auth>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let call = format!("{} {}", request.method(), request.uri().path());
    let header = request.headers().get("authorization").and_then(|value| value.to_str().ok());
    let checked = auth.identify(header, None).and_then(|caller| auth.check(&caller, &call, None));
    match checked {
        Ok(()) => next.run(request).await,
        Err(error) => {
            let status = match error {
                crate::error::BrokerError::Unauthenticated(_) => axum::http::StatusCode::UNAUTHORIZED,
                _ => axum::http::StatusCode::FORBIDDEN,
            };
            (status, format!("{error}\n")).into_response()
        }
    }
}

async fn metrics(State(telemetry): State<Arc<Telemetry>>) -> String {
    telemetry.render()
}

/// A gauge observed from the state at each read of `/metrics`.
fn gauge(
    meter: &Meter,
    core: &Arc<Core>,
    name: &'static str,
    description: &'static str,
    observe: impl Fn(&crate::state::ClusterState) -> Vec<(f64, Vec<KeyValue>)> + Send + Sync + 'static,
) {
    let core = Arc::clone(core);
    meter
        .f64_observable_gauge(name)
        .with_description(description)
        .with_callback(move |observer| {
            let points = observe(&core.state());
            for (value, labels) in points {
                observer.observe(value, &labels);
            }
        })
        .build();
}

/// Registers the broker's gauges and counters with the global meter.
pub fn register_metrics(core: &Arc<Core>) {
    let meter = allot_telemetry::opentelemetry::global::meter("allot-broker");
    gauge(&meter, core, "allot_nodes", "Nodes known to the broker, by status.", |state| {
        [("ready", NodeStatus::Ready), ("lost", NodeStatus::Lost)]
            .into_iter()
            .map(|(label, status)| {
                let count = state.nodes().values().filter(|entry| entry.status == status).count();
                (count as f64, vec![KeyValue::new("status", label)])
            })
            .collect()
    });
    gauge(&meter, core, "allot_allocations", "Allocations by state.", |state| {
        [
            AllocationState::Pending,
            AllocationState::Bound,
            AllocationState::Enforced,
            AllocationState::Released,
            AllocationState::Lost,
            AllocationState::Preempted,
        ]
        .into_iter()
        .map(|value| (state.count_in_state(value) as f64, vec![KeyValue::new("state", value.as_str())]))
        .collect()
    });
    gauge(&meter, core, "allot_gpus", "GPUs in the cluster (total) and holding an allocation (used).", |state| {
        let total: usize = state.nodes().values().map(|entry| entry.record.inventory.gpus.len()).sum();
        let used: usize = state
            .nodes()
            .values()
            .map(|entry| entry.record.inventory.gpus.iter().filter(|gpu| entry.usage.gpu_in_use(gpu.index)).count())
            .sum();
        vec![(total as f64, vec![KeyValue::new("use", "total")]), (used as f64, vec![KeyValue::new("use", "used")])]
    });
    gauge(&meter, core, "allot_queue_pending", "Requests waiting in the queue.", |state| {
        vec![(state.queue.len() as f64, Vec::new())]
    });
    // Per leaf team, GPU units in use and guaranteed by its own quota (0 when an
    // ancestor holds the guarantee).
    gauge(&meter, core, "allot_team_gpus", "GPU units per team: used, and guaranteed by its own quota.", |state| {
        let mut points = Vec::new();
        for spec in state.tree.teams().filter(|spec| state.tree.is_leaf(&spec.name)) {
            let used =
                state.team_usage.get(&spec.name).map_or(0, |usage| usage.get(&allot_policy::ResourceClass::GpuAny));
            let guaranteed = spec.quota.guaranteed.get(&allot_policy::ResourceClass::GpuAny);
            let team = spec.name.to_string();
            points
                .push((used as f64 / 1000.0, vec![KeyValue::new("team", team.clone()), KeyValue::new("kind", "used")]));
            points.push((
                guaranteed as f64 / 1000.0,
                vec![KeyValue::new("team", team), KeyValue::new("kind", "guaranteed")],
            ));
        }
        points
    });
    gauge(&meter, core, "allot_reclaiming", "Allocations being reclaimed.", |state| {
        vec![(state.reclaiming().count() as f64, Vec::new())]
    });
    gauge(&meter, core, "allot_learned_requests", "Requests counted in the learned task mix.", |state| {
        vec![(state.learned_mix.seen() as f64, Vec::new())]
    });
    // allot_writer_*_total: the group-commit writer.
    for (name, description, read) in [
        (
            "allot_writer_batches",
            "Batches the writer persisted.",
            crate::state::metrics::Metrics::batches as fn(&_) -> u64,
        ),
        ("allot_writer_commands", "Commands in persisted batches.", crate::state::metrics::Metrics::commands),
        ("allot_writer_writes", "Store writes in persisted batches.", crate::state::metrics::Metrics::writes),
    ] {
        let core = Arc::clone(core);
        meter
            .u64_observable_counter(name)
            .with_description(description)
            .with_callback(move |observer| observer.observe(read(&core.metrics), &[]))
            .build();
    }
}

/// Times every gRPC call into `allot_rpc_duration_seconds{rpc}` (until the
/// answer starts; a stream's life is not counted). Unknown paths count as
/// `unknown`, so callers cannot grow the label set.
#[derive(Debug, Clone)]
pub struct TimedLayer;

impl<S> tower::Layer<S> for TimedLayer {
    type Service = Timed<S>;
    fn layer(&self, inner: S) -> Timed<S> {
        Timed { inner }
    }
}

#[derive(Debug, Clone)]
pub struct Timed<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for Timed<S>
where
    S: tower::Service<http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let call = request.uri().path().strip_prefix("/allot.v1.").unwrap_or_default();
        let rpc = if allot_policy::authz::rule_for(call).is_some() { call.to_owned() } else { "unknown".to_owned() };
        let started = std::time::Instant::now();
        let future = self.inner.call(request);
        Box::pin(async move {
            let answer = future.await;
            crate::state::metrics::histograms()
                .rpc
                .record(started.elapsed().as_secs_f64(), &[KeyValue::new("rpc", rpc)]);
            answer
        })
    }
}
