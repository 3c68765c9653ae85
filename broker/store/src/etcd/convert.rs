//! Conversions between the store's types and etcd-client's.

use etcd_client::{DeleteOptions, PutOptions, ResponseHeader, TxnOp, TxnOpResponse, TxnResponse};

use crate::error::StoreError;
use crate::types::{Compare, CompareOp, CompareTarget, KeyValue, LeaseId, Op, OpResult, Revision, Txn, TxnResult};

use super::EtcdStore;

/// One etcd transaction for one store transaction.
pub(super) fn txn_request(txn: &Txn) -> etcd_client::Txn {
    etcd_client::Txn::new()
        .when(txn.compares.iter().map(compare).collect::<Vec<_>>())
        .and_then(txn.success.iter().map(op).collect::<Vec<_>>())
        .or_else(txn.failure.iter().map(op).collect::<Vec<_>>())
}

fn compare(compare: &Compare) -> etcd_client::Compare {
    match &compare.target {
        CompareTarget::ModRevision(op, revision) => {
            // Revisions above i64::MAX cannot exist in etcd; saturating keeps the comparison's meaning.
            let revision = i64::try_from(revision.get()).unwrap_or(i64::MAX);
            etcd_client::Compare::mod_revision(compare.key.as_str(), compare_op(*op), revision)
        }
        CompareTarget::ValueEquals(value) => {
            etcd_client::Compare::value(compare.key.as_str(), etcd_client::CompareOp::Equal, value.clone())
        }
    }
}

fn compare_op(op: CompareOp) -> etcd_client::CompareOp {
    match op {
        CompareOp::Equal => etcd_client::CompareOp::Equal,
        CompareOp::NotEqual => etcd_client::CompareOp::NotEqual,
        CompareOp::Less => etcd_client::CompareOp::Less,
        CompareOp::Greater => etcd_client::CompareOp::Greater,
    }
}

fn op(op: &Op) -> TxnOp {
    match op {
        Op::Get { key } => TxnOp::get(key.as_str(), None),
        Op::Put { key, value, lease } => {
            let options = lease.map(|lease| PutOptions::new().with_lease(lease.get()));
            TxnOp::put(key.as_str(), value.clone(), options)
        }
        Op::Delete { key } => TxnOp::delete(key.as_str(), None),
        Op::DeletePrefix { prefix } => TxnOp::delete(prefix.as_str(), Some(DeleteOptions::new().with_prefix())),
    }
}

impl EtcdStore {
    pub(super) fn txn_result(&self, response: &TxnResponse) -> Result<TxnResult, StoreError> {
        let revision = self.header_revision("txn", response.header())?;
        let mut results = Vec::new();
        for op in response.op_responses() {
            results.push(match op {
                TxnOpResponse::Get(get) => {
                    OpResult::Get(get.kvs().first().map(|kv| self.key_value("txn", kv)).transpose()?)
                }
                TxnOpResponse::Put(_) => OpResult::Put,
                TxnOpResponse::Delete(delete) => {
                    OpResult::Delete { deleted: delete.deleted().try_into().unwrap_or_default() }
                }
                TxnOpResponse::Txn(_) => {
                    return Err(self.protocol("txn", "a nested transaction result we never asked for".to_owned()));
                }
            });
        }
        Ok(TxnResult { succeeded: response.succeeded(), revision: self.revision("txn", revision)?, results })
    }

    pub(super) fn key_value(
        &self,
        operation: &'static str,
        kv: &etcd_client::KeyValue,
    ) -> Result<KeyValue, StoreError> {
        let key = String::from_utf8(kv.key().to_vec()).map_err(|_| StoreError::InvalidKey {
            key: String::from_utf8_lossy(kv.key()).into_owned(),
            endpoints: self.endpoints(),
        })?;
        Ok(KeyValue {
            key,
            value: kv.value().to_vec(),
            create_revision: self.revision(operation, kv.create_revision())?,
            mod_revision: self.revision(operation, kv.mod_revision())?,
            lease: (kv.lease() != 0).then(|| LeaseId::new(kv.lease())),
        })
    }

    pub(super) fn header_revision(
        &self,
        operation: &'static str,
        header: Option<&ResponseHeader>,
    ) -> Result<i64, StoreError> {
        header.map(ResponseHeader::revision).ok_or_else(|| self.protocol(operation, "no response header".to_owned()))
    }

    pub(super) fn revision(&self, operation: &'static str, revision: i64) -> Result<Revision, StoreError> {
        u64::try_from(revision)
            .map(Revision::new)
            .map_err(|_| self.protocol(operation, format!("a negative revision {revision}")))
    }

    pub(super) fn protocol(&self, operation: &'static str, detail: String) -> StoreError {
        StoreError::Protocol { operation, endpoints: self.endpoints(), detail }
    }
}
