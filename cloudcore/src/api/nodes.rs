//! Nodes: cluster-scoped, created by the join flow (not through this API), edited by admins
//! (labels, taints, `unschedulable`) and reported on by the edge through the status path.

use super::error::{ApiError, FieldError};
use super::node_cidrs::NodeCidrPool;
use super::resource::{
    decode_as, typed, Allocation, DecodeError, ResourceHandler, ResourceInfo, SelectableField,
};
use super::table::{age, Column};
use super::validation::{push_invalid, qualified_name, NameRule};
use crate::store::{ObjectKey, Store};
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Node;
use serde_json::{json, Value};

const TAINT_EFFECTS: [&str; 3] = ["NoSchedule", "PreferNoSchedule", "NoExecute"];

/// The node resource. No `create`: nodes come into being when an edge joins.
pub const NODE_INFO: ResourceInfo = ResourceInfo {
    group: "",
    version: "v1",
    plural: "nodes",
    singular: "node",
    kind: "Node",
    namespaced: false,
    verbs: &[
        "delete",
        "deletecollection",
        "get",
        "list",
        "patch",
        "update",
        "watch",
    ],
    short_names: &["no"],
    categories: &[],
    status_subresource: true,
    name_rule: NameRule::Subdomain,
    selectable_fields: &[SelectableField {
        name: "spec.unschedulable",
        pointer: "/spec/unschedulable",
        default: "false",
    }],
    return_deleted_object: false,
};

const COLUMNS: [Column; 9] = [
    super::table::NAME_COLUMN,
    Column { name: "Status", kind: "string", format: "", description: "The status of the node", priority: 0 },
    Column { name: "Roles", kind: "string", format: "", description: "The roles of the node", priority: 0 },
    super::table::AGE_COLUMN,
    Column { name: "Version", kind: "string", format: "", description: "Kubelet Version reported by the node.", priority: 0 },
    Column { name: "Internal-IP", kind: "string", format: "", description: "List of addresses reachable to the node. Queried from cloud provider, if available.", priority: 1 },
    Column { name: "OS-Image", kind: "string", format: "", description: "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy)).", priority: 1 },
    Column { name: "Kernel-Version", kind: "string", format: "", description: "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64).", priority: 1 },
    Column { name: "Container-Runtime", kind: "string", format: "", description: "ContainerRuntime Version reported by the node through runtime remote API (e.g. containerd://1.4.2).", priority: 1 },
];

/// The node [`ResourceHandler`]; with a pool, it gives each node a pod CIDR
/// ([`super::node_cidrs`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct NodeHandler {
    /// Where node pod CIDRs come from; `None` leaves them to the admin (or unset).
    pub cidrs: Option<NodeCidrPool>,
}

/// Held from the scan of the stored Nodes to the write of the Node given a CIDR.
static CIDR_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn pod_cidr(node: &Value) -> Option<&str> {
    node.pointer("/spec/podCIDR")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// The STATUS column: `Ready`/`NotReady`/`Unknown` from the Ready condition, plus
/// `SchedulingDisabled` for cordoned nodes.
pub fn display_status(node: &Value) -> String {
    let ready = node
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))
        .and_then(|c| c.get("status").and_then(Value::as_str));
    let mut s = match ready {
        Some("True") => "Ready",
        Some("False") => "NotReady",
        _ => "Unknown",
    }
    .to_string();
    if node.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
        s.push_str(",SchedulingDisabled");
    }
    s
}

/// The ROLES column, from `node-role.kubernetes.io/<role>` and `kubernetes.io/role` labels.
pub fn roles(node: &Value) -> String {
    let mut roles: Vec<String> = Vec::new();
    if let Some(labels) = node.pointer("/metadata/labels").and_then(Value::as_object) {
        for (k, v) in labels {
            if let Some(r) = k
                .strip_prefix("node-role.kubernetes.io/")
                .filter(|r| !r.is_empty())
            {
                roles.push(r.to_string());
            } else if k == "kubernetes.io/role" {
                if let Some(v) = v.as_str().filter(|v| !v.is_empty()) {
                    roles.push(v.to_string());
                }
            }
        }
    }
    roles.sort();
    roles.dedup();
    if roles.is_empty() {
        "<none>".into()
    } else {
        roles.join(",")
    }
}

fn text(node: &Value, pointer: &str) -> Value {
    match node
        .pointer(pointer)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
    {
        Some(s) => json!(s),
        None => json!("<unknown>"),
    }
}

impl ResourceHandler for NodeHandler {
    fn info(&self) -> &ResourceInfo {
        &NODE_INFO
    }

    fn decode(&self, obj: Value) -> Result<Value, DecodeError> {
        decode_as::<Node>(obj)
    }

    fn validate(&self, obj: &Value) -> Result<(), Vec<FieldError>> {
        let node: Node = typed(obj)?;
        let mut errs = Vec::new();
        for (i, t) in node
            .spec
            .iter()
            .flat_map(|s| s.taints.iter().flatten())
            .enumerate()
        {
            let path = format!("spec.taints[{i}]");
            if t.key.is_empty() {
                errs.push(FieldError::required(format!("{path}.key"), ""));
            } else {
                push_invalid(
                    &mut errs,
                    &format!("{path}.key"),
                    &t.key,
                    qualified_name(&t.key),
                );
            }
            if !TAINT_EFFECTS.contains(&t.effect.as_str()) {
                errs.push(FieldError::not_supported(
                    format!("{path}.effect"),
                    &json!(t.effect),
                    &TAINT_EFFECTS,
                ));
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }

    fn validate_update(&self, new: &Value, old: &Value) -> Result<(), Vec<FieldError>> {
        // As Kubernetes: podCIDR(s) and providerID may be set once, then never changed.
        let mut errs = Vec::new();
        for field in ["podCIDR", "podCIDRs", "providerID"] {
            let o = old.pointer(&format!("/spec/{field}"));
            let n = new.pointer(&format!("/spec/{field}"));
            if o.is_some() && o != n {
                errs.push(FieldError::forbidden(
                    format!("spec.{field}"),
                    format!("node updates may not change {field} except from \"\" to valid"),
                ));
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }

    fn allocate<'a>(
        &'a self,
        store: &'a dyn Store,
        key: &'a ObjectKey,
        obj: &'a mut Value,
        old: Option<&'a Value>,
    ) -> BoxFuture<'a, Result<Allocation, ApiError>> {
        Box::pin(async move {
            // Once set, a CIDR never changes (see `validate_update`); only a Node written
            // without one is given one.
            let Some(pool) = self.cidrs else {
                return Ok(Allocation::none());
            };
            if pod_cidr(obj).is_some() || old.and_then(pod_cidr).is_some() {
                return Ok(Allocation::none());
            }
            let guard = CIDR_LOCK.lock().await;
            let (nodes, _) = store
                .list(&NODE_INFO.storage_resource(), None)
                .await
                .map_err(|e| ApiError::from_store(e, &NODE_INFO.qualified(), &key.name))?;
            let used: Vec<String> = nodes
                .iter()
                .filter(|n| {
                    n.value.pointer("/metadata/name").and_then(Value::as_str) != Some(&key.name)
                })
                .filter_map(|n| pod_cidr(&n.value).map(str::to_string))
                .collect();
            match pool.first_free(used.iter().map(String::as_str)) {
                Some(cidr) => {
                    tracing::info!(node = %key.name, pod_cidr = %cidr, "node given a pod CIDR");
                    set_pod_cidr(obj, &cidr);
                    Ok(Allocation::held(guard))
                }
                None => {
                    tracing::error!(node = %key.name, pool = %pool,
                        "CIDRNotAvailable: the cluster CIDR has no free node subnet; the node \
                         runs with the CNI configuration it has and its pods are not routed from \
                         other nodes. Give cloudcore a larger --cluster-cidr.");
                    metrics::counter!("skerry_node_cidr_exhausted_total").increment(1);
                    Ok(Allocation::none())
                }
            }
        })
    }

    fn columns(&self) -> &'static [Column] {
        &COLUMNS
    }

    fn table_row(&self, node: &Value, now: i64) -> Vec<Value> {
        let internal_ip = node
            .pointer("/status/addresses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|a| a.get("type").and_then(Value::as_str) == Some("InternalIP"))
            .and_then(|a| a.get("address").and_then(Value::as_str))
            .unwrap_or("<none>");
        vec![
            node.pointer("/metadata/name").cloned().unwrap_or(json!("")),
            json!(display_status(node)),
            json!(roles(node)),
            age(node, now),
            json!(node
                .pointer("/status/nodeInfo/kubeletVersion")
                .and_then(Value::as_str)
                .unwrap_or("")),
            json!(internal_ip),
            text(node, "/status/nodeInfo/osImage"),
            text(node, "/status/nodeInfo/kernelVersion"),
            text(node, "/status/nodeInfo/containerRuntimeVersion"),
        ]
    }
}

fn set_pod_cidr(obj: &mut Value, cidr: &str) {
    if let Some(o) = obj.as_object_mut() {
        let spec = o.entry("spec").or_insert_with(|| json!({}));
        if let Some(spec) = spec.as_object_mut() {
            spec.insert("podCIDR".into(), json!(cidr));
            spec.insert("podCIDRs".into(), json!([cidr]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows() {
        let node = json!({"metadata": {"name": "edge-1", "creationTimestamp": "2025-01-01T00:00:00Z",
                "labels": {"node-role.kubernetes.io/edge": "", "kubernetes.io/role": "agent"}},
            "spec": {"unschedulable": true},
            "status": {"conditions": [{"type": "Ready", "status": "True"}],
                "addresses": [{"type": "Hostname", "address": "h"}, {"type": "InternalIP", "address": "192.168.1.9"}],
                "nodeInfo": {"kubeletVersion": "v1.33.0-skerry", "osImage": "Debian", "kernelVersion": "6.1", "containerRuntimeVersion": "skerry://0.1"}}});
        let row = NodeHandler { cidrs: None }.table_row(&node, 1_735_689_600 + 3600);
        assert_eq!(
            row,
            vec![
                json!("edge-1"),
                json!("Ready,SchedulingDisabled"),
                json!("agent,edge"),
                json!("60m"),
                json!("v1.33.0-skerry"),
                json!("192.168.1.9"),
                json!("Debian"),
                json!("6.1"),
                json!("skerry://0.1")
            ]
        );
        let bare = json!({"metadata": {"name": "n"}});
        let row = NodeHandler { cidrs: None }.table_row(&bare, 0);
        assert_eq!(row[1], "Unknown");
        assert_eq!(row[2], "<none>");
        assert_eq!(row[5], "<none>");
        assert_eq!(
            display_status(
                &json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}})
            ),
            "NotReady"
        );
    }

    #[test]
    fn validation() {
        let n = decode_as::<Node>(json!({"metadata": {"name": "n"}, "spec": {"taints": [{"key": "", "effect": "Sometimes"}]}})).unwrap();
        let errs = NodeHandler { cidrs: None }.validate(&n).unwrap_err();
        assert_eq!(errs.len(), 2);
        let old = json!({"spec": {"podCIDR": "10.0.0.0/24"}});
        assert!(NodeHandler { cidrs: None }
            .validate_update(&json!({"spec": {"podCIDR": "10.0.1.0/24"}}), &old)
            .is_err());
        assert!(NodeHandler { cidrs: None }
            .validate_update(&old, &old)
            .is_ok());
        assert!(NodeHandler { cidrs: None }
            .validate_update(&old, &json!({}))
            .is_ok());
    }
}
