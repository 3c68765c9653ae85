//! `allot-node run --kubelet-socket`: runs the kubelet's device plugins
//! (crate `allot-device-plugin`) beside the agent, over the state the agent
//! publishes. The device plugin code lives in `plugins/kubernetes/`; this module
//! only turns arguments into its configuration and starts its tasks.

use std::path::{Path, PathBuf};
use std::time::Duration;

use allot_api::bearer::Bearer;
use allot_device_plugin::{Config, NodeSnapshot, Plugins, cdi, kubelet, podresources, resources};
use tokio::sync::watch;
use tonic::transport::Endpoint;

use crate::cli::KubeletArgs;

/// The checked configuration of device plugin mode.
#[derive(Debug, Clone)]
pub struct Settings {
    config: Config,
}

impl Settings {
    /// `None` when the kubelet is not asked for; an error names the flag and the rule.
    pub fn from_args(args: &KubeletArgs, node: &str, state_dir: &Path) -> Result<Option<Settings>, String> {
        let Some(kubelet_socket) = args.kubelet_socket.clone() else { return Ok(None) };
        // Every name the node could offer starts with the domain: check it now,
        // with a name of each shape, rather than when the kubelet refuses.
        for shape in ["gpu", "gpu-share", "mig-3g.40gb"] {
            resources::check_name(&format!("{}/{shape}", args.resource_domain))
                .map_err(|error| format!("--resource-domain: {error}"))?;
        }
        let team = args.kubelet_team.parse().map_err(|error| format!("--kubelet-team: {error}"))?;
        let node = node.parse().map_err(|error| format!("the node name: {error}"))?;
        if kubelet_socket.parent().is_none_or(|parent| parent.as_os_str().is_empty()) {
            return Err(format!(
                "--kubelet-socket {}: give the path of the kubelet's socket, whose directory the plugin sockets go in",
                kubelet_socket.display()
            ));
        }
        let cdi_dir = match args.cdi_dir.as_str() {
            "none" | "" => None,
            dir => Some(PathBuf::from(dir)),
        };
        Ok(Some(Settings {
            config: Config {
                node,
                kubelet_socket,
                pod_resources_socket: Some(args.pod_resources_socket.clone()),
                prefix: args.resource_domain.clone(),
                team,
                state_dir: state_dir.to_owned(),
                cdi_dir,
                release_poll: Duration::from_secs_f64(args.release_poll),
                release_grace: Duration::from_secs_f64(args.release_grace),
                enforce_timeout: Duration::from_secs(60),
            },
        }))
    }
}

/// Waits for the node's first inventory, then serves the device plugins, keeps
/// the CDI spec written and releases what pods no longer hold, until `stopped`.
pub async fn run(
    settings: Settings,
    mut snapshot: watch::Receiver<NodeSnapshot>,
    broker: String,
    bearer: Bearer,
    mut stopped: watch::Receiver<bool>,
) -> Result<(), String> {
    let uri = if broker.contains("://") { broker } else { format!("http://{broker}") };
    let channel = Endpoint::from_shared(uri.clone())
        .map_err(|error| format!("invalid broker address {uri:?}: {error}"))?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(30))
        .connect_lazy();
    // The resources follow the node's MIG profiles, so wait until it is mapped.
    tokio::select! {
        mapped = snapshot.wait_for(|snapshot| snapshot.inventory.is_some()) => {
            mapped.map_err(|_| "the node was never mapped".to_owned())?;
        }
        _ = stopped.wait_for(|stop| *stop) => return Ok(()),
    }
    let plugins =
        Plugins::new(settings.config.clone(), snapshot.clone(), channel, bearer).map_err(|error| error.to_string())?;
    let names: Vec<&str> = plugins.resources().iter().map(|resource| resource.name.as_str()).collect();
    tracing::info!(resources = ?names, kubelet = %settings.config.kubelet_socket.display(), "device plugin mode");
    if let Some(dir) = settings.config.cdi_dir.clone() {
        tokio::spawn(cdi::keep_written(dir, settings.config.prefix.clone(), snapshot.clone()));
    }
    let releases = tokio::spawn(podresources::release_loop(plugins.clone()));
    kubelet::serve(plugins, async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    })
    .await;
    releases.abort();
    Ok(())
}
