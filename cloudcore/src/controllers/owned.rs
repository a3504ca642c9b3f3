//! What the workload controllers share about the objects they own: owner references (who
//! controls a pod), stamping a pod out of a template, and the pod states that count as
//! active, ready and available. One definition, so a ReplicaSet and a StatefulSet never
//! disagree about whether a pod is available.

use super::ControllerError;
use crate::api::client::Client;
use crate::api::events::{self, EventType};
use crate::store::ObjectKey;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::{Metadata, Resource};
use serde::Deserialize;
use serde_json::{json, Value};

/// The metadata of a stored object, for reading owner references and names off objects a
/// controller only routes (store events, resync lists); metadata that does not decode reads as
/// empty, which routes the object nowhere.
pub fn meta_of(obj: &Value) -> ObjectMeta {
    obj.get("metadata")
        .and_then(|m| ObjectMeta::deserialize(m).ok())
        .unwrap_or_default()
}

/// The owner reference that makes `owner` the controller of a dependent (what Kubernetes'
/// `metav1.NewControllerRef` builds): deleting the owner in the foreground waits for the
/// dependent, and only one controller may own it.
pub fn controller_ref<K: Resource + Metadata<Ty = ObjectMeta>>(owner: &K) -> OwnerReference {
    let meta = owner.metadata();
    OwnerReference {
        api_version: K::API_VERSION.to_string(),
        kind: K::KIND.to_string(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// The owner reference of `meta` marked `controller: true`, if any.
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
}

/// Whether the object with `meta` is controlled by the object with `uid`.
pub fn is_controlled_by(meta: &ObjectMeta, uid: &str) -> bool {
    controller_of(meta).is_some_and(|r| r.uid == uid)
}

/// A pod made from `template` (a `PodTemplateSpec`, kept as JSON so that it is copied
/// verbatim), controlled by `owner`: the template's labels, annotations and spec, the owner's
/// namespace, and either `name` or a generated name starting with `generate_name`.
pub fn pod_from_template<K: Resource + Metadata<Ty = ObjectMeta>>(
    template: &Value,
    owner: &K,
    name: PodName<'_>,
) -> Value {
    let mut meta = json!({
        "namespace": owner.metadata().namespace.as_deref().unwrap_or(""),
        "ownerReferences": [controller_ref(owner)],
    });
    for field in ["labels", "annotations"] {
        if let Some(v) = template.pointer(&format!("/metadata/{field}")) {
            meta[field] = v.clone();
        }
    }
    match name {
        PodName::Exact(n) => meta["name"] = json!(n),
        PodName::Generate(prefix) => meta["generateName"] = json!(prefix),
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": template.get("spec").cloned().unwrap_or_else(|| json!({})),
    })
}

/// How a new pod is named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodName<'a> {
    /// Exactly this name (StatefulSet's `web-0`).
    Exact(&'a str),
    /// This prefix plus a random suffix (ReplicaSet's `web-7d4b9-`).
    Generate(&'a str),
}

/// The pod's `status.phase`, or `""`.
pub fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

/// Whether a pod still counts toward its controller's replicas: not being deleted, and not
/// finished (`Succeeded`/`Failed` pods are replaced, as Kubernetes' `IsPodActive`).
pub fn is_active(pod: &Pod) -> bool {
    !is_terminating(&pod.metadata) && !matches!(phase(pod), "Succeeded" | "Failed")
}

/// Whether an object is terminating (has a deletion timestamp).
pub fn is_terminating(meta: &ObjectMeta) -> bool {
    meta.deletion_timestamp.is_some()
}

/// The pod's `Ready` condition, if it is `True`: its last transition time in seconds (0 when
/// the condition carries none).
pub fn ready_since(pod: &Pod) -> Option<i64> {
    let cond = pod
        .status
        .as_ref()?
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Ready" && c.status == "True")?;
    Some(
        cond.last_transition_time
            .as_ref()
            .map_or(0, |t| t.0.as_second()),
    )
}

/// Whether the pod is Ready.
pub fn is_ready(pod: &Pod) -> bool {
    ready_since(pod).is_some()
}

/// Whether the pod has been Ready for at least `min_ready_seconds` at `now` (seconds since the
/// epoch): Kubernetes' `IsPodAvailable`.
pub fn is_available(pod: &Pod, min_ready_seconds: i64, now: i64) -> bool {
    match ready_since(pod) {
        Some(_) if min_ready_seconds <= 0 => true,
        Some(since) => since + min_ready_seconds <= now,
        None => false,
    }
}

/// Seconds until a Ready pod becomes available, if it is Ready but not yet available: when the
/// controller should look again.
pub fn seconds_until_available(pod: &Pod, min_ready_seconds: i64, now: i64) -> Option<i64> {
    let since = ready_since(pod)?;
    let left = since + min_ready_seconds - now;
    (left > 0).then_some(left)
}

/// Seconds until the first of `pods` that is Ready but not yet available becomes available.
pub fn next_available_in<'a>(
    pods: impl IntoIterator<Item = &'a Pod>,
    min_ready_seconds: i64,
    now: i64,
) -> Option<i64> {
    pods.into_iter()
        .filter_map(|p| seconds_until_available(p, min_ready_seconds, now))
        .min()
}

/// The keys of the `kind` objects (stored under `resource`) that control the object of a store
/// event, before or after the write: what a controller reconciles when one of its pods changes.
pub fn controller_keys(
    event: &crate::store::Event,
    kind: &str,
    resource: &str,
) -> Vec<crate::store::ObjectKey> {
    let mut keys = Vec::new();
    for obj in [&event.value, &event.previous].into_iter().flatten() {
        let meta = meta_of(obj);
        if let Some(r) = controller_of(&meta).filter(|r| r.kind == kind) {
            let key = crate::store::ObjectKey::new(resource, event.key.namespace.as_str(), &r.name);
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
    }
    keys
}

/// The store keys of `objects` of `resource` (what a controller's resync queues).
pub fn keys_of(resource: &str, objects: &[Value]) -> Vec<crate::store::ObjectKey> {
    objects
        .iter()
        .map(|o| {
            let meta = meta_of(o);
            crate::store::ObjectKey::new(
                resource,
                meta.namespace.as_deref().unwrap_or(""),
                meta.name.as_deref().unwrap_or(""),
            )
        })
        .collect()
}

/// A short stable digest of a pod template, in Kubernetes' safe alphabet (no vowels, no
/// look-alike digits), as `pod-template-hash` and `controller-revision-hash` labels carry it.
/// Stable across restarts and builds: FNV-1a over the canonical JSON (object keys sorted).
pub fn template_hash(template: &Value) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let bytes = serde_json::to_vec(template).unwrap_or_default();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let mut out = String::with_capacity(10);
    for _ in 0..10 {
        out.push(ALPHABET[(h % ALPHABET.len() as u64) as usize] as char);
        h /= ALPHABET.len() as u64;
    }
    out
}

/// Tells whoever watches `key` why its controller stopped retrying it: one Warning Event
/// `ReconcileError` on the object, which `kubectl describe` shows. The runner calls this once
/// each time the key is parked; the object may be gone already, then there is no one to tell.
pub async fn report_permanent_error(
    client: &Client,
    key: &ObjectKey,
    error: &ControllerError,
    component: &str,
) {
    let Ok(Some(object)) = client.get(&key.resource, &key.namespace, &key.name).await else {
        return;
    };
    let message = error.to_string();
    events::record_best_effort(
        client,
        &object,
        EventType::Warning,
        "ReconcileError",
        &message,
        component,
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner() -> k8s_openapi::api::apps::v1::ReplicaSet {
        serde_json::from_value(json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": "web-abc", "namespace": "prod", "uid": "u-1"}}))
        .unwrap()
    }

    #[test]
    fn pods_from_templates_carry_labels_and_a_controller_reference() {
        let template = json!({"metadata": {"labels": {"app": "web"}, "annotations": {"a": "b"}},
            "spec": {"containers": [{"name": "c", "image": "i"}]}});
        let pod = pod_from_template(&template, &owner(), PodName::Generate("web-abc-"));
        assert_eq!(pod["metadata"]["generateName"], "web-abc-");
        assert_eq!(pod["metadata"]["namespace"], "prod");
        assert_eq!(pod["metadata"]["labels"], json!({"app": "web"}));
        assert_eq!(pod["spec"]["containers"][0]["image"], "i");
        assert_eq!(
            pod["metadata"]["ownerReferences"][0]["apiVersion"],
            "apps/v1"
        );
        let meta = meta_of(&pod);
        assert!(is_controlled_by(&meta, "u-1"));
        assert!(!is_controlled_by(&meta, "u-2"));
        assert_eq!(controller_of(&meta).unwrap().kind, "ReplicaSet");
        let named = pod_from_template(&template, &owner(), PodName::Exact("web-0"));
        assert_eq!(named["metadata"]["name"], "web-0");
    }

    #[test]
    fn readiness_and_availability_follow_the_ready_condition() {
        let pod = |status: &str, at: &str| -> Pod {
            serde_json::from_value(json!({"status": {"phase": "Running", "conditions": [
                {"type": "Ready", "status": status, "lastTransitionTime": at}]}}))
            .unwrap()
        };
        let t = 1_735_689_600; // 2025-01-01T00:00:00Z
        let ready = pod("True", "2025-01-01T00:00:00Z");
        assert!(is_ready(&ready));
        assert!(is_available(&ready, 0, t));
        assert!(!is_available(&ready, 10, t + 5));
        assert_eq!(seconds_until_available(&ready, 10, t + 5), Some(5));
        assert!(is_available(&ready, 10, t + 10));
        assert_eq!(seconds_until_available(&ready, 10, t + 10), None);
        assert!(!is_ready(&pod("False", "2025-01-01T00:00:00Z")));
        assert!(is_active(&ready));
        let mut done = ready.clone();
        done.status.as_mut().unwrap().phase = Some("Failed".into());
        assert!(!is_active(&done));
        let mut deleting = ready;
        deleting.metadata =
            meta_of(&json!({"metadata": {"deletionTimestamp": "2025-01-01T00:00:00Z"}}));
        assert!(!is_active(&deleting));
        assert!(is_terminating(&deleting.metadata));
    }

    #[test]
    fn template_hashes_are_stable_and_sensitive() {
        let a = json!({"spec": {"containers": [{"name": "c", "image": "nginx:1.25"}]}});
        let b = json!({"spec": {"containers": [{"name": "c", "image": "nginx:1.26"}]}});
        assert_eq!(template_hash(&a), template_hash(&a.clone()));
        assert_ne!(template_hash(&a), template_hash(&b));
        assert_eq!(template_hash(&a).len(), 10);
        assert!(template_hash(&a)
            .chars()
            .all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)));
    }
}
