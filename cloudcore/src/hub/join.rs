//! The join path: an edge's first contact, before it has an identity.
//!
//! It exists apart from the session path because it is the hub's only unauthenticated entrance
//! (ALPN `skerry-join/1`, no client certificate): a bootstrap token and a CSR come in, and a
//! node certificate, the CA and the node's report key go out, with the Node object registered
//! through the API. What it accepts is bounded (at most [`MAX_CONCURRENT_JOINS`] at once, small
//! frames, timeouts), so a flood of join connections cannot pile up. A re-join supersedes the
//! node's old certificate and closes a session still using it.

use super::{close_codes, read_frame, write_frame, Hub, SessionError};
use crate::api::ApiError;
use crate::clock;
use crate::pki;
use protocol::join::{JoinRefusal, JoinRequest, JoinResponse};
use serde_json::{json, Value};
use std::time::Duration;
use tracing::{info, warn};

/// Joins handled at once; more are turned away (the edge retries), so a flood of
/// unauthenticated join connections cannot pile up.
pub(super) const MAX_CONCURRENT_JOINS: usize = 64;

/// Joins in progress from one client address at once.
pub(super) const MAX_JOINS_PER_ADDRESS: usize = 4;

/// How long one join connection may take from its handshake to the answer: a client that
/// opens the join path and says nothing gives its slot back after this.
pub(super) const JOIN_DEADLINE: Duration = Duration::from_secs(10);

/// One of an address's join slots, given back on drop.
pub(super) struct AddressSlot<'a> {
    hub: &'a Hub,
    ip: std::net::IpAddr,
}

impl<'a> AddressSlot<'a> {
    /// A slot for `ip`, if it has fewer than [`MAX_JOINS_PER_ADDRESS`] joins in progress.
    pub(super) fn take(hub: &'a Hub, ip: std::net::IpAddr) -> Option<Self> {
        let mut map = hub
            .joins_by_address
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= MAX_JOINS_PER_ADDRESS {
            return None;
        }
        *n += 1;
        Some(Self { hub, ip })
    }
}

impl Drop for AddressSlot<'_> {
    fn drop(&mut self) {
        let mut map = self
            .hub
            .joins_by_address
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// Tries of a node registration that races other writers of the Node (a re-join while ingest
/// writes its status) before the join is refused with a retryable error.
const REGISTER_ATTEMPTS: usize = 8;

impl Hub {
    pub(super) async fn join(&self, conn: &quinn::Connection) -> Result<(), SessionError> {
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
                if let Some(held_back) = self.join_log.allow(conn.remote_address().ip()) {
                    warn!(%node, reason = %refusal, held_back, "join refused");
                }
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
        if !protocol::edge_version_supported(req.protocol_version) {
            return Err(JoinRefusal::VersionMismatch {
                cloud: protocol::PROTOCOL_VERSION,
                edge: req.protocol_version,
            });
        }
        pki::validate_node_name(&req.node_name).map_err(|reason| JoinRefusal::InvalidNodeName {
            name: req.node_name.clone(),
            reason,
        })?;
        if let Err(reason) = super::node_labels::check(&req.labels) {
            // A v3 edge does not know `InvalidLabels`: it gets the reason in a refusal it can
            // decode.
            return Err(if req.protocol_version < protocol::PROTOCOL_VERSION {
                JoinRefusal::InvalidNodeName {
                    name: req.node_name.clone(),
                    reason,
                }
            } else {
                JoinRefusal::InvalidLabels(reason)
            });
        }
        self.pki.check_csr(&req.csr_pem)?;
        // From the name check (in `consume_token`) to the registration, one join at a time.
        let _claim = self.claim.lock().await;
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
}
