//! The Kubernetes resources allot-node offers and their device ids, computed
//! from what the node knows: its inventory (with health) and the broker's live
//! allocations on it. Pure: a snapshot in, device lists out.
//!
//! - `<prefix>/gpu`: whole GPUs; a device is a GPU, its id the GPU's UUID.
//! - `<prefix>/mig-<profile>` (like `allot.io/mig-3g.40gb`): one device per MIG
//!   slot the broker could still carve for that profile, id `<GPU-UUID>::mig<start>`.
//! - `<prefix>/gpu-share`: hundredths of one GPU's compute; a container asking
//!   for 25 gets a quarter of one GPU (and a quarter of its memory), ids
//!   `<GPU-UUID>::<0..99>`, NVIDIA's `::` convention for replicas.
//!
//! Which device a container gets is the broker's choice; these lists only say
//! what may be asked for. A device held by an allocation made for the kubelet
//! stays listed (the kubelet counts it as in use), a device taken by anything
//! else is left out.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use allot_api::allocation::{Allocation, AllocationId, GpuDemand, MilliGpu};
use allot_api::topology::{Gpu, GpuHealth, MigMode, NodeInventory};
use allot_api::units::MiB;

/// Hundredths of a GPU: the unit of the share resource.
pub const SHARE_UNITS_PER_GPU: u32 = 100;

/// What the node knows, as the device plugin needs it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeSnapshot {
    /// `None` until the node is first mapped.
    pub inventory: Option<NodeInventory>,
    /// Live allocations on this node (those holding capacity).
    pub allocations: BTreeMap<AllocationId, Allocation>,
    /// The environment enforcement built for each allocation it completed
    /// (device UUIDs, MIG UUIDs, MPS limits).
    pub environments: BTreeMap<AllocationId, BTreeMap<String, String>>,
}

/// One kind of device the plugin offers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Whole,
    Mig { profile: String },
    Share,
}

/// A resource as the kubelet knows it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Resource {
    /// `allot.io/gpu`, `allot.io/mig-3g.40gb`, `allot.io/gpu-share`.
    pub name: String,
    pub kind: Kind,
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl Resource {
    /// The socket file this resource's plugin serves, in the kubelet's directory.
    pub fn socket_name(&self) -> String {
        let local = self.name.rsplit('/').next().unwrap_or(&self.name);
        format!("allot-{local}.sock")
    }
}

/// A resource name the kubelet would refuse, with the rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("E-RESOURCE-NAME: {name:?} is not a valid Kubernetes extended resource name: {rule}")]
pub struct NameError {
    pub name: String,
    pub rule: String,
}

/// Checks `prefix/name` against the rules the API server applies to extended
/// resources: a DNS subdomain prefix that is not `kubernetes.io`, and a
/// qualified name of at most 63 characters.
pub fn check_name(name: &str) -> Result<(), NameError> {
    let error = |rule: &str| Err(NameError { name: name.to_owned(), rule: rule.to_owned() });
    let Some((prefix, local)) = name.split_once('/') else {
        return error("it needs a domain prefix, like allot.io/gpu");
    };
    if prefix.is_empty() || prefix.len() > 253 {
        return error("the prefix must be a DNS subdomain of 1 to 253 characters");
    }
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && label.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if !prefix.split('.').all(label_ok) {
        return error("the prefix must be a DNS subdomain: lowercase letters, digits, '-' and '.'");
    }
    if prefix == "kubernetes.io"
        || prefix.ends_with(".kubernetes.io")
        || prefix == "k8s.io"
        || prefix.ends_with(".k8s.io")
    {
        return error("the kubernetes.io and k8s.io domains are reserved for Kubernetes itself");
    }
    if local.is_empty() || local.len() > 63 {
        return error("the name after the prefix must be 1 to 63 characters");
    }
    let alnum = |c: char| c.is_ascii_alphanumeric();
    if !local.starts_with(alnum)
        || !local.ends_with(alnum)
        || !local.chars().all(|c| alnum(c) || matches!(c, '-' | '_' | '.'))
    {
        return error(
            "the name after the prefix must be letters, digits, '-', '_' and '.', starting and ending alphanumeric",
        );
    }
    Ok(())
}

/// The MIG profile as a resource name part: `1g.10gb+me` becomes `1g.10gb.me`
/// (`+` is not allowed in resource names).
pub fn mig_resource_name(prefix: &str, profile: &str) -> String {
    format!("{prefix}/mig-{}", profile.replace('+', "."))
}

/// The resources a node offers: whole GPUs and shares always (a node without
/// GPUs offers zero devices), and one MIG resource per profile its GPUs offer.
pub fn resources(prefix: &str, gpus: &[Gpu]) -> Vec<Resource> {
    let mut profiles: BTreeSet<&str> = BTreeSet::new();
    for gpu in gpus {
        if let Some(mig) = &gpu.mig {
            profiles.extend(mig.profiles.iter().map(|profile| profile.name.as_str()));
        }
    }
    let mut list = vec![Resource { name: format!("{prefix}/gpu"), kind: Kind::Whole }];
    list.extend(profiles.into_iter().map(|profile| Resource {
        name: mig_resource_name(prefix, profile),
        kind: Kind::Mig { profile: profile.to_owned() },
    }));
    list.push(Resource { name: format!("{prefix}/gpu-share"), kind: Kind::Share });
    list
}

/// A device as ListAndWatch reports it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Device {
    pub id: String,
    pub healthy: bool,
    pub numa_node: Option<u32>,
}

/// What a device id names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceRef {
    Whole { gpu: String },
    MigSlot { gpu: String, start: u32 },
    ShareUnit { gpu: String, unit: u32 },
}

impl DeviceRef {
    pub fn gpu(&self) -> &str {
        match self {
            DeviceRef::Whole { gpu } | DeviceRef::MigSlot { gpu, .. } | DeviceRef::ShareUnit { gpu, .. } => gpu,
        }
    }
}

pub fn mig_id(gpu: &str, start: u32) -> String {
    format!("{gpu}::mig{start}")
}

pub fn share_id(gpu: &str, unit: u32) -> String {
    format!("{gpu}::{unit:02}")
}

/// Reads a device id of `kind`; `None` when it is not one of ours.
pub fn parse_id(kind: &Kind, id: &str) -> Option<DeviceRef> {
    match kind {
        Kind::Whole => (!id.contains("::") && !id.is_empty()).then(|| DeviceRef::Whole { gpu: id.to_owned() }),
        Kind::Mig { .. } => {
            let (gpu, slot) = id.rsplit_once("::")?;
            let start = slot.strip_prefix("mig")?.parse().ok()?;
            (!gpu.is_empty()).then(|| DeviceRef::MigSlot { gpu: gpu.to_owned(), start })
        }
        Kind::Share => {
            let (gpu, unit) = id.rsplit_once("::")?;
            let unit: u32 = unit.parse().ok()?;
            (!gpu.is_empty() && unit < SHARE_UNITS_PER_GPU).then(|| DeviceRef::ShareUnit { gpu: gpu.to_owned(), unit })
        }
    }
}

/// How a GPU is used by the live allocations, apart from those in `ours`.
#[derive(Debug, Default)]
struct GpuUse {
    whole: bool,
    /// MIG slots (start, size) held.
    mig: Vec<(u32, u32)>,
    share_milli: u32,
}

fn uses<'a>(allocations: impl Iterator<Item = &'a Allocation>) -> BTreeMap<u32, GpuUse> {
    let mut by_gpu: BTreeMap<u32, GpuUse> = BTreeMap::new();
    for allocation in allocations {
        let Some(binding) = &allocation.binding else { continue };
        for grant in &binding.gpus {
            let entry = by_gpu.entry(grant.index).or_default();
            match (&grant.mig, &grant.share) {
                (Some(mig), _) => entry.mig.push((mig.start, mig.size)),
                (None, Some(share)) => entry.share_milli += share.compute.0,
                (None, None) => entry.whole = true,
            }
        }
    }
    by_gpu
}

fn healthy(gpu: &Gpu) -> bool {
    !matches!(gpu.health, GpuHealth::Unhealthy { .. })
}

fn mig_enabled(gpu: &Gpu) -> bool {
    gpu.mig.as_ref().is_some_and(|mig| mig.mode == MigMode::Enabled)
}

/// The devices of `resource` the kubelet should see now. `ours` are the device
/// ids held by allocations made for the kubelet (by allocation), which stay
/// listed whatever else happens on their GPUs.
pub fn devices(
    resource: &Resource,
    snapshot: &NodeSnapshot,
    ours: &BTreeMap<AllocationId, Vec<String>>,
) -> Vec<Device> {
    let foreign = uses(snapshot.allocations.values().filter(|allocation| !ours.contains_key(&allocation.id)));
    let all = uses(snapshot.allocations.values());
    let held: BTreeSet<&str> = ours.values().flatten().map(String::as_str).collect();
    let mut list = Vec::new();
    for gpu in snapshot.inventory.iter().flat_map(|inventory| &inventory.gpus) {
        let Some(uuid) = gpu.uuid.as_deref() else { continue };
        let device = |id: String| Device { id, healthy: healthy(gpu), numa_node: gpu.numa_node };
        let none = GpuUse::default();
        let other = foreign.get(&gpu.index).unwrap_or(&none);
        let any = all.get(&gpu.index).unwrap_or(&none);
        match &resource.kind {
            Kind::Whole => {
                let free = !mig_enabled(gpu) && !any.whole && any.mig.is_empty() && any.share_milli == 0;
                if free || held.contains(uuid) {
                    list.push(device(uuid.to_owned()));
                }
            }
            Kind::Mig { profile } => {
                let Some(info) = &gpu.mig else { continue };
                let Some(profile) = info.profiles.iter().find(|candidate| &candidate.name == profile) else { continue };
                let gpu_taken = other.whole || other.share_milli > 0;
                let mut starts: Vec<u32> = profile.placements.clone();
                starts.sort_unstable();
                starts.dedup();
                for start in starts {
                    let id = mig_id(uuid, start);
                    let overlaps = any.mig.iter().any(|(taken, size)| {
                        start < taken.saturating_add(*size) && *taken < start.saturating_add(profile.memory_slices)
                    });
                    if held.contains(id.as_str()) || (!gpu_taken && !overlaps) {
                        list.push(device(id));
                    }
                }
            }
            Kind::Share => {
                let ours_here: Vec<u32> =
                    (0..SHARE_UNITS_PER_GPU).filter(|unit| held.contains(share_id(uuid, *unit).as_str())).collect();
                let available = if mig_enabled(gpu) || other.whole || !other.mig.is_empty() {
                    0
                } else {
                    SHARE_UNITS_PER_GPU
                        .saturating_sub(other.share_milli.div_ceil(1000 / SHARE_UNITS_PER_GPU))
                        .saturating_sub(ours_here.len() as u32)
                };
                let free = (0..SHARE_UNITS_PER_GPU).filter(|unit| !ours_here.contains(unit)).take(available as usize);
                let mut units: Vec<u32> = ours_here.iter().copied().chain(free).collect();
                units.sort_unstable();
                list.extend(units.into_iter().map(|unit| device(share_id(uuid, unit))));
            }
        }
    }
    list
}

/// Owners of allocations the scheduler extender (allot-k8s) made for pods.
pub const POD_OWNER_PREFIX: &str = "pod:";

/// Whether an allocation was made by the scheduler extender for a pod.
pub fn is_pod_allocation(allocation: &Allocation) -> bool {
    allocation.request.owner.as_deref().is_some_and(|owner| owner.starts_with(POD_OWNER_PREFIX))
}

/// A pod's share allocation: its GPU and how many hundredths it holds.
pub fn pod_share(allocation: &Allocation) -> Option<(String, u32)> {
    if !is_pod_allocation(allocation) {
        return None;
    }
    let GpuDemand::Share { compute, .. } = &allocation.request.gpus else { return None };
    let gpu = allocation.binding.as_ref()?.gpus.first()?.uuid.clone()?;
    Some((gpu, compute.0.div_ceil(1000 / SHARE_UNITS_PER_GPU)))
}

/// The device ids of a pod's allocation (made by the scheduler extender, owner
/// `pod:...`) under `resource`, when it is one this resource can hand out:
/// whole GPUs by UUID, a MIG instance by its slot. A share's units are chosen by
/// the plugin (`Shared::adoptable`), since unit ids are its own.
pub fn pod_allocation_ids(resource: &Resource, allocation: &Allocation) -> Option<BTreeSet<String>> {
    if !is_pod_allocation(allocation) {
        return None;
    }
    let binding = allocation.binding.as_ref()?;
    let ids: Option<BTreeSet<String>> = match (&resource.kind, &allocation.request.gpus) {
        (Kind::Whole, GpuDemand::Whole { .. }) => binding.gpus.iter().map(|gpu| gpu.uuid.clone()).collect(),
        (Kind::Mig { profile }, GpuDemand::Mig { profile: asked }) if profile == asked => {
            binding.gpus.iter().map(|gpu| Some(mig_id(gpu.uuid.as_deref()?, gpu.mig.as_ref()?.start))).collect()
        }
        _ => None,
    };
    ids.filter(|ids| !ids.is_empty())
}

/// The broker demand for `count` devices of a resource on one GPU of `gpu_memory`.
pub fn demand(kind: &Kind, count: u32, gpu_memory: Option<MiB>) -> Result<GpuDemand, String> {
    match kind {
        Kind::Whole => Ok(GpuDemand::Whole { count, models: Vec::new() }),
        Kind::Mig { profile } => {
            if count != 1 {
                return Err(format!(
                    "{count} MIG devices in one container: Allot grants one MIG instance per request; ask for 1"
                ));
            }
            Ok(GpuDemand::Mig { profile: profile.clone() })
        }
        Kind::Share => {
            if count == 0 || count >= SHARE_UNITS_PER_GPU {
                return Err(format!(
                    "{count} hundredths of a GPU: a share is 1 to {}; ask for whole GPUs instead",
                    SHARE_UNITS_PER_GPU - 1
                ));
            }
            let memory = gpu_memory.ok_or("the GPU's memory size is unknown, so its share cannot be sized")?;
            // The memory cap follows the compute fraction, rounded down to a MiB.
            let cap = MiB(memory.0 * u64::from(count) / u64::from(SHARE_UNITS_PER_GPU));
            Ok(GpuDemand::Share { compute: MilliGpu(count * (1000 / SHARE_UNITS_PER_GPU)), memory: cap.max(MiB(1)) })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_api_servers_rules() {
        for good in ["allot.io/gpu", "allot.io/mig-3g.40gb", "allot.io/mig-1g.10gb.me", "gpu.example.com/gpu-share"] {
            assert_eq!(check_name(good), Ok(()), "{good}");
        }
        for (bad, rule) in [
            ("gpu", "domain prefix"),
            ("Allot.io/gpu", "DNS subdomain"),
            ("kubernetes.io/gpu", "reserved"),
            ("allot.io/mig-1g.10gb+me", "letters, digits"),
            ("allot.io/-gpu", "starting and ending"),
            ("allot.io/", "1 to 63"),
        ] {
            let error = check_name(bad).expect_err(bad);
            assert!(error.rule.contains(rule), "{bad}: {}", error.rule);
        }
        assert_eq!(mig_resource_name("allot.io", "1g.10gb+me"), "allot.io/mig-1g.10gb.me");
    }

    #[test]
    fn device_ids_round_trip_and_foreign_ids_are_not_ours() {
        let gpu = "GPU-0b1c2d3e-0000-4000-8000-000000000001";
        let mig = Kind::Mig { profile: "3g.40gb".into() };
        assert_eq!(parse_id(&mig, &mig_id(gpu, 4)), Some(DeviceRef::MigSlot { gpu: gpu.into(), start: 4 }));
        assert_eq!(parse_id(&Kind::Share, &share_id(gpu, 7)), Some(DeviceRef::ShareUnit { gpu: gpu.into(), unit: 7 }));
        assert_eq!(parse_id(&Kind::Whole, gpu), Some(DeviceRef::Whole { gpu: gpu.into() }));
        assert_eq!(parse_id(&Kind::Share, &format!("{gpu}::100")), None);
        assert_eq!(parse_id(&Kind::Share, "nonsense"), None);
        assert_eq!(parse_id(&mig, &format!("{gpu}::7")), None);
        assert_eq!(parse_id(&Kind::Whole, &share_id(gpu, 1)), None);
        // The kubelet refuses ids over 63 characters.
        assert!(mig_id(gpu, 6).len() <= 63 && share_id(gpu, 99).len() <= 63);
    }

    #[test]
    fn share_demands_carry_a_proportional_memory_cap() {
        assert_eq!(
            demand(&Kind::Share, 25, Some(MiB(81_559))),
            Ok(GpuDemand::Share { compute: MilliGpu(250), memory: MiB(20_389) })
        );
        assert!(demand(&Kind::Share, 100, Some(MiB(1))).is_err());
        assert!(demand(&Kind::Mig { profile: "3g.40gb".into() }, 2, None).expect_err("two").contains("ask for 1"));
    }
}
