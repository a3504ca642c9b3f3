//! ConfigMaps: key validation, the 1 MiB size limit and `immutable`, following
//! `pkg/apis/core/validation` (`ValidateConfigMap`, `ValidateConfigMapUpdate`) of Kubernetes.
//!
//! The hub sends a ConfigMap to exactly the nodes whose pods reference it (see
//! [`crate::config_index`]); the API only stores it.

use super::error::FieldError;
use super::resource::{decode_as, typed, DecodeError, ResourceHandler, ResourceInfo};
use super::table::{age, Column};
use super::validation::{config_key, push_invalid, NameRule};
use k8s_openapi::api::core::v1::ConfigMap;
use serde_json::{json, Value};

/// Kubernetes' limit on the data of one ConfigMap or Secret (`MaxSecretSize`), in bytes: the
/// whole object must fit in one store value and, on the edge link, in one sync frame.
pub const MAX_DATA_BYTES: usize = 1024 * 1024;

/// What Kubernetes answers when an immutable object's data would change.
pub(super) const IMMUTABLE: &str = "field is immutable when `immutable` is set";

/// The ConfigMap resource.
pub const CONFIG_MAP_INFO: ResourceInfo = ResourceInfo {
    group: "",
    version: "v1",
    plural: "configmaps",
    singular: "configmap",
    kind: "ConfigMap",
    namespaced: true,
    verbs: super::resource::ALL_VERBS,
    short_names: &["cm"],
    categories: &[],
    status_subresource: false,
    name_rule: NameRule::Subdomain,
    selectable_fields: &[],
    return_deleted_object: false,
};

const COLUMNS: [Column; 3] = [
    super::table::NAME_COLUMN,
    Column { name: "Data", kind: "string", format: "", description: "Data contains the configuration data. Each key must consist of alphanumeric characters, '-', '_' or '.'.", priority: 0 },
    super::table::AGE_COLUMN,
];

/// The ConfigMap [`ResourceHandler`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ConfigMapHandler;

/// Checks every key of one data map (`field` is `data` or `binaryData`).
pub(super) fn check_keys<'a>(
    field: &str,
    keys: impl Iterator<Item = &'a String>,
    errs: &mut Vec<FieldError>,
) {
    for k in keys {
        push_invalid(errs, &format!("{field}[{k}]"), k, config_key(k));
    }
}

/// The rule of `immutable: true`: once set it stays set, and the listed data fields stay as
/// they are. `fields` pairs a field name with (new, old) values.
pub(super) fn check_immutable(
    old_immutable: Option<bool>,
    new_immutable: Option<bool>,
    fields: &[(&str, bool)],
) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if old_immutable != Some(true) {
        return errs;
    }
    if new_immutable != Some(true) {
        errs.push(FieldError::forbidden("immutable", IMMUTABLE));
    }
    for (field, changed) in fields {
        if *changed {
            errs.push(FieldError::forbidden(*field, IMMUTABLE));
        }
    }
    errs
}

use super::validation::errors_to_result as result;

impl ResourceHandler for ConfigMapHandler {
    fn info(&self) -> &ResourceInfo {
        &CONFIG_MAP_INFO
    }

    fn decode(&self, obj: Value) -> Result<Value, DecodeError> {
        decode_as::<ConfigMap>(obj)
    }

    fn validate(&self, obj: &Value) -> Result<(), Vec<FieldError>> {
        let cm: ConfigMap = typed(obj)?;
        let mut errs = Vec::new();
        let data = cm.data.unwrap_or_default();
        let binary = cm.binary_data.unwrap_or_default();
        check_keys("data", data.keys(), &mut errs);
        check_keys("binaryData", binary.keys(), &mut errs);
        for k in binary.keys().filter(|k| data.contains_key(*k)) {
            errs.push(FieldError::invalid(
                format!("binaryData[{k}]"),
                &json!(k),
                "duplicate of key present in data",
            ));
        }
        let total: usize = data.values().map(String::len).sum::<usize>()
            + binary.values().map(|v| v.0.len()).sum::<usize>();
        if total > MAX_DATA_BYTES {
            errs.push(FieldError::too_long("data", MAX_DATA_BYTES));
        }
        result(errs)
    }

    fn validate_update(&self, new: &Value, old: &Value) -> Result<(), Vec<FieldError>> {
        let new: ConfigMap = typed(new)?;
        let old: ConfigMap = typed(old)?;
        result(check_immutable(
            old.immutable,
            new.immutable,
            &[
                (
                    "data",
                    new.data.unwrap_or_default() != old.data.unwrap_or_default(),
                ),
                (
                    "binaryData",
                    new.binary_data.unwrap_or_default() != old.binary_data.unwrap_or_default(),
                ),
            ],
        ))
    }

    fn columns(&self) -> &'static [Column] {
        &COLUMNS
    }

    fn table_row(&self, obj: &Value, now: i64) -> Vec<Value> {
        let count = |field: &str| {
            obj.get(field)
                .and_then(Value::as_object)
                .map_or(0, |m| m.len())
        };
        vec![
            obj.pointer("/metadata/name").cloned().unwrap_or(json!("")),
            json!(count("data") + count("binaryData")),
            age(obj, now),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cm(body: Value) -> Value {
        let mut v = json!({"metadata": {"name": "cfg", "namespace": "default"}});
        if let (Some(o), Some(b)) = (v.as_object_mut(), body.as_object()) {
            o.extend(b.clone());
        }
        decode_as::<ConfigMap>(v).unwrap()
    }

    fn fields(r: Result<(), Vec<FieldError>>) -> Vec<(String, &'static str)> {
        r.err()
            .unwrap_or_default()
            .into_iter()
            .map(|e| (e.field.clone(), e.reason()))
            .collect()
    }

    #[test]
    fn keys_duplicates_and_size_are_checked() {
        assert!(ConfigMapHandler
            .validate(&cm(
                json!({"data": {"a.conf": "x", "B_2": "y"}, "binaryData": {"bin": "AAE="}})
            ))
            .is_ok());
        let bad = cm(json!({"data": {"..": "x", "a/b": "y", "dup": "z"},
            "binaryData": {"dup": "AAE="}}));
        assert_eq!(
            fields(ConfigMapHandler.validate(&bad)),
            [
                ("data[..]".to_string(), "FieldValueInvalid"),
                ("data[a/b]".to_string(), "FieldValueInvalid"),
                ("binaryData[dup]".to_string(), "FieldValueInvalid"),
            ]
        );
        let half = "x".repeat(MAX_DATA_BYTES / 2);
        let at_limit = cm(json!({"data": {"a": half, "b": half}}));
        assert!(ConfigMapHandler.validate(&at_limit).is_ok());
        let over = cm(json!({"data": {"a": half, "b": half, "c": "!"}}));
        let errs = ConfigMapHandler.validate(&over).unwrap_err();
        assert_eq!(
            errs[0].to_string(),
            "data: Too long: may not be more than 1048576 bytes"
        );
    }

    #[test]
    fn immutable_config_maps_keep_their_data() {
        let old = cm(json!({"data": {"a": "1"}, "immutable": true}));
        let mut same = old.clone();
        same["metadata"]["labels"] = json!({"x": "y"});
        assert!(ConfigMapHandler.validate_update(&same, &old).is_ok());
        let mut changed = old.clone();
        changed["data"]["a"] = json!("2");
        changed["binaryData"] = json!({"b": "AAE="});
        assert_eq!(
            fields(ConfigMapHandler.validate_update(&changed, &old)),
            [
                ("data".to_string(), "FieldValueForbidden"),
                ("binaryData".to_string(), "FieldValueForbidden"),
            ]
        );
        let mut unset = old.clone();
        unset["immutable"] = json!(false);
        assert_eq!(
            fields(ConfigMapHandler.validate_update(&unset, &old)),
            [("immutable".to_string(), "FieldValueForbidden")]
        );
        // A mutable ConfigMap may change, and may become immutable.
        let mutable = cm(json!({"data": {"a": "1"}}));
        assert!(ConfigMapHandler.validate_update(&changed, &mutable).is_ok());
    }

    #[test]
    fn table_row_counts_both_maps() {
        let mut v = cm(json!({"data": {"a": "1", "b": "2"}, "binaryData": {"c": "AAE="}}));
        v["metadata"]["creationTimestamp"] = json!("2025-01-01T00:00:00Z");
        assert_eq!(
            ConfigMapHandler.table_row(&v, 1_735_689_600 + 120),
            vec![json!("cfg"), json!(3), json!("2m")]
        );
        assert_eq!(ConfigMapHandler.table_row(&cm(json!({})), 0)[1], json!(0));
    }
}
