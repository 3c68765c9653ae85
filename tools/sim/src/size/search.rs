//! The search over fleets: for each server model, the smallest count that meets
//! the targets (found by doubling, then bisection: more servers of a model never
//! serve less), then the fleets ranked by cost.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use allot_placement::packing::PackingPolicy;
use serde::Serialize;

use super::SizeError;
use super::catalog::{Catalog, ServerModel};
use super::demand::Demand;
use super::replay::{FleetNode, ReplayOutcome, replay};

/// What the fleet must achieve.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Targets {
    /// Which wait percentile is bounded (95 for p95).
    pub wait_percentile: f64,
    /// The bound on that percentile, in seconds; `None`: no wait target.
    pub max_wait_s: Option<f64>,
    /// Share of the GPU request that must start, %.
    pub min_served_pct: f64,
    /// GPUs that must stay free at the busiest moment, % of the fleet.
    pub headroom_pct: f64,
}

impl Default for Targets {
    fn default() -> Targets {
        Targets { wait_percentile: 95.0, max_wait_s: None, min_served_pct: 99.0, headroom_pct: 0.0 }
    }
}

impl Targets {
    /// Parses one `--target`: `wait.p95=30m`, `served=99.5`, `headroom=10`.
    pub fn apply(&mut self, text: &str) -> Result<(), SizeError> {
        let usage = |why: String| {
            SizeError::Usage(format!(
                "--target {text:?}: {why}; write wait.p95=30m (a wait percentile and a duration in s, m, h or d), served=99.5 (% of the GPU request that starts) or headroom=10 (% of GPUs free at the peak)"
            ))
        };
        let (key, value) = text.split_once('=').ok_or_else(|| usage("no '='".into()))?;
        let (key, value) = (key.trim(), value.trim());
        let percent = |value: &str| -> Result<f64, SizeError> {
            match value.trim_end_matches('%').parse::<f64>() {
                Ok(number) if (0.0..=100.0).contains(&number) => Ok(number),
                _ => Err(usage(format!("{value:?} is not a percentage from 0 to 100"))),
            }
        };
        if let Some(percentile) = key.strip_prefix("wait.p") {
            let percentile: f64 = match percentile.parse::<f64>() {
                Ok(number) if number > 0.0 && number <= 100.0 => number,
                _ => return Err(usage(format!("{percentile:?} is not a percentile above 0 and at most 100"))),
            };
            let (number, unit) = match value.find(|c: char| c.is_ascii_alphabetic()) {
                Some(position) => value.split_at(position),
                None => (value, "s"),
            };
            let scale = match unit {
                "s" => 1.0,
                "m" | "min" => 60.0,
                "h" => 3600.0,
                "d" => 86400.0,
                _ => return Err(usage(format!("unknown unit {unit:?}"))),
            };
            let seconds = match number.parse::<f64>() {
                Ok(number) if number.is_finite() && number >= 0.0 => number * scale,
                _ => return Err(usage(format!("{number:?} is not a duration"))),
            };
            self.wait_percentile = percentile;
            self.max_wait_s = Some(seconds);
        } else if key == "served" {
            self.min_served_pct = percent(value)?;
        } else if key == "headroom" {
            let headroom = percent(value)?;
            if headroom >= 100.0 {
                return Err(usage("a headroom of 100% leaves nothing to use".into()));
            }
            self.headroom_pct = headroom;
        } else {
            return Err(usage(format!("unknown target {key:?}")));
        }
        Ok(())
    }

    /// Which targets the outcome misses, each with by how much.
    pub fn misses(&self, outcome: &Measured) -> Vec<String> {
        let mut misses = Vec::new();
        if outcome.served_pct + 1e-9 < self.min_served_pct {
            misses.push(format!(
                "served {:.2}% of the GPU request, {:.2} points short of the {}% target",
                outcome.served_pct,
                self.min_served_pct - outcome.served_pct,
                self.min_served_pct
            ));
        }
        if let Some(max_wait) = self.max_wait_s
            && outcome.wait_s > max_wait + 1e-9
        {
            misses.push(if outcome.wait_s.is_finite() {
                format!(
                    "p{} wait {}, {} over the {} target",
                    self.wait_percentile,
                    duration(outcome.wait_s),
                    duration(outcome.wait_s - max_wait),
                    duration(max_wait)
                )
            } else {
                format!(
                    "p{} wait is unbounded (more than {}% of the tasks never start), target {}",
                    self.wait_percentile,
                    100.0 - self.wait_percentile,
                    duration(max_wait)
                )
            });
        }
        let limit = 100.0 - self.headroom_pct;
        if self.headroom_pct > 0.0 && outcome.peak_allocated_pct > limit + 1e-9 {
            misses.push(format!(
                "peak allocation {:.1}% of the GPUs leaves {:.1}% free, {:.1} points short of the {}% headroom",
                outcome.peak_allocated_pct,
                100.0 - outcome.peak_allocated_pct,
                outcome.peak_allocated_pct - limit,
                self.headroom_pct
            ));
        }
        misses
    }
}

/// A duration for people: 45 s, 12.5 min, 3.2 h, 2.1 d.
pub fn duration(seconds: f64) -> String {
    if !seconds.is_finite() {
        "unbounded".into()
    } else if seconds < 60.0 {
        format!("{seconds:.0} s")
    } else if seconds < 3600.0 {
        format!("{:.1} min", seconds / 60.0)
    } else if seconds < 86400.0 {
        format!("{:.1} h", seconds / 3600.0)
    } else {
        format!("{:.1} d", seconds / 86400.0)
    }
}

/// The worst over seeds of what the targets look at.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Measured {
    pub served_pct: f64,
    /// The target's wait percentile, seconds (infinite when too many never start;
    /// written as null in JSON).
    #[serde(serialize_with = "finite_or_null")]
    pub wait_s: f64,
    pub peak_allocated_pct: f64,
    pub mean_allocated_pct: f64,
    pub unserved_tasks: usize,
    pub unserved_never_fit: usize,
}

fn finite_or_null<S: serde::Serializer>(value: &f64, serializer: S) -> Result<S::Ok, S::Error> {
    if value.is_finite() { serializer.serialize_some(value) } else { serializer.serialize_none() }
}

/// One fleet that was replayed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evaluated {
    /// The search this fleet belongs to: a server model, or a model added to a
    /// fixed number of another (`l4-8gpu + 1 x dgx-a100`).
    pub server: String,
    /// Servers of the model the search varies.
    pub count: u32,
    /// The whole fleet for people: `3 x dgx-h100`, `1 x dgx-a100 + 6 x l4-8gpu`.
    pub fleet: String,
    /// The whole fleet: server model and count.
    pub parts: Vec<(String, u32)>,
    pub gpus: u32,
    pub cost_usd: f64,
    pub measured: Measured,
    pub meets: bool,
    pub misses: Vec<String>,
    /// One outcome per seed (utilisation curves included).
    #[serde(skip)]
    pub outcomes: Vec<ReplayOutcome>,
}

/// How cost is counted: purchase plus energy at the servers' maximum power.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CostModel {
    pub years: f64,
    pub usd_per_kwh: f64,
}

impl CostModel {
    pub fn server_cost(&self, server: &ServerModel) -> f64 {
        server.price_usd + server.max_power_kw * 24.0 * 365.25 * self.years * self.usd_per_kwh
    }
}

/// The setup of a search.
#[derive(Debug, Clone)]
pub struct SearchSetup {
    pub targets: Targets,
    pub seeds: Vec<u64>,
    pub policy: PackingPolicy,
    pub cost: CostModel,
    /// The largest fleet tried per model, in servers.
    pub max_servers: u32,
    pub threads: usize,
    /// Also search fleets of two models.
    pub mixes: bool,
}

/// What the search found for one server model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelResult {
    pub server: String,
    /// The smallest fleet that meets the targets, or none up to `max_servers`.
    pub best: Option<Evaluated>,
    /// The largest fleet tried when none met the targets (what fell short, and by how much).
    pub closest: Option<Evaluated>,
    /// No count of this model can meet the targets: the tasks it leaves
    /// unserved fit none of its servers (too many GPUs, cores or memory).
    pub hopeless: bool,
    /// Every fleet replayed, by count.
    pub tried: Vec<Evaluated>,
}

/// Progress: replays done and the expected total.
pub trait Progress: Sync {
    fn update(&self, done: usize, expected: usize);
}

fn fleet_of(server: &ServerModel, model_id: u8, count: u32) -> Vec<FleetNode> {
    let node = FleetNode {
        gpus: server.gpu_count,
        model: model_id,
        cpu_milli: server.cpu_cores.saturating_mul(1000),
        memory_mib: (server.memory_gib * 1024.0) as u64,
    };
    vec![node; count as usize]
}

/// Replays `count` servers under every seed and scores them.
fn evaluate(
    demand: &Demand,
    base: Option<Base>,
    server: &ServerModel,
    model_id: u8,
    count: u32,
    setup: &SearchSetup,
    cancel: &AtomicBool,
) -> Option<Evaluated> {
    if cancel.load(Ordering::Relaxed) {
        return None;
    }
    let mut fleet = Vec::new();
    let mut parts = Vec::new();
    let (mut gpus, mut cost_usd) = (0u32, 0.0);
    for (part, part_id, part_count) in base.into_iter().chain([(server, model_id, count)]) {
        fleet.extend(fleet_of(part, part_id, part_count));
        parts.push((part.name.clone(), part_count));
        gpus += part_count * u32::from(part.gpu_count);
        cost_usd += f64::from(part_count) * setup.cost.server_cost(part);
    }
    let mut outcomes = Vec::new();
    for seed in &setup.seeds {
        let outcome = replay(demand, &fleet, setup.policy, *seed, cancel);
        if !outcome.finished {
            return None;
        }
        outcomes.push(outcome);
    }
    let worst = |value: fn(&ReplayOutcome) -> f64, max: bool| {
        outcomes
            .iter()
            .map(value)
            .fold(if max { f64::NEG_INFINITY } else { f64::INFINITY }, |a, b| if max { a.max(b) } else { a.min(b) })
    };
    let percentile = setup.targets.wait_percentile;
    let measured = Measured {
        served_pct: worst(|outcome| outcome.served_pct, false),
        wait_s: outcomes.iter().map(|outcome| outcome.wait_percentile(percentile)).fold(0.0, f64::max),
        peak_allocated_pct: worst(|outcome| outcome.peak_allocated_pct, true),
        mean_allocated_pct: outcomes.iter().map(|outcome| outcome.mean_allocated_pct).sum::<f64>()
            / outcomes.len().max(1) as f64,
        unserved_tasks: outcomes.iter().map(|outcome| outcome.unserved_tasks).max().unwrap_or(0),
        unserved_never_fit: outcomes.iter().map(|outcome| outcome.unserved_never_fit).max().unwrap_or(0),
    };
    let misses = setup.targets.misses(&measured);
    let label: Vec<String> = parts.iter().map(|(name, count)| format!("{count} x {name}")).collect();
    Some(Evaluated {
        server: search_label(base, server),
        count,
        fleet: label.join(" + "),
        parts,
        gpus,
        cost_usd,
        meets: misses.is_empty(),
        misses,
        measured,
        outcomes,
    })
}

/// The most GPU the demand holds at once when nothing waits: where the search starts.
pub fn peak_demand_gpus(demand: &Demand) -> f64 {
    let mut events: Vec<(f64, f64)> = Vec::with_capacity(demand.tasks.len() * 2);
    for task in &demand.tasks {
        let gpu = f64::from(task.shape.gpu_total_milli()) / 1000.0;
        events.push((task.arrival_s, gpu));
        if let Some(run) = task.run_s {
            events.push((task.arrival_s + run, -gpu));
        }
    }
    events.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
    let (mut now, mut peak) = (0.0f64, 0.0f64);
    for (_, change) in events {
        now += change;
        peak = peak.max(now);
    }
    peak
}

/// Searches every server model of the catalog (on threads) and returns one
/// result per model, in catalog order; `None` when cancelled.
pub fn search(
    demand: &Demand,
    catalog: &Catalog,
    setup: &SearchSetup,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Option<Vec<ModelResult>> {
    let peak = peak_demand_gpus(demand);
    let done = AtomicUsize::new(0);
    // From the peak's count, doubling or halving takes a step or two and the
    // bisection about log2 of the count.
    let expected: usize = catalog
        .servers
        .iter()
        .map(|server| 3 + (peak / f64::from(server.gpu_count)).max(2.0).log2().ceil() as usize)
        .sum();
    let expected = AtomicUsize::new(expected);
    let id_of =
        |server: &ServerModel| demand.models.iter().position(|model| *model == server.gpu_model).unwrap_or(0) as u8;
    let singles: Vec<Job> = catalog.servers.iter().map(|server| (None, server)).collect();
    let mut results = run_jobs(demand, &singles, peak, setup, progress, cancel, &done, &expected, &id_of)?;
    if setup.mixes {
        // Two models: a few servers of one (1 or 2, fewer than it needs alone)
        // plus as many as needed of a model that is cheaper per GPU.
        let per_gpu = |server: &ServerModel| setup.cost.server_cost(server) / f64::from(server.gpu_count);
        let mut mixes: Vec<Job> = Vec::new();
        for (fixed, alone) in catalog.servers.iter().zip(&results) {
            let most = alone.best.as_ref().map(|best| best.count.saturating_sub(1)).unwrap_or(2).min(2);
            for count in 1..=most {
                for varied in &catalog.servers {
                    if varied.name != fixed.name && per_gpu(varied) < per_gpu(fixed) {
                        mixes.push((Some((fixed, id_of(fixed), count)), varied));
                    }
                }
            }
        }
        let more: usize = mixes.len() * 4;
        expected.fetch_add(more, Ordering::Relaxed);
        results.extend(run_jobs(demand, &mixes, peak, setup, progress, cancel, &done, &expected, &id_of)?);
    }
    if cancel.load(Ordering::Relaxed) {
        return None;
    }
    let done = done.load(Ordering::Relaxed);
    progress.update(done, done);
    Some(results)
}

/// One search: an optional fixed part and the model whose count is searched.
type Job<'a> = (Option<Base<'a>>, &'a ServerModel);

#[allow(clippy::too_many_arguments)]
fn run_jobs(
    demand: &Demand,
    jobs: &[Job],
    peak: f64,
    setup: &SearchSetup,
    progress: &dyn Progress,
    cancel: &AtomicBool,
    done: &AtomicUsize,
    expected: &AtomicUsize,
    id_of: &(dyn Fn(&ServerModel) -> u8 + Sync),
) -> Option<Vec<ModelResult>> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<ModelResult>>> = Mutex::new(vec![None; jobs.len()]);
    let threads = if setup.threads == 0 {
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    } else {
        setup.threads
    };
    progress.update(done.load(Ordering::Relaxed), expected.load(Ordering::Relaxed));
    std::thread::scope(|scope| {
        for _ in 0..threads.min(jobs.len()).max(1) {
            scope.spawn(|| {
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some((base, server)) = jobs.get(index) else { break };
                    let step = || {
                        let now = done.fetch_add(1, Ordering::Relaxed) + 1;
                        let total = expected.fetch_max(now, Ordering::Relaxed).max(now);
                        progress.update(now, total);
                    };
                    let result = search_model(demand, *base, (server, id_of(server)), peak, setup, cancel, &step);
                    if let (Some(result), Ok(mut results)) = (result, results.lock()) {
                        results[index] = Some(result);
                    }
                }
            });
        }
    });
    if cancel.load(Ordering::Relaxed) {
        return None;
    }
    results.into_inner().ok()?.into_iter().collect()
}

/// A fixed part of a fleet: a server model, its model id and how many.
type Base<'a> = (&'a ServerModel, u8, u32);

/// The name of a search: the varied model, with the fixed part when there is one.
fn search_label(base: Option<Base>, server: &ServerModel) -> String {
    match base {
        None => server.name.clone(),
        Some((fixed, _, count)) => format!("{} + {count} x {}", server.name, fixed.name),
    }
}

fn search_model(
    demand: &Demand,
    base: Option<Base>,
    (server, model_id): (&ServerModel, u8),
    peak_gpus: f64,
    setup: &SearchSetup,
    cancel: &AtomicBool,
    step: &dyn Fn(),
) -> Option<ModelResult> {
    let mut tried: Vec<Evaluated> = Vec::new();
    let run = |count: u32, tried: &mut Vec<Evaluated>| -> Option<bool> {
        let evaluated = evaluate(demand, base, server, model_id, count, setup, cancel)?;
        step();
        let meets = evaluated.meets;
        tried.push(evaluated);
        Some(meets)
    };
    let max = setup.max_servers.max(1);
    // Start at the count that holds the peak with nothing waiting, then double
    // (or halve) to bracket the smallest count that meets the targets.
    let fixed_gpus = base.map(|(fixed, _, count)| f64::from(count) * f64::from(fixed.gpu_count)).unwrap_or(0.0);
    let start = (((peak_gpus - fixed_gpus) / f64::from(server.gpu_count)).ceil() as u32).clamp(1, max);
    let (mut low, mut high);
    if run(start, &mut tried)? {
        high = start;
        low = 0;
        let mut probe = start / 2;
        while probe >= 1 {
            if run(probe, &mut tried)? {
                high = probe;
                probe /= 2;
            } else {
                low = probe;
                break;
            }
        }
    } else {
        low = start;
        high = 0;
        let mut probe = start;
        while probe < max && !no_count_helps(tried.last(), &setup.targets) {
            probe = probe.saturating_mul(2).min(max);
            if run(probe, &mut tried)? {
                high = probe;
                break;
            }
            low = probe;
        }
    }
    if high > 0 {
        // Invariant: `low` fails (or is 0), `high` meets.
        while high - low > 1 {
            let middle = low + (high - low) / 2;
            if run(middle, &mut tried)? {
                high = middle;
            } else {
                low = middle;
            }
        }
    }
    let hopeless = high == 0 && no_count_helps(tried.last(), &setup.targets);
    tried.sort_by_key(|evaluated| evaluated.count);
    let best = tried.iter().find(|evaluated| evaluated.meets && evaluated.count == high).cloned();
    let closest = if best.is_none() { tried.last().cloned() } else { None };
    Some(ModelResult { server: search_label(base, server), best, closest, hopeless, tried })
}

/// Whether more servers of the model cannot help: the served target is missed
/// and every task left unserved fits no server of the model at all.
fn no_count_helps(last: Option<&Evaluated>, targets: &Targets) -> bool {
    last.is_some_and(|last| {
        last.measured.served_pct + 1e-9 < targets.min_served_pct
            && last.measured.unserved_tasks == last.measured.unserved_never_fit
    })
}
