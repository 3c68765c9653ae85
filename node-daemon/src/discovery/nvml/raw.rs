//! The NVML calls that nvml-wrapper's safe API lacks or gets wrong, made through
//! nvml-wrapper-sys. This is the only unsafe code in Allot's NVML path.
//!
//! Every symbol is looked up before use: nvml-wrapper-sys' convenience methods
//! panic when a symbol is missing, and an older driver (or a foreign library)
//! must produce an error, not a crash.

use std::ffi::CStr;
use std::mem;

use nvml_wrapper::Nvml;
use nvml_wrapper::error::{NvmlError, nvml_try};
use nvml_wrapper_sys::bindings::{
    NVML_GPU_INSTANCE_PROFILE_COUNT, nvmlDevice_t, nvmlGpuInstance_t, nvmlGpuInstanceInfo_t,
    nvmlGpuInstancePlacement_t, nvmlGpuInstanceProfileInfo_t, nvmlGpuInstanceProfileInfo_v2_t,
    nvmlIntNvLinkDeviceType_enum_NVML_NVLINK_DEVICE_TYPE_GPU,
    nvmlIntNvLinkDeviceType_enum_NVML_NVLINK_DEVICE_TYPE_SWITCH, nvmlIntNvLinkDeviceType_t,
    nvmlReturn_enum_NVML_SUCCESS, nvmlReturn_t,
};

/// A raw NVML call failed; `code` is NVML's return code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawError {
    pub call: &'static str,
    pub code: Option<nvmlReturn_t>,
    pub problem: String,
}

impl std::fmt::Display for RawError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.call, self.problem)
    }
}

pub(super) fn check(call: &'static str, code: nvmlReturn_t) -> Result<(), RawError> {
    if code == nvmlReturn_enum_NVML_SUCCESS {
        Ok(())
    } else {
        let problem = nvml_try(code).err().unwrap_or(NvmlError::Unknown).to_string();
        Err(RawError { call, code: Some(code), problem })
    }
}

pub(super) fn missing(call: &'static str) -> RawError {
    RawError { call, code: None, problem: "the NVML library does not export this function".to_owned() }
}

/// What is on the other end of an NVLink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteDeviceType {
    Gpu,
    Switch,
    Other,
}

/// `nvmlDeviceGetNvLinkRemoteDeviceType`. nvml-wrapper 0.13's `remote_device_type`
/// passes a temporary as the out-parameter and always answers `Unknown`.
pub fn nvlink_remote_device_type(nvml: &Nvml, device: nvmlDevice_t, link: u32) -> Result<RemoteDeviceType, RawError> {
    const CALL: &str = "nvmlDeviceGetNvLinkRemoteDeviceType";
    let function = nvml.lib().nvmlDeviceGetNvLinkRemoteDeviceType.as_ref().map_err(|_| missing(CALL))?;
    let mut device_type: nvmlIntNvLinkDeviceType_t = 0;
    // SAFETY: `device` is a live handle from this `Nvml`, and `device_type` is a
    // valid, writable out-parameter of the type the C signature names.
    check(CALL, unsafe { function(device, link, &mut device_type) })?;
    #[allow(non_upper_case_globals)]
    Ok(match device_type {
        nvmlIntNvLinkDeviceType_enum_NVML_NVLINK_DEVICE_TYPE_GPU => RemoteDeviceType::Gpu,
        nvmlIntNvLinkDeviceType_enum_NVML_NVLINK_DEVICE_TYPE_SWITCH => RemoteDeviceType::Switch,
        _ => RemoteDeviceType::Other,
    })
}

/// A GPU instance profile as NVML describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileInfo {
    pub profile_id: u32,
    /// From the `V` variant (`MIG 3g.40gb`); `None` on drivers without it.
    pub name: Option<String>,
    pub compute_slices: u32,
    pub max_count: u32,
    pub memory_mib: u64,
}

/// `NVML_STRUCT_VERSION(GpuInstanceProfileInfo, 2)`, as nvml.h defines it.
fn profile_info_v2_version() -> u32 {
    (mem::size_of::<nvmlGpuInstanceProfileInfo_v2_t>() as u32) | (2 << 24)
}

/// Every GPU instance profile the GPU supports, by profile enum (0..COUNT).
pub fn gpu_instance_profiles(nvml: &Nvml, device: nvmlDevice_t) -> Result<Vec<ProfileInfo>, RawError> {
    const CALL: &str = "nvmlDeviceGetGpuInstanceProfileInfo";
    let lib = nvml.lib();
    let plain = lib.nvmlDeviceGetGpuInstanceProfileInfo.as_ref().map_err(|_| missing(CALL))?;
    let versioned = lib.nvmlDeviceGetGpuInstanceProfileInfoV.as_ref().ok();
    let mut profiles = Vec::new();
    let mut first_failure = None;
    for profile_enum in 0..NVML_GPU_INSTANCE_PROFILE_COUNT {
        // SAFETY: the struct is plain old data; all-zero is a valid value.
        let mut info: nvmlGpuInstanceProfileInfo_t = unsafe { mem::zeroed() };
        // SAFETY: live device handle, in-range enum, valid out-pointer.
        let code = unsafe { plain(device, profile_enum, &mut info) };
        if code != nvmlReturn_enum_NVML_SUCCESS {
            // Profiles a GPU does not support answer NOT_SUPPORTED or INVALID_ARGUMENT;
            // only when none answers is that a failure to read them.
            first_failure = first_failure.or(check(CALL, code).err());
            continue;
        }
        let name = versioned.and_then(|function| {
            // SAFETY: plain old data; all-zero is valid.
            let mut info_v2: nvmlGpuInstanceProfileInfo_v2_t = unsafe { mem::zeroed() };
            info_v2.version = profile_info_v2_version();
            // SAFETY: live handle, valid out-pointer whose version field says its size.
            let code = unsafe { function(device, profile_enum, &mut info_v2) };
            if code != nvmlReturn_enum_NVML_SUCCESS {
                return None;
            }
            // The name is a fixed array; make sure it is terminated before reading it.
            let last = info_v2.name.len() - 1;
            info_v2.name[last] = 0;
            // SAFETY: the array is NUL-terminated (just enforced) and lives on our stack.
            let name = unsafe { CStr::from_ptr(info_v2.name.as_ptr()) };
            Some(name.to_string_lossy().trim_start_matches("MIG ").to_owned()).filter(|name| !name.is_empty())
        });
        profiles.push(ProfileInfo {
            profile_id: info.id,
            name,
            compute_slices: info.sliceCount,
            max_count: info.instanceCount,
            memory_mib: info.memorySizeMB,
        });
    }
    match first_failure {
        Some(failure) if profiles.is_empty() => Err(failure),
        _ => Ok(profiles),
    }
}

/// A start slot and the number of memory slices it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub start: u32,
    pub size: u32,
}

/// `nvmlDeviceGetGpuInstancePossiblePlacements_v2`: where a profile may start.
pub fn possible_placements(nvml: &Nvml, device: nvmlDevice_t, profile_id: u32) -> Result<Vec<Placement>, RawError> {
    const CALL: &str = "nvmlDeviceGetGpuInstancePossiblePlacements_v2";
    let function = nvml.lib().nvmlDeviceGetGpuInstancePossiblePlacements_v2.as_ref().map_err(|_| missing(CALL))?;
    // No profile has more start slots than the GPU has memory slices (8).
    let mut placements = [nvmlGpuInstancePlacement_t { start: 0, size: 0 }; 16];
    let mut count = placements.len() as u32;
    // SAFETY: live handle; the array holds `count` elements, and NVML writes at most that many.
    check(CALL, unsafe { function(device, profile_id, placements.as_mut_ptr(), &mut count) })?;
    let count = (count as usize).min(placements.len());
    Ok(placements[..count].iter().map(|p| Placement { start: p.start, size: p.size }).collect())
}

/// A GPU instance that exists now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuInstance {
    pub id: u32,
    pub profile_id: u32,
    pub placement: Placement,
}

/// `nvmlDeviceGetGpuInstances` for one profile, then `nvmlGpuInstanceGetInfo` for each.
pub fn gpu_instances(nvml: &Nvml, device: nvmlDevice_t, profile_id: u32) -> Result<Vec<GpuInstance>, RawError> {
    const CALL: &str = "nvmlDeviceGetGpuInstances";
    const INFO_CALL: &str = "nvmlGpuInstanceGetInfo";
    let lib = nvml.lib();
    let list = lib.nvmlDeviceGetGpuInstances.as_ref().map_err(|_| missing(CALL))?;
    let get_info = lib.nvmlGpuInstanceGetInfo.as_ref().map_err(|_| missing(INFO_CALL))?;
    // At most 7 GPU instances exist on any GPU; 16 leaves room.
    let mut handles: [nvmlGpuInstance_t; 16] = [std::ptr::null_mut(); 16];
    let mut count: u32 = 0;
    // SAFETY: live handle; the array holds 16 handles, more than NVML ever returns.
    check(CALL, unsafe { list(device, profile_id, handles.as_mut_ptr(), &mut count) })?;
    let count = (count as usize).min(handles.len());
    let mut instances = Vec::with_capacity(count);
    for handle in &handles[..count] {
        // SAFETY: plain old data; all-zero is valid.
        let mut info: nvmlGpuInstanceInfo_t = unsafe { mem::zeroed() };
        // SAFETY: `handle` was just returned by NVML for this device; valid out-pointer.
        check(INFO_CALL, unsafe { get_info(*handle, &mut info) })?;
        instances.push(GpuInstance {
            id: info.id,
            profile_id: info.profileId,
            placement: Placement { start: info.placement.start, size: info.placement.size },
        });
    }
    Ok(instances)
}

/// MIG devices (compute instances exposed as devices): their UUID and the GPU
/// instance they belong to.
pub fn mig_device_uuids(nvml: &Nvml, device: nvmlDevice_t) -> Result<Vec<(u32, String)>, RawError> {
    const COUNT_CALL: &str = "nvmlDeviceGetMaxMigDeviceCount";
    const HANDLE_CALL: &str = "nvmlDeviceGetMigDeviceHandleByIndex";
    const ID_CALL: &str = "nvmlDeviceGetGpuInstanceId";
    const UUID_CALL: &str = "nvmlDeviceGetUUID";
    let lib = nvml.lib();
    let max_count = lib.nvmlDeviceGetMaxMigDeviceCount.as_ref().map_err(|_| missing(COUNT_CALL))?;
    let handle_by_index = lib.nvmlDeviceGetMigDeviceHandleByIndex.as_ref().map_err(|_| missing(HANDLE_CALL))?;
    let instance_id = lib.nvmlDeviceGetGpuInstanceId.as_ref().map_err(|_| missing(ID_CALL))?;
    let get_uuid = lib.nvmlDeviceGetUUID.as_ref().map_err(|_| missing(UUID_CALL))?;
    let mut count: u32 = 0;
    // SAFETY: live handle, valid out-pointer.
    check(COUNT_CALL, unsafe { max_count(device, &mut count) })?;
    let mut devices = Vec::new();
    for index in 0..count.min(64) {
        let mut mig_device: nvmlDevice_t = std::ptr::null_mut();
        // SAFETY: live handle, valid out-pointer; an empty index answers NOT_FOUND.
        if unsafe { handle_by_index(device, index, &mut mig_device) } != nvmlReturn_enum_NVML_SUCCESS {
            continue;
        }
        let mut gpu_instance: u32 = 0;
        // SAFETY: `mig_device` was just returned by NVML; valid out-pointer.
        check(ID_CALL, unsafe { instance_id(mig_device, &mut gpu_instance) })?;
        let mut buffer = [0 as std::ffi::c_char; 96];
        // SAFETY: the buffer holds 96 bytes and we say so; NVML NUL-terminates within it.
        check(UUID_CALL, unsafe { get_uuid(mig_device, buffer.as_mut_ptr(), buffer.len() as u32) })?;
        buffer[95] = 0;
        // SAFETY: NUL-terminated (enforced above), on our stack.
        let uuid = unsafe { CStr::from_ptr(buffer.as_ptr()) }.to_string_lossy().into_owned();
        devices.push((gpu_instance, uuid));
    }
    Ok(devices)
}
