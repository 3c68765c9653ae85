//! allotctl: teams, quotas, nodes and allocations, for people (tables) and scripts (JSON).

mod admin;
mod export;
mod output;
mod report;
mod sim;
mod size;

use allot_api::allocation::{AllocationId, GpuDemand, Interconnect, MilliGpu, ValidatedRequest};
use allot_api::bearer::Bearer;
use allot_api::proto;
use allot_api::proto::admin_service_client::AdminServiceClient;
use allot_api::proto::allocation_service_client::AllocationServiceClient;
use allot_api::tls::ClientTls;
use allot_api::units::MiB;
use clap::{Args, Parser, Subcommand, ValueEnum};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub use output::Format;

#[derive(Debug, Parser)]
#[command(name = "allotctl", version, about = "Manage Allot: teams, nodes and GPU allocations")]
pub struct Cli {
    /// The broker's gRPC address: HOST:PORT or https://HOST:PORT (TLS), or
    /// http://HOST:PORT for a broker serving plain text.
    #[arg(long, global = true, env = "ALLOT_BROKER", default_value = "127.0.0.1:7443")]
    pub broker: String,
    /// The CA (PEM) that signed the broker's certificate (default:
    /// ~/.config/allot/pki/ca.pem, which a single-machine broker writes).
    #[arg(long, global = true, env = "ALLOT_CA", value_name = "FILE")]
    pub ca: Option<std::path::PathBuf>,
    /// This client's certificate (PEM) for mutual TLS (default:
    /// ~/.config/allot/pki/admin.pem when it exists); needs --key.
    #[arg(long, global = true, env = "ALLOT_CERT", value_name = "FILE")]
    pub cert: Option<std::path::PathBuf>,
    /// The private key (PEM) of --cert.
    #[arg(long, global = true, env = "ALLOT_KEY", value_name = "FILE")]
    pub key: Option<std::path::PathBuf>,
    /// Output for people (table) or programs (json).
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    /// A file holding the bearer token (default: $ALLOT_TOKEN, else
    /// ~/.config/allot/admin.token when it exists).
    #[arg(long, global = true, env = "ALLOT_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<std::path::PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Organisations, teams and projects, with their quotas.
    #[command(subcommand)]
    Team(admin::TeamCommand),
    /// A team's weight, guarantees, limits and lending limits.
    #[command(subcommand)]
    Quota(admin::QuotaCommand),
    /// Who may do what: roles granted to subjects, per team or cluster-wide.
    #[command(subcommand)]
    Policy(admin::PolicyCommand),
    /// Per team: guaranteed, used, borrowed, dominant share, fair share, queued.
    Fairshare,
    /// Requests waiting for capacity or quota.
    #[command(subcommand)]
    Queue(admin::QueueCommand),
    /// Make teams, quotas and grants match a teams file, all or nothing.
    Apply(admin::ApplyArgs),
    /// Bearer tokens for people, services and node daemons.
    #[command(subcommand)]
    Token(admin::TokenCommand),
    /// Who asked for which change, from where, when, and what came of it.
    Audit(admin::AuditArgs),
    /// The GPU servers the broker knows.
    #[command(subcommand)]
    Nodes(NodesCommand),
    /// Ask for, inspect and give back GPUs.
    #[command(subcommand)]
    Alloc(AllocCommand),
    /// Replay a task trace against a cluster with Allot's placement policies (no broker needed).
    Sim(sim::SimArgs),
    /// Write the team tree as another scheduler's configuration (YARN CapacityScheduler queues).
    #[command(subcommand)]
    Export(export::ExportCommand),
    /// Size a GPU fleet for a demand trace: the cheapest catalog fleet that meets the targets (no broker needed).
    Size(size::SizeArgs),
    /// Reports from the broker's usage history.
    #[command(subcommand)]
    Report(report::ReportCommand),
}

#[derive(Debug, Subcommand)]
pub enum NodesCommand {
    List,
}

#[derive(Debug, Subcommand)]
pub enum AllocCommand {
    /// Place and persist an allocation.
    Create(CreateArgs),
    List(ListArgs),
    Get {
        id: String,
    },
    /// Why the allocation is where it is, and why other nodes were not chosen.
    Explain {
        id: String,
    },
    Release {
        id: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InterconnectArg {
    Nvlink,
    PcieSwitch,
    Numa,
    Any,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    #[arg(long)]
    pub team: String,
    /// Whole GPUs on one node.
    #[arg(long, conflicts_with_all = ["mig", "share"])]
    pub gpus: Option<u32>,
    /// Acceptable GPU model (repeatable), matched as a substring: H100, A100-SXM4-80GB.
    #[arg(long = "gpu-model", requires = "gpus")]
    pub gpu_models: Vec<String>,
    /// One MIG instance of this profile, like 3g.40gb.
    #[arg(long, conflicts_with = "share")]
    pub mig: Option<String>,
    /// A share of one GPU in thousandths (250 = a quarter); needs --gpu-memory.
    #[arg(long, requires = "gpu_memory")]
    pub share: Option<u32>,
    /// The GPU-memory cap of a share, in MiB.
    #[arg(long, requires = "share")]
    pub gpu_memory: Option<u64>,
    /// Whole CPU cores.
    #[arg(long, default_value_t = 0)]
    pub cpus: u32,
    /// Host memory in MiB.
    #[arg(long, default_value_t = 0)]
    pub memory: u64,
    #[arg(long, value_enum, default_value_t = InterconnectArg::Any)]
    pub interconnect: InterconnectArg,
    /// An RDMA NIC under the same PCIe switch as each GPU (GPUDirect RDMA).
    #[arg(long)]
    pub rdma: bool,
    /// Each GPU has at least this much memory, in MiB.
    #[arg(long)]
    pub min_gpu_memory: Option<u64>,
    /// Who the allocation is for (a pod, a container, a job id).
    #[arg(long)]
    pub owner: Option<String>,
    /// Only show where it would go.
    #[arg(long)]
    pub dry_run: bool,
    /// Fail at once instead of waiting in the queue when it cannot be granted now.
    #[arg(long)]
    pub no_wait: bool,
    /// Idempotency key: a create with a key its team already used returns the
    /// allocation that key made instead of a second one (also after a broker
    /// failover). Without it allotctl makes one, and reuses it when it retries
    /// on its own after a lost connection or a leader change.
    #[arg(long)]
    pub request_id: Option<String>,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[arg(long)]
    pub team: Option<String>,
    #[arg(long)]
    pub node: Option<String>,
    #[arg(long)]
    pub owner: Option<String>,
    /// Include released and preempted allocations.
    #[arg(long)]
    pub all: bool,
}

/// What went wrong, worded for the person at the terminal.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("{0}")]
    Usage(String),
    #[error("cannot reach the broker at {address}: {problem}; is allot-broker running? (set --broker or ALLOT_BROKER)")]
    Unreachable { address: String, problem: String },
    #[error("{code}: {message}")]
    Broker { code: &'static str, message: String },
    #[error("the broker sent something this allotctl cannot read: {0}")]
    Protocol(String),
}

fn code_name(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::InvalidArgument => "INVALID_ARGUMENT",
        tonic::Code::NotFound => "NOT_FOUND",
        tonic::Code::AlreadyExists => "ALREADY_EXISTS",
        tonic::Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        tonic::Code::FailedPrecondition => "FAILED_PRECONDITION",
        tonic::Code::PermissionDenied => "PERMISSION_DENIED",
        tonic::Code::Unauthenticated => "UNAUTHENTICATED",
        tonic::Code::Unavailable => "UNAVAILABLE",
        tonic::Code::Aborted => "ABORTED",
        tonic::Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        tonic::Code::Internal => "INTERNAL",
        _ => "ERROR",
    }
}

impl From<tonic::Status> for CtlError {
    fn from(status: tonic::Status) -> Self {
        let mut message = status.message().to_owned();
        // A connection that broke carries its cause (a TLS alert, a reset) as the source.
        if let Some(source) = std::error::Error::source(&status) {
            let cause = source_chain(source);
            message = format!("{message}: {cause}{}", tls_hint(&cause));
        } else {
            message.push_str(tls_hint(status.message()));
        }
        CtlError::Broker { code: code_name(status.code()), message }
    }
}

/// What a TLS failure means for the person who sees it.
fn tls_hint(cause: &str) -> &'static str {
    if ["CertificateRequired", "BadCertificate", "UnknownCA"].iter().any(|alert| cause.contains(alert)) {
        "; the broker takes clients with a certificate from its CA only: pass --cert and --key (allot-broker pki issue \
         --subject NAME makes them)"
    } else if cause.contains("InvalidContentType") {
        "; the broker serves plain text: use http://HOST:PORT"
    } else if cause.contains("frame with invalid size") {
        "; the broker may serve TLS: use HOST:PORT or https://HOST:PORT with --ca"
    } else if cause.contains("UnknownIssuer") {
        "; --ca is not the CA that signed the broker's certificate"
    } else {
        ""
    }
}

async fn connect(address: &str, tls: &ClientTls) -> Result<Channel, CtlError> {
    let unreachable = |problem: String| CtlError::Unreachable { address: address.to_owned(), problem };
    let endpoint =
        allot_api::tls::endpoint(address, tls, std::time::Duration::from_secs(3), std::time::Duration::from_secs(30))
            .map_err(CtlError::Usage)?;
    endpoint.connect().await.map_err(|error| {
        let cause = source_chain(&error);
        let hint = tls_hint(&cause);
        unreachable(format!("{cause}{hint}"))
    })
}

fn source_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The broker's services over one connection, each call carrying the token.
#[derive(Debug, Clone)]
pub struct Clients {
    channel: Channel,
    bearer: Bearer,
}

impl Clients {
    pub fn admin(&self) -> AdminServiceClient<InterceptedService<Channel, Bearer>> {
        AdminServiceClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }

    pub fn allocations(&self) -> AllocationServiceClient<InterceptedService<Channel, Bearer>> {
        AllocationServiceClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }
}

/// Finds the token: --token-file / ALLOT_TOKEN_FILE, then ALLOT_TOKEN, then the
/// file a single-machine broker writes. No token is not an error here: the
/// broker says which calls need one.
fn find_token(token_file: Option<&std::path::Path>) -> Result<Bearer, CtlError> {
    if let Some(path) = token_file {
        return Bearer::from_file(path)
            .map_err(|problem| CtlError::Usage(format!("{problem} (--token-file or ALLOT_TOKEN_FILE)")));
    }
    if let Ok(token) = std::env::var("ALLOT_TOKEN")
        && !token.trim().is_empty()
    {
        return Bearer::new(Some(&token)).map_err(|problem| CtlError::Usage(format!("ALLOT_TOKEN: {problem}")));
    }
    match allot_api::bearer::default_admin_token_file() {
        Some(path) if path.exists() => Bearer::from_file(&path).map_err(CtlError::Usage),
        _ => Ok(Bearer::default()),
    }
}

fn parse_id(id: &str) -> Result<String, CtlError> {
    id.parse::<AllocationId>().map(|id| id.to_string()).map_err(|error| CtlError::Usage(error.to_string()))
}

/// Checks the request here too, so a typo is caught before the network.
fn spec(args: &CreateArgs) -> Result<proto::AllocationSpec, CtlError> {
    let usage = |message: String| CtlError::Usage(message);
    let gpus = match (&args.gpus, &args.mig, &args.share) {
        (Some(count), None, None) => GpuDemand::Whole { count: *count, models: args.gpu_models.clone() },
        (None, Some(profile), None) => GpuDemand::Mig { profile: profile.clone() },
        (None, None, Some(milli)) => {
            GpuDemand::Share { compute: MilliGpu(*milli), memory: MiB(args.gpu_memory.unwrap_or(0)) }
        }
        (None, None, None) => GpuDemand::None,
        _ => return Err(usage("use one of --gpus, --mig or --share".into())),
    };
    let interconnect = match args.interconnect {
        InterconnectArg::Nvlink => Interconnect::Nvlink,
        InterconnectArg::PcieSwitch => Interconnect::PcieSwitch,
        InterconnectArg::Numa => Interconnect::Numa,
        InterconnectArg::Any => Interconnect::Any,
    };
    let team = args.team.parse().map_err(|error: allot_api::allocation::NameError| usage(error.to_string()))?;
    let request = ValidatedRequest::new(
        team,
        gpus,
        args.cpus,
        MiB(args.memory),
        interconnect,
        args.rdma,
        args.min_gpu_memory.map(MiB),
        args.owner.clone(),
    )
    .map_err(|error| usage(format!("--{}: {}", error.field.replace('_', "-"), error.problem)))?;
    let request = match &args.request_id {
        Some(id) => request.with_request_id(id.clone()),
        None => request.with_request_id(new_request_id()),
    }
    .map_err(|error| usage(format!("--{}: {}", error.field.replace('_', "-"), error.problem)))?;
    Ok((&request).into())
}

/// A fresh request id: 128 bits from the standard library's per-process random
/// hash keys, mixed with the time and the process id.
fn new_request_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let half = |salt: u64| {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u128(now);
        hasher.write_u32(std::process::id());
        hasher.write_u64(salt);
        hasher.finish()
    };
    format!("allotctl-{:016x}{:016x}", half(1), half(2))
}

/// How often, and after how long, allotctl retries a create whose answer it did
/// not get (the same request id each time, so a retry never makes a second
/// allocation).
const CREATE_RETRIES: [u64; 4] = [250, 500, 1000, 2000];

/// Whether a failed call may not have reached the broker's decision, so a retry
/// with the same request id is safe and useful.
fn retryable(status: &tonic::Status) -> bool {
    matches!(status.code(), tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown)
}

/// Runs one command and returns what to print.
pub async fn run(cli: Cli) -> Result<String, CtlError> {
    if let Command::Sim(args) = &cli.command {
        return sim::run(args, cli.output);
    }
    if let Command::Size(args) = &cli.command {
        return size::run(args, cli.output).await;
    }
    if let Command::Export(export::ExportCommand::Yarn(args)) = &cli.command
        && args.teams_file.is_some()
    {
        return export::run(args, &cli.broker, None, cli.output).await;
    }
    // Validate what can be validated before connecting.
    let create_spec = match &cli.command {
        Command::Alloc(AllocCommand::Create(args)) => Some(spec(args)?),
        _ => None,
    };
    if let Command::Report(command) = &cli.command {
        report::check(command)?;
    }
    let bearer = find_token(cli.token_file.as_deref())?;
    let tls = ClientTls { ca: cli.ca.clone(), cert: cli.cert.clone(), key: cli.key.clone() }.with_defaults(true);
    let channel = connect(&cli.broker, &tls).await?;
    let clients = Clients { channel, bearer };
    let format = cli.output;
    match cli.command {
        Command::Sim(_) => Err(CtlError::Usage("sim runs without a broker".into())),
        Command::Size(_) => Err(CtlError::Usage("size runs without a broker".into())),
        Command::Export(export::ExportCommand::Yarn(args)) => {
            export::run(&args, &cli.broker, Some(&clients), format).await
        }
        Command::Team(command) => admin::team(&clients, command, format).await,
        Command::Quota(command) => admin::quota(&clients, command, format).await,
        Command::Policy(command) => admin::policy(&clients, command, format).await,
        Command::Fairshare => admin::fairshare(&clients, format).await,
        Command::Queue(command) => admin::queue(&clients, command, format).await,
        Command::Apply(args) => admin::apply(&clients, args, format).await,
        Command::Token(command) => admin::token(&clients, command, format).await,
        Command::Audit(args) => admin::audit(&clients, args, format).await,
        Command::Report(command) => report::run(&clients, command, &cli.broker, format).await,
        Command::Nodes(NodesCommand::List) => {
            let mut admin = clients.admin();
            let nodes = admin.list_nodes(proto::ListNodesRequest {}).await?.into_inner();
            Ok(output::nodes(&nodes.nodes, format))
        }
        Command::Alloc(command) => {
            let mut allocations = clients.allocations();
            match command {
                AllocCommand::Create(args) => {
                    let spec = create_spec.ok_or_else(|| CtlError::Usage("missing request".into()))?;
                    let request = proto::CreateAllocationRequest {
                        spec: Some(spec),
                        dry_run: args.dry_run,
                        no_wait: args.no_wait,
                    };
                    let mut waits = CREATE_RETRIES.iter();
                    let reply = loop {
                        match allocations.create(request.clone()).await {
                            Ok(reply) => break reply.into_inner(),
                            Err(status) if retryable(&status) => match waits.next() {
                                Some(wait) => tokio::time::sleep(std::time::Duration::from_millis(*wait)).await,
                                None => return Err(status.into()),
                            },
                            Err(status) => return Err(status.into()),
                        }
                    };
                    output::created(reply, format)
                }
                AllocCommand::List(args) => {
                    let list = allocations
                        .list(proto::ListAllocationsRequest {
                            team: args.team.unwrap_or_default(),
                            node: args.node.unwrap_or_default(),
                            owner: args.owner.unwrap_or_default(),
                            include_finished: args.all,
                        })
                        .await?
                        .into_inner();
                    output::allocations(list.allocations, format)
                }
                AllocCommand::Get { id } => {
                    let id = parse_id(&id)?;
                    let allocation = allocations.get(proto::AllocationRef { id }).await?.into_inner();
                    output::allocation(allocation, format)
                }
                AllocCommand::Explain { id } => {
                    let id = parse_id(&id)?;
                    let reply = allocations.explain(proto::AllocationRef { id }).await?.into_inner();
                    Ok(output::explanation(&reply, format))
                }
                AllocCommand::Release { id } => {
                    let id = parse_id(&id)?;
                    let allocation = allocations.release(proto::AllocationRef { id }).await?.into_inner();
                    output::allocation(allocation, format)
                }
            }
        }
    }
}
