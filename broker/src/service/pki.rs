//! The broker's private CA, for a single-machine or small cluster that has no
//! PKI of its own: `allot-broker serve` creates it on first start, and
//! `allot-broker pki issue` signs certificates for people and nodes with it.
//!
//! A PKI directory holds `ca.pem` and `ca-key.pem` (the CA), `server.pem` and
//! `server-key.pem` (what the broker serves), and `admin.pem`/`admin-key.pem`
//! (a client certificate for subject `admin`, the first platform admin, which
//! allotctl finds by default). A cluster with its own CA puts its files under the
//! same names and the broker creates nothing.
//!
//! A certificate's subject is its common name: a person or service (`alice`),
//! or `node:NAME` for the node daemon of node NAME, which may register and act as
//! that node only. Keys are ECDSA P-256, written readable by their owner only.

use std::path::{Path, PathBuf};

use allot_api::tls::files;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// How long certificates are valid: the CA ten years, others `--days` (a year by default).
const CA_DAYS: i64 = 3650;
pub const DEFAULT_DAYS: u32 = 365;

/// The prefix of a node daemon's subject.
pub const NODE_PREFIX: &str = "node:";

/// A problem with the PKI directory or a certificate, with the path it concerns.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {problem}")]
pub struct PkiError {
    pub what: String,
    pub problem: String,
}

fn pki_error(what: impl Into<String>, problem: impl ToString) -> PkiError {
    PkiError { what: what.into(), problem: problem.to_string() }
}

/// What a certificate is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// A person or service, by subject (`alice`, `admin`, `yarn-rm`).
    Client(String),
    /// The node daemon of one node.
    Node(String),
    /// A broker, under these DNS names and IP addresses.
    Server(Vec<String>),
}

impl Holder {
    fn common_name(&self) -> String {
        match self {
            Holder::Client(subject) => subject.clone(),
            Holder::Node(name) => format!("{NODE_PREFIX}{name}"),
            Holder::Server(_) => "allot-broker".to_owned(),
        }
    }

    fn check(&self) -> Result<(), PkiError> {
        match self {
            Holder::Client(subject) => {
                allot_policy::authz::check_subject(subject).map_err(|problem| pki_error("--subject", problem))?;
                if subject.starts_with(NODE_PREFIX) {
                    return Err(pki_error("--subject", "node: subjects are for nodes; use --node NAME"));
                }
                Ok(())
            }
            Holder::Node(name) => name
                .parse::<allot_api::allocation::NodeName>()
                .map(|_| ())
                .map_err(|problem| pki_error("--node", problem)),
            Holder::Server(names) if names.is_empty() => Err(pki_error("--san", "a server needs at least one name")),
            Holder::Server(_) => Ok(()),
        }
    }
}

/// A PKI directory.
#[derive(Debug, Clone)]
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    pub fn new(dir: impl Into<PathBuf>) -> Pki {
        Pki { dir: dir.into() }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Creates what is missing for serving: the CA, the broker's certificate
    /// (for `names`) and the admin's. Returns the files it wrote.
    pub fn ensure(&self, names: &[String]) -> Result<Vec<PathBuf>, PkiError> {
        let mut created = Vec::new();
        let (ca, ca_key) = (self.path(files::CA), self.path(files::CA_KEY));
        match (ca.exists(), ca_key.exists()) {
            (false, false) => {
                self.create_ca()?;
                created.extend([ca, ca_key]);
            }
            (true, _) => {}
            (false, true) => {
                return Err(pki_error(ca.display().to_string(), "missing while ca-key.pem exists; restore it"));
            }
        }
        for (holder, cert, key) in [
            (Holder::Server(names.to_vec()), files::SERVER, files::SERVER_KEY),
            (Holder::Client("admin".to_owned()), files::ADMIN, files::ADMIN_KEY),
        ] {
            let (cert, key) = (self.path(cert), self.path(key));
            if !cert.exists() {
                self.issue(&holder, DEFAULT_DAYS, &cert, &key)?;
                created.extend([cert, key]);
            }
        }
        Ok(created)
    }

    fn create_ca(&self) -> Result<(), PkiError> {
        let key = KeyPair::generate().map_err(|error| pki_error("the CA key", error))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(&format!("Allot CA {}", crate::hostname()));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        validity(&mut params, CA_DAYS);
        let cert = params.self_signed(&key).map_err(|error| pki_error("the CA certificate", error))?;
        write(&self.path(files::CA_KEY), &key.serialize_pem(), true)?;
        write(&self.path(files::CA), &cert.pem(), false)
    }

    /// Signs a certificate for `holder` with the CA, valid for `days`, and writes
    /// it and its new key (readable by its owner only).
    pub fn issue(&self, holder: &Holder, days: u32, cert_out: &Path, key_out: &Path) -> Result<(), PkiError> {
        holder.check()?;
        if days == 0 || days > 3650 {
            return Err(pki_error("--days", format!("{days} must be between 1 and 3650")));
        }
        let ca_path = self.path(files::CA);
        let ca_key_path = self.path(files::CA_KEY);
        let ca_pem = std::fs::read_to_string(&ca_path).map_err(|error| {
            pki_error(
                ca_path.display().to_string(),
                format!("{error}; create the CA with allot-broker serve or pki init"),
            )
        })?;
        let ca_key_pem = std::fs::read_to_string(&ca_key_path).map_err(|error| {
            pki_error(
                ca_key_path.display().to_string(),
                format!("{error}; certificates are signed where the CA key is"),
            )
        })?;
        let ca_key =
            KeyPair::from_pem(&ca_key_pem).map_err(|error| pki_error(ca_key_path.display().to_string(), error))?;
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)
            .map_err(|error| pki_error(ca_path.display().to_string(), error))?;
        let key = KeyPair::generate().map_err(|error| pki_error("a new key", error))?;
        let mut params = match holder {
            Holder::Server(names) => CertificateParams::new(names.clone())
                .map_err(|error| pki_error("--san", format!("{names:?}: {error}")))?,
            _ => CertificateParams::default(),
        };
        params.distinguished_name = name(&holder.common_name());
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = match holder {
            Holder::Server(_) => vec![ExtendedKeyUsagePurpose::ServerAuth],
            _ => vec![ExtendedKeyUsagePurpose::ClientAuth],
        };
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, i64::from(days));
        let cert = params.signed_by(&key, &issuer).map_err(|error| pki_error("the certificate", error))?;
        write(key_out, &key.serialize_pem(), true)?;
        write(cert_out, &cert.pem(), false)
    }
}

fn name(common: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common);
    name.push(DnType::OrganizationName, "Allot");
    name
}

/// Valid from an hour ago (clocks differ a little) for `days`.
fn validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days);
}

/// Writes a PEM file whole (then renamed, so a reloading broker never reads half
/// of one); keys are readable by their owner only, in a 0700 directory.
fn write(path: &Path, pem: &str, secret: bool) -> Result<(), PkiError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let failed = |error: std::io::Error| pki_error(path.display().to_string(), error);
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(failed)?;
    }
    let partial = path.with_extension("partial");
    let mode = if secret { 0o600 } else { 0o644 };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&partial)
        .map_err(failed)?;
    std::io::Write::write_all(&mut file, pem.as_bytes()).map_err(failed)?;
    std::fs::rename(&partial, path).map_err(failed)
}

/// The names a broker's certificate is made for: loopback, this host, and the
/// listen address when it is a specific one.
pub fn server_names(listen: std::net::SocketAddr, extra: &[String]) -> Vec<String> {
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned(), crate::hostname()];
    if !listen.ip().is_unspecified() {
        names.push(listen.ip().to_string());
    }
    names.extend(extra.iter().cloned());
    names.sort();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ensure_creates_a_ca_and_certificates_once_with_private_keys() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = Pki::new(dir.path().join("pki"));
        let created = pki.ensure(&server_names("127.0.0.1:7443".parse().expect("address"), &[])).expect("ensure");
        assert_eq!(created.len(), 6, "{created:?}");
        let mode = std::fs::metadata(pki.path(files::CA_KEY)).expect("key").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let before = std::fs::read(pki.path(files::SERVER)).expect("server");
        assert!(pki.ensure(&[]).expect("again").is_empty(), "nothing is remade");
        assert_eq!(std::fs::read(pki.path(files::SERVER)).expect("server"), before);
        // Issued certificates name their holder.
        let out = dir.path().join("nodes");
        pki.issue(&Holder::Node("gpu-01".into()), 30, &out.join("gpu-01.pem"), &out.join("gpu-01-key.pem"))
            .expect("node certificate");
        assert!(out.join("gpu-01-key.pem").exists());
        let error = pki.issue(&Holder::Node("bad name!".into()), 30, &out.join("x.pem"), &out.join("x-key.pem"));
        assert!(error.expect_err("bad node name").to_string().starts_with("--node"));
        // Without the CA key nothing is signed, and the error says where it looked.
        let elsewhere = Pki::new(dir.path().join("empty"));
        let error = elsewhere.issue(&Holder::Client("alice".into()), 30, &out.join("a.pem"), &out.join("a-key.pem"));
        assert!(error.expect_err("no CA").to_string().contains("ca.pem"));
    }
}
