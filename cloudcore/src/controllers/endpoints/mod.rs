//! The endpoints of Services: which pods back a Service and how each is reached, computed once
//! here and written by two controllers, as Kubernetes' `endpointslice` and `endpoint`
//! controllers write them:
//!
//! - [`slice_controller`]: EndpointSlices (`discovery.k8s.io/v1`), at most
//!   [`MAX_ENDPOINTS_PER_SLICE`] endpoints each, one set per resolved port set, planned by
//!   [`slice_plan`] so that an unchanged slice is never rewritten;
//! - [`endpoints_controller`]: the v1 Endpoints object named after the Service.
//!
//! What both share ([`pod_endpoint`]): a pod backs a Service when the Service has a selector
//! and is not `ExternalName`, the pod is in the Service's namespace, matches the selector, is
//! not terminal (`Succeeded`/`Failed`) and has an IPv4 pod IP (this cluster is single-stack
//! IPv4) that an endpoint may carry (not loopback, link-local or unspecified: the API refuses
//! those, see [`crate::api::endpoints::special_ip_problems`]). Its conditions are Kubernetes':
//! `serving` = the pod's Ready condition, `terminating` = a deletion timestamp, `ready` =
//! serving and not terminating, or always with `publishNotReadyAddresses`. Each Service port's
//! `targetPort` is resolved per pod ([`find_port`]): a number as it is, a name by the pod's
//! container ports of that name and protocol; a pod that does not declare the name is left out
//! of that port (its endpoint carries the ports it does resolve, as Kubernetes groups
//! endpoints by resolved port set).
//!
//! Both controllers are level-triggered reconciles per Service on the shared
//! [`super::runner`]: woken by the Service, by any pod its selector matches (before or after
//! the change; [`ServiceIndex`]) when something an endpoint is made of changed
//! ([`endpoint_inputs_changed`]), and by their own objects, which they put back if someone
//! else changed them.

pub mod endpoints_controller;
pub mod slice_controller;
pub mod slice_plan;

#[cfg(test)]
mod tests;

use super::owned::meta_of;
use crate::api::selector::LabelSelector;
use crate::store::Event;
use k8s_openapi::api::core::v1::{Pod, Service, ServicePort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector as MetaSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::RwLock;

/// Storage resource of Services.
pub const SERVICES: &str = "services";
/// Storage resource of Endpoints.
pub const ENDPOINTS: &str = "endpoints";
/// Storage resource of EndpointSlices.
pub const ENDPOINT_SLICES: &str = "discovery.k8s.io/endpointslices";
/// The label naming a slice's Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The label naming who manages a slice.
pub const SLICE_MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
/// The value of [`SLICE_MANAGED_BY`] on the slices this controller writes (Kubernetes').
pub const SLICE_CONTROLLER: &str = "endpointslice-controller.k8s.io";
/// The value of [`crate::api::endpoints::ENDPOINTS_MANAGED_BY`] on the Endpoints the
/// Endpoints controller writes (Kubernetes').
pub const ENDPOINTS_CONTROLLER: &str = "endpoint-controller";
/// The most endpoints the controller puts into one slice (kube-controller-manager's default
/// `--max-endpoints-per-slice`).
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;

/// One port of an endpoint, its `targetPort` resolved for one pod.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResolvedPort {
    /// The Service port's name.
    pub name: String,
    /// The port on the pod.
    pub port: i32,
    /// The Service port's protocol.
    pub protocol: String,
    /// The Service port's `appProtocol`.
    pub app_protocol: Option<String>,
}

/// One pod as an endpoint of one Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodEndpoint {
    /// The pod's IPv4 address.
    pub ip: String,
    /// Pod name.
    pub pod: String,
    /// Pod namespace.
    pub namespace: String,
    /// Pod uid.
    pub uid: String,
    /// The node it runs on.
    pub node: Option<String>,
    /// `spec.hostname`, when the pod's `spec.subdomain` is the Service's name.
    pub hostname: Option<String>,
    /// Routable: serving and not terminating, or any pod with `publishNotReadyAddresses`.
    pub ready: bool,
    /// The pod's Ready condition, also while it terminates.
    pub serving: bool,
    /// The pod has a deletion timestamp.
    pub terminating: bool,
    /// The Service ports this pod resolves, in the Service's order.
    pub ports: Vec<ResolvedPort>,
}

/// What the controllers read of a Service they keep endpoints for.
#[derive(Debug, Clone)]
pub struct ServiceView {
    /// The decoded Service.
    pub svc: Service,
    /// Its selector (never empty).
    pub selector: BTreeMap<String, String>,
}

impl ServiceView {
    /// The Service if its endpoints are computed from pods: it has a non-empty selector and
    /// is not `ExternalName` (Kubernetes' controllers skip both).
    pub fn managed(svc: Service) -> Option<Self> {
        let spec = svc.spec.as_ref()?;
        if spec.type_.as_deref() == Some("ExternalName") {
            return None;
        }
        let selector = spec.selector.clone().filter(|s| !s.is_empty())?;
        Some(Self { svc, selector })
    }

    /// Name.
    pub fn name(&self) -> &str {
        self.svc.metadata.name.as_deref().unwrap_or("")
    }

    /// Namespace.
    pub fn namespace(&self) -> &str {
        self.svc.metadata.namespace.as_deref().unwrap_or("")
    }

    /// Uid.
    pub fn uid(&self) -> &str {
        self.svc.metadata.uid.as_deref().unwrap_or("")
    }

    /// The Service's ports.
    pub fn ports(&self) -> &[ServicePort] {
        self.svc
            .spec
            .as_ref()
            .and_then(|s| s.ports.as_deref())
            .unwrap_or_default()
    }

    /// `clusterIP: None`.
    pub fn headless(&self) -> bool {
        self.svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None")
    }

    /// `publishNotReadyAddresses`.
    pub fn publish_not_ready(&self) -> bool {
        self.svc
            .spec
            .as_ref()
            .and_then(|s| s.publish_not_ready_addresses)
            .unwrap_or(false)
    }

    /// The Service's labels.
    pub fn labels(&self) -> BTreeMap<String, String> {
        self.svc.metadata.labels.clone().unwrap_or_default()
    }

    /// Whether the selector matches `pod` (same namespace, every selector pair in its labels).
    pub fn selects(&self, pod: &Pod) -> bool {
        let labels = pod.metadata.labels.as_ref();
        pod.metadata.namespace.as_deref() == Some(self.namespace())
            && self
                .selector
                .iter()
                .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
    }
}

/// The pod's IPv4 address, if it has one an endpoint may carry.
fn pod_ipv4(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    let listed = status.pod_ips.iter().flatten().map(|p| p.ip.as_str());
    let ip = status
        .pod_ip
        .as_deref()
        .into_iter()
        .chain(listed)
        .find(|ip| ip.parse::<Ipv4Addr>().is_ok())?;
    if !crate::api::endpoints::special_ip_problems(ip).is_empty() {
        tracing::debug!(pod = ?pod.metadata.name, ip, "pod IP is loopback, link-local or unspecified; it cannot be an endpoint");
        return None;
    }
    Some(ip.to_string())
}

/// Kubernetes' `FindPort`: the pod port a Service port's `targetPort` names for this pod. A
/// number is used as it is; a name is looked up among the ports of the pod's containers (and
/// of its restartable init containers, the sidecars) with the Service port's protocol.
pub fn find_port(pod: &Pod, port: &ServicePort) -> Option<i32> {
    let protocol = port.protocol.as_deref().unwrap_or("TCP");
    match &port.target_port {
        Some(IntOrString::Int(n)) => Some(*n),
        None => Some(port.port),
        Some(IntOrString::String(name)) => {
            let spec = pod.spec.as_ref()?;
            let sidecars = spec
                .init_containers
                .iter()
                .flatten()
                .filter(|c| c.restart_policy.as_deref() == Some("Always"));
            spec.containers
                .iter()
                .chain(sidecars)
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| {
                    p.name.as_deref() == Some(name.as_str())
                        && p.protocol.as_deref().unwrap_or("TCP") == protocol
                })
                .map(|p| p.container_port)
        }
    }
}

/// `pod` as an endpoint of `svc`, or `None` when it does not back the Service (see the module
/// doc). Terminating pods are included, marked `terminating` (the Endpoints controller leaves
/// them out itself, as Kubernetes does).
pub fn pod_endpoint(svc: &ServiceView, pod: &Pod) -> Option<PodEndpoint> {
    if !svc.selects(pod) {
        return None;
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return None;
    }
    let ip = pod_ipv4(pod)?;
    let serving = super::owned::is_ready(pod);
    let terminating = pod.metadata.deletion_timestamp.is_some();
    let spec = pod.spec.as_ref();
    let hostname = spec
        .filter(|s| s.subdomain.as_deref() == Some(svc.name()))
        .and_then(|s| s.hostname.clone())
        .filter(|h| !h.is_empty());
    let ports = svc
        .ports()
        .iter()
        .filter_map(|p| {
            Some(ResolvedPort {
                name: p.name.clone().unwrap_or_default(),
                port: find_port(pod, p)?,
                protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                app_protocol: p.app_protocol.clone(),
            })
        })
        .collect();
    Some(PodEndpoint {
        ip,
        pod: pod.metadata.name.clone().unwrap_or_default(),
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        uid: pod.metadata.uid.clone().unwrap_or_default(),
        node: spec
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty()),
        hostname,
        ready: svc.publish_not_ready() || (serving && !terminating),
        serving,
        terminating,
        ports,
    })
}

/// The endpoints of `svc` among `pods` (any pods of its namespace), in pod name order. A pod
/// that does not decode is skipped with a log line: one bad object must not take the
/// Service's other endpoints away.
pub fn endpoints_of(svc: &ServiceView, pods: &[std::sync::Arc<Value>]) -> Vec<PodEndpoint> {
    let mut out: Vec<PodEndpoint> = pods
        .iter()
        .filter_map(|v| match serde_json::from_value::<Pod>(Value::clone(v)) {
            Ok(p) => pod_endpoint(svc, &p),
            Err(e) => {
                tracing::warn!(pod = ?v.pointer("/metadata/name"), error = %e, "a stored pod does not decode; it is left out of its Services' endpoints");
                None
            }
        })
        .collect();
    out.sort_by(|a, b| a.pod.cmp(&b.pod));
    out
}

/// What of a pod its endpoints are made of: a pod event that changes none of it (most status
/// reports: restart counts, container states) wakes no Service.
fn endpoint_inputs(pod: &Value) -> [Option<&Value>; 9] {
    [
        pod.pointer("/metadata/labels"),
        pod.pointer("/metadata/deletionTimestamp"),
        pod.pointer("/spec/nodeName"),
        pod.pointer("/spec/hostname"),
        pod.pointer("/spec/subdomain"),
        pod.pointer("/status/podIP"),
        pod.pointer("/status/podIPs"),
        pod.pointer("/status/phase"),
        ready_condition(pod),
    ]
}

fn ready_condition(pod: &Value) -> Option<&Value> {
    pod.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))?
        .get("status")
}

/// Whether a pod event changes anything an endpoint is made of (always for a creation or a
/// deletion; container ports are in the immutable spec, so a change of them is a new pod).
pub fn endpoint_inputs_changed(event: &Event) -> bool {
    match (&event.value, &event.previous) {
        (Some(new), Some(old)) => endpoint_inputs(new) != endpoint_inputs(old),
        _ => true,
    }
}

/// The selectors of the Services that get endpoints, by namespace, so that a pod event finds
/// the Services it concerns without reading the store. Follows Service events; replaced from a
/// full list at each resync.
#[derive(Debug, Default)]
pub struct ServiceIndex {
    by_namespace: RwLock<HashMap<String, BTreeMap<String, LabelSelector>>>,
}

fn service_selector(svc: &Value) -> Option<LabelSelector> {
    if svc.pointer("/spec/type").and_then(Value::as_str) == Some("ExternalName") {
        return None;
    }
    let labels: BTreeMap<String, String> =
        serde_json::from_value(svc.pointer("/spec/selector")?.clone()).ok()?;
    if labels.is_empty() {
        return None;
    }
    LabelSelector::from_meta(&MetaSelector {
        match_labels: Some(labels),
        match_expressions: None,
    })
    .ok()
}

impl ServiceIndex {
    /// Follows a Service event.
    pub fn observe(&self, event: &Event) {
        let mut map = self.by_namespace.write().unwrap_or_else(|e| e.into_inner());
        let ns = map.entry(event.key.namespace.clone()).or_default();
        match event.value.as_ref().and_then(service_selector) {
            Some(sel) => {
                ns.insert(event.key.name.clone(), sel);
            }
            None => {
                ns.remove(&event.key.name);
            }
        }
    }

    /// Replaces the index with the selectors of `services`.
    pub fn replace_all(&self, services: &[Value]) {
        let mut fresh: HashMap<String, BTreeMap<String, LabelSelector>> = HashMap::new();
        for s in services {
            if let Some(sel) = service_selector(s) {
                let meta = meta_of(s);
                fresh
                    .entry(meta.namespace.unwrap_or_default())
                    .or_default()
                    .insert(meta.name.unwrap_or_default(), sel);
            }
        }
        *self.by_namespace.write().unwrap_or_else(|e| e.into_inner()) = fresh;
    }

    /// The Services of `namespace` whose selector matches `pod`'s labels.
    pub fn matching(&self, namespace: &str, pod: &Value) -> Vec<String> {
        let map = self.by_namespace.read().unwrap_or_else(|e| e.into_inner());
        map.get(namespace)
            .map(|svcs| {
                svcs.iter()
                    .filter(|(_, sel)| sel.matches(pod))
                    .map(|(name, _)| name.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The Service keys a pod event concerns: those selecting the pod before or after, when
    /// the event changes what its endpoints are made of.
    pub fn keys_for_pod_event(&self, event: &Event) -> Vec<crate::store::ObjectKey> {
        if !endpoint_inputs_changed(event) {
            return Vec::new();
        }
        let ns = &event.key.namespace;
        let mut names: Vec<String> = [&event.value, &event.previous]
            .into_iter()
            .flatten()
            .flat_map(|p| self.matching(ns, p))
            .collect();
        names.sort();
        names.dedup();
        names
            .into_iter()
            .map(|n| crate::store::ObjectKey::new(SERVICES, ns.as_str(), &n))
            .collect()
    }
}
