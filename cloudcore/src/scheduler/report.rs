//! What the scheduler writes besides the binding: the `PodScheduled` condition, a `Scheduled`
//! Event for a bound pod and, for a pod that fits nowhere, a core/v1 `FailedScheduling` Event,
//! so that `kubectl describe pod` says why it is Pending, as on Kubernetes; for preemption, the
//! preemptor's `status.nominatedNodeName` and a `Preempted` Event on each victim.
//!
//! Events are written by [`crate::api::events::record`], which aggregates repeats.

use crate::api::client::Client;
use crate::api::events::EventType;
use crate::api::ApiError;
use crate::clock;
use serde_json::{json, Value};

/// The component name Kubernetes' scheduler reports as; tools filter events by it.
pub const COMPONENT: &str = "default-scheduler";

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
    let meta = |field: &str| pod["metadata"][field].as_str().unwrap_or("");
    format!(
        "Successfully assigned {}/{} to {node}",
        meta("namespace"),
        meta("name")
    )
}

/// The message of the `Preempted` Event on a victim, as Kubernetes words it.
pub fn preempted_message(preemptor_uid: &str, node: &str) -> String {
    format!("Preempted by pod {preemptor_uid} on node {node}")
}

/// Records a Warning Event with `reason` about `pod`, as the scheduler: creates it, or bumps
/// its count.
pub async fn record_warning(
    client: &Client,
    pod: &Value,
    reason: &str,
    message: &str,
) -> Result<Value, ApiError> {
    crate::api::events::record(client, pod, EventType::Warning, reason, message, COMPONENT).await
}

/// Records an Event of `event_type` with `reason` about `pod`, as the scheduler.
pub async fn record(
    client: &Client,
    pod: &Value,
    event_type: EventType,
    reason: &str,
    message: &str,
) -> Result<Value, ApiError> {
    crate::api::events::record(client, pod, event_type, reason, message, COMPONENT).await
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
}
