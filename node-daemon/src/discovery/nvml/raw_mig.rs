//! The NVML calls that change a GPU's MIG layout (MIG mode, GPU and compute
//! instances), made through nvml-wrapper-sys because nvml-wrapper 0.13 cannot
//! create or destroy instances. The sibling of `raw.rs`, with the same rules:
//! every symbol is looked up before use and every unsafe block says why it is sound.

use std::mem;

use nvml_wrapper::Nvml;
use nvml_wrapper_sys::bindings::{
    NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED, NVML_COMPUTE_INSTANCE_PROFILE_COUNT, NVML_DEVICE_MIG_DISABLE,
    NVML_DEVICE_MIG_ENABLE, nvmlComputeInstance_t, nvmlComputeInstanceInfo_t, nvmlComputeInstanceProfileInfo_t,
    nvmlDevice_t, nvmlGpuInstance_t, nvmlGpuInstanceInfo_t, nvmlGpuInstancePlacement_t,
    nvmlReturn_enum_NVML_ERROR_IN_USE, nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_RESOURCES,
    nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT, nvmlReturn_enum_NVML_ERROR_NOT_FOUND,
    nvmlReturn_enum_NVML_ERROR_NOT_SUPPORTED, nvmlReturn_enum_NVML_SUCCESS, nvmlReturn_t,
};

use super::raw::{RawError, check, missing};

/// Like `raw::check`, with words for the codes MIG calls answer (nvml-wrapper
/// has no variant for INSUFFICIENT_RESOURCES).
fn check_mig(call: &'static str, code: nvmlReturn_t) -> Result<(), RawError> {
    #[allow(non_upper_case_globals)]
    let problem = match code {
        nvmlReturn_enum_NVML_SUCCESS => return Ok(()),
        nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_RESOURCES => {
            "insufficient resources (the slots overlap an existing instance, or the profile is at its maximum count)"
        }
        nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT => "invalid argument (a placement the profile does not allow)",
        nvmlReturn_enum_NVML_ERROR_IN_USE => "in use",
        nvmlReturn_enum_NVML_ERROR_NOT_FOUND => "not found",
        nvmlReturn_enum_NVML_ERROR_NOT_SUPPORTED => "not supported (is MIG mode enabled?)",
        _ => return check(call, code),
    };
    Err(RawError { call, code: Some(code), problem: problem.to_owned() })
}

/// `nvmlDeviceSetMigMode`. The activation status is NVML's word on whether the
/// mode is in effect now (a real GPU may need a reset).
pub fn set_mig_mode(nvml: &Nvml, device: nvmlDevice_t, enable: bool) -> Result<(), RawError> {
    const CALL: &str = "nvmlDeviceSetMigMode";
    let function = nvml.lib().nvmlDeviceSetMigMode.as_ref().map_err(|_| missing(CALL))?;
    let mode = if enable { NVML_DEVICE_MIG_ENABLE } else { NVML_DEVICE_MIG_DISABLE };
    let mut activation: nvmlReturn_t = nvmlReturn_enum_NVML_SUCCESS;
    // SAFETY: `device` is a live handle from this `Nvml`; `activation` is a valid out-pointer.
    check_mig(CALL, unsafe { function(device, mode, &mut activation) })?;
    check_mig("nvmlDeviceSetMigMode (activation)", activation)
}

fn gpu_instance_by_id(nvml: &Nvml, device: nvmlDevice_t, id: u32) -> Result<nvmlGpuInstance_t, RawError> {
    const CALL: &str = "nvmlDeviceGetGpuInstanceById";
    let function = nvml.lib().nvmlDeviceGetGpuInstanceById.as_ref().map_err(|_| missing(CALL))?;
    let mut instance: nvmlGpuInstance_t = std::ptr::null_mut();
    // SAFETY: live device handle; valid out-pointer.
    check_mig(CALL, unsafe { function(device, id, &mut instance) })?;
    Ok(instance)
}

/// `nvmlDeviceCreateGpuInstanceWithPlacement`; answers the new instance's id.
pub fn create_gpu_instance(
    nvml: &Nvml,
    device: nvmlDevice_t,
    profile_id: u32,
    start: u32,
    size: u32,
) -> Result<u32, RawError> {
    const CALL: &str = "nvmlDeviceCreateGpuInstanceWithPlacement";
    const INFO_CALL: &str = "nvmlGpuInstanceGetInfo";
    let lib = nvml.lib();
    let create = lib.nvmlDeviceCreateGpuInstanceWithPlacement.as_ref().map_err(|_| missing(CALL))?;
    let get_info = lib.nvmlGpuInstanceGetInfo.as_ref().map_err(|_| missing(INFO_CALL))?;
    let placement = nvmlGpuInstancePlacement_t { start, size };
    let mut instance: nvmlGpuInstance_t = std::ptr::null_mut();
    // SAFETY: live device handle; `placement` lives across the call; valid out-pointer.
    check_mig(CALL, unsafe { create(device, profile_id, &placement, &mut instance) })?;
    // SAFETY: plain old data; all-zero is a valid value.
    let mut info: nvmlGpuInstanceInfo_t = unsafe { mem::zeroed() };
    // SAFETY: `instance` was just created by NVML for this device; valid out-pointer.
    check_mig(INFO_CALL, unsafe { get_info(instance, &mut info) })?;
    Ok(info.id)
}

/// Compute instance profiles of a GPU instance: (profile id, slice count).
fn compute_profiles(nvml: &Nvml, instance: nvmlGpuInstance_t) -> Result<Vec<(u32, u32)>, RawError> {
    const CALL: &str = "nvmlGpuInstanceGetComputeInstanceProfileInfo";
    let function = nvml.lib().nvmlGpuInstanceGetComputeInstanceProfileInfo.as_ref().map_err(|_| missing(CALL))?;
    let mut profiles = Vec::new();
    for profile in 0..NVML_COMPUTE_INSTANCE_PROFILE_COUNT {
        // SAFETY: plain old data; all-zero is valid.
        let mut info: nvmlComputeInstanceProfileInfo_t = unsafe { mem::zeroed() };
        // SAFETY: live GPU instance handle, in-range enums, valid out-pointer.
        let code = unsafe { function(instance, profile, NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED, &mut info) };
        if code == nvmlReturn_enum_NVML_SUCCESS {
            profiles.push((info.id, info.sliceCount));
        }
    }
    Ok(profiles)
}

/// Creates one compute instance that takes the whole GPU instance (the largest
/// compute profile it offers); answers its id.
pub fn create_full_compute_instance(nvml: &Nvml, device: nvmlDevice_t, gpu_instance_id: u32) -> Result<u32, RawError> {
    const CALL: &str = "nvmlGpuInstanceCreateComputeInstance";
    const INFO_CALL: &str = "nvmlComputeInstanceGetInfo_v2";
    let lib = nvml.lib();
    let create = lib.nvmlGpuInstanceCreateComputeInstance.as_ref().map_err(|_| missing(CALL))?;
    let get_info = lib.nvmlComputeInstanceGetInfo_v2.as_ref().map_err(|_| missing(INFO_CALL))?;
    let instance = gpu_instance_by_id(nvml, device, gpu_instance_id)?;
    let Some((profile_id, _)) = compute_profiles(nvml, instance)?.into_iter().max_by_key(|(_, slices)| *slices) else {
        return Err(RawError {
            call: "nvmlGpuInstanceGetComputeInstanceProfileInfo",
            code: None,
            problem: format!("GPU instance {gpu_instance_id} offers no compute instance profile"),
        });
    };
    let mut compute: nvmlComputeInstance_t = std::ptr::null_mut();
    // SAFETY: live GPU instance handle; valid out-pointer.
    check_mig(CALL, unsafe { create(instance, profile_id, &mut compute) })?;
    // SAFETY: plain old data; all-zero is valid.
    let mut info: nvmlComputeInstanceInfo_t = unsafe { mem::zeroed() };
    // SAFETY: `compute` was just created by NVML; valid out-pointer.
    check_mig(INFO_CALL, unsafe { get_info(compute, &mut info) })?;
    Ok(info.id)
}

/// Destroys a GPU instance and, first, every compute instance in it. An
/// instance that no longer exists is not an error.
pub fn destroy_gpu_instance(nvml: &Nvml, device: nvmlDevice_t, gpu_instance_id: u32) -> Result<(), RawError> {
    const LIST_CALL: &str = "nvmlGpuInstanceGetComputeInstances";
    const CI_DESTROY_CALL: &str = "nvmlComputeInstanceDestroy";
    const GI_DESTROY_CALL: &str = "nvmlGpuInstanceDestroy";
    let lib = nvml.lib();
    let list = lib.nvmlGpuInstanceGetComputeInstances.as_ref().map_err(|_| missing(LIST_CALL))?;
    let destroy_compute = lib.nvmlComputeInstanceDestroy.as_ref().map_err(|_| missing(CI_DESTROY_CALL))?;
    let destroy_gpu = lib.nvmlGpuInstanceDestroy.as_ref().map_err(|_| missing(GI_DESTROY_CALL))?;
    let instance = match gpu_instance_by_id(nvml, device, gpu_instance_id) {
        Ok(instance) => instance,
        Err(error) if error.code == Some(nvmlReturn_enum_NVML_ERROR_NOT_FOUND) => return Ok(()),
        Err(error) => return Err(error),
    };
    for (profile_id, _) in compute_profiles(nvml, instance)? {
        // At most 8 compute instances fit a GPU instance; 16 leaves room.
        let mut handles: [nvmlComputeInstance_t; 16] = [std::ptr::null_mut(); 16];
        let mut count: u32 = 0;
        // SAFETY: live GPU instance handle; the array holds 16 handles, more than NVML returns.
        check_mig(LIST_CALL, unsafe { list(instance, profile_id, handles.as_mut_ptr(), &mut count) })?;
        for handle in &handles[..(count as usize).min(handles.len())] {
            // SAFETY: `handle` was just returned by NVML for this GPU instance.
            check_mig(CI_DESTROY_CALL, unsafe { destroy_compute(*handle) })?;
        }
    }
    // SAFETY: live GPU instance handle, now without compute instances.
    check_mig(GI_DESTROY_CALL, unsafe { destroy_gpu(instance) })
}
