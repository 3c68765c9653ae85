//! Configuration: raw command-line arguments, then a validated `ServeConfig`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "allot-broker", version, about = "Allot's broker: places GPU work on the cluster and keeps its state")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the gRPC API (and a small HTTP endpoint for health and metrics).
    Serve(Box<ServeArgs>),
    /// The broker's private CA: create it, and sign certificates for people and nodes.
    #[command(subcommand)]
    Pki(PkiCommand),
}

#[derive(Debug, Subcommand)]
pub enum PkiCommand {
    /// Create the CA, the broker's certificate and the admin's in DIR (what is
    /// missing only; `serve` does the same on its first start).
    Init {
        /// The PKI directory.
        #[arg(long, value_name = "DIR")]
        pki: Option<PathBuf>,
        /// More names (DNS or IP) for the broker's certificate, besides
        /// localhost, 127.0.0.1, ::1 and this host's name.
        #[arg(long = "san", value_name = "NAME")]
        sans: Vec<String>,
    },
    /// Sign a certificate with the CA in DIR: for a person or service (its
    /// subject, which grants apply to), a node daemon, or another broker.
    Issue {
        #[arg(long, value_name = "DIR")]
        pki: Option<PathBuf>,
        /// A person or service: the subject grants and the audit log name.
        #[arg(long, conflicts_with_all = ["node", "server"])]
        subject: Option<String>,
        /// A node daemon: it may register and act as this node only.
        #[arg(long, conflicts_with = "server")]
        node: Option<String>,
        /// A broker serving under these names (DNS or IP; repeat --san).
        #[arg(long, requires = "sans")]
        server: bool,
        #[arg(long = "san", value_name = "NAME")]
        sans: Vec<String>,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = crate::service::pki::DEFAULT_DAYS)]
        days: u32,
        /// Where to write it: PREFIX.pem and PREFIX-key.pem (default: in DIR,
        /// under users/, nodes/ or servers/, named by the subject).
        #[arg(long, value_name = "PREFIX")]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Where cluster state lives: `embedded:DIR` (one machine) or `etcd:URL[,URL...]`.
    #[arg(long, default_value = "embedded:/var/lib/allot")]
    pub store: String,
    /// gRPC address; port 0 picks a free one (see --ready-file).
    #[arg(long, default_value = "127.0.0.1:7443")]
    pub listen: String,
    /// HTTP address for /healthz, /readyz and /metrics; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:7080")]
    pub http: String,
    /// A node whose heartbeats stop for this long is marked lost (`30s`, `500ms`, `2m`).
    #[arg(long, default_value = "30s")]
    pub node_timeout: String,
    /// How often nodes are asked to heartbeat.
    #[arg(long, default_value = "5s")]
    pub heartbeat_interval: String,
    /// Once serving, write the bound addresses here as JSON (`{"grpc": ..., "http": ...}`).
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// How long a borrowed allocation that is reclaimed for a team below its
    /// guarantee keeps running before it is preempted.
    #[arg(long, default_value = "30s")]
    pub reclaim_grace: String,
    /// Half-life of past usage in fair share (`24h`); `off` orders by current usage only.
    #[arg(long, default_value = "24h")]
    pub usage_half_life: String,
    /// How long released and preempted allocations stay listed (and stored) after
    /// they finished (`7d`, `12h`); older ones are deleted, live ones never.
    #[arg(long, default_value = crate::rounds::retention::DEFAULT_RETENTION)]
    pub released_retention: String,
    /// On first start (no token in the store yet) create an admin token and write it
    /// here, readable only by its owner. Default with the embedded store:
    /// `$HOME/.config/allot/admin.token`, where allotctl looks for it.
    #[arg(long, value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Also write a token for node daemons here on first start (role `node`).
    #[arg(long, value_name = "FILE")]
    pub node_token_file: Option<PathBuf>,
    /// The CA and certificates for mutual TLS on --listen (see `allot-broker
    /// pki`); what is missing is created on start. Default:
    /// `$HOME/.config/allot/pki`, where allotctl looks for them.
    #[arg(long, value_name = "DIR", conflicts_with = "plaintext")]
    pub pki: Option<PathBuf>,
    /// More names (DNS or IP) for a certificate the broker creates for itself.
    #[arg(long = "tls-san", value_name = "NAME")]
    pub tls_sans: Vec<String>,
    /// Serve gRPC in plain text, without TLS or client certificates: anyone who
    /// can reach the port reads tokens off the wire. For tests and networks that
    /// protect the port otherwise.
    #[arg(long)]
    pub plaintext: bool,
    /// Send traces of the request path (create, placement, commit) to this
    /// OpenTelemetry collector over OTLP/gRPC, like http://127.0.0.1:4317.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,
}

/// Mutual TLS on the gRPC port.
#[derive(Debug, Clone)]
pub struct TlsSetup {
    pub pki: PathBuf,
    pub sans: Vec<String>,
}

/// The PKI directory asked for, else the default one.
pub fn pki_dir(asked: Option<&PathBuf>) -> Result<PathBuf, ConfigError> {
    asked.cloned().or_else(allot_api::tls::default_pki_dir).ok_or_else(|| ConfigError {
        flag: "pki",
        value: String::new(),
        problem: "no directory given and neither HOME nor XDG_CONFIG_HOME is set: pass --pki DIR".into(),
    })
}

/// Where state is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSpec {
    Embedded(PathBuf),
    Etcd(Vec<String>),
}

/// A configuration that has been checked.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub store: StoreSpec,
    pub listen: SocketAddr,
    pub http: SocketAddr,
    pub node_timeout: Duration,
    pub heartbeat_interval: Duration,
    pub ready_file: Option<PathBuf>,
    pub policy: crate::rounds::sharing::PolicySettings,
    /// Where to write the first admin token (None: create none).
    pub admin_token_file: Option<PathBuf>,
    pub node_token_file: Option<PathBuf>,
    /// None: plain text, because --plaintext asked for it.
    pub tls: Option<TlsSetup>,
    pub otlp_endpoint: Option<String>,
}

/// A configuration value that is wrong, with the flag and the fix.
#[derive(Debug, thiserror::Error)]
#[error("--{flag} {value:?}: {problem}")]
pub struct ConfigError {
    pub flag: &'static str,
    pub value: String,
    pub problem: String,
}

/// The longest duration any flag takes (400 days).
const MAX_DURATION_S: f64 = 400.0 * 86_400.0;

/// Parses `30s`, `500ms`, `2m`, `1h`, `7d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().map_err(|_| "expected a number and a unit, like 30s or 500ms".to_owned())?;
    let seconds = match unit {
        "ms" => number / 1000.0,
        "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        "d" => number * 86_400.0,
        "" => return Err("add a unit: ms, s, m, h or d".to_owned()),
        other => return Err(format!("unknown unit {other:?}: use ms, s, m, h or d")),
    };
    if !(seconds.is_finite() && seconds > 0.0) {
        return Err("must be positive".to_owned());
    }
    if seconds > MAX_DURATION_S {
        return Err("must be at most 400d".to_owned());
    }
    Ok(Duration::from_secs_f64(seconds))
}

pub fn parse_store(text: &str) -> Result<StoreSpec, String> {
    if let Some(dir) = text.strip_prefix("embedded:") {
        if dir.is_empty() {
            return Err("name a directory: embedded:/var/lib/allot".to_owned());
        }
        return Ok(StoreSpec::Embedded(PathBuf::from(dir)));
    }
    if let Some(urls) = text.strip_prefix("etcd:") {
        let endpoints: Vec<String> =
            urls.split(',').map(str::trim).filter(|url| !url.is_empty()).map(str::to_owned).collect();
        if endpoints.is_empty() {
            return Err("name at least one endpoint: etcd:http://127.0.0.1:2379".to_owned());
        }
        return Ok(StoreSpec::Etcd(endpoints));
    }
    Err("use embedded:DIR or etcd:URL[,URL...]".to_owned())
}

impl ServeArgs {
    pub fn validate(&self) -> Result<ServeConfig, ConfigError> {
        let error = |flag, value: &str, problem: String| ConfigError { flag, value: value.to_owned(), problem };
        let store = parse_store(&self.store).map_err(|problem| error("store", &self.store, problem))?;
        let address = |flag, value: &str| -> Result<SocketAddr, ConfigError> {
            value.parse().map_err(|_| error(flag, value, "expected IP:PORT, like 127.0.0.1:7443".to_owned()))
        };
        let node_timeout =
            parse_duration(&self.node_timeout).map_err(|problem| error("node-timeout", &self.node_timeout, problem))?;
        let heartbeat_interval = parse_duration(&self.heartbeat_interval)
            .map_err(|problem| error("heartbeat-interval", &self.heartbeat_interval, problem))?;
        if heartbeat_interval >= node_timeout {
            return Err(error(
                "heartbeat-interval",
                &self.heartbeat_interval,
                format!("must be shorter than --node-timeout ({}), or every node would be lost", self.node_timeout),
            ));
        }
        let grace = parse_duration(&self.reclaim_grace)
            .map_err(|problem| error("reclaim-grace", &self.reclaim_grace, problem))?;
        let half_life = if self.usage_half_life == "off" {
            Duration::ZERO
        } else {
            parse_duration(&self.usage_half_life)
                .map_err(|problem| error("usage-half-life", &self.usage_half_life, format!("{problem} (or off)")))?
        };
        let released_retention = parse_duration(&self.released_retention)
            .map_err(|problem| error("released-retention", &self.released_retention, problem))?;
        let admin_token_file = match (&self.admin_token_file, &store) {
            (Some(path), _) => Some(path.clone()),
            (None, StoreSpec::Embedded(_)) => allot_api::bearer::default_admin_token_file(),
            (None, StoreSpec::Etcd(_)) => None,
        };
        let tls = if self.plaintext {
            None
        } else {
            Some(TlsSetup { pki: pki_dir(self.pki.as_ref())?, sans: self.tls_sans.clone() })
        };
        Ok(ServeConfig {
            tls,
            otlp_endpoint: self.otlp_endpoint.clone().filter(|endpoint| !endpoint.is_empty()),
            policy: crate::rounds::sharing::PolicySettings { grace, half_life, released_retention },
            admin_token_file,
            node_token_file: self.node_token_file.clone(),
            store,
            listen: address("listen", &self.listen)?,
            http: address("http", &self.http)?,
            node_timeout,
            heartbeat_interval,
            ready_file: self.ready_file.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_units() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("400d"), Ok(Duration::from_secs(400 * 86_400)));
        assert_eq!(parse_duration("401d"), Err("must be at most 400d".to_owned()));
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("fast").is_err());
    }

    #[test]
    fn released_retention_defaults_to_a_week_and_names_its_flag() {
        let serve = |extra: &[&str]| {
            let mut args = vec!["allot-broker", "serve", "--store", "embedded:/tmp/x"];
            args.extend_from_slice(extra);
            match Cli::parse_from(args).command {
                Command::Serve(args) => args.validate(),
                Command::Pki(_) => unreachable!("serve was parsed"),
            }
        };
        let config = serve(&[]).expect("defaults are valid");
        assert_eq!(config.policy.released_retention, Duration::from_secs(7 * 86_400));
        let config = serve(&["--released-retention", "90s"]).expect("valid");
        assert_eq!(config.policy.released_retention, Duration::from_secs(90));
        let error = serve(&["--released-retention", "forever"]).expect_err("not a duration").to_string();
        assert!(error.starts_with("--released-retention \"forever\""), "{error}");
    }

    #[test]
    fn stores_are_embedded_or_etcd() {
        assert_eq!(parse_store("embedded:/tmp/a"), Ok(StoreSpec::Embedded("/tmp/a".into())));
        assert_eq!(
            parse_store("etcd:http://a:2379,http://b:2379"),
            Ok(StoreSpec::Etcd(vec!["http://a:2379".into(), "http://b:2379".into()]))
        );
        assert!(parse_store("redis:x").is_err());
        assert!(parse_store("etcd:").is_err());
    }
}
