//! The enforcer against the fake NVML library (loaded through the real
//! nvml-wrapper path, MIG state in a file) and real cgroup v1 hierarchies:
//! refused placements roll back, re-carves destroy only unowned instances,
//! live allocations' instances are never touched, release undoes everything.
//!
//! One test function: the fake library reads its machine description from the
//! environment, which is set once before anything else runs.

use std::path::Path;

use allot_api::allocation::{
    Allocation, AllocationId, AllocationState, Binding, GpuDemand, GpuGrant, Interconnect, MigGrant, ValidatedRequest,
};
use allot_api::units::MiB;
use allot_node::discovery::nvml::NvmlSource;
use allot_node::discovery::nvml::control::NvmlControl;
use allot_node::enforce::Enforcer;
use allot_node::enforce::cgroup::V1Driver;
use allot_node::enforce::mig::MigDriver;
use allot_node::fixtures;

#[allow(clippy::too_many_arguments)]
fn allocation(
    id: u64,
    node: &str,
    gpu: u32,
    profile: &str,
    profile_id: u32,
    start: u32,
    size: u32,
    recarve: bool,
) -> Allocation {
    let request = ValidatedRequest::new(
        "ml".parse().expect("team"),
        GpuDemand::Mig { profile: profile.to_owned() },
        1,
        MiB(64),
        Interconnect::Any,
        false,
        None,
        None,
    )
    .expect("valid request");
    let binding = Binding {
        node: node.parse().expect("node"),
        gpus: vec![GpuGrant {
            index: gpu,
            uuid: None,
            pci_bus_id: String::new(),
            mig: Some(MigGrant { profile: profile.to_owned(), profile_id, start, size, recarve }),
            share: None,
            nic: None,
        }],
        cpus: vec![0],
        cores: vec![0],
        memory: MiB(64),
        numa_nodes: vec![0],
    };
    // Through serde, so fields other work adds (with defaults) need no change here.
    serde_json::from_value(serde_json::json!({
        "id": AllocationId::from_u64(id),
        "request": request,
        "state": AllocationState::Bound,
        "binding": binding,
        "explanation": "",
        "created_at_ms": 0,
        "updated_at_ms": 0,
        "generation": 1,
    }))
    .expect("allocation")
}

/// (profile id, start) of each GPU instance on a GPU.
fn layout(driver: &dyn MigDriver, gpu: u32) -> Vec<(u32, u32)> {
    let views = driver.observe().expect("observe");
    let view = views.iter().find(|view| view.index == gpu).expect("gpu");
    view.instances.iter().map(|instance| (instance.profile_id, instance.start)).collect()
}

fn cgroup_exists(parent: &str, id: u64) -> bool {
    ["cpuset", "memory", "pids"].iter().any(|controller| {
        Path::new("/sys/fs/cgroup").join(controller).join(parent).join(AllocationId::from_u64(id).to_string()).exists()
    })
}

#[test]
fn mig_enforcement_on_the_fake_nvml_with_real_cgroups() {
    let fixture = fixtures::find_fixture("dgx-a100-mig").expect("fixture");
    let library = fixtures::find_fake_nvml().expect("build it: cargo build -p allot-fake-nvml");
    let dir = tempfile::tempdir().expect("temp dir");
    // SAFETY: the only test in this binary sets the environment before it starts
    // any thread or loads NVML.
    unsafe {
        std::env::set_var("ALLOT_FAKE_NVML_MACHINE", &fixture.nvml_machine);
        std::env::set_var("ALLOT_FAKE_NVML_STATE", dir.path().join("nvml-state.json"));
        std::env::set_var("ALLOT_FAKE_NVML_EVENTS", dir.path().join("events.jsonl"));
    }
    std::fs::write(dir.path().join("events.jsonl"), "").expect("events file");
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test creates real cgroups and needs root");
    assert!(
        Path::new("/sys/fs/cgroup/pids/cgroup.procs").is_file(),
        "this test needs cgroup v1 cpuset, memory and pids mounted under /sys/fs/cgroup"
    );
    let source = NvmlSource::library(&library);
    let open = || -> Box<dyn MigDriver> { Box::new(NvmlControl::open(&source).expect("load").expect("library")) };
    let observer = open();
    let parent = format!("allot-unit-{}-enforce", std::process::id());
    let cgroups = V1Driver::new("/sys/fs/cgroup", &parent).expect("driver");
    let state_dir = dir.path().join("state");
    let mut enforcer = Enforcer::new("a100", Box::new(cgroups), Some(open()), &state_dir, 64).expect("enforcer");

    // The fixture: GPU 2 holds an administrator's 4g.40gb at 0 and 3g.40gb at 4;
    // GPU 5 is MIG-enabled and empty; GPU 6 has MIG disabled.
    assert_eq!(layout(observer.as_ref(), 2), vec![(5, 0), (9, 4)]);

    // A placement the GPU does not allow (3g.40gb starts at 0 or 4): refused,
    // and the cgroup made before it is gone again.
    let error = enforcer.apply(&allocation(1, "a100", 5, "3g.40gb", 9, 2, 4, false)).expect_err("slot 2");
    assert!(error.to_string().contains("E-MIG-REFUSED"), "{error}");
    assert!(!cgroup_exists(&parent, 1), "rollback left the cgroup");
    assert!(enforcer.state().allocations.is_empty());
    assert_eq!(layout(observer.as_ref(), 5), vec![]);

    // A slot taken by an instance the broker did not plan to remove: the GPU refuses.
    let error = enforcer.apply(&allocation(2, "a100", 2, "3g.40gb", 9, 0, 4, false)).expect_err("overlap");
    assert!(error.to_string().contains("insufficient resources"), "{error}");
    assert!(!cgroup_exists(&parent, 2));
    assert_eq!(layout(observer.as_ref(), 2), vec![(5, 0), (9, 4)]);

    // With a re-carve the overlapping unowned instance goes; the other stays.
    let message = enforcer.apply(&allocation(3, "a100", 2, "3g.40gb", 9, 0, 4, true)).expect("re-carve");
    assert!(message.contains("created"), "{message}");
    assert_eq!(layout(observer.as_ref(), 2), vec![(9, 0), (9, 4)]);
    assert!(cgroup_exists(&parent, 3));

    // An instance a live allocation holds is never destroyed for another.
    let error = enforcer.apply(&allocation(4, "a100", 2, "3g.40gb", 9, 0, 4, true)).expect_err("held");
    assert!(error.to_string().contains("E-MIG-TAKEN"), "{error}");
    assert_eq!(layout(observer.as_ref(), 2), vec![(9, 0), (9, 4)]);
    assert!(!cgroup_exists(&parent, 4));

    // An unowned instance of exactly the grant is adopted, and stays on release.
    enforcer.apply(&allocation(5, "a100", 2, "3g.40gb", 9, 4, 4, false)).expect("adopt");
    assert!(!enforcer.state().allocations[&AllocationId::from_u64(5)].mig[0].created, "adopted, not created");

    // A GPU with MIG disabled is switched on by a re-carve.
    enforcer.apply(&allocation(6, "a100", 6, "1g.10gb", 19, 3, 1, true)).expect("enable and create");
    assert_eq!(layout(observer.as_ref(), 6), vec![(19, 3)]);

    // Not this node's: refused before anything is made.
    let error = enforcer.apply(&allocation(7, "other", 5, "1g.10gb", 19, 0, 1, false)).expect_err("foreign");
    assert!(error.to_string().contains("E-NOT-THIS-NODE"), "{error}");
    assert!(!cgroup_exists(&parent, 7));

    // Release undoes what Allot made and leaves what it adopted.
    for id in [3, 5, 6] {
        enforcer.release(AllocationId::from_u64(id)).expect("release");
        assert!(!cgroup_exists(&parent, id));
    }
    assert_eq!(layout(observer.as_ref(), 2), vec![(9, 4)]);
    assert_eq!(layout(observer.as_ref(), 6), vec![]);
    assert!(enforcer.state().allocations.is_empty());

    // A GPU falls off the bus: the others' MIG layouts are still observed and
    // enforced (regression: one lost GPU failed every MIG observation).
    let mut events = std::fs::OpenOptions::new().append(true).open(dir.path().join("events.jsonl")).expect("events");
    std::io::Write::write_all(&mut events, b"{\"gpu\": 6, \"kind\": \"fallen_off_bus\"}\n").expect("append");
    let views = observer.observe().expect("observe with a lost GPU");
    assert!(views.iter().all(|view| view.index != 6), "the lost GPU was observed");
    enforcer.apply(&allocation(8, "a100", 5, "1g.10gb", 19, 0, 1, false)).expect("enforce beside a lost GPU");
    assert_eq!(layout(observer.as_ref(), 5), vec![(19, 0)]);
    enforcer.release(AllocationId::from_u64(8)).expect("release");
    for controller in ["cpuset", "memory", "pids"] {
        let _ = std::fs::remove_dir(Path::new("/sys/fs/cgroup").join(controller).join(&parent));
    }
}
