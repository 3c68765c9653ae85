//! The quota tree: organisations, teams and projects, each with a weight and,
//! per resource class, a guaranteed amount, a limit and a lending limit.
//!
//! A tree is built only through [`QuotaTree::new`], which refuses contradictions
//! (children guaranteed more than their parent, a limit below the guarantee, a
//! cycle, an unknown parent or resource class) and names the exact place of each.

use std::collections::{BTreeMap, BTreeSet};

use allot_api::allocation::TeamName;
use serde::{Deserialize, Serialize};

use crate::resources::{KNOWN_GPU_FAMILIES, ResourceClass, Resources, format_amount};

/// Weights are whole numbers from 1 to this.
pub const MAX_WEIGHT: u32 = 10_000;

/// How deep the tree may go (org, team, project, and a little room).
pub const MAX_DEPTH: usize = 6;

/// One node's quota. Absent limits are unlimited; absent guarantees are zero.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    pub weight: u32,
    #[serde(default)]
    pub guaranteed: Resources,
    /// Classes absent here are unlimited.
    #[serde(default)]
    pub limit: Resources,
    /// At most this much of the node's unused guarantee is lent to others; classes
    /// absent here lend all of it.
    #[serde(default)]
    pub lending_limit: Resources,
}

impl Default for Quota {
    fn default() -> Self {
        Quota {
            weight: 1,
            guaranteed: Resources::default(),
            limit: Resources::default(),
            lending_limit: Resources::default(),
        }
    }
}

impl Quota {
    pub fn limit_of(&self, class: &ResourceClass) -> Option<u64> {
        self.limit.0.get(class).copied()
    }

    pub fn lending_limit_of(&self, class: &ResourceClass) -> Option<u64> {
        self.lending_limit.0.get(class).copied()
    }
}

/// One node of the tree as declared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TeamSpec {
    pub name: TeamName,
    pub parent: Option<TeamName>,
    pub quota: Quota,
}

/// A contradiction in a tree, with where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{place}: {problem}")]
pub struct QuotaError {
    /// Like `team "vision"`.
    pub place: String,
    pub problem: String,
}

/// A checked quota tree, plus the relative value of GPU families.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QuotaTree {
    teams: BTreeMap<TeamName, TeamSpec>,
    children: BTreeMap<TeamName, Vec<TeamName>>,
    /// Relative value of a GPU of each family (`h100 = 8, t4 = 1`); absent is 1.
    gpu_values: BTreeMap<String, u32>,
}

/// What a parent's amounts allow of a class: its own amount of the class, or
/// for a GPU family without one, its `gpu/any` amount (any GPU covers a family).
fn bound_of(amounts: &Resources, class: &ResourceClass) -> u64 {
    match (amounts.0.get(class), class) {
        (Some(amount), _) => *amount,
        (None, ResourceClass::GpuFamily(_)) => amounts.get(&ResourceClass::GpuAny),
        (None, _) => 0,
    }
}

fn place(name: &TeamName) -> String {
    format!("team \"{name}\"")
}

impl QuotaTree {
    /// Checks every rule and returns the tree, or every problem found (sorted by place).
    ///
    /// `families` are the GPU families the cluster has now; a quota may also name
    /// any family in [`KNOWN_GPU_FAMILIES`].
    pub fn new(
        specs: Vec<TeamSpec>,
        gpu_values: BTreeMap<String, u32>,
        families: &BTreeSet<String>,
    ) -> Result<QuotaTree, Vec<QuotaError>> {
        let mut errors = Vec::new();
        let mut teams = BTreeMap::new();
        for spec in specs {
            if teams.contains_key(&spec.name) {
                errors.push(QuotaError { place: place(&spec.name), problem: "declared twice".into() });
                continue;
            }
            teams.insert(spec.name.clone(), spec);
        }
        let known_family = |family: &str| KNOWN_GPU_FAMILIES.contains(&family) || families.contains(family);
        for (family, value) in &gpu_values {
            if !known_family(family) {
                errors.push(QuotaError {
                    place: format!("gpu_values.{family}"),
                    problem: format!("unknown GPU family; known: {}", KNOWN_GPU_FAMILIES.join(", ")),
                });
            }
            if *value == 0 || *value > MAX_WEIGHT {
                errors.push(QuotaError {
                    place: format!("gpu_values.{family}"),
                    problem: format!("value {value} must be from 1 to {MAX_WEIGHT}"),
                });
            }
        }
        for spec in teams.values() {
            let here = place(&spec.name);
            let quota = &spec.quota;
            if quota.weight == 0 || quota.weight > MAX_WEIGHT {
                errors.push(QuotaError {
                    place: here.clone(),
                    problem: format!("weight {} must be from 1 to {MAX_WEIGHT}", quota.weight),
                });
            }
            for (what, amounts) in
                [("guaranteed", &quota.guaranteed), ("limit", &quota.limit), ("lending_limit", &quota.lending_limit)]
            {
                for class in amounts.0.keys() {
                    if let ResourceClass::GpuFamily(family) = class
                        && !known_family(family)
                    {
                        errors.push(QuotaError {
                            place: here.clone(),
                            problem: format!(
                                "{what} names unknown GPU family {class}; known: {} (and any family a node has)",
                                KNOWN_GPU_FAMILIES.join(", ")
                            ),
                        });
                    }
                }
            }
            for (class, guaranteed) in &quota.guaranteed.0 {
                if let Some(limit) = quota.limit_of(class)
                    && limit < *guaranteed
                {
                    errors.push(QuotaError {
                        place: here.clone(),
                        problem: format!(
                            "limit {class} = {} is below its guaranteed {}; raise the limit or lower the guarantee",
                            format_amount(class, limit),
                            format_amount(class, *guaranteed)
                        ),
                    });
                }
            }
            if let Some(parent) = &spec.parent {
                if parent == &spec.name {
                    errors.push(QuotaError { place: here.clone(), problem: "is its own parent".into() });
                } else if !teams.contains_key(parent) {
                    errors.push(QuotaError {
                        place: here.clone(),
                        problem: format!("parent \"{parent}\" is not declared; declare it or drop `parent`"),
                    });
                }
            }
        }
        // Cycles and depth: walk up from every team, stopping at a team whose depth
        // is known already, so the whole pass is linear (walking every team's whole
        // chain was cubic in the depth: a chain of 2,000 teams, 60 KB of teams file,
        // took minutes). A cycle is reported once, at its smallest member; a team
        // whose parents lead into a cycle has no depth.
        let mut depths: BTreeMap<&TeamName, Option<usize>> = BTreeMap::new();
        for name in teams.keys() {
            let mut path: Vec<&TeamName> = Vec::new();
            let mut on_path: BTreeSet<&TeamName> = BTreeSet::new();
            let mut current = name;
            // The depth of the team above the path's last, or None for a cycle.
            let above = loop {
                if let Some(known) = depths.get(current) {
                    break *known;
                }
                if !on_path.insert(current) {
                    let start = path.iter().position(|member| *member == current).unwrap_or(0);
                    let cycle = &path[start..];
                    if let Some(smallest) = cycle.iter().min() {
                        let at = cycle.iter().position(|member| member == smallest).unwrap_or(0);
                        let shown: Vec<&str> =
                            cycle[at..].iter().chain(&cycle[..=at]).map(|member| member.as_str()).collect();
                        errors.push(QuotaError {
                            place: place(smallest),
                            problem: format!("parents form a cycle: {}", shown.join(" -> ")),
                        });
                    }
                    break None;
                }
                path.push(current);
                match teams.get(current).and_then(|spec| spec.parent.as_ref()) {
                    Some(parent) if teams.contains_key(parent) && parent != current => current = parent,
                    _ => break Some(0),
                }
            };
            let mut depth = above;
            for member in path.into_iter().rev() {
                depth = depth.map(|levels| levels + 1);
                depths.insert(member, depth);
            }
        }
        for (name, depth) in &depths {
            if let Some(levels) = depth.filter(|levels| *levels > MAX_DEPTH) {
                errors.push(QuotaError {
                    place: place(name),
                    problem: format!("is {levels} levels deep; at most {MAX_DEPTH} are allowed"),
                });
            }
        }
        let mut children: BTreeMap<TeamName, Vec<TeamName>> = BTreeMap::new();
        for spec in teams.values() {
            if let Some(parent) = &spec.parent
                && teams.contains_key(parent)
                && parent != &spec.name
            {
                children.entry(parent.clone()).or_default().push(spec.name.clone());
            }
        }
        // Children against their parent: each one, then their sum.
        for (parent_name, kids) in &children {
            let Some(parent) = teams.get(parent_name) else { continue };
            let mut sums: BTreeMap<ResourceClass, Vec<(TeamName, u64)>> = BTreeMap::new();
            for kid in kids {
                let Some(child) = teams.get(kid) else { continue };
                for (class, guaranteed) in &child.quota.guaranteed.0 {
                    sums.entry(class.clone()).or_default().push((kid.clone(), *guaranteed));
                    let parent_guaranteed = bound_of(&parent.quota.guaranteed, class);
                    if *guaranteed > parent_guaranteed {
                        errors.push(QuotaError {
                            place: place(kid),
                            problem: format!(
                                "guaranteed {class} = {} exceeds parent \"{parent_name}\" guaranteed {}",
                                format_amount(class, *guaranteed),
                                format_amount(class, parent_guaranteed)
                            ),
                        });
                    }
                }
                for (class, limit) in &child.quota.limit.0 {
                    if let Some(parent_limit) = parent.quota.limit_of(class)
                        && *limit > parent_limit
                    {
                        errors.push(QuotaError {
                            place: place(kid),
                            problem: format!(
                                "limit {class} = {} exceeds parent \"{parent_name}\" limit {}",
                                format_amount(class, *limit),
                                format_amount(class, parent_limit)
                            ),
                        });
                    }
                }
            }
            for (class, parts) in sums {
                // Saturating: 18,500 children guaranteed 1e12 each must not wrap
                // to a total the parent seems to cover.
                let total = parts.iter().fold(0u64, |total, (_, amount)| total.saturating_add(*amount));
                let parent_guaranteed = bound_of(&parent.quota.guaranteed, &class);
                let single_too_big = parts.iter().any(|(_, amount)| *amount > parent_guaranteed);
                if total > parent_guaranteed && !single_too_big {
                    let listed: Vec<String> =
                        parts.iter().map(|(kid, amount)| format!("{kid} {}", format_amount(&class, *amount))).collect();
                    errors.push(QuotaError {
                        place: place(parent_name),
                        problem: format!(
                            "children are guaranteed {class} = {} in total ({}), more than its guaranteed {}",
                            format_amount(&class, total),
                            listed.join(", "),
                            format_amount(&class, parent_guaranteed)
                        ),
                    });
                }
            }
        }
        if !errors.is_empty() {
            errors.sort_by(|a, b| (&a.place, &a.problem).cmp(&(&b.place, &b.problem)));
            errors.dedup();
            return Err(errors);
        }
        Ok(QuotaTree { teams, children, gpu_values })
    }

    pub fn get(&self, name: &TeamName) -> Option<&TeamSpec> {
        self.teams.get(name)
    }

    pub fn contains(&self, name: &TeamName) -> bool {
        self.teams.contains_key(name)
    }

    pub fn teams(&self) -> impl Iterator<Item = &TeamSpec> {
        self.teams.values()
    }

    pub fn specs(&self) -> Vec<TeamSpec> {
        self.teams.values().cloned().collect()
    }

    pub fn gpu_values(&self) -> &BTreeMap<String, u32> {
        &self.gpu_values
    }

    /// The value of one GPU of this family relative to others (1 when not stated).
    pub fn gpu_value(&self, family: &str) -> u32 {
        self.gpu_values.get(family).copied().unwrap_or(1)
    }

    pub fn children(&self, name: &TeamName) -> &[TeamName] {
        self.children.get(name).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Whether allocations may name this team: only nodes without children hold
    /// allocations (a team with projects allocates through its projects).
    pub fn is_leaf(&self, name: &TeamName) -> bool {
        self.teams.contains_key(name) && self.children(name).is_empty()
    }

    /// The team and its ancestors, nearest first.
    pub fn path(&self, name: &TeamName) -> Vec<&TeamSpec> {
        let mut path = Vec::new();
        let mut current = self.teams.get(name);
        while let Some(spec) = current {
            path.push(spec);
            if path.len() > MAX_DEPTH {
                break;
            }
            current = spec.parent.as_ref().and_then(|parent| self.teams.get(parent));
        }
        path
    }

    /// Leaves under a team (itself when it is one).
    pub fn leaves_under(&self, name: &TeamName) -> Vec<TeamName> {
        let mut leaves = Vec::new();
        let mut stack = vec![name.clone()];
        while let Some(current) = stack.pop() {
            let kids = self.children(&current);
            if kids.is_empty() {
                leaves.push(current);
            } else {
                stack.extend(kids.iter().cloned());
            }
        }
        leaves.sort();
        leaves
    }

    /// A copy with one team added or changed, checked again.
    pub fn with(&self, spec: TeamSpec, families: &BTreeSet<String>) -> Result<QuotaTree, Vec<QuotaError>> {
        let mut specs: BTreeMap<TeamName, TeamSpec> = self.teams.clone();
        specs.insert(spec.name.clone(), spec);
        QuotaTree::new(specs.into_values().collect(), self.gpu_values.clone(), families)
    }

    /// A copy without one team, checked again (its children must go first).
    pub fn without(&self, name: &TeamName, families: &BTreeSet<String>) -> Result<QuotaTree, Vec<QuotaError>> {
        if !self.children(name).is_empty() {
            return Err(vec![QuotaError {
                place: place(name),
                problem: format!(
                    "has children ({}); delete or move them first",
                    self.children(name).iter().map(|kid| kid.as_str()).collect::<Vec<_>>().join(", ")
                ),
            }]);
        }
        let specs = self.teams.values().filter(|spec| &spec.name != name).cloned().collect();
        QuotaTree::new(specs, self.gpu_values.clone(), families)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn team(name: &str, parent: Option<&str>, guaranteed: &[(&str, u64)], limit: &[(&str, u64)]) -> TeamSpec {
        let amounts = |pairs: &[(&str, u64)]| {
            Resources(pairs.iter().map(|(class, amount)| (class.parse().expect("class"), *amount)).collect())
        };
        TeamSpec {
            name: name.parse().expect("name"),
            parent: parent.map(|p| p.parse().expect("parent")),
            quota: Quota { weight: 1, guaranteed: amounts(guaranteed), limit: amounts(limit), ..Quota::default() },
        }
    }

    fn problems(specs: Vec<TeamSpec>) -> Vec<String> {
        match QuotaTree::new(specs, BTreeMap::new(), &BTreeSet::new()) {
            Ok(_) => vec![],
            Err(errors) => errors.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn a_sound_tree_is_accepted_with_its_shape() {
        let tree = QuotaTree::new(
            vec![
                team("research", None, &[("gpu/h100", 8000)], &[("gpu/h100", 16000)]),
                team("vision", Some("research"), &[("gpu/h100", 4000)], &[("gpu/h100", 16000)]),
                team("nlp", Some("research"), &[("gpu/h100", 4000)], &[]),
            ],
            BTreeMap::new(),
            &BTreeSet::new(),
        )
        .expect("valid");
        // A family guarantee under a parent that guarantees any GPU is covered by it.
        assert!(
            QuotaTree::new(
                vec![team("org", None, &[("gpu/any", 8000)], &[]), team("x", Some("org"), &[("gpu/h100", 8000)], &[])],
                BTreeMap::new(),
                &BTreeSet::new(),
            )
            .is_ok()
        );
        let research: TeamName = "research".parse().expect("name");
        let vision: TeamName = "vision".parse().expect("name");
        assert!(!tree.is_leaf(&research));
        assert!(tree.is_leaf(&vision));
        assert_eq!(
            tree.path(&vision).iter().map(|spec| spec.name.as_str()).collect::<Vec<_>>(),
            ["vision", "research"]
        );
        assert_eq!(tree.leaves_under(&research).len(), 2);
    }

    #[test]
    fn contradictions_are_named_where_they_are() {
        let cases: Vec<(Vec<TeamSpec>, &str)> = vec![
            (
                vec![
                    team("research", None, &[("gpu/h100", 8000)], &[]),
                    team("vision", Some("research"), &[("gpu/h100", 12000)], &[]),
                ],
                "team \"vision\": guaranteed gpu/h100 = 12 exceeds parent \"research\" guaranteed 8",
            ),
            (
                vec![
                    team("research", None, &[("gpu/any", 8000)], &[]),
                    team("vision", Some("research"), &[("gpu/any", 5000)], &[]),
                    team("nlp", Some("research"), &[("gpu/any", 5000)], &[]),
                ],
                "team \"research\": children are guaranteed gpu/any = 10 in total (nlp 5, vision 5), more than its guaranteed 8",
            ),
            (
                vec![team("vision", None, &[("gpu/any", 8000)], &[("gpu/any", 4000)])],
                "team \"vision\": limit gpu/any = 4 is below its guaranteed 8",
            ),
            (vec![team("a", Some("b"), &[], &[]), team("b", Some("a"), &[], &[])], "parents form a cycle: a -> b -> a"),
            (vec![team("a", Some("ghost"), &[], &[])], "team \"a\": parent \"ghost\" is not declared"),
            (
                vec![
                    team("org", None, &[("gpu/any", 4000)], &[]),
                    team("x", Some("org"), &[("gpu/h100", 3000)], &[]),
                    team("y", Some("org"), &[("gpu/h100", 3000)], &[]),
                ],
                "team \"org\": children are guaranteed gpu/h100 = 6 in total (x 3, y 3), more than its guaranteed 4",
            ),
            (vec![team("a", None, &[("gpu/b300x", 1000)], &[])], "unknown GPU family gpu/b300x"),
            (
                vec![team("p", None, &[], &[("cpu", 1000)]), team("c", Some("p"), &[], &[("cpu", 2000)])],
                "team \"c\": limit cpu = 2 exceeds parent \"p\" limit 1",
            ),
        ];
        for (specs, expected) in cases {
            let found = problems(specs);
            assert!(found.iter().any(|problem| problem.contains(expected)), "wanted {expected:?} in {found:?}");
        }
    }

    #[test]
    fn cycles_and_depths_are_found_in_one_pass() {
        // A cycle of three, a team leading into it, and a chain seven deep.
        let mut specs = vec![
            team("c", Some("a"), &[], &[]),
            team("a", Some("b"), &[], &[]),
            team("b", Some("c"), &[], &[]),
            team("d", Some("b"), &[], &[]),
            team("l0", None, &[], &[]),
        ];
        specs.extend((1..7).map(|level| team(&format!("l{level}"), Some(&format!("l{}", level - 1)), &[], &[])));
        let found = problems(specs);
        assert_eq!(
            found,
            [
                "team \"a\": parents form a cycle: a -> b -> c -> a",
                "team \"l6\": is 7 levels deep; at most 6 are allowed",
            ]
        );
        // A chain of 2,000 (a 60 KB teams file) took minutes when every team walked
        // its whole chain.
        let chain: Vec<TeamSpec> = (0..2_000)
            .map(|level| {
                let parent = (level > 0).then(|| format!("t{}", level - 1));
                team(&format!("t{level}"), parent.as_deref(), &[], &[])
            })
            .collect();
        let started = std::time::Instant::now();
        assert_eq!(problems(chain).len(), 2_000 - MAX_DEPTH);
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "{:?}", started.elapsed());
    }

    #[test]
    fn children_guarantees_that_add_up_past_u64_do_not_wrap() {
        // 18,447 children guaranteed 1e12 cores each, like their parent: their total
        // wrapped to 2.6e11 cores, less than the parent's guarantee, and the tree was
        // accepted (a debug build panicked).
        let mut specs = vec![team("p", None, &[("cpu", 1_000_000_000_000_000)], &[])];
        specs.extend(
            (0..18_447).map(|index| team(&format!("c{index}"), Some("p"), &[("cpu", 1_000_000_000_000_000)], &[])),
        );
        let found = problems(specs);
        assert!(
            found.iter().any(|problem| problem.starts_with("team \"p\": children are guaranteed cpu")),
            "{}",
            found.len()
        );
    }

    #[test]
    fn a_team_with_children_cannot_be_deleted_first() {
        let tree = QuotaTree::new(
            vec![team("org", None, &[], &[]), team("a", Some("org"), &[], &[])],
            BTreeMap::new(),
            &BTreeSet::new(),
        )
        .expect("valid");
        let errors = tree.without(&"org".parse().expect("name"), &BTreeSet::new()).expect_err("has a child");
        assert!(errors[0].problem.contains("children (a)"), "{errors:?}");
        assert!(tree.without(&"a".parse().expect("name"), &BTreeSet::new()).is_ok());
    }
}
