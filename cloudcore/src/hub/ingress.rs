//! Which Ingresses each node is sent, and the TLS Secrets that go with them.
//!
//! A v6 node gets one [`EdgeIngresses`] object (see [`protocol::ingress`]): the Ingresses of
//! every class with Skerry's controller whose node selector matches the node's labels
//! ([`crate::api::ingress::Serving`]). The hub keeps one [`IngressTable`] (every stored
//! Ingress and the serving classes), rebuilt by the dispatcher on every Ingress or
//! IngressClass write before it records the write as handled; each session computes its
//! node's set from the table and its Node's labels, and sends it when it differs from the set
//! it last sent in this session (so always in a session's first round and in every snapshot).
//!
//! The set travels in one unit with the current version of every TLS Secret it names, as a
//! pod with its configs: the edge keeps a Secret only while a cached pod or its cached set
//! names it, so a Secret must not arrive before the set that names it. Later writes of those
//! Secrets are marked on the session like pods' configs (the session's [`IngressRefs`] is the
//! index the marks are filtered through), so a renewed certificate reaches the serving nodes
//! and no other. A node that stops serving an Ingress gets a set without it and drops its
//! Secrets at that batch.
//!
//! Node heartbeats do not wake sessions: the dispatcher remembers each node's labels and
//! wakes a node's session only when they change.

use super::Hub;
use crate::api::ingress::{Serving, INGRESSES, INGRESS_CLASSES};
use crate::projection::ingress::ingress_set;
use crate::store::{ObjectKey, StoreError};
use protocol::ingress::EdgeIngresses;
use protocol::messages::{EdgeObject, ObjectKind, ObjectRef, Upsert};
use serde_json::Value;
use std::collections::BTreeSet;
use std::sync::Arc;
use tracing::error;

/// Every stored Ingress and the classes Skerry serves, as of one listing.
#[derive(Debug, Default)]
pub(super) struct IngressTable {
    serving: Serving,
    ingresses: Vec<Value>,
}

/// The TLS Secrets of the set a session last sent: marks of Secrets are filtered through it.
pub(super) type IngressRefs = std::sync::Mutex<BTreeSet<ObjectRef>>;

/// The Secrets a set names, as references.
pub(super) fn secret_refs(set: &EdgeIngresses) -> BTreeSet<ObjectRef> {
    set.secret_refs()
        .into_iter()
        .map(|(namespace, name)| ObjectRef {
            kind: ObjectKind::Secret,
            namespace,
            name,
        })
        .collect()
}

impl Hub {
    /// Lists Ingresses and IngressClasses into a new table.
    pub(super) async fn rebuild_ingress_table(&self) -> Result<(), StoreError> {
        let (classes, _) = self.store.list(INGRESS_CLASSES, None).await?;
        let (ingresses, _) = self.store.list(INGRESSES, None).await?;
        let classes: Vec<Value> = classes.into_iter().map(|s| s.value).collect();
        let table = IngressTable {
            serving: Serving::from_classes(&classes),
            ingresses: ingresses.into_iter().map(|s| s.value).collect(),
        };
        *self
            .ingress_table
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(table);
        Ok(())
    }

    /// What the dispatcher does with a write for Ingresses: `true` when every session must
    /// look at its set again (an Ingress or class changed), and the node whose session must
    /// (its labels changed).
    pub(super) async fn ingress_event(
        &self,
        key: &ObjectKey,
        value: Option<&Value>,
    ) -> (bool, Option<String>) {
        match key.resource.as_str() {
            INGRESSES | INGRESS_CLASSES => {
                while let Err(e) = self.rebuild_ingress_table().await {
                    error!(error = %e, "cannot list Ingresses for the nodes that serve them; retrying");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
                (true, None)
            }
            "nodes" => {
                let labels = value
                    .and_then(|v| v.pointer("/metadata/labels"))
                    .cloned()
                    .unwrap_or(Value::Null);
                let mut known = self
                    .ingress_node_labels
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                let changed = known.insert(key.name.clone(), labels.clone()) != Some(labels);
                (false, changed.then(|| key.name.clone()))
            }
            _ => (false, None),
        }
    }

    /// The set `node` serves now, and the revision its upsert carries: the store's revision
    /// when it was computed, which only grows, so the edge never takes an older set for newer.
    pub(super) async fn ingress_upsert(
        &self,
        node: &str,
    ) -> Result<(Upsert, EdgeIngresses), StoreError> {
        let revision = self.store.revision();
        let table = self
            .ingress_table
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let stored = self.store.get(&ObjectKey::new("nodes", "", node)).await?;
        let set = ingress_set(
            node,
            stored.as_ref().map(|s| &s.value),
            &table.serving,
            &table.ingresses,
        );
        Ok((
            Upsert {
                revision,
                object: EdgeObject::Ingress(set.clone()),
            },
            set,
        ))
    }
}
