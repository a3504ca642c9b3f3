//! What a request is about, worked out before any verb runs (Kubernetes' `RequestInfoFactory`):
//! the path resolved against the registry, the verb, and the [`Call`] every handler receives
//! with the query helpers (dry run, content type, table) they share.

use super::meta::now_seconds;
use crate::api::error::{json_response, ApiError};
use crate::api::resource::{ResourceHandler, ResourceInfo};
use crate::api::table::{self, IncludeObject, TableRequest};
use crate::api::ApiState;
use crate::pki::UserInfo;
use crate::store::{ObjectKey, StoreError};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::Response;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;

/// What a request path resolves to.
pub(super) enum Target {
    /// `/apis/{group}`.
    Group(String),
    /// `/api/{version}` or `/apis/{group}/{version}`.
    GroupVersion(String, String),
    /// A resource, collection or object.
    Resource(ResourceTarget),
}

/// A resolved resource path.
pub(super) struct ResourceTarget {
    pub res: Arc<dyn ResourceHandler>,
    /// Namespace from the URL (namespaced resources only).
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
    /// The legacy `/api/v1/watch/...` form.
    pub legacy_watch: bool,
}

/// Resolves a path under `/api` or `/apis`.
pub(super) fn parse_target(state: &ApiState, path: &str) -> Result<Target, ApiError> {
    let trimmed = path.trim_end_matches('/');
    let segs: Vec<&str> = trimmed.split('/').skip(1).collect();
    if segs.iter().any(|s| s.is_empty()) {
        return Err(ApiError::PathNotFound);
    }
    let (group, rest) = match segs.as_slice() {
        ["api", rest @ ..] => ("", rest),
        ["apis", group] => return Ok(Target::Group(group.to_string())),
        ["apis", group, rest @ ..] => (*group, rest),
        _ => return Err(ApiError::PathNotFound),
    };
    let Some((version, rest)) = rest.split_first() else {
        return Err(ApiError::PathNotFound);
    };
    if rest.is_empty() {
        return Ok(Target::GroupVersion(group.to_string(), version.to_string()));
    }
    let mut parts = rest;
    let mut legacy_watch = false;
    if parts.first() == Some(&"watch") {
        legacy_watch = true;
        parts = &parts[1..];
    }
    let mut namespace = None;
    let mut shifted = false;
    if parts.first() == Some(&"namespaces") && parts.len() > 1 {
        namespace = Some(parts[1].to_string());
        if parts.len() > 2 && !matches!(parts[2], "status" | "finalize") {
            parts = &parts[2..];
            shifted = true;
        }
    }
    if parts.is_empty() || parts.len() > 3 {
        return Err(ApiError::PathNotFound);
    }
    let res = state
        .registry
        .find(group, version, parts[0])
        .ok_or(ApiError::PathNotFound)?
        .clone();
    let info = res.info();
    let name = parts.get(1).map(|s| s.to_string());
    let subresource = parts.get(2).map(|s| s.to_string());
    if info.namespaced {
        if !shifted {
            namespace = None;
        }
        if namespace.is_none() && name.is_some() {
            return Err(ApiError::PathNotFound);
        }
    } else {
        if shifted {
            return Err(ApiError::PathNotFound);
        }
        namespace = None;
    }
    if let Some(sub) = &subresource {
        let served = match sub.as_str() {
            "status" => info.status_subresource,
            "scale" => res.scale_subresource(),
            crate::api::binding::SUBRESOURCE => res.binding_subresource(),
            crate::api::pod_log::SUBRESOURCE => res.log_subresource(),
            crate::api::pod_exec::SUBRESOURCE
            | crate::api::pod_exec::ATTACH_SUBRESOURCE
            | crate::api::pod_portforward::SUBRESOURCE => res.exec_subresource(),
            _ => false,
        };
        if !served {
            return Err(ApiError::PathNotFound);
        }
    }
    Ok(Target::Resource(ResourceTarget {
        res,
        namespace,
        name,
        subresource,
        legacy_watch,
    }))
}

/// Everything a resource handler needs about one request.
pub(in crate::api) struct Call {
    pub state: ApiState,
    pub res: Arc<dyn ResourceHandler>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub status: bool,
    pub query: HashMap<String, String>,
    pub headers: HeaderMap,
    /// Who makes the request: the authenticated user of an HTTP request, or the identity of
    /// the in-process writer ([`crate::api::client::Client`]); `None` only for requests the
    /// authentication layer lets through unauthenticated (none that write).
    pub user: Option<UserInfo>,
}

impl Call {
    pub fn info(&self) -> &ResourceInfo {
        self.res.info()
    }

    /// The requesting user's name, for logs ("" when unauthenticated).
    pub fn user_name(&self) -> &str {
        self.user.as_ref().map_or("", |u| u.name.as_str())
    }

    /// Whether the request comes from cloudcore's status ingest, the one writer that may move
    /// the status report sequence.
    pub fn is_status_ingest(&self) -> bool {
        self.user_name() == crate::api::client::identity::INGEST
    }

    pub(super) fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("")
    }

    pub(in crate::api) fn key(&self) -> ObjectKey {
        ObjectKey::new(
            self.info().storage_resource(),
            self.namespace.clone().unwrap_or_default(),
            self.name(),
        )
    }

    pub(in crate::api) fn store_err(&self, e: StoreError) -> ApiError {
        ApiError::from_store(e, &self.info().qualified(), self.name())
    }

    pub(in crate::api) fn dry_run(&self) -> Result<bool, ApiError> {
        match self.query.get("dryRun").map(String::as_str) {
            None | Some("") => Ok(false),
            Some("All") => Ok(true),
            Some(other) => Err(ApiError::bad_request(format!(
                "invalid dryRun value {other:?}: supported values: \"All\""
            ))),
        }
    }

    /// The request's media type, without parameters (`application/merge-patch+json`).
    pub fn content_type(&self) -> &str {
        self.headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(str::trim)
            .unwrap_or("")
    }

    /// The table the client asked for, if any.
    pub fn table(&self) -> Option<TableRequest> {
        table::wants_table(&self.headers).map(|version| TableRequest {
            version,
            include: IncludeObject::from_query(self.query.get("includeObject").map(String::as_str)),
        })
    }

    /// Renders one object or a table of one row.
    pub(super) fn object_response(&self, code: StatusCode, mut obj: Value) -> Response {
        crate::annotations::hide_system_state(&mut obj);
        match self.table() {
            Some(t) => {
                let now = now_seconds();
                let table = table::build(
                    self.res.columns(),
                    |o| self.res.table_row(o, now),
                    std::slice::from_ref(&obj),
                    None,
                    t,
                );
                json_response(code, &table)
            }
            None => json_response(code, &obj),
        }
    }
}

/// The verb of a resource request, as Kubernetes names it.
pub(super) fn verb_of(method: &Method, t: &ResourceTarget, watch_param: bool) -> &'static str {
    let has_name = t.name.is_some();
    let sub = t.subresource.is_some();
    match (method.as_str(), has_name, sub) {
        ("GET", _, false) if t.legacy_watch || watch_param => "watch",
        ("GET", false, _) => "list",
        ("GET", true, _) => "get",
        ("POST", false, _) => "create",
        ("POST", true, true) => "create",
        ("PUT", true, _) => "update",
        ("PATCH", true, _) => "patch",
        ("DELETE", true, false) => "delete",
        ("DELETE", false, _) => "deletecollection",
        _ => "unsupported",
    }
}

pub(in crate::api) fn is_true(v: Option<&String>) -> bool {
    matches!(v.map(String::as_str), Some("1" | "true" | "True"))
}
