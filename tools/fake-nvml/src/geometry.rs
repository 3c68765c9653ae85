//! MIG geometries: GPU instance profiles (NVML enum, profile id, name), their placements and sizes.
//!
//! The numbers follow `shared/reference/gpu.md`. Where that reference is silent the fake
//! makes an assumption, written next to the table it affects and repeated in the README.

/// One GPU instance profile of one geometry.
#[derive(Debug)]
pub(crate) struct GpuInstanceProfile {
    /// The `NVML_GPU_INSTANCE_PROFILE_*` enum that `nvmlDeviceGetGpuInstanceProfileInfo` takes.
    pub(crate) profile_enum: u32,
    /// The profile id that placements and instance creation take.
    pub(crate) id: u32,
    /// The name `nvidia-smi mig -lgip` shows, e.g. `3g.40gb`.
    pub(crate) name: &'static str,
    pub(crate) compute_slices: u32,
    pub(crate) memory_slices: u32,
    /// At most this many instances of the profile can exist at once.
    pub(crate) max_count: u32,
    /// Memory-slice positions an instance of the profile may start at.
    pub(crate) starts: &'static [u32],
    pub(crate) memory_mib: u64,
    /// `+me` profiles own the GPU's media engines (decoders, JPEG, OFA).
    pub(crate) media_extensions: bool,
}

impl GpuInstanceProfile {
    pub(crate) fn multiprocessors(&self, geometry: &Geometry) -> u32 {
        self.compute_slices * geometry.multiprocessors_per_slice
    }

    pub(crate) fn copy_engines(&self) -> u32 {
        self.compute_slices
    }

    pub(crate) fn decoders(&self) -> u32 {
        if self.media_extensions {
            return 1;
        }
        match self.compute_slices {
            1 => 0,
            2 => 1,
            3 | 4 => 2,
            _ => 5,
        }
    }

    /// JPEG decoders and optical-flow accelerators: one, held by the full GPU or a `+me` instance.
    pub(crate) fn jpeg_and_ofa(&self, geometry: &Geometry) -> u32 {
        u32::from(self.media_extensions || self.compute_slices == geometry.compute_slices)
    }
}

/// The MIG layout of one GPU model.
#[derive(Debug)]
pub(crate) struct Geometry {
    /// The name used in machine descriptions, e.g. `h100-80gb`.
    pub(crate) name: &'static str,
    pub(crate) memory_slices: u32,
    pub(crate) compute_slices: u32,
    pub(crate) multiprocessors_per_slice: u32,
    /// In the order of the table in `gpu.md`.
    pub(crate) profiles: &'static [GpuInstanceProfile],
}

impl Geometry {
    pub(crate) fn by_name(name: &str) -> Option<&'static Geometry> {
        ALL.iter().copied().find(|geometry| geometry.name == name)
    }

    pub(crate) fn names() -> Vec<&'static str> {
        ALL.iter().map(|geometry| geometry.name).collect()
    }

    pub(crate) fn profile_by_enum(&self, profile_enum: u32) -> Option<&'static GpuInstanceProfile> {
        self.profiles.iter().find(|profile| profile.profile_enum == profile_enum)
    }

    pub(crate) fn profile_by_id(&self, id: u32) -> Option<&'static GpuInstanceProfile> {
        self.profiles.iter().find(|profile| profile.id == id)
    }

    pub(crate) fn profile_by_name(&self, name: &str) -> Option<&'static GpuInstanceProfile> {
        self.profiles.iter().find(|profile| profile.name == name)
    }

    /// The GPU instance id NVML gives an instance at this placement.
    ///
    /// The driver numbers placements like a binary tree over the memory slices (its
    /// "swizzle id"): the whole GPU is 0, its halves 1 and 2, its quarters 3 to 6 and its
    /// eighths 7 to 14. So ids are small, unique among coexisting instances, and the same
    /// for the same placement in every process, as on a real A100 or H100.
    pub(crate) fn gpu_instance_id(&self, start: u32, size: u32) -> u32 {
        let parts = (self.memory_slices / size.max(1)).max(1);
        parts - 1 + start / size.max(1)
    }
}

/// The compute slice counts a compute instance may have inside a GPU instance of `gpu_slices`
/// compute slices (a 4-slice GPU instance has no 3-slice compute instance, as on real GPUs).
pub(crate) fn compute_instance_sizes(gpu_slices: u32) -> &'static [u32] {
    match gpu_slices {
        1 => &[1],
        2 => &[1, 2],
        3 => &[1, 2, 3],
        4 => &[1, 2, 4],
        7 => &[1, 2, 3, 4, 7],
        _ => &[],
    }
}

/// The `NVML_COMPUTE_INSTANCE_PROFILE_*` enum, which NVML also uses as the compute instance
/// profile id, for a compute instance of `slices` compute slices.
pub(crate) fn compute_instance_profile_for_slices(slices: u32) -> Option<u32> {
    match slices {
        1 => Some(0),
        2 => Some(1),
        3 => Some(2),
        4 => Some(3),
        7 => Some(4),
        _ => None,
    }
}

/// The inverse of [`compute_instance_profile_for_slices`].
pub(crate) fn compute_instance_slices(profile: u32) -> Option<u32> {
    match profile {
        0 => Some(1),
        1 => Some(2),
        2 => Some(3),
        3 => Some(4),
        4 => Some(7),
        _ => None,
    }
}

const ONE_SLICE_STARTS: &[u32] = &[0, 1, 2, 3, 4, 5, 6];
const TWO_SLICE_ONE_COMPUTE_STARTS: &[u32] = &[0, 2, 4, 6];
const TWO_SLICE_STARTS: &[u32] = &[0, 2, 4];
const HALF_STARTS: &[u32] = &[0, 4];
const WHOLE_STARTS: &[u32] = &[0];

/// Builds the seven profiles of an A100/H100/H200-class GPU from its names and memory sizes,
/// both in `gpu.md` table order.
const fn seven_slice_profiles(names: [&'static str; 7], memory_mib: [u64; 7]) -> [GpuInstanceProfile; 7] {
    [
        profile(0, 19, names[0], 1, 1, 7, ONE_SLICE_STARTS, memory_mib[0], false),
        profile(7, 20, names[1], 1, 1, 1, ONE_SLICE_STARTS, memory_mib[1], true),
        profile(9, 15, names[2], 1, 2, 4, TWO_SLICE_ONE_COMPUTE_STARTS, memory_mib[2], false),
        profile(1, 14, names[3], 2, 2, 3, TWO_SLICE_STARTS, memory_mib[3], false),
        profile(2, 9, names[4], 3, 4, 2, HALF_STARTS, memory_mib[4], false),
        profile(3, 5, names[5], 4, 4, 1, WHOLE_STARTS, memory_mib[5], false),
        profile(4, 0, names[6], 7, 8, 1, WHOLE_STARTS, memory_mib[6], false),
    ]
}

#[allow(clippy::too_many_arguments)]
const fn profile(
    profile_enum: u32,
    id: u32,
    name: &'static str,
    compute_slices: u32,
    memory_slices: u32,
    max_count: u32,
    starts: &'static [u32],
    memory_mib: u64,
    media_extensions: bool,
) -> GpuInstanceProfile {
    GpuInstanceProfile {
        profile_enum,
        id,
        name,
        compute_slices,
        memory_slices,
        max_count,
        starts,
        memory_mib,
        media_extensions,
    }
}

const A100_80GB_MEMORY: [u64; 7] = [9856, 9856, 19968, 19968, 40192, 40192, 80384];

static A100_40GB_PROFILES: [GpuInstanceProfile; 7] = seven_slice_profiles(
    ["1g.5gb", "1g.5gb+me", "1g.10gb", "2g.10gb", "3g.20gb", "4g.20gb", "7g.40gb"],
    [4864, 4864, 9856, 9856, 19968, 19968, 40192],
);

static A100_80GB_PROFILES: [GpuInstanceProfile; 7] = seven_slice_profiles(
    ["1g.10gb", "1g.10gb+me", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"],
    A100_80GB_MEMORY,
);

/// Assumption: an H100 80GB reports the A100 80GB instance sizes (gpu.md gives none of its own).
static H100_80GB_PROFILES: [GpuInstanceProfile; 7] = seven_slice_profiles(
    ["1g.10gb", "1g.10gb+me", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"],
    A100_80GB_MEMORY,
);

/// Assumption: H200 sizes are the A100 80GB sizes scaled by the ratio of the two GPUs' total
/// memory as NVML reports it (143771 MiB / 81920 MiB), rounded down to a multiple of 256 MiB.
static H200_141GB_PROFILES: [GpuInstanceProfile; 7] = seven_slice_profiles(
    ["1g.18gb", "1g.18gb+me", "1g.35gb", "2g.35gb", "3g.71gb", "4g.71gb", "7g.141gb"],
    [17152, 17152, 34816, 34816, 70400, 70400, 141056],
);

/// Assumption: H100 NVL (94 GB) sizes are the A100 80GB sizes scaled by the ratio of the two
/// GPUs' total memory as NVML reports it (95830 MiB / 81920 MiB), rounded down to a multiple of
/// 256 MiB, as for the H200; the names are those NVIDIA's MIG user guide lists for H100 94GB.
static H100_94GB_PROFILES: [GpuInstanceProfile; 7] = seven_slice_profiles(
    ["1g.12gb", "1g.12gb+me", "1g.24gb", "2g.24gb", "3g.47gb", "4g.47gb", "7g.94gb"],
    [11520, 11520, 23296, 23296, 46848, 46848, 93952],
);

const A30_ONE_SLICE_STARTS: &[u32] = &[0, 1, 2, 3];
const A30_TWO_SLICE_STARTS: &[u32] = &[0, 2];

/// Assumption: gpu.md names the A30 profiles but gives neither ids nor sizes. The ids are
/// those an A30 reports (4g.24gb 0, 2g.12gb 5, 2g.12gb+me 6, 1g.6gb 14, 1g.6gb+me 21) and the
/// sizes are the A100 40GB sizes of the same memory fraction scaled by 6 GB / 5 GB per slice.
static A30_24GB_PROFILES: [GpuInstanceProfile; 5] = [
    profile(0, 14, "1g.6gb", 1, 1, 4, A30_ONE_SLICE_STARTS, 5836, false),
    profile(7, 21, "1g.6gb+me", 1, 1, 1, A30_ONE_SLICE_STARTS, 5836, true),
    profile(1, 5, "2g.12gb", 2, 2, 2, A30_TWO_SLICE_STARTS, 11827, false),
    profile(8, 6, "2g.12gb+me", 2, 2, 1, A30_TWO_SLICE_STARTS, 11827, true),
    profile(3, 0, "4g.24gb", 4, 4, 1, WHOLE_STARTS, 23961, false),
];

static A100_40GB: Geometry = Geometry {
    name: "a100-40gb",
    memory_slices: 8,
    compute_slices: 7,
    multiprocessors_per_slice: 14,
    profiles: &A100_40GB_PROFILES,
};

static A100_80GB: Geometry = Geometry {
    name: "a100-80gb",
    memory_slices: 8,
    compute_slices: 7,
    multiprocessors_per_slice: 14,
    profiles: &A100_80GB_PROFILES,
};

static H100_80GB: Geometry = Geometry {
    name: "h100-80gb",
    memory_slices: 8,
    compute_slices: 7,
    multiprocessors_per_slice: 16,
    profiles: &H100_80GB_PROFILES,
};

static H100_94GB: Geometry = Geometry {
    name: "h100-94gb",
    memory_slices: 8,
    compute_slices: 7,
    multiprocessors_per_slice: 16,
    profiles: &H100_94GB_PROFILES,
};

static H200_141GB: Geometry = Geometry {
    name: "h200-141gb",
    memory_slices: 8,
    compute_slices: 7,
    multiprocessors_per_slice: 16,
    profiles: &H200_141GB_PROFILES,
};

static A30_24GB: Geometry = Geometry {
    name: "a30-24gb",
    memory_slices: 4,
    compute_slices: 4,
    multiprocessors_per_slice: 14,
    profiles: &A30_24GB_PROFILES,
};

static ALL: [&Geometry; 6] = [&A100_40GB, &A100_80GB, &H100_80GB, &H100_94GB, &H200_141GB, &A30_24GB];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_placement_fits_in_the_memory_slices() {
        for geometry in ALL {
            for profile in geometry.profiles {
                for &start in profile.starts {
                    assert!(
                        start + profile.memory_slices <= geometry.memory_slices,
                        "{} {} at {start}",
                        geometry.name,
                        profile.name
                    );
                    assert_eq!(
                        start % profile.memory_slices,
                        0,
                        "{} {} at {start} is not aligned",
                        geometry.name,
                        profile.name
                    );
                }
                assert!(compute_instance_profile_for_slices(profile.compute_slices).is_some());
            }
        }
    }

    #[test]
    fn gpu_instance_ids_follow_the_placement_tree() {
        let geometry = &H100_80GB;
        assert_eq!(geometry.gpu_instance_id(0, 8), 0);
        assert_eq!(geometry.gpu_instance_id(0, 4), 1);
        assert_eq!(geometry.gpu_instance_id(4, 4), 2);
        assert_eq!(geometry.gpu_instance_id(2, 2), 4);
        assert_eq!(geometry.gpu_instance_id(6, 1), 13);
        assert_eq!(A30_24GB.gpu_instance_id(0, 4), 0);
        assert_eq!(A30_24GB.gpu_instance_id(2, 2), 2);
        assert_eq!(A30_24GB.gpu_instance_id(3, 1), 6);
    }

    #[test]
    fn profile_lookup_by_enum_answers_the_id() {
        let geometry = Geometry::by_name("a100-40gb").expect("known geometry");
        let ids: Vec<u32> = [0, 7, 9, 1, 2, 3, 4]
            .iter()
            .filter_map(|&profile_enum| geometry.profile_by_enum(profile_enum))
            .map(|profile| profile.id)
            .collect();
        assert_eq!(ids, [19, 20, 15, 14, 9, 5, 0]);
    }
}
