//! Resource classes and quantities: what quotas count, in which units, and what
//! an allocation is charged.
//!
//! One GPU unit covers whole GPUs, MIG instances and shares: the **milli-GPU of
//! compute**. A whole GPU is 1000; a MIG instance with N of a GPU's 7 compute
//! slices is ⌈1000·N/7⌉ (so `3g.40gb` is 429 and `7g.80gb` is 1000); a share is
//! its milli-GPU. Compute is what a GPU is bought for and what every MIG profile
//! names, so a team's quota means the same on any GPU generation; GPU memory
//! caps are placement constraints, not quota.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use allot_api::allocation::GpuDemand;
use serde::{Deserialize, Serialize};

/// A class of resource that a quota can name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum ResourceClass {
    /// CPU cores, counted in milli-cores.
    Cpu,
    /// Host memory, counted in MiB.
    Memory,
    /// GPUs of any model, in milli-GPU.
    GpuAny,
    /// GPUs of one family (`gpu/h100`), in milli-GPU.
    GpuFamily(String),
}

/// GPU families Allot knows by name. A quota may name one of these, or any family
/// that a registered node has (see [`gpu_family`]).
pub const KNOWN_GPU_FAMILIES: &[&str] = &[
    "a10", "a100", "a16", "a2", "a30", "a40", "a800", "b100", "b200", "gb200", "h100", "h20", "h200", "h800", "l4",
    "l40", "l40s", "p100", "p40", "p4", "rtx6000", "t4", "v100", "g1", "g2", "g3",
];

impl ResourceClass {
    pub fn gpu_family(family: &str) -> ResourceClass {
        ResourceClass::GpuFamily(family.to_ascii_lowercase())
    }

    /// Whether a quantity of this class is a GPU quantity (milli-GPU).
    pub fn is_gpu(&self) -> bool {
        matches!(self, ResourceClass::GpuAny | ResourceClass::GpuFamily(_))
    }

    /// Turns a number as people write it (GPUs, cores, GiB) into base units
    /// (milli-GPU, milli-cores, MiB). Refuses negative, fractional-beyond-precision
    /// and absurd amounts.
    pub fn from_user(&self, amount: f64) -> Result<u64, String> {
        if !amount.is_finite() || amount < 0.0 {
            return Err(format!("{self} = {amount} must be a non-negative number"));
        }
        let scale = match self {
            ResourceClass::Memory => 1024.0,
            _ => 1000.0,
        };
        let base = (amount * scale).round();
        if base > 1e15 {
            return Err(format!("{self} = {amount} is too large"));
        }
        Ok(base as u64)
    }

    /// A base-unit quantity as people write it.
    pub fn to_user(&self, base: u64) -> f64 {
        match self {
            ResourceClass::Memory => base as f64 / 1024.0,
            _ => base as f64 / 1000.0,
        }
    }

    /// The unit people read, for tables.
    pub fn user_unit(&self) -> &'static str {
        match self {
            ResourceClass::Cpu => "cores",
            ResourceClass::Memory => "GiB",
            _ => "GPUs",
        }
    }
}

impl fmt::Display for ResourceClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResourceClass::Cpu => f.write_str("cpu"),
            ResourceClass::Memory => f.write_str("memory"),
            ResourceClass::GpuAny => f.write_str("gpu/any"),
            ResourceClass::GpuFamily(family) => write!(f, "gpu/{family}"),
        }
    }
}

/// A resource class that is not one Allot counts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown resource class {input:?}: use cpu, memory, gpu/any or gpu/<family> (like gpu/h100)")]
pub struct UnknownClass {
    pub input: String,
}

impl FromStr for ResourceClass {
    type Err = UnknownClass;
    fn from_str(input: &str) -> Result<Self, UnknownClass> {
        let unknown = || UnknownClass { input: input.to_owned() };
        match input {
            "cpu" => Ok(ResourceClass::Cpu),
            "memory" => Ok(ResourceClass::Memory),
            "gpu/any" | "gpu" => Ok(ResourceClass::GpuAny),
            _ => {
                let family = input.strip_prefix("gpu/").ok_or_else(unknown)?;
                let plausible = !family.is_empty()
                    && family.len() <= 32
                    && family.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
                if plausible { Ok(ResourceClass::GpuFamily(family.to_owned())) } else { Err(unknown()) }
            }
        }
    }
}

impl TryFrom<String> for ResourceClass {
    type Error = UnknownClass;
    fn try_from(input: String) -> Result<Self, UnknownClass> {
        input.parse()
    }
}

impl From<ResourceClass> for String {
    fn from(class: ResourceClass) -> String {
        class.to_string()
    }
}

/// The family of a GPU model as NVML names it: "NVIDIA H100 80GB HBM3" is `h100`,
/// "NVIDIA A100-SXM4-80GB" is `a100`, "Tesla T4" is `t4`, "NVIDIA L40S" is `l40s`.
/// Alibaba's anonymised models (`G2`) stay as they are.
pub fn gpu_family(model: &str) -> String {
    let skip = ["nvidia", "tesla", "geforce", "quadro"];
    model
        .split(|c: char| c.is_whitespace() || c == '-' || c == '_')
        .map(|word| word.to_ascii_lowercase())
        .find(|word| !word.is_empty() && !skip.contains(&word.as_str()))
        .map(|word| {
            // V100M32 (Alibaba's spelling) is a V100.
            if let Some(base) = word.strip_suffix("m32").or_else(|| word.strip_suffix("m16")) {
                base.to_owned()
            } else {
                word
            }
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Amounts per class, in base units. Absent classes are zero.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources(pub BTreeMap<ResourceClass, u64>);

impl Resources {
    pub fn get(&self, class: &ResourceClass) -> u64 {
        self.0.get(class).copied().unwrap_or(0)
    }

    pub fn add(&mut self, other: &Resources) {
        for (class, amount) in &other.0 {
            let entry = self.0.entry(class.clone()).or_insert(0);
            *entry = entry.saturating_add(*amount);
        }
    }

    pub fn subtract(&mut self, other: &Resources) {
        for (class, amount) in &other.0 {
            if let Some(entry) = self.0.get_mut(class) {
                *entry = entry.saturating_sub(*amount);
            }
        }
        self.0.retain(|_, amount| *amount > 0);
    }

    pub fn is_empty(&self) -> bool {
        self.0.values().all(|amount| *amount == 0)
    }

    /// `class = amount` pairs as people write them, for messages.
    pub fn describe(&self) -> String {
        let parts: Vec<String> =
            self.0.iter().map(|(class, amount)| format!("{class} = {}", format_amount(class, *amount))).collect();
        if parts.is_empty() { "nothing".to_owned() } else { parts.join(", ") }
    }
}

/// A base-unit amount in people's units, without needless decimals.
pub fn format_amount(class: &ResourceClass, base: u64) -> String {
    let value = class.to_user(base);
    if value.fract() == 0.0 { format!("{value:.0}") } else { format!("{value:.3}").trim_end_matches('0').to_owned() }
}

/// The milli-GPU of compute a MIG profile takes: ⌈1000·N/7⌉ for `Ng.*`.
pub fn mig_milli_gpu(profile: &str) -> Option<u64> {
    let slices: u64 = profile.split('g').next()?.parse().ok()?;
    if slices == 0 || slices > 7 {
        return None;
    }
    Some((1000 * slices).div_ceil(7))
}

/// What an allocation is charged: its GPU units (against `gpu/any` and, when the
/// model is known, its family), cores and memory.
pub fn charge(demand: &GpuDemand, cpus: u32, memory_mib: u64, gpu_model: Option<&str>) -> Resources {
    let gpu = match demand {
        GpuDemand::None => 0,
        GpuDemand::Whole { count, .. } => u64::from(*count) * 1000,
        GpuDemand::Mig { profile } => mig_milli_gpu(profile).unwrap_or(1000),
        GpuDemand::Share { compute, .. } => u64::from(compute.0),
    };
    let mut amounts = BTreeMap::new();
    if gpu > 0 {
        amounts.insert(ResourceClass::GpuAny, gpu);
        if let Some(model) = gpu_model {
            amounts.insert(ResourceClass::GpuFamily(gpu_family(model)), gpu);
        }
    }
    if cpus > 0 {
        amounts.insert(ResourceClass::Cpu, u64::from(cpus) * 1000);
    }
    if memory_mib > 0 {
        amounts.insert(ResourceClass::Memory, memory_mib);
    }
    Resources(amounts)
}

#[cfg(test)]
mod tests {
    use allot_api::allocation::MilliGpu;
    use allot_api::units::MiB;

    use super::*;

    #[test]
    fn classes_parse_and_print_the_same() {
        for text in ["cpu", "memory", "gpu/any", "gpu/h100", "gpu/v100"] {
            let class: ResourceClass = text.parse().expect(text);
            assert_eq!(class.to_string(), text);
        }
        for bad in ["gpus", "gpu/", "gpu/H100", "disk", "gpu/a b"] {
            let error = bad.parse::<ResourceClass>().expect_err(bad);
            assert!(error.to_string().contains("gpu/<family>"), "{error}");
        }
    }

    #[test]
    fn families_come_from_nvml_model_names() {
        for (model, family) in [
            ("NVIDIA H100 80GB HBM3", "h100"),
            ("NVIDIA A100-SXM4-80GB", "a100"),
            ("Tesla T4", "t4"),
            ("NVIDIA L40S", "l40s"),
            ("V100M32", "v100"),
            ("G2", "g2"),
            ("", "unknown"),
        ] {
            assert_eq!(gpu_family(model), family, "{model}");
        }
    }

    #[test]
    fn mig_instances_and_shares_count_in_compute_units() {
        let mig = |profile: &str| charge(&GpuDemand::Mig { profile: profile.into() }, 0, 0, None);
        assert_eq!(mig("3g.40gb").get(&ResourceClass::GpuAny), 429);
        assert_eq!(mig("7g.80gb").get(&ResourceClass::GpuAny), 1000);
        assert_eq!(mig("1g.10gb").get(&ResourceClass::GpuAny), 143);
        let share =
            charge(&GpuDemand::Share { compute: MilliGpu(250), memory: MiB(1000) }, 2, 4096, Some("NVIDIA A10"));
        assert_eq!(share.get(&ResourceClass::GpuAny), 250);
        assert_eq!(share.get(&ResourceClass::gpu_family("a10")), 250);
        assert_eq!(share.get(&ResourceClass::Cpu), 2000);
        assert_eq!(share.get(&ResourceClass::Memory), 4096);
        let whole = charge(&GpuDemand::Whole { count: 8, models: vec![] }, 0, 0, Some("NVIDIA H100 80GB HBM3"));
        assert_eq!(whole.get(&ResourceClass::gpu_family("h100")), 8000);
    }

    #[test]
    fn user_amounts_round_trip() {
        assert_eq!(ResourceClass::GpuAny.from_user(1.5), Ok(1500));
        assert_eq!(ResourceClass::Memory.from_user(2.0), Ok(2048));
        assert!(ResourceClass::Cpu.from_user(-1.0).is_err());
        assert_eq!(format_amount(&ResourceClass::GpuAny, 1500), "1.5");
        assert_eq!(format_amount(&ResourceClass::GpuAny, 8000), "8");
    }
}
