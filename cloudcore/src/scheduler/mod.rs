//! The scheduler: places every unbound pod on a node, as Kubernetes' default scheduler does.
//!
//! - [`model`] parses nodes and pods once into what the filters and scores need;
//! - [`filter`] decides where a pod may go (node readiness, cordon, taints and tolerations,
//!   nodeSelector and required node affinity, resource fit) and words the refusal like
//!   Kubernetes;
//! - [`score`] ranks the feasible nodes (replica spread, PreferNoSchedule taints, least
//!   allocated, balanced allocation), ties to the first node by name;
//! - [`cache`] holds nodes and per-node allocated requests, updated from store events, so one
//!   placement is O(nodes);
//! - [`queue`] orders the pending pods and backs off the ones that fit nowhere;
//! - [`report`] writes the `PodScheduled` condition and `FailedScheduling` Events.
//!
//! The loop here is level-triggered (STYLE.md, kube-rs): the cache follows store events, a
//! lagged subscription or a timer (every [`RESYNC_PERIOD`]) rebuilds it from full listings. A
//! binding is a write of `spec.nodeName` with the pod's revision as precondition, so it never
//! overwrites a concurrent change; on conflict the pod is tried again with its new version.
//! Bindings are written concurrently (up to [`MAX_IN_FLIGHT`]) while the next pods are placed
//! against the cache, which counts a pod on its node as soon as it is chosen.
//!
//! Nodes that are not ready are never chosen, but nothing here moves a pod off a node
//! (DESIGN.md principle 4): placement is only for unbound pods.

pub mod cache;
pub mod filter;
pub mod model;
pub mod queue;
pub mod report;
pub mod score;

use crate::store::{Event, ObjectKey, Store, StoreError, Stored};
use cache::{pod_key, Cache};
use queue::{Attempt, Queue};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// How often the cache is rebuilt from full listings, whatever the events said.
pub const RESYNC_PERIOD: Duration = Duration::from_secs(60);
/// Binding and status writes in flight at once (the store batches their flushes).
pub const MAX_IN_FLIGHT: usize = 256;

/// How a write for one attempt ended.
#[derive(Debug)]
enum Outcome {
    /// The binding was written.
    Bound(Stored),
    /// The pod fits nowhere; carries the pod as written with its condition, if it was.
    Unschedulable(Option<Stored>),
    /// The write failed (conflict, pod gone, store error).
    Failed(StoreError),
}

/// The scheduler's state: cache, queue and the writes in flight.
pub struct Scheduler {
    store: Arc<dyn Store>,
    cache: Cache,
    queue: Queue,
    flights: JoinSet<(ObjectKey, Outcome)>,
    /// Revision the last resync listed; events up to it are already in the cache.
    synced: u64,
    bound: u64,
}

impl Scheduler {
    /// A scheduler over `store`; call [`Scheduler::resync`] (or [`run`]) to load it.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            cache: Cache::default(),
            queue: Queue::default(),
            flights: JoinSet::new(),
            synced: 0,
            bound: 0,
        }
    }

    /// Pods bound so far.
    pub fn bound(&self) -> u64 {
        self.bound
    }

    /// Pods waiting for a node (in any state).
    pub fn pending(&self) -> usize {
        self.queue.len()
    }

    /// Rebuilds cache and queue from full listings of nodes and pods.
    pub fn resync(&mut self) -> Result<(), StoreError> {
        let (nodes, nodes_rev) = self.store.list("nodes", None)?;
        let (pods, pods_rev) = self.store.list("pods", None)?;
        self.cache.resync(&nodes, &pods);
        let mut listed = std::collections::HashSet::with_capacity(pods.len());
        for p in pods {
            let key = pod_key(&p.value);
            listed.insert(key.clone());
            self.queue.upsert(&key, p);
        }
        for key in self.queue.keys() {
            if !listed.contains(&key) && !self.queue.in_flight(&key) {
                self.queue.remove(&key);
            }
        }
        // Something may have been missed: give every waiting pod another chance.
        self.queue.activate_waiting();
        self.synced = nodes_rev.min(pods_rev);
        debug!(
            nodes = self.cache.node_count(),
            pending = self.queue.len(),
            "scheduler resynced"
        );
        Ok(())
    }

    /// Applies one store event to cache and queue.
    pub fn apply(&mut self, ev: &Event) {
        if ev.revision <= self.synced {
            return;
        }
        match ev.key.resource.as_str() {
            "nodes" => {
                let changed = match &ev.value {
                    Some(v) => self.cache.set_node(ev.revision, Some(v)),
                    None => {
                        self.cache.remove_node(&ev.key.name);
                        false
                    }
                };
                if changed {
                    self.queue.activate_waiting();
                }
            }
            "pods" => {
                if self.cache.set_pod(&ev.key, ev.revision, ev.value.as_ref()) {
                    self.queue.activate_waiting();
                }
                match &ev.value {
                    Some(v) => self.queue.upsert(
                        &ev.key,
                        Stored {
                            revision: ev.revision,
                            value: v.clone(),
                        },
                    ),
                    None => self.queue.remove(&ev.key),
                }
            }
            _ => {}
        }
    }

    /// Places active pods against the cache and starts their writes, up to [`MAX_IN_FLIGHT`].
    pub fn schedule_active(&mut self) {
        while self.flights.len() < MAX_IN_FLIGHT {
            let Some(attempt) = self.queue.pop() else {
                return;
            };
            self.attempt(attempt);
        }
    }

    fn attempt(&mut self, Attempt { key, pod, info }: Attempt) {
        let store = self.store.clone();
        match self.cache.schedule(&info) {
            Ok(node) => {
                self.cache.assume(&key, &node, &info);
                let next = report::bound(&pod.value, &node);
                self.flights.spawn(async move {
                    let out = match store.update(&key, next, Some(pod.revision)).await {
                        Ok(s) => Outcome::Bound(s),
                        Err(e) => Outcome::Failed(e),
                    };
                    (key, out)
                });
            }
            Err(fit) => {
                let message = fit.to_string();
                self.flights.spawn(async move {
                    let written = match report::unschedulable(&pod.value, &message) {
                        Some(next) => match store.update(&key, next, Some(pod.revision)).await {
                            Ok(s) => Some(s),
                            Err(e) => return (key, Outcome::Failed(e)),
                        },
                        None => None,
                    };
                    let about = written.as_ref().map_or(&pod.value, |s| &s.value);
                    let what = crate::api::events::Occurrence {
                        component: report::COMPONENT,
                        kind: "Warning",
                        reason: "FailedScheduling",
                        message: &message,
                    };
                    if let Err(e) =
                        crate::api::events::record(store.as_ref(), about, "Pod", &what).await
                    {
                        warn!(pod = %key, error = %e, "could not record the FailedScheduling event");
                    }
                    (key, Outcome::Unschedulable(written))
                });
            }
        }
    }

    /// Takes in the result of one write.
    fn complete(&mut self, key: ObjectKey, outcome: Outcome) {
        let now = Instant::now();
        match outcome {
            Outcome::Bound(s) => {
                debug!(pod = %key, node = model::bound_node(&s.value).unwrap_or(""), "bound");
                self.bound += 1;
                self.cache.set_pod(&key, s.revision, Some(&s.value));
                self.queue.remove(&key);
            }
            Outcome::Unschedulable(written) => {
                self.cache.forget(&key);
                self.queue.unschedulable(&key, written, now);
            }
            Outcome::Failed(e) => {
                self.cache.forget(&key);
                match e {
                    StoreError::NotFound(_) => self.queue.remove(&key),
                    StoreError::Conflict { .. } => {
                        // Someone changed the pod: read it again (it may be bound already).
                        match self.store.get(&key) {
                            Ok(Some(s)) => {
                                self.cache.set_pod(&key, s.revision, Some(&s.value));
                                self.queue.upsert(&key, s);
                                self.queue.retry_later(&key, now);
                            }
                            Ok(None) => self.queue.remove(&key),
                            Err(_) => self.queue.retry_later(&key, now),
                        }
                    }
                    e => {
                        warn!(pod = %key, error = %e, "scheduling write failed; retrying");
                        self.queue.retry_later(&key, now);
                    }
                }
            }
        }
    }

    /// Schedules until no pod is active and no write is in flight (pods that fit nowhere are
    /// left waiting). For benchmarks and tests; the server uses [`run`].
    pub async fn drain(&mut self) {
        loop {
            self.schedule_active();
            match self.flights.join_next().await {
                Some(Ok((key, out))) => self.complete(key, out),
                Some(Err(e)) => warn!(error = %e, "a scheduling write task failed"),
                None => return,
            }
        }
    }
}

/// Runs the scheduler until the process ends.
pub async fn run(store: Arc<dyn Store>) {
    let mut events = store.subscribe();
    let mut s = Scheduler::new(store);
    let mut resync_at = Instant::now();
    info!("scheduler started");
    loop {
        if Instant::now() >= resync_at {
            // Events queued before the listing are already in it (or older than it).
            while !matches!(
                events.try_recv(),
                Err(TryRecvError::Empty | TryRecvError::Closed)
            ) {}
            if let Err(e) = s.resync() {
                warn!(error = %e, "scheduler resync failed; retrying");
                resync_at = Instant::now() + Duration::from_secs(1);
            } else {
                resync_at = Instant::now() + RESYNC_PERIOD;
            }
        }
        // Take in everything already announced before placing, so placements see it.
        loop {
            match events.try_recv() {
                Ok(ev) => s.apply(&ev),
                Err(TryRecvError::Lagged(_)) => resync_at = Instant::now(),
                Err(TryRecvError::Empty | TryRecvError::Closed) => break,
            }
        }
        let next_due = s.queue.activate_due(Instant::now());
        s.schedule_active();
        let wake = next_due.map_or(resync_at, |d| d.min(resync_at));
        tokio::select! {
            ev = events.recv() => match ev {
                Ok(ev) => s.apply(&ev),
                Err(RecvError::Lagged(_)) => resync_at = Instant::now(),
                Err(RecvError::Closed) => std::future::pending::<()>().await,
            },
            Some(done) = s.flights.join_next(), if !s.flights.is_empty() => match done {
                Ok((key, out)) => s.complete(key, out),
                Err(e) => warn!(error = %e, "a scheduling write task failed"),
            },
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SledStore;
    use serde_json::{json, Value};

    fn node(name: &str, labels: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels},
               "status": {"conditions": [{"type": "Ready", "status": "True"}],
                          "allocatable": {"cpu": "1", "memory": "1Gi", "pods": "10"}}})
    }

    fn pod(name: &str, spec: Value) -> Value {
        let mut p = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")},
            "spec": {"containers": [{"name": "c", "image": "x"}]}, "status": {"phase": "Pending"}});
        for (k, v) in spec.as_object().unwrap() {
            p["spec"][k] = v.clone();
        }
        p
    }

    fn condition(p: &Value) -> Value {
        p["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "PodScheduled").cloned())
            .unwrap_or(Value::Null)
    }

    #[tokio::test]
    async fn binds_with_conditions_and_reports_unschedulable_pods_with_one_counted_event() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(SledStore::open(dir.path(), crate::projection::shard).unwrap());
        for (n, zone) in [("a", "north"), ("b", "south")] {
            let key = ObjectKey::new("nodes", "", n);
            store
                .create(&key, node(n, json!({"zone": zone})))
                .await
                .unwrap();
        }
        let placed = pod("placed", json!({"nodeSelector": {"zone": "south"}}));
        let nowhere = pod("nowhere", json!({"nodeSelector": {"zone": "mars"}}));
        let hungry = pod(
            "hungry",
            json!({"containers": [{"name": "c", "image": "x",
            "resources": {"requests": {"cpu": "2"}}}]}),
        );
        for p in [&placed, &nowhere, &hungry] {
            store.create(&pod_key(p), p.clone()).await.unwrap();
        }
        let mut s = Scheduler::new(store.clone());
        s.resync().unwrap();
        s.drain().await;
        assert_eq!(s.bound(), 1);
        let get = |p: &Value| store.get(&pod_key(p)).unwrap().unwrap().value;
        let p = get(&placed);
        assert_eq!(p["spec"]["nodeName"], "b");
        assert_eq!(condition(&p)["status"], "True");
        let n = get(&nowhere);
        assert_eq!(condition(&n)["reason"], "Unschedulable");
        assert_eq!(
            condition(&n)["message"],
            "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector."
        );
        assert_eq!(
            condition(&get(&hungry))["message"],
            "0/2 nodes are available: 2 Insufficient cpu."
        );
        // A second attempt bumps the same event instead of adding one.
        s.queue.activate_waiting();
        s.drain().await;
        let (events, _) = store.list("events", Some("default")).unwrap();
        assert_eq!(events.len(), 2, "{events:?}");
        for e in &events {
            assert_eq!(e.value["reason"], "FailedScheduling");
            assert_eq!(e.value["type"], "Warning");
            assert_eq!(e.value["count"], 2);
            assert_eq!(e.value["involvedObject"]["kind"], "Pod");
        }
        // A binding never overwrites a concurrent change: the pod is re-read and re-placed.
        let late = pod("late", json!({}));
        let created = store.create(&pod_key(&late), late.clone()).await.unwrap();
        s.resync().unwrap();
        let mut changed = created.value.clone();
        changed["metadata"]["labels"] = json!({"touched": "yes"});
        store
            .update(&pod_key(&late), changed, Some(created.revision))
            .await
            .unwrap();
        s.drain().await;
        let l = get(&late);
        assert_eq!(l["metadata"]["labels"]["touched"], "yes", "{l}");
        assert_eq!(l["spec"]["nodeName"], "a", "{l}");
    }
}
