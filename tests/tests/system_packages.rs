//! The check that the system packages the build and tests need are installed
//! (scripts/check-system.sh, run by scripts/setup.sh): it passes when every
//! listed file is there and, when one is missing, fails naming the package to
//! install. Issue 11: a package installed by hand on the CI machine
//! (libprotobuf-dev) hid that a fresh machine could not build.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the repository holds tests/").to_owned()
}

/// (package, file) from the list, in order.
fn listed() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repository().join("scripts/system-packages.txt")).expect("package list");
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let mut words = line.split_whitespace();
            let package = words.next().expect("package").to_owned();
            let file = words.next().unwrap_or_else(|| panic!("{package} names no file")).to_owned();
            (package, file)
        })
        .collect()
}

/// A fake root holding every listed file but `without`'s.
fn root_without(without: Option<&str>) -> tempfile::TempDir {
    let root = tempfile::tempdir().expect("temp dir");
    for (package, file) in listed() {
        if Some(package.as_str()) == without {
            continue;
        }
        let path = root.path().join(file.trim_start_matches('/').replace('*', "x86_64-linux-gnu"));
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, "").expect("file");
    }
    root
}

fn check(root: &Path) -> (bool, String) {
    let output = Command::new("bash")
        .arg(repository().join("scripts/check-system.sh"))
        .env("ALLOT_SYSTEM_ROOT", root)
        .output()
        .expect("bash runs the check");
    (output.status.success(), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn the_list_names_the_protobuf_headers_etcd_client_needs() {
    let packages: Vec<String> = listed().into_iter().map(|(package, _)| package).collect();
    for needed in ["libprotobuf-dev", "protobuf-compiler", "libhwloc-dev", "etcd-server", "hwloc"] {
        assert!(packages.iter().any(|package| package == needed), "{needed} is missing from the list");
    }
}

#[test]
fn the_check_passes_when_every_file_is_there() {
    let root = root_without(None);
    let (ok, stderr) = check(root.path());
    assert!(ok, "{stderr}");
}

#[test]
fn a_missing_file_fails_the_check_naming_its_package() {
    for (package, file) in listed() {
        let root = root_without(Some(&package));
        let (ok, stderr) = check(root.path());
        assert!(!ok, "the check passed without {file} of {package}");
        assert!(stderr.contains(&format!("apt-get install {package}")), "{package}: {stderr}");
        assert!(stderr.contains("1 file(s)"), "{package}: {stderr}");
    }
}

#[test]
fn this_machine_has_what_the_build_needs() {
    // scripts/test.sh ran setup first; this fails if the list and setup disagree.
    let (ok, stderr) = check(Path::new(""));
    assert!(ok, "{stderr}");
}
