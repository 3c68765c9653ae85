//! Learning the workload's task shapes online, from the tasks seen so far: the
//! shape mix Allot's packing policy measures fragmentation against.
//!
//! FGD as published is given the shape distribution of the whole task list before
//! the first task arrives. Allot learns it from arrivals only, so it can run in a
//! broker that does not know the future. The mix is rebuilt at checkpoints that
//! grow geometrically (after 16, 32, 64, ... tasks, then every
//! [`ShapeLearner::REFRESH_EVERY`]), which keeps the packer's memo tables useful.

use std::collections::{BTreeMap, HashMap};

use allot_api::allocation::{GpuDemand, ValidatedRequest};

use crate::fragment::{ModelSet, ShapeMix, TaskShape, WHOLE_GPU_MILLI};

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

/// A request's shape as the broker learns it: like [`TaskShape`], but naming the
/// GPU models a whole-GPU request accepts, since model ids are only given out
/// when a decision maps the cluster's models (see [`RequestMix::shape_mix`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
struct RequestShape {
    cpu_milli: u32,
    memory_mib: u64,
    gpu_count: u8,
    gpu_milli: u16,
    /// Lowercase; empty for any model.
    models: Vec<String>,
}

impl RequestShape {
    /// A MIG request counts as the fraction of a GPU its compute slices are (a
    /// `3g` profile is 3 of 7): what packing knows of fractional demand. `None`
    /// for a profile whose name does not start with its slice count.
    fn of(request: &ValidatedRequest) -> Option<RequestShape> {
        let (gpu_count, gpu_milli, models) = match &request.gpus {
            GpuDemand::None => (0, 0, Vec::new()),
            GpuDemand::Whole { count, models } => {
                let mut models: Vec<String> = models.iter().map(|model| model.to_lowercase()).collect();
                models.sort();
                models.dedup();
                (u8::try_from(*count).unwrap_or(u8::MAX), WHOLE_GPU_MILLI, models)
            }
            GpuDemand::Share { compute, .. } => {
                (1, u16::try_from(compute.0.min(u32::from(WHOLE_GPU_MILLI))).unwrap_or(WHOLE_GPU_MILLI), Vec::new())
            }
            GpuDemand::Mig { profile } => {
                let slices: u16 = profile.split_once('g').and_then(|(slices, _)| slices.parse().ok())?;
                if slices == 0 || slices > MIG_SLICES {
                    return None;
                }
                (1, (slices * WHOLE_GPU_MILLI).div_ceil(MIG_SLICES), Vec::new())
            }
        };
        Some(RequestShape {
            cpu_milli: request.cpus.saturating_mul(1000),
            memory_mib: request.memory.0,
            gpu_count,
            gpu_milli,
            models,
        })
    }
}

/// Compute slices of a whole GPU in MIG (A100, H100, H200).
const MIG_SLICES: u16 = 7;

/// The most request shapes a [`RequestMix`] keeps; past it, the rarest goes.
pub const MIX_SHAPES: usize = 2048;

/// The broker's learned task mix: how many requests of each shape have arrived.
/// The broker feeds it every request that becomes an allocation (placed or
/// queued), once, like the simulator's [`ShapeLearner`]; it never looks at what
/// has not arrived. Requests refused outright (impossible, over a limit, or not
/// willing to wait) are not counted. MIG requests count as the fraction of a GPU
/// their slices are. Serializable: the broker stores it, so it survives restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RequestMix {
    #[serde(with = "shape_counts")]
    counts: BTreeMap<RequestShape, u64>,
    seen: u64,
}

/// The counts as a list of pairs (JSON keys must be strings).
mod shape_counts {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::RequestShape;

    pub fn serialize<S: Serializer>(counts: &BTreeMap<RequestShape, u64>, serializer: S) -> Result<S::Ok, S::Error> {
        counts.iter().collect::<Vec<_>>().serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<BTreeMap<RequestShape, u64>, D::Error> {
        Ok(Vec::<(RequestShape, u64)>::deserialize(deserializer)?.into_iter().collect())
    }
}

impl RequestMix {
    /// Records one arrived request.
    pub fn observe(&mut self, request: &ValidatedRequest) {
        if let Some(shape) = RequestShape::of(request) {
            *self.counts.entry(shape).or_default() += 1;
            self.seen += 1;
            if self.counts.len() > MIX_SHAPES
                && let Some(rarest) =
                    self.counts.iter().min_by_key(|(_, count)| **count).map(|(shape, _)| shape.clone())
            {
                self.counts.remove(&rarest);
            }
        }
    }

    /// Requests counted so far.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// The mix as packing sees it, with model names turned into ids by
    /// `model_id` (which says which ids a model name matches: a request for
    /// "H100" accepts every GPU model containing it), plus `extra` counted once
    /// more (the request being placed, so that the first request has a mix).
    pub fn shape_mix(&self, model_ids: &dyn Fn(&str) -> ModelSet, extra: Option<&ValidatedRequest>) -> ShapeMix {
        let extra = extra.and_then(RequestShape::of);
        let entries = self
            .counts
            .iter()
            .map(|(shape, count)| (shape, *count as f64))
            .chain(extra.iter().map(|shape| (shape, 1.0)));
        ShapeMix::from_weights(entries.map(|(shape, weight)| {
            let models = if shape.models.is_empty() {
                ModelSet::ANY
            } else {
                let set = shape.models.iter().fold(ModelSet::ANY, |set, model| ModelSet(set.0 | model_ids(model).0));
                // No GPU of the cluster matches: a model id no node has.
                if set.is_any() { ModelSet::ANY.with(63) } else { set }
            };
            let task = TaskShape {
                cpu_milli: shape.cpu_milli,
                memory_mib: shape.memory_mib,
                gpu_count: shape.gpu_count,
                gpu_milli: shape.gpu_milli,
                models,
            };
            (task, weight)
        }))
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

    fn request(gpus: GpuDemand, cpus: u32) -> ValidatedRequest {
        use allot_api::allocation::Interconnect;
        use allot_api::units::MiB;
        ValidatedRequest::new("ml".parse().expect("team"), gpus, cpus, MiB(2048), Interconnect::Any, false, None, None)
            .expect("a valid request")
    }

    #[test]
    fn request_mix_counts_arrivals_by_shape_and_maps_model_names_to_ids() {
        use allot_api::allocation::MilliGpu;
        use allot_api::units::MiB;
        let mut mix = RequestMix::default();
        let h100 = request(GpuDemand::Whole { count: 2, models: vec!["H100".into()] }, 8);
        let share = request(GpuDemand::Share { compute: MilliGpu(250), memory: MiB(4096) }, 2);
        mix.observe(&h100);
        mix.observe(&share);
        mix.observe(&share);
        assert_eq!(mix.seen(), 3);
        // Model id 4 is the cluster's "nvidia h100 80gb hbm3".
        let ids =
            |name: &str| if "nvidia h100 80gb hbm3".contains(name) { ModelSet::ANY.with(4) } else { ModelSet::ANY };
        let shapes = mix.shape_mix(&ids, Some(&share));
        let weight = |milli: u16| shapes.entries().iter().find(|(shape, _)| shape.gpu_milli == milli).cloned();
        let (whole, whole_weight) = weight(1000).expect("the H100 shape");
        assert_eq!((whole.gpu_count, whole.cpu_milli, whole.models), (2, 8000, ModelSet::ANY.with(4)));
        assert_eq!(whole_weight, 0.25);
        assert_eq!(weight(250).map(|(_, weight)| weight), Some(0.75), "two arrived plus the one being placed");
        // A model no node has gets an id no node has, not "any model".
        let none = mix.shape_mix(&|_: &str| ModelSet::ANY, None);
        assert_eq!(
            none.entries().iter().find(|(shape, _)| shape.gpu_count == 2).map(|(s, _)| s.models),
            Some(ModelSet::ANY.with(63))
        );
    }

    #[test]
    fn mig_counts_as_its_fraction_and_the_mix_survives_a_round_trip() {
        let mut mix = RequestMix::default();
        mix.observe(&request(GpuDemand::Mig { profile: "3g.40gb".into() }, 1));
        mix.observe(&request(GpuDemand::Mig { profile: "1g.10gb+me".into() }, 1));
        assert_eq!(mix.seen(), 2);
        let shapes = mix.shape_mix(&|_: &str| ModelSet::ANY, None);
        let mut millis: Vec<u16> = shapes.entries().iter().map(|(shape, _)| shape.gpu_milli).collect();
        millis.sort_unstable();
        assert_eq!(millis, vec![143, 429], "1 and 3 of 7 slices, rounded up");
        let text = serde_json::to_string(&mix).expect("encodes");
        let back: RequestMix = serde_json::from_str(&text).expect("decodes");
        assert_eq!(back, mix);
    }

    #[test]
    fn the_mix_keeps_at_most_its_bound_of_shapes() {
        let mut mix = RequestMix::default();
        for cpus in 1..=(MIX_SHAPES as u32 + 10) {
            mix.observe(&request(GpuDemand::None, cpus));
        }
        assert_eq!(mix.counts.len(), MIX_SHAPES);
        assert_eq!(mix.seen(), MIX_SHAPES as u64 + 10);
    }
}
