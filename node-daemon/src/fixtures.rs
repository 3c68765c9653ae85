//! Bundled hardware fixtures: an hwloc XML export plus a fake-NVML description of
//! the same machine, under `tests/data/NAME/`, so that Allot runs on a laptop as
//! if it were a DGX.

use std::path::{Path, PathBuf};

use crate::discovery::DiscoveryError;

/// File name of the fake NVML library that `tools/fake-nvml` builds.
pub const FAKE_NVML_FILE: &str = "libnvidia_ml_fake.so";

/// The environment variable through which the fake NVML library finds its
/// machine description.
pub const FAKE_NVML_MACHINE_VAR: &str = "ALLOT_FAKE_NVML_MACHINE";

/// A fixture found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fixture {
    pub name: String,
    pub dir: PathBuf,
    pub topology_xml: PathBuf,
    pub nvml_machine: PathBuf,
    /// A sysfs excerpt (NIC speeds, drive sizes), when the fixture has one.
    pub sysfs: Option<PathBuf>,
}

/// Where fixtures may live, most specific first: `$ALLOT_FIXTURES_DIR`, then
/// `tests/data` above the running binary (a cargo build inside the repository),
/// then the repository this binary was built from.
fn fixture_roots() -> Vec<PathBuf> {
    let mut roots = Vec::new();
    if let Some(dir) = std::env::var_os("ALLOT_FIXTURES_DIR") {
        roots.push(PathBuf::from(dir));
    }
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).take(5).map(|dir| dir.join("tests/data")));
    }
    roots.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data"));
    roots
}

fn fixture_error(name: &str, problem: impl Into<String>) -> DiscoveryError {
    DiscoveryError::Fixture { name: name.to_owned(), problem: problem.into() }
}

/// Fixture names present in the first root that has any.
pub fn available_fixtures() -> Vec<String> {
    for root in fixture_roots() {
        let Ok(entries) = std::fs::read_dir(&root) else { continue };
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .filter(|entry| entry.path().join("topology.xml").is_file())
            .filter_map(|entry| entry.file_name().into_string().ok())
            .collect();
        if !names.is_empty() {
            names.sort();
            return names;
        }
    }
    Vec::new()
}

/// Finds fixture `name`.
pub fn find_fixture(name: &str) -> Result<Fixture, DiscoveryError> {
    let valid = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid {
        return Err(fixture_error(name, "fixture names are letters, digits, '-' and '_'"));
    }
    for root in fixture_roots() {
        let dir = root.join(name);
        let topology_xml = dir.join("topology.xml");
        if !topology_xml.is_file() {
            continue;
        }
        let nvml_machine = dir.join("nvml.toml");
        if !nvml_machine.is_file() {
            return Err(fixture_error(name, format!("{} is missing", nvml_machine.display())));
        }
        let sysfs = Some(dir.join("sysfs")).filter(|path| path.is_dir());
        return Ok(Fixture { name: name.to_owned(), dir, topology_xml, nvml_machine, sysfs });
    }
    let known = available_fixtures();
    Err(fixture_error(
        name,
        if known.is_empty() {
            "no fixtures found; run from the repository or set ALLOT_FIXTURES_DIR to its tests/data".to_owned()
        } else {
            format!("no such fixture; known fixtures: {}", known.join(", "))
        },
    ))
}

/// The fake NVML library built next to this binary (or named by
/// `$ALLOT_FAKE_NVML_LIB`).
pub fn find_fake_nvml() -> Result<PathBuf, DiscoveryError> {
    if let Some(path) = std::env::var_os("ALLOT_FAKE_NVML_LIB") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().map_err(|error| DiscoveryError::NvmlLibrary {
        path: PathBuf::from(FAKE_NVML_FILE),
        problem: format!("cannot locate this program to look beside it: {error}"),
    })?;
    // Binaries live in target/<profile>/, test binaries in target/<profile>/deps/.
    exe.ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join(FAKE_NVML_FILE))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| DiscoveryError::NvmlLibrary {
            path: PathBuf::from(FAKE_NVML_FILE),
            problem: "not found beside allot-node; build it with `cargo build -p allot-fake-nvml`, or pass --nvml-lib"
                .to_owned(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_fixture_names_are_refused_before_touching_the_disk() {
        for name in ["", "../etc", "a/b", "dgx h100"] {
            let error = find_fixture(name).expect_err("invalid name");
            assert!(error.to_string().contains("letters, digits"), "{name:?}: {error}");
        }
    }

    #[test]
    fn an_unknown_fixture_lists_the_known_ones() {
        let error = find_fixture("no-such-machine").expect_err("unknown");
        assert!(error.to_string().contains("no-such-machine"), "{error}");
    }
}
