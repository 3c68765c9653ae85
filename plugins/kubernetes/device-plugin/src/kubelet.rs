//! Talking to the kubelet: one unix socket per resource in the kubelet's
//! device plugin directory, registration with the kubelet, and registration
//! again when the kubelet restarts (it re-creates `kubelet.sock` and removes the
//! plugins' sockets). A kubelet that is absent or does not answer is retried
//! with backoff while allot-node goes on serving the broker.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::{Channel, Endpoint, Server, Uri};

use crate::plugin::Plugins;
use crate::resources::Resource;
use crate::v1beta1;

/// How often the sockets are checked for a kubelet restart.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);
/// Registration is retried at least this often: a kubelet that restarts must
/// see the plugins again within seconds.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// A gRPC channel over a unix socket (the kubelet's, or a plugin's in tests).
pub async fn connect(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let path = path.to_owned();
    // The URI is required by the API but unused: the connector dials the socket.
    Endpoint::from_static("http://kubelet.invalid")
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { UnixStream::connect(path).await.map(TokioIo::new) }
        }))
        .await
}

/// The identity of a socket file (device and inode), to notice it was re-created.
fn identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|metadata| (metadata.dev(), metadata.ino()))
}

/// Serves every resource and keeps it registered until `shutdown` resolves;
/// then removes the plugin sockets.
pub async fn serve(plugins: Plugins, shutdown: impl std::future::Future<Output = ()>) {
    let directory = plugins.config().kubelet_socket.parent().map(Path::to_owned).unwrap_or_else(|| PathBuf::from("."));
    let sockets: Vec<PathBuf> =
        plugins.resources().iter().map(|resource| directory.join(resource.socket_name())).collect();
    tokio::select! {
        () = supervise(&plugins, &directory) => {}
        () = shutdown => tracing::info!("device plugins stopping"),
    }
    for socket in sockets {
        let _ = std::fs::remove_file(socket);
    }
}

async fn supervise(plugins: &Plugins, directory: &Path) {
    let kubelet_socket = plugins.config().kubelet_socket.clone();
    loop {
        let (stop, stopped) = watch::channel(false);
        let mut servers = Vec::new();
        let mut sockets = Vec::new();
        for resource in plugins.resources() {
            let path = directory.join(resource.socket_name());
            match start_server(plugins, resource, &path, stopped.clone()) {
                Ok(server) => {
                    servers.push(server);
                    sockets.push(path);
                }
                Err(error) => {
                    tracing::error!(socket = %path.display(), %error, "cannot serve the device plugin socket")
                }
            }
        }
        let kubelet = identity(&kubelet_socket);
        // The same servers stay up while registration is retried: registering a
        // resource again only replaces the kubelet's endpoint for it. Fresh
        // sockets are made only when the kubelet restarted (it removes them).
        let mut backoff = Duration::from_millis(500);
        let restarted =
            |sockets: &[PathBuf]| identity(&kubelet_socket) != kubelet || sockets.iter().any(|socket| !socket.exists());
        let mut registered = false;
        while !restarted(&sockets) {
            let attempt = if sockets.len() == plugins.resources().len() {
                register_all(plugins, &kubelet_socket).await
            } else {
                Err("some plugin sockets could not be served".to_owned())
            };
            match attempt {
                Ok(()) => {
                    registered = true;
                    break;
                }
                Err(problem) => {
                    tracing::warn!(kubelet = %kubelet_socket.display(), %problem, retry_in_ms = backoff.as_millis() as u64,
                        "cannot register with the kubelet; allot-node keeps serving the broker");
                    let deadline = tokio::time::Instant::now() + backoff;
                    while tokio::time::Instant::now() < deadline && !restarted(&sockets) {
                        tokio::time::sleep(WATCH_INTERVAL.min(backoff)).await;
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        if registered {
            tracing::info!(kubelet = %kubelet_socket.display(), resources = plugins.resources().len(), "registered with the kubelet");
            // Serve until the kubelet restarts: its socket is re-created, ours removed.
            while !restarted(&sockets) {
                tokio::time::sleep(WATCH_INTERVAL).await;
            }
        }
        tracing::info!("the kubelet restarted (its socket is new, or ours are gone); registering again");
        let _ = stop.send(true);
        // A graceful stop waits for open streams; a kubelet that went away without
        // closing its ListAndWatch streams must not hold us here: one deadline for all.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        for server in servers {
            let abort = server.abort_handle();
            if tokio::time::timeout_at(deadline, server).await.is_err() {
                abort.abort();
            }
        }
        for socket in &sockets {
            let _ = std::fs::remove_file(socket);
        }
    }
}

fn start_server(
    plugins: &Plugins,
    resource: &Resource,
    path: &Path,
    mut stopped: watch::Receiver<bool>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    // A stale socket from an earlier run would make bind fail.
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    let listener = UnixListener::bind(path)?;
    let service = plugins.service(resource);
    let name = resource.name.clone();
    Ok(tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        };
        let served = Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
            .await;
        if let Err(error) = served {
            tracing::warn!(resource = %name, %error, "device plugin server ended");
        }
    }))
}

async fn register_all(plugins: &Plugins, kubelet_socket: &Path) -> Result<(), String> {
    for resource in plugins.resources() {
        // One connection per registration: the kubelet may close a connection
        // once it has handled a Register on it.
        let channel = connect(kubelet_socket).await.map_err(|error| format!("cannot connect: {error}"))?;
        let mut client = v1beta1::registration_client::RegistrationClient::new(channel);
        let request = v1beta1::RegisterRequest {
            version: "v1beta1".to_owned(),
            endpoint: resource.socket_name(),
            resource_name: resource.name.clone(),
            options: Some(v1beta1::DevicePluginOptions {
                pre_start_required: false,
                get_preferred_allocation_available: true,
            }),
        };
        tokio::time::timeout(Duration::from_secs(15), client.register(request))
            .await
            .map_err(|_| format!("registering {resource} timed out"))?
            .map_err(|status| format!("the kubelet refused {resource}: {}", status.message()))?;
    }
    Ok(())
}
