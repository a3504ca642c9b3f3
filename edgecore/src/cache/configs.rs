//! The node's ConfigMaps and Secrets as one value ([`ConfigSet`]), and which of them a pod
//! references: cut from the cache module, which stores them, because the pod workers and
//! the volume manager read them without knowing how they are stored.

use protocol::config::{EdgeConfigMap, EdgeSecret};
use protocol::messages::{ObjectKind, ObjectRef};
use protocol::pod::EdgePod;
use std::collections::{BTreeMap, BTreeSet};

/// The node's ConfigMaps and Secrets, as the pods see them: one value, compared and swapped as a
/// whole, so that a pod worker reads the configuration of one sync, never a mix of two. `Debug`
/// shows secret keys but never their values (see [`EdgeSecret`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigSet {
    config_maps: BTreeMap<(String, String), EdgeConfigMap>,
    secrets: BTreeMap<(String, String), EdgeSecret>,
}

impl ConfigSet {
    /// ConfigMap `name` of `namespace`, if the node has it.
    pub fn config_map(&self, namespace: &str, name: &str) -> Option<&EdgeConfigMap> {
        self.config_maps
            .get(&(namespace.to_string(), name.to_string()))
    }

    /// Secret `name` of `namespace`, if the node has it.
    pub fn secret(&self, namespace: &str, name: &str) -> Option<&EdgeSecret> {
        self.secrets.get(&(namespace.to_string(), name.to_string()))
    }

    /// Adds or replaces a ConfigMap.
    pub fn insert_config_map(&mut self, config_map: EdgeConfigMap) {
        self.config_maps.insert(
            (config_map.namespace.clone(), config_map.name.clone()),
            config_map,
        );
    }

    /// Adds or replaces a Secret.
    pub fn insert_secret(&mut self, secret: EdgeSecret) {
        self.secrets
            .insert((secret.namespace.clone(), secret.name.clone()), secret);
    }

    /// Removes a ConfigMap or Secret (a pod reference is not a config: ignored).
    pub fn remove(&mut self, object: &ObjectRef) {
        let key = (object.namespace.clone(), object.name.clone());
        match object.kind {
            ObjectKind::ConfigMap => {
                self.config_maps.remove(&key);
            }
            ObjectKind::Secret => {
                self.secrets.remove(&key);
            }
            ObjectKind::Pod
            | ObjectKind::Service
            | ObjectKind::EndpointSlice
            | ObjectKind::Network
            | ObjectKind::Overlay
            | ObjectKind::Ingress => {}
        }
    }

    /// Number of ConfigMaps and Secrets.
    pub fn len(&self) -> usize {
        self.config_maps.len() + self.secrets.len()
    }

    /// Whether the set holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The objects that differ between `self` and `other`: added, removed or changed.
    pub fn changes_from(&self, other: &ConfigSet) -> BTreeSet<ObjectRef> {
        fn diff<T: PartialEq>(
            kind: ObjectKind,
            a: &BTreeMap<(String, String), T>,
            b: &BTreeMap<(String, String), T>,
            out: &mut BTreeSet<ObjectRef>,
        ) {
            let keys: BTreeSet<&(String, String)> = a.keys().chain(b.keys()).collect();
            for key in keys {
                if a.get(key) != b.get(key) {
                    out.insert(ObjectRef {
                        kind,
                        namespace: key.0.clone(),
                        name: key.1.clone(),
                    });
                }
            }
        }
        let mut out = BTreeSet::new();
        diff(
            ObjectKind::ConfigMap,
            &self.config_maps,
            &other.config_maps,
            &mut out,
        );
        diff(ObjectKind::Secret, &self.secrets, &other.secrets, &mut out);
        out
    }
}

/// Every ConfigMap and Secret `pod` references (see [`EdgePod::config_refs`], shared with the
/// hub so that both ends agree on a node's configs).
pub fn config_refs(pod: &EdgePod) -> BTreeSet<ObjectRef> {
    pod.config_refs()
}
