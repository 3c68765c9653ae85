//! MIG state of one GPU (mode, GPU instances, compute instances) and the rules that change it.
//!
//! Pure logic: no IO, no NVML types. The FFI layer maps [`MigError`] to NVML return codes and
//! the machine description maps [`PlacementProblem`] to a message.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::geometry::{
    Geometry, GpuInstanceProfile, compute_instance_profile_for_slices, compute_instance_sizes, compute_instance_slices,
};

/// MIG mode and instances of one MIG-capable GPU. This is also the per-GPU record of the
/// state file, so its field names are part of that file's format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GpuMig {
    /// MIG mode in effect (`nvmlDeviceGetMigMode` current).
    pub(crate) current: bool,
    /// MIG mode after the next GPU reset (`nvmlDeviceGetMigMode` pending).
    pub(crate) pending: bool,
    #[serde(default)]
    pub(crate) gpu_instances: Vec<GpuInstance>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GpuInstance {
    pub(crate) id: u32,
    pub(crate) profile_id: u32,
    /// First memory slice.
    pub(crate) start: u32,
    #[serde(default)]
    pub(crate) compute_instances: Vec<ComputeInstance>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ComputeInstance {
    pub(crate) id: u32,
    pub(crate) profile_id: u32,
    /// First compute slice inside the GPU instance.
    pub(crate) start: u32,
}

/// Why a MIG call fails; each maps to one NVML return code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MigError {
    /// MIG mode is disabled (`NVML_ERROR_NOT_SUPPORTED`), or the profile does not exist in
    /// this geometry or GPU instance.
    NotSupported,
    /// Unknown profile id, a start slot the profile does not allow, a wrong placement size,
    /// or an instance that no longer exists (`NVML_ERROR_INVALID_ARGUMENT`).
    InvalidArgument,
    /// The placement overlaps an instance, or no slices or profile count are left
    /// (`NVML_ERROR_INSUFFICIENT_RESOURCES`).
    InsufficientResources,
    /// The GPU instance still has compute instances, or MIG mode cannot be disabled while
    /// GPU instances exist (`NVML_ERROR_IN_USE`).
    InUse,
}

/// Why a GPU instance cannot be created at a given start slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PlacementProblem {
    StartNotAllowed,
    Overlaps { gpu_instance_id: u32 },
    MaxCountReached,
    ComputeSlicesExhausted,
}

impl From<PlacementProblem> for MigError {
    fn from(problem: PlacementProblem) -> Self {
        match problem {
            PlacementProblem::StartNotAllowed => MigError::InvalidArgument,
            PlacementProblem::Overlaps { .. }
            | PlacementProblem::MaxCountReached
            | PlacementProblem::ComputeSlicesExhausted => MigError::InsufficientResources,
        }
    }
}

/// Writes allowed start slots as "0, 4".
pub(crate) struct Starts<'a>(pub(crate) &'a [u32]);

impl fmt::Display for Starts<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (position, start) in self.0.iter().enumerate() {
            if position > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{start}")?;
        }
        Ok(())
    }
}

impl GpuInstance {
    pub(crate) fn profile(&self, geometry: &Geometry) -> Option<&'static GpuInstanceProfile> {
        geometry.profile_by_id(self.profile_id)
    }

    fn memory_slices(&self, geometry: &Geometry) -> u32 {
        self.profile(geometry).map_or(0, |profile| profile.memory_slices)
    }

    fn compute_slices(&self, geometry: &Geometry) -> u32 {
        self.profile(geometry).map_or(0, |profile| profile.compute_slices)
    }

    /// Compute slices held by its compute instances, as a bit mask.
    fn used_compute_mask(&self) -> u32 {
        self.compute_instances
            .iter()
            .map(|compute| {
                let size = compute_instance_slices(compute.profile_id).unwrap_or(0);
                slice_mask(compute.start, size)
            })
            .fold(0, |mask, used| mask | used)
    }
}

fn slice_mask(start: u32, size: u32) -> u32 {
    if size == 0 || start >= 32 {
        return 0;
    }
    let bits = if size >= 32 { u32::MAX } else { (1u32 << size) - 1 };
    bits << start
}

impl GpuMig {
    /// The state a GPU starts in: `enabled` MIG mode as current and pending, no instances.
    pub(crate) fn new(enabled: bool) -> GpuMig {
        GpuMig { current: enabled, pending: enabled, gpu_instances: Vec::new() }
    }

    pub(crate) fn gpu_instance(&self, id: u32) -> Option<&GpuInstance> {
        self.gpu_instances.iter().find(|instance| instance.id == id)
    }

    pub(crate) fn compute_instance(&self, gpu_instance: u32, id: u32) -> Option<&ComputeInstance> {
        self.gpu_instance(gpu_instance)?.compute_instances.iter().find(|compute| compute.id == id)
    }

    /// The MIG devices (one per compute instance), ordered by GPU instance id then compute
    /// instance id: the order `nvmlDeviceGetMigDeviceHandleByIndex` enumerates them in.
    pub(crate) fn mig_devices(&self) -> Vec<(u32, u32)> {
        let mut devices: Vec<(u32, u32)> = self
            .gpu_instances
            .iter()
            .flat_map(|instance| instance.compute_instances.iter().map(move |compute| (instance.id, compute.id)))
            .collect();
        devices.sort_unstable();
        devices
    }

    fn require_enabled(&self) -> Result<(), MigError> {
        if self.current { Ok(()) } else { Err(MigError::NotSupported) }
    }

    /// Sets MIG mode. The fake applies it at once (current and pending), as a GPU does once
    /// it has been reset; disabling fails while GPU instances exist.
    pub(crate) fn set_mode(&mut self, enabled: bool) -> Result<(), MigError> {
        if !enabled && !self.gpu_instances.is_empty() {
            return Err(MigError::InUse);
        }
        self.current = enabled;
        self.pending = enabled;
        Ok(())
    }

    /// Checks whether a GPU instance of `profile` could be created at `start`.
    pub(crate) fn check_placement(
        &self,
        geometry: &Geometry,
        profile: &GpuInstanceProfile,
        start: u32,
    ) -> Result<(), PlacementProblem> {
        if !profile.starts.contains(&start) {
            return Err(PlacementProblem::StartNotAllowed);
        }
        let end = start + profile.memory_slices;
        for instance in &self.gpu_instances {
            let other_end = instance.start + instance.memory_slices(geometry);
            if start < other_end && instance.start < end {
                return Err(PlacementProblem::Overlaps { gpu_instance_id: instance.id });
            }
        }
        let same_profile = self.gpu_instances.iter().filter(|instance| instance.profile_id == profile.id).count();
        if same_profile >= profile.max_count as usize {
            return Err(PlacementProblem::MaxCountReached);
        }
        let used_compute: u32 = self.gpu_instances.iter().map(|instance| instance.compute_slices(geometry)).sum();
        if used_compute + profile.compute_slices > geometry.compute_slices {
            return Err(PlacementProblem::ComputeSlicesExhausted);
        }
        Ok(())
    }

    /// Creates a GPU instance of profile id `profile_id`, at `placement` (start, size) when
    /// given, otherwise at the lowest allowed start slot that is free. Returns its id.
    pub(crate) fn create_gpu_instance(
        &mut self,
        geometry: &Geometry,
        profile_id: u32,
        placement: Option<(u32, u32)>,
    ) -> Result<u32, MigError> {
        self.require_enabled()?;
        let profile = geometry.profile_by_id(profile_id).ok_or(MigError::InvalidArgument)?;
        let start = match placement {
            Some((start, size)) => {
                if size != profile.memory_slices {
                    return Err(MigError::InvalidArgument);
                }
                self.check_placement(geometry, profile, start)?;
                start
            }
            None => self.lowest_free_start(geometry, profile)?,
        };
        Ok(self.insert_gpu_instance(geometry, profile, start))
    }

    fn lowest_free_start(&self, geometry: &Geometry, profile: &GpuInstanceProfile) -> Result<u32, MigError> {
        let mut last_problem = MigError::InsufficientResources;
        for &start in profile.starts {
            match self.check_placement(geometry, profile, start) {
                Ok(()) => return Ok(start),
                Err(problem) => last_problem = problem.into(),
            }
        }
        Err(last_problem)
    }

    /// Adds a GPU instance whose placement has been checked, with no compute instances.
    pub(crate) fn insert_gpu_instance(&mut self, geometry: &Geometry, profile: &GpuInstanceProfile, start: u32) -> u32 {
        let id = geometry.gpu_instance_id(start, profile.memory_slices);
        self.gpu_instances.push(GpuInstance { id, profile_id: profile.id, start, compute_instances: Vec::new() });
        self.gpu_instances.sort_by_key(|instance| instance.id);
        id
    }

    /// How many more GPU instances of `profile_id` could be created now.
    pub(crate) fn remaining_capacity(&self, geometry: &Geometry, profile_id: u32) -> Result<u32, MigError> {
        self.require_enabled()?;
        let profile = geometry.profile_by_id(profile_id).ok_or(MigError::InvalidArgument)?;
        // Placements are aligned blocks, so filling the lowest free slot first never blocks
        // a placement that another order would have allowed.
        let mut trial = self.clone();
        let mut count = 0;
        while let Ok(start) = trial.lowest_free_start(geometry, profile) {
            trial.insert_gpu_instance(geometry, profile, start);
            count += 1;
        }
        Ok(count)
    }

    pub(crate) fn gpu_instances_of(&self, geometry: &Geometry, profile_id: u32) -> Result<Vec<u32>, MigError> {
        self.require_enabled()?;
        geometry.profile_by_id(profile_id).ok_or(MigError::InvalidArgument)?;
        Ok(self
            .gpu_instances
            .iter()
            .filter(|instance| instance.profile_id == profile_id)
            .map(|instance| instance.id)
            .collect())
    }

    pub(crate) fn destroy_gpu_instance(&mut self, id: u32) -> Result<(), MigError> {
        let position =
            self.gpu_instances.iter().position(|instance| instance.id == id).ok_or(MigError::InvalidArgument)?;
        if !self.gpu_instances[position].compute_instances.is_empty() {
            return Err(MigError::InUse);
        }
        self.gpu_instances.remove(position);
        Ok(())
    }

    fn gpu_instance_mut(&mut self, id: u32) -> Result<&mut GpuInstance, MigError> {
        self.gpu_instances.iter_mut().find(|instance| instance.id == id).ok_or(MigError::InvalidArgument)
    }

    /// Checks that compute instance profile `profile_id` exists in GPU instance `gpu_instance`
    /// and returns its compute slice count.
    pub(crate) fn compute_profile_slices(
        &self,
        geometry: &Geometry,
        gpu_instance: u32,
        profile_id: u32,
    ) -> Result<u32, MigError> {
        let instance = self.gpu_instance(gpu_instance).ok_or(MigError::InvalidArgument)?;
        let slices = compute_instance_slices(profile_id).ok_or(MigError::InvalidArgument)?;
        if compute_instance_sizes(instance.compute_slices(geometry)).contains(&slices) {
            Ok(slices)
        } else {
            Err(MigError::NotSupported)
        }
    }

    fn free_compute_start(&self, geometry: &Geometry, gpu_instance: u32, size: u32) -> Option<u32> {
        let instance = self.gpu_instance(gpu_instance)?;
        let total = instance.compute_slices(geometry);
        let used = instance.used_compute_mask();
        (0..total).filter(|start| start + size <= total).find(|&start| slice_mask(start, size) & used == 0)
    }

    /// Creates a compute instance in GPU instance `gpu_instance` at the first compute slices
    /// free for it, with the lowest unused compute instance id. Returns that id.
    pub(crate) fn create_compute_instance(
        &mut self,
        geometry: &Geometry,
        gpu_instance: u32,
        profile_id: u32,
    ) -> Result<u32, MigError> {
        let size = self.compute_profile_slices(geometry, gpu_instance, profile_id)?;
        let start = self.free_compute_start(geometry, gpu_instance, size).ok_or(MigError::InsufficientResources)?;
        let instance = self.gpu_instance_mut(gpu_instance)?;
        let id = (0..).find(|id| instance.compute_instances.iter().all(|c| c.id != *id)).unwrap_or(0);
        instance.compute_instances.push(ComputeInstance { id, profile_id, start });
        instance.compute_instances.sort_by_key(|compute| compute.id);
        Ok(id)
    }

    /// Creates the one compute instance that spans the whole GPU instance, as
    /// `nvidia-smi mig -cgi ... -C` does.
    pub(crate) fn create_full_compute_instance(
        &mut self,
        geometry: &Geometry,
        gpu_instance: u32,
    ) -> Result<u32, MigError> {
        let slices = self.gpu_instance(gpu_instance).ok_or(MigError::InvalidArgument)?.compute_slices(geometry);
        let profile = compute_instance_profile_for_slices(slices).ok_or(MigError::InvalidArgument)?;
        self.create_compute_instance(geometry, gpu_instance, profile)
    }

    pub(crate) fn compute_remaining_capacity(
        &self,
        geometry: &Geometry,
        gpu_instance: u32,
        profile_id: u32,
    ) -> Result<u32, MigError> {
        let size = self.compute_profile_slices(geometry, gpu_instance, profile_id)?;
        let mut trial = self.clone();
        let mut count = 0;
        while let Some(start) = trial.free_compute_start(geometry, gpu_instance, size) {
            trial.gpu_instance_mut(gpu_instance)?.compute_instances.push(ComputeInstance {
                id: u32::MAX - count,
                profile_id,
                start,
            });
            count += 1;
        }
        Ok(count)
    }

    pub(crate) fn compute_instances_of(
        &self,
        geometry: &Geometry,
        gpu_instance: u32,
        profile_id: u32,
    ) -> Result<Vec<u32>, MigError> {
        self.compute_profile_slices(geometry, gpu_instance, profile_id)?;
        let instance = self.gpu_instance(gpu_instance).ok_or(MigError::InvalidArgument)?;
        Ok(instance
            .compute_instances
            .iter()
            .filter(|compute| compute.profile_id == profile_id)
            .map(|compute| compute.id)
            .collect())
    }

    pub(crate) fn destroy_compute_instance(&mut self, gpu_instance: u32, id: u32) -> Result<(), MigError> {
        let instance = self.gpu_instance_mut(gpu_instance)?;
        let position =
            instance.compute_instances.iter().position(|compute| compute.id == id).ok_or(MigError::InvalidArgument)?;
        instance.compute_instances.remove(position);
        Ok(())
    }

    /// Checks a state read from the state file by rebuilding it with the same rules the
    /// NVML calls apply. Returns what is wrong, in words.
    pub(crate) fn validate(&self, geometry: &Geometry) -> Result<(), String> {
        if !self.current && !self.gpu_instances.is_empty() {
            return Err("has GPU instances but MIG mode is disabled".to_owned());
        }
        let mut rebuilt = GpuMig::new(true);
        for (position, instance) in self.gpu_instances.iter().enumerate() {
            let context = format!("gpu_instances[{position}]");
            let profile = geometry.profile_by_id(instance.profile_id).ok_or_else(|| {
                format!("{context}: profile id {} does not exist in {}", instance.profile_id, geometry.name)
            })?;
            rebuilt.check_placement(geometry, profile, instance.start).map_err(|problem| {
                format!("{context}: {}", describe_problem(geometry, &rebuilt, profile, instance.start, problem))
            })?;
            let id = rebuilt.insert_gpu_instance(geometry, profile, instance.start);
            if id != instance.id {
                return Err(format!(
                    "{context}: id {} does not match its placement (a {} at slot {} has id {id})",
                    instance.id, profile.name, instance.start
                ));
            }
            let mut seen_ids = Vec::new();
            let mut used = 0u32;
            for (compute_position, compute) in instance.compute_instances.iter().enumerate() {
                let compute_context = format!("{context}.compute_instances[{compute_position}]");
                let size = compute_instance_slices(compute.profile_id)
                    .filter(|size| compute_instance_sizes(profile.compute_slices).contains(size))
                    .ok_or_else(|| {
                        format!(
                            "{compute_context}: compute instance profile {} does not fit a {}",
                            compute.profile_id, profile.name
                        )
                    })?;
                let mask = slice_mask(compute.start, size);
                if compute.start + size > profile.compute_slices || mask & used != 0 {
                    return Err(format!(
                        "{compute_context}: compute slices {}..{} overlap or leave the instance",
                        compute.start,
                        compute.start + size
                    ));
                }
                if seen_ids.contains(&compute.id) {
                    return Err(format!("{compute_context}: duplicate compute instance id {}", compute.id));
                }
                seen_ids.push(compute.id);
                used |= mask;
            }
        }
        Ok(())
    }
}

/// Says in words why `profile` cannot start at `start` next to the instances of `mig`.
pub(crate) fn describe_problem(
    geometry: &Geometry,
    mig: &GpuMig,
    profile: &GpuInstanceProfile,
    start: u32,
    problem: PlacementProblem,
) -> String {
    match problem {
        PlacementProblem::StartNotAllowed => {
            format!("{} cannot start at slot {start} (allowed {})", profile.name, Starts(profile.starts))
        }
        PlacementProblem::Overlaps { gpu_instance_id } => {
            let other = mig.gpu_instance(gpu_instance_id);
            let other_name =
                other.and_then(|instance| instance.profile(geometry)).map_or("?", |other_profile| other_profile.name);
            let other_start = other.map_or(0, |instance| instance.start);
            format!("{} at slot {start} overlaps the {other_name} at slot {other_start}", profile.name)
        }
        PlacementProblem::MaxCountReached => {
            format!("at most {} instances of {} may exist at once", profile.max_count, profile.name)
        }
        PlacementProblem::ComputeSlicesExhausted => format!(
            "{} needs {} compute slices but fewer are left of {}",
            profile.name, profile.compute_slices, geometry.compute_slices
        ),
    }
}

/// The UUID of the MIG device of compute instance `compute_instance` in GPU instance
/// `gpu_instance` of the GPU `gpu_uuid`: `MIG-` and a UUID-shaped hash of the three, so it is
/// the same in every process and for every run, like the driver's MIG UUIDs are for a given
/// instance.
pub(crate) fn mig_device_uuid(gpu_uuid: &str, gpu_instance: u32, compute_instance: u32) -> String {
    let key = format!("{gpu_uuid}/{gpu_instance}/{compute_instance}");
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&fnv1a(key.as_bytes(), 0xcbf2_9ce4_8422_2325).to_be_bytes());
    bytes[8..].copy_from_slice(&fnv1a(key.as_bytes(), 0x6c62_272e_07bb_0142).to_be_bytes());
    // Version 5 and the RFC 4122 variant, so that it reads as a name-based UUID.
    bytes[6] = (bytes[6] & 0x0f) | 0x50;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    format!("MIG-{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

/// 64-bit FNV-1a with a chosen offset basis.
fn fnv1a(bytes: &[u8], basis: u64) -> u64 {
    bytes.iter().fold(basis, |hash, &byte| (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h100() -> &'static Geometry {
        Geometry::by_name("h100-80gb").expect("known geometry")
    }

    #[test]
    fn creates_at_the_lowest_free_start_and_numbers_like_nvml() {
        let mut mig = GpuMig::new(true);
        let first = mig.create_gpu_instance(h100(), 9, None);
        let second = mig.create_gpu_instance(h100(), 9, None);
        let third = mig.create_gpu_instance(h100(), 9, None);
        assert_eq!(first, Ok(1));
        assert_eq!(second, Ok(2));
        assert_eq!(third, Err(MigError::InsufficientResources));
    }

    #[test]
    fn placement_rules() {
        let mut mig = GpuMig::new(true);
        assert_eq!(mig.create_gpu_instance(h100(), 9, Some((2, 4))), Err(MigError::InvalidArgument));
        assert_eq!(mig.create_gpu_instance(h100(), 9, Some((0, 2))), Err(MigError::InvalidArgument));
        assert_eq!(mig.create_gpu_instance(h100(), 9, Some((4, 4))), Ok(2));
        assert_eq!(mig.create_gpu_instance(h100(), 14, Some((4, 2))), Err(MigError::InsufficientResources));
        assert_eq!(mig.remaining_capacity(h100(), 19), Ok(4));
        assert_eq!(mig.remaining_capacity(h100(), 0), Ok(0));
        assert_eq!(mig.remaining_capacity(h100(), 5), Ok(1));
    }

    #[test]
    fn compute_slices_limit_instances_even_when_memory_is_free() {
        let mut mig = GpuMig::new(true);
        for _ in 0..7 {
            assert!(mig.create_gpu_instance(h100(), 19, None).is_ok());
        }
        assert_eq!(mig.remaining_capacity(h100(), 19), Ok(0));
    }

    #[test]
    fn destroy_needs_no_compute_instances() {
        let mut mig = GpuMig::new(true);
        let id = mig.create_gpu_instance(h100(), 9, None).expect("created");
        let compute = mig.create_full_compute_instance(h100(), id).expect("created");
        assert_eq!(mig.destroy_gpu_instance(id), Err(MigError::InUse));
        assert_eq!(mig.set_mode(false), Err(MigError::InUse));
        assert_eq!(mig.destroy_compute_instance(id, compute), Ok(()));
        assert_eq!(mig.destroy_gpu_instance(id), Ok(()));
        assert_eq!(mig.set_mode(false), Ok(()));
        assert_eq!(mig.create_gpu_instance(h100(), 9, None), Err(MigError::NotSupported));
    }

    #[test]
    fn compute_instances_share_a_gpu_instance() {
        let mut mig = GpuMig::new(true);
        let id = mig.create_gpu_instance(h100(), 0, None).expect("created");
        assert_eq!(mig.compute_remaining_capacity(h100(), id, 2), Ok(2));
        assert_eq!(mig.create_compute_instance(h100(), id, 2), Ok(0));
        assert_eq!(mig.create_compute_instance(h100(), id, 3), Ok(1));
        assert_eq!(mig.compute_remaining_capacity(h100(), id, 0), Ok(0));
        assert_eq!(mig.create_compute_instance(h100(), id, 0), Err(MigError::InsufficientResources));
        assert_eq!(mig.mig_devices(), [(0, 0), (0, 1)]);
        assert_eq!(mig.validate(h100()), Ok(()));
    }

    #[test]
    fn mig_uuids_are_stable_and_distinct() {
        let first = mig_device_uuid("GPU-a", 1, 0);
        assert_eq!(first, mig_device_uuid("GPU-a", 1, 0));
        assert_ne!(first, mig_device_uuid("GPU-a", 2, 0));
        assert_ne!(first, mig_device_uuid("GPU-b", 1, 0));
        assert_eq!(first.len(), "MIG-".len() + 36);
        let groups: Vec<usize> = first["MIG-".len()..].split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12]);
    }

    #[test]
    fn validate_reports_a_bad_state() {
        let mut mig = GpuMig::new(true);
        mig.gpu_instances.push(GpuInstance { id: 1, profile_id: 9, start: 2, compute_instances: Vec::new() });
        assert_eq!(
            mig.validate(h100()),
            Err("gpu_instances[0]: 3g.40gb cannot start at slot 2 (allowed 0, 4)".to_owned())
        );
    }
}
