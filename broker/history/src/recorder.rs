//! The recorder: keeps the usage history as it happens, from the changes the
//! broker's writer applies, and downsamples it with age.
//!
//! Allocated, borrowed and queued GPU time are integrated exactly: the recorder
//! keeps the current level per team and GPU model, and every change first
//! credits the level since the last change, split at bucket boundaries. Events
//! (arrivals, grants with their wait, reclaims, preemptions) count in the bucket
//! of their time. Telemetry and the capacity split are samples, weighted by the
//! time since the previous sample (at most [`MAX_SAMPLE_GAP_MS`]).
//!
//! Tiers: five-minute buckets for [`FINE_FOR_MS`], hourly ones up to
//! [`HOURLY_FOR_MS`], daily ones up to [`KEEP_FOR_MS`], then nothing; at most
//! [`MAX_BUCKETS`] in all. The recorder does no IO: it returns the buckets to
//! store and the ones to delete, and the broker writes them through its writer.

use std::collections::{BTreeMap, BTreeSet};

use crate::Export;
use crate::bucket::{Bucket, GpuFigures, GpuMs, HOT_C, MAX_NOTABLE_GPUS};
use crate::capacity::{NodeSample, classify};

pub const MINUTE_MS: u64 = 60_000;
pub const FIVE_MINUTES_MS: u64 = 5 * MINUTE_MS;
pub const HOUR_MS: u64 = 60 * MINUTE_MS;
pub const DAY_MS: u64 = 24 * HOUR_MS;

/// Five-minute buckets are kept this long (from the end of their hour).
pub const FINE_FOR_MS: u64 = 2 * DAY_MS;
/// Hourly buckets are kept this long (from the end of their day).
pub const HOURLY_FOR_MS: u64 = 30 * DAY_MS;
/// Daily buckets are kept this long.
pub const KEEP_FOR_MS: u64 = 400 * DAY_MS;
/// The most buckets kept: the tiers hold at most 576 + 672 + 370, plus slack
/// for the groups not merged yet.
pub const MAX_BUCKETS: usize = 2_000;

/// A sample counts for the time since the previous one, but no more than this:
/// a gap (a broker that was down) is not filled with the last telemetry.
pub const MAX_SAMPLE_GAP_MS: u64 = MINUTE_MS;

/// The most keys one [`Recorder::compact`] writes (a day of hourly buckets is
/// 23 deletions and one put), so that a tick stays one small transaction.
pub const WRITES_PER_COMPACTION: usize = 48;

/// A GPU under this utilisation counts as idle while held.
pub const IDLE_UTILIZATION_PCT: u32 = 5;

/// What one allocation adds to the levels now.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Contribution {
    /// Holds capacity: `milli_gpu` of `model` for `team`.
    Holds { team: String, model: String, milli_gpu: u64, borrowed: bool },
    /// Waits in the queue for `milli_gpu`.
    Waits { team: String, milli_gpu: u64 },
    /// Nothing (finished, or asks for no GPU).
    #[default]
    Nothing,
}

/// Something that happened to one team's request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A request arrived, asking for this many milli-GPU.
    Arrived { milli_gpu: u32 },
    /// A request was granted after waiting this long (0 when granted at once).
    Granted { wait_ms: u64 },
    /// An allocation was marked for reclaim.
    Reclaimed,
    /// An allocation was preempted.
    Preempted,
}

/// The store writes a recorder asks for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Changes {
    pub put: Vec<Bucket>,
    pub delete: Vec<u64>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.put.is_empty() && self.delete.is_empty()
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Level {
    allocated: u64,
    borrowed: u64,
}

/// The usage history in memory and the levels being integrated.
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    buckets: BTreeMap<u64, Bucket>,
    /// Milli-GPU held now, by team and model.
    held: BTreeMap<(String, String), Level>,
    /// Milli-GPU waiting now, by team.
    queued: BTreeMap<String, u64>,
    /// The levels are credited up to here; 0 before the first change.
    integrated_ms: u64,
    /// Buckets changed since they were last handed out to store.
    dirty: BTreeSet<u64>,
    last_sample_ms: Option<u64>,
    /// The typical request and when it was worked out.
    typical: Option<(u64, u32)>,
    /// When [`Recorder::take_due`] last handed buckets out.
    saved_ms: u64,
    /// When this recorder began crediting (in this process).
    started_ms: Option<u64>,
    /// Each team's GPU guarantee and limit as last noted: a team's figures in
    /// a bucket start with them, since merging buckets keeps the later
    /// bucket's quota and a bucket opened between two notes would otherwise
    /// say 0 and unlimited.
    quotas_now: BTreeMap<String, (u64, Option<u64>)>,
}

/// `team`'s figures in `bucket`, made with its quota as last noted.
fn team_in<'b>(
    bucket: &'b mut Bucket,
    quotas: &BTreeMap<String, (u64, Option<u64>)>,
    team: &str,
) -> &'b mut crate::bucket::TeamFigures {
    if !bucket.teams.contains_key(team) {
        let mut figures = crate::bucket::TeamFigures::default();
        if let Some((guarantee, limit)) = quotas.get(team) {
            figures.guarantee_milli_gpu = *guarantee;
            figures.limit_milli_gpu = *limit;
        }
        bucket.teams.insert(team.to_owned(), figures);
    }
    bucket.teams.get_mut(team).expect("inserted above")
}

fn floor(at_ms: u64, length_ms: u64) -> u64 {
    at_ms - at_ms % length_ms
}

/// One GPU's sample as figures weighing `weight` ms.
fn gpu_figures(gpu: &crate::capacity::GpuSample, weight: u64) -> GpuFigures {
    let mut figures = GpuFigures { model: gpu.model.clone(), sampled_ms: weight, ..Default::default() };
    if gpu.held_milli_gpu > 0 {
        figures.allocated_ms = weight;
    }
    if let Some(pct) = gpu.utilization_pct {
        figures.utilization_pct.add(f64::from(pct.min(100)), weight);
    }
    if let Some(mib) = gpu.memory_used_mib {
        figures.memory_used_mib.add(mib as f64, weight);
        figures.memory_used_mib_max = mib;
    }
    if let Some(celsius) = gpu.temperature_c {
        figures.temperature_c.add(f64::from(celsius), weight);
        figures.temperature_c_max = celsius;
        if celsius > HOT_C {
            figures.hot_ms = weight;
        }
    }
    if let Some(milliwatts) = gpu.power_mw {
        figures.power_w.add(f64::from(milliwatts) / 1000.0, weight);
    }
    if gpu.throttled {
        figures.throttled_ms = weight;
    }
    figures
}

/// The bucket covering `at_ms`, made (five minutes long) if there is none.
fn bucket_at(buckets: &mut BTreeMap<u64, Bucket>, at_ms: u64) -> &mut Bucket {
    let covering =
        buckets.range(..=at_ms).next_back().filter(|(_, bucket)| bucket.covers(at_ms)).map(|(start, _)| *start);
    let start = covering.unwrap_or_else(|| floor(at_ms, FIVE_MINUTES_MS));
    buckets.entry(start).or_insert_with(|| Bucket::new(start, FIVE_MINUTES_MS))
}

impl Recorder {
    /// A recorder over stored buckets (any order; later duplicates of a start win).
    pub fn load(buckets: impl IntoIterator<Item = Bucket>) -> Recorder {
        let mut recorder = Recorder::default();
        for bucket in buckets {
            if bucket.length_ms == 0 {
                continue;
            }
            recorder.integrated_ms = recorder.integrated_ms.max(bucket.until_ms);
            recorder.buckets.insert(bucket.start_ms, bucket);
        }
        // Until the next note, each team's quota is what the newest bucket says.
        for bucket in recorder.buckets.values() {
            for (team, figures) in &bucket.teams {
                recorder.quotas_now.insert(team.clone(), (figures.guarantee_milli_gpu, figures.limit_milli_gpu));
            }
        }
        recorder
    }

    /// Sets the levels from the allocations as they stand (after loading) and
    /// credits them from where the stored history ends until `now_ms`: while no
    /// broker ran nothing could change, so what holds now held then. (What
    /// changed after the last save and before a crash is credited at the new level.)
    pub fn resume<'c>(&mut self, contributions: impl IntoIterator<Item = &'c Contribution>, now_ms: u64) {
        self.held.clear();
        self.queued.clear();
        for contribution in contributions {
            self.apply(contribution, true);
        }
        if self.integrated_ms == 0 {
            self.integrated_ms = now_ms;
        }
        self.advance(now_ms);
    }

    pub fn buckets(&self) -> impl Iterator<Item = &Bucket> {
        self.buckets.values()
    }

    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Credits the current levels up to `now_ms`.
    pub fn advance(&mut self, now_ms: u64) {
        if self.started_ms.is_none() {
            self.started_ms = Some(now_ms);
        }
        if self.integrated_ms == 0 {
            self.integrated_ms = now_ms;
            return;
        }
        let mut at = self.integrated_ms;
        while at < now_ms {
            let bucket = bucket_at(&mut self.buckets, at);
            let end = bucket.end_ms().min(now_ms);
            let ms = end - at;
            for ((team, model), level) in &self.held {
                let usage = team_in(bucket, &self.quotas_now, team).models.entry(model.clone()).or_default();
                usage.allocated.add(GpuMs::of(level.allocated, ms));
                usage.borrowed.add(GpuMs::of(level.borrowed, ms));
            }
            for (team, milli_gpu) in &self.queued {
                team_in(bucket, &self.quotas_now, team).queued.add(GpuMs::of(*milli_gpu, ms));
            }
            bucket.until_ms = bucket.until_ms.max(end);
            bucket.covered_ms = bucket.covered_ms.saturating_add(ms);
            self.dirty.insert(bucket.start_ms);
            at = end;
        }
        self.integrated_ms = self.integrated_ms.max(now_ms);
    }

    fn apply(&mut self, contribution: &Contribution, add: bool) {
        let change = |value: &mut u64, amount: u64| {
            *value = if add { value.saturating_add(amount) } else { value.saturating_sub(amount) };
        };
        match contribution {
            Contribution::Holds { team, model, milli_gpu, borrowed } => {
                let key = (team.clone(), model.clone());
                let level = self.held.entry(key.clone()).or_default();
                change(&mut level.allocated, *milli_gpu);
                if *borrowed {
                    change(&mut level.borrowed, *milli_gpu);
                }
                if *level == Level::default() {
                    self.held.remove(&key);
                }
            }
            Contribution::Waits { team, milli_gpu } => {
                let level = self.queued.entry(team.clone()).or_default();
                change(level, *milli_gpu);
                if *level == 0 {
                    self.queued.remove(team);
                }
            }
            Contribution::Nothing => {}
        }
    }

    /// One allocation changed from `before` to `after` at `now_ms`.
    pub fn change(&mut self, now_ms: u64, before: &Contribution, after: &Contribution) {
        if before == after {
            return;
        }
        self.advance(now_ms);
        self.apply(before, false);
        self.apply(after, true);
        if let Contribution::Holds { team, .. } = after {
            let holding: u64 =
                self.held.iter().filter(|((owner, _), _)| owner == team).map(|(_, level)| level.allocated).sum();
            let bucket = bucket_at(&mut self.buckets, now_ms);
            let figures = team_in(bucket, &self.quotas_now, team);
            figures.peak_milli_gpu = figures.peak_milli_gpu.max(holding);
            self.dirty.insert(bucket.start_ms);
        }
    }

    /// Counts an event of `team` at `at_ms`.
    pub fn event(&mut self, at_ms: u64, team: &str, event: Event) {
        let bucket = bucket_at(&mut self.buckets, at_ms);
        let start = bucket.start_ms;
        if let Event::Arrived { milli_gpu } = event
            && milli_gpu > 0
        {
            let count = bucket.capacity.request_sizes.entry(milli_gpu).or_default();
            *count = count.saturating_add(1);
        }
        let figures = team_in(bucket, &self.quotas_now, team);
        match event {
            Event::Arrived { .. } => figures.requests = figures.requests.saturating_add(1),
            Event::Granted { wait_ms } => figures.waits.record(wait_ms),
            Event::Reclaimed => figures.reclaims = figures.reclaims.saturating_add(1),
            Event::Preempted => figures.preemptions = figures.preemptions.saturating_add(1),
        }
        self.dirty.insert(start);
    }

    /// Notes each team's GPU guarantee and limit (milli-GPU; `None` unlimited) at `now_ms`.
    pub fn quotas<'t>(&mut self, now_ms: u64, quotas: impl IntoIterator<Item = (&'t str, u64, Option<u64>)>) {
        let bucket = bucket_at(&mut self.buckets, now_ms);
        let mut changed = false;
        for (team, guarantee, limit) in quotas {
            self.quotas_now.insert(team.to_owned(), (guarantee, limit));
            let figures = bucket.teams.entry(team.to_owned()).or_default();
            if figures.guarantee_milli_gpu != guarantee || figures.limit_milli_gpu != limit {
                figures.guarantee_milli_gpu = guarantee;
                figures.limit_milli_gpu = limit;
                changed = true;
            }
        }
        if changed {
            self.dirty.insert(bucket.start_ms);
        }
    }

    /// The typical request in milli-GPU: the size most requests of the last day
    /// asked for (the larger on a tie); one GPU when none arrived.
    pub fn typical_request(&self, now_ms: u64) -> u32 {
        let mut sizes: BTreeMap<u32, u64> = BTreeMap::new();
        for bucket in self.buckets.range(now_ms.saturating_sub(DAY_MS)..).map(|(_, bucket)| bucket) {
            for (size, count) in &bucket.capacity.request_sizes {
                *sizes.entry(*size).or_default() += u64::from(*count);
            }
        }
        sizes.into_iter().max_by_key(|(size, count)| (*count, *size)).map_or(1000, |(size, _)| size)
    }

    /// Records telemetry and the capacity split of the ready nodes at `now_ms`,
    /// weighted by the time since the previous sample (the first weighs nothing).
    pub fn sample(&mut self, now_ms: u64, nodes: &[NodeSample]) {
        // The first sample counts from when recording began (GPU time is credited from then).
        let weight = match self.last_sample_ms {
            Some(last) if now_ms > last => (now_ms - last).min(MAX_SAMPLE_GAP_MS),
            Some(_) => return,
            None => self.started_ms.map_or(0, |started| now_ms.saturating_sub(started).min(MAX_SAMPLE_GAP_MS)),
        };
        self.last_sample_ms = Some(now_ms);
        if weight == 0 {
            return;
        }
        let typical = match self.typical {
            Some((at, typical)) if now_ms.saturating_sub(at) < MINUTE_MS => typical,
            _ => {
                let typical = self.typical_request(now_ms);
                self.typical = Some((now_ms, typical));
                typical
            }
        };
        let split = classify(nodes, typical);
        let bucket = bucket_at(&mut self.buckets, now_ms.saturating_sub(1));
        let capacity = &mut bucket.capacity;
        capacity.sampled_ms = capacity.sampled_ms.saturating_add(weight);
        capacity.total.add(GpuMs::of(split.total, weight));
        capacity.allocated.add(GpuMs::of(split.allocated, weight));
        capacity.free_usable.add(GpuMs::of(split.free_usable, weight));
        capacity.fragmented.add(GpuMs::of(split.fragmented, weight));
        capacity.stranded.add(GpuMs::of(split.stranded, weight));
        capacity.typical_milli_gpu = typical;
        for gpu in nodes.iter().flat_map(|node| &node.gpus) {
            capacity.total_by_model.entry(gpu.model.clone()).or_default().add(GpuMs::of(1000, weight));
            if gpu.held_milli_gpu > 0 && gpu.utilization_pct.is_some_and(|pct| pct < IDLE_UTILIZATION_PCT) {
                capacity.allocated_idle.add(GpuMs::of(u64::from(gpu.held_milli_gpu.min(1000)), weight));
            }
            let one = gpu_figures(gpu, weight);
            bucket
                .models
                .entry(gpu.model.clone())
                .or_default()
                .merge(&GpuFigures { model: String::new(), ..one.clone() });
            let notable = one.throttled_ms > 0 || one.hot_ms > 0;
            if let Some(figures) = bucket.gpus.get_mut(&gpu.key) {
                figures.merge(&one);
            } else if notable && bucket.gpus.len() < MAX_NOTABLE_GPUS {
                bucket.gpus.insert(gpu.key.clone(), one);
            }
        }
        self.dirty.insert(bucket.start_ms);
    }

    /// Downsamples what aged out of its tier and drops what is older than
    /// [`KEEP_FOR_MS`] (or beyond [`MAX_BUCKETS`]), writing at most
    /// [`WRITES_PER_COMPACTION`] keys per call. The changes are already made
    /// in memory; the caller writes them in the same batch.
    pub fn compact(&mut self, now_ms: u64) -> Changes {
        let mut changes = Changes::default();
        let mut stopped_early = false;
        for (group_ms, older_than_ms) in [(DAY_MS, HOURLY_FOR_MS), (HOUR_MS, FINE_FOR_MS)] {
            let Some(cutoff) = now_ms.checked_sub(older_than_ms) else { continue };
            let mut groups: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
            for bucket in self.buckets.values() {
                let group = floor(bucket.start_ms, group_ms);
                if bucket.length_ms < group_ms && group + group_ms <= cutoff {
                    groups.entry(group).or_default().push(bucket.start_ms);
                }
            }
            for (group, starts) in groups {
                let written = changes.put.len() + changes.delete.len();
                if written + starts.len() + 1 > WRITES_PER_COMPACTION {
                    stopped_early = true;
                    break;
                }
                // Any bucket of the group's span: shorter ones, and one of the group's length (none yet).
                let parts: Vec<Bucket> = self
                    .buckets
                    .range(group..group + group_ms)
                    .map(|(_, bucket)| bucket.clone())
                    .filter(|bucket| starts.contains(&bucket.start_ms))
                    .collect();
                let references: Vec<&Bucket> = parts.iter().collect();
                let merged = Bucket::merged(group, group_ms, &references);
                for part in &parts {
                    self.buckets.remove(&part.start_ms);
                    self.dirty.remove(&part.start_ms);
                    if part.start_ms != group {
                        changes.delete.push(part.start_ms);
                    }
                }
                changes.put.push(merged.clone());
                self.buckets.insert(group, merged);
            }
        }
        let expired: Vec<u64> = match now_ms.checked_sub(KEEP_FOR_MS) {
            Some(cutoff) => {
                self.buckets.values().filter(|bucket| bucket.end_ms() <= cutoff).map(|b| b.start_ms).collect()
            }
            None => Vec::new(),
        };
        // Beyond the bound only once merging is done (a long gap makes many
        // five-minute buckets that merging will fold).
        let excess = if stopped_early {
            0
        } else {
            self.buckets.len().saturating_sub(expired.len()).saturating_sub(MAX_BUCKETS)
        };
        let room = WRITES_PER_COMPACTION.saturating_sub(changes.put.len() + changes.delete.len());
        let oldest: Vec<u64> =
            self.buckets.keys().filter(|start| !expired.contains(start)).take(excess).copied().collect();
        for start in expired.into_iter().chain(oldest).take(room) {
            self.buckets.remove(&start);
            self.dirty.remove(&start);
            changes.delete.push(start);
        }
        changes
    }

    /// Buckets changed since they were last handed out, oldest first, at most
    /// `limit` (the rest stay for the next call).
    pub fn take_dirty(&mut self, limit: usize) -> Vec<Bucket> {
        let starts: Vec<u64> = self.dirty.iter().take(limit).copied().collect();
        let mut taken = Vec::with_capacity(starts.len());
        for start in starts {
            self.dirty.remove(&start);
            if let Some(bucket) = self.buckets.get(&start) {
                taken.push(bucket.clone());
            }
        }
        taken
    }

    pub fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Credits the levels up to `now_ms` and, once `every_ms` passed since the
    /// last time, hands out up to `limit` changed buckets to store.
    pub fn take_due(&mut self, now_ms: u64, every_ms: u64, limit: usize) -> Vec<Bucket> {
        if now_ms.saturating_sub(self.saved_ms) < every_ms {
            return Vec::new();
        }
        self.saved_ms = now_ms;
        self.advance(now_ms);
        self.take_dirty(limit)
    }

    /// When the last sample was taken.
    pub fn last_sample_ms(&self) -> Option<u64> {
        self.last_sample_ms
    }

    /// The buckets that end after `since_ms`, with only `teams` (all when `None`)
    /// in their team figures, and the levels credited up to `now_ms` (in the
    /// copy: the recorder itself does not change).
    pub fn export(&self, since_ms: u64, now_ms: u64, teams: Option<&BTreeSet<String>>) -> Export {
        let from = since_ms.min(self.integrated_ms);
        let mut recent = Recorder {
            buckets: self
                .buckets
                .range(floor(from, DAY_MS)..)
                .map(|(start, bucket)| (*start, bucket.clone()))
                .collect(),
            held: self.held.clone(),
            queued: self.queued.clone(),
            integrated_ms: self.integrated_ms,
            ..Recorder::default()
        };
        recent.advance(now_ms);
        let older = self.buckets.range(..floor(from, DAY_MS)).map(|(_, bucket)| bucket);
        let buckets = older
            .chain(recent.buckets.values())
            .filter(|bucket| bucket.end_ms() > since_ms)
            .map(|bucket| {
                let mut bucket = bucket.clone();
                if let Some(teams) = teams {
                    bucket.teams.retain(|team, _| teams.contains(team));
                }
                bucket
            })
            .collect();
        Export { format: crate::FORMAT, as_of_ms: now_ms, since_ms, buckets }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capacity::GpuSample;

    fn holds(team: &str, model: &str, milli_gpu: u64, borrowed: bool) -> Contribution {
        Contribution::Holds { team: team.into(), model: model.into(), milli_gpu, borrowed }
    }

    const T0: u64 = 1_000 * DAY_MS;

    /// Team a holds 2 H100 from minute 1 to minute 7 (crossing a bucket
    /// boundary at minute 5), 1 of them borrowed from minute 3; team b waits
    /// for 1 GPU from minute 2 to minute 4.
    #[test]
    fn levels_integrate_exactly_and_split_at_bucket_boundaries() {
        let mut recorder = Recorder::default();
        recorder.advance(T0);
        let minute = |m: u64| T0 + m * MINUTE_MS;
        let own = holds("a", "H100", 1000, false);
        let lent = holds("a", "H100", 1000, true);
        recorder.change(minute(1), &Contribution::Nothing, &own);
        recorder.change(minute(1), &Contribution::Nothing, &holds("a", "H100", 1000, false));
        recorder.change(minute(2), &Contribution::Nothing, &Contribution::Waits { team: "b".into(), milli_gpu: 1000 });
        // The second becomes borrowed (quota standing changes are changes too).
        recorder.change(minute(3), &holds("a", "H100", 1000, false), &lent);
        recorder.change(minute(4), &Contribution::Waits { team: "b".into(), milli_gpu: 1000 }, &Contribution::Nothing);
        recorder.change(minute(7), &own, &Contribution::Nothing);
        recorder.change(minute(7), &lent, &Contribution::Nothing);
        recorder.advance(minute(12));
        let buckets: Vec<&Bucket> = recorder.buckets().collect();
        assert_eq!(buckets.len(), 3);
        let gpu_minutes = |time: GpuMs| time.0 / 1000 / MINUTE_MS;
        let first = &buckets[0].teams["a"].models["H100"];
        let second = &buckets[1].teams["a"].models["H100"];
        // Minutes 1-5 at 2 GPUs, 2 of those borrowed-at-1 (minutes 3-5); minutes 5-7 at 2, borrowed 1.
        assert_eq!((gpu_minutes(first.allocated), gpu_minutes(first.borrowed)), (8, 2));
        assert_eq!((gpu_minutes(second.allocated), gpu_minutes(second.borrowed)), (4, 2));
        assert_eq!(gpu_minutes(buckets[0].teams["b"].queued), 2);
        assert_eq!(buckets[0].teams["a"].peak_milli_gpu, 2000);
        assert_eq!(buckets[2].until_ms, minute(12));
        assert!(buckets[2].teams.values().all(|team| team.allocated().is_zero()));
    }

    /// A bucket that opens between two quota notes (levels credited across a
    /// bucket boundary, an event) carries the quota last noted, so a report
    /// over both buckets, which keeps the later quota, still has it. Before,
    /// it said 0 and unlimited for the seconds until the next note.
    #[test]
    fn a_bucket_opened_between_quota_notes_keeps_the_last_quota() {
        let mut recorder = Recorder::default();
        let minute = |m: u64| T0 + m * MINUTE_MS;
        recorder.advance(minute(0));
        recorder.quotas(minute(4), [("a", 8000, Some(16_000)), ("c", 0, None)]);
        recorder.change(minute(4), &Contribution::Nothing, &holds("a", "H100", 1000, false));
        recorder.advance(minute(5) + 1000);
        recorder.event(minute(5) + 2000, "c", Event::Arrived { milli_gpu: 1000 });
        let newest = recorder.buckets().last().expect("a second bucket");
        assert_eq!(newest.start_ms, minute(5), "crediting crossed into a new bucket");
        assert_eq!((newest.teams["a"].guarantee_milli_gpu, newest.teams["a"].limit_milli_gpu), (8000, Some(16_000)));
        assert_eq!((newest.teams["c"].guarantee_milli_gpu, newest.teams["c"].limit_milli_gpu), (0, None));
        // A recorder loaded from these buckets starts from the same quotas.
        let mut loaded = Recorder::load(recorder.buckets().cloned().collect::<Vec<_>>());
        loaded.event(minute(11), "a", Event::Arrived { milli_gpu: 1000 });
        let newest = loaded.buckets().last().expect("a third bucket");
        assert_eq!(newest.start_ms, minute(10));
        assert_eq!(newest.teams["a"].guarantee_milli_gpu, 8000);
    }

    #[test]
    fn events_count_in_the_bucket_of_their_time_and_the_typical_request_is_the_most_asked() {
        let mut recorder = Recorder::default();
        recorder.event(T0, "a", Event::Arrived { milli_gpu: 2000 });
        recorder.event(T0, "a", Event::Arrived { milli_gpu: 2000 });
        recorder.event(T0 + 6 * MINUTE_MS, "b", Event::Arrived { milli_gpu: 1000 });
        recorder.event(T0 + 6 * MINUTE_MS, "b", Event::Granted { wait_ms: 30_000 });
        recorder.event(T0 + 6 * MINUTE_MS, "a", Event::Reclaimed);
        recorder.event(T0 + 7 * MINUTE_MS, "a", Event::Preempted);
        let buckets: Vec<&Bucket> = recorder.buckets().collect();
        assert_eq!(buckets[0].teams["a"].requests, 2);
        assert_eq!(buckets[1].teams["b"].waits.count, 1);
        assert_eq!((buckets[1].teams["a"].reclaims, buckets[1].teams["a"].preemptions), (1, 1));
        assert_eq!(recorder.typical_request(T0 + 10 * MINUTE_MS), 2000);
        assert_eq!(recorder.typical_request(T0 + 2 * DAY_MS), 1000, "a day later none arrived: one GPU");
    }

    #[test]
    fn samples_weigh_the_time_since_the_previous_one() {
        let mut recorder = Recorder::default();
        let node = NodeSample {
            gpus: vec![
                GpuSample {
                    key: "n/0".into(),
                    model: "H100".into(),
                    held_milli_gpu: 1000,
                    utilization_pct: Some(2),
                    memory_used_mib: Some(100),
                    temperature_c: Some(85),
                    power_mw: Some(700_000),
                    throttled: true,
                },
                GpuSample { key: "n/1".into(), model: "H100".into(), temperature_c: Some(40), ..Default::default() },
            ],
            free_cores: 8,
            free_memory_mib: 1000,
        };
        recorder.sample(T0, std::slice::from_ref(&node));
        recorder.sample(T0 + 10_000, std::slice::from_ref(&node));
        // A ten-minute gap counts for one minute only.
        recorder.sample(T0 + 10_000 + 10 * MINUTE_MS, std::slice::from_ref(&node));
        let total_ms: u64 = recorder.buckets().map(|bucket| bucket.gpus["n/0"].sampled_ms).sum();
        assert_eq!(total_ms, 10_000 + MINUTE_MS);
        let first = recorder.buckets().next().expect("bucket");
        let hot = &first.gpus["n/0"];
        assert_eq!((hot.hot_ms, hot.throttled_ms, hot.temperature_c_max), (10_000, 10_000, 85));
        assert_eq!(hot.power_w.value(), Some(700.0));
        assert!(!first.gpus.contains_key("n/1"), "a cool GPU is in the model's sums only");
        let model = &first.models["H100"];
        assert_eq!((model.sampled_ms, model.hot_ms, model.temperature_c_max), (20_000, 10_000, 85));
        assert_eq!(model.temperature_c.value(), Some(62.5));
        assert_eq!(first.capacity.allocated_idle, GpuMs::of(1000, 10_000), "held at 2 %: idle");
        assert_eq!(first.capacity.free_usable, GpuMs::of(1000, 10_000));
        assert_eq!(first.capacity.total_by_model["H100"], GpuMs::of(2000, 10_000));
    }

    /// Three days of one GPU held: after compaction the oldest day is hourly,
    /// nothing is lost, and the store changes are what memory did.
    #[test]
    fn compaction_downsamples_with_age_and_keeps_every_gpu_hour() {
        let mut recorder = Recorder::default();
        recorder.advance(T0);
        recorder.change(T0, &Contribution::Nothing, &holds("a", "H100", 1000, false));
        let now = T0 + 3 * DAY_MS;
        recorder.advance(now);
        assert_eq!(recorder.len(), 3 * 288);
        let total = |recorder: &Recorder| -> u64 {
            recorder.buckets().map(|bucket| bucket.teams.get("a").map_or(0, |team| team.allocated().0)).sum()
        };
        assert_eq!(total(&recorder), 1000 * 3 * DAY_MS);
        let mut stored: BTreeMap<u64, Bucket> =
            recorder.take_dirty(usize::MAX).into_iter().map(|b| (b.start_ms, b)).collect();
        loop {
            let changes = recorder.compact(now);
            if changes.is_empty() {
                break;
            }
            assert!(changes.put.len() + changes.delete.len() <= WRITES_PER_COMPACTION);
            for start in changes.delete {
                stored.remove(&start);
            }
            for bucket in changes.put {
                stored.insert(bucket.start_ms, bucket);
            }
        }
        // Hours that ended two days or more before now: the first 24.
        assert_eq!(recorder.len(), 24 + 2 * 288);
        assert_eq!(total(&recorder), 1000 * 3 * DAY_MS);
        let memory: BTreeMap<u64, Bucket> =
            recorder.buckets().map(|bucket| (bucket.start_ms, bucket.clone())).collect();
        assert_eq!(stored, memory, "the store holds what memory holds");
        assert_eq!(recorder.buckets().next().map(|bucket| bucket.length_ms), Some(HOUR_MS));
    }

    /// A year and a half of hourly and daily buckets: the total stays bounded.
    #[test]
    fn old_buckets_become_daily_and_then_go() {
        let mut recorder = Recorder::default();
        recorder.advance(T0);
        recorder.change(T0, &Contribution::Nothing, &holds("a", "H100", 1000, false));
        let mut now = T0;
        for _ in 0..(500 / 5) {
            now += 5 * DAY_MS;
            recorder.advance(now);
            while !recorder.compact(now).is_empty() {}
        }
        let lengths: BTreeMap<u64, usize> = recorder.buckets().fold(BTreeMap::new(), |mut counts, bucket| {
            *counts.entry(bucket.length_ms).or_default() += 1;
            counts
        });
        assert!(recorder.len() <= MAX_BUCKETS, "{}", recorder.len());
        assert_eq!(lengths.get(&FIVE_MINUTES_MS), Some(&(2 * 288)), "{lengths:?}");
        assert!(lengths.get(&DAY_MS).is_some_and(|days| (369..=371).contains(days)), "{lengths:?}");
        let oldest = recorder.buckets().next().expect("bucket").start_ms;
        assert!(oldest >= now - KEEP_FOR_MS, "nothing older than the keep time");
    }

    #[test]
    fn resume_credits_the_time_no_broker_ran_at_the_levels_found() {
        let mut recorder = Recorder::default();
        recorder.advance(T0);
        recorder.change(T0, &Contribution::Nothing, &holds("a", "H100", 1000, false));
        recorder.advance(T0 + MINUTE_MS);
        let stored = recorder.take_dirty(usize::MAX);
        let mut restarted = Recorder::load(stored);
        restarted.resume([&holds("a", "H100", 1000, false)], T0 + 3 * MINUTE_MS);
        let total: u64 = restarted.buckets().map(|bucket| bucket.teams["a"].allocated().0).sum();
        assert_eq!(total, 1000 * 3 * MINUTE_MS);
    }

    #[test]
    fn an_export_keeps_the_buckets_since_and_only_the_teams_asked() {
        let mut recorder = Recorder::default();
        recorder.event(T0, "a", Event::Arrived { milli_gpu: 1000 });
        recorder.event(T0 + HOUR_MS, "a", Event::Arrived { milli_gpu: 1000 });
        recorder.event(T0 + HOUR_MS, "b", Event::Arrived { milli_gpu: 1000 });
        let only_b: BTreeSet<String> = ["b".to_owned()].into();
        let export = recorder.export(T0 + 30 * MINUTE_MS, T0 + 2 * HOUR_MS, Some(&only_b));
        assert_eq!(export.buckets.len(), 1);
        assert_eq!(export.buckets[0].teams.keys().collect::<Vec<_>>(), ["b"]);
    }
}

#[cfg(test)]
mod size {
    use super::*;
    use crate::capacity::GpuSample;

    /// Measures one five-minute bucket of a busy cluster: 10 teams on 2 models,
    /// 64 GPUs with every telemetry reading. docs/reports.md quotes the figure.
    #[test]
    fn a_busy_bucket_of_ten_teams_and_sixty_four_gpus_stays_small() {
        let mut recorder = Recorder::default();
        let start = 1_000 * DAY_MS;
        recorder.advance(start);
        for team in 0..10 {
            for model in ["NVIDIA H100 80GB HBM3", "NVIDIA L40S"] {
                let holding = Contribution::Holds {
                    team: format!("team-{team}"),
                    model: model.into(),
                    milli_gpu: 1000,
                    borrowed: true,
                };
                recorder.change(start + 1_000, &Contribution::Nothing, &holding);
            }
            recorder.change(
                start + 1_000,
                &Contribution::Nothing,
                &Contribution::Waits { team: format!("team-{team}"), milli_gpu: 1000 },
            );
            recorder.event(start + 2_000, &format!("team-{team}"), Event::Granted { wait_ms: 12_345 });
            recorder.event(start + 2_000, &format!("team-{team}"), Event::Arrived { milli_gpu: 1000 });
            recorder.quotas(start + 2_000, [(format!("team-{team}").as_str(), 8_000, Some(16_000))]);
        }
        let nodes: Vec<NodeSample> = (0..8)
            .map(|node| NodeSample {
                gpus: (0..8)
                    .map(|index| GpuSample {
                        key: format!("gpu-node-{node:03}/{index}"),
                        model: "NVIDIA H100 80GB HBM3".into(),
                        held_milli_gpu: 1000,
                        utilization_pct: Some(87),
                        memory_used_mib: Some(61_234),
                        temperature_c: Some(83),
                        power_mw: Some(612_345),
                        throttled: true,
                    })
                    .collect(),
                free_cores: 10,
                free_memory_mib: 1000,
            })
            .collect();
        let cool: Vec<NodeSample> = nodes
            .iter()
            .map(|node| NodeSample {
                gpus: node
                    .gpus
                    .iter()
                    .map(|gpu| GpuSample { temperature_c: Some(60), throttled: false, ..gpu.clone() })
                    .collect(),
                ..node.clone()
            })
            .collect();
        let mut hot = recorder.clone();
        recorder.sample(start + 3_000, &cool);
        recorder.sample(start + 4_000, &cool);
        hot.sample(start + 3_000, &nodes);
        hot.sample(start + 4_000, &nodes);
        let bytes = |recorder: &Recorder| {
            let bucket = recorder.buckets().next().expect("bucket");
            serde_json::to_vec(bucket).expect("json").len()
        };
        let (cool_bytes, hot_bytes) = (bytes(&recorder), bytes(&hot));
        eprintln!(
            "one busy five-minute bucket: {cool_bytes} bytes; with all 64 GPUs hot and throttling {hot_bytes} bytes"
        );
        assert!(cool_bytes < 8_000, "{cool_bytes} bytes");
        // Each notable GPU adds at most this much; a bucket keeps at most 256 of them.
        let per_gpu = (hot_bytes - cool_bytes) / 64;
        assert!(per_gpu < 400, "{per_gpu} bytes per notable GPU");
    }
}
