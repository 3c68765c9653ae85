//! `allotctl size`: the procurement sizing tool (allot-sim's `size` module): the
//! cheapest fleet of catalog servers that meets queue-wait, served-demand and
//! headroom targets on a demand trace, with a progress bar on stderr and Ctrl-C
//! that stops without leaving anything in --out.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use allot_sim::size::search::{CostModel, Progress, Targets};
use clap::Args;

use crate::{CtlError, Format};

#[derive(Debug, Args)]
pub struct SizeArgs {
    /// Demand: a task list in the native format (arrival_s, departure_s, team, ...) or Alibaba's (replayed with its
    /// creation, scheduled and deletion times); see docs/sizing.md.
    #[arg(long)]
    pub demand: PathBuf,
    /// Server catalog (TOML); default: the catalog shipped with Allot (tools/sim/src/size/default-catalog.toml).
    #[arg(long)]
    pub catalog: Option<PathBuf>,
    /// A target, repeatable: wait.p95=30m (queue wait percentile), served=99.5 (% of the GPU request that
    /// starts), headroom=10 (% of GPUs free at the peak). Default: served=99.
    #[arg(long = "target")]
    pub targets: Vec<String>,
    /// Multiply the demand by this factor (tasks copied, the fraction drawn with the first seed).
    #[arg(long, default_value_t = 1.0)]
    pub growth: f64,
    /// Seeds: a range with both ends included (42..44), one seed, or a list; a fleet must meet the targets
    /// under every seed.
    #[arg(long, default_value = "42")]
    pub seeds: String,
    /// Placement policy used in the replay.
    #[arg(long, default_value = "allot")]
    pub policy: String,
    /// Years of energy counted in the cost.
    #[arg(long, default_value_t = 3.0)]
    pub years: f64,
    /// Price of energy, USD per kWh (at the servers' maximum power).
    #[arg(long, default_value_t = 0.12)]
    pub usd_per_kwh: f64,
    /// The largest fleet tried per server model.
    #[arg(long, default_value_t = 4096)]
    pub max_servers: u32,
    /// Do not search fleets of two server models.
    #[arg(long)]
    pub no_mixes: bool,
    /// Worker threads; 0 means one per core.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Directory for report.json and report.html (written whole or not at all).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// A progress bar with an estimate of the time left, on stderr.
struct Bar {
    started: Instant,
    quiet: bool,
    last: Mutex<Option<Instant>>,
}

impl Progress for Bar {
    fn update(&self, done: usize, expected: usize) {
        if self.quiet {
            return;
        }
        let Ok(mut last) = self.last.lock() else { return };
        let now = Instant::now();
        if done != expected && last.is_some_and(|last| now.duration_since(last).as_millis() < 200) {
            return;
        }
        *last = Some(now);
        let elapsed = self.started.elapsed().as_secs_f64();
        let fraction = if expected == 0 { 0.0 } else { done as f64 / expected as f64 };
        let width = 30;
        let filled = (fraction * width as f64).round() as usize;
        let left = if done == 0 { "?".to_owned() } else { format!("{:.0} s", elapsed / fraction - elapsed) };
        let mut stderr = std::io::stderr().lock();
        let _ = write!(
            stderr,
            "\rsizing [{}{}] {done}/~{expected} replays, {elapsed:.0} s, about {left} left  ",
            "#".repeat(filled.min(width)),
            "-".repeat(width - filled.min(width))
        );
        if std::io::stderr().is_terminal() || done == expected {
            let _ = stderr.flush();
        }
    }
}

/// Runs the search; Ctrl-C sets the cancel flag and the search stops cleanly.
pub async fn run(args: &SizeArgs, format: Format) -> Result<String, CtlError> {
    let usage = |error: String| CtlError::Usage(error);
    let mut targets = Targets::default();
    for target in &args.targets {
        targets.apply(target).map_err(|error| usage(error.to_string()))?;
    }
    let seeds = allot_sim::cli::parse_seeds(&args.seeds).map_err(|error| usage(error.to_string()))?;
    let policy = allot_sim::cli::parse_policies(&args.policy).map_err(|error| usage(error.to_string()))?;
    let [policy] = policy.as_slice() else {
        return Err(usage(format!("--policy {:?}: name one policy, like allot", args.policy)));
    };
    let options = allot_sim::size::SizeOptions {
        demand: args.demand.clone(),
        catalog: args.catalog.clone(),
        growth: args.growth,
        targets,
        seeds,
        policy: *policy,
        cost: CostModel { years: args.years, usd_per_kwh: args.usd_per_kwh },
        max_servers: args.max_servers,
        threads: args.threads,
        mixes: !args.no_mixes,
        out: args.out.clone(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
    };
    let cancel = Arc::new(AtomicBool::new(false));
    // The handler is registered here, before the search starts, so a Ctrl-C
    // that comes at once still cancels cleanly rather than killing the process.
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|error| usage(format!("cannot watch for Ctrl-C: {error}")))?;
    let watcher = {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            if interrupt.recv().await.is_some() {
                cancel.store(true, Ordering::Relaxed);
            }
        })
    };
    let quiet = args.quiet;
    let worker_cancel = cancel.clone();
    let result = tokio::task::spawn_blocking(move || {
        let bar = Bar { started: Instant::now(), quiet, last: Mutex::new(None) };
        let result = allot_sim::size::run(&options, &bar, &worker_cancel);
        if !quiet {
            eprintln!();
        }
        result
    })
    .await;
    watcher.abort();
    let recommendation = match result {
        Ok(Ok(recommendation)) => recommendation,
        Ok(Err(error)) => return Err(usage(error.to_string())),
        Err(error) => return Err(usage(format!("the search stopped: {error}"))),
    };
    match format {
        Format::Json => serde_json::to_string_pretty(&recommendation)
            .map_err(|error| usage(format!("cannot write the report as JSON: {error}"))),
        Format::Table => {
            let mut text = recommendation.explanation.join("\n");
            text.push_str("\n\nfleet                                   GPUs      cost (USD)  result\n");
            for (index, candidate) in recommendation.candidates.iter().enumerate() {
                text.push_str(&format!(
                    "{:<36} {:>6} {:>15.0}  {}\n",
                    candidate.fleet,
                    candidate.gpus,
                    candidate.cost_usd,
                    if index == recommendation.chosen { "chosen".to_owned() } else { candidate.why_not.clone() }
                ));
                for violation in &candidate.rules_broken {
                    text.push_str(&format!("{:>8} rule {}: {}\n", "", violation.rule, violation.message));
                }
            }
            text.push_str(&format!(
                "\nseeds {:?}; {:.1} s",
                recommendation.provenance.seeds, recommendation.provenance.wall_s
            ));
            if let Some(out) = &args.out {
                text.push_str(&format!("; report in {}", out.join("report.html").display()));
            }
            Ok(text)
        }
    }
}
