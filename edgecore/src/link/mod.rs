//! The link to the cloud: the one-shot join, and the sync session that keeps the cache current.
//!
//! The sync loop connects, says Hello with the revision the cache made durable, applies each
//! batch to the cache, wakes the pod manager, and acks. It reconnects forever with exponential
//! back-off and jitter; nothing on the edge waits for it. A dead link is noticed by QUIC's idle
//! timeout (keep-alives every few seconds), not by a pod failing.

pub mod hearing;

use crate::cache::{Cache, DesiredState};
use crate::identity::{self, IdentityPaths};
use protocol::codec;
use protocol::join::{JoinRefusal, JoinRequest, JoinResponse};
use protocol::messages::*;
use serde::{de::DeserializeOwned, Serialize};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tracing::{debug, error, info, info_span, warn, Instrument};
use wire::backoff::Backoff;

/// Errors of link operations.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The server address could not be resolved.
    #[error("cannot resolve {0}; pass --server HOST:PORT of cloudcore's hub")]
    Resolve(String),
    /// QUIC connect failed.
    #[error("cannot connect to {server}: {reason}")]
    Connect {
        /// Address.
        server: String,
        /// Why.
        reason: String,
    },
    /// The connection broke.
    #[error("connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// Reading failed.
    #[error("read failed: {0}")]
    Read(#[from] quinn::ReadExactError),
    /// Writing failed.
    #[error("write failed: {0}")]
    Write(#[from] quinn::WriteError),
    /// The cloud sent bytes that are not a valid message.
    #[error("bad frame from cloud: {0}")]
    Codec(#[from] codec::CodecError),
    /// The cloud refused the session.
    #[error("the cloud refused this node: {0}")]
    Rejected(Reject),
    /// A connect attempt was given up because the cloud answered on another path (see
    /// [`LinkConfig::wake`]); the next one starts at once.
    #[error("the cloud answered on another path; connecting afresh")]
    Woken,
    /// The cloud refused the join.
    #[error("join refused: {0}")]
    JoinRefused(protocol::join::JoinRefusal),
    /// The cloud broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// Identity files.
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    /// The cache failed; the batch was not acked.
    #[error(transparent)]
    Cache(#[from] crate::cache::CacheError),
    /// The cache found entries it cannot read and forgot its revision: the session ends so that
    /// the next one asks for the node's slice in full.
    #[error("the cache asks for a full resync (it holds entries it cannot read)")]
    Resync,
    /// A timeout.
    #[error("timed out: {0}")]
    Timeout(&'static str),
}

impl From<wire::frames::FrameError> for LinkError {
    fn from(e: wire::frames::FrameError) -> Self {
        use wire::frames::FrameError;
        match e {
            FrameError::Read(e) => LinkError::Read(e),
            FrameError::Write(e) => LinkError::Write(e),
            FrameError::Codec(e) => LinkError::Codec(e),
            e @ FrameError::TooLarge { .. } => LinkError::Protocol(e.to_string()),
        }
    }
}

async fn read_frame<T: DeserializeOwned>(
    recv: &mut quinn::RecvStream,
) -> Result<Option<T>, LinkError> {
    Ok(wire::frames::read_frame(recv, codec::MAX_FRAME_LEN).await?)
}

async fn write_frame<T: Serialize>(send: &mut quinn::SendStream, msg: &T) -> Result<(), LinkError> {
    Ok(wire::frames::write_frame(send, msg).await?)
}

/// Splits `host:port` and resolves it.
pub async fn resolve(server: &str) -> Result<(SocketAddr, String), LinkError> {
    let host = server
        .rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']').to_string())
        .ok_or_else(|| LinkError::Resolve(server.to_string()))?;
    let addr = tokio::net::lookup_host(server)
        .await
        .map_err(|_| LinkError::Resolve(server.to_string()))?
        .next()
        .ok_or_else(|| LinkError::Resolve(server.to_string()))?;
    Ok((addr, host))
}

fn client_endpoint(
    addr: &SocketAddr,
    tls: rustls::ClientConfig,
    keep_alive: Duration,
    idle: Duration,
) -> Result<quinn::Endpoint, LinkError> {
    let bind: SocketAddr = if addr.is_ipv6() {
        "[::]:0".parse().expect("static")
    } else {
        "0.0.0.0:0".parse().expect("static")
    };
    let mut endpoint = quinn::Endpoint::client(bind).map_err(|e| LinkError::Connect {
        server: addr.to_string(),
        reason: e.to_string(),
    })?;
    let crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| LinkError::Connect {
            server: addr.to_string(),
            reason: e.to_string(),
        })?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    // The edge alone keeps the link alive (the hub sends no keep-alives of its own): its PING
    // holds the NAT binding open, proves the node alive to the hub, and its ACK tells the edge
    // that it still hears the cloud (`hearing`). See docs/link-economy.md for the interval.
    transport.keep_alive_interval(Some(keep_alive));
    // Path MTU probes are full-size packets; once a search has settled, re-probing every ten
    // minutes (quinn's default) costs an idle link more than its keep-alives. A changed path is
    // still found by a black-hole detection or at the next connection.
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.interval(Duration::from_secs(6 * 3600));
    transport.mtu_discovery_config(Some(mtu));
    // Streams the hub opens (logs, see `crate::logs::serve`, and commands, see
    // `crate::exec::serve`), with room for ones closing.
    transport.max_concurrent_bidi_streams(
        u32::try_from(
            2 * (crate::logs::serve::MAX_LOG_STREAMS + crate::exec::serve::MAX_EXEC_STREAMS),
        )
        .unwrap_or(32)
        .into(),
    );
    // The hub's overlay hints, one per unidirectional stream (`crate::network::overlay`).
    transport.max_concurrent_uni_streams(8u32.into());
    transport.max_idle_timeout(Some(quinn::IdleTimeout::try_from(idle).map_err(|e| {
        LinkError::Connect {
            server: addr.to_string(),
            reason: e.to_string(),
        }
    })?));
    cfg.transport_config(Arc::new(transport));
    endpoint.set_default_client_config(cfg);
    Ok(endpoint)
}

async fn connect(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    server_name: &str,
) -> Result<quinn::Connection, LinkError> {
    let connecting = endpoint
        .connect(addr, server_name)
        .map_err(|e| LinkError::Connect {
            server: addr.to_string(),
            reason: e.to_string(),
        })?;
    tokio::time::timeout(Duration::from_secs(10), connecting)
        .await
        .map_err(|_| LinkError::Timeout(CONNECTING))?
        .map_err(|e| match e {
            // The hub never answered (quinn's idle timeout ran out first): the same as ours.
            quinn::ConnectionError::TimedOut => LinkError::Timeout(CONNECTING),
            e => LinkError::Connect {
                server: addr.to_string(),
                reason: e.to_string(),
            },
        })
}

/// What [`LinkError::Timeout`] says of a connect attempt the hub never answered.
const CONNECTING: &str = "connecting";

/// How soon a connect attempt the hub never answered is followed by the next. Such an attempt
/// costs the hub nothing (its packets never arrive) and has itself lasted up to 10 s, during
/// which quinn resent its Initial after about 1, 3 and 7 s; the back-off, grown over a long
/// partition to 15-45 s, would add to that. With a 1 s pause a heal finds the next Initial
/// within about 4 s (issue #11's fault suite measured 26 s from a 60 s partition's heal to the
/// link without it, the MQTT connection having stayed up). Answered failures (a refusal, TLS,
/// a broken session) keep the exponential back-off.
const UNANSWERED_RETRY: Duration = Duration::from_secs(1);

/// How long into an outage connect attempts follow each other [`UNANSWERED_RETRY`] apart. Each
/// attempt sends about four 1,200-byte Initials in 11 s (about 3.6 kbit/s while the cloud is
/// unreachable); that buys a heal found within a few seconds for the outages that matter most
/// (a tunnel, a flapping radio). Past it the usual back-off (up to 30 s) takes over, so that a
/// node offline for a night does not send megabytes into a link that may bill them.
const FAST_PROBING: Duration = Duration::from_secs(300);

/// What `join` needs.
#[derive(Debug, Clone)]
pub struct JoinParams {
    /// `host:port` of the hub.
    pub server: String,
    /// TLS name of the hub (defaults to the host part of `server`).
    pub server_name: Option<String>,
    /// Bootstrap token.
    pub token: String,
    /// `sha256:<hex>` of the CA.
    pub ca_hash: String,
    /// Node name.
    pub node_name: String,
    /// Node labels.
    pub labels: std::collections::BTreeMap<String, String>,
}

/// Joins the cluster: generates the node key, sends a CSR with the token over a CA-pinned
/// connection, and stores the signed certificate and the CA.
pub async fn join(paths: &IdentityPaths, params: &JoinParams) -> Result<(), LinkError> {
    let (addr, host) = resolve(&params.server).await?;
    let server_name = params.server_name.clone().unwrap_or(host);
    let key = rcgen::KeyPair::generate().map_err(|e| LinkError::Protocol(e.to_string()))?;
    let mut cp = rcgen::CertificateParams::new(Vec::<String>::new())
        .map_err(|e| LinkError::Protocol(e.to_string()))?;
    cp.distinguished_name
        .push(rcgen::DnType::CommonName, params.node_name.clone());
    let csr = cp
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .map_err(|e| LinkError::Protocol(e.to_string()))?;
    let endpoint = client_endpoint(
        &addr,
        identity::join_client_tls(&params.ca_hash)?,
        Duration::from_secs(5),
        Duration::from_secs(30),
    )?;
    let conn = connect(&endpoint, addr, &server_name).await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    write_frame(
        &mut send,
        &JoinRequest {
            protocol_version: protocol::PROTOCOL_VERSION,
            token: params.token.clone(),
            node_name: params.node_name.clone(),
            labels: params.labels.clone(),
            csr_pem: csr,
        },
    )
    .await?;
    let _ = send.finish();
    let resp: JoinResponse = tokio::time::timeout(Duration::from_secs(30), read_frame(&mut recv))
        .await
        .map_err(|_| LinkError::Timeout("waiting for the join answer"))??
        .ok_or_else(|| {
            LinkError::Protocol("the cloud closed the join stream without answering".into())
        })?;
    conn.close(0u32.into(), b"joined");
    endpoint.wait_idle().await;
    match resp {
        JoinResponse::Accepted {
            certificate_pem,
            ca_pem,
            report_key,
        } => {
            identity::write_atomic(&paths.report_key(), &report_key, 0o600)?;
            identity::write_atomic(&paths.key(), key.serialize_pem().as_bytes(), 0o600)?;
            identity::write_atomic(&paths.cert(), certificate_pem.as_bytes(), 0o644)?;
            identity::write_atomic(&paths.ca(), ca_pem.as_bytes(), 0o644)?;
            Ok(())
        }
        JoinResponse::Refused(r) => Err(LinkError::JoinRefused(r)),
    }
}

/// Whether a failed join may succeed if tried again: the cloud was busy, unreachable or failed
/// internally. A refusal of the token, the name or the labels is final.
fn join_retryable(e: &LinkError) -> bool {
    use quinn::ConnectionError as C;
    match e {
        LinkError::JoinRefused(r) => matches!(r, JoinRefusal::Internal(_)),
        // Closed by the cloud before answering (busy with other joins), or the path broke.
        LinkError::Connection(C::ApplicationClosed(_) | C::TimedOut | C::Reset)
        | LinkError::Read(_)
        | LinkError::Write(_)
        | LinkError::Timeout(_)
        | LinkError::Resolve(_) => true,
        // A handshake the cloud refused (CA pin mismatch, TLS alert), bad frames, local
        // identity files: trying again changes nothing.
        _ => false,
    }
}

/// [`join`], tried again with back-off (1 s doubling to 15 s) while it fails for a reason that
/// may pass ([`join_retryable`]: a cloud busy with other joins, unreachable, or failing
/// internally) and `total` has not run out. Each try generates a fresh key and CSR.
pub async fn join_with_retry(
    paths: &IdentityPaths,
    params: &JoinParams,
    total: Duration,
) -> Result<(), LinkError> {
    let start = tokio::time::Instant::now();
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(15));
    loop {
        match join(paths, params).await {
            Ok(()) => return Ok(()),
            Err(e) if join_retryable(&e) => {
                let delay = backoff.next_delay();
                if start.elapsed() + delay > total {
                    return Err(e);
                }
                warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "join failed; retrying");
                tokio::time::sleep(delay).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Link state, for metrics and the node report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Not connected (never, or lost).
    Disconnected,
    /// Session established.
    Connected,
    /// The cloud refused the node; retrying slowly.
    Refused,
}

/// Settings of the sync loop.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// `host:port` of the hub.
    pub server: String,
    /// TLS name of the hub.
    pub server_name: Option<String>,
    /// This node's name.
    pub node_name: String,
    /// Keep-alive interval.
    pub keep_alive: Duration,
    /// Idle timeout after which the link is dead.
    pub idle_timeout: Duration,
    /// How long requests for an answer may go unanswered before the edge judges the cloud
    /// unheard and reconnects ([`hearing`]).
    pub deaf_after: Duration,
    /// First reconnect delay.
    pub backoff_base: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// Notified when the cloud answers on another path (the MQTT publisher got a CONNACK).
    /// It cuts short a back-off step, and a connect attempt still waiting for its handshake:
    /// after a long partition the back-off has grown to tens of seconds and the QUIC
    /// handshake's own retransmissions are seconds apart, while the end of the partition is
    /// what the operator waits for (issue #11 measured 20 s from heal to the link without it).
    pub wake: Arc<Notify>,
    /// The session's connection while a session is up (`None` between sessions), for what
    /// else travels on it: the overlay's datagrams and its peers' hints
    /// (`crate::network::overlay`).
    pub connection: Arc<watch::Sender<Option<Current>>>,
}

/// A session's connection and the endpoint (UDP socket) it runs on: the overlay's direct path
/// takes peers' connections on that endpoint and dials them from it, so peers reach this node
/// at the address the hub sees for its link (`crate::network::overlay::peers`).
#[derive(Debug, Clone)]
pub struct Current {
    /// The session's connection.
    pub conn: quinn::Connection,
    /// Its endpoint.
    pub endpoint: quinn::Endpoint,
}

/// Reads and drops every datagram of the link's connections, for a node without an overlay:
/// the only ones it gets are the hub's liveness probes, and QUIC acknowledged them on arrival.
/// Runs until the link's sender is gone (the agent stopping).
pub async fn drop_datagrams(mut link: watch::Receiver<Option<Current>>) {
    loop {
        let conn = link.borrow_and_update().as_ref().map(|c| c.conn.clone());
        if let Some(conn) = conn {
            tokio::select! {
                _ = async { while conn.read_datagram().await.is_ok() {} } => {}
                changed = link.changed() => if changed.is_err() { break },
            }
        } else if link.changed().await.is_err() {
            break;
        }
    }
    // Nothing more will come: stay put rather than look to the supervisor like a crash.
    std::future::pending::<()>().await
}

/// Publishes a session's connection while it lasts.
struct Published<'a>(&'a watch::Sender<Option<Current>>);

impl Drop for Published<'_> {
    fn drop(&mut self) {
        self.0.send_replace(None);
    }
}

/// Exponential back-off from `base` to `max` with ±50 % jitter, so that a thousand nodes cut off
/// together do not reconnect in lockstep.
pub fn reconnect_backoff(base: Duration, max: Duration) -> Backoff {
    Backoff::new(base, max).jitter(0.5, rand::random())
}

/// Runs the sync loop forever. `changed` is notified after every applied batch. While a session
/// is up, `streams` serves the streams the hub opens on the same connection (logs).
pub async fn run(
    cfg: LinkConfig,
    paths: IdentityPaths,
    cache: Cache,
    changed: Arc<Notify>,
    state: Arc<watch::Sender<LinkState>>,
    streams: Option<crate::logs::serve::StreamServer>,
) {
    let mut backoff = reconnect_backoff(cfg.backoff_base, cfg.backoff_max);
    // Since when connect attempts have gone unanswered (the cloud unreachable), if they have.
    let mut unanswered_since: Option<tokio::time::Instant> = None;
    loop {
        let span = info_span!("link", node = %cfg.node_name, server = %cfg.server);
        let result = session(&cfg, &paths, &cache, &changed, &state, streams.as_ref())
            .instrument(span.clone())
            .await;
        let _ = state.send(LinkState::Disconnected);
        let _span = span.enter();
        let mut at_once = false;
        let mut unanswered = false;
        match &result {
            Ok(end) => {
                backoff.reset();
                // A stateless reset comes from a hub that is up again (it restarted and lost
                // the connection): reconnect now, not after even the shortest back-off.
                // A resync the cache asked for is wanted now too.
                at_once = matches!(end.reason, EndReason::Reset | EndReason::Resync);
            }
            Err(LinkError::Woken) => {
                debug!("the cloud answered on another path: connecting afresh now");
                at_once = true;
            }
            Err(LinkError::Rejected(r)) => {
                error!(reason = %r, "cloud refused this node");
                let _ = state.send(LinkState::Refused);
                backoff.skip_to(6);
            }
            Err(e) => {
                unanswered = matches!(e, LinkError::Timeout(CONNECTING));
                // One warning per outage, not one per attempt: a node offline for a night
                // would log thousands of them.
                if unanswered && unanswered_since.is_some() {
                    debug!(error = %e, "cloud still unreachable");
                } else {
                    warn!(error = %e, "link down; pods keep running from the cache")
                }
            }
        }
        if !unanswered {
            unanswered_since = None;
        }
        let probing = unanswered
            && unanswered_since
                .get_or_insert_with(tokio::time::Instant::now)
                .elapsed()
                < FAST_PROBING;
        metrics::counter!("skerry_edge_link_reconnects_total").increment(1);
        let attempt = backoff.attempts();
        let delay = if at_once {
            Duration::ZERO
        } else if probing {
            UNANSWERED_RETRY
        } else {
            backoff.next_delay()
        };
        debug!(?delay, attempt, "reconnecting after back-off");
        drop(_span);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = cfg.wake.notified() => {
                debug!("the cloud answered on another path: reconnecting now");
            }
        }
    }
}

/// Why an established session ended, as the `reason` label of
/// `skerry_edge_link_ends_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EndReason {
    /// A stateless reset: the hub restarted (or lost the connection) and told us so.
    Reset,
    /// Nothing heard for the idle timeout: the hub or the path is gone, or the hub restarted
    /// without the reset key of the old connection.
    TimedOut,
    /// Closed by the hub (or by us).
    Closed,
    /// The cloud broke the protocol.
    Protocol,
    /// The cache could not apply a batch.
    Cache,
    /// The edge heard nothing from the cloud while it was owed an answer ([`hearing`]): the
    /// link is cut towards the edge, or down.
    Deaf,
    /// The cache asked for a full resync.
    Resync,
    /// Anything else.
    Other,
}

impl EndReason {
    fn of(e: &LinkError) -> Self {
        use quinn::ConnectionError as C;
        let connection = match e {
            LinkError::Connection(c)
            | LinkError::Read(quinn::ReadExactError::ReadError(
                quinn::ReadError::ConnectionLost(c),
            ))
            | LinkError::Write(quinn::WriteError::ConnectionLost(c)) => Some(c),
            _ => None,
        };
        match (connection, e) {
            (Some(C::Reset), _) => EndReason::Reset,
            (Some(C::TimedOut), _) => EndReason::TimedOut,
            (Some(C::ApplicationClosed(_) | C::ConnectionClosed(_) | C::LocallyClosed), _) => {
                EndReason::Closed
            }
            (None, LinkError::Protocol(_) | LinkError::Codec(_)) => EndReason::Protocol,
            (None, LinkError::Cache(_)) => EndReason::Cache,
            (None, LinkError::Resync) => EndReason::Resync,
            _ => EndReason::Other,
        }
    }

    fn label(self) -> &'static str {
        match self {
            EndReason::Reset => "reset",
            EndReason::TimedOut => "timed_out",
            EndReason::Closed => "closed",
            EndReason::Protocol => "protocol",
            EndReason::Cache => "cache",
            EndReason::Deaf => "deaf",
            EndReason::Resync => "resync",
            EndReason::Other => "other",
        }
    }
}

/// How a session that got as far as Welcome ended (so the back-off resets).
struct SessionEnd {
    reason: EndReason,
}

/// One session, until it ends; an error before Welcome (or a refusal) is returned as such.
async fn session(
    cfg: &LinkConfig,
    paths: &IdentityPaths,
    cache: &Cache,
    changed: &Notify,
    state: &watch::Sender<LinkState>,
    streams: Option<&crate::logs::serve::StreamServer>,
) -> Result<SessionEnd, LinkError> {
    let (addr, host) = resolve(&cfg.server).await?;
    let tls = identity::sync_client_tls(paths)?;
    let endpoint = client_endpoint(&addr, tls, cfg.keep_alive, cfg.idle_timeout)?;
    let conn = tokio::select! {
        conn = connect(&endpoint, addr, cfg.server_name.as_deref().unwrap_or(&host)) => conn?,
        () = cfg.wake.notified() => return Err(LinkError::Woken),
    };
    let (mut send, mut recv) = conn.open_bi().await?;
    let acked = cache.acked_revision();
    write_frame(
        &mut send,
        &EdgeMessage::Hello(Hello {
            protocol_version: protocol::PROTOCOL_VERSION,
            node_name: cfg.node_name.clone(),
            acked_revision: acked,
        }),
    )
    .await?;
    match tokio::time::timeout(
        Duration::from_secs(15),
        read_frame::<CloudMessage>(&mut recv),
    )
    .await
    .map_err(|_| LinkError::Timeout("waiting for Welcome"))??
    {
        Some(CloudMessage::Welcome(w)) => {
            info!(
                acked_revision = acked,
                cloud_version = w.protocol_version,
                "connected to cloud"
            );
            // The cloud serves edges one version behind it; the next cloud upgrade will not.
            if w.protocol_version > protocol::PROTOCOL_VERSION {
                warn!(
                    cloud_version = w.protocol_version,
                    edge_version = protocol::PROTOCOL_VERSION,
                    "the cloud speaks a newer protocol: upgrade edgecore before the cloud's next upgrade"
                );
            }
            metrics::gauge!("skerry_edge_cloud_protocol_version").set(w.protocol_version as f64);
        }
        Some(CloudMessage::Reject(r)) => return Err(LinkError::Rejected(r)),
        Some(other) => {
            return Err(LinkError::Protocol(format!(
                "expected Welcome, got {other:?}"
            )))
        }
        None => {
            return Err(LinkError::Protocol(
                "cloud closed the stream before Welcome".into(),
            ))
        }
    }
    let _ = state.send(LinkState::Connected);
    metrics::gauge!("skerry_edge_link_connected").set(1.0);
    cfg.connection.send_replace(Some(Current {
        conn: conn.clone(),
        endpoint: endpoint.clone(),
    }));
    let _published = Published(&cfg.connection);
    // The hub's streams are served beside the sync stream, in their own tasks, so that the
    // loop below never waits for a log; the acceptor ends with this session.
    let _acceptor = streams.map(|server| {
        let (server, conn) = (server.clone(), conn.clone());
        AbortOnDrop(tokio::spawn(async move { server.accept(conn).await }))
    });
    let deaf = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let _hearing = AbortOnDrop(tokio::spawn(watch_hearing(
        conn.clone(),
        cfg.deaf_after,
        deaf.clone(),
    )));
    let result = async {
        let mut assembler = protocol::assembly::SnapshotAssembler::new();
        loop {
            let frame = tokio::select! {
                frame = read_frame::<CloudMessage>(&mut recv) => frame?,
                _ = cache.resync_wanted() => return Err(LinkError::Resync),
            };
            match frame {
                Some(CloudMessage::Sync(part)) => {
                    let Some(batch) = assembler
                        .push(part)
                        .map_err(|e| LinkError::Protocol(e.to_string()))?
                    else {
                        debug!("holding a snapshot part until the rest arrives");
                        continue;
                    };
                    debug!(
                        revision = batch.revision,
                        upserts = batch.upserts.len(),
                        deletes = batch.deletes.len(),
                        snapshot = batch.snapshot,
                        "applying batch"
                    );
                    cache.apply(&batch).await?;
                    changed.notify_one();
                    metrics::gauge!("skerry_edge_acked_revision").set(batch.revision as f64);
                    write_frame(
                        &mut send,
                        &EdgeMessage::Ack(Ack {
                            revision: batch.revision,
                        }),
                    )
                    .await?;
                }
                Some(CloudMessage::Reject(r)) => return Err(LinkError::Rejected(r)),
                Some(CloudMessage::Welcome(_)) => {
                    return Err(LinkError::Protocol("second Welcome".into()))
                }
                None => return Err(LinkError::Protocol("cloud closed the session".into())),
            }
        }
    }
    .await;
    metrics::gauge!("skerry_edge_link_connected").set(0.0);
    conn.close(0u32.into(), b"bye");
    match result {
        Ok(()) => Ok(SessionEnd {
            reason: EndReason::Other,
        }),
        Err(e @ LinkError::Rejected(_)) => Err(e),
        Err(other) => {
            let reason = if deaf.load(std::sync::atomic::Ordering::Relaxed) {
                EndReason::Deaf
            } else {
                EndReason::of(&other)
            };
            warn!(error = %other, reason = reason.label(), "session ended");
            metrics::counter!("skerry_edge_link_ends_total", "reason" => reason.label())
                .increment(1);
            Ok(SessionEnd { reason })
        }
    }
}

/// Samples the connection about once a second and closes it when the edge has gone deaf
/// ([`hearing`]), which ends the session and starts a reconnect: a new handshake either gets
/// through (the cut healed, or was of this connection only) or tells plainly that the cloud is
/// unreachable. `deaf` tells the session why its connection was closed.
async fn watch_hearing(
    conn: quinn::Connection,
    deaf_after: Duration,
    deaf: Arc<std::sync::atomic::AtomicBool>,
) {
    let start = tokio::time::Instant::now();
    let mut hearing = hearing::Hearing::new(deaf_after, hearing::Sample::of(&conn.stats()));
    let mut tick = tokio::time::interval(Duration::from_secs(1).min(deaf_after));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
        if let hearing::Verdict::Deaf { unanswered_for } =
            hearing.observe(now_ms, hearing::Sample::of(&conn.stats()))
        {
            warn!(
                unanswered_ms = unanswered_for.as_millis() as u64,
                "nothing heard from the cloud although it owes an answer: the link is cut towards this node (or down); reconnecting, pods keep running from the cache"
            );
            metrics::counter!("skerry_edge_link_deaf_total").increment(1);
            deaf.store(true, std::sync::atomic::Ordering::Relaxed);
            let why = format!(
                "the edge heard nothing from the cloud for {} s",
                unanswered_for.as_secs()
            );
            conn.close(protocol::CLOSE_EDGE_DEAF.into(), why.as_bytes());
            return;
        }
    }
}

/// Aborts a task when dropped, so that nothing of a session outlives it.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stateless_reset_is_told_apart_from_a_timeout_however_it_surfaces() {
        use quinn::ConnectionError as C;
        let read = |c| {
            LinkError::Read(quinn::ReadExactError::ReadError(
                quinn::ReadError::ConnectionLost(c),
            ))
        };
        assert_eq!(EndReason::of(&read(C::Reset)), EndReason::Reset);
        assert_eq!(
            EndReason::of(&LinkError::Write(quinn::WriteError::ConnectionLost(
                C::Reset
            ))),
            EndReason::Reset
        );
        assert_eq!(
            EndReason::of(&LinkError::Connection(C::Reset)),
            EndReason::Reset
        );
        assert_eq!(EndReason::of(&read(C::TimedOut)), EndReason::TimedOut);
        assert_eq!(
            EndReason::of(&LinkError::Protocol("x".into())),
            EndReason::Protocol
        );
        assert_eq!(
            EndReason::of(&LinkError::Timeout("waiting")),
            EndReason::Other
        );
    }

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(30);
        let mut backoff = reconnect_backoff(base, max);
        for attempt in 0..40 {
            let d = backoff.next_delay();
            let nominal = base.saturating_mul(1 << attempt.min(16)).min(max);
            assert!(d <= max);
            assert!(
                d >= nominal.mul_f64(0.5).min(max) && d <= nominal.mul_f64(1.5),
                "{attempt}: {d:?}"
            );
        }
    }
}
