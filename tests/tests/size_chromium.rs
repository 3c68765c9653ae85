//! The sizing report opens in headless Chromium (`allot_tests::chromium`): no
//! console errors, every chart present in the DOM, and a screenshot kept under
//! target/test-artifacts/size.png.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use allot_placement::packing::PackingPolicy;
use allot_sim::size::search::{CostModel, Progress, Targets};
use allot_sim::size::{SizeOptions, run};

struct Quiet;
impl Progress for Quiet {
    fn update(&self, _done: usize, _expected: usize) {}
}

#[test]
fn the_sizing_report_opens_in_headless_chromium_with_every_chart() {
    let artifacts: PathBuf = allot_tests::repo().join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).expect("artifacts folder");
    let out = artifacts.join("size-report");
    let mut targets = Targets::default();
    targets.apply("wait.p95=10m").expect("target");
    let options = SizeOptions {
        demand: allot_tests::repo().join("tools/sim/tests/data/size/three-servers.csv"),
        catalog: None,
        growth: 1.5,
        targets,
        seeds: vec![42],
        policy: PackingPolicy::Allot,
        cost: CostModel { years: 3.0, usd_per_kwh: 0.12 },
        max_servers: 64,
        threads: 2,
        mixes: true,
        out: Some(out.clone()),
        command: "test".into(),
    };
    run(&options, &Quiet, &AtomicBool::new(false)).expect("a fleet from the default catalog");
    allot_tests::chromium::check_report(
        &out.join("report.html"),
        &["chart-served", "chart-wait", "chart-usage"],
        "size.png",
        3200,
    );
}
