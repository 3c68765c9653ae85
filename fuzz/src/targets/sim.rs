//! The simulator's readers: the Alibaba GPU trace's node and pod lists and the
//! native task format (`allot_sim::trace`), and the sizing tool's demand reader
//! (`allot_sim::size::demand`: a native or Alibaba task list with its times, or a
//! usage history as JSON). Every input goes to every reader; each rejects in
//! its own words.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use allot_sim::size::demand::{history_demand, parse_demand};
use allot_sim::trace::{Cluster, parse_cluster, parse_tasks};

use super::{as_is, message_of, text};
use crate::engine::{Outcome, Target};

const DICTIONARY: &[&str] = &[
    "sn,cpu_milli,memory_mib,gpu,model\n",
    "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time\n",
    "name,team,arrival_s,departure_s,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec\n",
    "sn",
    "cpu_milli",
    "memory_mib",
    "gpu",
    "model",
    "name",
    "num_gpu",
    "gpu_milli",
    "gpu_spec",
    "arrival_s",
    "departure_s",
    "team",
    "creation_time",
    "deletion_time",
    "scheduled_time",
    "qos",
    "pod_phase",
    "P100",
    "G2",
    "T4",
    "V100M16",
    "H100",
    "P100|T4",
    "|",
    "||",
    ",",
    ",,",
    "\n",
    "\r\n",
    "\u{feff}",
    "\"",
    "LS",
    "BE",
    "Running",
    "{\"format\":1,\"as_of_ms\":0,\"since_ms\":0,\"buckets\":[]}",
    "{",
];

pub const TARGET: Target = Target {
    name: "sim-csv",
    summary: "the simulator's readers: Alibaba node and pod lists, the native task format, the sizing demand (CSV or usage history)",
    run,
    structured: None,
    dictionary: DICTIONARY,
    max_len: 128 * 1024,
    // A usage history at allot-history's bound (a million tasks) takes a second
    // in a release build, seven in a debug one: slow by design, not a hang.
    time_limit: Duration::from_secs(5),
    load: as_is,
    isolate: false,
    debug_only_aborts: &[],
    scratch: None,
};

/// The catalog's model names, as `allotctl size` passes them to the demand reader.
const MODELS: &[&str] = &["H100-SXM-80GB", "L40S-48GB", "L4-24GB"];

/// A cluster with the trace's GPU models, for the task readers' `gpu_spec`.
fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let nodes = "sn,cpu_milli,memory_mib,gpu,model\nn0,64000,262144,2,P100\nn1,96000,393216,8,G2\nn2,96000,393216,4,T4\ncpu,32000,1000,0,\n";
        parse_cluster(Path::new("nodes.csv"), nodes).unwrap_or_else(|error| panic!("the built-in cluster: {error}"))
    })
}

fn run(input: &[u8]) -> Outcome {
    let text = text(input);
    let path = Path::new("input.csv");
    let mut accepted = Vec::new();
    let mut last_error = None;
    match parse_cluster(path, &text) {
        Ok(parsed) => {
            assert!(!parsed.nodes.is_empty(), "a cluster without nodes was accepted");
            accepted.push("cluster");
        }
        Err(error) => last_error = Some(message_of(error)),
    }
    match parse_tasks(path, &text, cluster()) {
        Ok(list) => {
            assert!(!list.tasks.is_empty(), "a task list without tasks was accepted");
            accepted.push(if list.tasks.iter().any(|task| task.arrival_s.is_some()) { "native" } else { "alibaba" });
        }
        Err(error) => last_error = Some(message_of(error)),
    }
    // As `read_demand` chooses: a usage history is JSON, anything else a task list.
    let models: Vec<String> = MODELS.iter().map(|model| (*model).to_owned()).collect();
    let demand = if text.trim_start().starts_with('{') {
        history_demand(path, &text, &models, 1.5, 7)
    } else {
        parse_demand(path, &text, &models, 1.5, 7)
    };
    match demand {
        Ok(demand) => {
            assert!(!demand.tasks.is_empty(), "a demand without tasks was accepted");
            accepted.push("demand");
        }
        Err(error) => last_error = Some(message_of(error)),
    }
    match last_error {
        Some(error) if accepted.is_empty() => Err(error),
        _ => Ok(accepted.join(" ")),
    }
}
