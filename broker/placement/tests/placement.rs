//! Placement on the fixture machines: whole GPUs, interconnect, RDMA, MIG, shares,
//! health, node status, impossible vs no capacity, and the explanations.

mod common;

use allot_api::allocation::{GpuDemand, Interconnect};
use allot_api::topology::{GpuHealth, GpuTelemetry, NodeInventory, ThrottleReason};
use allot_placement::{NodeStatus, PlacementOptions, RefusalReason, SharePolicy, Verdict};
use common::{Cluster, check, fixture, request, summary};
use expect_test::expect;

fn two_dgx() -> Cluster {
    Cluster::new().node("dgx-a", "dgx-h100").node("dgx-b", "dgx-h100")
}

#[test]
fn fixtures_load_and_agree_with_themselves() {
    for name in ["dgx-h100", "dgx-a100-mig", "pcie-l40s", "pcie-h100-nvl"] {
        let inventory = fixture(name);
        assert_eq!(inventory.validate(), Ok(()), "{name}");
        assert!(!inventory.gpus.is_empty(), "{name}");
    }
}

#[test]
fn whole_gpus_with_nvlink_go_where_they_fit_best() {
    // A fresh node: 8 NVLink GPUs take all of it, cores split over both NUMA nodes.
    check(&two_dgx(), "whole 8 ic=nvlink cpus=16", "dgx-a: gpus 0,1,2,3,4,5,6,7 cores 0-7,56-63 numa 0,1");
    // The first node is partly used, so the 8-GPU job takes the other one.
    let used = two_dgx().take("dgx-a", "gpu=0 cores=0-3");
    check(&used, "whole 8 ic=nvlink cpus=16", "dgx-b: gpus 0,1,2,3,4,5,6,7 cores 0-7,56-63 numa 0,1");
    // Four GPUs on a fresh node: one NUMA node's worth, with its cores.
    check(&two_dgx(), "whole 4 ic=nvlink cpus=16", "dgx-a: gpus 0,1,2,3 cores 0-15 numa 0");
    // Packing: a half-used node takes the 4-GPU job; the fresh node stays whole.
    let half = two_dgx().take("dgx-b", "gpu=0 gpu=1 gpu=2 gpu=3 cores=0-31");
    check(&half, "whole 4 ic=nvlink cpus=16", "dgx-b: gpus 4,5,6,7 cores 56-71 numa 1");
    // One GPU fills a partly used NUMA node rather than opening the other.
    let one_used = Cluster::new().node("dgx-a", "dgx-h100").take("dgx-a", "gpu=5");
    check(&one_used, "whole 1 cpus=4", "dgx-a: gpus 4 cores 56-59 numa 1");
    // The greedy search (forced here) finds the same sets.
    let greedy = PlacementOptions { exhaustive_limit: 0, ..PlacementOptions::default() };
    let result = two_dgx().place_with("whole 4 ic=nvlink cpus=16", &greedy);
    assert_eq!(summary(&result), "dgx-a: gpus 0,1,2,3 cores 0-15 numa 0");
}

#[test]
fn cores_spill_to_the_nearest_numa_node_only_when_local_ones_run_out() {
    // NUMA 0 has 56 cores, 50 taken: a 4-GPU job on NUMA 0 GPUs would spill, so it
    // goes to the NUMA 1 GPUs instead.
    let busy = Cluster::new().node("dgx-a", "dgx-h100").take("dgx-a", "cores=0-49");
    check(&busy, "whole 4 ic=nvlink cpus=16", "dgx-a: gpus 4,5,6,7 cores 56-71 numa 1");
    // With NUMA 1's GPUs taken, the job must spill; the explanation says so.
    let spill = busy.take("dgx-a", "gpu=4 gpu=5 gpu=6 gpu=7");
    let result = spill.place("whole 4 ic=nvlink cpus=16");
    assert_eq!(summary(&result), "dgx-a: gpus 0,1,2,3 cores 50-65 numa 0,1");
    let chosen = result.expect("placed").explanation.chosen.expect("why");
    assert!(
        chosen.contains(
            "cores: 50-65 (6 on NUMA 0, local to the GPUs); spilled 10 to NUMA 1 (distance 21) because the GPUs' \
             NUMA nodes had only 6 free cores"
        ),
        "{chosen}"
    );
}

#[test]
fn pcie_switch_requests_get_pix_pairs_or_a_reason() {
    let l40s = Cluster::new().node("l40s", "pcie-l40s");
    // GPUs 0-1 and 2-3 are PIX pairs; GPU 3 throttles, so the pair 0-1 wins.
    check(&l40s, "whole 2 ic=pcie-switch cpus=4", "l40s: gpus 0,1 cores 0-3 numa 0");
    check(
        &l40s,
        "whole 3 ic=pcie-switch",
        "E-IMPOSSIBLE: 3 GPUs under one PCIe switch requested, the largest group of GPUs under one PCIe switch \
         in the cluster has 2; ask for at most 2, or relax the interconnect (interconnect any)",
    );
    // With GPU 0 taken, only the pair 2-3 is left.
    check(&l40s.clone().take("l40s", "gpu=0"), "whole 2 ic=pcie-switch", "l40s: gpus 2,3 no cores numa 1");
    // GPUs 0 and 2 taken: two GPUs remain, but not under one switch.
    let split = l40s.take("l40s", "gpu=0 gpu=2");
    let result = split.place("whole 2 ic=pcie-switch");
    assert_eq!(
        summary(&result),
        "E-NO-CAPACITY: 2 GPUs under one PCIe switch, 0 cores, 0 MiB memory: 1 of 1 nodes could take it when \
         idle (l40s) but none can now (1 no connected set); it fits once capacity is released"
    );
    let refusal = result.expect_err("refused");
    let Verdict::Refused { reason } = &refusal.explanation.nodes[0].verdict else { panic!("refused node") };
    assert_eq!(reason.to_string(), "no 2 GPUs under one PCIe switch: of 2 usable, at most 1 are");
    // Any interconnect: the best pair is still PIX.
    check(&Cluster::new().node("l40s", "pcie-l40s"), "whole 2", "l40s: gpus 0,1 no cores numa 0");
    check(&Cluster::new().node("l40s", "pcie-l40s"), "whole 2 ic=numa", "l40s: gpus 0,1 no cores numa 0");
}

fn h100_nvl() -> Cluster {
    Cluster::new().node("nvl", "pcie-h100-nvl")
}

#[test]
fn nvlink_requests_on_bridged_pairs_take_whole_pairs_and_never_split_one() {
    // GPUs 0-1, 2-3, 4-5, 6-7 are NVLink-bridged pairs (NV12); nothing else has NVLink.
    let nvl = h100_nvl();
    let first = nvl.place("whole 2 ic=nvlink");
    assert_eq!(summary(&first), "nvl: gpus 0,1 no cores numa 0");
    // With the first pair granted, the next request gets another whole pair.
    let mut second = nvl.clone();
    second.commit(first.expect("placed").binding);
    check(&second, "whole 2 ic=nvlink", "nvl: gpus 2,3 no cores numa 0");
    // Three NVLink-connected GPUs do not exist on this machine, however empty it is.
    check(
        &nvl,
        "whole 3 ic=nvlink",
        "E-IMPOSSIBLE: 3 NVLink-connected GPUs requested, the largest NVLink domain in the cluster has 2; ask for at \
         most 2, or relax the interconnect (interconnect any)",
    );
    // One GPU of pair 0-1 taken: a free pair, not GPU 0 with a GPU of another pair.
    let broken = nvl.clone().take("nvl", "gpu=1");
    check(&broken, "whole 2 ic=nvlink", "nvl: gpus 2,3 no cores numa 0");
    check(&broken, "whole 2", "nvl: gpus 2,3 no cores numa 0");
    let greedy = PlacementOptions { exhaustive_limit: 0, ..PlacementOptions::default() };
    assert_eq!(summary(&broken.place_with("whole 2 ic=nvlink", &greedy)), "nvl: gpus 2,3 no cores numa 0");
    // A single GPU takes the broken pair's survivor, so the whole pairs stay whole.
    check(&broken, "whole 1", "nvl: gpus 0 no cores numa 0");
    // Only pair 0-1 broken and pair 2-3 taken: the other socket's pair, still never 0 with another.
    check(&broken.clone().take("nvl", "gpu=2 gpu=3"), "whole 2 ic=nvlink", "nvl: gpus 4,5 no cores numa 1");
    // Every pair broken: no NVLink pair is free, and that is a lack of capacity, not impossible.
    let all_broken = nvl.take("nvl", "gpu=1 gpu=3 gpu=5 gpu=7");
    let refusal = all_broken.place("whole 2 ic=nvlink").expect_err("no free pair");
    assert!(!refusal.is_impossible(), "{refusal}");
    assert!(matches!(refusal.reason, RefusalReason::NoCapacityNow { .. }), "{refusal}");
}

#[test]
fn rdma_requests_get_the_nic_under_their_gpus_switch() {
    let dgx = Cluster::new().node("dgx", "dgx-h100");
    check(&dgx, "whole 1 rdma", "dgx: gpus 0 nics ibp24s0 no cores numa 0");
    check(&dgx, "whole 2 ic=nvlink rdma", "dgx: gpus 0,1 nics ibp24s0,ibp64s0 no cores numa 0");
    // On the L40S server each pair shares a dual-port NIC: each GPU gets a port.
    let l40s = Cluster::new().node("l40s", "pcie-l40s");
    check(&l40s, "whole 2 rdma", "l40s: gpus 0,1 nics ens1f0np0,ens1f1np1 no cores numa 0");
    // No RDMA NIC anywhere: impossible, and the message says what to change.
    let no_nics = l40s.edit("l40s", |inventory| inventory.nics.iter_mut().for_each(|nic| nic.rdma = false));
    check(
        &no_nics,
        "whole 1 rdma",
        "E-IMPOSSIBLE: no GPU has an RDMA NIC under its PCIe switch (PIX or PXB); drop rdma or ask an admin to add such NICs",
    );
}

/// The DGX A100 with every MIG instance of its fixture owned by an allocation.
fn a100_owned() -> Cluster {
    Cluster::new().node("a100", "dgx-a100-mig").take(
        "a100",
        "mig=0:3g.40gb@0 mig=0:2g.20gb@4 mig=0:1g.10gb@6 \
         mig=1:1g.10gb@0 mig=1:1g.10gb@1 mig=1:1g.10gb@2 mig=1:1g.10gb@3 mig=1:1g.10gb@4 mig=1:1g.10gb@5 mig=1:1g.10gb@6 \
         mig=2:4g.40gb@0 mig=2:3g.40gb@4 mig=3:7g.80gb@0 \
         mig=4:2g.20gb@0 mig=4:2g.20gb@2 mig=4:1g.20gb@4 mig=4:1g.10gb+me@6",
    )
}

#[test]
fn mig_instances_go_to_free_slots_that_keep_large_profiles_placeable() {
    // GPU 5 (MIG on, empty) takes the 3g at slot 4, which keeps a 4g placeable at 0;
    // GPUs 6 and 7 (MIG off) would need a re-carve.
    check(&a100_owned(), "mig 3g.40gb cpus=2", "a100: gpus 5 mig 3g.40gb@4 cores 112-113 numa 7");
    // A 1g fits GPU 0 slot 6? No: taken. It fills a partitioned GPU, not GPU 5.
    check(&a100_owned().take("a100", "mig=5:3g.40gb@4"), "mig 1g.10gb", "a100: gpus 5 mig 1g.10gb@0 no cores numa 7");
    // A 7g needs a whole GPU: GPU 5 is MIG-enabled and empty.
    check(&a100_owned(), "mig 7g.80gb", "a100: gpus 5 mig 7g.80gb@0 no cores numa 7");
    // With GPU 5 taken too, the 7g goes to a MIG-disabled GPU, which must be re-carved.
    check(
        &a100_owned().take("a100", "mig=5:7g.80gb@0"),
        "mig 7g.80gb",
        "a100: gpus 6 mig 7g.80gb@0 recarve no cores numa 5",
    );
}

#[test]
fn unowned_mig_instances_are_free_and_reused_when_they_match() {
    // Nothing owned: every fixture instance is an orphan. GPU 2's orphan 3g@4
    // matches exactly, and reusing it blocks no 4g.
    let orphans = Cluster::new().node("a100", "dgx-a100-mig");
    check(&orphans, "mig 3g.40gb", "a100: gpus 2 mig 3g.40gb@4 no cores numa 1");
    // GPU 2's orphan 4g@0 is reused too, rather than carving one on empty GPU 5.
    check(&orphans, "mig 4g.40gb", "a100: gpus 2 mig 4g.40gb@0 no cores numa 1");
    // GPU 2's 4g owned, GPU 5 full, GPUs 6-7 whole: every 4g@0 left overlaps
    // orphans of other profiles, so it needs a re-carve; lowest GPU index on ties.
    let crowded = orphans.take("a100", "mig=2:4g.40gb@0 mig=5:7g.80gb@0 gpu=6 gpu=7");
    let result = crowded.place("mig 4g.40gb");
    assert_eq!(summary(&result), "a100: gpus 0 mig 4g.40gb@0 recarve no cores numa 3");
}

#[test]
fn packing_mig_into_a_partitioned_gpu_beats_reusing_an_orphan_on_an_empty_one() {
    // Node a: GPU 5 owns a 3g at 0, so a 3g at 4 fills it and blocks no 7g or 4g.
    // Node b owns nothing: reusing its orphan 3g@4 on GPU 2 would leave that GPU
    // unable to take a 7g once the daemon removes the other orphans.
    let cluster = a100_owned().take("a100", "mig=5:3g.40gb@0").node("b", "dgx-a100-mig");
    check(&cluster, "mig 3g.40gb", "a100: gpus 5 mig 3g.40gb@4 no cores numa 7");
}

#[test]
fn mig_requests_that_cannot_be_met_say_why() {
    check(
        &a100_owned(),
        "mig 3g.41gb",
        "E-IMPOSSIBLE: no GPU in the cluster offers MIG profile 3g.41gb; offered: 1g.10gb, 1g.10gb+me, 1g.20gb, \
         2g.20gb, 3g.40gb, 4g.40gb, 7g.80gb; ask for one of those",
    );
    check(
        &Cluster::new().node("l40s", "pcie-l40s"),
        "mig 1g.10gb",
        "E-IMPOSSIBLE: MIG 1g.10gb requested, but no GPU in the cluster supports MIG",
    );
    let full = a100_owned().take("a100", "mig=5:7g.80gb@0 mig=6:7g.80gb@0 mig=7:7g.80gb@0");
    let result = full.place("mig 3g.40gb");
    assert!(matches!(result, Err(ref refusal) if !refusal.is_impossible()), "{}", summary(&result));
    let refusal = result.expect_err("refused");
    let Verdict::Refused { reason } = &refusal.explanation.nodes[0].verdict else { panic!("refused node") };
    assert_eq!(reason.to_string(), "no free slot for 3g.40gb (8 full)");
}

#[test]
fn shares_pack_best_fit_onto_already_shared_gpus() {
    let shared = Cluster::new().node("l40s", "pcie-l40s").take("l40s", "share=0:600/20g share=1:200/5g");
    // Both fit 300 milli-GPU; GPU 0 is left with the least.
    check(&shared, "share 300 10g", "l40s: gpus 0 share 300/10.0 GiB no cores numa 0");
    // 500 milli-GPU no longer fits GPU 0.
    check(&shared, "share 500 10g", "l40s: gpus 1 share 500/10.0 GiB no cores numa 0");
    // 900 fits no shared GPU: a fresh one, the one that is not throttling.
    check(&shared, "share 900 10g", "l40s: gpus 2 share 900/10.0 GiB no cores numa 1");
    // Worst fit spreads to the roomiest GPU instead.
    let worst = PlacementOptions { share_policy: SharePolicy::WorstFit, ..PlacementOptions::default() };
    let result = shared.place_with("share 300 10g", &worst);
    assert_eq!(summary(&result), "l40s: gpus 2 share 300/10.0 GiB no cores numa 1");
    // Memory counts too: GPU 0 has 25 GiB left of its 45.
    check(&shared, "share 100 30g", "l40s: gpus 1 share 100/30.0 GiB no cores numa 0");
    // Whole GPUs and MIG exclude shares: on the A100, only MIG-disabled GPUs 6-7.
    check(&a100_owned(), "share 250 10g", "a100: gpus 6 share 250/10.0 GiB no cores numa 5");
    check(
        &shared,
        "share 100 50g",
        "E-IMPOSSIBLE: a share with 50.0 GiB of GPU memory requested, the largest GPU has 45.0 GiB; ask for less \
         memory or for a whole GPU",
    );
}

fn set_health(inventory: &mut NodeInventory, gpu: usize, unhealthy: bool) {
    inventory.gpus[gpu].health =
        if unhealthy { GpuHealth::Unhealthy { reasons: vec!["xid 79".into()] } } else { GpuHealth::Healthy };
}

#[test]
fn unhealthy_gpus_are_skipped_and_throttling_ones_avoided() {
    let l40s = Cluster::new().node("l40s", "pcie-l40s").take("l40s", "gpu=0 gpu=1");
    // GPUs 2 and 3 are free; 3 throttles.
    check(&l40s, "whole 1", "l40s: gpus 2 no cores numa 1");
    // GPU 2 unhealthy: the throttling GPU is better than nothing.
    let sick = l40s.edit("l40s", |inventory| set_health(inventory, 2, true));
    let result = sick.place("whole 1");
    assert_eq!(summary(&result), "l40s: gpus 3 no cores numa 1");
    let score = result.expect("placed").explanation.nodes[0].verdict.clone();
    assert!(matches!(score, Verdict::Chosen { ref score } if score.to_string().contains("1 throttling")), "{score:?}");
    // Both free GPUs unhealthy: no capacity now (a repaired GPU would do).
    let all_sick = sick.edit("l40s", |inventory| set_health(inventory, 3, true));
    check(
        &all_sick,
        "whole 1",
        "E-NO-CAPACITY: 1 GPU, 0 cores, 0 MiB memory: 1 of 1 nodes could take it when idle (l40s) but none can now \
         (1 too few free GPUs); it fits once capacity is released",
    );
    // Throttling on another node: prefer the cool node even if it is fresh.
    let hot = Cluster::new()
        .node("a", "pcie-l40s")
        .node("b", "pcie-l40s")
        .take("a", "gpu=0 gpu=1 gpu=2")
        .edit("b", |inventory| inventory.gpus[3].telemetry = Some(GpuTelemetry::default()));
    check(&hot, "whole 1", "b: gpus 0 no cores numa 0");
    // Unless the throttle reason does not slow work (idle).
    let idle = hot.edit("a", |inventory| {
        inventory.gpus[3].telemetry =
            Some(GpuTelemetry { throttle_reasons: vec![ThrottleReason::GpuIdle], ..GpuTelemetry::default() })
    });
    check(&idle, "whole 1", "a: gpus 3 no cores numa 1");
}

#[test]
fn lost_and_cordoned_nodes_are_refused_with_that_reason() {
    let cluster = Cluster::new()
        .node("dgx-a", "dgx-h100")
        .node("dgx-b", "dgx-h100")
        .node("dgx-c", "dgx-h100")
        .status("dgx-a", NodeStatus::Lost)
        .status("dgx-b", NodeStatus::Cordoned);
    let result = cluster.place("whole 8 ic=nvlink");
    assert_eq!(summary(&result), "dgx-c: gpus 0,1,2,3,4,5,6,7 no cores numa 0,1");
    let reasons: Vec<String> = result
        .expect("placed")
        .explanation
        .nodes
        .iter()
        .map(|node| match &node.verdict {
            Verdict::Refused { reason } => format!("{} {reason}", node.node),
            other => format!("{} {other:?}", node.node).chars().take(20).collect(),
        })
        .collect();
    assert_eq!(reasons[1..], ["dgx-a lost: the node stopped heartbeating", "dgx-b cordoned by an administrator"]);
    check(
        &cluster.status("dgx-c", NodeStatus::Lost),
        "whole 8 ic=nvlink",
        "E-NO-CAPACITY: 8 NVLink-connected GPUs, 0 cores, 0 MiB memory: 3 of 3 nodes could take it when idle \
         (dgx-a, dgx-b, dgx-c) but none can now (1 cordoned, 2 lost); it fits once capacity is released, or when a \
         lost node returns, or when a node is uncordoned",
    );
}

#[test]
fn impossible_requests_are_told_apart_from_a_lack_of_capacity() {
    let cluster = two_dgx().node("l40s", "pcie-l40s");
    check(
        &cluster,
        "whole 9 ic=nvlink",
        "E-IMPOSSIBLE: 9 NVLink-connected GPUs requested, the largest NVLink domain in the cluster has 8; ask for at \
         most 8, or relax the interconnect (interconnect any)",
    );
    check(
        &cluster,
        "whole 9",
        "E-IMPOSSIBLE: 9 GPUs requested on one node, the most any node has is 8; ask for at most 8, or split the work \
         across nodes",
    );
    check(
        &cluster,
        "whole 1 model=B200",
        "E-IMPOSSIBLE: no node has a GPU of model B200; the cluster has NVIDIA H100 80GB HBM3, NVIDIA L40S; ask for \
         one of those",
    );
    check(
        &cluster,
        "whole 1 min-mem=100g",
        "E-IMPOSSIBLE: no GPU has 100.0 GiB of memory, the largest has 79.6 GiB; lower the minimum GPU memory",
    );
    check(
        &cluster,
        "whole 1 cpus=200",
        "E-IMPOSSIBLE: 200 cores requested, the nodes with such GPUs have at most 112; ask for fewer cores",
    );
    check(
        &cluster,
        "cpu 4 mem=3072g",
        "E-IMPOSSIBLE: 3.0 TiB of memory requested, the largest node has 2.0 TiB; ask for less memory",
    );
    // Model matching is a case-insensitive substring; NVLink rules out the L40S.
    check(&cluster, "whole 3 model=l40s", "l40s: gpus 0,1,2 no cores numa 0,1");
    check(
        &cluster,
        "whole 3 ic=nvlink model=l40s",
        "E-IMPOSSIBLE: 3 NVLink-connected GPUs of model l40s requested, the largest NVLink domain in the cluster has \
         1; ask for at most 1, or relax the interconnect (interconnect any)",
    );
    let busy = cluster.take("dgx-a", "gpu=0").take("dgx-b", "gpu=7");
    let result = busy.place("whole 8 ic=nvlink");
    let refusal = result.expect_err("no capacity");
    assert!(matches!(refusal.reason, RefusalReason::NoCapacityNow { .. }), "{refusal}");
    assert!(!refusal.is_impossible());
    let empty = Cluster::new();
    check(&empty, "whole 1", "E-IMPOSSIBLE: the cluster has no nodes; register a node first");
}

#[test]
fn min_gpu_memory_and_models_filter_gpus() {
    let cluster = Cluster::new().node("dgx", "dgx-h100").node("l40s", "pcie-l40s").take("dgx", "gpu=0");
    // The L40S has 45 GiB: too small for 50.
    check(&cluster, "whole 1 min-mem=50g", "dgx: gpus 1 no cores numa 0");
    // Either model: the L40S server is the snugger fit (3 free GPUs left, not 6).
    check(&cluster, "whole 1 model=H100 model=L40S", "l40s: gpus 0 no cores numa 0");
    // Both match "nvidia"; an NVLink pair beats a PIX pair.
    check(&cluster, "whole 2 model=nvidia", "dgx: gpus 1,2 no cores numa 0");
}

#[test]
fn cpu_only_requests_stay_on_one_numa_node_and_off_free_gpus() {
    let cluster = two_dgx().take("dgx-b", "gpu=0 gpu=1 gpu=2 gpu=3 gpu=4 gpu=5 gpu=6 gpu=7 cores=0-9");
    // dgx-b has no free GPUs: CPU-only work goes there, snugly on NUMA 0.
    check(&cluster, "cpu 8 mem=64g", "dgx-b: cores 10-17 numa 0");
    check(&cluster, "cpu 50", "dgx-b: cores 56-105 numa 1");
    // No NUMA node has 100 free: start on the roomiest (NUMA 1) and spill to NUMA 0.
    check(&cluster, "cpu 100", "dgx-b: cores 10-53,56-111 numa 0,1");
}

#[test]
fn decisions_do_not_depend_on_the_order_nodes_are_listed_in() {
    let forward = Cluster::new().node("n1", "dgx-h100").node("n2", "dgx-h100").node("n3", "pcie-l40s");
    let mut backward = forward.clone();
    backward.nodes.reverse();
    for spec in ["whole 2 ic=nvlink", "whole 1", "cpu 4", "share 300 10g", "whole 9"] {
        let (a, b) = (forward.place(spec), backward.place(spec));
        assert_eq!(a, b, "{spec}");
    }
    // Ties break by node name.
    check(&forward, "whole 8 ic=nvlink", "n1: gpus 0,1,2,3,4,5,6,7 no cores numa 0,1");
}

#[test]
fn requests_are_described_in_words() {
    let request = request("whole 4 ic=nvlink cpus=16 mem=64g model=H100 rdma min-mem=60g");
    assert!(matches!(request.gpus, GpuDemand::Whole { count: 4, .. }));
    assert_eq!(request.interconnect, Interconnect::Nvlink);
    let result =
        Cluster::new().node("dgx", "dgx-h100").place("whole 4 ic=nvlink cpus=16 mem=64g model=H100 rdma min-mem=60g");
    assert_eq!(
        result.expect("placed").explanation.request,
        "4 NVLink-connected GPUs of model H100, 16 cores, 64.0 GiB memory, RDMA, GPUs of at least 60.0 GiB"
    );
}

#[test]
fn explanations_say_why_this_node_and_why_not_the_others() {
    let cluster = Cluster::new()
        .node("dgx-a", "dgx-h100")
        .node("dgx-b", "dgx-h100")
        .node("dgx-c", "dgx-h100")
        .node("l40s", "pcie-l40s")
        .take("dgx-b", "gpu=0 gpu=1 gpu=2 gpu=3 cores=0-31 mem=256g")
        .take("dgx-c", "gpu=0 gpu=1 gpu=2 gpu=3 gpu=4 gpu=5")
        .status("dgx-a", NodeStatus::Ready)
        .node("dgx-d", "dgx-h100")
        .status("dgx-d", NodeStatus::Lost);
    let decision = cluster.place("whole 4 ic=nvlink cpus=16 mem=128g").expect("placed");
    expect![[r#"
        request: 4 NVLink-connected GPUs, 16 cores, 128.0 GiB memory
        placed on dgx-b: GPUs 4, 5, 6, 7 (worst link NV18, 0 throttling, 0 free GPUs left, 1 NUMA node)
        why: beats dgx-a: snugger fit: leaves 0 free GPUs vs 4
        cores: 56-71 (16 on NUMA 1, local to the GPUs)
        memory: 128.0 GiB of 1.8 TiB free
        nodes:
          dgx-b  chosen     worst link NV18, 0 throttling, 0 free GPUs left, 1 NUMA node
          dgx-a  candidate  worst link NV18, 0 throttling, 4 free GPUs left, 1 NUMA node
          dgx-c  refused    not enough free GPUs: 2 usable, 4 asked (left out: 6 in use)
          dgx-d  refused    lost: the node stopped heartbeating
          l40s   refused    no 4 NVLink-connected GPUs: of 4 usable, at most 1 are
    "#]]
    .assert_eq(&decision.explanation.to_string());

    let refusal = cluster.take("dgx-a", "gpu=7").place("whole 8 ic=nvlink").expect_err("refused");
    expect!["E-NO-CAPACITY: 8 NVLink-connected GPUs, 0 cores, 0 MiB memory: 4 of 5 nodes could take it when idle (dgx-a, dgx-b, dgx-c, ...) but none can now (1 lost, 3 too few free GPUs); it fits once capacity is released, or when a lost node returns"]
    .assert_eq(&refusal.to_string());
}

#[test]
fn explanations_of_big_clusters_summarise_the_refused_nodes() {
    let mut cluster = Cluster::new();
    for index in 0..30 {
        cluster = cluster.node(&format!("n{index:02}"), "pcie-l40s");
        if index % 3 == 0 {
            cluster = cluster.status(&format!("n{index:02}"), NodeStatus::Lost);
        }
    }
    let text = cluster.place("whole 4 ic=nvlink").expect_err("refused").explanation.to_string();
    expect![[r#"
        request: 4 NVLink-connected GPUs, 0 cores, 0 MiB memory
        not placed
        nodes:
          10 refused: lost, for example:
            n00  lost: the node stopped heartbeating
            n03  lost: the node stopped heartbeating
            n06  lost: the node stopped heartbeating
          20 refused: no connected set, for example:
            n01  no 4 NVLink-connected GPUs: of 4 usable, at most 1 are
            n02  no 4 NVLink-connected GPUs: of 4 usable, at most 1 are
            n04  no 4 NVLink-connected GPUs: of 4 usable, at most 1 are
    "#]]
    .assert_eq(&text);
}

/// A request pinned to a node and a device list (the kubelet's device plugin).
fn pinned(cluster: &Cluster, spec: &str, node: &str, devices: &[(usize, Option<u32>)], fixture_name: &str) -> String {
    use allot_api::allocation::{DeviceSelector, Pin};
    let inventory = fixture(fixture_name);
    let devices = devices
        .iter()
        .map(|(gpu, mig_start)| DeviceSelector {
            gpu_uuid: inventory.gpus[*gpu].uuid.clone().expect("fixture GPUs have UUIDs"),
            mig_start: *mig_start,
        })
        .collect();
    let request = request(spec).pinned(Pin { node: node.parse().expect("node"), devices }).expect("a valid pin");
    let usages = cluster.usages();
    let views: Vec<allot_placement::NodeView<'_>> = cluster
        .nodes
        .iter()
        .zip(&usages)
        .map(|(node, usage)| allot_placement::NodeView {
            name: &node.name,
            inventory: &node.inventory,
            status: node.status,
            usage,
        })
        .collect();
    summary(&allot_placement::place_with(&request, &views, &PlacementOptions::default()))
}

#[test]
fn pinned_requests_choose_only_among_the_devices_and_the_node_they_name() {
    let cluster = two_dgx();
    // Unpinned, 2 GPUs go to dgx-a's first pair; pinned to dgx-b's GPUs 4-7 they stay there.
    let on_b = pinned(&cluster, "whole 2", "dgx-b", &[(4, None), (5, None), (6, None), (7, None)], "dgx-h100");
    assert!(on_b.starts_with("dgx-b: gpus 4,5 "), "{on_b}");
    // Exactly as many devices as asked: those devices.
    let exact = pinned(&cluster, "whole 2", "dgx-a", &[(3, None), (6, None)], "dgx-h100");
    assert!(exact.starts_with("dgx-a: gpus 3,6 "), "{exact}");
    // A listed GPU in use leaves too few: refused, naming the devices not listed.
    let busy = cluster.clone().take("dgx-a", "gpu=3");
    let refused = pinned(&busy, "whole 2", "dgx-a", &[(3, None), (6, None)], "dgx-h100");
    assert!(refused.contains("E-NO-CAPACITY") && refused.contains("too few free GPUs"), "{refused}");
    // A share lands on the one GPU allowed.
    let share = pinned(&cluster, "share 250 10g", "dgx-b", &[(5, None)], "dgx-h100");
    assert!(share.starts_with("dgx-b: gpus 5 share 250/"), "{share}");
    // A node that is not registered.
    let absent = pinned(&cluster, "whole 1", "dgx-z", &[], "dgx-h100");
    assert!(absent.contains("pinned to node dgx-z, which is not registered"), "{absent}");
}

#[test]
fn a_pinned_mig_request_takes_the_slot_it_allows() {
    let cluster = Cluster::new().node("a100", "dgx-a100-mig");
    let inventory = fixture("dgx-a100-mig");
    let gpu = inventory
        .gpus
        .iter()
        .position(|gpu| gpu.mig.as_ref().is_some_and(|mig| mig.profiles.iter().any(|p| p.name == "3g.40gb")))
        .expect("a GPU with 3g.40gb");
    // Left to itself the broker may choose slot 0 or 4; pinned to 4 it takes 4.
    let at_four = pinned(&cluster, "mig 3g.40gb", "a100", &[(gpu, Some(4))], "dgx-a100-mig");
    assert!(at_four.contains(&format!("gpus {gpu} mig 3g.40gb@4")), "{at_four}");
    // A start the profile does not allow is never chosen.
    let nowhere = pinned(&cluster, "mig 3g.40gb", "a100", &[(gpu, Some(2))], "dgx-a100-mig");
    assert!(!nowhere.starts_with("a100:"), "{nowhere}");
    // Validation: MIG starts only for MIG requests; a whole request needs enough GPUs listed.
    use allot_api::allocation::{DeviceSelector, Pin};
    let selector = |start| DeviceSelector { gpu_uuid: "GPU-x".into(), mig_start: start };
    let pin = |devices| Pin { node: "a100".parse().expect("node"), devices };
    assert_eq!(request("whole 1").pinned(pin(vec![selector(Some(0))])).map_err(|e| e.field), Err("pin"));
    assert_eq!(request("whole 2").pinned(pin(vec![selector(None)])).map_err(|e| e.field), Err("pin"));
}
