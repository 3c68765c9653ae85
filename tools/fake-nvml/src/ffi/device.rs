//! Exports for device properties: identity, PCI, memory, affinity, topology, NVLink, thermals,
//! power, throttling and ECC.
//!
//! A MIG device handle answers the identity calls (UUID, name, PCI info, memory) and the MIG
//! calls in `mig.rs`; the other calls here return `NVML_ERROR_NOT_SUPPORTED` for it.

use std::ffi::{c_char, c_uint, c_ulong, c_ulonglong};

use nvml_wrapper_sys::bindings::{
    nvmlDevice_t, nvmlEccCounterType_t, nvmlEnableState_enum_NVML_FEATURE_DISABLED,
    nvmlEnableState_enum_NVML_FEATURE_ENABLED, nvmlEnableState_t, nvmlGpuLevel_enum_NVML_TOPOLOGY_HOSTBRIDGE,
    nvmlGpuLevel_enum_NVML_TOPOLOGY_INTERNAL, nvmlGpuLevel_enum_NVML_TOPOLOGY_MULTIPLE,
    nvmlGpuLevel_enum_NVML_TOPOLOGY_NODE, nvmlGpuLevel_enum_NVML_TOPOLOGY_SINGLE,
    nvmlGpuLevel_enum_NVML_TOPOLOGY_SYSTEM, nvmlGpuTopologyLevel_t,
    nvmlIntNvLinkDeviceType_enum_NVML_NVLINK_DEVICE_TYPE_GPU,
    nvmlIntNvLinkDeviceType_enum_NVML_NVLINK_DEVICE_TYPE_SWITCH, nvmlIntNvLinkDeviceType_t, nvmlMemory_t,
    nvmlMemory_v2_t, nvmlMemoryErrorType_t, nvmlPciInfo_t, nvmlTemperatureSensors_enum_NVML_TEMPERATURE_GPU,
    nvmlTemperatureSensors_t, nvmlTemperatureThresholds_enum_NVML_TEMPERATURE_THRESHOLD_COUNT,
    nvmlTemperatureThresholds_enum_NVML_TEMPERATURE_THRESHOLD_SHUTDOWN,
    nvmlTemperatureThresholds_enum_NVML_TEMPERATURE_THRESHOLD_SLOWDOWN, nvmlTemperatureThresholds_t, nvmlUtilization_t,
};

use super::{NvmlResult, check_out, codes, fill_c_array, nvml_export, read, struct_version, write, write_str};
use crate::machine::{Gpu, NvLink, NvLinkRemote};
use crate::pci::PciAddress;
use crate::runtime::{DeviceRef, Runtime, with_runtime};

const MIB: u64 = 1024 * 1024;

/// Runs `query` on the physical GPU behind `device`.
fn physical_gpu<T>(device: nvmlDevice_t, query: impl FnOnce(&Gpu) -> NvmlResult<T>) -> NvmlResult<T> {
    with_runtime(|runtime| {
        let position = runtime.physical(device.cast())?;
        query(runtime.gpu(position))
    })
}

/// A device's UUID: the GPU's, or the derived `MIG-` UUID of a MIG device.
fn device_uuid(runtime: &mut Runtime, device: DeviceRef) -> String {
    let gpu = runtime.gpu(device.gpu());
    match device {
        DeviceRef::Gpu(_) => gpu.uuid.clone(),
        DeviceRef::Mig { gpu_instance, compute_instance, .. } => {
            crate::mig::mig_device_uuid(&gpu.uuid, gpu_instance, compute_instance)
        }
    }
}

/// The name, and for a MIG device its memory in MiB.
fn describe(runtime: &mut Runtime, device: DeviceRef) -> NvmlResult<(String, Option<u64>)> {
    match device {
        DeviceRef::Gpu(gpu) => Ok((runtime.gpu(gpu).name.clone(), None)),
        DeviceRef::Mig { gpu, gpu_instance, compute_instance } => {
            let geometry = runtime.geometry(gpu)?;
            let mig = runtime.mig_state(gpu)?;
            let instance = mig.gpu_instance(gpu_instance).ok_or(codes::INVALID_ARGUMENT)?;
            let profile = instance.profile(geometry).ok_or(codes::INVALID_ARGUMENT)?;
            let compute_slices = mig
                .compute_instance(gpu_instance, compute_instance)
                .and_then(|compute| crate::geometry::compute_instance_slices(compute.profile_id))
                .ok_or(codes::INVALID_ARGUMENT)?;
            // Real NVML names a MIG device after its GPU instance profile, with a `<n>c.`
            // prefix when the compute instance has only part of the GPU instance.
            let profile_name = if compute_slices == profile.compute_slices {
                profile.name.to_owned()
            } else {
                format!("{compute_slices}c.{}", profile.name)
            };
            let name = format!("{} MIG {profile_name}", runtime.gpu(gpu).name);
            Ok((name, Some(profile.memory_mib)))
        }
    }
}

nvml_export! {
    fn nvmlDeviceGetIndex(device: nvmlDevice_t, index: *mut c_uint) {
        let value = physical_gpu(device, |gpu| Ok(gpu.index))?;
        // SAFETY: NVML's contract: `index` is null or points to a writable uint.
        unsafe { write(index, value) }
    }
}

nvml_export! {
    /// The GPU UUID, or `MIG-…` for a MIG device handle.
    fn nvmlDeviceGetUUID(device: nvmlDevice_t, uuid: *mut c_char, length: c_uint) {
        let text = with_runtime(|runtime| {
            let device = runtime.device(device.cast())?;
            Ok(device_uuid(runtime, device))
        })?;
        // SAFETY: NVML's contract: `uuid` is null or holds `length` bytes.
        unsafe { write_str(uuid, length, &text) }
    }
}

nvml_export! {
    /// The product name; a MIG device is `<product> MIG <profile>`.
    fn nvmlDeviceGetName(device: nvmlDevice_t, name: *mut c_char, length: c_uint) {
        let text = with_runtime(|runtime| {
            let device = runtime.device(device.cast())?;
            Ok(describe(runtime, device)?.0)
        })?;
        // SAFETY: NVML's contract: `name` is null or holds `length` bytes.
        unsafe { write_str(name, length, &text) }
    }
}

pub(crate) fn pci_info(pci: PciAddress, device_id: u32, subsystem_id: u32) -> nvmlPciInfo_t {
    let mut info = nvmlPciInfo_t {
        busIdLegacy: [0; 16],
        domain: pci.domain,
        bus: pci.bus,
        device: pci.device,
        pciDeviceId: device_id,
        pciSubSystemId: subsystem_id,
        busId: [0; 32],
    };
    fill_c_array(&mut info.busIdLegacy, &pci.nvml_legacy());
    fill_c_array(&mut info.busId, &pci.nvml());
    info
}

/// What NVML answers for an NVLink peer it cannot address (an NVSwitch outside a VM's PCI
/// bus): every field all ones, `FFFFFFFF:FF:FF.0` (legacy `FFFF:FF:FF.0`). NCCL's topology
/// code treats this value as "NVSwitch not visible". The device ids are all ones too: an
/// assumption, since nothing documents them for this case.
fn not_visible_pci_info() -> nvmlPciInfo_t {
    let mut info = nvmlPciInfo_t {
        busIdLegacy: [0; 16],
        domain: u32::MAX,
        bus: 0xFF,
        device: 0xFF,
        pciDeviceId: u32::MAX,
        pciSubSystemId: u32::MAX,
        busId: [0; 32],
    };
    fill_c_array(&mut info.busIdLegacy, "FFFF:FF:FF.0");
    fill_c_array(&mut info.busId, "FFFFFFFF:FF:FF.0");
    info
}

fn gpu_pci_info(gpu: &Gpu) -> nvmlPciInfo_t {
    pci_info(gpu.pci, gpu.pci_device_id, gpu.pci_subsystem_id)
}

nvml_export! {
    /// The GPU's PCI identity; a MIG device answers with its GPU's.
    fn nvmlDeviceGetPciInfo_v3(device: nvmlDevice_t, pci: *mut nvmlPciInfo_t) {
        let info = with_runtime(|runtime| {
            let device = runtime.device(device.cast())?;
            Ok(gpu_pci_info(runtime.gpu(device.gpu())))
        })?;
        // SAFETY: NVML's contract: `pci` is null or points to a writable nvmlPciInfo_t.
        unsafe { write(pci, info) }
    }
}

/// Total and used memory in bytes: the description's for a GPU, the instance size (none of
/// it used) for a MIG device.
fn memory_bytes(device: nvmlDevice_t) -> NvmlResult<(u64, u64)> {
    with_runtime(|runtime| {
        let device = runtime.device(device.cast())?;
        match describe(runtime, device)? {
            (_, Some(instance_mib)) => Ok((instance_mib * MIB, 0)),
            (_, None) => {
                let gpu = runtime.gpu(device.gpu());
                Ok((gpu.memory_total_mib * MIB, gpu.memory_used_mib * MIB))
            }
        }
    })
}

nvml_export! {
    fn nvmlDeviceGetMemoryInfo(device: nvmlDevice_t, memory: *mut nvmlMemory_t) {
        let (total, used) = memory_bytes(device)?;
        let info = nvmlMemory_t {
            total,
            free: total - used,
            used,
        };
        // SAFETY: NVML's contract: `memory` is null or points to a writable nvmlMemory_t.
        unsafe { write(memory, info) }
    }
}

nvml_export! {
    /// Needs `version` set to `nvmlMemory_v2`; reserved memory is always 0.
    fn nvmlDeviceGetMemoryInfo_v2(device: nvmlDevice_t, memory: *mut nvmlMemory_v2_t) {
        check_out(memory)?;
        // SAFETY: NVML's contract: `memory` points to an nvmlMemory_v2_t whose `version` the
        // caller has set; it is not null (checked above).
        let version = unsafe { read(memory.cast::<u32>().cast_const()) }?;
        if version != struct_version::<nvmlMemory_v2_t>(2) {
            return Err(codes::ARGUMENT_VERSION_MISMATCH);
        }
        let (total, used) = memory_bytes(device)?;
        let info = nvmlMemory_v2_t {
            version,
            total,
            reserved: 0,
            free: total - used,
            used,
        };
        // SAFETY: as above, `memory` is valid for writing an nvmlMemory_v2_t.
        unsafe { write(memory, info) }
    }
}

nvml_export! {
    /// Sets the bits of the description's `cpus` that fit in `cpu_set_size` words.
    fn nvmlDeviceGetCpuAffinity(device: nvmlDevice_t, cpu_set_size: c_uint, cpu_set: *mut c_ulong) {
        check_out(cpu_set)?;
        if cpu_set_size == 0 {
            return Err(codes::INVALID_ARGUMENT);
        }
        let cpus = physical_gpu(device, |gpu| gpu.cpus.clone().ok_or(codes::NOT_SUPPORTED))?;
        let word_bits = c_ulong::BITS;
        let size = cpu_set_size as usize;
        // Only as many words as hold the highest CPU are built; the rest of the caller's
        // array (whatever its claimed size) is written as zeros.
        let needed = cpus.last().map_or(0, |&highest| (highest / word_bits) as usize + 1);
        let mut words = vec![0 as c_ulong; size.min(needed)];
        for cpu in cpus {
            if let Some(word) = words.get_mut((cpu / word_bits) as usize) {
                *word |= 1 << (cpu % word_bits);
            }
        }
        for offset in 0..size {
            let word = words.get(offset).copied().unwrap_or(0);
            // SAFETY: NVML's contract: `cpu_set` holds `cpu_set_size` words, and `offset` is
            // below `cpu_set_size`; the pointer is not null (checked above).
            unsafe { write(cpu_set.add(offset), word) }?;
        }
        Ok(())
    }
}

nvml_export! {
    fn nvmlDeviceGetNumaNodeId(device: nvmlDevice_t, node: *mut c_uint) {
        let value = physical_gpu(device, |gpu| gpu.numa_node.ok_or(codes::NOT_SUPPORTED))?;
        // SAFETY: NVML's contract: `node` is null or points to a writable uint.
        unsafe { write(node, value) }
    }
}

nvml_export! {
    fn nvmlDeviceGetArchitecture(device: nvmlDevice_t, arch: *mut c_uint) {
        let value = physical_gpu(device, |gpu| Ok(gpu.architecture))?;
        // SAFETY: NVML's contract: `arch` is null or points to a writable uint.
        unsafe { write(arch, value) }
    }
}

nvml_export! {
    fn nvmlDeviceGetTemperature(
        device: nvmlDevice_t,
        sensor_type: nvmlTemperatureSensors_t,
        temp: *mut c_uint,
    ) {
        if sensor_type != nvmlTemperatureSensors_enum_NVML_TEMPERATURE_GPU {
            return Err(codes::INVALID_ARGUMENT);
        }
        let value = physical_gpu(device, |gpu| gpu.temperature_c.ok_or(codes::NOT_SUPPORTED))?;
        // SAFETY: NVML's contract: `temp` is null or points to a writable uint.
        unsafe { write(temp, value) }
    }
}

nvml_export! {
    /// Answers the slowdown and shutdown thresholds; other thresholds are not supported.
    fn nvmlDeviceGetTemperatureThreshold(
        device: nvmlDevice_t,
        threshold_type: nvmlTemperatureThresholds_t,
        temp: *mut c_uint,
    ) {
        if threshold_type >= nvmlTemperatureThresholds_enum_NVML_TEMPERATURE_THRESHOLD_COUNT {
            return Err(codes::INVALID_ARGUMENT);
        }
        let value = physical_gpu(device, |gpu| {
            if threshold_type == nvmlTemperatureThresholds_enum_NVML_TEMPERATURE_THRESHOLD_SHUTDOWN {
                gpu.temperature_shutdown_c
            } else if threshold_type
                == nvmlTemperatureThresholds_enum_NVML_TEMPERATURE_THRESHOLD_SLOWDOWN
            {
                gpu.temperature_slowdown_c
            } else {
                None
            }
            .ok_or(codes::NOT_SUPPORTED)
        })?;
        // SAFETY: NVML's contract: `temp` is null or points to a writable uint.
        unsafe { write(temp, value) }
    }
}

nvml_export! {
    /// Milliwatts.
    fn nvmlDeviceGetPowerUsage(device: nvmlDevice_t, power: *mut c_uint) {
        let value = physical_gpu(device, |gpu| gpu.power_usage_mw.ok_or(codes::NOT_SUPPORTED))?;
        // SAFETY: NVML's contract: `power` is null or points to a writable uint.
        unsafe { write(power, value) }
    }
}

nvml_export! {
    /// The description's `utilization_gpu_pct` as `gpu`; `memory` is 0.
    fn nvmlDeviceGetUtilizationRates(device: nvmlDevice_t, utilization: *mut nvmlUtilization_t) {
        let gpu = physical_gpu(device, |gpu| gpu.utilization_gpu_pct.ok_or(codes::NOT_SUPPORTED))?;
        // SAFETY: NVML's contract: `utilization` is null or points to a writable nvmlUtilization_t.
        unsafe { write(utilization, nvmlUtilization_t { gpu, memory: 0 }) }
    }
}

nvml_export! {
    /// Milliwatts; the description's `power_limit_mw`.
    fn nvmlDeviceGetEnforcedPowerLimit(device: nvmlDevice_t, limit: *mut c_uint) {
        let value = physical_gpu(device, |gpu| gpu.power_limit_mw.ok_or(codes::NOT_SUPPORTED))?;
        // SAFETY: NVML's contract: `limit` is null or points to a writable uint.
        unsafe { write(limit, value) }
    }
}

nvml_export! {
    /// Milliwatts; the same `power_limit_mw`, since nothing in the fake lowers the limit.
    fn nvmlDeviceGetPowerManagementLimit(device: nvmlDevice_t, limit: *mut c_uint) {
        let value = physical_gpu(device, |gpu| gpu.power_limit_mw.ok_or(codes::NOT_SUPPORTED))?;
        // SAFETY: NVML's contract: `limit` is null or points to a writable uint.
        unsafe { write(limit, value) }
    }
}

fn throttle_reasons(device: nvmlDevice_t, reasons: *mut c_ulonglong) -> NvmlResult<()> {
    let value = physical_gpu(device, |gpu| Ok(gpu.throttle_reasons))?;
    // SAFETY: NVML's contract: `reasons` is null or points to a writable ulonglong.
    unsafe { write(reasons, value) }
}

nvml_export! {
    fn nvmlDeviceGetCurrentClocksThrottleReasons(device: nvmlDevice_t, reasons: *mut c_ulonglong) {
        throttle_reasons(device, reasons)
    }
}

nvml_export! {
    /// The newer name of `nvmlDeviceGetCurrentClocksThrottleReasons`; same bits.
    fn nvmlDeviceGetCurrentClocksEventReasons(device: nvmlDevice_t, reasons: *mut c_ulonglong) {
        throttle_reasons(device, reasons)
    }
}

nvml_export! {
    /// Counts the ECC lines of the events file for this GPU; volatile and aggregate counters
    /// are the same. Not supported unless the description sets `ecc_enabled = true`.
    fn nvmlDeviceGetTotalEccErrors(
        device: nvmlDevice_t,
        error_type: nvmlMemoryErrorType_t,
        counter_type: nvmlEccCounterType_t,
        ecc_counts: *mut c_ulonglong,
    ) {
        if error_type > 1 || counter_type > 1 {
            return Err(codes::INVALID_ARGUMENT);
        }
        let (index, events_path) = with_runtime(|runtime| {
            let position = runtime.physical(device.cast())?;
            let gpu = runtime.gpu(position);
            if gpu.ecc_enabled != Some(true) {
                return Err(codes::NOT_SUPPORTED);
            }
            Ok((gpu.index, runtime.events_path.clone()))
        })?;
        let (corrected, uncorrected) = events_path
            .map_or((0, 0), |path| crate::events::ecc_counts(&path, index));
        let value = if error_type == 0 { corrected } else { uncorrected };
        // SAFETY: NVML's contract: `ecc_counts` is null or points to a writable ulonglong.
        unsafe { write(ecc_counts, value) }
    }
}

nvml_export! {
    fn nvmlDeviceGetEccMode(
        device: nvmlDevice_t,
        current: *mut nvmlEnableState_t,
        pending: *mut nvmlEnableState_t,
    ) {
        check_out(current)?;
        check_out(pending)?;
        let enabled = physical_gpu(device, |gpu| gpu.ecc_enabled.ok_or(codes::NOT_SUPPORTED))?;
        let state = if enabled {
            nvmlEnableState_enum_NVML_FEATURE_ENABLED
        } else {
            nvmlEnableState_enum_NVML_FEATURE_DISABLED
        };
        // SAFETY: NVML's contract: both are null or point to writable enable states.
        unsafe { write(current, state) }?;
        // SAFETY: as above.
        unsafe { write(pending, state) }
    }
}

/// The closest common ancestor of two GPUs from the description's opaque ids.
fn common_ancestor(first: &Gpu, second: &Gpu) -> nvmlGpuTopologyLevel_t {
    fn same(first: &Option<String>, second: &Option<String>) -> bool {
        first.is_some() && first == second
    }
    if first.index == second.index {
        nvmlGpuLevel_enum_NVML_TOPOLOGY_INTERNAL
    } else if same(&first.pcie_switch, &second.pcie_switch) {
        nvmlGpuLevel_enum_NVML_TOPOLOGY_SINGLE
    } else if same(&first.pcie_switch_parent, &second.pcie_switch_parent) {
        nvmlGpuLevel_enum_NVML_TOPOLOGY_MULTIPLE
    } else if same(&first.host_bridge, &second.host_bridge) {
        nvmlGpuLevel_enum_NVML_TOPOLOGY_HOSTBRIDGE
    } else if first.numa_node.is_some() && first.numa_node == second.numa_node {
        nvmlGpuLevel_enum_NVML_TOPOLOGY_NODE
    } else {
        nvmlGpuLevel_enum_NVML_TOPOLOGY_SYSTEM
    }
}

nvml_export! {
    fn nvmlDeviceGetTopologyCommonAncestor(
        device1: nvmlDevice_t,
        device2: nvmlDevice_t,
        path_info: *mut nvmlGpuTopologyLevel_t,
    ) {
        let level = with_runtime(|runtime| {
            let first = runtime.physical(device1.cast())?;
            let second = runtime.physical(device2.cast())?;
            Ok(common_ancestor(runtime.gpu(first), runtime.gpu(second)))
        })?;
        // SAFETY: NVML's contract: `path_info` is null or points to a writable level.
        unsafe { write(path_info, level) }
    }
}

/// Runs `query` on NVLink `link` of `device`: not supported on a GPU without NVLinks, an
/// invalid argument past its last link.
fn nvlink<T>(device: nvmlDevice_t, link: c_uint, query: impl FnOnce(&Runtime, NvLink) -> T) -> NvmlResult<T> {
    with_runtime(|runtime| {
        let position = runtime.physical(device.cast())?;
        let links = &runtime.gpu(position).nvlinks;
        if links.is_empty() {
            return Err(codes::NOT_SUPPORTED);
        }
        let found = *links.get(link as usize).ok_or(codes::INVALID_ARGUMENT)?;
        Ok(query(runtime, found))
    })
}

nvml_export! {
    fn nvmlDeviceGetNvLinkState(
        device: nvmlDevice_t,
        link: c_uint,
        is_active: *mut nvmlEnableState_t,
    ) {
        let active = nvlink(device, link, |_, found| found.active)?;
        let state = if active {
            nvmlEnableState_enum_NVML_FEATURE_ENABLED
        } else {
            nvmlEnableState_enum_NVML_FEATURE_DISABLED
        };
        // SAFETY: NVML's contract: `is_active` is null or points to a writable enable state.
        unsafe { write(is_active, state) }
    }
}

fn remote_pci_info(device: nvmlDevice_t, link: c_uint, pci: *mut nvmlPciInfo_t) -> NvmlResult<()> {
    let info = nvlink(device, link, |runtime, found| match found.remote {
        NvLinkRemote::Gpu(remote) => gpu_pci_info(runtime.gpu(remote)),
        NvLinkRemote::NvSwitch(remote) => {
            let switch = &runtime.machine.nvswitches[remote];
            if switch.pci_visible { pci_info(switch.pci, switch.pci_device_id, 0) } else { not_visible_pci_info() }
        }
    })?;
    // SAFETY: NVML's contract: `pci` is null or points to a writable nvmlPciInfo_t.
    unsafe { write(pci, info) }
}

nvml_export! {
    /// The PCI identity of the GPU or NVSwitch at the other end of the link.
    fn nvmlDeviceGetNvLinkRemotePciInfo_v2(device: nvmlDevice_t, link: c_uint, pci: *mut nvmlPciInfo_t) {
        remote_pci_info(device, link, pci)
    }
}

nvml_export! {
    /// The pre-v2 name of `nvmlDeviceGetNvLinkRemotePciInfo_v2`.
    fn nvmlDeviceGetNvLinkRemotePciInfo(device: nvmlDevice_t, link: c_uint, pci: *mut nvmlPciInfo_t) {
        remote_pci_info(device, link, pci)
    }
}

nvml_export! {
    /// `NVML_NVLINK_DEVICE_TYPE_GPU` or `NVML_NVLINK_DEVICE_TYPE_SWITCH`.
    fn nvmlDeviceGetNvLinkRemoteDeviceType(
        device: nvmlDevice_t,
        link: c_uint,
        device_type: *mut nvmlIntNvLinkDeviceType_t,
    ) {
        let value = nvlink(device, link, |_, found| match found.remote {
            NvLinkRemote::Gpu(_) => nvmlIntNvLinkDeviceType_enum_NVML_NVLINK_DEVICE_TYPE_GPU,
            NvLinkRemote::NvSwitch(_) => nvmlIntNvLinkDeviceType_enum_NVML_NVLINK_DEVICE_TYPE_SWITCH,
        })?;
        // SAFETY: NVML's contract: `device_type` is null or points to a writable device type.
        unsafe { write(device_type, value) }
    }
}
