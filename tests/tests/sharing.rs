//! Quotas, fair share and reclaim through the real broker: two DGX H100 node
//! daemons (16 GPUs), teams from a teams file, allotctl as a person uses it.

use std::path::Path;
use std::time::Duration;

use allot_tests::{
    Broker, StoreKind, allotctl, allotctl_json, node_statuses, start_broker_with, start_node, wait_until,
};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(30);

fn two_dgx(dir: &Path, extra: &[&str]) -> (Broker, Vec<allot_tests::Process>) {
    let store = StoreKind::Embedded(dir.join("state"));
    let broker = start_broker_with(&store, dir, "broker", "5s", "127.0.0.1:0", extra);
    let nodes = vec![start_node(&broker, "dgx-h100", "node-a", dir), start_node(&broker, "dgx-h100", "node-b", dir)];
    wait_until("both nodes are ready", LONG, || {
        node_statuses(&broker).iter().filter(|(_, status)| status == "ready").count() == 2
    });
    (broker, nodes)
}

fn apply(broker: &Broker, dir: &Path, name: &str, text: &str, extra: &[&str]) -> std::process::Output {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write teams file");
    let mut args = vec!["apply", "-f", path.to_str().expect("path")];
    args.extend_from_slice(extra);
    allotctl(broker, &args)
}

fn one_gpu(broker: &Broker, team: &str) -> Value {
    allotctl_json(broker, &["alloc", "create", "--team", team, "--gpus", "1", "--cpus", "1"])
}

fn list(broker: &Broker, team: &str) -> Vec<Value> {
    allotctl_json(broker, &["alloc", "list", "--team", team, "--all"]).as_array().cloned().unwrap_or_default()
}

fn count(allocations: &[Value], state: &str) -> usize {
    allocations.iter().filter(|allocation| allocation["state"] == state).count()
}

const TWO_TEAMS: &str = r#"
[teams.a]
guaranteed = { "gpu/any" = 8 }
limit = { "gpu/any" = 16 }

[teams.b]
guaranteed = { "gpu/any" = 8 }
limit = { "gpu/any" = 16 }
"#;

#[test]
fn borrowed_gpus_go_back_to_their_owner_after_the_grace_period_and_the_rest_stay() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (broker, _nodes) = two_dgx(dir.path(), &["--reclaim-grace", "2s"]);
    let applied = apply(&broker, dir.path(), "teams.toml", TWO_TEAMS, &[]);
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));

    // A takes all 16: 8 of its own, 8 borrowed from B's idle guarantee.
    let a_jobs: Vec<Value> = (0..16).map(|_| one_gpu(&broker, "a")).collect();
    assert!(a_jobs.iter().all(|job| job["state"] == "bound"), "{a_jobs:?}");
    let preemptible: Vec<bool> = a_jobs.iter().map(|job| job["preemptible"] == true).collect();
    assert_eq!(preemptible.iter().filter(|p| !**p).count(), 8, "8 within the guarantee");
    assert!(preemptible[8..].iter().all(|p| *p), "the last 8 are borrowed: {preemptible:?}");
    let shares = allotctl_json(&broker, &["fairshare"]);
    let a = shares["teams"].as_array().expect("teams").iter().find(|team| team["team"] == "a").expect("a").clone();
    assert_eq!((a["gpus_used"].as_f64(), a["gpus_borrowed"].as_f64()), (Some(16.0), Some(8.0)), "{a}");

    // B asks for its 8: they wait while A's borrowed GPUs are reclaimed.
    let b_jobs: Vec<Value> = (0..8).map(|_| one_gpu(&broker, "b")).collect();
    assert!(b_jobs.iter().all(|job| job["state"] == "pending"), "{b_jobs:?}");
    let queue = allotctl_json(&broker, &["queue", "list"]);
    assert_eq!(queue.as_array().map(Vec::len), Some(8), "{queue}");
    assert!(
        queue.as_array().expect("queue").iter().all(|entry| entry["reason"].as_str().unwrap_or("").contains("reclaim")),
        "{queue}"
    );
    let reclaiming: Vec<Value> =
        list(&broker, "a").into_iter().filter(|job| job["reclaim_at_ms"].as_u64().is_some()).collect();
    assert_eq!(reclaiming.len(), 8, "eight borrowed allocations are reclaimed");
    let borrowed_ids: Vec<&str> = a_jobs[8..].iter().map(|job| job["id"].as_str().expect("id")).collect();
    assert!(reclaiming.iter().all(|job| borrowed_ids.contains(&job["id"].as_str().expect("id"))));

    // After the grace period B holds its 8; A's own 8 were never touched.
    wait_until("B's eight are granted", LONG, || count(&list(&broker, "b"), "bound") == 8);
    let a_after = list(&broker, "a");
    assert_eq!(count(&a_after, "preempted"), 8);
    for job in &a_jobs[..8] {
        let now = a_after.iter().find(|after| after["id"] == job["id"]).expect("still listed");
        assert_eq!(now["state"], "bound", "A's guaranteed allocation {} was touched", job["id"]);
        assert_eq!(now["generation"], job["generation"], "A's guaranteed allocation {} changed", job["id"]);
    }
    // The grace period was given: nothing was preempted before its reclaim time.
    for job in a_after.iter().filter(|job| job["state"] == "preempted") {
        let at = job["reclaim_at_ms"].as_u64().expect("reclaim time");
        assert!(job["updated_at_ms"].as_u64().expect("updated") >= at, "preempted early: {job}");
    }
    let b_granted = list(&broker, "b");
    let gpus: std::collections::BTreeSet<(String, u64)> = b_granted
        .iter()
        .chain(a_after.iter().filter(|job| job["state"] == "bound"))
        .map(|job| (job["node"].as_str().expect("node").to_owned(), job["gpus"][0]["index"].as_u64().expect("gpu")))
        .collect();
    assert_eq!(gpus.len(), 16, "no GPU is held twice");
}

#[test]
fn weights_one_one_two_share_sixteen_gpus_four_four_eight() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (broker, _nodes) = two_dgx(dir.path(), &["--usage-half-life", "off"]);
    for (team, weight) in [("x", "1"), ("y", "1"), ("z", "2"), ("blocker", "1")] {
        allotctl_json(&broker, &["team", "create", team, "--weight", weight]);
    }
    // Everything is taken while the three teams queue unbounded demand.
    let blockers: Vec<Value> =
        (0..2).map(|_| allotctl_json(&broker, &["alloc", "create", "--team", "blocker", "--gpus", "8"])).collect();
    for team in ["x", "y", "z"] {
        for _ in 0..16 {
            assert_eq!(one_gpu(&broker, team)["state"], "pending");
        }
    }
    for blocker in &blockers {
        allotctl_json(&broker, &["alloc", "release", blocker["id"].as_str().expect("id")]);
    }
    wait_until("16 GPUs are granted again", LONG, || {
        ["x", "y", "z"].iter().map(|team| count(&list(&broker, team), "bound")).sum::<usize>() == 16
    });
    let granted: Vec<usize> = ["x", "y", "z"].iter().map(|team| count(&list(&broker, team), "bound")).collect();
    assert_eq!(granted, [4, 4, 8]);
    let queue = allotctl_json(&broker, &["queue", "list"]);
    let positions: Vec<u64> =
        queue.as_array().expect("queue").iter().map(|entry| entry["position"].as_u64().expect("position")).collect();
    assert_eq!(positions, (1..=32).collect::<Vec<u64>>(), "the rest wait in order");
}

#[test]
fn a_teams_file_applies_all_or_nothing_and_a_dry_run_changes_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = StoreKind::Embedded(dir.path().join("state"));
    let broker = start_broker_with(&store, dir.path(), "broker", "5s", "127.0.0.1:0", &[]);
    let file = r#"
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
    let dry = apply(&broker, dir.path(), "teams.toml", file, &["--dry-run", "-o", "json"]);
    assert!(dry.status.success(), "{}", String::from_utf8_lossy(&dry.stderr));
    let plan: Value = serde_json::from_slice(&dry.stdout).expect("json");
    assert_eq!(plan["applied"], false);
    let changes: Vec<&str> = plan["changes"].as_array().expect("changes").iter().filter_map(Value::as_str).collect();
    assert!(changes.iter().any(|line| line.starts_with("+ team vision (parent research")), "{changes:?}");
    assert!(changes.contains(&"+ grant alice team-admin vision"), "{changes:?}");
    assert_eq!(allotctl_json(&broker, &["team", "list"]), Value::Array(vec![]), "a dry run changed nothing");

    let applied = apply(&broker, dir.path(), "teams.toml", file, &[]);
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));
    let teams = allotctl_json(&broker, &["team", "list"]);
    assert_eq!(teams.as_array().map(Vec::len), Some(2));
    let grants = allotctl_json(&broker, &["policy", "list"]);
    assert!(grants.as_array().expect("grants").iter().any(|grant| grant["subject"] == "alice"), "{grants}");

    // A file that contradicts itself is refused with its place, and nothing changes.
    let before = (allotctl_json(&broker, &["team", "list"]), allotctl_json(&broker, &["policy", "list"]));
    let bad = r#"
[teams.research]
guaranteed = { "gpu/h100" = 8 }

[teams.vision]
parent = "research"
guaranteed = { "gpu/h100" = 12 }

[teams.nlp]
parent = "research"

[[grants]]
subject = "bob"
role = "member"
team = "nlp"
"#;
    let refused = apply(&broker, dir.path(), "bad.toml", bad, &[]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("bad.toml: team \"vision\": guaranteed gpu/h100 = 12 exceeds parent \"research\" guaranteed 8"),
        "{stderr}"
    );
    let after = (allotctl_json(&broker, &["team", "list"]), allotctl_json(&broker, &["policy", "list"]));
    assert_eq!(before, after, "a refused file changed something");

    // Bad input through the other doors: a cycle, an unknown class, a limit below its guarantee.
    for (text, expected) in [
        ("[teams.p]\nparent = \"q\"\n[teams.q]\nparent = \"p\"\n", "parents form a cycle"),
        ("[teams.p]\nguaranteed = { gpus = 2 }\n", "unknown resource class \"gpus\""),
        ("[teams.p]\nguaranteed = { cpu = 8 }\nlimit = { cpu = 4 }\n", "limit cpu = 4 is below its guaranteed 8"),
    ] {
        let output = apply(&broker, dir.path(), "more.toml", text, &[]);
        assert!(!output.status.success(), "{text}");
        assert!(
            String::from_utf8_lossy(&output.stderr).contains(expected),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let output = allotctl(&broker, &["quota", "set", "vision", "--limit", "gpu/h100=2"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("below its guaranteed 4"));
    assert_eq!(allotctl_json(&broker, &["team", "list"]), before.0, "a refused quota changed something");
}
