//! The Deployment controller: rolls a Deployment's pod template out through one ReplicaSet per
//! template, with Kubernetes' `DeploymentController` semantics, so that `kubectl rollout
//! status|history|undo|pause|resume` and `kubectl scale` work unchanged.
//!
//! - **One ReplicaSet per template**, named `<deployment>-<hash>`; the hash
//!   ([`owned::template_hash`] of the template without the label) is added as the
//!   `pod-template-hash` label to the ReplicaSet's labels, selector and template. The
//!   ReplicaSet whose template equals the Deployment's (ignoring that label) is the new one;
//!   an old one that matches again (a rollback) becomes the new one and gets the next
//!   revision. Annotations as upstream: `deployment.kubernetes.io/revision` (and
//!   `revision-history` for a ReplicaSet brought back), `desired-replicas`, `max-replicas`,
//!   and the Deployment's own annotations (such as `kubernetes.io/change-cause`, which
//!   `kubectl rollout history` prints) copied to the new ReplicaSet.
//! - **RollingUpdate** ([`rolling_new_replicas`], [`scale_down_old`]): the new ReplicaSet
//!   grows while all ReplicaSets together stay within `replicas + maxSurge` (rounded up); old
//!   ones shrink, unhealthy replicas first, only as far as `replicas - maxUnavailable`
//!   (rounded down) pods stay available.
//! - **Recreate**: old ReplicaSets go to 0, the new one is created only once none of their
//!   pods is left (terminating ones included).
//! - **Paused**: no rollout progress and no new ReplicaSet; scaling still applies.
//! - **Scaling** (`spec.replicas` changed, seen through the `desired-replicas` annotation):
//!   with one active ReplicaSet it takes the new size. Mid-rollout, with several active
//!   ReplicaSets, Kubernetes spreads the difference proportionally to their sizes; this
//!   controller simplifies that ([`scale_plan`]): an increase goes to the new ReplicaSet (or
//!   the newest active one), a decrease comes from the oldest old ReplicaSets first, then from
//!   the new one; the rollout then proceeds from there within the same bounds.
//! - **Cleanup** of old ReplicaSets beyond `revisionHistoryLimit`, oldest revision first, and
//!   only those scaled to 0 with no pod left.
//! - **Status** and conditions `Available` and `Progressing` with upstream's reasons and
//!   messages ([`calculate_status`], [`rollout_conditions`]), including
//!   `ProgressDeadlineExceeded` once no progress was seen for `progressDeadlineSeconds`.
//! - **Adoption** of orphan ReplicaSets matching the selector ([`super::claim`]).
//! - Events `ScalingReplicaSet` ("Scaled up replica set web-abc to 3 from 1") from
//!   `deployment-controller`.
//!
//! Deleting a Deployment's ReplicaSets with it is the garbage collector's job.

use super::claim;
use super::decode::{owner_selector, typed};
use super::owned::{self, controller_of, controller_ref, meta_of};
use super::replicaset::{self, now_seconds};
use super::runner::{Reconciler, Requeue};
use super::selector_index::SelectorIndex;
use super::ControllerError;
use crate::api::client::{Client, Propagation};
use crate::api::events::{self, EventType};
use crate::api::table::parse_timestamp;
use crate::api::workloads::scaled_value;
use crate::api::ApiError;
use crate::store::{Event, ObjectKey};
use async_trait::async_trait;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{json, Value};

/// Storage resource of Deployments.
pub const RESOURCE: &str = "apps/deployments";
/// The component name on Events.
pub const COMPONENT: &str = "deployment-controller";
/// The label distinguishing the pods of each ReplicaSet of a Deployment.
pub const HASH_LABEL: &str = "pod-template-hash";
/// The revision of a ReplicaSet (and of the Deployment: its new ReplicaSet's).
pub const REVISION: &str = "deployment.kubernetes.io/revision";
/// Earlier revisions of a ReplicaSet brought back by a rollback.
pub const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
/// `spec.replicas` of the Deployment when the ReplicaSet was last sized.
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
/// `replicas + maxSurge` of the Deployment when the ReplicaSet was last sized.
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";

/// Deployment annotations never copied to its ReplicaSets (upstream's `annotationsToSkip`).
const NOT_COPIED: [&str; 6] = [
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    REVISION_HISTORY,
    DESIRED_REPLICAS,
    MAX_REPLICAS,
    "deprecated.deployment.rollback.to",
];

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

fn int_at(v: &Value, pointer: &str) -> i32 {
    v.pointer(pointer)
        .and_then(Value::as_i64)
        .and_then(|n| i32::try_from(n).ok())
        .unwrap_or(0)
}

/// `spec.replicas` (1 when unset, as defaulted).
fn replicas_of(obj: &Value) -> i32 {
    obj.pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .and_then(|n| i32::try_from(n).ok())
        .unwrap_or(1)
}

fn annotation<'a>(obj: &'a Value, key: &str) -> Option<&'a str> {
    obj.pointer("/metadata/annotations")
        .and_then(|a| a.get(key))
        .and_then(Value::as_str)
}

fn set_annotation(obj: &mut Value, key: &str, value: &str) {
    if !obj["metadata"]["annotations"].is_object() {
        obj["metadata"]["annotations"] = json!({});
    }
    obj["metadata"]["annotations"][key] = json!(value);
}

/// The revision of a ReplicaSet (0 when missing or malformed).
pub fn revision_of(rs: &Value) -> i64 {
    annotation(rs, REVISION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn is_rolling(d: &Value) -> bool {
    str_at(d, "/spec/strategy/type") != "Recreate"
}

fn int_or_percent(v: Option<&Value>) -> IntOrString {
    match v {
        Some(Value::Number(n)) => IntOrString::Int(n.as_i64().unwrap_or(0) as i32),
        Some(Value::String(s)) => IntOrString::String(s.clone()),
        _ => IntOrString::String("25%".into()),
    }
}

/// `(maxSurge, maxUnavailable)` of a rolling Deployment resolved against `spec.replicas`:
/// surge rounds up, unavailability down, and both 0 becomes an unavailability of 1 (upstream's
/// `ResolveFenceposts`).
pub fn fenceposts(d: &Value) -> (i32, i32) {
    let replicas = replicas_of(d);
    let ru = d.pointer("/spec/strategy/rollingUpdate");
    let surge = scaled_value(
        &int_or_percent(ru.and_then(|r| r.get("maxSurge"))),
        replicas,
        true,
    )
    .unwrap_or(0);
    let unavailable = scaled_value(
        &int_or_percent(ru.and_then(|r| r.get("maxUnavailable"))),
        replicas,
        false,
    )
    .unwrap_or(0);
    if surge == 0 && unavailable == 0 {
        (0, 1)
    } else {
        (surge, unavailable)
    }
}

/// How many pods above `spec.replicas` a rollout may run (0 for Recreate).
pub fn max_surge(d: &Value) -> i32 {
    if is_rolling(d) {
        fenceposts(d).0
    } else {
        0
    }
}

/// How many of `spec.replicas` may be unavailable during a rollout (0 for Recreate).
pub fn max_unavailable(d: &Value) -> i32 {
    let replicas = replicas_of(d);
    if !is_rolling(d) || replicas == 0 {
        return 0;
    }
    fenceposts(d).1.min(replicas)
}

/// The size of the new ReplicaSet of a rolling update in this pass: it grows by what keeps the
/// sum of all ReplicaSets' `spec.replicas` (`total`) within `replicas + maxSurge`, up to
/// `replicas`. Upstream's `NewRSNewReplicas`.
pub fn rolling_new_replicas(replicas: i32, surge: i32, total: i32, new: i32) -> i32 {
    let max_total = replicas + surge;
    if total >= max_total {
        return new;
    }
    new + (max_total - total).min(replicas - new).max(0)
}

/// One ReplicaSet as the rollout arithmetic sees it: `spec.replicas` and
/// `status.availableReplicas`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    /// `spec.replicas`.
    pub replicas: i32,
    /// `status.availableReplicas`.
    pub available: i32,
}

fn sizes_of(rs: &Value) -> Sizes {
    Sizes {
        replicas: replicas_of(rs),
        available: int_at(rs, "/status/availableReplicas"),
    }
}

/// The new sizes of the old ReplicaSets (`old`, oldest first) in one pass of a rolling update:
/// first the unhealthy replicas go, then available ones as long as `replicas -
/// maxUnavailable` pods stay available across old and `new` (upstream's
/// `reconcileOldReplicaSets`).
pub fn scale_down_old(replicas: i32, unavailable: i32, new: Sizes, old: &[Sizes]) -> Vec<i32> {
    let mut sizes: Vec<i32> = old.iter().map(|s| s.replicas).collect();
    let old_pods: i32 = sizes.iter().sum();
    if old_pods == 0 {
        return sizes;
    }
    let all_pods = old_pods + new.replicas;
    let min_available = replicas - unavailable;
    let new_unavailable = new.replicas - new.available;
    let max_scaled_down = all_pods - min_available - new_unavailable;
    if max_scaled_down <= 0 {
        return sizes;
    }
    // Unhealthy replicas first: removing them costs no availability.
    let mut cleaned = 0;
    for (size, s) in sizes.iter_mut().zip(old) {
        if cleaned >= max_scaled_down {
            break;
        }
        let unhealthy = *size - s.available;
        if *size == 0 || unhealthy <= 0 {
            continue;
        }
        let n = unhealthy.min(max_scaled_down - cleaned);
        *size -= n;
        cleaned += n;
    }
    // Then as far as availability allows.
    let available: i32 = old.iter().map(|s| s.available).sum::<i32>() + new.available;
    if available <= min_available {
        return sizes;
    }
    let budget = available - min_available;
    let mut scaled = 0;
    for size in sizes.iter_mut() {
        if scaled >= budget {
            break;
        }
        if *size == 0 {
            continue;
        }
        let n = (*size).min(budget - scaled);
        *size -= n;
        scaled += n;
    }
    sizes
}

/// The sizes of the active ReplicaSets after `spec.replicas` changed (a scaling event), the
/// simplification of upstream's proportional scaling described in the module docs. `active`
/// is oldest first and holds `new` (its index) if there is a new ReplicaSet; `allowed` is
/// `replicas + maxSurge` for a rolling update.
pub fn scale_plan(active: &[i32], new: Option<usize>, allowed: i32) -> Vec<i32> {
    let mut sizes = active.to_vec();
    let total: i32 = sizes.iter().sum();
    let mut delta = allowed - total;
    if delta > 0 {
        let target = new.unwrap_or(sizes.len().saturating_sub(1));
        if let Some(s) = sizes.get_mut(target) {
            *s += delta;
        }
    } else {
        let order: Vec<usize> = (0..sizes.len())
            .filter(|i| Some(*i) != new)
            .chain(new)
            .collect();
        for i in order {
            if delta >= 0 {
                break;
            }
            let n = sizes[i].min(-delta);
            sizes[i] -= n;
            delta += n;
        }
    }
    sizes
}

/// A Deployment condition as Kubernetes writes it.
fn condition(kind: &str, status: &str, reason: &str, message: &str, now: &str) -> Value {
    json!({"type": kind, "status": status, "lastUpdateTime": now, "lastTransitionTime": now,
           "reason": reason, "message": message})
}

fn condition_of<'a>(status: &'a Value, kind: &str) -> Option<&'a Value> {
    status
        .get("conditions")
        .and_then(Value::as_array)?
        .iter()
        .find(|c| c["type"] == kind)
}

/// Upstream's `SetDeploymentCondition`: the same status and reason change nothing; the same
/// status keeps its transition time; the condition moves to the end.
fn set_condition(status: &mut Value, mut cond: Value) {
    if let Some(cur) = condition_of(status, str_at(&cond, "/type")) {
        if cur["status"] == cond["status"] && cur["reason"] == cond["reason"] {
            return;
        }
        if cur["status"] == cond["status"] {
            cond["lastTransitionTime"] = cur["lastTransitionTime"].clone();
        }
    }
    remove_condition(status, str_at(&cond, "/type"));
    if !status["conditions"].is_array() {
        status["conditions"] = json!([]);
    }
    if let Some(cs) = status["conditions"].as_array_mut() {
        cs.push(cond);
    }
}

fn remove_condition(status: &mut Value, kind: &str) {
    if let Some(cs) = status.get_mut("conditions").and_then(Value::as_array_mut) {
        cs.retain(|c| c["type"] != kind);
    }
}

fn has_progress_deadline(d: &Value) -> bool {
    d.pointer("/spec/progressDeadlineSeconds")
        .and_then(Value::as_i64)
        .is_some_and(|s| s != i64::from(i32::MAX))
}

fn sum(rs: &[&Value], pointer: &str) -> i32 {
    rs.iter().map(|r| int_at(r, pointer)).sum()
}

/// Upstream's `calculateStatus`: counts over all ReplicaSets (`updatedReplicas` over the new
/// one) and the `Available` condition; other conditions are kept.
pub fn calculate_status(d: &Value, all: &[&Value], new: Option<&Value>, now: &str) -> Value {
    let available = sum(all, "/status/availableReplicas");
    let total: i32 = all.iter().map(|r| replicas_of(r)).sum();
    let mut status = json!({
        "observedGeneration": d.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(0),
        "replicas": sum(all, "/status/replicas"),
        "updatedReplicas": new.map_or(0, |n| int_at(n, "/status/replicas")),
        "readyReplicas": sum(all, "/status/readyReplicas"),
        "availableReplicas": available,
        "unavailableReplicas": (total - available).max(0),
    });
    if let Some(c) = d.pointer("/status/collisionCount") {
        status["collisionCount"] = c.clone();
    }
    if let Some(cs) = d.pointer("/status/conditions") {
        status["conditions"] = cs.clone();
    }
    let cond = if available >= replicas_of(d) - max_unavailable(d) {
        condition(
            "Available",
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.",
            now,
        )
    } else {
        condition(
            "Available",
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.",
            now,
        )
    };
    set_condition(&mut status, cond);
    status
}

/// Whether the rollout is complete (upstream's `DeploymentComplete`).
pub fn deployment_complete(d: &Value, status: &Value) -> bool {
    let r = replicas_of(d);
    int_at(status, "/updatedReplicas") == r
        && int_at(status, "/replicas") == r
        && int_at(status, "/availableReplicas") == r
        && status["observedGeneration"].as_i64().unwrap_or(0)
            >= d.pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0)
}

/// Whether `new` shows progress over the Deployment's current status (upstream's
/// `DeploymentProgressing`).
fn deployment_progressing(d: &Value, new: &Value) -> bool {
    let old = d.get("status").cloned().unwrap_or_else(|| json!({}));
    let old_old = int_at(&old, "/replicas") - int_at(&old, "/updatedReplicas");
    let new_old = int_at(new, "/replicas") - int_at(new, "/updatedReplicas");
    int_at(new, "/updatedReplicas") > int_at(&old, "/updatedReplicas")
        || new_old < old_old
        || int_at(new, "/readyReplicas") > int_at(&old, "/readyReplicas")
        || int_at(new, "/availableReplicas") > int_at(&old, "/availableReplicas")
}

/// The `Progressing` condition's last update plus the deadline, in seconds since the epoch.
fn progress_deadline_at(d: &Value, cond: &Value) -> i64 {
    let from = parse_timestamp(str_at(cond, "/lastUpdateTime")).unwrap_or(0);
    from + d
        .pointer("/spec/progressDeadlineSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(600)
}

/// Upstream's `syncRolloutStatus` on top of [`calculate_status`]: sets `Progressing` to
/// `NewReplicaSetAvailable`, `ReplicaSetUpdated` or `ProgressDeadlineExceeded`. Returns the
/// status and, while a rollout is in progress, the seconds until its deadline should be
/// checked again.
pub fn rollout_conditions(
    d: &Value,
    all: &[&Value],
    new: Option<&Value>,
    now: i64,
) -> (Value, Option<i64>) {
    let now_text = crate::clock::rfc3339(now.max(0) as u64 * 1000);
    let mut status = calculate_status(d, all, new, &now_text);
    let old_status = d.get("status").cloned().unwrap_or_else(|| json!({}));
    if !has_progress_deadline(d) {
        remove_condition(&mut status, "Progressing");
        return (status, None);
    }
    let current = condition_of(&old_status, "Progressing").cloned();
    let complete_before = int_at(&status, "/replicas") == int_at(&status, "/updatedReplicas")
        && current
            .as_ref()
            .is_some_and(|c| c["reason"] == "NewReplicaSetAvailable");
    let named = |fallback: String, rs_msg: &dyn Fn(&str) -> String| match new {
        Some(n) => rs_msg(str_at(n, "/metadata/name")),
        None => fallback,
    };
    let name = str_at(d, "/metadata/name");
    if !complete_before {
        if deployment_complete(d, &status) {
            let msg = named(
                format!("Deployment {name:?} has successfully progressed."),
                &|rs| format!("ReplicaSet {rs:?} has successfully progressed."),
            );
            set_condition(
                &mut status,
                condition(
                    "Progressing",
                    "True",
                    "NewReplicaSetAvailable",
                    &msg,
                    &now_text,
                ),
            );
        } else if deployment_progressing(d, &status) {
            let msg = named(format!("Deployment {name:?} is progressing."), &|rs| {
                format!("ReplicaSet {rs:?} is progressing.")
            });
            let mut cond = condition("Progressing", "True", "ReplicaSetUpdated", &msg, &now_text);
            if let Some(cur) = &current {
                if cur["status"] == "True" {
                    cond["lastTransitionTime"] = cur["lastTransitionTime"].clone();
                }
                remove_condition(&mut status, "Progressing");
            }
            set_condition(&mut status, cond);
        } else if current.as_ref().is_some_and(|c| {
            c["reason"] == "ProgressDeadlineExceeded"
                || (c["reason"] != "NewReplicaSetAvailable" && progress_deadline_at(d, c) < now)
        }) {
            let msg = named(
                format!("Deployment {name:?} has timed out progressing."),
                &|rs| format!("ReplicaSet {rs:?} has timed out progressing."),
            );
            set_condition(
                &mut status,
                condition(
                    "Progressing",
                    "False",
                    "ProgressDeadlineExceeded",
                    &msg,
                    &now_text,
                ),
            );
        }
    }
    // While in progress, look again when the deadline passes (upstream's
    // `requeueStuckDeployment`).
    let requeue = condition_of(&status, "Progressing")
        .filter(|c| {
            !deployment_complete(d, &status)
                && c["reason"] != "ProgressDeadlineExceeded"
                && c["reason"] != "NewReplicaSetAvailable"
        })
        .map(|c| (progress_deadline_at(d, c) - now + 1).max(1));
    (status, requeue)
}

/// Copies the Deployment's annotations (but [`NOT_COPIED`]) to `rs`; whether anything changed.
fn copy_annotations(d: &Value, rs: &mut Value) -> bool {
    let mut changed = false;
    if let Some(anns) = d
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
    {
        for (k, v) in anns {
            if NOT_COPIED.contains(&k.as_str()) || annotation(rs, k) == v.as_str() {
                continue;
            }
            set_annotation(rs, k, v.as_str().unwrap_or(""));
            changed = true;
        }
    }
    changed
}

/// Sets `desired-replicas` and `max-replicas`; whether they changed.
fn set_replicas_annotations(rs: &mut Value, desired: i32, max: i32) -> bool {
    let mut changed = false;
    for (k, v) in [(DESIRED_REPLICAS, desired), (MAX_REPLICAS, max)] {
        let v = v.to_string();
        if annotation(rs, k) != Some(v.as_str()) {
            set_annotation(rs, k, &v);
            changed = true;
        }
    }
    changed
}

/// Upstream's `SetNewReplicaSetAnnotations`: copied annotations, and the revision raised to
/// `revision` (remembering the one it had in `revision-history`, for a rollback).
fn set_new_rs_annotations(d: &Value, rs: &mut Value, revision: i64) -> bool {
    let mut changed = copy_annotations(d, rs);
    let old = annotation(rs, REVISION).map(str::to_string);
    let old_n = old
        .as_deref()
        .and_then(|r| r.parse::<i64>().ok())
        .unwrap_or(0);
    if old_n < revision {
        set_annotation(rs, REVISION, &revision.to_string());
        changed = true;
        if let Some(old) = old.filter(|o| !o.is_empty()) {
            let history = match annotation(rs, REVISION_HISTORY) {
                Some(h) if !h.is_empty() => format!("{h},{old}"),
                _ => old,
            };
            set_annotation(rs, REVISION_HISTORY, &history);
        }
    }
    changed
}

/// `v` without nulls, empty objects and empty lists, recursively: what Go's typed equality
/// ignores. A template patched back by `kubectl rollout undo` carries Go's zero values
/// (`"resources": {}`, `"creationTimestamp": null`) that the stored template omits.
fn pruned(v: &Value) -> Option<Value> {
    match v {
        Value::Null => None,
        Value::Object(m) => {
            let m: serde_json::Map<String, Value> = m
                .iter()
                .filter_map(|(k, v)| pruned(v).map(|v| (k.clone(), v)))
                .collect();
            (!m.is_empty()).then_some(Value::Object(m))
        }
        Value::Array(a) => (!a.is_empty())
            .then(|| Value::Array(a.iter().map(|v| pruned(v).unwrap_or(Value::Null)).collect())),
        other => Some(other.clone()),
    }
}

/// A pod template without the `pod-template-hash` label and Go's zero values (what a
/// Deployment's template is compared with and hashed as).
fn without_hash_label(template: &Value) -> Value {
    let mut t = pruned(template).unwrap_or(Value::Null);
    if let Some(labels) = t
        .pointer_mut("/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        labels.remove(HASH_LABEL);
        if labels.is_empty() {
            if let Some(meta) = t["metadata"].as_object_mut() {
                meta.remove("labels");
            }
        }
    }
    t
}

/// Whether `rs` runs the Deployment's current template (upstream's `EqualIgnoreHash`).
pub fn runs_template(d: &Value, rs: &Value) -> bool {
    let dt = d.pointer("/spec/template").cloned().unwrap_or(Value::Null);
    let rt = rs.pointer("/spec/template").cloned().unwrap_or(Value::Null);
    without_hash_label(&dt) == without_hash_label(&rt)
}

/// The hash naming the ReplicaSet of `template`; a collision count perturbs it.
pub fn pod_template_hash(template: &Value, collisions: i64) -> String {
    let t = without_hash_label(template);
    if collisions == 0 {
        owned::template_hash(&t)
    } else {
        owned::template_hash(&json!({"template": t, "collisionCount": collisions}))
    }
}

/// The new ReplicaSet of `d` for template hash `hash` with `replicas` and `revision`.
pub fn new_replica_set(d: &Value, hash: &str, replicas: i32, revision: i64) -> Value {
    let name = format!("{}-{hash}", str_at(d, "/metadata/name"));
    let mut template = d.pointer("/spec/template").cloned().unwrap_or(Value::Null);
    if !template["metadata"].is_object() {
        template["metadata"] = json!({});
    }
    if !template["metadata"]["labels"].is_object() {
        template["metadata"]["labels"] = json!({});
    }
    template["metadata"]["labels"][HASH_LABEL] = json!(hash);
    let mut selector = d.pointer("/spec/selector").cloned().unwrap_or(json!({}));
    if !selector["matchLabels"].is_object() {
        selector["matchLabels"] = json!({});
    }
    selector["matchLabels"][HASH_LABEL] = json!(hash);
    let mut rs = json!({
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": name,
            "namespace": str_at(d, "/metadata/namespace"),
            "labels": template["metadata"]["labels"].clone(),
            "ownerReferences": [controller_ref(&Deployment {
                metadata: meta_of(d),
                ..Default::default()
            })],
        },
        "spec": {
            "replicas": replicas,
            "minReadySeconds": int_at(d, "/spec/minReadySeconds"),
            "selector": selector,
            "template": template,
        },
    });
    set_new_rs_annotations(d, &mut rs, revision);
    set_replicas_annotations(&mut rs, replicas_of(d), replicas_of(d) + max_surge(d));
    rs
}

fn created_at(rs: &Value) -> (i64, String) {
    (
        parse_timestamp(str_at(rs, "/metadata/creationTimestamp")).unwrap_or(0),
        str_at(rs, "/metadata/name").to_string(),
    )
}

/// The Deployment [`Reconciler`].
pub struct DeploymentController {
    client: Client,
    index: SelectorIndex,
}

/// One reconcile's view: the Deployment as last written and its ReplicaSets.
struct Rollout {
    d: Value,
    new: Option<Value>,
    /// Oldest first.
    old: Vec<Value>,
}

impl Rollout {
    fn all(&self) -> Vec<&Value> {
        self.old.iter().chain(self.new.as_ref()).collect()
    }
}

impl DeploymentController {
    /// A controller writing through `client`.
    pub fn new(client: Client) -> Self {
        Self {
            client,
            index: SelectorIndex::default(),
        }
    }

    async fn event(&self, d: &Value, reason: &str, message: &str) {
        let store = self.client.state().store.clone();
        events::record_best_effort(
            store.as_ref(),
            d,
            EventType::Normal,
            reason,
            message,
            COMPONENT,
        )
        .await;
    }

    /// Sizes `rs` to `size` (and refreshes its replicas annotations); returns whether the size
    /// changed and the ReplicaSet as written.
    async fn scale(&self, d: &Value, rs: &Value, size: i32) -> Result<(bool, Value), ApiError> {
        let mut updated = rs.clone();
        let from = replicas_of(rs);
        let resize = from != size;
        let annotated =
            set_replicas_annotations(&mut updated, replicas_of(d), replicas_of(d) + max_surge(d));
        if !resize && !annotated {
            return Ok((false, rs.clone()));
        }
        updated["spec"]["replicas"] = json!(size);
        let ns = str_at(d, "/metadata/namespace");
        let written = self
            .client
            .update(replicaset::RESOURCE, ns, updated)
            .await?;
        if resize {
            let way = if size > from { "up" } else { "down" };
            let msg = format!(
                "Scaled {way} replica set {} to {size} from {from}",
                str_at(rs, "/metadata/name")
            );
            self.event(d, "ScalingReplicaSet", &msg).await;
        }
        Ok((resize, written))
    }

    async fn write_status(&self, d: &mut Value, status: Value) -> Result<(), ApiError> {
        if d.get("status") == Some(&status) {
            return Ok(());
        }
        let mut updated = d.clone();
        updated["status"] = status;
        let ns = str_at(d, "/metadata/namespace").to_string();
        *d = self.client.update_status(RESOURCE, &ns, updated).await?;
        Ok(())
    }

    /// Upstream's `getAllReplicaSetsAndSyncRevision`: splits the ReplicaSets into the new one
    /// and the old ones, brings the new one's annotations up to date, and creates it when
    /// `create` and missing.
    async fn split(
        &self,
        d: Value,
        mut owned: Vec<Value>,
        create: bool,
    ) -> Result<Rollout, ApiError> {
        owned.sort_by_key(created_at);
        let (mut matching, old): (Vec<Value>, Vec<Value>) =
            owned.into_iter().partition(|rs| runs_template(&d, rs));
        let mut old = old;
        // Several ReplicaSets with the same template: the oldest is the new one.
        let existing = (!matching.is_empty()).then(|| matching.remove(0));
        old.extend(matching);
        old.sort_by_key(created_at);
        let revision = old.iter().map(revision_of).max().unwrap_or(0) + 1;
        let ns = str_at(&d, "/metadata/namespace").to_string();
        let mut ro = Rollout { d, new: None, old };
        if let Some(rs) = existing {
            let mut updated = rs.clone();
            let mut changed = set_new_rs_annotations(&ro.d, &mut updated, revision);
            let min_ready =
                ro.d.pointer("/spec/minReadySeconds")
                    .cloned()
                    .unwrap_or(json!(0));
            if updated
                .pointer("/spec/minReadySeconds")
                .unwrap_or(&json!(0))
                != &min_ready
            {
                updated["spec"]["minReadySeconds"] = min_ready;
                changed = true;
            }
            let rs = if changed {
                self.client
                    .update(replicaset::RESOURCE, &ns, updated)
                    .await?
            } else {
                rs
            };
            self.sync_revision(&mut ro.d, &rs).await?;
            if has_progress_deadline(&ro.d)
                && ro
                    .d
                    .get("status")
                    .and_then(|s| condition_of(s, "Progressing"))
                    .is_none()
            {
                let msg = format!("Found new replica set {:?}", str_at(&rs, "/metadata/name"));
                let mut status = ro.d.get("status").cloned().unwrap_or_else(|| json!({}));
                let now = crate::clock::now_rfc3339();
                set_condition(
                    &mut status,
                    condition("Progressing", "True", "FoundNewReplicaSet", &msg, &now),
                );
                self.write_status(&mut ro.d, status).await?;
            }
            ro.new = Some(rs);
            return Ok(ro);
        }
        if !create {
            return Ok(ro);
        }
        let collisions =
            ro.d.pointer("/status/collisionCount")
                .and_then(Value::as_i64)
                .unwrap_or(0);
        let template =
            ro.d.pointer("/spec/template")
                .cloned()
                .unwrap_or(Value::Null);
        let hash = pod_template_hash(&template, collisions);
        let total: i32 = ro.old.iter().map(replicas_of).sum();
        let size = if is_rolling(&ro.d) {
            rolling_new_replicas(replicas_of(&ro.d), max_surge(&ro.d), total, 0)
        } else {
            replicas_of(&ro.d)
        };
        let rs = new_replica_set(&ro.d, &hash, size, revision);
        let rs_name = str_at(&rs, "/metadata/name").to_string();
        let created = match self.client.create(replicaset::RESOURCE, &ns, rs).await {
            Ok(c) => c,
            Err(ApiError::AlreadyExists { .. }) => {
                // Someone else's ReplicaSet by that name, or one with another template: a hash
                // collision. Count it, so that the next attempt uses another name.
                let mut status = ro.d.get("status").cloned().unwrap_or_else(|| json!({}));
                status["collisionCount"] = json!(collisions + 1);
                self.write_status(&mut ro.d, status).await?;
                return Err(ApiError::Conflict {
                    resource: "replicasets.apps".into(),
                    name: rs_name,
                    detail: "a ReplicaSet with this name and another template exists; retrying with the next collision count".into(),
                });
            }
            Err(e) => return Err(e),
        };
        if size > 0 {
            let msg = format!("Scaled up replica set {rs_name} to {size} from 0");
            self.event(&ro.d, "ScalingReplicaSet", &msg).await;
        }
        self.sync_revision(&mut ro.d, &created).await?;
        if has_progress_deadline(&ro.d) {
            let mut status = ro.d.get("status").cloned().unwrap_or_else(|| json!({}));
            let now = crate::clock::now_rfc3339();
            set_condition(
                &mut status,
                condition(
                    "Progressing",
                    "True",
                    "NewReplicaSetCreated",
                    &format!("Created new replica set {rs_name:?}"),
                    &now,
                ),
            );
            self.write_status(&mut ro.d, status).await?;
        }
        ro.new = Some(created);
        Ok(ro)
    }

    /// Gives the Deployment its new ReplicaSet's revision annotation.
    async fn sync_revision(&self, d: &mut Value, new: &Value) -> Result<(), ApiError> {
        let Some(rev) = annotation(new, REVISION).map(str::to_string) else {
            return Ok(());
        };
        if annotation(d, REVISION) == Some(rev.as_str()) {
            return Ok(());
        }
        let mut updated = d.clone();
        set_annotation(&mut updated, REVISION, &rev);
        let ns = str_at(d, "/metadata/namespace").to_string();
        *d = self.client.update(RESOURCE, &ns, updated).await?;
        Ok(())
    }

    /// Whether `spec.replicas` differs from what an active ReplicaSet was last sized for.
    fn is_scaling_event(ro: &Rollout) -> bool {
        let want = replicas_of(&ro.d).to_string();
        ro.all().iter().any(|rs| {
            replicas_of(rs) > 0 && annotation(rs, DESIRED_REPLICAS).is_some_and(|a| a != want)
        })
    }

    /// Upstream's `scale`: resizes the active ReplicaSets after `spec.replicas` changed.
    async fn scale_to_spec(&self, ro: &mut Rollout) -> Result<(), ApiError> {
        let d = ro.d.clone();
        let replicas = replicas_of(&d);
        let new_uid = ro
            .new
            .as_ref()
            .map(|n| str_at(n, "/metadata/uid").to_string());
        let saturated = ro.new.as_ref().is_some_and(|n| {
            annotation(n, DESIRED_REPLICAS) == Some(replicas.to_string().as_str())
                && int_at(n, "/status/availableReplicas") == replicas
                && replicas_of(n) == replicas
        });
        // Oldest first, the new one last.
        let mut all: Vec<Value> = ro.old.drain(..).chain(ro.new.take()).collect();
        let is_new = |rs: &Value| new_uid.as_deref() == Some(str_at(rs, "/metadata/uid"));
        let active: Vec<usize> = (0..all.len())
            .filter(|i| replicas_of(&all[*i]) > 0)
            .collect();
        let sizes: Vec<(usize, i32)> = if active.len() <= 1 {
            // One active ReplicaSet (or none: the new one, else the newest) takes it all.
            let target = active
                .first()
                .copied()
                .or_else(|| all.iter().position(is_new))
                .or(all.len().checked_sub(1));
            target.map(|i| vec![(i, replicas)]).unwrap_or_default()
        } else if saturated {
            active
                .iter()
                .map(|&i| (i, if is_new(&all[i]) { replicas } else { 0 }))
                .collect()
        } else if is_rolling(&d) {
            let new_index = active.iter().position(|&i| is_new(&all[i]));
            let current: Vec<i32> = active.iter().map(|&i| replicas_of(&all[i])).collect();
            let plan = scale_plan(&current, new_index, replicas + max_surge(&d));
            active.iter().copied().zip(plan).collect()
        } else {
            vec![]
        };
        let mut result = Ok(());
        for (i, size) in sizes {
            match self.scale(&d, &all[i], size).await {
                Ok((_, written)) => all[i] = written,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        for rs in all {
            if is_new(&rs) {
                ro.new = Some(rs);
            } else {
                ro.old.push(rs);
            }
        }
        result
    }

    /// Deletes old ReplicaSets beyond `revisionHistoryLimit`, oldest revision first, if they
    /// are scaled to 0 and have no pod left.
    async fn cleanup(&self, ro: &Rollout) -> Result<(), ApiError> {
        let Some(limit) =
            ro.d.pointer("/spec/revisionHistoryLimit")
                .and_then(Value::as_i64)
        else {
            return Ok(());
        };
        let mut cleanable: Vec<&Value> = ro
            .old
            .iter()
            .filter(|rs| !owned::is_terminating(&meta_of(rs)))
            .collect();
        let excess = cleanable.len() as i64 - limit;
        if excess <= 0 {
            return Ok(());
        }
        cleanable.sort_by_key(|rs| (revision_of(rs), created_at(rs)));
        let ns = str_at(&ro.d, "/metadata/namespace");
        let pods = self.client.list("pods", Some(ns)).await?;
        for rs in cleanable.into_iter().take(excess as usize) {
            let uid = str_at(rs, "/metadata/uid");
            let busy = int_at(rs, "/status/replicas") != 0
                || replicas_of(rs) != 0
                || rs.pointer("/metadata/generation").and_then(Value::as_i64)
                    > rs.pointer("/status/observedGeneration")
                        .and_then(Value::as_i64)
                || pods
                    .iter()
                    .any(|p| owned::is_controlled_by(&meta_of(p), uid));
            if busy {
                continue;
            }
            match self
                .client
                .delete(
                    replicaset::RESOURCE,
                    ns,
                    str_at(rs, "/metadata/name"),
                    Propagation::Background,
                    Some(uid),
                )
                .await
            {
                Ok(()) | Err(ApiError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Re-reads the Deployment's ReplicaSets after this pass's writes, for the status.
    async fn refresh(&self, ro: &mut Rollout) -> Result<(), ApiError> {
        let ns = str_at(&ro.d, "/metadata/namespace");
        let uid = str_at(&ro.d, "/metadata/uid");
        let fresh: Vec<Value> = self
            .client
            .list(replicaset::RESOURCE, Some(ns))
            .await?
            .into_iter()
            .filter(|rs| owned::is_controlled_by(&meta_of(rs), uid))
            .collect();
        let new_uid = ro
            .new
            .as_ref()
            .map(|n| str_at(n, "/metadata/uid").to_string());
        let (new, mut old): (Vec<Value>, Vec<Value>) = fresh
            .into_iter()
            .partition(|rs| Some(str_at(rs, "/metadata/uid").to_string()) == new_uid);
        old.sort_by_key(created_at);
        ro.new = new.into_iter().next();
        ro.old = old;
        Ok(())
    }

    /// Writes the status with the rollout conditions; returns when to look again.
    async fn sync_rollout_status(&self, ro: &mut Rollout) -> Result<Requeue, ApiError> {
        self.refresh(ro).await?;
        let (status, requeue) =
            rollout_conditions(&ro.d, &ro.all(), ro.new.as_ref(), now_seconds());
        let mut d = ro.d.clone();
        self.write_status(&mut d, status).await?;
        ro.d = d;
        Ok(Requeue::after_seconds(requeue))
    }

    /// Writes the status without touching `Progressing` (paused, scaling, deleting).
    async fn sync_status_only(&self, ro: &mut Rollout) -> Result<Requeue, ApiError> {
        self.refresh(ro).await?;
        let status = calculate_status(
            &ro.d,
            &ro.all(),
            ro.new.as_ref(),
            &crate::clock::now_rfc3339(),
        );
        let mut d = ro.d.clone();
        self.write_status(&mut d, status).await?;
        ro.d = d;
        Ok(Requeue::No)
    }

    /// Upstream's `checkPausedConditions`: `Progressing` says when a Deployment is paused or
    /// resumed (unless it already timed out).
    async fn check_paused(&self, d: &mut Value) -> Result<(), ApiError> {
        if !has_progress_deadline(d) {
            return Ok(());
        }
        let status = d.get("status").cloned().unwrap_or_else(|| json!({}));
        let cond = condition_of(&status, "Progressing");
        if cond.is_some_and(|c| c["reason"] == "ProgressDeadlineExceeded") {
            return Ok(());
        }
        let paused_cond = cond.is_some_and(|c| c["reason"] == "DeploymentPaused");
        let paused = d.pointer("/spec/paused").and_then(Value::as_bool) == Some(true);
        let now = crate::clock::now_rfc3339();
        let cond = if paused && !paused_cond {
            condition(
                "Progressing",
                "Unknown",
                "DeploymentPaused",
                "Deployment is paused",
                &now,
            )
        } else if !paused && paused_cond {
            condition(
                "Progressing",
                "Unknown",
                "DeploymentResumed",
                "Deployment is resumed",
                &now,
            )
        } else {
            return Ok(());
        };
        let mut status = status;
        set_condition(&mut status, cond);
        self.write_status(d, status).await
    }

    async fn rollout_rolling(&self, d: Value, owned: Vec<Value>) -> Result<Requeue, ApiError> {
        let mut ro = self.split(d, owned, true).await?;
        let d = ro.d.clone();
        let replicas = replicas_of(&d);
        let total: i32 = ro.all().iter().map(|rs| replicas_of(rs)).sum();
        if let Some(new) = ro.new.clone() {
            let current = replicas_of(&new);
            let target = if current > replicas {
                replicas
            } else {
                rolling_new_replicas(replicas, max_surge(&d), total, current)
            };
            let (scaled, written) = self.scale(&d, &new, target).await?;
            ro.new = Some(written);
            if scaled {
                return self.sync_rollout_status(&mut ro).await;
            }
        }
        let new_sizes = ro.new.as_ref().map_or(
            Sizes {
                replicas: 0,
                available: 0,
            },
            sizes_of,
        );
        let old_sizes: Vec<Sizes> = ro.old.iter().map(sizes_of).collect();
        let targets = scale_down_old(replicas, max_unavailable(&d), new_sizes, &old_sizes);
        let mut scaled_down = false;
        for (rs, size) in ro.old.iter_mut().zip(targets) {
            if size != replicas_of(rs) {
                let (scaled, written) = self.scale(&d, rs, size).await?;
                scaled_down |= scaled;
                *rs = written;
            }
        }
        if scaled_down {
            return self.sync_rollout_status(&mut ro).await;
        }
        let status = calculate_status(&d, &ro.all(), ro.new.as_ref(), "");
        if deployment_complete(&d, &status) {
            self.cleanup(&ro).await?;
        }
        self.sync_rollout_status(&mut ro).await
    }

    async fn rollout_recreate(&self, d: Value, owned: Vec<Value>) -> Result<Requeue, ApiError> {
        let mut ro = self.split(d, owned, false).await?;
        let d = ro.d.clone();
        let mut scaled_down = false;
        for rs in ro.old.iter_mut().filter(|rs| replicas_of(rs) > 0) {
            let (scaled, written) = self.scale(&d, rs, 0).await?;
            scaled_down |= scaled;
            *rs = written;
        }
        if scaled_down {
            return self.sync_rollout_status(&mut ro).await;
        }
        // Wait until no pod of an old ReplicaSet is left, terminating ones included.
        let old_uids: Vec<&str> = ro
            .old
            .iter()
            .map(|rs| str_at(rs, "/metadata/uid"))
            .collect();
        let old_running = ro.old.iter().any(|rs| int_at(rs, "/status/replicas") > 0)
            || self
                .client
                .list("pods", Some(str_at(&d, "/metadata/namespace")))
                .await?
                .iter()
                .any(|p| {
                    controller_of(&meta_of(p)).is_some_and(|r| old_uids.contains(&r.uid.as_str()))
                        && !matches!(str_at(p, "/status/phase"), "Succeeded" | "Failed")
                });
        if old_running {
            return self.sync_rollout_status(&mut ro).await;
        }
        if ro.new.is_none() {
            let owned: Vec<Value> = ro.old.clone();
            ro = self.split(d.clone(), owned, true).await?;
        }
        let d = ro.d.clone();
        if let Some(new) = ro.new.clone() {
            let (_, written) = self.scale(&d, &new, replicas_of(&d)).await?;
            ro.new = Some(written);
        }
        let status = calculate_status(&d, &ro.all(), ro.new.as_ref(), "");
        if deployment_complete(&d, &status) {
            self.cleanup(&ro).await?;
        }
        self.sync_rollout_status(&mut ro).await
    }
}

#[async_trait]
impl Reconciler for DeploymentController {
    fn name(&self) -> &'static str {
        "deployment"
    }

    async fn on_permanent_error(&self, key: &ObjectKey, error: &ControllerError) {
        owned::report_permanent_error(&self.client, key, error, COMPONENT).await;
    }

    async fn keys_for_event(&self, event: &Event) -> Vec<ObjectKey> {
        let ns = &event.key.namespace;
        let mut keys: Vec<ObjectKey> = Vec::new();
        let mut push = |name: &str| {
            let k = ObjectKey::new(RESOURCE, ns.as_str(), name);
            if !keys.contains(&k) {
                keys.push(k);
            }
        };
        match event.key.resource.as_str() {
            RESOURCE => {
                self.index.observe(event);
                push(&event.key.name);
            }
            replicaset::RESOURCE => {
                for rs in [&event.value, &event.previous].into_iter().flatten() {
                    match controller_of(&meta_of(rs)) {
                        Some(r) if r.kind == "Deployment" => push(&r.name),
                        Some(_) => {}
                        None => {
                            for n in self.index.matching(ns, rs) {
                                push(&n);
                            }
                        }
                    }
                }
            }
            // A pod gone: a Recreate rollout may be waiting for exactly that.
            "pods" if event.value.is_none() => {
                let pod_meta = event.previous.as_ref().map(meta_of).unwrap_or_default();
                let rs_ref = controller_of(&pod_meta).filter(|r| r.kind == "ReplicaSet");
                if let Some(r) = rs_ref {
                    if let Ok(Some(rs)) = self.client.get(replicaset::RESOURCE, ns, &r.name).await {
                        let rs_meta = meta_of(&rs);
                        if let Some(d) = controller_of(&rs_meta).filter(|d| d.kind == "Deployment")
                        {
                            push(&d.name);
                        }
                    }
                }
            }
            _ => {}
        }
        keys
    }

    async fn all_keys(&self) -> Vec<ObjectKey> {
        let Some(all) = self.client.list_for_resync(RESOURCE).await else {
            return Vec::new();
        };
        self.index.replace_all(&all);
        owned::keys_of(RESOURCE, &all)
    }

    async fn reconcile(&self, key: &ObjectKey) -> Result<Requeue, ControllerError> {
        let Some(mut d) = self.client.get(RESOURCE, &key.namespace, &key.name).await? else {
            return Ok(Requeue::No);
        };
        let typed_d: Deployment = typed(&d)?;
        let selector = owner_selector(
            "Deployment",
            &typed_d.metadata,
            typed_d.spec.as_ref().map(|s| &s.selector),
        )?;
        let candidates = self
            .client
            .list(replicaset::RESOURCE, Some(&key.namespace))
            .await?;
        let owned = claim::claim_all(
            &self.client,
            replicaset::RESOURCE,
            &typed_d,
            &selector,
            candidates,
        )
        .await?;
        if owned::is_terminating(&typed_d.metadata) {
            let mut ro = self.split(d, owned, false).await?;
            return Ok(self.sync_status_only(&mut ro).await?);
        }
        self.check_paused(&mut d).await?;
        let paused = d.pointer("/spec/paused").and_then(Value::as_bool) == Some(true);
        let mut ro = self.split(d, owned, false).await?;
        if paused || Self::is_scaling_event(&ro) {
            self.scale_to_spec(&mut ro).await?;
            if paused {
                self.cleanup(&ro).await?;
            }
            return Ok(self.sync_status_only(&mut ro).await?);
        }
        let owned: Vec<Value> = ro.old.into_iter().chain(ro.new).collect();
        if is_rolling(&ro.d) {
            Ok(self.rollout_rolling(ro.d, owned).await?)
        } else {
            Ok(self.rollout_recreate(ro.d, owned).await?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(replicas: i32, surge: Value, unavailable: Value) -> Value {
        json!({"metadata": {"name": "web", "namespace": "default", "uid": "d-1", "generation": 2},
            "spec": {"replicas": replicas, "progressDeadlineSeconds": 600,
                "strategy": {"type": "RollingUpdate",
                    "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}},
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "c", "image": "nginx:1.26"}]}}}})
    }

    /// One pass of a rolling update where every pod becomes available at once: the sizes of
    /// the new and old ReplicaSets after the pass.
    fn pass(d: &Value, new: i32, old: i32) -> (i32, i32) {
        let replicas = replicas_of(d);
        let next_new = rolling_new_replicas(replicas, max_surge(d), new + old, new);
        if next_new != new {
            return (next_new, old);
        }
        let sizes = scale_down_old(
            replicas,
            max_unavailable(d),
            Sizes {
                replicas: new,
                available: new,
            },
            &[Sizes {
                replicas: old,
                available: old,
            }],
        );
        (new, sizes[0])
    }

    #[test]
    fn surge_one_unavailable_zero_replaces_three_pods_one_at_a_time() {
        let d = deployment(3, json!(1), json!(0));
        assert_eq!((max_surge(&d), max_unavailable(&d)), (1, 0));
        let mut state = (0, 3);
        let mut steps = vec![state];
        while state != (3, 0) {
            state = pass(&d, state.0, state.1);
            // Never more than replicas + surge pods, never fewer than replicas available.
            assert!(state.0 + state.1 <= 4, "{steps:?}");
            assert!(state.0 + state.1 >= 3, "{steps:?}");
            steps.push(state);
            assert!(steps.len() < 20, "no convergence: {steps:?}");
        }
        assert_eq!(
            steps,
            [(0, 3), (1, 3), (1, 2), (2, 2), (2, 1), (3, 1), (3, 0)]
        );
    }

    #[test]
    fn default_quarter_bounds_round_surge_up_and_unavailability_down() {
        let d = deployment(3, json!("25%"), json!("25%"));
        assert_eq!((max_surge(&d), max_unavailable(&d)), (1, 0));
        let d = deployment(10, json!("25%"), json!("25%"));
        assert_eq!((max_surge(&d), max_unavailable(&d)), (3, 2));
        let d = deployment(4, json!(0), json!("10%"));
        // Both resolve to 0: one pod may be unavailable, or nothing could move.
        assert_eq!((max_surge(&d), max_unavailable(&d)), (0, 1));
        let mut recreate = deployment(4, json!(1), json!(1));
        recreate["spec"]["strategy"] = json!({"type": "Recreate"});
        assert_eq!((max_surge(&recreate), max_unavailable(&recreate)), (0, 0));
    }

    #[test]
    fn old_replicas_shrink_only_as_far_as_availability_allows() {
        // New pods not yet available: nothing old may go.
        let sizes = scale_down_old(
            3,
            0,
            Sizes {
                replicas: 1,
                available: 0,
            },
            &[Sizes {
                replicas: 3,
                available: 3,
            }],
        );
        assert_eq!(sizes, [3]);
        // Unhealthy old replicas go first, before any healthy one, oldest ReplicaSet first.
        let sizes = scale_down_old(
            4,
            1,
            Sizes {
                replicas: 1,
                available: 1,
            },
            &[
                Sizes {
                    replicas: 2,
                    available: 1,
                },
                Sizes {
                    replicas: 2,
                    available: 2,
                },
            ],
        );
        // all = 5, min available = 3, max scaled down = 2: one unhealthy from the oldest,
        // then available 4 - 3 = 1 more, from the oldest again.
        assert_eq!(sizes, [0, 2]);
        // maxUnavailable lets old pods go before new ones are up.
        let sizes = scale_down_old(
            4,
            2,
            Sizes {
                replicas: 0,
                available: 0,
            },
            &[Sizes {
                replicas: 4,
                available: 4,
            }],
        );
        assert_eq!(sizes, [2]);
    }

    #[test]
    fn scaling_mid_rollout_adds_to_the_new_and_takes_from_the_oldest() {
        assert_eq!(scale_plan(&[2, 2], Some(1), 6), [2, 4]);
        assert_eq!(scale_plan(&[2, 1, 2], Some(2), 2), [0, 0, 2]);
        assert_eq!(scale_plan(&[3, 2], None, 7), [3, 4]);
        assert_eq!(scale_plan(&[3, 2], Some(1), 5), [3, 2]);
    }

    #[test]
    fn replica_sets_carry_hash_revision_and_the_change_cause() {
        let mut d = deployment(3, json!(1), json!(0));
        d["metadata"]["annotations"] = json!({"kubernetes.io/change-cause": "v2",
            "kubectl.kubernetes.io/last-applied-configuration": "{}"});
        let hash = pod_template_hash(&d["spec"]["template"], 0);
        let rs = new_replica_set(&d, &hash, 1, 2);
        assert_eq!(rs["metadata"]["name"], format!("web-{hash}"));
        assert_eq!(
            rs["spec"]["selector"]["matchLabels"][HASH_LABEL],
            json!(hash)
        );
        assert_eq!(
            rs["spec"]["template"]["metadata"]["labels"][HASH_LABEL],
            json!(hash)
        );
        assert_eq!(rs["metadata"]["labels"]["app"], "web");
        let anns = &rs["metadata"]["annotations"];
        assert_eq!(anns[REVISION], "2");
        assert_eq!(anns[DESIRED_REPLICAS], "3");
        assert_eq!(anns[MAX_REPLICAS], "4");
        assert_eq!(anns["kubernetes.io/change-cause"], "v2");
        assert!(anns
            .get("kubectl.kubernetes.io/last-applied-configuration")
            .is_none());
        assert!(owned::is_controlled_by(&meta_of(&rs), "d-1"));
        assert!(runs_template(&d, &rs));
        // The hash ignores the label, and a collision changes it.
        assert_eq!(pod_template_hash(&rs["spec"]["template"], 0), hash);
        assert_ne!(pod_template_hash(&d["spec"]["template"], 1), hash);
        // Brought back by a rollback: the next revision, the old one remembered.
        let mut back = rs.clone();
        assert!(set_new_rs_annotations(&d, &mut back, 5));
        assert_eq!(back["metadata"]["annotations"][REVISION], "5");
        assert_eq!(back["metadata"]["annotations"][REVISION_HISTORY], "2");
        assert!(!set_new_rs_annotations(&d, &mut back, 5));
        // What `kubectl rollout undo` patches back is the same template.
        let mut undone = d.clone();
        undone["spec"]["template"]["metadata"]["creationTimestamp"] = Value::Null;
        undone["spec"]["template"]["spec"]["containers"][0]["resources"] = json!({});
        assert!(runs_template(&undone, &rs));
        assert_eq!(pod_template_hash(&undone["spec"]["template"], 0), hash);
        let mut other = d.clone();
        other["spec"]["template"]["spec"]["containers"][0]["image"] = json!("nginx:1.27");
        assert!(!runs_template(&other, &rs));
    }

    fn rs(name: &str, spec: i32, replicas: i32, ready: i32, available: i32) -> Value {
        json!({"metadata": {"name": name},
            "spec": {"replicas": spec},
            "status": {"replicas": replicas, "readyReplicas": ready, "availableReplicas": available}})
    }

    #[test]
    fn status_and_conditions_follow_the_rollout() {
        let t = 1_735_689_600; // 2025-01-01T00:00:00Z
        let mut d = deployment(3, json!(1), json!(0));
        let new = rs("web-new", 1, 1, 0, 0);
        let old = rs("web-old", 3, 3, 3, 3);
        d["status"] = json!({"conditions": [{"type": "Progressing", "status": "True",
            "reason": "NewReplicaSetCreated", "message": "Created new replica set \"web-new\"",
            "lastUpdateTime": "2025-01-01T00:00:00Z", "lastTransitionTime": "2025-01-01T00:00:00Z"}]});
        let (status, requeue) = rollout_conditions(&d, &[&old, &new], Some(&new), t + 10);
        assert_eq!(status["observedGeneration"], 2);
        assert_eq!(status["replicas"], 4);
        assert_eq!(status["updatedReplicas"], 1);
        assert_eq!(status["readyReplicas"], 3);
        assert_eq!(status["availableReplicas"], 3);
        assert_eq!(status["unavailableReplicas"], 1);
        let available = condition_of(&status, "Available").unwrap();
        assert_eq!(available["reason"], "MinimumReplicasAvailable");
        assert_eq!(available["message"], "Deployment has minimum availability.");
        let progressing = condition_of(&status, "Progressing").unwrap();
        assert_eq!(progressing["reason"], "ReplicaSetUpdated");
        assert_eq!(
            progressing["message"],
            "ReplicaSet \"web-new\" is progressing."
        );
        assert_eq!(progressing["lastTransitionTime"], "2025-01-01T00:00:00Z");
        assert_eq!(progressing["lastUpdateTime"], "2025-01-01T00:00:10Z");
        assert_eq!(requeue, Some(601));

        // No progress past the deadline: timed out, and kubectl rollout status fails.
        d["status"] = status.clone();
        let (stuck, requeue) = rollout_conditions(&d, &[&old, &new], Some(&new), t + 700);
        let progressing = condition_of(&stuck, "Progressing").unwrap();
        assert_eq!(progressing["reason"], "ProgressDeadlineExceeded");
        assert_eq!(progressing["status"], "False");
        assert_eq!(
            progressing["message"],
            "ReplicaSet \"web-new\" has timed out progressing."
        );
        assert_eq!(requeue, None);

        // Complete: every replica updated and available.
        let done = rs("web-new", 3, 3, 3, 3);
        let (status, requeue) = rollout_conditions(&d, &[&done], Some(&done), t + 20);
        assert!(deployment_complete(&d, &status));
        let progressing = condition_of(&status, "Progressing").unwrap();
        assert_eq!(progressing["reason"], "NewReplicaSetAvailable");
        assert_eq!(
            progressing["message"],
            "ReplicaSet \"web-new\" has successfully progressed."
        );
        assert_eq!(requeue, None);

        // Below minimum availability.
        let down = rs("web-new", 3, 3, 1, 1);
        let status = calculate_status(&d, &[&down], Some(&down), "2025-01-01T00:00:00Z");
        let available = condition_of(&status, "Available").unwrap();
        assert_eq!(available["status"], "False");
        assert_eq!(available["reason"], "MinimumReplicasUnavailable");
    }
}
