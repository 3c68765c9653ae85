//! Admission: which waiting requests get capacity, in which order, and which
//! borrowed allocations are reclaimed for a team below its guarantee.
//!
//! One [`admit`] call is one scheduling round over the queue. It is pure: the
//! broker passes its allocations, the queue, the time, and a [`Placer`] that
//! answers "does it fit?" with the real placement engine.
//!
//! Rules, in order:
//! 1. Limits: a team and each ancestor stay within their limits. A request larger
//!    than a limit on its own never fits; one that fits later waits.
//! 2. Guarantee first: requests that keep their team within its guarantee go
//!    before all others; then the smallest weighted dominant share (Fair Tree:
//!    siblings against siblings), then arrival.
//! 3. Borrowing: capacity beyond a team's guarantee is borrowed from the idle
//!    guarantees of others (each lends at most its lending limit) and from
//!    capacity nobody is guaranteed. A borrowed allocation is preemptible.
//! 4. Reclaim: a request within its team's guarantee that does not fit marks
//!    enough borrowed allocations of other teams to be reclaimed after the grace
//!    period, newest first from the team with the largest share, never taking a
//!    team below its own guarantee.

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
        let mut usage: BTreeMap<TeamName, Resources> = BTreeMap::new();
        for allocation in running {
            usage.entry(allocation.team.clone()).or_default().add(&allocation.charge);
        }
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

/// Runs one scheduling round. `running` holds capacity now; `waiting` is the
/// queue in arrival order.
pub fn admit(
    tree: &QuotaTree,
    capacity: &Resources,
    history: &UsageHistory,
    running: &[Running],
    waiting: &[Waiting],
    placer: &mut dyn Placer,
    settings: RoundSettings,
) -> RoundResult {
    let mut ledger = Ledger::new(tree, capacity, running);
    let mut result = RoundResult::default();
    let mut untried: Vec<&Waiting> = waiting.iter().collect();
    let mut waited: Vec<(&Waiting, String)> = Vec::new();
    let mut reclaiming: BTreeSet<u64> = running.iter().filter(|r| r.reclaim_at_ms.is_some()).map(|r| r.id).collect();
    let mut admitted_ids = BTreeSet::new();
    while !untried.is_empty() {
        let standing = standings(tree, &ledger.usage, history, capacity, settings.use_history);
        let best = pick_next(tree, &ledger, &standing, &untried);
        let request = untried.swap_remove(best);
        match ledger.verdict(&request.team, &request.charge) {
            Verdict::Never(reason) => waited.push((request, format!("{reason}; it waits until quotas change"))),
            Verdict::Wait(reason) => waited.push((request, reason)),
            Verdict::Fits { .. } => match placer.place(request.id) {
                Ok(model) => {
                    let mut charge = request.charge.clone();
                    if let Some(model) = &model {
                        let gpu = charge.get(&ResourceClass::GpuAny);
                        charge.0.insert(ResourceClass::gpu_family(&crate::resources::gpu_family(model)), gpu);
                    }
                    match ledger.verdict(&request.team, &charge) {
                        Verdict::Fits { borrowed } => {
                            ledger.usage.entry(request.team.clone()).or_default().add(&charge);
                            admitted_ids.insert(request.id);
                            result.admitted.push(Admitted { id: request.id, charge, borrowed });
                        }
                        Verdict::Wait(reason) | Verdict::Never(reason) => {
                            placer.unplace(request.id);
                            waited.push((request, reason));
                        }
                    }
                }
                Err(why) => {
                    let reason = if ledger.within_guarantee(&request.team, &request.charge) {
                        reclaim_for(&ledger, running, request, &mut reclaiming, placer, settings, &mut result)
                            .unwrap_or(why)
                    } else {
                        why
                    };
                    waited.push((request, reason));
                }
            },
        }
    }
    let still: BTreeSet<u64> = waited.iter().map(|(request, _)| request.id).collect();
    for allocation in running {
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

/// The next request to try: within-guarantee first, then fair share, then arrival.
fn pick_next(
    tree: &QuotaTree,
    ledger: &Ledger<'_>,
    standing: &BTreeMap<TeamName, Standing>,
    untried: &[&Waiting],
) -> usize {
    let mut keys: BTreeMap<TeamName, Vec<(crate::fairshare::OrderedShare, TeamName)>> = BTreeMap::new();
    let mut best = 0;
    let mut best_key = None;
    for (index, request) in untried.iter().enumerate() {
        let fair = keys.entry(request.team.clone()).or_insert_with(|| order_key(tree, &request.team, standing)).clone();
        let key = (!ledger.within_guarantee(&request.team, &request.charge), fair, request.created_ms, request.id);
        if best_key.as_ref().is_none_or(|current| &key < current) {
            best = index;
            best_key = Some(key);
        }
    }
    best
}

/// Marks borrowed allocations of other teams for reclaim so that `request` fits.
/// Returns the reason it waits, or None when nothing can be reclaimed for it.
fn reclaim_for(
    ledger: &Ledger<'_>,
    running: &[Running],
    request: &Waiting,
    reclaiming: &mut BTreeSet<u64>,
    placer: &mut dyn Placer,
    settings: RoundSettings,
    result: &mut RoundResult,
) -> Option<String> {
    // Already under way for this request: wait for it.
    let underway: Vec<&Running> =
        running.iter().filter(|r| r.reclaim_for == Some(request.id) && r.reclaim_at_ms.is_some()).collect();
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
    let mut candidates: Vec<&Running> = running
        .iter()
        .filter(|r| r.team != request.team && !reclaiming.contains(&r.id))
        .filter(|r| needed.iter().any(|class| r.charge.get(class) > 0 && ledger.over_guarantee(&r.team, class) > 0))
        .collect();
    let share = |team: &TeamName| standing.get(team).map_or(0.0, |s| s.weighted_share);
    candidates.sort_by(|a, b| {
        share(&b.team).total_cmp(&share(&a.team)).then(b.created_ms.cmp(&a.created_ms)).then(b.id.cmp(&a.id))
    });
    let mut taken: BTreeMap<TeamName, Resources> = BTreeMap::new();
    let mut victims: Vec<u64> = Vec::new();
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
        victims.push(candidate.id);
        if placer.fits_without(request.id, &victims) {
            let at_ms = settings.now_ms + settings.grace_ms;
            let teams: BTreeSet<&str> = taken.keys().map(TeamName::as_str).collect();
            for victim in &victims {
                reclaiming.insert(*victim);
                result.reclaim.push(Reclaim { victim: *victim, for_request: request.id, at_ms });
            }
            return Some(format!(
                "within its guarantee; reclaiming {} borrowed allocation(s) of {}, grace ends at {at_ms} ms",
                victims.len(),
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
}
