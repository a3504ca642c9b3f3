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
use crate::projection::NETWORK_SHARD;
use crate::store::{ShardRead, StoreError};
use protocol::messages::*;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Mutex, Notify};
use tracing::{debug, error, info, warn};

/// The node condition the hub keeps: `True` while the node does not acknowledge what it is sent
/// (see [`super::ack_lag`]).
pub const SYNC_LAGGING: &str = "SyncLagging";
/// Reason of `SyncLagging=True`.
pub const SYNC_LAGGING_REASON: &str = "AcksLagging";
/// Reason of `SyncLagging=True` when the node closed its link for hearing nothing.
pub const EDGE_DEAF_REASON: &str = "NodeHearsNothing";
/// Reason of `SyncLagging=False`.
pub const SYNC_CURRENT_REASON: &str = "AcksCurrent";

/// Where a session resumes and what of the slice it sends beyond the node's pods and their
/// configs.
pub(super) struct SliceView {
    /// The revision the edge says it made durable.
    from: u64,
    /// The protocol version the edge speaks (this one or the previous).
    version: u32,
    /// The edge speaks v5 or later: it gets every Service and EndpointSlice.
    network: bool,
    /// The node's network settings (v5) and overlay routes (v6, when the overlay is on), sent
    /// in the session's first round and in every snapshot.
    settings: Vec<Upsert>,
    /// Whether `settings` went out in this session.
    settings_sent: bool,
    /// The edge speaks v6: it gets the Ingresses it serves ([`super::ingress`]).
    ingress: bool,
    /// The Ingress set last sent in this session (`None`: none yet).
    ingress_sent: Option<protocol::ingress::EdgeIngresses>,
}

/// A live session, as the rest of the hub finds it.
pub(super) struct Session {
    pub(super) id: u64,
    pub(super) signals: Arc<Signals>,
    pub(super) conn: quinn::Connection,
    /// The protocol version the node said in its Hello: which stream requests it decodes.
    pub(super) version: u32,
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
    /// The TLS Secrets of the Ingress set last sent to the node: written by the session,
    /// read by the dispatcher to mark those Secrets' writes.
    pub(super) ingress_refs: super::ingress::IngressRefs,
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
        // Edges one version behind are served: a v5 edge gets today's messages without the
        // overlay kind (`protocol::compat`); the node's `EdgeVersionSkew` condition tells the
        // admin.
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
                version: hello.protocol_version,
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
        let mut view = SliceView {
            from: hello.acked_revision,
            version: hello.protocol_version,
            network: hello.protocol_version >= 5,
            settings: Vec::new(),
            settings_sent: false,
            ingress: ObjectKind::Ingress.known_to(hello.protocol_version),
            ingress_sent: None,
        };
        if view.network {
            view.settings = self.network_upserts(node, view.version).await?;
        }
        // The overlay: a v6 node with a pod CIDR gets its packets relayed while this session
        // lasts (the routes it was sent say so; see `relay`).
        let overlay_cidr = view.settings.iter().find_map(|u| match &u.object {
            EdgeObject::Overlay(_) => view.settings.iter().find_map(|u| match &u.object {
                EdgeObject::Network(n) => n.pod_cidr.as_deref(),
                _ => None,
            }),
            _ => None,
        });
        let overlay_cidr = overlay_cidr.and_then(|c| match protocol::overlay::Cidr::parse(c) {
            Ok(c) => Some(c),
            Err(e) => {
                warn!(error = %e, "the node's pod CIDR does not parse: no overlay for it");
                None
            }
        });
        let _route = overlay_cidr.map(|cidr| {
            self.relay
                .register(node, cidr, id, conn.clone(), hello.protocol_version)
        });
        let _relay = overlay_cidr.map(|_| {
            let (hub, node, conn) = (self.clone(), node.to_string(), conn.clone());
            AbortOnDrop(tokio::spawn(
                async move { hub.relay.serve(&node, &conn).await },
            ))
        });
        let result = self
            .stream(conn, node, &mut send, recv, &signals, view)
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
        signals: &Signals,
        mut view: SliceView,
    ) -> Result<(), SessionError> {
        let from = view.from;
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
            let (upto, last_batch) = self
                .send_pending(node, sent, send, signals, &mut view)
                .await?;
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

    /// Sends everything in the node's shard (and, to a v5 edge, the network shard) after
    /// `sent`, with the configs its pods reference, and the configs marked for the node;
    /// returns the new high-water mark and the revision of the last batch sent, if any.
    ///
    /// The two shards share the store's revisions, so one acked revision covers both: a round
    /// reads both after `sent` and claims no more than the lower of the two `upto`s (changes
    /// above it wait for the next round, which their dispatch triggers). When either read is
    /// a snapshot (fresh node, compacted history), the whole slice goes as one snapshot: the
    /// edge replaces everything it holds with a snapshot, so it must carry both shards and the
    /// node's network settings.
    async fn send_pending(
        &self,
        node: &str,
        sent: u64,
        send: &mut quinn::SendStream,
        signals: &Signals,
        view: &mut SliceView,
    ) -> Result<(u64, Option<u64>), SessionError> {
        // Order matters (the hub's module docs): the cap, then the marks, then the shard.
        let cap = self.handled.load(Ordering::SeqCst);
        let marked = std::mem::take(&mut *signals.marked.lock().await);
        let pods = self.store.read_shard(node, sent).await?;
        let network = match view.network {
            true => Some(self.store.read_shard(NETWORK_SHARD, sent).await?),
            false => None,
        };
        let snapshot = matches!(pods, ShardRead::Snapshot { .. })
            || matches!(network, Some(ShardRead::Snapshot { .. }));
        let (batches, new_sent) = if snapshot {
            let (members, pods_upto) = self.members(node, Some(pods)).await?;
            let mut network_members = Vec::new();
            let mut upto = pods_upto;
            if view.network {
                let (m, u) = self.members(NETWORK_SHARD, network).await?;
                network_members = m;
                upto = upto.min(u);
            }
            // A snapshot carries every config its pods and its Ingresses reference: the marks
            // are covered.
            let mut extra: Vec<Upsert> = view
                .settings
                .clone()
                .into_iter()
                .chain(plan::network_upserts(self.store.as_ref(), &network_members).await?)
                .collect();
            let mut extra_refs = std::collections::BTreeSet::new();
            if view.ingress {
                // A snapshot replaces everything the edge holds: an empty set needs nothing.
                let (upsert, set) = self.ingress_upsert(node).await?;
                if !set.ingresses.is_empty() {
                    extra.push(upsert);
                }
                extra_refs = super::ingress::secret_refs(&set);
                *signals
                    .ingress_refs
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = extra_refs.clone();
                view.ingress_sent = Some(set);
            }
            let parts =
                plan::snapshot(self.store.as_ref(), node, &members, upto, extra, extra_refs)
                    .await?;
            info!(
                objects = parts.iter().map(|p| p.upserts.len()).sum::<usize>(),
                parts = parts.len(),
                revision = upto,
                "sending snapshot"
            );
            view.settings_sent = true;
            (parts, upto)
        } else {
            let ShardRead::Delta { changes, upto } = pods else {
                return Err(StoreError::Backend("a shard read changed its answer".into()).into());
            };
            let (network_changes, network_upto) = match network {
                Some(ShardRead::Delta { changes, upto }) => (changes, upto),
                _ => (Vec::new(), u64::MAX),
            };
            let upto = sent.max(upto.min(network_upto).min(cap));
            // The Ingress set goes when it changed (and in the session's first round), with
            // the current version of every TLS Secret it names.
            let mut ingress = None;
            if view.ingress {
                let (upsert, set) = self.ingress_upsert(node).await?;
                if view.ingress_sent.as_ref() != Some(&set) {
                    let refs = super::ingress::secret_refs(&set);
                    *signals
                        .ingress_refs
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()) = refs.clone();
                    ingress = Some(if set.ingresses.is_empty() {
                        plan::IngressChange::Clear(upsert.object.object_ref())
                    } else {
                        plan::IngressChange::Set(Box::new(upsert), refs.into_iter().collect())
                    });
                    view.ingress_sent = Some(set);
                }
            }
            let marked: Vec<(ObjectRef, u64)> = if marked.is_empty() {
                Vec::new()
            } else {
                let index = self.index.read().await;
                let ingress_refs = signals
                    .ingress_refs
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                marked
                    .into_iter()
                    .filter(|(c, _)| index.references(node, c) || ingress_refs.contains(c))
                    .collect()
            };
            let mut extra = Vec::new();
            if !view.settings_sent {
                extra.extend(view.settings.clone());
                view.settings_sent = true;
            }
            let batches = plan::delta(
                self.store.as_ref(),
                plan::Round {
                    node,
                    sent,
                    upto,
                    changes: &changes,
                    network_changes: &network_changes,
                    marked,
                    extra,
                    ingress,
                },
            )
            .await?;
            (batches, upto)
        };
        let mut last_batch = None;
        for batch in batches {
            // What was just read may include writes not yet flushed; never hand a node a
            // state that a crash could take back.
            self.store
                .wait_durable(self.store.assigned_revision())
                .await?;
            last_batch = Some(batch.revision);
            self.send_batch(send, batch, view.version).await?;
        }
        Ok((new_sent, last_batch))
    }

    /// The members of `shard` and the revision they are complete up to: from `read` when it is
    /// a snapshot, else from a fresh snapshot read.
    async fn members(
        &self,
        shard: &str,
        read: Option<ShardRead>,
    ) -> Result<(Vec<crate::store::ObjectKey>, u64), StoreError> {
        if let Some(ShardRead::Snapshot { members, upto }) = read {
            return Ok((members, upto));
        }
        match self.store.read_shard(shard, 0).await? {
            ShardRead::Snapshot { members, upto } => Ok((members, upto)),
            ShardRead::Delta { .. } => Err(StoreError::Backend(format!(
                "the store answered a read of shard {shard} from revision 0 with a delta"
            ))),
        }
    }

    /// The node's network settings as upserts: its pod CIDR from its Node (with the Node's
    /// revision, so that a resend is ignored by an edge that has it) and the cluster-wide
    /// settings of this hub; to a v6 edge, when the overlay is on, its overlay routes too.
    async fn network_upserts(&self, node: &str, version: u32) -> Result<Vec<Upsert>, SessionError> {
        let stored = self
            .store
            .get(&crate::store::ObjectKey::new("nodes", "", node))
            .await?;
        let (revision, pod_cidr) = match &stored {
            Some(s) => (
                s.revision,
                s.value
                    .pointer("/spec/podCIDR")
                    .and_then(serde_json::Value::as_str)
                    .filter(|c| !c.is_empty())
                    .map(str::to_string),
            ),
            None => (0, None),
        };
        let mut out = vec![Upsert {
            revision,
            object: EdgeObject::Network(protocol::service::ClusterNetwork {
                node: node.to_string(),
                pod_cidr,
                service_cidr: self.network.service_cidr.clone(),
                cluster_dns: self.network.cluster_dns,
                cluster_domain: self.network.cluster_domain.clone(),
            }),
        }];
        if ObjectKind::Overlay.known_to(version) && !self.network.overlay_cidrs.is_empty() {
            out.push(Upsert {
                revision,
                object: EdgeObject::Overlay(protocol::overlay::OverlayNetwork {
                    node: node.to_string(),
                    cluster_cidrs: self.network.overlay_cidrs.clone(),
                }),
            });
        }
        Ok(out)
    }

    /// Writes one batch for an edge speaking `version` (in v7's shapes when the edge is one
    /// version behind, without the pods it cannot run).
    async fn send_batch(
        &self,
        send: &mut quinn::SendStream,
        batch: SyncBatch,
        version: u32,
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
                EdgeObject::Overlay(_) => "Overlay",
                EdgeObject::Ingress(_) => "Ingress",
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
                ObjectKind::Overlay => "Overlay",
                ObjectKind::Ingress => "Ingress",
            };
            metrics::counter!("skerry_hub_config_deletes_sent_total", "kind" => kind).increment(1);
        }
        if version == protocol::PROTOCOL_VERSION {
            return write_frame(send, &CloudMessage::Sync(batch)).await;
        }
        match protocol::compat::v7::batch(batch) {
            Some(old) => {
                for (pod, reason) in &old.withheld {
                    // A v7 edge would run it otherwise than asked (`protocol::compat`): the
                    // pod waits, Pending, for the node's upgrade.
                    error!(
                        pod = %format!("{}/{}", pod.namespace, pod.name),
                        edge_version = version,
                        reason,
                        "pod uses what this node's edgecore (protocol v7) cannot honour \
                         (the reason says what: init containers, hooks, a security context, \
                         its names, downward API volumes...): not sent to it; it stays Pending \
                         until the node is upgraded (the node's EdgeVersionSkew condition says so)"
                    );
                    metrics::counter!("skerry_hub_pods_withheld_total", "reason" => *reason)
                        .increment(1);
                }
                write_frame(send, &protocol::compat::v7::CloudMessage::Sync(old.batch)).await
            }
            None => Err(SessionError::Protocol(
                "a batch for a v7 edge holds a kind it cannot decode; this is a hub bug".into(),
            )),
        }
    }

    /// Closes the live session of a node that was just revoked (the node is told why), and
    /// has its peers close their direct overlay connections to it, which outlive its session.
    /// Its reconnects are then refused at Hello.
    pub async fn revoke_session(&self, node: &str) {
        if let Some(s) = self.sessions.lock().await.get(node) {
            s.signals.revoked.notify_one();
        }
        self.relay.withdraw(node);
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
