//! Secrets: `type` defaulting, `stringData` folded into `data`, key and type rules, the 1 MiB
//! size limit and `immutable`, following `pkg/apis/core/validation` (`ValidateSecret`,
//! `ValidateSecretUpdate`) of Kubernetes.
//!
//! Secret values never appear in an error message or a log line: causes name keys, never
//! contents. The hub sends a Secret only to the nodes whose pods reference it (see
//! [`crate::config_index`]).

use super::configmaps::{check_immutable, check_keys, MAX_DATA_BYTES};
use super::error::FieldError;
use super::resource::{decode_as, typed, DecodeError, ResourceHandler, ResourceInfo};
use super::table::{age, Column};
use super::validation::NameRule;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// The type a Secret gets when it names none.
pub const DEFAULT_TYPE: &str = "Opaque";

/// Shown instead of secret contents in error values, as Kubernetes does.
const REDACTED: &str = "<secret contents redacted>";

/// The Secret resource.
pub const SECRET_INFO: ResourceInfo = ResourceInfo {
    group: "",
    version: "v1",
    plural: "secrets",
    singular: "secret",
    kind: "Secret",
    namespaced: true,
    verbs: super::resource::ALL_VERBS,
    short_names: &[],
    categories: &[],
    status_subresource: false,
    name_rule: NameRule::Subdomain,
    selectable_fields: &[crate::api::resource::SelectableField {
        name: "type",
        pointer: "/type",
        default: "",
    }],
    return_deleted_object: false,
};

const COLUMNS: [Column; 4] = [
    super::table::NAME_COLUMN,
    Column { name: "Type", kind: "string", format: "", description: "Used to facilitate programmatic handling of secret data.", priority: 0 },
    Column { name: "Data", kind: "string", format: "", description: "Data contains the secret data. Each key must consist of alphanumeric characters, '-', '_' or '.'.", priority: 0 },
    super::table::AGE_COLUMN,
];

/// The Secret [`ResourceHandler`].
#[derive(Debug, Clone, Copy, Default)]
pub struct SecretHandler;

/// Keys a typed Secret must carry (`kubernetes.io/tls` needs `tls.crt` and `tls.key`, ...).
fn required_keys(kind: &str) -> &'static [&'static str] {
    match kind {
        "kubernetes.io/dockercfg" => &[".dockercfg"],
        "kubernetes.io/dockerconfigjson" => &[".dockerconfigjson"],
        "kubernetes.io/ssh-auth" => &["ssh-privatekey"],
        "kubernetes.io/tls" => &["tls.crt", "tls.key"],
        _ => &[],
    }
}

fn validate_type(s: &Secret, data: &BTreeMap<String, ByteString>, errs: &mut Vec<FieldError>) {
    let kind = s.type_.as_deref().unwrap_or(DEFAULT_TYPE);
    let has = |k: &str| data.get(k).is_some_and(|v| !v.0.is_empty());
    for key in required_keys(kind) {
        if !has(key) {
            errs.push(FieldError::required(format!("data[{key}]"), ""));
        }
    }
    match kind {
        "kubernetes.io/dockercfg" | "kubernetes.io/dockerconfigjson" => {
            let key = required_keys(kind)[0];
            if let Some(v) = data.get(key).filter(|v| !v.0.is_empty()) {
                if let Err(e) = serde_json::from_slice::<Value>(&v.0) {
                    // The parser's message may quote the input: report only where it failed.
                    errs.push(FieldError::invalid(
                        format!("data[{key}]"),
                        &json!(REDACTED),
                        format!("not valid JSON (line {}, column {})", e.line(), e.column()),
                    ));
                }
            }
        }
        "kubernetes.io/basic-auth" if !has("username") && !has("password") => {
            errs.push(FieldError::required("data[username]", ""));
            errs.push(FieldError::required("data[password]", ""));
        }
        "kubernetes.io/service-account-token" => {
            let named = s
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("kubernetes.io/service-account.name"))
                .is_some_and(|n| !n.is_empty());
            if !named {
                errs.push(FieldError::required(
                    "metadata.annotations[kubernetes.io/service-account.name]",
                    "",
                ));
            }
        }
        _ => {}
    }
}

use super::validation::errors_to_result as result;

impl ResourceHandler for SecretHandler {
    fn info(&self) -> &ResourceInfo {
        &SECRET_INFO
    }

    fn decode(&self, obj: Value) -> Result<Value, DecodeError> {
        decode_as::<Secret>(obj)
    }

    /// `type` defaults to `Opaque`; `stringData` is a write-only convenience: its entries replace
    /// those of `data` with the same key and it is never stored (as in Kubernetes). Doing it here
    /// means validation, `immutable` and the edge all see one `data` map.
    fn default(&self, obj: &mut Value) {
        let Ok(mut s) = serde_json::from_value::<Secret>(obj.clone()) else {
            return;
        };
        if s.type_.as_deref().unwrap_or("").is_empty() {
            s.type_ = Some(DEFAULT_TYPE.into());
        }
        if let Some(strings) = s.string_data.take() {
            let data = s.data.get_or_insert_with(BTreeMap::new);
            for (k, v) in strings {
                data.insert(k, ByteString(v.into_bytes()));
            }
        }
        if let Ok(v) = serde_json::to_value(&s) {
            *obj = v;
        }
    }

    fn validate(&self, obj: &Value) -> Result<(), Vec<FieldError>> {
        let s: Secret = typed(obj)?;
        let mut errs = Vec::new();
        let data = s.data.clone().unwrap_or_default();
        check_keys("data", data.keys(), &mut errs);
        let total: usize = data.values().map(|v| v.0.len()).sum();
        if total > MAX_DATA_BYTES {
            errs.push(FieldError::too_long("data", MAX_DATA_BYTES));
        }
        validate_type(&s, &data, &mut errs);
        result(errs)
    }

    fn validate_update(&self, new: &Value, old: &Value) -> Result<(), Vec<FieldError>> {
        let new: Secret = typed(new)?;
        let old: Secret = typed(old)?;
        let mut errs = Vec::new();
        let new_type = new.type_.as_deref().unwrap_or(DEFAULT_TYPE);
        let old_type = old.type_.as_deref().unwrap_or(DEFAULT_TYPE);
        if new_type != old_type {
            errs.push(FieldError::invalid(
                "type",
                &json!(new_type),
                "field is immutable",
            ));
        }
        errs.extend(check_immutable(
            old.immutable,
            new.immutable,
            &[(
                "data",
                new.data.unwrap_or_default() != old.data.unwrap_or_default(),
            )],
        ));
        result(errs)
    }

    fn columns(&self) -> &'static [Column] {
        &COLUMNS
    }

    fn table_row(&self, obj: &Value, now: i64) -> Vec<Value> {
        vec![
            obj.pointer("/metadata/name").cloned().unwrap_or(json!("")),
            json!(obj.get("type").and_then(Value::as_str).unwrap_or("")),
            json!(obj
                .get("data")
                .and_then(Value::as_object)
                .map_or(0, |m| m.len())),
            age(obj, now),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(body: Value) -> Value {
        let mut v = json!({"metadata": {"name": "db", "namespace": "default"}});
        if let (Some(o), Some(b)) = (v.as_object_mut(), body.as_object()) {
            o.extend(b.clone());
        }
        let mut v = decode_as::<Secret>(v).unwrap();
        SecretHandler.default(&mut v);
        v
    }

    fn fields(r: Result<(), Vec<FieldError>>) -> Vec<(String, &'static str)> {
        r.err()
            .unwrap_or_default()
            .into_iter()
            .map(|e| (e.field.clone(), e.reason()))
            .collect()
    }

    #[test]
    fn string_data_is_folded_into_data_and_type_defaults() {
        // "aHVudGVyMg==" is base64 of "hunter2"; stringData wins over data for the same key.
        let s = secret(json!({"data": {"user": "YWRtaW4=", "password": "b2xk"},
            "stringData": {"password": "hunter2"}}));
        assert_eq!(s["type"], DEFAULT_TYPE);
        assert_eq!(
            s["data"],
            json!({"user": "YWRtaW4=", "password": "aHVudGVyMg=="})
        );
        assert!(s.get("stringData").is_none());
        let typed = secret(json!({"type": "kubernetes.io/tls",
            "stringData": {"tls.crt": "c", "tls.key": "k"}}));
        assert_eq!(typed["type"], "kubernetes.io/tls");
        assert!(SecretHandler.validate(&typed).is_ok());
    }

    #[test]
    fn validation_names_keys_never_values() {
        let bad = secret(json!({"stringData": {"../x": "topsecret", "ok": "fine"}}));
        let errs = SecretHandler.validate(&bad).unwrap_err();
        assert_eq!(errs[0].field, "data[../x]");
        assert!(errs.iter().all(|e| !e.to_string().contains("topsecret")));
        let tls = secret(json!({"type": "kubernetes.io/tls", "stringData": {"tls.crt": "c"}}));
        assert_eq!(
            fields(SecretHandler.validate(&tls)),
            [("data[tls.key]".to_string(), "FieldValueRequired")]
        );
        let cfg = secret(json!({"type": "kubernetes.io/dockerconfigjson",
            "stringData": {".dockerconfigjson": "{\"auths\": topsecret"}}));
        let errs = SecretHandler.validate(&cfg).unwrap_err();
        assert_eq!(errs[0].field, "data[.dockerconfigjson]");
        assert!(!errs[0].to_string().contains("topsecret"), "{}", errs[0]);
        let auth = secret(json!({"type": "kubernetes.io/basic-auth"}));
        assert_eq!(SecretHandler.validate(&auth).unwrap_err().len(), 2);
        let big = secret(json!({"stringData": {"a": "x".repeat(MAX_DATA_BYTES + 1)}}));
        assert_eq!(
            fields(SecretHandler.validate(&big)),
            [("data".to_string(), "FieldValueTooLong")]
        );
    }

    #[test]
    fn type_and_immutable_data_cannot_change() {
        let old = secret(json!({"stringData": {"a": "1"}}));
        let mut retyped = old.clone();
        retyped["type"] = json!("kubernetes.io/basic-auth");
        assert_eq!(
            fields(SecretHandler.validate_update(&retyped, &old)),
            [("type".to_string(), "FieldValueInvalid")]
        );
        let frozen = secret(json!({"stringData": {"a": "1"}, "immutable": true}));
        // stringData in an update is folded into data first, so it counts as a data change.
        let mut via_string_data = frozen.clone();
        via_string_data["stringData"] = json!({"a": "2"});
        SecretHandler.default(&mut via_string_data);
        assert_eq!(
            fields(SecretHandler.validate_update(&via_string_data, &frozen)),
            [("data".to_string(), "FieldValueForbidden")]
        );
        let mut unfrozen = frozen.clone();
        unfrozen.as_object_mut().unwrap().remove("immutable");
        assert_eq!(
            fields(SecretHandler.validate_update(&unfrozen, &frozen)),
            [("immutable".to_string(), "FieldValueForbidden")]
        );
        let mut relabelled = frozen.clone();
        relabelled["metadata"]["labels"] = json!({"a": "b"});
        assert!(SecretHandler.validate_update(&relabelled, &frozen).is_ok());
    }

    #[test]
    fn table_row() {
        let s = secret(json!({"stringData": {"a": "1", "b": "2"}}));
        let row = SecretHandler.table_row(&s, 0);
        assert_eq!(row[..3], [json!("db"), json!("Opaque"), json!(2)]);
    }
}
