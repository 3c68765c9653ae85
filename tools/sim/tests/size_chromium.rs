//! The sizing report opens in headless Chromium (Debian's `chromium`, installed
//! by scripts/setup.sh from scripts/system-packages.txt): no console errors,
//! every chart present in the DOM, and a screenshot kept under
//! target/test-artifacts/size.png.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;

use allot_placement::packing::PackingPolicy;
use allot_sim::size::search::{CostModel, Progress, Targets};
use allot_sim::size::{SizeOptions, run};

struct Quiet;
impl Progress for Quiet {
    fn update(&self, _done: usize, _expected: usize) {}
}

fn chromium(profile: &Path, extra: &[&str]) -> std::process::Output {
    let binary = "/usr/bin/chromium";
    assert!(
        Path::new(binary).exists(),
        "{binary} is missing: run `bash scripts/setup.sh` (it installs chromium from scripts/system-packages.txt)"
    );
    let mut command = Command::new(binary);
    command.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--enable-logging=stderr",
        "--v=0",
    ]);
    command.arg(format!("--user-data-dir={}", profile.display()));
    command.args(extra);
    command.output().expect("chromium runs")
}

#[test]
fn the_sizing_report_opens_in_headless_chromium_with_every_chart() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let artifacts: PathBuf = root.join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).expect("artifacts folder");
    let out = artifacts.join("size-report");
    let mut targets = Targets::default();
    targets.apply("wait.p95=10m").expect("target");
    let options = SizeOptions {
        demand: Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/size/three-servers.csv"),
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
    let page = out.join("report.html").canonicalize().expect("report.html");
    let url = format!("file://{}", page.display());

    let profile = tempfile::tempdir().expect("profile");
    let dom = chromium(profile.path(), &["--dump-dom", &url]);
    let stderr = String::from_utf8_lossy(&dom.stderr);
    let html = String::from_utf8_lossy(&dom.stdout);
    assert!(dom.status.success(), "chromium failed: {stderr}");
    for id in ["chart-served", "chart-wait", "chart-usage"] {
        let at = html.find(&format!("id=\"{id}\"")).unwrap_or_else(|| panic!("{id} is not in the DOM"));
        assert!(
            html[at..].trim_start_matches(|c| c != '>').get(1..).is_some_and(|rest| rest.starts_with("<svg")),
            "{id} holds no <svg>"
        );
    }
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains("Uncaught") || (line.contains("CONSOLE") && line.contains("rror")))
        .collect();
    assert!(errors.is_empty(), "console errors: {errors:?}");

    let screenshot = artifacts.join("size.png");
    let _ = std::fs::remove_file(&screenshot);
    let profile = tempfile::tempdir().expect("profile");
    let shot = chromium(
        profile.path(),
        &[&format!("--screenshot={}", screenshot.display()), "--window-size=1280,3200", "--hide-scrollbars", &url],
    );
    assert!(shot.status.success(), "chromium screenshot failed: {}", String::from_utf8_lossy(&shot.stderr));
    let png = std::fs::read(&screenshot).expect("the screenshot was written");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "a real PNG, {} bytes", png.len());
}
