//! Reading clusters and task lists: the Alibaba GPU-sharing trace's CSV files
//! (cluster-trace-gpu-v2023) and Allot's native task format, which adds teams and
//! arrival and departure times.
//!
//! Columns are found by their header name, so their order does not matter; an
//! unknown column, a missing required one or a bad value is an error that names
//! the file, the line and the column.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use allot_placement::fragment::{MAX_GPUS_PER_NODE, ModelSet, TaskShape, WHOLE_GPU_MILLI};

use crate::SimError;

/// Model ids go up to 62; bit 63 of a [`ModelSet`] stands for models the cluster
/// does not have, so a task that accepts only those never fits (rather than
/// fitting anywhere, which the empty set would mean).
const MAX_MODELS: usize = 63;
const UNKNOWN_MODEL_BIT: u8 = 63;

/// One node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    pub name: String,
    pub cpu_milli: u32,
    pub memory_mib: u64,
    pub gpus: u8,
    /// Index into [`Cluster::models`]; meaningless when `gpus` is 0.
    pub model: u8,
}

/// The cluster a trace replays against.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Cluster {
    pub nodes: Vec<NodeSpec>,
    /// GPU model names, by id.
    pub models: Vec<String>,
}

impl Cluster {
    pub fn gpu_count(&self) -> u64 {
        self.nodes.iter().map(|node| u64::from(node.gpus)).sum()
    }

    /// The GPU capacity in milli-GPU.
    pub fn gpu_milli(&self) -> u64 {
        self.gpu_count() * u64::from(WHOLE_GPU_MILLI)
    }

    fn model_id(&self, name: &str) -> Option<u8> {
        self.models.iter().position(|model| model == name).map(|id| id as u8)
    }
}

/// Which format a task list was in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceFormat {
    /// The Alibaba trace: no teams; its times are not replayed (the published
    /// protocol shuffles the tasks and never lets them finish).
    Alibaba,
    /// Allot's native format: arrival and departure times, teams.
    Native,
}

/// One task of a list.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    pub name: String,
    pub team: String,
    /// Seconds from the start of the trace (native format only).
    pub arrival_s: Option<f64>,
    /// When it leaves and frees its capacity; `None` means never.
    pub departure_s: Option<f64>,
    pub shape: TaskShape,
}

/// A task list read from a file.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskList {
    pub format: TraceFormat,
    pub tasks: Vec<Task>,
}

const NODE_COLUMNS: [&str; 5] = ["sn", "cpu_milli", "memory_mib", "gpu", "model"];
const ALIBABA_TASK_REQUIRED: [&str; 5] = ["name", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli"];
const ALIBABA_TASK_OPTIONAL: [&str; 6] =
    ["gpu_spec", "qos", "pod_phase", "creation_time", "deletion_time", "scheduled_time"];
const NATIVE_TASK_REQUIRED: [&str; 6] = ["name", "arrival_s", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli"];
const NATIVE_TASK_OPTIONAL: [&str; 3] = ["team", "departure_s", "gpu_spec"];

/// One CSV file: the header's column positions and the data rows with their line
/// numbers (1-based, as an editor shows them).
struct Table {
    path: PathBuf,
    columns: HashMap<String, usize>,
    rows: Vec<(usize, Vec<String>)>,
}

impl Table {
    fn parse(path: &Path, text: &str, required: &[&str], optional: &[&str]) -> Result<Table, SimError> {
        let mut lines = text.lines().enumerate().filter(|(_, line)| !line.trim().is_empty());
        let Some((header_index, header)) = lines.next() else {
            return Err(SimError::at(path, 1, "the file is empty; expected a header line naming the columns"));
        };
        let mut columns = HashMap::new();
        for (position, name) in header.split(',').enumerate() {
            let name = name.trim().trim_start_matches('\u{feff}').to_owned();
            if !required.contains(&name.as_str()) && !optional.contains(&name.as_str()) {
                let mut known: Vec<&str> = required.iter().chain(optional).copied().collect();
                known.sort_unstable();
                return Err(SimError::at(
                    path,
                    header_index + 1,
                    format!("unknown column {name:?}; the columns this format knows are {}", known.join(", ")),
                ));
            }
            if columns.insert(name.clone(), position).is_some() {
                return Err(SimError::at(path, header_index + 1, format!("column {name:?} appears twice")));
            }
        }
        for name in required {
            if !columns.contains_key(*name) {
                return Err(SimError::at(
                    path,
                    header_index + 1,
                    format!("missing column {name:?}; this format needs {}", required.join(", ")),
                ));
            }
        }
        let width = columns.len();
        let mut rows = Vec::new();
        for (index, line) in lines {
            if line.contains('"') {
                return Err(SimError::at(path, index + 1, "quoted fields are not supported; remove the quotes"));
            }
            let fields: Vec<String> = line.split(',').map(|field| field.trim().to_owned()).collect();
            if fields.len() != width {
                return Err(SimError::at(
                    path,
                    index + 1,
                    format!("{} fields, but the header has {width} columns", fields.len()),
                ));
            }
            rows.push((index + 1, fields));
        }
        Ok(Table { path: path.to_owned(), columns, rows })
    }

    fn field<'r>(&self, row: &'r [String], column: &str) -> Option<&'r str> {
        self.columns.get(column).and_then(|position| row.get(*position)).map(String::as_str)
    }

    fn number<T: std::str::FromStr>(
        &self,
        line: usize,
        row: &[String],
        column: &str,
        what: &str,
    ) -> Result<T, SimError> {
        let value = self.field(row, column).unwrap_or_default();
        value
            .parse::<T>()
            .map_err(|_| SimError::at(&self.path, line, format!("column {column}: {value:?} is not {what}")))
    }

    fn optional_seconds(&self, line: usize, row: &[String], column: &str) -> Result<Option<f64>, SimError> {
        match self.field(row, column) {
            None | Some("") => Ok(None),
            Some(value) => match value.parse::<f64>() {
                Ok(seconds) if seconds.is_finite() && seconds >= 0.0 => Ok(Some(seconds)),
                _ => Err(SimError::at(
                    &self.path,
                    line,
                    format!("column {column}: {value:?} is not a number of seconds (0 or more)"),
                )),
            },
        }
    }
}

fn read(path: &Path) -> Result<String, SimError> {
    std::fs::read_to_string(path).map_err(|source| SimError::Io { path: path.to_owned(), source })
}

/// Reads a node list (`sn,cpu_milli,memory_mib,gpu,model`).
pub fn read_cluster(path: &Path) -> Result<Cluster, SimError> {
    parse_cluster(path, &read(path)?)
}

/// Parses a node list; `path` is only for messages.
pub fn parse_cluster(path: &Path, text: &str) -> Result<Cluster, SimError> {
    let table = Table::parse(path, text, &NODE_COLUMNS, &[])?;
    let mut cluster = Cluster::default();
    for (line, row) in &table.rows {
        let line = *line;
        let name = table.field(row, "sn").unwrap_or_default().to_owned();
        if name.is_empty() {
            return Err(SimError::at(path, line, "column sn: the node name is empty"));
        }
        let cpu_milli: u32 = table.number(line, row, "cpu_milli", "a whole number of milli-CPU")?;
        let memory_mib: u64 = table.number(line, row, "memory_mib", "a whole number of MiB")?;
        let gpus: u32 = table.number(line, row, "gpu", "a whole number of GPUs")?;
        if gpus as usize > MAX_GPUS_PER_NODE {
            return Err(SimError::at(
                path,
                line,
                format!("column gpu: {gpus} GPUs; the simulator models at most {MAX_GPUS_PER_NODE} per node"),
            ));
        }
        let model_name = table.field(row, "model").unwrap_or_default();
        let model = if gpus == 0 {
            0
        } else if model_name.is_empty() {
            return Err(SimError::at(path, line, "column model: a node with GPUs needs its GPU model"));
        } else {
            match cluster.model_id(model_name) {
                Some(id) => id,
                None => {
                    if cluster.models.len() >= MAX_MODELS {
                        return Err(SimError::at(
                            path,
                            line,
                            format!("more than {MAX_MODELS} GPU models; the simulator supports {MAX_MODELS}"),
                        ));
                    }
                    cluster.models.push(model_name.to_owned());
                    (cluster.models.len() - 1) as u8
                }
            }
        };
        cluster.nodes.push(NodeSpec { name, cpu_milli, memory_mib, gpus: gpus as u8, model });
    }
    if cluster.nodes.is_empty() {
        return Err(SimError::at(path, 2, "no nodes: the file has a header but no rows"));
    }
    Ok(cluster)
}

/// Reads a task list, Alibaba or native (told apart by an `arrival_s` column).
pub fn read_tasks(path: &Path, cluster: &Cluster) -> Result<TaskList, SimError> {
    parse_tasks(path, &read(path)?, cluster)
}

/// Parses a task list; `path` is only for messages.
pub fn parse_tasks(path: &Path, text: &str, cluster: &Cluster) -> Result<TaskList, SimError> {
    let header = text.lines().find(|line| !line.trim().is_empty()).unwrap_or_default();
    let native = header.split(',').any(|column| column.trim() == "arrival_s");
    let table = if native {
        Table::parse(path, text, &NATIVE_TASK_REQUIRED, &NATIVE_TASK_OPTIONAL)?
    } else {
        Table::parse(path, text, &ALIBABA_TASK_REQUIRED, &ALIBABA_TASK_OPTIONAL)?
    };
    let mut tasks = Vec::with_capacity(table.rows.len());
    for (line, row) in &table.rows {
        let line = *line;
        let name = table.field(row, "name").unwrap_or_default().to_owned();
        if name.is_empty() {
            return Err(SimError::at(path, line, "column name: the task name is empty"));
        }
        let cpu_milli: u32 = table.number(line, row, "cpu_milli", "a whole number of milli-CPU")?;
        let memory_mib: u64 = table.number(line, row, "memory_mib", "a whole number of MiB")?;
        let gpu_count: u32 = table.number(line, row, "num_gpu", "a whole number of GPUs")?;
        let gpu_milli: u32 = table.number(line, row, "gpu_milli", "a whole number of milli-GPU")?;
        let bad = |message: String| SimError::at(path, line, message);
        if gpu_count as usize > MAX_GPUS_PER_NODE {
            return Err(bad(format!("column num_gpu: {gpu_count} GPUs; at most {MAX_GPUS_PER_NODE} per task")));
        }
        if gpu_count == 0 && gpu_milli != 0 {
            return Err(bad(format!("column gpu_milli: {gpu_milli} with num_gpu 0; a CPU-only task has gpu_milli 0")));
        }
        if gpu_count > 0 && !(1..=1000).contains(&gpu_milli) {
            return Err(bad(format!("column gpu_milli: {gpu_milli}; a GPU task needs 1 to 1000 milli-GPU per GPU")));
        }
        if gpu_count > 1 && gpu_milli != 1000 {
            return Err(bad(format!(
                "columns num_gpu and gpu_milli: {gpu_count} GPUs of {gpu_milli} milli each; a task of more than one GPU takes whole GPUs (gpu_milli 1000)"
            )));
        }
        let mut models = ModelSet::ANY;
        let spec = table.field(row, "gpu_spec").unwrap_or_default();
        if !spec.is_empty() {
            for model in spec.split('|').map(str::trim).filter(|model| !model.is_empty()) {
                models = match cluster.model_id(model) {
                    Some(id) => models.with(id),
                    None => models.with(UNKNOWN_MODEL_BIT),
                };
            }
        }
        let (team, arrival_s, departure_s) = if native {
            let arrival = table.optional_seconds(line, row, "arrival_s")?;
            let Some(arrival) = arrival else {
                return Err(bad("column arrival_s: empty; every task needs its arrival time in seconds".into()));
            };
            let departure = table.optional_seconds(line, row, "departure_s")?;
            if let Some(departure) = departure
                && departure < arrival
            {
                return Err(bad(format!("column departure_s: {departure} is before the arrival ({arrival})")));
            }
            let team = table.field(row, "team").unwrap_or_default();
            (if team.is_empty() { "default".to_owned() } else { team.to_owned() }, Some(arrival), departure)
        } else {
            ("default".to_owned(), None, None)
        };
        let shape =
            TaskShape { cpu_milli, memory_mib, gpu_count: gpu_count as u8, gpu_milli: gpu_milli as u16, models };
        tasks.push(Task { name, team, arrival_s, departure_s, shape });
    }
    if tasks.is_empty() {
        return Err(SimError::at(path, 2, "no tasks: the file has a header but no rows"));
    }
    Ok(TaskList { format: if native { TraceFormat::Native } else { TraceFormat::Alibaba }, tasks })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODES: &str =
        "sn,cpu_milli,memory_mib,gpu,model\nn0,64000,262144,2,P100\nn1,96000,393216,8,G2\ncpu,32000,1000,0,\n";

    fn cluster() -> Cluster {
        parse_cluster(Path::new("nodes.csv"), NODES).expect("valid nodes")
    }

    fn tasks_error(text: &str) -> String {
        match parse_tasks(Path::new("tasks.csv"), text, &cluster()) {
            Ok(_) => panic!("expected an error for {text:?}"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn reads_the_alibaba_node_and_task_lists() {
        let cluster = cluster();
        assert_eq!(cluster.models, vec!["P100", "G2"]);
        assert_eq!(cluster.gpu_count(), 10);
        assert_eq!(cluster.nodes[1].model, 1);
        let text = "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time\n\
            p0,12000,16384,1,1000,,LS,Running,0,12537496,0\n\
            p1,6000,12288,1,460,G2|T4,LS,Running,1,2,1\n\
            p2,1000,100,0,0,,BE,Running,1,2,1\n\
            p3,1000,100,1,500,T4,BE,Running,1,2,1\n";
        let list = parse_tasks(Path::new("tasks.csv"), text, &cluster).expect("valid tasks");
        assert_eq!(list.format, TraceFormat::Alibaba);
        assert_eq!(list.tasks.len(), 4);
        let picky = list.tasks[1].shape;
        assert!(picky.is_share() && picky.models.allows(1) && !picky.models.allows(0));
        assert!(
            !list.tasks[3].shape.models.allows(0) && !list.tasks[3].shape.models.allows(1),
            "T4 is not in the cluster"
        );
        assert!(list.tasks[0].departure_s.is_none(), "Alibaba times are not replayed");
    }

    #[test]
    fn reads_the_native_format_with_teams_and_departures() {
        let text = "name,team,arrival_s,departure_s,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec\n\
            a,vision,0,100,1000,1024,1,250,P100\n\
            b,,5,,1000,1024,2,1000,\n";
        let list = parse_tasks(Path::new("native.csv"), text, &cluster()).expect("valid native list");
        assert_eq!(list.format, TraceFormat::Native);
        assert_eq!(list.tasks[0].team, "vision");
        assert_eq!(list.tasks[0].departure_s, Some(100.0));
        assert_eq!(list.tasks[1].team, "default");
        assert_eq!(list.tasks[1].departure_s, None);
    }

    #[test]
    fn bad_rows_are_reported_with_file_line_and_column() {
        let header = "name,cpu_milli,memory_mib,num_gpu,gpu_milli\n";
        let cases = [
            (format!("{header}p0,1000,10,1,500\np1,abc,10,1,500\n"), "tasks.csv:3: column cpu_milli: \"abc\" is not"),
            (format!("{header}p0,1000,10,1\n"), "tasks.csv:2: 4 fields, but the header has 5 columns"),
            (format!("{header}p0,1000,10,2,500\n"), "tasks.csv:2: columns num_gpu and gpu_milli"),
            (format!("{header}p0,1000,10,1,0\n"), "tasks.csv:2: column gpu_milli: 0"),
            (format!("{header}p0,1000,10,0,10\n"), "tasks.csv:2: column gpu_milli: 10 with num_gpu 0"),
            (
                "name,cpu_milli,memory_mib,num_gpu,gpu_milli,colour\n".to_owned(),
                "tasks.csv:1: unknown column \"colour\"",
            ),
            ("name,cpu_milli,memory_mib,num_gpu\n".to_owned(), "tasks.csv:1: missing column \"gpu_milli\""),
            (header.to_owned(), "tasks.csv:2: no tasks"),
            (String::new(), "tasks.csv:1: the file is empty"),
            (
                "name,arrival_s,departure_s,cpu_milli,memory_mib,num_gpu,gpu_milli\na,10,5,1,1,0,0\n".to_owned(),
                "tasks.csv:2: column departure_s: 5 is before the arrival",
            ),
        ];
        for (text, expected) in cases {
            let error = tasks_error(&text);
            assert!(error.starts_with(expected), "{error:?} should start with {expected:?}");
        }
        let error = parse_cluster(Path::new("nodes.csv"), "sn,cpu_milli,memory_mib,gpu,model\nn0,1,1,2,\n")
            .expect_err("a GPU node without model");
        assert!(error.to_string().starts_with("nodes.csv:2: column model"), "{error}");
    }
}
