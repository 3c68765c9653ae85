//! The embedded store's watch history: recent events in memory, replayed to each watcher.
//!
//! The writer appends each commit's events and then publishes the new revision.
//! Every watcher is a task with a cursor (the next revision it wants) that
//! copies matching events from the history into its stream. A slow consumer
//! only makes its task wait; the task keeps its place, so nothing is lost
//! while the history still holds its cursor. A watcher whose cursor falls out
//! of the bounded history gets [`StoreError::Compacted`] and its stream ends,
//! as an etcd watch does after compaction: never a silent gap.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use crate::error::StoreError;
use crate::types::{Revision, WatchEvent};

use super::{Shared, lock};

/// Events copied per step, so that a watcher far behind does not hold the
/// history lock or a large batch of clones for long.
const EVENTS_PER_STEP: usize = 256;

#[derive(Debug)]
pub(super) struct History {
    events: VecDeque<WatchEvent>,
    capacity: usize,
    /// Every event with a revision above `floor` is in `events`.
    floor: Revision,
    latest: Revision,
}

impl History {
    /// An empty history at `revision`: nothing before it can be replayed.
    pub(super) fn new(capacity: usize, revision: Revision) -> Self {
        History { events: VecDeque::new(), capacity, floor: revision, latest: revision }
    }

    pub(super) fn latest(&self) -> Revision {
        self.latest
    }

    /// Appends one commit's events (their revisions ascending, all above the
    /// latest) and drops the oldest revisions beyond the capacity, always
    /// keeping the newest revision whole.
    pub(super) fn publish(&mut self, revision: Revision, events: Vec<WatchEvent>) {
        self.latest = revision;
        self.events.extend(events);
        while self.events.len() > self.capacity {
            let Some(oldest) = self.events.front().map(|event| event.revision) else { break };
            if oldest >= self.latest {
                break;
            }
            while self.events.front().is_some_and(|event| event.revision == oldest) {
                self.events.pop_front();
            }
            self.floor = oldest;
        }
    }

    /// Whether events from revision `from` on can still be replayed.
    pub(super) fn check(&self, from: Revision) -> Result<(), StoreError> {
        if from <= self.floor {
            return Err(StoreError::Compacted { requested: from, oldest_available: self.floor.next() });
        }
        Ok(())
    }

    /// Events under `prefix` from revision `from` on (about `limit` of them,
    /// whole revisions only) and the revision to continue from.
    fn read(&self, from: Revision, prefix: &str, limit: usize) -> Result<(Vec<WatchEvent>, Revision), StoreError> {
        self.check(from)?;
        let start = self.events.partition_point(|event| event.revision < from);
        let mut found = Vec::new();
        let mut last_seen = Revision::ZERO;
        for event in self.events.range(start..) {
            if found.len() >= limit && event.revision > last_seen {
                return Ok((found, event.revision));
            }
            last_seen = event.revision;
            if event.kv.key.starts_with(prefix) {
                found.push(event.clone());
            }
        }
        Ok((found, self.latest.next().max(from)))
    }
}

/// A watcher: sends every event under `prefix` from revision `from` on, until
/// the consumer drops the stream, the history no longer holds its cursor, or
/// the store closes.
pub(super) async fn run_watcher(
    shared: Arc<Shared>,
    prefix: String,
    mut from: Revision,
    sender: mpsc::Sender<Result<crate::types::WatchEvent, StoreError>>,
    mut revisions: watch::Receiver<Revision>,
) {
    loop {
        let read = lock(&shared.history).read(from, &prefix, EVENTS_PER_STEP);
        match read {
            Err(error) => {
                // The consumer may be gone already; then there is no one to tell.
                let _ = sender.send(Err(error)).await;
                return;
            }
            Ok((events, next)) => {
                from = next;
                for event in events {
                    if sender.send(Ok(event)).await.is_err() {
                        return;
                    }
                }
            }
        }
        if revisions.wait_for(|latest| *latest >= from).await.is_err() {
            let _ = sender.send(Err(StoreError::Closed { path: shared.dir.clone() })).await;
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{EventKind, KeyValue};

    fn put(key: &str, revision: u64) -> WatchEvent {
        WatchEvent {
            kind: EventKind::Put,
            kv: KeyValue {
                key: key.to_owned(),
                value: Vec::new(),
                create_revision: Revision::new(revision),
                mod_revision: Revision::new(revision),
                lease: None,
            },
            revision: Revision::new(revision),
        }
    }

    fn keys(events: &[WatchEvent]) -> Vec<(String, u64)> {
        events.iter().map(|event| (event.kv.key.clone(), event.revision.get())).collect()
    }

    #[test]
    fn reads_whole_revisions_and_continues_where_it_stopped() {
        let mut history = History::new(100, Revision::new(1));
        history.publish(Revision::new(2), vec![put("a/1", 2), put("b/1", 2), put("a/2", 2)]);
        history.publish(Revision::new(3), vec![put("a/3", 3)]);
        history.publish(Revision::new(4), vec![put("b/2", 4)]);

        let (events, next) = history.read(Revision::new(2), "a/", 1).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(keys(&events), [("a/1".to_owned(), 2), ("a/2".to_owned(), 2)]);
        assert_eq!(next, Revision::new(3));
        let (events, next) = history.read(next, "a/", 10).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(keys(&events), [("a/3".to_owned(), 3)]);
        assert_eq!(next, Revision::new(5));
    }

    #[test]
    fn trimming_reports_compaction_instead_of_a_gap() {
        let mut history = History::new(2, Revision::new(1));
        for revision in 2..=5 {
            history.publish(Revision::new(revision), vec![put("k", revision)]);
        }
        assert!(matches!(
            history.check(Revision::new(3)),
            Err(StoreError::Compacted { requested, oldest_available })
                if requested == Revision::new(3) && oldest_available == Revision::new(4)
        ));
        assert!(history.check(Revision::new(4)).is_ok());
        // Before any event, revisions up to the one at open are gone too.
        assert!(History::new(2, Revision::new(7)).check(Revision::new(7)).is_err());
    }

    #[test]
    fn the_newest_revision_is_kept_whole_even_beyond_capacity() {
        let mut history = History::new(2, Revision::new(1));
        history.publish(Revision::new(2), vec![put("x", 2)]);
        history.publish(Revision::new(3), (0..5).map(|i| put(&format!("k{i}"), 3)).collect());
        let (events, _) = history.read(Revision::new(3), "", 100).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(events.len(), 5);
        assert!(history.check(Revision::new(2)).is_err());
    }
}
