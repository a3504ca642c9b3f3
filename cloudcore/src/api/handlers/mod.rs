//! The generic REST handlers: one implementation of get, list, watch, create, update, patch,
//! delete, deletecollection and the status subresource for every registered resource.
//!
//! A request path is resolved against the [`Registry`](super::resource::Registry) the way the
//! Kubernetes API server's `RequestInfoFactory` does (`/api/v1/namespaces/{ns}/{resource}/{name}
//! /{subresource}`, `/apis/{group}/{version}/...`), so adding a resource adds its routes.
//!
//! One file per step of a request, as in the Kubernetes API server's `endpoints/handlers`:
//! [`request`] resolves the path and holds the [`Call`], [`body`] decodes what the client sent,
//! `get`, `list`, `create`, `update`, `patch`, `apply` and `delete` are the verbs,
//! [`validate`] and [`preconditions`] are what every write checks, [`resource_version`] what
//! a read's `resourceVersion` and `continue` mean, [`meta`] stamps system
//! metadata, and [`negotiation`] re-encodes answers for protobuf clients. This file routes.

mod apply;
mod body;
mod create;
mod delete;
mod get;
mod list;
mod meta;
mod negotiation;
mod patch;
mod preconditions;
mod request;
mod resource_version;
mod update;
mod validate;

pub(super) use body::{parse_body_as, parse_json};
pub(super) use create::create;
pub(super) use delete::{delete, finalize};
pub(super) use get::get_current;
pub use meta::new_uid;
pub(super) use meta::{now_rfc3339, now_seconds, set_type_meta};
pub(super) use request::{is_true, Call};
#[cfg(test)]
pub(super) use resource_version::FRESHNESS_WAIT;
pub(super) use resource_version::{parse as parse_resource_version, wait_fresh};
pub(super) use update::{build_update, update, update_loop, UPDATE_ATTEMPTS};

use super::error::{json_response, ApiError};
use super::{discovery, watch, ApiState, RequestLabels};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use body::read_body;
use delete::delete_collection;
use get::get;
use list::list;
use negotiation::{protobuf_response, wants_protobuf};
use patch::patch;
use request::{parse_target, verb_of, Target};
use std::collections::HashMap;

/// Entry point for everything under `/api/` and `/apis/`.
pub(super) async fn dispatch(State(state): State<ApiState>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let protobuf = wants_protobuf(&parts);
    let mut labels = RequestLabels {
        verb: "get",
        resource: String::new(),
    };
    let result = handle(&state, parts, body, &mut labels).await;
    let mut resp = result.unwrap_or_else(IntoResponse::into_response);
    if protobuf {
        resp = protobuf_response(resp).await;
    }
    resp.extensions_mut().insert(labels);
    resp
}

async fn handle(
    state: &ApiState,
    mut parts: axum::http::request::Parts,
    body: Body,
    labels: &mut RequestLabels,
) -> Result<Response, ApiError> {
    let target = parse_target(state, parts.uri.path())?;
    let t = match target {
        Target::Group(group) => {
            require_get(&parts.method)?;
            return discovery::api_group(&state.registry, &group)
                .map(|v| json_response(StatusCode::OK, &v))
                .ok_or(ApiError::PathNotFound);
        }
        Target::GroupVersion(group, version) => {
            require_get(&parts.method)?;
            return discovery::resource_list(&state.registry, &group, &version)
                .map(|v| json_response(StatusCode::OK, &v))
                .ok_or(ApiError::PathNotFound);
        }
        Target::Resource(t) => t,
    };
    let query: HashMap<String, String> = axum::extract::Query::try_from_uri(&parts.uri)
        .map(|q: axum::extract::Query<HashMap<String, String>>| q.0)
        .map_err(|e| ApiError::bad_request(format!("invalid query: {e}")))?;
    let verb = verb_of(&parts.method, &t, is_true(query.get("watch")));
    labels.verb = verb;
    labels.resource = t.res.info().qualified();
    let binding = t.subresource.as_deref() == Some(super::binding::SUBRESOURCE);
    let log = t.subresource.as_deref() == Some(super::pod_log::SUBRESOURCE);
    let attach = t.subresource.as_deref() == Some(super::pod_exec::ATTACH_SUBRESOURCE);
    let exec = attach || t.subresource.as_deref() == Some(super::pod_exec::SUBRESOURCE);
    let portforward = t.subresource.as_deref() == Some(super::pod_portforward::SUBRESOURCE);
    let allowed = match (t.subresource.is_some(), verb) {
        (true, "get") if log => true,
        (true, _) if log => false,
        // GET for the WebSocket upgrade, POST for SPDY (which is answered, not served).
        (true, "get" | "create") if exec => true,
        (true, _) if exec => false,
        // GET for the WebSocket tunnel, POST for the SPDY upgrade (both served).
        (true, "get" | "create") if portforward => true,
        (true, _) if portforward => false,
        (true, "create") => binding,
        (true, _) if binding => false,
        (true, "get" | "update" | "patch") => t.res.info().supports(verb),
        (true, _) => false,
        // A namespaced resource without a namespace supports only list and watch.
        (false, "create" | "deletecollection") => {
            t.res.info().supports(verb) && (t.namespace.is_some() || !t.res.info().namespaced)
        }
        (false, v) => t.res.info().supports(v),
    };
    if !allowed {
        return Err(ApiError::MethodNotAllowed);
    }
    // A SPDY upgrade (a POST) is hyper's own upgrade; a WebSocket takes it too, so only one
    // of the two is taken.
    let spdy_upgrade = if portforward && parts.method == Method::POST {
        parts.extensions.remove::<hyper::upgrade::OnUpgrade>()
    } else {
        None
    };
    let upgrade = if exec || (portforward && parts.method == Method::GET) {
        Some(
            <axum::extract::ws::WebSocketUpgrade as axum::extract::FromRequestParts<()>>::from_request_parts(
                &mut parts,
                &(),
            )
            .await,
        )
    } else {
        None
    };
    let raw_query = parts.uri.query().unwrap_or_default().to_string();
    let method = parts.method.clone();
    let call = Call {
        state: state.clone(),
        res: t.res.clone(),
        namespace: t.namespace.clone(),
        name: t.name.clone(),
        status: t.subresource.as_deref() == Some("status"),
        query,
        user: parts.extensions.get::<crate::pki::UserInfo>().cloned(),
        headers: parts.headers,
    };
    let limit = state.max_body_bytes;
    if log {
        return super::pod_log::serve(&call, state.hub.as_ref()).await;
    }
    if portforward {
        return super::pod_portforward::serve(
            &call,
            state.hub.as_ref(),
            &method,
            &raw_query,
            upgrade,
            spdy_upgrade,
        )
        .await;
    }
    if let Some(upgrade) = upgrade {
        return super::pod_exec::serve(
            &call,
            state.hub.as_ref(),
            &method,
            &raw_query,
            upgrade,
            attach,
        )
        .await;
    }
    if binding {
        let body = read_body(body, &call.headers, limit).await?;
        return super::binding::create(&call, body).await;
    }
    if t.subresource.as_deref() == Some("scale") {
        let body = read_body(body, &call.headers, limit).await?;
        return super::scale::serve(verb, &call, body).await;
    }
    match verb {
        "get" => get(&call).await,
        "list" => list(&call).await,
        "watch" => watch::watch(call).await,
        "create" => create(&call, read_body(body, &call.headers, limit).await?).await,
        "update" => update(&call, read_body(body, &call.headers, limit).await?).await,
        "patch" => patch(&call, read_body(body, &call.headers, limit).await?).await,
        "delete" => delete(&call, read_body(body, &call.headers, limit).await?).await,
        "deletecollection" => {
            delete_collection(&call, read_body(body, &call.headers, limit).await?).await
        }
        _ => Err(ApiError::MethodNotAllowed),
    }
}

fn require_get(method: &Method) -> Result<(), ApiError> {
    if method == Method::GET || method == Method::HEAD {
        Ok(())
    } else {
        Err(ApiError::MethodNotAllowed)
    }
}
