//! Exports for event sets: create, register, wait (delivering lines of the events file) and free.

use std::ffi::{c_uint, c_ulonglong};
use std::time::{Duration, Instant};

use nvml_wrapper_sys::bindings::{
    nvmlDevice_t, nvmlEventData_t, nvmlEventSet_t, nvmlEventTypeClock, nvmlEventTypeDoubleBitEccError,
    nvmlEventTypePState, nvmlEventTypeSingleBitEccError, nvmlEventTypeXidCriticalError,
};

use super::{NvmlResult, check_out, codes, nvml_export, write};
use crate::events::{self, Event};
use crate::machine::Gpu;
use crate::runtime::{Target, with_runtime};

/// How often a waiting call looks at the events file again.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// What a GPU can report: Xid errors, P-state and clock changes (never raised by the fake),
/// and ECC errors when ECC is enabled.
fn supported_event_types(gpu: &Gpu) -> c_ulonglong {
    let mut types = nvmlEventTypeXidCriticalError | nvmlEventTypePState | nvmlEventTypeClock;
    if gpu.ecc_enabled == Some(true) {
        types |= nvmlEventTypeSingleBitEccError | nvmlEventTypeDoubleBitEccError;
    }
    c_ulonglong::from(types)
}

nvml_export! {
    /// A new set starts reading the events file at its current end: only events appended
    /// after the set exists are delivered, as on a real GPU.
    fn nvmlEventSetCreate(set: *mut nvmlEventSet_t) {
        check_out(set)?;
        let handle = with_runtime(|runtime| Ok(runtime.create_event_set()))?;
        // SAFETY: NVML's contract: `set` is writable; not null (checked above).
        unsafe { write(set, handle.cast()) }
    }
}

nvml_export! {
    fn nvmlDeviceGetSupportedEventTypes(device: nvmlDevice_t, event_types: *mut c_ulonglong) {
        let types = with_runtime(|runtime| {
            let gpu = runtime.physical(device.cast())?;
            Ok(supported_event_types(runtime.gpu(gpu)))
        })?;
        // SAFETY: NVML's contract: `event_types` is null or points to a writable ulonglong.
        unsafe { write(event_types, types) }
    }
}

nvml_export! {
    /// Types the GPU does not support make the call fail with `NVML_ERROR_NOT_SUPPORTED`.
    fn nvmlDeviceRegisterEvents(device: nvmlDevice_t, event_types: c_ulonglong, set: nvmlEventSet_t) {
        with_runtime(|runtime| {
            let gpu = runtime.physical(device.cast())?;
            if event_types & !supported_event_types(runtime.gpu(gpu)) != 0 {
                return Err(codes::NOT_SUPPORTED);
            }
            let set = runtime.event_set(set.cast())?;
            match set
                .registrations
                .iter_mut()
                .find(|(registered, _)| *registered == gpu)
            {
                Some((_, types)) => *types |= event_types,
                None => set.registrations.push((gpu, event_types)),
            }
            Ok(())
        })
    }
}

/// Waits up to `timeout_ms` for a line of the events file that the set listens to.
///
/// The runtime lock is held only to look at and advance the set, never while sleeping, so
/// other threads can use the library while one waits.
fn wait(set: nvmlEventSet_t, timeout_ms: c_uint) -> NvmlResult<nvmlEventData_t> {
    let deadline = Instant::now() + Duration::from_millis(u64::from(timeout_ms));
    loop {
        let (path, registrations, cursor) = with_runtime(|runtime| {
            let path = runtime.events_path.clone();
            let found = runtime.event_set(set.cast())?;
            Ok((path, found.registrations.clone(), found.cursor))
        })?;
        if let Some(path) = path {
            let wanted = |event: &Event| {
                registrations
                    .iter()
                    .any(|&(gpu, types)| gpu == event.gpu as usize && types & event.kind.nvml_type() != 0)
            };
            let (next_cursor, event) = events::next_event(&path, cursor, wanted).map_err(|err| {
                crate::report(format_args!("{}: {err}", path.display()));
                codes::UNKNOWN
            })?;
            let delivered = with_runtime(|runtime| {
                runtime.event_set(set.cast())?.cursor = next_cursor;
                Ok(event.map(|event| nvmlEventData_t {
                    device: runtime.handle(Target::Device(event.gpu as usize)).cast(),
                    eventType: event.kind.nvml_type(),
                    eventData: event.kind.data(),
                    gpuInstanceId: event.gpu_instance_id.unwrap_or(u32::MAX),
                    computeInstanceId: event.compute_instance_id.unwrap_or(u32::MAX),
                }))
            })?;
            if let Some(data) = delivered {
                return Ok(data);
            }
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(codes::TIMEOUT);
        }
        std::thread::sleep(POLL_INTERVAL.min(deadline - now));
    }
}

nvml_export! {
    /// Delivers the next line of the events file for a registered GPU and type, one per call;
    /// `NVML_ERROR_TIMEOUT` when none arrives in time.
    fn nvmlEventSetWait_v2(set: nvmlEventSet_t, data: *mut nvmlEventData_t, timeoutms: c_uint) {
        check_out(data)?;
        let event = wait(set, timeoutms)?;
        // SAFETY: NVML's contract: `data` is writable; not null (checked above).
        unsafe { write(data, event) }
    }
}

nvml_export! {
    /// The pre-v2 name of `nvmlEventSetWait_v2`.
    fn nvmlEventSetWait(set: nvmlEventSet_t, data: *mut nvmlEventData_t, timeoutms: c_uint) {
        check_out(data)?;
        let event = wait(set, timeoutms)?;
        // SAFETY: NVML's contract: `data` is writable; not null (checked above).
        unsafe { write(data, event) }
    }
}

nvml_export! {
    fn nvmlEventSetFree(set: nvmlEventSet_t) {
        with_runtime(|runtime| runtime.free_event_set(set.cast()))
    }
}
