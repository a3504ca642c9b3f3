//! The Endpoints controller: keeps the v1 Endpoints object of every Service with a selector
//! (Kubernetes' `endpoint-controller`, `pkg/controller/endpoint`).
//!
//! The Endpoints object has the Service's name, its labels plus
//! `endpoints.kubernetes.io/managed-by: endpoint-controller` (and
//! `service.kubernetes.io/headless` for a headless Service), and `subsets` built from the same
//! endpoints as the slices ([`super::pod_endpoint`]): ready pods under `addresses`, the others
//! under `notReadyAddresses`, terminating pods left out unless `publishNotReadyAddresses`,
//! addresses that resolve the same ports packed into one subset (`RepackSubsets`). Past
//! [`MAX_ENDPOINTS_ADDRESSES`] addresses it is truncated, not-ready ones first, each subset
//! keeping its share, and annotated `endpoints.kubernetes.io/over-capacity: truncated`.
//! `endpoints.kubernetes.io/last-change-trigger-time` is the latest change among its inputs.
//!
//! Writes happen only when the subsets, labels or capacity annotation differ from what is
//! stored. A Service without a selector is never touched: the user's Endpoints are what
//! routes. When a Service goes, the controller deletes the Endpoints only if it manages them
//! (Kubernetes deletes the same-named Endpoints whoever wrote them).

use super::{
    endpoints_of, PodEndpoint, ServiceIndex, ServiceView, ENDPOINTS, ENDPOINTS_CONTROLLER, SERVICES,
};
use crate::api::client::{Client, Propagation};
use crate::api::endpoints::{
    ENDPOINTS_MANAGED_BY, HEADLESS_LABEL, LAST_CHANGE_TRIGGER_TIME, MAX_ENDPOINTS_ADDRESSES,
    OVER_CAPACITY,
};
use crate::api::ApiError;
use crate::controllers::decode::typed;
use crate::controllers::informer::Informers;
use crate::controllers::runner::{Reconciler, Requeue};
use crate::controllers::ControllerError;
use crate::store::{Event, ObjectKey};
use async_trait::async_trait;
use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service,
};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// The value of [`OVER_CAPACITY`] on a truncated Endpoints object.
pub const TRUNCATED: &str = "truncated";

fn address(pe: &PodEndpoint) -> EndpointAddress {
    EndpointAddress {
        ip: pe.ip.clone(),
        hostname: pe.hostname.clone(),
        node_name: pe.node.clone(),
        target_ref: Some(ObjectReference {
            kind: Some("Pod".into()),
            name: Some(pe.pod.clone()),
            namespace: Some(pe.namespace.clone()),
            uid: Some(pe.uid.clone()),
            ..Default::default()
        }),
    }
}

fn address_order(a: &EndpointAddress) -> (String, String) {
    let uid = a.target_ref.as_ref().and_then(|t| t.uid.clone());
    (a.ip.clone(), uid.unwrap_or_default())
}

type PortId = (String, i32, String, Option<String>);
/// An address by (IP, pod uid), with whether it is ready.
type Addresses = BTreeMap<(String, String), (EndpointAddress, bool)>;
/// Which addresses, ready or not, a port is offered by: what ports are packed by.
type Signature = Vec<((String, String), bool)>;
/// One packed subset in the making: its signature, its ports, its addresses.
type Packed = (Signature, Vec<Option<PortId>>, Vec<(EndpointAddress, bool)>);

/// Kubernetes' subsets of `endpoints`: every (address, port) pair, then the ports whose
/// addresses (and their readiness) are the same packed into one subset, sorted. A headless
/// Service without ports gets one subset without ports.
pub fn subsets(svc: &ServiceView, endpoints: &[PodEndpoint]) -> Vec<EndpointSubset> {
    let publish = svc.publish_not_ready();
    let eligible = endpoints.iter().filter(|e| publish || !e.terminating);
    // Port → (address key → (address, ready)). `None` is the no-ports sentinel.
    let mut by_port: BTreeMap<Option<PortId>, Addresses> = BTreeMap::new();
    let headless_without_ports = svc.ports().is_empty() && svc.headless();
    for e in eligible {
        let a = address(e);
        let ready = publish || e.serving;
        if headless_without_ports {
            by_port
                .entry(None)
                .or_default()
                .insert(address_order(&a), (a.clone(), ready));
            continue;
        }
        for p in &e.ports {
            let id = (
                p.name.clone(),
                p.port,
                p.protocol.clone(),
                p.app_protocol.clone(),
            );
            by_port
                .entry(Some(id))
                .or_default()
                .insert(address_order(&a), (a.clone(), ready));
        }
    }
    // Address sets → the ports that offer exactly that set.
    let mut packed: Vec<Packed> = Vec::new();
    for (port, addrs) in by_port {
        let signature: Signature = addrs.iter().map(|(k, (_, r))| (k.clone(), *r)).collect();
        match packed.iter_mut().find(|(sig, _, _)| *sig == signature) {
            Some((_, ports, _)) => ports.push(port),
            None => packed.push((signature, vec![port], addrs.into_values().collect())),
        }
    }
    let mut out: Vec<EndpointSubset> = packed
        .into_iter()
        .map(|(_, ports, addrs)| {
            let ports: Vec<EndpointPort> = ports
                .into_iter()
                .flatten()
                .map(|(name, port, protocol, app_protocol)| EndpointPort {
                    name: Some(name).filter(|n| !n.is_empty()),
                    port,
                    protocol: Some(protocol),
                    app_protocol,
                })
                .collect();
            let (ready, not_ready): (Vec<_>, Vec<_>) = addrs.into_iter().partition(|(_, r)| *r);
            let list = |v: Vec<(EndpointAddress, bool)>| {
                Some(v.into_iter().map(|(a, _)| a).collect::<Vec<_>>()).filter(|v| !v.is_empty())
            };
            EndpointSubset {
                addresses: list(ready),
                not_ready_addresses: list(not_ready),
                ports: Some(ports).filter(|p| !p.is_empty()),
            }
        })
        .collect();
    out.sort_by_key(|s| {
        let first = s
            .addresses
            .iter()
            .chain(s.not_ready_addresses.iter())
            .flatten()
            .next()
            .map(address_order);
        let ports: Vec<(Option<String>, i32)> = s
            .ports
            .iter()
            .flatten()
            .map(|p| (p.name.clone(), p.port))
            .collect();
        (ports, first)
    });
    out
}

/// Kubernetes' `truncateEndpoints`: brings `subsets` to at most [`MAX_ENDPOINTS_ADDRESSES`]
/// addresses, dropping not-ready addresses first (and all of them if the ready ones alone are
/// too many), each subset keeping its share rounded up. Returns whether it truncated.
pub fn truncate(subsets: &mut [EndpointSubset]) -> bool {
    let len = |v: &Option<Vec<EndpointAddress>>| v.as_ref().map_or(0, Vec::len);
    let ready: usize = subsets.iter().map(|s| len(&s.addresses)).sum();
    let not_ready: usize = subsets.iter().map(|s| len(&s.not_ready_addresses)).sum();
    if ready + not_ready <= MAX_ENDPOINTS_ADDRESSES {
        return false;
    }
    let truncate_ready = ready > MAX_ENDPOINTS_ADDRESSES;
    let (max, total) = if truncate_ready {
        (MAX_ENDPOINTS_ADDRESSES, ready)
    } else {
        (MAX_ENDPOINTS_ADDRESSES - ready, not_ready)
    };
    let mut room = max;
    for s in subsets.iter_mut() {
        let list = if truncate_ready {
            s.not_ready_addresses = None;
            &mut s.addresses
        } else {
            &mut s.not_ready_addresses
        };
        let n = len(list);
        let share = (n * max).div_ceil(total.max(1)).min(room);
        if let Some(v) = list.as_mut() {
            v.truncate(share);
        }
        if list.as_ref().is_some_and(Vec::is_empty) {
            *list = None;
        }
        room -= share.min(n);
    }
    true
}

/// The latest change among what the Endpoints are computed from: the Service's creation, and
/// each selected pod's creation, Ready transition and deletion.
fn trigger_time(svc: &Service, pods: &[Pod]) -> Option<String> {
    let mut times: Vec<i64> = Vec::new();
    let mut push = |t: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>| {
        if let Some(t) = t {
            times.push(t.0.as_second());
        }
    };
    push(svc.metadata.creation_timestamp.as_ref());
    for p in pods {
        push(p.metadata.creation_timestamp.as_ref());
        push(p.metadata.deletion_timestamp.as_ref());
        let ready = p
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
        push(ready.and_then(|c| c.last_transition_time.as_ref()));
    }
    let latest = times.into_iter().max()?;
    Some(protocol::timestamp::format(latest))
}

/// The labels of a Service's Endpoints object.
fn endpoints_labels(svc: &ServiceView) -> BTreeMap<String, String> {
    let mut labels = svc.labels();
    labels.insert(ENDPOINTS_MANAGED_BY.into(), ENDPOINTS_CONTROLLER.into());
    if svc.headless() {
        labels.insert(HEADLESS_LABEL.into(), String::new());
    } else {
        labels.remove(HEADLESS_LABEL);
    }
    labels
}

fn managed_by_us(ep: &Value) -> bool {
    ep.pointer("/metadata/labels")
        .and_then(|l| l.get(ENDPOINTS_MANAGED_BY))
        .and_then(Value::as_str)
        == Some(ENDPOINTS_CONTROLLER)
}

/// The Endpoints [`Reconciler`], keyed by Service.
pub struct EndpointsController {
    client: Client,
    informers: Informers,
    index: ServiceIndex,
}

impl EndpointsController {
    /// A controller writing through `client` and reading pods from `informers`.
    pub fn new(client: Client, informers: &Informers) -> Self {
        Self {
            client,
            informers: informers.clone(),
            index: ServiceIndex::default(),
        }
    }

    async fn sync(
        &self,
        view: &ServiceView,
        current: Option<Value>,
    ) -> Result<(), ControllerError> {
        let ns = view.namespace();
        let pod_values = self.informers.pods.in_namespace(ns);
        let endpoints = endpoints_of(view, &pod_values);
        let mut subsets = subsets(view, &endpoints);
        let truncated = truncate(&mut subsets);
        let labels = endpoints_labels(view);
        let current_ep: Option<Endpoints> = current.as_ref().map(typed).transpose()?;
        if let Some(cur) = &current_ep {
            let same_subsets = cur.subsets.clone().unwrap_or_default() == subsets;
            let same_labels = cur.metadata.labels.clone().unwrap_or_default() == labels;
            let annotated = cur
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(OVER_CAPACITY))
                .is_some_and(|v| v == TRUNCATED);
            if same_subsets && same_labels && annotated == truncated {
                return Ok(());
            }
        }
        let selected: Vec<Pod> = pod_values
            .iter()
            .filter_map(|v| serde_json::from_value::<Pod>(Value::clone(v)).ok())
            .filter(|p| view.selects(p))
            .collect();
        let mut annotations = current_ep
            .as_ref()
            .and_then(|c| c.metadata.annotations.clone())
            .unwrap_or_default();
        match trigger_time(&view.svc, &selected) {
            Some(t) => annotations.insert(LAST_CHANGE_TRIGGER_TIME.into(), t),
            None => annotations.remove(LAST_CHANGE_TRIGGER_TIME),
        };
        if truncated {
            annotations.insert(OVER_CAPACITY.into(), TRUNCATED.into());
        } else {
            annotations.remove(OVER_CAPACITY);
        }
        let mut obj = match current {
            Some(v) => v,
            None => json!({"apiVersion": "v1", "kind": "Endpoints",
                "metadata": {"name": view.name(), "namespace": ns}}),
        };
        obj["metadata"]["labels"] = json!(labels);
        obj["metadata"]["annotations"] = json!(annotations);
        obj["subsets"] = serde_json::to_value(&subsets)
            .map_err(|e| ApiError::Internal(format!("cannot encode subsets: {e}")))?;
        if current_ep.is_some() {
            self.client.update(ENDPOINTS, ns, obj).await?;
        } else {
            self.client.create(ENDPOINTS, ns, obj).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl Reconciler for EndpointsController {
    fn name(&self) -> &'static str {
        "endpoints"
    }

    async fn keys_for_event(&self, event: &Event) -> Vec<ObjectKey> {
        match event.key.resource.as_str() {
            SERVICES => {
                self.index.observe(event);
                vec![event.key.clone()]
            }
            "pods" => self.index.keys_for_pod_event(event),
            ENDPOINTS => vec![ObjectKey::new(
                SERVICES,
                event.key.namespace.as_str(),
                &event.key.name,
            )],
            _ => Vec::new(),
        }
    }

    async fn all_keys(&self) -> Vec<ObjectKey> {
        let Some(services) = self.client.list_for_resync(SERVICES).await else {
            return Vec::new();
        };
        self.index.replace_all(&services);
        let mut keys = crate::controllers::owned::keys_of(SERVICES, &services);
        // Managed Endpoints of Services deleted while cloudcore was down (Kubernetes misses
        // those, kubernetes#6877).
        if let Some(eps) = self.client.list_for_resync(ENDPOINTS).await {
            let managed: Vec<Value> = eps.into_iter().filter(managed_by_us).collect();
            keys.extend(crate::controllers::owned::keys_of(SERVICES, &managed));
        }
        keys.sort();
        keys.dedup();
        keys
    }

    async fn reconcile(&self, key: &ObjectKey) -> Result<Requeue, ControllerError> {
        self.informers
            .pods
            .synced(self.client.state().store.revision())
            .await?;
        let current = self
            .client
            .get(ENDPOINTS, &key.namespace, &key.name)
            .await?;
        let Some(raw) = self.client.get(SERVICES, &key.namespace, &key.name).await? else {
            if let Some(ep) = current.filter(managed_by_us) {
                let uid = ep.pointer("/metadata/uid").and_then(Value::as_str);
                match self
                    .client
                    .delete(
                        ENDPOINTS,
                        &key.namespace,
                        &key.name,
                        Propagation::Background,
                        uid,
                    )
                    .await
                {
                    Ok(()) | Err(ApiError::NotFound { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            return Ok(Requeue::No);
        };
        let Some(view) = ServiceView::managed(typed::<Service>(&raw)?) else {
            return Ok(Requeue::No);
        };
        if view.svc.metadata.deletion_timestamp.is_some() {
            return Ok(Requeue::No);
        }
        self.sync(&view, current).await?;
        Ok(Requeue::No)
    }
}
