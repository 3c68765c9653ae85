//! Where the unallocated GPU of one policy sits when the arrived workload
//! reaches 100%, and two what-if variants that bound what placement alone can
//! still win. An analysis tool for docs/benchmarks.md, not a policy.
//!
//! Usage (from the repository root, with `../shared` beside it):
//!
//! ```text
//! cargo run --release -p allot-sim --example stranded -- LIST SEEDS [POLICY]
//! ```
//!
//! LIST is a published list name (`default`, `gpushare40`, ...) or a resample of
//! default, `KIND=PCT@SEED`; SEEDS is a comma-separated list; POLICY defaults to
//! allot. It prints, per seed, the unallocated GPU % at arrived = 100% and how
//! the GPU of the tasks dropped before then splits into "no GPU had room" and
//! "a GPU had room but its node lacked CPU or memory"; then, for the first seed,
//! the idle GPU by how much each GPU has free and the most wasteful contents of
//! partly used GPUs.
//!
//! Two variants, off by default:
//! - `STRAND_REFUSE=MILLI@PCT`: an oracle that drops every share of at least
//!   MILLI milli-GPU once the arrived workload reaches PCT%, even when it fits.
//!   The protocol forbids this (a task that fits is placed); it shows what
//!   admission control could win.
//! - `STRAND_OPEN=PCT`: from PCT% arrived, a share of 200 to 650 milli-GPU goes
//!   to a fully free GPU while one exists (otherwise where the policy says). It
//!   places every task that fits, so it is allowed, but it uses the arrived
//!   percentage, which a live broker does not know.

use std::collections::BTreeMap;
use std::path::Path;

use allot_placement::fragment::{GpuPick, NodeState, ShapeMix, TaskShape, WHOLE_GPU_MILLI};
use allot_placement::learn::ShapeLearner;
use allot_placement::packing::{Packer, PackingPolicy, SplitMix64};
use allot_sim::generate::{MixTarget, resample};
use allot_sim::protocol::alibaba_schedule;
use allot_sim::trace::{Cluster, TaskList, read_cluster, read_tasks};

struct Variant {
    refuse: Option<(u16, f64)>,
    open_at: Option<f64>,
}

struct Outcome {
    unallocated: f64,
    no_gpu_room: f64,
    host_short: f64,
    nodes: Vec<NodeState>,
    contents: Vec<Vec<Vec<u16>>>,
}

fn replay(cluster: &Cluster, tasks: &TaskList, policy: PackingPolicy, seed: u64, variant: &Variant) -> Outcome {
    let capacity = cluster.gpu_milli() as f64;
    let typical = ShapeMix::typical(tasks.tasks.iter().map(|task| task.shape), 1.0);
    let mut packer = match policy {
        PackingPolicy::Allot => Packer::new(policy, ShapeMix::default()),
        other => Packer::new(other, typical),
    };
    let mut learner = ShapeLearner::new();
    let mut rng = SplitMix64::new(seed ^ 0x5eed_0000_0000_0001);
    let mut nodes: Vec<NodeState> = cluster
        .nodes
        .iter()
        .map(|node| NodeState::idle(node.gpus, node.model, node.cpu_milli, node.memory_mib))
        .collect();
    let classes = vec![Default::default(); nodes.len()];
    let mut contents: Vec<Vec<Vec<u16>>> =
        nodes.iter().map(|node| vec![Vec::new(); usize::from(node.gpu_count)]).collect();
    let (mut arrived, mut allocated) = (0.0, 0.0);
    let (mut no_gpu_room, mut host_short) = (0.0, 0.0);
    let mut unallocated = f64::NAN;
    for index in alibaba_schedule(tasks, cluster.gpu_milli(), 1.3, seed).order {
        let shape: TaskShape = tasks.tasks[index].shape;
        if policy == PackingPolicy::Allot && learner.observe(&shape) {
            packer.set_mix(learner.mix());
        }
        let arrived_pct = arrived / capacity * 100.0;
        let refused =
            variant.refuse.is_some_and(|(milli, at)| shape.is_share() && shape.gpu_milli >= milli && arrived_pct >= at);
        let mut choice = if refused { None } else { packer.choose(&nodes, &classes, &shape, &mut rng) };
        if variant.open_at.is_some_and(|at| arrived_pct >= at)
            && shape.is_share()
            && (200..=650).contains(&shape.gpu_milli)
            && let Some(node) = nodes.iter().position(|node| node.fits(&shape) && node.fully_free() > 0)
            && let Some(gpu) = nodes[node].gpus().iter().position(|free| *free >= WHOLE_GPU_MILLI)
        {
            choice = Some((node, GpuPick::Share(gpu as u8)));
        }
        let before = allocated;
        let gpu = f64::from(shape.gpu_total_milli());
        match choice {
            Some((node, pick)) => {
                nodes[node] = nodes[node].take(&shape, pick);
                if let GpuPick::Share(position) = pick {
                    contents[node][usize::from(position)].push(shape.gpu_milli);
                }
                allocated += gpu;
            }
            None if nodes.iter().any(|node| node.has_gpu_room(&shape)) => host_short += gpu,
            None => no_gpu_room += gpu,
        }
        if arrived + gpu >= capacity {
            // Interpolate at exactly 100% arrived, as the protocol does.
            let fraction = if gpu > 0.0 { (capacity - arrived) / gpu } else { 1.0 };
            unallocated = 100.0 - (before + (allocated - before) * fraction) / capacity * 100.0;
            break;
        }
        arrived += gpu;
    }
    Outcome {
        unallocated,
        no_gpu_room: no_gpu_room / capacity * 100.0,
        host_short: host_short / capacity * 100.0,
        nodes,
        contents,
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: stranded LIST SEEDS [POLICY], like: stranded gpushare=80@11 42,43,44 allot";
    let list = args.first().ok_or(usage)?;
    let seeds: Vec<u64> = args
        .get(1)
        .ok_or(usage)?
        .split(',')
        .map(|seed| seed.trim().parse().map_err(|_| format!("seed {seed:?} is not a whole number; {usage}")))
        .collect::<Result<_, _>>()?;
    let policy = match args.get(2) {
        Some(name) => PackingPolicy::from_name(name).ok_or(usage)?,
        None => PackingPolicy::Allot,
    };
    let refuse = match std::env::var("STRAND_REFUSE") {
        Ok(text) => {
            let (milli, at) = text.split_once('@').ok_or("STRAND_REFUSE: expected MILLI@PCT, like 810@75")?;
            let bad = || format!("STRAND_REFUSE={text:?}: expected MILLI@PCT with numbers, like 810@75");
            Some((milli.parse().map_err(|_| bad())?, at.parse().map_err(|_| bad())?))
        }
        Err(_) => None,
    };
    let open_at = std::env::var("STRAND_OPEN")
        .ok()
        .map(|text| text.parse::<f64>().map_err(|_| format!("STRAND_OPEN={text:?}: expected a percentage, like 70")))
        .transpose()?;
    let variant = Variant { refuse, open_at };
    let dir = Path::new("../shared/traces/alibaba-gpu-v2023");
    let cluster = read_cluster(&dir.join("openb_node_list_gpu_node.csv"))?;
    let tasks = match list.split_once('@') {
        Some((mix, seed)) => {
            let base = read_tasks(&dir.join("openb_pod_list_default.csv"), &cluster)?;
            resample(&base, &cluster, MixTarget::parse(mix)?, seed.parse()?)?
        }
        None => read_tasks(&dir.join(format!("openb_pod_list_{list}.csv")), &cluster)?,
    };
    let capacity = cluster.gpu_milli() as f64;
    let mut values = Vec::new();
    let mut first = None;
    for seed in &seeds {
        let outcome = replay(&cluster, &tasks, policy, *seed, &variant);
        println!(
            "{list} {} seed {seed}: unallocated {:.3}%; dropped GPU: no GPU had room {:.2}%, host short {:.2}%",
            policy.name(),
            outcome.unallocated,
            outcome.no_gpu_room,
            outcome.host_short
        );
        values.push(outcome.unallocated);
        first.get_or_insert(outcome);
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    let median = if n % 2 == 1 { values[n / 2] } else { (values[n / 2 - 1] + values[n / 2]) / 2.0 };
    println!("median unallocated {median:.3}%");
    let Some(outcome) = first else { return Ok(()) };
    let mut buckets = [0.0f64; 11];
    for node in &outcome.nodes {
        for free in node.gpus() {
            buckets[usize::from(*free / 100).min(10)] += f64::from(*free) / capacity * 100.0;
        }
    }
    let text: Vec<String> =
        buckets.iter().enumerate().map(|(bucket, value)| format!("{}-:{value:.2}", bucket * 100)).collect();
    println!("idle GPU (% of capacity) by milli free on the GPU: {}", text.join(" "));
    let mut configurations: BTreeMap<Vec<u16>, u32> = BTreeMap::new();
    for (node, state) in outcome.nodes.iter().enumerate() {
        for (position, free) in state.gpus().iter().enumerate() {
            let held = &outcome.contents[node][position];
            if *free < WHOLE_GPU_MILLI && !held.is_empty() {
                let mut key = held.clone();
                key.sort_unstable_by(|a, b| b.cmp(a));
                *configurations.entry(key).or_default() += 1;
            }
        }
    }
    let waste = |shares: &[u16]| WHOLE_GPU_MILLI.saturating_sub(shares.iter().sum::<u16>());
    let mut ranked: Vec<(Vec<u16>, u32)> = configurations.into_iter().collect();
    ranked.sort_by_key(|(shares, count)| std::cmp::Reverse(u32::from(waste(shares)) * count));
    println!("shared GPUs by what they strand (first seed):");
    for (shares, count) in ranked.iter().take(12) {
        let left = waste(shares);
        println!(
            "  {count:>5} GPUs holding {shares:?}: {left} milli free each, {:.2}% of capacity",
            f64::from(u32::from(left) * count) / capacity * 100.0
        );
    }
    Ok(())
}
