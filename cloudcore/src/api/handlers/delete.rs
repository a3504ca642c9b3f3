//! `delete` and `deletecollection`: delete options from query and body, preconditions, and the
//! kind's deletion composed with finalizers and propagation, shared with the namespace
//! controller so it deletes exactly as a client would.

use super::body::parse_body_as;
use super::meta::{meta_str, now_rfc3339, set_type_meta};
use super::preconditions::check_uid_of;
use super::request::Call;
use super::update::UPDATE_ATTEMPTS;
use crate::api::error::{json_response, ApiError};
use crate::api::finalizers::{self, PropagationRequest};
use crate::api::resource::{DeleteAction, DeleteOptions, ResourceHandler};
use crate::api::ApiState;
use crate::store::{ObjectKey, StoreError, Stored};
use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::Response;
use futures::StreamExt;
use serde_json::{json, Value};
use std::sync::Arc;

fn parse_grace(v: &str) -> Result<i64, ApiError> {
    v.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "gracePeriodSeconds: invalid value {v:?}: must be an integer"
        ))
    })
}

pub(in crate::api) async fn delete(call: &Call, body: Bytes) -> Result<Response, ApiError> {
    let info = call.info();
    let req = delete_request(call, &body)?;
    match delete_object(&call.state, &call.res, &call.key(), &req).await? {
        // As Kubernetes: 202 only for the legacy `orphanDependents: false` that stays.
        Deletion::Terminating(v) if req.propagation.orphan_dependents == Some(false) => {
            Ok(call.object_response(StatusCode::ACCEPTED, v))
        }
        Deletion::Terminating(v) => Ok(call.object_response(StatusCode::OK, v)),
        Deletion::Gone(deleted) => {
            if info.return_deleted_object {
                return Ok(call.object_response(StatusCode::OK, deleted.value));
            }
            Ok(json_response(
                StatusCode::OK,
                &json!({
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Success",
                    "details": {"name": call.name(), "kind": info.plural, "uid": meta_str(&deleted.value, "uid")},
                }),
            ))
        }
    }
}

/// Objects a delete collection works on at once (Kubernetes' `DeleteCollectionWorkers`
/// defaults to 1; more overlap the store's flushes).
const DELETE_COLLECTION_WORKERS: usize = 16;

/// `DELETE` on a collection: deletes every object the label and field selectors match, each
/// through [`delete_object`] exactly as a DELETE of it would (graceful pod deletion, dry run,
/// grace period and preconditions from the query or the `DeleteOptions` body). Answers with
/// the list of what was deleted, as Kubernetes does: objects gone, or marked for graceful
/// deletion. An object deleted by someone else meanwhile is skipped; any other failure ends
/// the request with that error (objects already deleted stay deleted).
pub(super) async fn delete_collection(call: &Call, body: Bytes) -> Result<Response, ApiError> {
    let info = call.info();
    let req = delete_request(call, &body)?;
    let (items, _) = call.selected().await?;
    let keys: Vec<ObjectKey> = items
        .into_iter()
        .map(|v| {
            ObjectKey::new(
                info.storage_resource(),
                meta_str(&v, "namespace"),
                meta_str(&v, "name"),
            )
        })
        .collect();
    let results: Vec<Result<Deletion, ApiError>> = futures::stream::iter(keys)
        .map(|key| {
            let req = &req;
            async move { delete_object(&call.state, &call.res, &key, req).await }
        })
        .buffered(DELETE_COLLECTION_WORKERS)
        .collect()
        .await;
    let mut deleted = Vec::with_capacity(results.len());
    for r in results {
        match r {
            Ok(Deletion::Gone(s)) => deleted.push(s.value),
            Ok(Deletion::Terminating(v)) => deleted.push(v),
            Err(ApiError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    for v in &mut deleted {
        set_type_meta(info, v);
        crate::annotations::hide_system_state(v);
    }
    tracing::info!(resource = %info.plural, namespace = ?call.namespace, count = deleted.len(), dry_run = req.dry_run, "deleted collection");
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "apiVersion": info.api_version(),
            "kind": info.list_kind(),
            "metadata": {"resourceVersion": call.state.store.revision().to_string()},
            "items": deleted,
        }),
    ))
}

/// The delete options of a request: `dryRun` and `gracePeriodSeconds` from the query, then the
/// `DeleteOptions` body (which wins), with its preconditions.
fn delete_request(call: &Call, body: &[u8]) -> Result<DeleteRequest, ApiError> {
    let mut dry_run = call.dry_run()?;
    let mut opts = DeleteOptions {
        grace_period_seconds: call
            .query
            .get("gracePeriodSeconds")
            .map(|v| parse_grace(v))
            .transpose()?,
    };
    let mut pre_rv = None;
    let mut pre_uid = String::new();
    let mut propagation = PropagationRequest::parse(
        call.query.get("propagationPolicy").map(String::as_str),
        call.query
            .get("orphanDependents")
            .map(|v| v.parse::<bool>())
            .transpose()
            .map_err(|_| ApiError::bad_request("orphanDependents must be true or false"))?,
    )?;
    if !body.iter().all(u8::is_ascii_whitespace) {
        let raw = parse_body_as(call, body, &call.info().api_version(), "DeleteOptions")?;
        let d: k8s_openapi::apimachinery::pkg::apis::meta::v1::DeleteOptions =
            serde_path_to_error::deserialize(raw).map_err(|e| {
                let path = e.path().to_string();
                let msg = e.into_inner().to_string();
                ApiError::bad_field(
                    format!("DeleteOptions cannot be decoded: {path}: {msg}"),
                    path,
                    msg,
                )
            })?;
        if d.grace_period_seconds.is_some() {
            opts.grace_period_seconds = d.grace_period_seconds;
        }
        propagation =
            PropagationRequest::parse(d.propagation_policy.as_deref(), d.orphan_dependents)?;
        if let Some(p) = d.preconditions {
            pre_rv = p.resource_version.filter(|s| !s.is_empty());
            pre_uid = p.uid.unwrap_or_default();
        }
        if d.dry_run.is_some_and(|d| !d.is_empty()) {
            dry_run = true;
        }
    }
    Ok(DeleteRequest {
        opts,
        pre_rv,
        pre_uid,
        dry_run,
        propagation,
    })
}

/// A delete, as the client asked for it.
#[derive(Debug, Clone, Default)]
pub(in crate::api) struct DeleteRequest {
    pub opts: DeleteOptions,
    /// `preconditions.resourceVersion`.
    pub pre_rv: Option<String>,
    /// `preconditions.uid` (empty: none).
    pub pre_uid: String,
    pub dry_run: bool,
    /// `propagationPolicy` / `orphanDependents`.
    pub propagation: PropagationRequest,
}

/// What a delete did.
pub(in crate::api) enum Deletion {
    /// The object is gone (or would be, in a dry run); its last value.
    Gone(Stored),
    /// The object stays, terminating (graceful deletion), possibly unchanged.
    Terminating(Value),
}

/// Deletes one object with its kind's semantics (graceful pod deletion, protected namespaces):
/// what the DELETE verb does, shared with the namespace controller so that emptying a
/// namespace deletes each object exactly as a client would.
pub(in crate::api) async fn delete_object(
    state: &ApiState,
    res: &Arc<dyn ResourceHandler>,
    key: &ObjectKey,
    req: &DeleteRequest,
) -> Result<Deletion, ApiError> {
    let info = res.info();
    let store_err = |e| ApiError::from_store(e, &info.qualified(), &key.name);
    for _ in 0..UPDATE_ATTEMPTS {
        let current = match state.store.get(key).await {
            Ok(Some(s)) => s,
            Ok(None) => return Err(store_err(StoreError::NotFound(key.clone()))),
            Err(e) => return Err(store_err(e)),
        };
        if let Some(rv) = &req.pre_rv {
            if *rv != current.revision.to_string() {
                return Err(ApiError::Conflict {
                    resource: info.qualified(),
                    name: key.name.clone(),
                    detail: format!(
                        "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                        current.revision
                    ),
                });
            }
        }
        check_uid_of(info, &key.name, &req.pre_uid, &current.value)?;
        if let Some(reason) = res.forbid_delete(&current.value) {
            return Err(ApiError::Forbidden {
                resource: info.qualified(),
                name: key.name.clone(),
                reason,
            });
        }
        match deletion_action(res.as_ref(), &current.value, req) {
            DeleteAction::Unchanged => return Ok(Deletion::Terminating(current.value)),
            DeleteAction::Update(v) => {
                if req.dry_run {
                    return Ok(Deletion::Terminating(v));
                }
                match state.store.update(key, v, Some(current.revision)).await {
                    Ok(stored) => {
                        tracing::info!(resource = %info.plural, namespace = %key.namespace, name = %key.name,
                            grace = ?stored.value.pointer("/metadata/deletionGracePeriodSeconds"), "marked for graceful deletion");
                        return Ok(Deletion::Terminating(stored.value));
                    }
                    Err(StoreError::Conflict { .. }) => continue,
                    Err(e) => return Err(store_err(e)),
                }
            }
            DeleteAction::Delete => {
                let deleted = if req.dry_run {
                    current
                } else {
                    match state.store.delete(key, Some(current.revision)).await {
                        Ok(s) => s,
                        Err(StoreError::Conflict { .. }) => continue,
                        Err(e) => return Err(store_err(e)),
                    }
                };
                tracing::info!(resource = %info.plural, namespace = %key.namespace, name = %key.name, dry_run = req.dry_run, "deleted");
                return Ok(Deletion::Gone(deleted));
            }
        }
    }
    Err(ApiError::Internal(format!(
        "{key} kept changing during {UPDATE_ATTEMPTS} delete attempts; retry later"
    )))
}

/// The last step of a deletion that a controller finishes (a namespace, once emptied): the
/// object goes if it is still the revision the controller looked at, is marked for deletion,
/// and no finalizer holds it. The rule lives here, beside the ordinary delete, so that a
/// controller never removes an object the API would keep. `Ok(false)`: it changed meanwhile (or
/// a finalizer holds it), and the controller's next pass decides again.
pub(in crate::api) async fn finalize(
    state: &ApiState,
    res: &Arc<dyn ResourceHandler>,
    key: &ObjectKey,
    revision: u64,
) -> Result<bool, ApiError> {
    let info = res.info();
    let store_err = |e| ApiError::from_store(e, &info.qualified(), &key.name);
    if !res.removed_by_controller() {
        return Err(ApiError::Internal(format!(
            "{} are not removed by a controller; delete them",
            info.plural
        )));
    }
    let current = match state.store.get(key).await {
        Ok(Some(s)) => s,
        Ok(None) => return Err(store_err(StoreError::NotFound(key.clone()))),
        Err(e) => return Err(store_err(e)),
    };
    let marked = current
        .value
        .pointer("/metadata/deletionTimestamp")
        .is_some();
    if current.revision != revision || !marked || !finalizers::finalizers(&current.value).is_empty()
    {
        return Ok(false);
    }
    match state.store.delete(key, Some(revision)).await {
        Ok(_) => {
            tracing::info!(resource = %info.plural, namespace = %key.namespace, name = %key.name, "finalized and removed");
            Ok(true)
        }
        Err(StoreError::Conflict { .. }) => Ok(false),
        Err(e) => Err(store_err(e)),
    }
}

/// What a delete does with `current`: the kind's own deletion ([`ResourceHandler::on_delete`],
/// graceful for pods) composed with finalizers and propagation ([`finalizers`]). An object
/// with finalizers is marked and stays; a marked object whose finalizers are gone and whose
/// graceful termination is over is removed.
fn deletion_action(
    res: &dyn ResourceHandler,
    current: &Value,
    req: &DeleteRequest,
) -> DeleteAction {
    let now = now_rfc3339();
    let base = finalizers::with_gc_finalizers(current, req.propagation);
    let pending = !finalizers::finalizers(&base).is_empty();
    let next = match res.on_delete(&base, &req.opts, &now) {
        DeleteAction::Delete if !pending => return DeleteAction::Delete,
        DeleteAction::Delete => {
            let mut v = base;
            finalizers::mark_deleting(&mut v, &now);
            v
        }
        DeleteAction::Update(v) => v,
        DeleteAction::Unchanged => base,
    };
    if !res.removed_by_controller() && finalizers::ready_to_remove(&next) {
        return DeleteAction::Delete;
    }
    if next == *current {
        DeleteAction::Unchanged
    } else {
        DeleteAction::Update(next)
    }
}
