//! API errors, rendered as Kubernetes `Status` objects.
//!
//! Every failure a client can see is a `meta/v1 Status` with the HTTP code, `reason` and
//! `details.causes` Kubernetes would send, because kubectl and client libraries branch on them
//! (`IsNotFound`, `IsConflict`, field errors shown per field) — a plain-text error would turn
//! into "unknown error" on the client side.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use std::fmt;

use crate::store::StoreError;

/// The kind of a field error, as in `k8s.io/apimachinery/pkg/util/validation/field.ErrorType`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldErrorKind {
    /// A required field is missing or empty.
    Required,
    /// The value is malformed or out of range.
    Invalid,
    /// The value is not one of an enumeration.
    NotSupported(Vec<String>),
    /// The value repeats one that must be unique.
    Duplicate,
    /// The value refers to something that does not exist (e.g. a volume).
    NotFound,
    /// The change is not allowed (e.g. an immutable field).
    Forbidden,
    /// The value is longer than the limit (in bytes).
    TooLong(usize),
    /// A list has more items than the limit: (items, limit).
    TooMany(usize, usize),
}

/// The most of an offending value a field error echoes back, in bytes of its JSON form.
///
/// Kubernetes quotes the bad value in both the Status message and the cause, so an unbounded
/// echo turns a 1 MiB label value into a 2 MiB error (and as much in every log line that
/// prints it). Like apimachinery's field errors, which omit or cut values that are too long to
/// be useful, a longer value is cut here and marked as such; the field path and the reason stay
/// whole, which is what a client needs to fix its request.
pub const MAX_ECHOED_VALUE_BYTES: usize = 256;

/// `value` JSON-encoded for an error message, cut to [`MAX_ECHOED_VALUE_BYTES`].
fn echoed(value: &Value) -> String {
    bounded(value.to_string())
}

/// `text` cut to [`MAX_ECHOED_VALUE_BYTES`] (on a character boundary) with a note of how long
/// the whole text is; shorter text is left as it is.
fn bounded(text: String) -> String {
    if text.len() <= MAX_ECHOED_VALUE_BYTES {
        return text;
    }
    let mut cut = MAX_ECHOED_VALUE_BYTES;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!(
        "{}...(truncated: the value has {} bytes)",
        &text[..cut],
        text.len()
    )
}

/// One semantic problem with one field of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// What is wrong.
    pub kind: FieldErrorKind,
    /// JSON field path as Kubernetes prints it: `spec.containers[0].image`.
    pub field: String,
    /// The offending value, JSON-encoded (`"Foo"`, `70000`), when there is one to show; cut to
    /// [`MAX_ECHOED_VALUE_BYTES`] by the constructors.
    pub value: Option<String>,
    /// Human explanation, may be empty.
    pub detail: String,
}

impl FieldError {
    fn new(
        kind: FieldErrorKind,
        field: impl Into<String>,
        value: Option<String>,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            kind,
            // A path can carry a client's map key (`metadata.labels[KEY]`): bound it as well.
            field: bounded(field.into()),
            value,
            detail: detail.into(),
        }
    }

    /// A missing required value.
    pub fn required(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(FieldErrorKind::Required, field, None, detail)
    }

    /// A malformed value; `value` is shown JSON-encoded.
    pub fn invalid(field: impl Into<String>, value: &Value, detail: impl Into<String>) -> Self {
        Self::new(FieldErrorKind::Invalid, field, Some(echoed(value)), detail)
    }

    /// A value outside an enumeration.
    pub fn not_supported(field: impl Into<String>, value: &Value, supported: &[&str]) -> Self {
        let supported = supported.iter().map(|s| s.to_string()).collect();
        Self::new(
            FieldErrorKind::NotSupported(supported),
            field,
            Some(echoed(value)),
            "",
        )
    }

    /// A repeated value that must be unique.
    pub fn duplicate(field: impl Into<String>, value: &Value) -> Self {
        Self::new(FieldErrorKind::Duplicate, field, Some(echoed(value)), "")
    }

    /// A reference to something that does not exist.
    pub fn not_found(field: impl Into<String>, value: &Value) -> Self {
        Self::new(FieldErrorKind::NotFound, field, Some(echoed(value)), "")
    }

    /// A change that is not allowed.
    pub fn forbidden(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(FieldErrorKind::Forbidden, field, None, detail)
    }

    /// A value over a size limit of `max` bytes (`ConfigMap` and `Secret` data).
    pub fn too_long(field: impl Into<String>, max: usize) -> Self {
        Self::new(FieldErrorKind::TooLong(max), field, None, "")
    }

    /// A list of `actual` items over its limit of `max` (`field.TooMany`).
    pub fn too_many(field: impl Into<String>, actual: usize, max: usize) -> Self {
        Self::new(FieldErrorKind::TooMany(actual, max), field, None, "")
    }

    /// The `reason` of the Status cause (`FieldValueRequired`, ...).
    pub fn reason(&self) -> &'static str {
        match self.kind {
            FieldErrorKind::Required => "FieldValueRequired",
            FieldErrorKind::Invalid => "FieldValueInvalid",
            FieldErrorKind::NotSupported(_) => "FieldValueNotSupported",
            FieldErrorKind::Duplicate => "FieldValueDuplicate",
            FieldErrorKind::NotFound => "FieldValueNotFound",
            FieldErrorKind::Forbidden => "FieldValueForbidden",
            FieldErrorKind::TooLong(_) => "FieldValueTooLong",
            FieldErrorKind::TooMany(..) => "FieldValueTooMany",
        }
    }

    /// The message without the field path (`Required value`, `Invalid value: "x": ...`), which is
    /// what Kubernetes puts in `details.causes[].message`.
    pub fn body(&self) -> String {
        let value = self.value.as_deref().unwrap_or("null");
        let mut s = match &self.kind {
            FieldErrorKind::Required => "Required value".to_string(),
            FieldErrorKind::Invalid => format!("Invalid value: {value}"),
            FieldErrorKind::NotSupported(supported) => {
                let list: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
                format!(
                    "Unsupported value: {value}: supported values: {}",
                    list.join(", ")
                )
            }
            FieldErrorKind::Duplicate => format!("Duplicate value: {value}"),
            FieldErrorKind::NotFound => format!("Not found: {value}"),
            FieldErrorKind::Forbidden => "Forbidden".to_string(),
            FieldErrorKind::TooLong(max) => format!("Too long: may not be more than {max} bytes"),
            FieldErrorKind::TooMany(actual, max) => {
                format!("Too many: {actual}: must have at most {max} items")
            }
        };
        if !self.detail.is_empty() {
            s.push_str(": ");
            s.push_str(&self.detail);
        }
        s
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.body())
        } else {
            write!(f, "{}: {}", self.field, self.body())
        }
    }
}

impl std::error::Error for FieldError {}

/// One `details.causes` entry of a Status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// Machine-readable reason (`FieldValueInvalid`, ...).
    pub reason: String,
    /// Field path, may be empty.
    pub field: String,
    /// Message.
    pub message: String,
}

/// Everything the API can answer with instead of success.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request itself is malformed (bad JSON, bad selector, type error in the body).
    #[error("{message}")]
    BadRequest {
        /// Message.
        message: String,
        /// Per-field causes, if any.
        causes: Vec<Cause>,
    },
    /// The named object does not exist.
    #[error("{resource} \"{name}\" not found")]
    NotFound {
        /// Qualified resource (`pods`, `deployments.apps`).
        resource: String,
        /// Object name.
        name: String,
    },
    /// The path names no resource this server knows.
    #[error("the server could not find the requested resource")]
    PathNotFound,
    /// Create of an object that exists.
    #[error("{resource} \"{name}\" already exists")]
    AlreadyExists {
        /// Qualified resource.
        resource: String,
        /// Object name.
        name: String,
    },
    /// A precondition (resourceVersion, uid) does not hold.
    #[error("Operation cannot be fulfilled on {resource} \"{name}\": {detail}")]
    Conflict {
        /// Qualified resource.
        resource: String,
        /// Object name.
        name: String,
        /// Why.
        detail: String,
    },
    /// The object fails semantic validation.
    #[error("{kind} \"{name}\" is invalid: {}", render_field_errors(.errors))]
    Invalid {
        /// Kind (`Pod`).
        kind: String,
        /// Object name.
        name: String,
        /// The problems, one cause each.
        errors: Vec<FieldError>,
    },
    /// The request is understood but refused by a policy (a protected or terminating
    /// namespace), as Kubernetes' admission answers it.
    #[error("{resource} \"{name}\" is forbidden: {reason}")]
    Forbidden {
        /// Qualified resource.
        resource: String,
        /// Object name.
        name: String,
        /// Why.
        reason: String,
    },
    /// A watch asked to resume from a revision older than the retained history; clients
    /// re-list on it.
    #[error("too old resource version: {requested} ({oldest})")]
    Expired {
        /// The revision asked for.
        requested: u64,
        /// The oldest revision the history can resume from.
        oldest: u64,
    },
    /// A read asked for a resourceVersion newer than any this server has seen, and it did not
    /// arrive while the read waited (reads wait up to 3 s for it): 504 with
    /// reason `Timeout`, a `ResourceVersionTooLarge` cause and a one-second retry hint, as
    /// kube-apiserver's watch cache answers (`storage.NewTooLargeResourceVersionError`), so
    /// clients retry instead of reading a state older than the one they asked for.
    #[error("Timeout: Too large resource version: {requested}, current: {current}")]
    TooLargeResourceVersion {
        /// The revision asked for.
        requested: u64,
        /// The newest revision the server has.
        current: u64,
    },
    /// A list cannot be continued from the given `continue` token: 410 `Expired`, on which
    /// client-go's pager falls back to a full list.
    #[error("{0}")]
    ResourceExpired(String),
    /// The resource does not support this verb.
    #[error("the server does not allow this method on the requested resource")]
    MethodNotAllowed,
    /// The body exceeds the size limit.
    #[error("Request entity too large: limit is {limit}")]
    RequestEntityTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The body's media type is not one this endpoint understands.
    #[error("the body of the request was in an unknown format - accepted media types include: {accepted}")]
    UnsupportedMediaType {
        /// Media types that would be accepted.
        accepted: String,
    },
    /// A well-formed patch that does not apply to the object (a failed JSON patch `test`, a
    /// path that does not exist): 422, as kube-apiserver answers.
    #[error("{0}")]
    PatchNotApplicable(String),
    /// A server-side apply would change fields other managers own: 409 with one
    /// `FieldManagerConflict` cause per field, which kubectl prints with its `--force-conflicts`
    /// advice.
    #[error("{message}")]
    ApplyConflict {
        /// Kubernetes' `Apply failed with N conflict(s): ...` message.
        message: String,
        /// One cause per conflicting field.
        causes: Vec<Cause>,
    },
    /// The server failed (store backend error, corrupt object).
    #[error("Internal error occurred: {0}")]
    Internal(String),
    /// Something the request needs is not reachable now (a node away from the cloud): 503.
    /// No `Retry-After`: client-go would retry silently instead of showing why.
    #[error("{0}")]
    ServiceUnavailable(String),
    /// A limit on concurrent work was reached: 429, without `Retry-After` for the same reason.
    #[error("{0}")]
    TooManyRequests(String),
}

fn render_field_errors(errors: &[FieldError]) -> String {
    match errors {
        [one] => one.to_string(),
        many => format!(
            "[{}]",
            many.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

impl ApiError {
    /// A 400 with one cause naming a field.
    pub fn bad_field(message: String, field: String, cause: String) -> Self {
        ApiError::BadRequest {
            message,
            causes: vec![Cause {
                reason: "FieldValueInvalid".into(),
                field,
                message: cause,
            }],
        }
    }

    /// A 400 without causes.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            message: message.into(),
            causes: Vec::new(),
        }
    }

    /// The conflict every stale write gets, worded as Kubernetes words it.
    pub fn stale(resource: &str, name: &str) -> Self {
        ApiError::Conflict {
            resource: resource.into(),
            name: name.into(),
            detail: "the object has been modified; please apply your changes to the latest version and try again".into(),
        }
    }

    /// Maps a store error on object `name` of `resource` (qualified) to the API error.
    pub fn from_store(e: StoreError, resource: &str, name: &str) -> Self {
        match e {
            StoreError::AlreadyExists(_) => ApiError::AlreadyExists {
                resource: resource.into(),
                name: name.into(),
            },
            StoreError::NotFound(_) => ApiError::NotFound {
                resource: resource.into(),
                name: name.into(),
            },
            StoreError::Conflict { .. } => ApiError::stale(resource, name),
            other => ApiError::Internal(other.to_string()),
        }
    }

    /// HTTP status code.
    pub fn code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::NotFound { .. } | ApiError::PathNotFound => StatusCode::NOT_FOUND,
            ApiError::AlreadyExists { .. }
            | ApiError::Conflict { .. }
            | ApiError::ApplyConflict { .. } => StatusCode::CONFLICT,
            ApiError::Invalid { .. } | ApiError::PatchNotApplicable(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::Expired { .. } | ApiError::ResourceExpired(_) => StatusCode::GONE,
            ApiError::TooLargeResourceVersion { .. } => StatusCode::GATEWAY_TIMEOUT,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::RequestEntityTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::ServiceUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// Status `reason`.
    pub fn reason(&self) -> &'static str {
        match self {
            ApiError::BadRequest { .. } => "BadRequest",
            ApiError::NotFound { .. } | ApiError::PathNotFound => "NotFound",
            ApiError::AlreadyExists { .. } => "AlreadyExists",
            ApiError::Conflict { .. } | ApiError::ApplyConflict { .. } => "Conflict",
            ApiError::Invalid { .. } | ApiError::PatchNotApplicable(_) => "Invalid",
            ApiError::Forbidden { .. } => "Forbidden",
            ApiError::Expired { .. } | ApiError::ResourceExpired(_) => "Expired",
            ApiError::TooLargeResourceVersion { .. } => "Timeout",
            ApiError::MethodNotAllowed => "MethodNotAllowed",
            ApiError::RequestEntityTooLarge { .. } => "RequestEntityTooLarge",
            ApiError::UnsupportedMediaType { .. } => "UnsupportedMediaType",
            ApiError::Internal(_) => "InternalError",
            ApiError::ServiceUnavailable(_) => "ServiceUnavailable",
            ApiError::TooManyRequests(_) => "TooManyRequests",
        }
    }

    /// The `Status` object.
    pub fn status(&self) -> Value {
        let (group_kind, details) = match self {
            ApiError::NotFound { resource, name }
            | ApiError::AlreadyExists { resource, name }
            | ApiError::Conflict { resource, name, .. }
            | ApiError::Forbidden { resource, name, .. } => {
                (Some(resource.as_str()), json!({"name": name}))
            }
            ApiError::Invalid { kind, name, errors } => {
                let causes: Vec<Value> = errors
                    .iter()
                    .map(|e| json!({"reason": e.reason(), "message": e.body(), "field": e.field}))
                    .collect();
                (None, json!({"name": name, "kind": kind, "causes": causes}))
            }
            ApiError::BadRequest { causes, .. } | ApiError::ApplyConflict { causes, .. }
                if !causes.is_empty() =>
            {
                let causes: Vec<Value> = causes
                    .iter()
                    .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
                    .collect();
                (None, json!({"causes": causes}))
            }
            ApiError::Internal(message) => (None, json!({"causes": [{"message": message}]})),
            ApiError::TooLargeResourceVersion { .. } => (
                None,
                json!({
                    "causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
                    "retryAfterSeconds": TOO_LARGE_RETRY_AFTER_SECONDS,
                }),
            ),
            _ => (None, json!({})),
        };
        let mut details = details;
        if let (Some(qualified), Some(d)) = (group_kind, details.as_object_mut()) {
            // `deployments.apps` → kind "deployments", group "apps", as Kubernetes reports it.
            let (kind, group) = qualified.split_once('.').unwrap_or((qualified, ""));
            d.insert("kind".into(), json!(kind));
            if !group.is_empty() {
                d.insert("group".into(), json!(group));
            }
        }
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": self.reason(),
            "details": details,
            "code": self.code().as_u16(),
        })
    }
}

/// The retry hint of a too-large resourceVersion (kube-apiserver's
/// `resourceVersionTooHighRetrySeconds`).
pub const TOO_LARGE_RETRY_AFTER_SECONDS: u64 = 1;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = self.code();
        if code.is_server_error()
            && !matches!(
                self,
                ApiError::TooLargeResourceVersion { .. } | ApiError::ServiceUnavailable(_)
            )
        {
            tracing::warn!(error = %self, "API request failed");
        }
        let mut resp = json_response(code, &self.status());
        // kube-apiserver turns a Status' retryAfterSeconds into a Retry-After header, which
        // client-go honours.
        if let ApiError::TooLargeResourceVersion { .. } = self {
            resp.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(TOO_LARGE_RETRY_AFTER_SECONDS),
            );
        }
        resp
    }
}

/// A JSON response with the given code.
pub fn json_response(code: StatusCode, body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut resp = (code, bytes).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn field_error_messages_read_like_kubernetes() {
        let e = FieldError::required("spec.containers[0].image", "");
        assert_eq!(e.to_string(), "spec.containers[0].image: Required value");
        let e = FieldError::not_supported(
            "spec.restartPolicy",
            &json!("Sometimes"),
            &["Always", "Never"],
        );
        assert_eq!(
            e.to_string(),
            r#"spec.restartPolicy: Unsupported value: "Sometimes": supported values: "Always", "Never""#
        );
        let e = FieldError::invalid(
            "spec.containers[0].ports[0].containerPort",
            &json!(0),
            "must be between 1 and 65535, inclusive",
        );
        assert_eq!(
            e.body(),
            "Invalid value: 0: must be between 1 and 65535, inclusive"
        );
    }

    #[test]
    fn invalid_status_lists_causes() {
        let err = ApiError::Invalid {
            kind: "Pod".into(),
            name: "x".into(),
            errors: vec![
                FieldError::required("spec.containers[0].image", ""),
                FieldError::duplicate("spec.containers[1].name", &json!("a")),
            ],
        };
        let s = err.status();
        assert_eq!(s["code"], 422);
        assert_eq!(s["reason"], "Invalid");
        assert_eq!(
            s["message"],
            r#"Pod "x" is invalid: [spec.containers[0].image: Required value, spec.containers[1].name: Duplicate value: "a"]"#
        );
        assert_eq!(s["details"]["causes"][1]["reason"], "FieldValueDuplicate");
        assert_eq!(
            s["details"]["causes"][0]["field"],
            "spec.containers[0].image"
        );
    }

    #[test]
    fn not_found_names_resource_and_group() {
        let s = ApiError::NotFound {
            resource: "deployments.apps".into(),
            name: "web".into(),
        }
        .status();
        assert_eq!(s["message"], r#"deployments.apps "web" not found"#);
        assert_eq!(
            s["details"],
            json!({"name": "web", "kind": "deployments", "group": "apps"})
        );
        let s = ApiError::stale("pods", "x").status();
        assert_eq!(s["code"], 409);
        assert_eq!(
            s["message"],
            r#"Operation cannot be fulfilled on pods "x": the object has been modified; please apply your changes to the latest version and try again"#
        );
    }
}
