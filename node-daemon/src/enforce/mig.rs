//! MIG instances for allocations: the [`MigDriver`] trait (what Allot needs from
//! the GPU: see the layout, enable MIG, create and destroy instances) and
//! [`ensure`], which makes a granted instance exist and undoes its own steps
//! when one fails. The NVML implementation lives in `discovery/nvml/control.rs`,
//! the only place that calls NVML.

use std::fmt;

use allot_api::allocation::{AllocationId, GpuGrant, MigGrant};

/// A MIG GPU instance as the GPU reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedInstance {
    pub gpu_instance_id: u32,
    pub profile_id: u32,
    pub start: u32,
    pub size: u32,
    /// The MIG device UUID, once a compute instance exists in it.
    pub uuid: Option<String>,
}

/// One GPU's MIG state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuMig {
    pub index: u32,
    pub uuid: Option<String>,
    /// Whether the GPU can do MIG at all.
    pub capable: bool,
    pub enabled: bool,
    pub instances: Vec<ObservedInstance>,
}

/// A MIG operation that failed, with the GPU and what the driver said.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("GPU {gpu}: {action}: {problem}")]
pub struct MigError {
    pub gpu: u32,
    pub action: String,
    pub problem: String,
}

/// One external system, shaped by what Allot needs from MIG.
pub trait MigDriver: fmt::Debug + Send {
    fn observe(&self) -> Result<Vec<GpuMig>, MigError>;
    fn enable(&self, gpu: u32) -> Result<(), MigError>;
    /// Turns MIG off again (only to undo an enable on an empty GPU).
    fn disable(&self, gpu: u32) -> Result<(), MigError>;
    /// Creates a GPU instance at the placement and one compute instance that
    /// takes all of it; answers the instance with its MIG device UUID.
    fn create(&self, gpu: u32, profile_id: u32, start: u32, size: u32) -> Result<ObservedInstance, MigError>;
    /// Destroys a GPU instance with its compute instances; gone already is fine.
    fn destroy(&self, gpu: u32, gpu_instance_id: u32) -> Result<(), MigError>;
}

/// A MIG instance an allocation holds, as recorded in the node's state file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecordedMig {
    pub gpu_index: u32,
    pub gpu_uuid: Option<String>,
    pub profile: String,
    pub profile_id: u32,
    pub start: u32,
    pub size: u32,
    pub gpu_instance_id: u32,
    pub uuid: Option<String>,
    /// Created by Allot for this allocation (destroyed on release), or an
    /// existing unowned instance it adopted (left in place on release).
    pub created: bool,
}

/// A step [`ensure`] took, so a later failure can undo it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Undo {
    Disable { gpu: u32 },
    Recreate { gpu: u32, instance: ObservedInstance },
}

fn overlaps(a_start: u32, a_size: u32, b_start: u32, b_size: u32) -> bool {
    a_start < b_start + b_size && b_start < a_start + a_size
}

/// Makes the granted instance exist on `grant`'s GPU. `held` are the instances
/// live allocations hold (gpu index, GPU instance id, allocation): never touched.
///
/// - An unowned instance of exactly the granted profile and slot is adopted.
/// - With `recarve`, MIG is enabled if needed and unowned instances overlapping
///   the slot are destroyed first (as the broker planned).
/// - Otherwise the instance is created where the broker said; the GPU may refuse.
///
/// On error every step this call took is undone, best effort, and the error
/// says what was left if undoing failed.
pub fn ensure(
    driver: &dyn MigDriver,
    gpu: &GpuGrant,
    grant: &MigGrant,
    held: &[(u32, u32, AllocationId)],
    on_created: &mut dyn FnMut(&RecordedMig),
) -> Result<RecordedMig, MigError> {
    let error = |action: &str, problem: String| MigError { gpu: gpu.index, action: action.to_owned(), problem };
    let views = driver.observe()?;
    let Some(view) = views.iter().find(|view| view.index == gpu.index) else {
        return Err(error("find the GPU", "NVML has no GPU with this index".into()));
    };
    if let (Some(granted), Some(found)) = (&gpu.uuid, &view.uuid)
        && granted != found
    {
        return Err(error(
            "check the GPU",
            format!("the broker granted {granted} but this index is {found} now; re-register the node"),
        ));
    }
    if !view.capable {
        return Err(error("check the GPU", "it is not MIG-capable".into()));
    }
    let holder = |instance: &ObservedInstance| {
        held.iter()
            .find(|(index, id, _)| *index == gpu.index && *id == instance.gpu_instance_id)
            .map(|(_, _, allocation)| *allocation)
    };
    let record = |instance: &ObservedInstance, created: bool| RecordedMig {
        gpu_index: gpu.index,
        gpu_uuid: view.uuid.clone(),
        profile: grant.profile.clone(),
        profile_id: grant.profile_id,
        start: grant.start,
        size: grant.size,
        gpu_instance_id: instance.gpu_instance_id,
        uuid: instance.uuid.clone(),
        created,
    };
    if view.enabled
        && let Some(existing) = view
            .instances
            .iter()
            .find(|instance| instance.profile_id == grant.profile_id && instance.start == grant.start)
    {
        if let Some(owner) = holder(existing) {
            return Err(error(
                "adopt the instance",
                format!(
                    "E-MIG-TAKEN: the {} instance at slot {} belongs to allocation {owner}",
                    grant.profile, grant.start
                ),
            ));
        }
        if existing.uuid.is_some() {
            return Ok(record(existing, false));
        }
    }
    let mut undo = Vec::new();
    let result = carve(driver, gpu.index, view, grant, &holder, &mut undo).map(|instance| {
        let recorded = record(&instance, true);
        on_created(&recorded);
        recorded
    });
    if let Err(failure) = result {
        let mut leftovers = Vec::new();
        for step in undo.into_iter().rev() {
            let outcome = match &step {
                Undo::Disable { gpu } => driver.disable(*gpu),
                Undo::Recreate { gpu, instance } => {
                    driver.create(*gpu, instance.profile_id, instance.start, instance.size).map(|_| ())
                }
            };
            if let Err(undo_error) = outcome {
                leftovers.push(format!("{step:?}: {undo_error}"));
            }
        }
        let mut failure = failure;
        if !leftovers.is_empty() {
            failure.problem.push_str(&format!("; could not undo: {}", leftovers.join("; ")));
        }
        return Err(failure);
    }
    result
}

/// The re-carve and creation steps of [`ensure`].
fn carve(
    driver: &dyn MigDriver,
    gpu: u32,
    view: &GpuMig,
    grant: &MigGrant,
    holder: &dyn Fn(&ObservedInstance) -> Option<AllocationId>,
    undo: &mut Vec<Undo>,
) -> Result<ObservedInstance, MigError> {
    let error = |action: &str, problem: String| MigError { gpu, action: action.to_owned(), problem };
    if grant.recarve {
        if !view.enabled {
            driver.enable(gpu)?;
            undo.push(Undo::Disable { gpu });
        }
        let in_the_way: Vec<&ObservedInstance> = view
            .instances
            .iter()
            .filter(|instance| overlaps(instance.start, instance.size, grant.start, grant.size))
            .collect();
        // Check every instance before destroying any: never half a re-carve.
        if let Some(owner) = in_the_way.iter().find_map(|instance| holder(instance)) {
            return Err(error(
                "re-carve",
                format!(
                    "E-MIG-TAKEN: slots {}..{} overlap an instance of allocation {owner}; refusing to destroy it",
                    grant.start,
                    grant.start + grant.size
                ),
            ));
        }
        for instance in in_the_way {
            driver.destroy(gpu, instance.gpu_instance_id)?;
            undo.push(Undo::Recreate { gpu, instance: instance.clone() });
        }
    } else if !view.enabled {
        return Err(error(
            "create the instance",
            "E-MIG-REFUSED: MIG mode is disabled and the broker did not plan a re-carve".into(),
        ));
    }
    driver.create(gpu, grant.profile_id, grant.start, grant.size).map_err(|failure| MigError {
        problem: format!("E-MIG-REFUSED: {} at slot {}: {}", grant.profile, grant.start, failure.problem),
        ..failure
    })
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    /// A driver over an in-memory layout, for the planning rules only; the real
    /// NVML path is tested against the fake library in `tests/enforce.rs`.
    #[derive(Debug)]
    struct Layout {
        gpu: RefCell<GpuMig>,
        calls: RefCell<Vec<String>>,
        refuse_create: bool,
    }

    impl MigDriver for Layout {
        fn observe(&self) -> Result<Vec<GpuMig>, MigError> {
            Ok(vec![self.gpu.borrow().clone()])
        }
        fn enable(&self, _gpu: u32) -> Result<(), MigError> {
            self.calls.borrow_mut().push("enable".into());
            self.gpu.borrow_mut().enabled = true;
            Ok(())
        }
        fn disable(&self, _gpu: u32) -> Result<(), MigError> {
            self.calls.borrow_mut().push("disable".into());
            self.gpu.borrow_mut().enabled = false;
            Ok(())
        }
        fn create(&self, gpu: u32, profile_id: u32, start: u32, size: u32) -> Result<ObservedInstance, MigError> {
            self.calls.borrow_mut().push(format!("create {profile_id}@{start}"));
            if self.refuse_create && profile_id == 9 {
                return Err(MigError { gpu, action: "create".into(), problem: "insufficient resources".into() });
            }
            let instance = ObservedInstance {
                gpu_instance_id: 100 + start,
                profile_id,
                start,
                size,
                uuid: Some(format!("MIG-{start}")),
            };
            self.gpu.borrow_mut().instances.push(instance.clone());
            Ok(instance)
        }
        fn destroy(&self, _gpu: u32, id: u32) -> Result<(), MigError> {
            self.calls.borrow_mut().push(format!("destroy {id}"));
            self.gpu.borrow_mut().instances.retain(|instance| instance.gpu_instance_id != id);
            Ok(())
        }
    }

    fn instance(id: u32, profile_id: u32, start: u32, size: u32) -> ObservedInstance {
        ObservedInstance { gpu_instance_id: id, profile_id, start, size, uuid: Some(format!("MIG-old-{id}")) }
    }

    fn layout(enabled: bool, instances: Vec<ObservedInstance>, refuse_create: bool) -> Layout {
        Layout {
            gpu: RefCell::new(GpuMig { index: 0, uuid: Some("GPU-0".into()), capable: true, enabled, instances }),
            calls: RefCell::new(Vec::new()),
            refuse_create,
        }
    }

    fn grant(start: u32, recarve: bool) -> (GpuGrant, MigGrant) {
        let mig = MigGrant { profile: "3g.40gb".into(), profile_id: 9, start, size: 4, recarve };
        let gpu = GpuGrant {
            index: 0,
            uuid: Some("GPU-0".into()),
            pci_bus_id: "0000:07:00.0".into(),
            mig: Some(mig.clone()),
            share: None,
            nic: None,
        };
        (gpu, mig)
    }

    fn check(
        driver: &Layout,
        start: u32,
        recarve: bool,
        held: &[(u32, u32, AllocationId)],
    ) -> (Result<bool, String>, Vec<String>) {
        let (gpu, mig) = grant(start, recarve);
        let result =
            ensure(driver, &gpu, &mig, held, &mut |_| {}).map(|recorded| recorded.created).map_err(|e| e.to_string());
        (result, driver.calls.borrow().clone())
    }

    #[test]
    fn an_exact_unowned_instance_is_adopted_without_touching_the_gpu() {
        let driver = layout(true, vec![instance(1, 9, 0, 4)], false);
        assert_eq!(check(&driver, 0, false, &[]), (Ok(false), vec![]));
    }

    #[test]
    fn an_instance_held_by_a_live_allocation_is_never_adopted_or_destroyed() {
        let owner = AllocationId::from_u64(7);
        let driver = layout(true, vec![instance(1, 9, 0, 4)], false);
        let (result, calls) = check(&driver, 0, true, &[(0, 1, owner)]);
        assert!(result.is_err_and(|e| e.contains("E-MIG-TAKEN")));
        assert!(calls.is_empty(), "{calls:?}");
        let driver = layout(true, vec![instance(3, 14, 2, 2)], false);
        let (result, calls) = check(&driver, 0, true, &[(0, 3, owner)]);
        assert!(result.is_err_and(|e| e.contains("a-0000000000000007")));
        assert!(calls.is_empty(), "{calls:?}");
    }

    #[test]
    fn a_recarve_destroys_only_overlapping_orphans() {
        let driver = layout(true, vec![instance(3, 14, 2, 2), instance(6, 19, 6, 1)], false);
        assert_eq!(check(&driver, 0, true, &[]), (Ok(true), vec!["destroy 3".into(), "create 9@0".into()]));
    }

    #[test]
    fn a_recarve_enables_mig_first() {
        let driver = layout(false, vec![], false);
        assert_eq!(check(&driver, 4, true, &[]), (Ok(true), vec!["enable".into(), "create 9@4".into()]));
    }

    #[test]
    fn without_a_recarve_the_gpu_decides_and_a_refusal_says_so() {
        let driver = layout(true, vec![], true);
        let (result, calls) = check(&driver, 0, false, &[]);
        assert!(result.is_err_and(|e| e.contains("E-MIG-REFUSED")));
        assert_eq!(calls, vec!["create 9@0".to_owned()]);
    }

    #[test]
    fn a_refused_creation_after_a_recarve_puts_the_orphans_back() {
        let driver = layout(true, vec![instance(3, 14, 2, 2)], true);
        let (result, calls) = check(&driver, 0, true, &[]);
        assert!(result.is_err());
        assert_eq!(calls, vec!["destroy 3".to_owned(), "create 9@0".into(), "create 14@2".into()]);
    }
}
