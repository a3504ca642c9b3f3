//! Decoding Pod and Node objects with serde into structs of just the fields the scheduler
//! reads (see the parent module's docs for why not whole k8s-openapi objects), and turning
//! them into the scheduler's [`PodInfo`] and [`NodeInfo`].

use super::*;
use k8s_openapi::api::core::v1::{Affinity, Toleration as PodToleration, TopologySpreadConstraint};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde::de::IgnoredAny;
use serde::{Deserialize, Deserializer};

/// `null` decodes as the default, as an absent field does (Kubernetes' JSON treats them alike).
fn nullable<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// The metadata the scheduler reads of a pod or node.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct MetaFields {
    /// `metadata.name`.
    #[serde(deserialize_with = "nullable")]
    pub name: String,
    /// `metadata.namespace`.
    #[serde(deserialize_with = "nullable")]
    pub namespace: String,
    /// `metadata.uid`.
    #[serde(deserialize_with = "nullable")]
    pub uid: String,
    /// `metadata.labels`.
    #[serde(deserialize_with = "nullable")]
    pub labels: BTreeMap<String, String>,
    /// Whether `metadata.deletionTimestamp` is set (its value is not read).
    deletion_timestamp: Option<IgnoredAny>,
    #[serde(deserialize_with = "nullable")]
    owner_references: Vec<OwnerFields>,
}

/// An owner reference: only which one is the controller, and its uid.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct OwnerFields {
    #[serde(deserialize_with = "nullable")]
    uid: String,
    controller: Option<bool>,
}

/// A container's resource requests.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ContainerFields {
    resources: Option<ResourcesFields>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ResourcesFields {
    #[serde(deserialize_with = "nullable")]
    requests: BTreeMap<String, Quantity>,
}

/// The spec fields the scheduler reads of a pod.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct PodSpecFields {
    #[serde(deserialize_with = "nullable")]
    node_name: String,
    #[serde(deserialize_with = "nullable")]
    scheduler_name: String,
    /// Wider than Kubernetes' int32 so that an out-of-range value clamps rather than fails.
    priority: Option<i64>,
    #[serde(deserialize_with = "nullable")]
    priority_class_name: String,
    #[serde(deserialize_with = "nullable")]
    preemption_policy: String,
    #[serde(deserialize_with = "nullable")]
    node_selector: BTreeMap<String, String>,
    affinity: Option<Affinity>,
    #[serde(deserialize_with = "nullable")]
    tolerations: Vec<PodToleration>,
    #[serde(deserialize_with = "nullable")]
    containers: Vec<ContainerFields>,
    #[serde(deserialize_with = "nullable")]
    init_containers: Vec<ContainerFields>,
    #[serde(deserialize_with = "nullable")]
    overhead: BTreeMap<String, Quantity>,
    #[serde(deserialize_with = "nullable")]
    topology_spread_constraints: Vec<TopologySpreadConstraint>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct PodStatusFields {
    #[serde(deserialize_with = "nullable")]
    phase: String,
    #[serde(deserialize_with = "nullable")]
    nominated_node_name: String,
}

/// What the scheduler reads of a Pod object, decoded once (see the module docs).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct PodFields {
    /// Identity and labels.
    #[serde(deserialize_with = "nullable")]
    pub metadata: MetaFields,
    #[serde(deserialize_with = "nullable")]
    spec: PodSpecFields,
    #[serde(deserialize_with = "nullable")]
    status: PodStatusFields,
    /// Set when the object did not decode: such a pod is not scheduled and fits no node.
    #[serde(skip)]
    malformed: bool,
}

/// The few fields that decide whether a pod is this scheduler's to place, borrowed from the
/// stored object (for callers that only ask that).
#[derive(Default, Deserialize)]
#[serde(default)]
struct Placement<'a> {
    metadata: Option<PlacementMeta>,
    #[serde(borrow)]
    spec: Option<PlacementSpec<'a>>,
}

#[derive(Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct PlacementMeta {
    deletion_timestamp: Option<IgnoredAny>,
}

#[derive(Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct PlacementSpec<'a> {
    #[serde(borrow)]
    node_name: Option<&'a str>,
    #[serde(borrow)]
    scheduler_name: Option<&'a str>,
}

impl<'a> Placement<'a> {
    fn of(pod: &'a Value) -> Option<Self> {
        Self::deserialize(pod).ok()
    }

    fn node(&self) -> Option<&'a str> {
        self.spec
            .as_ref()
            .and_then(|s| s.node_name)
            .filter(|s| !s.is_empty())
    }

    fn wanted(&self) -> bool {
        let scheduler = self.spec.as_ref().and_then(|s| s.scheduler_name);
        self.node().is_none()
            && self
                .metadata
                .as_ref()
                .is_none_or(|m| m.deletion_timestamp.is_none())
            && matches!(scheduler.unwrap_or(""), "" | "default-scheduler")
    }
}

impl PodFields {
    /// Decodes a Pod object; one that does not decode is logged and comes back marked
    /// malformed (not scheduled, fits no node, holds nothing).
    pub fn of(pod: &Value) -> Self {
        match Self::deserialize(pod) {
            Ok(p) => p,
            Err(e) => {
                let meta = pod.get("metadata").unwrap_or(&Value::Null);
                tracing::warn!(pod = %meta, error = %e, "pod does not decode; it is not scheduled");
                Self {
                    malformed: true,
                    ..Self::default()
                }
            }
        }
    }

    /// The pod's priority: `spec.priority` if set; otherwise the value of its
    /// `priorityClassName` when that is one of the two built-in classes; otherwise 0. Skerry
    /// has no PriorityClass objects, so any other class name counts as 0 (Kubernetes'
    /// admission would reject it).
    pub fn priority(&self) -> i32 {
        if let Some(p) = self.spec.priority {
            return p.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32;
        }
        match self.spec.priority_class_name.as_str() {
            "system-node-critical" => SYSTEM_NODE_CRITICAL,
            "system-cluster-critical" => SYSTEM_CLUSTER_CRITICAL,
            _ => 0,
        }
    }

    /// The pod's identity, labels and inter-pod terms.
    pub fn meta(&self) -> PodMeta {
        let m = &self.metadata;
        PodMeta {
            inter_pod: self
                .spec
                .affinity
                .as_ref()
                .and_then(|a| InterPod::parse(a, &m.namespace)),
            name: m.name.clone(),
            uid: m.uid.clone(),
            labels: m.labels.clone(),
            namespace: m.namespace.clone(),
        }
    }

    /// `status.nominatedNodeName`, if set.
    pub fn nominated_node(&self) -> Option<&str> {
        Some(self.status.nominated_node_name.as_str()).filter(|s| !s.is_empty())
    }

    /// Whether the pod is being deleted (graceful deletion in progress).
    pub fn terminating(&self) -> bool {
        self.metadata.deletion_timestamp.is_some()
    }

    /// The group a pod is spread with: its controller's uid, or, for a pod without a
    /// controller, its namespace and labels (pods created alike by one client). Unlabelled
    /// pods without an owner are not spread.
    pub fn spread_key(&self) -> Option<u64> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        let m = &self.metadata;
        let controller = m
            .owner_references
            .iter()
            .find(|o| o.controller == Some(true));
        if let Some(o) = controller {
            ("owner", o.uid.as_str()).hash(&mut h);
            return Some(h.finish());
        }
        if m.labels.is_empty() {
            return None;
        }
        ("labels", m.namespace.as_str()).hash(&mut h);
        for (k, v) in &m.labels {
            (k, v.as_str()).hash(&mut h);
        }
        Some(h.finish())
    }

    /// Whether a pod has finished for good (its requests no longer hold resources).
    pub fn terminated(&self) -> bool {
        matches!(self.status.phase.as_str(), "Succeeded" | "Failed")
    }

    /// The node a pod is bound to, if any.
    pub fn bound_node(&self) -> Option<&str> {
        Some(self.spec.node_name.as_str()).filter(|s| !s.is_empty())
    }

    /// Whether this scheduler is the one to place the pod: unbound, not being deleted, asking
    /// for the default scheduler (a pod naming another scheduler is left to it), and decoded.
    pub fn wants_scheduling(&self) -> bool {
        !self.malformed
            && self.bound_node().is_none()
            && !self.terminating()
            && matches!(self.spec.scheduler_name.as_str(), "" | "default-scheduler")
    }

    /// The pod's resource requests.
    pub fn requests(&self) -> PodRequests {
        PodRequests::of(&self.spec)
    }

    /// The pod as the filters and scores see it.
    pub fn info(&self) -> PodInfo {
        let node_affinity = self
            .spec
            .affinity
            .as_ref()
            .and_then(|a| a.node_affinity.as_ref());
        let affinity = if self.malformed {
            // Required affinity without terms: no node matches.
            Some(Vec::new())
        } else {
            node_affinity
                .and_then(|n| {
                    n.required_during_scheduling_ignored_during_execution
                        .as_ref()
                })
                .map(|req| req.node_selector_terms.iter().map(Term::parse).collect())
        };
        let preferred_affinity = node_affinity
            .and_then(|n| {
                n.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .map(|ts| {
                ts.iter()
                    .map(|t| (i64::from(t.weight), Term::parse(&t.preference)))
                    .collect()
            })
            .unwrap_or_default();
        PodInfo {
            meta: Arc::new(self.meta()),
            node_selector: self
                .spec
                .node_selector
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            affinity,
            preferred_affinity,
            tolerations: tolerations(&self.spec.tolerations),
            requests: self.requests(),
            spread: self.spread_key(),
            spread_constraints: spread_constraints(&self.spec.topology_spread_constraints),
            priority: self.priority(),
            preempts: self.spec.preemption_policy != "Never",
            needs_current_edge: None,
        }
    }
}

impl PodRequests {
    /// Reads the requests of a pod's spec.
    fn of(spec: &PodSpecFields) -> Self {
        let containers = |cs: &[ContainerFields]| -> Vec<(Resources, bool, bool)> {
            cs.iter()
                .map(|c| match &c.resources {
                    Some(r) => resource_list(&r.requests),
                    None => (Resources::default(), false, false),
                })
                .collect()
        };
        let mut fit = Resources::default();
        let (mut score_cpu, mut score_mem) = (0u64, 0u64);
        for (r, has_cpu, has_mem) in containers(&spec.containers) {
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
        for (r, has_cpu, has_mem) in containers(&spec.init_containers) {
            fit.max_with(&r);
            if has_cpu {
                score_cpu = score_cpu.max(r.cpu_millis);
            }
            if has_mem {
                score_mem = score_mem.max(r.memory);
            }
        }
        let (overhead, _, _) = resource_list(&spec.overhead);
        fit.add(&overhead);
        Self {
            score_cpu_millis: score_cpu.saturating_add(overhead.cpu_millis),
            score_memory: score_mem.saturating_add(overhead.memory),
            fit,
        }
    }
}

/// A node taint as stored; one without a key or a known effect is ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct TaintFields {
    key: Option<String>,
    value: Option<String>,
    effect: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct NodeSpecFields {
    #[serde(deserialize_with = "nullable")]
    taints: Vec<TaintFields>,
    unschedulable: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ConditionFields {
    #[serde(rename = "type", deserialize_with = "nullable")]
    kind: String,
    #[serde(deserialize_with = "nullable")]
    status: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct NodeStatusFields {
    #[serde(deserialize_with = "nullable")]
    conditions: Vec<ConditionFields>,
    #[serde(deserialize_with = "nullable")]
    allocatable: BTreeMap<String, Quantity>,
}

/// What the scheduler reads of a Node object, decoded once (see the module docs).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct NodeFields {
    /// Name and labels.
    #[serde(deserialize_with = "nullable")]
    pub metadata: MetaFields,
    #[serde(deserialize_with = "nullable")]
    spec: NodeSpecFields,
    #[serde(deserialize_with = "nullable")]
    status: NodeStatusFields,
}

/// Just a name, for a node that does not decode otherwise.
#[derive(Default, Deserialize)]
#[serde(default)]
struct NameOnly {
    metadata: Option<NameOnlyMeta>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct NameOnlyMeta {
    name: Option<String>,
}

impl NodeFields {
    /// Whether the node's Ready condition is True.
    pub fn ready_condition(&self) -> bool {
        self.status
            .conditions
            .iter()
            .any(|c| c.kind == "Ready" && c.status == "True")
    }
}

impl NodeInfo {
    /// Parses a Node object. One that does not decode is logged and kept as a node that is not
    /// ready (never chosen) under its name.
    pub fn of(node: &Value) -> Self {
        match NodeFields::deserialize(node) {
            Ok(n) => Self::from_fields(n),
            Err(e) => {
                let name = NameOnly::deserialize(node)
                    .ok()
                    .and_then(|n| n.metadata?.name)
                    .unwrap_or_default();
                tracing::warn!(node = %name, error = %e, "node does not decode; no pod is placed on it");
                Self {
                    name,
                    labels: BTreeMap::new(),
                    taints: Vec::new(),
                    ready: false,
                    unschedulable: false,
                    allocatable: Resources::default(),
                    max_pods: 0,
                    older_edge: false,
                }
            }
        }
    }

    /// The scheduler's view of a decoded Node.
    pub fn from_fields(node: NodeFields) -> Self {
        let taints: Vec<Taint> = node
            .spec
            .taints
            .iter()
            .filter_map(|t| {
                Some(Taint {
                    key: t.key.clone()?,
                    value: t.value.clone().unwrap_or_default(),
                    effect: Effect::parse(t.effect.as_deref()?)?,
                })
            })
            .collect();
        let tainted_not_ready = taints.iter().any(|t| {
            NOT_READY_TAINTS.contains(&t.key.as_str()) && t.effect != Effect::PreferNoSchedule
        });
        let alloc = &node.status.allocatable;
        let (allocatable, _, _) = resource_list(alloc);
        let max_pods = alloc
            .get("pods")
            .and_then(|Quantity(q)| parse_memory_bytes(q).ok())
            .unwrap_or(0);
        let ready = node.ready_condition() && !tainted_not_ready;
        let older_edge = node
            .status
            .conditions
            .iter()
            .any(|c| c.kind == crate::ingest::EDGE_VERSION_SKEW && c.status == "True");
        Self {
            older_edge,
            unschedulable: node.spec.unschedulable == Some(true),
            name: node.metadata.name,
            labels: node.metadata.labels,
            ready,
            taints,
            allocatable,
            max_pods,
        }
    }
}

fn spread_constraints(cs: &[TopologySpreadConstraint]) -> Vec<SpreadConstraint> {
    cs.iter()
        .filter_map(|c| {
            Some(SpreadConstraint {
                max_skew: u32::try_from(c.max_skew).ok()?.max(1),
                topology_key: c.topology_key.clone(),
                hard: c.when_unsatisfiable != "ScheduleAnyway",
                selector: Selector::from_meta(c.label_selector.as_ref()),
                min_domains: c
                    .min_domains
                    .and_then(|n| u32::try_from(n).ok())
                    .unwrap_or(1),
            })
        })
        .collect()
}

pub(super) fn tolerations(ts: &[PodToleration]) -> Vec<Toleration> {
    ts.iter()
        .map(|t| {
            let s = |v: &Option<String>| v.clone().unwrap_or_default();
            Toleration {
                key: s(&t.key),
                exists: t.operator.as_deref() == Some("Exists"),
                value: s(&t.value),
                effect: t.effect.clone().filter(|e| !e.is_empty()),
            }
        })
        .collect()
}

impl PodInfo {
    /// Parses a Pod object (see [`PodFields::of`] for one that does not decode).
    pub fn of(pod: &Value) -> Self {
        let mut info = PodFields::of(pod).info();
        // The hub's own test, on the pod as the hub would send it.
        info.needs_current_edge = crate::projection::edge_pod(pod)
            .ok()
            .and_then(|p| protocol::compat::v7::v8_only(&p));
        info
    }
}

/// The node a stored pod is bound to, if any (read without decoding the rest of it).
pub fn bound_node(pod: &Value) -> Option<&str> {
    Placement::of(pod)?.node()
}

/// Whether this scheduler is the one to place a stored pod (see
/// [`PodFields::wants_scheduling`]); one whose placement fields do not decode is not placed.
pub fn wants_scheduling(pod: &Value) -> bool {
    Placement::of(pod).is_some_and(|p| p.wanted())
}
