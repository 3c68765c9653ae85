//! The capacity report behind `allotctl report capacity`: from a usage history
//! (`allot-history`'s export, as the broker serves it), the figures
//! (`allot_history::figures`) as report.json, one CSV per table, the history
//! itself as history.json (a demand `allotctl size` reads), and report.html:
//! self-contained (inline SVG charts drawn by plotters, no scripts, no network),
//! a one-page summary first, then each chart with its table. Written to a
//! temporary folder beside `--out` and renamed into place, so `--out` never
//! holds half a report. See docs/reports.md.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use allot_history::Export;
use allot_history::figures::{Figures, GpuRow, TimelinePoint, figures};
use plotters::prelude::*;

use crate::output::{PALETTE, escape, legend};
use serde::Serialize;

/// What went wrong, worded for the person at the terminal.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{0}")]
    Usage(String),
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
}

/// How the report was asked for.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReportRequest {
    /// As given, like `30d`.
    pub since: String,
    pub from_ms: u64,
    pub to_ms: u64,
    pub team: Option<String>,
    pub broker: String,
    pub command: String,
}

/// report.json: the figures and how they were asked for.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub request: ReportRequest,
    pub figures: Figures,
}

/// A span like `30d`, `12h`, `90m`, `45s` or `2w`, in milliseconds: more than
/// nothing, at most ten years.
pub fn parse_since(text: &str) -> Result<u64, ReportError> {
    let bad = || {
        ReportError::Usage(format!(
            "--since {text:?}: expected a number and a unit (s, m, h, d or w), like 30d or 12h, more than 0 and at most 10 years"
        ))
    };
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let unit_ms: u64 = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "w" => 7 * 86_400_000,
        _ => return Err(bad()),
    };
    let ms = number.checked_mul(unit_ms).ok_or_else(bad)?;
    if ms == 0 || ms > 10 * 366 * 86_400_000 {
        return Err(bad());
    }
    Ok(ms)
}

/// Checks the request against the history, computes the figures and writes
/// every file into `out`, replacing what was there, all or nothing.
pub fn write_report(out: &Path, history: &Export, request: &ReportRequest) -> Result<Report, ReportError> {
    if let Some(team) = &request.team
        && !history.teams().contains(team.as_str())
    {
        let known: Vec<&str> = history.teams().into_iter().collect();
        return Err(ReportError::Usage(format!(
            "unknown team {team:?}: the usage history has none of it since {} (teams in it: {})",
            allot_history::date_time(request.from_ms),
            if known.is_empty() { "none".to_owned() } else { known.join(", ") }
        )));
    }
    let mut figures = figures(history, request.from_ms, request.to_ms);
    if let Some(team) = &request.team {
        figures.teams.retain(|row| &row.team == team);
    }
    let report = Report { request: request.clone(), figures };
    let files: Vec<(&str, String)> = vec![
        ("report.html", html(&report)),
        ("report.json", to_json(&report)?),
        ("history.json", to_json(history)?),
        ("teams.csv", teams_csv(&report.figures)),
        ("models.csv", models_csv(&report.figures)),
        ("capacity.csv", capacity_csv(&report.figures)),
        ("gpus.csv", gpus_csv(&report.figures)),
        ("timeline.csv", timeline_csv(&report.figures)),
        ("demand.csv", demand_csv(&report.figures)),
    ];
    write_all_or_nothing(out, &files)?;
    Ok(report)
}

fn to_json<T: Serialize>(value: &T) -> Result<String, ReportError> {
    serde_json::to_string_pretty(value)
        .map_err(|error| ReportError::Usage(format!("cannot write the report as JSON: {error}")))
}

/// Writes the files into a temporary folder beside `out`, then renames it into place.
fn write_all_or_nothing(out: &Path, files: &[(&str, String)]) -> Result<(), ReportError> {
    crate::output::write_folder(out, files).map_err(|(path, source)| ReportError::Write { path, source })
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n']) { format!("\"{}\"", text.replace('"', "\"\"")) } else { text.to_owned() }
}

fn number(value: f64) -> String {
    format!("{value:.3}")
}

fn optional(value: Option<f64>) -> String {
    value.map(number).unwrap_or_default()
}

/// A wait for people: 0 s, 42 s, 3.5 min, 2.1 h, 1.5 d.
fn wait(seconds: Option<f64>) -> String {
    match seconds {
        None => "–".into(),
        Some(s) if s < 60.0 => format!("{s:.0} s"),
        Some(s) if s < 3600.0 => format!("{:.1} min", s / 60.0),
        Some(s) if s < 86_400.0 => format!("{:.1} h", s / 3600.0),
        Some(s) => format!("{:.1} d", s / 86_400.0),
    }
}

/// The x axis of time charts: a unit that suits the span, from the report's start.
struct TimeAxis {
    origin_ms: u64,
    unit_ms: f64,
    name: &'static str,
}

impl TimeAxis {
    fn new(figures: &Figures) -> TimeAxis {
        let origin_ms = figures.timeline.first().map_or(figures.from_ms, |point| point.start_ms);
        let end = figures.timeline.last().map_or(figures.to_ms, |point| point.end_ms);
        let span = end.saturating_sub(origin_ms);
        let (unit_ms, name) = if span <= 2 * 3_600_000 {
            (60_000.0, "minutes")
        } else if span <= 3 * 86_400_000 {
            (3_600_000.0, "hours")
        } else {
            (86_400_000.0, "days")
        };
        TimeAxis { origin_ms, unit_ms, name }
    }

    fn at(&self, ms: u64) -> f64 {
        (ms as f64 - self.origin_ms as f64) / self.unit_ms
    }

    fn description(&self) -> String {
        format!("{} from {} UTC", self.name, allot_history::date_time(self.origin_ms))
    }
}

/// A chart, or a note saying why it could not be drawn.
fn chart(id: &str, draw: impl FnOnce(&mut String) -> Result<(), String>) -> String {
    let mut svg = String::new();
    match draw(&mut svg) {
        Ok(()) => format!("<figure id=\"{id}\" class=\"chart\">{svg}</figure>\n"),
        Err(error) => format!("<p class=\"error\">chart {id} could not be drawn: {}</p>\n", escape(&error)),
    }
}

fn failed(error: impl std::fmt::Display) -> String {
    error.to_string()
}

/// A step line through a value that holds over each timeline bucket.
fn steps(
    axis: &TimeAxis,
    timeline: &[TimelinePoint],
    value: impl Fn(&TimelinePoint) -> Option<f64>,
) -> Vec<(f64, f64)> {
    let mut points = Vec::with_capacity(timeline.len() * 2);
    for point in timeline {
        if let Some(value) = value(point) {
            points.push((axis.at(point.start_ms), value));
            points.push((axis.at(point.end_ms), value));
        }
    }
    points
}

fn legend_box(colour: RGBColor) -> impl Fn((i32, i32)) -> Rectangle<(i32, i32)> {
    move |(x, y)| Rectangle::new([(x, y - 5), (x + 16, y + 5)], colour.filled())
}

/// Per team: GPUs held (and borrowed) against guarantee and limit, one panel each.
fn usage_chart(figures: &Figures, svg: &mut String) -> Result<(), String> {
    let axis = TimeAxis::new(figures);
    let teams: Vec<&str> = figures.teams.iter().map(|row| row.team.as_str()).take(12).collect();
    let rows = teams.len().div_ceil(2).max(1);
    let end = figures.timeline.last().map_or(1.0, |point| axis.at(point.end_ms)).max(1e-3);
    let root = SVGBackend::with_string(svg, (1000, 260 * rows as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(failed)?;
    let panels = root.split_evenly((rows, 2));
    if teams.is_empty() {
        panels[0]
            .draw_text("no team used GPUs in this span", &("sans-serif", 16).into_text_style(&panels[0]), (20, 40))
            .map_err(failed)?;
    }
    for (team, panel) in teams.iter().zip(panels.iter()) {
        let point = |point: &TimelinePoint| point.teams.get(*team).cloned().unwrap_or_default();
        let top = figures
            .timeline
            .iter()
            .map(|p| {
                let team = point(p);
                (team.gpus + team.queued_gpus).max(team.guarantee_gpus).max(team.limit_gpus.unwrap_or(0.0))
            })
            .fold(1.0, f64::max)
            * 1.15;
        let mut chart = ChartBuilder::on(panel)
            .caption(format!("{team}: GPUs held against guarantee and limit"), ("sans-serif", 15))
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(40)
            .build_cartesian_2d(0.0..end, 0.0..top)
            .map_err(failed)?;
        chart.configure_mesh().x_desc(axis.description()).y_desc("GPUs").draw().map_err(failed)?;
        chart
            .draw_series(
                AreaSeries::new(steps(&axis, &figures.timeline, |p| Some(point(p).gpus)), 0.0, PALETTE[0].mix(0.35))
                    .border_style(PALETTE[0]),
            )
            .map_err(failed)?
            .label("held")
            .legend(legend_box(PALETTE[0]));
        chart
            .draw_series(
                AreaSeries::new(
                    steps(&axis, &figures.timeline, |p| Some(point(p).borrowed_gpus)),
                    0.0,
                    PALETTE[1].mix(0.5),
                )
                .border_style(PALETTE[1]),
            )
            .map_err(failed)?
            .label("borrowed")
            .legend(legend_box(PALETTE[1]));
        chart
            .draw_series(LineSeries::new(
                steps(&axis, &figures.timeline, |p| Some(point(p).guarantee_gpus)),
                BLACK.stroke_width(2),
            ))
            .map_err(failed)?
            .label("guarantee")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLACK.stroke_width(2)));
        chart
            .draw_series(LineSeries::new(
                steps(&axis, &figures.timeline, |p| point(p).limit_gpus),
                PALETTE[3].stroke_width(2),
            ))
            .map_err(failed)?
            .label("limit")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], PALETTE[3].stroke_width(2)));
        legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
    }
    root.present().map_err(failed)?;
    Ok(())
}

/// The smallest wait drawn on the log scale, in seconds (no wait sits here).
const WAIT_FLOOR_S: f64 = 0.5;

/// Queue wait percentiles per team, on a log scale of seconds.
fn waits_chart(figures: &Figures, svg: &mut String) -> Result<(), String> {
    let teams: Vec<_> = figures.teams.iter().filter(|row| row.granted > 0).collect();
    let log = |seconds: f64| seconds.max(WAIT_FLOOR_S).log10();
    let top = teams.iter().filter_map(|row| row.wait_p99_s).map(log).fold(log(60.0), f64::max) + 0.3;
    let root = SVGBackend::with_string(svg, (1000, 360)).into_drawing_area();
    root.fill(&WHITE).map_err(failed)?;
    let count = teams.len().max(1) as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption("Queue wait per team: p50, p90, p99 (log scale)", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..count, log(WAIT_FLOOR_S)..top)
        .map_err(failed)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_label_formatter(&|_| String::new())
        .x_desc("team")
        .y_desc("wait")
        .y_label_formatter(&|y| wait(Some(10f64.powf(*y))))
        .draw()
        .map_err(failed)?;
    type Percentile = fn(&allot_history::figures::TeamRow) -> Option<f64>;
    let percentiles: [(&str, Percentile); 3] =
        [("p50", |row| row.wait_p50_s), ("p90", |row| row.wait_p90_s), ("p99", |row| row.wait_p99_s)];
    for (index, (label, value)) in percentiles.iter().enumerate() {
        let colour = PALETTE[index];
        chart
            .draw_series(teams.iter().enumerate().map(|(position, row)| {
                let left = position as f64 + 0.15 + index as f64 * 0.23;
                let height = log(value(row).unwrap_or(0.0));
                Rectangle::new([(left, log(WAIT_FLOOR_S)), (left + 0.2, height)], colour.filled())
            }))
            .map_err(failed)?
            .label(*label)
            .legend(legend_box(colour));
    }
    // Category names under their bars (the axis labels are numbers).
    let rise = (top - log(WAIT_FLOOR_S)) * 0.02;
    chart
        .draw_series(teams.iter().enumerate().map(|(position, row)| {
            Text::new(row.team.clone(), (position as f64 + 0.15, log(WAIT_FLOOR_S) + rise), ("sans-serif", 14))
        }))
        .map_err(failed)?;
    legend(&mut chart, SeriesLabelPosition::UpperRight)?;
    root.present().map_err(failed)?;
    Ok(())
}

/// GPU-hours held against GPU-hours offered, per GPU model.
fn models_chart(figures: &Figures, svg: &mut String) -> Result<(), String> {
    let models = &figures.models;
    let top = models.iter().map(|row| row.allocated_gpu_h.max(row.capacity_gpu_h)).fold(1e-3, f64::max) * 1.15;
    let root = SVGBackend::with_string(svg, (1000, 340)).into_drawing_area();
    root.fill(&WHITE).map_err(failed)?;
    let count = models.len().max(1) as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption("GPU-hours by GPU model: held against offered", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..count, 0.0..top)
        .map_err(failed)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_label_formatter(&|_| String::new())
        .x_desc("GPU model")
        .y_desc("GPU-hours")
        .draw()
        .map_err(failed)?;
    type Bar = fn(&allot_history::figures::ModelRow) -> f64;
    let bars: [(&str, Bar); 2] =
        [("held", |row| row.allocated_gpu_h), ("offered (ready GPUs)", |row| row.capacity_gpu_h)];
    for (index, (label, value)) in bars.iter().enumerate() {
        let colour = PALETTE[index * 2];
        chart
            .draw_series(models.iter().enumerate().map(|(position, row)| {
                let left = position as f64 + 0.15 + index as f64 * 0.36;
                Rectangle::new([(left, 0.0), (left + 0.33, value(row))], colour.filled())
            }))
            .map_err(failed)?
            .label(*label)
            .legend(legend_box(colour));
    }
    chart
        .draw_series(models.iter().enumerate().map(|(position, row)| {
            Text::new(row.model.clone(), (position as f64 + 0.15, top * 0.93), ("sans-serif", 14))
        }))
        .map_err(failed)?;
    legend(&mut chart, SeriesLabelPosition::UpperRight)?;
    root.present().map_err(failed)?;
    Ok(())
}

/// The capacity split over time, stacked: busy, held but idle, free usable, fragmented, stranded.
fn capacity_chart(figures: &Figures, svg: &mut String) -> Result<(), String> {
    let axis = TimeAxis::new(figures);
    let end = figures.timeline.last().map_or(1.0, |point| axis.at(point.end_ms)).max(1e-3);
    let top = figures.timeline.iter().filter_map(|point| point.capacity_gpus).fold(1.0, f64::max) * 1.15;
    let root = SVGBackend::with_string(svg, (1000, 380)).into_drawing_area();
    root.fill(&WHITE).map_err(failed)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("GPU capacity: busy, held but idle, free, fragmented, stranded", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..end, 0.0..top)
        .map_err(failed)?;
    chart.configure_mesh().x_desc(axis.description()).y_desc("GPUs").draw().map_err(failed)?;
    type Part = fn(&TimelinePoint) -> f64;
    let busy: Part = |p| p.allocated_gpus.unwrap_or(0.0) - p.allocated_idle_gpus.unwrap_or(0.0);
    let parts: [(&str, Part); 5] = [
        ("busy", busy),
        ("held, idle (< 5 %)", |p| p.allocated_idle_gpus.unwrap_or(0.0)),
        ("free, usable", |p| p.free_usable_gpus.unwrap_or(0.0)),
        ("free, fragmented", |p| p.fragmented_gpus.unwrap_or(0.0)),
        ("free, stranded", |p| p.stranded_gpus.unwrap_or(0.0)),
    ];
    let sampled: Vec<&TimelinePoint> = figures.timeline.iter().filter(|point| point.capacity_gpus.is_some()).collect();
    // Drawn from the top of the stack down, each area from 0 to the sum of the parts up to it.
    for index in (0..parts.len()).rev() {
        let (label, _) = parts[index];
        let colour = [PALETTE[0], PALETTE[7], PALETTE[2], PALETTE[1], PALETTE[3]][index];
        let points: Vec<(f64, f64)> = sampled
            .iter()
            .flat_map(|point| {
                let height: f64 = parts[..=index].iter().map(|(_, part)| part(point)).sum();
                [(axis.at(point.start_ms), height), (axis.at(point.end_ms), height)]
            })
            .collect();
        chart
            .draw_series(AreaSeries::new(points, 0.0, colour.mix(0.8)).border_style(colour))
            .map_err(failed)?
            .label(label)
            .legend(legend_box(colour));
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight)?;
    root.present().map_err(failed)?;
    Ok(())
}

/// GPUs that throttled or ran above 80 °C: the share of the sampled time each did.
fn hot_chart(figures: &Figures, svg: &mut String) -> Result<(), String> {
    let flagged: Vec<&GpuRow> = figures.gpus.iter().filter(|row| row.flagged).take(40).collect();
    let root = SVGBackend::with_string(svg, (1000, 140 + 44 * flagged.len().max(1) as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(failed)?;
    let count = flagged.len().max(1) as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption("GPUs that throttled or ran above 80 °C: share of the sampled time", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(40)
        .build_cartesian_2d(0.0..100.0, 0.0..count)
        .map_err(failed)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_label_formatter(&|_| String::new())
        .y_desc("GPU (node/index)")
        .x_desc("% of the sampled time")
        .draw()
        .map_err(failed)?;
    if flagged.is_empty() {
        chart
            .draw_series(std::iter::once(Text::new(
                "no GPU throttled or ran above 80 °C",
                (30.0, 0.5),
                ("sans-serif", 16),
            )))
            .map_err(failed)?;
    }
    type Bar = fn(&GpuRow) -> f64;
    let bars: [(&str, Bar); 2] = [("throttled", |row| row.throttled_pct), ("above 80 °C", |row| row.hot_pct)];
    for (index, (label, value)) in bars.iter().enumerate() {
        let colour = PALETTE[3 - index * 2];
        chart
            .draw_series(flagged.iter().enumerate().map(|(position, row)| {
                let bottom = position as f64 + 0.15 + index as f64 * 0.35;
                Rectangle::new([(0.0, bottom), (value(row).min(100.0), bottom + 0.32)], colour.filled())
            }))
            .map_err(failed)?
            .label(*label)
            .legend(legend_box(colour));
    }
    chart
        .draw_series(flagged.iter().enumerate().map(|(position, row)| {
            Text::new(
                format!("{} ({}, hottest {} °C)", row.gpu, row.model, row.temperature_c_max),
                (1.0, position as f64 + 0.95),
                ("sans-serif", 13),
            )
        }))
        .map_err(failed)?;
    legend(&mut chart, SeriesLabelPosition::UpperRight)?;
    root.present().map_err(failed)?;
    Ok(())
}

/// Demand (held plus waiting) over time, its trend, the capacity, and where they meet.
fn demand_chart(figures: &Figures, svg: &mut String) -> Result<(), String> {
    let axis = TimeAxis::new(figures);
    let trend = &figures.demand;
    let last = figures.timeline.last().map_or(1.0, |point| axis.at(point.end_ms)).max(1e-3);
    let runs_out = trend.runs_out_ms.map(|at| axis.at(at));
    let end = runs_out.map_or(last * 1.25, |at| at.max(last) * 1.1).max(1e-3);
    let capacity = trend.capacity_gpus;
    // The trend line is in days from the report's start.
    let origin_shift_days = (axis.origin_ms as f64 - figures.from_ms.max(axis.origin_ms) as f64) / 86_400_000.0;
    let trend_at = |x: f64| {
        let days = x * axis.unit_ms / 86_400_000.0 + origin_shift_days;
        trend.intercept_gpus + trend.slope_gpus_per_day * days
    };
    let top = figures
        .timeline
        .iter()
        .map(|point| point.demand_gpus)
        .chain(capacity)
        .chain([trend_at(0.0), trend_at(end)])
        .fold(1.0, f64::max)
        * 1.15;
    let root = SVGBackend::with_string(svg, (1000, 380)).into_drawing_area();
    root.fill(&WHITE).map_err(failed)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Demand (held + waiting), its trend and the capacity", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..end, 0.0..top)
        .map_err(failed)?;
    chart.configure_mesh().x_desc(axis.description()).y_desc("GPUs").draw().map_err(failed)?;
    chart
        .draw_series(LineSeries::new(
            steps(&axis, &figures.timeline, |p| Some(p.demand_gpus)),
            PALETTE[0].stroke_width(2),
        ))
        .map_err(failed)?
        .label("demand")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], PALETTE[0].stroke_width(2)));
    chart
        .draw_series(LineSeries::new(vec![(0.0, trend_at(0.0)), (end, trend_at(end))], PALETTE[1].stroke_width(2)))
        .map_err(failed)?
        .label("trend")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], PALETTE[1].stroke_width(2)));
    if let Some(capacity) = capacity {
        chart
            .draw_series(LineSeries::new(vec![(0.0, capacity), (end, capacity)], BLACK.stroke_width(2)))
            .map_err(failed)?
            .label("capacity")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLACK.stroke_width(2)));
    }
    if let (Some(at), Some(capacity)) = (runs_out, capacity) {
        chart
            .draw_series(std::iter::once(Circle::new((at, capacity), 6, PALETTE[3].filled())))
            .map_err(failed)?
            .label("runs out")
            .legend(|(x, y)| Circle::new((x + 8, y), 5, PALETTE[3].filled()));
    }
    legend(&mut chart, SeriesLabelPosition::LowerRight)?;
    root.present().map_err(failed)?;
    Ok(())
}

fn table(id: &str, header: &[&str], rows: impl IntoIterator<Item = Vec<String>>) -> String {
    let mut html = format!("<table id=\"{id}\"><tr>");
    for name in header {
        let _ = write!(html, "<th>{}</th>", escape(name));
    }
    html.push_str("</tr>\n");
    for row in rows {
        html.push_str("<tr>");
        for cell in row {
            let _ = write!(html, "<td>{}</td>", escape(&cell));
        }
        html.push_str("</tr>\n");
    }
    html.push_str("</table>\n");
    html
}

fn hours(value: f64) -> String {
    format!("{value:.2}")
}

fn gpus(value: f64) -> String {
    format!("{value:.2}")
}

fn percent(value: Option<f64>) -> String {
    value.map_or_else(|| "–".into(), |value| format!("{value:.1} %"))
}

fn gpu_rows(rows: &[GpuRow]) -> Vec<Vec<String>> {
    rows.iter()
        .map(|row| {
            vec![
                row.gpu.clone(),
                row.model.clone(),
                hours(row.sampled_h),
                percent(Some(row.allocated_pct)),
                percent(row.utilization_pct),
                row.memory_used_mib.map_or("–".into(), |mib| format!("{mib:.0}")),
                row.memory_used_mib_max.to_string(),
                row.temperature_c.map_or("–".into(), |c| format!("{c:.1}")),
                row.temperature_c_max.to_string(),
                row.power_w.map_or("–".into(), |w| format!("{w:.0}")),
                format!("{} ({:.1} %)", hours(row.throttled_h), row.throttled_pct),
                format!("{} ({:.1} %)", hours(row.hot_h), row.hot_pct),
            ]
        })
        .collect()
}

const GPU_HEADER: [&str; 12] = [
    "GPU",
    "model",
    "sampled GPU-h",
    "held",
    "mean utilisation",
    "mean memory used (MiB)",
    "most memory used (MiB)",
    "mean temperature (°C)",
    "hottest (°C)",
    "mean power (W)",
    "throttled GPU-h",
    "above 80 °C GPU-h",
];

/// The report as one HTML page with inline SVG.
pub fn html(report: &Report) -> String {
    let figures = &report.figures;
    let request = &report.request;
    let summary = &figures.summary;
    let capacity = &figures.capacity;
    let mut page = String::from(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Allot capacity report</title>\n<style>\
         body{font-family:sans-serif;margin:2em;max-width:1100px;color:#222}\
         table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:4px 8px;text-align:left;vertical-align:top}\
         th{background:#eee}.chart{margin:1em 0}.summary{page-break-after:always}.verdict{font-size:1.2em}\
         </style></head><body>\n<section class=\"summary\" id=\"summary\">\n<h1>Allot capacity report</h1>\n",
    );
    let _ = writeln!(
        page,
        "<p>{} to {} UTC (--since {}){}; broker {}.</p>",
        allot_history::date_time(figures.from_ms),
        allot_history::date_time(figures.to_ms),
        escape(&request.since),
        request.team.as_ref().map(|team| format!(", team {}", escape(team))).unwrap_or_default(),
        escape(&request.broker)
    );
    let _ = writeln!(page, "<p class=\"verdict\"><b>Run-out:</b> {}.</p>", escape(&figures.demand.verdict));
    page.push_str(&table(
        "summary-table",
        &["figure", "value"],
        [
            vec!["teams".into(), summary.teams.to_string()],
            vec!["GPU-hours held".into(), hours(summary.allocated_gpu_h)],
            vec!["of which borrowed".into(), hours(summary.borrowed_gpu_h)],
            vec!["held share of the capacity".into(), percent(summary.allocated_pct)],
            vec!["GPU-hours held but idle (< 5 % utilisation)".into(), hours(capacity.allocated_idle_gpu_h)],
            vec!["GPU-hours free and usable".into(), hours(capacity.free_usable_gpu_h)],
            vec![
                format!(
                    "GPU-hours free but fragmented (for the typical request of {} GPUs)",
                    capacity.typical_request_gpus
                ),
                hours(capacity.fragmented_gpu_h),
            ],
            vec!["GPU-hours stranded (no core or memory left)".into(), hours(capacity.stranded_gpu_h)],
            vec!["queue wait p90, all teams".into(), wait(summary.wait_p90_s)],
            vec!["preemptions".into(), summary.preemptions.to_string()],
            vec!["GPUs that throttled or ran above 80 °C".into(), summary.flagged_gpus.to_string()],
        ],
    ));
    page.push_str("</section>\n");

    page.push_str("<h2>Usage against guarantee and limit</h2>\n");
    page.push_str(&chart("chart-usage", |svg| usage_chart(figures, svg)));
    page.push_str(&table(
        "teams",
        &[
            "team",
            "GPU-hours held",
            "borrowed",
            "waited",
            "mean GPUs",
            "peak GPUs",
            "guarantee",
            "limit",
            "by model",
            "reclaims",
            "preemptions",
        ],
        figures.teams.iter().map(|row| {
            vec![
                row.team.clone(),
                hours(row.allocated_gpu_h),
                hours(row.borrowed_gpu_h),
                hours(row.queued_gpu_h),
                gpus(row.mean_gpus),
                gpus(row.peak_gpus),
                gpus(row.guarantee_gpus),
                row.limit_gpus.map_or("unlimited".into(), gpus),
                row.by_model.iter().map(|(model, h)| format!("{model}: {}", hours(*h))).collect::<Vec<_>>().join("; "),
                row.reclaims.to_string(),
                row.preemptions.to_string(),
            ]
        }),
    ));
    page.push_str("<details><summary>Usage over time, bucket by bucket</summary>\n");
    page.push_str(&table(
        "usage-timeline",
        &["from (UTC)", "to", "team", "GPUs held", "borrowed", "waiting", "guarantee", "limit"],
        figures.timeline.iter().flat_map(|point| {
            point.teams.iter().map(move |(team, values)| {
                vec![
                    allot_history::date_time(point.start_ms),
                    allot_history::date_time(point.end_ms),
                    team.clone(),
                    gpus(values.gpus),
                    gpus(values.borrowed_gpus),
                    gpus(values.queued_gpus),
                    gpus(values.guarantee_gpus),
                    values.limit_gpus.map_or("unlimited".into(), gpus),
                ]
            })
        }),
    ));
    page.push_str("</details>\n");

    page.push_str("<h2>Queue waits</h2>\n");
    page.push_str(&chart("chart-waits", |svg| waits_chart(figures, svg)));
    page.push_str(&table(
        "waits",
        &["team", "requests", "granted", "p50", "p90", "p99", "longest", "mean"],
        figures.teams.iter().map(|row| {
            vec![
                row.team.clone(),
                row.requests.to_string(),
                row.granted.to_string(),
                wait(row.wait_p50_s),
                wait(row.wait_p90_s),
                wait(row.wait_p99_s),
                wait(row.wait_max_s),
                wait(row.wait_mean_s),
            ]
        }),
    ));

    page.push_str("<h2>GPU-hours by model</h2>\n");
    page.push_str(&chart("chart-models", |svg| models_chart(figures, svg)));
    page.push_str(&table(
        "models",
        &["model", "GPU-hours held", "GPU-hours offered", "held share"],
        figures.models.iter().map(|row| {
            let share = (row.capacity_gpu_h > 0.0).then(|| 100.0 * row.allocated_gpu_h / row.capacity_gpu_h);
            vec![row.model.clone(), hours(row.allocated_gpu_h), hours(row.capacity_gpu_h), percent(share)]
        }),
    ));

    page.push_str("<h2>Idle, fragmented and stranded capacity</h2>\n");
    page.push_str(&chart("chart-capacity", |svg| capacity_chart(figures, svg)));
    page.push_str(&table(
        "capacity",
        &["GPU-hours", "value"],
        [
            vec!["sampled time (h)".into(), hours(capacity.sampled_h)],
            vec!["offered".into(), hours(capacity.total_gpu_h)],
            vec!["held".into(), hours(capacity.allocated_gpu_h)],
            vec!["held but idle (< 5 % utilisation)".into(), hours(capacity.allocated_idle_gpu_h)],
            vec!["free, usable by the typical request".into(), hours(capacity.free_usable_gpu_h)],
            vec!["free, fragmented".into(), hours(capacity.fragmented_gpu_h)],
            vec!["free, stranded".into(), hours(capacity.stranded_gpu_h)],
            vec!["typical request (GPUs)".into(), format!("{}", capacity.typical_request_gpus)],
        ],
    ));

    page.push_str("<h2>GPUs that throttled or ran above 80 °C</h2>\n");
    page.push_str(&chart("chart-hot", |svg| hot_chart(figures, svg)));
    page.push_str(&table("hot-gpus", &GPU_HEADER, gpu_rows(&figures.gpus)));
    page.push_str("<h3>Telemetry of every GPU, by model</h3>\n");
    page.push_str(&table("model-telemetry", &GPU_HEADER, gpu_rows(&figures.model_telemetry)));

    page.push_str("<h2>Demand trend</h2>\n");
    page.push_str(&chart("chart-demand", |svg| demand_chart(figures, svg)));
    let trend = &figures.demand;
    page.push_str(&table(
        "demand",
        &["figure", "value"],
        [
            vec!["trend".into(), format!("{:+.3} GPUs per day", trend.slope_gpus_per_day)],
            vec!["demand at the start, on the trend".into(), gpus(trend.intercept_gpus)],
            vec!["capacity".into(), trend.capacity_gpus.map_or("–".into(), gpus)],
            vec!["runs out".into(), trend.runs_out_ms.map_or("–".into(), allot_history::date)],
            vec!["verdict".into(), trend.verdict.clone()],
        ],
    ));
    page.push_str("<h2>How this was produced</h2>\n");
    page.push_str(&table(
        "provenance",
        &["", ""],
        [
            vec!["command".into(), request.command.clone()],
            vec!["allot version".into(), env!("CARGO_PKG_VERSION").into()],
            vec!["history".into(), "history.json (GetUsageHistory), read by allotctl size --demand".into()],
        ],
    ));
    page.push_str("</body></html>\n");
    page
}

fn csv(header: &[&str], rows: impl IntoIterator<Item = Vec<String>>) -> String {
    let mut text = header.join(",");
    text.push('\n');
    for row in rows {
        text.push_str(&row.iter().map(|cell| csv_field(cell)).collect::<Vec<_>>().join(","));
        text.push('\n');
    }
    text
}

fn teams_csv(figures: &Figures) -> String {
    csv(
        &[
            "team",
            "allocated_gpu_h",
            "borrowed_gpu_h",
            "queued_gpu_h",
            "mean_gpus",
            "peak_gpus",
            "guarantee_gpus",
            "limit_gpus",
            "requests",
            "granted",
            "wait_p50_s",
            "wait_p90_s",
            "wait_p99_s",
            "wait_max_s",
            "reclaims",
            "preemptions",
        ],
        figures.teams.iter().map(|row| {
            vec![
                row.team.clone(),
                number(row.allocated_gpu_h),
                number(row.borrowed_gpu_h),
                number(row.queued_gpu_h),
                number(row.mean_gpus),
                number(row.peak_gpus),
                number(row.guarantee_gpus),
                optional(row.limit_gpus),
                row.requests.to_string(),
                row.granted.to_string(),
                optional(row.wait_p50_s),
                optional(row.wait_p90_s),
                optional(row.wait_p99_s),
                optional(row.wait_max_s),
                row.reclaims.to_string(),
                row.preemptions.to_string(),
            ]
        }),
    )
}

fn models_csv(figures: &Figures) -> String {
    csv(
        &["model", "allocated_gpu_h", "capacity_gpu_h"],
        figures
            .models
            .iter()
            .map(|row| vec![row.model.clone(), number(row.allocated_gpu_h), number(row.capacity_gpu_h)]),
    )
}

fn capacity_csv(figures: &Figures) -> String {
    let capacity = &figures.capacity;
    csv(
        &[
            "sampled_h",
            "total_gpu_h",
            "allocated_gpu_h",
            "allocated_idle_gpu_h",
            "free_usable_gpu_h",
            "fragmented_gpu_h",
            "stranded_gpu_h",
            "typical_request_gpus",
        ],
        [vec![
            number(capacity.sampled_h),
            number(capacity.total_gpu_h),
            number(capacity.allocated_gpu_h),
            number(capacity.allocated_idle_gpu_h),
            number(capacity.free_usable_gpu_h),
            number(capacity.fragmented_gpu_h),
            number(capacity.stranded_gpu_h),
            number(capacity.typical_request_gpus),
        ]],
    )
}

fn gpus_csv(figures: &Figures) -> String {
    let rows =
        figures.model_telemetry.iter().map(|row| ("model", row)).chain(figures.gpus.iter().map(|row| ("gpu", row)));
    csv(
        &[
            "kind",
            "gpu",
            "model",
            "sampled_h",
            "allocated_pct",
            "utilization_pct",
            "memory_used_mib",
            "memory_used_mib_max",
            "temperature_c",
            "temperature_c_max",
            "power_w",
            "throttled_h",
            "throttled_pct",
            "hot_h",
            "hot_pct",
            "flagged",
        ],
        rows.map(|(kind, row)| {
            vec![
                kind.to_owned(),
                row.gpu.clone(),
                row.model.clone(),
                number(row.sampled_h),
                number(row.allocated_pct),
                optional(row.utilization_pct),
                optional(row.memory_used_mib),
                row.memory_used_mib_max.to_string(),
                optional(row.temperature_c),
                row.temperature_c_max.to_string(),
                optional(row.power_w),
                number(row.throttled_h),
                number(row.throttled_pct),
                number(row.hot_h),
                number(row.hot_pct),
                row.flagged.to_string(),
            ]
        }),
    )
}

fn timeline_csv(figures: &Figures) -> String {
    csv(
        &["start_ms", "end_ms", "team", "gpus", "borrowed_gpus", "queued_gpus", "guarantee_gpus", "limit_gpus"],
        figures.timeline.iter().flat_map(|point| {
            point.teams.iter().map(move |(team, values)| {
                vec![
                    point.start_ms.to_string(),
                    point.end_ms.to_string(),
                    team.clone(),
                    number(values.gpus),
                    number(values.borrowed_gpus),
                    number(values.queued_gpus),
                    number(values.guarantee_gpus),
                    optional(values.limit_gpus),
                ]
            })
        }),
    )
}

fn demand_csv(figures: &Figures) -> String {
    csv(
        &[
            "start_ms",
            "end_ms",
            "demand_gpus",
            "capacity_gpus",
            "allocated_gpus",
            "allocated_idle_gpus",
            "free_usable_gpus",
            "fragmented_gpus",
            "stranded_gpus",
        ],
        figures.timeline.iter().map(|point| {
            vec![
                point.start_ms.to_string(),
                point.end_ms.to_string(),
                number(point.demand_gpus),
                optional(point.capacity_gpus),
                optional(point.allocated_gpus),
                optional(point.allocated_idle_gpus),
                optional(point.free_usable_gpus),
                optional(point.fragmented_gpus),
                optional(point.stranded_gpus),
            ]
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_number_and_a_unit_and_refuses_the_rest() {
        assert_eq!(parse_since("30d").expect("30d"), 30 * 86_400_000);
        assert_eq!(parse_since("12h").expect("12h"), 12 * 3_600_000);
        assert_eq!(parse_since("2w").expect("2w"), 14 * 86_400_000);
        assert_eq!(parse_since("90s").expect("90s"), 90_000);
        for bad in ["", "30", "d", "0d", "-3d", "3 days", "1.5d", "99999999999999999999d", "4000d"] {
            let error = parse_since(bad).expect_err(bad).to_string();
            assert!(error.starts_with("--since"), "{bad}: {error}");
        }
    }

    fn history() -> Export {
        use allot_history::bucket::{Bucket, GpuMs, ModelUse};
        let mut bucket = Bucket::new(0, 300_000);
        bucket.until_ms = 300_000;
        let team = bucket.teams.entry("vision".into()).or_default();
        team.models.insert("H100".into(), ModelUse { allocated: GpuMs::of(2000, 300_000), borrowed: GpuMs(0) });
        team.waits.record(0);
        Export { format: allot_history::FORMAT, as_of_ms: 300_000, since_ms: 0, buckets: vec![bucket] }
    }

    fn request(team: Option<&str>) -> ReportRequest {
        ReportRequest {
            since: "30d".into(),
            from_ms: 0,
            to_ms: 300_000,
            team: team.map(str::to_owned),
            broker: "test".into(),
            command: "test".into(),
        }
    }

    #[test]
    fn a_report_is_written_whole_with_every_file_and_an_unknown_team_writes_nothing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = dir.path().join("report");
        let report = write_report(&out, &history(), &request(None)).expect("report");
        assert_eq!(report.figures.teams[0].allocated_gpu_h, 2.0 / 12.0);
        let mut files: Vec<String> = std::fs::read_dir(&out)
            .expect("out")
            .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        assert_eq!(
            files,
            [
                "capacity.csv",
                "demand.csv",
                "gpus.csv",
                "history.json",
                "models.csv",
                "report.html",
                "report.json",
                "teams.csv",
                "timeline.csv"
            ]
        );
        let teams = std::fs::read_to_string(out.join("teams.csv")).expect("teams.csv");
        assert!(teams.lines().nth(1).is_some_and(|row| row.starts_with("vision,0.167,")), "{teams}");
        let html = std::fs::read_to_string(out.join("report.html")).expect("html");
        for id in ["chart-usage", "chart-waits", "chart-models", "chart-capacity", "chart-hot", "chart-demand"] {
            assert!(html.contains(&format!("<figure id=\"{id}\" class=\"chart\"><svg")), "{id}");
        }
        let without_namespace = html.replace("http://www.w3.org/2000/svg", "");
        assert!(!without_namespace.contains("<script") && !without_namespace.contains("http"), "self-contained");

        let elsewhere = dir.path().join("other");
        let error = write_report(&elsewhere, &history(), &request(Some("nlp"))).expect_err("unknown team");
        assert!(error.to_string().contains("unknown team \"nlp\"") && error.to_string().contains("vision"), "{error}");
        assert!(!elsewhere.exists(), "nothing written");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).expect("dir").collect();
        assert_eq!(leftovers.len(), 1, "no temporary folder is left");
    }
}
