//! Many runs at once: every (policy, seed) pair of a batch on its own job, spread
//! over a few threads (the runs share nothing but the read-only trace).

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use allot_placement::packing::PackingPolicy;

use crate::protocol::{RunConfig, RunResult, run};
use crate::trace::{Cluster, TaskList};

/// Runs every policy with every seed; results come back ordered by policy (in the
/// order given), then seed. `threads` 0 means one per available core.
pub fn run_batch(
    cluster: &Cluster,
    tasks: &TaskList,
    policies: &[PackingPolicy],
    seeds: &[u64],
    inflation: f64,
    threads: usize,
) -> Vec<RunResult> {
    let jobs: Vec<RunConfig> = policies
        .iter()
        .flat_map(|policy| seeds.iter().map(move |seed| RunConfig { inflation, ..RunConfig::new(*policy, *seed) }))
        .collect();
    let threads =
        if threads == 0 { std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) } else { threads };
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<RunResult>>> = Mutex::new(vec![None; jobs.len()]);
    std::thread::scope(|scope| {
        for _ in 0..threads.min(jobs.len()).max(1) {
            scope.spawn(|| {
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some(job) = jobs.get(index) else { break };
                    let result = run(cluster, tasks, job);
                    if let Ok(mut results) = results.lock() {
                        results[index] = Some(result);
                    }
                }
            });
        }
    });
    results.into_inner().unwrap_or_default().into_iter().flatten().collect()
}
