//! The sizing report: report.json (everything) and report.html (self-contained:
//! tables and SVG charts drawn by plotters, no scripts, no network), written to a
//! temporary folder beside the output and renamed into place at the end.

use std::path::Path;

use plotters::prelude::*;

use crate::output::{PALETTE, escape, legend};

use super::search::duration;
use super::{Recommendation, SizeError};

/// The smallest wait the wait chart shows, in hours (36 s); no wait is drawn here.
const WAIT_FLOOR_H: f64 = 0.01;

const MIXES: &str = "two models";

/// Writes report.json and report.html into `out`, replacing what was there,
/// so that `out` never holds half a report.
pub fn write_all_or_nothing(out: &Path, recommendation: &Recommendation) -> Result<(), SizeError> {
    let json = serde_json::to_string_pretty(recommendation)
        .map_err(|error| SizeError::Usage(format!("cannot write the report as JSON: {error}")))?;
    let files = [("report.json", json), ("report.html", html(recommendation))];
    crate::output::write_folder(out, &files).map_err(|(path, source)| SizeError::Write { path, source })
}

/// A chart, or a note saying why it could not be drawn.
fn chart(id: &str, draw: impl FnOnce(&mut String) -> Result<(), String>) -> String {
    let mut svg = String::new();
    match draw(&mut svg) {
        Ok(()) => format!("<figure id=\"{id}\" class=\"chart\">{svg}</figure>"),
        Err(error) => format!("<p class=\"error\">chart {id} could not be drawn: {}</p>", escape(&error)),
    }
}

fn cost_chart(recommendation: &Recommendation, svg: &mut String, wait: bool) -> Result<(), String> {
    // One series per server model, and one for every fleet of two models.
    let group = |tried: &super::search::Evaluated| -> String {
        if tried.parts.len() > 1 { MIXES.to_owned() } else { tried.server.clone() }
    };
    let mut servers: Vec<String> = recommendation.catalog.servers.iter().map(|server| server.name.clone()).collect();
    if recommendation.tried.iter().any(|tried| tried.parts.len() > 1) {
        servers.push(MIXES.to_owned());
    }
    let targets = &recommendation.provenance.targets;
    // Waits span seconds to months: a log scale of hours, with no wait drawn at
    // the floor and an unbounded one (tasks that never start) at the top.
    let log_wait = |seconds: f64| (seconds / 3600.0).max(WAIT_FLOOR_H).log10();
    let value = |evaluated: &super::search::Evaluated| {
        if wait { log_wait(evaluated.measured.wait_s) } else { evaluated.measured.served_pct }
    };
    let max_cost = recommendation.tried.iter().map(|tried| tried.cost_usd / 1e6).fold(0.0, f64::max).max(0.001) * 1.05;
    let (low, high) = if wait {
        let top = recommendation
            .tried
            .iter()
            .map(value)
            .filter(|wait| wait.is_finite())
            .fold(log_wait(targets.max_wait_s.unwrap_or(0.0)), f64::max)
            .max(0.0)
            + 0.3;
        (WAIT_FLOOR_H.log10(), top)
    } else {
        let bottom = recommendation.tried.iter().map(value).fold(targets.min_served_pct, f64::min);
        ((bottom - 1.0).max(0.0), 100.5)
    };
    let root = SVGBackend::with_string(svg, (900, 380)).into_drawing_area();
    root.fill(&WHITE).map_err(|error| error.to_string())?;
    let caption = if wait {
        format!("p{} queue wait (h) against fleet cost (M USD)", targets.wait_percentile)
    } else {
        "GPU request served (%) against fleet cost (M USD)".to_owned()
    };
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..max_cost, low..high)
        .map_err(|error| error.to_string())?;
    chart
        .configure_mesh()
        .x_desc("cost, M USD")
        .y_desc(if wait { "wait, h (log scale)" } else { "served, %" })
        .y_label_formatter(&|y| if wait { hours_label(10f64.powf(*y)) } else { format!("{y:.1}") })
        .draw()
        .map_err(|error| error.to_string())?;
    let target = if wait { targets.max_wait_s.map(log_wait) } else { Some(targets.min_served_pct) };
    if let Some(target) = target {
        chart
            .draw_series(LineSeries::new(vec![(0.0, target), (max_cost, target)], BLACK.stroke_width(1)))
            .map_err(|error| error.to_string())?
            .label("target")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLACK));
    }
    for (index, server) in servers.iter().enumerate() {
        let colour = PALETTE[index % PALETTE.len()];
        let points: Vec<(f64, f64, bool)> = recommendation
            .tried
            .iter()
            .filter(|tried| group(tried) == *server)
            .map(|tried| (tried.cost_usd / 1e6, value(tried).min(high), tried.meets))
            .collect();
        chart
            .draw_series(points.iter().map(|(x, y, meets)| {
                let style = if *meets { colour.filled() } else { colour.stroke_width(2) };
                Circle::new((*x, *y), 5, style)
            }))
            .map_err(|error| error.to_string())?
            .label(server.as_str())
            .legend(move |(x, y)| Circle::new((x + 8, y), 5, colour.filled()));
    }
    legend(&mut chart, SeriesLabelPosition::LowerRight)?;
    root.present().map_err(|error| error.to_string())?;
    Ok(())
}

/// A tick label of the log-scale wait axis: 0.01, 0.32, 3.2, 32, 316.
fn hours_label(hours: f64) -> String {
    if hours >= 10.0 {
        format!("{hours:.0}")
    } else if hours >= 1.0 {
        format!("{hours:.1}")
    } else {
        format!("{hours:.2}")
    }
}

/// A value that holds until the next point, drawn as steps rather than slopes.
fn steps(
    usage: &[super::replay::UsagePoint],
    days: impl Fn(f64) -> f64,
    value: impl Fn(&super::replay::UsagePoint) -> f64,
) -> Vec<(f64, f64)> {
    let mut points = Vec::with_capacity(usage.len() * 2);
    for (index, point) in usage.iter().enumerate() {
        if index > 0 {
            points.push((days(point.time_s), value(&usage[index - 1])));
        }
        points.push((days(point.time_s), value(point)));
    }
    points
}

fn usage_chart(recommendation: &Recommendation, svg: &mut String) -> Result<(), String> {
    let chosen = &recommendation.candidates[recommendation.chosen];
    let usage = &recommendation.chosen_usage;
    let start = usage.first().map(|point| point.time_s).unwrap_or_default();
    let days = |time: f64| (time - start) / 86400.0;
    let end = usage.last().map(|point| days(point.time_s)).unwrap_or(1.0).max(1e-6);
    let capacity = f64::from(chosen.gpus);
    let top = usage.iter().map(|point| point.allocated_gpus + point.queued_gpus).fold(capacity, f64::max) * 1.1;
    let root = SVGBackend::with_string(svg, (900, 380)).into_drawing_area();
    root.fill(&WHITE).map_err(|error| error.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{}: GPUs allocated and queued over time", chosen.fleet), ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..end, 0.0..top.max(1.0))
        .map_err(|error| error.to_string())?;
    chart
        .configure_mesh()
        .x_desc("days from the first arrival")
        .y_desc("GPUs")
        .draw()
        .map_err(|error| error.to_string())?;
    chart
        .draw_series(
            AreaSeries::new(steps(usage, days, |point| point.allocated_gpus), 0.0, PALETTE[0].mix(0.35))
                .border_style(PALETTE[0]),
        )
        .map_err(|error| error.to_string())?
        .label("allocated")
        .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 16, y + 5)], PALETTE[0].filled()));
    chart
        .draw_series(LineSeries::new(
            steps(usage, days, |point| point.allocated_gpus + point.queued_gpus),
            PALETTE[3].stroke_width(1),
        ))
        .map_err(|error| error.to_string())?
        .label("allocated + queued")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], PALETTE[3]));
    chart
        .draw_series(LineSeries::new(vec![(0.0, capacity), (end, capacity)], BLACK.stroke_width(2)))
        .map_err(|error| error.to_string())?
        .label("fleet GPUs")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLACK));
    legend(&mut chart, SeriesLabelPosition::UpperRight)?;
    root.present().map_err(|error| error.to_string())?;
    Ok(())
}

/// The report as one HTML page with inline SVG.
pub fn html(recommendation: &Recommendation) -> String {
    let provenance = &recommendation.provenance;
    let mut page = String::from(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Allot sizing report</title>\n<style>\
         body{font-family:sans-serif;margin:2em;max-width:1100px;color:#222}\
         table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:4px 8px;text-align:left;vertical-align:top}\
         th{background:#eee}.chosen{background:#e8f5e9}.miss{color:#b71c1c}.chart{margin:1em 0}code{background:#f4f4f4}\
         </style></head><body>\n<h1>Allot sizing report</h1>\n",
    );
    page.push_str("<h2>Recommendation</h2>\n");
    for line in &recommendation.explanation {
        page.push_str(&format!("<p>{}</p>\n", escape(line)));
    }
    page.push_str("<h2>Candidates</h2>\n<table id=\"candidates\"><tr><th>fleet</th><th>GPUs</th><th>cost (USD)</th><th>served</th><th>wait</th><th>peak / mean use</th><th>result</th><th>sizing rules broken</th></tr>\n");
    for (index, candidate) in recommendation.candidates.iter().enumerate() {
        let result = if index == recommendation.chosen {
            "chosen".to_owned()
        } else {
            format!("<span class=\"miss\">{}</span>", escape(&candidate.why_not))
        };
        let rules: Vec<String> = candidate
            .rules_broken
            .iter()
            .map(|violation| format!("<b>{}</b>: {}", violation.rule, escape(&violation.message)))
            .collect();
        page.push_str(&format!(
            "<tr{}><td>{}<br><small>{}</small></td><td>{}</td><td>{:.0}</td><td>{:.2}%</td><td>p{} {}</td><td>{:.1}% / {:.1}%</td><td>{}</td><td>{}</td></tr>\n",
            if index == recommendation.chosen { " class=\"chosen\"" } else { "" },
            escape(&candidate.fleet),
            escape(&candidate.description),
            candidate.gpus,
            candidate.cost_usd,
            candidate.measured.served_pct,
            provenance.targets.wait_percentile,
            duration(candidate.measured.wait_s),
            candidate.measured.peak_allocated_pct,
            candidate.measured.mean_allocated_pct,
            result,
            if rules.is_empty() { "none".to_owned() } else { rules.join("<br>") },
        ));
    }
    page.push_str("</table>\n<h2>Cost against targets</h2>\n<p>Every fleet the search replayed; filled markers meet all targets.</p>\n");
    page.push_str(&chart("chart-served", |svg| cost_chart(recommendation, svg, false)));
    if provenance.targets.max_wait_s.is_some() {
        page.push_str(&chart("chart-wait", |svg| cost_chart(recommendation, svg, true)));
    }
    page.push_str("<h2>The chosen fleet over time</h2>\n");
    page.push_str(&chart("chart-usage", |svg| usage_chart(recommendation, svg)));
    page.push_str("<h2>Demand</h2>\n<ul>");
    let demand = &recommendation.demand;
    page.push_str(&format!(
        "<li>{} ({} format): {} tasks read, {} GPU tasks, growth x{} (seed {}) gives {}</li>",
        escape(&demand.path),
        demand.format,
        demand.tasks_read,
        demand.gpu_tasks,
        demand.growth,
        demand.growth_seed,
        demand.tasks_after_growth
    ));
    for note in &demand.notes {
        page.push_str(&format!("<li>{}</li>", escape(note)));
    }
    page.push_str("</ul>\n<h2>How this was produced</h2>\n<table id=\"provenance\">");
    let rows = [
        ("command", provenance.command.clone()),
        ("allot version", provenance.allot_version.clone()),
        (
            "demand",
            format!(
                "{} ({} bytes, FNV-1a {})",
                provenance.demand.path, provenance.demand.bytes, provenance.demand.fnv1a64
            ),
        ),
        (
            "catalog",
            format!(
                "{} ({} bytes, FNV-1a {})",
                provenance.catalog.path, provenance.catalog.bytes, provenance.catalog.fnv1a64
            ),
        ),
        ("seeds", format!("{:?} (a fleet must meet the targets under every seed)", provenance.seeds)),
        ("placement policy", provenance.policy.clone()),
        (
            "cost",
            format!(
                "purchase + energy at maximum power for {} years at {} USD/kWh",
                provenance.cost.years, provenance.cost.usd_per_kwh
            ),
        ),
        ("search", format!("up to {} servers per model; {:.1} s", provenance.max_servers, provenance.wall_s)),
    ];
    for (key, value) in rows {
        page.push_str(&format!("<tr><th>{key}</th><td><code>{}</code></td></tr>", escape(&value)));
    }
    page.push_str("</table>\n<h2>Catalog sources</h2>\n<ul>");
    for server in &recommendation.catalog.servers {
        page.push_str(&format!("<li><b>{}</b>: {}</li>", escape(&server.name), escape(&server.sources.join("; "))));
    }
    page.push_str("</ul>\n</body></html>\n");
    page
}
