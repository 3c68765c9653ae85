//! The machine description (TOML): the raw file format and the validated machine.
//!
//! Two stages, as in STYLE.md: serde reads [`RawMachine`] with unknown fields denied, then
//! [`Machine::from_raw`] checks everything that serde cannot and says exactly where a problem is.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use nvml_wrapper_sys::bindings::{
    NVML_DEVICE_ARCH_ADA, NVML_DEVICE_ARCH_AMPERE, NVML_DEVICE_ARCH_BLACKWELL, NVML_DEVICE_ARCH_HOPPER,
    NVML_DEVICE_ARCH_TURING, NVML_DEVICE_ARCH_UNKNOWN, NVML_DEVICE_ARCH_VOLTA, NVML_NVLINK_MAX_LINKS,
};
use serde::Deserialize;

use crate::geometry::Geometry;
use crate::mig::{GpuMig, describe_problem};
use crate::pci::{PciAddress, parse_cpu_list};

const DEFAULT_DRIVER_VERSION: &str = "550.90.07";
const DEFAULT_CUDA_DRIVER_VERSION: i32 = 12040;
/// `(device << 16) | vendor` of an NVSwitch (third generation, as in a DGX H100).
const DEFAULT_NVSWITCH_PCI_DEVICE_ID: u32 = 0x22a3_10de;
const NVIDIA_VENDOR_ID: u32 = 0x10de;
/// NVML's name and UUID buffers are 96 bytes, terminating NUL included.
const MAX_STRING_LEN: usize = 95;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMachine {
    driver_version: Option<String>,
    cuda_driver_version: Option<i32>,
    #[serde(default)]
    nvswitch: Vec<RawNvSwitch>,
    #[serde(default)]
    gpu: Vec<RawGpu>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNvSwitch {
    pci_bus_id: String,
    pci_device_id: Option<u32>,
    #[serde(default = "yes")]
    pci_visible: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGpu {
    index: u32,
    uuid: String,
    name: String,
    pci_bus_id: String,
    pci_device_id: Option<u32>,
    pci_subsystem_id: Option<u32>,
    architecture: Option<String>,
    memory_total_mib: u64,
    #[serde(default)]
    memory_used_mib: u64,
    numa_node: Option<u32>,
    cpus: Option<String>,
    host_bridge: Option<String>,
    pcie_switch: Option<String>,
    pcie_switch_parent: Option<String>,
    temperature_c: Option<u32>,
    temperature_slowdown_c: Option<u32>,
    temperature_shutdown_c: Option<u32>,
    power_usage_mw: Option<u32>,
    power_limit_mw: Option<u32>,
    utilization_gpu_pct: Option<u32>,
    #[serde(default)]
    throttle_reasons: Vec<String>,
    ecc_enabled: Option<bool>,
    mig_geometry: Option<String>,
    mig_mode: Option<String>,
    #[serde(default)]
    lost: bool,
    #[serde(default = "yes")]
    mig_profile_info_supported: bool,
    #[serde(default)]
    nvlink: Vec<RawNvLink>,
    #[serde(default)]
    mig_instance: Vec<RawMigInstance>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNvLink {
    remote: String,
    remote_pci_bus_id: String,
    #[serde(default = "one")]
    links: u32,
    #[serde(default = "yes")]
    active: bool,
}

fn one() -> u32 {
    1
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMigInstance {
    profile: String,
    start: u32,
}

/// A machine description that has been read and checked.
#[derive(Debug)]
pub(crate) struct Machine {
    pub(crate) driver_version: String,
    pub(crate) cuda_driver_version: i32,
    /// Ordered by NVML index, so `gpus[i].index == i`.
    pub(crate) gpus: Vec<Gpu>,
    pub(crate) nvswitches: Vec<NvSwitch>,
}

#[derive(Debug)]
pub(crate) struct NvSwitch {
    /// Its address on the host (the baseboard); what the GPUs' links name only when visible.
    pub(crate) pci: PciAddress,
    pub(crate) pci_device_id: u32,
    /// Whether the switch is on the PCI bus NVML sees. A VM's guest (or a baseboard that
    /// manages its NVSwitches itself) does not see it: NVLink remote PCI info is all ones.
    pub(crate) pci_visible: bool,
}

#[derive(Debug)]
pub(crate) struct Gpu {
    pub(crate) index: u32,
    pub(crate) uuid: String,
    pub(crate) name: String,
    pub(crate) pci: PciAddress,
    pub(crate) pci_device_id: u32,
    pub(crate) pci_subsystem_id: u32,
    /// An `NVML_DEVICE_ARCH_*` value.
    pub(crate) architecture: u32,
    pub(crate) memory_total_mib: u64,
    pub(crate) memory_used_mib: u64,
    pub(crate) numa_node: Option<u32>,
    /// Sorted CPU numbers; `None` when the description gives no `cpus`.
    pub(crate) cpus: Option<Vec<u32>>,
    pub(crate) host_bridge: Option<String>,
    pub(crate) pcie_switch: Option<String>,
    pub(crate) pcie_switch_parent: Option<String>,
    pub(crate) temperature_c: Option<u32>,
    pub(crate) temperature_slowdown_c: Option<u32>,
    pub(crate) temperature_shutdown_c: Option<u32>,
    pub(crate) power_usage_mw: Option<u32>,
    pub(crate) power_limit_mw: Option<u32>,
    /// `nvmlDeviceGetUtilizationRates`' `gpu` (memory utilisation answers 0).
    pub(crate) utilization_gpu_pct: Option<u32>,
    /// `nvmlClocksThrottleReason*` bits.
    pub(crate) throttle_reasons: u64,
    pub(crate) ecc_enabled: Option<bool>,
    pub(crate) mig: Option<MigConfig>,
    /// Fallen off the bus from the start; the events file may change it (`fallen_off_bus`,
    /// `back_on_bus`).
    pub(crate) lost: bool,
    /// Whether `nvmlDeviceGetGpuInstanceProfileInfo(V)` answers; false makes it
    /// `NVML_ERROR_NOT_SUPPORTED` for every profile, as some virtualised GPUs do.
    pub(crate) mig_profile_info_supported: bool,
    /// One entry per link, in link-number order.
    pub(crate) nvlinks: Vec<NvLink>,
}

#[derive(Debug)]
pub(crate) struct MigConfig {
    pub(crate) geometry: &'static Geometry,
    /// Mode and instances at start, unless the state file says otherwise.
    pub(crate) initial: GpuMig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NvLinkRemote {
    /// Position in [`Machine::gpus`].
    Gpu(usize),
    /// Position in [`Machine::nvswitches`].
    NvSwitch(usize),
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct NvLink {
    pub(crate) remote: NvLinkRemote,
    pub(crate) active: bool,
}

/// Why a machine description cannot be used; `Display` writes the message `nvmlInit_v2`
/// prints, naming the file.
#[derive(Debug)]
pub(crate) struct MachineError {
    pub(crate) path: PathBuf,
    pub(crate) problem: String,
}

impl fmt::Display for MachineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.problem)
    }
}

/// The throttle reason names of the description and their `nvmlClocksThrottleReason*` bits.
const THROTTLE_REASONS: [(&str, u64); 9] = [
    ("gpu_idle", 0x1),
    ("applications_clocks_setting", 0x2),
    ("sw_power_cap", 0x4),
    ("hw_slowdown", 0x8),
    ("sync_boost", 0x10),
    ("sw_thermal_slowdown", 0x20),
    ("hw_thermal_slowdown", 0x40),
    ("hw_power_brake_slowdown", 0x80),
    ("display_clock_setting", 0x100),
];

const ARCHITECTURES: [(&str, u32); 6] = [
    ("volta", NVML_DEVICE_ARCH_VOLTA),
    ("turing", NVML_DEVICE_ARCH_TURING),
    ("ampere", NVML_DEVICE_ARCH_AMPERE),
    ("ada", NVML_DEVICE_ARCH_ADA),
    ("hopper", NVML_DEVICE_ARCH_HOPPER),
    ("blackwell", NVML_DEVICE_ARCH_BLACKWELL),
];

impl Machine {
    /// Reads and checks the description at `path`.
    pub(crate) fn load(path: &Path) -> Result<Machine, MachineError> {
        let error = |problem: String| MachineError { path: path.to_owned(), problem };
        let text = std::fs::read_to_string(path).map_err(|err| error(err.to_string()))?;
        Machine::parse(&text).map_err(error)
    }

    /// Parses and checks a description; the error says where in the file the problem is.
    pub(crate) fn parse(text: &str) -> Result<Machine, String> {
        let raw: RawMachine = toml::from_str(text).map_err(|err| err.to_string())?;
        Machine::from_raw(raw)
    }

    fn from_raw(raw: RawMachine) -> Result<Machine, String> {
        let driver_version = raw.driver_version.unwrap_or_else(|| DEFAULT_DRIVER_VERSION.to_owned());
        check_string("driver_version", &driver_version)?;
        let cuda_driver_version = raw.cuda_driver_version.unwrap_or(DEFAULT_CUDA_DRIVER_VERSION);

        let mut nvswitches = Vec::new();
        let mut buses: HashMap<PciAddress, String> = HashMap::new();
        for (position, raw_switch) in raw.nvswitch.iter().enumerate() {
            let context = format!("nvswitch[{position}]");
            let pci = parse_bus_id(&context, &raw_switch.pci_bus_id)?;
            claim_bus(&mut buses, pci, &context)?;
            nvswitches.push(NvSwitch {
                pci,
                pci_device_id: raw_switch.pci_device_id.unwrap_or(DEFAULT_NVSWITCH_PCI_DEVICE_ID),
                pci_visible: raw_switch.pci_visible,
            });
        }

        let gpu_count = raw.gpu.len();
        let mut by_index: Vec<Option<usize>> = vec![None; gpu_count];
        let mut uuids: HashMap<&str, usize> = HashMap::new();
        for (position, raw_gpu) in raw.gpu.iter().enumerate() {
            let context = format!("gpu[{position}]");
            let index = raw_gpu.index as usize;
            match by_index.get_mut(index) {
                None => {
                    return Err(format!(
                        "{context}: index {index} is out of range; the {gpu_count} GPUs must have \
                         indices 0 to {} with no gaps",
                        gpu_count.saturating_sub(1)
                    ));
                }
                Some(Some(other)) => {
                    return Err(format!("{context}: index {index} is already used by gpu[{other}]"));
                }
                Some(slot) => *slot = Some(position),
            }
            if let Some(other) = uuids.insert(raw_gpu.uuid.as_str(), position) {
                return Err(format!("{context}: uuid {} is already used by gpu[{other}]", raw_gpu.uuid));
            }
            let pci = parse_bus_id(&context, &raw_gpu.pci_bus_id)?;
            claim_bus(&mut buses, pci, &context)?;
        }

        // Every index 0..n is taken once (n slots, n GPUs, no duplicates), so this is a
        // permutation and the GPUs can be ordered by index.
        let order: Vec<usize> = by_index.iter().flatten().copied().collect();
        let gpu_positions_by_bus: HashMap<PciAddress, usize> = order
            .iter()
            .enumerate()
            .filter_map(|(index, &position)| PciAddress::parse(&raw.gpu[position].pci_bus_id).map(|pci| (pci, index)))
            .collect();
        let switch_positions_by_bus: HashMap<PciAddress, usize> =
            nvswitches.iter().enumerate().map(|(position, switch)| (switch.pci, position)).collect();

        let mut gpus = Vec::with_capacity(gpu_count);
        for &position in &order {
            let context = format!("gpu[{position}]");
            gpus.push(validate_gpu(&context, &raw.gpu[position], &gpu_positions_by_bus, &switch_positions_by_bus)?);
        }

        Ok(Machine { driver_version, cuda_driver_version, gpus, nvswitches })
    }

    pub(crate) fn gpu_by_uuid(&self, uuid: &str) -> Option<usize> {
        self.gpus.iter().position(|gpu| gpu.uuid == uuid)
    }
}

fn check_string(context: &str, text: &str) -> Result<(), String> {
    if text.is_empty() || text.len() > MAX_STRING_LEN || text.contains('\0') {
        return Err(format!("{context}: must be 1 to {MAX_STRING_LEN} bytes without NUL characters"));
    }
    Ok(())
}

fn parse_bus_id(context: &str, text: &str) -> Result<PciAddress, String> {
    PciAddress::parse(text)
        .ok_or_else(|| format!("{context}.pci_bus_id: {text:?} is not a PCI address like \"0000:1b:00.0\""))
}

fn claim_bus(buses: &mut HashMap<PciAddress, String>, pci: PciAddress, context: &str) -> Result<(), String> {
    if let Some(other) = buses.get(&pci) {
        return Err(format!("{context}.pci_bus_id: {pci} is already used by {other}"));
    }
    buses.insert(pci, context.to_owned());
    Ok(())
}

fn validate_gpu(
    context: &str,
    raw: &RawGpu,
    gpu_positions_by_bus: &HashMap<PciAddress, usize>,
    switch_positions_by_bus: &HashMap<PciAddress, usize>,
) -> Result<Gpu, String> {
    check_string(&format!("{context}.name"), &raw.name)?;
    check_string(&format!("{context}.uuid"), &raw.uuid)?;
    if !raw.uuid.starts_with("GPU-") {
        return Err(format!("{context}.uuid: {:?} must start with \"GPU-\" as NVML's GPU UUIDs do", raw.uuid));
    }
    let pci = parse_bus_id(context, &raw.pci_bus_id)?;
    let architecture = match &raw.architecture {
        None => NVML_DEVICE_ARCH_UNKNOWN,
        Some(name) => {
            ARCHITECTURES.iter().find(|(known, _)| known == name).map(|(_, value)| *value).ok_or_else(|| {
                format!(
                    "{context}.architecture: unknown architecture {name:?} (expected one of {})",
                    list(ARCHITECTURES.iter().map(|(known, _)| *known))
                )
            })?
        }
    };
    if raw.memory_used_mib > raw.memory_total_mib {
        return Err(format!(
            "{context}.memory_used_mib: {} is more than memory_total_mib {}",
            raw.memory_used_mib, raw.memory_total_mib
        ));
    }
    let cpus =
        raw.cpus.as_deref().map(parse_cpu_list).transpose().map_err(|problem| format!("{context}.cpus: {problem}"))?;

    let mut throttle_reasons = 0;
    for (position, name) in raw.throttle_reasons.iter().enumerate() {
        let bit = THROTTLE_REASONS.iter().find(|(known, _)| known == name).map(|(_, bit)| *bit).ok_or_else(|| {
            format!(
                "{context}.throttle_reasons[{position}]: unknown throttle reason {name:?} \
                     (expected one of {})",
                list(THROTTLE_REASONS.iter().map(|(known, _)| *known))
            )
        })?;
        throttle_reasons |= bit;
    }

    let nvlinks = validate_nvlinks(context, pci, &raw.nvlink, gpu_positions_by_bus, switch_positions_by_bus)?;
    let mig = validate_mig(context, raw)?;

    Ok(Gpu {
        index: raw.index,
        uuid: raw.uuid.clone(),
        name: raw.name.clone(),
        pci,
        pci_device_id: raw.pci_device_id.unwrap_or(NVIDIA_VENDOR_ID),
        pci_subsystem_id: raw.pci_subsystem_id.unwrap_or(0),
        architecture,
        memory_total_mib: raw.memory_total_mib,
        memory_used_mib: raw.memory_used_mib,
        numa_node: raw.numa_node,
        cpus,
        host_bridge: raw.host_bridge.clone(),
        pcie_switch: raw.pcie_switch.clone(),
        pcie_switch_parent: raw.pcie_switch_parent.clone(),
        temperature_c: raw.temperature_c,
        temperature_slowdown_c: raw.temperature_slowdown_c,
        temperature_shutdown_c: raw.temperature_shutdown_c,
        power_usage_mw: raw.power_usage_mw,
        power_limit_mw: raw.power_limit_mw,
        utilization_gpu_pct: raw.utilization_gpu_pct,
        throttle_reasons,
        ecc_enabled: raw.ecc_enabled,
        mig,
        lost: raw.lost,
        mig_profile_info_supported: raw.mig_profile_info_supported,
        nvlinks,
    })
}

fn validate_nvlinks(
    context: &str,
    own_pci: PciAddress,
    raw_links: &[RawNvLink],
    gpu_positions_by_bus: &HashMap<PciAddress, usize>,
    switch_positions_by_bus: &HashMap<PciAddress, usize>,
) -> Result<Vec<NvLink>, String> {
    let mut links = Vec::new();
    for (position, raw_link) in raw_links.iter().enumerate() {
        let link_context = format!("{context}.nvlink[{position}]");
        let pci = PciAddress::parse(&raw_link.remote_pci_bus_id).ok_or_else(|| {
            format!(
                "{link_context}.remote_pci_bus_id: {:?} is not a PCI address like \"0000:05:00.0\"",
                raw_link.remote_pci_bus_id
            )
        })?;
        let as_gpu = gpu_positions_by_bus.get(&pci).copied();
        let as_switch = switch_positions_by_bus.get(&pci).copied();
        let remote = match (raw_link.remote.as_str(), as_gpu, as_switch) {
            (_, None, None) => {
                return Err(format!(
                    "{link_context}: remote_pci_bus_id {pci} is neither a listed GPU nor a \
                     listed NVSwitch"
                ));
            }
            ("gpu", Some(gpu), _) => {
                if pci == own_pci {
                    return Err(format!("{link_context}: remote_pci_bus_id {pci} is this GPU itself"));
                }
                NvLinkRemote::Gpu(gpu)
            }
            ("gpu", None, Some(_)) => {
                return Err(format!("{link_context}: remote is \"gpu\" but {pci} is a listed NVSwitch"));
            }
            ("nvswitch", _, Some(switch)) => NvLinkRemote::NvSwitch(switch),
            ("nvswitch", Some(_), None) => {
                return Err(format!("{link_context}: remote is \"nvswitch\" but {pci} is a listed GPU"));
            }
            (other, _, _) => {
                return Err(format!(
                    "{link_context}.remote: unknown remote {other:?} (expected \"gpu\" or \"nvswitch\")"
                ));
            }
        };
        if raw_link.links == 0 {
            return Err(format!("{link_context}.links: must be at least 1"));
        }
        for _ in 0..raw_link.links {
            links.push(NvLink { remote, active: raw_link.active });
        }
    }
    if links.len() > NVML_NVLINK_MAX_LINKS as usize {
        return Err(format!(
            "{context}.nvlink: {} links in all, but NVML numbers at most {NVML_NVLINK_MAX_LINKS}",
            links.len()
        ));
    }
    Ok(links)
}

fn validate_mig(context: &str, raw: &RawGpu) -> Result<Option<MigConfig>, String> {
    let enabled = match raw.mig_mode.as_deref() {
        None | Some("disabled") => false,
        Some("enabled") => true,
        Some(other) => {
            return Err(format!("{context}.mig_mode: unknown mode {other:?} (expected \"enabled\" or \"disabled\")"));
        }
    };
    let Some(geometry_name) = &raw.mig_geometry else {
        if enabled {
            return Err(format!("{context}.mig_mode: \"enabled\" needs mig_geometry (this GPU is not MIG-capable)"));
        }
        if !raw.mig_instance.is_empty() {
            return Err(format!("{context}.mig_instance: needs mig_geometry (this GPU is not MIG-capable)"));
        }
        return Ok(None);
    };
    let geometry = Geometry::by_name(geometry_name).ok_or_else(|| {
        format!(
            "{context}.mig_geometry: unknown geometry {geometry_name:?} (expected one of {})",
            list(Geometry::names().into_iter())
        )
    })?;
    if !enabled && !raw.mig_instance.is_empty() {
        return Err(format!("{context}.mig_instance: GPU instances need mig_mode = \"enabled\""));
    }
    let mut initial = GpuMig::new(enabled);
    for (position, raw_instance) in raw.mig_instance.iter().enumerate() {
        let instance_context = format!("{context}.mig_instance[{position}]");
        let profile = geometry.profile_by_name(&raw_instance.profile).ok_or_else(|| {
            format!(
                "{instance_context}: unknown profile {:?} for {} (expected one of {})",
                raw_instance.profile,
                geometry.name,
                list(geometry.profiles.iter().map(|profile| profile.name))
            )
        })?;
        initial.check_placement(geometry, profile, raw_instance.start).map_err(|problem| {
            format!(
                "{instance_context}: {}",
                describe_problem(geometry, &initial, profile, raw_instance.start, problem)
            )
        })?;
        let id = initial.insert_gpu_instance(geometry, profile, raw_instance.start);
        initial
            .create_full_compute_instance(geometry, id)
            .map_err(|err| format!("{instance_context}: cannot create its compute instance ({err:?})"))?;
    }
    Ok(Some(MigConfig { geometry, initial }))
}

fn list<'a>(names: impl Iterator<Item = &'a str>) -> String {
    names.collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_GPUS: &str = r#"
        [[nvswitch]]
        pci_bus_id = "0000:05:00.0"

        [[gpu]]
        index = 1
        uuid = "GPU-1"
        name = "NVIDIA H100 80GB HBM3"
        pci_bus_id = "0000:2a:00.0"
        memory_total_mib = 81559
        mig_geometry = "h100-80gb"
        mig_mode = "enabled"
        [[gpu.mig_instance]]
        profile = "3g.40gb"
        start = 4
        [[gpu.nvlink]]
        remote = "nvswitch"
        remote_pci_bus_id = "0000:05:00.0"
        links = 4

        [[gpu]]
        index = 0
        uuid = "GPU-0"
        name = "NVIDIA H100 80GB HBM3"
        pci_bus_id = "0000:1b:00.0"
        memory_total_mib = 81559
        throttle_reasons = ["gpu_idle", "sw_power_cap"]
        cpus = "0-3"
        [[gpu.nvlink]]
        remote = "gpu"
        remote_pci_bus_id = "00000000:2A:00.0"
    "#;

    /// Parses `TWO_GPUS` with `from` replaced by `to` and returns the error message.
    fn problem(from: &str, to: &str) -> String {
        assert!(TWO_GPUS.contains(from), "fixture lacks {from:?}");
        match Machine::parse(&TWO_GPUS.replacen(from, to, 1)) {
            Ok(_) => panic!("replacing {from:?} by {to:?} should fail"),
            Err(message) => message,
        }
    }

    #[test]
    fn orders_gpus_by_index_and_expands_links() {
        let machine = Machine::parse(TWO_GPUS).expect("valid");
        assert_eq!(machine.gpus[0].uuid, "GPU-0");
        assert_eq!(machine.gpus[1].nvlinks.len(), 4);
        assert_eq!(machine.gpus[0].nvlinks[0].remote, NvLinkRemote::Gpu(1));
        assert_eq!(machine.gpus[0].throttle_reasons, 0x5);
        assert_eq!(machine.gpus[0].cpus, Some(vec![0, 1, 2, 3]));
        let mig = machine.gpus[1].mig.as_ref().expect("MIG-capable");
        assert_eq!(mig.initial.mig_devices(), [(2, 0)]);
    }

    #[test]
    fn says_what_is_wrong() {
        let cases = [
            ("index = 0", "index = 1", "gpu[1]: index 1 is already used by gpu[0]"),
            ("index = 0", "index = 2", "gpu[1]: index 2 is out of range"),
            ("uuid = \"GPU-0\"", "uuid = \"GPU-1\"", "gpu[1]: uuid GPU-1 is already used by gpu[0]"),
            (
                "pci_bus_id = \"0000:1b:00.0\"",
                "pci_bus_id = \"0000:2a:00.0\"",
                "gpu[1].pci_bus_id: 0000:2a:00.0 is already used by gpu[0]",
            ),
            (
                "remote_pci_bus_id = \"0000:05:00.0\"",
                "remote_pci_bus_id = \"0000:99:00.0\"",
                "gpu[0].nvlink[0]: remote_pci_bus_id 0000:99:00.0 is neither a listed GPU nor a listed NVSwitch",
            ),
            ("start = 4", "start = 2", "gpu[0].mig_instance[0]: 3g.40gb cannot start at slot 2 (allowed 0, 4)"),
            ("\"sw_power_cap\"", "\"too_hot\"", "gpu[1].throttle_reasons[1]: unknown throttle reason \"too_hot\""),
            ("\"h100-80gb\"", "\"h100-96gb\"", "gpu[0].mig_geometry: unknown geometry \"h100-96gb\""),
            ("cpus = \"0-3\"", "cpus = \"3-0\"", "gpu[1].cpus: range 3-0 runs backwards"),
            ("links = 4", "links = 19", "gpu[0].nvlink: 19 links in all"),
            (
                "remote = \"gpu\"",
                "remote = \"nvswitch\"",
                "gpu[1].nvlink[0]: remote is \"nvswitch\" but 0000:2a:00.0 is a listed GPU",
            ),
            (
                "memory_total_mib = 81559\n        throttle",
                "memory_total_mib = 81559\n        colour = 1\n        throttle",
                "unknown field `colour`",
            ),
        ];
        for (from, to, expected) in cases {
            let message = problem(from, to);
            assert!(message.contains(expected), "replacing {from:?} by {to:?}: {message:?} lacks {expected:?}");
        }
    }

    #[test]
    fn overlapping_initial_instances_are_refused() {
        let text = TWO_GPUS.replacen(
            "start = 4\n",
            "start = 4\n        [[gpu.mig_instance]]\n        profile = \"2g.20gb\"\n        start = 4\n",
            1,
        );
        let message = Machine::parse(&text).err().unwrap_or_default();
        assert_eq!(message, "gpu[0].mig_instance[1]: 2g.20gb at slot 4 overlaps the 3g.40gb at slot 4");
    }
}
