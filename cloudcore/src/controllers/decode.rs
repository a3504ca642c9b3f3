//! Decoding stored objects into k8s-openapi types at the top of a reconcile, so that the
//! controllers read fields as typed Rust instead of JSON pointers, and parsing an owner's label
//! selector into the one [`LabelSelector`] the API layer uses.
//!
//! Decoding is lossy (k8s-openapi drops fields it does not know), so a decoded object is for
//! reading: writes go back as `Value`s built from what the controller owns (status, patches,
//! objects stamped from a template kept as `Value`), never as a re-encoded whole object.

use super::ControllerError;
use crate::api::selector::LabelSelector;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector as MetaSelector, ObjectMeta};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// The key of `obj` as errors name it: `kind namespace/name`.
fn key_of(v: &Value) -> String {
    let s = |p: &str| v.pointer(p).and_then(Value::as_str).unwrap_or("");
    format!(
        "{} {}/{}",
        s("/kind"),
        s("/metadata/namespace"),
        s("/metadata/name")
    )
}

/// `v` decoded as `T`; a stored object that does not decode (a field of the wrong type) is
/// [`ControllerError::Invalid`]: retrying cannot help until the object changes.
pub fn typed<T: DeserializeOwned>(v: &Value) -> Result<T, ControllerError> {
    serde_path_to_error::deserialize(v).map_err(|e| ControllerError::Invalid {
        key: key_of(v),
        reason: format!(
            "the stored object does not decode at {}: {}; fix that field",
            e.path(),
            e.inner()
        ),
    })
}

/// The metadata of a stored object of any kind (what the garbage collector reads of every
/// object); metadata that does not decode is [`ControllerError::Invalid`], as in [`typed`].
pub fn metadata(v: &Value) -> Result<ObjectMeta, ControllerError> {
    let meta = v.get("metadata").unwrap_or(&Value::Null);
    serde_path_to_error::deserialize(meta).map_err(|e| ControllerError::Invalid {
        key: key_of(v),
        reason: format!(
            "the stored metadata does not decode at metadata.{}: {}; fix that field",
            e.path(),
            e.inner()
        ),
    })
}

/// The label selector `sel` of the object with metadata `meta`, parsed as Kubernetes'
/// `metav1.LabelSelectorAsSelector` does. A missing, empty or malformed selector is
/// [`ControllerError::Invalid`]: the owner selects nothing (as in Kubernetes, where a selector
/// that fails to parse matches nothing) and the runner reports why on the object.
pub fn owner_selector(
    kind: &str,
    meta: &ObjectMeta,
    sel: Option<&MetaSelector>,
) -> Result<LabelSelector, ControllerError> {
    let invalid = |reason: String| ControllerError::Invalid {
        key: format!(
            "{kind} {}/{}",
            meta.namespace.as_deref().unwrap_or(""),
            meta.name.as_deref().unwrap_or("")
        ),
        reason,
    };
    let parsed = LabelSelector::from_meta(sel.unwrap_or(&MetaSelector::default()))
        .map_err(|e| invalid(format!("spec.selector: {}; fix spec.selector", e.problem)))?;
    if parsed.is_empty() {
        return Err(invalid(
            "spec.selector: Required value: an empty selector would select every pod; set matchLabels or matchExpressions".into(),
        ));
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::ReplicaSet;
    use serde_json::json;

    #[test]
    fn objects_that_do_not_decode_are_permanently_invalid() {
        let bad = json!({"kind": "ReplicaSet", "metadata": {"name": "web", "namespace": "prod"},
            "spec": {"replicas": "three"}});
        let err = typed::<ReplicaSet>(&bad).unwrap_err();
        assert!(err.is_permanent());
        let msg = err.to_string();
        assert!(
            msg.contains("ReplicaSet prod/web") && msg.contains("spec.replicas"),
            "{msg}"
        );
    }

    /// Kubernetes: a stored selector that fails to parse matches nothing and the controller
    /// reports it, rather than treating it as selecting everything or skipping the bad term.
    #[test]
    fn a_malformed_stored_selector_selects_nothing_and_is_reported() {
        let meta = ObjectMeta {
            name: Some("web".into()),
            namespace: Some("prod".into()),
            ..Default::default()
        };
        let sel: MetaSelector = serde_json::from_value(json!({"matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "Near", "values": ["a"]}]}))
        .unwrap();
        let err = owner_selector("ReplicaSet", &meta, Some(&sel)).unwrap_err();
        assert!(err.is_permanent());
        assert!(
            err.to_string().contains("matchExpressions[0].operator"),
            "{err}"
        );
        let empty = owner_selector("ReplicaSet", &meta, None).unwrap_err();
        assert!(empty.to_string().contains("Required"), "{empty}");
        let ok: MetaSelector =
            serde_json::from_value(json!({"matchLabels": {"app": "web"}})).unwrap();
        assert!(owner_selector("ReplicaSet", &meta, Some(&ok))
            .unwrap()
            .matches(&json!({"metadata": {"labels": {"app": "web"}}})));
    }
}
