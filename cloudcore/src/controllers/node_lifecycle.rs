//! The node lifecycle controller: Kubernetes' node-lifecycle-controller semantics, adapted for
//! edge nodes that run on their own while their link is down.
//!
//! **Health.** Edge nodes prove they are alive with the heartbeats they publish over MQTT:
//! [`crate::ingest`] writes each one into the Node's `Ready` condition (`lastHeartbeatTime`).
//! The QUIC session to the hub does not count: a node whose status reaches the cloud is running,
//! and a node cut off from the hub alone keeps running its pods. Like Kubernetes, the controller
//! measures silence with its own clock — from when *it* saw `lastHeartbeatTime` change — not by
//! comparing the edge's timestamp with the cloud's, so an edge whose clock is off (no RTC, no NTP
//! while offline) is not declared dead for it. After a cloudcore restart every node gets a fresh
//! grace period, as in Kubernetes; what has already been decided (conditions, taints and their
//! `timeAdded`) is in the store and stays.
//!
//! When a node has been silent for longer than the grace period (`--node-monitor-grace-period`,
//! 40 s by default as Kubernetes' `node-monitor-grace-period`), every condition it has is set to
//! `Unknown` (reason [`NODE_STATUS_UNKNOWN`]) and it gets the [`TAINT_UNREACHABLE`] taints
//! (`NoSchedule`, and `NoExecute` with `timeAdded`). A node that reports `Ready=False` gets the
//! [`TAINT_NOT_READY`] taints instead. A node that reports `Ready=True` again loses them: the
//! edge's fresh report replaces the controller's `Unknown` (ingest rewrites the `Ready` condition
//! and drops the other conditions this controller marked `Unknown`, which the edge does not
//! report). Both write with optimistic concurrency and each decides on the value it writes over,
//! so neither clobbers the other.
//!
//! **Pods.** Pods on a node that is not `Ready` get their `Ready` condition set to `False` (as
//! Kubernetes' `MarkPodsNotReady`, with a `NodeNotReady` Warning event), but they are **never
//! deleted or recreated merely because their node is unreachable**: an edge node runs offline
//! by design (DESIGN.md, principle 4). This is where Skerry departs from Kubernetes, whose
//! `DefaultTolerationSeconds` admission plugin gives every pod 300 s tolerations of both taints
//! and whose taint manager evicts pods that do not tolerate a `NoExecute` taint at once. Skerry
//! adds no default tolerations, and a pod with no toleration matching the taint stays forever. A
//! pod is evicted only when it carries a matching `NoExecute` toleration with a finite
//! `tolerationSeconds`, once that time, counted from the taint's `timeAdded`, runs out (so a
//! cloudcore restart does not reset the timers). Eviction is the API's ordinary graceful delete
//! (a `deletionTimestamp`; the edge stops the pod when it is back), with a
//! `TaintManagerEviction` event. Only the two lifecycle taints are acted on; `NoExecute` taints
//! an admin adds are left to a future taint manager.
//!
//! **Loop.** Level-triggered: a pass over every node each `--node-monitor-period`, at the next
//! deadline (a grace period or an eviction running out), and a pass over just the affected node
//! when the store reports a change to a node, or to a pod on a node that is not `Ready`. The
//! decision itself is the pure function [`decide`]. Metrics:
//! `skerry_node_lifecycle_unreachable_nodes` (gauge) and `skerry_node_lifecycle_evictions_total`.

use crate::api::client::{identity, Client, Propagation};
use crate::api::events::{self, EventType};
use crate::api::{ApiError, ApiState};
use crate::clock;
use crate::store::{update_with, Event, ObjectKey, StoreError};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tracing::{debug, info, warn, Instrument};

/// The component the controller reports events as (Kubernetes' name for it).
pub const COMPONENT: &str = "node-controller";
/// Taint of a node whose status stopped arriving.
pub const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// Taint of a node that reports itself not ready.
pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";
/// Reason of the conditions the controller sets to `Unknown`.
pub const NODE_STATUS_UNKNOWN: &str = "NodeStatusUnknown";
/// Message of the conditions the controller sets to `Unknown` (Kubernetes' wording).
pub const NODE_STATUS_UNKNOWN_MESSAGE: &str = "Kubelet stopped posting node status.";
/// Reason of the event recorded for each eviction.
pub const EVICTION_REASON: &str = "TaintManagerEviction";
/// Default grace period (Kubernetes' `node-monitor-grace-period`).
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(40);
/// Default period of the full pass (Kubernetes' `node-monitor-period`).
pub const DEFAULT_MONITOR_PERIOD: Duration = Duration::from_secs(5);

/// Reason of the `Ready=False` this controller writes on the pods of a node that is not Ready;
/// it marks the conditions to restore when the node comes back (see [`restored_ready`]).
pub const POD_NODE_NOT_READY: &str = "NodeNotReady";
const NO_SCHEDULE: &str = "NoSchedule";
const NO_EXECUTE: &str = "NoExecute";

/// Settings of the controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// How long a node may stay silent before it is `Unknown` and tainted unreachable.
    pub grace_period: Duration,
    /// How often every node is re-checked without being woken by a change.
    pub monitor_period: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            grace_period: DEFAULT_GRACE_PERIOD,
            monitor_period: DEFAULT_MONITOR_PERIOD,
        }
    }
}

/// A node's health, from its `Ready` condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// `Ready=True`.
    Ready,
    /// `Ready=False`: the edge says it cannot run pods.
    NotReady,
    /// `Ready=Unknown` or no `Ready` condition: nothing heard within the grace period.
    Unreachable,
}

/// A pod the controller acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Uid: actions apply to this pod only, not to a later one of the same name.
    pub uid: String,
}

/// What to do to one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodAction {
    /// Set its `Ready` condition to `False`.
    MarkNotReady(PodRef),
    /// Delete it gracefully: its toleration of `taint` ran out.
    Evict {
        /// The pod.
        pod: PodRef,
        /// Key of the taint it no longer tolerates.
        taint: String,
    },
}

/// The outcome of [`decide`].
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The node as it should be stored, if it changes.
    pub node: Option<Value>,
    /// The node's health after that change.
    pub health: Health,
    /// What to do to its pods.
    pub pods: Vec<PodAction>,
    /// When (ms since the epoch) the decision changes without any write: the grace period or a
    /// toleration runs out.
    pub wake_at_ms: Option<u64>,
}

fn text<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

use protocol::timestamp::parse_ms;

fn ready_condition(obj: &Value) -> Option<&Value> {
    obj.pointer("/status/conditions")
        .and_then(Value::as_array)?
        .iter()
        .find(|c| c["type"] == "Ready")
}

/// The `lastHeartbeatTime` of a node's `Ready` condition, as written ("" if none).
pub fn heartbeat_of(node: &Value) -> &str {
    ready_condition(node)
        .and_then(|c| c["lastHeartbeatTime"].as_str())
        .unwrap_or("")
}

/// A node's health from its `Ready` condition.
pub fn health_of(node: &Value) -> Health {
    match ready_condition(node).and_then(|c| c["status"].as_str()) {
        Some("True") => Health::Ready,
        Some("False") => Health::NotReady,
        _ => Health::Unreachable,
    }
}

fn is_stale(now_ms: u64, probe_ms: u64, grace_ms: u64) -> bool {
    now_ms.saturating_sub(probe_ms) > grace_ms
}

fn is_lifecycle_taint(t: &Value) -> bool {
    matches!(t["key"].as_str(), Some(TAINT_UNREACHABLE | TAINT_NOT_READY))
}

/// The decision for one node and the pods bound to it, at `now_ms`, for a node whose heartbeat
/// this controller last saw change at `probe_ms`, with a grace period of `grace_ms`. Pure:
/// the caller writes the node, then acts on the pods.
pub fn decide(
    node: &Value,
    pods: &[&Value],
    now_ms: u64,
    probe_ms: u64,
    grace_ms: u64,
) -> Decision {
    let updated = node_update(node, now_ms, probe_ms, grace_ms);
    let after = updated.as_ref().unwrap_or(node);
    let health = health_of(after);
    let (actions, pod_wake) = pod_actions(after, health, pods, now_ms);
    let stale_at = (!is_stale(now_ms, probe_ms, grace_ms)).then(|| probe_ms + grace_ms + 1);
    Decision {
        node: updated,
        health,
        pods: actions,
        wake_at_ms: [stale_at, pod_wake].into_iter().flatten().min(),
    }
}

/// The node with its conditions and lifecycle taints brought up to date, or `None` if they
/// already are. Idempotent: applying it to its own result gives `None`.
pub fn node_update(node: &Value, now_ms: u64, probe_ms: u64, grace_ms: u64) -> Option<Value> {
    let mut next = node.clone();
    let now = clock::rfc3339(now_ms);
    let mut changed = false;
    if is_stale(now_ms, probe_ms, grace_ms) {
        let mut conditions: Vec<Value> = next
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if !conditions.iter().any(|c| c["type"] == "Ready") {
            let created = text(node, "/metadata/creationTimestamp");
            conditions.push(json!({"type": "Ready", "status": "Unknown",
                "reason": NODE_STATUS_UNKNOWN, "message": NODE_STATUS_UNKNOWN_MESSAGE,
                "lastHeartbeatTime": if created.is_empty() { now.as_str() } else { created },
                "lastTransitionTime": now}));
            changed = true;
        }
        for c in conditions.iter_mut().filter(|c| c["status"] != "Unknown") {
            c["status"] = json!("Unknown");
            c["reason"] = json!(NODE_STATUS_UNKNOWN);
            c["message"] = json!(NODE_STATUS_UNKNOWN_MESSAGE);
            c["lastTransitionTime"] = json!(now);
            changed = true;
        }
        if changed {
            if !next["status"].is_object() {
                next["status"] = json!({});
            }
            next["status"]["conditions"] = json!(conditions);
        }
    }
    let wanted = match health_of(&next) {
        Health::Ready => None,
        Health::NotReady => Some(TAINT_NOT_READY),
        Health::Unreachable => Some(TAINT_UNREACHABLE),
    };
    let before: Vec<Value> = next
        .pointer("/spec/taints")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut taints: Vec<Value> = before
        .iter()
        .filter(|t| !is_lifecycle_taint(t) || t["key"].as_str() == wanted)
        .cloned()
        .collect();
    if let Some(key) = wanted {
        for effect in [NO_SCHEDULE, NO_EXECUTE] {
            match taints
                .iter_mut()
                .find(|t| t["key"] == key && t["effect"] == effect)
            {
                Some(t) if effect == NO_EXECUTE && parse_ms(text(t, "/timeAdded")).is_none() => {
                    t["timeAdded"] = json!(now);
                }
                Some(_) => {}
                None if effect == NO_EXECUTE => {
                    taints.push(json!({"key": key, "effect": effect, "timeAdded": now}));
                }
                None => taints.push(json!({"key": key, "effect": effect})),
            }
        }
    }
    if taints != before {
        changed = true;
        if !next["spec"].is_object() {
            next["spec"] = json!({});
        }
        if let Some(spec) = next["spec"].as_object_mut() {
            if taints.is_empty() {
                spec.remove("taints");
            } else {
                spec.insert("taints".into(), json!(taints));
            }
        }
    }
    changed.then_some(next)
}

/// Whether toleration `tol` tolerates the taint (`key`, `value`, `effect`), by Kubernetes' rule.
fn tolerates(tol: &Value, key: &str, value: &str, effect: &str) -> bool {
    let t_effect = text(tol, "/effect");
    let t_key = text(tol, "/key");
    if (!t_effect.is_empty() && t_effect != effect) || (!t_key.is_empty() && t_key != key) {
        return false;
    }
    match text(tol, "/operator") {
        "" | "Equal" => text(tol, "/value") == value,
        "Exists" => true,
        _ => false,
    }
}

/// How long `pod` tolerates a `NoExecute` taint: `None` if no toleration matches (Skerry
/// leaves such pods alone), `Some(None)` for ever, `Some(Some(ms))` for that long (the shortest
/// finite `tolerationSeconds` among the matching tolerations, as Kubernetes takes).
fn toleration_ms(pod: &Value, key: &str, value: &str) -> Option<Option<u64>> {
    let matching: Vec<&Value> = pod
        .pointer("/spec/tolerations")
        .and_then(Value::as_array)?
        .iter()
        .filter(|t| tolerates(t, key, value, NO_EXECUTE))
        .collect();
    if matching.is_empty() {
        return None;
    }
    Some(
        matching
            .iter()
            .filter_map(|t| t["tolerationSeconds"].as_i64())
            .map(|s| u64::try_from(s).unwrap_or(0).saturating_mul(1000))
            .min(),
    )
}

fn pod_ref(pod: &Value) -> PodRef {
    PodRef {
        namespace: text(pod, "/metadata/namespace").to_string(),
        name: text(pod, "/metadata/name").to_string(),
        uid: text(pod, "/metadata/uid").to_string(),
    }
}

fn pod_actions(
    node: &Value,
    health: Health,
    pods: &[&Value],
    now_ms: u64,
) -> (Vec<PodAction>, Option<u64>) {
    let node_name = text(node, "/metadata/name");
    // The lifecycle NoExecute taints and when they were added (a taint without a readable
    // `timeAdded` counts from now: the next node update gives it one).
    let no_execute: Vec<(&str, &str, u64)> = node
        .pointer("/spec/taints")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|t| is_lifecycle_taint(t) && t["effect"] == NO_EXECUTE)
        .map(|t| {
            let added = parse_ms(text(t, "/timeAdded")).unwrap_or(now_ms);
            (text(t, "/key"), text(t, "/value"), added)
        })
        .collect();
    let mut actions = Vec::new();
    let mut wake: Option<u64> = None;
    for pod in pods {
        if text(pod, "/spec/nodeName") != node_name
            || pod.pointer("/metadata/deletionTimestamp").is_some()
        {
            continue;
        }
        let ready = ready_condition(pod).and_then(|c| c["status"].as_str());
        if health != Health::Ready && ready.is_some_and(|s| s != "False") {
            actions.push(PodAction::MarkNotReady(pod_ref(pod)));
        }
        let deadline = no_execute
            .iter()
            .filter_map(|(key, value, added)| {
                let ms = toleration_ms(pod, key, value)??;
                Some((added.saturating_add(ms), *key))
            })
            .min();
        match deadline {
            Some((at, key)) if at <= now_ms => actions.push(PodAction::Evict {
                pod: pod_ref(pod),
                taint: key.to_string(),
            }),
            Some((at, _)) => wake = Some(wake.map_or(at, |w| w.min(at))),
            None => {}
        }
    }
    (actions, wake)
}

/// The pod with its `Ready` condition set to `False`, if it is still the pod `uid` on `node`
/// and says anything else.
fn marked_not_ready(pod: &Value, uid: &str, node: &str, now: &str) -> Option<Value> {
    if text(pod, "/metadata/uid") != uid || text(pod, "/spec/nodeName") != node {
        return None;
    }
    let mut next = pod.clone();
    let cond = next
        .pointer_mut("/status/conditions")
        .and_then(Value::as_array_mut)?
        .iter_mut()
        .find(|c| c["type"] == "Ready" && c["status"] != "False")?;
    cond["status"] = json!("False");
    cond["reason"] = json!(POD_NODE_NOT_READY);
    cond["message"] = json!(format!("Node {node} is not ready"));
    cond["lastTransitionTime"] = json!(now);
    Some(next)
}

/// The pod with the `Ready` condition this controller marked not ready set back to what its
/// edge last reported (Ready exactly when every container reported ready), if it still carries
/// the mark. A node that comes back usually re-reports its pods anyway (edgecore re-sends after
/// reconnecting), which replaces the mark; this covers a pod whose report does not arrive, so it
/// does not stay not-ready for ever while running fine.
fn restored_ready(pod: &Value, now: &str) -> Option<Value> {
    let containers_ready = pod
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .is_some_and(|cs| !cs.is_empty() && cs.iter().all(|c| c["ready"] == true));
    let mut next = pod.clone();
    let cond = next
        .pointer_mut("/status/conditions")
        .and_then(Value::as_array_mut)?
        .iter_mut()
        .find(|c| c["type"] == "Ready" && c["reason"] == POD_NODE_NOT_READY)?;
    let obj = cond.as_object_mut()?;
    if containers_ready {
        obj.insert("status".into(), json!("True"));
        obj.remove("reason");
        obj.remove("message");
    } else {
        obj.insert("status".into(), json!("False"));
        obj.insert("reason".into(), json!("ContainersNotReady"));
        obj.remove("message");
    }
    obj.insert("lastTransitionTime".into(), json!(now));
    Some(next)
}

/// When this controller last saw each node's heartbeat change, by its own clock.
#[derive(Debug, Default)]
struct Heartbeats {
    seen: HashMap<String, (String, u64)>,
}

impl Heartbeats {
    /// The probe time of `node` (named `name`) at `now_ms`: when its current heartbeat was first
    /// seen (now, if it is new).
    fn probe(&mut self, name: &str, node: &Value, now_ms: u64) -> u64 {
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

/// Pods grouped by the node they are bound to.
type PodsByNode = HashMap<String, Vec<Value>>;

async fn list_pods(state: &ApiState) -> Result<PodsByNode, StoreError> {
    let (pods, _) = state.store.list("pods", None).await?;
    let mut by_node: PodsByNode = HashMap::new();
    for p in pods {
        let node = text(&p.value, "/spec/nodeName");
        if !node.is_empty() {
            by_node.entry(node.to_string()).or_default().push(p.value);
        }
    }
    Ok(by_node)
}

/// The controller's memory between passes: nothing here is needed for correctness after a
/// restart except the heartbeat probes, which restart with a fresh grace period.
struct Controller {
    state: ApiState,
    cfg: Config,
    heartbeats: Heartbeats,
    health: HashMap<String, Health>,
    wake: HashMap<String, u64>,
}

impl Controller {
    fn grace_ms(&self) -> u64 {
        u64::try_from(self.cfg.grace_period.as_millis()).unwrap_or(u64::MAX)
    }

    /// One pass over every node.
    async fn reconcile_all(&mut self) {
        let nodes = match self.state.store.list("nodes", None).await {
            Ok((items, _)) => items,
            Err(e) => {
                warn!(error = %e, "node lifecycle controller cannot list nodes; retrying at the next period");
                return;
            }
        };
        let names: HashSet<String> = nodes
            .iter()
            .map(|n| text(&n.value, "/metadata/name").to_string())
            .collect();
        self.heartbeats.seen.retain(|n, _| names.contains(n));
        self.health.retain(|n, _| names.contains(n));
        self.wake.retain(|n, _| names.contains(n));
        let mut pods: Option<PodsByNode> = None;
        for node in nodes {
            let name = text(&node.value, "/metadata/name").to_string();
            let span = tracing::info_span!("node_lifecycle", node = %name);
            self.reconcile_node(node.value, &mut pods)
                .instrument(span)
                .await;
        }
        self.publish_gauge();
    }

    /// One pass over node `name` only.
    async fn reconcile_named(&mut self, name: &str) {
        let node = match self
            .state
            .store
            .get(&ObjectKey::new("nodes", "", name))
            .await
        {
            Ok(Some(n)) => n,
            Ok(None) => {
                self.forget(name);
                return;
            }
            Err(e) => {
                warn!(node = %name, error = %e, "cannot read node; the next pass retries");
                return;
            }
        };
        let span = tracing::info_span!("node_lifecycle", node = %name);
        self.reconcile_node(node.value, &mut None)
            .instrument(span)
            .await;
        self.publish_gauge();
    }

    fn forget(&mut self, name: &str) {
        self.heartbeats.seen.remove(name);
        self.health.remove(name);
        self.wake.remove(name);
        self.publish_gauge();
    }

    fn publish_gauge(&self) {
        let unreachable = self
            .health
            .values()
            .filter(|h| **h == Health::Unreachable)
            .count();
        metrics::gauge!("skerry_node_lifecycle_unreachable_nodes").set(unreachable as f64);
    }

    fn next_wake_ms(&self) -> Option<u64> {
        self.wake.values().min().copied()
    }

    /// Brings one node and its pods up to date. `pods` is loaded on first need and shared by
    /// the nodes of one pass.
    async fn reconcile_node(&mut self, node: Value, pods: &mut Option<PodsByNode>) {
        let name = text(&node, "/metadata/name").to_string();
        let key = ObjectKey::new("nodes", "", &name);
        let now = clock::now_ms();
        let grace = self.grace_ms();
        let probe = self.heartbeats.probe(&name, &node, now);
        let mut node = node;
        if decide(&node, &[], now, probe, grace).node.is_some() {
            // Decide again on whatever is current when writing: ingest may have just written a
            // fresh heartbeat, which then counts from now.
            let seen = heartbeat_of(&node).to_string();
            let written = update_with(self.state.store.as_ref(), &key, |cur| {
                let probe = if heartbeat_of(cur) == seen {
                    probe
                } else {
                    now
                };
                node_update(cur, now, probe, grace)
            })
            .await;
            match written {
                Ok(Some(stored)) => node = stored.value,
                Ok(None) => match self.state.store.get(&key).await {
                    Ok(Some(s)) => node = s.value,
                    Ok(None) => {
                        self.forget(&name);
                        return;
                    }
                    Err(e) => {
                        warn!(error = %e, "cannot re-read node; the next pass retries");
                        return;
                    }
                },
                Err(StoreError::NotFound(_)) => {
                    self.forget(&name);
                    return;
                }
                Err(e) => {
                    warn!(error = %e, "cannot update node conditions and taints; the next pass retries");
                    return;
                }
            }
        }
        let probe = self.heartbeats.probe(&name, &node, now);
        let health = health_of(&node);
        let previous = self.health.insert(name.clone(), health);
        if previous != Some(health) {
            info!(?previous, ?health, "node health changed");
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
            self.restore_pods(&name, pods).await;
        }
        let bound: Vec<Value> = if health == Health::Ready {
            Vec::new()
        } else {
            if pods.is_none() {
                match list_pods(&self.state).await {
                    Ok(p) => *pods = Some(p),
                    Err(e) => {
                        warn!(error = %e, "cannot list pods; the next pass retries");
                        return;
                    }
                }
            }
            pods.as_ref()
                .and_then(|p| p.get(&name))
                .cloned()
                .unwrap_or_default()
        };
        let refs: Vec<&Value> = bound.iter().collect();
        let decision = decide(&node, &refs, now, probe, grace);
        match decision.wake_at_ms {
            Some(at) => self.wake.insert(name.clone(), at),
            None => self.wake.remove(&name),
        };
        for action in decision.pods {
            let pod = bound.iter().find(|p| {
                let r = match &action {
                    PodAction::MarkNotReady(r) | PodAction::Evict { pod: r, .. } => r,
                };
                text(p, "/metadata/uid") == r.uid
            });
            match (action, pod) {
                (PodAction::MarkNotReady(r), _) => self.mark_not_ready(&r, &name).await,
                (PodAction::Evict { pod: r, taint }, Some(pod)) => {
                    self.evict(&r, &taint, pod).await
                }
                (PodAction::Evict { .. }, None) => {}
            }
        }
    }

    /// Restores the readiness this controller took from the pods of `node` (now Ready again).
    async fn restore_pods(&self, node: &str, pods: &mut Option<PodsByNode>) {
        if pods.is_none() {
            match list_pods(&self.state).await {
                Ok(p) => *pods = Some(p),
                Err(e) => {
                    warn!(error = %e, "cannot list pods to restore their readiness; a fresh report from the edge restores it");
                    return;
                }
            }
        }
        let marked: Vec<ObjectKey> = pods
            .as_ref()
            .and_then(|p| p.get(node))
            .into_iter()
            .flatten()
            .filter(|p| restored_ready(p, "").is_some())
            .map(|p| {
                ObjectKey::new(
                    "pods",
                    text(p, "/metadata/namespace"),
                    text(p, "/metadata/name"),
                )
            })
            .collect();
        let now = clock::now_rfc3339();
        let client = Client::new(self.state.clone());
        for key in marked {
            match client
                .update_status_with("pods", &key.namespace, &key.name, |cur| {
                    (text(cur, "/spec/nodeName") == node)
                        .then(|| restored_ready(cur, &now))
                        .flatten()
                })
                .await
            {
                Ok(Some(_)) => info!(pod = %key, "pod readiness restored from its last report"),
                Ok(None) | Err(ApiError::NotFound { .. }) => {}
                Err(e) => {
                    warn!(pod = %key, error = %e, "cannot restore pod readiness; a fresh report from the edge restores it")
                }
            }
        }
    }

    async fn mark_not_ready(&self, pod: &PodRef, node: &str) {
        let now = clock::now_rfc3339();
        let res = Client::new(self.state.clone())
            .update_status_with("pods", &pod.namespace, &pod.name, |cur| {
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
            }
            Ok(None) | Err(ApiError::NotFound { .. }) => {}
            Err(e) => {
                warn!(pod = %format!("{}/{}", pod.namespace, pod.name), error = %e, "cannot mark pod not ready; the next pass retries")
            }
        }
    }

    async fn evict(&self, pod: &PodRef, taint: &str, current: &Value) {
        let full = format!("{}/{}", pod.namespace, pod.name);
        let res = Client::new(self.state.clone())
            .delete(
                "pods",
                &pod.namespace,
                &pod.name,
                Propagation::Background,
                Some(&pod.uid),
            )
            .await;
        match res {
            Ok(_) => {
                metrics::counter!("skerry_node_lifecycle_evictions_total").increment(1);
                info!(pod = %full, taint, "toleration ran out; pod evicted");
                self.record(
                    current,
                    EventType::Normal,
                    EVICTION_REASON,
                    &format!("Marking for deletion Pod {full}"),
                )
                .await;
            }
            Err(ApiError::NotFound { .. } | ApiError::Conflict { .. }) => {
                debug!(pod = %full, "pod gone or replaced before its eviction");
            }
            Err(e) => warn!(pod = %full, error = %e, "eviction failed; the next pass retries"),
        }
    }

    async fn record(&self, about: &Value, event_type: EventType, reason: &str, msg: &str) {
        let client = Client::with_identity(self.state.clone(), identity::NODE_CONTROLLER);
        events::record_best_effort(&client, about, event_type, reason, msg, COMPONENT).await;
    }

    /// The node whose decision a store event may change: the node itself, or the node of a
    /// pod when that node is not `Ready` (only then do its pods matter).
    fn affected_node(&mut self, ev: &Event) -> Option<String> {
        match ev.key.resource.as_str() {
            "nodes" if ev.value.is_none() => {
                self.forget(&ev.key.name);
                None
            }
            "nodes" => Some(ev.key.name.clone()),
            "pods" => [ev.value.as_ref(), ev.previous.as_ref()]
                .into_iter()
                .flatten()
                .map(|p| text(p, "/spec/nodeName"))
                .find(|n| self.health.get(*n).is_some_and(|h| *h != Health::Ready))
                .map(str::to_string),
            _ => None,
        }
    }
}

/// Runs the controller until the store closes: a full pass every `monitor_period` and at the
/// next deadline, and a pass over the affected node when the store reports a relevant change
/// (changes that arrive together are handled together, one pass per node).
pub async fn run(state: ApiState, cfg: Config) {
    let mut rx = state.store.subscribe();
    let mut ctl = Controller {
        state,
        cfg,
        heartbeats: Heartbeats::default(),
        health: HashMap::new(),
        wake: HashMap::new(),
    };
    info!(grace = ?cfg.grace_period, period = ?cfg.monitor_period, "node lifecycle controller started");
    loop {
        ctl.reconcile_all().await;
        let resync = tokio::time::Instant::now() + cfg.monitor_period;
        'wait: loop {
            let until = match ctl.next_wake_ms() {
                Some(at) => resync.min(
                    tokio::time::Instant::now()
                        + Duration::from_millis(at.saturating_sub(clock::now_ms())),
                ),
                None => resync,
            };
            let first = tokio::select! {
                _ = tokio::time::sleep_until(until) => break 'wait,
                r = rx.recv() => r,
            };
            let mut dirty: Vec<String> = Vec::new();
            let mut next = first.map_err(|e| match e {
                RecvError::Lagged(_) => TryRecvError::Lagged(0),
                RecvError::Closed => TryRecvError::Closed,
            });
            loop {
                match next {
                    Ok(ev) => {
                        if let Some(n) = ctl.affected_node(&ev) {
                            if !dirty.contains(&n) {
                                dirty.push(n);
                            }
                        }
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Lagged(_)) => break 'wait,
                    Err(TryRecvError::Closed) => return,
                }
                next = rx.try_recv();
            }
            for name in dirty {
                ctl.reconcile_named(&name).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: u64 = 40_000;
    /// 2025-01-01T00:00:00Z in ms.
    const T0: u64 = 1_735_689_600_000;

    fn node(ready: &str) -> Value {
        json!({"metadata": {"name": "edge-1", "uid": "n1", "creationTimestamp": "2025-01-01T00:00:00Z"},
               "spec": {"taints": [{"key": "dedicated", "value": "x", "effect": "NoSchedule"}]},
               "status": {"conditions": [
                   {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory"},
                   {"type": "Ready", "status": ready, "reason": "KubeletReady",
                    "lastHeartbeatTime": "2025-01-01T00:00:00Z", "lastTransitionTime": "2025-01-01T00:00:00Z"}]}})
    }

    fn pod(name: &str, tolerations: Value) -> Value {
        json!({"metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")},
               "spec": {"nodeName": "edge-1", "tolerations": tolerations},
               "status": {"conditions": [{"type": "Ready", "status": "True"}]}})
    }

    fn lifecycle_taints(node: &Value) -> Vec<(String, String)> {
        node["spec"]["taints"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| is_lifecycle_taint(t))
            .map(|t| (text(t, "/key").to_string(), text(t, "/effect").to_string()))
            .collect()
    }

    fn unreachable_toleration(seconds: Option<i64>) -> Value {
        let mut t = json!({"key": TAINT_UNREACHABLE, "operator": "Exists", "effect": "NoExecute"});
        if let Some(s) = seconds {
            t["tolerationSeconds"] = json!(s);
        }
        t
    }

    #[test]
    fn a_fresh_ready_node_is_left_alone_and_wakes_when_its_grace_runs_out() {
        let n = node("True");
        let d = decide(&n, &[], T0 + 10_000, T0, GRACE);
        assert_eq!(d.node, None);
        assert_eq!(d.health, Health::Ready);
        assert_eq!(d.wake_at_ms, Some(T0 + GRACE + 1));
    }

    #[test]
    fn a_silent_node_goes_unknown_with_unreachable_taints() {
        let n = node("True");
        let now = T0 + GRACE + 1;
        let d = decide(&n, &[], now, T0, GRACE);
        let updated = d.node.expect("the node changes");
        assert_eq!(d.health, Health::Unreachable);
        for c in updated["status"]["conditions"].as_array().unwrap() {
            assert_eq!(c["status"], "Unknown", "{c}");
            assert_eq!(c["reason"], NODE_STATUS_UNKNOWN);
            assert_eq!(c["message"], NODE_STATUS_UNKNOWN_MESSAGE);
            assert_eq!(c["lastTransitionTime"], clock::rfc3339(now));
        }
        // The heartbeat stays what the edge last said.
        assert_eq!(heartbeat_of(&updated), "2025-01-01T00:00:00Z");
        assert_eq!(
            lifecycle_taints(&updated),
            vec![
                (TAINT_UNREACHABLE.to_string(), "NoSchedule".to_string()),
                (TAINT_UNREACHABLE.to_string(), "NoExecute".to_string())
            ]
        );
        let taints = updated["spec"]["taints"].as_array().unwrap();
        assert_eq!(taints[0]["key"], "dedicated", "admin taints are kept");
        let no_exec = taints.iter().find(|t| t["effect"] == "NoExecute").unwrap();
        assert_eq!(no_exec["timeAdded"], clock::rfc3339(now));
        assert!(taints
            .iter()
            .all(|t| t["effect"] == "NoExecute" || t.get("timeAdded").is_none()));
        // Idempotent: later passes change nothing, and keep timeAdded.
        assert_eq!(node_update(&updated, now + 60_000, T0, GRACE), None);
    }

    #[test]
    fn a_node_that_reports_not_ready_gets_not_ready_taints_and_swaps_them_when_silent() {
        let n = node("False");
        let d = decide(&n, &[], T0 + 1_000, T0, GRACE);
        assert_eq!(d.health, Health::NotReady);
        let updated = d.node.unwrap();
        assert_eq!(
            lifecycle_taints(&updated),
            vec![
                (TAINT_NOT_READY.to_string(), "NoSchedule".to_string()),
                (TAINT_NOT_READY.to_string(), "NoExecute".to_string())
            ]
        );
        let silent = node_update(&updated, T0 + GRACE + 5_000, T0, GRACE).unwrap();
        assert_eq!(health_of(&silent), Health::Unreachable);
        assert!(lifecycle_taints(&silent)
            .iter()
            .all(|(k, _)| k == TAINT_UNREACHABLE));
        assert_eq!(lifecycle_taints(&silent).len(), 2);
    }

    #[test]
    fn a_node_ready_again_loses_the_lifecycle_taints_only() {
        let silent = node_update(&node("True"), T0 + GRACE + 1, T0, GRACE).unwrap();
        // The edge reports again: ingest rewrites Ready with a fresh heartbeat.
        let mut back = silent.clone();
        let conds = back["status"]["conditions"].as_array_mut().unwrap();
        conds.retain(|c| c["type"] != "Ready");
        conds.push(
            json!({"type": "Ready", "status": "True", "lastHeartbeatTime": "2025-01-01T00:02:00Z"}),
        );
        let now = T0 + 120_000;
        let d = decide(&back, &[], now, now, GRACE);
        assert_eq!(d.health, Health::Ready);
        let cleaned = d.node.unwrap();
        assert!(lifecycle_taints(&cleaned).is_empty());
        assert_eq!(cleaned["spec"]["taints"][0]["key"], "dedicated");
        let mut bare = cleaned.clone();
        bare["spec"]["taints"] = json!([{"key": TAINT_UNREACHABLE, "effect": "NoSchedule"}]);
        let none_left = node_update(&bare, now, now, GRACE).unwrap();
        assert!(
            none_left["spec"].get("taints").is_none(),
            "an empty list is removed"
        );
    }

    #[test]
    fn a_node_that_never_reported_is_tainted_unreachable_after_the_grace() {
        let n = json!({"metadata": {"name": "edge-1", "creationTimestamp": "2025-01-01T00:00:00Z"}, "spec": {}});
        let updated = node_update(&n, T0 + GRACE + 1, T0, GRACE).unwrap();
        assert_eq!(health_of(&updated), Health::Unreachable);
        assert_eq!(
            updated["status"]["conditions"][0]["reason"],
            NODE_STATUS_UNKNOWN
        );
        assert_eq!(lifecycle_taints(&updated).len(), 2);
    }

    #[test]
    fn pods_are_marked_not_ready_but_only_finite_matching_tolerations_evict() {
        let now = T0 + GRACE + 1;
        let tainted = node_update(&node("True"), now, T0, GRACE).unwrap();
        let plain = pod("plain", json!([]));
        let forever = pod("forever", json!([unreachable_toleration(None)]));
        let short = pod("short", json!([unreachable_toleration(Some(2))]));
        let other_key = pod(
            "other",
            json!([{"key": TAINT_NOT_READY, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 0}]),
        );
        let pods = [&plain, &forever, &short, &other_key];
        let at_taint = decide(&tainted, &pods, now, T0, GRACE);
        assert_eq!(at_taint.node, None);
        let marked: Vec<&str> = at_taint
            .pods
            .iter()
            .filter_map(|a| match a {
                PodAction::MarkNotReady(p) => Some(p.name.as_str()),
                PodAction::Evict { .. } => None,
            })
            .collect();
        assert_eq!(marked, ["plain", "forever", "short", "other"]);
        assert!(at_taint
            .pods
            .iter()
            .all(|a| matches!(a, PodAction::MarkNotReady(_))));
        // timeAdded has Kubernetes' second precision: the taint counts from T0 + 40 s.
        assert_eq!(
            at_taint.wake_at_ms,
            Some(T0 + GRACE + 2_000),
            "wakes for 'short'"
        );

        let later = decide(&tainted, &pods, now + 2_000, T0, GRACE);
        let evicted: Vec<&PodAction> = later
            .pods
            .iter()
            .filter(|a| matches!(a, PodAction::Evict { .. }))
            .collect();
        assert_eq!(
            evicted,
            [&PodAction::Evict {
                pod: PodRef {
                    namespace: "default".into(),
                    name: "short".into(),
                    uid: "uid-short".into()
                },
                taint: TAINT_UNREACHABLE.into()
            }]
        );
        // Hours later still: the pods without a finite toleration stay.
        let much_later = decide(&tainted, &pods, now + 3_600_000, T0, GRACE);
        assert_eq!(
            much_later
                .pods
                .iter()
                .filter(|a| matches!(a, PodAction::Evict { .. }))
                .count(),
            1
        );
    }

    #[test]
    fn eviction_deadlines_count_from_the_taint_time_added_not_from_now() {
        let now = T0 + 600_000;
        let mut tainted = node_update(&node("True"), T0 + GRACE + 1, T0, GRACE).unwrap();
        // Ten minutes after the taint, a restarted controller decides for the first time.
        let short = pod("short", json!([unreachable_toleration(Some(300))]));
        let d = decide(&tainted, &[&short], now, now, GRACE);
        assert!(
            d.pods.iter().any(|a| matches!(a, PodAction::Evict { .. })),
            "{d:?}"
        );
        // A taint without timeAdded gets one, and counts from then.
        for t in tainted["spec"]["taints"].as_array_mut().unwrap() {
            if let Some(o) = t.as_object_mut() {
                o.remove("timeAdded");
            }
        }
        let fixed = node_update(&tainted, now, T0, GRACE).unwrap();
        let no_exec = fixed["spec"]["taints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["effect"] == "NoExecute")
            .unwrap()
            .clone();
        assert_eq!(no_exec["timeAdded"], clock::rfc3339(now));
    }

    #[test]
    fn tolerations_match_as_in_kubernetes() {
        let k = TAINT_UNREACHABLE;
        assert!(tolerates(&json!({"operator": "Exists"}), k, "", NO_EXECUTE));
        assert!(tolerates(
            &json!({"key": k, "operator": "Exists"}),
            k,
            "",
            NO_EXECUTE
        ));
        assert!(tolerates(&json!({"key": k}), k, "", NO_EXECUTE));
        assert!(!tolerates(
            &json!({"key": k, "value": "v"}),
            k,
            "",
            NO_EXECUTE
        ));
        assert!(!tolerates(
            &json!({"key": k, "effect": "NoSchedule"}),
            k,
            "",
            NO_EXECUTE
        ));
        assert!(!tolerates(
            &json!({"key": "other", "operator": "Exists"}),
            k,
            "",
            NO_EXECUTE
        ));
        // The shortest finite time wins; a negative one means now.
        let p = pod(
            "p",
            json!([
                unreachable_toleration(None),
                unreachable_toleration(Some(30))
            ]),
        );
        assert_eq!(toleration_ms(&p, k, ""), Some(Some(30_000)));
        let p = pod("p", json!([unreachable_toleration(Some(-5))]));
        assert_eq!(toleration_ms(&p, k, ""), Some(Some(0)));
        let p = pod("p", json!([unreachable_toleration(None)]));
        assert_eq!(toleration_ms(&p, k, ""), Some(None));
        assert_eq!(toleration_ms(&pod("p", json!([])), k, ""), None);
    }

    #[test]
    fn terminating_and_foreign_pods_are_not_touched_and_marking_is_idempotent() {
        let now = T0 + GRACE + 1;
        let tainted = node_update(&node("True"), now, T0, GRACE).unwrap();
        let mut going = pod("going", json!([unreachable_toleration(Some(0))]));
        going["metadata"]["deletionTimestamp"] = json!("2025-01-01T00:00:50Z");
        let mut elsewhere = pod("elsewhere", json!([unreachable_toleration(Some(0))]));
        elsewhere["spec"]["nodeName"] = json!("edge-2");
        let d = decide(&tainted, &[&going, &elsewhere], now, T0, GRACE);
        assert!(d.pods.is_empty(), "{:?}", d.pods);

        let p = pod("p", json!([]));
        let marked = marked_not_ready(&p, "uid-p", "edge-1", "2025-01-01T00:01:00Z").unwrap();
        assert_eq!(marked["status"]["conditions"][0]["status"], "False");
        assert_eq!(
            marked["status"]["conditions"][0]["lastTransitionTime"],
            "2025-01-01T00:01:00Z"
        );
        assert_eq!(
            marked["status"]["conditions"][0]["reason"],
            POD_NODE_NOT_READY
        );
        assert_eq!(marked_not_ready(&marked, "uid-p", "edge-1", "x"), None);
        // Back: Ready again exactly when every container last reported ready.
        let mut ready = marked.clone();
        ready["status"]["containerStatuses"] = json!([{"name": "c", "ready": true}]);
        let restored = restored_ready(&ready, "2025-01-01T00:02:00Z").unwrap();
        assert_eq!(restored["status"]["conditions"][0]["status"], "True");
        assert!(restored["status"]["conditions"][0].get("reason").is_none());
        assert_eq!(
            restored_ready(&restored, "x"),
            None,
            "nothing left to restore"
        );
        let mut unready = marked.clone();
        unready["status"]["containerStatuses"] = json!([{"name": "c", "ready": false}]);
        let restored = restored_ready(&unready, "x").unwrap();
        assert_eq!(restored["status"]["conditions"][0]["status"], "False");
        assert_eq!(
            restored["status"]["conditions"][0]["reason"],
            "ContainersNotReady"
        );
        assert_eq!(
            restored_ready(&p, "x"),
            None,
            "a pod this controller did not mark"
        );
        assert_eq!(marked_not_ready(&p, "another-uid", "edge-1", "x"), None);
        assert!(decide(&tainted, &[&marked], now, T0, GRACE).pods.is_empty());
    }

    #[test]
    fn heartbeats_are_timed_by_the_controllers_clock() {
        let mut hb = Heartbeats::default();
        let n = node("True");
        assert_eq!(hb.probe("edge-1", &n, 5), 5);
        assert_eq!(
            hb.probe("edge-1", &n, 9),
            5,
            "same heartbeat: first seen at 5"
        );
        let mut newer = n.clone();
        newer["status"]["conditions"][1]["lastHeartbeatTime"] = json!("2020-01-01T00:00:00Z");
        assert_eq!(
            hb.probe("edge-1", &newer, 12),
            12,
            "a changed heartbeat counts from now, even when the edge's clock is behind"
        );
    }
}
