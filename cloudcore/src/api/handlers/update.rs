//! `update` and the read-modify-write loop every write verb (update, patch, apply, status,
//! scale) runs in: optimistic concurrency on the store revision, retried on conflicts unless
//! the client gave a precondition, with system fields carried over and `generation` bumped.

use super::body::{decode_body, parse_body, with_warnings};
use super::get::get_current;
use super::meta::{meta_str, metadata_mut};
use super::preconditions::{check_uid, resource_version_precondition};
use super::request::Call;
use super::validate::{invalid, validate};
use crate::annotations::{self, SeqWrite};
use crate::api::error::ApiError;
use crate::api::finalizers::{self};
use crate::store::StoreError;
use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Map, Value};

/// Attempts of a read-modify-write before giving up (only without a client precondition).
pub(in crate::api) const UPDATE_ATTEMPTS: usize = 16;

/// Read-modify-write of the object with `build(current)`; retries on conflicts unless the client
/// gave a resourceVersion precondition.
pub(in crate::api) async fn update_loop<F>(
    call: &Call,
    precondition: Option<u64>,
    mut build: F,
) -> Result<Response, ApiError>
where
    F: FnMut(&Value) -> Result<Value, ApiError>,
{
    let dry_run = call.dry_run()?;
    let key = call.key();
    for _ in 0..UPDATE_ATTEMPTS {
        let current = get_current(call).await?;
        if precondition.is_some_and(|rv| rv != current.revision) {
            return Err(ApiError::stale(&call.info().qualified(), call.name()));
        }
        let mut new = build(&current.value)?;
        if let Some(meta) = metadata_mut(&mut new) {
            meta.insert(
                "resourceVersion".into(),
                json!(current.revision.to_string()),
            );
        }
        let _allocation = if call.status {
            crate::api::resource::Allocation::none()
        } else {
            let store = call.state.store.as_ref();
            (call
                .res
                .allocate(store, &key, &mut new, Some(&current.value)))
            .await?
        };
        // An unchanged object is not written, unless it is stored under an old encryption
        // key or unencrypted: then the write is the rotation's rewrite (as in Kubernetes'
        // GuaranteedUpdate, which writes when the stored state is stale).
        if (new == current.value && !current.stale) || dry_run {
            return Ok(call.object_response(StatusCode::OK, new));
        }
        if !call.res.removed_by_controller() && finalizers::removes_on_update(&current.value, &new)
        {
            // The last finalizer of a terminating object is gone: the object goes with it.
            match call.state.store.delete(&key, Some(current.revision)).await {
                Ok(_) => {
                    tracing::info!(resource = %call.info().plural, namespace = %key.namespace, name = %key.name, "last finalizer removed; deleted");
                    return Ok(call.object_response(StatusCode::OK, new));
                }
                Err(StoreError::Conflict { .. }) if precondition.is_none() => continue,
                Err(e) => return Err(call.store_err(e)),
            }
        }
        match call
            .state
            .store
            .update(&key, new, Some(current.revision))
            .await
        {
            Ok(stored) => {
                // Status writes are the edges' heartbeats and reports: many a minute per node,
                // so they are not worth a line each at the default level.
                if call.status {
                    tracing::debug!(resource = %call.info().plural, namespace = %key.namespace, name = %key.name, revision = stored.revision, user = call.user_name(), "status updated");
                } else {
                    tracing::info!(resource = %call.info().plural, namespace = %key.namespace, name = %key.name, revision = stored.revision, user = call.user_name(), "updated");
                }
                return Ok(call.object_response(StatusCode::OK, stored.value));
            }
            Err(StoreError::Conflict { .. }) if precondition.is_none() => continue,
            Err(e) => return Err(call.store_err(e)),
        }
    }
    Err(ApiError::Internal(format!(
        "{} kept changing during {UPDATE_ATTEMPTS} update attempts; retry later",
        call.key()
    )))
}

/// The object a write of `body` (decoded) to the main resource produces from `current`.
pub(in crate::api) fn build_update(
    call: &Call,
    body: &Value,
    current: &Value,
) -> Result<Value, ApiError> {
    let info = call.info();
    check_uid(call, meta_str(body, "uid"), current)?;
    let mut new = body.clone();
    let Some(meta) = metadata_mut(&mut new) else {
        return Err(ApiError::bad_request("metadata must be an object"));
    };
    for system in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
    ] {
        match current.get("metadata").and_then(|m| m.get(system)) {
            Some(v) => meta.insert(system.into(), v.clone()),
            None => meta.remove(system),
        };
    }
    meta.remove("selfLink");
    // As in Kubernetes, an update that does not mention managedFields keeps them.
    if !meta.contains_key("managedFields") {
        if let Some(m) = current.pointer("/metadata/managedFields") {
            meta.insert("managedFields".into(), m.clone());
        }
    }
    // The ingest's replay guard is system state, like the fields above: a client that drops or
    // edits it must not make old status reports applicable again, or stall new ones. (An
    // object stored before the system state keeps its annotation the same way.)
    let seq = current
        .get("metadata")
        .and_then(|m| m.get("annotations"))
        .and_then(|a| a.get(crate::annotations::STATUS_SEQ_ANNOTATION))
        .cloned();
    let annotations = meta.entry("annotations").or_insert_with(|| json!({}));
    if let Some(a) = annotations.as_object_mut() {
        match seq {
            Some(v) => a.insert(crate::annotations::STATUS_SEQ_ANNOTATION.into(), v),
            None => a.remove(crate::annotations::STATUS_SEQ_ANNOTATION),
        };
        if a.is_empty() {
            meta.remove("annotations");
        }
    }
    crate::annotations::keep_system_state(&mut new, current);
    if info.status_subresource {
        if let Some(o) = new.as_object_mut() {
            match current.get("status") {
                Some(s) => o.insert("status".into(), s.clone()),
                None => o.remove("status"),
            };
        }
    }
    call.res.prepare_update(&mut new, current);
    bump_generation(&mut new, current);
    validate(call, &new)?;
    finalizers::check_update(&new, current).map_err(|e| invalid(info, &new, vec![e]))?;
    call.res
        .validate_update(&new, current)
        .map_err(|e| invalid(info, &new, e))?;
    Ok(new)
}

/// `metadata.generation` counts changes to the desired state, as in Kubernetes: it starts at 1
/// and goes up by one whenever anything outside `metadata` and `status` changes, so controllers
/// report `status.observedGeneration` and `kubectl rollout status` can tell when a change was
/// seen. Metadata-only writes (labels, annotations) keep it.
fn bump_generation(new: &mut Value, current: &Value) {
    let desired = |v: &Value| -> Map<String, Value> {
        v.as_object()
            .map(|o| {
                o.iter()
                    .filter(|(k, _)| !matches!(k.as_str(), "metadata" | "status"))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let old = current
        .pointer("/metadata/generation")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let next = if desired(new) != desired(current) {
        old + 1
    } else {
        old
    };
    if let Some(meta) = metadata_mut(new) {
        meta.insert("generation".into(), json!(next));
    }
}

/// The object a write of `body` (decoded) to `/status` produces: `current` with body's status.
pub(super) fn build_status_update(
    call: &Call,
    body: &Value,
    current: &Value,
) -> Result<Value, ApiError> {
    check_uid(call, meta_str(body, "uid"), current)?;
    let mut new = current.clone();
    if let Some(o) = new.as_object_mut() {
        match body.get("status") {
            Some(s) => o.insert("status".into(), s.clone()),
            None => o.remove("status"),
        };
    }
    // The status report sequence is the one piece of metadata a status write moves: it
    // belongs to the status it guards (see `annotations::status_seq_write`).
    let seq = if call.is_status_ingest() {
        annotations::status_seq_write(body, current)
    } else {
        // Anyone else's status write keeps it, as an update keeps `resourceVersion`.
        SeqWrite::Keep
    };
    match seq {
        SeqWrite::Keep => {}
        SeqWrite::Advance(seq) => annotations::store_status_seq(&mut new, seq),
        SeqWrite::Stale { written, applied } => {
            return Err(ApiError::Conflict {
                resource: call.info().qualified(),
                name: call.name().to_string(),
                detail: format!(
                    "status report {written} is older than report {applied}, already applied"
                ),
            })
        }
    }
    call.res
        .validate_status(&new)
        .map_err(|e| invalid(call.info(), &new, e))?;
    Ok(new)
}

pub(in crate::api) async fn update(call: &Call, body: Bytes) -> Result<Response, ApiError> {
    let (mut obj, warnings) = decode_body(call, parse_body(call, &body)?)?;
    let precondition = resource_version_precondition(&obj)?;
    call.res.default(&mut obj);
    let resp = update_loop(call, precondition, |current| {
        if call.status {
            build_status_update(call, &obj, current)
        } else {
            build_update(call, &obj, current)
        }
    })
    .await?;
    Ok(with_warnings(resp, &warnings))
}
