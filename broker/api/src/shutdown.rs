//! When a long-running Allot process should stop: the one definition the broker
//! and the node daemon share.

/// Resolves on Ctrl-C (SIGINT) or, on Unix, SIGTERM (what systemd and Kubernetes
/// send). Where SIGTERM cannot be watched, Ctrl-C alone ends it.
pub async fn signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        if let Ok(mut terminate) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            tokio::select! {
                _ = interrupt => {}
                _ = terminate.recv() => {}
            }
            return;
        }
    }
    let _ = interrupt.await;
}
