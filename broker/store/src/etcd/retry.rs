//! Retrying etcd calls: which failures are transient, which are safe to retry, and the backoff.
//!
//! A failure is one of three kinds:
//! - **not sent**: the request cannot have been applied (no connection could be
//!   made, etcd has no leader, etcd refused for load). Any call is retried.
//! - **in flight**: the request may have been applied (the connection broke, the
//!   deadline passed, the leader changed under it). Reads and other idempotent
//!   calls are retried; a write is not, and fails as
//!   [`StoreError::Indeterminate`], because a retried compare-and-swap that had in
//!   fact succeeded would report a conflict with itself.
//! - **permanent**: etcd refused the request; retrying cannot help.
//!
//! Retries back off exponentially and stop after [`RetryPolicy::attempts`],
//! failing as [`StoreError::Unavailable`].

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::Code;

use crate::error::StoreError;
use crate::types::LeaseId;

use super::EtcdStore;

/// How often and how patiently an [`EtcdStore`] retries transient failures.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (at least 1).
    pub attempts: u32,
    /// The wait after the first failure; it doubles after each further one.
    pub initial_backoff: Duration,
    /// The longest wait between two attempts.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// Six attempts over about three seconds of backoff.
    fn default() -> Self {
        RetryPolicy { attempts: 6, initial_backoff: Duration::from_millis(100), max_backoff: Duration::from_secs(2) }
    }
}

/// Whether a call may be repeated when its outcome is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Idempotence {
    /// Reads, keep-alives, lease grants (a duplicate lease expires unused).
    Idempotent,
    /// Transactions: repeated only when they cannot have been applied.
    Write,
}

/// What a call is, for retries and for the error it may end in.
#[derive(Debug, Clone, Copy)]
pub(super) struct Call {
    pub(super) operation: &'static str,
    pub(super) idempotence: Idempotence,
    /// The lease the call is about, so "lease not found" names it.
    pub(super) lease: Option<LeaseId>,
}

impl Call {
    pub(super) fn idempotent(operation: &'static str) -> Self {
        Call { operation, idempotence: Idempotence::Idempotent, lease: None }
    }

    pub(super) fn write(operation: &'static str) -> Self {
        Call { operation, idempotence: Idempotence::Write, lease: None }
    }

    pub(super) fn lease(operation: &'static str, lease: LeaseId) -> Self {
        Call { operation, idempotence: Idempotence::Idempotent, lease: Some(lease) }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Failure {
    NotSent,
    InFlight,
    Permanent,
}

/// Sorts an etcd client error into the three kinds above.
pub(super) fn classify(error: &etcd_client::Error) -> Failure {
    match error {
        // Raised while connecting: nothing was sent.
        etcd_client::Error::TransportError(_) => Failure::NotSent,
        etcd_client::Error::GRpcStatus(status) => classify_status(status),
        etcd_client::Error::LeaseKeepAliveError(message) | etcd_client::Error::WatchError(message)
            if message.contains("not found") =>
        {
            Failure::Permanent
        }
        // The request channel of a stream closed: the stream broke.
        etcd_client::Error::LeaseKeepAliveError(_)
        | etcd_client::Error::WatchError(_)
        | etcd_client::Error::IoError(_) => Failure::InFlight,
        _ => Failure::Permanent,
    }
}

fn classify_status(status: &tonic::Status) -> Failure {
    match status.code() {
        Code::Unavailable if is_unsent(status) => Failure::NotSent,
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown | Code::Internal => {
            Failure::InFlight
        }
        // etcd's "too many requests": refused before it was proposed.
        Code::ResourceExhausted => Failure::NotSent,
        _ => Failure::Permanent,
    }
}

/// Whether an `Unavailable` status says the request never reached a leader.
///
/// tonic reports a connection that could not be made as `Unavailable` with a
/// `tonic::transport::Error` source ("tcp connect error"), while a connection
/// that breaks under a request surfaces as a hyper/h2 error ("error reading a
/// body from connection", code `Unknown`). etcd refuses with `Unavailable`
/// before proposing when it has no leader.
fn is_unsent(status: &tonic::Status) -> bool {
    const UNSENT: [&str; 4] =
        ["tcp connect error", "error trying to connect", "etcdserver: no leader", "etcdserver: not capable"];
    let from_connecting =
        std::error::Error::source(status).is_some_and(|source| source.is::<tonic::transport::Error>());
    from_connecting || UNSENT.iter().any(|unsent| status.message().contains(unsent))
}

impl EtcdStore {
    /// Runs `call` with a fresh client clone until it succeeds, fails
    /// permanently, or the retry policy runs out.
    pub(super) async fn call<T, F, Fut>(&self, call: Call, mut attempt: F) -> Result<T, StoreError>
    where
        F: FnMut(etcd_client::Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let policy = &self.config.retry;
        let started = Instant::now();
        let mut backoff = policy.initial_backoff;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let error = match attempt(self.client.clone()).await {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            let failure = classify(&error);
            let retry = match failure {
                Failure::NotSent => true,
                Failure::InFlight => call.idempotence == Idempotence::Idempotent,
                Failure::Permanent => false,
            };
            if !retry {
                return Err(self.error(call, failure, error));
            }
            if attempts >= policy.attempts.max(1) {
                return Err(StoreError::Unavailable {
                    operation: call.operation,
                    endpoints: self.endpoints(),
                    attempts,
                    elapsed: started.elapsed(),
                    source: Arc::new(error),
                });
            }
            tracing::debug!(operation = call.operation, attempts, %error, ?backoff, "etcd call failed; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(policy.max_backoff);
        }
    }

    /// The error for a failure that is not retried.
    pub(super) fn error(&self, call: Call, failure: Failure, error: etcd_client::Error) -> StoreError {
        if let Some(lease) = call.lease
            && is_lease_not_found(&error)
        {
            return StoreError::LeaseNotFound { lease };
        }
        if let etcd_client::Error::GRpcStatus(status) = &error
            && status.code() == Code::InvalidArgument
            && call.operation == "txn"
        {
            return StoreError::InvalidTxn { reason: format!("etcd refused it: {}", status.message()) };
        }
        let source = Arc::new(error);
        let endpoints = self.endpoints();
        match failure {
            Failure::InFlight => StoreError::Indeterminate { operation: call.operation, endpoints, source },
            Failure::NotSent | Failure::Permanent => StoreError::Etcd { operation: call.operation, endpoints, source },
        }
    }
}

/// etcd's "requested lease not found", from a unary call or a keep-alive stream.
pub(super) fn is_lease_not_found(error: &etcd_client::Error) -> bool {
    match error {
        etcd_client::Error::GRpcStatus(status) => {
            status.code() == Code::NotFound && status.message().contains("lease not found")
        }
        etcd_client::Error::LeaseKeepAliveError(message) => message.contains("lease not found"),
        _ => false,
    }
}

/// etcd's "required revision has been compacted".
pub(super) fn is_compacted(error: &StoreError) -> bool {
    match error {
        StoreError::Etcd { source, .. } => match source.as_ref() {
            etcd_client::Error::GRpcStatus(status) => {
                status.code() == Code::OutOfRange && status.message().contains("compacted")
            }
            _ => false,
        },
        _ => false,
    }
}

/// tonic's "decoded message length too large": a response over the client's limit.
pub(super) fn is_too_large(error: &StoreError) -> bool {
    match error {
        StoreError::Etcd { source, .. } => match source.as_ref() {
            etcd_client::Error::GRpcStatus(status) => {
                status.code() == Code::OutOfRange && status.message().contains("message length too large")
            }
            _ => false,
        },
        _ => false,
    }
}
