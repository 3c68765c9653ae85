//! The `allot-node` binary: parses arguments, prepares the environment, and calls
//! the library.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use allot_node::agent::{self, AgentConfig, EnforceConfig};
use allot_node::cli::{CgroupDriverArg, Cli, Command, DiscoveryPlan, HardwareArgs};
use allot_node::enforce::cgroup::DriverChoice;
use allot_node::kubelet;
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Exec(args) => {
            // Returns only when the command could not be started.
            let error = allot_node::exec::exec(&args.state_dir, &args.allocation, &args.command);
            fail(&error)
        }
        Command::Inventory(args) => {
            let plan = match prepare(&args.hardware) {
                Ok(plan) => plan,
                Err(error) => return fail(&error),
            };
            match allot_node::cli::inventory(&plan, args.output) {
                Ok(text) => print(&text),
                Err(error) => fail(&error),
            }
        }
        Command::Run(args) => {
            let plan = match prepare(&args.hardware) {
                Ok(plan) => plan,
                Err(error) => return fail(&error),
            };
            if !(args.heartbeat_interval > 0.0 && args.heartbeat_interval.is_finite()) {
                eprintln!("allot-node: error: --heartbeat-interval must be a positive number of seconds");
                return ExitCode::FAILURE;
            }
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
                )
                .with_writer(std::io::stderr)
                .init();
            let enforce = &args.enforce;
            for (flag, value) in [
                ("--reconcile-interval", enforce.reconcile_interval),
                ("--xid-quiet-period", enforce.xid_quiet_period),
                ("--release-poll", args.kubelet.release_poll),
                ("--release-grace", args.kubelet.release_grace),
            ] {
                if !(value > 0.0 && value.is_finite()) {
                    eprintln!("allot-node: error: {flag} must be a positive number of seconds");
                    return ExitCode::FAILURE;
                }
            }
            let bearer = match &args.token_file {
                Some(path) => match allot_api::bearer::Bearer::from_file(path) {
                    Ok(bearer) => bearer,
                    Err(problem) => {
                        eprintln!("allot-node: error: --token-file: {problem}");
                        return ExitCode::FAILURE;
                    }
                },
                None => allot_api::bearer::Bearer::default(),
            };
            let kubelet = match kubelet::Settings::from_args(&args.kubelet, &plan.hostname, &enforce.state_dir) {
                Ok(settings) => settings,
                Err(problem) => {
                    eprintln!("allot-node: error: {problem}");
                    return ExitCode::FAILURE;
                }
            };
            let publish = kubelet.as_ref().map(|_| allot_node::publish::Publisher::new());
            let mut config = AgentConfig {
                publish: publish.as_ref().map(|(publisher, _)| publisher.clone()),
                bearer,
                tls: allot_api::tls::ClientTls { ca: args.ca.clone(), cert: args.cert.clone(), key: args.key.clone() }
                    .with_defaults(false),
                metrics_listen: args.metrics_listen,
                otlp_endpoint: args.otlp_endpoint.clone().filter(|endpoint| !endpoint.is_empty()),
                broker: args.broker,
                heartbeat_interval: Duration::from_secs_f64(args.heartbeat_interval),
                max_backoff: Duration::from_secs(5),
                xid_quiet_period: Duration::from_secs_f64(enforce.xid_quiet_period),
                enforce: (!enforce.no_enforce).then(|| EnforceConfig {
                    state_dir: enforce.state_dir.clone(),
                    cgroup_root: enforce.cgroup_root.clone(),
                    cgroup_driver: match enforce.cgroup_driver {
                        CgroupDriverArg::Auto => DriverChoice::Auto,
                        CgroupDriverArg::V1 => DriverChoice::V1,
                        CgroupDriverArg::V2 => DriverChoice::V2,
                    },
                    cgroup_parent: enforce.cgroup_parent.clone(),
                    pids_max: enforce.pids_max,
                    reconcile_interval: Duration::from_secs_f64(enforce.reconcile_interval),
                }),
            };
            if kubelet.is_some()
                && let Some(enforce) = &mut config.enforce
            {
                // In Kubernetes the container runtime owns cgroups; allot-node
                // makes MIG instances and the device environment.
                enforce.cgroup_driver = DriverChoice::Runtime;
            }
            let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build() {
                Ok(runtime) => runtime,
                Err(error) => return fail(&error),
            };
            let broker = config.broker.clone();
            let bearer = config.bearer.clone();
            runtime.block_on(async {
                let (stop, stopped) = tokio::sync::watch::channel(false);
                let mut plugins = match (kubelet, publish) {
                    (Some(settings), Some((_, snapshot))) => {
                        Some(tokio::spawn(kubelet::run(settings, snapshot, broker, bearer, stopped)))
                    }
                    _ => None,
                };
                let plugins_ended = async {
                    match &mut plugins {
                        Some(handle) => handle.await,
                        None => std::future::pending().await,
                    }
                };
                let code = tokio::select! {
                    result = agent::run(plan, config) => match result {
                        Ok(()) => ExitCode::SUCCESS,
                        Err(error) => fail(&error),
                    },
                    ended = plugins_ended => match ended {
                        Ok(Err(problem)) => { eprintln!("allot-node: error: {problem}"); ExitCode::FAILURE }
                        _ => ExitCode::FAILURE,
                    },
                    _ = allot_api::shutdown::signal() => ExitCode::SUCCESS,
                };
                // Let the device plugins unregister (remove their sockets).
                let _ = stop.send(true);
                if let Some(handle) = plugins {
                    let _ = tokio::time::timeout(Duration::from_secs(5), handle).await;
                }
                code
            })
        }
    }
}

/// Decides what to discover and sets the environment the fake NVML library reads.
fn prepare(hardware: &HardwareArgs) -> Result<DiscoveryPlan, allot_node::discovery::DiscoveryError> {
    let plan = hardware.plan()?;
    for (name, value) in &plan.environment {
        // SAFETY: set_var is unsound only while other threads read the environment;
        // this runs before the runtime or anything else starts a thread.
        unsafe { std::env::set_var(name, value) };
    }
    Ok(plan)
}

/// Writes the result; a reader that went away early (`| head`) is not an error.
fn print(text: &str) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    match writeln!(stdout, "{text}").and_then(|()| stdout.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(error) => fail(&error),
    }
}

fn fail(error: &dyn std::error::Error) -> ExitCode {
    eprintln!("allot-node: error: {error}");
    ExitCode::FAILURE
}
