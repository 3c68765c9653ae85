//! Placement benchmark: decisions per second and latency percentiles of `place` on
//! (a) a synthetic cluster of DGX H100 nodes, partly in use, with a mix of 1, 2, 4
//! and 8-GPU NVLink requests, and (b) the 1,213-node Alibaba GPU cluster with the
//! first pods of its default task list; each against a naive first-fit placement
//! of the same requests on the same starting state, so the numbers read as ratios.
//!
//! `cargo run --release -p allot-placement --example place_bench -- [--nodes 10000]
//! [--requests 1000] [--pods 8152] [--seed 42] [--trace DIR]`. Prints a Markdown table.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use allot_api::allocation::{
    Binding, GpuDemand, GpuGrant, Interconnect, MilliGpu, NodeName, ShareGrant, ValidatedRequest,
};
use allot_api::topology::{GpuHealth, MigMode, NodeInventory, ThrottleReason};
use allot_api::units::MiB;
use allot_placement::learn::RequestMix;
use allot_placement::synthetic::{PcieServer, pcie_gpu_server};
use allot_placement::{
    ClusterContext, NodeStatus, NodeUsage, NodeView, PlacementIndex, PlacementOptions, place, place_learned,
    placement_shape,
};

/// SplitMix64: a small seeded generator, so every run replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

struct Args {
    nodes: usize,
    requests: usize,
    pods: usize,
    seed: u64,
    trace: PathBuf,
}

fn args() -> Result<Args, String> {
    let mut args = Args {
        nodes: 10_000,
        requests: 1_000,
        pods: 8_152,
        seed: 42,
        trace: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/traces/alibaba-gpu-v2023")),
    };
    let mut words = std::env::args().skip(1);
    while let Some(flag) = words.next() {
        let value = words.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = || value.parse::<u64>().map_err(|_| format!("{flag}: {value:?} is not a number"));
        match flag.as_str() {
            "--nodes" => args.nodes = number()? as usize,
            "--requests" => args.requests = number()? as usize,
            "--pods" => args.pods = number()? as usize,
            "--seed" => args.seed = number()?,
            "--trace" => args.trace = PathBuf::from(value),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(args)
}

/// One cluster's state: names, inventories and usage, plus the bindings made.
struct Cluster {
    names: Vec<NodeName>,
    inventories: Vec<NodeInventory>,
    usages: Vec<NodeUsage>,
}

impl Cluster {
    fn views(&self) -> Vec<NodeView<'_>> {
        self.names
            .iter()
            .zip(&self.inventories)
            .zip(&self.usages)
            .map(|((name, inventory), usage)| NodeView { name, inventory, status: NodeStatus::Ready, usage })
            .collect()
    }

    fn commit(&mut self, binding: &Binding) {
        // Names are "prefix-NNNNN" in index order, so the index is in the name.
        if let Some(index) = self.names.iter().position(|name| *name == binding.node) {
            self.usages[index].add(binding);
        }
    }
}

struct Run {
    latencies: Vec<Duration>,
    placed: usize,
}

impl Run {
    fn total(&self) -> Duration {
        self.latencies.iter().sum()
    }

    fn per_second(&self) -> f64 {
        self.latencies.len() as f64 / self.total().as_secs_f64().max(1e-9)
    }

    fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        sorted.get(rank.saturating_sub(1)).copied().unwrap_or_default()
    }
}

/// Places every request in turn with `decide`, committing each binding.
fn run(
    cluster: &mut Cluster,
    requests: &[ValidatedRequest],
    decide: impl Fn(&ValidatedRequest, &[NodeView<'_>]) -> Option<Binding>,
) -> Run {
    let mut result = Run { latencies: Vec::with_capacity(requests.len()), placed: 0 };
    for request in requests {
        let views = cluster.views();
        let start = Instant::now();
        let binding = decide(request, &views);
        result.latencies.push(start.elapsed());
        drop(views);
        if let Some(binding) = binding {
            cluster.commit(&binding);
            result.placed += 1;
        }
    }
    result
}

/// How shares are ranked in [`run_indexed`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shares {
    /// Best fit, as `place` without a mix: through the index like the rest.
    BestFit,
    /// As the broker does: Allot's policy under the task mix learned from the
    /// requests so far, over the index's representatives (one node per group of
    /// identical nodes, the others counted as twins).
    Learned,
}

/// Places every request in turn through the placement index, as the broker does,
/// committing each binding; the time of a decision includes the index update
/// that the commit makes.
fn run_indexed(cluster: &mut Cluster, requests: &[ValidatedRequest], shares: Shares) -> (Run, usize) {
    let mut index = PlacementIndex::new(PlacementOptions::default());
    let shapes: Vec<u64> = cluster.inventories.iter().map(placement_shape).collect();
    let positions: std::collections::HashMap<NodeName, usize> =
        cluster.names.iter().enumerate().map(|(position, name)| (name.clone(), position)).collect();
    for ((name, shape), usage) in cluster.names.iter().zip(&shapes).zip(&cluster.usages) {
        index.update(name, *shape, NodeStatus::Ready, usage);
    }
    let mut mix = RequestMix::default();
    let mut result = Run { latencies: Vec::with_capacity(requests.len()), placed: 0 };
    for request in requests {
        let start = Instant::now();
        let view_of = |name: &NodeName| {
            positions.get(name).map(|position| NodeView {
                name: &cluster.names[*position],
                inventory: &cluster.inventories[*position],
                status: NodeStatus::Ready,
                usage: &cluster.usages[*position],
            })
        };
        let binding = match (&request.gpus, shares) {
            (GpuDemand::Share { .. }, Shares::Learned) => {
                mix.observe(request);
                let representatives = index.representatives();
                let views: Vec<NodeView<'_>> = representatives.iter().filter_map(|rep| view_of(&rep.name)).collect();
                let twins: Vec<usize> = representatives.iter().map(|rep| rep.twins).collect();
                place_learned(request, &views, &ClusterContext { mix: &mix, twins: &twins })
                    .ok()
                    .map(|decision| decision.binding)
            }
            _ => {
                mix.observe(request);
                index.place(request, view_of).map(|decision| decision.binding)
            }
        };
        if let Some(binding) = &binding
            && let Some(position) = positions.get(&binding.node).copied()
        {
            cluster.usages[position].add(binding);
            index.update(&cluster.names[position], shapes[position], NodeStatus::Ready, &cluster.usages[position]);
            result.placed += 1;
        }
        result.latencies.push(start.elapsed());
    }
    (result, index.classes())
}

fn allot(request: &ValidatedRequest, views: &[NodeView<'_>]) -> Option<Binding> {
    place(request, views).ok().map(|decision| decision.binding)
}

/// The baseline: the first node (by name) with enough free GPUs, cores and memory;
/// the lowest free GPU indices and cores; no scoring, no explanation.
fn first_fit(request: &ValidatedRequest, views: &[NodeView<'_>]) -> Option<Binding> {
    for view in views {
        let (inventory, usage) = (view.inventory, view.usage);
        let free_cores = inventory.cpu.cores.len().saturating_sub(usage.cores_taken() as usize);
        let memory: u64 = inventory.cpu.numa_nodes.iter().map(|numa| numa.memory_mib.0).sum();
        if view.status != NodeStatus::Ready
            || free_cores < request.cpus as usize
            || memory.saturating_sub(usage.memory().0) < request.memory.0
        {
            continue;
        }
        let usable = |gpu: &&allot_api::topology::Gpu| {
            !matches!(gpu.health, GpuHealth::Unhealthy { .. })
                && !gpu.mig.as_ref().is_some_and(|mig| mig.mode == MigMode::Enabled)
        };
        let grant = |gpu: &allot_api::topology::Gpu, share| GpuGrant {
            index: gpu.index,
            uuid: gpu.uuid.clone(),
            pci_bus_id: gpu.pci_bus_id.to_string(),
            mig: None,
            share,
            nic: None,
        };
        let gpus: Vec<GpuGrant> = match &request.gpus {
            GpuDemand::None => vec![],
            GpuDemand::Whole { count, models } => {
                let free: Vec<GpuGrant> = inventory
                    .gpus
                    .iter()
                    .filter(usable)
                    .filter(|gpu| !usage.gpu_in_use(gpu.index))
                    .filter(|gpu| {
                        models.is_empty()
                            || models.iter().any(|model| gpu.model.to_lowercase().contains(&model.to_lowercase()))
                    })
                    .take(*count as usize)
                    .map(|gpu| grant(gpu, None))
                    .collect();
                if free.len() < *count as usize {
                    continue;
                }
                free
            }
            GpuDemand::Share { compute, memory } => {
                let fits = inventory.gpus.iter().filter(usable).find(|gpu| {
                    let load = usage.share(gpu.index).unwrap_or_default();
                    !usage.is_whole(gpu.index)
                        && usage.mig_slots(gpu.index).is_empty()
                        && load.compute.0 + compute.0 <= 1000
                        && gpu.memory_mib.is_some_and(|total| load.memory.0 + memory.0 <= total.0)
                });
                match fits {
                    Some(gpu) => vec![grant(gpu, Some(ShareGrant { compute: *compute, memory: *memory }))],
                    None => continue,
                }
            }
            GpuDemand::Mig { .. } => return None,
        };
        let cores: Vec<u32> = inventory
            .cpu
            .cores
            .iter()
            .filter(|core| !usage.core_taken(core.index))
            .take(request.cpus as usize)
            .map(|core| core.index)
            .collect();
        return Some(Binding {
            node: view.name.clone(),
            gpus,
            cpus: vec![],
            cores,
            memory: request.memory,
            numa_nodes: vec![],
        });
    }
    None
}

fn request(gpus: GpuDemand, cpus: u32, memory: MiB, interconnect: Interconnect) -> Result<ValidatedRequest, String> {
    let team = "bench".parse().map_err(|error| format!("{error}"))?;
    ValidatedRequest::new(team, gpus, cpus, memory, interconnect, false, None, None).map_err(|error| error.to_string())
}

/// (a) DGX H100 nodes, a seeded fraction in use, and NVLink requests of 1-8 GPUs.
fn dgx_cluster(nodes: usize, rng: &mut Rng) -> Result<Cluster, String> {
    let base: NodeInventory = serde_json::from_str(include_str!("../tests/data/dgx-h100.json"))
        .map_err(|error| format!("dgx-h100 fixture: {error}"))?;
    let mut cluster = Cluster { names: vec![], inventories: vec![], usages: vec![] };
    for index in 0..nodes {
        let name = format!("dgx-{index:05}");
        let mut inventory = base.clone();
        inventory.hostname = name.clone();
        // A few GPUs run hot or are sick, as in any large fleet.
        if rng.chance(20) {
            let gpu = rng.below(8) as usize;
            if let Some(telemetry) = inventory.gpus[gpu].telemetry.as_mut() {
                telemetry.throttle_reasons = vec![ThrottleReason::HwThermalSlowdown];
            }
        }
        if rng.chance(5) {
            let gpu = rng.below(8) as usize;
            inventory.gpus[gpu].health = GpuHealth::Unhealthy { reasons: vec!["xid 79".into()] };
        }
        // 25% idle, 15% full, the rest with 1 to 7 GPUs taken (14 cores and
        // 200 GiB each, on the GPU's NUMA node).
        let used = match rng.below(100) {
            0..25 => 0,
            25..40 => 8,
            _ => 1 + rng.below(7) as usize,
        };
        let mut order: Vec<usize> = (0..8).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let mut binding = Binding {
            node: name.parse().map_err(|error| format!("{error}"))?,
            gpus: vec![],
            cpus: vec![],
            cores: vec![],
            memory: MiB(200 * 1024 * used as u64),
            numa_nodes: vec![],
        };
        for position in &order[..used] {
            let gpu = &inventory.gpus[*position];
            binding.gpus.push(GpuGrant {
                index: gpu.index,
                uuid: None,
                pci_bus_id: String::new(),
                mig: None,
                share: None,
                nic: None,
            });
            let taken = binding.cores.clone();
            binding.cores.extend(
                inventory
                    .cpu
                    .cores
                    .iter()
                    .filter(|core| core.numa_node == gpu.numa_node && !taken.contains(&core.index))
                    .take(14)
                    .map(|core| core.index),
            );
        }
        cluster.usages.push(NodeUsage::from_bindings([&binding]));
        cluster.names.push(binding.node.clone());
        cluster.inventories.push(inventory);
    }
    Ok(cluster)
}

fn dgx_requests(count: usize, rng: &mut Rng) -> Result<Vec<ValidatedRequest>, String> {
    (0..count)
        .map(|_| {
            let gpus = match rng.below(100) {
                0..40 => 1,
                40..70 => 2,
                70..90 => 4,
                _ => 8,
            };
            request(
                GpuDemand::Whole { count: gpus, models: vec![] },
                8 * gpus,
                MiB(64 * 1024 * u64::from(gpus)),
                Interconnect::Nvlink,
            )
        })
        .collect()
}

/// (b) The Alibaba cluster: one synthetic PCIe server per node of the trace.
fn alibaba_cluster(trace: &std::path::Path) -> Result<Cluster, String> {
    let path = trace.join("openb_node_list_gpu_node.csv");
    let text = std::fs::read_to_string(&path).map_err(|error| format!("{}: {error}", path.display()))?;
    let mut cluster = Cluster { names: vec![], inventories: vec![], usages: vec![] };
    for (line, row) in text.lines().enumerate().skip(1) {
        let field: Vec<&str> = row.split(',').collect();
        let bad = || format!("{}:{}: expected sn,cpu_milli,memory_mib,gpu,model", path.display(), line + 1);
        let [sn, cpu_milli, memory_mib, gpus, model] = field[..] else { return Err(bad()) };
        let number = |text: &str| text.parse::<u64>().map_err(|_| bad());
        // Undisclosed models (G1-G3) get a plausible memory size.
        let gpu_memory = match model {
            "V100M32" | "G3" => 32 * 1024,
            "A10" | "G2" => 24 * 1024,
            _ => 16 * 1024,
        };
        cluster.inventories.push(pcie_gpu_server(&PcieServer {
            hostname: sn.to_owned(),
            gpu_model: model.to_owned(),
            gpus: number(gpus)? as u32,
            gpu_memory: MiB(gpu_memory),
            cores: (number(cpu_milli)? / 1000) as u32,
            memory: MiB(number(memory_mib)?),
        }));
        cluster.names.push(sn.parse().map_err(|error| format!("{error}"))?);
        cluster.usages.push(NodeUsage::default());
    }
    Ok(cluster)
}

/// The first `count` pods: sharing pods as shares (GPU memory in proportion to
/// their compute, of a 16 GiB GPU), multi-GPU and full-GPU pods as whole GPUs with
/// their model list, GPU-less pods as CPU-only requests.
fn alibaba_requests(trace: &std::path::Path, count: usize) -> Result<Vec<ValidatedRequest>, String> {
    let path = trace.join("openb_pod_list_default.csv");
    let text = std::fs::read_to_string(&path).map_err(|error| format!("{}: {error}", path.display()))?;
    let mut requests = Vec::new();
    for (line, row) in text.lines().enumerate().skip(1).take(count) {
        let field: Vec<&str> = row.split(',').collect();
        let bad = || format!("{}:{}: unexpected row", path.display(), line + 1);
        let (Some(cpu_milli), Some(memory_mib), Some(num_gpu), Some(gpu_milli), Some(spec)) =
            (field.get(1), field.get(2), field.get(3), field.get(4), field.get(5))
        else {
            return Err(bad());
        };
        let number = |text: &str| text.parse::<u64>().map_err(|_| bad());
        let cpus = number(cpu_milli)?.div_ceil(1000).max(1) as u32;
        let memory = MiB(number(memory_mib)?);
        let (num_gpu, gpu_milli) = (number(num_gpu)? as u32, number(gpu_milli)? as u32);
        let models: Vec<String> = spec.split('|').filter(|model| !model.is_empty()).map(str::to_owned).collect();
        let gpus = match (num_gpu, gpu_milli) {
            (0, _) => GpuDemand::None,
            (1, milli) if milli < 1000 => GpuDemand::Share {
                compute: MilliGpu(milli.max(1)),
                memory: MiB((u64::from(milli) * 16 * 1024).div_ceil(1000).max(1)),
            },
            (count, _) => GpuDemand::Whole { count, models },
        };
        requests.push(request(gpus, cpus, memory, Interconnect::Any)?);
    }
    Ok(requests)
}

/// Nodes with at least `gpus` GPUs, all of them free: room for the largest jobs.
fn fresh_nodes(cluster: &Cluster, gpus: usize) -> usize {
    cluster
        .inventories
        .iter()
        .zip(&cluster.usages)
        .filter(|(inventory, usage)| {
            inventory.gpus.len() >= gpus && inventory.gpus.iter().all(|gpu| !usage.gpu_in_use(gpu.index))
        })
        .count()
}

fn allocated_gpus(cluster: &Cluster) -> f64 {
    let mut milli = 0u64;
    for (inventory, usage) in cluster.inventories.iter().zip(&cluster.usages) {
        for gpu in &inventory.gpus {
            milli += if usage.is_whole(gpu.index) {
                1000
            } else {
                u64::from(usage.share(gpu.index).map_or(0, |load| load.compute.0))
            };
        }
    }
    milli as f64 / 1000.0
}

fn copy(cluster: &Cluster) -> Cluster {
    Cluster { names: cluster.names.clone(), inventories: cluster.inventories.clone(), usages: cluster.usages.clone() }
}

fn row(scenario: &str, policy: &str, run: &Run, baseline: &Run, quality: &str) {
    println!(
        "| {scenario} | {policy} | {} | {} | {:.0} | {:.0} | {:.0} | {:.2}× | {quality} |",
        run.latencies.len(),
        run.placed,
        run.per_second(),
        run.percentile(50.0).as_secs_f64() * 1e6,
        run.percentile(99.0).as_secs_f64() * 1e6,
        run.per_second() / baseline.per_second(),
    );
}

fn main() -> Result<(), String> {
    let args = args()?;
    let mut rng = Rng(args.seed);
    println!("# Placement benchmark (seed {}, release build)\n", args.seed);
    println!(
        "| scenario | policy | decisions | placed | decisions/s | p50 µs | p99 µs | speed against first-fit | outcome |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---|");

    let built = Instant::now();
    let cluster = dgx_cluster(args.nodes, &mut rng)?;
    let requests = dgx_requests(args.requests, &mut rng)?;
    let setup = built.elapsed();
    let (fresh_before, gpus_before) = (fresh_nodes(&cluster, 8), allocated_gpus(&cluster));
    let mut baseline_state = copy(&cluster);
    let mut indexed_state = copy(&cluster);
    let mut allot_state = cluster;
    let baseline = run(&mut baseline_state, &requests, first_fit);
    let (indexed, classes) = run_indexed(&mut indexed_state, &requests, Shares::BestFit);
    let ours = run(&mut allot_state, &requests, allot);
    let same = indexed_state.usages == allot_state.usages;
    let scenario = format!("(a) {} DGX H100, 1/2/4/8-GPU NVLink", args.nodes);
    let outcome = |state: &Cluster| {
        format!(
            "{} idle nodes left (of {fresh_before}), {:.0} GPUs allocated (from {gpus_before:.0})",
            fresh_nodes(state, 8),
            allocated_gpus(state)
        )
    };
    row(
        &scenario,
        "allot index",
        &indexed,
        &baseline,
        &format!("{}; {classes} classes at the end; same bindings as exhaustive: {same}", outcome(&indexed_state)),
    );
    row(&scenario, "allot place (exhaustive)", &ours, &baseline, &outcome(&allot_state));
    row(&scenario, "naive first-fit", &baseline, &baseline, &outcome(&baseline_state));
    drop((allot_state, baseline_state, indexed_state));

    match (alibaba_cluster(&args.trace), alibaba_requests(&args.trace, args.pods)) {
        (Ok(cluster), Ok(pods)) => {
            let capacity: usize = cluster.inventories.iter().map(|inventory| inventory.gpus.len()).sum();
            let idle_before = fresh_nodes(&cluster, 8);
            let mut baseline_state = copy(&cluster);
            let mut indexed_state = copy(&cluster);
            let mut learned_state = copy(&cluster);
            let mut allot_state = cluster;
            let baseline = run(&mut baseline_state, &pods, first_fit);
            let (indexed, classes) = run_indexed(&mut indexed_state, &pods, Shares::BestFit);
            let (learned, learned_classes) = run_indexed(&mut learned_state, &pods, Shares::Learned);
            let ours = run(&mut allot_state, &pods, allot);
            let same = indexed_state.usages == allot_state.usages;
            let scenario = format!("(b) Alibaba {} nodes, first {} pods", allot_state.names.len(), pods.len());
            let outcome = |state: &Cluster| {
                format!(
                    "{:.1}% of {capacity} GPUs allocated, {} of {idle_before} 8-GPU nodes still idle",
                    100.0 * allocated_gpus(state) / capacity as f64,
                    fresh_nodes(state, 8)
                )
            };
            row(
                &scenario,
                "allot index",
                &indexed,
                &baseline,
                &format!(
                    "{}; {classes} classes at the end; same bindings as exhaustive: {same}",
                    outcome(&indexed_state)
                ),
            );
            row(
                &scenario,
                "allot index, shares by the learned mix (the broker's path)",
                &learned,
                &baseline,
                &format!("{}; {learned_classes} classes at the end", outcome(&learned_state)),
            );
            row(&scenario, "allot place (exhaustive)", &ours, &baseline, &outcome(&allot_state));
            row(&scenario, "naive first-fit", &baseline, &baseline, &outcome(&baseline_state));
        }
        (Err(error), _) | (_, Err(error)) => println!("\n(b) skipped: {error}"),
    }
    println!(
        "\nTimes are per `place` call (views built outside the timer), on this machine; cluster (a) built in {:.1} s.",
        setup.as_secs_f64()
    );
    Ok(())
}
