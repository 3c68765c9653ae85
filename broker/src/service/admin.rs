//! The admin gRPC service: teams, quotas, fair share, the queue, grants, teams
//! files and tokens. Thin: checks the caller, converts, asks the writer.

use std::collections::{BTreeMap, BTreeSet};

use allot_api::allocation::{AllocationState, TeamName};
use allot_api::proto;
use allot_api::topology::GpuHealth;
use allot_placement::NodeStatus;
use allot_policy::file::parse_amounts;
use allot_policy::{Grant, Quota, ResourceClass, TeamsFile};
use tonic::{Request, Response, Status};

use crate::error::BrokerError;
use crate::service::auth::{Caller, new_token, token_hash};
use crate::service::grpc::{Services, allocation_to_wire};
use crate::state::{ClusterState, TeamRecord};
use crate::writer::Command;
use crate::writer::teams::{TeamCommand, children_of, user_amounts};

fn invalid(field: &str, problem: impl ToString) -> Status {
    BrokerError::InvalidArgument { field: field.to_owned(), problem: problem.to_string() }.into()
}

fn team_name(field: &str, text: &str) -> Result<TeamName, Status> {
    text.parse().map_err(|error| invalid(field, error))
}

fn optional_team(field: &str, text: &str) -> Result<Option<TeamName>, Status> {
    if text.is_empty() { Ok(None) } else { team_name(field, text).map(Some) }
}

/// A quota from the wire, in base units, checked class by class.
fn quota_from_wire(quota: Option<proto::Quota>) -> Result<Quota, Status> {
    let Some(quota) = quota else { return Ok(Quota::default()) };
    let amounts = |map: std::collections::HashMap<String, f64>, what: &str| {
        let sorted: BTreeMap<String, f64> = map.into_iter().collect();
        parse_amounts(&sorted, what).map_err(|problems| invalid("quota", problems.join("; ")))
    };
    Ok(Quota {
        weight: if quota.weight == 0 { 1 } else { quota.weight },
        guaranteed: amounts(quota.guaranteed, "guaranteed")?,
        limit: amounts(quota.limit, "limit")?,
        lending_limit: amounts(quota.lending_limit, "lending_limit")?,
    })
}

fn team_to_wire(state: &ClusterState, record: &TeamRecord) -> proto::Team {
    proto::Team {
        name: record.name.to_string(),
        parent: record.parent.as_ref().map(ToString::to_string).unwrap_or_default(),
        quota: Some(proto::Quota {
            weight: record.quota.weight,
            guaranteed: user_amounts(&record.quota.guaranteed).into_iter().collect(),
            limit: user_amounts(&record.quota.limit).into_iter().collect(),
            lending_limit: user_amounts(&record.quota.lending_limit).into_iter().collect(),
        }),
        children: children_of(&state.tree, &record.name),
    }
}

fn grant_from_wire(request: &proto::GrantRequest) -> Result<Grant, Status> {
    let team = (!request.team.is_empty()).then_some(request.team.as_str());
    Grant::new(&request.subject, &request.role, team).map_err(|problem| invalid("grant", problem))
}

impl Services {
    /// The teams whose things the caller may see through `call`.
    pub fn readable_teams(&self, caller: &Caller, call: &str) -> Result<BTreeSet<TeamName>, Status> {
        let names: Vec<TeamName> = self.core.state().teams.keys().cloned().collect();
        let mut readable = BTreeSet::new();
        for name in names {
            if self.auth.allows(caller, call, Some(&name))? {
                readable.insert(name);
            }
        }
        Ok(readable)
    }

    async fn reload_policy(&self) -> Result<(), Status> {
        self.auth.reload().await.map_err(Status::from)
    }
}

/// GPU units of a class set: `gpu/any` plus every family.
fn gpu_total(amounts: &allot_policy::Resources) -> u64 {
    let families: u64 =
        amounts.0.iter().filter(|(class, _)| matches!(class, ResourceClass::GpuFamily(_))).map(|(_, a)| *a).sum();
    amounts.get(&ResourceClass::GpuAny).max(families)
}

#[tonic::async_trait]
impl proto::admin_service_server::AdminService for Services {
    async fn get_usage_history(
        &self,
        request: Request<proto::GetUsageHistoryRequest>,
    ) -> Result<Response<proto::GetUsageHistoryResponse>, Status> {
        const CALL: &str = "AdminService/GetUsageHistory";
        let caller = self.caller(&request)?;
        let request = request.into_inner();
        // Cluster-wide readers also see teams deleted since; others the teams they may read.
        let teams: Option<BTreeSet<String>> = match optional_team("team", &request.team)? {
            Some(team) => {
                self.auth.check(&caller, CALL, Some(&team))?;
                Some(BTreeSet::from([team.to_string()]))
            }
            None if self.auth.allows(&caller, CALL, None)? => None,
            None => {
                let readable = self.readable_teams(&caller, CALL)?;
                if readable.is_empty() {
                    self.auth.check(&caller, CALL, None)?;
                }
                Some(readable.iter().map(ToString::to_string).collect())
            }
        };
        let export = self.core.state().usage.export(request.since_ms, crate::writer::now_ms(), teams.as_ref());
        // A team neither known now nor in the history is a mistake worth saying.
        if !request.team.is_empty()
            && !self.core.state().teams.keys().any(|known| known.as_str() == request.team)
            && export.buckets.iter().all(|bucket| !bucket.teams.contains_key(&request.team))
        {
            return Err(BrokerError::UnknownTeam { team: request.team.clone() }.into());
        }
        let history_json = serde_json::to_string(&export)
            .map_err(|error| BrokerError::Internal(format!("cannot encode the usage history: {error}")))?;
        Ok(Response::new(proto::GetUsageHistoryResponse { history_json }))
    }

    async fn create_team(&self, request: Request<proto::CreateTeamRequest>) -> Result<Response<proto::Team>, Status> {
        let asked = self.asked(
            &request,
            "AdminService/CreateTeam",
            format!("team {}", request.get_ref().name),
            Some(request.get_ref().name.clone()),
        );
        self.audited(asked, async move {
            let caller = self.caller(&request)?;
            let request = request.into_inner();
            let name = team_name("name", &request.name)?;
            let parent = optional_team("parent", &request.parent)?;
            // Creating a team is changing its parent: the permission is held there
            // (a team-admin adds projects under their team; top-level teams are the
            // platform admins').
            self.auth.check_at(&caller, "AdminService/CreateTeam", parent.as_ref())?;
            let quota = quota_from_wire(request.quota)?;
            let record = self
                .core
                .ask(|reply| Command::Team(TeamCommand::Create { name: name.clone(), parent, quota, reply }))
                .await?;
            self.auth.refresh();
            Ok(Response::new(team_to_wire(&self.core.state(), &record)))
        })
        .await
    }

    async fn delete_team(
        &self,
        request: Request<proto::DeleteTeamRequest>,
    ) -> Result<Response<proto::DeleteTeamResponse>, Status> {
        let asked = self.asked(
            &request,
            "AdminService/DeleteTeam",
            format!("team {}", request.get_ref().name),
            Some(request.get_ref().name.clone()),
        );
        self.audited(asked, async move {
            let caller = self.caller(&request)?;
            let name = team_name("name", &request.into_inner().name)?;
            self.auth.check(&caller, "AdminService/DeleteTeam", Some(&name))?;
            self.core.ask(|reply| Command::Team(TeamCommand::Delete { name, reply })).await?;
            self.reload_policy().await?;
            Ok(Response::new(proto::DeleteTeamResponse {}))
        })
        .await
    }

    async fn list_teams(
        &self,
        request: Request<proto::ListTeamsRequest>,
    ) -> Result<Response<proto::ListTeamsResponse>, Status> {
        let caller = self.caller(&request)?;
        let readable = self.readable_teams(&caller, "AdminService/ListTeams")?;
        if readable.is_empty() {
            self.auth.check(&caller, "AdminService/ListTeams", None)?;
        }
        let state = self.core.state();
        let teams = state
            .teams
            .values()
            .filter(|record| readable.contains(&record.name))
            .map(|record| team_to_wire(&state, record))
            .collect();
        Ok(Response::new(proto::ListTeamsResponse { teams }))
    }

    async fn list_nodes(
        &self,
        request: Request<proto::ListNodesRequest>,
    ) -> Result<Response<proto::ListNodesResponse>, Status> {
        let caller = self.caller(&request)?;
        // Any role may see the nodes: a member of any team, or a cluster-wide role.
        let teams: Vec<TeamName> = self.core.state().teams.keys().cloned().collect();
        let mut allowed = self.auth.allows(&caller, "AdminService/ListNodes", None)?;
        for team in &teams {
            if allowed {
                break;
            }
            allowed = self.auth.allows(&caller, "AdminService/ListTeams", Some(team))?;
        }
        if !allowed {
            self.auth.check(&caller, "AdminService/ListNodes", None)?;
        }
        let state = self.core.state();
        let nodes = state
            .nodes()
            .iter()
            .map(|(name, entry)| {
                let inventory = &entry.record.inventory;
                let gpus_free = inventory.gpus.iter().filter(|gpu| !entry.usage.gpu_in_use(gpu.index)).count();
                let unhealthy =
                    inventory.gpus.iter().filter(|gpu| matches!(gpu.health, GpuHealth::Unhealthy { .. })).count();
                let mut models: Vec<&str> = inventory.gpus.iter().map(|gpu| gpu.model.as_str()).collect();
                models.sort_unstable();
                models.dedup();
                proto::NodeSummary {
                    name: name.to_string(),
                    status: match entry.status {
                        NodeStatus::Lost => proto::NodeStatus::Lost,
                        _ => proto::NodeStatus::Ready,
                    } as i32,
                    gpus: inventory.gpus.len() as u32,
                    gpus_free: gpus_free as u32,
                    gpu_model: models.join(", "),
                    cores: inventory.cpu.cores.len() as u32,
                    cores_free: inventory.cpu.cores.len().saturating_sub(entry.usage.cores_taken() as usize) as u32,
                    last_heartbeat_ms: entry.last_heartbeat_ms,
                    unhealthy_gpus: unhealthy as u32,
                    allocations: state.live_count(name) as u32,
                }
            })
            .collect();
        Ok(Response::new(proto::ListNodesResponse { nodes }))
    }

    async fn get_node(
        &self,
        request: Request<proto::GetNodeRequest>,
    ) -> Result<Response<proto::GetNodeResponse>, Status> {
        let caller = self.caller(&request)?;
        self.auth.check(&caller, "AdminService/GetNode", None)?;
        let name: allot_api::allocation::NodeName =
            request.into_inner().name.parse().map_err(|error| invalid("name", error))?;
        let state = self.core.state();
        let Some(entry) = state.nodes().get(&name) else {
            return Err(BrokerError::NotFound { what: format!("node {name}") }.into());
        };
        let status = match entry.status {
            NodeStatus::Lost => proto::NodeStatus::Lost,
            _ => proto::NodeStatus::Ready,
        };
        Ok(Response::new(proto::GetNodeResponse {
            status: status as i32,
            inventory: Some(proto::NodeInventory::from(&entry.record.inventory)),
        }))
    }

    async fn set_quota(&self, request: Request<proto::SetQuotaRequest>) -> Result<Response<proto::Team>, Status> {
        let asked = self.asked(
            &request,
            "AdminService/SetQuota",
            format!("quota of team {}", request.get_ref().team),
            Some(request.get_ref().team.clone()),
        );
        self.audited(asked, async move {
            let caller = self.caller(&request)?;
            let request = request.into_inner();
            let name = team_name("team", &request.team)?;
            self.auth.check(&caller, "AdminService/SetQuota", Some(&name))?;
            let quota = quota_from_wire(request.quota)?;
            let record = self.core.ask(|reply| Command::Team(TeamCommand::SetQuota { name, quota, reply })).await?;
            Ok(Response::new(team_to_wire(&self.core.state(), &record)))
        })
        .await
    }

    async fn get_quota(&self, request: Request<proto::GetQuotaRequest>) -> Result<Response<proto::Team>, Status> {
        let caller = self.caller(&request)?;
        let name = team_name("team", &request.into_inner().team)?;
        self.auth.check(&caller, "AdminService/GetQuota", Some(&name))?;
        let state = self.core.state();
        let record = state.teams.get(&name).ok_or_else(|| BrokerError::UnknownTeam { team: name.to_string() })?;
        Ok(Response::new(team_to_wire(&state, record)))
    }

    async fn fair_share(
        &self,
        request: Request<proto::FairShareRequest>,
    ) -> Result<Response<proto::FairShareResponse>, Status> {
        let caller = self.caller(&request)?;
        let readable = self.readable_teams(&caller, "AdminService/FairShare")?;
        if readable.is_empty() {
            self.auth.check(&caller, "AdminService/FairShare", None)?;
        }
        let half_life = self.core.policy.half_life;
        let state = self.core.state();
        let standings = allot_policy::fairshare::standings(
            &state.tree,
            &state.team_usage,
            &state.history,
            &state.capacity,
            !half_life.is_zero(),
        );
        let ledger = crate::rounds::sharing::ledger(&state);
        let capacity = allot_policy::Dimensions::of(&state.capacity, &state.tree);
        let mut teams = Vec::new();
        for spec in state.tree.teams().filter(|spec| readable.contains(&spec.name)) {
            let Some(standing) = standings.get(&spec.name) else { continue };
            let used = ledger.subtree_usage(&spec.name);
            let guaranteed = gpu_total(&spec.quota.guaranteed);
            let used_gpu = gpu_total(&used);
            let leaves = state.tree.leaves_under(&spec.name);
            let queued = state
                .queue
                .iter()
                .filter_map(|id| state.allocations.get(id))
                .filter(|allocation| leaves.contains(&allocation.request.team))
                .count();
            teams.push(proto::TeamStanding {
                team: spec.name.to_string(),
                parent: spec.parent.as_ref().map(ToString::to_string).unwrap_or_default(),
                weight: spec.quota.weight,
                gpus_guaranteed: guaranteed as f64 / 1000.0,
                gpus_used: used_gpu as f64 / 1000.0,
                gpus_borrowed: used_gpu.saturating_sub(guaranteed) as f64 / 1000.0,
                cpus_used: used.get(&ResourceClass::Cpu) as f64 / 1000.0,
                memory_gib_used: used.get(&ResourceClass::Memory) as f64 / 1024.0,
                dominant_share: standing.dominant_share,
                weighted_share: standing.weighted_share,
                fair_share: standing.fair_share,
                queued: queued as u32,
                past_share: standing.past.dominant_share(capacity),
            });
        }
        Ok(Response::new(proto::FairShareResponse { teams, half_life_s: half_life.as_secs() }))
    }

    async fn list_queue(
        &self,
        request: Request<proto::ListQueueRequest>,
    ) -> Result<Response<proto::ListAllocationsResponse>, Status> {
        let caller = self.caller(&request)?;
        let team = optional_team("team", &request.into_inner().team)?;
        if let Some(team) = &team {
            self.auth.check(&caller, "AdminService/ListQueue", Some(team))?;
        }
        let readable = self.readable_teams(&caller, "AdminService/ListQueue")?;
        if readable.is_empty() {
            self.auth.check(&caller, "AdminService/ListQueue", None)?;
        }
        let state = self.core.state();
        let mut waiting: Vec<_> = state
            .queue
            .iter()
            .filter_map(|id| state.allocations.get(id))
            .filter(|allocation| !state.unpersisted.contains(&allocation.id))
            .filter(|allocation| allocation.state == AllocationState::Pending)
            .filter(|allocation| readable.contains(&allocation.request.team))
            .filter(|allocation| team.as_ref().is_none_or(|team| &allocation.request.team == team))
            .map(|allocation| allocation_to_wire(&state, allocation))
            .collect();
        waiting.sort_by_key(|allocation| (allocation.queue_position == 0, allocation.queue_position));
        Ok(Response::new(proto::ListAllocationsResponse { allocations: waiting }))
    }

    async fn grant(&self, request: Request<proto::GrantRequest>) -> Result<Response<proto::GrantResponse>, Status> {
        let asked = self.asked(
            &request,
            "AdminService/Grant",
            format!("role {} to {}", request.get_ref().role, request.get_ref().subject),
            Some(request.get_ref().team.clone()),
        );
        self.audited(asked, async move {
            let caller = self.caller(&request)?;
            let grant = grant_from_wire(request.get_ref())?;
            self.auth.check(&caller, "AdminService/Grant", grant.team.as_ref())?;
            if grant.team.is_none() {
                // Cluster-wide roles are a platform admin's to give.
                self.auth.check(&caller, "AdminService/Apply", None)?;
            }
            self.core.ask(|reply| Command::Team(TeamCommand::Grant { grant, reply })).await?;
            self.reload_policy().await?;
            Ok(Response::new(proto::GrantResponse {}))
        })
        .await
    }

    async fn revoke(&self, request: Request<proto::GrantRequest>) -> Result<Response<proto::GrantResponse>, Status> {
        let asked = self.asked(
            &request,
            "AdminService/Revoke",
            format!("role {} of {}", request.get_ref().role, request.get_ref().subject),
            Some(request.get_ref().team.clone()),
        );
        self.audited(asked, async move {
            let caller = self.caller(&request)?;
            let grant = grant_from_wire(request.get_ref())?;
            self.auth.check(&caller, "AdminService/Revoke", grant.team.as_ref())?;
            if grant.team.is_none() {
                self.auth.check(&caller, "AdminService/Apply", None)?;
            }
            self.core.ask(|reply| Command::Team(TeamCommand::Revoke { grant, reply })).await?;
            self.reload_policy().await?;
            Ok(Response::new(proto::GrantResponse {}))
        })
        .await
    }

    async fn list_grants(
        &self,
        request: Request<proto::ListGrantsRequest>,
    ) -> Result<Response<proto::ListGrantsResponse>, Status> {
        let caller = self.caller(&request)?;
        let team = optional_team("team", &request.into_inner().team)?;
        self.auth.check(&caller, "AdminService/ListGrants", team.as_ref())?;
        let readable = self.readable_teams(&caller, "AdminService/ListGrants")?;
        let cluster = self.auth.allows(&caller, "AdminService/ListGrants", None)?;
        let state = self.core.state();
        let grants = state
            .grants
            .iter()
            .filter(|grant| team.is_none() || grant.team == team)
            .filter(|grant| match &grant.team {
                Some(team) => readable.contains(team),
                None => cluster,
            })
            .map(|grant| proto::RoleGrant {
                subject: grant.subject.clone(),
                role: grant.role.to_string(),
                team: grant.team.as_ref().map(ToString::to_string).unwrap_or_default(),
            })
            .collect();
        Ok(Response::new(proto::ListGrantsResponse { grants }))
    }

    async fn apply(&self, request: Request<proto::ApplyRequest>) -> Result<Response<proto::ApplyResponse>, Status> {
        let asked = self.asked(
            &request,
            "AdminService/Apply",
            format!(
                "teams file {}{}",
                request.get_ref().origin,
                if request.get_ref().dry_run { " (dry run)" } else { "" }
            ),
            None,
        );
        self.audited(asked, async move {
            self.authorize(&request, "AdminService/Apply", None)?;
            let request = request.into_inner();
            let origin = if request.origin.is_empty() { "teams file".to_owned() } else { request.origin.clone() };
            let file = TeamsFile::parse(&origin, &request.toml)
                .map_err(|error| BrokerError::InvalidQuota { problems: error.problems.join("; ") })?;
            let dry_run = request.dry_run;
            let changes = self
                .core
                .ask(|reply| Command::Team(TeamCommand::Apply { origin, file, prune: request.prune, dry_run, reply }))
                .await?;
            if !dry_run {
                self.reload_policy().await?;
            }
            Ok(Response::new(proto::ApplyResponse { changes, applied: !dry_run }))
        })
        .await
    }

    async fn create_token(
        &self,
        request: Request<proto::CreateTokenRequest>,
    ) -> Result<Response<proto::CreateTokenResponse>, Status> {
        let asked =
            self.asked(&request, "AdminService/CreateToken", format!("token for {}", request.get_ref().subject), None);
        self.audited(asked, async move {
            self.authorize(&request, "AdminService/CreateToken", None)?;
            let request = request.into_inner();
            allot_policy::authz::check_subject(&request.subject).map_err(|problem| invalid("subject", problem))?;
            let grant = if request.role.is_empty() {
                None
            } else {
                let team = (!request.team.is_empty()).then_some(request.team.as_str());
                let grant =
                    Grant::new(&request.subject, &request.role, team).map_err(|problem| invalid("role", problem))?;
                if let Some(team) = &grant.team
                    && !self.core.state().teams.contains_key(team)
                {
                    return Err(BrokerError::UnknownTeam { team: team.to_string() }.into());
                }
                Some(grant)
            };
            // At most ten years: longer is "until revoked", which is what no TTL says.
            let expires_at_ms = match request.ttl_seconds.filter(|ttl| *ttl > 0) {
                Some(ttl) if ttl > 10 * 365 * 86_400 => {
                    return Err(invalid(
                        "ttl_seconds",
                        format!("{ttl} s is more than ten years; leave it out for a token that lasts until revoked"),
                    ));
                }
                Some(ttl) => Some(crate::writer::now_ms().saturating_add(ttl * 1000)),
                None => None,
            };
            let token = new_token()?;
            let hash = token_hash(&token);
            let id = crate::state::token_id(&hash).to_owned();
            let subject = request.subject.clone();
            self.core
                .ask(|reply| Command::Team(TeamCommand::CreateToken { hash, subject, grant, expires_at_ms, reply }))
                .await?;
            self.reload_policy().await?;
            Ok(Response::new(proto::CreateTokenResponse { token, subject: request.subject, id, expires_at_ms }))
        })
        .await
    }

    async fn list_audit(
        &self,
        request: Request<proto::ListAuditRequest>,
    ) -> Result<Response<proto::ListAuditResponse>, Status> {
        self.authorize(&request, "AdminService/ListAudit", None)?;
        let request = request.into_inner();
        let limit = if request.limit == 0 { 1000 } else { request.limit as usize };
        let state = self.core.state();
        let mut entries: Vec<proto::AuditEntry> = state
            .audit
            .entries
            .iter()
            .rev()
            .filter(|entry| entry.at_ms >= request.since_ms)
            .filter(|entry| request.subject.is_empty() || entry.subject == request.subject)
            .filter(|entry| request.team.is_empty() || entry.team.as_deref() == Some(request.team.as_str()))
            .take(limit)
            .map(|entry| proto::AuditEntry {
                at_ms: entry.at_ms,
                subject: entry.subject.clone(),
                from: entry.from.clone(),
                call: entry.call.clone(),
                target: entry.target.clone(),
                team: entry.team.clone().unwrap_or_default(),
                outcome: entry.outcome.clone(),
                allowed: entry.allowed(),
            })
            .collect();
        entries.reverse();
        Ok(Response::new(proto::ListAuditResponse { entries }))
    }

    async fn list_tokens(
        &self,
        request: Request<proto::ListTokensRequest>,
    ) -> Result<Response<proto::ListTokensResponse>, Status> {
        self.authorize(&request, "AdminService/ListTokens", None)?;
        let subject = request.into_inner().subject;
        let now = crate::writer::now_ms();
        let state = self.core.state();
        let mut tokens: Vec<proto::TokenInfo> = state
            .tokens
            .iter()
            .filter(|(_, record)| subject.is_empty() || record.subject == subject)
            .map(|(hash, record)| token_info(hash, record, now))
            .collect();
        tokens.sort_by(|a, b| (&a.subject, a.created_at_ms, &a.id).cmp(&(&b.subject, b.created_at_ms, &b.id)));
        Ok(Response::new(proto::ListTokensResponse { tokens }))
    }

    async fn revoke_token(
        &self,
        request: Request<proto::RevokeTokenRequest>,
    ) -> Result<Response<proto::RevokeTokenResponse>, Status> {
        let asked = self.asked(
            &request,
            "AdminService/RevokeToken",
            format!("token {}{}", request.get_ref().id, request.get_ref().subject),
            None,
        );
        self.audited(asked, async move {
            self.authorize(&request, "AdminService/RevokeToken", None)?;
            let request = request.into_inner();
            let hashes: Vec<String> = {
                let state = self.core.state();
                match (request.id.as_str(), request.subject.as_str()) {
                    (id, "") if id.len() >= 8 && id.chars().all(|c| c.is_ascii_hexdigit()) => {
                        let id = id.to_ascii_lowercase();
                        let found: Vec<String> =
                            state.tokens.keys().filter(|hash| hash.starts_with(&id)).cloned().collect();
                        match found.len() {
                            0 => {
                                return Err(BrokerError::NotFound {
                                    what: format!("a token with id {id} (see allotctl token list)"),
                                }
                                .into());
                            }
                            1 => found,
                            many => {
                                return Err(invalid(
                                    "id",
                                    format!("{id} names {many} tokens; give more of its digits"),
                                ));
                            }
                        }
                    }
                    ("", subject) if !subject.is_empty() => state
                        .tokens
                        .iter()
                        .filter(|(_, record)| record.subject == subject)
                        .map(|(hash, _)| hash.clone())
                        .collect(),
                    _ => {
                        return Err(invalid(
                            "id",
                            "give a token id (at least 8 hex digits, from allotctl token list) or a subject, not both",
                        ));
                    }
                }
            };
            let revoked = self.core.ask(|reply| Command::Team(TeamCommand::RevokeTokens { hashes, reply })).await?;
            // Refused from now on: the view the next call is checked against.
            self.auth.refresh();
            let now = crate::writer::now_ms();
            Ok(Response::new(proto::RevokeTokenResponse {
                revoked: revoked.iter().map(|(hash, record)| token_info(hash, record, now)).collect(),
            }))
        })
        .await
    }
}

fn token_info(hash: &str, record: &crate::state::TokenRecord, now: u64) -> proto::TokenInfo {
    proto::TokenInfo {
        id: crate::state::token_id(hash).to_owned(),
        subject: record.subject.clone(),
        created_at_ms: record.created_at_ms,
        expires_at_ms: record.expires_at_ms,
        expired: record.expired(now),
    }
}
