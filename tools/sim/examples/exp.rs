//! Experiment driver for tuning Allot's policy: runs FGD and Allot on several
//! lists and seeds and prints medians. Knobs come from the environment
//! (ALLOT_FW, ALLOT_H, ALLOT_MEASURE, ALLOT_CW, ALLOT_BW, ALLOT_OPEN, ALLOT_WASTE); lists are published names or
//! `KIND=PCT@SEED` resamples of default.

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use allot_placement::fragment::FragMeasure;
use allot_placement::packing::{AllotTuning, PackingPolicy};
use allot_sim::generate::{MixTarget, resample};
use allot_sim::protocol::{RunConfig, run};
use allot_sim::trace::{read_cluster, read_tasks};

fn env_f(name: &str, default: f64) -> f64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let lists: Vec<&str> = args.first().map(|a| a.split(',').collect()).unwrap_or_default();
    let seeds: Vec<u64> =
        args.get(1).map(|a| a.split(',').filter_map(|s| s.parse().ok()).collect()).unwrap_or(vec![42]);
    let policies: Vec<PackingPolicy> = args
        .get(2)
        .map(|a| a.split(',').filter_map(PackingPolicy::from_name).collect())
        .unwrap_or(vec![PackingPolicy::Fgd, PackingPolicy::Allot]);
    let tuning = AllotTuning {
        fragment_weight: env_f("ALLOT_FW", AllotTuning::default().fragment_weight),
        horizon_scale: env_f("ALLOT_H", AllotTuning::default().horizon_scale),
        measure: match std::env::var("ALLOT_MEASURE").as_deref() {
            Ok("fgd") => FragMeasure::Fgd,
            Ok("allot") => FragMeasure::Allot,
            Ok("capacity") => FragMeasure::Capacity,
            _ => AllotTuning::default().measure,
        },
        capacity_weight: env_f("ALLOT_CW", AllotTuning::default().capacity_weight),
        balance_weight: env_f("ALLOT_BW", AllotTuning::default().balance_weight),
        open_weight: env_f("ALLOT_OPEN", AllotTuning::default().open_weight),
        waste_lookahead: env_f("ALLOT_WASTE", f64::from(u8::from(AllotTuning::default().waste_lookahead))) > 0.0,
    };
    let dir = Path::new("../shared/traces/alibaba-gpu-v2023");
    let cluster = read_cluster(&dir.join("openb_node_list_gpu_node.csv"))?;
    for list in lists {
        let start = std::time::Instant::now();
        let tasks = if let Some((mix, seed)) = list.split_once('@') {
            let base = read_tasks(&dir.join("openb_pod_list_default.csv"), &cluster)?;
            resample(&base, &cluster, MixTarget::parse(mix)?, seed.parse()?)?
        } else {
            read_tasks(&dir.join(format!("openb_pod_list_{list}.csv")), &cluster)?
        };
        let jobs: Vec<RunConfig> = policies
            .iter()
            .flat_map(|p| seeds.iter().map(move |s| RunConfig { tuning, ..RunConfig::new(*p, *s) }))
            .collect();
        let next = AtomicUsize::new(0);
        let results = Mutex::new(vec![0.0; jobs.len()]);
        let drops: Mutex<Vec<Vec<allot_placement::fragment::TaskShape>>> = Mutex::new(vec![Vec::new(); jobs.len()]);
        std::thread::scope(|scope| {
            for _ in 0..2 {
                scope.spawn(|| {
                    loop {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        let Some(job) = jobs.get(index) else { break };
                        let result = run(&cluster, &tasks, job);
                        let value = result.unallocated_at_100_pct.unwrap_or(f64::NAN);
                        results.lock().expect("lock")[index] = value;
                        drops.lock().expect("lock")[index] = result.dropped_before_100;
                    }
                });
            }
        });
        let results = results.into_inner()?;
        let mut medians = Vec::new();
        let mut line = format!("{list:>16}");
        for (p_index, policy) in policies.iter().enumerate() {
            let mut values: Vec<f64> = results[p_index * seeds.len()..(p_index + 1) * seeds.len()].to_vec();
            let raw = values.clone();
            values.sort_by(f64::total_cmp);
            let n = values.len();
            let median = if n % 2 == 1 { values[n / 2] } else { (values[n / 2 - 1] + values[n / 2]) / 2.0 };
            medians.push(median);
            let raw: Vec<String> = raw.iter().map(|v| format!("{v:.2}")).collect();
            line += &format!("  {}={median:.3} [{}]", policy.name(), raw.join(" "));
        }
        if medians.len() == 2 {
            line += &format!("  rel={:+.1}%", (medians[0] - medians[1]) / medians[0] * 100.0);
        }
        line += &format!("  {:.1}s", start.elapsed().as_secs_f64());
        println!("{line}");
        if std::env::var("ALLOT_DROPS").is_ok() {
            let drops = drops.into_inner()?;
            for (p_index, policy) in policies.iter().enumerate() {
                let mut by_class: std::collections::BTreeMap<(u8, u16, bool), (u32, f64)> = Default::default();
                for run_drops in &drops[p_index * seeds.len()..(p_index + 1) * seeds.len()] {
                    for shape in run_drops {
                        let entry =
                            by_class.entry((shape.gpu_count, shape.gpu_milli, !shape.models.is_any())).or_default();
                        entry.0 += 1;
                        entry.1 += f64::from(shape.gpu_total_milli()) / 1000.0 / seeds.len() as f64;
                    }
                }
                let text: Vec<String> = by_class
                    .iter()
                    .filter(|(_, v)| v.1 > 0.0)
                    .map(|((c, m, spec), (n, g))| format!("{c}x{m}{}:{n}/{g:.0}", if *spec { "s" } else { "" }))
                    .collect();
                println!("    {} drops (count/GPUs per seed): {}", policy.name(), text.join(" "));
            }
        }
    }
    Ok(())
}
