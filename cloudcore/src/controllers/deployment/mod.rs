//! The Deployment controller: rolls a Deployment's pod template out through one ReplicaSet per
//! template, with Kubernetes' `DeploymentController` semantics, so that `kubectl rollout
//! status|history|undo|pause|resume` and `kubectl scale` work unchanged.
//!
//! - **One ReplicaSet per template**, named `<deployment>-<hash>`; the hash
//!   ([`owned::template_hash`] of the template without the label) is added as the
//!   `pod-template-hash` label to the ReplicaSet's labels, selector and template. The
//!   ReplicaSet whose template equals the Deployment's (ignoring that label) is the new one;
//!   an old one that matches again (a rollback) becomes the new one and gets the next
//!   revision. Annotations as upstream: `deployment.kubernetes.io/revision` (and
//!   `revision-history` for a ReplicaSet brought back), `desired-replicas`, `max-replicas`,
//!   and the Deployment's own annotations (such as `kubernetes.io/change-cause`, which
//!   `kubectl rollout history` prints) copied to the new ReplicaSet.
//! - **RollingUpdate** ([`rolling_new_replicas`], [`scale_down_old`]): the new ReplicaSet
//!   grows while all ReplicaSets together stay within `replicas + maxSurge` (rounded up); old
//!   ones shrink, unhealthy replicas first, only as far as `replicas - maxUnavailable`
//!   (rounded down) pods stay available.
//! - **Recreate**: old ReplicaSets go to 0, the new one is created only once none of their
//!   pods is left (terminating ones included).
//! - **Paused**: no rollout progress and no new ReplicaSet; scaling still applies.
//! - **Scaling** (`spec.replicas` changed, seen through the `desired-replicas` annotation):
//!   with one active ReplicaSet it takes the new size. Mid-rollout, with several active
//!   ReplicaSets, Kubernetes spreads the difference proportionally to their sizes; this
//!   controller simplifies that ([`scale_plan`]): an increase goes to the new ReplicaSet (or
//!   the newest active one), a decrease comes from the oldest old ReplicaSets first, then from
//!   the new one; the rollout then proceeds from there within the same bounds.
//! - **Cleanup** of old ReplicaSets beyond `revisionHistoryLimit`, oldest revision first, and
//!   only those scaled to 0 with no pod left.
//! - **Status** and conditions `Available` and `Progressing` with upstream's reasons and
//!   messages ([`calculate_status`], [`rollout_conditions`]), including
//!   `ProgressDeadlineExceeded` once no progress was seen for `progressDeadlineSeconds`.
//! - **Adoption** of orphan ReplicaSets matching the selector ([`super::claim`]).
//! - Events `ScalingReplicaSet` ("Scaled up replica set web-abc to 3 from 1") from
//!   `deployment-controller`.
//!
//! Deleting a Deployment's ReplicaSets with it is the garbage collector's job.
//!
//! The controller is split along its seams: [`rollout`] (how far RollingUpdate and Recreate
//! move the ReplicaSets in one pass, and scaling), [`history`] (ReplicaSets per template,
//! revisions and rollback, cleanup beyond `revisionHistoryLimit`) and [`status`] (the
//! Deployment's status and its `Available`/`Progressing` conditions). This file holds what
//! they share and the [`Reconciler`] that drives them.
//!
//! Every reconcile decodes the Deployment and its ReplicaSets into k8s-openapi types
//! ([`Obj`]) and decides from typed fields. What is written stays JSON where it must keep what
//! decoding drops: objects are updated from their stored form, and a new ReplicaSet is stamped
//! from the Deployment's stored template, which is also what is compared and hashed (as JSON,
//! so that ReplicaSet names stay the same and an unknown template field still counts as a
//! change). The status is built typed and written whole.

mod history;
mod rollout;
mod status;
#[cfg(test)]
mod tests;

pub use history::*;
pub use rollout::*;
pub use status::*;

use super::claim;
use super::decode::{owner_selector, typed};
use super::informer::Informers;
use super::owned::{self, controller_of, controller_ref, meta_of};
use super::replicaset::{self, now_seconds};
use super::runner::{Reconciler, Requeue};
use super::selector_index::SelectorIndex;
use super::ControllerError;
use crate::api::client::{Client, Propagation};
use crate::api::events::{self, EventType};
use crate::api::workloads::scaled_value;
use crate::api::ApiError;
use crate::store::{Event, ObjectKey};
use async_trait::async_trait;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetStatus,
};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::Metadata;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

/// Storage resource of Deployments.
pub const RESOURCE: &str = "apps/deployments";
/// The component name on Events.
pub const COMPONENT: &str = "deployment-controller";
/// The label distinguishing the pods of each ReplicaSet of a Deployment.
pub const HASH_LABEL: &str = "pod-template-hash";
/// The revision of a ReplicaSet (and of the Deployment: its new ReplicaSet's).
pub const REVISION: &str = "deployment.kubernetes.io/revision";
/// Earlier revisions of a ReplicaSet brought back by a rollback.
pub const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
/// `spec.replicas` of the Deployment when the ReplicaSet was last sized.
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
/// `replicas + maxSurge` of the Deployment when the ReplicaSet was last sized.
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";

/// Deployment annotations never copied to its ReplicaSets (upstream's `annotationsToSkip`).
const NOT_COPIED: [&str; 6] = [
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    REVISION_HISTORY,
    DESIRED_REPLICAS,
    MAX_REPLICAS,
    "deprecated.deployment.rollback.to",
];

/// A stored object and its k8s-openapi decoding. Decisions read `t`; writes send `raw` with
/// the controller's own changes applied, because decoding drops fields k8s-openapi does not
/// know (see [`super::decode`]). [`Obj::set_annotation`] keeps the two in step.
#[derive(Debug, Clone)]
pub struct Obj<T> {
    /// The object as stored.
    pub raw: Value,
    /// The object decoded.
    pub t: T,
}

/// A ReplicaSet of a Deployment, as stored and decoded.
pub type Rs = Obj<ReplicaSet>;

impl<T: DeserializeOwned> Obj<T> {
    /// Decodes `raw`; an object that does not decode is [`ControllerError::Invalid`].
    pub fn new(raw: Value) -> Result<Self, ControllerError> {
        Ok(Self {
            t: typed(&raw)?,
            raw,
        })
    }
}

impl<T: Metadata<Ty = ObjectMeta>> Obj<T> {
    /// An annotation of the object.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        annotation(self.t.metadata(), key)
    }

    /// Sets an annotation in both the stored form and the decoded one.
    pub fn set_annotation(&mut self, key: &str, value: &str) {
        if !self.raw["metadata"]["annotations"].is_object() {
            self.raw["metadata"]["annotations"] = json!({});
        }
        self.raw["metadata"]["annotations"][key] = json!(value);
        self.t
            .metadata_mut()
            .annotations
            .get_or_insert_with(Default::default)
            .insert(key.to_string(), value.to_string());
    }
}

/// Objects with a `spec.replicas` (1 when unset, as defaulted).
pub trait Replicas {
    /// `spec.replicas` as stored.
    fn spec_replicas(&self) -> Option<i32>;
}

impl Replicas for Deployment {
    fn spec_replicas(&self) -> Option<i32> {
        self.spec.as_ref().and_then(|s| s.replicas)
    }
}

impl Replicas for ReplicaSet {
    fn spec_replicas(&self) -> Option<i32> {
        self.spec.as_ref().and_then(|s| s.replicas)
    }
}

/// `spec.replicas` (1 when unset, as defaulted).
pub fn replicas_of(obj: &impl Replicas) -> i32 {
    obj.spec_replicas().unwrap_or(1)
}

/// `metadata.annotations[key]`.
pub(super) fn annotation<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(key).map(String::as_str)
}

/// `metadata.name`, `metadata.namespace` and `metadata.uid` ("" when unset).
pub(super) fn name(meta: &ObjectMeta) -> &str {
    meta.name.as_deref().unwrap_or("")
}

pub(super) fn namespace(meta: &ObjectMeta) -> &str {
    meta.namespace.as_deref().unwrap_or("")
}

pub(super) fn uid(meta: &ObjectMeta) -> &str {
    meta.uid.as_deref().unwrap_or("")
}

/// A ReplicaSet's `status` counts (0 when there is no status yet).
pub(super) fn rs_status(rs: &ReplicaSet) -> ReplicaSetStatus {
    rs.status.clone().unwrap_or_default()
}

/// The revision of a ReplicaSet (0 when missing or malformed).
pub fn revision_of(rs: &ReplicaSet) -> i64 {
    annotation(&rs.metadata, REVISION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

pub(super) fn is_rolling(d: &Deployment) -> bool {
    let kind = d
        .spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref()?.type_.as_deref());
    kind != Some("Recreate")
}

/// The Deployment [`Reconciler`].
pub struct DeploymentController {
    client: Client,
    /// ReplicaSets and pods, read after they caught up with the store.
    informers: Informers,
    index: SelectorIndex,
}

/// One reconcile's view: the Deployment as last written and its ReplicaSets.
struct Rollout {
    d: Obj<Deployment>,
    new: Option<Rs>,
    /// Oldest first.
    old: Vec<Rs>,
}

impl Rollout {
    fn all(&self) -> Vec<&Rs> {
        self.old.iter().chain(self.new.as_ref()).collect()
    }

    /// The decoded ReplicaSets, oldest first, the new one last.
    fn all_typed(&self) -> Vec<&ReplicaSet> {
        self.all().into_iter().map(|rs| &rs.t).collect()
    }
}

impl DeploymentController {
    /// A controller writing through `client` and reading ReplicaSets and pods from
    /// `informers`.
    pub fn new(client: Client, informers: &Informers) -> Self {
        Self {
            client,
            informers: informers.clone(),
            index: SelectorIndex::default(),
        }
    }

    async fn event(&self, d: &Obj<Deployment>, reason: &str, message: &str) {
        events::record_best_effort(
            &self.client,
            &d.raw,
            EventType::Normal,
            reason,
            message,
            COMPONENT,
        )
        .await;
    }

    /// Sizes `rs` to `size` (and refreshes its replicas annotations); returns whether the size
    /// changed and the ReplicaSet as written.
    async fn scale(
        &self,
        d: &Obj<Deployment>,
        rs: &Rs,
        size: i32,
    ) -> Result<(bool, Rs), ControllerError> {
        let mut updated = rs.clone();
        let from = replicas_of(&rs.t);
        let resize = from != size;
        let desired = replicas_of(&d.t);
        let annotated = set_replicas_annotations(&mut updated, desired, desired + max_surge(&d.t));
        if !resize && !annotated {
            return Ok((false, rs.clone()));
        }
        updated.raw["spec"]["replicas"] = json!(size);
        let ns = namespace(&d.t.metadata);
        let written = self
            .client
            .update(replicaset::RESOURCE, ns, updated.raw)
            .await?;
        if resize {
            let way = if size > from { "up" } else { "down" };
            let msg = format!(
                "Scaled {way} replica set {} to {size} from {from}",
                name(&rs.t.metadata)
            );
            self.event(d, "ScalingReplicaSet", &msg).await;
        }
        Ok((resize, Obj::new(written)?))
    }
}

#[async_trait]
impl Reconciler for DeploymentController {
    fn name(&self) -> &'static str {
        "deployment"
    }

    async fn on_permanent_error(&self, key: &ObjectKey, error: &ControllerError) {
        owned::report_permanent_error(&self.client, key, error, COMPONENT).await;
    }

    async fn keys_for_event(&self, event: &Event) -> Vec<ObjectKey> {
        let ns = &event.key.namespace;
        let mut keys: Vec<ObjectKey> = Vec::new();
        let mut push = |name: &str| {
            let k = ObjectKey::new(RESOURCE, ns.as_str(), name);
            if !keys.contains(&k) {
                keys.push(k);
            }
        };
        match event.key.resource.as_str() {
            RESOURCE => {
                self.index.observe(event);
                push(&event.key.name);
            }
            replicaset::RESOURCE => {
                for rs in [&event.value, &event.previous].into_iter().flatten() {
                    match controller_of(&meta_of(rs)) {
                        Some(r) if r.kind == "Deployment" => push(&r.name),
                        Some(_) => {}
                        None => {
                            for n in self.index.matching(ns, rs) {
                                push(&n);
                            }
                        }
                    }
                }
            }
            // A pod gone: a Recreate rollout may be waiting for exactly that.
            "pods" if event.value.is_none() => {
                let pod_meta = event.previous.as_ref().map(meta_of).unwrap_or_default();
                let rs_ref = controller_of(&pod_meta).filter(|r| r.kind == "ReplicaSet");
                if let Some(r) = rs_ref {
                    if let Some(rs) = self.informers.replicasets.get(ns, &r.name) {
                        let rs_meta = meta_of(&rs);
                        if let Some(d) = controller_of(&rs_meta).filter(|d| d.kind == "Deployment")
                        {
                            push(&d.name);
                        }
                    }
                }
            }
            _ => {}
        }
        keys
    }

    async fn all_keys(&self) -> Vec<ObjectKey> {
        let Some(all) = self.client.list_for_resync(RESOURCE).await else {
            return Vec::new();
        };
        self.index.replace_all(&all);
        owned::keys_of(RESOURCE, &all)
    }

    async fn reconcile(&self, key: &ObjectKey) -> Result<Requeue, ControllerError> {
        self.informers.synced().await?;
        let Some(raw) = self.client.get(RESOURCE, &key.namespace, &key.name).await? else {
            return Ok(Requeue::No);
        };
        let mut d: Obj<Deployment> = Obj::new(raw)?;
        let selector = owner_selector(
            "Deployment",
            &d.t.metadata,
            d.t.spec.as_ref().map(|s| &s.selector),
        )?;
        let candidates = self
            .informers
            .replicasets
            .claim_candidates(&key.namespace, uid(&d.t.metadata));
        let owned = claim::claim_all(
            &self.client,
            replicaset::RESOURCE,
            &d.t,
            &selector,
            candidates,
        )
        .await?;
        let owned: Vec<Rs> = owned.into_iter().map(Obj::new).collect::<Result<_, _>>()?;
        if owned::is_terminating(&d.t.metadata) {
            let mut ro = self.split(d, owned, false).await?;
            return self.sync_status_only(&mut ro).await;
        }
        self.check_paused(&mut d).await?;
        let paused = d.t.spec.as_ref().and_then(|s| s.paused) == Some(true);
        let mut ro = self.split(d, owned, false).await?;
        if paused || Self::is_scaling_event(&ro) {
            self.scale_to_spec(&mut ro).await?;
            if paused {
                self.cleanup(&ro).await?;
            }
            return self.sync_status_only(&mut ro).await;
        }
        let owned: Vec<Rs> = ro.old.into_iter().chain(ro.new).collect();
        if is_rolling(&ro.d.t) {
            self.rollout_rolling(ro.d, owned).await
        } else {
            self.rollout_recreate(ro.d, owned).await
        }
    }
}
