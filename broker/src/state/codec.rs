//! How records are stored: JSON bytes, decoded on every core at start, and the
//! limits a record and a transaction keep to.

use crate::error::BrokerError;

/// Store operations per transaction: etcd's default limit is 128; keep room for
/// the leadership fence and the id counter.
pub(crate) const OPS_PER_TXN: usize = 120;

/// The largest record the broker writes; larger requests or inventories are
/// refused on their own, before they can fail anyone else's batch.
pub(crate) const MAX_RECORD_BYTES: usize = 256 * 1024;

pub(crate) fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, BrokerError> {
    serde_json::to_vec(value).map_err(|error| BrokerError::Internal(format!("cannot encode a record: {error}")))
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, BrokerError> {
    serde_json::from_slice(bytes)
        .map_err(|error| BrokerError::Internal(format!("record {key} in the store is unreadable: {error}")))
}

/// Decodes many records on every core: at start a broker may read 100,000
/// allocations and thousands of node inventories. Keeps the store's order.
pub(crate) fn decode_all<T: serde::de::DeserializeOwned + Send>(
    kvs: &[allot_store::KeyValue],
) -> Result<Vec<T>, BrokerError> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 8);
    if kvs.len() < 1024 || threads == 1 {
        return kvs.iter().map(|kv| decode(&kv.key, &kv.value)).collect();
    }
    let chunk = kvs.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let workers: Vec<_> = kvs
            .chunks(chunk)
            .map(|part| {
                scope
                    .spawn(move || part.iter().map(|kv| decode::<T>(&kv.key, &kv.value)).collect::<Result<Vec<T>, _>>())
            })
            .collect();
        let mut all = Vec::with_capacity(kvs.len());
        for worker in workers {
            match worker.join() {
                Ok(part) => all.extend(part?),
                Err(_) => return Err(BrokerError::Internal("a decoding thread panicked".into())),
            }
        }
        Ok(all)
    })
}
