//! A small HTTP endpoint: `/healthz`, `/readyz` and Prometheus `/metrics`.
//!
//! Metric names and labels are an API; each is documented where it is written.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use allot_api::allocation::AllocationState;
use allot_placement::NodeStatus;
use axum::Router;
use axum::extract::State;
use axum::routing::get;

use crate::service::auth::Auth;
use crate::writer::Core;

pub fn router(core: Arc<Core>, auth: Arc<Auth>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(|| async { "ready\n" }))
        .route("/metrics", get(metrics))
        .layer(axum::middleware::from_fn_with_state(auth, authorize))
        .with_state(core)
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

async fn metrics(State(core): State<Arc<Core>>) -> String {
    let mut out = String::new();
    let state = core.state();
    // allot_nodes{status}: nodes the broker knows, by status.
    out.push_str("# HELP allot_nodes Nodes known to the broker, by status.\n# TYPE allot_nodes gauge\n");
    for (label, status) in [("ready", NodeStatus::Ready), ("lost", NodeStatus::Lost)] {
        let count = state.nodes().values().filter(|entry| entry.status == status).count();
        out.push_str(&format!("allot_nodes{{status=\"{label}\"}} {count}\n"));
    }
    // allot_allocations{state}: allocations by lifecycle state.
    out.push_str("# HELP allot_allocations Allocations by state.\n# TYPE allot_allocations gauge\n");
    for state_value in [
        AllocationState::Pending,
        AllocationState::Bound,
        AllocationState::Enforced,
        AllocationState::Released,
        AllocationState::Lost,
        AllocationState::Preempted,
    ] {
        out.push_str(&format!(
            "allot_allocations{{state=\"{}\"}} {}\n",
            state_value.as_str(),
            state.count_in_state(state_value)
        ));
    }
    // allot_gpus{use}: GPUs in the cluster, and those holding any allocation.
    let total: usize = state.nodes().values().map(|entry| entry.record.inventory.gpus.len()).sum();
    let used: usize = state
        .nodes()
        .values()
        .map(|entry| entry.record.inventory.gpus.iter().filter(|gpu| entry.usage.gpu_in_use(gpu.index)).count())
        .sum();
    out.push_str(
        "# HELP allot_gpus GPUs in the cluster (total) and holding an allocation (used).\n# TYPE allot_gpus gauge\n",
    );
    out.push_str(&format!("allot_gpus{{use=\"total\"}} {total}\nallot_gpus{{use=\"used\"}} {used}\n"));
    // allot_queue_pending: requests waiting for capacity or quota.
    out.push_str("# HELP allot_queue_pending Requests waiting in the queue.\n# TYPE allot_queue_pending gauge\n");
    out.push_str(&format!("allot_queue_pending {}\n", state.queue.len()));
    // allot_team_gpus{team,kind}: per leaf team, GPU units (compute) in use and
    // guaranteed (its own declaration; 0 when an ancestor holds the guarantee).
    out.push_str(
        "# HELP allot_team_gpus GPU units per team: used, and guaranteed by its own quota.\n# TYPE allot_team_gpus gauge\n",
    );
    for spec in state.tree.teams().filter(|spec| state.tree.is_leaf(&spec.name)) {
        let used = state.team_usage.get(&spec.name).map_or(0, |usage| usage.get(&allot_policy::ResourceClass::GpuAny));
        let guaranteed = spec.quota.guaranteed.get(&allot_policy::ResourceClass::GpuAny);
        out.push_str(&format!(
            "allot_team_gpus{{team=\"{}\",kind=\"used\"}} {}\nallot_team_gpus{{team=\"{}\",kind=\"guaranteed\"}} {}\n",
            spec.name,
            used as f64 / 1000.0,
            spec.name,
            guaranteed as f64 / 1000.0
        ));
    }
    // allot_reclaiming: allocations marked for reclaim, not preempted yet.
    out.push_str("# HELP allot_reclaiming Allocations being reclaimed.\n# TYPE allot_reclaiming gauge\n");
    out.push_str(&format!("allot_reclaiming {}\n", state.reclaiming().count()));
    // allot_learned_requests: requests the share packing's task mix has counted.
    out.push_str(
        "# HELP allot_learned_requests Requests counted in the learned task mix.\n# TYPE allot_learned_requests gauge\n",
    );
    out.push_str(&format!("allot_learned_requests {}\n", state.learned_mix.seen()));
    drop(state);
    // allot_writer_*: the group-commit writer.
    let metrics = &core.metrics;
    out.push_str(
        "# HELP allot_writer_batches_total Batches the writer persisted.\n# TYPE allot_writer_batches_total counter\n",
    );
    out.push_str(&format!("allot_writer_batches_total {}\n", metrics.batches.load(Ordering::Relaxed)));
    out.push_str("# HELP allot_writer_commands_total Commands in persisted batches.\n# TYPE allot_writer_commands_total counter\n");
    out.push_str(&format!("allot_writer_commands_total {}\n", metrics.commands.load(Ordering::Relaxed)));
    out.push_str("# HELP allot_writer_writes_total Store writes in persisted batches.\n# TYPE allot_writer_writes_total counter\n");
    out.push_str(&format!("allot_writer_writes_total {}\n", metrics.writes.load(Ordering::Relaxed)));
    out
}
