//! Request bodies: reading them within the size limit, decoding JSON or Kubernetes protobuf,
//! checking `apiVersion`/`kind`, unknown fields (`?fieldValidation=`) and the namespace and
//! name against the URL, so every verb sees the same decoded object.

use super::meta::{metadata_mut, set_type_meta};
use super::request::Call;
use crate::api::error::ApiError;
use crate::api::resource::ResourceInfo;
use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::Response;
use futures::StreamExt;
use serde_json::{json, Value};

pub(super) async fn read_body(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
) -> Result<Bytes, ApiError> {
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

pub(in crate::api) fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("request body is not valid JSON: {e}")))
}

/// Parses a create or update body of the endpoint's kind: JSON or Kubernetes protobuf.
pub(super) fn parse_body(call: &Call, body: &[u8]) -> Result<Value, ApiError> {
    let info = call.info();
    parse_body_as(call, body, &info.api_version(), info.kind)
}

/// The media types of object bodies (create, update, a subresource's body): what
/// kube-apiserver negotiates them from the request's `Content-Type`, less YAML, which this
/// server does not decode (kubectl sends JSON or protobuf).
const ACCEPTED_BODY_TYPES: [&str; 2] = ["application/json", crate::api::protobuf::CONTENT_TYPE];

/// Parses a body of `api_version`/`kind` (a subresource's own kind: `Scale`, `Binding`,
/// `DeleteOptions`): JSON, or Kubernetes protobuf (what kubectl's typed clients send), which
/// becomes the JSON a manifest would give. Any other `Content-Type` is a 415, as kube-apiserver
/// answers (`NegotiateInputSerializer`): a body declared `text/plain` is not read as JSON
/// because it happens to parse. No `Content-Type` at all means JSON, as there too.
pub(in crate::api) fn parse_body_as(
    call: &Call,
    body: &[u8],
    api_version: &str,
    kind: &str,
) -> Result<Value, ApiError> {
    let media_type = call.content_type();
    if media_type.is_empty() || media_type.eq_ignore_ascii_case("application/json") {
        return parse_json(body);
    }
    if !media_type.eq_ignore_ascii_case(crate::api::protobuf::CONTENT_TYPE) {
        return Err(ApiError::UnsupportedMediaType {
            accepted: ACCEPTED_BODY_TYPES.join(", "),
        });
    }
    crate::api::protobuf::decode(body, api_version, kind).map_err(|e| match e {
        crate::api::protobuf::ProtobufError::Unsupported { .. } => ApiError::UnsupportedMediaType {
            accepted: format!("application/json ({e})"),
        },
        e => ApiError::bad_request(e.to_string()),
    })
}

/// Checks `apiVersion`/`kind` of a body, with Kubernetes' messages: a body of another kind or
/// version than the URL's resource is a 400. A body without them takes the URL's, as on
/// kube-apiserver: its JSON serializer defaults a missing kind and version from the built-in
/// type it decodes into (`gvkWithDefaults`); only custom resources, decoded as unstructured,
/// answer "Object 'Kind' is missing", and this server serves none.
pub(super) fn check_type_meta(info: &ResourceInfo, obj: &Value) -> Result<(), ApiError> {
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
pub(super) fn with_warnings(mut resp: Response, warnings: &[String]) -> Response {
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
pub(super) fn decode_body(call: &Call, raw: Value) -> Result<(Value, Vec<String>), ApiError> {
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
        let unknown: Vec<String> = crate::api::resource::unknown_fields(&raw, &obj)
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
