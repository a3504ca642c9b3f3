//! The hub's stateless-reset secret, kept across restarts.
//!
//! When cloudcore restarts, every edge still holds a QUIC connection to the hub that died. QUIC
//! lets a server that lost a connection's state end it at once with a *stateless reset*
//! (RFC 9000 §10.3): a packet carrying a token that the server derived from the connection ID
//! with a secret key and gave the client during the handshake. With a fresh random key at every
//! start (quinn's default) the restarted hub cannot produce the tokens of the old connections,
//! so the edges only notice the hub is gone when their idle timeout runs out (20 s by default),
//! and resync that much later. With the key kept in the data dir, the first packet an edge sends
//! to the restarted hub is answered by a reset it accepts, and it reconnects at once.
//!
//! Two things derive from the one secret and must survive the restart:
//!
//! - the HMAC key of the reset tokens ([`quinn::EndpointConfig::new`]);
//! - the key of the connection-ID generator. quinn's endpoint drops a packet for an unknown
//!   connection unless its generator recognises the ID as one it issued, before it considers a
//!   reset; its default generator (`HashedConnectionIdGenerator`) signs IDs with a random
//!   per-process key, which would make the restarted hub drop the old connections' packets
//!   silently. The same generator is used here, keyed from the secret instead.
//!
//! The secret is 64 random bytes in `<data-dir>/pki/hub-reset.key` (mode 0600, written
//! atomically like the rest of the PKI). Whoever reads it can forge resets of live connections,
//! so it is private like the CA key. Deleting it is harmless: a new one is made, and the edges
//! fall back to their idle timeout once.

use crate::pki::{write_atomic, PkiError};
use quinn_proto::HashedConnectionIdGenerator;
use ring::hmac;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// File name of the secret, under the PKI directory.
pub const RESET_KEY_FILE: &str = "hub-reset.key";
/// Length of the secret.
const SECRET_LEN: usize = 64;

/// The hub's persistent stateless-reset secret.
pub struct ResetSecret {
    bytes: [u8; SECRET_LEN],
}

impl ResetSecret {
    /// Reads the secret from `pki_dir`, or makes and stores a new one on first use.
    pub fn load_or_create(pki_dir: &Path) -> Result<Self, PkiError> {
        let path = pki_dir.join(RESET_KEY_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let bytes: [u8; SECRET_LEN] = bytes.try_into().map_err(|b: Vec<u8>| {
                    PkiError::Invalid(format!(
                        "{} holds {} bytes, not the {SECRET_LEN} of a stateless-reset key; \
                         delete it and restart cloudcore to make a new one (edges then notice \
                         this restart only after their idle timeout)",
                        path.display(),
                        b.len()
                    ))
                })?;
                warn_if_readable_by_others(&path);
                Ok(Self { bytes })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let bytes: [u8; SECRET_LEN] = rand::random();
                write_atomic(&path, &bytes, 0o600)?;
                Ok(Self { bytes })
            }
            Err(source) => Err(PkiError::Io {
                action: "read",
                path,
                source,
            }),
        }
    }

    /// The endpoint configuration: reset tokens and connection IDs keyed by the secret.
    pub fn endpoint_config(&self) -> quinn::EndpointConfig {
        let reset_key = hmac::Key::new(hmac::HMAC_SHA256, &self.bytes);
        let mut config = quinn::EndpointConfig::new(Arc::new(reset_key));
        let cid_key = self.cid_key();
        config.cid_generator(move || Box::new(HashedConnectionIdGenerator::from_key(cid_key)));
        config
    }

    /// The connection-ID generator's key: derived (not taken) from the secret, so that it
    /// reveals nothing of the reset key.
    fn cid_key(&self) -> u64 {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &self.bytes);
        let tag = hmac::sign(&key, b"skerry hub connection ids");
        let mut first = [0u8; 8];
        first.copy_from_slice(&tag.as_ref()[..8]);
        u64::from_le_bytes(first)
    }
}

/// Warns when the secret file can be read by anyone but its owner (restored from a backup
/// with other modes, say): a reader could forge resets of live edge connections.
fn warn_if_readable_by_others(path: &PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(path = %path.display(), mode = format!("{mode:o}"),
                "the hub's stateless-reset key is readable by others; chmod 600 it");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_secret_is_made_once_private_and_read_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let first = ResetSecret::load_or_create(dir.path()).unwrap();
        let path = dir.path().join(RESET_KEY_FILE);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let second = ResetSecret::load_or_create(dir.path()).unwrap();
        assert_eq!(first.bytes, second.bytes);
        // Another data dir, another secret.
        let other = tempfile::tempdir().unwrap();
        assert_ne!(
            ResetSecret::load_or_create(other.path()).unwrap().bytes,
            first.bytes
        );
    }

    #[test]
    fn a_truncated_secret_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(RESET_KEY_FILE), b"short").unwrap();
        let err = ResetSecret::load_or_create(dir.path())
            .err()
            .expect("refused")
            .to_string();
        assert!(
            err.contains("5 bytes") && err.contains("delete it"),
            "{err}"
        );
    }

    fn generator(secret: &ResetSecret) -> HashedConnectionIdGenerator {
        HashedConnectionIdGenerator::from_key(secret.cid_key())
    }

    #[test]
    fn ids_issued_before_a_restart_are_recognised_after_it_and_others_are_not() {
        use quinn_proto::ConnectionIdGenerator;
        let dir = tempfile::tempdir().unwrap();
        let mut issuing = generator(&ResetSecret::load_or_create(dir.path()).unwrap());
        let ids: Vec<_> = (0..100).map(|_| issuing.generate_cid()).collect();
        // "After the restart": a generator made anew from the same file.
        let after = generator(&ResetSecret::load_or_create(dir.path()).unwrap());
        for id in &ids {
            assert!(after.validate(id).is_ok());
        }
        // Another hub's IDs are not ours.
        let other_dir = tempfile::tempdir().unwrap();
        let mut other = generator(&ResetSecret::load_or_create(other_dir.path()).unwrap());
        let foreign = (0..100)
            .filter(|_| after.validate(&other.generate_cid()).is_ok())
            .count();
        // A 40-bit signature: a collision among 100 tries is all but impossible.
        assert_eq!(foreign, 0);
    }
}
