//! The node's identity on disk and the TLS configurations built from it.
//!
//! `edgecore join` writes `node.key` (0600, never leaves the machine), `node.crt` and `ca.crt`
//! under `<data-dir>/pki/`. Before the node has a CA to trust, the join connection pins the CA
//! by its SHA-256 (the `--ca-hash` that `cloudcore token create` prints), like kubeadm's discovery
//! hash: a man in the middle cannot present another CA's chain.

use crate::server_trust::{PolicyVerifier, TrustPolicy};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Errors loading or using the identity.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The files are missing: the node has not joined.
    #[error("no node identity in {0}; run `edgecore join --server HOST:PORT --token T --ca-hash sha256:...` first")]
    NotJoined(PathBuf),
    /// A file could not be read or written.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What.
        action: &'static str,
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// An identity file is malformed.
    #[error("invalid {what} in {path}: {reason}; join again to replace it")]
    Pem {
        /// What was expected.
        what: &'static str,
        /// File.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// TLS could not be configured.
    #[error("TLS configuration error: {0}")]
    Tls(String),
}

/// Paths of the identity files under a data dir.
#[derive(Debug, Clone)]
pub struct IdentityPaths {
    /// Directory.
    pub dir: PathBuf,
}

impl IdentityPaths {
    /// Identity files of `data_dir`.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            dir: data_dir.join("pki"),
        }
    }
    /// Node private key.
    pub fn key(&self) -> PathBuf {
        self.dir.join("node.key")
    }
    /// Node certificate.
    pub fn cert(&self) -> PathBuf {
        self.dir.join("node.crt")
    }
    /// Cluster CA.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }
    /// Key that authenticates this node's status reports.
    pub fn report_key(&self) -> PathBuf {
        self.dir.join("report.key")
    }
}

/// Reads the node's report key written by the join.
pub fn read_report_key(paths: &IdentityPaths) -> Result<Vec<u8>, IdentityError> {
    let path = paths.report_key();
    let key = std::fs::read(&path).map_err(|_| IdentityError::NotJoined(path.clone()))?;
    if key.len() != protocol::status::REPORT_KEY_LEN {
        return Err(IdentityError::Pem {
            what: "report key",
            path,
            reason: format!(
                "{} bytes instead of {}",
                key.len(),
                protocol::status::REPORT_KEY_LEN
            ),
        });
    }
    Ok(key)
}

/// Writes a file atomically and durably (see `skerry_wire::durable`).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), IdentityError> {
    wire::durable::write_atomic(path, bytes, mode).map_err(|e| IdentityError::Io {
        action: e.action,
        path: e.path,
        source: e.source,
    })
}

pub(crate) fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    use rustls::pki_types::pem::PemObject;
    if !path.exists() {
        return Err(IdentityError::NotJoined(path.to_path_buf()));
    }
    CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| IdentityError::Pem {
            what: "certificate",
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// TLS for the sync link: trust only the cluster CA, present the node certificate.
pub fn sync_client_tls(paths: &IdentityPaths) -> Result<rustls::ClientConfig, IdentityError> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in read_certs(&paths.ca())? {
        roots
            .add(c)
            .map_err(|e| IdentityError::Tls(e.to_string()))?;
    }
    let chain = read_certs(&paths.cert())?;
    let key = PrivateKeyDer::from_pem_file(paths.key()).map_err(|e| IdentityError::Pem {
        what: "private key",
        path: paths.key(),
        reason: e.to_string(),
    })?;
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| IdentityError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| IdentityError::Tls(e.to_string()))?;
    cfg.alpn_protocols = vec![protocol::ALPN_SYNC.to_vec()];
    Ok(cfg)
}

/// TLS for the MQTT status channel: the same trust and client certificate as the sync link
/// (the broker takes the node's identity from it; there is no password), without the sync ALPN.
pub fn mqtt_client_tls(paths: &IdentityPaths) -> Result<rustls::ClientConfig, IdentityError> {
    let mut cfg = sync_client_tls(paths)?;
    cfg.alpn_protocols.clear();
    Ok(cfg)
}

/// TLS for the join exchange: no client certificate; the server chain must contain a CA whose
/// SHA-256 equals `ca_hash` (`sha256:<hex>`), and the server certificate must be valid under it.
pub fn join_client_tls(ca_hash: &str) -> Result<rustls::ClientConfig, IdentityError> {
    let hex_part = ca_hash.strip_prefix("sha256:").ok_or_else(|| {
        IdentityError::Tls(format!("--ca-hash {ca_hash:?} must start with sha256:"))
    })?;
    let pin = hex::decode(hex_part).ok().filter(|p| p.len() == 32).ok_or_else(|| {
        IdentityError::Tls(format!("--ca-hash {ca_hash:?} is not sha256: followed by 64 hex digits; copy it as `cloudcore token create` printed it"))
    })?;
    let verifier = Arc::new(PolicyVerifier::new(TrustPolicy::PinnedCa(pin), provider()));
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| IdentityError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![protocol::ALPN_JOIN.to_vec()];
    Ok(cfg)
}
