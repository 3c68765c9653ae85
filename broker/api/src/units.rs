//! Newtypes for identity and units that appear everywhere: PCI bus ids, memory in
//! MiB, and CPU sets in Linux cpu-list syntax.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Memory size in mebibytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MiB(pub u64);

impl MiB {
    /// Converts a byte count, rounding down.
    pub fn from_bytes(bytes: u64) -> Self {
        MiB(bytes / (1024 * 1024))
    }
}

impl fmt::Display for MiB {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 >= 1024 * 1024 {
            write!(f, "{:.1} TiB", self.0 as f64 / (1024.0 * 1024.0))
        } else if self.0 >= 1024 {
            write!(f, "{:.1} GiB", self.0 as f64 / 1024.0)
        } else {
            write!(f, "{} MiB", self.0)
        }
    }
}

/// A PCI address: domain, bus, device and function.
///
/// Parsed from both spellings in use: hwloc's and sysfs' `0000:1b:00.0` and NVML's
/// `00000000:1B:00.0`. Always printed in the sysfs spelling, lowercase.
///
/// One value is not an address: [`PciBusId::NOT_VISIBLE`], all bits set, which NVML
/// answers for an NVLink peer that is not on this host's PCI bus (an NVSwitch in a VM).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciBusId {
    pub domain: u32,
    pub bus: u8,
    pub device: u8,
    pub function: u8,
}

/// A PCI bus id that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid PCI bus id {input:?}: expected DOMAIN:BUS:DEVICE.FUNCTION in hex, like 0000:1b:00.0")]
pub struct PciBusIdError {
    pub input: String,
}

impl PciBusId {
    /// What NVML's `nvmlDeviceGetNvLinkRemotePciInfo` answers when the peer is not visible
    /// on this host's PCI bus: every field all ones (`FFFFFFFF:FF:FF.0`, or `FFFF:FF:FF.0` in
    /// the legacy spelling). NCCL's topology code reads it as "an NVSwitch we cannot see".
    pub const NOT_VISIBLE: PciBusId = PciBusId { domain: u32::MAX, bus: u8::MAX, device: u8::MAX, function: 0 };

    /// Whether this is [`PciBusId::NOT_VISIBLE`] rather than an address.
    pub fn is_not_visible(&self) -> bool {
        *self == PciBusId::NOT_VISIBLE
    }

    /// Recognises NVML's all-ones bus id in any width it is printed in: the domain as 4 or 8
    /// hex digits (`FFFF`, `0000FFFF`, `FFFFFFFF`), bus and device `FF`, any function digit.
    fn parse_not_visible(text: &str) -> bool {
        let Some((rest, function)) = text.rsplit_once('.') else { return false };
        let parts: Vec<&str> = rest.split(':').collect();
        let all_f = |part: &str| !part.is_empty() && part.chars().all(|c| c.eq_ignore_ascii_case(&'f'));
        let domain_ok = |part: &str| {
            let trimmed = part.trim_start_matches('0');
            part.len() <= 8 && (trimmed.len() == 4 || trimmed.len() == 8) && all_f(trimmed)
        };
        matches!(parts.as_slice(), [domain, bus, device] if domain_ok(domain) && bus.len() == 2 && all_f(bus) && device.len() == 2 && all_f(device))
            && function.len() == 1
            && function.chars().all(|c| c.is_ascii_hexdigit())
    }
}

impl FromStr for PciBusId {
    type Err = PciBusIdError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let error = || PciBusIdError { input: input.to_owned() };
        let trimmed = input.trim();
        if PciBusId::parse_not_visible(trimmed) {
            return Ok(PciBusId::NOT_VISIBLE);
        }
        let (rest, function) = trimmed.rsplit_once('.').ok_or_else(error)?;
        let mut parts = rest.split(':');
        let (domain, bus, device) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(domain), Some(bus), Some(device), None) => (domain, bus, device),
            // Some tools omit the domain when it is zero.
            (Some(bus), Some(device), None, None) => ("0", bus, device),
            _ => return Err(error()),
        };
        let hex_field = |text: &str, max_digits: usize| {
            if text.is_empty() || text.len() > max_digits {
                return None;
            }
            u32::from_str_radix(text, 16).ok()
        };
        let domain = hex_field(domain, 8).ok_or_else(error)?;
        let bus = hex_field(bus, 2).ok_or_else(error)?;
        let device = hex_field(device, 2).filter(|d| *d < 32).ok_or_else(error)?;
        let function = hex_field(function, 1).filter(|f| *f < 8).ok_or_else(error)?;
        Ok(PciBusId { domain, bus: bus as u8, device: device as u8, function: function as u8 })
    }
}

impl fmt::Display for PciBusId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04x}:{:02x}:{:02x}.{:x}", self.domain, self.bus, self.device, self.function)
    }
}

impl Serialize for PciBusId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PciBusId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A set of CPU (PU) or NUMA node indices, sorted and without duplicates.
///
/// Printed and parsed in the Linux cpu-list syntax (`0-3,8,10-11`) that
/// `/sys/devices/system/cpu/online`, cpusets and `taskset -c` use.
///
/// Immutable and shared: a clone is a reference count, so the nodes that the
/// broker fills in from one inventory template share the template's sets.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct CpuSet(std::sync::Arc<[u32]>);

/// A cpu-list that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid cpu list {input:?}: expected comma-separated indices and ranges, like 0-3,8")]
pub struct CpuSetError {
    pub input: String,
}

/// The largest index a cpu list may name; guards against `0-4294967295` allocating
/// the machine away.
const MAX_CPU_INDEX: u32 = 1 << 20;

impl CpuSet {
    pub fn new(mut indices: Vec<u32>) -> Self {
        indices.sort_unstable();
        indices.dedup();
        CpuSet(indices.into())
    }

    pub fn indices(&self) -> &[u32] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, index: u32) -> bool {
        self.0.binary_search(&index).is_ok()
    }

    pub fn is_subset_of(&self, other: &CpuSet) -> bool {
        self.0.iter().all(|i| other.contains(*i))
    }

    pub fn intersects(&self, other: &CpuSet) -> bool {
        self.0.iter().any(|i| other.contains(*i))
    }

    pub fn union(&self, other: &CpuSet) -> CpuSet {
        CpuSet::new(self.0.iter().chain(other.0.iter()).copied().collect())
    }
}

impl FromIterator<u32> for CpuSet {
    fn from_iter<T: IntoIterator<Item = u32>>(iter: T) -> Self {
        CpuSet::new(iter.into_iter().collect())
    }
}

impl FromStr for CpuSet {
    type Err = CpuSetError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let error = || CpuSetError { input: input.to_owned() };
        let trimmed = input.trim();
        if trimmed.is_empty() {
            return Ok(CpuSet::default());
        }
        let mut ranges = Vec::new();
        for part in trimmed.split(',') {
            let part = part.trim();
            let (first, last) = match part.split_once('-') {
                Some((first, last)) => (first, last),
                None => (part, part),
            };
            let first: u32 = first.trim().parse().map_err(|_| error())?;
            let last: u32 = last.trim().parse().map_err(|_| error())?;
            if first > last || last > MAX_CPU_INDEX {
                return Err(error());
            }
            ranges.push((first, last));
        }
        // Overlapping ranges are merged before they are expanded, so the work is
        // bounded by MAX_CPU_INDEX whatever the input repeats: `0-1048576` two
        // hundred times (2 KB on the wire) is one range, not 200 million indices.
        ranges.sort_unstable();
        let mut indices: Vec<u32> = Vec::new();
        for (first, last) in ranges {
            let from = match indices.last() {
                Some(&covered) if covered >= last => continue,
                Some(&covered) if covered >= first => covered + 1,
                _ => first,
            };
            indices.extend(from..=last);
        }
        Ok(CpuSet(indices.into()))
    }
}

impl fmt::Display for CpuSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first_range = true;
        let mut index = 0;
        while index < self.0.len() {
            let start = self.0[index];
            let mut end = start;
            while index + 1 < self.0.len() && self.0[index + 1] == end + 1 {
                index += 1;
                end = self.0[index];
            }
            if !first_range {
                f.write_str(",")?;
            }
            first_range = false;
            if start == end {
                write!(f, "{start}")?;
            } else {
                write!(f, "{start}-{end}")?;
            }
            index += 1;
        }
        Ok(())
    }
}

impl Serialize for CpuSet {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for CpuSet {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_bus_id(input: &str, expected: Option<&str>) {
        let parsed = input.parse::<PciBusId>().ok().map(|id| id.to_string());
        assert_eq!(parsed.as_deref(), expected, "parsing {input:?}");
    }

    #[test]
    fn pci_bus_ids_in_every_spelling() {
        check_bus_id("0000:1b:00.0", Some("0000:1b:00.0"));
        check_bus_id("00000000:1B:00.0", Some("0000:1b:00.0"));
        check_bus_id("1b:00.1", Some("0000:1b:00.1"));
        check_bus_id("0001:c3:1f.7", Some("0001:c3:1f.7"));
        check_bus_id("0000:1b:20.0", None);
        check_bus_id("0000:1b:00.8", None);
        check_bus_id("0000:100:00.0", None);
        // NVML's "peer not visible" value, in each width NVML prints it, is one value.
        for spelling in ["FFFFFFFF:FF:FF.0", "ffff:ff:ff.0", "0000FFFF:FF:FF.0", " FFFFFFFF:FF:FF.F "] {
            assert_eq!(spelling.parse::<PciBusId>().ok(), Some(PciBusId::NOT_VISIBLE), "{spelling:?}");
        }
        check_bus_id("FFFFFFFF:FF:FF.0", Some("ffffffff:ff:ff.0"));
        check_bus_id("FFFFFFF:FF:FF.0", None);
        check_bus_id("FFFF:FE:FF.0", None);
        check_bus_id("zz", None);
        check_bus_id("", None);
        check_bus_id("0000:1b:00", None);
    }

    fn check_cpus(input: &str, expected: Option<&str>) {
        let parsed = input.parse::<CpuSet>().ok().map(|set| set.to_string());
        assert_eq!(parsed.as_deref(), expected, "parsing {input:?}");
    }

    #[test]
    fn cpu_lists_round_trip() {
        check_cpus("0-3,8,10-11", Some("0-3,8,10-11"));
        check_cpus("3,2,1,0", Some("0-3"));
        check_cpus("0-55,112-167", Some("0-55,112-167"));
        check_cpus("", Some(""));
        check_cpus("5", Some("5"));
        check_cpus("3-1", None);
        check_cpus("a-b", None);
        check_cpus("0-4294967295", None);
        check_cpus("0-3,2-5,5,9-9,8-10,4", Some("0-5,8-10"));
        check_cpus("0,0,1-1,0-1", Some("0-1"));
    }

    #[test]
    fn a_cpu_list_that_repeats_a_huge_range_costs_no_more_than_the_range() {
        // Before ranges were merged this expanded to 200 million indices: minutes of
        // work and gigabytes for 2 KB of gRPC message.
        let repeated = vec!["0-1048576"; 200].join(",");
        let started = std::time::Instant::now();
        let set: CpuSet = repeated.parse().expect("valid");
        assert_eq!(set.len(), 1_048_577);
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "{:?}", started.elapsed());
    }

    #[test]
    fn memory_sizes_read_well() {
        assert_eq!(MiB(81559).to_string(), "79.6 GiB");
        assert_eq!(MiB(512).to_string(), "512 MiB");
        assert_eq!(MiB::from_bytes(3 * 1024 * 1024 + 5).0, 3);
    }
}
