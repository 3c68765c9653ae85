//! Every call the broker serves, against every role: a platform admin, a
//! team-admin, a member and a viewer of team `a`, a node daemon, and a caller
//! without a token. Each call is made for real over gRPC (or HTTP) with that
//! role's token; the test checks it got through authorization or was refused
//! with the right status, and that every rule in `allot_policy::authz::RULES`
//! was exercised.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use allot_api::bearer::Bearer;
use allot_api::proto;
use allot_api::proto::admin_service_client::AdminServiceClient;
use allot_api::proto::allocation_service_client::AllocationServiceClient;
use allot_api::proto::node_service_client::NodeServiceClient;
use allot_tests::{
    Broker, StoreKind, allotctl, allotctl_as, allotctl_json, node_statuses, start_broker_with, start_node, token_for,
    wait_until,
};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Role {
    Admin,
    TeamAdmin,
    Member,
    Viewer,
    Node,
    Anonymous,
}

const ROLES: [Role; 6] = [Role::Admin, Role::TeamAdmin, Role::Member, Role::Viewer, Role::Node, Role::Anonymous];

/// What authorization did with a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// It got past authorization (it may still fail for other reasons, like NOT_FOUND).
    Passed,
    Denied,
    Unauthenticated,
}

use Outcome::{Denied, Passed, Unauthenticated};

fn outcome<T>(result: Result<T, tonic::Status>) -> Outcome {
    match result {
        Ok(_) => Passed,
        Err(status) if status.code() == tonic::Code::PermissionDenied => Denied,
        Err(status) if status.code() == tonic::Code::Unauthenticated => Unauthenticated,
        Err(_) => Passed,
    }
}

type Intercepted = InterceptedService<Channel, Bearer>;

struct Clients {
    node: NodeServiceClient<Intercepted>,
    allocations: AllocationServiceClient<Intercepted>,
    admin: AdminServiceClient<Intercepted>,
    token: String,
}

struct World {
    broker: Broker,
    dir: tempfile::TempDir,
    tokens: BTreeMap<Role, Option<PathBuf>>,
    _node: allot_tests::Process,
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = StoreKind::Embedded(dir.path().join("state"));
        let broker = start_broker_with(&store, dir.path(), "broker", "5s", "127.0.0.1:0", &[]);
        let node = start_node(&broker, "dgx-h100", "node-a", dir.path());
        wait_until("the node is ready", Duration::from_secs(30), || {
            node_statuses(&broker).iter().any(|(_, status)| status == "ready")
        });
        for team in ["a", "b"] {
            allotctl_json(&broker, &["team", "create", team]);
        }
        // Team a is an organisation: work runs in its project a-work; a-project and
        // a-projects are for its team-admin to shape and delete.
        for project in ["a-work", "a-project", "a-projects"] {
            allotctl_json(&broker, &["team", "create", project, "--parent", "a"]);
        }
        let mut tokens = BTreeMap::new();
        tokens.insert(Role::Admin, Some(broker.admin_token.clone()));
        tokens.insert(Role::TeamAdmin, Some(token_for(&broker, dir.path(), "tina", "team-admin", Some("a"))));
        tokens.insert(Role::Member, Some(token_for(&broker, dir.path(), "mia", "member", Some("a"))));
        tokens.insert(Role::Viewer, Some(token_for(&broker, dir.path(), "vic", "viewer", Some("a"))));
        tokens.insert(Role::Node, Some(broker.node_token.clone()));
        tokens.insert(Role::Anonymous, None);
        World { broker, dir, tokens, _node: node }
    }

    async fn clients(&self, role: Role) -> Clients {
        let path = &self.tokens[&role];
        let bearer = match path {
            Some(path) => Bearer::from_file(path).expect("token"),
            None => Bearer::default(),
        };
        let token = path.as_ref().map(|path| std::fs::read_to_string(path).expect("token")).unwrap_or_default();
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", self.broker.grpc))
            .expect("uri")
            .connect()
            .await
            .expect("connect");
        Clients {
            node: NodeServiceClient::with_interceptor(channel.clone(), bearer.clone()),
            allocations: AllocationServiceClient::with_interceptor(channel.clone(), bearer.clone()),
            admin: AdminServiceClient::with_interceptor(channel, bearer),
            token: token.trim().to_owned(),
        }
    }

    /// A fresh one-GPU allocation of `team` (`a` means its project a-work), made by the admin.
    fn allocation(&self, team: &str) -> String {
        let team = if team == "a" { "a-work" } else { team };
        let created = allotctl_json(&self.broker, &["alloc", "create", "--team", team, "--gpus", "1"]);
        created["id"].as_str().expect("id").to_owned()
    }

    fn token_path(&self, role: Role) -> Option<&Path> {
        self.tokens[&role].as_deref()
    }
}

fn spec(team: &str) -> proto::AllocationSpec {
    proto::AllocationSpec {
        team: team.into(),
        gpus: Some(proto::allocation_spec::Gpus::Whole(proto::WholeGpus { count: 1, models: vec![] })),
        ..Default::default()
    }
}

/// One HTTP GET; the status code.
async fn http_get(address: &str, path: &str, token: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.expect("connect");
    let auth = if token.is_empty() { String::new() } else { format!("Authorization: Bearer {token}\r\n") };
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\n{auth}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut text = String::new();
    stream.read_to_string(&mut text).await.expect("read");
    text.split_whitespace().nth(1).and_then(|code| code.parse().ok()).expect("status line")
}

fn http_outcome(code: u16) -> Outcome {
    match code {
        401 => Unauthenticated,
        403 => Denied,
        _ => Passed,
    }
}

/// Runs one call as one role. `call` names the rule it exercises; the second
/// part of the name says which team's thing it touches.
async fn run(world: &World, role: Role, call: &str) -> Outcome {
    let mut clients = world.clients(role).await;
    let unique = format!("{:?}", role).to_lowercase();
    match call {
        "NodeService/Register" => outcome(
            clients.node.register(proto::RegisterNodeRequest { node_name: "ghost".into(), ..Default::default() }).await,
        ),
        "NodeService/Heartbeat" => outcome(
            clients.node.heartbeat(proto::HeartbeatRequest { node_name: "node-a".into(), ..Default::default() }).await,
        ),
        "NodeService/WatchAssignments" => {
            outcome(clients.node.watch_assignments(proto::WatchAssignmentsRequest { node_name: "ghost".into() }).await)
        }
        "NodeService/ReportApplied" => outcome(
            clients
                .node
                .report_applied(proto::ReportAppliedRequest { allocation_id: "bad".into(), ..Default::default() })
                .await,
        ),
        "AllocationService/Create a" | "AllocationService/Create b" => {
            let team = if call.ends_with(" a") { "a-work" } else { "b" };
            let request = proto::CreateAllocationRequest { spec: Some(spec(team)), dry_run: true, no_wait: true };
            outcome(clients.allocations.create(request).await)
        }
        "AllocationService/Get a" | "AllocationService/Get b" => {
            let id = world.allocation(if call.ends_with(" a") { "a" } else { "b" });
            let result = clients.allocations.get(proto::AllocationRef { id: id.clone() }).await;
            let _ = allotctl(&world.broker, &["alloc", "release", &id]);
            outcome(result)
        }
        "AllocationService/Explain a" => {
            let id = world.allocation("a");
            let result = clients.allocations.explain(proto::AllocationRef { id: id.clone() }).await;
            let _ = allotctl(&world.broker, &["alloc", "release", &id]);
            outcome(result)
        }
        "AllocationService/Release a" | "AllocationService/Release b" => {
            let id = world.allocation(if call.ends_with(" a") { "a" } else { "b" });
            let result = clients.allocations.release(proto::AllocationRef { id: id.clone() }).await;
            // Keep the node free for the next calls.
            let _ = allotctl(&world.broker, &["alloc", "release", &id]);
            outcome(result)
        }
        "AllocationService/List a" => outcome(
            clients.allocations.list(proto::ListAllocationsRequest { team: "a".into(), ..Default::default() }).await,
        ),
        "AllocationService/FindByDevice a" => {
            let id = world.allocation("a");
            let got = allotctl_json(&world.broker, &["alloc", "get", &id]);
            let uuid = got["gpus"][0]["uuid"].as_str().expect("uuid").to_owned();
            let request = proto::FindByDeviceRequest { node: "node-a".into(), device_uuid: uuid };
            let result = clients.allocations.find_by_device(request).await;
            let _ = allotctl(&world.broker, &["alloc", "release", &id]);
            outcome(result)
        }
        "AdminService/CreateTeam top" => outcome(
            clients
                .admin
                .create_team(proto::CreateTeamRequest { name: format!("top-{unique}"), ..Default::default() })
                .await,
        ),
        "AdminService/CreateTeam a" => outcome(
            clients
                .admin
                .create_team(proto::CreateTeamRequest {
                    name: format!("a-new-{unique}"),
                    parent: "a".into(),
                    ..Default::default()
                })
                .await,
        ),
        "AdminService/DeleteTeam a" => {
            // A project of its own under a, which the admin makes first.
            let name = format!("a-doomed-{unique}");
            allotctl_json(&world.broker, &["team", "create", &name, "--parent", "a-projects"]);
            outcome(clients.admin.delete_team(proto::DeleteTeamRequest { name }).await)
        }
        "AdminService/ListTeams" => outcome(clients.admin.list_teams(proto::ListTeamsRequest {}).await),
        "AdminService/ListNodes" => outcome(clients.admin.list_nodes(proto::ListNodesRequest {}).await),
        "AdminService/GetNode" => {
            outcome(clients.admin.get_node(proto::GetNodeRequest { name: "node-a".into() }).await)
        }
        "AdminService/SetQuota a" | "AdminService/SetQuota b" => {
            // Quotas of a project under a (a team-admin's to shape), or of team b.
            let team = if call.ends_with(" a") { "a-project" } else { "b" };
            let quota = proto::Quota { weight: 2, ..Default::default() };
            outcome(clients.admin.set_quota(proto::SetQuotaRequest { team: team.into(), quota: Some(quota) }).await)
        }
        "AdminService/GetQuota a" | "AdminService/GetQuota b" => {
            let team = if call.ends_with(" a") { "a" } else { "b" };
            outcome(clients.admin.get_quota(proto::GetQuotaRequest { team: team.into() }).await)
        }
        "AdminService/FairShare" => outcome(clients.admin.fair_share(proto::FairShareRequest {}).await),
        "AdminService/ListQueue a" => {
            outcome(clients.admin.list_queue(proto::ListQueueRequest { team: "a".into() }).await)
        }
        "AdminService/Grant a" | "AdminService/Revoke a" => {
            let grant =
                proto::GrantRequest { subject: format!("guest-{unique}"), role: "viewer".into(), team: "a".into() };
            if call.starts_with("AdminService/Grant") {
                outcome(clients.admin.grant(grant).await)
            } else {
                // The admin grants first so there is something to revoke.
                let _ = allotctl(&world.broker, &["policy", "grant", &grant.subject, "viewer", "--team", "a"]);
                outcome(clients.admin.revoke(grant).await)
            }
        }
        "AdminService/ListGrants a" => {
            outcome(clients.admin.list_grants(proto::ListGrantsRequest { team: "a".into() }).await)
        }
        "AdminService/Apply" => outcome(
            clients
                .admin
                .apply(proto::ApplyRequest { toml: "[teams.a]\n".into(), dry_run: true, ..Default::default() })
                .await,
        ),
        "AdminService/CreateToken" => outcome(
            clients
                .admin
                .create_token(proto::CreateTokenRequest { subject: format!("svc-{unique}"), ..Default::default() })
                .await,
        ),
        "AdminService/ListTokens" => outcome(clients.admin.list_tokens(proto::ListTokensRequest::default()).await),
        "AdminService/ListAudit" => outcome(clients.admin.list_audit(proto::ListAuditRequest::default()).await),
        "AdminService/RevokeToken" => outcome(
            clients
                .admin
                .revoke_token(proto::RevokeTokenRequest { subject: format!("svc-none-{unique}"), ..Default::default() })
                .await,
        ),
        "AdminService/GetUsageHistory" | "AdminService/GetUsageHistory a" | "AdminService/GetUsageHistory b" => {
            let team = call.strip_prefix("AdminService/GetUsageHistory").unwrap_or_default().trim();
            let request = proto::GetUsageHistoryRequest { since_ms: 0, team: team.into() };
            outcome(clients.admin.get_usage_history(request).await)
        }
        "GET /metrics" => http_outcome(http_get(&world.broker.http, "/metrics", &clients.token).await),
        "GET /healthz" => http_outcome(http_get(&world.broker.http, "/healthz", &clients.token).await),
        "GET /readyz" => http_outcome(http_get(&world.broker.http, "/readyz", &clients.token).await),
        other => panic!("no case for {other}"),
    }
}

/// The expected outcome, per role in the order of `ROLES`:
/// admin, team-admin of a, member of a, viewer of a, node, anonymous.
fn expected() -> Vec<(&'static str, [Outcome; 6])> {
    const P: Outcome = Passed;
    const D: Outcome = Denied;
    const U: Outcome = Unauthenticated;
    vec![
        ("NodeService/Register", [P, D, D, D, P, U]),
        ("NodeService/Heartbeat", [P, D, D, D, P, U]),
        ("NodeService/WatchAssignments", [P, D, D, D, P, U]),
        ("NodeService/ReportApplied", [P, D, D, D, P, U]),
        ("AllocationService/Create a", [P, P, P, D, D, U]),
        ("AllocationService/Create b", [P, D, D, D, D, U]),
        ("AllocationService/Get a", [P, P, P, P, P, U]),
        ("AllocationService/Get b", [P, D, D, D, P, U]),
        ("AllocationService/Explain a", [P, P, P, P, P, U]),
        ("AllocationService/List a", [P, P, P, P, P, U]),
        ("AllocationService/Release a", [P, P, P, D, D, U]),
        ("AllocationService/Release b", [P, D, D, D, D, U]),
        ("AllocationService/FindByDevice a", [P, P, P, P, P, U]),
        ("AdminService/CreateTeam top", [P, D, D, D, D, U]),
        ("AdminService/CreateTeam a", [P, P, D, D, D, U]),
        ("AdminService/DeleteTeam a", [P, P, D, D, D, U]),
        ("AdminService/ListTeams", [P, P, P, P, D, U]),
        ("AdminService/ListNodes", [P, P, P, P, P, U]),
        ("AdminService/GetNode", [P, D, D, D, P, U]),
        ("AdminService/SetQuota a", [P, P, D, D, D, U]),
        ("AdminService/SetQuota b", [P, D, D, D, D, U]),
        ("AdminService/GetQuota a", [P, P, P, P, D, U]),
        ("AdminService/GetQuota b", [P, D, D, D, D, U]),
        ("AdminService/FairShare", [P, P, P, P, D, U]),
        ("AdminService/ListQueue a", [P, P, P, P, P, U]),
        ("AdminService/Grant a", [P, P, D, D, D, U]),
        ("AdminService/Revoke a", [P, P, D, D, D, U]),
        ("AdminService/ListGrants a", [P, P, D, D, D, U]),
        ("AdminService/Apply", [P, D, D, D, D, U]),
        ("AdminService/CreateToken", [P, D, D, D, D, U]),
        ("AdminService/ListTokens", [P, D, D, D, D, U]),
        ("AdminService/RevokeToken", [P, D, D, D, D, U]),
        ("AdminService/ListAudit", [P, D, D, D, D, U]),
        ("AdminService/GetUsageHistory", [P, P, P, P, D, U]),
        ("AdminService/GetUsageHistory a", [P, P, P, P, D, U]),
        ("AdminService/GetUsageHistory b", [P, D, D, D, D, U]),
        ("GET /metrics", [P, D, D, D, D, U]),
        ("GET /healthz", [P, P, P, P, P, P]),
        ("GET /readyz", [P, P, P, P, P, P]),
    ]
}

#[test]
fn every_call_against_every_role() {
    let world = World::new();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let mut wrong = Vec::new();
    let mut covered = BTreeSet::new();
    for (call, outcomes) in expected() {
        covered.insert(call.split(' ').take(if call.starts_with("GET") { 2 } else { 1 }).collect::<Vec<_>>().join(" "));
        for (role, want) in ROLES.iter().zip(outcomes) {
            let got = runtime.block_on(run(&world, *role, call));
            if got != want {
                wrong.push(format!("{call} as {role:?}: expected {want:?}, got {got:?}"));
            }
        }
    }
    assert!(wrong.is_empty(), "authorization differs from the table:\n{}", wrong.join("\n"));
    let rules: BTreeSet<String> = allot_policy_rules();
    let missing: Vec<&String> = rules.difference(&covered).collect();
    assert!(missing.is_empty(), "calls the table does not exercise: {missing:?}");
}

/// The calls the broker checks: the policy crate's list, which the broker looks
/// every call up in.
fn allot_policy_rules() -> BTreeSet<String> {
    allot_policy::authz::RULES.iter().map(|rule| rule.call.to_owned()).collect()
}

#[test]
fn members_see_only_their_team_and_admins_shape_only_theirs() {
    let world = World::new();
    let b_allocation = world.allocation("b");
    let member = world.token_path(Role::Member).expect("member token");
    // A member of a cannot see or release b's allocation.
    for args in [["alloc", "get", b_allocation.as_str()], ["alloc", "release", b_allocation.as_str()]] {
        let output = allotctl_as(&world.broker, member, &args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && stderr.contains("PERMISSION_DENIED"), "{args:?}: {stderr}");
        assert!(stderr.contains("mia may not"), "{stderr}");
    }
    let listed = allotctl_as(&world.broker, member, &["alloc", "list", "-o", "json"]);
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("json");
    assert!(listed.as_array().expect("list").iter().all(|allocation| allocation["team"] == "a-work"), "{listed}");
    assert_eq!(allotctl_json(&world.broker, &["alloc", "get", &b_allocation])["state"], "bound", "b's is untouched");
    // A viewer cannot allocate.
    let viewer = world.token_path(Role::Viewer).expect("viewer token");
    let output = allotctl_as(&world.broker, viewer, &["alloc", "create", "--team", "a-work", "--gpus", "1"]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("PERMISSION_DENIED"));
    // A team-admin of a cannot change b's quota.
    let team_admin = world.token_path(Role::TeamAdmin).expect("team-admin token");
    let before = allotctl_json(&world.broker, &["quota", "get", "b"]);
    let output = allotctl_as(&world.broker, team_admin, &["quota", "set", "b", "--weight", "9"]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("PERMISSION_DENIED"));
    assert_eq!(allotctl_json(&world.broker, &["quota", "get", "b"]), before);
    // Without a token the broker says what to do.
    let anonymous = world.dir.path().join("no.token");
    std::fs::write(&anonymous, "").expect("empty token file");
    let output = allotctl_as(&world.broker, &anonymous, &["alloc", "list"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("UNAUTHENTICATED") && stderr.contains("token"), "{stderr}");
    // A token the broker does not know is refused, not treated as anonymous.
    let forged = world.dir.path().join("forged.token");
    std::fs::write(&forged, "allot_0000").expect("forged token");
    let output = allotctl_as(&world.broker, &forged, &["nodes", "list"]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("not known to the broker"));
}

/// A token made with a TTL is refused once it expired (E-TOKEN-EXPIRED), a
/// revoked token is refused from the revoke's answer on (by id, or every token
/// of a subject), and `token list` shows ids, subjects and expiry, never tokens.
#[test]
fn expired_and_revoked_tokens_are_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = StoreKind::Embedded(dir.path().join("store"));
    let broker = start_broker_with(&store, dir.path(), "broker", "3s", "127.0.0.1:0", &[]);
    let token_file = |name: &str, made: &serde_json::Value| {
        let path = dir.path().join(format!("{name}.token"));
        std::fs::write(&path, made["token"].as_str().expect("token")).expect("write token");
        path
    };
    let reads = |path: &Path| allotctl_as(&broker, path, &["team", "list"]);

    let short = allotctl_json(&broker, &["token", "create", "ci-bot", "--role", "viewer", "--ttl", "2s"]);
    assert!(short["expires_at_ms"].as_u64().is_some(), "{short}");
    let short_file = token_file("short", &short);
    assert!(reads(&short_file).status.success(), "a fresh token works");
    std::thread::sleep(Duration::from_millis(2300));
    let expired = reads(&short_file);
    assert!(!expired.status.success());
    let stderr = String::from_utf8_lossy(&expired.stderr);
    assert!(stderr.contains("E-TOKEN-EXPIRED") && stderr.contains("ci-bot"), "{stderr}");

    let long = allotctl_json(&broker, &["token", "create", "svc-a", "--role", "viewer"]);
    let long_file = token_file("long", &long);
    assert!(reads(&long_file).status.success());
    let listed = allotctl_json(&broker, &["token", "list", "--subject", "svc-a"]);
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(listed[0]["id"], long["id"]);
    assert_eq!(listed[0]["expires_at_ms"], serde_json::Value::Null);
    let all = allotctl(&broker, &["token", "list"]);
    let text = String::from_utf8_lossy(&all.stdout);
    assert!(text.contains("svc-a") && text.contains("expired"), "{text}");
    assert!(!text.contains(long["token"].as_str().expect("token")), "token list shows a token: {text}");
    let id = long["id"].as_str().expect("id");
    let revoked = allotctl_json(&broker, &["token", "revoke", &id[..10]]);
    assert_eq!(revoked[0]["subject"], "svc-a", "{revoked}");
    let refused = reads(&long_file);
    assert!(!refused.status.success(), "a revoked token still works");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("E-UNAUTHENTICATED"));

    let first = token_file("b1", &allotctl_json(&broker, &["token", "create", "svc-b", "--role", "viewer"]));
    let second = token_file("b2", &allotctl_json(&broker, &["token", "create", "svc-b", "--role", "viewer"]));
    let revoked = allotctl_json(&broker, &["token", "revoke", "--subject", "svc-b"]);
    assert_eq!(revoked.as_array().map(Vec::len), Some(2), "{revoked}");
    assert!(!reads(&first).status.success() && !reads(&second).status.success());

    for (args, mention) in [
        (vec!["token", "create", "x", "--ttl", "0s"], "--ttl"),
        (vec!["token", "create", "x", "--ttl", "5x"], "--ttl"),
        (vec!["token", "revoke", "abc"], "8 hex digits"),
        (vec!["token", "revoke", "0123456789abcdef"], "E-NOT-FOUND"),
    ] {
        let output = allotctl(&broker, &args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && stderr.contains(mention), "{args:?}: {stderr}");
    }
}

/// The audit log records who asked for which change, from where, and what came
/// of it (done, denied, failed), can be filtered by subject and team, and is
/// still there after a restart.
#[test]
fn the_audit_log_shows_who_changed_what() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = StoreKind::Embedded(dir.path().join("store"));
    let mut broker = start_broker_with(&store, dir.path(), "broker", "3s", "127.0.0.1:0", &[]);
    allotctl_json(&broker, &["team", "create", "ml"]);
    let mut node = start_node(&broker, "dgx-h100", "node-a", dir.path());
    wait_until("the node registers", Duration::from_secs(20), || !node_statuses(&broker).is_empty());
    let made = allotctl_json(&broker, &["alloc", "create", "--team", "ml", "--gpus", "1", "--request-id", "audit-1"]);
    let id = made["id"].as_str().expect("id").to_owned();
    allotctl_json(&broker, &["alloc", "release", &id]);
    let viewer = token_for(&broker, dir.path(), "vic", "viewer", None);
    assert!(!allotctl_as(&broker, &viewer, &["team", "create", "intruders"]).status.success());
    let refused = allotctl(&broker, &["alloc", "create", "--team", "ml", "--gpus", "9"]);
    assert!(!refused.status.success());

    let entries = || allotctl_json(&broker, &["audit"]).as_array().cloned().expect("a list");
    let find = |entries: &[serde_json::Value], call: &str, outcome: &str| {
        entries
            .iter()
            .find(|entry| entry["call"] == call && entry["outcome"].as_str().is_some_and(|o| o.starts_with(outcome)))
            .cloned()
    };
    wait_until("the audit log has the calls", Duration::from_secs(10), || {
        find(&entries(), "AllocationService/Release", "ok").is_some()
    });
    let all = entries();
    let created = find(&all, "AdminService/CreateTeam", "ok").expect("team create");
    assert_eq!(created["target"], "team ml");
    assert!(created["from"].as_str().is_some_and(|from| from.starts_with("127.0.0.1:")), "{created}");
    let denied = find(&all, "AdminService/CreateTeam", "denied").expect("the viewer's team create");
    assert_eq!(denied["subject"], "vic");
    assert_eq!(denied["allowed"], false);
    let allocated = find(&all, "AllocationService/Create", "ok").expect("alloc create");
    assert!(allocated["target"].as_str().is_some_and(|target| target.contains("request id audit-1")), "{allocated}");
    let released = find(&all, "AllocationService/Release", "ok").expect("release");
    assert_eq!(released["target"], format!("allocation {id}"));
    assert_eq!(released["team"], "ml");
    let impossible = find(&all, "AllocationService/Create", "failed").expect("the impossible create");
    assert!(impossible["outcome"].as_str().is_some_and(|o| o.contains("E-IMPOSSIBLE")), "{impossible}");
    assert!(find(&all, "NodeService/Register", "ok").is_some_and(|entry| entry["subject"] == "nodes"));
    assert!(all.iter().all(|entry| entry["call"] != "NodeService/Heartbeat"), "heartbeats are not changes");

    let vic = allotctl_json(&broker, &["audit", "--subject", "vic"]);
    assert!(vic.as_array().is_some_and(|entries| !entries.is_empty() && entries.iter().all(|e| e["subject"] == "vic")));
    let ml = allotctl_json(&broker, &["audit", "--team", "ml", "--since", "1h"]);
    assert!(
        ml.as_array().is_some_and(|entries| entries.iter().all(|e| e["team"] == "ml") && entries.len() >= 4),
        "{ml}"
    );
    let table = String::from_utf8_lossy(&allotctl(&broker, &["audit"]).stdout).into_owned();
    assert!(table.contains("TIME (UTC)") && table.contains("AllocationService/Release"), "{table}");

    let address = broker.grpc.clone();
    let count = all.len();
    broker.process.terminate(Duration::from_secs(10));
    node.kill();
    let restarted = allot_tests::start_broker_on(&store, dir.path(), "restarted", "3s", &address);
    let after = allotctl_json(&restarted, &["audit"]);
    assert!(after.as_array().is_some_and(|entries| entries.len() >= count), "the audit log did not survive a restart");
}
