//! The reconciler: reads one node and its pods, applies [`decide`], writes the result through
//! the in-process API client, and says when to come back.
//!
//! What it remembers between reconciles lives behind mutexes, since the runner reconciles
//! different nodes at the same time (never one node twice at once), and no lock is held across
//! an `await`:
//! - the **heartbeat observations** (`Heartbeats`): when this controller saw each node's
//!   `lastHeartbeatTime` change, by its own clock. They are the one thing a restart loses,
//!   which gives every node a fresh grace period, as in Kubernetes.
//! - the **health** it last found for each node: for the `NodeNotReady` event on a change, for
//!   restoring pods' readiness when a node is back, to tell which pod events matter, and for
//!   the unreachable-nodes gauge.
//! - an **index of pods by node** (`PodIndex`), kept from store events and rebuilt from a
//!   listing at a resync, so that a reconcile reads the pods of its node only rather than
//!   listing every pod of the cluster once per node. (The API's `spec.nodeName` field selector
//!   would not help: it filters a full listing.) The rebuild, a listing of every pod, is done
//!   at the first resync and then only at resyncs that find a node not `Ready`, the only time
//!   pods are read: with every node healthy, as usual, a resync costs a listing of nodes only.
//!   An event missed meanwhile costs at most one resync period once pods matter.

use super::decide::{
    decide, health_of, heartbeat_of, marked_not_ready, node_update, restored_ready, status_update,
    taints_update, text, Health, PodAction, PodRef,
};
use super::{Config, COMPONENT, EVICTION_REASON};
use crate::api::client::{Client, Propagation};
use crate::api::events::{self, EventType};
use crate::api::ApiError;
use crate::clock::Clock;
use crate::controllers::runner::{backoff, ErrorAction, Reconciler, Requeue};
use crate::controllers::ControllerError;
use crate::store::{Event, ObjectKey};
use async_trait::async_trait;
use serde_json::Value;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tracing::{debug, info, warn};

const NODES: &str = "nodes";
const PODS: &str = "pods";

fn node_key(name: &str) -> ObjectKey {
    ObjectKey::new(NODES, "", name)
}

/// When this controller last saw each node's heartbeat change, by its own clock.
#[derive(Debug, Default)]
pub(super) struct Heartbeats {
    seen: HashMap<String, (String, u64)>,
}

impl Heartbeats {
    /// The probe time of `node` (named `name`) at `now_ms`: when its current heartbeat was first
    /// seen (now, if it is new).
    pub(super) fn probe(&mut self, name: &str, node: &Value, now_ms: u64) -> u64 {
        let hb = heartbeat_of(node);
        match self.seen.get(name) {
            Some((seen, at)) if seen == hb => *at,
            _ => {
                self.seen.insert(name.to_string(), (hb.to_string(), now_ms));
                now_ms
            }
        }
    }
}

/// The pods bound to each node, by key. Built from a full listing at each resync and kept up
/// to date from store events in between; it only says where to look: a reconcile reads each
/// pod fresh and checks its `spec.nodeName` again, so a stale entry costs one read.
#[derive(Debug, Default)]
pub(super) struct PodIndex {
    node_of: HashMap<ObjectKey, String>,
    on_node: HashMap<String, BTreeSet<ObjectKey>>,
    /// Whether it was ever built from a listing (events alone miss the pods from before).
    built: bool,
}

impl PodIndex {
    /// Records that pod `key` is bound to `node` (or to none, or gone, with `None` or "").
    fn set(&mut self, key: &ObjectKey, node: Option<&str>) {
        let node = node.filter(|n| !n.is_empty());
        if self.node_of.get(key).map(String::as_str) == node {
            return;
        }
        if let Some(old) = self.node_of.remove(key) {
            if let Some(keys) = self.on_node.get_mut(&old) {
                keys.remove(key);
                if keys.is_empty() {
                    self.on_node.remove(&old);
                }
            }
        }
        if let Some(node) = node {
            self.node_of.insert(key.clone(), node.to_string());
            self.on_node
                .entry(node.to_string())
                .or_default()
                .insert(key.clone());
        }
    }

    /// Follows a store event about a pod.
    fn observe(&mut self, ev: &Event) {
        let node = ev.value.as_ref().map(|v| text(v, "/spec/nodeName"));
        self.set(&ev.key, node);
    }

    /// Replaces the whole index with the bindings of `pods`.
    fn replace_all(&mut self, pods: &[Value]) {
        *self = Self {
            built: true,
            ..Self::default()
        };
        for p in pods {
            let key = ObjectKey::new(
                PODS,
                text(p, "/metadata/namespace"),
                text(p, "/metadata/name"),
            );
            self.set(&key, Some(text(p, "/spec/nodeName")));
        }
    }

    /// The pods bound to `node`.
    fn on(&self, node: &str) -> Vec<ObjectKey> {
        self.on_node
            .get(node)
            .map(|keys| keys.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// What the controller remembers about nodes between reconciles (see the module doc).
#[derive(Debug, Default)]
struct Memory {
    heartbeats: Heartbeats,
    health: HashMap<String, Health>,
}

impl Memory {
    fn forget(&mut self, name: &str) {
        self.heartbeats.seen.remove(name);
        self.health.remove(name);
    }

    fn retain(&mut self, names: &HashSet<String>) {
        self.heartbeats.seen.retain(|n, _| names.contains(n));
        self.health.retain(|n, _| names.contains(n));
    }

    fn unreachable(&self) -> usize {
        self.health
            .values()
            .filter(|h| **h == Health::Unreachable)
            .count()
    }

    /// Sets the gauge from the memory it describes; called with the lock held, so that of two
    /// concurrent reconciles the later change is the one the gauge shows.
    fn publish_gauge(&self) {
        metrics::gauge!("skerry_node_lifecycle_unreachable_nodes").set(self.unreachable() as f64);
    }
}

/// The node lifecycle controller, as a [`Reconciler`] keyed by node (`nodes//<name>`).
pub struct NodeLifecycleController {
    client: Client,
    clock: Arc<dyn Clock>,
    grace: Duration,
    memory: Mutex<Memory>,
    pods: Mutex<PodIndex>,
    /// When the hub last heard each node on its link: a sign of life as good as a heartbeat
    /// (Kubernetes' node Lease), so that a node whose status is unchanged need not report it.
    liveness: crate::liveness::Liveness,
}

impl NodeLifecycleController {
    /// A controller writing through `client`, with `cfg`'s grace period, keeping time with
    /// `clock` (the runner's resync, `cfg.monitor_period`, is the caller's to set).
    pub fn new(client: Client, cfg: Config, clock: Arc<dyn Clock>) -> Self {
        Self {
            client,
            clock,
            grace: cfg.grace_period,
            memory: Mutex::new(Memory::default()),
            pods: Mutex::new(PodIndex::default()),
            liveness: crate::liveness::Liveness::new(),
        }
    }

    /// The controller, taking `liveness` as a sign of life beside the heartbeats.
    pub fn with_liveness(mut self, liveness: crate::liveness::Liveness) -> Self {
        self.liveness = liveness;
        self
    }

    /// When `node` last showed a sign of life, by this controller's reckoning: a heartbeat it
    /// saw change, or a packet the hub received on the node's link, whichever is later.
    fn probe(&self, mem: &mut Memory, name: &str, node: &Value, now_ms: u64) -> u64 {
        let seen = mem.heartbeats.probe(name, node, now_ms);
        // A time ahead of this clock (the hub reads the same system clock; only a test's
        // manual clock can lag it) counts as now.
        let heard = self.liveness.last_heard(name).map(|t| t.min(now_ms));
        seen.max(heard.unwrap_or(0))
    }

    /// How many nodes the controller last found unreachable (what the gauge shows).
    pub fn unreachable_nodes(&self) -> usize {
        self.memory().unreachable()
    }

    fn memory(&self) -> MutexGuard<'_, Memory> {
        // A panic while holding the lock leaves observations that are at worst a little old:
        // a heartbeat seen late counts from later, which only delays a verdict.
        self.memory.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn pods(&self) -> MutexGuard<'_, PodIndex> {
        // A half-updated index only sends a reconcile to read a pod it then ignores, and the
        // next resync rebuilds it.
        self.pods.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn grace_ms(&self) -> u64 {
        u64::try_from(self.grace.as_millis()).unwrap_or(u64::MAX)
    }

    fn forget(&self, name: &str) {
        let mut mem = self.memory();
        mem.forget(name);
        mem.publish_gauge();
    }

    /// Writes what [`node_update`] decides for `node`, if anything: the conditions through
    /// `/status`, then the taints through the main resource, each decided again on the value
    /// it writes over (ingest may write a fresh heartbeat in between; it then counts from now,
    /// and the taints follow the conditions as they are when written). Returns the node as it
    /// now is, `None` if it is gone.
    async fn write_node(
        &self,
        name: &str,
        node: Value,
        now: u64,
        probe: u64,
    ) -> Result<Option<Value>, ControllerError> {
        let grace = self.grace_ms();
        if node_update(&node, now, probe, grace).is_none() {
            return Ok(Some(node));
        }
        let seen = heartbeat_of(&node).to_string();
        let probe_of = |cur: &Value| {
            if heartbeat_of(cur) == seen {
                probe
            } else {
                now
            }
        };
        let status = self
            .client
            .update_status_with(NODES, "", name, |cur| {
                status_update(cur, now, probe_of(cur), grace)
            })
            .await;
        match status {
            Ok(Some(_)) => info!(node = name, "node conditions set to Unknown"),
            Ok(None) => {}
            Err(ApiError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        match self
            .client
            .update_with(NODES, "", name, |cur| taints_update(cur, now))
            .await
        {
            Ok(Some(written)) => {
                info!(node = name, "node lifecycle taints updated");
                Ok(Some(written))
            }
            Ok(None) => Ok(self.client.get(NODES, "", name).await?),
            Err(ApiError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The pods currently bound to `node`, read one by one from what the index points at.
    pub(super) async fn pods_on(&self, node: &str) -> Result<Vec<Value>, ControllerError> {
        let keys = self.pods().on(node);
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some(pod) = self.client.get(PODS, &key.namespace, &key.name).await? {
                if text(&pod, "/spec/nodeName") == node {
                    out.push(pod);
                }
            }
        }
        Ok(out)
    }

    /// Restores the readiness this controller took from the pods of `node` (now Ready again).
    async fn restore_pods(&self, node: &str) -> Result<(), ControllerError> {
        let now = self.clock.now_rfc3339();
        let marked: Vec<Value> = self
            .pods_on(node)
            .await?
            .into_iter()
            .filter(|p| restored_ready(p, "").is_some())
            .collect();
        for pod in marked {
            let (ns, name) = (
                text(&pod, "/metadata/namespace"),
                text(&pod, "/metadata/name"),
            );
            match self
                .client
                .update_status_with(PODS, ns, name, |cur| {
                    (text(cur, "/spec/nodeName") == node)
                        .then(|| restored_ready(cur, &now))
                        .flatten()
                })
                .await
            {
                Ok(Some(_)) => {
                    info!(pod = %format!("{ns}/{name}"), "pod readiness restored from its last report")
                }
                Ok(None) | Err(ApiError::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    async fn mark_not_ready(&self, pod: &PodRef, node: &str) -> Result<(), ControllerError> {
        let now = self.clock.now_rfc3339();
        let res = self
            .client
            .update_status_with(PODS, &pod.namespace, &pod.name, |cur| {
                marked_not_ready(cur, &pod.uid, node, &now)
            })
            .await;
        match res {
            Ok(Some(written)) => {
                info!(pod = %format!("{}/{}", pod.namespace, pod.name), "pod marked not ready");
                self.record(
                    &written,
                    EventType::Warning,
                    "NodeNotReady",
                    "Node is not ready",
                )
                .await;
                Ok(())
            }
            Ok(None) | Err(ApiError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn evict(
        &self,
        pod: &PodRef,
        taint: &str,
        current: &Value,
    ) -> Result<(), ControllerError> {
        let full = format!("{}/{}", pod.namespace, pod.name);
        let res = self
            .client
            .delete(
                PODS,
                &pod.namespace,
                &pod.name,
                Propagation::Background,
                Some(&pod.uid),
            )
            .await;
        match res {
            Ok(()) => {
                metrics::counter!("skerry_node_lifecycle_evictions_total").increment(1);
                info!(pod = %full, taint, "toleration ran out; pod evicted");
                self.record(
                    current,
                    EventType::Normal,
                    EVICTION_REASON,
                    &format!("Marking for deletion Pod {full}"),
                )
                .await;
                Ok(())
            }
            Err(ApiError::NotFound { .. } | ApiError::Conflict { .. }) => {
                debug!(pod = %full, "pod gone or replaced before its eviction");
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn record(&self, about: &Value, event_type: EventType, reason: &str, msg: &str) {
        events::record_best_effort(&self.client, about, event_type, reason, msg, COMPONENT).await;
    }
}

#[async_trait]
impl Reconciler for NodeLifecycleController {
    fn name(&self) -> &'static str {
        "node-lifecycle"
    }

    /// The node itself for a node event; for a pod event, the pod's node when that node is not
    /// `Ready` (only then do its pods matter). Every pod event also updates the pod index.
    async fn keys_for_event(&self, ev: &Event) -> Vec<ObjectKey> {
        match ev.key.resource.as_str() {
            NODES => {
                if ev.value.is_none() {
                    // Forgotten now for the gauge; the reconcile this key gets finds the node
                    // gone and forgets it again, after any reconcile still running for it.
                    self.forget(&ev.key.name);
                }
                vec![ev.key.clone()]
            }
            PODS => {
                self.pods().observe(ev);
                let mem = self.memory();
                [ev.value.as_ref(), ev.previous.as_ref()]
                    .into_iter()
                    .flatten()
                    .map(|p| text(p, "/spec/nodeName"))
                    .find(|n| mem.health.get(*n).is_some_and(|h| *h != Health::Ready))
                    .map(|n| vec![node_key(n)])
                    .unwrap_or_default()
            }
            _ => Vec::new(),
        }
    }

    /// Every node; also drops what is remembered about nodes that are gone and rebuilds the
    /// pod index when pods matter (see the module doc), so a missed event costs at most one
    /// resync period.
    async fn all_keys(&self) -> Vec<ObjectKey> {
        // One lock at a time: the index's guard is gone before the memory's is taken.
        let built = self.pods().built;
        let rebuild = !built || self.memory().health.values().any(|h| *h != Health::Ready);
        if rebuild {
            if let Some(pods) = self.client.list_for_resync(PODS).await {
                self.pods().replace_all(&pods);
            }
        }
        let Some(nodes) = self.client.list_for_resync(NODES).await else {
            return Vec::new();
        };
        let names: HashSet<String> = nodes
            .iter()
            .map(|n| text(n, "/metadata/name").to_string())
            .collect();
        {
            let mut mem = self.memory();
            mem.retain(&names);
            mem.publish_gauge();
        }
        names.iter().map(|n| node_key(n)).collect()
    }

    async fn reconcile(&self, key: &ObjectKey) -> Result<Requeue, ControllerError> {
        let name = key.name.as_str();
        let Some(node) = self.client.get(NODES, "", name).await? else {
            self.forget(name);
            return Ok(Requeue::No);
        };
        let now = self.clock.now_ms();
        let grace = self.grace_ms();
        let probe = self.probe(&mut self.memory(), name, &node, now);
        let Some(node) = self.write_node(name, node, now, probe).await? else {
            self.forget(name);
            return Ok(Requeue::No);
        };
        let health = health_of(&node);
        let (probe, previous) = {
            let mut mem = self.memory();
            let probe = self.probe(&mut mem, name, &node, now);
            let previous = mem.health.insert(name.to_string(), health);
            mem.publish_gauge();
            (probe, previous)
        };
        if previous != Some(health) {
            info!(node = name, ?previous, ?health, "node health changed");
        }
        if previous == Some(Health::Ready) && health != Health::Ready {
            self.record(
                &node,
                EventType::Normal,
                "NodeNotReady",
                &format!("Node {name} status is now: NodeNotReady"),
            )
            .await;
        }
        if health == Health::Ready && previous != Some(Health::Ready) {
            if let Err(e) = self.restore_pods(name).await {
                // Not Ready as far as the next reconcile knows, so that it restores them.
                let mut mem = self.memory();
                match previous {
                    Some(h) => mem.health.insert(name.to_string(), h),
                    None => mem.health.remove(name),
                };
                mem.publish_gauge();
                return Err(e);
            }
        }
        let bound = if health == Health::Ready {
            Vec::new()
        } else {
            self.pods_on(name).await?
        };
        let refs: Vec<&Value> = bound.iter().collect();
        let decision = decide(&node, &refs, now, probe, grace);
        // Act on every pod even if one fails; the first failure is retried as the whole key.
        let mut failed: Option<ControllerError> = None;
        for action in decision.pods {
            let result = match action {
                PodAction::MarkNotReady(r) => self.mark_not_ready(&r, name).await,
                PodAction::Evict { pod: r, taint } => {
                    match bound.iter().find(|p| text(p, "/metadata/uid") == r.uid) {
                        Some(pod) => self.evict(&r, &taint, pod).await,
                        None => Ok(()),
                    }
                }
            };
            if let Err(e) = result {
                warn!(node = name, error = %e, "cannot act on a pod of the node; retrying");
                failed.get_or_insert(e);
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        Ok(match decision.wake_at_ms {
            Some(at) => Requeue::After(Duration::from_millis(at.saturating_sub(now).max(1))),
            None => Requeue::No,
        })
    }

    /// Always a retry with backoff, never parked: a node's grace period and its pods'
    /// evictions must still be decided while one of its pods cannot be written, and a parked
    /// key would wait for an event a silent node never sends.
    fn error_policy(
        &self,
        _key: &ObjectKey,
        _error: &ControllerError,
        failures: u32,
    ) -> ErrorAction {
        ErrorAction::Retry(backoff(failures))
    }
}
