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
use super::owned::{self, controller_of, controller_ref, meta_of};
use super::replicaset::{self, now_seconds};
use super::runner::{Reconciler, Requeue};
use super::selector_index::SelectorIndex;
use super::ControllerError;
use crate::api::client::{Client, Propagation};
use crate::api::events::{self, EventType};
use crate::api::table::parse_timestamp;
use crate::api::workloads::scaled_value;
use crate::api::ApiError;
use crate::store::{Event, ObjectKey};
use async_trait::async_trait;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
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

pub(super) fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

pub(super) fn int_at(v: &Value, pointer: &str) -> i32 {
    v.pointer(pointer)
        .and_then(Value::as_i64)
        .and_then(|n| i32::try_from(n).ok())
        .unwrap_or(0)
}

/// `spec.replicas` (1 when unset, as defaulted).
pub(super) fn replicas_of(obj: &Value) -> i32 {
    obj.pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .and_then(|n| i32::try_from(n).ok())
        .unwrap_or(1)
}

pub(super) fn annotation<'a>(obj: &'a Value, key: &str) -> Option<&'a str> {
    obj.pointer("/metadata/annotations")
        .and_then(|a| a.get(key))
        .and_then(Value::as_str)
}

pub(super) fn set_annotation(obj: &mut Value, key: &str, value: &str) {
    if !obj["metadata"]["annotations"].is_object() {
        obj["metadata"]["annotations"] = json!({});
    }
    obj["metadata"]["annotations"][key] = json!(value);
}

/// The revision of a ReplicaSet (0 when missing or malformed).
pub fn revision_of(rs: &Value) -> i64 {
    annotation(rs, REVISION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

pub(super) fn is_rolling(d: &Value) -> bool {
    str_at(d, "/spec/strategy/type") != "Recreate"
}

/// The Deployment [`Reconciler`].
pub struct DeploymentController {
    client: Client,
    index: SelectorIndex,
}

/// One reconcile's view: the Deployment as last written and its ReplicaSets.
struct Rollout {
    d: Value,
    new: Option<Value>,
    /// Oldest first.
    old: Vec<Value>,
}

impl Rollout {
    fn all(&self) -> Vec<&Value> {
        self.old.iter().chain(self.new.as_ref()).collect()
    }
}

impl DeploymentController {
    /// A controller writing through `client`.
    pub fn new(client: Client) -> Self {
        Self {
            client,
            index: SelectorIndex::default(),
        }
    }

    async fn event(&self, d: &Value, reason: &str, message: &str) {
        events::record_best_effort(
            &self.client,
            d,
            EventType::Normal,
            reason,
            message,
            COMPONENT,
        )
        .await;
    }

    /// Sizes `rs` to `size` (and refreshes its replicas annotations); returns whether the size
    /// changed and the ReplicaSet as written.
    async fn scale(&self, d: &Value, rs: &Value, size: i32) -> Result<(bool, Value), ApiError> {
        let mut updated = rs.clone();
        let from = replicas_of(rs);
        let resize = from != size;
        let annotated =
            set_replicas_annotations(&mut updated, replicas_of(d), replicas_of(d) + max_surge(d));
        if !resize && !annotated {
            return Ok((false, rs.clone()));
        }
        updated["spec"]["replicas"] = json!(size);
        let ns = str_at(d, "/metadata/namespace");
        let written = self
            .client
            .update(replicaset::RESOURCE, ns, updated)
            .await?;
        if resize {
            let way = if size > from { "up" } else { "down" };
            let msg = format!(
                "Scaled {way} replica set {} to {size} from {from}",
                str_at(rs, "/metadata/name")
            );
            self.event(d, "ScalingReplicaSet", &msg).await;
        }
        Ok((resize, written))
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
                    if let Ok(Some(rs)) = self.client.get(replicaset::RESOURCE, ns, &r.name).await {
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
        let Some(mut d) = self.client.get(RESOURCE, &key.namespace, &key.name).await? else {
            return Ok(Requeue::No);
        };
        let typed_d: Deployment = typed(&d)?;
        let selector = owner_selector(
            "Deployment",
            &typed_d.metadata,
            typed_d.spec.as_ref().map(|s| &s.selector),
        )?;
        let candidates = self
            .client
            .list(replicaset::RESOURCE, Some(&key.namespace))
            .await?;
        let owned = claim::claim_all(
            &self.client,
            replicaset::RESOURCE,
            &typed_d,
            &selector,
            candidates,
        )
        .await?;
        if owned::is_terminating(&typed_d.metadata) {
            let mut ro = self.split(d, owned, false).await?;
            return Ok(self.sync_status_only(&mut ro).await?);
        }
        self.check_paused(&mut d).await?;
        let paused = d.pointer("/spec/paused").and_then(Value::as_bool) == Some(true);
        let mut ro = self.split(d, owned, false).await?;
        if paused || Self::is_scaling_event(&ro) {
            self.scale_to_spec(&mut ro).await?;
            if paused {
                self.cleanup(&ro).await?;
            }
            return Ok(self.sync_status_only(&mut ro).await?);
        }
        let owned: Vec<Value> = ro.old.into_iter().chain(ro.new).collect();
        if is_rolling(&ro.d) {
            Ok(self.rollout_rolling(ro.d, owned).await?)
        } else {
            Ok(self.rollout_recreate(ro.d, owned).await?)
        }
    }
}
