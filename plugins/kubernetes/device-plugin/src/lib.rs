//! Allot's kubelet device plugin: allot-node offers whole GPUs, MIG instances and
//! GPU shares to the kubelet as extended resources (`deviceplugin/v1beta1` over
//! unix sockets), and the broker, not the kubelet, decides which device a
//! container gets. See `docs/kubernetes.md` for the design and its failure cases.
//!
//! - [`resources`]: resource names, device ids and device lists (pure).
//! - [`plugin`]: the `DevicePlugin` service: GetPreferredAllocation asks the
//!   broker, Allocate confirms (or pins) the broker's allocation and answers with
//!   its environment, device nodes and CDI names.
//! - [`kubelet`]: serving one socket per resource, registering, and registering
//!   again when the kubelet restarts.
//! - [`podresources`]: which devices pods still hold, so allocations are
//!   released when their pod ends.
//! - [`cdi`]: the CDI spec the answers' CDI names refer to.
//! - [`grants`]: what was granted to the kubelet, kept across restarts.

pub mod cdi;
pub mod grants;
pub mod kubelet;
pub mod plugin;
pub mod podresources;
pub mod resources;

/// The kubelet's device plugin API, package `v1beta1`.
pub mod v1beta1 {
    #![allow(missing_docs, missing_debug_implementations, clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/v1beta1.rs"));
}

/// The kubelet's pod resources API, package `v1` (the part Allot reads).
pub mod podresources_v1 {
    #![allow(missing_docs, missing_debug_implementations, clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/v1.rs"));
}

pub use plugin::{Config, Plugins};
pub use resources::NodeSnapshot;
