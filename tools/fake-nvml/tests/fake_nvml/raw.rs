//! Raw NVML calls through nvml-wrapper-sys, for what the safe wrapper lacks (GPU and compute
//! instances, placements) or gets wrong (NVLink remote device type). The one unsafe module
//! of the tests, like the one Allot's node daemon has.

use std::ptr;

use nvml_wrapper::{Device, Nvml};
use nvml_wrapper_sys::bindings::{
    nvmlComputeInstance_t, nvmlComputeInstanceInfo_t, nvmlComputeInstanceProfileInfo_t, nvmlDevice_t,
    nvmlGpuInstance_t, nvmlGpuInstanceInfo_t, nvmlGpuInstancePlacement_t, nvmlGpuInstanceProfileInfo_v2_t,
    nvmlReturn_enum_NVML_SUCCESS, nvmlReturn_t,
};

pub use nvml_wrapper_sys::bindings::{
    nvmlReturn_enum_NVML_ERROR_IN_USE as IN_USE,
    nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_RESOURCES as INSUFFICIENT_RESOURCES,
    nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_SIZE as INSUFFICIENT_SIZE,
    nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT as INVALID_ARGUMENT, nvmlReturn_enum_NVML_ERROR_NOT_FOUND as NOT_FOUND,
    nvmlReturn_enum_NVML_ERROR_NOT_SUPPORTED as NOT_SUPPORTED,
    nvmlReturn_enum_NVML_ERROR_UNINITIALIZED as UNINITIALIZED, nvmlReturn_enum_NVML_SUCCESS as SUCCESS,
};

pub type Code = nvmlReturn_t;

fn check(code: Code) -> Result<(), Code> {
    if code == nvmlReturn_enum_NVML_SUCCESS { Ok(()) } else { Err(code) }
}

/// The raw handle of a device, to pass back to the library that made it.
pub fn handle(device: &Device) -> nvmlDevice_t {
    // SAFETY: the handle is only ever passed back to the NVML library it came from.
    unsafe { device.handle() }
}

pub fn possible_placements(nvml: &Nvml, device: &Device, profile_id: u32) -> Result<Vec<(u32, u32)>, Code> {
    let mut count = 0;
    // SAFETY: a live device handle; a null array asks for the count only, into a live local.
    check(unsafe {
        nvml.lib().nvmlDeviceGetGpuInstancePossiblePlacements_v2(
            handle(device),
            profile_id,
            ptr::null_mut(),
            &mut count,
        )
    })?;
    let mut placements = vec![nvmlGpuInstancePlacement_t { start: 0, size: 0 }; count as usize];
    // SAFETY: the array holds `count` placements, as many as the first call announced.
    check(unsafe {
        nvml.lib().nvmlDeviceGetGpuInstancePossiblePlacements_v2(
            handle(device),
            profile_id,
            placements.as_mut_ptr(),
            &mut count,
        )
    })?;
    placements.truncate(count as usize);
    Ok(placements.iter().map(|placement| (placement.start, placement.size)).collect())
}

pub fn gpu_instance_profile_info_v2(
    nvml: &Nvml,
    device: &Device,
    profile_enum: u32,
) -> Result<nvmlGpuInstanceProfileInfo_v2_t, Code> {
    let mut info = nvmlGpuInstanceProfileInfo_v2_t {
        version: (std::mem::size_of::<nvmlGpuInstanceProfileInfo_v2_t>() as u32) | (2 << 24),
        id: 0,
        isP2pSupported: 0,
        sliceCount: 0,
        instanceCount: 0,
        multiprocessorCount: 0,
        copyEngineCount: 0,
        decoderCount: 0,
        encoderCount: 0,
        jpegCount: 0,
        ofaCount: 0,
        memorySizeMB: 0,
        name: [0; 96],
    };
    // SAFETY: a live device handle and a live, versioned struct.
    check(unsafe { nvml.lib().nvmlDeviceGetGpuInstanceProfileInfoV(handle(device), profile_enum, &mut info) })?;
    Ok(info)
}

pub fn remaining_capacity(nvml: &Nvml, device: &Device, profile_id: u32) -> Result<u32, Code> {
    let mut count = 0;
    // SAFETY: a live device handle and a live local for the count.
    check(unsafe { nvml.lib().nvmlDeviceGetGpuInstanceRemainingCapacity(handle(device), profile_id, &mut count) })?;
    Ok(count)
}

/// Creates a GPU instance, at `placement` (start, size) when given.
pub fn create_gpu_instance(
    nvml: &Nvml,
    device: &Device,
    profile_id: u32,
    placement: Option<(u32, u32)>,
) -> Result<nvmlGpuInstance_t, Code> {
    let mut instance: nvmlGpuInstance_t = ptr::null_mut();
    match placement {
        Some((start, size)) => {
            let placement = nvmlGpuInstancePlacement_t { start, size };
            // SAFETY: a live device handle, a live placement and a live out-parameter.
            check(unsafe {
                nvml.lib().nvmlDeviceCreateGpuInstanceWithPlacement(
                    handle(device),
                    profile_id,
                    &placement,
                    &mut instance,
                )
            })?;
        }
        None => {
            // SAFETY: a live device handle and a live out-parameter.
            check(unsafe { nvml.lib().nvmlDeviceCreateGpuInstance(handle(device), profile_id, &mut instance) })?;
        }
    }
    Ok(instance)
}

/// The GPU instances of a profile (room for 8, more than any profile allows).
pub fn gpu_instances(nvml: &Nvml, device: &Device, profile_id: u32) -> Result<Vec<nvmlGpuInstance_t>, Code> {
    let mut instances: Vec<nvmlGpuInstance_t> = vec![ptr::null_mut(); 8];
    let mut count = 0;
    // SAFETY: a live device handle and an array of 8 handles, more than any profile's
    // instanceCount, as NVML requires.
    check(unsafe {
        nvml.lib().nvmlDeviceGetGpuInstances(handle(device), profile_id, instances.as_mut_ptr(), &mut count)
    })?;
    instances.truncate(count as usize);
    Ok(instances)
}

pub fn gpu_instance_by_id(nvml: &Nvml, device: &Device, id: u32) -> Result<nvmlGpuInstance_t, Code> {
    let mut instance: nvmlGpuInstance_t = ptr::null_mut();
    // SAFETY: a live device handle and a live out-parameter.
    check(unsafe { nvml.lib().nvmlDeviceGetGpuInstanceById(handle(device), id, &mut instance) })?;
    Ok(instance)
}

pub fn gpu_instance_info(nvml: &Nvml, instance: nvmlGpuInstance_t) -> Result<nvmlGpuInstanceInfo_t, Code> {
    let mut info = nvmlGpuInstanceInfo_t {
        device: ptr::null_mut(),
        id: 0,
        profileId: 0,
        placement: nvmlGpuInstancePlacement_t { start: 0, size: 0 },
    };
    // SAFETY: a GPU instance handle from this library (or a stale one, which it refuses)
    // and a live out-parameter.
    check(unsafe { nvml.lib().nvmlGpuInstanceGetInfo(instance, &mut info) })?;
    Ok(info)
}

pub fn destroy_gpu_instance(nvml: &Nvml, instance: nvmlGpuInstance_t) -> Result<(), Code> {
    // SAFETY: a GPU instance handle from this library; the fake refuses stale ones.
    check(unsafe { nvml.lib().nvmlGpuInstanceDestroy(instance) })
}

pub fn compute_profile_info(
    nvml: &Nvml,
    instance: nvmlGpuInstance_t,
    profile: u32,
) -> Result<nvmlComputeInstanceProfileInfo_t, Code> {
    let mut info = nvmlComputeInstanceProfileInfo_t {
        id: 0,
        sliceCount: 0,
        instanceCount: 0,
        multiprocessorCount: 0,
        sharedCopyEngineCount: 0,
        sharedDecoderCount: 0,
        sharedEncoderCount: 0,
        sharedJpegCount: 0,
        sharedOfaCount: 0,
    };
    // SAFETY: a GPU instance handle from this library and a live out-parameter.
    check(unsafe { nvml.lib().nvmlGpuInstanceGetComputeInstanceProfileInfo(instance, profile, 0, &mut info) })?;
    Ok(info)
}

pub fn compute_remaining_capacity(nvml: &Nvml, instance: nvmlGpuInstance_t, profile_id: u32) -> Result<u32, Code> {
    let mut count = 0;
    // SAFETY: a GPU instance handle from this library and a live local for the count.
    check(unsafe { nvml.lib().nvmlGpuInstanceGetComputeInstanceRemainingCapacity(instance, profile_id, &mut count) })?;
    Ok(count)
}

pub fn create_compute_instance(
    nvml: &Nvml,
    instance: nvmlGpuInstance_t,
    profile_id: u32,
) -> Result<nvmlComputeInstance_t, Code> {
    let mut compute: nvmlComputeInstance_t = ptr::null_mut();
    // SAFETY: a GPU instance handle from this library and a live out-parameter.
    check(unsafe { nvml.lib().nvmlGpuInstanceCreateComputeInstance(instance, profile_id, &mut compute) })?;
    Ok(compute)
}

pub fn compute_instances(
    nvml: &Nvml,
    instance: nvmlGpuInstance_t,
    profile_id: u32,
) -> Result<Vec<nvmlComputeInstance_t>, Code> {
    let mut computes: Vec<nvmlComputeInstance_t> = vec![ptr::null_mut(); 8];
    let mut count = 0;
    // SAFETY: a GPU instance handle from this library and an array of 8 handles, more
    // than any compute profile's instanceCount.
    check(unsafe {
        nvml.lib().nvmlGpuInstanceGetComputeInstances(instance, profile_id, computes.as_mut_ptr(), &mut count)
    })?;
    computes.truncate(count as usize);
    Ok(computes)
}

pub fn compute_instance_info(nvml: &Nvml, compute: nvmlComputeInstance_t) -> Result<nvmlComputeInstanceInfo_t, Code> {
    let mut info = nvmlComputeInstanceInfo_t {
        device: ptr::null_mut(),
        gpuInstance: ptr::null_mut(),
        id: 0,
        profileId: 0,
        placement: nvml_wrapper_sys::bindings::nvmlComputeInstancePlacement_t { start: 0, size: 0 },
    };
    // SAFETY: a compute instance handle from this library and a live out-parameter.
    check(unsafe { nvml.lib().nvmlComputeInstanceGetInfo_v2(compute, &mut info) })?;
    Ok(info)
}

pub fn destroy_compute_instance(nvml: &Nvml, compute: nvmlComputeInstance_t) -> Result<(), Code> {
    // SAFETY: a compute instance handle from this library; the fake refuses stale ones.
    check(unsafe { nvml.lib().nvmlComputeInstanceDestroy(compute) })
}

/// (GPU instance id, compute instance id) of a MIG device.
pub fn mig_ids(nvml: &Nvml, device: &Device) -> Result<(u32, u32), Code> {
    let (mut gpu_instance, mut compute_instance) = (0, 0);
    // SAFETY: a live device handle and live out-parameters.
    check(unsafe { nvml.lib().nvmlDeviceGetGpuInstanceId(handle(device), &mut gpu_instance) })?;
    // SAFETY: as above.
    check(unsafe { nvml.lib().nvmlDeviceGetComputeInstanceId(handle(device), &mut compute_instance) })?;
    Ok((gpu_instance, compute_instance))
}

/// `nvmlDeviceGetNvLinkRemoteDeviceType`, which nvml-wrapper 0.13 cannot return (see
/// `devices::nvlink_to_gpus_and_nvswitches`).
pub fn nvlink_remote_device_type(nvml: &Nvml, device: &Device, link: u32) -> Result<u32, Code> {
    let mut device_type = 255;
    // SAFETY: a live device handle and a live out-parameter.
    check(unsafe { nvml.lib().nvmlDeviceGetNvLinkRemoteDeviceType(handle(device), link, &mut device_type) })?;
    Ok(device_type)
}
