//! Seeded generation of task lists of the Alibaba family with other mixes, to check
//! that a policy does not depend on the five published lists.
//!
//! The published family resamples one base list to other ratios: GPU-sharing
//! tasks as a share of GPU demand (`gpushare`), multi-GPU tasks as a share of GPU
//! demand (`multigpu`), GPU tasks that carry a model constraint (`gpuspec`, % of
//! GPU tasks) and CPU-only tasks (`cpu`, % of tasks). [`resample`] does the same:
//! it draws as many tasks as the base has, first a category with the probability
//! that meets the target, then a task of that category uniformly from the base;
//! for `gpuspec` a constrained task accepts one model, drawn in proportion to the
//! cluster's GPUs of each model.

use std::fmt::Write as _;

use allot_placement::fragment::{ModelSet, TaskShape};
use allot_placement::packing::SplitMix64;

use crate::SimError;
use crate::trace::{Cluster, Task, TaskList, TraceFormat};

/// Which ratio to change, and to what percentage.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MixTarget {
    GpuShare(f64),
    MultiGpu(f64),
    GpuSpec(f64),
    Cpu(f64),
}

impl MixTarget {
    /// Parses `gpushare=60`, `multigpu=50`, `gpuspec=33` or `cpu=25`.
    pub fn parse(text: &str) -> Result<MixTarget, SimError> {
        let usage = || {
            SimError::Usage(format!(
                "--resample {text:?}: expected KIND=PERCENT with KIND one of gpushare, multigpu, gpuspec, cpu and PERCENT from 0 to 100 (cpu below 100), like gpushare=60"
            ))
        };
        let (kind, value) = text.split_once('=').ok_or_else(usage)?;
        let percent: f64 = value.trim().parse().map_err(|_| usage())?;
        if !(0.0..=100.0).contains(&percent) {
            return Err(usage());
        }
        match kind.trim() {
            "gpushare" => Ok(MixTarget::GpuShare(percent)),
            "multigpu" => Ok(MixTarget::MultiGpu(percent)),
            "gpuspec" => Ok(MixTarget::GpuSpec(percent)),
            "cpu" if percent < 100.0 => Ok(MixTarget::Cpu(percent)),
            _ => Err(usage()),
        }
    }

    pub fn label(&self) -> String {
        match self {
            MixTarget::GpuShare(p) => format!("gpushare{p}"),
            MixTarget::MultiGpu(p) => format!("multigpu{p}"),
            MixTarget::GpuSpec(p) => format!("gpuspec{p}"),
            MixTarget::Cpu(p) => format!("cpu{p}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Category {
    Cpu,
    Share,
    Whole,
    Multi,
}

fn category(shape: &TaskShape) -> Category {
    match shape.gpu_count {
        0 => Category::Cpu,
        1 if shape.is_share() => Category::Share,
        1 => Category::Whole,
        _ => Category::Multi,
    }
}

const CATEGORIES: [Category; 4] = [Category::Cpu, Category::Share, Category::Whole, Category::Multi];

/// A list like `base` with one ratio changed; the same base, target and seed give
/// the same list.
pub fn resample(base: &TaskList, cluster: &Cluster, target: MixTarget, seed: u64) -> Result<TaskList, SimError> {
    let pools: Vec<Vec<&Task>> = CATEGORIES
        .iter()
        .map(|wanted| base.tasks.iter().filter(|task| category(&task.shape) == *wanted).collect())
        .collect();
    let count = |index: usize| pools[index].len() as f64;
    let demand = |index: usize| pools[index].iter().map(|task| f64::from(task.shape.gpu_total_milli())).sum::<f64>();
    let mean = |index: usize| if count(index) > 0.0 { demand(index) / count(index) } else { 0.0 };
    let total = base.tasks.len() as f64;
    let gpu_demand: f64 = (1..4).map(demand).sum();
    // Shares of GPU demand per GPU category, and the CPU-only share of tasks.
    let mut demand_share: Vec<f64> = (1..4).map(|index| demand(index) / gpu_demand.max(1.0)).collect();
    let mut cpu_fraction = count(0) / total.max(1.0);
    let mut rescale = |fixed: usize, percent: f64| {
        let rest: f64 = (0..3).filter(|index| *index != fixed).map(|index| demand_share[index]).sum();
        for (index, share) in demand_share.iter_mut().enumerate() {
            *share = if index == fixed {
                percent / 100.0
            } else if rest > 0.0 {
                *share / rest * (1.0 - percent / 100.0)
            } else {
                0.0
            };
        }
    };
    match target {
        MixTarget::GpuShare(percent) => rescale(0, percent),
        MixTarget::MultiGpu(percent) => rescale(2, percent),
        MixTarget::Cpu(percent) => cpu_fraction = percent / 100.0,
        MixTarget::GpuSpec(_) => {}
    }
    for (index, share) in demand_share.iter().enumerate() {
        if *share > 0.0 && pools[index + 1].is_empty() {
            return Err(SimError::Usage(format!(
                "--resample {}: the base list has no {:?} tasks to draw from",
                target.label(),
                CATEGORIES[index + 1]
            )));
        }
    }
    // Task-count weights of the GPU categories: demand share over mean demand.
    let gpu_weights: Vec<f64> =
        (0..3).map(|index| if mean(index + 1) > 0.0 { demand_share[index] / mean(index + 1) } else { 0.0 }).collect();
    let gpu_weight_total: f64 = gpu_weights.iter().sum();
    let mut rng = SplitMix64::new(seed);
    let mut draw = |n: usize| rng.below(n as u64) as usize;
    let model_weights: Vec<u64> = (0..cluster.models.len())
        .map(|model| {
            cluster.nodes.iter().filter(|node| usize::from(node.model) == model).map(|node| u64::from(node.gpus)).sum()
        })
        .collect();
    let model_total: u64 = model_weights.iter().sum();
    let mut tasks = Vec::with_capacity(base.tasks.len());
    for number in 0..base.tasks.len() {
        let pick = draw(1 << 30) as f64 / f64::from(1u32 << 30);
        let index = if pick < cpu_fraction && !pools[0].is_empty() {
            0
        } else {
            let mut point = draw(1 << 30) as f64 / f64::from(1u32 << 30) * gpu_weight_total;
            let mut chosen = 3;
            for (position, weight) in gpu_weights.iter().enumerate() {
                if point < *weight {
                    chosen = position + 1;
                    break;
                }
                point -= weight;
            }
            chosen
        };
        let pool = &pools[index];
        if pool.is_empty() {
            continue;
        }
        let mut task = pool[draw(pool.len())].clone();
        task.name = format!("{}-{number:05}", target.label());
        if let MixTarget::GpuSpec(percent) = target
            && task.shape.gpu_count > 0
        {
            task.shape.models = ModelSet::ANY;
            if (draw(10_000) as f64) < percent * 100.0 && model_total > 0 {
                let mut point = draw(model_total as usize) as u64;
                for (model, weight) in model_weights.iter().enumerate() {
                    if point < *weight {
                        task.shape.models = ModelSet::ANY.with(model as u8);
                        break;
                    }
                    point -= weight;
                }
            }
        }
        tasks.push(task);
    }
    Ok(TaskList { format: TraceFormat::Alibaba, tasks })
}

/// The list in the Alibaba CSV format (the columns `allotctl sim` reads).
pub fn to_alibaba_csv(list: &TaskList, cluster: &Cluster) -> String {
    let mut text = String::from("name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec\n");
    for task in &list.tasks {
        let spec: Vec<&str> = (0..64u8)
            .filter(|bit| !task.shape.models.is_any() && task.shape.models.0 & (1u64 << bit) != 0)
            .map(|bit| cluster.models.get(usize::from(bit)).map(String::as_str).unwrap_or("unknown"))
            .collect();
        let _ = writeln!(
            text,
            "{},{},{},{},{},{}",
            task.name,
            task.shape.cpu_milli,
            task.shape.memory_mib,
            task.shape.gpu_count,
            task.shape.gpu_milli,
            spec.join("|")
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::trace::{parse_cluster, parse_tasks};

    fn base() -> (Cluster, TaskList) {
        let cluster = parse_cluster(
            Path::new("n.csv"),
            "sn,cpu_milli,memory_mib,gpu,model\na,64000,100000,8,V100\nb,64000,100000,2,T4\n",
        )
        .expect("nodes");
        let mut text = String::from("name,cpu_milli,memory_mib,num_gpu,gpu_milli\n");
        for index in 0..200 {
            let row = match index % 4 {
                0 => "1000,100,0,0",
                1 => "1000,100,1,500",
                2 => "1000,100,1,1000",
                _ => "1000,100,4,1000",
            };
            text.push_str(&format!("t{index},{row}\n"));
        }
        let tasks = parse_tasks(Path::new("t.csv"), &text, &cluster).expect("tasks");
        (cluster, tasks)
    }

    fn share_of_demand(list: &TaskList, wanted: Category) -> f64 {
        let demand = |filter: &dyn Fn(&Task) -> bool| {
            list.tasks
                .iter()
                .filter(|task| filter(task))
                .map(|task| f64::from(task.shape.gpu_total_milli()))
                .sum::<f64>()
        };
        demand(&|task| category(&task.shape) == wanted) / demand(&|_| true)
    }

    #[test]
    fn resampling_meets_the_target_and_replays_with_the_seed() {
        let (cluster, base) = base();
        // Base: shares are 500 of 5,500 milli per four tasks, about 9% of demand.
        let list = resample(&base, &cluster, MixTarget::GpuShare(40.0), 7).expect("resample");
        let share = share_of_demand(&list, Category::Share);
        assert!((share - 0.40).abs() < 0.08, "shares are {share:.2} of GPU demand");
        assert_eq!(list, resample(&base, &cluster, MixTarget::GpuShare(40.0), 7).expect("again"));
        assert_ne!(list, resample(&base, &cluster, MixTarget::GpuShare(40.0), 8).expect("other seed"));
        let cpu = resample(&base, &cluster, MixTarget::Cpu(50.0), 7).expect("cpu");
        let cpu_only =
            cpu.tasks.iter().filter(|task| task.shape.gpu_count == 0).count() as f64 / cpu.tasks.len() as f64;
        assert!((cpu_only - 0.5).abs() < 0.1, "{cpu_only:.2} CPU-only");
        let spec = resample(&base, &cluster, MixTarget::GpuSpec(100.0), 7).expect("spec");
        assert!(spec.tasks.iter().filter(|task| task.shape.gpu_count > 0).all(|task| !task.shape.models.is_any()));
        let csv = to_alibaba_csv(&spec, &cluster);
        let again = parse_tasks(Path::new("g.csv"), &csv, &cluster).expect("the generated CSV reads back");
        assert_eq!(
            again.tasks.iter().map(|task| task.shape).collect::<Vec<_>>(),
            spec.tasks.iter().map(|task| task.shape).collect::<Vec<_>>()
        );
        // The published family includes gpushare100: every GPU task a share.
        let all_shares =
            resample(&base, &cluster, MixTarget::parse("gpushare=100").expect("100 parses"), 7).expect("gpushare=100");
        let gpu_tasks: Vec<&Task> = all_shares.tasks.iter().filter(|task| task.shape.gpu_count > 0).collect();
        assert!(!gpu_tasks.is_empty() && gpu_tasks.iter().all(|task| task.shape.is_share()));
        assert!(MixTarget::parse("gpushare=101").is_err() && MixTarget::parse("colour=3").is_err());
        assert!(MixTarget::parse("cpu=100").is_err(), "a list with no GPU task never reaches 100% arrived");
    }
}
