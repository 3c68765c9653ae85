//! NVML for enforcement: [`NvmlControl`] implements the [`MigDriver`] trait
//! (layout, MIG mode, creating and destroying instances), and [`watch_events`]
//! follows Xid and ECC events on a blocking thread. Kept beside discovery so
//! that NVML stays behind this one module.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use nvml_wrapper::Nvml;
use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::error::NvmlError;

use super::{NvmlSource, raw, raw_mig};
use crate::enforce::mig::{GpuMig, MigDriver, MigError, ObservedInstance};

/// MIG control through an NVML library that stays loaded.
#[derive(Debug)]
pub struct NvmlControl {
    nvml: Nvml,
}

fn mig_error(gpu: u32, action: &str, problem: impl ToString) -> MigError {
    MigError { gpu, action: action.to_owned(), problem: problem.to_string() }
}

fn load(source: &NvmlSource) -> Result<Option<Nvml>, String> {
    if source.library.as_os_str().is_empty() {
        return Ok(None);
    }
    match Nvml::builder().lib_path(OsStr::new(&source.library)).init() {
        Ok(nvml) => Ok(Some(nvml)),
        Err(NvmlError::LibloadingError(_)) if !source.required => Ok(None),
        Err(error) => Err(format!("cannot load NVML library {}: {error}", source.library.display())),
    }
}

impl NvmlControl {
    /// Loads the library discovery uses; `None` when this node has no NVIDIA
    /// driver (then it has no MIG to control).
    pub fn open(source: &NvmlSource) -> Result<Option<NvmlControl>, String> {
        Ok(load(source)?.map(|nvml| NvmlControl { nvml }))
    }

    fn with_handle<T>(
        &self,
        gpu: u32,
        action: &str,
        body: impl FnOnce(nvml_wrapper_sys::bindings::nvmlDevice_t) -> Result<T, raw::RawError>,
    ) -> Result<T, MigError> {
        let device = self.nvml.device_by_index(gpu).map_err(|error| mig_error(gpu, action, error))?;
        // SAFETY: the handle is used only inside `body`, while `self.nvml` lives.
        let handle = unsafe { device.handle() };
        body(handle).map_err(|error| mig_error(gpu, action, error))
    }
}

impl MigDriver for NvmlControl {
    fn observe(&self) -> Result<Vec<GpuMig>, MigError> {
        let count = self.nvml.device_count().map_err(|error| mig_error(0, "count GPUs", error))?;
        let mut gpus = Vec::new();
        for index in 0..count {
            // A GPU that fell off the bus has no MIG layout to observe; the others
            // still do, and health takes the lost one out of placement.
            let device = match self.nvml.device_by_index(index) {
                Ok(device) => device,
                Err(NvmlError::GpuLost) => {
                    tracing::warn!(gpu = index, "GPU lost: its MIG layout is not observed");
                    continue;
                }
                Err(error) => return Err(mig_error(index, "open", error)),
            };
            let uuid = device.uuid().ok();
            let mode = match device.mig_mode() {
                Ok(mode) => Some(mode.current == nvml_wrapper_sys::bindings::NVML_DEVICE_MIG_ENABLE),
                Err(NvmlError::GpuLost) => {
                    tracing::warn!(gpu = index, "GPU lost: its MIG layout is not observed");
                    continue;
                }
                Err(NvmlError::NotSupported) | Err(NvmlError::FailedToLoadSymbol(_)) => None,
                Err(error) => return Err(mig_error(index, "read the MIG mode", error)),
            };
            let mut view =
                GpuMig { index, uuid, capable: mode.is_some(), enabled: mode == Some(true), instances: vec![] };
            if view.enabled {
                // SAFETY: the handle is used only in this iteration, while `self.nvml` lives.
                let handle = unsafe { device.handle() };
                let error = |error: raw::RawError| mig_error(index, "list MIG instances", error);
                let uuids: HashMap<u32, String> =
                    raw::mig_device_uuids(&self.nvml, handle).map_err(error)?.into_iter().collect();
                for profile in raw::gpu_instance_profiles(&self.nvml, handle).map_err(error)? {
                    for instance in raw::gpu_instances(&self.nvml, handle, profile.profile_id).map_err(error)? {
                        view.instances.push(ObservedInstance {
                            gpu_instance_id: instance.id,
                            profile_id: instance.profile_id,
                            start: instance.placement.start,
                            size: instance.placement.size,
                            uuid: uuids.get(&instance.id).cloned(),
                        });
                    }
                }
                view.instances.sort_by_key(|instance| instance.start);
            }
            gpus.push(view);
        }
        Ok(gpus)
    }

    fn enable(&self, gpu: u32) -> Result<(), MigError> {
        self.with_handle(gpu, "enable MIG", |handle| raw_mig::set_mig_mode(&self.nvml, handle, true))
    }

    fn disable(&self, gpu: u32) -> Result<(), MigError> {
        self.with_handle(gpu, "disable MIG", |handle| raw_mig::set_mig_mode(&self.nvml, handle, false))
    }

    fn create(&self, gpu: u32, profile_id: u32, start: u32, size: u32) -> Result<ObservedInstance, MigError> {
        let id = self.with_handle(gpu, "create a GPU instance", |handle| {
            raw_mig::create_gpu_instance(&self.nvml, handle, profile_id, start, size)
        })?;
        let compute = self.with_handle(gpu, "create a compute instance", |handle| {
            raw_mig::create_full_compute_instance(&self.nvml, handle, id)
        });
        if let Err(error) = compute {
            // Leave no GPU instance without its compute instance behind.
            let _ = self.destroy(gpu, id);
            return Err(error);
        }
        let uuid = self
            .with_handle(gpu, "read the MIG device UUID", |handle| raw::mig_device_uuids(&self.nvml, handle))?
            .into_iter()
            .find(|(instance, _)| *instance == id)
            .map(|(_, uuid)| uuid);
        Ok(ObservedInstance { gpu_instance_id: id, profile_id, start, size, uuid })
    }

    fn destroy(&self, gpu: u32, gpu_instance_id: u32) -> Result<(), MigError> {
        self.with_handle(gpu, "destroy a GPU instance", |handle| {
            raw_mig::destroy_gpu_instance(&self.nvml, handle, gpu_instance_id)
        })
    }
}

/// A GPU event Allot acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuEvent {
    Xid { gpu: u32, xid: u64 },
    EccDoubleBit { gpu: u32 },
    EccSingleBit { gpu: u32 },
}

/// Follows Xid and ECC events of every GPU until `stop` is set, calling `sink`
/// for each. Blocks; run it on its own thread. Returns why it could not watch
/// (no library, no event support), which is a warning, not a failure.
pub fn watch_events(source: &NvmlSource, stop: Arc<AtomicBool>, mut sink: impl FnMut(GpuEvent)) -> Result<(), String> {
    let Some(nvml) = load(source)? else {
        return Err("no NVML library: GPU events are not watched".to_owned());
    };
    let count = nvml.device_count().map_err(|error| format!("cannot count GPUs: {error}"))?;
    let wanted = EventTypes::CRITICAL_XID_ERROR | EventTypes::DOUBLE_BIT_ECC_ERROR | EventTypes::SINGLE_BIT_ECC_ERROR;
    let mut set = nvml.create_event_set().map_err(|error| format!("cannot create an NVML event set: {error}"))?;
    let mut registered = 0;
    for index in 0..count {
        let Ok(device) = nvml.device_by_index(index) else { continue };
        let supported = device.supported_event_types().unwrap_or(EventTypes::empty()) & wanted;
        if supported.is_empty() {
            continue;
        }
        set = match device.register_events(supported, set) {
            Ok(set) => set,
            Err(error) => {
                // A failed registration releases the set; start a new one.
                tracing::warn!(gpu = index, %error.error, "cannot watch this GPU's events");
                nvml.create_event_set().map_err(|error| format!("cannot create an NVML event set: {error}"))?
            }
        };
        registered += 1;
    }
    if registered == 0 {
        return Err("no GPU here reports Xid or ECC events".to_owned());
    }
    tracing::info!(gpus = registered, "watching GPU events (Xid, ECC)");
    while !stop.load(Ordering::Relaxed) {
        match set.wait(200) {
            Ok(data) => {
                let Ok(gpu) = data.device.index() else { continue };
                if data.event_type.contains(EventTypes::CRITICAL_XID_ERROR) {
                    let xid = match data.event_data {
                        Some(XidError::Value(xid)) => xid,
                        _ => 0,
                    };
                    sink(GpuEvent::Xid { gpu, xid });
                }
                if data.event_type.contains(EventTypes::DOUBLE_BIT_ECC_ERROR) {
                    sink(GpuEvent::EccDoubleBit { gpu });
                }
                if data.event_type.contains(EventTypes::SINGLE_BIT_ECC_ERROR) {
                    sink(GpuEvent::EccSingleBit { gpu });
                }
            }
            Err(NvmlError::Timeout) => {}
            Err(error) => {
                tracing::warn!(%error, "NVML event wait failed");
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        }
    }
    Ok(())
}
