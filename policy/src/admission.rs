//! Admission: which waiting requests get capacity, in which order, and which
//! borrowed allocations are reclaimed for a team below its guarantee.
//!
//! One [`admit`] call is one scheduling round over the queue. It is pure: the
//! broker passes what it knows of its live allocations ([`Live`]), the queue,
//! the time, and a [`Placer`] that answers "does it fit?" with the real
//! placement engine. A round reads per-team usage, the reclaims under way, and
//! the allocations of teams beyond their guarantee when it looks for what to
//! reclaim: it costs the queue, not the number of live allocations.
//!
//! Rules, in order:
//! 1. Limits: a team and each ancestor stay within their limits. A request larger
//!    than a limit on its own never fits; one that fits later waits.
//! 2. Guarantee first: requests that keep their team within its guarantee go
//!    before all others, oldest first, and those whose reclaim is still under
//!    way after the rest of them; the others by the smallest weighted dominant
//!    share (Fair Tree: siblings against siblings), then arrival.
//! 3. Borrowing: capacity beyond a team's guarantee is borrowed from the idle
//!    guarantees of others (each lends at most its lending limit) and from
//!    capacity nobody is guaranteed. A borrowed allocation is preemptible.
//! 4. Reclaim: a request within its team's guarantee that does not fit marks
//!    enough borrowed allocations of other teams to be reclaimed after the grace
//!    period, newest first from the team with the largest share, never taking a
//!    team below its own guarantee (counting what other reclaims already take).
//!    What a reclaim counts on, the victims and the free capacity beside them, is
//!    held for its request: no other placement may take it while the grace period
//!    runs, and a later reclaim counts only on what earlier ones leave, so the
//!    request finds its room when its grace period ends. A round cannot tell how
//!    long a request has been within its guarantee: an older one that has only
//!    now come within it (its team released) goes first and may take that room.

use std::collections::{BTreeMap, BTreeSet};

use allot_api::allocation::TeamName;

use crate::fairshare::{Standing, UsageHistory, order_key, standings};
use crate::resources::{ResourceClass, Resources, format_amount};
use crate::tree::QuotaTree;

/// An allocation that holds capacity now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    pub id: u64,
    pub team: TeamName,
    pub charge: Resources,
    pub created_ms: u64,
    /// When it is reclaimed, if it is being reclaimed.
    pub reclaim_at_ms: Option<u64>,
    /// The waiting request it is reclaimed for.
    pub reclaim_for: Option<u64>,
}

/// What a round reads of the allocations that hold capacity. The broker answers
/// from indexes it keeps as allocations come and go; a `Vec` of [`Running`]
/// answers by scanning (tests, tools).
pub trait Live {
    /// What each leaf team's live allocations are charged, in all (teams with
    /// none are left out).
    fn usage(&self) -> BTreeMap<TeamName, Resources>;
    /// The live allocations being reclaimed (`reclaim_at_ms` set).
    fn reclaiming(&self) -> Vec<Running>;
    /// A team's live allocations; asked only for teams beyond their guarantee,
    /// whose allocations may be reclaimed.
    fn of_team(&self, team: &TeamName) -> Vec<Running>;
}

/// What each team's allocations are charged, in all.
fn usage_of(running: &[Running]) -> BTreeMap<TeamName, Resources> {
    let mut usage: BTreeMap<TeamName, Resources> = BTreeMap::new();
    for allocation in running {
        usage.entry(allocation.team.clone()).or_default().add(&allocation.charge);
    }
    usage
}

impl Live for Vec<Running> {
    fn usage(&self) -> BTreeMap<TeamName, Resources> {
        usage_of(self)
    }

    fn reclaiming(&self) -> Vec<Running> {
        self.iter().filter(|allocation| allocation.reclaim_at_ms.is_some()).cloned().collect()
    }

    fn of_team(&self, team: &TeamName) -> Vec<Running> {
        self.iter().filter(|allocation| allocation.team == *team).cloned().collect()
    }
}

/// A request in the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    pub id: u64,
    pub team: TeamName,
    /// What it will be charged, without the GPU family (known once placed).
    pub charge: Resources,
    pub created_ms: u64,
}

/// The placement engine, as admission sees it.
pub trait Placer {
    /// Places a waiting request and holds its capacity for the rest of the round;
    /// returns the GPU model it landed on (None without GPUs), or why it does not fit now.
    fn place(&mut self, id: u64) -> Result<Option<String>, String>;
    /// Gives back what [`Placer::place`] held (quota refused it after all).
    fn unplace(&mut self, id: u64);
    /// Whether the request would fit if these running allocations were gone.
    fn fits_without(&mut self, id: u64, victims: &[u64]) -> bool;
}

/// Settings of a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoundSettings {
    pub now_ms: u64,
    /// How long a reclaimed allocation keeps running before it is preempted.
    pub grace_ms: u64,
    /// Order by current and decayed past usage (true) or current usage only.
    pub use_history: bool,
}

/// What a round decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoundResult {
    /// Admitted requests, with their full charge and whether they borrow.
    pub admitted: Vec<Admitted>,
    /// Running allocations to reclaim, for which request, and when.
    pub reclaim: Vec<Reclaim>,
    /// Reclaims no longer needed (the request they served is gone or placed).
    pub cancel_reclaim: Vec<u64>,
    /// Requests still waiting, in queue order, with why.
    pub waiting: Vec<StillWaiting>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    pub id: u64,
    pub charge: Resources,
    pub borrowed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reclaim {
    pub victim: u64,
    pub for_request: u64,
    pub at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StillWaiting {
    pub id: u64,
    /// 1 is next.
    pub position: usize,
    pub reason: String,
}

/// What the quota says about a charge for a team now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Fits {
        borrowed: bool,
    },
    /// Not now; it may fit once others release.
    Wait(String),
    /// Never under the current quotas.
    Never(String),
}

/// Per-leaf usage and the cluster capacity, with the sums admission needs.
#[derive(Debug, Clone)]
pub struct Ledger<'a> {
    pub tree: &'a QuotaTree,
    pub capacity: &'a Resources,
    /// Usage per leaf team.
    pub usage: BTreeMap<TeamName, Resources>,
}

impl<'a> Ledger<'a> {
    pub fn new(tree: &'a QuotaTree, capacity: &'a Resources, running: &[Running]) -> Ledger<'a> {
        Ledger::with_usage(tree, capacity, usage_of(running))
    }

    /// A ledger over per-leaf-team usage the caller has already summed.
    pub fn with_usage(
        tree: &'a QuotaTree,
        capacity: &'a Resources,
        usage: BTreeMap<TeamName, Resources>,
    ) -> Ledger<'a> {
        Ledger { tree, capacity, usage }
    }

    pub fn leaf_usage(&self, team: &TeamName) -> Resources {
        self.usage.get(team).cloned().unwrap_or_default()
    }

    /// Usage of a team's whole subtree.
    pub fn subtree_usage(&self, team: &TeamName) -> Resources {
        let mut total = Resources::default();
        for leaf in self.tree.leaves_under(team) {
            if let Some(usage) = self.usage.get(&leaf) {
                total.add(usage);
            }
        }
        total
    }

    /// Classes that somebody is guaranteed: only these can be borrowed.
    fn guaranteed_classes(&self) -> BTreeSet<ResourceClass> {
        self.tree
            .teams()
            .flat_map(|spec| {
                spec.quota.guaranteed.0.iter().filter(|(_, amount)| **amount > 0).map(|(class, _)| class.clone())
            })
            .collect()
    }

    /// Where a team's guarantee of a class is held: the nearest node on its path
    /// that declares the class (for a GPU family, or else `gpu/any`), with the
    /// class it declares and the amount. None: nothing on the path guarantees it.
    fn holder(&self, team: &TeamName, class: &ResourceClass) -> Option<(TeamName, ResourceClass, u64)> {
        for spec in self.tree.path(team) {
            let guaranteed = &spec.quota.guaranteed.0;
            if let Some(amount) = guaranteed.get(class) {
                return Some((spec.name.clone(), class.clone(), *amount));
            }
            if let ResourceClass::GpuFamily(_) = class
                && let Some(amount) = guaranteed.get(&ResourceClass::GpuAny)
            {
                return Some((spec.name.clone(), ResourceClass::GpuAny, *amount));
            }
        }
        None
    }

    /// How far beyond its guarantee of `class` a team's holder is, after adding `extra`
    /// (of the holder's declared class); the whole usage when nothing guarantees it.
    fn over(&self, team: &TeamName, class: &ResourceClass, extra: &Resources) -> u64 {
        match self.holder(team, class) {
            Some((node, declared, guaranteed)) => {
                (self.subtree_usage(&node).get(&declared) + extra.get(&declared)).saturating_sub(guaranteed)
            }
            None => self.leaf_usage(team).get(class) + extra.get(class),
        }
    }

    /// Whether the charge keeps the team within its guarantee in every guaranteed
    /// class it touches (and it touches at least one). A guarantee is held by the
    /// nearest node on the team's path that declares the class: a team inside an
    /// organisation that is guaranteed GPUs shares that guarantee with its siblings.
    pub fn within_guarantee(&self, team: &TeamName, charge: &Resources) -> bool {
        let classes = self.guaranteed_classes();
        let mut touched = false;
        for (class, amount) in &charge.0 {
            if !classes.contains(class) || *amount == 0 {
                continue;
            }
            touched = true;
            if self.over(team, class, charge) > 0 {
                return false;
            }
        }
        touched
    }

    /// The quota's verdict on adding `charge` to `team`.
    pub fn verdict(&self, team: &TeamName, charge: &Resources) -> Verdict {
        if !self.tree.contains(team) {
            return Verdict::Never(format!("E-UNKNOWN-TEAM: team {team} does not exist"));
        }
        if !self.tree.is_leaf(team) {
            return Verdict::Never(format!(
                "E-NOT-A-LEAF: team {team} has projects; allocate in one of them ({})",
                self.tree.children(team).iter().map(TeamName::as_str).collect::<Vec<_>>().join(", ")
            ));
        }
        for spec in self.tree.path(team) {
            let used = self.subtree_usage(&spec.name);
            for (class, amount) in &charge.0 {
                let Some(limit) = spec.quota.limit_of(class) else { continue };
                if *amount > limit {
                    return Verdict::Never(format!(
                        "E-QUOTA-EXCEEDED: team {team} asks {class} = {}, more than the limit {} of {}; \
                         ask an admin to raise it or make the request smaller",
                        format_amount(class, *amount),
                        format_amount(class, limit),
                        spec.name
                    ));
                }
                if used.get(class) + amount > limit {
                    return Verdict::Wait(format!(
                        "{} is at its limit: {class} {} of {} in use",
                        spec.name,
                        format_amount(class, used.get(class)),
                        format_amount(class, limit)
                    ));
                }
            }
        }
        // Borrowing: only from what others may lend.
        let mut borrowed = false;
        for class in self.guaranteed_classes() {
            let amount = charge.get(&class);
            if amount == 0 {
                continue;
            }
            let over_before = self.over(team, &class, &Resources::default());
            let over_after = self.over(team, &class, charge);
            if over_after == 0 {
                continue;
            }
            borrowed = true;
            let new_borrowing = over_after.saturating_sub(over_before);
            let (lendable, borrowing) = self.lending(&class);
            if new_borrowing > 0 && borrowing + new_borrowing > lendable {
                return Verdict::Wait(format!(
                    "{team} would borrow {class} = {} beyond its guarantee, but only {} of what others are \
                     guaranteed and leave idle may be lent, and {} is borrowed already",
                    format_amount(&class, new_borrowing),
                    format_amount(&class, lendable),
                    format_amount(&class, borrowing)
                ));
            }
        }
        Verdict::Fits { borrowed }
    }

    /// What may be borrowed of a class in total (capacity nobody is guaranteed,
    /// plus idle guarantees within each lending limit), and what is borrowed now.
    /// Guarantees are counted at the outermost nodes that declare the class.
    fn lending(&self, class: &ResourceClass) -> (u64, u64) {
        let declares = |spec: &crate::tree::TeamSpec| spec.quota.guaranteed.0.contains_key(class);
        let outermost: Vec<&crate::tree::TeamSpec> = self
            .tree
            .teams()
            .filter(|spec| declares(spec))
            .filter(|spec| !self.tree.path(&spec.name).iter().skip(1).any(|ancestor| declares(ancestor)))
            .collect();
        let mut guaranteed_total = 0u64;
        let mut idle_lendable = 0u64;
        let mut borrowing = 0u64;
        let mut covered: BTreeSet<TeamName> = BTreeSet::new();
        for spec in &outermost {
            let guaranteed = spec.quota.guaranteed.get(class);
            let used = self.subtree_usage(&spec.name).get(class);
            guaranteed_total += guaranteed;
            let idle = guaranteed.saturating_sub(used);
            idle_lendable += spec.quota.lending_limit_of(class).map_or(idle, |cap| idle.min(cap));
            borrowing += used.saturating_sub(guaranteed);
            covered.extend(self.tree.leaves_under(&spec.name));
        }
        for (team, usage) in &self.usage {
            if !covered.contains(team) {
                borrowing += usage.get(class);
            }
        }
        let unguaranteed = self.capacity.get(class).saturating_sub(guaranteed_total);
        (unguaranteed + idle_lendable, borrowing)
    }

    /// How far a team (through its guarantee's holder) is beyond its guarantee of a class.
    fn over_guarantee(&self, team: &TeamName, class: &ResourceClass) -> u64 {
        self.over(team, class, &Resources::default())
    }
}

/// Runs one scheduling round. `live` is what holds capacity now; `waiting` is
/// the queue in arrival order.
pub fn admit(
    tree: &QuotaTree,
    capacity: &Resources,
    history: &UsageHistory,
    live: &dyn Live,
    waiting: &[Waiting],
    placer: &mut dyn Placer,
    settings: RoundSettings,
) -> RoundResult {
    let mut ledger = Ledger::with_usage(tree, capacity, live.usage());
    let mut result = RoundResult::default();
    let mut untried: Vec<&Waiting> = waiting.iter().collect();
    let mut waited: Vec<(&Waiting, String)> = Vec::new();
    let under_way = live.reclaiming();
    let mut reclaiming: BTreeSet<u64> = under_way.iter().map(|r| r.id).collect();
    let mut reclaimed: Vec<Running> = under_way.clone();
    let mut holds = Holds::under_way(&under_way, waiting, placer);
    let mut admitted_ids = BTreeSet::new();
    while !untried.is_empty() {
        let standing = standings(tree, &ledger.usage, history, capacity, settings.use_history);
        let best = pick_next(tree, &ledger, &holds, &standing, &untried);
        let request = untried.swap_remove(best);
        match ledger.verdict(&request.team, &request.charge) {
            Verdict::Never(reason) => waited.push((request, format!("{reason}; it waits until quotas change"))),
            Verdict::Wait(reason) => waited.push((request, reason)),
            Verdict::Fits { .. } => match place(&ledger, &holds, placer, request) {
                Placement::Admitted { charge, borrowed } => {
                    ledger.usage.entry(request.team.clone()).or_default().add(&charge);
                    admitted_ids.insert(request.id);
                    holds.by_request.remove(&request.id);
                    result.admitted.push(Admitted { id: request.id, charge, borrowed });
                }
                Placement::Refused(reason) => waited.push((request, reason)),
                Placement::NoRoom(why) => {
                    let reason = if ledger.within_guarantee(&request.team, &request.charge) {
                        let mut round = ReclaimRound {
                            reclaiming: &mut reclaiming,
                            reclaimed: &mut reclaimed,
                            holds: &mut holds,
                            result: &mut result,
                        };
                        reclaim_for(&ledger, live, &under_way, request, &mut round, placer, settings).unwrap_or(why)
                    } else {
                        why
                    };
                    waited.push((request, reason));
                }
            },
        }
    }
    let still: BTreeSet<u64> = waited.iter().map(|(request, _)| request.id).collect();
    for allocation in &under_way {
        if let Some(target) = allocation.reclaim_for
            && (!still.contains(&target) || admitted_ids.contains(&target))
            && allocation.reclaim_at_ms.is_some_and(|at| at > settings.now_ms)
        {
            result.cancel_reclaim.push(allocation.id);
        }
    }
    result.waiting = waited
        .into_iter()
        .enumerate()
        .map(|(index, (request, reason))| StillWaiting { id: request.id, position: index + 1, reason })
        .collect();
    result
}

/// The next request to try: within-guarantee first, those without a reclaim
/// under way before those with one, each by arrival; then the others by fair
/// share, then arrival.
///
/// Requests within their guarantee are not ordered by fair share. When borrowed
/// allocations reclaimed for one of them are preempted, nothing marks the freed
/// capacity as its own any more; were another within-guarantee request tried
/// first (a newer one from a team with a smaller share, or one whose own reclaim
/// is still under way), it could take that capacity and leave the first to
/// start a second grace period. A request whose reclaim is under way can wait
/// for it: its hold keeps what it counts on.
fn pick_next(
    tree: &QuotaTree,
    ledger: &Ledger<'_>,
    holds: &Holds,
    standing: &BTreeMap<TeamName, Standing>,
    untried: &[&Waiting],
) -> usize {
    let mut keys: BTreeMap<TeamName, Vec<(crate::fairshare::OrderedShare, TeamName)>> = BTreeMap::new();
    let mut best = 0;
    let mut best_key = None;
    for (index, request) in untried.iter().enumerate() {
        let within = ledger.within_guarantee(&request.team, &request.charge);
        let (held, fair) = if within {
            (holds.by_request.contains_key(&request.id), None)
        } else {
            let fair = keys.entry(request.team.clone()).or_insert_with(|| order_key(tree, &request.team, standing));
            (false, Some(fair.clone()))
        };
        let key = (!within, held, fair, request.created_ms, request.id);
        if best_key.as_ref().is_none_or(|current| &key < current) {
            best = index;
            best_key = Some(key);
        }
    }
    best
}

/// What placing a request came to.
enum Placement {
    Admitted {
        charge: Resources,
        borrowed: bool,
    },
    /// Quota refused it once its GPU model was known.
    Refused(String),
    /// It does not fit now, or only by taking capacity held for another request.
    NoRoom(String),
}

/// Places a request whose quota verdict fits, unless that takes capacity held
/// for a request whose reclaim is under way; anything placed and then refused is
/// given back to the placer.
fn place(ledger: &Ledger<'_>, holds: &Holds, placer: &mut dyn Placer, request: &Waiting) -> Placement {
    let model = match placer.place(request.id) {
        Ok(model) => model,
        Err(why) => return Placement::NoRoom(why),
    };
    let mut charge = request.charge.clone();
    if let Some(model) = &model {
        let gpu = charge.get(&ResourceClass::GpuAny);
        charge.0.insert(ResourceClass::gpu_family(&crate::resources::gpu_family(model)), gpu);
    }
    match ledger.verdict(&request.team, &charge) {
        Verdict::Fits { borrowed } => match holds.broken_by(ledger, placer, request.id, &charge) {
            None => Placement::Admitted { charge, borrowed },
            Some(reason) => {
                placer.unplace(request.id);
                Placement::NoRoom(reason)
            }
        },
        Verdict::Wait(reason) | Verdict::Never(reason) => {
            placer.unplace(request.id);
            Placement::Refused(reason)
        }
    }
}

/// Capacity held for waiting requests whose reclaim is under way.
///
/// A reclaim is decided when its victims, together with the capacity free at
/// that moment, make room for its request. Both must still be there when the
/// grace period ends: free capacity that another request takes meanwhile, or
/// that a second reclaim counts on as well, leaves the request short, and it
/// then starts a new reclaim with a new grace period. So until its request is
/// placed, no placement may break a hold, and a new reclaim counts only on what
/// the holds before it leave.
#[derive(Debug, Default)]
struct Holds {
    by_request: BTreeMap<u64, Hold>,
}

#[derive(Debug)]
struct Hold {
    /// The request's charge.
    needs: Resources,
    /// The allocations reclaimed for it, and what they free together.
    victims: Vec<u64>,
    frees: Resources,
    /// When the last of them is preempted.
    at_ms: u64,
    /// Whether the placer said it fits without its victims when the round
    /// began (or when the hold was made). A hold that no longer fits is not
    /// broken by anyone placed in this round, so it blocks nobody.
    fits: bool,
}

impl Holds {
    /// The holds of reclaims that earlier rounds started for requests still waiting.
    fn under_way(running: &[Running], waiting: &[Waiting], placer: &mut dyn Placer) -> Holds {
        let mut holds = Holds::default();
        // Victims by the request they are reclaimed for, in one pass: a round
        // costs the queue plus the live allocations, not their product.
        let mut by_request: BTreeMap<u64, Vec<&Running>> = BTreeMap::new();
        for victim in running.iter().filter(|r| r.reclaim_at_ms.is_some()) {
            if let Some(request) = victim.reclaim_for {
                by_request.entry(request).or_default().push(victim);
            }
        }
        for request in waiting {
            let Some(victims) = by_request.get(&request.id) else { continue };
            let at_ms = victims.iter().filter_map(|victim| victim.reclaim_at_ms).max().unwrap_or(0);
            let ids: Vec<u64> = victims.iter().map(|victim| victim.id).collect();
            let fits = placer.fits_without(request.id, &ids);
            holds.insert(request, victims, at_ms, fits);
        }
        holds
    }

    fn insert(&mut self, request: &Waiting, victims: &[&Running], at_ms: u64, fits: bool) {
        let mut frees = Resources::default();
        for victim in victims {
            frees.add(&victim.charge);
        }
        let hold = Hold {
            needs: request.charge.clone(),
            victims: victims.iter().map(|victim| victim.id).collect(),
            frees,
            at_ms,
            fits,
        };
        self.by_request.insert(request.id, hold);
    }

    /// How much of a class is free now and not promised to the holds other than
    /// `except`; negative when they are short. A hold is promised what its
    /// request needs beyond what its own victims free. What its victims free
    /// beyond that is not counted for anyone else: the reclaim is cancelled if
    /// its request is placed before its grace period ends.
    fn unpromised(&self, ledger: &Ledger<'_>, class: &ResourceClass, except: u64) -> i128 {
        let used: u64 = ledger.usage.values().map(|usage| usage.get(class)).fold(0, u64::saturating_add);
        let mut unpromised = i128::from(ledger.capacity.get(class)) - i128::from(used);
        for (_, hold) in self.by_request.iter().filter(|(id, _)| **id != except) {
            unpromised -= i128::from(hold.needs.get(class).saturating_sub(hold.frees.get(class)));
        }
        unpromised
    }

    /// Why placing `placed` (already held by the placer, with this charge) would
    /// take capacity held for another request, if it would.
    fn broken_by(
        &self,
        ledger: &Ledger<'_>,
        placer: &mut dyn Placer,
        placed: u64,
        charge: &Resources,
    ) -> Option<String> {
        let others: Vec<(u64, &Hold)> =
            self.by_request.iter().filter(|(id, _)| **id != placed).map(|(id, hold)| (*id, hold)).collect();
        let blame = |(id, hold): (u64, &Hold)| {
            format!(
                "capacity is held for request {id}, which is within its guarantee and waits for {} reclaimed \
                 allocation(s) until {} ms",
                hold.victims.len(),
                hold.at_ms
            )
        };
        for (class, amount) in &charge.0 {
            let needed_by_holds = others.iter().any(|(_, hold)| hold.needs.get(class) > 0);
            if *amount == 0 || !needed_by_holds || !ledger.capacity.0.contains_key(class) {
                continue;
            }
            // Only a placement that turns enough into too little breaks a hold. If
            // the holds were short before (the cluster shrank), refusing it would
            // not help them, and would stall every placement of the class.
            let before = self.unpromised(ledger, class, placed);
            if before >= 0 && before < i128::from(*amount) {
                let first = others.iter().find(|(_, hold)| hold.needs.get(class) > 0).copied();
                return first.map(blame);
            }
        }
        for (id, hold) in others {
            if hold.fits && !placer.fits_without(id, &hold.victims) {
                return Some(blame((id, hold)));
            }
        }
        None
    }
}

/// What one round's reclaims share: the allocations being reclaimed, the
/// holds, and the result they are recorded in.
struct ReclaimRound<'a> {
    reclaiming: &'a mut BTreeSet<u64>,
    /// The allocations in `reclaiming`: those under way and those marked this round.
    reclaimed: &'a mut Vec<Running>,
    holds: &'a mut Holds,
    result: &'a mut RoundResult,
}

/// Marks borrowed allocations of other teams for reclaim so that `request` fits.
/// Returns the reason it waits, or None when nothing can be reclaimed for it.
fn reclaim_for(
    ledger: &Ledger<'_>,
    live: &dyn Live,
    under_way: &[Running],
    request: &Waiting,
    round: &mut ReclaimRound<'_>,
    placer: &mut dyn Placer,
    settings: RoundSettings,
) -> Option<String> {
    // Already under way for this request: wait for it.
    let underway: Vec<&Running> = under_way.iter().filter(|r| r.reclaim_for == Some(request.id)).collect();
    if let Some(at) = underway.iter().filter_map(|r| r.reclaim_at_ms).max() {
        return Some(format!(
            "within its guarantee; {} borrowed allocation(s) of other teams are being reclaimed, grace ends at {at} ms",
            underway.len()
        ));
    }
    let standing = standings(ledger.tree, &ledger.usage, &UsageHistory::default(), ledger.capacity, false);
    let guaranteed_classes = ledger.guaranteed_classes();
    let needed: Vec<ResourceClass> =
        request.charge.0.keys().filter(|class| guaranteed_classes.contains(*class)).cloned().collect();
    // Only teams beyond their guarantee in a class the request needs have
    // allocations to reclaim: their allocations are the candidates.
    let beyond: Vec<&TeamName> = ledger
        .usage
        .keys()
        .filter(|team| **team != request.team)
        .filter(|team| needed.iter().any(|class| ledger.over_guarantee(team, class) > 0))
        .collect();
    let pool: Vec<Running> = beyond.into_iter().flat_map(|team| live.of_team(team)).collect();
    let mut candidates: Vec<&Running> = pool
        .iter()
        .filter(|r| !round.reclaiming.contains(&r.id))
        .filter(|r| needed.iter().any(|class| r.charge.get(class) > 0 && ledger.over_guarantee(&r.team, class) > 0))
        .collect();
    let share = |team: &TeamName| standing.get(team).map_or(0.0, |s| s.weighted_share);
    candidates.sort_by(|a, b| {
        share(&b.team).total_cmp(&share(&a.team)).then(b.created_ms.cmp(&a.created_ms)).then(b.id.cmp(&a.id))
    });
    // What other reclaims already take from each team counts against what may
    // still be taken from it: together they never take it below its guarantee.
    let mut taken: BTreeMap<TeamName, Resources> = BTreeMap::new();
    for allocation in round.reclaimed.iter() {
        taken.entry(allocation.team.clone()).or_default().add(&allocation.charge);
    }
    // Only free capacity that no earlier hold counts on may be counted on.
    let unpromised: Vec<(ResourceClass, i128)> = needed
        .iter()
        .filter(|class| ledger.capacity.0.contains_key(*class))
        .map(|class| (class.clone(), round.holds.unpromised(ledger, class, request.id).max(0)))
        .collect();
    let mut frees = Resources::default();
    let mut victims: Vec<&Running> = Vec::new();
    let mut teams: BTreeSet<&str> = BTreeSet::new();
    for candidate in candidates {
        // Never below the victim team's own guarantee.
        let already = taken.get(&candidate.team).cloned().unwrap_or_default();
        let keeps_guarantee = guaranteed_classes.iter().all(|class| {
            let over = ledger.over_guarantee(&candidate.team, class);
            already.get(class) + candidate.charge.get(class) <= over
        });
        if !keeps_guarantee {
            continue;
        }
        taken.entry(candidate.team.clone()).or_default().add(&candidate.charge);
        frees.add(&candidate.charge);
        victims.push(candidate);
        teams.insert(candidate.team.as_str());
        let enough = unpromised
            .iter()
            .all(|(class, free)| free + i128::from(frees.get(class)) >= i128::from(request.charge.get(class)));
        let ids: Vec<u64> = victims.iter().map(|victim| victim.id).collect();
        if enough && placer.fits_without(request.id, &ids) {
            let at_ms = settings.now_ms.saturating_add(settings.grace_ms);
            for victim in &ids {
                round.reclaiming.insert(*victim);
                round.result.reclaim.push(Reclaim { victim: *victim, for_request: request.id, at_ms });
            }
            round.reclaimed.extend(victims.iter().map(|victim| (*victim).clone()));
            round.holds.insert(request, &victims, at_ms, true);
            return Some(format!(
                "within its guarantee; reclaiming {} borrowed allocation(s) of {}, grace ends at {at_ms} ms",
                ids.len(),
                teams.into_iter().collect::<Vec<_>>().join(", ")
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::tree::{Quota, TeamSpec};

    fn amounts(pairs: &[(&str, u64)]) -> Resources {
        Resources(pairs.iter().map(|(class, amount)| (class.parse().expect("class"), *amount)).collect())
    }

    fn spec(name: &str, parent: Option<&str>, guaranteed: &[(&str, u64)], limit: &[(&str, u64)]) -> TeamSpec {
        TeamSpec {
            name: name.parse().expect("name"),
            parent: parent.map(|parent| parent.parse().expect("parent")),
            quota: Quota { weight: 1, guaranteed: amounts(guaranteed), limit: amounts(limit), ..Quota::default() },
        }
    }

    fn check(usage: &[(&str, &[(&str, u64)])], team: &str, charge: &[(&str, u64)]) -> Verdict {
        let tree = QuotaTree::new(
            vec![
                spec("research", None, &[("gpu/any", 8000), ("cpu", 128_000)], &[("gpu/any", 12_000)]),
                spec("vision", Some("research"), &[("gpu/any", 4000)], &[]),
                spec("nlp", Some("research"), &[("gpu/any", 4000)], &[]),
                spec("interns", None, &[], &[("gpu/any", 2000)]),
            ],
            BTreeMap::new(),
            &BTreeSet::new(),
        )
        .expect("tree");
        let capacity = amounts(&[("gpu/any", 16_000), ("cpu", 256_000)]);
        let usage = usage.iter().map(|(team, pairs)| (team.parse().expect("team"), amounts(pairs))).collect();
        Ledger { tree: &tree, capacity: &capacity, usage }.verdict(&team.parse().expect("team"), &amounts(charge))
    }

    #[test]
    fn guarantees_held_by_an_organisation_cover_its_teams() {
        // vision declares no cpu: research's 128 cores cover it, so 4 GPUs and a core are not borrowed.
        assert_eq!(check(&[], "vision", &[("gpu/any", 4000), ("cpu", 1000)]), Verdict::Fits { borrowed: false });
        // A fifth GPU is beyond vision's own 4.
        assert_eq!(
            check(&[("vision", &[("gpu/any", 4000)])], "vision", &[("gpu/any", 1000)]),
            Verdict::Fits { borrowed: true }
        );
        // interns are guaranteed nothing: whatever they use is borrowed.
        assert_eq!(check(&[], "interns", &[("gpu/any", 1000)]), Verdict::Fits { borrowed: true });
    }

    #[test]
    fn limits_wait_or_refuse_and_borrowing_stops_at_what_may_be_lent() {
        assert!(
            matches!(check(&[], "interns", &[("gpu/any", 3000)]), Verdict::Never(reason) if reason.contains("E-QUOTA-EXCEEDED"))
        );
        assert!(matches!(
            check(&[("interns", &[("gpu/any", 2000)])], "interns", &[("gpu/any", 1000)]),
            Verdict::Wait(reason) if reason.contains("interns is at its limit")
        ));
        // research's organisation limit of 12 caps vision and nlp together.
        assert!(matches!(
            check(&[("vision", &[("gpu/any", 8000)]), ("nlp", &[("gpu/any", 4000)])], "vision", &[("gpu/any", 1000)]),
            Verdict::Wait(reason) if reason.contains("research is at its limit")
        ));
    }

    #[test]
    fn a_lending_limit_caps_what_others_borrow() {
        let mut lender = spec("a", None, &[("gpu/any", 8000)], &[]);
        lender.quota.lending_limit = amounts(&[("gpu/any", 2000)]);
        let tree =
            QuotaTree::new(vec![lender, spec("b", None, &[("gpu/any", 8000)], &[])], BTreeMap::new(), &BTreeSet::new())
                .expect("tree");
        let capacity = amounts(&[("gpu/any", 16_000)]);
        let verdict = |b_uses: u64| {
            let usage = [("b".parse().expect("team"), amounts(&[("gpu/any", b_uses)]))].into_iter().collect();
            Ledger { tree: &tree, capacity: &capacity, usage }
                .verdict(&"b".parse().expect("team"), &amounts(&[("gpu/any", 1000)]))
        };
        assert_eq!(verdict(7000), Verdict::Fits { borrowed: false });
        assert_eq!(verdict(8000), Verdict::Fits { borrowed: true });
        assert_eq!(verdict(9000), Verdict::Fits { borrowed: true });
        assert!(matches!(verdict(10_000), Verdict::Wait(reason) if reason.contains("only 2 of what others")));
    }

    /// Interchangeable whole GPUs: what runs and what this round placed hold them.
    struct Pool {
        capacity: u64,
        sizes: BTreeMap<u64, u64>,
        running: BTreeSet<u64>,
        held: BTreeSet<u64>,
    }

    impl Pool {
        fn used(&self, without: &[u64]) -> u64 {
            self.running
                .iter()
                .chain(&self.held)
                .filter(|id| !without.contains(id))
                .map(|id| self.sizes.get(id).copied().unwrap_or(0))
                .sum()
        }
    }

    impl Placer for Pool {
        fn place(&mut self, id: u64) -> Result<Option<String>, String> {
            let size = self.sizes.get(&id).copied().unwrap_or(0);
            if self.used(&[]) + size > self.capacity {
                return Err(format!("{} GPUs free, {size} wanted", self.capacity - self.used(&[])));
            }
            self.held.insert(id);
            Ok(Some("NVIDIA H100 80GB HBM3".into()))
        }
        fn unplace(&mut self, id: u64) {
            self.held.remove(&id);
        }
        fn fits_without(&mut self, id: u64, victims: &[u64]) -> bool {
            self.used(victims) + self.sizes.get(&id).copied().unwrap_or(0) <= self.capacity
        }
    }

    /// One round on a pool of `capacity` GPUs with a grace period of 10 s.
    /// `running` and `waiting` are (id, team, GPUs, created at); `reclaims` are
    /// (victim, for request, at) marks left by earlier rounds.
    fn round(
        tree: &QuotaTree,
        capacity: u64,
        now_ms: u64,
        running: &[(u64, &str, u64, u64)],
        reclaims: &[(u64, u64, u64)],
        waiting: &[(u64, &str, u64, u64)],
    ) -> RoundResult {
        let gpus = |count: u64| amounts(&[("gpu/any", count * 1000)]);
        let running: Vec<Running> = running
            .iter()
            .map(|(id, team, size, created_ms)| {
                let mark = reclaims.iter().find(|(victim, _, _)| victim == id);
                Running {
                    id: *id,
                    team: team.parse().expect("team"),
                    charge: gpus(*size),
                    created_ms: *created_ms,
                    reclaim_at_ms: mark.map(|(_, _, at)| *at),
                    reclaim_for: mark.map(|(_, target, _)| *target),
                }
            })
            .collect();
        let waiting: Vec<Waiting> = waiting
            .iter()
            .map(|(id, team, size, created_ms)| Waiting {
                id: *id,
                team: team.parse().expect("team"),
                charge: gpus(*size),
                created_ms: *created_ms,
            })
            .collect();
        let mut pool = Pool {
            capacity,
            sizes: running
                .iter()
                .map(|r| (r.id, r.charge.get(&ResourceClass::GpuAny) / 1000))
                .chain(waiting.iter().map(|w| (w.id, w.charge.get(&ResourceClass::GpuAny) / 1000)))
                .collect(),
            running: running.iter().map(|r| r.id).collect(),
            held: BTreeSet::new(),
        };
        let settings = RoundSettings { now_ms, grace_ms: 10_000, use_history: false };
        admit(tree, &gpus(capacity), &UsageHistory::default(), &running, &waiting, &mut pool, settings)
    }

    fn flat_tree(teams: &[(&str, u32, u64)]) -> QuotaTree {
        let specs = teams
            .iter()
            .map(|(name, weight, guaranteed)| {
                let mut team = spec(name, None, &[("gpu/any", guaranteed * 1000)], &[]);
                team.quota.weight = *weight;
                team
            })
            .collect();
        QuotaTree::new(specs, BTreeMap::new(), &BTreeSet::new()).expect("tree")
    }

    fn admitted(result: &RoundResult) -> Vec<u64> {
        result.admitted.iter().map(|admitted| admitted.id).collect()
    }

    fn reclaimed(result: &RoundResult) -> Vec<(u64, u64)> {
        result.reclaim.iter().map(|reclaim| (reclaim.victim, reclaim.for_request)).collect()
    }

    #[test]
    fn capacity_reclaimed_for_a_request_goes_to_it_not_to_a_newer_guaranteed_one() {
        // The shrunk proptest case: b waits within its guarantee while three of
        // a's borrowed GPUs are reclaimed for it. When they are preempted, c (also
        // within its guarantee, and with the smaller share) arrives; c must not take
        // what was reclaimed for b, or b waits a second grace period.
        let tree = flat_tree(&[("a", 1, 0), ("b", 1, 4), ("c", 2, 4)]);
        let a_own: Vec<(u64, &str, u64, u64)> = (1..=4).map(|id| (id, "a", 1, id)).collect();
        let mut running = a_own.clone();
        running.extend([(5, "a", 1, 5), (6, "a", 1, 6), (7, "a", 1, 7), (8, "b", 1, 8)]);
        let first = round(&tree, 8, 1000, &running, &[], &[(20, "b", 3, 1000)]);
        assert_eq!(reclaimed(&first), vec![(7, 20), (6, 20), (5, 20)]);
        // Ten seconds later the caller has preempted 5, 6 and 7.
        running.truncate(4);
        running.push((8, "b", 1, 8));
        let second = round(&tree, 8, 11_000, &running, &[], &[(20, "b", 3, 1000), (21, "c", 3, 11_000)]);
        assert_eq!(admitted(&second), vec![20], "{second:?}");
        assert_eq!(reclaimed(&second), vec![(4, 21), (3, 21), (2, 21)], "c reclaims for itself");
    }

    #[test]
    fn free_capacity_a_reclaim_counts_on_is_held_for_its_request() {
        // b needs 4: 2 are free and 2 of a's borrowed GPUs are reclaimed. A new
        // borrowing request of a must not take the 2 free ones, neither in the
        // same round nor while the grace period runs.
        let tree = flat_tree(&[("a", 1, 0), ("b", 1, 4)]);
        let running: Vec<(u64, &str, u64, u64)> = (1..=6).map(|id| (id, "a", 1, id)).collect();
        let same_round = round(&tree, 8, 1000, &running, &[], &[(20, "b", 4, 1000), (21, "a", 1, 1000)]);
        assert_eq!(reclaimed(&same_round), vec![(6, 20), (5, 20)]);
        assert!(admitted(&same_round).is_empty(), "{same_round:?}");
        let during_grace = round(
            &tree,
            8,
            2000,
            &running,
            &[(6, 20, 11_000), (5, 20, 11_000)],
            &[(20, "b", 4, 1000), (21, "a", 1, 1000)],
        );
        assert!(admitted(&during_grace).is_empty(), "{during_grace:?}");
        let held = during_grace.waiting.iter().find(|waiting| waiting.id == 21).expect("a waits");
        assert!(held.reason.contains("held for request 20"), "{}", held.reason);
    }

    #[test]
    fn two_reclaims_do_not_count_the_same_free_capacity() {
        // One GPU is free; b and c each need 2 within their guarantees. Together
        // they need three of a's borrowed GPUs, not one each.
        let tree = flat_tree(&[("a", 1, 0), ("b", 1, 4), ("c", 1, 4)]);
        let running: Vec<(u64, &str, u64, u64)> = (1..=7).map(|id| (id, "a", 1, id)).collect();
        let result = round(&tree, 8, 1000, &running, &[], &[(20, "b", 2, 1000), (21, "c", 2, 1000)]);
        assert_eq!(reclaimed(&result), vec![(7, 20), (6, 21), (5, 21)], "{result:?}");
    }

    #[test]
    fn what_a_reclaim_frees_beyond_its_request_is_promised_to_nobody_else() {
        // Two GPUs are free. b's reclaim frees 3 for a request of 1; c's and d's
        // each free 1 for a request of 2, so they count on one free GPU each.
        // b's excess is no reserve: were b placed early, its reclaim would be
        // cancelled. So a's new request may not take a free GPU.
        let tree = flat_tree(&[("a", 1, 0), ("b", 1, 2), ("c", 1, 2), ("d", 1, 2)]);
        let running = [(1, "a", 3, 1), (2, "a", 1, 2), (3, "a", 1, 3)];
        let reclaims = [(1, 20, 11_000), (2, 21, 11_000), (3, 22, 11_000)];
        let waiting = [(20, "b", 1, 1000), (21, "c", 2, 1000), (22, "d", 2, 1000), (23, "a", 1, 2000)];
        let result = round(&tree, 7, 2000, &running, &reclaims, &waiting);
        assert!(admitted(&result).is_empty(), "{result:?}");
    }

    #[test]
    fn reclaims_together_never_take_a_team_below_its_guarantee() {
        // a is guaranteed 2 and uses 6; d borrows 2. b and c each reclaim 3: only
        // 4 of a's are beyond its guarantee, so the last two come from d.
        let tree = flat_tree(&[("a", 1, 2), ("b", 1, 3), ("c", 1, 3), ("d", 1, 0)]);
        let mut running: Vec<(u64, &str, u64, u64)> = (1..=6).map(|id| (id, "a", 1, id)).collect();
        running.extend([(7, "d", 1, 7), (8, "d", 1, 8)]);
        let result = round(&tree, 8, 1000, &running, &[], &[(20, "b", 3, 1000), (21, "c", 3, 1000)]);
        let from_a = reclaimed(&result).iter().filter(|(victim, _)| *victim <= 6).count();
        assert_eq!(from_a, 4, "{result:?}");
        assert_eq!(result.reclaim.len(), 6, "{result:?}");
    }
}
