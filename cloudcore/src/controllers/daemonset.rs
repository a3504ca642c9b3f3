//! The DaemonSet controller: one pod of each DaemonSet on every eligible node.
//!
//! A node is eligible when it matches the template's `nodeSelector` and required node affinity
//! and every `NoSchedule`/`NoExecute` taint is tolerated, counting the tolerations Kubernetes
//! adds to every DaemonSet pod ([`daemon_tolerations`]). A node that only gained an untolerated
//! `NoSchedule` taint keeps its running pod (as upstream); anything else that stops qualifying
//! loses it. Pods are named `<ds>-<random>` and pinned with the required node affinity
//! `matchFields metadata.name In [node]` (upstream's choice): the scheduler binds them, so
//! resources and readiness are checked in one place.
//!
//! Revisions: pods carry `controller-revision-hash` (the template digest of
//! [`owned::template_hash`]) and `pod-template-generation`. No ControllerRevision objects are
//! kept (Skerry does not serve that kind): the hash alone says which pods are outdated, which
//! is all RollingUpdate and `kubectl rollout status` need; `kubectl rollout undo` is not
//! supported. RollingUpdate replaces outdated pods node by node, at most `maxUnavailable`
//! (default 1, resolved against the desired count and rounded up) unavailable at a time, by
//! deleting the old pod and creating the new one afterwards (`maxSurge` is treated as 0).
//! OnDelete leaves outdated pods until someone deletes them.
//!
//! The decisions are a pure function ([`plan`]) of the nodes' eligibility and the pods, so they
//! are tested without a store; [`DaemonSetController::reconcile`] only reads, plans and writes.

use super::decode::typed;
use super::informer::Informers;
use super::owned::{self, meta_of, PodName};
use super::runner::{Reconciler, Requeue};
use super::ControllerError;
use crate::api::client::{Client, Propagation};
use crate::api::events::{self, EventType};
use crate::api::workloads::scaled_value;
use crate::api::ApiError;
use crate::scheduler::filter;
use crate::scheduler::model::{tolerated, Effect, NodeInfo, PodInfo};
use crate::store::{Event, ObjectKey};
use async_trait::async_trait;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

/// Store resource of DaemonSets.
pub const RESOURCE: &str = "apps/daemonsets";
/// Resync period.
pub const RESYNC: Duration = Duration::from_secs(60);
/// Label with the template digest of the pod.
pub const REVISION_LABEL: &str = "controller-revision-hash";
/// Component name in events.
const COMPONENT: &str = "daemonset-controller";

/// The tolerations Kubernetes gives every DaemonSet pod, so that a daemon keeps running (and
/// can start) on not-ready, unreachable, pressured or cordoned nodes; `network-unavailable`
/// only for host-network pods.
pub fn daemon_tolerations(host_network: bool) -> Vec<Value> {
    let mut out = vec![
        json!({"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"}),
        json!({"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"}),
        json!({"key": "node.kubernetes.io/disk-pressure", "operator": "Exists", "effect": "NoSchedule"}),
        json!({"key": "node.kubernetes.io/memory-pressure", "operator": "Exists", "effect": "NoSchedule"}),
        json!({"key": "node.kubernetes.io/pid-pressure", "operator": "Exists", "effect": "NoSchedule"}),
        json!({"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"}),
    ];
    if host_network {
        out.push(json!({"key": "node.kubernetes.io/network-unavailable", "operator": "Exists", "effect": "NoSchedule"}));
    }
    out
}

/// `pod` with the DaemonSet tolerations added (a toleration with the same key and effect that
/// the template already has is kept as written).
pub fn with_daemon_tolerations(pod: &Value) -> Value {
    let mut pod = pod.clone();
    let host_network = pod.pointer("/spec/hostNetwork").and_then(Value::as_bool) == Some(true);
    let mut list: Vec<Value> = pod
        .pointer("/spec/tolerations")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for t in daemon_tolerations(host_network) {
        if !list
            .iter()
            .any(|x| x.get("key") == t.get("key") && x.get("effect") == t.get("effect"))
        {
            list.push(t);
        }
    }
    if let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) {
        spec.insert("tolerations".into(), json!(list));
    }
    pod
}

/// Whether a DaemonSet's pod belongs on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeFit {
    /// A pod should be created there.
    pub should_run: bool,
    /// An existing pod may stay (true also when only an untolerated `NoSchedule` taint stands
    /// in the way).
    pub keep_running: bool,
}

/// Whether `pod` (the template, with the DaemonSet tolerations) belongs on `node` (Kubernetes'
/// `NodeShouldRunDaemonPod`).
pub fn node_fit(pod: &Value, node: &Value) -> NodeFit {
    let pod = PodInfo::of(pod);
    let node = NodeInfo::of(node);
    let no = NodeFit {
        should_run: false,
        keep_running: false,
    };
    if !filter::matches_node_affinity(&pod, &node) {
        return no;
    }
    let mut fit = NodeFit {
        should_run: true,
        keep_running: true,
    };
    for taint in &node.taints {
        if tolerated(&pod.tolerations, taint) {
            continue;
        }
        match taint.effect {
            Effect::NoExecute => return no,
            Effect::NoSchedule => fit.should_run = false,
            Effect::PreferNoSchedule => {}
        }
    }
    fit
}

/// The node a DaemonSet pod is for: where it is bound, or the node its
/// `matchFields metadata.name` affinity pins it to.
pub fn target_node(pod: &Pod) -> Option<&str> {
    let spec = pod.spec.as_ref()?;
    if let Some(n) = spec.node_name.as_deref().filter(|n| !n.is_empty()) {
        return Some(n);
    }
    spec.affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find(|r| r.key == "metadata.name" && r.operator == "In")
        .and_then(|r| r.values.as_ref()?.first())
        .map(String::as_str)
}

/// What the controller needs to know about one of its pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    /// Name.
    pub name: String,
    /// Uid (the precondition of its deletion).
    pub uid: String,
    /// Target node (empty if none can be told).
    pub node: String,
    /// `controller-revision-hash`.
    pub hash: String,
    /// `creationTimestamp` (RFC 3339: orders as time).
    pub created: String,
    /// Has a deletion timestamp.
    pub terminating: bool,
    /// Phase `Failed`.
    pub failed: bool,
    /// Ready condition true.
    pub ready: bool,
    /// Ready for `minReadySeconds`.
    pub available: bool,
}

impl PodView {
    /// Reads a pod at `now` (seconds) with the DaemonSet's `minReadySeconds`.
    pub fn of(pod: &Pod, min_ready: i64, now: i64) -> Self {
        let meta = &pod.metadata;
        Self {
            name: meta.name.clone().unwrap_or_default(),
            uid: meta.uid.clone().unwrap_or_default(),
            node: target_node(pod).unwrap_or("").into(),
            hash: meta
                .labels
                .as_ref()
                .and_then(|l| l.get(REVISION_LABEL))
                .cloned()
                .unwrap_or_default(),
            created: meta
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.to_string())
                .unwrap_or_default(),
            terminating: owned::is_terminating(meta),
            failed: owned::phase(pod) == "Failed",
            ready: owned::is_ready(pod),
            available: owned::is_available(pod, min_ready, now),
        }
    }
}

/// The DaemonSet status counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Nodes that should run the daemon.
    pub desired: i64,
    /// Of those, nodes running one.
    pub current: i64,
    /// Nodes running one but that should not.
    pub misscheduled: i64,
    /// Nodes whose daemon pod is ready.
    pub ready: i64,
    /// Nodes whose daemon pod has the current template.
    pub updated: i64,
    /// Nodes whose daemon pod is available.
    pub available: i64,
}

/// What one reconcile does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Nodes that get a new pod.
    pub create: Vec<String>,
    /// Pods to delete (name, uid).
    pub delete: Vec<(String, String)>,
    /// Status, as of the pods before this plan.
    pub counts: Counts,
}

/// Plans one reconcile: `nodes` with their fit, the DaemonSet's `pods`, the current template
/// `hash`, and `max_unavailable` for RollingUpdate (`None`: OnDelete).
pub fn plan(
    nodes: &[(String, NodeFit)],
    pods: &[PodView],
    hash: &str,
    max_unavailable: Option<&IntOrString>,
) -> Plan {
    let mut by_node: BTreeMap<&str, Vec<&PodView>> = BTreeMap::new();
    for p in pods {
        by_node.entry(p.node.as_str()).or_default().push(p);
    }
    for list in by_node.values_mut() {
        list.sort_by(|a, b| (&a.created, &a.name).cmp(&(&b.created, &b.name)));
    }
    let mut out = Plan::default();
    let delete = |p: &PodView, out: &mut Plan| {
        if !out.delete.iter().any(|(n, _)| *n == p.name) {
            out.delete.push((p.name.clone(), p.uid.clone()));
        }
    };
    // (node, the one live pod there) for nodes that should run the daemon: rolling candidates.
    let mut singles: Vec<Option<&PodView>> = Vec::new();
    for (node, fit) in nodes {
        let on_node = by_node.remove(node.as_str()).unwrap_or_default();
        let active: Vec<&PodView> = on_node.iter().copied().filter(|p| !p.terminating).collect();
        if fit.should_run {
            out.counts.desired += 1;
            if let Some(first) = active.first() {
                out.counts.current += 1;
                if first.ready {
                    out.counts.ready += 1;
                }
                if first.available {
                    out.counts.available += 1;
                }
                if first.hash == hash {
                    out.counts.updated += 1;
                }
            }
        } else if !active.is_empty() && !fit.keep_running {
            out.counts.misscheduled += 1;
        }
        if fit.should_run || (fit.keep_running && !active.is_empty()) {
            let (failed, live): (Vec<&PodView>, Vec<&PodView>) =
                active.iter().copied().partition(|p| p.failed);
            for p in failed {
                delete(p, &mut out);
            }
            match live.as_slice() {
                [] if fit.should_run => out.create.push(node.clone()),
                [] => {}
                [only] => {
                    if fit.should_run {
                        singles.push(Some(*only));
                    }
                }
                [_oldest, extra @ ..] => {
                    for p in extra {
                        delete(p, &mut out);
                    }
                    if fit.should_run {
                        // Being fixed by the deletion: unavailable for the rolling update.
                        singles.push(None);
                    }
                }
            }
            if fit.should_run && live.is_empty() {
                singles.push(None);
            }
        } else {
            for p in active {
                delete(p, &mut out);
            }
        }
    }
    // Pods for nodes that no longer exist (or that name no node at all).
    for p in by_node.values().flatten().filter(|p| !p.terminating) {
        delete(p, &mut out);
    }
    if let Some(max) = max_unavailable {
        let max = scaled_value(max, out.counts.desired as i32, true)
            .unwrap_or(1)
            .max(1) as usize;
        let mut unavailable = 0usize;
        let mut replace = Vec::new();
        let mut candidates = Vec::new();
        for single in singles {
            match single {
                None => unavailable += 1,
                Some(p) if p.hash == hash => {
                    if !p.available {
                        unavailable += 1;
                    }
                }
                Some(p) if !p.available => replace.push(p),
                Some(p) => candidates.push(p),
            }
        }
        let budget = max.saturating_sub(unavailable).min(candidates.len());
        for p in replace
            .into_iter()
            .chain(candidates.into_iter().take(budget))
        {
            delete(p, &mut out);
        }
    }
    out
}

/// The status object for `counts`.
fn status_json(counts: Counts, generation: i64) -> Value {
    json!({
        "currentNumberScheduled": counts.current,
        "desiredNumberScheduled": counts.desired,
        "numberMisscheduled": counts.misscheduled,
        "numberReady": counts.ready,
        "updatedNumberScheduled": counts.updated,
        "numberAvailable": counts.available,
        "numberUnavailable": (counts.desired - counts.available).max(0),
        "observedGeneration": generation,
    })
}

/// A new pod of `ds` for `node`, from `template` (the stored `spec.template`, copied verbatim).
pub fn new_pod(ds: &DaemonSet, template: &Value, node: &str, hash: &str) -> Value {
    let name = ds.metadata.name.as_deref().unwrap_or("");
    let mut pod = owned::pod_from_template(template, ds, PodName::Generate(&format!("{name}-")));
    pod = with_daemon_tolerations(&pod);
    let generation = ds.metadata.generation.unwrap_or(1);
    let meta = &mut pod["metadata"];
    if !meta["labels"].is_object() {
        meta["labels"] = json!({});
    }
    meta["labels"][REVISION_LABEL] = json!(hash);
    meta["labels"]["pod-template-generation"] = json!(generation.to_string());
    let spec = &mut pod["spec"];
    if !spec["affinity"].is_object() {
        spec["affinity"] = json!({});
    }
    if !spec["affinity"]["nodeAffinity"].is_object() {
        spec["affinity"]["nodeAffinity"] = json!({});
    }
    // As upstream: the node was checked against the template's own affinity; the pod is pinned
    // to it with a single term.
    spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"] = json!({
        "nodeSelectorTerms": [{"matchFields": [
            {"key": "metadata.name", "operator": "In", "values": [node]}]}]
    });
    pod
}

/// The DaemonSet [`Reconciler`].
pub struct DaemonSetController {
    client: Client,
    informers: Informers,
}

impl DaemonSetController {
    /// A controller writing through `client` and reading pods from `informers`.
    pub fn new(client: Client, informers: &Informers) -> Self {
        Self {
            client,
            informers: informers.clone(),
        }
    }

    async fn event(&self, ds: &Value, reason: &str, message: &str) {
        events::record_best_effort(
            &self.client,
            ds,
            EventType::Normal,
            reason,
            message,
            COMPONENT,
        )
        .await;
    }
}

/// Whether a node change can change which DaemonSets belong on it (not a heartbeat).
fn node_eligibility_changed(ev: &Event) -> bool {
    match (&ev.previous, &ev.value) {
        (Some(a), Some(b)) => {
            a.pointer("/metadata/labels") != b.pointer("/metadata/labels")
                || a.get("spec") != b.get("spec")
        }
        _ => true,
    }
}

#[async_trait]
impl Reconciler for DaemonSetController {
    fn name(&self) -> &'static str {
        "daemonset"
    }

    async fn on_permanent_error(&self, key: &ObjectKey, error: &ControllerError) {
        owned::report_permanent_error(&self.client, key, error, COMPONENT).await;
    }

    async fn keys_for_event(&self, ev: &Event) -> Vec<ObjectKey> {
        match ev.key.resource.as_str() {
            RESOURCE => vec![ev.key.clone()],
            "pods" => owned::controller_keys(ev, "DaemonSet", RESOURCE),
            "nodes" if node_eligibility_changed(ev) => self.all_keys().await,
            _ => Vec::new(),
        }
    }

    async fn all_keys(&self) -> Vec<ObjectKey> {
        let all = self
            .client
            .list_for_resync(RESOURCE)
            .await
            .unwrap_or_default();
        owned::keys_of(RESOURCE, &all)
    }

    async fn reconcile(&self, key: &ObjectKey) -> Result<Requeue, ControllerError> {
        self.informers.synced().await?;
        let Some(raw) = self.client.get(RESOURCE, &key.namespace, &key.name).await? else {
            return Ok(Requeue::No);
        };
        let ds: DaemonSet = typed(&raw)?;
        let uid = ds.metadata.uid.clone().unwrap_or_default();
        let spec = ds.spec.as_ref();
        let min_ready = i64::from(spec.and_then(|s| s.min_ready_seconds).unwrap_or(0));
        let now = crate::clock::now_seconds();
        let template = raw.pointer("/spec/template").cloned().unwrap_or(json!({}));
        let hash = owned::template_hash(&template);
        let probe = with_daemon_tolerations(
            &json!({"spec": template.get("spec").cloned().unwrap_or(json!({}))}),
        );
        let nodes: Vec<(String, NodeFit)> = self
            .client
            .list("nodes", None)
            .await?
            .iter()
            .map(|n| (meta_of(n).name.unwrap_or_default(), node_fit(&probe, n)))
            .collect();
        let own_pods: Vec<Pod> = self.informers.pods.controlled_by_as(&uid)?;
        let pods: Vec<PodView> = own_pods
            .iter()
            .map(|p| PodView::of(p, min_ready, now))
            .collect();
        let strategy = spec.and_then(|s| s.update_strategy.as_ref());
        let rolling = match strategy.and_then(|s| s.type_.as_deref()) {
            Some("OnDelete") => None,
            _ => Some(
                strategy
                    .and_then(|s| s.rolling_update.as_ref())
                    .and_then(|r| r.max_unavailable.clone())
                    .unwrap_or(IntOrString::Int(1)),
            ),
        };
        let plan = plan(&nodes, &pods, &hash, rolling.as_ref());
        let deleting = owned::is_terminating(&ds.metadata);
        if !deleting {
            for (name, pod_uid) in &plan.delete {
                match self
                    .client
                    .delete(
                        "pods",
                        &key.namespace,
                        name,
                        Propagation::Background,
                        Some(pod_uid),
                    )
                    .await
                {
                    Ok(()) => {
                        tracing::info!(daemonset = %key, pod = %name, "deleted a daemon pod");
                        self.event(&raw, "SuccessfulDelete", &format!("Deleted pod: {name}"))
                            .await;
                    }
                    Err(ApiError::NotFound { .. } | ApiError::Conflict { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            for node in &plan.create {
                let created = self
                    .client
                    .create("pods", &key.namespace, new_pod(&ds, &template, node, &hash))
                    .await?;
                let name = meta_of(&created).name.unwrap_or_default();
                tracing::info!(daemonset = %key, pod = %name, %node, "created a daemon pod");
                self.event(&raw, "SuccessfulCreate", &format!("Created pod: {name}"))
                    .await;
            }
        }
        let generation = ds.metadata.generation.unwrap_or(1);
        self.client
            .write_status_if_changed(RESOURCE, &raw, status_json(plan.counts, generation))
            .await?;
        Ok(Requeue::after_seconds(owned::next_available_in(
            &own_pods, min_ready, now,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, labels: Value, taints: Value) -> Value {
        json!({"metadata": {"name": name, "labels": labels}, "spec": {"taints": taints},
               "status": {"conditions": [{"type": "Ready", "status": "True"}]}})
    }

    fn fit(run: bool, keep: bool) -> NodeFit {
        NodeFit {
            should_run: run,
            keep_running: keep,
        }
    }

    fn pod(name: &str, node: &str, hash: &str, created: &str) -> PodView {
        PodView {
            name: name.into(),
            uid: format!("u-{name}"),
            node: node.into(),
            hash: hash.into(),
            created: created.into(),
            terminating: false,
            failed: false,
            ready: true,
            available: true,
        }
    }

    #[test]
    fn eligibility_follows_selectors_affinity_and_taints_with_daemon_tolerations() {
        let tpl = with_daemon_tolerations(&json!({"spec": {"nodeSelector": {"role": "edge"}}}));
        let edge = node("a", json!({"role": "edge"}), json!([]));
        assert_eq!(node_fit(&tpl, &edge), fit(true, true));
        assert_eq!(
            node_fit(&tpl, &node("b", json!({}), json!([]))),
            fit(false, false)
        );
        // Automatic tolerations: not-ready and cordoned nodes still run the daemon.
        let not_ready = node(
            "a",
            json!({"role": "edge"}),
            json!([
            {"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"},
            {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]),
        );
        assert_eq!(node_fit(&tpl, &not_ready), fit(true, true));
        // A foreign NoSchedule taint keeps a running pod but starts none; NoExecute evicts.
        let no_sched = node(
            "a",
            json!({"role": "edge"}),
            json!([{"key": "gpu", "effect": "NoSchedule"}]),
        );
        assert_eq!(node_fit(&tpl, &no_sched), fit(false, true));
        let no_exec = node(
            "a",
            json!({"role": "edge"}),
            json!([{"key": "gpu", "effect": "NoExecute"}]),
        );
        assert_eq!(node_fit(&tpl, &no_exec), fit(false, false));
        // network-unavailable only for host-network pods.
        let net = node(
            "a",
            json!({"role": "edge"}),
            json!([{"key": "node.kubernetes.io/network-unavailable", "effect": "NoSchedule"}]),
        );
        assert_eq!(node_fit(&tpl, &net), fit(false, true));
        let host = with_daemon_tolerations(
            &json!({"spec": {"hostNetwork": true, "nodeSelector": {"role": "edge"}}}),
        );
        assert_eq!(node_fit(&host, &net), fit(true, true));
        // Required node affinity.
        let aff = with_daemon_tolerations(&json!({"spec": {"affinity": {"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["north"]}]}]}}}}}));
        assert_eq!(
            node_fit(&aff, &node("a", json!({"zone": "north"}), json!([]))),
            fit(true, true)
        );
        assert_eq!(
            node_fit(&aff, &node("a", json!({"zone": "south"}), json!([]))),
            fit(false, false)
        );
    }

    #[test]
    fn new_pods_are_pinned_labelled_and_tolerant() {
        let ds = json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": "agent", "namespace": "default", "uid": "u-ds", "generation": 3},
            "spec": {"template": {"metadata": {"labels": {"app": "agent"}},
                "spec": {"containers": [{"name": "c", "image": "i"}],
                         "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5}]}}}});
        let typed_ds: DaemonSet = typed(&ds).unwrap();
        let p = new_pod(&typed_ds, &ds["spec"]["template"], "edge-a", "h1");
        assert_eq!(p["metadata"]["generateName"], "agent-");
        assert_eq!(p["metadata"]["labels"]["app"], "agent");
        assert_eq!(p["metadata"]["labels"][REVISION_LABEL], "h1");
        assert_eq!(p["metadata"]["labels"]["pod-template-generation"], "3");
        assert!(owned::is_controlled_by(&meta_of(&p), "u-ds"));
        assert_eq!(target_node(&typed(&p).unwrap()), Some("edge-a"));
        let tols = p["spec"]["tolerations"].as_array().unwrap();
        assert_eq!(tols.len(), 6, "{tols:?}");
        // The template's own toleration of the same key and effect wins.
        assert_eq!(tols[0]["tolerationSeconds"], 5);
        let mut bound = p.clone();
        bound["spec"]["nodeName"] = json!("edge-b");
        assert_eq!(target_node(&typed(&bound).unwrap()), Some("edge-b"));
    }

    #[test]
    fn one_pod_per_eligible_node() {
        let nodes = vec![
            ("a".to_string(), fit(true, true)),
            ("b".to_string(), fit(true, true)),
            ("c".to_string(), fit(false, false)),
        ];
        let pods = vec![
            pod("x-1", "a", "h", "2025-01-01T00:00:01Z"),
            pod("x-0", "a", "h", "2025-01-01T00:00:00Z"),
            pod("x-2", "c", "h", "2025-01-01T00:00:00Z"),
            pod("x-3", "gone", "h", "2025-01-01T00:00:00Z"),
        ];
        let p = plan(&nodes, &pods, "h", Some(&IntOrString::Int(1)));
        assert_eq!(p.create, vec!["b".to_string()]);
        // The oldest of two stays; the misscheduled one and the one on a vanished node go.
        let deleted: Vec<&str> = p.delete.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(deleted, vec!["x-1", "x-2", "x-3"]);
        assert_eq!(
            p.counts,
            Counts {
                desired: 2,
                current: 1,
                misscheduled: 1,
                ready: 1,
                updated: 1,
                available: 1
            }
        );
    }

    #[test]
    fn failed_pods_are_replaced_and_terminating_ones_not_counted() {
        let nodes = vec![("a".to_string(), fit(true, true))];
        let mut failed = pod("x-0", "a", "h", "t0");
        failed.failed = true;
        let p = plan(&nodes, &[failed], "h", None);
        assert_eq!(p.delete, vec![("x-0".to_string(), "u-x-0".to_string())]);
        assert_eq!(p.create, vec!["a".to_string()]);
        let mut going = pod("x-0", "a", "h", "t0");
        going.terminating = true;
        let p = plan(&nodes, &[going], "h", None);
        assert!(p.delete.is_empty());
        assert_eq!(p.create, vec!["a".to_string()]);
        assert_eq!(p.counts.current, 0);
    }

    #[test]
    fn rolling_update_replaces_node_by_node_within_max_unavailable() {
        let nodes: Vec<(String, NodeFit)> = ["a", "b", "c"]
            .iter()
            .map(|n| (n.to_string(), fit(true, true)))
            .collect();
        let old: Vec<PodView> = ["a", "b", "c"]
            .iter()
            .map(|n| pod(&format!("x-{n}"), n, "old", "t0"))
            .collect();
        let p = plan(&nodes, &old, "new", Some(&IntOrString::Int(1)));
        assert_eq!(p.delete.len(), 1);
        assert!(p.create.is_empty());
        assert_eq!(p.counts.updated, 0);
        // While a node has no pod (the old one going), nothing else is touched.
        let mut next = old.clone();
        next[0].terminating = true;
        let p = plan(&nodes, &next, "new", Some(&IntOrString::Int(1)));
        assert!(p.delete.is_empty());
        assert_eq!(p.create, vec!["a".to_string()]);
        // A new pod not yet available still counts against the budget.
        next[0] = pod("y-a", "a", "new", "t1");
        next[0].available = false;
        assert!(plan(&nodes, &next, "new", Some(&IntOrString::Int(1)))
            .delete
            .is_empty());
        next[0].available = true;
        assert_eq!(
            plan(&nodes, &next, "new", Some(&IntOrString::Int(1)))
                .delete
                .len(),
            1
        );
        // A larger budget replaces more at once; unavailable old pods go regardless.
        assert_eq!(
            plan(
                &nodes,
                &old,
                "new",
                Some(&IntOrString::String("100%".into()))
            )
            .delete
            .len(),
            3
        );
        let mut sick = old.clone();
        sick[2].available = false;
        // (As upstream: an unavailable old pod is replaced without using the budget.)
        assert_eq!(
            plan(&nodes, &sick, "new", Some(&IntOrString::Int(1)))
                .delete
                .len(),
            2
        );
        // OnDelete leaves outdated pods.
        assert!(plan(&nodes, &old, "new", None).delete.is_empty());
    }
}
