//! Development helper: one list, some policies, some seeds; prints medians.
use std::path::Path;

use allot_placement::packing::PackingPolicy;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = Path::new("/work/shared/traces/alibaba-gpu-v2023");
    let cluster = allot_sim::trace::read_cluster(&dir.join("openb_node_list_gpu_node.csv")).expect("nodes");
    let list = args.get(1).cloned().unwrap_or("default".into());
    let tasks = allot_sim::trace::read_tasks(&dir.join(format!("openb_pod_list_{list}.csv")), &cluster).expect("tasks");
    let policies: Vec<PackingPolicy> = args.get(2).map(|p| p.split(',').filter_map(PackingPolicy::from_name).collect()).unwrap_or(PackingPolicy::ALL.to_vec());
    let seeds: u64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(3);
    let seeds: Vec<u64> = (42..42 + seeds).collect();
    let start = std::time::Instant::now();
    let results = allot_sim::batch::run_batch(&cluster, &tasks, &policies, &seeds, 1.3, 0);
    for policy in &policies {
        let mut values: Vec<f64> = results.iter().filter(|r| r.policy == *policy).filter_map(|r| r.unallocated_at_100_pct).collect();
        values.sort_by(f64::total_cmp);
        let median = values[values.len() / 2];
        println!("{list} {:14} median {:.2} min {:.2} max {:.2}", policy.name(), median, values[0], values[values.len() - 1]);
    }
    eprintln!("{:.1}s", start.elapsed().as_secs_f64());
}
