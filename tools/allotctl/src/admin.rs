//! Commands for platform and team admins: teams with quotas, fair share, the
//! queue, role grants, tokens and declarative teams files.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use allot_api::proto;
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::output::{Format, pretty, table};
use crate::{Clients, CtlError};

/// `class=amount` pairs as people write them: `gpu/h100=8`, `cpu=64`, `memory=512` (GiB).
#[derive(Debug, Clone, Default, Args)]
pub struct QuotaArgs {
    /// Relative weight in fair share (1 to 10000).
    #[arg(long)]
    pub weight: Option<u32>,
    /// Guaranteed amounts, like gpu/h100=8 (repeatable or comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub guaranteed: Vec<String>,
    /// Limits (classes not named are unlimited).
    #[arg(long, value_delimiter = ',')]
    pub limit: Vec<String>,
    /// At most this much of the idle guarantee is lent to others.
    #[arg(long, value_delimiter = ',')]
    pub lending_limit: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum TeamCommand {
    /// Create an organisation, team or project.
    Create {
        name: String,
        /// The organisation or team it belongs to.
        #[arg(long)]
        parent: Option<String>,
        #[command(flatten)]
        quota: QuotaArgs,
    },
    List,
    /// Delete a team without projects, allocations or queued requests.
    Delete {
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum QuotaCommand {
    /// Set a team's quota: the parts named replace what it had (weight, or the
    /// whole guaranteed, limit or lending-limit map).
    Set {
        team: String,
        #[command(flatten)]
        quota: QuotaArgs,
        /// Remove every limit.
        #[arg(long)]
        no_limit: bool,
    },
    Get {
        team: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Give a subject a role, in a team or (without --team) cluster-wide.
    Grant {
        subject: String,
        /// platform-admin, team-admin, member, viewer or node.
        role: String,
        #[arg(long)]
        team: Option<String>,
    },
    Revoke {
        subject: String,
        role: String,
        #[arg(long)]
        team: Option<String>,
    },
    List {
        #[arg(long)]
        team: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Waiting requests in the order they will be served, with why each waits.
    List {
        #[arg(long)]
        team: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// A bearer token for a subject, printed once (the broker keeps only its hash).
    Create {
        subject: String,
        /// Also grant this role.
        #[arg(long)]
        role: Option<String>,
        #[arg(long)]
        team: Option<String>,
        /// How long the token works: 90s, 30m, 12h, 7d (default: until revoked).
        #[arg(long, value_parser = parse_ttl)]
        ttl: Option<u64>,
    },
    /// Tokens by id, subject and expiry (never the tokens themselves).
    List {
        /// Only this subject's.
        #[arg(long)]
        subject: Option<String>,
    },
    /// Revokes a token by its id (or a prefix of 8 or more digits), or every
    /// token of a subject; refused by the broker from its answer on.
    Revoke {
        #[arg(required_unless_present = "subject", conflicts_with = "subject")]
        id: Option<String>,
        #[arg(long)]
        subject: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only entries of the last DURATION (90s, 30m, 12h, 7d).
    #[arg(long, value_parser = parse_ttl)]
    pub since: Option<u64>,
    /// Only this subject's calls.
    #[arg(long)]
    pub subject: Option<String>,
    /// Only calls concerning this team.
    #[arg(long)]
    pub team: Option<String>,
    /// At most this many, the newest.
    #[arg(long, default_value_t = 1000)]
    pub limit: u32,
}

pub async fn audit(clients: &Clients, args: AuditArgs, format: Format) -> Result<String, CtlError> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64);
    let since_ms = args.since.map_or(0, |seconds| now_ms.saturating_sub(seconds.saturating_mul(1000)));
    let entries = clients
        .admin()
        .list_audit(proto::ListAuditRequest {
            since_ms,
            subject: args.subject.unwrap_or_default(),
            team: args.team.unwrap_or_default(),
            limit: args.limit,
        })
        .await?
        .into_inner()
        .entries;
    Ok(match format {
        Format::Json => pretty(&json!(
            entries
                .iter()
                .map(|entry| json!({
                    "at_ms": entry.at_ms,
                    "subject": entry.subject,
                    "from": entry.from,
                    "call": entry.call,
                    "target": entry.target,
                    "team": (!entry.team.is_empty()).then_some(&entry.team),
                    "outcome": entry.outcome,
                    "allowed": entry.allowed,
                }))
                .collect::<Vec<_>>()
        )),
        Format::Table if entries.is_empty() => "no audit entries".to_owned(),
        Format::Table => {
            let mut out = format!(
                "{:<24}  {:<16}  {:<21}  {:<28}  {:<36}  {}\n",
                "TIME (UTC)", "SUBJECT", "FROM", "CALL", "TARGET", "OUTCOME"
            );
            for entry in &entries {
                out.push_str(&format!(
                    "{:<24}  {:<16}  {:<21}  {:<28}  {:<36}  {}\n",
                    utc(entry.at_ms),
                    entry.subject,
                    entry.from,
                    entry.call,
                    entry.target,
                    entry.outcome
                ));
            }
            out.trim_end().to_owned()
        }
    })
}

/// Milliseconds since the epoch as `2026-12-07T18:40:12.345Z`.
fn utc(ms: u64) -> String {
    let seconds = ms / 1000;
    let (days, rest) = (seconds / 86_400, seconds % 86_400);
    // Howard Hinnant's civil-from-days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60,
        ms % 1000
    )
}

/// A duration in seconds from `90s`, `30m`, `12h` or `7d`.
fn parse_ttl(text: &str) -> Result<u64, String> {
    let bad = || format!("{text:?}: give a number with a unit, like 90s, 30m, 12h or 7d");
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    match number.checked_mul(scale) {
        Some(0) | None => Err(bad()),
        Some(seconds) => Ok(seconds),
    }
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The teams file (TOML; see the README).
    #[arg(long, short = 'f')]
    pub file: PathBuf,
    /// Print the changes without making them.
    #[arg(long)]
    pub dry_run: bool,
    /// Also delete teams and grants the file does not name.
    #[arg(long)]
    pub prune: bool,
}

fn usage(message: String) -> CtlError {
    CtlError::Usage(message)
}

fn amounts(pairs: &[String], flag: &str) -> Result<HashMap<String, f64>, CtlError> {
    let mut map = HashMap::new();
    for pair in pairs {
        let (class, amount) = pair
            .split_once('=')
            .ok_or_else(|| usage(format!("--{flag} {pair:?}: write class=amount, like gpu/h100=8")))?;
        let amount: f64 =
            amount.trim().parse().map_err(|_| usage(format!("--{flag} {pair:?}: {amount:?} is not a number")))?;
        class.trim().parse::<allot_policy::ResourceClass>().map_err(|error| usage(format!("--{flag}: {error}")))?;
        map.insert(class.trim().to_owned(), amount);
    }
    Ok(map)
}

fn quota_from(args: &QuotaArgs, base: Option<proto::Quota>) -> Result<proto::Quota, CtlError> {
    let mut quota = base.unwrap_or(proto::Quota { weight: 1, ..Default::default() });
    if let Some(weight) = args.weight {
        quota.weight = weight;
    }
    if !args.guaranteed.is_empty() {
        quota.guaranteed = amounts(&args.guaranteed, "guaranteed")?;
    }
    if !args.limit.is_empty() {
        quota.limit = amounts(&args.limit, "limit")?;
    }
    if !args.lending_limit.is_empty() {
        quota.lending_limit = amounts(&args.lending_limit, "lending-limit")?;
    }
    Ok(quota)
}

fn describe(map: &HashMap<String, f64>) -> String {
    let mut pairs: Vec<String> = map.iter().map(|(class, amount)| format!("{class}={amount}")).collect();
    pairs.sort();
    if pairs.is_empty() { "-".into() } else { pairs.join(",") }
}

fn team_json(team: &proto::Team) -> Value {
    let quota = team.quota.clone().unwrap_or_default();
    json!({
        "name": team.name,
        "parent": (!team.parent.is_empty()).then_some(&team.parent),
        "weight": quota.weight,
        "guaranteed": quota.guaranteed,
        "limit": quota.limit,
        "lending_limit": quota.lending_limit,
        "children": team.children,
    })
}

fn teams_output(teams: &[proto::Team], format: Format) -> String {
    match format {
        Format::Json => pretty(&Value::Array(teams.iter().map(team_json).collect())),
        Format::Table => {
            let mut rows = vec![vec![
                "TEAM".into(),
                "PARENT".into(),
                "WEIGHT".into(),
                "GUARANTEED".into(),
                "LIMIT".into(),
                "LENDING LIMIT".into(),
            ]];
            for team in teams {
                let quota = team.quota.clone().unwrap_or_default();
                rows.push(vec![
                    team.name.clone(),
                    if team.parent.is_empty() { "-".into() } else { team.parent.clone() },
                    quota.weight.to_string(),
                    describe(&quota.guaranteed),
                    describe(&quota.limit),
                    describe(&quota.lending_limit),
                ]);
            }
            table(rows)
        }
    }
}

/// Reads a file, naming it when it cannot.
fn read(path: &Path) -> Result<String, CtlError> {
    std::fs::read_to_string(path).map_err(|error| usage(format!("cannot read {}: {error}", path.display())))
}

pub async fn team(clients: &Clients, command: TeamCommand, format: Format) -> Result<String, CtlError> {
    let mut admin = clients.admin();
    match command {
        TeamCommand::Create { name, parent, quota } => {
            let quota = quota_from(&quota, None)?;
            let team = admin
                .create_team(proto::CreateTeamRequest { name, parent: parent.unwrap_or_default(), quota: Some(quota) })
                .await?
                .into_inner();
            Ok(teams_output(&[team], format))
        }
        TeamCommand::List => {
            let teams = admin.list_teams(proto::ListTeamsRequest {}).await?.into_inner();
            Ok(teams_output(&teams.teams, format))
        }
        TeamCommand::Delete { name } => {
            admin.delete_team(proto::DeleteTeamRequest { name: name.clone() }).await?;
            Ok(match format {
                Format::Json => pretty(&json!({ "deleted": name })),
                Format::Table => format!("team {name} deleted"),
            })
        }
    }
}

pub async fn quota(clients: &Clients, command: QuotaCommand, format: Format) -> Result<String, CtlError> {
    let mut admin = clients.admin();
    match command {
        QuotaCommand::Set { team, quota, no_limit } => {
            let current = admin.get_quota(proto::GetQuotaRequest { team: team.clone() }).await?.into_inner();
            let mut quota = quota_from(&quota, current.quota)?;
            if no_limit {
                quota.limit.clear();
            }
            let team = admin.set_quota(proto::SetQuotaRequest { team, quota: Some(quota) }).await?.into_inner();
            Ok(teams_output(&[team], format))
        }
        QuotaCommand::Get { team } => {
            let team = admin.get_quota(proto::GetQuotaRequest { team }).await?.into_inner();
            Ok(teams_output(&[team], format))
        }
    }
}

pub async fn policy(clients: &Clients, command: PolicyCommand, format: Format) -> Result<String, CtlError> {
    let mut admin = clients.admin();
    let done = |verb: &str, subject: &str, role: &str, team: &Option<String>| match format {
        Format::Json => pretty(&json!({ verb: { "subject": subject, "role": role, "team": team } })),
        Format::Table => format!("{verb} {subject} {role} {}", team.as_deref().unwrap_or("*")),
    };
    match command {
        PolicyCommand::Grant { subject, role, team } => {
            admin
                .grant(proto::GrantRequest {
                    subject: subject.clone(),
                    role: role.clone(),
                    team: team.clone().unwrap_or_default(),
                })
                .await?;
            Ok(done("granted", &subject, &role, &team))
        }
        PolicyCommand::Revoke { subject, role, team } => {
            admin
                .revoke(proto::GrantRequest {
                    subject: subject.clone(),
                    role: role.clone(),
                    team: team.clone().unwrap_or_default(),
                })
                .await?;
            Ok(done("revoked", &subject, &role, &team))
        }
        PolicyCommand::List { team } => {
            let grants =
                admin.list_grants(proto::ListGrantsRequest { team: team.unwrap_or_default() }).await?.into_inner();
            Ok(match format {
                Format::Json => pretty(&Value::Array(
                    grants
                        .grants
                        .iter()
                        .map(|grant| json!({ "subject": grant.subject, "role": grant.role, "team": if grant.team.is_empty() { "*" } else { grant.team.as_str() } }))
                        .collect(),
                )),
                Format::Table => {
                    let mut rows = vec![vec!["SUBJECT".into(), "ROLE".into(), "TEAM".into()]];
                    for grant in &grants.grants {
                        let team = if grant.team.is_empty() { "*".into() } else { grant.team.clone() };
                        rows.push(vec![grant.subject.clone(), grant.role.clone(), team]);
                    }
                    table(rows)
                }
            })
        }
    }
}

pub async fn fairshare(clients: &Clients, format: Format) -> Result<String, CtlError> {
    let mut admin = clients.admin();
    let reply = admin.fair_share(proto::FairShareRequest {}).await?.into_inner();
    Ok(match format {
        Format::Json => pretty(&json!({
            "half_life_s": reply.half_life_s,
            "teams": reply.teams.iter().map(|team| json!({
                "team": team.team,
                "parent": (!team.parent.is_empty()).then_some(&team.parent),
                "weight": team.weight,
                "gpus_guaranteed": team.gpus_guaranteed,
                "gpus_used": team.gpus_used,
                "gpus_borrowed": team.gpus_borrowed,
                "cpus_used": team.cpus_used,
                "memory_gib_used": team.memory_gib_used,
                "dominant_share": team.dominant_share,
                "weighted_share": team.weighted_share,
                "past_share": team.past_share,
                "fair_share": team.fair_share,
                "queued": team.queued,
            })).collect::<Vec<_>>(),
        })),
        Format::Table => {
            let mut rows = vec![vec![
                "TEAM".into(),
                "WEIGHT".into(),
                "GUARANTEED".into(),
                "USED".into(),
                "BORROWED".into(),
                "DOMINANT SHARE".into(),
                "PAST SHARE".into(),
                "FAIR SHARE".into(),
                "QUEUED".into(),
            ]];
            for team in &reply.teams {
                let name =
                    if team.parent.is_empty() { team.team.clone() } else { format!("{}/{}", team.parent, team.team) };
                rows.push(vec![
                    name,
                    team.weight.to_string(),
                    format!("{:.3}", team.gpus_guaranteed),
                    format!("{:.3}", team.gpus_used),
                    format!("{:.3}", team.gpus_borrowed),
                    format!("{:.1}%", team.dominant_share * 100.0),
                    format!("{:.1}%", team.past_share * 100.0),
                    format!("{:.1}%", team.fair_share * 100.0),
                    team.queued.to_string(),
                ]);
            }
            format!("{}\n(GPU columns in GPUs; usage half-life {} s)", table(rows), reply.half_life_s)
        }
    })
}

pub async fn queue(clients: &Clients, command: QueueCommand, format: Format) -> Result<String, CtlError> {
    let QueueCommand::List { team } = command;
    let mut admin = clients.admin();
    let reply = admin.list_queue(proto::ListQueueRequest { team: team.unwrap_or_default() }).await?.into_inner();
    Ok(match format {
        Format::Json => pretty(&Value::Array(
            reply
                .allocations
                .iter()
                .map(|allocation| {
                    json!({
                        "id": allocation.id,
                        "team": allocation.spec.as_ref().map(|spec| spec.team.clone()),
                        "position": allocation.queue_position,
                        "reason": allocation.waiting_reason,
                        "created_at_ms": allocation.created_at_ms,
                    })
                })
                .collect(),
        )),
        Format::Table => {
            let mut rows = vec![vec!["POSITION".into(), "ID".into(), "TEAM".into(), "WHY IT WAITS".into()]];
            for allocation in &reply.allocations {
                rows.push(vec![
                    allocation.queue_position.to_string(),
                    allocation.id.clone(),
                    allocation.spec.as_ref().map(|spec| spec.team.clone()).unwrap_or_default(),
                    allocation.waiting_reason.clone(),
                ]);
            }
            table(rows)
        }
    })
}

pub async fn token(clients: &Clients, command: TokenCommand, format: Format) -> Result<String, CtlError> {
    let mut admin = clients.admin();
    let tokens = match command {
        TokenCommand::Create { subject, role, team, ttl } => {
            let reply = admin
                .create_token(proto::CreateTokenRequest {
                    subject,
                    role: role.unwrap_or_default(),
                    team: team.unwrap_or_default(),
                    ttl_seconds: ttl,
                })
                .await?
                .into_inner();
            return Ok(match format {
                Format::Json => pretty(&json!({
                    "subject": reply.subject,
                    "token": reply.token,
                    "id": reply.id,
                    "expires_at_ms": reply.expires_at_ms,
                })),
                Format::Table => reply.token,
            });
        }
        TokenCommand::List { subject } => {
            admin
                .list_tokens(proto::ListTokensRequest { subject: subject.unwrap_or_default() })
                .await?
                .into_inner()
                .tokens
        }
        TokenCommand::Revoke { id, subject } => {
            admin
                .revoke_token(proto::RevokeTokenRequest {
                    id: id.unwrap_or_default(),
                    subject: subject.unwrap_or_default(),
                })
                .await?
                .into_inner()
                .revoked
        }
    };
    Ok(match format {
        Format::Json => pretty(&json!(
            tokens
                .iter()
                .map(|token| json!({
                    "id": token.id,
                    "subject": token.subject,
                    "created_at_ms": token.created_at_ms,
                    "expires_at_ms": token.expires_at_ms,
                    "expired": token.expired,
                }))
                .collect::<Vec<_>>()
        )),
        Format::Table if tokens.is_empty() => "no tokens".to_owned(),
        Format::Table => {
            let mut out = format!("{:<16}  {:<24}  {}\n", "ID", "SUBJECT", "EXPIRES");
            for token in &tokens {
                let expires = match (token.expires_at_ms, token.expired) {
                    (None, _) => "never (until revoked)".to_owned(),
                    (Some(at), true) => format!("expired ({at} ms since the epoch)"),
                    (Some(at), false) => format!("{at} ms since the epoch"),
                };
                out.push_str(&format!("{:<16}  {:<24}  {expires}\n", token.id, token.subject));
            }
            out.trim_end().to_owned()
        }
    })
}

pub async fn apply(clients: &Clients, args: ApplyArgs, format: Format) -> Result<String, CtlError> {
    let text = read(&args.file)?;
    let origin = args.file.display().to_string();
    // Check the file here first: a typo is reported before the network, with its place.
    allot_policy::TeamsFile::parse(&origin, &text).map_err(|error| usage(error.to_string()))?;
    let mut admin = clients.admin();
    let reply = admin
        .apply(proto::ApplyRequest { origin, toml: text, dry_run: args.dry_run, prune: args.prune })
        .await?
        .into_inner();
    Ok(match format {
        Format::Json => pretty(&json!({ "applied": reply.applied, "changes": reply.changes })),
        Format::Table => {
            let verb = if reply.applied { "applied" } else { "would apply (dry run)" };
            if reply.changes.is_empty() {
                "no changes".to_owned()
            } else {
                format!("{}\n{verb}: {} change(s)", reply.changes.join("\n"), reply.changes.len())
            }
        }
    })
}

#[cfg(test)]
mod audit_tests {
    #[test]
    fn times_print_as_utc() {
        assert_eq!(super::utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(super::utc(1_796_668_812_345), "2026-12-07T18:40:12.345Z");
        assert_eq!(super::utc(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
