//! The PKI's side of the status channel: each node's report key and join epoch, TLS for the
//! embedded broker and for the ingest, and the files an external broker (mosquitto) needs.
//!
//! Status goes over MQTT with TLS, and the MQTT identity of a client is the common name of the
//! certificate the cluster CA signed for it, on both brokers: the node certificate an edge
//! already holds for its QUIC link, and an ingest certificate cloudcore issues itself
//! ([`INGEST_MQTT_USER`]). No password is involved, so a captured one cannot log in.
//!
//! **Epochs.** Every join issues a fresh report key and a new epoch, a number larger than any
//! the node had before (the cloud's clock in milliseconds, or the previous epoch plus one when
//! the clock is behind). The ingest orders a node's reports by (epoch, sequence number), so a
//! re-joined node whose clock is behind its previous life is not taken for a replay, and the
//! previous life's reports (old key) stop verifying the moment the join is written.

use super::{
    cert_err, pem_to_der, sign_server_cert, validate_node_name, write_atomic, Pki, PkiError, HOUR,
    INGEST_MQTT_USER, NODE_GROUP,
};
use rcgen::KeyPair;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What the cloud holds for a joined node's reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCredentials {
    /// The key that seals its reports (HMAC-SHA256, see `protocol::status::seal`).
    pub report_key: Vec<u8>,
    /// The epoch of the join that issued the key; 0 for a node that joined before epochs.
    pub epoch: u64,
}

/// The organisation of the ingest's certificate: not [`NODE_GROUP`], so it is never a node.
pub const INGEST_GROUP: &str = "skerry:cloudcore";

impl Pki {
    fn report_key_path(&self, node: &str) -> PathBuf {
        self.dir.join("nodes").join(format!("{node}.report-key"))
    }

    fn epoch_path(&self, node: &str) -> PathBuf {
        self.dir.join("nodes").join(format!("{node}.epoch"))
    }

    fn read_epoch(&self, node: &str) -> u64 {
        std::fs::read_to_string(self.epoch_path(node))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Issues a fresh report key for `node` in a new epoch (replacing any earlier key: a
    /// re-joined node's old key stops working at once) and returns the key.
    pub fn issue_report_key(&self, node: &str) -> Result<Vec<u8>, PkiError> {
        validate_node_name(node).map_err(PkiError::Cert)?;
        let key: [u8; protocol::status::REPORT_KEY_LEN] = rand::random();
        let previous = self
            .node_credentials(node)
            .map_or(0, |c| c.epoch)
            .max(self.read_epoch(node));
        let epoch = previous.saturating_add(1).max(crate::clock::now_ms());
        // The epoch first: a crash between the two writes leaves a new epoch with the old key,
        // which no edge holds yet (the join answers only after both), never the reverse.
        write_atomic(&self.epoch_path(node), epoch.to_string().as_bytes(), 0o600)?;
        write_atomic(&self.report_key_path(node), &key, 0o600)?;
        self.node_credentials
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                node.to_string(),
                NodeCredentials {
                    report_key: key.to_vec(),
                    epoch,
                },
            );
        self.credentials_changed();
        Ok(key.to_vec())
    }

    /// The report key and epoch of `node`, if it has joined: from memory, read from `nodes/`
    /// the first time.
    pub fn node_credentials(&self, node: &str) -> Option<NodeCredentials> {
        validate_node_name(node).ok()?;
        if let Some(c) = self
            .node_credentials
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(node)
        {
            return Some(c.clone());
        }
        let report_key = std::fs::read(self.report_key_path(node))
            .ok()
            .filter(|k| k.len() == protocol::status::REPORT_KEY_LEN)?;
        let creds = NodeCredentials {
            report_key,
            epoch: self.read_epoch(node),
        };
        self.node_credentials
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(node.to_string())
            .or_insert(creds.clone());
        Some(creds)
    }

    /// The report key of `node`, if it has joined.
    pub fn report_key(&self, node: &str) -> Option<Vec<u8>> {
        self.node_credentials(node).map(|c| c.report_key)
    }

    /// Changes whenever a node's credentials do (a join, a revocation): holders of live
    /// sessions wait on it and re-check theirs.
    pub fn credential_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.credential_changes.subscribe()
    }

    pub(super) fn credentials_changed(&self) {
        self.credential_changes
            .send_modify(|n| *n = n.wrapping_add(1));
    }

    /// TLS of the embedded broker: cloudcore's serving certificate, and a client certificate
    /// from the cluster CA required of every client (the identity of an MQTT session).
    pub fn broker_tls(&self) -> Result<rustls::ServerConfig, PkiError> {
        let verifier = rustls::server::WebPkiClientVerifier::builder(self.roots()?.into())
            .build()
            .map_err(|e| PkiError::Tls(e.to_string()))?;
        let (chain, key) = self.server_chain();
        rustls::ServerConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| PkiError::Tls(e.to_string()))
    }

    /// TLS of the ingest's connection to an external broker: the broker's certificate must come
    /// from the cluster CA (`cloudcore mqtt-config` issues it), and the ingest presents its own,
    /// created on first use, whose common name is [`INGEST_MQTT_USER`].
    pub fn ingest_client_tls(&self) -> Result<rustls::ClientConfig, PkiError> {
        let (crt, key) = (self.dir.join("ingest.crt"), self.dir.join("ingest.key"));
        if !crt.exists() || !key.exists() {
            let (cert_pem, key_pem) = self.sign_client_cert(
                INGEST_MQTT_USER,
                &[INGEST_GROUP.to_string()],
                10 * 365 * 24 * HOUR,
            )?;
            write_atomic(&key, key_pem.as_bytes(), 0o600)?;
            write_atomic(&crt, cert_pem.as_bytes(), 0o644)?;
        }
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| PkiError::Io {
                action: "read",
                path: p.to_path_buf(),
                source,
            })
        };
        let cert = pem_to_der(&read(&crt)?)?;
        let key_der = KeyPair::from_pem(&read(&key)?)
            .map_err(cert_err)?
            .serialize_der();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| PkiError::Tls(e.to_string()))?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(
                vec![cert, self.ca_cert_der.clone()],
                PrivateKeyDer::Pkcs8(key_der.into()),
            )
            .map_err(|e| PkiError::Tls(e.to_string()))
    }

    /// Writes what an external mosquitto needs to serve Skerry's status channel into `dir`:
    /// the CA, a serving certificate for `names` (as edges and cloudcore reach the broker),
    /// its key (mode 0600), an ACL file and `mosquitto.conf` listening on `listen`. mosquitto
    /// must be able to read them as the user it runs as (`chown -R mosquitto DIR`).
    pub fn write_external_broker(
        &self,
        dir: &Path,
        names: &[String],
        listen: std::net::SocketAddr,
    ) -> Result<ExternalBrokerFiles, PkiError> {
        if names.is_empty() {
            return Err(PkiError::Invalid(
                "the broker needs at least one name (DNS name or IP) for its certificate".into(),
            ));
        }
        // Not a private directory: mosquitto drops to its own user and must read it (the key
        // is 0600; `chown -R mosquitto` the directory, as the docs say).
        std::fs::create_dir_all(dir).map_err(|source| PkiError::Io {
            action: "create",
            path: dir.to_path_buf(),
            source,
        })?;
        let files = ExternalBrokerFiles {
            dir: dir.to_path_buf(),
        };
        let (cert, key) = sign_server_cert(&self.ca_cert_der, &self.ca_key, names, "skerry-mqtt")?;
        write_atomic(&files.path("ca.crt"), self.ca_cert_pem.as_bytes(), 0o644)?;
        write_atomic(&files.path("broker.crt"), cert.as_bytes(), 0o644)?;
        write_atomic(&files.path("broker.key"), key.as_bytes(), 0o600)?;
        write_atomic(&files.path("acl"), mosquitto_acl().as_bytes(), 0o644)?;
        let conf = mosquitto_conf(&files, listen);
        write_atomic(&files.path("mosquitto.conf"), conf.as_bytes(), 0o644)?;
        Ok(files)
    }
}

/// The files of an external broker, as [`Pki::write_external_broker`] wrote them.
#[derive(Debug, Clone)]
pub struct ExternalBrokerFiles {
    /// Where they are.
    pub dir: PathBuf,
}

impl ExternalBrokerFiles {
    /// The path of one of them (`mosquitto.conf`, `acl`, `ca.crt`, `broker.crt`, `broker.key`).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// mosquitto's ACL for the status channel. With `use_identity_as_username` the user name is the
/// certificate's common name: a node may publish under its own prefix only and read nothing,
/// and only cloudcore's ingest reads the nodes' reports.
pub fn mosquitto_acl() -> String {
    let prefix = protocol::topics::PREFIX;
    format!(
        "# Generated by `cloudcore mqtt-config`. User names are certificate common names.\n\
         # A node ({NODE_GROUP}) publishes under its own prefix and reads nothing.\n\
         pattern write {prefix}/%u/#\n\
         \n\
         # cloudcore's status ingest reads every node's reports.\n\
         user {INGEST_MQTT_USER}\n\
         topic read {prefix}/#\n"
    )
}

fn mosquitto_conf(files: &ExternalBrokerFiles, listen: std::net::SocketAddr) -> String {
    let p = |n: &str| files.path(n).display().to_string();
    let bind = if listen.ip().is_unspecified() {
        String::new()
    } else {
        format!(" {}", listen.ip())
    };
    format!(
        "# Generated by `cloudcore mqtt-config`: Skerry's status channel on mosquitto 2.\n\
         # TLS only; a client's identity is the common name of its certificate from the\n\
         # cluster CA (edges use their node certificate, cloudcore its ingest certificate).\n\
         per_listener_settings false\n\
         allow_anonymous false\n\
         acl_file {acl}\n\
         # A status report is a few KiB; nothing larger is accepted.\n\
         max_packet_size 65536\n\
         max_queued_messages 10000\n\
         persistence true\n\
         persistence_location {dir}/\n\
         autosave_interval 10\n\
         \n\
         listener {port}{bind}\n\
         cafile {ca}\n\
         certfile {crt}\n\
         keyfile {key}\n\
         require_certificate true\n\
         use_identity_as_username true\n\
         tls_version tlsv1.3\n",
        acl = p("acl"),
        dir = files.dir.display(),
        port = listen.port(),
        ca = p("ca.crt"),
        crt = p("broker.crt"),
        key = p("broker.key"),
    )
}

/// The node name of a verified MQTT client certificate, if it is a node's current one.
pub fn node_of_cert(pki: &Pki, der: &CertificateDer<'_>) -> Option<String> {
    let node = super::node_name_from_cert(der)?;
    pki.is_current_cert(&node, der).then_some(node)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rejoin_replaces_the_key_and_moves_the_epoch_forward() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(dir.path(), &[]).unwrap();
        assert_eq!(pki.node_credentials("edge-1"), None);
        let mut changes = pki.credential_changes();
        let first = pki.issue_report_key("edge-1").unwrap();
        assert!(changes.has_changed().unwrap());
        changes.mark_unchanged();
        let c1 = pki.node_credentials("edge-1").unwrap();
        assert_eq!(c1.report_key, first);
        // An epoch far in the future (a cloud clock that was ahead) still moves forward.
        write_atomic(
            &pki.epoch_path("edge-1"),
            u64::MAX.to_string().as_bytes(),
            0o600,
        )
        .unwrap();
        let reloaded = Pki::load_or_create(dir.path(), &[]).unwrap();
        assert_eq!(reloaded.node_credentials("edge-1").unwrap().epoch, u64::MAX);
        let second = pki.issue_report_key("edge-1").unwrap();
        assert!(changes.has_changed().unwrap());
        let c2 = pki.node_credentials("edge-1").unwrap();
        assert_ne!(c2.report_key, c1.report_key);
        assert_eq!(c2.report_key, second);
        assert!(c2.epoch > c1.epoch);
        // Another process (or a restart) reads the same.
        let again = Pki::load_or_create(dir.path(), &[]).unwrap();
        assert_eq!(again.node_credentials("edge-1"), Some(c2));
        assert_eq!(pki.node_credentials("../etc"), None);
    }

    #[test]
    fn revocation_is_a_credential_change() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(dir.path(), &[]).unwrap();
        let mut changes = pki.credential_changes();
        changes.mark_unchanged();
        pki.revoke("edge-1").unwrap();
        assert!(changes.has_changed().unwrap());
    }

    #[test]
    fn the_ingest_is_not_a_node_and_no_user_can_be_it() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(dir.path(), &[]).unwrap();
        pki.ingest_client_tls().unwrap();
        let pem = std::fs::read_to_string(dir.path().join("pki/ingest.crt")).unwrap();
        let user = super::super::user_from_cert(&pem_to_der(&pem).unwrap()).unwrap();
        assert_eq!(user.name, INGEST_MQTT_USER);
        assert_eq!(user.groups, vec![INGEST_GROUP.to_string()]);
        assert!(pki.issue_user_cert(INGEST_MQTT_USER, &[], HOUR).is_err());
    }

    #[test]
    fn mosquitto_files_confine_each_node_to_its_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(dir.path(), &[]).unwrap();
        let out = dir.path().join("mqtt");
        let files = pki
            .write_external_broker(
                &out,
                &["127.0.0.1".into()],
                "127.0.0.1:8883".parse().unwrap(),
            )
            .unwrap();
        let conf = std::fs::read_to_string(files.path("mosquitto.conf")).unwrap();
        for line in [
            "require_certificate true",
            "use_identity_as_username true",
            "allow_anonymous false",
            "listener 8883 127.0.0.1",
        ] {
            assert!(conf.lines().any(|l| l == line), "{line} in\n{conf}");
        }
        let acl = std::fs::read_to_string(files.path("acl")).unwrap();
        assert!(acl.contains("pattern write skerry/v1/nodes/%u/#"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(files.path("broker.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0);
        assert!(pki
            .write_external_broker(&out, &[], "127.0.0.1:8883".parse().unwrap())
            .is_err());
    }
}
