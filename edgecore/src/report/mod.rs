//! Status reporting: a durable, coalescing outbox published to MQTT with QoS 1.
//!
//! Pod workers and the heartbeat put reports into the outbox (a sled tree in the cache's
//! database), keyed by topic: a newer report of the same object replaces an unsent older one, so
//! an edge that was offline for a day sends one report per pod, not a day of history. Entries are
//! published oldest first and removed only when the broker acknowledges them (PUBACK), and only if
//! no newer report replaced them meanwhile: at-least-once, in order, across crashes. Every report
//! carries a sequence number that grows across restarts, so the cloud drops stale duplicates.
//!
//! The last acknowledged report of every pod is kept too, and queued again whenever the broker
//! connection is re-established: while the node was unreachable the cloud may have rewritten
//! what it shows (the node lifecycle controller marks the pods of a silent node not ready), and
//! a pod whose state did not change would otherwise never correct it.

mod outbox;
pub mod outbox_rules;

pub use outbox::Outbox;

use protocol::codec;
use protocol::status::{self, *};
use protocol::topics;
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tracing::{debug, info, warn};

/// Most reports published and not yet acknowledged at once.
const MAX_IN_FLIGHT: usize = 64;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Where and how to publish.
#[derive(Debug, Clone)]
pub struct PublisherConfig {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// This node's name: the source of the client id (the broker takes the identity itself
    /// from the certificate).
    pub node: String,
    /// The report key from the join: seals every report.
    pub report_key: Vec<u8>,
    /// TLS with the node's certificate (see `identity::mqtt_client_tls`).
    pub tls: Arc<rustls::ClientConfig>,
    /// Notified at each CONNACK: the sync link's [`crate::link::LinkConfig::wake`], the
    /// converse of the link waking the publisher.
    pub connected: Arc<tokio::sync::Notify>,
    /// MQTT keep-alive: how long the connection may stay silent.
    pub keep_alive: Duration,
    /// How long a published report may wait for its PUBACK before the connection is dropped.
    pub ack_timeout: Duration,
}

/// Why a broker connection ended.
#[derive(Debug, thiserror::Error)]
enum SessionEnd {
    #[error(transparent)]
    Connection(#[from] rumqttc::ConnectionError),
    /// A report waited past the deadline for its PUBACK: what we send arrives nowhere, or the
    /// broker's answers do not reach us (a link cut towards the edge keeps TCP looking alive
    /// for many minutes).
    #[error("no acknowledgement of a status report for {0:?}: the status link is cut or the broker stalled")]
    AckTimeout(Duration),
    /// The sync link connected anew while reports waited for their PUBACK: the cloud is back,
    /// and this TCP connection most likely sits in the retransmission back-off of the cut that
    /// just healed (seconds between tries by then); a fresh connection is faster.
    #[error("the cloud is back while status reports wait for their acknowledgement on an old connection")]
    StaleAfterLinkBack,
}

/// How old the oldest unacknowledged report must be, when the sync link connects anew, for the
/// broker connection to be taken as stuck (see [`SessionEnd::StaleAfterLinkBack`]).
const STALE_AFTER_LINK_BACK: Duration = Duration::from_secs(1);

/// How soon a connect that found no broker at all (a timeout, a refused or unroutable TCP
/// connect) is tried again. Such a try costs the cloud nothing (its SYNs never arrive, or a
/// RST answers them), and the try itself already lasts rumqttc's 5 s connect timeout, during
/// which the kernel resends the SYN after 1 s and 3 s. With a 1 s pause a partition's heal
/// finds the next SYN within 3 s (1.2 s on average) instead of a back-off step of up to 15 s;
/// and the CONNACK wakes the sync link (`LinkConfig::wake`). Failures past the TCP connect
/// (TLS, a refusal) keep the exponential back-off: they cost the broker a handshake each.
const UNREACHABLE_RETRY: Duration = Duration::from_secs(1);

/// Publishes the outbox forever, reconnecting with back-off (200 ms doubling to 10 s; 1 s
/// after a connect that reached no broker, see [`UNREACHABLE_RETRY`]).
///
/// The back-off is cut short when the sync link (`link`) connects anew: the broker usually lives
/// in cloudcore with the hub, so a hub that is back (after a restart, or at the end of a
/// partition) most likely means a broker that is back, and the statuses queued meanwhile should
/// not wait out a back-off step of up to 10 s. Only a new connection wakes the publisher, so a
/// broker that is down while the link stays up is still retried at the back-off's pace.
pub async fn publish(
    outbox: Outbox,
    cfg: PublisherConfig,
    mut link: tokio::sync::watch::Receiver<crate::link::LinkState>,
) {
    let mut backoff =
        crate::link::reconnect_backoff(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        let mut unreachable = false;
        match publish_session(&outbox, &cfg, &mut link).await {
            Ok(()) => backoff.reset(),
            Err(e @ (SessionEnd::AckTimeout(_) | SessionEnd::StaleAfterLinkBack)) => {
                warn!(error = %e, queued = outbox.len(), "reconnecting to the MQTT broker; status stays queued in the outbox");
                // The connection was up: its back-off step starts over.
                backoff.reset();
            }
            Err(e) => {
                unreachable = matches!(
                    e,
                    SessionEnd::Connection(
                        rumqttc::ConnectionError::NetworkTimeout | rumqttc::ConnectionError::Io(_)
                    )
                );
                warn!(error = %e, host = %cfg.host, port = cfg.port, queued = outbox.len(), "MQTT broker unreachable; status stays queued in the outbox")
            }
        }
        link.borrow_and_update();
        let link_back = async {
            loop {
                if link.changed().await.is_err() {
                    // The link's sender is gone: nothing will wake us.
                    std::future::pending::<()>().await;
                }
                if *link.borrow_and_update() == crate::link::LinkState::Connected {
                    return;
                }
            }
        };
        let delay = if unreachable {
            UNREACHABLE_RETRY
        } else {
            backoff.next_delay()
        };
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = link_back => {
                debug!("the cloud link connected again: reconnecting to the broker now");
            }
        }
    }
}

/// One broker connection. A fresh client per connection, so nothing stale is re-sent by the
/// client library behind the outbox's back: after a reconnect the outbox republishes what is
/// still unacknowledged.
async fn publish_session(
    outbox: &Outbox,
    cfg: &PublisherConfig,
    link: &mut tokio::sync::watch::Receiver<crate::link::LinkState>,
) -> Result<(), SessionEnd> {
    link.borrow_and_update();
    let mut link_open = true;
    let mut opts = MqttOptions::new(
        status::mqtt_client_id(&cfg.node),
        cfg.host.clone(),
        cfg.port,
    );
    opts.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(cfg.tls.clone()),
    ));
    opts.set_keep_alive(cfg.keep_alive);
    opts.set_clean_session(true);
    opts.set_inflight(MAX_IN_FLIGHT as u16);
    let (client, mut eventloop) = AsyncClient::new(opts, MAX_IN_FLIGHT * 2);
    let mut connected = false;
    // Publishes handed to the client, waiting for their packet id.
    let mut requested: VecDeque<(String, u64)> = VecDeque::new();
    let mut in_flight: HashMap<u16, (String, u64)> = HashMap::new();
    // When each in-flight publish went out, oldest first (packet ids are handed out in order).
    let mut out_since: VecDeque<(u16, tokio::time::Instant)> = VecDeque::new();
    let mut sent: HashMap<String, u64> = HashMap::new();
    loop {
        if connected && requested.len() + in_flight.len() < MAX_IN_FLIGHT {
            // Make what we are about to publish durable first: a report the broker has is never
            // one a crash could take back.
            let batch = outbox.pending(MAX_IN_FLIGHT - requested.len() - in_flight.len(), &sent);
            if !batch.is_empty() {
                if let Err(e) = outbox.db.flush_async().await {
                    warn!(error = %e, "cannot flush the outbox");
                }
            }
            for (seq, topic, report) in batch {
                // The outbox holds plain reports; sealing happens here so that a new key after a
                // re-join applies to what is still queued.
                let payload = match codec::decode::<StatusReport>(&report)
                    .map_err(|e| e.to_string())
                    .and_then(|r| {
                        status::seal(&cfg.report_key, &topic, &r).map_err(|e| e.to_string())
                    }) {
                    Ok(p) => p,
                    Err(e) => {
                        warn!(%topic, error = %e, "dropping an outbox entry that cannot be sealed");
                        outbox.acked(&topic, seq);
                        continue;
                    }
                };
                let kind = if topic.ends_with("/events") {
                    "events"
                } else {
                    "status"
                };
                metrics::counter!("skerry_edge_report_bytes_total", "kind" => kind)
                    .increment(payload.len() as u64);
                if client
                    .try_publish(topic.clone(), QoS::AtLeastOnce, false, payload)
                    .is_err()
                {
                    break;
                }
                sent.insert(topic.clone(), seq);
                requested.push_back((topic, seq));
            }
        }
        tokio::select! {
            ev = eventloop.poll() => match ev? {
                Event::Incoming(Packet::ConnAck(_)) => {
                    let requeued = outbox.requeue_published();
                    cfg.connected.notify_waiters();
                    info!(host = %cfg.host, port = cfg.port, queued = outbox.len(), requeued, "connected to MQTT broker");
                    connected = true;
                }
                Event::Outgoing(Outgoing::Publish(pkid)) => {
                    if let Some(entry) = requested.pop_front() {
                        in_flight.insert(pkid, entry);
                        out_since.push_back((pkid, tokio::time::Instant::now()));
                    }
                }
                Event::Incoming(Packet::PubAck(ack)) => {
                    out_since.retain(|(id, _)| *id != ack.pkid);
                    if let Some((topic, seq)) = in_flight.remove(&ack.pkid) {
                        debug!(%topic, seq, "status report acknowledged");
                        metrics::counter!("skerry_edge_reports_published_total").increment(1);
                        outbox.acked(&topic, seq);
                        if sent.get(&topic) == Some(&seq) {
                            sent.remove(&topic);
                        }
                    }
                }
                _ => {}
            },
            // Neither wake-up while connecting: rumqttc's connect (TCP, TLS handshake, CONNACK)
            // is not cancel-safe, and a wake-up in the middle of it dropped the half-open
            // connection and started over (a reset the broker sees at every start with reports
            // queued, or when the cloud link comes up in the same milliseconds). A link change
            // seen late loses nothing: it only matters for publishes in flight, and there are
            // none before CONNACK.
            _ = outbox.wake.notified(), if connected => {}
            changed = link.changed(), if link_open && connected => {
                link_open = changed.is_ok();
                let back = link_open && *link.borrow_and_update() == crate::link::LinkState::Connected;
                if back && out_since.front().is_some_and(|(_, at)| at.elapsed() >= STALE_AFTER_LINK_BACK) {
                    metrics::counter!("skerry_edge_mqtt_stale_reconnects_total").increment(1);
                    return Err(SessionEnd::StaleAfterLinkBack);
                }
            }
            () = ack_deadline(out_since.front().map(|(_, at)| *at + cfg.ack_timeout)) => {
                metrics::counter!("skerry_edge_mqtt_ack_timeouts_total").increment(1);
                return Err(SessionEnd::AckTimeout(cfg.ack_timeout));
            }
        }
    }
}

/// Sleeps until `at`, or forever when nothing is waiting for an acknowledgement.
async fn ack_deadline(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// What the node offers pods: `--max-pods` and what `--system-reserved` holds back from the
/// machine (kubelet's allocatable = capacity - reserved).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// Most pods the node runs.
    pub max_pods: u32,
    /// CPU held back for the system, in millicores.
    pub reserved_cpu_millis: u64,
    /// Memory held back for the system, in bytes.
    pub reserved_memory_bytes: u64,
}

impl Default for Capacity {
    fn default() -> Self {
        Self {
            max_pods: 110,
            reserved_cpu_millis: 0,
            reserved_memory_bytes: 0,
        }
    }
}

impl Capacity {
    /// Parses kubelet's `--system-reserved` syntax (`cpu=500m,memory=1Gi`).
    pub fn parse_reserved(&mut self, spec: &str) -> Result<(), String> {
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: expected RESOURCE=QUANTITY"))?;
            match name {
                "cpu" => {
                    self.reserved_cpu_millis = match value.strip_suffix('m') {
                        Some(m) => m.parse().ok(),
                        None => value.parse::<u64>().ok().map(|c| c * 1000),
                    }
                    .ok_or_else(|| format!("{part:?}: cpu is cores (2) or millicores (500m)"))?
                }
                "memory" => {
                    self.reserved_memory_bytes = crate::node_health::parse_quantity(value)
                        .ok_or_else(|| {
                            format!("{part:?}: memory is a quantity such as 512Mi or 1G")
                        })?
                }
                other => {
                    return Err(format!(
                        "{other:?} cannot be reserved; supported: cpu, memory"
                    ))
                }
            }
        }
        Ok(())
    }
}

/// Facts about this machine for the node report, with the measured `conditions`.
pub fn node_status(
    node: &str,
    host_ip: &str,
    runtime_version: &str,
    capacity_cfg: Capacity,
    conditions: Vec<NodeCondition>,
) -> NodeStatus {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(0);
    let pods = capacity_cfg.max_pods.to_string();
    let capacity = std::collections::BTreeMap::from([
        ("cpu".to_string(), cpus.to_string()),
        ("memory".to_string(), format!("{mem_kib}Ki")),
        ("pods".to_string(), pods.clone()),
    ]);
    let cpu_millis = (cpus as u64 * 1000).saturating_sub(capacity_cfg.reserved_cpu_millis);
    let mem_alloc_kib = mem_kib.saturating_sub(capacity_cfg.reserved_memory_bytes / 1024);
    let allocatable = std::collections::BTreeMap::from([
        ("cpu".to_string(), format!("{cpu_millis}m")),
        ("memory".to_string(), format!("{mem_alloc_kib}Ki")),
        ("pods".to_string(), pods),
    ]);
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    let os_image = read("/etc/os-release")
        .lines()
        .find_map(|l| {
            l.strip_prefix("PRETTY_NAME=")
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_else(|| "Linux".into());
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    NodeStatus {
        node: node.to_string(),
        conditions,
        addresses: vec![
            ("InternalIP".into(), host_ip.to_string()),
            ("Hostname".into(), node.to_string()),
        ],
        allocatable,
        capacity,
        info: NodeInfo {
            operating_system: "linux".into(),
            architecture: arch.into(),
            kernel_version: read("/proc/sys/kernel/osrelease"),
            os_image,
            agent_version: format!("v1.33.0-skerry-edgecore-{}", env!("CARGO_PKG_VERSION")),
            container_runtime_version: runtime_version.to_string(),
        },
    }
}

/// How often the heartbeat measures and reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeartbeatTiming {
    /// Conditions are measured this often; a status that changed is reported at once.
    pub measure: Duration,
    /// An unchanged status is reported again after this long.
    pub report: Duration,
}

/// Measures the node's conditions afresh every `timing.measure` ([`crate::node_health`]) and
/// puts the node status into the outbox when it changed, or when `timing.report` has passed
/// since it was last put, forever. This is kubelet's split of nodeStatusUpdateFrequency from
/// nodeStatusReportFrequency: the cloud learns of a change within one measurement, while an
/// idle node costs one report every few minutes; its liveness comes from the link's keep-alive
/// (docs/link-economy.md). A change of `Ready` is logged.
///
/// The status is also reported each time the cloud link connects anew (`link`): the edge
/// cannot see the Node object, and after a partition or a cloud restart the cloud may hold
/// conditions the node lifecycle controller set to `Unknown`, which only a report replaces
/// (kubelet compares with the Node it reads back for the same reason).
pub async fn heartbeat(
    outbox: Outbox,
    checker: crate::node_health::Checker,
    node: String,
    host_ip: String,
    capacity: Capacity,
    timing: HeartbeatTiming,
    mut link: tokio::sync::watch::Receiver<crate::link::LinkState>,
) {
    let topic = topics::node_status(&node);
    let runtime_version = checker.runtime.version();
    let mut tick = tokio::time::interval(timing.measure);
    let mut was_ready = None;
    let mut last: Option<(NodeStatus, tokio::time::Instant)> = None;
    let mut link_open = true;
    loop {
        let reconnected = tokio::select! {
            _ = tick.tick() => false,
            changed = link.changed(), if link_open => {
                link_open = changed.is_ok();
                link_open && *link.borrow_and_update() == crate::link::LinkState::Connected
            }
        };
        if reconnected {
            last = None;
        }
        let conditions = checker.conditions().await;
        let status = node_status(&node, &host_ip, &runtime_version, capacity, conditions);
        let due = match &last {
            Some((sent, at)) => *sent != status || at.elapsed() >= timing.report,
            None => true,
        };
        if !due {
            continue;
        }
        let ready = status.is_ready();
        if was_ready != Some(ready) {
            let why = status
                .condition(NodeConditionKind::Ready)
                .map(|c| c.message.clone())
                .unwrap_or_default();
            if ready {
                info!(%node, "node is Ready");
            } else {
                warn!(%node, reason = %why, "node is not Ready");
            }
            metrics::gauge!("skerry_edge_node_ready").set(if ready { 1.0 } else { 0.0 });
            was_ready = Some(ready);
        }
        outbox.put(&topic, StatusBody::Node(status.clone()));
        metrics::counter!("skerry_edge_node_status_reports_total").increment(1);
        last = Some((status, tokio::time::Instant::now()));
    }
}

#[cfg(test)]
mod tests;
