//! allot-node: maps the GPU server it runs on (hwloc, NVML, sysfs) and enforces
//! the broker's decisions on it (cgroups, MIG instances, device environment).

pub mod agent;
pub mod cli;
pub mod discovery;
pub mod enforce;
pub mod exec;
pub mod fixtures;
pub mod kubelet;
pub mod metrics;
pub mod publish;
pub mod render;
