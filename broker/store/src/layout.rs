//! Allot's key names in the store: the one place that knows them.
//!
//! Every key lives under the root prefix [`ROOT`] = `/allot/v1/`. The version
//! segment changes only with an incompatible change of the layout or of the
//! value encodings, so two layouts can sit side by side during a migration.
//!
//! | key | value (encoded by the broker) | lease |
//! |---|---|---|
//! | `/allot/v1/nodes/{node}` | the node's registration: its own inventory details and its template's id | none: a registration outlives restarts |
//! | `/allot/v1/audit/{at_ms}-{seq}` | one audit entry: who asked for which change, from where, when, and what came of it (16 and 10 digits, so keys sort by time) | none |
//! | `/allot/v1/inventory-templates/{id}` | the part of an inventory that nodes of one hardware type share, by its fingerprint (16 hex digits) | none |
//! | `/allot/v1/heartbeats/{node}` | the node's last heartbeat | the node's lease: the key vanishes when the node stops renewing |
//! | `/allot/v1/allocations/{allocation}` | the allocation with its generation and phase | none |
//! | `/allot/v1/teams/{team}` | the team's quota and policy | none |
//! | `/allot/v1/counters/{name}` | a counter (allocation ids, generations), changed by compare-and-swap | none |
//! | `/allot/v1/leader` | the identity of the broker that leads | the leader's lease |
//! | `/allot/v1/settings/{name}` | cluster-wide policy settings (GPU values, the usage history) | none |
//! | `/allot/v1/rbac/{rule}` | one casbin policy line (`p` or `g`), written through the casbin adapter | none |
//! | `/allot/v1/tokens/{sha256}` | the subject a bearer token stands for (only the token's hash is kept) | none |
//! | `/allot/v1/usage/{start_ms}` | one bucket of the usage history (`allot-history`), by its start in ms since the epoch, 16 digits so keys sort by time | none |
//!
//! Names become one path segment each. Allot's names (`NodeName`, `TeamName`,
//! `AllocationId` in `allot-api`) never contain `/` or `%`; should another
//! name contain them, they are percent-encoded (`%2F`, `%25`), so that every
//! name maps to exactly one key and a prefix never matches a longer name's
//! keys by accident ([`prefix_nodes`] ends in `/`). Parse keys back with
//! [`parse`].

use std::fmt::Display;

/// The prefix of every Allot key.
pub const ROOT: &str = "/allot/v1/";

const NODES: &str = "/allot/v1/nodes/";
const TEMPLATES: &str = "/allot/v1/inventory-templates/";
const AUDIT: &str = "/allot/v1/audit/";
const HEARTBEATS: &str = "/allot/v1/heartbeats/";
const ALLOCATIONS: &str = "/allot/v1/allocations/";
const TEAMS: &str = "/allot/v1/teams/";
const COUNTERS: &str = "/allot/v1/counters/";
const LEADER: &str = "/allot/v1/leader";
const SETTINGS: &str = "/allot/v1/settings/";
const RBAC: &str = "/allot/v1/rbac/";
const TOKENS: &str = "/allot/v1/tokens/";
const USAGE: &str = "/allot/v1/usage/";

/// A cluster-wide policy setting.
pub fn setting(name: impl Display) -> String {
    key(SETTINGS, name)
}

/// One casbin policy line, named by its content.
pub fn rbac_rule(rule: impl Display) -> String {
    key(RBAC, rule)
}

/// Every casbin policy line.
pub fn prefix_rbac() -> &'static str {
    RBAC
}

/// A bearer token, by the hex SHA-256 of the token.
pub fn token(hash: impl Display) -> String {
    key(TOKENS, hash)
}

/// Every token.
pub fn prefix_tokens() -> &'static str {
    TOKENS
}

/// One bucket of the usage history, by the time it starts (ms since the epoch).
pub fn usage_bucket(start_ms: u64) -> String {
    key(USAGE, format!("{start_ms:016}"))
}

/// Every bucket of the usage history, in time order.
pub fn prefix_usage() -> &'static str {
    USAGE
}

/// A node's registration.
pub fn node(name: impl Display) -> String {
    key(NODES, name)
}

/// Every node registration.
pub fn prefix_nodes() -> &'static str {
    NODES
}

/// A node's heartbeat, put with the node's lease.
pub fn heartbeat(node: impl Display) -> String {
    key(HEARTBEATS, node)
}

/// Every heartbeat.
pub fn prefix_heartbeats() -> &'static str {
    HEARTBEATS
}

/// An allocation.
pub fn allocation(id: impl Display) -> String {
    key(ALLOCATIONS, id)
}

/// Every allocation.
pub fn prefix_allocations() -> &'static str {
    ALLOCATIONS
}

/// A team's quota and policy.
pub fn team(name: impl Display) -> String {
    key(TEAMS, name)
}

/// Every team.
pub fn prefix_teams() -> &'static str {
    TEAMS
}

/// A counter, such as the next allocation id.
pub fn counter(name: impl Display) -> String {
    key(COUNTERS, name)
}

/// Every counter.
pub fn prefix_counters() -> &'static str {
    COUNTERS
}

/// One audit entry, by its time and sequence number.
pub fn audit_entry(at_ms: u64, seq: u64) -> String {
    key(AUDIT, format!("{at_ms:016}-{seq:010}"))
}

pub fn prefix_audit() -> &'static str {
    AUDIT
}

/// An inventory template, by its id (a 64-bit fingerprint, in 16 hex digits).
pub fn inventory_template(id: u64) -> String {
    key(TEMPLATES, format!("{id:016x}"))
}

pub fn prefix_inventory_templates() -> &'static str {
    TEMPLATES
}

/// The leader key, put with the leading broker's lease.
pub fn leader() -> &'static str {
    LEADER
}

/// What an Allot key names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayoutKey {
    Node(String),
    Heartbeat(String),
    Allocation(String),
    Team(String),
    Counter(String),
    Setting(String),
    RbacRule(String),
    Token(String),
    UsageBucket(String),
    InventoryTemplate(String),
    AuditEntry(String),
    Leader,
}

/// Which entity a key names (for a watch on [`ROOT`] or a range), or `None` for
/// a key outside this layout.
pub fn parse(key: &str) -> Option<LayoutKey> {
    if key == LEADER {
        return Some(LayoutKey::Leader);
    }
    type Kind = fn(String) -> LayoutKey;
    let kinds: [(&str, Kind); 11] = [
        (NODES, LayoutKey::Node),
        (HEARTBEATS, LayoutKey::Heartbeat),
        (ALLOCATIONS, LayoutKey::Allocation),
        (TEAMS, LayoutKey::Team),
        (COUNTERS, LayoutKey::Counter),
        (SETTINGS, LayoutKey::Setting),
        (RBAC, LayoutKey::RbacRule),
        (TOKENS, LayoutKey::Token),
        (USAGE, LayoutKey::UsageBucket),
        (TEMPLATES, LayoutKey::InventoryTemplate),
        (AUDIT, LayoutKey::AuditEntry),
    ];
    kinds.into_iter().find_map(|(prefix, kind)| key.strip_prefix(prefix).and_then(decode).map(kind))
}

fn key(prefix: &str, name: impl Display) -> String {
    let name = name.to_string();
    let mut key = String::with_capacity(prefix.len() + name.len());
    key.push_str(prefix);
    for c in name.chars() {
        match c {
            '%' => key.push_str("%25"),
            '/' => key.push_str("%2F"),
            c => key.push(c),
        }
    }
    key
}

/// The name in one encoded segment; `None` if it is empty, holds a `/` or a
/// malformed escape.
fn decode(segment: &str) -> Option<String> {
    if segment.is_empty() || segment.contains('/') {
        return None;
    }
    let mut name = String::with_capacity(segment.len());
    let mut rest = segment;
    while let Some(at) = rest.find('%') {
        name.push_str(&rest[..at]);
        match rest.get(at + 1..at + 3) {
            Some("25") => name.push('%'),
            Some("2F") => name.push('/'),
            _ => return None,
        }
        rest = &rest[at + 3..];
    }
    name.push_str(rest);
    Some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_documented_layout() {
        assert_eq!(node("gpu-01"), "/allot/v1/nodes/gpu-01");
        assert_eq!(heartbeat("gpu-01"), "/allot/v1/heartbeats/gpu-01");
        assert_eq!(allocation("a-00000000000000ff"), "/allot/v1/allocations/a-00000000000000ff");
        assert_eq!(team("vision"), "/allot/v1/teams/vision");
        assert_eq!(counter("allocation-id"), "/allot/v1/counters/allocation-id");
        assert_eq!(leader(), "/allot/v1/leader");
        assert_eq!(usage_bucket(300_000), "/allot/v1/usage/0000000000300000");
        assert!(usage_bucket(9_999_999) < usage_bucket(10_000_000), "keys sort by time");
        for prefix in [
            prefix_nodes(),
            prefix_heartbeats(),
            prefix_allocations(),
            prefix_teams(),
            prefix_counters(),
            prefix_usage(),
        ] {
            assert!(prefix.starts_with(ROOT) && prefix.ends_with('/'), "{prefix}");
        }
        assert!(node("gpu-01").starts_with(prefix_nodes()));
    }

    #[test]
    fn parse_inverts_every_key_function() {
        let cases: [(String, LayoutKey); 12] = [
            (audit_entry(5, 7), LayoutKey::AuditEntry("0000000000000005-0000000007".into())),
            (inventory_template(0xab), LayoutKey::InventoryTemplate("00000000000000ab".into())),
            (node("gpu-01"), LayoutKey::Node("gpu-01".into())),
            (heartbeat("n.example_1"), LayoutKey::Heartbeat("n.example_1".into())),
            (allocation("a-1"), LayoutKey::Allocation("a-1".into())),
            (team("vision"), LayoutKey::Team("vision".into())),
            (counter("odd/name%"), LayoutKey::Counter("odd/name%".into())),
            (leader().to_owned(), LayoutKey::Leader),
            (setting("gpu-values"), LayoutKey::Setting("gpu-values".into())),
            (rbac_rule("g, alice, member, vision"), LayoutKey::RbacRule("g, alice, member, vision".into())),
            (token("ab12"), LayoutKey::Token("ab12".into())),
            (usage_bucket(1_700_000_100_000), LayoutKey::UsageBucket("0001700000100000".into())),
        ];
        for (key, expected) in cases {
            assert_eq!(parse(&key), Some(expected), "{key}");
        }
    }

    #[test]
    fn odd_names_stay_one_segment_and_foreign_keys_parse_to_none() {
        assert_eq!(node("a/b"), "/allot/v1/nodes/a%2Fb");
        assert_eq!(node("100%"), "/allot/v1/nodes/100%25");
        for key in ["/allot/v1/nodes/", "/allot/v1/nodes/a/b", "/allot/v1/nodes/bad%2", "/allot/v2/nodes/a", "/other"] {
            assert_eq!(parse(key), None, "{key}");
        }
    }
}
