//! Why a request went where it went, or nowhere: per-node verdicts, node-level
//! refusal reasons, and the cluster-level refusal (impossible vs no capacity now).

use std::collections::BTreeMap;
use std::fmt;

use allot_api::allocation::{GpuDemand, Interconnect, NodeName, ValidatedRequest};
use allot_api::units::MiB;

use crate::score::Score;

/// How many GPUs of a node were left out, and why. Each GPU is counted once, under
/// the first reason that applies (in the order of the fields).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GpuExclusions {
    pub wrong_model: u32,
    /// Less memory than `min_gpu_memory` (or unknown).
    pub too_small: u32,
    pub unhealthy: u32,
    /// No RDMA-capable NIC at PIX or PXB, for an RDMA request.
    pub no_rdma_nic: u32,
    /// Granted whole, or carrying MIG instances or shares, as fits the request.
    pub in_use: u32,
    /// MIG is enabled: such a GPU is not granted whole or shared (it would have to
    /// be re-carved with MIG disabled first).
    pub mig_enabled: u32,
    /// Not MIG-capable, or without the requested profile.
    pub no_mig_profile: u32,
    /// No free slot for the MIG profile, or too little compute or memory left for
    /// the share.
    pub full: u32,
    /// Not among the devices a pinned request allows.
    pub not_listed: u32,
}

impl GpuExclusions {
    pub fn total(&self) -> u32 {
        self.wrong_model
            + self.too_small
            + self.unhealthy
            + self.no_rdma_nic
            + self.in_use
            + self.mig_enabled
            + self.no_mig_profile
            + self.full
            + self.not_listed
    }
}

impl fmt::Display for GpuExclusions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts = [
            (self.wrong_model, "other model"),
            (self.too_small, "too little memory"),
            (self.unhealthy, "unhealthy"),
            (self.no_rdma_nic, "no RDMA NIC nearby"),
            (self.in_use, "in use"),
            (self.mig_enabled, "MIG enabled"),
            (self.no_mig_profile, "without the profile"),
            (self.full, "full"),
            (self.not_listed, "not among the allowed devices"),
        ];
        let mut first = true;
        for (count, words) in parts.into_iter().filter(|(count, _)| *count > 0) {
            if !first {
                f.write_str(", ")?;
            }
            first = false;
            write!(f, "{count} {words}")?;
        }
        Ok(())
    }
}

/// Why one node cannot take the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeRefusal {
    /// The node stopped heartbeating.
    Lost,
    /// An administrator cordoned the node.
    Cordoned,
    /// The request is pinned to another node.
    NotPinned,
    /// Too few GPUs pass the request's filters and are free.
    TooFewGpus {
        requested: u32,
        eligible: u32,
        excluded: GpuExclusions,
    },
    /// Enough GPUs are free, but no `requested` of them are connected as asked.
    NoConnectedSet {
        interconnect: Interconnect,
        requested: u32,
        eligible: u32,
        largest: u32,
    },
    /// No GPU of the node has the MIG profile.
    NoMigProfile {
        profile: String,
    },
    /// GPUs offer the profile, but none has a free slot for it now.
    NoMigSlot {
        profile: String,
        excluded: GpuExclusions,
    },
    /// No GPU can take the share.
    NoShareRoom {
        excluded: GpuExclusions,
    },
    NotEnoughCores {
        requested: u32,
        free: u32,
    },
    NotEnoughMemory {
        requested: MiB,
        free: MiB,
    },
}

impl NodeRefusal {
    /// A short name of the kind of reason, for grouping.
    pub fn kind(&self) -> &'static str {
        match self {
            NodeRefusal::Lost => "lost",
            NodeRefusal::Cordoned => "cordoned",
            NodeRefusal::NotPinned => "not the pinned node",
            NodeRefusal::TooFewGpus { .. } => "too few free GPUs",
            NodeRefusal::NoConnectedSet { .. } => "no connected set",
            NodeRefusal::NoMigProfile { .. } => "no such MIG profile",
            NodeRefusal::NoMigSlot { .. } => "no free MIG slot",
            NodeRefusal::NoShareRoom { .. } => "no GPU with room for the share",
            NodeRefusal::NotEnoughCores { .. } => "not enough free cores",
            NodeRefusal::NotEnoughMemory { .. } => "not enough free memory",
        }
    }
}

pub(crate) fn interconnect_words(interconnect: Interconnect) -> &'static str {
    match interconnect {
        Interconnect::Nvlink => "NVLink-connected",
        Interconnect::PcieSwitch => "under one PCIe switch",
        Interconnect::Numa => "on one NUMA node",
        Interconnect::Any => "on the node",
    }
}

impl fmt::Display for NodeRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeRefusal::Lost => f.write_str("lost: the node stopped heartbeating"),
            NodeRefusal::Cordoned => f.write_str("cordoned by an administrator"),
            NodeRefusal::NotPinned => f.write_str("the request is pinned to another node"),
            NodeRefusal::TooFewGpus { requested, eligible, excluded } => {
                write!(f, "not enough free GPUs: {eligible} usable, {requested} asked")?;
                if excluded.total() > 0 {
                    write!(f, " (left out: {excluded})")?;
                }
                Ok(())
            }
            NodeRefusal::NoConnectedSet { interconnect, requested, eligible, largest } => write!(
                f,
                "no {}: of {eligible} usable, at most {largest} are",
                gpus_words(*requested, *interconnect, &[])
            ),
            NodeRefusal::NoMigProfile { profile } => write!(f, "no GPU offers MIG profile {profile}"),
            NodeRefusal::NoMigSlot { profile, excluded } => {
                write!(f, "no free slot for {profile}")?;
                if excluded.total() > 0 {
                    write!(f, " ({excluded})")?;
                }
                Ok(())
            }
            NodeRefusal::NoShareRoom { excluded } => {
                f.write_str("no GPU with room for the share")?;
                if excluded.total() > 0 {
                    write!(f, " ({excluded})")?;
                }
                Ok(())
            }
            NodeRefusal::NotEnoughCores { requested, free } => {
                write!(f, "not enough free cores: {free} free, {requested} asked")
            }
            NodeRefusal::NotEnoughMemory { requested, free } => {
                write!(f, "not enough free memory: {free} free, {requested} asked")
            }
        }
    }
}

/// Whole GPUs in words: "4 NVLink-connected GPUs of model H100".
pub(crate) fn gpus_words(count: u32, interconnect: Interconnect, models: &[String]) -> String {
    let plural = if count == 1 { "" } else { "s" };
    let mut words = match interconnect {
        Interconnect::Nvlink => format!("{count} NVLink-connected GPU{plural}"),
        Interconnect::Any => format!("{count} GPU{plural}"),
        other => format!("{count} GPU{plural} {}", interconnect_words(other)),
    };
    if !models.is_empty() {
        let _ = fmt::Write::write_fmt(&mut words, format_args!(" of model {}", models.join(" or ")));
    }
    words
}

/// The request in words, for explanations and messages.
pub(crate) fn describe_request(request: &ValidatedRequest) -> String {
    let mut words = match &request.gpus {
        GpuDemand::None => "no GPU".to_owned(),
        GpuDemand::Whole { count, models } => gpus_words(*count, request.interconnect, models),
        GpuDemand::Mig { profile } => format!("MIG {profile}"),
        GpuDemand::Share { compute, memory } => format!("a share of one GPU ({} milli-GPU, {memory})", compute.0),
    };
    let _ = fmt::Write::write_fmt(&mut words, format_args!(", {} cores, {} memory", request.cpus, request.memory));
    if request.rdma {
        words.push_str(", RDMA");
    }
    if let Some(min_memory) = request.min_gpu_memory {
        let _ = fmt::Write::write_fmt(&mut words, format_args!(", GPUs of at least {min_memory}"));
    }
    words
}

/// What placement thought of one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The request goes here.
    Chosen {
        score: Score,
    },
    /// It could have gone here; its best placement scored worse than the chosen one.
    Candidate {
        score: Score,
    },
    Refused {
        reason: NodeRefusal,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeVerdict {
    pub node: NodeName,
    pub verdict: Verdict,
}

/// Why a request was placed where it was, or refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// The request in words.
    pub request: String,
    /// Why this node, these GPUs, cores and memory; `None` when refused.
    pub chosen: Option<String>,
    /// Every node: the chosen one first, then the other candidates best first, then
    /// the refused nodes by name.
    pub nodes: Vec<NodeVerdict>,
}

/// How many candidate and refused nodes [`Explanation`]'s text lists one by one
/// before it summarises the rest.
const LISTED_NODES: usize = 20;

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "request: {}", self.request)?;
        match &self.chosen {
            Some(chosen) => writeln!(f, "{chosen}")?,
            None => writeln!(f, "not placed")?,
        }
        let width = self.nodes.iter().take(LISTED_NODES * 2).map(|node| node.node.as_str().len()).max().unwrap_or(0);
        let mut candidates = 0;
        let mut refused: Vec<&NodeVerdict> = Vec::new();
        writeln!(f, "nodes:")?;
        for node in &self.nodes {
            match &node.verdict {
                Verdict::Chosen { score } => writeln!(f, "  {:width$}  chosen     {score}", node.node.as_str())?,
                Verdict::Candidate { score } => {
                    candidates += 1;
                    if candidates <= LISTED_NODES {
                        writeln!(f, "  {:width$}  candidate  {score}", node.node.as_str())?;
                    }
                }
                Verdict::Refused { .. } => refused.push(node),
            }
        }
        if candidates > LISTED_NODES {
            writeln!(f, "  ... and {} more candidates", candidates - LISTED_NODES)?;
        }
        if refused.len() <= LISTED_NODES {
            for node in refused {
                if let Verdict::Refused { reason } = &node.verdict {
                    writeln!(f, "  {:width$}  refused    {reason}", node.node.as_str())?;
                }
            }
            return Ok(());
        }
        // Thousands of nodes: one line per kind of reason, with examples.
        let mut groups: BTreeMap<&'static str, (usize, Vec<&NodeVerdict>)> = BTreeMap::new();
        for node in refused {
            if let Verdict::Refused { reason } = &node.verdict {
                let group = groups.entry(reason.kind()).or_default();
                group.0 += 1;
                if group.1.len() < 3 {
                    group.1.push(node);
                }
            }
        }
        for (kind, (count, examples)) in groups {
            writeln!(f, "  {count} refused: {kind}, for example:")?;
            for node in examples {
                if let Verdict::Refused { reason } = &node.verdict {
                    writeln!(f, "    {}  {reason}", node.node)?;
                }
            }
        }
        Ok(())
    }
}

/// Why no node took the request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefusalReason {
    /// No node of the cluster could ever take it, not even idle, repaired and
    /// re-carved: asking again will not help; the request must change.
    #[error("E-IMPOSSIBLE: {detail}")]
    Impossible { detail: String },
    /// Some node could take it once capacity is released (or the node is back or
    /// uncordoned), but none can now.
    #[error("E-NO-CAPACITY: {detail}")]
    NoCapacityNow { detail: String },
}

/// A request no node could take, with the reason and each node's verdict.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Refusal {
    pub reason: RefusalReason,
    pub explanation: Explanation,
}

impl Refusal {
    pub fn is_impossible(&self) -> bool {
        matches!(self.reason, RefusalReason::Impossible { .. })
    }
}
