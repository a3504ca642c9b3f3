//! The embedded MQTT broker: the status intake of the edges, so that the quickstart needs
//! nothing but cloudcore.
//!
//! It is not a general-purpose broker, and that is the point. Until issue #10 cloudcore ran
//! rumqttd, which could not do what the trust boundary needs: it had no per-client topic ACLs
//! (any node could publish into, and subscribe to, every other node's topics), it kept every
//! published message in an in-memory commit log of up to 100 MB × 10 segments per filter (one
//! node publishing 1,000 messages of 1 MiB took cloudcore from 254 MB to 1,286 MB, never given
//! back), and it acknowledged a report as soon as it held it in memory, so a crash of cloudcore
//! lost reports the edge had already deleted from its outbox. This broker speaks MQTT 3.1.1 as
//! far as edges use it (CONNECT, PUBLISH QoS 0/1, PINGREQ, DISCONNECT; SUBSCRIBE is answered
//! with a refusal) and:
//!
//! - runs over TLS only, and takes a client's identity from the certificate the cluster CA
//!   signed for it (the node certificate of the QUIC link). No password exists, so none can be
//!   captured; a superseded certificate (the node joined again) or a revoked node is refused,
//!   and its live session is closed the moment the join or the revocation is written;
//! - lets a node publish under its own topics only ([`acl`]) and read nothing; a violation
//!   closes that connection (MQTT 3.1.1 has no way to refuse a PUBLISH but closing);
//! - hands each report straight to the ingest in this process and sends the PUBACK only once
//!   the ingest has made the report durable in the store (in receive order, as MQTT requires):
//!   "acknowledged" means "in the store", so the edge keeps a report in its outbox until then,
//!   and cloudcore can be killed at any moment without losing one;
//! - holds nothing beyond what is in flight: at most [`Limits::inflight_per_session`] reports
//!   per connection and [`Limits::inflight_bytes`] in all, payloads of at most
//!   [`Limits::max_payload`] bytes, a per-node rate ([`Limits::rate_per_second`], bursts of
//!   [`Limits::burst`]) beyond which the session is slowed down, not buffered. A client past
//!   these limits is slowed by TCP back-pressure, and memory stays flat whatever it sends.
//!
//! An external broker (`--mqtt-url mqtts://...`, mosquitto is tested) is configured with the same
//! rules by `cloudcore mqtt-config`; the ingest then subscribes to it as a client.

pub mod acl;
mod session;

use crate::api::conn_limits::{accept_error_kind, AcceptBackoff, ConnLimits, LogLimiter};
use crate::pki::Pki;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tracing::{info, warn};

/// The broker's bounds. The defaults fit a status report of a few KiB per pod change.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest accepted packet (payload and topic), in bytes.
    pub max_payload: usize,
    /// Reports of one connection handed to the ingest and not yet acknowledged. Past it the
    /// broker stops reading the connection (and so answers no PINGREQ either): twice edgecore's
    /// own window of 64, so that a conforming edge never waits here, only a client that ignores
    /// its window.
    pub inflight_per_session: usize,
    /// Payload bytes in flight over all connections.
    pub inflight_bytes: usize,
    /// Sustained reports a second per node.
    pub rate_per_second: f64,
    /// Reports a node may send at once above the rate (a reconnect re-sends every pod's).
    pub burst: f64,
    /// Connections not yet past CONNECT, per client address.
    pub handshakes_per_address: usize,
    /// Connections not yet past CONNECT, in all.
    pub handshakes: usize,
    /// Authenticated sessions, in all.
    pub sessions: usize,
    /// Time for the TLS handshake and the CONNECT packet.
    pub connect_deadline: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_payload: 64 * 1024,
            inflight_per_session: 128,
            inflight_bytes: 64 * 1024 * 1024,
            rate_per_second: 50.0,
            burst: 500.0,
            handshakes_per_address: 64,
            handshakes: 4096,
            sessions: 100_000,
            connect_deadline: Duration::from_secs(10),
        }
    }
}

/// One report handed to the ingest.
#[derive(Debug)]
pub struct Delivery {
    /// The publisher, from its certificate.
    pub node: String,
    /// The topic, already checked to be one of the publisher's.
    pub topic: String,
    /// The sealed report.
    pub payload: bytes::Bytes,
    /// Completed by the ingest once the report's outcome is final (written, ignored, or
    /// refused as invalid); dropping it unanswered makes the broker close the connection so
    /// that the edge sends the report again.
    pub done: oneshot::Sender<()>,
    /// The report's share of [`Limits::inflight_bytes`], given back when the ingest drops it.
    pub permit: OwnedSemaphorePermit,
}

/// Where the broker hands reports; the ingest holds the other end.
pub type IntakeSender = mpsc::Sender<Delivery>;

/// The ingest's end of the intake. Shared, so that a restarted ingest task takes it up again.
pub type IntakeReceiver = Arc<tokio::sync::Mutex<mpsc::Receiver<Delivery>>>;

/// A channel from the broker to the ingest.
pub fn intake() -> (IntakeSender, IntakeReceiver) {
    let (tx, rx) = mpsc::channel(1024);
    (tx, Arc::new(tokio::sync::Mutex::new(rx)))
}

/// The live sessions by node, so that a new connection of a node replaces its old one (MQTT
/// 3.1.1, 3.1.4: the server disconnects the existing client with the same client id).
#[derive(Default)]
struct Sessions {
    next_id: u64,
    by_node: HashMap<String, (u64, oneshot::Sender<()>)>,
}

/// A bound embedded broker, to be served by [`Broker::serve`].
pub struct Broker {
    listener: tokio::net::TcpListener,
    tls: tokio_rustls::TlsAcceptor,
    pki: Arc<Pki>,
    intake: IntakeSender,
    limits: Limits,
    handshakes: ConnLimits,
    sessions: Arc<Semaphore>,
    inflight_bytes: Arc<Semaphore>,
    live: Arc<Mutex<Sessions>>,
}

impl Broker {
    /// Binds `listen`; fails if the port is taken or the TLS set-up is wrong.
    pub async fn bind(
        listen: SocketAddr,
        pki: Arc<Pki>,
        intake: IntakeSender,
        limits: Limits,
    ) -> anyhow::Result<Arc<Self>> {
        use anyhow::Context;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| {
                format!("cannot listen on {listen} for MQTT; pick another --mqtt-listen")
            })?;
        let tls = tokio_rustls::TlsAcceptor::from(Arc::new(pki.broker_tls()?));
        let handshakes = ConnLimits::new(crate::api::conn_limits::Limits {
            per_address: limits.handshakes_per_address,
            global: limits.handshakes,
        })?;
        info!(listen = %listener.local_addr()?, "embedded MQTT broker listening (TLS, node certificates)");
        Ok(Arc::new(Self {
            listener,
            tls,
            pki,
            intake,
            limits,
            handshakes,
            sessions: Arc::new(Semaphore::new(limits.sessions)),
            inflight_bytes: Arc::new(Semaphore::new(limits.inflight_bytes)),
            live: Default::default(),
        }))
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts connections until the process ends; each runs on a task of its own.
    pub async fn serve(self: Arc<Self>) {
        let mut backoff = AcceptBackoff::new();
        let mut refused_log = LogLimiter::new(Duration::from_secs(1));
        loop {
            let (tcp, peer) = match self.listener.accept().await {
                Ok(c) => {
                    backoff.succeeded();
                    c
                }
                Err(e) => {
                    let (kind, exhausted) = accept_error_kind(&e);
                    metrics::counter!("skerry_broker_accept_errors_total", "kind" => kind)
                        .increment(1);
                    if let Some(held_back) = refused_log.allow(tokio::time::Instant::now()) {
                        warn!(error = %e, held_back, "MQTT accept failed");
                    }
                    if exhausted {
                        tokio::time::sleep(backoff.failed()).await;
                    }
                    continue;
                }
            };
            let permit = match self.handshakes.try_acquire(peer.ip()) {
                Ok(p) => p,
                Err(why) => {
                    metrics::counter!("skerry_broker_connections_refused_total", "reason" => why.label())
                        .increment(1);
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let broker = self.clone();
            tokio::spawn(async move {
                session::run(broker, tcp, peer, permit).await;
            });
        }
    }

    /// Registers a session of `node`, closing the one it replaces; returns its id and the
    /// receiver that tells it it was replaced.
    fn register(&self, node: &str) -> (u64, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.next_id += 1;
        let id = live.next_id;
        if let Some((_, old)) = live.by_node.insert(node.to_string(), (id, tx)) {
            let _ = old.send(());
        }
        (id, rx)
    }

    fn unregister(&self, node: &str, id: u64) {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        if live.by_node.get(node).is_some_and(|(i, _)| *i == id) {
            live.by_node.remove(node);
        }
    }
}
