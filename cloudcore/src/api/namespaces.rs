//! Namespaces: the kind, the admission rules Kubernetes' `NamespaceLifecycle` plugin applies
//! to everything created into one, and the controller that empties a deleted namespace.
//!
//! Deleting a namespace does not remove it at once: it is marked (`deletionTimestamp`,
//! `status.phase: Terminating`), creations into it are refused with 403, and the
//! namespace controller ([`crate::controllers::namespace`]) deletes every namespaced object in it through the ordinary delete
//! path — so bound pods terminate gracefully on their edge — and removes the namespace once a
//! pass finds it empty. `default`, `kube-system` and `kube-public` cannot be deleted; they and
//! `kube-node-lease` are created at start by [`ensure_builtin`].

use super::error::{ApiError, FieldError};
use super::handlers::{new_uid, now_rfc3339};
use super::resource::{
    decode_as, DecodeError, DeleteAction, DeleteOptions, ResourceHandler, ResourceInfo,
    SelectableField,
};
use super::table::{age, Column};
use super::validation::NameRule;
use crate::store::{ObjectKey, Store, StoreError};
use k8s_openapi::api::core::v1::Namespace;
use serde_json::{json, Value};

/// Store resource of namespaces.
pub const RESOURCE: &str = "namespaces";

/// Namespaces that exist from the start.
pub const BUILTIN: [&str; 4] = ["default", "kube-system", "kube-public", "kube-node-lease"];

/// Namespaces that may not be deleted (Kubernetes' immortal namespaces).
pub const PROTECTED: [&str; 3] = ["default", "kube-system", "kube-public"];

/// The label Kubernetes puts on every namespace (its own name), for namespace selectors.
const NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// The namespace resource.
pub const NAMESPACE_INFO: ResourceInfo = ResourceInfo {
    group: "",
    version: "v1",
    plural: "namespaces",
    singular: "namespace",
    kind: "Namespace",
    namespaced: false,
    verbs: &[
        "create", "delete", "get", "list", "patch", "update", "watch",
    ],
    short_names: &["ns"],
    categories: &[],
    status_subresource: true,
    name_rule: NameRule::Label,
    selectable_fields: &[SelectableField {
        name: "status.phase",
        pointer: "/status/phase",
        default: "",
    }],
    return_deleted_object: false,
};

const COLUMNS: [Column; 3] = [
    super::table::NAME_COLUMN,
    Column {
        name: "Status",
        kind: "string",
        format: "",
        description: "The status of the namespace",
        priority: 0,
    },
    super::table::AGE_COLUMN,
];

/// The namespace [`ResourceHandler`].
#[derive(Debug, Clone, Copy, Default)]
pub struct NamespaceHandler;

/// Whether a namespace object is being deleted.
pub fn is_terminating(ns: &Value) -> bool {
    ns.pointer("/metadata/deletionTimestamp").is_some()
        || ns.pointer("/status/phase").and_then(Value::as_str) == Some("Terminating")
}

impl ResourceHandler for NamespaceHandler {
    fn info(&self) -> &ResourceInfo {
        &NAMESPACE_INFO
    }

    fn decode(&self, obj: Value) -> Result<Value, DecodeError> {
        decode_as::<Namespace>(obj)
    }

    fn default(&self, obj: &mut Value) {
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if name.is_empty() {
            return;
        }
        if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            let labels = meta.entry("labels").or_insert_with(|| json!({}));
            if let Some(l) = labels.as_object_mut() {
                l.insert(NAME_LABEL.into(), json!(name));
            }
        }
    }

    fn prepare_create(&self, obj: &mut Value) {
        if let Some(o) = obj.as_object_mut() {
            o.insert("status".into(), json!({"phase": "Active"}));
        }
    }

    fn validate(&self, _obj: &Value) -> Result<(), Vec<FieldError>> {
        // The name (a DNS label) is checked generically; spec.finalizers are free-form here
        // because nothing in Skerry acts on them.
        Ok(())
    }

    fn validate_status(&self, new: &Value) -> Result<(), Vec<FieldError>> {
        match new.pointer("/status/phase") {
            None => Ok(()),
            Some(p) if p == "Active" || p == "Terminating" => Ok(()),
            Some(p) => Err(vec![FieldError::not_supported(
                "status.phase",
                p,
                &["Active", "Terminating"],
            )]),
        }
    }

    fn forbid_delete(&self, obj: &Value) -> Option<String> {
        let name = obj.pointer("/metadata/name").and_then(Value::as_str)?;
        PROTECTED
            .contains(&name)
            .then(|| "this namespace may not be deleted".to_string())
    }

    fn removed_by_controller(&self) -> bool {
        true
    }

    fn on_delete(&self, obj: &Value, _opts: &DeleteOptions, now: &str) -> DeleteAction {
        if obj.pointer("/metadata/deletionTimestamp").is_some() {
            return DeleteAction::Unchanged;
        }
        let mut v = obj.clone();
        if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("deletionTimestamp".into(), json!(now));
            meta.insert("deletionGracePeriodSeconds".into(), json!(0));
        }
        if let Some(o) = v.as_object_mut() {
            let status = o.entry("status").or_insert_with(|| json!({}));
            status["phase"] = json!("Terminating");
        }
        DeleteAction::Update(v)
    }

    fn columns(&self) -> &'static [Column] {
        &COLUMNS
    }

    fn table_row(&self, obj: &Value, now: i64) -> Vec<Value> {
        vec![
            obj.pointer("/metadata/name").cloned().unwrap_or(json!("")),
            obj.pointer("/status/phase")
                .cloned()
                .unwrap_or(json!("Active")),
            age(obj, now),
        ]
    }
}

/// Creates the [`BUILTIN`] namespaces that do not exist (idempotent; run at every start).
pub async fn ensure_builtin(store: &dyn Store) -> Result<(), StoreError> {
    for name in BUILTIN {
        let key = ObjectKey::new(RESOURCE, "", name);
        if store.get(&key).await?.is_some() {
            continue;
        }
        let mut obj = json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "uid": new_uid(), "creationTimestamp": now_rfc3339()},
            "spec": {},
        });
        NamespaceHandler.default(&mut obj);
        NamespaceHandler.prepare_create(&mut obj);
        match store.create(&key, obj).await {
            Ok(_) => tracing::info!(namespace = name, "created built-in namespace"),
            Err(StoreError::AlreadyExists(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The `NamespaceLifecycle` admission rule for creating object `name` of `info` in namespace
/// `ns`: 404 if the namespace does not exist, 403 if it is being deleted.
pub(super) async fn admit_create(
    store: &dyn Store,
    ns: &str,
    info: &ResourceInfo,
    name: &str,
) -> Result<(), ApiError> {
    match store.get(&ObjectKey::new(RESOURCE, "", ns)).await {
        Ok(None) => Err(ApiError::NotFound {
            resource: RESOURCE.into(),
            name: ns.into(),
        }),
        Ok(Some(s)) if is_terminating(&s.value) => Err(ApiError::Forbidden {
            resource: info.qualified(),
            name: name.into(),
            reason: format!(
                "unable to create new content in namespace {ns} because it is being terminated"
            ),
        }),
        Ok(Some(_)) => Ok(()),
        Err(e) => Err(ApiError::Internal(format!(
            "cannot read namespace {ns}: {e}"
        ))),
    }
}

/// Closes the race between a create and the deletion of its namespace: the admission check
/// ([`admit_create`]) runs before the write, so the namespace controller may find the namespace
/// empty and remove it between that check and the write, leaving an object no namespace owns.
/// Checking again after the write closes it: the namespace is marked terminating before the
/// controller's last emptiness check, so an object written after that check always finds the
/// namespace terminating or gone here, and is taken back (the client gets the same 403 or 404
/// as if it had come later). An object written before that check is seen and deleted by the
/// controller. Kubernetes closes the same window with the namespace's `kubernetes` finalizer
/// and repeated content sweeps; this keeps one sweep and needs no finalizer.
pub(super) async fn recheck_after_create(
    store: &dyn Store,
    info: &ResourceInfo,
    key: &ObjectKey,
    revision: u64,
) -> Result<(), ApiError> {
    match admit_create(store, &key.namespace, info, &key.name).await {
        Err(e @ (ApiError::NotFound { .. } | ApiError::Forbidden { .. })) => {
            match store.delete(key, None).await {
                Ok(_) | Err(StoreError::NotFound(_)) => {
                    tracing::info!(object = %key, revision, "namespace went away during the create; object taken back");
                    Err(e)
                }
                Err(del) => Err(ApiError::Internal(format!(
                    "{key} was created while its namespace was being deleted, and removing it again failed ({del}); delete it by hand"
                ))),
            }
        }
        // A failed read is not evidence that the namespace is gone: keep the object (the
        // controller sweeps a terminating namespace again while anything is left in it).
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deletion_marks_terminating_once_and_protects_system_namespaces() {
        let ns = json!({"metadata": {"name": "team-a"}, "status": {"phase": "Active"}});
        let DeleteAction::Update(marked) =
            NamespaceHandler.on_delete(&ns, &DeleteOptions::default(), "2025-01-01T00:00:00Z")
        else {
            panic!("a namespace delete must mark it terminating");
        };
        assert_eq!(marked["status"]["phase"], "Terminating");
        assert_eq!(
            marked["metadata"]["deletionTimestamp"],
            "2025-01-01T00:00:00Z"
        );
        assert!(is_terminating(&marked) && !is_terminating(&ns));
        assert_eq!(
            NamespaceHandler.on_delete(&marked, &DeleteOptions::default(), "2025-01-01T00:00:09Z"),
            DeleteAction::Unchanged
        );
        assert_eq!(NamespaceHandler.forbid_delete(&ns), None);
        for name in PROTECTED {
            assert_eq!(
                NamespaceHandler
                    .forbid_delete(&json!({"metadata": {"name": name}}))
                    .as_deref(),
                Some("this namespace may not be deleted")
            );
        }
        assert_eq!(
            NamespaceHandler.forbid_delete(&json!({"metadata": {"name": "kube-node-lease"}})),
            None
        );
    }

    #[test]
    fn defaults_label_the_name_and_rows_show_the_phase() {
        let mut ns =
            json!({"metadata": {"name": "team-a", "creationTimestamp": "2025-01-01T00:00:00Z"}});
        NamespaceHandler.default(&mut ns);
        NamespaceHandler.prepare_create(&mut ns);
        assert_eq!(ns["metadata"]["labels"][NAME_LABEL], "team-a");
        assert_eq!(
            NamespaceHandler.table_row(&ns, 1_735_689_600 + 60),
            vec![json!("team-a"), json!("Active"), json!("60s")]
        );
    }

    #[tokio::test]
    async fn an_object_created_as_its_namespace_goes_is_taken_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::SledStore::open(dir.path(), crate::projection::shard).unwrap();
        ensure_builtin(&store).await.unwrap();
        let info = super::super::configmaps::CONFIG_MAP_INFO;
        let ns = |name: &str, terminating: bool| {
            let mut v =
                json!({"metadata": {"name": name}, "spec": {}, "status": {"phase": "Active"}});
            if terminating {
                v["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
                v["status"]["phase"] = json!("Terminating");
            }
            v
        };
        store
            .create(&ObjectKey::new(RESOURCE, "", "live"), ns("live", false))
            .await
            .unwrap();
        store
            .create(&ObjectKey::new(RESOURCE, "", "ending"), ns("ending", true))
            .await
            .unwrap();
        for (namespace, code) in [("live", None), ("ending", Some(403)), ("gone", Some(404))] {
            let key = ObjectKey::new("configmaps", namespace, "cfg");
            let s = store
                .create(&key, json!({"metadata": {"name": "cfg"}}))
                .await
                .unwrap();
            let r = recheck_after_create(&store, &info, &key, s.revision).await;
            assert_eq!(
                r.err().map(|e| e.status()["code"].as_u64().unwrap()),
                code,
                "{namespace}"
            );
            assert_eq!(
                store.get(&key).await.unwrap().is_some(),
                code.is_none(),
                "{namespace}"
            );
        }
    }
}
