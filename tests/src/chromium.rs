//! Reports in headless Chromium (Debian's `chromium`, installed by
//! scripts/setup.sh from scripts/system-packages.txt): the page loads with no
//! console errors, every chart is an SVG in the DOM, and a screenshot is kept
//! under target/test-artifacts/ for people to look at.

use std::path::Path;
use std::process::{Command, Output};

const CHROMIUM: &str = "/usr/bin/chromium";

fn chromium(profile: &Path, extra: &[&str]) -> Output {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: run `bash scripts/setup.sh` (it installs chromium from scripts/system-packages.txt)"
    );
    Command::new(CHROMIUM)
        .args([
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
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .output()
        .expect("chromium runs")
}

/// Opens `page` and checks that each of `charts` (element ids) holds an `<svg>`
/// and that no script or console error was logged; then writes a screenshot
/// `target/test-artifacts/<screenshot>`, `height` pixels tall, and checks it is a
/// real PNG.
///
/// # Panics
/// On any of those failures, saying which.
pub fn check_report(page: &Path, charts: &[&str], screenshot: &str, height: u32) {
    let url = format!("file://{}", page.canonicalize().expect("the report page exists").display());
    let profile = tempfile::tempdir().expect("profile");
    let dom = chromium(profile.path(), &["--dump-dom", &url]);
    let stderr = String::from_utf8_lossy(&dom.stderr);
    let html = String::from_utf8_lossy(&dom.stdout);
    assert!(dom.status.success(), "chromium failed: {stderr}");
    for id in charts {
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

    let artifacts = crate::repo().join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).expect("artifacts folder");
    let shot_path = artifacts.join(screenshot);
    let _ = std::fs::remove_file(&shot_path);
    let profile = tempfile::tempdir().expect("profile");
    let size = format!("--window-size=1280,{height}");
    let shot =
        chromium(profile.path(), &[&format!("--screenshot={}", shot_path.display()), &size, "--hide-scrollbars", &url]);
    assert!(shot.status.success(), "chromium screenshot failed: {}", String::from_utf8_lossy(&shot.stderr));
    let png = std::fs::read(&shot_path).expect("the screenshot was written");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "a real PNG, {} bytes", png.len());
}
