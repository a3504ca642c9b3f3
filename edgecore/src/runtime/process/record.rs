//! The on-disk records of a pod and its instances (`pod.json`, `spec.json`, `state.json`,
//! `exit.json`, `start-error.json`) and how they are read and written: atomically (temporary
//! file, fsync, rename, fsync of the directory), so that a crash never leaves half a record.

use super::cgroup::CgroupSpec;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::io;
use std::path::{Path, PathBuf};

pub(super) const POD_FILE: &str = "pod.json";
pub(super) const SPEC_FILE: &str = "spec.json";
pub(super) const STATE_FILE: &str = "state.json";
pub(super) const EXIT_FILE: &str = "exit.json";
pub(super) const START_ERROR_FILE: &str = "start-error.json";
pub(super) const SHIM_LOG_FILE: &str = "shim.log";

/// `pod.json`.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct PodRecord {
    pub(super) namespace: String,
    pub(super) name: String,
    pub(super) uid: String,
    pub(super) ip: String,
}

/// `spec.json`: everything the shim needs.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct ShimSpec {
    pub(super) pod_uid: String,
    pub(super) container: String,
    pub(super) attempt: u32,
    pub(super) image: String,
    pub(super) program: String,
    pub(super) args: Vec<String>,
    pub(super) env: Vec<(String, String)>,
    pub(super) cwd: PathBuf,
    pub(super) log_path: PathBuf,
    /// [`container_digest`] of the container the instance was started from; absent in the
    /// spec.json of instances started before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) spec_digest: Option<String>,
    /// The instance's cgroups and limits (see `super::cgroup`); absent when the host offers no
    /// cgroup and the container sets no limit, and in older spec.json files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) cgroup: Option<CgroupSpec>,
    /// Host paths the program sees read-only (its `readOnly` mounts, and configMap and secret
    /// volumes), through read-only bind mounts in a mount namespace of its own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) read_only_paths: Vec<PathBuf>,
    /// The pod's hosts file (the host's with the pod's `hostAliases`), which the program sees
    /// read-only at `/etc/hosts` in its mount namespace; absent for a pod without aliases,
    /// which sees the host's file itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) hosts_file: Option<PathBuf>,
    /// The user and groups the program runs as (`runAsUser`, `runAsGroup`,
    /// `supplementalGroups`, `fsGroup`), switched to by the enter step; absent: the shim's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) user: Option<super::security::ProcessUser>,
    /// `allowPrivilegeEscalation: false`: the enter step sets `no_new_privs`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(super) no_new_privs: bool,
}

impl ShimSpec {
    /// Whether the program starts through the enter step (see `super::enter`): it has
    /// cgroups, read-only mounts, a hosts file, a user to switch to or `no_new_privs` to set.
    pub(super) fn enters(&self) -> bool {
        self.cgroup.is_some()
            || !self.read_only_paths.is_empty()
            || self.hosts_file.is_some()
            || self.user.is_some()
            || self.no_new_privs
    }
}

/// Re-exported from [`super::container_digest`], where it moved when a second runtime needed it.
pub use crate::runtime::container_digest;

/// The digest recorded in an instance's spec.json, if any.
pub(super) async fn recorded_digest(dir: &Path) -> Option<String> {
    read_json::<ShimSpec>(&dir.join(SPEC_FILE))
        .await
        .ok()
        .flatten()
        .and_then(|spec| spec.spec_digest)
}

/// `state.json`. Start times (field 22 of `/proc/<pid>/stat`, 0 if unknown) guard against pid
/// reuse after the process is gone.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(super) struct ShimState {
    pub(super) shim_pid: u32,
    pub(super) shim_start_time: u64,
    pub(super) pid: u32,
    pub(super) proc_start_time: u64,
    pub(super) started_at_ms: u64,
}

/// `exit.json`.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct ExitRecord {
    pub(super) exit_code: i32,
    pub(super) signal: Option<i32>,
    /// The kernel's OOM killer killed a process of the instance's cgroup (reported as the
    /// `OOMKilled` reason).
    #[serde(default)]
    pub(super) oom_killed: bool,
    pub(super) started_at_ms: u64,
    pub(super) finished_at_ms: u64,
}

/// `start-error.json`.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct StartError {
    pub(super) message: String,
    pub(super) not_found: bool,
}

/// Reads a JSON record: `Ok(None)` if the file does not exist, `Err` naming the problem if it
/// cannot be read or parsed.
pub(super) async fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, String> {
    match tokio::fs::read(path).await {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Writes `value` as JSON to `path` atomically and durably (see `skerry_wire::durable`), into
/// a directory that must exist: a pod directory wiped under a running pod is not brought back
/// by a late record (the runtime makes a fresh sandbox for it instead).
pub(super) fn write_json_atomic<T: Serialize>(path: &Path, value: &T, mode: u32) -> io::Result<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    wire::durable::write_atomic_existing_dir(path, &bytes, mode)
        .map_err(|e| io::Error::new(e.source.kind(), e))
}

pub(super) async fn write_json_atomic_async<T: Serialize>(
    path: PathBuf,
    value: &T,
    mode: u32,
) -> Result<(), String> {
    let bytes = serde_json::to_value(value).map_err(|e| e.to_string())?;
    tokio::task::spawn_blocking(move || {
        write_json_atomic(&path, &bytes, mode)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    })
    .await
    .map_err(|e| format!("writer task failed: {e}"))?
}
