//! Automatic reload of the encryption provider config, as kube-apiserver's
//! `--encryption-provider-config-automatic-reload`: the file is read every
//! [`POLL_INTERVAL`], and a new content that parses and passes the permission check is put in
//! force. A bad new file is logged once and counted; the last good configuration stays, so a
//! typo during a rotation never turns encryption off or makes Secrets unreadable.
//!
//! Content, not mtime, decides: an editor that writes in place within one second, or a copy
//! that keeps the old mtime, is still seen.

use super::{Encryption, EncryptionConfig};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How often the file is read.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Reloads by outcome (`status` = `success` or `failure`), as kube-apiserver's
/// `apiserver_encryption_config_controller_automatic_reloads_total`.
pub const RELOADS_METRIC: &str = "skerry_encryption_config_automatic_reloads_total";

/// The digest of a file's bytes, to tell a changed file from the one in force.
pub fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// What one look at the file found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Poll {
    /// The content in force, or one already refused.
    Unchanged,
    /// A new valid configuration, now in force.
    Reloaded,
    /// A new content that was refused (why, without key material); the last good one stays.
    Refused(String),
}

/// The state of the reload loop: the file, the transformer it feeds, and what it last saw.
pub struct Watcher {
    path: PathBuf,
    encryption: Arc<Encryption>,
    applied: [u8; 32],
    rejected: Option<[u8; 32]>,
}

impl Watcher {
    /// A watcher of `path`; `applied` is the digest of the content in force at start.
    pub fn new(path: PathBuf, encryption: Arc<Encryption>, applied: [u8; 32]) -> Self {
        Self {
            path,
            encryption,
            applied,
            rejected: None,
        }
    }

    /// Reads the file once and puts a new valid content in force. A missing or unreadable
    /// file (an editor's rename in progress, a chmod mistake) is refused like a bad one,
    /// reported once per distinct problem.
    pub fn poll(&mut self) -> Poll {
        let (sum, outcome) = match super::config::read_private(&self.path) {
            Ok(text) => {
                let sum = digest(text.as_bytes());
                if sum == self.applied || Some(sum) == self.rejected {
                    return Poll::Unchanged;
                }
                (
                    sum,
                    EncryptionConfig::parse(&text).map_err(|e| e.to_string()),
                )
            }
            Err(e) => {
                let msg = e.to_string();
                let sum = digest(msg.as_bytes());
                if Some(sum) == self.rejected {
                    return Poll::Unchanged;
                }
                (sum, Err(msg))
            }
        };
        match outcome {
            Ok(cfg) => {
                self.encryption.reload(&cfg);
                self.applied = sum;
                self.rejected = None;
                metrics::counter!(RELOADS_METRIC, "status" => "success").increment(1);
                tracing::info!(
                    path = %self.path.display(),
                    write_key = cfg.write_key().unwrap_or("(identity: stored unencrypted)"),
                    keys = ?cfg.key_names(),
                    "encryption provider config reloaded"
                );
                Poll::Reloaded
            }
            Err(error) => {
                self.rejected = Some(sum);
                metrics::counter!(RELOADS_METRIC, "status" => "failure").increment(1);
                tracing::error!(
                    path = %self.path.display(),
                    %error,
                    "new encryption provider config refused; the previous one stays in force"
                );
                Poll::Refused(error)
            }
        }
    }
}

/// Polls the file every [`POLL_INTERVAL`] forever (run supervised).
pub async fn watch(path: PathBuf, encryption: Arc<Encryption>, applied: [u8; 32]) {
    let mut watcher = Some(Watcher::new(path, encryption, applied));
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(mut w) = watcher.take() else { return };
        // The read is a blocking file read: off the runtime's workers.
        match tokio::task::spawn_blocking(move || {
            w.poll();
            w
        })
        .await
        {
            Ok(w) => watcher = Some(w),
            Err(e) => {
                tracing::error!(error = %e, "the encryption config watcher failed");
                return;
            }
        }
    }
}
