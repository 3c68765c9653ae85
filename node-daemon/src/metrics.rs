//! Per-GPU telemetry on `/metrics` (`allot-node run --metrics-listen ADDR`),
//! under the names and labels dcgm-exporter users know where they overlap
//! (`DCGM_FI_DEV_GPU_TEMP{gpu, UUID, device, modelName, Hostname}`), plus what
//! only Allot knows (`allot_node_gpu_healthy`, `allot_node_xid_events_total`).
//! Values are those of the latest heartbeat's discovery; a GPU NVML cannot
//! read has no telemetry series, only its health.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use allot_api::topology::{GpuHealth, NodeInventory, ThrottleReason};
use allot_telemetry::Telemetry;
use allot_telemetry::opentelemetry::KeyValue;

/// What the gauges read: the latest inventory and the Xid events seen.
#[derive(Debug, Default)]
pub struct NodeMetrics {
    hostname: String,
    latest: Mutex<Option<NodeInventory>>,
    /// Per GPU index: Xid events counted, and the last Xid.
    xids: Mutex<BTreeMap<u32, (u64, u64)>>,
}

/// NVML's clock event reason bits (`nvmlClocksEventReason*`), as dcgm-exporter
/// reports them in `DCGM_FI_DEV_CLOCK_THROTTLE_REASONS`.
fn reason_bit(reason: ThrottleReason) -> u64 {
    match reason {
        ThrottleReason::GpuIdle => 0x1,
        ThrottleReason::ApplicationsClocksSetting => 0x2,
        ThrottleReason::SwPowerCap => 0x4,
        ThrottleReason::HwSlowdown => 0x8,
        ThrottleReason::SyncBoost => 0x10,
        ThrottleReason::SwThermalSlowdown => 0x20,
        ThrottleReason::HwThermalSlowdown => 0x40,
        ThrottleReason::HwPowerBrakeSlowdown => 0x80,
        ThrottleReason::DisplayClockSetting => 0x100,
    }
}

impl NodeMetrics {
    pub fn new(hostname: &str) -> Arc<NodeMetrics> {
        Arc::new(NodeMetrics { hostname: hostname.to_owned(), ..NodeMetrics::default() })
    }

    /// The inventory of the latest discovery (with health overlaid).
    pub fn inventory(&self, inventory: &NodeInventory) {
        if let Ok(mut latest) = self.latest.lock() {
            *latest = Some(inventory.clone());
        }
    }

    /// An Xid event on GPU `gpu`.
    pub fn xid(&self, gpu: u32, xid: u64) {
        if let Ok(mut xids) = self.xids.lock() {
            let entry = xids.entry(gpu).or_default();
            entry.0 += 1;
            entry.1 = xid;
        }
    }

    /// dcgm-exporter's labels for each GPU, by index.
    fn labels(&self, inventory: &NodeInventory) -> BTreeMap<u32, Vec<KeyValue>> {
        inventory
            .gpus
            .iter()
            .map(|gpu| {
                let labels = vec![
                    KeyValue::new("gpu", gpu.index.to_string()),
                    KeyValue::new("UUID", gpu.uuid.clone().unwrap_or_default()),
                    KeyValue::new("device", format!("nvidia{}", gpu.index)),
                    KeyValue::new("modelName", gpu.model.clone()),
                    KeyValue::new("Hostname", self.hostname.clone()),
                ];
                (gpu.index, labels)
            })
            .collect()
    }

    /// Points of one gauge: each GPU's value, where it has one.
    fn points(&self, value: impl Fn(&allot_api::topology::Gpu) -> Option<f64>) -> Vec<(f64, Vec<KeyValue>)> {
        let Ok(latest) = self.latest.lock() else { return Vec::new() };
        let Some(inventory) = latest.as_ref() else { return Vec::new() };
        let labels = self.labels(inventory);
        inventory.gpus.iter().filter_map(|gpu| Some((value(gpu)?, labels.get(&gpu.index)?.clone()))).collect()
    }

    /// Registers the gauges with the global meter.
    pub fn register(self: &Arc<Self>) {
        let meter = allot_telemetry::opentelemetry::global::meter("allot-node");
        type Read = fn(&allot_api::topology::Gpu) -> Option<f64>;
        let gauges: [(&'static str, &'static str, Read); 7] = [
            ("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %).", |gpu| {
                gpu.telemetry.as_ref()?.utilization_pct.map(f64::from)
            }),
            ("DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB).", |gpu| {
                gpu.telemetry.as_ref()?.memory_used_mib.map(|used| used.0 as f64)
            }),
            ("DCGM_FI_DEV_FB_FREE", "Framebuffer memory free (in MiB).", |gpu| {
                let used = gpu.telemetry.as_ref()?.memory_used_mib?.0;
                Some(gpu.memory_mib?.0.saturating_sub(used) as f64)
            }),
            ("DCGM_FI_DEV_GPU_TEMP", "GPU temperature (in C).", |gpu| {
                gpu.telemetry.as_ref()?.temperature_c.map(f64::from)
            }),
            ("DCGM_FI_DEV_POWER_USAGE", "Power draw (in W).", |gpu| {
                gpu.telemetry.as_ref()?.power_draw_mw.map(|mw| f64::from(mw) / 1000.0)
            }),
            ("DCGM_FI_DEV_CLOCK_THROTTLE_REASONS", "Throttling reasons (NVML clock event reason bits).", |gpu| {
                let reasons = &gpu.telemetry.as_ref()?.throttle_reasons;
                Some(reasons.iter().map(|reason| reason_bit(*reason)).fold(0, |bits, bit| bits | bit) as f64)
            }),
            ("allot_node_gpu_healthy", "1 when the GPU is healthy, 0 when Allot keeps work off it.", |gpu| {
                Some(if matches!(gpu.health, GpuHealth::Healthy) { 1.0 } else { 0.0 })
            }),
        ];
        for (name, description, read) in gauges {
            let metrics = Arc::clone(self);
            meter
                .f64_observable_gauge(name)
                .with_description(description)
                .with_callback(move |observer| {
                    for (value, labels) in metrics.points(read) {
                        observer.observe(value, &labels);
                    }
                })
                .build();
        }
        let xids = |this: &NodeMetrics, pick: fn(&(u64, u64)) -> u64| -> Vec<(u64, Vec<KeyValue>)> {
            let Ok(latest) = this.latest.lock() else { return Vec::new() };
            let Some(inventory) = latest.as_ref() else { return Vec::new() };
            let labels = this.labels(inventory);
            let Ok(xids) = this.xids.lock() else { return Vec::new() };
            labels.into_iter().map(|(index, labels)| (xids.get(&index).map(pick).unwrap_or(0), labels)).collect()
        };
        let metrics = Arc::clone(self);
        meter
            .u64_observable_gauge("DCGM_FI_DEV_XID_ERRORS")
            .with_description("Value of the last XID error encountered.")
            .with_callback(move |observer| {
                for (value, labels) in xids(&metrics, |(_, last)| *last) {
                    observer.observe(value, &labels);
                }
            })
            .build();
        let metrics = Arc::clone(self);
        meter
            .u64_observable_counter("allot_node_xid_events")
            .with_description("Xid events seen on the GPU since allot-node started.")
            .with_callback(move |observer| {
                for (value, labels) in xids(&metrics, |(count, _)| *count) {
                    observer.observe(value, &labels);
                }
            })
            .build();
    }
}

/// Serves `/metrics` on `listen`; returns the bound address.
pub async fn serve(listen: SocketAddr, telemetry: Arc<Telemetry>) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let address = listener.local_addr()?;
    let router = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let telemetry = Arc::clone(&telemetry);
                async move { telemetry.render() }
            }),
        )
        .route("/healthz", axum::routing::get(|| async { "ok\n" }));
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router).await {
            tracing::warn!(%error, "the metrics endpoint stopped");
        }
    });
    Ok(address)
}
