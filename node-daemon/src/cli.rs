//! Command-line interface of `allot-node`: argument types, and turning them into a
//! discovery plan that the binary then runs.

use std::path::PathBuf;

use allot_api::topology::NodeInventory;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::discovery::host_cpus::HostCpus;
use crate::discovery::hwloc::Hwloc;
use crate::discovery::nvml::NvmlSource;
use crate::discovery::sysfs::Sysfs;
use crate::discovery::{self, DiscoveryError};
use crate::fixtures::{self, FAKE_NVML_MACHINE_VAR};
use crate::render;

#[derive(Debug, Parser)]
#[command(
    name = "allot-node",
    version,
    about = "Allot's node daemon: maps this GPU server and enforces the broker's decisions"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show what this machine (or a fixture, or an hwloc export) is made of.
    Inventory(InventoryArgs),
    /// Register with the broker, heartbeat, and enforce this node's assignments.
    Run(Box<RunArgs>),
    /// Run a command inside an allocation's cgroup with its devices' environment.
    Exec(ExecArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CgroupDriverArg {
    Auto,
    V1,
    V2,
}

/// Where and how allocations are enforced.
#[derive(Debug, Clone, Args)]
pub struct EnforceArgs {
    /// Where the node records what it enforced (cgroups, MIG instances per allocation).
    #[arg(long, default_value = "/var/lib/allot-node", value_name = "DIR")]
    pub state_dir: PathBuf,
    /// The cgroup mount: the directory holding the v1 controller mounts, or the v2
    /// unified mount (default: found in /proc/self/mountinfo).
    #[arg(long, value_name = "DIR")]
    pub cgroup_root: Option<PathBuf>,
    /// cgroup interface (default: decided from the mount).
    #[arg(long, value_enum, default_value_t = CgroupDriverArg::Auto)]
    pub cgroup_driver: CgroupDriverArg,
    /// Allocation cgroups go in <root>/<parent>/<allocation-id> (v1: below each controller).
    #[arg(long, default_value = "allot", value_name = "PATH")]
    pub cgroup_parent: String,
    /// Most processes an allocation's cgroup may hold.
    #[arg(long, default_value_t = 4096)]
    pub pids_max: u64,
    /// Seconds between reconcile passes (one also runs at every (re)connection).
    #[arg(long, default_value_t = 30.0, value_name = "SECONDS")]
    pub reconcile_interval: f64,
    /// Seconds without a new critical Xid or uncorrectable ECC error after which
    /// an unhealthy GPU is healthy again.
    #[arg(long, default_value_t = 300.0, value_name = "SECONDS")]
    pub xid_quiet_period: f64,
    /// Follow assignments without enforcing them (acknowledge only), for broker-only tests.
    #[arg(long)]
    pub no_enforce: bool,
}

#[derive(Debug, Clone, Args)]
pub struct ExecArgs {
    /// The node's state directory (as given to `allot-node run`).
    #[arg(long, default_value = "/var/lib/allot-node", value_name = "DIR")]
    pub state_dir: PathBuf,
    /// The allocation to run in.
    #[arg(long, value_name = "ID")]
    pub allocation: String,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<std::ffi::OsString>,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub hardware: HardwareArgs,
    /// The broker's gRPC address: HOST:PORT or https://HOST:PORT (mutual TLS),
    /// or http://HOST:PORT for a broker serving plain text.
    #[arg(long, value_name = "ADDR")]
    pub broker: String,
    /// The CA (PEM) that signed the broker's certificate (default:
    /// ~/.config/allot/pki/ca.pem when it exists).
    #[arg(long, env = "ALLOT_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// This daemon's certificate (PEM) for mutual TLS: `allot-broker pki issue
    /// --node NAME` makes one, for this node's name only; needs --key.
    #[arg(long, env = "ALLOT_CERT", value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// The private key (PEM) of --cert.
    #[arg(long, env = "ALLOT_KEY", value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Serve per-GPU telemetry on /metrics here, under dcgm-exporter's names
    /// (port 0 picks a free one and logs it).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Send traces of applying assignments to this OpenTelemetry collector
    /// (OTLP/gRPC, like http://127.0.0.1:4317), in the broker's traces.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// Seconds between heartbeats until the broker says otherwise.
    #[arg(long, default_value_t = 5.0, value_name = "SECONDS")]
    pub heartbeat_interval: f64,
    /// A file holding the node's bearer token (role `node`; a single-machine
    /// broker writes one with --node-token-file, an admin makes one with
    /// `allotctl token create NAME --role node`).
    #[arg(long, env = "ALLOT_NODE_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    #[command(flatten)]
    pub enforce: EnforceArgs,
    #[command(flatten)]
    pub kubelet: KubeletArgs,
}

/// The kubelet's device plugin API (see docs/kubernetes.md).
#[derive(Debug, Clone, Args)]
pub struct KubeletArgs {
    /// Serve the kubelet's device plugin API and register with the kubelet at
    /// this socket (plugin sockets go in its directory). Without a value: the
    /// kubelet's default.
    #[arg(long, value_name = "PATH", num_args = 0..=1,
        default_missing_value = "/var/lib/kubelet/device-plugins/kubelet.sock")]
    pub kubelet_socket: Option<PathBuf>,
    /// The kubelet's pod resources socket, read to release the allocations of pods that ended.
    #[arg(long, value_name = "PATH", default_value = "/var/lib/kubelet/pod-resources/kubelet.sock")]
    pub pod_resources_socket: PathBuf,
    /// The domain of the resource names: <domain>/gpu, <domain>/mig-<profile>, <domain>/gpu-share.
    #[arg(long, value_name = "DOMAIN", default_value = "allot.io")]
    pub resource_domain: String,
    /// The team whose quota pods count against (the node's token needs the
    /// member role in it).
    #[arg(long, value_name = "TEAM", default_value = "kubernetes")]
    pub kubelet_team: String,
    /// Where the CDI spec of this node's GPUs is written; "none" writes none.
    #[arg(long, value_name = "DIR", default_value = "/var/run/cdi")]
    pub cdi_dir: String,
    /// Seconds between reads of the pod resources API.
    #[arg(long, default_value_t = 5.0, value_name = "SECONDS")]
    pub release_poll: f64,
    /// Seconds an allocation may go unclaimed by any pod before it is released.
    #[arg(long, default_value_t = 30.0, value_name = "SECONDS")]
    pub release_grace: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

/// Where the hardware description comes from.
#[derive(Debug, Clone, Args)]
pub struct HardwareArgs {
    /// Read the topology from an hwloc XML export instead of this machine.
    #[arg(long, value_name = "FILE", conflicts_with = "fixture")]
    pub hwloc_xml: Option<PathBuf>,
    /// Use this NVML library (a real libnvidia-ml.so, or the fake one).
    #[arg(long, value_name = "PATH")]
    pub nvml_lib: Option<PathBuf>,
    /// Pretend to be a bundled machine (tests/data/NAME): its hwloc XML through
    /// hwloc and its description through the fake NVML library.
    #[arg(long, value_name = "NAME")]
    pub fixture: Option<String>,
    /// Read NIC speeds and drive sizes below this sysfs root (default: /sys for
    /// this machine, the fixture's own excerpt for a fixture, none for an XML file).
    #[arg(long, value_name = "DIR")]
    pub sysfs_root: Option<PathBuf>,
    /// The node's name (default: this machine's hostname, or the fixture's name).
    #[arg(long)]
    pub name: Option<String>,
    /// With --fixture or --hwloc-xml: keep the file's PCIe tree and GPUs but use
    /// this machine's real CPUs and NUMA nodes (GPUs fold onto its NUMA nodes), so
    /// cpusets of the broker's chosen cores can really be applied here.
    #[arg(long)]
    pub host_cpus: bool,
}

#[derive(Debug, Clone, Args)]
pub struct InventoryArgs {
    #[command(flatten)]
    pub hardware: HardwareArgs,
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// Everything discovery needs, decided from the arguments before anything runs.
#[derive(Debug, Clone)]
pub struct DiscoveryPlan {
    pub hostname: String,
    pub topology: Hwloc,
    pub gpus: NvmlSource,
    pub details: Sysfs,
    /// Environment the process must have before NVML loads (the fake library reads
    /// its machine description from here). The binary sets it while it is still
    /// single-threaded.
    pub environment: Vec<(&'static str, PathBuf)>,
    /// Use this machine's CPU side under the file's devices (`--host-cpus`).
    pub host_cpus: bool,
}

/// This machine's hostname, from the kernel.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

impl HardwareArgs {
    pub fn plan(&self) -> Result<DiscoveryPlan, DiscoveryError> {
        if let Some(name) = &self.fixture {
            let fixture = fixtures::find_fixture(name)?;
            let library = match &self.nvml_lib {
                Some(path) => path.clone(),
                None => fixtures::find_fake_nvml()?,
            };
            let details = match (&self.sysfs_root, &fixture.sysfs) {
                (Some(root), _) | (None, Some(root)) => Sysfs::at(root),
                (None, None) => Sysfs::none(),
            };
            return Ok(DiscoveryPlan {
                hostname: self.name.clone().unwrap_or_else(|| fixture.name.clone()),
                topology: Hwloc::XmlFile(fixture.topology_xml.clone()),
                gpus: NvmlSource::library(library),
                details,
                environment: vec![(FAKE_NVML_MACHINE_VAR, fixture.nvml_machine.clone())],
                host_cpus: self.host_cpus,
            });
        }
        let (topology, default_gpus, default_details) = match &self.hwloc_xml {
            // Another machine's export: this machine's driver and sysfs would
            // describe different hardware, so they are consulted only when named.
            Some(path) => (Hwloc::XmlFile(path.clone()), None, Sysfs::none()),
            None => (Hwloc::Live, Some(NvmlSource::system()), Sysfs::at("/sys")),
        };
        let gpus = match (&self.nvml_lib, default_gpus) {
            (Some(path), _) => NvmlSource::library(path),
            (None, Some(system)) => system,
            (None, None) => NvmlSource::library_not_consulted(),
        };
        Ok(DiscoveryPlan {
            hostname: self.name.clone().unwrap_or_else(hostname),
            topology,
            gpus,
            details: self.sysfs_root.as_ref().map(Sysfs::at).unwrap_or(default_details),
            environment: vec![],
            host_cpus: self.host_cpus && self.hwloc_xml.is_some(),
        })
    }
}

impl DiscoveryPlan {
    pub fn discover(&self) -> Result<NodeInventory, DiscoveryError> {
        if self.host_cpus {
            let topology = HostCpus { host: Hwloc::Live, devices: self.topology.clone() };
            return discovery::discover(&self.hostname, &topology, &self.gpus, &self.details);
        }
        discovery::discover(&self.hostname, &self.topology, &self.gpus, &self.details)
    }
}

/// Runs `allot-node inventory` once the environment is in place.
pub fn inventory(plan: &DiscoveryPlan, output: OutputFormat) -> Result<String, DiscoveryError> {
    let inventory = plan.discover()?;
    Ok(match output {
        OutputFormat::Table => render::table(&inventory),
        OutputFormat::Json => render::json(&inventory),
    })
}
