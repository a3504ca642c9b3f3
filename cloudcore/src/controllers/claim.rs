//! Claiming dependents as Kubernetes' `ControllerRefManager` does: an owner keeps the objects
//! it controls that still match its selector, adopts matching orphans (adding itself as the
//! controller reference), and releases controlled objects that stopped matching (removing the
//! reference), so that a relabelled pod leaves its ReplicaSet and a hand-made pod with the
//! right labels joins it.
//!
//! An owner being deleted neither adopts nor releases (its dependents are the garbage
//! collector's); an orphan being deleted is never adopted. Adoption and release are writes
//! through the [`Client`] with the object's `resourceVersion` as a precondition, so a
//! concurrent change makes the reconcile fail and retry instead of overwriting it.

use super::owned::{controller_of, controller_ref, is_terminating, meta_of};
use crate::api::client::Client;
use crate::api::selector::LabelSelector;
use crate::api::ApiError;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::{Metadata, Resource};
use serde_json::{json, Value};

/// What an owner does with one candidate object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Controlled by the owner and matching: it is the owner's.
    Owned,
    /// An orphan that matches: adopt it.
    Adopt,
    /// Controlled by the owner but no longer matching: release it.
    Release,
    /// Someone else's, or neither matching nor adoptable.
    Ignore,
}

/// Decides what the owner with metadata `owner` (and its parsed `selector`) does with `obj`.
pub fn claim(owner: &ObjectMeta, selector: &LabelSelector, obj: &Value) -> Claim {
    let owner_deleting = is_terminating(owner);
    let matches = selector.matches(obj);
    let meta = meta_of(obj);
    match controller_of(&meta) {
        Some(r) if Some(r.uid.as_str()) != owner.uid.as_deref() => Claim::Ignore,
        Some(_) if matches => Claim::Owned,
        Some(_) if owner_deleting => Claim::Ignore,
        Some(_) => Claim::Release,
        None if owner_deleting || !matches || is_terminating(&meta) => Claim::Ignore,
        None if owner.namespace != meta.namespace => Claim::Ignore,
        None => Claim::Adopt,
    }
}

/// `obj` with `owner` added as its controller reference (the rest of `obj` as stored).
pub fn with_controller<K: Resource + Metadata<Ty = ObjectMeta>>(obj: &Value, owner: &K) -> Value {
    let mut obj = obj.clone();
    let refs = obj["metadata"]
        .as_object_mut()
        .map(|m| m.entry("ownerReferences").or_insert_with(|| json!([])));
    if let Some(Value::Array(refs)) = refs {
        refs.push(json!(controller_ref(owner)));
    }
    obj
}

/// `obj` without the owner reference to `uid`.
pub fn without_owner(obj: &Value, uid: &str) -> Value {
    let mut obj = obj.clone();
    if let Some(meta) = obj["metadata"].as_object_mut() {
        if let Some(Value::Array(refs)) = meta.get_mut("ownerReferences") {
            refs.retain(|r| r.get("uid").and_then(Value::as_str) != Some(uid));
            if refs.is_empty() {
                meta.remove("ownerReferences");
            }
        }
    }
    obj
}

/// Claims `candidates` (objects of `resource` in the owner's namespace) for `owner`: adopts
/// and releases as [`claim`] decides and returns the objects the owner now controls (adopted
/// ones as written). An object that vanished meanwhile is skipped.
pub async fn claim_all<K: Resource + Metadata<Ty = ObjectMeta>>(
    client: &Client,
    resource: &str,
    owner: &K,
    selector: &LabelSelector,
    candidates: Vec<Value>,
) -> Result<Vec<Value>, ApiError> {
    let meta = owner.metadata();
    let ns = meta.namespace.clone().unwrap_or_default();
    let uid = meta.uid.clone().unwrap_or_default();
    let owner_name = meta.name.as_deref().unwrap_or("");
    let mut owned = Vec::new();
    for obj in candidates {
        let write = match claim(meta, selector, &obj) {
            Claim::Owned => {
                owned.push(obj);
                continue;
            }
            Claim::Ignore => continue,
            Claim::Adopt => with_controller(&obj, owner),
            Claim::Release => without_owner(&obj, &uid),
        };
        let adopting = controller_of(&meta_of(&write)).is_some();
        match client.update(resource, &ns, write).await {
            Ok(written) => {
                let name = meta_of(&written).name.unwrap_or_default();
                tracing::info!(resource, namespace = %ns, %name, owner = owner_name,
                    adopted = adopting, "claimed or released");
                if adopting {
                    owned.push(written);
                }
            }
            Err(ApiError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(deleting: bool) -> k8s_openapi::api::apps::v1::ReplicaSet {
        let mut o = json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": "web", "namespace": "prod", "uid": "u-1"}});
        if deleting {
            o["metadata"]["deletionTimestamp"] = json!("2025-01-01T00:00:00Z");
        }
        serde_json::from_value(o).unwrap()
    }

    fn pod(app: &str, controller: Option<&str>) -> Value {
        let mut p = json!({"metadata": {"name": "p", "namespace": "prod", "labels": {"app": app}}});
        if let Some(uid) = controller {
            p["metadata"]["ownerReferences"] =
                json!([{"kind": "ReplicaSet", "name": "x", "uid": uid, "controller": true}]);
        }
        p
    }

    #[test]
    fn owners_keep_adopt_release_and_ignore_as_kubernetes() {
        let sel = LabelSelector::parse("app=web").unwrap();
        let rs = owner(false);
        let o = &rs.metadata;
        assert_eq!(claim(o, &sel, &pod("web", Some("u-1"))), Claim::Owned);
        assert_eq!(claim(o, &sel, &pod("db", Some("u-1"))), Claim::Release);
        assert_eq!(claim(o, &sel, &pod("web", Some("u-2"))), Claim::Ignore);
        assert_eq!(claim(o, &sel, &pod("web", None)), Claim::Adopt);
        assert_eq!(claim(o, &sel, &pod("db", None)), Claim::Ignore);
        let mut terminating = pod("web", None);
        terminating["metadata"]["deletionTimestamp"] = json!("2025-01-01T00:00:00Z");
        assert_eq!(claim(o, &sel, &terminating), Claim::Ignore);
        let mut elsewhere = pod("web", None);
        elsewhere["metadata"]["namespace"] = json!("dev");
        assert_eq!(claim(o, &sel, &elsewhere), Claim::Ignore);
        // An owner being deleted neither adopts nor releases.
        let gone = owner(true);
        assert_eq!(
            claim(&gone.metadata, &sel, &pod("web", None)),
            Claim::Ignore
        );
        assert_eq!(
            claim(&gone.metadata, &sel, &pod("db", Some("u-1"))),
            Claim::Ignore
        );
        assert_eq!(
            claim(&gone.metadata, &sel, &pod("web", Some("u-1"))),
            Claim::Owned
        );

        let adopted = with_controller(&pod("web", None), &rs);
        assert!(super::super::owned::is_controlled_by(
            &meta_of(&adopted),
            "u-1"
        ));
        let released = without_owner(&adopted, "u-1");
        assert!(released.pointer("/metadata/ownerReferences").is_none());
    }
}
