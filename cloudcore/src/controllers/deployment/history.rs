//! A Deployment's history: one ReplicaSet per pod template (named by the template hash), the
//! revision annotations that make `kubectl rollout history|undo` work, picking the new
//! ReplicaSet (a rollback revives an old one with the next revision), and removing old
//! ReplicaSets beyond `revisionHistoryLimit`.

use super::*;

/// Copies the Deployment's annotations (but [`NOT_COPIED`]) to `rs`; whether anything changed.
pub(super) fn copy_annotations(d: &Value, rs: &mut Value) -> bool {
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
pub(super) fn set_replicas_annotations(rs: &mut Value, desired: i32, max: i32) -> bool {
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
pub(super) fn set_new_rs_annotations(d: &Value, rs: &mut Value, revision: i64) -> bool {
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

pub(super) fn created_at(rs: &Value) -> (i64, String) {
    (
        parse_timestamp(str_at(rs, "/metadata/creationTimestamp")).unwrap_or(0),
        str_at(rs, "/metadata/name").to_string(),
    )
}

impl DeploymentController {
    /// Upstream's `getAllReplicaSetsAndSyncRevision`: splits the ReplicaSets into the new one
    /// and the old ones, brings the new one's annotations up to date, and creates it when
    /// `create` and missing.
    pub(super) async fn split(
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
    pub(super) async fn sync_revision(&self, d: &mut Value, new: &Value) -> Result<(), ApiError> {
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

    /// Deletes old ReplicaSets beyond `revisionHistoryLimit`, oldest revision first, if they
    /// are scaled to 0 and have no pod left.
    pub(super) async fn cleanup(&self, ro: &Rollout) -> Result<(), ApiError> {
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
}
