//! The ReplicaSet controller: keeps `spec.replicas` active pods matching the selector, as
//! Kubernetes' `ReplicaSetController` does. The same code, [`ReplicasController`], serves
//! ReplicationControllers, as Kubernetes' `ReplicationManager` wraps its ReplicaSet
//! controller: the two kinds differ only in how their selector is spelled (an RC's is a label
//! map, read as `matchLabels`), their names and their event component ([`ReplicaOwner`]).
//!
//! Each reconcile reads the ReplicaSet from the store and its candidate pods (those it controls
//! and the namespace's orphans) from the shared pod cache ([`super::informer`]), claims pods
//! ([`super::claim`]: adopt matching orphans, release controlled pods that stopped matching),
//! then creates or deletes pods and writes the status. The cache is read only after it caught
//! up with the store ([`Informers::synced`]), so it holds every write of the previous
//! reconciles and Kubernetes' "expectations" (which guard against a lagging informer cache) are
//! not needed: a reconcile never sees fewer pods than it created.
//!
//! - **Creation** in slow-start batches (1, 2, 4, ... pods, concurrently within a batch), at
//!   most [`BURST_REPLICAS`] per reconcile, stopping at the first batch with an error, so a
//!   quota or admission failure costs one request rather than hundreds.
//! - **Deletion** picks victims by Kubernetes' ranking ([`delete_first`]): unassigned before
//!   assigned, Pending before Unknown before Running, not ready before ready, pods doubled up
//!   on a node first, ready for less time, more restarts, newer.
//! - **Status** (`replicas`, `fullyLabeledReplicas`, `readyReplicas`, `availableReplicas`,
//!   `observedGeneration`) is written only when it changed; when a Ready pod will become
//!   available after `minReadySeconds`, the key is requeued for that moment. A create or
//!   delete that fails sets the `ReplicaFailure` condition (reason `FailedCreate` or
//!   `FailedDelete`, the error as message), which the next successful pass removes
//!   ([`with_failure_condition`]).
//! - Events `SuccessfulCreate`, `SuccessfulDelete`, `FailedCreate`, `FailedDelete` from
//!   `replicaset-controller` (`replication-controller` for RCs).
//!
//! Deleting a ReplicaSet's pods with it is the garbage collector's job, not this controller's.

use super::claim;
use super::decode::{owner_selector, typed};
use super::informer::Informers;
use super::owned::{self, controller_of, meta_of, PodName};
use super::runner::{Reconciler, Requeue};
use super::selector_index::SelectorIndex;
use super::ControllerError;
use crate::api::client::{Client, Propagation};
use crate::api::events::{self, EventType};
use crate::api::ApiError;
use crate::store::{Event, ObjectKey};
use async_trait::async_trait;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Pod, ReplicationController};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector as MetaSelector, ObjectMeta};
use k8s_openapi::{Metadata, Resource};
use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};
use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::marker::PhantomData;

/// Storage resource of ReplicaSets.
pub const RESOURCE: &str = "apps/replicasets";
/// The component name on Events.
pub const COMPONENT: &str = "replicaset-controller";
/// Storage resource of ReplicationControllers.
pub const RC_RESOURCE: &str = "replicationcontrollers";
/// The component name on a ReplicationController's Events (Kubernetes' own).
pub const RC_COMPONENT: &str = "replication-controller";

/// What [`ReplicasController`] reads of the kind it keeps at `spec.replicas` pods.
pub trait ReplicaOwner:
    Resource + Metadata<Ty = ObjectMeta> + DeserializeOwned + Send + Sync + 'static
{
    /// Storage resource of the kind.
    const RESOURCE: &'static str;
    /// The component on its Events.
    const COMPONENT: &'static str;
    /// The reconciler's name.
    const NAME: &'static str;
    /// `spec.replicas` (defaulted to 1 by the API).
    fn replicas(&self) -> i32;
    /// `spec.minReadySeconds`.
    fn min_ready_seconds(&self) -> i32;
    /// The template's labels (what `fullyLabeledReplicas` counts against).
    fn template_labels(&self) -> Option<&BTreeMap<String, String>>;
    /// The selector as a label selector.
    fn selector(&self) -> Option<MetaSelector>;
}

impl ReplicaOwner for ReplicaSet {
    const RESOURCE: &'static str = RESOURCE;
    const COMPONENT: &'static str = COMPONENT;
    const NAME: &'static str = "replicaset";
    fn replicas(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
    }
    fn min_ready_seconds(&self) -> i32 {
        self.spec
            .as_ref()
            .and_then(|s| s.min_ready_seconds)
            .unwrap_or(0)
    }
    fn template_labels(&self) -> Option<&BTreeMap<String, String>> {
        self.spec
            .as_ref()?
            .template
            .as_ref()?
            .metadata
            .as_ref()?
            .labels
            .as_ref()
    }
    fn selector(&self) -> Option<MetaSelector> {
        self.spec.as_ref().map(|s| s.selector.clone())
    }
}

impl ReplicaOwner for ReplicationController {
    const RESOURCE: &'static str = RC_RESOURCE;
    const COMPONENT: &'static str = RC_COMPONENT;
    const NAME: &'static str = "replicationcontroller";
    fn replicas(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
    }
    fn min_ready_seconds(&self) -> i32 {
        self.spec
            .as_ref()
            .and_then(|s| s.min_ready_seconds)
            .unwrap_or(0)
    }
    fn template_labels(&self) -> Option<&BTreeMap<String, String>> {
        self.spec
            .as_ref()?
            .template
            .as_ref()?
            .metadata
            .as_ref()?
            .labels
            .as_ref()
    }
    fn selector(&self) -> Option<MetaSelector> {
        let labels = self.spec.as_ref().and_then(|s| s.selector.as_ref());
        Some(crate::api::workloads::equality_selector(labels))
    }
}
/// Most pods created or deleted in one reconcile (Kubernetes' `BurstReplicas`).
pub const BURST_REPLICAS: usize = 500;

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

fn phase_ordinal(pod: &Pod) -> u8 {
    match owned::phase(pod) {
        "Unknown" => 1,
        "Running" => 2,
        _ => 0,
    }
}

fn max_restarts(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.iter().map(|c| c.restart_count).max())
        .unwrap_or(0)
}

fn node_name(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or("")
}

fn pod_name(pod: &Pod) -> &str {
    pod.metadata.name.as_deref().unwrap_or("")
}

/// Kubernetes' `ActivePodsWithRanks` order: `Less` when `a` should be deleted before `b`.
/// `rank_*` is the number of the owner's active pods on the pod's node (doubled-up pods go
/// first).
pub fn delete_first(a: &Pod, rank_a: usize, b: &Pod, rank_b: usize) -> Ordering {
    let (node_a, node_b) = (node_name(a), node_name(b));
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
    let (ready_a, ready_b) = (owned::ready_since(a), owned::ready_since(b));
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
    let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
    match (created(a), created(b)) {
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (Some(ca), Some(cb)) => cb.cmp(&ca),
        (None, None) => Ordering::Equal,
    }
}

/// The `n` pods of `active` to delete first.
pub fn pods_to_delete(active: &[Pod], n: usize) -> Vec<&Pod> {
    let mut per_node: HashMap<&str, usize> = HashMap::new();
    for p in active {
        let node = node_name(p);
        if !node.is_empty() {
            *per_node.entry(node).or_default() += 1;
        }
    }
    let rank = |p: &Pod| per_node.get(node_name(p)).copied().unwrap_or(0);
    let mut ranked: Vec<(&Pod, usize)> = active.iter().map(|p| (p, rank(p))).collect();
    ranked.sort_by(|(a, ra), (b, rb)| delete_first(a, *ra, b, *rb));
    ranked.into_iter().take(n).map(|(p, _)| p).collect()
}

/// The status of `rs` given its active pods at `now` (without `conditions`, see
/// [`with_failure_condition`]), and the seconds after which a Ready pod becomes available
/// (when to look again), if any.
pub fn replica_set_status<K: ReplicaOwner>(
    rs: &K,
    active: &[Pod],
    now: i64,
) -> (Value, Option<i64>) {
    let min_ready = i64::from(rs.min_ready_seconds());
    let no_labels = Default::default();
    let template_labels = rs.template_labels().unwrap_or(&no_labels);
    let fully_labeled = active
        .iter()
        .filter(|p| {
            let labels = p.metadata.labels.as_ref();
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
        json!(rs.metadata().generation.unwrap_or(0)),
    );
    (Value::Object(status), next)
}

/// The condition a failed pass leaves, as Kubernetes' `calculateStatus`: after a failed create
/// (`creating`) or delete, `conditions` (as stored) gains a `ReplicaFailure` condition unless
/// one is there; after a successful pass it loses it. `None` when the conditions are
/// unchanged.
pub fn with_failure_condition(
    stored: Option<&Value>,
    failure: Option<(&ApiError, bool)>,
    now: &str,
) -> Option<Value> {
    let mut conditions = stored
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let present = conditions.iter().any(|c| c["type"] == "ReplicaFailure");
    match failure {
        Some((error, creating)) if !present => {
            let (reason, verb) = if creating {
                ("FailedCreate", "creating")
            } else {
                ("FailedDelete", "deleting")
            };
            conditions.push(json!({"type": "ReplicaFailure", "status": "True",
                "lastTransitionTime": now, "reason": reason,
                "message": format!("Error {verb} pods: {error}")}));
        }
        None if present => conditions.retain(|c| c["type"] != "ReplicaFailure"),
        _ => return None,
    }
    Some(json!(conditions))
}

/// The [`Reconciler`] of ReplicaSets and ReplicationControllers (`K`).
pub struct ReplicasController<K> {
    client: Client,
    informers: Informers,
    index: SelectorIndex,
    kind: PhantomData<fn() -> K>,
}

/// The ReplicaSet controller.
pub type ReplicaSetController = ReplicasController<ReplicaSet>;
/// The ReplicationController controller (Kubernetes' `ReplicationManager`).
pub type ReplicationManager = ReplicasController<ReplicationController>;

impl<K: ReplicaOwner> ReplicasController<K> {
    /// A controller writing through `client` and reading pods from `informers`.
    pub fn new(client: Client, informers: &Informers) -> Self {
        Self {
            client,
            informers: informers.clone(),
            index: SelectorIndex::default(),
            kind: PhantomData,
        }
    }

    async fn event(&self, raw: &Value, kind: EventType, reason: &str, message: &str) {
        events::record_best_effort(&self.client, raw, kind, reason, message, K::COMPONENT).await;
    }

    /// Creates or deletes pods so that `active` reaches `spec.replicas`. `raw` is the stored
    /// owner, whose template is copied verbatim into new pods.
    async fn manage(&self, raw: &Value, rs: &K, active: &[Pod]) -> Result<(), ApiError> {
        let meta = rs.metadata();
        let ns = meta.namespace.as_deref().unwrap_or("");
        let name = meta.name.as_deref().unwrap_or("");
        let replicas = rs.replicas();
        let want = usize::try_from(replicas).unwrap_or(0);
        if active.len() < want {
            let missing = (want - active.len()).min(BURST_REPLICAS);
            let template = raw
                .pointer("/spec/template")
                .cloned()
                .unwrap_or(Value::Null);
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
                            let created = meta_of(&p).name.unwrap_or_default();
                            let msg = format!("Created pod: {created}");
                            self.event(raw, EventType::Normal, "SuccessfulCreate", &msg)
                                .await;
                        }
                        Err(e) => {
                            let msg = format!("Error creating: {e}");
                            self.event(raw, EventType::Warning, "FailedCreate", &msg)
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
                    pod_name(p),
                    Propagation::Background,
                    p.metadata.uid.as_deref(),
                )
            }))
            .await;
            let mut failure = None;
            for (p, r) in victims.iter().zip(results) {
                let pod = pod_name(p);
                match r {
                    Ok(()) | Err(ApiError::NotFound { .. }) => {
                        let msg = format!("Deleted pod: {pod}");
                        self.event(raw, EventType::Normal, "SuccessfulDelete", &msg)
                            .await;
                    }
                    Err(e) => {
                        let msg = format!("Error deleting: {e}");
                        self.event(raw, EventType::Warning, "FailedDelete", &msg)
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
impl<K: ReplicaOwner> Reconciler for ReplicasController<K> {
    fn name(&self) -> &'static str {
        K::NAME
    }

    async fn on_permanent_error(&self, key: &ObjectKey, error: &ControllerError) {
        owned::report_permanent_error(&self.client, key, error, K::COMPONENT).await;
    }

    async fn keys_for_event(&self, event: &Event) -> Vec<ObjectKey> {
        match event.key.resource.as_str() {
            r if r == K::RESOURCE => {
                self.index.observe(event);
                vec![event.key.clone()]
            }
            "pods" => {
                let ns = &event.key.namespace;
                let mut keys: Vec<ObjectKey> = Vec::new();
                for pod in [&event.value, &event.previous].into_iter().flatten() {
                    let meta = meta_of(pod);
                    let names = match controller_of(&meta) {
                        Some(r) if r.kind == K::KIND => vec![r.name.clone()],
                        Some(_) => vec![],
                        None => self.index.matching(ns, pod),
                    };
                    for n in names {
                        let k = ObjectKey::new(K::RESOURCE, ns.as_str(), &n);
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
        let Some(all) = self.client.list_for_resync(K::RESOURCE).await else {
            return Vec::new();
        };
        self.index.replace_all(&all);
        owned::keys_of(K::RESOURCE, &all)
    }

    async fn reconcile(&self, key: &ObjectKey) -> Result<Requeue, ControllerError> {
        self.informers.synced().await?;
        let Some(raw) = self
            .client
            .get(K::RESOURCE, &key.namespace, &key.name)
            .await?
        else {
            return Ok(Requeue::No);
        };
        let rs: K = typed(&raw)?;
        let selector = owner_selector(K::KIND, rs.metadata(), rs.selector().as_ref())?;
        let uid = rs.metadata().uid.as_deref().unwrap_or("");
        let candidates = self.informers.pods.claim_candidates(&key.namespace, uid);
        let pods = claim::claim_all(&self.client, "pods", &rs, &selector, candidates).await?;
        let mut active = Vec::with_capacity(pods.len());
        for p in &pods {
            let pod: Pod = typed(p)?;
            if owned::is_active(&pod) {
                active.push(pod);
            }
        }
        let managed = if owned::is_terminating(rs.metadata()) {
            Ok(())
        } else {
            self.manage(&raw, &rs, &active).await
        };
        let (mut status, next) = replica_set_status(&rs, &active, now_seconds());
        let stored = raw.pointer("/status/conditions");
        let creating = usize::try_from(rs.replicas()).unwrap_or(0) > active.len();
        let failure = managed.as_ref().err().map(|e| (e, creating));
        let now = crate::clock::now_rfc3339();
        match with_failure_condition(stored, failure, &now).or_else(|| stored.cloned()) {
            Some(c) if c.as_array().is_some_and(|a| !a.is_empty()) => status["conditions"] = c,
            _ => {}
        }
        self.client
            .write_status_if_changed(K::RESOURCE, &raw, status)
            .await?;
        managed?;
        Ok(Requeue::after_seconds(next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod_json(name: &str, node: &str, phase: &str, ready_at: Option<&str>) -> Value {
        let mut p = json!({"metadata": {"name": name, "creationTimestamp": "2025-01-01T00:00:00Z",
                "labels": {"app": "web"}},
            "spec": {"containers": [], "nodeName": node}, "status": {"phase": phase}});
        if let Some(at) = ready_at {
            p["status"]["conditions"] =
                json!([{"type": "Ready", "status": "True", "lastTransitionTime": at}]);
        }
        p
    }

    fn pod(name: &str, node: &str, phase: &str, ready_at: Option<&str>) -> Pod {
        typed(&pod_json(name, node, phase, ready_at)).unwrap()
    }

    fn edit(p: Pod, f: impl FnOnce(&mut Value)) -> Pod {
        let mut v = serde_json::to_value(p).unwrap();
        f(&mut v);
        typed(&v).unwrap()
    }

    fn names(v: &[&Pod]) -> Vec<String> {
        v.iter().map(|p| pod_name(p).to_string()).collect()
    }

    #[test]
    fn a_failed_pass_sets_replica_failure_and_a_good_one_clears_it() {
        let quota = ApiError::Forbidden {
            resource: "pods".into(),
            name: "web-x".into(),
            reason: "exceeded quota".into(),
        };
        let now = "2025-01-01T00:00:00Z";
        let set = with_failure_condition(None, Some((&quota, true)), now).unwrap();
        assert_eq!(
            set,
            json!([{"type": "ReplicaFailure", "status": "True", "lastTransitionTime": now,
                "reason": "FailedCreate", "message": format!("Error creating pods: {quota}")}])
        );
        // Already there: unchanged (its transition time stays the first failure's).
        assert_eq!(
            with_failure_condition(Some(&set), Some((&quota, false)), "later"),
            None
        );
        assert_eq!(
            with_failure_condition(Some(&set), None, now),
            Some(json!([]))
        );
        assert_eq!(with_failure_condition(None, None, now), None);
        let deleting = with_failure_condition(None, Some((&quota, false)), now).unwrap();
        assert_eq!(deleting[0]["reason"], "FailedDelete");
    }

    #[test]
    fn replication_controllers_select_by_their_label_map() {
        let rc: ReplicationController =
            typed(&json!({"metadata": {"name": "web", "generation": 2},
            "spec": {"selector": {"app": "web"}, "minReadySeconds": 5,
                "template": {"metadata": {"labels": {"app": "web", "v": "1"}}}}}))
            .unwrap();
        assert_eq!(rc.replicas(), 1);
        assert_eq!(rc.min_ready_seconds(), 5);
        let sel = owner_selector(
            "ReplicationController",
            rc.metadata(),
            rc.selector().as_ref(),
        )
        .unwrap();
        assert!(sel.matches(&pod_json("a", "n1", "Running", None)));
        let (status, _) = replica_set_status(&rc, &[pod("a", "n1", "Running", None)], 0);
        assert_eq!(status, json!({"replicas": 1, "observedGeneration": 2}));
        let empty: ReplicationController =
            typed(&json!({"metadata": {"name": "web"}, "spec": {"selector": {}}})).unwrap();
        assert!(owner_selector(
            "ReplicationController",
            empty.metadata(),
            empty.selector().as_ref()
        )
        .is_err());
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
        a = edit(a, |v| {
            v["status"]["containerStatuses"] = json!([{"name": "c", "image": "i", "imageID": "",
                "ready": true, "restartCount": 4}])
        });
        let newer = edit(pod("newer", "n3", "Running", ready), |v| {
            v["metadata"]["creationTimestamp"] = json!("2025-01-02T00:00:00Z")
        });
        let old = pod("old", "n4", "Running", ready);
        assert_eq!(
            names(&pods_to_delete(&[old, newer, a], 3)),
            ["alone", "newer", "old"]
        );
    }

    #[test]
    fn status_counts_labeled_ready_and_available_pods() {
        let rs: ReplicaSet = typed(&json!({"metadata": {"generation": 4},
            "spec": {"minReadySeconds": 10, "selector": {},
                "template": {"metadata": {"labels": {"app": "web", "v": "2"}}}}}))
        .unwrap();
        let t = 1_735_689_600; // 2025-01-01T00:00:00Z
        let full = edit(
            pod("a", "n1", "Running", Some("2025-01-01T00:00:00Z")),
            |v| v["metadata"]["labels"]["v"] = json!("2"),
        );
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
