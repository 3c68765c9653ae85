//! How clients reach the broker: TLS with the broker's CA and, for mutual TLS,
//! a client certificate. Every client (allotctl, allot-node, allot-k8s) builds its
//! channel here, so they share one rule for addresses:
//!
//! - `https://HOST:PORT` or a bare `HOST:PORT`: TLS. The CA is `--ca`, else
//!   `ca.pem` in the default PKI directory (where a single-machine broker writes it);
//!   a client certificate is sent when one is given.
//! - `http://HOST:PORT`: plain text, only because the address asks for it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// The TLS material a client was given (any of it may be missing).
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    /// PEM file of the CA that signed the broker's certificate.
    pub ca: Option<PathBuf>,
    /// PEM certificate and key this client presents (mutual TLS).
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// File names in a PKI directory (see `allot-broker pki`).
pub mod files {
    pub const CA: &str = "ca.pem";
    pub const CA_KEY: &str = "ca-key.pem";
    pub const SERVER: &str = "server.pem";
    pub const SERVER_KEY: &str = "server-key.pem";
    pub const ADMIN: &str = "admin.pem";
    pub const ADMIN_KEY: &str = "admin-key.pem";
}

/// Where a single-machine broker keeps its CA and certificates, and where
/// clients look for them: `$XDG_CONFIG_HOME/allot/pki`, else `~/.config/allot/pki`.
pub fn default_pki_dir() -> Option<PathBuf> {
    crate::bearer::default_admin_token_file().and_then(|file| file.parent().map(|dir| dir.join("pki")))
}

impl ClientTls {
    /// The given files, with the CA (and, when `default_identity`, the admin's
    /// certificate) taken from the default PKI directory when not given and there.
    pub fn with_defaults(mut self, default_identity: bool) -> ClientTls {
        let Some(dir) = default_pki_dir() else { return self };
        if self.ca.is_none() && dir.join(files::CA).is_file() {
            self.ca = Some(dir.join(files::CA));
        }
        if default_identity
            && self.cert.is_none()
            && self.key.is_none()
            && dir.join(files::ADMIN).is_file()
            && dir.join(files::ADMIN_KEY).is_file()
        {
            self.cert = Some(dir.join(files::ADMIN));
            self.key = Some(dir.join(files::ADMIN_KEY));
        }
        self
    }

    fn config(&self, address: &str) -> Result<ClientTlsConfig, String> {
        let ca = self.ca.as_deref().ok_or_else(|| {
            format!(
                "{address} is reached over TLS, but no CA is known: pass --ca FILE (ca.pem in the broker's --pki \
                 directory), or write http://{address} for a broker serving plain text (--plaintext)"
            )
        })?;
        let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca, "CA")?));
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                config = config.identity(Identity::from_pem(read(cert, "certificate")?, read(key, "key")?));
            }
            (None, None) => {}
            (Some(_), None) => return Err("--cert needs --key (the certificate's private key)".to_owned()),
            (None, Some(_)) => return Err("--key needs --cert (the certificate for that key)".to_owned()),
        }
        Ok(config)
    }
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    let bytes =
        std::fs::read(path).map_err(|error| format!("cannot read the {what} file {}: {error}", path.display()))?;
    if !String::from_utf8_lossy(&bytes).contains("-----BEGIN ") {
        return Err(format!("the {what} file {} is not PEM (no -----BEGIN line)", path.display()));
    }
    Ok(bytes)
}

/// Whether an address asks for plain text.
pub fn is_plaintext(address: &str) -> bool {
    address.starts_with("http://")
}

/// A channel endpoint for a broker address under the rule above, with the
/// timeouts every client uses.
pub fn endpoint(
    address: &str,
    tls: &ClientTls,
    connect_timeout: Duration,
    timeout: Duration,
) -> Result<Endpoint, String> {
    let address = address.trim();
    let plaintext = is_plaintext(address);
    let uri = if address.contains("://") { address.to_owned() } else { format!("https://{address}") };
    if !plaintext && !uri.starts_with("https://") {
        return Err(format!("{address}: use HOST:PORT, https://HOST:PORT, or http://HOST:PORT for plain text"));
    }
    let mut endpoint = Endpoint::from_shared(uri).map_err(|error| format!("{address}: {error}"))?;
    if !plaintext {
        endpoint = endpoint
            .tls_config(tls.config(address)?)
            .map_err(|error| format!("cannot use the TLS files for {address}: {error}"))?;
    }
    Ok(endpoint.connect_timeout(connect_timeout).timeout(timeout))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn addresses_choose_tls_unless_they_ask_for_plain_text() {
        let none = ClientTls::default();
        assert!(endpoint("http://127.0.0.1:7443", &none, SECOND, SECOND).is_ok());
        let error = endpoint("127.0.0.1:7443", &none, SECOND, SECOND).expect_err("TLS needs a CA");
        assert!(error.contains("--ca") && error.contains("http://127.0.0.1:7443"), "{error}");
        assert!(endpoint("https://127.0.0.1:7443", &none, SECOND, SECOND).is_err());
        let error = endpoint("ftp://x:1", &none, SECOND, SECOND).expect_err("scheme");
        assert!(error.contains("https://"), "{error}");
    }

    #[test]
    fn bad_tls_files_are_named() {
        let dir = std::env::temp_dir().join(format!("allot-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let not_pem = dir.join("ca.txt");
        std::fs::write(&not_pem, "hello").expect("write");
        let tls = ClientTls { ca: Some(not_pem.clone()), ..ClientTls::default() };
        let error = endpoint("127.0.0.1:1", &tls, SECOND, SECOND).expect_err("not PEM");
        assert!(error.contains("not PEM") && error.contains("ca.txt"), "{error}");
        let missing = ClientTls { ca: Some(dir.join("missing.pem")), ..ClientTls::default() };
        let error = endpoint("127.0.0.1:1", &missing, SECOND, SECOND).expect_err("missing");
        assert!(error.contains("missing.pem"), "{error}");
        std::fs::write(&not_pem, "-----BEGIN CERTIFICATE-----\n").expect("write");
        let half = ClientTls { ca: Some(not_pem), cert: Some(dir.join("c.pem")), key: None };
        let error = endpoint("127.0.0.1:1", &half, SECOND, SECOND).expect_err("cert without key");
        assert!(error.contains("--key"), "{error}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
