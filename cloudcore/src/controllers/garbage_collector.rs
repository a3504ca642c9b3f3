//! The garbage collector: deletes objects whose owners are gone, and carries out foreground and
//! orphan deletions (Kubernetes' `garbagecollector` controller, level-triggered).
//!
//! It keeps an in-memory [`Graph`] fed from store events: which uids exist (uid → key) and, for
//! objects with owner references, their owners (owner uid → dependents). Each event costs a few
//! map operations, whatever the store holds; the graph is rebuilt from a full listing only at a
//! resync. The graph decides *what to look at*; every decision is made on fresh reads:
//!
//! - **Dangling owners.** A dependent whose owners are all absent — by uid: a same-named
//!   successor with another uid is not the owner — is deleted in the background, with its uid
//!   as precondition (a same-named successor is never hit). A dependent with some owners left
//!   only loses the dangling references.
//! - **Foreground** (`foregroundDeletion` on a terminating owner): its dependents are deleted
//!   (those with `blockOwnerDeletion` in the foreground themselves, as upstream), and once no
//!   dependent with `blockOwnerDeletion: true` remains the finalizer is removed, so the owner
//!   goes. A pod counts until it is really gone, i.e. until its node confirmed termination.
//! - **Orphan** (`orphan` finalizer): the owner's references are removed from its dependents,
//!   then the finalizer.
//!
//! All writes go through [`Client`], so finalizers, graceful pod deletion and preconditions
//! apply exactly as to a `kubectl delete`.

use super::decode;
use super::owned::{self, meta_of};
use super::runner::{Reconciler, Requeue};
use super::ControllerError;
use crate::api::client::{Client, Propagation};
use crate::api::finalizers::{self, FOREGROUND, ORPHAN};
use crate::api::{ApiError, Registry};
use crate::store::{Event, ObjectKey};
use async_trait::async_trait;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

/// How often the graph is rebuilt from a full listing and every candidate rechecked.
pub const RESYNC: Duration = Duration::from_secs(300);

/// The name the garbage collector signs its Events with, as kube-controller-manager's.
pub const COMPONENT: &str = "garbage-collector-controller";

/// Resources the collector never looks at: events are never owners in practice, and the
/// busiest writers.
const IGNORED: &[&str] = &["events"];

/// Where objects of a kind live: from `(group, kind)` of an owner reference to the store
/// resource and whether it is namespaced.
#[derive(Debug, Clone, Default)]
pub struct Kinds {
    by_kind: HashMap<(String, String), (String, bool)>,
}

impl Kinds {
    /// The kinds `registry` serves.
    pub fn from_registry(registry: &Registry) -> Self {
        let by_kind = registry
            .iter()
            .map(|h| {
                let i = h.info();
                (
                    (i.group.to_string(), i.kind.to_string()),
                    (i.storage_resource(), i.namespaced),
                )
            })
            .collect();
        Self { by_kind }
    }

    /// The key of the object an owner reference of a dependent in `namespace` names; `None`
    /// for a kind this server does not serve (such an owner is never judged absent).
    pub fn owner_key(&self, owner_ref: &OwnerReference, namespace: &str) -> Option<ObjectKey> {
        let group = owner_ref
            .api_version
            .rsplit_once('/')
            .map_or("", |(g, _)| g);
        let (resource, namespaced) = self
            .by_kind
            .get(&(group.to_string(), owner_ref.kind.clone()))?;
        let ns = if *namespaced { namespace } else { "" };
        Some(ObjectKey::new(resource.clone(), ns, &owner_ref.name))
    }

    /// Every resource served (what a rebuild lists).
    fn resources(&self) -> BTreeSet<String> {
        self.by_kind.values().map(|(r, _)| r.clone()).collect()
    }
}

/// One owner reference as the graph keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerRef {
    /// Owner uid.
    pub uid: String,
    /// Where the owner lives, if its kind is served.
    pub key: Option<ObjectKey>,
    /// `blockOwnerDeletion`.
    pub block: bool,
}

/// The owner references in the metadata `meta` of an object.
pub fn owner_refs(meta: &ObjectMeta, kinds: &Kinds) -> Vec<OwnerRef> {
    let ns = meta.namespace.as_deref().unwrap_or("");
    meta.owner_references
        .iter()
        .flatten()
        .filter(|r| !r.uid.is_empty())
        .map(|r| OwnerRef {
            uid: r.uid.clone(),
            key: kinds.owner_key(r, ns),
            block: r.block_owner_deletion == Some(true),
        })
        .collect()
}

/// The owner graph: which uids exist, and who depends on whom.
#[derive(Debug, Default)]
pub struct Graph {
    /// Every object seen: uid → key.
    keys: HashMap<String, ObjectKey>,
    /// Objects with owner references: uid → owners.
    owners: HashMap<String, Vec<OwnerRef>>,
    /// Owner uid → dependent uids.
    dependents: HashMap<String, BTreeSet<String>>,
}

impl Graph {
    /// Records object `uid` at `key` with `owners` (replacing what was known of it). Returns
    /// the owners it had before.
    pub fn upsert(&mut self, uid: &str, key: ObjectKey, owners: Vec<OwnerRef>) -> Vec<OwnerRef> {
        let old = self.unlink(uid);
        self.keys.insert(uid.to_string(), key);
        for o in &owners {
            self.dependents
                .entry(o.uid.clone())
                .or_default()
                .insert(uid.to_string());
        }
        if !owners.is_empty() {
            self.owners.insert(uid.to_string(), owners);
        }
        old
    }

    /// Forgets object `uid`; returns the owners it had.
    pub fn remove(&mut self, uid: &str) -> Vec<OwnerRef> {
        self.keys.remove(uid);
        self.unlink(uid)
    }

    fn unlink(&mut self, uid: &str) -> Vec<OwnerRef> {
        let old = self.owners.remove(uid).unwrap_or_default();
        for o in &old {
            if let Some(set) = self.dependents.get_mut(&o.uid) {
                set.remove(uid);
                if set.is_empty() {
                    self.dependents.remove(&o.uid);
                }
            }
        }
        old
    }

    /// Whether an object with `uid` is known to exist.
    pub fn exists(&self, uid: &str) -> bool {
        self.keys.contains_key(uid)
    }

    /// The dependents of `owner_uid`: (uid, key).
    pub fn dependents_of(&self, owner_uid: &str) -> Vec<(String, ObjectKey)> {
        self.dependents
            .get(owner_uid)
            .into_iter()
            .flatten()
            .filter_map(|d| Some((d.clone(), self.keys.get(d)?.clone())))
            .collect()
    }

    /// The owners of `uid`.
    pub fn owners_of(&self, uid: &str) -> &[OwnerRef] {
        self.owners.get(uid).map_or(&[], Vec::as_slice)
    }

    /// Objects with at least one owner not known to exist: what a resync rechecks.
    pub fn dangling(&self) -> Vec<ObjectKey> {
        self.owners
            .iter()
            .filter(|(_, os)| os.iter().any(|o| !self.exists(&o.uid)))
            .filter_map(|(uid, _)| self.keys.get(uid).cloned())
            .collect()
    }

    /// Applies one store event; returns the keys the collector must look at: the object if its
    /// owners changed or it waits for the collector (orphan/foreground), the dependents of an
    /// object that disappeared, and the owners of a dependent that disappeared or changed
    /// owners (a foreground deletion may be able to finish).
    pub fn apply(&mut self, ev: &Event, kinds: &Kinds) -> Vec<ObjectKey> {
        let mut keys = Vec::new();
        let uid_of = |v: &Option<Value>| {
            v.as_ref()
                .and_then(|v| meta_of(v).uid)
                .filter(|u| !u.is_empty())
        };
        let (prev_uid, new_uid) = (uid_of(&ev.previous), uid_of(&ev.value));
        if let Some(prev) = prev_uid
            .as_deref()
            .filter(|p| new_uid.as_deref() != Some(*p))
        {
            keys.extend(self.dependents_of(prev).into_iter().map(|(_, k)| k));
            keys.extend(self.remove(prev).into_iter().filter_map(|o| o.key));
        }
        if let (Some(uid), Some(value)) = (new_uid.as_deref(), &ev.value) {
            let owners = owner_refs(&meta_of(value), kinds);
            let had = self.keys.contains_key(uid);
            let old = self.upsert(uid, ev.key.clone(), owners.clone());
            if old != owners || !had {
                if !owners.is_empty() {
                    keys.push(ev.key.clone());
                }
                keys.extend(old.into_iter().filter_map(|o| o.key));
            }
            if finalizers::is_deleting(value)
                && (finalizers::has_finalizer(value, ORPHAN)
                    || finalizers::has_finalizer(value, FOREGROUND))
            {
                keys.push(ev.key.clone());
            }
        }
        keys.sort();
        keys.dedup();
        keys
    }
}

/// The garbage collector [`Reconciler`].
pub struct GarbageCollector {
    client: Client,
    kinds: Kinds,
    graph: Mutex<Graph>,
}

/// What became of one owner reference on a fresh read.
enum OwnerState {
    Present,
    Absent,
}

impl GarbageCollector {
    /// A collector writing through `client`.
    pub fn new(client: Client) -> Self {
        let kinds = Kinds::from_registry(&client.state().registry);
        Self {
            client,
            kinds,
            graph: Mutex::new(Graph::default()),
        }
    }

    fn graph(&self) -> std::sync::MutexGuard<'_, Graph> {
        // A panic while holding the lock leaves a graph that the next resync rebuilds anyway.
        self.graph.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn get(&self, key: &ObjectKey) -> Result<Option<Value>, ApiError> {
        self.client
            .get(&key.resource, &key.namespace, &key.name)
            .await
    }

    async fn owner_state(&self, owner: &OwnerRef) -> Result<OwnerState, ApiError> {
        let Some(key) = &owner.key else {
            // A kind this server does not serve cannot be checked: never judged absent.
            return Ok(OwnerState::Present);
        };
        Ok(match self.get(key).await? {
            Some(o) if meta_of(&o).uid.as_deref() == Some(owner.uid.as_str()) => {
                OwnerState::Present
            }
            _ => OwnerState::Absent,
        })
    }

    /// Deletes the object at `key` with `propagation`, its `uid` as precondition; a vanished
    /// or replaced object is not an error (there is nothing left to do for this one).
    async fn delete(
        &self,
        key: &ObjectKey,
        uid: &str,
        propagation: Propagation,
        why: &str,
    ) -> Result<(), ApiError> {
        match self
            .client
            .delete(
                &key.resource,
                &key.namespace,
                &key.name,
                propagation,
                Some(uid),
            )
            .await
        {
            Ok(()) => {
                metrics::counter!("skerry_gc_deletions_total", "resource" => key.resource.clone())
                    .increment(1);
                tracing::info!(object = %key, %uid, propagation = propagation.as_str(), reason = why, "garbage collector deleted a dependent");
                Ok(())
            }
            Err(ApiError::NotFound { .. } | ApiError::Conflict { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Writes `obj` back (with its resourceVersion as precondition).
    async fn update(&self, key: &ObjectKey, obj: Value) -> Result<(), ApiError> {
        match self.client.update(&key.resource, &key.namespace, obj).await {
            Ok(_) | Err(ApiError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `obj` without the owner references whose uid is in `uids`.
    fn without_owners(obj: &Value, uids: &[&str]) -> Value {
        let mut out = obj.clone();
        let kept: Vec<Value> = obj
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .map(|refs| {
                refs.iter()
                    .filter(|r| {
                        let uid = r.get("uid").and_then(Value::as_str).unwrap_or("");
                        !uids.contains(&uid)
                    })
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        if let Some(meta) = out.get_mut("metadata").and_then(Value::as_object_mut) {
            if kept.is_empty() {
                meta.remove("ownerReferences");
            } else {
                meta.insert("ownerReferences".into(), json!(kept));
            }
        }
        out
    }

    /// The current dependents of `owner_uid` (fresh reads; the graph only says where to look),
    /// with this owner's reference in each.
    async fn live_dependents(
        &self,
        owner_uid: &str,
    ) -> Result<Vec<(ObjectKey, Value, OwnerRef)>, ApiError> {
        let candidates = self.graph().dependents_of(owner_uid);
        let mut out = Vec::new();
        for (uid, key) in candidates {
            let Some(d) = self.get(&key).await? else {
                continue;
            };
            let meta = meta_of(&d);
            if meta.uid.as_deref() != Some(uid.as_str()) {
                continue;
            }
            if let Some(r) = owner_refs(&meta, &self.kinds)
                .into_iter()
                .find(|r| r.uid == owner_uid)
            {
                out.push((key, d, r));
            }
        }
        Ok(out)
    }

    async fn orphan(&self, key: &ObjectKey, owner: &Value, uid: &str) -> Result<(), ApiError> {
        for (dkey, d, _) in self.live_dependents(uid).await? {
            self.update(&dkey, Self::without_owners(&d, &[uid])).await?;
            tracing::info!(object = %dkey, owner = %key, "garbage collector orphaned a dependent");
        }
        self.update(key, finalizers::without_finalizer(owner, ORPHAN))
            .await
    }

    async fn foreground(&self, key: &ObjectKey, owner: &Value, uid: &str) -> Result<(), ApiError> {
        let mut blocking = 0usize;
        for (dkey, d, r) in self.live_dependents(uid).await? {
            if r.block {
                blocking += 1;
            }
            if !finalizers::is_deleting(&d) {
                let policy = if r.block {
                    Propagation::Foreground
                } else {
                    Propagation::Background
                };
                let dependent_uid = meta_of(&d).uid.unwrap_or_default();
                self.delete(
                    &dkey,
                    &dependent_uid,
                    policy,
                    "owner is deleted in the foreground",
                )
                .await?;
            }
        }
        if blocking > 0 {
            tracing::debug!(object = %key, blocking, "foreground deletion waits for dependents");
            return Ok(());
        }
        tracing::info!(object = %key, "dependents gone; removing the foregroundDeletion finalizer");
        self.update(key, finalizers::without_finalizer(owner, FOREGROUND))
            .await
    }

    async fn collect(
        &self,
        key: &ObjectKey,
        obj: &Value,
        meta: &ObjectMeta,
    ) -> Result<(), ApiError> {
        let refs = owner_refs(meta, &self.kinds);
        if refs.is_empty() || finalizers::is_deleting(obj) {
            return Ok(());
        }
        let mut absent = Vec::new();
        for r in &refs {
            if let OwnerState::Absent = self.owner_state(r).await? {
                absent.push(r.uid.as_str());
            }
        }
        if absent.is_empty() {
            return Ok(());
        }
        if absent.len() == refs.len() {
            return self
                .delete(
                    key,
                    meta.uid.as_deref().unwrap_or(""),
                    Propagation::Background,
                    "all owners are gone",
                )
                .await;
        }
        tracing::info!(object = %key, dangling = ?absent, "garbage collector removed dangling owner references");
        self.update(key, Self::without_owners(obj, &absent)).await
    }
}

#[async_trait]
impl Reconciler for GarbageCollector {
    fn name(&self) -> &'static str {
        "garbagecollector"
    }

    async fn on_permanent_error(&self, key: &ObjectKey, error: &ControllerError) {
        owned::report_permanent_error(&self.client, key, error, COMPONENT).await;
    }

    async fn keys_for_event(&self, event: &Event) -> Vec<ObjectKey> {
        if IGNORED.contains(&event.key.resource.as_str()) {
            return Vec::new();
        }
        self.graph().apply(event, &self.kinds)
    }

    async fn all_keys(&self) -> Vec<ObjectKey> {
        let mut graph = Graph::default();
        let mut keys = Vec::new();
        for resource in self.kinds.resources() {
            if IGNORED.contains(&resource.as_str()) {
                continue;
            }
            let items = match self.client.list(&resource, None).await {
                Ok(items) => items,
                Err(e) => {
                    tracing::warn!(%resource, error = %e, "garbage collector cannot list; the graph misses these until the next resync");
                    continue;
                }
            };
            for obj in items {
                let meta = meta_of(&obj);
                let uid = meta.uid.as_deref().unwrap_or("");
                if uid.is_empty() {
                    continue;
                }
                let key = ObjectKey::new(
                    resource.clone(),
                    meta.namespace.as_deref().unwrap_or(""),
                    meta.name.as_deref().unwrap_or(""),
                );
                if finalizers::is_deleting(&obj)
                    && (finalizers::has_finalizer(&obj, ORPHAN)
                        || finalizers::has_finalizer(&obj, FOREGROUND))
                {
                    keys.push(key.clone());
                }
                graph.upsert(uid, key, owner_refs(&meta, &self.kinds));
            }
        }
        keys.extend(graph.dangling());
        *self.graph() = graph;
        keys
    }

    async fn reconcile(&self, key: &ObjectKey) -> Result<Requeue, ControllerError> {
        let Some(obj) = self.get(key).await? else {
            return Ok(Requeue::No);
        };
        let meta = decode::metadata(&obj)?;
        let uid = meta.uid.as_deref().unwrap_or("");
        if finalizers::is_deleting(&obj) && finalizers::has_finalizer(&obj, ORPHAN) {
            self.orphan(key, &obj, uid).await?;
        } else if finalizers::is_deleting(&obj) && finalizers::has_finalizer(&obj, FOREGROUND) {
            self.foreground(key, &obj, uid).await?;
        } else {
            self.collect(key, &obj, &meta).await?;
        }
        Ok(Requeue::No)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds() -> Kinds {
        Kinds::from_registry(&Registry::builtin())
    }

    fn obj(name: &str, uid: &str, owners: Value) -> Value {
        json!({"metadata": {"name": name, "namespace": "default", "uid": uid, "ownerReferences": owners}})
    }

    fn ev(key: ObjectKey, value: Option<Value>, previous: Option<Value>) -> Event {
        Event {
            revision: 1,
            key,
            value,
            previous,
            shards: vec![],
        }
    }

    fn ds_ref(name: &str, uid: &str, block: bool) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "name": name, "uid": uid,
               "controller": true, "blockOwnerDeletion": block})
    }

    #[test]
    fn owner_references_resolve_to_store_keys_by_group_and_kind() {
        let k = kinds();
        let refs = owner_refs(
            &meta_of(&obj(
                "p",
                "u-p",
                json!([ds_ref("agent", "u-ds", true),
                {"apiVersion": "v1", "kind": "Node", "name": "edge-a", "uid": "u-n"},
                {"apiVersion": "example.com/v1", "kind": "Widget", "name": "w", "uid": "u-w"}]),
            )),
            &k,
        );
        assert_eq!(
            refs[0].key,
            Some(ObjectKey::new("apps/daemonsets", "default", "agent"))
        );
        assert!(refs[0].block);
        // Cluster-scoped owners are looked up without a namespace.
        assert_eq!(refs[1].key, Some(ObjectKey::new("nodes", "", "edge-a")));
        assert!(!refs[1].block);
        assert_eq!(refs[2].key, None);
    }

    #[test]
    fn the_graph_follows_events_and_names_what_to_look_at() {
        let k = kinds();
        let mut g = Graph::default();
        let ds_key = ObjectKey::new("apps/daemonsets", "default", "agent");
        let pod_key = ObjectKey::new("pods", "default", "agent-x");
        let ds = obj("agent", "u-ds", json!([]));
        let pod = obj("agent-x", "u-p", json!([ds_ref("agent", "u-ds", true)]));
        assert!(g
            .apply(&ev(ds_key.clone(), Some(ds.clone()), None), &k)
            .is_empty());
        // A new dependent is looked at (its owner may already be gone).
        assert_eq!(
            g.apply(&ev(pod_key.clone(), Some(pod.clone()), None), &k),
            vec![pod_key.clone()]
        );
        assert_eq!(
            g.dependents_of("u-ds"),
            vec![("u-p".to_string(), pod_key.clone())]
        );
        assert!(g.dangling().is_empty());
        // A status-only change of the dependent costs nothing.
        let mut running = pod.clone();
        running["status"] = json!({"phase": "Running"});
        assert!(g
            .apply(
                &ev(pod_key.clone(), Some(running.clone()), Some(pod.clone())),
                &k
            )
            .is_empty());
        // The owner going makes its dependents candidates.
        assert_eq!(
            g.apply(&ev(ds_key.clone(), None, Some(ds.clone())), &k),
            vec![pod_key.clone()]
        );
        assert_eq!(g.dangling(), vec![pod_key.clone()]);
        // The dependent going wakes its owner (a foreground deletion may finish).
        assert_eq!(
            g.apply(&ev(pod_key.clone(), None, Some(running)), &k),
            vec![ds_key.clone()]
        );
        assert!(g.dependents_of("u-ds").is_empty());
        assert!(!g.exists("u-p"));
    }

    #[test]
    fn a_same_named_successor_is_another_object() {
        let k = kinds();
        let mut g = Graph::default();
        let key = ObjectKey::new("pods", "default", "p");
        let old = obj("p", "u-1", json!([ds_ref("agent", "u-ds", false)]));
        let new = obj("p", "u-2", json!([]));
        g.apply(&ev(key.clone(), Some(old.clone()), None), &k);
        g.apply(&ev(key.clone(), Some(new), Some(old)), &k);
        assert!(!g.exists("u-1") && g.exists("u-2"));
        assert!(g.dependents_of("u-ds").is_empty());
    }

    #[test]
    fn owners_waiting_for_the_collector_are_queued() {
        let k = kinds();
        let mut g = Graph::default();
        let key = ObjectKey::new("configmaps", "default", "owner");
        let mut o = obj("owner", "u-o", json!([]));
        o["metadata"]["deletionTimestamp"] = json!("2025-01-01T00:00:00Z");
        o["metadata"]["finalizers"] = json!([FOREGROUND]);
        assert_eq!(g.apply(&ev(key.clone(), Some(o), None), &k), vec![key]);
    }

    #[test]
    fn dangling_references_are_stripped_by_uid() {
        let d = obj(
            "p",
            "u",
            json!([ds_ref("a", "u-a", true), ds_ref("b", "u-b", true)]),
        );
        let out = GarbageCollector::without_owners(&d, &["u-a"]);
        assert_eq!(
            out["metadata"]["ownerReferences"].as_array().unwrap().len(),
            1
        );
        assert_eq!(out["metadata"]["ownerReferences"][0]["uid"], "u-b");
        let none = GarbageCollector::without_owners(&d, &["u-a", "u-b"]);
        assert!(none["metadata"].get("ownerReferences").is_none());
    }
}
