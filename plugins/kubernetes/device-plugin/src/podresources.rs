//! Which devices pods still hold, from the kubelet's pod resources API, so that
//! an allocation made for a pod is released at the broker once the pod is gone.
//! When the API cannot be read nothing is released: a missed release costs
//! capacity until the next read, a wrong one would take a running pod's GPU.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use crate::kubelet::connect;
use crate::plugin::Plugins;
use crate::podresources_v1 as api;

/// Every (resource name, device id) a pod's container holds now.
pub async fn held_devices(socket: &Path) -> Result<BTreeSet<(String, String)>, String> {
    let channel = connect(socket).await.map_err(|error| format!("cannot connect to {}: {error}", socket.display()))?;
    let mut client = api::pod_resources_lister_client::PodResourcesListerClient::new(channel);
    let response = tokio::time::timeout(Duration::from_secs(10), client.list(api::ListPodResourcesRequest {}))
        .await
        .map_err(|_| "the pod resources list timed out".to_owned())?
        .map_err(|status| format!("the kubelet refused the pod resources list: {}", status.message()))?
        .into_inner();
    let mut held = BTreeSet::new();
    for pod in response.pod_resources {
        for container in pod.containers {
            for devices in container.devices {
                for id in devices.device_ids {
                    held.insert((devices.resource_name.clone(), id));
                }
            }
        }
    }
    Ok(held)
}

/// Reads pod resources every poll interval and releases what no pod holds.
pub async fn release_loop(plugins: Plugins) {
    let Some(socket) = plugins.config().pod_resources_socket.clone() else {
        tracing::warn!("no pod resources socket: allocations made for pods are not released when pods end");
        return;
    };
    let mut warned = false;
    loop {
        tokio::time::sleep(plugins.config().release_poll).await;
        match held_devices(&socket).await {
            Ok(held) => {
                warned = false;
                plugins.release_unclaimed(&held).await;
            }
            Err(problem) if !warned => {
                tracing::warn!(%problem, "cannot read pod resources; releasing nothing until it can");
                warned = true;
            }
            Err(_) => {}
        }
    }
}
