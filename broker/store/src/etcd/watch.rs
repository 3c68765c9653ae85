//! etcd watches that survive a broken connection without losing or repeating events.
//!
//! A watcher task remembers the revision after the last event it delivered.
//! When the gRPC stream breaks, it creates the watch again from that revision
//! (with the retry policy); etcd replays what happened meanwhile. A slow
//! consumer only slows the task down: etcd keeps the events (a slow watcher is
//! moved to etcd's "unsynced" set and catches up from the store), until etcd
//! compacts them; then the stream ends with [`StoreError::Compacted`].

use etcd_client::{EventType, WatchOptions, WatchResponse};
use tokio::sync::mpsc;

use crate::error::StoreError;
use crate::types::{EventKind, Revision, WatchEvent};
use crate::watch::WatchStream;

use super::retry::{Call, Failure, classify};
use super::{EtcdStore, MAX_RESPONSE_BYTES, range_bounds};

/// Creates the watch (so that a watch "from now" covers every change after
/// this returns) and starts the task that feeds the stream.
pub(super) async fn start(store: EtcdStore, prefix: String, from: Revision) -> Result<WatchStream, StoreError> {
    let mut watcher = Watcher { store, prefix, next: from };
    let stream = watcher.establish().await?;
    let (sender, pending) = WatchStream::channel();
    let task = tokio::spawn(watcher.run(stream, sender));
    Ok(pending.attach(task.abort_handle()))
}

struct Watcher {
    store: EtcdStore,
    prefix: String,
    /// The revision of the next event to deliver; `ZERO` until known ("from now").
    next: Revision,
}

impl Watcher {
    /// Creates the etcd watch from `next` and waits until etcd confirms it.
    async fn establish(&mut self) -> Result<etcd_client::WatchStream, StoreError> {
        let (key, end) = range_bounds(&self.prefix);
        let start = i64::try_from(self.next.get()).unwrap_or(i64::MAX);
        let options = WatchOptions::new().with_range(end).with_start_revision(start);
        let (stream, created) = self
            .store
            .call(Call::idempotent("watch"), |client| {
                let (key, options) = (key.clone(), options.clone());
                async move {
                    // One revision's events come in one response, however many.
                    let mut watch_client = client.watch_client().max_decoding_message_size(MAX_RESPONSE_BYTES);
                    let mut stream = watch_client.watch(key, Some(options)).await?;
                    match stream.message().await? {
                        Some(response) if response.created() => Ok((stream, response)),
                        Some(_) => Err(etcd_client::Error::WatchError("a watch answered before it was created".into())),
                        None => Err(etcd_client::Error::WatchError("the watch stream closed at once".into())),
                    }
                }
            })
            .await?;
        if created.canceled() {
            return Err(self.canceled(&created));
        }
        if self.next == Revision::ZERO {
            let revision = self.store.header_revision("watch", created.header())?;
            self.next = self.store.revision("watch", revision)?.next();
        }
        Ok(stream)
    }

    fn canceled(&self, response: &WatchResponse) -> StoreError {
        if response.compact_revision() > 0 {
            let oldest_available = Revision::new(response.compact_revision().unsigned_abs());
            return StoreError::Compacted { requested: self.next, oldest_available };
        }
        self.store.protocol("watch", format!("a canceled watch ({:?})", response.cancel_reason()))
    }

    /// Feeds the stream until the consumer drops it or an error ends it.
    async fn run(mut self, mut stream: etcd_client::WatchStream, sender: mpsc::Sender<Result<WatchEvent, StoreError>>) {
        loop {
            let response = match stream.message().await {
                Ok(Some(response)) => response,
                Err(error) if classify(&error) == Failure::Permanent => {
                    // Re-creating the watch would fail the same way, forever.
                    let error = self.store.error(Call::idempotent("watch"), Failure::Permanent, error);
                    let _ = sender.send(Err(error)).await;
                    return;
                }
                Ok(None) | Err(_) => {
                    tracing::debug!(prefix = %self.prefix, next = %self.next, "etcd watch stream broke; re-creating it");
                    match self.establish().await {
                        Ok(reestablished) => {
                            stream = reestablished;
                            continue;
                        }
                        Err(error) => {
                            // The consumer may be gone already; then there is no one to tell.
                            let _ = sender.send(Err(error)).await;
                            return;
                        }
                    }
                }
            };
            if response.canceled() {
                let _ = sender.send(Err(self.canceled(&response))).await;
                return;
            }
            // etcd never splits one revision's events over two responses, so
            // `next` moves per response, and a re-created watch starts at a
            // revision boundary.
            let mut delivered = None;
            for event in response.events() {
                let event = match self.event(event) {
                    Ok(event) => event,
                    Err(error) => {
                        let _ = sender.send(Err(error)).await;
                        return;
                    }
                };
                // A re-created watch replays from `next`; never deliver an event twice.
                if event.revision < self.next {
                    continue;
                }
                delivered = Some(event.revision);
                if sender.send(Ok(event)).await.is_err() {
                    return;
                }
            }
            if let Some(revision) = delivered {
                self.next = revision.next();
            }
        }
    }

    fn event(&self, event: &etcd_client::Event) -> Result<WatchEvent, StoreError> {
        let kv = event.kv().ok_or_else(|| self.store.protocol("watch", "an event without a key".to_owned()))?;
        let kv = self.store.key_value("watch", kv)?;
        let kind = match event.event_type() {
            EventType::Put => EventKind::Put,
            EventType::Delete => EventKind::Delete,
        };
        Ok(WatchEvent { kind, revision: kv.mod_revision, kv })
    }
}
