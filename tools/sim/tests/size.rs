//! The sizing tool end to end on small synthetic inputs whose right answers are
//! known: the search, the sizing rules, bad input, and the report files.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use allot_placement::packing::PackingPolicy;
use allot_sim::size::catalog::{DEFAULT_CATALOG, parse_catalog};
use allot_sim::size::search::{CostModel, Progress, Targets};
use allot_sim::size::{SizeError, SizeOptions, rules, run};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/size").join(name)
}

struct Quiet;
impl Progress for Quiet {
    fn update(&self, _done: usize, _expected: usize) {}
}

fn options(demand: PathBuf, catalog: Option<PathBuf>, targets: &[&str]) -> SizeOptions {
    let mut parsed = Targets::default();
    for target in targets {
        parsed.apply(target).expect("valid target");
    }
    SizeOptions {
        demand,
        catalog,
        growth: 1.0,
        targets: parsed,
        seeds: vec![42, 43],
        policy: PackingPolicy::Allot,
        cost: CostModel { years: 3.0, usd_per_kwh: 0.12 },
        max_servers: 64,
        threads: 2,
        mixes: true,
        out: None,
        command: "test".into(),
    }
}

fn error_of(options: &SizeOptions) -> String {
    match run(options, &Quiet, &AtomicBool::new(false)) {
        Ok(_) => panic!("expected an error"),
        Err(error) => error.to_string(),
    }
}

#[test]
fn finds_the_three_eight_gpu_servers_the_demand_needs() {
    let options = options(data("three-servers.csv"), Some(data("catalog.toml")), &["wait.p95=0s", "served=100"]);
    let recommendation = run(&options, &Quiet, &AtomicBool::new(false)).expect("a fleet meets the targets");
    let chosen = &recommendation.candidates[recommendation.chosen];
    assert_eq!(
        (chosen.server.as_str(), chosen.count, chosen.gpus),
        ("eight", 3, 24),
        "{:#?}",
        recommendation.candidates
    );
    // Two servers were tried and failed on the wait: one 8-GPU task waits an hour.
    let two = recommendation.tried.iter().find(|tried| tried.server == "eight" && tried.count == 2).expect("2 tried");
    assert!(!two.meets && two.misses.iter().any(|miss| miss.contains("wait")), "{:?}", two.misses);
    // The 4-GPU server cannot take the 8-GPU tasks at any count, and says so.
    let four = recommendation.candidates.iter().find(|candidate| candidate.server == "four").expect("four");
    assert!(
        !four.meets && four.hopeless && four.why_not.contains("3 tasks fit none of its servers"),
        "{}",
        four.why_not
    );
    // It stopped doubling once more servers could not help.
    assert!(recommendation.tried.iter().filter(|tried| tried.server == "four").count() <= 2);
    assert_eq!(recommendation.provenance.seeds, vec![42, 43]);
    assert!(recommendation.explanation[0].contains("3 x eight"), "{:?}", recommendation.explanation);
}

#[test]
fn a_looser_wait_target_lets_two_servers_do_with_queueing() {
    // With departures, tasks that do not fit wait instead of being dropped: two
    // servers serve everything, the third 8-GPU task an hour late. p50 is 0 s.
    let options = options(data("three-servers.csv"), Some(data("catalog.toml")), &["wait.p50=0s", "served=100"]);
    let recommendation = run(&options, &Quiet, &AtomicBool::new(false)).expect("a fleet");
    let chosen = &recommendation.candidates[recommendation.chosen];
    assert_eq!((chosen.server.as_str(), chosen.count), ("eight", 2));
    assert!((chosen.measured.served_pct - 100.0).abs() < 1e-9);
}

#[test]
fn unmeetable_targets_say_which_failed_and_by_how_much() {
    let mut options = options(data("three-servers.csv"), Some(data("catalog.toml")), &["headroom=99"]);
    options.max_servers = 4;
    let error = error_of(&options);
    assert!(error.contains("no fleet in the search space meets the targets") && error.contains("headroom"), "{error}");
    assert!(error.contains("points short"), "{error}");
}

#[test]
fn the_rules_flag_one_core_per_gpu_and_too_little_host_memory() {
    let text = std::fs::read_to_string(data("bad-rules.toml")).expect("read");
    let catalog = parse_catalog(&data("bad-rules.toml"), &text).expect("valid catalog");
    let broken: Vec<Vec<&str>> =
        catalog.servers.iter().map(|server| rules::check(server).iter().map(|v| v.rule).collect()).collect();
    assert_eq!(broken, vec![vec!["cpu-per-gpu"], vec!["host-memory"]]);
    let default = parse_catalog(Path::new("default"), DEFAULT_CATALOG).expect("the default catalog is valid");
    assert_eq!(default.servers.len(), 5);
    for server in &default.servers {
        let ids: Vec<&str> = rules::check(server).iter().map(|violation| violation.rule).collect();
        assert!(!ids.contains(&"cpu-per-gpu") && !ids.contains(&"host-memory"), "{}: {ids:?}", server.name);
        assert!(server.sources.iter().any(|source| source.starts_with("price")), "{} has no price source", server.name);
    }
}

fn catalog_error(text: &str) -> String {
    match parse_catalog(Path::new("cat.toml"), text) {
        Ok(_) => panic!("expected an error for {text}"),
        Err(error) => error.to_string(),
    }
}

#[test]
fn bad_catalog_entries_name_the_file_line_entry_and_field() {
    let good = std::fs::read_to_string(data("catalog.toml")).expect("read");
    let second = good.find("[[server]]\nname = \"four\"").expect("second entry");
    let line_of = |needle: &str| {
        good[..second].lines().count()
            + good[second..].lines().position(|line| line.starts_with(needle)).expect(needle)
            + 1
    };
    let cases = [
        (
            good.replace("price_usd = 200000", "price_usd = -5"),
            format!("cat.toml:{}: server \"four\": field price_usd: -5 is not allowed", line_of("price_usd")),
        ),
        (
            good.replace("gpu_model = \"L40S-48GB\"", "gpu_model = \"L50\""),
            format!("cat.toml:{}: server \"four\": field gpu_model: unknown GPU model \"L50\"", line_of("gpu_model")),
        ),
        (
            good.replace("cpu_cores = 64\n", ""),
            format!("cat.toml:{}: server \"four\": field cpu_cores: missing", line_of("[[server]]")),
        ),
        (
            good.replace("nvme_tb = 8", "nvme_tb = 8\ncolour = \"red\""),
            format!("cat.toml:{}: unknown field `colour`", line_of("nvme_tb") + 1),
        ),
    ];
    for (text, expected) in cases {
        let error = catalog_error(&text);
        assert!(error.starts_with(&expected), "{error:?} should start with {expected:?}");
    }
    assert!(catalog_error("").contains("missing field `server`"), "{}", catalog_error(""));
}

#[test]
fn bad_demand_and_bad_targets_say_where_and_how_to_fix_them() {
    let directory = tempfile::tempdir().expect("temp dir");
    let demand = directory.path().join("demand.csv");
    let cases = [
        (
            "name,arrival_s,departure_s,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec\na,0,10,1000,10,1,1000,\nb,x,10,1000,10,1,1000,\n",
            "demand.csv:3: column arrival_s",
        ),
        (
            "name,arrival_s,departure_s,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec\na,0,10,1000,10,1,1000,V100\n",
            "demand.csv:2: column gpu_spec: \"V100\" matches no GPU model",
        ),
        (
            "name,cpu_milli,memory_mib,num_gpu,gpu_milli\na,1000,10,1,1000\n",
            "demand.csv:1: missing column \"creation_time\"",
        ),
        (
            "name,cpu_milli,memory_mib,num_gpu,gpu_milli,creation_time,deletion_time,scheduled_time\na,1000,10,1,1000,100,50,100\n",
            "demand.csv:2: column deletion_time: 50 is before",
        ),
        ("name,arrival_s,cpu_milli,memory_mib,num_gpu,gpu_milli\na,0,1000,10,0,0\n", "demand.csv:2: no GPU tasks"),
    ];
    for (text, expected) in cases {
        std::fs::write(&demand, text).expect("write");
        let error = error_of(&options(demand.clone(), Some(data("catalog.toml")), &[]));
        assert!(error.contains(expected), "{error:?} should contain {expected:?}");
    }
    let mut huge = options(data("three-servers.csv"), Some(data("catalog.toml")), &[]);
    huge.max_servers = u32::MAX;
    assert!(error_of(&huge).contains("--max-servers 4294967295: expected 1 to 100000"));
    for bad in ["wait.p95=soon", "served=120", "colour=red", "wait=5m"] {
        let error = Targets::default().apply(bad).expect_err(bad).to_string();
        assert!(error.contains("--target") && error.contains("wait.p95=30m"), "{error}");
    }
}

#[test]
fn the_report_is_written_whole_and_says_what_produced_it() {
    let directory = tempfile::tempdir().expect("temp dir");
    let out = directory.path().join("report");
    std::fs::create_dir_all(&out).expect("mkdir");
    std::fs::write(out.join("stale.txt"), "from an earlier run").expect("write");
    let mut options = options(data("three-servers.csv"), Some(data("catalog.toml")), &["wait.p95=10m"]);
    options.out = Some(out.clone());
    run(&options, &Quiet, &AtomicBool::new(false)).expect("a fleet");
    let mut names: Vec<String> = std::fs::read_dir(directory.path())
        .expect("list")
        .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, vec!["report"], "no temporary folder is left beside the output");
    let mut files: Vec<String> = std::fs::read_dir(&out)
        .expect("list")
        .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, vec!["report.html", "report.json"]);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).expect("json")).expect("valid");
    assert_eq!(json["provenance"]["seeds"], serde_json::json!([42, 43]));
    assert_eq!(json["provenance"]["demand"]["fnv1a64"].as_str().map(str::len), Some(16));
    let html = std::fs::read_to_string(out.join("report.html")).expect("html");
    for id in ["chart-served", "chart-wait", "chart-usage"] {
        assert!(html.contains(&format!("<figure id=\"{id}\" class=\"chart\"><svg")), "{id} missing");
    }
    assert!(!html.contains("could not be drawn"), "a chart failed");
    // Self-contained: no scripts, stylesheets or anything fetched; the only URL
    // is the SVG namespace, which names and fetches nothing.
    let without_namespace = html.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
    for needle in ["http://", "https://", "<script", "<link", "src="] {
        assert!(!without_namespace.contains(needle), "the report holds {needle:?}");
    }
    // A failed run leaves the earlier report alone.
    options.targets.headroom_pct = 99.0;
    options.max_servers = 2;
    assert!(run(&options, &Quiet, &AtomicBool::new(false)).is_err());
    assert!(out.join("report.html").exists());
    // A cancelled run writes nothing.
    let cancelled = run(&options, &Quiet, &AtomicBool::new(true));
    assert!(matches!(cancelled, Err(SizeError::Cancelled)), "{cancelled:?}");
    assert!(out.join("report.html").exists());
}

#[test]
fn one_big_server_plus_cheap_small_ones_beats_big_servers_alone() {
    // One 8-GPU task and 16 one-GPU tasks at once: three 8-GPU servers, or one
    // of them for the big task and four cheap 4-GPU servers for the rest.
    let options = options(data("mix.csv"), Some(data("mix-catalog.toml")), &["wait.p95=0s", "served=100"]);
    let recommendation = run(&options, &Quiet, &AtomicBool::new(false)).expect("a fleet");
    let chosen = &recommendation.candidates[recommendation.chosen];
    assert_eq!(chosen.fleet, "1 x eight + 4 x cheap-four", "{:#?}", recommendation.candidates);
    let alone = recommendation.candidates.iter().find(|candidate| candidate.fleet == "3 x eight").expect("eight alone");
    assert!(alone.meets && alone.why_not.contains("more"), "{}", alone.why_not);
    let mut no_mixes = options.clone();
    no_mixes.mixes = false;
    let recommendation = run(&no_mixes, &Quiet, &AtomicBool::new(false)).expect("a fleet");
    assert_eq!(recommendation.candidates[recommendation.chosen].fleet, "3 x eight");
}

#[test]
fn an_alibaba_list_replays_with_its_own_times_on_the_default_catalog() {
    // The simulator's synthetic list in the trace's format, with creation,
    // scheduled and deletion times.
    // Its first 120 tasks keep the debug-build search short.
    let full =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tasks.csv")).expect("read");
    let directory = tempfile::tempdir().expect("temp dir");
    let demand = directory.path().join("alibaba.csv");
    std::fs::write(&demand, full.lines().take(121).map(|line| format!("{line}\n")).collect::<String>()).expect("write");
    let mut options = options(demand, None, &["wait.p95=1h"]);
    options.seeds = vec![42];
    options.mixes = false;
    let recommendation = run(&options, &Quiet, &AtomicBool::new(false)).expect("a fleet");
    assert_eq!(recommendation.demand.format, "alibaba");
    assert!(recommendation.demand.notes.iter().any(|note| note.contains("gpu_spec constraints")));
    let chosen = &recommendation.candidates[recommendation.chosen];
    assert!(chosen.meets && chosen.measured.served_pct >= 99.0, "{chosen:#?}");
    assert!(chosen.measured.wait_s <= 3600.0);
    // Every candidate fleet was checked against the rules, and the explanation
    // says why a smaller fleet would not do.
    assert!(
        recommendation.explanation.iter().any(|line| line.contains("would not do")),
        "{:?}",
        recommendation.explanation
    );
}
