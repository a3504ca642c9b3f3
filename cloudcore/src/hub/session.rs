//! The session path: one mTLS connection per joined node, streaming its slice of the desired
//! state.
//!
//! It exists apart from the join path because it only ever serves a node that proved its
//! identity (ALPN `skerry-sync/1`, a node certificate): the Hello is checked against that
//! certificate and the PKI (version, name, revoked, unknown, superseded), then the session
//! registers itself where the dispatcher can signal it, and streams batches (from `plan`) after
//! the revision the edge says it holds, taking acks, until the link ends, the node is revoked or
//! a newer session replaces it. Why a round reads the cap, the marks and the shard in that order
//! is in the hub's module docs.

use super::ack_lag::{AckLag, Transition};
use super::{close_codes, plan, read_frame, write_frame, Hub, SessionError};
use crate::store::ShardRead;
use protocol::messages::*;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Mutex, Notify};
use tracing::{debug, info, warn};

/// The node condition the hub keeps: `True` while the node does not acknowledge what it is sent
/// (see [`super::ack_lag`]).
pub const SYNC_LAGGING: &str = "SyncLagging";
/// Reason of `SyncLagging=True`.
pub const SYNC_LAGGING_REASON: &str = "AcksLagging";
/// Reason of `SyncLagging=True` when the node closed its link for hearing nothing.
pub const EDGE_DEAF_REASON: &str = "NodeHearsNothing";
/// Reason of `SyncLagging=False`.
pub const SYNC_CURRENT_REASON: &str = "AcksCurrent";

/// A live session, as the rest of the hub finds it.
pub(super) struct Session {
    pub(super) id: u64,
    pub(super) signals: Arc<Signals>,
    pub(super) conn: quinn::Connection,
}

/// What the rest of the hub tells a running session, and what it reports back.
#[derive(Default)]
pub(super) struct Signals {
    /// The node's shard changed, or a config was marked.
    pub(super) changed: Notify,
    /// The node was revoked: the session sends Reject and closes.
    pub(super) revoked: Notify,
    /// Highest revision the edge acked.
    pub(super) acked: AtomicU64,
    /// ConfigMaps and Secrets to send: each only if its store revision is above the value
    /// (0: always), or as a delete if it does not exist.
    pub(super) marked: Mutex<HashMap<ObjectRef, u64>>,
}

impl Signals {
    /// Marks `config` to be sent if newer than `newer_than` (the lowest bound wins).
    pub(super) async fn mark(&self, config: ObjectRef, newer_than: u64) {
        let mut marked = self.marked.lock().await;
        let bound = marked.entry(config).or_insert(newer_than);
        *bound = (*bound).min(newer_than);
    }
}

impl Hub {
    pub(super) async fn session(
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
        // Edges one version behind are served: nothing on the link changed from v3 to v4
        // (`protocol::compat`); the node's `EdgeVersionSkew` condition tells the admin.
        let reject = if !protocol::edge_version_supported(hello.protocol_version) {
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
        // Configs written while the node was away (see the hub's module docs, "Resuming").
        let configs = self.index.read().await.configs_of(node);
        for config in configs {
            signals.mark(config, hello.acked_revision).await;
        }
        self.mark_back(node);
        metrics::gauge!("skerry_hub_connected_nodes").increment(1.0);
        info!(
            acked_revision = hello.acked_revision,
            "node session started"
        );
        let result = self
            .stream(conn, node, &mut send, recv, hello.acked_revision, &signals)
            .await;
        if let Some(quinn::ConnectionError::ApplicationClosed(close)) = conn.close_reason() {
            if close.error_code == quinn::VarInt::from_u32(protocol::CLOSE_EDGE_DEAF) {
                // Its close reached us, our packets did not reach it: one-way, towards the node.
                let said = String::from_utf8_lossy(&close.reason).into_owned();
                warn!(edge_said = %said, "the node closed its link because it hears nothing from the cloud: the link towards it is cut");
                set_sync_lagging(&self.api, node, Transition::EdgeDeaf(said));
            }
        }
        metrics::gauge!("skerry_hub_connected_nodes").decrement(1.0);
        let mut sessions = self.sessions.lock().await;
        if sessions.get(node).is_some_and(|s| s.id == id) {
            sessions.remove(node);
            self.mark_away(node);
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
        let limit = u64::try_from(self.ack_lag_limit.as_millis()).unwrap_or(u64::MAX);
        let lag = Arc::new(std::sync::Mutex::new(AckLag::new(limit, from)));
        // Liveness and the ack-lag check run beside the stream, not in its loop: a batch write
        // that waits for flow control (the node does not read, the link is cut towards it)
        // must not stop either.
        let _watch = AbortOnDrop(tokio::spawn(watch_link(
            conn.clone(),
            node.to_string(),
            lag.clone(),
            self.liveness.clone(),
            self.api.clone(),
        )));
        let lag =
            |f: &mut dyn FnMut(&mut AckLag)| f(&mut lag.lock().unwrap_or_else(|e| e.into_inner()));
        loop {
            let (upto, last_batch) = self.send_pending(node, sent, send, signals).await?;
            sent = upto;
            // Only a batch is acknowledged: a round that moved the mark without sending one
            // (nothing of this node changed) owes nothing.
            if let Some(revision) = last_batch {
                lag(&mut |l| l.sent(revision, crate::clock::now_ms()));
            }
            tokio::select! {
                _ = signals.changed.notified() => {}
                msg = rx.recv() => match msg {
                    Some(Ok(Some(EdgeMessage::Ack(a)))) => {
                        if a.revision > sent {
                            return Err(SessionError::Protocol(format!("ack of revision {} that was never sent (sent up to {sent})", a.revision)));
                        }
                        signals.acked.fetch_max(a.revision, Ordering::Relaxed);
                        lag(&mut |l| l.acked(a.revision));
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
    /// and the configs marked for the node; returns the new high-water mark and the revision of
    /// the last batch sent, if any.
    async fn send_pending(
        &self,
        node: &str,
        sent: u64,
        send: &mut quinn::SendStream,
        signals: &Signals,
    ) -> Result<(u64, Option<u64>), SessionError> {
        // Order matters (the hub's module docs): the cap, then the marks, then the shard.
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
        let mut last_batch = None;
        for batch in batches {
            // What was just read may include writes not yet flushed; never hand a node a
            // state that a crash could take back.
            self.store
                .wait_durable(self.store.assigned_revision())
                .await?;
            last_batch = Some(batch.revision);
            self.send_batch(send, batch).await?;
        }
        Ok((new_sent, last_batch))
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
                EdgeObject::Service(_) => "Service",
                EdgeObject::EndpointSlice(_) => "EndpointSlice",
                EdgeObject::Network(_) => "Network",
            };
            metrics::counter!("skerry_hub_configs_sent_total", "kind" => kind).increment(1);
        }
        for d in &batch.deletes {
            let kind = match d.kind {
                ObjectKind::Pod => continue,
                ObjectKind::ConfigMap => "ConfigMap",
                ObjectKind::Secret => "Secret",
                ObjectKind::Service => "Service",
                ObjectKind::EndpointSlice => "EndpointSlice",
                ObjectKind::Network => "Network",
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

/// Samples a session's connection once a second: a datagram received since the last sample
/// renews the node's liveness, and the ack-lag rule is checked (its transitions written to the
/// node). Runs beside the session's stream loop, for as long as the session.
async fn watch_link(
    conn: quinn::Connection,
    node: String,
    lag: Arc<std::sync::Mutex<AckLag>>,
    liveness: crate::liveness::Liveness,
    api: crate::api::client::Client,
) {
    let mut received = conn.stats().udp_rx.datagrams;
    liveness.heard(&node, crate::clock::now_ms());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // The node is alive as long as its link carries anything to us (its keep-alives at
        // the least): the liveness the controller reads.
        let now = crate::clock::now_ms();
        let rx = conn.stats().udp_rx.datagrams;
        if rx > received {
            received = rx;
            liveness.heard(&node, now);
        }
        let due = lag.lock().unwrap_or_else(|e| e.into_inner()).check(now);
        if let Some(t) = due {
            set_sync_lagging(&api, &node, t);
        }
    }
}

/// Writes the node's `SyncLagging` condition for `t` through the API, in the background: the
/// session goes on streaming meanwhile, and a write that fails is logged (the next
/// transition, or the next session, writes again).
fn set_sync_lagging(api: &crate::api::client::Client, node: &str, t: Transition) {
    let (status, reason, message) = match t {
        Transition::Lagging {
            revision,
            for_ms,
            acked,
        } => {
            warn!(
                revision,
                acked,
                waited_ms = for_ms,
                "the node does not acknowledge what it is sent: its link may be cut in one direction"
            );
            metrics::counter!("skerry_hub_sync_lagging_total").increment(1);
            (
                "True",
                SYNC_LAGGING_REASON,
                format!(
                    "revision {revision} was sent {} s ago and is not acknowledged (acknowledged up to {acked}): the link to the node may be cut in one direction",
                    for_ms / 1000
                ),
            )
        }
        Transition::EdgeDeaf(said) => {
            metrics::counter!("skerry_hub_sync_lagging_total").increment(1);
            (
                "True",
                EDGE_DEAF_REASON,
                format!("{said}, so it closed its link; its packets reach the cloud, the cloud's do not reach it: the link towards the node is cut"),
            )
        }
        Transition::Current => (
            "False",
            SYNC_CURRENT_REASON,
            "the node acknowledges what it is sent".to_string(),
        ),
    };
    let (api, node) = (api.clone(), node.to_string());
    tokio::spawn(async move {
        let now = crate::clock::now_rfc3339();
        let res = api
            .update_status_with("nodes", "", &node, |current| {
                let conditions = current.pointer("/status/conditions")?.as_array()?;
                let old = conditions.iter().find(|c| c["type"] == SYNC_LAGGING);
                if old.is_some_and(|c| c["status"] == status && c["reason"] == reason) {
                    return None;
                }
                let transition = match old {
                    Some(c) if c["status"] == status => c["lastTransitionTime"].clone(),
                    _ => serde_json::json!(now),
                };
                let mut conditions: Vec<serde_json::Value> = conditions
                    .iter()
                    .filter(|c| c["type"] != SYNC_LAGGING)
                    .cloned()
                    .collect();
                conditions.push(serde_json::json!({
                    "type": SYNC_LAGGING, "status": status, "reason": reason,
                    "message": message, "lastHeartbeatTime": now,
                    "lastTransitionTime": transition,
                }));
                let mut v = current.clone();
                v["status"]["conditions"] = serde_json::json!(conditions);
                Some(v)
            })
            .await;
        if let Err(e) = res {
            warn!(%node, error = %e, "cannot write the node's SyncLagging condition");
        }
    });
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
