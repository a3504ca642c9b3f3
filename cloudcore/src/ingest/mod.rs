//! Ingest: applies the status that edge nodes publish over MQTT to the store.
//!
//! Delivery up is at-least-once end to end: a report is acknowledged only after the store write
//! it caused is durable. With the embedded broker the acknowledgement goes back to the edge
//! itself (the broker's PUBACK waits for it), so a crash of cloudcore at any moment leaves the
//! report in the edge's outbox; with an external broker cloudcore subscribes with QoS 1 on a
//! persistent session and acknowledges to the broker, which delivers again after a crash. Acks
//! go out in receive order (MQTT 3.1.1, 4.6) although several workers apply reports in
//! parallel. Applying is idempotent: each object remembers the position of the last report
//! applied (annotation [`STATUS_SEQ_ANNOTATION`]) and older or repeated reports are dropped.
//!
//! A report is applied only to the object the reporting node owns: a node's own Node object, or
//! a pod bound to it with the same uid. The node is the one the topic names; both brokers let a
//! node publish only under its own topics (see `broker::acl` and the generated mosquitto ACL),
//! and the report's MAC under that node's current key proves it once more, end to end.
//!
//! Reports are ordered per object by (join epoch, sequence number) ([`StatusSeq`]): a node that
//! joined again starts a new sequence space, whatever its clock says.
//!
//! Every write goes through the in-process API client as [`identity::INGEST`], as kubelet's go
//! through kube-apiserver: reports are `/status` updates conditional on the revision read (the
//! API validates them, and its `/status` path is where the sequence guard is enforced, see
//! [`crate::annotations::status_seq_write`]); a pod the edge has stopped for good is deleted
//! with grace period 0 and a uid precondition, kubelet's final `DELETE`, so the API's own
//! finalizer rule decides whether it goes now or waits for its finalizers.

mod ack_order;
mod events;

use crate::annotations::{set_status_seq, status_seq, StatusSeq};
use crate::api::client::{identity, Client, DeleteOptions};
use crate::api::ApiError;
use crate::clock;
use crate::controllers::node_lifecycle::NODE_STATUS_UNKNOWN;
use crate::pki::Pki;
use ack_order::AckOrder;
use protocol::status as seal;
use protocol::status::SealError;
use protocol::status::*;
use protocol::topics::{self, Topic};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};
use wire::backoff::Backoff;

pub use crate::annotations::STATUS_SEQ_ANNOTATION;

/// Number of parallel appliers; reports of one topic always go to the same one, in order.
const WORKERS: usize = 4;

/// The rate limit of the "invalid report dropped" warning, per node.
fn dropped_log() -> &'static crate::log_limit::SharedLogLimiter<String> {
    static LOG: std::sync::OnceLock<crate::log_limit::SharedLogLimiter<String>> =
        std::sync::OnceLock::new();
    LOG.get_or_init(|| crate::log_limit::SharedLogLimiter::new(Duration::from_secs(1)))
}

/// Where the reports come from.
pub enum Source {
    /// The embedded broker in this process: each report comes with its own completion, and the
    /// broker acknowledges it to the edge only once it is final here.
    Embedded(crate::broker::IntakeReceiver),
    /// An external broker, subscribed to as an MQTT client over TLS.
    External(MqttTarget),
}

/// Where an external broker is.
#[derive(Debug, Clone)]
pub struct MqttTarget {
    /// Host name or IP (also the TLS name its certificate must carry).
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl MqttTarget {
    /// Parses `mqtts://host:port` (see [`topics::parse_broker_url`]).
    pub fn parse(url: &str) -> Result<Self, String> {
        let (host, port) = topics::parse_broker_url(url)?;
        Ok(Self { host, port })
    }
}

/// Runs the ingest until the process ends: takes reports from `source` and applies them.
pub async fn run(api: crate::api::ApiState, pki: Arc<Pki>, source: Arc<Source>, client_id: String) {
    let client = Client::with_identity(api, identity::INGEST);
    let (done_tx, done_rx) = mpsc::unbounded_channel::<Applied>();
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let (tx, rx) = mpsc::channel::<Applied>(1024);
        tokio::spawn(worker(client.clone(), pki.clone(), rx, done_tx.clone()));
        workers.push(tx);
    }
    match source.as_ref() {
        Source::Embedded(intake) => {
            drop(done_rx);
            let mut intake = intake.lock().await;
            while let Some(d) = intake.recv().await {
                let item = Applied {
                    topic: d.topic,
                    payload: d.payload,
                    ack: Ack::Embedded {
                        done: d.done,
                        _permit: d.permit,
                    },
                };
                if workers[shard(&item.topic)].send(item).await.is_err() {
                    return;
                }
            }
        }
        Source::External(target) => {
            subscribe_external(&pki, target, client_id, &workers, done_rx).await
        }
    }
}

/// The worker a topic's reports go to: always the same one, so they apply in order. A pod's
/// status and events go to the same worker (the shard is the topic without its last part), so
/// events recorded before a pod's final status are written before it deletes the pod.
fn shard(topic: &str) -> usize {
    let object = topic.rsplit_once('/').map_or(topic, |(object, _)| object);
    object
        .bytes()
        .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize))
        % WORKERS
}

/// Subscribes to an external broker over TLS with the ingest's certificate, on a persistent
/// session with manual acknowledgements, and feeds the workers until the process ends.
async fn subscribe_external(
    pki: &Pki,
    target: &MqttTarget,
    client_id: String,
    workers: &[mpsc::Sender<Applied>],
    done_rx: mpsc::UnboundedReceiver<Applied>,
) {
    let mut opts = MqttOptions::new(client_id, target.host.clone(), target.port);
    match pki.ingest_client_tls() {
        Ok(tls) => {
            opts.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(Arc::new(tls)),
            ));
        }
        Err(e) => {
            error!(error = %e, "cannot set up the ingest's TLS identity; status ingest stopped");
            return;
        }
    }
    opts.set_keep_alive(Duration::from_secs(10));
    opts.set_clean_session(false);
    opts.set_manual_acks(true);
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (mqtt, mut eventloop) = AsyncClient::new(opts, 1024);
    tokio::spawn(ack_in_order(mqtt.clone(), done_rx));
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
                for filter in [
                    topics::NODE_STATUS_FILTER,
                    topics::POD_STATUS_FILTER,
                    topics::POD_EVENTS_FILTER,
                ] {
                    if let Err(e) = mqtt.subscribe(filter, QoS::AtLeastOnce).await {
                        warn!(error = %e, filter, "cannot subscribe");
                    }
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let item = Applied {
                    topic: publish.topic.clone(),
                    payload: publish.payload.clone(),
                    ack: Ack::External {
                        generation,
                        index: next_index,
                        publish,
                    },
                };
                next_index += 1;
                if workers[shard(&item.topic)].send(item).await.is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(e) => {
                warn!(error = %e, host = %target.host, port = target.port, "MQTT connection failed; status ingest retries (check that the broker runs, --mqtt-url is right and the broker's certificate is from the cluster CA)");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

/// A received report and how to acknowledge it once final.
struct Applied {
    topic: String,
    payload: bytes::Bytes,
    ack: Ack,
}

/// How a report is acknowledged.
enum Ack {
    /// To the embedded broker, which then sends the edge its PUBACK; the permit is the
    /// report's share of the broker's in-flight bytes.
    Embedded {
        done: tokio::sync::oneshot::Sender<()>,
        _permit: tokio::sync::OwnedSemaphorePermit,
    },
    /// To an external broker, in its connection's receive order.
    External {
        generation: u64,
        index: u64,
        publish: Publish,
    },
}

/// Sends PUBACKs in the order the messages were received, as MQTT 3.1.1 (4.6) requires: the
/// workers finish out of order, and a broker may drop a client that acks out of order. A
/// message is acked only once it and every message received before it are applied; the rule is
/// [`AckOrder`]'s.
async fn ack_in_order(client: AsyncClient, mut done: mpsc::UnboundedReceiver<Applied>) {
    let mut order = AckOrder::default();
    while let Some(item) = done.recv().await {
        let Ack::External {
            generation,
            index,
            publish,
        } = item.ack
        else {
            continue;
        };
        for p in order.finished(generation, index, publish) {
            if let Err(e) = client.ack(&p).await {
                warn!(error = %e, "cannot ack status report");
            }
        }
    }
}

async fn worker(
    client: Client,
    pki: Arc<Pki>,
    mut rx: mpsc::Receiver<Applied>,
    done: mpsc::UnboundedSender<Applied>,
) {
    while let Some(item) = rx.recv().await {
        let (topic, payload) = (&item.topic, &item.payload);
        let started = tokio::time::Instant::now();
        let outcome = until_durable(topic, || apply(&client, &pki, topic, payload)).await;
        metrics::histogram!("skerry_ingest_apply_seconds").record(started.elapsed().as_secs_f64());
        match outcome {
            Ok(Outcome::Applied) => {
                metrics::counter!("skerry_ingest_reports_total", "result" => "applied").increment(1)
            }
            Ok(Outcome::Ignored(why)) => {
                debug!(%topic, why, "status report ignored");
                metrics::counter!("skerry_ingest_reports_total", "result" => "ignored")
                    .increment(1);
            }
            Err(ApplyError::Invalid(why)) => {
                // One line per node a second at most: a node (or a forger) sending garbage
                // fast costs the counter, not the disk.
                let source: String = topic
                    .split('/')
                    .nth(3)
                    .unwrap_or("")
                    .chars()
                    .take(64)
                    .collect();
                if let Some(held_back) = dropped_log().allow(source) {
                    warn!(%topic, why, held_back, "invalid status report dropped");
                }
                metrics::counter!("skerry_ingest_reports_total", "result" => "invalid")
                    .increment(1);
            }
            Err(ApplyError::Write(e)) => {
                // `until_durable` returns only what retrying cannot change.
                error!(%topic, error = %e, "status report could not be written; dropped");
                metrics::counter!("skerry_ingest_reports_total", "result" => "error").increment(1);
            }
        }
        match item.ack {
            Ack::Embedded { done, .. } => {
                let _ = done.send(());
            }
            external => {
                let item = Applied {
                    ack: external,
                    ..item
                };
                if done.send(item).is_err() {
                    return;
                }
            }
        }
    }
}

/// Longest pause between two attempts to write one report.
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Applies a report until the outcome is final: written (durable), ignored, or refused as
/// invalid. A write that failed for a reason that may pass (the store, a conflict that kept
/// recurring) is retried with back-off for as long as it takes, never acknowledged unwritten:
/// an ack tells the broker to forget the report, and the status would be lost until the pod
/// changed. Acks go out in order, so the messages behind it wait too; that is the truth (the
/// store is not taking writes), which the retry counter and the log say.
async fn until_durable<F, Fut>(topic: &str, mut apply: F) -> Result<Outcome, ApplyError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Outcome, ApplyError>>,
{
    let mut retry = Backoff::new(Duration::from_millis(50), RETRY_MAX);
    loop {
        match apply().await {
            Err(ApplyError::Write(e)) => {
                metrics::counter!("skerry_ingest_write_retries_total").increment(1);
                // Once, then about every minute and a half at the longest back-off.
                if retry.attempts().is_multiple_of(16) {
                    warn!(topic, error = %e, attempts = retry.attempts() + 1, "status report not written yet; retrying (it stays unacknowledged until it is)");
                }
                tokio::time::sleep(retry.next_delay()).await;
            }
            other => return other,
        }
    }
}

/// What happened to a report.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Written through the API.
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
    /// The write failed for a reason that may pass (the store, a conflict that kept
    /// recurring); the report should be retried.
    #[error(transparent)]
    Write(ApiError),
}

impl From<ApiError> for ApplyError {
    /// The API refusing the report itself (it would make an invalid object) is final: retrying
    /// the same bytes cannot help, and the edge reports afresh on its next change.
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::Invalid { .. } | ApiError::BadRequest { .. } | ApiError::Forbidden { .. } => {
                ApplyError::Invalid(e.to_string())
            }
            e => ApplyError::Write(e),
        }
    }
}

/// Authenticates and decodes a payload that `node`'s topic carried, under the node's current
/// report key; returns it with the key's epoch. The key is the one the last join issued, held
/// in memory by the PKI and replaced by the join itself, so a previous life's reports stop
/// verifying at once.
pub fn open_report(
    pki: &Pki,
    node: &str,
    topic: &str,
    payload: &[u8],
) -> Result<(StatusReport, u64), ApplyError> {
    if pki.is_revoked(node) {
        return Err(ApplyError::Invalid(format!(
            "node {node} is revoked; its reports are refused"
        )));
    }
    let creds = pki.node_credentials(node).ok_or_else(|| {
        ApplyError::Invalid(format!(
            "node {node} has no report key: it never joined this cloud"
        ))
    })?;
    let report = seal::open(&creds.report_key, topic, payload).map_err(|e| match e {
        SealError::BadMac => ApplyError::Invalid(format!(
            "report does not verify under node {node}'s current key (forged, or from before its last join)"
        )),
        e => ApplyError::Invalid(e.to_string()),
    })?;
    Ok((report, creds.epoch))
}

/// Applies one MQTT message, after checking that the node its topic names made it.
pub async fn apply(
    client: &Client,
    pki: &Pki,
    topic: &str,
    payload: &[u8],
) -> Result<Outcome, ApplyError> {
    let Some(parsed) = topics::parse(topic) else {
        return Err(ApplyError::Invalid(format!(
            "topic {topic:?} is outside the skerry scheme"
        )));
    };
    let node = parsed.node().to_string();
    let (report, epoch) = open_report(pki, &node, topic, payload)?;
    let seq = StatusSeq::new(epoch, report.seq);
    // How long after the edge observed it a report reaches the store: the status lag an admin
    // sees (clocks of edge and cloud are assumed roughly in sync).
    metrics::histogram!("skerry_ingest_report_age_seconds")
        .record(clock::now_ms().saturating_sub(report.observed_at_ms) as f64 / 1000.0);
    // `open` read the report in its own version's shapes (this one or the one before).
    match (parsed, report.body) {
        (Topic::NodeStatus { node }, StatusBody::Node(status)) if status.node == node => {
            let r = NodeReport {
                seq,
                observed_ms: report.observed_at_ms,
                edge_version: report.protocol_version,
                status: &status,
            };
            apply_node(client, &node, r).await
        }
        (
            Topic::PodStatus {
                node,
                namespace,
                name,
            },
            StatusBody::Pod(status),
        ) if status.node == node && status.namespace == namespace && status.name == name => {
            apply_pod(client, seq, &status).await
        }
        (
            Topic::PodEvents {
                node,
                namespace,
                name,
            },
            StatusBody::Events(ev),
        ) if ev.node == node && ev.namespace == namespace && ev.name == name => {
            events::apply_events(client, &node, &ev).await
        }
        _ => Err(ApplyError::Invalid(
            "report body does not match its topic".into(),
        )),
    }
}

fn condition_status(b: bool) -> &'static str {
    if b {
        "True"
    } else {
        "False"
    }
}

/// The node condition that tells an admin the edge speaks an older protocol than the cloud
/// (served, but it should be upgraded before the cloud's next upgrade leaves it behind).
pub const EDGE_VERSION_SKEW: &str = "EdgeVersionSkew";

/// A node report as the ingest applies it.
struct NodeReport<'a> {
    seq: StatusSeq,
    observed_ms: u64,
    /// The protocol version the edge reported in.
    edge_version: u32,
    status: &'a NodeStatus,
}

/// The node's conditions after a report: each reported one (keeping its
/// `lastTransitionTime` while its status stays), the version-skew verdict, and those the
/// report does not concern (set by others), except the `Unknown`s the node lifecycle
/// controller wrote while the node was silent, which a fresh report overrides.
fn node_conditions(old: Option<&Value>, r: &NodeReport<'_>) -> Vec<Value> {
    let heartbeat = clock::rfc3339(r.observed_ms);
    let old: Vec<Value> = old.and_then(Value::as_array).cloned().unwrap_or_default();
    let mut fresh: Vec<(String, &'static str, String, String)> = r
        .status
        .conditions
        .iter()
        .map(|c| {
            (
                c.kind.as_str().to_string(),
                condition_status(c.status),
                c.reason.clone(),
                c.message.clone(),
            )
        })
        .collect();
    let skew = if r.edge_version < protocol::PROTOCOL_VERSION {
        (
            "True",
            "EdgeProtocolOlder",
            format!(
                "edgecore speaks protocol v{}, cloudcore v{}: upgrade edgecore before the next cloudcore upgrade, which will refuse it",
                r.edge_version,
                protocol::PROTOCOL_VERSION
            ),
        )
    } else {
        (
            "False",
            "EdgeProtocolCurrent",
            "edgecore and cloudcore speak the same protocol".to_string(),
        )
    };
    fresh.push((
        EDGE_VERSION_SKEW.to_string(),
        skew.0,
        skew.1.to_string(),
        skew.2,
    ));
    let mut out: Vec<Value> = old
        .iter()
        .filter(|c| {
            c["reason"] != NODE_STATUS_UNKNOWN
                && !fresh.iter().any(|(t, ..)| c["type"] == t.as_str())
        })
        .cloned()
        .collect();
    for (kind, status, reason, message) in fresh {
        let transition = match old.iter().find(|c| c["type"] == kind.as_str()) {
            Some(c) if c["status"] == status => c["lastTransitionTime"].clone(),
            _ => json!(heartbeat),
        };
        out.push(json!({
            "type": kind, "status": status, "reason": reason, "message": message,
            "lastHeartbeatTime": heartbeat, "lastTransitionTime": transition,
        }));
    }
    out
}

async fn apply_node(client: &Client, node: &str, r: NodeReport<'_>) -> Result<Outcome, ApplyError> {
    let mut stale = false;
    let s = r.status;
    let seq = r.seq;
    let res = client
        .update_status_with("nodes", "", node, |current| {
            if seq <= status_seq(current) {
                stale = true;
                return None;
            }
            let mut v = current.clone();
            let conditions = node_conditions(v.pointer("/status/conditions"), &r);
            let status = v
                .as_object_mut()?
                .entry("status")
                .or_insert_with(|| json!({}));
            if !status.is_object() {
                *status = json!({});
            }
            status["conditions"] = json!(conditions);
            status["addresses"] = json!(s
                .addresses
                .iter()
                .map(|(t, a)| json!({"type": t, "address": a}))
                .collect::<Vec<_>>());
            status["capacity"] = json!(s.capacity);
            status["allocatable"] = json!(s.allocatable);
            status["nodeInfo"] = json!({
                "machineID": "", "systemUUID": "", "bootID": "",
                "kernelVersion": s.info.kernel_version, "osImage": s.info.os_image,
                "containerRuntimeVersion": s.info.container_runtime_version,
                "kubeletVersion": s.info.agent_version, "kubeProxyVersion": "",
                "operatingSystem": s.info.operating_system, "architecture": s.info.architecture,
            });
            set_status_seq(&mut v, seq);
            Some(v)
        })
        .await;
    match res {
        Ok(Some(_)) => Ok(Outcome::Applied),
        Ok(None) if stale => Ok(Outcome::Ignored("stale node report")),
        Ok(None) => Ok(Outcome::Ignored("no change")),
        Err(ApiError::NotFound { .. }) => {
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
    let statuses = |list: &[protocol::status::ContainerStatus]| {
        json!(list.iter().map(|c| {
            let mut cs = json!({
                "name": c.name, "image": c.image, "imageID": c.image_id, "containerID": c.container_id,
                "ready": c.ready, "started": matches!(c.state, ContainerState::Running { .. }),
                "restartCount": c.restart_count, "state": container_state(&c.state, &c.container_id),
                "lastState": {},
            });
            if let Some(last) = &c.last_state {
                cs["lastState"] = container_state(last, "");
            }
            cs
        }).collect::<Vec<_>>())
    };
    status.insert("containerStatuses".into(), statuses(&s.containers));
    // `initContainerStatuses` (what `kubectl get pod` reads for `Init:x/y`), only for a pod
    // that has init containers, as Kubernetes writes it.
    if s.init_containers.is_empty() {
        status.remove("initContainerStatuses");
    } else {
        status.insert("initContainerStatuses".into(), statuses(&s.init_containers));
    }
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

/// Whether pod report `s` (sequence `seq`) may be applied over `current`: it must be about this
/// very pod (same uid), bound to the reporting node, and newer than what was applied.
/// Why a pod report does not apply: the `Err` of what [`apply`] answers, or its `Ok`.
type NotApplied = Result<Outcome, ApplyError>;

fn pod_report_applies(current: &Value, seq: StatusSeq, s: &PodStatus) -> Result<(), NotApplied> {
    if current.pointer("/metadata/uid").and_then(Value::as_str) != Some(s.uid.as_str()) {
        return Err(Ok(Outcome::Ignored(
            "report is for an older pod of the same name",
        )));
    }
    if current.pointer("/spec/nodeName").and_then(Value::as_str) != Some(s.node.as_str()) {
        return Err(Err(ApplyError::Invalid(format!(
            "node {} reported pod {}/{} that is not bound to it",
            s.node, s.namespace, s.name
        ))));
    }
    if seq <= status_seq(current) {
        return Err(Ok(Outcome::Ignored("stale pod report")));
    }
    Ok(())
}

async fn apply_pod(client: &Client, seq: StatusSeq, s: &PodStatus) -> Result<Outcome, ApplyError> {
    if s.removed {
        remove_pod(client, seq, s).await
    } else {
        let mut verdict = Ok(());
        let res = client
            .update_status_with("pods", &s.namespace, &s.name, |current| {
                verdict = pod_report_applies(current, seq, s);
                verdict.as_ref().ok()?;
                let mut next = current.clone();
                next["status"] = pod_status_json(current, s);
                set_status_seq(&mut next, seq);
                Some(next)
            })
            .await;
        match res {
            Ok(Some(_)) => Ok(Outcome::Applied),
            Ok(None) => verdict.map_or_else(|not| not, |()| Ok(Outcome::Ignored("no change"))),
            Err(ApiError::NotFound { .. }) => Ok(Outcome::Ignored("pod does not exist (deleted?)")),
            Err(e) => Err(e.into()),
        }
    }
}

/// A pod the edge has stopped for good: the edge's final delete, as kubelet's. Graceful
/// termination is over (grace period 0), and the uid precondition keeps the delete off a
/// successor of the same name. Finalizers, if any, hold the object with a zero grace period,
/// and the removal of the last one deletes it (the API's rule, not one of the ingest's own).
async fn remove_pod(client: &Client, seq: StatusSeq, s: &PodStatus) -> Result<Outcome, ApplyError> {
    let Some(current) = client.get("pods", &s.namespace, &s.name).await? else {
        return Ok(Outcome::Ignored("pod does not exist (deleted?)"));
    };
    if let Err(not) = pod_report_applies(&current, seq, s) {
        return not;
    }
    if current.pointer("/metadata/deletionTimestamp").is_none() {
        return Err(ApplyError::Invalid(format!(
            "node {} reported pod {}/{} removed, but it is not being deleted",
            s.node, s.namespace, s.name
        )));
    }
    let opts = DeleteOptions {
        propagation: None,
        uid: Some(&s.uid),
        grace_period_seconds: Some(0),
    };
    match client
        .delete_with("pods", &s.namespace, &s.name, opts)
        .await
    {
        Ok(()) => {
            let held = !crate::api::finalizers::finalizers(&current).is_empty();
            info!(pod = %format!("{}/{}", s.namespace, s.name), held_by_finalizers = held, "pod removed by its node");
            Ok(Outcome::Applied)
        }
        Err(ApiError::NotFound { .. }) => Ok(Outcome::Ignored("pod deleted meanwhile")),
        // The uid precondition failed: a successor of the same name took its place meanwhile.
        Err(ApiError::Conflict { .. }) => Ok(Outcome::Ignored(
            "report is for an older pod of the same name",
        )),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests;
