//! The pod's names in its sandbox: the hostname containerd gives the pod's UTS namespace, and
//! the `/etc/hosts` edgecore writes beside the pod's logs and mounts into each container
//! (kubelet's "Kubernetes-managed hosts file"), from `spec.hostname`, `spec.subdomain`,
//! `setHostnameAsFQDN` and `hostAliases` ([`protocol::hosts`] has the rules). Without it,
//! containerd gives every container a copy of the host's file, in which the pod's own name
//! does not appear.

use super::CriRuntime;
use crate::runtime::RuntimeError;
use protocol::pod::EdgePod;
use std::path::PathBuf;

/// The file's name in the pod's directory.
pub(super) const HOSTS_FILE: &str = "etc-hosts";

impl CriRuntime {
    /// The cluster domain as the cloud last said it; empty before it has (a pod then has no
    /// fully qualified name, as its resolver has no cluster search path).
    fn cluster_domain(&self) -> String {
        self.network
            .get()
            .map(|n| n.cluster_domain)
            .unwrap_or_default()
    }

    /// The hostname of the pod's UTS namespace; refused when `setHostnameAsFQDN` asks for a
    /// name longer than the kernel takes (kubelet refuses it in the same words).
    pub(super) fn pod_hostname(&self, pod: &EdgePod) -> Result<String, String> {
        pod.hosts
            .kernel_hostname(&pod.name, &pod.namespace, &self.cluster_domain())
            .map_err(|e| e.to_string())
    }

    /// `<pods_root>/<uid>/etc-hosts`.
    pub(super) fn hosts_path(&self, uid: &str) -> PathBuf {
        self.pods_root.join(uid).join(HOSTS_FILE)
    }

    /// Writes the pod's hosts file for its sandbox at `ip`, unless it already says that: a
    /// running container's bind mount keeps the file it was given, so the file is replaced
    /// only when its lines change (atomically, so that a container created meanwhile never
    /// mounts half a file).
    pub(super) async fn write_hosts_file(
        &self,
        pod: &EdgePod,
        ip: &str,
    ) -> Result<(), RuntimeError> {
        let text = pod
            .hosts
            .pod_hosts_file(&pod.name, &pod.namespace, &self.cluster_domain(), ip);
        let path = self.hosts_path(&pod.uid);
        if tokio::fs::read(&path)
            .await
            .is_ok_and(|b| b == text.as_bytes())
        {
            return Ok(());
        }
        tokio::task::spawn_blocking(move || {
            wire::durable::write_atomic(&path, text.as_bytes(), 0o644).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r)
        .map_err(|message| RuntimeError::Internal {
            op: "run sandbox".into(),
            message: format!("cannot write the pod's hosts file: {message}"),
        })
    }
}
