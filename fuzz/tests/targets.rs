//! Every fuzz target for a bounded number of inputs, so `cargo test --workspace`
//! fuzzes in CI: the corpus unchanged (inputs that crashed before are regression
//! tests), then seeded mutations. Each target runs in its own `allot-fuzz`
//! process, so that an input that kills a process (a segmentation fault in hwloc,
//! a stack overflow) fails its test, naming the saved input, rather than ending
//! the test binary. A crash fails the test and names the saved input.

use std::process::{Command, Stdio};

use allot_fuzz::engine;
use allot_fuzz::targets::{TARGETS, find};

/// Mutated inputs per target, sized so that the tests stay under a minute in a
/// debug build on two cores.
const ITERATIONS: &[(&str, u64)] = &[
    ("wire-register", 4_000),
    ("wire-allocation", 30_000),
    ("teams", 10_000),
    ("sim-csv", 15_000),
    ("hwloc-xml", 2_000),
    ("extender-json", 20_000),
];

fn check(name: &str) {
    let target = find(name).unwrap_or_else(|| panic!("no target {name}"));
    let iterations = ITERATIONS.iter().find(|(target, _)| *target == name).map_or(0, |(_, count)| *count);
    let artifacts = engine::artifacts_dir();
    let child = Command::new(env!("CARGO_BIN_EXE_allot-fuzz"))
        .args([name, "--iterations", &iterations.to_string(), "--seed", "1"])
        .arg("--artifacts")
        .arg(&artifacts)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot run allot-fuzz: {error}"));
    let pid = child.id();
    let output = child.wait_with_output().unwrap_or_else(|error| panic!("allot-fuzz {name}: {error}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("{stdout}");
    if !output.status.success() {
        let died = match engine::keep_in_progress(&artifacts, name, pid) {
            Some(path) => format!("\nthe input it was running when it died is saved to {}", path.display()),
            None => String::new(),
        };
        panic!("allot-fuzz {name} failed ({}):\n{stdout}\n{stderr}{died}", output.status);
    }
    // The corpus must hold inputs the production code accepts, or the mutations
    // start from nothing the code gets far with.
    let corpus = engine::load_corpus(target).unwrap_or_else(|error| panic!("{error}"));
    let accepted = corpus.iter().filter(|(_, input)| (target.run)(input).is_ok()).count();
    assert!(accepted > 0, "no input of the corpus of {name} is accepted");
}

#[test]
fn wire_register() {
    check("wire-register");
}

#[test]
fn wire_allocation() {
    check("wire-allocation");
}

#[test]
fn teams() {
    check("teams");
}

#[test]
fn sim_csv() {
    check("sim-csv");
}

#[test]
fn hwloc_xml() {
    check("hwloc-xml");
}

#[test]
fn extender_json() {
    check("extender-json");
}

#[test]
fn every_target_has_a_test_and_a_budget() {
    let names: Vec<&str> = TARGETS.iter().map(|target| target.name).collect();
    let budgeted: Vec<&str> = ITERATIONS.iter().map(|(name, _)| *name).collect();
    assert_eq!(names, budgeted);
}
