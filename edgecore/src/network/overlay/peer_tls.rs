//! mTLS between two nodes on the overlay's direct path: each end presents its node certificate
//! and checks the other's against the cluster CA, and the dialling end also checks that the
//! certificate names the node the hub said it would find at that address.
//!
//! Node certificates are issued for client authentication (they identify a node to the hub),
//! so a dialled node's certificate is checked as the hub checks a node's: chain to the cluster
//! CA with the client-auth purpose, then its common name. A web PKI server check would refuse
//! it for its purpose, and a node has no DNS name to check anyway.

use crate::identity::{self, IdentityError, IdentityPaths};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::sync::Arc;
#[cfg(test)]
use std::time::Duration;

/// The TLS configurations of the direct path, built once from the node's identity.
#[derive(Clone)]
pub struct PeerTls {
    /// For dialling a peer (the server name given is the peer's node name).
    pub client: quinn::ClientConfig,
    /// For the link's endpoint, so peers can dial this node.
    pub server: quinn::ServerConfig,
}

/// The node name a verified node certificate carries (its common name), if it is a node's:
/// the same CA issues users' certificates (`cloudcore kubeconfig`), and only a node's carries
/// the [`protocol::NODE_GROUP`] organisation, which no user's may.
pub fn node_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let is_node = cert
        .subject()
        .iter_organization()
        .any(|o| o.as_str() == Ok(protocol::NODE_GROUP));
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
    is_node.then(|| cn.to_string())
}

/// The peer's node name on an established connection, from its verified certificate.
pub fn peer_of(conn: &quinn::Connection) -> Option<String> {
    let chain = conn
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    node_name(chain.first()?)
}

impl PeerTls {
    /// Loads the node's certificate, key and CA; `transport` is shared by both directions.
    pub fn load(
        paths: &IdentityPaths,
        transport: Arc<quinn::TransportConfig>,
    ) -> Result<Self, IdentityError> {
        use rustls::pki_types::pem::PemObject;
        let tls = |e: &dyn std::fmt::Display| IdentityError::Tls(e.to_string());
        let provider = identity::provider();
        let mut roots = rustls::RootCertStore::empty();
        for c in identity::read_certs(&paths.ca())? {
            roots.add(c).map_err(|e| tls(&e))?;
        }
        let roots = Arc::new(roots);
        let nodes =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| tls(&e))?;
        let chain = identity::read_certs(&paths.cert())?;
        let key = || {
            PrivateKeyDer::from_pem_file(paths.key()).map_err(|e| IdentityError::Pem {
                what: "private key",
                path: paths.key(),
                reason: e.to_string(),
            })
        };

        let mut client = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| tls(&e))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PeerVerifier {
                nodes: nodes.clone(),
            }))
            .with_client_auth_cert(chain.clone(), key()?)
            .map_err(|e| tls(&e))?;
        client.alpn_protocols = vec![protocol::ALPN_PEER.to_vec()];
        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| tls(&e))?
            .with_client_cert_verifier(nodes)
            .with_single_cert(chain, key()?)
            .map_err(|e| tls(&e))?;
        server.alpn_protocols = vec![protocol::ALPN_PEER.to_vec()];

        let client_crypto =
            quinn::crypto::rustls::QuicClientConfig::try_from(client).map_err(|e| tls(&e))?;
        let mut client = quinn::ClientConfig::new(Arc::new(client_crypto));
        client.transport_config(transport.clone());
        let server_crypto =
            quinn::crypto::rustls::QuicServerConfig::try_from(server).map_err(|e| tls(&e))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
        server.transport_config(transport);
        Ok(Self { client, server })
    }
}

/// Checks a dialled peer's certificate as a node certificate of this cluster naming the node
/// that was dialled.
#[derive(Debug)]
struct PeerVerifier {
    nodes: Arc<dyn ClientCertVerifier>,
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.nodes
            .verify_client_cert(end_entity, intermediates, now)?;
        let expected = match server_name {
            ServerName::DnsName(name) => name.as_ref(),
            _ => "",
        };
        match node_name(end_entity) {
            Some(name) if name == expected => Ok(ServerCertVerified::assertion()),
            other => Err(rustls::Error::General(format!(
                "the peer at this address is node {other:?}, not {expected:?}"
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.nodes.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.nodes.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.nodes.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };

    /// A CA and a function issuing node certificates as cloudcore's PKI does (CN = node,
    /// client authentication only).
    struct Ca {
        cert_pem: String,
        issuer: Issuer<'static, KeyPair>,
    }

    impl Ca {
        fn new() -> Self {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.distinguished_name.push(DnType::CommonName, "skerry-ca");
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            let cert = p.self_signed(&key).unwrap();
            Self {
                cert_pem: cert.pem(),
                issuer: Issuer::new(p, key),
            }
        }

        /// A node's identity directory, trusting `trust`'s CA.
        fn node(&self, name: &str, trust: &Ca) -> tempfile::TempDir {
            self.identity(name, protocol::NODE_GROUP, trust)
        }

        /// An identity directory with a certificate of `name` in `group`, trusting `trust`.
        fn identity(&self, name: &str, group: &str, trust: &Ca) -> tempfile::TempDir {
            let dir = tempfile::tempdir().unwrap();
            let paths = IdentityPaths::new(dir.path());
            std::fs::create_dir_all(paths.cert().parent().unwrap()).unwrap();
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.distinguished_name.push(DnType::CommonName, name);
            p.distinguished_name.push(DnType::OrganizationName, group);
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            let cert = p.signed_by(&key, &self.issuer).unwrap();
            std::fs::write(paths.cert(), cert.pem()).unwrap();
            std::fs::write(paths.key(), key.serialize_pem()).unwrap();
            std::fs::write(paths.ca(), &trust.cert_pem).unwrap();
            dir
        }
    }

    fn endpoint(dir: &tempfile::TempDir) -> (quinn::Endpoint, PeerTls) {
        let tls = PeerTls::load(
            &IdentityPaths::new(dir.path()),
            Arc::new(quinn::TransportConfig::default()),
        )
        .unwrap();
        let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        ep.set_server_config(Some(tls.server.clone()));
        (ep, tls)
    }

    /// Dials `to` from `from` claiming it is `name`: the names each end sees, or an error.
    async fn dial(
        from: &(quinn::Endpoint, PeerTls),
        to: &quinn::Endpoint,
        name: &str,
    ) -> Result<(Option<String>, Option<String>), String> {
        let addr = to.local_addr().unwrap();
        let accept = async {
            let incoming = to.accept().await.ok_or("no incoming")?;
            incoming.await.map_err(|e| e.to_string())
        };
        let connect = async {
            from.0
                .connect_with(from.1.client.clone(), addr, name)
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| e.to_string())
        };
        let (server, client) = tokio::join!(accept, connect);
        let (server, client) = (server?, client?);
        Ok((peer_of(&server), peer_of(&client)))
    }

    #[tokio::test]
    async fn nodes_of_one_cluster_connect_under_their_own_names_only() {
        let ca = Ca::new();
        let (a, b) = (ca.node("node-a", &ca), ca.node("node-b", &ca));
        let (a, b) = (endpoint(&a), endpoint(&b));
        // Each end learns the other's node name from its certificate.
        assert_eq!(
            dial(&a, &b.0, "node-b").await,
            Ok((Some("node-a".into()), Some("node-b".into())))
        );
        // The dialler refuses a node that is not the one it meant to reach.
        let err = tokio::time::timeout(Duration::from_secs(5), dial(&a, &b.0, "node-c"))
            .await
            .unwrap()
            .unwrap_err();
        assert!(
            err.contains("node-b") || err.contains("certificate"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_users_certificate_of_the_same_ca_is_no_node() {
        let ca = Ca::new();
        let node = endpoint(&ca.node("node-a", &ca));
        let admin = endpoint(&ca.identity("node-b", "system:masters", &ca));
        let wait = |f| tokio::time::timeout(Duration::from_secs(5), f);
        // Dialling it as node "node-b": refused, whatever its common name says.
        assert!(wait(dial(&node, &admin.0, "node-b"))
            .await
            .unwrap()
            .is_err());
        // Dialling a node with it: the node sees no node on the connection (and closes it).
        if let Ok((seen_by_node, _)) = wait(dial(&admin, &node.0, "node-a")).await.unwrap() {
            assert_eq!(seen_by_node, None);
        }
    }

    #[tokio::test]
    async fn a_node_of_another_cluster_is_refused_both_ways() {
        let (ca, other) = (Ca::new(), Ca::new());
        let ours = endpoint(&ca.node("node-a", &ca));
        let stranger = endpoint(&other.node("node-x", &ca));
        let wait = |f| tokio::time::timeout(Duration::from_secs(5), f);
        assert!(wait(dial(&stranger, &ours.0, "node-a"))
            .await
            .unwrap()
            .is_err());
        assert!(wait(dial(&ours, &stranger.0, "node-x"))
            .await
            .unwrap()
            .is_err());
    }
}
