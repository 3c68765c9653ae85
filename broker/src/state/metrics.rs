//! What the broker measures. Counters the writer updates (read by `/metrics`
//! as OpenTelemetry observable counters), and latency histograms recorded
//! where the work happens: every gRPC call, every placement decision, every
//! store transaction, and the wait of every request admitted from the queue.
//!
//! The histograms come from the process's global OpenTelemetry meter, taken on
//! first use: `serve` installs the real one before anything records (in unit
//! tests and benchmarks they are no-ops).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use allot_telemetry::LATENCY_BUCKETS;
use allot_telemetry::opentelemetry::metrics::Histogram;

/// Counters the writer updates.
#[derive(Debug, Default)]
pub struct Metrics {
    pub(crate) batches: AtomicU64,
    pub(crate) commands: AtomicU64,
    pub(crate) writes: AtomicU64,
}

impl Metrics {
    pub fn batch(&self, commands: usize, writes: usize) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.commands.fetch_add(commands as u64, Ordering::Relaxed);
        self.writes.fetch_add(writes as u64, Ordering::Relaxed);
    }

    pub fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }

    pub fn commands(&self) -> u64 {
        self.commands.load(Ordering::Relaxed)
    }

    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }
}

/// Latency histograms, in seconds (Prometheus names end in `_seconds`).
#[derive(Debug)]
pub struct Histograms {
    /// `allot_rpc_duration_seconds{rpc}`: gRPC calls, by method (`AllocationService/Create`).
    pub rpc: Histogram<f64>,
    /// `allot_placement_duration_seconds{path}`: one placement decision, through
    /// the index (`index`) or the exhaustive engine (`engine`).
    pub placement: Histogram<f64>,
    /// `allot_store_txn_duration_seconds`: one fenced store transaction of the writer.
    pub store_txn: Histogram<f64>,
    /// `allot_queue_wait_seconds`: from create to admission, for requests that waited.
    pub queue_wait: Histogram<f64>,
}

/// The broker's histograms.
pub fn histograms() -> &'static Histograms {
    static HISTOGRAMS: OnceLock<Histograms> = OnceLock::new();
    HISTOGRAMS.get_or_init(|| {
        let meter = allot_telemetry::opentelemetry::global::meter("allot-broker");
        let histogram = |name: &'static str, description: &'static str| {
            meter
                .f64_histogram(name)
                .with_unit("s")
                .with_description(description)
                .with_boundaries(LATENCY_BUCKETS.to_vec())
                .build()
        };
        Histograms {
            rpc: histogram("allot_rpc_duration", "gRPC calls, by method, until the answer starts."),
            placement: histogram("allot_placement_duration", "Placement decisions, by path (index or engine)."),
            store_txn: histogram("allot_store_txn_duration", "The writer's fenced store transactions."),
            queue_wait: histogram("allot_queue_wait", "Time in the queue of requests admitted after waiting."),
        }
    })
}
