//! A shared in-memory cache of one resource, followed from the store's change broadcast
//! (client-go's shared informer with its indexers, reduced to what the workload controllers
//! read): the objects by namespace and name, with an index of objects by the uid of their
//! controller and of orphans (no controller) by namespace.
//!
//! Why: a ReplicaSet reconcile needs the pods it may own, and a Deployment reconcile the
//! ReplicaSets. Listing them from the store decodes every object of the namespace on every
//! reconcile, which made rolling out 1,000 Deployments O(n²) in JSON decoding (77 s on two
//! cores, see BENCHMARKS.md). From the cache a reconcile reads only its own dependents and the
//! namespace's orphans (the candidates for adoption), already decoded.
//!
//! **Read-your-writes.** A cache lags the store, and a controller that reads a lagging cache
//! right after creating pods would create them again (Kubernetes guards against that with
//! "expectations"). Here a reconcile first waits for [`Informer::synced`]: the cache has
//! applied every store event up to the store's current revision, so it holds at least every
//! write that completed before the reconcile began, the controller's own included. Events
//! arrive in revision order shortly after the write is durable, so the wait is short; when
//! the cache does not catch up within [`SYNC_TIMEOUT`] the reconcile fails with a transient
//! error and the runner retries it with back-off.
//!
//! **Level-triggered.** The cache follows a [`Feed`]: a full listing at start, at every resync
//! period and whenever the broadcast lagged (events were lost), then the events after the
//! listing's revision, so a lost event only delays the cache, never corrupts it.
//!
//! The cache hands out `Arc<Value>`s: readers share the stored JSON and decode only what
//! they use.

use super::feed::{Feed, FeedItem};
use super::ControllerError;
use crate::store::{Event, Store};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::watch;

#[cfg(test)]
mod tests;

/// How long [`Informer::synced`] waits for the cache to reach the store's revision.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a cache relists even when no event was lost.
pub const RESYNC: Duration = Duration::from_secs(300);
/// Delay before listing again after a failed listing.
const RELIST_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// One cached object and what it is indexed under.
#[derive(Debug)]
struct Entry {
    value: Arc<Value>,
    controller: Option<String>,
}

/// The cached objects and their indexes; always changed together under one lock.
#[derive(Debug, Default)]
struct Cache {
    /// Namespace → name → object.
    objects: HashMap<String, BTreeMap<String, Entry>>,
    /// Controller uid → (namespace, name) of the objects it controls.
    by_controller: HashMap<String, BTreeSet<(String, String)>>,
    /// Namespace → names of the objects without a controller.
    orphans: HashMap<String, BTreeSet<String>>,
}

/// The uid of the owner reference marked `controller: true`, read straight off the JSON (this
/// runs for every event of the resource).
fn controller_uid(obj: &Value) -> Option<String> {
    obj.pointer("/metadata/ownerReferences")?
        .as_array()?
        .iter()
        .find(|r| r.get("controller").and_then(Value::as_bool) == Some(true))
        .and_then(|r| r.get("uid")?.as_str())
        .map(str::to_string)
}

impl Cache {
    fn remove(&mut self, ns: &str, name: &str) {
        let Some(names) = self.objects.get_mut(ns) else {
            return;
        };
        let Some(old) = names.remove(name) else {
            return;
        };
        if names.is_empty() {
            self.objects.remove(ns);
        }
        match old.controller {
            Some(uid) => {
                if let Some(set) = self.by_controller.get_mut(&uid) {
                    set.remove(&(ns.to_string(), name.to_string()));
                    if set.is_empty() {
                        self.by_controller.remove(&uid);
                    }
                }
            }
            None => {
                if let Some(set) = self.orphans.get_mut(ns) {
                    set.remove(name);
                    if set.is_empty() {
                        self.orphans.remove(ns);
                    }
                }
            }
        }
    }

    fn insert(&mut self, ns: &str, name: &str, value: Value) {
        self.remove(ns, name);
        let controller = controller_uid(&value);
        match &controller {
            Some(uid) => {
                self.by_controller
                    .entry(uid.clone())
                    .or_default()
                    .insert((ns.to_string(), name.to_string()));
            }
            None => {
                self.orphans
                    .entry(ns.to_string())
                    .or_default()
                    .insert(name.to_string());
            }
        }
        self.objects.entry(ns.to_string()).or_default().insert(
            name.to_string(),
            Entry {
                value: Arc::new(value),
                controller,
            },
        );
    }

    fn get(&self, ns: &str, name: &str) -> Option<Arc<Value>> {
        self.objects.get(ns)?.get(name).map(|e| e.value.clone())
    }
}

/// The cache of one resource. Built with [`Informer::new`], filled by [`Informer::run`].
#[derive(Debug)]
pub struct Informer {
    resource: &'static str,
    cache: RwLock<Cache>,
    /// The store revision up to which every event has been applied.
    applied: watch::Sender<u64>,
}

impl Informer {
    /// An empty cache of `resource` (a storage resource name: `pods`, `apps/replicasets`).
    pub fn new(resource: &'static str) -> Self {
        Self {
            resource,
            cache: RwLock::new(Cache::default()),
            applied: watch::Sender::new(0),
        }
    }

    /// The resource this cache holds.
    pub fn resource(&self) -> &'static str {
        self.resource
    }

    /// The store revision the cache has caught up with.
    pub fn revision(&self) -> u64 {
        *self.applied.borrow()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Cache> {
        self.cache.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Cache> {
        self.cache.write().unwrap_or_else(|e| e.into_inner())
    }

    fn advance(&self, revision: u64) {
        self.applied.send_if_modified(|r| {
            let moved = revision > *r;
            *r = (*r).max(revision);
            moved
        });
    }

    /// Replaces the whole cache with a listing consistent with `revision`.
    pub fn replace(&self, objects: impl IntoIterator<Item = Value>, revision: u64) {
        let mut fresh = Cache::default();
        for obj in objects {
            let (ns, name) = ns_name(&obj);
            fresh.insert(&ns, &name, obj);
        }
        *self.write() = fresh;
        self.advance(revision);
    }

    /// Applies one store event. Events at or below the revision already applied (older than
    /// the last listing) are skipped; events of other resources only move the revision on, so
    /// that [`Informer::synced`] does not wait for a write this cache never sees.
    pub fn apply(&self, event: &Event) {
        if event.revision <= self.revision() {
            return;
        }
        if event.key.resource == self.resource {
            let mut cache = self.write();
            match &event.value {
                Some(v) => cache.insert(&event.key.namespace, &event.key.name, v.clone()),
                None => cache.remove(&event.key.namespace, &event.key.name),
            }
        }
        self.advance(event.revision);
    }

    /// Returns once the cache has applied every store event up to `revision` (pass the
    /// store's current revision at the start of a reconcile); fails with a transient error
    /// when that takes longer than [`SYNC_TIMEOUT`].
    pub async fn synced(&self, revision: u64) -> Result<(), ControllerError> {
        let mut rx = self.applied.subscribe();
        let caught_up = tokio::time::timeout(SYNC_TIMEOUT, async {
            rx.wait_for(|r| *r >= revision).await.is_ok()
        })
        .await;
        match caught_up {
            Ok(true) => Ok(()),
            Ok(false) | Err(_) => Err(ControllerError::CacheNotSynced {
                resource: self.resource,
                want: revision,
                have: self.revision(),
            }),
        }
    }

    /// One object, if cached.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<Value>> {
        self.read().get(namespace, name)
    }

    /// Every object of `namespace`, in name order.
    pub fn in_namespace(&self, namespace: &str) -> Vec<Arc<Value>> {
        self.read()
            .objects
            .get(namespace)
            .map(|names| names.values().map(|e| e.value.clone()).collect())
            .unwrap_or_default()
    }

    /// The objects whose controller (owner reference with `controller: true`) has `uid`.
    pub fn controlled_by(&self, uid: &str) -> Vec<Arc<Value>> {
        let cache = self.read();
        cache
            .by_controller
            .get(uid)
            .into_iter()
            .flatten()
            .filter_map(|(ns, name)| cache.get(ns, name))
            .collect()
    }

    /// As [`Informer::controlled_by`], decoded (an object that does not decode fails as
    /// [`ControllerError::Invalid`], naming it and the field).
    pub fn controlled_by_as<T: DeserializeOwned>(
        &self,
        uid: &str,
    ) -> Result<Vec<T>, ControllerError> {
        self.controlled_by(uid)
            .iter()
            .map(|v| super::decode::typed(v))
            .collect()
    }

    /// The objects of `namespace` without a controller.
    pub fn orphans(&self, namespace: &str) -> Vec<Arc<Value>> {
        let cache = self.read();
        cache
            .orphans
            .get(namespace)
            .into_iter()
            .flatten()
            .filter_map(|name| cache.get(namespace, name))
            .collect()
    }

    /// What an owner with `uid` in `namespace` claims from ([`super::claim::claim_all`]): the
    /// objects it controls and the namespace's orphans. Objects controlled by another owner
    /// are never claimed, so they are not handed out.
    pub fn claim_candidates(&self, namespace: &str, uid: &str) -> Vec<Value> {
        let mut out: Vec<Value> = self
            .controlled_by(uid)
            .iter()
            .map(|v| Value::clone(v))
            .collect();
        out.extend(self.orphans(namespace).iter().map(|v| Value::clone(v)));
        out
    }

    /// Follows the store until its broadcast closes: lists at every [`FeedItem::Resync`] and
    /// applies the events in between. `feed` must have been subscribed before the first
    /// listing (a new [`Feed`] starts with a resync), so that no write falls between them.
    pub async fn run(self: Arc<Self>, store: Arc<dyn Store>, mut feed: Feed) {
        while let Some(item) = feed.next().await {
            match item {
                FeedItem::Event(ev) => self.apply(&ev),
                FeedItem::Resync => match store.list(self.resource, None).await {
                    Ok((items, revision)) => {
                        self.replace(items.into_iter().map(|s| s.value), revision);
                        metrics::counter!("skerry_informer_relists_total",
                            "resource" => self.resource)
                        .increment(1);
                    }
                    Err(e) => {
                        tracing::warn!(resource = self.resource, error = %e,
                            "cannot list for the controller cache; trying again");
                        feed.resync_in(RELIST_AFTER_FAILURE);
                    }
                },
            }
        }
        tracing::info!(
            resource = self.resource,
            "store broadcast closed; cache stops"
        );
    }
}

fn ns_name(obj: &Value) -> (String, String) {
    let field = |f: &str| {
        obj.pointer(&format!("/metadata/{f}"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    (field("namespace"), field("name"))
}

/// The caches the workload controllers share: one informer per resource, one task each.
#[derive(Clone)]
pub struct Informers {
    store: Arc<dyn Store>,
    /// Pods (read by the ReplicaSet, DaemonSet, StatefulSet and Deployment controllers).
    pub pods: Arc<Informer>,
    /// ReplicaSets (read by the Deployment controller).
    pub replicasets: Arc<Informer>,
}

impl Informers {
    /// Starts following `store` (spawns one task per cache; they end when the store's
    /// broadcast closes).
    pub fn start(store: Arc<dyn Store>) -> Self {
        let informers = Self {
            store: store.clone(),
            pods: Arc::new(Informer::new("pods")),
            replicasets: Arc::new(Informer::new(super::replicaset::RESOURCE)),
        };
        for informer in [&informers.pods, &informers.replicasets] {
            let feed = Feed::new(store.subscribe(), RESYNC);
            tokio::spawn(informer.clone().run(store.clone(), feed));
        }
        informers
    }

    /// Waits until every cache holds every write that completed before this call (see the
    /// module doc).
    pub async fn synced(&self) -> Result<(), ControllerError> {
        let revision = self.store.revision();
        self.pods.synced(revision).await?;
        self.replicasets.synced(revision).await
    }
}
