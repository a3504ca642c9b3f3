//! Cloudcore's PKI: the cluster CA, the hub's serving certificate, bootstrap tokens and node
//! certificates.
//!
//! Everything lives as files under `<data-dir>/pki/`, not in the object store, so that
//! `cloudcore token create` works while the server runs (the store's database is locked by the
//! server) and so that an operator can back up or inspect the CA with ordinary tools. Every file
//! is written atomically (temp file, fsync, rename, fsync of the directory).
//!
//! Tokens have the kubeadm shape `<id>.<secret>`: the server keeps only the SHA-256 of the
//! secret. A token is consumed by renaming its file into `used/`, which the filesystem makes
//! atomic: two joins racing on one token cannot both win.
//!
//! A node's identity is the common name of the certificate the CA signed for it; the sync link
//! takes it from the verified client certificate and never from anything the node says.

pub mod mqtt;

pub use mqtt::{ExternalBrokerFiles, NodeCredentials};

use protocol::join::JoinRefusal;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// MQTT identity (certificate common name, and so the user name on a broker that takes the
/// identity from the certificate) of cloudcore's status ingest.
pub const INGEST_MQTT_USER: &str = "skerry-cloudcore";

/// Errors of PKI operations.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Reading or writing a PKI file failed.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was attempted.
        action: &'static str,
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A certificate or key could not be generated or parsed.
    #[error("certificate error: {0}; if the files under pki/ were edited by hand, restore them from backup")]
    Cert(String),
    /// The TLS configuration could not be built.
    #[error("TLS configuration error: {0}")]
    Tls(String),
    /// A request for a credential that cannot be issued.
    #[error("{0}")]
    Invalid(String),
}

fn cert_err(e: impl std::fmt::Display) -> PkiError {
    PkiError::Cert(e.to_string())
}

/// Writes a file atomically and durably (see `skerry_wire::durable`).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    wire::durable::write_atomic(path, bytes, mode).map_err(|e| PkiError::Io {
        action: e.action,
        path: e.path,
        source: e.source,
    })
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// `sha256:<hex>` of a DER certificate: the pin an edge checks the CA against.
pub fn cert_hash(der: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(der)))
}

/// Names no node may take: the ingest's MQTT login (a node of that name could log in to the
/// broker as cloudcore's own ingest) and cloudcore's.
pub const RESERVED_NODE_NAMES: [&str; 2] = [INGEST_MQTT_USER, "cloudcore"];

/// Whether `name` is a valid node name: a DNS-1123 subdomain of at most 63 characters (it is
/// used in MQTT topics and file names, so no `/`, `+`, `#` can slip through), and not one of
/// the [`RESERVED_NODE_NAMES`].
pub fn validate_node_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 63 {
        return Err("must be 1 to 63 characters".into());
    }
    if RESERVED_NODE_NAMES.contains(&name) {
        return Err(format!(
            "{name:?} is reserved for cloudcore itself; choose another name"
        ));
    }
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    let ends_ok = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !ok_chars || !ends_ok(name.as_bytes()[0]) || !ends_ok(name.as_bytes()[name.len() - 1]) {
        return Err("must consist of lower case alphanumeric characters, '-' or '.', and start and end with an alphanumeric character".into());
    }
    Ok(())
}

#[derive(Serialize, Deserialize)]
struct TokenRecord {
    secret_sha256: String,
    expires_at_unix: u64,
    created_at_unix: u64,
    /// The node this token admits, if it was made for one (`token create --node`).
    #[serde(default)]
    node: Option<String>,
}

/// The loaded PKI.
pub struct Pki {
    dir: PathBuf,
    ca_cert_der: CertificateDer<'static>,
    ca_cert_pem: String,
    ca_key: KeyPair,
    server_cert_der: CertificateDer<'static>,
    server_key_der: Vec<u8>,
    /// Revoked node names, mirrored from `revoked/` so that the per-report and per-login checks
    /// cost no file system call; [`Pki::refresh_revocations`] picks up `cloudcore node revoke`
    /// run from another process.
    revoked: std::sync::RwLock<std::collections::HashSet<String>>,
    /// API bearer tokens seen so far: SHA-256 of the token → user and expiry.
    api_tokens: std::sync::RwLock<std::collections::HashMap<String, (UserInfo, Option<u64>)>>,
    /// Per-user revocation cutoffs of API credentials (`cloudcore credential revoke`).
    revocations: crate::credentials::Revocations,
    /// Report keys and join epochs of the nodes, read once from `nodes/` and replaced in
    /// memory by a re-join, so that the old key stops verifying at once (see [`mqtt`]).
    node_credentials: std::sync::RwLock<std::collections::HashMap<String, NodeCredentials>>,
    /// Bumped whenever a node's credentials change (join, revocation), for the holders of
    /// live sessions (the embedded broker) to re-check theirs.
    credential_changes: tokio::sync::watch::Sender<u64>,
}

impl Pki {
    /// Loads the PKI from `<data_dir>/pki`, creating the CA and the server certificate on first
    /// use. `server_names` (DNS names or IPs) are put in the server certificate; when they are not
    /// all covered by an existing certificate, it is reissued from the same CA.
    pub fn load_or_create(data_dir: &Path, server_names: &[String]) -> Result<Self, PkiError> {
        let dir = data_dir.join("pki");
        let ca_crt = dir.join("ca.crt");
        let ca_key_path = dir.join("ca.key");
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| PkiError::Io {
                action: "read",
                path: p.to_path_buf(),
                source,
            })
        };
        if !ca_crt.exists() {
            let key = KeyPair::generate().map_err(cert_err)?;
            let mut params = CertificateParams::new(Vec::<String>::new()).map_err(cert_err)?;
            params
                .distinguished_name
                .push(DnType::CommonName, "skerry-ca");
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            params.not_before = rcgen::date_time_ymd(2024, 1, 1);
            params.not_after = rcgen::date_time_ymd(2124, 1, 1);
            let cert = params.self_signed(&key).map_err(cert_err)?;
            write_atomic(&ca_key_path, key.serialize_pem().as_bytes(), 0o600)?;
            write_atomic(&ca_crt, cert.pem().as_bytes(), 0o644)?;
        }
        let ca_cert_pem = read(&ca_crt)?;
        let ca_key = KeyPair::from_pem(&read(&ca_key_path)?).map_err(cert_err)?;
        let ca_cert_der = pem_to_der(&ca_cert_pem)?;

        let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
        if let Some(h) = hostname() {
            names.push(h);
        }
        for n in server_names {
            if !names.contains(n) {
                names.push(n.clone());
            }
        }
        let srv_crt = dir.join("server.crt");
        let srv_key = dir.join("server.key");
        let names_file = dir.join("server.names");
        let current_names = std::fs::read_to_string(&names_file).unwrap_or_default();
        let covered = names.iter().all(|n| current_names.lines().any(|l| l == n));
        if !srv_crt.exists() || !covered {
            let (cert, key) = sign_server_cert(&ca_cert_der, &ca_key, &names, "skerry-cloudcore")?;
            write_atomic(&srv_key, key.as_bytes(), 0o600)?;
            write_atomic(&srv_crt, cert.as_bytes(), 0o644)?;
            write_atomic(&names_file, names.join("\n").as_bytes(), 0o644)?;
        }
        let server_cert_der = pem_to_der(&read(&srv_crt)?)?;
        let server_key_der = KeyPair::from_pem(&read(&srv_key)?)
            .map_err(cert_err)?
            .serialize_der();
        for sub in ["tokens", "tokens/used", "nodes", "revoked"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(|source| PkiError::Io {
                action: "create",
                path: dir.join(sub),
                source,
            })?;
        }
        let revoked =
            std::sync::RwLock::new(read_revoked(&dir.join("revoked")).unwrap_or_default());
        Ok(Self {
            ca_cert_der,
            ca_cert_pem,
            ca_key,
            server_cert_der,
            server_key_der,
            revoked,
            api_tokens: Default::default(),
            revocations: crate::credentials::Revocations::new(dir.join("revoked-users")),
            node_credentials: Default::default(),
            credential_changes: tokio::sync::watch::Sender::new(0),
            dir,
        })
    }

    /// Re-reads the revocation list; returns the nodes revoked since the last look.
    pub fn refresh_revocations(&self) -> Vec<String> {
        let Some(now) = read_revoked(&self.dir.join("revoked")) else {
            return Vec::new();
        };
        let mut set = self.revoked.write().unwrap_or_else(|e| e.into_inner());
        let added: Vec<String> = now.difference(&set).cloned().collect();
        *set = now;
        drop(set);
        if !added.is_empty() {
            self.credentials_changed();
        }
        added
    }

    /// The CA certificate in PEM, as given to joining nodes and written into kubeconfigs.
    pub fn ca_pem(&self) -> &str {
        &self.ca_cert_pem
    }

    /// The PKI directory (`<data-dir>/pki`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of the CA certificate file.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// The pin that `edgecore join --ca-hash` expects.
    pub fn ca_hash(&self) -> String {
        cert_hash(&self.ca_cert_der)
    }

    /// Creates a single-use bootstrap token valid for `ttl`; returns `<id>.<secret>`.
    ///
    /// A token made `for_node` admits only that node, and is the only kind that admits a node
    /// that is already registered (a re-join after reinstalling the edge) or revoked (its
    /// re-admission): an ordinary token cannot take over an existing node's name.
    pub fn create_token(&self, ttl: Duration, for_node: Option<&str>) -> Result<String, PkiError> {
        if let Some(n) = for_node {
            validate_node_name(n)
                .map_err(|r| PkiError::Cert(format!("invalid node name {n:?}: {r}")))?;
        }
        use rand::Rng;
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let mut rng = rand::rng();
        let mut pick = |n: usize| -> String {
            (0..n)
                .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
                .collect()
        };
        let id = pick(6);
        let secret = pick(16);
        let record = TokenRecord {
            secret_sha256: hex::encode(Sha256::digest(secret.as_bytes())),
            expires_at_unix: now_unix() + ttl.as_secs(),
            created_at_unix: now_unix(),
            node: for_node.map(str::to_string),
        };
        let json = serde_json::to_vec(&record).map_err(cert_err)?;
        write_atomic(
            &self.dir.join("tokens").join(format!("{id}.json")),
            &json,
            0o600,
        )?;
        Ok(format!("{id}.{secret}"))
    }

    /// Checks a token for the join of `node` and consumes it. The token's secret never reaches
    /// a log. A refused token is not consumed.
    pub fn consume_token(&self, token: &str, node: &str) -> Result<(), JoinRefusal> {
        let (id, secret) = token.split_once('.').ok_or(JoinRefusal::InvalidToken)?;
        if id.len() != 6 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(JoinRefusal::InvalidToken);
        }
        let path = self.dir.join("tokens").join(format!("{id}.json"));
        let used = self.dir.join("tokens/used").join(format!("{id}.json"));
        let raw = match std::fs::read(&path) {
            Ok(raw) => raw,
            Err(_) if used.exists() => return Err(JoinRefusal::TokenUsed),
            Err(_) => return Err(JoinRefusal::InvalidToken),
        };
        let record: TokenRecord = serde_json::from_slice(&raw).map_err(|e| {
            tracing::error!(token_id = id, error = %e, "corrupt token file; create a new token");
            JoinRefusal::InvalidToken
        })?;
        let given = hex::encode(Sha256::digest(secret.as_bytes()));
        if !constant_time_eq(given.as_bytes(), record.secret_sha256.as_bytes()) {
            return Err(JoinRefusal::InvalidToken);
        }
        if now_unix() >= record.expires_at_unix {
            return Err(JoinRefusal::TokenExpired);
        }
        match &record.node {
            Some(bound) if bound != node => {
                return Err(JoinRefusal::TokenForOtherNode {
                    token_node: bound.clone(),
                })
            }
            Some(_) => {}
            None if self.is_revoked(node) => return Err(JoinRefusal::Revoked(node.to_string())),
            None if self.is_known(node) => return Err(JoinRefusal::NameTaken(node.to_string())),
            None => {}
        }
        match std::fs::rename(&path, &used) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(JoinRefusal::TokenUsed),
            Err(e) => Err(JoinRefusal::Internal(format!("cannot consume token: {e}"))),
        }
    }

    /// Checks that a CSR parses and is signed by its key, before a token is spent on it.
    pub fn check_csr(&self, csr_pem: &str) -> Result<(), JoinRefusal> {
        CertificateSigningRequestParams::from_pem(csr_pem)
            .map(|_| ())
            .map_err(|e| {
                JoinRefusal::InvalidCsr(format!(
                    "{e}; the edge must send a PEM PKCS#10 request signed by its key"
                ))
            })
    }

    /// Signs a node's CSR. The certificate's subject is `node` whatever the CSR asks for, and it
    /// is good for client authentication only.
    pub fn sign_node(&self, node: &str, csr_pem: &str) -> Result<String, JoinRefusal> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| {
            JoinRefusal::InvalidCsr(format!(
                "{e}; the edge must send a PEM PKCS#10 request signed by its key"
            ))
        })?;
        let mut params = CertificateParams::new(Vec::<String>::new())
            .map_err(|e| JoinRefusal::Internal(e.to_string()))?;
        params.distinguished_name.push(DnType::CommonName, node);
        params
            .distinguished_name
            .push(DnType::OrganizationName, NODE_GROUP);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = SystemTime::now();
        params.not_before = (now - HOUR).into();
        params.not_after = (now + 365 * 24 * HOUR).into();
        csr.params = params;
        let issuer = Issuer::from_ca_cert_der(&self.ca_cert_der, &self.ca_key)
            .map_err(|e| JoinRefusal::Internal(e.to_string()))?;
        let cert = csr
            .signed_by(&issuer)
            .map_err(|e| JoinRefusal::Internal(e.to_string()))?;
        let pem = cert.pem();
        write_atomic(&self.node_record(node), pem.as_bytes(), 0o644)
            .map_err(|e| JoinRefusal::Internal(e.to_string()))?;
        Ok(pem)
    }

    fn node_record(&self, node: &str) -> PathBuf {
        self.dir.join("nodes").join(format!("{node}.crt"))
    }

    /// Whether `der` is the certificate most recently issued to `node`: a re-join supersedes
    /// the node's older certificates (a stolen one stops working).
    pub fn is_current_cert(&self, node: &str, der: &[u8]) -> bool {
        validate_node_name(node).is_ok()
            && std::fs::read_to_string(self.node_record(node))
                .ok()
                .and_then(|pem| pem_to_der(&pem).ok())
                .is_some_and(|current| current.as_ref() == der)
    }

    /// Whether a certificate was ever issued to `node` by this cloud.
    pub fn is_known(&self, node: &str) -> bool {
        validate_node_name(node).is_ok() && self.node_record(node).exists()
    }

    /// Whether `node` has been revoked (an invalid name counts as revoked).
    pub fn is_revoked(&self, node: &str) -> bool {
        validate_node_name(node).is_err()
            || self
                .revoked
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .contains(node)
    }

    /// Revokes a node: its connections are refused from now on; a running cloudcore closes its
    /// live session within seconds (see [`Pki::refresh_revocations`]).
    pub fn revoke(&self, node: &str) -> Result<(), PkiError> {
        validate_node_name(node).map_err(PkiError::Cert)?;
        write_atomic(&self.dir.join("revoked").join(node), b"", 0o644)?;
        self.revoked
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(node.to_string());
        self.credentials_changed();
        Ok(())
    }

    /// Lifts a revocation; the node must join again with a new token to get a new certificate.
    pub fn unrevoke(&self, node: &str) -> Result<(), PkiError> {
        validate_node_name(node).map_err(PkiError::Cert)?;
        self.revoked
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(node);
        match std::fs::remove_file(self.dir.join("revoked").join(node)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(PkiError::Io {
                action: "remove",
                path: self.dir.join("revoked").join(node),
                source,
            }),
        }
    }

    /// Issues a client certificate for an API user (`cloudcore kubeconfig`): subject CN =
    /// `user`, one O per group, as Kubernetes reads them; returns (certificate PEM, key PEM).
    /// Node certificates come from [`Pki::sign_node`] instead and always carry the
    /// `skerry:nodes` organisation, so a node can never present itself as an admin.
    pub fn issue_user_cert(
        &self,
        user: &str,
        groups: &[String],
        ttl: Duration,
    ) -> Result<(String, String), PkiError> {
        if user.is_empty() || groups.iter().any(|g| g == NODE_GROUP) {
            return Err(PkiError::Invalid(format!(
                "user {user:?} with groups {groups:?}: a user needs a name and may not be in {NODE_GROUP}"
            )));
        }
        // A broker that takes the MQTT identity from the certificate would let a user called
        // like the ingest read every node's reports.
        if RESERVED_NODE_NAMES.contains(&user) {
            return Err(PkiError::Invalid(format!(
                "user {user:?} is reserved for cloudcore itself; choose another name"
            )));
        }
        self.sign_client_cert(user, groups, ttl)
    }

    /// Signs a client certificate (CN `name`, one O per group) valid from an hour ago for `ttl`;
    /// returns (certificate PEM, key PEM).
    pub(crate) fn sign_client_cert(
        &self,
        name: &str,
        groups: &[String],
        ttl: Duration,
    ) -> Result<(String, String), PkiError> {
        let key = KeyPair::generate().map_err(cert_err)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(cert_err)?;
        params.distinguished_name.push(DnType::CommonName, name);
        for g in groups {
            params
                .distinguished_name
                .push(DnType::OrganizationName, g.as_str());
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = SystemTime::now();
        params.not_before = (now - HOUR).into();
        params.not_after = now
            .checked_add(ttl)
            .unwrap_or(now + 100 * 365 * 24 * HOUR)
            .into();
        let issuer = Issuer::from_ca_cert_der(&self.ca_cert_der, &self.ca_key).map_err(cert_err)?;
        let cert = params.signed_by(&key, &issuer).map_err(cert_err)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Creates a bearer token for an API user. Only its SHA-256 is kept (in
    /// `pki/api-tokens/`), so a copy of the data directory does not leak usable tokens; the token
    /// itself is shown once.
    pub fn create_api_token(
        &self,
        user: &str,
        groups: &[String],
        ttl: Duration,
    ) -> Result<String, PkiError> {
        if user.is_empty() || groups.iter().any(|g| g == NODE_GROUP) {
            return Err(PkiError::Invalid(format!(
                "user {user:?} with groups {groups:?}: a user needs a name and may not be in {NODE_GROUP}"
            )));
        }
        // A broker that takes the MQTT identity from the certificate would let a user called
        // like the ingest read every node's reports.
        if RESERVED_NODE_NAMES.contains(&user) {
            return Err(PkiError::Invalid(format!(
                "user {user:?} is reserved for cloudcore itself; choose another name"
            )));
        }
        let secret: [u8; 24] = rand::random();
        let token = format!("skerry-api.{}", hex::encode(secret));
        let record = ApiTokenRecord {
            user: user.to_string(),
            groups: groups.to_vec(),
            created_at_unix: now_unix(),
            expires_at_unix: Some(now_unix().saturating_add(ttl.as_secs())),
        };
        let dir = self.dir.join("api-tokens");
        let bytes = serde_json::to_vec(&record).map_err(|e| PkiError::Invalid(e.to_string()))?;
        write_atomic(&dir.join(sha256_hex(token.as_bytes())), &bytes, 0o600)?;
        Ok(token)
    }

    /// The user a bearer token belongs to, while it has not expired. One small file read per
    /// lookup of a token not seen before; known tokens are answered from memory. Revoking is
    /// per user ([`Pki::revoke_user`]), checked on every request.
    pub fn api_token_user(&self, token: &str) -> Option<UserInfo> {
        if !token.starts_with("skerry-api.") || token.len() > 128 {
            return None;
        }
        let hash = sha256_hex(token.as_bytes());
        let cached = self.api_tokens.read().ok()?.get(&hash).cloned();
        let (user, expires) = match cached {
            Some(known) => known,
            None => {
                let bytes = std::fs::read(self.dir.join("api-tokens").join(&hash)).ok()?;
                let record: ApiTokenRecord = serde_json::from_slice(&bytes).ok()?;
                let user = UserInfo {
                    name: record.user,
                    groups: record.groups,
                    issued_at_unix: record.created_at_unix,
                };
                if let Ok(mut cache) = self.api_tokens.write() {
                    cache.insert(hash, (user.clone(), record.expires_at_unix));
                }
                (user, record.expires_at_unix)
            }
        };
        // Tokens made before they had a lifetime carry none: they last until revoked.
        if expires.is_some_and(|at| now_unix() >= at) {
            return None;
        }
        Some(user)
    }

    /// Revokes every API credential (client certificate or bearer token) of `user` issued up
    /// to now; in force within [`crate::credentials::REFRESH`] in every cloudcore on this data
    /// directory.
    pub fn revoke_user(&self, user: &str) -> Result<u64, PkiError> {
        self.revocations
            .revoke(user)
            .map_err(|e| PkiError::Invalid(format!("cannot revoke {user:?}: {e}")))
    }

    /// Whether `user`'s credential has been revoked since it was issued.
    pub fn credential_revoked(&self, user: &UserInfo) -> bool {
        self.revocations.is_revoked(&user.name, user.issued_at_unix)
    }

    fn server_chain(&self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        (
            vec![self.server_cert_der.clone(), self.ca_cert_der.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server_key_der.clone())),
        )
    }

    fn roots(&self) -> Result<rustls::RootCertStore, PkiError> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.ca_cert_der.clone())
            .map_err(|e| PkiError::Tls(e.to_string()))?;
        Ok(roots)
    }

    /// TLS for the QUIC hub: server certificate chain (so a joining node can pin the CA), client
    /// certificates verified against the CA but optional at the TLS layer, because the join ALPN
    /// has none yet; the hub refuses a sync connection that presents none.
    pub fn hub_tls(&self) -> Result<rustls::ServerConfig, PkiError> {
        let verifier = rustls::server::WebPkiClientVerifier::builder(self.roots()?.into())
            .allow_unauthenticated()
            .build()
            .map_err(|e| PkiError::Tls(e.to_string()))?;
        let (chain, key) = self.server_chain();
        let mut cfg =
            rustls::ServerConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
                .with_client_cert_verifier(verifier)
                .with_single_cert(chain, key)
                .map_err(|e| PkiError::Tls(e.to_string()))?;
        cfg.alpn_protocols = vec![protocol::ALPN_SYNC.to_vec(), protocol::ALPN_JOIN.to_vec()];
        Ok(cfg)
    }

    /// TLS for the HTTPS API (HTTP/2 and HTTP/1.1). Client certificates issued by the CA are
    /// verified when presented but not required: bearer tokens are the other way in, and the
    /// API refuses requests that bring neither (see `api::auth`).
    pub fn api_tls(&self) -> Result<rustls::ServerConfig, PkiError> {
        let verifier = rustls::server::WebPkiClientVerifier::builder(self.roots()?.into())
            .allow_unauthenticated()
            .build()
            .map_err(|e| PkiError::Tls(e.to_string()))?;
        let (chain, key) = self.server_chain();
        let mut cfg = rustls::ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| PkiError::Tls(e.to_string()))?;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(cfg)
    }
}

fn read_revoked(dir: &Path) -> Option<std::collections::HashSet<String>> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| tracing::error!(dir = %dir.display(), error = %e, "cannot read the revocation list; keeping the last one"))
        .ok()?;
    Some(
        entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| validate_node_name(n).is_ok())
            .collect(),
    )
}

/// Signs a serving certificate for `names` (DNS names or IP addresses) under the CA; returns
/// (certificate PEM, key PEM). Used for cloudcore's own endpoints and for an external broker.
fn sign_server_cert(
    ca_der: &CertificateDer<'static>,
    ca_key: &KeyPair,
    names: &[String],
    common_name: &str,
) -> Result<(String, String), PkiError> {
    let issuer = Issuer::from_ca_cert_der(ca_der, ca_key).map_err(cert_err)?;
    let key = KeyPair::generate().map_err(cert_err)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(cert_err)?;
    params.subject_alt_names = names
        .iter()
        .map(|n| match n.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => n.clone().try_into().map(SanType::DnsName).map_err(cert_err),
        })
        .collect::<Result<_, _>>()?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2124, 1, 1);
    let cert = params.signed_by(&key, &issuer).map_err(cert_err)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Certificates are valid from an hour ago, for clocks a little behind.
const HOUR: Duration = Duration::from_secs(3600);

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn pem_to_der(pem: &str) -> Result<CertificateDer<'static>, PkiError> {
    use rustls_pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(cert_err)
}

/// The machine's hostname, for certificate names.
pub fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// The organisation every node certificate carries.
pub const NODE_GROUP: &str = protocol::NODE_GROUP;

/// An authenticated API user, as Kubernetes' authenticators describe one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    /// User name (certificate CN, or the token's user).
    pub name: String,
    /// Groups (certificate O values, or the token's groups).
    pub groups: Vec<String>,
    /// When the credential was issued (seconds since the epoch; 0 for cloudcore's in-process
    /// identities), for [`Pki::credential_revoked`].
    pub issued_at_unix: u64,
}

#[derive(Serialize, Deserialize)]
struct ApiTokenRecord {
    user: String,
    groups: Vec<String>,
    created_at_unix: u64,
    #[serde(default)]
    expires_at_unix: Option<u64>,
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The user of a verified client certificate: CN is the name, O values are the groups.
pub fn user_from_cert(der: &[u8]) -> Option<UserInfo> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let name = cert
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    let groups = cert
        .subject()
        .iter_organization()
        .filter_map(|o| o.as_str().ok())
        .map(str::to_string)
        .collect();
    // Certificates are issued with `notBefore` an hour back (clock skew); this is when.
    let issued_at_unix = u64::try_from(cert.validity().not_before.timestamp())
        .unwrap_or(0)
        .saturating_add(HOUR.as_secs());
    Some(UserInfo {
        name,
        groups,
        issued_at_unix,
    })
}

/// Extracts the node name (subject common name) from a verified client certificate.
pub fn node_name_from_cert(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
    validate_node_name(cn).ok()?;
    Some(cn.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_single_use_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(dir.path(), &[]).unwrap();
        let t = pki.create_token(Duration::from_secs(60), None).unwrap();
        assert_eq!(
            pki.consume_token("nonsense", "n1"),
            Err(JoinRefusal::InvalidToken)
        );
        let (id, _) = t.split_once('.').unwrap();
        assert_eq!(
            pki.consume_token(&format!("{id}.wrongsecret00000"), "n1"),
            Err(JoinRefusal::InvalidToken)
        );
        assert_eq!(pki.consume_token(&t, "n1"), Ok(()));
        assert_eq!(pki.consume_token(&t, "n1"), Err(JoinRefusal::TokenUsed));
        let expired = pki.create_token(Duration::from_secs(0), None).unwrap();
        assert_eq!(
            pki.consume_token(&expired, "n1"),
            Err(JoinRefusal::TokenExpired)
        );
        // n1 now has a certificate record: an ordinary token cannot take its name, a token made
        // for it can, and a token made for another node admits nobody else.
        std::fs::write(pki.node_record("n1"), "x").unwrap();
        let plain = pki.create_token(Duration::from_secs(60), None).unwrap();
        assert_eq!(
            pki.consume_token(&plain, "n1"),
            Err(JoinRefusal::NameTaken("n1".into()))
        );
        let bound = pki
            .create_token(Duration::from_secs(60), Some("n1"))
            .unwrap();
        assert_eq!(
            pki.consume_token(&bound, "n2"),
            Err(JoinRefusal::TokenForOtherNode {
                token_node: "n1".into()
            })
        );
        assert_eq!(pki.consume_token(&bound, "n1"), Ok(()));
        pki.revoke("n3").unwrap();
        let plain2 = pki.create_token(Duration::from_secs(60), None).unwrap();
        assert_eq!(
            pki.consume_token(&plain2, "n3"),
            Err(JoinRefusal::Revoked("n3".into()))
        );
        assert_eq!(
            pki.consume_token(&plain2, "n4"),
            Ok(()),
            "a refused token is not consumed"
        );
    }

    #[test]
    fn node_certificates_carry_the_node_name_not_the_csr_subject() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(dir.path(), &[]).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, "admin");
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        let pem = pki.sign_node("edge-1", &csr).unwrap();
        let der = pem_to_der(&pem).unwrap();
        assert_eq!(node_name_from_cert(&der).as_deref(), Some("edge-1"));
        assert!(pki.is_known("edge-1"));
        let key = pki.issue_report_key("edge-1").unwrap();
        assert_eq!(pki.report_key("edge-1"), Some(key.clone()));
        pki.revoke("edge-1").unwrap();
        assert!(pki.is_revoked("edge-1"));
        assert!(!pki.is_known("edge-2"));
        assert!(matches!(
            pki.sign_node("edge-1", "garbage"),
            Err(JoinRefusal::InvalidCsr(_))
        ));
        // Reloading keeps the same CA.
        let hash = pki.ca_hash();
        let again = Pki::load_or_create(dir.path(), &["edge.example".into()]).unwrap();
        assert_eq!(again.ca_hash(), hash);
    }

    #[test]
    fn node_names_are_restricted() {
        assert!(validate_node_name("edge-1.site").is_ok());
        for bad in ["", "Edge", "a/b", "+", "#", "-a", &"a".repeat(64)] {
            assert!(validate_node_name(bad).is_err(), "{bad}");
        }
    }
}
