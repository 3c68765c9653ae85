//! Cluster-wide scarcity of task slots: how much GPU a placement is expected to
//! cost the tasks still to come, because it takes away room that some task shape
//! will run short of before the cluster fills.
//!
//! FGD's fragmentation is local to one node: it charges a placement for every
//! shape it makes unusable there, weighted by how common the shape is, whether or
//! not the rest of the cluster has plenty of room for that shape. Near the end of
//! a fill, what drops a task is that no node at all has room for it. This module
//! keeps, for each class of GPU request (GPU count, milli-GPU per GPU, accepted
//! models), the cluster's *supply*: how many such tasks all nodes together could
//! still take, counting each node's GPUs, CPU and memory. The expected *demand*
//! for a class until the cluster fills is Poisson, with mean the class's learned
//! share of tasks times the number of tasks the idle GPU, CPU and memory can
//! still hold (the first of the three to run out).
//! A placement that removes slots of a class costs the expected GPU of that class
//! that will then find no room: `gpu × (U(S − Δ) − U(S))`, where
//! `U(S) = E[(D − S)⁺]` is the expected shortfall of demand `D` over supply `S`.
//!
//! Everything here comes from the node states and the learned mix: tasks that have
//! not arrived are never looked at.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use crate::fragment::{ModelSet, NodeState, ShapeMix};
use crate::packing::FxHasher;

type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// One class of GPU request: tasks that ask the same GPUs of the same models. The
/// host needs (CPU, memory) of its members differ; a node's slots for the class
/// are the members' slots averaged by their weight.
#[derive(Debug, Clone, PartialEq)]
struct SlotClass {
    gpu_count: u8,
    gpu_milli: u16,
    models: ModelSet,
    /// Milli-CPU, memory and weight within the class (weights add up to 1).
    members: Vec<(u32, u64, f64)>,
    /// The class's share of all tasks (CPU-only ones included).
    probability: f64,
}

impl SlotClass {
    fn gpu_total_milli(&self) -> f64 {
        f64::from(self.gpu_count) * f64::from(self.gpu_milli)
    }

    /// How many tasks of the class the node could take now, averaged over members.
    fn slots(&self, node: &NodeState) -> f32 {
        if node.gpu_count == 0 || !self.models.allows(node.model) {
            return 0.0;
        }
        let gpu_units: u64 = if self.gpu_count == 1 && self.gpu_milli < crate::fragment::WHOLE_GPU_MILLI {
            node.gpus().iter().map(|free| u64::from(*free / self.gpu_milli.max(1))).sum()
        } else {
            u64::from(node.fully_free()) / u64::from(self.gpu_count.max(1))
        };
        if gpu_units == 0 {
            return 0.0;
        }
        let mut total = 0.0;
        for (cpu, memory, weight) in &self.members {
            let by_cpu = if *cpu == 0 { u64::MAX } else { u64::from(node.cpu_free_milli / cpu) };
            let by_memory = if *memory == 0 { u64::MAX } else { node.memory_free_mib / memory };
            total += weight * gpu_units.min(by_cpu).min(by_memory) as f64;
        }
        total as f32
    }
}

/// `E[(D − S)⁺]` for `D` Poisson with mean `lambda`: the expected demand that a
/// supply of `supply` slots cannot meet. Exact for small means, a normal
/// approximation above; linear between whole supplies.
pub fn expected_shortfall(lambda: f64, supply: f64) -> f64 {
    if lambda <= 0.0 {
        return 0.0;
    }
    if supply <= 0.0 {
        return lambda - supply;
    }
    if lambda > 60.0 {
        let sigma = lambda.sqrt();
        let z = (supply - lambda) / sigma;
        let tail = 0.5 * erfc(z / std::f64::consts::SQRT_2);
        let density = (-0.5 * z * z).exp() / (2.0 * std::f64::consts::PI).sqrt();
        return (sigma * density + (lambda - supply) * tail).max(0.0);
    }
    if supply > lambda + 12.0 * lambda.sqrt() + 30.0 {
        return 0.0;
    }
    let below = supply.floor();
    let fraction = supply - below;
    let at = |whole: u64| {
        // U(S) = λ − S + Σ_{k<S} (S − k) P(k).
        let mut probability = (-lambda).exp();
        let mut sum = 0.0;
        for k in 0..whole {
            sum += (whole - k) as f64 * probability;
            probability *= lambda / (k + 1) as f64;
        }
        (lambda - whole as f64 + sum).max(0.0)
    };
    let low = at(below as u64);
    if fraction == 0.0 { low } else { low + (at(below as u64 + 1) - low) * fraction }
}

/// The complementary error function (Numerical Recipes' Chebyshev fit, relative
/// error below 1.2e-7).
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98 + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let value = t * poly.exp();
    if x >= 0.0 { value } else { 2.0 - value }
}

/// The supply of every class over the whole cluster, kept in step with the node
/// states it is shown, and the cost tables of the current decision.
#[derive(Debug, Clone, Default)]
pub struct Scarcity {
    classes: Vec<SlotClass>,
    /// Mean GPU, CPU and memory per task over the mix (CPU-only tasks count 0
    /// GPU).
    mean_gpu_milli: f64,
    mean_cpu_milli: f64,
    mean_memory_mib: f64,
    /// Multiplies the expected number of tasks still to come.
    horizon_scale: f64,
    nodes: Vec<NodeState>,
    /// Slots of every (node, class), node-major.
    slots: Vec<f32>,
    supply: Vec<f64>,
    /// The most slots of each class one node holds (an upper bound on what one
    /// placement can take away).
    most_per_node: Vec<f32>,
    idle_milli: f64,
    idle_cpu_milli: f64,
    idle_memory_mib: f64,
    memo: FastMap<NodeState, Box<[f32]>>,
    /// For the current decision: per class, the cost of losing 0, 1, 2, ... slots
    /// (grown on demand), empty for classes that are not scarce.
    tables: Vec<Vec<f64>>,
    lambdas: Vec<f64>,
    active: Vec<usize>,
}

impl Scarcity {
    /// Classes from the GPU shapes of the mix.
    pub fn new(mix: &ShapeMix, horizon_scale: f64) -> Scarcity {
        let mut classes: Vec<SlotClass> = Vec::new();
        let (mut mean_gpu_milli, mut mean_cpu_milli, mut mean_memory_mib) = (0.0, 0.0, 0.0);
        for (shape, weight) in mix.entries() {
            mean_gpu_milli += weight * f64::from(shape.gpu_total_milli());
            mean_cpu_milli += weight * f64::from(shape.cpu_milli);
            mean_memory_mib += weight * shape.memory_mib as f64;
            if shape.gpu_count == 0 {
                continue;
            }
            let member = (shape.cpu_milli, shape.memory_mib, *weight);
            match classes.iter_mut().find(|class| {
                class.gpu_count == shape.gpu_count && class.gpu_milli == shape.gpu_milli && class.models == shape.models
            }) {
                Some(class) => {
                    class.members.push(member);
                    class.probability += weight;
                }
                None => classes.push(SlotClass {
                    gpu_count: shape.gpu_count,
                    gpu_milli: shape.gpu_milli,
                    models: shape.models,
                    members: vec![member],
                    probability: *weight,
                }),
            }
        }
        for class in &mut classes {
            let total: f64 = class.members.iter().map(|member| member.2).sum();
            for member in &mut class.members {
                member.2 /= total.max(f64::MIN_POSITIVE);
            }
        }
        let count = classes.len();
        Scarcity {
            classes,
            mean_gpu_milli,
            mean_cpu_milli,
            mean_memory_mib,
            horizon_scale,
            tables: vec![Vec::new(); count],
            lambdas: vec![0.0; count],
            ..Scarcity::default()
        }
    }

    fn node_slots(&mut self, node: &NodeState) -> Box<[f32]> {
        if let Some(slots) = self.memo.get(node) {
            return slots.clone();
        }
        let slots: Box<[f32]> = self.classes.iter().map(|class| class.slots(node)).collect();
        if self.memo.len() >= 1_000_000 {
            self.memo.clear();
        }
        self.memo.insert(*node, slots.clone());
        slots
    }

    /// Brings the supply in step with `nodes` (only nodes that changed since the
    /// last call are recounted) and prepares the cost tables for one decision.
    pub fn sync(&mut self, nodes: &[NodeState]) {
        let count = self.classes.len();
        // The first call (also with no node at all, which a cluster whose nodes
        // are all lost or cordoned gives) sizes the supply.
        if self.nodes.len() != nodes.len() || self.supply.len() != count {
            self.nodes = nodes.to_vec();
            self.slots = vec![0.0; nodes.len() * count];
            self.supply = vec![0.0; count];
            self.idle_milli = 0.0;
            self.idle_cpu_milli = 0.0;
            self.idle_memory_mib = 0.0;
            for (index, node) in nodes.iter().enumerate() {
                let slots = self.node_slots(node);
                self.slots[index * count..(index + 1) * count].copy_from_slice(&slots);
                for (class, value) in slots.iter().enumerate() {
                    self.supply[class] += f64::from(*value);
                }
                self.idle_milli += f64::from(node.idle_milli());
                self.idle_cpu_milli += f64::from(node.cpu_free_milli);
                self.idle_memory_mib += node.memory_free_mib as f64;
            }
        } else {
            for (index, node) in nodes.iter().enumerate() {
                if self.nodes[index] == *node {
                    continue;
                }
                let old = self.nodes[index];
                self.idle_milli += f64::from(node.idle_milli()) - f64::from(old.idle_milli());
                self.idle_cpu_milli += f64::from(node.cpu_free_milli) - f64::from(old.cpu_free_milli);
                self.idle_memory_mib += node.memory_free_mib as f64 - old.memory_free_mib as f64;
                self.nodes[index] = *node;
                let slots = self.node_slots(node);
                let old = &mut self.slots[index * count..(index + 1) * count];
                for (class, value) in slots.iter().enumerate() {
                    self.supply[class] += f64::from(*value) - f64::from(old[class]);
                }
                old.copy_from_slice(&slots);
            }
        }
        if self.most_per_node.len() != count {
            self.most_per_node = vec![0.0; count];
            for index in 0..nodes.len() {
                for class in 0..count {
                    self.most_per_node[class] = self.most_per_node[class].max(self.slots[index * count + class]);
                }
            }
        }
        // The cluster is full when its first resource runs out, whichever that is.
        let tasks_to_come = self.horizon_scale
            * (self.idle_milli / self.mean_gpu_milli.max(1.0))
                .min(self.idle_cpu_milli / self.mean_cpu_milli.max(1.0))
                .min(self.idle_memory_mib / self.mean_memory_mib.max(1.0));
        self.active.clear();
        for class in 0..count {
            let lambda = self.classes[class].probability * tasks_to_come;
            self.lambdas[class] = lambda;
            self.tables[class].clear();
            let most = f64::from(self.most_per_node[class]).ceil();
            // Not scarce when even losing a whole node's slots costs nothing.
            if expected_shortfall(lambda, self.supply[class] - most) > 1e-9 {
                self.active.push(class);
            }
        }
    }

    fn cost_of(&mut self, class: usize, lost: f32) -> f64 {
        let lost = f64::from(lost.max(0.0));
        let whole = lost.floor() as usize;
        let table = &mut self.tables[class];
        let lambda = self.lambdas[class];
        let supply = self.supply[class];
        while table.len() <= whole + 1 {
            let steps = table.len() as f64;
            let base = expected_shortfall(lambda, supply);
            table.push(expected_shortfall(lambda, supply - steps) - base);
        }
        let fraction = lost - whole as f64;
        let shortfall = table[whole] + (table[whole + 1] - table[whole]) * fraction;
        shortfall * self.classes[class].gpu_total_milli()
    }

    /// The expected milli-GPU of future tasks that will find no room because the
    /// node goes from `before` to `after`.
    pub fn cost(&mut self, before: &NodeState, after: &NodeState) -> f64 {
        if self.active.is_empty() {
            return 0.0;
        }
        let slots_before = self.node_slots(before);
        let slots_after = self.node_slots(after);
        let mut total = 0.0;
        for position in 0..self.active.len() {
            let class = self.active[position];
            let lost = slots_before[class] - slots_after[class];
            if lost > 0.0 {
                total += self.cost_of(class, lost);
            }
        }
        total
    }

    /// Whether any class is scarce for the current decision.
    pub fn any_scarce(&self) -> bool {
        !self.active.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fragment::GpuPick;

    #[test]
    fn expected_shortfall_matches_small_cases_by_hand() {
        // λ = 1, S = 0: all demand is short.
        assert!((expected_shortfall(1.0, 0.0) - 1.0).abs() < 1e-12);
        // λ = 1, S = 1: E[(D − 1)⁺] = λ − 1 + P(0) = e⁻¹.
        assert!((expected_shortfall(1.0, 1.0) - (-1.0f64).exp()).abs() < 1e-12);
        // Plenty of supply: nothing short.
        assert_eq!(expected_shortfall(5.0, 100.0), 0.0);
        // The normal branch agrees with the exact one near the switch.
        let exact = expected_shortfall(59.9, 60.0);
        let normal = expected_shortfall(60.1, 60.0);
        assert!((exact - normal).abs() < 0.3, "{exact} vs {normal}");
        // Decreasing in supply.
        assert!(expected_shortfall(200.0, 180.0) > expected_shortfall(200.0, 190.0));
    }

    fn shape(cpu: u32, count: u8, milli: u16, models: ModelSet) -> crate::fragment::TaskShape {
        crate::fragment::TaskShape { cpu_milli: cpu, memory_mib: 0, gpu_count: count, gpu_milli: milli, models }
    }

    #[test]
    fn taking_the_last_slots_of_a_class_costs_and_taking_plentiful_ones_does_not() {
        // Two model-0 nodes and one model-1 node. Half the tasks want a whole GPU of
        // model 1, which only one node has; the rest take a quarter of any GPU.
        let picky = shape(1000, 1, 1000, ModelSet::ANY.with(1));
        let small = shape(1000, 1, 250, ModelSet::ANY);
        let mix = ShapeMix::from_weights([(picky, 1.0), (small, 1.0)]);
        let mut model_one = NodeState::idle(2, 1, 32_000, 1 << 20);
        model_one.model = 1;
        let nodes = [NodeState::idle(2, 0, 32_000, 1 << 20), NodeState::idle(2, 0, 32_000, 1 << 20), model_one];
        let mut scarcity = Scarcity::new(&mix, 1.0);
        scarcity.sync(&nodes);
        assert!(scarcity.any_scarce());
        // A small share on the model-1 node takes a slot the picky class needs.
        let on_model_one = scarcity.cost(&nodes[2], &nodes[2].take(&small, GpuPick::Share(0)));
        let on_model_zero = scarcity.cost(&nodes[0], &nodes[0].take(&small, GpuPick::Share(0)));
        assert!(on_model_one > on_model_zero, "{on_model_one} vs {on_model_zero}");
        // Only model-1 slots changed; recounting after a change moves the supply.
        let after = [nodes[0], nodes[1], nodes[2].take(&picky, GpuPick::Whole(0b1))];
        scarcity.sync(&after);
        let again = scarcity.cost(&after[2], &after[2].take(&small, GpuPick::Share(1)));
        assert!(again > on_model_one, "the last model-1 GPU is dearer: {again} vs {on_model_one}");
    }
}
