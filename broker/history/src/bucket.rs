//! One bucket of usage history: what happened in a span of time (five minutes,
//! an hour or a day), per team and GPU model, per GPU, and for the cluster's
//! capacity; and how two buckets merge into a longer one.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// GPU time in milli-GPU milliseconds: one GPU held for one hour is
/// 1000 × 3,600,000. A share of 250 milli-GPU counts a quarter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct GpuMs(pub u64);

impl GpuMs {
    /// `milli_gpu` held for `ms`.
    pub fn of(milli_gpu: u64, ms: u64) -> GpuMs {
        GpuMs(milli_gpu.saturating_mul(ms))
    }

    pub fn hours(self) -> f64 {
        self.0 as f64 / 1000.0 / 3_600_000.0
    }

    /// The mean number of GPUs over `ms`.
    pub fn mean_gpus(self, ms: u64) -> f64 {
        if ms == 0 { 0.0 } else { self.0 as f64 / 1000.0 / ms as f64 }
    }

    pub fn add(&mut self, other: GpuMs) {
        self.0 = self.0.saturating_add(other.0);
    }

    pub fn is_zero(&self) -> bool {
        self.0 == 0
    }
}

fn is_zero_u32(value: &u32) -> bool {
    *value == 0
}

fn is_zero_u64(value: &u64) -> bool {
    *value == 0
}

/// A time-weighted mean: the sum of value × milliseconds and the milliseconds
/// that had a value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Mean {
    pub sum: f64,
    pub ms: u64,
}

impl Mean {
    pub fn add(&mut self, value: f64, ms: u64) {
        self.sum += value * ms as f64;
        self.ms = self.ms.saturating_add(ms);
    }

    pub fn merge(&mut self, other: &Mean) {
        self.sum += other.sum;
        self.ms = self.ms.saturating_add(other.ms);
    }

    pub fn value(&self) -> Option<f64> {
        (self.ms > 0).then(|| self.sum / self.ms as f64)
    }

    pub fn is_empty(&self) -> bool {
        self.ms == 0
    }
}

/// Upper bounds of the wait histogram's bins, in seconds; the last bin is
/// everything longer than a week.
pub const WAIT_BOUNDS_S: [u64; 17] =
    [1, 5, 15, 30, 60, 120, 300, 600, 900, 1_800, 3_600, 7_200, 14_400, 28_800, 86_400, 259_200, 604_800];

/// Queue waits: a fixed histogram (so any two merge exactly), with the count,
/// sum and longest wait kept exactly.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waits {
    /// Counts per bin of [`WAIT_BOUNDS_S`], plus one for longer waits; trailing
    /// empty bins are left out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bins: Vec<u32>,
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub count: u32,
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub sum_ms: u64,
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub max_ms: u64,
}

impl Waits {
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The bin a wait falls in: the first whose bound it does not exceed.
    fn bin_of(wait_ms: u64) -> usize {
        WAIT_BOUNDS_S.iter().position(|bound| wait_ms <= bound * 1000).unwrap_or(WAIT_BOUNDS_S.len())
    }

    pub fn record(&mut self, wait_ms: u64) {
        let bin = Self::bin_of(wait_ms);
        if self.bins.len() <= bin {
            self.bins.resize(bin + 1, 0);
        }
        self.bins[bin] = self.bins[bin].saturating_add(1);
        self.count = self.count.saturating_add(1);
        self.sum_ms = self.sum_ms.saturating_add(wait_ms);
        self.max_ms = self.max_ms.max(wait_ms);
    }

    pub fn merge(&mut self, other: &Waits) {
        if self.bins.len() < other.bins.len() {
            self.bins.resize(other.bins.len(), 0);
        }
        for (mine, theirs) in self.bins.iter_mut().zip(&other.bins) {
            *mine = mine.saturating_add(*theirs);
        }
        self.count = self.count.saturating_add(other.count);
        self.sum_ms = self.sum_ms.saturating_add(other.sum_ms);
        self.max_ms = self.max_ms.max(other.max_ms);
    }

    /// The wait that `percentile` % of the requests did not exceed, in ms: the
    /// upper bound of the bin that holds that rank (never more than the longest
    /// wait seen, so a percentile is at most one bin too high). `None` without waits.
    pub fn percentile_ms(&self, percentile: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((percentile.clamp(0.0, 100.0) / 100.0) * f64::from(self.count)).ceil().max(1.0) as u64;
        let mut seen = 0u64;
        for (bin, count) in self.bins.iter().enumerate() {
            seen += u64::from(*count);
            if seen >= rank {
                let bound = WAIT_BOUNDS_S.get(bin).map_or(u64::MAX, |bound| bound * 1000);
                return Some(bound.min(self.max_ms));
            }
        }
        Some(self.max_ms)
    }

    pub fn mean_ms(&self) -> Option<u64> {
        (self.count > 0).then(|| self.sum_ms / u64::from(self.count))
    }
}

/// GPU time of one team on one GPU model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelUse {
    /// Held, whether within the guarantee or borrowed.
    #[serde(default, skip_serializing_if = "GpuMs::is_zero")]
    pub allocated: GpuMs,
    /// Held beyond the team's guarantee, from another team's idle guarantee.
    #[serde(default, skip_serializing_if = "GpuMs::is_zero")]
    pub borrowed: GpuMs,
}

/// What one team did in a bucket.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TeamFigures {
    /// GPU time by GPU model (the model of the allocation's first GPU).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub models: BTreeMap<String, ModelUse>,
    /// GPU time asked for and still waiting in the queue.
    #[serde(default, skip_serializing_if = "GpuMs::is_zero")]
    pub queued: GpuMs,
    /// The most milli-GPU the team held at once.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub peak_milli_gpu: u64,
    /// The team's GPU guarantee (milli-GPU, `gpu/any` or its families added up)
    /// as last seen in the bucket.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub guarantee_milli_gpu: u64,
    /// The team's GPU limit as last seen; `None` is unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_milli_gpu: Option<u64>,
    /// How long the requests granted in the bucket waited (0 for those granted at once).
    #[serde(default, skip_serializing_if = "Waits::is_empty")]
    pub waits: Waits,
    /// Requests that arrived.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub requests: u32,
    /// Allocations marked for reclaim (their team was over its guarantee).
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub reclaims: u32,
    /// Allocations preempted when their reclaim grace ended.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub preemptions: u32,
}

impl TeamFigures {
    pub fn allocated(&self) -> GpuMs {
        GpuMs(self.models.values().map(|usage| usage.allocated.0).fold(0, u64::saturating_add))
    }

    pub fn borrowed(&self) -> GpuMs {
        GpuMs(self.models.values().map(|usage| usage.borrowed.0).fold(0, u64::saturating_add))
    }

    /// Merges a later bucket's figures into this one: sums, maxima, and the
    /// later quota.
    pub fn merge(&mut self, later: &TeamFigures) {
        for (model, usage) in &later.models {
            let mine = self.models.entry(model.clone()).or_default();
            mine.allocated.add(usage.allocated);
            mine.borrowed.add(usage.borrowed);
        }
        self.queued.add(later.queued);
        self.peak_milli_gpu = self.peak_milli_gpu.max(later.peak_milli_gpu);
        self.guarantee_milli_gpu = later.guarantee_milli_gpu;
        self.limit_milli_gpu = later.limit_milli_gpu;
        self.waits.merge(&later.waits);
        self.requests = self.requests.saturating_add(later.requests);
        self.reclaims = self.reclaims.saturating_add(later.reclaims);
        self.preemptions = self.preemptions.saturating_add(later.preemptions);
    }
}

/// One GPU's telemetry in a bucket, from the node daemon's heartbeats.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GpuFigures {
    /// The GPU's model (empty in the per-model sums).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub model: String,
    /// Time covered by telemetry samples.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub sampled_ms: u64,
    /// Time some allocation held (part of) the GPU, within the sampled time.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub allocated_ms: u64,
    /// Utilisation in percent (time-weighted).
    #[serde(default, skip_serializing_if = "Mean::is_empty")]
    pub utilization_pct: Mean,
    #[serde(default, skip_serializing_if = "Mean::is_empty")]
    pub memory_used_mib: Mean,
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub memory_used_mib_max: u64,
    #[serde(default, skip_serializing_if = "Mean::is_empty")]
    pub temperature_c: Mean,
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub temperature_c_max: u32,
    #[serde(default, skip_serializing_if = "Mean::is_empty")]
    pub power_w: Mean,
    /// Time the GPU held its clocks down for a reason that costs work (power, heat).
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub throttled_ms: u64,
    /// Time above [`HOT_C`].
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub hot_ms: u64,
}

/// The temperature above which a GPU counts as running hot: GPUs start to
/// throttle above about 80 °C.
pub const HOT_C: u32 = 80;

/// The most GPUs a bucket keeps figures of one by one (see [`Bucket::gpus`]).
pub const MAX_NOTABLE_GPUS: usize = 256;

impl GpuFigures {
    pub fn merge(&mut self, later: &GpuFigures) {
        if !later.model.is_empty() {
            self.model = later.model.clone();
        }
        self.sampled_ms = self.sampled_ms.saturating_add(later.sampled_ms);
        self.allocated_ms = self.allocated_ms.saturating_add(later.allocated_ms);
        self.utilization_pct.merge(&later.utilization_pct);
        self.memory_used_mib.merge(&later.memory_used_mib);
        self.memory_used_mib_max = self.memory_used_mib_max.max(later.memory_used_mib_max);
        self.temperature_c.merge(&later.temperature_c);
        self.temperature_c_max = self.temperature_c_max.max(later.temperature_c_max);
        self.power_w.merge(&later.power_w);
        self.throttled_ms = self.throttled_ms.saturating_add(later.throttled_ms);
        self.hot_ms = self.hot_ms.saturating_add(later.hot_ms);
    }
}

/// The cluster's GPU capacity in a bucket, split by what it could be used for
/// (see `capacity::classify`); all GPU time over the sampled time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CapacityFigures {
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub sampled_ms: u64,
    /// Every GPU of the ready nodes.
    #[serde(default, skip_serializing_if = "GpuMs::is_zero")]
    pub total: GpuMs,
    /// Ready GPUs by model.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub total_by_model: BTreeMap<String, GpuMs>,
    /// Held by allocations.
    #[serde(default, skip_serializing_if = "GpuMs::is_zero")]
    pub allocated: GpuMs,
    /// Held, on GPUs whose utilisation was under 5 %.
    #[serde(default, skip_serializing_if = "GpuMs::is_zero")]
    pub allocated_idle: GpuMs,
    /// Free and usable by the typical request.
    #[serde(default, skip_serializing_if = "GpuMs::is_zero")]
    pub free_usable: GpuMs,
    /// Free but in pieces the typical request cannot use.
    #[serde(default, skip_serializing_if = "GpuMs::is_zero")]
    pub fragmented: GpuMs,
    /// Free on nodes with no core or memory left, so no request can use it.
    #[serde(default, skip_serializing_if = "GpuMs::is_zero")]
    pub stranded: GpuMs,
    /// Requests that arrived, by milli-GPU asked (what "typical" is drawn from).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub request_sizes: BTreeMap<u32, u32>,
    /// The typical request (milli-GPU) the split was made for, as last used.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub typical_milli_gpu: u32,
}

impl CapacityFigures {
    pub fn merge(&mut self, later: &CapacityFigures) {
        self.sampled_ms = self.sampled_ms.saturating_add(later.sampled_ms);
        self.total.add(later.total);
        for (model, time) in &later.total_by_model {
            self.total_by_model.entry(model.clone()).or_default().add(*time);
        }
        self.allocated.add(later.allocated);
        self.allocated_idle.add(later.allocated_idle);
        self.free_usable.add(later.free_usable);
        self.fragmented.add(later.fragmented);
        self.stranded.add(later.stranded);
        for (size, count) in &later.request_sizes {
            let mine = self.request_sizes.entry(*size).or_default();
            *mine = mine.saturating_add(*count);
        }
        if later.typical_milli_gpu > 0 {
            self.typical_milli_gpu = later.typical_milli_gpu;
        }
    }
}

/// What happened from `start_ms` for `length_ms`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    pub start_ms: u64,
    pub length_ms: u64,
    /// How far the figures reach (the current bucket is not over yet).
    pub until_ms: u64,
    /// How much of the bucket the recorder covered (less than `until_ms -
    /// start_ms` when the broker started inside it, or was down for a while);
    /// mean GPUs are over this time.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub covered_ms: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub teams: BTreeMap<String, TeamFigures>,
    /// Telemetry of every GPU, added up by GPU model (times are GPU-milliseconds:
    /// two GPUs sampled for a minute count two minutes).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub models: BTreeMap<String, GpuFigures>,
    /// GPUs that throttled or ran above [`HOT_C`] in the bucket, by `node/index`,
    /// from their first such sample on; at most [`MAX_NOTABLE_GPUS`] (those with
    /// the most throttled and hot time when merged).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub gpus: BTreeMap<String, GpuFigures>,
    #[serde(default)]
    pub capacity: CapacityFigures,
}

impl Bucket {
    pub fn new(start_ms: u64, length_ms: u64) -> Bucket {
        Bucket { start_ms, length_ms, until_ms: start_ms, ..Default::default() }
    }

    pub fn end_ms(&self) -> u64 {
        self.start_ms.saturating_add(self.length_ms)
    }

    /// The time the figures are means over: what the recorder covered, or (for
    /// a bucket without that figure) from its start to how far it reaches.
    pub fn covered(&self) -> u64 {
        if self.covered_ms > 0 { self.covered_ms } else { self.until_ms.saturating_sub(self.start_ms) }
    }

    pub fn covers(&self, at_ms: u64) -> bool {
        self.start_ms <= at_ms && at_ms < self.end_ms()
    }

    /// Merges buckets (in time order) into one from `start_ms` for `length_ms`.
    pub fn merged(start_ms: u64, length_ms: u64, parts: &[&Bucket]) -> Bucket {
        let mut merged = Bucket::new(start_ms, length_ms);
        for part in parts {
            merged.until_ms = merged.until_ms.max(part.until_ms);
            merged.covered_ms = merged.covered_ms.saturating_add(part.covered());
            for (team, figures) in &part.teams {
                merged.teams.entry(team.clone()).or_default().merge(figures);
            }
            for (model, figures) in &part.models {
                merged.models.entry(model.clone()).or_default().merge(figures);
            }
            for (gpu, figures) in &part.gpus {
                merged.gpus.entry(gpu.clone()).or_default().merge(figures);
            }
            merged.capacity.merge(&part.capacity);
        }
        merged.keep_worst_gpus();
        merged
    }

    /// Keeps the [`MAX_NOTABLE_GPUS`] GPUs with the most throttled and hot time.
    pub fn keep_worst_gpus(&mut self) {
        if self.gpus.len() <= MAX_NOTABLE_GPUS {
            return;
        }
        let mut ranked: Vec<(u64, String)> = self
            .gpus
            .iter()
            .map(|(key, figures)| (figures.throttled_ms.saturating_add(figures.hot_ms), key.clone()))
            .collect();
        ranked.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        for (_, key) in ranked.into_iter().skip(MAX_NOTABLE_GPUS) {
            self.gpus.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_percentiles_are_the_bound_of_the_bin_holding_the_rank_capped_at_the_longest() {
        let mut waits = Waits::default();
        // 0 s, 0 s, 3 s, 40 s, 2 h.
        for wait_ms in [0, 0, 3_000, 40_000, 7_200_000] {
            waits.record(wait_ms);
        }
        assert_eq!(waits.count, 5);
        assert_eq!(waits.percentile_ms(0.0), Some(1_000), "rank 1 is in the first bin (up to 1 s)");
        assert_eq!(waits.percentile_ms(40.0), Some(1_000), "rank 2: still 0 s");
        assert_eq!(waits.percentile_ms(50.0), Some(5_000), "rank 3: the 3 s wait, bin up to 5 s");
        assert_eq!(waits.percentile_ms(80.0), Some(60_000), "rank 4: the 40 s wait, bin up to 60 s");
        assert_eq!(waits.percentile_ms(99.0), Some(7_200_000), "rank 5: the 2 h wait, bin bound 2 h");
        assert_eq!(waits.mean_ms(), Some((3_000 + 40_000 + 7_200_000) / 5));
        let mut only_short = Waits::default();
        only_short.record(200);
        assert_eq!(only_short.percentile_ms(95.0), Some(200), "never above the longest wait");
        assert_eq!(Waits::default().percentile_ms(50.0), None);
        let mut forever = Waits::default();
        forever.record(30 * 86_400_000);
        assert_eq!(forever.bins.len(), WAIT_BOUNDS_S.len() + 1);
        assert_eq!(forever.percentile_ms(50.0), Some(30 * 86_400_000));
    }

    #[test]
    fn merging_buckets_adds_time_and_counts_and_keeps_maxima_and_the_later_quota() {
        let mut first = Bucket::new(0, 300_000);
        first.until_ms = 300_000;
        let team = first.teams.entry("a".into()).or_default();
        team.models.insert("H100".into(), ModelUse { allocated: GpuMs(10), borrowed: GpuMs(2) });
        team.peak_milli_gpu = 3000;
        team.guarantee_milli_gpu = 2000;
        team.waits.record(0);
        team.preemptions = 1;
        first.gpus.insert(
            "n/0".into(),
            GpuFigures { model: "H100".into(), temperature_c_max: 85, hot_ms: 5, ..Default::default() },
        );
        let mut second = Bucket::new(300_000, 300_000);
        second.until_ms = 450_000;
        let team = second.teams.entry("a".into()).or_default();
        team.models.insert("H100".into(), ModelUse { allocated: GpuMs(5), borrowed: GpuMs(0) });
        team.models.insert("L4".into(), ModelUse { allocated: GpuMs(7), borrowed: GpuMs(0) });
        team.peak_milli_gpu = 1000;
        team.guarantee_milli_gpu = 4000;
        team.limit_milli_gpu = Some(8000);
        team.waits.record(90_000);
        second.gpus.insert(
            "n/0".into(),
            GpuFigures { model: "H100".into(), temperature_c_max: 70, hot_ms: 1, ..Default::default() },
        );
        let merged = Bucket::merged(0, 3_600_000, &[&first, &second]);
        assert_eq!((merged.start_ms, merged.length_ms, merged.until_ms), (0, 3_600_000, 450_000));
        let team = &merged.teams["a"];
        assert_eq!(team.models["H100"], ModelUse { allocated: GpuMs(15), borrowed: GpuMs(2) });
        assert_eq!(team.allocated(), GpuMs(22));
        assert_eq!(team.peak_milli_gpu, 3000);
        assert_eq!((team.guarantee_milli_gpu, team.limit_milli_gpu), (4000, Some(8000)));
        assert_eq!((team.waits.count, team.waits.max_ms, team.preemptions), (2, 90_000, 1));
        assert_eq!((merged.gpus["n/0"].temperature_c_max, merged.gpus["n/0"].hot_ms), (85, 6));
    }

    #[test]
    fn a_bucket_survives_json_and_leaves_empty_figures_out() {
        let mut bucket = Bucket::new(600_000, 300_000);
        bucket.teams.entry("a".into()).or_default().requests = 1;
        let text = serde_json::to_string(&bucket).expect("json");
        assert_eq!(
            text,
            r#"{"start_ms":600000,"length_ms":300000,"until_ms":600000,"teams":{"a":{"requests":1}},"capacity":{}}"#
        );
        let back: Bucket = serde_json::from_str(&text).expect("parse");
        assert_eq!(back, bucket);
    }

    #[test]
    fn gpu_time_converts_to_hours_and_mean_gpus() {
        let time = GpuMs::of(2_000, 3_600_000);
        assert_eq!(time.hours(), 2.0);
        assert_eq!(time.mean_gpus(1_800_000), 4.0);
        assert_eq!(GpuMs(5).mean_gpus(0), 0.0);
    }
}
