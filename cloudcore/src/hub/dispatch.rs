//! The dispatcher: the one task that follows the store's change feed for the hub.
//!
//! Sessions must not each follow the feed (a thousand nodes would each see every write); one
//! task does, in revision order, and tells each session only what concerns its node. For each
//! event it updates the [`ConfigIndex`] (pods), marks the config on the sessions of the nodes
//! that reference it (ConfigMaps, Secrets), wakes the sessions whose shard changed, and only
//! then records the revision as `handled`; after a lag it rebuilds the index from a listing.
//! Why that order keeps configs neither lost nor leaked is in the hub's module docs.

use super::Hub;
use crate::config_index::{self, ConfigIndex};
use crate::projection::NETWORK_SHARD;
use crate::store::{Event, ObjectKey, StoreError};
use serde_json::Value;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tracing::{error, info, warn};

impl Hub {
    /// [`Hub::resync`], retried until the store answers.
    pub(super) async fn resync_until_done(&self, since: Option<u64>) {
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
        self.rebuild_ingress_table().await?;
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
            // The TLS Secrets of the Ingress sets: any written since may have been missed.
            for s in sessions.values() {
                let refs = s
                    .signals
                    .ingress_refs
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                for r in refs {
                    s.signals.mark(r, since.unwrap_or(0)).await;
                }
            }
            for s in sessions.values() {
                s.signals.changed.notify_one();
            }
        }
        self.handled.fetch_max(listed, Ordering::SeqCst);
        Ok(())
    }

    pub(super) async fn dispatch_changes(
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

    /// Handles one committed write (see the hub's module docs for why the order matters).
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
                if config.kind == protocol::messages::ObjectKind::Secret {
                    // The TLS Secret of an Ingress a node serves (see `ingress`).
                    for s in sessions.values() {
                        let named = s
                            .signals
                            .ingress_refs
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .contains(&config);
                        if named {
                            s.signals.mark(config.clone(), 0).await;
                            s.signals.changed.notify_one();
                        }
                    }
                }
            }
            for shard in &ev.shards {
                if shard == NETWORK_SHARD {
                    // Every node routes every Service: all sessions read the network shard.
                    for s in sessions.values() {
                        s.signals.changed.notify_one();
                    }
                } else if let Some(s) = sessions.get(shard) {
                    s.signals.changed.notify_one();
                }
            }
        }
        let (all, node) = self.ingress_event(&ev.key, ev.value.as_ref()).await;
        if all || node.is_some() {
            let sessions = self.sessions.lock().await;
            if all {
                for s in sessions.values() {
                    s.signals.changed.notify_one();
                }
            } else if let Some(s) = node.and_then(|n| sessions.get(&n)) {
                s.signals.changed.notify_one();
            }
        }
        self.handled.fetch_max(ev.revision, Ordering::SeqCst);
    }
}
