//! The `/scale` subresource of Deployments, ReplicaSets, StatefulSets and
//! ReplicationControllers: an `autoscaling/v1`
//! `Scale` view of the object (its `spec.replicas`, `status.replicas` and selector).
//!
//! `kubectl scale` resolves the subresource's kind from discovery (`deployments/scale`, group
//! `autoscaling`, version `v1`, kind `Scale`) and sends a merge patch
//! `{"spec":{"replicas":N}}` to it, or a GET and a PUT when given `--current-replicas` or
//! `--resource-version`. Writes change only `spec.replicas` of the parent and go through the
//! parent's normal update path (defaulting, validation, generation bump); a `resourceVersion`
//! in the body is a precondition on the parent, as in Kubernetes, whose Scale carries the
//! parent's resourceVersion.

use super::error::{json_response, ApiError, FieldError};
use super::handlers::{self, parse_body_as, parse_json, Call};
use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Value};

/// `apiVersion` of the Scale objects this subresource serves.
pub const SCALE_API_VERSION: &str = "autoscaling/v1";

/// The `autoscaling/v1` Scale view of a workload object.
pub fn scale_of(obj: &Value) -> Value {
    let meta = |f: &str| obj.pointer(&format!("/metadata/{f}")).cloned();
    let mut metadata = serde_json::Map::new();
    for field in [
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "creationTimestamp",
    ] {
        if let Some(v) = meta(field) {
            metadata.insert(field.into(), v);
        }
    }
    // A ReplicationController's label map reads as its matchLabels (`app=web`).
    let selector = super::workloads::selector_of(obj)
        .map(|s| s.to_string())
        .unwrap_or_default();
    json!({
        "apiVersion": SCALE_API_VERSION,
        "kind": "Scale",
        "metadata": metadata,
        "spec": {"replicas": obj.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(0)},
        "status": {
            "replicas": obj.pointer("/status/replicas").and_then(Value::as_i64).unwrap_or(0),
            "selector": selector,
        },
    })
}

/// The replicas a (patched or sent) Scale asks for: a non-negative integer.
fn desired_replicas(scale: &Value, name: &str) -> Result<i64, ApiError> {
    let invalid = |detail: &str| ApiError::Invalid {
        kind: "Scale".into(),
        name: name.to_string(),
        errors: vec![FieldError::invalid(
            "spec.replicas",
            scale.pointer("/spec/replicas").unwrap_or(&Value::Null),
            detail,
        )],
    };
    match scale.pointer("/spec/replicas") {
        None | Some(Value::Null) => Ok(0),
        Some(v) => match v.as_i64() {
            Some(n) if n < 0 => Err(invalid("must be greater than or equal to 0")),
            Some(n) if n > i64::from(i32::MAX) => Err(invalid("must fit in a 32-bit integer")),
            Some(n) => Ok(n),
            None => Err(invalid("must be an integer")),
        },
    }
}

/// Checks the type of a Scale body: `autoscaling/v1` (or unset) and kind `Scale`.
fn check_scale_type(body: &Value) -> Result<(), ApiError> {
    if !body.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object (an autoscaling/v1 Scale)",
        ));
    }
    let field = |f: &str| body.get(f).and_then(Value::as_str).unwrap_or("");
    if !matches!(field("apiVersion"), "" | SCALE_API_VERSION) {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({}) does not match the expected API version ({SCALE_API_VERSION})",
            field("apiVersion")
        )));
    }
    if !matches!(field("kind"), "" | "Scale") {
        return Err(ApiError::bad_request(format!(
            "the kind in the data ({}) does not match the expected kind (Scale)",
            field("kind")
        )));
    }
    Ok(())
}

fn precondition_of(scale: &Value) -> Result<Option<u64>, ApiError> {
    match scale
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
    {
        None | Some("") => Ok(None),
        Some(rv) => rv.parse().map(Some).map_err(|_| {
            ApiError::bad_request(format!(
                "metadata.resourceVersion: Invalid value: {rv:?}: must be a resourceVersion this server issued"
            ))
        }),
    }
}

/// Serves `verb` (`get`, `update` or `patch`) on the scale subresource of `call`'s object.
pub(super) async fn serve(verb: &str, call: &Call, body: Bytes) -> Result<Response, ApiError> {
    let name = call.name.clone().unwrap_or_default();
    match verb {
        "get" => {
            let current = handlers::get_current(call).await?;
            Ok(json_response(StatusCode::OK, &scale_of(&current.value)))
        }
        "update" => {
            let sent = parse_body_as(call, &body, SCALE_API_VERSION, "Scale")?;
            check_scale_type(&sent)?;
            let replicas = desired_replicas(&sent, &name)?;
            let precondition = precondition_of(&sent)?;
            write(call, precondition, |_| Ok(replicas)).await
        }
        "patch" => {
            let mime = call.content_type();
            let patch = parse_json(&body)?;
            let json_patch = match mime {
                "application/json-patch+json" => true,
                // A Scale has no lists, so a strategic merge patch is a merge patch.
                "application/merge-patch+json" | "application/strategic-merge-patch+json" => false,
                _ => {
                    return Err(ApiError::UnsupportedMediaType {
                        accepted: "application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json".into(),
                    })
                }
            };
            let precondition = if json_patch {
                if !patch.is_array() {
                    return Err(ApiError::bad_request(
                        "a JSON patch must be a JSON array of operations",
                    ));
                }
                None
            } else {
                if !patch.is_object() {
                    return Err(ApiError::bad_request("a merge patch must be a JSON object"));
                }
                precondition_of(&patch)?
            };
            write(call, precondition, |current| {
                let scale = scale_of(current);
                let patched = if json_patch {
                    super::patch::json_patch::apply(&scale, &patch).map_err(|e| match e {
                        super::patch::json_patch::JsonPatchError::Malformed(_) => {
                            ApiError::bad_request(e.to_string())
                        }
                        super::patch::json_patch::JsonPatchError::Failed { .. } => {
                            ApiError::PatchNotApplicable(e.to_string())
                        }
                    })?
                } else {
                    let mut s = scale;
                    super::patch::merge::apply(&mut s, &patch);
                    s
                };
                check_scale_type(&patched)?;
                desired_replicas(&patched, &name)
            })
            .await
        }
        _ => Err(ApiError::MethodNotAllowed),
    }
}

/// Sets the parent's `spec.replicas` to what `replicas(current)` says, through the update path
/// of the parent, and answers with the new Scale.
async fn write<F>(call: &Call, precondition: Option<u64>, replicas: F) -> Result<Response, ApiError>
where
    F: Fn(&Value) -> Result<i64, ApiError>,
{
    let resp = handlers::update_loop(call, precondition, |current| {
        let mut desired = current.clone();
        desired["spec"]["replicas"] = json!(replicas(current)?);
        handlers::build_update(call, &desired, current)
    })
    .await?;
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .map_err(|e| ApiError::Internal(format!("cannot read the updated object: {e}")))?;
    let updated: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::Internal(format!("the updated object is not JSON: {e}")))?;
    Ok(json_response(StatusCode::OK, &scale_of(&updated)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_show_replicas_and_the_selector_as_a_string() {
        let d = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "uid": "u", "resourceVersion": "7",
                         "creationTimestamp": "2025-01-01T00:00:00Z", "labels": {"x": "y"}},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"},
                "matchExpressions": [{"key": "tier", "operator": "In", "values": ["fe"]}]}},
            "status": {"replicas": 2}});
        let s = scale_of(&d);
        assert_eq!(s["apiVersion"], "autoscaling/v1");
        assert_eq!(s["kind"], "Scale");
        assert_eq!(
            s["metadata"],
            json!({"name": "web", "namespace": "default", "uid": "u", "resourceVersion": "7",
                   "creationTimestamp": "2025-01-01T00:00:00Z"})
        );
        assert_eq!(s["spec"]["replicas"], 3);
        assert_eq!(s["status"]["replicas"], 2);
        assert_eq!(s["status"]["selector"], "app=web,tier in (fe)");
        assert_eq!(
            desired_replicas(&json!({"spec": {"replicas": 5}}), "web").unwrap(),
            5
        );
        assert!(desired_replicas(&json!({"spec": {"replicas": -1}}), "web").is_err());
        assert!(desired_replicas(&json!({"spec": {"replicas": "x"}}), "web").is_err());
        assert!(check_scale_type(&json!({"apiVersion": "apps/v1", "kind": "Scale"})).is_err());
        assert!(check_scale_type(&json!({"kind": "Deployment"})).is_err());
        assert!(
            check_scale_type(&json!({"apiVersion": "autoscaling/v1", "kind": "Scale"})).is_ok()
        );
    }
}
