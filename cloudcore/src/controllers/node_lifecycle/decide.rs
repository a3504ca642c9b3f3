//! The decision, pure: what a node's conditions and lifecycle taints should be, and what to
//! do to its pods, given the time and when the controller last saw its heartbeat change. No
//! I/O and no clock of its own, so every rule is tested with plain values; the reconciler
//! ([`super::reconciler`]) reads, writes and keeps time.

use super::{
    NODE_STATUS_UNKNOWN, NODE_STATUS_UNKNOWN_MESSAGE, NO_EXECUTE, NO_SCHEDULE, POD_NODE_NOT_READY,
    TAINT_NOT_READY, TAINT_UNREACHABLE,
};
use crate::clock;
use protocol::timestamp::parse_ms;
use serde_json::{json, Value};

/// A node's health, from its `Ready` condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// `Ready=True`.
    Ready,
    /// `Ready=False`: the edge says it cannot run pods.
    NotReady,
    /// `Ready=Unknown` or no `Ready` condition: nothing heard within the grace period.
    Unreachable,
}

/// A pod the controller acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Uid: actions apply to this pod only, not to a later one of the same name.
    pub uid: String,
}

/// What to do to one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodAction {
    /// Set its `Ready` condition to `False`.
    MarkNotReady(PodRef),
    /// Delete it gracefully: its toleration of `taint` ran out.
    Evict {
        /// The pod.
        pod: PodRef,
        /// Key of the taint it no longer tolerates.
        taint: String,
    },
}

/// The outcome of [`decide`].
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The node as it should be stored, if it changes.
    pub node: Option<Value>,
    /// The node's health after that change.
    pub health: Health,
    /// What to do to its pods.
    pub pods: Vec<PodAction>,
    /// When (ms since the epoch) the decision changes without any write: the grace period or a
    /// toleration runs out.
    pub wake_at_ms: Option<u64>,
}

pub(super) fn text<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

pub(super) fn ready_condition(obj: &Value) -> Option<&Value> {
    obj.pointer("/status/conditions")
        .and_then(Value::as_array)?
        .iter()
        .find(|c| c["type"] == "Ready")
}

/// The `lastHeartbeatTime` of a node's `Ready` condition, as written ("" if none).
pub fn heartbeat_of(node: &Value) -> &str {
    ready_condition(node)
        .and_then(|c| c["lastHeartbeatTime"].as_str())
        .unwrap_or("")
}

/// A node's health from its `Ready` condition.
pub fn health_of(node: &Value) -> Health {
    match ready_condition(node).and_then(|c| c["status"].as_str()) {
        Some("True") => Health::Ready,
        Some("False") => Health::NotReady,
        _ => Health::Unreachable,
    }
}

pub(super) fn is_stale(now_ms: u64, probe_ms: u64, grace_ms: u64) -> bool {
    now_ms.saturating_sub(probe_ms) > grace_ms
}

pub(super) fn is_lifecycle_taint(t: &Value) -> bool {
    let key = t["key"].as_str();
    matches!(key, Some(TAINT_UNREACHABLE | TAINT_NOT_READY))
        || super::CONDITION_TAINTS
            .iter()
            .any(|(_, taint)| key == Some(taint))
}

/// The condition taints (`NoSchedule` only) that `node`'s conditions call for.
fn condition_taints(node: &Value) -> Vec<&'static str> {
    let conditions = node.pointer("/status/conditions").and_then(Value::as_array);
    super::CONDITION_TAINTS
        .iter()
        .filter(|(kind, _)| {
            conditions
                .into_iter()
                .flatten()
                .any(|c| c["type"] == *kind && c["status"] == "True")
        })
        .map(|(_, taint)| *taint)
        .collect()
}

/// The decision for one node and the pods bound to it, at `now_ms`, for a node whose heartbeat
/// this controller last saw change at `probe_ms`, with a grace period of `grace_ms`. Pure:
/// the caller writes the node, then acts on the pods.
pub fn decide(
    node: &Value,
    pods: &[&Value],
    now_ms: u64,
    probe_ms: u64,
    grace_ms: u64,
) -> Decision {
    let updated = node_update(node, now_ms, probe_ms, grace_ms);
    let after = updated.as_ref().unwrap_or(node);
    let health = health_of(after);
    let (actions, pod_wake) = pod_actions(after, health, pods, now_ms);
    let stale_at = (!is_stale(now_ms, probe_ms, grace_ms)).then(|| probe_ms + grace_ms + 1);
    Decision {
        node: updated,
        health,
        pods: actions,
        wake_at_ms: [stale_at, pod_wake].into_iter().flatten().min(),
    }
}

/// The node with its conditions and lifecycle taints brought up to date, or `None` if they
/// already are. Idempotent: applying it to its own result gives `None`. The controller writes
/// the two halves apart ([`status_update`] through `/status`, [`taints_update`] through the
/// main resource), as kube-controller-manager does; this is their composition.
pub fn node_update(node: &Value, now_ms: u64, probe_ms: u64, grace_ms: u64) -> Option<Value> {
    let status = status_update(node, now_ms, probe_ms, grace_ms);
    let after = status.as_ref().unwrap_or(node);
    taints_update(after, now_ms).or(status)
}

/// The node with every condition set to `Unknown` if it has been silent past the grace period
/// (and a `Ready=Unknown` added if it never reported), or `None` if nothing changes: the
/// status half of [`node_update`].
pub fn status_update(node: &Value, now_ms: u64, probe_ms: u64, grace_ms: u64) -> Option<Value> {
    if !is_stale(now_ms, probe_ms, grace_ms) {
        return None;
    }
    let now = clock::rfc3339(now_ms);
    let mut changed = false;
    let mut conditions: Vec<Value> = node
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if !conditions.iter().any(|c| c["type"] == "Ready") {
        let created = text(node, "/metadata/creationTimestamp");
        conditions.push(json!({"type": "Ready", "status": "Unknown",
            "reason": NODE_STATUS_UNKNOWN, "message": NODE_STATUS_UNKNOWN_MESSAGE,
            "lastHeartbeatTime": if created.is_empty() { now.as_str() } else { created },
            "lastTransitionTime": now}));
        changed = true;
    }
    for c in conditions.iter_mut().filter(|c| c["status"] != "Unknown") {
        c["status"] = json!("Unknown");
        c["reason"] = json!(NODE_STATUS_UNKNOWN);
        c["message"] = json!(NODE_STATUS_UNKNOWN_MESSAGE);
        c["lastTransitionTime"] = json!(now);
        changed = true;
    }
    if !changed {
        return None;
    }
    let mut next = node.clone();
    if !next["status"].is_object() {
        next["status"] = json!({});
    }
    next["status"]["conditions"] = json!(conditions);
    Some(next)
}

/// The node with the lifecycle taints its current `Ready` condition calls for, plus the
/// `NoSchedule` taint of each pressure or network condition that is `True` (and no other
/// lifecycle taint; admins' taints are kept), or `None` if it has them: the spec half of
/// [`node_update`]. Decided on the conditions as they are in `node`, so a writer that sees a
/// fresh `Ready=True` from the edge removes the taints rather than restoring them.
pub fn taints_update(node: &Value, now_ms: u64) -> Option<Value> {
    let now = clock::rfc3339(now_ms);
    let wanted = match health_of(node) {
        Health::Ready => None,
        Health::NotReady => Some(TAINT_NOT_READY),
        Health::Unreachable => Some(TAINT_UNREACHABLE),
    };
    let before: Vec<Value> = node
        .pointer("/spec/taints")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let by_condition = condition_taints(node);
    let mut taints: Vec<Value> = before
        .iter()
        .filter(|t| {
            let key = t["key"].as_str();
            !is_lifecycle_taint(t)
                || key == wanted
                || (t["effect"] == NO_SCHEDULE && key.is_some_and(|k| by_condition.contains(&k)))
        })
        .cloned()
        .collect();
    for key in by_condition {
        if !taints
            .iter()
            .any(|t| t["key"] == key && t["effect"] == NO_SCHEDULE)
        {
            taints.push(json!({"key": key, "effect": NO_SCHEDULE}));
        }
    }
    if let Some(key) = wanted {
        for effect in [NO_SCHEDULE, NO_EXECUTE] {
            match taints
                .iter_mut()
                .find(|t| t["key"] == key && t["effect"] == effect)
            {
                Some(t) if effect == NO_EXECUTE && parse_ms(text(t, "/timeAdded")).is_none() => {
                    t["timeAdded"] = json!(now);
                }
                Some(_) => {}
                None if effect == NO_EXECUTE => {
                    taints.push(json!({"key": key, "effect": effect, "timeAdded": now}));
                }
                None => taints.push(json!({"key": key, "effect": effect})),
            }
        }
    }
    if taints == before {
        return None;
    }
    let mut next = node.clone();
    if !next["spec"].is_object() {
        next["spec"] = json!({});
    }
    if let Some(spec) = next["spec"].as_object_mut() {
        if taints.is_empty() {
            spec.remove("taints");
        } else {
            spec.insert("taints".into(), json!(taints));
        }
    }
    Some(next)
}

/// Whether toleration `tol` tolerates the taint (`key`, `value`, `effect`), by Kubernetes' rule.
pub(super) fn tolerates(tol: &Value, key: &str, value: &str, effect: &str) -> bool {
    let t_effect = text(tol, "/effect");
    let t_key = text(tol, "/key");
    if (!t_effect.is_empty() && t_effect != effect) || (!t_key.is_empty() && t_key != key) {
        return false;
    }
    match text(tol, "/operator") {
        "" | "Equal" => text(tol, "/value") == value,
        "Exists" => true,
        _ => false,
    }
}

/// How long `pod` tolerates a `NoExecute` taint: `None` if no toleration matches (Skerry
/// leaves such pods alone), `Some(None)` for ever, `Some(Some(ms))` for that long (the shortest
/// finite `tolerationSeconds` among the matching tolerations, as Kubernetes takes).
pub(super) fn toleration_ms(pod: &Value, key: &str, value: &str) -> Option<Option<u64>> {
    let matching: Vec<&Value> = pod
        .pointer("/spec/tolerations")
        .and_then(Value::as_array)?
        .iter()
        .filter(|t| tolerates(t, key, value, NO_EXECUTE))
        .collect();
    if matching.is_empty() {
        return None;
    }
    Some(
        matching
            .iter()
            .filter_map(|t| t["tolerationSeconds"].as_i64())
            .map(|s| u64::try_from(s).unwrap_or(0).saturating_mul(1000))
            .min(),
    )
}

pub(super) fn pod_ref(pod: &Value) -> PodRef {
    PodRef {
        namespace: text(pod, "/metadata/namespace").to_string(),
        name: text(pod, "/metadata/name").to_string(),
        uid: text(pod, "/metadata/uid").to_string(),
    }
}

pub(super) fn pod_actions(
    node: &Value,
    health: Health,
    pods: &[&Value],
    now_ms: u64,
) -> (Vec<PodAction>, Option<u64>) {
    let node_name = text(node, "/metadata/name");
    // The lifecycle NoExecute taints and when they were added (a taint without a readable
    // `timeAdded` counts from now: the next node update gives it one).
    let no_execute: Vec<(&str, &str, u64)> = node
        .pointer("/spec/taints")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|t| is_lifecycle_taint(t) && t["effect"] == NO_EXECUTE)
        .map(|t| {
            let added = parse_ms(text(t, "/timeAdded")).unwrap_or(now_ms);
            (text(t, "/key"), text(t, "/value"), added)
        })
        .collect();
    let mut actions = Vec::new();
    let mut wake: Option<u64> = None;
    for pod in pods {
        if text(pod, "/spec/nodeName") != node_name
            || pod.pointer("/metadata/deletionTimestamp").is_some()
        {
            continue;
        }
        let ready = ready_condition(pod).and_then(|c| c["status"].as_str());
        if health != Health::Ready && ready.is_some_and(|s| s != "False") {
            actions.push(PodAction::MarkNotReady(pod_ref(pod)));
        }
        let deadline = no_execute
            .iter()
            .filter_map(|(key, value, added)| {
                let ms = toleration_ms(pod, key, value)??;
                Some((added.saturating_add(ms), *key))
            })
            .min();
        match deadline {
            Some((at, key)) if at <= now_ms => actions.push(PodAction::Evict {
                pod: pod_ref(pod),
                taint: key.to_string(),
            }),
            Some((at, _)) => wake = Some(wake.map_or(at, |w| w.min(at))),
            None => {}
        }
    }
    (actions, wake)
}

/// The pod with its `Ready` condition set to `False`, if it is still the pod `uid` on `node`
/// and says anything else.
pub(super) fn marked_not_ready(pod: &Value, uid: &str, node: &str, now: &str) -> Option<Value> {
    if text(pod, "/metadata/uid") != uid || text(pod, "/spec/nodeName") != node {
        return None;
    }
    let mut next = pod.clone();
    let cond = next
        .pointer_mut("/status/conditions")
        .and_then(Value::as_array_mut)?
        .iter_mut()
        .find(|c| c["type"] == "Ready" && c["status"] != "False")?;
    cond["status"] = json!("False");
    cond["reason"] = json!(POD_NODE_NOT_READY);
    cond["message"] = json!(format!("Node {node} is not ready"));
    cond["lastTransitionTime"] = json!(now);
    Some(next)
}

/// The pod with the `Ready` condition this controller marked not ready set back to what its
/// edge last reported (Ready exactly when every container reported ready), if it still carries
/// the mark. A node that comes back usually re-reports its pods anyway (edgecore re-sends after
/// reconnecting), which replaces the mark; this covers a pod whose report does not arrive, so it
/// does not stay not-ready for ever while running fine.
pub(super) fn restored_ready(pod: &Value, now: &str) -> Option<Value> {
    let containers_ready = pod
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .is_some_and(|cs| !cs.is_empty() && cs.iter().all(|c| c["ready"] == true));
    let mut next = pod.clone();
    let cond = next
        .pointer_mut("/status/conditions")
        .and_then(Value::as_array_mut)?
        .iter_mut()
        .find(|c| c["type"] == "Ready" && c["reason"] == POD_NODE_NOT_READY)?;
    let obj = cond.as_object_mut()?;
    if containers_ready {
        obj.insert("status".into(), json!("True"));
        obj.remove("reason");
        obj.remove("message");
    } else {
        obj.insert("status".into(), json!("False"));
        obj.insert("reason".into(), json!("ContainersNotReady"));
        obj.remove("message");
    }
    obj.insert("lastTransitionTime".into(), json!(now));
    Some(next)
}
