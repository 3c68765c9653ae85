//! `allotctl size` as a person runs it: the real binary on a small synthetic
//! demand recommends the known fleet, shows its progress on stderr and writes the
//! report; bad input and unmeetable targets exit non-zero, saying where and why,
//! with nothing written to --out.

use std::path::{Path, PathBuf};
use std::process::Command;

fn allotctl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_allotctl"))
}

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../sim/tests/data/size").join(name)
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("allotctl-size-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

#[test]
fn size_recommends_the_known_fleet_and_writes_the_report() {
    let dir = scratch("good");
    let out = dir.join("out");
    let output = allotctl()
        .args(["size", "--target", "wait.p95=0s", "--target", "served=100", "--seeds", "42..43", "--demand"])
        .arg(data("three-servers.csv"))
        .arg("--catalog")
        .arg(data("catalog.toml"))
        .arg("--out")
        .arg(&out)
        .output()
        .expect("allotctl runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.starts_with("Buy 3 x eight (24 GPUs)"), "{stdout}");
    assert!(stdout.contains("seeds [42, 43]") && stdout.contains("no count meets the targets"), "{stdout}");
    assert!(stderr.contains("sizing [") && stderr.contains("about 0 s left"), "no progress bar on stderr: {stderr}");
    assert!(out.join("report.html").is_file() && out.join("report.json").is_file());
    let json = allotctl()
        .args(["size", "-o", "json", "--quiet", "--demand"])
        .arg(data("three-servers.csv"))
        .arg("--catalog")
        .arg(data("catalog.toml"))
        .output()
        .expect("runs");
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON on stdout");
    assert_eq!(value["provenance"]["seeds"], serde_json::json!([42]));
    assert!(json.stderr.is_empty(), "--quiet: {}", String::from_utf8_lossy(&json.stderr));
}

#[test]
fn size_rejects_bad_input_and_unmeetable_targets_writing_nothing() {
    let dir = scratch("bad");
    let catalog = dir.join("catalog.toml");
    let good = std::fs::read_to_string(data("catalog.toml")).expect("read");
    std::fs::write(&catalog, good.replace("price_usd = 200000", "price_usd = -1")).expect("write");
    let out = dir.join("out");
    let run = |catalog: &Path, extra: &[&str]| {
        allotctl()
            .args(["size", "--quiet", "--demand"])
            .arg(data("three-servers.csv"))
            .arg("--catalog")
            .arg(catalog)
            .arg("--out")
            .arg(&out)
            .args(extra)
            .output()
            .expect("runs")
    };
    let output = run(&catalog, &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("catalog.toml:") && stderr.contains("server \"four\": field price_usd: -1"), "{stderr}");
    let output = run(&data("catalog.toml"), &["--target", "headroom=99", "--max-servers", "4"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("no fleet in the search space meets the targets") && stderr.contains("headroom"),
        "{stderr}"
    );
    let output = run(&data("catalog.toml"), &["--target", "wait.p95=soon"]);
    assert!(!output.status.success() && String::from_utf8_lossy(&output.stderr).contains("--target"));
    let left: Vec<_> = std::fs::read_dir(&dir).expect("list").map(|entry| entry.expect("entry").file_name()).collect();
    assert_eq!(left, vec![std::ffi::OsString::from("catalog.toml")], "nothing but the catalog in {}", dir.display());
}

#[test]
fn ctrl_c_stops_the_search_cleanly_leaving_nothing_in_out() {
    use std::io::{BufRead, BufReader, Read};
    let dir = scratch("ctrlc");
    // A demand big enough that the search (in a debug build) is still running
    // when the interrupt comes: 60,000 short one-GPU tasks.
    let mut demand = String::from("name,arrival_s,departure_s,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec\n");
    for index in 0..60_000u32 {
        let arrival = index * 7;
        demand.push_str(&format!("t{index},{arrival},{},4000,16384,1,1000,\n", arrival + 600 + index % 1800));
    }
    std::fs::write(dir.join("demand.csv"), demand).expect("write");
    let out = dir.join("out");
    let mut child = allotctl()
        .args(["size", "--seeds", "1..4", "--target", "wait.p99=1m", "--demand"])
        .arg(dir.join("demand.csv"))
        .arg("--out")
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("allotctl starts");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    // The first progress update comes before the first replay ends.
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("sizing [") {
        let mut byte = [0u8; 1];
        if stderr.read(&mut byte).expect("read stderr") == 0 {
            break;
        }
        seen.push(byte[0]);
    }
    let status = Command::new("kill").args(["-INT", &child.id().to_string()]).status().expect("kill runs");
    assert!(status.success());
    let mut rest = String::new();
    for line in stderr.lines() {
        rest.push_str(&line.unwrap_or_default());
        rest.push('\n');
    }
    let exit = child.wait().expect("allotctl exits");
    assert!(!exit.success(), "the search was interrupted: {rest}");
    assert_eq!(exit.code(), Some(1), "exited by itself, not killed by the signal: {rest}");
    assert!(rest.contains("cancelled; nothing was written"), "{rest}");
    let left: Vec<_> = std::fs::read_dir(&dir).expect("list").map(|entry| entry.expect("entry").file_name()).collect();
    assert_eq!(left, vec![std::ffi::OsString::from("demand.csv")], "no output and no temporary folder");
}
