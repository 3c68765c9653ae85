//! `allotctl sim` as a person runs it: the real binary on a small slice of the
//! Alibaba trace writes its four files; bad input exits non-zero with the file
//! and line.

use std::path::Path;
use std::process::Command;

fn allotctl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_allotctl"))
}

/// A fresh directory under cargo's scratch space for integration tests.
fn scratch(name: &str) -> std::path::PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("allotctl-sim-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn head(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    text.lines().take(lines).map(|line| format!("{line}\n")).collect()
}

#[test]
fn sim_writes_curves_summary_and_plot() {
    // A synthetic list in the trace's format (tools/sim/tests/data/generate.py).
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sim/tests/data");
    let dir = scratch("files");
    std::fs::write(dir.join("nodes.csv"), head(&data.join("nodes.csv"), 31)).expect("write");
    std::fs::write(dir.join("tasks.csv"), head(&data.join("tasks.csv"), 151)).expect("write");
    let out = dir.join("out");
    let output = allotctl()
        .args(["sim", "--policy", "all", "--seeds", "42..43", "--nodes"])
        .arg(dir.join("nodes.csv"))
        .arg("--tasks")
        .arg(dir.join("tasks.csv"))
        .arg("--out")
        .arg(&out)
        .output()
        .expect("allotctl runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    for policy in ["random", "dotproduct", "gpuclustering", "gpupacking", "bestfit", "fgd", "allot"] {
        assert!(stdout.contains(policy), "{policy} missing from\n{stdout}");
    }
    for file in ["curve.json", "curve.csv", "summary.json", "plot.svg"] {
        assert!(out.join(file).is_file(), "{file} not written");
    }
}

#[test]
fn sim_rejects_bad_input_with_file_and_line() {
    let dir = scratch("bad");
    let nodes = dir.join("nodes.csv");
    std::fs::write(&nodes, "sn,cpu_milli,memory_mib,gpu,model\nn0,64000,262144,2,P100\n").expect("write");
    let tasks = dir.join("tasks.csv");
    std::fs::write(&tasks, "name,cpu_milli,memory_mib,num_gpu,gpu_milli\np0,1000,10,1,500\np1,1000,10,1,lots\n")
        .expect("write");
    let output = allotctl().args(["sim", "--nodes"]).arg(&nodes).arg("--tasks").arg(&tasks).output().expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("tasks.csv:3: column gpu_milli: \"lots\""), "{stderr}");
    let output = allotctl()
        .args(["sim", "--seeds", "9..1", "--nodes"])
        .arg(&nodes)
        .arg("--tasks")
        .arg(&tasks)
        .output()
        .expect("runs");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--seeds"));
}
