//! `WatchStream`: the receiving end of a watch, shared by both backends.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use crate::error::StoreError;
use crate::types::WatchEvent;

/// How many events a watch buffers for a consumer that is not reading. When
/// full, the producer waits (etcd holds the rest; the embedded store keeps its
/// place in its history), so nothing is dropped.
pub(crate) const WATCH_BUFFER: usize = 1024;

/// The changes a [`Store::watch`](crate::Store::watch) delivers, in order.
///
/// Yields `Ok(event)` for each change. After an `Err` (compacted history,
/// etcd gone for longer than the retry policy, the store closed) the stream
/// ends: it never skips events and carries on. Dropping it cancels the watch.
#[derive(Debug)]
pub struct WatchStream {
    events: mpsc::Receiver<Result<WatchEvent, StoreError>>,
    producer: AbortHandle,
}

impl WatchStream {
    /// A channel for a producer task to fill, and the stream that drains it;
    /// `attach` ties the producer's lifetime to the stream.
    pub(crate) fn channel() -> (mpsc::Sender<Result<WatchEvent, StoreError>>, PendingWatch) {
        let (sender, events) = mpsc::channel(WATCH_BUFFER);
        (sender, PendingWatch { events })
    }

    /// The next event; `None` once the stream has ended.
    pub async fn next(&mut self) -> Option<Result<WatchEvent, StoreError>> {
        self.events.recv().await
    }
}

/// A watch whose producer task is not spawned yet.
#[derive(Debug)]
pub(crate) struct PendingWatch {
    events: mpsc::Receiver<Result<WatchEvent, StoreError>>,
}

impl PendingWatch {
    pub(crate) fn attach(self, producer: AbortHandle) -> WatchStream {
        WatchStream { events: self.events, producer }
    }
}

impl futures_core::Stream for WatchStream {
    type Item = Result<WatchEvent, StoreError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().events.poll_recv(cx)
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        self.producer.abort();
    }
}
