//! A fake `libnvidia-ml.so`: exports NVML C functions that answer from a machine description.
//!
//! Allot's NVML code (nvml-wrapper, plus nvml-wrapper-sys for MIG) loads the cdylib this crate
//! builds, `libnvidia_ml_fake.so`, instead of the driver's library, so tests run the same code
//! path as a GPU server. `README.md` next to this crate is the user's guide: environment,
//! description format, and what is and is not modelled.
//!
//! Layout:
//! - `machine`: the description file, raw and validated;
//! - `geometry`: MIG profiles, placements and sizes per GPU model;
//! - `mig`: the MIG state of one GPU and the rules that change it (pure);
//! - `store`: MIG state in memory or in the shared state file;
//! - `events`: the injected-events file;
//! - `runtime`: global state (init count, handles, event sets) behind one mutex;
//! - `ffi`: the exported `nvml*` functions.

mod events;
mod ffi;
mod geometry;
mod machine;
mod mig;
mod pci;
mod runtime;
mod store;

/// Prints `allot-fake-nvml: <message>` on stderr. Never panics: a failed write to stderr is
/// not worth crashing the process that loaded the library.
pub(crate) fn report(message: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "allot-fake-nvml: {message}");
}
