//! PCI addresses in the spellings hwloc and NVML use, and Linux CPU lists.

use std::fmt;

/// A PCI function address: domain, bus, device and function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct PciAddress {
    pub(crate) domain: u32,
    pub(crate) bus: u32,
    pub(crate) device: u32,
    pub(crate) function: u32,
}

impl PciAddress {
    /// Parses the forms NVML's `nvmlDeviceGetHandleByPciBusId` accepts, all hexadecimal and
    /// in either case: `domain:bus:device.function`, `domain:bus:device` and
    /// `bus:device.function`. So both hwloc's `0000:1b:00.0` and NVML's `00000000:1B:00.0` work.
    pub(crate) fn parse(text: &str) -> Option<PciAddress> {
        let text = text.trim();
        let (head, function) = match text.rsplit_once('.') {
            Some((head, function)) => (head, Some(function)),
            None => (text, None),
        };
        let parts: Vec<&str> = head.split(':').collect();
        let (domain, bus, device) = match (parts.as_slice(), function) {
            ([domain, bus, device], _) => (*domain, *bus, *device),
            ([bus, device], Some(_)) => ("0", *bus, *device),
            _ => return None,
        };
        let address = PciAddress {
            domain: hex(domain, 8)?,
            bus: hex(bus, 2)?,
            device: hex(device, 2)?,
            function: function.map_or(Some(0), |function| hex(function, 1))?,
        };
        if address.device > 0x1f || address.function > 7 {
            return None;
        }
        Some(address)
    }

    /// NVML's spelling, as in `nvmlPciInfo_t.busId`: `00000000:1B:00.0`.
    pub(crate) fn nvml(&self) -> String {
        format!("{:08X}:{:02X}:{:02X}.{:X}", self.domain, self.bus, self.device, self.function)
    }

    /// NVML's legacy spelling, as in `nvmlPciInfo_t.busIdLegacy`: `0000:1B:00.0`.
    pub(crate) fn nvml_legacy(&self) -> String {
        format!("{:04X}:{:02X}:{:02X}.{:X}", self.domain, self.bus, self.device, self.function)
    }
}

/// hwloc's spelling, the one machine descriptions use: `0000:1b:00.0`.
impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04x}:{:02x}:{:02x}.{:x}", self.domain, self.bus, self.device, self.function)
    }
}

fn hex(text: &str, max_digits: usize) -> Option<u32> {
    if text.is_empty() || text.len() > max_digits {
        return None;
    }
    u32::from_str_radix(text, 16).ok()
}

/// The highest CPU number a CPU list may name; far above any real machine, low enough that a
/// typo cannot make the fake allocate gigabytes.
const MAX_CPU: u32 = 65_535;

/// Parses a Linux CPU list such as `0-55,112-167` into a sorted list of CPU numbers.
pub(crate) fn parse_cpu_list(text: &str) -> Result<Vec<u32>, String> {
    let mut cpus = Vec::new();
    for item in text.split(',').map(str::trim) {
        if item.is_empty() {
            return Err(format!("empty item in CPU list {text:?}"));
        }
        let (first, last) = match item.split_once('-') {
            Some((first, last)) => (parse_cpu(first, text)?, parse_cpu(last, text)?),
            None => {
                let cpu = parse_cpu(item, text)?;
                (cpu, cpu)
            }
        };
        if first > last {
            return Err(format!("range {item} runs backwards in CPU list {text:?}"));
        }
        cpus.extend(first..=last);
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

fn parse_cpu(number: &str, list: &str) -> Result<u32, String> {
    let cpu: u32 = number.trim().parse().map_err(|_| format!("{number:?} is not a CPU number in CPU list {list:?}"))?;
    if cpu > MAX_CPU {
        return Err(format!("CPU {cpu} in CPU list {list:?} is above the supported {MAX_CPU}"));
    }
    Ok(cpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hwloc_and_nvml_spellings() {
        let hwloc = PciAddress::parse("0000:1b:00.0");
        let nvml = PciAddress::parse("00000000:1B:00.0");
        let short = PciAddress::parse("1b:00.0");
        assert!(hwloc.is_some());
        assert_eq!(hwloc, nvml);
        assert_eq!(hwloc, short);
        let address = hwloc.expect("parsed");
        assert_eq!(address.nvml(), "00000000:1B:00.0");
        assert_eq!(address.nvml_legacy(), "0000:1B:00.0");
        assert_eq!(address.to_string(), "0000:1b:00.0");
        assert_eq!(PciAddress::parse("0000:1b:00"), hwloc);
    }

    #[test]
    fn rejects_garbage() {
        for text in ["", "zz:00.0", "0000:1b", "0000:1b:40.0", "0000:1b:00.9", "1:2:3:4"] {
            assert_eq!(PciAddress::parse(text), None, "{text}");
        }
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-2,5"), Ok(vec![0, 1, 2, 5]));
        assert_eq!(parse_cpu_list("7"), Ok(vec![7]));
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("0,,1").is_err());
        assert!(parse_cpu_list("a-b").is_err());
        assert!(parse_cpu_list("0-99999999").is_err());
    }
}
