//! `POST /api/v1/namespaces/{ns}/pods/{name}/binding`: assigning a pod to a node, as a
//! scheduler other than cloudcore's own (a test rig's placement tool, a custom scheduler) does
//! against Kubernetes.
//!
//! Semantics follow Kubernetes' `BindingREST`: the body is a core/v1 `Binding` whose `target`
//! names the node; a pod that is already assigned gets 409 ("already assigned to node"), a pod
//! being deleted gets 409, and a `metadata.uid` or `metadata.resourceVersion` in the Binding is a
//! precondition on the pod. The write sets `spec.nodeName` and `PodScheduled=True` exactly as
//! cloudcore's scheduler does (one definition, [`crate::scheduler::report::bound`]); the hub then
//! sends the pod to its node.

use super::error::{json_response, ApiError, FieldError};
use super::handlers::{parse_body_as, Call};
use crate::store::{StoreError, Stored};
use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::Response;
use k8s_openapi::api::core::v1::Binding;
use serde_json::{json, Value};

/// The subresource name in paths and discovery.
pub const SUBRESOURCE: &str = "binding";

fn invalid(name: &str, errors: Vec<FieldError>) -> ApiError {
    ApiError::Invalid {
        kind: "Binding".into(),
        name: name.into(),
        errors,
    }
}

/// Serves a `create` of the binding subresource of pod `call.name`: answers a `Status`, as
/// kube-apiserver does.
pub(super) async fn create(call: &Call, body: Bytes) -> Result<Response, ApiError> {
    bind(call, body).await?;
    Ok(success())
}

/// Binds pod `call.name` as [`create`] does, and returns the pod as written (`None` for a dry
/// run), so that an in-process caller (the scheduler, through
/// [`crate::api::client::Client::bind`]) needs no second read for the object and its revision.
pub(super) async fn bind(call: &Call, body: Bytes) -> Result<Option<Stored>, ApiError> {
    let pod_name = call.name.clone().unwrap_or_default();
    let raw = parse_body_as(call, &body, "v1", "Binding")?;
    let binding: Binding = serde_path_to_error::deserialize(raw).map_err(|e| {
        let path = e.path().to_string();
        let msg = e.into_inner().to_string();
        ApiError::bad_field(
            format!("Binding cannot be decoded: {path}: {msg}"),
            path,
            msg,
        )
    })?;
    let node = binding.target.name.clone().unwrap_or_default();
    let mut errors = Vec::new();
    if node.is_empty() {
        errors.push(FieldError::required("target.name", ""));
    }
    let kind = binding.target.kind.as_deref().unwrap_or("");
    if !kind.is_empty() && kind != "Node" {
        errors.push(FieldError::not_supported(
            "target.kind",
            &json!(kind),
            &["Node"],
        ));
    }
    let named = binding.metadata.name.clone().unwrap_or_default();
    if !named.is_empty() && named != pod_name {
        errors.push(FieldError::invalid(
            "metadata.name",
            &json!(named),
            format!("must be the pod's name, {pod_name:?}"),
        ));
    }
    if !errors.is_empty() {
        return Err(invalid(&pod_name, errors));
    }
    let want_uid = binding.metadata.uid.clone().filter(|u| !u.is_empty());
    let want_rv = binding
        .metadata
        .resource_version
        .clone()
        .filter(|r| !r.is_empty());
    let key = call.key();
    let resource = call.info().qualified();
    let conflict = |detail: String| ApiError::Conflict {
        resource: resource.clone(),
        name: pod_name.clone(),
        detail,
    };
    if call.dry_run()? {
        return Ok(None);
    }
    for _ in 0..super::handlers::UPDATE_ATTEMPTS {
        let current = call
            .state
            .store
            .get(&key)
            .await
            .map_err(|e| call.store_err(e))?
            .ok_or_else(|| call.store_err(StoreError::NotFound(key.clone())))?;
        let pod = &current.value;
        let str_at = |p: &str| pod.pointer(p).and_then(Value::as_str).unwrap_or("");
        if let Some(uid) = &want_uid {
            if uid != str_at("/metadata/uid") {
                return Err(conflict(format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    str_at("/metadata/uid")
                )));
            }
        }
        if let Some(rv) = &want_rv {
            if *rv != current.revision.to_string() {
                return Err(ApiError::stale(&resource, &pod_name));
            }
        }
        if pod.pointer("/metadata/deletionTimestamp").is_some() {
            return Err(conflict(
                "pod is being deleted, cannot be assigned to a host".into(),
            ));
        }
        let assigned = str_at("/spec/nodeName");
        if !assigned.is_empty() {
            return Err(conflict(format!(
                "pod {pod_name} is already assigned to node {assigned:?}"
            )));
        }
        let next = crate::scheduler::report::bound(pod, &node);
        match call
            .state
            .store
            .update(&key, next, Some(current.revision))
            .await
        {
            Ok(written) => {
                tracing::info!(pod = %key, node = %node, "bound through the binding subresource");
                return Ok(Some(written));
            }
            Err(StoreError::Conflict { .. }) if want_rv.is_none() => continue,
            Err(StoreError::Conflict { .. }) => return Err(ApiError::stale(&resource, &pod_name)),
            Err(e) => return Err(call.store_err(e)),
        }
    }
    Err(ApiError::Internal(format!(
        "{key} kept changing while binding it; retry"
    )))
}

fn success() -> Response {
    json_response(
        StatusCode::CREATED,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
    )
}
