//! The demand a fleet is sized for: GPU tasks with arrival times, run times and
//! accepted GPU models, read from a native-format list (its own arrivals and
//! departures) or an Alibaba list (its creation, scheduled and deletion times),
//! optionally grown by a factor.

use std::collections::HashMap;
use std::path::Path;

use allot_placement::fragment::{ModelSet, TaskShape};
use allot_placement::packing::SplitMix64;
use serde::Serialize;

use super::SizeError;
use crate::trace::{Cluster, TraceFormat, parse_tasks};

/// One GPU task of the demand.
#[derive(Debug, Clone, PartialEq)]
pub struct DemandTask {
    pub arrival_s: f64,
    /// How long it runs once started; `None`: until the end.
    pub run_s: Option<f64>,
    /// The shape, with `models` as ids into [`Demand::models`].
    pub shape: TaskShape,
}

/// What was read, and what was left out and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DemandSummary {
    pub path: String,
    pub format: String,
    pub tasks_read: usize,
    pub gpu_tasks: usize,
    pub cpu_only_left_out: usize,
    pub growth: f64,
    pub growth_seed: u64,
    pub tasks_after_growth: usize,
    /// Notes for people (model constraints dropped, ...).
    pub notes: Vec<String>,
}

/// The GPU tasks in arrival order, and the GPU model names their model sets refer to.
#[derive(Debug, Clone, PartialEq)]
pub struct Demand {
    pub tasks: Vec<DemandTask>,
    pub models: Vec<String>,
    pub summary: DemandSummary,
}

/// Reads a demand file. `models` are the catalog's GPU model names: a native
/// task's `gpu_spec` entry accepts every model whose name contains it (H100
/// accepts H100-SXM-80GB), and one that matches none is an error.
pub fn read_demand(path: &Path, models: &[String], growth: f64, seed: u64) -> Result<Demand, SizeError> {
    let text = std::fs::read_to_string(path).map_err(|source| SizeError::Io { path: path.to_owned(), source })?;
    if text.trim_start().starts_with('{') {
        return history_demand(path, &text, models, growth, seed);
    }
    parse_demand(path, &text, models, growth, seed)
}

/// A usage history exported from a broker (`allotctl report capacity` writes it
/// as history.json) as a demand: each team's GPUs held plus waiting, bucket by
/// bucket, as tasks of the typical request's size (`allot_history::demand`).
pub fn history_demand(path: &Path, text: &str, models: &[String], growth: f64, seed: u64) -> Result<Demand, SizeError> {
    let history = allot_history::Export::parse(text).map_err(|error| {
        let line = match &error {
            allot_history::HistoryError::Json(json) => json.line(),
            _ => 1,
        };
        SizeError::Input { path: path.to_owned(), line, message: error.to_string() }
    })?;
    let (tasks, count) = allot_history::demand::to_native_tasks(&history).map_err(|message| SizeError::Input {
        path: path.to_owned(),
        line: 1,
        message,
    })?;
    if count == 0 {
        return Err(SizeError::Input {
            path: path.to_owned(),
            line: 1,
            message: "the usage history holds no GPU demand (no team held or waited for a GPU)".into(),
        });
    }
    let mut demand = parse_demand(path, &tasks, models, growth, seed)?;
    demand.summary.format = "history".into();
    demand.summary.notes.push(format!(
        "a usage history of {} buckets from {} to {} UTC, as {count} tasks holding each team's mean demand (GPUs held plus waiting) bucket by bucket; it records GPUs only, so the tasks ask for no CPU or memory and accept every GPU model",
        history.buckets.len(),
        allot_history::date_time(history.buckets.first().map_or(0, |bucket| bucket.start_ms)),
        allot_history::date_time(history.buckets.last().map_or(0, |bucket| bucket.until_ms)),
    ));
    Ok(demand)
}

/// Parses a demand; `path` is only for messages.
pub fn parse_demand(path: &Path, text: &str, models: &[String], growth: f64, seed: u64) -> Result<Demand, SizeError> {
    if !(growth.is_finite() && growth > 0.0 && growth <= 100.0) {
        return Err(SizeError::Usage(format!(
            "--growth {growth}: expected a factor above 0 and at most 100, like 1.5"
        )));
    }
    // Shapes and the checks of every column come from the simulator's reader.
    let list = parse_tasks(path, text, &Cluster::default())?;
    let at = |line: usize, message: String| SizeError::Input { path: path.to_owned(), line, message };
    // The columns the simulator's reader does not keep: times and model names.
    let mut lines = text.lines().enumerate().filter(|(_, line)| !line.trim().is_empty());
    let header: HashMap<String, usize> = lines
        .next()
        .map(|(_, header)| {
            header
                .split(',')
                .enumerate()
                .map(|(i, name)| (name.trim().trim_start_matches('\u{feff}').to_owned(), i))
                .collect()
        })
        .unwrap_or_default();
    let rows: Vec<(usize, Vec<&str>)> =
        lines.map(|(index, line)| (index + 1, line.split(',').map(str::trim).collect())).collect();
    fn field<'a>(header: &HashMap<String, usize>, row: &[&'a str], column: &str) -> &'a str {
        header.get(column).and_then(|i| row.get(*i).copied()).unwrap_or_default()
    }
    let seconds = |line: usize, row: &[&str], column: &str| -> Result<Option<f64>, SizeError> {
        let value = field(&header, row, column);
        if value.is_empty() {
            return Ok(None);
        }
        match value.parse::<f64>() {
            Ok(number) if number.is_finite() && number >= 0.0 => Ok(Some(number)),
            _ => Err(at(line, format!("column {column}: {value:?} is not a number of seconds (0 or more)"))),
        }
    };
    let mut notes = Vec::new();
    if list.format == TraceFormat::Alibaba {
        for column in ["creation_time", "deletion_time"] {
            if !header.contains_key(column) {
                return Err(at(
                    1,
                    format!(
                        "missing column {column:?}; sizing replays the trace's own times (creation_time, scheduled_time, deletion_time)"
                    ),
                ));
            }
        }
        notes.push(
            "Alibaba gpu_spec constraints name the trace's own GPU models (none of which are in the catalog), so they are ignored: every task accepts every catalog model"
                .into(),
        );
    }
    let mut tasks = Vec::new();
    let mut cpu_only = 0;
    for ((line, row), task) in rows.iter().zip(&list.tasks) {
        let line = *line;
        let mut shape = task.shape;
        if shape.gpu_count == 0 {
            cpu_only += 1;
            continue;
        }
        shape.models = ModelSet::ANY;
        let (arrival_s, run_s) = match list.format {
            TraceFormat::Native => {
                let arrival = task.arrival_s.unwrap_or_default();
                for name in field(&header, row, "gpu_spec").split('|').map(str::trim).filter(|name| !name.is_empty()) {
                    let lower = name.to_lowercase();
                    let mut matched = false;
                    for (id, model) in models.iter().enumerate() {
                        if model.to_lowercase().contains(&lower) {
                            shape.models = shape.models.with(id as u8);
                            matched = true;
                        }
                    }
                    if !matched {
                        return Err(at(
                            line,
                            format!(
                                "column gpu_spec: {name:?} matches no GPU model of the catalog ({})",
                                models.join(", ")
                            ),
                        ));
                    }
                }
                (arrival, task.departure_s.map(|departure| departure - arrival))
            }
            TraceFormat::Alibaba => {
                let Some(created) = seconds(line, row, "creation_time")? else {
                    return Err(at(line, "column creation_time: empty; sizing needs each task's arrival".into()));
                };
                let deleted = seconds(line, row, "deletion_time")?;
                let started =
                    seconds(line, row, "scheduled_time")?.filter(|started| *started >= created).unwrap_or(created);
                if let Some(deleted) = deleted
                    && deleted < started
                {
                    return Err(at(
                        line,
                        format!("column deletion_time: {deleted} is before the task started ({started})"),
                    ));
                }
                (created, deleted.map(|deleted| deleted - started))
            }
        };
        tasks.push(DemandTask { arrival_s, run_s, shape });
    }
    if tasks.is_empty() {
        return Err(at(2, "no GPU tasks: every task is CPU-only, so there is nothing to size GPU servers for".into()));
    }
    if cpu_only > 0 {
        notes.push(format!("{cpu_only} CPU-only tasks are left out: size CPU servers for them separately"));
    }
    let gpu_tasks = tasks.len();
    let tasks = grow(tasks, growth, seed);
    let summary = DemandSummary {
        path: path.display().to_string(),
        format: match list.format {
            TraceFormat::Native => "native".into(),
            TraceFormat::Alibaba => "alibaba".into(),
        },
        tasks_read: list.tasks.len(),
        gpu_tasks,
        cpu_only_left_out: cpu_only,
        growth,
        growth_seed: seed,
        tasks_after_growth: tasks.len(),
        notes,
    };
    Ok(Demand { tasks, models: models.to_vec(), summary })
}

/// Grows (or shrinks) the demand by `growth`: each task is kept `floor(growth)`
/// times, plus once more with probability `growth - floor(growth)`, drawn with
/// the seed. Copies arrive with their original.
fn grow(tasks: Vec<DemandTask>, growth: f64, seed: u64) -> Vec<DemandTask> {
    if growth == 1.0 {
        return tasks;
    }
    let mut rng = SplitMix64::new(seed);
    let whole = growth.floor() as usize;
    let fraction = growth - growth.floor();
    let mut grown = Vec::with_capacity((tasks.len() as f64 * growth) as usize + 1);
    for task in tasks {
        let extra = usize::from((rng.below(1_000_000) as f64) < fraction * 1_000_000.0);
        for _ in 0..whole + extra {
            grown.push(task.clone());
        }
    }
    grown
}

#[cfg(test)]
mod tests {
    use super::*;

    const NATIVE: &str = "name,team,arrival_s,departure_s,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec\n";

    fn parse(text: &str, growth: f64, seed: u64) -> Demand {
        let models = ["H100-SXM-80GB".to_owned(), "L4-24GB".to_owned()];
        parse_demand(Path::new("d.csv"), &format!("{NATIVE}{text}"), &models, growth, seed).expect("valid demand")
    }

    #[test]
    fn growth_copies_tasks_and_the_fraction_is_drawn_with_the_seed() {
        let rows: String =
            (0..1000).map(|index| format!("t{index},a,{index},{},1000,1,1,1000,\n", index + 10)).collect();
        assert_eq!(parse(&rows, 1.0, 1).tasks.len(), 1000);
        assert_eq!(parse(&rows, 2.0, 1).tasks.len(), 2000);
        let half = parse(&rows, 1.5, 7).tasks.len();
        assert!((1400..=1600).contains(&half), "{half}");
        assert_eq!(parse(&rows, 1.5, 7).tasks.len(), half, "the same seed draws the same copies");
        assert_ne!(parse(&rows, 1.5, 8).tasks.len(), half, "another seed draws others");
    }

    #[test]
    fn a_usage_history_becomes_tasks_and_a_broken_one_names_its_line() {
        let history = r#"{"format":1,"as_of_ms":7200000,"since_ms":0,"buckets":[
            {"start_ms":0,"length_ms":3600000,"until_ms":3600000,"teams":{"a":{"models":{"H100":{"allocated":7200000000}}}},"capacity":{}},
            {"start_ms":3600000,"length_ms":3600000,"until_ms":7200000,"teams":{"a":{"queued":10800000000}},"capacity":{}}]}"#;
        let models = ["H100-SXM-80GB".to_owned()];
        let demand = history_demand(Path::new("history.json"), history, &models, 1.0, 1).expect("a demand");
        assert_eq!(demand.summary.format, "history");
        // Two GPUs the first hour, three (waiting) the second: three one-GPU tasks.
        assert_eq!(demand.tasks.len(), 3);
        let runs: Vec<Option<f64>> = demand.tasks.iter().map(|task| task.run_s).collect();
        assert!(runs.contains(&Some(7200.0)) && runs.contains(&Some(3600.0)), "{runs:?}");
        let broken = history.replace("\"until_ms\":7200000", "\"until_ms\":\"soon\"");
        let error = history_demand(Path::new("history.json"), &broken, &models, 1.0, 1).expect_err("broken");
        assert!(error.to_string().starts_with("history.json:3: not a usage history"), "{error}");
        let empty = r#"{"format":1,"as_of_ms":0,"since_ms":0,"buckets":[]}"#;
        let error = history_demand(Path::new("h.json"), empty, &models, 1.0, 1).expect_err("empty");
        assert!(error.to_string().contains("no GPU demand"), "{error}");
    }

    #[test]
    fn gpu_spec_names_catalog_models_by_substring_and_cpu_only_tasks_are_left_out() {
        let demand =
            parse("a,x,0,10,1000,1,1,1000,h100\nb,x,0,10,1000,1,1,500,L4|H100\nc,x,0,10,1000,1,0,0,\n", 1.0, 1);
        assert_eq!(demand.tasks.len(), 2);
        assert!(demand.tasks[0].shape.models.allows(0) && !demand.tasks[0].shape.models.allows(1));
        assert!(demand.tasks[1].shape.models.allows(0) && demand.tasks[1].shape.models.allows(1));
        assert_eq!(demand.summary.cpu_only_left_out, 1);
        assert_eq!(demand.tasks[0].run_s, Some(10.0));
    }
}
