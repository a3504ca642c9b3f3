//! Placement for the walking skeleton: binds pods that ask for nodes by label.
//!
//! A pod with `spec.nodeName` is already placed. A pod with a `nodeSelector` is bound to the first
//! Ready node (by name) whose labels match. Anything else stays Pending with a `PodScheduled=False`
//! condition that says why. The real scheduler (filters, scoring, events) replaces this module; it
//! is level-triggered already: every pass looks at all unbound pods, so a pod that could not be
//! placed is retried whenever a node or pod changes.

use crate::clock;
use crate::store::{ObjectKey, Store, StoreError, Stored};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

fn labels(v: &Value, pointer: &str) -> BTreeMap<String, String> {
    v.pointer(pointer)
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a Node object's Ready condition is True.
pub fn node_ready(node: &Value) -> bool {
    node.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

/// The placement decision for one unbound pod.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Bind to this node.
    Bind(String),
    /// Leave Pending, with this message.
    Unschedulable(String),
}

/// Decides where `pod` goes among `nodes` (sorted by name).
pub fn decide(pod: &Value, nodes: &[Stored]) -> Decision {
    let selector = labels(pod, "/spec/nodeSelector");
    if selector.is_empty() {
        return Decision::Unschedulable(
            "pod has neither spec.nodeName nor spec.nodeSelector; set one of them to place it on an edge node".into(),
        );
    }
    let (mut not_ready, mut mismatch) = (0, 0);
    for n in nodes {
        let node_labels = labels(&n.value, "/metadata/labels");
        if !selector.iter().all(|(k, v)| node_labels.get(k) == Some(v)) {
            mismatch += 1;
        } else if !node_ready(&n.value) {
            not_ready += 1;
        } else if let Some(name) = n.value.pointer("/metadata/name").and_then(Value::as_str) {
            return Decision::Bind(name.to_string());
        }
    }
    Decision::Unschedulable(format!(
        "0/{} nodes are available: {} node(s) didn't match Pod's node selector, {} node(s) were not ready",
        nodes.len(),
        mismatch,
        not_ready
    ))
}

/// Whether a store event can change a placement decision, given how many pods were left
/// unbound by the last pass. Node heartbeats arrive all the time and matter only while some pod
/// waits for a node; pod events matter when they concern an unbound pod.
fn relevant(ev: &crate::store::Event, pending: usize) -> bool {
    match ev.key.resource.as_str() {
        "nodes" => pending > 0,
        "pods" => ev.value.as_ref().is_some_and(|v| {
            v.pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .unwrap_or("")
                .is_empty()
        }),
        _ => false,
    }
}

/// Runs binding passes whenever an unbound pod or (while pods wait) a node changes, and every
/// few seconds as a safety net.
pub async fn run(store: Arc<dyn Store>) {
    let mut events = store.subscribe();
    loop {
        let pending = match pass(store.as_ref()).await {
            Ok(n) => n,
            Err(e) => {
                warn!(error = %e, "binding pass failed; retrying");
                1
            }
        };
        let wait = async {
            loop {
                match events.recv().await {
                    Ok(ev) if relevant(&ev, pending) => return,
                    Ok(_) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        std::future::pending::<()>().await
                    }
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), wait).await;
        // Let a burst settle, then take it in one pass.
        tokio::time::sleep(Duration::from_millis(20)).await;
        while events.try_recv().is_ok() {}
    }
}

/// One pass over all unbound pods; returns how many are still unbound.
pub async fn pass(store: &dyn Store) -> Result<usize, StoreError> {
    let (pods, _) = store.list("pods", None)?;
    let pending: Vec<&Stored> = pods
        .iter()
        .filter(|p| {
            p.value
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .unwrap_or("")
                .is_empty()
                && p.value.pointer("/metadata/deletionTimestamp").is_none()
        })
        .collect();
    if pending.is_empty() {
        return Ok(0);
    }
    let mut still_pending = 0;
    let (nodes, _) = store.list("nodes", None)?;
    for pod in pending {
        let (ns, name) = (
            pod.value
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or("default"),
            pod.value
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or(""),
        );
        let key = ObjectKey::new("pods", ns, name);
        let mut next = pod.value.clone();
        let condition = match decide(&pod.value, &nodes) {
            Decision::Bind(node) => {
                info!(pod = %format!("{ns}/{name}"), %node, "binding pod");
                next["spec"]["nodeName"] = json!(node);
                json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": clock::now_rfc3339()})
            }
            Decision::Unschedulable(message) => {
                still_pending += 1;
                json!({
                    "type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message,
                    "lastProbeTime": null, "lastTransitionTime": clock::now_rfc3339(),
                })
            }
        };
        let mut conditions: Vec<Value> = next
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let existing = conditions.iter().position(|c| c["type"] == "PodScheduled");
        if let Some(i) = existing {
            let same = conditions[i]["status"] == condition["status"]
                && conditions[i]["message"] == condition["message"];
            if same && next == pod.value {
                continue; // nothing new to say
            }
            conditions[i] = condition;
        } else {
            conditions.push(condition);
        }
        if !next["status"].is_object() {
            next["status"] = json!({"phase": "Pending"});
        }
        next["status"]["conditions"] = json!(conditions);
        match store.update(&key, next, Some(pod.revision)).await {
            Ok(_) | Err(StoreError::Conflict { .. }) | Err(StoreError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(still_pending)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, ready: bool, labels: Value) -> Stored {
        Stored {
            revision: 1,
            value: json!({"metadata": {"name": name, "labels": labels},
                          "status": {"conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}}),
        }
    }

    #[test]
    fn heartbeats_wake_the_binder_only_while_pods_wait() {
        let ev = |resource: &str, value: Option<Value>| crate::store::Event {
            revision: 1,
            key: crate::store::ObjectKey::new(resource, "", "x"),
            value,
            previous: None,
            shards: vec![],
        };
        let node = ev("nodes", Some(json!({})));
        assert!(!relevant(&node, 0));
        assert!(relevant(&node, 1));
        assert!(relevant(&ev("pods", Some(json!({"spec": {}}))), 0));
        assert!(!relevant(
            &ev("pods", Some(json!({"spec": {"nodeName": "n1"}}))),
            0
        ));
        assert!(!relevant(&ev("pods", None), 0));
    }

    #[test]
    fn binds_to_first_ready_matching_node() {
        let nodes = vec![
            node("a", false, json!({"zone": "x"})),
            node("b", true, json!({"zone": "y"})),
            node("c", true, json!({"zone": "x"})),
        ];
        let pod = json!({"spec": {"nodeSelector": {"zone": "x"}}});
        assert_eq!(decide(&pod, &nodes), Decision::Bind("c".into()));
        let impossible = json!({"spec": {"nodeSelector": {"zone": "mars"}}});
        match decide(&impossible, &nodes) {
            Decision::Unschedulable(m) => assert!(m.contains("3 node(s) didn't match"), "{m}"),
            d => panic!("{d:?}"),
        }
        assert!(matches!(
            decide(&json!({"spec": {}}), &nodes),
            Decision::Unschedulable(_)
        ));
    }
}
