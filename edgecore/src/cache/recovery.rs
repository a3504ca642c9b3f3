//! Telling a lost cache from an empty one (issue #11).
//!
//! An empty cache means "this node runs nothing": at start-up edgecore removes every sandbox
//! that belongs to no cached pod. A cache that was truncated, emptied or overwritten must not
//! mean the same, or a damaged disk stops every pod of an offline node for good. sled alone
//! cannot tell: it recreates a missing or emptied database silently, and recovers a truncated
//! log to its last valid record, which may be the empty one. So:
//!
//! - A **marker** file beside the cache (`<data-dir>/cache.marker`, outside sled, written
//!   atomically) records that a cache was created here, with its random id; the same id lives
//!   in the cache's `meta` tree. A marker whose cache does not hold its id (an empty, recreated
//!   or replaced database) means the cache was lost.
//! - The marker also records the acked revision after every applied batch: a cache found at
//!   an older revision lost its newest writes (sled recovers a truncated log to its last valid
//!   record, a consistent but stale state).
//! - sled's own errors when opening or reading it (its log records carry CRCs) mean it is
//!   damaged, except the errors of the environment (locked by another edgecore, permissions,
//!   disk full), which are reported as such and change nothing.
//! - Entries that cannot be decoded are skipped, and make the desired state unknown too (the
//!   pod of a corrupt entry may be running).
//!
//! A cache found unreadable is moved aside (`cache.corrupt-<unix time>`, kept for diagnosis)
//! and replaced by a fresh one flagged *desired state unknown*; the flag is persistent, so an
//! edgecore restarted before the cloud answered still knows. See `docs/decisions.md`.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// How many moved-aside caches are kept (the oldest go first): enough to diagnose repeated
/// damage, bounded so that a disk that keeps failing does not fill up with copies.
const KEEP_CORRUPT: usize = 3;

/// The marker written beside the cache directory `dir`.
pub(super) fn marker_path(dir: &Path) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(".marker");
    dir.with_file_name(name)
}

/// What the marker records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Marker {
    /// Random id of the cache, also stored in its `meta` tree.
    pub cache_id: String,
    /// Layout version when it was created.
    pub schema: u32,
    /// Creation time, Unix ms.
    pub created_ms: u64,
    /// The acked revision the cache had made durable when the marker was last written (after
    /// every applied batch): a cache found at an older one lost writes, as sled recovers a
    /// truncated log to a prefix of it that looks valid.
    #[serde(default)]
    pub acked_revision: u64,
}

/// The marker as found.
#[derive(Debug)]
pub(super) enum Found {
    /// No marker: a new node, or a cache written by an edgecore from before markers.
    Absent,
    /// A marker.
    Present(Marker),
    /// A marker that cannot be read: a cache was created here, which one is unknown.
    Unreadable(String),
}

pub(super) fn read_marker(path: &Path) -> Found {
    match std::fs::read(path) {
        Ok(bytes) => match serde_json::from_slice::<Marker>(&bytes) {
            Ok(m) => Found::Present(m),
            Err(e) => Found::Unreadable(format!("{}: {e}", path.display())),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Found::Absent,
        Err(e) => Found::Unreadable(format!("{}: {e}", path.display())),
    }
}

pub(super) fn write_marker(path: &Path, marker: &Marker) -> Result<(), String> {
    let json = serde_json::to_vec_pretty(marker).map_err(|e| e.to_string())?;
    wire::durable::write_atomic(path, &json, 0o600).map_err(|e| e.to_string())
}

/// A new random cache id.
pub(super) fn new_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

pub(super) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Why sled could not open or read the cache.
#[derive(Debug)]
pub(super) enum SledFault {
    /// The environment, not the data: another process holds the lock, permissions, a full or
    /// read-only disk. Nothing is moved; the operator fixes it.
    Environment(String),
    /// The data is damaged.
    Damaged(String),
}

/// Sorts a sled error into the environment's fault or the data's.
pub(super) fn classify(e: &sled::Error) -> SledFault {
    if let sled::Error::Io(io) = e {
        let text = io.to_string();
        if text.contains("could not acquire lock") {
            return SledFault::Environment(format!(
                "{text}; is another edgecore running on this data dir?"
            ));
        }
        let environment = matches!(io.kind(), std::io::ErrorKind::PermissionDenied)
            || matches!(
                io.raw_os_error(),
                Some(libc::ENOSPC | libc::EROFS | libc::EDQUOT | libc::EACCES | libc::EPERM)
            );
        if environment {
            return SledFault::Environment(format!(
                "{text}; check disk space and permissions of the data dir"
            ));
        }
    }
    SledFault::Damaged(e.to_string())
}

/// Moves the damaged cache `dir` aside as `cache.corrupt-<unix secs>` (kept for diagnosis;
/// only the newest [`KEEP_CORRUPT`] are kept) and returns where it went. A missing `dir` (it
/// was deleted) moves nothing.
pub(super) fn move_aside(dir: &Path) -> Result<Option<PathBuf>, String> {
    if !dir.exists() {
        return Ok(None);
    }
    let name = dir.file_name().unwrap_or_default().to_string_lossy();
    let prefix = format!("{name}.corrupt-");
    let secs = now_ms() / 1000;
    let mut target = dir.with_file_name(format!("{prefix}{secs}"));
    let mut n = 1;
    while target.exists() {
        target = dir.with_file_name(format!("{prefix}{secs}-{n}"));
        n += 1;
    }
    std::fs::rename(dir, &target)
        .map_err(|e| format!("cannot move {} aside: {e}", dir.display()))?;
    if let Some(parent) = dir.parent() {
        // The rename is durable before a fresh cache takes the name.
        if let Ok(d) = std::fs::File::open(parent) {
            let _ = d.sync_all();
        }
        prune(parent, &prefix);
    }
    Ok(Some(target))
}

/// Removes all but the newest [`KEEP_CORRUPT`] moved-aside caches.
fn prune(parent: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    found.sort();
    let excess = found.len().saturating_sub(KEEP_CORRUPT);
    for (_, path) in found.into_iter().take(excess) {
        if let Err(e) = std::fs::remove_dir_all(&path) {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove an old corrupt cache");
        }
    }
}
