//! A broken machine description (or state file) fails `nvmlInit_v2`, and stderr says which
//! file and what is wrong.

use nvml_wrapper::Nvml;
use nvml_wrapper::error::NvmlError;

use crate::harness::{MACHINE_VAR, STATE_VAR, cdylib_path, stderr};

/// One GPU entry; `extra` is appended inside it.
fn gpu(index: u32, bus: u32, extra: &str) -> String {
    format!(
        "[[gpu]]\nindex = {index}\nuuid = \"GPU-{index:08x}-{bus:04x}-0000-0000-000000000000\"\n\
         name = \"NVIDIA H100 80GB HBM3\"\npci_bus_id = \"0000:{bus:02x}:00.0\"\n\
         memory_total_mib = 81559\n{extra}\n"
    )
}

fn four_gpus(last_extra: &str) -> String {
    [gpu(0, 0x1b, ""), gpu(1, 0x2a, ""), gpu(2, 0x3d, ""), gpu(3, 0x9a, last_extra)].concat()
}

const MIG: &str = "mig_geometry = \"h100-80gb\"\nmig_mode = \"enabled\"\n";

/// (file contents, the problem stderr must name after the file's path)
fn cases() -> Vec<(String, &'static str)> {
    vec![
        (
            four_gpus(&format!(
                "{MIG}[[gpu.mig_instance]]\nprofile = \"3g.40gb\"\nstart = 4\n\
                 [[gpu.mig_instance]]\nprofile = \"3g.40gb\"\nstart = 2\n"
            )),
            "gpu[3].mig_instance[1]: 3g.40gb cannot start at slot 2 (allowed 0, 4)",
        ),
        (
            four_gpus(&format!(
                "{MIG}[[gpu.mig_instance]]\nprofile = \"4g.40gb\"\nstart = 0\n\
                 [[gpu.mig_instance]]\nprofile = \"1g.10gb\"\nstart = 3\n"
            )),
            "gpu[3].mig_instance[1]: 1g.10gb at slot 3 overlaps the 4g.40gb at slot 0",
        ),
        (
            four_gpus("[[gpu.mig_instance]]\nprofile = \"3g.40gb\"\nstart = 0\n"),
            "gpu[3].mig_instance: needs mig_geometry (this GPU is not MIG-capable)",
        ),
        (
            four_gpus("mig_geometry = \"h100-96gb\"\n"),
            "gpu[3].mig_geometry: unknown geometry \"h100-96gb\" (expected one of a100-40gb, \
             a100-80gb, h100-80gb, h100-94gb, h200-141gb, a30-24gb)",
        ),
        ([gpu(0, 0x1b, ""), gpu(0, 0x2a, "")].concat(), "gpu[1]: index 0 is already used by gpu[0]"),
        (
            [gpu(0, 0x1b, ""), gpu(2, 0x2a, "")].concat(),
            "gpu[1]: index 2 is out of range; the 2 GPUs must have indices 0 to 1 with no gaps",
        ),
        ([gpu(0, 0x1b, ""), gpu(1, 0x1b, "")].concat(), "gpu[1].pci_bus_id: 0000:1b:00.0 is already used by gpu[0]"),
        (
            [gpu(0, 0x1b, ""), gpu(1, 0x2a, "").replace("GPU-00000001-002a", "GPU-00000000-001b")].concat(),
            "gpu[1]: uuid GPU-00000000-001b-0000-0000-000000000000 is already used by gpu[0]",
        ),
        (
            [
                gpu(0, 0x1b, "[[gpu.nvlink]]\nremote = \"nvswitch\"\nremote_pci_bus_id = \"0000:05:00.0\"\n"),
                gpu(1, 0x2a, ""),
            ]
            .concat(),
            "gpu[0].nvlink[0]: remote_pci_bus_id 0000:05:00.0 is neither a listed GPU nor a \
             listed NVSwitch",
        ),
        (
            four_gpus("throttle_reasons = [\"hw_slowdown\", \"too_hot\"]\n"),
            "gpu[3].throttle_reasons[1]: unknown throttle reason \"too_hot\"",
        ),
        ("[[gpu]\nindex = 0\n".to_owned(), "TOML parse error at line 1"),
    ]
}

fn init_fails() -> crate::TestResult {
    let path = cdylib_path();
    let result = Nvml::builder().lib_path(path.as_os_str()).init();
    assert!(matches!(result, Err(NvmlError::Unknown)), "init should fail with Unknown, got {:?}", result.map(|_| ()));
    Ok(())
}

#[test]
fn malformed_descriptions_fail_init_with_a_message() {
    let scenario = scenario!(malformed_descriptions_fail_init_with_a_message, "");
    for (number, (text, problem)) in cases().into_iter().enumerate() {
        let path = scenario.write(&format!("case{number}.toml"), &text);
        let env = [(MACHINE_VAR, Some(path.as_os_str()))];
        if let Some(output) = scenario.run_with(&format!("case{number}"), &env, init_fails) {
            let expected = format!("allot-fake-nvml: {}: {problem}", path.display());
            let printed = stderr(&output);
            assert!(printed.contains(&expected), "case {number}: stderr lacks {expected:?}:\n{printed}");
        }
    }
}

#[test]
fn missing_or_unreadable_files_fail_init_with_a_message() {
    let scenario = scenario!(missing_or_unreadable_files_fail_init_with_a_message, &gpu(0, 0x1b, ""));
    let unset = [(MACHINE_VAR, None)];
    if let Some(output) = scenario.run_with("unset", &unset, init_fails) {
        assert!(stderr(&output).contains("allot-fake-nvml: ALLOT_FAKE_NVML_MACHINE is not set"), "{}", stderr(&output));
    }

    let absent = scenario.dir().join("absent.toml");
    let missing = [(MACHINE_VAR, Some(absent.as_os_str()))];
    if let Some(output) = scenario.run_with("missing", &missing, init_fails) {
        let expected = format!("allot-fake-nvml: {}: No such file", absent.display());
        assert!(stderr(&output).contains(&expected), "{}", stderr(&output));
    }

    let state = scenario.write(
        "bad-state.json",
        r#"{"gpus": {"GPU-00000000-001b-0000-0000-000000000000": {"current": true, "pending": true}}}"#,
    );
    let bad_state = [(STATE_VAR, Some(state.as_os_str()))];
    if let Some(output) = scenario.run_with("state", &bad_state, init_fails) {
        let expected = format!(
            "allot-fake-nvml: {}: gpus.GPU-00000000-001b-0000-0000-000000000000: the machine \
             description gives this GPU no mig_geometry",
            state.display()
        );
        assert!(stderr(&output).contains(&expected), "{}", stderr(&output));
    }
}
