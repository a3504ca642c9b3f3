//! The scheduler: places every unbound pod on a node, as Kubernetes' default scheduler does.
//!
//! - [`model`] parses nodes and pods once into what the filters and scores need (including the
//!   pod's priority);
//! - [`filter`] decides where a pod may go (node readiness, cordon, taints and tolerations,
//!   nodeSelector and required node affinity, resource fit) and words the refusal like
//!   Kubernetes;
//! - [`spread`] and [`interpod`] are the plugins that look at other pods: topology spread
//!   constraints, and pod affinity and anti-affinity (both filter and score);
//! - [`score`] ranks the feasible nodes (replica spread, PreferNoSchedule taints, least
//!   allocated, balanced allocation, preferred node affinity, inter-pod preferences, soft
//!   spread constraints), ties to the first node by name;
//! - [`cache`] holds nodes, per-node allocated requests and the placed pods indexed by label,
//!   updated from store events, so one placement is O(nodes) plus the pods a term may select;
//!   it also works out preemption;
//! - [`queue`] orders the pending pods (priority, then FIFO) and backs off the ones that fit
//!   nowhere;
//! - [`report`] writes the `PodScheduled` condition, `nominatedNodeName`, and the `Scheduled`,
//!   `FailedScheduling` and `Preempted` Events.
//!
//! **Preemption**: a pod that fits nowhere (and whose `preemptionPolicy` is not `Never`) looks
//! for a node where evicting pods of strictly lower priority makes it fit ([`Cache::preempt`]).
//! The victims are deleted as `DELETE` would (the pod kind's graceful-deletion rule, so the
//! edge stops them within their grace period), each gets a `Preempted` Event, and the preemptor
//! gets `status.nominatedNodeName`; the room is held for it until the victims are gone and it is
//! placed.
//!
//! Metrics: `skerry_scheduler_schedule_attempts_total{result=scheduled|unschedulable|error}`,
//! `skerry_scheduler_scheduling_duration_seconds{result}` (from the attempt to the end of its
//! writes), `skerry_scheduler_pending_pods`, `skerry_scheduler_preemption_victims_total`.
//!
//! The loop here is level-triggered (STYLE.md, kube-rs): it follows the store through a
//! [`Feed`], as the controllers' runner does: events update the cache and the queue, and a
//! lagged subscription or the period ([`RESYNC_PERIOD`]) rebuilds both from full listings. It
//! is not a per-key reconcile runner, as kube-scheduler is not a controller: pods are placed
//! one at a time, in the queue's priority order with its back-off, against a cache that
//! already counts the pods chosen but not yet bound (docs/decisions.md). Each turn takes in
//! everything already announced, then places the active pods, then waits for the next event,
//! a write's completion or the queue's next due time.
//! Every write goes through the API, as kube-scheduler's go through kube-apiserver: a binding
//! is a `create` of the pod's `binding` subresource with its uid and resourceVersion as
//! preconditions, so it never overwrites a concurrent change (on conflict the pod is tried
//! again with its new version); the `PodScheduled` condition and `nominatedNodeName` are
//! `/status` updates with the same precondition; preemption victims are deleted as a client's
//! `DELETE` would. A binding answers the pod as written (with its revision), which goes into
//! the cache without a second read.
//! Bindings are written concurrently (up to [`MAX_IN_FLIGHT`]) while the next pods are placed
//! against the cache, which counts a pod on its node as soon as it is chosen.
//!
//! Nodes that are not ready are never chosen, but nothing here moves a pod off a node
//! (DESIGN.md principle 4): placement is only for unbound pods.

pub mod cache;
pub mod filter;
pub mod interpod;
pub mod model;
pub mod queue;
pub mod report;
pub mod score;
pub mod spread;

use crate::api::client::{Client, Propagation};
use crate::api::events::EventType;
use crate::api::ApiError;
use crate::controllers::feed::{Feed, FeedItem};
use crate::store::{Event, ObjectKey, StoreError, Stored};
use cache::{pod_key, Cache, Preemption, Victim};
use queue::{Attempt, Queue};
use serde_json::Value;
use std::time::Duration;
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
    Failed(ApiError),
}

/// The scheduler's state: cache, queue and the writes in flight.
pub struct Scheduler {
    client: Client,
    cache: Cache,
    queue: Queue,
    flights: JoinSet<(ObjectKey, Outcome, Instant)>,
    /// Revision the last resync listed; events up to it are already in the cache.
    synced: u64,
    bound: u64,
}

impl Scheduler {
    /// A scheduler reading and writing through `client`; call [`Scheduler::resync`] (or
    /// [`run`]) to load it.
    pub fn new(client: Client) -> Self {
        Self {
            client,
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
    pub async fn resync(&mut self) -> Result<(), StoreError> {
        let store = &self.client.state().store;
        let (nodes, nodes_rev) = store.list("nodes", None).await?;
        let (pods, pods_rev) = store.list("pods", None).await?;
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
                            stale: false,
                        },
                    ),
                    None => self.queue.remove(&ev.key),
                }
            }
            _ => {}
        }
    }

    /// Takes in one item of the store feed: an event, or a resync (which, failing, asks the
    /// feed for another one in a second).
    async fn take_in(&mut self, item: FeedItem, feed: &mut Feed) {
        match item {
            FeedItem::Event(ev) => self.apply(&ev),
            FeedItem::Resync => {
                if let Err(e) = self.resync().await {
                    warn!(error = %e, "scheduler resync failed; retrying");
                    feed.resync_in(Duration::from_secs(1));
                }
            }
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
        let client = self.client.clone();
        let started = Instant::now();
        match self.cache.schedule(&info) {
            Ok(node) => {
                self.cache.assume(&key, &node, &info);
                self.flights.spawn(async move {
                    let out = match bind(&client, &key, &pod, &node).await {
                        Ok(s) => {
                            let message = report::scheduled_message(&s.value, &node);
                            if let Err(e) =
                                report::record(&client, &s.value, EventType::Normal, "Scheduled", &message)
                                    .await
                            {
                                warn!(pod = %key, error = %e, "could not record the Scheduled event");
                            }
                            Outcome::Bound(s)
                        }
                        Err(e) => Outcome::Failed(e),
                    };
                    (key, out, started)
                });
            }
            Err(fit) => {
                let message = fit.to_string();
                let preemption = self.cache.preempt(&key, &info);
                if let Some(p) = &preemption {
                    self.cache.nominate(&key, &p.node, &info);
                    metrics::counter!("skerry_scheduler_preemption_victims_total")
                        .increment(p.victims.len() as u64);
                    let victims: Vec<String> =
                        p.victims.iter().map(|v| v.key.to_string()).collect();
                    info!(pod = %key, node = %p.node, ?victims, "preempting lower-priority pods");
                }
                self.flights.spawn(async move {
                    let mut next = report::unschedulable(&pod.value, &message);
                    if let Some(Preemption { node, victims }) = &preemption {
                        let uid = pod.value.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or("");
                        for v in victims {
                            if let Err(e) = evict(&client, v, uid, node).await {
                                warn!(pod = %key, victim = %v.key, error = %e, "could not evict a preemption victim; the next attempt retries");
                            }
                        }
                        let nominated = report::nominated(next.as_ref().unwrap_or(&pod.value), node);
                        next = (nominated != pod.value).then_some(nominated);
                    }
                    let written = match next {
                        Some(next) => match write_status(&client, &key, next, pod.revision).await {
                            Ok(s) => Some(s),
                            Err(e) => return (key, Outcome::Failed(e), started),
                        },
                        None => None,
                    };
                    let about = written.as_ref().map_or(&pod.value, |s| &s.value);
                    if let Err(e) =
                        report::record_warning(&client, about, "FailedScheduling", &message)
                            .await
                    {
                        warn!(pod = %key, error = %e, "could not record the FailedScheduling event");
                    }
                    (key, Outcome::Unschedulable(written), started)
                });
            }
        }
        metrics::gauge!("skerry_scheduler_pending_pods").set(self.queue.len() as f64);
    }

    /// Takes in the result of one write.
    async fn complete(&mut self, key: ObjectKey, outcome: Outcome, started: Instant) {
        let now = Instant::now();
        let result = match &outcome {
            Outcome::Bound(_) => "scheduled",
            Outcome::Unschedulable(_) => "unschedulable",
            Outcome::Failed(_) => "error",
        };
        metrics::counter!("skerry_scheduler_schedule_attempts_total", "result" => result)
            .increment(1);
        metrics::histogram!("skerry_scheduler_scheduling_duration_seconds", "result" => result)
            .record(now.duration_since(started).as_secs_f64());
        match outcome {
            Outcome::Bound(s) => {
                debug!(pod = %key, node = model::bound_node(&s.value).unwrap_or(""), "bound");
                self.bound += 1;
                self.cache.set_pod(&key, s.revision, Some(&s.value));
                self.queue.remove(&key);
            }
            Outcome::Unschedulable(written) => {
                self.cache.forget(&key);
                if let Some(w) = &written {
                    self.cache.set_pod(&key, w.revision, Some(&w.value));
                }
                self.queue.unschedulable(&key, written, now);
            }
            Outcome::Failed(e) => {
                self.cache.forget(&key);
                match e {
                    ApiError::NotFound { .. } => self.queue.remove(&key),
                    ApiError::Conflict { .. } => {
                        // Someone changed the pod: read it again (it may be bound already).
                        match self.client.state().store.get(&key).await {
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
        metrics::gauge!("skerry_scheduler_pending_pods").set(self.queue.len() as f64);
    }

    /// Schedules until no pod is active and no write is in flight (pods that fit nowhere are
    /// left waiting). For benchmarks and tests; the server uses [`run`].
    pub async fn drain(&mut self) {
        loop {
            self.schedule_active();
            match self.flights.join_next().await {
                Some(Ok((key, out, started))) => self.complete(key, out, started).await,
                Some(Err(e)) => warn!(error = %e, "a scheduling write task failed"),
                None => return,
            }
        }
    }
}

/// Binds `pod` (as read at its revision) to `node` through the API; answers the pod as
/// written, which the cache takes in with its revision.
async fn bind(
    client: &Client,
    key: &ObjectKey,
    pod: &Stored,
    node: &str,
) -> Result<Stored, ApiError> {
    let uid = pod
        .value
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or("");
    client
        .bind(&key.namespace, &key.name, uid, pod.revision, node)
        .await
}

/// Writes `next` (the pod with its new scheduling status) as a `/status` update with the pod's
/// `revision` as precondition, and returns it as stored.
async fn write_status(
    client: &Client,
    key: &ObjectKey,
    mut next: Value,
    revision: u64,
) -> Result<Stored, ApiError> {
    next["metadata"]["resourceVersion"] = Value::String(revision.to_string());
    let written = client.update_status("pods", &key.namespace, next).await?;
    let revision = written
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|r| r.parse().ok())
        .ok_or_else(|| {
            ApiError::Internal(format!("{key} was written without a resourceVersion"))
        })?;
    Ok(Stored {
        revision,
        value: written,
        stale: false,
    })
}

/// Evicts a preemption victim exactly as a client's `DELETE` would (graceful deletion, with
/// the victim's uid as precondition so that a new pod of the same name is left alone), then
/// records the `Preempted` Event on it. A victim already gone is not an error.
async fn evict(
    client: &Client,
    victim: &Victim,
    preemptor_uid: &str,
    node: &str,
) -> Result<(), ApiError> {
    let key = &victim.key;
    let Some(current) = client.get("pods", &key.namespace, &key.name).await? else {
        return Ok(());
    };
    let deleted = client
        .delete(
            "pods",
            &key.namespace,
            &key.name,
            Propagation::Background,
            Some(&victim.uid),
        )
        .await;
    match deleted {
        Ok(()) => {}
        Err(ApiError::NotFound { .. } | ApiError::Conflict { .. }) => return Ok(()),
        Err(e) => return Err(e),
    }
    let message = report::preempted_message(preemptor_uid, node);
    report::record(client, &current, EventType::Normal, "Preempted", &message).await?;
    Ok(())
}

/// Runs the scheduler until the process ends.
pub async fn run(client: Client) {
    let mut feed = Feed::new(client.state().store.subscribe(), RESYNC_PERIOD);
    let mut s = Scheduler::new(client);
    info!("scheduler started");
    loop {
        // Take in everything already announced before placing, so placements see it.
        while let Some(item) = feed.try_next() {
            s.take_in(item, &mut feed).await;
        }
        let next_due = s.queue.activate_due(Instant::now());
        s.schedule_active();
        tokio::select! {
            item = feed.next() => match item {
                Some(item) => s.take_in(item, &mut feed).await,
                None => std::future::pending::<()>().await,
            },
            Some(done) = s.flights.join_next(), if !s.flights.is_empty() => match done {
                Ok((key, out, started)) => s.complete(key, out, started).await,
                Err(e) => warn!(error = %e, "a scheduling write task failed"),
            },
            _ = tokio::time::sleep_until(next_due.unwrap_or_else(Instant::now)), if next_due.is_some() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{SledStore, Store};
    use serde_json::{json, Value};
    use std::sync::Arc;

    /// A client over `store`, as the server gives the scheduler.
    fn client(store: &Arc<dyn Store>) -> Client {
        Client::new(crate::api::ApiState::with_watch_history(
            store.clone(),
            Arc::new(String::new),
            crate::api::history::DEFAULT_CAPACITY,
        ))
    }

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
        crate::api::namespaces::ensure_builtin(store.as_ref())
            .await
            .unwrap();
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
        let mut s = Scheduler::new(client(&store));
        s.resync().await.unwrap();
        s.drain().await;
        assert_eq!(s.bound(), 1);
        let get = async |p: &Value| store.get(&pod_key(p)).await.unwrap().unwrap().value;
        let p = get(&placed).await;
        assert_eq!(p["spec"]["nodeName"], "b");
        assert_eq!(condition(&p)["status"], "True");
        let n = get(&nowhere).await;
        assert_eq!(condition(&n)["reason"], "Unschedulable");
        assert_eq!(
            condition(&n)["message"],
            "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector."
        );
        assert_eq!(
            condition(&get(&hungry).await)["message"],
            "0/2 nodes are available: 2 Insufficient cpu."
        );
        // A second attempt bumps the same event instead of adding one.
        s.queue.activate_waiting();
        s.drain().await;
        let (events, _) = store.list("events", Some("default")).await.unwrap();
        let (failed, scheduled): (Vec<_>, Vec<_>) = events
            .iter()
            .partition(|e| e.value["reason"] == "FailedScheduling");
        assert_eq!(failed.len(), 2, "{events:?}");
        assert_eq!(
            scheduled.len(),
            1,
            "one Scheduled event for the bound pod: {events:?}"
        );
        assert_eq!(scheduled[0].value["reason"], "Scheduled");
        for e in &failed {
            assert_eq!(e.value["reason"], "FailedScheduling");
            assert_eq!(e.value["type"], "Warning");
            assert_eq!(e.value["count"], 2);
            assert_eq!(e.value["involvedObject"]["kind"], "Pod");
        }
        // A binding never overwrites a concurrent change: the pod is re-read and re-placed.
        let late = pod("late", json!({}));
        let created = store.create(&pod_key(&late), late.clone()).await.unwrap();
        s.resync().await.unwrap();
        let mut changed = created.value.clone();
        changed["metadata"]["labels"] = json!({"touched": "yes"});
        store
            .update(&pod_key(&late), changed, Some(created.revision))
            .await
            .unwrap();
        s.drain().await;
        let l = get(&late).await;
        assert_eq!(l["metadata"]["labels"]["touched"], "yes", "{l}");
        assert_eq!(l["spec"]["nodeName"], "a", "{l}");
    }

    /// The running loop: what it lists at start is placed, and so is what events announce
    /// later (a pod after its node, and a pod waiting for a node that comes).
    #[tokio::test]
    async fn run_places_listed_pods_and_follows_events() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(SledStore::open(dir.path(), crate::projection::shard).unwrap());
        store
            .create(&ObjectKey::new("nodes", "", "a"), node("a", json!({})))
            .await
            .unwrap();
        let early = pod("early", json!({}));
        store.create(&pod_key(&early), early.clone()).await.unwrap();
        let task = tokio::spawn(run(client(&store)));
        let bound_to = async |p: &Value| -> String {
            for _ in 0..500 {
                let v = store.get(&pod_key(p)).await.unwrap().unwrap().value;
                if let Some(n) = v["spec"]["nodeName"].as_str() {
                    return n.to_string();
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("{} was never bound", p["metadata"]["name"]);
        };
        assert_eq!(bound_to(&early).await, "a");
        let late = pod("late", json!({}));
        store.create(&pod_key(&late), late.clone()).await.unwrap();
        assert_eq!(bound_to(&late).await, "a");
        let waiting = pod("waiting", json!({"nodeSelector": {"zone": "new"}}));
        store
            .create(&pod_key(&waiting), waiting.clone())
            .await
            .unwrap();
        store
            .create(
                &ObjectKey::new("nodes", "", "b"),
                node("b", json!({"zone": "new"})),
            )
            .await
            .unwrap();
        assert_eq!(bound_to(&waiting).await, "b");
        task.abort();
    }

    #[tokio::test]
    async fn preemption_evicts_gracefully_records_events_and_nominates_the_preemptor() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(SledStore::open(dir.path(), crate::projection::shard).unwrap());
        crate::api::namespaces::ensure_builtin(store.as_ref())
            .await
            .unwrap();
        store
            .create(&ObjectKey::new("nodes", "", "a"), node("a", json!({})))
            .await
            .unwrap();
        let full = |name: &str, extra: Value| {
            let mut p = pod(
                name,
                json!({"containers": [{"name": "c", "image": "x", "resources": {"requests": {"cpu": "1"}}}]}),
            );
            for (k, v) in extra.as_object().unwrap() {
                p["spec"][k] = v.clone();
            }
            p
        };
        let low = full("low", json!({}));
        store.create(&pod_key(&low), low.clone()).await.unwrap();
        let mut s = Scheduler::new(client(&store));
        s.resync().await.unwrap();
        s.drain().await;
        let get = async |p: &Value| store.get(&pod_key(p)).await.unwrap().unwrap().value;
        assert_eq!(get(&low).await["spec"]["nodeName"], "a");
        let events = async |name: &str| -> Vec<Value> {
            let (all, _) = store.list("events", Some("default")).await.unwrap();
            all.into_iter()
                .map(|e| e.value)
                .filter(|e| e["involvedObject"]["name"] == name)
                .collect()
        };
        let scheduled = events("low").await;
        assert_eq!(scheduled.len(), 1);
        assert_eq!(scheduled[0]["reason"], "Scheduled");
        assert_eq!(scheduled[0]["type"], "Normal");
        assert_eq!(
            scheduled[0]["message"],
            "Successfully assigned default/low to a"
        );

        let high = full("high", json!({"priorityClassName": "system-node-critical"}));
        let never = full(
            "never",
            json!({"priority": 5000, "preemptionPolicy": "Never"}),
        );
        for p in [&never, &high] {
            store.create(&pod_key(p), p.clone()).await.unwrap();
        }
        s.resync().await.unwrap();
        s.drain().await;
        // The victim is terminating (graceful deletion, as DELETE does) and told why.
        let victim = get(&low).await;
        assert!(
            victim["metadata"]["deletionTimestamp"].is_string(),
            "{victim}"
        );
        assert_eq!(victim["metadata"]["deletionGracePeriodSeconds"], 30);
        let preempted: Vec<Value> = events("low")
            .await
            .into_iter()
            .filter(|e| e["reason"] == "Preempted")
            .collect();
        assert_eq!(preempted.len(), 1, "{preempted:?}");
        assert_eq!(
            preempted[0]["message"],
            "Preempted by pod uid-high on node a"
        );
        let h = get(&high).await;
        assert_eq!(h["status"]["nominatedNodeName"], "a", "{h}");
        assert!(h["spec"]["nodeName"].is_null());
        let n = get(&never).await;
        assert!(n["status"].get("nominatedNodeName").is_none(), "{n}");

        // The victim goes: the preemptor is placed, ahead of the other (lower) pending pod.
        store.delete(&pod_key(&low), None).await.unwrap();
        s.resync().await.unwrap();
        s.drain().await;
        let h = get(&high).await;
        assert_eq!(h["spec"]["nodeName"], "a");
        assert!(h["status"].get("nominatedNodeName").is_none(), "{h}");
        assert!(get(&never).await["spec"]["nodeName"].is_null());
    }
}
