//! `allotctl sim`: replays a task trace against a cluster with Allot's placement
//! policies (allot-sim), without a broker.

use std::path::PathBuf;

use clap::Args;

use crate::{CtlError, Format};

#[derive(Debug, Args)]
pub struct SimArgs {
    /// Node list: CSV with columns sn,cpu_milli,memory_mib,gpu,model.
    #[arg(long)]
    pub nodes: PathBuf,
    /// Task list: the Alibaba CSV (name,cpu_milli,memory_mib,num_gpu,gpu_milli[,gpu_spec,...]) or the native
    /// format (name,team,arrival_s,departure_s,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec); see
    /// docs/simulator.md.
    #[arg(long)]
    pub tasks: PathBuf,
    /// allot, fgd, bestfit, gpupacking, gpuclustering, dotproduct, random, a comma-separated list, or all.
    #[arg(long, default_value = "allot")]
    pub policy: String,
    /// Seeds: a range with both ends included (42..51), one seed, or a list (42,43).
    #[arg(long, default_value = "42")]
    pub seeds: String,
    /// Total GPU request of an Alibaba list, as a multiple of the cluster's GPU capacity.
    #[arg(long, default_value_t = 1.3)]
    pub inflation: f64,
    /// Directory for curve.json, curve.csv, summary.json and plot.svg.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Worker threads; 0 means one per core.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Replay the task list resampled to another mix: gpushare=PCT, multigpu=PCT, gpuspec=PCT or cpu=PCT.
    #[arg(long)]
    pub resample: Option<String>,
    /// Seed of the resampling.
    #[arg(long, default_value_t = 1)]
    pub resample_seed: u64,
}

/// Runs the simulation and returns the table (or the summary as JSON).
pub fn run(args: &SimArgs, format: Format) -> Result<String, CtlError> {
    let usage = |error: allot_sim::SimError| CtlError::Usage(error.to_string());
    let options = allot_sim::cli::SimOptions {
        nodes: args.nodes.clone(),
        tasks: args.tasks.clone(),
        policies: allot_sim::cli::parse_policies(&args.policy).map_err(usage)?,
        seeds: allot_sim::cli::parse_seeds(&args.seeds).map_err(usage)?,
        inflation: args.inflation,
        out: args.out.clone(),
        threads: args.threads,
        resample: args.resample.as_deref().map(allot_sim::generate::MixTarget::parse).transpose().map_err(usage)?,
        resample_seed: args.resample_seed,
    };
    let (summary, table) = allot_sim::cli::run(&options).map_err(usage)?;
    match format {
        Format::Table => Ok(table),
        Format::Json => serde_json::to_string_pretty(&summary)
            .map_err(|error| CtlError::Usage(format!("cannot write the summary as JSON: {error}"))),
    }
}
