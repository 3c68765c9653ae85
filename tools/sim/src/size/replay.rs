//! Replays a demand on a fleet with Allot's placement, queueing what does not fit
//! (first come, first served, with backfill: a later task may start when an
//! earlier one still waits for a bigger hole) until departures make room.
//!
//! Only the node that a departure frees can take a waiting task that fitted
//! nowhere before, so each departure checks the queue against that node alone;
//! the policy still chooses among every node.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicBool, Ordering};

use allot_placement::fragment::{GpuPick, NodeState, TaskShape};
use allot_placement::learn::ShapeLearner;
use allot_placement::packing::{Packer, PackingPolicy, SplitMix64, TaskClasses};
use serde::Serialize;

use super::demand::Demand;

/// One node of a fleet: GPU count, model id (into the demand's models), CPU, memory.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FleetNode {
    pub gpus: u8,
    pub model: u8,
    pub cpu_milli: u32,
    pub memory_mib: u64,
}

/// A point of the utilisation curve.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct UsagePoint {
    pub time_s: f64,
    /// GPUs allocated.
    pub allocated_gpus: f64,
    /// GPUs asked for by tasks waiting in the queue.
    pub queued_gpus: f64,
}

/// What one replay measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReplayOutcome {
    pub seed: u64,
    /// Waits of the GPU tasks that started, in seconds, sorted.
    #[serde(skip)]
    pub waits_s: Vec<f64>,
    /// Tasks that never started (fit no server, or still queued at the end).
    pub unserved_tasks: usize,
    pub unserved_never_fit: usize,
    /// GPU request of started tasks, % of all GPU requested.
    pub served_pct: f64,
    /// Most GPU allocated at once, % of the fleet's GPUs.
    pub peak_allocated_pct: f64,
    /// GPU-seconds allocated over the replay, % of the fleet's GPU-seconds.
    pub mean_allocated_pct: f64,
    /// Utilisation over time, at most about 400 points.
    pub usage: Vec<UsagePoint>,
    /// False when the run was cancelled before it finished.
    pub finished: bool,
}

impl ReplayOutcome {
    /// The `percentile` (0-100) wait in seconds, counting tasks that never started
    /// as waiting for ever.
    pub fn wait_percentile(&self, percentile: f64) -> f64 {
        let total = self.waits_s.len() + self.unserved_tasks;
        if total == 0 {
            return 0.0;
        }
        let rank = ((percentile / 100.0) * total as f64).ceil().max(1.0) as usize - 1;
        self.waits_s.get(rank).copied().unwrap_or(f64::INFINITY)
    }
}

#[derive(Debug, Clone, Copy)]
struct Running {
    node: usize,
    pick: GpuPick,
    task: usize,
}

/// Replays the demand on the fleet with the policy. Stops early (unfinished)
/// when `cancel` is set.
pub fn replay(
    demand: &Demand,
    fleet: &[FleetNode],
    policy: PackingPolicy,
    seed: u64,
    cancel: &AtomicBool,
) -> ReplayOutcome {
    let mut nodes: Vec<NodeState> =
        fleet.iter().map(|node| NodeState::idle(node.gpus, node.model, node.cpu_milli, node.memory_mib)).collect();
    let classes = vec![TaskClasses(0); nodes.len()];
    let capacity_gpus: f64 = fleet.iter().map(|node| f64::from(node.gpus)).sum::<f64>().max(1.0);
    // Distinct idle nodes: a task that fits none of them can never start.
    let mut idle_kinds: Vec<NodeState> = Vec::new();
    for node in &nodes {
        if !idle_kinds.contains(node) {
            idle_kinds.push(*node);
        }
    }
    let mut rng = SplitMix64::new(seed ^ 0x5123_0000_0000_0001);
    let mut learner = ShapeLearner::new();
    let mut packer = Packer::new(policy, Default::default());

    let mut order: Vec<usize> = (0..demand.tasks.len()).collect();
    order.sort_by(|a, b| demand.tasks[*a].arrival_s.total_cmp(&demand.tasks[*b].arrival_s).then(a.cmp(b)));
    let start = order.first().map(|first| demand.tasks[*first].arrival_s).unwrap_or_default();
    // Departures: (time in microseconds, sequence) keeps the heap on integers.
    let mut departures: BinaryHeap<Reverse<(u64, usize)>> = BinaryHeap::new();
    let mut running: Vec<Running> = Vec::new();
    let mut queue: Vec<usize> = Vec::new();
    let mut queued_milli: f64 = 0.0;
    let mut waits = Vec::with_capacity(demand.tasks.len());
    let mut never_fit = 0usize;
    let total_milli: f64 = demand.tasks.iter().map(|task| f64::from(task.shape.gpu_total_milli())).sum();
    let mut served_milli = 0.0;
    let mut allocated_milli = 0.0;
    let mut peak_milli: f64 = 0.0;
    let mut area = 0.0;
    let mut last_time = start;
    let mut raw_usage: Vec<UsagePoint> = Vec::new();
    let micros = |seconds: f64| (seconds.max(0.0) * 1e6) as u64;

    let place = |task_index: usize,
                 now: f64,
                 nodes: &mut Vec<NodeState>,
                 packer: &mut Packer,
                 rng: &mut SplitMix64,
                 departures: &mut BinaryHeap<Reverse<(u64, usize)>>,
                 running: &mut Vec<Running>|
     -> Option<f64> {
        let task = &demand.tasks[task_index];
        let (node, pick) = packer.choose(nodes, &classes, &task.shape, rng)?;
        nodes[node] = nodes[node].take(&task.shape, pick);
        if let Some(run) = task.run_s {
            running.push(Running { node, pick, task: task_index });
            departures.push(Reverse((micros(now + run), running.len() - 1)));
        }
        Some(f64::from(task.shape.gpu_total_milli()))
    };

    let mut next_arrival = 0usize;
    let mut events = 0usize;
    loop {
        events += 1;
        if events.is_multiple_of(2048) && cancel.load(Ordering::Relaxed) {
            return ReplayOutcome {
                seed,
                waits_s: Vec::new(),
                unserved_tasks: 0,
                unserved_never_fit: 0,
                served_pct: 0.0,
                peak_allocated_pct: 0.0,
                mean_allocated_pct: 0.0,
                usage: Vec::new(),
                finished: false,
            };
        }
        let arrival_time = order.get(next_arrival).map(|index| demand.tasks[*index].arrival_s);
        let departure_time = departures.peek().map(|Reverse((time, _))| *time as f64 / 1e6);
        // Departures go first at equal times.
        let (now, is_departure) = match (arrival_time, departure_time) {
            (None, None) => break,
            (Some(arrival), Some(departure)) if departure <= arrival => (departure, true),
            (Some(arrival), _) => (arrival, false),
            (None, Some(departure)) => (departure, true),
        };
        area += allocated_milli * (now - last_time).max(0.0);
        last_time = now;
        if is_departure {
            let Some(Reverse((_, slot))) = departures.pop() else { break };
            let done = running[slot];
            let shape: TaskShape = demand.tasks[done.task].shape;
            nodes[done.node] = nodes[done.node].give_back(&shape, done.pick);
            allocated_milli -= f64::from(shape.gpu_total_milli());
            // Waiting tasks that now fit the freed node start, oldest first.
            let mut position = 0;
            while position < queue.len() {
                let waiting = queue[position];
                if nodes[done.node].fits(&demand.tasks[waiting].shape)
                    && let Some(milli) =
                        place(waiting, now, &mut nodes, &mut packer, &mut rng, &mut departures, &mut running)
                {
                    queue.remove(position);
                    queued_milli -= milli;
                    allocated_milli += milli;
                    served_milli += milli;
                    waits.push(now - demand.tasks[waiting].arrival_s);
                    continue;
                }
                position += 1;
            }
        } else {
            let index = order[next_arrival];
            next_arrival += 1;
            let shape = demand.tasks[index].shape;
            if policy == PackingPolicy::Allot && learner.observe(&shape) {
                packer.set_mix(learner.mix());
            }
            if !idle_kinds.iter().any(|kind| kind.fits(&shape)) {
                never_fit += 1;
            } else if let Some(milli) =
                place(index, now, &mut nodes, &mut packer, &mut rng, &mut departures, &mut running)
            {
                allocated_milli += milli;
                served_milli += milli;
                waits.push(0.0);
            } else {
                queue.push(index);
                queued_milli += f64::from(shape.gpu_total_milli());
            }
        }
        peak_milli = peak_milli.max(allocated_milli);
        raw_usage.push(UsagePoint {
            time_s: now,
            allocated_gpus: allocated_milli / 1000.0,
            queued_gpus: queued_milli / 1000.0,
        });
    }
    waits.sort_by(f64::total_cmp);
    let span = (last_time - start).max(1e-9);
    ReplayOutcome {
        seed,
        waits_s: waits,
        unserved_tasks: queue.len() + never_fit,
        unserved_never_fit: never_fit,
        served_pct: if total_milli > 0.0 { served_milli / total_milli * 100.0 } else { 100.0 },
        peak_allocated_pct: peak_milli / 1000.0 / capacity_gpus * 100.0,
        mean_allocated_pct: if last_time > start { area / span / 1000.0 / capacity_gpus * 100.0 } else { 0.0 },
        usage: downsample(&raw_usage, 400),
        finished: true,
    }
}

/// Keeps at most about `points` points: in each time bucket, the one with the
/// most GPU allocated (so peaks survive).
fn downsample(points: &[UsagePoint], buckets: usize) -> Vec<UsagePoint> {
    let (Some(first), Some(last)) = (points.first(), points.last()) else { return Vec::new() };
    let span = (last.time_s - first.time_s).max(1e-9);
    let mut kept: Vec<UsagePoint> = Vec::new();
    let mut current: Option<(usize, UsagePoint)> = None;
    for point in points {
        let bucket = (((point.time_s - first.time_s) / span) * buckets as f64) as usize;
        match current {
            Some((open, best)) if open == bucket => {
                if point.allocated_gpus + point.queued_gpus > best.allocated_gpus + best.queued_gpus {
                    current = Some((open, *point));
                }
            }
            _ => {
                if let Some((_, best)) = current {
                    kept.push(best);
                }
                current = Some((bucket, *point));
            }
        }
    }
    if let Some((_, best)) = current {
        kept.push(best);
    }
    kept
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::size::demand::parse_demand;

    fn demand(rows: &str) -> Demand {
        let text = format!("name,arrival_s,departure_s,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec\n{rows}");
        parse_demand(Path::new("demand.csv"), &text, &["H100-SXM-80GB".to_owned()], 1.0, 1).expect("valid demand")
    }

    fn one_server() -> Vec<FleetNode> {
        vec![FleetNode { gpus: 8, model: 0, cpu_milli: 64_000, memory_mib: 1 << 20 }]
    }

    #[test]
    fn tasks_that_do_not_fit_wait_for_a_departure_instead_of_being_dropped() {
        // The second 8-GPU task waits for the first to leave at 100 s, then runs
        // its 50 s; the share arriving at 10 s waits behind it (first come, first
        // served) until it leaves at 150 s.
        let demand = demand("a,0,100,1000,1,8,1000,\nb,5,55,1000,1,8,1000,\nc,10,20,1000,1,1,500,H100\n");
        let outcome = replay(&demand, &one_server(), PackingPolicy::Allot, 42, &AtomicBool::new(false));
        assert!(outcome.finished);
        assert_eq!(outcome.waits_s, vec![0.0, 95.0, 140.0]);
        assert_eq!(outcome.unserved_tasks, 0);
        assert!((outcome.served_pct - 100.0).abs() < 1e-9);
        assert_eq!(outcome.wait_percentile(50.0), 95.0);
        assert_eq!(outcome.wait_percentile(100.0), 140.0);
    }

    #[test]
    fn a_task_bigger_than_any_server_never_starts_and_waits_for_ever() {
        let demand = demand("a,0,100,1000,1,8,1000,\nbig,0,100,128000,1,1,1000,\n");
        let outcome = replay(&demand, &one_server(), PackingPolicy::Allot, 42, &AtomicBool::new(false));
        assert_eq!((outcome.unserved_tasks, outcome.unserved_never_fit), (1, 1));
        assert!((outcome.served_pct - 8.0 / 9.0 * 100.0).abs() < 1e-9);
        assert_eq!(outcome.wait_percentile(50.0), 0.0);
        assert!(outcome.wait_percentile(95.0).is_infinite());
    }
}
