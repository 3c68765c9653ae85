//! Appending to the audit log and pruning it: entries older than
//! [`AUDIT_RETENTION_MS`] go, and the oldest beyond [`AUDIT_LIMIT`], a bounded
//! number per tick, all through the writer's batch.

use allot_store::Op;

use crate::state::ClusterState;
use crate::state::audit::{AUDIT_LIMIT, AuditEntry};
use crate::state::codec::encode;

/// How long entries are kept: 30 days.
pub const AUDIT_RETENTION_MS: u64 = 30 * 86_400 * 1000;

/// The most entries one tick deletes (a tick joins a batch only while it is
/// under half a transaction; see `writer::fits`).
const PRUNE_PER_TICK: usize = 50;

/// Appends one entry (numbered here) and makes room for it; it is stored with
/// the batch's block (see [`write_block`]).
pub fn append(state: &mut ClusterState, mut entry: AuditEntry, writes: &mut Vec<Op>) {
    entry.seq = state.audit.next_seq;
    state.audit.push(entry);
    while state.audit.entries.len() > AUDIT_LIMIT {
        if let Some(emptied) = state.audit.pop_front() {
            writes.push(Op::delete(emptied));
        }
    }
}

/// Stores the entries appended since the last block as one key.
pub fn write_block(state: &mut ClusterState, writes: &mut Vec<Op>) {
    let Some((key, block)) = state.audit.take_block() else { return };
    match encode(&block) {
        Ok(bytes) => writes.push(Op::put(key, bytes)),
        Err(error) => tracing::warn!(%error, entries = block.len(), "audit entries are not stored"),
    }
}

/// Forgets a few entries older than the retention, deleting the blocks they empty.
pub fn prune(state: &mut ClusterState, writes: &mut Vec<Op>, now_ms: u64) {
    for _ in 0..PRUNE_PER_TICK {
        match state.audit.entries.front() {
            Some(oldest) if now_ms.saturating_sub(oldest.at_ms) > AUDIT_RETENTION_MS => {
                if let Some(emptied) = state.audit.pop_front() {
                    writes.push(Op::delete(emptied));
                }
            }
            _ => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::audit::StoredAudit;

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
    fn a_batch_stores_one_block_and_pruning_deletes_emptied_blocks() {
        let mut state = ClusterState::default();
        let mut writes = Vec::new();
        append(&mut state, entry(1), &mut writes);
        append(&mut state, entry(2), &mut writes);
        assert!(writes.is_empty(), "entries wait for the batch's block");
        write_block(&mut state, &mut writes);
        assert_eq!(state.audit.entries.iter().map(|entry| entry.seq).collect::<Vec<_>>(), vec![0, 1]);
        let first_block = match writes.as_slice() {
            [Op::Put { key, value, .. }] => {
                let stored: StoredAudit = serde_json::from_slice(value).expect("a block");
                assert_eq!(stored.into_entries().len(), 2);
                key.clone()
            }
            other => panic!("one block expected, got {other:?}"),
        };
        writes.clear();
        write_block(&mut state, &mut writes);
        assert!(writes.is_empty(), "no new entries, no block");
        append(&mut state, entry(3), &mut writes);
        write_block(&mut state, &mut writes);
        assert_eq!(writes.len(), 1);
        writes.clear();

        // Entry 1 is past the retention; its block still holds entry 2.
        prune(&mut state, &mut writes, 1 + AUDIT_RETENTION_MS + 1);
        assert_eq!(state.audit.entries.len(), 2);
        assert!(writes.is_empty(), "a block goes only with its last entry");
        prune(&mut state, &mut writes, 3 + AUDIT_RETENTION_MS);
        assert_eq!(state.audit.entries.len(), 1, "entry 2 goes, entry 3 is not old enough");
        assert!(matches!(writes.as_slice(), [Op::Delete { key }] if *key == first_block));
    }

    #[test]
    fn entries_stored_one_per_key_still_load() {
        let text = serde_json::to_vec(&entry(5)).expect("json");
        let stored: StoredAudit = serde_json::from_slice(&text).expect("the form before blocks");
        assert_eq!(stored.into_entries(), vec![entry(5)]);
        let mut log = crate::state::audit::AuditLog::default();
        log.push_stored("k1".into(), vec![AuditEntry { seq: 7, ..entry(5) }]);
        log.push_stored("k2".into(), vec![AuditEntry { seq: 8, ..entry(6) }, AuditEntry { seq: 9, ..entry(6) }]);
        assert_eq!(log.next_seq, 10);
        assert_eq!(log.pop_front().as_deref(), Some("k1"));
        assert_eq!(log.pop_front(), None);
        assert_eq!(log.pop_front().as_deref(), Some("k2"));
    }
}
