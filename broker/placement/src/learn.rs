//! Learning the workload's task shapes online, from the tasks seen so far: the
//! shape mix Allot's packing policy measures fragmentation against.
//!
//! FGD as published is given the shape distribution of the whole task list before
//! the first task arrives. Allot learns it from arrivals only, so it can run in a
//! broker that does not know the future. The mix is rebuilt at checkpoints that
//! grow geometrically (after 16, 32, 64, ... tasks, then every
//! [`ShapeLearner::REFRESH_EVERY`]), which keeps the packer's memo tables useful.

use std::collections::HashMap;

use crate::fragment::{ShapeMix, TaskShape};

/// Counts task shapes as they arrive and turns them into a [`ShapeMix`].
#[derive(Debug, Clone, Default)]
pub struct ShapeLearner {
    counts: HashMap<TaskShape, f64>,
    seen: u64,
    next_refresh: u64,
}

impl ShapeLearner {
    /// Once the geometric checkpoints pass this many tasks, the mix is rebuilt
    /// every this many tasks.
    pub const REFRESH_EVERY: u64 = 1024;

    pub fn new() -> ShapeLearner {
        ShapeLearner { counts: HashMap::new(), seen: 0, next_refresh: 16 }
    }

    /// Records one arrived task; returns whether the mix should be rebuilt now.
    pub fn observe(&mut self, shape: &TaskShape) -> bool {
        *self.counts.entry(*shape).or_default() += 1.0;
        self.seen += 1;
        if self.seen >= self.next_refresh {
            self.next_refresh = if self.next_refresh < Self::REFRESH_EVERY {
                self.next_refresh * 2
            } else {
                self.next_refresh + Self::REFRESH_EVERY
            };
            return true;
        }
        self.seen == 1
    }

    /// Tasks seen so far.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// The mix learned so far: each shape weighted by how often it arrived.
    pub fn mix(&self) -> ShapeMix {
        ShapeMix::from_weights(self.counts.iter().map(|(shape, count)| (*shape, *count)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fragment::ModelSet;

    fn share(milli: u16) -> TaskShape {
        TaskShape { cpu_milli: 1000, memory_mib: 10, gpu_count: 1, gpu_milli: milli, models: ModelSet::ANY }
    }

    #[test]
    fn learner_refreshes_at_growing_checkpoints_and_weights_by_frequency() {
        let mut learner = ShapeLearner::new();
        let refreshes: Vec<u64> =
            (1..=3000u64).filter(|index| learner.observe(&share(if index % 4 == 0 { 500 } else { 250 }))).collect();
        assert_eq!(refreshes, vec![1, 16, 32, 64, 128, 256, 512, 1024, 2048]);
        let mix = learner.mix();
        let weight = |milli: u16| mix.entries().iter().find(|(shape, _)| shape.gpu_milli == milli).map(|(_, w)| *w);
        assert_eq!(weight(500), Some(0.25));
        assert_eq!(weight(250), Some(0.75));
    }
}
