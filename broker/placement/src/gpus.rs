//! One node's GPUs as placement sees them: who uses each one, whether it is healthy
//! or throttling, whether it is the right model, and which RDMA NIC sits near it.

use allot_api::topology::{ConnectionLevel, Gpu, GpuHealth, MigMode, NodeInventory};

use crate::explain::GpuExclusions;
use crate::usage::NodeUsage;

/// Whether placement looks at the node as it is now, or as it could ever be: with
/// nothing allocated, every GPU repaired and MIG modes changeable. The second tells
/// an impossible request from one that only lacks capacity today.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Now,
    Ever,
}

/// What a request asks of each GPU it gets, whatever the kind of grant.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GpuFilter<'r> {
    pub models: &'r [String],
    pub min_memory: Option<allot_api::units::MiB>,
    pub rdma: bool,
    /// The devices a pinned request may use (see `allot_api::allocation::Pin`).
    pub pin: Option<&'r allot_api::allocation::Pin>,
}

/// Whether `model` contains one of `wanted`, ignoring ASCII case; an empty list
/// accepts every model. GPU model names are ASCII, so ASCII case folding is enough
/// and needs no allocation.
pub(crate) fn model_matches(model: &str, wanted: &[String]) -> bool {
    wanted.is_empty() || wanted.iter().any(|needle| contains_ignore_ascii_case(model, needle.trim()))
}

fn contains_ignore_ascii_case(haystack: &str, needle: &str) -> bool {
    let (haystack, needle) = (haystack.as_bytes(), needle.as_bytes());
    if needle.is_empty() {
        return true;
    }
    haystack.windows(needle.len()).any(|window| window.eq_ignore_ascii_case(needle))
}

pub(crate) fn is_unhealthy(gpu: &Gpu) -> bool {
    matches!(gpu.health, GpuHealth::Unhealthy { .. })
}

pub(crate) fn is_throttling(gpu: &Gpu) -> bool {
    gpu.telemetry.as_ref().is_some_and(|telemetry| telemetry.is_throttling())
}

/// Whether the GPU is partitioned with MIG now, will be after its next reset, or
/// will be for an allocation that already owns an instance on it.
pub(crate) fn mig_active(gpu: &Gpu, usage: &NodeUsage) -> bool {
    gpu.mig.as_ref().is_some_and(|mig| mig.mode == MigMode::Enabled || mig.pending_mode == MigMode::Enabled)
        || !usage.mig_slots(gpu.index).is_empty()
}

/// Checks what every kind of grant asks of a GPU, except the RDMA NIC (dearer to
/// find, so callers check [`has_rdma_nic`] last): model, memory and health. Counts
/// the reason in `excluded` and returns false when one fails.
pub(crate) fn passes_filter(gpu: &Gpu, filter: &GpuFilter<'_>, mode: Mode, excluded: &mut GpuExclusions) -> bool {
    if filter.pin.is_some_and(|pin| !pin.allows_gpu(gpu.uuid.as_deref())) {
        excluded.not_listed += 1;
        return false;
    }
    if !model_matches(&gpu.model, filter.models) {
        excluded.wrong_model += 1;
        return false;
    }
    if let Some(min_memory) = filter.min_memory
        && gpu.memory_mib.is_none_or(|memory| memory < min_memory)
    {
        excluded.too_small += 1;
        return false;
    }
    if mode == Mode::Now && is_unhealthy(gpu) {
        excluded.unhealthy += 1;
        return false;
    }
    true
}

/// Whether an RDMA request can have this GPU (position): it needs an RDMA NIC
/// nearby. Counts the reason in `excluded` when not.
pub(crate) fn has_rdma_nic(
    inventory: &NodeInventory,
    position: usize,
    filter: &GpuFilter<'_>,
    excluded: &mut GpuExclusions,
) -> bool {
    if filter.rdma && rdma_nics(inventory, position).next().is_none() {
        excluded.no_rdma_nic += 1;
        return false;
    }
    true
}

/// RDMA-capable NICs under the same PCIe switch hierarchy as the GPU (PIX or PXB),
/// as (NIC position, level).
pub(crate) fn rdma_nics(inventory: &NodeInventory, gpu: usize) -> impl Iterator<Item = (usize, ConnectionLevel)> + '_ {
    inventory.nics.iter().enumerate().filter(|(_, nic)| nic.rdma).filter_map(move |(position, _)| {
        match inventory.gpu_nic_level(gpu, position) {
            Some(level @ (ConnectionLevel::Pix | ConnectionLevel::Pxb)) => Some((position, level)),
            _ => None,
        }
    })
}

/// The cost of a GPU's nearest RDMA NIC: 0 for PIX, 1 for PXB, 2 for none.
pub(crate) fn rdma_cost(inventory: &NodeInventory, gpu: usize) -> u32 {
    rdma_nics(inventory, gpu).map(|(_, level)| u32::from(level != ConnectionLevel::Pix)).min().unwrap_or(2)
}

/// Picks an RDMA NIC for each GPU (positions): the closest one, preferring a NIC no
/// other GPU of this grant uses yet, then the first in inventory order.
pub(crate) fn assign_nics(inventory: &NodeInventory, gpus: &[usize]) -> Vec<Option<(usize, ConnectionLevel)>> {
    let mut taken: Vec<usize> = Vec::new();
    gpus.iter()
        .map(|gpu| {
            let best = rdma_nics(inventory, *gpu)
                .min_by_key(|(position, level)| (level.rank(), taken.contains(position), *position));
            if let Some((position, _)) = best {
                taken.push(position);
            }
            best
        })
        .collect()
}

/// GPU positions in index order, so that ties break by GPU index whatever order the
/// inventory lists them in. Inventories are usually in index order already; then
/// nothing is sorted or allocated.
pub(crate) fn positions_by_index(inventory: &NodeInventory) -> Positions {
    let gpus = &inventory.gpus;
    if gpus.windows(2).all(|pair| pair[0].index < pair[1].index) {
        return Positions::InOrder(0..gpus.len());
    }
    let mut positions: Vec<usize> = (0..gpus.len()).collect();
    positions.sort_by_key(|position| (gpus[*position].index, *position));
    Positions::Sorted(positions.into_iter())
}

/// The iterator of [`positions_by_index`].
pub(crate) enum Positions {
    InOrder(std::ops::Range<usize>),
    Sorted(std::vec::IntoIter<usize>),
}

impl Iterator for Positions {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        match self {
            Positions::InOrder(range) => range.next(),
            Positions::Sorted(positions) => positions.next(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_model(model: &str, wanted: &[&str], expected: bool) {
        let wanted: Vec<String> = wanted.iter().map(|w| w.to_string()).collect();
        assert_eq!(model_matches(model, &wanted), expected, "{model} against {wanted:?}");
    }

    #[test]
    fn models_match_by_substring_ignoring_case() {
        check_model("NVIDIA H100 80GB HBM3", &[], true);
        check_model("NVIDIA H100 80GB HBM3", &["h100"], true);
        check_model("NVIDIA H100 80GB HBM3", &["A100", "H100"], true);
        check_model("NVIDIA A100-SXM4-80GB", &["H100"], false);
        check_model("NVIDIA L40S", &["l40s "], true);
        check_model("NVIDIA L40", &["L40S"], false);
    }
}
