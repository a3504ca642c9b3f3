//! What the scheduler reads from Node and Pod objects, parsed once into plain structs.
//!
//! Scheduling one pod evaluates it against every node, so nothing on that path may touch JSON:
//! a node is parsed when its object changes (labels, taints, readiness, allocatable) and a pod
//! when it enters the queue. Malformed parts never panic: an unparsable quantity counts as zero
//! on a node (it offers nothing) and a malformed affinity term matches no node, as in Kubernetes.
//!
//! Objects are decoded with serde, not read through JSON pointers: [`PodFields`] and
//! [`NodeFields`] hold only what the scheduler reads (serde skips the rest, which is cheaper
//! than decoding a whole k8s-openapi `Pod` with its containers' every field and timestamps),
//! and the scheduling terms inside them are k8s-openapi's own types (`Affinity`, `Toleration`,
//! `TopologySpreadConstraint`, `LabelSelector`), so that field names and shapes are Kubernetes'.
//! The API decodes every pod and node it stores as the k8s-openapi type, so a stored object
//! decodes here too; one that does not (written around the API) is logged and treated as a
//! node that is not ready or a pod that fits no node, never half-read.

//!
//! The decoding lives in [`fields`]; this file holds the scheduler's own types and how terms
//! match.

mod fields;
#[cfg(test)]
mod tests;

pub use fields::*;

use crate::api::quantity::{parse_cpu_millis, parse_memory_bytes};
use crate::api::selector::LabelSelector;
use k8s_openapi::api::core::v1::{
    Affinity, NodeSelectorRequirement, NodeSelectorTerm, PodAffinityTerm, WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector as MetaSelector;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// Requests a container without one is scored as having (Kubernetes' non-zero defaults), so
/// that best-effort pods still spread by least-allocated instead of piling onto one node.
pub const DEFAULT_SCORE_CPU_MILLIS: u64 = 100;
/// Memory counterpart of [`DEFAULT_SCORE_CPU_MILLIS`]: 200 MiB.
pub const DEFAULT_SCORE_MEMORY: u64 = 200 * 1024 * 1024;

/// Taints the node lifecycle puts on nodes that are not ready or not heard from; such nodes are
/// never chosen (DESIGN.md principle 4 keeps their pods where they are, but new pods go elsewhere).
pub const NOT_READY_TAINTS: [&str; 2] = [
    "node.kubernetes.io/not-ready",
    "node.kubernetes.io/unreachable",
];

/// An amount of schedulable resources: what a node offers or what pods request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    /// CPU in millicores.
    pub cpu_millis: u64,
    /// Memory in bytes.
    pub memory: u64,
    /// Extended resources (`skerry.io/...`, `hugepages-*`, any domain-qualified name) as counts.
    pub scalars: BTreeMap<String, u64>,
}

impl Resources {
    /// Adds `other` to `self`, saturating.
    pub fn add(&mut self, other: &Resources) {
        self.cpu_millis = self.cpu_millis.saturating_add(other.cpu_millis);
        self.memory = self.memory.saturating_add(other.memory);
        for (k, v) in &other.scalars {
            let e = self.scalars.entry(k.clone()).or_default();
            *e = e.saturating_add(*v);
        }
    }

    /// Subtracts `other` from `self`, saturating at zero; entries that reach zero are dropped.
    pub fn sub(&mut self, other: &Resources) {
        self.cpu_millis = self.cpu_millis.saturating_sub(other.cpu_millis);
        self.memory = self.memory.saturating_sub(other.memory);
        for (k, v) in &other.scalars {
            if let Some(e) = self.scalars.get_mut(k) {
                *e = e.saturating_sub(*v);
                if *e == 0 {
                    self.scalars.remove(k);
                }
            }
        }
    }

    /// Takes, per resource, the larger of `self` and `other` (init containers run one at a time,
    /// so a pod needs the largest of them, not their sum).
    fn max_with(&mut self, other: &Resources) {
        self.cpu_millis = self.cpu_millis.max(other.cpu_millis);
        self.memory = self.memory.max(other.memory);
        for (k, v) in &other.scalars {
            let e = self.scalars.entry(k.clone()).or_default();
            *e = (*e).max(*v);
        }
    }
}

/// Whether a resource name is an extended (scalar) resource the scheduler counts. Kubernetes
/// counts every domain-qualified name outside `kubernetes.io/` and hugepages; `ephemeral-storage`
/// is not counted because edge nodes do not report it.
fn is_scalar(name: &str) -> bool {
    name.starts_with("hugepages-")
        || (name.contains('/')
            && !name.starts_with("kubernetes.io/")
            && !name.starts_with("requests."))
}

/// Parses a `ResourceList` (`{"cpu": "500m", "memory": "1Gi", "skerry.io/gpio": "2"}`).
/// Returns the resources and, separately, which of cpu/memory were named at all.
fn resource_list(map: &BTreeMap<String, Quantity>) -> (Resources, bool, bool) {
    let mut r = Resources::default();
    let (mut has_cpu, mut has_mem) = (false, false);
    for (k, Quantity(q)) in map {
        match k.as_str() {
            "cpu" => {
                has_cpu = true;
                r.cpu_millis = parse_cpu_millis(q).unwrap_or(0);
            }
            "memory" => {
                has_mem = true;
                r.memory = parse_memory_bytes(q).unwrap_or(0);
            }
            name if is_scalar(name) => {
                let n = parse_memory_bytes(q).unwrap_or(0);
                if n > 0 {
                    r.scalars.insert(name.to_string(), n);
                }
            }
            _ => {}
        }
    }
    (r, has_cpu, has_mem)
}

/// What a pod asks of a node's resources.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodRequests {
    /// Effective requests: max(sum of containers, largest init container) plus overhead.
    pub fit: Resources,
    /// CPU for scoring: like `fit`, but a container without a cpu request counts
    /// [`DEFAULT_SCORE_CPU_MILLIS`].
    pub score_cpu_millis: u64,
    /// Memory for scoring, with [`DEFAULT_SCORE_MEMORY`] for containers without a request.
    pub score_memory: u64,
}

/// A taint's effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// New pods that do not tolerate it are not placed.
    NoSchedule,
    /// New pods that do not tolerate it are placed there only if nothing better fits.
    PreferNoSchedule,
    /// Like `NoSchedule` for placement (eviction is the node lifecycle's business).
    NoExecute,
}

impl Effect {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "NoSchedule" => Some(Self::NoSchedule),
            "PreferNoSchedule" => Some(Self::PreferNoSchedule),
            "NoExecute" => Some(Self::NoExecute),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::NoSchedule => "NoSchedule",
            Self::PreferNoSchedule => "PreferNoSchedule",
            Self::NoExecute => "NoExecute",
        }
    }
}

/// A node taint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taint {
    /// Key.
    pub key: String,
    /// Value (may be empty).
    pub value: String,
    /// Effect.
    pub effect: Effect,
}

/// A pod toleration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Toleration {
    /// Key; empty with `exists` tolerates every key.
    pub key: String,
    /// `Exists` (any value) rather than `Equal`.
    pub exists: bool,
    /// Value compared by `Equal`.
    pub value: String,
    /// Effect it applies to; `None` tolerates every effect.
    pub effect: Option<String>,
}

impl Toleration {
    /// Whether this toleration tolerates `taint` (Kubernetes `ToleratesTaint`).
    pub fn tolerates(&self, taint: &Taint) -> bool {
        if let Some(e) = &self.effect {
            if e != taint.effect.as_str() {
                return false;
            }
        }
        if self.key.is_empty() {
            return self.exists;
        }
        self.key == taint.key && (self.exists || self.value == taint.value)
    }
}

/// Whether any of `tolerations` tolerates `taint`.
pub fn tolerated(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| t.tolerates(taint))
}

/// A node selector requirement operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// The label's value is one of the values.
    In(Vec<String>),
    /// The label is absent or its value is none of the values.
    NotIn(Vec<String>),
    /// The label is present.
    Exists,
    /// The label is absent.
    DoesNotExist,
    /// The label's value, as an integer, is greater.
    Gt(i64),
    /// The label's value, as an integer, is less.
    Lt(i64),
}

/// One `matchExpressions` / `matchFields` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// Label key (or field name for `matchFields`).
    pub key: String,
    /// Operator with its operands.
    pub op: Op,
}

impl Requirement {
    fn parse(r: &NodeSelectorRequirement) -> Option<Self> {
        let key = r.key.clone();
        let values: Vec<String> = r.values.clone().unwrap_or_default();
        let single_int = || -> Option<i64> {
            match values.as_slice() {
                [one] => one.parse().ok(),
                _ => None,
            }
        };
        let op = match r.operator.as_str() {
            "In" if !values.is_empty() => Op::In(values),
            "NotIn" if !values.is_empty() => Op::NotIn(values),
            "Exists" if values.is_empty() => Op::Exists,
            "DoesNotExist" if values.is_empty() => Op::DoesNotExist,
            "Gt" => Op::Gt(single_int()?),
            "Lt" => Op::Lt(single_int()?),
            _ => return None,
        };
        Some(Self { key, op })
    }

    /// Whether a value found under the key (or its absence) satisfies the requirement.
    pub fn matches(&self, found: Option<&str>) -> bool {
        match (&self.op, found) {
            (Op::In(vs), Some(v)) => vs.iter().any(|x| x == v),
            (Op::In(_), None) => false,
            (Op::NotIn(vs), Some(v)) => !vs.iter().any(|x| x == v),
            (Op::NotIn(_), None) => true,
            (Op::Exists, f) => f.is_some(),
            (Op::DoesNotExist, f) => f.is_none(),
            (Op::Gt(n), Some(v)) => v.parse::<i64>().is_ok_and(|x| x > *n),
            (Op::Lt(n), Some(v)) => v.parse::<i64>().is_ok_and(|x| x < *n),
            (Op::Gt(_) | Op::Lt(_), None) => false,
        }
    }
}

/// One `nodeSelectorTerms` entry: all expressions and fields must match. `None` parts mark a
/// malformed term, which matches no node (Kubernetes treats a term it cannot parse the same way).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term {
    /// Label requirements, or `None` if any was malformed.
    pub expressions: Option<Vec<Requirement>>,
    /// Field requirements (`metadata.name` only), or `None` if any was malformed.
    pub fields: Option<Vec<Requirement>>,
}

impl Term {
    fn parse(t: &NodeSelectorTerm) -> Self {
        let reqs = |rs: Option<&Vec<NodeSelectorRequirement>>, fields_only: bool| {
            rs.map_or(Some(Vec::new()), |rs| {
                rs.iter()
                    .map(|r| {
                        let req = Requirement::parse(r)?;
                        let field_ok = !fields_only
                            || (req.key == "metadata.name"
                                && matches!(req.op, Op::In(_) | Op::NotIn(_)));
                        field_ok.then_some(req)
                    })
                    .collect()
            })
        };
        Self {
            expressions: reqs(t.match_expressions.as_ref(), false),
            fields: reqs(t.match_fields.as_ref(), true),
        }
    }
    /// Whether the node with this name and labels satisfies the term. A term with no
    /// requirement at all matches nothing, as in Kubernetes.
    pub fn matches(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        let (Some(exprs), Some(fields)) = (&self.expressions, &self.fields) else {
            return false;
        };
        if exprs.is_empty() && fields.is_empty() {
            return false;
        }
        exprs
            .iter()
            .all(|r| r.matches(labels.get(&r.key).map(String::as_str)))
            && fields.iter().all(|r| r.matches(Some(name)))
    }
}

/// A Node as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// Name.
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Taints with a known effect.
    pub taints: Vec<Taint>,
    /// Ready condition True and no not-ready/unreachable taint.
    pub ready: bool,
    /// `spec.unschedulable` (cordoned).
    pub unschedulable: bool,
    /// `status.allocatable` cpu, memory and extended resources.
    pub allocatable: Resources,
    /// `status.allocatable.pods`: how many pods the node takes.
    pub max_pods: u64,
    /// Its edgecore speaks the previous protocol (its `EdgeVersionSkew` condition is True):
    /// it is not sent pods that need today's ([`PodInfo::needs_current_edge`]).
    pub older_edge: bool,
}

/// A pod waiting for a node, as the filters and scores see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    /// Identity, labels and inter-pod terms, shared with the cache once the pod is placed.
    pub meta: Arc<PodMeta>,
    /// `spec.nodeSelector`.
    pub node_selector: Vec<(String, String)>,
    /// Required node affinity terms (ORed); `None` when the pod has none.
    pub affinity: Option<Vec<Term>>,
    /// Preferred node affinity terms with their weights (1..=100).
    pub preferred_affinity: Vec<(i64, Term)>,
    /// Tolerations.
    pub tolerations: Vec<Toleration>,
    /// Resource requests.
    pub requests: PodRequests,
    /// Replicas with the same key are spread across nodes (see [`spread_key`]).
    pub spread: Option<u64>,
    /// `topologySpreadConstraints`.
    pub spread_constraints: Vec<SpreadConstraint>,
    /// Resolved priority (see [`priority`]).
    pub priority: i32,
    /// Whether the pod may preempt lower-priority pods (`preemptionPolicy` is not `Never`).
    pub preempts: bool,
    /// What of the pod an edge one protocol version behind would not run as asked
    /// (`protocol::compat::v7::v8_only`): the hub withholds such a pod from those edges, so
    /// the scheduler does not place it there.
    pub needs_current_edge: Option<&'static str>,
}

/// What the inter-pod plugins need of a pod, placed or pending: shared behind an `Arc` between
/// the queue and the cache so that placing a pod copies no labels.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodMeta {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Uid.
    pub uid: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Pod affinity and anti-affinity, if the pod has any.
    pub inter_pod: Option<InterPod>,
}

/// A metav1 `LabelSelector` in a pod's affinity or spread terms, parsed by the API's
/// [`LabelSelector`] (one grammar and one set of error messages for the whole of cloudcore).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    /// The parsed selector; `None` when it is absent or does not parse, which selects nothing
    /// (Kubernetes: a nil selector matches no pod, and a term whose selector fails to parse
    /// matches nothing), while an empty selector selects all.
    pub parsed: Option<LabelSelector>,
    /// [`LabelSelector::index_hint`], worked out once when the pod is parsed so that finding
    /// a term's candidates allocates nothing per scheduling attempt.
    hint: Option<(String, Vec<String>)>,
}

impl Selector {
    /// A selector that selects nothing.
    pub const NOTHING: Selector = Selector {
        parsed: None,
        hint: None,
    };

    /// A selector from a parsed one, with its index hint.
    pub fn new(sel: LabelSelector) -> Self {
        let hint = sel
            .index_hint()
            .map(|(k, vs)| (k.to_string(), vs.into_iter().map(str::to_string).collect()));
        Self {
            parsed: Some(sel),
            hint,
        }
    }

    /// Parses a `LabelSelector` object; `None`, `null` or a malformed selector (a
    /// `matchLabels` value that is not a string, an unknown operator, `In` without values)
    /// selects nothing, and the reason is logged: never a selector with the bad part dropped.
    pub fn parse(v: Option<&Value>) -> Self {
        let Some(v) = v.filter(|v| v.is_object()) else {
            return Self::NOTHING;
        };
        match MetaSelector::deserialize(v) {
            Ok(m) => Self::from_meta(Some(&m)),
            Err(e) => {
                tracing::warn!(selector = %v, error = %e, "label selector in a pod's scheduling terms does not parse; it selects no pod");
                Self::NOTHING
            }
        }
    }

    /// A decoded `LabelSelector`; `None` or one that does not parse (an unknown operator,
    /// `In` without values) selects nothing, and the reason is logged.
    pub fn from_meta(sel: Option<&MetaSelector>) -> Self {
        let Some(sel) = sel else {
            return Self::NOTHING;
        };
        match LabelSelector::from_meta(sel) {
            Ok(sel) => Self::new(sel),
            Err(e) => {
                tracing::warn!(selector = ?sel, error = %e.problem, "label selector in a pod's scheduling terms does not parse; it selects no pod");
                Self::NOTHING
            }
        }
    }

    /// Whether the selector selects nothing at all.
    pub fn selects_nothing(&self) -> bool {
        self.parsed.is_none()
    }

    /// Whether labels looked up through `get` satisfy every requirement.
    pub fn matches_with<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.parsed.as_ref().is_some_and(|s| s.matches_with(get))
    }

    /// Whether `labels` satisfy the selector.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matches_with(|k| labels.get(k).map(String::as_str))
    }

    /// A label key and the values one of which every selected pod must carry (see
    /// [`LabelSelector::index_hint`]); `None` when all pods are candidates.
    pub fn index_hint(&self) -> Option<(&str, Vec<&str>)> {
        self.parsed.as_ref()?.index_hint()
    }

    /// [`Selector::index_hint`] as worked out at parse time, without allocating.
    pub fn hint(&self) -> Option<(&str, &[String])> {
        self.hint
            .as_ref()
            .map(|(k, vs)| (k.as_str(), vs.as_slice()))
    }
}

/// The namespaces a pod affinity term looks at: those listed, plus those its
/// `namespaceSelector` selects. Namespace labels are not cached by the scheduler, so a
/// `namespaceSelector` is evaluated against the one label every namespace carries,
/// `kubernetes.io/metadata.name`; `{}` selects every namespace. With neither, the term looks
/// at the pod's own namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespaces {
    /// Listed names (the pod's own when nothing else is given).
    pub names: Vec<String>,
    /// `namespaceSelector`, if given.
    pub selector: Option<Selector>,
}

impl Namespaces {
    /// Whether a pod in namespace `ns` is in scope.
    pub fn contains(&self, ns: &str) -> bool {
        self.names.iter().any(|n| n == ns)
            || self.selector.as_ref().is_some_and(|s| {
                s.matches_with(|k| (k == "kubernetes.io/metadata.name").then_some(ns))
            })
    }
}

/// One `podAffinityTerm`: pods selected by `selector` in `namespaces`, counted per value of the
/// nodes' `topology_key` label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AffinityTerm {
    /// Which pods.
    pub selector: Selector,
    /// In which namespaces.
    pub namespaces: Namespaces,
    /// The node label that defines a topology domain (`kubernetes.io/hostname`, a zone).
    pub topology_key: String,
}

impl AffinityTerm {
    fn parse(t: &PodAffinityTerm, own_namespace: &str) -> Self {
        let names: Vec<String> = t.namespaces.clone().unwrap_or_default();
        let selector = t
            .namespace_selector
            .as_ref()
            .map(|s| Selector::from_meta(Some(s)));
        let names = if names.is_empty() && selector.is_none() {
            vec![own_namespace.to_string()]
        } else {
            names
        };
        Self {
            selector: Selector::from_meta(t.label_selector.as_ref()),
            namespaces: Namespaces { names, selector },
            topology_key: t.topology_key.clone(),
        }
    }

    /// Whether a pod in `ns` with `labels` is one this term selects.
    pub fn selects(&self, ns: &str, labels: &BTreeMap<String, String>) -> bool {
        self.namespaces.contains(ns) && self.selector.matches(labels)
    }
}

/// A pod's `podAffinity` and `podAntiAffinity`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InterPod {
    /// Required affinity: every term must be satisfied by a pod in the node's domain.
    pub affinity: Vec<AffinityTerm>,
    /// Required anti-affinity: no term may be matched by a pod in the node's domain.
    pub anti_affinity: Vec<AffinityTerm>,
    /// Preferred affinity terms with weights.
    pub preferred: Vec<(i64, AffinityTerm)>,
    /// Preferred anti-affinity terms with weights.
    pub preferred_anti: Vec<(i64, AffinityTerm)>,
}

impl InterPod {
    fn parse(a: &Affinity, ns: &str) -> Option<Self> {
        let required = |ts: Option<&Vec<PodAffinityTerm>>| -> Vec<AffinityTerm> {
            ts.map(|ts| ts.iter().map(|t| AffinityTerm::parse(t, ns)).collect())
                .unwrap_or_default()
        };
        let preferred = |ts: Option<&Vec<WeightedPodAffinityTerm>>| -> Vec<(i64, AffinityTerm)> {
            ts.map(|ts| {
                ts.iter()
                    .map(|t| {
                        let term = AffinityTerm::parse(&t.pod_affinity_term, ns);
                        (i64::from(t.weight), term)
                    })
                    .collect()
            })
            .unwrap_or_default()
        };
        let (aff, anti) = (a.pod_affinity.as_ref(), a.pod_anti_affinity.as_ref());
        let ip = Self {
            affinity: required(aff.and_then(|p| {
                p.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })),
            anti_affinity: required(anti.and_then(|p| {
                p.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })),
            preferred: preferred(aff.and_then(|p| {
                p.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            })),
            preferred_anti: preferred(anti.and_then(|p| {
                p.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            })),
        };
        (ip != Self::default()).then_some(ip)
    }
}

/// One `topologySpreadConstraints` entry. `nodeAffinityPolicy` and `nodeTaintsPolicy` take
/// Kubernetes' defaults (Honor and Ignore); `matchLabelKeys` is not supported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpreadConstraint {
    /// Largest allowed difference between a domain's matching pods and the emptiest domain's.
    pub max_skew: u32,
    /// The node label that defines a domain.
    pub topology_key: String,
    /// `DoNotSchedule` (a filter) rather than `ScheduleAnyway` (a score).
    pub hard: bool,
    /// Which pods (in the pod's own namespace) count.
    pub selector: Selector,
    /// With fewer eligible domains than this, the emptiest domain counts as 0 (hard only).
    pub min_domains: u32,
}

/// Priority of the built-in class `system-node-critical`.
pub const SYSTEM_NODE_CRITICAL: i32 = 2_000_001_000;
/// Priority of the built-in class `system-cluster-critical`.
pub const SYSTEM_CLUSTER_CRITICAL: i32 = 2_000_000_000;
