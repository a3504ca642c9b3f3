//! The namespace controller: empties a deleted namespace and then removes it.
//!
//! Deleting a namespace only marks it (`deletionTimestamp`, `status.phase: Terminating`; see
//! [`crate::api::namespaces`]). This reconcile deletes every namespaced object in it through
//! the ordinary delete path, so bound pods terminate gracefully on their edge, and removes the
//! namespace once a pass finds nothing left and no finalizer holds it. It runs on the shared
//! [`runner`](super::runner): a namespace is reconciled when it changes, when anything in it
//! changes while it is terminating (the last pod going away is what lets it finish), and at
//! each resync.

use super::runner::{Reconciler, Requeue};
use super::ControllerError;
use crate::api::client::{Client, Propagation};
use crate::api::finalizers;
use crate::api::namespaces::{is_terminating, RESOURCE};
use crate::api::resource::ResourceHandler;
use crate::api::ApiError;
use crate::store::{Event, ObjectKey, Stored};
use async_trait::async_trait;
use serde_json::Value;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often terminating namespaces are re-checked without being woken by an event: the safety
/// net of a level-triggered loop (a missed or lagged event only delays it).
pub const RESYNC: Duration = Duration::from_secs(30);

/// The controller; see the module doc.
pub struct NamespaceController {
    client: Client,
    /// Namespaces seen terminating, so that an event about an object in one maps to it
    /// without a store read per event.
    terminating: Mutex<HashSet<String>>,
}

impl NamespaceController {
    /// A controller deleting through `client`.
    pub fn new(client: Client) -> Self {
        Self {
            client,
            terminating: Mutex::new(HashSet::new()),
        }
    }

    fn terminating(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        // A panic while holding the lock leaves a set that the next resync rebuilds anyway.
        self.terminating.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn key(name: &str) -> ObjectKey {
    ObjectKey::new(RESOURCE, "", name)
}

#[async_trait]
impl Reconciler for NamespaceController {
    fn name(&self) -> &'static str {
        "namespace"
    }

    async fn keys_for_event(&self, ev: &Event) -> Vec<ObjectKey> {
        if ev.key.resource == RESOURCE {
            let mut set = self.terminating();
            match &ev.value {
                Some(v) if is_terminating(v) => {
                    set.insert(ev.key.name.clone());
                }
                _ => {
                    set.remove(&ev.key.name);
                }
            }
            return vec![ev.key.clone()];
        }
        if !ev.key.namespace.is_empty() && self.terminating().contains(&ev.key.namespace) {
            return vec![key(&ev.key.namespace)];
        }
        Vec::new()
    }

    async fn all_keys(&self) -> Vec<ObjectKey> {
        let namespaces = match self.client.state().store.list(RESOURCE, None).await {
            Ok((items, _)) => items,
            Err(e) => {
                tracing::warn!(error = %e, "namespace controller cannot list namespaces; retrying at the next resync");
                return Vec::new();
            }
        };
        let names: HashSet<String> = namespaces
            .iter()
            .filter(|n| is_terminating(&n.value))
            .map(|n| name_of(&n.value).to_string())
            .collect();
        let keys = names.iter().map(|n| key(n)).collect();
        *self.terminating() = names;
        keys
    }

    async fn reconcile(&self, key: &ObjectKey) -> Result<Requeue, ControllerError> {
        let Some(ns) = self.client.state().store.get(key).await? else {
            self.terminating().remove(&key.name);
            return Ok(Requeue::No);
        };
        if !is_terminating(&ns.value) {
            return Ok(Requeue::No);
        }
        if empty_and_remove(&self.client, &key.name, &ns).await? {
            self.terminating().remove(&key.name);
        }
        // Not gone yet: what holds it (a pod terminating on its edge, a finalizer) changes
        // by an event that maps back here.
        Ok(Requeue::No)
    }
}

fn name_of(v: &Value) -> &str {
    v.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// Deletes what is in terminating namespace `name` (each object as a client's DELETE would)
/// and removes the namespace once a pass finds nothing left. Returns whether it is gone.
async fn empty_and_remove(client: &Client, name: &str, ns: &Stored) -> Result<bool, ApiError> {
    let state = client.state();
    let mut found = 0usize;
    let mut done = HashSet::new();
    let resources: Vec<Arc<dyn ResourceHandler>> = state
        .registry
        .iter()
        .filter(|r| r.info().namespaced && done.insert(r.info().storage_resource()))
        .cloned()
        .collect();
    for res in &resources {
        let storage = res.info().storage_resource();
        let (items, _) = state
            .store
            .list(&storage, Some(name))
            .await
            .map_err(|e| ApiError::from_store(e, &res.info().qualified(), ""))?;
        for item in items {
            found += 1;
            if item.value.pointer("/metadata/deletionTimestamp").is_some() {
                continue; // graceful deletion under way: wait for it
            }
            let uid = item.value.pointer("/metadata/uid").and_then(Value::as_str);
            let deleted = client
                .delete(
                    &storage,
                    name,
                    name_of(&item.value),
                    Propagation::Background,
                    uid,
                )
                .await;
            match deleted {
                // Gone already, or replaced by a successor the next pass sees.
                Ok(()) | Err(ApiError::NotFound { .. } | ApiError::Conflict { .. }) => {}
                Err(e) => return Err(e),
            }
        }
    }
    if found > 0 {
        return Ok(false);
    }
    // Finalizers (a foreground deletion, a client's own) hold the emptied namespace; their
    // removal is a namespace event, which brings the controller back here.
    if !finalizers::finalizers(&ns.value).is_empty() {
        return Ok(false);
    }
    // Empty: remove the namespace, unless it changed meanwhile (then the next pass decides).
    match client.finalize(RESOURCE, "", name, ns.revision).await {
        Ok(gone) => {
            if gone {
                tracing::info!(namespace = %name, "namespace emptied and removed");
            }
            Ok(gone)
        }
        Err(ApiError::NotFound { .. }) => Ok(true),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn the_controller_wakes_for_namespaces_and_terminating_content_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::SledStore::open(dir.path(), crate::projection::shard).unwrap();
        let state = crate::api::ApiState::with_watch_history(
            Arc::new(store),
            Arc::new(String::new),
            crate::api::history::DEFAULT_CAPACITY,
        );
        let ctl = NamespaceController::new(Client::new(state));
        let ev = |resource: &str, ns: &str, name: &str, value: Option<Value>| Event {
            revision: 1,
            key: ObjectKey::new(resource, ns, name),
            value,
            previous: None,
            shards: vec![],
        };
        let going = json!({"metadata": {"name": "team-a", "deletionTimestamp": "2025-01-01T00:00:00Z"},
                           "status": {"phase": "Terminating"}});
        assert_eq!(
            ctl.keys_for_event(&ev("namespaces", "", "team-a", Some(going)))
                .await,
            vec![key("team-a")]
        );
        assert_eq!(
            ctl.keys_for_event(&ev("pods", "team-a", "web", None)).await,
            vec![key("team-a")],
            "a change inside a terminating namespace wakes it"
        );
        assert!(ctl
            .keys_for_event(&ev("pods", "default", "web", None))
            .await
            .is_empty());
        assert!(ctl
            .keys_for_event(&ev("nodes", "", "edge-1", None))
            .await
            .is_empty());
        // Once removed, its former content no longer wakes anything.
        ctl.keys_for_event(&ev("namespaces", "", "team-a", None))
            .await;
        assert!(ctl
            .keys_for_event(&ev("pods", "team-a", "web", None))
            .await
            .is_empty());
    }
}
