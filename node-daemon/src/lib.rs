//! allot-node: maps the GPU server it runs on (hwloc, NVML, sysfs) and, later,
//! enforces the broker's decisions on it.

pub mod agent;
pub mod cli;
pub mod discovery;
pub mod fixtures;
pub mod render;
