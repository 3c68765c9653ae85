//! Placement: which node, GPUs, MIG slot or GPU share, cores and memory one request
//! gets, and why. Pure and deterministic: no IO, no clock, no randomness; the same
//! request and cluster give the same decision and the same explanation.
//!
//! [`place`] looks at every node ([`NodeView`]: its inventory, status and
//! [`NodeUsage`]) and returns a [`Decision`] (a [`Binding`] and its
//! [`Explanation`]) or a [`Refusal`] that tells an impossible request from one that
//! lacks capacity now.
//!
//! # How candidates are ranked
//! Each ready node offers its best placement, scored; the smallest score wins and
//! ties go to the node whose name sorts first, then to the lowest GPU index.
//!
//! - **Whole GPUs** ([`WholeScore`]), compared in this order: the class of the
//!   slowest link between two granted GPUs (NVLink, then PIX, PXB, PHB, NODE, SYS,
//!   from `ConnectionLevel::rank`); fewer throttling GPUs; cores that need not
//!   spill off the GPUs' NUMA nodes; the snuggest fit, that is fewest GPUs of the
//!   node left free (a 4-GPU job fills a half-used node rather than breaking a
//!   fresh one); the sum of pair costs (more NVLink links, fewer slow pairs); fewer
//!   NUMA nodes; closer RDMA NICs; fewest free GPUs stranded on the NUMA nodes
//!   used. Unhealthy GPUs, GPUs in use in any way and MIG-enabled GPUs are never
//!   granted whole. Candidate sets are enumerated exhaustively when `C(n, k)` is at
//!   most [`PlacementOptions::exhaustive_limit`], otherwise grown greedily from
//!   every GPU along its cheapest links.
//! - **MIG** ([`MigScore`]): no re-carve first; then no throttling; NUMA-local
//!   cores; then the slot that blocks the fewest instances of the largest profiles
//!   (7g first, then 4g, 3g, ...); then reusing an unowned instance of exactly that
//!   profile and start; then GPUs already partitioned; then the snuggest node.
//! - **Shares** ([`ShareScore`]): ranked by a [`SharePolicy`]. The default is
//!   Allot's packing policy: with the learned task mix ([`place_learned`], as the
//!   broker calls it) the GPU whose share is expected to cost future work least
//!   (fragmentation added plus cluster-wide scarcity, see the `packing` and
//!   `scarcity` modules); without a mix ([`place`]) best fit.
//! - **CPU only** ([`CpuScore`]): cores on one NUMA node; nodes with fewer free
//!   GPUs (their cores are not wanted by GPU work); the snuggest fit.
//!
//! Cores go NUMA-local to the granted GPUs and spill to the nearest NUMA node only
//! when those run out; memory is accounted per node (see the `cores` module).

mod cores;
mod explain;
pub mod fragment;
mod gpus;
mod index;
pub mod learn;
mod learned;
mod mig;
mod node;
pub mod packing;
mod place;
mod refuse;
pub mod scarcity;
mod score;
mod shape;
mod share;
pub mod synthetic;
mod usage;
mod whole;

use allot_api::allocation::{Binding, NodeName, ValidatedRequest};
use allot_api::topology::NodeInventory;

pub use explain::{Explanation, GpuExclusions, NodeRefusal, NodeVerdict, Refusal, RefusalReason, Verdict};
pub use index::{PlacementIndex, Representative};
pub use learned::ClusterContext;
pub use score::{BlockedProfile, CpuScore, MigScore, Score, ShareScore, WholeScore};
pub use shape::placement_shape;
pub use share::{ShareCandidate, SharePolicy};
pub use usage::{MigSlot, NodeUsage, ShareLoad};

/// Whether a node takes new work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeStatus {
    Ready,
    /// It stopped heartbeating.
    Lost,
    /// An administrator keeps new work off it.
    Cordoned,
}

/// One node as placement sees it.
#[derive(Debug, Clone, Copy)]
pub struct NodeView<'a> {
    pub name: &'a NodeName,
    pub inventory: &'a NodeInventory,
    pub status: NodeStatus,
    /// What the allocations holding capacity on this node take.
    pub usage: &'a NodeUsage,
}

/// Knobs of the placement algorithm; the defaults are what the broker uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlacementOptions {
    pub share_policy: SharePolicy,
    /// Whole-GPU sets are enumerated exhaustively when there are at most this many
    /// (`C(usable GPUs, count)`); beyond, they are grown greedily.
    pub exhaustive_limit: u64,
}

impl Default for PlacementOptions {
    fn default() -> Self {
        PlacementOptions { share_policy: SharePolicy::default(), exhaustive_limit: 5_000 }
    }
}

/// Where the request goes, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub binding: Binding,
    pub explanation: Explanation,
}

/// Places one request with the default options.
pub fn place(request: &ValidatedRequest, nodes: &[NodeView<'_>]) -> Result<Decision, Refusal> {
    place_with(request, nodes, &PlacementOptions::default())
}

/// Places one request.
pub fn place_with(
    request: &ValidatedRequest,
    nodes: &[NodeView<'_>],
    options: &PlacementOptions,
) -> Result<Decision, Refusal> {
    place::place_with(request, nodes, options, None)
}

/// Places one request with the default options, ranking shares by Allot's policy
/// under the learned task mix of `context` (other requests place as [`place`]
/// does, and pay nothing for the mix).
pub fn place_learned(
    request: &ValidatedRequest,
    nodes: &[NodeView<'_>],
    context: &ClusterContext<'_>,
) -> Result<Decision, Refusal> {
    place::place_with(request, nodes, &PlacementOptions::default(), Some(context))
}
