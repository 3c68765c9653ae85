//! GPU fragmentation over a small abstract node state: how much idle GPU capacity a
//! node cannot offer to the tasks a workload is expected to bring.
//!
//! The state ([`NodeState`]) is what packing looks at: free milli-GPU per GPU, free
//! milli-CPU, free memory and the GPU model. The broker derives it from a node's
//! inventory and usage; the trace simulator keeps it directly. Both score with the
//! functions here and in the `packing` module, so the policy measured on the trace
//! is the policy the broker runs.
//!
//! The measure is the one of Weng et al., "Beware of Fragmentation" (USENIX ATC
//! 2023): for one node and one task shape, the idle GPU share that the shape cannot
//! use (all of it if the shape cannot fit the node at all, otherwise the idle share
//! on GPUs with less free than the shape needs per GPU); a node's fragmentation is
//! that amount averaged over a [`ShapeMix`], weighted by how common each shape is.
//! [`FragMeasure::Fgd`] is that measure as published; [`FragMeasure::Allot`] also
//! counts a node whose host memory is used up as stranding its idle GPUs, and leaves
//! CPU-only shapes out (they need no GPU, so they cannot strand one).

/// GPUs one node may have in the abstract state.
pub const MAX_GPUS_PER_NODE: usize = 16;

/// A whole GPU in milli-GPU.
pub const WHOLE_GPU_MILLI: u16 = 1000;

/// GPU models a task accepts, as bits of model ids (0 to 63); the empty set accepts
/// every model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct ModelSet(pub u64);

impl ModelSet {
    /// Any model.
    pub const ANY: ModelSet = ModelSet(0);

    /// Whether a GPU of model id `model` is acceptable.
    pub fn allows(&self, model: u8) -> bool {
        self.0 == 0 || (model < 64 && self.0 & (1u64 << model) != 0)
    }

    /// Adds one model id (ids of 64 and above cannot be represented and are ignored).
    pub fn with(self, model: u8) -> ModelSet {
        if model < 64 { ModelSet(self.0 | (1u64 << model)) } else { self }
    }

    pub fn is_any(&self) -> bool {
        self.0 == 0
    }
}

/// What a task asks for, without its identity: the unit the fragmentation measure
/// and the policies work on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskShape {
    /// Milli-CPU.
    pub cpu_milli: u32,
    pub memory_mib: u64,
    /// 0 for a CPU-only task, 1 for a share or one whole GPU, more for whole GPUs.
    pub gpu_count: u8,
    /// Per GPU: below 1000 is a share of one GPU, 1000 a whole GPU.
    pub gpu_milli: u16,
    pub models: ModelSet,
}

impl TaskShape {
    /// A share of one GPU (less than a whole one).
    pub fn is_share(&self) -> bool {
        self.gpu_count == 1 && self.gpu_milli < WHOLE_GPU_MILLI
    }

    /// The GPU the task takes, in milli-GPU (a 4-GPU task takes 4000).
    pub fn gpu_total_milli(&self) -> u32 {
        u32::from(self.gpu_count) * u32::from(self.gpu_milli)
    }
}

/// Which GPUs of a node a task gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GpuPick {
    /// A CPU-only task.
    NoGpu,
    /// A share of the GPU at this position.
    Share(u8),
    /// Whole GPUs, as bits of their positions.
    Whole(u16),
}

/// One node as packing sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NodeState {
    /// Free milli-GPU of each GPU; only the first `gpu_count` entries mean anything
    /// and the rest stay 0.
    pub gpu_free: [u16; MAX_GPUS_PER_NODE],
    pub gpu_count: u8,
    /// The GPU model's id (see [`ModelSet`]).
    pub model: u8,
    pub cpu_free_milli: u32,
    pub memory_free_mib: u64,
}

impl NodeState {
    /// An idle node. GPUs beyond [`MAX_GPUS_PER_NODE`] are not represented.
    pub fn idle(gpu_count: u8, model: u8, cpu_milli: u32, memory_mib: u64) -> NodeState {
        let count = usize::from(gpu_count).min(MAX_GPUS_PER_NODE);
        let mut gpu_free = [0u16; MAX_GPUS_PER_NODE];
        for free in gpu_free.iter_mut().take(count) {
            *free = WHOLE_GPU_MILLI;
        }
        NodeState { gpu_free, gpu_count: count as u8, model, cpu_free_milli: cpu_milli, memory_free_mib: memory_mib }
    }

    /// The free milli-GPU of the node's GPUs.
    pub fn gpus(&self) -> &[u16] {
        &self.gpu_free[..usize::from(self.gpu_count)]
    }

    /// Idle milli-GPU, summed over the node.
    pub fn idle_milli(&self) -> u32 {
        self.gpus().iter().map(|free| u32::from(*free)).sum()
    }

    /// GPUs nobody uses at all.
    pub fn fully_free(&self) -> u32 {
        self.gpus().iter().filter(|free| **free >= WHOLE_GPU_MILLI).count() as u32
    }

    /// Whether the node has the GPUs the shape needs (ignoring CPU, memory, model):
    /// `gpu_count` GPUs with at least `gpu_milli` free each.
    pub fn has_gpu_room(&self, shape: &TaskShape) -> bool {
        if shape.gpu_count == 0 {
            return true;
        }
        let roomy = self.gpus().iter().filter(|free| **free >= shape.gpu_milli).count();
        roomy >= usize::from(shape.gpu_count)
    }

    /// Whether the task fits now: CPU, memory, an accepted GPU model and GPU room.
    pub fn fits(&self, shape: &TaskShape) -> bool {
        self.cpu_free_milli >= shape.cpu_milli
            && self.memory_free_mib >= shape.memory_mib
            && (shape.gpu_count == 0 || (self.gpu_count > 0 && shape.models.allows(self.model)))
            && self.has_gpu_room(shape)
    }

    /// The distinct ways to give the task GPUs on this node (assuming it fits): a
    /// share may go to any GPU with room, one candidate per distinct free amount
    /// (GPUs with the same free amount are interchangeable), the lowest position
    /// first; whole GPUs are interchangeable too, so they are the first free ones.
    pub fn picks(&self, shape: &TaskShape) -> Picks {
        let mut picks = Picks::default();
        if shape.gpu_count == 0 {
            picks.push(GpuPick::NoGpu);
        } else if shape.is_share() {
            let mut seen: [u16; MAX_GPUS_PER_NODE] = [u16::MAX; MAX_GPUS_PER_NODE];
            let mut seen_count = 0;
            for (position, free) in self.gpus().iter().enumerate() {
                if *free >= shape.gpu_milli && !seen[..seen_count].contains(free) {
                    seen[seen_count] = *free;
                    seen_count += 1;
                    picks.push(GpuPick::Share(position as u8));
                }
            }
        } else {
            let mut bits = 0u16;
            let mut needed = shape.gpu_count;
            for (position, free) in self.gpus().iter().enumerate() {
                if needed == 0 {
                    break;
                }
                if *free >= WHOLE_GPU_MILLI {
                    bits |= 1 << position;
                    needed -= 1;
                }
            }
            if needed == 0 {
                picks.push(GpuPick::Whole(bits));
            }
        }
        picks
    }

    /// The state after the task takes `pick` (which must come from [`Self::picks`]).
    pub fn take(&self, shape: &TaskShape, pick: GpuPick) -> NodeState {
        let mut next = *self;
        next.cpu_free_milli = next.cpu_free_milli.saturating_sub(shape.cpu_milli);
        next.memory_free_mib = next.memory_free_mib.saturating_sub(shape.memory_mib);
        match pick {
            GpuPick::NoGpu => {}
            GpuPick::Share(position) => {
                let free = &mut next.gpu_free[usize::from(position) % MAX_GPUS_PER_NODE];
                *free = free.saturating_sub(shape.gpu_milli);
            }
            GpuPick::Whole(bits) => {
                for (position, free) in next.gpu_free.iter_mut().enumerate() {
                    if bits & (1 << position) != 0 {
                        *free = free.saturating_sub(shape.gpu_milli);
                    }
                }
            }
        }
        next
    }

    /// The state after a task that took `pick` leaves.
    pub fn give_back(&self, shape: &TaskShape, pick: GpuPick) -> NodeState {
        let mut next = *self;
        next.cpu_free_milli = next.cpu_free_milli.saturating_add(shape.cpu_milli);
        next.memory_free_mib = next.memory_free_mib.saturating_add(shape.memory_mib);
        let add = |free: &mut u16| *free = free.saturating_add(shape.gpu_milli).min(WHOLE_GPU_MILLI);
        match pick {
            GpuPick::NoGpu => {}
            GpuPick::Share(position) => add(&mut next.gpu_free[usize::from(position) % MAX_GPUS_PER_NODE]),
            GpuPick::Whole(bits) => {
                for (position, free) in next.gpu_free.iter_mut().enumerate() {
                    if bits & (1 << position) != 0 {
                        add(free);
                    }
                }
            }
        }
        next
    }
}

/// Up to [`MAX_GPUS_PER_NODE`] GPU picks, without allocating.
#[derive(Debug, Clone, Copy, Default)]
pub struct Picks {
    items: [Option<GpuPick>; MAX_GPUS_PER_NODE],
    len: usize,
}

impl Picks {
    fn push(&mut self, pick: GpuPick) {
        if self.len < MAX_GPUS_PER_NODE {
            self.items[self.len] = Some(pick);
            self.len += 1;
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = GpuPick> + '_ {
        self.items[..self.len].iter().flatten().copied()
    }
}

/// Which fragmentation measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FragMeasure {
    /// As published: CPU and GPU model decide whether a shape fits; memory is not
    /// looked at; a CPU-only shape counts all idle GPU as fragment (a constant for
    /// every node, kept for fidelity).
    Fgd,
    /// Also memory: a node whose memory is used up strands its GPUs too. CPU-only
    /// shapes are left out.
    Allot,
    /// Host capacity, not just host fit: a node can use for a shape at most as
    /// much idle GPU as its free CPU and memory can carry tasks of that shape
    /// (four idle GPUs next to CPU for one task are three GPUs stranded, where
    /// the published measure sees no fragment). CPU-only shapes are left out.
    Capacity,
}

/// The idle milli-GPU of `node` that tasks of `shape` cannot use.
pub fn shape_fragment(node: &NodeState, shape: &TaskShape, measure: FragMeasure) -> u32 {
    let idle = node.idle_milli();
    if shape.gpu_count == 0 {
        return match measure {
            FragMeasure::Fgd => idle,
            FragMeasure::Allot | FragMeasure::Capacity => 0,
        };
    }
    let host_fits = node.cpu_free_milli >= shape.cpu_milli
        && (measure == FragMeasure::Fgd || node.memory_free_mib >= shape.memory_mib)
        && node.gpu_count > 0
        && shape.models.allows(node.model);
    if !host_fits || !node.has_gpu_room(shape) {
        return idle;
    }
    let fragment: u32 = node.gpus().iter().filter(|free| **free < shape.gpu_milli).map(|free| u32::from(*free)).sum();
    if measure != FragMeasure::Capacity {
        return fragment;
    }
    let tasks_by_cpu = node.cpu_free_milli.checked_div(shape.cpu_milli).map_or(u64::MAX, u64::from);
    let tasks_by_memory = node.memory_free_mib.checked_div(shape.memory_mib).unwrap_or(u64::MAX);
    let host_carries = tasks_by_cpu.min(tasks_by_memory).saturating_mul(u64::from(shape.gpu_total_milli()));
    let usable = u64::from(idle - fragment).min(host_carries) as u32;
    idle - usable
}

/// Task shapes with how common each is; the weights add up to 1 (or the mix is
/// empty).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ShapeMix {
    entries: Vec<(TaskShape, f64)>,
}

impl ShapeMix {
    /// A mix from shapes and (non-negative) weights; the same shape given twice adds
    /// up; weights are normalised. Entries are sorted by shape so that the same
    /// input in any order gives the same mix.
    pub fn from_weights(weights: impl IntoIterator<Item = (TaskShape, f64)>) -> ShapeMix {
        let mut entries: Vec<(TaskShape, f64)> = Vec::new();
        let mut all: Vec<(TaskShape, f64)> = weights.into_iter().filter(|(_, weight)| *weight > 0.0).collect();
        all.sort_by_key(|entry| entry.0);
        for (shape, weight) in all {
            match entries.last_mut() {
                Some((last, total)) if *last == shape => *total += weight,
                _ => entries.push((shape, weight)),
            }
        }
        let total: f64 = entries.iter().map(|(_, weight)| weight).sum();
        if total > 0.0 {
            for (_, weight) in &mut entries {
                *weight /= total;
            }
        }
        ShapeMix { entries }
    }

    /// The published "typical tasks": count each shape (memory left out, as in the
    /// paper's simulator), take the most common ones until they cover `coverage`
    /// (0 to 1) of the tasks, and renormalise.
    pub fn typical(shapes: impl IntoIterator<Item = TaskShape>, coverage: f64) -> ShapeMix {
        let mut counts: Vec<(TaskShape, f64)> = Vec::new();
        let mut all: Vec<TaskShape> = shapes.into_iter().map(|shape| TaskShape { memory_mib: 0, ..shape }).collect();
        all.sort();
        let total = all.len() as f64;
        for shape in all {
            match counts.last_mut() {
                Some((last, count)) if *last == shape => *count += 1.0,
                _ => counts.push((shape, 1.0)),
            }
        }
        // Most common first; equal counts in shape order, so the cut is deterministic.
        counts.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut covered = 0.0;
        let mut kept = Vec::new();
        for (shape, count) in counts {
            if covered >= coverage * total {
                break;
            }
            covered += count;
            kept.push((shape, count));
        }
        ShapeMix::from_weights(kept)
    }

    pub fn entries(&self) -> &[(TaskShape, f64)] {
        &self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The node's fragmentation under the mix, in milli-GPU.
pub fn fragmentation(node: &NodeState, mix: &ShapeMix, measure: FragMeasure) -> f64 {
    if node.idle_milli() == 0 {
        return 0.0;
    }
    mix.entries.iter().map(|(shape, weight)| weight * f64::from(shape_fragment(node, shape, measure))).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(gpus: &[u16], cpu: u32) -> NodeState {
        let mut state = NodeState::idle(gpus.len() as u8, 0, cpu, 1 << 20);
        state.gpu_free[..gpus.len()].copy_from_slice(gpus);
        state
    }

    fn share(milli: u16, cpu: u32) -> TaskShape {
        TaskShape { cpu_milli: cpu, memory_mib: 0, gpu_count: 1, gpu_milli: milli, models: ModelSet::ANY }
    }

    fn whole(count: u8) -> TaskShape {
        TaskShape { cpu_milli: 1000, memory_mib: 0, gpu_count: count, gpu_milli: 1000, models: ModelSet::ANY }
    }

    #[test]
    fn shape_fragment_counts_gpus_too_small_for_the_shape() {
        // GPUs with 200, 500, 1000 and 0 free; a 600 milli share fits on the idle
        // GPU only, so 200 + 500 are fragment.
        let state = node(&[200, 500, 1000, 0], 8000);
        assert_eq!(shape_fragment(&state, &share(600, 1000), FragMeasure::Fgd), 700);
        // A 100 milli share fits everywhere with room: nothing is fragment.
        assert_eq!(shape_fragment(&state, &share(100, 1000), FragMeasure::Fgd), 0);
        // Two whole GPUs do not fit (one idle GPU): all 1,700 idle is fragment.
        assert_eq!(shape_fragment(&state, &whole(2), FragMeasure::Fgd), 1700);
        // Not enough CPU left: everything is fragment.
        assert_eq!(shape_fragment(&state, &share(100, 9000), FragMeasure::Fgd), 1700);
        // A model the task does not accept: everything is fragment.
        let picky = TaskShape { models: ModelSet::ANY.with(3), ..share(100, 1000) };
        assert_eq!(shape_fragment(&state, &picky, FragMeasure::Fgd), 1700);
    }

    #[test]
    fn allot_measure_counts_memory_and_ignores_cpu_only_shapes() {
        let mut state = node(&[1000, 1000], 8000);
        state.memory_free_mib = 1000;
        let hungry = TaskShape { memory_mib: 2000, ..share(100, 1000) };
        assert_eq!(shape_fragment(&state, &hungry, FragMeasure::Fgd), 0, "the published measure ignores memory");
        assert_eq!(shape_fragment(&state, &hungry, FragMeasure::Allot), 2000);
        let cpu_only = TaskShape { gpu_count: 0, gpu_milli: 0, ..share(0, 1000) };
        assert_eq!(shape_fragment(&state, &cpu_only, FragMeasure::Fgd), 2000);
        assert_eq!(shape_fragment(&state, &cpu_only, FragMeasure::Allot), 0);
    }

    #[test]
    fn capacity_measure_counts_gpus_the_host_cannot_carry() {
        // Four idle GPUs but CPU for one 4-CPU task: the published measure sees no
        // fragment for a 1-GPU shape; the capacity measure sees three GPUs stranded.
        let state = node(&[1000, 1000, 1000, 1000], 5000);
        let one_gpu = TaskShape { cpu_milli: 4000, ..whole(1) };
        assert_eq!(shape_fragment(&state, &one_gpu, FragMeasure::Fgd), 0);
        assert_eq!(shape_fragment(&state, &one_gpu, FragMeasure::Capacity), 3000);
        // Shares: CPU for two 400 milli tasks carries 800 of the 4,000 idle.
        let small = TaskShape { cpu_milli: 2000, ..share(400, 0) };
        assert_eq!(shape_fragment(&state, &small, FragMeasure::Capacity), 3200);
        // Plenty of CPU: the same as the published measure.
        let roomy = node(&[200, 500, 1000, 0], 64_000);
        assert_eq!(shape_fragment(&roomy, &share(600, 1000), FragMeasure::Capacity), 700);
    }

    #[test]
    fn fragmentation_weights_shapes_by_the_mix() {
        let state = node(&[200, 500, 1000, 0], 8000);
        let mix = ShapeMix::from_weights([(share(600, 1000), 3.0), (whole(2), 1.0)]);
        // 0.75 * 700 + 0.25 * 1700
        let expected = 0.75 * 700.0 + 0.25 * 1700.0;
        assert!((fragmentation(&state, &mix, FragMeasure::Fgd) - expected).abs() < 1e-9);
        let full = node(&[0, 0], 8000);
        assert_eq!(fragmentation(&full, &mix, FragMeasure::Fgd), 0.0);
    }

    #[test]
    fn typical_mix_keeps_the_most_common_shapes_up_to_the_coverage() {
        let shapes = std::iter::repeat_n(share(500, 1000), 6)
            .chain(std::iter::repeat_n(whole(8), 3))
            .chain(std::iter::once(share(100, 1000)));
        let mix = ShapeMix::typical(shapes, 0.85);
        let kept: Vec<(u16, u8)> = mix.entries().iter().map(|(shape, _)| (shape.gpu_milli, shape.gpu_count)).collect();
        assert_eq!(kept.len(), 2, "6 + 3 of 10 tasks cover 85%: {kept:?}");
        let weight_of_share = mix.entries().iter().find(|(shape, _)| shape.gpu_milli == 500).map(|(_, w)| *w);
        assert_eq!(weight_of_share, Some(6.0 / 9.0));
    }

    #[test]
    fn picks_deduplicate_equal_gpus_and_take_whole_gpus_in_order() {
        let state = node(&[300, 1000, 300, 1000, 1000], 8000);
        let picks: Vec<GpuPick> = state.picks(&share(300, 0)).iter().collect();
        assert_eq!(picks, vec![GpuPick::Share(0), GpuPick::Share(1)]);
        let picks: Vec<GpuPick> = state.picks(&whole(2)).iter().collect();
        assert_eq!(picks, vec![GpuPick::Whole(0b1010)]);
        assert!(state.picks(&whole(4)).is_empty());
        let after = state.take(&whole(2), GpuPick::Whole(0b1010));
        assert_eq!(after.gpus(), &[300, 0, 300, 0, 1000]);
        assert_eq!(after.cpu_free_milli, 7000);
        let back = after.give_back(&whole(2), GpuPick::Whole(0b1010));
        assert_eq!(back, state);
    }
}
