//! How long the broker keeps finished allocations: the store holds the live
//! allocations plus the finished ones (released or preempted) whose last change
//! is younger than `--released-retention`.
//!
//! Without a bound the history of every allocation ever made would grow the
//! store, and the time a broker takes to start, forever. The writer prunes on
//! every tick (a few records at a time, so a tick stays one small transaction)
//! and, at start, everything that expired while no broker ran, before it serves.
//! Deletions go through the writer like every other change: memory and store
//! change in the same batch, fenced on the leader key.

use std::collections::BTreeSet;
use std::time::Duration;

use allot_api::allocation::AllocationId;
use allot_store::{Op, layout};

use crate::state::ClusterState;

/// The default of `--released-retention`.
pub const DEFAULT_RETENTION: &str = "7d";

/// The most records one prune deletes: half a transaction, so that a tick's
/// deletions never split a writer batch (see `core::OPS_PER_TXN`).
pub const PRUNE_LIMIT: usize = 60;

/// The finished allocations (`state::is_finished`) that expired at `now_ms`, oldest first, at most
/// `limit`. `finished` is the index of finished allocations by the time of their
/// last change (`ClusterState::finished`); one whose last change is exactly
/// `retention` ago has expired.
pub fn expired(
    finished: &BTreeSet<(u64, AllocationId)>,
    now_ms: u64,
    retention: Duration,
    limit: usize,
) -> Vec<AllocationId> {
    let retention_ms = u64::try_from(retention.as_millis()).unwrap_or(u64::MAX);
    // Records from a clock ahead of this one are younger than anything: kept.
    let Some(cutoff) = now_ms.checked_sub(retention_ms) else { return Vec::new() };
    finished.iter().take_while(|(changed_ms, _)| *changed_ms <= cutoff).take(limit).map(|(_, id)| *id).collect()
}

/// Removes up to `limit` expired finished allocations from memory and adds their
/// deletion to the batch's writes. Returns how many it removed.
pub fn prune(state: &mut ClusterState, writes: &mut Vec<Op>, now_ms: u64, retention: Duration, limit: usize) -> usize {
    let expired = expired(&state.finished, now_ms, retention, limit);
    let mut removed = 0;
    for id in expired {
        if state.remove_finished(id).is_some() {
            writes.push(Op::delete(layout::allocation(id.to_string())));
            removed += 1;
        }
    }
    if removed > 0 {
        tracing::debug!(removed, retention_s = retention.as_secs(), "pruned finished allocations");
    }
    removed
}

#[cfg(test)]
mod tests {
    use allot_api::allocation::{Allocation, AllocationState, GpuDemand, Interconnect, ValidatedRequest};
    use allot_api::units::MiB;

    use super::*;
    use crate::state::is_finished;

    fn index(entries: &[(u64, u64)]) -> BTreeSet<(u64, AllocationId)> {
        entries.iter().map(|(changed, id)| (*changed, AllocationId::from_u64(*id))).collect()
    }

    fn ids(values: &[u64]) -> Vec<AllocationId> {
        values.iter().copied().map(AllocationId::from_u64).collect()
    }

    /// One case: the index, now, the retention in ms, the limit, the ids expected.
    fn check(entries: &[(u64, u64)], now_ms: u64, retention_ms: u64, limit: usize, expected: &[u64]) {
        let found = expired(&index(entries), now_ms, Duration::from_millis(retention_ms), limit);
        assert_eq!(found, ids(expected), "entries {entries:?}, now {now_ms}, retention {retention_ms} ms");
    }

    #[test]
    fn expired_records_are_those_changed_at_least_the_retention_ago() {
        // Released at 100, 200 and 300; retention 1000.
        let entries = [(100, 1), (200, 2), (300, 3)];
        check(&entries, 1_099, 1_000, 10, &[]);
        check(&entries, 1_100, 1_000, 10, &[1]);
        check(&entries, 1_250, 1_000, 10, &[1, 2]);
        check(&entries, 5_000, 1_000, 10, &[1, 2, 3]);
    }

    #[test]
    fn oldest_first_and_at_most_the_limit() {
        // Ids out of time order: a later id released earlier goes first.
        let entries = [(300, 1), (100, 7), (200, 4)];
        check(&entries, 10_000, 1_000, 2, &[7, 4]);
        check(&entries, 10_000, 1_000, 0, &[]);
    }

    #[test]
    fn nothing_expires_before_the_clock_reaches_the_retention() {
        // A clock that reads less than the retention (or a huge retention) keeps everything.
        check(&[(0, 1)], 500, 1_000, 10, &[]);
        let huge = expired(&index(&[(0, 1)]), 1_000_000, Duration::MAX, 10);
        assert!(huge.is_empty());
    }

    #[test]
    fn only_released_and_preempted_are_finished() {
        for state in [
            AllocationState::Pending,
            AllocationState::Bound,
            AllocationState::Enforced,
            AllocationState::Lost,
            AllocationState::Released,
            AllocationState::Preempted,
        ] {
            let expected = matches!(state, AllocationState::Released | AllocationState::Preempted);
            assert_eq!(is_finished(state), expected, "{state:?}");
            assert!(
                !(is_finished(state) && state.holds_capacity()),
                "{state:?} would be pruned while it holds capacity"
            );
        }
    }

    fn allocation(id: u64, state: AllocationState, updated_at_ms: u64) -> Allocation {
        let request = ValidatedRequest::new(
            "t".parse().expect("team"),
            GpuDemand::None,
            1,
            MiB(0),
            Interconnect::Any,
            false,
            None,
            None,
        )
        .expect("valid request");
        Allocation {
            id: AllocationId::from_u64(id),
            request,
            state,
            binding: None,
            explanation: String::new(),
            created_at_ms: 0,
            updated_at_ms,
            generation: 1,
            quota: Default::default(),
        }
    }

    /// Pruning deletes expired finished records from memory and the store, and
    /// leaves live ones, however old, and young finished ones alone.
    #[test]
    fn prune_deletes_only_expired_finished_allocations() {
        let mut state = ClusterState::default();
        state.put_allocation(allocation(1, AllocationState::Released, 100));
        state.put_allocation(allocation(2, AllocationState::Pending, 0));
        state.put_allocation(allocation(3, AllocationState::Preempted, 200));
        state.put_allocation(allocation(4, AllocationState::Released, 9_500));
        // Released once, then changed again (a later update moves it in the index).
        state.put_allocation(allocation(5, AllocationState::Released, 100));
        state.put_allocation(allocation(5, AllocationState::Released, 9_800));
        state.node_reports.insert(AllocationId::from_u64(1), "torn down".into());
        let mut writes = Vec::new();
        let removed = prune(&mut state, &mut writes, 10_000, Duration::from_millis(1_000), PRUNE_LIMIT);
        assert_eq!(removed, 2);
        let deleted: Vec<String> = writes
            .iter()
            .map(|op| match op {
                Op::Delete { key } => key.clone(),
                other => panic!("prune wrote {other:?}"),
            })
            .collect();
        assert_eq!(deleted, [layout::allocation("a-0000000000000001"), layout::allocation("a-0000000000000003")]);
        let left: Vec<u64> = state.allocations.keys().map(|id| id.as_u64()).collect();
        assert_eq!(left, [2, 4, 5]);
        assert!(state.node_reports.is_empty());
        assert_eq!(state.queue.len(), 1, "the pending allocation is still queued");
        // Nothing more has expired: a second prune writes nothing.
        let mut again = Vec::new();
        assert_eq!(prune(&mut state, &mut again, 10_000, Duration::from_millis(1_000), PRUNE_LIMIT), 0);
        assert!(again.is_empty());
    }
}
