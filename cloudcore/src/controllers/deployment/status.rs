//! A Deployment's status: replica counts summed over its ReplicaSets and the `Available` and
//! `Progressing` conditions with upstream's reasons and messages (including
//! `ProgressDeadlineExceeded`), written only when they changed; also pausing and resuming.

use super::*;

/// A Deployment condition as Kubernetes writes it.
pub(super) fn condition(kind: &str, status: &str, reason: &str, message: &str, now: &str) -> Value {
    json!({"type": kind, "status": status, "lastUpdateTime": now, "lastTransitionTime": now,
           "reason": reason, "message": message})
}

pub(super) fn condition_of<'a>(status: &'a Value, kind: &str) -> Option<&'a Value> {
    status
        .get("conditions")
        .and_then(Value::as_array)?
        .iter()
        .find(|c| c["type"] == kind)
}

/// Upstream's `SetDeploymentCondition`: the same status and reason change nothing; the same
/// status keeps its transition time; the condition moves to the end.
pub(super) fn set_condition(status: &mut Value, mut cond: Value) {
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

pub(super) fn remove_condition(status: &mut Value, kind: &str) {
    if let Some(cs) = status.get_mut("conditions").and_then(Value::as_array_mut) {
        cs.retain(|c| c["type"] != kind);
    }
}

pub(super) fn has_progress_deadline(d: &Value) -> bool {
    d.pointer("/spec/progressDeadlineSeconds")
        .and_then(Value::as_i64)
        .is_some_and(|s| s != i64::from(i32::MAX))
}

pub(super) fn sum(rs: &[&Value], pointer: &str) -> i32 {
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
pub(super) fn deployment_progressing(d: &Value, new: &Value) -> bool {
    let old = d.get("status").cloned().unwrap_or_else(|| json!({}));
    let old_old = int_at(&old, "/replicas") - int_at(&old, "/updatedReplicas");
    let new_old = int_at(new, "/replicas") - int_at(new, "/updatedReplicas");
    int_at(new, "/updatedReplicas") > int_at(&old, "/updatedReplicas")
        || new_old < old_old
        || int_at(new, "/readyReplicas") > int_at(&old, "/readyReplicas")
        || int_at(new, "/availableReplicas") > int_at(&old, "/availableReplicas")
}

/// The `Progressing` condition's last update plus the deadline, in seconds since the epoch.
pub(super) fn progress_deadline_at(d: &Value, cond: &Value) -> i64 {
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

impl DeploymentController {
    pub(super) async fn write_status(&self, d: &mut Value, status: Value) -> Result<(), ApiError> {
        if d.get("status") == Some(&status) {
            return Ok(());
        }
        let mut updated = d.clone();
        updated["status"] = status;
        let ns = str_at(d, "/metadata/namespace").to_string();
        *d = self.client.update_status(RESOURCE, &ns, updated).await?;
        Ok(())
    }

    /// Re-reads the Deployment's ReplicaSets after this pass's writes, for the status.
    pub(super) async fn refresh(&self, ro: &mut Rollout) -> Result<(), ApiError> {
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
    pub(super) async fn sync_rollout_status(&self, ro: &mut Rollout) -> Result<Requeue, ApiError> {
        self.refresh(ro).await?;
        let (status, requeue) =
            rollout_conditions(&ro.d, &ro.all(), ro.new.as_ref(), now_seconds());
        let mut d = ro.d.clone();
        self.write_status(&mut d, status).await?;
        ro.d = d;
        Ok(Requeue::after_seconds(requeue))
    }

    /// Writes the status without touching `Progressing` (paused, scaling, deleting).
    pub(super) async fn sync_status_only(&self, ro: &mut Rollout) -> Result<Requeue, ApiError> {
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
    pub(super) async fn check_paused(&self, d: &mut Value) -> Result<(), ApiError> {
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
}
