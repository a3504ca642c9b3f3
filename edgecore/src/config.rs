//! edgecore's configuration: a JSON file written by `edgecore join` under the data dir, which
//! flags override. Validated at start with errors that say which setting is wrong.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Name of the config file inside the data dir.
pub const CONFIG_FILE: &str = "edgecore.json";

/// Persistent settings of one edge node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeConfig {
    /// `host:port` of cloudcore's hub (UDP).
    pub server: String,
    /// TLS name of the hub, if not the host part of `server`.
    #[serde(default)]
    pub server_name: Option<String>,
    /// This node's name (the certificate's subject).
    pub node_name: String,
    /// MQTT broker URL; default `mqtts://<server host>:8883`.
    #[serde(default)]
    pub mqtt_url: Option<String>,
    /// Labels given at join.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Errors loading or saving the config.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Missing file.
    #[error("no {0}; run `edgecore join` first (or pass --server and --node-name)")]
    Missing(PathBuf),
    /// Unreadable file.
    #[error("cannot read {path}: {reason}; fix or delete it and join again")]
    Invalid {
        /// File.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Writing failed.
    #[error(transparent)]
    Write(#[from] crate::identity::IdentityError),
}

impl EdgeConfig {
    /// Loads the config of a data dir.
    pub fn load(data_dir: &Path) -> Result<Self, ConfigError> {
        let path = data_dir.join(CONFIG_FILE);
        let raw = std::fs::read(&path).map_err(|_| ConfigError::Missing(path.clone()))?;
        serde_json::from_slice(&raw).map_err(|e| ConfigError::Invalid {
            path,
            reason: e.to_string(),
        })
    }

    /// Saves it atomically.
    pub fn save(&self, data_dir: &Path) -> Result<(), ConfigError> {
        let json = serde_json::to_vec_pretty(self).map_err(|e| ConfigError::Invalid {
            path: data_dir.join(CONFIG_FILE),
            reason: e.to_string(),
        })?;
        crate::identity::write_atomic(&data_dir.join(CONFIG_FILE), &json, 0o644)?;
        Ok(())
    }

    /// The broker URL to use.
    pub fn mqtt_url(&self) -> String {
        self.mqtt_url.clone().unwrap_or_else(|| {
            let host = self
                .server
                .rsplit_once(':')
                .map(|(h, _)| h)
                .unwrap_or(&self.server);
            format!("mqtts://{host}:{}", protocol::topics::MQTTS_PORT)
        })
    }
}

/// Parses `mqtts://host:port` into host and port (plain `mqtt://` is refused: see
/// [`protocol::topics::parse_broker_url`]).
pub fn parse_mqtt_url(url: &str) -> Result<(String, u16), String> {
    protocol::topics::parse_broker_url(url)
}

/// Parses `key=value` labels.
pub fn parse_labels(items: &[String]) -> Result<BTreeMap<String, String>, String> {
    items
        .iter()
        .map(|kv| {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| format!("label {kv:?} must be key=value"))?;
            if k.is_empty() {
                return Err(format!("label {kv:?} has an empty key"));
            }
            Ok((k.to_string(), v.to_string()))
        })
        .collect()
}

/// The machine's hostname, the default node name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_lowercase())
        .unwrap_or_else(|_| "edge".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mqtt_url_defaults_to_the_server_host() {
        let c = EdgeConfig {
            server: "cloud.example:7443".into(),
            server_name: None,
            node_name: "n".into(),
            mqtt_url: None,
            labels: Default::default(),
        };
        assert_eq!(c.mqtt_url(), "mqtts://cloud.example:8883");
        assert_eq!(
            parse_mqtt_url("mqtts://127.0.0.1:1884").unwrap(),
            ("127.0.0.1".into(), 1884)
        );
        assert!(parse_mqtt_url("mqtt://127.0.0.1:1884").is_err());
        assert!(parse_mqtt_url("mqtts://:1").is_err());
        assert!(parse_labels(&["a=b".into(), "c".into()]).is_err());
    }
}
