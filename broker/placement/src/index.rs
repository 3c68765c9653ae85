//! An incremental index of the cluster for placement, so a decision reads a few
//! entries instead of scoring every node.
//!
//! Two nodes with the same placement shape (what placement reads of the hardware,
//! a fingerprint the caller computes), the same status and the same usage get the
//! same offer for any request: they form a *class*, and only the first member by
//! name can win (ties go to the first name). For each request shape seen (a
//! *ranking*: the request without its team and owner) the index keeps the ready
//! classes whose offer fits, ordered by (score, first member), and each class
//! remembers its offer per ranking. A node whose usage, status or shape changes
//! moves to another class; the classes that appeared, emptied or changed their
//! first member are logged, and a ranking catches up with the log when it is next
//! used, so a decision costs the classes that changed since, not the cluster.
//!
//! The decision is the exhaustive engine's ([`crate::place`]), which stays the
//! oracle: `tests/index.rs` compares them on random clusters and request
//! streams. Only the explanation is shorter: the chosen node and the runner-up;
//! every node's verdict comes from the exhaustive engine on demand.

use std::collections::{BTreeSet, HashMap};

use allot_api::allocation::{GpuDemand, Interconnect, NodeName, ValidatedRequest};
use allot_api::units::MiB;

use crate::explain::NodeRefusal;
use crate::gpus::Mode;
use crate::place::{Offer, decide_offer, evaluate_node};
use crate::score::Score;
use crate::usage::NodeUsage;
use crate::{Decision, NodeStatus, NodeView, PlacementOptions};

/// How many request shapes keep a ranking; the least recently used goes first.
const RANKINGS: usize = 256;

/// What makes two nodes interchangeable for placement.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ClassKey {
    shape: u64,
    status: NodeStatus,
    usage: NodeUsage,
}

#[derive(Debug)]
struct Class {
    key: ClassKey,
    members: BTreeSet<NodeName>,
    /// The offer of a node of this class, per ranking id.
    offers: HashMap<u64, Result<Offer, NodeRefusal>>,
}

/// What placement reads of a request: everything but its team and owner.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct RequestKey {
    gpus: GpuDemand,
    cpus: u32,
    memory: MiB,
    interconnect: Interconnect,
    rdma: bool,
    min_gpu_memory: Option<MiB>,
}

impl RequestKey {
    fn of(request: &ValidatedRequest) -> Self {
        RequestKey {
            gpus: request.gpus.clone(),
            cpus: request.cpus,
            memory: request.memory,
            interconnect: request.interconnect,
            rdma: request.rdma,
            min_gpu_memory: request.min_gpu_memory,
        }
    }
}

/// The ready classes that can take one request shape, best first.
#[derive(Debug)]
struct Ranking {
    id: u64,
    /// The log position (absolute) this ranking has caught up to; `None` before
    /// its first use.
    synced: Option<u64>,
    ranked: BTreeSet<(Score, NodeName, usize)>,
    /// Each ranked class's entry in `ranked`, to remove it when the class changes.
    entries: HashMap<usize, (Score, NodeName)>,
    last_used: u64,
}

/// One class as a caller sees it: its first member by name and how many other
/// nodes are identical to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Representative {
    pub name: NodeName,
    pub twins: usize,
}

/// The cluster grouped for placement; see the module documentation.
#[derive(Debug, Default)]
pub struct PlacementIndex {
    options: PlacementOptions,
    classes: Vec<Option<Class>>,
    free_slots: Vec<usize>,
    by_key: HashMap<ClassKey, usize>,
    node_class: HashMap<NodeName, usize>,
    /// Classes that appeared, emptied or changed their first member, in order;
    /// `log[0]` is at absolute position `log_base`.
    log: Vec<usize>,
    log_base: u64,
    rankings: HashMap<RequestKey, Ranking>,
    next_ranking: u64,
    clock: u64,
}

impl PlacementIndex {
    pub fn new(options: PlacementOptions) -> Self {
        PlacementIndex { options, ..PlacementIndex::default() }
    }

    /// Records a node's current shape, status and usage (new or changed). Cheap
    /// when nothing placement reads changed.
    pub fn update(&mut self, name: &NodeName, shape: u64, status: NodeStatus, usage: &NodeUsage) {
        if let Some(&current) = self.node_class.get(name) {
            if let Some(class) = &self.classes[current]
                && class.key.shape == shape
                && class.key.status == status
                && class.key.usage == *usage
            {
                return;
            }
            self.leave(name, current);
        }
        let key = ClassKey { shape, status, usage: usage.clone() };
        let slot = match self.by_key.get(&key) {
            Some(&slot) => slot,
            None => {
                let class = Class { key: key.clone(), members: BTreeSet::new(), offers: HashMap::new() };
                let slot = match self.free_slots.pop() {
                    Some(slot) => {
                        self.classes[slot] = Some(class);
                        slot
                    }
                    None => {
                        self.classes.push(Some(class));
                        self.classes.len() - 1
                    }
                };
                self.by_key.insert(key, slot);
                slot
            }
        };
        let Some(class) = self.classes[slot].as_mut() else { return };
        let first = class.members.first().is_none_or(|first| name < first);
        class.members.insert(name.clone());
        if first {
            self.log.push(slot);
        }
        self.node_class.insert(name.clone(), slot);
        self.trim_log();
    }

    /// Forgets a node.
    pub fn remove(&mut self, name: &NodeName) {
        if let Some(slot) = self.node_class.get(name).copied() {
            self.leave(name, slot);
        }
        self.trim_log();
    }

    fn leave(&mut self, name: &NodeName, slot: usize) {
        self.node_class.remove(name);
        let Some(class) = self.classes[slot].as_mut() else { return };
        let was_first = class.members.first() == Some(name);
        class.members.remove(name);
        if class.members.is_empty() {
            if let Some(class) = self.classes[slot].take() {
                self.by_key.remove(&class.key);
            }
            self.free_slots.push(slot);
            self.log.push(slot);
        } else if was_first {
            self.log.push(slot);
        }
    }

    /// Keeps the log short: rankings that fell behind its new start are rebuilt
    /// when next used.
    fn trim_log(&mut self) {
        let limit = 1024 + 4 * self.classes.len();
        if self.log.len() > limit {
            let drop = self.log.len() / 2;
            self.log.drain(..drop);
            self.log_base += drop as u64;
        }
    }

    /// How many nodes the index holds.
    pub fn len(&self) -> usize {
        self.node_class.len()
    }

    pub fn is_empty(&self) -> bool {
        self.node_class.is_empty()
    }

    /// How many classes (groups of interchangeable nodes) there are.
    pub fn classes(&self) -> usize {
        self.by_key.len()
    }

    /// One node per class (its first member by name) with how many others it
    /// stands for, in name order: what placement must see to decide as over all
    /// nodes (see [`crate::ClusterContext::twins`]).
    pub fn representatives(&self) -> Vec<Representative> {
        let mut representatives: Vec<Representative> = self
            .classes
            .iter()
            .flatten()
            .filter_map(|class| {
                class.members.first().map(|name| Representative { name: name.clone(), twins: class.members.len() - 1 })
            })
            .collect();
        representatives.sort_by(|a, b| a.name.cmp(&b.name));
        representatives
    }

    /// Whether the index holds this node with exactly this shape, status and usage
    /// (for callers that check they kept it up to date).
    pub fn agrees(&self, name: &NodeName, shape: u64, status: NodeStatus, usage: &NodeUsage) -> bool {
        self.node_class
            .get(name)
            .and_then(|slot| self.classes[*slot].as_ref())
            .is_some_and(|class| class.key.shape == shape && class.key.status == status && class.key.usage == *usage)
    }

    /// Places a request as [`crate::place_with`] over every node would, reading
    /// the index; `view_of` gives a node's current view by name. `None` when the
    /// index does not decide it: a pinned request, or no node can take it now (the
    /// exhaustive engine then explains the refusal). Ranks shares as best fit, as
    /// [`crate::place`] does; callers with a learned mix use
    /// [`crate::place_learned`] over [`PlacementIndex::representatives`].
    pub fn place<'a>(
        &mut self,
        request: &ValidatedRequest,
        view_of: impl Fn(&NodeName) -> Option<NodeView<'a>>,
    ) -> Option<Decision> {
        if request.pin.is_some() {
            return None;
        }
        self.clock += 1;
        let key = RequestKey::of(request);
        if !self.rankings.contains_key(&key) {
            self.evict_rankings();
            self.next_ranking += 1;
            let ranking = Ranking {
                id: self.next_ranking,
                synced: None,
                ranked: BTreeSet::new(),
                entries: HashMap::new(),
                last_used: 0,
            };
            self.rankings.insert(key.clone(), ranking);
        }
        let Self { classes, log, log_base, rankings, options, clock, .. } = self;
        let ranking = rankings.get_mut(&key)?;
        ranking.last_used = *clock;
        let end = *log_base + log.len() as u64;
        let resume = ranking.synced.filter(|synced| *synced >= *log_base);
        if let Some(synced) = resume {
            let start = (synced - *log_base) as usize;
            let mut changed: Vec<usize> = log.get(start..).unwrap_or_default().to_vec();
            changed.sort_unstable();
            changed.dedup();
            for slot in changed {
                refresh(ranking, classes, slot, request, options, &view_of);
            }
        } else {
            // First use, or fell behind the log's start: built from every class.
            ranking.ranked.clear();
            ranking.entries.clear();
            for slot in 0..classes.len() {
                refresh(ranking, classes, slot, request, options, &view_of);
            }
        }
        ranking.synced = Some(end);
        let mut best = ranking.ranked.iter();
        let (score, name, slot) = best.next()?;
        let class = classes.get(*slot)?.as_ref()?;
        let Some(Ok(offer)) = class.offers.get(&ranking.id) else { return None };
        let chosen = view_of(name)?;
        // The runner-up: a twin of the chosen node (a tie lost on name), else the
        // first node of the next class.
        let runner_up = match class.members.iter().nth(1) {
            Some(twin) => view_of(twin).map(|view| (view, score.clone())),
            None => best.next().and_then(|(score, name, _)| view_of(name).map(|view| (view, score.clone()))),
        };
        let note = format!(
            "\nconsidered: the best of {} groups of identical nodes that can take it now; \
             `allotctl alloc create --dry-run` lists every node's verdict",
            ranking.ranked.len()
        );
        decide_offer(request, chosen, offer, runner_up, &note).ok()
    }

    fn evict_rankings(&mut self) {
        if self.rankings.len() < RANKINGS {
            return;
        }
        let Some(oldest) =
            self.rankings.iter().min_by_key(|(_, ranking)| ranking.last_used).map(|(key, _)| key.clone())
        else {
            return;
        };
        if let Some(ranking) = self.rankings.remove(&oldest) {
            for class in self.classes.iter_mut().flatten() {
                class.offers.remove(&ranking.id);
            }
        }
    }
}

/// Brings one class's entry in a ranking up to date: removed, or (re)inserted
/// with its offer, which is computed once per class and ranking.
fn refresh<'a>(
    ranking: &mut Ranking,
    classes: &mut [Option<Class>],
    slot: usize,
    request: &ValidatedRequest,
    options: &PlacementOptions,
    view_of: &impl Fn(&NodeName) -> Option<NodeView<'a>>,
) {
    if let Some((score, name)) = ranking.entries.remove(&slot) {
        ranking.ranked.remove(&(score, name, slot));
    }
    let Some(class) = classes.get_mut(slot).and_then(Option::as_mut) else { return };
    if class.key.status != NodeStatus::Ready {
        return;
    }
    let Some(first) = class.members.first() else { return };
    if !class.offers.contains_key(&ranking.id) {
        // Any member would do: they differ only in what placement ignores.
        let Some(view) = view_of(first) else { return };
        let offer = evaluate_node(request, view.inventory, &class.key.usage, Mode::Now, options, None);
        class.offers.insert(ranking.id, offer);
    }
    if let Some(Ok(offer)) = class.offers.get(&ranking.id) {
        ranking.entries.insert(slot, (offer.score.clone(), first.clone()));
        ranking.ranked.insert((offer.score.clone(), first.clone(), slot));
    }
}
