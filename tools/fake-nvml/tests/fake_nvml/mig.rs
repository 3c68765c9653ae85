//! MIG: mode, profiles, placements, GPU and compute instances, MIG devices and the state file.

use nvml_wrapper::error::NvmlError;

use crate::harness::nvml;
use crate::raw;

/// An H100 with MIG enabled, an A100 with MIG disabled and an L40S that is not MIG-capable.
const MACHINE: &str = r#"
[[gpu]]
index = 0
uuid = "GPU-aaaaaaaa-0000-0000-0000-000000000000"
name = "NVIDIA H100 80GB HBM3"
pci_bus_id = "0000:1b:00.0"
memory_total_mib = 81559
mig_geometry = "h100-80gb"
mig_mode = "enabled"

[[gpu]]
index = 1
uuid = "GPU-bbbbbbbb-0000-0000-0000-000000000000"
name = "NVIDIA A100-SXM4-40GB"
pci_bus_id = "0000:2a:00.0"
memory_total_mib = 40960
mig_geometry = "a100-40gb"
mig_mode = "disabled"

[[gpu]]
index = 2
uuid = "GPU-cccccccc-0000-0000-0000-000000000000"
name = "NVIDIA L40S"
pci_bus_id = "0000:3d:00.0"
memory_total_mib = 46068
"#;

/// GPU instance profile ids (gpu.md).
const PROFILE_1G: u32 = 19;
const PROFILE_1G_2SLICE: u32 = 15;
const PROFILE_2G: u32 = 14;
const PROFILE_3G: u32 = 9;
const PROFILE_7G: u32 = 0;
/// Compute instance profiles (enum = id).
const COMPUTE_1C: u32 = 0;
const COMPUTE_2C: u32 = 1;
const COMPUTE_3C: u32 = 2;
const COMPUTE_7C: u32 = 4;

#[test]
fn mig_modes_profiles_and_placements() {
    let scenario = scenario!(mig_modes_profiles_and_placements, MACHINE);
    scenario.run("main", || {
        let nvml = nvml();
        let h100 = nvml.device_by_index(0)?;
        let a100 = nvml.device_by_index(1)?;
        let l40s = nvml.device_by_index(2)?;

        let mode = h100.mig_mode()?;
        assert_eq!((mode.current, mode.pending), (1, 1));
        let mode = a100.mig_mode()?;
        assert_eq!((mode.current, mode.pending), (0, 0));
        assert!(matches!(l40s.mig_mode(), Err(NvmlError::NotSupported)));

        // Profile info takes the profile enum and answers with the profile id.
        let three_g = h100.profile_info(2)?;
        assert_eq!(three_g.id, PROFILE_3G);
        assert_eq!(three_g.memory_size_mb, 40192);
        assert_eq!((three_g.slice_count, three_g.instance_count), (3, 2));
        let one_g = h100.profile_info(0)?;
        assert_eq!((one_g.id, one_g.memory_size_mb, one_g.instance_count), (19, 9856, 7));
        let seven_g = h100.profile_info(4)?;
        assert_eq!((seven_g.id, seven_g.memory_size_mb), (PROFILE_7G, 80384));
        assert!(matches!(h100.profile_info(5), Err(NvmlError::NotSupported)));
        assert!(matches!(h100.profile_info(99), Err(NvmlError::InvalidArg)));
        // Profiles need a MIG-capable GPU, not MIG mode (nvml.h).
        assert_eq!(a100.profile_info(0)?.memory_size_mb, 4864);
        assert!(matches!(l40s.profile_info(0), Err(NvmlError::NotSupported)));
        let with_media = raw::gpu_instance_profile_info_v2(&nvml, &h100, 7).expect("info v2");
        assert_eq!(with_media.id, 20);
        let name: Vec<u8> = with_media.name.iter().take_while(|&&byte| byte != 0).map(|&byte| byte as u8).collect();
        assert_eq!(String::from_utf8(name)?, "MIG 1g.10gb+me");

        // Placements are static: they do not depend on MIG mode or existing instances.
        let placements = |device, profile| raw::possible_placements(&nvml, device, profile);
        assert_eq!(placements(&h100, PROFILE_3G), Ok(vec![(0, 4), (4, 4)]));
        assert_eq!(placements(&h100, PROFILE_1G), Ok((0..7).map(|start| (start, 1)).collect()));
        assert_eq!(placements(&h100, PROFILE_1G_2SLICE), Ok(vec![(0, 2), (2, 2), (4, 2), (6, 2)]));
        assert_eq!(placements(&h100, PROFILE_7G), Ok(vec![(0, 8)]));
        assert_eq!(placements(&a100, PROFILE_3G), Ok(vec![(0, 4), (4, 4)]));
        assert_eq!(placements(&h100, 3), Err(raw::INVALID_ARGUMENT));
        assert_eq!(placements(&l40s, PROFILE_3G), Err(raw::NOT_SUPPORTED));
        // FIXME(nvml-wrapper 0.13): `Device::possible_placements` fills a Vec through its
        // spare capacity without setting its length, so it always returns an empty list.
        assert!(h100.possible_placements(PROFILE_3G)?.is_empty());

        assert_eq!(h100.mig_device_count()?, 7);
        assert_eq!(a100.mig_device_count()?, 0);
        assert!(matches!(l40s.mig_device_count(), Err(NvmlError::NotSupported)));
        Ok(())
    });
}

#[test]
fn gpu_instance_placement_rules() {
    let scenario = scenario!(gpu_instance_placement_rules, MACHINE);
    scenario.run("main", || {
        let nvml = nvml();
        let h100 = nvml.device_by_index(0)?;
        let create = |profile, placement| raw::create_gpu_instance(&nvml, &h100, profile, placement);

        let three_g = create(PROFILE_3G, Some((4, 4))).expect("3g.40gb at slot 4");
        let info = raw::gpu_instance_info(&nvml, three_g).expect("info");
        assert_eq!((info.id, info.profileId), (2, PROFILE_3G));
        assert_eq!((info.placement.start, info.placement.size), (4, 4));
        assert_eq!(info.device, raw::handle(&h100));

        assert_eq!(create(PROFILE_2G, Some((4, 2))), Err(raw::INSUFFICIENT_RESOURCES));
        assert_eq!(create(PROFILE_3G, Some((2, 4))), Err(raw::INVALID_ARGUMENT));
        assert_eq!(create(PROFILE_3G, Some((0, 2))), Err(raw::INVALID_ARGUMENT));
        assert_eq!(create(42, None), Err(raw::INVALID_ARGUMENT));

        let remaining = |profile| raw::remaining_capacity(&nvml, &h100, profile);
        assert_eq!(remaining(PROFILE_3G), Ok(1));
        assert_eq!(remaining(PROFILE_7G), Ok(0));
        assert_eq!(remaining(PROFILE_1G), Ok(4));

        // Without a placement: the lowest allowed start slot that is free.
        let one_g = create(PROFILE_1G, None).expect("1g.10gb");
        let info = raw::gpu_instance_info(&nvml, one_g).expect("info");
        assert_eq!((info.id, info.placement.start), (7, 0));
        assert_eq!(create(PROFILE_3G, None), Err(raw::INSUFFICIENT_RESOURCES));
        assert_eq!(remaining(PROFILE_3G), Ok(0));

        assert_eq!(raw::gpu_instances(&nvml, &h100, PROFILE_3G).map(|all| all.len()), Ok(1));
        assert_eq!(raw::gpu_instances(&nvml, &h100, PROFILE_1G).map(|all| all.len()), Ok(1));
        assert_eq!(raw::gpu_instance_by_id(&nvml, &h100, 2), Ok(three_g));
        assert_eq!(raw::gpu_instance_by_id(&nvml, &h100, 3), Err(raw::NOT_FOUND));

        // Destroying invalidates the handle, as with real NVML.
        assert_eq!(raw::destroy_gpu_instance(&nvml, one_g), Ok(()));
        assert_eq!(raw::destroy_gpu_instance(&nvml, one_g), Err(raw::INVALID_ARGUMENT));
        assert_eq!(raw::gpu_instance_info(&nvml, one_g).map(|_| ()), Err(raw::INVALID_ARGUMENT));
        assert_eq!(remaining(PROFILE_3G), Ok(1));

        // MIG disabled, or not MIG-capable: not supported.
        let a100 = nvml.device_by_index(1)?;
        let l40s = nvml.device_by_index(2)?;
        assert_eq!(raw::create_gpu_instance(&nvml, &a100, PROFILE_3G, None), Err(raw::NOT_SUPPORTED));
        assert_eq!(raw::gpu_instances(&nvml, &a100, PROFILE_3G), Err(raw::NOT_SUPPORTED));
        assert_eq!(raw::create_gpu_instance(&nvml, &l40s, PROFILE_3G, None), Err(raw::NOT_SUPPORTED));
        Ok(())
    });
}

#[test]
fn compute_instances_and_mig_devices() {
    let scenario = scenario!(compute_instances_and_mig_devices, MACHINE);
    scenario.run("main", || {
        let nvml = nvml();
        let h100 = nvml.device_by_index(0)?;
        let gpu_instance = raw::create_gpu_instance(&nvml, &h100, PROFILE_3G, Some((0, 4))).expect("3g.40gb");

        let profile = |compute| raw::compute_profile_info(&nvml, gpu_instance, compute);
        let whole = profile(COMPUTE_3C).expect("3c");
        assert_eq!((whole.id, whole.sliceCount, whole.instanceCount), (COMPUTE_3C, 3, 1));
        assert_eq!(profile(COMPUTE_1C).map(|info| info.instanceCount), Ok(3));
        assert_eq!(profile(COMPUTE_7C).map(|_| ()), Err(raw::NOT_SUPPORTED));
        assert_eq!(raw::compute_remaining_capacity(&nvml, gpu_instance, COMPUTE_1C), Ok(3));

        let first = raw::create_compute_instance(&nvml, gpu_instance, COMPUTE_1C).expect("1c");
        let second = raw::create_compute_instance(&nvml, gpu_instance, COMPUTE_2C).expect("2c");
        assert_eq!(raw::compute_remaining_capacity(&nvml, gpu_instance, COMPUTE_1C), Ok(0));
        assert_eq!(raw::create_compute_instance(&nvml, gpu_instance, COMPUTE_1C), Err(raw::INSUFFICIENT_RESOURCES));
        let info = raw::compute_instance_info(&nvml, second).expect("info");
        assert_eq!((info.id, info.profileId), (1, COMPUTE_2C));
        assert_eq!((info.placement.start, info.placement.size), (1, 2));
        assert_eq!(info.gpuInstance, gpu_instance);
        assert_eq!(info.device, raw::handle(&h100));
        assert_eq!(raw::compute_instances(&nvml, gpu_instance, COMPUTE_1C), Ok(vec![first]));
        assert_eq!(raw::destroy_gpu_instance(&nvml, gpu_instance), Err(raw::IN_USE));

        // One MIG device per compute instance, ordered by (GPU instance, compute instance).
        assert!(!h100.mig_is_mig_device_handle()?);
        let mig0 = h100.mig_device_by_index(0)?;
        assert!(mig0.mig_is_mig_device_handle()?);
        assert_eq!(raw::mig_ids(&nvml, &mig0), Ok((1, 0)));
        assert_eq!(mig0.name()?, "NVIDIA H100 80GB HBM3 MIG 1c.3g.40gb");
        assert_eq!(mig0.memory_info()?.total, 40192 * 1024 * 1024);
        assert_eq!(mig0.pci_info()?.bus_id, "00000000:1B:00.0");
        assert_eq!(mig0.mig_parent_device()?.uuid()?, h100.uuid()?);
        assert!(matches!(mig0.index(), Err(NvmlError::NotSupported)));
        let uuid = mig0.uuid()?;
        assert!(uuid.starts_with("MIG-") && uuid.len() == 40, "{uuid}");
        let mig1 = h100.mig_device_by_index(1)?;
        assert_eq!(raw::mig_ids(&nvml, &mig1), Ok((1, 1)));
        assert_eq!(mig1.name()?, "NVIDIA H100 80GB HBM3 MIG 2c.3g.40gb");
        assert_ne!(mig1.uuid()?, uuid);
        assert!(matches!(h100.mig_device_by_index(2), Err(NvmlError::NotFound)));
        assert_eq!(raw::mig_ids(&nvml, &h100), Err(raw::NOT_SUPPORTED));
        assert!(matches!(h100.mig_parent_device(), Err(NvmlError::InvalidArg)));

        // A MIG device is also found by its UUID.
        let found = nvml.device_by_uuid(uuid.as_str())?;
        assert_eq!(raw::mig_ids(&nvml, &found), Ok((1, 0)));

        assert_eq!(raw::destroy_compute_instance(&nvml, first), Ok(()));
        assert_eq!(raw::destroy_compute_instance(&nvml, second), Ok(()));
        assert_eq!(raw::destroy_gpu_instance(&nvml, gpu_instance), Ok(()));
        // The MIG device went with its compute instance.
        assert!(matches!(mig0.uuid(), Err(NvmlError::InvalidArg)));
        assert!(matches!(h100.mig_device_by_index(0), Err(NvmlError::NotFound)));
        Ok(())
    });
}

#[test]
fn set_mig_mode() {
    let scenario = scenario!(set_mig_mode, MACHINE);
    scenario.run("main", || {
        let nvml = nvml();
        let a100 = nvml.device_by_index(1)?;
        assert_eq!(a100.set_mig_mode(true)?, raw::SUCCESS);
        let mode = a100.mig_mode()?;
        assert_eq!((mode.current, mode.pending), (1, 1));
        let whole = raw::create_gpu_instance(&nvml, &a100, PROFILE_7G, None).expect("7g.40gb");
        assert_eq!(raw::gpu_instance_info(&nvml, whole).map(|info| info.id), Ok(0));
        assert!(matches!(a100.set_mig_mode(false), Err(NvmlError::InUse)));
        assert_eq!(raw::destroy_gpu_instance(&nvml, whole), Ok(()));
        assert_eq!(a100.set_mig_mode(false)?, raw::SUCCESS);
        assert_eq!(a100.mig_mode()?.current, 0);
        let l40s = nvml.device_by_index(2)?;
        assert!(matches!(l40s.set_mig_mode(true), Err(NvmlError::NotSupported)));
        Ok(())
    });
}

/// The H100 of [`MACHINE`] starts with a 3g.40gb at slot 4 (and its compute instance).
fn machine_with_initial_instance() -> String {
    MACHINE.replacen(
        "mig_mode = \"enabled\"\n",
        "mig_mode = \"enabled\"\n\n[[gpu.mig_instance]]\nprofile = \"3g.40gb\"\nstart = 4\n",
        1,
    )
}

#[test]
fn state_persists_across_inits() {
    let machine = machine_with_initial_instance();
    let scenario = scenario!(state_persists_across_inits, &machine).with_state();
    let state_path = scenario.state_path();
    scenario.run("main", || {
        let nvml_before = nvml();
        let h100 = nvml_before.device_by_index(0)?;
        let initial = h100.mig_device_by_index(0)?;
        assert_eq!(raw::mig_ids(&nvml_before, &initial), Ok((2, 0)));
        let uuid = initial.uuid()?;
        raw::create_gpu_instance(&nvml_before, &h100, PROFILE_1G, Some((0, 1))).expect("1g");
        drop(nvml_before);

        let state = std::fs::read_to_string(&state_path)?;
        assert!(state.contains("GPU-aaaaaaaa-0000-0000-0000-000000000000"), "{state}");

        // The last shutdown forgot everything in the process; the state file did not.
        let nvml_after = nvml();
        let h100 = nvml_after.device_by_index(0)?;
        assert_eq!(raw::gpu_instances(&nvml_after, &h100, PROFILE_1G).map(|all| all.len()), Ok(1));
        assert_eq!(h100.mig_device_by_index(0)?.uuid()?, uuid);
        assert!(matches!(h100.mig_device_by_index(1), Err(NvmlError::NotFound)));
        Ok(())
    });
}

#[test]
fn state_is_shared_between_processes() {
    let machine = machine_with_initial_instance();
    let scenario = scenario!(state_is_shared_between_processes, &machine).with_state();
    let uuid_path = scenario.dir().join("mig-uuid.txt");
    scenario.run("create", || {
        let nvml = nvml();
        let h100 = nvml.device_by_index(0)?;
        let two_g = raw::create_gpu_instance(&nvml, &h100, PROFILE_2G, Some((0, 2))).expect("2g");
        raw::create_compute_instance(&nvml, two_g, COMPUTE_2C).expect("2c");
        // After the description's 3g.40gb (GPU instance 2) in (GPU instance, compute
        // instance) order.
        let mig = h100.mig_device_by_index(1)?;
        assert_eq!(raw::mig_ids(&nvml, &mig), Ok((3, 0)));
        std::fs::write(&uuid_path, mig.uuid()?)?;
        Ok(())
    });
    scenario.run("check", || {
        let nvml = nvml();
        let h100 = nvml.device_by_index(0)?;
        let mig = h100.mig_device_by_index(1)?;
        assert_eq!(raw::mig_ids(&nvml, &mig), Ok((3, 0)));
        // MIG UUIDs are the same in every process.
        assert_eq!(mig.uuid()?, std::fs::read_to_string(&uuid_path)?);
        let two_g = raw::gpu_instance_by_id(&nvml, &h100, 3).expect("2g from the other process");
        let computes = raw::compute_instances(&nvml, two_g, COMPUTE_2C).expect("list");
        for compute in computes {
            raw::destroy_compute_instance(&nvml, compute).expect("destroy 2c");
        }
        raw::destroy_gpu_instance(&nvml, two_g).expect("destroy 2g");
        Ok(())
    });
    scenario.run("destroyed", || {
        let nvml = nvml();
        let h100 = nvml.device_by_index(0)?;
        assert_eq!(raw::gpu_instance_by_id(&nvml, &h100, 3), Err(raw::NOT_FOUND));
        // Only the description's initial 3g.40gb is left.
        assert_eq!(raw::mig_ids(&nvml, &h100.mig_device_by_index(0)?), Ok((2, 0)));
        assert!(matches!(h100.mig_device_by_index(1), Err(NvmlError::NotFound)));
        Ok(())
    });
}

#[test]
fn without_a_state_file_each_process_starts_from_the_description() {
    let machine = machine_with_initial_instance();
    let scenario = scenario!(without_a_state_file_each_process_starts_from_the_description, &machine);
    for phase in ["first", "second"] {
        scenario.run(phase, || {
            let nvml = nvml();
            let h100 = nvml.device_by_index(0)?;
            assert_eq!(raw::remaining_capacity(&nvml, &h100, PROFILE_3G), Ok(1));
            raw::create_gpu_instance(&nvml, &h100, PROFILE_3G, None).expect("3g at slot 0");
            Ok(())
        });
    }
}
