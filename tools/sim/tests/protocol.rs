//! The replay protocol on small slices of the real trace and on hand-made lists:
//! seeded shuffle, inflation, drops, capacity, departures, output files.

use std::path::{Path, PathBuf};

use allot_placement::fragment::{ModelSet, NodeState, ShapeMix, TaskShape};
use allot_placement::packing::{Packer, PackingPolicy, SplitMix64};
use allot_sim::cli::{SimOptions, run as run_cli};
use allot_sim::protocol::{RunConfig, alibaba_schedule, run};
use allot_sim::trace::{Cluster, TaskList, parse_cluster, parse_tasks};
use proptest::prelude::*;

/// A synthetic cluster and task list in the Alibaba trace's format, made by
/// `tests/data/generate.py`, so the tests need nothing outside the repository.
fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

/// The first `nodes` nodes and `tasks` tasks of the synthetic list: small enough
/// for a debug build.
fn slice(nodes: usize, tasks: usize) -> (Cluster, TaskList, String, String) {
    let dir = data_dir();
    let node_text = std::fs::read_to_string(dir.join("nodes.csv")).expect("tools/sim/tests/data/nodes.csv");
    let node_text: String = node_text.lines().take(nodes + 1).map(|line| format!("{line}\n")).collect();
    let task_text = std::fs::read_to_string(dir.join("tasks.csv")).expect("tools/sim/tests/data/tasks.csv");
    let task_text: String = task_text.lines().take(tasks + 1).map(|line| format!("{line}\n")).collect();
    let cluster = parse_cluster(Path::new("nodes.csv"), &node_text).expect("nodes");
    let list = parse_tasks(Path::new("tasks.csv"), &task_text, &cluster).expect("tasks");
    (cluster, list, node_text, task_text)
}

#[test]
fn the_shuffle_replays_with_its_seed_and_inflation_reaches_the_target() {
    let (cluster, list, _, _) = slice(60, 300);
    let capacity = cluster.gpu_milli();
    let first = alibaba_schedule(&list, capacity, 1.3, 42);
    assert_eq!(first, alibaba_schedule(&list, capacity, 1.3, 42), "same seed, same order");
    assert_ne!(first, alibaba_schedule(&list, capacity, 1.3, 43), "another seed, another order");
    let total: u64 = first.order.iter().map(|index| u64::from(list.tasks[*index].shape.gpu_total_milli())).sum();
    let target = 1.3 * capacity as f64;
    assert!(total as f64 <= target, "{total} over {target}");
    assert!(total as f64 > target - 8000.0, "{total} stops more than one task short of {target}");
    // Every original task comes first, each once, then the copies.
    let mut head: Vec<usize> = first.order[..list.tasks.len()].to_vec();
    head.sort_unstable();
    assert_eq!(head, (0..list.tasks.len()).collect::<Vec<_>>());
    // Trimming: a factor below the list's own request removes tasks.
    let trimmed = alibaba_schedule(&list, capacity, 0.05, 42);
    assert!(trimmed.order.len() < list.tasks.len());
}

#[test]
fn every_policy_allocates_at_most_what_arrived_and_drops_what_does_not_fit() {
    let (cluster, list, _, _) = slice(40, 250);
    for policy in PackingPolicy::ALL {
        let result = run(&cluster, &list, &RunConfig::new(policy, 42));
        assert!(result.points.len() >= 130, "{policy:?}: one point per percent up to 130%");
        for point in &result.points {
            assert!(point.allocated_pct <= point.arrived_pct + 1e-9, "{policy:?}: {point:?}");
            assert!(point.allocated_pct <= 100.0 + 1e-9, "{policy:?}: {point:?}");
        }
        let last = result.points.last().expect("points");
        // Nothing leaves: allocated + dropped = arrived (up to the last mark).
        assert!(result.dropped_gpu_pct > 0.0, "{policy:?}: 130% cannot all fit");
        assert!(last.allocated_pct + result.dropped_gpu_pct >= last.arrived_pct - 1e-6, "{policy:?}");
        let unallocated = result.unallocated_at_100_pct.expect("reaches 100%");
        assert!((0.0..=100.0).contains(&unallocated), "{policy:?}: {unallocated}");
    }
}

#[test]
fn departures_free_capacity_in_the_native_format() {
    let cluster =
        parse_cluster(Path::new("n.csv"), "sn,cpu_milli,memory_mib,gpu,model\nn0,8000,8000,1,T4\n").expect("node");
    let text = "name,team,arrival_s,departure_s,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec\n\
        a,vision,0,10,1000,1000,1,1000,\n\
        b,vision,5,,1000,1000,1,1000,\n\
        c,speech,10,,1000,1000,1,600,T4\n\
        d,speech,11,,1000,1000,1,400,\n";
    let list = parse_tasks(Path::new("native.csv"), text, &cluster).expect("native list");
    let result = run(&cluster, &list, &RunConfig::new(PackingPolicy::Allot, 1));
    // b finds the GPU taken and is dropped; a leaves at 10, so c (same time,
    // departures first) and then d share the freed GPU.
    assert_eq!(result.tasks_dropped, 1);
    assert_eq!(result.tasks_submitted, 4);
    let last = result.points.last().expect("points");
    assert!((last.allocated_pct - 100.0).abs() < 1e-9, "{last:?}");
    assert!((last.arrived_pct - 300.0).abs() < 1e-9, "{last:?}");
}

#[test]
fn the_command_writes_all_four_files_and_a_summary_per_policy() {
    let (_, _, node_text, task_text) = slice(30, 150);
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("nodes.csv"), node_text).expect("write");
    std::fs::write(dir.path().join("tasks.csv"), task_text).expect("write");
    let out = dir.path().join("out");
    let options = SimOptions {
        nodes: dir.path().join("nodes.csv"),
        tasks: dir.path().join("tasks.csv"),
        policies: vec![PackingPolicy::Fgd, PackingPolicy::Allot],
        seeds: vec![42, 43],
        inflation: 1.3,
        out: Some(out.clone()),
        threads: 2,
        resample: None,
        resample_seed: 1,
    };
    let (summary, table) = run_cli(&options).expect("runs");
    assert_eq!(summary.policies.len(), 2);
    assert!(summary.policies.iter().all(|policy| policy.unallocated_at_100_pct.len() == 2));
    assert!(summary.allot_vs_fgd_reduction_pct.is_some());
    assert!(table.contains("fgd") && table.contains("allot"), "{table}");
    for file in ["curve.json", "curve.csv", "summary.json", "plot.svg"] {
        let text = std::fs::read_to_string(out.join(file)).unwrap_or_else(|error| panic!("{file}: {error}"));
        assert!(text.len() > 100, "{file} is nearly empty");
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).expect("summary")).expect("JSON");
    assert_eq!(json["policies"][0]["policy"], "fgd");
    let csv = std::fs::read_to_string(out.join("curve.csv")).expect("csv");
    assert!(csv.starts_with("policy,seed,arrived_pct,allocated_pct,fragment_gpus,fragment_rate_pct\n"));
    assert!(std::fs::read_to_string(out.join("plot.svg")).expect("svg").contains("<polyline"));
}

fn arbitrary_node() -> impl Strategy<Value = NodeState> {
    (1u8..=8, 0u32..64_000, 0u64..100_000, prop::collection::vec(0u16..=1000, 8)).prop_map(
        |(gpus, cpu, memory, free)| {
            let mut node = NodeState::idle(gpus, 0, cpu, memory);
            for (slot, value) in node.gpu_free.iter_mut().zip(free).take(usize::from(gpus)) {
                *slot = value;
            }
            node
        },
    )
}

fn arbitrary_task() -> impl Strategy<Value = TaskShape> {
    (0u32..20_000, 0u64..20_000, prop_oneof![Just(0u8), Just(1), Just(2), Just(4), Just(8)], 1u16..=1000).prop_map(
        |(cpu, memory, count, milli)| TaskShape {
            cpu_milli: cpu,
            memory_mib: memory,
            gpu_count: count,
            gpu_milli: match count {
                0 => 0,
                1 => milli,
                _ => 1000,
            },
            models: ModelSet::ANY,
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever the policy, a chosen placement fits: no GPU, CPU or memory goes
    /// below zero, and a task is refused only when no node fits it.
    #[test]
    fn chosen_placements_never_exceed_capacity(
        nodes in prop::collection::vec(arbitrary_node(), 1..12),
        task in arbitrary_task(),
        seed in 0u64..1000,
    ) {
        let mix = ShapeMix::from_weights([(task, 1.0)]);
        for policy in PackingPolicy::ALL {
            let mut packer = Packer::new(policy, mix.clone());
            let chosen = packer.choose(&nodes, &[], &task, &mut SplitMix64::new(seed));
            match chosen {
                Some((index, pick)) => {
                    let node = nodes[index];
                    prop_assert!(node.fits(&task));
                    prop_assert!(node.picks(&task).iter().any(|candidate| candidate == pick));
                    let after = node.take(&task, pick);
                    let used: u32 = node.idle_milli() - after.idle_milli();
                    prop_assert_eq!(used, task.gpu_total_milli());
                }
                None => prop_assert!(nodes.iter().all(|node| !node.fits(&task)), "{:?} refused a task that fits", policy),
            }
        }
    }
}
