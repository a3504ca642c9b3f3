//! The pure half of the EndpointSlice controller: from a Service's endpoints and its existing
//! managed slices, the slices to create, update and delete, with as few writes as Kubernetes'
//! reconciler makes (`pkg/controller/endpointslice/reconciler.go`, reduced): every slice change
//! is sent to every node, so churn costs bandwidth on every edge link.
//!
//! Rules:
//! - Endpoints are grouped by resolved port set; each group is one set of slices of at most
//!   [`MAX_ENDPOINTS_PER_SLICE`] endpoints. Slices whose port set no endpoint has any more are
//!   deleted, as are slices of another address family (the cluster is IPv4 only).
//! - An existing slice keeps the endpoints that are still wanted, in place; a slice whose
//!   content is unchanged (compared as decoded objects, so formatting never counts) is not
//!   written at all.
//! - New endpoints go first into slices that are being written anyway (the fullest first, so
//!   the set stays compact), then into new full slices, and a last partial batch into an
//!   unchanged slice with room for all of it before a new slice is made.
//! - A slice left without endpoints is deleted; a Service with no endpoints at all keeps one
//!   empty placeholder slice, as in Kubernetes (an existing slice is reused for it).

use super::{
    PodEndpoint, ResolvedPort, ServiceView, MAX_ENDPOINTS_PER_SLICE, SERVICE_NAME_LABEL,
    SLICE_CONTROLLER, SLICE_MANAGED_BY,
};
use crate::api::endpoints::HEADLESS_LABEL;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap, VecDeque};

/// The address type of every slice the controller writes.
pub const ADDRESS_TYPE: &str = "IPv4";

/// What to write for one Service.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// New slices (named by `generateName`).
    pub create: Vec<EndpointSlice>,
    /// Existing slices with new content (their `resourceVersion` kept, so a concurrent change
    /// is a conflict).
    pub update: Vec<EndpointSlice>,
    /// Existing slices to delete.
    pub delete: Vec<EndpointSlice>,
}

impl Plan {
    /// Whether nothing is written.
    pub fn is_empty(&self) -> bool {
        self.create.is_empty() && self.update.is_empty() && self.delete.is_empty()
    }
}

/// A port set as a sortable key: the order of a slice's ports does not matter.
type PortKey = Vec<(String, Option<i32>, String, Option<String>)>;

fn port_key(ports: &[EndpointPort]) -> PortKey {
    let mut k: PortKey = ports
        .iter()
        .map(|p| {
            (
                p.name.clone().unwrap_or_default(),
                p.port,
                p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                p.app_protocol.clone(),
            )
        })
        .collect();
    k.sort();
    k
}

fn to_ports(ports: &[ResolvedPort]) -> Vec<EndpointPort> {
    ports
        .iter()
        .map(|p| EndpointPort {
            name: Some(p.name.clone()),
            port: Some(p.port),
            protocol: Some(p.protocol.clone()),
            app_protocol: p.app_protocol.clone(),
        })
        .collect()
}

/// `pe` as a slice endpoint.
pub fn to_endpoint(pe: &PodEndpoint) -> Endpoint {
    Endpoint {
        addresses: vec![pe.ip.clone()],
        conditions: Some(EndpointConditions {
            ready: Some(pe.ready),
            serving: Some(pe.serving),
            terminating: Some(pe.terminating),
        }),
        hostname: pe.hostname.clone(),
        node_name: pe.node.clone(),
        target_ref: Some(ObjectReference {
            kind: Some("Pod".into()),
            name: Some(pe.pod.clone()),
            namespace: Some(pe.namespace.clone()),
            uid: Some(pe.uid.clone()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Which pod an endpoint is: its target's uid, else its first address.
fn endpoint_key(e: &Endpoint) -> String {
    e.target_ref
        .as_ref()
        .and_then(|t| t.uid.clone())
        .filter(|u| !u.is_empty())
        .or_else(|| e.addresses.first().cloned())
        .unwrap_or_default()
}

/// The labels of a Service's slices: the Service's own (but the two the controller owns), the
/// Service's name, the manager, and `service.kubernetes.io/headless` for a headless Service.
pub fn slice_labels(svc: &ServiceView) -> BTreeMap<String, String> {
    let mut labels = svc.labels();
    labels.remove(SLICE_MANAGED_BY);
    labels.insert(SERVICE_NAME_LABEL.into(), svc.name().into());
    labels.insert(SLICE_MANAGED_BY.into(), SLICE_CONTROLLER.into());
    if svc.headless() {
        labels.insert(HEADLESS_LABEL.into(), String::new());
    } else {
        labels.remove(HEADLESS_LABEL);
    }
    labels
}

/// The owner reference that makes the Service its slices' controller (the garbage collector
/// deletes them with it).
pub fn owner_ref(svc: &ServiceView) -> OwnerReference {
    OwnerReference {
        api_version: "v1".into(),
        kind: "Service".into(),
        name: svc.name().into(),
        uid: svc.uid().into(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Whether `s` is one of the controller's slices for the Service named `service`.
pub fn is_managed_slice_of(s: &EndpointSlice, service: &str) -> bool {
    let labels = s.metadata.labels.as_ref();
    labels
        .and_then(|l| l.get(SLICE_MANAGED_BY))
        .map(String::as_str)
        == Some(SLICE_CONTROLLER)
        && labels
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
            .map(String::as_str)
            == Some(service)
}

struct Ours<'a> {
    svc: &'a ServiceView,
    labels: BTreeMap<String, String>,
    owner: OwnerReference,
}

impl Ours<'_> {
    fn metadata_ok(&self, s: &EndpointSlice) -> bool {
        s.metadata.labels.as_ref() == Some(&self.labels)
            && s.metadata.owner_references.as_deref() == Some(std::slice::from_ref(&self.owner))
    }

    fn own(&self, s: &mut EndpointSlice) {
        s.metadata.labels = Some(self.labels.clone());
        s.metadata.owner_references = Some(vec![self.owner.clone()]);
    }

    fn new_slice(&self, ports: Vec<EndpointPort>, endpoints: Vec<Endpoint>) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                generate_name: Some(format!("{}-", self.svc.name())),
                namespace: Some(self.svc.namespace().into()),
                labels: Some(self.labels.clone()),
                owner_references: Some(vec![self.owner.clone()]),
                ..Default::default()
            },
            address_type: ADDRESS_TYPE.into(),
            ports: Some(ports),
            endpoints,
        }
    }
}

/// The writes that bring `existing` (the Service's managed slices) to `desired`.
pub fn plan(svc: &ServiceView, desired: &[PodEndpoint], existing: Vec<EndpointSlice>) -> Plan {
    let ours = Ours {
        svc,
        labels: slice_labels(svc),
        owner: owner_ref(svc),
    };
    let mut out = Plan::default();
    let mut groups: BTreeMap<PortKey, (Vec<EndpointPort>, Vec<Endpoint>)> = BTreeMap::new();
    for pe in desired {
        let ports = to_ports(&pe.ports);
        groups
            .entry(port_key(&ports))
            .or_insert_with(|| (ports, Vec::new()))
            .1
            .push(to_endpoint(pe));
    }
    let mut by_group: BTreeMap<PortKey, Vec<EndpointSlice>> = BTreeMap::new();
    for s in existing {
        if s.address_type != ADDRESS_TYPE {
            out.delete.push(s);
        } else {
            let key = port_key(s.ports.as_deref().unwrap_or_default());
            by_group.entry(key).or_default().push(s);
        }
    }
    if groups.is_empty() {
        placeholder(&ours, by_group.into_values().flatten().collect(), &mut out);
        return out;
    }
    let mut remaining: BTreeMap<PortKey, Vec<EndpointSlice>> = BTreeMap::new();
    for (key, slices) in by_group {
        if groups.contains_key(&key) {
            remaining.insert(key, slices);
        } else {
            out.delete.extend(slices);
        }
    }
    for (key, (ports, endpoints)) in groups {
        let slices = remaining.remove(&key).unwrap_or_default();
        plan_group(&ours, ports, endpoints, slices, &mut out);
    }
    out
}

struct Work {
    slice: EndpointSlice,
    endpoints: Vec<Endpoint>,
    changed: bool,
}

fn plan_group(
    ours: &Ours<'_>,
    ports: Vec<EndpointPort>,
    wanted: Vec<Endpoint>,
    existing: Vec<EndpointSlice>,
    out: &mut Plan,
) {
    let order: Vec<String> = wanted.iter().map(endpoint_key).collect();
    let mut want: HashMap<String, Endpoint> = order.iter().cloned().zip(wanted).collect();
    let mut work: Vec<Work> = existing
        .into_iter()
        .map(|mut slice| {
            let mut changed = !ours.metadata_ok(&slice);
            let mut kept = Vec::new();
            for e in std::mem::take(&mut slice.endpoints) {
                match want.remove(&endpoint_key(&e)) {
                    Some(d) => {
                        changed |= d != e;
                        kept.push(d);
                    }
                    None => changed = true,
                }
            }
            Work {
                slice,
                endpoints: kept,
                changed,
            }
        })
        .collect();
    let mut rest: VecDeque<Endpoint> = order.iter().filter_map(|k| want.remove(k)).collect();
    // Slices written anyway take new endpoints first, the fullest first.
    let mut changed: Vec<usize> = (0..work.len()).filter(|&i| work[i].changed).collect();
    changed.sort_by_key(|&i| Reverse(work[i].endpoints.len()));
    for i in changed {
        while work[i].endpoints.len() < MAX_ENDPOINTS_PER_SLICE {
            let Some(e) = rest.pop_front() else { break };
            work[i].endpoints.push(e);
        }
    }
    while rest.len() >= MAX_ENDPOINTS_PER_SLICE {
        let batch: Vec<Endpoint> = rest.drain(..MAX_ENDPOINTS_PER_SLICE).collect();
        out.create.push(ours.new_slice(ports.clone(), batch));
    }
    if !rest.is_empty() {
        let room = (0..work.len())
            .filter(|&i| {
                !work[i].changed
                    && MAX_ENDPOINTS_PER_SLICE.saturating_sub(work[i].endpoints.len()) >= rest.len()
            })
            .max_by_key(|&i| work[i].endpoints.len());
        match room {
            Some(i) => {
                work[i].endpoints.extend(rest.drain(..));
                work[i].changed = true;
            }
            None => out
                .create
                .push(ours.new_slice(ports.clone(), rest.drain(..).collect())),
        }
    }
    for mut w in work {
        if w.endpoints.is_empty() {
            w.slice.endpoints = Vec::new();
            out.delete.push(w.slice);
        } else if w.changed {
            ours.own(&mut w.slice);
            w.slice.endpoints = w.endpoints;
            out.update.push(w.slice);
        }
    }
}

/// A Service without endpoints keeps exactly one empty slice.
fn placeholder(ours: &Ours<'_>, mut existing: Vec<EndpointSlice>, out: &mut Plan) {
    let empty = |s: &EndpointSlice| {
        s.endpoints.is_empty() && s.ports.as_deref().unwrap_or_default().is_empty()
    };
    let pick = existing
        .iter()
        .position(|s| empty(s) && ours.metadata_ok(s))
        .or_else(|| existing.iter().position(empty))
        .or(if existing.is_empty() { None } else { Some(0) });
    match pick.map(|i| existing.remove(i)) {
        Some(mut s) => {
            if !(empty(&s) && ours.metadata_ok(&s)) {
                ours.own(&mut s);
                s.endpoints = Vec::new();
                s.ports = Some(Vec::new());
                out.update.push(s);
            }
        }
        None => out.create.push(ours.new_slice(Vec::new(), Vec::new())),
    }
    out.delete.extend(existing);
}
