//! The hub: one QUIC connection per edge node, streaming that node's slice of the desired state.
//!
//! Per connected node the hub holds a small session (a task, a `Notify`, the last revision sent);
//! there is no thread per node and no per-(node, object) record. A session starts from the
//! revision the edge says it made durable and reads the node's shard log after it (see
//! [`crate::store`]), so a reconnect costs what changed while the node was away, and a node
//! that is new or too far behind gets one snapshot. Acks only advance what the hub reports; the
//! edge's Hello is the source of truth after any reconnect, which makes delivery at-least-once
//! and idempotent on the edge.
//!
//! The same endpoint serves the join exchange (ALPN `skerry-join/1`): a bootstrap token and a CSR
//! in, a node certificate out.

use crate::clock;
use crate::pki::{self, Pki};
use crate::projection;
use crate::store::{ObjectKey, ShardRead, Store, StoreError};
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
use tokio::sync::{mpsc, Mutex, Notify};
use tracing::{debug, error, info, info_span, warn, Instrument};

/// Largest frame the hub accepts from an edge.
const MAX_INBOUND_FRAME: usize = 64 * 1024;

/// Joins handled at once; more are turned away (the edge retries), so a flood of
/// unauthenticated join connections cannot pile up.
const MAX_CONCURRENT_JOINS: usize = 64;

/// Largest number of objects in one delta batch; larger deltas are split.
const MAX_BATCH_OBJECTS: usize = 256;

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
    /// The node's shard changed.
    changed: Notify,
    /// The node was revoked: the session sends Reject and closes.
    revoked: Notify,
    /// Highest revision the edge acked.
    acked: AtomicU64,
}

/// The hub. Cheap to share: clone the `Arc`.
pub struct Hub {
    store: Arc<dyn Store>,
    pki: Arc<Pki>,
    sessions: Mutex<HashMap<String, Session>>,
    next_session: AtomicU64,
    join_slots: tokio::sync::Semaphore,
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

async fn read_frame<T: DeserializeOwned>(
    recv: &mut quinn::RecvStream,
) -> Result<Option<T>, SessionError> {
    let mut header = [0u8; codec::HEADER_LEN];
    match recv.read_exact(&mut header).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = codec::frame_len(header)?;
    // Edges send only small messages (Hello, Ack, a join request with a CSR); refusing anything
    // larger before allocating keeps unauthenticated join connections from costing megabytes.
    if len > MAX_INBOUND_FRAME {
        return Err(SessionError::Codec(codec::CodecError::Malformed {
            what: "frame",
            reason: format!(
                "{len} bytes exceed the hub's {MAX_INBOUND_FRAME}-byte limit for edge messages"
            ),
        }));
    }
    let mut payload = vec![0u8; len];
    recv.read_exact(&mut payload).await?;
    Ok(Some(codec::decode(&payload)?))
}

async fn write_frame<T: Serialize>(
    send: &mut quinn::SendStream,
    msg: &T,
) -> Result<(), SessionError> {
    // An encoding failure is ours (e.g. a batch over the frame limit), not the peer's fault.
    let bytes = codec::encode_frame(msg).map_err(|e| {
        SessionError::Protocol(format!("cannot encode a message for the edge: {e}"))
    })?;
    send.write_all(&bytes).await?;
    Ok(())
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
    pub fn new(store: Arc<dyn Store>, pki: Arc<Pki>) -> Arc<Self> {
        Arc::new(Self {
            store,
            pki,
            sessions: Mutex::new(HashMap::new()),
            next_session: AtomicU64::new(1),
            join_slots: tokio::sync::Semaphore::new(MAX_CONCURRENT_JOINS),
        })
    }

    /// Names of the nodes with a live session, sorted.
    pub async fn connected_nodes(&self) -> Vec<String> {
        let mut v: Vec<String> = self.sessions.lock().await.keys().cloned().collect();
        v.sort();
        v
    }

    /// Accepts connections until the endpoint is closed, and wakes sessions when their shard
    /// changes.
    pub async fn run(self: Arc<Self>, endpoint: quinn::Endpoint) {
        tokio::spawn(self.clone().dispatch_changes());
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

    async fn dispatch_changes(self: Arc<Self>) {
        let mut events = self.store.subscribe();
        loop {
            match events.recv().await {
                Ok(ev) => {
                    if ev.shards.is_empty() {
                        continue;
                    }
                    let sessions = self.sessions.lock().await;
                    for shard in &ev.shards {
                        if let Some(s) = sessions.get(shard) {
                            s.signals.changed.notify_one();
                        }
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    warn!(
                        missed = n,
                        "hub fell behind the store's change feed; waking every session"
                    );
                    for s in self.sessions.lock().await.values() {
                        s.signals.changed.notify_one();
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
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

    /// Creates the Node object for a joining node, or merges its labels into an existing one.
    async fn register_node(
        &self,
        node: &str,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> Result<(), StoreError> {
        let key = ObjectKey::new("nodes", "", node);
        let mut all = labels.clone();
        all.insert("kubernetes.io/hostname".into(), node.into());
        all.insert("kubernetes.io/os".into(), "linux".into());
        all.insert("node-role.kubernetes.io/edge".into(), String::new());
        if self.store.get(&key)?.is_some() {
            crate::store::update_with(self.store.as_ref(), &key, |v| {
                let mut v = v.clone();
                let current = v
                    .pointer_mut("/metadata/labels")
                    .and_then(Value::as_object_mut);
                match current {
                    Some(m) => all.iter().for_each(|(k, val)| {
                        m.insert(k.clone(), json!(val));
                    }),
                    None => v["metadata"]["labels"] = json!(all),
                }
                Some(v)
            })
            .await?;
            return Ok(());
        }
        let now = clock::now_rfc3339();
        let obj = json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": node, "uid": uuid::Uuid::new_v4().to_string(), "creationTimestamp": now, "labels": all},
            "spec": {},
            "status": {"conditions": [{
                "type": "Ready", "status": "Unknown", "reason": "NodeStatusNeverUpdated",
                "message": "edgecore has not reported status yet", "lastHeartbeatTime": now, "lastTransitionTime": now
            }]}
        });
        match self.store.create(&key, obj).await {
            Ok(_) | Err(StoreError::AlreadyExists(_)) => Ok(()),
            Err(e) => Err(e),
        }
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
            sent = self.send_pending(node, sent, send).await?;
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

    /// Sends everything in the node's shard after `sent`; returns the new high-water mark.
    async fn send_pending(
        &self,
        node: &str,
        sent: u64,
        send: &mut quinn::SendStream,
    ) -> Result<u64, SessionError> {
        match self.store.read_shard(node, sent)? {
            ShardRead::Snapshot { members, upto } => {
                let mut upserts = Vec::with_capacity(members.len());
                for key in &members {
                    match self.upsert_for(node, key) {
                        Ok(Some(u)) => upserts.push(u),
                        Ok(None) => {}
                        Err(e) => {
                            error!(error = %e, "skipping object that cannot be projected; fix or delete it")
                        }
                    }
                }
                self.store
                    .wait_durable(self.store.assigned_revision())
                    .await?;
                info!(objects = upserts.len(), revision = upto, "sending snapshot");
                let batch = SyncBatch {
                    revision: upto,
                    snapshot: true,
                    upserts,
                    deletes: vec![],
                };
                self.send_batch(send, batch).await?;
                Ok(upto)
            }
            ShardRead::Delta { changes, upto } => {
                if changes.is_empty() {
                    return Ok(upto.max(sent));
                }
                // Latest change per object, in revision order of that latest change.
                let mut last: HashMap<&ObjectKey, u64> = HashMap::new();
                for c in &changes {
                    last.insert(&c.key, c.revision);
                }
                let mut keys: Vec<(&ObjectKey, u64)> = last.into_iter().collect();
                keys.sort_by_key(|(_, r)| *r);
                let chunks: Vec<_> = keys.chunks(MAX_BATCH_OBJECTS).collect();
                let n = chunks.len();
                for (i, chunk) in chunks.into_iter().enumerate() {
                    let mut batch = SyncBatch {
                        revision: if i + 1 == n {
                            upto
                        } else {
                            chunk.last().map(|(_, r)| *r).unwrap_or(upto)
                        },
                        snapshot: false,
                        upserts: vec![],
                        deletes: vec![],
                    };
                    for (key, _) in chunk {
                        match self.upsert_for(node, key) {
                            Ok(Some(u)) => batch.upserts.push(u),
                            Ok(None) => batch.deletes.push(ObjectRef {
                                kind: ObjectKind::Pod,
                                namespace: key.namespace.clone(),
                                name: key.name.clone(),
                            }),
                            Err(e) => {
                                error!(error = %e, "skipping object that cannot be projected; fix or delete it")
                            }
                        }
                    }
                    // What was just read may include writes committed after `upto` but not yet
                    // flushed; never hand a node a state that a crash could take back.
                    self.store
                        .wait_durable(self.store.assigned_revision())
                        .await?;
                    self.send_batch(send, batch).await?;
                }
                Ok(upto)
            }
        }
    }

    /// The current edge form of `key` if it is (still) in `node`'s slice.
    fn upsert_for(&self, node: &str, key: &ObjectKey) -> Result<Option<Upsert>, anyhow::Error> {
        let Some(stored) = self.store.get(key)? else {
            return Ok(None);
        };
        if projection::node_of(key, &stored.value).as_deref() != Some(node) {
            return Ok(None);
        }
        let pod = projection::edge_pod(&stored.value)?;
        Ok(Some(Upsert {
            revision: stored.revision,
            object: EdgeObject::Pod(pod),
        }))
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
