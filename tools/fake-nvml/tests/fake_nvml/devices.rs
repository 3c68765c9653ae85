//! Enumeration and device properties through nvml-wrapper's safe API.

use nvml_wrapper::bitmasks::device::ThrottleReasons;
use nvml_wrapper::enum_wrappers::device::{
    EccCounter, MemoryError, TemperatureSensor, TemperatureThreshold, TopologyLevel,
};
use nvml_wrapper::enum_wrappers::nv_link::IntDeviceType;
use nvml_wrapper::enums::device::DeviceArchitecture;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper_sys::bindings::{
    NvmlLib, nvmlDevice_t, nvmlIntNvLinkDeviceType_enum_NVML_NVLINK_DEVICE_TYPE_GPU,
    nvmlIntNvLinkDeviceType_enum_NVML_NVLINK_DEVICE_TYPE_SWITCH,
};

use crate::harness::{cdylib_path, nvml};
use crate::raw;

/// Five GPUs listed out of index order: 0 and 1 behind one PCIe switch, 2 behind a sibling
/// switch, 3 under another host bridge of the same NUMA node, 4 with nothing but the basics;
/// 0 and 1 reach two NVSwitches, 3 and 4 are bridged by NVLink.
pub const MACHINE: &str = r#"
driver_version = "550.90.07"
cuda_driver_version = 12040

[[nvswitch]]
pci_bus_id = "0000:05:00.0"

[[nvswitch]]
pci_bus_id = "0000:06:00.0"
pci_device_id = 0x22a310de

[[gpu]]
index = 1
uuid = "GPU-11111111-1111-1111-1111-111111111111"
name = "NVIDIA H100 80GB HBM3"
pci_bus_id = "0000:2a:00.0"
architecture = "hopper"
memory_total_mib = 81559
numa_node = 0
cpus = "0-55,112-167"
host_bridge = "hb0"
pcie_switch = "sw0"
pcie_switch_parent = "psw0"

[[gpu.nvlink]]
remote = "nvswitch"
remote_pci_bus_id = "0000:05:00.0"
links = 2

[[gpu]]
index = 0
uuid = "GPU-00000000-0000-0000-0000-000000000000"
name = "NVIDIA H100 80GB HBM3"
pci_bus_id = "0000:1b:00.0"
pci_device_id = 0x233010de
pci_subsystem_id = 0x16c110de
architecture = "hopper"
memory_total_mib = 81559
memory_used_mib = 1024
numa_node = 0
cpus = "0-55,112-167"
host_bridge = "hb0"
pcie_switch = "sw0"
pcie_switch_parent = "psw0"
temperature_c = 34
temperature_slowdown_c = 87
temperature_shutdown_c = 92
power_usage_mw = 71000
power_limit_mw = 700000
throttle_reasons = ["sw_power_cap", "gpu_idle"]
ecc_enabled = true

[[gpu.nvlink]]
remote = "nvswitch"
remote_pci_bus_id = "0000:05:00.0"
links = 2

[[gpu.nvlink]]
remote = "nvswitch"
remote_pci_bus_id = "00000000:06:00.0"
links = 2
active = false

[[gpu]]
index = 2
uuid = "GPU-22222222-2222-2222-2222-222222222222"
name = "NVIDIA H100 80GB HBM3"
pci_bus_id = "0000:3d:00.0"
memory_total_mib = 81559
numa_node = 0
host_bridge = "hb0"
pcie_switch = "sw1"
pcie_switch_parent = "psw0"

[[gpu]]
index = 3
uuid = "GPU-33333333-3333-3333-3333-333333333333"
name = "NVIDIA A100 80GB PCIe"
pci_bus_id = "0000:9a:00.0"
architecture = "ampere"
memory_total_mib = 81920
numa_node = 0
host_bridge = "hb1"

[[gpu.nvlink]]
remote = "gpu"
remote_pci_bus_id = "0000:ab:00.0"
links = 4

[[gpu]]
index = 4
uuid = "GPU-44444444-4444-4444-4444-444444444444"
name = "NVIDIA A100 80GB PCIe"
pci_bus_id = "0000:ab:00.0"
architecture = "ampere"
memory_total_mib = 81920

[[gpu.nvlink]]
remote = "gpu"
remote_pci_bus_id = "0000:9a:00.0"
links = 4
"#;

const MIB: u64 = 1024 * 1024;

#[test]
fn enumeration_and_identity() {
    let scenario = scenario!(enumeration_and_identity, MACHINE);
    scenario.run("main", || {
        let nvml = nvml();
        assert_eq!(nvml.device_count()?, 5);
        assert_eq!(nvml.sys_driver_version()?, "550.90.07");
        assert_eq!(nvml.sys_nvml_version()?, "12.550.90.07");
        assert_eq!(nvml.sys_cuda_driver_version()?, 12040);

        let gpu0 = nvml.device_by_index(0)?;
        assert_eq!(gpu0.index()?, 0);
        assert_eq!(gpu0.uuid()?, "GPU-00000000-0000-0000-0000-000000000000");
        assert_eq!(gpu0.name()?, "NVIDIA H100 80GB HBM3");
        assert_eq!(gpu0.architecture()?, DeviceArchitecture::Hopper);
        let pci = gpu0.pci_info()?;
        assert_eq!(pci.bus_id, "00000000:1B:00.0");
        assert_eq!((pci.domain, pci.bus, pci.device), (0, 0x1b, 0));
        assert_eq!(pci.pci_device_id, 0x2330_10de);
        assert_eq!(pci.pci_sub_system_id, Some(0x16c1_10de));

        let memory = gpu0.memory_info()?;
        assert_eq!(memory.total, 81559 * MIB);
        assert_eq!(memory.used, 1024 * MIB);
        assert_eq!(memory.free, (81559 - 1024) * MIB);
        assert_eq!(memory.reserved, 0);

        // Both spellings of a bus id find the GPU, as with real NVML.
        assert_eq!(nvml.device_by_pci_bus_id("0000:2a:00.0")?.index()?, 1);
        assert_eq!(nvml.device_by_pci_bus_id("00000000:2A:00.0")?.index()?, 1);
        let by_uuid = nvml.device_by_uuid("GPU-33333333-3333-3333-3333-333333333333")?;
        assert_eq!(by_uuid.index()?, 3);
        assert_eq!(by_uuid.architecture()?, DeviceArchitecture::Ampere);
        assert_eq!(nvml.device_by_index(2)?.architecture()?, DeviceArchitecture::Unknown);

        assert!(matches!(nvml.device_by_uuid("GPU-nope"), Err(NvmlError::NotFound)));
        assert!(matches!(nvml.device_by_pci_bus_id("0000:77:00.0"), Err(NvmlError::NotFound)));
        assert!(matches!(nvml.device_by_index(5), Err(NvmlError::InvalidArg)));
        Ok(())
    });
}

#[test]
fn affinity_thermals_power_throttling_and_ecc() {
    let scenario = scenario!(affinity_thermals_power_throttling_and_ecc, MACHINE);
    scenario.run("main", || {
        let nvml = nvml();
        let gpu0 = nvml.device_by_index(0)?;
        // CPUs 0-55 and 112-167 in 64-bit words.
        let affinity = gpu0.cpu_affinity(3)?;
        assert_eq!(affinity[0], (1u64 << 56) - 1);
        assert_eq!(affinity[1], 0xffff_0000_0000_0000);
        assert_eq!(affinity[2], (1u64 << 40) - 1);
        assert_eq!(gpu0.numa_node_id()?, 0);

        assert_eq!(gpu0.temperature(TemperatureSensor::Gpu)?, 34);
        assert_eq!(gpu0.temperature_threshold(TemperatureThreshold::Slowdown)?, 87);
        assert_eq!(gpu0.temperature_threshold(TemperatureThreshold::Shutdown)?, 92);
        assert_eq!(gpu0.power_usage()?, 71000);
        assert_eq!(gpu0.enforced_power_limit()?, 700_000);
        assert_eq!(gpu0.power_management_limit()?, 700_000);
        assert_eq!(gpu0.current_throttle_reasons_strict()?, ThrottleReasons::SW_POWER_CAP | ThrottleReasons::GPU_IDLE);
        let ecc = gpu0.is_ecc_enabled()?;
        assert!(ecc.currently_enabled && ecc.pending_enabled);
        assert_eq!(gpu0.total_ecc_errors(MemoryError::Corrected, EccCounter::Volatile)?, 0);

        // What the description leaves out is not supported, as on GPUs that lack a sensor.
        let bare = nvml.device_by_index(4)?;
        assert!(matches!(bare.cpu_affinity(2), Err(NvmlError::NotSupported)));
        assert!(matches!(bare.numa_node_id(), Err(NvmlError::NotSupported)));
        assert!(matches!(bare.temperature(TemperatureSensor::Gpu), Err(NvmlError::NotSupported)));
        assert!(matches!(bare.power_usage(), Err(NvmlError::NotSupported)));
        assert!(matches!(bare.is_ecc_enabled(), Err(NvmlError::NotSupported)));
        assert!(matches!(
            bare.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Aggregate),
            Err(NvmlError::NotSupported)
        ));
        assert_eq!(bare.current_throttle_reasons()?, ThrottleReasons::empty());
        Ok(())
    });
}

#[test]
fn topology_common_ancestor_levels() {
    let scenario = scenario!(topology_common_ancestor_levels, MACHINE);
    scenario.run("main", || {
        let nvml = nvml();
        let gpu = |index| nvml.device_by_index(index);
        let level = |first: u32, second: u32| -> Result<TopologyLevel, NvmlError> {
            gpu(first)?.topology_common_ancestor(gpu(second)?)
        };
        assert_eq!(level(0, 0)?, TopologyLevel::Internal);
        assert_eq!(level(0, 1)?, TopologyLevel::Single);
        assert_eq!(level(0, 2)?, TopologyLevel::Multiple);
        assert_eq!(level(1, 2)?, TopologyLevel::Multiple);
        assert_eq!(level(0, 3)?, TopologyLevel::Node);
        assert_eq!(level(0, 4)?, TopologyLevel::System);
        assert_eq!(level(3, 4)?, TopologyLevel::System);
        // The same answer through the Nvml-level call.
        assert_eq!(nvml.topology_common_ancestor(&gpu(2)?, &gpu(1)?)?, TopologyLevel::Multiple);
        Ok(())
    });
}

#[test]
fn host_bridge_level() {
    let machine = MACHINE.replacen("host_bridge = \"hb1\"", "host_bridge = \"hb0\"", 1);
    let scenario = scenario!(host_bridge_level, &machine);
    scenario.run("main", || {
        let nvml = nvml();
        let gpu0 = nvml.device_by_index(0)?;
        let gpu3 = nvml.device_by_index(3)?;
        assert_eq!(gpu0.topology_common_ancestor(gpu3)?, TopologyLevel::HostBridge);
        Ok(())
    });
}

#[test]
fn nvlink_to_gpus_and_nvswitches() {
    let scenario = scenario!(nvlink_to_gpus_and_nvswitches, MACHINE);
    scenario.run("main", || {
        let nvml = nvml();
        let gpu0 = nvml.device_by_index(0)?;
        // Links 0-1 go to the first NVSwitch, 2-3 (inactive) to the second.
        for link in 0..4 {
            let nvlink = gpu0.link_wrapper_for(link);
            assert_eq!(nvlink.is_active()?, link < 2, "link {link}");
            let remote = nvlink.remote_pci_info()?;
            let expected = if link < 2 { "00000000:05:00.0" } else { "00000000:06:00.0" };
            assert_eq!(remote.bus_id, expected, "link {link}");
            assert_eq!(remote.pci_device_id, 0x22a3_10de);
            assert_eq!(
                raw::nvlink_remote_device_type(&nvml, &gpu0, link),
                Ok(nvmlIntNvLinkDeviceType_enum_NVML_NVLINK_DEVICE_TYPE_SWITCH)
            );
        }
        assert!(matches!(gpu0.link_wrapper_for(4).is_active(), Err(NvmlError::InvalidArg)));

        let gpu3 = nvml.device_by_index(3)?;
        let bridge = gpu3.link_wrapper_for(3);
        assert!(bridge.is_active()?);
        assert_eq!(bridge.remote_pci_info()?.bus_id, "00000000:AB:00.0");
        assert_eq!(
            raw::nvlink_remote_device_type(&nvml, &gpu3, 3),
            Ok(nvmlIntNvLinkDeviceType_enum_NVML_NVLINK_DEVICE_TYPE_GPU)
        );
        // FIXME(nvml-wrapper 0.13): `NvLink::remote_device_type` passes a temporary to NVML
        // and returns its own initial value, so it always answers Unknown whatever the
        // library says. Use nvmlDeviceGetNvLinkRemoteDeviceType through nvml-wrapper-sys.
        assert_eq!(bridge.remote_device_type(3)?, IntDeviceType::Unknown);

        let no_links = nvml.device_by_index(2)?;
        assert!(matches!(no_links.link_wrapper_for(0).is_active(), Err(NvmlError::NotSupported)));
        Ok(())
    });
}

#[test]
fn init_is_reference_counted() {
    let scenario = scenario!(init_is_reference_counted, MACHINE);
    scenario.run("main", || {
        // Two Nvml values in one process share the library, like two users of real NVML.
        let first = nvml();
        let second = nvml();
        drop(first);
        assert_eq!(second.device_count()?, 5);
        drop(second);

        // The same through the C entry points: each init needs its own shutdown.
        // SAFETY: loading the fake library runs no initialisers beyond Rust's own.
        let lib = unsafe { NvmlLib::new(cdylib_path()) }?;
        let mut count = 0;
        // SAFETY: the fake's entry points with live out-parameters.
        unsafe {
            assert_eq!(lib.nvmlShutdown(), raw::UNINITIALIZED);
            assert_eq!(lib.nvmlDeviceGetCount_v2(&mut count), raw::UNINITIALIZED);
            assert_eq!(lib.nvmlInit_v2(), raw::SUCCESS);
            assert_eq!(lib.nvmlInit_v2(), raw::SUCCESS);
            assert_eq!(lib.nvmlShutdown(), raw::SUCCESS);
            assert_eq!(lib.nvmlDeviceGetCount_v2(&mut count), raw::SUCCESS);
            assert_eq!(count, 5);
            assert_eq!(lib.nvmlShutdown(), raw::SUCCESS);
            assert_eq!(lib.nvmlDeviceGetCount_v2(&mut count), raw::UNINITIALIZED);
        }
        Ok(())
    });
}

#[test]
fn bad_arguments_are_refused_not_crashed_on() {
    let scenario = scenario!(bad_arguments_are_refused_not_crashed_on, MACHINE);
    scenario.run("main", || {
        let nvml = nvml();
        let lib = nvml.lib();
        let gpu0 = nvml.device_by_index(0)?;
        let mut index = 0;
        let mut name = [0 as std::ffi::c_char; 8];
        let garbage = 0x1234 as nvmlDevice_t;
        // SAFETY: the fake looks handles up instead of dereferencing them, and the
        // out-parameters are live locals or null, which it refuses.
        unsafe {
            assert_eq!(lib.nvmlDeviceGetIndex(garbage, &mut index), raw::INVALID_ARGUMENT);
            assert_eq!(lib.nvmlDeviceGetIndex(std::ptr::null_mut(), &mut index), raw::INVALID_ARGUMENT);
            assert_eq!(lib.nvmlDeviceGetIndex(raw::handle(&gpu0), std::ptr::null_mut()), raw::INVALID_ARGUMENT);
            assert_eq!(lib.nvmlDeviceGetName(raw::handle(&gpu0), name.as_mut_ptr(), 8), raw::INSUFFICIENT_SIZE);
            assert_eq!(lib.nvmlDeviceGetHandleByUUID(std::ptr::null(), std::ptr::null_mut()), raw::INVALID_ARGUMENT);
            let text = std::ffi::CStr::from_ptr(lib.nvmlErrorString(raw::INSUFFICIENT_RESOURCES));
            assert_eq!(text.to_str()?, "Insufficient resources");
        }
        Ok(())
    });
}
