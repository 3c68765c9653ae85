//! `allot-k8s`: the scheduler extender and pod controller, as one process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use allot_api::bearer::Bearer;
use allot_k8s::broker::Broker;
use allot_k8s::controller::{self, Settings};
use allot_k8s::{App, router};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "allot-k8s", version, about = "kube-scheduler extender and pod controller for Allot")]
struct Args {
    /// The broker's gRPC address: HOST:PORT or https://HOST:PORT (mutual TLS),
    /// or http://HOST:PORT for a broker serving plain text.
    #[arg(long, env = "ALLOT_BROKER", default_value = "127.0.0.1:7443")]
    broker: String,
    /// The CA (PEM) that signed the broker's certificate (default:
    /// ~/.config/allot/pki/ca.pem when it exists).
    #[arg(long, env = "ALLOT_CA", value_name = "FILE")]
    ca: Option<PathBuf>,
    /// This service's certificate (PEM) for mutual TLS (`allot-broker pki issue
    /// --subject NAME`); needs --key.
    #[arg(long, env = "ALLOT_CERT", value_name = "FILE")]
    cert: Option<PathBuf>,
    /// The private key (PEM) of --cert.
    #[arg(long, env = "ALLOT_KEY", value_name = "FILE")]
    key: Option<PathBuf>,

    /// A file holding the bearer token (a subject with `member` in the teams it allocates for).
    #[arg(long, env = "ALLOT_TOKEN_FILE", value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Where the extender listens (kube-scheduler's `urlPrefix` points here).
    #[arg(long, default_value = "0.0.0.0:8888")]
    listen: SocketAddr,
    /// The kubeconfig; default: in-cluster, then $KUBECONFIG, then ~/.kube/config.
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// The namespace label that names a namespace's Allot team.
    #[arg(long, default_value = "allot.io/team")]
    team_label: String,
    /// The resource domain of Allot's resources (as allot-node's --resource-domain).
    #[arg(long, default_value = "allot.io")]
    resource_domain: String,
    /// Seconds between the controller's passes.
    #[arg(long, default_value_t = 1.0)]
    poll: f64,
    /// Seconds an allocation whose pod is not seen yet is left alone.
    #[arg(long, default_value_t = 10.0)]
    gone_grace: f64,
}

async fn kube_client(kubeconfig: Option<&PathBuf>) -> Result<kube::Client, String> {
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .map_err(|error| format!("--kubeconfig {}: {error}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|error| format!("--kubeconfig {}: {error}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|error| format!("no Kubernetes configuration found (give --kubeconfig): {error}"))?,
    };
    kube::Client::try_from(config).map_err(|error| format!("cannot make a Kubernetes client: {error}"))
}

fn seconds(value: f64, flag: &str) -> Result<Duration, String> {
    Duration::try_from_secs_f64(value).map_err(|_| format!("{flag} {value}: give a non-negative number of seconds"))
}

async fn run(args: Args) -> Result<(), String> {
    let bearer = match &args.token_file {
        Some(path) => Bearer::from_file(path)?,
        None => Bearer::default(),
    };
    let settings =
        Settings { poll: seconds(args.poll, "--poll")?, gone_grace: seconds(args.gone_grace, "--gone-grace")? };
    let tls = allot_api::tls::ClientTls { ca: args.ca.clone(), cert: args.cert.clone(), key: args.key.clone() }
        .with_defaults(false);
    let broker = Broker::new(&args.broker, bearer, &tls)?;
    let kube = kube_client(args.kubeconfig.as_ref()).await?;
    let app = App::new(broker, kube, &args.resource_domain, &args.team_label);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|error| format!("cannot listen on {}: {error}", args.listen))?;
    let address = listener.local_addr().map_err(|error| error.to_string())?;
    tracing::info!(%address, broker = %args.broker, "allot-k8s serving the scheduler extender");
    eprintln!("allot-k8s: listening on {address}");
    tokio::spawn(controller::run(app.clone(), settings));
    axum::serve(listener, router(app))
        .with_graceful_shutdown(async {
            allot_api::shutdown::signal().await;
        })
        .await
        .map_err(|error| format!("the extender server stopped: {error}"))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("allot-k8s: error: cannot start: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("allot-k8s: error: {error}");
            ExitCode::FAILURE
        }
    }
}
