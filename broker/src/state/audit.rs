//! The audit log: every change asked of the broker, who asked, from where, when,
//! and what came of it (done, denied, or failed with its error). Entries are
//! appended through the writer (in its batches) and kept for the retention, at
//! most [`AUDIT_LIMIT`] of them; the newest are also held in memory for
//! `allotctl audit`.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// The most entries kept; the oldest go first.
pub const AUDIT_LIMIT: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub at_ms: u64,
    /// Its place among entries of the same millisecond (and its key).
    pub seq: u64,
    /// The token's subject, `anonymous` without one, `unauthenticated` with a
    /// token the broker refused.
    pub subject: String,
    /// The peer's address.
    pub from: String,
    /// `Service/Method`.
    pub call: String,
    /// What it was about, in words (`team vision`, `allocation a-...`).
    pub target: String,
    /// The team it concerns, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    /// `ok`, `denied: ...` or `failed: ...`.
    pub outcome: String,
}

impl AuditEntry {
    pub fn allowed(&self) -> bool {
        !self.outcome.starts_with("denied")
    }
}

/// The entries in memory, oldest first.
#[derive(Debug, Default)]
pub struct AuditLog {
    pub entries: VecDeque<AuditEntry>,
    pub next_seq: u64,
}
