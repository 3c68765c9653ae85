//! The procurement sizing tool behind `allotctl size`: replays a demand on fleets
//! of each catalog server model with Allot's placement (queueing what does not
//! fit), finds the smallest fleet of each model that meets the targets, and
//! recommends the cheapest, with the runner-ups, why each lost, and the sizing
//! rules each server breaks.
//!
//! Layout: [`catalog`] reads server models; [`demand`] reads the tasks;
//! [`replay`] replays them on one fleet; [`search`] finds the fleets; [`rules`]
//! checks servers; [`report`] writes JSON and HTML.

pub mod catalog;
pub mod demand;
pub mod replay;
pub mod report;
pub mod rules;
pub mod search;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use allot_placement::packing::PackingPolicy;
use serde::Serialize;

use crate::SimError;
use catalog::{Catalog, read_catalog};
use demand::{DemandSummary, read_demand};
use rules::Violation;
use search::{CostModel, Evaluated, Measured, Progress, SearchSetup, Targets, duration, search};

/// What went wrong, with the file, line, entry and field where it applies.
#[derive(Debug, thiserror::Error)]
pub enum SizeError {
    #[error("{}:{line}: {message}", path.display())]
    Input { path: PathBuf, line: usize, message: String },
    #[error("{}:{line}: {}{message}", path.display(), if entry.is_empty() { String::new() } else { format!("{entry}: ") })]
    Catalog { path: PathBuf, line: usize, entry: String, message: String },
    #[error("cannot read {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Usage(String),
    #[error("no fleet in the search space meets the targets; {0}")]
    NoFleet(String),
    #[error("cancelled; nothing was written")]
    Cancelled,
}

impl From<SimError> for SizeError {
    fn from(error: SimError) -> SizeError {
        match error {
            SimError::Input { path, line, message } => SizeError::Input { path, line, message },
            SimError::Io { path, source } => SizeError::Io { path, source },
            SimError::Write { path, source } => SizeError::Write { path, source },
            SimError::Usage(message) => SizeError::Usage(message),
        }
    }
}

/// How many fleets of two models the candidates list (the cheapest that meet the targets).
const MIXES_SHOWN: usize = 3;

/// The most servers of one model a fleet may have (a replay holds each node).
pub const MAX_SERVERS: u32 = 100_000;

/// The options of one sizing run.
#[derive(Debug, Clone)]
pub struct SizeOptions {
    pub demand: PathBuf,
    /// None: the default catalog.
    pub catalog: Option<PathBuf>,
    pub growth: f64,
    pub targets: Targets,
    pub seeds: Vec<u64>,
    pub policy: PackingPolicy,
    pub cost: CostModel,
    pub max_servers: u32,
    pub threads: usize,
    /// Also search fleets of two models.
    pub mixes: bool,
    /// Where report.json and report.html go; none: not written.
    pub out: Option<PathBuf>,
    /// The command line, recorded in the report.
    pub command: String,
}

/// One input file: where, how big, and a hash of its bytes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InputFile {
    pub path: String,
    pub bytes: usize,
    /// FNV-1a 64 of the contents, hex.
    pub fnv1a64: String,
}

fn fingerprint(path: &str, bytes: &[u8]) -> InputFile {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    InputFile { path: path.to_owned(), bytes: bytes.len(), fnv1a64: format!("{hash:016x}") }
}

/// What produced the result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Provenance {
    pub command: String,
    pub allot_version: String,
    pub demand: InputFile,
    pub catalog: InputFile,
    pub seeds: Vec<u64>,
    pub growth: f64,
    pub policy: String,
    pub targets: Targets,
    pub cost: CostModel,
    pub max_servers: u32,
    pub wall_s: f64,
}

/// One candidate fleet: the smallest of its server model that meets the targets
/// (or the closest one when none does).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Candidate {
    /// The search it came from (see [`search::Evaluated::server`]).
    pub server: String,
    /// The whole fleet: `5 x dgx-a100`, `1 x dgx-a100 + 6 x l4-8gpu`.
    pub fleet: String,
    pub description: String,
    pub count: u32,
    pub gpus: u32,
    pub cost_usd: f64,
    pub meets: bool,
    pub measured: Measured,
    pub misses: Vec<String>,
    pub rules_broken: Vec<Violation>,
    /// More servers of this model cannot help (tasks that fit none of them).
    pub hopeless: bool,
    /// Why it was not chosen (empty for the chosen fleet).
    pub why_not: String,
}

/// The result of a sizing run.
#[derive(Debug, Clone, Serialize)]
pub struct Recommendation {
    pub provenance: Provenance,
    pub demand: DemandSummary,
    pub catalog: Catalog,
    /// Cheapest first; those that meet the targets before those that do not.
    pub candidates: Vec<Candidate>,
    /// Index into `candidates`.
    pub chosen: usize,
    /// Every fleet replayed, for the cost-against-targets chart.
    pub tried: Vec<Evaluated>,
    /// The chosen fleet's utilisation over time (first seed).
    pub chosen_usage: Vec<replay::UsagePoint>,
    pub explanation: Vec<String>,
}

/// Runs the search; writes the report when `out` is set (all or nothing).
pub fn run(options: &SizeOptions, progress: &dyn Progress, cancel: &AtomicBool) -> Result<Recommendation, SizeError> {
    let started = Instant::now();
    if options.seeds.is_empty() {
        return Err(SizeError::Usage("--seeds: no seeds; write 42, 42..44 or 42,43".into()));
    }
    if !(1..=MAX_SERVERS).contains(&options.max_servers) {
        return Err(SizeError::Usage(format!(
            "--max-servers {}: expected 1 to {MAX_SERVERS} servers per model",
            options.max_servers
        )));
    }
    let valid = |value: f64| value.is_finite() && value >= 0.0;
    if !valid(options.cost.years) || !valid(options.cost.usd_per_kwh) {
        return Err(SizeError::Usage("--years and --usd-per-kwh must be 0 or more".into()));
    }
    let (catalog, catalog_file) = match &options.catalog {
        Some(path) => {
            let bytes = std::fs::read(path).map_err(|source| SizeError::Io { path: path.clone(), source })?;
            (read_catalog(path)?, fingerprint(&path.display().to_string(), &bytes))
        }
        None => (
            catalog::parse_catalog(Path::new("<default catalog>"), catalog::DEFAULT_CATALOG)?,
            fingerprint("<default catalog>", catalog::DEFAULT_CATALOG.as_bytes()),
        ),
    };
    let demand_bytes =
        std::fs::read(&options.demand).map_err(|source| SizeError::Io { path: options.demand.clone(), source })?;
    let demand_file = fingerprint(&options.demand.display().to_string(), &demand_bytes);
    let mut models: Vec<String> = Vec::new();
    for server in &catalog.servers {
        if !models.contains(&server.gpu_model) {
            models.push(server.gpu_model.clone());
        }
    }
    // The growth draw uses the first seed; every seed replays the same demand.
    let demand = read_demand(&options.demand, &models, options.growth, options.seeds[0])?;
    let setup = SearchSetup {
        targets: options.targets,
        seeds: options.seeds.clone(),
        policy: options.policy,
        cost: options.cost,
        max_servers: options.max_servers,
        threads: options.threads,
        mixes: options.mixes,
    };
    let results = search(&demand, &catalog, &setup, progress, cancel).ok_or(SizeError::Cancelled)?;

    let mut candidates: Vec<Candidate> = Vec::new();
    let mut mixes: Vec<Candidate> = Vec::new();
    for result in &results {
        let Some(fleet) = result.best.as_ref().or(result.closest.as_ref()) else { continue };
        let servers: Vec<&catalog::ServerModel> = fleet
            .parts
            .iter()
            .filter_map(|(name, _)| catalog.servers.iter().find(|server| server.name == *name))
            .collect();
        let mixed = servers.len() > 1;
        let mut rules_broken = Vec::new();
        for server in &servers {
            for mut violation in rules::check(server) {
                if mixed {
                    violation.message = format!("{}: {}", server.name, violation.message);
                }
                rules_broken.push(violation);
            }
        }
        let candidate = Candidate {
            server: result.server.clone(),
            fleet: fleet.fleet.clone(),
            description: servers.iter().map(|server| server.description.as_str()).collect::<Vec<_>>().join("; "),
            count: fleet.count,
            gpus: fleet.gpus,
            cost_usd: fleet.cost_usd,
            meets: fleet.meets,
            measured: fleet.measured.clone(),
            misses: fleet.misses.clone(),
            rules_broken,
            hopeless: result.hopeless,
            why_not: String::new(),
        };
        if !mixed {
            candidates.push(candidate);
        } else if candidate.meets {
            mixes.push(candidate);
        }
    }
    // Mixes of two models only when they meet the targets, the cheapest few.
    mixes.sort_by(|a, b| a.cost_usd.total_cmp(&b.cost_usd));
    candidates.extend(mixes.into_iter().take(MIXES_SHOWN));
    candidates.sort_by(|a, b| b.meets.cmp(&a.meets).then(a.cost_usd.total_cmp(&b.cost_usd)));
    let Some(chosen) = candidates.first().filter(|candidate| candidate.meets).cloned() else {
        let best = candidates.iter().min_by(|a, b| {
            a.misses.len().cmp(&b.misses.len()).then(b.measured.served_pct.total_cmp(&a.measured.served_pct))
        });
        let detail = match best {
            Some(best) => format!(
                "the closest, {}{}, {}; {}",
                best.fleet,
                if best.hopeless { "" } else { " (the most tried)" },
                best.misses.join("; "),
                if best.hopeless {
                    format!(
                        "{} tasks fit none of its servers; add a server model that fits them, or relax the targets",
                        best.measured.unserved_never_fit
                    )
                } else {
                    "allow larger fleets with --max-servers, or relax the targets".to_owned()
                }
            ),
            None => "the catalog has no server".into(),
        };
        return Err(SizeError::NoFleet(detail));
    };
    for candidate in candidates.iter_mut().skip(1) {
        candidate.why_not = if candidate.meets {
            format!(
                "meets the targets but costs ${:.0} more ({:+.1}%) than {}",
                candidate.cost_usd - chosen.cost_usd,
                (candidate.cost_usd / chosen.cost_usd - 1.0) * 100.0,
                chosen.fleet
            )
        } else if candidate.hopeless {
            format!(
                "no count meets the targets: {} tasks fit none of its servers (GPUs, cores or memory per task); at {} servers {}",
                candidate.measured.unserved_never_fit,
                candidate.count,
                candidate.misses.join("; ")
            )
        } else {
            format!(
                "misses the targets even at {} servers (--max-servers): {}",
                candidate.count,
                candidate.misses.join("; ")
            )
        };
    }
    let chosen_usage = results
        .iter()
        .filter_map(|result| result.best.as_ref())
        .find(|best| best.server == chosen.server)
        .and_then(|best| best.outcomes.first())
        .map(|outcome| outcome.usage.clone())
        .unwrap_or_default();
    let targets = &options.targets;
    let mut explanation = vec![format!(
        "Buy {} ({} GPUs) for ${:.0} over {} years (purchase and energy): the cheapest fleet that meets every target.",
        chosen.fleet, chosen.gpus, chosen.cost_usd, options.cost.years
    )];
    explanation.push(format!(
        "On the demand it serves {:.2}% of the GPU request (target {}%), p{} wait {}{}, peak allocation {:.1}% of its GPUs (headroom target {}%), mean {:.1}%.",
        chosen.measured.served_pct,
        targets.min_served_pct,
        targets.wait_percentile,
        duration(chosen.measured.wait_s),
        targets.max_wait_s.map(|wait| format!(" (target {})", duration(wait))).unwrap_or_default(),
        chosen.measured.peak_allocated_pct,
        targets.headroom_pct,
        chosen.measured.mean_allocated_pct,
    ));
    if let Some(fewer) = results
        .iter()
        .find(|result| result.server == chosen.server)
        .and_then(|result| result.tried.iter().rev().find(|tried| tried.count < chosen.count))
    {
        explanation.push(format!(
            "{} would not do: {}.",
            fewer.fleet,
            if fewer.misses.is_empty() { "it was not needed".to_owned() } else { fewer.misses.join("; ") }
        ));
    }
    if let Some(runner_up) = candidates.get(1).filter(|candidate| candidate.meets) {
        explanation.push(format!("The runner-up, {}, {}.", runner_up.fleet, runner_up.why_not));
    }
    if !chosen.rules_broken.is_empty() {
        let ids: Vec<&str> = chosen.rules_broken.iter().map(|violation| violation.rule).collect();
        explanation.push(format!("Check before buying: the server breaks sizing rules {}.", ids.join(", ")));
    }
    let tried = results.iter().flat_map(|result| result.tried.iter().cloned()).collect();
    let recommendation = Recommendation {
        provenance: Provenance {
            command: options.command.clone(),
            allot_version: env!("CARGO_PKG_VERSION").to_owned(),
            demand: demand_file,
            catalog: catalog_file,
            seeds: options.seeds.clone(),
            growth: options.growth,
            policy: options.policy.name().to_owned(),
            targets: options.targets,
            cost: options.cost,
            max_servers: options.max_servers,
            wall_s: started.elapsed().as_secs_f64(),
        },
        demand: demand.summary,
        catalog,
        candidates,
        chosen: 0,
        tried,
        chosen_usage,
        explanation,
    };
    if let Some(out) = &options.out {
        report::write_all_or_nothing(out, &recommendation)?;
    }
    Ok(recommendation)
}
