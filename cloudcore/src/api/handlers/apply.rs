//! Server-side apply (`application/apply-patch+yaml`): creates or merges the applied
//! configuration with field ownership, taking the create or update path as the object exists.

use super::body::{check_type_meta, decode_body, with_warnings};
use super::create::create_object;
use super::meta::{metadata_mut, now_rfc3339};
use super::request::{is_true, Call};
use super::update::{build_status_update, build_update, update_loop};
use crate::api::error::{ApiError, FieldError};
use crate::store::StoreError;
use axum::response::Response;
use serde_json::{json, Value};

/// Server-side apply: creates the object from the configuration if it does not exist, else
/// merges it in with field ownership (see [`crate::api::patch::apply`]).
pub(super) async fn server_side_apply(
    call: &Call,
    body: &[u8],
    schema: Option<crate::api::patch::schema::Schema>,
) -> Result<Response, ApiError> {
    use crate::api::patch::apply::{self as ssa, ApplyError, ApplyRequest};
    let info = call.info();
    // Without merge keys every list is atomic, as for a custom resource without a schema.
    let schema = schema.unwrap_or_else(crate::api::patch::schema::Schema::atomic);
    let manager = call
        .query
        .get("fieldManager")
        .filter(|m| !m.is_empty())
        .ok_or_else(|| ApiError::Invalid {
            kind: "PatchOptions.meta.k8s.io".into(),
            name: String::new(),
            errors: vec![FieldError::required(
                "fieldManager",
                "is required for apply patch",
            )],
        })?
        .clone();
    let force = is_true(call.query.get("force"));
    let mut config = parse_apply_body(body)?;
    check_type_meta(info, &config)?;
    for field in ["apiVersion", "kind"] {
        if config
            .get(field)
            .and_then(Value::as_str)
            .unwrap_or("")
            .is_empty()
        {
            return Err(ApiError::bad_request(format!(
                "{field} is required in an applied configuration"
            )));
        }
    }
    if let Some(meta) = metadata_mut(&mut config) {
        if meta
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .is_empty()
        {
            meta.insert("name".into(), json!(call.name()));
        }
    }
    let api_version = info.api_version();
    let now = now_rfc3339();
    let req = ApplyRequest {
        manager: &manager,
        force,
        api_version: &api_version,
        now: &now,
        status_subresource: info.status_subresource && !call.status,
    };
    let to_api = |e: ApplyError| match e {
        ApplyError::Conflicts(conflicts) => ApiError::ApplyConflict {
            message: ApplyError::Conflicts(conflicts.clone()).to_string(),
            causes: conflicts
                .into_iter()
                .map(|c| crate::api::error::Cause {
                    reason: "FieldManagerConflict".into(),
                    field: c.field,
                    message: format!("conflict with {:?}", c.manager),
                })
                .collect(),
        },
        ApplyError::Merge(_) => ApiError::bad_request(e.to_string()),
    };
    for _ in 0..2 {
        let exists = call
            .state
            .store
            .get(&call.key())
            .await
            .map_err(|e| call.store_err(e))?
            .is_some();
        let result = if exists {
            let mut warnings = Vec::new();
            update_loop(call, None, |current| {
                let merged = ssa::apply(Some(current), &config, &schema, &req).map_err(to_api)?;
                let (mut obj, w) = decode_body(call, merged)?;
                warnings = w;
                call.res.default(&mut obj);
                if call.status {
                    build_status_update(call, &obj, current)
                } else {
                    build_update(call, &obj, current)
                }
            })
            .await
            .map(|r| with_warnings(r, &warnings))
        } else {
            if call.status {
                return Err(call.store_err(StoreError::NotFound(call.key())));
            }
            let obj = ssa::apply(None, &config, &schema, &req).map_err(to_api)?;
            create_object(call, obj).await
        };
        match result {
            // Created or deleted by someone else meanwhile: take the other path once.
            Err(ApiError::AlreadyExists { .. } | ApiError::NotFound { .. }) => continue,
            other => return other,
        }
    }
    Err(ApiError::stale(&info.qualified(), call.name()))
}

/// Parses an `application/apply-patch+yaml` body. kubectl sends JSON (which is YAML); other
/// YAML is refused with a message saying so.
fn parse_apply_body(body: &[u8]) -> Result<Value, ApiError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "the apply configuration must be JSON-compatible YAML (as kubectl sends it): {e}"
        ))
    })?;
    if !v.is_object() {
        return Err(ApiError::bad_request(
            "an apply configuration must be an object",
        ));
    }
    Ok(v)
}
