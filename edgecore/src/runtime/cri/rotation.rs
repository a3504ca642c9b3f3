//! Log rotation for CRI containers: containerd appends to a container's log for ever, so, as
//! kubelet does, edgecore moves a log that outgrew its limit to `<attempt>.log.1` and has
//! containerd reopen it (`ReopenContainerLog`). Readers see both generations.

use super::CriRuntime;
use crate::runtime::RuntimeError;
use k8s_cri::v1 as cri;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tracing::{debug, warn};

/// How container logs are rotated (see [`CriRuntime::spawn_log_rotation`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogRotation {
    /// A log larger than this is rotated (kubelet's default: 10 MiB).
    pub max_bytes: u64,
    /// How often the logs are checked.
    pub period: Duration,
}

impl Default for LogRotation {
    fn default() -> Self {
        Self {
            max_bytes: 10 * 1024 * 1024,
            period: Duration::from_secs(10),
        }
    }
}

/// The previous generation of a rotated log: `<attempt>.log.1` beside `<attempt>.log`.
pub(super) fn rotated_path(log: &Path) -> PathBuf {
    let mut name = log.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

impl CriRuntime {
    /// Rotates, every `rotation.period`, the logs of this edgecore's running containers that
    /// outgrew `rotation.max_bytes`, until the returned task is aborted (or the runtime ends).
    /// Failures are logged and retried at the next pass.
    pub fn spawn_log_rotation(&self, rotation: LogRotation) -> tokio::task::JoinHandle<()> {
        let runtime = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(rotation.period).await;
                if let Err(e) = runtime.rotate_logs(rotation.max_bytes).await {
                    warn!(error = %e, "cannot rotate container logs; retrying later");
                }
            }
        })
    }

    /// One rotation pass: every running container of this edgecore whose log is at least
    /// `max_bytes` long gets a fresh log (the old one kept as `<attempt>.log.1`). Returns how
    /// many logs were rotated.
    pub async fn rotate_logs(&self, max_bytes: u64) -> Result<usize, RuntimeError> {
        const OP: &str = "rotate logs";
        let mut rotated = 0;
        for c in self.containers(OP, None, &[]).await? {
            if c.state != cri::ContainerState::ContainerRunning as i32 {
                continue;
            }
            let Some(status) = self.container_status(OP, &c.id).await? else {
                continue;
            };
            if status.log_path.is_empty() {
                continue;
            }
            let log = PathBuf::from(&status.log_path);
            // Only logs under our data dir: never move files edgecore does not own.
            if !log.starts_with(&self.pods_root) {
                continue;
            }
            match tokio::fs::metadata(&log).await {
                Ok(meta) if meta.len() >= max_bytes => {}
                _ => continue,
            }
            let old = rotated_path(&log);
            let io_err = |e: std::io::Error| RuntimeError::Internal {
                op: OP.into(),
                message: format!("cannot rotate {}: {e}", log.display()),
            };
            tokio::fs::rename(&log, &old).await.map_err(io_err)?;
            let request = cri::ReopenContainerLogRequest {
                container_id: c.id.clone(),
            };
            let reopened = self
                .conn
                .call(self.conn.timeout, true, || {
                    let mut client = self.conn.runtime();
                    let request = request.clone();
                    async move { client.reopen_container_log(request).await }
                })
                .await;
            match reopened {
                Ok(_) => {
                    debug!(container = %c.id, log = %log.display(), "log rotated");
                    rotated += 1;
                }
                Err(e) => {
                    // containerd still writes to the renamed file: put it back, as kubelet does,
                    // unless it has created a new one meanwhile.
                    if !tokio::fs::try_exists(&log).await.unwrap_or(false) {
                        tokio::fs::rename(&old, &log).await.map_err(io_err)?;
                    }
                    if !e.is_not_found() {
                        return Err(self.internal(OP, "ReopenContainerLog", &e));
                    }
                }
            }
        }
        Ok(rotated)
    }
}
