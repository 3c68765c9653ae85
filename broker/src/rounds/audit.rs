//! Appending to the audit log and pruning it: entries older than
//! [`AUDIT_RETENTION_MS`] go, and the oldest beyond [`AUDIT_LIMIT`], a bounded
//! number per tick, all through the writer's batch.

use allot_store::{Op, layout};

use crate::state::ClusterState;
use crate::state::audit::{AUDIT_LIMIT, AuditEntry};
use crate::state::codec::encode;

/// How long entries are kept: 30 days.
pub const AUDIT_RETENTION_MS: u64 = 30 * 86_400 * 1000;

/// The most entries one tick deletes (a batch closes at half a transaction).
const PRUNE_PER_TICK: usize = 50;

/// Appends one entry (numbered here) and makes room for it.
pub fn append(state: &mut ClusterState, mut entry: AuditEntry, writes: &mut Vec<Op>) {
    entry.seq = state.audit.next_seq;
    state.audit.next_seq += 1;
    match encode(&entry) {
        Ok(bytes) => writes.push(Op::put(layout::audit_entry(entry.at_ms, entry.seq), bytes)),
        Err(error) => tracing::warn!(%error, call = %entry.call, "an audit entry is not stored"),
    }
    state.audit.entries.push_back(entry);
    while state.audit.entries.len() > AUDIT_LIMIT {
        if let Some(old) = state.audit.entries.pop_front() {
            writes.push(Op::delete(layout::audit_entry(old.at_ms, old.seq)));
        }
    }
}

/// Deletes a few entries older than the retention.
pub fn prune(state: &mut ClusterState, writes: &mut Vec<Op>, now_ms: u64) {
    for _ in 0..PRUNE_PER_TICK {
        match state.audit.entries.front() {
            Some(oldest) if now_ms.saturating_sub(oldest.at_ms) > AUDIT_RETENTION_MS => {
                writes.push(Op::delete(layout::audit_entry(oldest.at_ms, oldest.seq)));
                state.audit.entries.pop_front();
            }
            _ => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(at_ms: u64) -> AuditEntry {
        AuditEntry {
            at_ms,
            seq: 0,
            subject: "admin".into(),
            from: "127.0.0.1:1".into(),
            call: "AdminService/CreateTeam".into(),
            target: "team ml".into(),
            team: Some("ml".into()),
            outcome: "ok".into(),
        }
    }

    #[test]
    fn entries_are_numbered_stored_and_pruned_by_age() {
        let mut state = ClusterState::default();
        let mut writes = Vec::new();
        append(&mut state, entry(1), &mut writes);
        append(&mut state, entry(2), &mut writes);
        assert_eq!(state.audit.entries.iter().map(|entry| entry.seq).collect::<Vec<_>>(), vec![0, 1]);
        assert_eq!(writes.len(), 2);
        writes.clear();
        prune(&mut state, &mut writes, 2 + AUDIT_RETENTION_MS);
        assert_eq!(state.audit.entries.len(), 1, "only the entry older than the retention goes");
        assert_eq!(writes.len(), 1);
    }
}
