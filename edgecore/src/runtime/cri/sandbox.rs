//! Pod sandboxes: made (or found again by their labels, so that a retried start adopts rather
//! than duplicates), replaced when containerd says they are not ready, and removed with their
//! containers. Kept apart from the containers because a sandbox's rules (one per pod, dead ones
//! discarded first) are the pod's, not a container's.

use super::spec::LABEL_POD_UID;
use super::{is_safe_component, spec, CriRuntime};
use crate::runtime::dns::{self, ResolvConf};
use crate::runtime::{RuntimeError, Sandbox};
use k8s_cri::v1 as cri;
use protocol::pod::EdgePod;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::time::Instant;
use tracing::{debug, info};

impl CriRuntime {
    /// [`Runtime::run_sandbox`]: finds this pod's ready sandbox again, or discards dead ones
    /// and makes a new one.
    pub(super) async fn create_sandbox(&self, pod: &EdgePod) -> Result<Sandbox, RuntimeError> {
        const OP: &str = "run sandbox";
        if !is_safe_component(&pod.uid) {
            return Err(RuntimeError::Internal {
                op: OP.into(),
                message: format!("pod uid {:?} is not usable as a directory name", pod.uid),
            });
        }
        let mut sandboxes = self.sandboxes(OP, Some(&pod.uid)).await?;
        sandboxes.sort_by_key(|s| std::cmp::Reverse(s.created_at));
        let next_attempt = sandboxes
            .iter()
            .filter_map(|s| s.metadata.as_ref().map(|m| m.attempt.saturating_add(1)))
            .max()
            .unwrap_or(0);
        let mut current = None;
        for sandbox in sandboxes {
            if current.is_none() && ready(&sandbox) {
                current = Some(sandbox);
                continue;
            }
            // Dead (or a second ready one, which only a lost race could make): its containers
            // would hold the names of the attempts to come.
            info!(pod = %pod.key(), sandbox = %sandbox.id, "removing a stale sandbox of the pod");
            self.discard_sandbox(OP, &sandbox.id).await?;
        }
        if let Some(sandbox) = current {
            if let Some(status) = self.sandbox_status(OP, &sandbox.id).await? {
                if status.state == cri::PodSandboxState::SandboxReady as i32 {
                    debug!(pod = %pod.key(), sandbox = %sandbox.id, "sandbox already runs");
                    let ip = ip_of(&status);
                    // Containers still to be made mount it (and it is gone if the pod's
                    // directory was).
                    self.write_hosts_file(pod, &ip).await?;
                    return Ok(Sandbox {
                        id: sandbox.id,
                        pod_uid: pod.uid.clone(),
                        ip,
                    });
                }
            }
            // It died between the listing and now.
            self.discard_sandbox(OP, &sandbox.id).await?;
        }

        let log_dir = self.log_dir(&pod.uid);
        tokio::fs::create_dir_all(&log_dir)
            .await
            .map_err(|e| RuntimeError::Internal {
                op: OP.into(),
                message: format!(
                    "cannot create the pod's log directory {}: {e}",
                    log_dir.display()
                ),
            })?;
        let dns = self.sandbox_dns(pod).await?;
        let hostname = self
            .pod_hostname(pod)
            .map_err(|message| RuntimeError::Internal {
                op: OP.into(),
                message,
            })?;
        let config = spec::sandbox_config(
            pod,
            hostname,
            next_attempt,
            &self.instance,
            &log_dir,
            Some(dns),
            &self.seccomp_root(),
        );
        let request = cri::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        };
        let started = Instant::now();
        // Not repeated on a broken connection: a retry of the whole start finds the sandbox if
        // this one was made.
        let response = self
            .conn
            .call(self.conn.timeout, false, || {
                let mut client = self.conn.runtime();
                let request = request.clone();
                async move { client.run_pod_sandbox(request).await }
            })
            .await
            .map_err(|e| self.internal(OP, "RunPodSandbox", &e))?;
        let id = response.pod_sandbox_id;
        let status = self
            .sandbox_status(OP, &id)
            .await?
            .ok_or_else(|| RuntimeError::Internal {
                op: OP.into(),
                message: format!("sandbox {id} vanished right after containerd created it"),
            })?;
        let ip = ip_of(&status);
        // Needs the address, which only the sandbox's network gives.
        self.write_hosts_file(pod, &ip).await?;
        info!(pod = %pod.key(), uid = %pod.uid, sandbox = %id, %ip, attempt = next_attempt,
              ms = started.elapsed().as_millis() as u64, "sandbox created");
        Ok(Sandbox {
            id,
            pod_uid: pod.uid.clone(),
            ip,
        })
    }

    /// [`Runtime::remove_sandbox`]: stops and removes the pod's sandboxes and their
    /// containers; what is already gone counts as removed.
    pub(super) async fn delete_sandbox(
        &self,
        sandbox: &Sandbox,
        grace: Duration,
    ) -> Result<(), RuntimeError> {
        const OP: &str = "remove sandbox";
        if !is_safe_component(&sandbox.pod_uid) {
            return Err(RuntimeError::Internal {
                op: OP.into(),
                message: format!("pod uid {:?} is not a directory name", sandbox.pod_uid),
            });
        }
        // Every sandbox of the pod, not only the one given: earlier, dead ones too.
        let mut ids: Vec<String> = self
            .sandboxes(OP, Some(&sandbox.pod_uid))
            .await?
            .into_iter()
            .map(|s| s.id)
            .collect();
        if !sandbox.id.is_empty() && !ids.contains(&sandbox.id) {
            ids.push(sandbox.id.clone());
        }
        // StopPodSandbox kills at once: give what still runs its grace first.
        let running: Vec<String> = self
            .containers(OP, None, &[(LABEL_POD_UID, &sandbox.pod_uid)])
            .await?
            .into_iter()
            .filter(|c| c.state == cri::ContainerState::ContainerRunning as i32)
            .map(|c| c.id)
            .collect();
        let stops = running.iter().map(|id| self.stop(OP, id, grace));
        for result in futures::future::join_all(stops).await {
            result?;
        }
        for id in &ids {
            self.discard_sandbox(OP, id).await?;
        }
        // The logs are ours; the volumes beside them are the pod worker's (they may be mounts,
        // which it unmounts), so the pod's directory goes only once nothing else is in it.
        let dir = self.pods_root.join(&sandbox.pod_uid);
        let logs = self.log_dir(&sandbox.pod_uid);
        let remove_err = |path: &Path, e: std::io::Error| RuntimeError::Internal {
            op: OP.into(),
            message: format!("cannot remove {}: {e}", path.display()),
        };
        // The FIFOs of execs (see `super::exec`) are ours too.
        for ours in [logs, dir.join(super::exec::EXEC_DIR)] {
            match tokio::fs::remove_dir_all(&ours).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(remove_err(&ours, e)),
            }
        }
        let hosts = self.hosts_path(&sandbox.pod_uid);
        match tokio::fs::remove_file(&hosts).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(remove_err(&hosts, e)),
        }
        match tokio::fs::remove_dir(&dir).await {
            Ok(()) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::DirectoryNotEmpty
                ) => {}
            Err(e) => return Err(remove_err(&dir, e)),
        }
        info!(pod = %sandbox.pod_uid, sandboxes = ids.len(), "sandbox removed");
        Ok(())
    }

    /// Stops and removes a sandbox with whatever still runs in it (killed at once: callers stop
    /// containers with grace first where it matters); a missing sandbox is removed.
    pub(super) async fn discard_sandbox(&self, op: &str, id: &str) -> Result<(), RuntimeError> {
        let stop = cri::StopPodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        };
        match self
            .conn
            .call(self.conn.timeout, true, || {
                let mut client = self.conn.runtime();
                let request = stop.clone();
                async move { client.stop_pod_sandbox(request).await }
            })
            .await
        {
            Ok(_) => {}
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(self.internal(op, "StopPodSandbox", &e)),
        }
        let remove = cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        };
        let result = self
            .conn
            .call(self.conn.timeout, true, || {
                let mut client = self.conn.runtime();
                let request = remove.clone();
                async move { client.remove_pod_sandbox(request).await }
            })
            .await;
        self.done_if_absent(result, op, "RemovePodSandbox")
    }
}

impl CriRuntime {
    /// The pod's resolver configuration as kubelet builds it (`crate::runtime::dns`): CRI pods
    /// have a network namespace of their own, so `ClusterFirst` means the cluster DNS.
    async fn sandbox_dns(&self, pod: &EdgePod) -> Result<cri::DnsConfig, RuntimeError> {
        let host = match tokio::fs::read_to_string(&self.resolv_conf).await {
            Ok(text) => ResolvConf::parse(&text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => ResolvConf::default(),
            Err(e) => {
                return Err(RuntimeError::Internal {
                    op: "run sandbox".into(),
                    message: format!(
                        "cannot read the host's resolver configuration {}: {e}",
                        self.resolv_conf.display()
                    ),
                })
            }
        };
        let cluster = self.network.get();
        let (conf, fell_back) = dns::pod_resolv_conf(pod, false, cluster.as_ref(), &host);
        if fell_back && !self.dns_fallback_logged.swap(true, Ordering::Relaxed) {
            info!(pod = %pod.key(), resolv_conf = %self.resolv_conf.display(),
                  "the node has no cluster DNS settings yet: ClusterFirst pods get the host's resolver configuration until the cloud sends them");
        }
        Ok(cri::DnsConfig {
            servers: conf.nameservers,
            searches: conf.searches,
            options: conf.options,
        })
    }
}

pub(super) fn ready(sandbox: &cri::PodSandbox) -> bool {
    sandbox.state == cri::PodSandboxState::SandboxReady as i32
}

pub(super) fn ip_of(status: &cri::PodSandboxStatus) -> String {
    status
        .network
        .as_ref()
        .map(|n| n.ip.clone())
        .unwrap_or_default()
}
