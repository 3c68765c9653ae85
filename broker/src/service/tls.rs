//! Mutual TLS on the gRPC port: the broker serves its certificate and accepts
//! only clients with a certificate signed by its CA. The files are watched and
//! loaded again when they change (a renewed certificate or a new CA takes effect
//! for new connections, without a restart); a broken replacement is logged and
//! the files that worked stay in use.
//!
//! A client certificate's common name is an identity, as a token's subject is
//! (`identity_of`); `node:NAME` binds the connection to node NAME.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// How often the files are checked for changes.
pub const RELOAD_PERIOD: Duration = Duration::from_secs(1);
/// How long a client may take to finish the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The files the broker serves with.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// CA certificates client certificates must chain to.
    pub client_ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    fn all(&self) -> [&PathBuf; 3] {
        [&self.client_ca, &self.cert, &self.key]
    }

    /// Modification time and length of each file: a change to any reloads.
    fn stamp(&self) -> Vec<Option<(SystemTime, u64)>> {
        self.all()
            .iter()
            .map(|path| std::fs::metadata(path).ok().and_then(|meta| Some((meta.modified().ok()?, meta.len()))))
            .collect()
    }

    /// A rustls configuration from the files, or what is wrong with them.
    pub fn load(&self) -> Result<rustls::ServerConfig, String> {
        // ring, as kube and tonic here use it (no aws-lc build); rustls deprecates it
        // only for lacking post-quantum key exchange.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for cert in certificates(&self.client_ca)? {
            roots
                .add(cert)
                .map_err(|error| format!("{}: not a usable CA certificate: {error}", self.client_ca.display()))?;
        }
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                .build()
                .map_err(|error| format!("{}: {error}", self.client_ca.display()))?;
        let chain = certificates(&self.cert)?;
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .map_err(|error| format!("{}: no private key in it ({error})", self.key.display()))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|error| format!("TLS versions: {error}"))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|error| format!("{} with {}: {error}", self.cert.display(), self.key.display()))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }
}

fn certificates(path: &PathBuf) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|error| format!("cannot read {}: {error}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|error| format!("{}: {error}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in it", path.display()));
    }
    Ok(certs)
}

/// The serving configuration, replaced when the files change.
#[derive(Debug)]
pub struct ServerTls {
    files: TlsFiles,
    config: RwLock<Arc<rustls::ServerConfig>>,
    stamp: Mutex<Vec<Option<(SystemTime, u64)>>>,
}

impl ServerTls {
    /// Loads the files; fails (with what is wrong) when they do not make a configuration.
    pub fn load(files: TlsFiles) -> Result<Arc<ServerTls>, String> {
        let stamp = files.stamp();
        let config = files.load()?;
        Ok(Arc::new(ServerTls { files, config: RwLock::new(Arc::new(config)), stamp: Mutex::new(stamp) }))
    }

    /// Loads the files again if any changed. Ok(true) when the new ones are in use.
    pub fn reload_if_changed(&self) -> Result<bool, String> {
        let stamp = self.files.stamp();
        let mut last = self.stamp.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if *last == stamp {
            return Ok(false);
        }
        // Remembered before loading: a broken file is reported once, not every second.
        *last = stamp;
        drop(last);
        let config = self.files.load()?;
        *self.config.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(config);
        Ok(true)
    }

    fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(Arc::clone(&self.config.read().unwrap_or_else(|poisoned| poisoned.into_inner())))
    }
}

/// Checks the files every second for as long as the broker runs.
pub async fn watch(tls: Arc<ServerTls>) {
    loop {
        tokio::time::sleep(RELOAD_PERIOD).await;
        match tls.reload_if_changed() {
            Ok(true) => tracing::info!(cert = %tls.files.cert.display(), "TLS files changed: loaded them again"),
            Ok(false) => {}
            Err(problem) => {
                tracing::warn!(%problem, "TLS files changed but cannot be used; still serving with the previous ones")
            }
        }
    }
}

/// TLS connections accepted on `listener`: each handshake runs on its own task,
/// so a slow or hostile client holds up no other. Failed handshakes are logged
/// and dropped (the server goes on).
pub fn incoming(
    listener: TcpListener,
    tls: Arc<ServerTls>,
) -> tokio_stream::wrappers::ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
    let (sender, receiver) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if sender.is_closed() {
                return;
            }
            // Without TCP_NODELAY small HTTP/2 frames wait for delayed ACKs (~40 ms each).
            let _ = stream.set_nodelay(true);
            let acceptor = tls.acceptor();
            let sender = sender.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        let _ = sender.send(Ok(stream)).await;
                    }
                    Ok(Err(error)) => tracing::info!(%peer, %error, "refused a TLS connection"),
                    Err(_) => tracing::info!(%peer, "a TLS handshake took too long; dropped it"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(receiver)
}

/// Who a verified client certificate names: its subject's common name.
pub fn identity_of(cert: &CertificateDer<'_>) -> Result<String, String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|error| format!("the client certificate cannot be read: {error}"))?;
    let common = parsed
        .subject()
        .iter_common_name()
        .next()
        .ok_or_else(|| "the client certificate has no common name (CN) to be known by".to_owned())?;
    let name = common.as_str().map_err(|_| "the client certificate's common name is not text".to_owned())?;
    allot_policy::authz::check_subject(name)
        .map_err(|problem| format!("the client certificate's common name cannot be a subject: {problem}"))?;
    Ok(name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::pki::{Holder, Pki, server_names};
    use allot_api::tls::files;

    #[test]
    fn a_changed_file_is_loaded_again_and_a_broken_one_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = Pki::new(dir.path());
        pki.ensure(&server_names("127.0.0.1:0".parse().expect("address"), &[])).expect("pki");
        let files = TlsFiles {
            client_ca: pki.path(files::CA),
            cert: pki.path(files::SERVER),
            key: pki.path(files::SERVER_KEY),
        };
        let tls = ServerTls::load(files.clone()).expect("load");
        assert_eq!(tls.reload_if_changed(), Ok(false), "nothing changed");
        // A renewed certificate is picked up.
        std::thread::sleep(Duration::from_millis(20));
        pki.issue(&Holder::Server(vec!["localhost".into()]), 1, &files.cert, &files.key).expect("renew");
        assert_eq!(tls.reload_if_changed(), Ok(true));
        // A key that does not match the certificate is refused, and named.
        pki.issue(&Holder::Server(vec!["localhost".into()]), 1, &files.cert, &dir.path().join("other-key.pem"))
            .expect("another");
        let error = tls.reload_if_changed().expect_err("mismatched key");
        assert!(error.contains("server.pem"), "{error}");
        // Reported once, not every check.
        assert_eq!(tls.reload_if_changed(), Ok(false));
        std::fs::write(&files.client_ca, "not a certificate").expect("write");
        let error = tls.reload_if_changed().expect_err("no CA");
        assert!(error.contains("ca.pem") && error.contains("no certificate"), "{error}");
    }

    #[test]
    fn identities_are_common_names() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = Pki::new(dir.path());
        pki.ensure(&["localhost".into()]).expect("pki");
        let cert = |path: PathBuf| certificates(&path).expect("cert").remove(0);
        assert_eq!(identity_of(&cert(pki.path(files::ADMIN))), Ok("admin".to_owned()));
        pki.issue(&Holder::Node("gpu-01".into()), 1, &dir.path().join("n.pem"), &dir.path().join("n-key.pem"))
            .expect("node");
        assert_eq!(identity_of(&cert(dir.path().join("n.pem"))), Ok("node:gpu-01".to_owned()));
        assert!(identity_of(&CertificateDer::from(vec![1, 2, 3])).is_err());
        let bad = pki.issue(&Holder::Client("node:x".into()), 1, &dir.path().join("x.pem"), &dir.path().join("x.key"));
        assert!(bad.is_err(), "node: names are only for nodes");
    }
}
