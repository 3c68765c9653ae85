//! How candidates are ranked: one score type per kind of request, ordered so that
//! the smallest score wins, each able to say in words why it beat another.

use std::cmp::Ordering;
use std::fmt;

use allot_api::allocation::MilliGpu;
use allot_api::topology::ConnectionLevel;
use allot_api::units::MiB;

/// The score of a candidate placement; smaller is better. All candidates of one
/// request have the same kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Score {
    Whole(WholeScore),
    Mig(MigScore),
    Share(ShareScore),
    Cpu(CpuScore),
}

impl Score {
    fn kind_order(&self) -> u8 {
        match self {
            Score::Whole(_) => 0,
            Score::Mig(_) => 1,
            Score::Share(_) => 2,
            Score::Cpu(_) => 3,
        }
    }

    /// In words, the first criterion on which `self` beats `other` (or loses to it).
    pub fn decisive(&self, other: &Score) -> Option<String> {
        match (self, other) {
            (Score::Whole(a), Score::Whole(b)) => a.decisive(b),
            (Score::Mig(a), Score::Mig(b)) => a.decisive(b),
            (Score::Share(a), Score::Share(b)) => a.decisive(b),
            (Score::Cpu(a), Score::Cpu(b)) => a.decisive(b),
            _ => None,
        }
    }
}

impl Ord for Score {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (Score::Whole(a), Score::Whole(b)) => a.cmp(b),
            (Score::Mig(a), Score::Mig(b)) => a.cmp(b),
            (Score::Share(a), Score::Share(b)) => a.cmp(b),
            (Score::Cpu(a), Score::Cpu(b)) => a.cmp(b),
            _ => self.kind_order().cmp(&other.kind_order()),
        }
    }
}

impl PartialOrd for Score {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Score {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Score::Whole(score) => score.fmt(f),
            Score::Mig(score) => score.fmt(f),
            Score::Share(score) => score.fmt(f),
            Score::Cpu(score) => score.fmt(f),
        }
    }
}

/// The cost of one GPU pair's connection, in the order of `ConnectionLevel::rank`:
/// NVLink 1001 (NV999 and more) to 1999 (NV1), PIX 2000, PXB 3000, PHB 4000,
/// NODE 5000, SYS 6000.
pub(crate) fn pair_cost(level: ConnectionLevel) -> u32 {
    match level {
        ConnectionLevel::Same => 0,
        ConnectionLevel::NvLink(links) => 1000 + (999 - links.min(998)),
        other => u32::from(other.rank().0) * 1000,
    }
}

/// A set of whole GPUs on one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WholeScore {
    /// The slowest link between two granted GPUs (`X` for one GPU).
    pub worst_link: ConnectionLevel,
    /// How many granted GPUs slow themselves down (heat, power).
    pub throttling: u32,
    /// Whether the cores must come partly from NUMA nodes the GPUs are not on.
    pub cores_spill: bool,
    /// GPUs of the node left completely free afterwards: fewer is a snugger fit.
    pub free_gpus_after: u32,
    /// Sum of [`pair_cost`] over every pair: more NVLink links, fewer slow pairs.
    pub link_cost: u32,
    /// NUMA nodes the GPUs are spread over.
    pub numa_nodes: u32,
    /// Sum over GPUs of their RDMA NIC's distance (0 PIX, 1 PXB); 0 without RDMA.
    pub nic_cost: u32,
    /// Free GPUs left on the NUMA nodes of the granted ones: fewer means the set
    /// fills a partly used NUMA node instead of breaking an intact one.
    pub stranded: u32,
}

impl WholeScore {
    fn key(&self) -> (u8, u32, bool, u32, u32, u32, u32, u32) {
        (
            self.worst_link.rank().0,
            self.throttling,
            self.cores_spill,
            self.free_gpus_after,
            self.link_cost,
            self.numa_nodes,
            self.nic_cost,
            self.stranded,
        )
    }

    fn decisive(&self, other: &WholeScore) -> Option<String> {
        let (a, b) = (self.key(), other.key());
        let better = |ordering: Ordering| if ordering == Ordering::Less { "better" } else { "worse" };
        Some(if a.0 != b.0 {
            format!("{} interconnect ({} vs {})", better(a.0.cmp(&b.0)), self.worst_link, other.worst_link)
        } else if a.1 != b.1 {
            format!("{} throttling GPUs vs {}", self.throttling, other.throttling)
        } else if a.2 != b.2 {
            format!("cores {} vs {}", spill_words(self.cores_spill), spill_words(other.cores_spill))
        } else if a.3 != b.3 {
            format!(
                "{} fit: leaves {} free GPUs vs {}",
                if a.3 < b.3 { "snugger" } else { "looser" },
                self.free_gpus_after,
                other.free_gpus_after
            )
        } else if a.4 != b.4 {
            format!("{} links between the GPUs (cost {} vs {})", better(a.4.cmp(&b.4)), self.link_cost, other.link_cost)
        } else if a.5 != b.5 {
            format!("spread over {} NUMA nodes vs {}", self.numa_nodes, other.numa_nodes)
        } else if a.6 != b.6 {
            format!("{} RDMA NICs (cost {} vs {})", better(a.6.cmp(&b.6)), self.nic_cost, other.nic_cost)
        } else if a.7 != b.7 {
            format!("strands {} free GPUs on their NUMA nodes vs {}", self.stranded, other.stranded)
        } else {
            return None;
        })
    }
}

fn spill_words(spill: bool) -> &'static str {
    if spill { "spill to other NUMA nodes" } else { "NUMA-local" }
}

impl Ord for WholeScore {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(&other.key())
    }
}

impl PartialOrd for WholeScore {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for WholeScore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.worst_link {
            ConnectionLevel::Same => f.write_str("one GPU")?,
            level => write!(f, "worst link {level}")?,
        }
        write!(f, ", {} throttling, {} free GPUs left", self.throttling, self.free_gpus_after)?;
        write!(f, ", {} NUMA node{}", self.numa_nodes, if self.numa_nodes == 1 { "" } else { "s" })?;
        if self.cores_spill {
            f.write_str(", cores spill")?;
        }
        Ok(())
    }
}

/// How many instances of one MIG profile a placement makes impossible on its GPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockedProfile {
    pub profile: String,
    pub count: u32,
}

/// A MIG instance on one GPU at one start slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigScore {
    /// The GPU's MIG layout must change first (MIG enabled, orphans removed).
    pub recarve: bool,
    pub throttling: bool,
    pub cores_spill: bool,
    /// For each profile of the GPU, largest first, how many fewer instances could
    /// still be placed afterwards; compared in that order, so keeping room for the
    /// largest profiles matters most.
    pub blocked: Vec<BlockedProfile>,
    /// An unowned instance of exactly this profile and start exists and is reused
    /// (no carving). Ranked after `blocked`: the node daemon removes the other
    /// unowned instances anyway, so reuse saves a create, not capacity.
    pub reuses_orphan: bool,
    /// The GPU already holds instances (packing onto it is preferred).
    pub gpu_in_use: bool,
    pub free_gpus_after: u32,
}

impl MigScore {
    fn cmp_blocked(&self, other: &MigScore) -> Ordering {
        self.blocked.iter().map(|blocked| blocked.count).cmp(other.blocked.iter().map(|blocked| blocked.count))
    }

    fn head(&self) -> (bool, bool, bool) {
        (self.recarve, self.throttling, self.cores_spill)
    }

    fn tail(&self) -> (bool, bool, u32) {
        (!self.reuses_orphan, !self.gpu_in_use, self.free_gpus_after)
    }

    fn decisive(&self, other: &MigScore) -> Option<String> {
        Some(if self.recarve != other.recarve {
            format!("{} a MIG re-carve", if self.recarve { "needs" } else { "needs no" })
        } else if self.throttling != other.throttling {
            format!("{}throttling GPU", if self.throttling { "" } else { "no " })
        } else if self.cores_spill != other.cores_spill {
            format!("cores {} vs {}", spill_words(self.cores_spill), spill_words(other.cores_spill))
        } else if self.cmp_blocked(other) != Ordering::Equal {
            format!("blocks {} vs {}", blocked_words(&self.blocked), blocked_words(&other.blocked))
        } else if self.reuses_orphan != other.reuses_orphan {
            format!("{} an existing unowned instance", if self.reuses_orphan { "reuses" } else { "does not reuse" })
        } else if self.gpu_in_use != other.gpu_in_use {
            format!("{} a GPU already partitioned", if self.gpu_in_use { "fills" } else { "opens" })
        } else if self.free_gpus_after != other.free_gpus_after {
            format!("leaves {} free GPUs vs {}", self.free_gpus_after, other.free_gpus_after)
        } else {
            return None;
        })
    }
}

pub(crate) fn blocked_words(blocked: &[BlockedProfile]) -> String {
    let parts: Vec<String> = blocked
        .iter()
        .filter(|blocked| blocked.count > 0)
        .map(|blocked| format!("{}x{}", blocked.profile, blocked.count))
        .collect();
    if parts.is_empty() { "nothing".to_owned() } else { parts.join(" ") }
}

impl Ord for MigScore {
    fn cmp(&self, other: &Self) -> Ordering {
        self.head()
            .cmp(&other.head())
            .then_with(|| self.cmp_blocked(other))
            .then_with(|| self.tail().cmp(&other.tail()))
            // Not a preference: keeps the order total and consistent with `Eq`.
            .then_with(|| self.blocked.iter().map(|b| &b.profile).cmp(other.blocked.iter().map(|b| &b.profile)))
    }
}

impl PartialOrd for MigScore {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for MigScore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "blocks {}", blocked_words(&self.blocked))?;
        if self.recarve {
            f.write_str(", needs re-carve")?;
        }
        if self.reuses_orphan {
            f.write_str(", reuses an unowned instance")?;
        }
        if self.throttling {
            f.write_str(", throttling")?;
        }
        if self.cores_spill {
            f.write_str(", cores spill")?;
        }
        write!(f, ", {}", if self.gpu_in_use { "GPU already partitioned" } else { "GPU unpartitioned" })?;
        write!(f, ", {} free GPUs left", self.free_gpus_after)
    }
}

/// A share of one GPU. `rank` is what the [`crate::SharePolicy`] ranks by; the
/// other fields describe the candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ShareScore {
    pub rank: [u32; 4],
    pub throttling: bool,
    pub cores_spill: bool,
    /// The GPU already carries shares.
    pub shared_before: bool,
    pub compute_left: MilliGpu,
    pub memory_left: MiB,
    pub free_gpus_after: u32,
    /// Allot's policy only: the milli-GPU of future work the share is expected to
    /// cost (fragmentation added under the learned mix plus scarcity), in
    /// thousandths.
    pub expected_cost: Option<i64>,
}

fn cost_words(cost: i64) -> String {
    format!("{:.1}", cost as f64 / 1000.0)
}

impl ShareScore {
    fn decisive(&self, other: &ShareScore) -> Option<String> {
        Some(if self.throttling != other.throttling {
            format!("{}throttling GPU", if self.throttling { "" } else { "no " })
        } else if self.cores_spill != other.cores_spill {
            format!("cores {} vs {}", spill_words(self.cores_spill), spill_words(other.cores_spill))
        } else if let (Some(mine), Some(theirs)) = (self.expected_cost, other.expected_cost)
            && mine != theirs
        {
            format!(
                "expected to cost future work {} milli-GPU vs {} (fragmentation and scarcity under the learned \
                 task mix)",
                cost_words(mine),
                cost_words(theirs)
            )
        } else if self.shared_before != other.shared_before {
            format!("{} GPU", if self.shared_before { "fills an already shared" } else { "opens a fresh" })
        } else if self.rank != other.rank {
            format!(
                "leaves {} milli-GPU and {} vs {} milli-GPU and {}",
                self.compute_left.0, self.memory_left, other.compute_left.0, other.memory_left
            )
        } else {
            return None;
        })
    }
}

impl fmt::Display for ShareScore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "leaves {} milli-GPU and {} on the GPU", self.compute_left.0, self.memory_left)?;
        if let Some(cost) = self.expected_cost {
            write!(f, ", expected cost {} milli-GPU", cost_words(cost))?;
        }
        f.write_str(if self.shared_before { ", already shared" } else { ", fresh GPU" })?;
        if self.throttling {
            f.write_str(", throttling")?;
        }
        if self.cores_spill {
            f.write_str(", cores spill")?;
        }
        write!(f, ", {} free GPUs left", self.free_gpus_after)
    }
}

/// A CPU-only request on one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct CpuScore {
    /// No single NUMA node has enough free cores.
    pub spills: bool,
    /// Free GPUs on the node: CPU-only work goes where it takes no cores that GPU
    /// work will want.
    pub free_gpus: u32,
    /// Free cores left afterwards: fewer is a snugger fit.
    pub cores_left: u32,
}

impl CpuScore {
    fn decisive(&self, other: &CpuScore) -> Option<String> {
        Some(if self.spills != other.spills {
            format!("cores {} vs {}", spill_words(self.spills), spill_words(other.spills))
        } else if self.free_gpus != other.free_gpus {
            format!(
                "{} free GPUs vs {} (CPU-only work keeps off cores that GPU work will want)",
                self.free_gpus, other.free_gpus
            )
        } else if self.cores_left != other.cores_left {
            format!("leaves {} free cores vs {}", self.cores_left, other.cores_left)
        } else {
            return None;
        })
    }
}

impl fmt::Display for CpuScore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} free cores left, {} free GPUs", self.cores_left, self.free_gpus)?;
        if self.spills {
            f.write_str(", spans NUMA nodes")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_costs_follow_the_connection_ranks() {
        let levels = [
            ConnectionLevel::Same,
            ConnectionLevel::NvLink(18),
            ConnectionLevel::NvLink(12),
            ConnectionLevel::NvLink(1),
            ConnectionLevel::Pix,
            ConnectionLevel::Pxb,
            ConnectionLevel::Phb,
            ConnectionLevel::Node,
            ConnectionLevel::Sys,
        ];
        for pair in levels.windows(2) {
            assert!(pair_cost(pair[0]) < pair_cost(pair[1]), "{} before {}", pair[0], pair[1]);
        }
        assert!(pair_cost(ConnectionLevel::NvLink(u32::MAX)) > 1000);
    }

    fn whole(worst_link: ConnectionLevel, throttling: u32, free_gpus_after: u32) -> WholeScore {
        WholeScore {
            worst_link,
            throttling,
            cores_spill: false,
            free_gpus_after,
            link_cost: pair_cost(worst_link),
            numa_nodes: 1,
            nic_cost: 0,
            stranded: 0,
        }
    }

    fn check_decisive(a: WholeScore, b: WholeScore, expected: &str) {
        assert!(a < b, "{a} should beat {b}");
        assert_eq!(Score::Whole(a).decisive(&Score::Whole(b)).as_deref(), Some(expected));
    }

    #[test]
    fn whole_scores_rank_interconnect_then_throttling_then_packing() {
        check_decisive(
            whole(ConnectionLevel::Pix, 1, 6),
            whole(ConnectionLevel::Sys, 0, 0),
            "better interconnect (PIX vs SYS)",
        );
        check_decisive(whole(ConnectionLevel::Pix, 0, 6), whole(ConnectionLevel::Pix, 1, 0), "0 throttling GPUs vs 1");
        check_decisive(
            whole(ConnectionLevel::NvLink(18), 0, 0),
            whole(ConnectionLevel::NvLink(18), 0, 4),
            "snugger fit: leaves 0 free GPUs vs 4",
        );
        check_decisive(
            whole(ConnectionLevel::NvLink(18), 0, 0),
            whole(ConnectionLevel::NvLink(4), 0, 0),
            "better links between the GPUs (cost 1981 vs 1995)",
        );
    }
}
