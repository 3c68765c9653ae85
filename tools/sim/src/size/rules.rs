//! Sizing rules: what a buyer expects of a GPU server besides its GPUs. Each rule
//! has an id, a threshold and a source; docs/sizing.md lists them.

use serde::Serialize;

use super::catalog::{Cooling, ServerModel};

/// A rule a server breaks, with what it has and what the rule asks.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Violation {
    pub rule: &'static str,
    pub message: String,
}

/// The rules, for docs and reports: id, threshold, why.
pub const RULES: &[(&str, &str)] = &[
    ("cpu-per-gpu", "at least 2 CPU cores (4 threads) per GPU"),
    ("cpu-preprocessing", "at least 4 CPU cores per GPU when jobs preprocess data on the CPU during training"),
    ("host-memory", "host memory at least the GPUs' total memory"),
    ("nvme", "NVMe storage for data loading (more than 0 TB)"),
    ("power-cooling", "rated power and cooling at least the GPUs' power + 10% for the system + 10% margin"),
    (
        "air-cooling",
        "3 or more GPUs need a GPU server chassis or liquid cooling, not open-air cards in a workstation case",
    ),
    ("rdma-per-gpu", "one RDMA NIC per GPU for multi-node training"),
];

/// The rules `server` breaks, in the order of [`RULES`].
pub fn check(server: &ServerModel) -> Vec<Violation> {
    let mut broken = Vec::new();
    let gpus = f64::from(server.gpu_count);
    let cores_per_gpu = f64::from(server.cpu_cores) / gpus;
    if cores_per_gpu < 2.0 {
        broken.push(Violation {
            rule: "cpu-per-gpu",
            message: format!(
                "{} cores for {} GPUs is {cores_per_gpu:.1} per GPU; at least 2 cores (4 threads) per GPU keep data loading off the critical path: {} cores",
                server.cpu_cores,
                server.gpu_count,
                2 * u32::from(server.gpu_count)
            ),
        });
    } else if cores_per_gpu < 4.0 {
        broken.push(Violation {
            rule: "cpu-preprocessing",
            message: format!(
                "{cores_per_gpu:.1} cores per GPU; jobs that preprocess on the CPU during training (vision data loaders) want 4 or more: {} cores",
                4 * u32::from(server.gpu_count)
            ),
        });
    }
    let gpu_memory = gpus * server.gpu_memory_gib;
    if server.memory_gib < gpu_memory {
        broken.push(Violation {
            rule: "host-memory",
            message: format!(
                "{} GiB of host memory for {gpu_memory} GiB of GPU memory; host memory should be at least the GPUs' total",
                server.memory_gib
            ),
        });
    }
    if server.nvme_tb <= 0.0 {
        broken.push(Violation {
            rule: "nvme",
            message: "no NVMe: data loading from network or SATA storage starves the GPUs; add local NVMe".into(),
        });
    }
    let needed_kw = gpus * server.gpu_power_w * 1.1 * 1.1 / 1000.0;
    if server.max_power_kw < needed_kw {
        broken.push(Violation {
            rule: "power-cooling",
            message: format!(
                "rated for {} kW, but {} GPUs of {} W need {needed_kw:.2} kW with 10% for the system and 10% margin; GPUs throttle from about 80 °C",
                server.max_power_kw, server.gpu_count, server.gpu_power_w
            ),
        });
    }
    if server.gpu_count >= 3 && server.cooling == Cooling::WorkstationAir {
        broken.push(Violation {
            rule: "air-cooling",
            message: format!(
                "{} open-air GPUs in a workstation case heat each other past 80 °C and throttle; use blower-style cards in a GPU server chassis, or liquid cooling",
                server.gpu_count
            ),
        });
    }
    if server.rdma_nics < u32::from(server.gpu_count) {
        broken.push(Violation {
            rule: "rdma-per-gpu",
            message: format!(
                "{} RDMA NICs for {} GPUs: fine for single-node jobs and inference, but multi-node training wants one per GPU",
                server.rdma_nics, server.gpu_count
            ),
        });
    }
    broken
}
