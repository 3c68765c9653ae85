//! sysfs, for what neither hwloc nor NVML reports: NIC link speed and block
//! device capacity. The root is a parameter so tests and fixtures bring their own.

use std::path::{Path, PathBuf};

use super::DeviceDetails;

/// Reads `class/net/*/speed` and `class/block/*/size` below a sysfs root.
#[derive(Debug, Clone)]
pub struct Sysfs {
    root: Option<PathBuf>,
}

impl Sysfs {
    /// sysfs at `root` (normally `/sys`).
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Sysfs { root: Some(root.into()) }
    }

    /// No sysfs: for topologies loaded from a file of another machine, whose
    /// devices this machine's `/sys` knows nothing about.
    pub fn none() -> Self {
        Sysfs { root: None }
    }

    fn read_number(&self, relative: &Path) -> Option<u64> {
        let root = self.root.as_ref()?;
        let text = std::fs::read_to_string(root.join(relative)).ok()?;
        // Down links report -1 (or fail to read) for speed.
        text.trim().parse::<i64>().ok().filter(|value| *value > 0).map(|value| value as u64)
    }
}

/// Interface and block device names come from hwloc, which may come from a file:
/// refuse anything that could walk out of the sysfs directory.
fn safe_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('/') && name != "." && name != ".."
}

impl DeviceDetails for Sysfs {
    fn link_speed_mbps(&self, interface: &str) -> Option<u64> {
        if !safe_name(interface) {
            return None;
        }
        self.read_number(&Path::new("class/net").join(interface).join("speed"))
    }

    fn block_capacity_bytes(&self, block_device: &str) -> Option<u64> {
        if !safe_name(block_device) {
            return None;
        }
        // `size` counts 512-byte sectors whatever the device's own sector size.
        self.read_number(&Path::new("class/block").join(block_device).join("size"))
            .and_then(|sectors| sectors.checked_mul(512))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_speed_and_capacity_below_its_root() {
        let root = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(root.path().join("class/net/ibp24s0")).expect("mkdir");
        std::fs::write(root.path().join("class/net/ibp24s0/speed"), "400000\n").expect("write");
        std::fs::create_dir_all(root.path().join("class/net/down0")).expect("mkdir");
        std::fs::write(root.path().join("class/net/down0/speed"), "-1\n").expect("write");
        std::fs::create_dir_all(root.path().join("class/block/nvme0n1")).expect("mkdir");
        std::fs::write(root.path().join("class/block/nvme0n1/size"), "7501476528\n").expect("write");

        let sysfs = Sysfs::at(root.path());
        assert_eq!(sysfs.link_speed_mbps("ibp24s0"), Some(400_000));
        assert_eq!(sysfs.link_speed_mbps("down0"), None);
        assert_eq!(sysfs.link_speed_mbps("missing"), None);
        assert_eq!(sysfs.link_speed_mbps("../../etc"), None);
        assert_eq!(sysfs.block_capacity_bytes("nvme0n1"), Some(7_501_476_528 * 512));
        assert_eq!(Sysfs::none().link_speed_mbps("ibp24s0"), None);
    }
}
