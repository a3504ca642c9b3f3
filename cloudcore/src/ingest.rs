//! Ingest: applies the status that edge nodes publish over MQTT to the store.
//!
//! Delivery up is at-least-once end to end: cloudcore subscribes with QoS 1 on a persistent
//! session and acknowledges a message to the broker only after the store write it caused is
//! durable, so a crash between the two makes the broker deliver it again. Acks go out in
//! receive order (MQTT 3.1.1, 4.6) although several workers apply reports in parallel. Applying is idempotent:
//! each object remembers the sequence number of the last report applied (annotation
//! [`STATUS_SEQ_ANNOTATION`]) and older or repeated reports are dropped.
//!
//! A report is applied only to the object the reporting node owns: a node's own Node object, or
//! a pod bound to it with the same uid. (Until the broker enforces per-node topic ACLs, the node
//! name comes from the topic; see the issue notes.)

use crate::clock;
use crate::controllers::node_lifecycle::NODE_STATUS_UNKNOWN;
use crate::pki::Pki;
use crate::store::{update_with, ObjectKey, Store, StoreError};
use protocol::status as seal;
use protocol::status::SealError;
use protocol::status::*;
use protocol::topics::{self, Topic};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};
use wire::backoff::Backoff;

pub use crate::annotations::STATUS_SEQ_ANNOTATION;

/// Number of parallel appliers; reports of one topic always go to the same one, in order.
const WORKERS: usize = 4;

/// Where the broker is.
#[derive(Debug, Clone)]
pub struct MqttTarget {
    /// Host name or IP.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl MqttTarget {
    /// Parses `mqtt://host:port` (or `tcp://`, or bare `host:port`).
    pub fn parse(url: &str) -> Result<Self, String> {
        let (host, port) = topics::parse_broker_url(url)?;
        Ok(Self { host, port })
    }
}

/// Runs the ingest until the process ends: connects (and reconnects) to the broker, subscribes
/// to every node's status topics and applies what arrives.
pub async fn run(store: Arc<dyn Store>, pki: Arc<Pki>, target: MqttTarget, client_id: String) {
    let mut opts = MqttOptions::new(client_id, target.host.clone(), target.port);
    match pki.ingest_password() {
        Ok(password) => {
            opts.set_credentials(crate::pki::INGEST_MQTT_USER, password);
        }
        Err(e) => warn!(error = %e, "no ingest MQTT secret; connecting without credentials"),
    }
    let keys = Arc::new(KeyRing::new(pki));
    opts.set_keep_alive(Duration::from_secs(10));
    opts.set_clean_session(false);
    opts.set_manual_acks(true);
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = AsyncClient::new(opts, 1024);
    let (done_tx, done_rx) = mpsc::unbounded_channel::<Applied>();
    tokio::spawn(ack_in_order(client.clone(), done_rx));
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let (tx, rx) = mpsc::channel::<Applied>(1024);
        tokio::spawn(worker(store.clone(), keys.clone(), rx, done_tx.clone()));
        workers.push(tx);
    }
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    // Connection generation and per-connection receive index: acks are only valid on the
    // connection that delivered the message, and must follow its receive order.
    let (mut generation, mut next_index) = (0u64, 0u64);
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                info!(host = %target.host, port = target.port, "connected to MQTT broker");
                metrics::counter!("skerry_ingest_broker_connections_total").increment(1);
                backoff.reset();
                generation += 1;
                next_index = 0;
                for filter in [topics::NODE_STATUS_FILTER, topics::POD_STATUS_FILTER] {
                    if let Err(e) = client.subscribe(filter, QoS::AtLeastOnce).await {
                        warn!(error = %e, filter, "cannot subscribe");
                    }
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let shard = publish
                    .topic
                    .bytes()
                    .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize))
                    % WORKERS;
                let item = Applied {
                    generation,
                    index: next_index,
                    publish,
                };
                next_index += 1;
                if workers[shard].send(item).await.is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(e) => {
                warn!(error = %e, host = %target.host, port = target.port, "MQTT connection failed; status ingest retries (check that the broker runs and --mqtt-url is right)");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

/// A received message, tagged with where it stands in its connection's receive order.
struct Applied {
    generation: u64,
    index: u64,
    publish: Publish,
}

/// Sends PUBACKs in the order the messages were received, as MQTT 3.1.1 (4.6) requires: the
/// workers finish out of order, and a broker may drop a client that acks out of order (rumqttd
/// does). A message is acked only once it and every message received before it are applied.
async fn ack_in_order(client: AsyncClient, mut done: mpsc::UnboundedReceiver<Applied>) {
    let mut generation = 0u64;
    let mut expected = 0u64;
    let mut finished: std::collections::BTreeMap<u64, Publish> = Default::default();
    while let Some(item) = done.recv().await {
        if item.generation < generation {
            continue; // delivered on a connection that is gone; the broker redelivers it
        }
        if item.generation > generation {
            generation = item.generation;
            expected = 0;
            finished.clear();
        }
        finished.insert(item.index, item.publish);
        while let Some(p) = finished.remove(&expected) {
            expected += 1;
            if let Err(e) = client.ack(&p).await {
                warn!(error = %e, "cannot ack status report");
            }
        }
    }
}

async fn worker(
    store: Arc<dyn Store>,
    keys: Arc<KeyRing>,
    mut rx: mpsc::Receiver<Applied>,
    done: mpsc::UnboundedSender<Applied>,
) {
    while let Some(item) = rx.recv().await {
        let p = &item.publish;
        let started = tokio::time::Instant::now();
        let mut outcome = apply(store.as_ref(), &keys, &p.topic, &p.payload).await;
        // A store failure is retried here rather than left unacked: acks must stay in order, so
        // one unacked message would hold back every later one.
        // Six retries, 50 ms to 1.6 s apart.
        let mut retry = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
        while matches!(outcome, Err(ApplyError::Store(_))) && retry.attempts() < 6 {
            tokio::time::sleep(retry.next_delay()).await;
            outcome = apply(store.as_ref(), &keys, &p.topic, &p.payload).await;
        }
        metrics::histogram!("skerry_ingest_apply_seconds").record(started.elapsed().as_secs_f64());
        match outcome {
            Ok(Outcome::Applied) => {
                metrics::counter!("skerry_ingest_reports_total", "result" => "applied").increment(1)
            }
            Ok(Outcome::Ignored(why)) => {
                debug!(topic = %p.topic, why, "status report ignored");
                metrics::counter!("skerry_ingest_reports_total", "result" => "ignored")
                    .increment(1);
            }
            Err(ApplyError::Invalid(why)) => {
                warn!(topic = %p.topic, why, "invalid status report dropped");
                metrics::counter!("skerry_ingest_reports_total", "result" => "invalid")
                    .increment(1);
            }
            Err(ApplyError::Store(e)) => {
                // The edge reports again on the next change and with every heartbeat.
                error!(topic = %p.topic, error = %e, "status report could not be stored after retries; dropped");
                metrics::counter!("skerry_ingest_reports_total", "result" => "error").increment(1);
            }
        }
        if done.send(item).is_err() {
            return;
        }
    }
}

/// What happened to a report.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Written to the store.
    Applied,
    /// Valid, but stale or about an object that is not there (any more).
    Ignored(&'static str),
}

/// Why a report was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The report is malformed or contradicts its topic; it is dropped.
    #[error("{0}")]
    Invalid(String),
    /// The store failed; the report should be retried.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The nodes' report keys, cached in memory and re-read from the PKI when a key does not
/// verify (the node may have joined again and got a new one).
pub struct KeyRing {
    pki: Arc<Pki>,
    cache: tokio::sync::Mutex<HashMap<String, Vec<u8>>>,
}

impl KeyRing {
    /// A key ring over `pki`.
    pub fn new(pki: Arc<Pki>) -> Self {
        Self {
            pki,
            cache: Default::default(),
        }
    }

    /// Authenticates and decodes a payload that `node`'s topic carried.
    pub async fn open(
        &self,
        node: &str,
        topic: &str,
        payload: &[u8],
    ) -> Result<StatusReport, ApplyError> {
        if self.pki.is_revoked(node) {
            return Err(ApplyError::Invalid(format!(
                "node {node} is revoked; its reports are refused"
            )));
        }
        let cached = self.cache.lock().await.get(node).cloned();
        if let Some(key) = cached {
            match seal::open(&key, topic, payload) {
                Ok(report) => return Ok(report),
                Err(SealError::BadMac) => {}
                Err(e) => return Err(ApplyError::Invalid(e.to_string())),
            }
        }
        let key = self.pki.report_key(node).ok_or_else(|| {
            ApplyError::Invalid(format!(
                "node {node} has no report key: it never joined this cloud"
            ))
        })?;
        let report =
            seal::open(&key, topic, payload).map_err(|e| ApplyError::Invalid(e.to_string()))?;
        self.cache.lock().await.insert(node.to_string(), key);
        Ok(report)
    }
}

/// Applies one MQTT message, after checking that the node its topic names made it.
pub async fn apply(
    store: &dyn Store,
    keys: &KeyRing,
    topic: &str,
    payload: &[u8],
) -> Result<Outcome, ApplyError> {
    let Some(parsed) = topics::parse(topic) else {
        return Err(ApplyError::Invalid(format!(
            "topic {topic:?} is outside the skerry scheme"
        )));
    };
    let node = match &parsed {
        Topic::NodeStatus { node } | Topic::PodStatus { node, .. } => node.clone(),
    };
    let report = keys.open(&node, topic, payload).await?;
    // How long after the edge observed it a report reaches the store: the status lag an admin
    // sees (clocks of edge and cloud are assumed roughly in sync).
    metrics::histogram!("skerry_ingest_report_age_seconds")
        .record(clock::now_ms().saturating_sub(report.observed_at_ms) as f64 / 1000.0);
    if report.protocol_version != protocol::PROTOCOL_VERSION {
        return Err(ApplyError::Invalid(format!(
            "report of protocol v{}, this cloud speaks v{}",
            report.protocol_version,
            protocol::PROTOCOL_VERSION
        )));
    }
    match (parsed, report.body) {
        (Topic::NodeStatus { node }, StatusBody::Node(status)) if status.node == node => {
            apply_node(store, &node, report.seq, report.observed_at_ms, &status).await
        }
        (
            Topic::PodStatus {
                node,
                namespace,
                name,
            },
            StatusBody::Pod(status),
        ) if status.node == node && status.namespace == namespace && status.name == name => {
            apply_pod(store, report.seq, &status).await
        }
        _ => Err(ApplyError::Invalid(
            "report body does not match its topic".into(),
        )),
    }
}

fn seq_of(v: &Value) -> u64 {
    v.pointer("/metadata/annotations")
        .and_then(|a| a.get(STATUS_SEQ_ANNOTATION))
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn set_seq(v: &mut Value, seq: u64) {
    let meta = v
        .as_object_mut()
        .map(|o| o.entry("metadata").or_insert_with(|| json!({})));
    if let Some(meta) = meta.and_then(Value::as_object_mut) {
        let ann = meta.entry("annotations").or_insert_with(|| json!({}));
        if !ann.is_object() {
            *ann = json!({});
        }
        ann[STATUS_SEQ_ANNOTATION] = json!(seq.to_string());
    }
}

fn condition_status(b: bool) -> &'static str {
    if b {
        "True"
    } else {
        "False"
    }
}

async fn apply_node(
    store: &dyn Store,
    node: &str,
    seq: u64,
    observed_ms: u64,
    s: &NodeStatus,
) -> Result<Outcome, ApplyError> {
    let key = ObjectKey::new("nodes", "", node);
    let mut stale = false;
    let res = update_with(store, &key, |current| {
        if seq <= seq_of(current) {
            stale = true;
            return None;
        }
        let mut v = current.clone();
        let heartbeat = clock::rfc3339(observed_ms);
        let status_str = condition_status(s.ready);
        let old_ready = v.pointer("/status/conditions").and_then(Value::as_array).and_then(|cs| {
            cs.iter().find(|c| c["type"] == "Ready").cloned()
        });
        let transition = match &old_ready {
            Some(c) if c["status"] == status_str => c["lastTransitionTime"].clone(),
            _ => json!(heartbeat),
        };
        let ready = json!({
            "type": "Ready", "status": status_str,
            "reason": if s.ready { "KubeletReady" } else { "KubeletNotReady" },
            "message": if s.ready { "edgecore is posting ready status".to_string() } else { s.message.clone() },
            "lastHeartbeatTime": heartbeat, "lastTransitionTime": transition,
        });
        // A fresh report replaces the node lifecycle controller's verdict: its Ready is rewritten
        // below, and the other conditions it marked Unknown (which edgecore does not report)
        // are dropped rather than left Unknown for ever.
        let mut conditions: Vec<Value> = v
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .map(|cs| {
                cs.iter()
                    .filter(|c| c["type"] != "Ready" && c["reason"] != NODE_STATUS_UNKNOWN)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        conditions.push(ready);
        let status = v.as_object_mut()?.entry("status").or_insert_with(|| json!({}));
        if !status.is_object() {
            *status = json!({});
        }
        status["conditions"] = json!(conditions);
        status["addresses"] = json!(s.addresses.iter().map(|(t, a)| json!({"type": t, "address": a})).collect::<Vec<_>>());
        status["capacity"] = json!(s.capacity);
        status["allocatable"] = json!(s.allocatable);
        status["nodeInfo"] = json!({
            "machineID": "", "systemUUID": "", "bootID": "",
            "kernelVersion": s.info.kernel_version, "osImage": s.info.os_image,
            "containerRuntimeVersion": s.info.container_runtime_version,
            "kubeletVersion": s.info.agent_version, "kubeProxyVersion": "",
            "operatingSystem": s.info.operating_system, "architecture": s.info.architecture,
        });
        set_seq(&mut v, seq);
        Some(v)
    })
    .await;
    match res {
        Ok(Some(_)) => Ok(Outcome::Applied),
        Ok(None) if stale => Ok(Outcome::Ignored("stale node report")),
        Ok(None) => Ok(Outcome::Ignored("no change")),
        Err(StoreError::NotFound(_)) => {
            Ok(Outcome::Ignored("node object does not exist (deleted?)"))
        }
        Err(e) => Err(e.into()),
    }
}

fn container_state(s: &ContainerState, id: &str) -> Value {
    match s {
        ContainerState::Waiting { reason, message } => {
            json!({"waiting": {"reason": reason, "message": message}})
        }
        ContainerState::Running { started_at_ms } => {
            json!({"running": {"startedAt": clock::rfc3339(*started_at_ms)}})
        }
        ContainerState::Terminated {
            exit_code,
            signal,
            reason,
            message,
            started_at_ms,
            finished_at_ms,
        } => {
            let mut t = json!({
                "exitCode": exit_code, "reason": reason, "message": message,
                "startedAt": clock::rfc3339(*started_at_ms), "finishedAt": clock::rfc3339(*finished_at_ms),
                "containerID": id,
            });
            if let Some(sig) = signal {
                t["signal"] = json!(sig);
            }
            json!({"terminated": t})
        }
    }
}

/// The Kubernetes `status` for a pod report, keeping what the edge does not own (e.g. the
/// `PodScheduled` condition and `qosClass`).
pub fn pod_status_json(current: &Value, s: &PodStatus) -> Value {
    let mut status: Map<String, Value> = current
        .get("status")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let reported: Vec<&str> = s.conditions.iter().map(|c| c.kind.as_str()).collect();
    let mut conditions: Vec<Value> = status
        .get("conditions")
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .filter(|c| !reported.contains(&c["type"].as_str().unwrap_or("")))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    for c in &s.conditions {
        conditions.push(json!({
            "type": c.kind, "status": condition_status(c.status), "reason": c.reason, "message": c.message,
            "lastProbeTime": Value::Null, "lastTransitionTime": clock::rfc3339(c.last_transition_ms),
        }));
    }
    status.insert("phase".into(), json!(s.phase.as_str()));
    status.insert("conditions".into(), json!(conditions));
    status.insert(
        "containerStatuses".into(),
        json!(s.containers.iter().map(|c| {
            let mut cs = json!({
                "name": c.name, "image": c.image, "imageID": "", "containerID": c.container_id,
                "ready": c.ready, "started": matches!(c.state, ContainerState::Running { .. }),
                "restartCount": c.restart_count, "state": container_state(&c.state, &c.container_id),
                "lastState": {},
            });
            if let Some(last) = &c.last_state {
                cs["lastState"] = container_state(last, "");
            }
            cs
        }).collect::<Vec<_>>()),
    );
    if !s.pod_ip.is_empty() {
        status.insert("podIP".into(), json!(s.pod_ip));
        status.insert("podIPs".into(), json!([{"ip": s.pod_ip}]));
    }
    if !s.host_ip.is_empty() {
        status.insert("hostIP".into(), json!(s.host_ip));
        status.insert("hostIPs".into(), json!([{"ip": s.host_ip}]));
    }
    if s.start_time_ms > 0 {
        status.insert("startTime".into(), json!(clock::rfc3339(s.start_time_ms)));
    }
    for (k, v) in [("reason", &s.reason), ("message", &s.message)] {
        if v.is_empty() {
            status.remove(k);
        } else {
            status.insert(k.into(), json!(v));
        }
    }
    Value::Object(status)
}

async fn apply_pod(store: &dyn Store, seq: u64, s: &PodStatus) -> Result<Outcome, ApplyError> {
    let key = ObjectKey::new("pods", &s.namespace, &s.name);
    // Optimistic concurrency: another writer (the API, the binder) may update the pod between
    // our read and write; re-read and re-check rather than leave the report unapplied.
    for _ in 0..16 {
        let Some(current) = store.get(&key).await? else {
            return Ok(Outcome::Ignored("pod does not exist (deleted?)"));
        };
        if current
            .value
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            != Some(s.uid.as_str())
        {
            return Ok(Outcome::Ignored(
                "report is for an older pod of the same name",
            ));
        }
        if current
            .value
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            != Some(s.node.as_str())
        {
            return Err(ApplyError::Invalid(format!(
                "node {} reported pod {}/{} that is not bound to it",
                s.node, s.namespace, s.name
            )));
        }
        if seq <= seq_of(&current.value) {
            return Ok(Outcome::Ignored("stale pod report"));
        }
        let result = if s.removed {
            if current
                .value
                .pointer("/metadata/deletionTimestamp")
                .is_none()
            {
                return Err(ApplyError::Invalid(format!(
                    "node {} reported pod {}/{} removed, but it is not being deleted",
                    s.node, s.namespace, s.name
                )));
            }
            if crate::api::finalizers::finalizers(&current.value).is_empty() {
                store.delete(&key, Some(current.revision)).await
            } else {
                // Graceful termination is over, but finalizers hold the object: record that
                // (a zero grace period), and the removal of the last finalizer deletes it.
                let mut next = current.value.clone();
                next["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                set_seq(&mut next, seq);
                store.update(&key, next, Some(current.revision)).await
            }
        } else {
            let mut next = current.value.clone();
            next["status"] = pod_status_json(&current.value, s);
            set_seq(&mut next, seq);
            store.update(&key, next, Some(current.revision)).await
        };
        match result {
            Ok(_) => {
                if s.removed {
                    info!(pod = %format!("{}/{}", s.namespace, s.name), held_by_finalizers = !crate::api::finalizers::finalizers(&current.value).is_empty(), "pod removed by its node");
                }
                return Ok(Outcome::Applied);
            }
            Err(StoreError::Conflict { .. }) => continue,
            Err(StoreError::NotFound(_)) => return Ok(Outcome::Ignored("pod deleted meanwhile")),
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApplyError::Store(StoreError::Backend(format!(
        "pod {}/{} kept changing while its status was applied",
        s.namespace, s.name
    ))))
}
