//! Which nodes need which ConfigMaps and Secrets: the hub's reverse index.
//!
//! A node's slice is its pods plus the ConfigMaps and Secrets those pods reference (env
//! `valueFrom`, `envFrom`, `configMap`/`secret` volumes), and nothing else: a Secret reaches a
//! node only if a pod bound to that node names it. ConfigMaps and Secrets are namespaced global
//! objects, so they are not in the store's per-node shard logs (copying them per node would
//! cost one stored record per (node, config), which DESIGN.md rules out). Instead the hub keeps
//! this index in memory:
//!
//! - `config → {node → number of its pods that reference it}`, so that a write to a config
//!   wakes exactly the sessions of the nodes that use it, without scanning pods;
//! - `node → {config → number of pods}`, so that a reconnecting node can be sent the configs
//!   that changed while it was away.
//!
//! Only bound pods with at least one reference have an entry, so the index costs memory in
//! proportion to references, not to pods. It is built from a listing when the hub starts and
//! kept current from the store's change feed (see `hub` for the ordering argument); a pod's
//! references cannot change without a new pod (the spec is immutable), but the index does not
//! rely on that: every write of a pod replaces its entry.

use crate::projection;
use crate::store::{ObjectKey, Store, StoreError};
use protocol::messages::{ObjectKind, ObjectRef};
use protocol::pod::EdgePod;
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};

/// Store resource of ConfigMaps.
pub const CONFIG_MAPS: &str = "configmaps";
/// Store resource of Secrets.
pub const SECRETS: &str = "secrets";

/// Every ConfigMap and Secret `pod` references (see [`EdgePod::config_refs`], shared with the
/// edge so that both ends agree on a node's configs).
pub fn config_refs(pod: &EdgePod) -> BTreeSet<ObjectRef> {
    pod.config_refs()
}

/// The node of a stored pod and the configs it references (`value` `None`: deleted). Computed
/// outside the index's lock; [`ConfigIndex::set_pod`] records it.
pub fn pod_refs(key: &ObjectKey, value: Option<&Value>) -> (Option<String>, BTreeSet<ObjectRef>) {
    let Some(value) = value else {
        return (None, BTreeSet::new());
    };
    match projection::node_of(key, value) {
        Some(node) => {
            let refs = projection::edge_pod(value)
                .map(|p| config_refs(&p))
                .unwrap_or_default();
            (Some(node), refs)
        }
        None => (None, BTreeSet::new()),
    }
}

/// The config a store key names, if it is a ConfigMap or Secret.
pub fn config_ref_of(key: &ObjectKey) -> Option<ObjectRef> {
    let kind = match key.resource.as_str() {
        CONFIG_MAPS => ObjectKind::ConfigMap,
        SECRETS => ObjectKind::Secret,
        _ => return None,
    };
    Some(ObjectRef {
        kind,
        namespace: key.namespace.clone(),
        name: key.name.clone(),
    })
}

/// The store key of a config reference (`None` for the other kinds).
pub fn store_key(r: &ObjectRef) -> Option<ObjectKey> {
    let resource = match r.kind {
        ObjectKind::ConfigMap => CONFIG_MAPS,
        ObjectKind::Secret => SECRETS,
        ObjectKind::Pod
        | ObjectKind::Service
        | ObjectKind::EndpointSlice
        | ObjectKind::Network
        | ObjectKind::Overlay
        | ObjectKind::Ingress => return None,
    };
    Some(ObjectKey::new(
        resource,
        r.namespace.clone(),
        r.name.clone(),
    ))
}

/// The node and references of one indexed pod.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PodEntry {
    node: String,
    refs: BTreeSet<ObjectRef>,
}

/// The reverse index (see the module docs).
#[derive(Debug, Default)]
pub struct ConfigIndex {
    pods: HashMap<ObjectKey, PodEntry>,
    by_config: HashMap<ObjectRef, HashMap<String, u32>>,
    by_node: HashMap<String, HashMap<ObjectRef, u32>>,
}

fn add(map: &mut HashMap<String, u32>, key: &str) {
    *map.entry(key.to_string()).or_insert(0) += 1;
}

impl ConfigIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that pod `key` is bound to `node` (or to none) and references `refs`, replacing
    /// whatever was recorded for it.
    pub fn set_pod(&mut self, key: &ObjectKey, node: Option<&str>, refs: BTreeSet<ObjectRef>) {
        let new = node.filter(|_| !refs.is_empty()).map(|node| PodEntry {
            node: node.to_string(),
            refs,
        });
        if self.pods.get(key) == new.as_ref() {
            return;
        }
        if let Some(old) = self.pods.remove(key) {
            for r in &old.refs {
                if let Some(nodes) = self.by_config.get_mut(r) {
                    decrement(nodes, &old.node);
                    if nodes.is_empty() {
                        self.by_config.remove(r);
                    }
                }
                if let Some(configs) = self.by_node.get_mut(&old.node) {
                    decrement(configs, r);
                    if configs.is_empty() {
                        self.by_node.remove(&old.node);
                    }
                }
            }
        }
        if let Some(entry) = new {
            for r in &entry.refs {
                add(self.by_config.entry(r.clone()).or_default(), &entry.node);
                *self
                    .by_node
                    .entry(entry.node.clone())
                    .or_default()
                    .entry(r.clone())
                    .or_insert(0) += 1;
            }
            self.pods.insert(key.clone(), entry);
        }
    }

    /// Applies a write of a stored object (`None`: deleted). Only pods matter; a pod that cannot
    /// be projected references nothing (the hub cannot send it either).
    pub fn apply(&mut self, key: &ObjectKey, value: Option<&Value>) {
        if key.resource != "pods" {
            return;
        }
        let (node, refs) = pod_refs(key, value);
        self.set_pod(key, node.as_deref(), refs);
    }

    /// The nodes with at least one pod referencing `config`, sorted.
    pub fn nodes_referencing(&self, config: &ObjectRef) -> Vec<String> {
        let mut v: Vec<String> = self
            .by_config
            .get(config)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Whether a pod of `node` references `config`.
    pub fn references(&self, node: &str, config: &ObjectRef) -> bool {
        self.by_node
            .get(node)
            .is_some_and(|m| m.contains_key(config))
    }

    /// Every config `node`'s pods reference, sorted.
    pub fn configs_of(&self, node: &str) -> Vec<ObjectRef> {
        let mut v: Vec<ObjectRef> = self
            .by_node
            .get(node)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Every config some node references, sorted.
    pub fn configs(&self) -> Vec<ObjectRef> {
        let mut v: Vec<ObjectRef> = self.by_config.keys().cloned().collect();
        v.sort();
        v
    }

    /// Every referenced config written after revision `since`, or gone, with the nodes that
    /// reference it: what must be re-sent after the hub lost change events newer than `since`.
    pub async fn changed_since(
        &self,
        store: &dyn Store,
        since: u64,
    ) -> Result<Vec<(ObjectRef, Vec<String>)>, StoreError> {
        let mut out = Vec::new();
        for config in self.configs() {
            let Some(key) = store_key(&config) else {
                continue;
            };
            if store.get(&key).await?.is_none_or(|s| s.revision > since) {
                let nodes = self.nodes_referencing(&config);
                out.push((config, nodes));
            }
        }
        Ok(out)
    }

    /// Number of indexed pods (bound, with at least one reference).
    pub fn pod_count(&self) -> usize {
        self.pods.len()
    }
}

fn decrement<Q, K>(map: &mut HashMap<Q, u32>, key: &K)
where
    Q: std::borrow::Borrow<K> + std::hash::Hash + Eq,
    K: std::hash::Hash + Eq + ?Sized,
{
    if let Some(n) = map.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            map.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn cfg(kind: ObjectKind, name: &str) -> ObjectRef {
        ObjectRef {
            kind,
            namespace: "default".into(),
            name: name.into(),
        }
    }

    fn pod_key(name: &str) -> ObjectKey {
        ObjectKey::new("pods", "default", name)
    }

    #[test]
    fn references_come_from_env_env_from_and_volumes() {
        let v = json!({"metadata": {"name": "p", "namespace": "default"}, "spec": {"nodeName": "n1",
            "containers": [{"name": "a", "image": "x",
                "env": [{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "cm-env", "key": "k"}}},
                        {"name": "B", "valueFrom": {"secretKeyRef": {"name": "s-env", "key": "k", "optional": true}}},
                        {"name": "C", "value": "literal"}],
                "envFrom": [{"configMapRef": {"name": "cm-from"}}, {"secretRef": {"name": "s-from"}, "prefix": "S_"}]}],
            "volumes": [{"name": "v1", "configMap": {"name": "cm-vol"}}, {"name": "v2", "secret": {"secretName": "s-vol"}},
                        {"name": "v3", "emptyDir": {}}]}});
        let refs = config_refs(&projection::edge_pod(&v).unwrap());
        let want: BTreeSet<ObjectRef> = [
            cfg(ObjectKind::ConfigMap, "cm-env"),
            cfg(ObjectKind::ConfigMap, "cm-from"),
            cfg(ObjectKind::ConfigMap, "cm-vol"),
            cfg(ObjectKind::Secret, "s-env"),
            cfg(ObjectKind::Secret, "s-from"),
            cfg(ObjectKind::Secret, "s-vol"),
        ]
        .into();
        assert_eq!(refs, want);
        let mut index = ConfigIndex::new();
        index.apply(&pod_key("p"), Some(&v));
        assert_eq!(
            index.nodes_referencing(&cfg(ObjectKind::Secret, "s-vol")),
            ["n1"]
        );
        // Unbound: not indexed. Deleted: gone.
        let mut unbound = v.clone();
        unbound["spec"].as_object_mut().unwrap().remove("nodeName");
        index.apply(&pod_key("p"), Some(&unbound));
        assert_eq!(index.pod_count(), 0);
        index.apply(&pod_key("p"), Some(&v));
        index.apply(&pod_key("p"), None);
        assert!(index.configs().is_empty());
    }

    #[test]
    fn keys_map_both_ways() {
        let k = ObjectKey::new("secrets", "ns", "db");
        let r = config_ref_of(&k).unwrap();
        assert_eq!(r.kind, ObjectKind::Secret);
        assert_eq!(store_key(&r), Some(k));
        assert_eq!(config_ref_of(&ObjectKey::new("pods", "ns", "db")), None);
    }

    #[test]
    fn counts_keep_a_node_while_any_of_its_pods_references_the_config() {
        let s = cfg(ObjectKind::Secret, "s");
        let mut index = ConfigIndex::new();
        index.set_pod(&pod_key("a"), Some("n1"), [s.clone()].into());
        index.set_pod(&pod_key("b"), Some("n1"), [s.clone()].into());
        index.set_pod(&pod_key("c"), Some("n2"), [s.clone()].into());
        assert_eq!(index.nodes_referencing(&s), ["n1", "n2"]);
        index.set_pod(&pod_key("a"), None, BTreeSet::new());
        assert!(index.references("n1", &s));
        // A pod moving nodes moves its reference.
        index.set_pod(&pod_key("b"), Some("n3"), [s.clone()].into());
        assert_eq!(index.nodes_referencing(&s), ["n2", "n3"]);
        assert!(!index.references("n1", &s));
        assert_eq!(index.configs_of("n3"), std::slice::from_ref(&s));
        assert!(index.configs_of("n1").is_empty());
    }

    #[tokio::test]
    async fn after_lost_events_configs_written_since_or_gone_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::SledStore::open(dir.path(), projection::shard).unwrap();
        let put = |name: &str, kind: &str| {
            let key = ObjectKey::new(kind, "default", name);
            let value = json!({"metadata": {"name": name, "namespace": "default"}});
            let store = store.clone();
            async move { store.create(&key, value).await.unwrap().revision }
        };
        put("old", CONFIG_MAPS).await;
        let since = put("old-secret", SECRETS).await;
        put("new", CONFIG_MAPS).await;
        let mut index = ConfigIndex::new();
        let refs: BTreeSet<ObjectRef> = [
            cfg(ObjectKind::ConfigMap, "old"),
            cfg(ObjectKind::Secret, "old-secret"),
            cfg(ObjectKind::ConfigMap, "new"),
            cfg(ObjectKind::Secret, "gone"),
        ]
        .into();
        index.set_pod(&pod_key("a"), Some("n1"), refs);
        index.set_pod(
            &pod_key("b"),
            Some("n2"),
            [cfg(ObjectKind::ConfigMap, "new")].into(),
        );
        let found = index.changed_since(&store, since).await.unwrap();
        assert_eq!(
            found,
            [
                (
                    cfg(ObjectKind::ConfigMap, "new"),
                    vec!["n1".to_string(), "n2".to_string()]
                ),
                (cfg(ObjectKind::Secret, "gone"), vec!["n1".to_string()]),
            ]
        );
    }

    /// The index after any sequence of pod writes equals one built from the final state.
    fn rebuilt(state: &HashMap<ObjectKey, (String, BTreeSet<ObjectRef>)>) -> ConfigIndex {
        let mut idx = ConfigIndex::new();
        for (k, (n, r)) in state {
            idx.set_pod(k, Some(n), r.clone());
        }
        idx
    }

    proptest! {
        #[test]
        fn incremental_updates_match_a_rebuild(
            ops in proptest::collection::vec((0..6usize, proptest::option::of(0..3usize), proptest::collection::btree_set(0..4usize, 0..3)), 0..60)
        ) {
            let mut idx = ConfigIndex::new();
            let mut state: HashMap<ObjectKey, (String, BTreeSet<ObjectRef>)> = HashMap::new();
            for (pod, node, refs) in ops {
                let key = pod_key(&format!("p{pod}"));
                let refs: BTreeSet<ObjectRef> = refs.into_iter().map(|i| cfg(if i % 2 == 0 { ObjectKind::ConfigMap } else { ObjectKind::Secret }, &format!("c{i}"))).collect();
                let node = node.map(|n| format!("n{n}"));
                idx.set_pod(&key, node.as_deref(), refs.clone());
                match node {
                    Some(n) if !refs.is_empty() => { state.insert(key, (n, refs)); }
                    _ => { state.remove(&key); }
                }
            }
            let want = rebuilt(&state);
            prop_assert_eq!(idx.configs(), want.configs());
            prop_assert_eq!(&idx.by_config, &want.by_config);
            prop_assert_eq!(&idx.by_node, &want.by_node);
            prop_assert_eq!(idx.pod_count(), state.len());
        }
    }
}
