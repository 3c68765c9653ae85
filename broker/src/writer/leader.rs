//! Leadership: one broker writes at a time. It holds a leased key in the store;
//! every write is fenced on that key, so a broker that lost it cannot write.
//! A second broker waits (and does not serve) until the key is free.

use std::sync::Arc;
use std::time::Duration;

use allot_store::{Compare, Op, Store, Txn, layout};

use crate::error::BrokerError;

/// Identity of this broker as the store's leader.
#[derive(Debug, Clone)]
pub struct Leadership {
    pub key: String,
    pub value: Vec<u8>,
    pub lease: allot_store::LeaseId,
}

const LEASE_TTL: Duration = Duration::from_secs(10);

/// Gives leadership up at once (on a clean shutdown), so a restarted or standby
/// broker need not wait for the lease to run out.
pub async fn resign(store: &dyn Store, leadership: &Leadership) {
    if let Err(error) = store.revoke_lease(leadership.lease).await {
        tracing::warn!(%error, "could not give up leadership; a successor waits for the lease to expire");
    }
}

/// Waits until this broker leads, then keeps the lease alive in the background.
/// `on_lost` runs if the lease cannot be kept.
pub async fn acquire(
    store: Arc<dyn Store>,
    identity: String,
    on_lost: impl FnOnce() + Send + 'static,
) -> Result<Leadership, BrokerError> {
    let unavailable = |error: allot_store::StoreError| BrokerError::StoreUnavailable(error.to_string());
    let key = layout::leader().to_owned();
    let value = identity.into_bytes();
    let mut lease = store.grant_lease(LEASE_TTL).await.map_err(unavailable)?;
    let mut announced = false;
    let mut delay = Duration::from_millis(500);
    loop {
        let txn = Txn::new().when([Compare::absent(key.clone())]).then([Op::put_with_lease(
            key.clone(),
            value.clone(),
            lease.id,
        )]);
        // A standby outlives brief store trouble: it retries rather than exits.
        let attempt = async {
            if store.txn(txn).await?.succeeded {
                return Ok(true);
            }
            store.keep_alive(lease.id).await?;
            Ok::<bool, allot_store::StoreError>(false)
        };
        match attempt.await {
            Ok(true) => break,
            Ok(false) => {
                delay = Duration::from_millis(500);
                if !announced {
                    let holder =
                        store.get(&key).await.ok().flatten().map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
                    tracing::info!(leader = holder.as_deref().unwrap_or("?"), "standby: another broker leads; waiting");
                    announced = true;
                }
            }
            Err(error) => {
                tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "standby: store trouble; retrying");
                delay = (delay * 2).min(Duration::from_secs(5));
                // The lease may have run out meanwhile: take a new one.
                if let Ok(fresh) = store.grant_lease(LEASE_TTL).await {
                    let _ = store.revoke_lease(lease.id).await;
                    lease = fresh;
                }
            }
        }
        tokio::time::sleep(delay).await;
    }
    tracing::info!("this broker leads");
    let keeper = Arc::clone(&store);
    tokio::spawn(async move {
        let mut failures = 0;
        loop {
            tokio::time::sleep(lease.ttl / 3).await;
            match keeper.keep_alive(lease.id).await {
                Ok(()) => failures = 0,
                Err(error) => {
                    failures += 1;
                    tracing::warn!(%error, failures, "cannot renew the leadership lease");
                    if failures >= 2 {
                        on_lost();
                        return;
                    }
                }
            }
        }
    });
    Ok(Leadership { key, value, lease: lease.id })
}
