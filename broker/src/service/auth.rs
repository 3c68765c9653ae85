//! Who is calling (bearer tokens) and whether they may (casbin, RBAC with
//! domains: one domain per team, `*` for the whole cluster).
//!
//! Tokens are random, shown once, and kept in the store only as their SHA-256.
//! Role permissions and grants are casbin policy lines in the store, read
//! through [`StoreAdapter`]; the broker writes grants through its writer (fenced,
//! all or nothing with the rest of a teams file) and reloads the enforcer after.
//! Every gRPC method and HTTP route is checked against `allot_policy::authz::RULES`.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::sync::{Arc, RwLock};

use allot_api::allocation::TeamName;
use allot_policy::authz::{CASBIN_MODEL, Scope, rule_for};
use allot_policy::{Grant, Role};
use allot_store::{Compare, Op, Store, Txn, layout};
use casbin::{Adapter, CoreApi, DefaultModel, Enforcer, Filter, Model};
use sha2::{Digest, Sha256};

use crate::error::BrokerError;
use crate::writer::teams::TeamCommand;
use crate::writer::{Command, Core, Leadership};

/// Who a request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Anonymous,
    /// A token's subject, or a client certificate's common name.
    Subject(String),
    /// A node daemon whose certificate names its node (`node:NAME`): it has
    /// the role of `nodes` and may act as that node only.
    Node {
        subject: String,
    },
}

/// The subject whose grants apply to every node certificate.
pub const NODES: &str = "nodes";

impl Caller {
    /// Who called, as the audit log names them.
    pub fn name(&self) -> &str {
        match self {
            Caller::Anonymous => "anonymous",
            Caller::Subject(subject) | Caller::Node { subject } => subject,
        }
    }

    /// Whose grants apply.
    fn grantee(&self) -> &str {
        match self {
            Caller::Node { .. } => NODES,
            other => other.name(),
        }
    }

    /// The node a node certificate binds this caller to.
    pub fn node(&self) -> Option<&str> {
        match self {
            Caller::Node { subject } => subject.strip_prefix(crate::service::pki::NODE_PREFIX),
            _ => None,
        }
    }

    /// Refuses a node daemon acting as another node than its certificate's.
    pub fn may_act_as_node(&self, name: &str) -> Result<(), BrokerError> {
        match self.node() {
            Some(own) if own != name => Err(BrokerError::PermissionDenied(format!(
                "this connection's certificate is for node {own}; it cannot act as node {name} (give each node \
                 daemon the certificate for its own --name: allot-broker pki issue --node NAME)"
            ))),
            _ => Ok(()),
        }
    }
}

/// A new random token (`allot_` and 64 hex digits) from the kernel's generator.
pub fn new_token() -> Result<String, BrokerError> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut bytes))
        .map_err(|error| BrokerError::Internal(format!("cannot read /dev/urandom for a token: {error}")))?;
    Ok(format!("allot_{}", hex(&bytes)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The key a token is stored under.
pub fn token_hash(token: &str) -> String {
    hex(&Sha256::digest(token.trim().as_bytes()))
}

/// Writes a secret readable only by its owner (directories created 0700).
pub fn write_secret(path: &Path, secret: &str) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    }
    let partial = path.with_extension("partial");
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&partial)?;
    std::io::Write::write_all(&mut file, format!("{secret}\n").as_bytes())?;
    std::fs::rename(&partial, path)
}

/// casbin policy lines in the store, one key each (`layout::rbac_rule`).
#[derive(Debug)]
pub struct StoreAdapter {
    store: Arc<dyn Store>,
    /// Writes are fenced on the leader key, like every other broker write.
    fence: Leadership,
}

impl StoreAdapter {
    pub fn new(store: Arc<dyn Store>, fence: Leadership) -> StoreAdapter {
        StoreAdapter { store, fence }
    }

    async fn lines(&self) -> casbin::Result<Vec<Vec<String>>> {
        let kvs = self.store.range(layout::prefix_rbac()).await.map_err(adapter_error)?.kvs;
        let mut lines = Vec::with_capacity(kvs.len());
        for kv in kvs {
            let line: Vec<String> = serde_json::from_slice(&kv.value).map_err(adapter_error)?;
            lines.push(line);
        }
        Ok(lines)
    }

    async fn write(&self, ops: Vec<Op>) -> casbin::Result<bool> {
        let txn = Txn::new().when([Compare::value_equals(self.fence.key.clone(), self.fence.value.clone())]).then(ops);
        let result = self.store.txn(txn).await.map_err(adapter_error)?;
        Ok(result.succeeded)
    }

    fn put(line: Vec<String>) -> casbin::Result<Op> {
        let key = layout::rbac_rule(line.join(", "));
        Ok(Op::put(key, serde_json::to_vec(&line).map_err(adapter_error)?))
    }
}

fn adapter_error(error: impl std::error::Error + Send + Sync + 'static) -> casbin::Error {
    casbin::error::AdapterError(Box::new(error)).into()
}

fn with_type(ptype: &str, rule: Vec<String>) -> Vec<String> {
    std::iter::once(ptype.to_owned()).chain(rule).collect()
}

#[async_trait::async_trait]
impl Adapter for StoreAdapter {
    async fn load_policy(&mut self, model: &mut dyn Model) -> casbin::Result<()> {
        for line in self.lines().await? {
            let Some((ptype, rule)) = line.split_first() else { continue };
            let section = &ptype[..1];
            if let Some(assertions) = model.get_mut_model().get_mut(section)
                && let Some(assertion) = assertions.get_mut(ptype.as_str())
            {
                assertion.get_mut_policy().insert(rule.to_vec());
            }
        }
        Ok(())
    }

    async fn load_filtered_policy<'a>(&mut self, model: &mut dyn Model, _filter: Filter<'a>) -> casbin::Result<()> {
        self.load_policy(model).await
    }

    async fn save_policy(&mut self, model: &mut dyn Model) -> casbin::Result<()> {
        let mut ops = vec![Op::delete_prefix(layout::prefix_rbac())];
        for section in ["p", "g"] {
            let Some(assertions) = model.get_model().get(section) else { continue };
            for (ptype, assertion) in assertions {
                for rule in assertion.get_policy() {
                    ops.push(Self::put(with_type(ptype, rule.clone()))?);
                }
            }
        }
        self.write(ops).await.map(|_| ())
    }

    async fn clear_policy(&mut self) -> casbin::Result<()> {
        self.write(vec![Op::delete_prefix(layout::prefix_rbac())]).await.map(|_| ())
    }

    fn is_filtered(&self) -> bool {
        false
    }

    async fn add_policy(&mut self, _section: &str, ptype: &str, rule: Vec<String>) -> casbin::Result<bool> {
        self.write(vec![Self::put(with_type(ptype, rule))?]).await
    }

    async fn add_policies(&mut self, _section: &str, ptype: &str, rules: Vec<Vec<String>>) -> casbin::Result<bool> {
        let ops =
            rules.into_iter().map(|rule| Self::put(with_type(ptype, rule))).collect::<casbin::Result<Vec<_>>>()?;
        self.write(ops).await
    }

    async fn remove_policy(&mut self, _section: &str, ptype: &str, rule: Vec<String>) -> casbin::Result<bool> {
        self.write(vec![Op::delete(layout::rbac_rule(with_type(ptype, rule).join(", ")))]).await
    }

    async fn remove_policies(&mut self, _section: &str, ptype: &str, rules: Vec<Vec<String>>) -> casbin::Result<bool> {
        let ops =
            rules.into_iter().map(|rule| Op::delete(layout::rbac_rule(with_type(ptype, rule).join(", ")))).collect();
        self.write(ops).await
    }

    async fn remove_filtered_policy(
        &mut self,
        _section: &str,
        ptype: &str,
        field_index: usize,
        field_values: Vec<String>,
    ) -> casbin::Result<bool> {
        let mut ops = Vec::new();
        for line in self.lines().await? {
            let Some((kind, rule)) = line.split_first() else { continue };
            let matches = kind == ptype
                && field_values
                    .iter()
                    .enumerate()
                    .all(|(offset, value)| value.is_empty() || rule.get(field_index + offset) == Some(value));
            if matches {
                ops.push(Op::delete(layout::rbac_rule(line.join(", "))));
            }
        }
        if ops.is_empty() {
            return Ok(false);
        }
        self.write(ops).await
    }
}

/// Authentication and authorization for every call.
pub struct Auth {
    core: Arc<Core>,
    store: Arc<dyn Store>,
    fence: Leadership,
    enforcer: RwLock<Enforcer>,
    /// casbin's answers, until the policy is reloaded: evaluating the matcher
    /// costs more than the rest of an allocation request.
    decisions: RwLock<HashMap<Question, bool>>,
    /// What authorization reads of the cluster state, copied so that a call is
    /// never held up by the writer holding the state's lock.
    view: RwLock<View>,
    /// The subject each verified client certificate names, by its DER bytes:
    /// a connection's calls all carry the same certificate, parsed once.
    certificate_names: RwLock<HashMap<Vec<u8>, String>>,
    /// The SHA-256 of each known token a call presented: hashing it on every
    /// call cost a twentieth of the broker's CPU under load. Only a hash's
    /// lookup in `view` says whether the token is (still) valid.
    token_hashes: RwLock<HashMap<String, String>>,
}

/// The most names or token hashes kept; beyond, the cache starts again.
const IDENTITY_CACHE: usize = 10_000;

/// Tokens and the team tree's parent links, as of the last refresh.
#[derive(Debug, Default)]
struct View {
    /// Subject and expiry (ms since the epoch) by token hash.
    tokens: HashMap<String, (String, Option<u64>)>,
    parents: HashMap<TeamName, Option<TeamName>>,
}

/// One casbin question: subject, domain, object, action.
type Question = (String, String, &'static str, &'static str);

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth").finish_non_exhaustive()
    }
}

async fn enforcer(store: Arc<dyn Store>, fence: Leadership) -> Result<Enforcer, BrokerError> {
    let model = DefaultModel::from_str(CASBIN_MODEL)
        .await
        .map_err(|error| BrokerError::Internal(format!("the casbin model does not load: {error}")))?;
    Enforcer::new(model, StoreAdapter::new(store, fence))
        .await
        .map_err(|error| BrokerError::StoreUnavailable(format!("cannot load authorization policy: {error}")))
}

impl Auth {
    pub async fn new(core: Arc<Core>, store: Arc<dyn Store>, fence: Leadership) -> Result<Auth, BrokerError> {
        let loaded = enforcer(Arc::clone(&store), fence.clone()).await?;
        let auth = Auth {
            core,
            store,
            fence,
            enforcer: RwLock::new(loaded),
            decisions: RwLock::new(HashMap::new()),
            view: RwLock::new(View::default()),
            certificate_names: RwLock::new(HashMap::new()),
            token_hashes: RwLock::new(HashMap::new()),
        };
        auth.refresh();
        Ok(auth)
    }

    /// Copies the tokens and the tree's shape from the state: after every change
    /// to teams or tokens (the admin service calls it once the writer stored them).
    pub fn refresh(&self) {
        let view = {
            let state = self.core.state();
            View {
                tokens: state
                    .tokens
                    .iter()
                    .map(|(hash, record)| (hash.clone(), (record.subject.clone(), record.expires_at_ms)))
                    .collect(),
                parents: state.teams.iter().map(|(name, record)| (name.clone(), record.parent.clone())).collect(),
            }
        };
        *self.view.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = view;
    }

    /// Reads the policy lines from the store again (after grants changed).
    pub async fn reload(&self) -> Result<(), BrokerError> {
        let fresh = enforcer(Arc::clone(&self.store), self.fence.clone()).await?;
        let mut enforcer = self.enforcer.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        *enforcer = fresh;
        // Cleared while the new enforcer is locked in: no stale answer outlives it.
        self.decisions.write().unwrap_or_else(|poisoned| poisoned.into_inner()).clear();
        drop(enforcer);
        self.refresh();
        Ok(())
    }

    /// The caller of a request: a node certificate binds it to its node; else
    /// the `authorization: Bearer TOKEN` header names it; else the client
    /// certificate's common name does (mutual TLS has verified the certificate).
    pub fn identify(
        &self,
        header: Option<&str>,
        certificate: Option<&rustls::pki_types::CertificateDer<'_>>,
    ) -> Result<Caller, BrokerError> {
        let from_certificate = match certificate {
            Some(certificate) => Some(self.certificate_name(certificate)?),
            None => None,
        };
        if let Some(subject) = &from_certificate
            && subject.starts_with(crate::service::pki::NODE_PREFIX)
        {
            return Ok(Caller::Node { subject: subject.clone() });
        }
        let Some(header) = header else { return Ok(from_certificate.map_or(Caller::Anonymous, Caller::Subject)) };
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or_else(|| BrokerError::Unauthenticated("the authorization header must be `Bearer TOKEN`".into()))?;
        let cached = self.token_hashes.read().unwrap_or_else(|poisoned| poisoned.into_inner()).get(token).cloned();
        let hash = cached.clone().unwrap_or_else(|| token_hash(token));
        let view = self.view.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        let found = view.tokens.get(&hash);
        if found.is_some() && cached.is_none() {
            self.remember_hash(token, hash);
        }
        match found {
            Some((subject, Some(expires_at_ms))) if crate::writer::now_ms() >= *expires_at_ms => {
                Err(BrokerError::Unauthenticated(format!(
                    "E-TOKEN-EXPIRED: the token of {subject} expired at {} ms since the epoch; ask an admin for a new \
                     one (allotctl token create --ttl ...)",
                    expires_at_ms
                )))
            }
            Some((subject, _)) => Ok(Caller::Subject(subject.clone())),
            None => Err(BrokerError::Unauthenticated(
                "this token is not known to the broker (revoked, or from another cluster); ask an admin for one \
                 (allotctl token create)"
                    .into(),
            )),
        }
    }

    /// Keeps a known token's hash (unknown tokens are never kept: they would
    /// let anyone fill the cache).
    fn remember_hash(&self, token: &str, hash: String) {
        let mut hashes = self.token_hashes.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        if hashes.len() >= IDENTITY_CACHE {
            hashes.clear();
        }
        hashes.insert(token.to_owned(), hash);
    }

    /// The subject a verified client certificate names (parsed once per certificate).
    fn certificate_name(&self, certificate: &rustls::pki_types::CertificateDer<'_>) -> Result<String, BrokerError> {
        let der = certificate.as_ref();
        if let Some(name) = self.certificate_names.read().unwrap_or_else(|poisoned| poisoned.into_inner()).get(der) {
            return Ok(name.clone());
        }
        let name = crate::service::tls::identity_of(certificate).map_err(BrokerError::Unauthenticated)?;
        let mut names = self.certificate_names.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        // Bounded: certificates are few, but a cluster may issue many over time.
        if names.len() >= IDENTITY_CACHE {
            names.clear();
        }
        names.insert(der.to_vec(), name.clone());
        Ok(name)
    }

    /// A team's domain and its ancestors' (nearest first), then the cluster's.
    fn path_domains(&self, team: Option<&TeamName>) -> Vec<String> {
        let view = self.view.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut domains: Vec<String> = Vec::new();
        let mut current = team.cloned();
        while let Some(name) = current {
            // The tree is checked to be at most MAX_DEPTH deep and acyclic; the
            // bound only guards against a view caught mid-change.
            if domains.len() > allot_policy::tree::MAX_DEPTH {
                break;
            }
            current = view.parents.get(&name).cloned().flatten();
            domains.push(name.to_string());
        }
        domains.push("*".into());
        domains
    }

    /// The domains a permission is looked for in, by the rule's scope.
    fn domains(&self, scope: Scope, team: Option<&TeamName>) -> Vec<String> {
        match (scope, team) {
            (Scope::Cluster, _) | (_, None) => self.path_domains(None),
            (Scope::Team, Some(team)) => self.path_domains(Some(team)),
            (Scope::ParentOfTeam, Some(team)) => {
                let parent = self
                    .view
                    .read()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .parents
                    .get(team)
                    .cloned()
                    .flatten();
                self.path_domains(parent.as_ref())
            }
        }
    }

    fn enforce_any(
        &self,
        caller: &Caller,
        domains: &[String],
        object: &'static str,
        action: &'static str,
    ) -> Result<bool, BrokerError> {
        let enforcer = self.enforcer.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        for domain in domains {
            let question: Question = (caller.grantee().to_owned(), domain.clone(), object, action);
            let known = self.decisions.read().unwrap_or_else(|poisoned| poisoned.into_inner()).get(&question).copied();
            let allowed = match known {
                Some(allowed) => allowed,
                None => {
                    let allowed = enforcer
                        .enforce((caller.grantee(), domain.as_str(), object, action))
                        .map_err(|error| BrokerError::Internal(format!("authorization failed: {error}")))?;
                    let mut decisions = self.decisions.write().unwrap_or_else(|poisoned| poisoned.into_inner());
                    // Bounded: a flood of unknown names cannot grow it without end.
                    if decisions.len() > 100_000 {
                        decisions.clear();
                    }
                    decisions.insert(question, allowed);
                    allowed
                }
            };
            if allowed {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Like [`Auth::check`], but the permission is looked for at `at` (and its
    /// ancestors), whatever the rule's scope: creating a team is checked at its parent.
    pub fn check_at(&self, caller: &Caller, call: &str, at: Option<&TeamName>) -> Result<(), BrokerError> {
        let rule =
            rule_for(call).ok_or_else(|| BrokerError::PermissionDenied(format!("{call} is not a known call")))?;
        if self.enforce_any(caller, &self.path_domains(at), rule.object, rule.action)? {
            return Ok(());
        }
        Err(self.refusal(caller, call, at))
    }

    /// Whether the caller may make this call, for this team.
    pub fn allows(&self, caller: &Caller, call: &str, team: Option<&TeamName>) -> Result<bool, BrokerError> {
        let rule =
            rule_for(call).ok_or_else(|| BrokerError::PermissionDenied(format!("{call} is not a known call")))?;
        self.enforce_any(caller, &self.domains(rule.scope, team), rule.object, rule.action)
    }

    /// Refuses the call unless the caller may make it.
    pub fn check(&self, caller: &Caller, call: &str, team: Option<&TeamName>) -> Result<(), BrokerError> {
        if self.allows(caller, call, team)? {
            return Ok(());
        }
        Err(self.refusal(caller, call, team))
    }

    fn refusal(&self, caller: &Caller, call: &str, team: Option<&TeamName>) -> BrokerError {
        if *caller == Caller::Anonymous {
            return BrokerError::Unauthenticated(format!(
                "{call} needs a token: pass --token-file or set ALLOT_TOKEN (a single-machine broker writes one to \
                 ~/.config/allot/admin.token)"
            ));
        }
        let rule = rule_for(call).map(|rule| format!("{} {}", rule.action, rule.object)).unwrap_or_default();
        let place = team.map_or_else(|| "the cluster".to_owned(), |team| format!("team {team}"));
        BrokerError::PermissionDenied(format!(
            "{} may not {rule} in {place} ({call}); ask an admin for a role there (allotctl policy grant)",
            caller.name()
        ))
    }
}

/// First start: stores the role permissions and, when no token exists yet,
/// creates an admin token (and a node token) and writes them where asked.
pub async fn bootstrap(core: &Core, admin_file: Option<&Path>, node_file: Option<&Path>) -> Result<(), BrokerError> {
    let fresh = core.state().tokens.is_empty();
    let admin = match (admin_file, fresh) {
        (Some(_), true) => {
            let token = new_token()?;
            let grant = Grant { subject: "admin".into(), role: Role::PlatformAdmin, team: None };
            Some((token, grant))
        }
        _ => None,
    };
    let created = core
        .ask(|reply| {
            Command::Team(TeamCommand::Bootstrap {
                admin: admin.as_ref().map(|(token, grant)| (token_hash(token), grant.clone())),
                reply,
            })
        })
        .await?;
    if let (Some((token, _)), Some(path)) = (&admin, admin_file)
        && created
    {
        write_secret(path, token).map_err(|error| {
            BrokerError::Internal(format!("cannot write the admin token to {}: {error}", path.display()))
        })?;
        tracing::info!(path = %path.display(), "created the first admin token");
        if let Some(node_path) = node_file {
            let node_token = new_token()?;
            let grant = Grant { subject: "nodes".into(), role: Role::Node, team: None };
            core.ask(|reply| {
                Command::Team(TeamCommand::CreateToken {
                    hash: token_hash(&node_token),
                    subject: "nodes".into(),
                    grant: Some(grant),
                    expires_at_ms: None,
                    reply,
                })
            })
            .await?;
            write_secret(node_path, &node_token).map_err(|error| {
                BrokerError::Internal(format!("cannot write the node token to {}: {error}", node_path.display()))
            })?;
        }
    } else if let Some(path) = admin_file
        && !path.exists()
    {
        tracing::warn!(
            path = %path.display(),
            "tokens exist already, so no new admin token was written; an admin can make one with allotctl token create"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use casbin::{MgmtApi, RbacApi};

    use super::*;

    async fn store_with_leader(dir: &Path) -> (Arc<dyn Store>, Leadership) {
        let store: Arc<dyn Store> = Arc::new(allot_store::EmbeddedStore::open(dir).await.expect("store"));
        let fence =
            Leadership { key: layout::leader().to_owned(), value: b"me".to_vec(), lease: allot_store::LeaseId::new(1) };
        store.txn(Txn::new().then([Op::put(fence.key.clone(), fence.value.clone())])).await.expect("leader key");
        (store, fence)
    }

    async fn enforcer_on(store: &Arc<dyn Store>, fence: &Leadership) -> Enforcer {
        enforcer(Arc::clone(store), fence.clone()).await.expect("enforcer")
    }

    #[tokio::test]
    async fn the_store_adapter_keeps_policy_lines_in_the_store() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, fence) = store_with_leader(dir.path()).await;
        let mut first = enforcer_on(&store, &fence).await;
        first.add_policy(vec!["member".into(), "allocation".into(), "*".into()]).await.expect("p line");
        first.add_grouping_policy(vec!["alice".into(), "member".into(), "vision".into()]).await.expect("g line");
        // Another enforcer (a restarted broker) reads them from the store.
        let second = enforcer_on(&store, &fence).await;
        assert!(second.enforce(("alice", "vision", "allocation", "create")).expect("enforce"));
        assert!(!second.enforce(("alice", "nlp", "allocation", "create")).expect("enforce"));
        assert!(second.has_role_for_user("alice", "member", Some("vision")));
        // Removing goes through the adapter too.
        first.remove_grouping_policy(vec!["alice".into(), "member".into(), "vision".into()]).await.expect("remove");
        let third = enforcer_on(&store, &fence).await;
        assert!(!third.enforce(("alice", "vision", "allocation", "create")).expect("enforce"));
        // A broker that lost the leader key writes nothing.
        let stale = Leadership { value: b"someone else".to_vec(), ..fence.clone() };
        let mut fenced = enforcer_on(&store, &stale).await;
        let _ = fenced.add_grouping_policy(vec!["mallory".into(), "member".into(), "vision".into()]).await;
        let fourth = enforcer_on(&store, &fence).await;
        assert!(!fourth.has_role_for_user("mallory", "member", Some("vision")));
    }

    #[test]
    fn tokens_are_random_and_only_their_hash_is_kept() {
        let one = new_token().expect("token");
        let two = new_token().expect("token");
        assert_ne!(one, two);
        assert!(one.starts_with("allot_") && one.len() == 6 + 64, "{one}");
        assert_eq!(token_hash(&one), token_hash(&format!("{one}\n")), "whitespace around a token does not matter");
        assert_ne!(token_hash(&one), token_hash(&two));
        assert!(!token_hash(&one).contains(&one[6..]));
    }

    #[test]
    fn secrets_are_written_for_their_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("nested/admin.token");
        write_secret(&path, "allot_x").expect("write");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "allot_x\n");
        let mode = std::fs::metadata(&path).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = std::fs::metadata(path.parent().expect("dir")).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(dir_mode, 0o700);
    }
}
