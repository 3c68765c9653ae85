//! What the broker benchmarks share: the DGX H100 inventory they register,
//! and a store seeded with allocations on nodes, written as the broker writes
//! them.

use allot_api::allocation::{Allocation, AllocationId, AllocationState, Binding, GpuGrant};
use allot_api::topology::NodeInventory;
use allot_api::units::MiB;
use allot_store::{Op, Store, Txn, layout};

/// The bundled DGX H100 fixture, as `allot-node` registers it.
pub fn inventory() -> NodeInventory {
    let path = allot_tests::repo().join("broker/placement/tests/data/dgx-h100.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    let mut value: serde_json::Value = serde_json::from_str(&text).expect("inventory JSON");
    if let Some(object) = value.as_object_mut() {
        object.remove("links");
    }
    serde_json::from_value(value).expect("inventory")
}

/// Writes `count` allocations (and the nodes they sit on) straight into the store.
pub async fn seed(store: &dyn Store, inventory: &NodeInventory, count: usize, templates: bool) {
    let nodes = count.div_ceil(8);
    let mut ops = Vec::new();
    let flush = |ops: Vec<Op>| async move {
        if !ops.is_empty() {
            assert!(store.txn(Txn::new().then(ops)).await.expect("seed txn").succeeded);
        }
    };
    // What a registration stores: the shape is computed once, as the broker does;
    // with templates, the shared part once and each node's own details.
    let shape = allot_broker::state::placement_shape(inventory);
    let (template, _) = allot_broker::state::inventory::split(inventory);
    let template_id = allot_broker::state::inventory::template_id(&template);
    if templates {
        ops.push(Op::put(layout::inventory_template(template_id), serde_json::to_vec(&template).expect("json")));
    }
    for index in 0..nodes {
        let mut node = inventory.clone();
        node.hostname = format!("dgx-{index:05}");
        for gpu in &mut node.gpus {
            gpu.uuid = Some(format!("GPU-{index:05}-{}", gpu.index));
        }
        let (_, own) = allot_broker::state::inventory::split(&node);
        let record = allot_broker::state::StoredNode {
            name: node.hostname.parse().expect("name"),
            inventory: (!templates).then(|| node.clone()),
            template: templates.then_some(template_id),
            own: templates.then_some(own),
            epoch: 1,
            registered_at_ms: 0,
            shape: Some(shape),
        };
        ops.push(Op::put(layout::node(&node.hostname), serde_json::to_vec(&record).expect("json")));
        // A whole registration is ~40 KiB; a transaction carries at most 1 MiB.
        if ops.len() == 16 {
            flush(std::mem::take(&mut ops)).await;
        }
    }
    let team = serde_json::json!({ "name": "bench", "created_at_ms": 0 });
    ops.push(Op::put(layout::team("bench"), serde_json::to_vec(&team).expect("json")));
    for index in 0..count {
        let node = format!("dgx-{:05}", index / 8);
        let gpu = &inventory.gpus[index % 8];
        let request = allot_tests::one_gpu_request("bench");
        let allocation = Allocation {
            id: AllocationId::from_u64(index as u64 + 1),
            request,
            state: AllocationState::Bound,
            binding: Some(Binding {
                node: node.parse().expect("node"),
                gpus: vec![GpuGrant {
                    index: gpu.index,
                    uuid: gpu.uuid.clone(),
                    pci_bus_id: gpu.pci_bus_id.to_string(),
                    mig: None,
                    share: None,
                    nic: None,
                }],
                cpus: vec![],
                cores: vec![(index % 8) as u32],
                memory: MiB(0),
                numa_nodes: vec![],
            }),
            explanation: "seeded".into(),
            created_at_ms: 0,
            updated_at_ms: 0,
            generation: 1,
            quota: Default::default(),
        };
        ops.push(Op::put(layout::allocation(allocation.id), serde_json::to_vec(&allocation).expect("json")));
        if ops.len() == 100 {
            flush(std::mem::take(&mut ops)).await;
        }
    }
    ops.push(Op::put(layout::counter("allocation"), (count + 1).to_string().into_bytes()));
    flush(ops).await;
}
