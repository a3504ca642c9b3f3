//! The edge form of ConfigMaps and Secrets: what a node's pods reference, sent to that node and
//! no other (see `cloudcore::hub`). The edge keeps them in its cache so that a rebooted node can
//! start its pods with their configuration while the cloud is unreachable.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// A ConfigMap as the edge needs it: its keys and values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeConfigMap {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `data` (UTF-8 values).
    pub data: BTreeMap<String, String>,
    /// `binaryData` (already base64-decoded).
    pub binary_data: BTreeMap<String, Vec<u8>>,
}

impl EdgeConfigMap {
    /// The value of `key` as bytes, from `data` or `binaryData`.
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.data
            .get(key)
            .map(|v| v.as_bytes())
            .or_else(|| self.binary_data.get(key).map(Vec::as_slice))
    }

    /// Every key with its value as bytes, in key order.
    pub fn entries(&self) -> BTreeMap<&str, &[u8]> {
        let mut out: BTreeMap<&str, &[u8]> = self
            .binary_data
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        out.extend(self.data.iter().map(|(k, v)| (k.as_str(), v.as_bytes())));
        out
    }
}

/// A Secret as the edge needs it. `Debug` shows the keys only: secret values must never reach
/// a log line, even through a `{:?}` of a whole batch.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeSecret {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Secret `type` (`Opaque`, `kubernetes.io/tls`, ...).
    pub kind: String,
    /// `data` (already base64-decoded; `stringData` is merged in by the API).
    pub data: BTreeMap<String, Vec<u8>>,
}

impl fmt::Debug for EdgeSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EdgeSecret")
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("keys", &self.data.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_debug_never_shows_values() {
        let s = EdgeSecret {
            namespace: "default".into(),
            name: "db".into(),
            kind: "Opaque".into(),
            data: BTreeMap::from([("password".into(), b"hunter2".to_vec())]),
        };
        let shown = format!("{s:?}");
        assert!(shown.contains("password"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn config_map_keys_come_from_both_maps() {
        let c = EdgeConfigMap {
            namespace: "default".into(),
            name: "cfg".into(),
            data: BTreeMap::from([("a".into(), "1".into())]),
            binary_data: BTreeMap::from([("b".into(), vec![0, 1])]),
        };
        assert_eq!(c.get("a"), Some(&b"1"[..]));
        assert_eq!(c.get("b"), Some(&[0u8, 1][..]));
        assert_eq!(c.get("c"), None);
        assert_eq!(c.entries().len(), 2);
    }
}
