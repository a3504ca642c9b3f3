//! `PATCH`: picks the patch algorithm by media type (merge, JSON, strategic, apply) and runs it
//! inside the update loop, so a patched object is checked exactly as an update.

use super::apply::server_side_apply;
use super::body::{decode_body, parse_json, with_warnings};
use super::preconditions::resource_version_precondition;
use super::request::Call;
use super::update::{build_status_update, build_update, update_loop};
use crate::api::error::ApiError;
use axum::body::Bytes;
use axum::response::Response;

/// The patch formats `PATCH` accepts, by `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PatchType {
    /// RFC 7396.
    Merge,
    /// RFC 6902.
    Json,
    /// Strategic merge patch (built-in kinds only).
    Strategic,
    /// Server-side apply.
    Apply,
}

const PATCH_TYPES: &str = "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json";

/// The `PATCH` handler: picks the algorithm of [`crate::api::patch`] by media type and runs it in
/// the read-modify-write loop; the patched object then goes through the same decoding,
/// defaulting and validation as an update.
pub(super) async fn patch(call: &Call, body: Bytes) -> Result<Response, ApiError> {
    let info = call.info();
    let mime = call.content_type();
    let kind = match mime {
        "application/merge-patch+json" => PatchType::Merge,
        "application/json-patch+json" => PatchType::Json,
        "application/strategic-merge-patch+json" => PatchType::Strategic,
        "application/apply-patch+yaml" => PatchType::Apply,
        _ => {
            return Err(ApiError::UnsupportedMediaType {
                accepted: PATCH_TYPES.into(),
            })
        }
    };
    let schema = crate::api::patch::schema::schema_for(info.group, info.kind);
    if kind == PatchType::Strategic && schema.is_none() {
        // Kubernetes answers the same for custom resources: no Go struct, no merge keys.
        return Err(ApiError::UnsupportedMediaType {
            accepted: "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml".into(),
        });
    }
    if kind == PatchType::Apply {
        return server_side_apply(call, &body, schema).await;
    }
    let patch = parse_json(&body)?;
    let precondition = match kind {
        PatchType::Json => {
            if !patch.is_array() {
                return Err(ApiError::bad_request(
                    "a JSON patch must be a JSON array of operations",
                ));
            }
            None
        }
        _ => {
            if !patch.is_object() {
                return Err(ApiError::bad_request("a merge patch must be a JSON object"));
            }
            resource_version_precondition(&patch)?
        }
    };
    let mut warnings = Vec::new();
    let resp = update_loop(call, precondition, |current| {
        let merged = match (kind, &schema) {
            (PatchType::Json, _) => {
                crate::api::patch::json_patch::apply(current, &patch).map_err(|e| match e {
                    crate::api::patch::json_patch::JsonPatchError::Malformed(_) => {
                        ApiError::bad_request(e.to_string())
                    }
                    crate::api::patch::json_patch::JsonPatchError::Failed { .. } => {
                        ApiError::PatchNotApplicable(e.to_string())
                    }
                })?
            }
            (PatchType::Strategic, Some(schema)) => {
                crate::api::patch::strategic::apply(current, &patch, schema)
                    .map_err(|e| ApiError::bad_request(e.to_string()))?
            }
            _ => {
                let mut merged = current.clone();
                crate::api::patch::merge::apply(&mut merged, &patch);
                merged
            }
        };
        let (mut obj, w) = decode_body(call, merged)?;
        warnings = w;
        call.res.default(&mut obj);
        if call.status {
            build_status_update(call, &obj, current)
        } else {
            build_update(call, &obj, current)
        }
    })
    .await?;
    Ok(with_warnings(resp, &warnings))
}
