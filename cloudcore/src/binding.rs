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

/// Runs binding passes whenever pods or nodes change (and every few seconds as a safety net).
pub async fn run(store: Arc<dyn Store>) {
    let mut events = store.subscribe();
    loop {
        if let Err(e) = pass(store.as_ref()).await {
            warn!(error = %e, "binding pass failed; retrying");
        }
        // Wait for a relevant change, then let a burst settle.
        let wait = async {
            loop {
                match events.recv().await {
                    Ok(ev) if ev.key.resource == "pods" || ev.key.resource == "nodes" => return,
                    Ok(_) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        std::future::pending::<()>().await
                    }
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), wait).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        while events.try_recv().is_ok() {}
    }
}

/// One pass over all unbound pods.
pub async fn pass(store: &dyn Store) -> Result<(), StoreError> {
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
        return Ok(());
    }
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
            Decision::Unschedulable(message) => json!({
                "type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message,
                "lastProbeTime": null, "lastTransitionTime": clock::now_rfc3339(),
            }),
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
    Ok(())
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
