//! Layer 2: what the writer decides over the state, without IO: placement
//! (`placing`), scheduling rounds under quotas and fair share (`sharing`), the
//! pruning of finished allocations (`retention`) and the usage history
//! (`usage`), and the audit log's appends and pruning (`audit`). Each returns the store writes its decision needs; only the writer
//! commits them. Imports `state` and `error` only.

pub mod audit;
pub mod placing;
pub mod retention;
pub mod sharing;
pub mod usage;
