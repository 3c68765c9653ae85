//! Events injected through the events file and delivered by `EventSet::wait`.

use std::time::Duration;

use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enum_wrappers::device::{EccCounter, MemoryError};
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::error::NvmlError;

use crate::harness::{append_line, nvml};

/// GPUs 0 and 1 with ECC, GPU 2 without.
const MACHINE: &str = r#"
[[gpu]]
index = 0
uuid = "GPU-e0000000-0000-0000-0000-000000000000"
name = "NVIDIA H100 80GB HBM3"
pci_bus_id = "0000:1b:00.0"
memory_total_mib = 81559
ecc_enabled = true

[[gpu]]
index = 1
uuid = "GPU-e1000000-0000-0000-0000-000000000000"
name = "NVIDIA H100 80GB HBM3"
pci_bus_id = "0000:2a:00.0"
memory_total_mib = 81559
ecc_enabled = true

[[gpu]]
index = 2
uuid = "GPU-e2000000-0000-0000-0000-000000000000"
name = "NVIDIA L4"
pci_bus_id = "0000:3d:00.0"
memory_total_mib = 23034
"#;

#[test]
fn xid_and_ecc_events_are_delivered() {
    let scenario = scenario!(xid_and_ecc_events_are_delivered, MACHINE);
    // Written before the process starts: real NVML never reports events from before a set
    // was registered, and neither does the fake.
    scenario.write("events.jsonl", "{\"gpu\": 1, \"kind\": \"xid\", \"value\": 31}\n");
    let events_path = scenario.events_path();
    scenario.run("main", || {
        let nvml = nvml();
        let gpu0 = nvml.device_by_index(0)?;
        let gpu1 = nvml.device_by_index(1)?;
        let set = nvml.create_event_set()?;
        let set = gpu0.register_events(EventTypes::CRITICAL_XID_ERROR, set)?;
        let set = gpu1.register_events(
            EventTypes::CRITICAL_XID_ERROR | EventTypes::SINGLE_BIT_ECC_ERROR | EventTypes::DOUBLE_BIT_ECC_ERROR,
            set,
        )?;
        assert!(matches!(set.wait(50), Err(NvmlError::Timeout)));

        // GPU 2 is not registered and GPU 0 not for ECC: those lines are skipped.
        append_line(&events_path, r#"{"gpu": 2, "kind": "xid", "value": 13}"#);
        append_line(&events_path, r#"{"gpu": 1, "kind": "xid", "value": 79}"#);
        append_line(&events_path, r#"{"gpu": 0, "kind": "ecc_single_bit"}"#);
        append_line(&events_path, r#"{"gpu": 1, "kind": "ecc_double_bit"}"#);

        let xid = set.wait(1000)?;
        assert_eq!(xid.device.uuid()?, gpu1.uuid()?);
        assert_eq!(xid.event_type, EventTypes::CRITICAL_XID_ERROR);
        assert_eq!(xid.event_data, Some(XidError::Value(79)));
        let ecc = set.wait(1000)?;
        assert_eq!(ecc.device.uuid()?, gpu1.uuid()?);
        assert_eq!(ecc.event_type, EventTypes::DOUBLE_BIT_ECC_ERROR);
        assert_eq!(ecc.event_data, None);
        assert!(matches!(set.wait(50), Err(NvmlError::Timeout)));

        // ECC lines count whether or not anyone listened.
        let count = |device: &nvml_wrapper::Device, error| device.total_ecc_errors(error, EccCounter::Aggregate);
        assert_eq!(count(&gpu0, MemoryError::Corrected)?, 1);
        assert_eq!(count(&gpu0, MemoryError::Uncorrected)?, 0);
        assert_eq!(count(&gpu1, MemoryError::Uncorrected)?, 1);
        assert_eq!(gpu1.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile)?, 1);

        // A waiter sees a line appended while it waits.
        let writer_path = events_path.clone();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            append_line(&writer_path, r#"{"gpu": 0, "kind": "xid", "value": 48}"#);
        });
        let late = set.wait(5000)?;
        assert_eq!(late.device.uuid()?, gpu0.uuid()?);
        assert_eq!(late.event_data, Some(XidError::Value(48)));
        writer.join().map_err(|_| "writer thread panicked")?;
        set.release_events()?;
        Ok(())
    });
}

#[test]
fn supported_event_types_follow_ecc() {
    let scenario = scenario!(supported_event_types_follow_ecc, MACHINE);
    scenario.run("main", || {
        let nvml = nvml();
        let basic = EventTypes::CRITICAL_XID_ERROR | EventTypes::PSTATE_CHANGE | EventTypes::CLOCK_CHANGE;
        let ecc = EventTypes::SINGLE_BIT_ECC_ERROR | EventTypes::DOUBLE_BIT_ECC_ERROR;
        assert_eq!(nvml.device_by_index(0)?.supported_event_types_strict()?, basic | ecc);
        let l4 = nvml.device_by_index(2)?;
        assert_eq!(l4.supported_event_types_strict()?, basic);
        let refused = l4.register_events(ecc, nvml.create_event_set()?);
        assert!(matches!(refused.map(|_| ()).map_err(|err| err.error), Err(NvmlError::NotSupported)));
        Ok(())
    });
}
