//! `allotctl report capacity` on a real broker after a scripted load: two DGX
//! H100 node daemons (one with a GPU that runs hot and throttles, from a copy of
//! the fixture whose fake-NVML description says so), three teams, queueing, a
//! reclaim with preemptions. The report's numbers match the allocations that
//! happened (GPU-hours from their own timestamps), the history survives a
//! broker restart, the HTML opens in headless Chromium (Debian's `chromium`)
//! with every chart and no console errors (screenshot under
//! target/test-artifacts/capacity.png), the history is a demand `allotctl size`
//! reads, and bad input exits non-zero with nothing written.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use allot_tests::{
    Broker, StoreKind, allotctl, allotctl_json, node_statuses, start_broker_with, start_enforcing_node, start_node,
    wait_until,
};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(30);

const TEAMS: &str = r#"
[teams.a]
guaranteed = { "gpu/any" = 8 }
limit = { "gpu/any" = 16 }

[teams.b]
guaranteed = { "gpu/any" = 8 }
limit = { "gpu/any" = 16 }

[teams.c]
"#;

/// A copy of the dgx-h100 fixture in which every GPU reports 60 % utilisation
/// and GPU 3 runs at 86 °C with its clocks held down for heat.
fn hot_fixture(root: &Path) -> PathBuf {
    let fixtures = root.join("fixtures");
    std::fs::create_dir_all(&fixtures).expect("fixtures dir");
    let copy = fixtures.join("dgx-hot");
    let status = Command::new("cp")
        .arg("-r")
        .arg(allot_tests::repo().join("tests/data/dgx-h100"))
        .arg(&copy)
        .status()
        .expect("cp runs");
    assert!(status.success(), "cannot copy the dgx-h100 fixture");
    let description = std::fs::read_to_string(copy.join("nvml.toml")).expect("nvml.toml");
    let mut edited = String::new();
    let mut gpu_index = None;
    for line in description.lines() {
        if line.starts_with("[[") {
            gpu_index = None;
        }
        if let Some(index) = line.strip_prefix("index = ") {
            gpu_index = index.trim().parse::<u32>().ok();
        }
        match (gpu_index, line) {
            (Some(3), line) if line.starts_with("temperature_c = ") => edited.push_str("temperature_c = 86"),
            (Some(3), "throttle_reasons = []") => edited.push_str("throttle_reasons = [\"sw_thermal_slowdown\"]"),
            (Some(_), line) if line.starts_with("power_limit_mw = ") => {
                edited.push_str(line);
                edited.push_str("\nutilization_gpu_pct = 60");
            }
            _ => edited.push_str(line),
        }
        edited.push('\n');
    }
    assert!(edited.contains("sw_thermal_slowdown") && edited.contains("utilization_gpu_pct"), "fixture not edited");
    std::fs::write(copy.join("nvml.toml"), edited).expect("write nvml.toml");
    fixtures
}

fn list(broker: &Broker, team: &str) -> Vec<Value> {
    allotctl_json(broker, &["alloc", "list", "--team", team, "--all"]).as_array().cloned().unwrap_or_default()
}

fn one_gpu(broker: &Broker, team: &str) -> Value {
    allotctl_json(broker, &["alloc", "create", "--team", team, "--gpus", "1", "--cpus", "1"])
}

fn count(allocations: &[Value], state: &str) -> usize {
    allocations.iter().filter(|allocation| allocation["state"] == state).count()
}

fn number(value: &Value, what: &str) -> u64 {
    value.as_u64().unwrap_or_else(|| panic!("{what} is not a number: {value}"))
}

/// Runs `allotctl report capacity` with `args`; the parsed report.json.
fn report(broker: &Broker, out: &Path, args: &[&str]) -> Value {
    let mut all = vec!["report", "capacity", "--out", out.to_str().expect("path")];
    all.extend_from_slice(args);
    let output = allotctl(broker, &all);
    assert!(
        output.status.success(),
        "allotctl {all:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).expect("report.json")).expect("JSON")
}

fn team<'r>(report: &'r Value, name: &str) -> &'r Value {
    report["figures"]["teams"]
        .as_array()
        .expect("teams")
        .iter()
        .find(|row| row["team"] == name)
        .unwrap_or_else(|| panic!("team {name} is not in the report: {}", report["figures"]["teams"]))
}

fn assert_hours(found: &Value, expected_ms: f64, what: &str) {
    let found = found.as_f64().unwrap_or_else(|| panic!("{what}: not a number: {found}"));
    let expected = expected_ms / 3_600_000.0;
    // Changes are credited at the broker's own timestamps, which the allocations carry too;
    // a grant that follows a preemption or a release in the same batch may be a few ms later.
    let tolerance = 0.0005 + expected * 0.002;
    assert!((found - expected).abs() <= tolerance, "{what}: report {found:.6} GPU-h, allocations {expected:.6} GPU-h");
}

/// GPU time (ms) of allocations, each from `start(allocation)` to its end: its
/// last change when finished, else the report's time.
fn held_ms(allocations: &[&Value], as_of: u64, start: impl Fn(&Value) -> u64) -> f64 {
    allocations
        .iter()
        .map(|allocation| {
            let finished = allocation["state"] == "released" || allocation["state"] == "preempted";
            let end = if finished { number(&allocation["updated_at_ms"], "updated_at_ms") } else { as_of };
            end.saturating_sub(start(allocation)) as f64
        })
        .sum()
}

/// Checks every team's GPU-hours, borrowed GPU-hours and events against the allocations.
fn check_numbers(report: &Value, a: &[Value], b: &[Value], c: &[Value], released_at: u64) {
    let as_of = number(&report["request"]["to_ms"], "to_ms");
    let created = |allocation: &Value| number(&allocation["created_at_ms"], "created_at_ms");
    let all_a: Vec<&Value> = a.iter().collect();
    let borrowed_a: Vec<&Value> = a.iter().filter(|allocation| allocation["preemptible"] == true).collect();
    assert_eq!(borrowed_a.len(), 8, "A borrowed eight");
    let report_a = team(report, "a");
    assert_hours(&report_a["allocated_gpu_h"], held_ms(&all_a, as_of, created), "team a held");
    assert_hours(&report_a["borrowed_gpu_h"], held_ms(&borrowed_a, as_of, created), "team a borrowed");
    assert_eq!((report_a["requests"].as_u64(), report_a["granted"].as_u64()), (Some(16), Some(16)));
    assert_eq!((report_a["reclaims"].as_u64(), report_a["preemptions"].as_u64()), (Some(8), Some(8)));
    assert_eq!(report_a["wait_max_s"].as_f64(), Some(0.0), "A never waited");
    assert_eq!((report_a["guarantee_gpus"].as_f64(), report_a["limit_gpus"].as_f64()), (Some(8.0), Some(16.0)));
    assert_eq!(report_a["peak_gpus"].as_f64(), Some(16.0));

    // Each of B's requests marked one of A's borrowed allocations for reclaim, and
    // was granted (oldest first) in the batch that preempted it.
    let mut preempted: Vec<u64> = a
        .iter()
        .filter(|allocation| allocation["state"] == "preempted")
        .map(|allocation| number(&allocation["updated_at_ms"], "updated_at_ms"))
        .collect();
    preempted.sort_unstable();
    let mut all_b: Vec<&Value> = b.iter().collect();
    all_b.sort_by_key(|allocation| created(allocation));
    assert_eq!(preempted.len(), all_b.len(), "one preemption per request of B");
    let granted_at = |allocation: &Value| {
        let position = all_b.iter().position(|candidate| candidate["id"] == allocation["id"]).expect("one of B's");
        preempted[position]
    };
    let report_b = team(report, "b");
    assert_hours(&report_b["allocated_gpu_h"], held_ms(&all_b, as_of, granted_at), "team b held");
    let longest_wait =
        all_b.iter().map(|allocation| granted_at(allocation) - created(allocation)).max().unwrap_or(0) as f64 / 1000.0;
    let wait_max = report_b["wait_max_s"].as_f64().expect("b waited");
    assert!(
        (wait_max - longest_wait).abs() < 0.05,
        "b's longest wait: report {wait_max} s, allocations {longest_wait} s"
    );
    assert!(wait_max >= 2.0, "b waited at least the reclaim grace: {wait_max} s");
    assert_eq!((report_b["requests"].as_u64(), report_b["granted"].as_u64()), (Some(8), Some(8)));
    assert!(report_b["queued_gpu_h"].as_f64().unwrap_or(0.0) > 0.0, "b's wait counts as queued demand");

    // C's one GPU was granted when A released one.
    let all_c: Vec<&Value> = c.iter().collect();
    let report_c = team(report, "c");
    assert_hours(&report_c["allocated_gpu_h"], held_ms(&all_c, as_of, |_| released_at), "team c held");
    assert_eq!(report_c["granted"].as_u64(), Some(1));

    let total: f64 =
        ["a", "b", "c"].iter().map(|name| team(report, name)["allocated_gpu_h"].as_f64().unwrap_or(0.0)).sum();
    let models = report["figures"]["models"].as_array().expect("models");
    assert_eq!(models.len(), 1, "{models:?}");
    assert_eq!(models[0]["model"], "NVIDIA H100 80GB HBM3");
    let by_model = models[0]["allocated_gpu_h"].as_f64().expect("model hours");
    assert!((by_model - total).abs() < 1e-9, "GPU-hours by model {by_model} = the teams' {total}");

    // The hot, throttling GPU, and only it, is flagged.
    let flagged: Vec<&str> = report["figures"]["gpus"]
        .as_array()
        .expect("gpus")
        .iter()
        .filter(|row| row["flagged"] == true)
        .map(|row| row["gpu"].as_str().expect("gpu"))
        .collect();
    assert_eq!(flagged, ["node-b/3"]);
    let hot = &report["figures"]["gpus"][0];
    assert_eq!(hot["temperature_c_max"].as_u64(), Some(86));
    assert!(hot["throttled_h"].as_f64().unwrap_or(0.0) > 0.0 && hot["hot_h"].as_f64().unwrap_or(0.0) > 0.0, "{hot}");
    let capacity = &report["figures"]["capacity"];
    let offered = capacity["total_gpu_h"].as_f64().expect("capacity");
    let sampled = capacity["sampled_h"].as_f64().expect("sampled");
    assert!(offered > 0.0 && offered <= 16.0 * sampled + 1e-9, "16 GPUs at most: {capacity}");
    let utilization = report["figures"]["model_telemetry"][0]["utilization_pct"].as_f64().expect("utilisation");
    assert!((utilization - 60.0).abs() < 1e-6, "node-b's GPUs report 60 %, node-a's none: {utilization}");
}

fn check_in_chromium(page: &Path) {
    let charts = ["chart-usage", "chart-waits", "chart-models", "chart-capacity", "chart-hot", "chart-demand"];
    allot_tests::chromium::check_report(page, &charts, "capacity.png", 4000);
}

#[test]
fn the_capacity_report_matches_the_allocations_survives_a_restart_and_renders() {
    let dir = tempfile::tempdir().expect("temp dir");
    let fixtures = hot_fixture(dir.path());
    let store = StoreKind::Embedded(dir.path().join("state"));
    let broker = start_broker_with(&store, dir.path(), "broker", "5s", "127.0.0.1:0", &["--reclaim-grace", "2s"]);
    let _node_a = start_node(&broker, "dgx-h100", "node-a", dir.path());
    let _node_b = start_enforcing_node(
        &broker,
        "dgx-hot",
        "node-b",
        dir.path(),
        &["--no-enforce"],
        &[("ALLOT_FIXTURES_DIR", fixtures.as_path())],
    );
    wait_until("both nodes are ready", LONG, || {
        node_statuses(&broker).iter().filter(|(_, status)| status == "ready").count() == 2
    });
    let path = dir.path().join("teams.toml");
    std::fs::write(&path, TEAMS).expect("teams file");
    let applied = allotctl(&broker, &["apply", "-f", path.to_str().expect("path")]);
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));

    // A takes all 16 GPUs, 8 of them borrowed; B asks for its 8 and waits while
    // A's borrowed ones are reclaimed; C asks for one and waits for a release.
    let a_jobs: Vec<Value> = (0..16).map(|_| one_gpu(&broker, "a")).collect();
    assert!(a_jobs.iter().all(|job| job["state"] == "bound"), "{a_jobs:?}");
    let b_jobs: Vec<Value> = (0..8).map(|_| one_gpu(&broker, "b")).collect();
    assert!(b_jobs.iter().all(|job| job["state"] == "pending"), "{b_jobs:?}");
    wait_until("B's eight are granted", LONG, || count(&list(&broker, "b"), "bound") == 8);
    let c_job = one_gpu(&broker, "c");
    assert_eq!(c_job["state"], "pending");
    let own = a_jobs.iter().find(|job| job["preemptible"] != true).expect("one of A's own");
    allotctl_json(&broker, &["alloc", "release", own["id"].as_str().expect("id")]);
    wait_until("C's GPU is granted", LONG, || count(&list(&broker, "c"), "bound") == 1);

    let (a, b, c) = (list(&broker, "a"), list(&broker, "b"), list(&broker, "c"));
    let released_at = a
        .iter()
        .find(|job| job["state"] == "released")
        .map(|job| number(&job["updated_at_ms"], "updated_at_ms"))
        .expect("the release");
    // Let telemetry samples accumulate for a few seconds.
    std::thread::sleep(Duration::from_secs(3));

    let out = dir.path().join("report");
    let first = report(&broker, &out, &["--since", "1h"]);
    check_numbers(&first, &a, &b, &c, released_at);
    for file in [
        "report.html",
        "history.json",
        "teams.csv",
        "models.csv",
        "capacity.csv",
        "gpus.csv",
        "timeline.csv",
        "demand.csv",
    ] {
        assert!(out.join(file).is_file(), "{file} is missing");
    }
    let teams_csv = std::fs::read_to_string(out.join("teams.csv")).expect("teams.csv");
    assert!(teams_csv.lines().any(|row| row.starts_with("a,")), "{teams_csv}");

    // One team only.
    let only_b = report(&broker, &dir.path().join("report-b"), &["--since", "1h", "--team", "b"]);
    let names: Vec<&str> =
        only_b["figures"]["teams"].as_array().expect("teams").iter().filter_map(|row| row["team"].as_str()).collect();
    assert_eq!(names, ["b"]);

    // Bad input: a clear error, non-zero, nothing written.
    for (args, expected) in [
        (vec!["--since", "3x"], "--since"),
        (vec!["--since", "0d"], "--since"),
        (vec!["--team", "nosuch"], "NOT_FOUND"),
        (vec!["--team", "Bad Name"], "--team"),
    ] {
        let bad = dir.path().join("bad");
        let mut all = vec!["report", "capacity", "--out", bad.to_str().expect("path")];
        all.extend(args.iter().copied());
        let output = allotctl(&broker, &all);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!bad.exists(), "{args:?} wrote {}", bad.display());
    }
    let leftovers: Vec<String> = std::fs::read_dir(dir.path())
        .expect("dir")
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "temporary folders left: {leftovers:?}");

    // The history is a demand for sizing.
    let sized = dir.path().join("sized");
    let output = Command::new(allot_tests::binary("allotctl"))
        .args(["size", "--quiet", "--no-mixes", "--target", "served=90", "--max-servers", "8", "--demand"])
        .arg(out.join("history.json"))
        .arg("--out")
        .arg(&sized)
        .output()
        .expect("allotctl size runs");
    assert!(output.status.success(), "size on history.json: {}", String::from_utf8_lossy(&output.stderr));
    let sizing: Value =
        serde_json::from_str(&std::fs::read_to_string(sized.join("report.json")).expect("sizing report"))
            .expect("JSON");
    assert_eq!(sizing["demand"]["format"], "history", "{}", sizing["demand"]);

    // The history survives a restart: stopped (it stores what is new), started again on the same store.
    let address = broker.grpc.clone();
    let mut broker = broker;
    broker.process.terminate(Duration::from_secs(10)).expect("the broker stops on SIGTERM");
    let broker =
        allot_tests::start_broker_with(&store, dir.path(), "broker-again", "5s", &address, &["--reclaim-grace", "2s"]);
    wait_until("both nodes are back", LONG, || {
        node_statuses(&broker).iter().filter(|(_, status)| status == "ready").count() == 2
    });
    let again = report(&broker, &dir.path().join("report-again"), &["--since", "1h"]);
    let (a, b, c) = (list(&broker, "a"), list(&broker, "b"), list(&broker, "c"));
    check_numbers(&again, &a, &b, &c, released_at);
    let before = team(&first, "a")["allocated_gpu_h"].as_f64().expect("a");
    let after = team(&again, "a")["allocated_gpu_h"].as_f64().expect("a");
    assert!(after > before, "A's GPU-hours kept growing across the restart: {before} then {after}");

    check_in_chromium(&dir.path().join("report-again/report.html"));
}
