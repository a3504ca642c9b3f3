//! Withdrawing API credentials: `cloudcore credential revoke --user NAME` makes every client
//! certificate and bearer token of that user issued up to now stop working, within a second,
//! without a restart.
//!
//! Why per user and by time, not a certificate revocation list: kubectl users hold both
//! certificates and tokens, and an admin who learns a laptop was stolen wants "nothing of
//! alice's issued so far works", then issues alice a new kubeconfig. A cutoff per user says
//! exactly that, needs no serial-number bookkeeping, and checks in memory. The cutoffs live in
//! `pki/revoked-users/<user>` (one file each, written by the CLI in another process); the
//! server re-reads that small directory at most once a second, on the request path, so a
//! revocation is in force within a second of the command returning.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How stale the in-memory cutoffs may be.
pub const REFRESH: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Cache {
    cutoffs: HashMap<String, u64>,
    read_at: Option<Instant>,
}

/// The revocation cutoffs of API users.
#[derive(Debug)]
pub struct Revocations {
    dir: PathBuf,
    cache: Mutex<Cache>,
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Whether `user` is a name that can be a file name here (what certificates and tokens carry is
/// checked at issue; this keeps a hostile CN out of the path).
fn safe_name(user: &str) -> bool {
    !user.is_empty()
        && user.len() <= 253
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@' | b':'))
        && !user.starts_with('.')
}

impl Revocations {
    /// The cutoffs kept in `dir`.
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            cache: Mutex::new(Cache {
                cutoffs: HashMap::new(),
                read_at: None,
            }),
        }
    }

    /// Revokes every credential of `user` issued up to now; returns the cutoff. Returns once
    /// the clock has passed the cutoff's second, so a credential issued right after is not
    /// caught by it.
    pub fn revoke(&self, user: &str) -> std::io::Result<u64> {
        if !safe_name(user) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{user:?} is not a user name credentials are issued to"),
            ));
        }
        let cutoff = now_unix();
        wire::durable::write_atomic(&self.dir.join(user), cutoff.to_string().as_bytes(), 0o600)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        while now_unix() <= cutoff {
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(cutoff)
    }

    fn read_all(&self) -> HashMap<String, u64> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return HashMap::new();
        };
        entries
            .flatten()
            .filter_map(|e| {
                let user = e.file_name().to_str()?.to_string();
                let text = std::fs::read_to_string(e.path()).ok()?;
                Some((user, text.trim().parse().ok()?))
            })
            .collect()
    }

    /// Whether a credential of `user` issued at `issued_at_unix` has been revoked.
    pub fn is_revoked(&self, user: &str, issued_at_unix: u64) -> bool {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.read_at.is_none_or(|t| t.elapsed() >= REFRESH) {
            cache.cutoffs = self.read_all();
            cache.read_at = Some(Instant::now());
        }
        cache
            .cutoffs
            .get(user)
            .is_some_and(|cutoff| issued_at_unix <= *cutoff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revocation_catches_what_was_issued_before_it_and_nothing_after() {
        let dir = tempfile::tempdir().unwrap();
        let revocations = Revocations::new(dir.path().join("revoked-users"));
        std::fs::create_dir_all(dir.path().join("revoked-users")).unwrap();
        let before = now_unix();
        assert!(!revocations.is_revoked("alice", before));
        // Another process (the CLI) revokes; this one sees it within REFRESH.
        let other = Revocations::new(dir.path().join("revoked-users"));
        let cutoff = other.revoke("alice").unwrap();
        std::thread::sleep(REFRESH);
        assert!(revocations.is_revoked("alice", before));
        assert!(revocations.is_revoked("alice", cutoff));
        assert!(!revocations.is_revoked("alice", now_unix()), "issued after");
        assert!(!revocations.is_revoked("bob", before));
        assert!(other.revoke("../etc/passwd").is_err());
    }
}
