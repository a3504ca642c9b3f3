//! What the scheduler writes besides the binding: the `PodScheduled` condition. For a pod that
//! fits nowhere it also records a core/v1 `FailedScheduling` Event through
//! [`crate::api::events::record`], so that `kubectl describe pod` says why it is Pending, as on
//! Kubernetes.

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

/// The pod bound to `node`, with `PodScheduled=True`.
pub fn bound(pod: &Value, node: &str) -> Value {
    let mut next = pod.clone();
    next["spec"]["nodeName"] = json!(node);
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
    }
}
