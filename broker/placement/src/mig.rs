//! MIG instances: which GPU and start slot a MIG request gets.
//!
//! A GPU's occupied memory slices are those of the instances allocations own.
//! Instances in the inventory that no allocation owns are orphans the node daemon
//! will remove: their slices count as free, and a slot that overlaps them needs a
//! re-carve. Among the slots that fit without a re-carve, placement prefers the one
//! that blocks the fewest instances of the largest profiles (so a 3g goes where a 4g
//! and a 7g would not have fitted anyway), then an orphan of exactly the requested
//! profile and start (reused, not carved anew), then GPUs already partitioned.

use allot_api::allocation::MigGrant;
use allot_api::topology::{Gpu, MigInstance, MigMode, MigProfile};

use crate::explain::{GpuExclusions, NodeRefusal};
use crate::gpus::{GpuFilter, Mode, has_rdma_nic, is_throttling, passes_filter};
use crate::node::NodeCtx;
use crate::score::{BlockedProfile, MigScore};
use crate::usage::MigSlot;

#[derive(Debug, Clone, Copy)]
pub(crate) struct MigAsk<'r> {
    pub profile: &'r str,
    /// `min_memory` applies to the instance's memory, the device the work sees.
    pub filter: GpuFilter<'r>,
    pub cpus: u32,
}

#[derive(Debug, Clone)]
pub(crate) struct MigOffer {
    pub score: MigScore,
    pub position: usize,
    pub grant: MigGrant,
}

pub(crate) fn evaluate(node: &NodeCtx<'_>, ask: &MigAsk<'_>) -> Result<MigOffer, NodeRefusal> {
    let inventory = node.inventory;
    let mut excluded = GpuExclusions::default();
    let mut offers_profile = false;
    let mut best: Option<MigOffer> = None;
    // The GPU filter minus memory, which is checked against the profile instead.
    let filter = GpuFilter { min_memory: None, ..ask.filter };
    for state in node.gpus() {
        let position = state.position;
        let gpu = &inventory.gpus[position];
        let Some((mig, profile)) =
            gpu.mig.as_ref().and_then(|mig| Some((mig, mig.profiles.iter().find(|p| p.name == ask.profile)?)))
        else {
            excluded.no_mig_profile += 1;
            continue;
        };
        offers_profile = true;
        if !passes_filter(gpu, &filter, node.mode, &mut excluded) {
            continue;
        }
        if ask.filter.min_memory.is_some_and(|min_memory| profile.memory_mib < min_memory) {
            excluded.too_small += 1;
            continue;
        }
        if node.mode == Mode::Now && (node.usage.is_whole(gpu.index) || node.usage.share(gpu.index).is_some()) {
            excluded.in_use += 1;
            continue;
        }
        if !has_rdma_nic(inventory, position, &ask.filter, &mut excluded) {
            continue;
        }
        let owned: &[MigSlot] = if node.mode == Mode::Now { node.usage.mig_slots(gpu.index) } else { &[] };
        let layout = Layout::new(&mig.profiles, owned);
        let orphans: Vec<&MigInstance> = if node.mode == Mode::Now {
            mig.instances.iter().filter(|instance| !owned.iter().any(|slot| same_slot(slot, instance))).collect()
        } else {
            Vec::new()
        };
        let mut fitted = false;
        for start in sorted_starts(profile) {
            if ask.filter.pin.is_some_and(|pin| !pin.allows_mig_start(gpu.uuid.as_deref(), start)) {
                continue;
            }
            let Some(after) = layout.place(profile, start) else { continue };
            fitted = true;
            let offer = candidate(node, ask, gpu, position, profile, start, &layout, &after, &orphans, owned);
            if best.as_ref().is_none_or(|best| offer.score < best.score) {
                best = Some(offer);
            }
        }
        if !fitted {
            excluded.full += 1;
        }
    }
    match best {
        Some(offer) => Ok(offer),
        None if !offers_profile => Err(NodeRefusal::NoMigProfile { profile: ask.profile.to_owned() }),
        None => Err(NodeRefusal::NoMigSlot { profile: ask.profile.to_owned(), excluded }),
    }
}

#[allow(clippy::too_many_arguments)]
fn candidate(
    node: &NodeCtx<'_>,
    ask: &MigAsk<'_>,
    gpu: &Gpu,
    position: usize,
    profile: &MigProfile,
    start: u32,
    before: &Layout<'_>,
    after: &Layout<'_>,
    orphans: &[&MigInstance],
    owned: &[MigSlot],
) -> MigOffer {
    let size = profile.memory_slices;
    let reuses_orphan = orphans
        .iter()
        .any(|orphan| orphan.start == start && orphan.size == size && orphan.profile_id == profile.profile_id);
    let in_the_way = !reuses_orphan && orphans.iter().any(|orphan| overlaps(orphan.start, orphan.size, start, size));
    let mig_enabled = gpu.mig.as_ref().is_some_and(|mig| mig.mode == MigMode::Enabled);
    let recarve = node.mode == Mode::Now && (!mig_enabled || in_the_way);
    let gpu_free = !node.usage.gpu_in_use(gpu.index) || node.mode == Mode::Ever;
    let score = MigScore {
        recarve,
        throttling: node.mode == Mode::Now && is_throttling(gpu),
        cores_spill: node.cores_spill(std::iter::once(gpu.numa_node), ask.cpus),
        reuses_orphan,
        blocked: before.blocked_by(after),
        gpu_in_use: !owned.is_empty(),
        free_gpus_after: node.free_gpus().saturating_sub(u32::from(gpu_free)),
    };
    let grant = MigGrant { profile: profile.name.clone(), profile_id: profile.profile_id, start, size, recarve };
    MigOffer { score, position, grant }
}

fn same_slot(slot: &MigSlot, instance: &MigInstance) -> bool {
    slot.start == instance.start && slot.size == instance.size
}

fn overlaps(a_start: u32, a_size: u32, b_start: u32, b_size: u32) -> bool {
    a_start < b_start.saturating_add(b_size) && b_start < a_start.saturating_add(a_size)
}

fn sorted_starts(profile: &MigProfile) -> Vec<u32> {
    let mut starts = profile.placements.clone();
    starts.sort_unstable();
    starts.dedup();
    starts
}

/// One GPU's MIG layout: the owned instances as a bit set of memory slices plus the
/// counts MIG limits (instances, compute slices, instances per profile).
#[derive(Debug, Clone)]
struct Layout<'g> {
    profiles: &'g [MigProfile],
    /// Owned instances' profile ids, plus the one being placed.
    profile_ids: Vec<u32>,
    occupied: u64,
    compute_used: u32,
    /// Memory slices of the GPU: the end of the furthest placement of any profile.
    slices: u32,
    /// Compute slices of the GPU: those of its largest profile.
    compute_total: u32,
    /// Most instances the GPU holds: the largest `max_count` of its profiles
    /// (7 on A100/H100, 4 on A30).
    max_instances: u32,
}

/// Slice bit sets are `u64`; a profile reaching past this is ignored.
const MAX_SLICES: u32 = 64;

fn slice_mask(start: u32, size: u32) -> Option<u64> {
    let end = start.checked_add(size).filter(|end| *end <= MAX_SLICES && size > 0)?;
    let width = end - start;
    let ones = if width == 64 { u64::MAX } else { (1u64 << width) - 1 };
    Some(ones << start)
}

impl<'g> Layout<'g> {
    fn new(profiles: &'g [MigProfile], owned: &[MigSlot]) -> Self {
        let slices = profiles
            .iter()
            .flat_map(|profile| profile.placements.iter().map(|start| start.saturating_add(profile.memory_slices)))
            .max()
            .unwrap_or(0)
            .min(MAX_SLICES);
        let mut layout = Layout {
            profiles,
            profile_ids: Vec::with_capacity(owned.len() + 1),
            occupied: 0,
            compute_used: 0,
            slices,
            compute_total: profiles.iter().map(|profile| profile.compute_slices).max().unwrap_or(0),
            max_instances: profiles.iter().map(|profile| profile.max_count).max().unwrap_or(0),
        };
        for slot in owned {
            // An owned instance of a profile this GPU does not list: assume one
            // compute slice per memory slice, the common shape.
            let compute = profiles
                .iter()
                .find(|profile| profile.profile_id == slot.profile_id)
                .map_or(slot.size, |profile| profile.compute_slices);
            layout.occupied |= slice_mask(slot.start, slot.size).unwrap_or(0);
            layout.compute_used = layout.compute_used.saturating_add(compute);
            layout.profile_ids.push(slot.profile_id);
        }
        layout
    }

    fn instances(&self) -> u32 {
        self.profile_ids.len() as u32
    }

    fn count_of(&self, profile: &MigProfile) -> u32 {
        self.profile_ids.iter().filter(|id| **id == profile.profile_id).count() as u32
    }

    /// The layout with an instance of `profile` at `start`, if it fits there.
    fn place(&self, profile: &MigProfile, start: u32) -> Option<Layout<'g>> {
        let mask = slice_mask(start, profile.memory_slices)?;
        let fits = start + profile.memory_slices <= self.slices
            && profile.placements.contains(&start)
            && self.occupied & mask == 0
            && self.count_of(profile) < profile.max_count
            && self.instances() < self.max_instances
            && self.compute_used + profile.compute_slices <= self.compute_total;
        if !fits {
            return None;
        }
        let mut after = self.clone();
        after.occupied |= mask;
        after.compute_used += profile.compute_slices;
        after.profile_ids.push(profile.profile_id);
        Some(after)
    }

    /// How many more instances of `profile` alone could be placed.
    fn placeable(&self, profile: &MigProfile) -> u32 {
        let mut layout = self.clone();
        let mut count = 0;
        for start in sorted_starts(profile) {
            if let Some(next) = layout.place(profile, start) {
                layout = next;
                count += 1;
            }
        }
        count
    }

    /// For each shape of profile (memory and compute slices; media-engine variants
    /// aside), largest first: how many fewer instances fit in `after` than here.
    fn blocked_by(&self, after: &Layout<'_>) -> Vec<BlockedProfile> {
        let mut shapes: Vec<&MigProfile> =
            self.profiles.iter().filter(|profile| !profile.name.contains("+me")).collect();
        shapes.sort_by(|a, b| {
            (b.memory_slices, b.compute_slices).cmp(&(a.memory_slices, a.compute_slices)).then(a.name.cmp(&b.name))
        });
        shapes.dedup_by_key(|profile| (profile.memory_slices, profile.compute_slices));
        shapes
            .into_iter()
            .map(|profile| BlockedProfile {
                profile: profile.name.clone(),
                count: self.placeable(profile).saturating_sub(after.placeable(profile)),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use allot_api::units::MiB;

    use super::*;

    /// The A100-80GB profiles of `shared/reference/gpu.md`.
    pub(crate) fn a100_profiles() -> Vec<MigProfile> {
        let profile = |name: &str, id, compute, memory, max_count, placements: &[u32]| MigProfile {
            name: name.to_owned(),
            profile_id: id,
            compute_slices: compute,
            memory_slices: memory,
            memory_mib: MiB(u64::from(memory) * 10_240),
            max_count,
            placements: placements.to_vec(),
        };
        vec![
            profile("1g.10gb", 19, 1, 1, 7, &[0, 1, 2, 3, 4, 5, 6]),
            profile("1g.10gb+me", 20, 1, 1, 1, &[0, 1, 2, 3, 4, 5, 6]),
            profile("1g.20gb", 15, 1, 2, 4, &[0, 2, 4, 6]),
            profile("2g.20gb", 14, 2, 2, 3, &[0, 2, 4]),
            profile("3g.40gb", 9, 3, 4, 2, &[0, 4]),
            profile("4g.40gb", 5, 4, 4, 1, &[0]),
            profile("7g.80gb", 0, 7, 8, 1, &[0]),
        ]
    }

    fn slots(spec: &[(&str, u32)]) -> Vec<MigSlot> {
        let profiles = a100_profiles();
        spec.iter()
            .map(|(name, start)| {
                let profile = profiles.iter().find(|p| p.name == *name).expect("known profile");
                MigSlot { start: *start, size: profile.memory_slices, profile_id: profile.profile_id }
            })
            .collect()
    }

    /// `expected`: the starts where `profile` fits, each with what it blocks.
    fn check(owned: &[(&str, u32)], profile: &str, expected: &str) {
        let profiles = a100_profiles();
        let owned = slots(owned);
        let layout = Layout::new(&profiles, &owned);
        let profile = profiles.iter().find(|p| p.name == profile).expect("known profile");
        let actual: Vec<String> = sorted_starts(profile)
            .into_iter()
            .filter_map(|start| {
                let after = layout.place(profile, start)?;
                Some(format!("@{start}: {}", crate::score::blocked_words(&layout.blocked_by(&after))))
            })
            .collect();
        assert_eq!(actual.join("; "), expected, "{profile:?} on {owned:?}");
    }

    #[test]
    fn mig_slots_follow_the_placement_rules() {
        check(&[], "7g.80gb", "@0: 7g.80gbx1 4g.40gbx1 3g.40gbx2 2g.20gbx3 1g.20gbx4 1g.10gbx7");
        // A 3g at 4 keeps the 4g placeable; at 0 it does not.
        check(
            &[],
            "3g.40gb",
            "@0: 7g.80gbx1 4g.40gbx1 3g.40gbx1 2g.20gbx2 1g.20gbx2 1g.10gbx4; \
             @4: 7g.80gbx1 3g.40gbx1 2g.20gbx1 1g.20gbx2 1g.10gbx3",
        );
        check(&[("3g.40gb", 0)], "3g.40gb", "@4: 3g.40gbx1 2g.20gbx1 1g.20gbx2 1g.10gbx3");
        check(&[("4g.40gb", 0), ("3g.40gb", 4)], "1g.10gb", "");
        // 7 compute slices: after 4g + 2g + 1g, one more 1g fits on compute, not on memory.
        check(&[("4g.40gb", 0), ("2g.20gb", 4)], "1g.10gb", "@6: 1g.20gbx1 1g.10gbx1");
        // At most one 1g.10gb+me per GPU.
        check(&[("1g.10gb+me", 6)], "1g.10gb+me", "");
        check(
            &[("1g.10gb", 0), ("1g.10gb", 1), ("1g.10gb", 2), ("1g.10gb", 3)],
            "2g.20gb",
            "@4: 3g.40gbx1 2g.20gbx1 1g.20gbx1 1g.10gbx2",
        );
    }
}
