//! What a pod asks Allot for: pure, from the pod's containers, its annotations
//! and its namespace's team. Every problem names the resource or annotation and
//! what is allowed, so the pod's event tells its owner how to fix it.

use std::collections::BTreeMap;

use allot_api::allocation::{GpuDemand, Interconnect, MilliGpu, TeamName, ValidatedRequest};
use allot_api::proto;
use allot_api::units::MiB;

/// The annotations a pod may carry, and what they mean.
pub const INTERCONNECT: &str = "allot.io/interconnect";
pub const RDMA: &str = "allot.io/rdma";
pub const GPU_MODEL: &str = "allot.io/gpu-model";
pub const MIN_GPU_MEMORY: &str = "allot.io/min-gpu-memory";
pub const SHARE_MEMORY: &str = "allot.io/gpu-memory";
/// Pods with the same gang name in a namespace are admitted all or none, once
/// at least `gang-size` of them exist.
pub const GANG: &str = "allot.io/gang";
pub const GANG_SIZE: &str = "allot.io/gang-size";
/// Written at bind time: the allocation and its devices.
pub const ALLOCATION: &str = "allot.io/allocation";
pub const DEVICES: &str = "allot.io/devices";
/// Written when the broker admits a waiting pod, so kube-scheduler tries it again.
pub const ADMITTED: &str = "allot.io/admitted";
/// Written on waiting gang pods when capacity was released, for the same reason.
pub const RETRY: &str = "allot.io/retry";

/// The pod as Allot names it: the owner of its allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// Owners start with this, so the controller knows which allocations are pods'.
pub const OWNER_PREFIX: &str = "pod:";

impl PodRef {
    /// `pod:<namespace>/<name>/<uid>`, within the broker's 253 bytes: a very long
    /// name is cut (the UID alone is unique).
    pub fn owner(&self) -> String {
        let room = 253usize.saturating_sub(OWNER_PREFIX.len() + self.namespace.len() + self.uid.len() + 2);
        let mut name = self.name.as_str();
        if name.len() > room {
            let mut end = room;
            while !name.is_char_boundary(end) {
                end -= 1;
            }
            name = &name[..end];
        }
        format!("{OWNER_PREFIX}{}/{name}/{}", self.namespace, self.uid)
    }

    /// The UID of a pod's allocation owner, or None for another owner.
    pub fn uid_of_owner(owner: &str) -> Option<&str> {
        owner.strip_prefix(OWNER_PREFIX)?.rsplit_once('/').map(|(_, uid)| uid)
    }
}

/// Per container: the resource limits (or requests) by name, as quantities.
pub type Resources = BTreeMap<String, String>;

/// The Allot resources of a pod, named in a domain (`allot.io`). A GPU share is
/// placed here only with its own memory cap (`allot.io/gpu-memory`); without
/// one the device plugin places it, sizing its memory like its compute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    pub gpu: String,
    pub mig_prefix: String,
    pub share: String,
}

impl Names {
    pub fn new(domain: &str) -> Names {
        Names {
            gpu: format!("{domain}/gpu"),
            mig_prefix: format!("{domain}/mig-"),
            share: format!("{domain}/gpu-share"),
        }
    }

    /// Whether a resource name is one of Allot's.
    pub fn is_allot(&self, resource: &str) -> bool {
        resource == self.gpu || resource == self.share || resource.starts_with(&self.mig_prefix)
    }
}

/// A pod that asks for no Allot resource.
pub const NOT_OURS: &str = "asks for no Allot resource";

/// Whether the extender places this pod: it asks for whole GPUs or a MIG
/// instance, or for a share with its own memory cap. Anything else (a share
/// without a cap, no Allot resource) is bound as kube-scheduler chose.
pub fn manages(names: &Names, containers: &[Resources], annotations: &BTreeMap<String, String>) -> bool {
    let asks = |wanted: &dyn Fn(&str) -> bool| {
        containers.iter().flatten().any(|(resource, quantity)| wanted(resource) && quantity.trim() != "0")
    };
    asks(&|resource| resource == names.gpu || resource.starts_with(&names.mig_prefix))
        || (asks(&|resource| resource == names.share) && annotations.contains_key(SHARE_MEMORY))
}

fn count(resource: &str, quantity: &str) -> Result<u64, String> {
    quantity.trim().parse::<u64>().map_err(|_| {
        format!("resource {resource}: {quantity:?} is not a whole number (extended resources are counted in units)")
    })
}

/// The allocation a pod asks for, or every problem found.
pub fn spec_for(
    names: &Names,
    team: &str,
    pod: &PodRef,
    containers: &[Resources],
    annotations: &BTreeMap<String, String>,
) -> Result<proto::AllocationSpec, Vec<String>> {
    let mut problems = Vec::new();
    let mut whole = 0u64;
    let mut share = 0u64;
    let mut mig: BTreeMap<String, u64> = BTreeMap::new();
    for resources in containers {
        for (resource, quantity) in resources {
            if !names.is_allot(resource) {
                continue;
            }
            let amount = match count(resource, quantity) {
                Ok(amount) => amount,
                Err(problem) => {
                    problems.push(problem);
                    continue;
                }
            };
            // Saturating: counts from several containers that add up past u64 stay
            // absurd and are refused below, where wrapping would ask for a few GPUs.
            if resource == &names.gpu {
                whole = whole.saturating_add(amount);
            } else if resource == &names.share {
                share = share.saturating_add(amount);
            } else if let Some(profile) = resource.strip_prefix(&names.mig_prefix) {
                let total = mig.entry(profile.to_owned()).or_default();
                *total = total.saturating_add(amount);
            }
        }
    }
    mig.retain(|_, amount| *amount > 0);
    let kinds = usize::from(whole > 0) + usize::from(share > 0) + mig.len();
    if kinds == 0 && problems.is_empty() {
        return Err(vec![NOT_OURS.into()]);
    }
    if kinds > 1 {
        problems.push(format!(
            "a pod asks Allot for one kind of GPU: whole GPUs ({}), one MIG profile ({}<profile>) or a share ({}); \
             this one asks for more than one",
            names.gpu, names.mig_prefix, names.share
        ));
    }
    if let Some((profile, amount)) = mig.iter().next()
        && *amount != 1
    {
        problems.push(format!(
            "resource {}{profile}: a pod gets one MIG instance; ask for 1, or use several pods",
            names.mig_prefix
        ));
    }
    if share > 100 {
        problems.push(format!(
            "resource {}: {share} hundredths is more than one GPU; ask for whole GPUs with {}",
            names.share, names.gpu
        ));
    }
    let annotation = |key: &str| annotations.get(key).map(|value| value.trim());
    let interconnect = match annotation(INTERCONNECT) {
        None | Some("") | Some("any") => Interconnect::Any,
        Some("nvlink") => Interconnect::Nvlink,
        Some("pcie-switch") => Interconnect::PcieSwitch,
        Some("numa") => Interconnect::Numa,
        Some(other) => {
            problems.push(format!("annotation {INTERCONNECT}: {other:?} is not one of nvlink, pcie-switch, numa, any"));
            Interconnect::Any
        }
    };
    let rdma = match annotation(RDMA) {
        None | Some("") | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            problems.push(format!("annotation {RDMA}: {other:?} is not true or false"));
            false
        }
    };
    let models: Vec<String> = annotation(GPU_MODEL)
        .map(|value| value.split(',').map(str::trim).filter(|model| !model.is_empty()).map(str::to_owned).collect())
        .unwrap_or_default();
    let mebibytes = |key: &str, problems: &mut Vec<String>| match annotation(key) {
        None | Some("") => None,
        Some(value) => match value.parse::<u64>() {
            Ok(amount) if amount > 0 => Some(amount),
            _ => {
                problems.push(format!("annotation {key}: {value:?} is not a positive whole number of MiB"));
                None
            }
        },
    };
    let min_gpu_memory = mebibytes(MIN_GPU_MEMORY, &mut problems);
    let share_memory = mebibytes(SHARE_MEMORY, &mut problems);
    if !models.is_empty() && whole == 0 {
        problems.push(format!("annotation {GPU_MODEL}: applies to whole GPUs ({}) only", names.gpu));
    }
    if share_memory.is_some() && share == 0 {
        problems.push(format!("annotation {SHARE_MEMORY}: applies to GPU shares ({}) only", names.share));
    }
    let team: TeamName = match team.parse() {
        Ok(team) => team,
        Err(error) => {
            problems.push(format!("the namespace's team: {error}"));
            return Err(problems);
        }
    };
    if !problems.is_empty() {
        return Err(problems);
    }
    let gpus = if whole > 0 {
        GpuDemand::Whole { count: whole.min(u32::MAX as u64) as u32, models }
    } else if let Some(profile) = mig.keys().next() {
        GpuDemand::Mig { profile: profile.clone() }
    } else {
        // Hundredths of a GPU, with the pod's own memory cap.
        GpuDemand::Share { compute: MilliGpu(share as u32 * 10), memory: MiB(share_memory.unwrap_or(0)) }
    };
    if matches!(gpus, GpuDemand::Share { memory: MiB(0), .. }) {
        // No cap of its own: the device plugin places it, its memory the same
        // fraction of the GPU as its compute.
        return Err(vec![NOT_OURS.into()]);
    }
    let request =
        ValidatedRequest::new(team, gpus, 0, MiB(0), interconnect, rdma, min_gpu_memory.map(MiB), Some(pod.owner()))
            .map_err(|error| vec![format!("{}: {}", error.field, error.problem)])?;
    Ok((&request).into())
}

/// A pod's gang: its name and how many members must be placed together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gang {
    pub name: String,
    pub size: u32,
}

/// The gang a pod's annotations put it in, if any; both annotations or neither.
pub fn gang_of(annotations: &BTreeMap<String, String>) -> Result<Option<Gang>, String> {
    let name = annotations.get(GANG).map(|value| value.trim()).filter(|value| !value.is_empty());
    let size = annotations.get(GANG_SIZE).map(|value| value.trim());
    match (name, size) {
        (None, None) => Ok(None),
        (Some(name), Some(size)) => match size.parse::<u32>() {
            Ok(size) if (1..=10_000).contains(&size) => Ok(Some(Gang { name: name.to_owned(), size })),
            _ => Err(format!("annotation {GANG_SIZE}: {size:?} is not a whole number from 1 to 10000")),
        },
        (Some(_), None) => Err(format!("annotation {GANG} needs {GANG_SIZE}: how many pods start together")),
        (None, Some(_)) => Err(format!("annotation {GANG_SIZE} needs {GANG}: the gang's name")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> PodRef {
        PodRef {
            namespace: "vision".into(),
            name: "train-0".into(),
            uid: "6f1c2d9e-0000-4000-8000-000000000001".into(),
        }
    }

    fn containers(pairs: &[&[(&str, &str)]]) -> Vec<Resources> {
        pairs
            .iter()
            .map(|container| container.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect())
            .collect()
    }

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(key, value)| (key.to_string(), value.to_string())).collect()
    }

    #[test]
    fn whole_gpus_add_up_across_containers_and_carry_the_constraints() {
        let names = Names::new("allot.io");
        let spec = spec_for(
            &names,
            "vision",
            &pod(),
            &containers(&[&[("allot.io/gpu", "4"), ("cpu", "8")], &[("allot.io/gpu", "4")]]),
            &annotations(&[(INTERCONNECT, "nvlink"), (GPU_MODEL, "H100, A100"), (RDMA, "true")]),
        )
        .expect("valid");
        let request = ValidatedRequest::try_from(spec.clone()).expect("round trip");
        assert_eq!(request.gpus, GpuDemand::Whole { count: 8, models: vec!["H100".into(), "A100".into()] });
        assert_eq!(request.interconnect, Interconnect::Nvlink);
        assert!(request.rdma);
        assert_eq!(request.owner.as_deref(), Some("pod:vision/train-0/6f1c2d9e-0000-4000-8000-000000000001"));
        assert_eq!(request.team.as_str(), "vision");
    }

    #[test]
    fn mig_and_shares_become_their_demands() {
        let names = Names::new("allot.io");
        let spec = spec_for(&names, "nlp", &pod(), &containers(&[&[("allot.io/mig-3g.40gb", "1")]]), &BTreeMap::new())
            .expect("valid");
        let request = ValidatedRequest::try_from(spec.clone()).expect("round trip");
        assert_eq!(request.gpus, GpuDemand::Mig { profile: "3g.40gb".into() });
        let spec = spec_for(
            &names,
            "nlp",
            &pod(),
            &containers(&[&[("allot.io/gpu-share", "25")]]),
            &annotations(&[(SHARE_MEMORY, "20480")]),
        )
        .expect("valid");
        let request = ValidatedRequest::try_from(spec.clone()).expect("round trip");
        assert_eq!(request.gpus, GpuDemand::Share { compute: MilliGpu(250), memory: MiB(20480) });
    }

    #[test]
    fn problems_name_the_annotation_or_resource_and_what_is_allowed() {
        let names = Names::new("allot.io");
        let problems = spec_for(
            &names,
            "vision",
            &pod(),
            &containers(&[&[("allot.io/gpu", "2"), ("allot.io/mig-1g.10gb", "1")]]),
            &annotations(&[(INTERCONNECT, "infiniband"), (RDMA, "yes"), (MIN_GPU_MEMORY, "-3")]),
        )
        .expect_err("invalid");
        let text = problems.join("\n");
        assert!(
            text.contains(
                "annotation allot.io/interconnect: \"infiniband\" is not one of nvlink, pcie-switch, numa, any"
            )
        );
        assert!(text.contains("annotation allot.io/rdma: \"yes\" is not true or false"));
        assert!(text.contains("annotation allot.io/min-gpu-memory"));
        assert!(text.contains("one kind of GPU"));
        assert_eq!(
            spec_for(&names, "vision", &pod(), &containers(&[&[("allot.io/gpu-share", "30")]]), &BTreeMap::new()),
            Err(vec![NOT_OURS.to_owned()]),
            "a share without its own memory cap is the device plugin's"
        );
        assert!(!manages(&names, &containers(&[&[("allot.io/gpu-share", "30")]]), &BTreeMap::new()));
        assert!(manages(&names, &containers(&[&[("allot.io/gpu-share", "30")]]), &annotations(&[(SHARE_MEMORY, "1")])));
        assert!(manages(&names, &containers(&[&[("allot.io/mig-1g.10gb", "1")]]), &BTreeMap::new()));
        assert!(!manages(&names, &containers(&[&[("allot.io/gpu", "0"), ("cpu", "2")]]), &BTreeMap::new()));
        let problems = spec_for(&names, "vision", &pod(), &containers(&[&[("allot.io/gpu", "1.5")]]), &BTreeMap::new())
            .expect_err("fraction");
        assert!(problems[0].contains("not a whole number"));
        let problems = spec_for(&names, "Vision!", &pod(), &containers(&[&[("allot.io/gpu", "1")]]), &BTreeMap::new())
            .expect_err("bad team");
        assert!(problems[0].contains("team"));
        assert_eq!(
            spec_for(&names, "vision", &pod(), &containers(&[&[("cpu", "1")]]), &BTreeMap::new()),
            Err(vec![NOT_OURS.to_owned()])
        );
    }

    #[test]
    fn counts_that_add_up_past_u64_are_refused_not_wrapped() {
        let names = Names::new("allot.io");
        let huge = "18446744073709551615";
        for resource in ["allot.io/gpu", "allot.io/gpu-share", "allot.io/mig-3g.40gb"] {
            let problems = spec_for(
                &names,
                "vision",
                &pod(),
                &containers(&[&[(resource, "4")], &[(resource, huge)]]),
                &annotations(&[(SHARE_MEMORY, "1024")]),
            )
            .expect_err(resource);
            assert!(!problems.is_empty(), "{resource}");
        }
        let problems = spec_for(
            &names,
            "vision",
            &pod(),
            &containers(&[&[("allot.io/gpu", "4")], &[("allot.io/gpu", huge)]]),
            &BTreeMap::new(),
        )
        .expect_err("too many GPUs");
        assert_eq!(problems, vec!["gpus: 4294967295 GPUs: ask for 1 to 64".to_owned()]);
    }

    #[test]
    fn a_gang_needs_its_name_and_size() {
        assert_eq!(gang_of(&BTreeMap::new()), Ok(None));
        assert_eq!(
            gang_of(&annotations(&[(GANG, "train"), (GANG_SIZE, "4")])),
            Ok(Some(Gang { name: "train".into(), size: 4 }))
        );
        assert!(gang_of(&annotations(&[(GANG, "train")])).expect_err("no size").contains(GANG_SIZE));
        assert!(gang_of(&annotations(&[(GANG_SIZE, "4")])).expect_err("no name").contains(GANG));
        assert!(gang_of(&annotations(&[(GANG, "train"), (GANG_SIZE, "0")])).is_err());
    }

    #[test]
    fn owners_fit_the_broker_and_give_back_the_uid() {
        let long = PodRef { namespace: "n".repeat(63), name: "x".repeat(253), uid: pod().uid };
        let owner = long.owner();
        assert!(owner.len() <= 253, "{}", owner.len());
        assert_eq!(PodRef::uid_of_owner(&owner), Some(pod().uid.as_str()));
        assert_eq!(PodRef::uid_of_owner("kubelet:node-1/allot.io/gpu"), None);
    }
}
