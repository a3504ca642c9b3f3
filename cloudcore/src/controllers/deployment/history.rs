//! A Deployment's history: one ReplicaSet per pod template (named by the template hash), the
//! revision annotations that make `kubectl rollout history|undo` work, picking the new
//! ReplicaSet (a rollback revives an old one with the next revision), and removing old
//! ReplicaSets beyond `revisionHistoryLimit`.

use super::*;

/// Copies the Deployment's annotations (but [`NOT_COPIED`]) to `rs`; whether anything changed.
pub(super) fn copy_annotations(d: &Deployment, rs: &mut Rs) -> bool {
    let mut changed = false;
    for (k, v) in d.metadata.annotations.iter().flatten() {
        if NOT_COPIED.contains(&k.as_str()) || rs.annotation(k) == Some(v.as_str()) {
            continue;
        }
        rs.set_annotation(k, v);
        changed = true;
    }
    changed
}

/// Sets `desired-replicas` and `max-replicas`; whether they changed.
pub(super) fn set_replicas_annotations(rs: &mut Rs, desired: i32, max: i32) -> bool {
    let mut changed = false;
    for (k, v) in [(DESIRED_REPLICAS, desired), (MAX_REPLICAS, max)] {
        let v = v.to_string();
        if rs.annotation(k) != Some(v.as_str()) {
            rs.set_annotation(k, &v);
            changed = true;
        }
    }
    changed
}

/// Upstream's `SetNewReplicaSetAnnotations`: copied annotations, and the revision raised to
/// `revision` (remembering the one it had in `revision-history`, for a rollback).
pub(super) fn set_new_rs_annotations(d: &Deployment, rs: &mut Rs, revision: i64) -> bool {
    let mut changed = copy_annotations(d, rs);
    let old = rs.annotation(REVISION).map(str::to_string);
    let old_n = old
        .as_deref()
        .and_then(|r| r.parse::<i64>().ok())
        .unwrap_or(0);
    if old_n < revision {
        rs.set_annotation(REVISION, &revision.to_string());
        changed = true;
        if let Some(old) = old.filter(|o| !o.is_empty()) {
            let history = match rs.annotation(REVISION_HISTORY) {
                Some(h) if !h.is_empty() => format!("{h},{old}"),
                _ => old,
            };
            rs.set_annotation(REVISION_HISTORY, &history);
        }
    }
    changed
}

/// `v` without nulls, empty objects and empty lists, recursively: what Go's typed equality
/// ignores. A template patched back by `kubectl rollout undo` carries Go's zero values
/// (`"resources": {}`, `"creationTimestamp": null`) that the stored template omits.
pub(super) fn pruned(v: &Value) -> Option<Value> {
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
pub(super) fn without_hash_label(template: &Value) -> Value {
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

/// The stored `spec.template` of a Deployment or ReplicaSet. Templates are compared, hashed and
/// stamped as stored JSON (see the module docs): decoding would drop fields, and the hash must
/// stay what it was for names to stay the same.
pub(super) fn stored_template(raw: &Value) -> &Value {
    raw.get("spec")
        .and_then(|s| s.get("template"))
        .unwrap_or(&Value::Null)
}

/// Whether `rs` runs the Deployment's current template (upstream's `EqualIgnoreHash`).
pub fn runs_template(d: &Obj<Deployment>, rs: &Rs) -> bool {
    without_hash_label(stored_template(&d.raw)) == without_hash_label(stored_template(&rs.raw))
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
pub fn new_replica_set(
    d: &Obj<Deployment>,
    hash: &str,
    replicas: i32,
    revision: i64,
) -> Result<Rs, ControllerError> {
    let spec = d.t.spec.as_ref();
    let name = format!("{}-{hash}", name(&d.t.metadata));
    let mut template = stored_template(&d.raw).clone();
    if !template["metadata"].is_object() {
        template["metadata"] = json!({});
    }
    if !template["metadata"]["labels"].is_object() {
        template["metadata"]["labels"] = json!({});
    }
    template["metadata"]["labels"][HASH_LABEL] = json!(hash);
    let mut selector = spec
        .and_then(|s| serde_json::to_value(&s.selector).ok())
        .unwrap_or(json!({}));
    if !selector["matchLabels"].is_object() {
        selector["matchLabels"] = json!({});
    }
    selector["matchLabels"][HASH_LABEL] = json!(hash);
    let rs = json!({
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": name,
            "namespace": namespace(&d.t.metadata),
            "labels": template["metadata"]["labels"].clone(),
            "ownerReferences": [controller_ref(&Deployment {
                metadata: d.t.metadata.clone(),
                ..Default::default()
            })],
        },
        "spec": {
            "replicas": replicas,
            "minReadySeconds": spec.and_then(|s| s.min_ready_seconds).unwrap_or(0),
            "selector": selector,
            "template": template,
        },
    });
    let mut rs = Obj::new(rs)?;
    set_new_rs_annotations(&d.t, &mut rs, revision);
    let desired = replicas_of(&d.t);
    set_replicas_annotations(&mut rs, desired, desired + max_surge(&d.t));
    Ok(rs)
}

/// The order of ReplicaSets by age: creation time, then name.
pub(super) fn created_at(rs: &Rs) -> (i64, String) {
    let meta = &rs.t.metadata;
    let created = meta
        .creation_timestamp
        .as_ref()
        .map_or(0, |t| t.0.as_second());
    (created, name(meta).to_string())
}

/// The `Progressing` condition of a Deployment's stored status.
pub(super) fn progressing(d: &Deployment) -> Option<&DeploymentCondition> {
    d.status
        .as_ref()
        .and_then(|s| condition_of(s, "Progressing"))
}

impl DeploymentController {
    /// Upstream's `getAllReplicaSetsAndSyncRevision`: splits the ReplicaSets into the new one
    /// and the old ones, brings the new one's annotations up to date, and creates it when
    /// `create` and missing.
    pub(super) async fn split(
        &self,
        d: Obj<Deployment>,
        mut owned: Vec<Rs>,
        create: bool,
    ) -> Result<Rollout, ControllerError> {
        owned.sort_by_key(created_at);
        let (mut matching, old): (Vec<Rs>, Vec<Rs>) =
            owned.into_iter().partition(|rs| runs_template(&d, rs));
        let mut old = old;
        // Several ReplicaSets with the same template: the oldest is the new one.
        let existing = (!matching.is_empty()).then(|| matching.remove(0));
        old.extend(matching);
        old.sort_by_key(created_at);
        let revision = old.iter().map(|rs| revision_of(&rs.t)).max().unwrap_or(0) + 1;
        let ns = namespace(&d.t.metadata).to_string();
        let mut ro = Rollout { d, new: None, old };
        if let Some(rs) = existing {
            let mut updated = rs.clone();
            let mut changed = set_new_rs_annotations(&ro.d.t, &mut updated, revision);
            let min_ready = |spec: Option<i32>| spec.unwrap_or(0);
            let want = min_ready(ro.d.t.spec.as_ref().and_then(|s| s.min_ready_seconds));
            if min_ready(rs.t.spec.as_ref().and_then(|s| s.min_ready_seconds)) != want {
                updated.raw["spec"]["minReadySeconds"] = json!(want);
                changed = true;
            }
            let rs = if changed {
                Obj::new(
                    self.client
                        .update(replicaset::RESOURCE, &ns, updated.raw)
                        .await?,
                )?
            } else {
                rs
            };
            self.sync_revision(&mut ro.d, &rs).await?;
            if has_progress_deadline(&ro.d.t) && progressing(&ro.d.t).is_none() {
                let msg = format!("Found new replica set {:?}", name(&rs.t.metadata));
                let mut status = ro.d.t.status.clone().unwrap_or_default();
                set_condition(
                    &mut status,
                    condition(
                        "Progressing",
                        "True",
                        "FoundNewReplicaSet",
                        &msg,
                        now_time(),
                    ),
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
            ro.d.t
                .status
                .as_ref()
                .and_then(|s| s.collision_count)
                .unwrap_or(0);
        let hash = pod_template_hash(stored_template(&ro.d.raw), i64::from(collisions));
        let total: i32 = ro.old.iter().map(|rs| replicas_of(&rs.t)).sum();
        let replicas = replicas_of(&ro.d.t);
        let size = if is_rolling(&ro.d.t) {
            rolling_new_replicas(replicas, max_surge(&ro.d.t), total, 0)
        } else {
            replicas
        };
        let rs = new_replica_set(&ro.d, &hash, size, revision)?;
        let rs_name = name(&rs.t.metadata).to_string();
        let created = match self.client.create(replicaset::RESOURCE, &ns, rs.raw).await {
            Ok(c) => Obj::new(c)?,
            Err(ApiError::AlreadyExists { .. }) => {
                // Someone else's ReplicaSet by that name, or one with another template: a hash
                // collision. Count it, so that the next attempt uses another name.
                let mut status = ro.d.t.status.clone().unwrap_or_default();
                status.collision_count = Some(collisions + 1);
                self.write_status(&mut ro.d, status).await?;
                return Err(ApiError::Conflict {
                    resource: "replicasets.apps".into(),
                    name: rs_name,
                    detail: "a ReplicaSet with this name and another template exists; retrying with the next collision count".into(),
                }
                .into());
            }
            Err(e) => return Err(e.into()),
        };
        if size > 0 {
            let msg = format!("Scaled up replica set {rs_name} to {size} from 0");
            self.event(&ro.d, "ScalingReplicaSet", &msg).await;
        }
        self.sync_revision(&mut ro.d, &created).await?;
        if has_progress_deadline(&ro.d.t) {
            let mut status = ro.d.t.status.clone().unwrap_or_default();
            set_condition(
                &mut status,
                condition(
                    "Progressing",
                    "True",
                    "NewReplicaSetCreated",
                    &format!("Created new replica set {rs_name:?}"),
                    now_time(),
                ),
            );
            self.write_status(&mut ro.d, status).await?;
        }
        ro.new = Some(created);
        Ok(ro)
    }

    /// Gives the Deployment its new ReplicaSet's revision annotation.
    pub(super) async fn sync_revision(
        &self,
        d: &mut Obj<Deployment>,
        new: &Rs,
    ) -> Result<(), ControllerError> {
        let Some(rev) = new.annotation(REVISION).map(str::to_string) else {
            return Ok(());
        };
        if d.annotation(REVISION) == Some(rev.as_str()) {
            return Ok(());
        }
        let mut updated = d.clone();
        updated.set_annotation(REVISION, &rev);
        let ns = namespace(&d.t.metadata).to_string();
        *d = Obj::new(self.client.update(RESOURCE, &ns, updated.raw).await?)?;
        Ok(())
    }

    /// Deletes old ReplicaSets beyond `revisionHistoryLimit`, oldest revision first, if they
    /// are scaled to 0 and have no pod left.
    pub(super) async fn cleanup(&self, ro: &Rollout) -> Result<(), ControllerError> {
        let Some(limit) = ro.d.t.spec.as_ref().and_then(|s| s.revision_history_limit) else {
            return Ok(());
        };
        let mut cleanable: Vec<&Rs> = ro
            .old
            .iter()
            .filter(|rs| !owned::is_terminating(&rs.t.metadata))
            .collect();
        let excess = cleanable.len() as i64 - i64::from(limit);
        if excess <= 0 {
            return Ok(());
        }
        cleanable.sort_by_key(|rs| (revision_of(&rs.t), created_at(rs)));
        let ns = namespace(&ro.d.t.metadata);
        for rs in cleanable.into_iter().take(excess as usize) {
            let rs_uid = uid(&rs.t.metadata);
            let status = rs.t.status.as_ref();
            let busy = status.is_some_and(|s| s.replicas != 0)
                || replicas_of(&rs.t) != 0
                || rs.t.metadata.generation > status.and_then(|s| s.observed_generation)
                || !self.informers.pods.controlled_by(rs_uid).is_empty();
            if busy {
                continue;
            }
            match self
                .client
                .delete(
                    replicaset::RESOURCE,
                    ns,
                    name(&rs.t.metadata),
                    Propagation::Background,
                    Some(rs_uid),
                )
                .await
            {
                Ok(()) | Err(ApiError::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}
