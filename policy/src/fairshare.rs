//! Fair share: weighted dominant resource share with decaying past usage.
//!
//! A team's share of a dimension (GPU, CPU, memory) is what it uses divided by
//! what the cluster has. GPUs are compared by value, so that an H100 counts as
//! much as the admin says it is worth in T4s (`gpu_values`). The dominant share
//! is the largest of the three; divided by the weight it orders the queue, like
//! DRF. Past usage counts too: each team's usage is also kept as an exponentially
//! decaying average with a configurable half-life (Slurm's Fair Tree, Kueue's
//! admission fair sharing), and the ordering uses the mean of the current usage
//! and that average. Time is an argument: nothing here reads a clock.

use std::collections::BTreeMap;

use allot_api::allocation::TeamName;
use serde::{Deserialize, Serialize};

use crate::resources::{ResourceClass, Resources};
use crate::tree::QuotaTree;

/// Usage in the three dimensions dominant share compares: value-weighted GPUs
/// (milli-GPU × value), milli-cores and MiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Dimensions {
    pub gpu: f64,
    pub cpu: f64,
    pub memory: f64,
}

impl Dimensions {
    /// Projects amounts onto the dimensions. GPU amounts count by family (with
    /// its value); GPU amounts whose family is not known count at value 1.
    pub fn of(resources: &Resources, tree: &QuotaTree) -> Dimensions {
        let mut gpu_by_family = 0.0;
        let mut family_total = 0u64;
        for (class, amount) in &resources.0 {
            if let ResourceClass::GpuFamily(family) = class {
                gpu_by_family += *amount as f64 * f64::from(tree.gpu_value(family));
                family_total += amount;
            }
        }
        let unattributed = resources.get(&ResourceClass::GpuAny).saturating_sub(family_total);
        Dimensions {
            gpu: gpu_by_family + unattributed as f64,
            cpu: resources.get(&ResourceClass::Cpu) as f64,
            memory: resources.get(&ResourceClass::Memory) as f64,
        }
    }

    pub fn plus(self, other: Dimensions) -> Dimensions {
        Dimensions { gpu: self.gpu + other.gpu, cpu: self.cpu + other.cpu, memory: self.memory + other.memory }
    }

    /// The largest share of `capacity` (0 when the cluster has none of anything).
    pub fn dominant_share(self, capacity: Dimensions) -> f64 {
        let share = |used: f64, total: f64| if total > 0.0 { used / total } else { 0.0 };
        share(self.gpu, capacity.gpu).max(share(self.cpu, capacity.cpu)).max(share(self.memory, capacity.memory))
    }
}

/// Exponentially decaying average usage per team (leaves and inner nodes).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageHistory {
    pub as_of_ms: u64,
    pub teams: BTreeMap<TeamName, Dimensions>,
}

impl UsageHistory {
    /// Moves the averages forward to `now_ms`, assuming `current` usage held since
    /// the last step: `h ← u + (h − u)·2^(−Δ/half_life)`. A clock that went back
    /// changes nothing.
    pub fn advance(&mut self, now_ms: u64, current: &BTreeMap<TeamName, Dimensions>, half_life_ms: u64) {
        if self.as_of_ms == 0 {
            self.as_of_ms = now_ms;
        }
        if now_ms <= self.as_of_ms || half_life_ms == 0 {
            self.as_of_ms = self.as_of_ms.max(now_ms);
            return;
        }
        let elapsed = (now_ms - self.as_of_ms) as f64;
        let keep = 0.5f64.powf(elapsed / half_life_ms as f64);
        let mut teams: Vec<TeamName> = self.teams.keys().cloned().collect();
        teams.extend(current.keys().cloned());
        teams.sort();
        teams.dedup();
        for team in teams {
            let used = current.get(&team).copied().unwrap_or_default();
            let past = self.teams.get(&team).copied().unwrap_or_default();
            let decayed = Dimensions {
                gpu: used.gpu + (past.gpu - used.gpu) * keep,
                cpu: used.cpu + (past.cpu - used.cpu) * keep,
                memory: used.memory + (past.memory - used.memory) * keep,
            };
            let negligible = decayed.gpu < 1e-6 && decayed.cpu < 1e-6 && decayed.memory < 1e-6;
            if negligible {
                self.teams.remove(&team);
            } else {
                self.teams.insert(team, decayed);
            }
        }
        self.as_of_ms = now_ms;
    }
}

/// Each team's fair-share standing, for ordering and for `allotctl fairshare`.
#[derive(Debug, Clone, PartialEq)]
pub struct Standing {
    /// Current usage of the team's subtree, in the three dimensions.
    pub current: Dimensions,
    /// Decayed past usage of the subtree.
    pub past: Dimensions,
    /// Dominant share of what the ordering uses (current, or the mean of current
    /// and past when history is kept).
    pub dominant_share: f64,
    /// Dominant share divided by weight: smaller is served first.
    pub weighted_share: f64,
    /// What the team is entitled to by weight: its weight over its siblings',
    /// times its parent's entitlement.
    pub fair_share: f64,
}

/// Computes every team's standing from per-leaf usage.
pub fn standings(
    tree: &QuotaTree,
    usage_by_leaf: &BTreeMap<TeamName, Resources>,
    history: &UsageHistory,
    capacity: &Resources,
    use_history: bool,
) -> BTreeMap<TeamName, Standing> {
    let capacity = Dimensions::of(capacity, tree);
    let current = subtree_dimensions(tree, usage_by_leaf);
    let mut standings = BTreeMap::new();
    for spec in tree.teams() {
        let now = current.get(&spec.name).copied().unwrap_or_default();
        let past = history.teams.get(&spec.name).copied().unwrap_or_default();
        let ordered = if use_history {
            Dimensions {
                gpu: (now.gpu + past.gpu) / 2.0,
                cpu: (now.cpu + past.cpu) / 2.0,
                memory: (now.memory + past.memory) / 2.0,
            }
        } else {
            now
        };
        let dominant_share = ordered.dominant_share(capacity);
        let mut fair_share = 1.0;
        for member in tree.path(&spec.name) {
            let siblings: u32 = match &member.parent {
                Some(parent) => {
                    tree.children(parent).iter().filter_map(|kid| tree.get(kid)).map(|s| s.quota.weight).sum()
                }
                None => tree.teams().filter(|s| s.parent.is_none()).map(|s| s.quota.weight).sum(),
            };
            if siblings > 0 {
                fair_share *= f64::from(member.quota.weight) / f64::from(siblings);
            }
        }
        standings.insert(
            spec.name.clone(),
            Standing {
                current: now,
                past,
                dominant_share,
                weighted_share: dominant_share / f64::from(spec.quota.weight.max(1)),
                fair_share,
            },
        );
    }
    standings
}

/// Usage of every team's subtree, summed from the leaves, for [`UsageHistory::advance`].
pub fn subtree_dimensions(
    tree: &QuotaTree,
    usage_by_leaf: &BTreeMap<TeamName, Resources>,
) -> BTreeMap<TeamName, Dimensions> {
    let mut current: BTreeMap<TeamName, Dimensions> = BTreeMap::new();
    for (leaf, resources) in usage_by_leaf {
        let dims = Dimensions::of(resources, tree);
        for spec in tree.path(leaf) {
            let entry = current.entry(spec.name.clone()).or_default();
            *entry = entry.plus(dims);
        }
    }
    current
}

/// The ordering key of a leaf: the weighted shares along its path from the root,
/// each with the name for ties. Comparing two keys compares the first ancestors
/// that differ, as Fair Tree does: siblings are ranked against siblings.
pub fn order_key(
    tree: &QuotaTree,
    leaf: &TeamName,
    standings: &BTreeMap<TeamName, Standing>,
) -> Vec<(OrderedShare, TeamName)> {
    let mut key: Vec<(OrderedShare, TeamName)> = tree
        .path(leaf)
        .iter()
        .map(|spec| {
            let share = standings.get(&spec.name).map_or(0.0, |standing| standing.weighted_share);
            (OrderedShare(share), spec.name.clone())
        })
        .collect();
    key.reverse();
    key
}

/// A share that sorts totally (NaN sorts last; shares are never NaN).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OrderedShare(pub f64);

impl Eq for OrderedShare {}

impl PartialOrd for OrderedShare {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for OrderedShare {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::tree::{Quota, TeamSpec};

    fn name(text: &str) -> TeamName {
        text.parse().expect("name")
    }

    fn flat_tree(weights: &[(&str, u32)], values: &[(&str, u32)]) -> QuotaTree {
        let specs = weights
            .iter()
            .map(|(team, weight)| TeamSpec {
                name: name(team),
                parent: None,
                quota: Quota { weight: *weight, ..Quota::default() },
            })
            .collect();
        let values = values.iter().map(|(family, value)| ((*family).to_owned(), *value)).collect();
        QuotaTree::new(specs, values, &BTreeSet::new()).expect("tree")
    }

    fn gpus(family: &str, count: u64) -> Resources {
        Resources(
            [(ResourceClass::GpuAny, count * 1000), (ResourceClass::gpu_family(family), count * 1000)]
                .into_iter()
                .collect(),
        )
    }

    #[test]
    fn decay_halves_past_usage_every_half_life() {
        let team = name("a");
        let mut history = UsageHistory::default();
        let busy: BTreeMap<TeamName, Dimensions> =
            [(team.clone(), Dimensions { gpu: 8000.0, ..Default::default() })].into();
        history.advance(1, &busy, 0);
        // With a one-hour half-life, a day of full use converges to the usage...
        history.advance(1, &BTreeMap::new(), 3_600_000);
        history.advance(1 + 86_400_000, &busy, 3_600_000);
        let full = history.teams[&team].gpu;
        assert!((full - 8000.0).abs() < 1.0, "{full}");
        // ...and one idle half-life halves it.
        history.advance(1 + 86_400_000 + 3_600_000, &BTreeMap::new(), 3_600_000);
        let halved = history.teams[&team].gpu;
        assert!((halved - 4000.0).abs() < 1.0, "{halved}");
    }

    #[test]
    fn a_team_that_used_nothing_yesterday_ranks_before_one_that_used_everything() {
        let tree = flat_tree(&[("busy", 1), ("idle", 1)], &[]);
        let capacity = gpus("h100", 16);
        let mut history = UsageHistory::default();
        let yesterday: BTreeMap<TeamName, Resources> = [(name("busy"), gpus("h100", 16))].into();
        history.advance(1, &BTreeMap::new(), 0);
        history.advance(86_400_000, &subtree_dimensions(&tree, &yesterday), 6 * 3_600_000);
        // Today both use the same.
        let today: BTreeMap<TeamName, Resources> =
            [(name("busy"), gpus("h100", 2)), (name("idle"), gpus("h100", 2))].into();
        let standings = standings(&tree, &today, &history, &capacity, true);
        assert!(
            order_key(&tree, &name("idle"), &standings) < order_key(&tree, &name("busy"), &standings),
            "{standings:?}"
        );
        // Without history they tie on share and the name decides.
        let plain = super::standings(&tree, &today, &history, &capacity, false);
        assert_eq!(plain[&name("idle")].weighted_share, plain[&name("busy")].weighted_share);
    }

    #[test]
    fn gpu_values_make_hardware_generations_comparable() {
        // One H100 is worth 8 T4s: a team on 2 H100s has the larger share than one on 8 T4s.
        let tree = flat_tree(&[("hopper", 1), ("turing", 1)], &[("h100", 8), ("t4", 1)]);
        let mut capacity = gpus("h100", 8);
        capacity.add(&gpus("t4", 64));
        let usage: BTreeMap<TeamName, Resources> =
            [(name("hopper"), gpus("h100", 2)), (name("turing"), gpus("t4", 8))].into();
        let standings = standings(&tree, &usage, &UsageHistory::default(), &capacity, false);
        let hopper = standings[&name("hopper")].dominant_share;
        let turing = standings[&name("turing")].dominant_share;
        // 2·8 / (8·8 + 64) = 0.125 against 8 / 128 = 0.0625.
        assert!((hopper - 0.125).abs() < 1e-9 && (turing - 0.0625).abs() < 1e-9, "{hopper} {turing}");
    }

    #[test]
    fn weights_scale_shares_and_entitlements() {
        let tree = flat_tree(&[("a", 1), ("b", 1), ("c", 2)], &[]);
        let capacity = gpus("h100", 16);
        let usage: BTreeMap<TeamName, Resources> =
            [(name("a"), gpus("h100", 4)), (name("b"), gpus("h100", 4)), (name("c"), gpus("h100", 8))].into();
        let standings = standings(&tree, &usage, &UsageHistory::default(), &capacity, false);
        for team in ["a", "b", "c"] {
            assert!((standings[&name(team)].weighted_share - 0.25).abs() < 1e-9, "{team}: {standings:?}");
        }
        assert!((standings[&name("c")].fair_share - 0.5).abs() < 1e-9);
    }
}
