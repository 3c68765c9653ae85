//! NVML through nvml-wrapper: what only the driver knows (UUIDs, memory, NVLink,
//! MIG, temperature, power, throttling, ECC). The only module that calls NVML.

pub mod control;
mod raw;
mod raw_mig;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::PathBuf;

use allot_api::topology::{
    GpuHealth, GpuTelemetry, MigInfo, MigInstance, MigMode, MigProfile, NvLinkPeer, ThrottleReason,
};
use allot_api::units::{MiB, PciBusId};
use nvml_wrapper::Nvml;
use nvml_wrapper::enum_wrappers::device::{EccCounter, MemoryError, TemperatureSensor, TemperatureThreshold};
use nvml_wrapper::error::NvmlError;
use nvml_wrapper_sys::bindings::{self as sys, NVML_NVLINK_MAX_LINKS};

use super::{DiscoveryError, DriverGpu, DriverNvLink, GpuReport, GpuSource, UnreachableGpu};

/// The library nvml-wrapper loads when none is named; the driver installs it.
pub const DEFAULT_LIBRARY: &str = "libnvidia-ml.so.1";

/// Reads GPUs through an NVML library.
#[derive(Debug, Clone)]
pub struct NvmlSource {
    library: PathBuf,
    /// Whether the library was named by the user: then failing to load it is an
    /// error. The default library missing just means there is no NVIDIA driver.
    required: bool,
}

impl NvmlSource {
    /// The driver's library, if there is one; its absence is not an error.
    pub fn system() -> Self {
        NvmlSource { library: PathBuf::from(DEFAULT_LIBRARY), required: false }
    }

    /// NVML deliberately not consulted (the topology is another machine's export).
    pub fn library_not_consulted() -> Self {
        NvmlSource { library: PathBuf::new(), required: false }
    }

    /// A specific library (`--nvml-lib`), which must load.
    pub fn library(path: impl Into<PathBuf>) -> Self {
        NvmlSource { library: path.into(), required: true }
    }

    fn init(&self) -> Result<Option<Nvml>, DiscoveryError> {
        if self.library.as_os_str().is_empty() {
            return Ok(None);
        }
        if self.required && !self.library.exists() {
            return Err(DiscoveryError::NvmlLibrary {
                path: self.library.clone(),
                problem: "no such file; pass the path of libnvidia-ml.so (or of the fake NVML library)".to_owned(),
            });
        }
        match Nvml::builder().lib_path(OsStr::new(&self.library)).init() {
            Ok(nvml) => Ok(Some(nvml)),
            Err(error) => {
                let problem = match &error {
                    NvmlError::LibloadingError(cause) => format!("cannot load it: {cause}"),
                    NvmlError::FailedToLoadSymbol(symbol) => {
                        format!("it is not an NVML library: it lacks {symbol}")
                    }
                    NvmlError::DriverNotLoaded => "the NVIDIA kernel driver is not loaded".to_owned(),
                    other => format!("nvmlInit failed: {other}"),
                };
                let library_missing = matches!(error, NvmlError::LibloadingError(_));
                if self.required || !library_missing {
                    Err(DiscoveryError::NvmlLibrary { path: self.library.clone(), problem })
                } else {
                    Ok(None)
                }
            }
        }
    }
}

impl GpuSource for NvmlSource {
    fn discover(&self) -> Result<GpuReport, DiscoveryError> {
        let Some(nvml) = self.init()? else {
            let reason = if self.library.as_os_str().is_empty() {
                "not consulted for a topology read from a file; pass --nvml-lib to use one".to_owned()
            } else {
                format!("{} could not be loaded (no NVIDIA driver on this machine)", self.library.display())
            };
            return Ok(GpuReport::Absent { reason });
        };
        let mut warnings = Vec::new();
        let count = nvml
            .device_count()
            .map_err(|error| DiscoveryError::Nvml { call: "nvmlDeviceGetCount".into(), problem: error.to_string() })?;
        let mut gpus = Vec::new();
        let mut unreachable = Vec::new();
        for index in 0..count {
            let mut probe = Probe { index, warnings: Vec::new(), lost: None };
            let result = read_gpu(&nvml, &mut probe);
            // A GPU found lost half-way through is lost, whatever its other calls said;
            // their failures are its symptoms, not separate problems.
            match (result, probe.lost) {
                (Ok(gpu), None) => {
                    warnings.extend(probe.warnings);
                    gpus.push(gpu);
                }
                (Ok(gpu), Some(reason)) => {
                    unreachable.push(UnreachableGpu { index, pci_bus_id: Some(gpu.pci_bus_id), reason })
                }
                // One sick GPU does not hide the others.
                (Err(failure), _) => {
                    warnings.extend(probe.warnings);
                    unreachable.push(failure);
                }
            }
        }
        let cuda_driver_version = nvml.sys_cuda_driver_version().ok().map(|version| {
            // NVML encodes 12.4 as 12040.
            format!("{}.{}", version / 1000, (version % 1000) / 10)
        });
        Ok(GpuReport::Present {
            library: self.library.display().to_string(),
            driver_version: nvml.sys_driver_version().ok(),
            cuda_driver_version,
            gpus,
            unreachable,
            warnings,
        })
    }
}

/// What reading one GPU noticed besides its values: warnings, and whether any call said
/// the GPU is lost (`NVML_ERROR_GPU_IS_LOST`: it fell off the bus).
struct Probe {
    index: u32,
    warnings: Vec<String>,
    lost: Option<String>,
}

impl Probe {
    fn note(&mut self, what: &str, error: &NvmlError) {
        if matches!(error, NvmlError::GpuLost) {
            if self.lost.is_none() {
                self.lost = Some(lost_reason(what));
            }
        } else {
            self.warnings.push(format!("GPU {}: cannot read {what}: {error}", self.index));
        }
    }
}

fn lost_reason(what: &str) -> String {
    format!("NVML reports the GPU lost (fallen off the bus) when reading its {what}")
}

/// Why a query that every GPU answers failed; a lost GPU says so.
fn essential_failure(what: &str, error: &NvmlError) -> String {
    match error {
        NvmlError::GpuLost => lost_reason(what),
        other => format!("NVML cannot read its {what}: {other}"),
    }
}

/// An optional value: NOT_SUPPORTED is an answer (`None`), other failures are
/// noted (a warning, or the GPU lost) and also give `None`.
fn optional<T>(result: Result<T, NvmlError>, what: &str, probe: &mut Probe) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(NvmlError::NotSupported) | Err(NvmlError::FailedToLoadSymbol(_)) => None,
        Err(error) => {
            probe.note(what, &error);
            None
        }
    }
}

fn read_gpu(nvml: &Nvml, probe: &mut Probe) -> Result<DriverGpu, UnreachableGpu> {
    let index = probe.index;
    let unreachable = |pci_bus_id: Option<PciBusId>, reason: String| UnreachableGpu { index, pci_bus_id, reason };
    let device = nvml.device_by_index(index).map_err(|error| unreachable(None, essential_failure("handle", &error)))?;
    let pci = device.pci_info().map_err(|error| unreachable(None, essential_failure("PCI address", &error)))?;
    let pci_bus_id: PciBusId = pci
        .bus_id
        .parse()
        .map_err(|error| unreachable(None, format!("NVML reported an unusable PCI bus id: {error}")))?;
    // Every GPU has a UUID and memory; a GPU that cannot say either is not one to offer.
    let uuid = device.uuid().map_err(|error| unreachable(Some(pci_bus_id), essential_failure("UUID", &error)))?;
    let memory = device
        .memory_info()
        .map_err(|error| unreachable(Some(pci_bus_id), essential_failure("memory size", &error)))?;
    let memory_mib = MiB::from_bytes(memory.total);
    let memory_used_mib = Some(MiB::from_bytes(memory.used));

    let telemetry = GpuTelemetry {
        temperature_c: optional(device.temperature(TemperatureSensor::Gpu), "temperature", probe),
        slowdown_temperature_c: optional(
            device.temperature_threshold(TemperatureThreshold::Slowdown),
            "slowdown temperature",
            probe,
        ),
        power_draw_mw: optional(device.power_usage(), "power draw", probe),
        power_limit_mw: optional(device.enforced_power_limit(), "power limit", probe),
        throttle_reasons: optional(device.current_throttle_reasons(), "throttle reasons", probe)
            .map(|reasons| throttle_reasons(reasons.bits()))
            .unwrap_or_default(),
        ecc_uncorrected_volatile: optional(
            device.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile),
            "ECC error count",
            probe,
        ),
        utilization_pct: optional(device.utilization_rates(), "utilisation", probe).map(|rates| rates.gpu),
        memory_used_mib,
    };
    let health = match telemetry.ecc_uncorrected_volatile {
        Some(errors) if errors > 0 => {
            GpuHealth::Unhealthy { reasons: vec![format!("{errors} uncorrectable ECC errors since the driver loaded")] }
        }
        _ => GpuHealth::Healthy,
    };

    // SAFETY (not unsafe code, a contract): the raw handle is used only by `raw`,
    // while `device` (and so `nvml`) is alive.
    // SAFETY: `Device::handle` is unsafe because the handle must not outlive the
    // `Nvml`; every use below is within this function, while `nvml` lives.
    let handle = unsafe { device.handle() };
    let mut links_by_peer: Vec<DriverNvLink> = Vec::new();
    for link in 0..NVML_NVLINK_MAX_LINKS {
        let wrapper = device.link_wrapper_for(link);
        match wrapper.is_active() {
            Ok(true) => {}
            // Links past the GPU's count answer INVALID_ARGUMENT or NOT_SUPPORTED.
            _ => continue,
        }
        let Some(remote) = optional(wrapper.remote_pci_info(), "NVLink remote PCI info", probe) else {
            continue;
        };
        let Ok(remote_pci_bus_id) = remote.bus_id.parse::<PciBusId>() else {
            probe.warnings.push(format!(
                "GPU {index}: NVLink {link}: unusable remote bus id {:?}; the link is left out",
                remote.bus_id
            ));
            continue;
        };
        let remote_type = raw::nvlink_remote_device_type(nvml, handle, link);
        let remote_kind = match remote_type {
            Ok(raw::RemoteDeviceType::Gpu) => Some(NvLinkPeer::Gpu),
            Ok(raw::RemoteDeviceType::Switch) => Some(NvLinkPeer::NvSwitch),
            _ => None,
        };
        // All ones is NVML's "peer not on this PCI bus": an NVSwitch a VM guest (or a
        // host whose baseboard manages the switches) cannot see. NCCL assumes an NVSwitch
        // there; so do we, unless the remote device type says otherwise.
        let remote_kind = if remote_pci_bus_id.is_not_visible() {
            match remote_type {
                Ok(raw::RemoteDeviceType::Switch) | Err(_) => Some(NvLinkPeer::NvSwitch),
                Ok(other) => {
                    probe.warnings.push(format!(
                        "GPU {index}: NVLink {link} goes to a {} NVML gives no PCI address for; the link is left out",
                        if other == raw::RemoteDeviceType::Gpu { "GPU" } else { "device" }
                    ));
                    continue;
                }
            }
        } else {
            remote_kind
        };
        match links_by_peer.iter_mut().find(|entry| entry.remote_pci_bus_id == remote_pci_bus_id) {
            Some(entry) => entry.links += 1,
            None => links_by_peer.push(DriverNvLink { remote_pci_bus_id, remote_kind, links: 1 }),
        }
    }

    let mig = match device.mig_mode() {
        Ok(mode) => Some(read_mig(nvml, handle, mode, index, &mut probe.warnings)),
        Err(NvmlError::NotSupported) | Err(NvmlError::FailedToLoadSymbol(_)) => None,
        Err(error) => {
            probe.note("MIG mode", &error);
            None
        }
    };

    Ok(DriverGpu {
        index,
        uuid: Some(uuid),
        name: optional(device.name(), "name", probe),
        pci_bus_id,
        memory_mib: Some(memory_mib),
        numa_node: device.numa_node_id().ok(),
        nvlinks: links_by_peer,
        mig,
        telemetry,
        health,
    })
}

fn throttle_reasons(bits: u64) -> Vec<ThrottleReason> {
    let table = [
        (sys::nvmlClocksThrottleReasonGpuIdle, ThrottleReason::GpuIdle),
        (sys::nvmlClocksThrottleReasonApplicationsClocksSetting, ThrottleReason::ApplicationsClocksSetting),
        (sys::nvmlClocksThrottleReasonSwPowerCap, ThrottleReason::SwPowerCap),
        (sys::nvmlClocksThrottleReasonHwSlowdown, ThrottleReason::HwSlowdown),
        (sys::nvmlClocksThrottleReasonSyncBoost, ThrottleReason::SyncBoost),
        (sys::nvmlClocksThrottleReasonSwThermalSlowdown, ThrottleReason::SwThermalSlowdown),
        (sys::nvmlClocksThrottleReasonHwThermalSlowdown, ThrottleReason::HwThermalSlowdown),
        (sys::nvmlClocksThrottleReasonHwPowerBrakeSlowdown, ThrottleReason::HwPowerBrakeSlowdown),
        (sys::nvmlClocksThrottleReasonDisplayClockSetting, ThrottleReason::DisplayClockSetting),
    ];
    table.iter().filter(|(bit, _)| bits & u64::from(*bit) != 0).map(|(_, reason)| *reason).collect()
}

fn mig_mode(value: u32) -> MigMode {
    if value == sys::NVML_DEVICE_MIG_ENABLE { MigMode::Enabled } else { MigMode::Disabled }
}

/// A profile name in NVIDIA's style when the driver gives none: `3g.40gb`.
fn profile_name(compute_slices: u32, memory_mib: u64) -> String {
    format!("{compute_slices}g.{}gb", memory_mib.div_ceil(1024))
}

fn read_mig(
    nvml: &Nvml,
    handle: sys::nvmlDevice_t,
    mode: nvml_wrapper::structs::device::MigMode,
    index: u32,
    warnings: &mut Vec<String>,
) -> MigInfo {
    let current = mig_mode(mode.current);
    let pending = mig_mode(mode.pending);
    let mut profiles = Vec::new();
    let infos = raw::gpu_instance_profiles(nvml, handle).unwrap_or_else(|error| {
        let mode = if current == MigMode::Enabled { "enabled" } else { "disabled" };
        warnings.push(format!(
            "GPU {index}: MIG is {mode} but its profiles cannot be read ({error}); no MIG instance is offered on it"
        ));
        Vec::new()
    });
    for info in infos {
        let placements = raw::possible_placements(nvml, handle, info.profile_id).unwrap_or_else(|error| {
            warnings.push(format!("GPU {index}: MIG profile {}: cannot list placements: {error}", info.profile_id));
            Vec::new()
        });
        let memory_slices = placements.first().map(|placement| placement.size).unwrap_or(0);
        profiles.push(MigProfile {
            name: info.name.clone().unwrap_or_else(|| profile_name(info.compute_slices, info.memory_mib)),
            profile_id: info.profile_id,
            compute_slices: info.compute_slices,
            memory_slices,
            memory_mib: MiB(info.memory_mib),
            max_count: info.max_count,
            placements: placements.iter().map(|placement| placement.start).collect(),
        });
    }

    let mut instances = Vec::new();
    if current == MigMode::Enabled {
        let uuids: HashMap<u32, String> = raw::mig_device_uuids(nvml, handle).unwrap_or_default().into_iter().collect();
        for profile in &profiles {
            match raw::gpu_instances(nvml, handle, profile.profile_id) {
                Ok(found) => instances.extend(found.into_iter().map(|instance| MigInstance {
                    profile: profile.name.clone(),
                    profile_id: profile.profile_id,
                    gpu_instance_id: instance.id,
                    start: instance.placement.start,
                    size: instance.placement.size,
                    uuid: uuids.get(&instance.id).cloned(),
                })),
                Err(error) => warnings.push(format!("GPU {index}: cannot list {} instances: {error}", profile.name)),
            }
        }
        instances.sort_by_key(|instance| instance.start);
    }
    MigInfo { mode: current, pending_mode: pending, profiles: profiles.into(), instances }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_bits_map_to_reasons() {
        assert_eq!(throttle_reasons(0), vec![]);
        assert_eq!(throttle_reasons(0x1 | 0x20), vec![ThrottleReason::GpuIdle, ThrottleReason::SwThermalSlowdown]);
        assert_eq!(throttle_reasons(0x100), vec![ThrottleReason::DisplayClockSetting]);
    }

    #[test]
    fn fallback_profile_names_look_like_nvidias() {
        assert_eq!(profile_name(3, 40192), "3g.40gb");
        assert_eq!(profile_name(1, 9856), "1g.10gb");
    }

    #[test]
    fn a_missing_default_library_means_no_driver_not_an_error() {
        let source = NvmlSource { library: PathBuf::from("/nonexistent/libnvidia-ml.so.1"), required: false };
        match source.discover() {
            Ok(GpuReport::Absent { reason }) => assert!(reason.contains("could not be loaded"), "{reason}"),
            other => panic!("expected absent, got {other:?}"),
        }
    }

    #[test]
    fn a_missing_named_library_is_an_error_naming_it() {
        let error = NvmlSource::library("/nonexistent/libnvidia-ml.so").discover().expect_err("must fail");
        assert!(error.to_string().contains("/nonexistent/libnvidia-ml.so"), "{error}");
    }
}
