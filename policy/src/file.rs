//! The declarative teams file (`allotctl apply -f teams.toml`): parsing with
//! exact error places, and the plan (diff) between the cluster and the file.
//!
//! ```toml
//! [gpu_values]                 # optional: relative value of one GPU per family
//! h100 = 8
//! t4 = 1
//!
//! [teams.research]             # a team; its name is the table's key
//! weight = 2                   # optional, default 1
//! guaranteed = { "gpu/h100" = 8, cpu = 128, memory = 1024 }   # GPUs, cores, GiB
//! limit = { "gpu/h100" = 16 }  # classes absent here are unlimited
//! lending_limit = { "gpu/h100" = 4 }
//!
//! [teams.vision]
//! parent = "research"
//! guaranteed = { "gpu/h100" = 4 }
//!
//! [[grants]]                   # role bindings; a team-less grant is cluster-wide
//! subject = "alice"
//! role = "team-admin"
//! team = "vision"
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use allot_api::allocation::TeamName;
use serde::Deserialize;

use crate::authz::Grant;
use crate::resources::{ResourceClass, Resources};
use crate::tree::{Quota, QuotaError, QuotaTree, TeamSpec};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    gpu_values: BTreeMap<String, u32>,
    #[serde(default)]
    teams: BTreeMap<String, RawTeam>,
    #[serde(default)]
    grants: Vec<RawGrant>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTeam {
    parent: Option<String>,
    weight: Option<u32>,
    #[serde(default)]
    guaranteed: BTreeMap<String, f64>,
    #[serde(default)]
    limit: BTreeMap<String, f64>,
    #[serde(default)]
    lending_limit: BTreeMap<String, f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrant {
    subject: String,
    role: String,
    team: Option<String>,
}

/// A teams file that parsed and whose names and classes are valid (the tree as
/// a whole is checked by [`QuotaTree::new`] when the plan is made).
#[derive(Debug, Clone, PartialEq)]
pub struct TeamsFile {
    pub gpu_values: BTreeMap<String, u32>,
    pub teams: Vec<TeamSpec>,
    pub grants: Vec<Grant>,
}

/// Everything wrong with a file, each with its place, prefixed by the file name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .problems.join("\n"))]
pub struct FileError {
    pub problems: Vec<String>,
}

/// Turns `class = amount` pairs as people write them into base units.
pub fn parse_amounts(pairs: &BTreeMap<String, f64>, what: &str) -> Result<Resources, Vec<String>> {
    let mut amounts = BTreeMap::new();
    let mut problems = Vec::new();
    for (class, amount) in pairs {
        match class.parse::<ResourceClass>() {
            Ok(class) => match class.from_user(*amount) {
                Ok(base) => {
                    amounts.insert(class, base);
                }
                Err(problem) => problems.push(format!("{what}: {problem}")),
            },
            Err(error) => problems.push(format!("{what}: {error}")),
        }
    }
    if problems.is_empty() { Ok(Resources(amounts)) } else { Err(problems) }
}

impl TeamsFile {
    /// Parses a file's text; `origin` (the file name) prefixes every problem.
    pub fn parse(origin: &str, text: &str) -> Result<TeamsFile, FileError> {
        let raw: RawFile = toml::from_str(text).map_err(|error| FileError {
            problems: vec![format!("{origin}: {}", error.to_string().trim_end().replace('\n', "\n    "))],
        })?;
        let mut problems = Vec::new();
        let mut teams = Vec::new();
        for (name, team) in raw.teams {
            let here = format!("{origin}: team \"{name}\"");
            let parsed_name = match name.parse::<TeamName>() {
                Ok(parsed) => Some(parsed),
                Err(error) => {
                    problems.push(format!("{here}: {error}"));
                    None
                }
            };
            let parent = match team.parent.as_deref().map(str::parse::<TeamName>).transpose() {
                Ok(parent) => parent,
                Err(error) => {
                    problems.push(format!("{here}: parent: {error}"));
                    None
                }
            };
            let mut amounts = |pairs: &BTreeMap<String, f64>, what: &str| match parse_amounts(pairs, what) {
                Ok(amounts) => amounts,
                Err(found) => {
                    problems.extend(found.into_iter().map(|problem| format!("{here}: {problem}")));
                    Resources::default()
                }
            };
            let guaranteed = amounts(&team.guaranteed, "guaranteed");
            let limit = amounts(&team.limit, "limit");
            let lending_limit = amounts(&team.lending_limit, "lending_limit");
            if let Some(name) = parsed_name {
                teams.push(TeamSpec {
                    name,
                    parent,
                    quota: Quota { weight: team.weight.unwrap_or(1), guaranteed, limit, lending_limit },
                });
            }
        }
        let mut grants = Vec::new();
        for (index, grant) in raw.grants.into_iter().enumerate() {
            let here = format!("{origin}: grants[{index}]");
            match Grant::new(&grant.subject, &grant.role, grant.team.as_deref()) {
                Ok(parsed) => grants.push(parsed),
                Err(problem) => problems.push(format!("{here}: {problem}")),
            }
        }
        if !problems.is_empty() {
            return Err(FileError { problems });
        }
        Ok(TeamsFile { gpu_values: raw.gpu_values, teams, grants })
    }
}

/// One change that applying a file makes.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    CreateTeam(TeamSpec),
    UpdateTeam { before: TeamSpec, after: TeamSpec },
    DeleteTeam(TeamName),
    SetGpuValues { before: BTreeMap<String, u32>, after: BTreeMap<String, u32> },
    AddGrant(Grant),
    RemoveGrant(Grant),
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::CreateTeam(spec) => write!(f, "+ team {}{}", spec.name, describe(spec)),
            Change::UpdateTeam { before, after } => {
                write!(f, "~ team {}:{} ->{}", after.name, describe(before), describe(after))
            }
            Change::DeleteTeam(name) => write!(f, "- team {name}"),
            Change::SetGpuValues { before, after } => write!(f, "~ gpu_values {before:?} -> {after:?}"),
            Change::AddGrant(grant) => write!(f, "+ grant {grant}"),
            Change::RemoveGrant(grant) => write!(f, "- grant {grant}"),
        }
    }
}

fn describe(spec: &TeamSpec) -> String {
    let mut parts = Vec::new();
    if let Some(parent) = &spec.parent {
        parts.push(format!("parent {parent}"));
    }
    parts.push(format!("weight {}", spec.quota.weight));
    if !spec.quota.guaranteed.is_empty() {
        parts.push(format!("guaranteed {{{}}}", spec.quota.guaranteed.describe()));
    }
    if !spec.quota.limit.is_empty() {
        parts.push(format!("limit {{{}}}", spec.quota.limit.describe()));
    }
    if !spec.quota.lending_limit.is_empty() {
        parts.push(format!("lending_limit {{{}}}", spec.quota.lending_limit.describe()));
    }
    format!(" ({})", parts.join(", "))
}

/// The changes that make the cluster match the file, and the tree after them
/// (checked as a whole). With `prune`, teams and grants absent from the file go.
pub fn plan(
    current: &QuotaTree,
    current_grants: &[Grant],
    file: &TeamsFile,
    prune: bool,
    families: &BTreeSet<String>,
    origin: &str,
) -> Result<(Vec<Change>, QuotaTree), FileError> {
    let mut desired: BTreeMap<TeamName, TeamSpec> =
        if prune { BTreeMap::new() } else { current.teams().map(|spec| (spec.name.clone(), spec.clone())).collect() };
    for spec in &file.teams {
        desired.insert(spec.name.clone(), spec.clone());
    }
    let gpu_values =
        if file.gpu_values.is_empty() && !prune { current.gpu_values().clone() } else { file.gpu_values.clone() };
    let tree = QuotaTree::new(desired.values().cloned().collect(), gpu_values.clone(), families).map_err(|errors| {
        FileError { problems: errors.iter().map(|error: &QuotaError| format!("{origin}: {error}")).collect() }
    })?;
    let mut changes = Vec::new();
    if &gpu_values != current.gpu_values() {
        changes.push(Change::SetGpuValues { before: current.gpu_values().clone(), after: gpu_values });
    }
    for spec in tree.teams() {
        match current.get(&spec.name) {
            None => changes.push(Change::CreateTeam(spec.clone())),
            Some(before) if before != spec => {
                changes.push(Change::UpdateTeam { before: before.clone(), after: spec.clone() })
            }
            Some(_) => {}
        }
    }
    for spec in current.teams() {
        if !tree.contains(&spec.name) {
            changes.push(Change::DeleteTeam(spec.name.clone()));
        }
    }
    let wanted: BTreeSet<&Grant> = file.grants.iter().collect();
    let existing: BTreeSet<&Grant> = current_grants.iter().collect();
    for grant in &wanted {
        if !existing.contains(grant) {
            changes.push(Change::AddGrant((*grant).clone()));
        }
    }
    if prune {
        for grant in existing {
            if !wanted.contains(grant) {
                changes.push(Change::RemoveGrant(grant.clone()));
            }
        }
    }
    Ok((changes, tree))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
[gpu_values]
h100 = 8
t4 = 1

[teams.research]
weight = 2
guaranteed = { "gpu/h100" = 8, cpu = 128 }
limit = { "gpu/h100" = 16 }

[teams.vision]
parent = "research"
guaranteed = { "gpu/h100" = 4 }

[[grants]]
subject = "alice"
role = "team-admin"
team = "vision"
"#;

    #[test]
    fn the_documented_example_parses_and_plans() {
        let file = TeamsFile::parse("teams.toml", EXAMPLE).expect("parses");
        assert_eq!(file.teams.len(), 2);
        let (changes, tree) =
            plan(&QuotaTree::default(), &[], &file, false, &BTreeSet::new(), "teams.toml").expect("plans");
        let lines: Vec<String> = changes.iter().map(ToString::to_string).collect();
        assert!(
            lines
                .iter()
                .any(|line| line.starts_with("+ team research (weight 2, guaranteed {cpu = 128, gpu/h100 = 8}")),
            "{lines:?}"
        );
        assert!(lines.iter().any(|line| line == "+ grant alice team-admin vision"), "{lines:?}");
        assert_eq!(tree.gpu_value("h100"), 8);
        // Applying the same file again changes nothing.
        let (again, _) = plan(&tree, &file.grants, &file, false, &BTreeSet::new(), "teams.toml").expect("plans");
        assert!(again.is_empty(), "{again:?}");
    }

    #[test]
    fn problems_name_the_file_and_the_place() {
        let cases = [
            (
                "[teams.research]\nguaranteed = { \"gpu/h100\" = 8 }\n[teams.vision]\nparent = \"research\"\nguaranteed = { \"gpu/h100\" = 12 }\n",
                "teams.toml: team \"vision\": guaranteed gpu/h100 = 12 exceeds parent \"research\" guaranteed 8",
            ),
            (
                "[teams.vision]\nguaranteed = { gpus = 1 }\n",
                "teams.toml: team \"vision\": guaranteed: unknown resource class \"gpus\"",
            ),
            ("[teams.Vision]\n", "teams.toml: team \"Vision\": invalid team name"),
            ("[teams.a]\nwieght = 2\n", "unknown field `wieght`"),
            ("[[grants]]\nsubject = \"bob\"\nrole = \"boss\"\n", "teams.toml: grants[0]: unknown role \"boss\""),
            ("[teams.a\n", "teams.toml: "),
        ];
        for (text, expected) in cases {
            let error = TeamsFile::parse("teams.toml", text)
                .and_then(|file| {
                    plan(&QuotaTree::default(), &[], &file, false, &BTreeSet::new(), "teams.toml").map(|_| ())
                })
                .expect_err(text);
            assert!(error.to_string().contains(expected), "wanted {expected:?} in {error}");
        }
    }

    #[test]
    fn prune_removes_what_the_file_does_not_name() {
        let file = TeamsFile::parse("f", EXAMPLE).expect("parses");
        let (_, tree) = plan(&QuotaTree::default(), &[], &file, false, &BTreeSet::new(), "f").expect("plans");
        let smaller = TeamsFile::parse("f", "[teams.research]\n").expect("parses");
        let (changes, after) = plan(&tree, &file.grants, &smaller, true, &BTreeSet::new(), "f").expect("plans");
        let lines: Vec<String> = changes.iter().map(ToString::to_string).collect();
        assert!(lines.contains(&"- team vision".to_owned()), "{lines:?}");
        assert!(lines.contains(&"- grant alice team-admin vision".to_owned()), "{lines:?}");
        assert!(!after.contains(&"vision".parse().expect("name")));
    }
}
