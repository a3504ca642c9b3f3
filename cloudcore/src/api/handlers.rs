//! The generic REST handlers: one implementation of get, list, watch, create, update, patch,
//! delete, deletecollection and the status subresource for every registered resource.
//!
//! A request path is resolved against the [`Registry`](super::resource::Registry) the way the
//! Kubernetes API server's `RequestInfoFactory` does (`/api/v1/namespaces/{ns}/{resource}/{name}
//! /{subresource}`, `/apis/{group}/{version}/...`), so adding a resource adds its routes.

use super::discovery;
use super::error::{json_response, ApiError, FieldError};
use super::finalizers::{self, PropagationRequest};
use super::resource::{DeleteAction, DeleteOptions, ResourceHandler, ResourceInfo};
use super::selector::{FieldSelector, LabelSelector};
use super::table::{self, IncludeObject, TableRequest};
use super::validation::validate_object_meta;
use super::{watch, ApiState, RequestLabels};
use crate::store::{ObjectKey, StoreError, Stored};
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// Attempts of a read-modify-write before giving up (only without a client precondition).
pub(super) const UPDATE_ATTEMPTS: usize = 16;
/// Alphabet of `generateName` suffixes (Kubernetes': no vowels, no look-alike digits).
const NAME_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
/// Random characters appended to `generateName`.
const GENERATED_SUFFIX_LEN: usize = 5;

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
            super::binding::SUBRESOURCE => res.binding_subresource(),
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
pub(super) struct Call {
    pub state: ApiState,
    pub res: Arc<dyn ResourceHandler>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub status: bool,
    pub query: HashMap<String, String>,
    pub headers: HeaderMap,
}

impl Call {
    pub fn info(&self) -> &ResourceInfo {
        self.res.info()
    }

    fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("")
    }

    pub(super) fn key(&self) -> ObjectKey {
        ObjectKey::new(
            self.info().storage_resource(),
            self.namespace.clone().unwrap_or_default(),
            self.name(),
        )
    }

    pub(super) fn store_err(&self, e: StoreError) -> ApiError {
        ApiError::from_store(e, &self.info().qualified(), self.name())
    }

    pub(super) fn dry_run(&self) -> Result<bool, ApiError> {
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

    /// The label and field selectors of the query (plus `metadata.name` for watches of one
    /// object).
    pub fn selectors(&self) -> Result<(LabelSelector, FieldSelector), ApiError> {
        let bad = |e: super::selector::SelectorError| ApiError::bad_request(e.to_string());
        let labels =
            LabelSelector::parse(self.query.get("labelSelector").map_or("", String::as_str))
                .map_err(bad)?;
        let raw_fields = self.query.get("fieldSelector").map_or("", String::as_str);
        let mut fields = FieldSelector::parse(raw_fields).map_err(bad)?;
        fields
            .check_fields(&self.info().field_names())
            .map_err(|e| {
                ApiError::bad_request(format!(
                    "unable to parse field selector {raw_fields:?}: {e}"
                ))
            })?;
        if let Some(name) = &self.name {
            fields.requirements.push(super::selector::FieldRequirement {
                field: "metadata.name".into(),
                negated: false,
                value: name.clone(),
            });
        }
        Ok((labels, fields))
    }

    /// The objects of the request's collection (one namespace, or all) that its label and
    /// field selectors match, with the revision the listing is consistent with.
    async fn selected(&self) -> Result<(Vec<Value>, u64), ApiError> {
        let info = self.info();
        let (labels, fields) = self.selectors()?;
        let (items, rev) = self
            .state
            .store
            .list(&info.storage_resource(), self.namespace.as_deref())
            .await
            .map_err(|e| self.store_err(e))?;
        let items = items
            .into_iter()
            .map(|s| s.value)
            .filter(|v| labels.matches(v) && fields.matches(|f| info.field_value(v, f)))
            .collect();
        Ok((items, rev))
    }

    /// Renders one object or a table of one row.
    fn object_response(&self, code: StatusCode, obj: Value) -> Response {
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

pub(super) use crate::clock::{now_rfc3339, now_seconds};

fn random_suffix() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..GENERATED_SUFFIX_LEN)
        .map(|_| NAME_ALPHABET[rng.random_range(0..NAME_ALPHABET.len())] as char)
        .collect()
}

/// A random (version 4) UUID, as Kubernetes assigns to `metadata.uid`.
pub fn new_uid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Sets `apiVersion` and `kind` (stored objects have them; this guards hand-written ones).
pub(super) fn set_type_meta(info: &ResourceInfo, obj: &mut Value) {
    if let Some(o) = obj.as_object_mut() {
        o.insert("apiVersion".into(), json!(info.api_version()));
        o.insert("kind".into(), json!(info.kind));
    }
}

fn metadata_mut(obj: &mut Value) -> Option<&mut Map<String, Value>> {
    obj.as_object_mut()?
        .entry("metadata")
        .or_insert_with(|| json!({}))
        .as_object_mut()
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .unwrap_or("")
}

async fn read_body(body: Body, headers: &HeaderMap, limit: usize) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::RequestEntityTooLarge { limit });
    }
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk
            .map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))?;
        if buf.len() + chunk.len() > limit {
            return Err(ApiError::RequestEntityTooLarge { limit });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(buf))
}

pub(super) fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("request body is not valid JSON: {e}")))
}

/// Parses a create or update body of the endpoint's kind: JSON or Kubernetes protobuf.
fn parse_body(call: &Call, body: &[u8]) -> Result<Value, ApiError> {
    let info = call.info();
    parse_body_as(call, body, &info.api_version(), info.kind)
}

/// Parses a body of `api_version`/`kind` (a subresource's own kind: `Scale`, `Binding`,
/// `DeleteOptions`): JSON, or Kubernetes protobuf (what kubectl's typed clients send), which
/// becomes the JSON a manifest would give.
pub(super) fn parse_body_as(
    call: &Call,
    body: &[u8],
    api_version: &str,
    kind: &str,
) -> Result<Value, ApiError> {
    if call.content_type() != super::protobuf::CONTENT_TYPE {
        return parse_json(body);
    }
    super::protobuf::decode(body, api_version, kind).map_err(|e| match e {
        super::protobuf::ProtobufError::Unsupported { .. } => ApiError::UnsupportedMediaType {
            accepted: format!("application/json ({e})"),
        },
        e => ApiError::bad_request(e.to_string()),
    })
}

/// Checks `apiVersion`/`kind` of a body, with Kubernetes' messages.
fn check_type_meta(info: &ResourceInfo, obj: &Value) -> Result<(), ApiError> {
    if !obj.is_object() {
        return Err(ApiError::bad_request(format!(
            "the request body must be a JSON object (a {})",
            info.kind
        )));
    }
    let expected = info.api_version();
    if let Some(v) = obj
        .get("apiVersion")
        .and_then(Value::as_str)
        .filter(|v| !v.is_empty())
    {
        if v != expected {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({expected})"
            )));
        }
    }
    if let Some(k) = obj
        .get("kind")
        .and_then(Value::as_str)
        .filter(|k| !k.is_empty())
    {
        if k != info.kind {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                info.kind
            )));
        }
    }
    Ok(())
}

/// How unknown fields in a body are treated (`?fieldValidation=`), as in Kubernetes: `Warn` (the
/// default) answers with a `Warning` header per field, `Strict` rejects the request, `Ignore`
/// drops them silently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FieldValidation {
    Ignore,
    Warn,
    Strict,
}

fn field_validation(call: &Call) -> Result<FieldValidation, ApiError> {
    match call.query.get("fieldValidation").map(String::as_str) {
        None | Some("" | "Warn") => Ok(FieldValidation::Warn),
        Some("Strict") => Ok(FieldValidation::Strict),
        Some("Ignore") => Ok(FieldValidation::Ignore),
        Some(other) => Err(ApiError::bad_request(format!(
            "fieldValidation: Unsupported value: {other:?}: supported values: \"Ignore\", \"Strict\", \"Warn\""
        ))),
    }
}

/// Adds one `Warning: 299 - "..."` header per warning (what kubectl prints as `Warning: ...`).
fn with_warnings(mut resp: Response, warnings: &[String]) -> Response {
    for w in warnings {
        let text: String = w
            .chars()
            .map(|c| {
                if c.is_ascii_graphic() || c == ' ' {
                    c
                } else {
                    '?'
                }
            })
            .collect();
        let value = format!("299 - {:?}", text);
        if let Ok(v) = HeaderValue::from_str(&value) {
            resp.headers_mut().append(header::WARNING, v);
        }
    }
    resp
}

/// Type-checks a body and aligns its namespace (and name, for item URLs) with the URL. Returns
/// the object and the warnings about unknown fields.
fn decode_body(call: &Call, raw: Value) -> Result<(Value, Vec<String>), ApiError> {
    let info = call.info();
    check_type_meta(info, &raw)?;
    let mode = field_validation(call)?;
    let name_hint = raw
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or(call.name())
        .to_string();
    let raw_copy = (mode != FieldValidation::Ignore).then(|| raw.clone());
    let mut obj = call
        .res
        .decode(raw)
        .map_err(|e| e.into_api_error(info, &name_hint))?;
    let mut warnings = Vec::new();
    if let Some(raw) = raw_copy {
        let unknown: Vec<String> = super::resource::unknown_fields(&raw, &obj)
            .into_iter()
            .map(|f| format!("unknown field {f:?}"))
            .collect();
        if mode == FieldValidation::Strict && !unknown.is_empty() {
            return Err(ApiError::bad_request(format!(
                "strict decoding error: {}",
                unknown.join(", ")
            )));
        }
        warnings = unknown;
    }
    set_type_meta(info, &mut obj);
    let meta = metadata_mut(&mut obj)
        .ok_or_else(|| ApiError::bad_request("metadata must be an object"))?;
    if info.namespaced {
        let url_ns = call.namespace.clone().unwrap_or_default();
        let body_ns = meta.get("namespace").and_then(Value::as_str).unwrap_or("");
        if !body_ns.is_empty() && body_ns != url_ns {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        meta.insert("namespace".into(), json!(url_ns));
    } else {
        meta.remove("namespace");
    }
    if let Some(url_name) = &call.name {
        let body_name = meta.get("name").and_then(Value::as_str).unwrap_or("");
        if body_name.is_empty() {
            meta.insert("name".into(), json!(url_name));
        } else if body_name != url_name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({url_name})"
            )));
        }
    }
    Ok((obj, warnings))
}

fn invalid(info: &ResourceInfo, obj: &Value, errors: Vec<FieldError>) -> ApiError {
    ApiError::Invalid {
        kind: info.kind.to_string(),
        name: meta_str(obj, "name").to_string(),
        errors,
    }
}

/// Metadata rules plus the resource's own validation.
fn validate(call: &Call, obj: &Value) -> Result<(), ApiError> {
    let info = call.info();
    let mut errs = validate_object_meta(obj, info.name_rule, info.namespaced);
    if let Err(e) = call.res.validate(obj) {
        errs.extend(e);
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(invalid(info, obj, errs))
    }
}

/// The `metadata.resourceVersion` of a body as a revision precondition.
fn resource_version_precondition(obj: &Value) -> Result<Option<u64>, ApiError> {
    match meta_str(obj, "resourceVersion") {
        "" => Ok(None),
        rv => rv.parse().map(Some).map_err(|_| {
            ApiError::bad_request(format!(
                "metadata.resourceVersion: Invalid value: {rv:?}: must be a resourceVersion this server issued"
            ))
        }),
    }
}

fn check_uid(call: &Call, expected: &str, current: &Value) -> Result<(), ApiError> {
    check_uid_of(call.info(), call.name(), expected, current)
}

fn check_uid_of(
    info: &ResourceInfo,
    name: &str,
    expected: &str,
    current: &Value,
) -> Result<(), ApiError> {
    let actual = meta_str(current, "uid");
    if !expected.is_empty() && expected != actual {
        return Err(ApiError::Conflict {
            resource: info.qualified(),
            name: name.to_string(),
            detail: format!("Precondition failed: UID in precondition: {expected}, UID in object meta: {actual}"),
        });
    }
    Ok(())
}

pub(super) async fn get_current(call: &Call) -> Result<Stored, ApiError> {
    match call.state.store.get(&call.key()).await {
        Ok(Some(s)) => Ok(s),
        Ok(None) => Err(call.store_err(StoreError::NotFound(call.key()))),
        Err(e) => Err(call.store_err(e)),
    }
}

pub(super) async fn get(call: &Call) -> Result<Response, ApiError> {
    let mut current = get_current(call).await?;
    set_type_meta(call.info(), &mut current.value);
    Ok(call.object_response(StatusCode::OK, current.value))
}

pub(super) async fn list(call: &Call) -> Result<Response, ApiError> {
    let info = call.info();
    let (mut items, rev) = call.selected().await?;
    for v in &mut items {
        set_type_meta(info, v);
    }
    if let Some(t) = call.table() {
        let now = now_seconds();
        let table = table::build(
            call.res.columns(),
            |o| call.res.table_row(o, now),
            &items,
            Some(rev.to_string()),
            t,
        );
        return Ok(json_response(StatusCode::OK, &table));
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "apiVersion": info.api_version(),
            "kind": info.list_kind(),
            "metadata": {"resourceVersion": rev.to_string()},
            "items": items,
        }),
    ))
}

pub(super) async fn create(call: &Call, body: Bytes) -> Result<Response, ApiError> {
    create_object(call, parse_body(call, &body)?).await
}

/// Creates the object `raw` (a parsed body, or what a server-side apply builds).
async fn create_object(call: &Call, raw: Value) -> Result<Response, ApiError> {
    let info = call.info();
    let dry_run = call.dry_run()?;
    let (mut obj, warnings) = decode_body(call, raw)?;
    let meta = metadata_mut(&mut obj)
        .ok_or_else(|| ApiError::bad_request("metadata must be an object"))?;
    for system in [
        "resourceVersion",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "selfLink",
    ] {
        meta.remove(system);
    }
    meta.insert("uid".into(), json!(new_uid()));
    meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
    meta.insert("generation".into(), json!(1));
    let name = meta
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let generate_base = meta
        .get("generateName")
        .and_then(Value::as_str)
        .filter(|g| name.is_empty() && !g.is_empty())
        .map(|g| {
            // Kubernetes trims the base so that base + suffix stays a valid length.
            let max = info.name_rule.max_len().min(63) - GENERATED_SUFFIX_LEN;
            g.chars().take(max).collect::<String>()
        });
    call.res.default(&mut obj);
    call.res.prepare_create(&mut obj);
    if let Some(ns) = call.namespace.as_deref().filter(|_| info.namespaced) {
        super::namespaces::admit_create(call.state.store.as_ref(), ns, info, &name).await?;
    }
    let attempts = if generate_base.is_some() { 5 } else { 1 };
    for attempt in 0..attempts {
        if let (Some(base), Some(meta)) = (&generate_base, metadata_mut(&mut obj)) {
            meta.insert("name".into(), json!(format!("{base}{}", random_suffix())));
        }
        validate(call, &obj)?;
        let name = meta_str(&obj, "name").to_string();
        let key = ObjectKey::new(
            info.storage_resource(),
            call.namespace.clone().unwrap_or_default(),
            &name,
        );
        let mut obj = obj.clone();
        let _allocation = call
            .res
            .allocate(call.state.store.as_ref(), &key, &mut obj, None)
            .await?;
        if dry_run {
            return Ok(with_warnings(
                call.object_response(StatusCode::CREATED, obj),
                &warnings,
            ));
        }
        match call.state.store.create(&key, obj).await {
            Ok(stored) => {
                if info.namespaced {
                    super::namespaces::recheck_after_create(
                        call.state.store.as_ref(),
                        info,
                        &key,
                        stored.revision,
                    )
                    .await?;
                }
                tracing::info!(resource = %info.plural, namespace = %key.namespace, name = %name, revision = stored.revision, "created");
                return Ok(with_warnings(
                    call.object_response(StatusCode::CREATED, stored.value),
                    &warnings,
                ));
            }
            Err(StoreError::AlreadyExists(_)) if attempt + 1 < attempts => continue,
            Err(e) => return Err(ApiError::from_store(e, &info.qualified(), &name)),
        }
    }
    Err(ApiError::Internal(
        "could not generate a unique name".into(),
    ))
}

/// Read-modify-write of the object with `build(current)`; retries on conflicts unless the client
/// gave a resourceVersion precondition.
pub(super) async fn update_loop<F>(
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
            super::resource::Allocation::none()
        } else {
            let store = call.state.store.as_ref();
            (call
                .res
                .allocate(store, &key, &mut new, Some(&current.value)))
            .await?
        };
        if new == current.value || dry_run {
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
                tracing::info!(resource = %call.info().plural, namespace = %key.namespace, name = %key.name, revision = stored.revision, status = call.status, "updated");
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
pub(super) fn build_update(call: &Call, body: &Value, current: &Value) -> Result<Value, ApiError> {
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
    // edits it must not make old status reports applicable again, or stall new ones.
    let seq = current
        .get("metadata")
        .and_then(|m| m.get("annotations"))
        .and_then(|a| a.get(crate::ingest::STATUS_SEQ_ANNOTATION))
        .cloned();
    let annotations = meta.entry("annotations").or_insert_with(|| json!({}));
    if let Some(a) = annotations.as_object_mut() {
        match seq {
            Some(v) => a.insert(crate::ingest::STATUS_SEQ_ANNOTATION.into(), v),
            None => a.remove(crate::ingest::STATUS_SEQ_ANNOTATION),
        };
        if a.is_empty() {
            meta.remove("annotations");
        }
    }
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
fn build_status_update(call: &Call, body: &Value, current: &Value) -> Result<Value, ApiError> {
    check_uid(call, meta_str(body, "uid"), current)?;
    let mut new = current.clone();
    if let Some(o) = new.as_object_mut() {
        match body.get("status") {
            Some(s) => o.insert("status".into(), s.clone()),
            None => o.remove("status"),
        };
    }
    call.res
        .validate_status(&new)
        .map_err(|e| invalid(call.info(), &new, e))?;
    Ok(new)
}

pub(super) async fn update(call: &Call, body: Bytes) -> Result<Response, ApiError> {
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

/// The `PATCH` handler: picks the algorithm of [`super::patch`] by media type and runs it in
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
    let schema = super::patch::schema::schema_for(info.group, info.kind);
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
                super::patch::json_patch::apply(current, &patch).map_err(|e| match e {
                    super::patch::json_patch::JsonPatchError::Malformed(_) => {
                        ApiError::bad_request(e.to_string())
                    }
                    super::patch::json_patch::JsonPatchError::Failed { .. } => {
                        ApiError::PatchNotApplicable(e.to_string())
                    }
                })?
            }
            (PatchType::Strategic, Some(schema)) => {
                super::patch::strategic::apply(current, &patch, schema)
                    .map_err(|e| ApiError::bad_request(e.to_string()))?
            }
            _ => {
                let mut merged = current.clone();
                super::patch::merge::apply(&mut merged, &patch);
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

/// Server-side apply: creates the object from the configuration if it does not exist, else
/// merges it in with field ownership (see [`super::patch::apply`]).
async fn server_side_apply(
    call: &Call,
    body: &[u8],
    schema: Option<super::patch::schema::Schema>,
) -> Result<Response, ApiError> {
    use super::patch::apply::{self as ssa, ApplyError, ApplyRequest};
    let info = call.info();
    // Without merge keys every list is atomic, as for a custom resource without a schema.
    let schema = schema.unwrap_or_else(super::patch::schema::Schema::atomic);
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
                .map(|c| super::error::Cause {
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

fn parse_grace(v: &str) -> Result<i64, ApiError> {
    v.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "gracePeriodSeconds: invalid value {v:?}: must be an integer"
        ))
    })
}

pub(super) async fn delete(call: &Call, body: Bytes) -> Result<Response, ApiError> {
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
pub(super) struct DeleteRequest {
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
pub(super) enum Deletion {
    /// The object is gone (or would be, in a dry run); its last value.
    Gone(Stored),
    /// The object stays, terminating (graceful deletion), possibly unchanged.
    Terminating(Value),
}

/// Deletes one object with its kind's semantics (graceful pod deletion, protected namespaces):
/// what the DELETE verb does, shared with the namespace controller so that emptying a
/// namespace deletes each object exactly as a client would.
pub(super) async fn delete_object(
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

/// The verb of a resource request, as Kubernetes names it.
fn verb_of(method: &Method, t: &ResourceTarget, watch_param: bool) -> &'static str {
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

pub(super) fn is_true(v: Option<&String>) -> bool {
    matches!(v.map(String::as_str), Some("1" | "true" | "True"))
}

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

/// Whether the client prefers protobuf answers (client-go's typed clients do). Watch streams
/// stay JSON: they are framed differently.
fn wants_protobuf(parts: &axum::http::request::Parts) -> bool {
    let watch = parts
        .uri
        .query()
        .unwrap_or("")
        .split('&')
        .any(|kv| matches!(kv.split_once('='), Some(("watch", "1" | "true" | "True"))));
    !watch
        && parts
            .headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(super::protobuf::preferred)
}

/// Re-encodes a complete JSON answer (an object, a list or a Status) as protobuf. Anything
/// else (a Table, a stream, a kind without a protobuf form) is left as it is: the clients that
/// prefer protobuf also accept JSON.
async fn protobuf_response(resp: Response) -> Response {
    use hyper::body::Body as _;
    let json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == b"application/json");
    if !json || resp.body().size_hint().exact().is_none() {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let bytes = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %e, "cannot buffer a JSON answer to re-encode it");
            return ApiError::Internal(format!("cannot buffer the answer: {e}")).into_response();
        }
    };
    let encoded = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| super::protobuf::encode(&v));
    match encoded {
        Some(Ok(pb)) => {
            parts.headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(super::protobuf::CONTENT_TYPE),
            );
            parts.headers.remove(header::CONTENT_LENGTH);
            Response::from_parts(parts, Body::from(pb))
        }
        Some(Err(e)) => {
            tracing::warn!(error = %e, "answering in JSON: the object has no protobuf form");
            Response::from_parts(parts, Body::from(bytes))
        }
        None => Response::from_parts(parts, Body::from(bytes)),
    }
}

async fn handle(
    state: &ApiState,
    parts: axum::http::request::Parts,
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
    let allowed = match (t.subresource.is_some(), verb) {
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
    let call = Call {
        state: state.clone(),
        res: t.res.clone(),
        namespace: t.namespace.clone(),
        name: t.name.clone(),
        status: t.subresource.as_deref() == Some("status"),
        query,
        headers: parts.headers,
    };
    let limit = state.max_body_bytes;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(
            protocol::timestamp::format(1_700_000_000),
            "2023-11-14T22:13:20Z"
        );
        assert_eq!(
            table::parse_timestamp(&now_rfc3339()).map(|t| (t - now_seconds()).abs() <= 1),
            Some(true)
        );
        let uid = new_uid();
        assert_eq!(uid.len(), 36);
        assert_eq!(uid.as_bytes()[14], b'4');
    }
}
