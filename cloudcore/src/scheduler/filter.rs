//! Filters: whether a pod may go to a node at all, and, when no node is left, the message that
//! says why, worded and ordered as Kubernetes' `FitError` so that people and tools recognise it:
//! `0/3 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, 2 Insufficient cpu.`
//!
//! Filters run in Kubernetes' order and the first that rejects a node gives its reasons (the
//! resource filter may give several: `Insufficient cpu` and `Insufficient memory`). The filters
//! here look at one node; the topology spread ([`super::spread`]) and inter-pod affinity
//! ([`super::interpod`]) filters, which look at other pods, run after them, in that order.

use super::cache::Usage;
use super::model::{tolerated, Effect, NodeInfo, PodInfo};
use std::collections::BTreeMap;
use std::fmt;

/// Why one node was rejected.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// Ready condition not True, or a not-ready/unreachable taint.
    NotReady,
    /// `spec.unschedulable` (cordoned).
    Unschedulable,
    /// A NoSchedule/NoExecute taint the pod does not tolerate.
    UntoleratedTaint {
        /// Taint key.
        key: String,
        /// Taint value.
        value: String,
    },
    /// nodeSelector or required node affinity does not match.
    NodeAffinity,
    /// The node's edgecore is one protocol version behind and would not run the pod as asked
    /// (it has init containers, say), so the hub would never send it there.
    OlderEdge(&'static str),
    /// The node already runs as many pods as it allows.
    TooManyPods,
    /// Not enough of a resource left (`cpu`, `memory`, an extended resource).
    Insufficient(String),
    /// Topology spread: the node lacks a constraint's topology label.
    SpreadMissingLabel,
    /// Topology spread: placing the pod here would exceed a `maxSkew`.
    Spread,
    /// Required pod affinity is not satisfied in the node's domain.
    PodAffinity,
    /// The pod's required anti-affinity matches a pod in the node's domain.
    PodAntiAffinity,
    /// A pod in the node's domain has required anti-affinity against this pod.
    ExistingAntiAffinity,
}

impl Reason {
    /// Whether evicting pods from the node can remove this reason (Kubernetes' `Unschedulable`
    /// as opposed to `UnschedulableAndUnresolvable`): only those nodes are preemption
    /// candidates.
    pub fn resolvable_by_preemption(&self) -> bool {
        matches!(
            self,
            Self::TooManyPods
                | Self::Insufficient(_)
                | Self::Spread
                | Self::PodAntiAffinity
                | Self::ExistingAntiAffinity
        )
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotReady => f.write_str("node(s) were not ready"),
            Self::Unschedulable => f.write_str("node(s) were unschedulable"),
            Self::UntoleratedTaint { key, value } => {
                write!(f, "node(s) had untolerated taint {{{key}: {value}}}")
            }
            Self::NodeAffinity => f.write_str("node(s) didn't match Pod's node affinity/selector"),
            Self::OlderEdge(what) => write!(
                f,
                "node(s) had an edgecore too old for the pod's {} (upgrade the node)",
                what.replace('_', " ")
            ),
            Self::TooManyPods => f.write_str("Too many pods"),
            Self::Insufficient(r) => write!(f, "Insufficient {r}"),
            Self::SpreadMissingLabel => f.write_str(
                "node(s) didn't match pod topology spread constraints (missing required label)",
            ),
            Self::Spread => f.write_str("node(s) didn't match pod topology spread constraints"),
            Self::PodAffinity => f.write_str("node(s) didn't match pod affinity rules"),
            Self::PodAntiAffinity => f.write_str("node(s) didn't match pod anti-affinity rules"),
            Self::ExistingAntiAffinity => {
                f.write_str("node(s) didn't satisfy existing pods anti-affinity rules")
            }
        }
    }
}

/// Runs every filter of `pod` against `node` (with what is already allocated there).
/// `Ok` when the pod fits; otherwise the first rejecting filter's reasons.
pub fn check(pod: &PodInfo, node: &NodeInfo, usage: &Usage) -> Result<(), Vec<Reason>> {
    if !node.ready {
        return Err(vec![Reason::NotReady]);
    }
    if node.unschedulable && !tolerates_cordon(pod) {
        return Err(vec![Reason::Unschedulable]);
    }
    if let Some(t) = node.taints.iter().find(|t| {
        matches!(t.effect, Effect::NoSchedule | Effect::NoExecute)
            && !tolerated(&pod.tolerations, t)
    }) {
        return Err(vec![Reason::UntoleratedTaint {
            key: t.key.clone(),
            value: t.value.clone(),
        }]);
    }
    if !matches_node_affinity(pod, node) {
        return Err(vec![Reason::NodeAffinity]);
    }
    if let Some(what) = pod.needs_current_edge.filter(|_| node.older_edge) {
        return Err(vec![Reason::OlderEdge(what)]);
    }
    fits_resources(pod, node, usage)
}

/// Kubernetes lets a pod that tolerates `node.kubernetes.io/unschedulable:NoSchedule` onto a
/// cordoned node (DaemonSets do).
fn tolerates_cordon(pod: &PodInfo) -> bool {
    let cordon = super::model::Taint {
        key: "node.kubernetes.io/unschedulable".into(),
        value: String::new(),
        effect: Effect::NoSchedule,
    };
    tolerated(&pod.tolerations, &cordon)
}

/// nodeSelector (every pair) and required node affinity (any term) both must match.
pub fn matches_node_affinity(pod: &PodInfo, node: &NodeInfo) -> bool {
    pod.node_selector
        .iter()
        .all(|(k, v)| node.labels.get(k) == Some(v))
        && pod
            .affinity
            .as_ref()
            .is_none_or(|terms| terms.iter().any(|t| t.matches(&node.name, &node.labels)))
}

/// Requests of the pod plus what is allocated must stay within allocatable, per resource; the
/// pod count within `allocatable.pods`.
pub fn fits_resources(pod: &PodInfo, node: &NodeInfo, usage: &Usage) -> Result<(), Vec<Reason>> {
    let mut reasons = Vec::new();
    if usage.pods + 1 > node.max_pods {
        reasons.push(Reason::TooManyPods);
    }
    let req = &pod.requests.fit;
    let (alloc, used) = (&node.allocatable, &usage.requested);
    if req.cpu_millis > 0 && used.cpu_millis.saturating_add(req.cpu_millis) > alloc.cpu_millis {
        reasons.push(Reason::Insufficient("cpu".into()));
    }
    if req.memory > 0 && used.memory.saturating_add(req.memory) > alloc.memory {
        reasons.push(Reason::Insufficient("memory".into()));
    }
    for (name, want) in &req.scalars {
        let have = alloc.scalars.get(name).copied().unwrap_or(0);
        let taken = used.scalars.get(name).copied().unwrap_or(0);
        if taken.saturating_add(*want) > have {
            reasons.push(Reason::Insufficient(name.clone()));
        }
    }
    if reasons.is_empty() {
        Ok(())
    } else {
        Err(reasons)
    }
}

/// Why a pod fits no node: how many nodes there are and how often each reason was given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FitError {
    /// Nodes considered.
    pub nodes: usize,
    /// Reason → number of nodes that gave it.
    pub reasons: BTreeMap<Reason, usize>,
}

impl FitError {
    /// Records one rejected node.
    pub fn add(&mut self, reasons: Vec<Reason>) {
        for r in reasons {
            *self.reasons.entry(r).or_default() += 1;
        }
    }
}

impl fmt::Display for FitError {
    /// Kubernetes' wording: the `"<count> <reason>"` strings sorted as strings, comma-joined.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nodes == 0 {
            return f.write_str("no nodes available to schedule pods");
        }
        let mut parts: Vec<String> = self
            .reasons
            .iter()
            .map(|(r, n)| format!("{n} {r}"))
            .collect();
        parts.sort();
        write!(
            f,
            "0/{} nodes are available: {}.",
            self.nodes,
            parts.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn node(extra: Value) -> NodeInfo {
        let mut n = json!({
            "metadata": {"name": "n1", "labels": {"zone": "north", "gen": "3"}},
            "spec": {},
            "status": {"conditions": [{"type": "Ready", "status": "True"}],
                       "allocatable": {"cpu": "1", "memory": "1Gi", "pods": "2", "skerry.io/gpio": "1"}},
        });
        merge(&mut n, extra);
        NodeInfo::of(&n)
    }

    fn merge(a: &mut Value, b: Value) {
        match (a, b) {
            (Value::Object(a), Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(Value::Null), v);
                }
            }
            (a, b) => *a = b,
        }
    }

    fn pod(spec: Value) -> PodInfo {
        let mut p = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]}});
        merge(&mut p["spec"], spec);
        PodInfo::of(&p)
    }

    fn run(pod: &PodInfo, node: &NodeInfo) -> Result<(), Vec<Reason>> {
        check(pod, node, &Usage::default())
    }

    #[test]
    fn node_selector_filter() {
        let n = node(json!({}));
        assert!(run(&pod(json!({"nodeSelector": {"zone": "north"}})), &n).is_ok());
        assert_eq!(
            run(
                &pod(json!({"nodeSelector": {"zone": "north", "gen": "4"}})),
                &n
            ),
            Err(vec![Reason::NodeAffinity])
        );
    }

    #[test]
    fn required_node_affinity_filter_ors_terms() {
        let n = node(json!({}));
        let aff = |terms: Value| {
            pod(
                json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}}}),
            )
        };
        let gt = json!({"matchExpressions": [{"key": "gen", "operator": "Gt", "values": ["2"]}]});
        let south =
            json!({"matchExpressions": [{"key": "zone", "operator": "In", "values": ["south"]}]});
        let by_name =
            json!({"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]});
        assert!(run(&aff(json!([gt])), &n).is_ok());
        assert!(run(&aff(json!([south.clone(), by_name])), &n).is_ok());
        assert_eq!(
            run(&aff(json!([south])), &n),
            Err(vec![Reason::NodeAffinity])
        );
        assert_eq!(run(&aff(json!([])), &n), Err(vec![Reason::NodeAffinity]));
        // Both a nodeSelector and affinity: both must hold.
        let both = pod(json!({"nodeSelector": {"zone": "south"},
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "Exists"}]}]}}}}));
        assert_eq!(run(&both, &n), Err(vec![Reason::NodeAffinity]));
    }

    #[test]
    fn a_pod_an_older_edge_cannot_run_goes_to_current_edges_only() {
        let older = node(
            json!({"status": {"conditions": [{"type": "Ready", "status": "True"},
                {"type": "EdgeVersionSkew", "status": "True"}]}}),
        );
        let current = node(json!({}));
        let init = pod(json!({"initContainers": [{"name": "i", "image": "x"}],
            "containers": [{"name": "c", "image": "x"}]}));
        assert_eq!(init.needs_current_edge, Some("init_containers"));
        assert_eq!(
            run(&init, &older),
            Err(vec![Reason::OlderEdge("init_containers")])
        );
        assert!(run(&init, &current).is_ok());
        // A plain pod goes anywhere.
        let plain = pod(json!({"containers": [{"name": "c", "image": "x"}]}));
        assert!(run(&plain, &older).is_ok());
        let mut e = FitError {
            nodes: 2,
            ..FitError::default()
        };
        e.add(vec![Reason::OlderEdge("init_containers")]);
        e.add(vec![Reason::NotReady]);
        assert_eq!(
            e.to_string(),
            "0/2 nodes are available: 1 node(s) had an edgecore too old for the pod's init containers (upgrade the node), 1 node(s) were not ready."
        );
        assert!(!Reason::OlderEdge("x").resolvable_by_preemption());
    }

    #[test]
    fn taint_filter_blocks_noschedule_and_noexecute_only() {
        let tainted = |effect: &str| {
            node(
                json!({"spec": {"taints": [{"key": "dedicated", "value": "gpu", "effect": effect}]}}),
            )
        };
        let plain = pod(json!({}));
        let blocked = Err(vec![Reason::UntoleratedTaint {
            key: "dedicated".into(),
            value: "gpu".into(),
        }]);
        assert_eq!(run(&plain, &tainted("NoSchedule")), blocked);
        assert_eq!(run(&plain, &tainted("NoExecute")), blocked);
        assert!(run(&plain, &tainted("PreferNoSchedule")).is_ok());
        let tolerant = pod(
            json!({"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]}),
        );
        assert!(run(&tolerant, &tainted("NoSchedule")).is_ok());
        assert!(run(&tolerant, &tainted("NoExecute")).is_err());
        let everything = pod(json!({"tolerations": [{"operator": "Exists"}]}));
        assert!(run(&everything, &tainted("NoExecute")).is_ok());
    }

    #[test]
    fn not_ready_and_cordoned_nodes_are_filtered() {
        let p = pod(json!({}));
        let down = node(json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}));
        assert_eq!(run(&p, &down), Err(vec![Reason::NotReady]));
        let unreachable = node(
            json!({"spec": {"taints": [{"key": "node.kubernetes.io/unreachable", "effect": "NoSchedule"}]}}),
        );
        assert_eq!(run(&p, &unreachable), Err(vec![Reason::NotReady]));
        let cordoned = node(json!({"spec": {"unschedulable": true}}));
        assert_eq!(run(&p, &cordoned), Err(vec![Reason::Unschedulable]));
        let ds = pod(
            json!({"tolerations": [{"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"}]}),
        );
        assert!(run(&ds, &cordoned).is_ok());
    }

    #[test]
    fn resource_fit_counts_what_is_allocated() {
        let n = node(json!({}));
        let req =
            |r: Value| pod(json!({"containers": [{"name": "c", "resources": {"requests": r}}]}));
        let mut usage = Usage::default();
        usage.requested.cpu_millis = 600;
        usage.requested.memory = 512 << 20;
        usage.pods = 1;
        assert!(check(&req(json!({"cpu": "400m", "memory": "512Mi"})), &n, &usage).is_ok());
        assert_eq!(
            check(&req(json!({"cpu": "500m", "memory": "600Mi"})), &n, &usage),
            Err(vec![
                Reason::Insufficient("cpu".into()),
                Reason::Insufficient("memory".into())
            ])
        );
        assert!(check(&req(json!({"skerry.io/gpio": "1"})), &n, &usage).is_ok());
        assert_eq!(
            check(&req(json!({"skerry.io/gpio": "2"})), &n, &usage),
            Err(vec![Reason::Insufficient("skerry.io/gpio".into())])
        );
        assert_eq!(
            check(&req(json!({"skerry.io/camera": "1"})), &n, &usage),
            Err(vec![Reason::Insufficient("skerry.io/camera".into())]),
            "an extended resource the node does not offer"
        );
        usage.pods = 2;
        assert_eq!(
            check(&req(json!({})), &n, &usage),
            Err(vec![Reason::TooManyPods])
        );
    }

    #[test]
    fn message_reads_like_kubernetes() {
        let mut e = FitError {
            nodes: 3,
            ..Default::default()
        };
        e.add(vec![Reason::Insufficient("cpu".into())]);
        e.add(vec![Reason::NodeAffinity]);
        e.add(vec![Reason::Insufficient("cpu".into())]);
        assert_eq!(
            e.to_string(),
            "0/3 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, 2 Insufficient cpu."
        );
        let mut t = FitError {
            nodes: 1,
            ..Default::default()
        };
        t.add(vec![Reason::UntoleratedTaint {
            key: "k".into(),
            value: String::new(),
        }]);
        assert_eq!(
            t.to_string(),
            "0/1 nodes are available: 1 node(s) had untolerated taint {k: }."
        );
        assert_eq!(
            FitError::default().to_string(),
            "no nodes available to schedule pods"
        );
    }
}
