//! `allotctl export yarn`: the quota tree as CapacityScheduler queues.
//!
//! The organisation/team/project tree becomes the queue tree under `root`, each
//! queue named after its team (the YARN plugin maps a queue's leaf name to the
//! team of that name). A team's GPU guarantee becomes the queue's capacity and its
//! GPU limit the queue's maximum capacity, either as percentages of the parent
//! (`--capacity percent`, what CapacityScheduler does natively) or as absolute
//! resources (`--capacity absolute`, `[memory=..,vcores=..,allot.io/gpu=..]`).
//! Where Allot's tree leaves part of a parent unguaranteed, percentages must
//! still add up to 100: a stopped leaf `allot_unreserved` holds the rest, so no
//! application runs there and its share stays free for the others to borrow.
//!
//! Rendering is a pure function of the teams and the options, so re-running it
//! after a quota change gives a diff an admin can review; the files are written to
//! a temporary folder and renamed into place, so `--out` never holds half an
//! export.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use allot_api::allocation::TeamName;
use allot_api::proto;
use allot_policy::{Quota, QuotaTree, ResourceClass, Resources, TeamSpec, TeamsFile};
use clap::{Args, Subcommand, ValueEnum};

use crate::{CtlError, Format};

/// The queue that holds what no team is guaranteed (a name no team can have:
/// team names have no `_`).
pub const UNRESERVED: &str = "allot_unreserved";

#[derive(Debug, Subcommand)]
pub enum ExportCommand {
    /// CapacityScheduler queues, resource types and NodeManager settings for YARN.
    Yarn(YarnArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CapacityForm {
    /// Capacities as percentages of the parent queue.
    Percent,
    /// Capacities as absolute resources: memory, vcores and GPUs.
    Absolute,
}

#[derive(Debug, Args)]
pub struct YarnArgs {
    /// The folder to write (replaced as a whole).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Export a teams file instead of the broker's tree (no broker needed; give --cluster-gpus).
    #[arg(long, value_name = "FILE")]
    pub teams_file: Option<PathBuf>,
    /// GPUs in the YARN cluster (default: the GPUs of the nodes the broker knows).
    #[arg(long)]
    pub cluster_gpus: Option<u32>,
    /// How capacities are written.
    #[arg(long, value_enum, default_value_t = CapacityForm::Percent)]
    pub capacity: CapacityForm,
    /// Absolute form: host memory per guaranteed GPU, in GiB, for teams that guarantee no memory.
    #[arg(long, value_name = "GIB")]
    pub memory_per_gpu: Option<u32>,
    /// Absolute form: vcores per guaranteed GPU, for teams that guarantee no CPU.
    #[arg(long, value_name = "N")]
    pub vcores_per_gpu: Option<u32>,
    /// The YARN resource name of Allot's GPUs (the plugin's allot.yarn.resource-name).
    #[arg(long, default_value = "allot.io/gpu")]
    pub resource_name: String,
    /// The broker address NodeManagers use (default: --broker).
    #[arg(long, value_name = "HOST:PORT")]
    pub node_broker: Option<String>,
}

/// What the export is made from.
#[derive(Debug, Clone)]
pub struct Source {
    /// Where the tree came from, for the files' headers.
    pub origin: String,
    pub teams: Vec<TeamSpec>,
    pub gpu_values: BTreeMap<String, u32>,
    /// GPUs in the cluster, when known.
    pub cluster_gpus: Option<u32>,
    /// Live allocations per team, to refuse a tree whose non-leaf teams hold some.
    pub live_allocations: BTreeMap<String, Vec<String>>,
}

/// How to write it.
#[derive(Debug, Clone)]
pub struct Options {
    pub form: CapacityForm,
    pub memory_per_gpu_gib: Option<u32>,
    pub vcores_per_gpu: Option<u32>,
    pub resource_name: String,
    pub node_broker: String,
}

/// One exported file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    pub name: &'static str,
    pub text: String,
}

/// One queue's figures, for the summary and the tests.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct QueueLine {
    pub path: String,
    /// The capacity as written (`50`, `[memory=..]`).
    pub capacity: String,
    pub maximum_capacity: Option<String>,
    /// Guaranteed GPUs, and the GPU limit (none: unlimited).
    pub gpus: f64,
    pub gpu_limit: Option<f64>,
}

#[derive(Debug, Clone)]
pub struct Export {
    pub files: Vec<File>,
    pub queues: Vec<QueueLine>,
}

const GPU: u64 = 1000; // milli-GPU per GPU

/// A team's guaranteed GPUs in milli-GPU: `gpu/any` when it declares it, else
/// the sum of its per-family guarantees.
fn guaranteed_gpus(quota: &Quota) -> u64 {
    match quota.guaranteed.0.get(&ResourceClass::GpuAny) {
        Some(any) => *any,
        None => quota.guaranteed.0.iter().filter(|(class, _)| class.is_gpu()).map(|(_, amount)| amount).sum(),
    }
}

/// A team's GPU limit: `gpu/any` (a per-family limit leaves other families free).
fn gpu_limit(quota: &Quota) -> Option<u64> {
    quota.limit.0.get(&ResourceClass::GpuAny).copied()
}

fn gpus_text(milli: u64) -> String {
    trim(milli as f64 / GPU as f64, 3)
}

/// A number with at most `decimals` decimals, without trailing zeros.
fn trim(value: f64, decimals: usize) -> String {
    let text = format!("{value:.decimals$}");
    if text.contains('.') { text.trim_end_matches('0').trim_end_matches('.').to_owned() } else { text }
}

/// Percent of `part` in `whole`, rounded up to 5 decimals, at most 100.
/// CapacityScheduler multiplies the percentages down the tree in `float` and
/// rounds the product down to whole GPUs, so a capacity rounded down could lose
/// a GPU (2 of 6 under 6 of 8 must give 2, not 1.99998); rounded up, siblings
/// overshoot 100 by at most 0.00001 each, far inside its 0.05% tolerance.
fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        return if part == 0 { 0.0 } else { 100.0 };
    }
    (((part as f64 * 10_000_000.0) / whole as f64).ceil() / 100_000.0).min(100.0)
}

fn describe(resources: &Resources) -> String {
    if resources.0.is_empty() { "none".into() } else { resources.describe() }
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A comment's text cannot hold `--`.
fn comment_text(text: &str) -> String {
    text.replace("--", "- -")
}

struct Xml {
    text: String,
}

impl Xml {
    fn new(header: &[String]) -> Xml {
        let mut text = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        for line in header {
            let _ = writeln!(text, "<!-- {} -->", comment_text(line));
        }
        text.push_str("<configuration>\n");
        Xml { text }
    }

    fn comment(&mut self, line: &str) {
        let _ = writeln!(self.text, "  <!-- {} -->", comment_text(line));
    }

    fn property(&mut self, name: &str, value: &str) {
        let _ = writeln!(
            self.text,
            "  <property>\n    <name>{}</name>\n    <value>{}</value>\n  </property>",
            xml_escape(name),
            xml_escape(value)
        );
    }

    fn finish(mut self) -> String {
        self.text.push_str("</configuration>\n");
        self.text
    }
}

/// The absolute resources of one queue: memory in MiB, vcores, milli-GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Vector {
    memory_mib: u64,
    vcores: u64,
    gpus: u64,
}

impl Vector {
    fn text(&self, resource: &str) -> String {
        format!("[memory={},vcores={},{resource}={}]", self.memory_mib, self.vcores, self.gpus / GPU)
    }

    fn min(self, other: Vector) -> Vector {
        Vector {
            memory_mib: self.memory_mib.min(other.memory_mib),
            vcores: self.vcores.min(other.vcores),
            gpus: self.gpus.min(other.gpus),
        }
    }

    fn max(self, other: Vector) -> Vector {
        Vector {
            memory_mib: self.memory_mib.max(other.memory_mib),
            vcores: self.vcores.max(other.vcores),
            gpus: self.gpus.max(other.gpus),
        }
    }
}

/// Everything the export needs to know about the tree, checked.
struct Tree<'a> {
    specs: BTreeMap<&'a str, &'a TeamSpec>,
    children: BTreeMap<&'a str, Vec<&'a str>>,
    tops: Vec<&'a str>,
}

impl<'a> Tree<'a> {
    fn new(teams: &'a [TeamSpec]) -> Tree<'a> {
        let specs: BTreeMap<&str, &TeamSpec> = teams.iter().map(|spec| (spec.name.as_str(), spec)).collect();
        let mut children: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        let mut tops = Vec::new();
        for spec in specs.values() {
            match &spec.parent {
                Some(parent) => children.entry(parent.as_str()).or_default().push(spec.name.as_str()),
                None => tops.push(spec.name.as_str()),
            }
        }
        Tree { specs, children, tops }
    }

    fn kids(&self, name: &str) -> &[&'a str] {
        self.children.get(name).map(Vec::as_slice).unwrap_or(&[])
    }
}

/// Renders the export, or every reason the tree cannot be expressed as
/// CapacityScheduler queues (each naming its team).
pub fn render(source: &Source, options: &Options) -> Result<Export, Vec<String>> {
    let mut problems = Vec::new();
    // The tree as Allot checks it: a teams file may not have been applied yet.
    let families: BTreeSet<String> = source
        .teams
        .iter()
        .flat_map(|spec| [&spec.quota.guaranteed, &spec.quota.limit, &spec.quota.lending_limit])
        .flat_map(|amounts| amounts.0.keys())
        .filter_map(|class| match class {
            ResourceClass::GpuFamily(family) => Some(family.clone()),
            _ => None,
        })
        .collect();
    if let Err(errors) = QuotaTree::new(source.teams.clone(), source.gpu_values.clone(), &families) {
        problems.extend(errors.into_iter().map(|error| format!("{}: {}", error.place, error.problem)));
        return Err(problems);
    }
    let tree = Tree::new(&source.teams);
    if tree.tops.is_empty() {
        return Err(vec![
            "there are no teams to export; create them first (allotctl team create, allotctl apply)".into(),
        ]);
    }
    for (team, ids) in &source.live_allocations {
        if !tree.kids(team).is_empty() {
            problems.push(format!(
                "team \"{team}\" has teams under it and also holds live allocations ({}); CapacityScheduler runs \
                 applications only in leaf queues: release them or move the work to a team without children",
                ids.join(", ")
            ));
        }
    }
    if !valid_resource_name(&options.resource_name) {
        problems.push(format!(
            "--resource-name {:?} is not a YARN resource name: use letters, digits, '-', '_' and '.', optionally \
             with a prefix like allot.io/",
            options.resource_name
        ));
    }
    let Some(cluster_gpus) = source.cluster_gpus.map(|count| count as u64 * GPU) else {
        problems.push(
            "how many GPUs does the YARN cluster have? Give --cluster-gpus (the broker knows no nodes yet, or a \
             teams file was given)"
                .into(),
        );
        return Err(problems);
    };
    let top_sum: u64 = tree.tops.iter().map(|top| guaranteed_gpus(&tree.specs[top].quota)).sum();
    if top_sum > cluster_gpus {
        problems.push(format!(
            "the top-level teams are guaranteed {} GPUs together, more than the cluster's {}; raise --cluster-gpus \
             or lower the guarantees",
            gpus_text(top_sum),
            gpus_text(cluster_gpus)
        ));
    }
    for (parent, kids) in &tree.children {
        let own = guaranteed_gpus(&tree.specs[parent].quota);
        let sum: u64 = kids.iter().map(|kid| guaranteed_gpus(&tree.specs[kid].quota)).sum();
        if sum > own {
            problems.push(format!(
                "team \"{parent}\": its teams are guaranteed {} GPUs together, more than its own {} (a YARN queue's \
                 children cannot be guaranteed more than it; declare gpu/any on \"{parent}\" to cover them)",
                gpus_text(sum),
                gpus_text(own)
            ));
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let (capacity_lines, queues) = match options.form {
        CapacityForm::Percent => percent_queues(&tree, cluster_gpus)?,
        CapacityForm::Absolute => absolute_queues(&tree, cluster_gpus, options)?,
    };
    let header = vec![
        format!("Generated by allotctl export yarn from {}.", source.origin),
        "Do not edit: change the teams in Allot and export again (the output is stable, so diff it).".into(),
    ];
    let mut capacity = Xml::new(&header);
    capacity.comment("GPUs are a resource of their own: compare queues by their dominant resource.");
    capacity.property(
        "yarn.scheduler.capacity.resource-calculator",
        "org.apache.hadoop.yarn.util.resource.DominantResourceCalculator",
    );
    for line in capacity_lines {
        match line {
            Line::Comment(text) => capacity.comment(&text),
            Line::Property(name, value) => capacity.property(&name, &value),
        }
    }
    let mut types = Xml::new(&header);
    types.comment("The ResourceManager and every NodeManager need this file.");
    types.property("yarn.resource-types", &options.resource_name);
    let mut node = Xml::new(&header);
    node.comment("Merge into yarn-site.xml on every NodeManager with Allot GPUs.");
    node.property("yarn.nodemanager.pluggable-device-framework.enabled", "true");
    node.property("yarn.nodemanager.pluggable-device-framework.device-classes", "io.allot.yarn.AllotDevicePlugin");
    node.comment("Keep the aux services you already have (spark_shuffle ...), comma-separated.");
    node.property("yarn.nodemanager.aux-services", "allot");
    node.property("yarn.nodemanager.aux-services.allot.class", "io.allot.yarn.AllotReleaseService");
    node.comment("Devices cgroup isolation needs the LinuxContainerExecutor, as for YARN's own GPU plugin.");
    node.property(
        "yarn.nodemanager.container-executor.class",
        "org.apache.hadoop.yarn.server.nodemanager.LinuxContainerExecutor",
    );
    node.property("allot.yarn.broker", &options.node_broker);
    node.property("allot.yarn.token-file", "/etc/allot/yarn.token");
    if !allot_api::tls::is_plaintext(&options.node_broker) {
        node.comment(
            "Mutual TLS: the broker's CA, and this NodeManager's certificate (allot-broker pki issue --subject NAME).",
        );
        node.property("allot.yarn.tls.ca", "/etc/allot/pki/ca.pem");
        node.property("allot.yarn.tls.cert", "/etc/allot/pki/yarn-nm.pem");
        node.property("allot.yarn.tls.key", "/etc/allot/pki/yarn-nm-key.pem");
    }
    node.property("allot.yarn.resource-name", &options.resource_name);
    node.comment("Queues are named after teams: a container's queue leaf names its team.");
    node.property("allot.yarn.queue-leaf-is-team", "true");
    let mut manager = Xml::new(&header);
    manager.comment("Merge into yarn-site.xml on the ResourceManager.");
    manager.property(
        "yarn.resourcemanager.scheduler.class",
        "org.apache.hadoop.yarn.server.resourcemanager.scheduler.capacity.CapacityScheduler",
    );
    manager
        .comment("Preemption returns borrowed capacity to the queue that is guaranteed it, as Allot's reclaim does.");
    manager.property("yarn.resourcemanager.scheduler.monitor.enable", "true");
    manager.property(
        "yarn.resourcemanager.scheduler.monitor.policies",
        "org.apache.hadoop.yarn.server.resourcemanager.monitor.capacity.ProportionalCapacityPreemptionPolicy",
    );
    let files = vec![
        File { name: "capacity-scheduler.xml", text: capacity.finish() },
        File { name: "resource-types.xml", text: types.finish() },
        File { name: "yarn-site.nodemanager.xml", text: node.finish() },
        File { name: "yarn-site.resourcemanager.xml", text: manager.finish() },
        File { name: "README.md", text: readme(source, options, &queues) },
    ];
    Ok(Export { files, queues })
}

enum Line {
    Comment(String),
    Property(String, String),
}

fn prefix(path: &str) -> String {
    format!("yarn.scheduler.capacity.{path}")
}

/// What Allot says of a team that the queue cannot carry, as a comment.
fn quota_comment(spec: &TeamSpec) -> String {
    let quota = &spec.quota;
    let mut text = format!(
        "team {}: weight {}, guaranteed {}, limit {}",
        spec.name,
        quota.weight,
        describe(&quota.guaranteed),
        describe(&quota.limit)
    );
    if !quota.lending_limit.0.is_empty() {
        let _ = write!(text, ", lends at most {}", describe(&quota.lending_limit));
    }
    text
}

fn queue_list(lines: &mut Vec<Line>, path: &str, kids: &[&str], unreserved: bool) {
    let mut names: Vec<&str> = kids.to_vec();
    if unreserved {
        names.push(UNRESERVED);
    }
    lines.push(Line::Property(format!("{}.queues", prefix(path)), names.join(",")));
}

fn leaf_settings(lines: &mut Vec<Line>, path: &str) {
    // One user may use the whole queue and borrow up to its maximum, as in Allot.
    lines.push(Line::Property(format!("{}.user-limit-factor", prefix(path)), "-1".into()));
    lines.push(Line::Property(format!("{}.state", prefix(path)), "RUNNING".into()));
}

fn unreserved_queue(lines: &mut Vec<Line>, parent_path: &str, capacity: String) {
    let path = format!("{parent_path}.{UNRESERVED}");
    lines.push(Line::Comment(format!(
        "{path}: what no team under {parent_path} is guaranteed; stopped, so it stays free to borrow"
    )));
    lines.push(Line::Property(format!("{}.capacity", prefix(&path)), capacity));
    lines.push(Line::Property(format!("{}.state", prefix(&path)), "STOPPED".into()));
}

fn percent_queues(tree: &Tree<'_>, cluster: u64) -> Result<(Vec<Line>, Vec<QueueLine>), Vec<String>> {
    let mut lines = Vec::new();
    let mut queues = Vec::new();
    percent_level(tree, &mut lines, &mut queues, "root", &tree.tops, cluster, cluster);
    Ok((lines, queues))
}

/// The queues under one parent: their capacities as percentages of its guarantee,
/// their maxima as percentages of its effective maximum (milli-GPU both).
fn percent_level(
    tree: &Tree<'_>,
    lines: &mut Vec<Line>,
    queues: &mut Vec<QueueLine>,
    path: &str,
    kids: &[&str],
    parent_guaranteed: u64,
    parent_max: u64,
) {
    let sum: f64 = kids.iter().map(|kid| percent(guaranteed_gpus(&tree.specs[kid].quota), parent_guaranteed)).sum();
    let rest = 100.0 - sum;
    let unreserved = parent_guaranteed > 0 && rest >= 0.01;
    queue_list(lines, path, kids, unreserved);
    for kid in kids {
        let spec = tree.specs[kid];
        let kid_path = format!("{path}.{kid}");
        let own = guaranteed_gpus(&spec.quota);
        let max = gpu_limit(&spec.quota).unwrap_or(u64::MAX).min(parent_max);
        let capacity = trim(percent(own, parent_guaranteed), 5);
        let maximum = trim(if parent_max == 0 { 100.0 } else { percent(max, parent_max) }, 5);
        lines.push(Line::Comment(quota_comment(spec)));
        lines.push(Line::Property(format!("{}.capacity", prefix(&kid_path)), capacity.clone()));
        lines.push(Line::Property(format!("{}.maximum-capacity", prefix(&kid_path)), maximum.clone()));
        queues.push(QueueLine {
            path: kid_path.clone(),
            capacity,
            maximum_capacity: Some(maximum),
            gpus: own as f64 / GPU as f64,
            gpu_limit: gpu_limit(&spec.quota).map(|limit| limit as f64 / GPU as f64),
        });
        let grandkids = tree.kids(kid);
        if grandkids.is_empty() {
            leaf_settings(lines, &kid_path);
        } else {
            percent_level(tree, lines, queues, &kid_path, grandkids, own, max);
        }
    }
    if unreserved {
        unreserved_queue(lines, path, trim(rest, 5));
    }
}

/// Per GPU, for teams that guarantee or limit no memory or CPU.
#[derive(Debug, Clone, Copy)]
struct Ratios {
    memory_mib: u64,
    vcores: u64,
}

fn absolute_queues(
    tree: &Tree<'_>,
    cluster: u64,
    options: &Options,
) -> Result<(Vec<Line>, Vec<QueueLine>), Vec<String>> {
    let (Some(memory_gib), Some(vcores)) = (options.memory_per_gpu_gib, options.vcores_per_gpu) else {
        return Err(vec![
            "--capacity absolute needs --memory-per-gpu GIB and --vcores-per-gpu N: the memory and vcores a \
             NodeManager offers per GPU, for teams whose quota names no memory or CPU"
                .into(),
        ]);
    };
    let ratios = Ratios { memory_mib: memory_gib as u64 * 1024, vcores: vcores as u64 };
    let mut problems = Vec::new();
    for spec in tree.specs.values() {
        let own = guaranteed_gpus(&spec.quota);
        if !own.is_multiple_of(GPU) {
            problems.push(format!(
                "team \"{}\" is guaranteed {} GPUs; YARN counts whole devices in absolute capacities: use \
                 --capacity percent, or a whole number",
                spec.name,
                gpus_text(own)
            ));
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let cluster_vector =
        Vector { memory_mib: cluster / GPU * ratios.memory_mib, vcores: cluster / GPU * ratios.vcores, gpus: cluster };
    let mut lines = Vec::new();
    let mut queues = Vec::new();
    absolute_level(
        tree,
        &mut lines,
        &mut queues,
        &mut problems,
        "root",
        &tree.tops,
        None,
        cluster_vector,
        ratios,
        options,
    );
    if problems.is_empty() { Ok((lines, queues)) } else { Err(problems) }
}

fn guaranteed_vector(quota: &Quota, ratios: Ratios) -> Vector {
    let gpus = guaranteed_gpus(quota);
    Vector {
        memory_mib: quota.guaranteed.0.get(&ResourceClass::Memory).copied().unwrap_or(gpus / GPU * ratios.memory_mib),
        vcores: quota
            .guaranteed
            .0
            .get(&ResourceClass::Cpu)
            .map(|milli| milli.div_ceil(1000))
            .unwrap_or(gpus / GPU * ratios.vcores),
        gpus,
    }
}

/// The team's maximum, when its quota limits anything, within its parent's.
fn limit_vector(quota: &Quota, ratios: Ratios, parent_max: Vector) -> Option<Vector> {
    let gpus = gpu_limit(quota);
    let memory = quota.limit.0.get(&ResourceClass::Memory).copied();
    let cpu = quota.limit.0.get(&ResourceClass::Cpu).copied();
    if gpus.is_none() && memory.is_none() && cpu.is_none() {
        return None;
    }
    let whole = gpus.map(|milli| milli / GPU);
    let vector = Vector {
        memory_mib: memory.or(whole.map(|count| count * ratios.memory_mib)).unwrap_or(parent_max.memory_mib),
        vcores: cpu.map(|milli| milli / 1000).or(whole.map(|count| count * ratios.vcores)).unwrap_or(parent_max.vcores),
        gpus: whole.map(|count| count * GPU).unwrap_or(parent_max.gpus),
    };
    Some(vector.min(parent_max))
}

#[allow(clippy::too_many_arguments)]
fn absolute_level(
    tree: &Tree<'_>,
    lines: &mut Vec<Line>,
    queues: &mut Vec<QueueLine>,
    problems: &mut Vec<String>,
    path: &str,
    kids: &[&str],
    parent: Option<(&str, Vector)>,
    parent_max: Vector,
    ratios: Ratios,
    options: &Options,
) {
    if let Some((parent_name, parent_min)) = parent {
        let mut sum = Vector::default();
        for kid in kids {
            let vector = guaranteed_vector(&tree.specs[kid].quota, ratios);
            sum.memory_mib += vector.memory_mib;
            sum.vcores += vector.vcores;
            sum.gpus += vector.gpus;
        }
        for (what, total, own) in
            [("memory (MiB)", sum.memory_mib, parent_min.memory_mib), ("vcores", sum.vcores, parent_min.vcores)]
        {
            if total > own {
                problems.push(format!(
                    "team \"{parent_name}\": its teams are guaranteed {total} {what} together, more than its own \
                     {own}; a YARN queue's children cannot be guaranteed more than it (give \"{parent_name}\" a \
                     cpu or memory guarantee, or change --memory-per-gpu / --vcores-per-gpu)"
                ));
            }
        }
    }
    queue_list(lines, path, kids, false);
    for kid in kids {
        let spec = tree.specs[kid];
        let kid_path = format!("{path}.{kid}");
        let min = guaranteed_vector(&spec.quota, ratios);
        let max = limit_vector(&spec.quota, ratios, parent_max).map(|max| max.max(min));
        let capacity = min.text(&options.resource_name);
        let maximum = max.map(|max| max.text(&options.resource_name));
        lines.push(Line::Comment(quota_comment(spec)));
        lines.push(Line::Property(format!("{}.capacity", prefix(&kid_path)), capacity.clone()));
        if let Some(maximum) = &maximum {
            lines.push(Line::Property(format!("{}.maximum-capacity", prefix(&kid_path)), maximum.clone()));
        }
        queues.push(QueueLine {
            path: kid_path.clone(),
            capacity,
            maximum_capacity: maximum,
            gpus: min.gpus as f64 / GPU as f64,
            gpu_limit: gpu_limit(&spec.quota).map(|limit| limit as f64 / GPU as f64),
        });
        let grandkids = tree.kids(kid);
        if grandkids.is_empty() {
            leaf_settings(lines, &kid_path);
        } else {
            let kid_max = max.unwrap_or(parent_max);
            absolute_level(
                tree,
                lines,
                queues,
                problems,
                &kid_path,
                grandkids,
                Some((kid, min)),
                kid_max,
                ratios,
                options,
            );
        }
    }
}

fn valid_resource_name(name: &str) -> bool {
    let (prefix, base) = match name.rsplit_once('/') {
        Some((prefix, base)) => (Some(prefix), base),
        None => (None, name),
    };
    let word = |text: &str, extra: &[char]| {
        !text.is_empty()
            && text.starts_with(|c: char| c.is_ascii_alphanumeric())
            && text.chars().all(|c| c.is_ascii_alphanumeric() || extra.contains(&c))
    };
    prefix.is_none_or(|prefix| word(prefix, &['-', '.'])) && word(base, &['-', '_', '.'])
}

fn readme(source: &Source, options: &Options, queues: &[QueueLine]) -> String {
    let form = match options.form {
        CapacityForm::Percent => {
            "percentages of the parent queue's guarantee (capacity) and of its maximum (maximum-capacity)"
        }
        CapacityForm::Absolute => {
            "absolute resources: memory, vcores and GPUs (capacity is the guarantee, maximum-capacity the limit)"
        }
    };
    let mut text = format!(
        "# YARN configuration for Allot's teams\n\n\
         Generated by `allotctl export yarn` from {origin}, for a cluster of {gpus} GPUs. Do not edit these files: \
         change the teams in Allot (`allotctl apply -f teams.toml`) and export again. The output depends only on \
         the teams and the options, so keep it in version control and review the diff before installing it.\n\n\
         ## Files\n\n\
         | file | where it goes |\n|---|---|\n\
         | `capacity-scheduler.xml` | the ResourceManager's configuration directory; then `yarn rmadmin -refreshQueues` |\n\
         | `resource-types.xml` | the ResourceManager and every NodeManager (declares `{resource}`) |\n\
         | `yarn-site.nodemanager.xml` | merge into `yarn-site.xml` on every NodeManager with Allot GPUs (the plugin jar goes on its classpath, docs/yarn.md) |\n\
         | `yarn-site.resourcemanager.xml` | merge into `yarn-site.xml` on the ResourceManager (CapacityScheduler, preemption) |\n\n\
         ## Queues\n\n\
         One queue per team, named after it, under `root` in the same tree. Capacities are {form}; GPUs are the \
         resource `{resource}`, compared with the `DominantResourceCalculator`. Leaf queues let one user use the \
         whole queue and borrow up to its maximum (`user-limit-factor = -1`), as Allot lets a team borrow.\n\n\
         | queue | guaranteed GPUs | GPU limit | capacity | maximum-capacity |\n|---|---|---|---|---|\n",
        origin = source.origin,
        gpus = source.cluster_gpus.unwrap_or(0),
        resource = options.resource_name,
    );
    for queue in queues {
        let _ = writeln!(
            text,
            "| `{}` | {} | {} | `{}` | {} |",
            queue.path,
            trim(queue.gpus, 3),
            queue.gpu_limit.map(|limit| trim(limit, 3)).unwrap_or_else(|| "none".into()),
            queue.capacity,
            queue.maximum_capacity.as_deref().map(|max| format!("`{max}`")).unwrap_or_else(|| "inherited".into())
        );
    }
    text.push_str(
        "\n## What YARN cannot carry\n\n\
         - **The broker still decides.** The plugin asks the broker for every container's GPUs, under the team \
         its queue names; a container the broker refuses (the team at its limit, a per-family quota) fails with \
         the broker's reason, whatever the queue allowed.\n\
         - **Per-family guarantees** (`gpu/h100`) count toward the queue's GPUs; YARN sees one GPU resource, the \
         broker keeps the family apart.\n\
         - **Weights and lending limits** have no CapacityScheduler equivalent; each queue's comment in \
         `capacity-scheduler.xml` keeps Allot's figures.\n",
    );
    if options.form == CapacityForm::Percent {
        let _ = writeln!(
            text,
            "- **Unguaranteed capacity.** Percentages of a parent must add up to 100; where Allot guarantees less \
             than the parent has, the rest goes to a stopped queue `{UNRESERVED}`, so no application runs there \
             and the others borrow it."
        );
    }
    text
}

/// Reads the tree from a teams file or the broker, renders it, writes `--out`
/// all or nothing, and returns the summary to print.
pub async fn run(
    args: &YarnArgs,
    broker: &str,
    clients: Option<&crate::Clients>,
    format: Format,
) -> Result<String, CtlError> {
    let usage = |message: String| CtlError::Usage(message);
    let source = match &args.teams_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|error| usage(format!("cannot read {}: {error}", path.display())))?;
            let origin = path.display().to_string();
            let file = TeamsFile::parse(&origin, &text).map_err(|error| usage(error.to_string()))?;
            Source {
                origin,
                teams: file.teams,
                gpu_values: file.gpu_values,
                cluster_gpus: args.cluster_gpus,
                live_allocations: BTreeMap::new(),
            }
        }
        None => match clients {
            Some(clients) => from_broker(clients, broker, args.cluster_gpus).await?,
            None => return Err(usage("export reads the teams from the broker or from --teams-file".into())),
        },
    };
    let options = Options {
        form: args.capacity,
        memory_per_gpu_gib: args.memory_per_gpu,
        vcores_per_gpu: args.vcores_per_gpu,
        resource_name: args.resource_name.clone(),
        node_broker: args.node_broker.clone().unwrap_or_else(|| broker.to_owned()),
    };
    let export = render(&source, &options).map_err(|problems| {
        usage(format!("the teams cannot be exported as YARN queues:\n  {}", problems.join("\n  ")))
    })?;
    write_all_or_nothing(&args.out, &export.files)?;
    Ok(match format {
        Format::Json => serde_json::to_string_pretty(&serde_json::json!({
            "out": args.out.display().to_string(),
            "files": export.files.iter().map(|file| file.name).collect::<Vec<_>>(),
            "queues": export.queues,
        }))
        .unwrap_or_default(),
        Format::Table => {
            let mut text = format!("wrote {} ({} queues):", args.out.display(), export.queues.len());
            for file in &export.files {
                let _ = write!(text, " {}", file.name);
            }
            for queue in &export.queues {
                let _ = write!(
                    text,
                    "\n  {:<32} capacity {:<40} max {}",
                    queue.path,
                    queue.capacity,
                    queue.maximum_capacity.as_deref().unwrap_or("inherited")
                );
            }
            text
        }
    })
}

async fn from_broker(clients: &crate::Clients, broker: &str, cluster_gpus: Option<u32>) -> Result<Source, CtlError> {
    let protocol = |message: String| CtlError::Protocol(message);
    let mut admin = clients.admin();
    let teams = admin.list_teams(proto::ListTeamsRequest {}).await?.into_inner().teams;
    let mut specs = Vec::new();
    for team in teams {
        specs.push(spec_from_wire(team).map_err(protocol)?);
    }
    let cluster_gpus = match cluster_gpus {
        Some(count) => Some(count),
        None => {
            let nodes = admin.list_nodes(proto::ListNodesRequest {}).await?.into_inner().nodes;
            let total: u32 = nodes.iter().map(|node| node.gpus).sum();
            (total > 0).then_some(total)
        }
    };
    let mut live_allocations: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let allocations = clients
        .allocations()
        .list(proto::ListAllocationsRequest {
            team: String::new(),
            node: String::new(),
            owner: String::new(),
            include_finished: false,
        })
        .await?
        .into_inner()
        .allocations;
    for allocation in allocations {
        if let Some(spec) = &allocation.spec {
            live_allocations.entry(spec.team.clone()).or_default().push(allocation.id.clone());
        }
    }
    Ok(Source {
        origin: format!("the broker at {broker}"),
        teams: specs,
        gpu_values: BTreeMap::new(),
        cluster_gpus,
        live_allocations,
    })
}

fn spec_from_wire(team: proto::Team) -> Result<TeamSpec, String> {
    let name: TeamName = team.name.parse().map_err(|error| format!("team {:?}: {error}", team.name))?;
    let parent = (!team.parent.is_empty())
        .then(|| team.parent.parse::<TeamName>())
        .transpose()
        .map_err(|error| format!("team {name}: parent: {error}"))?;
    let quota = team.quota.unwrap_or_default();
    let amounts = |pairs: &std::collections::HashMap<String, f64>, what: &str| {
        let sorted: BTreeMap<String, f64> = pairs.iter().map(|(class, amount)| (class.clone(), *amount)).collect();
        allot_policy::file::parse_amounts(&sorted, what)
            .map_err(|problems| format!("team {name}: {}", problems.join("; ")))
    };
    Ok(TeamSpec {
        quota: Quota {
            weight: quota.weight.max(1),
            guaranteed: amounts(&quota.guaranteed, "guaranteed")?,
            limit: amounts(&quota.limit, "limit")?,
            lending_limit: amounts(&quota.lending_limit, "lending_limit")?,
        },
        name,
        parent,
    })
}

/// Writes the files into `out`, replacing what was there, so that `out` never
/// holds half an export.
fn write_all_or_nothing(out: &Path, files: &[File]) -> Result<(), CtlError> {
    let files: Vec<(&str, &str)> = files.iter().map(|file| (file.name, file.text.as_str())).collect();
    allot_sim::output::write_folder(out, &files)
        .map_err(|(path, error)| CtlError::Usage(format!("cannot write {}: {error}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(text: &str, cluster_gpus: Option<u32>) -> Source {
        let file = TeamsFile::parse("teams.toml", text).expect("teams file");
        Source {
            origin: "teams.toml".into(),
            teams: file.teams,
            gpu_values: file.gpu_values,
            cluster_gpus,
            live_allocations: BTreeMap::new(),
        }
    }

    fn options(form: CapacityForm) -> Options {
        Options {
            form,
            memory_per_gpu_gib: Some(64),
            vcores_per_gpu: Some(8),
            resource_name: "allot.io/gpu".into(),
            node_broker: "broker:7443".into(),
        }
    }

    fn property<'a>(export: &'a Export, name: &str) -> Option<&'a str> {
        let text = &export.files[0].text;
        let at = text.find(&format!("<name>{name}</name>"))?;
        let value = &text[at..];
        let start = value.find("<value>")? + "<value>".len();
        let end = value.find("</value>")?;
        Some(&value[start..end])
    }

    const EXAMPLE: &str = include_str!("../../../docs/examples/teams.toml");

    #[test]
    fn the_example_tree_becomes_percentages_that_add_up_at_every_level() {
        let export = render(&source(EXAMPLE, Some(16)), &options(CapacityForm::Percent)).expect("exports");
        let at = |name: &str| property(&export, &format!("yarn.scheduler.capacity.{name}"));
        assert_eq!(at("root.queues"), Some("interns,research,allot_unreserved"));
        assert_eq!(at("root.research.queues"), Some("nlp,vision"));
        assert_eq!(at("root.research.capacity"), Some("50"));
        assert_eq!(at("root.interns.capacity"), Some("0"));
        assert_eq!(at("root.allot_unreserved.capacity"), Some("50"));
        assert_eq!(at("root.allot_unreserved.state"), Some("STOPPED"));
        // vision: 4 of research's 8; at most 12 of research's 16.
        assert_eq!(at("root.research.vision.capacity"), Some("50"));
        assert_eq!(at("root.research.vision.maximum-capacity"), Some("75"));
        assert_eq!(at("root.interns.maximum-capacity"), Some("12.5"));
        assert_eq!(at("root.research.nlp.user-limit-factor"), Some("-1"));
        // research's children use all of its guarantee: no filler under it.
        assert_eq!(at("root.research.allot_unreserved.capacity"), None);
        assert_eq!(
            property(&export, "yarn.scheduler.capacity.resource-calculator"),
            Some("org.apache.hadoop.yarn.util.resource.DominantResourceCalculator")
        );
        let names: Vec<&str> = export.files.iter().map(|file| file.name).collect();
        assert_eq!(
            names,
            [
                "capacity-scheduler.xml",
                "resource-types.xml",
                "yarn-site.nodemanager.xml",
                "yarn-site.resourcemanager.xml",
                "README.md"
            ]
        );
        assert!(export.files[1].text.contains("<value>allot.io/gpu</value>"));
        assert!(export.files[2].text.contains("<value>broker:7443</value>"));
        assert!(export.files[4].text.contains("| `root.research.vision` | 4 | 12 | `50` | `75` |"));
    }

    #[test]
    fn thirds_round_up_so_the_scheduler_keeps_whole_gpus() {
        let text = "[teams.org]\nguaranteed = { \"gpu/any\" = 6 }\n\
                    [teams.a]\nparent = \"org\"\nguaranteed = { \"gpu/any\" = 2 }\n\
                    [teams.b]\nparent = \"org\"\nguaranteed = { \"gpu/any\" = 2 }\n\
                    [teams.c]\nparent = \"org\"\nguaranteed = { \"gpu/any\" = 2 }\n";
        let export = render(&source(text, Some(8)), &options(CapacityForm::Percent)).expect("exports");
        let at = |name: &str| property(&export, &format!("yarn.scheduler.capacity.{name}"));
        assert_eq!(at("root.org.capacity"), Some("75"));
        assert_eq!(at("root.org.a.capacity"), Some("33.33334"));
        // 3 × 33.33334 is 100 within the scheduler's tolerance: no filler.
        assert_eq!(at("root.org.queues"), Some("a,b,c"));
        // The float product the scheduler computes stays at or above 2 GPUs.
        let gpus = 8.0_f32 * 0.75_f32 * (33.33334_f32 / 100.0);
        assert!(gpus >= 2.0, "{gpus}");
    }

    #[test]
    fn the_same_teams_give_the_same_files() {
        let one = render(&source(EXAMPLE, Some(16)), &options(CapacityForm::Percent)).expect("exports");
        let two = render(&source(EXAMPLE, Some(16)), &options(CapacityForm::Percent)).expect("exports");
        assert_eq!(one.files, two.files);
    }

    #[test]
    fn absolute_capacities_use_the_quota_and_the_per_gpu_ratios() {
        let export = render(&source(EXAMPLE, Some(16)), &options(CapacityForm::Absolute)).expect("exports");
        let at = |name: &str| property(&export, &format!("yarn.scheduler.capacity.{name}"));
        // research guarantees 128 cores itself; memory from 8 GPUs × 64 GiB.
        assert_eq!(at("root.research.capacity"), Some("[memory=524288,vcores=128,allot.io/gpu=8]"));
        assert_eq!(at("root.research.vision.capacity"), Some("[memory=262144,vcores=32,allot.io/gpu=4]"));
        assert_eq!(at("root.research.vision.maximum-capacity"), Some("[memory=786432,vcores=96,allot.io/gpu=12]"));
        // interns limit memory to 256 GiB and GPUs to 2.
        assert_eq!(at("root.interns.maximum-capacity"), Some("[memory=262144,vcores=16,allot.io/gpu=2]"));
        assert_eq!(at("root.interns.capacity"), Some("[memory=0,vcores=0,allot.io/gpu=0]"));
        // nlp has no limit: it inherits research's maximum.
        assert_eq!(at("root.research.nlp.maximum-capacity"), None);
        assert_eq!(at("root.allot_unreserved.capacity"), None);
    }

    #[test]
    fn what_queues_cannot_express_is_refused_by_team() {
        // Per-family guarantees that add up to more GPUs than the parent's.
        let text = "[teams.ml]\nguaranteed = { \"gpu/any\" = 6 }\n\
                    [teams.speech]\nparent = \"ml\"\nguaranteed = { \"gpu/any\" = 2 }\n\
                    [teams.tts]\nparent = \"ml\"\nguaranteed = { \"gpu/h100\" = 6 }\n";
        let problems = render(&source(text, Some(8)), &options(CapacityForm::Percent)).expect_err("refused");
        assert!(problems[0].contains("team \"ml\": its teams are guaranteed 8 GPUs together, more than its own 6"));
        // Live allocations on a team with children.
        let mut with_allocations = source(EXAMPLE, Some(16));
        with_allocations.live_allocations.insert("research".into(), vec!["a-17".into()]);
        let problems = render(&with_allocations, &options(CapacityForm::Percent)).expect_err("refused");
        assert!(problems[0].contains("team \"research\" has teams under it and also holds live allocations (a-17)"));
        // A cluster smaller than the top-level guarantees, or of unknown size.
        let problems = render(&source(EXAMPLE, Some(4)), &options(CapacityForm::Percent)).expect_err("refused");
        assert!(problems[0].contains("guaranteed 8 GPUs together, more than the cluster's 4"));
        let problems = render(&source(EXAMPLE, None), &options(CapacityForm::Percent)).expect_err("refused");
        assert!(problems[0].contains("--cluster-gpus"));
        // Fractions in absolute form, and absolute form without ratios.
        let half = source("[teams.a]\nguaranteed = { \"gpu/any\" = 1.5 }\n", Some(8));
        let problems = render(&half, &options(CapacityForm::Absolute)).expect_err("refused");
        assert!(problems[0].contains("team \"a\" is guaranteed 1.5 GPUs"));
        assert!(render(&half, &options(CapacityForm::Percent)).is_ok(), "percentages carry fractions");
        let no_ratios = Options { memory_per_gpu_gib: None, ..options(CapacityForm::Absolute) };
        let problems = render(&source(EXAMPLE, Some(16)), &no_ratios).expect_err("refused");
        assert!(problems[0].contains("--memory-per-gpu"));
        // A resource name Hadoop would refuse.
        let bad_name = Options { resource_name: "allot.io/gpu share".into(), ..options(CapacityForm::Percent) };
        assert!(render(&source(EXAMPLE, Some(16)), &bad_name).is_err());
        // A tree Allot itself refuses.
        let child_over = "[teams.a]\nguaranteed = { \"gpu/any\" = 1 }\n\
                          [teams.b]\nparent = \"a\"\nguaranteed = { \"gpu/any\" = 2 }\n";
        let problems = render(&source(child_over, Some(8)), &options(CapacityForm::Percent)).expect_err("refused");
        assert!(problems[0].contains("team \"b\""), "{problems:?}");
    }
}
