//! Whole GPUs: which free GPUs of one node a request gets, connected as it asks.
//!
//! The GPUs that pass the request's filters and are free become a small graph whose
//! edges are the pairs connected as asked (NVLink, one PCIe switch, one NUMA node,
//! or any). Every set of `count` mutually connected GPUs is a candidate; candidates
//! are enumerated exhaustively when there are few (`C(n, k)` up to a limit),
//! otherwise grown greedily from each GPU along its best links. The best-scoring
//! set wins; ties go to the lowest GPU indices.

use allot_api::allocation::Interconnect;
use allot_api::topology::ConnectionLevel;

use crate::explain::{GpuExclusions, NodeRefusal};
use crate::gpus::{GpuFilter, Mode, has_rdma_nic, passes_filter, rdma_cost};
use crate::node::NodeCtx;
use crate::score::{WholeScore, pair_cost};

/// What a whole-GPU request asks of one node.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WholeAsk<'r> {
    pub count: u32,
    pub interconnect: Interconnect,
    pub filter: GpuFilter<'r>,
    pub cpus: u32,
}

/// The best set of GPUs of one node, by position in the inventory.
#[derive(Debug, Clone)]
pub(crate) struct WholeOffer {
    pub score: WholeScore,
    pub positions: Vec<usize>,
}

/// Subset search looks at no more than this many usable GPUs of one node (the
/// largest GPU servers have 16); the rest are not considered.
const MAX_SEARCHED_GPUS: usize = 64;

/// A usable GPU, with what its score needs.
#[derive(Debug, Clone, Copy)]
struct Usable {
    position: usize,
    numa: Option<u32>,
    throttling: bool,
    nic_cost: u32,
}

pub(crate) fn evaluate(
    node: &NodeCtx<'_>,
    ask: &WholeAsk<'_>,
    exhaustive_limit: u64,
) -> Result<WholeOffer, NodeRefusal> {
    if node.mode == Mode::Now {
        // From the usage alone, without reading the GPUs: most nodes of a busy
        // cluster stop here for a large request.
        let in_use = node.usage.gpus_in_use();
        let free_at_most = (node.inventory.gpus.len() as u32).saturating_sub(in_use);
        if free_at_most < ask.count {
            let excluded = GpuExclusions { in_use, ..GpuExclusions::default() };
            return Err(NodeRefusal::TooFewGpus { requested: ask.count, eligible: free_at_most, excluded });
        }
    }
    let (usable, excluded) = usable_gpus(node, ask);
    if usable.len() < ask.count as usize {
        return Err(NodeRefusal::TooFewGpus { requested: ask.count, eligible: usable.len() as u32, excluded });
    }
    let search = Search::new(node, ask, &usable, ask.count >= 2);
    match search.run(exhaustive_limit) {
        Some((score, set)) => Ok(WholeOffer { score, positions: set.iter().map(|i| usable[*i].position).collect() }),
        None => Err(NodeRefusal::NoConnectedSet {
            interconnect: ask.interconnect,
            requested: ask.count,
            eligible: usable.len() as u32,
            largest: search.largest_connected(),
        }),
    }
}

/// The most usable GPUs of the node that are all connected as `ask` says.
pub(crate) fn largest_domain(node: &NodeCtx<'_>, ask: &WholeAsk<'_>) -> u32 {
    let (usable, _) = usable_gpus(node, ask);
    if usable.is_empty() {
        return 0;
    }
    Search::new(node, ask, &usable, true).largest_connected()
}

/// The GPUs that pass the request's filters and are free, in GPU index order, and
/// why the others were left out.
fn usable_gpus(node: &NodeCtx<'_>, ask: &WholeAsk<'_>) -> (Vec<Usable>, GpuExclusions) {
    let inventory = node.inventory;
    let mut excluded = GpuExclusions::default();
    let mut usable: Vec<Usable> = Vec::with_capacity(inventory.gpus.len());
    for state in node.gpus() {
        let gpu = &inventory.gpus[state.position];
        if !passes_filter(gpu, &ask.filter, node.mode, &mut excluded) {
            continue;
        }
        if state.in_use {
            excluded.in_use += 1;
            continue;
        }
        // A MIG-enabled GPU runs no CUDA work as a whole device; granting it whole
        // would need MIG disabled first, which placement does not order.
        if state.mig_active {
            excluded.mig_enabled += 1;
            continue;
        }
        if !has_rdma_nic(inventory, state.position, &ask.filter, &mut excluded) {
            continue;
        }
        usable.push(Usable {
            position: state.position,
            numa: state.numa,
            throttling: state.throttling,
            nic_cost: if ask.filter.rdma { rdma_cost(inventory, state.position) } else { 0 },
        });
    }
    usable.truncate(MAX_SEARCHED_GPUS);
    (usable, excluded)
}

/// The subset search over one node's usable GPUs (indices into `usable`).
struct Search<'s> {
    node: &'s NodeCtx<'s>,
    ask: &'s WholeAsk<'s>,
    usable: &'s [Usable],
    k: usize,
    /// Pair levels, `n * n`, filled only when links are needed.
    levels: Vec<ConnectionLevel>,
    /// For each usable GPU, the others it is connected to as asked (itself excluded).
    adjacent: Vec<u64>,
    /// For each usable GPU, the previous one (lower index) it is interchangeable
    /// with: same NUMA node, throttling, NIC cost and links to every other GPU. A
    /// set with a GPU but not its earlier twin scores the same as the set with the
    /// twin instead, which sorts first, so the search skips it.
    twin_before: Vec<Option<usize>>,
    /// Free GPUs per NUMA node of the whole node, for the "stranded" criterion.
    free_per_numa: Vec<(Option<u32>, u32)>,
}

impl<'s> Search<'s> {
    /// `links`: fill the pair levels and the connection graph (needed for two GPUs
    /// or more, and for the largest connected set).
    fn new(node: &'s NodeCtx<'s>, ask: &'s WholeAsk<'s>, usable: &'s [Usable], links: bool) -> Self {
        let n = usable.len();
        let k = ask.count as usize;
        let all = mask_of(n);
        let mut search = Search {
            node,
            ask,
            usable,
            k,
            levels: Vec::new(),
            adjacent: (0..n).map(|i| all & !(1u64 << i)).collect(),
            twin_before: vec![None; n],
            free_per_numa: Vec::new(),
        };
        if links {
            search.fill_links();
        }
        if binomial(n as u64, k as u64) > n as u64 || k == 1 {
            search.find_twins(links);
        }
        search.free_per_numa = free_gpus_per_numa(node);
        search
    }

    fn fill_links(&mut self) {
        let inventory = self.node.inventory;
        let n = self.usable.len();
        self.levels = vec![ConnectionLevel::Same; n * n];
        for i in 0..n {
            for j in i + 1..n {
                let (a, b) = (self.usable[i], self.usable[j]);
                let level = inventory.gpu_gpu_level(a.position, b.position).unwrap_or(ConnectionLevel::Sys);
                let connected = match self.ask.interconnect {
                    Interconnect::Any => true,
                    Interconnect::Nvlink => matches!(level, ConnectionLevel::NvLink(_)),
                    Interconnect::Numa => a.numa.is_some() && a.numa == b.numa,
                    Interconnect::PcieSwitch => {
                        let pcie = match level {
                            ConnectionLevel::NvLink(_) => inventory.pci.pcie_level(
                                inventory.gpus[a.position].pci_bus_id,
                                inventory.gpus[b.position].pci_bus_id,
                            ),
                            other => Some(other),
                        };
                        matches!(pcie, Some(ConnectionLevel::Pix | ConnectionLevel::Pxb))
                    }
                };
                if !connected {
                    self.adjacent[i] &= !(1u64 << j);
                    self.adjacent[j] &= !(1u64 << i);
                }
                self.levels[i * n + j] = level;
                self.levels[j * n + i] = level;
            }
        }
    }

    fn find_twins(&mut self, links: bool) {
        let n = self.usable.len();
        for j in 1..n {
            self.twin_before[j] = (0..j).rev().find(|i| {
                let (a, b) = (self.usable[*i], self.usable[j]);
                let others = !((1u64 << i) | (1u64 << j));
                a.numa == b.numa
                    && a.throttling == b.throttling
                    && a.nic_cost == b.nic_cost
                    && (!links
                        || (self.adjacent[*i] & others == self.adjacent[j] & others
                            && (0..n).all(|m| m == *i || m == j || self.levels[i * n + m] == self.levels[j * n + m])))
            });
        }
    }

    fn run(&self, exhaustive_limit: u64) -> Option<(WholeScore, Vec<usize>)> {
        let mut best: Option<(WholeScore, Vec<usize>)> = None;
        let mut consider = |set: &[usize]| {
            let score = self.score(set);
            // Sets arrive in increasing index order (exhaustive) or by seed index
            // (greedy); comparing the sets themselves on equal scores breaks ties
            // by GPU index.
            let better = match &best {
                None => true,
                Some((best_score, best_set)) => (score, set) < (*best_score, best_set.as_slice()),
            };
            if better {
                best = Some((score, set.to_vec()));
            }
        };
        let n = self.usable.len();
        if binomial(n as u64, self.k as u64) <= exhaustive_limit {
            let mut chosen = Vec::with_capacity(self.k);
            self.exhaustive(0, mask_of(n), 0, &mut chosen, &mut consider);
        } else {
            self.greedy(&mut consider);
        }
        best
    }

    fn exhaustive(
        &self,
        start: usize,
        allowed: u64,
        chosen_mask: u64,
        chosen: &mut Vec<usize>,
        visit: &mut impl FnMut(&[usize]),
    ) {
        if chosen.len() == self.k {
            visit(chosen);
            return;
        }
        let need = self.k - chosen.len();
        let n = self.usable.len();
        for i in start..n {
            if n - i < need {
                break;
            }
            if allowed & (1u64 << i) == 0 || self.twin_before[i].is_some_and(|twin| chosen_mask & (1u64 << twin) == 0) {
                continue;
            }
            chosen.push(i);
            self.exhaustive(i + 1, allowed & self.adjacent[i], chosen_mask | (1u64 << i), chosen, visit);
            chosen.pop();
        }
    }

    /// From each GPU, add the connected GPU with the cheapest links to those chosen
    /// so far (not throttling, lowest index on ties) until the set is complete.
    fn greedy(&self, visit: &mut impl FnMut(&[usize])) {
        let n = self.usable.len();
        let mut set = Vec::with_capacity(self.k);
        for seed in (0..n).filter(|seed| self.twin_before[*seed].is_none()) {
            set.clear();
            set.push(seed);
            let mut allowed = self.adjacent[seed];
            while set.len() < self.k {
                let next = (0..n).filter(|candidate| allowed & (1u64 << candidate) != 0).min_by_key(|candidate| {
                    let links: u32 = set.iter().map(|member| pair_cost(self.levels[candidate * n + member])).sum();
                    (links, self.usable[*candidate].throttling, *candidate)
                });
                let Some(next) = next else { break };
                set.push(next);
                allowed &= self.adjacent[next];
            }
            if set.len() == self.k {
                let mut sorted = set.clone();
                sorted.sort_unstable();
                visit(&sorted);
            }
        }
    }

    fn score(&self, set: &[usize]) -> WholeScore {
        let n = self.usable.len();
        let mut worst_link = ConnectionLevel::Same;
        let mut link_cost = 0u32;
        if !self.levels.is_empty() {
            for (position, a) in set.iter().enumerate() {
                for b in &set[position + 1..] {
                    let level = self.levels[a * n + b];
                    if level.rank() > worst_link.rank() {
                        worst_link = level;
                    }
                    link_cost = link_cost.saturating_add(pair_cost(level));
                }
            }
        }
        let numa_of = |i: &usize| self.usable[*i].numa;
        let mut numa_nodes = 0;
        let mut stranded = 0;
        for (position, member) in set.iter().enumerate() {
            let numa = numa_of(member);
            if set[..position].iter().any(|earlier| numa_of(earlier) == numa) {
                continue;
            }
            numa_nodes += 1;
            let chosen_here = set.iter().filter(|i| numa_of(i) == numa).count() as u32;
            let free_here =
                self.free_per_numa.iter().find(|(free_numa, _)| *free_numa == numa).map_or(0, |(_, free)| *free);
            stranded += free_here.saturating_sub(chosen_here);
        }
        WholeScore {
            worst_link,
            throttling: set.iter().filter(|i| self.usable[**i].throttling).count() as u32,
            cores_spill: self.node.cores_spill(set.iter().map(numa_of), self.ask.cpus),
            free_gpus_after: self.node.free_gpus().saturating_sub(self.k as u32),
            link_cost,
            numa_nodes,
            nic_cost: set.iter().map(|i| self.usable[*i].nic_cost).sum(),
            stranded,
        }
    }

    /// The most usable GPUs that are all connected as asked (a maximum clique of the
    /// connection graph), for the refusal message.
    fn largest_connected(&self) -> u32 {
        let mut best = 0;
        largest_clique(&self.adjacent, 0, mask_of(self.usable.len()), 0, &mut best);
        best
    }
}

/// The bit set of the first `n` (at most 64) indices.
fn mask_of(n: usize) -> u64 {
    if n >= 64 { u64::MAX } else { (1u64 << n) - 1 }
}

/// Bron–Kerbosch with pivoting over bit sets; `best` grows to the size of the
/// largest clique. Small graphs only (at most 64 vertices).
fn largest_clique(adjacent: &[u64], size: u32, mut candidates: u64, mut excluded: u64, best: &mut u32) {
    if candidates == 0 {
        if excluded == 0 {
            *best = (*best).max(size);
        }
        return;
    }
    if size + candidates.count_ones() <= *best {
        return;
    }
    let pivot = (candidates | excluded).trailing_zeros() as usize;
    let mut outside_pivot = candidates & !adjacent[pivot];
    while outside_pivot != 0 {
        let vertex = outside_pivot.trailing_zeros() as usize;
        let bit = 1u64 << vertex;
        outside_pivot &= !bit;
        largest_clique(adjacent, size + 1, candidates & adjacent[vertex], excluded & adjacent[vertex], best);
        candidates &= !bit;
        excluded |= bit;
    }
}

/// GPUs per NUMA node of the whole node that could be granted whole.
fn free_gpus_per_numa(node: &NodeCtx<'_>) -> Vec<(Option<u32>, u32)> {
    let mut free: Vec<(Option<u32>, u32)> = Vec::new();
    for gpu in node.gpus().iter().filter(|gpu| gpu.free() && !gpu.mig_active) {
        match free.iter_mut().find(|(numa, _)| *numa == gpu.numa) {
            Some((_, count)) => *count += 1,
            None => free.push((gpu.numa, 1)),
        }
    }
    free
}

/// `n` choose `k`, saturating at `u64::MAX`.
pub(crate) fn binomial(n: u64, k: u64) -> u64 {
    if k > n {
        return 0;
    }
    let k = k.min(n - k);
    let mut result: u64 = 1;
    for i in 0..k {
        // result * (n - i) / (i + 1) stays exact because result is C(n, i) * ... ;
        // u128 keeps the intermediate product from overflowing.
        let next = u128::from(result) * u128::from(n - i) / u128::from(i + 1);
        result = u64::try_from(next).unwrap_or(u64::MAX);
        if result == u64::MAX {
            break;
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binomials_are_exact_and_saturate() {
        for (n, k, expected) in [(8, 4, 70), (8, 0, 1), (8, 8, 1), (3, 5, 0), (64, 32, 1_832_624_140_942_590_534)] {
            assert_eq!(binomial(n, k), expected, "C({n}, {k})");
        }
        assert_eq!(binomial(200, 100), u64::MAX);
    }

    fn check_clique(edges: &[(usize, usize)], n: usize, expected: u32) {
        let mut adjacent = vec![0u64; n];
        for (a, b) in edges {
            adjacent[*a] |= 1 << b;
            adjacent[*b] |= 1 << a;
        }
        let mut best = 0;
        largest_clique(&adjacent, 0, (1u64 << n) - 1, 0, &mut best);
        assert_eq!(best, expected, "{edges:?}");
    }

    /// Skipping sets with a GPU but not its earlier twin never changes the best set:
    /// every fixture, every mask of used GPUs, every interconnect, 1 to 5 GPUs, with
    /// and without a throttling GPU and RDMA.
    #[test]
    fn symmetry_breaking_finds_the_same_best_set() {
        use allot_api::allocation::{Binding, GpuGrant};
        use allot_api::topology::{NodeInventory, ThrottleReason};

        use crate::usage::NodeUsage;

        let fixtures = [
            include_str!("../tests/data/dgx-h100.json"),
            include_str!("../tests/data/pcie-l40s.json"),
            include_str!("../tests/data/dgx-a100-mig.json"),
        ];
        let mut checked = 0;
        for json in fixtures {
            let mut inventory: NodeInventory = serde_json::from_str(json).expect("fixture");
            for throttle in [false, true] {
                if throttle && let Some(telemetry) = inventory.gpus[1].telemetry.as_mut() {
                    telemetry.throttle_reasons = vec![ThrottleReason::HwSlowdown];
                }
                for used in 0u32..(1 << inventory.gpus.len()) {
                    let gpus = (0..inventory.gpus.len() as u32)
                        .filter(|gpu| used & (1 << gpu) != 0)
                        .map(|index| GpuGrant {
                            index,
                            uuid: None,
                            pci_bus_id: String::new(),
                            mig: None,
                            share: None,
                            nic: None,
                        })
                        .collect();
                    let binding = Binding {
                        node: "n".parse().expect("name"),
                        gpus,
                        cpus: vec![],
                        cores: (0..20).collect(),
                        memory: allot_api::units::MiB(0),
                        numa_nodes: vec![],
                    };
                    let usage = NodeUsage::from_bindings([&binding]);
                    let node = NodeCtx::new(&inventory, &usage, Mode::Now);
                    for interconnect in
                        [Interconnect::Any, Interconnect::Nvlink, Interconnect::PcieSwitch, Interconnect::Numa]
                    {
                        for (count, rdma) in [(1, false), (2, false), (2, true), (3, false), (4, false), (5, false)] {
                            let ask = WholeAsk {
                                count,
                                interconnect,
                                filter: GpuFilter { models: &[], min_memory: None, rdma, pin: None },
                                cpus: 24,
                            };
                            let (usable, _) = usable_gpus(&node, &ask);
                            if usable.len() < count as usize {
                                continue;
                            }
                            let search = Search::new(&node, &ask, &usable, count >= 2);
                            let mut plain = Search::new(&node, &ask, &usable, count >= 2);
                            plain.twin_before = vec![None; usable.len()];
                            assert_eq!(
                                search.run(u64::MAX),
                                plain.run(u64::MAX),
                                "{interconnect} x{count} used {used:b}"
                            );
                            assert_eq!(search.run(0), plain.run(0), "greedy {interconnect} x{count} used {used:b}");
                            checked += 1;
                        }
                    }
                }
            }
        }
        assert!(checked > 10_000, "{checked}");
    }

    #[test]
    fn largest_cliques_are_found() {
        check_clique(&[], 3, 1);
        check_clique(&[(0, 1), (2, 3)], 4, 2);
        check_clique(&[(0, 1), (1, 2), (0, 2), (2, 3)], 4, 3);
        // The DGX-1 hybrid cube mesh: two fully connected quads joined by a ring.
        let mut mesh = vec![];
        for quad in [0, 4] {
            for a in quad..quad + 4 {
                for b in a + 1..quad + 4 {
                    mesh.push((a, b));
                }
            }
        }
        mesh.extend([(0, 4), (1, 5), (2, 6), (3, 7)]);
        check_clique(&mesh, 8, 4);
    }
}
