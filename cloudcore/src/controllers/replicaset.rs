//! The ReplicaSet controller: keeps `spec.replicas` active pods matching the selector, as
//! Kubernetes' `ReplicaSetController` does.
//!
//! Each reconcile reads the ReplicaSet and the pods of its namespace from the store, claims
//! pods ([`super::claim`]: adopt matching orphans, release controlled pods that stopped
//! matching), then creates or deletes pods and writes the status. Reads are fresh store reads
//! after the previous reconcile's writes completed, so Kubernetes' "expectations" (which guard
//! against a lagging informer cache) are not needed: a reconcile never sees fewer pods than it
//! created.
//!
//! - **Creation** in slow-start batches (1, 2, 4, ... pods, concurrently within a batch), at
//!   most [`BURST_REPLICAS`] per reconcile, stopping at the first batch with an error, so a
//!   quota or admission failure costs one request rather than hundreds.
//! - **Deletion** picks victims by Kubernetes' ranking ([`delete_first`]): unassigned before
//!   assigned, Pending before Unknown before Running, not ready before ready, pods doubled up
//!   on a node first, ready for less time, more restarts, newer.
//! - **Status** (`replicas`, `fullyLabeledReplicas`, `readyReplicas`, `availableReplicas`,
//!   `observedGeneration`) is written only when it changed; when a Ready pod will become
//!   available after `minReadySeconds`, the key is requeued for that moment.
//! - Events `SuccessfulCreate`, `SuccessfulDelete`, `FailedCreate`, `FailedDelete` from
//!   `replicaset-controller`.
//!
//! Deleting a ReplicaSet's pods with it is the garbage collector's job, not this controller's.

use super::claim;
use super::owned::{self, controller_of, PodName};
use super::runner::{Reconciler, Requeue};
use super::selector_index::SelectorIndex;
use super::ControllerError;
use crate::api::client::{Client, Propagation};
use crate::api::events::{self, EventType};
use crate::api::table::parse_timestamp;
use crate::api::workloads::selector_of;
use crate::api::ApiError;
use crate::store::{Event, ObjectKey};
use async_trait::async_trait;
use serde_json::{json, Map, Value};
use std::cmp::Ordering;
use std::collections::HashMap;

/// Storage resource of ReplicaSets.
pub const RESOURCE: &str = "apps/replicasets";
/// The component name on Events.
pub const COMPONENT: &str = "replicaset-controller";
/// Most pods created or deleted in one reconcile (Kubernetes' `BurstReplicas`).
pub const BURST_REPLICAS: usize = 500;

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

fn int_at(v: &Value, pointer: &str) -> i64 {
    v.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

/// Seconds since the epoch, now.
pub(super) fn now_seconds() -> i64 {
    (crate::clock::now_ms() / 1000) as i64
}

/// The sizes of the slow-start batches that create `n` pods: 1, 2, 4, ... and the rest.
pub fn slow_start_batches(n: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let (mut remaining, mut batch) = (n, n.min(1));
    while remaining > 0 {
        out.push(batch);
        remaining -= batch;
        batch = (2 * batch).min(remaining);
    }
    out
}

fn phase_ordinal(pod: &Value) -> u8 {
    match str_at(pod, "/status/phase") {
        "Unknown" => 1,
        "Running" => 2,
        _ => 0,
    }
}

fn ready_time(pod: &Value) -> Option<i64> {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)?
        .iter()
        .find(|c| c["type"] == "Ready" && c["status"] == "True")
        .map(|c| parse_timestamp(str_at(c, "/lastTransitionTime")).unwrap_or(0))
}

fn max_restarts(pod: &Value) -> i64 {
    pod.pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .map(|c| int_at(c, "/restartCount"))
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

/// Kubernetes' `ActivePodsWithRanks` order: `Less` when `a` should be deleted before `b`.
/// `rank_*` is the number of the owner's active pods on the pod's node (doubled-up pods go
/// first).
pub fn delete_first(a: &Value, rank_a: usize, b: &Value, rank_b: usize) -> Ordering {
    let (node_a, node_b) = (str_at(a, "/spec/nodeName"), str_at(b, "/spec/nodeName"));
    if node_a != node_b && (node_a.is_empty() || node_b.is_empty()) {
        return if node_a.is_empty() {
            Ordering::Less
        } else {
            Ordering::Greater
        };
    }
    let by_phase = phase_ordinal(a).cmp(&phase_ordinal(b));
    if by_phase != Ordering::Equal {
        return by_phase;
    }
    let (ready_a, ready_b) = (ready_time(a), ready_time(b));
    if ready_a.is_some() != ready_b.is_some() {
        return if ready_a.is_none() {
            Ordering::Less
        } else {
            Ordering::Greater
        };
    }
    if rank_a != rank_b {
        return rank_b.cmp(&rank_a);
    }
    if let (Some(ta), Some(tb)) = (ready_a, ready_b) {
        if ta != tb {
            // Ready more recently goes first.
            return tb.cmp(&ta);
        }
    }
    let by_restarts = max_restarts(b).cmp(&max_restarts(a));
    if by_restarts != Ordering::Equal {
        return by_restarts;
    }
    let created = |p: &Value| parse_timestamp(str_at(p, "/metadata/creationTimestamp"));
    match (created(a), created(b)) {
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (Some(ca), Some(cb)) => cb.cmp(&ca),
        (None, None) => Ordering::Equal,
    }
}

/// The `n` pods of `active` to delete first.
pub fn pods_to_delete(active: &[Value], n: usize) -> Vec<&Value> {
    let mut per_node: HashMap<&str, usize> = HashMap::new();
    for p in active {
        let node = str_at(p, "/spec/nodeName");
        if !node.is_empty() {
            *per_node.entry(node).or_default() += 1;
        }
    }
    let rank = |p: &Value| {
        per_node
            .get(str_at(p, "/spec/nodeName"))
            .copied()
            .unwrap_or(0)
    };
    let mut ranked: Vec<(&Value, usize)> = active.iter().map(|p| (p, rank(p))).collect();
    ranked.sort_by(|(a, ra), (b, rb)| delete_first(a, *ra, b, *rb));
    ranked.into_iter().take(n).map(|(p, _)| p).collect()
}

/// The status of `rs` given its active pods at `now`, and the seconds after which a Ready
/// pod becomes available (when to look again), if any.
pub fn replica_set_status(rs: &Value, active: &[Value], now: i64) -> (Value, Option<i64>) {
    let min_ready = int_at(rs, "/spec/minReadySeconds");
    let template_labels = rs
        .pointer("/spec/template/metadata/labels")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let fully_labeled = active
        .iter()
        .filter(|p| {
            let labels = p.pointer("/metadata/labels").and_then(Value::as_object);
            template_labels
                .iter()
                .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
        })
        .count();
    let ready = active.iter().filter(|p| owned::is_ready(p)).count();
    let available = active
        .iter()
        .filter(|p| owned::is_available(p, min_ready, now))
        .count();
    let next = owned::next_available_in(active, min_ready, now);
    let mut status = Map::new();
    status.insert("replicas".into(), json!(active.len()));
    // Kubernetes omits the zero counts (`omitempty`).
    for (field, n) in [
        ("fullyLabeledReplicas", fully_labeled),
        ("readyReplicas", ready),
        ("availableReplicas", available),
    ] {
        if n > 0 {
            status.insert(field.into(), json!(n));
        }
    }
    status.insert(
        "observedGeneration".into(),
        json!(int_at(rs, "/metadata/generation")),
    );
    if let Some(c) = rs.pointer("/status/conditions") {
        status.insert("conditions".into(), c.clone());
    }
    (Value::Object(status), next)
}

/// The ReplicaSet [`Reconciler`].
pub struct ReplicaSetController {
    client: Client,
    index: SelectorIndex,
}

impl ReplicaSetController {
    /// A controller writing through `client`.
    pub fn new(client: Client) -> Self {
        Self {
            client,
            index: SelectorIndex::default(),
        }
    }

    async fn event(&self, rs: &Value, kind: EventType, reason: &str, message: &str) {
        let store = self.client.state().store.clone();
        events::record_best_effort(store.as_ref(), rs, kind, reason, message, COMPONENT).await;
    }

    /// Creates or deletes pods so that `active` reaches `spec.replicas`.
    async fn manage(&self, rs: &Value, active: &[Value]) -> Result<(), ApiError> {
        let ns = str_at(rs, "/metadata/namespace");
        let name = str_at(rs, "/metadata/name");
        let want = usize::try_from(
            rs.pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .unwrap_or(1),
        )
        .unwrap_or(0);
        if active.len() < want {
            let missing = (want - active.len()).min(BURST_REPLICAS);
            let template = rs.pointer("/spec/template").cloned().unwrap_or(Value::Null);
            let prefix = format!("{name}-");
            for batch in slow_start_batches(missing) {
                let pod = owned::pod_from_template(&template, rs, PodName::Generate(&prefix));
                let results = futures::future::join_all(
                    (0..batch).map(|_| self.client.create("pods", ns, pod.clone())),
                )
                .await;
                let mut failure = None;
                for r in results {
                    match r {
                        Ok(p) => {
                            let msg = format!("Created pod: {}", str_at(&p, "/metadata/name"));
                            self.event(rs, EventType::Normal, "SuccessfulCreate", &msg)
                                .await;
                        }
                        Err(e) => {
                            let msg = format!("Error creating: {e}");
                            self.event(rs, EventType::Warning, "FailedCreate", &msg)
                                .await;
                            failure.get_or_insert(e);
                        }
                    }
                }
                if let Some(e) = failure {
                    return Err(e);
                }
            }
        } else if active.len() > want {
            let surplus = (active.len() - want).min(BURST_REPLICAS);
            let victims = pods_to_delete(active, surplus);
            let results = futures::future::join_all(victims.iter().map(|p| {
                self.client.delete(
                    "pods",
                    ns,
                    str_at(p, "/metadata/name"),
                    Propagation::Background,
                    Some(str_at(p, "/metadata/uid")),
                )
            }))
            .await;
            let mut failure = None;
            for (p, r) in victims.iter().zip(results) {
                let pod = str_at(p, "/metadata/name");
                match r {
                    Ok(()) | Err(ApiError::NotFound { .. }) => {
                        let msg = format!("Deleted pod: {pod}");
                        self.event(rs, EventType::Normal, "SuccessfulDelete", &msg)
                            .await;
                    }
                    Err(e) => {
                        let msg = format!("Error deleting: {e}");
                        self.event(rs, EventType::Warning, "FailedDelete", &msg)
                            .await;
                        failure.get_or_insert(e);
                    }
                }
            }
            if let Some(e) = failure {
                return Err(e);
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Reconciler for ReplicaSetController {
    fn name(&self) -> &'static str {
        "replicaset"
    }

    async fn on_permanent_error(&self, key: &ObjectKey, error: &ControllerError) {
        owned::report_permanent_error(&self.client, key, error, COMPONENT).await;
    }

    async fn keys_for_event(&self, event: &Event) -> Vec<ObjectKey> {
        match event.key.resource.as_str() {
            RESOURCE => {
                self.index.observe(event);
                vec![event.key.clone()]
            }
            "pods" => {
                let ns = &event.key.namespace;
                let mut keys: Vec<ObjectKey> = Vec::new();
                for pod in [&event.value, &event.previous].into_iter().flatten() {
                    let names = match controller_of(pod) {
                        Some(r) if str_at(r, "/kind") == "ReplicaSet" => {
                            vec![str_at(r, "/name").to_string()]
                        }
                        Some(_) => vec![],
                        None => self.index.matching(ns, pod),
                    };
                    for n in names {
                        let k = ObjectKey::new(RESOURCE, ns.as_str(), &n);
                        if !keys.contains(&k) {
                            keys.push(k);
                        }
                    }
                }
                keys
            }
            _ => vec![],
        }
    }

    async fn all_keys(&self) -> Vec<ObjectKey> {
        let Some(all) = self.client.list_for_resync(RESOURCE).await else {
            return Vec::new();
        };
        self.index.replace_all(&all);
        owned::keys_of(RESOURCE, &all)
    }

    async fn reconcile(&self, key: &ObjectKey) -> Result<Requeue, ControllerError> {
        let Some(rs) = self.client.get(RESOURCE, &key.namespace, &key.name).await? else {
            return Ok(Requeue::No);
        };
        let Some(selector) = selector_of(&rs) else {
            tracing::warn!(%key, "ReplicaSet has no valid selector; nothing to manage");
            return Ok(Requeue::No);
        };
        let candidates = self.client.list("pods", Some(&key.namespace)).await?;
        let pods = claim::claim_all(&self.client, "pods", &rs, &selector, candidates).await?;
        let active: Vec<Value> = pods.into_iter().filter(owned::is_active).collect();
        let managed = if owned::is_terminating(&rs) {
            Ok(())
        } else {
            self.manage(&rs, &active).await
        };
        let (status, next) = replica_set_status(&rs, &active, now_seconds());
        self.client
            .write_status_if_changed(RESOURCE, &rs, status)
            .await?;
        managed?;
        Ok(Requeue::after_seconds(next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, node: &str, phase: &str, ready_at: Option<&str>) -> Value {
        let mut p = json!({"metadata": {"name": name, "creationTimestamp": "2025-01-01T00:00:00Z",
                "labels": {"app": "web"}},
            "spec": {"nodeName": node}, "status": {"phase": phase}});
        if let Some(at) = ready_at {
            p["status"]["conditions"] =
                json!([{"type": "Ready", "status": "True", "lastTransitionTime": at}]);
        }
        p
    }

    fn names(v: &[&Value]) -> Vec<String> {
        v.iter()
            .map(|p| str_at(p, "/metadata/name").to_string())
            .collect()
    }

    #[test]
    fn slow_start_doubles_batches() {
        assert_eq!(slow_start_batches(0), Vec::<usize>::new());
        assert_eq!(slow_start_batches(1), [1]);
        assert_eq!(slow_start_batches(7), [1, 2, 4]);
        assert_eq!(slow_start_batches(10), [1, 2, 4, 3]);
    }

    #[test]
    fn victims_are_ranked_as_kubernetes_ranks_them() {
        let ready = Some("2025-01-01T00:01:00Z");
        let pods = vec![
            pod(
                "running-old-ready",
                "n1",
                "Running",
                Some("2025-01-01T00:00:10Z"),
            ),
            pod("running-ready", "n2", "Running", ready),
            pod("unassigned", "", "Pending", None),
            pod("pending", "n3", "Pending", None),
            pod("unknown", "n4", "Unknown", None),
            pod("running-not-ready", "n5", "Running", None),
        ];
        assert_eq!(
            names(&pods_to_delete(&pods, 6)),
            [
                "unassigned",
                "pending",
                "unknown",
                "running-not-ready",
                "running-ready",
                "running-old-ready"
            ]
        );
        // Doubled-up pods go first; then more restarts; then newer.
        let mut a = pod("alone", "n1", "Running", ready);
        let b = pod("twin-1", "n2", "Running", ready);
        let c = pod("twin-2", "n2", "Running", ready);
        assert_eq!(
            names(&pods_to_delete(&[a.clone(), b.clone(), c.clone()], 1)),
            ["twin-1"]
        );
        a["status"]["containerStatuses"] = json!([{"restartCount": 4}]);
        let mut newer = pod("newer", "n3", "Running", ready);
        newer["metadata"]["creationTimestamp"] = json!("2025-01-02T00:00:00Z");
        let old = pod("old", "n4", "Running", ready);
        assert_eq!(
            names(&pods_to_delete(&[old, newer, a], 3)),
            ["alone", "newer", "old"]
        );
    }

    #[test]
    fn status_counts_labeled_ready_and_available_pods() {
        let rs = json!({"metadata": {"generation": 4},
            "spec": {"minReadySeconds": 10, "template": {"metadata": {"labels": {"app": "web", "v": "2"}}}}});
        let t = 1_735_689_600; // 2025-01-01T00:00:00Z
        let mut full = pod("a", "n1", "Running", Some("2025-01-01T00:00:00Z"));
        full["metadata"]["labels"]["v"] = json!("2");
        let recent = pod("b", "n1", "Running", Some("2025-01-01T00:00:25Z"));
        let unready = pod("c", "n1", "Pending", None);
        let (status, next) = replica_set_status(&rs, &[full, recent, unready], t + 30);
        assert_eq!(
            status,
            json!({"replicas": 3, "fullyLabeledReplicas": 1, "readyReplicas": 2,
                   "availableReplicas": 1, "observedGeneration": 4})
        );
        assert_eq!(next, Some(5));
        let (empty, next) = replica_set_status(&rs, &[], t);
        assert_eq!(empty, json!({"replicas": 0, "observedGeneration": 4}));
        assert_eq!(next, None);
    }
}
