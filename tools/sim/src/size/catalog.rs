//! The server catalog of the sizing tool: server models with their GPUs, CPU,
//! memory, storage, network, power and price, read from TOML in two stages (a raw
//! serde struct that refuses unknown fields, then a validated one), with errors
//! that name the file, the entry and the field.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::SizeError;

/// The catalog shipped with Allot; every figure in it names its source.
pub const DEFAULT_CATALOG: &str = include_str!("default-catalog.toml");

/// A GPU model the sizing tool knows: memory and board power from
/// `shared/reference/gpu.md` (NVIDIA's datasheets).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GpuModel {
    pub name: &'static str,
    pub memory_gib: f64,
    pub power_w: f64,
}

/// Every GPU model a catalog entry may name.
pub const GPU_MODELS: &[GpuModel] = &[
    GpuModel { name: "A100-SXM-40GB", memory_gib: 40.0, power_w: 400.0 },
    GpuModel { name: "A100-PCIe-40GB", memory_gib: 40.0, power_w: 250.0 },
    GpuModel { name: "A100-SXM-80GB", memory_gib: 80.0, power_w: 400.0 },
    GpuModel { name: "A100-PCIe-80GB", memory_gib: 80.0, power_w: 300.0 },
    GpuModel { name: "H100-SXM-80GB", memory_gib: 80.0, power_w: 700.0 },
    GpuModel { name: "H100-PCIe-80GB", memory_gib: 80.0, power_w: 350.0 },
    GpuModel { name: "H200-SXM-141GB", memory_gib: 141.0, power_w: 700.0 },
    GpuModel { name: "B200-180GB", memory_gib: 180.0, power_w: 1000.0 },
    GpuModel { name: "L40S-48GB", memory_gib: 48.0, power_w: 350.0 },
    GpuModel { name: "L4-24GB", memory_gib: 24.0, power_w: 72.0 },
    GpuModel { name: "A10-24GB", memory_gib: 24.0, power_w: 150.0 },
    GpuModel { name: "A30-24GB", memory_gib: 24.0, power_w: 165.0 },
];

/// How the GPUs of a server talk to each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Interconnect {
    Nvswitch,
    Nvlink,
    Pcie,
}

/// How the chassis is cooled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Cooling {
    /// A GPU server chassis designed for its GPUs' airflow (passive cards, high
    /// static-pressure fans).
    ServerAir,
    Liquid,
    /// A desktop or workstation case with open-air cards.
    WorkstationAir,
}

/// One catalog entry as written in the file; every field is required.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    name: Option<String>,
    description: Option<String>,
    gpu_model: Option<String>,
    gpu_count: Option<i64>,
    gpu_memory_gib: Option<f64>,
    interconnect: Option<Interconnect>,
    cpu_cores: Option<i64>,
    memory_gib: Option<f64>,
    nvme_tb: Option<f64>,
    rdma_nics: Option<i64>,
    nic_gbps: Option<f64>,
    cooling: Option<Cooling>,
    max_power_kw: Option<f64>,
    price_usd: Option<f64>,
    sources: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalog {
    server: Vec<RawServer>,
}

/// One validated server model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServerModel {
    pub name: String,
    pub description: String,
    pub gpu_model: String,
    pub gpu_count: u8,
    pub gpu_memory_gib: f64,
    /// Board power of one GPU, from [`GPU_MODELS`].
    pub gpu_power_w: f64,
    pub interconnect: Interconnect,
    pub cpu_cores: u32,
    pub memory_gib: f64,
    pub nvme_tb: f64,
    pub rdma_nics: u32,
    pub nic_gbps: f64,
    pub cooling: Cooling,
    pub max_power_kw: f64,
    pub price_usd: f64,
    pub sources: Vec<String>,
}

/// A validated catalog: at least one server, names unique.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Catalog {
    pub servers: Vec<ServerModel>,
}

/// Reads a catalog file.
pub fn read_catalog(path: &Path) -> Result<Catalog, SizeError> {
    let text = std::fs::read_to_string(path).map_err(|source| SizeError::Io { path: path.to_owned(), source })?;
    parse_catalog(path, &text)
}

/// The line (1-based) of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes().iter().take(offset).filter(|byte| **byte == b'\n').count() + 1
}

/// Where the `index`th `[[server]]` header is, for messages.
fn entry_line(text: &str, index: usize) -> usize {
    text.match_indices("[[server]]").nth(index).map(|(offset, _)| line_of(text, offset)).unwrap_or(1)
}

/// The line of `field = ...` inside the `index`th entry, else the entry's line.
fn field_line(text: &str, index: usize, field: &str) -> usize {
    let start = entry_line(text, index);
    for (number, line) in text.lines().enumerate().skip(start) {
        let line = line.trim_start();
        if line.starts_with('[') {
            break;
        }
        if let Some(rest) = line.strip_prefix(field)
            && rest.trim_start().starts_with('=')
        {
            return number + 1;
        }
    }
    start
}

/// Parses and validates a catalog; `path` is only for messages.
pub fn parse_catalog(path: &Path, text: &str) -> Result<Catalog, SizeError> {
    let raw: RawCatalog = toml::from_str(text).map_err(|error| {
        let line = error.span().map(|span| line_of(text, span.start)).unwrap_or(1);
        SizeError::Catalog {
            path: path.to_owned(),
            line,
            entry: String::new(),
            message: error.message().replace('\n', " "),
        }
    })?;
    if raw.server.is_empty() {
        return Err(SizeError::Catalog {
            path: path.to_owned(),
            line: 1,
            entry: String::new(),
            message: "no servers; add at least one [[server]] entry".into(),
        });
    }
    let mut servers: Vec<ServerModel> = Vec::with_capacity(raw.server.len());
    for (index, entry) in raw.server.into_iter().enumerate() {
        let name = entry.name.clone().unwrap_or_default();
        let label = if name.is_empty() { format!("server #{}", index + 1) } else { format!("server {name:?}") };
        let fail = |field: &str, message: String| SizeError::Catalog {
            path: path.to_owned(),
            line: field_line(text, index, field),
            entry: label.clone(),
            message: format!("field {field}: {message}"),
        };
        let missing = |field: &str| fail(field, "missing; every server needs it".into());
        let name = entry.name.filter(|name| !name.trim().is_empty()).ok_or_else(|| missing("name"))?;
        if servers.iter().any(|server| server.name == name) {
            return Err(fail("name", format!("{name:?} is used by an earlier entry; names must be unique")));
        }
        let description = entry.description.ok_or_else(|| missing("description"))?;
        let gpu_model_name = entry.gpu_model.ok_or_else(|| missing("gpu_model"))?;
        let Some(gpu_model) = GPU_MODELS.iter().find(|model| model.name == gpu_model_name) else {
            let known: Vec<&str> = GPU_MODELS.iter().map(|model| model.name).collect();
            return Err(fail(
                "gpu_model",
                format!("unknown GPU model {gpu_model_name:?}; known: {}", known.join(", ")),
            ));
        };
        let count = |field: &str, value: Option<i64>, min: i64, max: i64| -> Result<i64, SizeError> {
            let value = value.ok_or_else(|| missing(field))?;
            if value < min || value > max {
                return Err(fail(field, format!("{value} is out of range; expected {min} to {max}")));
            }
            Ok(value)
        };
        let amount = |field: &str, value: Option<f64>, zero_ok: bool| -> Result<f64, SizeError> {
            let value = value.ok_or_else(|| missing(field))?;
            if !value.is_finite() || value < 0.0 || (!zero_ok && value == 0.0) {
                let expected = if zero_ok { "0 or more" } else { "more than 0" };
                return Err(fail(field, format!("{value} is not allowed; expected a number {expected}")));
            }
            Ok(value)
        };
        let gpu_count = count("gpu_count", entry.gpu_count, 1, 16)? as u8;
        let gpu_memory_gib = amount("gpu_memory_gib", entry.gpu_memory_gib, false)?;
        if (gpu_memory_gib - gpu_model.memory_gib).abs() > 1.0 {
            return Err(fail(
                "gpu_memory_gib",
                format!("{gpu_memory_gib} GiB, but a {} has {} GiB", gpu_model.name, gpu_model.memory_gib),
            ));
        }
        let interconnect = entry.interconnect.ok_or_else(|| missing("interconnect"))?;
        let cpu_cores = count("cpu_cores", entry.cpu_cores, 1, 4096)? as u32;
        let memory_gib = amount("memory_gib", entry.memory_gib, false)?;
        let nvme_tb = amount("nvme_tb", entry.nvme_tb, true)?;
        let rdma_nics = count("rdma_nics", entry.rdma_nics, 0, 64)? as u32;
        let nic_gbps = amount("nic_gbps", entry.nic_gbps, true)?;
        let cooling = entry.cooling.ok_or_else(|| missing("cooling"))?;
        let max_power_kw = amount("max_power_kw", entry.max_power_kw, false)?;
        let price_usd = amount("price_usd", entry.price_usd, false)?;
        let sources = entry.sources.filter(|sources| !sources.is_empty()).ok_or_else(|| missing("sources"))?;
        servers.push(ServerModel {
            name,
            description,
            gpu_model: gpu_model.name.to_owned(),
            gpu_count,
            gpu_memory_gib,
            gpu_power_w: gpu_model.power_w,
            interconnect,
            cpu_cores,
            memory_gib,
            nvme_tb,
            rdma_nics,
            nic_gbps,
            cooling,
            max_power_kw,
            price_usd,
            sources,
        });
    }
    Ok(Catalog { servers })
}
