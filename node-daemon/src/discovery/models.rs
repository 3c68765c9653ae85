//! Marketing names of NVIDIA GPUs by PCI device id, for machines without NVML.
//!
//! NVML gives the name when the driver is loaded; without it hwloc gives only the
//! PCI ids (and lspci's name when the pci.ids database was present at export).

/// (device id, name, family) for the data-centre GPUs Allot is most likely to meet. The
/// family is the product token every driver name of that device contains.
const NVIDIA_GPUS: &[(u16, &str, &str)] = &[
    (0x1db1, "Tesla V100-SXM2-16GB", "V100"),
    (0x1db5, "Tesla V100-SXM2-32GB", "V100"),
    (0x1eb8, "Tesla T4", "T4"),
    (0x20b0, "NVIDIA A100-SXM4-40GB", "A100"),
    (0x20b2, "NVIDIA A100-SXM4-80GB", "A100"),
    (0x20b5, "NVIDIA A100 80GB PCIe", "A100"),
    (0x20f1, "NVIDIA A100-PCIE-40GB", "A100"),
    (0x20b7, "NVIDIA A30", "A30"),
    (0x2236, "NVIDIA A10", "A10"),
    (0x25b6, "NVIDIA A16", "A16"),
    (0x26b5, "NVIDIA L40", "L40"),
    (0x26b9, "NVIDIA L40S", "L40S"),
    (0x27b8, "NVIDIA L4", "L4"),
    (0x2330, "NVIDIA H100 80GB HBM3", "H100"),
    (0x2331, "NVIDIA H100 PCIe", "H100"),
    (0x2321, "NVIDIA H100 NVL", "H100"),
    (0x2335, "NVIDIA H200", "H200"),
    (0x233b, "NVIDIA H200 NVL", "H200"),
    (0x2342, "NVIDIA GH200 480GB", "GH200"),
    (0x2901, "NVIDIA B200", "B200"),
];

/// The best name available: the driver's, else lspci's, else our table, else the ids.
pub fn gpu_model(device_id: u16, lspci_name: Option<&str>) -> String {
    if let Some(name) = lspci_name.filter(|name| !name.trim().is_empty()) {
        return name.trim().to_owned();
    }
    NVIDIA_GPUS
        .iter()
        .find(|(id, _, _)| *id == device_id)
        .map(|(_, name, _)| (*name).to_owned())
        .unwrap_or_else(|| format!("NVIDIA GPU [10de:{device_id:04x}]"))
}

/// When the driver's name for a GPU cannot belong to its PCI device id (NVML says GB200
/// where the id is an H100's), the family the id belongs to. `None` when they agree or
/// the id is not in our table.
pub fn contradicting_family(device_id: u16, driver_name: &str) -> Option<&'static str> {
    let (_, _, family) = NVIDIA_GPUS.iter().find(|(id, _, _)| *id == device_id)?;
    let mentions_family =
        driver_name.split(|c: char| !c.is_ascii_alphanumeric()).any(|token| token.eq_ignore_ascii_case(family));
    (!mentions_family).then_some(*family)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_lspci_then_the_table_then_the_ids() {
        assert_eq!(gpu_model(0x2330, Some("GH100 [H100 SXM5 80GB]")), "GH100 [H100 SXM5 80GB]");
        assert_eq!(gpu_model(0x2330, None), "NVIDIA H100 80GB HBM3");
        assert_eq!(gpu_model(0x2330, Some("  ")), "NVIDIA H100 80GB HBM3");
        assert_eq!(gpu_model(0xffff, None), "NVIDIA GPU [10de:ffff]");
    }

    #[test]
    fn a_driver_name_of_another_family_contradicts_the_pci_id() {
        assert_eq!(contradicting_family(0x2330, "NVIDIA GB200"), Some("H100"));
        assert_eq!(contradicting_family(0x26b9, "NVIDIA L40"), Some("L40S"));
        assert_eq!(contradicting_family(0x2330, "NVIDIA H100 80GB HBM3"), None);
        assert_eq!(contradicting_family(0x20b2, "NVIDIA A100-SXM4-80GB"), None);
        assert_eq!(contradicting_family(0xffff, "anything"), None, "unknown ids are not checked");
    }
}
