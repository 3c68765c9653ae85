//! Allocations: what a team asks for, and what the broker granted.
//!
//! A request is parsed into a [`ValidatedRequest`] once, at the edge; everything
//! after that (placement, the store, the node) can rely on its invariants.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::units::MiB;

/// A team's name: lowercase letters, digits and `-`, 1 to 63 characters, starting
/// with a letter (what fits in a DNS label, a cgroup name and an etcd key).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TeamName(String);

/// A name that does not follow the naming rules, with the rule it broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {input:?}: {rule}")]
pub struct NameError {
    pub what: &'static str,
    pub input: String,
    pub rule: &'static str,
}

fn check_label(what: &'static str, input: &str) -> Result<(), NameError> {
    let error = |rule| NameError { what, input: input.to_owned(), rule };
    if input.is_empty() || input.len() > 63 {
        return Err(error("use 1 to 63 characters"));
    }
    if !input.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(error("start with a lowercase letter"));
    }
    if !input.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') {
        return Err(error("use only lowercase letters, digits and '-'"));
    }
    if input.ends_with('-') {
        return Err(error("do not end with '-'"));
    }
    Ok(())
}

impl TeamName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for TeamName {
    type Err = NameError;
    fn from_str(input: &str) -> Result<Self, NameError> {
        check_label("team name", input)?;
        Ok(TeamName(input.to_owned()))
    }
}

impl TryFrom<String> for TeamName {
    type Error = NameError;
    fn try_from(input: String) -> Result<Self, NameError> {
        input.parse()
    }
}

impl From<TeamName> for String {
    fn from(name: TeamName) -> String {
        name.0
    }
}

impl fmt::Display for TeamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A node's name: like a hostname (letters, digits, `-`, `.`, `_`; 1 to 253).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeName(String);

impl NodeName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for NodeName {
    type Err = NameError;
    fn from_str(input: &str) -> Result<Self, NameError> {
        let error = |rule| NameError { what: "node name", input: input.to_owned(), rule };
        if input.is_empty() || input.len() > 253 {
            return Err(error("use 1 to 253 characters"));
        }
        if !input.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')) {
            return Err(error("use only letters, digits, '-', '.' and '_'"));
        }
        Ok(NodeName(input.to_owned()))
    }
}

impl TryFrom<String> for NodeName {
    type Error = NameError;
    fn try_from(input: String) -> Result<Self, NameError> {
        input.parse()
    }
}

impl From<NodeName> for String {
    fn from(name: NodeName) -> String {
        name.0
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An allocation's id: `a-` and 16 lowercase hex digits, made by the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AllocationId(u64);

impl AllocationId {
    pub fn from_u64(value: u64) -> Self {
        AllocationId(value)
    }
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl FromStr for AllocationId {
    type Err = NameError;
    fn from_str(input: &str) -> Result<Self, NameError> {
        let error = || NameError {
            what: "allocation id",
            input: input.to_owned(),
            rule: "expected a- and 16 hex digits, like a-00000000000000ff",
        };
        let hex = input.strip_prefix("a-").ok_or_else(error)?;
        if hex.len() != 16 || !hex.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()) {
            return Err(error());
        }
        u64::from_str_radix(hex, 16).map(AllocationId).map_err(|_| error())
    }
}

impl TryFrom<String> for AllocationId {
    type Error = NameError;
    fn try_from(input: String) -> Result<Self, NameError> {
        input.parse()
    }
}

impl From<AllocationId> for String {
    fn from(id: AllocationId) -> String {
        id.to_string()
    }
}

impl fmt::Display for AllocationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a-{:016x}", self.0)
    }
}

/// Thousandths of one GPU's compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MilliGpu(pub u32);

impl MilliGpu {
    pub const WHOLE: MilliGpu = MilliGpu(1000);
}

/// How the GPUs of a multi-GPU request must be connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Interconnect {
    /// Every pair of GPUs NVLink-connected (directly or through NVSwitches).
    Nvlink,
    /// Every pair under a common PCIe switch hierarchy (PIX or PXB), no host bridge between.
    PcieSwitch,
    /// All GPUs local to one NUMA node.
    Numa,
    /// Anywhere on one node.
    #[default]
    Any,
}

impl FromStr for Interconnect {
    type Err = String;
    fn from_str(input: &str) -> Result<Self, String> {
        match input {
            "nvlink" => Ok(Interconnect::Nvlink),
            "pcie-switch" => Ok(Interconnect::PcieSwitch),
            "numa" => Ok(Interconnect::Numa),
            "any" => Ok(Interconnect::Any),
            other => Err(format!("unknown interconnect {other:?}: use nvlink, pcie-switch, numa or any")),
        }
    }
}

impl fmt::Display for Interconnect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Interconnect::Nvlink => "nvlink",
            Interconnect::PcieSwitch => "pcie-switch",
            Interconnect::Numa => "numa",
            Interconnect::Any => "any",
        })
    }
}

/// What kind of GPU capacity is asked for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum GpuDemand {
    /// No GPU: a CPU-only request.
    None,
    /// Whole GPUs on one node. `models` empty means any model; otherwise the GPU's
    /// model must contain one of them (case-insensitive), like "H100".
    Whole { count: u32, models: Vec<String> },
    /// One MIG instance of this profile (like `3g.40gb`).
    Mig { profile: String },
    /// A share of one GPU: compute in thousandths and a GPU-memory cap.
    Share { compute: MilliGpu, memory: MiB },
}

/// A request that passed validation. Construct it with [`ValidatedRequest::new`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidatedRequest {
    pub team: TeamName,
    pub gpus: GpuDemand,
    /// Whole CPU cores.
    pub cpus: u32,
    pub memory: MiB,
    pub interconnect: Interconnect,
    /// Wants an RDMA NIC under the same PCIe switch as its GPUs (GPUDirect RDMA).
    pub rdma: bool,
    /// Each granted GPU has at least this much memory.
    pub min_gpu_memory: Option<MiB>,
    /// Who the allocation is for, in the words of the caller (a pod, a container):
    /// lets an external scheduler find its allocation again. Free text, at most 253 bytes.
    pub owner: Option<String>,
    /// Where it must land, when a scheduler outside Allot has already chosen the
    /// node (the kubelet, which asks the device plugin on its own node). Set
    /// with [`ValidatedRequest::pinned`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<Pin>,
    /// The caller's key for this create: the same key from the same team gets
    /// the allocation it made instead of a second one. Set with
    /// [`ValidatedRequest::with_request_id`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// A request's node, and the devices on it among which placement may choose.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    pub node: NodeName,
    /// Empty: any device of the node. Otherwise only these GPUs (and, for a MIG
    /// request, only these start slots where a selector names one).
    pub devices: Vec<DeviceSelector>,
}

/// One GPU by UUID, or one MIG slot on it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DeviceSelector {
    pub gpu_uuid: String,
    /// For a MIG request: the instance's first memory slice. `None` allows any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mig_start: Option<u32>,
}

impl Pin {
    /// Whether a request pinned here may use this GPU (by UUID).
    pub fn allows_gpu(&self, uuid: Option<&str>) -> bool {
        self.devices.is_empty()
            || uuid.is_some_and(|uuid| self.devices.iter().any(|selector| selector.gpu_uuid == uuid))
    }

    /// Whether a MIG instance may start at `start` on this GPU.
    pub fn allows_mig_start(&self, uuid: Option<&str>, start: u32) -> bool {
        self.devices.is_empty()
            || uuid.is_some_and(|uuid| {
                self.devices.iter().any(|selector| {
                    selector.gpu_uuid == uuid && selector.mig_start.is_none_or(|allowed| allowed == start)
                })
            })
    }
}

/// Why a request was refused before placement.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct RequestError {
    pub field: &'static str,
    pub problem: String,
}

impl ValidatedRequest {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        team: TeamName,
        gpus: GpuDemand,
        cpus: u32,
        memory: MiB,
        interconnect: Interconnect,
        rdma: bool,
        min_gpu_memory: Option<MiB>,
        owner: Option<String>,
    ) -> Result<Self, RequestError> {
        let error = |field, problem: String| Err(RequestError { field, problem });
        match &gpus {
            GpuDemand::None => {
                if cpus == 0 {
                    return error("cpus", "a request without GPUs must ask for at least one CPU core".into());
                }
                if rdma {
                    return error("rdma", "RDMA placement needs GPUs to be near".into());
                }
            }
            GpuDemand::Whole { count, models } => {
                if *count == 0 || *count > 64 {
                    return error("gpus", format!("{count} GPUs: ask for 1 to 64"));
                }
                if models.iter().any(|model| model.trim().is_empty()) {
                    return error("gpu_model", "an empty model name matches nothing".into());
                }
                if models.len() > 16 || models.iter().any(|model| model.len() > 128) {
                    return error("gpu_model", "at most 16 models of at most 128 bytes each".into());
                }
            }
            GpuDemand::Mig { profile } => {
                if profile.len() > 32 {
                    return error("mig", "a MIG profile name is at most 32 bytes, like 3g.40gb".into());
                }
                let valid = profile.split_once('.').is_some_and(|(compute, memory)| {
                    compute.strip_suffix('g').is_some_and(|n| n.parse::<u32>().is_ok())
                        && memory.trim_end_matches("+me").strip_suffix("gb").is_some_and(|n| n.parse::<u32>().is_ok())
                });
                if !valid {
                    return error("mig", format!("{profile:?} is not a MIG profile name like 3g.40gb or 1g.10gb+me"));
                }
                if interconnect != Interconnect::Any {
                    return error(
                        "interconnect",
                        "a MIG instance is one device; interconnect applies to several GPUs".into(),
                    );
                }
            }
            GpuDemand::Share { compute, memory } => {
                if compute.0 == 0 || compute.0 >= 1000 {
                    return error(
                        "share",
                        format!("{} milli-GPU: a share is 1 to 999; ask for whole GPUs instead", compute.0),
                    );
                }
                if memory.0 == 0 {
                    return error("gpu_memory", "a share needs a GPU-memory cap in MiB".into());
                }
                if interconnect != Interconnect::Any {
                    return error(
                        "interconnect",
                        "a share is part of one GPU; interconnect applies to several GPUs".into(),
                    );
                }
            }
        }
        if let Some(owner) = &owner
            && (owner.len() > 253 || owner.chars().any(char::is_control))
        {
            return error("owner", "at most 253 bytes without control characters".into());
        }
        Ok(ValidatedRequest {
            team,
            gpus,
            cpus,
            memory,
            interconnect,
            rdma,
            min_gpu_memory,
            owner,
            pin: None,
            request_id: None,
        })
    }

    /// The same request with the caller's idempotency key: 1 to 128 bytes, no
    /// whitespace or control characters.
    pub fn with_request_id(mut self, id: String) -> Result<Self, RequestError> {
        if id.is_empty() || id.len() > 128 || id.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(RequestError {
                field: "request_id",
                problem: format!("{id:?}: give 1 to 128 bytes without spaces or control characters, like a UUID"),
            });
        }
        self.request_id = Some(id);
        Ok(self)
    }

    /// Whether `other` asks for the same thing (everything but the request id).
    pub fn same_ask(&self, other: &ValidatedRequest) -> bool {
        let strip = |request: &ValidatedRequest| ValidatedRequest { request_id: None, ..request.clone() };
        strip(self) == strip(other)
    }

    /// The same request, allowed only on `pin.node` and its listed devices.
    pub fn pinned(mut self, pin: Pin) -> Result<Self, RequestError> {
        let error = |problem: String| Err(RequestError { field: "pin", problem });
        if pin.devices.len() > 4096 {
            return error(format!("{} devices: list at most 4096", pin.devices.len()));
        }
        if let Some(bad) =
            pin.devices.iter().find(|selector| selector.gpu_uuid.is_empty() || selector.gpu_uuid.len() > 96)
        {
            return error(format!("GPU UUID {:?}: give a GPU's UUID, like GPU-<36 characters>", bad.gpu_uuid));
        }
        let mig = matches!(self.gpus, GpuDemand::Mig { .. });
        if !mig && pin.devices.iter().any(|selector| selector.mig_start.is_some()) {
            return error("a MIG start slot is allowed only in a MIG request".into());
        }
        if matches!(self.gpus, GpuDemand::None) && !pin.devices.is_empty() {
            return error("a request without GPUs cannot name devices".into());
        }
        if let GpuDemand::Whole { count, .. } = &self.gpus
            && !pin.devices.is_empty()
        {
            let distinct: std::collections::BTreeSet<&str> =
                pin.devices.iter().map(|selector| selector.gpu_uuid.as_str()).collect();
            if distinct.len() < *count as usize {
                return error(format!("asks for {count} GPUs but allows only {} distinct GPUs", distinct.len()));
            }
        }
        self.pin = Some(pin);
        Ok(self)
    }
}

/// Lifecycle of an allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AllocationState {
    /// Accepted, waiting for capacity (the policy issue's queue).
    Pending,
    /// Placed and persisted; the node has been told.
    Bound,
    /// The node reports it applied the allocation.
    Enforced,
    /// Given back; capacity is free again.
    Released,
    /// Its node stopped heartbeating.
    Lost,
    /// Taken back to serve a team's guarantee.
    Preempted,
}

impl AllocationState {
    /// Whether the allocation holds capacity.
    pub fn holds_capacity(self) -> bool {
        matches!(self, AllocationState::Bound | AllocationState::Enforced | AllocationState::Lost)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AllocationState::Pending => "pending",
            AllocationState::Bound => "bound",
            AllocationState::Enforced => "enforced",
            AllocationState::Released => "released",
            AllocationState::Lost => "lost",
            AllocationState::Preempted => "preempted",
        }
    }
}

/// A MIG instance granted on a GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigGrant {
    pub profile: String,
    pub profile_id: u32,
    /// First memory slice and how many it takes.
    pub start: u32,
    pub size: u32,
    /// The GPU's MIG layout must change first (MIG enabled, or other unowned
    /// instances removed) before this instance can be created.
    pub recarve: bool,
}

/// A share of a GPU granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareGrant {
    pub compute: MilliGpu,
    pub memory: MiB,
}

/// One GPU (whole, a MIG instance on it, or a share of it) in an allocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuGrant {
    pub index: u32,
    pub uuid: Option<String>,
    pub pci_bus_id: String,
    pub mig: Option<MigGrant>,
    pub share: Option<ShareGrant>,
    /// The RDMA NIC nearest this GPU, when the request asked for RDMA.
    pub nic: Option<String>,
}

/// Where an allocation landed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    pub node: NodeName,
    pub gpus: Vec<GpuGrant>,
    /// OS indices of the PUs of the granted cores.
    pub cpus: Vec<u32>,
    /// Core indices (hwloc logical) granted.
    pub cores: Vec<u32>,
    pub memory: MiB,
    pub numa_nodes: Vec<u32>,
}

/// An allocation as the broker stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub id: AllocationId,
    pub request: ValidatedRequest,
    pub state: AllocationState,
    pub binding: Option<Binding>,
    /// Why it was placed where it is (placement's explanation, for `alloc explain`).
    pub explanation: String,
    /// Milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    /// Incremented on every change, so a node can tell new from stale.
    pub generation: u64,
    /// How it stands with its team's quota (borrowed, being reclaimed).
    #[serde(default)]
    pub quota: QuotaStanding,
}

/// How an allocation stands with its team's quota.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaStanding {
    /// It uses capacity beyond its team's guarantee, so it may be reclaimed.
    pub borrowed: bool,
    /// Being reclaimed: preempted at this time (ms since the epoch) unless released first.
    pub reclaim_at_ms: Option<u64>,
    /// The waiting allocation it is reclaimed for.
    pub reclaim_for: Option<AllocationId>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_checked_and_do_not_change_the_ask() {
        let request = ValidatedRequest::new(
            "ml".parse().expect("team"),
            GpuDemand::Whole { count: 1, models: vec![] },
            2,
            MiB(1024),
            Interconnect::Any,
            false,
            None,
            None,
        )
        .expect("request");
        for bad in ["", "a b", "tab\there", &"x".repeat(129)] {
            let error = request.clone().with_request_id(bad.to_owned()).expect_err(bad);
            assert_eq!(error.field, "request_id");
        }
        let keyed = request.clone().with_request_id("job-7".into()).expect("a good id");
        assert!(keyed.same_ask(&request) && request.same_ask(&keyed));
        let bigger = ValidatedRequest { cpus: 4, ..keyed.clone() };
        assert!(!bigger.same_ask(&keyed));
    }

    #[test]
    fn names_follow_their_rules() {
        assert!("vision".parse::<TeamName>().is_ok());
        assert!("team-7".parse::<TeamName>().is_ok());
        for bad in ["", "Vision", "7team", "a b", "x-", &"a".repeat(64)] {
            assert!(bad.parse::<TeamName>().is_err(), "{bad:?}");
        }
        assert!("dgx-h100.rack3_a".parse::<NodeName>().is_ok());
        assert!("no/slash".parse::<NodeName>().is_err());
    }

    #[test]
    fn allocation_ids_round_trip_and_reject_garbage() {
        let id = AllocationId::from_u64(255);
        assert_eq!(id.to_string(), "a-00000000000000ff");
        assert_eq!(id.to_string().parse::<AllocationId>(), Ok(id));
        for bad in ["", "a-ff", "b-00000000000000ff", "a-00000000000000FF", "a-0000000000000zff"] {
            assert!(bad.parse::<AllocationId>().is_err(), "{bad:?}");
        }
    }

    fn request(gpus: GpuDemand, cpus: u32, interconnect: Interconnect) -> Result<ValidatedRequest, RequestError> {
        ValidatedRequest::new("ml".parse().expect("team"), gpus, cpus, MiB(0), interconnect, false, None, None)
    }

    #[test]
    fn requests_are_checked_once_with_the_field_named() {
        assert!(request(GpuDemand::Whole { count: 4, models: vec![] }, 8, Interconnect::Nvlink).is_ok());
        assert_eq!(
            request(GpuDemand::Whole { count: 0, models: vec![] }, 0, Interconnect::Any).map_err(|e| e.field),
            Err("gpus")
        );
        assert_eq!(request(GpuDemand::None, 0, Interconnect::Any).map_err(|e| e.field), Err("cpus"));
        assert!(request(GpuDemand::Mig { profile: "3g.40gb".into() }, 0, Interconnect::Any).is_ok());
        assert!(request(GpuDemand::Mig { profile: "1g.10gb+me".into() }, 0, Interconnect::Any).is_ok());
        assert_eq!(
            request(GpuDemand::Mig { profile: "big".into() }, 0, Interconnect::Any).map_err(|e| e.field),
            Err("mig")
        );
        let share = GpuDemand::Share { compute: MilliGpu(250), memory: MiB(10_000) };
        assert!(request(share.clone(), 0, Interconnect::Any).is_ok());
        assert_eq!(request(share, 0, Interconnect::Nvlink).map_err(|e| e.field), Err("interconnect"));
        let whole_share = GpuDemand::Share { compute: MilliGpu(1000), memory: MiB(1) };
        assert_eq!(request(whole_share, 0, Interconnect::Any).map_err(|e| e.field), Err("share"));
    }
}
