//! What `allotctl sim` does once its arguments are parsed: read the trace, run
//! every (policy, seed), write the output files and return the summary.

use std::path::PathBuf;
use std::time::Instant;

use allot_placement::packing::PackingPolicy;

use crate::SimError;
use crate::batch::run_batch;
use crate::generate::{MixTarget, resample, to_alibaba_csv};
use crate::report::{Summary, curves, summarize, table, write_outputs};
use crate::trace::{read_cluster, read_tasks};

/// The options of one simulation.
#[derive(Debug, Clone, PartialEq)]
pub struct SimOptions {
    pub nodes: PathBuf,
    pub tasks: PathBuf,
    pub policies: Vec<PackingPolicy>,
    pub seeds: Vec<u64>,
    pub inflation: f64,
    /// Where curve.json, curve.csv, summary.json and plot.svg go; none: not written.
    pub out: Option<PathBuf>,
    /// 0: one per core.
    pub threads: usize,
    /// Replay a list resampled from `tasks` to another mix instead (written to
    /// `out/tasks.csv`).
    pub resample: Option<MixTarget>,
    pub resample_seed: u64,
}

/// Parses `42..51` (both ends included), `42`, or `42,45,47`.
pub fn parse_seeds(text: &str) -> Result<Vec<u64>, SimError> {
    let usage = |why: &str| {
        SimError::Usage(format!(
            "--seeds {text:?}: {why}; write a range like 42..51 (both ends included), one seed, or a list like 42,43"
        ))
    };
    let number =
        |word: &str| word.trim().parse::<u64>().map_err(|_| usage(&format!("{:?} is not a whole number", word.trim())));
    let seeds: Vec<u64> = if let Some((first, last)) = text.split_once("..") {
        let (first, last) = (number(first)?, number(last.trim_start_matches('='))?);
        if last < first {
            return Err(usage("the range ends before it starts"));
        }
        if last - first >= 10_000 {
            return Err(usage("more than 10,000 seeds"));
        }
        (first..=last).collect()
    } else {
        text.split(',').map(number).collect::<Result<_, _>>()?
    };
    if seeds.is_empty() {
        return Err(usage("no seeds"));
    }
    Ok(seeds)
}

/// Parses `allot`, `fgd,bestfit` or `all`.
pub fn parse_policies(text: &str) -> Result<Vec<PackingPolicy>, SimError> {
    if text.trim() == "all" {
        return Ok(PackingPolicy::ALL.to_vec());
    }
    let mut policies = Vec::new();
    for name in text.split(',').map(str::trim) {
        let policy = PackingPolicy::from_name(name).ok_or_else(|| {
            let names: Vec<&str> = PackingPolicy::ALL.iter().map(PackingPolicy::name).collect();
            SimError::Usage(format!("--policy: unknown policy {name:?}; known: {}, or all", names.join(", ")))
        })?;
        if !policies.contains(&policy) {
            policies.push(policy);
        }
    }
    Ok(policies)
}

/// Runs the simulation; returns the summary and the table for people.
pub fn run(options: &SimOptions) -> Result<(Summary, String), SimError> {
    if !(options.inflation.is_finite() && options.inflation > 0.0 && options.inflation <= 10.0) {
        return Err(SimError::Usage(format!(
            "--inflation {}: expected a factor above 0 and at most 10, like 1.3",
            options.inflation
        )));
    }
    let start = Instant::now();
    let cluster = read_cluster(&options.nodes)?;
    let mut tasks = read_tasks(&options.tasks, &cluster)?;
    let mut tasks_label = options.tasks.display().to_string();
    if let Some(target) = options.resample {
        tasks = resample(&tasks, &cluster, target, options.resample_seed)?;
        tasks_label = format!("{tasks_label} resampled to {} (seed {})", target.label(), options.resample_seed);
        if let Some(out) = &options.out {
            std::fs::create_dir_all(out).map_err(|source| SimError::Write { path: out.clone(), source })?;
            let path = out.join("tasks.csv");
            std::fs::write(&path, to_alibaba_csv(&tasks, &cluster))
                .map_err(|source| SimError::Write { path, source })?;
        }
    }
    let results = run_batch(&cluster, &tasks, &options.policies, &options.seeds, options.inflation, options.threads);
    let summary = summarize(
        &results,
        &options.policies,
        &options.nodes.display().to_string(),
        &tasks_label,
        cluster.gpu_count(),
        options.inflation,
        &options.seeds,
        start.elapsed().as_secs_f64(),
    );
    if let Some(out) = &options.out {
        write_outputs(out, &results, &summary, &curves(&results, &options.policies))?;
    }
    let text = table(&summary);
    Ok((summary, text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_and_policies_parse_or_say_how_to_fix_them() {
        assert_eq!(parse_seeds("42..51").expect("range").len(), 10);
        assert_eq!(parse_seeds("7").expect("one"), vec![7]);
        assert_eq!(parse_seeds("1,3").expect("list"), vec![1, 3]);
        for bad in ["51..42", "a..b", "", "1,,2"] {
            let error = parse_seeds(bad).expect_err(bad).to_string();
            assert!(error.contains("--seeds") && error.contains("42..51"), "{error}");
        }
        assert_eq!(parse_policies("all").expect("all").len(), 7);
        assert_eq!(parse_policies("fgd, allot").expect("two"), vec![PackingPolicy::Fgd, PackingPolicy::Allot]);
        let error = parse_policies("fgd,best").expect_err("unknown").to_string();
        assert!(error.contains("unknown policy \"best\"") && error.contains("bestfit"), "{error}");
    }
}
