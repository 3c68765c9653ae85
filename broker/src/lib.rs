//! allot-broker: one place that knows every GPU in the cluster and hands out
//! whole GPUs, MIG instances and GPU shares without granting anything twice.
//!
//! `serve` wires the pieces: the store (etcd or embedded), leadership, the core
//! (state plus the group-commit writer), the lost-node detector, the gRPC
//! services and the HTTP endpoint.
//!
//! The crate is four layers, each importing only the ones below it (a test
//! checks every `crate::` path):
//! 1. `state`: the cluster state and its indexes as plain data, how records are
//!    encoded, the writer's counters;
//! 2. `rounds`: what is decided over the state without IO (placement,
//!    scheduling rounds, retention, the usage history), as store writes;
//! 3. `writer`: the single writer that applies commands, commits them fenced on
//!    leadership and answers; team commands; leadership;
//! 4. `service`: gRPC, HTTP and the authorization every call passes.
//!
//! `error` sits below all of them; `config` and this file wire them.

pub mod config;
pub mod error;
pub mod rounds;
pub mod service;
pub mod state;
pub mod writer;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use allot_api::proto;
use allot_placement::NodeStatus;
use allot_store::Store;
use anyhow::Context;

use crate::config::{ServeConfig, StoreSpec};
use crate::service::{auth, grpc, http};
use crate::writer::{Command, Core, leader, now_ms};

/// Opens the configured store, retrying an unreachable etcd with backoff.
pub async fn open_store(spec: &StoreSpec) -> anyhow::Result<Arc<dyn Store>> {
    match spec {
        StoreSpec::Embedded(dir) => {
            let store = allot_store::EmbeddedStore::open(dir)
                .await
                .with_context(|| format!("cannot open the embedded store in {}", dir.display()))?;
            Ok(Arc::new(store))
        }
        StoreSpec::Etcd(endpoints) => {
            let mut delay = Duration::from_millis(200);
            let mut attempt = 1;
            loop {
                match allot_store::EtcdStore::connect(allot_store::EtcdConfig::new(endpoints.iter().cloned())).await {
                    Ok(store) => return Ok(Arc::new(store)),
                    Err(error) if attempt < 8 => {
                        tracing::warn!(%error, attempt, "etcd unreachable; retrying");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(5));
                        attempt += 1;
                    }
                    Err(error) => {
                        return Err(error).with_context(|| {
                            format!("cannot reach etcd at {} after {attempt} attempts", endpoints.join(","))
                        });
                    }
                }
            }
        }
    }
}

/// `allot-broker pki`: what it wrote, one line each.
pub fn pki_command(command: config::PkiCommand) -> anyhow::Result<Vec<String>> {
    use crate::service::pki::{Holder, Pki, server_names};
    match command {
        config::PkiCommand::Init { pki, sans } => {
            let pki = Pki::new(config::pki_dir(pki.as_ref())?);
            let names = server_names(std::net::SocketAddr::from(([127, 0, 0, 1], 0)), &sans);
            let created = pki.ensure(&names)?;
            if created.is_empty() {
                return Ok(vec![format!("{}: complete already; nothing created", pki.dir.display())]);
            }
            Ok(created.iter().map(|path| format!("created {}", path.display())).collect())
        }
        config::PkiCommand::Issue { pki, subject, node, server, sans, days, out } => {
            let pki = Pki::new(config::pki_dir(pki.as_ref())?);
            let (holder, default_out) = match (subject, node, server) {
                (Some(subject), None, false) => (Holder::Client(subject.clone()), pki.dir.join("users").join(subject)),
                (None, Some(node), false) => (Holder::Node(node.clone()), pki.dir.join("nodes").join(node)),
                (None, None, true) => {
                    let first = sans.first().cloned().unwrap_or_default();
                    (Holder::Server(sans), pki.dir.join("servers").join(first))
                }
                _ => anyhow::bail!(
                    "name what the certificate is for: --subject NAME, --node NAME or --server --san NAME"
                ),
            };
            let prefix = out.unwrap_or(default_out);
            let cert = prefix.with_file_name(format!("{}.pem", file_name(&prefix)));
            let key = prefix.with_file_name(format!("{}-key.pem", file_name(&prefix)));
            pki.issue(&holder, days, &cert, &key)?;
            Ok(vec![format!("certificate {}", cert.display()), format!("key {}", key.display())])
        }
    }
}

fn file_name(path: &std::path::Path) -> String {
    path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_else(|| "cert".to_owned())
}

/// Serves until `shutdown` resolves.
pub async fn serve(config: ServeConfig, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let telemetry = Arc::new(
        allot_telemetry::init("allot-broker", config.otlp_endpoint.as_deref())
            .map_err(|problem| anyhow::anyhow!(problem))?,
    );
    // TLS files are checked before anything else: a broker that cannot serve them does not take the lead.
    let tls = match &config.tls {
        Some(setup) => {
            let pki = service::pki::Pki::new(&setup.pki);
            for path in pki.ensure(&service::pki::server_names(config.listen, &setup.sans))? {
                tracing::info!(path = %path.display(), "created");
            }
            let files = service::tls::TlsFiles {
                client_ca: pki.path(allot_api::tls::files::CA),
                cert: pki.path(allot_api::tls::files::SERVER),
                key: pki.path(allot_api::tls::files::SERVER_KEY),
            };
            let tls = service::tls::ServerTls::load(files).map_err(|problem| {
                anyhow::anyhow!("cannot serve TLS with the files in {}: {problem}", setup.pki.display())
            })?;
            Some(tls)
        }
        None => {
            tracing::warn!("serving gRPC in plain text (--plaintext): tokens cross the network readable");
            None
        }
    };
    let store = open_store(&config.store).await?;
    tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "store open");
    let identity = format!("{}:{}:{}", hostname(), std::process::id(), now_ms());
    let (lost_sender, lost_receiver) = tokio::sync::oneshot::channel::<()>();
    let leadership = tokio::select! {
        leadership = leader::acquire(Arc::clone(&store), identity, move || { let _ = lost_sender.send(()); }) => leadership?,
        _ = tokio::signal::ctrl_c() => return Ok(()),
    };
    let core = Core::start(
        Arc::clone(&store),
        leadership.clone(),
        config.node_timeout,
        config.heartbeat_interval,
        config.policy,
    )
    .await?;
    {
        let state = core.state();
        tracing::info!(
            nodes = state.nodes().len(),
            allocations = state.allocations.len(),
            teams = state.teams.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "state loaded"
        );
    }
    tokio::spawn(detect_lost_nodes(Arc::clone(&core)));
    tokio::spawn(tick(Arc::clone(&core)));

    // Listening starts once this broker leads (a standby refuses connections);
    // if it cannot listen, it gives the lead back at once for another broker.
    let listeners = async {
        let grpc = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {} (--listen)", config.listen))?;
        let http = tokio::net::TcpListener::bind(config.http)
            .await
            .with_context(|| format!("cannot listen on {} (--http)", config.http))?;
        anyhow::Ok((grpc, http))
    };
    let (grpc_listener, http_listener) = match listeners.await {
        Ok(listeners) => listeners,
        Err(error) => {
            leader::resign(store.as_ref(), &leadership).await;
            return Err(error);
        }
    };
    let grpc_address = grpc_listener.local_addr()?;
    let http_address = http_listener.local_addr()?;

    auth::bootstrap(&core, config.admin_token_file.as_deref(), config.node_token_file.as_deref()).await?;
    let auth = Arc::new(auth::Auth::new(Arc::clone(&core), Arc::clone(&store), leadership.clone()).await?);
    let services = grpc::Services { core: Arc::clone(&core), auth: Arc::clone(&auth) };
    http::register_metrics(&core);
    let router = tonic::transport::Server::builder()
        .layer(http::TimedLayer)
        .add_service(proto::node_service_server::NodeServiceServer::new(services.clone()))
        .add_service(proto::allocation_service_server::AllocationServiceServer::new(services.clone()))
        .add_service(proto::admin_service_server::AdminServiceServer::new(services));
    let grpc: std::pin::Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>> =
        match &tls {
            Some(tls) => {
                tokio::spawn(service::tls::watch(Arc::clone(tls)));
                Box::pin(router.serve_with_incoming(service::tls::incoming(grpc_listener, Arc::clone(tls))))
            }
            // Without TCP_NODELAY small HTTP/2 frames wait for delayed ACKs (~40 ms each).
            None => Box::pin(router.serve_with_incoming(
                tonic::transport::server::TcpIncoming::from(grpc_listener).with_nodelay(Some(true)),
            )),
        };
    let http = axum::serve(http_listener, http::router(Arc::clone(&telemetry), auth));

    if let Some(path) = &config.ready_file {
        // Clients reach a TLS broker as https://ADDRESS with its CA, a plain-text one as http://ADDRESS.
        let scheme = if tls.is_some() { "https" } else { "http" };
        let ca = config.tls.as_ref().map(|setup| setup.pki.join(allot_api::tls::files::CA));
        let ready = serde_json::json!({
            "grpc": grpc_address.to_string(),
            "http": http_address.to_string(),
            "url": format!("{scheme}://{grpc_address}"),
            "ca": ca,
        });
        // Written whole, then renamed: a reader never sees half of it.
        let partial = path.with_extension("partial");
        std::fs::write(&partial, ready.to_string()).with_context(|| format!("cannot write {}", partial.display()))?;
        std::fs::rename(&partial, path).with_context(|| format!("cannot write {}", path.display()))?;
    }
    tracing::info!(grpc = %grpc_address, http = %http_address, "serving");

    tokio::select! {
        result = grpc => result.context("gRPC server failed")?,
        result = http => result.context("HTTP server failed")?,
        _ = shutdown => {
            tracing::info!("shutting down");
            // The usage history since its last save is stored before the lead is given up.
            match tokio::time::timeout(Duration::from_secs(5), core.ask(|reply| Command::FlushUsage { reply })).await {
                Ok(Ok(buckets)) => tracing::debug!(buckets, "usage history stored"),
                Ok(Err(error)) => tracing::warn!(%error, "could not store the usage history; up to 10 s of it is lost"),
                Err(_) => tracing::warn!("storing the usage history took too long; up to 10 s of it is lost"),
            }
            leader::resign(store.as_ref(), &leadership).await;
            telemetry.shutdown();
        }
        _ = lost_receiver => anyhow::bail!("lost leadership of the store: another broker may lead now; stopping"),
        _ = core.fenced.notified() => anyhow::bail!("another broker leads the store now; stopping"),
    }
    Ok(())
}

/// Marks nodes lost when their heartbeats stop.
async fn detect_lost_nodes(core: Arc<Core>) {
    let period = (core.node_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    loop {
        tokio::time::sleep(period).await;
        let now = now_ms();
        let timeout = core.node_timeout.as_millis() as u64;
        let lost: Vec<_> = {
            let state = core.state();
            state
                .nodes()
                .iter()
                .filter(|(_, entry)| {
                    entry.status == NodeStatus::Ready && now.saturating_sub(entry.last_heartbeat_ms) > timeout
                })
                .map(|(name, entry)| (name.clone(), entry.last_heartbeat_ms))
                .collect()
        };
        for (name, last_heartbeat_ms) in lost {
            core.tell(Command::NodeLost { name, last_heartbeat_ms }).await;
        }
    }
}

/// Drives reclaim deadlines, the usage history and the pruning of finished
/// allocations (`retention`).
async fn tick(core: Arc<Core>) {
    let period = (core.policy.grace / 10).clamp(Duration::from_millis(100), Duration::from_secs(1));
    loop {
        tokio::time::sleep(period).await;
        core.tell(Command::Tick).await;
    }
}

pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_else(|_| "broker".into())
}

#[cfg(test)]
mod tests {
    /// The layer of a module path under `src/` (0 for `error`, 5 for the wiring).
    fn layer(module: &str) -> Option<u8> {
        match module {
            "error" => Some(0),
            "state" => Some(1),
            "rounds" => Some(2),
            "writer" => Some(3),
            "service" => Some(4),
            "config" | "lib" | "main" => Some(5),
            _ => None,
        }
    }

    /// Every `crate::` path points at the same layer or one below.
    #[test]
    fn layers_import_only_downwards() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = vec![root.clone()];
        let mut checked = 0;
        while let Some(path) = files.pop() {
            if path.is_dir() {
                files.extend(std::fs::read_dir(&path).expect("src dir").map(|entry| entry.expect("entry").path()));
                continue;
            }
            let relative = path.strip_prefix(&root).expect("under src").to_string_lossy().into_owned();
            let top = relative.split(['/', '.']).next().unwrap_or_default().to_owned();
            let own = layer(&top).unwrap_or_else(|| panic!("{relative}: a module in no layer; add it to `layer`"));
            let text = std::fs::read_to_string(&path).expect("source");
            for (at, _) in text.match_indices("crate::") {
                let target: String =
                    text[at + 7..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                let Some(theirs) = layer(&target) else { continue };
                assert!(
                    theirs <= own,
                    "{relative} (layer {own}) imports crate::{target} (layer {theirs}): layers import only downwards"
                );
                checked += 1;
            }
        }
        assert!(checked > 50, "only {checked} paths checked: is the source tree where the test looks?");
    }
}
