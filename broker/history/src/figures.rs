//! The figures a capacity report shows, computed from a usage history: GPU-hours
//! per team and model, queue wait percentiles, the capacity split (idle,
//! fragmented, stranded), GPUs that throttled or ran hot, and the demand trend
//! with the date the cluster runs out at that trend. See docs/reports.md.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Export;
use crate::bucket::{Bucket, GpuFigures, GpuMs, TeamFigures, Waits};

/// A GPU is listed as a hot spot when it throttled or ran above 80 °C for at
/// least this share of its sampled time (or at all, when this is 0).
pub const FLAG_SHARE_PCT: f64 = 0.0;

/// How far ahead a run-out date is looked for.
pub const HORIZON_DAYS: f64 = 3.0 * 365.0;

fn milli(value: u64) -> f64 {
    value as f64 / 1000.0
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TeamRow {
    pub team: String,
    pub allocated_gpu_h: f64,
    pub borrowed_gpu_h: f64,
    /// GPU-hours asked for that waited in the queue.
    pub queued_gpu_h: f64,
    /// Allocated GPU-hours by GPU model.
    pub by_model: BTreeMap<String, f64>,
    /// Mean GPUs held over the report's span.
    pub mean_gpus: f64,
    pub peak_gpus: f64,
    /// As last seen.
    pub guarantee_gpus: f64,
    /// As last seen; `None` is unlimited.
    pub limit_gpus: Option<f64>,
    pub requests: u64,
    /// Requests granted in the span (the waits counted).
    pub granted: u64,
    pub wait_p50_s: Option<f64>,
    pub wait_p90_s: Option<f64>,
    pub wait_p99_s: Option<f64>,
    pub wait_max_s: Option<f64>,
    pub wait_mean_s: Option<f64>,
    pub reclaims: u64,
    pub preemptions: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRow {
    pub model: String,
    pub allocated_gpu_h: f64,
    /// GPU-hours the ready GPUs of this model offered (sampled).
    pub capacity_gpu_h: f64,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct CapacityRow {
    /// Time covered by capacity samples.
    pub sampled_h: f64,
    pub total_gpu_h: f64,
    pub allocated_gpu_h: f64,
    /// Held, on GPUs under 5 % utilisation.
    pub allocated_idle_gpu_h: f64,
    pub free_usable_gpu_h: f64,
    pub fragmented_gpu_h: f64,
    pub stranded_gpu_h: f64,
    /// The typical request the free capacity was judged against, as last used (GPUs).
    pub typical_request_gpus: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuRow {
    /// `node/index`.
    pub gpu: String,
    pub model: String,
    pub sampled_h: f64,
    pub allocated_pct: f64,
    pub utilization_pct: Option<f64>,
    pub memory_used_mib: Option<f64>,
    pub memory_used_mib_max: u64,
    pub temperature_c: Option<f64>,
    pub temperature_c_max: u32,
    pub power_w: Option<f64>,
    pub throttled_h: f64,
    pub throttled_pct: f64,
    /// Hours above 80 °C.
    pub hot_h: f64,
    pub hot_pct: f64,
    /// Throttled or above 80 °C at some point.
    pub flagged: bool,
}

/// One team in one bucket of the timeline, in mean GPUs over the bucket.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct TeamPoint {
    pub gpus: f64,
    pub borrowed_gpus: f64,
    pub queued_gpus: f64,
    pub guarantee_gpus: f64,
    pub limit_gpus: Option<f64>,
}

/// One bucket of the timeline; GPU figures are means over the bucket's covered
/// time, capacity ones over its sampled time.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct TimelinePoint {
    pub start_ms: u64,
    /// How far the bucket's figures reach.
    pub end_ms: u64,
    pub teams: BTreeMap<String, TeamPoint>,
    /// Held plus waiting, all teams.
    pub demand_gpus: f64,
    pub capacity_gpus: Option<f64>,
    pub allocated_gpus: Option<f64>,
    pub allocated_idle_gpus: Option<f64>,
    pub free_usable_gpus: Option<f64>,
    pub fragmented_gpus: Option<f64>,
    pub stranded_gpus: Option<f64>,
}

/// The demand trend: a least-squares line through the timeline's demand
/// (weighted by each bucket's length), and where it meets the capacity.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct DemandTrend {
    /// GPUs of demand at the report's start, on the line.
    pub intercept_gpus: f64,
    /// Change of demand per day, in GPUs.
    pub slope_gpus_per_day: f64,
    /// The capacity the line is measured against (the latest sampled, GPUs).
    pub capacity_gpus: Option<f64>,
    /// When the line reaches the capacity, if it does within [`HORIZON_DAYS`].
    pub runs_out_ms: Option<u64>,
    /// In words, for people.
    pub verdict: String,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Summary {
    pub teams: usize,
    pub gpus: usize,
    pub allocated_gpu_h: f64,
    pub borrowed_gpu_h: f64,
    /// Allocated share of the sampled capacity.
    pub allocated_pct: Option<f64>,
    pub wait_p90_s: Option<f64>,
    pub preemptions: u64,
    pub flagged_gpus: usize,
    pub runs_out: String,
}

/// Everything a capacity report shows.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Figures {
    pub from_ms: u64,
    pub to_ms: u64,
    pub summary: Summary,
    pub teams: Vec<TeamRow>,
    pub models: Vec<ModelRow>,
    pub capacity: CapacityRow,
    /// Telemetry of every GPU added up by model (`gpu` is the model; times are GPU-hours).
    pub model_telemetry: Vec<GpuRow>,
    /// GPUs that throttled or ran above 80 °C, one by one.
    pub gpus: Vec<GpuRow>,
    pub timeline: Vec<TimelinePoint>,
    pub demand: DemandTrend,
}

fn seconds(ms: Option<u64>) -> Option<f64> {
    ms.map(|ms| ms as f64 / 1000.0)
}

fn hours_of_ms(ms: u64) -> f64 {
    ms as f64 / 3_600_000.0
}

fn share(part: u64, whole: u64) -> f64 {
    if whole == 0 { 0.0 } else { 100.0 * part as f64 / whole as f64 }
}

/// The figures of the history's buckets that overlap `[from_ms, to_ms)`; a
/// bucket counts whole (figures are not split inside a bucket).
pub fn figures(history: &Export, from_ms: u64, to_ms: u64) -> Figures {
    let buckets: Vec<&Bucket> =
        history.buckets.iter().filter(|bucket| bucket.end_ms() > from_ms && bucket.start_ms < to_ms).collect();
    let span_ms = buckets.iter().map(|bucket| bucket.covered()).sum::<u64>();

    let mut teams: BTreeMap<&str, TeamFigures> = BTreeMap::new();
    let mut gpus: BTreeMap<&str, GpuFigures> = BTreeMap::new();
    let mut model_telemetry: BTreeMap<&str, GpuFigures> = BTreeMap::new();
    let mut capacity = crate::bucket::CapacityFigures::default();
    for bucket in &buckets {
        for (team, figures) in &bucket.teams {
            teams.entry(team).or_default().merge(figures);
        }
        for (gpu, figures) in &bucket.gpus {
            gpus.entry(gpu).or_default().merge(figures);
        }
        for (model, figures) in &bucket.models {
            model_telemetry.entry(model).or_default().merge(figures);
        }
        capacity.merge(&bucket.capacity);
    }

    let team_rows: Vec<TeamRow> = teams.iter().map(|(team, figures)| team_row(team, figures, span_ms)).collect();

    let mut models: BTreeMap<String, ModelRow> = BTreeMap::new();
    for figures in teams.values() {
        for (model, usage) in &figures.models {
            let row = models.entry(model.clone()).or_insert_with(|| ModelRow {
                model: model.clone(),
                allocated_gpu_h: 0.0,
                capacity_gpu_h: 0.0,
            });
            row.allocated_gpu_h += usage.allocated.hours();
        }
    }
    for (model, time) in &capacity.total_by_model {
        models
            .entry(model.clone())
            .or_insert_with(|| ModelRow { model: model.clone(), allocated_gpu_h: 0.0, capacity_gpu_h: 0.0 })
            .capacity_gpu_h = time.hours();
    }
    // An allocation whose GPU model could not be told is recorded under "": not a model.
    models.remove("");

    let capacity_row = CapacityRow {
        sampled_h: hours_of_ms(capacity.sampled_ms),
        total_gpu_h: capacity.total.hours(),
        allocated_gpu_h: capacity.allocated.hours(),
        allocated_idle_gpu_h: capacity.allocated_idle.hours(),
        free_usable_gpu_h: capacity.free_usable.hours(),
        fragmented_gpu_h: capacity.fragmented.hours(),
        stranded_gpu_h: capacity.stranded.hours(),
        typical_request_gpus: milli(u64::from(capacity.typical_milli_gpu)),
    };

    // A GPU's share of time throttled or hot is of the time the cluster was sampled:
    // its own figures start at its first notable sample in each bucket.
    let gpu_rows: Vec<GpuRow> = gpus
        .iter()
        .map(|(gpu, figures)| {
            let mut row = gpu_row(gpu, figures);
            row.throttled_pct = share(figures.throttled_ms, capacity.sampled_ms);
            row.hot_pct = share(figures.hot_ms, capacity.sampled_ms);
            row
        })
        .collect();
    let model_rows: Vec<GpuRow> = model_telemetry
        .iter()
        .map(|(model, figures)| {
            let mut row = gpu_row(model, figures);
            row.model = (*model).to_owned();
            row
        })
        .collect();
    let timeline: Vec<TimelinePoint> = buckets.iter().map(|bucket| timeline_point(bucket)).collect();
    let demand = demand_trend(&timeline, from_ms.max(buckets.first().map_or(from_ms, |bucket| bucket.start_ms)));

    let mut all_waits = Waits::default();
    for figures in teams.values() {
        all_waits.merge(&figures.waits);
    }
    let allocated_gpu_h: f64 = team_rows.iter().map(|row| row.allocated_gpu_h).sum();
    let summary = Summary {
        teams: team_rows.len(),
        gpus: gpu_rows.len(),
        allocated_gpu_h,
        borrowed_gpu_h: team_rows.iter().map(|row| row.borrowed_gpu_h).sum(),
        allocated_pct: (!capacity.total.is_zero())
            .then(|| 100.0 * capacity.allocated.0 as f64 / capacity.total.0 as f64),
        wait_p90_s: seconds(all_waits.percentile_ms(90.0)),
        preemptions: team_rows.iter().map(|row| row.preemptions).sum(),
        flagged_gpus: gpu_rows.iter().filter(|row| row.flagged).count(),
        runs_out: demand.verdict.clone(),
    };
    Figures {
        from_ms,
        to_ms,
        summary,
        teams: team_rows,
        models: models.into_values().collect(),
        capacity: capacity_row,
        model_telemetry: model_rows,
        gpus: gpu_rows,
        timeline,
        demand,
    }
}

fn team_row(team: &str, figures: &TeamFigures, span_ms: u64) -> TeamRow {
    let allocated = figures.allocated();
    TeamRow {
        team: team.to_owned(),
        allocated_gpu_h: allocated.hours(),
        borrowed_gpu_h: figures.borrowed().hours(),
        queued_gpu_h: figures.queued.hours(),
        by_model: figures
            .models
            .iter()
            .filter(|(_, usage)| !usage.allocated.is_zero())
            .map(|(model, usage)| (model.clone(), usage.allocated.hours()))
            .collect(),
        mean_gpus: allocated.mean_gpus(span_ms),
        peak_gpus: milli(figures.peak_milli_gpu),
        guarantee_gpus: milli(figures.guarantee_milli_gpu),
        limit_gpus: figures.limit_milli_gpu.map(milli),
        requests: u64::from(figures.requests),
        granted: u64::from(figures.waits.count),
        wait_p50_s: seconds(figures.waits.percentile_ms(50.0)),
        wait_p90_s: seconds(figures.waits.percentile_ms(90.0)),
        wait_p99_s: seconds(figures.waits.percentile_ms(99.0)),
        wait_max_s: (figures.waits.count > 0).then(|| figures.waits.max_ms as f64 / 1000.0),
        wait_mean_s: seconds(figures.waits.mean_ms()),
        reclaims: u64::from(figures.reclaims),
        preemptions: u64::from(figures.preemptions),
    }
}

fn gpu_row(gpu: &str, figures: &GpuFigures) -> GpuRow {
    let flagged = figures.throttled_ms > 0 || figures.hot_ms > 0;
    GpuRow {
        gpu: gpu.to_owned(),
        model: figures.model.clone(),
        sampled_h: hours_of_ms(figures.sampled_ms),
        allocated_pct: share(figures.allocated_ms, figures.sampled_ms),
        utilization_pct: figures.utilization_pct.value(),
        memory_used_mib: figures.memory_used_mib.value(),
        memory_used_mib_max: figures.memory_used_mib_max,
        temperature_c: figures.temperature_c.value(),
        temperature_c_max: figures.temperature_c_max,
        power_w: figures.power_w.value(),
        throttled_h: hours_of_ms(figures.throttled_ms),
        throttled_pct: share(figures.throttled_ms, figures.sampled_ms),
        hot_h: hours_of_ms(figures.hot_ms),
        hot_pct: share(figures.hot_ms, figures.sampled_ms),
        flagged: flagged && share(figures.throttled_ms.max(figures.hot_ms), figures.sampled_ms) >= FLAG_SHARE_PCT,
    }
}

fn timeline_point(bucket: &Bucket) -> TimelinePoint {
    let covered = bucket.covered();
    let mut demand = GpuMs::default();
    let teams = bucket
        .teams
        .iter()
        .map(|(team, figures)| {
            demand.add(figures.allocated());
            demand.add(figures.queued);
            let point = TeamPoint {
                gpus: figures.allocated().mean_gpus(covered),
                borrowed_gpus: figures.borrowed().mean_gpus(covered),
                queued_gpus: figures.queued.mean_gpus(covered),
                guarantee_gpus: milli(figures.guarantee_milli_gpu),
                limit_gpus: figures.limit_milli_gpu.map(milli),
            };
            (team.clone(), point)
        })
        .collect();
    let sampled = bucket.capacity.sampled_ms;
    let mean = |time: GpuMs| (sampled > 0).then(|| time.mean_gpus(sampled));
    TimelinePoint {
        start_ms: bucket.start_ms,
        end_ms: bucket.until_ms.max(bucket.start_ms),
        teams,
        demand_gpus: demand.mean_gpus(covered),
        capacity_gpus: mean(bucket.capacity.total),
        allocated_gpus: mean(bucket.capacity.allocated),
        allocated_idle_gpus: mean(bucket.capacity.allocated_idle),
        free_usable_gpus: mean(bucket.capacity.free_usable),
        fragmented_gpus: mean(bucket.capacity.fragmented),
        stranded_gpus: mean(bucket.capacity.stranded),
    }
}

/// Fits demand = intercept + slope × days since `origin_ms` over the timeline
/// (each point at its middle, weighted by its length) and finds where it meets
/// the latest capacity.
pub fn demand_trend(timeline: &[TimelinePoint], origin_ms: u64) -> DemandTrend {
    let capacity = timeline.iter().rev().find_map(|point| point.capacity_gpus);
    let points: Vec<(f64, f64, f64)> = timeline
        .iter()
        .filter(|point| point.end_ms > point.start_ms)
        .map(|point| {
            let middle = (point.start_ms + point.end_ms) as f64 / 2.0;
            let days = (middle - origin_ms as f64) / 86_400_000.0;
            let weight = (point.end_ms - point.start_ms) as f64;
            (days, point.demand_gpus, weight)
        })
        .collect();
    let weight: f64 = points.iter().map(|(_, _, weight)| weight).sum();
    let distinct_times = points.windows(2).any(|pair| pair[0].0 != pair[1].0);
    if points.len() < 2 || weight <= 0.0 || !distinct_times {
        return DemandTrend {
            intercept_gpus: points.first().map_or(0.0, |point| point.1),
            slope_gpus_per_day: 0.0,
            capacity_gpus: capacity,
            runs_out_ms: None,
            verdict: "not enough history for a trend (it needs two buckets)".into(),
        };
    }
    let mean_x = points.iter().map(|(x, _, w)| x * w).sum::<f64>() / weight;
    let mean_y = points.iter().map(|(_, y, w)| y * w).sum::<f64>() / weight;
    let covariance: f64 = points.iter().map(|(x, y, w)| w * (x - mean_x) * (y - mean_y)).sum();
    let variance: f64 = points.iter().map(|(x, _, w)| w * (x - mean_x) * (x - mean_x)).sum();
    let slope = if variance > 0.0 { covariance / variance } else { 0.0 };
    let intercept = mean_y - slope * mean_x;
    let last_days = points.last().map_or(0.0, |point| point.0);
    let at_last = intercept + slope * last_days;
    let (runs_out_ms, verdict) = match capacity {
        None => (None, "no capacity sampled: no run-out date".to_owned()),
        Some(capacity) if at_last >= capacity => (
            Some(origin_ms + (last_days.max(0.0) * 86_400_000.0) as u64),
            format!("demand ({at_last:.1} GPUs on the trend) is at or above capacity ({capacity:.1} GPUs) already"),
        ),
        Some(capacity) if slope <= 0.0 => {
            (None, format!("demand is flat or falling ({slope:+.2} GPUs/day): it does not reach {capacity:.1} GPUs"))
        }
        Some(capacity) => {
            let days = (capacity - intercept) / slope;
            if days - last_days > HORIZON_DAYS {
                (None, format!("at {slope:+.2} GPUs/day demand reaches {capacity:.1} GPUs in more than three years"))
            } else {
                let at = origin_ms + (days * 86_400_000.0) as u64;
                (
                    Some(at),
                    format!(
                        "at {slope:+.2} GPUs/day demand reaches the {capacity:.1} GPUs of capacity on {}",
                        crate::date(at)
                    ),
                )
            }
        }
    };
    DemandTrend { intercept_gpus: intercept, slope_gpus_per_day: slope, capacity_gpus: capacity, runs_out_ms, verdict }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bucket::{GpuFigures, ModelUse};
    use crate::recorder::{DAY_MS, HOUR_MS};

    const T0: u64 = 1_000 * DAY_MS;

    fn bucket(start_ms: u64, length_ms: u64) -> Bucket {
        let mut bucket = Bucket::new(start_ms, length_ms);
        bucket.until_ms = start_ms + length_ms;
        bucket
    }

    /// Two hours: team a holds 2 H100 the first hour and 3 (1 borrowed) the
    /// second; team b holds 1 L4 the second hour after waiting 10 min; the
    /// cluster has 4 H100 and 2 L4.
    fn two_hours() -> Export {
        let mut first = bucket(T0, HOUR_MS);
        let a = first.teams.entry("a".into()).or_default();
        a.models.insert("H100".into(), ModelUse { allocated: GpuMs::of(2000, HOUR_MS), borrowed: GpuMs(0) });
        a.guarantee_milli_gpu = 2000;
        a.limit_milli_gpu = Some(4000);
        a.waits.record(0);
        a.waits.record(0);
        first.teams.entry("b".into()).or_default().queued = GpuMs::of(1000, 10 * 60_000);
        let mut second = bucket(T0 + HOUR_MS, HOUR_MS);
        let a = second.teams.entry("a".into()).or_default();
        a.models.insert(
            "H100".into(),
            ModelUse { allocated: GpuMs::of(3000, HOUR_MS), borrowed: GpuMs::of(1000, HOUR_MS) },
        );
        a.guarantee_milli_gpu = 2000;
        a.limit_milli_gpu = Some(4000);
        a.peak_milli_gpu = 3000;
        a.reclaims = 1;
        let b = second.teams.entry("b".into()).or_default();
        b.models.insert("L4".into(), ModelUse { allocated: GpuMs::of(1000, HOUR_MS), borrowed: GpuMs(0) });
        b.waits.record(10 * 60_000);
        for bucket in [&mut first, &mut second] {
            bucket.capacity.sampled_ms = HOUR_MS;
            bucket.capacity.total = GpuMs::of(6000, HOUR_MS);
            bucket.capacity.total_by_model.insert("H100".into(), GpuMs::of(4000, HOUR_MS));
            bucket.capacity.total_by_model.insert("L4".into(), GpuMs::of(2000, HOUR_MS));
        }
        first.capacity.allocated = GpuMs::of(2000, HOUR_MS);
        second.capacity.allocated = GpuMs::of(4000, HOUR_MS);
        second.gpus.insert(
            "n/3".into(),
            GpuFigures { model: "H100".into(), sampled_ms: HOUR_MS, throttled_ms: HOUR_MS / 4, ..Default::default() },
        );
        second
            .gpus
            .insert("n/0".into(), GpuFigures { model: "H100".into(), sampled_ms: HOUR_MS, ..Default::default() });
        Export { format: crate::FORMAT, as_of_ms: T0 + 2 * HOUR_MS, since_ms: T0, buckets: vec![first, second] }
    }

    #[test]
    fn gpu_hours_waits_and_reclaims_per_team() {
        let figures = figures(&two_hours(), T0, T0 + 2 * HOUR_MS);
        let a = &figures.teams[0];
        assert_eq!((a.team.as_str(), a.allocated_gpu_h, a.borrowed_gpu_h), ("a", 5.0, 1.0));
        assert_eq!((a.mean_gpus, a.peak_gpus, a.guarantee_gpus, a.limit_gpus), (2.5, 3.0, 2.0, Some(4.0)));
        assert_eq!((a.granted, a.wait_p90_s, a.reclaims), (2, Some(0.0), 1));
        let b = &figures.teams[1];
        assert_eq!((b.allocated_gpu_h, b.queued_gpu_h), (1.0, 1.0 / 6.0));
        assert_eq!(b.by_model.get("L4"), Some(&1.0));
        assert_eq!((b.wait_p50_s, b.wait_max_s), (Some(600.0), Some(600.0)));
        let models: Vec<(&str, f64, f64)> =
            figures.models.iter().map(|row| (row.model.as_str(), row.allocated_gpu_h, row.capacity_gpu_h)).collect();
        assert_eq!(models, [("H100", 5.0, 8.0), ("L4", 1.0, 4.0)]);
        assert_eq!(figures.summary.allocated_gpu_h, 6.0);
        assert_eq!(figures.summary.allocated_pct, Some(50.0));
        assert_eq!(figures.summary.flagged_gpus, 1);
        let throttled = figures.gpus.iter().find(|row| row.gpu == "n/3").expect("n/3");
        assert_eq!((throttled.throttled_h, throttled.throttled_pct, throttled.flagged), (0.25, 12.5, true));
        assert!(!figures.gpus.iter().find(|row| row.gpu == "n/0").expect("n/0").flagged);
        assert_eq!(figures.timeline[1].teams["a"].gpus, 3.0);
        assert_eq!(figures.timeline[1].teams["a"].borrowed_gpus, 1.0);
    }

    #[test]
    fn a_span_keeps_only_the_buckets_it_overlaps() {
        let figures = figures(&two_hours(), T0 + HOUR_MS, T0 + 2 * HOUR_MS);
        assert_eq!(figures.teams[0].allocated_gpu_h, 3.0);
        assert_eq!(figures.timeline.len(), 1);
    }

    fn point(day: u64, demand: f64, capacity: f64) -> TimelinePoint {
        TimelinePoint {
            start_ms: T0 + day * DAY_MS,
            end_ms: T0 + (day + 1) * DAY_MS,
            demand_gpus: demand,
            capacity_gpus: Some(capacity),
            ..Default::default()
        }
    }

    #[test]
    fn demand_growing_one_gpu_a_day_runs_out_when_the_line_meets_capacity() {
        // Demand 10.5, 11.5, 12.5, 13.5 at the middle of days 0..4: the line is 10 + day.
        let timeline: Vec<TimelinePoint> = (0..4).map(|day| point(day, 10.5 + day as f64, 16.0)).collect();
        let trend = demand_trend(&timeline, T0);
        assert!((trend.slope_gpus_per_day - 1.0).abs() < 1e-9, "{trend:?}");
        assert!((trend.intercept_gpus - 10.0).abs() < 1e-9, "{trend:?}");
        assert_eq!(trend.runs_out_ms, Some(T0 + 6 * DAY_MS));
        assert!(trend.verdict.contains(&crate::date(T0 + 6 * DAY_MS)), "{}", trend.verdict);
    }

    #[test]
    fn flat_falling_full_or_short_demand_gives_no_date_or_says_it_is_full() {
        let flat: Vec<TimelinePoint> = (0..4).map(|day| point(day, 8.0, 16.0)).collect();
        assert_eq!(demand_trend(&flat, T0).runs_out_ms, None);
        assert!(demand_trend(&flat, T0).verdict.contains("flat or falling"));
        let full: Vec<TimelinePoint> = (0..4).map(|day| point(day, 20.0, 16.0)).collect();
        assert!(demand_trend(&full, T0).verdict.contains("already"));
        assert!(demand_trend(&flat[..1], T0).verdict.contains("not enough history"));
        let slow: Vec<TimelinePoint> = (0..4).map(|day| point(day, 1.0 + day as f64 * 0.001, 16.0)).collect();
        assert_eq!(demand_trend(&slow, T0).runs_out_ms, None, "beyond the horizon");
    }
}
