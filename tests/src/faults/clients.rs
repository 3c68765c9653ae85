//! The workload: clients that create allocations (each create with its own
//! request id, retried with that id until it gets a definitive answer) and
//! release what they hold, over gRPC to whichever broker leads, logging every
//! answer and which broker (by process id) gave it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use allot_api::bearer::Bearer;
use allot_api::proto;
use allot_api::proto::allocation_service_client::AllocationServiceClient;
use tokio::sync::watch;
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use super::{Grant, LeaderInfo, Rng};

/// The team every client allocates for.
pub const TEAM: &str = "ml";

/// How the clients behave.
#[derive(Debug, Clone)]
pub struct WorkloadSettings {
    pub clients: usize,
    /// Allocations a client holds at most before it releases one.
    pub max_held: usize,
    /// Pause between two operations of one client.
    pub think: (Duration, Duration),
    /// How long one call may take before its outcome counts as unknown.
    pub call_timeout: Duration,
    /// After the stop, how long a client keeps retrying its last operation.
    pub resolve_for: Duration,
}

/// The answer a create finally got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateOutcome {
    /// The broker (`by`, a process id) answered with an allocation: bound (with
    /// its grant) or waiting in the queue (`pending`).
    Acknowledged { id: String, pending: bool, grant: Option<Grant>, by: u32 },
    /// Refused for good (no capacity now, or a refusal of the request itself).
    Refused { code: Code, message: String, by: u32 },
    /// No definitive answer before the client stopped retrying.
    Unknown,
}

/// One create and every attempt at it.
#[derive(Debug, Clone)]
pub struct CreateLog {
    pub client: usize,
    pub request_id: String,
    /// What it asked for, for messages.
    pub ask: String,
    pub attempts: u32,
    /// Attempts whose outcome the client could not know (timeouts, broken
    /// connections, a broker that was not leading).
    pub unknown_attempts: u32,
    pub outcome: CreateOutcome,
    /// Each attempt: when (since the epoch), which broker, what came back.
    pub trail: Vec<String>,
}

/// The answer a release finally got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReleaseOutcome {
    Released {
        by: u32,
    },
    /// The broker says the allocation is already finished (released or
    /// preempted): right after an attempt with an unknown outcome, that attempt
    /// released it.
    AlreadyFinished {
        message: String,
        by: u32,
    },
    NotFound {
        message: String,
        by: u32,
    },
    Unknown,
}

/// One release and every attempt at it.
#[derive(Debug, Clone)]
pub struct ReleaseLog {
    pub client: usize,
    pub id: String,
    pub attempts: u32,
    pub unknown_attempts: u32,
    pub outcome: ReleaseOutcome,
    /// Each attempt: when (since the epoch), which broker, what came back.
    pub trail: Vec<String>,
}

/// Everything one client did, in order.
#[derive(Debug, Clone, Default)]
pub struct ClientLog {
    pub client: usize,
    pub creates: Vec<CreateLog>,
    pub releases: Vec<ReleaseLog>,
    /// Answers no correct broker gives (with the call), for the report.
    pub odd: Vec<String>,
    /// Unknown attempts by gRPC code (or "timeout"), for the report.
    pub unknown_by_reason: HashMap<String, u32>,
}

impl ClientLog {
    /// The allocations this client holds at the end: acknowledged and not
    /// released, by id (a release with an unknown outcome still counts as held).
    pub fn held(&self) -> Vec<String> {
        let mut held: Vec<String> = self
            .creates
            .iter()
            .filter_map(|create| match &create.outcome {
                CreateOutcome::Acknowledged { id, .. } => Some(id.clone()),
                _ => None,
            })
            .collect();
        for release in &self.releases {
            if !matches!(release.outcome, ReleaseOutcome::Unknown) {
                held.retain(|id| *id != release.id);
            }
        }
        held
    }
}

type Client = AllocationServiceClient<InterceptedService<Channel, Bearer>>;

/// The MIG profiles clients ask for (the small ones twice as often).
const MIG_PROFILES: [&str; 4] = ["1g.10gb", "1g.10gb", "2g.20gb", "3g.40gb"];

/// What a client asks for.
#[derive(Debug, Clone, Copy)]
enum Ask {
    Whole { count: u32, h100: bool },
    Mig { profile: &'static str },
    Share { milli: u32, memory_mib: u64 },
    CpuOnly { cpus: u32 },
}

impl Ask {
    fn random(rng: &mut Rng) -> Ask {
        match rng.between(0, 99) {
            0..=34 => Ask::Whole { count: rng.pick(&[1, 1, 1, 2, 2, 4]), h100: rng.chance(0.5) },
            35..=59 => Ask::Mig { profile: rng.pick(&MIG_PROFILES) },
            60..=89 => Ask::Share { milli: rng.between(2, 6) as u32 * 100, memory_mib: rng.between(4, 20) * 1024 },
            _ => Ask::CpuOnly { cpus: rng.between(1, 4) as u32 },
        }
    }

    fn spec(self, request_id: &str, client: usize) -> proto::AllocationSpec {
        use proto::allocation_spec::Gpus;
        let (gpus, cpus) = match self {
            Ask::Whole { count, h100 } => (
                Some(Gpus::Whole(proto::WholeGpus {
                    count,
                    models: if h100 { vec!["H100".into()] } else { Vec::new() },
                })),
                count,
            ),
            Ask::Mig { profile } => (Some(Gpus::Mig(proto::MigDemand { profile: profile.into() })), 1),
            Ask::Share { milli, memory_mib } => {
                (Some(Gpus::Share(proto::ShareDemand { milli_gpu: milli, memory_mib })), 1)
            }
            Ask::CpuOnly { cpus } => (None, cpus),
        };
        proto::AllocationSpec {
            team: TEAM.into(),
            gpus,
            cpus,
            owner: Some(format!("client-{client}")),
            request_id: Some(request_id.to_owned()),
            ..Default::default()
        }
    }

    fn describe(self) -> String {
        match self {
            Ask::Whole { count, h100: true } => format!("{count} H100"),
            Ask::Whole { count, h100: false } => format!("{count} GPU"),
            Ask::Mig { profile } => format!("MIG {profile}"),
            Ask::Share { milli, memory_mib } => format!("share {milli}m {memory_mib}MiB"),
            Ask::CpuOnly { cpus } => format!("{cpus} cores"),
        }
    }
}

/// One client: runs until `stop`, then finishes its operation in hand
/// (retrying for at most `resolve_for`) and returns its log. Its log times
/// attempts from `epoch` (the fault timeline's start).
pub async fn run_client(
    client: usize,
    seed: u64,
    settings: WorkloadSettings,
    leader: watch::Receiver<Option<LeaderInfo>>,
    bearer: Bearer,
    stop: Arc<AtomicBool>,
    epoch: Instant,
) -> ClientLog {
    let mut worker = Worker {
        client,
        settings,
        leader,
        bearer,
        stop,
        stopped_at: None,
        connections: HashMap::new(),
        log: ClientLog { client, ..Default::default() },
        started: epoch,
        trail: Vec::new(),
    };
    let mut rng = Rng::new(seed);
    let mut held: Vec<String> = Vec::new();
    let mut sequence = 0u32;
    while !worker.stop.load(Ordering::Relaxed) {
        let create = held.len() < worker.settings.max_held && (held.is_empty() || rng.chance(0.55));
        if create {
            sequence += 1;
            let request_id = format!("c{client}-r{sequence}");
            let ask = Ask::random(&mut rng);
            // A quarter of the creates may wait in the queue; the rest want an answer now.
            let no_wait = rng.chance(0.75);
            let mut log = worker.create(&request_id, ask, no_wait).await;
            log.trail = std::mem::take(&mut worker.trail);
            if let CreateOutcome::Acknowledged { id, .. } = &log.outcome {
                held.push(id.clone());
            }
            worker.log.creates.push(log);
        } else {
            let id = held.remove(rng.between(0, held.len() as u64 - 1) as usize);
            let mut log = worker.release(&id).await;
            log.trail = std::mem::take(&mut worker.trail);
            if matches!(log.outcome, ReleaseOutcome::Unknown) {
                held.push(id);
            }
            worker.log.releases.push(log);
        }
        let (low, high) = worker.settings.think;
        let pause = rng.between(low.as_millis() as u64, high.as_millis() as u64);
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
    worker.log
}

struct Worker {
    client: usize,
    settings: WorkloadSettings,
    leader: watch::Receiver<Option<LeaderInfo>>,
    bearer: Bearer,
    stop: Arc<AtomicBool>,
    stopped_at: Option<Instant>,
    connections: HashMap<String, Client>,
    log: ClientLog,
    started: Instant,
    /// The attempts of the operation in hand.
    trail: Vec<String>,
}

/// One call's result: the answer, or why the outcome is unknown.
enum Call<T> {
    Answer(Result<T, tonic::Status>, u32),
    Unknown(String),
}

impl Worker {
    /// Whether the client should give up retrying (the stop came and the time
    /// to resolve after it has passed).
    fn out_of_time(&mut self) -> bool {
        if !self.stop.load(Ordering::Relaxed) {
            return false;
        }
        let stopped_at = *self.stopped_at.get_or_insert_with(Instant::now);
        stopped_at.elapsed() > self.settings.resolve_for
    }

    async fn create(&mut self, request_id: &str, ask: Ask, no_wait: bool) -> CreateLog {
        let spec = ask.spec(request_id, self.client);
        let mut log = CreateLog {
            client: self.client,
            request_id: request_id.to_owned(),
            ask: ask.describe(),
            attempts: 0,
            unknown_attempts: 0,
            outcome: CreateOutcome::Unknown,
            trail: Vec::new(),
        };
        let mut backoff = Duration::from_millis(50);
        while !self.out_of_time() {
            let request = proto::CreateAllocationRequest { spec: Some(spec.clone()), dry_run: false, no_wait };
            let call = self.call(|mut client| async move { client.create(request).await }).await;
            let Some(call) = call else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            log.attempts += 1;
            match call {
                Call::Answer(Ok(response), by) => {
                    let Some(allocation) = response.allocation else {
                        self.log.odd.push(format!("create {request_id}: an answer without an allocation from {by}"));
                        log.unknown_attempts += 1;
                        continue;
                    };
                    let pending = allocation.state == proto::AllocationState::Pending as i32;
                    // A binding the broker sent that does not convert counts as no grant (and shows as a mismatch).
                    let grant = allocation
                        .binding
                        .clone()
                        .and_then(|binding| allot_api::allocation::Binding::try_from(binding).ok())
                        .map(|binding| Grant::from_binding(&binding));
                    log.outcome = CreateOutcome::Acknowledged { id: allocation.id, pending, grant, by };
                    return log;
                }
                Call::Answer(Err(status), by) if definitive(status.code()) => {
                    if status.code() != Code::ResourceExhausted {
                        self.log.odd.push(format!("create {request_id} ({}): {status} from {by}", log.ask));
                    }
                    log.outcome = CreateOutcome::Refused { code: status.code(), message: status.message().into(), by };
                    return log;
                }
                Call::Answer(Err(status), _) => self.unknown(&mut log.unknown_attempts, format!("{:?}", status.code())),
                Call::Unknown(reason) => self.unknown(&mut log.unknown_attempts, reason),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(800));
        }
        log
    }

    async fn release(&mut self, id: &str) -> ReleaseLog {
        let mut log = ReleaseLog {
            client: self.client,
            id: id.to_owned(),
            attempts: 0,
            unknown_attempts: 0,
            outcome: ReleaseOutcome::Unknown,
            trail: Vec::new(),
        };
        let mut backoff = Duration::from_millis(50);
        while !self.out_of_time() {
            let request = proto::AllocationRef { id: id.to_owned() };
            let call = self.call(|mut client| async move { client.release(request).await }).await;
            let Some(call) = call else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            log.attempts += 1;
            match call {
                Call::Answer(Ok(_), by) => {
                    log.outcome = ReleaseOutcome::Released { by };
                    return log;
                }
                Call::Answer(Err(status), by) if status.code() == Code::FailedPrecondition => {
                    log.outcome = ReleaseOutcome::AlreadyFinished { message: status.message().into(), by };
                    return log;
                }
                Call::Answer(Err(status), by) if status.code() == Code::NotFound => {
                    log.outcome = ReleaseOutcome::NotFound { message: status.message().into(), by };
                    return log;
                }
                Call::Answer(Err(status), by) if definitive(status.code()) => {
                    self.log.odd.push(format!("release {id}: {status} from {by}"));
                    self.unknown(&mut log.unknown_attempts, format!("{:?}", status.code()));
                }
                Call::Answer(Err(status), _) => self.unknown(&mut log.unknown_attempts, format!("{:?}", status.code())),
                Call::Unknown(reason) => self.unknown(&mut log.unknown_attempts, reason),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(800));
        }
        log
    }

    fn unknown(&mut self, count: &mut u32, reason: String) {
        *count += 1;
        *self.log.unknown_by_reason.entry(reason).or_default() += 1;
    }

    /// One call to the broker that leads now; `None` when none is known to.
    /// A call that failed without an answer drops its connection, so the next
    /// one does not wait on a broker that is paused or cut off.
    async fn call<T, F, Fut>(&mut self, make: F) -> Option<Call<T>>
    where
        F: FnOnce(Client) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let leader = self.leader.borrow().clone()?;
        let address = leader.url?;
        let client = match self.connections.get(&address) {
            Some(client) => client.clone(),
            None => {
                let endpoint = Endpoint::from_shared(address.clone())
                    .expect("a broker address")
                    .connect_timeout(Duration::from_secs(1))
                    .tcp_nodelay(true);
                let client = AllocationServiceClient::with_interceptor(endpoint.connect_lazy(), self.bearer.clone());
                self.connections.insert(address.clone(), client.clone());
                client
            }
        };
        let at = self.started.elapsed().as_secs_f64();
        let result = tokio::time::timeout(self.settings.call_timeout, make(client)).await;
        let what = match &result {
            Ok(Ok(_)) => "ok".to_owned(),
            Ok(Err(status)) => format!("{:?}: {}", status.code(), status.message().lines().next().unwrap_or("")),
            Err(_) => "timeout".to_owned(),
        };
        self.trail.push(format!("{at:.1}s {}: {what}", leader.name));
        match result {
            Ok(Ok(response)) => Some(Call::Answer(Ok(response.into_inner()), leader.pid)),
            Ok(Err(status)) => {
                if !definitive(status.code()) {
                    self.connections.remove(&address);
                }
                Some(Call::Answer(Err(status), leader.pid))
            }
            Err(_) => {
                self.connections.remove(&address);
                Some(Call::Unknown("timeout".to_owned()))
            }
        }
    }
}

/// Whether an error is the broker's decision (the request was not applied and
/// would not be on a retry) rather than a failure to know.
fn definitive(code: Code) -> bool {
    matches!(
        code,
        Code::ResourceExhausted
            | Code::InvalidArgument
            | Code::NotFound
            | Code::FailedPrecondition
            | Code::PermissionDenied
            | Code::AlreadyExists
    )
}
