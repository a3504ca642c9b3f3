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
//! edge's fresh report replaces the controller's `Unknown` (ingest rewrites the conditions the
//! edge measured and drops the other ones this controller marked `Unknown`). A reported
//! `MemoryPressure`, `DiskPressure`, `PIDPressure` or `NetworkUnavailable` that is `True` adds
//! its `NoSchedule` taint ([`CONDITION_TAINTS`], Kubernetes' `TaintNodesByCondition`), so new
//! pods go elsewhere while running ones stay; it goes when the condition does. Both write with optimistic concurrency and each decides on the value it writes over,
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
//! **Loop.** It runs on the shared [`runner`](super::runner), keyed by node: a node is
//! reconciled when it changes (a heartbeat from ingest), when a pod bound to it changes while it
//! is not `Ready` (only then do its pods matter), at each resync (`--node-monitor-period`) and
//! at its next deadline, which the reconcile asks for as
//! [`Requeue::After`](super::runner::Requeue::After): the grace period
//! running out, or a toleration. Reconciles of different nodes run concurrently; the runner
//! never runs one node twice at once. The decision is the pure function [`decide()`] (module
//! [`decide`](mod@decide)); the reconciler ([`reconciler`]) reads the time from the
//! [`Clock`](crate::clock::Clock) it is given, keeps the heartbeat observations between
//! reconciles, finds a node's pods through an index of pods by node kept from store events,
//! and writes through the in-process [`Client`]: conditions through `/status`, taints through
//! the main resource, pod readiness through pods' `/status`, evictions as deletes. Metrics:
//! `skerry_node_lifecycle_unreachable_nodes` (gauge) and `skerry_node_lifecycle_evictions_total`.

pub mod decide;
pub mod reconciler;
#[cfg(test)]
mod tests;

pub use decide::{
    decide, health_of, heartbeat_of, node_update, status_update, taints_update, Decision, Health,
    PodAction, PodRef,
};
pub use reconciler::NodeLifecycleController;

use super::runner::{self, Options};
use crate::api::client::Client;
use crate::clock::SystemClock;
use std::sync::Arc;
use std::time::Duration;

/// The component the controller reports events as (Kubernetes' name for it).
pub const COMPONENT: &str = "node-controller";
/// Taint of a node whose status stopped arriving.
pub const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// Taint of a node that reports itself not ready.
pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";
/// The `NoSchedule` taints of a node condition that is `True` (Kubernetes'
/// `TaintNodesByCondition`), so new pods that do not tolerate it go elsewhere while the pods
/// already there keep running.
pub const CONDITION_TAINTS: [(&str, &str); 5] = [
    ("MemoryPressure", "node.kubernetes.io/memory-pressure"),
    ("DiskPressure", "node.kubernetes.io/disk-pressure"),
    ("PIDPressure", "node.kubernetes.io/pid-pressure"),
    (
        "NetworkUnavailable",
        "node.kubernetes.io/network-unavailable",
    ),
    // The hub's: the node does not acknowledge what it is sent, so a pod bound to it now
    // would not reach it (crate::hub::ack_lag).
    ("SyncLagging", "node.skerry.io/sync-lagging"),
];
/// Reason of the conditions the controller sets to `Unknown`.
pub const NODE_STATUS_UNKNOWN: &str = "NodeStatusUnknown";
/// Message of the conditions the controller sets to `Unknown` (Kubernetes' wording).
pub const NODE_STATUS_UNKNOWN_MESSAGE: &str = "Kubelet stopped posting node status.";
/// Reason of the event recorded for each eviction.
pub const EVICTION_REASON: &str = "TaintManagerEviction";
/// Default grace period (Kubernetes' `node-monitor-grace-period`).
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(40);
/// Default resync period: every node is reconciled this often (Kubernetes'
/// `node-monitor-period`).
pub const DEFAULT_MONITOR_PERIOD: Duration = Duration::from_secs(5);

/// Reason of the `Ready=False` this controller writes on the pods of a node that is not Ready;
/// it marks the conditions to restore when the node comes back (see `decide::restored_ready`).
pub const POD_NODE_NOT_READY: &str = "NodeNotReady";
const NO_SCHEDULE: &str = "NoSchedule";
const NO_EXECUTE: &str = "NoExecute";
/// Nodes reconciled at the same time: a reconcile mostly waits for the store, and a node that
/// goes silent with many pods (each marked not ready, one write each) should not hold up the
/// heartbeats of the others.
pub const CONCURRENCY: usize = 5;

/// Settings of the controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// How long a node may stay silent before it is `Unknown` and tainted unreachable.
    pub grace_period: Duration,
    /// How often every node is re-checked without being woken by a change (the runner's
    /// resync).
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

/// Runs the controller on the shared runner until the store's event stream closes, writing
/// through `client`, reading the system clock, and taking `liveness` (the hub's) as a sign of
/// life beside the heartbeats.
pub async fn run(client: Client, cfg: Config, liveness: crate::liveness::Liveness) {
    let events = client.state().store.subscribe();
    let controller =
        NodeLifecycleController::new(client, cfg, Arc::new(SystemClock)).with_liveness(liveness);
    tracing::info!(grace = ?cfg.grace_period, period = ?cfg.monitor_period, "node lifecycle controller started");
    runner::run(
        Arc::new(controller),
        events,
        Options::resync(cfg.monitor_period).with_concurrency(CONCURRENCY),
    )
    .await;
}
