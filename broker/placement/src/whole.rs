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
use crate::gpus::{GpuFilter, Mode, has_rdma_nic, is_throttling, mig_active, passes_filter, positions_by_index, rdma_cost};
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

pub(crate) fn evaluate(node: &NodeCtx<'_>, ask: &WholeAsk<'_>, exhaustive_limit: u64) -> Result<WholeOffer, NodeRefusal> {
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
    let mut usable: Vec<Usable> = Vec::new();
    for position in positions_by_index(inventory) {
        let gpu = &inventory.gpus[position];
        if !passes_filter(gpu, &ask.filter, node.mode, &mut excluded) {
            continue;
        }
        if node.mode == Mode::Now {
            if node.usage.gpu_in_use(gpu.index) {
                excluded.in_use += 1;
                continue;
            }
            // A MIG-enabled GPU runs no CUDA work as a whole device; granting it
            // whole would need MIG disabled first, which placement does not order.
            if mig_active(gpu, node.usage) {
                excluded.mig_enabled += 1;
                continue;
            }
        }
        if !has_rdma_nic(inventory, position, &ask.filter, &mut excluded) {
            continue;
        }
        usable.push(Usable {
            position,
            numa: gpu.numa_node,
            throttling: node.mode == Mode::Now && is_throttling(gpu),
            nic_cost: if ask.filter.rdma { rdma_cost(inventory, position) } else { 0 },
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
    /// Pair levels and costs, `n * n`, filled only when `k >= 2`.
    levels: Vec<ConnectionLevel>,
    costs: Vec<u32>,
    /// For each usable GPU, the others it is connected to as asked (itself excluded).
    adjacent: Vec<u64>,
    /// Free GPUs per NUMA node of the whole node, for the "stranded" criterion.
    free_per_numa: Vec<(Option<u32>, u32)>,
}

impl<'s> Search<'s> {
    /// `links`: fill the pair levels and the connection graph (needed for two GPUs
    /// or more, and for the largest connected set).
    fn new(node: &'s NodeCtx<'s>, ask: &'s WholeAsk<'s>, usable: &'s [Usable], links: bool) -> Self {
        let n = usable.len();
        let k = ask.count as usize;
        let all = if n == 64 { u64::MAX } else { (1u64 << n) - 1 };
        let mut search = Search {
            node,
            ask,
            usable,
            k,
            levels: Vec::new(),
            costs: Vec::new(),
            adjacent: (0..n).map(|i| all & !(1u64 << i)).collect(),
            free_per_numa: Vec::new(),
        };
        if links {
            search.fill_links();
        }
        search.free_per_numa = free_gpus_per_numa(node);
        search
    }

    fn fill_links(&mut self) {
        let inventory = self.node.inventory;
        let n = self.usable.len();
        self.levels = vec![ConnectionLevel::Same; n * n];
        self.costs = vec![0; n * n];
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
                            ConnectionLevel::NvLink(_) => inventory
                                .pci
                                .pcie_level(inventory.gpus[a.position].pci_bus_id, inventory.gpus[b.position].pci_bus_id),
                            other => Some(other),
                        };
                        matches!(pcie, Some(ConnectionLevel::Pix | ConnectionLevel::Pxb))
                    }
                };
                if !connected {
                    self.adjacent[i] &= !(1u64 << j);
                    self.adjacent[j] &= !(1u64 << i);
                }
                for (x, y) in [(i, j), (j, i)] {
                    self.levels[x * n + y] = level;
                    self.costs[x * n + y] = pair_cost(level);
                }
            }
        }
    }

    fn run(&self, exhaustive_limit: u64) -> Option<(WholeScore, Vec<usize>)> {
        let mut best: Option<(WholeScore, Vec<usize>)> = None;
        let mut consider = |set: &[usize]| {
            let score = self.score(set);
            // Sets arrive in increasing index order (exhaustive) or by seed index
            // (greedy), so keeping the first of equals breaks ties by GPU index.
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
            let all = if n == 64 { u64::MAX } else { (1u64 << n) - 1 };
            let mut chosen = Vec::with_capacity(self.k);
            self.exhaustive(0, all, &mut chosen, &mut consider);
        } else {
            self.greedy(&mut consider);
        }
        best
    }

    fn exhaustive(&self, start: usize, allowed: u64, chosen: &mut Vec<usize>, visit: &mut impl FnMut(&[usize])) {
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
            if allowed & (1u64 << i) == 0 {
                continue;
            }
            chosen.push(i);
            self.exhaustive(i + 1, allowed & self.adjacent[i], chosen, visit);
            chosen.pop();
        }
    }

    /// From each GPU, add the connected GPU with the cheapest links to those chosen
    /// so far (not throttling, lowest index on ties) until the set is complete.
    fn greedy(&self, visit: &mut impl FnMut(&[usize])) {
        let n = self.usable.len();
        let mut set = Vec::with_capacity(self.k);
        for seed in 0..n {
            set.clear();
            set.push(seed);
            let mut allowed = self.adjacent[seed];
            while set.len() < self.k {
                let next = (0..n).filter(|candidate| allowed & (1u64 << candidate) != 0).min_by_key(|candidate| {
                    let links: u32 = set.iter().map(|member| self.costs[candidate * n + member]).sum();
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
        for (position, a) in set.iter().enumerate() {
            for b in &set[position + 1..] {
                let level = self.levels[a * n + b];
                if level.rank() > worst_link.rank() {
                    worst_link = level;
                }
                link_cost = link_cost.saturating_add(self.costs[a * n + b]);
            }
        }
        let numa_of = |i: &usize| self.usable[*i].numa;
        let distinct_numa = |position: usize| !set[..position].iter().any(|earlier| numa_of(earlier) == numa_of(&set[position]));
        let mut numa_nodes = 0;
        let mut stranded = 0;
        for position in 0..set.len() {
            if distinct_numa(position) {
                numa_nodes += 1;
                let numa = numa_of(&set[position]);
                let chosen_here = set.iter().filter(|i| numa_of(i) == numa).count() as u32;
                let free_here =
                    self.free_per_numa.iter().find(|(free_numa, _)| *free_numa == numa).map_or(0, |(_, free)| *free);
                stranded += free_here.saturating_sub(chosen_here);
            }
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
        let n = self.usable.len();
        let all = if n == 64 { u64::MAX } else { (1u64 << n) - 1 };
        let mut best = 0;
        largest_clique(&self.adjacent, 0, all, 0, &mut best);
        best
    }
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

/// Healthy, unused GPUs per NUMA node of the whole node.
fn free_gpus_per_numa(node: &NodeCtx<'_>) -> Vec<(Option<u32>, u32)> {
    let mut free: Vec<(Option<u32>, u32)> = Vec::new();
    for gpu in &node.inventory.gpus {
        let is_free = node.mode == Mode::Ever
            || (!crate::gpus::is_unhealthy(gpu) && !node.usage.gpu_in_use(gpu.index) && !mig_active(gpu, node.usage));
        if !is_free {
            continue;
        }
        match free.iter_mut().find(|(numa, _)| *numa == gpu.numa_node) {
            Some((_, count)) => *count += 1,
            None => free.push((gpu.numa_node, 1)),
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
