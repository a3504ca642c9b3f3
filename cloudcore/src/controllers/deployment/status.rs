//! A Deployment's status: replica counts summed over its ReplicaSets and the `Available` and
//! `Progressing` conditions with upstream's reasons and messages (including
//! `ProgressDeadlineExceeded`), written only when they changed; also pausing and resuming.

use super::*;

/// Now, as a condition's time.
pub(super) fn now_time() -> Time {
    time_at(now_seconds())
}

/// `seconds` since the epoch as a condition's time (the epoch when out of range).
pub(super) fn time_at(seconds: i64) -> Time {
    Time(k8s_openapi::jiff::Timestamp::from_second(seconds.max(0)).unwrap_or_default())
}

/// A Deployment condition as Kubernetes writes it.
pub(super) fn condition(
    kind: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: Time,
) -> DeploymentCondition {
    DeploymentCondition {
        type_: kind.to_string(),
        status: status.to_string(),
        last_update_time: Some(now.clone()),
        last_transition_time: Some(now),
        reason: Some(reason.to_string()),
        message: Some(message.to_string()),
    }
}

pub(super) fn condition_of<'a>(
    status: &'a DeploymentStatus,
    kind: &str,
) -> Option<&'a DeploymentCondition> {
    status.conditions.as_ref()?.iter().find(|c| c.type_ == kind)
}

/// Upstream's `SetDeploymentCondition`: the same status and reason change nothing; the same
/// status keeps its transition time; the condition moves to the end.
pub(super) fn set_condition(status: &mut DeploymentStatus, mut cond: DeploymentCondition) {
    if let Some(cur) = condition_of(status, &cond.type_) {
        if cur.status == cond.status && cur.reason == cond.reason {
            return;
        }
        if cur.status == cond.status {
            cond.last_transition_time = cur.last_transition_time.clone();
        }
    }
    remove_condition(status, &cond.type_);
    status.conditions.get_or_insert_with(Vec::new).push(cond);
}

pub(super) fn remove_condition(status: &mut DeploymentStatus, kind: &str) {
    if let Some(cs) = status.conditions.as_mut() {
        cs.retain(|c| c.type_ != kind);
    }
}

pub(super) fn has_progress_deadline(d: &Deployment) -> bool {
    d.spec
        .as_ref()
        .and_then(|s| s.progress_deadline_seconds)
        .is_some_and(|s| s != i32::MAX)
}

fn sum(rs: &[&ReplicaSet], count: impl Fn(&ReplicaSetStatus) -> i32) -> i32 {
    rs.iter().map(|r| r.status.as_ref().map_or(0, &count)).sum()
}

/// Upstream's `calculateStatus`: counts over all ReplicaSets (`updatedReplicas` over the new
/// one) and the `Available` condition, set at `now` (seconds since the epoch); other
/// conditions are kept.
pub fn calculate_status(
    d: &Deployment,
    all: &[&ReplicaSet],
    new: Option<&ReplicaSet>,
    now: i64,
) -> DeploymentStatus {
    let available = sum(all, |s| s.available_replicas.unwrap_or(0));
    let total: i32 = all.iter().map(|r| replicas_of(*r)).sum();
    let stored = d.status.as_ref();
    let mut status = DeploymentStatus {
        observed_generation: Some(d.metadata.generation.unwrap_or(0)),
        replicas: Some(sum(all, |s| s.replicas)),
        updated_replicas: Some(new.map_or(0, |n| rs_status(n).replicas)),
        ready_replicas: Some(sum(all, |s| s.ready_replicas.unwrap_or(0))),
        available_replicas: Some(available),
        unavailable_replicas: Some((total - available).max(0)),
        collision_count: stored.and_then(|s| s.collision_count),
        conditions: stored.and_then(|s| s.conditions.clone()),
        terminating_replicas: None,
    };
    let cond = if available >= replicas_of(d) - max_unavailable(d) {
        condition(
            "Available",
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.",
            time_at(now),
        )
    } else {
        condition(
            "Available",
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.",
            time_at(now),
        )
    };
    set_condition(&mut status, cond);
    status
}

/// Whether the rollout is complete (upstream's `DeploymentComplete`).
pub fn deployment_complete(d: &Deployment, status: &DeploymentStatus) -> bool {
    let r = Some(replicas_of(d));
    status.updated_replicas == r
        && status.replicas == r
        && status.available_replicas == r
        && status.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0)
}

/// Whether `new` shows progress over the Deployment's current status (upstream's
/// `DeploymentProgressing`).
pub(super) fn deployment_progressing(d: &Deployment, new: &DeploymentStatus) -> bool {
    let old = d.status.clone().unwrap_or_default();
    let n = |v: Option<i32>| v.unwrap_or(0);
    let old_old = n(old.replicas) - n(old.updated_replicas);
    let new_old = n(new.replicas) - n(new.updated_replicas);
    n(new.updated_replicas) > n(old.updated_replicas)
        || new_old < old_old
        || n(new.ready_replicas) > n(old.ready_replicas)
        || n(new.available_replicas) > n(old.available_replicas)
}

/// The `Progressing` condition's last update plus the deadline, in seconds since the epoch.
pub(super) fn progress_deadline_at(d: &Deployment, cond: &DeploymentCondition) -> i64 {
    let from = cond
        .last_update_time
        .as_ref()
        .map_or(0, |t| t.0.as_second());
    let deadline = d.spec.as_ref().and_then(|s| s.progress_deadline_seconds);
    from + i64::from(deadline.unwrap_or(600))
}

/// Upstream's `syncRolloutStatus` on top of [`calculate_status`]: sets `Progressing` to
/// `NewReplicaSetAvailable`, `ReplicaSetUpdated` or `ProgressDeadlineExceeded`. Returns the
/// status and, while a rollout is in progress, the seconds until its deadline should be
/// checked again.
pub fn rollout_conditions(
    d: &Deployment,
    all: &[&ReplicaSet],
    new: Option<&ReplicaSet>,
    now: i64,
) -> (DeploymentStatus, Option<i64>) {
    let mut status = calculate_status(d, all, new, now);
    if !has_progress_deadline(d) {
        remove_condition(&mut status, "Progressing");
        return (status, None);
    }
    let current = progressing(d).cloned();
    let reason_is = |c: &DeploymentCondition, r: &str| c.reason.as_deref() == Some(r);
    let complete_before = status.replicas.unwrap_or(0) == status.updated_replicas.unwrap_or(0)
        && current
            .as_ref()
            .is_some_and(|c| reason_is(c, "NewReplicaSetAvailable"));
    let named = |fallback: String, rs_msg: &dyn Fn(&str) -> String| match new {
        Some(n) => rs_msg(name(&n.metadata)),
        None => fallback,
    };
    let name = name(&d.metadata);
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
                    time_at(now),
                ),
            );
        } else if deployment_progressing(d, &status) {
            let msg = named(format!("Deployment {name:?} is progressing."), &|rs| {
                format!("ReplicaSet {rs:?} is progressing.")
            });
            let mut cond = condition(
                "Progressing",
                "True",
                "ReplicaSetUpdated",
                &msg,
                time_at(now),
            );
            if let Some(cur) = &current {
                if cur.status == "True" {
                    cond.last_transition_time = cur.last_transition_time.clone();
                }
                remove_condition(&mut status, "Progressing");
            }
            set_condition(&mut status, cond);
        } else if current.as_ref().is_some_and(|c| {
            reason_is(c, "ProgressDeadlineExceeded")
                || (!reason_is(c, "NewReplicaSetAvailable") && progress_deadline_at(d, c) < now)
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
                    time_at(now),
                ),
            );
        }
    }
    // While in progress, look again when the deadline passes (upstream's
    // `requeueStuckDeployment`).
    let requeue = condition_of(&status, "Progressing")
        .filter(|c| {
            !deployment_complete(d, &status)
                && !reason_is(c, "ProgressDeadlineExceeded")
                && !reason_is(c, "NewReplicaSetAvailable")
        })
        .map(|c| (progress_deadline_at(d, c) - now + 1).max(1));
    (status, requeue)
}

impl DeploymentController {
    /// Writes `status` unless the stored one is the same.
    pub(super) async fn write_status(
        &self,
        d: &mut Obj<Deployment>,
        status: DeploymentStatus,
    ) -> Result<(), ControllerError> {
        let status = serde_json::to_value(status).map_err(|e| ControllerError::Invalid {
            key: format!(
                "Deployment {}/{}",
                namespace(&d.t.metadata),
                name(&d.t.metadata)
            ),
            reason: format!("the status does not encode: {e}"),
        })?;
        if d.raw.get("status") == Some(&status) {
            return Ok(());
        }
        let mut updated = d.raw.clone();
        updated["status"] = status;
        let ns = namespace(&d.t.metadata).to_string();
        *d = Obj::new(self.client.update_status(RESOURCE, &ns, updated).await?)?;
        Ok(())
    }

    /// Re-reads the Deployment's ReplicaSets after this pass's writes (from the cache, once
    /// it caught up with them), for the status.
    pub(super) async fn refresh(&self, ro: &mut Rollout) -> Result<(), ControllerError> {
        self.informers.synced().await?;
        let d_uid = uid(&ro.d.t.metadata);
        let fresh: Vec<Rs> = self
            .informers
            .replicasets
            .controlled_by(d_uid)
            .iter()
            .map(|rs| Obj::new(Value::clone(rs)))
            .collect::<Result<_, _>>()?;
        let new_uid = ro.new.as_ref().map(|n| uid(&n.t.metadata).to_string());
        let (new, mut old): (Vec<Rs>, Vec<Rs>) = fresh
            .into_iter()
            .partition(|rs| Some(uid(&rs.t.metadata)) == new_uid.as_deref());
        old.sort_by_key(created_at);
        ro.new = new.into_iter().next();
        ro.old = old;
        Ok(())
    }

    /// Writes the status with the rollout conditions; returns when to look again.
    pub(super) async fn sync_rollout_status(
        &self,
        ro: &mut Rollout,
    ) -> Result<Requeue, ControllerError> {
        self.refresh(ro).await?;
        let new = ro.new.as_ref().map(|n| &n.t);
        let (status, requeue) = rollout_conditions(&ro.d.t, &ro.all_typed(), new, now_seconds());
        let mut d = ro.d.clone();
        self.write_status(&mut d, status).await?;
        ro.d = d;
        Ok(Requeue::after_seconds(requeue))
    }

    /// Writes the status without touching `Progressing` (paused, scaling, deleting).
    pub(super) async fn sync_status_only(
        &self,
        ro: &mut Rollout,
    ) -> Result<Requeue, ControllerError> {
        self.refresh(ro).await?;
        let new = ro.new.as_ref().map(|n| &n.t);
        let status = calculate_status(&ro.d.t, &ro.all_typed(), new, now_seconds());
        let mut d = ro.d.clone();
        self.write_status(&mut d, status).await?;
        ro.d = d;
        Ok(Requeue::No)
    }

    /// Upstream's `checkPausedConditions`: `Progressing` says when a Deployment is paused or
    /// resumed (unless it already timed out).
    pub(super) async fn check_paused(
        &self,
        d: &mut Obj<Deployment>,
    ) -> Result<(), ControllerError> {
        if !has_progress_deadline(&d.t) {
            return Ok(());
        }
        let cond = progressing(&d.t);
        let reason = cond.and_then(|c| c.reason.as_deref());
        if reason == Some("ProgressDeadlineExceeded") {
            return Ok(());
        }
        let paused_cond = reason == Some("DeploymentPaused");
        let paused = d.t.spec.as_ref().and_then(|s| s.paused) == Some(true);
        let cond = if paused && !paused_cond {
            condition(
                "Progressing",
                "Unknown",
                "DeploymentPaused",
                "Deployment is paused",
                now_time(),
            )
        } else if !paused && paused_cond {
            condition(
                "Progressing",
                "Unknown",
                "DeploymentResumed",
                "Deployment is resumed",
                now_time(),
            )
        } else {
            return Ok(());
        };
        let mut status = d.t.status.clone().unwrap_or_default();
        set_condition(&mut status, cond);
        self.write_status(d, status).await
    }
}
