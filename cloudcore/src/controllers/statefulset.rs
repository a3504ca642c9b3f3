//! The StatefulSet controller: pods with stable names `<sts>-0 .. <sts>-(n-1)`.
//!
//! Each pod carries `statefulset.kubernetes.io/pod-name`, `apps.kubernetes.io/pod-index` and
//! `controller-revision-hash` (the template digest of [`owned::template_hash`]), and gets
//! `spec.hostname` = its name and `spec.subdomain` = `serviceName`, as upstream.
//!
//! - **OrderedReady** (the default): ordinal `i` is created only once `0..i` are Running and
//!   Ready; a scale-down removes the highest ordinal first, one at a time, waiting for each pod
//!   to be really gone (a pod terminating on its edge counts until the edge confirms).
//! - **Parallel**: every missing pod is created and every surplus pod deleted at once.
//! - A Failed pod is deleted, and a missing pod (Failed then deleted, or deleted by anyone) is
//!   recreated with the same name.
//! - **RollingUpdate** with `partition`: once every pod exists (and, OrderedReady, is healthy),
//!   the highest ordinal `>= partition` with an outdated revision is deleted, one at a time,
//!   waiting for the replacement to be Running and Ready before the next. **OnDelete** leaves
//!   outdated pods.
//!
//! Revisions: no ControllerRevision objects are kept (Skerry does not serve the kind); the
//! revision is the template hash. So a pod recreated below the partition gets the current
//! template, not the one it had (upstream would restore the older revision), and
//! `kubectl rollout undo` is not supported. `currentRevision` becomes `updateRevision` once
//! every pod is updated and ready, which is what `kubectl rollout status` waits for.
//!
//! The decisions are a pure function ([`plan`]) of the pods; the reconcile reads, plans, writes.

use super::decode::typed;
use super::informer::Informers;
use super::owned::{self, meta_of, PodName};
use super::runner::{Reconciler, Requeue};
use super::ControllerError;
use crate::api::client::{Client, Propagation};
use crate::api::events::{self, EventType};
use crate::api::ApiError;
use crate::store::{Event, ObjectKey};
use async_trait::async_trait;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

/// Store resource of StatefulSets.
pub const RESOURCE: &str = "apps/statefulsets";
/// Resync period.
pub const RESYNC: Duration = Duration::from_secs(60);
/// Label with the pod's name.
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// Label with the pod's ordinal.
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";
/// Label with the template digest of the pod.
pub const REVISION_LABEL: &str = "controller-revision-hash";
const COMPONENT: &str = "statefulset-controller";

/// The ordinal of pod `pod` of StatefulSet `sts` (`web-3` → 3).
pub fn ordinal_of(sts: &str, pod: &str) -> Option<usize> {
    let n = pod.strip_prefix(sts)?.strip_prefix('-')?;
    if n.is_empty() || (n.len() > 1 && n.starts_with('0')) {
        return None;
    }
    n.parse().ok()
}

/// What the controller needs to know about one of its pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    /// Ordinal.
    pub ordinal: usize,
    /// Name.
    pub name: String,
    /// Uid (the precondition of its deletion).
    pub uid: String,
    /// `controller-revision-hash`.
    pub revision: String,
    /// Has a deletion timestamp.
    pub terminating: bool,
    /// Phase `Failed`.
    pub failed: bool,
    /// Phase `Running` and Ready.
    pub healthy: bool,
    /// Ready for `minReadySeconds`.
    pub available: bool,
}

impl PodView {
    /// Reads pod `pod` of StatefulSet `sts` at `now` with `min_ready` seconds; `None` for a
    /// pod whose name carries no ordinal of this set.
    pub fn of(sts: &str, pod: &Pod, min_ready: i64, now: i64) -> Option<Self> {
        let meta = &pod.metadata;
        let name = meta.name.as_deref().unwrap_or("");
        Some(Self {
            ordinal: ordinal_of(sts, name)?,
            name: name.into(),
            uid: meta.uid.clone().unwrap_or_default(),
            revision: meta
                .labels
                .as_ref()
                .and_then(|l| l.get(REVISION_LABEL))
                .cloned()
                .unwrap_or_default(),
            terminating: owned::is_terminating(meta),
            failed: owned::phase(pod) == "Failed",
            healthy: owned::phase(pod) == "Running" && owned::is_ready(pod),
            available: owned::is_available(pod, min_ready, now),
        })
    }
}

/// One step of a reconcile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Create the pod with this ordinal.
    Create(usize),
    /// Delete this pod (name, uid).
    Delete(String, String),
}

/// How the set is managed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// `podManagementPolicy: Parallel`.
    pub parallel: bool,
    /// RollingUpdate's partition; `None` for OnDelete.
    pub partition: Option<usize>,
}

/// Plans one reconcile of a set of `replicas` with `pods` and template revision `update`.
pub fn plan(replicas: usize, pods: &[PodView], update: &str, policy: Policy) -> Vec<Action> {
    let ordered = !policy.parallel;
    let by_ordinal: BTreeMap<usize, &PodView> = pods.iter().map(|p| (p.ordinal, p)).collect();
    let delete = |p: &PodView| Action::Delete(p.name.clone(), p.uid.clone());
    let mut actions = Vec::new();
    for i in 0..replicas {
        match by_ordinal.get(&i) {
            None => {
                actions.push(Action::Create(i));
                if ordered {
                    return actions;
                }
            }
            Some(p) if p.terminating => {
                if ordered {
                    return actions;
                }
            }
            Some(p) if p.failed => {
                actions.push(delete(p));
                if ordered {
                    return actions;
                }
            }
            Some(p) if !p.healthy && ordered => return actions,
            Some(_) => {}
        }
    }
    let condemned: Vec<&PodView> = by_ordinal
        .range(replicas..)
        .rev()
        .map(|(_, p)| *p)
        .collect();
    if ordered {
        if condemned.iter().any(|p| p.terminating) {
            return actions;
        }
        if let Some(p) = condemned.first() {
            actions.push(delete(p));
            return actions;
        }
    } else {
        actions.extend(
            condemned
                .iter()
                .filter(|p| !p.terminating)
                .map(|p| delete(p)),
        );
    }
    if !actions.is_empty() || !condemned.is_empty() {
        return actions;
    }
    if let Some(partition) = policy.partition {
        for i in (partition..replicas).rev() {
            let Some(p) = by_ordinal.get(&i) else {
                return actions;
            };
            if p.revision != update && !p.terminating {
                actions.push(delete(p));
                return actions;
            }
            if !p.healthy || p.terminating {
                return actions;
            }
        }
    }
    actions
}

/// The status counters of a set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// Pods that exist and are not terminating.
    pub replicas: i64,
    /// Of those, Running and Ready.
    pub ready: i64,
    /// Of those, available.
    pub available: i64,
    /// Of those, at the current revision.
    pub current: i64,
    /// Of those, at the update revision.
    pub updated: i64,
    /// The current revision (becomes the update revision once a rolling update completed).
    pub current_revision: String,
}

/// Computes the status from `pods`, the revision recorded as current (empty: none yet) and
/// the `update` revision; `rolling`: RollingUpdate (only a rolling update completes).
pub fn status(pods: &[PodView], recorded: &str, update: &str, rolling: bool) -> Status {
    let live: Vec<&PodView> = pods.iter().filter(|p| !p.terminating).collect();
    let count = |f: &dyn Fn(&PodView) -> bool| live.iter().filter(|p| f(p)).count() as i64;
    let mut current_revision = if recorded.is_empty() {
        update.to_string()
    } else {
        recorded.to_string()
    };
    let replicas = live.len() as i64;
    let ready = count(&|p| p.healthy);
    let updated = count(&|p| p.revision == update);
    if rolling && updated == replicas && ready == replicas {
        current_revision = update.to_string();
    }
    Status {
        replicas,
        ready,
        available: count(&|p| p.available),
        current: count(&|p| p.revision == current_revision),
        updated,
        current_revision,
    }
}

/// Pod `ordinal` of `sts`, from `template` (the stored `spec.template`, copied verbatim).
pub fn new_pod(sts: &StatefulSet, template: &Value, ordinal: usize, revision: &str) -> Value {
    let set = sts.metadata.name.as_deref().unwrap_or("");
    let name = format!("{set}-{ordinal}");
    let mut pod = owned::pod_from_template(template, sts, PodName::Exact(&name));
    let meta = &mut pod["metadata"];
    if !meta["labels"].is_object() {
        meta["labels"] = json!({});
    }
    meta["labels"][POD_NAME_LABEL] = json!(name);
    meta["labels"][POD_INDEX_LABEL] = json!(ordinal.to_string());
    meta["labels"][REVISION_LABEL] = json!(revision);
    pod["spec"]["hostname"] = json!(name);
    let service = sts
        .spec
        .as_ref()
        .and_then(|s| s.service_name.as_deref())
        .unwrap_or("");
    if !service.is_empty() {
        pod["spec"]["subdomain"] = json!(service);
    }
    pod
}

/// The StatefulSet [`Reconciler`].
pub struct StatefulSetController {
    client: Client,
    informers: Informers,
}

impl StatefulSetController {
    /// A controller writing through `client` and reading pods from `informers`.
    pub fn new(client: Client, informers: &Informers) -> Self {
        Self {
            client,
            informers: informers.clone(),
        }
    }

    async fn event(&self, sts: &Value, reason: &str, message: &str) {
        events::record_best_effort(
            &self.client,
            sts,
            EventType::Normal,
            reason,
            message,
            COMPONENT,
        )
        .await;
    }
}

#[async_trait]
impl Reconciler for StatefulSetController {
    fn name(&self) -> &'static str {
        "statefulset"
    }

    async fn on_permanent_error(&self, key: &ObjectKey, error: &ControllerError) {
        owned::report_permanent_error(&self.client, key, error, COMPONENT).await;
    }

    async fn keys_for_event(&self, ev: &Event) -> Vec<ObjectKey> {
        match ev.key.resource.as_str() {
            RESOURCE => vec![ev.key.clone()],
            "pods" => owned::controller_keys(ev, "StatefulSet", RESOURCE),
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
        let sts: StatefulSet = typed(&raw)?;
        let uid = sts.metadata.uid.clone().unwrap_or_default();
        let spec = sts.spec.as_ref();
        let min_ready = i64::from(spec.and_then(|s| s.min_ready_seconds).unwrap_or(0));
        let now = crate::clock::now_seconds();
        let replicas = usize::try_from(spec.and_then(|s| s.replicas).unwrap_or(1)).unwrap_or(1);
        let template = raw.pointer("/spec/template").cloned().unwrap_or(json!({}));
        let update = owned::template_hash(&template);
        let own_pods: Vec<Pod> = self.informers.pods.controlled_by_as(&uid)?;
        let pods: Vec<PodView> = own_pods
            .iter()
            .filter_map(|p| PodView::of(&key.name, p, min_ready, now))
            .collect();
        let strategy = spec.and_then(|s| s.update_strategy.as_ref());
        let rolling = strategy.and_then(|s| s.type_.as_deref()) != Some("OnDelete");
        let policy = Policy {
            parallel: spec.and_then(|s| s.pod_management_policy.as_deref()) == Some("Parallel"),
            partition: rolling.then(|| {
                let partition = strategy
                    .and_then(|s| s.rolling_update.as_ref())
                    .and_then(|r| r.partition)
                    .unwrap_or(0);
                usize::try_from(partition).unwrap_or(0)
            }),
        };
        if !owned::is_terminating(&sts.metadata) {
            for action in plan(replicas, &pods, &update, policy) {
                match action {
                    Action::Create(i) => {
                        let created = self
                            .client
                            .create("pods", &key.namespace, new_pod(&sts, &template, i, &update))
                            .await
                            .map_err(|e| match e {
                                ApiError::AlreadyExists { .. } => ApiError::Internal(format!(
                                    "pod {}-{i} exists but is not controlled by StatefulSet {key}; delete it so the set can create its own",
                                    key.name
                                )),
                                e => e,
                            })?;
                        let name = meta_of(&created).name.unwrap_or_default();
                        tracing::info!(statefulset = %key, pod = %name, "created a pod");
                        self.event(
                            &raw,
                            "SuccessfulCreate",
                            &format!("create Pod {name} in StatefulSet {} successful", key.name),
                        )
                        .await;
                    }
                    Action::Delete(name, pod_uid) => {
                        match self
                            .client
                            .delete(
                                "pods",
                                &key.namespace,
                                &name,
                                Propagation::Background,
                                Some(&pod_uid),
                            )
                            .await
                        {
                            Ok(()) => {
                                tracing::info!(statefulset = %key, pod = %name, "deleted a pod");
                                self.event(
                                    &raw,
                                    "SuccessfulDelete",
                                    &format!(
                                        "delete Pod {name} in StatefulSet {} successful",
                                        key.name
                                    ),
                                )
                                .await;
                            }
                            Err(ApiError::NotFound { .. } | ApiError::Conflict { .. }) => {}
                            Err(e) => return Err(e.into()),
                        }
                    }
                }
            }
        }
        let recorded = sts
            .status
            .as_ref()
            .and_then(|s| s.current_revision.as_deref())
            .unwrap_or("");
        let s = status(&pods, recorded, &update, rolling);
        let generation = sts.metadata.generation.unwrap_or(1);
        // The stored status, as written (with fields this controller does not own).
        let mut next_status = raw.get("status").cloned().unwrap_or(json!({}));
        for (k, v) in [
            ("observedGeneration", json!(generation)),
            ("replicas", json!(s.replicas)),
            ("readyReplicas", json!(s.ready)),
            ("currentReplicas", json!(s.current)),
            ("updatedReplicas", json!(s.updated)),
            ("availableReplicas", json!(s.available)),
            ("currentRevision", json!(s.current_revision)),
            ("updateRevision", json!(update)),
            ("collisionCount", json!(0)),
        ] {
            next_status[k] = v;
        }
        self.client
            .write_status_if_changed(RESOURCE, &raw, next_status)
            .await?;
        Ok(Requeue::after_seconds(owned::next_available_in(
            &own_pods, min_ready, now,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ordinal: usize, revision: &str) -> PodView {
        PodView {
            ordinal,
            name: format!("web-{ordinal}"),
            uid: format!("u-{ordinal}"),
            revision: revision.into(),
            terminating: false,
            failed: false,
            healthy: true,
            available: true,
        }
    }

    const ORDERED: Policy = Policy {
        parallel: false,
        partition: Some(0),
    };
    const PARALLEL: Policy = Policy {
        parallel: true,
        partition: Some(0),
    };

    fn del(i: usize) -> Action {
        Action::Delete(format!("web-{i}"), format!("u-{i}"))
    }

    #[test]
    fn ordinals_are_parsed_strictly() {
        assert_eq!(ordinal_of("web", "web-0"), Some(0));
        assert_eq!(ordinal_of("web", "web-12"), Some(12));
        assert_eq!(ordinal_of("web", "web-01"), None);
        assert_eq!(ordinal_of("web", "web-x"), None);
        assert_eq!(ordinal_of("web", "webby-1"), None);
        assert_eq!(ordinal_of("web", "web-"), None);
    }

    #[test]
    fn ordered_ready_creates_one_at_a_time_after_the_previous_is_ready() {
        assert_eq!(plan(3, &[], "r", ORDERED), vec![Action::Create(0)]);
        let mut starting = pod(0, "r");
        starting.healthy = false;
        assert!(plan(3, &[starting.clone()], "r", ORDERED).is_empty());
        assert_eq!(
            plan(3, &[pod(0, "r")], "r", ORDERED),
            vec![Action::Create(1)]
        );
        // Parallel creates everything at once.
        assert_eq!(
            plan(3, &[starting], "r", PARALLEL),
            vec![Action::Create(1), Action::Create(2)]
        );
    }

    #[test]
    fn scale_down_goes_from_the_highest_ordinal_waiting_for_each() {
        let pods = vec![pod(0, "r"), pod(1, "r"), pod(2, "r")];
        assert_eq!(plan(1, &pods, "r", ORDERED), vec![del(2)]);
        let mut going = pods.clone();
        going[2].terminating = true;
        assert!(plan(1, &going, "r", ORDERED).is_empty());
        assert_eq!(plan(0, &pods[..2], "r", ORDERED), vec![del(1)]);
        assert_eq!(plan(1, &pods, "r", PARALLEL), vec![del(2), del(1)]);
    }

    #[test]
    fn failed_and_missing_pods_come_back_with_their_names() {
        let mut failed = vec![pod(0, "r"), pod(1, "r")];
        failed[0].failed = true;
        failed[0].healthy = false;
        assert_eq!(plan(2, &failed, "r", ORDERED), vec![del(0)]);
        assert_eq!(
            plan(2, &[pod(1, "r")], "r", ORDERED),
            vec![Action::Create(0)]
        );
    }

    #[test]
    fn rolling_update_goes_down_from_the_top_respecting_the_partition() {
        let old = vec![pod(0, "a"), pod(1, "a"), pod(2, "a")];
        assert_eq!(plan(3, &old, "b", ORDERED), vec![del(2)]);
        // The replacement must be Running and Ready before the next goes.
        let mut next = vec![pod(0, "a"), pod(1, "a"), pod(2, "b")];
        next[2].healthy = false;
        assert!(plan(3, &next, "b", PARALLEL).is_empty());
        next[2].healthy = true;
        assert_eq!(plan(3, &next, "b", ORDERED), vec![del(1)]);
        let partitioned = Policy {
            parallel: false,
            partition: Some(2),
        };
        assert!(plan(3, &next, "b", partitioned).is_empty());
        let on_delete = Policy {
            parallel: false,
            partition: None,
        };
        assert!(plan(3, &old, "b", on_delete).is_empty());
    }

    #[test]
    fn status_counts_and_completes_rollouts() {
        let pods = vec![pod(0, "a"), pod(1, "b")];
        let s = status(&pods, "a", "b", true);
        assert_eq!((s.replicas, s.ready, s.current, s.updated), (2, 2, 1, 1));
        assert_eq!(s.current_revision, "a");
        let done = status(&[pod(0, "b"), pod(1, "b")], "a", "b", true);
        assert_eq!((done.current, done.updated), (2, 2));
        assert_eq!(done.current_revision, "b");
        assert_eq!(status(&[], "", "b", true).current_revision, "b");
        let on_delete = status(&[pod(0, "b")], "a", "b", false);
        assert_eq!(on_delete.current_revision, "a");
    }

    #[test]
    fn pods_carry_stable_identity() {
        let sts = json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": "web", "namespace": "default", "uid": "u-sts"},
            "spec": {"serviceName": "web-svc", "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        let p = new_pod(&typed(&sts).unwrap(), &sts["spec"]["template"], 1, "r1");
        assert_eq!(p["metadata"]["name"], "web-1");
        assert_eq!(p["metadata"]["labels"][POD_NAME_LABEL], "web-1");
        assert_eq!(p["metadata"]["labels"][POD_INDEX_LABEL], "1");
        assert_eq!(p["metadata"]["labels"][REVISION_LABEL], "r1");
        assert_eq!(p["metadata"]["labels"]["app"], "web");
        assert_eq!(p["spec"]["hostname"], "web-1");
        assert_eq!(p["spec"]["subdomain"], "web-svc");
        assert!(owned::is_controlled_by(&meta_of(&p), "u-sts"));
    }
}
