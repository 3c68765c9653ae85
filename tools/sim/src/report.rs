//! Aggregation over seeds and the output files: the curves as JSON and CSV, a
//! summary as JSON, a plot as SVG (written by hand), and a table for people.

use std::fmt::Write as _;
use std::path::Path;

use allot_placement::packing::PackingPolicy;
use serde::Serialize;

use crate::SimError;
use crate::protocol::{CurvePoint, RunResult};

/// Median, smallest and largest of some values.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    /// `None` for no values. The median of an even count is the mean of the two
    /// middle values.
    pub fn of(values: &[f64]) -> Option<Spread> {
        if values.is_empty() {
            return None;
        }
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let middle = sorted.len() / 2;
        let median =
            if sorted.len().is_multiple_of(2) { (sorted[middle - 1] + sorted[middle]) / 2.0 } else { sorted[middle] };
        Some(Spread { median, min: sorted[0], max: sorted[sorted.len() - 1] })
    }
}

/// One policy over all seeds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicySummary {
    pub policy: &'static str,
    pub seeds: Vec<u64>,
    /// Unallocated GPU % at arrived = 100%, per seed (in `seeds` order); a seed
    /// whose list never reaches 100% is left out.
    pub unallocated_at_100_pct: Vec<f64>,
    pub unallocated: Option<Spread>,
    pub tasks_dropped: Option<Spread>,
    /// Allocated GPU % at the end of the run (all tasks submitted).
    pub final_allocated_pct: Option<Spread>,
}

/// Everything a run of `allotctl sim` reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub nodes: String,
    pub tasks: String,
    pub gpus: u64,
    pub inflation: f64,
    pub seeds: Vec<u64>,
    pub wall_seconds: f64,
    pub policies: Vec<PolicySummary>,
    /// How many fewer unallocated GPUs Allot leaves than FGD, relative, in %
    /// (median over seeds of each); present when both ran.
    pub allot_vs_fgd_reduction_pct: Option<f64>,
}

/// One point of a policy's curve over seeds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CurveSpread {
    pub arrived_pct: f64,
    pub allocated_pct: Spread,
    pub fragment_gpus: Spread,
    pub fragment_rate_pct: Spread,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyCurve {
    pub policy: &'static str,
    pub points: Vec<CurveSpread>,
}

/// Summarises results (as [`crate::batch::run_batch`] returns them).
// The arguments are the summary's own header fields, passed through as they are.
#[allow(clippy::too_many_arguments)]
pub fn summarize(
    results: &[RunResult],
    policies: &[PackingPolicy],
    nodes: &str,
    tasks: &str,
    gpus: u64,
    inflation: f64,
    seeds: &[u64],
    wall_seconds: f64,
) -> Summary {
    let summaries: Vec<PolicySummary> = policies
        .iter()
        .map(|policy| {
            let runs: Vec<&RunResult> = results.iter().filter(|result| result.policy == *policy).collect();
            let unallocated: Vec<f64> = runs.iter().filter_map(|run| run.unallocated_at_100_pct).collect();
            let dropped: Vec<f64> = runs.iter().map(|run| run.tasks_dropped as f64).collect();
            let finals: Vec<f64> =
                runs.iter().filter_map(|run| run.points.last().map(|point| point.allocated_pct)).collect();
            PolicySummary {
                policy: policy.name(),
                seeds: runs.iter().map(|run| run.seed).collect(),
                unallocated: Spread::of(&unallocated),
                unallocated_at_100_pct: unallocated,
                tasks_dropped: Spread::of(&dropped),
                final_allocated_pct: Spread::of(&finals),
            }
        })
        .collect();
    let median_of = |name: &str| {
        summaries
            .iter()
            .find(|summary| summary.policy == name)
            .and_then(|summary| summary.unallocated)
            .map(|s| s.median)
    };
    let allot_vs_fgd_reduction_pct = match (median_of("allot"), median_of("fgd")) {
        (Some(allot), Some(fgd)) if fgd > 0.0 => Some((fgd - allot) / fgd * 100.0),
        _ => None,
    };
    Summary {
        nodes: nodes.to_owned(),
        tasks: tasks.to_owned(),
        gpus,
        inflation,
        seeds: seeds.to_vec(),
        wall_seconds,
        policies: summaries,
        allot_vs_fgd_reduction_pct,
    }
}

/// Each policy's curve: per arrived mark, the spread over seeds.
pub fn curves(results: &[RunResult], policies: &[PackingPolicy]) -> Vec<PolicyCurve> {
    policies
        .iter()
        .map(|policy| {
            let runs: Vec<&RunResult> = results.iter().filter(|result| result.policy == *policy).collect();
            let marks = runs.iter().map(|run| run.points.len()).min().unwrap_or(0);
            let points = (0..marks)
                .filter_map(|mark| {
                    let at: Vec<&CurvePoint> = runs.iter().map(|run| &run.points[mark]).collect();
                    let spread =
                        |value: fn(&CurvePoint) -> f64| Spread::of(&at.iter().map(|p| value(p)).collect::<Vec<_>>());
                    Some(CurveSpread {
                        arrived_pct: spread(|p| p.arrived_pct)?.median,
                        allocated_pct: spread(|p| p.allocated_pct)?,
                        fragment_gpus: spread(|p| p.fragment_gpus)?,
                        fragment_rate_pct: spread(|p| p.fragment_rate_pct)?,
                    })
                })
                .collect();
            PolicyCurve { policy: policy.name(), points }
        })
        .collect()
}

/// Every seed's curve as CSV rows.
pub fn curve_csv(results: &[RunResult]) -> String {
    let mut text = String::from("policy,seed,arrived_pct,allocated_pct,fragment_gpus,fragment_rate_pct\n");
    for result in results {
        for point in &result.points {
            let _ = writeln!(
                text,
                "{},{},{:.2},{:.4},{:.3},{:.4}",
                result.policy.name(),
                result.seed,
                point.arrived_pct,
                point.allocated_pct,
                point.fragment_gpus,
                point.fragment_rate_pct
            );
        }
    }
    text
}

const COLOURS: [&str; 8] = ["#7f7f7f", "#bcbd22", "#17becf", "#9467bd", "#2ca02c", "#1f77b4", "#d62728", "#ff7f0e"];

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// A plot of allocated against arrived GPU (medians over seeds), one line per
/// policy, with the ideal diagonal.
pub fn plot_svg(curves: &[PolicyCurve], title: &str) -> String {
    let (width, height) = (760.0, 500.0);
    let (left, right, top, bottom) = (70.0, 170.0, 40.0, 60.0);
    let plot_width = width - left - right;
    let plot_height = height - top - bottom;
    let max_x = curves
        .iter()
        .flat_map(|curve| curve.points.iter().map(|point| point.arrived_pct))
        .fold(100.0f64, f64::max)
        .ceil();
    let (min_y, max_y) = (0.0, 100.0);
    let x = |value: f64| left + value / max_x * plot_width;
    let y = |value: f64| top + (1.0 - (value - min_y) / (max_y - min_y)) * plot_height;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="{width}" height="{height}" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="22" font-size="14" text-anchor="middle">{}</text>"#,
        left + plot_width / 2.0,
        escape(title)
    );
    for tick in (0..=max_x as u32).step_by(10) {
        let position = x(f64::from(tick));
        let _ = writeln!(
            svg,
            r##"<line x1="{position:.1}" y1="{top}" x2="{position:.1}" y2="{:.1}" stroke="#eee"/>"##,
            top + plot_height
        );
        let _ = writeln!(
            svg,
            r#"<text x="{position:.1}" y="{:.1}" text-anchor="middle">{tick}</text>"#,
            top + plot_height + 16.0
        );
    }
    for tick in (0..=100u32).step_by(10) {
        let position = y(f64::from(tick));
        let _ = writeln!(
            svg,
            r##"<line x1="{left}" y1="{position:.1}" x2="{:.1}" y2="{position:.1}" stroke="#eee"/>"##,
            left + plot_width
        );
        let _ =
            writeln!(svg, r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{tick}</text>"#, left - 6.0, position + 4.0);
    }
    let _ = writeln!(
        svg,
        r##"<rect x="{left}" y="{top}" width="{plot_width}" height="{plot_height}" fill="none" stroke="#333"/>"##
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">arrived workload (% of GPU capacity)</text>"#,
        left + plot_width / 2.0,
        height - 18.0
    );
    let _ = writeln!(
        svg,
        r#"<text transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle">GPU allocated (%)</text>"#,
        top + plot_height / 2.0
    );
    let _ = writeln!(
        svg,
        r##"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#999" stroke-dasharray="4 4"/>"##,
        x(0.0),
        y(0.0),
        x(100.0),
        y(100.0)
    );
    for (index, curve) in curves.iter().enumerate() {
        let colour = COLOURS[index % COLOURS.len()];
        let path: Vec<String> = curve
            .points
            .iter()
            .map(|point| {
                format!("{:.1},{:.1}", x(point.arrived_pct), y(point.allocated_pct.median.clamp(min_y, max_y)))
            })
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="1.8" points="{}"/>"#,
            path.join(" ")
        );
        let legend_y = top + 14.0 + index as f64 * 20.0;
        let legend_x = left + plot_width + 14.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{legend_x:.1}" y1="{legend_y:.1}" x2="{:.1}" y2="{legend_y:.1}" stroke="{colour}" stroke-width="3"/>"#,
            legend_x + 22.0
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
            legend_x + 28.0,
            legend_y + 4.0,
            escape(curve.policy)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// The table printed for people.
pub fn table(summary: &Summary) -> String {
    let mut text = format!(
        "{} GPUs, inflation {:.2}, seeds {}; wall time {:.1} s\n\n",
        summary.gpus,
        summary.inflation,
        seeds_words(&summary.seeds),
        summary.wall_seconds
    );
    let _ =
        writeln!(text, "{:<14} {:>22} {:>16} {:>16}", "policy", "unallocated % at 100%", "min..max", "dropped tasks");
    for policy in &summary.policies {
        let unallocated = policy.unallocated.map(|s| format!("{:.2}", s.median)).unwrap_or_else(|| "n/a".into());
        let range = policy.unallocated.map(|s| format!("{:.2}..{:.2}", s.min, s.max)).unwrap_or_else(|| "n/a".into());
        let dropped = policy.tasks_dropped.map(|s| format!("{:.0}", s.median)).unwrap_or_else(|| "n/a".into());
        let _ = writeln!(text, "{:<14} {:>22} {:>16} {:>16}", policy.policy, unallocated, range, dropped);
    }
    if let Some(reduction) = summary.allot_vs_fgd_reduction_pct {
        let _ = write!(text, "\nallot leaves {reduction:.1}% fewer unallocated GPUs than fgd (relative, medians)");
    }
    text
}

fn seeds_words(seeds: &[u64]) -> String {
    match (seeds.first(), seeds.last()) {
        (Some(first), Some(last)) if seeds.len() > 1 && seeds.windows(2).all(|pair| pair[1] == pair[0] + 1) => {
            format!("{first}..{last}")
        }
        _ => seeds.iter().map(u64::to_string).collect::<Vec<_>>().join(","),
    }
}

fn write_file(path: &Path, contents: &str) -> Result<(), SimError> {
    std::fs::write(path, contents).map_err(|source| SimError::Write { path: path.to_owned(), source })
}

/// Writes curve.json, curve.csv, summary.json and plot.svg into `dir` (created if
/// missing).
pub fn write_outputs(
    dir: &Path,
    results: &[RunResult],
    summary: &Summary,
    curves: &[PolicyCurve],
) -> Result<(), SimError> {
    std::fs::create_dir_all(dir).map_err(|source| SimError::Write { path: dir.to_owned(), source })?;
    let json = |value: &dyn erased::Json| value.to_json();
    write_file(&dir.join("curve.json"), &json(&curves.to_vec()))?;
    write_file(&dir.join("curve.csv"), &curve_csv(results))?;
    write_file(&dir.join("summary.json"), &json(summary))?;
    let title =
        format!("GPU allocated vs arrived, {} (median of {} seeds)", file_name(&summary.tasks), summary.seeds.len());
    write_file(&dir.join("plot.svg"), &plot_svg(curves, &title))?;
    Ok(())
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

mod erased {
    /// Pretty JSON of anything serialisable; serialising these plain structs
    /// cannot fail, but an error would still be written out rather than panic.
    pub trait Json {
        fn to_json(&self) -> String;
    }

    impl<T: serde::Serialize> Json for T {
        fn to_json(&self) -> String {
            serde_json::to_string_pretty(self).unwrap_or_else(|error| format!("{{\"error\": \"{error}\"}}")) + "\n"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_takes_the_median_and_range() {
        assert_eq!(Spread::of(&[3.0, 1.0, 2.0]), Some(Spread { median: 2.0, min: 1.0, max: 3.0 }));
        assert_eq!(Spread::of(&[4.0, 1.0, 2.0, 3.0]).map(|s| s.median), Some(2.5));
        assert_eq!(Spread::of(&[]), None);
    }
}
