//! kube-scheduler's extender requests: the JSON body of `filter`, `prioritize`
//! and `bind`, parsed into allot-k8s's `extender` types the way its handlers do
//! (serde_path_to_error over serde_json), then the pure path a filter takes: the
//! pod's reference, resources and annotations into an allocation spec
//! (`request::spec_for`), its gang, and the answers for every kind of verdict.

use std::time::Duration;

use allot_api::allocation::ValidatedRequest;
use allot_k8s::extender::{self, ExtenderArgs, ExtenderBindingArgs, Verdict};
use allot_k8s::request::{self, Names};
use allot_k8s::{annotations, containers, pod_ref};

use super::{as_is, message_of};
use crate::engine::{Outcome, Target};
use crate::json;

const DICTIONARY: &[&str] = &[
    "allot.io/gpu",
    "allot.io/gpu-share",
    "allot.io/mig-3g.40gb",
    "allot.io/mig-",
    "allot.io/mig-7g.80gb+me",
    "allot.io/mig-bad",
    "allot.io/interconnect",
    "allot.io/rdma",
    "allot.io/gpu-model",
    "allot.io/min-gpu-memory",
    "allot.io/gpu-memory",
    "allot.io/gang",
    "allot.io/gang-size",
    "allot.io/allocation",
    "nvlink",
    "pcie-switch",
    "numa",
    "any",
    "true",
    "false",
    "H100, A100",
    ",,,",
    "Pod",
    "Nodes",
    "NodeNames",
    "PodName",
    "PodNamespace",
    "PodUID",
    "Node",
    "metadata",
    "annotations",
    "namespace",
    "name",
    "uid",
    "spec",
    "containers",
    "resources",
    "limits",
    "requests",
    "items",
    "1",
    "0",
    "100",
    "101",
    "1.5",
    "1Ki",
    "1e3",
    "18446744073709551615",
    "18446744073709551616",
    "vision",
    "node-a",
    "é",
];

pub const TARGET: Target = Target {
    name: "extender-json",
    summary: "kube-scheduler's extender JSON: ExtenderArgs and ExtenderBindingArgs, the pod into an allocation spec, gang, filter and prioritize answers",
    run,
    structured: Some(json::mutate),
    dictionary: DICTIONARY,
    max_len: 256 * 1024,
    time_limit: Duration::from_secs(2),
    load: as_is,
    isolate: false,
    debug_only_aborts: &[],
    scratch: None,
};

/// As allot-k8s's `parse`: the error names the field that was wrong.
fn parse<T: serde::de::DeserializeOwned>(input: &[u8]) -> Result<T, String> {
    let mut reader = serde_json::Deserializer::from_slice(input);
    serde_path_to_error::deserialize(&mut reader).map_err(|error| {
        let path = error.path().to_string();
        let place = if path == "." { String::new() } else { format!(" at {path}") };
        message_of(format!("malformed request{place}: {}", error.inner()))
    })
}

fn run(input: &[u8]) -> Outcome {
    // `bind` gets another shape; the same body goes to both.
    let binding = parse::<ExtenderBindingArgs>(input);
    let args: ExtenderArgs = match parse(input) {
        Ok(args) => args,
        Err(error) => return binding.map(|_| "binding".to_owned()).map_err(|_| error),
    };
    let names = Names::new("allot.io");
    let pod = &args.pod;
    let containers = containers(pod);
    let annotations = annotations(pod);
    let manages = request::manages(&names, &containers, &annotations);
    let mut described = format!("manages {manages}");
    if let Some(reference) = pod_ref(pod) {
        let owner = reference.owner();
        assert!(owner.starts_with(request::OWNER_PREFIX));
        assert!(request::PodRef::uid_of_owner(&owner).is_some(), "an owner without its UID: {owner}");
        // The namespace's team label is another input; the namespace itself stands in.
        for team in ["vision", reference.namespace.as_str()] {
            match request::spec_for(&names, team, &reference, &containers, &annotations) {
                Ok(spec) => {
                    // The broker must accept what the extender asks for.
                    if let Err(error) = ValidatedRequest::try_from(spec) {
                        panic!("the broker refuses a spec the extender built: {error}");
                    }
                    described.push_str(" spec");
                }
                Err(problems) => {
                    assert!(!problems.is_empty(), "a refused pod without a problem");
                    for problem in &problems {
                        message_of(problem);
                    }
                }
            }
        }
    }
    if let Err(problem) = request::gang_of(&annotations) {
        message_of(problem);
    }
    let candidates = args.candidates();
    let first = candidates.first().cloned().unwrap_or_else(|| "node-a".into());
    let verdicts = [
        Verdict::Placed { allocation: "a-0000000000000001".into(), node: first.clone() },
        Verdict::Placed { allocation: "a-0000000000000002".into(), node: "elsewhere".into() },
        Verdict::Waiting { allocation: "a-0000000000000003".into(), position: 2, reason: "no free GPU".into() },
        Verdict::Refused { reason: "invalid".into() },
        Verdict::Unmanaged,
    ];
    for verdict in &verdicts {
        let answer = extender::filter(&args, verdict);
        serde_json::to_vec(&answer).map_err(message_of)?;
    }
    let scores = extender::prioritize(&candidates, Some(&first));
    assert_eq!(scores.len(), candidates.len());
    serde_json::to_vec(&scores).map_err(message_of)?;
    Ok(described)
}
