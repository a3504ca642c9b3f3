//! The node's CNI configuration, written from the pod CIDR the cloud gave it
//! (`spec.podCIDR`), so that pod addresses are unique across the cluster: without it every
//! node's bridge would hand out the same `10.88.0.0/16` and an EndpointSlice could not name a
//! pod unambiguously.
//!
//! edgecore writes one conflist (a bridge with host-local IPAM over the node's CIDR, and
//! portmap) into containerd's CNI directory, atomically (temporary file, fsync, rename), only
//! when its content changes; containerd reloads the directory on change. The file is written
//! before the pods of the batch that brought the CIDR are started (the hub puts the network
//! settings first in a batch), and again at every start from the cache, so it survives a
//! reinstall of containerd's directory.
//!
//! A node's CIDR never changes while its Node exists (the API refuses it). It changes only when
//! the node joins again under a new Node, or the cloud's data is reset: then the new file is
//! written, new sandboxes get addresses from the new CIDR, and running pods keep their old
//! address until their sandbox is recreated (docs/networking.md says to drain such a node).

use std::path::{Path, PathBuf};

/// Where and how to write the CNI configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniConfig {
    /// containerd's CNI configuration directory (`/etc/cni/net.d`).
    pub conf_dir: PathBuf,
    /// The CNI network name (also host-local's IPAM directory name).
    pub network: String,
    /// The bridge device pods attach to.
    pub bridge: String,
}

impl CniConfig {
    /// The conflist's path.
    pub fn path(&self) -> PathBuf {
        self.conf_dir.join("10-skerry.conflist")
    }
}

/// The conflist for `pod_cidr`.
pub fn conflist(cfg: &CniConfig, pod_cidr: &str) -> String {
    let value = serde_json::json!({
        "cniVersion": "0.4.0",
        "name": cfg.network,
        "plugins": [
            {"type": "bridge", "bridge": cfg.bridge, "isGateway": true, "ipMasq": true,
             "hairpinMode": true,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": pod_cidr}]],
                      "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    });
    serde_json::to_string_pretty(&value).expect("a JSON value always serialises")
}

/// The pod CIDR the written file holds, if any.
pub fn written_cidr(cfg: &CniConfig) -> Option<String> {
    let text = std::fs::read_to_string(cfg.path()).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    value
        .pointer("/plugins/0/ipam/ranges/0/0/subnet")
        .and_then(serde_json::Value::as_str)
        .map(str::to_string)
}

/// Writes the conflist for `pod_cidr` unless the file already says exactly that; returns
/// whether it wrote.
pub fn ensure(cfg: &CniConfig, pod_cidr: &str) -> std::io::Result<bool> {
    let wanted = conflist(cfg, pod_cidr);
    let path = cfg.path();
    if std::fs::read_to_string(&path).ok().as_deref() == Some(wanted.as_str()) {
        return Ok(false);
    }
    let previous = written_cidr(cfg);
    write_atomically(&path, wanted.as_bytes())?;
    match previous {
        // Only a node registered anew (a re-join under a new Node, a reset cloud) gets here:
        // the API refuses to change a live Node's podCIDR. Old addresses may be another
        // node's now, so the operator is told to drain (docs/networking.md, "Pod CIDRs").
        Some(old) if old != pod_cidr => tracing::warn!(
            old, new = pod_cidr, file = %path.display(),
            "the node's pod CIDR changed: new pods get addresses from the new one, pods already \
             running keep their old address until they are recreated, and the old range may be \
             another node's now; drain this node (kubectl drain) to recreate them"
        ),
        _ => tracing::info!(pod_cidr, file = %path.display(), "CNI configuration written"),
    }
    Ok(true)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("conflist.tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_is_written_once_per_cidr_and_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = CniConfig {
            conf_dir: dir.path().join("net.d"),
            network: "skerry".into(),
            bridge: "skerry0".into(),
        };
        assert_eq!(written_cidr(&cfg), None);
        assert!(ensure(&cfg, "10.244.3.0/24").unwrap());
        assert!(
            !ensure(&cfg, "10.244.3.0/24").unwrap(),
            "unchanged: not rewritten"
        );
        assert_eq!(written_cidr(&cfg).as_deref(), Some("10.244.3.0/24"));
        assert!(ensure(&cfg, "10.244.4.0/24").unwrap());
        assert_eq!(written_cidr(&cfg).as_deref(), Some("10.244.4.0/24"));
        let text = std::fs::read_to_string(cfg.path()).unwrap();
        assert!(text.contains("\"bridge\": \"skerry0\""));
    }
}
