//! kube-scheduler's extender protocol (`k8s.io/kube-scheduler/extender/v1`):
//! the JSON it sends and expects, keyed by the Go field names, and the pure
//! answers Allot gives once it knows where the broker put a pod.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Pod};
use serde::{Deserialize, Serialize};

/// A `v1.NodeList` as the extender protocol carries it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct NodeList {
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "apiVersion")]
    pub api_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default)]
    pub items: Vec<Node>,
}

/// What filter and prioritize receive.
#[derive(Debug, Clone, Deserialize)]
pub struct ExtenderArgs {
    #[serde(rename = "Pod")]
    pub pod: Pod,
    /// The candidate nodes, when the extender is not node-cache capable.
    #[serde(rename = "Nodes", default)]
    pub nodes: Option<NodeList>,
    /// The candidate nodes' names, when it is.
    #[serde(rename = "NodeNames", default)]
    pub node_names: Option<Vec<String>>,
}

impl ExtenderArgs {
    /// The candidates' names, whichever way they came.
    pub fn candidates(&self) -> Vec<String> {
        if let Some(names) = &self.node_names {
            return names.clone();
        }
        self.nodes
            .as_ref()
            .map(|list| list.items.iter().filter_map(|node| node.metadata.name.clone()).collect())
            .unwrap_or_default()
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ExtenderFilterResult {
    #[serde(rename = "Nodes", skip_serializing_if = "Option::is_none", default)]
    pub nodes: Option<NodeList>,
    #[serde(rename = "NodeNames", skip_serializing_if = "Option::is_none", default)]
    pub node_names: Option<Vec<String>>,
    #[serde(rename = "FailedNodes", default)]
    pub failed_nodes: BTreeMap<String, String>,
    #[serde(rename = "FailedAndUnresolvableNodes", default)]
    pub failed_and_unresolvable_nodes: BTreeMap<String, String>,
    #[serde(rename = "Error", default)]
    pub error: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HostPriority {
    #[serde(rename = "Host")]
    pub host: String,
    #[serde(rename = "Score")]
    pub score: i64,
}

/// The extender's highest score (`MaxExtenderPriority`).
pub const MAX_SCORE: i64 = 10;

#[derive(Debug, Clone, Deserialize)]
pub struct ExtenderBindingArgs {
    #[serde(rename = "PodName")]
    pub pod_name: String,
    #[serde(rename = "PodNamespace")]
    pub pod_namespace: String,
    #[serde(rename = "PodUID")]
    pub pod_uid: String,
    #[serde(rename = "Node")]
    pub node: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExtenderBindingResult {
    #[serde(rename = "Error", default)]
    pub error: String,
}

/// Where the broker has a pod, as filter sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Granted on this node.
    Placed { allocation: String, node: String },
    /// In the broker's queue.
    Waiting { allocation: String, position: u32, reason: String },
    /// Never placeable as asked, or not a valid request: the reason says why.
    Refused { reason: String },
    /// The pod asks for nothing the extender places: every node passes.
    Unmanaged,
}

impl Verdict {
    /// The one line the pod's FailedScheduling event shows for every node.
    pub fn reason(&self) -> String {
        match self {
            Verdict::Placed { allocation, node } => format!("Allot placed this pod on {node} ({allocation})"),
            Verdict::Waiting { allocation, position, reason } => {
                format!("Allot: waiting in the broker's queue at position {position} ({allocation}): {reason}")
            }
            Verdict::Refused { reason } => format!("Allot: {reason}"),
            Verdict::Unmanaged => String::new(),
        }
    }
}

/// Filter's answer: only the broker's node passes. Every failure is
/// unresolvable for kube-scheduler, so it never preempts pods on Allot's
/// behalf (the broker reclaims by its own rules); the pod is tried again when
/// the cluster changes, or when the controller marks it admitted.
pub fn filter(args: &ExtenderArgs, verdict: &Verdict) -> ExtenderFilterResult {
    let candidates = args.candidates();
    let mut result = ExtenderFilterResult::default();
    // Placed on a candidate: that node alone, no reasons for the others (the
    // pod schedules, nobody reads them; on 5,000 nodes they are 350 KiB).
    if let Verdict::Placed { node, .. } = verdict
        && candidates.contains(node)
    {
        match &args.nodes {
            Some(list) if args.node_names.is_none() => {
                let items =
                    list.items.iter().filter(|item| item.metadata.name.as_ref() == Some(node)).cloned().collect();
                result.nodes = Some(NodeList { items, api_version: list.api_version.clone(), kind: list.kind.clone() });
            }
            _ => result.node_names = Some(vec![node.clone()]),
        }
        return result;
    }
    let mut passing = Vec::new();
    let reason = verdict.reason();
    for name in &candidates {
        match verdict {
            Verdict::Placed { node, .. } if node == name => passing.push(name.clone()),
            Verdict::Unmanaged => passing.push(name.clone()),
            _ => {
                result.failed_and_unresolvable_nodes.insert(name.clone(), reason.clone());
            }
        }
    }
    if let Verdict::Placed { node, .. } = verdict
        && passing.is_empty()
    {
        for reason in result.failed_and_unresolvable_nodes.values_mut() {
            *reason = format!("Allot placed this pod on {node}, which kube-scheduler's own filters left out");
        }
    }
    match &args.nodes {
        Some(list) if args.node_names.is_none() => {
            let items = list
                .items
                .iter()
                .filter(|node| node.metadata.name.as_ref().is_some_and(|name| passing.contains(name)))
                .cloned()
                .collect();
            result.nodes = Some(NodeList { items, api_version: list.api_version.clone(), kind: list.kind.clone() });
        }
        _ => result.node_names = Some(passing),
    }
    result
}

/// Prioritize's answer: the broker's node gets the highest score.
pub fn prioritize(candidates: &[String], placed_on: Option<&str>) -> Vec<HostPriority> {
    candidates
        .iter()
        .map(|host| HostPriority {
            host: host.clone(),
            score: if Some(host.as_str()) == placed_on { MAX_SCORE } else { 0 },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|name| name.to_string()).collect()
    }

    fn args(list: &[&str]) -> ExtenderArgs {
        ExtenderArgs { pod: Pod::default(), nodes: None, node_names: Some(names(list)) }
    }

    #[test]
    fn only_the_brokers_node_passes() {
        let verdict = Verdict::Placed { allocation: "a-3".into(), node: "node-b".into() };
        let result = filter(&args(&["node-a", "node-b", "node-c"]), &verdict);
        assert_eq!(result.node_names, Some(names(&["node-b"])));
        assert!(result.failed_and_unresolvable_nodes.is_empty(), "the pod schedules: no reasons to send");
        assert!(result.failed_nodes.is_empty(), "never resolvable: kube-scheduler must not preempt for Allot");
    }

    #[test]
    fn a_waiting_pod_fails_everywhere_with_its_queue_position() {
        let verdict =
            Verdict::Waiting { allocation: "a-9".into(), position: 2, reason: "no free NVLink set of 8".into() };
        let result = filter(&args(&["node-a", "node-b"]), &verdict);
        assert_eq!(result.node_names, Some(Vec::new()));
        assert_eq!(
            result.failed_and_unresolvable_nodes["node-a"],
            "Allot: waiting in the broker's queue at position 2 (a-9): no free NVLink set of 8"
        );
    }

    #[test]
    fn a_node_the_scheduler_left_out_is_named() {
        let verdict = Verdict::Placed { allocation: "a-3".into(), node: "node-z".into() };
        let result = filter(&args(&["node-a"]), &verdict);
        assert_eq!(result.node_names, Some(Vec::new()));
        assert!(result.failed_and_unresolvable_nodes["node-a"].contains("node-z, which kube-scheduler's own filters"));
    }

    #[test]
    fn the_json_uses_the_go_field_names() {
        let args: ExtenderArgs = serde_json::from_str(
            r#"{"Pod":{"metadata":{"name":"p","namespace":"vision","uid":"u-1"}},"NodeNames":["node-a"]}"#,
        )
        .expect("parses");
        assert_eq!(args.candidates(), names(&["node-a"]));
        let text = serde_json::to_string(&filter(&args, &Verdict::Refused { reason: "x".into() })).expect("serializes");
        assert!(text.contains("\"NodeNames\":[]"), "{text}");
        assert!(text.contains("\"FailedAndUnresolvableNodes\":{\"node-a\":\"Allot: x\"}"), "{text}");
        let error = serde_json::from_str::<ExtenderBindingArgs>(r#"{"PodName":"p","PodNamespace":"n","Node":"x"}"#)
            .expect_err("no uid");
        assert!(error.to_string().contains("PodUID"), "{error}");
        let scores = prioritize(&names(&["node-a", "node-b"]), Some("node-b"));
        assert_eq!(
            serde_json::to_string(&scores).expect("json"),
            r#"[{"Host":"node-a","Score":0},{"Host":"node-b","Score":10}]"#
        );
    }
}
