//! The audit log: every change asked of the broker, who asked, from where, when,
//! and what came of it (done, denied, or failed with its error). Entries are
//! appended through the writer and kept for the retention, at most
//! [`AUDIT_LIMIT`] of them; the newest are also held in memory for
//! `allotctl audit`.
//!
//! The entries one writer batch appends are stored as one key (a block, named
//! after its first entry), not one key each: a create and its release are then
//! two writes, not four, and a batch of them fits twice as many in one store
//! transaction. A block's key is deleted when its last entry is pruned.

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

/// What one stored audit key holds: a block of entries, or one entry (the
/// form before blocks).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StoredAudit {
    Block(Vec<AuditEntry>),
    One(AuditEntry),
}

impl StoredAudit {
    pub fn into_entries(self) -> Vec<AuditEntry> {
        match self {
            StoredAudit::Block(entries) => entries,
            StoredAudit::One(entry) => vec![entry],
        }
    }
}

/// The entries of one block, serialized as a JSON array (a [`StoredAudit::Block`])
/// straight from the log, without copying them.
#[derive(Debug, Clone)]
pub struct Block<'a>(std::collections::vec_deque::Iter<'a, AuditEntry>);

impl Block<'_> {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.len() == 0
    }
}

impl Serialize for Block<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.clone())
    }
}

/// The entries in memory, oldest first, and the stored blocks they are in.
#[derive(Debug, Default)]
pub struct AuditLog {
    pub entries: VecDeque<AuditEntry>,
    pub next_seq: u64,
    /// Each stored block's key and how many of its entries are still in
    /// `entries`, oldest first; together they hold the front of `entries`.
    blocks: VecDeque<(String, usize)>,
    /// How many entries at the back of `entries` are in no block yet.
    unwritten: usize,
}

impl AuditLog {
    /// Appends an entry, to be stored with the next block.
    pub fn push(&mut self, entry: AuditEntry) {
        self.next_seq = self.next_seq.max(entry.seq + 1);
        self.entries.push_back(entry);
        self.unwritten += 1;
    }

    /// Appends entries read from the store under `key`.
    pub fn push_stored(&mut self, key: String, entries: Vec<AuditEntry>) {
        if entries.is_empty() {
            return;
        }
        self.blocks.push_back((key, entries.len()));
        for entry in entries {
            self.next_seq = self.next_seq.max(entry.seq + 1);
            self.entries.push_back(entry);
        }
    }

    /// The entries appended since the last block, as one block to store (then
    /// marked stored): its key and its entries, or `None` when there are none.
    pub fn take_block(&mut self) -> Option<(String, Block<'_>)> {
        if self.unwritten == 0 {
            return None;
        }
        let start = self.entries.len() - self.unwritten;
        let first = &self.entries[start];
        let key = allot_store::layout::audit_entry(first.at_ms, first.seq);
        self.blocks.push_back((key.clone(), self.unwritten));
        self.unwritten = 0;
        Some((key, Block(self.entries.range(start..))))
    }

    /// A copy of the entries of block `key` that are still in memory.
    pub fn block(&self, key: &str) -> Option<Vec<AuditEntry>> {
        // The blocks hold the front of `entries`, the unwritten ones its back.
        let mut end = self.entries.len() - self.unwritten;
        for (block_key, count) in self.blocks.iter().rev() {
            let start = end - count;
            if block_key == key {
                return Some(self.entries.range(start..end).cloned().collect());
            }
            end = start;
        }
        None
    }

    /// Forgets the oldest entry; the key of the block it emptied, to delete.
    pub fn pop_front(&mut self) -> Option<String> {
        self.entries.pop_front()?;
        match self.blocks.front_mut() {
            Some((_, left)) if *left > 1 => {
                *left -= 1;
                None
            }
            Some(_) => self.blocks.pop_front().map(|(key, _)| key),
            // In no block yet: it is simply not stored.
            None => {
                self.unwritten = self.unwritten.saturating_sub(1);
                None
            }
        }
    }
}
