//! An in-memory index of owners' label selectors (ReplicaSets, Deployments) by namespace, so
//! that an event about an orphan (a pod or ReplicaSet without a controller) finds the owners
//! that may adopt it without reading the store: `keys_for_event` runs for every store event,
//! and with 10,000 pods a store list per pod event would dominate the controller's cost.
//!
//! The index follows the owners' store events and is rebuilt from a full list at each resync,
//! so a missed event only delays an adoption until the next resync.

use super::owned::meta_of;
use crate::api::selector::LabelSelector;
use crate::api::workloads::selector_of;
use crate::store::Event;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::RwLock;

/// Selectors of one resource's objects, by namespace and name.
#[derive(Debug, Default)]
pub struct SelectorIndex {
    by_namespace: RwLock<HashMap<String, BTreeMap<String, LabelSelector>>>,
}

impl SelectorIndex {
    /// Follows a store event about an owner: its selector is added, replaced or removed.
    pub fn observe(&self, event: &Event) {
        let mut map = self.by_namespace.write().unwrap_or_else(|e| e.into_inner());
        let ns = map.entry(event.key.namespace.clone()).or_default();
        match event.value.as_ref().and_then(selector_of) {
            Some(sel) => {
                ns.insert(event.key.name.clone(), sel);
            }
            None => {
                ns.remove(&event.key.name);
            }
        }
    }

    /// Replaces the whole index with the selectors of `owners`.
    pub fn replace_all(&self, owners: &[Value]) {
        let mut fresh: HashMap<String, BTreeMap<String, LabelSelector>> = HashMap::new();
        for o in owners {
            if let Some(sel) = selector_of(o) {
                let meta = meta_of(o);
                fresh
                    .entry(meta.namespace.unwrap_or_default())
                    .or_default()
                    .insert(meta.name.unwrap_or_default(), sel);
            }
        }
        *self.by_namespace.write().unwrap_or_else(|e| e.into_inner()) = fresh;
    }

    /// Names of the owners in `namespace` whose selector matches the labels of `obj`.
    pub fn matching(&self, namespace: &str, obj: &Value) -> Vec<String> {
        let map = self.by_namespace.read().unwrap_or_else(|e| e.into_inner());
        map.get(namespace)
            .map(|owners| {
                owners
                    .iter()
                    .filter(|(_, sel)| sel.matches(obj))
                    .map(|(name, _)| name.clone())
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ObjectKey;
    use serde_json::json;

    fn rs(name: &str, app: &str) -> Value {
        json!({"metadata": {"name": name, "namespace": "prod"},
               "spec": {"selector": {"matchLabels": {"app": app}}}})
    }

    #[test]
    fn the_index_follows_owner_events_and_matches_labels() {
        let idx = SelectorIndex::default();
        idx.replace_all(&[rs("web", "web"), rs("db", "db")]);
        let pod = json!({"metadata": {"labels": {"app": "web", "x": "y"}}});
        assert_eq!(idx.matching("prod", &pod), ["web"]);
        assert!(idx.matching("other", &pod).is_empty());
        let key = ObjectKey::new("apps/replicasets", "prod", "web2");
        idx.observe(&Event {
            revision: 1,
            key: key.clone(),
            value: Some(rs("web2", "web")),
            previous: None,
            shards: vec![],
        });
        assert_eq!(idx.matching("prod", &pod), ["web", "web2"]);
        idx.observe(&Event {
            revision: 2,
            key,
            value: None,
            previous: Some(rs("web2", "web")),
            shards: vec![],
        });
        assert_eq!(idx.matching("prod", &pod), ["web"]);
    }
}
