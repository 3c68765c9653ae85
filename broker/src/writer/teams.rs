//! Changes to teams, quotas, GPU values, role grants and tokens, applied by the
//! writer like every other change: checked against the whole quota tree first,
//! then written in the batch's transaction, so a rejected change (or a rejected
//! teams file) leaves everything as it was.

use std::collections::{BTreeMap, BTreeSet};

use allot_api::allocation::{AllocationState, TeamName};
use allot_policy::authz::PERMISSIONS;
use allot_policy::file::plan;
use allot_policy::{Change, Grant, Quota, QuotaTree, ResourceClass, TeamsFile};
use allot_store::{Op, layout};
use tokio::sync::oneshot;

use crate::error::BrokerError;
use crate::state::codec::encode;
use crate::state::{ClusterState, TeamRecord, TokenRecord};
use crate::writer::{Answer, Pending};

type Reply<T> = oneshot::Sender<Result<T, BrokerError>>;

/// A change to teams, quotas or authorization.
#[derive(Debug)]
pub enum TeamCommand {
    Create {
        name: TeamName,
        parent: Option<TeamName>,
        quota: Quota,
        reply: Reply<TeamRecord>,
    },
    Delete {
        name: TeamName,
        reply: Reply<()>,
    },
    SetQuota {
        name: TeamName,
        quota: Quota,
        reply: Reply<TeamRecord>,
    },
    /// Makes the cluster match a teams file; answers the changes (made, or that
    /// would be made with `dry_run`).
    Apply {
        origin: String,
        file: TeamsFile,
        prune: bool,
        dry_run: bool,
        reply: Reply<Vec<String>>,
    },
    Grant {
        grant: Grant,
        reply: Reply<()>,
    },
    Revoke {
        grant: Grant,
        reply: Reply<()>,
    },
    /// Stores a token's hash for a subject, with an optional grant and expiry.
    CreateToken {
        hash: String,
        subject: String,
        grant: Option<Grant>,
        expires_at_ms: Option<u64>,
        reply: Reply<()>,
    },
    /// Deletes tokens by hash; answers with the records removed.
    RevokeTokens {
        hashes: Vec<String>,
        reply: Reply<Vec<(String, TokenRecord)>>,
    },
    /// First start: the role permissions and, when given, a first admin token.
    Bootstrap {
        admin: Option<(String, Grant)>,
        reply: Reply<bool>,
    },
}

impl TeamCommand {
    pub fn refuse(self, error: BrokerError) {
        match self {
            TeamCommand::Create { reply, .. } | TeamCommand::SetQuota { reply, .. } => {
                let _ = reply.send(Err(error));
            }
            TeamCommand::Delete { reply, .. }
            | TeamCommand::Grant { reply, .. }
            | TeamCommand::Revoke { reply, .. }
            | TeamCommand::CreateToken { reply, .. } => {
                let _ = reply.send(Err(error));
            }
            TeamCommand::Apply { reply, .. } => {
                let _ = reply.send(Err(error));
            }
            TeamCommand::Bootstrap { reply, .. } => {
                let _ = reply.send(Err(error));
            }
            TeamCommand::RevokeTokens { reply, .. } => {
                let _ = reply.send(Err(error));
            }
        }
    }
}

/// The casbin line of a grant: `g, subject, role, domain`.
pub fn grant_line(grant: &Grant) -> Vec<String> {
    vec!["g".into(), grant.subject.clone(), grant.role.as_str().into(), grant.domain().into()]
}

/// A grant from a stored casbin line (None for `p` lines and foreign ones).
pub fn grant_from_line(line: &[String]) -> Option<Grant> {
    match line {
        [kind, subject, role, domain] if kind == "g" => {
            Grant::new(subject, role, (domain != "*").then_some(domain.as_str())).ok()
        }
        _ => None,
    }
}

fn line_key(line: &[String]) -> String {
    layout::rbac_rule(line.join(", "))
}

fn put_line(line: Vec<String>, writes: &mut Vec<Op>) -> Result<(), BrokerError> {
    writes.push(Op::put(line_key(&line), encode(&line)?));
    Ok(())
}

/// Every GPU family the stored records name, plus those the nodes have.
pub fn named_families(state: &ClusterState) -> BTreeSet<String> {
    let mut families = state.gpu_families();
    for record in state.teams.values() {
        for amounts in [&record.quota.guaranteed, &record.quota.limit, &record.quota.lending_limit] {
            for class in amounts.0.keys() {
                if let ResourceClass::GpuFamily(family) = class {
                    families.insert(family.clone());
                }
            }
        }
    }
    families.extend(state.tree.gpu_values().keys().cloned());
    families
}

fn invalid(problems: Vec<allot_policy::QuotaError>) -> BrokerError {
    BrokerError::InvalidQuota { problems: problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ") }
}

/// Whether a team still has work: live or pending allocations.
fn team_in_use(state: &ClusterState, name: &TeamName) -> usize {
    state
        .allocations
        .values()
        .filter(|allocation| {
            &allocation.request.team == name
                && (allocation.state.holds_capacity() || allocation.state == AllocationState::Pending)
        })
        .count()
}

fn done<T: Send + 'static>(reply: Reply<T>, value: T) -> Option<Pending> {
    Some(Pending::Done(Box::new(Answer { reply, value })))
}

fn put_team(record: &TeamRecord, writes: &mut Vec<Op>) -> Result<(), BrokerError> {
    writes.push(Op::put(layout::team(record.name.as_str()), encode(record)?));
    Ok(())
}

/// Checks a new or changed team record against the whole tree, then writes it
/// and takes it into memory; a record the tree refuses changes nothing.
fn store_team(
    state: &mut ClusterState,
    record: TeamRecord,
    families: &BTreeSet<String>,
    writes: &mut Vec<Op>,
    reply: Reply<TeamRecord>,
) -> Option<Pending> {
    let tree = match state.tree.with(record.spec(), families) {
        Ok(tree) => tree,
        Err(problems) => {
            let _ = reply.send(Err(invalid(problems)));
            return None;
        }
    };
    if let Err(error) = put_team(&record, writes) {
        let _ = reply.send(Err(error));
        return None;
    }
    state.teams.insert(record.name.clone(), record.clone());
    state.tree = tree;
    state.round_wanted = !state.queue.is_empty();
    done(reply, record)
}

/// Applies a team command: checks, changes memory, adds the writes.
pub(crate) fn apply(state: &mut ClusterState, command: TeamCommand, writes: &mut Vec<Op>, now: u64) -> Option<Pending> {
    let families = named_families(state);
    match command {
        TeamCommand::Create { name, parent, quota, reply } => {
            if state.teams.contains_key(&name) {
                let _ = reply.send(Err(BrokerError::AlreadyExists { what: format!("team {name}") }));
                return None;
            }
            if let Some(parent) = &parent
                && team_in_use(state, parent) > 0
            {
                let _ = reply.send(Err(BrokerError::FailedPrecondition(format!(
                    "team {parent} holds allocations itself; a team with projects allocates only through them, \
                     so release its allocations before adding project {name}"
                ))));
                return None;
            }
            let record = TeamRecord { name, created_at_ms: now, parent, quota };
            store_team(state, record, &families, writes, reply)
        }
        TeamCommand::SetQuota { name, quota, reply } => {
            let Some(mut record) = state.teams.get(&name).cloned() else {
                let _ = reply.send(Err(BrokerError::UnknownTeam { team: name.to_string() }));
                return None;
            };
            record.quota = quota;
            store_team(state, record, &families, writes, reply)
        }
        TeamCommand::Delete { name, reply } => {
            if !state.teams.contains_key(&name) {
                let _ = reply.send(Err(BrokerError::UnknownTeam { team: name.to_string() }));
                return None;
            }
            let in_use = team_in_use(state, &name);
            if in_use > 0 {
                let _ = reply.send(Err(BrokerError::FailedPrecondition(format!(
                    "team {name} has {in_use} live or pending allocation(s); release them first"
                ))));
                return None;
            }
            let tree = match state.tree.without(&name, &families) {
                Ok(tree) => tree,
                Err(problems) => {
                    let _ = reply.send(Err(invalid(problems)));
                    return None;
                }
            };
            writes.push(Op::delete(layout::team(name.as_str())));
            let stale: Vec<Grant> =
                state.grants.iter().filter(|grant| grant.team.as_ref() == Some(&name)).cloned().collect();
            for grant in stale {
                writes.push(Op::delete(line_key(&grant_line(&grant))));
                state.grants.remove(&grant);
            }
            state.teams.remove(&name);
            state.tree = tree;
            done(reply, ())
        }
        TeamCommand::Apply { origin, file, prune, dry_run, reply } => {
            let grants: Vec<Grant> = state.grants.iter().cloned().collect();
            let (changes, tree) = match plan(&state.tree, &grants, &file, prune, &families, &origin) {
                Ok(planned) => planned,
                Err(error) => {
                    let _ = reply.send(Err(BrokerError::InvalidQuota { problems: error.problems.join("; ") }));
                    return None;
                }
            };
            let lines: Vec<String> = changes.iter().map(ToString::to_string).collect();
            // Refuse, before writing anything, what would strand allocations.
            for change in &changes {
                if let Change::DeleteTeam(name) = change {
                    let in_use = team_in_use(state, name);
                    if in_use > 0 {
                        let _ = reply.send(Err(BrokerError::InvalidQuota {
                            problems: format!(
                                "{origin}: team \"{name}\" would be deleted but has {in_use} live or pending allocation(s)"
                            ),
                        }));
                        return None;
                    }
                }
                if let Change::AddGrant(grant) = change
                    && let Some(team) = &grant.team
                    && !tree.contains(team)
                {
                    let _ = reply.send(Err(BrokerError::InvalidQuota {
                        problems: format!("{origin}: grant {grant}: team \"{team}\" does not exist"),
                    }));
                    return None;
                }
            }
            if dry_run {
                return done(reply, lines);
            }
            let mut new_writes = Vec::new();
            let mut records = state.teams.clone();
            let mut new_grants = state.grants.clone();
            let mut failed = None;
            for change in &changes {
                let result = match change {
                    Change::CreateTeam(spec) | Change::UpdateTeam { after: spec, .. } => {
                        let created_at_ms = records.get(&spec.name).map_or(now, |record| record.created_at_ms);
                        let record = TeamRecord {
                            name: spec.name.clone(),
                            created_at_ms,
                            parent: spec.parent.clone(),
                            quota: spec.quota.clone(),
                        };
                        let written = put_team(&record, &mut new_writes);
                        records.insert(spec.name.clone(), record);
                        written
                    }
                    Change::DeleteTeam(name) => {
                        new_writes.push(Op::delete(layout::team(name.as_str())));
                        records.remove(name);
                        Ok(())
                    }
                    Change::SetGpuValues { after, .. } => encode(after).map(|bytes| {
                        new_writes.push(Op::put(layout::setting("gpu-values"), bytes));
                    }),
                    Change::AddGrant(grant) => {
                        new_grants.insert(grant.clone());
                        put_line(grant_line(grant), &mut new_writes)
                    }
                    Change::RemoveGrant(grant) => {
                        new_grants.remove(grant);
                        new_writes.push(Op::delete(line_key(&grant_line(grant))));
                        Ok(())
                    }
                };
                if let Err(error) = result {
                    failed = Some(error);
                    break;
                }
            }
            if let Some(error) = failed {
                let _ = reply.send(Err(error));
                return None;
            }
            writes.extend(new_writes);
            state.teams = records;
            state.grants = new_grants;
            state.tree = tree;
            state.round_wanted = !state.queue.is_empty();
            done(reply, lines)
        }
        TeamCommand::Grant { grant, reply } => {
            if let Some(team) = &grant.team
                && !state.teams.contains_key(team)
            {
                let _ = reply.send(Err(BrokerError::UnknownTeam { team: team.to_string() }));
                return None;
            }
            if let Err(error) = put_line(grant_line(&grant), writes) {
                let _ = reply.send(Err(error));
                return None;
            }
            state.grants.insert(grant);
            done(reply, ())
        }
        TeamCommand::Revoke { grant, reply } => {
            if !state.grants.contains(&grant) {
                let _ = reply.send(Err(BrokerError::NotFound { what: format!("grant {grant}") }));
                return None;
            }
            writes.push(Op::delete(line_key(&grant_line(&grant))));
            state.grants.remove(&grant);
            done(reply, ())
        }
        TeamCommand::RevokeTokens { hashes, reply } => {
            let mut revoked = Vec::new();
            for hash in hashes {
                if let Some(record) = state.tokens.remove(&hash) {
                    writes.push(Op::delete(layout::token(&hash)));
                    revoked.push((hash, record));
                }
            }
            done(reply, revoked)
        }
        TeamCommand::CreateToken { hash, subject, grant, expires_at_ms, reply } => {
            let record = TokenRecord { subject: subject.clone(), created_at_ms: now, expires_at_ms };
            let written = encode(&record).map(|bytes| writes.push(Op::put(layout::token(&hash), bytes)));
            if let Err(error) = written {
                let _ = reply.send(Err(error));
                return None;
            }
            if let Some(grant) = grant {
                if let Err(error) = put_line(grant_line(&grant), writes) {
                    let _ = reply.send(Err(error));
                    return None;
                }
                state.grants.insert(grant);
            }
            state.tokens.insert(hash, record);
            done(reply, ())
        }
        TeamCommand::Bootstrap { admin, reply } => {
            let mut changed = false;
            if !state.permissions_stored {
                for (role, object, action) in PERMISSIONS {
                    let line = vec!["p".to_owned(), (*role).to_owned(), (*object).to_owned(), (*action).to_owned()];
                    if let Err(error) = put_line(line, writes) {
                        let _ = reply.send(Err(error));
                        return None;
                    }
                }
                // Node daemons with a node certificate act under the grants of
                // `nodes` (see `Caller::Node`); a new cluster grants it the node role.
                let nodes = Grant { subject: "nodes".into(), role: allot_policy::Role::Node, team: None };
                if let Err(error) = put_line(grant_line(&nodes), writes) {
                    let _ = reply.send(Err(error));
                    return None;
                }
                state.grants.insert(nodes);
                state.permissions_stored = true;
                changed = true;
            }
            if let Some((hash, grant)) = admin
                && state.tokens.is_empty()
            {
                let record = TokenRecord { subject: grant.subject.clone(), created_at_ms: now, expires_at_ms: None };
                match encode(&record) {
                    Ok(bytes) => writes.push(Op::put(layout::token(&hash), bytes)),
                    Err(error) => {
                        let _ = reply.send(Err(error));
                        return None;
                    }
                }
                if let Err(error) = put_line(grant_line(&grant), writes) {
                    let _ = reply.send(Err(error));
                    return None;
                }
                state.tokens.insert(hash, record);
                state.grants.insert(grant);
                changed = true;
            }
            done(reply, changed)
        }
    }
}

/// Teams as the API shows them: a record with its children.
pub fn children_of(tree: &QuotaTree, name: &TeamName) -> Vec<String> {
    tree.children(name).iter().map(ToString::to_string).collect()
}

/// Amounts per class as people write them, for the wire.
pub fn user_amounts(amounts: &allot_policy::Resources) -> BTreeMap<String, f64> {
    amounts.0.iter().map(|(class, amount)| (class.to_string(), class.to_user(*amount))).collect()
}
