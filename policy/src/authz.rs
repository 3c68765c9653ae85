//! Authorization rules: roles, what each may do, which permission every RPC and
//! HTTP route needs, and the casbin model (RBAC with domains, one domain per team,
//! `*` for the whole cluster) that the broker enforces them with.
//!
//! A grant in a team's domain also covers the teams below it: the broker asks
//! casbin for the team, then each ancestor, then `*`. Changing a team's quota or
//! deleting it needs the permission in its *parent's* domain, so a team-admin
//! shapes the projects under the team but not the team's own share.

use std::fmt;

use allot_api::allocation::TeamName;
use serde::{Deserialize, Serialize};

/// The casbin model. `p = sub, obj, act` are role permissions; `g = user, role,
/// domain` are grants; `guest` permissions hold for everyone, signed in or not.
pub const CASBIN_MODEL: &str = "\
[request_definition]
r = sub, dom, obj, act

[policy_definition]
p = sub, obj, act

[role_definition]
g = _, _, _

[policy_effect]
e = some(where (p.eft == allow))

[matchers]
m = (p.sub == \"guest\" || g(r.sub, p.sub, r.dom) || g(r.sub, p.sub, \"*\")) && (p.obj == \"*\" || r.obj == p.obj) && (p.act == \"*\" || r.act == p.act)
";

/// The roles Allot knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    PlatformAdmin,
    TeamAdmin,
    Member,
    Viewer,
    /// Node daemons and device plugins.
    Node,
}

impl Role {
    pub const ALL: [Role; 5] = [Role::PlatformAdmin, Role::TeamAdmin, Role::Member, Role::Viewer, Role::Node];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::PlatformAdmin => "platform-admin",
            Role::TeamAdmin => "team-admin",
            Role::Member => "member",
            Role::Viewer => "viewer",
            Role::Node => "node",
        }
    }

    /// Whether the role is granted only cluster-wide.
    pub fn cluster_only(self) -> bool {
        matches!(self, Role::PlatformAdmin | Role::Node)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(input: &str) -> Result<Role, String> {
        Role::ALL.into_iter().find(|role| role.as_str() == input).ok_or_else(|| {
            format!(
                "unknown role {input:?}; roles: {}",
                Role::ALL.iter().map(|role| role.as_str()).collect::<Vec<_>>().join(", ")
            )
        })
    }
}

/// What each role may do: `(role, object, action)`, the casbin `p` lines.
pub const PERMISSIONS: &[(&str, &str, &str)] = &[
    ("platform-admin", "*", "*"),
    ("team-admin", "allocation", "*"),
    ("team-admin", "team", "*"),
    ("team-admin", "quota", "*"),
    ("team-admin", "policy", "*"),
    ("team-admin", "fairshare", "read"),
    ("team-admin", "node", "read"),
    ("member", "allocation", "*"),
    ("member", "team", "read"),
    ("member", "quota", "read"),
    ("member", "fairshare", "read"),
    ("member", "node", "read"),
    ("viewer", "allocation", "read"),
    ("viewer", "team", "read"),
    ("viewer", "quota", "read"),
    ("viewer", "fairshare", "read"),
    ("viewer", "node", "read"),
    ("viewer", "metrics", "read"),
    ("node", "node", "*"),
    ("node", "allocation", "read"),
    ("guest", "health", "read"),
];

/// A role granted to a subject, in a team's domain or cluster-wide.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Grant {
    pub subject: String,
    pub role: Role,
    /// None: the whole cluster (`*`).
    pub team: Option<TeamName>,
}

/// Subjects: people, service accounts and nodes, like `alice`, `ci@vision`, `node-a`.
pub fn check_subject(subject: &str) -> Result<(), String> {
    let fine = !subject.is_empty()
        && subject.len() <= 128
        && subject.chars().all(|c| c.is_ascii_alphanumeric() || "@._-:".contains(c))
        && !matches!(subject, "guest" | "anonymous" | "*");
    if fine {
        Ok(())
    } else {
        Err(format!("subject {subject:?} must be 1 to 128 letters, digits or @._-: and not guest, anonymous or *"))
    }
}

impl Grant {
    pub fn new(subject: &str, role: &str, team: Option<&str>) -> Result<Grant, String> {
        check_subject(subject)?;
        let role: Role = role.parse()?;
        let team = team.map(|team| team.parse::<TeamName>().map_err(|error| error.to_string())).transpose()?;
        if role.cluster_only() && team.is_some() {
            return Err(format!("role {role} is cluster-wide; grant it without a team"));
        }
        Ok(Grant { subject: subject.to_owned(), role, team })
    }

    /// The casbin domain: the team, or `*`.
    pub fn domain(&self) -> &str {
        self.team.as_ref().map_or("*", TeamName::as_str)
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.subject, self.role, self.domain())
    }
}

/// Which domain an RPC's permission is checked in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The whole cluster (`*`).
    Cluster,
    /// The team the request names (or the allocation belongs to).
    Team,
    /// The parent of the team the request names (`*` for a top-level team).
    ParentOfTeam,
}

/// The permission one RPC or HTTP route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// `Service/Method` as in the proto, or `GET /path` for HTTP.
    pub call: &'static str,
    pub object: &'static str,
    pub action: &'static str,
    pub scope: Scope,
}

const fn rule(call: &'static str, object: &'static str, action: &'static str, scope: Scope) -> Rule {
    Rule { call, object, action, scope }
}

/// Every call the broker serves and the permission it needs. The broker looks
/// rules up here (an unlisted call is refused), and the authorization test walks
/// this list against every role.
pub const RULES: &[Rule] = &[
    rule("NodeService/Register", "node", "write", Scope::Cluster),
    rule("NodeService/Heartbeat", "node", "write", Scope::Cluster),
    rule("NodeService/WatchAssignments", "node", "write", Scope::Cluster),
    rule("NodeService/ReportApplied", "node", "write", Scope::Cluster),
    rule("AllocationService/Create", "allocation", "create", Scope::Team),
    rule("AllocationService/Get", "allocation", "read", Scope::Team),
    rule("AllocationService/List", "allocation", "read", Scope::Team),
    rule("AllocationService/Explain", "allocation", "read", Scope::Team),
    rule("AllocationService/Release", "allocation", "release", Scope::Team),
    rule("AllocationService/FindByDevice", "allocation", "read", Scope::Team),
    rule("AdminService/CreateTeam", "team", "create", Scope::ParentOfTeam),
    rule("AdminService/DeleteTeam", "team", "delete", Scope::ParentOfTeam),
    rule("AdminService/ListTeams", "team", "read", Scope::Team),
    rule("AdminService/ListNodes", "node", "read", Scope::Cluster),
    rule("AdminService/GetNode", "node", "read", Scope::Cluster),
    rule("AdminService/SetQuota", "quota", "write", Scope::ParentOfTeam),
    rule("AdminService/GetQuota", "quota", "read", Scope::Team),
    rule("AdminService/FairShare", "fairshare", "read", Scope::Team),
    rule("AdminService/ListQueue", "allocation", "read", Scope::Team),
    rule("AdminService/Grant", "policy", "write", Scope::Team),
    rule("AdminService/Revoke", "policy", "write", Scope::Team),
    rule("AdminService/ListGrants", "policy", "read", Scope::Team),
    rule("AdminService/Apply", "policy", "write", Scope::Cluster),
    rule("AdminService/CreateToken", "token", "write", Scope::Cluster),
    rule("AdminService/ListTokens", "token", "read", Scope::Cluster),
    rule("AdminService/RevokeToken", "token", "write", Scope::Cluster),
    rule("AdminService/ListAudit", "audit", "read", Scope::Cluster),
    // Usage reads like fair share: whoever sees a team's standing sees its history.
    rule("AdminService/GetUsageHistory", "fairshare", "read", Scope::Team),
    rule("GET /metrics", "metrics", "read", Scope::Cluster),
    rule("GET /healthz", "health", "read", Scope::Cluster),
    rule("GET /readyz", "health", "read", Scope::Cluster),
];

/// The rule for a call.
pub fn rule_for(call: &str) -> Option<&'static Rule> {
    RULES.iter().find(|rule| rule.call == call)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_check_their_parts() {
        assert!(Grant::new("alice", "member", Some("vision")).is_ok());
        assert!(Grant::new("alice", "boss", None).expect_err("role").contains("unknown role"));
        assert!(Grant::new("node-a", "node", Some("vision")).expect_err("scope").contains("cluster-wide"));
        assert!(Grant::new("a b", "viewer", None).is_err());
        assert!(Grant::new("guest", "viewer", None).is_err());
        assert_eq!(Grant::new("alice", "viewer", None).expect("grant").to_string(), "alice viewer *");
    }

    #[test]
    fn every_permission_names_a_known_role_and_every_rule_is_granted_to_someone() {
        for (role, _, _) in PERMISSIONS {
            assert!(*role == "guest" || role.parse::<Role>().is_ok(), "{role}");
        }
        for rule in RULES {
            let someone = PERMISSIONS.iter().any(|(role, object, action)| {
                *role != "platform-admin"
                    && (*object == rule.object || *object == "*")
                    && (*action == rule.action || *action == "*")
            });
            let admin_only = [
                "AdminService/Apply",
                "AdminService/CreateToken",
                "AdminService/ListTokens",
                "AdminService/RevokeToken",
                "AdminService/ListAudit",
            ]
            .contains(&rule.call);
            assert!(someone || admin_only, "{} is reachable only by platform admins", rule.call);
        }
    }
}
