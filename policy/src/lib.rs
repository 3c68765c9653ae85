//! Allot's sharing policy: the quota tree (organisations, teams, projects), fair
//! share (weighted dominant resource share with decaying usage), admission with
//! borrowing and reclaim, the declarative teams file, and the authorization rules.
//!
//! Everything here is pure: no IO, no clock, no randomness. Time, usage and the
//! placement engine are arguments, so every decision replays in a test.

pub mod admission;
pub mod authz;
pub mod fairshare;
pub mod file;
pub mod resources;
pub mod tree;

pub use admission::{
    Admitted, Live, Placer, Reclaim, RoundResult, RoundSettings, Running, StillWaiting, Verdict, Waiting, admit,
};
pub use authz::{Grant, Role, Rule, Scope};
pub use fairshare::{Dimensions, Standing, UsageHistory};
pub use file::{Change, FileError, TeamsFile};
pub use resources::{ResourceClass, Resources, charge, gpu_family};
pub use tree::{Quota, QuotaError, QuotaTree, TeamSpec};
