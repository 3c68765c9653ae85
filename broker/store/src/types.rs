//! The store's vocabulary: revisions, leases, key-values, transactions and watch events.

use std::fmt;
use std::time::Duration;

use crate::error::StoreError;

/// The most operations a transaction may hold in its compares, its success
/// branch or its failure branch: etcd's default `--max-txn-ops`. The embedded
/// store enforces the same limit, so code that works on one works on the other.
pub const MAX_TXN_OPS: usize = 128;

/// The most bytes of keys and values one transaction may carry: 1 MiB, below
/// etcd's default request limit (`--max-request-bytes`, 1.5 MiB) with room for
/// its framing. The embedded store enforces the same limit.
pub const MAX_TXN_BYTES: usize = 1 << 20;

/// A store revision: a counter that every committed change increments.
///
/// All keys changed by one transaction share its revision. Revision 0 never
/// names a change: as a key's `mod_revision` it means "absent", and as a
/// watch's start it means "from now on".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Revision(u64);

impl Revision {
    /// No revision: an absent key's `mod_revision`; a watch from "now".
    pub const ZERO: Revision = Revision(0);

    pub const fn new(value: u64) -> Self {
        Revision(value)
    }

    pub const fn get(self) -> u64 {
        self.0
    }

    /// The revision after this one.
    pub const fn next(self) -> Self {
        Revision(self.0.saturating_add(1))
    }
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A lease's identity. Keys put with a lease are deleted when it expires or is
/// revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LeaseId(i64);

impl LeaseId {
    pub const fn new(value: i64) -> Self {
        LeaseId(value)
    }

    pub const fn get(self) -> i64 {
        self.0
    }
}

impl fmt::Display for LeaseId {
    /// Hexadecimal, as `etcdctl` prints lease ids.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

/// A granted lease: its id and the time to live the store granted (etcd may
/// raise a short TTL to its minimum).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub id: LeaseId,
    pub ttl: Duration,
}

/// A key with its value and revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// The revision of the transaction that created the key (since it was last
    /// absent).
    pub create_revision: Revision,
    /// The revision of the transaction that last changed the key.
    pub mod_revision: Revision,
    pub lease: Option<LeaseId>,
}

/// The keys under a prefix at one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeResult {
    /// Sorted by key (byte order).
    pub kvs: Vec<KeyValue>,
    /// The store revision the keys were read at; watch from `revision.next()`
    /// to see every later change.
    pub revision: Revision,
}

/// How a [`Compare`] relates the key's current state to the given one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    Equal,
    NotEqual,
    Less,
    Greater,
}

impl CompareOp {
    fn holds<T: Ord>(self, current: T, given: T) -> bool {
        match self {
            CompareOp::Equal => current == given,
            CompareOp::NotEqual => current != given,
            CompareOp::Less => current < given,
            CompareOp::Greater => current > given,
        }
    }
}

/// What a [`Compare`] looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompareTarget {
    /// The key's `mod_revision`; an absent key's is [`Revision::ZERO`].
    ModRevision(CompareOp, Revision),
    /// The key's value is exactly these bytes. Fails when the key is absent.
    ValueEquals(Vec<u8>),
}

/// One condition of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    pub key: String,
    pub target: CompareTarget,
}

impl Compare {
    /// The key's `mod_revision` relates to `revision` by `op`.
    pub fn mod_revision(key: impl Into<String>, op: CompareOp, revision: Revision) -> Self {
        Compare { key: key.into(), target: CompareTarget::ModRevision(op, revision) }
    }

    /// The key has not changed since `kv` was read (compare-and-swap).
    pub fn unchanged(kv: &KeyValue) -> Self {
        Compare::mod_revision(kv.key.clone(), CompareOp::Equal, kv.mod_revision)
    }

    /// The key does not exist.
    pub fn absent(key: impl Into<String>) -> Self {
        Compare::mod_revision(key, CompareOp::Equal, Revision::ZERO)
    }

    /// The key exists and holds exactly `value`.
    pub fn value_equals(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        Compare { key: key.into(), target: CompareTarget::ValueEquals(value.into()) }
    }

    /// Whether the compare holds for a key whose current state is `current`
    /// (`None` when absent), as etcd evaluates it.
    pub(crate) fn holds(&self, current: Option<(&[u8], Revision)>) -> bool {
        match (&self.target, current) {
            (CompareTarget::ModRevision(op, revision), current) => {
                let mod_revision = current.map_or(Revision::ZERO, |(_, mod_revision)| mod_revision);
                op.holds(mod_revision, *revision)
            }
            (CompareTarget::ValueEquals(value), Some((current, _))) => current == value.as_slice(),
            (CompareTarget::ValueEquals(_), None) => false,
        }
    }
}

/// One operation of a transaction branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Read a key; its value is in the [`OpResult::Get`] at the same index.
    Get { key: String },
    /// Create or replace a key, attached to a lease or to none.
    Put { key: String, value: Vec<u8>, lease: Option<LeaseId> },
    /// Delete a key; deleting an absent key is not an error and changes nothing.
    Delete { key: String },
    /// Delete every key that starts with `prefix` (which must not be empty).
    DeletePrefix { prefix: String },
}

impl Op {
    pub fn get(key: impl Into<String>) -> Self {
        Op::Get { key: key.into() }
    }

    pub fn put(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        Op::Put { key: key.into(), value: value.into(), lease: None }
    }

    pub fn put_with_lease(key: impl Into<String>, value: impl Into<Vec<u8>>, lease: LeaseId) -> Self {
        Op::Put { key: key.into(), value: value.into(), lease: Some(lease) }
    }

    pub fn delete(key: impl Into<String>) -> Self {
        Op::Delete { key: key.into() }
    }

    pub fn delete_prefix(prefix: impl Into<String>) -> Self {
        Op::DeletePrefix { prefix: prefix.into() }
    }
}

/// A transaction: if every compare holds, the success branch runs, otherwise
/// the failure branch. Either branch is applied whole or not at all, at one new
/// revision (none if it changed nothing).
///
/// Within one branch a key may be put at most once, and not also deleted: etcd
/// refuses such a transaction, and so does the embedded store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub success: Vec<Op>,
    pub failure: Vec<Op>,
}

impl Txn {
    pub fn new() -> Self {
        Txn::default()
    }

    /// Adds conditions; all must hold for the success branch to run.
    pub fn when(mut self, compares: impl IntoIterator<Item = Compare>) -> Self {
        self.compares.extend(compares);
        self
    }

    /// Adds operations to the success branch.
    pub fn then(mut self, ops: impl IntoIterator<Item = Op>) -> Self {
        self.success.extend(ops);
        self
    }

    /// Adds operations to the failure branch.
    pub fn otherwise(mut self, ops: impl IntoIterator<Item = Op>) -> Self {
        self.failure.extend(ops);
        self
    }

    /// Checks what both backends refuse, so that they refuse the same things.
    pub(crate) fn validate(&self) -> Result<(), StoreError> {
        let invalid = |reason: String| Err(StoreError::InvalidTxn { reason });
        for (what, len) in [
            ("compares", self.compares.len()),
            ("success ops", self.success.len()),
            ("failure ops", self.failure.len()),
        ] {
            if len > MAX_TXN_OPS {
                return invalid(format!("{len} {what}, more than the {MAX_TXN_OPS} a transaction may hold"));
            }
        }
        if let Some(compare) = self.compares.iter().find(|compare| compare.key.is_empty()) {
            return invalid(format!("a compare has an empty key ({compare:?})"));
        }
        for (branch, ops) in [("success", &self.success), ("failure", &self.failure)] {
            validate_branch(branch, ops)?;
        }
        let bytes = self.bytes();
        if bytes > MAX_TXN_BYTES {
            return invalid(format!(
                "{bytes} bytes of keys and values, more than the {MAX_TXN_BYTES} a transaction may carry"
            ));
        }
        Ok(())
    }

    /// The bytes of keys and values the transaction carries.
    fn bytes(&self) -> usize {
        let compares = self.compares.iter().map(|compare| {
            compare.key.len()
                + match &compare.target {
                    CompareTarget::ModRevision(..) => 0,
                    CompareTarget::ValueEquals(value) => value.len(),
                }
        });
        let ops = self.success.iter().chain(&self.failure).map(|op| match op {
            Op::Get { key } | Op::Delete { key } | Op::DeletePrefix { prefix: key } => key.len(),
            Op::Put { key, value, .. } => key.len() + value.len(),
        });
        compares.chain(ops).sum()
    }
}

fn validate_branch(branch: &str, ops: &[Op]) -> Result<(), StoreError> {
    let invalid = |reason: String| Err(StoreError::InvalidTxn { reason: format!("{branch} branch: {reason}") });
    let mut puts: Vec<&str> = Vec::new();
    for op in ops {
        match op {
            Op::Get { key } | Op::Put { key, .. } | Op::Delete { key } if key.is_empty() => {
                return invalid(format!("an operation has an empty key ({op:?})"));
            }
            Op::DeletePrefix { prefix } if prefix.is_empty() => {
                return invalid("delete_prefix with an empty prefix would delete every key".to_owned());
            }
            Op::Put { key, .. } => puts.push(key),
            _ => {}
        }
    }
    puts.sort_unstable();
    if let Some(pair) = puts.windows(2).find(|pair| pair[0] == pair[1]) {
        return invalid(format!("key {:?} is put twice", pair[0]));
    }
    for op in ops {
        let deleted = |key: &str| match op {
            Op::Delete { key: deleted } => key == deleted,
            Op::DeletePrefix { prefix } => key.starts_with(prefix.as_str()),
            Op::Get { .. } | Op::Put { .. } => false,
        };
        if let Some(key) = puts.iter().find(|key| deleted(key)) {
            return invalid(format!("key {key:?} is both put and deleted"));
        }
    }
    Ok(())
}

/// The result of one operation of the branch that ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpResult {
    Get(Option<KeyValue>),
    Put,
    Delete { deleted: u64 },
}

/// What a transaction did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnResult {
    /// Whether every compare held (the success branch ran).
    pub succeeded: bool,
    /// The store revision after the transaction: its own new revision if it
    /// changed anything, else the revision it was evaluated at.
    pub revision: Revision,
    /// One result per operation of the branch that ran, in order.
    pub results: Vec<OpResult>,
}

impl TxnResult {
    /// The key read by the `Op::Get` at `index` of the branch that ran.
    pub fn get(&self, index: usize) -> Option<&KeyValue> {
        match self.results.get(index) {
            Some(OpResult::Get(kv)) => kv.as_ref(),
            _ => None,
        }
    }
}

/// Whether a watch event created/replaced or deleted a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change seen by a watch.
///
/// For a `Put`, `kv` is the key as written. For a `Delete`, `kv` holds the key,
/// an empty value, `create_revision` 0, `mod_revision` equal to the deletion's
/// revision and no lease (as etcd reports deletions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    pub kind: EventKind,
    pub kv: KeyValue,
    pub revision: Revision,
}

impl WatchEvent {
    pub(crate) fn deleted(key: String, revision: Revision) -> Self {
        WatchEvent {
            kind: EventKind::Delete,
            kv: KeyValue {
                key,
                value: Vec::new(),
                create_revision: Revision::ZERO,
                mod_revision: revision,
                lease: None,
            },
            revision,
        }
    }
}

/// The TTL both backends grant for a requested one: whole seconds, at least one.
/// etcd counts lease TTLs in seconds; the embedded store rounds the same way.
pub(crate) fn ttl_seconds(ttl: Duration) -> Result<i64, StoreError> {
    if ttl.is_zero() {
        return Err(StoreError::InvalidArgument { what: "lease ttl", reason: "must be more than zero".to_owned() });
    }
    let seconds = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    i64::try_from(seconds)
        .map_err(|_| StoreError::InvalidArgument { what: "lease ttl", reason: format!("{ttl:?} is too long") })
}

/// The first key after every key that starts with `prefix`, or `None` when no
/// key is (the prefix is empty or all 0xff bytes).
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_invalid(txn: Txn, expected: &str) {
        match txn.validate() {
            Err(StoreError::InvalidTxn { reason }) => assert!(reason.contains(expected), "{reason}"),
            other => panic!("expected an invalid txn ({expected}), got {other:?}"),
        }
    }

    #[test]
    fn txn_validation_matches_etcd_rules() {
        check_invalid(Txn::new().then([Op::put("a", "1"), Op::put("a", "2")]), "put twice");
        check_invalid(Txn::new().then([Op::put("a/b", "1"), Op::delete_prefix("a/")]), "both put and deleted");
        check_invalid(Txn::new().otherwise([Op::delete("a"), Op::put("a", "1")]), "both put and deleted");
        check_invalid(Txn::new().then([Op::delete_prefix("")]), "empty prefix");
        check_invalid(Txn::new().then([Op::get("")]), "empty key");
        check_invalid(Txn::new().when([Compare::absent("")]), "empty key");
        check_invalid(Txn::new().then((0..=MAX_TXN_OPS).map(|i| Op::put(format!("k{i}"), ""))), "more than");
        check_invalid(Txn::new().then([Op::put("k", vec![0; MAX_TXN_BYTES])]), "bytes of keys and values");
        assert!(Txn::new().then([Op::put("k", vec![0; MAX_TXN_BYTES - 1])]).validate().is_ok());
        // The same key in both branches, deletes of one key twice and gets beside puts are fine.
        let fine = Txn::new()
            .then([Op::put("a", "1"), Op::get("a"), Op::delete("b"), Op::delete("b")])
            .otherwise([Op::put("a", "2")]);
        assert!(fine.validate().is_ok());
    }

    #[test]
    fn compares_treat_absent_keys_like_etcd() {
        assert!(Compare::absent("k").holds(None));
        assert!(!Compare::absent("k").holds(Some((b"v", Revision::new(3)))));
        assert!(Compare::mod_revision("k", CompareOp::Less, Revision::new(4)).holds(Some((b"v", Revision::new(3)))));
        assert!(Compare::mod_revision("k", CompareOp::Greater, Revision::new(2)).holds(Some((b"", Revision::new(3)))));
        assert!(!Compare::value_equals("k", "").holds(None));
        assert!(Compare::value_equals("k", "v").holds(Some((b"v", Revision::new(1)))));
    }

    #[test]
    fn prefix_end_is_the_next_key_after_the_prefix() {
        assert_eq!(prefix_end(b"/a/"), Some(b"/a0".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }

    #[test]
    fn ttl_rounds_up_to_whole_seconds() {
        assert_eq!(ttl_seconds(Duration::from_millis(1)).ok(), Some(1));
        assert_eq!(ttl_seconds(Duration::from_secs(2)).ok(), Some(2));
        assert_eq!(ttl_seconds(Duration::from_millis(2001)).ok(), Some(3));
        assert!(ttl_seconds(Duration::ZERO).is_err());
    }
}
