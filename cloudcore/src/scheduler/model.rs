//! What the scheduler reads from Node and Pod objects, parsed once into plain structs.
//!
//! Scheduling one pod evaluates it against every node, so nothing on that path may touch JSON:
//! a node is parsed when its object changes (labels, taints, readiness, allocatable) and a pod
//! when it enters the queue. Malformed parts never panic: an unparsable quantity counts as zero
//! on a node (it offers nothing) and a malformed affinity term matches no node, as in Kubernetes.

use crate::api::quantity::{parse_cpu_millis, parse_memory_bytes};
use crate::api::selector::LabelSelector;
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

fn quantity_str(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Parses a `ResourceList` (`{"cpu": "500m", "memory": "1Gi", "skerry.io/gpio": "2"}`).
/// Returns the resources and, separately, which of cpu/memory were named at all.
fn resource_list(v: Option<&Value>) -> (Resources, bool, bool) {
    let mut r = Resources::default();
    let (mut has_cpu, mut has_mem) = (false, false);
    let Some(map) = v.and_then(Value::as_object) else {
        return (r, false, false);
    };
    for (k, v) in map {
        let Some(q) = quantity_str(v) else { continue };
        match k.as_str() {
            "cpu" => {
                has_cpu = true;
                r.cpu_millis = parse_cpu_millis(&q).unwrap_or(0);
            }
            "memory" => {
                has_mem = true;
                r.memory = parse_memory_bytes(&q).unwrap_or(0);
            }
            name if is_scalar(name) => {
                let n = parse_memory_bytes(&q).unwrap_or(0);
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

impl PodRequests {
    /// Reads the requests of a Pod object.
    pub fn of(pod: &Value) -> Self {
        let containers = |field: &str| -> Vec<(Resources, bool, bool)> {
            pod.pointer(&format!("/spec/{field}"))
                .and_then(Value::as_array)
                .map(|cs| {
                    cs.iter()
                        .map(|c| resource_list(c.pointer("/resources/requests")))
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut fit = Resources::default();
        let (mut score_cpu, mut score_mem) = (0u64, 0u64);
        for (r, has_cpu, has_mem) in containers("containers") {
            fit.add(&r);
            score_cpu += if has_cpu {
                r.cpu_millis
            } else {
                DEFAULT_SCORE_CPU_MILLIS
            };
            score_mem += if has_mem {
                r.memory
            } else {
                DEFAULT_SCORE_MEMORY
            };
        }
        for (r, has_cpu, has_mem) in containers("initContainers") {
            fit.max_with(&r);
            if has_cpu {
                score_cpu = score_cpu.max(r.cpu_millis);
            }
            if has_mem {
                score_mem = score_mem.max(r.memory);
            }
        }
        let (overhead, _, _) = resource_list(pod.pointer("/spec/overhead"));
        fit.add(&overhead);
        Self {
            score_cpu_millis: score_cpu.saturating_add(overhead.cpu_millis),
            score_memory: score_mem.saturating_add(overhead.memory),
            fit,
        }
    }
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
    fn parse(v: &Value) -> Option<Self> {
        let key = v.get("key")?.as_str()?.to_string();
        let values: Vec<String> = v
            .get("values")
            .and_then(Value::as_array)
            .map(|vs| {
                vs.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let single_int = || -> Option<i64> {
            match values.as_slice() {
                [one] => one.parse().ok(),
                _ => None,
            }
        };
        let op = match v.get("operator")?.as_str()? {
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
    fn parse(v: &Value) -> Self {
        let reqs = |field: &str, fields_only: bool| -> Option<Vec<Requirement>> {
            v.get(field)
                .and_then(Value::as_array)
                .map(|rs| {
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
                .unwrap_or(Some(Vec::new()))
        };
        Self {
            expressions: reqs("matchExpressions", false),
            fields: reqs("matchFields", true),
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
}

fn string_map(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// Whether a Node object's Ready condition is True.
pub fn ready_condition(node: &Value) -> bool {
    node.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

impl NodeInfo {
    /// Parses a Node object.
    pub fn of(node: &Value) -> Self {
        let taints: Vec<Taint> = node
            .pointer("/spec/taints")
            .and_then(Value::as_array)
            .map(|ts| {
                ts.iter()
                    .filter_map(|t| {
                        Some(Taint {
                            key: t.get("key")?.as_str()?.to_string(),
                            value: t.get("value").and_then(Value::as_str).unwrap_or("").into(),
                            effect: Effect::parse(t.get("effect")?.as_str()?)?,
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let tainted_not_ready = taints.iter().any(|t| {
            NOT_READY_TAINTS.contains(&t.key.as_str()) && t.effect != Effect::PreferNoSchedule
        });
        let alloc = node.pointer("/status/allocatable");
        let (allocatable, _, _) = resource_list(alloc);
        let max_pods = alloc
            .and_then(|a| a.get("pods"))
            .and_then(quantity_str)
            .and_then(|q| parse_memory_bytes(&q).ok())
            .unwrap_or(0);
        Self {
            name: str_at(node, "/metadata/name").to_string(),
            labels: string_map(node.pointer("/metadata/labels")),
            ready: ready_condition(node) && !tainted_not_ready,
            unschedulable: node.pointer("/spec/unschedulable").and_then(Value::as_bool)
                == Some(true),
            taints,
            allocatable,
            max_pods,
        }
    }
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
}

impl Selector {
    /// A selector that selects nothing.
    pub const NOTHING: Selector = Selector { parsed: None };

    /// Parses a `LabelSelector` object; `None`, `null` or a malformed selector (a
    /// `matchLabels` value that is not a string, an unknown operator, `In` without values)
    /// selects nothing, and the reason is logged: never a selector with the bad part dropped.
    pub fn parse(v: Option<&Value>) -> Self {
        let Some(v) = v.filter(|v| v.is_object()) else {
            return Self::NOTHING;
        };
        let parsed = MetaSelector::deserialize(v)
            .map_err(|e| e.to_string())
            .and_then(|m| LabelSelector::from_meta(&m).map_err(|e| e.to_string()));
        match parsed {
            Ok(sel) => Self { parsed: Some(sel) },
            Err(e) => {
                tracing::warn!(selector = %v, error = %e, "label selector in a pod's scheduling terms does not parse; it selects no pod");
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
    fn parse(v: &Value, own_namespace: &str) -> Self {
        let names: Vec<String> = v
            .get("namespaces")
            .and_then(Value::as_array)
            .map(|ns| {
                ns.iter()
                    .filter_map(|n| n.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let selector = v
            .get("namespaceSelector")
            .filter(|s| s.is_object())
            .map(|s| Selector::parse(Some(s)));
        let names = if names.is_empty() && selector.is_none() {
            vec![own_namespace.to_string()]
        } else {
            names
        };
        Self {
            selector: Selector::parse(v.get("labelSelector")),
            namespaces: Namespaces { names, selector },
            topology_key: v
                .get("topologyKey")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
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
    fn parse(pod: &Value, ns: &str) -> Option<Self> {
        let required = |p: &str| -> Vec<AffinityTerm> {
            pod.pointer(p)
                .and_then(Value::as_array)
                .map(|ts| ts.iter().map(|t| AffinityTerm::parse(t, ns)).collect())
                .unwrap_or_default()
        };
        let preferred = |p: &str| -> Vec<(i64, AffinityTerm)> {
            pod.pointer(p)
                .and_then(Value::as_array)
                .map(|ts| {
                    ts.iter()
                        .filter_map(|t| {
                            let w = t.get("weight")?.as_i64()?;
                            Some((w, AffinityTerm::parse(t.get("podAffinityTerm")?, ns)))
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        let a = "/spec/affinity/podAffinity";
        let x = "/spec/affinity/podAntiAffinity";
        let r = "requiredDuringSchedulingIgnoredDuringExecution";
        let w = "preferredDuringSchedulingIgnoredDuringExecution";
        let ip = Self {
            affinity: required(&format!("{a}/{r}")),
            anti_affinity: required(&format!("{x}/{r}")),
            preferred: preferred(&format!("{a}/{w}")),
            preferred_anti: preferred(&format!("{x}/{w}")),
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

fn spread_constraints(pod: &Value) -> Vec<SpreadConstraint> {
    pod.pointer("/spec/topologySpreadConstraints")
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .filter_map(|c| {
                    Some(SpreadConstraint {
                        max_skew: u32::try_from(c.get("maxSkew")?.as_u64()?).ok()?.max(1),
                        topology_key: c.get("topologyKey")?.as_str()?.to_string(),
                        hard: c.get("whenUnsatisfiable").and_then(Value::as_str)
                            != Some("ScheduleAnyway"),
                        selector: Selector::parse(c.get("labelSelector")),
                        min_domains: c
                            .get("minDomains")
                            .and_then(Value::as_u64)
                            .and_then(|n| u32::try_from(n).ok())
                            .unwrap_or(1),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Priority of the built-in class `system-node-critical`.
pub const SYSTEM_NODE_CRITICAL: i32 = 2_000_001_000;
/// Priority of the built-in class `system-cluster-critical`.
pub const SYSTEM_CLUSTER_CRITICAL: i32 = 2_000_000_000;

/// A pod's priority: `spec.priority` if set; otherwise the value of its `priorityClassName`
/// when that is one of the two built-in classes; otherwise 0. Skerry has no PriorityClass
/// objects, so any other class name counts as 0 (Kubernetes' admission would reject it).
pub fn priority(pod: &Value) -> i32 {
    if let Some(p) = pod.pointer("/spec/priority").and_then(Value::as_i64) {
        return p.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32;
    }
    match str_at(pod, "/spec/priorityClassName") {
        "system-node-critical" => SYSTEM_NODE_CRITICAL,
        "system-cluster-critical" => SYSTEM_CLUSTER_CRITICAL,
        _ => 0,
    }
}

/// The pod's identity, labels and inter-pod terms.
pub fn pod_meta(pod: &Value) -> PodMeta {
    let namespace = str_at(pod, "/metadata/namespace").to_string();
    PodMeta {
        inter_pod: InterPod::parse(pod, &namespace),
        name: str_at(pod, "/metadata/name").to_string(),
        uid: str_at(pod, "/metadata/uid").to_string(),
        labels: string_map(pod.pointer("/metadata/labels")),
        namespace,
    }
}

/// `status.nominatedNodeName`, if set.
pub fn nominated_node(pod: &Value) -> Option<&str> {
    pod.pointer("/status/nominatedNodeName")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// Whether the pod is being deleted (graceful deletion in progress).
pub fn terminating(pod: &Value) -> bool {
    pod.pointer("/metadata/deletionTimestamp").is_some()
}

/// The group a pod is spread with: its controller's uid, or, for a pod without a controller,
/// its namespace and labels (pods created alike by one client). Unlabelled pods without an owner
/// are not spread.
pub fn spread_key(pod: &Value) -> Option<u64> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let controller = pod
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .and_then(|os| {
            os.iter()
                .find(|o| o.get("controller").and_then(Value::as_bool) == Some(true))
        })
        .and_then(|o| o.get("uid")?.as_str());
    if let Some(uid) = controller {
        ("owner", uid).hash(&mut h);
        return Some(h.finish());
    }
    let labels = pod.pointer("/metadata/labels").and_then(Value::as_object)?;
    if labels.is_empty() {
        return None;
    }
    ("labels", str_at(pod, "/metadata/namespace")).hash(&mut h);
    for (k, v) in labels {
        (k, v.as_str().unwrap_or("")).hash(&mut h);
    }
    Some(h.finish())
}

fn tolerations(v: Option<&Value>) -> Vec<Toleration> {
    v.and_then(Value::as_array)
        .map(|ts| {
            ts.iter()
                .map(|t| {
                    let s = |k: &str| t.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                    let effect = s("effect");
                    Toleration {
                        key: s("key"),
                        exists: s("operator") == "Exists",
                        value: s("value"),
                        effect: (!effect.is_empty()).then_some(effect),
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

impl PodInfo {
    /// Parses a Pod object.
    pub fn of(pod: &Value) -> Self {
        let affinity = pod
            .pointer("/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution")
            .filter(|v| v.is_object())
            .map(|req| {
                req.get("nodeSelectorTerms")
                    .and_then(Value::as_array)
                    .map(|ts| ts.iter().map(Term::parse).collect())
                    .unwrap_or_default()
            });
        let preferred_affinity = pod
            .pointer("/spec/affinity/nodeAffinity/preferredDuringSchedulingIgnoredDuringExecution")
            .and_then(Value::as_array)
            .map(|ts| {
                ts.iter()
                    .filter_map(|t| {
                        let w = t.get("weight")?.as_i64()?;
                        Some((w, Term::parse(t.get("preference")?)))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self {
            meta: Arc::new(pod_meta(pod)),
            node_selector: string_map(pod.pointer("/spec/nodeSelector"))
                .into_iter()
                .collect(),
            affinity,
            preferred_affinity,
            tolerations: tolerations(pod.pointer("/spec/tolerations")),
            requests: PodRequests::of(pod),
            spread: spread_key(pod),
            spread_constraints: spread_constraints(pod),
            priority: priority(pod),
            preempts: str_at(pod, "/spec/preemptionPolicy") != "Never",
        }
    }
}

/// Whether a pod has finished for good (its requests no longer hold resources).
pub fn terminated(pod: &Value) -> bool {
    matches!(str_at(pod, "/status/phase"), "Succeeded" | "Failed")
}

/// The node a pod is bound to, if any.
pub fn bound_node(pod: &Value) -> Option<&str> {
    pod.pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// Whether this scheduler is the one to place the pod: unbound, not being deleted, and asking
/// for the default scheduler (a pod naming another scheduler is left to it).
pub fn wants_scheduling(pod: &Value) -> bool {
    bound_node(pod).is_none()
        && pod.pointer("/metadata/deletionTimestamp").is_none()
        && matches!(str_at(pod, "/spec/schedulerName"), "" | "default-scheduler")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn requests_sum_containers_take_largest_init_and_add_overhead() {
        let pod = json!({"spec": {
            "containers": [
                {"resources": {"requests": {"cpu": "250m", "memory": "64Mi", "skerry.io/gpio": "1"}}},
                {"resources": {"requests": {"cpu": "250m"}}},
            ],
            "initContainers": [{"resources": {"requests": {"cpu": "2", "memory": "1Mi"}}}],
            "overhead": {"cpu": "10m"},
        }});
        let r = PodRequests::of(&pod);
        assert_eq!(r.fit.cpu_millis, 2010);
        assert_eq!(r.fit.memory, 64 << 20);
        assert_eq!(r.fit.scalars["skerry.io/gpio"], 1);
        // The second container has no memory request: scored as the non-zero default.
        assert_eq!(r.score_memory, (64 << 20) + DEFAULT_SCORE_MEMORY);
        assert_eq!(r.score_cpu_millis, 2010);
        let none = PodRequests::of(&json!({"spec": {"containers": [{}]}}));
        assert_eq!(none.fit, Resources::default());
        assert_eq!(none.score_cpu_millis, DEFAULT_SCORE_CPU_MILLIS);
    }

    #[test]
    fn tolerations_follow_kubernetes_matching() {
        let taint = Taint {
            key: "dedicated".into(),
            value: "gpu".into(),
            effect: Effect::NoSchedule,
        };
        let t = |v: Value| tolerations(Some(&json!([v])));
        let ok = |v: Value| tolerated(&t(v), &taint);
        assert!(ok(
            json!({"key": "dedicated", "operator": "Equal", "value": "gpu"})
        ));
        assert!(
            ok(json!({"key": "dedicated", "value": "gpu"})),
            "Equal is the default"
        );
        assert!(!ok(json!({"key": "dedicated", "value": "cpu"})));
        assert!(ok(json!({"key": "dedicated", "operator": "Exists"})));
        assert!(
            ok(json!({"operator": "Exists"})),
            "empty key + Exists tolerates all"
        );
        assert!(
            !ok(json!({"operator": "Equal"})),
            "empty key + Equal tolerates nothing"
        );
        assert!(ok(
            json!({"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"})
        ));
        assert!(!ok(
            json!({"key": "dedicated", "operator": "Exists", "effect": "NoExecute"})
        ));
    }

    #[test]
    fn requirements_cover_every_operator() {
        let r = |v: Value| Requirement::parse(&v).unwrap();
        let in_ = r(json!({"key": "k", "operator": "In", "values": ["a", "b"]}));
        assert!(in_.matches(Some("b")) && !in_.matches(Some("c")) && !in_.matches(None));
        let not_in = r(json!({"key": "k", "operator": "NotIn", "values": ["a"]}));
        assert!(not_in.matches(Some("b")) && !not_in.matches(Some("a")) && not_in.matches(None));
        let exists = r(json!({"key": "k", "operator": "Exists"}));
        assert!(exists.matches(Some("")) && !exists.matches(None));
        let dne = r(json!({"key": "k", "operator": "DoesNotExist"}));
        assert!(!dne.matches(Some("x")) && dne.matches(None));
        let gt = r(json!({"key": "k", "operator": "Gt", "values": ["4"]}));
        assert!(gt.matches(Some("5")) && !gt.matches(Some("4")) && !gt.matches(Some("x")));
        let lt = r(json!({"key": "k", "operator": "Lt", "values": ["4"]}));
        assert!(lt.matches(Some("-1")) && !lt.matches(Some("4")) && !lt.matches(None));
        for bad in [
            json!({"key": "k", "operator": "Gt", "values": ["a"]}),
            json!({"key": "k", "operator": "In", "values": []}),
            json!({"key": "k", "operator": "Exists", "values": ["a"]}),
            json!({"key": "k", "operator": "Near"}),
        ] {
            assert!(Requirement::parse(&bad).is_none(), "{bad}");
        }
    }

    /// Kubernetes: a label selector that fails to parse matches nothing. The scheduler's old
    /// private selector could keep the valid part of a selector with a bad `matchLabels`
    /// value; now one parser (the API's) decides, and a bad part empties the whole selector.
    #[test]
    fn a_malformed_label_selector_selects_no_pod() {
        let labels: BTreeMap<String, String> = [("app".to_string(), "web".to_string())].into();
        let good = Selector::parse(Some(&json!({"matchLabels": {"app": "web"}})));
        assert!(good.matches(&labels));
        assert_eq!(good.index_hint(), Some(("app", vec!["web"])));
        assert!(Selector::parse(Some(&json!({}))).matches(&labels));
        for bad in [
            json!({"matchLabels": {"app": "web"},
                "matchExpressions": [{"key": "tier", "operator": "Near", "values": ["a"]}]}),
            json!({"matchLabels": {"app": "web"},
                "matchExpressions": [{"key": "tier", "operator": "In", "values": []}]}),
            json!({"matchLabels": {"app": "web", "tier": 3}}),
        ] {
            let sel = Selector::parse(Some(&bad));
            assert!(sel.selects_nothing(), "{bad}");
            assert!(!sel.matches(&labels), "{bad}");
        }
        assert!(Selector::parse(None).selects_nothing());
        assert!(Selector::parse(Some(&Value::Null)).selects_nothing());
    }

    #[test]
    fn terms_and_their_fields() {
        let labels = BTreeMap::from([("zone".to_string(), "north".to_string())]);
        let term = Term::parse(&json!({
            "matchExpressions": [{"key": "zone", "operator": "In", "values": ["north"]}],
            "matchFields": [{"key": "metadata.name", "operator": "In", "values": ["a"]}],
        }));
        assert!(term.matches("a", &labels));
        assert!(!term.matches("b", &labels));
        assert!(!Term::parse(&json!({})).matches("a", &labels), "empty term");
        let bad_field = Term::parse(
            &json!({"matchFields": [{"key": "metadata.uid", "operator": "In", "values": ["a"]}]}),
        );
        assert!(!bad_field.matches("a", &labels));
    }

    #[test]
    fn node_readiness_taints_and_allocatable() {
        let node = json!({
            "metadata": {"name": "n", "labels": {"a": "b"}},
            "spec": {"taints": [{"key": "x", "effect": "PreferNoSchedule"}, {"key": "y", "effect": "Bogus"}]},
            "status": {"conditions": [{"type": "Ready", "status": "True"}],
                       "allocatable": {"cpu": "2", "memory": "1Gi", "pods": "110", "skerry.io/gpio": "3", "ephemeral-storage": "1Gi"}},
        });
        let n = NodeInfo::of(&node);
        assert!(n.ready && !n.unschedulable);
        assert_eq!(n.taints.len(), 1);
        assert_eq!(
            (n.allocatable.cpu_millis, n.allocatable.memory, n.max_pods),
            (2000, 1 << 30, 110)
        );
        assert_eq!(n.allocatable.scalars.len(), 1);
        let mut tainted = node.clone();
        tainted["spec"]["taints"] =
            json!([{"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}]);
        assert!(!NodeInfo::of(&tainted).ready);
        let mut not_ready = node;
        not_ready["status"]["conditions"][0]["status"] = json!("Unknown");
        assert!(!NodeInfo::of(&not_ready).ready);
    }

    #[test]
    fn spread_groups_by_controller_then_labels() {
        let owned = |uid: &str, app: &str| {
            json!({"metadata": {"namespace": "d", "labels": {"app": app},
            "ownerReferences": [{"uid": uid, "controller": true}]}})
        };
        assert_eq!(spread_key(&owned("u1", "a")), spread_key(&owned("u1", "b")));
        assert_ne!(spread_key(&owned("u1", "a")), spread_key(&owned("u2", "a")));
        let loose = |ns: &str| json!({"metadata": {"namespace": ns, "labels": {"app": "a"}}});
        assert_eq!(spread_key(&loose("d")), spread_key(&loose("d")));
        assert_ne!(spread_key(&loose("d")), spread_key(&loose("e")));
        assert_eq!(spread_key(&json!({"metadata": {}})), None);
    }

    #[test]
    fn only_unbound_live_default_scheduler_pods_are_scheduled() {
        assert!(wants_scheduling(&json!({"spec": {}})));
        assert!(!wants_scheduling(&json!({"spec": {"nodeName": "n"}})));
        assert!(!wants_scheduling(
            &json!({"spec": {"schedulerName": "other"}})
        ));
        assert!(!wants_scheduling(
            &json!({"metadata": {"deletionTimestamp": "x"}, "spec": {}})
        ));
    }
}
