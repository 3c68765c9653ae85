//! The library's global state: the init reference count, the loaded machine, MIG state,
//! handles and event sets.
//!
//! Everything sits behind one mutex. NVML handles are addresses of leaked one-byte
//! allocations, so they are real, stable, distinct pointers; a handle is looked up in a table
//! before use and never dereferenced, so a stale or foreign pointer is an invalid argument and
//! never a crash.

use std::collections::HashMap;
use std::ffi::c_void;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use crate::ffi::{Code, NvmlResult, codes};
use crate::geometry::Geometry;
use crate::machine::{Gpu, Machine};
use crate::mig::{GpuMig, MigError};
use crate::store::MigStore;

/// Environment variable naming the machine description.
pub(crate) const MACHINE_VAR: &str = "ALLOT_FAKE_NVML_MACHINE";
/// Environment variable naming the optional state file.
pub(crate) const STATE_VAR: &str = "ALLOT_FAKE_NVML_STATE";
/// Environment variable naming the optional events file.
pub(crate) const EVENTS_VAR: &str = "ALLOT_FAKE_NVML_EVENTS";

/// What a handle stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Target {
    /// A physical GPU, by position in [`Machine::gpus`].
    Device(usize),
    /// The MIG device of one compute instance.
    MigDevice {
        gpu: usize,
        gpu_instance: u32,
        compute_instance: u32,
    },
    GpuInstance {
        gpu: usize,
        gpu_instance: u32,
    },
    ComputeInstance {
        gpu: usize,
        gpu_instance: u32,
        compute_instance: u32,
    },
    EventSet(u64),
}

/// The two-way table between handles and what they stand for.
#[derive(Debug, Default)]
struct Handles {
    by_address: HashMap<usize, Target>,
    by_target: HashMap<Target, usize>,
}

impl Handles {
    /// The handle of `target`: the same one every time until it is forgotten.
    fn handle(&mut self, target: Target) -> *mut c_void {
        let address = match self.by_target.get(&target) {
            Some(&address) => address,
            None => {
                // Leaked on purpose: a handle must stay a valid, unique address for as long as
                // any caller may hold it, which is forever. One byte per handle ever made.
                let address = Box::into_raw(Box::new(0u8)) as usize;
                self.by_address.insert(address, target);
                self.by_target.insert(target, address);
                address
            }
        };
        address as *mut c_void
    }

    fn resolve(&self, handle: *const c_void) -> Option<Target> {
        self.by_address.get(&(handle as usize)).copied()
    }

    /// Makes the handle of `target` invalid, so that an instance created later with the
    /// same id gets a new handle, as with real NVML.
    fn forget(&mut self, target: Target) {
        if let Some(address) = self.by_target.remove(&target) {
            self.by_address.remove(&address);
        }
    }
}

/// An event set: which GPUs it listens to, and how far into the events file it has read.
#[derive(Debug, Clone)]
pub(crate) struct EventSet {
    /// (GPU position, `nvmlEventType*` mask)
    pub(crate) registrations: Vec<(usize, u64)>,
    pub(crate) cursor: u64,
}

/// The state of an initialised library.
#[derive(Debug)]
pub(crate) struct Runtime {
    pub(crate) machine: Machine,
    pub(crate) events_path: Option<PathBuf>,
    mig: MigStore,
    handles: Handles,
    event_sets: HashMap<u64, EventSet>,
    next_event_set: u64,
}

#[derive(Debug)]
struct Library {
    init_count: u32,
    runtime: Option<Runtime>,
}

static LIBRARY: Mutex<Library> = Mutex::new(Library { init_count: 0, runtime: None });

fn library() -> MutexGuard<'static, Library> {
    // A panic while holding the lock is caught at the FFI boundary; the state it guards is
    // only changed through whole assignments, so it is still consistent.
    LIBRARY.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `nvmlInit_v2`: the first call loads the machine description, later ones count, like real
/// NVML's reference-counted init.
pub(crate) fn init() -> Code {
    let mut library = library();
    if library.runtime.is_some() {
        library.init_count = library.init_count.saturating_add(1);
        return codes::SUCCESS;
    }
    match Runtime::load() {
        Ok(runtime) => {
            library.runtime = Some(runtime);
            library.init_count = 1;
            codes::SUCCESS
        }
        Err(message) => {
            crate::report(format_args!("{message}"));
            codes::UNKNOWN
        }
    }
}

/// `nvmlShutdown`: the call that balances the first init forgets everything.
pub(crate) fn shutdown() -> Code {
    let mut library = library();
    if library.runtime.is_none() {
        return codes::UNINITIALIZED;
    }
    library.init_count = library.init_count.saturating_sub(1);
    if library.init_count == 0 {
        library.runtime = None;
    }
    codes::SUCCESS
}

/// Runs `body` with the runtime, or fails with `NVML_ERROR_UNINITIALIZED`.
pub(crate) fn with_runtime<T>(body: impl FnOnce(&mut Runtime) -> NvmlResult<T>) -> NvmlResult<T> {
    let mut library = library();
    let runtime = library.runtime.as_mut().ok_or(codes::UNINITIALIZED)?;
    body(runtime)
}

/// A device handle, resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeviceRef {
    Gpu(usize),
    Mig { gpu: usize, gpu_instance: u32, compute_instance: u32 },
}

impl DeviceRef {
    pub(crate) fn gpu(self) -> usize {
        match self {
            DeviceRef::Gpu(gpu) | DeviceRef::Mig { gpu, .. } => gpu,
        }
    }
}

impl From<MigError> for Code {
    fn from(err: MigError) -> Code {
        match err {
            MigError::NotSupported => codes::NOT_SUPPORTED,
            MigError::InvalidArgument => codes::INVALID_ARGUMENT,
            MigError::InsufficientResources => codes::INSUFFICIENT_RESOURCES,
            MigError::InUse => codes::IN_USE,
        }
    }
}

impl Runtime {
    fn load() -> Result<Runtime, String> {
        let machine_path = std::env::var_os(MACHINE_VAR).ok_or_else(|| {
            format!(
                "{MACHINE_VAR} is not set; point it at a machine description \
                 (see tools/fake-nvml/README.md)"
            )
        })?;
        let machine = Machine::load(&PathBuf::from(machine_path)).map_err(|err| err.to_string())?;
        let state_path = std::env::var_os(STATE_VAR).filter(|path| !path.is_empty()).map(PathBuf::from);
        let events_path = std::env::var_os(EVENTS_VAR).filter(|path| !path.is_empty()).map(PathBuf::from);
        let mig = MigStore::open(state_path, &machine).map_err(|err| err.to_string())?;
        Ok(Runtime {
            machine,
            events_path,
            mig,
            handles: Handles::default(),
            event_sets: HashMap::new(),
            next_event_set: 1,
        })
    }

    pub(crate) fn handle(&mut self, target: Target) -> *mut c_void {
        self.handles.handle(target)
    }

    pub(crate) fn gpu(&self, position: usize) -> &Gpu {
        &self.machine.gpus[position]
    }

    /// Resolves a device handle, physical or MIG. A MIG device handle is valid while its
    /// compute instance exists.
    /// Whether GPU `position` has fallen off the bus: the events file's last
    /// `fallen_off_bus`/`back_on_bus` line for it, else the description's `lost`.
    pub(crate) fn is_lost(&self, position: usize) -> bool {
        let gpu = self.gpu(position);
        self.events_path.as_deref().and_then(|path| crate::events::lost_state(path, gpu.index)).unwrap_or(gpu.lost)
    }

    /// `NVML_ERROR_GPU_IS_LOST` for a GPU that has fallen off the bus: nvml.h lists it for
    /// every device query, handle lookups included.
    pub(crate) fn reachable(&self, position: usize) -> NvmlResult<()> {
        if self.is_lost(position) { Err(codes::GPU_IS_LOST) } else { Ok(()) }
    }

    pub(crate) fn device(&mut self, handle: *const c_void) -> NvmlResult<DeviceRef> {
        match self.handles.resolve(handle) {
            Some(Target::Device(gpu)) => {
                self.reachable(gpu)?;
                Ok(DeviceRef::Gpu(gpu))
            }
            Some(Target::MigDevice { gpu, gpu_instance, compute_instance }) => {
                self.reachable(gpu)?;
                let exists = self.mig_state(gpu)?.compute_instance(gpu_instance, compute_instance).is_some();
                if exists {
                    Ok(DeviceRef::Mig { gpu, gpu_instance, compute_instance })
                } else {
                    Err(codes::INVALID_ARGUMENT)
                }
            }
            _ => Err(codes::INVALID_ARGUMENT),
        }
    }

    /// Resolves a handle that must be a physical GPU; a MIG device handle is
    /// `NVML_ERROR_NOT_SUPPORTED`, anything else an invalid argument.
    pub(crate) fn physical(&mut self, handle: *const c_void) -> NvmlResult<usize> {
        match self.device(handle)? {
            DeviceRef::Gpu(gpu) => Ok(gpu),
            DeviceRef::Mig { .. } => Err(codes::NOT_SUPPORTED),
        }
    }

    /// The MIG geometry of a GPU; `NVML_ERROR_NOT_SUPPORTED` if it is not MIG-capable.
    pub(crate) fn geometry(&self, gpu: usize) -> NvmlResult<&'static Geometry> {
        self.gpu(gpu).mig.as_ref().map(|config| config.geometry).ok_or(codes::NOT_SUPPORTED)
    }

    /// The current MIG state of a MIG-capable GPU.
    pub(crate) fn mig_state(&mut self, gpu: usize) -> NvmlResult<GpuMig> {
        self.geometry(gpu)?;
        let mut states = self.mig.read(&self.machine).map_err(|err| {
            crate::report(format_args!("{err}"));
            codes::UNKNOWN
        })?;
        states.get_mut(gpu).and_then(Option::take).ok_or(codes::NOT_SUPPORTED)
    }

    /// Changes the MIG state of a MIG-capable GPU; nothing changes when `change` fails.
    pub(crate) fn update_mig<T>(
        &mut self,
        gpu: usize,
        change: impl FnOnce(&mut GpuMig, &'static Geometry) -> Result<T, MigError>,
    ) -> NvmlResult<T> {
        let geometry = self.geometry(gpu)?;
        let result = self
            .mig
            .update(&self.machine, |states| match states.get_mut(gpu).and_then(Option::as_mut) {
                Some(mig) => change(mig, geometry),
                None => Err(MigError::NotSupported),
            })
            .map_err(|err| {
                crate::report(format_args!("{err}"));
                codes::UNKNOWN
            })?;
        result.map_err(Code::from)
    }

    /// Resolves a GPU instance handle to (GPU, GPU instance id) while that instance exists.
    pub(crate) fn gpu_instance(&mut self, handle: *const c_void) -> NvmlResult<(usize, u32)> {
        match self.handles.resolve(handle) {
            Some(Target::GpuInstance { gpu, gpu_instance }) => {
                if self.mig_state(gpu)?.gpu_instance(gpu_instance).is_some() {
                    Ok((gpu, gpu_instance))
                } else {
                    Err(codes::INVALID_ARGUMENT)
                }
            }
            _ => Err(codes::INVALID_ARGUMENT),
        }
    }

    /// Resolves a compute instance handle to (GPU, GPU instance id, compute instance id).
    pub(crate) fn compute_instance(&mut self, handle: *const c_void) -> NvmlResult<(usize, u32, u32)> {
        match self.handles.resolve(handle) {
            Some(Target::ComputeInstance { gpu, gpu_instance, compute_instance }) => {
                let exists = self.mig_state(gpu)?.compute_instance(gpu_instance, compute_instance).is_some();
                if exists { Ok((gpu, gpu_instance, compute_instance)) } else { Err(codes::INVALID_ARGUMENT) }
            }
            _ => Err(codes::INVALID_ARGUMENT),
        }
    }

    /// Invalidates the handles of a destroyed GPU instance.
    pub(crate) fn forget_gpu_instance(&mut self, gpu: usize, gpu_instance: u32) {
        self.handles.forget(Target::GpuInstance { gpu, gpu_instance });
    }

    /// Invalidates the handles of a destroyed compute instance and its MIG device.
    pub(crate) fn forget_compute_instance(&mut self, gpu: usize, gpu_instance: u32, compute_instance: u32) {
        self.handles.forget(Target::ComputeInstance { gpu, gpu_instance, compute_instance });
        self.handles.forget(Target::MigDevice { gpu, gpu_instance, compute_instance });
    }

    pub(crate) fn create_event_set(&mut self) -> *mut c_void {
        let id = self.next_event_set;
        self.next_event_set += 1;
        let cursor = self.events_path.as_deref().map_or(0, crate::events::end_offset);
        self.event_sets.insert(id, EventSet { registrations: Vec::new(), cursor });
        self.handles.handle(Target::EventSet(id))
    }

    fn event_set_id(&self, handle: *const c_void) -> NvmlResult<u64> {
        match self.handles.resolve(handle) {
            Some(Target::EventSet(id)) if self.event_sets.contains_key(&id) => Ok(id),
            _ => Err(codes::INVALID_ARGUMENT),
        }
    }

    pub(crate) fn event_set(&mut self, handle: *const c_void) -> NvmlResult<&mut EventSet> {
        let id = self.event_set_id(handle)?;
        self.event_sets.get_mut(&id).ok_or(codes::INVALID_ARGUMENT)
    }

    pub(crate) fn free_event_set(&mut self, handle: *const c_void) -> NvmlResult<()> {
        let id = self.event_set_id(handle)?;
        self.event_sets.remove(&id);
        self.handles.forget(Target::EventSet(id));
        Ok(())
    }
}
