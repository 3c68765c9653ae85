//! The teams file (`allotctl apply -f`): `allot_policy::TeamsFile::parse`, then
//! the plan against an empty cluster and against one already holding the
//! documented example, with and without pruning, as `allotctl apply` and the
//! broker's `ApplyTeamsFile` do.

use std::collections::BTreeSet;
use std::sync::OnceLock;
use std::time::Duration;

use allot_policy::file::plan;
use allot_policy::{Grant, QuotaTree, TeamsFile};

use super::{as_is, message_of, text};
use crate::engine::{Outcome, Target};

const DICTIONARY: &[&str] = &[
    "[teams.",
    "[teams.a]\n",
    "[teams.b]\nparent = \"a\"\n",
    "[[grants]]\n",
    "[gpu_values]\n",
    "parent = ",
    "weight = ",
    "guaranteed = ",
    "limit = ",
    "lending_limit = ",
    "subject = ",
    "role = ",
    "team = ",
    "{ \"gpu/h100\" = 8 }",
    "{ cpu = 1e15, memory = 1e300 }",
    "\"gpu/any\"",
    "\"gpu/\"",
    "\"gpu/h100\"",
    "\"gpu/unknown-family\"",
    "cpu",
    "memory",
    "admin",
    "team-admin",
    "member",
    "viewer",
    "research",
    "vision",
    "h100",
    "= ",
    "\"\"\"",
    "'''",
    "[[",
    "]]",
    "{",
    "}",
    "[",
    "]",
    "=",
    ".",
    "#",
    "\\u0000",
    "\\",
    "inf",
    "nan",
    "true",
    "1979-05-27T07:32:00Z",
];

pub const TARGET: Target = Target {
    name: "teams",
    summary: "the teams file: allot_policy::TeamsFile::parse and the plan (QuotaTree::new) against an empty and a populated cluster",
    run,
    structured: None,
    dictionary: DICTIONARY,
    max_len: 64 * 1024,
    time_limit: Duration::from_secs(2),
    load: as_is,
    isolate: false,
    debug_only_aborts: &[],
    scratch: None,
};

/// The cluster after applying the documented example, to plan against.
fn populated() -> &'static (QuotaTree, Vec<Grant>) {
    static POPULATED: OnceLock<(QuotaTree, Vec<Grant>)> = OnceLock::new();
    POPULATED.get_or_init(|| {
        let example = include_str!("../../../docs/examples/teams.toml");
        let file = TeamsFile::parse("teams.toml", example).unwrap_or_else(|error| panic!("the example: {error}"));
        let (_, tree) = plan(&QuotaTree::default(), &[], &file, false, &BTreeSet::new(), "teams.toml")
            .unwrap_or_else(|error| panic!("the example: {error}"));
        (tree, file.grants)
    })
}

fn run(input: &[u8]) -> Outcome {
    let file = TeamsFile::parse("teams.toml", &text(input)).map_err(message_of)?;
    let families: BTreeSet<String> = ["g9".to_owned()].into();
    let (tree, grants) = populated();
    let mut planned = 0;
    let mut last_error = None;
    for (current, current_grants) in [(&QuotaTree::default(), &[][..]), (tree, &grants[..])] {
        for prune in [false, true] {
            match plan(current, current_grants, &file, prune, &families, "teams.toml") {
                Ok((changes, after)) => {
                    planned += 1;
                    // allotctl prints every change; the tree answers by name.
                    for change in &changes {
                        assert!(!change.to_string().is_empty());
                    }
                    for spec in after.teams() {
                        assert!(!after.path(&spec.name).is_empty(), "a team of the tree has no path");
                    }
                }
                Err(error) => last_error = Some(message_of(error)),
            }
        }
    }
    match last_error {
        Some(error) if planned == 0 => Err(error),
        _ => Ok(format!("teams {} grants {} planned {planned}", file.teams.len().min(4), file.grants.len().min(2))),
    }
}
