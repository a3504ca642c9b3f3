//! The Ingress status controller: writes `status.loadBalancer.ingress[].ip` of each Ingress
//! Skerry serves with the InternalIP addresses of the nodes that serve it, so that
//! `kubectl get ingress` shows where to send traffic.
//!
//! Which nodes serve an Ingress is [`crate::api::ingress::Serving`]'s answer (the class's node
//! selector); a node that is not Ready stays listed, because an edge router serves from its
//! cache with no cloud at all, and an unreachable node is usually only unreachable from the
//! cloud. Ingresses of other controllers' classes (or of none) are left alone, as Kubernetes'
//! controllers leave what is not theirs.
//!
//! Woken by the Ingress itself, by any IngressClass change (every Ingress), and by a Node
//! change only when what counts here changed (its labels or its InternalIPs): Node heartbeats
//! do not wake it.

use super::runner::{Reconciler, Requeue};
use super::ControllerError;
use crate::api::client::Client;
use crate::api::ingress::{Serving, INGRESSES, INGRESS_CLASSES};
use crate::store::{Event, ObjectKey};
use async_trait::async_trait;
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

/// How often every Ingress is reconciled even without events.
pub const RESYNC: Duration = Duration::from_secs(60);

/// What of a Node this controller reads: labels and InternalIPs.
fn node_inputs(node: &Value) -> (Value, Vec<String>) {
    (
        node.pointer("/metadata/labels")
            .cloned()
            .unwrap_or(Value::Null),
        internal_ips(node),
    )
}

/// The InternalIP addresses of a stored Node.
pub fn internal_ips(node: &Value) -> Vec<String> {
    node.pointer("/status/addresses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|a| a.get("type").and_then(Value::as_str) == Some("InternalIP"))
        .filter_map(|a| a.get("address").and_then(Value::as_str))
        .map(str::to_string)
        .collect()
}

/// The status an Ingress gets from the nodes serving it (`None`: Skerry does not serve it).
pub fn desired_status(serving: &Serving, ingress: &Value, nodes: &[Value]) -> Option<Value> {
    let selector = serving.selector_for(ingress)?;
    let ips: BTreeSet<String> = nodes
        .iter()
        .filter(|n| selector.matches(n))
        .flat_map(internal_ips)
        .collect();
    let list: Vec<Value> = ips.into_iter().map(|ip| json!({ "ip": ip })).collect();
    Some(if list.is_empty() {
        json!({"loadBalancer": {}})
    } else {
        json!({"loadBalancer": {"ingress": list}})
    })
}

/// The controller; see the module doc.
pub struct IngressStatusController {
    client: Client,
    /// The inputs of each node as last seen, so that a heartbeat maps to nothing.
    nodes: Mutex<HashMap<String, (Value, Vec<String>)>>,
}

impl IngressStatusController {
    /// A controller writing through `client`.
    pub fn new(client: Client) -> Self {
        Self {
            client,
            nodes: Mutex::new(HashMap::new()),
        }
    }

    async fn all_ingresses(&self) -> Vec<ObjectKey> {
        self.client
            .list_for_resync(INGRESSES)
            .await
            .unwrap_or_default()
            .iter()
            .map(|i| {
                ObjectKey::new(
                    INGRESSES,
                    i.pointer("/metadata/namespace")
                        .and_then(Value::as_str)
                        .unwrap_or(""),
                    i.pointer("/metadata/name")
                        .and_then(Value::as_str)
                        .unwrap_or(""),
                )
            })
            .collect()
    }
}

#[async_trait]
impl Reconciler for IngressStatusController {
    fn name(&self) -> &'static str {
        "ingress-status"
    }

    async fn keys_for_event(&self, ev: &Event) -> Vec<ObjectKey> {
        match ev.key.resource.as_str() {
            INGRESSES => vec![ev.key.clone()],
            INGRESS_CLASSES => self.all_ingresses().await,
            "nodes" => {
                let changed = {
                    let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
                    match &ev.value {
                        Some(v) => {
                            let inputs = node_inputs(v);
                            nodes.insert(ev.key.name.clone(), inputs.clone()) != Some(inputs)
                        }
                        None => nodes.remove(&ev.key.name).is_some(),
                    }
                };
                if changed {
                    self.all_ingresses().await
                } else {
                    Vec::new()
                }
            }
            _ => Vec::new(),
        }
    }

    async fn all_keys(&self) -> Vec<ObjectKey> {
        self.all_ingresses().await
    }

    async fn reconcile(&self, key: &ObjectKey) -> Result<Requeue, ControllerError> {
        let Some(ingress) = self
            .client
            .get(INGRESSES, &key.namespace, &key.name)
            .await?
        else {
            return Ok(Requeue::No);
        };
        let classes = self.client.list(INGRESS_CLASSES, None).await?;
        let serving = Serving::from_classes(&classes);
        if serving.selector_for(&ingress).is_none() {
            return Ok(Requeue::No);
        }
        let nodes = self.client.list("nodes", None).await?;
        if let Some(status) = desired_status(&serving, &ingress, &nodes) {
            self.client
                .write_status_if_changed(INGRESSES, &ingress, status)
                .await?;
        }
        Ok(Requeue::No)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, site: &str, ip: &str) -> Value {
        json!({"metadata": {"name": name, "labels": {"site": site}},
            "status": {"addresses": [{"type": "Hostname", "address": name}, {"type": "InternalIP", "address": ip}]}})
    }

    #[test]
    fn the_serving_nodes_addresses_sorted_others_left_alone() {
        let classes = [
            json!({"metadata": {"name": "edge", "annotations": {"ingressclass.skerry.io/node-selector": "site=a"}},
                "spec": {"controller": "skerry.io/edge-ingress"}}),
            json!({"metadata": {"name": "all"}, "spec": {"controller": "skerry.io/edge-ingress"}}),
            json!({"metadata": {"name": "nginx"}, "spec": {"controller": "k8s.io/ingress-nginx"}}),
        ];
        let serving = Serving::from_classes(&classes);
        let nodes = [
            node("n1", "a", "10.0.0.9"),
            node("n2", "b", "10.0.0.2"),
            node("n3", "a", "10.0.0.3"),
        ];
        let ing =
            |class: &str| json!({"metadata": {"name": "i"}, "spec": {"ingressClassName": class}});
        assert_eq!(
            desired_status(&serving, &ing("edge"), &nodes).unwrap(),
            json!({"loadBalancer": {"ingress": [{"ip": "10.0.0.3"}, {"ip": "10.0.0.9"}]}})
        );
        assert_eq!(
            desired_status(&serving, &ing("all"), &nodes).unwrap()["loadBalancer"]["ingress"]
                .as_array()
                .unwrap()
                .len(),
            3
        );
        assert!(desired_status(&serving, &ing("nginx"), &nodes).is_none());
        assert!(desired_status(&serving, &ing("missing"), &nodes).is_none());
        assert!(desired_status(&serving, &json!({"spec": {}}), &nodes).is_none());
    }
}
