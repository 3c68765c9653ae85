//! Exports for init, shutdown, system versions and device enumeration.

use std::ffi::{c_char, c_int, c_uint};

use nvml_wrapper_sys::bindings::nvmlDevice_t;

use super::{NvmlResult, codes, nvml_export, read_str, write, write_str};
use crate::pci::PciAddress;
use crate::runtime::{self, Target, with_runtime};

fn init() -> NvmlResult<()> {
    match runtime::init() {
        codes::SUCCESS => Ok(()),
        code => Err(code),
    }
}

nvml_export! {
    /// Loads the machine description on the first call; later calls only count.
    fn nvmlInit_v2() {
        init()
    }
}

nvml_export! {
    /// The pre-v2 name of `nvmlInit_v2`.
    fn nvmlInit() {
        init()
    }
}

nvml_export! {
    /// `nvmlInit_v2` with flags; the fake has no GPUs to attach, so the flags change nothing.
    fn nvmlInitWithFlags(flags: c_uint) {
        let _ = flags;
        init()
    }
}

nvml_export! {
    /// Balances one init; the last one forgets the machine, handles and in-process state.
    fn nvmlShutdown() {
        match runtime::shutdown() {
            codes::SUCCESS => Ok(()),
            code => Err(code),
        }
    }
}

nvml_export! {
    fn nvmlSystemGetDriverVersion(version: *mut c_char, length: c_uint) {
        let text = with_runtime(|runtime| Ok(runtime.machine.driver_version.clone()))?;
        // SAFETY: NVML's contract: `version` is null or holds `length` bytes.
        unsafe { write_str(version, length, &text) }
    }
}

nvml_export! {
    /// `<CUDA major>.<driver version>`, the form real NVML reports (e.g. `12.550.90.07`).
    fn nvmlSystemGetNVMLVersion(version: *mut c_char, length: c_uint) {
        let text = with_runtime(|runtime| {
            let machine = &runtime.machine;
            Ok(format!(
                "{}.{}",
                machine.cuda_driver_version / 1000,
                machine.driver_version
            ))
        })?;
        // SAFETY: NVML's contract: `version` is null or holds `length` bytes.
        unsafe { write_str(version, length, &text) }
    }
}

fn write_cuda_driver_version(out: *mut c_int) -> NvmlResult<()> {
    let version = with_runtime(|runtime| Ok(runtime.machine.cuda_driver_version))?;
    // SAFETY: NVML's contract: `out` is null or points to a writable int.
    unsafe { write(out, version) }
}

nvml_export! {
    fn nvmlSystemGetCudaDriverVersion(version: *mut c_int) {
        write_cuda_driver_version(version)
    }
}

nvml_export! {
    fn nvmlSystemGetCudaDriverVersion_v2(version: *mut c_int) {
        write_cuda_driver_version(version)
    }
}

nvml_export! {
    /// The number of physical GPUs; MIG devices are not counted, as in real NVML.
    fn nvmlDeviceGetCount_v2(count: *mut c_uint) {
        let gpus = with_runtime(|runtime| Ok(runtime.machine.gpus.len() as c_uint))?;
        // SAFETY: NVML's contract: `count` is null or points to a writable uint.
        unsafe { write(count, gpus) }
    }
}

nvml_export! {
    fn nvmlDeviceGetHandleByIndex_v2(index: c_uint, device: *mut nvmlDevice_t) {
        let handle = with_runtime(|runtime| {
            let position = index as usize;
            if position >= runtime.machine.gpus.len() {
                return Err(codes::INVALID_ARGUMENT);
            }
            runtime.reachable(position)?;
            Ok(runtime.handle(Target::Device(position)))
        })?;
        // SAFETY: NVML's contract: `device` is null or points to a writable handle.
        unsafe { write(device, handle.cast()) }
    }
}

nvml_export! {
    /// Accepts NVML's and hwloc's spellings of the bus id, in either case.
    fn nvmlDeviceGetHandleByPciBusId_v2(pci_bus_id: *const c_char, device: *mut nvmlDevice_t) {
        // SAFETY: NVML's contract: `pci_bus_id` is null or a NUL-terminated string.
        let text = unsafe { read_str(pci_bus_id) }?;
        let pci = PciAddress::parse(&text).ok_or(codes::INVALID_ARGUMENT)?;
        let handle = with_runtime(|runtime| {
            let position = runtime
                .machine
                .gpus
                .iter()
                .position(|gpu| gpu.pci == pci)
                .ok_or(codes::NOT_FOUND)?;
            runtime.reachable(position)?;
            Ok(runtime.handle(Target::Device(position)))
        })?;
        // SAFETY: NVML's contract: `device` is null or points to a writable handle.
        unsafe { write(device, handle.cast()) }
    }
}

nvml_export! {
    /// Finds a GPU by its UUID, or a MIG device by its `MIG-` UUID.
    fn nvmlDeviceGetHandleByUUID(uuid: *const c_char, device: *mut nvmlDevice_t) {
        // SAFETY: NVML's contract: `uuid` is null or a NUL-terminated string.
        let text = unsafe { read_str(uuid) }?;
        let handle = with_runtime(|runtime| {
            if let Some(position) = runtime.machine.gpu_by_uuid(&text) {
                runtime.reachable(position)?;
                return Ok(runtime.handle(Target::Device(position)));
            }
            if text.starts_with("MIG-") {
                for gpu in 0..runtime.machine.gpus.len() {
                    if runtime.geometry(gpu).is_err() {
                        continue;
                    }
                    let gpu_uuid = runtime.gpu(gpu).uuid.clone();
                    for (gpu_instance, compute_instance) in runtime.mig_state(gpu)?.mig_devices() {
                        let mig_uuid = crate::mig::mig_device_uuid(
                            &gpu_uuid,
                            gpu_instance,
                            compute_instance,
                        );
                        if mig_uuid == text {
                            return Ok(runtime.handle(Target::MigDevice {
                                gpu,
                                gpu_instance,
                                compute_instance,
                            }));
                        }
                    }
                }
            }
            Err(codes::NOT_FOUND)
        })?;
        // SAFETY: NVML's contract: `device` is null or points to a writable handle.
        unsafe { write(device, handle.cast()) }
    }
}
