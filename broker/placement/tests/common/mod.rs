//! Test harness: the fixture machines, a cluster builder, requests written as short
//! strings, and decisions summarised on one line, so each test case is one line.
#![allow(dead_code)]

use allot_api::allocation::{
    Binding, GpuDemand, GpuGrant, Interconnect, MigGrant, MilliGpu, NodeName, ShareGrant, ValidatedRequest,
};
use allot_api::topology::NodeInventory;
use allot_api::units::{CpuSet, MiB};
use allot_placement::{Decision, NodeStatus, NodeUsage, NodeView, PlacementOptions, Refusal, place_with};

/// A fixture machine, as `allot-node inventory --fixture NAME --output json` prints
/// it (`tests/data/README.md`). The extra `links` key is ignored by serde.
pub fn fixture(name: &str) -> NodeInventory {
    let json = match name {
        "dgx-h100" => include_str!("../data/dgx-h100.json"),
        "dgx-a100-mig" => include_str!("../data/dgx-a100-mig.json"),
        "pcie-l40s" => include_str!("../data/pcie-l40s.json"),
        "pcie-h100-nvl" => include_str!("../data/pcie-h100-nvl.json"),
        other => panic!("no fixture {other}"),
    };
    serde_json::from_str(json).expect("fixture parses as a NodeInventory")
}

/// Memory written as `64g` (GiB) or `500m` (MiB).
pub fn memory(text: &str) -> MiB {
    if let Some(gib) = text.strip_suffix('g') {
        MiB(gib.parse::<u64>().expect("GiB") * 1024)
    } else {
        MiB(text.strip_suffix('m').unwrap_or(text).parse().expect("MiB"))
    }
}

/// A request written as `KIND [ARGS] [key=value ...]`:
/// `whole 4 ic=nvlink cpus=16 mem=64g model=H100 rdma min-mem=50g`, `mig 3g.40gb`,
/// `share 250 10g`, `cpu 8` (cpu-only with 8 cores).
pub fn request(spec: &str) -> ValidatedRequest {
    let mut words = spec.split_whitespace();
    let kind = words.next().expect("a kind");
    let mut cpus = 0;
    let gpus = match kind {
        "whole" => GpuDemand::Whole { count: words.next().expect("count").parse().expect("count"), models: vec![] },
        "mig" => GpuDemand::Mig { profile: words.next().expect("profile").to_owned() },
        "share" => GpuDemand::Share {
            compute: MilliGpu(words.next().expect("milli-GPU").parse().expect("milli-GPU")),
            memory: memory(words.next().expect("memory")),
        },
        "cpu" => {
            cpus = words.next().expect("cores").parse().expect("cores");
            GpuDemand::None
        }
        other => panic!("unknown request kind {other}"),
    };
    let (mut mem, mut interconnect, mut rdma, mut min_memory, mut models) =
        (MiB(0), Interconnect::Any, false, None, vec![]);
    for word in words {
        match word.split_once('=') {
            Some(("cpus", value)) => cpus = value.parse().expect("cpus"),
            Some(("mem", value)) => mem = memory(value),
            Some(("ic", value)) => interconnect = value.parse().expect("interconnect"),
            Some(("model", value)) => models.push(value.to_owned()),
            Some(("min-mem", value)) => min_memory = Some(memory(value)),
            None if word == "rdma" => rdma = true,
            _ => panic!("unknown request word {word}"),
        }
    }
    let gpus = match gpus {
        GpuDemand::Whole { count, .. } => GpuDemand::Whole { count, models },
        other => other,
    };
    ValidatedRequest::new("ml".parse().expect("team"), gpus, cpus, mem, interconnect, rdma, min_memory, None)
        .expect("a valid request")
}

#[derive(Debug, Clone)]
pub struct Node {
    pub name: NodeName,
    pub inventory: NodeInventory,
    pub status: NodeStatus,
    pub bindings: Vec<Binding>,
}

/// Nodes with their allocations.
#[derive(Debug, Clone, Default)]
pub struct Cluster {
    pub nodes: Vec<Node>,
}

impl Cluster {
    pub fn new() -> Self {
        Cluster::default()
    }

    /// Adds a node built from a fixture machine.
    pub fn node(self, name: &str, fixture_name: &str) -> Self {
        self.node_from(name, fixture(fixture_name))
    }

    pub fn node_from(mut self, name: &str, inventory: NodeInventory) -> Self {
        self.nodes.push(Node {
            name: name.parse().expect("node name"),
            inventory,
            status: NodeStatus::Ready,
            bindings: vec![],
        });
        self
    }

    fn find(&mut self, name: &str) -> &mut Node {
        self.nodes.iter_mut().find(|node| node.name.as_str() == name).expect("node in cluster")
    }

    pub fn status(mut self, name: &str, status: NodeStatus) -> Self {
        self.find(name).status = status;
        self
    }

    pub fn edit(mut self, name: &str, change: impl FnOnce(&mut NodeInventory)) -> Self {
        change(&mut self.find(name).inventory);
        self
    }

    /// Adds an allocation to a node, written as words: `gpu=0` (whole),
    /// `mig=2:4g.40gb@0`, `share=0:600/20g`, `cores=0-7`, `mem=10g`.
    pub fn take(mut self, name: &str, spec: &str) -> Self {
        let node = self.find(name);
        let mut binding = Binding {
            node: node.name.clone(),
            gpus: vec![],
            cpus: vec![],
            cores: vec![],
            memory: MiB(0),
            numa_nodes: vec![],
        };
        for word in spec.split_whitespace() {
            let (key, value) = word.split_once('=').expect("key=value");
            let grant = |index: u32| GpuGrant {
                index,
                uuid: None,
                pci_bus_id: String::new(),
                mig: None,
                share: None,
                nic: None,
            };
            match key {
                "gpu" => binding.gpus.push(grant(value.parse().expect("GPU index"))),
                "mig" => {
                    let (gpu, rest) = value.split_once(':').expect("GPU:PROFILE@START");
                    let (profile, start) = rest.split_once('@').expect("PROFILE@START");
                    let gpu: u32 = gpu.parse().expect("GPU index");
                    let known = node.inventory.gpus.iter().find(|g| g.index == gpu).and_then(|g| g.mig.as_ref());
                    let profile = known
                        .and_then(|mig| mig.profiles.iter().find(|p| p.name == profile))
                        .expect("a profile of that GPU");
                    binding.gpus.push(GpuGrant {
                        mig: Some(MigGrant {
                            profile: profile.name.clone(),
                            profile_id: profile.profile_id,
                            start: start.parse().expect("start"),
                            size: profile.memory_slices,
                            recarve: false,
                        }),
                        ..grant(gpu)
                    });
                }
                "share" => {
                    let (gpu, rest) = value.split_once(':').expect("GPU:MILLI/MEM");
                    let (compute, mem) = rest.split_once('/').expect("MILLI/MEM");
                    binding.gpus.push(GpuGrant {
                        share: Some(ShareGrant {
                            compute: MilliGpu(compute.parse().expect("milli")),
                            memory: memory(mem),
                        }),
                        ..grant(gpu.parse().expect("GPU index"))
                    });
                }
                "cores" => binding.cores = value.parse::<CpuSet>().expect("core list").indices().to_vec(),
                "mem" => binding.memory = memory(value),
                other => panic!("unknown binding word {other}"),
            }
        }
        node.bindings.push(binding);
        self
    }

    /// Records a decision's binding on its node.
    pub fn commit(&mut self, binding: Binding) {
        let node = self.nodes.iter_mut().find(|node| node.name == binding.node).expect("bound node");
        node.bindings.push(binding);
    }

    pub fn usages(&self) -> Vec<NodeUsage> {
        self.nodes.iter().map(|node| NodeUsage::from_bindings(&node.bindings)).collect()
    }

    pub fn place(&self, spec: &str) -> Result<Decision, Refusal> {
        self.place_with(spec, &PlacementOptions::default())
    }

    pub fn place_with(&self, spec: &str, options: &PlacementOptions) -> Result<Decision, Refusal> {
        let usages = self.usages();
        let views: Vec<NodeView<'_>> = self
            .nodes
            .iter()
            .zip(&usages)
            .map(|(node, usage)| NodeView { name: &node.name, inventory: &node.inventory, status: node.status, usage })
            .collect();
        place_with(&request(spec), &views, options)
    }
}

/// A decision on one line: `node: gpus 0,1 [mig P@S recarve] [share 250/10.0 GiB]
/// [nics a,b] cores 0-7 numa 0`, or the refusal's message.
pub fn summary(result: &Result<Decision, Refusal>) -> String {
    let decision = match result {
        Ok(decision) => decision,
        Err(refusal) => return refusal.to_string(),
    };
    let binding = &decision.binding;
    let mut words = vec![format!("{}:", binding.node)];
    if !binding.gpus.is_empty() {
        let indices: Vec<String> = binding.gpus.iter().map(|grant| grant.index.to_string()).collect();
        words.push(format!("gpus {}", indices.join(",")));
    }
    for grant in &binding.gpus {
        if let Some(mig) = &grant.mig {
            words.push(format!("mig {}@{}{}", mig.profile, mig.start, if mig.recarve { " recarve" } else { "" }));
        }
        if let Some(share) = &grant.share {
            words.push(format!("share {}/{}", share.compute.0, share.memory));
        }
    }
    let nics: Vec<&str> = binding.gpus.iter().filter_map(|grant| grant.nic.as_deref()).collect();
    if !nics.is_empty() {
        words.push(format!("nics {}", nics.join(",")));
    }
    if binding.cores.is_empty() {
        words.push("no cores".to_owned());
    } else {
        words.push(format!("cores {}", CpuSet::new(binding.cores.clone())));
    }
    let numa: Vec<String> = binding.numa_nodes.iter().map(u32::to_string).collect();
    words.push(format!("numa {}", numa.join(",")));
    words.join(" ")
}

/// Places `spec` on `cluster` and compares the one-line summary.
pub fn check(cluster: &Cluster, spec: &str, expected: &str) {
    let result = cluster.place(spec);
    assert_eq!(summary(&result), expected, "placing {spec:?}");
}
