//! `allot-fuzz`: fuzzes one target (or all in turn) for a time or a number of
//! inputs, or replays saved inputs through a target to see the panic in full.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use allot_fuzz::engine::{self, Budget, Config};
use allot_fuzz::targets::{TARGETS, find};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "allot-fuzz", about = "Fuzz what Allot reads from outside, through the production code that reads it")]
struct Args {
    /// A target, `all` for each in turn, or `list` to show them.
    target: String,
    /// Fuzz for this many seconds (each, with `all`).
    #[arg(long, conflicts_with = "iterations")]
    seconds: Option<u64>,
    /// Fuzz this many mutated inputs (each, with `all`) instead of a time.
    #[arg(long)]
    iterations: Option<u64>,
    /// The seed of the mutations (default: from the clock; printed, to replay a run).
    #[arg(long)]
    seed: Option<u64>,
    /// Run only these files through the target, without catching panics (set
    /// RUST_BACKTRACE=1 for the backtrace).
    #[arg(long = "input", num_args = 1..)]
    inputs: Vec<PathBuf>,
    /// Report an input that runs longer than this many seconds as a hang,
    /// instead of the target's own limit (to find inputs that are merely slow).
    #[arg(long)]
    time_limit: Option<f64>,
    /// Where crashing inputs are saved, under a folder per target.
    #[arg(long, default_value_os_t = engine::artifacts_dir())]
    artifacts: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.target == "list" {
        for target in TARGETS {
            println!("{:<16} {}", target.name, target.summary);
        }
        return ExitCode::SUCCESS;
    }
    let targets: Vec<_> = if args.target == "all" {
        TARGETS.iter().collect()
    } else {
        match find(&args.target) {
            Some(target) => vec![target],
            None => {
                let names: Vec<&str> = TARGETS.iter().map(|target| target.name).collect();
                eprintln!("allot-fuzz: no target {:?}; the targets are {}", args.target, names.join(", "));
                return ExitCode::from(2);
            }
        }
    };
    if !args.inputs.is_empty() {
        return replay(&targets, &args.inputs);
    }
    let seed = args.seed.unwrap_or_else(|| {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|since| since.as_nanos() as u64).unwrap_or(1)
    });
    let budget = match (args.iterations, args.seconds) {
        (Some(count), _) => Budget::Iterations(count),
        (None, seconds) => Budget::Time(Duration::from_secs(seconds.unwrap_or(60))),
    };
    let time_limit = args.time_limit.map(Duration::from_secs_f64);
    let config = Config { seed, budget, artifacts: args.artifacts, progress: true, time_limit };
    eprintln!("allot-fuzz: seed {seed} (pass --seed {seed} to replay this run)");
    let mut failed = false;
    for target in targets {
        match engine::fuzz(target, &config) {
            Ok(report) => {
                println!("{report}");
                if !report.crashes.is_empty() {
                    failed = true;
                    if report.crashes.iter().any(|crash| crash.kind == engine::CrashKind::Hang) {
                        // The hung input is still running on its thread; only an exit stops it.
                        std::process::exit(1);
                    }
                }
            }
            Err(error) => {
                eprintln!("allot-fuzz: {error}");
                failed = true;
            }
        }
    }
    if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

/// Runs saved inputs through each target, letting a panic through as it is.
fn replay(targets: &[&'static engine::Target], inputs: &[PathBuf]) -> ExitCode {
    for target in targets {
        for path in inputs {
            let input = match std::fs::read(path)
                .map_err(|error| error.to_string())
                .and_then(|bytes| (target.load)(path, bytes))
            {
                Ok(input) => input,
                Err(error) => {
                    eprintln!("allot-fuzz: {}: {error}", path.display());
                    return ExitCode::FAILURE;
                }
            };
            let started = std::time::Instant::now();
            let outcome = (target.run)(&input);
            let took = started.elapsed();
            match outcome {
                Ok(description) => println!("{} {}: accepted ({description}) in {took:?}", target.name, path.display()),
                Err(message) => println!("{} {}: rejected in {took:?}: {message}", target.name, path.display()),
            }
        }
    }
    ExitCode::SUCCESS
}
