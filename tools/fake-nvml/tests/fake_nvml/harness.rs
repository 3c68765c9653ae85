//! Runs each scenario in a child process of this test binary, against the built cdylib.
//!
//! The fake library keeps process-global state (its init count, MIG state) and reads its
//! configuration from environment variables at `nvmlInit_v2`, and libtest runs tests on
//! parallel threads of one process. So every scenario body runs in a fresh child process
//! (this same test binary, asked to run just that test) with its own environment. That also
//! lets a test read what the library printed on stderr, and lets two processes share a state
//! file, as the node daemon and `nvidia-smi` would on a real machine.

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use nvml_wrapper::Nvml;
use tempfile::TempDir;

use crate::TestResult;

/// Set in a child: which `test#phase` it must run.
const CHILD_VAR: &str = "ALLOT_FAKE_NVML_TEST_CHILD";
/// Set in a child: the scenario directory the parent made.
const DIR_VAR: &str = "ALLOT_FAKE_NVML_TEST_DIR";

pub const MACHINE_VAR: &str = "ALLOT_FAKE_NVML_MACHINE";
pub const STATE_VAR: &str = "ALLOT_FAKE_NVML_STATE";
pub const EVENTS_VAR: &str = "ALLOT_FAKE_NVML_EVENTS";

/// The fake library that cargo built for this package.
///
/// An integration test depends on its package's library target, so cargo compiles that
/// target before the test, with all of its crate types (here cdylib and rlib) in one rustc
/// run, and rebuilds it whenever its sources change. The cdylib lands in
/// `target/<profile>/deps/`, the directory this test binary runs from. (`cargo build` also
/// copies it up to `target/<profile>/`, but `cargo test` does not, so `deps/` is looked at
/// first; checked with cargo 1.95 by deleting both copies and running `cargo test`.) So
/// `cargo test -p allot-fake-nvml` always tests the library built from the same sources,
/// with no separate build step.
pub fn cdylib_path() -> PathBuf {
    const NAME: &str = "libnvidia_ml_fake.so";
    let exe = std::env::current_exe().expect("the test binary knows its path");
    let deps = exe.parent().expect("the test binary lives in a directory");
    let candidates = [Some(deps), deps.parent()];
    candidates.into_iter().flatten().map(|dir| dir.join(NAME)).find(|path| path.exists()).unwrap_or_else(|| {
        panic!(
            "{NAME} not found next to {} or one level up; build it with \
                 `cargo build -p allot-fake-nvml`",
            exe.display()
        )
    })
}

/// Initialises nvml-wrapper on the fake library, as Allot does with `--nvml-lib`.
pub fn nvml() -> Nvml {
    let path = cdylib_path();
    Nvml::builder().lib_path(path.as_os_str()).init().expect("the fake NVML initialises")
}

/// `fake_nvml::mig` and `create` give `mig::create`, the name libtest knows the test by.
pub fn test_path(module: &str, test: &str) -> String {
    match module.split_once("::") {
        Some((_, inside)) => format!("{inside}::{test}"),
        None => test.to_owned(),
    }
}

/// A machine description in a temporary directory, and the child processes that use it.
#[derive(Debug)]
pub struct Scenario {
    test: String,
    dir: PathBuf,
    _temp: Option<TempDir>,
    state: bool,
}

impl Scenario {
    /// In the parent, writes `machine` to a new temporary directory; in a child, uses the
    /// parent's directory.
    pub fn new(test: String, machine: &str) -> Scenario {
        if let Some(dir) = std::env::var_os(DIR_VAR) {
            return Scenario { test, dir: PathBuf::from(dir), _temp: None, state: false };
        }
        let temp = tempfile::tempdir().expect("temp dir");
        let dir = temp.path().to_owned();
        std::fs::write(dir.join("machine.toml"), machine).expect("write machine.toml");
        Scenario { test, dir, _temp: Some(temp), state: false }
    }

    /// Also sets `ALLOT_FAKE_NVML_STATE` for the children.
    pub fn with_state(mut self) -> Scenario {
        self.state = true;
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn machine_path(&self) -> PathBuf {
        self.dir.join("machine.toml")
    }

    pub fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    pub fn events_path(&self) -> PathBuf {
        self.dir.join("events.jsonl")
    }

    /// Writes a file into the scenario directory (in the parent only) and returns its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.join(name);
        if std::env::var_os(DIR_VAR).is_none() {
            std::fs::write(&path, text).expect("write scenario file");
        }
        path
    }

    /// Runs `body` in a child process; see [`Scenario::run_with`].
    pub fn run(&self, phase: &str, body: impl FnOnce() -> TestResult) -> Option<Output> {
        self.run_with(phase, &[], body)
    }

    /// In the parent: runs this test again in a child process that executes only `body`,
    /// with the fake's environment pointing into the scenario directory plus `env`
    /// overrides (`None` removes a variable), checks that it succeeded, and returns its
    /// output. In the child: runs `body` if `phase` is the one it was started for, then
    /// exits; otherwise does nothing. So code after `run` that inspects the output only
    /// runs in the parent, where `run` returns `Some`.
    pub fn run_with(
        &self,
        phase: &str,
        env: &[(&str, Option<&OsStr>)],
        body: impl FnOnce() -> TestResult,
    ) -> Option<Output> {
        let wanted = format!("{}#{phase}", self.test);
        let marker = self.dir.join(format!("{phase}.ran"));
        if let Some(running) = std::env::var_os(CHILD_VAR) {
            if running == wanted.as_str() {
                if let Err(err) = body() {
                    panic!("{phase}: {err}");
                }
                std::fs::write(&marker, "").expect("write phase marker");
                let _ = std::io::stdout().flush();
                let _ = std::io::stderr().flush();
                std::process::exit(0);
            }
            return None;
        }

        let exe = std::env::current_exe().expect("test binary path");
        let mut command = Command::new(exe);
        command
            .args([self.test.as_str(), "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_VAR, &wanted)
            .env(DIR_VAR, &self.dir)
            .env(MACHINE_VAR, self.machine_path())
            .env(EVENTS_VAR, self.events_path())
            .env_remove(STATE_VAR);
        if self.state {
            command.env(STATE_VAR, self.state_path());
        }
        for (name, value) in env {
            match value {
                Some(value) => command.env(name, value),
                None => command.env_remove(name),
            };
        }
        let output = command.output().expect("start the child test process");
        let report = format!(
            "child {wanted} exited with {}\n--- stdout\n{}\n--- stderr\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.status.success(), "{report}");
        // A wrong test name makes libtest run nothing and succeed; the marker proves that
        // the body ran.
        assert!(marker.exists(), "the body did not run: {report}");
        Some(output)
    }
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Appends one line to a file, as an injector of events would.
pub fn append_line(path: &Path, line: &str) {
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path).expect("open for append");
    writeln!(file, "{line}").expect("append line");
}
