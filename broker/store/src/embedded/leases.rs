//! The embedded store's lease clocks (in memory) and the task that expires leases.
//!
//! A lease's existence is in the `leases` table; its deadline is here. Keep-
//! alives only move the deadline (no disk write). When a deadline passes, the
//! expiry task asks the writer to revoke the lease "if still expired", so a
//! keep-alive that lands first wins, exactly once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc, oneshot};

use crate::error::StoreError;
use crate::types::LeaseId;

use super::writer::{Reply, WriteRequest};
use super::{Shared, lock};

#[derive(Debug)]
struct Clock {
    ttl: Duration,
    deadline: Instant,
    /// The writer has decided to revoke the lease; keep-alives now fail.
    revoking: bool,
}

#[derive(Debug, Default)]
pub(super) struct LeaseClocks {
    clocks: Mutex<HashMap<LeaseId, Clock>>,
    /// Wakes the expiry task when a lease is granted (its deadline may be the
    /// earliest).
    granted: Notify,
}

impl LeaseClocks {
    pub(super) fn keep_alive(&self, lease: LeaseId, now: Instant) -> Result<(), StoreError> {
        match lock(&self.clocks).get_mut(&lease) {
            Some(clock) if !clock.revoking => {
                clock.deadline = now + clock.ttl;
                Ok(())
            }
            _ => Err(StoreError::LeaseNotFound { lease }),
        }
    }

    /// Starts the clocks of leases whose grant was committed.
    pub(super) fn granted(&self, leases: &[(LeaseId, Duration)], now: Instant) {
        if leases.is_empty() {
            return;
        }
        let mut clocks = lock(&self.clocks);
        for &(lease, ttl) in leases {
            clocks.insert(lease, Clock { ttl, deadline: now + ttl, revoking: false });
        }
        drop(clocks);
        self.granted.notify_one();
    }

    /// Forgets leases whose revocation was committed.
    pub(super) fn revoked(&self, leases: &[LeaseId]) {
        let mut clocks = lock(&self.clocks);
        for lease in leases {
            clocks.remove(lease);
        }
    }

    /// Marks a lease as being revoked, if `only_if_expired` is false or its
    /// deadline has passed. Returns whether it is to be revoked.
    pub(super) fn claim(&self, lease: LeaseId, only_if_expired: bool, now: Instant) -> bool {
        match lock(&self.clocks).get_mut(&lease) {
            Some(clock) if only_if_expired && (clock.revoking || clock.deadline > now) => false,
            Some(clock) => {
                clock.revoking = true;
                true
            }
            // Granted in the batch being applied: its clock starts at commit.
            None => !only_if_expired,
        }
    }

    /// Undoes [`claim`](Self::claim) when the batch that would have revoked the
    /// leases failed to commit.
    pub(super) fn unclaim(&self, leases: &[LeaseId]) {
        let mut clocks = lock(&self.clocks);
        for lease in leases {
            if let Some(clock) = clocks.get_mut(lease) {
                clock.revoking = false;
            }
        }
    }

    /// Leases past their deadline (not already being revoked), and the next
    /// deadline of the others.
    fn due(&self, now: Instant) -> (Vec<LeaseId>, Option<Instant>) {
        let clocks = lock(&self.clocks);
        let mut due = Vec::new();
        let mut next: Option<Instant> = None;
        for (&lease, clock) in clocks.iter().filter(|(_, clock)| !clock.revoking) {
            if clock.deadline <= now {
                due.push(lease);
            } else {
                next = Some(next.map_or(clock.deadline, |next| next.min(clock.deadline)));
            }
        }
        due.sort_unstable();
        (due, next)
    }
}

/// How long the expiry task waits before trying again when the writer's queue
/// is full.
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(10);

/// How long the expiry task waits after the writer failed to revoke a lease
/// (a failing disk), so that it does not spin.
const RETRY_AFTER_ERROR: Duration = Duration::from_secs(1);

/// Revokes leases as their deadlines pass, until the store closes.
///
/// Holds only a weak sender, upgraded for a moment per request and never across
/// an await, so it cannot keep the writer (and the database file) alive after
/// the store is dropped.
pub(super) async fn expire(shared: Arc<Shared>, requests: mpsc::WeakSender<WriteRequest>) {
    loop {
        // Registered before looking at the clocks, so no grant is missed.
        let granted = shared.leases.granted.notified();
        let (due, next) = shared.leases.due(Instant::now());
        for lease in due {
            let (reply, answer) = oneshot::channel();
            let mut request = WriteRequest::RevokeLease { lease, only_if_expired: true, reply: Reply::new(reply) };
            loop {
                let Some(sender) = requests.upgrade() else { return };
                match sender.try_send(request) {
                    Ok(()) => break,
                    Err(mpsc::error::TrySendError::Full(returned)) => {
                        request = returned;
                        drop(sender);
                        tokio::time::sleep(QUEUE_FULL_BACKOFF).await;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                }
            }
            match answer.await {
                Ok(Ok(_)) | Ok(Err(StoreError::LeaseNotFound { .. })) => {}
                Ok(Err(error)) => {
                    tracing::warn!(%lease, %error, "could not revoke an expired lease; will try again");
                    tokio::time::sleep(RETRY_AFTER_ERROR).await;
                }
                Err(_) => return,
            }
        }
        match next {
            Some(deadline) => {
                tokio::select! {
                    () = tokio::time::sleep_until(deadline.into()) => {}
                    () = granted => {}
                }
            }
            None => granted.await,
        }
    }
}
