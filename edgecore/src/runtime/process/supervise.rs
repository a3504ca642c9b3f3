//! Supervision from edgecore's side: reading an instance's state from its records and `/proc`,
//! listing a pod's instances, and stopping one (SIGTERM, grace, SIGKILL, then waiting for the
//! shim to record the exit). The shim waits for the process; this side only reads what it wrote.

use super::layout::{exists, list_dirs, InstanceId};
use super::procfs::{proc_alive, signal_group};
use super::record::{
    read_json, ExitRecord, ShimState, StartError, EXIT_FILE, SPEC_FILE, START_ERROR_FILE,
    STATE_FILE,
};
use super::shim::{shim_lock_held, SHIM_LOCK_GRACE};
use super::{internal, ProcessRuntime, EXIT_RECORD_TIMEOUT, STALE_CREATED_AFTER, STOP_POLL};
use crate::runtime::{deadline_after, ContainerRunState, RuntimeError};
use nix::sys::signal::Signal;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use tokio::time::{sleep, Instant};
use tracing::{info, warn};

impl ProcessRuntime {
    /// The instance's `state.json`: `Ok(None)` while there is none (the process has not been
    /// started), `Err` if it is corrupt. Parsed once, then served from the cache.
    pub(super) async fn shim_state(
        &self,
        id: &InstanceId,
        dir: &Path,
    ) -> Result<Option<ShimState>, String> {
        let key = id.to_string();
        // Held across the read, so that an entry is never inserted after `forget_state` dropped
        // it for a directory removed meanwhile.
        let mut states = self.states.lock().await;
        if let Some(state) = states.get(&key) {
            return Ok(Some(*state));
        }
        let read = read_json::<ShimState>(&dir.join(STATE_FILE)).await;
        if let Ok(Some(state)) = &read {
            states.insert(key, *state);
        }
        read
    }

    /// Drops the cached state of an instance whose directory was removed.
    pub(super) async fn forget_state(&self, id: &InstanceId) {
        self.states.lock().await.remove(&id.to_string());
    }

    /// Drops the cached states of every instance of a pod whose directory was removed.
    pub(super) async fn forget_pod_states(&self, pod_uid: &str) {
        let prefix = format!("{pod_uid}/");
        self.states
            .lock()
            .await
            .retain(|key, _| !key.starts_with(&prefix));
    }

    /// Observes one instance directory (which must exist).
    pub(super) async fn observe(&self, id: &InstanceId, dir: &Path) -> ContainerRunState {
        if let Some(state) = read_exit_state(dir).await {
            return state;
        }
        let state = match self.shim_state(id, dir).await {
            Ok(Some(state)) => state,
            Ok(None) => return observe_unstarted(dir).await,
            Err(message) => {
                let state_path = dir.join(STATE_FILE);
                warn!(path = %state_path.display(), %message, "corrupt container state file");
                return ContainerRunState::Unknown {
                    message: format!("state file {} is corrupt: {message}", state_path.display()),
                    started_at_ms: None,
                };
            }
        };
        if proc_alive(state.pid, state.proc_start_time).await {
            return ContainerRunState::Running {
                started_at_ms: state.started_at_ms,
            };
        }
        // The process is gone. Its shim records the exit as soon as it reaped it; until then the
        // last known state stands (the next poll sees the record: waiting for it here would hold
        // up every poll of every container).
        if let Some(exited) = read_exit_state(dir).await {
            return exited;
        }
        if proc_alive(state.shim_pid, state.shim_start_time).await {
            return ContainerRunState::Running {
                started_at_ms: state.started_at_ms,
            };
        }
        // The shim may have written the record and exited between the two checks above.
        if let Some(exited) = read_exit_state(dir).await {
            return exited;
        }
        ContainerRunState::Unknown {
            message: format!(
                "process {} is gone and its shim (pid {}) died without recording an exit code \
                 (the host rebooted or the shim was killed)",
                state.pid, state.shim_pid
            ),
            // The shim recorded the start: the lost instance's `startedAt`.
            started_at_ms: Some(state.started_at_ms),
        }
    }

    /// Every instance of a pod: (id, instance dir).
    pub(super) async fn instances(
        &self,
        pod_uid: &str,
    ) -> Result<Vec<(InstanceId, PathBuf)>, RuntimeError> {
        let containers_dir = self.pod_dir(pod_uid).join("containers");
        let mut out = Vec::new();
        for (name, name_dir) in list_dirs(&containers_dir).await? {
            for (attempt_name, dir) in list_dirs(&name_dir).await? {
                let Ok(attempt) = attempt_name.parse::<u32>() else {
                    warn!(path = %dir.display(), "unexpected directory in a container's instances; skipped");
                    continue;
                };
                out.push((
                    InstanceId {
                        pod_uid: pod_uid.to_string(),
                        container: name.clone(),
                        attempt,
                    },
                    dir,
                ));
            }
        }
        out.sort_by(|a, b| {
            (a.0.container.as_str(), a.0.attempt).cmp(&(b.0.container.as_str(), b.0.attempt))
        });
        Ok(out)
    }

    pub(super) async fn stop_instance(
        &self,
        id: &InstanceId,
        dir: &Path,
        grace: Duration,
    ) -> Result<(), RuntimeError> {
        if read_exit_state(dir).await.is_some() {
            return Ok(());
        }
        let state: ShimState = match self.shim_state(id, dir).await {
            Ok(Some(state)) => state,
            // A shim is still starting it (an earlier start timed out): its process could not be
            // found again once the directory is gone, so the stop is retried later.
            Ok(None) if shim_lock_held(dir) && read_exit_state(dir).await.is_none() => {
                return Err(internal(
                    "stop container",
                    format!(
                        "the shim of container {id} is still starting its process; stopping it \
                         once it has"
                    ),
                ));
            }
            // Never started, or unreadable: there is no process we could signal.
            Ok(None) | Err(_) => return Ok(()),
        };
        let running = || proc_alive(state.pid, state.proc_start_time);
        if running().await {
            info!(pod = %id.pod_uid, container = %id.container, attempt = id.attempt,
                  grace_ms = grace.as_millis() as u64, "stopping container");
            signal_group(state.pid, Signal::SIGTERM)?;
            let deadline = deadline_after(Instant::now(), grace);
            while running().await && Instant::now() < deadline {
                if exists(&dir.join(EXIT_FILE)).await {
                    return Ok(());
                }
                sleep(STOP_POLL).await;
            }
            if running().await {
                info!(pod = %id.pod_uid, container = %id.container, attempt = id.attempt,
                      "grace period over; killing container");
                signal_group(state.pid, Signal::SIGKILL)?;
            }
        }
        // Wait for the shim to record the exit (if the shim is still around to do it).
        let deadline = deadline_after(Instant::now(), EXIT_RECORD_TIMEOUT);
        loop {
            if exists(&dir.join(EXIT_FILE)).await {
                return Ok(());
            }
            let process = running().await;
            if !process && !proc_alive(state.shim_pid, state.shim_start_time).await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                if process {
                    return Err(internal(
                        "stop container",
                        format!(
                            "process {} of container {} is still running {}s after SIGKILL \
                             (stuck in the kernel?)",
                            state.pid,
                            id,
                            EXIT_RECORD_TIMEOUT.as_secs()
                        ),
                    ));
                }
                warn!(pod = %id.pod_uid, container = %id.container, attempt = id.attempt,
                      "container exited but its shim has not recorded the exit code");
                return Ok(());
            }
            sleep(STOP_POLL).await;
        }
    }
}

/// State of an instance with no `state.json`.
pub(super) async fn observe_unstarted(dir: &Path) -> ContainerRunState {
    if let Ok(Some(err)) = read_json::<StartError>(&dir.join(START_ERROR_FILE)).await {
        return ContainerRunState::Unknown {
            message: format!("the process could not be started: {}", err.message),
            started_at_ms: None,
        };
    }
    let age = tokio::fs::metadata(dir.join(SPEC_FILE))
        .await
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok());
    // A shim holds its lock from its first instant to its exit: a free lock on an instance
    // older than the grace means no shim will ever report this start (edgecore died between
    // writing the spec and spawning the shim, or the shim was killed).
    let shim_alive = shim_lock_held(dir);
    match age {
        Some(age) if shim_alive && age < STALE_CREATED_AFTER => ContainerRunState::Created,
        Some(age) if age < SHIM_LOCK_GRACE => ContainerRunState::Created,
        _ => ContainerRunState::Unknown {
            message: "the shim never reported the process started (edgecore or the shim died \
                      during the start)"
                .to_string(),
            started_at_ms: None,
        },
    }
}

/// The exit record as a state, if there is one (a corrupt one is reported `Unknown`).
pub(super) async fn read_exit_state(dir: &Path) -> Option<ContainerRunState> {
    let path = dir.join(EXIT_FILE);
    match read_json::<ExitRecord>(&path).await {
        Ok(Some(exit)) => Some(ContainerRunState::Exited {
            exit_code: exit.exit_code,
            signal: exit.signal,
            reason: if exit.oom_killed {
                "OOMKilled"
            } else if exit.exit_code == 0 {
                "Completed"
            } else {
                "Error"
            }
            .to_string(),
            started_at_ms: exit.started_at_ms,
            finished_at_ms: exit.finished_at_ms,
        }),
        Ok(None) => None,
        Err(message) => {
            warn!(path = %path.display(), %message, "corrupt exit record");
            Some(ContainerRunState::Unknown {
                message: format!("exit record {} is corrupt: {message}", path.display()),
                started_at_ms: None,
            })
        }
    }
}
