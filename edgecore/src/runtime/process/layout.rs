//! Where things are under the runtime's root: container ids (`<pod-uid>/<name>/<attempt>`),
//! which names are safe as path components, and the directory helpers the runtime uses to list
//! and remove pods and instances without blocking the async threads.

use super::internal;
use crate::runtime::RuntimeError;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::time::sleep;
use tracing::{debug, warn};

/// A parsed container id, `<pod-uid>/<container-name>/<attempt>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct InstanceId {
    pub(super) pod_uid: String,
    pub(super) container: String,
    pub(super) attempt: u32,
}

impl InstanceId {
    pub(super) fn parse(id: &str) -> Option<Self> {
        let mut parts = id.split('/');
        let (uid, name, attempt) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || !is_safe_component(uid) || !is_safe_component(name) {
            return None;
        }
        Some(Self {
            pod_uid: uid.to_string(),
            container: name.to_string(),
            attempt: attempt.parse().ok()?,
        })
    }
}

impl std::fmt::Display for InstanceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.pod_uid, self.container, self.attempt)
    }
}

/// Whether `s` can be used as one path component without escaping its parent.
pub(super) fn is_safe_component(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.contains('/') && !s.contains('\0')
}

pub(super) async fn remove_dir_all_idempotent(dir: &Path) -> Result<(), String> {
    // A shim that is just exiting may still touch its directory: retry a few times.
    let mut tries = 0;
    loop {
        match tokio::fs::remove_dir_all(dir).await {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if tries < 5 => {
                debug!(path = %dir.display(), error = %e, "retrying removal");
                tries += 1;
                sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(format!("cannot remove {}: {e}", dir.display())),
        }
    }
}

/// Whether `path` exists (without blocking the async thread).
pub(super) async fn exists(path: &Path) -> bool {
    tokio::fs::try_exists(path).await.unwrap_or(false)
}

/// Whether `path` is a directory (without blocking the async thread).
pub(super) async fn is_dir(path: &Path) -> bool {
    tokio::fs::metadata(path)
        .await
        .map(|m| m.is_dir())
        .unwrap_or(false)
}

/// Subdirectories of `dir` with their names (none if `dir` does not exist).
pub(super) async fn list_dirs(dir: &Path) -> Result<Vec<(String, PathBuf)>, RuntimeError> {
    let list_err = |e: io::Error| internal("list", format!("cannot list {}: {e}", dir.display()));
    let mut entries = match tokio::fs::read_dir(dir).await {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(list_err(e)),
    };
    let mut out = Vec::new();
    while let Some(entry) = entries.next_entry().await.map_err(list_err)? {
        let is_dir = entry.file_type().await.map(|t| t.is_dir()).unwrap_or(false);
        if !is_dir {
            continue;
        }
        match entry.file_name().into_string() {
            Ok(name) => out.push((name, entry.path())),
            Err(name) => {
                warn!(path = %dir.join(name).display(), "non-UTF-8 directory name; skipped")
            }
        }
    }
    out.sort();
    Ok(out)
}
