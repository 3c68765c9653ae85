//! Exports for MIG: mode, GPU instance profiles and placements, GPU and compute instances,
//! and MIG device handles.
//!
//! Buffers for lists (placements, instances) follow NVML's contract: the count is an output
//! only, and the caller's array must hold every entry (the possible placements, or the
//! profile's `instanceCount` instances).

use std::ffi::{c_uint, c_void};

use nvml_wrapper_sys::bindings::{
    NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED, NVML_DEVICE_MIG_DISABLE, NVML_DEVICE_MIG_ENABLE,
    NVML_GPU_INSTANCE_PROFILE_COUNT, nvmlComputeInstance_t, nvmlComputeInstanceInfo_t, nvmlComputeInstancePlacement_t,
    nvmlComputeInstanceProfileInfo_t, nvmlComputeInstanceProfileInfo_v2_t, nvmlComputeInstanceProfileInfo_v3_t,
    nvmlDevice_t, nvmlGpuInstance_t, nvmlGpuInstanceInfo_t, nvmlGpuInstancePlacement_t, nvmlGpuInstanceProfileInfo_t,
    nvmlGpuInstanceProfileInfo_v2_t, nvmlGpuInstanceProfileInfo_v3_t, nvmlReturn_t,
};

use super::{NvmlResult, check_out, codes, fill_c_array, nvml_export, read, struct_version, write};
use crate::geometry::{Geometry, GpuInstanceProfile, compute_instance_slices};
use crate::mig::GpuMig;
use crate::runtime::{DeviceRef, Runtime, Target, with_runtime};

/// Writes `items` into a caller's array and their number into `count`.
///
/// # Safety
///
/// `array` must be null or hold `items.len()` entries; `count` must be null or writable.
unsafe fn write_list<T>(array: *mut T, count: *mut c_uint, items: &[T]) -> NvmlResult<()>
where
    T: Copy,
{
    check_out(array)?;
    check_out(count)?;
    for (offset, &item) in items.iter().enumerate() {
        // SAFETY: the caller's array holds every entry (NVML's contract, see the module
        // docs), and it is not null (checked above).
        unsafe { write(array.add(offset), item) }?;
    }
    // SAFETY: `count` is not null and writable by the caller's promise.
    unsafe { write(count, items.len() as c_uint) }
}

/// The GPU and geometry behind a physical device handle; MIG handles are not supported.
fn mig_gpu(runtime: &mut Runtime, device: nvmlDevice_t) -> NvmlResult<(usize, &'static Geometry)> {
    let gpu = runtime.physical(device.cast())?;
    Ok((gpu, runtime.geometry(gpu)?))
}

/// The GPU instance profile with id `profile_id`, or an invalid argument.
fn profile_by_id(geometry: &Geometry, profile_id: c_uint) -> NvmlResult<&'static GpuInstanceProfile> {
    geometry.profile_by_id(profile_id).ok_or(codes::INVALID_ARGUMENT)
}

nvml_export! {
    /// Not supported on a GPU without `mig_geometry`.
    fn nvmlDeviceGetMigMode(device: nvmlDevice_t, current_mode: *mut c_uint, pending_mode: *mut c_uint) {
        check_out(current_mode)?;
        check_out(pending_mode)?;
        let mig = with_runtime(|runtime| {
            let (gpu, _) = mig_gpu(runtime, device)?;
            runtime.mig_state(gpu)
        })?;
        // SAFETY: NVML's contract: both are null or point to writable uints.
        unsafe { write(current_mode, c_uint::from(mig.current)) }?;
        // SAFETY: as above.
        unsafe { write(pending_mode, c_uint::from(mig.pending)) }
    }
}

nvml_export! {
    /// Applies the mode at once (current and pending) with `activation_status` SUCCESS, as a
    /// GPU does once reset; disabling fails with `NVML_ERROR_IN_USE` while GPU instances exist.
    fn nvmlDeviceSetMigMode(device: nvmlDevice_t, mode: c_uint, activation_status: *mut nvmlReturn_t) {
        check_out(activation_status)?;
        let enabled = match mode {
            NVML_DEVICE_MIG_ENABLE => true,
            NVML_DEVICE_MIG_DISABLE => false,
            _ => return Err(codes::INVALID_ARGUMENT),
        };
        with_runtime(|runtime| {
            let (gpu, _) = mig_gpu(runtime, device)?;
            runtime.update_mig(gpu, |mig, _| mig.set_mode(enabled))
        })?;
        // SAFETY: NVML's contract: `activation_status` is null or points to a writable
        // return code; it is not null (checked above).
        unsafe { write(activation_status, codes::SUCCESS) }
    }
}

/// The profile a `NVML_GPU_INSTANCE_PROFILE_*` enum names. Like nvml.h says, this needs a
/// MIG-capable GPU but not MIG mode: profiles are a property of the hardware.
fn profile_by_enum(
    device: nvmlDevice_t,
    profile: c_uint,
) -> NvmlResult<(&'static Geometry, &'static GpuInstanceProfile)> {
    if profile >= NVML_GPU_INSTANCE_PROFILE_COUNT {
        return Err(codes::INVALID_ARGUMENT);
    }
    with_runtime(|runtime| {
        let (gpu, geometry) = mig_gpu(runtime, device)?;
        if !runtime.gpu(gpu).mig_profile_info_supported {
            return Err(codes::NOT_SUPPORTED);
        }
        let found = geometry.profile_by_enum(profile).ok_or(codes::NOT_SUPPORTED)?;
        Ok((geometry, found))
    })
}

fn gpu_instance_profile_info(geometry: &Geometry, profile: &GpuInstanceProfile) -> nvmlGpuInstanceProfileInfo_t {
    nvmlGpuInstanceProfileInfo_t {
        id: profile.id,
        isP2pSupported: 0,
        sliceCount: profile.compute_slices,
        instanceCount: profile.max_count,
        multiprocessorCount: profile.multiprocessors(geometry),
        copyEngineCount: profile.copy_engines(),
        decoderCount: profile.decoders(),
        encoderCount: 0,
        jpegCount: profile.jpeg_and_ofa(geometry),
        ofaCount: profile.jpeg_and_ofa(geometry),
        memorySizeMB: profile.memory_mib,
    }
}

nvml_export! {
    /// Takes a profile *enum* and answers with the profile *id* in `info.id`.
    fn nvmlDeviceGetGpuInstanceProfileInfo(
        device: nvmlDevice_t,
        profile: c_uint,
        info: *mut nvmlGpuInstanceProfileInfo_t,
    ) {
        check_out(info)?;
        let (geometry, found) = profile_by_enum(device, profile)?;
        // SAFETY: NVML's contract: `info` is null or points to a writable profile info.
        unsafe { write(info, gpu_instance_profile_info(geometry, found)) }
    }
}

nvml_export! {
    /// The versioned form: `info.version` must be `nvmlGpuInstanceProfileInfo_v2` or `_v3`.
    fn nvmlDeviceGetGpuInstanceProfileInfoV(
        device: nvmlDevice_t,
        profile: c_uint,
        info: *mut nvmlGpuInstanceProfileInfo_v2_t,
    ) {
        check_out(info)?;
        // SAFETY: NVML's contract: `info` points to a versioned struct whose first field, the
        // version, the caller has set; it is not null (checked above).
        let version = unsafe { read(info.cast::<u32>().cast_const()) }?;
        let v2 = struct_version::<nvmlGpuInstanceProfileInfo_v2_t>(2);
        let v3 = struct_version::<nvmlGpuInstanceProfileInfo_v3_t>(3);
        if version != v2 && version != v3 {
            return Err(codes::ARGUMENT_VERSION_MISMATCH);
        }
        let (geometry, found) = profile_by_enum(device, profile)?;
        let plain = gpu_instance_profile_info(geometry, found);
        let name = format!("MIG {}", found.name);
        if version == v2 {
            let mut answer = nvmlGpuInstanceProfileInfo_v2_t {
                version,
                id: plain.id,
                isP2pSupported: plain.isP2pSupported,
                sliceCount: plain.sliceCount,
                instanceCount: plain.instanceCount,
                multiprocessorCount: plain.multiprocessorCount,
                copyEngineCount: plain.copyEngineCount,
                decoderCount: plain.decoderCount,
                encoderCount: plain.encoderCount,
                jpegCount: plain.jpegCount,
                ofaCount: plain.ofaCount,
                memorySizeMB: plain.memorySizeMB,
                name: [0; 96],
            };
            fill_c_array(&mut answer.name, &name);
            // SAFETY: the caller announced a v2 struct, so `info` is valid for writing one.
            unsafe { write(info, answer) }
        } else {
            let mut answer = nvmlGpuInstanceProfileInfo_v3_t {
                version,
                id: plain.id,
                sliceCount: plain.sliceCount,
                instanceCount: plain.instanceCount,
                multiprocessorCount: plain.multiprocessorCount,
                copyEngineCount: plain.copyEngineCount,
                decoderCount: plain.decoderCount,
                encoderCount: plain.encoderCount,
                jpegCount: plain.jpegCount,
                ofaCount: plain.ofaCount,
                memorySizeMB: plain.memorySizeMB,
                name: [0; 96],
                capabilities: 0,
            };
            fill_c_array(&mut answer.name, &name);
            // SAFETY: the caller announced a v3 struct, so `info` is valid for writing one.
            unsafe { write(info.cast::<nvmlGpuInstanceProfileInfo_v3_t>(), answer) }
        }
    }
}

nvml_export! {
    /// Every placement the profile allows, whatever exists already and whether or not MIG is
    /// enabled. With `placements` null only `count` is written.
    fn nvmlDeviceGetGpuInstancePossiblePlacements_v2(
        device: nvmlDevice_t,
        profile_id: c_uint,
        placements: *mut nvmlGpuInstancePlacement_t,
        count: *mut c_uint,
    ) {
        check_out(count)?;
        let profile = with_runtime(|runtime| {
            let (_, geometry) = mig_gpu(runtime, device)?;
            profile_by_id(geometry, profile_id)
        })?;
        let all: Vec<nvmlGpuInstancePlacement_t> = profile
            .starts
            .iter()
            .map(|&start| nvmlGpuInstancePlacement_t {
                start,
                size: profile.memory_slices,
            })
            .collect();
        if placements.is_null() {
            // SAFETY: NVML's contract: `count` is writable; not null (checked above).
            return unsafe { write(count, all.len() as c_uint) };
        }
        // SAFETY: NVML's contract: a non-null `placements` holds every possible placement.
        unsafe { write_list(placements, count, &all) }
    }
}

nvml_export! {
    /// How many more GPU instances of the profile could be created now.
    fn nvmlDeviceGetGpuInstanceRemainingCapacity(device: nvmlDevice_t, profile_id: c_uint, count: *mut c_uint) {
        let remaining = with_runtime(|runtime| {
            let (gpu, geometry) = mig_gpu(runtime, device)?;
            Ok(runtime.mig_state(gpu)?.remaining_capacity(geometry, profile_id)?)
        })?;
        // SAFETY: NVML's contract: `count` is null or points to a writable uint.
        unsafe { write(count, remaining) }
    }
}

fn create_gpu_instance(
    device: nvmlDevice_t,
    profile_id: c_uint,
    placement: Option<(u32, u32)>,
    gpu_instance: *mut nvmlGpuInstance_t,
) -> NvmlResult<()> {
    check_out(gpu_instance)?;
    let handle = with_runtime(|runtime| {
        let (gpu, _) = mig_gpu(runtime, device)?;
        let id = runtime.update_mig(gpu, |mig, geometry| mig.create_gpu_instance(geometry, profile_id, placement))?;
        Ok(runtime.handle(Target::GpuInstance { gpu, gpu_instance: id }))
    })?;
    // SAFETY: NVML's contract: `gpu_instance` is writable; not null (checked above).
    unsafe { write(gpu_instance, handle.cast()) }
}

nvml_export! {
    /// Creates a GPU instance at the lowest allowed start slot that is free.
    fn nvmlDeviceCreateGpuInstance(device: nvmlDevice_t, profile_id: c_uint, gpu_instance: *mut nvmlGpuInstance_t) {
        create_gpu_instance(device, profile_id, None, gpu_instance)
    }
}

nvml_export! {
    /// A disallowed start or a wrong size is an invalid argument; an overlap is
    /// `NVML_ERROR_INSUFFICIENT_RESOURCES`.
    fn nvmlDeviceCreateGpuInstanceWithPlacement(
        device: nvmlDevice_t,
        profile_id: c_uint,
        placement: *const nvmlGpuInstancePlacement_t,
        gpu_instance: *mut nvmlGpuInstance_t,
    ) {
        // SAFETY: NVML's contract: `placement` is null or points to a placement.
        let placement = unsafe { read(placement) }?;
        create_gpu_instance(
            device,
            profile_id,
            Some((placement.start, placement.size)),
            gpu_instance,
        )
    }
}

nvml_export! {
    /// The GPU instances of one profile; `gpu_instances` must hold the profile's
    /// `instanceCount` handles.
    fn nvmlDeviceGetGpuInstances(
        device: nvmlDevice_t,
        profile_id: c_uint,
        gpu_instances: *mut nvmlGpuInstance_t,
        count: *mut c_uint,
    ) {
        check_out(gpu_instances)?;
        check_out(count)?;
        let handles: Vec<nvmlGpuInstance_t> = with_runtime(|runtime| {
            let (gpu, geometry) = mig_gpu(runtime, device)?;
            let ids = runtime.mig_state(gpu)?.gpu_instances_of(geometry, profile_id)?;
            Ok(ids
                .into_iter()
                .map(|id| {
                    runtime
                        .handle(Target::GpuInstance {
                            gpu,
                            gpu_instance: id,
                        })
                        .cast()
                })
                .collect())
        })?;
        // SAFETY: NVML's contract: the array holds the profile's instanceCount handles, at
        // least as many as exist.
        unsafe { write_list(gpu_instances, count, &handles) }
    }
}

nvml_export! {
    fn nvmlDeviceGetGpuInstanceById(device: nvmlDevice_t, id: c_uint, gpu_instance: *mut nvmlGpuInstance_t) {
        check_out(gpu_instance)?;
        let handle = with_runtime(|runtime| {
            let (gpu, _) = mig_gpu(runtime, device)?;
            let mig = runtime.mig_state(gpu)?;
            if !mig.current {
                return Err(codes::NOT_SUPPORTED);
            }
            mig.gpu_instance(id).ok_or(codes::NOT_FOUND)?;
            Ok(runtime.handle(Target::GpuInstance {
                gpu,
                gpu_instance: id,
            }))
        })?;
        // SAFETY: NVML's contract: `gpu_instance` is writable; not null (checked above).
        unsafe { write(gpu_instance, handle.cast()) }
    }
}

/// The state of the GPU behind a GPU instance handle, with the instance id.
fn resolve_gpu_instance(
    runtime: &mut Runtime,
    gpu_instance: nvmlGpuInstance_t,
) -> NvmlResult<(usize, u32, &'static Geometry, GpuMig)> {
    let (gpu, id) = runtime.gpu_instance(gpu_instance.cast())?;
    let geometry = runtime.geometry(gpu)?;
    let mig = runtime.mig_state(gpu)?;
    Ok((gpu, id, geometry, mig))
}

nvml_export! {
    fn nvmlGpuInstanceGetInfo(gpu_instance: nvmlGpuInstance_t, info: *mut nvmlGpuInstanceInfo_t) {
        check_out(info)?;
        let answer = with_runtime(|runtime| {
            let (gpu, id, geometry, mig) = resolve_gpu_instance(runtime, gpu_instance)?;
            let instance = mig.gpu_instance(id).ok_or(codes::INVALID_ARGUMENT)?;
            let profile = instance
                .profile(geometry)
                .ok_or(codes::INVALID_ARGUMENT)?;
            Ok(nvmlGpuInstanceInfo_t {
                device: runtime.handle(Target::Device(gpu)).cast(),
                id,
                profileId: instance.profile_id,
                placement: nvmlGpuInstancePlacement_t {
                    start: instance.start,
                    size: profile.memory_slices,
                },
            })
        })?;
        // SAFETY: NVML's contract: `info` is writable; not null (checked above).
        unsafe { write(info, answer) }
    }
}

nvml_export! {
    /// Fails with `NVML_ERROR_IN_USE` while the instance has compute instances.
    fn nvmlGpuInstanceDestroy(gpu_instance: nvmlGpuInstance_t) {
        with_runtime(|runtime| {
            let (gpu, id) = runtime.gpu_instance(gpu_instance.cast())?;
            runtime.update_mig(gpu, |mig, _| mig.destroy_gpu_instance(id))?;
            runtime.forget_gpu_instance(gpu, id);
            Ok(())
        })
    }
}

/// The compute instance profile info for `profile` (enum, also the id) in a GPU instance.
fn compute_profile_info(
    gpu_instance: nvmlGpuInstance_t,
    profile: c_uint,
    eng_profile: c_uint,
) -> NvmlResult<nvmlComputeInstanceProfileInfo_t> {
    if eng_profile != NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED {
        return Err(codes::INVALID_ARGUMENT);
    }
    with_runtime(|runtime| {
        let (_, id, geometry, mig) = resolve_gpu_instance(runtime, gpu_instance)?;
        let slices = mig.compute_profile_slices(geometry, id, profile)?;
        let gpu_profile =
            mig.gpu_instance(id).and_then(|instance| instance.profile(geometry)).ok_or(codes::INVALID_ARGUMENT)?;
        Ok(nvmlComputeInstanceProfileInfo_t {
            id: profile,
            sliceCount: slices,
            instanceCount: gpu_profile.compute_slices / slices,
            multiprocessorCount: slices * geometry.multiprocessors_per_slice,
            sharedCopyEngineCount: gpu_profile.copy_engines(),
            sharedDecoderCount: gpu_profile.decoders(),
            sharedEncoderCount: 0,
            sharedJpegCount: gpu_profile.jpeg_and_ofa(geometry),
            sharedOfaCount: gpu_profile.jpeg_and_ofa(geometry),
        })
    })
}

nvml_export! {
    /// Takes a compute instance profile enum, which NVML also uses as its id.
    fn nvmlGpuInstanceGetComputeInstanceProfileInfo(
        gpu_instance: nvmlGpuInstance_t,
        profile: c_uint,
        eng_profile: c_uint,
        info: *mut nvmlComputeInstanceProfileInfo_t,
    ) {
        check_out(info)?;
        let answer = compute_profile_info(gpu_instance, profile, eng_profile)?;
        // SAFETY: NVML's contract: `info` is writable; not null (checked above).
        unsafe { write(info, answer) }
    }
}

nvml_export! {
    /// The versioned form: `info.version` must be `nvmlComputeInstanceProfileInfo_v2` or `_v3`.
    fn nvmlGpuInstanceGetComputeInstanceProfileInfoV(
        gpu_instance: nvmlGpuInstance_t,
        profile: c_uint,
        eng_profile: c_uint,
        info: *mut nvmlComputeInstanceProfileInfo_v2_t,
    ) {
        check_out(info)?;
        // SAFETY: NVML's contract: `info` points to a versioned struct whose first field the
        // caller has set; not null (checked above).
        let version = unsafe { read(info.cast::<u32>().cast_const()) }?;
        let v2 = struct_version::<nvmlComputeInstanceProfileInfo_v2_t>(2);
        let v3 = struct_version::<nvmlComputeInstanceProfileInfo_v3_t>(3);
        if version != v2 && version != v3 {
            return Err(codes::ARGUMENT_VERSION_MISMATCH);
        }
        let plain = compute_profile_info(gpu_instance, profile, eng_profile)?;
        let name = format!("MIG {}c", plain.sliceCount);
        if version == v2 {
            let mut answer = nvmlComputeInstanceProfileInfo_v2_t {
                version,
                id: plain.id,
                sliceCount: plain.sliceCount,
                instanceCount: plain.instanceCount,
                multiprocessorCount: plain.multiprocessorCount,
                sharedCopyEngineCount: plain.sharedCopyEngineCount,
                sharedDecoderCount: plain.sharedDecoderCount,
                sharedEncoderCount: plain.sharedEncoderCount,
                sharedJpegCount: plain.sharedJpegCount,
                sharedOfaCount: plain.sharedOfaCount,
                name: [0; 96],
            };
            fill_c_array(&mut answer.name, &name);
            // SAFETY: the caller announced a v2 struct, so `info` is valid for writing one.
            unsafe { write(info, answer) }
        } else {
            let mut answer = nvmlComputeInstanceProfileInfo_v3_t {
                version,
                id: plain.id,
                sliceCount: plain.sliceCount,
                instanceCount: plain.instanceCount,
                multiprocessorCount: plain.multiprocessorCount,
                sharedCopyEngineCount: plain.sharedCopyEngineCount,
                sharedDecoderCount: plain.sharedDecoderCount,
                sharedEncoderCount: plain.sharedEncoderCount,
                sharedJpegCount: plain.sharedJpegCount,
                sharedOfaCount: plain.sharedOfaCount,
                name: [0; 96],
                capabilities: 0,
            };
            fill_c_array(&mut answer.name, &name);
            // SAFETY: the caller announced a v3 struct, so `info` is valid for writing one.
            unsafe { write(info.cast::<nvmlComputeInstanceProfileInfo_v3_t>(), answer) }
        }
    }
}

nvml_export! {
    fn nvmlGpuInstanceGetComputeInstanceRemainingCapacity(
        gpu_instance: nvmlGpuInstance_t,
        profile_id: c_uint,
        count: *mut c_uint,
    ) {
        let remaining = with_runtime(|runtime| {
            let (_, id, geometry, mig) = resolve_gpu_instance(runtime, gpu_instance)?;
            Ok(mig.compute_remaining_capacity(geometry, id, profile_id)?)
        })?;
        // SAFETY: NVML's contract: `count` is null or points to a writable uint.
        unsafe { write(count, remaining) }
    }
}

nvml_export! {
    /// Creates a compute instance on the first free compute slices, with the lowest free id.
    fn nvmlGpuInstanceCreateComputeInstance(
        gpu_instance: nvmlGpuInstance_t,
        profile_id: c_uint,
        compute_instance: *mut nvmlComputeInstance_t,
    ) {
        check_out(compute_instance)?;
        let handle = with_runtime(|runtime| {
            let (gpu, id) = runtime.gpu_instance(gpu_instance.cast())?;
            let compute = runtime.update_mig(gpu, |mig, geometry| {
                mig.create_compute_instance(geometry, id, profile_id)
            })?;
            Ok(runtime.handle(Target::ComputeInstance {
                gpu,
                gpu_instance: id,
                compute_instance: compute,
            }))
        })?;
        // SAFETY: NVML's contract: `compute_instance` is writable; not null (checked above).
        unsafe { write(compute_instance, handle.cast()) }
    }
}

nvml_export! {
    /// The compute instances of one profile; the array must hold the profile's
    /// `instanceCount` handles.
    fn nvmlGpuInstanceGetComputeInstances(
        gpu_instance: nvmlGpuInstance_t,
        profile_id: c_uint,
        compute_instances: *mut nvmlComputeInstance_t,
        count: *mut c_uint,
    ) {
        check_out(compute_instances)?;
        check_out(count)?;
        let handles: Vec<nvmlComputeInstance_t> = with_runtime(|runtime| {
            let (gpu, id, geometry, mig) = resolve_gpu_instance(runtime, gpu_instance)?;
            let ids = mig.compute_instances_of(geometry, id, profile_id)?;
            Ok(ids
                .into_iter()
                .map(|compute| {
                    runtime
                        .handle(Target::ComputeInstance {
                            gpu,
                            gpu_instance: id,
                            compute_instance: compute,
                        })
                        .cast()
                })
                .collect())
        })?;
        // SAFETY: NVML's contract: the array holds the profile's instanceCount handles.
        unsafe { write_list(compute_instances, count, &handles) }
    }
}

nvml_export! {
    fn nvmlGpuInstanceGetComputeInstanceById(
        gpu_instance: nvmlGpuInstance_t,
        id: c_uint,
        compute_instance: *mut nvmlComputeInstance_t,
    ) {
        check_out(compute_instance)?;
        let handle = with_runtime(|runtime| {
            let (gpu, gpu_instance_id, _, mig) = resolve_gpu_instance(runtime, gpu_instance)?;
            mig.compute_instance(gpu_instance_id, id)
                .ok_or(codes::NOT_FOUND)?;
            Ok(runtime.handle(Target::ComputeInstance {
                gpu,
                gpu_instance: gpu_instance_id,
                compute_instance: id,
            }))
        })?;
        // SAFETY: NVML's contract: `compute_instance` is writable; not null (checked above).
        unsafe { write(compute_instance, handle.cast()) }
    }
}

nvml_export! {
    fn nvmlComputeInstanceGetInfo_v2(
        compute_instance: nvmlComputeInstance_t,
        info: *mut nvmlComputeInstanceInfo_t,
    ) {
        check_out(info)?;
        let answer = with_runtime(|runtime| {
            let (gpu, gpu_instance, id) = runtime.compute_instance(compute_instance.cast())?;
            let compute = runtime
                .mig_state(gpu)?
                .compute_instance(gpu_instance, id)
                .cloned()
                .ok_or(codes::INVALID_ARGUMENT)?;
            let size = compute_instance_slices(compute.profile_id).unwrap_or(0);
            Ok(nvmlComputeInstanceInfo_t {
                device: runtime.handle(Target::Device(gpu)).cast(),
                gpuInstance: runtime
                    .handle(Target::GpuInstance { gpu, gpu_instance })
                    .cast(),
                id,
                profileId: compute.profile_id,
                placement: nvmlComputeInstancePlacement_t {
                    start: compute.start,
                    size,
                },
            })
        })?;
        // SAFETY: NVML's contract: `info` is writable; not null (checked above).
        unsafe { write(info, answer) }
    }
}

nvml_export! {
    fn nvmlComputeInstanceDestroy(compute_instance: nvmlComputeInstance_t) {
        with_runtime(|runtime| {
            let (gpu, gpu_instance, id) = runtime.compute_instance(compute_instance.cast())?;
            runtime.update_mig(gpu, |mig, _| mig.destroy_compute_instance(gpu_instance, id))?;
            runtime.forget_compute_instance(gpu, gpu_instance, id);
            Ok(())
        })
    }
}

nvml_export! {
    /// The geometry's compute slice count (7, or 4 for an A30) while MIG is enabled, else 0.
    fn nvmlDeviceGetMaxMigDeviceCount(device: nvmlDevice_t, count: *mut c_uint) {
        let max = with_runtime(|runtime| {
            let (gpu, geometry) = mig_gpu(runtime, device)?;
            let enabled = runtime.mig_state(gpu)?.current;
            Ok(if enabled { geometry.compute_slices } else { 0 })
        })?;
        // SAFETY: NVML's contract: `count` is null or points to a writable uint.
        unsafe { write(count, max) }
    }
}

nvml_export! {
    /// MIG devices are numbered densely in (GPU instance id, compute instance id) order;
    /// an index past the last is `NVML_ERROR_NOT_FOUND`.
    fn nvmlDeviceGetMigDeviceHandleByIndex(device: nvmlDevice_t, index: c_uint, mig_device: *mut nvmlDevice_t) {
        check_out(mig_device)?;
        let handle = with_runtime(|runtime| {
            let (gpu, _) = mig_gpu(runtime, device)?;
            let devices = runtime.mig_state(gpu)?.mig_devices();
            let &(gpu_instance, compute_instance) =
                devices.get(index as usize).ok_or(codes::NOT_FOUND)?;
            Ok(runtime.handle(Target::MigDevice {
                gpu,
                gpu_instance,
                compute_instance,
            }))
        })?;
        // SAFETY: NVML's contract: `mig_device` is writable; not null (checked above).
        unsafe { write(mig_device, handle.cast()) }
    }
}

nvml_export! {
    fn nvmlDeviceIsMigDeviceHandle(device: nvmlDevice_t, is_mig_device: *mut c_uint) {
        let is_mig = with_runtime(|runtime| {
            Ok(matches!(runtime.device(device.cast())?, DeviceRef::Mig { .. }))
        })?;
        // SAFETY: NVML's contract: `is_mig_device` is null or points to a writable uint.
        unsafe { write(is_mig_device, c_uint::from(is_mig)) }
    }
}

nvml_export! {
    fn nvmlDeviceGetDeviceHandleFromMigDeviceHandle(mig_device: nvmlDevice_t, device: *mut nvmlDevice_t) {
        check_out(device)?;
        let handle = with_runtime(|runtime| match runtime.device(mig_device.cast())? {
            DeviceRef::Mig { gpu, .. } => Ok(runtime.handle(Target::Device(gpu))),
            DeviceRef::Gpu(_) => Err(codes::INVALID_ARGUMENT),
        })?;
        // SAFETY: NVML's contract: `device` is writable; not null (checked above).
        unsafe { write(device, handle.cast::<c_void>().cast()) }
    }
}

/// The (GPU instance id, compute instance id) of a MIG device handle; not supported for a
/// GPU handle.
fn mig_ids(device: nvmlDevice_t) -> NvmlResult<(u32, u32)> {
    with_runtime(|runtime| match runtime.device(device.cast())? {
        DeviceRef::Mig { gpu_instance, compute_instance, .. } => Ok((gpu_instance, compute_instance)),
        DeviceRef::Gpu(_) => Err(codes::NOT_SUPPORTED),
    })
}

nvml_export! {
    fn nvmlDeviceGetGpuInstanceId(device: nvmlDevice_t, id: *mut c_uint) {
        let (gpu_instance, _) = mig_ids(device)?;
        // SAFETY: NVML's contract: `id` is null or points to a writable uint.
        unsafe { write(id, gpu_instance) }
    }
}

nvml_export! {
    fn nvmlDeviceGetComputeInstanceId(device: nvmlDevice_t, id: *mut c_uint) {
        let (_, compute_instance) = mig_ids(device)?;
        // SAFETY: NVML's contract: `id` is null or points to a writable uint.
        unsafe { write(id, compute_instance) }
    }
}
