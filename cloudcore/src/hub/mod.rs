//! The hub: one QUIC connection per edge node, streaming that node's slice of the desired state.
//!
//! Per connected node the hub holds a small session (a task, a `Notify`, the last revision sent,
//! the configs marked for it); there is no thread per node and no per-(node, object) record. A
//! session starts from the revision the edge says it made durable and reads the node's shard
//! log after it (see [`crate::store`]), so a reconnect costs what changed while the node was
//! away, and a node that is new or too far behind gets one snapshot. Acks only advance what the
//! hub reports; the edge's Hello is the source of truth after any reconnect, which makes
//! delivery at-least-once and idempotent on the edge.
//!
//! # ConfigMaps and Secrets
//!
//! A node's slice also holds the ConfigMaps and Secrets its pods reference, and no others. They
//! are not in the shard log (that holds pods only); the hub finds them through the
//! [`ConfigIndex`] (config → nodes), which one task, the dispatcher, keeps current from the
//! store's change feed, in revision order: for each event it updates the index (pods), marks the
//! config on the sessions of the nodes that reference it (ConfigMaps, Secrets), wakes the
//! sessions whose shard changed, and only then records the event's revision as `handled`. What
//! goes into batches is decided in `plan`. Why nothing is lost or leaked:
//!
//! - **Never before its pod.** The edge applies a batch atomically and, at batch boundaries,
//!   drops configs that no cached pod references. So a pod upsert carries the current version
//!   of every config it references (or a delete for a missing one) in the same batch; a config
//!   marked for the node is sent on its own only when no pod of this round carries it, i.e. its
//!   referencing pods were sent in earlier batches of this ordered stream.
//! - **The invariant behind resuming.** When the edge acks batch revision R, it holds every
//!   config its pods reference at a version no older than the config's last write at or before
//!   R. Deltas keep it because a round first reads `cap = handled`, then takes the marked
//!   configs, then reads the shard, and claims at most `max(sent, min(shard upto, cap))`: every
//!   config write at or below the claim was handled, hence marked before the round took the
//!   marks (the dispatcher marks before it publishes `handled`) or taken by an earlier round,
//!   whose batches precede this one. Marked configs go in the round's first batches, so no
//!   batch claims a revision before the configs it vouches for were sent. Pod changes above the
//!   cap wait for the next round, which the dispatcher triggers when it handles them. A
//!   snapshot keeps it without the cap: it carries the current version of every config its
//!   pods reference.
//! - **Resuming.** A session that starts from acked revision A marks every config its node
//!   references, to be sent only if its store revision is above A (the invariant says the edge
//!   has the others), and as a delete if it no longer exists (its delete revision is unknown,
//!   and the edge may hold a stale copy). Marks are set after the session is registered, so a
//!   write handled in between is marked twice at worst, never missed.
//! - **Revisions.** A config-only batch claims the session's watermark (or the round's claim),
//!   so batch revisions never go down and never vouch for pod changes that were not sent.
//!   Upserts carry the config's own store revision (the edge ignores older ones).
//! - **No leaks.** Configs reach a node only from its pods' projections (pod upserts,
//!   snapshots) or from marks, which are filtered through the index ("does a pod of this node
//!   reference it?") when the round starts. A node may briefly get a config whose newly bound
//!   pod is one round behind; it references it by then.
//! - **Durability.** Everything read from the store is sent only after `wait_durable`.
//! - **Lag.** If the dispatcher falls behind the change feed it rebuilds the index from a
//!   listing and marks every referenced config written after the last handled revision (or
//!   missing) on the sessions of its nodes, then wakes every session.
//!
//! The same endpoint serves the join exchange (ALPN `skerry-join/1`): a bootstrap token and a CSR
//! in, a node certificate out.

mod plan;

use crate::api::client::Client;
use crate::api::ApiError;
use crate::clock;
use crate::config_index::{self, ConfigIndex};
use crate::pki::{self, Pki};
use crate::store::{Event, ObjectKey, ShardRead, Store, StoreError};
use protocol::codec;
use protocol::join::{JoinRefusal, JoinRequest, JoinResponse};
use protocol::messages::*;
use serde::{de::DeserializeOwned, Serialize};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Mutex, Notify, RwLock};
use tracing::{debug, error, info, info_span, warn, Instrument};

/// Largest frame the hub accepts from an edge.
const MAX_INBOUND_FRAME: usize = 64 * 1024;

/// Joins handled at once; more are turned away (the edge retries), so a flood of
/// unauthenticated join connections cannot pile up.
const MAX_CONCURRENT_JOINS: usize = 64;

/// QUIC application error codes the hub closes connections with.
pub mod close_codes {
    /// Normal end.
    pub const OK: u32 = 0;
    /// The peer broke the protocol (garbage frames, wrong message order).
    pub const PROTOCOL: u32 = 1;
    /// The peer was refused (see the Reject message sent before).
    pub const REJECTED: u32 = 2;
    /// A newer session of the same node replaced this one.
    pub const REPLACED: u32 = 3;
}

/// Hub settings.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// UDP address to listen on.
    pub listen: SocketAddr,
    /// Interval of QUIC keep-alives, so idle links stay open through NATs and dead ones are seen.
    pub keep_alive: Duration,
    /// A link silent for this long is dead.
    pub idle_timeout: Duration,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:7443".parse().expect("static address"),
            keep_alive: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(20),
        }
    }
}

struct Session {
    id: u64,
    signals: Arc<Signals>,
    conn: quinn::Connection,
}

/// What the rest of the hub tells a running session, and what it reports back.
#[derive(Default)]
struct Signals {
    /// The node's shard changed, or a config was marked.
    changed: Notify,
    /// The node was revoked: the session sends Reject and closes.
    revoked: Notify,
    /// Highest revision the edge acked.
    acked: AtomicU64,
    /// ConfigMaps and Secrets to send: each only if its store revision is above the value
    /// (0: always), or as a delete if it does not exist.
    marked: Mutex<HashMap<ObjectRef, u64>>,
}

impl Signals {
    /// Marks `config` to be sent if newer than `newer_than` (the lowest bound wins).
    async fn mark(&self, config: ObjectRef, newer_than: u64) {
        let mut marked = self.marked.lock().await;
        let bound = marked.entry(config).or_insert(newer_than);
        *bound = (*bound).min(newer_than);
    }
}

/// Tries of a node registration that races other writers of the Node (a re-join while ingest
/// writes its status) before the join is refused with a retryable error.
const REGISTER_ATTEMPTS: usize = 8;

/// The hub. Cheap to share: clone the `Arc`.
pub struct Hub {
    store: Arc<dyn Store>,
    /// Writes (node registration) go through the API, as every in-process writer's do.
    api: Client,
    pki: Arc<Pki>,
    sessions: Mutex<HashMap<String, Session>>,
    next_session: AtomicU64,
    join_slots: tokio::sync::Semaphore,
    /// Which nodes reference which ConfigMaps and Secrets.
    index: RwLock<ConfigIndex>,
    /// Highest store revision whose change event the dispatcher has fully handled (index
    /// updated, configs marked, sessions woken); rounds claim no more than this.
    handled: AtomicU64,
}

/// Errors that end one connection (never the hub).
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("stream read failed: {0}")]
    Read(#[from] quinn::ReadExactError),
    #[error("stream write failed: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("bad frame: {0}")]
    Codec(#[from] codec::CodecError),
    #[error("{0}")]
    Protocol(String),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("timed out waiting for the peer")]
    Timeout,
}

impl From<wire::frames::FrameError> for SessionError {
    fn from(e: wire::frames::FrameError) -> Self {
        use wire::frames::FrameError;
        match e {
            FrameError::Read(e) => SessionError::Read(e),
            FrameError::Write(e) => SessionError::Write(e),
            // An encoding failure is ours (e.g. a batch over the frame limit), not the peer's.
            FrameError::Codec(e @ codec::CodecError::Encode { .. }) => {
                SessionError::Protocol(format!("cannot encode a message for the edge: {e}"))
            }
            FrameError::Codec(e) => SessionError::Codec(e),
            e @ FrameError::TooLarge { .. } => SessionError::Codec(codec::CodecError::Malformed {
                what: "frame",
                reason: e.to_string(),
            }),
        }
    }
}

/// Reads one edge message. Edges send only small messages (Hello, Ack, a join request with a
/// CSR); refusing anything larger before allocating keeps unauthenticated join connections from
/// costing megabytes.
async fn read_frame<T: DeserializeOwned>(
    recv: &mut quinn::RecvStream,
) -> Result<Option<T>, SessionError> {
    Ok(wire::frames::read_frame(recv, MAX_INBOUND_FRAME).await?)
}

async fn write_frame<T: Serialize>(
    send: &mut quinn::SendStream,
    msg: &T,
) -> Result<(), SessionError> {
    Ok(wire::frames::write_frame(send, msg).await?)
}

/// Builds the QUIC server endpoint with the hub's TLS and transport settings.
pub fn endpoint(pki: &Pki, cfg: &HubConfig) -> anyhow::Result<quinn::Endpoint> {
    let tls = pki.hub_tls()?;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(cfg.keep_alive));
    transport.max_idle_timeout(Some(quinn::IdleTimeout::try_from(cfg.idle_timeout)?));
    transport.max_concurrent_bidi_streams(4u32.into());
    transport.max_concurrent_uni_streams(0u32.into());
    server.transport_config(Arc::new(transport));
    quinn::Endpoint::server(server, cfg.listen).map_err(|e| {
        anyhow::anyhow!(
            "cannot listen for edge nodes on udp {}: {e}; pick another --hub-addr",
            cfg.listen
        )
    })
}

impl Hub {
    /// A hub over `store`, issuing identities from `pki`.
    pub fn new(api: Client, pki: Arc<Pki>) -> Arc<Self> {
        Arc::new(Self {
            store: api.state().store.clone(),
            api,
            pki,
            sessions: Mutex::new(HashMap::new()),
            next_session: AtomicU64::new(1),
            join_slots: tokio::sync::Semaphore::new(MAX_CONCURRENT_JOINS),
            index: RwLock::new(ConfigIndex::new()),
            handled: AtomicU64::new(0),
        })
    }

    /// Names of the nodes with a live session, sorted.
    pub async fn connected_nodes(&self) -> Vec<String> {
        let mut v: Vec<String> = self.sessions.lock().await.keys().cloned().collect();
        v.sort();
        v
    }

    /// Accepts connections until the endpoint is closed, and wakes sessions when their shard
    /// or a config they reference changes. Builds the config index first, so that no session
    /// starts before the hub knows which configs its node needs.
    pub async fn run(self: Arc<Self>, endpoint: quinn::Endpoint) {
        // Subscribe before listing: every write after the listing's revision is then seen.
        let events = self.store.subscribe();
        self.resync_until_done(None).await;
        tokio::spawn(self.clone().dispatch_changes(events));
        while let Some(incoming) = endpoint.accept().await {
            let hub = self.clone();
            tokio::spawn(async move {
                let remote = incoming.remote_address();
                match incoming.await {
                    Ok(conn) => hub.handle_connection(conn).await,
                    Err(e) => debug!(%remote, error = %e, "handshake failed"),
                }
            });
        }
    }

    /// [`Hub::resync`], retried until the store answers.
    async fn resync_until_done(&self, since: Option<u64>) {
        while let Err(e) = self.resync(since).await {
            error!(error = %e, "cannot list pods and configs to index config references; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Rebuilds the config index from a listing of every pod. With `since` (after the change
    /// feed lagged, events after `since` were lost), also marks on the live sessions every
    /// referenced config written after `since` or missing, and wakes every session.
    async fn resync(&self, since: Option<u64>) -> Result<(), StoreError> {
        let (pods, listed) = self.store.list("pods", None).await?;
        let mut index = ConfigIndex::new();
        for p in &pods {
            let meta = |f: &str| {
                p.value
                    .pointer(&format!("/metadata/{f}"))
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string()
            };
            index.apply(
                &ObjectKey::new("pods", meta("namespace"), meta("name")),
                Some(&p.value),
            );
        }
        let marks = match since {
            Some(since) => index.changed_since(self.store.as_ref(), since).await?,
            None => Vec::new(),
        };
        info!(
            pods = index.pod_count(),
            configs = index.configs().len(),
            revision = listed,
            "indexed the ConfigMaps and Secrets that pods reference"
        );
        *self.index.write().await = index;
        if since.is_some() {
            let sessions = self.sessions.lock().await;
            for (config, nodes) in marks {
                for node in nodes {
                    if let Some(s) = sessions.get(&node) {
                        s.signals.mark(config.clone(), 0).await;
                    }
                }
            }
            for s in sessions.values() {
                s.signals.changed.notify_one();
            }
        }
        self.handled.fetch_max(listed, Ordering::SeqCst);
        Ok(())
    }

    async fn dispatch_changes(
        self: Arc<Self>,
        mut events: tokio::sync::broadcast::Receiver<Event>,
    ) {
        loop {
            match events.recv().await {
                Ok(ev) => self.handle_event(ev).await,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    warn!(
                        missed = n,
                        "hub fell behind the store's change feed; re-indexing and waking every session"
                    );
                    let since = self.handled.load(Ordering::SeqCst);
                    self.resync_until_done(Some(since)).await;
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    /// Handles one committed write (see the module docs for why the order matters).
    async fn handle_event(&self, ev: Event) {
        // Writes up to `handled` are in the listing the index was (re)built from.
        if ev.revision <= self.handled.load(Ordering::SeqCst) {
            return;
        }
        if ev.key.resource == "pods" {
            let (node, refs) = config_index::pod_refs(&ev.key, ev.value.as_ref());
            self.index
                .write()
                .await
                .set_pod(&ev.key, node.as_deref(), refs);
        }
        let config = config_index::config_ref_of(&ev.key);
        if config.is_some() || !ev.shards.is_empty() {
            let nodes = match &config {
                Some(c) => self.index.read().await.nodes_referencing(c),
                None => Vec::new(),
            };
            let sessions = self.sessions.lock().await;
            if let Some(config) = config {
                for node in &nodes {
                    if let Some(s) = sessions.get(node) {
                        s.signals.mark(config.clone(), 0).await;
                        s.signals.changed.notify_one();
                    }
                }
            }
            for shard in &ev.shards {
                if let Some(s) = sessions.get(shard) {
                    s.signals.changed.notify_one();
                }
            }
        }
        self.handled.fetch_max(ev.revision, Ordering::SeqCst);
    }

    async fn handle_connection(self: Arc<Self>, conn: quinn::Connection) {
        let remote = conn.remote_address();
        let alpn = conn
            .handshake_data()
            .and_then(|h| h.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
            .and_then(|h| h.protocol);
        match alpn.as_deref() {
            Some(p) if p == protocol::ALPN_JOIN => {
                let span = info_span!("join", %remote);
                let Ok(_slot) = self.join_slots.try_acquire() else {
                    span.in_scope(|| warn!("too many joins at once; turning this one away"));
                    conn.close(
                        close_codes::REJECTED.into(),
                        b"cloudcore is busy with other joins; retry in a few seconds",
                    );
                    return;
                };
                if let Err(e) = self.join(&conn).instrument(span.clone()).await {
                    span.in_scope(|| warn!(error = %e, "join connection failed"));
                    conn.close(close_codes::PROTOCOL.into(), b"protocol error");
                }
            }
            Some(p) if p == protocol::ALPN_SYNC => {
                let identity = conn
                    .peer_identity()
                    .and_then(|i| {
                        i.downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>()
                            .ok()
                    })
                    .and_then(|chain| {
                        let cert = chain.first()?;
                        Some((pki::node_name_from_cert(cert)?, cert.as_ref().to_vec()))
                    });
                let Some((node, cert_der)) = identity else {
                    warn!(%remote, "sync connection without a valid node certificate; closing");
                    conn.close(
                        close_codes::REJECTED.into(),
                        b"a node certificate is required: run edgecore join first",
                    );
                    return;
                };
                let span = info_span!("node_session", node = %node, %remote);
                match self
                    .clone()
                    .session(&conn, &node, &cert_der)
                    .instrument(span.clone())
                    .await
                {
                    Ok(()) => {}
                    Err(SessionError::Codec(e)) => {
                        span.in_scope(
                            || warn!(error = %e, "closing connection that sent a bad frame"),
                        );
                        metrics::counter!("skerry_hub_protocol_errors_total").increment(1);
                        conn.close(close_codes::PROTOCOL.into(), b"malformed frame");
                    }
                    Err(e) => span.in_scope(|| info!(error = %e, "session ended")),
                }
            }
            other => {
                warn!(%remote, alpn = ?other.map(String::from_utf8_lossy), "unknown ALPN; closing");
                conn.close(close_codes::PROTOCOL.into(), b"unknown protocol");
            }
        }
    }

    async fn join(&self, conn: &quinn::Connection) -> Result<(), SessionError> {
        let (mut send, mut recv) = tokio::time::timeout(Duration::from_secs(10), conn.accept_bi())
            .await
            .map_err(|_| SessionError::Timeout)??;
        let req: JoinRequest = tokio::time::timeout(Duration::from_secs(10), read_frame(&mut recv))
            .await
            .map_err(|_| SessionError::Timeout)??
            .ok_or_else(|| {
                SessionError::Protocol("join stream closed before the request".into())
            })?;
        let node = req.node_name.clone();
        let response = match self.handle_join(req).await {
            Ok(resp) => {
                info!(%node, "node joined");
                metrics::counter!("skerry_hub_joins_total", "result" => "accepted").increment(1);
                resp
            }
            Err(refusal) => {
                warn!(%node, reason = %refusal, "join refused");
                metrics::counter!("skerry_hub_joins_total", "result" => "refused").increment(1);
                JoinResponse::Refused(refusal)
            }
        };
        write_frame(&mut send, &response).await?;
        let _ = send.finish();
        // Let the edge read the answer and close; don't hold the connection forever.
        let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
        Ok(())
    }

    async fn handle_join(&self, req: JoinRequest) -> Result<JoinResponse, JoinRefusal> {
        if req.protocol_version != protocol::PROTOCOL_VERSION {
            return Err(JoinRefusal::VersionMismatch {
                cloud: protocol::PROTOCOL_VERSION,
                edge: req.protocol_version,
            });
        }
        pki::validate_node_name(&req.node_name).map_err(|reason| JoinRefusal::InvalidNodeName {
            name: req.node_name.clone(),
            reason,
        })?;
        for (k, v) in &req.labels {
            if k.is_empty() || k.len() > 253 || v.len() > 63 {
                return Err(JoinRefusal::InvalidNodeName {
                    name: req.node_name.clone(),
                    reason: format!("label {k:?}={v:?} is not a valid Kubernetes label"),
                });
            }
        }
        self.pki.check_csr(&req.csr_pem)?;
        self.pki.consume_token(&req.token, &req.node_name)?;
        let certificate_pem = self.pki.sign_node(&req.node_name, &req.csr_pem)?;
        // A re-join supersedes the node's old certificate: close a session that still uses it
        // (it is refused as superseded when it tries again).
        if let Some(old) = self.sessions.lock().await.remove(&req.node_name) {
            old.conn.close(
                close_codes::REPLACED.into(),
                b"superseded by a newer join of this node",
            );
        }
        if self.pki.is_revoked(&req.node_name) {
            // Only a token made for this node gets here: its join re-admits the node, and the
            // new certificate supersedes the revoked one.
            self.pki
                .unrevoke(&req.node_name)
                .map_err(|e| JoinRefusal::Internal(e.to_string()))?;
        }
        self.register_node(&req.node_name, &req.labels)
            .await
            .map_err(|e| JoinRefusal::Internal(e.to_string()))?;
        let report_key = self
            .pki
            .issue_report_key(&req.node_name)
            .map_err(|e| JoinRefusal::Internal(e.to_string()))?;
        Ok(JoinResponse::Accepted {
            report_key,
            certificate_pem,
            ca_pem: self.pki.ca_pem().to_string(),
        })
    }

    /// Creates the Node object for a joining node, or merges its labels into an existing one,
    /// through the API (as kubelet registers itself with kube-apiserver), so the node kind's
    /// defaulting and validation apply and the write is one the API can authorize.
    async fn register_node(
        &self,
        node: &str,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> Result<(), ApiError> {
        let mut all = labels.clone();
        all.insert("kubernetes.io/hostname".into(), node.into());
        all.insert("kubernetes.io/os".into(), "linux".into());
        all.insert("node-role.kubernetes.io/edge".into(), String::new());
        for _ in 0..REGISTER_ATTEMPTS {
            if let Some(mut v) = self.api.get("nodes", "", node).await? {
                // The read's resourceVersion stays in `v`: the update is conditional on it.
                match v
                    .pointer_mut("/metadata/labels")
                    .and_then(Value::as_object_mut)
                {
                    Some(m) => all.iter().for_each(|(k, val)| {
                        m.insert(k.clone(), json!(val));
                    }),
                    None => v["metadata"]["labels"] = json!(all),
                }
                match self.api.update("nodes", "", v).await {
                    Ok(_) => return Ok(()),
                    Err(ApiError::Conflict { .. } | ApiError::NotFound { .. }) => continue,
                    Err(e) => return Err(e),
                }
            }
            let now = clock::now_rfc3339();
            let obj = json!({
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": node, "labels": all},
                "spec": {},
                "status": {"conditions": [{
                    "type": "Ready", "status": "Unknown", "reason": "NodeStatusNeverUpdated",
                    "message": "edgecore has not reported status yet", "lastHeartbeatTime": now, "lastTransitionTime": now
                }]}
            });
            match self.api.create("nodes", "", obj).await {
                Ok(_) => return Ok(()),
                Err(ApiError::AlreadyExists { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(ApiError::Internal(format!(
            "node {node} kept changing while it was registered; join again"
        )))
    }

    async fn session(
        self: Arc<Self>,
        conn: &quinn::Connection,
        node: &str,
        cert_der: &[u8],
    ) -> Result<(), SessionError> {
        let (mut send, mut recv) = tokio::time::timeout(Duration::from_secs(10), conn.accept_bi())
            .await
            .map_err(|_| SessionError::Timeout)??;
        let hello = match tokio::time::timeout(
            Duration::from_secs(10),
            read_frame::<EdgeMessage>(&mut recv),
        )
        .await
        .map_err(|_| SessionError::Timeout)??
        {
            Some(EdgeMessage::Hello(h)) => h,
            Some(other) => {
                let reject =
                    Reject::ProtocolViolation(format!("expected Hello first, got {other:?}"));
                return self.reject(conn, &mut send, reject).await;
            }
            None => return Err(SessionError::Protocol("stream closed before Hello".into())),
        };
        let reject = if hello.protocol_version != protocol::PROTOCOL_VERSION {
            Some(Reject::VersionMismatch {
                cloud: protocol::PROTOCOL_VERSION,
                edge: hello.protocol_version,
            })
        } else if hello.node_name != node {
            Some(Reject::NameMismatch {
                claimed: hello.node_name.clone(),
                certified: node.to_string(),
            })
        } else if self.pki.is_revoked(node) {
            Some(Reject::Revoked {
                node: node.to_string(),
            })
        } else if !self.pki.is_known(node) {
            Some(Reject::UnknownNode {
                node: node.to_string(),
            })
        } else if !self.pki.is_current_cert(node, cert_der) {
            Some(Reject::Superseded {
                node: node.to_string(),
            })
        } else {
            None
        };
        if let Some(reject) = reject {
            return self.reject(conn, &mut send, reject).await;
        }
        write_frame(
            &mut send,
            &CloudMessage::Welcome(Welcome {
                protocol_version: protocol::PROTOCOL_VERSION,
                node_name: node.to_string(),
            }),
        )
        .await?;

        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        let signals = Arc::new(Signals::default());
        signals.acked.store(hello.acked_revision, Ordering::Relaxed);
        if let Some(old) = self.sessions.lock().await.insert(
            node.to_string(),
            Session {
                id,
                signals: signals.clone(),
                conn: conn.clone(),
            },
        ) {
            info!("replacing the node's previous session");
            old.conn
                .close(close_codes::REPLACED.into(), b"replaced by a newer session");
        }
        // A revocation that landed between the checks above and this registration would have
        // found no session to close; look again now that the session can be found.
        if self.pki.is_revoked(node) {
            signals.revoked.notify_one();
        }
        // Configs written while the node was away (see the module docs, "Resuming").
        let configs = self.index.read().await.configs_of(node);
        for config in configs {
            signals.mark(config, hello.acked_revision).await;
        }
        metrics::gauge!("skerry_hub_connected_nodes").increment(1.0);
        info!(
            acked_revision = hello.acked_revision,
            "node session started"
        );
        let result = self
            .stream(conn, node, &mut send, recv, hello.acked_revision, &signals)
            .await;
        metrics::gauge!("skerry_hub_connected_nodes").decrement(1.0);
        let mut sessions = self.sessions.lock().await;
        if sessions.get(node).is_some_and(|s| s.id == id) {
            sessions.remove(node);
        }
        result
    }

    async fn reject(
        &self,
        conn: &quinn::Connection,
        send: &mut quinn::SendStream,
        reject: Reject,
    ) -> Result<(), SessionError> {
        warn!(reason = %reject, "refusing node session");
        metrics::counter!("skerry_hub_rejects_total").increment(1);
        write_frame(send, &CloudMessage::Reject(reject.clone())).await?;
        let _ = send.finish();
        let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
        conn.close(close_codes::REJECTED.into(), reject.to_string().as_bytes());
        Ok(())
    }

    async fn stream(
        &self,
        conn: &quinn::Connection,
        node: &str,
        send: &mut quinn::SendStream,
        mut recv: quinn::RecvStream,
        from: u64,
        signals: &Signals,
    ) -> Result<(), SessionError> {
        // Reads run in their own task: read_exact is not cancel-safe, so it must not sit in a
        // select! that may drop it halfway through a frame.
        let (tx, mut rx) = mpsc::channel::<Result<Option<EdgeMessage>, SessionError>>(16);
        let reader = tokio::spawn(async move {
            loop {
                let msg = read_frame::<EdgeMessage>(&mut recv).await;
                let end = !matches!(msg, Ok(Some(_)));
                if tx.send(msg).await.is_err() || end {
                    return;
                }
            }
        });
        let _abort_reader = AbortOnDrop(reader);
        let mut sent = from;
        loop {
            sent = self.send_pending(node, sent, send, signals).await?;
            tokio::select! {
                _ = signals.changed.notified() => {}
                msg = rx.recv() => match msg {
                    Some(Ok(Some(EdgeMessage::Ack(a)))) => {
                        if a.revision > sent {
                            return Err(SessionError::Protocol(format!("ack of revision {} that was never sent (sent up to {sent})", a.revision)));
                        }
                        signals.acked.fetch_max(a.revision, Ordering::Relaxed);
                        metrics::counter!("skerry_hub_acks_total").increment(1);
                        debug!(revision = a.revision, "ack");
                    }
                    Some(Ok(Some(EdgeMessage::Hello(_)))) => {
                        return Err(SessionError::Protocol("Hello in the middle of a session".into()));
                    }
                    Some(Ok(None)) | None => return Ok(()),
                    Some(Err(e)) => return Err(e),
                },
                _ = signals.revoked.notified() => {
                    warn!("node revoked; closing its session");
                    write_frame(send, &CloudMessage::Reject(Reject::Revoked { node: node.to_string() })).await?;
                    let _ = send.finish();
                    let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
                    conn.close(close_codes::REJECTED.into(), b"node revoked");
                    return Ok(());
                }
                reason = conn.closed() => return Err(reason.into()),
            }
        }
    }

    /// Sends everything in the node's shard after `sent`, with the configs its pods reference,
    /// and the configs marked for the node; returns the new high-water mark.
    async fn send_pending(
        &self,
        node: &str,
        sent: u64,
        send: &mut quinn::SendStream,
        signals: &Signals,
    ) -> Result<u64, SessionError> {
        // Order matters (module docs): the cap, then the marks, then the shard.
        let cap = self.handled.load(Ordering::SeqCst);
        let marked = std::mem::take(&mut *signals.marked.lock().await);
        let (batches, new_sent) = match self.store.read_shard(node, sent).await? {
            ShardRead::Snapshot { members, upto } => {
                // A snapshot carries every config its pods reference: the marks are covered.
                let parts = plan::snapshot(self.store.as_ref(), node, &members, upto).await?;
                info!(
                    objects = parts.iter().map(|p| p.upserts.len()).sum::<usize>(),
                    parts = parts.len(),
                    revision = upto,
                    "sending snapshot"
                );
                (parts, upto)
            }
            ShardRead::Delta { changes, upto } => {
                let upto = sent.max(upto.min(cap));
                let marked: Vec<(ObjectRef, u64)> = if marked.is_empty() {
                    Vec::new()
                } else {
                    let index = self.index.read().await;
                    marked
                        .into_iter()
                        .filter(|(c, _)| index.references(node, c))
                        .collect()
                };
                let batches =
                    plan::delta(self.store.as_ref(), node, sent, upto, &changes, marked).await?;
                (batches, upto)
            }
        };
        for batch in batches {
            // What was just read may include writes not yet flushed; never hand a node a
            // state that a crash could take back.
            self.store
                .wait_durable(self.store.assigned_revision())
                .await?;
            self.send_batch(send, batch).await?;
        }
        Ok(new_sent)
    }

    async fn send_batch(
        &self,
        send: &mut quinn::SendStream,
        batch: SyncBatch,
    ) -> Result<(), SessionError> {
        debug!(
            revision = batch.revision,
            upserts = batch.upserts.len(),
            deletes = batch.deletes.len(),
            snapshot = batch.snapshot,
            "sending batch"
        );
        metrics::counter!("skerry_hub_batches_total").increment(1);
        metrics::counter!("skerry_hub_objects_sent_total")
            .increment((batch.upserts.len() + batch.deletes.len()) as u64);
        for u in &batch.upserts {
            let kind = match &u.object {
                EdgeObject::Pod(_) => continue,
                EdgeObject::ConfigMap(_) => "ConfigMap",
                EdgeObject::Secret(_) => "Secret",
            };
            metrics::counter!("skerry_hub_configs_sent_total", "kind" => kind).increment(1);
        }
        for d in &batch.deletes {
            let kind = match d.kind {
                ObjectKind::Pod => continue,
                ObjectKind::ConfigMap => "ConfigMap",
                ObjectKind::Secret => "Secret",
            };
            metrics::counter!("skerry_hub_config_deletes_sent_total", "kind" => kind).increment(1);
        }
        write_frame(send, &CloudMessage::Sync(batch)).await
    }

    /// Closes the live session of a node that was just revoked (the node is told why). Its
    /// reconnects are then refused at Hello.
    pub async fn revoke_session(&self, node: &str) {
        if let Some(s) = self.sessions.lock().await.get(node) {
            s.signals.revoked.notify_one();
        }
    }

    /// The revision each connected node has acked, for observability.
    pub async fn acked_revisions(&self) -> Vec<(String, u64)> {
        let mut v: Vec<_> = self
            .sessions
            .lock()
            .await
            .iter()
            .map(|(n, s)| (n.clone(), s.signals.acked.load(Ordering::Relaxed)))
            .collect();
        v.sort();
        v
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
