//! What the scheduler writes besides the binding: the `PodScheduled` condition, a `Scheduled`
//! Event for a bound pod and, for a pod that fits nowhere, a core/v1 `FailedScheduling` Event,
//! so that `kubectl describe pod` says why it is Pending, as on Kubernetes; for preemption, the
//! preemptor's `status.nominatedNodeName` and a `Preempted` Event on each victim.
//!
//! Repeated failures with the same message bump one Event's `count` and `lastTimestamp` instead
//! of piling up copies (Kubernetes' event aggregation); the Event is named after the pod and a
//! digest of (pod uid, reason, message), so a new pod with the same name starts afresh.

use crate::clock;
use crate::store::{ObjectKey, Store, StoreError, Stored};
use serde_json::{json, Value};
use std::hash::{Hash, Hasher};

/// The component name Kubernetes' scheduler reports as; tools filter events by it.
pub const COMPONENT: &str = "default-scheduler";

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// `pod` with `condition` as its PodScheduled condition; `None` if it already says the same
/// (same status, reason and message), so that retries do not rewrite the pod.
fn with_condition(pod: &Value, condition: Value) -> Option<Value> {
    let mut next = pod.clone();
    let mut conditions: Vec<Value> = next
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    match conditions.iter().position(|c| c["type"] == "PodScheduled") {
        Some(i) => {
            let old = &conditions[i];
            if ["status", "reason", "message"]
                .iter()
                .all(|f| old.get(*f) == condition.get(*f))
            {
                return None;
            }
            conditions[i] = condition;
        }
        None => conditions.push(condition),
    }
    if !next["status"].is_object() {
        next["status"] = json!({"phase": "Pending"});
    }
    next["status"]["conditions"] = json!(conditions);
    Some(next)
}

/// The pod bound to `node`, with `PodScheduled=True` (and no nomination left).
pub fn bound(pod: &Value, node: &str) -> Value {
    let mut next = pod.clone();
    next["spec"]["nodeName"] = json!(node);
    if let Some(status) = next.get_mut("status").and_then(Value::as_object_mut) {
        status.remove("nominatedNodeName");
    }
    let cond = json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null,
                      "lastTransitionTime": clock::now_rfc3339()});
    with_condition(&next, cond).unwrap_or(next)
}

/// The pod with `PodScheduled=False, reason Unschedulable` and `message`; `None` if it says so
/// already.
pub fn unschedulable(pod: &Value, message: &str) -> Option<Value> {
    with_condition(
        pod,
        json!({"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
               "message": message, "lastProbeTime": null,
               "lastTransitionTime": clock::now_rfc3339()}),
    )
}

/// The pod with `status.nominatedNodeName` set to `node` (where preemption makes room for it).
pub fn nominated(pod: &Value, node: &str) -> Value {
    let mut next = pod.clone();
    if !next["status"].is_object() {
        next["status"] = json!({"phase": "Pending"});
    }
    next["status"]["nominatedNodeName"] = json!(node);
    next
}

/// The message of the `Scheduled` Event, as Kubernetes words it.
pub fn scheduled_message(pod: &Value, node: &str) -> String {
    format!(
        "Successfully assigned {}/{} to {node}",
        str_at(pod, "/metadata/namespace"),
        str_at(pod, "/metadata/name")
    )
}

/// The message of the `Preempted` Event on a victim, as Kubernetes words it.
pub fn preempted_message(preemptor_uid: &str, node: &str) -> String {
    format!("Preempted by pod {preemptor_uid} on node {node}")
}

/// The name of the Event about `pod` for `reason` and `message`.
pub fn event_name(pod: &Value, reason: &str, message: &str) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (str_at(pod, "/metadata/uid"), reason, message).hash(&mut h);
    let name = str_at(pod, "/metadata/name");
    // 253 characters at most: 17 for the suffix, the rest from the pod name.
    let prefix = name[..name.len().min(236)].trim_end_matches(['.', '-']);
    format!("{prefix}.{:016x}", h.finish())
}

/// A new Event about `pod`.
fn new_event(pod: &Value, name: &str, kind: &str, reason: &str, message: &str) -> Value {
    let now = clock::now_rfc3339();
    let ns = str_at(pod, "/metadata/namespace");
    json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": name, "namespace": ns, "uid": uuid::Uuid::new_v4().to_string(),
                     "creationTimestamp": now},
        "involvedObject": {"apiVersion": "v1", "kind": "Pod", "namespace": ns,
                           "name": str_at(pod, "/metadata/name"), "uid": str_at(pod, "/metadata/uid"),
                           "resourceVersion": str_at(pod, "/metadata/resourceVersion")},
        "reason": reason, "message": message, "type": kind, "count": 1,
        "firstTimestamp": now, "lastTimestamp": now,
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT, "reportingInstance": COMPONENT,
    })
}

/// Records a Warning Event with `reason` about `pod`: creates it, or bumps its count.
pub async fn record_warning(
    store: &dyn Store,
    pod: &Value,
    reason: &str,
    message: &str,
) -> Result<Stored, StoreError> {
    record(store, pod, "Warning", reason, message).await
}

/// Records an Event of type `kind` (`Normal`, `Warning`) with `reason` about `pod`: creates it,
/// or, when the same pod already has it with the same message, bumps its count.
pub async fn record(
    store: &dyn Store,
    pod: &Value,
    kind: &str,
    reason: &str,
    message: &str,
) -> Result<Stored, StoreError> {
    let name = event_name(pod, reason, message);
    let key = ObjectKey::new("events", str_at(pod, "/metadata/namespace"), &name);
    let rv = str_at(pod, "/metadata/resourceVersion").to_string();
    for _ in 0..4 {
        // Most events are new (one Scheduled per pod): try the create first.
        match store
            .create(&key, new_event(pod, &name, kind, reason, message))
            .await
        {
            Err(StoreError::AlreadyExists(_)) => {}
            other => return other,
        }
        let bumped = crate::store::update_with(store, &key, |ev| {
            let mut ev = ev.clone();
            ev["count"] = json!(ev["count"].as_u64().unwrap_or(1) + 1);
            ev["lastTimestamp"] = json!(clock::now_rfc3339());
            ev["involvedObject"]["resourceVersion"] = json!(rv);
            Some(ev)
        })
        .await;
        match bumped {
            Ok(Some(s)) => return Ok(s),
            // (The closure always writes, so `Ok(None)` does not occur; creating again is
            // harmless.)
            Ok(None) | Err(StoreError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Backend(format!(
        "{key} kept appearing and disappearing while recording it; the next attempt retries"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_are_rewritten_only_when_they_say_something_new() {
        let pod = json!({"metadata": {"name": "p"}, "spec": {}});
        let once = unschedulable(&pod, "0/1 nodes are available: 1 Too many pods.").unwrap();
        assert_eq!(once["status"]["phase"], "Pending");
        assert_eq!(once["status"]["conditions"][0]["reason"], "Unschedulable");
        assert!(unschedulable(&once, "0/1 nodes are available: 1 Too many pods.").is_none());
        assert!(unschedulable(&once, "0/2 nodes are available: 2 Too many pods.").is_some());
        let b = bound(&once, "n1");
        assert_eq!(b["spec"]["nodeName"], "n1");
        let conds = b["status"]["conditions"].as_array().unwrap();
        assert_eq!(conds.len(), 1);
        assert_eq!(conds[0]["status"], "True");
        let n = nominated(&once, "n2");
        assert_eq!(n["status"]["nominatedNodeName"], "n2");
        assert!(bound(&n, "n2")["status"].get("nominatedNodeName").is_none());
        let named = json!({"metadata": {"name": "web", "namespace": "shop"}});
        assert_eq!(
            scheduled_message(&named, "edge-a"),
            "Successfully assigned shop/web to edge-a"
        );
        assert_eq!(
            preempted_message("u1", "edge-a"),
            "Preempted by pod u1 on node edge-a"
        );
    }

    #[test]
    fn event_names_are_stable_per_pod_and_message_and_valid() {
        let pod = |uid: &str| json!({"metadata": {"name": "web", "uid": uid}});
        let a = event_name(&pod("u1"), "FailedScheduling", "m");
        assert_eq!(a, event_name(&pod("u1"), "FailedScheduling", "m"));
        assert_ne!(a, event_name(&pod("u2"), "FailedScheduling", "m"));
        assert_ne!(a, event_name(&pod("u1"), "FailedScheduling", "n"));
        assert!(a.starts_with("web."));
        let long = json!({"metadata": {"name": format!("{}-x", "a".repeat(240)), "uid": "u"}});
        assert!(event_name(&long, "r", "m").len() <= 253);
    }
}
