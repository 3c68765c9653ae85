//! The inventory for a person (a table like `nvidia-smi topo -m` plus details)
//! and for programs (JSON with the link matrices added).

use std::fmt::Write as _;

use allot_api::topology::{ConnectionLevel, LinkMatrices, MigMode, NodeInventory, NvmlStatus};
use serde::Serialize;

/// The JSON document of `allot-node inventory --output json`.
#[derive(Debug, Serialize)]
pub struct InventoryDocument<'a> {
    #[serde(flatten)]
    pub inventory: &'a NodeInventory,
    pub links: LinkMatrices,
}

pub fn json(inventory: &NodeInventory) -> String {
    let document = InventoryDocument { inventory, links: inventory.link_matrices() };
    // Serialising plain data with string keys cannot fail.
    serde_json::to_string_pretty(&document).unwrap_or_else(|error| format!("{{\"error\": \"{error}\"}}"))
}

fn kib(size_kib: u64) -> String {
    if size_kib >= 1024 && size_kib.is_multiple_of(1024) {
        format!("{} MiB", size_kib / 1024)
    } else if size_kib >= 1024 {
        format!("{:.1} MiB", size_kib as f64 / 1024.0)
    } else {
        format!("{size_kib} KiB")
    }
}

fn bytes(size: u64) -> String {
    let gb = size as f64 / 1e9;
    if gb >= 1000.0 { format!("{:.2} TB", gb / 1000.0) } else { format!("{gb:.0} GB") }
}

pub fn table(inventory: &NodeInventory) -> String {
    let mut out = String::new();
    let cpu = &inventory.cpu;
    let _ = writeln!(out, "Node {}", inventory.hostname);
    match &inventory.nvml {
        NvmlStatus::Present { library, driver_version, cuda_driver_version } => {
            let _ = writeln!(
                out,
                "NVML: present ({library}; driver {}, CUDA {})",
                driver_version.as_deref().unwrap_or("?"),
                cuda_driver_version.as_deref().unwrap_or("?")
            );
        }
        NvmlStatus::Absent { reason } => {
            let _ = writeln!(out, "NVML: absent ({reason}); GPUs as seen on the PCI bus");
        }
    }
    let _ = writeln!(
        out,
        "\nCPU: {} package(s), {} NUMA node(s), {} cores, {} PUs",
        cpu.packages.len(),
        cpu.numa_nodes.len(),
        cpu.cores.len(),
        cpu.pus.len()
    );
    for package in &cpu.packages {
        let _ = writeln!(
            out,
            "  package {}: {}, CPUs {}",
            package.index,
            package.model.as_deref().unwrap_or("unknown model"),
            package.cpus
        );
    }
    for node in &cpu.numa_nodes {
        let distances = node.distances.iter().map(u32::to_string).collect::<Vec<_>>().join(" ");
        let _ = writeln!(
            out,
            "  NUMA {}: {}, CPUs {}{}",
            node.index,
            node.memory_mib,
            node.cpus,
            if distances.is_empty() { String::new() } else { format!(", distances {distances}") }
        );
    }
    if !cpu.caches.is_empty() {
        let caches: Vec<String> = cpu
            .caches
            .iter()
            .map(|cache| {
                let kind = match cache.kind {
                    allot_api::topology::CacheKind::Data => "d",
                    allot_api::topology::CacheKind::Instruction => "i",
                    allot_api::topology::CacheKind::Unified => "",
                };
                format!("L{}{kind} {} x{}", cache.level, kib(cache.size_kib), cache.count)
            })
            .collect();
        let _ = writeln!(out, "  caches: {}", caches.join(", "));
    }

    if inventory.gpus.is_empty() {
        let _ = writeln!(out, "\nNo GPUs.");
    } else {
        out.push('\n');
        out.push_str(&topology_matrix(inventory));
        out.push('\n');
        out.push_str(&gpu_details(inventory));
    }
    if !inventory.nics.is_empty() {
        let _ = writeln!(out, "\nNICs:");
        for (index, nic) in inventory.nics.iter().enumerate() {
            let speed = nic.link_speed_mbps.map(|mbps| format!(", {} Gb/s", mbps / 1000)).unwrap_or_default();
            let rdma = nic.rdma_device.as_deref().map(|rdma| format!(", RDMA {rdma}")).unwrap_or_default();
            let _ = writeln!(
                out,
                "  NIC{index}: {} ({:?}{speed}{rdma}) {} NUMA {}",
                nic.name,
                nic.kind,
                nic.pci_bus_id,
                nic.numa_node.map(|n| n.to_string()).unwrap_or_else(|| "N/A".into())
            );
        }
    }
    if !inventory.nvswitches.is_empty() {
        let _ = writeln!(out, "\nNVSwitches:");
        for switch in &inventory.nvswitches {
            if switch.pci_bus_id.is_not_visible() {
                let _ = writeln!(
                    out,
                    "  not PCI-visible: NVML reports NVLinks into an NVSwitch fabric this host cannot address (a VM, or switches the baseboard manages)"
                );
            } else if !switch.pci_visible {
                let _ = writeln!(out, "  {} (named by NVML; not in this host's PCIe tree)", switch.pci_bus_id);
            } else {
                let numa = switch.numa_node.map(|n| n.to_string()).unwrap_or_else(|| "N/A".into());
                let _ = writeln!(out, "  {} [{}] NUMA {numa}", switch.pci_bus_id, switch.pci_id);
            }
        }
    }
    if !inventory.nvme.is_empty() {
        let _ = writeln!(out, "\nNVMe drives:");
        for drive in &inventory.nvme {
            let _ = writeln!(
                out,
                "  {}: {} {} NUMA {}",
                drive.name,
                drive.capacity_bytes.map(bytes).unwrap_or_else(|| "size unknown".into()),
                drive.pci_bus_id,
                drive.numa_node.map(|n| n.to_string()).unwrap_or_else(|| "N/A".into())
            );
        }
    }
    if !inventory.warnings.is_empty() {
        let _ = writeln!(out, "\nWarnings:");
        for warning in &inventory.warnings {
            let _ = writeln!(out, "  {warning}");
        }
    }
    out
}

/// The GPU×GPU and GPU×NIC matrix with CPU and NUMA affinity, like `nvidia-smi topo -m`.
fn topology_matrix(inventory: &NodeInventory) -> String {
    let links = inventory.link_matrices();
    let mut header: Vec<String> = vec![String::new()];
    header.extend((0..inventory.gpus.len()).map(|index| format!("GPU{index}")));
    header.extend((0..inventory.nics.len()).map(|index| format!("NIC{index}")));
    header.push("CPU Affinity".into());
    header.push("NUMA Affinity".into());
    let mut rows = vec![header];
    for (index, gpu) in inventory.gpus.iter().enumerate() {
        let mut row = vec![format!("GPU{index}")];
        row.extend(links.gpu_gpu[index].iter().map(ConnectionLevel::to_string));
        row.extend(links.gpu_nic[index].iter().map(ConnectionLevel::to_string));
        row.push(gpu.cpus.to_string());
        row.push(gpu.numa_node.map(|n| n.to_string()).unwrap_or_else(|| "N/A".into()));
        rows.push(row);
    }
    let columns = rows[0].len();
    let widths: Vec<usize> = (0..columns)
        .map(|column| rows.iter().map(|row| row.get(column).map_or(0, String::len)).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let line: Vec<String> =
            row.iter().enumerate().map(|(column, cell)| format!("{cell:<width$}", width = widths[column])).collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    let _ = writeln!(
        out,
        "\nLegend: X = self; NV# = # NVLink links; PIX = at most one PCIe switch; PXB = several PCIe switches;\n        PHB = through a PCIe host bridge; NODE = between host bridges of one NUMA node; SYS = across NUMA nodes"
    );
    out
}

fn gpu_details(inventory: &NodeInventory) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "GPUs:");
    for (position, gpu) in inventory.gpus.iter().enumerate() {
        let memory = gpu.memory_mib.map(|memory| memory.to_string()).unwrap_or_else(|| "memory unknown".into());
        let _ = writeln!(
            out,
            "  GPU{}: {}, {memory}, {} NUMA {}, CPUs {}",
            gpu.index,
            gpu.model,
            gpu.pci_bus_id,
            gpu.numa_node.map(|n| n.to_string()).unwrap_or_else(|| "N/A".into()),
            if gpu.cpus.is_empty() { "N/A".to_owned() } else { gpu.cpus.to_string() }
        );
        if let Some(uuid) = &gpu.uuid {
            let _ = writeln!(out, "        {uuid}");
        }
        let nearest_nic = (0..inventory.nics.len())
            .filter_map(|nic| inventory.gpu_nic_level(position, nic).map(|level| (level, nic)))
            .min_by_key(|(level, _)| level.rank());
        let nearest_nvme = inventory
            .nvme
            .iter()
            .filter_map(|drive| inventory.pci.pcie_level(gpu.pci_bus_id, drive.pci_bus_id).map(|level| (level, drive)))
            .min_by_key(|(level, _)| level.rank());
        let nic_text = nearest_nic
            .map(|(level, nic)| format!("NIC{nic} {} ({level})", inventory.nics[nic].name))
            .unwrap_or_else(|| "none".into());
        let nvme_text =
            nearest_nvme.map(|(level, drive)| format!("{} ({level})", drive.name)).unwrap_or_else(|| "none".into());
        let _ = writeln!(out, "        nearest NIC: {nic_text}; nearest NVMe: {nvme_text}");
        match &gpu.mig {
            None => {}
            Some(mig) => {
                let pending = if mig.pending_mode != mig.mode { " (change pending a GPU reset)" } else { "" };
                match mig.mode {
                    MigMode::Disabled => {
                        let _ = writeln!(out, "        MIG: capable, disabled{pending}");
                    }
                    MigMode::Enabled => {
                        let layout: Vec<String> = mig
                            .instances
                            .iter()
                            .map(|instance| format!("{}@{}", instance.profile, instance.start))
                            .collect();
                        let layout = if layout.is_empty() { "no instances".to_owned() } else { layout.join(" ") };
                        let _ = writeln!(out, "        MIG: enabled{pending}: {layout}");
                    }
                }
            }
        }
        if let Some(telemetry) = &gpu.telemetry {
            let temperature = match (telemetry.temperature_c, telemetry.slowdown_temperature_c) {
                (Some(now), Some(slowdown)) => format!("{now} C (slows at {slowdown} C)"),
                (Some(now), None) => format!("{now} C"),
                _ => "temperature unknown".to_owned(),
            };
            let power = match (telemetry.power_draw_mw, telemetry.power_limit_mw) {
                (Some(draw), Some(limit)) => format!("{} W / {} W", draw / 1000, limit / 1000),
                (Some(draw), None) => format!("{} W", draw / 1000),
                _ => "power unknown".to_owned(),
            };
            let throttling: Vec<&str> = telemetry
                .throttle_reasons
                .iter()
                .filter(|reason| reason.slows_work())
                .map(|reason| reason.as_str())
                .collect();
            let throttling = if throttling.is_empty() { "none".to_owned() } else { throttling.join(", ") };
            let _ = writeln!(out, "        {temperature}, {power}, throttling: {throttling}");
        }
        let health = match &gpu.health {
            allot_api::topology::GpuHealth::Healthy => "healthy".to_owned(),
            allot_api::topology::GpuHealth::Unknown => "unknown (no NVML)".to_owned(),
            allot_api::topology::GpuHealth::Unhealthy { reasons } => format!("UNHEALTHY: {}", reasons.join("; ")),
        };
        let _ = writeln!(out, "        health: {health}");
    }
    out
}
