//! Leadership: one broker writes at a time. It holds a leased key in the store;
//! every write is fenced on that key, so a broker that lost it cannot write.
//! A second broker waits (and does not serve) until the key is free.

use std::sync::Arc;
use std::time::Duration;

use allot_store::{Compare, Op, Store, Txn, layout};

use crate::core::Leadership;
use crate::error::BrokerError;

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
    let lease = store.grant_lease(LEASE_TTL).await.map_err(unavailable)?;
    let mut announced = false;
    loop {
        let txn = Txn::new().when([Compare::absent(key.clone())]).then([Op::put_with_lease(
            key.clone(),
            value.clone(),
            lease.id,
        )]);
        if store.txn(txn).await.map_err(unavailable)?.succeeded {
            break;
        }
        if !announced {
            let holder = store.get(&key).await.ok().flatten().map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
            tracing::info!(leader = holder.as_deref().unwrap_or("?"), "standby: another broker leads; waiting");
            announced = true;
        }
        store.keep_alive(lease.id).await.map_err(unavailable)?;
        tokio::time::sleep(Duration::from_millis(500)).await;
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
